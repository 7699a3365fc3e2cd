"""Every speed benchmark of `benchmarks/run_all.py` runs, small, and feeds its rows of the table:
the benchmarks run outside CI, and one broke unnoticed (the training loop read `model.config`, which
gpt_step's Hugging Face peer, trained in the same loop, does not have). The figures of so few steps
mean nothing; that each row has ours and the peer's does."""

import json
import sys

import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
import run_all  # noqa: E402

pytest.importorskip("transformers")

@pytest.mark.parametrize("bench", run_all.SPEED, ids=lambda b: b.name)
def test_speed_benchmark_runs_and_gives_its_rows(bench):
    """Each speed benchmark in its `--quick` form (the one `run_all.py --quick` runs)."""
    rows = bench.rows(run_all.run(bench.script, *bench.quick))
    assert rows and all(r[1] > 0 and r[3] > 0 for r in rows), rows


def test_run_all_survives_failing_benchmarks_and_says_so(tmp_path, monkeypatch, capsys):
    """One table whatever fails: a crash (its exception's line, not a warning's), a script that
    prints no JSON, one whose JSON lacks a figure; exit status 1; the JSON written as strict JSON
    (no NaN for a peer's 0) to a folder made for it; a misspelled name is one line naming them all."""
    scripts = {"crash.py": "import warnings, sys\nwarnings.warn('an error-free warning')\nraise ValueError('bad shape (4,) vs (6,)')\n",
               "quiet.py": "print('no json here')\n",
               "partial.py": "print('{\"ours_ms\": 1.0}')\n",
               "fine.py": "print('{\"rows\": [{\"recipe\": \"x\", \"loader_tokens_per_s\": 5.0, \"model_tokens_per_s\": 0.0}]}')\n"}  # fmt: skip
    for name, text in scripts.items():
        (tmp_path / name).write_text(text)
    monkeypatch.setattr(run_all, "HERE", tmp_path)
    monkeypatch.setattr(run_all, "SPEED", [run_all.Bench(n.removesuffix(".py"), n, (), rows, (), n)
                                              for n, rows in zip(scripts, [run_all.rows_vit_step] * 3 + [run_all.rows_loader])])
    out = tmp_path / "new" / "table.json"
    with pytest.raises(SystemExit):  # a folder where the table goes: refused before any benchmark runs
        run_all.main(["--json", str(tmp_path)])
    assert "cannot write there" in capsys.readouterr().err
    assert run_all.main(["--json", str(out)]) == 1
    printed = capsys.readouterr().out
    assert "crash.py failed (exit status 1): ValueError: bad shape (4,) vs (6,)" in printed
    assert "quiet.py printed no JSON object on stdout" in printed
    assert "partial.py's JSON has no 'timm_ms'" in printed
    table = json.loads(out.read_text(), parse_constant=lambda c: pytest.fail(f"{c} in strict JSON"))
    assert [r["benchmark"] for r in table] == ["crash", "quiet", "partial", "fine"]
    assert table[-1]["ratio"] is None and table[-1]["met"] is None and "fine: done in" in printed
    assert "goals met: 0 of 0 rows with a goal; 3 benchmark(s) FAILED" in printed
    with pytest.raises(SystemExit) as e:
        run_all.main(["fine", "fien"])
    assert e.value.code == 2 and "no benchmark named fien; expected one of: crash, quiet, partial, fine" in capsys.readouterr().err


def test_whisper_export_benchmark_runs():
    """benchmarks/whisper_export.py (not a speed row: export time and parity at a real size) runs, small."""
    pytest.importorskip("whisper")
    import whisper_export

    result = whisper_export.main(["--width", "32", "--heads", "2", "--layers", "1", "--text", "24"])
    assert all(result[k]["max_difference"] is not None and result[k]["max_difference"] <= 1e-4 for k in ("hf_folder", "openai_pt"))


def test_a_training_benchmark_runs_and_gives_its_rows():
    """`run_all.py --with-training`'s accuracy benchmarks feed rows as the speed ones do: vit_digits,
    a few steps (the others train the same way for longer; whisper_digits' synthesis, dt_cartpole's
    data and tiny shakespeare's 2,000 steps make theirs too slow for the suite)."""
    bench = {b.name: b for b in run_all.TRAINING}["vit_digits"]
    rows = bench.rows(run_all.run(bench.script, *bench.quick))
    assert rows and all(r[1] > 0 and r[3] > 0 and isinstance(r[6], bool) for r in rows), rows


def test_a_step_row_says_whether_a_missed_goal_is_noise():
    """A training-step row carries steps/s and each round's ratio; a median ratio above 1.0 is
    called parity within the noise when some round met the goal, and slower when none did."""
    met = run_all.step_row("step, ms", 10.0, "peer", 12.5, [0.78, 0.8, 0.82])
    assert met.extra["ours_steps_per_s"] == 100.0 and met.extra["peer_steps_per_s"] == 80.0
    assert met.note == "100.00 vs 80.00 steps/s; each round's ratio 0.780 to 0.820"
    noise = run_all.step_row("step, ms", 10.1, "peer", 10.0, [0.99, 1.01, 1.02])
    assert noise.note.endswith("parity within the run's noise (a round met the goal)")
    slower = run_all.step_row("step, ms", 11.0, "peer", 10.0, [1.05, 1.1, 1.2])
    assert slower.note.endswith("slower in every round")


def test_run_all_chooses_benchmarks_by_name():
    """Names pick benchmarks (in the order given, once); dt_cartpole's full run gives the DT step row too,
    so dt_step beside it is left out; --with-training adds the training ones to the speed ones."""
    names = lambda *a: [b.name for b in run_all.choose(*a, error=pytest.fail)]  # noqa: E731
    assert names(["vit_step", "gpt_step.py", "vit_step"], False, False) == ["vit_step", "gpt_step"]
    assert names(["dt_step", "dt_cartpole"], False, False) == ["dt_cartpole"]
    assert names([], True, False) == [b.name for b in run_all.SPEED if b.name != "dt_step"] + [b.name for b in run_all.TRAINING]
