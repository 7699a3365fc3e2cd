"""Read `torch.save` checkpoints without unpickling them.

A `torch.save` file is a zip archive `<archive>/data.pkl` (the object tree, pickled with
protocol 2) plus one raw record `<archive>/data/<key>` per storage, a `byteorder` record and a
`version`. Unpickling `data.pkl` runs whatever callables it names (`os.system` included), and
`torch.load(weights_only=True)` still unpickles, only with a filter. So this module never calls
`pickle` or `torch.load`: it walks the opcodes with `pickletools.genops` (a parser that executes
nothing) on a small stack machine, and every global the pickle names is looked up in
`SAFE_GLOBALS`, a table of our own functions and constants. Names are never imported.

Reads: dicts, OrderedDicts (state dicts, with their `_metadata`), lists, tuples, str, int, float,
bool, None, bytes, `torch.Size`, dtypes, and tensors of the dtypes in `DTYPES` (views, offsets,
strides and shared storages kept; `requires_grad` ignored, so parameters come back as plain
tensors). Always loads to the CPU, whatever device the tensors were saved from.
Refuses with `UnsafeCheckpointError`: any other global (functions, classes: `os.system`,
`builtins.eval`, ...) and the opcodes that build arbitrary objects (NEWOBJ, INST, OBJ, EXT*).
Complex and quantized storages and tensor subclasses name globals outside the table, so they are
refused the same way. Refuses with `ValueError`: legacy non-zip files, truncated or damaged zips,
a missing `data.pkl`, a storage record that is absent or shorter than its header or its tensors need.
Memory stays proportional to the file's size: every record is read through `_read`, which
refuses a record declared larger than the file and never decompresses past its declared size
(torch.save stores records uncompressed, so only a compressed record, a zip bomb, could go past
it); the storages read may total at most the file's size; the tensors built over them (views,
stride-0 `expand`ed tensors, many names for one storage) at most twice the file's size plus 1 MiB;
the pickle's opcodes are validated in one pass and run in a second, without a list of them; the
bytes, sizes and dict entries that allowlisted calls copy may total what the pickle spells out.
Dict keys must be names or small integers and tensor layouts below 2**63 (deep tuples crash
hashing, colliding or huge integers cost quadratic time), and a state dict's attributes are set once.
"""

from __future__ import annotations

import pickletools
import sys
import zipfile
from collections import OrderedDict
from pathlib import Path

import torch

# legacy storage class (torch.<X>Storage) -> dtype of its elements
STORAGE_DTYPES = {
    "FloatStorage": torch.float32, "HalfStorage": torch.float16, "BFloat16Storage": torch.bfloat16,
    "DoubleStorage": torch.float64, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8, "BoolStorage": torch.bool,
}  # fmt: skip
# dtypes that may appear as values, or as the target of `_rebuild_tensor_v3` (uint16 and up have no legacy storage class)
DTYPES = {str(d).removeprefix("torch."): d for d in [*STORAGE_DTYPES.values(), torch.uint16, torch.uint32, torch.uint64]}


class _Untyped:
    """Stands for torch.storage.UntypedStorage: bytes whose element dtype `_rebuild_tensor_v3` gives."""


class UnsafeCheckpointError(ValueError):
    """A checkpoint whose pickle names a global or opcode outside the allowlist; nothing of it ran."""


# -- the functions the allowlisted globals stand for ------------------------------------------------
def _strided(storage: torch.Tensor, offset: int, size, stride) -> torch.Tensor:
    """A view of the flat `storage` tensor; checks that every element it reaches exists."""
    if not (isinstance(storage, torch.Tensor) and storage.dim() == 1):
        raise ValueError(f"a tensor's storage is a {type(storage).__name__}, expected a storage reference")
    size, stride = tuple(size), tuple(stride)
    if not all(isinstance(n, int) and 0 <= n < 1 << 63 for n in (offset, *size, *stride)) or len(size) != len(stride):
        shown = lambda t: tuple(n if not isinstance(n, int) or abs(n) < 1 << 63 else "out of range" for n in t)  # noqa: E731
        raise ValueError(f"tensor layout offset={shown((offset,))[0]} size={shown(size)} stride={shown(stride)} is not valid")
    needed = 0 if 0 in size else 1 + offset + sum((n - 1) * s for n, s in zip(size, stride))
    if needed > storage.numel():
        raise ValueError(f"a tensor of size {size}, stride {stride}, offset {offset} needs {needed} elements; "
                         f"its storage holds {storage.numel()}")
    return torch.as_strided(storage, size, stride, offset)  # a view: tensors on one storage share memory


def _rebuild_tensor_v2(storage, offset, size, stride, requires_grad, backward_hooks, metadata=None):
    """torch._utils._rebuild_tensor_v2: `storage` is the flat tensor BINPERSID produced."""
    if metadata:
        raise ValueError(f"tensor metadata {metadata!r} is not supported")
    return _strided(storage, offset, size, stride)


def _rebuild_tensor_v3(storage, offset, size, stride, requires_grad, backward_hooks, dtype, metadata=None):
    """torch._utils._rebuild_tensor_v3: an untyped (byte) storage read as `dtype`."""
    if dtype not in DTYPES.values() or storage.dtype != torch.uint8:
        raise ValueError(f"_rebuild_tensor_v3 wants a byte storage and a known dtype, got {storage.dtype} and {dtype!r}")
    if metadata:
        raise ValueError(f"tensor metadata {metadata!r} is not supported")
    return _strided(storage.view(dtype), offset, size, stride)  # view() fails if the byte count is not a whole number of elements


def _rebuild_parameter(data, requires_grad, backward_hooks):
    """torch._utils._rebuild_parameter: kept as the plain tensor (requires_grad is ignored)."""
    return data


def _bytes(text: str = "", encoding: str = "latin1") -> bytes:
    """Protocol 2 writes bytes as `_codecs.encode(text, "latin1")`, and b"" as `bytes()`."""
    if not isinstance(text, str) or encoding != "latin1":
        raise ValueError(f"bytes from {type(text).__name__} in {encoding!r}, expected a str in 'latin1'")
    return text.encode("latin1")


SAFE_GLOBALS = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("collections", "OrderedDict"): OrderedDict,
    ("torch", "Size"): torch.Size,
    ("_codecs", "encode"): _bytes,
    ("__builtin__", "bytes"): _bytes,
    ("builtins", "bytes"): _bytes,
    ("torch.storage", "UntypedStorage"): _Untyped,  # storage classes stand for their element dtype
    ("torch", "UntypedStorage"): _Untyped,
    **{("torch", name): dtype for name, dtype in STORAGE_DTYPES.items()},
    **{("torch", name): dtype for name, dtype in DTYPES.items()},
}
# the only things REDUCE may call
CALLABLE_GLOBALS = (_rebuild_tensor_v2, _rebuild_tensor_v3, _rebuild_parameter, OrderedDict, torch.Size, _bytes)

# opcodes whose argument, as genops decodes it, is the value to push
PUSH_ARG = {"BININT", "BININT1", "BININT2", "LONG1", "LONG4", "BINFLOAT", "BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8",
            "BINBYTES", "SHORT_BINBYTES", "BINBYTES8"}  # fmt: skip
CONSTANTS = {"NONE": None, "NEWTRUE": True, "NEWFALSE": False, "EMPTY_TUPLE": ()}
EMPTY = {"EMPTY_DICT": dict, "EMPTY_LIST": list}  # a fresh container each time: SETITEMS / APPENDS fill it


# -- the stack machine ------------------------------------------------------------------------------
class _Unpickler:
    """Runs the opcodes of one data.pkl; storages come from `archive` (a zip and its folder prefix)."""

    def __init__(self, archive: zipfile.ZipFile, prefix: str, file_bytes: int):
        self.archive, self.prefix, self.names = archive, prefix, set(archive.namelist())
        self.file_bytes, self.read_bytes = file_bytes, 0  # storages read so far may total the file's size
        self.tensor_bytes = 0  # bytes the tensors built so far reach: at most twice the file's size (+ 1 MiB)
        order = self.record("byteorder") if f"{prefix}/byteorder" in self.names else b"little"  # absent in old files: little
        if order not in (b"little", b"big"):
            raise ValueError(f"byteorder record is {order[:20]!r}, expected b'little' or b'big'")
        self.swap = order.decode() != sys.byteorder
        self.storages: dict[str, torch.Tensor] = {}  # key -> flat tensor, so shared storages load once and stay shared

    def record(self, name: str) -> bytes:
        return _read(self.archive, f"{self.prefix}/{name}", self.file_bytes)

    def storage(self, pid) -> torch.Tensor:
        """BINPERSID: ('storage', dtype, key, location, numel) -> the flat CPU tensor of data/<key>."""
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and isinstance(pid[2], str)
                and isinstance(pid[4], int)):  # fmt: skip
            raise UnsafeCheckpointError(f"persistent id {pid!r} is not a torch storage reference")
        _, kind, key, _location, numel = pid  # the location is ignored: everything loads to the CPU
        if kind is _Untyped and self.swap:  # subtle: its element type is only known later, in _rebuild_tensor_v3
            raise ValueError(f"storage {key!r} is untyped (a uint16/32/64 tensor) in a file of foreign byte order; "
                             "byte swapping it is not supported")
        dtype = torch.uint8 if kind is _Untyped else kind
        if not isinstance(dtype, torch.dtype):
            raise UnsafeCheckpointError(f"storage {key!r} has type {kind!r}, expected a storage class")
        if key in self.storages:
            if self.storages[key].dtype != dtype:
                raise ValueError(f"storage {key!r} is referenced as both {self.storages[key].dtype} and {dtype}")
            return self.storages[key]
        if f"{self.prefix}/data/{key}" not in self.names:
            raise ValueError(f"storage {key!r} is referenced but data/{key} is not in the archive")
        size = self.archive.getinfo(f"{self.prefix}/data/{key}").file_size  # as the zip declares it; zipfile reads no more
        if size != numel * dtype.itemsize:
            raise ValueError(f"storage {key!r} holds {size} bytes; its header says {numel} x {dtype} "
                             f"({numel * dtype.itemsize} bytes)")
        self.read_bytes += size
        if self.read_bytes > self.file_bytes:
            raise ValueError(f"storage {key!r}: the storages expand to more than the file's {self.file_bytes} bytes "
                             "(compressed records; torch.save stores them uncompressed)")
        raw = bytearray(self.record(f"data/{key}"))  # a writable copy: frombuffer shares it
        # note: frombuffer refuses an empty buffer
        flat = torch.frombuffer(raw, dtype=torch.uint8) if raw else torch.empty(0, dtype=torch.uint8)
        if self.swap and dtype.itemsize > 1:
            flat = flat.view(-1, dtype.itemsize).flip(1).reshape(-1)  # (numel, itemsize) with each element's bytes reversed
        self.storages[key] = flat.view(dtype)
        return self.storages[key]

    def run(self, data: bytes):
        for _ in pickletools.genops(data):  # parse everything first: a malformed pickle fails before anything is built
            pass
        ops = pickletools.genops(data)  # note: run from a second pass, not a list of every opcode (~180 bytes each)
        stack, marks, memo, built = [], [], {}, set()
        budget = len(data) + 4096  # elements that bytes / torch.Size / OrderedDict calls may copy: what the pickle spells out

        def pop_mark() -> list:
            start = marks.pop()
            items = stack[start:]
            del stack[start:]
            return items

        for op, arg, _pos in ops:
            name = op.name
            if name in ("PROTO", "FRAME"):
                continue
            elif name in PUSH_ARG:
                stack.append(arg)
            elif name in CONSTANTS:
                stack.append(CONSTANTS[name])
            elif name in EMPTY:
                stack.append(EMPTY[name]())
            elif name == "MARK":
                marks.append(len(stack))
            elif name in ("BINPUT", "LONG_BINPUT"):
                memo[arg] = stack[-1]
            elif name == "MEMOIZE":
                memo[len(memo)] = stack[-1]
            elif name in ("BINGET", "LONG_BINGET"):
                stack.append(memo[arg])
            elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
                n = int(name[-1])
                items = tuple(stack[-n:])
                del stack[-n:]
                stack.append(items)
            elif name in ("TUPLE", "LIST"):
                items = pop_mark()
                stack.append(tuple(items) if name == "TUPLE" else items)
            elif name == "DICT":
                items = pop_mark()
                stack.append(dict(zip(_keys(items[::2]), items[1::2])))
            elif name in ("SETITEM", "SETITEMS"):
                items = pop_mark() if name == "SETITEMS" else [stack.pop(-2), stack.pop()]  # key, value, key, value, ...
                if not isinstance(stack[-1], dict):
                    raise ValueError(f"{name} on a {type(stack[-1]).__name__}, expected a dict")
                stack[-1].update(zip(_keys(items[::2]), items[1::2]))
            elif name in ("APPEND", "APPENDS"):
                items = pop_mark() if name == "APPENDS" else [stack.pop()]
                if not isinstance(stack[-1], list):
                    raise ValueError(f"{name} on a {type(stack[-1]).__name__}, expected a list")
                stack[-1].extend(items)
            elif name in ("GLOBAL", "STACK_GLOBAL"):
                if name == "GLOBAL":
                    module, _, attr = arg.partition(" ")
                else:
                    module, attr = stack[-2], stack[-1]
                    del stack[-2:]
                    if not (isinstance(module, str) and isinstance(attr, str)):  # note: before hashing them (a deep tuple)
                        raise UnsafeCheckpointError(f"STACK_GLOBAL of a {type(module).__name__} and a {type(attr).__name__}, expected names")
                if (module, attr) not in SAFE_GLOBALS:
                    raise UnsafeCheckpointError(f"refusing global {module}.{attr}: not in the safe-load allowlist")
                stack.append(SAFE_GLOBALS[module, attr])
            elif name == "REDUCE":
                args, func = stack.pop(), stack.pop()
                if not any(func is f for f in CALLABLE_GLOBALS) or not isinstance(args, tuple):
                    raise UnsafeCheckpointError(f"REDUCE of {func!r}: only allowlisted functions may be called")
                if func is OrderedDict and args:  # OrderedDict(pairs): its keys checked as DICT / SETITEMS check theirs
                    pairs = args[0]
                    if len(args) > 1 or not isinstance(pairs, list) or not all(isinstance(p, tuple) and len(p) == 2 for p in pairs):
                        raise UnsafeCheckpointError("REDUCE of OrderedDict: expected one list of (key, value) pairs")
                    _keys([k for k, _ in pairs])
                out = func(*args)
                if isinstance(out, (bytes, tuple, dict)):  # copies of memoized arguments: REDUCE repeated 1,000 times
                    budget -= len(out)  # on one 1 MB string used to build 1 GB
                    if budget < 0:
                        raise ValueError(f"data.pkl builds more bytes / sizes / dict entries than its {len(data)} bytes spell out")
                if isinstance(out, torch.Tensor) and func is not _rebuild_parameter:
                    self.tensor_bytes += out.numel() * out.element_size()
                    if self.tensor_bytes > 2 * self.file_bytes + (1 << 20):
                        raise ValueError(f"the tensors reach {self.tensor_bytes} bytes (the last of size {tuple(out.shape)}, stride "
                                         f"{out.stride()}), more than twice the file's {self.file_bytes} (views or names repeating "
                                         "one storage)")  # fmt: skip
                stack.append(out)
            elif name == "BINPERSID":
                stack.append(self.storage(stack.pop()))
            elif name == "BUILD":
                state = stack.pop()  # torch sets a state dict's `_metadata` (module versions) this way
                target = stack[-1]
                if not (isinstance(target, OrderedDict) and isinstance(state, dict) and all(isinstance(k, str) for k in state)):
                    raise UnsafeCheckpointError(f"BUILD of a {type(target).__name__}: only OrderedDict attributes are set")
                if id(target) in built:
                    raise ValueError("BUILD of one OrderedDict twice (torch.save sets a state dict's attributes once)")
                built.add(id(target))
                vars(target).update(state)
            elif name == "POP":
                stack.pop()
            elif name == "POP_MARK":
                pop_mark()
            elif name == "DUP":
                stack.append(stack[-1])
            elif name == "STOP":
                return stack.pop()
            else:
                raise UnsafeCheckpointError(f"pickle opcode {name} is not supported by the safe loader")
        raise ValueError("data.pkl ends without a STOP opcode")


def _keys(keys: list) -> list:
    """Dict keys as checkpoints have them: str, bool, None, or an int below 2**61 - 1 (distinct hashes;
    a deep tuple would crash hashing, and colliding ints make filling a dict quadratic)."""
    for k in keys:
        if not (k is None or isinstance(k, (str, bool)) or (isinstance(k, int) and abs(k) < (1 << 61) - 1)):
            raise ValueError(f"a dict key of type {type(k).__name__}{' out of range' if isinstance(k, int) else ''}: "
                             "checkpoint keys are names or small integers")  # fmt: skip
    return keys


def _read(archive: zipfile.ZipFile, name: str, file_bytes: int) -> bytes:
    """A record's bytes, refusing one declared larger than the whole file, and decompressing no
    further than its declared size (ZipFile.read inflates up to 1 GiB at a time before cutting)."""
    info = archive.getinfo(name)
    if info.file_size > file_bytes:
        raise ValueError(f"record {name} expands to {info.file_size} bytes, more than the file's {file_bytes} "
                         "(a compressed record; torch.save stores them uncompressed)")  # fmt: skip
    with archive.open(info) as f:
        return f.read(info.file_size)


# -- public entry point -----------------------------------------------------------------------------
def load_torch_file(path: str | Path):
    """The object `torch.save` wrote to `path` (a zip checkpoint), with every tensor on the CPU.

    Raises UnsafeCheckpointError for a global or opcode outside the allowlist (before anything of
    it runs), ValueError for a file that is not a complete torch zip checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path} is not a torch zip checkpoint (a legacy torch.save file, a truncated zip, or another format)")
    try:
        with zipfile.ZipFile(path) as archive:
            pkl = [n for n in archive.namelist() if n.count("/") == 1 and n.endswith("/data.pkl")]
            if len(pkl) != 1:
                raise ValueError(f"has {len(pkl)} <archive>/data.pkl records, expected 1 (is it a torch.save file?)")
            size = path.stat().st_size
            return _Unpickler(archive, pkl[0].split("/")[0], size).run(_read(archive, pkl[0], size))
    except UnsafeCheckpointError as e:
        raise UnsafeCheckpointError(f"{path}: {e}") from None
    except (zipfile.BadZipFile, EOFError) as e:
        raise ValueError(f"{path} is a damaged zip: {e}") from None
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    except (TypeError, IndexError, KeyError, AttributeError, RuntimeError) as e:  # stack underflow, bad memo slot or arguments
        raise ValueError(f"{path}: data.pkl is malformed ({type(e).__name__}: {e})") from None
