"""Atomic, unpickled checkpoints: safetensors for tensors, JSON for everything else.

A checkpoint is a directory `checkpoints/step-NNNNNNN/` holding the model directory files
(`config.json`, `model.safetensors`), the optimizer and scheduler state (`optimizer.safetensors`
+ `optimizer.json`), every process's RNG state (`rng.*`), `trainer_state.json` and a `manifest.json` with each file's
size and SHA-256. It is written under a temporary name, fsynced, then renamed into place: a
kill at any moment leaves the previous checkpoint intact, and a half-written one is never picked.
Loading checks the manifest first, so a corrupt or truncated checkpoint is refused with a
clear error. A write that fails (full disk, read-only file system) removes its temporary
directory and raises `CheckpointWriteError` naming the path and the OS error; the previous
checkpoints stay as they were. Nothing is ever unpickled.

Fault injection, for tests/test_faults.py and benchmarks/faults.py only: with the environment
variable TOKENIZERS_MM_FAULT=ckpt_write:N[:PHASE] the process SIGKILLs itself during its N-th
checkpoint write (counted from 1 in this process) at PHASE, one of FAULT_PHASES:
  files     some files of the temporary directory written (model, optimizer tensors), not the rest
  manifest  every file and the manifest written and fsynced, not yet renamed into place
  rename    renamed into place, older checkpoints not yet pruned
  prune     an older checkpoint renamed to .trash-*, not yet deleted (needs one to prune)
  overwrite the same step saved again: the old one renamed to .trash-*, the new one not yet in place
Unset (the normal case) it costs a few dictionary lookups per checkpoint.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import re
import shutil
import signal
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load, load_file, save, save_file

from tokenizers_mm.base import read_json, umask_mode, write_json_atomic

CKPT_DIR = "checkpoints"
STEP_RE = re.compile(r"^step-(\d{7,})$")
MANIFEST = "manifest.json"
FAULT_ENV = "TOKENIZERS_MM_FAULT"  # fault injection for the fault tests (module docstring)
FAULT_PHASES = ("files", "manifest", "rename", "prune", "overwrite")


class CheckpointError(ValueError):
    """A checkpoint that cannot be trusted: missing, truncated or corrupt."""


class CheckpointWriteError(OSError):
    """A checkpoint that could not be written (disk full, read-only, ...); the previous ones are kept."""


# -- fault injection (tests only; see the module docstring) ---------------------------------------
_writes = 0  # checkpoint writes started by this process
_writing = False  # inside write_checkpoint


def fault_point(phase: str) -> None:
    """SIGKILL this process here when TOKENIZERS_MM_FAULT asks for this write and phase."""
    spec = os.environ.get(FAULT_ENV)
    if not spec or not _writing:
        return
    kind, _, rest = spec.partition(":")
    n, _, wanted = rest.partition(":")
    if kind != "ckpt_write" or not n.isdigit() or (wanted or "files") not in FAULT_PHASES:
        raise ValueError(f"{FAULT_ENV}={spec!r}: expected ckpt_write:N[:PHASE] with PHASE one of {', '.join(FAULT_PHASES)}")
    if int(n) == _writes and (wanted or "files") == phase:
        os.kill(os.getpid(), signal.SIGKILL)


# -- nested state <-> (JSON, tensors) ---------------------------------------------------------------
def flatten_state(obj, tensors: dict, prefix: str = "t"):
    """Split a nested state (dicts with int or str keys, lists, tuples, tensors, numbers) into a
    JSON-able tree and a flat name -> tensor dict for safetensors."""
    if isinstance(obj, torch.Tensor):
        name = f"{prefix}.{len(tensors)}"
        tensors[name] = obj.detach().cpu().contiguous()
        return {"__tensor__": name}
    if isinstance(obj, np.ndarray):
        return {"__ndarray__": flatten_state(torch.from_numpy(obj.copy()), tensors, prefix)}
    if isinstance(obj, dict):
        return {"__dict__": [[k, flatten_state(v, tensors, prefix)] for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {"__tuple__": [flatten_state(v, tensors, prefix) for v in obj]}
    if isinstance(obj, list):
        return [flatten_state(v, tensors, prefix) for v in obj]
    if isinstance(obj, (bool, int, float, str)) or obj is None:
        return obj
    raise TypeError(f"checkpoint: cannot store a {type(obj).__name__} (only tensors, arrays, numbers, strings, containers)")


def unflatten_state(tree, tensors: dict):
    if isinstance(tree, dict):
        if "__tensor__" in tree:
            return tensors[tree["__tensor__"]]
        if "__ndarray__" in tree:
            return unflatten_state(tree["__ndarray__"], tensors).numpy()
        if "__tuple__" in tree:
            return tuple(unflatten_state(v, tensors) for v in tree["__tuple__"])
        if "__dict__" in tree:
            return {k: unflatten_state(v, tensors) for k, v in tree["__dict__"]}
        raise CheckpointError(f"checkpoint: unknown node {sorted(tree)}")
    if isinstance(tree, list):
        return [unflatten_state(v, tensors) for v in tree]
    return tree


def save_state(directory: Path, name: str, state) -> None:
    tensors: dict = {}
    tree = flatten_state(state, tensors)
    save_file(tensors, str(directory / f"{name}.safetensors"))
    umask_mode(directory / f"{name}.safetensors")  # (safetensors writes 0600)
    fault_point("files")
    write_json_atomic(directory / f"{name}.json", tree)


def load_state(directory: Path, name: str):
    try:
        tensors = load_file(str(directory / f"{name}.safetensors"))
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"checkpoint: {directory / name}.safetensors is unreadable ({e})") from None
    tree = read_json(directory / f"{name}.json", "checkpoint")
    try:
        return unflatten_state(tree, tensors)
    except (ValueError, KeyError, TypeError, AttributeError) as e:  # (a tree of another shape: "unknown node []")
        raise CheckpointError(f"{directory / name}.json does not describe {name}.safetensors' state ({e}); move {directory.name} aside "
                              "to resume from the checkpoint before it") from None  # fmt: skip


# -- RNG ------------------------------------------------------------------------------------------
def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def gather_rng_states(accelerator) -> list[dict]:
    """Every process's `rng_state()`, in process order (a collective: every process calls it).
    Each state travels as safetensors bytes (its JSON tree as one more uint8 tensor), so nothing
    is pickled between processes either."""
    if accelerator.num_processes == 1:
        return [rng_state()]
    tensors: dict = {}
    tree = flatten_state(rng_state(), tensors)
    tensors["tree"] = torch.frombuffer(bytearray(json.dumps(tree).encode()), dtype=torch.uint8)
    blob = torch.frombuffer(bytearray(save(tensors)), dtype=torch.uint8).to(accelerator.device)
    sizes = accelerator.gather(torch.tensor([blob.numel()], device=accelerator.device)).tolist()
    rows = accelerator.gather(torch.nn.functional.pad(blob, (0, max(sizes) - blob.numel()))).view(len(sizes), -1).cpu()
    states = []
    for row, size in zip(rows, sizes):
        tensors = load(row[:size].numpy().tobytes())
        states.append(unflatten_state(json.loads(tensors.pop("tree").numpy().tobytes()), tensors))
    return states


def set_rng_state(state: dict) -> None:
    v, internal, gauss = state["python"]
    random.setstate((v, tuple(internal), gauss))
    np.random.set_state(tuple(state["numpy"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# -- manifest -------------------------------------------------------------------------------------
def sha256(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fsync_dir(path: Path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_manifest(directory: Path) -> None:
    files = {}
    for p in sorted(directory.iterdir()):
        if p.is_file() and p.name != MANIFEST:
            with open(p, "rb") as f:
                os.fsync(f.fileno())
            files[p.name] = {"bytes": p.stat().st_size, "sha256": sha256(p)}
    write_json_atomic(directory / MANIFEST, {"files": files})


_verified: dict[tuple, tuple] = {}  # (directory, only) -> the files' (name, size, mtime) when they last verified


def verify(directory: Path, only: tuple[str, ...] | None = None) -> None:
    """Refuse a checkpoint whose files are missing, truncated or altered (`only` these of them: the
    model's, for a command that reads the weights alone), or whose manifest is not one this module
    writes (a manifest listing nothing would pass anything). Files unchanged since they last
    verified in this process (size, times, inode) are not hashed again (a resume checks twice)."""
    try:
        manifest = read_json(directory / MANIFEST, "checkpoint")
    except (FileNotFoundError, ValueError) as e:
        raise CheckpointError(f"checkpoint {directory} is incomplete or corrupt: {str(e).removeprefix('checkpoint: ')}") from None
    files = manifest.get("files") if isinstance(manifest, dict) else None
    listed = isinstance(files, dict) and all(isinstance(i, dict) and isinstance(i.get("bytes"), int) and isinstance(i.get("sha256"), str)
                                             for i in files.values())  # fmt: skip
    if not listed or not files or (missing := [n for n in only or () if n not in files]):
        why = 'expected {"files": {name: {"bytes": N, "sha256": HEX}}}' if not listed else \
            f"it does not list {', '.join(missing)}" if files else "it lists no files"
        raise CheckpointError(f"checkpoint {directory} is corrupt: {MANIFEST} is not a checkpoint manifest ({why})")
    wanted = [(name, info) for name, info in files.items() if only is None or name in only]
    for name, _ in wanted:
        if not (directory / name).is_file():
            raise CheckpointError(f"checkpoint {directory} is incomplete: {name} is missing")
    key, stats = (str(Path(directory).resolve()), only), [(n, (directory / n).stat()) for n, _ in wanted]
    seen = tuple((n, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino) for n, st in [*stats, (MANIFEST, (directory / MANIFEST).stat())])
    if _verified.get(key) == seen:
        return
    for (name, info), (_, st) in zip(wanted, stats):
        if st.st_size != info["bytes"]:
            how = "truncated" if st.st_size < info["bytes"] else "altered"  # (a file that grew: written to since)
            raise CheckpointError(f"checkpoint {directory} is {how}: {name} has {st.st_size} bytes, expected {info['bytes']}")
        if sha256(directory / name) != info["sha256"]:
            raise CheckpointError(f"checkpoint {directory} is corrupt: {name} does not match its SHA-256")
    _verified[key] = seen


# -- checkpoints in a run directory ---------------------------------------------------------------
def checkpoint_step(path: Path) -> int:
    """The step a checkpoint folder (`step-0000025`) was saved at."""
    return int(STEP_RE.match(path.name)[1])


def list_checkpoints(run_dir) -> list[Path]:
    root = Path(run_dir) / CKPT_DIR
    if not root.is_dir():
        return []
    return sorted((p for p in root.iterdir() if STEP_RE.match(p.name)), key=checkpoint_step)


def latest_checkpoint(run_dir) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def held_checkpoint(run_dir) -> Path | None:
    """The run directory's latest checkpoint, or one a killed overwrite left aside (`.trash-step-N`,
    which recover() puts back): what a new run there would mix with."""
    aside = sorted((Path(run_dir) / CKPT_DIR).glob(".trash-step-*"))  # (glob of a missing folder: none)
    return latest_checkpoint(run_dir) or (aside[0] if aside else None)


def verify_latest(ckpt: Path, only: tuple[str, ...] | None = None) -> None:
    """verify() the checkpoint a run would load (`only` these files); when it is damaged, the error
    also names the newest older one that verifies (kept by keep_checkpoints), to move the damaged one
    aside and go on from."""
    try:
        verify(ckpt, only)
    except CheckpointError as e:
        found = list_checkpoints(ckpt.parent.parent)
        for c in reversed(found[: found.index(ckpt)] if ckpt in found else []):
            try:
                verify(c, only)
            except CheckpointError:
                continue
            raise CheckpointError(f"{e}; {c.name} before it verifies: move {ckpt.name} out of {ckpt.parent} to go on from {c.name}") from None
        raise


def recover(run_dir) -> None:
    """Clear the leftovers of killed checkpoint writes (`.tmp-*`, `.trash-*`). A `.trash-step-N`
    whose step-N is gone and that is newer than every checkpoint left is a whole old checkpoint that
    an overwrite's two renames were killed between: it is renamed back when it verifies against its
    manifest. Anything else is removed: an older `.trash-step-N` is one a prune was killed removing
    (renamed back, nothing would prune it again once the run is complete). Only the process that
    writes the run's checkpoints calls this (before its first write, and before a resume picks one)."""
    root = Path(run_dir) / CKPT_DIR
    for stale in sorted(root.glob(".t*-step-*")) if root.is_dir() else []:
        final = stale.with_name(stale.name.removeprefix(".trash-"))
        newest = latest_checkpoint(run_dir)
        if (stale.name.startswith(".trash-") and STEP_RE.match(final.name) and not final.exists()
                and (newest is None or checkpoint_step(final) > checkpoint_step(newest))):  # fmt: skip
            try:
                verify(stale)
            except CheckpointError:
                pass  # half removed: nothing to keep
            else:
                with contextlib.suppress(OSError):  # a read-only disk: it stays aside, whole
                    os.rename(stale, final)
                continue
        shutil.rmtree(stale, ignore_errors=True)


def _reason(e: BaseException) -> str:
    """The OS error in a failed write, with its file when known."""
    if isinstance(e, OSError) and e.strerror:
        return e.strerror + (f": {e.filename}" if e.filename else "")
    return str(e)  # e.g. safetensors' "Error while serializing: I/O error: File too large (os error 27)"


def write_checkpoint(run_dir, step: int, write_files, keep: int = 2) -> Path:
    """Create checkpoints/step-NNNNNNN atomically: `write_files(tmp_dir)` fills a temporary
    directory, which is fsynced and renamed into place; then older checkpoints beyond `keep`
    are removed (each renamed away first, so a kill mid-removal never leaves a half checkpoint).

    A write that fails with an OS error (disk full, read-only file system, file size limit)
    removes the temporary directory and raises CheckpointWriteError naming the checkpoint, the
    OS error and the last good checkpoint, which is untouched."""
    global _writes, _writing
    root = Path(run_dir) / CKPT_DIR
    final = root / f"step-{step:07d}"
    tmp = root / f".tmp-{final.name}-{os.getpid()}"
    _writes, _writing = _writes + 1, True
    try:
        try:
            root.mkdir(parents=True, exist_ok=True)
            recover(run_dir)
            tmp.mkdir()
            write_files(tmp)
            write_manifest(tmp)
            _fsync_dir(tmp)
            fault_point("manifest")
        except BaseException as e:
            shutil.rmtree(tmp, ignore_errors=True)  # note: on a full disk this frees what the write took
            if not isinstance(e, (OSError, SafetensorError)):
                raise
            last = latest_checkpoint(run_dir)
            raise CheckpointWriteError(f"cannot write checkpoint {final} ({_reason(e)}); "
                                       f"{f'the last good checkpoint {last} is kept' if last else 'no earlier checkpoint exists'}") from None  # fmt: skip
        if final.exists():  # the same step saved again: move the old one away whole, never half-deleted
            trash = root / f".trash-{final.name}"
            os.rename(final, trash)
            fault_point("overwrite")  # a kill here leaves the old one aside, whole: recover() puts it back
            os.rename(tmp, final)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.rename(tmp, final)
        _fsync_dir(root)
        fault_point("rename")
        for old in [c for c in list_checkpoints(run_dir)[:-keep] if c != final] if keep > 0 else []:  # never the one just written
            trash = root / f".trash-{old.name}"
            os.rename(old, trash)
            fault_point("prune")
            shutil.rmtree(trash, ignore_errors=True)
        return final
    finally:
        _writing = False
