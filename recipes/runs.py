"""Recipes by name, and run directories: what a run saved and how to load it back.

A run directory holds `run.json` (recipe name + full config), `tokenizers/<modality>/`,
`metrics.jsonl`, `loss.png`, `results.json` and `checkpoints/step-N/` (each a loadable model
directory plus training state). Recipes are looked up in a fixed table (plus the entry points of
installed plugin packages, group `tokenizers_mm.recipes`), never by a module path taken from a
config or a file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import json
import os
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

from models import MultimodalTransformer
from models.transformer import CONFIG_FILE, WEIGHTS_FILE
from tokenizers_mm import Tokenizer, load_tokenizer
from tokenizers_mm.base import read_json, write_json_atomic

from .checkpoint import CKPT_DIR, STEP_RE, held_checkpoint, latest_checkpoint, verify_latest
from .config import ConfigError, apply_values, launch_rank, launched_processes, named_configs, parse_overrides, read_yaml, say

# name -> module; each module has `Config` (a TrainConfig), `main(cfg, resume=False)`, `evaluate(run_dir,
# device=None)` and, for generative recipes, `generate(run_dir, prompt, ..., device=None)`.
RECIPES = {
    "gpt_char": "recipes.gpt_char",
    "gpt_bpe": "recipes.gpt_bpe",
    "vit_digits": "recipes.vit_digits",
    "vit_mnist": "recipes.vit_mnist",
    "vit_folder": "recipes.vit_folder",
    "whisper_digits": "recipes.whisper_digits",
    "whisper_folder": "recipes.whisper_folder",
    "dt_cartpole": "recipes.dt_cartpole",
    "dt_pendulum": "recipes.dt_pendulum",
    "dt_offline": "recipes.dt_offline",
    "generalist": "recipes.generalist",
}
RUN_FILE = "run.json"
CONFIG_BYTES = 1 << 20  # a file given where a recipe goes and larger than this is data, not a config: refused unread
# run.json's format: 2 since 2026-12 (a recipe's Config.upgrade_run(values, format) reads an older one's
# values as they were meant: dt's target 0 meant "the data's best", now None); 1 = no "format" key
RUN_FORMAT = 2
LOCK_FILE = ".lock"  # held while the run trains (run_lock)
MODEL_FILES = (CONFIG_FILE, WEIGHTS_FILE)  # what load_trained reads of a checkpoint
RECIPE_ENTRY_POINTS = "tokenizers_mm.recipes"  # installed packages add recipes here: name = "package.module"


_WARNED: set[str] = set()  # plugin recipes refused, run.json files lacking keys: said once


def all_recipes() -> dict[str, str]:
    """Built-in recipes, then those of installed plugins (a plugin cannot replace a built-in)."""
    from importlib.metadata import entry_points

    plugins = {}
    for ep in entry_points(group=RECIPE_ENTRY_POINTS):
        if ep.name not in RECIPES:
            plugins[ep.name] = ep.value
        elif ep.value != RECIPES[ep.name] and ep.value not in _WARNED:  # (once per process)
            _WARNED.add(ep.value)
            warnings.warn(f"tokenizers_mm: plugin recipe {ep.name!r} ({ep.value}) not used: {ep.name} is a built-in recipe "
                          f"({RECIPES[ep.name]}); give the plugin's another name", stacklevel=2)  # fmt: skip
    return {**RECIPES, **plugins}


def get_recipe(name: str):
    recipes = all_recipes()
    if name not in recipes:
        raise ConfigError(f"unknown recipe {name!r}; recipes: {', '.join(recipes)}; named configs: {', '.join(named_configs())}")
    where = f"recipe {name!r} (entry point {RECIPE_ENTRY_POINTS}: {name} = {recipes[name]})"
    if ":" in recipes[name] and name not in RECIPES:
        raise ConfigError(f"{where}: a recipe's entry point names its module (package.recipe), not an object in it (package.recipe:Config)")
    try:
        module = importlib.import_module(recipes[name])
    except Exception as e:
        if name in RECIPES:  # (a built-in's failure is ours: its traceback)
            raise
        # an installed plugin's: one line naming the entry point
        raise ConfigError(f"{where} fails to import: {type(e).__name__}: {e}") from None
    missing = [f for f in ("Config", "main") if not hasattr(module, f)]
    if missing:  # (a plugin's module that is no recipe: an AttributeError further on)
        raise ConfigError(f"{where}: the module has no {' and no '.join(missing)}; a recipe module defines a Config dataclass, "
                          "main(cfg, resume=False) and evaluate(run_dir, device=None)")  # fmt: skip
    return module


def make_config(recipe_or_yaml: str, overrides: list[str]):
    """'gpt_char', a named config ('gpt_char_shakespeare') or a YAML path, plus key=value overrides."""
    values: dict = {}
    source = recipe_or_yaml
    base_values, base_source = {}, ""  # a named config the YAML file builds on (`recipe: gpt_char_shakespeare`): its keys
    if not recipe_or_yaml.strip():  # (an unset shell variable: Path("") is the current folder)
        raise ConfigError("an empty recipe name; expected a recipe (`mmtok recipes` lists them), a named config or a YAML file")
    if recipe_or_yaml in all_recipes():
        name = recipe_or_yaml
    else:
        path = named_configs().get(recipe_or_yaml) or Path(recipe_or_yaml)
        if not path.suffix and os.sep not in recipe_or_yaml and not path.exists():
            get_recipe(recipe_or_yaml)  # raises the "unknown recipe" error
        run = path if (path / RUN_FILE).is_file() else path.parent if path.name == RUN_FILE else None
        if run is not None:
            raise ConfigError(f"{run} is a run directory: `mmtok resume {run}` continues it (max_steps=N to go further)")
        hint = (f"to train on it, give a recipe and data=, as in `mmtok train gpt_char data={path}` (`mmtok recipes` lists the "
                "recipes)")  # fmt: skip
        size = path.stat().st_size if path.is_file() else 0
        if path.suffix.lower() not in (".yaml", ".yml") and size > CONFIG_BYTES:
            raise ConfigError(f"{path} is neither a recipe nor a config file ({size:,} bytes); {hint}")  # (not read)
        try:
            doc = read_yaml(path)
        except ConfigError as e:  # (a data file given where the recipe goes: say how to train on it)
            if path.suffix.lower() in (".yaml", ".yml") or not path.exists():
                raise
            raise ConfigError(f"{path} is neither a recipe nor a config file ({e}); {hint}") from None
        name = doc.pop("recipe")
        values, source = doc, str(path)
        if name not in all_recipes() and name in named_configs() and path != named_configs()[name]:  # `recipe: gpt_char_shakespeare`:
            base_source = str(named_configs()[name])  # that config's recipe and keys, this file's keys over them
            base = read_yaml(named_configs()[name])
            name, base_values = base.pop("recipe"), {k: v for k, v in base.items() if k not in values}
    module = get_recipe(name)
    overrides = parse_overrides(overrides)
    for key in PATH_KEYS:
        value = {**base_values, **values}.get(key) if key not in overrides else None
        if isinstance(value, str) and value.startswith(("/", "./", "../", "~")) and not Path(os.path.expanduser(value)).exists():
            raise ConfigError(f"{key}={value}, set in {source if key in values else base_source}, does not exist here: give {key}=PATH on "
                              "the command line")  # fmt: skip
    for key in [*base_values, *values, *overrides]:
        if key in getattr(module.Config, "NOT_USED", ()):  # note: a plugin's config may not extend TrainConfig
            raise ConfigError(f"config key {key!r} does not apply to {name}: its config inherits the key from one it builds on, "
                              f"but {name} does not use it")  # fmt: skip
    cfg = apply_values(apply_values(module.Config(), base_values, base_source), values, source)
    cfg = apply_values(cfg, overrides, "the command line")
    if hasattr(cfg, "check"):
        cfg.check()
    for key in ("run_dir", *PATH_KEYS, *CACHE_DIR_KEYS):  # ~ in a YAML file or a quoted value, which no shell expanded
        value = getattr(cfg, key, None)
        if isinstance(value, str) and value.startswith("~"):
            setattr(cfg, key, os.path.expanduser(value))
    for key in LOCAL_PATH_KEYS:  # note: checked before a run directory is made
        value = getattr(cfg, key, "")
        if value and not Path(value).exists():
            raise ConfigError(f"{key}={value}: no such file or folder")
    return name, module, cfg


HELD_LOCKS: set[int] = set()  # the file descriptors of the run locks this process holds (run_lock)


def _drop_held_locks() -> None:
    """In a forked child (a DataLoader worker): its copies of the run locks' descriptors point to
    /dev/null instead. A flock belongs to the open file, which a fork shares, so a worker orphaned by
    a killed trainer would hold the run's lock until it noticed and exited, refusing an immediate
    resume. (dup2, not close: the child's file objects still own those descriptor numbers.)"""
    if HELD_LOCKS:
        null = os.open(os.devnull, os.O_RDWR)
        for fd in HELD_LOCKS:
            os.dup2(null, fd)
        os.close(null)
        HELD_LOCKS.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_drop_held_locks)


@contextlib.contextmanager
def run_lock(run_dir):
    """Hold RUN_DIR/.lock while a run trains (`mmtok train` / `resume`; the launch's first process):
    a second train or resume into the same folder is refused in one line, not left to delete the
    first's checkpoint being written and interleave their logs. The OS lets go when the process
    ends, killed or not; forked children (DataLoader workers) hold no share of it. A no-op where
    there is no fcntl (Windows)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover
        yield
        return
    if launch_rank() != 0:
        yield
        return
    run_dir, lock = Path(run_dir), Path(run_dir) / LOCK_FILE
    made = [d for d in (run_dir, *run_dir.parents) if not d.exists()]  # (the default's runs/ too)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        f = open(lock, "a+")
    except OSError as e:
        raise ConfigError(f"run_dir {run_dir}: cannot write its lock file ({e.strerror or e})") from None
    with f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            pid = f.read().strip()
            raise ConfigError(f"run_dir {run_dir} is in use by another training process{f' (pid {pid})' if pid.isdigit() else ''}: "
                              "wait for it to end, or give another run_dir") from None  # fmt: skip
        except OSError as e:  # a file system without locks (NFS without lockd, Lustre without -o flock): the run goes on unguarded
            warnings.warn(f"tokenizers_mm: run_dir {run_dir}: its file system takes no lock ({e.strerror or e}); nothing stops a second run into it")
            yield
            return
        try:
            try:
                f.truncate(0)
                f.write(str(os.getpid()))
                f.flush()
            except OSError as e:  # (a full disk: named, as the open's failure is)
                raise ConfigError(f"run_dir {run_dir}: cannot write its lock file ({e.strerror or e})") from None
            HELD_LOCKS.add(f.fileno())
            try:
                yield
            finally:
                HELD_LOCKS.discard(f.fileno())
        except BaseException:
            if made and [p.name for p in run_dir.iterdir()] == [LOCK_FILE]:  # a run refused before it began leaves no folder
                lock.unlink()
                with contextlib.suppress(OSError):  # (nor the folders made for it: runs/ of the default run_dir)
                    for d in made:
                        d.rmdir()
            raise


def resolve_run_dir(cfg, recipe: str) -> Path:
    if not cfg.run_dir:
        cfg.run_dir = launch_shared(str(Path("runs") / f"{recipe}-{time.strftime('%Y%m%d-%H%M%S')}"), "run_dir")
    if Path(cfg.run_dir).exists() and not Path(cfg.run_dir).is_dir():
        raise ConfigError(f"run_dir={cfg.run_dir} is a file; a run directory is a folder (a new one, or a run's to resume)")
    return Path(cfg.run_dir)


_SHARED_CALLS: dict[str, int] = {}  # launch_shared's calls per key in this process


def launch_shared(value: str, key: str) -> str:
    """Process 0's `value`, for every process of a torchrun / accelerate launch (through the
    launcher's store, before any process group exists): a default run directory named from each
    process's clock would differ when they start a second apart. Alone, or under another launcher,
    `value` as it is."""
    if launched_processes() < 2 or os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True" or "MASTER_PORT" not in os.environ:
        return value
    from datetime import timedelta

    import torch.distributed as dist

    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False, timeout=timedelta(minutes=5))
    calls = _SHARED_CALLS[key] = _SHARED_CALLS.get(key, 0) + 1  # (each process makes the same calls in turn: a sweep's second run its own)
    name = f"tokenizers_mm/{key}/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}/{calls}"
    if launch_rank() == 0:
        store.set(name, value)
    return store.get(name).decode()


PATH_KEYS = ("data", "init_from", "tokenizer", "text_data")  # config keys naming a file or folder (data may be a Minari id)
LOCAL_PATH_KEYS = PATH_KEYS[1:]  # those that must exist when a run starts
CACHE_DIR_KEYS = ("data_dir", "rl_dir", "speech_dir")  # folders a recipe creates for its generated data


def save_run_info(run_dir: Path, recipe: str, cfg, files: Callable[[], None] | None = None) -> None:
    """Start a run directory: refuses one that already holds a run's checkpoints (their higher
    steps would be taken for this run's, and this run's pruned). `files()` writes the run's other
    files (tokenizers, class names) before run.json, which marks the run as started: a run killed
    before it holds none (`mmtok train` starts it again), and a started one has all it resumes with."""
    if held_checkpoint(run_dir) is not None:
        raise ConfigError(f"run_dir {run_dir} already holds checkpoints of a run: `mmtok resume {run_dir}` continues it, "
                          "or give another run_dir")  # fmt: skip
    run_dir.mkdir(parents=True, exist_ok=True)
    if files is not None:
        files()
    config = dataclasses.asdict(cfg)
    for key, value in config.items():  # note: absolute, so `mmtok eval` / `resume` work from any directory
        if isinstance(value, str) and value and (key in CACHE_DIR_KEYS or (key in PATH_KEYS and Path(value).exists())):
            config[key] = str(Path(value).resolve())
    write_json_atomic(run_dir / RUN_FILE, {"recipe": recipe, "format": RUN_FORMAT, "config": config})


def resumed_architecture(run_dir, tokenizers: dict | None = None) -> MultimodalTransformer | None:
    """A resumed run's model as its checkpoint describes it (train() then loads the weights): a run
    started from imported weights (init_from=) resumes without that file, and in the architecture it
    was built with; checked against the run's `tokenizers`. None before its first checkpoint (it
    starts again from step 0: built anew)."""
    ckpt = held_checkpoint(run_dir)
    if ckpt is None:
        return None
    verify_latest(ckpt)  # a damaged config.json: refused naming the older checkpoint that verifies (train() loads it)
    return check_tokenizers(MultimodalTransformer.architecture(ckpt), tokenizers or {}, run_dir)


def check_tokenizers(model: MultimodalTransformer, tokenizers: dict, run_dir) -> MultimodalTransformer:
    """Refuse a run's tokenizer whose vocabulary or value width is not what the model embeds (its
    files edited or replaced since training): ids past the embedding fail later, ids within it
    decode to other text without a word."""
    for name, tok in tokenizers.items():
        held = model.config.modalities.get(name)
        for key in ("vocab_size", "value_dim"):
            mine, theirs = getattr(tok.spec, key), held and getattr(held, key)
            if None not in (mine, theirs) and mine != theirs:
                raise ValueError(f"run {run_dir}: tokenizers/{name} has {key} {mine}, the model's {name!r} embedding {theirs}: "
                                 "its files changed since training")  # fmt: skip
    return model


RESUME_OVERRIDES = ("max_steps", "lr_decay_steps", "fsdp")  # what `mmtok resume RUN key=value` may change
# run.json keys an edit may change before a resume: how often the run logs, evaluates and saves, how fast it
# computes, whether a non-finite batch is skipped (after a stop on one); not what it trains (num_workers is not
# among them: with none, augmentation draws from the main process's checkpointed RNG, with workers per batch)
RESUME_EDITABLE = ("log_every", "eval_every", "ckpt_every", "keep_checkpoints", "log_mfu", "compile", "grad_checkpoint", "fused_adamw",
                   "skip_nonfinite")  # fmt: skip


def changed_since(cfg, recorded, run_dir) -> list[str]:
    """`key=now (trained with: then)` for each config value that differs from what a run's checkpoint
    recorded it training with (`trainer_state.json`'s config; run.json edited since): a resumed run
    takes its model, optimizer and schedule from the checkpoint, so a changed size or learning rate
    would be ignored, and a changed batch size or seed would break the exact resume, without a word.
    Paths (a folder moved), the keys resume and RESUME_EDITABLE may change and the recipe's EVAL_KEYS
    are free. The recorded values are read as run.json's of that format are (`upgrade_run`)."""
    if not isinstance(recorded, dict):  # (a checkpoint of an older version)
        return []
    if hasattr(type(cfg), "upgrade_run") and (Path(run_dir) / RUN_FILE).is_file():
        fmt = read_json(Path(run_dir) / RUN_FILE, "run").get("format", 1)
        recorded = type(cfg).upgrade_run(dict(recorded), fmt if isinstance(fmt, int) else 1)
    free = {"run_dir", *PATH_KEYS, *CACHE_DIR_KEYS, *RESUME_OVERRIDES, *RESUME_EDITABLE, *getattr(type(cfg), "EVAL_KEYS", ())}
    now = json.loads(json.dumps(dataclasses.asdict(cfg)))  # (as the checkpoint wrote it: tuples as lists)
    return [f"{k}={now[k]!r} (trained with: {recorded[k]!r})" for k in now if k in recorded and k not in free and now[k] != recorded[k]]


DATA_FILE = "data.json"  # what a run's data was as it started (counts, a SHA-256): its resume checks it is the same


def record_data(run_dir: Path, fingerprint: dict) -> None:
    """Write a new run's data fingerprint ({"sha256": HEX, and counts: "episodes": N, ...})."""
    write_json_atomic(Path(run_dir) / DATA_FILE, fingerprint)


def check_same_data(run_dir, fingerprint: dict, source: str, what: str, made_here: bool = False) -> None:
    """Refuse to resume a run on data other than it started with (a file edited or replaced since):
    it would go on training on other `what` than its steps so far, without a word. Data the toolkit
    makes (`made_here`: the built-in corpus, an embedded dataset) may come out otherwise under another
    Python or library version: said, and resumed on. A run made before data.json, or whose data.json
    is damaged (said), is not checked."""
    path = Path(run_dir) / DATA_FILE
    if not path.exists():
        return
    try:
        then = read_json(path, "data")
        if not isinstance(then.get("sha256"), str):
            raise ValueError(f"{path}: no sha256 in it")
    except ValueError as e:
        say(f"{source}: not checked against the data the run started with ({e}; remove it to resume without this line)")
        return
    if then["sha256"] == fingerprint["sha256"]:
        return

    def said(d):
        return ", ".join([f"{v:,} {k}" for k, v in d.items() if k != "sha256" and isinstance(v, int)] + [f"sha256 {d['sha256'][:12]}"])

    differs = f"{source}: not the data run {run_dir} started with ({said(then)} then; {said(fingerprint)} now)"
    if made_here:
        say(f"{differs}: made again otherwise here (another Python, gymnasium or NumPy version?); the run goes on on it, not exactly as "
            "it would have")  # fmt: skip
        return
    raise ValueError(f"{differs}: a resume trains on the same {what}; restore the data, or start a new run on it")


def update_run_info(run_dir, **changes) -> None:
    """Change config values in a run's run.json (resume's max_steps=N)."""
    path = Path(run_dir) / RUN_FILE
    doc = read_json(path, "run")
    if any(doc["config"].get(k) != v for k, v in changes.items()):
        doc["config"].update(changes)
        write_json_atomic(path, doc)


def record_resumed(run_dir, cfg) -> None:
    """Write the RESUME_OVERRIDES a run trains with into its run.json once its training starts (its
    data, model and checkpoint read; a write only where they differ, as after `mmtok resume RUN
    max_steps=N`, also when that resume starts again from step 0): a later plain resume or eval
    keeps them, and a resume refused on the way (its data file gone) changes nothing."""
    if (Path(run_dir) / RUN_FILE).exists():
        update_run_info(run_dir, **{k: getattr(cfg, k) for k in RESUME_OVERRIDES if hasattr(cfg, k)})


def not_a_run(folder: Path) -> str:
    """What a folder without run.json is likely to be, for the error that says so: a checkpoint or
    the checkpoints of a run (give the run), a folder of runs (give one), or a run killed while it
    was set up."""
    if folder.parent.name == CKPT_DIR and STEP_RE.match(folder.name) and (folder.parent.parent / RUN_FILE).exists():
        return f"a checkpoint of the run {folder.parent.parent}; give the run directory"
    if folder.name == CKPT_DIR and (folder.parent / RUN_FILE).exists():
        return f"the checkpoints of the run {folder.parent}; give the run directory"
    try:
        runs = sorted(d.name for d in folder.iterdir() if (d / RUN_FILE).exists())
    except OSError:  # (unreadable: say what is known)
        runs = []
    if runs:
        named = ", ".join(runs[:3]) + (", ..." if len(runs) > 3 else "")
        return f"a folder of {len(runs)} run{'s' if len(runs) > 1 else ''} ({named}); give one of them"
    return f"not a run directory, or a run killed while it was set up (`mmtok train RECIPE run_dir={folder} ...` starts it)"


def load_run_info(run_dir):
    """(recipe name, module, config) of a run directory."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        if run_dir.exists():
            raise FileNotFoundError(f"{run_dir} is a file; expected a run directory (the run_dir a training run wrote)")
        raise FileNotFoundError(f"run directory {run_dir} does not exist")
    if not (run_dir / RUN_FILE).exists():
        raise FileNotFoundError(f"{run_dir} holds no {RUN_FILE}: {not_a_run(run_dir)}")
    doc = read_json(run_dir / RUN_FILE, "run")
    if not isinstance(doc, dict) or not isinstance(doc.get("recipe"), str) or not isinstance(doc.get("config", {}), dict):
        raise ConfigError(f'{run_dir / RUN_FILE}: expected {{"recipe": NAME, "config": {{KEY: VALUE, ...}}}}, as a run writes it')
    module = get_recipe(doc["recipe"])
    values, fmt = dict(doc.get("config", {})), doc.get("format", 1)
    if isinstance(fmt, bool) or not isinstance(fmt, int) or not 1 <= fmt <= RUN_FORMAT:
        raise ConfigError(f"{run_dir / RUN_FILE}: format {fmt!r}; this version reads run formats 1 to {RUN_FORMAT} (a newer tokenizers-mm wrote it?)")
    if hasattr(module.Config, "upgrade_run"):
        values = module.Config.upgrade_run(values, fmt)
    cfg = apply_values(module.Config(), values, str(run_dir / RUN_FILE))
    missing = [f.name for f in dataclasses.fields(cfg) if f.name not in values and f.name != "run_dir"]
    if missing and str(run_dir) not in _WARNED and launch_rank() == 0:  # a run writes every key: one edited by hand, or written
        _WARNED.add(str(run_dir))  # before a key existed, trains otherwise unseen (said once a process, by one of torchrun's)
        defaults = ", ".join(f"{k}={getattr(cfg, k)!r}" for k in missing[:6]) + (f" and {len(missing) - 6} more" if len(missing) > 6 else "")
        warnings.warn(f"tokenizers_mm: {run_dir / RUN_FILE} holds no value for {len(missing)} config key(s); "
                      f"they take their defaults: {defaults}", stacklevel=2)  # fmt: skip
    cfg.run_dir = str(run_dir)
    return doc["recipe"], module, cfg


def inference_device(device=None):
    """The torch.device a trained model runs on: `device` as torch names it (cpu, cuda, cuda:1, mps,
    ...), or "auto" for this machine's accelerator when it has one, else the CPU; None = the CPU.
    One that is not here is refused in one line (not a CUDA error deep in the model)."""
    if device is None:
        return torch.device("cpu")
    here = torch.accelerator.current_accelerator() if torch.accelerator.is_available() else None
    if str(device).strip().lower() == "auto":
        return torch.device(here.type) if here is not None else torch.device("cpu")
    try:
        d = torch.device(str(device).strip())
    except RuntimeError:
        raise ConfigError(f"device {device!r}: expected cpu, cuda, cuda:N, mps, auto or another device name torch knows") from None
    if d.type != "cpu":
        if here is None or here.type != d.type:
            raise ConfigError(f"device {device!r}: this machine has no {d.type} device (torch sees {here.type if here else 'only the CPU'})")
        if d.index is not None and d.index >= torch.accelerator.device_count():
            raise ConfigError(f"device {device!r}: this machine has {torch.accelerator.device_count()} {d.type} device(s), numbered from 0")
    return d


def load_trained(run_dir, device="cpu") -> tuple[MultimodalTransformer, dict[str, Tokenizer]]:
    """The latest checkpoint's model (checked against its manifest) on `device` (`inference_device`),
    in eval mode, and the run's tokenizers."""
    device = inference_device(device)
    run_dir = Path(run_dir)
    for attempt in range(3):
        ckpt = latest_checkpoint(run_dir)
        if ckpt is None:
            if (run_dir / RUN_FILE).exists():  # (a run still training towards its first checkpoint, or stopped before it)
                raise FileNotFoundError(f"no checkpoint in {run_dir / 'checkpoints'} yet: the run is before its first, or was stopped "
                                        f"there (then `mmtok resume {run_dir}` trains it)")  # fmt: skip
            raise FileNotFoundError(f"no checkpoint in {run_dir / 'checkpoints'}: train first")
        try:
            verify_latest(ckpt, only=MODEL_FILES)  # (the weights are all it reads: a damaged optimizer state does not stop eval or export)
            model = MultimodalTransformer.load(ckpt, device).eval()
            break
        except (OSError, ValueError):
            if ckpt.exists() or attempt == 2:
                raise
            # (pruned while read: a run still training wrote a newer one meanwhile, which is read instead)
    tok_root = run_dir / "tokenizers"
    tokenizers = RunTokenizers(run_dir, {p.name: load_tokenizer(p) for p in sorted(tok_root.iterdir())} if tok_root.is_dir() else {})
    return check_tokenizers(model, tokenizers, run_dir), tokenizers


class OneDevice:
    """What a recipe's evaluation reads of an Accelerate accelerator, for one process on one device:
    an evaluation outside training needs no process group, and a second Accelerator in a process
    that has made one keeps the first one's device and refuses another precision."""

    process_index, num_processes, is_main_process = 0, 1, True

    def __init__(self, device):
        self.device = torch.device(device)

    def unwrap_model(self, model, **_):
        return model

    def reduce(self, tensor, *_, **__):
        return tensor

    def gather(self, tensor):
        return tensor


@contextlib.contextmanager
def gloo_quiet(on: bool = True):
    """While gloo connects a CPU process group (`on`), stdout's file descriptor goes to /dev/null:
    gloo prints "[Gloo] Rank r is connected to n peer ranks ..." there from C++, once per process,
    which would run into a command's output (`mmtok eval`'s JSON). Its errors go to stderr."""
    if not on:
        yield
        return
    sys.stdout.flush()
    saved, null = os.dup(1), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(null)


class EvalProcesses(OneDevice):
    """OneDevice for each process of an evaluation launched with torchrun / accelerate launch: the
    process group (gloo on the CPU, NCCL on GPUs) without an Accelerate state, so that the
    evaluations (`accuracy`, `mean_loss`, WER, rollouts) split the batches or episodes over the
    processes (`train.my_share`) and sum their figures (`train.summed`), as in training."""

    def __init__(self, device):
        import torch.distributed as dist

        super().__init__(device)
        if not dist.is_initialized():
            if self.device.type == "cuda":  # NCCL's collectives (and the command's closing barrier) run on the current GPU
                torch.cuda.set_device(self.device)
            with gloo_quiet(self.device.type != "cuda"):
                dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
        self.group = None  # the default group; on the CPU after a GPU training (NCCL, GPU tensors only): a gloo group of all
        if self.device.type == "cpu" and dist.get_backend() != "gloo":
            with gloo_quiet():
                self.group = dist.new_group(backend="gloo")  # (every process makes it: collective)
        self.process_index, self.num_processes = dist.get_rank(), dist.get_world_size()
        self.is_main_process = self.process_index == 0

    def reduce(self, tensor, reduction: str = "sum", *_, **__):
        import torch.distributed as dist

        tensor = tensor.clone()
        dist.all_reduce(tensor, group=self.group)
        return tensor / self.num_processes if reduction == "mean" else tensor

    def gather(self, tensor):
        import torch.distributed as dist

        parts = [torch.empty_like(tensor) for _ in range(self.num_processes)]
        dist.all_gather(parts, tensor.contiguous(), group=self.group)
        return torch.cat(parts)


def process_share(device) -> OneDevice:
    """What splits an evaluation on `device` over the processes torchrun / accelerate launch
    started (`EvalProcesses`), or this process alone (`OneDevice`)."""
    return (EvalProcesses if launched_processes() > 1 else OneDevice)(device)


def load_for_eval(run_dir, device=None):
    """(config, model, tokenizers, accelerator): what a recipe's `evaluate(run_dir, device)` scores
    a run's last checkpoint with, on `device` (`inference_device`; None = the CPU), in float32: in
    this process alone (`OneDevice`), or, launched as several processes, each on its own GPU
    (cuda:LOCAL_RANK for "cuda" or "auto") with the batches split over them (`EvalProcesses`)."""
    _, _, cfg = load_run_info(run_dir)
    model, toks = load_trained(run_dir, eval_device(device))
    return cfg, model, toks, process_share(model.device)


def eval_device(device=None) -> torch.device:
    """`inference_device(device)`; launched as several processes, "cuda" (or "auto" on a CUDA
    machine) is each process's own GPU, cuda:LOCAL_RANK, as in training."""
    device = inference_device(device)
    if launched_processes() > 1 and device.type == "cuda" and device.index is None:
        device = inference_device(f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}")
    return device


class RunTokenizers(dict):
    """A run's tokenizers by modality; asking for one it lacks (an image command on a speech run)
    is one clear error."""

    def __init__(self, run_dir: Path, tokenizers: dict):
        super().__init__(tokenizers)
        self.run_dir = run_dir

    def __missing__(self, modality):
        if not self:  # (every run saves its tokenizers: the folder was removed or moved)
            raise KeyError(f"run {self.run_dir} has no tokenizers ({Path(self.run_dir) / 'tokenizers'} is missing or empty); the run "
                           "cannot encode or decode without the ones it was trained with")  # fmt: skip
        raise KeyError(f"run {self.run_dir} has no {modality!r} tokenizer (it has: {', '.join(self)}); is it a run of the right recipe?")


def results(run_dir) -> dict:
    path = Path(run_dir) / "results.json"
    return json.loads(path.read_text()) if path.exists() else {}
