"""Byte-level BPE text tokenizer (registered as `text`): exact on GPT-2's vocabulary, trainable.

Byte-level: text is UTF-8 bytes, every byte is a token, and merges build longer tokens, so any
string round-trips (GPT-2, Radford et al. 2019). A GPT-style regex first splits text into pieces
that merges never cross (GPT-2's or GPT-4's pattern). The hot loops run in well-kept engines:
tiktoken encodes and decodes (its Rust core, threads for batches); Hugging Face `tokenizers`
trains. This file holds the clean interface: vocabulary formats, the special-token policy, save /
load and the TokenSet it emits.

Vocabulary: `ranks` maps token bytes to ids (tiktoken's mergeable ranks, lower = merged earlier);
the 256 single bytes are always present. Special tokens take the ids after the ranks
(`<|endoftext|>` = 50256 on GPT-2's). A special token is never produced from plain text: text
containing one raises an error unless `allowed_special` admits it (then it becomes its id) or
`disallowed_special=()` (then it is encoded as ordinary text) — tiktoken's policy.

Formats read: tiktoken `.tiktoken` (base64 token + rank per line), GPT-2's `vocab.json` +
`merges.txt`, and Hugging Face's byte-level BPE `tokenizer.json`. Saved as `tokenizer.json` (config) + `ranks.tiktoken` (the vocabulary).
"""

from __future__ import annotations

import base64
import contextlib
import functools
import itertools
import json
import numbers
import os
import re
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from .base import Tokenizer, id_list, read_utf8
from .registry import register
from .text_char import ENDOFTEXT, check_specials
from .tokenset import TokenSet, positive

# GPT-style pre-tokenization patterns (tiktoken_ext.openai_public).
PATTERNS = {
    "gpt2": r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s""",
    "gpt4": r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s""",
}
# every kind of character a split pattern must match: tiktoken drops the text its pattern does not
# (combining marks, format characters, private-use, unassigned and tag characters among them)
PATTERN_PROBE = ("Hello, World! It's 2026:\t3.14 -- ok?\r\n  Ünïcode ΑΒΓ 中文 🙂 'LL \u00a0\x00~\n\n"
                 "e\u0301 नमस्ते \u200b\u200d|\u2028x\u00ad¹½\ue000\U000f0000\u0378\U000e0001\n")
RANKS_FILE = "ranks.tiktoken"
# openai-whisper's language tokens, in its order (whisper/tokenizer.py LANGUAGES); large-v3 adds the 100th, "yue"
WHISPER_LANGUAGES = tuple(
    "en zh de es ru ko fr ja pt tr pl ca nl ar sv it id hi fi vi he uk el ms cs ro da hu ta no th ur hr bg lt la mi ml cy sk te fa lv bn "
    "sr az sl kn et mk br eu is hy ne mn bs kk sq sw gl mr pa si km sn yo so af oc ka be tg sd gu am yi lo uz fo ht ps tk nn mt sa lb "
    "my bo tl mg as tt haw ln ha ba jw su yue".split()
)
WHISPER_TASKS = ("<|translate|>", "<|transcribe|>", "<|startoflm|>", "<|startofprev|>", "<|nospeech|>", "<|notimestamps|>")
WHISPER_TIMESTAMPS = 1501  # <|0.00|> ... <|30.00|>, every 20 ms
N_BYTES = 256


# -- vocabulary formats ---------------------------------------------------------------------------
def read_tiktoken(path) -> dict[bytes, int]:
    """A `.tiktoken` file: one `base64(token) rank` per line. Errors name the line."""
    path = Path(path)
    try:
        lines = path.read_bytes().splitlines()
    except FileNotFoundError:
        raise FileNotFoundError(f"BPE vocabulary {path} does not exist") from None
    ranks: dict[bytes, int] = {}
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        parts = line.split()
        try:
            if len(parts) != 2:
                raise ValueError
            # note: openai-whisper's multilingual.tiktoken ends with "= 50256", an empty token (its lenient decoder reads "=" as b"")
            token = b"" if parts[0] == b"=" else base64.b64decode(parts[0], validate=True)
            rank = int(parts[1])
        except ValueError:
            raise ValueError(f"BPE vocabulary {path}, line {n}: expected 'base64-token rank', got {line[:60]!r}") from None
        if token in ranks:
            raise ValueError(f"BPE vocabulary {path}, line {n}: token {token!r} appears twice")
        ranks[token] = rank
    check_ranks(ranks, str(path))
    return ranks


def write_tiktoken(ranks: dict[bytes, int], path) -> None:
    with open(path, "wb") as f:
        for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
            f.write((base64.b64encode(token) or b"=") + b" " + str(rank).encode() + b"\n")  # the empty token as Whisper writes it


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map (used by vocab.json / merges.txt)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def read_gpt2_files(vocab_json, merges_txt) -> tuple[dict[bytes, int], dict[str, int]]:
    """GPT-2's `vocab.json` (token -> id) + `merges.txt` -> (ranks, special tokens)."""
    try:
        vocab = json.loads(read_utf8(vocab_json, "GPT-2 vocabulary"))
    except json.JSONDecodeError as e:
        raise ValueError(f"GPT-2 vocabulary {vocab_json} is not valid JSON ({e})") from None
    merges = read_utf8(merges_txt, "GPT-2 merges").splitlines()
    first = 1  # the file's line number of merges[0]
    if merges and merges[0].startswith("#version"):
        merges, first = merges[1:], 2
    return gpt2_ranks(vocab, [(n, line) for n, line in enumerate(merges, first) if line.strip()], f"GPT-2 vocabulary {vocab_json}",
                      f"GPT-2 merges {merges_txt}")  # fmt: skip


def read_hf_tokenizer_json(path) -> tuple[dict[bytes, int], dict[str, int], str]:
    """A Hugging Face byte-level BPE `tokenizer.json` (what `save_pretrained` writes for GPT-2 since
    transformers 5, without vocab.json + merges.txt) -> (ranks, special tokens, split pattern)."""
    where = f"tokenizer {path}"
    try:
        doc = json.loads(read_utf8(path, "tokenizer"))
        model = doc["model"]
        kind, vocab, merges = model["type"], model["vocab"], model["merges"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"{where} is not a Hugging Face tokenizer.json with a model's vocab and merges ({type(e).__name__}: {e})") from None
    if kind != "BPE":
        raise ValueError(f"{where}: a {kind} model; expected byte-level BPE (GPT-2's)")
    pattern = hf_split_pattern(doc, where, bool(merges))
    merges = [(n, " ".join(m) if isinstance(m, list) else m) for n, m in enumerate(merges, 1)]  # ["a", "b"] (newer) or "a b"
    ranks, specials = gpt2_ranks(vocab, merges, where, f"{where}, merges")
    for added in doc.get("added_tokens") or ():  # specials beyond the vocabulary (GPT-2's <|endoftext|> is in both); an added
        # token that is not special (HF matches it in any text) is one of ours too: encoded as HF does with allowed_special
        if not (isinstance(added, dict) and isinstance(added.get("content"), str) and isinstance(added.get("id"), int)):
            raise ValueError(f"{where}: added token {str(added)[:80]}: expected an object with a string 'content' and an integer 'id'")
        if added["content"] not in specials and added["content"].encode() not in ranks:
            specials[added["content"]] = added["id"]
    return ranks, specials, pattern


def hf_split_pattern(doc: dict, where: str, merges: bool = True) -> str:
    """The split pattern of a tokenizer.json's pre-tokenizer, in our terms: a ByteLevel with its own
    regex is GPT-2's ("gpt2"); a Split then a ByteLevel without one (as `to_hf` writes it) splits
    with the Split's regex ("gpt4" when it is GPT-4's). Without merges (bytes, as `to_hf` writes a
    byte vocabulary) a ByteLevel alone serves too: no split changes single bytes. Anything else is
    not read: it would split or change the text otherwise."""
    pre, norm = doc.get("pre_tokenizer") or {}, doc.get("normalizer")
    steps = pre.get("pretokenizers") or [] if pre.get("type") == "Sequence" else [pre]
    kinds = [step.get("type") for step in steps]
    plain = all(not step.get("add_prefix_space") for step in steps) and norm is None
    if plain and kinds == ["ByteLevel"] and (steps[0].get("use_regex", True) or not merges):
        return "gpt2"
    split = steps[0].get("pattern", {}).get("Regex") if kinds == ["Split", "ByteLevel"] else None
    if plain and split and steps[0].get("behavior") == "Isolated" and not steps[0].get("invert") and not steps[1].get("use_regex", True):
        named = [name for name, p in PATTERNS.items() if onig_pattern(p) == split]
        return named[0] if named else re.sub(r"\(\?>(\\p\{\w+\}\{\d+,\d+\})\)", r"\1+", split)  # (onig_pattern undone)
    raise ValueError(f"{where}: pre-tokenizer {kinds or None}{' after a normalizer' if norm else ''}"
                     f"{' with add_prefix_space' if any(step.get('add_prefix_space') for step in steps) else ''}; expected GPT-style "
                     "byte-level BPE: a ByteLevel pre-tokenizer (GPT-2's), or a Split regex then a ByteLevel, without a normalizer")  # fmt: skip


def gpt2_ranks(vocab, merges: list[tuple[int, str]], vocab_where: str, merges_where: str) -> tuple[dict[bytes, int], dict[str, int]]:
    """GPT-2's vocabulary (token -> id, tokens in its byte alphabet) and numbered merge lines ("a b")
    -> (ranks, special tokens); errors name `vocab_where` / `merges_where` (and the merge's number)."""
    byte_of = {c: b for b, c in bytes_to_unicode().items()}

    def to_bytes(tok: str) -> bytes:
        try:
            return bytes(byte_of[c] for c in tok)
        except KeyError as e:
            raise ValueError(f"{vocab_where}: token {tok!r} has a character {e.args[0]!r} outside GPT-2's byte alphabet") from None

    if not isinstance(vocab, dict):
        raise ValueError(f"{vocab_where} must map tokens to ids")
    merged = []  # each merge's result, in merge order
    for n, line in merges:
        pair = line.split()
        if len(pair) != 2:
            raise ValueError(f"{merges_where}, line {n}: expected two tokens, got {line!r}")
        merged.append(to_bytes(pair[0] + pair[1]))
    # the vocabulary gives the ids; a multi-byte entry that no merge produces is a special token.
    ranks, specials, results = {}, {}, set(merged)
    for tok, i in vocab.items():
        try:
            b = to_bytes(tok)
        except ValueError:
            specials[tok] = i
            continue
        if len(b) > 1 and b not in results:
            specials[tok] = i
        else:
            ranks[b] = i
    order = [ranks.get(b) for b in merged]
    if None in order:
        raise ValueError(f"GPT-2 files disagree: merge {merged[order.index(None)]!r} in {merges_where} has no id in {vocab_where}")
    if any(a > b for a, b in zip(order, order[1:])):
        raise ValueError(f"GPT-2 files disagree: the ids in {vocab_where} do not follow the merge order of {merges_where}")
    inside = sorted((i, tok) for tok, i in specials.items() if ranks and i < max(ranks.values()))
    if inside:  # (Hugging Face's ByteLevelBPETokenizer.train puts its special_tokens first; GPT-2's files put them last)
        i, tok = inside[0]
        raise ValueError(f"{vocab_where}: special token {tok!r} has id {i}, among the BPE tokens' ids (up to {max(ranks.values())}); "
                         f"the 256 bytes and the merges must take ids 0..{len(ranks) - 1} and special tokens the ids after them, "
                         "as in GPT-2's files (train a Hugging Face tokenizer with no special_tokens and add them after training)")  # fmt: skip
    check_ranks(ranks, vocab_where)
    return ranks, specials


def openai_whisper_file(*parts: str) -> Path | None:
    """A file of the installed openai-whisper package (its vocabularies, its English spelling map),
    found without importing it (openai-whisper imports numba); None when absent."""
    import importlib.util

    spec = importlib.util.find_spec("whisper")
    path = Path(spec.origin).parent.joinpath(*parts) if spec and spec.origin else None
    return path if path is not None and path.is_file() else None


def gpt2_vocab_merges(ranks: dict[bytes, int], specials: dict[str, int]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Ranks as GPT-2's vocabulary (printable token -> id, specials included) and merges (pairs in
    rank order). The pair of each merge is recovered by running BPE on the token with the lower
    ranks only."""
    b2u = bytes_to_unicode()
    show = lambda b: "".join(b2u[x] for x in b)  # noqa: E731
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(token) <= 1:  # a byte; or multilingual.tiktoken's empty token, which no text produces
            continue
        parts = [bytes([b]) for b in token]
        while len(parts) > 2:
            best, i = min((ranks.get(parts[j] + parts[j + 1], 1 << 62), j) for j in range(len(parts) - 1))
            if best >= rank:
                break
            parts[i : i + 2] = [parts[i] + parts[i + 1]]
        if len(parts) != 2:
            raise ValueError(f"BPE vocabulary: token {token!r} (rank {rank}) is not a merge of two lower-ranked tokens")
        merges.append((show(parts[0]), show(parts[1])))
    return {show(t): r for t, r in ranks.items()} | dict(specials), merges


def write_gpt2_files(ranks: dict[bytes, int], specials: dict[str, int], directory) -> tuple[Path, Path]:
    """Export ranks as GPT-2's `vocab.json` + `merges.txt` (for Hugging Face users)."""
    vocab, merges = gpt2_vocab_merges(ranks, specials)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(f"{a} {b}" for a, b in merges) + "\n", encoding="utf-8")
    return directory / "vocab.json", directory / "merges.txt"


def check_ranks(ranks: dict[bytes, int], where: str) -> None:
    missing = [b for b in range(N_BYTES) if bytes([b]) not in ranks]
    if missing:
        raise ValueError(f"BPE vocabulary {where}: byte-level BPE needs all 256 single bytes, {len(missing)} are missing (e.g. {missing[0]})")
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise ValueError(f"BPE vocabulary {where}: ranks must be 0..{len(ranks) - 1} without gaps or repeats")


# -- training -------------------------------------------------------------------------------------
def onig_pattern(pattern: str) -> str:
    """A split pattern as Hugging Face `tokenizers` (Oniguruma) must read it to split as tiktoken does.
    note: Oniguruma reads `\\p{N}{1,3}+` (GPT-4's digits) as one or more runs of 1-3 digits, i.e. any
    digit run, where tiktoken reads a possessive "at most 3": an atomic group says "at most 3" to both."""
    return re.sub(r"(\\p\{\w+\}\{\d+,\d+\})\+", r"(?>\1)", pattern)


@functools.lru_cache(maxsize=16)
def split_pattern(pattern: str) -> str:
    """The regex of a named pattern ("gpt2", "gpt4") or of one's own, checked to match every
    character: tiktoken silently drops the text its pattern does not match (so a misspelt name,
    taken for a regex, would encode "hello world" as nothing)."""
    import regex as re_module
    import tiktoken

    if not isinstance(pattern, str):
        raise TypeError(f"text: pattern is {' or '.join(map(repr, PATTERNS))} or a regex, got {type(pattern).__name__}")
    regex = PATTERNS.get(pattern, pattern)
    empty = "a split pattern must not match the empty string (tiktoken's core panics on one)"
    with contextlib.suppress(re_module.error):  # (the `regex` module, tiktoken's dependency, reads what tiktoken's engine reads, mostly)
        if any(m.start() == m.end() for m in re_module.finditer(regex, PATTERN_PROBE)):
            raise ValueError(f"text: pattern {pattern!r}: {empty}")
    try:
        probe = tiktoken.Encoding("probe", pat_str=regex, mergeable_ranks={bytes([b]): b for b in range(N_BYTES)}, special_tokens={})
        kept = probe.decode(probe.encode_ordinary(PATTERN_PROBE))
    except ValueError as e:
        raise ValueError(f"text: pattern {pattern!r} is neither {' nor '.join(map(repr, PATTERNS))} nor a valid regex ({e})") from None
    except BaseException as e:  # tiktoken's Rust core panics (pyo3's PanicException) on a pattern that matches the empty string
        if isinstance(e, (KeyboardInterrupt, SystemExit)):
            raise
        raise ValueError(f"text: pattern {pattern!r} fails in tiktoken ({type(e).__name__}: {(str(e).splitlines() or [''])[0]}); "
                         f"{empty}") from None  # fmt: skip
    if kept != PATTERN_PROBE:
        raise ValueError(f"text: pattern {pattern!r} would drop text (tiktoken keeps only what the split pattern matches): "
                         f"give {' or '.join(map(repr, PATTERNS))}, or a regex that matches every character")  # fmt: skip
    return regex


# BPE training hands the trainer texts joined into blocks of about this many characters, with
# TEXT_SEP between them: the trainer's first pre-tokenizer cuts at it and drops it, so no piece
# crosses from one text into the next, and the trainer takes a few large items instead of many
# small ones (one per line, a dataset's rows), each of which costs it as much as kilobytes of text
TEXT_BLOCK = 1 << 12
TEXT_SEP = "\ufdd0\ufdef"  # two Unicode noncharacters, which the standard reserves for a program's internal use


def joined_texts(texts, specials=(), size: int = TEXT_BLOCK):
    """Training texts as the trainer takes them: each cut where a special token's text stands
    (encoding makes a special one token, so merges inside it would go unused), and consecutive
    texts joined with TEXT_SEP into blocks of at least `size` characters (the last may be shorter);
    a text that itself holds TEXT_SEP goes alone, and the trainer cuts it there. An item may be a
    string or a batch of strings (a list, an array, a Series: what Hugging Face's
    `train_from_iterator` takes)."""
    cut = re.compile("|".join(re.escape(t) for t in sorted(specials, key=len, reverse=True))) if specials else None
    block, n = [], 0
    for i, item in enumerate(texts):
        batch = not isinstance(item, (str, bytes, bytearray)) and isinstance(item, Iterable)
        for j, text in enumerate(item if batch else (item,)):
            if not isinstance(text, str):
                where = f"training text {i}, item {j}," if batch else f"training text {i}"
                raise TypeError(f"text: {where} is {type(text).__name__}, expected str{'' if batch else ' (or a batch of str)'}")
            if cut is not None and any(t in text for t in specials):
                parts = [part for part in cut.split(text) if part]
            else:
                parts = [text] if text else []
            if TEXT_SEP in text:
                yield from parts
                continue
            block += parts
            n += sum(map(len, parts))
            if n >= size:
                yield TEXT_SEP.join(block)
                block, n = [], 0
    if block:
        yield TEXT_SEP.join(block)


def train_ranks(texts, vocab_size: int, pattern: str, show_progress: bool = False, specials=(),
                block: int = TEXT_BLOCK) -> dict[bytes, int]:  # fmt: skip
    """Learn `vocab_size` BPE ranks (bytes + merges) from an iterator of strings, with Hugging Face
    `tokenizers`' BPE trainer behind the same pre-tokenization as encoding (the texts given to it
    by `joined_texts` in blocks of `block` characters: the same pieces, the same ranks, fewer items
    for the trainer; 0 gives it one text per item)."""
    from tokenizers import Regex, models, pre_tokenizers, trainers
    from tokenizers import Tokenizer as HFTokenizer

    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(TEXT_SEP, behavior="removed"),
        pre_tokenizers.Split(Regex(onig_pattern(pattern)), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])  # fmt: skip
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=show_progress, special_tokens=[])  # fmt: skip
    blocks = joined_texts(texts, specials, block)
    if (first := next(blocks, None)) is None:
        raise ValueError("text: no training text: the texts given are empty or none (an iterator already used up?)")
    hf.train_from_iterator(itertools.chain([first], blocks), trainer)
    merges = json.loads(hf.to_str())["model"]["merges"]
    byte_of = {c: b for b, c in bytes_to_unicode().items()}
    ranks = {bytes([b]): b for b in range(N_BYTES)}
    for pair in merges:
        a, b = pair if isinstance(pair, list) else pair.split(" ")
        ranks.setdefault(bytes(byte_of[c] for c in a + b), len(ranks))
    return ranks


def training_texts(text: str, pattern: str = "gpt2") -> list[str]:
    """A text cut into the parts BPE training reads: at each newline between two non-space
    characters, where GPT-2's and GPT-4's patterns end a piece whatever follows, so training sees
    the pieces that encoding the whole text makes (cut at every newline, "\n    " of indented text
    would never be learned, and "  \n" learned though encoding never makes it), in parts that the
    trainer spreads over threads. With a pattern of your own, which may join a newline to what
    follows, the text stays whole."""
    if PATTERNS.get(pattern, pattern) not in PATTERNS.values():
        return [text] if text else []
    return [part for part in re.split(r"(?<=\S\n)(?=\S)", text) if part]


def read_training_files(paths) -> list[str]:
    """Read UTF-8 training files; a file with invalid bytes is refused with its name and offset."""
    return [read_utf8(p, "training file") for p in ([paths] if isinstance(paths, (str, os.PathLike)) else paths)]  # (one path, or a list)


# -- the tokenizer --------------------------------------------------------------------------------
MAX_ID_GAPS = 1 << 16  # ids a vocabulary may leave unused between its BPE tokens and its special tokens' last


@register("text")
class BPETokenizer(Tokenizer):
    """Byte-level BPE: text → ids with a GPT-style regex and tiktoken's engine."""

    modality = "text"
    token_types = ("token",)

    def __init__(self, ranks: dict[bytes, int] | None = None, pattern: str = "gpt2", specials: dict[str, int] | list[str] | None = None,
                 max_positions: int = 1024, ranks_file: str | None = None):  # fmt: skip
        if ranks is None:
            if ranks_file is None:
                raise ValueError("text: give ranks or ranks_file")
            ranks = read_tiktoken(ranks_file)
        check_ranks(ranks, "in memory")
        if specials is None:
            specials = [ENDOFTEXT]
        if not isinstance(specials, dict):
            specials = {s: len(ranks) + i for i, s in enumerate(check_specials(specials, "text"))}
        check_specials(specials, "text")
        bad = [(s, i) for s, i in specials.items() if isinstance(i, bool) or not isinstance(i, int) or i < 0]
        if bad:
            raise ValueError(f"text: special token {bad[0][0]!r} has id {bad[0][1]!r}; expected a whole number from 0")
        if specials and max(specials.values()) >= len(ranks) + len(specials) + MAX_ID_GAPS:  # (an id of 3e9: a table of 3e9 rows)
            raise ValueError(f"text: special token ids reach {max(specials.values()):,}, leaving more than {MAX_ID_GAPS:,} ids unused "
                             f"after the {len(ranks):,} BPE tokens; expected the special tokens' ids after theirs")  # fmt: skip
        if len(set(specials.values())) < len(specials):
            raise ValueError(f"text: special tokens share ids ({specials}); each needs its own")
        taken = set(specials.values()) & set(range(len(ranks)))
        if taken:
            raise ValueError(f"text: special token ids {sorted(taken)[:3]} collide with the {len(ranks)} BPE ranks")
        self.ranks, self.pattern_name = ranks, pattern
        self.pattern = split_pattern(pattern)
        self.specials = dict(specials)
        self.max_positions = positive("text", "max_positions", max_positions)
        self.vocab_size = max([len(ranks) - 1, *specials.values()]) + 1
        self._all_specials = tuple(self.specials)
        self._build()

    def _build(self) -> None:
        import tiktoken  # note: here, not at the top, so the rest of the package imports without it (a bare GPU machine)

        self.enc = tiktoken.Encoding(name="tokenizers-mm", pat_str=self.pattern, mergeable_ranks=self.ranks, special_tokens=self.specials)
        self._core = self.enc._core_bpe  # note: tiktoken's Rust core; its buffer API skips a Python list

    def __getstate__(self) -> dict:
        """Pickled (spawned DataLoader workers, deepcopy, `datasets`' cache fingerprints) without
        tiktoken's core, which is built again from the ranks, as tiktoken's Encoding pickles."""
        return {k: v for k, v in self.__dict__.items() if k not in ("enc", "_core")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._build()

    @property
    def special_ids(self) -> dict[str, int]:
        """Special token -> id (as CharTokenizer.special_ids)."""
        return self.specials

    # -- construction --
    @classmethod
    def train(cls, texts, vocab_size: int, pattern: str = "gpt2", specials=(ENDOFTEXT,), max_positions: int = 1024,
              show_progress: bool = False) -> "BPETokenizer":  # fmt: skip
        """Train on an iterable of strings (or of batches of strings: a dataset's) to `vocab_size` ids
        in all (256 bytes + merges + specials); fewer when the corpus runs out of pairs to merge."""
        if isinstance(texts, (str, bytes)):
            raise TypeError("text: train takes an iterable of texts (train([text], ...)), not one string (each character would be a text)")
        specials = check_specials(specials, "text")
        if not isinstance(vocab_size, numbers.Integral) or isinstance(vocab_size, bool):
            raise TypeError(f"text: vocab_size is a whole number of ids, got {type(vocab_size).__name__} {vocab_size!r}")
        vocab_size = int(vocab_size)
        if vocab_size < N_BYTES + len(specials):
            raise ValueError(f"text: vocab_size={vocab_size} is smaller than 256 bytes + {len(specials)} special tokens")
        ranks = train_ranks(texts, vocab_size - len(specials), split_pattern(pattern), show_progress, specials)
        return cls(ranks, pattern, specials, max_positions)

    @classmethod
    def train_from_files(cls, paths, vocab_size: int, **kw) -> "BPETokenizer":
        """`train` on UTF-8 files (a path or a list), each as one text (cut by `training_texts`)."""
        texts = read_training_files(paths)
        return cls.train([part for text in texts for part in training_texts(text, kw.get("pattern", "gpt2"))], vocab_size, **kw)

    @classmethod
    def whisper(cls, ranks_file, n_vocab: int, max_positions: int = 448) -> "BPETokenizer":
        """openai-whisper's tokenizer for a model with `n_vocab` outputs: the ranks of `gpt2.tiktoken`
        (English-only models) or `multilingual.tiktoken`, GPT-2's split pattern, and its special
        tokens after the ranks — <|endoftext|>, <|startoftranscript|>, one per language (99, or 100
        for large-v3: what n_vocab leaves room for), the task tokens, 1501 timestamps."""
        ranks = read_tiktoken(ranks_file)
        n_languages = n_vocab - len(ranks) - 2 - len(WHISPER_TASKS) - WHISPER_TIMESTAMPS
        if n_languages not in (99, 100):  # every Whisper release: 99 languages, large-v3 100
            raise ValueError(f"text: a Whisper model of {n_vocab} outputs does not fit the {len(ranks)} ranks of {ranks_file} "
                             f"(English-only models use gpt2.tiktoken, multilingual ones multilingual.tiktoken)")  # fmt: skip
        names = [ENDOFTEXT, "<|startoftranscript|>", *(f"<|{code}|>" for code in WHISPER_LANGUAGES[:n_languages]), *WHISPER_TASKS,
                 *(f"<|{i * 0.02:.2f}|>" for i in range(WHISPER_TIMESTAMPS))]  # fmt: skip
        return cls(ranks, "gpt2", names, max_positions)  # note: tiktoken's GPT-2 pattern splits as Whisper's original GPT-2 regex

    @classmethod
    def from_tiktoken_file(cls, path, pattern: str = "gpt2", specials=None, **kw) -> "BPETokenizer":
        """GPT-2's ranks: `from_tiktoken_file("gpt2.tiktoken")` gives <|endoftext|> = 50256."""
        return cls(read_tiktoken(path), pattern, specials, **kw)

    @classmethod
    def from_gpt2_files(cls, vocab_json, merges_txt, pattern: str = "gpt2", **kw) -> "BPETokenizer":
        ranks, specials = read_gpt2_files(vocab_json, merges_txt)
        return cls(ranks, pattern, specials, **kw)  # (the files' specials, none added: the vocabulary stays the files')

    @classmethod
    def from_hf_tokenizer_json(cls, path, pattern: str | None = None, **kw) -> "BPETokenizer":
        """A Hugging Face byte-level BPE tokenizer.json (GPT-2's, as transformers' save_pretrained writes
        it), splitting text with its pre-tokenizer's pattern; a `pattern` that would split otherwise is refused."""
        ranks, specials, found = read_hf_tokenizer_json(path)
        try:
            if pattern is not None and len(ranks) > N_BYTES and split_pattern(pattern) != split_pattern(found):  # (no merges: any split)
                raise ValueError(f"it splits text with {found!r}; pattern={pattern!r} would split it otherwise: leave it out")
            return cls(ranks, found if pattern is None else pattern, specials, **kw)  # (the file's specials, even none)
        except ValueError as e:  # (its own regex refused, too: the file named)
            raise ValueError(f"tokenizer {path}: {e}") from None

    # -- encode / decode --
    def _policy(self, allowed_special, disallowed_special) -> tuple[frozenset, tuple]:
        if allowed_special == () and disallowed_special == "all":
            return frozenset(), self._all_specials  # the default, cached: encode is called per line
        allowed = frozenset(self.specials) if allowed_special == "all" else frozenset(allowed_special)
        disallowed = tuple(set(self.specials) - allowed) if disallowed_special == "all" else tuple(disallowed_special)
        return allowed, disallowed

    def _encode(self, text: str, allowed: frozenset, disallowed: tuple) -> np.ndarray:
        if not isinstance(text, str):
            raise TypeError(f"text: expected a str, got {type(text).__name__}")
        for s in disallowed:
            if s in text:
                raise ValueError(
                    f"text: the input contains the special token {s!r}; pass allowed_special={{{s!r}}} to encode it as "
                    f"a special token, or disallowed_special=() to encode it as plain text"
                )
        try:
            buf = self._core.encode_to_tiktoken_buffer(text, allowed)
        except UnicodeEncodeError:  # lone surrogates are not Unicode text: replaced by U+FFFD, as tiktoken
            text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
            buf = self._core.encode_to_tiktoken_buffer(text, allowed)
        return np.frombuffer(buf, dtype=np.uint32)

    def encode_ids(self, text: str, allowed_special=(), disallowed_special="all") -> np.ndarray:
        """Text → uint32 array of ids (no Python list in between)."""
        return self._encode(text, *self._policy(allowed_special, disallowed_special))

    def encode_batch(self, texts: list[str], num_threads: int | None = None, allowed_special=(), disallowed_special="all") -> list[np.ndarray]:
        """Encode many texts on all cores (tiktoken's core releases the GIL while it encodes). Texts go
        to the threads in contiguous shares, ~8 per thread: few Python calls, yet balanced load."""
        if isinstance(texts, (str, bytes)):
            raise TypeError("text: encode_batch takes a list of texts (encode_batch([text])), not one string (each character would be a text)")
        policy = self._policy(allowed_special, disallowed_special)
        num_threads = min(num_threads or os.cpu_count() or 1, len(texts))
        if num_threads <= 1:
            return [self._encode(t, *policy) for t in texts]
        step = -(-len(texts) // (8 * num_threads))
        shares = [texts[i : i + step] for i in range(0, len(texts), step)]
        with ThreadPoolExecutor(num_threads) as pool:
            done = pool.map(lambda share: [self._encode(t, *policy) for t in share], shares)
        return [ids for share in done for ids in share]

    def encode(self, sample: str, allowed_special=(), disallowed_special="all") -> TokenSet:
        ids = torch.from_numpy(self.encode_ids(sample, allowed_special, disallowed_special).astype(np.int64))
        if ids.shape[0] > self.max_positions:
            raise ValueError(f"text: {ids.shape[0]} tokens exceed max_positions={self.max_positions}")
        return TokenSet(self.modality, ids=ids)

    def decode(self, tokens) -> str:
        """ids (list, array, tensor or TokenSet) → text; bytes that are not UTF-8 become U+FFFD."""
        return self.decode_bytes(tokens).decode("utf-8", errors="replace")  # (tiktoken's decode: its bytes, replaced where not UTF-8)

    def decode_bytes(self, ids) -> bytes:
        """ids (list, array, tensor or TokenSet) → the bytes they stand for (not decoded as UTF-8)."""
        ids = id_list(ids, "text")
        if bad := [i for i in ids if not 0 <= i < self.vocab_size]:
            raise ValueError(f"text: id {bad[0]} is outside the vocabulary of {self.vocab_size}")
        try:
            return self.enc.decode_bytes(ids)
        except KeyError:  # an id in a gap of the ranks (a vocabulary with holes); tiktoken's message is its own sentence
            known = set(self.specials.values())
            gap = next(i for i in ids if not (i < len(self.ranks) or i in known))
            raise ValueError(f"text: id {gap} is no token of this vocabulary (its ids below {self.vocab_size} have gaps)") from None

    # -- save / load --
    def config(self) -> dict:
        return {"ranks_file": RANKS_FILE, "pattern": self.pattern_name, "specials": self.specials, "max_positions": self.max_positions}

    def save(self, directory) -> Path:
        directory = super().save(directory)
        write_tiktoken(self.ranks, directory / RANKS_FILE)
        return directory

    @classmethod
    def from_config(cls, directory: Path, config: dict) -> "BPETokenizer":
        config = dict(config)
        name = Path(config.pop("ranks_file", RANKS_FILE)).name  # note: never a path outside the directory
        return cls(read_tiktoken(directory / name), **config)
