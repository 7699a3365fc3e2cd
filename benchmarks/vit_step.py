"""Training-step time: our ViT against timm's VisionTransformer of identical size, same run.

    python benchmarks/vit_step.py [--steps 200] [--rounds 3] [--batch 64] [--sdpa]

Both models are the vit_digits recipe's (`recipes/vit_digits.Config`: 8×8 grayscale, patch 2,
width 64, depth 3, 4 heads, MLP ratio 2, mean pooling, no CLS token, batch 64), built from one
timm model's weights so they compute the same function (checked before timing). Ours attends as
the recipe trains (its manual attention, flash=False; --sdpa: PyTorch's fused SDPA, as timm's). A
step is forward + cross-entropy + backward + AdamW; ours includes cutting the batch into patch
tokens (timm's convolution does that inside its model). Rounds alternate between the two; the
median step time of each is printed with steps/s and the ratio (ours / timm: <= 1.0 is the goal), and
each round's ratio (benchmarks/timing.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from timing import alternating_rounds, summary  # noqa: E402  (benchmarks/timing.py)

from models import MultimodalTransformer, load_timm_vit, vit_model_config  # noqa: E402
from tokenizers_mm import ImageTokenizer  # noqa: E402


def main():
    from recipes.vit_digits import Config

    cfg = Config()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch", type=int, default=cfg.batch_size)
    ap.add_argument("--sdpa", action="store_true", help="ours with PyTorch's fused attention, as timm's (default: the recipe's, flash=False)")
    args = ap.parse_args()
    import timm

    torch.manual_seed(0)
    cls = cfg.pool == "cls"
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=cfg.image_size, patch_size=cfg.patch_size, in_chans=cfg.channels,
                            num_classes=10, embed_dim=cfg.dim, depth=cfg.depth, num_heads=cfg.num_heads, mlp_ratio=cfg.mlp_ratio,
                            class_token=cls, global_pool="token" if cls else "avg")  # fmt: skip
    config = vit_model_config(vit)
    config = dataclasses.replace(config, trunk=dataclasses.replace(config.trunk, flash=args.sdpa or cfg.flash))
    ours = load_timm_vit(MultimodalTransformer(config), vit.state_dict())
    tok = ImageTokenizer(image_size=cfg.image_size, patch_size=cfg.patch_size, channels=cfg.channels, mean=(0.0,), std=(1.0,), cls_token=cls)
    x, y = torch.rand(args.batch, cfg.channels, cfg.image_size, cfg.image_size), torch.randint(0, 10, (args.batch,))
    with torch.no_grad():  # the same function before anything is timed
        torch.testing.assert_close(ours({"image": tok.tokens_batch(x)}).logits["cls"], vit(x), atol=1e-5, rtol=1e-4)

    contenders = {"ours": (ours, lambda: ours({"image": tok.tokens_batch(x)}, {"cls": y}).loss), "timm": (vit, lambda: F.cross_entropy(vit(x), y))}
    s = summary(alternating_rounds(contenders, args.steps, args.rounds, warmup=10), peer="timm")
    params = {k: sum(p.numel() for p in m.parameters()) for k, (m, _) in contenders.items()}
    print(json.dumps({"benchmark": "ViT training step (vit_digits size), fp32 CPU", "batch": args.batch, "attention": "sdpa" if args.sdpa or cfg.flash else "manual", "ours_ms": s["ours_ms"], "timm_ms": s["peer_ms"],
                      "ours_steps_per_s": s["ours_steps_per_s"], "timm_steps_per_s": s["peer_steps_per_s"], "ratio_ours_over_timm": s["ratio"],
                      "round_ratios": s["round_ratios"], "rounds_ms": s["rounds_ms"], "goal": "<= 1.0", "params": params,
                      "threads": torch.get_num_threads()}, indent=2))  # fmt: skip
    print(f"\nours {s['ours_ms']:.2f} ms/step, timm VisionTransformer {s['peer_ms']:.2f} ms/step, ratio {s['ratio']:.3f} (goal <= 1.0)")


if __name__ == "__main__":
    main()
