"""Every benchmark in one table: our figure, the peer's measured in the same run, the ratio, the goal.

    python benchmarks/run_all.py                 # the speed rows (about 4 minutes on 2 idle CPU cores)
    python benchmarks/run_all.py --with-training # plus the accuracy rows that train recipes (about an hour:
                                                 # vit_digits, gpt_char on tiny shakespeare, whisper_digits, dt_cartpole)
    python benchmarks/run_all.py gpt_step vit_step   # only these (--list names every benchmark)
    python benchmarks/run_all.py --quick         # small sizes: does each one run? (its figures mean little)
    python benchmarks/run_all.py --json out.json # the table as JSON too, written again as each benchmark ends

Each benchmark runs in its own process (as a user would run it) and prints a JSON object; this
script reads it and writes one row per figure. Ratios are "how many times the peer's time ours
takes" (≤ 1.0: at least as fast) for times, and "ours / peer" for throughputs where noted. An
accuracy row's peer is its goal (or a published figure, named so), and its ratio ours / that.
The exit status is 1 when a benchmark failed (its row says why), 130 when interrupted (the table
of those that ended is printed and written all the same), else 0, whether or not each goal was met.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from tokenizers_mm.base import write_json_atomic  # noqa: E402

TIMEOUT_S = 3600


def run(script: str, *args: str) -> dict:
    """Run a benchmark script; return the first JSON object it prints. A failure is a RuntimeError
    that says how it ended (exit status or signal) and its last line of stderr (an exception's line,
    when it printed a traceback)."""
    try:
        out = subprocess.run([sys.executable, str(HERE / script), *args], capture_output=True, text=True, cwd=HERE.parent,
                             timeout=TIMEOUT_S)  # fmt: skip
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"{script} ran past {TIMEOUT_S} s and was stopped") from None
    if out.returncode != 0:
        how = f"killed by signal {-out.returncode}" if out.returncode < 0 else f"exit status {out.returncode}"
        lines = [line.strip() for line in out.stderr.splitlines() if line.strip()]
        if "Traceback (most recent call last):" in out.stderr:  # (its exception's line, not a warning's or a progress bar's after it)
            lines = [line for line in lines if re.match(r"[\w.]+(Error|Exception|Exit|Interrupt)\b", line)] or lines
        raise RuntimeError(f"{script} failed ({how}): {lines[-1]}" if lines else f"{script} failed ({how}), saying nothing on stderr")
    text = out.stdout
    try:
        return json.JSONDecoder().raw_decode(text[text.index("{") :])[0]
    except ValueError:
        last = f"its last line: {text.strip().splitlines()[-1]!r}" if text.strip() else "nothing"
        raise RuntimeError(f"{script} printed no JSON object on stdout ({last})") from None


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


def rows_vit_digits(r):
    return [("vit_digits test accuracy (recipe defaults)", r["test_accuracy"], "goal", 0.985, "≥ 0.985", True, r["test_accuracy"] >= 0.985),
            ("vit_digits training time, s", r["train_seconds"], "goal", 60.0, "≤ 60 s", False, r["train_seconds"] <= 60)]  # fmt: skip


def rows_gpt_char(r):
    return [("gpt_char tiny shakespeare val loss, nats/char", r["val_loss"], "nanoGPT (published, its CPU config)", 1.88, "≤ 1.88", False, r["met"])]  # fmt: skip


def rows_whisper_digits(r):
    return [("whisper_digits WER, unseen voices", r["test_wer"], "goal", 0.05, "≤ 0.05", False, r["test_wer"] <= 0.05),
            ("whisper_digits training + eval time, s", r["train_and_eval_seconds"], "goal", 900.0, "≤ 900 s", False, r["train_and_eval_seconds"] <= 900)]  # fmt: skip


class Bench(NamedTuple):
    """One benchmark: its name (on the command line), script, arguments, the rows it gives, and the
    arguments of `--quick` (None: no small form)."""

    name: str
    script: str
    args: tuple
    rows: Callable[[dict], list]
    quick: tuple | None
    what: str


SPEED = [Bench("gpt_step", "gpt_step.py", (), rows_gpt_step, ("--steps", "41", "--rounds", "1", "--data", ""),
               "GPT training step vs HF GPT2LMHeadModel"),
         Bench("vit_step", "vit_step.py", (), rows_vit_step, ("--steps", "3", "--rounds", "1", "--batch", "8"),
               "ViT training step vs timm VisionTransformer"),
         Bench("whisper_step", "whisper_step.py", (), rows_whisper_step,
               ("--steps", "2", "--rounds", "1", "--batch", "4", "--frames", "100", "--text", "10"),
               "Whisper-style training step vs HF WhisperForConditionalGeneration"),
         Bench("dt_step", "dt_control.py", ("--step-only",), rows_dt_step, ("--step-only", "--steps", "5", "--rounds", "1"),
               "Decision Transformer training step vs HF DecisionTransformerModel"),
         Bench("mel_speed", "mel_speed.py", (), rows_mel, ("--repeats", "1", "--long-minutes", "0.5"),
               "batched log-mel vs openai-whisper and HF WhisperFeatureExtractor; a long recording's peak memory"),
         Bench("bpe_speed", "bpe_speed.py", (), rows_bpe, ("--repeats", "1"), "byte-level BPE encoding and training vs tiktoken, HF tokenizers"),
         Bench("whisper_decode", "whisper_decode.py", (), rows_whisper_decode,
               ("--width", "32", "--heads", "2", "--layers", "1", "--text", "24", "--windows", "2", "--tokens", "4", "--sample-len", "6",
                "--repeats", "1"), "Whisper decoding (greedy, beam, fallback, word timestamps) vs openai-whisper"),
         Bench("loader_speed", "loader_speed.py", (), rows_loader, ("--seconds", "0.3", "--rounds", "2", "--utterances", "8"),
               "tokens/s each recipe's data pipeline delivers vs what its training step consumes")]  # fmt: skip
TRAINING = [Bench("vit_digits", "vit_digits.py", (), rows_vit_digits, ("max_steps=3", "warmup_steps=1"),
                  "vit_digits test accuracy and training time"),
            Bench("gpt_char_shakespeare", "gpt_char_shakespeare.py", (), rows_gpt_char, None,
                  "gpt_char validation loss on tiny shakespeare vs nanoGPT's published 1.88"),
            Bench("whisper_digits", "whisper_digits.py", (), rows_whisper_digits, None, "whisper_digits WER on unseen voices and time"),
            Bench("dt_cartpole", "dt_control.py", ("dt_cartpole",), rows_dt_control, None,
                  "dt_cartpole return at 500 vs behaviour cloning (and its training step vs HF)")]  # fmt: skip
TEXT_SCRIPTS = ("gpt_step.py", "bpe_speed.py", "gpt_char_shakespeare.py")  # (those that read --data)


def choose(names: list[str], with_training: bool, quick: bool, error: Callable[[str], None]) -> list[Bench]:
    """The benchmarks to run: those named, else the speed ones (and with training the training ones;
    dt_cartpole's full run then gives the DT step row, so dt_step is left out). With quick, those
    without a small form are left out, and said so."""
    known = {b.name: b for b in SPEED + TRAINING}
    if unknown := [n for n in names if n.removesuffix(".py") not in known]:
        error(f"no benchmark named {', '.join(unknown)}; expected one of: {', '.join(known)} (--list says what each measures)")
    if names:
        chosen = list({n.removesuffix(".py"): known[n.removesuffix(".py")] for n in names}.values())
        chosen = [b for b in chosen if not (b.name == "dt_step" and known["dt_cartpole"] in chosen and not quick)]  # (its row: in both)
    else:
        chosen = [b for b in SPEED if not (with_training and b.name == "dt_step")] + (TRAINING if with_training else [])
    if quick:
        if left := [b.name for b in chosen if b.quick is None]:
            print(f"run_all: --quick leaves out {', '.join(left)} (no small form: they train a recipe whole)", file=sys.stderr)
        if not (chosen := [b for b in chosen if b.quick is not None]):
            error("--quick: none of the benchmarks chosen has a small form")
    return chosen


def table_rows(bench: Bench, result: dict, seconds: float) -> list[dict]:
    """The table's rows of one benchmark's JSON (a KeyError when it lacks a figure its rows read)."""
    out = []
    for row in (Row(*r) for r in bench.rows(result)):
        ratio = row.ours / row.peer_value if row.peer_value and row.ours is not None else None
        if row.met is not None:  # an accuracy row: its benchmark decided
            met = bool(row.met)
        elif ratio is None:
            met = None
        elif row.higher_better:  # a throughput's goal is a ratio; another figure's is in its own terms
            met = ratio >= 1.0 if "throughput" in row.goal else None
        else:
            met = ratio <= 1.0
        out.append({"benchmark": bench.name, "figure": row.figure, "ours": row.ours, "peer": row.peer, "peer_value": row.peer_value,
                    "ratio": ratio, "goal": row.goal, "met": met, "seconds": seconds, "note": row.note,
                    **({"corpus": result["corpus"]} if "corpus" in result else {}), **(row.extra or {})})  # fmt: skip
    return out


def strict(value):
    """`value` with NaN and infinities as None: strict JSON, which every parser reads (a benchmark's
    diverged loss, a ratio to a peer's 0)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: strict(v) for k, v in value.items()}
    return [strict(v) for v in value] if isinstance(value, (list, tuple)) else value


def print_table(table: list[dict]) -> None:
    num = lambda v: "—" if v is None else f"{v:,.0f}" if abs(v) >= 1e4 else f"{v:.3f}"  # noqa: E731 — tokens/s as integers, times with decimals
    print(f"\n{'figure':56s} {'ours':>10s}  {'peer (same run)':38s} {'peer':>10s} {'ratio':>7s}  {'met':4s} goal")
    for r in table:
        if "error" in r:
            print(f"{r['benchmark']:56s} FAILED: {r['error']}")
            continue
        ratio = f"{r['ratio']:7.3f}" if r["ratio"] is not None else f"{'—':>7s}"
        met = {True: "yes", False: "NO", None: "—"}[r["met"]]
        print(f"{r['figure'][:56]:56s} {num(r['ours']):>10s}  {r['peer'][:38]:38s} {num(r['peer_value']):>10s} {ratio}  {met:4s} {r['goal']}")
        if r["note"]:
            print(f"{'':4s}{r['note']}")
        if "corpus" in r:
            embedded = r["corpus"] == "embedded"
            print(f"{'':4s}text: " + ("the embedded corpus (--data PATH/tinyshakespeare.txt for the recorded figures)" if embedded else r["corpus"]))
    rows = [r for r in table if "error" not in r]
    failed = len({r["benchmark"] for r in table if "error" in r})
    print(f"\ngoals met: {sum(r['met'] is True for r in rows)} of {sum(r['met'] is not None for r in rows)} rows with a goal"
          + (f"; {failed} benchmark(s) FAILED" if failed else ""))  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*", metavar="NAME", help="only these benchmarks (--list names them); default: every speed benchmark, "
                    "and with --with-training the training ones too")  # fmt: skip
    ap.add_argument("--list", action="store_true", help="name every benchmark and what it measures, then stop")
    ap.add_argument("--with-training", action="store_true", help="also run the benchmarks that train recipes")
    ap.add_argument("--quick", action="store_true", help="small sizes, to see that each benchmark runs (its figures mean little; "
                    "the training ones but vit_digits are left out)")  # fmt: skip
    ap.add_argument("--json", default="", help="also write the table here (again as each benchmark ends)")
    ap.add_argument("--data", default="", help="tinyshakespeare.txt for the text rows: GPT step, BPE, gpt_char val loss (default: "
                    "../shared/data/ beside the repository when present; else the step and BPE rows read the embedded corpus, "
                    "which the table names, and the gpt_char row, which needs the file, fails)")  # fmt: skip
    args = ap.parse_args(argv)
    if args.list:
        for b in SPEED + TRAINING:
            print(f"{b.name:22s} {'(trains a recipe) ' if b in TRAINING else ''}{b.what}")
        return 0
    chosen = choose(args.names, args.with_training, args.quick, ap.error)
    if args.data and not Path(args.data).is_file():
        ap.error(f"--data {args.data}: no such file")
    data = str(Path(args.data).resolve()) if args.data else ""  # (the scripts run from the repository's root)
    out = Path(args.json) if args.json else None
    if out is not None:
        try:  # (now, not after an hour of benchmarks; a table already there is kept until this run's first is written)
            out.parent.mkdir(parents=True, exist_ok=True)
            tempfile.TemporaryFile(dir=out.parent).close()
            if out.is_dir():
                raise IsADirectoryError(21, "a folder")
        except OSError as e:
            ap.error(f"--json {args.json}: cannot write there ({e.strerror or e})")
    table, status = [], 0
    try:
        for i, bench in enumerate(chosen, 1):
            extra = bench.quick if args.quick else bench.args
            extra = (*extra, "--data", data) if bench.script in TEXT_SCRIPTS and data else extra
            print(f"[{i}/{len(chosen)}] {bench.name}: running {bench.script} {' '.join(extra)}".rstrip(), flush=True)
            t0 = time.perf_counter()
            try:
                result = run(bench.script, *extra)
                table += table_rows(bench, result, time.perf_counter() - t0)
            except Exception as e:  # noqa: BLE001 — one failing benchmark must not hide the others
                error = f"{bench.script}'s JSON has no {e} (the figure its rows read)" if isinstance(e, KeyError) else str(e)
                table.append({"benchmark": bench.name, "error": error})
                print(f"{bench.name}: FAILED ({error})", flush=True)
                status = 1
            else:
                print(f"{bench.name}: done in {time.perf_counter() - t0:.0f} s", flush=True)
            if out is not None:
                write_json_atomic(out, strict(table))
    except KeyboardInterrupt:
        print("\ninterrupted: the table of the benchmarks that ended", flush=True)
        status = 130
    print_table(table)
    if out is not None:
        write_json_atomic(out, strict(table))
    return status


if __name__ == "__main__":
    sys.exit(main())
