import json
import os

import numpy as np
import pytest
import torch

from recipes.checkpoint import (FAULT_ENV, CheckpointError, flatten_state, latest_checkpoint, list_checkpoints, load_state, recover,
                                rng_state, save_state, set_rng_state, unflatten_state, verify, write_checkpoint)  # fmt: skip


def test_optimizer_state_round_trips_without_pickle(tmp_path):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.99))
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    save_state(tmp_path, "optimizer", opt.state_dict())
    json.loads((tmp_path / "optimizer.json").read_text())  # plain JSON
    back = load_state(tmp_path, "optimizer")
    opt2 = torch.optim.AdamW(model.parameters(), lr=5.0)
    opt2.load_state_dict(back)
    assert opt2.param_groups[0]["lr"] == 1e-3 and opt2.param_groups[0]["betas"] == (0.9, 0.99)
    for k, v in opt.state_dict()["state"][0].items():
        assert torch.equal(v, opt2.state_dict()["state"][0][k])


def test_training_optimizer_state_is_keyed_by_name_and_loads_either_way(tmp_path):
    """The loop stores AdamW's state keyed by parameter name (recipes/fsdp.py: the same with or
    without FSDP); it loads back exactly, with a parameter that has no state yet (no gradient: a
    task absent so far) and before any step; an older checkpoint keyed by index still loads."""
    from recipes.config import TrainConfig
    from recipes.fsdp import load_optimizer_state, optimizer_state
    from recipes.train import build_optimizer

    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4), torch.nn.Linear(4, 2), torch.nn.Linear(2, 2))
    opt = build_optimizer(model, TrainConfig(lr=1e-3))
    assert optimizer_state(model, opt)["state"] == {} and not opt.state  # before any step: nothing, and nothing made up
    model[:3](torch.randn(5, 3)).sum().backward()  # the last layer takes no part
    opt.step()
    model.zero_grad(set_to_none=True)
    save_state(tmp_path, "named", optimizer_state(model, opt))
    save_state(tmp_path, "indexed", opt.state_dict())
    assert sorted(load_state(tmp_path, "named")["state"]) == ["0.bias", "0.weight", "1.bias", "1.weight", "2.bias", "2.weight"]
    for name in ("named", "indexed"):
        back = build_optimizer(model, TrainConfig(lr=5.0))
        load_optimizer_state(model, back, load_state(tmp_path, name))
        assert [g["lr"] for g in back.param_groups] == [1e-3, 1e-3] and back.param_groups[0]["betas"] == (0.9, 0.99)
        assert back.state_dict()["state"].keys() == opt.state_dict()["state"].keys()
        for i, state in opt.state_dict()["state"].items():
            for k, v in state.items():
                assert torch.equal(v, back.state_dict()["state"][i][k]), (name, i, k)
    other = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4), torch.nn.Linear(4, 2))
    with pytest.raises(ValueError, match="the optimizer's parameters differ from the checkpoint's"):
        load_optimizer_state(other, build_optimizer(other, TrainConfig()), load_state(tmp_path, "named"))


def test_rng_state_round_trip(tmp_path):
    save_state(tmp_path, "rng", rng_state())
    expected = (torch.rand(3), np.random.rand(3))
    set_rng_state(load_state(tmp_path, "rng"))
    assert torch.equal(torch.rand(3), expected[0]) and np.array_equal(np.random.rand(3), expected[1])


def test_rng_states_per_process_and_from_older_or_other_sized_runs(tmp_path, capsys):
    """Each process resumes its own stream; a checkpoint of one state (saved before states were
    kept per process) or of fewer processes serves those it has, the others seed afresh from
    (seed, rank, step)."""
    from types import SimpleNamespace

    from recipes.config import TrainConfig
    from recipes.train import restore_rng_states

    def process(rank, world):
        return SimpleNamespace(process_index=rank, num_processes=world, is_main_process=rank == 0)

    torch.manual_seed(5)
    one = rng_state()
    torch.manual_seed(6)
    save_state(tmp_path, "rng", {"processes": [one, rng_state()]})
    save_state(tmp_path, "old", one)
    after = {}
    afresh = int(np.random.SeedSequence([10, 1, 7]).generate_state(1)[0])  # (seed, rank, step): not the stream of step 0
    for seed in (5, 6, afresh):
        torch.manual_seed(seed)
        after[seed] = torch.rand(3)
    cfg = TrainConfig(seed=10)
    restore_rng_states(load_state(tmp_path, "rng"), cfg, process(1, 2))
    assert torch.equal(torch.rand(3), after[6]) and capsys.readouterr().out == ""
    restore_rng_states(load_state(tmp_path, "old"), cfg, process(0, 2))
    assert torch.equal(torch.rand(3), after[5]) and "RNG states of 1 process(es), this run has 2" in capsys.readouterr().out
    restore_rng_states(load_state(tmp_path, "old"), cfg, process(1, 2), start_step=7)
    assert torch.equal(torch.rand(3), after[afresh])


def test_flatten_refuses_arbitrary_objects():
    with pytest.raises(TypeError, match="cannot store a object"):
        flatten_state({"x": object()}, {})
    tensors = {}
    tree = flatten_state({1: (2.0, "a", None), "t": [torch.ones(2)]}, tensors)
    back = unflatten_state(json.loads(json.dumps(tree)), tensors)
    assert back[1] == (2.0, "a", None) and torch.equal(back["t"][0], torch.ones(2))


def _write(step):
    def f(tmp):
        (tmp / "a.bin").write_bytes(bytes([step]) * 100)

    return f


def test_atomic_write_keeps_latest_and_prunes(tmp_path):
    for step in (10, 20, 30):
        write_checkpoint(tmp_path, step, _write(step), keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-0000020", "step-0000030"]
    verify(latest_checkpoint(tmp_path))


def test_interrupted_write_leaves_previous_checkpoint(tmp_path):
    write_checkpoint(tmp_path, 10, _write(10))

    def crash(tmp):
        (tmp / "a.bin").write_bytes(b"half")
        raise KeyboardInterrupt  # killed mid-write

    with pytest.raises(KeyboardInterrupt):
        write_checkpoint(tmp_path, 20, crash)
    assert latest_checkpoint(tmp_path).name == "step-0000010"
    verify(latest_checkpoint(tmp_path))
    write_checkpoint(tmp_path, 30, _write(30))  # the next write cleans the leftovers
    assert not list((tmp_path / "checkpoints").glob(".tmp-*"))


def test_a_kill_inside_an_overwrite_keeps_the_old_checkpoint(tmp_path):
    """The same step saved again is two renames (old aside, new in place): SIGKILLed between them
    (a real kill, in a subprocess), the old checkpoint is whole and recover() puts it back, before
    a resume picks a checkpoint and before the next write; even with keep=1 nothing is lost."""
    import os
    import subprocess
    import sys

    from conftest import ROOT

    script = ("import sys; from pathlib import Path; from recipes.checkpoint import write_checkpoint\n"
              "def w(b):\n    return lambda d: (d / 'a.bin').write_bytes(b)\n"
              "write_checkpoint(sys.argv[1], 5, w(b'old'), keep=1)\nwrite_checkpoint(sys.argv[1], 5, w(b'new'), keep=1)\n")  # fmt: skip
    p = subprocess.run([sys.executable, "-c", script, str(tmp_path)], cwd=ROOT, env={**os.environ, FAULT_ENV: "ckpt_write:2:overwrite"})
    assert p.returncode == -9  # SIGKILL
    root = tmp_path / "checkpoints"
    assert list_checkpoints(tmp_path) == [] and (root / ".trash-step-0000005").is_dir()
    recover(tmp_path)
    assert [c.name for c in list_checkpoints(tmp_path)] == ["step-0000005"] and not list(root.glob(".t*"))
    verify(root / "step-0000005")
    assert (root / "step-0000005" / "a.bin").read_bytes() == b"old"
    # a .trash-* killed while being deleted does not verify: removed, never put back half
    os.rename(root / "step-0000005", root / ".trash-step-0000005")
    (root / ".trash-step-0000005" / "a.bin").unlink()
    write_checkpoint(tmp_path, 6, _write(6), keep=1)
    assert [c.name for c in list_checkpoints(tmp_path)] == ["step-0000006"] and not list(root.glob(".t*"))


def test_a_checkpoint_below_the_latest_is_not_pruned_as_it_is_written(tmp_path):
    for step in (200, 300):
        write_checkpoint(tmp_path, step, _write(step % 256), keep=2)
    assert write_checkpoint(tmp_path, 100, _write(100), keep=2).is_dir()


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete", "manifest", "listing nothing", "a list", "a number"])
def test_damaged_checkpoint_refused(tmp_path, damage):
    ckpt = write_checkpoint(tmp_path, 10, _write(10))
    f = ckpt / "a.bin"
    if damage == "truncate":
        f.write_bytes(f.read_bytes()[:50])
    elif damage == "flip":
        f.write_bytes(b"\x00" + f.read_bytes()[1:])
    elif damage == "delete":
        f.unlink()
    elif damage == "manifest":
        (ckpt / "manifest.json").write_text("{trunc")
    else:  # valid JSON, not a manifest: a traceback, or (listing nothing) every file passed unchecked
        (ckpt / "manifest.json").write_text({"listing nothing": '{"files": {}}', "a list": '{"files": []}', "a number": '{"files": {"a.bin": 5}}'}[damage])
    shape = r"is corrupt: manifest.json is not a checkpoint manifest \(expected \{\"files\": \{name: \{\"bytes\": N, \"sha256\": HEX\}\}\}\)"
    expected = {"truncate": "is truncated: a.bin has 50 bytes", "flip": "is corrupt: a.bin does not match its SHA-256",
                "delete": "is incomplete: a.bin is missing", "manifest": r"is incomplete or corrupt: /\S+/manifest.json is not valid JSON", "a list": shape, "a number": shape,
                "listing nothing": r"is corrupt: manifest.json is not a checkpoint manifest \(it lists no files\)"}[damage]  # fmt: skip
    with pytest.raises(CheckpointError, match=f"checkpoint .* {expected}"):
        verify(ckpt)


def test_a_checkpoint_a_killed_prune_left_aside_is_removed_not_restored(tmp_path, monkeypatch):
    """A .trash-step-N older than the newest checkpoint is one a prune was killed removing: put back,
    nothing would prune it again once the run is complete (keep_checkpoints broken for good)."""
    for step in (2, 4, 6):
        write_checkpoint(tmp_path, step, _write(step), keep=3)
    root = tmp_path / "checkpoints"
    (root / "step-0000002").rename(root / ".trash-step-0000002")  # killed between a prune's rename and its delete
    recover(tmp_path)
    assert [c.name for c in list_checkpoints(tmp_path)] == ["step-0000004", "step-0000006"] and not list(root.glob(".t*"))
    import recipes.checkpoint as checkpoint

    hashed = []  # a second verify of unchanged files reads them from the cache; a changed one is read again
    monkeypatch.setattr(checkpoint, "sha256", lambda p, real=checkpoint.sha256: hashed.append(p.name) or real(p))
    verify(root / "step-0000006")
    verify(root / "step-0000006")
    assert hashed == ["a.bin"]
    f = root / "step-0000006" / "a.bin"
    before = f.stat().st_mtime_ns
    f.write_bytes(b"\x00" * 100)  # same size; its time set apart from the verified one (within one clock tick they could match)
    os.utime(f, ns=(before + 10**9, before + 10**9))
    with pytest.raises(CheckpointError, match="a.bin does not match its SHA-256"):
        verify(root / "step-0000006")


def test_a_damaged_latest_checkpoint_names_the_older_one_that_verifies(tmp_path):
    """keep_checkpoints keeps an older checkpoint for this: the refusal of a damaged latest one (at
    resume, eval, export) says which older one verifies and what to do."""
    from recipes.checkpoint import verify_latest

    for step in (10, 20, 30):
        write_checkpoint(tmp_path, step, _write(step), keep=3)
    verify_latest(latest_checkpoint(tmp_path))
    for step in (30, 20):
        (tmp_path / "checkpoints" / f"step-{step:07d}" / "a.bin").write_bytes(b"rot")
    with pytest.raises(CheckpointError, match=r"step-0000030 is truncated: .*; step-0000010 before it verifies: move step-0000030 out of"):
        verify_latest(latest_checkpoint(tmp_path))
    (tmp_path / "checkpoints" / "step-0000010" / "a.bin").write_bytes(b"rot")
    with pytest.raises(CheckpointError, match=r"step-0000030 is truncated: a.bin has 3 bytes, expected 100$"):
        verify_latest(latest_checkpoint(tmp_path))
