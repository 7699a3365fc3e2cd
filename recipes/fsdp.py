"""Sharded training (FSDP2) and full-state checkpoints for the training loop.

`fsdp=true` trains a copy of the model sharded with torch's `fully_shard`: each transformer
block is one unit and the root holds the rest (embeddings, tied LM head, final norm) — what
Accelerate's FSDP2 plugin does with a transformer wrap policy. Parameters, gradients and AdamW's
moments are split over the processes; each block's weights are gathered just before it runs.
The loop shards the model itself because Accelerate 1.15 switches to FSDP only on accelerator
devices (an FSDP plugin on the CPU is ignored and the run is DDP); `fully_shard` runs the same
on CPU processes (gloo) and GPUs (NCCL), so the path GPUs take is the one the CPU tests run.

The caller's model stays whole (the "full copy", kept on the CPU): before an evaluation, a
checkpoint and at the end, the shards are gathered into it. Evaluation runs on it on every
process, so recipes' evaluations (generation, beam search) never have to keep sharded processes
in lock-step, and checkpoints are the same files an unsharded run writes: a run can resume with
or without FSDP, on any number of processes.

The optimizer state in a checkpoint is keyed by parameter name (torch.distributed.checkpoint's
full state dict), sharded or not; a checkpoint of an older version keyed by index still loads
into an unsharded run.
"""

from __future__ import annotations

import copy

import torch
import torch.distributed as dist
from accelerate import Accelerator
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)

from models.blocks import Block


def shard(model: nn.Module, accelerator: Accelerator) -> nn.Module:
    """A copy of `model` on this process's device, sharded with `fully_shard` (one unit per
    Block, the rest in the root). Every process starts from process 0's weights (as DDP does),
    so models built with different seeds still train as one."""
    from torch.distributed.fsdp import fully_shard

    if getattr(model.config, "subset_inputs", False):
        raise ValueError("fsdp=true needs every process to run every block each step, and this model's batches may leave a "
                         "stack unused on one process (a generalist's task mix): train it without fsdp (DDP)")  # fmt: skip
    if accelerator.num_processes < 2 or not dist.is_initialized():
        raise ValueError("fsdp=true shards the model over processes: launch 2 or more with torchrun or accelerate launch "
                         f"(this run has {accelerator.num_processes})")  # fmt: skip
    sharded = copy.deepcopy(model).to(accelerator.device)
    with torch.no_grad():
        for t in [*sharded.parameters(), *sharded.buffers()]:
            dist.broadcast(t.data, src=0)
    for m in sharded.modules():
        if isinstance(m, Block):
            fully_shard(m)
    fully_shard(sharded)
    if accelerator.is_main_process:
        here = sum(p.to_local().numel() for p in sharded.parameters())
        print(f"fsdp: {sum(p.numel() for p in sharded.parameters()):,} parameters sharded over {accelerator.num_processes} "
              f"processes ({here:,} on this one)")  # fmt: skip
    return sharded


def is_sharded(model: nn.Module) -> bool:
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters())


def gather(sharded: nn.Module, full: nn.Module) -> None:
    """Copy the sharded model's weights into the whole `full` copy on every process (a collective:
    every process must call it)."""
    state = get_model_state_dict(sharded, options=StateDictOptions(full_state_dict=True))
    full.load_state_dict(state)


def raw_optimizer(optimizer):
    return getattr(optimizer, "optimizer", optimizer)  # Accelerate's AcceleratedOptimizer wraps the torch one


def optimizer_state(model: nn.Module, optimizer) -> dict:
    """The whole optimizer state keyed by parameter name, on the CPU (a collective when `model` is
    sharded: every process must call it; process 0 receives the state, the others an empty dict)."""
    return get_optimizer_state_dict(model, raw_optimizer(optimizer), options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_optimizer_state(model: nn.Module, optimizer, state: dict) -> None:
    """Load a checkpoint's optimizer state: keyed by name (any layout, sharded or not), or by
    index (checkpoints of earlier versions; unsharded only)."""
    opt = raw_optimizer(optimizer)
    if state["state"] and all(isinstance(k, int) for k in state["state"]):
        if is_sharded(model):
            raise ValueError("this checkpoint's optimizer state is keyed by index (an earlier version): resume it without fsdp=true once")
        opt.load_state_dict(state)
        return
    set_optimizer_state_dict(model, opt, state, options=StateDictOptions(full_state_dict=True))
    for group in opt.param_groups:  # note: the name-keyed load turns tuples (AdamW's betas) into lists; keep the type the
        for k, v in group.items():  # optimizer was built with, so a resumed run's checkpoints equal an uninterrupted run's
            if isinstance(v, list) and isinstance(opt.defaults.get(k), tuple):
                group[k] = tuple(v)
