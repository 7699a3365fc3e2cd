"""Data pipeline against the model: tokens per second the recipe's dataset + collate + DataLoader
deliver, and tokens per second its training step consumes, for each recipe family, in one run.

    python benchmarks/loader_speed.py [--seconds 4] [--rounds 4] [--recipes gpt_char,vit_digits,whisper_digits,dt_cartpole] [--utterances 64]

Each recipe's own objects, at its default config: the dataset and collate function its `main`
hands to `recipes.train.train`, the loader `train` builds (`make_loader`: the StepSampler, the
recipe's num_workers, 0 by default), and the model its `build_model` makes with the optimizer
`train` builds. Tokens are counted as the training loop counts them for `tokens_per_s` (real,
unpadded tokens of every modality). The loader is timed alone (batches drawn, nothing trained);
the step is timed on batches drawn beforehand (forward + backward + clipping + AdamW, fp32). The
two take turns in `--rounds` rounds (who goes first alternating, `--seconds` split over the
rounds), so a busy moment of the machine falls on both; the medians of the rounds give the ratio,
and each round's own ratio is listed. The ratio loader / model must be >= 1.0: the loader is never
the bottleneck. With num_workers=0 the two share the process, so a ratio r means loading takes 1/r
of the step's time.

whisper_digits reads a 64-utterance corpus synthesized into a temporary folder (the recipe's
first 64 utterances, --utterances: same texts, voices and lengths; a few seconds with eSpeak NG), so the
benchmark neither needs nor touches the recipe's 4,000-utterance cache.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from accelerate import Accelerator  # noqa: E402

from recipes.train import build_optimizer, make_loader  # noqa: E402
from tokenizers_mm import collate_examples  # noqa: E402

RECIPES = ("gpt_char", "vit_digits", "whisper_digits", "dt_cartpole")


def n_tokens(batch) -> int:
    """Real tokens in (inputs, targets), as the training loop counts them."""
    return sum(int(b.mask.sum()) for b in batch[0].values())


# -- each recipe's (config, dataset, collate, model), as its main builds them ---------------------
def gpt_char(tmp: Path, utterances: int):
    from recipes import gpt_char as r

    cfg = r.Config()
    tok, train_set, _ = r.build_data(cfg)
    return cfg, train_set, collate_examples, r.build_model(cfg, tok)


def vit_digits(tmp: Path, utterances: int):
    from recipes import vit
    from recipes import vit_digits as r

    cfg = r.Config()
    train_set, _, classes, (mean, std) = r.build_data(cfg)
    tok = vit.make_tokenizer(cfg, mean, std)
    return cfg, train_set, vit.Collate(tok, cfg, len(classes), train=True), vit.build_model(cfg, tok, len(classes))


def whisper_digits(tmp: Path, utterances: int):
    from recipes import whisper_digits as r

    cfg = r.Config(data_dir=str(tmp / "speech"), n_train=utterances, n_test=1)
    audio_tok, text_tok, train_set, _ = r.build_data(cfg)
    return cfg, train_set, collate_examples, r.build_model(cfg, audio_tok, text_tok)


def dt_cartpole(tmp: Path, utterances: int):
    from recipes import dt
    from recipes import dt_cartpole as r
    from recipes.rl_data import make_env

    cfg = r.Config()
    episodes = dt.load_data(cfg)  # the recipe's cached dataset (generated on first use)
    env = make_env(cfg.env)
    tok = dt.make_tokenizer(cfg, episodes, env)
    env.close()
    return cfg, dt.Windows(episodes, tok), dt.collate_windows, dt.build_model(cfg, tok)


# -- timing ---------------------------------------------------------------------------------------
def loader_rate(loader, seconds: float) -> tuple[float, int]:
    """Tokens/s drawing batches from `loader` for about `seconds` (at least 3 batches)."""
    t0, tokens, n = time.perf_counter(), 0, 0
    while n < 3 or time.perf_counter() - t0 < seconds:
        tokens += n_tokens(next(loader))
        n += 1
    return tokens / (time.perf_counter() - t0), n


def training_step(model, cfg):
    """One training step on a batch, as `train` takes it (forward, backward, clipping, AdamW)."""
    opt = build_optimizer(model, cfg)
    model.train()

    def step(batch):
        inputs, targets = batch
        model(inputs, targets).loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def model_rate(step, batches: list, seconds: float) -> tuple[float, int]:
    """Tokens/s of the training step on pre-drawn batches, for about `seconds` (at least 3 steps)."""
    t0, tokens, n = time.perf_counter(), 0, 0
    while n < 3 or time.perf_counter() - t0 < seconds:
        b = batches[n % len(batches)]
        step(b)
        tokens += n_tokens(b)
        n += 1
    return tokens / (time.perf_counter() - t0), n


def measure(name: str, seconds: float, rounds: int, tmp: Path, utterances: int = 64) -> dict:
    torch.manual_seed(0)
    cfg, dataset, collate_fn, model = globals()[name](tmp, utterances)
    cfg.cpu = True
    accelerator = Accelerator(cpu=True)
    loader = iter(make_loader(dataset, collate_fn, cfg, accelerator))
    batches = [next(loader) for _ in range(8)]  # (the loader's warm-up too)
    step = training_step(model, cfg)
    for b in batches[:2]:  # warm-up
        step(b)
    sides = {"loader": lambda: loader_rate(loader, seconds / rounds), "model": lambda: model_rate(step, batches, seconds / rounds)}
    rates, counts = {k: [] for k in sides}, dict.fromkeys(sides, 0)
    for r in range(rounds):
        for k in list(sides)[:: 1 - 2 * (r % 2)]:  # who goes first alternates
            rate, n = sides[k]()
            rates[k].append(rate)
            counts[k] += n
    load_tps, step_tps = statistics.median(rates["loader"]), statistics.median(rates["model"])
    return {"recipe": name, "batch_size": cfg.batch_size, "num_workers": cfg.num_workers, "tokens_per_batch": n_tokens(batches[0]),
            "loader_tokens_per_s": load_tps, "model_tokens_per_s": step_tps, "ratio_loader_over_model": load_tps / step_tps,
            "round_ratios": [a / b for a, b in zip(rates["loader"], rates["model"])],
            "loader_batches": counts["loader"], "model_steps": counts["model"]}  # fmt: skip


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=4.0, help="timing of each side, split over the rounds")
    ap.add_argument("--rounds", type=int, default=4, help="turns of loader and model, who goes first alternating")
    ap.add_argument("--recipes", default=",".join(RECIPES))
    ap.add_argument("--utterances", type=int, default=64, help="whisper_digits' corpus: its first N utterances, synthesized")
    args = ap.parse_args()
    if args.rounds < 1 or not args.seconds > 0 or args.utterances < 1:
        ap.error("--rounds and --utterances must be at least 1 and --seconds above 0")
    rows = []
    with tempfile.TemporaryDirectory() as d:
        for name in args.recipes.split(","):
            if name not in RECIPES:
                raise SystemExit(f"unknown recipe {name!r}; this benchmark covers {', '.join(RECIPES)}")
            rows.append(measure(name, args.seconds, args.rounds, Path(d), args.utterances))
    print(json.dumps({"benchmark": "data pipeline vs training step, tokens/s (fp32 CPU)", "goal": "loader / model >= 1.0", "rows": rows,
                      "threads": torch.get_num_threads(), "whisper_utterances": args.utterances}, indent=2))  # fmt: skip
    print(f"\n{'recipe':16s} {'loader tok/s':>13s} {'model tok/s':>12s} {'ratio':>7s}  rounds")
    for r in rows:
        print(f"{r['recipe']:16s} {r['loader_tokens_per_s']:13,.0f} {r['model_tokens_per_s']:12,.0f} {r['ratio_loader_over_model']:7.2f}  "
              + " ".join(f"{x:.2f}" for x in r["round_ratios"]))


if __name__ == "__main__":
    main()
