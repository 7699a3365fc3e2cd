"""A tiny dataset this package makes itself: 3-axis accelerometer windows of five activities.

Each window is 2.56 s at 50 Hz (128 samples × 3 axes): gravity on a random device orientation,
plus the activity's motion — sitting (still, sensor noise), walking (~1.8 Hz steps), running
(~2.8 Hz, stronger), cycling (smooth ~1.2 Hz pedalling on one axis), jumping (impacts ~1 Hz) —
with random amplitude, frequency, phase and noise. Deterministic in the seed.
"""

from __future__ import annotations

import numpy as np

RATE = 50  # Hz
SAMPLES = 128  # per window: 2.56 s
ACTIVITIES = ("sitting", "walking", "running", "cycling", "jumping")


def _window(activity: int, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(SAMPLES) / RATE
    g = rng.normal(size=3)
    x = np.tile(9.81 * g / np.linalg.norm(g), (SAMPLES, 1))  # gravity, random orientation
    f, phase, amp = rng.uniform(0.85, 1.15), rng.uniform(0, 2 * np.pi), rng.uniform(0.7, 1.3)
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    if activity == 1:  # walking
        x += amp * 2.0 * np.outer(np.sin(2 * np.pi * 1.8 * f * t + phase) + 0.3 * np.sin(4 * np.pi * 1.8 * f * t), axis)
    elif activity == 2:  # running
        x += amp * 6.0 * np.outer(np.abs(np.sin(np.pi * 2.8 * f * t + phase)) - 0.6, axis)
    elif activity == 3:  # cycling
        x += amp * 1.2 * np.outer(np.sin(2 * np.pi * 1.2 * f * t + phase), axis)
    elif activity == 4:  # jumping: a sharp landing impact once a second
        pulses = np.exp(-(((t * f + phase / (2 * np.pi)) % 1.0) - 0.5) ** 2 / 0.002)
        x += amp * 12.0 * np.outer(pulses - pulses.mean(), axis)
    return (x + rng.normal(scale=0.15, size=x.shape)).astype(np.float32)


def make_windows(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(windows (n, 128, 3) float32 in m/s², labels (n,) int64), classes balanced."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % len(ACTIVITIES)
    rng.shuffle(labels)
    return np.stack([_window(int(a), rng) for a in labels]), labels.astype(np.int64)
