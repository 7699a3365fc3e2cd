"""Property tests (hypothesis) for every registered tokenizer and for collate / pack.

Each tokenizer, on any input of the right type (any unicode string; an image array of any shape,
dtype and values, NaN and inf included; any waveform at any sample rate; any episode arrays),
either emits a TokenSet that satisfies its own spec (positions inside the table, ids inside the
vocabulary, finite values of the declared width) or raises its documented ValueError-family
error naming the sample, and round-trips where a round trip is defined. `FUZZED` maps every
built-in registered tokenizer to its property tests, in this file or next to the tokenizer's
other tests (tests/test_text_bpe.py, tests/test_text_char.py, tests/test_fuzz_trajectory.py);
a tokenizer registered without one fails `test_every_registered_tokenizer_is_fuzzed`.
Plugins registered through entry points are fuzzed by their own packages.
"""

import re

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, example, given, is_hypothesis_test, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from tokenizers_mm import (AudioTokenizer, BPETokenizer, CharTokenizer, ImageTokenizer, TokenSet, TrajectoryTokenizer, collate, get,
                           list_tokenizers, pack, pack_examples, padding_fraction)  # fmt: skip
from tokenizers_mm.audio import HOP_LENGTH, SAMPLE_RATE
from tokenizers_mm.collate import PAD_SEGMENT

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
BPE = BPETokenizer.train(["The quick brown fox jumps over the lazy dog. 0123456789 αβγ 日本語 🙂\n" * 20], vocab_size=300,
                         max_positions=64)  # fmt: skip


def assert_valid(ts: TokenSet, tok) -> None:
    """The TokenSet satisfies the tokenizer's declarations, and its values are finite."""
    assert isinstance(ts, TokenSet) and ts.modality == tok.modality
    ts.validate(tok.spec)  # positions inside the table, types declared, ids in the vocabulary / values of the width
    if ts.values is not None:
        assert bool(torch.isfinite(ts.values).all())


# -- text: text_char (bytes and a character vocabulary) and text (byte-level BPE) -----------------
TEXT_TOKENIZERS = {
    "text_char bytes": CharTokenizer(max_positions=64),
    "text_char chars": CharTokenizer(chars="abc xyz\n", max_positions=64),
    "text bpe": BPE,
}


@SETTINGS
@given(st.sampled_from(sorted(TEXT_TOKENIZERS)), st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=80))
def test_text_encodes_to_valid_tokens_and_round_trips(which, text):
    tok = TEXT_TOKENIZERS[which]
    try:
        ts = tok.encode(text)
    except ValueError as e:  # documented: a character outside the vocabulary, a special token's text, too many tokens
        assert any(m in str(e) for m in ("is not in the vocabulary", "contains the special token", "exceed max_positions=64")), str(e)
        if "exceed" in str(e):
            assert len(tok.encode_ids(text)) > 64
        elif "vocabulary" in str(e):
            assert which == "text_char chars" and set(text) - set("abc xyz\n")
        return
    assert_valid(ts, tok)
    assert tok.decode(ts) == text


@SETTINGS
@given(st.sampled_from(sorted(TEXT_TOKENIZERS)), st.lists(st.integers(-3, 400), max_size=40))
def test_text_decodes_any_ids_or_names_the_bad_one(which, ids):
    tok = TEXT_TOKENIZERS[which]
    bad = [i for i in ids if not 0 <= i < tok.vocab_size]
    if bad:
        with pytest.raises(ValueError, match=rf"id {bad[0]} is outside the vocabulary of {tok.vocab_size}"):
            tok.decode(ids)
    else:
        assert isinstance(tok.decode(ids), str)  # bytes that are not UTF-8 come back as U+FFFD


@SETTINGS
@given(st.sampled_from(["text_char bytes", "text bpe"]), st.text(max_size=20), st.text(max_size=20))
def test_special_token_text_is_refused_unless_allowed(which, before, after):
    tok = TEXT_TOKENIZERS[which]
    text = before + "<|endoftext|>" + after
    if which == "text bpe":
        with pytest.raises(ValueError, match="special token '<\\|endoftext\\|>'"):
            tok.encode_ids(text)
    ids = [int(i) for i in tok.encode_ids(text, allowed_special="all")]
    special = tok.specials if which == "text bpe" else tok.special_ids  # name -> id
    assert ids.count(special["<|endoftext|>"]) == text.count("<|endoftext|>")


# -- image ---------------------------------------------------------------------------------------
@st.composite
def exact_images(draw):
    channels, p = draw(st.sampled_from([1, 3])), draw(st.sampled_from([1, 2, 4]))
    gh, gw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    x = draw(arrays(np.float32, (channels, gh * p, gw * p), elements=st.floats(0, 1, width=32)))
    return torch.from_numpy(x), p, draw(st.booleans())


@SETTINGS
@given(exact_images())
def test_image_at_its_size_round_trips(case):
    x, p, cls = case
    C, H, W = x.shape
    tok = ImageTokenizer(image_size=(H, W), patch_size=p, channels=C, mean=[0.5] * C, std=[0.25] * C, cls_token=cls)
    ts = tok.encode(x)
    assert_valid(ts, tok)
    assert len(ts) == tok.max_positions == (H // p) * (W // p) + cls
    assert ts.types.tolist() == [1] * cls + [0] * (H // p) * (W // p)
    torch.testing.assert_close(tok.decode(ts), x, atol=1e-5, rtol=0)


IMAGE_DTYPES = [np.uint8, np.uint16, np.int16, np.int32, np.float16, np.float32, np.float64, np.bool_]


@st.composite
def any_images(draw):
    """Arrays of any dtype as NumPy (H, W) / (H, W, C) or tensors (C, H, W), NaN and inf included."""
    dtype, ndim = draw(st.sampled_from(IMAGE_DTYPES)), draw(st.sampled_from([2, 3]))
    shape = (draw(st.integers(0, 24)), draw(st.integers(0, 24))) + ((draw(st.integers(0, 5)),) if ndim == 3 else ())
    x = draw(arrays(dtype, shape))
    return torch.from_numpy(np.moveaxis(x, -1, 0).copy()) if len(shape) == 3 and draw(st.booleans()) else x


def finite32(x: np.ndarray) -> bool:
    with np.errstate(over="ignore", invalid="ignore"):
        return bool(np.isfinite(x.astype(np.float32)).all())


@SETTINGS
@given(any_images(), st.sampled_from([1, 3]), st.booleans())
@example(np.linspace(0, 1, 35, dtype=np.float32).reshape(5, 7), 3, True)  # always one valid image
def test_image_of_any_shape_dtype_and_values_tokenizes_or_is_named(x, channels, resize):
    tok = ImageTokenizer(image_size=8, patch_size=2, channels=channels, mean=[0.5] * channels, std=[0.5] * channels, resize=resize)
    valid = (isinstance(x, np.ndarray) and x.ndim == 2 and min(x.shape) >= 2 and (resize or x.shape == (8, 8)) and finite32(x)
             and x.dtype not in (np.int16, np.int32)  # (integers of no known pixel scale: refused)
             and (x.dtype.kind != "f" or -0.5 <= x.min() <= x.max() <= 1.5))  # fmt: skip  # (float pixels: [0, 1], one scale)
    try:
        ts = tok.encode(x, name="fuzz.png")
    except ValueError as e:  # ImageError: wrong shape, channels, size, non-finite values
        assert not valid, f"a valid {x.dtype} {x.shape} image was refused: {e}"
        assert str(e).startswith("fuzz.png: ") and "\n" not in str(e), str(e)
        return
    assert_valid(ts, tok)
    assert len(ts) == tok.max_positions


# -- audio ---------------------------------------------------------------------------------------
AUDIO_DTYPES = [np.float32, np.float64, np.int16, np.int32, np.uint8]
RATES = st.sampled_from([8000, 11025, 16000, 22050, 44100, 48000, 44101]) | st.integers(1000, 96000)


@st.composite
def waveforms(draw):
    """(T,), (C, T) or (T, C) arrays of any dtype and values (NaN and inf included), 0..2000 samples."""
    T = draw(st.integers(0, 2000))
    shape = draw(st.sampled_from([(T,), (draw(st.integers(1, 3)), T), (T, draw(st.integers(1, 3)))]))
    return draw(arrays(draw(st.sampled_from(AUDIO_DTYPES)), shape))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(waveforms(), RATES, st.booleans(), st.integers(1, 3))
@example(np.sin(np.arange(1500, dtype=np.float32) / 5) * 0.5, 44101, False, 2)  # always one valid waveform
def test_audio_of_any_length_rate_dtype_and_values_tokenizes_or_is_named(wave, rate, chunk, k):
    tok = AudioTokenizer(n_mels=80, slice_frames=k, chunk=chunk, max_frames=300 * k if not chunk else 3000)
    valid = wave.ndim == 1 and wave.dtype == np.float32 and len(wave) > 0 and finite32(wave) and np.abs(wave).max() <= 1  # <= 2 s, in max_frames
    try:
        ts = tok.encode(wave, rate, name="fuzz.wav")
    except ValueError as e:  # AudioError: empty, non-finite, too long for max_frames, overflowing
        assert not valid, f"a valid waveform of {len(wave)} samples at {rate} Hz was refused: {e}"
        assert str(e).startswith("fuzz.wav: ") and "\n" not in str(e), str(e)
        return
    assert_valid(ts, tok)
    assert ts.values.shape[1] == 80 * k
    if chunk:
        assert len(ts) == 3000 // k
    else:  # one token per k started 10 ms frames of the 16 kHz waveform
        T = wave.shape[0] if wave.ndim == 1 else max(wave.shape)
        n16 = T if rate == SAMPLE_RATE else -(-T * SAMPLE_RATE // rate)
        assert len(ts) == -(-n16 // (HOP_LENGTH * k))


# -- trajectory (valid episodes: tests/test_fuzz_trajectory.py) ----------------------------------
@st.composite
def malformed_episodes(draw):
    """Arrays of any shape and values: wrong widths, NaN / inf, ids out of range, empty."""
    T = draw(st.integers(0, 8))
    obs = draw(arrays(np.float32, (T, draw(st.integers(1, 4)))))
    acts = draw(arrays(np.int64, draw(st.sampled_from([(T,), (T, 2), (max(0, T - 1),)])), elements=st.integers(-2, 4)))
    rew = draw(arrays(np.float32, (draw(st.sampled_from([T, T + 1])),)))
    return {"observations": obs, "actions": acts, "rewards": rew}


@SETTINGS
@given(malformed_episodes())
@example({"observations": np.ones((5, 3), np.float32), "actions": np.array([0, 2, 1, 1, 0]), "rewards": np.ones(5, np.float32)})
def test_any_episode_tokenizes_or_is_named(ep):
    tok = TrajectoryTokenizer(3, 3, discrete=True, context=4, max_timestep=6)
    obs, acts, rew = ep["observations"], ep["actions"], ep["rewards"]
    valid = (1 <= len(obs) <= 6 and obs.shape[1] == 3 and acts.shape == (len(obs),) and len(rew) == len(obs) and finite32(obs)
             and np.abs(rew.astype(np.float64)).sum() <= np.finfo(np.float32).max and (acts >= 0).all() and (acts < 3).all())  # fmt: skip
    try:
        ts = tok.encode(ep, name="ep7")
    except ValueError as e:
        assert not valid, f"a valid episode of {len(obs)} steps was refused: {e}"
        assert str(e).startswith("ep7: ") and "\n" not in str(e), str(e)
        return
    assert_valid(ts, tok)
    assert len(ts) == 3 * min(4, len(ep["rewards"]))


# -- every registered tokenizer is fuzzed ---------------------------------------------------------
def _elsewhere(module: str, name: str):
    return getattr(pytest.importorskip(module), name)


FUZZED = {  # registered name -> its property tests
    "text_char": lambda: [test_text_encodes_to_valid_tokens_and_round_trips, test_text_decodes_any_ids_or_names_the_bad_one,
                          _elsewhere("tests.test_text_char", "test_byte_mode_round_trips_any_unicode"),
                          _elsewhere("tests.test_text_char", "test_char_mode_round_trips_its_corpus")],  # fmt: skip
    "text": lambda: [test_text_encodes_to_valid_tokens_and_round_trips, test_special_token_text_is_refused_unless_allowed,
                     _elsewhere("tests.test_text_bpe", "test_trained_round_trip")],  # fmt: skip
    "image": lambda: [test_image_at_its_size_round_trips, test_image_of_any_shape_dtype_and_values_tokenizes_or_is_named],
    "audio": lambda: [test_audio_of_any_length_rate_dtype_and_values_tokenizes_or_is_named],
    "trajectory": lambda: [test_any_episode_tokenizes_or_is_named, _elsewhere("tests.test_fuzz_trajectory", "test_any_episode_tokenizes_and_decodes")],
}


def test_every_registered_tokenizer_is_fuzzed():
    builtin = [n for n in list_tokenizers() if get(n).__module__.startswith("tokenizers_mm.")]
    assert set(builtin) >= {"text_char", "text", "image", "audio", "trajectory"}
    missing = [n for n in builtin if n not in FUZZED]
    assert not missing, f"registered tokenizers without property tests: {missing}; add them to FUZZED"
    for name in builtin:
        tests = FUZZED[name]()
        assert tests and all(is_hypothesis_test(t) for t in tests), name


# -- collate, pack, padding_fraction --------------------------------------------------------------
@st.composite
def token_sets(draw, min_len=0, max_len=12):
    """1..6 TokenSets of one modality, all ids or all values (width 3), each with optional targets.
    Every token carries a unique id / value, so where it lands can be traced."""
    n = draw(st.integers(1, 6))
    lengths = draw(st.lists(st.integers(min_len, max_len), min_size=n, max_size=n))
    use_values, with_targets = draw(st.booleans()), draw(st.booleans())
    sets, next_id = [], 1
    for L in lengths:
        ids = torch.arange(next_id, next_id + L)
        next_id += L
        kw = {"values": ids[:, None].float().repeat(1, 3)} if use_values else {"ids": ids}
        if with_targets:
            kw.update(targets=ids + 1000, loss_mask=ids % 2 == 0)
        sets.append(TokenSet("m", positions=torch.arange(L) + draw(st.integers(0, 3)), types=ids % 2, **kw))
    return sets


def token_ids(batch, b, where) -> list[int]:
    """The traced ids of row b at the boolean positions `where`."""
    t = batch.ids if batch.ids is not None else batch.values[..., 0]
    return [int(v) for v in t[b][where]]


@SETTINGS
@given(token_sets(), st.integers(1, 4))
def test_collate_places_every_token_once_with_a_consistent_mask(sets, multiple):
    batch = collate(sets, pad_to_multiple=multiple)
    longest = max(len(ts) for ts in sets)
    assert batch.shape == (len(sets), -(-longest // multiple) * multiple)
    for b, ts in enumerate(sets):
        n = len(ts)
        assert batch.mask[b, :n].all() and not batch.mask[b, n:].any()
        assert token_ids(batch, b, batch.mask[b]) == token_ids(collate([ts]), 0, slice(None))
        assert torch.equal(batch.positions[b, :n], ts.positions) and torch.equal(batch.types[b, :n], ts.types)
        if ts.targets is not None:
            assert torch.equal(batch.targets[b, :n], ts.targets) and torch.equal(batch.loss_mask[b, :n], ts.loss_mask)
            assert not batch.loss_mask[b, n:].any()  # padding never counts in the loss
    total = sum(len(ts) for ts in sets)
    if batch.mask.numel():
        assert padding_fraction(batch) == pytest.approx(1 - total / batch.mask.numel())


@SETTINGS
@given(token_sets(min_len=1), st.integers(1, 16))
def test_pack_places_every_token_once_within_row_length(sets, row_length):
    too_long = [i for i, ts in enumerate(sets) if len(ts) > row_length]
    if too_long:  # the error names one of them, with its length
        with pytest.raises(ValueError, match=rf"pack: sample (\d+) has (\d+) tokens, longer than row_length={row_length}") as e:
            pack(sets, row_length)
        i, n = map(int, re.search(r"sample (\d+) has (\d+)", str(e.value)).groups())
        assert i in too_long and n == len(sets[i])
        return
    batch = pack(sets, row_length)
    assert batch.shape[1] == row_length  # never wider than asked
    assert torch.equal(batch.mask, batch.segments != PAD_SEGMENT)
    found = []
    for b in range(batch.shape[0]):
        segs = batch.segments[b][batch.mask[b]].tolist()
        assert segs == sorted(segs) and segs and segs[0] == 0  # each row: segments 0, 1, ... laid end to end
        assert not batch.mask[b, batch.mask[b].sum() :].any()  # padding only at the end
        for s in sorted(set(segs)):
            found.append(token_ids(batch, b, batch.segments[b] == s))
    expected = [token_ids(collate([ts]), 0, slice(None)) for ts in sets]
    assert sorted(found) == sorted(expected)  # every set exactly once, its tokens in order, nothing else
    total = sum(len(ts) for ts in sets)
    assert batch.mask.sum() == total and padding_fraction(batch) == pytest.approx(1 - total / batch.mask.numel())


@SETTINGS
@given(token_sets(min_len=1, max_len=6), token_sets(min_len=1, max_len=6), st.integers(4, 24), st.sampled_from([1, 2]))
def test_pack_examples_keeps_each_example_in_one_row_and_segment(a_sets, b_sets, row_tokens, stride):
    n = min(len(a_sets), len(b_sets))
    b_sets = [TokenSet("n", ids=ts.ids, values=ts.values, positions=ts.positions, types=ts.types) for ts in b_sets]
    examples = [{"m": a_sets[i], "n": b_sets[i]} if i % 2 == 0 else {"m": a_sets[i]} for i in range(n)]
    out, placement = pack_examples(examples, row_tokens, stride={"n": stride})
    assert len(placement) == n and len(set(placement)) == n  # one (row, segment) per example
    for m, batch in out.items():
        assert torch.equal(batch.mask, batch.segments != PAD_SEGMENT)
        for i, ex in enumerate(examples):
            if m not in ex:
                continue
            row, seg = placement[i]
            where = batch.segments[row] == seg
            assert token_ids(batch, row, where) == token_ids(collate([ex[m]]), 0, slice(None))  # all of it, in order, in its row
            if m == "n" and stride > 1:  # a strided stem: the set starts on a multiple of k, a padding slot after it
                idx = where.nonzero().flatten()
                assert int(idx[0]) % stride == 0 and (int(idx[-1]) + 1 == batch.shape[1] or not batch.mask[row, int(idx[-1]) + 1])
        total = sum(len(ex[m]) for ex in examples if m in ex)
        assert int(batch.mask.sum()) == total  # so no token is anywhere but in its example's segment
