"""SensorTokenizer: a multivariate time series (T samples × C channels) → one token per patch of
`patch` consecutive samples (PatchTST's patching, Nie et al. 2023): values (T / patch, patch · C),
positions = patch index. Each window's per-channel mean is removed first (`center`: for an
accelerometer, gravity on an unknown orientation), then each channel is scaled by a standard
deviation saved with the tokenizer.

Registered as `sensor` through the `tokenizers_mm.modalities` entry point of this package's
pyproject.toml: the toolkit finds it after `pip install`, with no change to the toolkit.
"""

from __future__ import annotations

import numpy as np
import torch

from tokenizers_mm import Tokenizer, TokenSet


class SensorTokenizer(Tokenizer):
    """Sensor windows (T, C) → patch tokens (T / patch, patch · C)."""

    modality = "sensor"
    token_types = ("patch",)

    def __init__(self, channels: int = 3, patch: int = 8, max_positions: int = 64, mean=None, std=None, center: bool = True):
        self.channels, self.patch, self.max_positions, self.center = channels, patch, max_positions, center
        self.mean = np.zeros(channels, np.float32) if mean is None else np.asarray(mean, np.float32)
        self.std = np.ones(channels, np.float32) if std is None else np.asarray(std, np.float32)
        self.value_dim = patch * channels

    def config(self) -> dict:
        return {"channels": self.channels, "patch": self.patch, "max_positions": self.max_positions,
                "mean": self.mean.tolist(), "std": self.std.tolist(), "center": self.center}  # fmt: skip

    def fit(self, windows: np.ndarray) -> "SensorTokenizer":
        """Per-channel mean and std of (N, T, C) training windows (after centring each window)."""
        if self.center:
            windows = windows - windows.mean(1, keepdims=True)
        self.mean = windows.reshape(-1, self.channels).mean(0).astype(np.float32)
        self.std = (windows.reshape(-1, self.channels).std(0) + 1e-6).astype(np.float32)
        return self

    def encode(self, sample, name: str = "window") -> TokenSet:
        x = np.asarray(sample, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.channels:
            raise ValueError(f"{name}: expected a (T, {self.channels}) window, got shape {x.shape}")
        if x.shape[0] % self.patch or not 0 < x.shape[0] // self.patch <= self.max_positions:
            raise ValueError(f"{name}: {x.shape[0]} samples; expected whole tokens of patch={self.patch} samples, from 1 to "
                             f"max_positions={self.max_positions} of them ({self.patch} to {self.patch * self.max_positions} samples)")  # fmt: skip
        if not np.isfinite(x).all():
            raise ValueError(f"{name}: the window holds NaN or infinite samples")
        if self.center:
            x = x - x.mean(0, keepdims=True)
        x = (x - self.mean) / self.std
        values = torch.from_numpy(x).reshape(-1, self.patch * self.channels)  # (T, C) -> (T / patch, patch · C), time-major
        return TokenSet(self.modality, values=values)

    def decode(self, tokens: TokenSet) -> np.ndarray:
        """Tokens → the (T, C) window (without its mean when `center`)."""
        x = tokens.values.reshape(-1, self.channels).numpy()
        return x * self.std + self.mean
