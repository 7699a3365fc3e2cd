import pytest
import torch

from tokenizers_mm import ModalitySpec, TokenBatch, TokenSet, collate, collate_examples, next_token_set, pack, padding_fraction

SPEC = ModalitySpec("text", ("token",), max_positions=8, vocab_size=10)


def test_defaults_and_len():
    ts = TokenSet("text", ids=torch.tensor([3, 1, 4]))
    assert len(ts) == 3
    assert ts.positions.tolist() == [0, 1, 2] and ts.types.tolist() == [0, 0, 0]
    assert ts.validate(SPEC) is ts


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(), "exactly one of ids and values"),
        (dict(ids=torch.tensor([1]), values=torch.zeros(1, 2)), "exactly one of ids and values"),
        (dict(ids=torch.tensor([1.0])), "ids must be an integer"),
        (dict(values=torch.tensor([[1, 2]])), "values must be a floating"),
        (dict(ids=torch.tensor([1, 2]), positions=torch.tensor([0])), "positions has shape"),
        (dict(ids=torch.tensor([1, 2]), types=torch.tensor([0, 0, 0])), "types has shape"),
        (dict(ids=torch.tensor([1, 2]), targets=torch.tensor([1])), "targets has shape"),
        (dict(ids=torch.tensor([1, 2]), positions=torch.tensor([0.0, 1.0])), "positions must be an integer"),
        (dict(ids=torch.tensor([1, 2]), positions=torch.tensor([-1, 0])), "positions must be >= 0"),
        (dict(ids=torch.tensor([1, 2]), types=torch.tensor([0, -1])), "types must be >= 0"),
        (dict(ids=torch.tensor([[1, 2]])), r"ids must have shape \(N\), got \(1, 2\)"),
        (dict(values=torch.zeros(10)), r"values must have shape \(N, D\), got \(10,\)"),
    ],
)
def test_structural_errors(kwargs, message):
    with pytest.raises((ValueError, TypeError), match=message):
        TokenSet("text", **kwargs)


@pytest.mark.parametrize(
    "ts, message",
    [
        (TokenSet("text", ids=torch.tensor([1, 2]), positions=torch.tensor([0, 8])), "position 8 is beyond the declared table of 8"),
        (TokenSet("text", ids=torch.tensor([1, 10])), r"ids must lie in \[0, 10\)"),
        (TokenSet("text", ids=torch.tensor([1]), types=torch.tensor([1])), "type 1 is beyond the declared types"),
        (TokenSet("image", ids=torch.tensor([1])), "does not match the spec"),
        (TokenSet("text", values=torch.zeros(2, 3)), "declares values|got ids|spec declares"),
    ],
)
def test_spec_errors(ts, message):
    with pytest.raises(ValueError, match=message):
        ts.validate(SPEC)


def test_value_width_checked():
    spec = ModalitySpec("image", ("patch",), max_positions=4, value_dim=3)
    TokenSet("image", values=torch.zeros(2, 3)).validate(spec)
    with pytest.raises(ValueError, match="values have width 4, the spec declares 3"):
        TokenSet("image", values=torch.zeros(2, 4)).validate(spec)


def test_spec_needs_one_kind():
    with pytest.raises(ValueError, match="exactly one of vocab_size and value_dim"):
        ModalitySpec("x", ("t",), 4, vocab_size=3, value_dim=2)


def test_next_token_set():
    ts = next_token_set("text", torch.tensor([5, 6, 7, 8]))
    assert ts.ids.tolist() == [5, 6, 7] and ts.targets.tolist() == [6, 7, 8]
    with pytest.raises(ValueError, match="at least 2 ids"):
        next_token_set("text", torch.tensor([5]))


def test_collate_pads_and_masks():
    a = TokenSet("text", ids=torch.tensor([1, 2, 3]), targets=torch.tensor([2, 3, 4]))
    b = TokenSet("text", ids=torch.tensor([7]), targets=torch.tensor([8]))
    batch = collate([a, b], pad_to_multiple=4)
    assert batch.shape == (2, 4)
    assert batch.ids.tolist() == [[1, 2, 3, 0], [7, 0, 0, 0]]
    assert batch.mask.tolist() == [[True, True, True, False], [True, False, False, False]]
    assert batch.targets.tolist() == [[2, 3, 4, 0], [8, 0, 0, 0]]
    assert batch.segments is None
    assert padding_fraction(batch) == pytest.approx(0.5)


def test_collate_values_and_mismatch():
    a = TokenSet("image", values=torch.randn(2, 3))
    b = TokenSet("image", values=torch.randn(4, 3))
    batch = collate([a, b])
    assert batch.values.shape == (2, 4, 3) and torch.equal(batch.values[0, :2], a.values)
    with pytest.raises(ValueError, match="sample 1 has modality"):
        collate([a, TokenSet("text", ids=torch.tensor([1]))])
    with pytest.raises(ValueError, match="value width"):
        collate([a, TokenSet("image", values=torch.randn(1, 5))])
    # a field of another dtype or per-token shape: refused, padded or not (padding used to cast it to sample 0's)
    ints = TokenSet("x", values=torch.zeros(2, 1), targets=torch.tensor([1, 2]))
    for n in (2, 3):
        with pytest.raises(ValueError, match=r"collate: sample 1 has targets of float32 per-token shape \(\), sample 0 int64 \(\)"):
            collate([ints, TokenSet("x", values=torch.zeros(n, 1), targets=torch.tensor([0.5, 1.5, 2.7][:n]))])
    with pytest.raises(ValueError, match=r"sample 1 has targets of int64 per-token shape \(2,\)"):
        collate([ints, TokenSet("x", values=torch.zeros(2, 1), targets=torch.ones(2, 2, dtype=torch.long))])


def test_pack_first_fit_and_segments():
    sets = [TokenSet("text", ids=torch.full((n,), n)) for n in (5, 3, 2, 4, 1)]
    batch = pack(sets, row_length=6)
    assert batch.shape[1] == 6
    assert batch.mask.sum().item() == 15
    # every set lands whole in one row, positions restart at 0 within its segment
    for b in range(batch.shape[0]):
        for seg in set(batch.segments[b].tolist()) - {-1}:
            sel = batch.segments[b] == seg
            ids = batch.ids[b][sel]
            assert len(set(ids.tolist())) == 1 and len(ids) == ids[0].item()
            assert batch.positions[b][sel].tolist() == list(range(len(ids)))
    assert padding_fraction(batch) < padding_fraction(collate(sets))
    with pytest.raises(ValueError, match="longer than row_length"):
        pack(sets, row_length=4)


def test_collate_examples_targets_and_specs():
    ex = [{"text": TokenSet("text", ids=torch.tensor([1, 2])), "targets": {"cls": 3}} for _ in range(2)]
    inputs, targets = collate_examples(ex, specs={"text": SPEC})
    assert inputs["text"].shape == (2, 2) and targets["cls"].tolist() == [3, 3]
    bad = [{"text": TokenSet("text", ids=torch.tensor([1, 20]))}]
    with pytest.raises(ValueError, match="ids must lie"):
        collate_examples(bad, specs={"text": SPEC})
    extra = {**ex[0], "image": TokenSet("image", values=torch.randn(2, 3))}
    with pytest.raises(ValueError, match=r"example 2 holds \['image', 'text'\] with targets \['cls'\], example 0 \['text'\]"):
        collate_examples([*ex, extra])  # a modality in a later example is not dropped silently
    with pytest.raises(ValueError, match=r"example 1 holds \['text'\] with targets \[\]"):
        collate_examples([ex[0], {"text": ex[1]["text"]}])
    text = ex[0]["text"]
    floats = collate_examples([{"text": text, "targets": {"r": 0.5}}, {"text": text, "targets": {"r": 0.25}}])[1]["r"]
    assert floats.dtype == torch.float32  # (a Python float, as torch makes it: not numpy's float64)
    for examples, error, message in (
        ([ex[0], {"text": text, "targets": {"cls": [1, 2]}}], ValueError, r"example 1's targets\['cls'\] has shape \(2,\), example 0's \(\)"),
        ([{"text": text, "targets": {"cls": None}}], ValueError, r"example 0's targets\['cls'\] is None; expected a number or an array"),
        ([{"text": text, "targets": {"cls": "a"}}], ValueError, r"targets\['cls'\] is 'a'"),
        ([[text]], TypeError, r"example 0 is a list; expected a dict \{modality: TokenSet"),
        ([{"text": text, "targets": [1]}], TypeError, r"example 0's targets: list; expected a dict \{head name: target\}")):  # fmt: skip
        with pytest.raises(error, match=message):
            collate_examples(examples)


def test_pack_examples_names_the_example_that_disagrees():
    from tokenizers_mm import pack_examples

    examples = [{"t": TokenSet("t", ids=torch.tensor([1]))}, {"a": TokenSet("a", values=torch.zeros(3, 80))},
                {"a": TokenSet("a", values=torch.zeros(3, 160))}]  # fmt: skip
    with pytest.raises(ValueError, match="pack_examples \\(a\\): sample 2 has value width 160, sample 1 has 80"):
        pack_examples(examples, 8)
    with pytest.raises(TypeError, match="pack_examples: example 0 is a TokenSet; expected a dict"):
        pack_examples([examples[0]["t"]], 8)
    with pytest.raises(ValueError, match=r"example 0 carries targets for heads \['cls'\]; packed rows take per-token targets in the TokenSets"):
        pack_examples([{**examples[0], "targets": {"cls": 1}}], 8)  # (not dropped silently)


def test_batch_to_keeps_fields():
    batch = collate([TokenSet("text", ids=torch.tensor([1, 2]))])
    moved = batch.to("cpu")
    assert isinstance(moved, TokenBatch) and torch.equal(moved.ids, batch.ids) and moved.modality == "text"


def test_examples_longer_than_a_row_get_a_row_each_and_no_row_is_only_padding():
    from tokenizers_mm import pack_examples

    examples = [{"audio": TokenSet("audio", values=torch.randn(300, 4)), "text": TokenSet("text", ids=torch.arange(20))} for _ in range(4)]
    out, placement = pack_examples(examples, 256, {"audio": 2})
    assert out["audio"].shape[0] == 4 and sorted(r for r, _ in placement) == [0, 1, 2, 3]
    assert bool(out["audio"].mask.any(1).all()) and bool(out["text"].mask.any(1).all())


def test_text_decoders_read_one_sequence_of_integer_ids_and_say_so_otherwise():
    """Both text decoders take a TokenSet, a 1-D tensor / array or a list of ints (a 0-d tensor: one
    id); a (B, N) batch, float ids and a non-TokenSet in a batch are one-line errors."""
    import numpy as np

    from tokenizers_mm import BPETokenizer, CharTokenizer, collate, pack

    bpe, char = BPETokenizer.train(["hello world hello there " * 20], 270), CharTokenizer()
    for tok in (bpe, char):
        ids = [int(i) for i in tok.encode_ids("hello")]
        assert tok.decode(torch.tensor(ids)) == tok.decode(np.array(ids, dtype=np.uint32)) == tok.decode(list(ids)) == "hello"
        assert tok.decode(torch.tensor(int(ids[0]))) == tok.decode([ids[0]]) != ""
        with pytest.raises(ValueError, match=rf"decode reads one sequence of ids, got shape \(1, {len(ids)}\); decode a batch row by row"):
            tok.decode(torch.tensor([ids]))
        with pytest.raises(TypeError, match="decode reads integer token ids, got"):
            tok.decode(np.array(ids, dtype=np.float64))
    assert char.decode(char.encode_ids("a\ud800b")) == "a\ufffdb" == bpe.decode(bpe.encode_ids("a\ud800b"))  # a lone surrogate: U+FFFD
    assert bpe.decode(np.array([])) == char.decode(torch.tensor([])) == "" and bpe.decode_bytes(torch.tensor([104])) == b"h"
    reversed_ids = np.arange(5)[::-1]  # a numpy view with a negative stride
    assert TokenSet("text", ids=reversed_ids).ids.tolist() == [4, 3, 2, 1, 0]
    with pytest.raises(ValueError, match=r"ids must have shape \(N\), got \(\)"):  # a numpy scalar stays 0-d: refused as a 0-d tensor is
        TokenSet("text", ids=np.int64(5))
    meta = TokenSet("text", ids=torch.zeros(4, dtype=torch.long, device="meta"))  # defaults on the tokens' device, no values read
    assert meta.positions.device.type == meta.types.device.type == "meta"
    one = TokenSet("text", ids=torch.tensor([1, 2]))
    with pytest.raises(TypeError, match="collate: sample 1 is a str, not a TokenSet"):
        collate([one, "x"])
    with pytest.raises(ValueError, match="collate: pad_to_multiple=0 must be a whole number of at least 1"):
        collate([one], pad_to_multiple=0)
    with pytest.raises(ValueError, match="pack: row_length=0 must be a whole number of at least 1"):
        pack([one], row_length=0)
    from tokenizers_mm import pack_examples

    with pytest.raises(ValueError, match=r"pack_examples: stride\['text'\]=0 must be a whole number of at least 1"):
        pack_examples([{"text": one}], row_tokens=8, stride={"text": 0})


def test_python_api_mistakes_are_named():
    """One TokenSet where collate takes a list, and a plain list of ids for next_token_set."""
    ts = TokenSet("text", ids=torch.tensor([1, 2, 3]))
    with pytest.raises(TypeError, match=r"collate: takes a list of TokenSets, got one TokenSet \(collate\(\[ts\]\) batches it alone\)"):
        collate(ts)
    with pytest.raises(ValueError, match="collate: need at least one TokenSet"):
        collate([])
    example = next_token_set("text", [5, 6, 7])  # a list is read as the ids it holds
    assert example.ids.tolist() == [5, 6] and example.targets.tolist() == [6, 7]
    with pytest.raises(ValueError, match=r"need a 1-D sequence of at least 2 ids, got shape \(1,\)"):
        next_token_set("text", [5])


def test_what_a_library_user_hands_over_is_taken_as_meant():
    """A generator of sets is collated (and packed) as their list; select(i) is the batch of row i
    (t[i] dropped the batch dimension, and the model then named the batch sizes as differing); ids
    in a read-only array (np.frombuffer: tiktoken's, BPETokenizer.encode_ids') raise no torch
    warning about it; a TokenBatch given to a text decoder is one line, not "not iterable"."""
    import warnings

    import numpy as np

    from tokenizers_mm import CharTokenizer

    sets = [TokenSet("text", ids=torch.arange(n)) for n in (3, 5)]
    assert torch.equal(collate(s for s in sets).ids, collate(sets).ids)
    assert torch.equal(pack((s for s in sets), 8).ids, pack(sets, 8).ids)
    batch = collate(sets)
    assert batch.select(1).shape == (1, 5) and torch.equal(batch.select(1).ids, batch.select([1]).ids)
    frozen = np.frombuffer(np.arange(4, dtype=np.uint32).tobytes(), dtype=np.uint32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert TokenSet("text", ids=frozen).ids.tolist() == [0, 1, 2, 3]
    with pytest.raises(TypeError, match=r"^text_char: decode reads one sequence of ids; a TokenBatch holds 2 rows"):
        CharTokenizer("abcdef").decode(batch)
