"""A simulated CUDA device for a machine without one: what runs on "cuda" runs on the CPU, but each
tensor that would live on the GPU carries a mark. Recorded while active (`SimulatedCuda`):

- `mixes`: ops that combine a marked tensor with an unmarked CPU tensor of one or more dimensions
  (real CUDA refuses them; a 0-dim CPU tensor, or a CPU index tensor, it accepts), a marked tensor
  read as NumPy, a marked tensor copied to the CPU without blocking (read before it has arrived);
- `generators`: a draw whose generator is on another device than the op (torch refuses it);
- `syncs`: each host sync of a marked tensor (.item(), .tolist(), bool(), int(), nonzero, a
  boolean-mask index, a copy to the CPU), by kind and source line: what a GPU waits on.

Marks spread through every op that reads a marked tensor (`__torch_dispatch__`), are set by
`.to("cuda")` / `device="cuda"` factories / `.cuda()`, and cleared by `.cpu()` / `.to("cpu")`;
`t.device` and `t.is_cuda` answer as on a GPU. A composite function whose CPU kernel makes its
own tensors on the real device (OPAQUE: scaled_dot_product_attention) is checked by its inputs.
`install(monkeypatch)` also makes the toolkit's loading put models "on the GPU" (their parameters
marked): `inference_device("cuda")`, `MultimodalTransformer.load(..., "cuda")` and
`torch.Generator("cuda")`. Written for torch 2.9 (the pinned version): it reads the `device` /
`is_cuda` descriptors through TorchFunctionMode.
"""

from __future__ import annotations

import collections
import traceback
from pathlib import Path

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

ROOT = str(Path(__file__).resolve().parents[2]) + "/"
CUDA = torch.device("cuda", 0)
aten = torch.ops.aten
_DEVICE = torch._C.TensorBase.__dict__["device"]
_IS_CUDA = torch._C.TensorBase.__dict__["is_cuda"]
_SYNCS = {torch.Tensor.tolist: "tolist", torch.Tensor.item: "item", torch.Tensor.__bool__: "bool", torch.Tensor.__int__: "int",
          torch.Tensor.__float__: "float", torch.Tensor.__index__: "index"}  # fmt: skip
_SYNC_OPS = {aten.nonzero.default: "nonzero", aten.equal.default: "equal", aten.masked_select.default: "masked_select",
             aten.repeat_interleave.Tensor: "repeat_interleave"}  # fmt: skip
_COPIES = {aten.copy_.default, aten._to_copy.default, aten.lift_fresh.default, aten.lift_fresh_copy.default, aten.detach.default,
           aten.alias.default, aten._local_scalar_dense.default}  # fmt: skip
_INDEX = {aten.index.Tensor, aten.index_put_.default, aten.index_put.default, aten._index_put_impl_.default}


def on_gpu(t) -> bool:
    return isinstance(t, torch.Tensor) and t.__dict__.get("_simulated_cuda", False)


def mark(x):
    for t in tree_flatten(x)[0]:
        if isinstance(t, torch.Tensor):
            t._simulated_cuda = True
    return x


def is_cuda(device) -> bool | None:
    """Whether a device argument names CUDA (None: no device given)."""
    if device is None:
        return None
    if isinstance(device, torch.device):
        return device.type == "cuda"
    if isinstance(device, str):
        return device.strip().startswith("cuda")
    return isinstance(device, int) and not isinstance(device, bool)


def where() -> str:
    """The innermost lines of this repository (not torch's) on the stack."""
    frames = [f for f in traceback.extract_stack() if f.filename.startswith(ROOT) and "/.venv/" not in f.filename
              and "simulated_cuda" not in f.filename][-2:]  # fmt: skip
    return " <- ".join(f"{f.filename.removeprefix(ROOT)}:{f.lineno}" for f in reversed(frames)) or "?"


class SimulatedCuda:
    """The modes that mark, propagate and check (a context manager); see the module's docstring."""

    def __init__(self):
        self.mixes, self.generators, self.syncs = collections.Counter(), collections.Counter(), collections.Counter()
        self.generator_devices: dict[int, bool] = {}
        self._generators = []  # kept alive: their ids key generator_devices
        self._functions, self._dispatch = _Functions(self), _Dispatch(self)
        self._quiet = 0  # inside a factory or copy that places its own result
        self._opaque = 0  # inside a composite torch function checked whole (OPAQUE)

    def generator(self, device="cpu"):
        g = _REAL_GENERATOR()
        self.generator_devices[id(g)] = bool(is_cuda(device))
        self._generators.append(g)
        return g

    def clear(self) -> None:
        for c in (self.mixes, self.generators, self.syncs):
            c.clear()

    def __enter__(self):
        self._functions.__enter__()
        self._dispatch.__enter__()
        return self

    def __exit__(self, *exc):
        self._dispatch.__exit__(*exc)
        self._functions.__exit__(*exc)


_REAL_GENERATOR = torch.Generator
# composite functions whose CPU kernels make their own tensors on the real device (SDPA's math path builds its causal
# mask and dropout on the CPU, as it would on the GPU there): their inputs are checked, not the ops inside
OPAQUE = {torch.nn.functional.scaled_dot_product_attention}


class _Functions(TorchFunctionMode):
    def __init__(self, sim: SimulatedCuda):
        super().__init__()
        self.sim = sim

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs, sim = dict(kwargs or {}), self.sim
        owner = getattr(func, "__self__", None)
        if owner is _DEVICE:
            return CUDA if on_gpu(args[0]) else func(*args, **kwargs)
        if owner is _IS_CUDA:
            return on_gpu(args[0])
        if func in _SYNCS and on_gpu(args[0]):
            sim.syncs[(_SYNCS[func], where())] += 1
        if func in (torch.Tensor.numpy, torch.Tensor.__array__) and on_gpu(args[0]):
            sim.mixes[("numpy() of a cuda tensor", where())] += 1
        if func in (torch.Tensor.to, torch.Tensor.cuda, torch.Tensor.cpu):
            return self.move(func, args, kwargs)
        if func in OPAQUE:
            tensors = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
            if any(on_gpu(t) for t in tensors) and (cpu := [t for t in tensors if not on_gpu(t) and t.dim() > 0]):
                sim.mixes[(f"{func.__name__}: cpu{tuple(cpu[0].shape)} among cuda inputs", where())] += 1
            sim._opaque += 1
            try:
                return func(*args, **kwargs)
            finally:
                sim._opaque -= 1
        if (g := kwargs.get("generator")) is not None and id(g) in sim.generator_devices:
            target = is_cuda(kwargs.get("device"))
            target = any(on_gpu(t) for t in tree_flatten((args, kwargs))[0]) if target is None else target
            if sim.generator_devices[id(g)] != target:
                where_op, where_g = ("cuda", "cpu") if target else ("cpu", "cuda")
                sim.generators[(f"{getattr(func, '__name__', func)}: a {where_g} generator for a {where_op} op", where())] += 1
        if is_cuda(kwargs.get("device")):  # a factory on the GPU: made on the CPU, marked
            kwargs["device"] = "cpu"
            sim._quiet += 1
            try:
                out = func(*args, **kwargs)
            finally:
                sim._quiet -= 1
            if func is torch.as_tensor and args and out is args[0] and not on_gpu(out):
                out = out.clone()  # as_tensor of a CPU tensor "to the GPU" is a copy
            return mark(out)
        return func(*args, **kwargs)

    def move(self, func, args, kwargs):
        sim, t, target, non_blocking = self.sim, args[0], None, kwargs.get("non_blocking", False)
        rest = list(args[1:])
        if func is torch.Tensor.cuda:
            target, call = True, lambda: t
        elif func is torch.Tensor.cpu:
            target, call = False, lambda: t
        else:
            for i, a in enumerate(rest):
                if isinstance(a, (torch.device, str)) or (isinstance(a, int) and not isinstance(a, bool)):
                    target, rest[i] = is_cuda(a), "cpu"
                elif isinstance(a, torch.Tensor):
                    target = on_gpu(a)
                elif isinstance(a, bool) and i > 0:
                    non_blocking = a
            if "device" in kwargs:
                target, kwargs["device"] = is_cuda(kwargs["device"]), "cpu"
            call = lambda: func(t, *rest, **kwargs)  # noqa: E731
        sim._quiet += 1
        try:
            out = call()
        finally:
            sim._quiet -= 1
        if target is None:  # a dtype change: stays where it is
            return mark(out) if on_gpu(t) else out
        if target and not on_gpu(t):
            return mark(t.clone() if out is t else out)
        if not target and on_gpu(t):
            sim.syncs[("copy to the cpu", where())] += 1
            if non_blocking:
                sim.mixes[("copy to the cpu with non_blocking=True (read before it arrives)", where())] += 1
            out = t.clone() if out is t else out
            out.__dict__.pop("_simulated_cuda", None)
        return out


class _Dispatch(TorchDispatchMode):
    def __init__(self, sim: SimulatedCuda):
        super().__init__()
        self.sim = sim

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs, sim = kwargs or {}, self.sim
        tensors = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        gpu = any(on_gpu(t) for t in tensors)
        if gpu and func in _SYNC_OPS:
            sim.syncs[(_SYNC_OPS[func], where())] += 1
        if gpu and func not in _COPIES and not sim._opaque:
            if func in _INDEX:  # CPU index tensors on a GPU tensor are allowed (copied); a boolean mask syncs
                target, indices = args[0], [i for i in args[1] if i is not None]
                if on_gpu(target):
                    if any(i.dtype == torch.bool for i in indices):
                        sim.syncs[(f"boolean-mask {func.__name__}", where())] += 1
                    if func is not aten.index.Tensor and len(args) > 2 and isinstance(args[2], torch.Tensor):
                        if not on_gpu(args[2]) and args[2].dim() > 0:
                            sim.mixes[(f"{func.__name__}: values on the cpu into a cuda tensor", where())] += 1
                elif target.dim() > 0:
                    sim.mixes[(f"{func.__name__}: a cpu tensor indexed by cuda indices", where())] += 1
            elif any(not on_gpu(t) and t.dim() > 0 for t in tensors):
                shapes = " ".join(f"{'cuda' if on_gpu(t) else 'cpu'}{tuple(t.shape)}" for t in tensors)
                sim.mixes[(f"{func.__name__}: {shapes}", where())] += 1
        out = func(*args, **kwargs)
        if gpu and not sim._quiet and func is not aten.copy_.default:
            mark(out)
        return out


def install(monkeypatch) -> SimulatedCuda:
    """A SimulatedCuda, and the toolkit's loading pointed at it (undone with the monkeypatch)."""
    import importlib

    transformer, runs = importlib.import_module("models.transformer"), importlib.import_module("recipes.runs")

    sim = SimulatedCuda()
    monkeypatch.setattr(torch, "Generator", sim.generator)
    load = transformer.MultimodalTransformer.load.__func__

    def load_on(cls, directory, device="cpu"):
        model = load(cls, directory, "cpu")
        if is_cuda(device):
            for t in [*model.parameters(), *model.buffers()]:
                t._simulated_cuda = True
        return model

    monkeypatch.setattr(transformer.MultimodalTransformer, "load", classmethod(load_on))
    checked = runs.inference_device
    monkeypatch.setattr(runs, "inference_device", lambda device=None: torch.device("cuda") if is_cuda(device) else checked(device))
    return sim
