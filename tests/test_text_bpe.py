"""Byte-level BPE: parity with tiktoken and Hugging Face `tokenizers` on GPT-2's vocabulary,
round trips on arbitrary Unicode, training, special tokens, formats and bad input."""

import gzip
import importlib.util
import inspect
import json
import re
from pathlib import Path

import numpy as np
import pytest
import tiktoken
from hypothesis import given, settings
from hypothesis import strategies as st
from tiktoken.load import load_tiktoken_bpe

from conftest import ROOT, SHARED_DATA
from tokenizers_mm import ENDOFTEXT, PATTERNS, BPETokenizer, load_tokenizer
from tokenizers_mm.text_bpe import read_tiktoken, split_pattern, write_gpt2_files, write_tiktoken


def whisper_asset(name: str) -> Path:
    spec = importlib.util.find_spec("whisper")
    if spec is None:
        pytest.skip("openai-whisper (which ships gpt2.tiktoken) is not installed")
    return Path(spec.submodule_search_locations[0]) / "assets" / name


@pytest.fixture(scope="module")
def gpt2_path() -> Path:
    return whisper_asset("gpt2.tiktoken")


@pytest.fixture(scope="module")
def gpt2(gpt2_path) -> BPETokenizer:
    return BPETokenizer.from_tiktoken_file(gpt2_path)


def mixed_corpus() -> list[str]:
    lines = [
        "Hello world! It's a beautiful day, isn't it? I'll say we've done well.",
        "The quick brown fox jumps over the lazy dog 1234567890 times.",
        "Grüße aus München — naïve café, façade, coöperate.",
        "Здравствуй, мир! Как дела?", "Γειά σου Κόσμε", "שלום עולם", "مرحبا بالعالم", "नमस्ते दुनिया",
        "你好，世界。我们今天学习分词。", "こんにちは世界、カタカナとひらがな。", "안녕하세요 세계",
        "emoji 🙂🚀👩🏽‍💻🇺🇳 and ZWJ 👨‍👩‍👧‍👦", "combining: e\u0301 a\u0308 n\u0303 \u0915\u093f",
        "", " ", "  ", "\n", "\n\n\n", "\t\ttabs\t", "   leading and trailing   ", "a\r\nb\rc", "\u00a0nbsp\u2009thin\u3000ideographic",
        "x" * 300, "1234567890" * 20, "'''''s'''ll", "<|endoftext|>".replace("|", "｜"),
    ]
    lines += inspect.getsource(inspect).splitlines()[:400]  # source code
    path = SHARED_DATA / "tinyshakespeare.txt"
    if path.exists():
        lines += path.read_text(encoding="utf-8").splitlines()[:2000]  # English prose (verse)
    else:  # note: without ../shared, English prose from Python's own documentation, so merges still learn words
        from pydoc_data.topics import topics

        lines += "\n".join(topics[k] for k in sorted(topics)).splitlines()[:2000]
    return lines


@pytest.mark.parametrize("pattern", ["gpt2", "gpt4"])
def test_ids_equal_tiktoken_on_gpt2_ranks(gpt2_path, pattern):
    ours = BPETokenizer.from_tiktoken_file(gpt2_path, pattern=pattern)
    ref = tiktoken.Encoding("ref", pat_str=PATTERNS[pattern], mergeable_ranks=load_tiktoken_bpe(str(gpt2_path)),
                            special_tokens={ENDOFTEXT: 50256})  # fmt: skip
    corpus = mixed_corpus()
    for line in corpus:
        assert ours.encode_ids(line).tolist() == ref.encode(line), line
    assert ours.encode_ids("\n".join(corpus)).tolist() == ref.encode("\n".join(corpus))
    assert [a.tolist() for a in ours.encode_batch(corpus)] == ref.encode_batch(corpus)


def test_gpt2_known_answers(gpt2):
    assert gpt2.encode_ids("hello world").tolist() == [31373, 995]  # tiktoken's documented example
    assert gpt2.vocab_size == 50257 and gpt2.specials == {ENDOFTEXT: 50256}
    assert gpt2.encode_ids(ENDOFTEXT, allowed_special="all").tolist() == [50256]
    assert gpt2.encode_ids(ENDOFTEXT, disallowed_special=()).tolist() == [27, 91, 437, 1659, 5239, 91, 29]


def test_gpt2_vocab_json_merges_txt_equal_tiktoken_and_hf(gpt2, tmp_path):
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers

    vocab, merges = write_gpt2_files(gpt2.ranks, gpt2.specials, tmp_path)
    ours = BPETokenizer.from_gpt2_files(vocab, merges)
    assert ours.ranks == gpt2.ranks and ours.specials == {ENDOFTEXT: 50256}
    hf = HFTokenizer(models.BPE.from_file(str(vocab), str(merges)))
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    for line in mixed_corpus()[:300]:
        ids = ours.encode_ids(line).tolist()
        assert ids == hf.encode(line).ids == gpt2.encode_ids(line).tolist(), line


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(exclude_categories=("Cs",))))
def test_round_trip_arbitrary_unicode(gpt2, text):
    assert gpt2.decode(gpt2.encode_ids(text, disallowed_special=())) == text  # (hypothesis draws "<|endoftext|>" from the source)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> BPETokenizer:
    text = "\n".join(mixed_corpus())
    return BPETokenizer.train([text], vocab_size=600, specials=(ENDOFTEXT, "<|pad|>"), max_positions=512)


@settings(max_examples=150, deadline=None)
@given(st.text())
def test_trained_round_trip(trained, text):
    out = trained.decode(trained.encode_ids(text, disallowed_special=()))
    assert out == text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")  # lone surrogates -> U+FFFD


def test_training_learns_merges_and_specials(trained):
    assert trained.vocab_size == 600 and len(trained.ranks) == 598
    assert trained.specials == {ENDOFTEXT: 598, "<|pad|>": 599}
    text = "The quick brown fox jumps over the lazy dog."
    assert len(trained.encode_ids(text)) < 0.7 * len(text.encode())  # merges compress
    assert len(trained.encode_ids(" the the the")) == 3  # a frequent word is one token
    assert trained.encode_ids("a<|pad|>b", allowed_special={"<|pad|>"}).tolist()[1] == 599
    ts = trained.encode("hello")
    ts.validate(trained.spec)


def test_special_token_in_user_text_is_an_error(trained):
    with pytest.raises(ValueError, match=r"contains the special token '<\|endoftext\|>'"):
        trained.encode_ids(f"user text {ENDOFTEXT} more")
    ids = trained.encode_ids(f"x{ENDOFTEXT}", disallowed_special=())
    assert 598 not in ids.tolist() and trained.decode(ids) == f"x{ENDOFTEXT}"


def test_save_load_round_trip(trained, tmp_path):
    trained.save(tmp_path)
    assert (tmp_path / "ranks.tiktoken").exists() and json.loads((tmp_path / "tokenizer.json").read_text())["name"] == "text"
    back = load_tokenizer(tmp_path)
    assert isinstance(back, BPETokenizer) and back.ranks == trained.ranks and back.specials == trained.specials
    assert back.encode_ids("round trip").tolist() == trained.encode_ids("round trip").tolist()
    assert load_tiktoken_bpe(str(tmp_path / "ranks.tiktoken")) == trained.ranks  # tiktoken reads our file


def test_train_from_files_and_bad_input(tmp_path):
    good = tmp_path / "good.txt"
    good.write_text("abc abc abd " * 50, encoding="utf-8")
    tok = BPETokenizer.train_from_files([good], vocab_size=270)
    assert 257 < tok.vocab_size <= 270  # a tiny corpus runs out of pairs to merge before 270
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"fine text \xff\xfe broken")
    with pytest.raises(ValueError, match=r"bad.txt is not UTF-8 \(invalid byte 0xff at offset 10\)"):
        BPETokenizer.train_from_files([good, bad], vocab_size=300)
    with pytest.raises(ValueError, match="vocab_size=200 is smaller than 256 bytes \\+ 1 special"):
        BPETokenizer.train(["abc"], vocab_size=200)
    assert BPETokenizer.train_from_files(str(good), vocab_size=270).ranks == tok.ranks  # one path as a list of one
    with pytest.raises(FileNotFoundError, match=r"^training file .*none.txt does not exist$"):
        BPETokenizer.train_from_files([good, tmp_path / "none.txt"], vocab_size=270)
    with pytest.raises(ValueError, match=r"^training file \S+ is a folder; expected a UTF-8 text file$"):
        BPETokenizer.train_from_files([tmp_path], vocab_size=270)
    (tmp_path / "good.txt.gz").write_bytes(gzip.compress(good.read_bytes()))
    with pytest.raises(ValueError, match=r"^training file \S+good.txt.gz is gzip-compressed; decompress it$"):
        BPETokenizer.train_from_files([tmp_path / "good.txt.gz"], vocab_size=270)
    (tmp_path / "bom.txt").write_bytes(b"\xef\xbb\xbf" + good.read_bytes())  # a byte-order mark (Windows editors) is no text
    assert BPETokenizer.train_from_files(tmp_path / "bom.txt", vocab_size=270).ranks == tok.ranks
    with pytest.raises(ValueError, match=r"^text: no training text: the texts given are empty or none"):
        BPETokenizer.train(iter(["", ""]), vocab_size=270)  # (a generator already used up gives none)
    assert BPETokenizer.train(["abc abc abd " * 50], vocab_size=np.int64(270)).ranks == tok.ranks  # a NumPy integer is a size
    with pytest.raises(TypeError, match=r"^text: vocab_size is a whole number of ids, got float 270.0$"):
        BPETokenizer.train(["abc"], vocab_size=270.0)
    with pytest.raises(TypeError, match=r"^text: pattern is 'gpt2' or 'gpt4' or a regex, got NoneType$"):
        BPETokenizer.train(["abc"], vocab_size=270, pattern=None)
    with pytest.raises(TypeError, match=r"^text: encode_batch takes a list of texts \(encode_batch\(\[text\]\)\), not one string"):
        tok.encode_batch("abc")
    with pytest.raises(FileExistsError, match=r"^tokenizer 'text': \S+good.txt is a file; save writes a folder"):
        tok.save(good)


def test_corrupt_vocabulary_files(tmp_path, gpt2):
    path = tmp_path / "v.tiktoken"
    write_tiktoken(gpt2.ranks, path)
    assert read_tiktoken(path) == gpt2.ranks
    lines = path.read_bytes().splitlines()
    path.write_bytes(b"\n".join(lines[:100] + [b"!!notbase64 100"] + lines[101:]))
    with pytest.raises(ValueError, match="line 101: expected 'base64-token rank'"):
        read_tiktoken(path)
    path.write_bytes(b"\n".join(lines[:1000]))  # truncated: fine ranks but ...
    read_tiktoken(path)
    path.write_bytes(b"\n".join(lines[5:1000]))  # single bytes missing
    with pytest.raises(ValueError, match="needs all 256 single bytes"):
        read_tiktoken(path)
    (tmp_path / "vocab.json").write_text("{broken")
    (tmp_path / "merges.txt").write_text("")
    with pytest.raises(ValueError, match="not valid JSON"):
        BPETokenizer.from_gpt2_files(tmp_path / "vocab.json", tmp_path / "merges.txt")
    (tmp_path / "vocab.json").write_text('{"a": 0}')
    (tmp_path / "merges.txt").write_text("#version: 0.2\na b\nab c d\n")  # the bad merge is the file's line 3
    with pytest.raises(ValueError, match="merges.txt, line 3: expected two tokens"):
        BPETokenizer.from_gpt2_files(tmp_path / "vocab.json", tmp_path / "merges.txt")
    (tmp_path / "merges.txt").write_bytes(b"#version: 0.2\na b\n\xff\n")
    with pytest.raises(ValueError, match=r"^GPT-2 merges \S+merges.txt is not UTF-8 \(invalid byte 0xff at offset 18\)$"):
        BPETokenizer.from_gpt2_files(tmp_path / "vocab.json", tmp_path / "merges.txt")
    with pytest.raises(FileNotFoundError, match=r"^GPT-2 vocabulary \S+none.json does not exist$"):
        BPETokenizer.from_gpt2_files(tmp_path / "none.json", tmp_path / "merges.txt")


def test_batch_encoding_matches_single(gpt2):
    texts = mixed_corpus()
    batched = gpt2.encode_batch(texts, num_threads=2)
    assert all(np.array_equal(a, gpt2.encode_ids(t)) for a, t in zip(batched, texts))


def test_gpt4_pattern_training_learns_only_tokens_encoding_can_make():
    """GPT-4's pattern splits digits into runs of at most 3: training (HF's engine) must split the same
    way, or it spends merges on longer digit runs that encoding never produces."""
    tok = BPETokenizer.train(["order 1234567 and 7654321 and 99999 " * 200], vocab_size=300, pattern="gpt4")
    learned = [t for t, r in tok.ranks.items() if r >= 256]
    assert learned and not any(re.search(rb"\d{4}", t) for t in learned)
    ids = tok.encode("1234567").ids.tolist()
    by_rank = {r: t for t, r in tok.ranks.items()}
    assert b"".join(by_rank[i] for i in ids) == b"1234567" and max(len(by_rank[i]) for i in ids) <= 3


@pytest.mark.parametrize("pattern", ["gpt2", "gpt4"])
def test_training_merges_equal_hugging_face_trainers_on_each_text_alone(pattern):
    """train hands the trainer texts joined into blocks (joined_texts), special tokens' text cut
    out: the merges, in order, are those of Hugging Face's BpeTrainer given each text on its own
    (the pieces never cross from one text into the next)."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers

    from tokenizers_mm.text_bpe import TEXT_BLOCK, bytes_to_unicode, onig_pattern

    code = "".join((ROOT / f).read_text() for f in ("recipes/train.py", "models/transformer.py"))
    lines = code.splitlines(keepends=True) + ["tail  ", "  \n", "<|endoftext|>x  <|endoftext|>y\n\n", "ü 🙂\r\n", "end"]
    assert sum(map(len, lines)) > 3 * TEXT_BLOCK  # several blocks
    hf = Tokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(onig_pattern(split_pattern(pattern))), behavior="isolated"),
                                                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])  # fmt: skip
    alone = [part for line in lines for part in line.split(ENDOFTEXT) if part]
    hf.train_from_iterator(alone, trainers.BpeTrainer(vocab_size=700, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    byte_of = {c: b for b, c in bytes_to_unicode().items()}  # (a merge's two sides in GPT-2's byte-to-character map)
    merges = [bytes(byte_of[c] for c in a + b) for a, b in json.loads(hf.to_str())["model"]["merges"]]
    ours = BPETokenizer.train(lines, 701, pattern=pattern)
    assert [t for t, r in sorted(ours.ranks.items(), key=lambda kv: kv[1])][256:] == merges


def test_a_training_text_that_holds_the_block_separator_is_trained_alone():
    """joined_texts' separator is two Unicode noncharacters; a text that holds them goes to the
    trainer on its own and is cut there, a str that is not text a clear error."""
    from tokenizers_mm.text_bpe import TEXT_SEP, joined_texts

    odd = "ab" + TEXT_SEP + "ab"
    assert list(joined_texts(["x\n", odd, "y"], size=100)) == [odd, "x\n" + TEXT_SEP + "y"]
    ranks = BPETokenizer.train([odd] * 50 + ["cd cd"], 262).ranks
    assert b"ab" in ranks and not any(len(t) > 1 and t[0] >= 0x80 for t in ranks)  # the separator's bytes never merged
    special = BPETokenizer.train([ENDOFTEXT * 50 + TEXT_SEP + "ab"], 300).ranks  # its special tokens' text still cut out
    assert sorted(special, key=special.get)[256:] == [b"ab"]
    with pytest.raises(TypeError, match=r"training text 1 is bytes, expected str \(or a batch of str\)"):
        BPETokenizer.train(["ok", b"raw"], 300)
    with pytest.raises(TypeError, match=r"training text 1, item 1, is bytes, expected str$"):
        BPETokenizer.train(["ok", ["fine", b"raw"]], 300)


def test_training_takes_batches_of_texts_as_hugging_faces_trainer():
    """An item may be a batch of strings (a dataset's `ds[i:i + 1000]["text"]`: a list, or a numpy
    array with_format("numpy"), as HF's train_from_iterator takes): the same ranks as the texts one by one."""
    texts = ["hello world foo bar\n"] * 200 + ["the quick brown fox<|endoftext|>\n"] * 100
    alone = BPETokenizer.train(texts, 290).ranks
    assert BPETokenizer.train((texts[i : i + 64] for i in range(0, len(texts), 64)), 290).ranks == alone
    assert BPETokenizer.train((np.array(texts[i : i + 64]) for i in range(0, len(texts), 64)), 290).ranks == alone  # with_format("numpy")


@pytest.mark.parametrize("pattern", ["gpt2", "gpt4"])
def test_training_on_cut_text_learns_what_the_whole_text_teaches(pattern, tmp_path):
    """training_texts cuts where every piece ends anyway: the ranks of the whole text (what encoding
    splits), which cutting at every line would not give for indented code ("\n    ") or trailing spaces."""
    from tokenizers_mm.text_bpe import training_texts

    code = "".join((ROOT / f).read_text() for f in ("recipes/train.py", "models/transformer.py")) + "x  \r\n\r\n  y\n\n\nz \n w\t\n\tq\n"
    parts = training_texts(code)
    assert "".join(parts) == code and len(parts) > 50  # (top-level lines: indented ones stay with the line before)
    whole = BPETokenizer.train([code], 600, pattern=pattern)
    assert BPETokenizer.train(parts, 600, pattern=pattern).ranks == whole.ranks
    (tmp_path / "code.py").write_text(code)
    assert BPETokenizer.train_from_files(tmp_path / "code.py", 600, pattern=pattern).ranks == whole.ranks
    if pattern == "gpt2":  # a pattern of one's own may join a newline to the next line ("\nThe"): its text stays whole
        own = r"\s*\S+|\s+"
        assert training_texts(code, own) == [code]
        assert BPETokenizer.train_from_files(tmp_path / "code.py", 600, pattern=own).ranks == BPETokenizer.train([code], 600, pattern=own).ranks
    by_line = BPETokenizer.train(code.splitlines(keepends=True), 600, pattern=pattern)
    assert len(whole.encode_ids(code, disallowed_special=())) < len(by_line.encode_ids(code, disallowed_special=()))


@pytest.mark.parametrize("pattern", ["gpt2", "gpt4", r"\p{L}+|\p{N}{1,3}+|\s+|[^\p{L}\p{N}\s]+"])
def test_a_hugging_face_tokenizer_json_reads_back_with_its_split(pattern, tmp_path):
    """What tokenizers_mm.hf writes (a Split regex, then ByteLevel) reads back with the same split:
    the same ids; a pattern= that would split otherwise, or a normalizer, is refused."""
    from tokenizers_mm.hf import save_hf

    tok = BPETokenizer.train(mixed_corpus(), 400, pattern=pattern)
    path = save_hf(tok, tmp_path / "hf")
    back = BPETokenizer.from_hf_tokenizer_json(path)
    assert back.ranks == tok.ranks and back.specials == tok.specials and split_pattern(back.pattern_name) == split_pattern(pattern)
    text = "end.\nstart. 1234567 don't  \n\tx"
    assert back.encode_ids(text).tolist() == tok.encode_ids(text).tolist()
    if pattern != "gpt2":
        with pytest.raises(ValueError, match=r"^tokenizer \S+tokenizer.json: it splits text with .*; pattern='gpt2' would split it otherwise"):
            BPETokenizer.from_hf_tokenizer_json(path, pattern="gpt2")
    doc = json.loads(path.read_text())
    if pattern == "gpt4":  # a foreign regex that would drop text: refused, the file named
        split = doc["pre_tokenizer"]["pretokenizers"][0]
        path.write_text(json.dumps({**doc, "pre_tokenizer": {**doc["pre_tokenizer"], "pretokenizers": [
            {**split, "pattern": {"Regex": r"\p{L}+|\s+"}}, doc["pre_tokenizer"]["pretokenizers"][1]]}}))  # fmt: skip
        with pytest.raises(ValueError, match=r"^tokenizer \S+tokenizer.json: text: pattern .* would drop text"):
            BPETokenizer.from_hf_tokenizer_json(path)
    path.write_text(json.dumps({**doc, "normalizer": {"type": "Lowercase"}}))
    with pytest.raises(ValueError, match="after a normalizer; expected GPT-style byte-level BPE"):
        BPETokenizer.from_hf_tokenizer_json(path)


def test_a_byte_vocabulary_exported_to_hugging_face_reads_back(tmp_path):
    """A byte tokenizer (CharTokenizer without characters) exports as byte-level BPE without merges
    and a ByteLevel pre-tokenizer without a split: no split changes single bytes, so it is read."""
    from tokenizers_mm import CharTokenizer
    from tokenizers_mm.hf import save_hf

    back = BPETokenizer.from_hf_tokenizer_json(save_hf(CharTokenizer(), tmp_path / "bytes"))
    text = "héllo 🙂\n  x"
    assert back.encode_ids(text).tolist() == list(text.encode()) and back.decode(back.encode_ids(text)) == text


def test_hugging_face_files_read_back_with_their_own_tokens_alone(tmp_path):
    """A file's vocabulary as the file holds it: without special tokens, none is added (an
    <|endoftext|> was, one id more than the model of those files); added tokens that are not
    special (HF matches them in any text) are tokens too, at HF's ids (they were dropped, their ids
    gaps); an id in a gap is one line in decode_bytes as in decode (was a KeyError)."""
    from tokenizers import Tokenizer

    from tokenizers_mm.hf import save_hf

    tok = BPETokenizer.train(["hello world, hello there. The quick brown fox.\n" * 50], 300, specials=[])
    path = save_hf(tok, tmp_path / "hf")
    back = BPETokenizer.from_hf_tokenizer_json(path)
    assert back.specials == {} and back.vocab_size == tok.vocab_size
    vocab, merges = write_gpt2_files(tok.ranks, {}, tmp_path / "gpt2")
    assert BPETokenizer.from_gpt2_files(vocab, merges).vocab_size == tok.vocab_size
    hf = Tokenizer.from_file(str(path))
    hf.add_tokens(["<|user|>"])
    hf.add_special_tokens(["<|pad|>"])
    hf.save(str(tmp_path / "added.json"))
    added = BPETokenizer.from_hf_tokenizer_json(tmp_path / "added.json")
    text = "hi <|user|> x<|pad|>"
    assert added.vocab_size == hf.get_vocab_size() and added.encode_ids(text, allowed_special="all").tolist() == hf.encode(text).ids
    assert added.decode(hf.encode(text).ids) == text
    doc = json.loads(path.read_text())  # crafted added tokens: one line naming the file (a 3e9 id asked for a table of 3e9 rows)
    for added, message in (("<|x|>", r"added token <\|x\|>: expected an object with a string 'content' and an integer 'id'"),
                           ({"content": "<|x|>", "id": "300"}, r"added token .*: expected an object with a string 'content' and an integer"),
                           ({"content": "<|x|>", "id": -5}, r"text: special token '<\|x\|>' has id -5; expected a whole number from 0"),
                           ({"content": "<|x|>", "id": 3_000_000_000}, r"text: special token ids reach 3,000,000,000, leaving more than 65,536")):  # fmt: skip
        (tmp_path / "crafted.json").write_text(json.dumps({**doc, "added_tokens": [added]}))
        with pytest.raises(ValueError, match=rf"^tokenizer \S+crafted.json: {message}"):
            BPETokenizer.from_hf_tokenizer_json(tmp_path / "crafted.json")
    gappy = BPETokenizer(tok.ranks, specials={ENDOFTEXT: tok.vocab_size + 2})
    for decode in (gappy.decode, gappy.decode_bytes):
        with pytest.raises(ValueError, match=rf"text: id {tok.vocab_size} is no token of this vocabulary \(its ids below {tok.vocab_size + 3} have gaps\)"):
            decode([65, tok.vocab_size])


def test_a_pattern_that_would_drop_text_is_refused():
    """tiktoken keeps only what the split pattern matches: a misspelt name (taken for a regex) would
    encode "hello world" as nothing, so a pattern must match every character of a probe text."""
    with pytest.raises(ValueError, match=r"pattern 'GPT4' would drop text .*give 'gpt2' or 'gpt4'"):
        BPETokenizer.train(["hello world"] * 10, 300, pattern="GPT4")
    with pytest.raises(ValueError, match=r"pattern '\(' is neither 'gpt2' nor 'gpt4' nor a valid regex"):
        BPETokenizer(BPETokenizer.train(["ab"], 260).ranks, pattern="(")
    own = BPETokenizer.train(["hello world\n"] * 10, 300, pattern=r"\w+|\s+|[^\w\s]+")  # a regex of one's own: kept
    assert own.decode(own.encode_ids("hello, wörld 🙂\n")) == "hello, wörld 🙂\n"
    with pytest.raises(ValueError, match="a split pattern must not match the empty string"):
        BPETokenizer(own.ranks, pattern=r"\w*|\s*")  # (tiktoken's Rust core would panic)
    with pytest.raises(ValueError, match="would drop text"):  # combining marks and format characters are text too
        BPETokenizer(own.ranks, pattern=r"[\p{L}\p{N}]+|\s+|[\p{P}\p{S}\p{Cc}]+")
    with pytest.raises(TypeError, match="an iterable of texts .*not one string"):
        BPETokenizer.train("hello world", 300)  # each character would be a text: no merges
    with pytest.raises(ValueError, match="would drop text"):  # private-use, unassigned and tag characters are text too
        BPETokenizer(own.ranks, pattern=r"\p{L}+|\p{N}+|\s+|\p{P}+|\p{S}+|\p{M}+|\p{Cc}|\p{Cf}")


def test_special_tokens_repeated_or_empty_are_refused_and_a_tokenizer_pickles(trained):
    """A repeated special token left an id no token decodes to (a model could sample it); an empty
    one matched between every two characters. A tokenizer pickles and deep-copies as tiktoken's
    Encoding does (spawned DataLoader workers), rebuilding tiktoken's core from its ranks."""
    import copy
    import pickle

    from tokenizers_mm import CharTokenizer

    for make in (lambda specials: BPETokenizer.train(["hello hello"], 300, specials=specials), lambda specials: CharTokenizer(specials=specials)):
        with pytest.raises(ValueError, match=r"special tokens \['<\|a\|>'\] are given more than once"):
            make(["<|a|>", "<|a|>"])
        with pytest.raises(ValueError, match=r"special token '': expected a non-empty string"):
            make([""])
    with pytest.raises(ValueError, match=r"special tokens share ids"):
        BPETokenizer(trained.ranks, specials={"<|a|>": 900, "<|b|>": 900})
    text = "hello world<|endoftext|>"
    for again in (pickle.loads(pickle.dumps(trained)), copy.deepcopy(trained)):
        assert again.encode_ids(text, allowed_special="all").tolist() == trained.encode_ids(text, allowed_special="all").tolist()
        assert again.decode(again.encode_ids("héllo 🙂")) == "héllo 🙂"


def test_a_hugging_face_tokenizer_trained_with_special_tokens_first_is_named(tmp_path):
    """Hugging Face's ByteLevelBPETokenizer.train puts special_tokens at the first ids; byte-level BPE
    here (tiktoken) needs the bytes and merges at 0..N-1: the special token and its id are named
    (it said "ranks must be 0..N without gaps")."""
    from tokenizers import ByteLevelBPETokenizer

    (tmp_path / "corpus.txt").write_text("hello world hello there\nsome more text here\n")
    hf = ByteLevelBPETokenizer()
    hf.train([str(tmp_path / "corpus.txt")], vocab_size=300, special_tokens=[ENDOFTEXT], show_progress=False)
    hf.save(str(tmp_path / "tokenizer.json"))
    with pytest.raises(ValueError, match=r"special token '<\|endoftext\|>' has id 0, among the BPE tokens' ids .*take ids 0\.\.\d+ and special tokens the ids after"):
        BPETokenizer.from_hf_tokenizer_json(tmp_path / "tokenizer.json")


@pytest.mark.parametrize("name, n_vocab, n_languages", [("multilingual", 51865, 99), ("gpt2", 51864, 99), ("multilingual", 51866, 100)])
def test_whisper_vocabularies_equal_openai_whisper(name, n_vocab, n_languages):
    """BPETokenizer.whisper: ids, special tokens and prompt ids as openai-whisper's tokenizer, for the
    English-only, multilingual and large-v3 (100 languages) vocabularies."""
    import os

    whisper_tokenizer = pytest.importorskip("whisper.tokenizer")
    from tokenizers_mm.text_bpe import WHISPER_LANGUAGES

    assert WHISPER_LANGUAGES == tuple(whisper_tokenizer.LANGUAGES)
    ranks_file = os.path.join(os.path.dirname(whisper_tokenizer.__file__), "assets", f"{name}.tiktoken")
    ours = BPETokenizer.whisper(ranks_file, n_vocab)
    ref = whisper_tokenizer.get_tokenizer(name == "multilingual", num_languages=n_languages)
    from tokenizers_mm.hf import PROBE

    text = " Hello world, 12345 ça va? 中文 don't  x\n\tÜber 3.14159 — ok" + PROBE + "  \n \n\t  "  # whitespace runs, at the end too
    assert [int(i) for i in ours.encode_ids(text)] == ref.encoding.encode(text)
    assert ours.special_ids == ref.encoding._special_tokens and ours.vocab_size == ref.encoding.n_vocab == n_vocab
    assert ours.decode(ref.encoding.encode(text)) == text
    with pytest.raises(ValueError, match="a Whisper model of 60000 outputs does not fit the"):
        BPETokenizer.whisper(ranks_file, 60000)
