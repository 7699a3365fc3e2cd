"""TokenSet and TokenBatch: the one contract between tokenizers and the model.

A tokenizer turns one raw sample into a `TokenSet` (one modality, N tokens); `collate` /
`pack` (collate.py) turn a list of them into a `TokenBatch` (leading batch dimension B, a padding
mask, and for packed rows a segment id per token). The model's embedders read nothing else.

Exactly one of `ids` (discrete tokens, [N] long) and `values` (continuous tokens, [N, D] float)
is set. `positions` index the modality's learned position table; `types` index the token types
its tokenizer declares. `targets` / `loss_mask` are optional per-token training targets.

`ModalitySpec` is what a tokenizer declares so a model can be built for it: vocabulary size or
value width, the number of positions, the token types. See DESIGN.md, "The contract".
"""

from __future__ import annotations

import numbers
from dataclasses import asdict, dataclass, field, fields

import numpy as np
import torch
from torch import Tensor


def positive(who: str, key: str, value, least: int = 1) -> int:
    """A size, row length, multiple or count must be a whole number (a Python or NumPy integer) of at
    least `least`; returned as an int."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < least:
        raise ValueError(f"{who}: {key}={value!r} must be a whole number of at least {least}")
    return int(value)


@dataclass(frozen=True)
class ModalitySpec:
    """What a model needs to embed a modality's tokens (plain data, saved in config.json)."""

    modality: str
    token_types: tuple[str, ...]
    max_positions: int
    vocab_size: int | None = None  # set when the tokenizer emits ids
    value_dim: int | None = None  # set when the tokenizer emits values

    def __post_init__(self):
        if not isinstance(self.modality, str) or not self.modality:
            raise ValueError(f"a modality's name must be a non-empty string, got {self.modality!r}")
        if isinstance(self.token_types, str):  # (("point") is the string "point": its letters would be five types)
            raise ValueError(f"modality {self.modality!r}: token_types must be a list of names, got the string {self.token_types!r} "
                             f"(a tuple of one needs its comma: ({self.token_types!r},))")  # fmt: skip
        object.__setattr__(self, "token_types", tuple(self.token_types))
        bad = [t for t in self.token_types if not isinstance(t, str) or not t]
        twice = sorted({t for t in self.token_types if self.token_types.count(t) > 1} - set(bad))
        if bad or twice:
            raise ValueError(f"modality {self.modality!r}: token_types {list(self.token_types)} must be distinct non-empty names"
                             f"{f' ({twice} twice)' if twice else ''}")  # fmt: skip
        for key in ("max_positions", "vocab_size", "value_dim"):  # (a tokenizer.json's "16" or -1: named here, not at embedding)
            v = getattr(self, key)
            if v is not None or key == "max_positions":
                object.__setattr__(self, key, positive(f"modality {self.modality!r}", key, v))
        if (self.vocab_size is None) == (self.value_dim is None):
            raise ValueError(
                f"modality {self.modality!r}: declare exactly one of vocab_size and value_dim "
                f"(got vocab_size={self.vocab_size}, value_dim={self.value_dim})"
            )
        if not self.token_types:
            raise ValueError(f"modality {self.modality!r}: need at least one token type")

    def to_dict(self) -> dict:
        return {**asdict(self), "token_types": list(self.token_types)}


INDEX_FIELDS = ("ids", "positions", "types", "targets", "segments")  # integer fields: int64, the dtype embeddings and losses index with
ARRAY_FIELDS = ("ids", "values", "positions", "types", "targets", "loss_mask", "mask", "segments")  # TokenSet's and TokenBatch's tensors
NARROW_INTS = {torch.int8, torch.int16, torch.int32, torch.uint8, torch.uint16, torch.uint32, torch.uint64}  # made int64


def _as_tensors(ts) -> None:
    """numpy arrays as tensors, and integer ids / positions / types / targets / segments of another
    integer dtype (a tokenizer's uint32 or int32 ids, uint8 bytes) as int64, which embedding tables
    and cross_entropy take; other fields and dtypes are left for `_validate` to judge. (Per sample in
    a DataLoader: a field that is a tensor already costs one isinstance and one set lookup.)"""
    d = ts.__dict__
    for name in ARRAY_FIELDS:
        t = d.get(name)
        if t is None:
            continue
        if not isinstance(t, Tensor):
            if not hasattr(t, "__array__"):
                raise TypeError(f"{type(ts).__name__}({ts.modality!r}): {name} must be a tensor (or a numpy array), got {type(t).__name__}")
            a = np.asarray(t)  # (a reversed or strided view made contiguous: torch takes no negative strides; 0-d stays 0-d)
            if not a.flags.writeable:  # (a read-only view, as np.frombuffer makes of tiktoken's ids: torch warns at a tensor of it)
                a = a.copy()
            t = d[name] = torch.as_tensor(np.ascontiguousarray(a) if a.ndim else a)
        if t.dtype in NARROW_INTS and name in INDEX_FIELDS:
            d[name] = t.long()


def _check_dtype(name: str, t: Tensor, kind: str, who: str):
    ok = not t.is_floating_point() and not t.is_complex() and t.dtype != torch.bool
    if kind == "float":
        ok = t.is_floating_point()
    if not ok:
        raise TypeError(f"{who}: {name} must be {'a floating' if kind == 'float' else 'an integer'} tensor, got {t.dtype}")


def _validate(ts, lead: tuple[int, ...], who: str, spec: ModalitySpec | None):
    """Shared checks of TokenSet (lead = (N,)) and TokenBatch (lead = (B, N))."""
    if (ts.ids is None) == (ts.values is None):
        raise ValueError(f"{who}: set exactly one of ids and values (got {'both' if ts.ids is not None else 'neither'})")
    tokens = ts.ids if ts.ids is not None else ts.values
    if ts.ids is not None:
        _check_dtype("ids", ts.ids, "int", who)
        if ts.ids.dim() != len(lead):
            raise ValueError(f"{who}: ids must have shape ({', '.join(lead)}), got {tuple(ts.ids.shape)}")
    else:
        _check_dtype("values", ts.values, "float", who)
        if ts.values.dim() != len(lead) + 1:
            raise ValueError(f"{who}: values must have shape ({', '.join(lead)}, D), got {tuple(ts.values.shape)}")
    shape = tuple(tokens.shape[: len(lead)])
    for name in ("positions", "types", "targets", "loss_mask"):
        t = getattr(ts, name)
        if t is None:
            continue
        lead_shape = tuple(t.shape[: len(lead)]) if name == "targets" else tuple(t.shape)  # targets may be vectors per token
        if lead_shape != shape:
            raise ValueError(f"{who}: {name} has shape {tuple(t.shape)}, expected {shape}{' + (...)' if name == 'targets' else ''} like the tokens")
        if name in ("positions", "types"):
            _check_dtype(name, t, "int", who)
        if name == "loss_mask" and t.dtype != torch.bool:  # a 0/1 int mask would fail deep in the loss, nameless
            raise ValueError(f"{who}: loss_mask must be bool (True = the token's target counts), got {t.dtype}")
    for name in ("positions", "types"):
        t = getattr(ts, name)
        if t.is_cpu and t.numel() and int(t.min()) < 0:  # (values on a device: no sync here; check_inputs reads CPU batches)
            raise ValueError(f"{who}: {name} must be >= 0, got {int(t.min())}")
    if spec is None:
        return
    if spec.modality != ts.modality:
        raise ValueError(f"{who}: modality {ts.modality!r} does not match the spec's {spec.modality!r}")
    def sample(bad: Tensor) -> str:  # a batch's errors name the first sample at fault
        return f" (sample {int(bad.nonzero()[0, 0])} of the batch)" if len(lead) == 2 else ""

    if ts.positions.numel() and int(ts.positions.max()) >= spec.max_positions:
        raise ValueError(
            f"{who}: position {int(ts.positions.max())} is beyond the declared table "
            f"of {spec.max_positions} positions{sample(ts.positions >= spec.max_positions)}"
        )
    if ts.types.numel() and int(ts.types.max()) >= len(spec.token_types):
        raise ValueError(f"{who}: type {int(ts.types.max())} is beyond the declared types {spec.token_types}"
                         f"{sample(ts.types >= len(spec.token_types))}")  # fmt: skip
    if ts.ids is not None:
        if spec.vocab_size is None:
            raise ValueError(f"{who}: the {spec.modality!r} spec declares values of width {spec.value_dim}, got ids")
        if ts.ids.numel() and not (0 <= int(ts.ids.min()) and int(ts.ids.max()) < spec.vocab_size):
            raise ValueError(f"{who}: ids must lie in [0, {spec.vocab_size}), got [{int(ts.ids.min())}, {int(ts.ids.max())}]"
                             f"{sample((ts.ids < 0) | (ts.ids >= spec.vocab_size))}")  # fmt: skip
    elif spec.value_dim != ts.values.shape[-1]:
        raise ValueError(f"{who}: values have width {ts.values.shape[-1]}, the spec declares {spec.value_dim}")


@dataclass
class TokenSet:
    """One sample of one modality: N tokens. Shapes: ids [N] long | values [N, D] float."""

    modality: str
    ids: Tensor | None = None
    values: Tensor | None = None
    positions: Tensor | None = None  # [N] long; default 0..N-1
    types: Tensor | None = None  # [N] long; default all 0
    targets: Tensor | None = None  # [N] or [N, ...]: what the head predicts at each token
    loss_mask: Tensor | None = None  # [N] bool: which tokens count in the loss

    def __post_init__(self):
        _as_tensors(self)
        tokens = self.ids if self.ids is not None else self.values
        if tokens is not None:
            n = tokens.shape[0] if tokens.dim() else 0
            on = None if tokens.is_cpu else tokens.device  # (the tokens' device; None: the CPU, the common case, without the argument)
            if self.positions is None:
                self.positions = torch.arange(n, device=on)
            if self.types is None:
                self.types = torch.zeros(n, dtype=torch.long, device=on)
        _validate(self, ("N",), f"TokenSet({self.modality!r})", None)

    def __len__(self) -> int:
        return self.positions.shape[0]

    def validate(self, spec: ModalitySpec) -> "TokenSet":
        """Check against a tokenizer's declarations (table sizes, vocabulary, width)."""
        _validate(self, ("N",), f"TokenSet({self.modality!r})", spec)
        return self


def next_token_set(modality: str, ids: Tensor, types: Tensor | None = None) -> TokenSet:
    """A language-model example from N+1 ids: inputs ids[:-1], targets ids[1:] (nanoGPT's x, y)."""
    ids = torch.as_tensor(ids)  # (a list or an array of ids too)
    if ids.dim() != 1 or ids.shape[0] < 2:
        raise ValueError(f"next_token_set({modality!r}): need a 1-D sequence of at least 2 ids, got shape {tuple(ids.shape)}")
    return TokenSet(modality, ids=ids[:-1], types=None if types is None else types[:-1], targets=ids[1:])


def packed_stride(segments: Tensor, mask: Tensor) -> int:
    """TokenBatch.packed_stride of packed rows (segments [B, N], -1 on padding)."""
    B = segments.shape[0]
    edge = torch.full((B, 1), -2, dtype=segments.dtype, device=segments.device)  # no segment's id (padding's is -1)
    first = mask & (segments != torch.cat([edge, segments[:, :-1]], 1))
    last = mask & (segments != torch.cat([segments[:, 1:], edge], 1))
    if (last & torch.cat([mask[:, 1:], torch.zeros(B, 1, dtype=torch.bool, device=mask.device)], 1)).any():  # runs into the next
        return 1
    starts, k = first.nonzero()[:, 1], 64
    while k > 1 and bool((starts % k).any()):
        k //= 2
    return k


@dataclass
class TokenBatch:
    """B token sets of one modality, padded to N. `mask` is True on real tokens.

    `segments` ([B, N] long, optional) marks packed rows: tokens attend only within their own
    segment (block-diagonal attention); padding carries segment -1. `all_real` (not a field) says
    whether the mask is all True: read once where the batch is made (collate, on the CPU) and
    carried by `to()`, so the model decides whether to build a mask without asking the device (a
    sync, and a graph break under torch.compile) on every forward pass; `packed_stride` likewise
    (packed rows only; else None): the largest k (a power of 2, at most 64) such that every
    segment starts at a multiple of k with padding or the row's end after it, what a strided stem
    needs to read each segment as it reads it alone. So a batch's tensors are
    not edited in place: make a new TokenBatch (or `dataclasses.replace`) to change its mask.
    """

    modality: str
    ids: Tensor | None
    values: Tensor | None
    positions: Tensor  # [B, N] long
    types: Tensor  # [B, N] long
    mask: Tensor  # [B, N] bool, True = real token
    targets: Tensor | None = None  # [B, N] or [B, N, ...]
    loss_mask: Tensor | None = None  # [B, N] bool
    segments: Tensor | None = None  # [B, N] long, -1 on padding
    extra: dict = field(default_factory=dict)  # sample-level fields a recipe carries along (labels, ...)

    def __post_init__(self):
        _as_tensors(self)
        _validate(self, ("B", "N"), f"TokenBatch({self.modality!r})", None)
        if tuple(self.mask.shape) != tuple(self.positions.shape) or self.mask.dtype != torch.bool:
            raise ValueError(f"TokenBatch({self.modality!r}): mask must be bool of shape {tuple(self.positions.shape)}")
        self.all_real = bool(self.mask.all())
        self.packed_stride = packed_stride(self.segments, self.mask) if self.segments is not None else None

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.positions.shape)

    def validate(self, spec: ModalitySpec) -> "TokenBatch":
        _validate(self, ("B", "N"), f"TokenBatch({self.modality!r})", spec)
        return self

    def to(self, device) -> "TokenBatch":
        # note: non-blocking only towards an accelerator; a copy to the CPU must be complete before the host reads it
        non_blocking = torch.device(device).type != "cpu"
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    @classmethod
    def unmasked(cls, modality: str, ids: Tensor, positions: Tensor, types: Tensor) -> "TokenBatch":
        """Rows of real tokens (no padding) made by code that knows them valid (a decoding step's new
        token), without __post_init__'s checks, which read values back: a device sync per step."""
        return cls._unchecked(dict(modality=modality, ids=ids, values=None, positions=positions, types=types,
                                   mask=torch.ones_like(ids, dtype=torch.bool), targets=None, loss_mask=None, segments=None,
                                   extra={}), all_real=True, packed_stride=None)  # fmt: skip

    def pin_memory(self) -> "TokenBatch":
        """Page-locked copies (the DataLoader calls this with pin_memory=True), so `to(cuda)` overlaps compute."""
        return self._map(Tensor.pin_memory)

    def select(self, rows) -> "TokenBatch":
        """The batch's rows `rows` (indices or a slice), in that order; one index gives a batch of that row."""
        if isinstance(rows, numbers.Integral) and not isinstance(rows, bool):  # (t[i] would drop the batch dimension)
            rows = [int(rows)]
        return self._map(lambda t: t[rows])

    def _map(self, fn) -> "TokenBatch":
        moved = {f.name: getattr(self, f.name) for f in fields(self)}
        for k, v in moved.items():
            if isinstance(v, Tensor):
                moved[k] = fn(v)
        moved["extra"] = {k: fn(v) if isinstance(v, Tensor) else v for k, v in self.extra.items()}
        return self._unchecked(moved, self.all_real, self.packed_stride)

    @classmethod
    def _unchecked(cls, fields_: dict, all_real: bool, packed_stride: int | None) -> "TokenBatch":
        """A batch of these fields without __post_init__: its validation reads values back, a device sync."""
        batch = object.__new__(cls)
        batch.__dict__.update(fields_, all_real=all_real, packed_stride=packed_stride)
        return batch
