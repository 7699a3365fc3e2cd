"""Faults, in real subprocesses with real signals and real kernel limits (benchmarks/faults.py):
every recipe family is SIGKILLed inside a checkpoint write and at a random step, or stopped by a
full or read-only disk, and resumed until it finishes. After every fault each visible checkpoint
verifies against its SHA-256 manifest, a disk error is one line naming the checkpoint and the OS
error with the last good checkpoint kept, and the finished run equals an uninterrupted one bit
for bit (metrics less wall-clock fields, results, every tensor of the kept checkpoints)."""

import sys

import pytest

from tests.conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
import faults  # noqa: E402

from recipes.checkpoint import FAULT_ENV, FAULT_PHASES, write_checkpoint  # noqa: E402

FAMILIES = faults.families()


def test_every_training_recipe_family_is_covered():
    from recipes.runs import RECIPES

    covered = {f.recipe for f in FAMILIES}
    # these run the code of the recipe they map to (recipes/vit.py, whisper_digits.run, recipes/dt.py) on other data
    same_code = {"vit_mnist": "vit_digits", "vit_folder": "vit_digits", "whisper_folder": "whisper_digits", "dt_pendulum": "dt_cartpole",
                 "dt_offline": "dt_cartpole"}  # fmt: skip
    assert {same_code.get(r, r) for r in RECIPES} <= covered
    kinds = {k for f in FAMILIES for k in f.faults}
    assert kinds == {"ckpt_write", "sigkill", "disk_full", "read_only"}
    # every phase of a checkpoint write (an overwrite of the same step, rare in a run: tests/test_checkpoint.py)
    assert {f.phase for f in FAMILIES} == set(FAULT_PHASES) - {"overwrite"}


RESULTS: list = []  # what this module's runs found, for the summary printed at its end


@pytest.fixture(scope="module", autouse=True)
def summary(request):
    """Print benchmarks/faults.py's table for the faults this module injected (the bad-input
    catalogue has its own test module, tests/test_bad_inputs.py)."""
    yield
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if RESULTS and reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():  # note: teardown output is captured otherwise
            reporter.write_line("\n" + faults.table(RESULTS, [])[0])


@pytest.mark.parametrize("family", FAMILIES, ids=[f.recipe for f in FAMILIES])
def test_killed_and_resumed_run_equals_uninterrupted_run(family, tmp_path):
    if family.needs:
        pytest.importorskip(family.needs)
    result = faults.run_family(family, tmp_path)
    RESULTS.append(result)
    assert result.faults, "no fault was injected"
    for f in result.faults:
        assert f.injected, f"{f.kind} was not injected: {f.detail} {f.what}"
        assert f.ok and not f.lost, f"{f.kind}: {f.detail}: {f.what}"
    assert result.finished and not result.differences, result.differences
    assert result.lost == 0


def test_fault_spec_is_checked(tmp_path, monkeypatch):
    """A mistyped TOKENIZERS_MM_FAULT is an error, not a silently fault-free run."""
    monkeypatch.setenv(FAULT_ENV, "ckpt_write:2:halfway")
    with pytest.raises(ValueError, match="expected ckpt_write:N\\[:PHASE\\] with PHASE one of files, manifest, rename, prune"):
        write_checkpoint(tmp_path, 1, lambda d: (d / "a.bin").write_bytes(b"x"))
    assert not list((tmp_path / "checkpoints").iterdir())  # and the failed write left nothing behind


def test_a_failed_write_cleans_up_and_names_the_checkpoint(tmp_path):
    """An OS error inside the write (here a real one: a file where a directory must go) removes
    the temporary directory and raises one line naming the checkpoint, the error and the last
    good checkpoint."""
    write_checkpoint(tmp_path, 10, lambda d: (d / "a.bin").write_bytes(b"x"))

    def write(d):
        (d / "blocker").write_bytes(b"")
        (d / "blocker" / "b.bin").write_bytes(b"y")  # NotADirectoryError from the kernel

    with pytest.raises(OSError, match=r"cannot write checkpoint .*step-0000020 \(Not a directory: .*blocker/b.bin\); "
                                      r"the last good checkpoint .*step-0000010 is kept") as e:  # fmt: skip
        write_checkpoint(tmp_path, 20, write)
    assert "\n" not in str(e.value)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-0000010"]


def test_summary_counts_faults_and_flags_any_loss():
    """The table benchmarks/faults.py prints: counts per kind of fault, and `lost` (its exit status
    is 1 when lost > 0) counts a fault that broke a checkpoint and a finished run that differs."""
    ok = faults.FaultResult("gpt_char", "sigkill", "", injected=True, ok=True)
    broken = faults.FaultResult("vit_digits", "ckpt_write", "", injected=True, ok=False, lost=1, what="step-0000020 is corrupt")
    results = [faults.FamilyResult("gpt_char", [ok], finished=True), faults.FamilyResult("vit_digits", [broken], finished=True, differences=["x"])]
    text, lost, documented = faults.table(results, [{"case": "c", "as_documented": True}])
    rows = {line[:44].strip(): line[44:].split() for line in text.splitlines()[3:]}
    assert rows["SIGKILL mid-training, then resume"] == ["1", "1", "0"] and rows["SIGKILL inside a checkpoint write"] == ["1", "0", "1"]
    assert rows["finished runs equal to uninterrupted ones"] == ["2", "1", "1"] and rows["bad inputs (benchmarks/hardening.py)"] == ["1", "1", "—"]
    assert rows["total"] == ["5", "3", "2"] and lost == 2 and not documented
    assert text.startswith("faults injected: 2 across 2 recipes (gpt_char, vit_digits); bad inputs tried: 1")
