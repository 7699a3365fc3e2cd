"""Text tokenizers in Hugging Face's format: a `tokenizer.json` that the `tokenizers` library and
transformers' `AutoTokenizer.from_pretrained` read, giving the same ids as ours.

- `BPETokenizer`: a byte-level BPE model (vocabulary and merges recovered from the ranks, as
  GPT-2's vocab.json / merges.txt), our pre-tokenization regex as a `Split` (written so that
  Oniguruma splits as tiktoken: `onig_pattern`), then the
  byte-to-printable map (`ByteLevel` without its own regex), and the `ByteLevel` decoder.
- `CharTokenizer` with a character vocabulary: a `WordLevel` model over single characters (each
  character split off by the pre-tokenizer) and a decoder that concatenates them; in byte mode,
  byte-level BPE without merges.

Special tokens keep their ids. `save_hf(..., whisper=True)` writes a Whisper vocabulary as
transformers' `WhisperTokenizer` reads it: the timestamp tokens as added tokens that are not
special (transformers finds timestamps above the last special id), the language / task tokens as
additional special tokens, vocab.json + merges.txt and openai-whisper's English spelling map
(normalizer.json) beside tokenizer.json. `save_hf` checks the written file: it must encode and decode a
probe text (mixed scripts, whitespace, digits, every token of the vocabulary) as ours does. Note: Hugging Face tokenizers turn a special token's text found in
the input into that token, as ours do with `allowed_special="all"`.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

from .text_bpe import BPETokenizer, bytes_to_unicode, gpt2_vocab_merges, onig_pattern, openai_whisper_file
from .text_char import ENDOFTEXT, CharTokenizer


# text that trips tokenizers: CRLF, whitespace runs, digits, contractions, other scripts, emoji, NBSP
PROBE = ("Hello  world!\r\n\n  tabs\t\there 123456 12345678 call 5551234567 now 1,000.5 émoji 🤖🤖 中文字符  don't I'LL we've\u00a0nbsp  \n\n\n"
         "def f(x):\n    return x ** 2  # ok?\n\nÀ bientôt, Straße, Ελληνικά, русский, עברית, हिन्दी   end   ")  # fmt: skip


def probe_text(tokenizer) -> str:
    """PROBE plus every token of the vocabulary as text (every character of a character vocabulary): a
    merge that the two regex engines split otherwise, a pattern of one's own reading "x²" as one \\w+
    in Oniguruma and as two pieces in tiktoken, shows in its own token (GPT-2's 50k: 0.4 s)."""
    if isinstance(tokenizer, CharTokenizer) and tokenizer.chars is not None:
        return "".join(c for c in PROBE if c in tokenizer.stoi) + tokenizer.chars
    if isinstance(tokenizer, BPETokenizer):
        sample = sorted(tokenizer.ranks, key=tokenizer.ranks.get)[256:]
        return PROBE + b" ".join(sample).decode("utf-8", errors="ignore")
    return PROBE


def check_hf(tokenizer, path) -> None:
    """Refuse a tokenizer.json that encodes or decodes the probe text otherwise than `tokenizer`."""
    from tokenizers import Tokenizer

    hf = Tokenizer.from_file(str(path))
    text = probe_text(tokenizer)
    ours, theirs = [int(i) for i in tokenizer.encode_ids(text)], hf.encode(text, add_special_tokens=False).ids
    if ours != theirs:
        n = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), min(len(ours), len(theirs)))
        raise ValueError(f"Hugging Face export: tokenizer.json encodes the probe text otherwise than the run's tokenizer "
                         f"(from token {n}: {theirs[n : n + 5]} instead of {ours[n : n + 5]})")  # fmt: skip
    if hf.decode(ours, skip_special_tokens=False) != tokenizer.decode(ours):
        raise ValueError("Hugging Face export: tokenizer.json decodes the probe text otherwise than the run's tokenizer")


TIMESTAMP = re.compile(r"<\|\d+\.\d\d\|>")  # Whisper's <|0.00|> ... <|30.00|>


def to_hf(tokenizer, plain: frozenset[str] = frozenset()):
    """A `tokenizers.Tokenizer` that encodes and decodes as `tokenizer` (BPETokenizer or CharTokenizer).
    plain: special tokens added as tokens that are not special (`decode(skip_special_tokens=True)` keeps them)."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

    if not isinstance(tokenizer, (BPETokenizer, CharTokenizer)):
        raise TypeError(f"Hugging Face export: {type(tokenizer).__name__} is not a text tokenizer this export knows")
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    specials = tokenizer.special_ids
    if isinstance(tokenizer, BPETokenizer):
        vocab, merges = gpt2_vocab_merges(tokenizer.ranks, specials)
        hf = Tokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=False))
        try:
            split = pre_tokenizers.Split(Regex(onig_pattern(tokenizer.pattern)), behavior="isolated")
        except Exception as e:  # noqa: BLE001  # tokenizers' Oniguruma raises its own kind
            raise ValueError(f"Hugging Face export: the split pattern {tokenizer.pattern!r} is not one `tokenizers` compiles ({e})") from None
        hf.pre_tokenizer = pre_tokenizers.Sequence([split, byte_level])
        hf.decoder = decoders.ByteLevel()
    elif isinstance(tokenizer, CharTokenizer) and tokenizer.chars is None:  # bytes: byte-level BPE without merges
        vocab = {c: b for b, c in bytes_to_unicode().items()} | specials
        hf = Tokenizer(models.BPE(vocab=vocab, merges=[]))
        hf.pre_tokenizer, hf.decoder = byte_level, decoders.ByteLevel()
    else:  # a character vocabulary
        # note: an unknown character is an error, as ours (an unk_token outside the vocabulary), not a silent special
        hf = Tokenizer(models.WordLevel(vocab=dict(tokenizer.stoi) | specials, unk_token="<unknown character>"))
        hf.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")  # every character its own word
        hf.decoder = decoders.Fuse()  # joined without spaces
    hf.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials if s not in plain])
    hf.add_tokens([AddedToken(s, special=False, normalized=False) for s in specials if s in plain])
    return hf


def save_hf(tokenizer, directory, whisper: bool = False, language: str | None = None, task: str | None = None) -> Path:
    """Write tokenizer.json + tokenizer_config.json (+ special_tokens_map.json) into `directory`,
    for `AutoTokenizer.from_pretrained(directory)`. whisper: as transformers' WhisperTokenizer
    (language / task: the prefix it writes before a transcript; see the module's note)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    specials = tokenizer.special_ids
    timestamps = frozenset(s for s in specials if TIMESTAMP.fullmatch(s)) if whisper else frozenset()
    hf = to_hf(tokenizer, timestamps)
    hf.save(str(directory / "tokenizer.json"))
    check_hf(tokenizer, directory / "tokenizer.json")
    eot = ENDOFTEXT if ENDOFTEXT in specials else None
    named = {k: eot for k in ("bos_token", "eos_token") if eot}
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": tokenizer.max_positions, "clean_up_tokenization_spaces": False,
              "add_prefix_space": False, "model_input_names": ["input_ids", "attention_mask"]}  # fmt: skip
    # note: no token_type_ids — GPT-2 would add their (token) embedding to every position
    if whisper:
        if eot is None:
            raise ValueError(f"Whisper export: the text tokenizer has no {ENDOFTEXT}")
        named = {k: eot for k in ("bos_token", "eos_token", "unk_token", "pad_token")}
        named["additional_special_tokens"] = [s for s in sorted(specials, key=specials.get) if s != eot and s not in timestamps]
        config |= {"tokenizer_class": "WhisperTokenizer", "errors": "replace",
                   "language": language, "task": task, "predict_timestamps": False, "processor_class": "WhisperProcessor"}  # fmt: skip
        hf.model.save(str(directory))  # vocab.json + merges.txt, as Whisper's folders have them
        spelling = openai_whisper_file("normalizers", "english.json")  # british -> american spellings, read by tokenizer.normalize()
        if spelling is None:
            print("Whisper export: normalizer.json left out (openai-whisper is not installed); the tokenizer's normalize() needs it",
                  file=sys.stderr)
        else:
            shutil.copyfile(spelling, directory / "normalizer.json")
    config |= named
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    (directory / "special_tokens_map.json").write_text(json.dumps(named, indent=2) + "\n", encoding="utf-8")
    return directory / "tokenizer.json"
