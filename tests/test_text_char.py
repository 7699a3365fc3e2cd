import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenizers_mm import ENDOFTEXT, CharTokenizer, Tokenizer, create, list_tokenizers, load_tokenizer


def test_known_answer_char_vocab():
    tok = CharTokenizer.from_corpus("hello world")
    assert tok.chars == " dehlorw"
    assert tok.encode_ids("hello") == [3, 2, 4, 4, 5]
    assert tok.vocab_size == 9 and tok.special_ids == {ENDOFTEXT: 8}
    assert tok.decode([3, 2, 4, 4, 5, 8]) == "hello" + ENDOFTEXT


def test_unknown_character_is_named():
    tok = CharTokenizer.from_corpus("abc")
    with pytest.raises(ValueError, match=r"character 'z' \(at offset 2\) is not in the vocabulary"):
        tok.encode_ids("abz")
    with pytest.raises(ValueError, match=r"character 'z' \(at offset 20\) is not"):  # counted in the whole text, specials too
        tok.encode_ids(f"abcab{ENDOFTEXT}abz", allowed_special="all")


def test_specials_only_when_allowed():
    tok = CharTokenizer()  # bytes
    text = f"a{ENDOFTEXT}b"
    plain = tok.encode_ids(text)
    assert len(plain) == len(text.encode()) and 256 not in plain  # never produced from plain text
    assert tok.encode_ids(text, allowed_special="all") == [97, 256, 98]
    assert tok.encode_ids(text, allowed_special={ENDOFTEXT}) == [97, 256, 98]
    assert tok.decode(tok.encode_ids(text, allowed_special="all")) == text
    longer = CharTokenizer(specials=["<|a|>", "<|a|>b"])  # a longer special not allowed hides no allowed one (as tiktoken)
    assert longer.encode_ids("<|a|>b", allowed_special={"<|a|>"}) == [256, 98] and longer.encode_ids("<|a|>b", allowed_special="all") == [257]


def test_encode_returns_tokenset_and_checks_length():
    tok = CharTokenizer(max_positions=4)
    ts = tok.encode("abc")
    assert ts.modality == "text" and ts.ids.tolist() == [97, 98, 99]
    ts.validate(tok.spec)
    with pytest.raises(ValueError, match="exceed max_positions=4"):
        tok.encode("abcde")
    with pytest.raises(TypeError, match="expected a str"):
        tok.encode(b"bytes")


def test_decode_rejects_out_of_vocab():
    with pytest.raises(ValueError, match="outside the vocabulary"):
        CharTokenizer().decode([300])


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_byte_mode_round_trips_any_unicode(text):
    tok = CharTokenizer()
    assert tok.decode(tok.encode_ids(text)) == text


@settings(max_examples=100, deadline=None)
@given(st.text(min_size=1))
def test_char_mode_round_trips_its_corpus(text):
    tok = CharTokenizer.from_corpus(text, max_positions=len(text) + 1)
    assert tok.decode(tok.encode(text)) == text


@pytest.mark.parametrize("tok", [CharTokenizer(), CharTokenizer.from_corpus("xyz\n", specials=("<a>", "<b>"), max_positions=7)])
def test_save_load_round_trip(tok, tmp_path):
    tok.save(tmp_path)
    doc = json.loads((tmp_path / "tokenizer.json").read_text())
    assert doc["format"] == "tokenizers-mm/tokenizer" and doc["version"] == 1 and doc["name"] == "text_char"
    back = load_tokenizer(tmp_path)
    assert isinstance(back, CharTokenizer) and back.config() == tok.config() and back.spec == tok.spec
    assert CharTokenizer.load(tmp_path).vocab_size == tok.vocab_size


def test_load_refuses_bad_files(tmp_path):
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text(json.dumps({"format": "tokenizers-mm/tokenizer", "version": 99, "name": "text_char", "config": {}}))
    with pytest.raises(ValueError, match="format version 99"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text(json.dumps({"format": "tokenizers-mm/tokenizer", "version": 1, "name": "os.system", "config": {}}))
    with pytest.raises(KeyError, match="unknown tokenizer 'os.system'"):
        load_tokenizer(tmp_path)
    with pytest.raises(FileNotFoundError):
        load_tokenizer(tmp_path / "nowhere")


def test_registry_create_and_list():
    assert "text_char" in list_tokenizers()
    tok = create("text_char", chars="ab")
    assert isinstance(tok, Tokenizer) and tok.vocab_size == 3
    with pytest.raises(KeyError, match="registered: .*text_char"):
        create("no_such_tokenizer")


def test_sampling_a_corpus_without_newlines_starts_from_its_first_token():
    """gpt_char samples from "\n" by default; a one-line corpus has no "\n" in its vocabulary."""
    from recipes import gpt_char

    tok = CharTokenizer.from_corpus("abcabcabc", max_positions=16)
    model = gpt_char.build_model(gpt_char.Config(dim=16, depth=1, num_heads=2, block_size=16), tok).eval()
    text = gpt_char.sample(model, tok, "\n", 5, 1.0, None)
    assert text.startswith(tok.decode([0])) and len(text) > len(tok.decode([0]))  # from token 0 (here <|endoftext|>), 5 more


def test_generating_shows_a_bar_of_the_tokens_drawn_and_draws_the_same(monkeypatch):
    """`mmtok generate` (gpt_char.generate) draws with a progress bar on a terminal: it counts the
    steps and leaves the samples as they were."""
    import io

    from recipes import gpt_char

    tok = CharTokenizer.from_corpus("abc\nabc\n", max_positions=16)
    model = gpt_char.build_model(gpt_char.Config(dim=16, depth=1, num_heads=2, block_size=16), tok).eval()
    plain = gpt_char.sample(model, tok, "a", 40, 1.0, None, seed=3, num_samples=2)
    shown = io.StringIO()
    bar = gpt_char.tqdm  # a terminal's: shown (progress=True's disable=None is off where stderr is no terminal)
    monkeypatch.setattr(gpt_char, "tqdm", lambda **kw: bar(**{**kw, "file": shown, "disable": kw["disable"] is not None, "mininterval": 0}))
    assert gpt_char.sample(model, tok, "a", 40, 1.0, None, seed=3, num_samples=2) == plain and not shown.getvalue()  # no bar asked
    assert gpt_char.sample(model, tok, "a", 40, 1.0, None, seed=3, num_samples=2, progress=True) == plain
    assert "generate: 100%" in shown.getvalue() and "40/40" in shown.getvalue()


def test_a_split_too_short_for_a_window_is_named(tmp_path):
    """Which split is short, of which data, and how long it would have to be."""
    from recipes import gpt_char

    (tmp_path / "small.txt").write_text("abcdefghij" * 50)
    cfg = gpt_char.Config(data=str(tmp_path / "small.txt"), block_size=64)
    with pytest.raises(ValueError, match=r"the validation split of .*small.txt \(its own split, or where it has none its last val_fraction=0.1\) holds 50 tokens; "
                                         r"block_size=64 needs at least 65"):  # fmt: skip
        gpt_char.build_data(cfg)
    cfg.val_fraction, cfg.block_size = 0.5, 300
    with pytest.raises(ValueError, match=r"^the training split of .*small.txt holds 250 tokens; block_size=300 needs at least 301$"):
        gpt_char.build_data(cfg)


def test_the_split_point_leaves_a_document_separator_whole(tmp_path):
    """The last val_fraction of the text, cut at a character: a cut inside <|endoftext|> moves past
    it, to training (each half read as plain characters, text the corpus never held)."""
    from recipes import gpt_char

    for before in range(75, 88):  # the cut at 90 lands after the separator (75..77), or inside it
        (tmp_path / "sep.txt").write_text(text := "a" * before + ENDOFTEXT + "b" * (100 - before - len(ENDOFTEXT)))
        train, val = gpt_char.split_text(gpt_char.Config(data=str(tmp_path / "sep.txt")))
        assert train + val == text and train.count(ENDOFTEXT) + val.count(ENDOFTEXT) == 1, before
        assert len(train) == (max(90, before + len(ENDOFTEXT)) if before < 90 < before + len(ENDOFTEXT) else 90), before
