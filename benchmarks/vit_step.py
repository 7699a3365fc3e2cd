"""Training-step time: our ViT against timm's VisionTransformer of identical size, same run.

    python benchmarks/vit_step.py [--steps 200] [--rounds 3] [--batch 128]

Both models are the vit_digits size (8×8 grayscale, patch 2, width 64, depth 4, 4 heads, MLP
ratio 2, CLS token), built from one timm model's weights so they compute the same function. A
step is forward + cross-entropy + backward + AdamW; ours includes cutting the batch into patch
tokens (timm's convolution does that inside its model). Rounds alternate between the two; the
median step time of each is printed with the ratio (ours / timm: <= 1.0 is the goal).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

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

    def step_timm(opt):
        loss = F.cross_entropy(vit(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def step_ours(opt):
        out = ours({"image": tok.tokens_batch(x)}, {"cls": y})
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    contenders = {"ours": (ours, step_ours), "timm": (vit, step_timm)}
    opts = {k: torch.optim.AdamW(m.parameters(), lr=1e-3) for k, (m, _) in contenders.items()}
    times = {k: [] for k in contenders}
    for r in range(args.rounds):
        for k, (model, step) in list(contenders.items())[:: 1 - 2 * (r % 2)]:  # who goes first alternates
            model.train()
            for _ in range(10):  # warm-up
                step(opts[k])
            t0 = time.perf_counter()
            for _ in range(args.steps):
                step(opts[k])
            times[k].append((time.perf_counter() - t0) / args.steps)
    ours_s, timm_s = statistics.median(times["ours"]), statistics.median(times["timm"])
    params = {k: sum(p.numel() for p in m.parameters()) for k, (m, _) in contenders.items()}
    print(json.dumps({"benchmark": "ViT training step (vit_digits size), fp32 CPU", "batch": args.batch, "ours_ms": ours_s * 1e3, "timm_ms": timm_s * 1e3,
                      "ratio_ours_over_timm": ours_s / timm_s, "goal": "<= 1.0", "params": params, "threads": torch.get_num_threads()}, indent=2))  # fmt: skip
    print(f"\nours {ours_s * 1e3:.2f} ms/step, timm VisionTransformer {timm_s * 1e3:.2f} ms/step, ratio {ours_s / timm_s:.3f} (goal <= 1.0)")


if __name__ == "__main__":
    main()
