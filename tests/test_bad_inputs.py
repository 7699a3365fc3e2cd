"""The bad-input catalogue (benchmarks/hardening.py): every malformed input across the modalities
gets its documented outcome — a one-line error naming the sample, or a documented handling."""

import sys

import pytest

from tests.conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
import hardening  # noqa: E402

CASES = hardening.cases()


def test_the_catalogue_covers_every_modality_with_at_least_30_inputs():
    assert len(CASES) >= 30
    assert {c.modality for c in CASES} >= {"text", "image", "audio", "rl", "model", "checkpoint"}
    assert len({c.name for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_outcome_is_as_documented(case, tmp_path):
    ok, what = hardening.check(case, tmp_path)
    assert ok, f"{case.name}: expected {case.outcome} {getattr(case.expect, '__name__', '')} /{case.pattern}/, got {what}"


BAD_SETTINGS = [
    ("image", dict(image_size=32, patch_size=0), r"^image: patch_size=0 must be a whole number of at least 1$"),
    ("image", dict(image_size=32.0, patch_size=8), r"^image: image_size is one side or \(height, width\), got 32.0$"),
    ("image", dict(image_size=(32, 32, 3), patch_size=8), r"^image: image_size is one side or \(height, width\), got \(32, 32, 3\)$"),
    ("image", dict(image_size=32, patch_size=8, channels=0), r"^image: channels=0 must be a whole number of at least 1$"),
    ("image", dict(image_size=32, patch_size=8, channels=1, mean=(0.5,), std=(0.0,)), r"^image: mean \[0.5\] must be finite and std \[0.0\] above 0"),
    ("text_char", dict(chars=""), r"^text_char: chars is a non-empty string of the vocabulary's characters \(None: bytes\), got ''$"),
    ("text_char", dict(chars=["a", "b"]), r"^text_char: chars is a non-empty string"),
    ("text_char", dict(max_positions=0), r"^text_char: max_positions=0 must be a whole number of at least 1$"),
    ("trajectory", dict(state_dim=0, action_dim=2, discrete=True), r"^trajectory: state_dim=0 must be a whole number of at least 1$"),
    ("trajectory", dict(state_dim=3, action_dim=2, discrete=True, context=2.5), r"^trajectory: context=2.5 must be a whole number"),
]


@pytest.mark.parametrize("name, settings, message", BAD_SETTINGS, ids=[f"{n}-{'-'.join(s)}" for n, s, _ in BAD_SETTINGS])
def test_a_tokenizer_made_with_bad_sizes_says_which_in_one_line(name, settings, message):
    """Sizes a tokenizer is made with (a config written by hand, a NumPy number) are checked where
    they are given, not found later as a ZeroDivisionError or an empty vocabulary."""
    from tokenizers_mm import create

    with pytest.raises(ValueError, match=message):
        create(name, **settings)


def test_a_tokenizer_takes_numpy_integers_as_sizes(tmp_path):
    """...and saves them as JSON numbers (a NumPy integer in config() was refused at save)."""
    import numpy as np

    from tokenizers_mm import BPETokenizer, create

    image = create("image", image_size=np.int64(32), patch_size=np.int64(8))
    assert image.config()["image_size"] == [32, 32] and type(image.config()["patch_size"]) is int
    assert create("image", image_size=np.array([16, 8]), patch_size=4).config()["image_size"] == [16, 8]
    assert type(create("trajectory", state_dim=np.int64(4), action_dim=2, discrete=True).config()["state_dim"]) is int
    create("text_char", chars="ab", max_positions=np.int64(8)).save(tmp_path / "char")
    BPETokenizer.train(["ab ab ab"], vocab_size=260, max_positions=np.int64(8)).save(tmp_path / "bpe")
