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

The optimizer state in a checkpoint is torch's state dict keyed by parameter name instead of index,
whole, sharded or not; a checkpoint of an older version keyed by index still loads into an
unsharded run.
"""

from __future__ import annotations

import copy

import torch
import torch.distributed as dist
from accelerate import Accelerator
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

from models.blocks import Block


def shard(model: nn.Module, accelerator: Accelerator) -> nn.Module:
    """A copy of `model` on this process's device, sharded with `fully_shard` (one unit per
    Block, the rest in the root). Every process starts from process 0's weights (as DDP does),
    so models built with different seeds still train as one."""
    from torch.distributed.fsdp import fully_shard

    if subset_inputs(model):
        raise ValueError("fsdp=true needs every process to run every block each step, and this model's batches may leave a "
                         "stack unused on one process (a generalist's task mix): train it without fsdp (DDP)")  # fmt: skip
    if accelerator.num_processes < 2 or not dist.is_initialized():
        raise ValueError("fsdp=true shards the model over processes: launch 2 or more with torchrun or accelerate launch "
                         f"(this run has {accelerator.num_processes}; `mmtok resume RUN fsdp=false` resumes a sharded run in one)")  # fmt: skip
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


def subset_inputs(model: nn.Module) -> bool:
    """Whether a batch may leave some of the model's stacks or heads unused on a process (a
    generalist's task mix). False for any module without our config (a peer model trained in the loop)."""
    return bool(getattr(getattr(model, "config", None), "subset_inputs", False))


def raw_optimizer(optimizer):
    return getattr(optimizer, "optimizer", optimizer)  # Accelerate's AcceleratedOptimizer wraps the torch one


def param_names(model: nn.Module) -> dict[int, str]:
    """id(parameter) -> its name; tied parameters under their first name, as the optimizer holds them."""
    return {id(p): n for n, p in model.named_parameters()}


def optimizer_state(model: nn.Module, optimizer) -> dict:
    """The optimizer's state dict keyed by parameter name instead of index, whole: a sharded
    state tensor is gathered (a collective: with a sharded `model` every process must call it).
    Parameters without state (no gradient yet) have no entry, as in torch's own state dict."""
    from torch.distributed.tensor import DTensor

    opt = raw_optimizer(optimizer)
    names = param_names(model)
    state, groups = {}, []
    for group in opt.param_groups:
        groups.append({**{k: v for k, v in group.items() if k != "params"}, "params": [names[id(p)] for p in group["params"]]})
        for p in group["params"]:
            if p in opt.state:
                state[names[id(p)]] = {k: v.full_tensor() if isinstance(v, DTensor) else v for k, v in opt.state[p].items()}
    return {"state": state, "param_groups": groups}


def load_optimizer_state(model: nn.Module, optimizer, saved: dict) -> None:
    """Load a checkpoint's optimizer state: keyed by name (sharded or not: a whole state tensor is
    sharded as its parameter is), or by index (checkpoints of earlier versions; unsharded only)."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    opt = raw_optimizer(optimizer)
    if all(isinstance(i, int) for g in saved["param_groups"] for i in g["params"]):
        if is_sharded(model):
            raise ValueError("this checkpoint's optimizer state is keyed by index (an earlier version): resume it without fsdp=true once")
        opt.load_state_dict(saved)
        return
    if len(saved["param_groups"]) != len(opt.param_groups):
        raise ValueError(f"checkpoint: the optimizer has {len(opt.param_groups)} parameter groups, the checkpoint {len(saved['param_groups'])}")
    names = param_names(model)
    state, groups, index = {}, [], 0
    for group, kept in zip(opt.param_groups, saved["param_groups"]):
        mine = [names[id(p)] for p in group["params"]]  # in the optimizer's own order
        if sorted(mine) != sorted(kept["params"]):
            raise ValueError(f"checkpoint: the optimizer's parameters differ from the checkpoint's ({sorted(set(mine) ^ set(kept['params']))[:5]})")
        for name, p in zip(mine, group["params"]):
            if name in saved["state"]:
                state[index] = {k: distribute_tensor(v.to(p.device), p.device_mesh, p.placements)
                                if isinstance(p, DTensor) and torch.is_tensor(v) and v.shape == p.shape else v
                                for k, v in saved["state"][name].items()}  # fmt: skip
            index += 1
        groups.append({**kept, "params": list(range(index - len(mine), index))})
    opt.load_state_dict({"state": state, "param_groups": groups})
