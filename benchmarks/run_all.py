"""Every benchmark in one table: our figure, the peer's measured in the same run, the ratio, the goal.

    python benchmarks/run_all.py                 # the speed rows (about 4 minutes on 2 idle CPU cores)
    python benchmarks/run_all.py --with-training # plus the accuracy rows that train recipes (about an hour:
                                                 # vit_digits, gpt_char on tiny shakespeare, whisper_digits, dt_cartpole)
    python benchmarks/run_all.py --json out.json

Each benchmark runs in its own process (as a user would run it) and prints a JSON object; this
script reads it and writes one row per figure. Ratios are "how many times the peer's time ours
takes" (≤ 1.0: at least as fast) for times, and "ours / peer" for throughputs where noted. An
accuracy row's peer is its goal (or a published figure, named so), and its ratio ours / that.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

HERE = Path(__file__).resolve().parent


def run(script: str, *args: str) -> dict:
    """Run a benchmark script; return the first JSON object it prints."""
    out = subprocess.run([sys.executable, str(HERE / script), *args], capture_output=True, text=True, cwd=HERE.parent, timeout=3600)
    if out.returncode != 0:
        lines = [line for line in out.stderr.splitlines() if line.strip()]
        errors = [line for line in lines if "Error" in line or "error" in line] or lines[-1:]  # (a sys.exit message names no error)
        raise RuntimeError(f"{script} failed: {errors[-1] if errors else f'exit status {out.returncode}'}")
    text = out.stdout
    return json.JSONDecoder().raw_decode(text[text.index("{") :])[0]


class Row(NamedTuple):
    """One row of the table. met: None = decided by the ratio against the goal; note: printed under
    the row; extra: more figures for the JSON."""

    figure: str
    ours: float
    peer: str
    peer_value: float
    goal: str
    higher_better: bool = False
    met: bool | None = None
    note: str = ""
    extra: dict | None = None


def step_row(figure: str, ours_ms: float, peer: str, peer_ms: float, round_ratios: list[float]) -> Row:
    """A training-step row (ms per step, ≤ 1.0 the goal) with steps/s and each round's ratio
    (benchmarks/timing.py): when the median ratio misses the goal, the note says whether some round
    met it (parity within the machine's noise) or none did."""
    lo, hi = min(round_ratios), max(round_ratios)
    note = f"{1e3 / ours_ms:.2f} vs {1e3 / peer_ms:.2f} steps/s; each round's ratio {lo:.3f}" + (f" to {hi:.3f}" if hi > lo else "")
    if ours_ms > peer_ms:
        note += ": parity within the run's noise (a round met the goal)" if lo <= 1.0 else ": slower in every round"
    extra = {"ours_steps_per_s": 1e3 / ours_ms, "peer_steps_per_s": 1e3 / peer_ms, "round_ratios": round_ratios}
    return Row(figure, ours_ms, peer, peer_ms, "≤ 1.0", note=note, extra=extra)


def rows_gpt_step(r):
    return [step_row("GPT training step (nanoGPT CPU size), ms", r["ours_ms_per_step"], "HF GPT2LMHeadModel", r["hf_gpt2_ms_per_step"],
                     r["round_ratios"])]  # fmt: skip


def rows_vit_step(r):
    return [step_row("ViT training step (vit_digits size), ms", r["ours_ms"], "timm VisionTransformer", r["timm_ms"], r["round_ratios"])]


def rows_mel(r):
    ms = r["ms_per_chunk"]
    return [("log-mel per 30 s chunk, batch 8, ms", ms["ours (batched)"], "openai-whisper", ms["openai-whisper (per chunk)"], "≤ 1.0"),
            ("log-mel per 30 s chunk, batch 8, ms", ms["ours (batched)"], "HF WhisperFeatureExtractor (torch)", ms["hf WhisperFeatureExtractor (torch)"], "≤ 1.0")
            ] + ([(f"log-mel of a {r['long_recording']['minutes']:g} min recording, peak MB", r["long_recording"]["ours"]["peak_mb"], "openai-whisper",
                   r["long_recording"]["openai-whisper"]["peak_mb"], "≤ 1.0")] if r.get("long_recording") else [])  # fmt: skip


def rows_bpe(r):
    out = []
    for row in r["rows"]:
        if row["goal"].startswith("—"):  # (a row without a goal: what a change saves, shown by bpe_speed.py itself)
            continue
        for peer in ("tiktoken", "hf_tokenizers"):
            if peer in row:
                throughput = "MB/s" in row["figure"]
                ours, theirs = row["ours"], row[peer]
                out.append((row["figure"], ours, peer, theirs, "≥ 1.0 (throughput)" if throughput else "≤ 1.0", throughput))
    return out


def rows_dt_step(r):
    s = r["step_vs_hf"]
    return [step_row("Decision Transformer training step, ms", s["ours_ms_per_step"], "HF DecisionTransformerModel", s["hf_ms_per_step"],
                     s["round_ratios"])]  # fmt: skip


def rows_dt_control(r):
    rows = rows_dt_step(r)
    rows.append(("dt_cartpole DT return at 500 (20 episodes)", r["dt_return"][0], "behaviour cloning, same data", r["bc_return"], "DT ≥ 475, DT − BC ≥ 100", True,
                 r["met"]))  # fmt: skip  # (its goal is no ratio: dt_control.py decides it)
    return rows


def rows_whisper_step(r):
    return [step_row("Whisper-style training step (whisper_digits size), ms", r["ours_ms"], "HF WhisperForConditionalGeneration", r["hf_ms"],
                     r["round_ratios"])]  # fmt: skip


def rows_whisper_decode(r):
    g, f = r["greedy"], r["fallback"]
    return [(f"Whisper greedy decoding ({g['windows']} windows x {g['tokens']} tokens, tiny size), s", g["ours_s"], "openai-whisper decode",
             g["openai_whisper_s"], "≤ 1.0"),
            (f"Whisper beam search (beam {r['beam_search']['beam_size']}, 1 window x {r['beam_search']['tokens']} tokens, tiny size), s",
             r["beam_search"]["ours_s"], f"openai-whisper decode, beam_size={r['beam_search']['beam_size']}", r["beam_search"]["openai_whisper_s"],
             "≤ 1.0"),
            Row(f"Whisper transcribe fallback up to temperature {f['temperature']['ours']} (1 window, {f['sample_len']} tokens), s", f["ours_s"],
                "openai-whisper transcribe, best_of=5", f["openai_whisper_s"], "≤ 1.0",
                note="" if f.get("same_work", True) else f"not the same work: the two ended at other temperatures ({f['temperature']})"),
            ("sampling draw (5 rows x 51,865 tokens), ms", r["sampling_draw"]["ours_ms"], "torch.multinomial",
             r["sampling_draw"]["torch_multinomial_ms"], "≤ 1.0"),
            (f"word timestamps, 1 window x {r['word_alignment']['tokens']} tokens, s", r["word_alignment"]["ours_s"],
             "openai-whisper find_alignment", r["word_alignment"]["openai_whisper_s"], "≤ 1.0")]  # fmt: skip


def rows_loader(r):
    return [(f"data pipeline {row['recipe']}: loader tokens/s", row["loader_tokens_per_s"], "its training step consumes",
             row["model_tokens_per_s"], "≥ 1.0 (throughput)", True) for row in r["rows"]]  # fmt: skip


SPEED = [("gpt_step.py", (), rows_gpt_step), ("vit_step.py", (), rows_vit_step), ("whisper_step.py", (), rows_whisper_step),
         ("dt_control.py", ("--step-only",), rows_dt_step), ("mel_speed.py", (), rows_mel), ("bpe_speed.py", (), rows_bpe),
         ("whisper_decode.py", (), rows_whisper_decode), ("loader_speed.py", (), rows_loader)]  # fmt: skip
def rows_vit_digits(r):
    return [("vit_digits test accuracy (recipe defaults)", r["test_accuracy"], "goal", 0.985, "≥ 0.985", True, r["test_accuracy"] >= 0.985),
            ("vit_digits training time, s", r["train_seconds"], "goal", 60.0, "≤ 60 s", False, r["train_seconds"] <= 60)]  # fmt: skip


def rows_gpt_char(r):
    return [("gpt_char tiny shakespeare val loss, nats/char", r["val_loss"], "nanoGPT (published, its CPU config)", 1.88, "≤ 1.88", False, r["met"])]  # fmt: skip


def rows_whisper_digits(r):
    return [("whisper_digits WER, unseen voices", r["test_wer"], "goal", 0.05, "≤ 0.05", False, r["test_wer"] <= 0.05),
            ("whisper_digits training + eval time, s", r["train_and_eval_seconds"], "goal", 900.0, "≤ 900 s", False, r["train_and_eval_seconds"] <= 900)]  # fmt: skip


TEXT_SCRIPTS = ("gpt_step.py", "bpe_speed.py", "gpt_char_shakespeare.py")  # (those that read --data)
TRAINING = [("vit_digits.py", (), rows_vit_digits), ("gpt_char_shakespeare.py", (), rows_gpt_char),
            ("whisper_digits.py", (), rows_whisper_digits), ("dt_control.py", ("dt_cartpole",), rows_dt_control)]  # fmt: skip


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--with-training", action="store_true", help="also run the benchmarks that train recipes")
    ap.add_argument("--json", default="", help="also write the table here")
    ap.add_argument("--data", default="", help="tinyshakespeare.txt for the text rows: GPT step, BPE, gpt_char val loss (default: "
                    "../shared/data/ beside the repository when present; else the step and BPE rows read the embedded corpus, "
                    "which the table names, and the gpt_char row, which needs the file, fails)")  # fmt: skip
    args = ap.parse_args()
    table = []
    if args.data and not Path(args.data).is_file():
        raise SystemExit(f"run_all: --data {args.data}: no such file")
    data = str(Path(args.data).resolve()) if args.data else ""  # (the scripts run from the repository's root)
    # (with training, dt_control's full run gives the DT step row too: its --step-only run is left out)
    speed = [row for row in SPEED if not (args.with_training and row[0] == "dt_control.py")]
    chosen = [(script, (*extra, "--data", data) if script in TEXT_SCRIPTS and data else extra, adapt)
              for script, extra, adapt in speed + (TRAINING if args.with_training else [])]  # fmt: skip
    for script, extra, adapt in chosen:
        t0 = time.perf_counter()
        try:
            result = run(script, *extra)
        except Exception as e:  # noqa: BLE001 — one failing benchmark must not hide the others
            table.append({"benchmark": script, "error": str(e)})
            print(f"{script}: FAILED ({e})", flush=True)
            continue
        for row in (Row(*r) for r in adapt(result)):
            ratio = row.ours / row.peer_value if row.peer_value else float("nan")
            if row.met is not None:  # an accuracy row: its benchmark decided
                met = bool(row.met)
            elif row.higher_better:  # a throughput's goal is a ratio; another figure's is in its own terms
                met = ratio >= 1.0 if "throughput" in row.goal else None
            else:
                met = ratio <= 1.0
            table.append({"benchmark": script, "figure": row.figure, "ours": row.ours, "peer": row.peer, "peer_value": row.peer_value,
                          "ratio": ratio, "goal": row.goal, "met": met, "seconds": time.perf_counter() - t0, "note": row.note,
                          **({"corpus": result["corpus"]} if "corpus" in result else {}), **(row.extra or {})})  # fmt: skip
        print(f"{script}: done in {time.perf_counter() - t0:.0f} s", flush=True)
    num = lambda v: f"{v:,.0f}" if abs(v) >= 1e4 else f"{v:.3f}"  # noqa: E731 — tokens/s as integers, times with decimals
    print(f"\n{'figure':56s} {'ours':>10s}  {'peer (same run)':38s} {'peer':>10s} {'ratio':>7s}  goal")
    for r in table:
        if "error" in r:
            print(f"{r['benchmark']:56s} FAILED: {r['error']}")
            continue
        print(f"{r['figure'][:56]:56s} {num(r['ours']):>10s}  {r['peer'][:38]:38s} {num(r['peer_value']):>10s} {r['ratio']:7.3f}  {r['goal']}")
        if r["note"]:
            print(f"{'':4s}{r['note']}")
        if "corpus" in r:
            embedded = r["corpus"] == "embedded"
            print(f"{'':4s}text: " + ("the embedded corpus (--data PATH/tinyshakespeare.txt for the recorded figures)" if embedded else r["corpus"]))
    if args.json:
        Path(args.json).write_text(json.dumps(table, indent=2))
    return table


if __name__ == "__main__":
    main()
