"""The examples run as a user runs them (examples/modality_plugin has its own test, test_plugin.py)."""

import sys

import torch

from conftest import ROOT

sys.path.insert(0, str(ROOT / "examples"))
import caption_digits  # noqa: E402


def test_caption_digits_trains_captions_draws_and_saves_a_model_that_loads_back(tmp_path, capsys):
    """A few steps of the library-only loop: the loss falls, held-out digits get captions, the
    picture is drawn and the saved model with its tokenizers captions as the trained one did."""
    from sklearn.datasets import load_digits

    from models import MultimodalTransformer
    from tokenizers_mm import load_tokenizer

    result = caption_digits.main(["--steps", "60", "--plot", str(tmp_path / "c.png"), "--save", str(tmp_path / "m")])
    out = capsys.readouterr().out
    losses = [float(line.split("loss ")[1]) for line in out.splitlines() if line.startswith("step ")]
    assert len(losses) == 1 and result["final_loss"] < 1.0, out  # (from ln 16 ≈ 2.8 at the start)
    assert f"held-out captions exactly right: {result['accuracy']:.1%} of 360" in out and (tmp_path / "c.png").stat().st_size > 10_000
    model = MultimodalTransformer.load(tmp_path / "m").eval()
    image_tok, text_tok = load_tokenizer(tmp_path / "m" / "tokenizers" / "image"), load_tokenizer(tmp_path / "m" / "tokenizers" / "text")
    images = torch.tensor(load_digits().images[result["held_out"]], dtype=torch.float32)[:, None] / 16
    assert caption_digits.caption(model, image_tok, text_tok, images) == result["captions"]
