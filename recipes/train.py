"""The one training loop every recipe runs in, on Hugging Face Accelerate.

Mixed precision, gradient accumulation and clipping, AdamW with decoupled weight decay (none on
norms, biases and embeddings), linear warmup + cosine decay, evaluation every N steps, a tqdm bar
on the main process, metrics appended to `metrics.jsonl` (and TensorBoard when installed), a
loss-curve PNG at the end, atomic checkpoints (checkpoint.py) and exact resume: the data position
is a pure function of (seed, step), so a resumed run sees exactly the batches it would have seen.

The same code runs on one CPU or under `torchrun` / `accelerate launch` (DDP, or FSDP2 with
`fsdp=true`: fsdp.py; gloo on CPU): each process takes its own share of every global batch,
metrics are averaged over processes and only the main process writes. Follows nanoGPT's
`train.py` and torchtune's recipes: plain functions, no Trainer class.
"""

from __future__ import annotations

import importlib.util
import json
import math
import random
import re
import sys
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, DistributedType, set_seed
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm.auto import tqdm

from models import MultimodalTransformer, load_weights
from models.blocks import Stack
from tokenizers_mm.base import cannot_write, read_json, write_json_atomic, write_text_atomic

from .checkpoint import (CheckpointError, gather_rng_states, held_checkpoint, latest_checkpoint, load_state, recover, save_state,
                         set_rng_state, verify_latest, write_checkpoint)
from .config import ACCELERATE_FSDP, TrainConfig, check_split, on_cpu
from .fsdp import gather, is_sharded, load_optimizer_state, optimizer_state, shard, subset_inputs
from .runs import changed_since, gloo_quiet, launched_processes, record_resumed

METRICS_FILE = "metrics.jsonl"


# -- data -----------------------------------------------------------------------------------------
class StepSampler(Sampler):
    """Yields this process's micro-batches of dataset indices, from `start_step` on, forever.

    The global sample stream is a fresh permutation of the dataset each epoch (seeded by seed and
    epoch); step s takes its `global_batch` consecutive samples. They split into accum × world
    consecutive parts (`micro_span`: sizes differing by at most one where they do not divide),
    and rank r of micro-step a takes part a × world + r. So the global batch is the same for any
    number of processes, and resuming at step s needs nothing but s.
    """

    def __init__(self, n: int, global_batch: int, accum: int, seed: int, rank: int = 0, world: int = 1, start_step: int = 0):
        if n < 1:
            raise ValueError("the training set is empty")
        check_split(global_batch, accum, world)
        self.n, self.global_batch, self.accum, self.seed = n, global_batch, accum, seed
        self.rank, self.world, self.start_step = rank, world, start_step
        self._epoch, self._perm = -1, None

    def _sample(self, pos: int) -> int:
        epoch = pos // self.n
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._epoch, self._perm = epoch, torch.randperm(self.n, generator=g)
        return int(self._perm[pos % self.n])

    def __iter__(self):
        step = self.start_step
        while True:
            base = step * self.global_batch
            for a in range(self.accum):
                first, stop = micro_span(self.global_batch, self.accum * self.world, a * self.world + self.rank)
                yield MicroBatch([self._sample(p) for p in range(base + first, base + stop)], base + first)
            step += 1


def micro_span(global_batch: int, parts: int, j: int) -> tuple[int, int]:
    """Part j of a step's global batch cut into `parts` (grad_accum × processes; j = micro-step ×
    processes + rank): its positions [start, stop) in the step, the parts' sizes differing by at
    most one (a process or micro-step with one sample more is weighted by its targets as any other:
    `step_loss_norms`)."""
    return j * global_batch // parts, (j + 1) * global_batch // parts


class MicroBatch(list):
    """A micro-batch's dataset indices and `pos`, the global stream position of its first sample."""

    def __init__(self, indices, pos: int):
        super().__init__(indices)
        self.pos = pos


class SeededWorkerItems(Dataset):
    """The dataset as DataLoader workers read it: each micro-batch seeds the worker's torch, NumPy
    and Python RNGs from (seed, its stream position) before its items are read and collated, so
    random augmentation in `__getitem__` or in the collate function draws the same numbers
    whichever worker serves the batch, and a resumed run draws what an uninterrupted one would.
    (With num_workers=0 the main process's RNG state is checkpointed and restored instead.)"""

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i):
        return self.dataset[i]

    def __getitems__(self, batch: list) -> list:
        if torch.utils.data.get_worker_info() is not None and isinstance(batch, MicroBatch):
            a, b = np.random.SeedSequence([self.seed, batch.pos]).generate_state(2)
            torch.manual_seed(int(a) << 32 | int(b))
            np.random.seed(int(a))
            random.seed(int(b))
        getitems = getattr(self.dataset, "__getitems__", None)
        return getitems(list(batch)) if getitems else [self.dataset[i] for i in batch]


def named_sample(error: ValueError, check: Callable | None, micro_batches: list, n: int, cfg: TrainConfig, step: int,
                 rank: int = 0, world: int = 1) -> str:  # fmt: skip
    """A batch check's message ("... sample 9 of the batch ...") with the sample's dataset index and
    the training step: the micro-batch that fails `check` with the same message, its row mapped
    through the sampler. The message as it is when no micro-batch or row can be told."""
    found = re.search(r"sample (\d+) of the batch", str(error))
    packed = any(getattr(b, "segments", None) is not None for inputs, _ in micro_batches for b in inputs.values())
    if found is None or check is None or packed:  # (a packed row holds several examples: its number names none of them)
        return str(error)
    for a, (inputs, targets) in enumerate(micro_batches):
        try:
            check(inputs, targets)
        except ValueError as again:
            if str(again) == str(error):
                first = micro_span(cfg.batch_size, cfg.grad_accum * world, a * world + rank)[0]  # (StepSampler's layout)
                index = batch_samples(n, cfg, step)[first + int(found.group(1))]
                return f"{error}: dataset sample {index} (training step {step})"
    return str(error)


def batch_samples(n: int, cfg: TrainConfig, step: int) -> list[int]:
    """The dataset indices of optimizer step `step`'s global batch (steps count from 1)."""
    sampler = StepSampler(n, cfg.batch_size, 1, cfg.seed)
    return [sampler._sample(p) for p in range((step - 1) * cfg.batch_size, step * cfg.batch_size)]


def to_device(batch, device, check: Callable | None = None):
    """Move (inputs, targets) — dicts of TokenBatch / tensors — to `device`, after `check(inputs,
    targets)` on the host when given (`host_check`)."""
    inputs, targets = batch
    if check is not None:
        check(inputs, targets)
    move = lambda v: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v.to(device)  # noqa: E731 (TokenBatch.to is non-blocking)
    return {k: move(v) for k, v in inputs.items()}, {k: move(v) for k, v in targets.items()}


def host_check(accelerator, model: nn.Module) -> Callable | None:
    """The model's batch check (`check_inputs`: declarations, empty samples of a pooled head), for
    the caller to run on the host before each batch is copied, where forward does not run it: on an
    accelerator (it would sync the device) and in a compiled model. None where forward checks each
    batch itself, or the model has no such check."""
    wrapped = accelerator.unwrap_model(model)  # (keeps torch.compile's wrapper)
    if accelerator.device.type == "cpu" and not hasattr(wrapped, "_orig_mod"):
        return None
    return getattr(getattr(wrapped, "_orig_mod", wrapped), "check_inputs", None)


def make_loader(dataset: Dataset, collate_fn: Callable, cfg: TrainConfig, accelerator: Accelerator, start_step: int = 0) -> DataLoader:
    sampler = StepSampler(len(dataset), cfg.batch_size, cfg.grad_accum, cfg.seed, accelerator.process_index,
                          accelerator.num_processes, start_step)  # fmt: skip
    # note: a generator of its own, or creating the iterator would draw from the global RNG and
    # a resumed run's dropout masks would differ from an uninterrupted run's.
    generator = torch.Generator().manual_seed(cfg.seed + start_step)
    if cfg.num_workers > 0:
        dataset = SeededWorkerItems(dataset, cfg.seed)
    return DataLoader(dataset, batch_sampler=sampler, collate_fn=collate_fn, num_workers=cfg.num_workers, generator=generator,
                      pin_memory=accelerator.device.type == "cuda", persistent_workers=cfg.num_workers > 0)  # fmt: skip


# -- optimisation ---------------------------------------------------------------------------------
def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW; weight decay only on matrices of Linear layers (not norms, biases, embeddings); also
    of transformers' Conv1D (GPT-2's transposed Linear), so a Hugging Face GPT-2 trained here (the
    gpt_step benchmark's peer) decays as ours does."""
    linear = lambda m: isinstance(m, nn.Linear) or type(m).__name__ == "Conv1D" and type(m).__module__.startswith("transformers")  # noqa: E731
    decay_names = {f"{mn}.weight" if mn else "weight" for mn, m in model.named_modules() if linear(m)}
    seen, decay, no_decay = set(), [], []
    for name, p in model.named_parameters():  # tied parameters appear once, under their first name
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        (decay if name in decay_names and p.dim() >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    fused = cfg.fused_adamw or (torch.cuda.is_available() and not cfg.cpu)
    # note: on the CPU torch picks the per-tensor loop by default; foreach is faster for many small tensors.
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=fused or None, foreach=None if fused else True)


def lr_lambda(cfg: TrainConfig) -> Callable[[int], float]:
    """Multiplier of cfg.lr at a step: linear warmup, cosine decay to min_lr, then flat. A min_lr
    above lr (a user who lowered lr alone) is taken as lr: no decay that would raise the rate."""
    decay_steps = cfg.lr_decay_steps or cfg.max_steps
    floor = min(cfg.min_lr, cfg.lr)

    def f(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / (cfg.warmup_steps + 1)
        if step >= decay_steps:
            return floor / cfg.lr
        ratio = (step - cfg.warmup_steps) / max(1, decay_steps - cfg.warmup_steps)
        return (floor + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (cfg.lr - floor)) / cfg.lr

    return f


def resume_schedule(scheduler: torch.optim.lr_scheduler.LambdaLR, cfg: TrainConfig) -> None:
    """The next step's rate from this run's schedule as now configured: a checkpoint's optimizer and
    scheduler hold the rate its old schedule gave (`mmtok resume RUN max_steps=N` changes the
    decay), which the first resumed step would otherwise take. The same value when nothing changed."""
    factor = lr_lambda(cfg)(scheduler.last_epoch)
    for group, base in zip(scheduler.optimizer.param_groups, scheduler.base_lrs):
        group["lr"] = base * factor  # (as LambdaLR computes it)
    scheduler._last_lr = [group["lr"] for group in scheduler.optimizer.param_groups]  # what get_last_lr() reports


def forward_backward(accelerator: Accelerator, model: nn.Module, micro_batches: list, accum: int,
                     inner: nn.Module | None = None, check: Callable | None = None) -> torch.Tensor:  # fmt: skip
    """Forward and backward over one optimizer step's micro-batches; returns the mean loss.
    Gradients sync across processes only on the last micro-step. inner: the unwrapped model, when
    the caller holds it (unwrapping again costs a few hundred microseconds a step). check: run on
    each batch on the host, before the copy (`host_check`).

    A model that counts its loss's terms (`loss_counts`: tokens with targets, per head) has every
    target of the step weighted alike, as in one large batch: micro-batches and processes with
    fewer targets (shorter transcripts, masked tokens) weigh less. Another module's losses are
    averaged over the micro-batches."""
    total = torch.zeros((), device=accelerator.device)
    inner = accelerator.unwrap_model(model) if inner is None else inner
    fsdp_sync = getattr(inner, "set_requires_gradient_sync", None)  # a sharded model (fsdp.py)
    norms = step_loss_norms(accelerator, inner, micro_batches, check)
    for i, batch in enumerate(micro_batches):
        inputs, targets = to_device(batch, accelerator.device, check if norms is None else None)  # (checked while counted)
        last = i == len(micro_batches) - 1
        if fsdp_sync is not None:
            fsdp_sync(last)  # reduce-scatter the gradients once, after the last micro-step
        with nullcontext() if last or fsdp_sync is not None else accelerator.no_sync(model):
            loss = model(inputs, targets).loss / accum if norms is None else model(inputs, targets, loss_norms=norms).loss
            accelerator.backward(loss)
        total += loss.detach()
    return total


def step_loss_norms(accelerator: Accelerator, inner: nn.Module, micro_batches: list,
                    check: Callable | None = None) -> dict[str, torch.Tensor] | None:  # fmt: skip
    """Per head, the step's count of loss terms over all micro-batches and processes, divided by
    the processes (DDP and FSDP average the gradients over them): what each micro-batch's summed
    loss is divided by. None for one micro-batch in one process (its own mean) or a model that does
    not count (`loss_counts`). One small all-reduce per step with several processes. check: as
    `forward_backward`'s, run on each batch before it is counted."""
    world = accelerator.num_processes
    if not hasattr(inner, "loss_counts") or len(micro_batches) * world == 1:
        return None
    heads = sorted(inner.config.heads)
    counts = [0.0] * len(heads)
    for inputs, targets in micro_batches:  # (on the host, from the batches alone, each checked first: `host_check`)
        if check is not None:
            check(inputs, targets)
        for name, n in inner.loss_counts(inputs, targets).items():
            counts[heads.index(name)] += float(n)
    counts = torch.tensor(counts, dtype=sum_dtype(accelerator.device), device=accelerator.device)
    if world > 1:
        counts = accelerator.reduce(counts, "sum")
    norms = (counts / world).clamp(min=1 / world).float()  # (a head with no target in the step: its summed loss is 0)
    return {name: norms[i] for i, name in enumerate(heads)}


# -- evaluation helper ----------------------------------------------------------------------------
@torch.no_grad()
def mean_loss(model: nn.Module, accelerator: Accelerator, batches, progress: str = "") -> float:
    """Mean loss over `batches` (a list, `EvalBatches` or any iterable), each weighted by its rows,
    split across processes and averaged over all of them. progress: a bar of that name on a
    terminal's stderr (the first process's), for an evaluation outside training."""
    was_training = model.training
    model.eval()
    batches = indexable(batches)
    total, check = torch.zeros(2, dtype=sum_dtype(accelerator.device), device=accelerator.device), host_check(accelerator, model)
    mine = my_share(accelerator, len(batches))
    for i in tqdm(mine, desc=progress, unit="batch", leave=False, disable=None if progress and accelerator.is_main_process else True):
        # (another process's batches are not made)
        inputs, targets = to_device(batches[i], accelerator.device, check)
        rows = float(next(iter(inputs.values())).shape[0])
        total += torch.stack([model(inputs, targets).loss.to(total.dtype) * rows, torch.tensor(rows, dtype=total.dtype, device=accelerator.device)])
    loss, rows = summed(accelerator, *total.tolist())
    model.train(was_training)
    return loss / max(rows, 1.0)


def sum_dtype(device: torch.device) -> torch.dtype:
    """What an evaluation sums its figures in on `device`: float64, so that one process and several
    (each summing its share, then all of them) give the same figures to the printed digit; float32
    where the device has no float64 (MPS)."""
    return torch.float32 if device.type == "mps" else torch.float64


def my_share(accelerator, n: int) -> range:
    """The indices of the n batches (or episodes) this process evaluates: every num_processes-th,
    from its rank."""
    return range(accelerator.process_index, n, accelerator.num_processes)


def my_spans(accelerator, n: int, size: int) -> list[range]:
    """This process's share (`my_share`) of n items cut into batches of `size`: each batch's indices."""
    return [range(k * size, min((k + 1) * size, n)) for k in my_share(accelerator, -(-n // size))]


def summed(accelerator, *values: float) -> list[float]:
    """`values` added up over the processes, in `sum_dtype` (float64: counts of words or episodes stay exact)."""
    if accelerator.num_processes == 1:
        return [float(v) for v in values]
    return accelerator.reduce(torch.tensor(values, dtype=sum_dtype(accelerator.device), device=accelerator.device), "sum").tolist()


def indexable(batches):
    """`batches` as a sequence with a length and indexing (a list, EvalBatches), a one-pass iterable
    (a generator, a DataLoader) read into a list."""
    return batches if hasattr(batches, "__getitem__") and hasattr(batches, "__len__") else list(batches)


class EvalBatches(Sequence):
    """A test set's batches (`collate` of `batch_size` examples), made when first read: kept for the
    next evaluation when the set is small (at most `keep` examples: a training run evaluates the
    same ones again and again), else made anew each time, so that a large test set is never held in
    memory whole. A sequence (length, indexing from either end, iteration), as a list of batches is
    (no slices: nothing reads it in slices)."""

    def __init__(self, examples, collate: Callable, batch_size: int, n: int | None = None, keep: int = 2048):
        self.examples, self.collate, self.batch_size = examples, collate, batch_size
        self.n = len(examples) if n is None else min(n, len(examples))  # the first n examples
        self.kept = {} if self.n <= keep else None

    def __len__(self) -> int:
        return -(-self.n // self.batch_size)

    def __getitem__(self, i: int):
        i = i + len(self) if i < 0 else i
        if not 0 <= i < len(self):
            raise IndexError(i)
        if self.kept is not None and i in self.kept:
            return self.kept[i]
        batch = self.collate([self.examples[j] for j in range(i * self.batch_size, min((i + 1) * self.batch_size, self.n))])
        if self.kept is not None:
            self.kept[i] = batch
        return batch


@torch.no_grad()
def accuracy(model, accelerator, batches, head: str = "cls") -> dict:
    """Top-1 accuracy and mean loss of a classification head over `batches` of (inputs, targets) (a
    list, `EvalBatches`, which makes each as it is read, or any iterable), split across processes and
    summed. The loss is plain cross-entropy, as timm's validate reports it: without the head's label
    smoothing (training's loss; with it, a confident right answer still costs about 0.9 nats)."""
    was = model.training
    model.eval()
    batches = indexable(batches)
    total, check = torch.zeros(3, dtype=sum_dtype(accelerator.device), device=accelerator.device), host_check(accelerator, model)
    for i in my_share(accelerator, len(batches)):  # (another process's batches are not made)
        inputs, targets = batches[i]
        inputs, targets = to_device((inputs, {head: targets[head]}), accelerator.device, check)
        y = targets[head]
        logits = model(inputs, targets).logits[head]  # (targets: checked against the head's classes)
        loss = F.cross_entropy(logits.float(), y if y.is_floating_point() else y.long(), reduction="sum")
        total += torch.stack([(logits.argmax(-1) == y).sum().to(total.dtype), loss.to(total.dtype),
                              torch.tensor(float(len(y)), dtype=total.dtype, device=y.device)])  # fmt: skip
    correct, loss, rows = summed(accelerator, *total.tolist())
    model.train(was)
    return {"val_accuracy": correct / rows, "val_loss": loss / rows}


# -- the loop -------------------------------------------------------------------------------------
def make_accelerator(cfg: TrainConfig, run_dir: Path, subset_inputs: bool = False) -> Accelerator:
    """subset_inputs: the model's batches may leave parts of it unused (a generalist's batch, or one
    process's share of it, can lack a task), so DDP must look for unused parameters every step."""
    cfg.check_precision()  # (a run started on a GPU, resumed on a machine without one)
    precision = cfg.precision
    if precision == "auto":
        precision = "bf16" if torch.cuda.is_available() and not cfg.cpu and torch.cuda.is_bf16_supported() else "no"
    trackers = "tensorboard" if importlib.util.find_spec("tensorboard") else None
    handlers = [DistributedDataParallelKwargs(find_unused_parameters=True)] if subset_inputs else []
    # note: Accelerate sets up CPU processes (torchrun on a machine without a GPU) only when told cpu=True;
    # otherwise each process would train alone on the whole batch, all writing one run directory
    cpu = on_cpu(cfg)
    with gloo_quiet(cpu and launched_processes() > 1):
        return Accelerator(mixed_precision=precision, cpu=cpu, log_with=trackers, project_dir=str(run_dir), kwargs_handlers=handlers)


def save_training_checkpoint(run_dir, step, model, optimizer, scheduler, cfg, accelerator, full=None, skipped: int = 0) -> None:
    """Main process writes checkpoints/step-N atomically; every process waits for it. A sharded
    `model` (fsdp=true) is first gathered into `full`, its whole copy (every process takes part).
    skipped: the batches skipped so far (skip_nonfinite), which a resumed run goes on counting."""
    accelerator.wait_for_everyone()
    inner = accelerator.unwrap_model(model, keep_torch_compile=False)
    sharded = is_sharded(inner)
    if sharded:
        gather(inner, full)
    opt_state = optimizer_state(inner, optimizer) if sharded or accelerator.is_main_process else None
    rng_states = gather_rng_states(accelerator)  # each process draws its own dropout masks; resume restores each
    if accelerator.is_main_process:
        whole = full if sharded else inner

        def write(tmp: Path):
            whole.save(tmp)
            save_state(tmp, "optimizer", opt_state)
            save_state(tmp, "rng", {"processes": rng_states})
            json_state = {"step": step, "scheduler": scheduler.state_dict(), "config": asdict(cfg), "skipped_batches": skipped}
            if accelerator.scaler is not None:  # fp16: the loss scale and its growth count, or a resumed run skips steps afresh
                json_state["grad_scaler"] = accelerator.scaler.state_dict()
            try:
                (tmp / "trainer_state.json").write_text(json.dumps(json_state, indent=2))
            except OSError as e:  # (a full disk is found as the file closes: its error names no file)
                raise OSError(e.errno, e.strerror, str(tmp / "trainer_state.json")) from None

        write_checkpoint(run_dir, step, write, cfg.keep_checkpoints)
    accelerator.wait_for_everyone()


def restore_rng_states(saved: dict, cfg: TrainConfig, accelerator: Accelerator, start_step: int = 0) -> None:
    """Process r continues from the RNG state process r saved. A checkpoint of another world size
    (or from before states were kept per process: one state) has none for the processes beyond it:
    those seed afresh from (seed, rank, step), and their draws differ from an uninterrupted run's."""
    states = saved["processes"] if "processes" in saved else [saved]
    if len(states) != accelerator.num_processes and accelerator.is_main_process:
        print(f"resume: the checkpoint holds the RNG states of {len(states)} process(es), this run has "
              f"{accelerator.num_processes}: random draws (dropout, augmentation) differ from an uninterrupted run's")  # fmt: skip
    if accelerator.process_index < len(states):
        set_rng_state(states[accelerator.process_index])
    else:  # note: from (seed, rank, step), so the process does not replay the stream it would have drawn from step 0
        set_seed(int(np.random.SeedSequence([cfg.seed, accelerator.process_index, start_step]).generate_state(1)[0]))


def evaluate_whole(evaluate: Callable, model: nn.Module, full: nn.Module, accelerator: Accelerator) -> dict:
    """evaluate(model, accelerator); a sharded model is gathered into its whole copy `full`
    first, which is evaluated on the device (fsdp.py)."""
    inner = accelerator.unwrap_model(model, keep_torch_compile=False)
    if not is_sharded(inner):
        return evaluate(model, accelerator)
    gather(inner, full)
    full.to(accelerator.device)
    metrics = evaluate(full, accelerator)
    full.cpu()
    return metrics


def append_metrics(run_dir: Path, row: dict) -> None:
    try:
        with open(run_dir / METRICS_FILE, "a") as f:
            f.write(json.dumps(row) + "\n")
    except OSError as e:  # (a full disk: the checkpoints hold the run; a torn last line is skipped when read)
        raise cannot_write(run_dir / METRICS_FILE, e) from None


def train(
    cfg: TrainConfig,
    model: MultimodalTransformer,
    train_set: Dataset,
    collate_fn: Callable,
    evaluate: Callable[[nn.Module, Accelerator], dict],
    run_dir: Path,
    resume: bool = False,
    accelerator: Accelerator | None = None,
) -> dict:
    """Train `model` for cfg.max_steps; returns the final evaluation metrics.

    evaluate(model, accelerator) -> {"val_loss": ..., ...} runs every cfg.eval_every steps and at
    the end, on every process (it splits its own work; see `mean_loss`).
    """
    run_dir = Path(run_dir)
    for key in ("batch_size", "grad_accum", "log_every", "eval_every", "ckpt_every"):  # what the loop itself needs
        if getattr(cfg, key) < 1:  # (the full rules, TrainConfig.check, apply when a run starts: an older run still resumes)
            raise ValueError(f"{key}={getattr(cfg, key)} must be at least 1")
    accelerator = accelerator or make_accelerator(cfg, run_dir, subset_inputs(model))  # any module returning .loss trains here
    if resume:  # a write killed between an overwrite's two renames left the old checkpoint aside: back in place first
        if accelerator.is_main_process:
            recover(run_dir)
        accelerator.wait_for_everyone()
    elif (held := held_checkpoint(run_dir)) is not None:  # its checkpoints would mix with this run's (and be pruned by step)
        raise ValueError(f"{run_dir} already holds checkpoints ({held.name}): resume it or train into another run_dir")
    start_step, skipped, ckpt = 0, 0, latest_checkpoint(run_dir) if resume else None
    if resume and ckpt is None and accelerator.is_main_process:  # killed before its first checkpoint
        print(f"resume: no checkpoint in {run_dir / 'checkpoints'} yet; starting from step 0")
    if ckpt is not None:
        verify_latest(ckpt)
        load_weights(model, ckpt / "model.safetensors")
        trainer_state = read_json(ckpt / "trainer_state.json", "checkpoint")
        if not (isinstance(trainer_state.get("step"), int) and isinstance(trainer_state.get("scheduler"), dict)):  # (read_json: an object)
            raise CheckpointError(f"{ckpt / 'trainer_state.json'}: expected {{\"step\": N, \"scheduler\": {{...}}, ...}}, as training writes "
                                  f"it; move {ckpt.name} aside to resume from the checkpoint before it")  # fmt: skip
        if changed := changed_since(cfg, trainer_state.get("config"), run_dir):
            raise ValueError(f"resume: {run_dir / 'run.json'} was changed since the run wrote {ckpt.name}: {', '.join(changed)}; a run resumes as it "
                             f"trained (its model, optimizer and schedule are the checkpoint's; `mmtok resume RUN max_steps=N`, lr_decay_steps=N "
                             f"and fsdp=true|false change on the command line): put the values back, or start a new run")  # fmt: skip
        start_step, skipped = trainer_state["step"], trainer_state.get("skipped_batches", 0)  # (older checkpoints: none kept)
        if accelerator.is_main_process:
            print(f"resume: from {ckpt.name}, step {start_step} of {cfg.max_steps}" + (
                "; the run is already complete: evaluating it (`mmtok resume RUN_DIR max_steps=N` trains longer)"
                if start_step >= cfg.max_steps else ""))  # fmt: skip
    else:  # note: process r seeds with seed + r (nanoGPT's seed_offset): each draws its own dropout masks and
        set_seed(cfg.seed + accelerator.process_index)  # augmentation; one process keeps cfg.seed (the model was built before)
    if accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        if cfg.max_steps >= start_step:  # (a resume to fewer steps than done evaluates: no length to record)
            record_resumed(run_dir, cfg)
        # forget what was logged after the checkpoint (all of it when starting from step 0);
        # note: through a temporary file, so a kill here cannot empty the log
        rows = [r for r in read_metrics(run_dir) if r["step"] <= start_step]
        write_text_atomic(run_dir / METRICS_FILE, "".join(json.dumps(r) + "\n" for r in rows))
        if accelerator.log_with:
            accelerator.init_trackers("tb")
    if cfg.grad_checkpoint:  # every stack recomputes its blocks in the backward pass (models/blocks.py)
        for m in model.modules():
            if isinstance(m, Stack):
                m.grad_checkpoint = True
    if accelerator.distributed_type == DistributedType.FSDP:
        raise ValueError(ACCELERATE_FSDP)
    full = model  # the caller's model; with fsdp=true it stays whole, on the CPU, and training runs on a sharded copy
    if cfg.fsdp:
        model = shard(full.cpu(), accelerator)
        accelerator.prepare_model(full, device_placement=False, evaluation_mode=True)  # its forward gets the run's autocast, as under DDP
    inner = model
    if cfg.compile:
        model = torch.compile(model)
    optimizer = build_optimizer(model, cfg)
    if cfg.fsdp:  # Accelerate adds autocast and the gradient scaler; FSDP, not DDP, syncs the gradients
        model, optimizer = accelerator.prepare_model(model, evaluation_mode=True), accelerator.prepare_optimizer(optimizer)
    else:
        model, optimizer = accelerator.prepare(model, optimizer)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg))
    if ckpt is not None:
        load_optimizer_state(inner, optimizer, load_state(ckpt, "optimizer"))
        scheduler.load_state_dict(trainer_state["scheduler"])
        resume_schedule(scheduler, cfg)
        if accelerator.scaler is not None and "grad_scaler" in trainer_state:
            accelerator.scaler.load_state_dict(trainer_state["grad_scaler"])
        restore_rng_states(load_state(ckpt, "rng"), cfg, accelerator, start_step)

    loader = iter(make_loader(train_set, collate_fn, cfg, accelerator, start_step))
    unwrapped = accelerator.unwrap_model(model)
    unwrapped = getattr(unwrapped, "_orig_mod", unwrapped)  # torch.compile's wrapper
    flops = FlopMeter(unwrapped, accelerator) if cfg.log_mfu and isinstance(unwrapped, MultimodalTransformer) else None
    bar = tqdm(total=cfg.max_steps, initial=start_step, disable=not accelerator.is_main_process, desc="train", dynamic_ncols=True)
    metrics: dict = {}
    model.train()
    t0, tokens = time.perf_counter(), 0
    bad_step = torch.zeros((), dtype=torch.long, device=accelerator.device)  # the first step whose loss was not finite; 0: none
    check = host_check(accelerator, model)
    for step in range(start_step + 1, cfg.max_steps + 1):
        micro = [next(loader) for _ in range(cfg.grad_accum)]
        try:
            loss = forward_backward(accelerator, model, micro, cfg.grad_accum, inner, check)
        except ValueError as e:  # a sample the model refuses ("sample 9 of the batch"): named by its dataset index
            named = named_sample(e, getattr(unwrapped, "check_inputs", None), micro, len(train_set), cfg, step,
                                 accelerator.process_index, accelerator.num_processes)  # fmt: skip
            if named == str(e):
                raise
            raise ValueError(named) from None
        summed_loss = accelerator.reduce(loss.detach(), "sum")  # over the processes: what a logging step reports, too
        finite = torch.isfinite(summed_loss)  # every process sees the same verdict
        scaled, grad_norm = accelerator.scaler is not None, None  # fp16: its scaler skips its overflowing steps itself
        if not (cfg.skip_nonfinite and scaled and not bool(finite)):  # (no unscale_ in clipping without the step that resets it)
            # the global norm, clipped to grad_clip (0: not clipped, still measured: a finite loss can have NaN gradients)
            grad_norm = accelerator.clip_grad_norm_(model.parameters(), cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
            grad_norm = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm  # sharded: a DTensor
            if grad_norm is not None and not scaled:
                finite = finite & torch.isfinite(grad_norm)
        if cfg.skip_nonfinite and not bool(finite):  # skipping needs the verdict before the update: a device sync per step
            samples = batch_samples(len(train_set), cfg, step)
            skipped += 1  # no optimizer step: the NaN gradients are dropped below; the step still counts, so resume stays exact
            bar.write(f"step {step}: non-finite loss or gradients, batch skipped (samples {samples[:8]}); {skipped} skipped so far")
            grad_norm = None
        else:
            if not cfg.skip_nonfinite:  # note: recorded on the device and read where the loop syncs anyway (below), so the
                bad_step.masked_fill_(~finite & (bad_step == 0), step)  # host never waits for the device between steps
            optimizer.step()
        lr = scheduler.get_last_lr()[0]  # this step's (the scheduler moves on to the next)
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        tokens += sum(int(b.mask.sum()) for batch in micro for b in batch[0].values())
        if flops is not None:
            flops.add(micro)
        bar.update(1)
        last = step == cfg.max_steps
        log_now, eval_now, ckpt_now = (step % every == 0 or last for every in (cfg.log_every, cfg.eval_every, cfg.ckpt_every))
        if (log_now or eval_now or ckpt_now) and not cfg.skip_nonfinite and int(bad_step):  # before anything is logged, evaluated or saved
            samples = batch_samples(len(train_set), cfg, int(bad_step))
            kept = latest_checkpoint(run_dir)
            raise FloatingPointError(f"the loss or its gradients became non-finite at step {int(bad_step)} (its batch holds samples {samples[:8]}"
                                     f"{' ...' if len(samples) > 8 else ''}); "
                                     + (f"the last good checkpoint, {kept.name}, is kept" if kept else "no checkpoint was written before it")
                                     + "; skip_nonfinite=true skips such batches")  # fmt: skip
        if log_now:
            dt = time.perf_counter() - t0
            # one all-reduce more: MFU averaged over the processes, their own token counts (shares differ) added up
            tokens, mfu = summed(accelerator, tokens, flops.mfu(dt) if flops is not None else 0.0)
            loss_val, mfu = summed_loss.item() / accelerator.num_processes, mfu / accelerator.num_processes
            loss_val = loss_val if math.isfinite(loss_val) else None  # a skipped batch (JSON has no NaN)
            row = {"step": step, "loss": loss_val, "lr": lr, "tokens_per_s": tokens / dt}
            if grad_norm is not None:
                row["grad_norm"] = float(grad_norm)
            if flops is not None:
                row["mfu"] = mfu
            if skipped:
                row["skipped_batches"] = skipped
            bar.set_postfix(loss=f"{loss_val:.4f}" if loss_val is not None else "skipped")
            if accelerator.is_main_process:
                append_metrics(run_dir, row)
                accelerator.log({k: v for k, v in row.items() if k != "step"}, step=step)
            t0, tokens = time.perf_counter(), 0
        paused = time.perf_counter()
        if eval_now:
            metrics = evaluate_whole(evaluate, model, full, accelerator)
            if metrics:  # (an evaluation without figures: no bare "step N:" line)
                bar.write(f"step {step}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
            if metrics and accelerator.is_main_process:
                append_metrics(run_dir, {"step": step, **metrics})
                accelerator.log(metrics, step=step)
        if ckpt_now:
            save_training_checkpoint(run_dir, step, model, optimizer, scheduler, cfg, accelerator, full, skipped)
        t0 += time.perf_counter() - paused  # the throughput clock (tokens/s, MFU) stands still while evaluating and saving
    bar.close()
    if not metrics:  # resumed at the end, or max_steps=0: evaluate what we have
        metrics = evaluate_whole(evaluate, model, full, accelerator)
    if cfg.max_steps == 0 and ckpt is None:  # the starting model (e.g. imported weights) as a run: eval / generate / resume
        save_training_checkpoint(run_dir, 0, model, optimizer, scheduler, cfg, accelerator, full)
    if cfg.fsdp:  # the caller's model gets the trained weights, on the device as an unsharded run leaves it
        gather(inner, full)
        full.to(accelerator.device)
    if accelerator.is_main_process:
        plot_metrics(run_dir)
        write_json_atomic(run_dir / "results.json", {"step": max(start_step, cfg.max_steps), **metrics})
    for tracker in accelerator.trackers:  # note: not end_training(), which also destroys the process group: a recipe may
        tracker.finish()  # train again in this process (dt's behaviour-cloning baseline); the CLI ends the group at exit
    # note: drop the training objects (ours and Accelerate's references) and collect them now, so a DDP / sharded model's
    # communication state goes while the process group is alive, not at interpreter exit (gloo aborts there)
    del model, inner, optimizer, scheduler, loader, unwrapped, flops
    accelerator.free_memory()
    return metrics


class FlopMeter:
    """Model FLOPs of the steps since the last report (models/flops.py: each batch counted part by
    part) against the device's peak: `mfu(seconds)` = each process's achieved rate over its
    device's peak (this process's: the training loop averages it over the processes)."""

    def __init__(self, model: MultimodalTransformer, accelerator: Accelerator):
        from models.flops import part_params, peak_flops

        self.model, self.flops = model, 0.0
        self.params = part_params(model)  # once: it walks every module
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(accelerator.mixed_precision, torch.float32)
        self.peak, self.source = peak_flops(accelerator.device, dtype)

    def add(self, micro_batches: list) -> None:
        from models.flops import batch_flops

        for inputs, _ in micro_batches:
            self.flops += batch_flops(self.model, inputs, self.params)

    def mfu(self, seconds: float) -> float:
        value, self.flops = self.flops / seconds / self.peak, 0.0
        return value


def read_metrics(run_dir) -> list[dict]:
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        return []
    lines = path.read_text(errors="replace").split("\n")[:-1]  # note: drops a last line cut short (disk full, killed mid-write)
    rows, bad = [], []
    for i, line in enumerate(lines, 1):
        if line.strip():
            try:
                row = json.loads(line)
            except ValueError:
                row = None
            if isinstance(row, dict) and isinstance(row.get("step"), int):
                rows.append(row)
            else:
                bad.append(i)
    if bad:  # a damaged log line (a disk error, an edit) costs its figures, not the run
        print(f"warning: {path}: skipped {len(bad)} line(s) that are not a logged step (line {', '.join(map(str, bad[:5]))}"
              f"{', ...' if len(bad) > 5 else ''})", file=sys.stderr)  # fmt: skip
    return rows


def plot_metrics(run_dir) -> Path | None:
    """loss.png: training loss and every evaluation metric against the step."""
    rows = read_metrics(run_dir)
    if not rows:
        return None
    if importlib.util.find_spec("matplotlib") is None:  # a bare machine (a GPU check): the run matters more than its picture
        print(f"no {Path(run_dir) / 'loss.png'}: matplotlib is not installed", file=sys.stderr)
        return None
    from .plots import save_png, subplots

    fig, ax = subplots(figsize=(7, 4))
    train_rows = [r for r in rows if r.get("loss") is not None]  # skipped non-finite batches log loss None
    ax.plot([r["step"] for r in train_rows], [r["loss"] for r in train_rows], label="train loss", lw=1)
    for key in sorted({k for r in rows for k in r if k.startswith("val_")}):
        pts = [(r["step"], r[key]) for r in rows if key in r]
        ax.plot(*zip(*pts), "o-", label=key.replace("_", " "))
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats per token)")
    ax.grid(alpha=0.3)
    ax.legend()
    return save_png(fig, Path(run_dir) / "loss.png")
