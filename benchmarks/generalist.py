"""The generalist against the single-task recipes, at equal training steps, on this machine.

    python benchmarks/generalist.py [--steps 3000] [--seed 1337] [--out DIR] [--fresh] [key=value ...]

Trains, for the same number of optimizer steps, each single-task recipe (vit_digits,
whisper_digits, dt_cartpole without its BC baseline) with its per-step batch equal to the
generalist's weight for that task, then the generalist (one trunk on all three, key=value
overrides go to it), and prints one table: each task's metric alone and in the generalist, the
ratio (accuracy, return) or difference (WER, points), and the goal — at least 95% of the
single-task score, WER within 2 points. Also prints the fraction of padding slots in the
generalist's mixed batches with and without packing, and each head's gradient norm in the shared
encoder / decoder of the trained generalist (what to look at when retuning `loss_weights`). Runs
go under --out (default runs/bench-generalist); a finished run is reused unless --fresh. --seed
goes to every run, so a comparison is seed-matched (use one --out per seed).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from recipes import generalist as g  # noqa: E402
from recipes.config import apply_values, parse_overrides  # noqa: E402

SINGLE = {  # task -> (recipe, its metric, the generalist's metric, higher is better)
    "digits": ("vit_digits", "val_accuracy", "digits_accuracy", True),
    "speech": ("whisper_digits", "val_wer", "speech_wer", False),
    "control": ("dt_cartpole", "val_return", "control_return", True),
}
EXTRA = {"dt_cartpole": ["baseline=false"]}


def changed_keys(run_dir: Path, args: list[str]) -> list[str]:
    """Config keys in which a finished run differs from what this benchmark would train now."""
    from dataclasses import asdict

    from recipes.runs import load_run_info

    _, module, saved = load_run_info(run_dir)
    wanted = apply_values(module.Config(), parse_overrides([*args, f"run_dir={run_dir}"]), "the benchmark")
    old, new = asdict(saved), asdict(wanted)
    return [k for k in new if old.get(k) != new[k]]


def train(recipe: str, run_dir: Path, args: list[str], fresh: bool) -> tuple[dict, float]:
    """Train a recipe in a subprocess (or reuse a finished run): its results.json and seconds."""
    results = run_dir / "results.json"
    if results.exists() and not fresh:
        changed = changed_keys(run_dir, args)
        if not changed:
            print(f"{recipe}: reusing {run_dir}")
            return json.loads(results.read_text()), float("nan")
        print(f"{recipe}: {run_dir} was trained with other {', '.join(changed)}: retraining")
    if run_dir.exists():
        import shutil

        shutil.rmtree(run_dir)
    print(f"{recipe}: training, run dir {run_dir}", flush=True)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "recipes.cli", "train", recipe, f"run_dir={run_dir}", *args], cwd=ROOT, check=True)
    return json.loads(results.read_text()), time.perf_counter() - t0


def mixed_batches(cfg: g.Config, batches: int) -> list[list[dict]]:
    """`batches` seeded draws of cfg.batch_size training examples from the mixed task set (the
    images' random augmentation seeded too, so the figures below repeat exactly)."""
    import torch

    tasks, weights = g.build_tasks(cfg)
    mixed = g.MixedSet([t.train_set for t in tasks], weights)
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    return [[mixed[i] for i in torch.randperm(len(mixed), generator=gen)[: cfg.batch_size].tolist()] for _ in range(batches)]


def padding(batches: list[list[dict]], row_tokens: int) -> dict:
    """Mean padding fraction of mixed training batches, packed and one example per row."""
    reports = [g.padding_report(examples, row_tokens) for examples in batches]
    return {k: sum(r[k] for r in reports) / len(reports) for k in reports[0]}


def gradient_norms(batches: list[list[dict]], row_tokens: int, run_dir: Path) -> dict:
    """The trained generalist's per-head gradient norms in each shared stack, the mean over
    `batches` (one batch's figure is noisy: the digits' moves by 2-3x between batches)."""
    from recipes.runs import load_trained

    model = load_trained(run_dir)[0]
    each = [g.task_gradient_norms(model, examples, row_tokens) for examples in batches]
    return {h: {s: sum(n[h][s] for n in each) / len(each) for s in stacks} for h, stacks in each[0].items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--out", default=str(ROOT / "runs" / "bench-generalist"))
    ap.add_argument("--seed", type=int, default=1337, help="the seed of every run, single-task and generalist (the recipes' default)")
    ap.add_argument("--fresh", action="store_true", help="retrain runs that already finished")
    ap.add_argument("overrides", nargs="*", help="key=value for the generalist (tasks, weights, dim, ...)")
    a = ap.parse_args()
    out = Path(a.out)
    given = {"max_steps": str(a.steps), "seed": str(a.seed), **parse_overrides(a.overrides)}  # (the user's keys replace ours)
    cfg = apply_values(g.Config(), given, "the command line")
    names, weights, _ = g.task_list(cfg)
    cfg.batch_size = g.batch_size(cfg, weights)  # by default a step holds each task's single-task batch
    given["batch_size"] = str(cfg.batch_size)  # as the finished run's run.json records it (reuse compares configs)
    over = [f"{k}={v}" for k, v in given.items()]

    batches = mixed_batches(cfg, 10)
    pad = padding(batches, cfg.row_tokens)
    print(f"padding in mixed batches of {cfg.batch_size} examples: packed into rows of ~{cfg.row_tokens} slots "
          f"{pad['padding_packed']:.1%} ({pad['rows_packed']:.1f} rows), one example per row {pad['padding_unpacked']:.1%} "
          f"({pad['rows_unpacked']:.0f} rows)", flush=True)  # fmt: skip

    rows, seconds = [], {}
    for name, w in zip(names, weights):
        if name not in SINGLE:  # (the text task: no single-task recipe of its own here; its figure is printed below)
            continue
        recipe, key, _, _ = SINGLE[name]
        res, seconds[recipe] = train(recipe, out / recipe, [f"max_steps={a.steps}", f"batch_size={int(w)}", f"seed={a.seed}", *EXTRA.get(recipe, [])], a.fresh)
        rows.append((name, res[key]))
    gen, seconds["generalist"] = train("generalist", out / "generalist", over, a.fresh)

    print(f"\nat {a.steps} optimizer steps each; per step the generalist sees each task's single-task batch "
          f"({', '.join(f'{n} {int(w)}' for n, w in zip(names, weights))})")
    print(f"{'task':<9} {'metric':<16} {'single-task':>12} {'generalist':>11} {'ratio/diff':>11}  {'goal':<22} ok")
    table, ok_all = [], True
    for name, single in rows:
        recipe, _, gkey, higher = SINGLE[name]
        both = gen[gkey]
        if higher:
            ratio = both / single if single else float("nan")
            ok, shown, goal = ratio >= 0.95, f"{ratio:.3f}", ">= 0.95 of single-task"
        else:
            diff = (both - single) * 100
            ok, shown, goal = diff <= 2.0, f"{diff:+.2f} pt", "WER within 2 points"
        ok_all &= ok
        fmt = (lambda v: f"{v * 100:.2f}%") if gkey != "control_return" else (lambda v: f"{v:.1f}")
        print(f"{name:<9} {gkey:<16} {fmt(single):>12} {fmt(both):>11} {shown:>11}  {goal:<22} {'yes' if ok else 'NO'}")
        table.append({"task": name, "recipe": recipe, "metric": gkey, "single": single, "generalist": both, "ok": ok})
    for name in (n for n in names if n not in SINGLE):
        print(f"{name:<9} {name + '_loss':<16} {'—':>12} {gen.get(name + '_loss', float('nan')):>11.4f} {'—':>11}  no single-task peer")
    print("training seconds: " + (", ".join(f"{k} {v:.0f}" for k, v in seconds.items() if v == v) or f"none, every run reused from {out}"))
    norms = gradient_norms(batches, cfg.row_tokens, out / "generalist")
    print(f"gradient norm of each head's weighted loss in the shared stacks (trained model, mean of {len(batches)} mixed batches): "
          + "; ".join(f"{h} " + ", ".join(f"{s} {v:.3f}" for s, v in n.items()) for h, n in norms.items()))  # fmt: skip
    summary = {"steps": a.steps, "padding": pad, "table": table, "seconds": seconds, "gradient_norms": norms, "all_ok": ok_all}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"summary: {out / 'summary.json'}")
    return 0 if ok_all else 1


if __name__ == "__main__":
    sys.exit(main())
