"""vit_digits: a tiny ViT on scikit-learn's 8×8 handwritten digits (bundled, no download).

1,797 grayscale 8×8 images of the digits 0-9 (UCI optical digits), split once into a fixed,
stratified 80/20 train/test split (seed 0). Patches of 2×2 pixels give 16 tokens, averaged by
the classification head (pool="mean"; pool="cls" adds a CLS token).
Light augmentation (±10° rotation, ±1 pixel shift, ±10% zoom). The metric is test accuracy.

    mmtok train vit_digits
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from . import vit
from .vit import ImageSet

TEST_FRACTION = 0.2
SPLIT_SEED = 0


@dataclass
class Config(vit.Config):
    # Sized to reach >= 98.5% within 60 s on 2 CPU cores (benchmarks/vit_digits.py): 4 blocks took ~70 s.
    depth: int = 3
    pool: str = "mean"
    batch_size: int = 64
    lr: float = 1e-3
    max_steps: int = 5000
    flash: bool = False  # 17-token sequences: the manual attention path measured ~7% faster than SDPA on CPU


def build_data(cfg: Config):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 16.0  # (1797, 1, 8, 8) in [0, 1]
    labels = torch.tensor(digits.target)
    tr, te = train_test_split(range(len(labels)), test_size=TEST_FRACTION, stratify=digits.target, random_state=SPLIT_SEED)
    return ImageSet(images[tr], labels[tr]), ImageSet(images[te], labels[te]), [str(d) for d in range(10)], vit.mean_std(images[tr])


def main(cfg: Config, resume: bool = False) -> dict:
    return vit.run(cfg, "vit_digits", build_data, resume)


def evaluate(run_dir, device=None) -> dict:
    return vit.evaluate_run(run_dir, build_data, device)


predict = vit.predict
