"""Every speed benchmark of `benchmarks/run_all.py` runs, small, and feeds its rows of the table:
the benchmarks run outside CI, and one broke unnoticed (the training loop read `model.config`, which
gpt_step's Hugging Face peer, trained in the same loop, does not have). The figures of so few steps
mean nothing; that each row has ours and the peer's does."""

import sys

import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
import run_all  # noqa: E402

pytest.importorskip("transformers")

QUICK = {
    "gpt_step.py": (("--steps", "41", "--rounds", "1", "--data", ""), run_all.rows_gpt_step),
    "vit_step.py": (("--steps", "3", "--rounds", "1", "--batch", "8"), run_all.rows_vit_step),
    "whisper_step.py": (("--steps", "2", "--rounds", "1", "--batch", "4", "--frames", "100", "--text", "10"), run_all.rows_whisper_step),
    "dt_control.py": (("--step-only", "--steps", "5", "--rounds", "1"), run_all.rows_dt_step),
    "mel_speed.py": (("--repeats", "1", "--long-minutes", "0.5"), run_all.rows_mel),
    "bpe_speed.py": (("--repeats", "1"), run_all.rows_bpe),
    "whisper_decode.py": (("--width", "32", "--heads", "2", "--layers", "1", "--text", "24", "--windows", "2", "--tokens", "4",
                           "--sample-len", "6", "--repeats", "1"), run_all.rows_whisper_decode),  # fmt: skip
    "loader_speed.py": (("--seconds", "0.3", "--rounds", "2", "--utterances", "8"), run_all.rows_loader),
}


def test_quick_covers_every_speed_benchmark():
    assert {script for script, *_ in run_all.SPEED} == set(QUICK)


@pytest.mark.parametrize("script", list(QUICK))
def test_speed_benchmark_runs_and_gives_its_rows(script):
    args, rows_of = QUICK[script]
    rows = rows_of(run_all.run(script, *args))
    assert rows and all(r[1] > 0 and r[3] > 0 for r in rows), rows


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
    rows_of = {s: adapt for s, _, adapt in run_all.TRAINING}["vit_digits.py"]
    rows = rows_of(run_all.run("vit_digits.py", "max_steps=3", "warmup_steps=1"))
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
