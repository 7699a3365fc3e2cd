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
