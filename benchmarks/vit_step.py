"""Training-step time: our ViT against timm's VisionTransformer of identical size, same run.

    python benchmarks/vit_step.py [--steps 200] [--rounds 3] [--batch 128]

Both models are the vit_digits size (8×8 grayscale, patch 2, width 64, depth 4, 4 heads, MLP
ratio 2, CLS token), built from one timm model's weights so they compute the same function. A
step is forward + cross-entropy + backward + AdamW; ours includes cutting the batch into patch
tokens (timm's convolution does that inside its model). Rounds alternate between the two; the
median step time of each is printed with steps/s and the ratio (ours / timm: <= 1.0 is the goal), and
each round's ratio (benchmarks/timing.py).
"""

from __future__ import annotations

import argparse
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
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch", type=int, default=128)
    args = ap.parse_args()
    import timm

    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=8, patch_size=2, in_chans=1, num_classes=10, embed_dim=64,
                            depth=4, num_heads=4, mlp_ratio=2.0)  # fmt: skip
    ours = load_timm_vit(MultimodalTransformer(vit_model_config(vit)), vit.state_dict())
    tok = ImageTokenizer(image_size=8, patch_size=2, channels=1, mean=(0.0,), std=(1.0,))
    x, y = torch.rand(args.batch, 1, 8, 8), torch.randint(0, 10, (args.batch,))

    contenders = {"ours": (ours, lambda: ours({"image": tok.tokens_batch(x)}, {"cls": y}).loss), "timm": (vit, lambda: F.cross_entropy(vit(x), y))}
    s = summary(alternating_rounds(contenders, args.steps, args.rounds, warmup=10), peer="timm")
    params = {k: sum(p.numel() for p in m.parameters()) for k, (m, _) in contenders.items()}
    print(json.dumps({"benchmark": "ViT training step (vit_digits size), fp32 CPU", "batch": args.batch, "ours_ms": s["ours_ms"], "timm_ms": s["peer_ms"],
                      "ours_steps_per_s": s["ours_steps_per_s"], "timm_steps_per_s": s["peer_steps_per_s"], "ratio_ours_over_timm": s["ratio"],
                      "round_ratios": s["round_ratios"], "rounds_ms": s["rounds_ms"], "goal": "<= 1.0", "params": params,
                      "threads": torch.get_num_threads()}, indent=2))  # fmt: skip
    print(f"\nours {s['ours_ms']:.2f} ms/step, timm VisionTransformer {s['peer_ms']:.2f} ms/step, ratio {s['ratio']:.3f} (goal <= 1.0)")


if __name__ == "__main__":
    main()
