"""Determinism on the CPU: the same seed and config, trained twice in one process, give bitwise
identical metrics (less wall-clock fields), results and checkpoints (every tensor: weights,
optimizer state, RNG state). Twice in one process on purpose: state leaking from one run into
the next (an RNG drawn before seeding, a cache filled by the first run) shows up here. Across
processes and across kills and resumes the same equality is checked by tests/test_faults.py."""

import json
import sys

import pytest
import torch

from tests.conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
import faults  # noqa: E402

from recipes.runs import make_config  # noqa: E402

FAMILIES = {f.recipe: f for f in faults.families()}
STEPS = ["max_steps=30", "ckpt_every=15", "log_every=1", "cpu=true", "log_mfu=false"]


@pytest.fixture
def one_thread():
    """As the recipes' subprocesses in the suite run (OMP_NUM_THREADS=1): tiny models on a busy
    machine run many times slower with a second thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("recipe", ["gpt_char", "vit_digits", "dt_cartpole"])
def test_same_seed_and_config_twice_is_bitwise_identical(recipe, tmp_path, one_thread):
    family = FAMILIES[recipe]
    if family.needs:
        pytest.importorskip(family.needs)
    args = [*family.args, *STEPS, *faults.prepare(family, tmp_path / "data")]
    for name in ("a", "b"):
        _, module, cfg = make_config(recipe, [*args, f"run_dir={tmp_path / name}"])
        module.main(cfg)
    rows = (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()
    assert sum("loss" in json.loads(r) for r in rows) == 30  # a loss logged at every step, each compared below
    assert faults.differences(tmp_path / "a", tmp_path / "b", family) == []
