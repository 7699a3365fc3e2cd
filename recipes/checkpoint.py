"""Atomic, unpickled checkpoints: safetensors for tensors, JSON for everything else.

A checkpoint is a directory `checkpoints/step-NNNNNNN/` holding the model directory files
(`config.json`, `model.safetensors`), the optimizer and scheduler state (`optimizer.safetensors`
+ `optimizer.json`), the RNG state, `trainer_state.json` and a `manifest.json` with each file's
size and SHA-256. It is written under a temporary name, fsynced, then renamed into place: a
kill at any moment leaves the previous checkpoint intact, and a half-written one is never picked.
Loading checks the manifest first, so a corrupt or truncated checkpoint is refused with a
clear error. Nothing is ever unpickled.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from tokenizers_mm.base import read_json, write_json_atomic

CKPT_DIR = "checkpoints"
STEP_RE = re.compile(r"^step-(\d{7,})$")
MANIFEST = "manifest.json"


class CheckpointError(ValueError):
    """A checkpoint that cannot be trusted: missing, truncated or corrupt."""


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
    write_json_atomic(directory / f"{name}.json", tree)


def load_state(directory: Path, name: str):
    try:
        tensors = load_file(str(directory / f"{name}.safetensors"))
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"checkpoint: {directory / name}.safetensors is unreadable ({e})") from None
    return unflatten_state(read_json(directory / f"{name}.json", "checkpoint"), tensors)


# -- RNG ------------------------------------------------------------------------------------------
def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


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


def verify(directory: Path) -> None:
    """Refuse a checkpoint whose files are missing, truncated or altered."""
    try:
        manifest = read_json(directory / MANIFEST, "checkpoint")
    except (FileNotFoundError, ValueError) as e:
        raise CheckpointError(f"checkpoint {directory} is incomplete or corrupt: {e}") from None
    for name, info in manifest.get("files", {}).items():
        p = directory / name
        if not p.is_file():
            raise CheckpointError(f"checkpoint {directory} is incomplete: {name} is missing")
        if p.stat().st_size != info["bytes"]:
            raise CheckpointError(f"checkpoint {directory} is truncated: {name} has {p.stat().st_size} bytes, expected {info['bytes']}")
        if sha256(p) != info["sha256"]:
            raise CheckpointError(f"checkpoint {directory} is corrupt: {name} does not match its SHA-256")


# -- checkpoints in a run directory ---------------------------------------------------------------
def list_checkpoints(run_dir) -> list[Path]:
    root = Path(run_dir) / CKPT_DIR
    if not root.is_dir():
        return []
    return sorted((p for p in root.iterdir() if STEP_RE.match(p.name)), key=lambda p: int(STEP_RE.match(p.name)[1]))


def latest_checkpoint(run_dir) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def write_checkpoint(run_dir, step: int, write_files, keep: int = 2) -> Path:
    """Create checkpoints/step-NNNNNNN atomically: `write_files(tmp_dir)` fills a temporary
    directory, which is fsynced and renamed into place; then older checkpoints beyond `keep`
    are removed (each renamed away first, so a kill mid-removal never leaves a half checkpoint)."""
    root = Path(run_dir) / CKPT_DIR
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:07d}"
    tmp = root / f".tmp-{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    write_files(tmp)
    write_manifest(tmp)
    _fsync_dir(tmp)
    if final.exists():  # the same step saved again (e.g. a resume that ends where it began)
        shutil.rmtree(final)
    os.rename(tmp, final)
    _fsync_dir(root)
    for old in list_checkpoints(run_dir)[:-keep] if keep > 0 else []:
        trash = root / f".trash-{old.name}"
        os.rename(old, trash)
        shutil.rmtree(trash, ignore_errors=True)
    for stale in root.glob(".t*-step-*"):  # leftovers of killed writes
        if stale != tmp:
            shutil.rmtree(stale, ignore_errors=True)
    return final
