"""generalist: ONE transformer, one set of weights, trained jointly on images, speech and control.

Config → tasks → mixed batches → model → metrics → main. Three tasks of different modalities
(and optionally a character LM, `text`) share one trunk:

    digits   vit_digits' 8×8 handwritten digits     image patches + CLS  → class at the CLS token
    speech   whisper_digits' synthesized speech     log-mel frames → conv stem, then characters
    control  dt_cartpole's mixed-quality episodes   return / state / action tokens → next action

Design (as Gato / Unified-IO, with per-task heads instead of one shared vocabulary):
- One trunk, two layouts (`layout`):
  "encoder-decoder" (default) — image patches and audio frames go through one shared encoder
  (attention both ways inside an example), transcripts, trajectories and prose through one shared
  decoder (causal), which cross-attends to its own example's encoder tokens and to one learned
  null memory token (so a trajectory, which has no encoder tokens, computes the same alone or
  packed beside an utterance). "prefix" — one decoder-only stack for everything: image patches
  and audio frames are prefixes attended both ways inside their example, the rest causally (a
  prefix LM, as T5 / PaLI); it learned speech more slowly here (benchmarks/RESULTS.md).
- Every token carries its modality's learned embedding (linear for patches / frames / states,
  a table for characters), its modality's position table, and a row of the one shared type table.
- Per-task heads on the shared hidden states: `digit` (10 classes, at the CLS token), `lm` (the
  characters, tied to their embedding), `action` (CartPole's 2 actions, at each state token).
  Per-task heads keep each task's output exactly as its single-task recipe has it (Gato's shared
  vocabulary would turn "7" into a text token and actions into binned ids; it buys one softmax at
  the price of longer outputs). Loss weights per head: `loss_weights` (the defaults balance the
  tasks' gradients in the shared blocks: with equal weights digits' were ten times control's, and
  speech shares the encoder with digits and the decoder with control); loss masks come with
  the tokens (the transcript prompt and the action placeholders carry no loss). Each head's loss
  is its mean over the whole step's targets, every micro-batch and process counted
  (`recipes.train.step_loss_norms`): a step split into more micro-batches (`grad_accum`) or
  processes gives the same gradients, and a micro-batch without the task adds nothing for it.
- Batches mix tasks by `weights` (the expected number of examples of each task in a step, so a
  step holds as much of each task as its single-task recipe's step; batch_size is their sum unless
  given, and then they are shares of it), drawn from a seeded stream, so
  resume and multi-process runs stay exact. Examples of all tasks are packed into rows of about
  `row_tokens` slots (tokenizers_mm.pack_examples); a segment id per example makes attention
  block-diagonal, so no example sees another and little compute goes to padding.

Evaluation reports every task's own metric: digit accuracy, word error rate, CartPole return at
target 500. `benchmarks/generalist.py` runs the single-task recipes for the same number of steps
and prints the two side by side.

    mmtok train generalist
    mmtok train generalist tasks=digits,control weights=64,64
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

import torch
from accelerate.utils import set_seed
from torch.utils.data import Dataset

from models import HeadConfig, ModalityConfig, ModelConfig, MultimodalTransformer, TrunkConfig
from tokenizers_mm import TokenSet, collate, load_tokenizer, pack_examples
from tokenizers_mm.base import read_json, write_json_atomic

from .config import ConfigError, TrainConfig, check_split, launched_processes
from .folders import no_columns
from .runs import resolve_run_dir, resumed_architecture, save_run_info
from .train import my_share, my_spans, summed, train

TASKS = ("digits", "speech", "control", "text")
# the default loss weights per task: they balance the tasks' gradients in the shared trunk (README)
LOSS_WEIGHTS = {"digits": 0.6, "speech": 2.0, "control": 6.0, "text": 1.0}
ORDER = ("image", "trajectory", "prose", "audio", "text")  # the trunk's input order: transcripts last (generation), after their audio
PREFIX = ("image", "audio")  # attended in both directions within an example
STRIDE = {"audio": 2}  # Whisper's conv stem keeps every second frame
GROWN_FROM = "grown_from.json"  # in a grown run: the model config of the run it grew from


CONTROL_ENVS = ("CartPole-v1",)  # the embedded datasets (recipes/rl_data.py) whose actions are discrete


@dataclass
class Config(TrainConfig):
    tasks: str = "digits,speech,control"  # comma-separated, from digits / speech / control / text
    weights: str = ""  # per task, in the order of `tasks`: expected examples per step; "" = 32 each
    loss_weights: str = ""  # per task, in the order of `tasks`: weight of its head's loss in the sum; "" = LOSS_WEIGHTS
    row_tokens: int = 512  # packed rows hold about this many token slots
    layout: str = "encoder-decoder"  # "prefix": one decoder-only stack, images and audio as bidirectional prefixes |
    #                         "encoder-decoder": images and audio through a shared encoder, the rest through a shared decoder
    dim: int = 128
    depth: int = 4  # blocks of the encoder ("encoder-decoder"), or of the one stack ("prefix": 6 measured best)
    dec_depth: int = 3  # "encoder-decoder": decoder blocks; 0 = depth
    num_heads: int = 4
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    batch_size: int = 0  # examples per step over all tasks; 0 = the sum of weights (each task gets its weight on average)
    lr: float = 1e-3
    min_lr: float = 1e-5
    warmup_steps: int = 200
    max_steps: int = 3000
    beta2: float = 0.98
    weight_decay: float = 0.05
    eval_every: int = 1000
    ckpt_every: int = 500
    # digits (vit_digits)
    patch_size: int = 2
    label_smoothing: float = 0.1
    augment: bool = True
    # speech (whisper_digits)
    speech_dir: str = ""  # the synthesized corpus; "" = whisper_digits' cache
    n_train: int = 4000
    n_test: int = 300
    max_frames: int = 800
    max_text: int = 64
    eval_utterances: int = 300
    # control (dt_cartpole)
    env: str = "CartPole-v1"  # one of CONTROL_ENVS
    rl_dir: str = ""  # where the embedded dataset is cached; "" = dt's cache
    n_episodes: int = 0
    context: int = 20
    rtg_scale: float = 100.0
    max_timestep: int = 500
    target: float = 500.0
    eval_episodes: int = 20
    eval_seed: int = 10_000
    # text (gpt_char): a character LM, modality "prose"
    text_data: str = ""  # gpt_char's data=: a UTF-8 text file, JSON lines / CSV / Parquet rows; "" = its embedded corpus
    text_column: str = ""  # gpt_char's text_column=: text_data's column (a dataset); "" = `text`, or its only string column
    text_block: int = 64  # characters per window
    # growing a trained generalist
    init_from: str = ""  # a generalist run directory: start from its weights, adding this config's new tasks
    freeze_trained: bool = False  # with init_from: train only what is new; the old tasks' outputs stay exactly the same

    AT_LEAST = {**TrainConfig.AT_LEAST, "batch_size": 0}  # 0: the sum of the weights
    NOT_USED = ("eval_batches",)  # each task evaluates its own held-out set (eval_utterances, eval_episodes, ...)

    def check_fsdp(self) -> None:
        if self.fsdp:  # note: refused before a run directory is made (recipes/fsdp.py refuses such models too), and before
            # the shared rule's "launch 2 or more processes", which would only lead here
            raise ConfigError("fsdp=true needs every process to run every block each step, and a generalist's task mix may "
                              "leave a stack unused on one process: train it without fsdp (DDP; a run that has it: "
                              "mmtok resume RUN_DIR fsdp=false)")  # fmt: skip

    def check(self) -> None:
        self.check_fsdp()
        super().check()
        tasks = task_list(self)[0]
        if "control" in tasks and self.env not in CONTROL_ENVS:  # (dt's own message asks for data=, which this recipe lacks)
            raise ConfigError(f"env={self.env!r}: the control task trains on the embedded {' / '.join(CONTROL_ENVS)} episodes (discrete "
                              "actions) and takes no data=; to train on your own episodes: mmtok train dt_offline data=PATH")  # fmt: skip
        if self.text_column and "text" not in tasks:
            raise ConfigError(f"text_column={self.text_column}: names the text task's column in text_data; tasks={self.tasks!r} has no text")
        no_columns(SimpleNamespace(data=self.text_data, text_column=self.text_column), ("text_column",), "text_data")  # (a plain file has none)
        if self.freeze_trained and not self.init_from:  # (nothing is trained before: it froze nothing)
            raise ConfigError("freeze_trained=true keeps a grown run's trained parts as they are: it needs init_from=RUN_DIR")
        if self.layout == "prefix" and self.dec_depth != Config.dec_depth:
            raise ConfigError(f"dec_depth={self.dec_depth}: layout=prefix is one stack of depth={self.depth} blocks; dec_depth sizes "
                              "the encoder-decoder layout's decoder")  # fmt: skip


def task_list(cfg: Config) -> tuple[list[str], list[float], list[float]]:
    names = [t.strip() for t in cfg.tasks.split(",") if t.strip()]
    unknown = [t for t in names if t not in TASKS]
    if unknown:
        raise ValueError(f"tasks={cfg.tasks!r}: unknown task {unknown[0]!r}; tasks are {', '.join(TASKS)}")
    if not names or len(set(names)) != len(names):
        raise ValueError(f"tasks={cfg.tasks!r}: give distinct tasks from {', '.join(TASKS)}")
    nums = []
    for key, default in (("weights", dict.fromkeys(TASKS, 32.0)), ("loss_weights", LOSS_WEIGHTS)):
        raw = getattr(cfg, key).strip()
        if not raw:
            nums.append([default[n] for n in names])
            continue
        try:
            vals = [float(x) for x in raw.split(",")]
        except ValueError:
            raise ValueError(f"{key}={raw!r} must be comma-separated numbers") from None
        if len(vals) != len(names) or any(v < 0 or not math.isfinite(v) for v in vals):
            raise ValueError(f"{key}={raw!r} needs one non-negative number per task, in the order of tasks= ({', '.join(names)})")
        nums.append(vals)
    if sum(nums[0]) <= 0:
        raise ValueError(f"weights={cfg.weights!r}: at least one task needs a positive weight")
    if not any(w > 0 and lw > 0 for w, lw in zip(*nums)):  # (every loss 0: nothing would be learned)
        raise ValueError(f"loss_weights={cfg.loss_weights!r}: at least one task drawn (weight > 0) needs a positive loss weight")
    return names, nums[0], nums[1]


# -- tasks ----------------------------------------------------------------------------------------
@dataclass
class Task:
    name: str
    tokenizers: dict  # modality -> tokenizer
    heads: dict[str, HeadConfig]
    train_set: Dataset  # items: {modality: TokenSet}, targets inside the sets
    evaluate: Callable  # (model, accelerator) -> {metric: value}, each process evaluating its share (train.my_share), figures summed


class DigitExamples(Dataset):
    """vit_digits' images as {"image": patches + CLS}, the label as the CLS token's target."""

    def __init__(self, data, tok, cfg: Config, train: bool):
        self.data, self.tok, self.cfg, self.train = data, tok, cfg, train

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> dict:
        from .vit import random_affine

        x, y = self.data[i]
        if self.train and self.cfg.augment:
            x = random_affine(x[None], 10.0, 0.125, 0.1)[0]  # vit_digits' augmentation
        ts = self.tok.tokens((x - self.tok._mean) / self.tok._std)
        ts.targets = torch.where(ts.types == 1, int(y), 0)  # the label at the CLS token (type 1); the head reads only there
        return {"image": ts}


def digits_task(cfg: Config, loss_weight: float, tokenizers: dict, evaluating: bool = False) -> Task:
    from tokenizers_mm import ImageTokenizer

    from . import vit_digits

    train_set, test_set, classes, (mean, std) = vit_digits.build_data(vit_digits.Config())
    tok = tokenizers.get("image") or ImageTokenizer(image_size=8, patch_size=cfg.patch_size, channels=1, mean=mean, std=std, cls_token=True)
    test = DigitExamples(test_set, tok, cfg, train=False)
    labels = test_set.labels
    head = HeadConfig("token_classify", "image", num_outputs=len(classes), token_type="cls", label_smoothing=cfg.label_smoothing,
                      loss_weight=loss_weight)  # fmt: skip

    @torch.no_grad()
    def evaluate(model, accelerator) -> dict:
        correct = 0
        for span in my_spans(accelerator, len(test), 256):
            batch = collate([test[i]["image"] for i in span]).to(accelerator.device)
            logits = model({"image": batch}).logits["digit"][:, 0]  # the CLS token
            correct += int((logits.argmax(-1).cpu() == labels[span.start : span.stop]).sum())
        return {"digits_accuracy": summed(accelerator, correct)[0] / len(test)}

    return Task("digits", {"image": tok}, {"digit": head}, DigitExamples(train_set, tok, cfg, train=True), evaluate)


def speech_task(cfg: Config, loss_weight: float, tokenizers: dict, evaluating: bool = False) -> Task:
    from . import whisper_digits as wd

    wcfg = wd.Config(data_dir=cfg.speech_dir, n_train=cfg.n_train, n_test=cfg.n_test, max_frames=cfg.max_frames, max_text=cfg.max_text)
    audio_tok, text_tok, train_set, test_set = wd.build_data(wcfg, evaluating)
    audio_tok, text_tok = tokenizers.get("audio", audio_tok), tokenizers.get("text", text_tok)
    train_set.audio_tok = test_set.audio_tok = audio_tok
    train_set.text_tok = test_set.text_tok = text_tok
    n = min(cfg.eval_utterances, len(test_set))
    head = HeadConfig("lm", "text", loss_weight=loss_weight)

    @torch.no_grad()
    def evaluate(model, accelerator) -> dict:
        errors = words = 0
        for span in my_spans(accelerator, n, 32):
            audio = collate([test_set[i]["audio"] for i in span]).to(accelerator.device)
            hyps = wd.transcribe_batch(model, text_tok, audio, cfg.max_text - 3)
            e, w = wd.word_errors([(test_set.pairs[i][1], h) for i, h in zip(span, hyps)])
            errors, words = errors + e, words + w
        errors, words = summed(accelerator, errors, words)
        return {"speech_wer": errors / words}

    return Task("speech", {"audio": audio_tok, "text": text_tok}, {"lm": head}, train_set, evaluate)


def control_task(cfg: Config, loss_weight: float, tokenizers: dict, evaluating: bool = False) -> Task:
    from .rl_data import make_env

    from . import dt

    dcfg = dt.Config(env=cfg.env, data_dir=cfg.rl_dir, n_episodes=cfg.n_episodes, context=cfg.context, max_timestep=cfg.max_timestep,
                     rtg_scale=cfg.rtg_scale)  # fmt: skip
    episodes = [] if evaluating and "trajectory" in tokenizers else dt.load_data(dcfg)  # (an evaluation rolls out: no episodes read)
    if "trajectory" in tokenizers:
        tok = tokenizers["trajectory"]
    else:
        env = make_env(cfg.env)
        tok = dt.make_tokenizer(dcfg, episodes, env)
        env.close()
    if not tok.discrete:
        raise ValueError(f"generalist: env={cfg.env!r} has continuous actions; the control task reads discrete ones (CartPole)")
    head = HeadConfig("token_classify", "trajectory", num_outputs=tok.action_dim, token_type="state", loss_weight=loss_weight)
    seeds = list(range(cfg.eval_seed, cfg.eval_seed + cfg.eval_episodes))

    def evaluate(model, accelerator) -> dict:
        mean, std, _ = dt.shared_rollouts(accelerator, model, tok, cfg.env, cfg.target, seeds)
        return {"control_return": mean, "control_return_std": std}

    return Task("control", {"trajectory": tok}, {"action": head}, dt.Windows(episodes, tok), evaluate)


class ProseWindows(Dataset):
    """gpt_char's windows as {"prose": next-character TokenSet}."""

    def __init__(self, windows):
        self.windows = windows

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, i: int) -> dict:
        ts = self.windows[i]["text"]
        return {"prose": TokenSet("prose", ids=ts.ids, targets=ts.targets)}


def text_task(cfg: Config, loss_weight: float, tokenizers: dict, evaluating: bool = False) -> Task:
    from tokenizers_mm import CharTokenizer

    from . import gpt_char

    gcfg = gpt_char.Config(data=cfg.text_data, text_column=cfg.text_column, block_size=cfg.text_block)
    train_text, val_text = gpt_char.split_text(gcfg)
    tok = tokenizers.get("prose") or CharTokenizer.from_corpus(train_text + val_text, max_positions=cfg.text_block)
    train_set, val_set = (ProseWindows(w) for w in gpt_char.windows(gcfg, tok, train_text, val_text, key="text_block", fraction=None))
    g = torch.Generator().manual_seed(cfg.seed)
    val = [collate([val_set[int(i)]["prose"] for i in row]) for row in torch.randint(len(val_set), (8, 32), generator=g)]
    head = HeadConfig("lm", "prose", loss_weight=loss_weight)

    @torch.no_grad()
    def evaluate(model, accelerator) -> dict:
        loss = sum(model({"prose": val[i].to(accelerator.device)}).losses["prose_lm"].item() for i in my_share(accelerator, len(val)))
        return {"text_loss": summed(accelerator, loss)[0] / len(val)}

    return Task("text", {"prose": tok}, {"prose_lm": head}, train_set, evaluate)


BUILDERS = {"digits": digits_task, "speech": speech_task, "control": control_task, "text": text_task}


def build_tasks(cfg: Config, tokenizers: dict | None = None, evaluating: bool = False) -> tuple[list[Task], list[float]]:
    """The configured tasks (with saved tokenizers when resuming or `evaluating` a run, whose
    training data is then not made or read where it can be told apart) and their sampling weights."""
    names, weights, loss_weights = task_list(cfg)
    return [BUILDERS[n](cfg, lw, tokenizers or {}, evaluating) for n, lw in zip(names, loss_weights)], weights


# -- mixed batches ----------------------------------------------------------------------------------
class MixedSet(Dataset):
    """The tasks' training sets as one index space, each task owning a share of it proportional to
    its weight, so a uniformly shuffled stream (StepSampler's) draws tasks by weight. A task's
    block is at least its set's size, so an epoch covers every example of every weighted task."""

    def __init__(self, sets: list[Dataset], weights: list[float]):
        total = sum(weights)
        share = [w / total for w in weights]
        size = max(math.ceil(len(s) / p) for s, p in zip(sets, share) if p > 0)
        self.sets, self.blocks = sets, [round(p * size) if p > 0 else 0 for p in share]
        self.starts = [sum(self.blocks[:i]) for i in range(len(sets))]

    def __len__(self) -> int:
        return sum(self.blocks)

    def locate(self, i: int) -> tuple[int, int]:
        """Index i → (task, index in its set)."""
        for t in reversed(range(len(self.sets))):
            if self.blocks[t] and i >= self.starts[t]:
                return t, (i - self.starts[t]) % len(self.sets[t])
        raise IndexError(i)

    def __getitem__(self, i: int) -> dict:
        t, j = self.locate(i)
        return self.sets[t][j]


class PackCollate:
    """Examples of any tasks → (packed inputs, {}); the targets travel inside the token sets."""

    def __init__(self, row_tokens: int, specs: dict | None = None):
        self.row_tokens, self.specs = row_tokens, specs

    def __call__(self, examples: list[dict]):
        return pack_examples(examples, self.row_tokens, STRIDE, self.specs)[0], {}


def padding_report(examples: list[dict], row_tokens: int) -> dict:
    """Fraction of padding slots when `examples` are packed, against one example per row (each
    modality's span as wide as its longest set, as `collate` pads)."""
    packed = pack_examples(examples, row_tokens, STRIDE)[0]
    slots = sum(b.mask.numel() for b in packed.values())
    real = sum(len(ts) for ex in examples for ts in ex.values())
    widths = [max((len(ex[m]) for ex in examples if m in ex), default=0) for m in ORDER]
    return {"padding_packed": 1.0 - real / slots, "padding_unpacked": 1.0 - real / (len(examples) * sum(widths)),
            "rows_packed": next(iter(packed.values())).shape[0], "rows_unpacked": len(examples)}  # fmt: skip


# -- model ----------------------------------------------------------------------------------------
def model_config(cfg: Config, tasks: list[Task]) -> ModelConfig:
    toks = {m: t for task in tasks for m, t in task.tokenizers.items()}
    names = [m for m in ORDER if m in toks]
    kinds = {"audio": {"embedder": "whisper_conv"}, "trajectory": {"embed_norm": True}, "prose": {"modality": "prose"}}
    modalities = {m: ModalityConfig.from_tokenizer(toks[m], **kinds.get(m, {})) for m in names}
    heads = {k: h for task in tasks for k, h in task.heads.items()}
    if cfg.layout == "prefix":
        trunk = TrunkConfig(dim=cfg.dim, depth=cfg.depth, num_heads=cfg.num_heads, mlp_ratio=cfg.mlp_ratio, dropout=cfg.dropout, mode="decoder")
        return ModelConfig(trunk, modalities, heads, decoder_inputs=names, prefix_inputs=[m for m in PREFIX if m in toks], subset_inputs=True)
    if cfg.layout != "encoder-decoder":
        raise ValueError(f"layout={cfg.layout!r}: expected 'prefix' or 'encoder-decoder'")
    enc, dec = [m for m in names if m in PREFIX], [m for m in names if m not in PREFIX]
    if not enc or not dec:
        raise ValueError(f"layout='encoder-decoder' needs tasks with encoder inputs (image, audio) and decoder inputs (the rest); got {names}: "
                         "add such a task (digits, speech), or give layout=prefix (one stack for every task)")  # fmt: skip
    trunk = TrunkConfig(dim=cfg.dim, depth=cfg.depth, dec_depth=cfg.dec_depth or None, num_heads=cfg.num_heads, mlp_ratio=cfg.mlp_ratio,
                        dropout=cfg.dropout, mode="encoder-decoder")  # fmt: skip
    return ModelConfig(trunk, modalities, heads, encoder_inputs=enc, decoder_inputs=dec, subset_inputs=True)


def trained_config(run_dir) -> ModelConfig:
    """The model config of a run's latest checkpoint."""
    from .checkpoint import latest_checkpoint

    ckpt = latest_checkpoint(Path(run_dir))
    if ckpt is None:
        raise FileNotFoundError(f"init_from: no checkpoint in {Path(run_dir) / 'checkpoints'}")
    return ModelConfig.from_dict(read_json(ckpt / "config.json", "model")["config"])


def build_model(cfg: Config, tasks: list[Task]) -> MultimodalTransformer:
    return MultimodalTransformer(model_config(cfg, tasks))


def make_evaluate(tasks: list[Task]):
    def evaluate(model, accelerator) -> dict:
        m = accelerator.unwrap_model(model)
        was = m.training
        m.eval()
        out = {}
        for task in tasks:
            out.update(task.evaluate(m, accelerator))
        m.train(was)
        return out

    return evaluate


def task_gradient_norms(model: MultimodalTransformer, examples: list[dict], row_tokens: int) -> dict[str, dict[str, float]]:
    """For tuning `loss_weights`: the norm of each head's weighted loss gradient in each shared
    stack ("encoder", "decoder"), on one packed batch of `examples`. Tasks whose norms in a
    stack differ by much more than their importance does pull that stack their way."""
    specs = {m: c.spec for m, c in model.config.modalities.items()}
    inputs = pack_examples(examples, row_tokens, STRIDE, specs)[0]
    stacks = {n: params for n in ("encoder", "decoder")  # trained ones only: a grown run's frozen trunk has no gradient to measure
              if (s := getattr(model, n)) is not None and (params := [p for p in s.parameters() if p.requires_grad])}  # fmt: skip
    was = model.training
    model.train()
    out = model(inputs)
    norms = {}
    for head, loss in out.losses.items():
        w = model.config.heads[head].loss_weight
        norms[head] = {}
        for name, params in stacks.items():
            grads = torch.autograd.grad(w * loss, params, retain_graph=True, allow_unused=True)
            squares = sum(((g.float() ** 2).sum() for g in grads if g is not None), torch.zeros(()))
            norms[head][name] = float(squares.sqrt())
    model.train(was)
    return norms


# -- main -----------------------------------------------------------------------------------------
def batch_size(cfg: Config, weights: list[float]) -> int:
    """Examples per step: the sum of the weights (each is its task's examples per step), unless
    batch_size is given, which makes the weights shares of it."""
    return cfg.batch_size if cfg.batch_size > 0 else max(1, round(sum(weights)))


PARENT_TOKENIZER_KEYS = {  # config key -> (the parent's saved tokenizer, its attribute) that a grown run keeps
    "patch_size": ("image", "patch_size"), "text_block": ("prose", "max_positions"), "context": ("trajectory", "context"),
    "max_timestep": ("trajectory", "max_timestep"), "rtg_scale": ("trajectory", "rtg_scale"), "max_frames": ("audio", "max_frames"),
    "max_text": ("text", "max_positions"),
}  # fmt: skip


def keep_parent_sizes(cfg: Config, trunk, saved: dict) -> None:
    """A grown run keeps its parent's trunk and its tasks' tokenizers: a size given here that differs
    is refused (it would be ignored: the trained weights and tables are the parent's), and the
    parent's values are written into cfg, so run.json records what trains."""
    defaults = Config()
    kept = {"dim": trunk.dim, "depth": trunk.depth, "num_heads": trunk.num_heads, "mlp_ratio": trunk.mlp_ratio}
    if trunk.mode == "encoder-decoder":
        kept["dec_depth"] = trunk.dec_depth or 0
    for key, (name, attr) in PARENT_TOKENIZER_KEYS.items():
        if name in saved and hasattr(saved[name], attr):
            kept[key] = getattr(saved[name], attr)
    for key, value in kept.items():
        given = getattr(cfg, key)
        same = key == "dec_depth" and value == 0 and given == trunk.depth  # an unset decoder depth is the encoder's
        if given != getattr(defaults, key) and given != value and not same:
            raise ValueError(f"{key}={given}: a run grown from init_from={cfg.init_from} keeps its {key}={value} (its trained "
                             f"weights and tokenizers); leave {key} out")  # fmt: skip
        setattr(cfg, key, type(given)(value))


def main(cfg: Config, resume: bool = False) -> dict:
    run_dir = resolve_run_dir(cfg, "generalist")
    if cfg.init_from and not resume:
        from .runs import load_run_info

        recipe = load_run_info(cfg.init_from)[0]
        if recipe != "generalist":
            raise ValueError(f"init_from={cfg.init_from} is a {recipe} run; init_from takes a generalist run directory")
    saved = {}
    source = run_dir if resume else Path(cfg.init_from) if cfg.init_from else None  # grown runs keep the trained tokenizers
    if source is not None and (source / "tokenizers").is_dir():
        saved = {p.name: load_tokenizer(p) for p in sorted((source / "tokenizers").iterdir())}
    if cfg.init_from and not resume:
        keep_parent_sizes(cfg, trained_config(cfg.init_from).trunk, saved)
    tasks, weights = build_tasks(cfg, saved)
    given, cfg.batch_size = cfg.batch_size, batch_size(cfg, weights)
    # (before the run directory: TrainConfig.check's rule, for the batch the weights make)
    check_split(cfg.batch_size, cfg.grad_accum, launched_processes(), "" if given else " (the sum of weights)")
    set_seed(cfg.seed)
    if cfg.init_from:
        from models import freeze_trained, grow

        from .runs import load_trained

        parent = run_dir / GROWN_FROM  # the parent's model config, kept so the grown run resumes without the parent on disk
        old = ModelConfig.from_dict(read_json(parent, "model")) if resume and parent.is_file() else trained_config(cfg.init_from)
        trained_layout = "prefix" if old.trunk.mode == "decoder" else "encoder-decoder"
        if trained_layout != cfg.layout:  # note: the trunk below is the trained one; a config of the other layout would not fit it
            raise ValueError(f"init_from={cfg.init_from} was trained with layout={trained_layout}; grow it with layout={trained_layout}")
        config = model_config(cfg, tasks)
        config.trunk = dataclasses.replace(old.trunk, dropout=cfg.dropout)  # the trained trunk (its sizes are in cfg: keep_parent_sizes)
        # resumed: the checkpoint's weights (train loads them), the parent not needed; killed before a checkpoint, grown again
        model = (resume and resumed_architecture(run_dir)) or grow(load_trained(cfg.init_from)[0], config)
        if cfg.freeze_trained:
            freeze_trained(model, old)
        new = sorted(set(config.modalities) - set(old.modalities)) + sorted(set(config.heads) - set(old.heads))
        print(f"generalist: grown from {cfg.init_from}: new {', '.join(new) or 'nothing'}"
              + ("; the trained weights are frozen" if cfg.freeze_trained else ""))  # fmt: skip
    else:
        model = build_model(cfg, tasks)
    if not resume:
        def files():
            if cfg.init_from:
                write_json_atomic(run_dir / GROWN_FROM, old.to_dict())
            for task in tasks:
                for m, tok in task.tokenizers.items():
                    tok.save(run_dir / "tokenizers" / m)

        save_run_info(run_dir, "generalist", cfg, files)
    train_set = MixedSet([t.train_set for t in tasks], weights)
    specs = {m: c.spec for m, c in model.config.modalities.items()}
    print(f"generalist: tasks {', '.join(f'{t.name} ({len(t.train_set):,} examples, weight {w:g})' for t, w in zip(tasks, weights))}; "
          f"{model.params_text()}, run dir {run_dir}")  # fmt: skip
    metrics = train(cfg, model, train_set, PackCollate(cfg.row_tokens, specs), make_evaluate(tasks), run_dir, resume=resume)
    print("  ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
    return metrics


def evaluate(run_dir, device=None) -> dict:
    from .runs import load_for_eval

    cfg, model, toks, accelerator = load_for_eval(run_dir, device)
    tasks, _ = build_tasks(cfg, toks, evaluating=True)
    return make_evaluate(tasks)(model, accelerator)
