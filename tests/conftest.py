import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


@pytest.fixture(autouse=True)
def seed():
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    yield


def write_small_text(folder: Path) -> Path:
    """A small real corpus: tiny shakespeare's opening when present, else Python's own docs."""
    src = SHARED_DATA / "tinyshakespeare.txt"
    if src.exists():
        text = src.read_text(encoding="utf-8")[:30000]
    else:
        from recipes.gpt_char import default_corpus

        text = default_corpus()[:30000]
    path = folder / "corpus.txt"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def small_text(tmp_path) -> Path:
    return write_small_text(tmp_path)


def subprocess_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def install_entry_points(folder: Path, name: str, entry_points: str, monkeypatch) -> None:
    """A package installed as pip installs one, as far as importlib.metadata sees: `folder` on
    sys.path (for this test) holding NAME-0.1.dist-info with its METADATA and `entry_points`
    (entry_points.txt's text: [group] lines, then name = value lines)."""
    dist = folder / f"{name.replace('-', '_')}-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(entry_points)
    monkeypatch.syspath_prepend(str(folder))
