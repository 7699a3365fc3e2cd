"""Character- and byte-level text tokenizer (registered as `text_char`).

The simplest honest text tokenizer: either a character vocabulary built from a corpus (nanoGPT's
shakespeare_char: sorted unique characters) or, with no vocabulary, the 256 byte values of UTF-8.
Special tokens (`<|endoftext|>` and any the user names) take the ids after the ordinary ones; they
are never produced from plain text unless `allowed_special` admits them. The byte-level BPE
tokenizer is its own module; this one leaves merges out.
"""

from __future__ import annotations

import re

import torch

from .base import Tokenizer, id_list
from .registry import register
from .tokenset import TokenSet, positive

ENDOFTEXT = "<|endoftext|>"
N_BYTES = 256  # byte mode: ids 0..255 are the UTF-8 bytes


def check_specials(specials, who: str) -> list[str]:
    """Special tokens as a list of distinct, non-empty strings (a repeat left a gap of ids that
    decoded to nothing; an empty one matched between every two characters)."""
    if isinstance(specials, str):
        raise TypeError(f"{who}: specials is a list of special tokens ([{specials!r}]), not one string")
    names = list(specials)
    bad = [s for s in names if not isinstance(s, str) or not s]
    if bad:
        raise ValueError(f"{who}: special token {bad[0]!r}: expected a non-empty string")
    repeated = sorted({s for s in names if names.count(s) > 1})
    if repeated:
        raise ValueError(f"{who}: special tokens {repeated} are given more than once")
    return names


@register("text_char")
class CharTokenizer(Tokenizer):
    """Text → ids, one per character (or per UTF-8 byte when `chars` is None)."""

    modality = "text"
    token_types = ("token",)

    def __init__(self, chars: str | None = None, specials=(ENDOFTEXT,), max_positions: int = 1024):
        if chars is not None and not (isinstance(chars, str) and chars):
            raise ValueError(f"text_char: chars is a non-empty string of the vocabulary's characters (None: bytes), got {chars!r}")
        if chars is not None and len(set(chars)) != len(chars):
            raise ValueError("text_char: chars must not repeat a character")
        self.chars = chars
        self.specials = tuple(check_specials(specials, "text_char"))
        self.max_positions = positive("text_char", "max_positions", max_positions)
        n_plain = N_BYTES if chars is None else len(chars)
        self.stoi = None if chars is None else {c: i for i, c in enumerate(chars)}
        self.special_ids = {s: n_plain + i for i, s in enumerate(self.specials)}
        self.vocab_size = n_plain + len(self.specials)

    @classmethod
    def from_corpus(cls, text: str, **kwargs) -> "CharTokenizer":
        """nanoGPT's character vocabulary: the sorted unique characters of the corpus."""
        if not isinstance(text, str) or not text:
            raise ValueError(f"text_char: from_corpus reads a non-empty string, got {type(text).__name__} of length {len(text) if isinstance(text, str) else '?'}")
        return cls(chars="".join(sorted(set(text))), **kwargs)

    def config(self) -> dict:
        return {"chars": self.chars, "specials": list(self.specials), "max_positions": self.max_positions}

    def _encode_plain(self, text: str, offset: int = 0) -> list[int]:
        """`text` starts at character `offset` of the whole text (for the error's offset)."""
        if self.stoi is None:  # lone surrogates are not Unicode text: U+FFFD, as the BPE tokenizer (and tiktoken) write them
            try:
                return list(text.encode("utf-8"))
            except UnicodeEncodeError:
                return list(text.encode("utf-16", "surrogatepass").decode("utf-16", "replace").encode("utf-8"))
        try:
            return [self.stoi[c] for c in text]
        except KeyError as e:
            at = offset + text.index(e.args[0])
            raise ValueError(f"text_char: character {e.args[0]!r} (at offset {at}) is not in the vocabulary") from None

    def encode_ids(self, text: str, allowed_special=()) -> list[int]:
        """Text → list of ids. Specials in `allowed_special` ("all" for every one) become their ids."""
        if not isinstance(text, str):
            raise TypeError(f"text_char: expected a str, got {type(text).__name__}")
        allowed = set(self.specials) if allowed_special == "all" else set(allowed_special) & set(self.specials)
        if not allowed:
            return self._encode_plain(text)
        ids, start = [], 0
        # the allowed specials alone (a longer one not allowed hides none), the longest first; re caches the compiled pattern
        for m in re.finditer("|".join(map(re.escape, sorted(allowed, key=len, reverse=True))), text):
            ids += self._encode_plain(text[start : m.start()], start) + [self.special_ids[m.group()]]
            start = m.end()
        return ids + self._encode_plain(text[start:], start)

    def encode(self, sample, allowed_special=()) -> TokenSet:
        ids = torch.tensor(self.encode_ids(sample, allowed_special), dtype=torch.long)
        if ids.shape[0] > self.max_positions:
            raise ValueError(f"text_char: {ids.shape[0]} tokens exceed max_positions={self.max_positions}")
        return TokenSet(self.modality, ids=ids)

    def decode(self, tokens) -> str:
        """ids (list, tensor or TokenSet) → text. Invalid UTF-8 (byte mode) becomes U+FFFD."""
        ids = id_list(tokens, "text_char")
        inv_special = {i: s for s, i in self.special_ids.items()}
        out, run = [], []

        def flush():
            if run:
                out.append(bytes(run).decode("utf-8", errors="replace") if self.chars is None else "".join(self.chars[i] for i in run))
                run.clear()

        for i in ids:
            if not 0 <= i < self.vocab_size:
                raise ValueError(f"text_char: id {i} is outside the vocabulary of {self.vocab_size}")
            if i in inv_special:
                flush()
                out.append(inv_special[i])
            else:
                run.append(i)
        flush()
        return "".join(out)
