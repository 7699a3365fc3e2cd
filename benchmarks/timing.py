"""Side-by-side training-step timing, shared by the step benchmarks (vit_step, whisper_step,
dt_control --step-only): the two models take turns in rounds, who goes first alternating, so
machine noise falls on both; each round's seconds per step are kept, and the medians are reported
with steps/s and each round's ratio (ratios on both sides of 1.0 are parity within the noise)."""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn


def alternating_rounds(contenders: dict[str, tuple[nn.Module, Callable[[], Tensor]]], steps: int, rounds: int, warmup: int,
                       lr: float = 1e-3) -> dict[str, list[float]]:  # fmt: skip
    """Seconds per training step of each contender, one figure per round: `rounds` rounds of
    `warmup` untimed then `steps` timed steps, each step loss_fn() → backward → AdamW (foreach) →
    zero_grad. contenders: name → (model, loss_fn); frozen parameters stay out of the optimizer."""
    if steps < 1 or rounds < 1:
        raise ValueError(f"steps={steps}, rounds={rounds}: each must be at least 1")
    opts = {k: torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=lr, foreach=True) for k, (m, _) in contenders.items()}
    times = {k: [] for k in contenders}
    for r in range(rounds):
        for k, (model, loss_fn) in list(contenders.items())[:: 1 - 2 * (r % 2)]:  # who goes first alternates
            model.train()
            for i in range(warmup + steps):
                if i == warmup:
                    t0 = time.perf_counter()
                loss_fn().backward()
                opts[k].step()
                opts[k].zero_grad(set_to_none=True)
            times[k].append((time.perf_counter() - t0) / steps)
    return times


def summary(times: dict[str, list[float]], ours: str = "ours", peer: str = "peer") -> dict:
    """ms per step (the median of the rounds), steps/s, the ratio ours / peer of the medians, and
    the ratio of each round (the two ran side by side in it)."""
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"ours_ms": med[ours] * 1e3, "peer_ms": med[peer] * 1e3, "ours_steps_per_s": 1 / med[ours], "peer_steps_per_s": 1 / med[peer],
            "ratio": med[ours] / med[peer], "round_ratios": [a / b for a, b in zip(times[ours], times[peer])],
            "rounds_ms": {k: [t * 1e3 for t in v] for k, v in times.items()}}  # fmt: skip


SHAKESPEARE = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinyshakespeare.txt"  # ../shared/data beside the repository


def add_corpus_argument(ap) -> None:
    ap.add_argument("--data", default=None, metavar="PATH",
                    help="a text file ('' = the toolkit's embedded corpus; default: ../shared/data/tinyshakespeare.txt beside the "
                         "repository when present, else the embedded corpus)")  # fmt: skip


def corpus_path(ap, data: str | None) -> str:
    """--data as a benchmark reads it: a file, or "" for the embedded corpus. A file named on the
    command line that does not exist is an error, not a quiet fallback to another text."""
    if data is None:
        return str(SHAKESPEARE) if SHAKESPEARE.is_file() else ""
    if data and not Path(data).is_file():
        ap.error(f"--data {data}: no such file ('' reads the embedded corpus)")
    return data


def recipe_overrides(ap: argparse.ArgumentParser, fixed: dict[str, str], argv=None) -> tuple[argparse.Namespace, list[str]]:
    """A recipe benchmark's arguments: `ap`'s options plus the recipe's key=value overrides, after
    the benchmark's own keys (`fixed`, which the user's replace; `--help` lists them)."""
    from recipes.config import ConfigError, parse_overrides

    ap.add_argument("overrides", nargs="*", metavar="key=value", help="the recipe's config keys (as `mmtok train RECIPE key=value`)")
    args = ap.parse_args(argv)
    try:
        given = parse_overrides(args.overrides)
    except ConfigError as e:
        ap.error(str(e))
    return args, [f"{k}={v}" for k, v in {**fixed, **given}.items()]
