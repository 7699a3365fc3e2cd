"""Figures without a screen: matplotlib on its Agg backend, and one way to write a PNG."""

from __future__ import annotations

from pathlib import Path

from tokenizers_mm.base import atomic_path


def subplots(*args, **kwargs):
    """`plt.subplots` on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(*args, **kwargs)


def save_png(fig, path, dpi: int = 110) -> Path:
    """Lay out, write and close a figure."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    try:
        with atomic_path(path) as tmp:  # (a full disk leaves the last picture, not an empty file)
            fig.savefig(tmp, format=Path(path).suffix[1:] or "png", dpi=dpi, bbox_inches="tight", pad_inches=0.1)  # note: titles
    finally:  # above square images stay whole
        plt.close(fig)
    return Path(path)
