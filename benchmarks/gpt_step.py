"""Time per training step: our gpt_char model vs Hugging Face GPT2LMHeadModel of the same size,
both trained by the same loop (recipes.train.train) on the same data, in one run.

    python benchmarks/gpt_step.py [--steps 300] [--rounds 3] [--data PATH]

Sizes follow nanoGPT's CPU configuration (4 layers, 4 heads, width 128, context 64, batch 12),
with biases and tanh-GELU on our side so the two models are the same architecture and size.
Rounds alternate between the two models to spread machine noise; the median step time of each
is printed with steps/s, the ratio (ours / peer: <= 1.0 means ours is at least as fast) and each
round's ratio (benchmarks/timing.py).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from safetensors.torch import save_model
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from timing import add_corpus_argument, corpus_path, summary  # noqa: E402  (benchmarks/timing.py)

from recipes.gpt_char import Config, build_data, build_model, make_evaluate  # noqa: E402
from recipes.train import read_metrics, train  # noqa: E402
from tokenizers_mm import collate_examples  # noqa: E402


class HFGPT2(nn.Module):
    """GPT2LMHeadModel behind the recipe's model interface: model(inputs, targets).loss."""

    def __init__(self, cfg: Config, vocab_size: int):
        super().__init__()
        from transformers import GPT2Config, GPT2LMHeadModel

        hf = GPT2Config(vocab_size=vocab_size, n_positions=cfg.block_size, n_embd=cfg.dim, n_layer=cfg.depth, n_head=cfg.num_heads,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0)  # fmt: skip
        self.model = GPT2LMHeadModel(hf)

    def forward(self, inputs, targets=None):
        b = inputs["text"]
        logits = self.model(input_ids=b.ids, use_cache=False).logits  # training: no KV cache to build
        return SimpleNamespace(loss=F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), b.targets.reshape(-1)))

    def save(self, directory):
        save_model(self, str(Path(directory) / "model.safetensors"))


LOG_EVERY = 20  # steps per timing window


def step_seconds(run_dir: Path, tokens_per_step: int) -> float:
    rows = [r for r in read_metrics(run_dir) if "tokens_per_s" in r][1:]  # the first window includes warm-up
    return statistics.median(tokens_per_step / r["tokens_per_s"] for r in rows)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=3)
    add_corpus_argument(ap)
    args = ap.parse_args()
    data = corpus_path(ap, args.data)
    if args.steps < 2 * LOG_EVERY + 1 or args.rounds < 1:  # (the first window of LOG_EVERY steps is warm-up, not timed)
        ap.error(f"--steps {args.steps} --rounds {args.rounds}: expected at least {2 * LOG_EVERY + 1} steps (windows of {LOG_EVERY}, "
                 "the first one warm-up) and 1 round")  # fmt: skip
    cfg = Config(data=data, bias=True, activation="gelu_tanh", max_steps=args.steps, eval_every=10**9, eval_batches=1, ckpt_every=10**9, log_every=LOG_EVERY,
                 sample_tokens=0, cpu=True)  # fmt: skip
    tokenizer, train_set, val_set = build_data(cfg)
    evaluate = make_evaluate(cfg, val_set)
    makers = {"ours": lambda: build_model(cfg, tokenizer), "hf_gpt2": lambda: HFGPT2(cfg, tokenizer.vocab_size)}
    times = {k: [] for k in makers}
    params = {}
    tokens_per_step = cfg.batch_size * cfg.block_size
    for r in range(args.rounds):
        for name, make in list(makers.items())[:: 1 - 2 * (r % 2)]:  # who goes first alternates
            torch.manual_seed(0)
            model = make()
            params[name] = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
            with tempfile.TemporaryDirectory() as d:
                cfg.run_dir = d
                train(cfg, model, train_set, collate_examples, evaluate, Path(d))
                times[name].append(step_seconds(Path(d), tokens_per_step))
    s = summary(times, peer="hf_gpt2")
    result = {
        "benchmark": "gpt_char training step (fwd+bwd+AdamW), fp32 CPU",
        "ours_ms_per_step": s["ours_ms"], "hf_gpt2_ms_per_step": s["peer_ms"], "ours_steps_per_s": s["ours_steps_per_s"],
        "hf_gpt2_steps_per_s": s["peer_steps_per_s"], "ratio_ours_over_peer": s["ratio"], "round_ratios": s["round_ratios"],
        "goal": "ratio <= 1.0", "corpus": data or "embedded", "params": params, "threads": torch.get_num_threads(), "rounds_ms": s["rounds_ms"],
    }  # fmt: skip
    print(json.dumps(result, indent=2))
    print(f"\nours {s['ours_ms']:.2f} ms/step, HF GPT2LMHeadModel {s['peer_ms']:.2f} ms/step, ratio {s['ratio']:.3f} (goal <= 1.0)")


if __name__ == "__main__":
    main()
