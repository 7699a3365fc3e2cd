"""Recipe configuration: the shared training options, named YAML configs, `key=value` overrides.

Every recipe's config is one flat dataclass that extends `TrainConfig` (nanoGPT-style: every
knob is a top-level key). A YAML config is a plain mapping with a `recipe:` key and values for
fields; it is read with `yaml.safe_load`, so it can never name a Python object. Overrides are
type-checked against the dataclass fields, and an unknown key is an error listing the valid ones.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import reprlib
import os
import sys
import types
import typing
from dataclasses import dataclass, fields
from pathlib import Path

import yaml

from tokenizers_mm.base import read_utf8

CONFIG_DIR = Path(__file__).parent / "configs"


FLOAT32_MAX = 3.4028234663852886e38  # torch.finfo(torch.float32).max, without importing torch here


@dataclass
class TrainConfig:
    run_dir: str = ""  # where metrics, checkpoints and the model go; "" = runs/<recipe>-<time>
    seed: int = 1337
    max_steps: int = 2000  # optimizer steps
    batch_size: int = 12  # samples per optimizer step, over all processes and accumulation steps
    grad_accum: int = 1  # micro-steps per optimizer step
    lr: float = 1e-3  # peak learning rate, after warmup
    min_lr: float = 1e-4  # floor of the cosine decay (one above lr is taken as lr: a flat rate after warmup)
    warmup_steps: int = 100
    lr_decay_steps: int = 0  # cosine decays to min_lr at this step; 0 = max_steps
    weight_decay: float = 0.1  # AdamW, decoupled; never on norms, biases or embeddings
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0  # max global gradient norm; 0 = off (the norm is still measured, logged and checked to be finite)
    precision: str = "auto"  # "auto": bf16 on a GPU that supports it, else fp32 | "no" | "bf16" | "fp16" | "fp8" (Accelerate's)
    eval_every: int = 250  # steps between evaluations (and at the end)
    eval_batches: int = 50  # batches per evaluation
    log_every: int = 10
    ckpt_every: int = 500  # steps between checkpoints (and at the end)
    keep_checkpoints: int = 2
    num_workers: int = 0  # DataLoader worker processes
    cpu: bool = False  # train on the CPU even when a GPU is present
    compile: bool = False  # torch.compile the model
    log_mfu: bool = True  # log model FLOPs utilisation against the device's peak (models/flops.py)
    skip_nonfinite: bool = False  # skip (and count) a batch whose loss is NaN / inf instead of stopping
    fused_adamw: bool = False  # AdamW's fused kernel on the CPU too (a GPU run uses it anyway); same update within rounding
    grad_checkpoint: bool = False  # activation checkpointing: recompute each block in backward (less memory, ~1/3 more compute)
    fsdp: bool = False  # shard parameters, gradients and optimizer state over the processes (FSDP2; recipes/fsdp.py)

    # note: the rules below cover the shared keys and the recipes' common ones (a rule for a key a config lacks is skipped);
    # they are checked when a run starts (`mmtok train`), so a run started before a rule existed still resumes
    AT_LEAST: typing.ClassVar[dict] = {
        "max_steps": 0, "batch_size": 1, "grad_accum": 1, "eval_every": 1, "eval_batches": 1, "log_every": 1, "ckpt_every": 1,
        "keep_checkpoints": 0, "num_workers": 0, "warmup_steps": 0, "lr_decay_steps": 0, "min_lr": 0.0, "weight_decay": 0.0,
        "grad_clip": 0.0, "beta1": 0.0, "beta2": 0.0, "seed": 0, "dim": 1, "depth": 1, "dec_depth": 0, "num_heads": 1,
        "block_size": 1, "image_size": 1, "patch_size": 1, "context": 1, "dropout": 0.0, "label_smoothing": 0.0,
        "val_fraction": 0.0, "top_k": 1, "sample_tokens": 0, "eval_episodes": 1, "eval_utterances": 1, "beam_size": 1,
        "eval_batch_size": 1, "mixup": 0.0, "cutmix": 0.0, "hflip": 0.0, "eval_seed": 0, "rotate": 0.0, "translate": 0.0, "scale": 0.0,
        "temperature": 0.0,  # (0: greedy samples)
    }  # fmt: skip
    ABOVE: typing.ClassVar[dict] = {"lr": 0.0, "gamma": 0.0, "rtg_scale": 0.0}
    AT_MOST: typing.ClassVar[dict] = {"gamma": 1.0, "hflip": 1.0, "rotate": 180.0, "translate": 0.5}  # (translate: of the image size)
    BELOW: typing.ClassVar[dict] = {"beta1": 1.0, "beta2": 1.0, "dropout": 1.0, "label_smoothing": 1.0, "val_fraction": 1.0, "scale": 1.0,
                                     "seed": 2**32 - 2**16}  # fmt: skip  # seed: process r seeds with seed + r
    PRECISIONS: typing.ClassVar[tuple] = ("auto", "no", "bf16", "fp16", "fp8")  # fp8: Accelerate's, with Transformer Engine / torchao
    NOT_USED: typing.ClassVar[tuple] = ()  # keys a recipe's config inherits but does not use: refused when given
    EVAL_KEYS: typing.ClassVar[tuple] = ("eval_batches",)  # keys that shape its evaluation alone (a resume may take them edited)

    def check(self) -> None:
        """Refuse values a run cannot use, before its run directory is made (`mmtok train`)."""
        for f in fields(self):  # (NaN fails every bound below; inf passes them): a float setting that is not a finite number
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"{f.name}={value} must be a finite number")
        for rules, ok, words in ((self.AT_LEAST, lambda v, b: v >= b, "at least"), (self.ABOVE, lambda v, b: v > b, "above"),
                                 (self.BELOW, lambda v, b: v < b, "below"), (self.AT_MOST, lambda v, b: v <= b, "at most")):  # fmt: skip
            for key, bound in rules.items():
                value = getattr(self, key, None)
                if value is not None and not ok(value, bound):
                    raise ConfigError(f"{key}={value} must be {words} {bound}")
        step = getattr(self, "lr", 0.0) / (1.0 - getattr(self, "beta1", 0.0))  # (min_lr above lr is taken as lr)
        if step > FLOAT32_MAX:  # AdamW divides the rate by 1 - beta1**step, and applies it in float32: an early step overflows
            raise ConfigError(f"lr={self.lr}: AdamW's step can reach lr / (1 - beta1) = {step:.3g}, which overflows float32 "
                              f"(largest {FLOAT32_MAX:.3g})")  # fmt: skip
        if self.precision not in self.PRECISIONS:
            raise ConfigError(f"precision={self.precision!r}: expected one of {', '.join(self.PRECISIONS)}")
        if self.precision == "fp8":
            from accelerate.utils import is_fp8_available

            if not is_fp8_available():  # (Accelerate says so only after the data is made and the run directory written)
                raise ConfigError("precision=fp8: Accelerate's fp8 needs transformer-engine, MS-AMP or torchao installed (and a Hopper "
                                  "or Ada GPU); precision=bf16 needs neither")  # fmt: skip
        self.check_precision()
        self.check_launch()
        self.check_fsdp()

    def check_fsdp(self) -> None:
        """fsdp=true's own rules: checked when a run starts, and when a resume turns it on (without the
        run's other rules, which a run started before a rule existed may not meet)."""
        if self.fsdp and launched_processes() < 2:
            raise ConfigError("fsdp=true shards the model over processes: launch 2 or more with torchrun or accelerate launch")

    def check_launch(self) -> None:
        """What depends on how the run is launched (its processes, Accelerate's config), not on what it
        trains: checked when it starts and again on every resume."""
        world = launched_processes()
        if self.batch_size:
            check_split(self.batch_size, self.grad_accum, world)
        # Accelerate's FSDP (as its Accelerator reads the variable; one process trains without it): Accelerator() would
        # fail on a CPU machine, after the run directory is made
        if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true" and world > 1:
            raise ConfigError(ACCELERATE_FSDP)

    def check_precision(self, resume: bool = False) -> None:
        """fp16 on the CPU: Accelerate turns it off without a word (fp32, no loss scaler), so it is refused."""
        if self.precision == "fp16" and on_cpu(self):
            raise ConfigError("precision=fp16 needs a GPU (on the CPU Accelerate trains in fp32 instead, silently): "
                              + ("this run trains in fp16: resume it on a machine with a GPU" if resume else
                                 "precision=bf16 autocasts on the CPU, precision=no is fp32"))  # fmt: skip


def on_cpu(cfg) -> bool:
    """Whether a run of `cfg` trains on the CPU: cpu=true, or no accelerator here."""
    import torch

    return bool(cfg.cpu) or not torch.accelerator.is_available()


def _launcher_figure(names: tuple[str, ...], default: int) -> int:
    """The first of the launchers' environment variables `names` that is set (torchrun / accelerate
    launch, then Open MPI, then MPICH / Intel MPI's PMI), as a number."""
    for name in names:
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return default


def launched_processes() -> int:
    """How many processes the launcher started (torchrun / accelerate launch: WORLD_SIZE; MPI: its own)."""
    return _launcher_figure(("WORLD_SIZE", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE"), 1)


def launch_rank() -> int:
    """This process's rank in the launch (0 when launched alone), before Accelerate is set up."""
    return _launcher_figure(("RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK"), 0)


def say(text: str) -> None:
    """A line on stderr (a note, not output) from one process: the first of a launch, where the
    others, reading the same data, would repeat it."""
    if launch_rank() == 0:  # note: through tqdm, which lifts a progress bar on stderr out of the line's way
        from tqdm.auto import tqdm

        tqdm.write(text, file=sys.stderr)


ACCELERATE_FSDP = ("this run was launched with Accelerate's FSDP config (accelerate launch --use_fsdp, or an FSDP config file), which "
                   "the loop does not use: launch it without, and pass fsdp=true (the loop shards the model itself; recipes/fsdp.py)")


class ConfigError(ValueError):
    """A config or override that does not fit the recipe's dataclass."""


def check_split(global_batch: int, accum: int, world: int, what: str = "") -> None:
    """Every micro-batch of every process gets a sample: batch_size ≥ grad_accum × processes (the
    parts need not be equal: `recipes.train.micro_span`)."""
    if global_batch < accum * world:
        raise ConfigError(f"batch_size={global_batch}{what} is smaller than grad_accum * processes = {accum} * {world}: "
                          "every micro-batch of every process needs a sample")  # fmt: skip


def take_shape(cfg, shape: dict, source: str, recipe: str) -> list[str]:
    """Set cfg's keys to the values of the weights it starts from (`shape`: key -> value, from
    `source`, e.g. "init_from=tiny.pt"): a value given otherwise than both the recipe's default and
    the weights' is refused, not replaced. The defaults replaced ("dim=384 -> 768") are printed in
    one line (a value given equal to the default cannot be told from it: the line says it went) and
    returned."""
    replaced = []
    for key, theirs in shape.items():
        ours = getattr(cfg, key)
        if ours == theirs:
            continue
        if ours != getattr(type(cfg), key):
            raise ConfigError(f"{key}={ours}: {source} has {key} {theirs} (its weights set the model's shape: leave {key} out)")
        replaced.append(f"{key}={ours} -> {theirs}")
        setattr(cfg, key, theirs)
    if replaced:
        say(f"{recipe}: the model's shape comes from {source} ({', '.join(replaced)})")
    return replaced


def _coerce(key: str, raw, tp):
    """Convert a YAML value or command-line string to the field's type, or raise ConfigError."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if raw is None or (isinstance(raw, str) and raw.lower() in ("none", "null")):
            return None
        return _coerce(key, raw, args[0])
    try:
        if tp is bool:
            if isinstance(raw, bool):
                return raw
            if isinstance(raw, str) and raw.lower() in ("true", "1", "yes", "false", "0", "no"):
                return raw.lower() in ("true", "1", "yes")
            raise ValueError
        if tp is int:
            if isinstance(raw, bool) or (isinstance(raw, float) and not raw.is_integer()):
                raise ValueError
            return int(raw) if not isinstance(raw, str) else int(raw.replace("_", ""))
        if tp is float:
            if isinstance(raw, bool):
                raise ValueError
            return float(raw)
        if tp is str:
            if not isinstance(raw, (str, int, float)) or isinstance(raw, bool):
                raise ValueError
            return str(raw)
    except (ValueError, TypeError):  # (TypeError: int() of a list or None)
        pass
    else:
        raise ConfigError(f"config key {key!r} has an unsupported type {tp}")
    hint = ""
    if tp is str and isinstance(raw, list) and all(isinstance(x, (str, int, float)) for x in raw):  # YAML's [a, b] for targets=, tasks=
        hint = f" (a list: where the key takes several, they are one comma-separated string: {key}: {','.join(map(str, raw))})"
    raise ConfigError(f"config key {key!r} expects {getattr(tp, '__name__', tp)}, got {SHORT.repr(raw)}{hint}")  # (not repr: a
    # YAML alias bomb, expanded, would not end)


SHORT = reprlib.Repr()  # a value in a message: nested ones cut short, a path whole
SHORT.maxstring = SHORT.maxother = 300


# nanoGPT's and the Hugging Face Trainer's names of keys this toolkit names otherwise: an unknown key among them is
# answered with ours ("did you mean")
OTHER_NAMES = {"n_layer": "depth", "n_embd": "dim", "n_head": "num_heads", "learning_rate": "lr", "max_iters": "max_steps",
               "lr_decay_iters": "lr_decay_steps", "warmup_iters": "warmup_steps", "eval_interval": "eval_every",
               "eval_iters": "eval_batches", "log_interval": "log_every", "gradient_accumulation_steps": "grad_accum",
               "out_dir": "run_dir", "output_dir": "run_dir", "dataset": "data", "dtype": "precision", "bf16": "precision",
               "fp16": "precision", "max_grad_norm": "grad_clip", "adam_beta1": "beta1", "adam_beta2": "beta2",
               "per_device_train_batch_size": "batch_size", "train_batch_size": "batch_size", "save_steps": "ckpt_every",
               "eval_steps": "eval_every", "logging_steps": "log_every", "save_total_limit": "keep_checkpoints",
               "dataloader_num_workers": "num_workers", "gradient_checkpointing": "grad_checkpoint", "torch_compile": "compile",
               "n_heads": "num_heads", "n_layers": "depth", "d_model": "dim", "embed_dim": "dim", "hidden_size": "dim"}  # fmt: skip


def apply_values(cfg, values: dict, source: str):
    hints = typing.get_type_hints(type(cfg))
    names = [f.name for f in dataclasses.fields(cfg)]  # (not the class's tables: AT_LEAST, NOT_USED)
    for key, raw in values.items():
        if key not in names:
            valid = [n for n in names if n not in getattr(cfg, "NOT_USED", ())]
            ours = OTHER_NAMES.get(str(key))
            near = [ours] if ours in valid else difflib.get_close_matches(str(key), valid, n=3, cutoff=0.7)
            per = " ours counts a whole step's samples, over every process and accumulation step" if ours == "batch_size" else ""
            meant = f" (did you mean {' or '.join(near)}?{per})" if near else ""
            raise ConfigError(f"unknown config key {key!r} in {source}{meant}; valid keys: {', '.join(valid)}")
        try:
            setattr(cfg, key, _coerce(key, raw, hints[key]))
        except ConfigError as e:
            raise ConfigError(f"{e} in {source}") from None
    return cfg


def parse_overrides(args: list[str]) -> dict:
    """`key=value` arguments as a dict; a key given twice takes the last value (nanoGPT's
    configurator's rule), so a script can append overrides to a base list."""
    out = {}
    for a in args:
        key, sep, value = a.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {a!r} is not of the form key=value")
        out[key.strip()] = value
    return out


def _key_twice(root) -> yaml.Node | None:
    """The first mapping key given twice in a composed YAML document (PyYAML keeps the last: an
    `lr:` further down would silently win), or None. Each node is visited once: an alias names a
    node already seen (an alias bomb's 9**9 references are 9 nodes; a node holding itself ends)."""
    seen_nodes, todo = set(), [root]
    while todo:
        node = todo.pop()
        if id(node) in seen_nodes:
            continue
        seen_nodes.add(id(node))
        if isinstance(node, yaml.MappingNode):
            keys = set()
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode) and key.value != "<<":
                    if key.value in keys:
                        return key
                    keys.add(key.value)
                todo.append(value)
        elif isinstance(node, yaml.SequenceNode):
            todo.extend(node.value)
    return None


def read_yaml(path: Path) -> dict:
    try:
        text = read_utf8(path, "config file")
        twice = _key_twice(yaml.compose(text, Loader=yaml.SafeLoader))  # (nodes only: nothing constructed)
        if twice is not None:
            m = twice.start_mark
            raise ConfigError(f"config file {path} is not valid YAML: key {twice.value!r} is given twice (line {m.line + 1}, column {m.column + 1})")
        doc = yaml.safe_load(text)
    except (FileNotFoundError, ValueError) as e:  # missing, a folder, not UTF-8
        raise ConfigError(str(e)) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise ConfigError(f"config file {path} is not valid YAML: {getattr(e, 'problem', None) or str(e).splitlines()[0]}{where}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("recipe"), str):
        raise ConfigError(f"config file {path} must be a mapping with a 'recipe:' name")
    return doc


def named_configs() -> dict[str, Path]:
    return {p.stem: p for p in sorted(CONFIG_DIR.glob("*.yaml"))}
