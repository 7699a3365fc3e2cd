"""whisper_digits: Whisper-style speech recognition on speech synthesized offline.

Config → data → model → loss/metric → main. The corpus (recipes/speech.py) is spoken digit
sequences and short phrases from eSpeak NG, the test split spoken by voice variants never heard
in training. Audio → log-mel frames (the `audio` tokenizer, one frame per token) → Whisper's conv
stem → encoder; the decoder reads Whisper's prompt <|startoftranscript|><|transcribe|>
<|notimestamps|> and predicts the transcript's characters, then <|endoftext|>. The metric is word
error rate (jiwer) of greedy decoding on the held-out voices.

    mmtok train whisper_digits
    mmtok transcribe RUN_DIR speech.wav
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from accelerate.utils import set_seed
from torch.utils.data import Dataset

from models import GNMTPenalty, HeadConfig, Memory, ModalityConfig, ModelConfig, MultimodalTransformer, TrunkConfig, length_normalised
from models.transformer import finished_beams
from tokenizers_mm import AudioTokenizer, BPETokenizer, CharTokenizer, TokenSet, collate, collate_examples, load_audio, split_at_pauses, stream_audio
from tokenizers_mm.audio import HOP_LENGTH, SAMPLE_RATE, AudioError
from tokenizers_mm.base import cache_folder
from tokenizers_mm.text_bpe import WHISPER_LANGUAGES

from .config import ConfigError, TrainConfig
from .folders import save_split
from .runs import load_trained, resolve_run_dir, resumed_architecture, save_run_info
from .train import train

SOT, TRANSCRIBE, NO_TIMESTAMPS, EOT = "<|startoftranscript|>", "<|transcribe|>", "<|notimestamps|>", "<|endoftext|>"
DEFAULT_PROMPT = SOT + TRANSCRIBE + NO_TIMESTAMPS
CHARS = " '-abcdefghijklmnopqrstuvwxyz0123456789"  # the corpus transcripts, lower-cased


@dataclass
class Config(TrainConfig):
    NOT_USED = ("eval_batches",)  # an evaluation decodes eval_utterances
    EVAL_KEYS = ("eval_utterances", "beam_size", "length_penalty", "patience")
    data_dir: str = ""  # where the synthesized corpus is cached; "" = ~/.cache/tokenizers-mm/whisper_digits
    n_train: int = 4000  # utterances spoken by the training voices
    n_test: int = 300  # utterances spoken by the held-out voices
    n_mels: int = 80
    max_frames: int = 800  # 10 ms frames per utterance at most (8 s)
    max_text: int = 64  # decoder positions: prompt + characters + <|endoftext|>
    dim: int = 128
    depth: int = 3  # encoder blocks
    dec_depth: int = 3
    num_heads: int = 4
    dropout: float = 0.0
    batch_size: int = 32
    lr: float = 1e-3
    min_lr: float = 1e-5
    warmup_steps: int = 200
    max_steps: int = 3000
    beta2: float = 0.98
    weight_decay: float = 0.05
    eval_every: int = 500
    ckpt_every: int = 500
    eval_utterances: int = 300  # test utterances decoded at each evaluation
    eval_batch_size: int = 32  # test utterances decoded together (each process its own batches)
    prompt: str = ""  # the decoder's prompt, its special tokens written out; "" = <|startoftranscript|><|transcribe|><|notimestamps|>
    beam_size: int = 1  # decoding: 1 = greedy, more = beam search on the KV cache
    length_penalty: float = 1.0  # beam search: score = log-probability / length ** length_penalty (1.0: openai-whisper's default)
    patience: float = 1.0  # beam search: stop once round(beam_size * patience) beams have ended (openai-whisper's --patience)
    wer_text: str = "raw"  # WER on the text as written ("raw"), or after openai-whisper's normaliser ("whisper": case, punctuation, ...)

    def check(self) -> None:
        super().check()
        if self.wer_text not in ("raw", "whisper"):
            raise ConfigError(f"wer_text={self.wer_text!r}: expected raw or whisper")
        if self.beam_size > 1:  # greedy decoding has no patience
            try:
                finished_beams(self.beam_size, self.patience)
            except ValueError as e:
                raise ConfigError(str(e)) from None


# -- data -----------------------------------------------------------------------------------------
def text_tokenizer(cfg: Config) -> CharTokenizer:
    return CharTokenizer(chars=CHARS, specials=(SOT, TRANSCRIBE, NO_TIMESTAMPS, EOT), max_positions=cfg.max_text)


def prompt_ids(tok, prompt: str = "") -> list[int]:
    """The decoder prompt's ids: `prompt` (special tokens written out), or DEFAULT_PROMPT."""
    ids = [int(i) for i in tok.encode_ids(prompt or DEFAULT_PROMPT, allowed_special="all")]
    specials = tok.special_ids
    if not ids or ids[0] != specials.get(SOT) or not set(ids) <= set(specials.values()) or specials.get(EOT) in ids:
        raise ValueError(f"prompt {prompt!r}: expected special tokens of the text tokenizer only, starting with {SOT} "
                         f"(without {EOT})")  # fmt: skip
    return ids


MULTILINGUAL_VOCAB = 51865  # openai-whisper: a model with at least this many outputs is multilingual


def language_code(language: str, text_tok) -> str:
    """A Whisper language code from a code or name in any case (`de`, `German`, `EN`), checked
    against the model's language tokens when `text_tok` is given."""
    code = language.strip().lower()
    try:
        from whisper.tokenizer import TO_LANGUAGE_CODE  # names and aliases: "german", "mandarin", ...

        code = TO_LANGUAGE_CODE.get(code, code)
        named = ""
    except ImportError:
        named = "; language names need openai-whisper (pip install openai-whisper): give the code (de, fr, ...)"
    if text_tok is not None and f"<|{code}|>" not in text_tok.special_ids:
        n = n_languages(text_tok)
        hint = "; yue needs a 100-language model (large-v3)" if code == "yue" else named if code not in WHISPER_LANGUAGES else ""
        raise ValueError(f"language={language!r}: not one of this Whisper model's {n} languages ({', '.join(WHISPER_LANGUAGES[:8])}, ...){hint}")
    return code


def n_languages(text_tok) -> int:
    """How many Whisper language tokens the vocabulary holds (99, 100 for large-v3; an English-only one holds them too)."""
    return sum(f"<|{c}|>" in text_tok.special_ids for c in WHISPER_LANGUAGES)


def language_tokens(text_tok) -> dict[str, int]:
    """A multilingual Whisper vocabulary's language tokens: code -> id. None for an English-only one
    (whose vocabulary carries them too, unused, as openai-whisper's does) or a from-scratch one."""
    if getattr(text_tok, "vocab_size", 0) < MULTILINGUAL_VOCAB:
        return {}
    specials = text_tok.special_ids
    return {c: specials[f"<|{c}|>"] for c in WHISPER_LANGUAGES if f"<|{c}|>" in specials}


def prompt_language(prompt: list[int], text_tok) -> str:
    """The language code of a prompt's language token; "" without one (English-only, from scratch)."""
    codes = {i: c for c, i in language_tokens(text_tok).items()}
    return next((codes[t] for t in prompt if t in codes), "")


def swap_language(prompt: list[int], text_tok, language: str, what: str) -> list[int]:
    """`prompt` with `language`'s token (a code or a name): in place of its language token, or after
    <|startoftranscript|> when it has none, as Whisper's prompt holds it. A model without language
    tokens (English-only, from scratch) takes language=en and changes nothing; another is refused."""
    languages = language_tokens(text_tok)
    if not languages:
        if language_code(language, None) == "en":
            return prompt
        raise ValueError(f"language={language!r}: {what} is an English-only or a from-scratch model; it has no language tokens")
    return put_token(prompt, text_tok.special_ids[f"<|{language_code(language, text_tok)}|>"], set(languages.values()), 1)


def swap_task(prompt: list[int], text_tok, task: str, what: str) -> list[int]:
    """`prompt` with the task token <|transcribe|> or <|translate|> (into English): in place of its task
    token, or after its language token (<|startoftranscript|> when it has none). Multilingual models only."""
    if task not in ("transcribe", "translate"):
        raise ValueError(f"task={task!r}: expected transcribe or translate")
    languages = set(language_tokens(text_tok).values())
    if not languages:
        if task == "transcribe":  # (what such a model does: as openai-whisper takes task="transcribe" for a .en model)
            return prompt
        raise ValueError(f"task={task}: {what} is an English-only or a from-scratch model; it has no task tokens")
    specials = text_tok.special_ids
    after_language = next((i + 1 for i, t in enumerate(prompt) if t in languages), 1)
    return put_token(prompt, specials[f"<|{task}|>"], {specials["<|transcribe|>"], specials["<|translate|>"]}, after_language)


def previous_text(text_tok, text: str) -> list[int]:
    """openai-whisper's `prompt` / `initial_prompt`: <|startofprev|> and the text's tokens (after a
    space; the last max_positions // 2 - 1 of them), put before the prompt so the decoder reads it as
    what was said before (names, spellings, a style to follow). Whisper's vocabulary only."""
    return previous_tokens(text_tok, text_tokens(text_tok, text, "initial_prompt"))


def text_tokens(text_tok, text: str, what: str) -> list[int]:
    """The tokens of a text said before (after a space, as Whisper writes text), for `previous_tokens`."""
    needs_previous(text_tok, what)
    if held := next((s for s in text_tok.special_ids if s in text), None):  # (encode's own error advises Python keywords)
        raise ValueError(f"{what}: the text holds the special token {held!r}, which a prompt's text cannot hold (it is read as text said before)")
    return [int(i) for i in text_tok.encode_ids(" " + text.strip())]


def needs_previous(text_tok, what: str) -> None:
    if "<|startofprev|>" not in text_tok.special_ids:
        raise ValueError(f"{what}: this run's vocabulary has no <|startofprev|> (a from-scratch model); it needs Whisper's")


def previous_tokens(text_tok, initial: list[int], carried: list[int] = ()) -> list[int]:
    """What the decoder reads as said before a window: <|startofprev|>, an initial prompt's tokens,
    then the latest of `carried` (the text decoded before it in the recording), max_positions // 2 - 1
    tokens in all — openai-whisper's decoding prompt with carry_initial_prompt=True, slice for
    slice: an initial prompt that fills the room (max_positions // 2 - 1 tokens or more) is followed
    by all the carried text (or all but its first tokens past the room), and the last tokens that
    fit are read, so carried text pushes such a prompt out. [] when there is neither."""
    if not initial and not carried:
        return []
    needs_previous(text_tok, "previous text")
    room = text_tok.max_positions // 2 - 1
    tokens = list(initial) + list(carried[len(initial) - room :])  # openai-whisper's all_tokens[n:][-(room - len(initial)):]
    return [text_tok.special_ids["<|startofprev|>"]] + tokens[-room:]


def put_token(prompt: list[int], token: int, kind: set[int], insert_at: int) -> list[int]:
    """`prompt` with `token` in place of its token of the same kind, or inserted at `insert_at` when it has none."""
    at = next((i for i, t in enumerate(prompt) if t in kind), None)
    return prompt[:at] + [token] + prompt[at + 1 :] if at is not None else prompt[:insert_at] + [token] + prompt[insert_at:]


def text_example(tok, transcript: str, name: str, prompt: list[int] | None = None) -> TokenSet:
    """Decoder input = prompt + the transcript's tokens; targets = the next token; loss on the
    transcript and EOT. A Whisper (BPE) vocabulary reads the transcript after a space, as Whisper
    writes its text (" Hello")."""
    prompt = prompt or prompt_ids(tok)
    lead = " " if isinstance(tok, BPETokenizer) and transcript else ""  # an empty transcript: the prompt, then EOT
    try:
        chars = [int(i) for i in tok.encode_ids(lead + transcript)]
    except ValueError as e:
        raise ValueError(f"{name}: transcript {transcript!r}: {e}") from None
    ids = torch.tensor(prompt + chars + [tok.special_ids[EOT]])
    if len(ids) - 1 > tok.max_positions:
        raise ValueError(f"{name}: transcript of {len(chars)} tokens is longer than the {tok.max_positions - len(prompt)} that "
                         f"max_text={tok.max_positions} leaves after the {len(prompt)}-token prompt")  # fmt: skip
    loss_mask = torch.arange(len(ids) - 1) >= len(prompt) - 1
    return TokenSet("text", ids=ids[:-1], targets=ids[1:], loss_mask=loss_mask)


class SpeechSet(Dataset):
    """(file, transcript) pairs → {"audio": frames, "text": prompt + characters} examples."""

    def __init__(self, pairs: list[tuple[Path, str]], audio_tok: AudioTokenizer, text_tok, prompt: list[int] | None = None):
        self.pairs, self.audio_tok, self.text_tok, self.prompt = pairs, audio_tok, text_tok, prompt or prompt_ids(text_tok)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> dict:
        path, transcript = self.pairs[i]
        wave, rate = load_audio(path)
        return {"audio": self.audio_tok.encode(wave, rate, name=str(path)), "text": text_example(self.text_tok, transcript, str(path), self.prompt)}


def build_data(cfg: Config, evaluating: bool = False):
    """-> (audio tokenizer, text tokenizer, train set, test set); `evaluating` a run: no training set
    (its corpus is not made, or checked)."""
    from .speech import TEST_VOICES, TRAIN_VOICES, make_corpus

    root = cache_folder(cfg.data_dir or os.path.expanduser("~/.cache/tokenizers-mm/whisper_digits"), "the synthesized corpus")
    train_rows = [] if evaluating else make_corpus(root / "train", cfg.n_train, TRAIN_VOICES, seed=1)
    test_rows = make_corpus(root / "test", cfg.n_test, TEST_VOICES, seed=2)
    audio_tok = AudioTokenizer(n_mels=cfg.n_mels, slice_frames=1, chunk=False, max_frames=cfg.max_frames)
    text_tok = text_tokenizer(cfg)
    pairs = lambda rows, d: [(root / d / r.file_name, r.transcription.lower()) for r in rows]  # noqa: E731
    prompt = prompt_ids(text_tok, cfg.prompt)
    return (audio_tok, text_tok, SpeechSet(pairs(train_rows, "train"), audio_tok, text_tok, prompt),
            SpeechSet(pairs(test_rows, "test"), audio_tok, text_tok, prompt))  # fmt: skip


# -- model ----------------------------------------------------------------------------------------
def build_model(cfg: Config, audio_tok: AudioTokenizer, text_tok: CharTokenizer) -> MultimodalTransformer:
    trunk = TrunkConfig(dim=cfg.dim, depth=cfg.depth, dec_depth=cfg.dec_depth, num_heads=cfg.num_heads, dropout=cfg.dropout,
                        mode="encoder-decoder")  # fmt: skip
    modalities = {"audio": ModalityConfig.from_tokenizer(audio_tok, embedder="whisper_conv"), "text": ModalityConfig.from_tokenizer(text_tok)}
    return MultimodalTransformer(ModelConfig(trunk, modalities, {"lm": HeadConfig("lm", "text")}, encoder_inputs=["audio"], decoder_inputs=["text"]))


# -- metric ---------------------------------------------------------------------------------------
@torch.no_grad()
def transcribe_batch(model: MultimodalTransformer, text_tok, audio_batch, max_new: int, beam_size: int = 1, length_penalty: float = 1.0,
                     ended: list | None = None, prompt: list[int] | None = None, suppress: LogitsFilter | None = None,
                     patience: float = 1.0) -> list[str]:  # fmt: skip
    """Greedy decoding (beam_size 1) or beam search (`MultimodalTransformer.beam_search`), with the
    KV cache, after `prompt` (default: DEFAULT_PROMPT); stops at <|endoftext|>. `ended`, when
    given, receives for each row whether it reached <|endoftext|> within max_new. audio_batch: an audio TokenBatch, or its encoder Memory
    (`audio_memory`)."""
    rows = decode_rows(model, text_tok, audio_batch, max_new, prompt or prompt_ids(text_tok), 0.0, beam_size, length_penalty, suppress=suppress,
                       patience=patience)  # fmt: skip
    results = [row_result(text_tok, row) for row in rows]
    if ended is not None:
        ended += [r["ended"] for r in results]
    return [r["text"] for r in results]


def row_result(text_tok, row: list[int]) -> dict:
    """A decoded row (the tokens after the prompt, <|endoftext|> kept when reached) as {"text",
    "tokens" (without <|endoftext|>), "ended" (whether it reached <|endoftext|>)}."""
    eot = text_tok.special_ids[EOT]
    tokens = [t for t in row if t != eot]
    return {"text": row_text(text_tok, tokens), "tokens": tokens, "ended": eot in row}


def row_text(text_tok, row: list[int]) -> str:
    """The text of decoded tokens, special tokens left out."""
    specials = set(text_tok.special_ids.values())
    return text_tok.decode([i for i in row if i not in specials]).strip()


FALLBACK = {  # openai-whisper's transcribe: retry a window hotter when its text looks wrong, skip it when it looks like silence
    "temperatures": (0.0, 0.2, 0.4, 0.6, 0.8, 1.0), "compression_ratio_threshold": 2.4, "logprob_threshold": -1.0,
    "no_speech_threshold": 0.6, "best_of": 5,
}  # fmt: skip


def compression_ratio(text: str) -> float:
    """Bytes of the text over bytes of its zlib compression: high for a text that repeats itself (openai-whisper's measure)."""
    import zlib

    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0


class Suppress:
    """openai-whisper's token suppression (`DecodingOptions(suppress_blank=True,
    suppress_tokens=tokens)`): `tokens` ("-1" by default: its non-speech symbols, ♪, brackets,
    speaker tags' punctuation ...; token ids separated by commas, -1 among them for those symbols)
    and the task and special tokens at every step ("": none of these, as there), a blank (" ") and
    <|endoftext|> as the first new token. A `logits_filter` for generate / beam_search; the token lists come from openai-whisper's own
    tokenizer for the run's vocabulary (installed with the Whisper weights it reads)."""

    def __init__(self, text_tok, tokens: str = "-1"):
        if not isinstance(text_tok, BPETokenizer) or "<|nospeech|>" not in text_tok.special_ids:
            raise ValueError("suppress: openai-whisper's token suppression is for Whisper's vocabulary; this run has its own")
        from whisper.tokenizer import get_tokenizer

        multilingual = text_tok.vocab_size >= MULTILINGUAL_VOCAB
        ref = get_tokenizer(multilingual, num_languages=n_languages(text_tok))
        if ref.encoding.n_vocab != text_tok.vocab_size:
            raise ValueError(f"suppress: openai-whisper's tokenizer has {ref.encoding.n_vocab} tokens, this run's {text_tok.vocab_size}")
        try:
            ids = [int(t) for t in tokens.split(",")] if tokens.strip() else []
        except ValueError:
            raise ValueError(f"suppress_tokens {tokens!r}: expected token ids separated by commas (-1: openai-whisper's non-speech symbols)") from None
        if bad := [t for t in ids if not -1 <= t < text_tok.vocab_size]:
            raise ValueError(f"suppress_tokens {tokens!r}: {bad[0]} is no token of this {text_tok.vocab_size}-token vocabulary")
        listed = [t for t in ids if t >= 0] + (list(ref.non_speech_tokens) if -1 in ids else [])
        specials = [ref.transcribe, ref.translate, ref.sot, ref.sot_prev, ref.sot_lm, ref.no_speech] if ids else []  # "": none at all
        self.always = sorted({*listed, *specials})
        self.first = [*ref.encode(" "), ref.eot]
        self.masks = {}  # (always, first) as (V,) bool masks per device: no index list copied to the device each step

    def __call__(self, logits: Tensor, step: int, ids: Tensor | None = None) -> Tensor:
        if logits.device not in self.masks:
            always, first = torch.zeros(2, logits.shape[-1], dtype=torch.bool)
            always[self.always], first[self.first] = True, True
            self.masks[logits.device] = always.to(logits.device), (always | first).to(logits.device)
        return logits.masked_fill(self.masks[logits.device][1 if step == 0 else 0], float("-inf"))


LogitsFilter = Callable[[Tensor, int, Tensor], Tensor]  # generate's logits_filter(logits, step, ids): Suppress, TimestampRules
TIME_PRECISION = 2 * HOP_LENGTH / SAMPLE_RATE  # seconds per timestamp step: one encoder frame (two mel hops), 0.02 s


class TimestampRules:
    """openai-whisper's ApplyTimestampRules, the `logits_filter` for decoding Whisper's timestamp
    tokens (<|0.00|> ... <|30.00|>, one per 0.02 s of the window): the first token is a timestamp of
    at most `max_initial` seconds; timestamps come in pairs (the end of one segment, the start of
    the next) except right before <|endoftext|>; they never decrease and a segment is never empty;
    a timestamp is forced where the timestamps together are likelier than any text token;
    <|notimestamps|> is never chosen. `suppress` (a Suppress) filters first, as openai-whisper
    orders its filters."""

    def __init__(self, text_tok, suppress: Suppress | None = None, max_initial: float | None = 1.0):
        specials = text_tok.special_ids
        if "<|0.00|>" not in specials:
            raise ValueError("timestamps: this run's vocabulary has no timestamp tokens (a from-scratch model); they need Whisper's")
        self.first_time, self.eot, self.no_timestamps = specials["<|0.00|>"], specials[EOT], specials[NO_TIMESTAMPS]
        self.max_initial = None if max_initial is None else round(max_initial / TIME_PRECISION)
        self.suppress = suppress

    def __call__(self, logits: Tensor, step: int, ids: Tensor) -> Tensor:
        logits = self.suppress(logits, step, ids) if self.suppress is not None else logits.clone()
        first, never = self.first_time, float("-inf")
        vocab = torch.arange(logits.shape[-1], device=logits.device)
        logits[:, self.no_timestamps] = never
        if step:  # the rules on what this row sampled so far (B rows at once)
            sampled = ids[:, ids.shape[1] - step :]
            stamp = sampled >= first
            last, before_last = stamp[:, -1], stamp[:, -2] if step > 1 else torch.ones_like(stamp[:, -1])
            # note: row masks crossed with vocabulary ranges (masked_fill), not boolean row indexing: no host sync per token
            logits.masked_fill_((last & before_last)[:, None] & (vocab >= first), never)  # a pair just closed: text comes next
            logits.masked_fill_((last & ~before_last)[:, None] & (vocab < self.eot), never)  # one timestamp after text: a second one, or the end
            at = torch.where(stamp, torch.arange(step, device=ids.device), -1).max(-1).values  # the latest timestamp, if any
            latest = sampled.gather(1, at.clamp(min=0)[:, None])[:, 0]
            floor = torch.where(last & ~before_last, latest, latest + 1)  # never decreasing; a segment's end after its start
            logits.masked_fill_((vocab >= first) & (vocab < floor[:, None]) & (at >= 0)[:, None], never)
        else:  # the first token: a timestamp, no later than max_initial
            logits[:, :first] = never
            if self.max_initial is not None:
                logits[:, first + self.max_initial + 1 :] = never
        logprobs = logits.float().log_softmax(-1)
        likelier = logprobs[:, first:].logsumexp(-1) > logprobs[:, :first].max(-1).values
        return logits.masked_fill_(likelier[:, None] & (vocab < first), never)


def timestamp_pieces(text_tok, tokens: list[int], start: float, length: float) -> list[tuple[float, float, list[int]]]:
    """A window's decoded tokens with timestamps as (start, end, tokens) pieces in the recording, as
    openai-whisper's transcribe cuts them: between consecutive timestamps (<|t1|><|t2|> ends one
    piece at t1 and starts the next at t2). A last piece without its closing timestamp ends with the
    window (`start` + `length` seconds), where openai-whisper would decode it again in the next
    window; without any timestamp pair the window is one piece, ending at its last timestamp. Times
    past the window's sound (its padding) are cut to its end. Every piece, those without text or
    length too (`window_segments` leaves them out)."""
    first = text_tok.special_ids["<|0.00|>"]
    tokens = [t for t in tokens if t != text_tok.special_ids[EOT]]
    stamp = [t >= first for t in tokens]
    at = lambda i: start + (tokens[i] - first) * TIME_PRECISION if stamp[i] else start  # noqa: E731 — a timestamp's time in the recording
    cuts = [i + 1 for i in range(len(tokens) - 1) if stamp[i] and stamp[i + 1]]
    if not cuts:  # no pair: the window is one piece, to its last timestamp
        last = max((i for i in range(len(tokens)) if stamp[i]), default=None)
        pieces = [(start, at(last) if last is not None and tokens[last] != first else start + length, tokens)]
    else:
        if stamp[-2:] == [False, True]:  # ends on one timestamp: its last piece is closed too
            cuts.append(len(tokens))
        pieces = [(at(a), at(b - 1), tokens[a:b]) for a, b in zip([0, *cuts], cuts)]
        if cuts[-1] < len(tokens):  # text after the last pair, never closed: it ends with the window
            pieces.append((at(cuts[-1]), start + length, tokens[cuts[-1] :]))
    end = start + length  # the window's sound ends here; a timestamp past it is in the padding
    return [(min(a, b, end), min(b, end), piece) for a, b, piece in pieces]


def window_segments(text_tok, decoded: dict, start: float, samples: int, timestamps: bool, words=None) -> list[dict]:
    """A decoded window's segments ({"start", "end", "text", "tokens"}, times in the recording; the
    window starts at `start` and holds `samples` of sound), as openai-whisper's transcribe keeps them:
    with `timestamps`, the pieces its timestamp tokens cut (`timestamp_pieces`), else the window as one.
    words: None, or a function that gives the window's segments their "words" in place and may move
    their times (`window_words`); it reads every piece, those without text or length too, as
    openai-whisper aligns all of a window's text before it clears such segments. Then the segments
    without text or length are left out. A window skipped as silence has none."""
    if decoded.get("skipped"):
        return []
    end = start + samples / SAMPLE_RATE
    pieces = timestamp_pieces(text_tok, decoded["tokens"], start, end - start) if timestamps else [(start, end, decoded["tokens"])]
    window = [{"start": a, "end": b, "text": row_text(text_tok, piece), "tokens": piece} for a, b, piece in pieces]
    if words is not None:
        words(window)
    return [seg for seg in window if seg["text"] and seg["end"] > seg["start"]]


@torch.no_grad()
def audio_memory(model: MultimodalTransformer, audio):
    """The encoder's output (a Memory) for an audio TokenBatch, so that decoding, scoring and retries
    read one encoder pass, as openai-whisper's decoder reads its audio features. A Memory, or the
    batch of a model whose decoder reads the audio itself (the generalist's prefix layout), is
    returned as it is, on the model's device; either has .select(rows) and .shape."""
    if isinstance(audio, Memory):
        return audio
    audio = audio.to(model.device)  # (a no-op where it is already)
    return audio if "audio" not in model.config.encoder_inputs else model.encode_memory({"audio": audio})


def decoder_feed(audio, rows: list) -> tuple[dict, Memory | None]:
    """(inputs, memory=) for reading token rows (lists or tensors of ids) after audio: an audio
    TokenBatch, or its Memory (`audio_memory`)."""
    memory = audio if isinstance(audio, Memory) else None
    device = memory.states.device if memory is not None else audio.mask.device
    text = collate([TokenSet("text", ids=torch.as_tensor(r)) for r in rows]).to(device)
    return ({"text": text} if memory is not None else {"audio": audio, "text": text}), memory


@torch.no_grad()
def no_speech_probs(model: MultimodalTransformer, text_tok, audio_batch, prompt: list[int]) -> list[float]:
    """openai-whisper's no_speech_prob per row of audio_batch (an audio TokenBatch, or its encoder
    Memory): <|nospeech|>'s probability after <|startoftranscript|>, before any filter; 0 without
    that token. It depends on the audio and the prompt only, so a fallback reads it once per window:
    one decoder pass over the prompt up to <|startoftranscript|>."""
    no_speech, rows = text_tok.special_ids.get("<|nospeech|>"), audio_batch.shape[0]
    if no_speech is None:
        return [0.0] * rows
    head = prompt[: prompt.index(text_tok.special_ids[SOT]) + 1]  # <|startoftranscript|>: first, or after a previous text
    inputs, memory = decoder_feed(audio_memory(model, audio_batch), [head] * rows)
    logits = next(iter(model(inputs, memory=memory).logits.values()))[:, -1].float()
    return (logits[:, no_speech] - logits.logsumexp(-1)).exp().tolist()


def scored_result(text_tok, row: list[int], sum_logprob: float, no_speech_prob: float) -> dict:
    """openai-whisper's DecodingResult figures for a decoded row (row_result's, with <|endoftext|>
    when reached) whose tokens sum to sum_logprob: avg_logprob (sum_logprob / (tokens without <|endoftext|>,
    timestamps counted, + 1)) and
    compression_ratio (of the text with its special tokens written, as openai-whisper measures it:
    a row repeating <|notimestamps|> repeats itself)."""
    first_time = text_tok.special_ids.get("<|0.00|>")  # openai-whisper's DecodingResult.text: special tokens written, timestamps not
    r = row_result(text_tok, row)
    written = r["text"] if first_time is None else text_tok.decode([t for t in r["tokens"] if t < first_time]).strip()
    return {"sum_logprob": sum_logprob, "avg_logprob": sum_logprob / (len(r["tokens"]) + 1), "compression_ratio": compression_ratio(written),
            "no_speech_prob": no_speech_prob, **r}  # fmt: skip


STATS_ROWS = 4  # rows scored together by decoding_stats: its logits are rows × positions × vocabulary floats


@torch.no_grad()
def decoding_stats(model: MultimodalTransformer, text_tok, audio_batch, prompt: list[int], rows: list[list[int]],
                   suppress: LogitsFilter | None = None) -> list[dict]:  # fmt: skip
    """scored_result per decoded row (the tokens after the prompt, up to and with <|endoftext|> when
    reached), teacher-forced, STATS_ROWS rows at a time: for rows decoded elsewhere. Decoding here
    sums its log-probabilities as it goes (`decode_rows(scored=True)`) and needs no such pass.
    suppress: the filter the decoding ran with (the log-probabilities are of what it left).
    audio_batch: an audio TokenBatch, or its encoder Memory (`audio_memory`)."""
    n, stats = len(prompt), []
    audio_batch = audio_memory(model, audio_batch)
    quiet = no_speech_probs(model, text_tok, audio_batch, prompt)
    for start in range(0, len(rows), STATS_ROWS):
        part = rows[start : start + STATS_ROWS]
        seqs = [torch.tensor(prompt + row) for row in part]
        inputs, memory = decoder_feed(audio_batch.select(slice(start, start + len(part))), seqs)
        logits = next(iter(model(inputs, memory=memory).logits.values())).float()
        if suppress is not None:  # each decoding step's filter, at the position that predicted its token, on the tokens before it
            ids = inputs["text"].ids
            for step in range(logits.shape[1] - n + 1):
                logits[:, n - 1 + step] = suppress(logits[:, n - 1 + step], step, ids[:, : n + step])
        norm = logits.logsumexp(-1)  # (rows, positions): log-probability = logit - norm, without a second vocabulary-wide tensor
        for b, (q, row) in enumerate(zip(seqs, part)):
            at, chosen = torch.arange(n - 1, len(q) - 1), q[n:].to(logits.device)
            total = float((logits[b, at, chosen] - norm[b, at]).sum()) if row else 0.0
            stats.append(scored_result(text_tok, row, total, quiet[start + b]))
    return stats


@torch.no_grad()
def decode_rows(model, text_tok, audio_batch, max_new: int, prompt: list[int], temperature: float = 0.0, beam_size: int = 1,
                length_penalty: float = 1.0, generator=None, suppress: LogitsFilter | None = None,
                scored: bool = False, patience: float = 1.0) -> list[list[int]] | tuple[list[list[int]], list[float]]:  # fmt: skip
    """Each row's tokens after the prompt, cut after <|endoftext|> (kept when reached): greedy, beam
    search (openai-whisper's, with its patience: `MultimodalTransformer.beam_search`) or sampling.
    audio_batch: an audio TokenBatch, or its encoder Memory (`audio_memory`).
    scored: also each row's summed log-probability (after `suppress`), as the decoding computed it:
    what decoding_stats computes again by teacher forcing, as openai-whisper's decoder sums it."""
    inputs, memory = decoder_feed(audio_memory(model, audio_batch), [prompt] * audio_batch.shape[0])
    eot = text_tok.special_ids[EOT]
    if beam_size > 1 and temperature == 0:
        out = model.beam_search(inputs, max_new, beam_size, length_penalty, eos_id=eot, logits_filter=suppress, memory=memory,
                                return_scores=scored, patience=patience)  # fmt: skip
    else:
        out = model.generate(inputs, max_new, temperature=temperature, eos_id=eot, generator=generator, logits_filter=suppress, memory=memory,
                             return_logprobs=scored)  # fmt: skip
    ids, sums = (out[0], out[1].reshape(out[1].shape[0], -1).sum(-1).tolist()) if scored else (out, None)
    rows = [row[: row.index(eot) + 1] if eot in row else row for row in ids[:, len(prompt) :].tolist()]
    return (rows, sums) if scored else rows


@torch.no_grad()
def decode_with_fallback(model, text_tok, audio_tok, waves: list, max_new: int, prompt: list[int], beam_size: int = 1,
                         length_penalty: float = 1.0, options: dict | None = None, batch=None, suppress: LogitsFilter | None = None,
                         patience: float = 1.0) -> list[dict]:  # fmt: skip
    """openai-whisper's decode_with_fallback for a group of windows: decode at temperature 0 (greedy
    or beam search); a window whose text compresses more than compression_ratio_threshold (it
    repeats itself) or whose avg_logprob is below logprob_threshold is decoded again at the next
    temperature, sampling best_of candidates and keeping the likeliest (log-probability / tokens);
    one that looks like silence (no_speech_prob above no_speech_threshold with a low avg_logprob) is
    not retried, and its text is dropped. Returns scored_result per window, with its temperature.
    batch: the windows' encoded batch or its encoder Memory, when the caller has it. The encoder runs
    once per window and every decoding and sample reads its memory; log-probabilities are summed
    while decoding, and no_speech_prob is read once per window. A threshold of None
    turns its check off, as in openai-whisper."""
    o = {**FALLBACK, **(options or {})}
    results: list = [None] * len(waves)
    pending = list(range(len(waves)))
    generator = torch.Generator(device=str(model.device)).manual_seed(0)
    encoded = audio_memory(model, batch if batch is not None else audio_tok.encode_batch(waves))
    silence = no_speech_probs(model, text_tok, encoded, prompt)  # per window, the same at every temperature
    for k, t in enumerate(o["temperatures"]):
        n = 1 if t == 0 else o["best_of"]
        which = torch.tensor(pending).repeat_interleave(n)  # the pending windows, best_of samples each
        rows, sums = decode_rows(model, text_tok, encoded.select(which), max_new, prompt, t, beam_size, length_penalty, generator, suppress,
                                 scored=True, patience=patience)  # fmt: skip
        stats = [scored_result(text_tok, row, s, silence[i]) for row, s, i in zip(rows, sums, which.tolist())]
        retry = []
        for j, i in enumerate(pending):
            # the likeliest sample, ranked as beam search ranks its beams (`length_normalised`: at 1.0 openai-whisper's default
            # ranking, log-probability / tokens; a GNMTPenalty as its numeric length_penalty)
            best = max(stats[j * n : (j + 1) * n], key=lambda r: length_normalised(r["sum_logprob"], len(r["tokens"]), length_penalty))
            low = o["logprob_threshold"] is not None and best["avg_logprob"] < o["logprob_threshold"]
            wrong = low or (o["compression_ratio_threshold"] is not None and best["compression_ratio"] > o["compression_ratio_threshold"])
            quiet = o["no_speech_threshold"] is not None and best["no_speech_prob"] > o["no_speech_threshold"]
            results[i] = {**best, "temperature": t}
            if wrong and not (quiet and low) and k + 1 < len(o["temperatures"]):  # silence is not retried
                retry.append(i)
        pending = retry
        if not pending:
            break
    for r in results:  # silence: openai-whisper skips the window unless its text is likely after all
        if o["no_speech_threshold"] is not None and r["no_speech_prob"] > o["no_speech_threshold"] and not (
                o["logprob_threshold"] is not None and r["avg_logprob"] > o["logprob_threshold"]):  # fmt: skip
            r |= {"text": "", "ended": True, "skipped": True}  # skipped, not text cut short
    return results


FALLBACK_FIGURES = ("temperature", "avg_logprob", "compression_ratio", "no_speech_prob")  # what a fallback adds to each segment


@torch.no_grad()
def decode_windows(model, text_tok, audio_tok, encoded, waves: list, prompt: list[int], max_text: int, beam_size: int = 1,
                   length_penalty: float = 1.0, fallback: dict | None = None, suppress: LogitsFilter | None = None, initial: list[int] = (),
                   carried: list[int] | None = None, sample_len: int | None = None, segments=None, patience: float = 1.0) -> list[dict]:  # fmt: skip
    """Decode consecutive windows of one recording (`encoded`: their audio TokenBatch or Memory), in
    order, after `prompt`: per window {"text", "tokens" (without <|endoftext|>), "ended",
    "temperature", "segments"}, with scored_result's figures when `fallback` is given
    (decode_with_fallback's options; {} = FALLBACK). segments: a function (window's index, its
    result) -> its segments, called once per window in order (`window_segments` with what the
    caller adds; default: window_segments from the window's start, with timestamps when it decoded
    any). initial: an initial prompt's tokens, read before every window (`previous_tokens`).
    carried: None, or the list of tokens decoded so far in the recording, which each window then
    reads after `initial` and extends in place with its segments' tokens — openai-whisper's
    condition_on_previous_text, so one window at a time; a window decoded hotter than 0.5 (not
    skipped as silence) starts the carried text afresh, as there (`previous_tokens` cuts what is
    read to fit, as there). Each window decodes up to max_text tokens in all, and at
    most `sample_len` new ones (openai-whisper's transcribe: max_positions // 2; `new_tokens`)."""
    if segments is None:
        first = text_tok.special_ids.get("<|0.00|>")
        segments = lambda i, r: window_segments(text_tok, r, 0.0, len(waves[i]), first is not None and any(t >= first for t in r["tokens"]))  # noqa: E731
    if carried is None:
        out = _decode_group(model, text_tok, audio_tok, encoded, waves, previous_tokens(text_tok, initial) + prompt, max_text, beam_size,
                            length_penalty, fallback, suppress, sample_len, patience)  # fmt: skip
        return [r | {"segments": segments(i, r)} for i, r in enumerate(out)]
    out = []
    for i, wave in enumerate(waves):
        full = previous_tokens(text_tok, initial, carried) + prompt
        r = _decode_group(model, text_tok, audio_tok, encoded.select(slice(i, i + 1)), [wave], full, max_text, beam_size, length_penalty,
                          fallback, suppress, sample_len, patience)[0]  # fmt: skip
        r["segments"] = segments(i, r)
        carried += [t for seg in r["segments"] for t in seg["tokens"]]  # openai-whisper carries the segments it keeps
        if r["temperature"] > 0.5 and not r.get("skipped"):
            carried.clear()
        out.append(r)
    return out


def sample_length(text_tok, audio_tok) -> int | None:
    """openai-whisper's sample_len for a model on Whisper's windows (half the decoder's positions:
    224 tokens a window), the cap `transcribe`, evaluation and the export decode with; None for a
    model on unpadded utterances (what fills max_text)."""
    return text_tok.max_positions // 2 if audio_tok.chunk else None


def new_tokens(max_text: int, prompt_len: int, sample_len: int | None) -> int:
    """How many tokens a window may decode after its prompt of `prompt_len`. With `sample_len`
    (Whisper's weights) as openai-whisper's decoder: at most sample_len, and up to one past the
    decoder's positions, the last token sampled from the last position and never read; else what
    fills max_text."""
    return min(max_text + 1 - prompt_len, sample_len) if sample_len else max_text - prompt_len


def _decode_group(model, text_tok, audio_tok, encoded, waves, full, max_text, beam_size, length_penalty, fallback, suppress,
                  sample_len, patience: float = 1.0) -> list[dict]:  # fmt: skip
    if max_text - len(full) < 1:
        raise ValueError(f"initial prompt: {len(full)} prompt tokens leave no room in the {max_text}-token decoder; shorten it")
    max_new = new_tokens(max_text, len(full), sample_len)
    if fallback is not None:
        return decode_with_fallback(model, text_tok, audio_tok, waves, max_new, full, beam_size, length_penalty, fallback, encoded, suppress,
                                    patience)  # fmt: skip
    rows = decode_rows(model, text_tok, encoded, max_new, full, 0.0, beam_size, length_penalty, suppress=suppress, patience=patience)
    return [{**row_result(text_tok, row), "temperature": 0.0} for row in rows]


@torch.no_grad()
def detect_language(model: MultimodalTransformer, text_tok, audio_batch) -> list[dict[str, float]]:
    """Whisper's language identification, as openai-whisper's `detect_language`: the decoder's
    distribution over the language tokens after <|startoftranscript|> alone; one {code: probability}
    per row of `audio_batch` (an audio TokenBatch, or its encoder Memory: `audio_memory`)."""
    languages = language_tokens(text_tok)
    if not languages:
        raise ValueError("language detection: this run is an English-only or a from-scratch model; it has no language tokens")
    inputs, memory = decoder_feed(audio_memory(model, audio_batch), [[text_tok.special_ids[SOT]]] * audio_batch.shape[0])
    logits = next(iter(model(inputs, memory=memory).logits.values()))[:, -1]
    probs = logits[:, list(languages.values())].float().softmax(-1).cpu()
    return [dict(zip(languages, row.tolist())) for row in probs]


def wer_normaliser(cfg: Config):
    """The text WER compares: as written, or openai-whisper's normaliser — its English one (spellings,
    numbers, contractions) for English, its basic one (case, punctuation, symbols) for other languages."""
    if cfg.wer_text == "raw":
        return lambda text: text
    try:
        from whisper.normalizers import BasicTextNormalizer, EnglishTextNormalizer
    except ImportError:
        raise FileNotFoundError("wer_text=whisper uses openai-whisper's text normalisers: pip install openai-whisper") from None
    english = getattr(cfg, "language", "") in ("", "en")
    return EnglishTextNormalizer() if english else BasicTextNormalizer()


def word_errors(pairs) -> tuple[int, int]:
    """(word errors, reference words) over (reference, hypothesis) pairs, as jiwer counts them: the
    WER of several sets of pairs together is the sum of their errors over the sum of their words.
    A reference without words (silence, or one the normaliser empties: "[laughs]") makes each word
    of its hypothesis an insertion, as jiwer 4 counts it: text made up on silence is an error."""
    import jiwer

    made_up = sum(len(h.split()) for r, h in pairs if not r.strip())  # (counted here: older jiwer refuses an empty reference)
    pairs = [(r, h) for r, h in pairs if r.strip()]
    if not pairs:
        return made_up, 0
    out = jiwer.process_words([r for r, _ in pairs], [h for _, h in pairs])
    return out.substitutions + out.deletions + out.insertions + made_up, out.substitutions + out.deletions + out.hits


def make_evaluate(cfg: Config, test_set: SpeechSet, text_tok):
    """evaluate(model, accelerator) -> {"val_wer", "val_loss"} over the first `eval_utterances` test
    utterances: the batches split across the processes (each decodes its own), their word errors,
    words and losses summed."""
    norm = wer_normaliser(cfg)
    from tqdm.auto import tqdm

    from .train import EvalBatches, my_share, summed

    n = min(cfg.eval_utterances, len(test_set))
    if n < 1:
        raise ValueError(f"eval_utterances={cfg.eval_utterances} with {len(test_set)} test utterances: evaluation needs at least 1")
    batches = EvalBatches(test_set, collate_examples, cfg.eval_batch_size, n)  # made as first read; a large test set is never in memory whole
    max_new = new_tokens(cfg.max_text, len(test_set.prompt), sample_length(text_tok, test_set.audio_tok))  # as `transcribe` decodes

    def evaluate(model, accelerator) -> dict:
        was = model.training
        model.eval()
        m = accelerator.unwrap_model(model)
        errors = words = loss = rows = 0.0
        mine = my_share(accelerator, len(batches))  # (another process's batches are not made)
        for i in tqdm(mine, desc="evaluating", unit="batch", leave=False, disable=None if accelerator.is_main_process else True):
            inputs = {k: v.to(accelerator.device) for k, v in batches[i][0].items()}
            size = inputs["text"].shape[0]
            loss += m(inputs).loss.item() * size
            hyps = transcribe_batch(m, text_tok, inputs["audio"], max_new, cfg.beam_size, cfg.length_penalty, prompt=test_set.prompt,
                                    patience=cfg.patience)  # fmt: skip
            pairs = [(norm(test_set.pairs[i * cfg.eval_batch_size + j][1]), norm(h)) for j, h in enumerate(hyps)]
            e, w = word_errors(pairs)
            errors, words, rows = errors + e, words + w, rows + size
        model.train(was)
        errors, words, loss, rows = summed(accelerator, errors, words, loss, rows)
        return {"val_wer": errors / words if words else float("nan"), "val_loss": loss / rows}

    return evaluate


# -- main -----------------------------------------------------------------------------------------
def run(cfg: Config, recipe: str, build_data, resume: bool = False) -> dict:
    """build_data(cfg, run_dir) -> (audio tokenizer, text tokenizer, train set, test set, model or None).
    A model from build_data (fine-tuning) replaces a freshly built one."""
    run_dir = resolve_run_dir(cfg, recipe)
    audio_tok, text_tok, train_set, test_set, model = build_data(cfg, run_dir if resume else None)
    set_seed(cfg.seed)
    model = (resume and resumed_architecture(run_dir, {"audio": audio_tok, "text": text_tok})) or model or build_model(cfg, audio_tok, text_tok)
    if not resume:
        def files():
            audio_tok.save(run_dir / "tokenizers" / "audio")
            text_tok.save(run_dir / "tokenizers" / "text")

        save_run_info(run_dir, recipe, cfg, files)
    save_split(run_dir, train_set, test_set)  # (a split drawn here: a new run's, or one resumed before its first checkpoint)
    print(f"{recipe}: {len(train_set):,} training / {len(test_set):,} test utterances, "
          f"{model.params_text()}, run dir {run_dir}")  # fmt: skip
    metrics = train(cfg, model, train_set, collate_examples, make_evaluate(cfg, test_set, text_tok), run_dir, resume=resume)
    print(f"test WER {metrics['val_wer'] * 100:.2f}%")
    return metrics


def main(cfg: Config, resume: bool = False) -> dict:
    return run(cfg, "whisper_digits", lambda cfg, _: (*build_data(cfg), None), resume)


def evaluate_run(run_dir, build_data, device=None) -> dict:
    from .runs import load_for_eval

    cfg, model, toks, accelerator = load_for_eval(run_dir, device)
    test_set = build_data(cfg, Path(run_dir))[3]
    cfg.eval_utterances = len(test_set)  # every one (training's evaluations decode the first eval_utterances)
    return make_evaluate(cfg, test_set, toks["text"])(model, accelerator) | {"val_utterances": len(test_set)}


def evaluate(run_dir, device=None) -> dict:
    return evaluate_run(run_dir, lambda cfg, _: build_data(cfg, evaluating=True), device)


# -- using a trained model ------------------------------------------------------------------------
TRANSCRIBE_GROUP = 16  # segments of a long file decoded together


def fill_windows(segments, seconds: float):
    """Join consecutive (start, waveform) segments, with the silence between them, into windows of
    at most `seconds`: what a model trained on whole 30 s windows (Whisper's weights) reads."""
    start, parts, end = None, [], 0.0
    for t, wave in segments:
        length = len(wave) / SAMPLE_RATE
        if start is not None and t + length - start > seconds:
            yield start, torch.cat(parts)
            start = None
        if start is None:
            start, parts, end = t, [], t
        parts += [torch.zeros(int(round((t - end) * SAMPLE_RATE))), torch.as_tensor(wave, dtype=torch.float32)]
        end = t + length
    if start is not None:
        yield start, torch.cat(parts)


def window_words(model, text_tok, memory, prompt: list[int], segments: list[dict], start: float, samples: int, last_speech: float,
                 heads=None, punctuations: tuple[str | None, str | None] = (None, None)) -> float:  # fmt: skip
    """Word timestamps for one decoded window (`recipes.word_timing`): its segments ({"start", "end",
    "tokens"}, times in the recording; the window starts at `start` and holds `samples` of sound)
    each get their "words". Returns where its speech ends (the next window's `last_speech`).
    punctuations: (joined to the word after, joined to the word before); None: openai-whisper's set."""
    from .word_timing import APPEND, PREPEND, add_word_timestamps, find_alignment

    special = text_tok.special_ids
    eot, no_timestamps = special[EOT], special[NO_TIMESTAMPS]
    sot_sequence = [t for t in prompt[prompt.index(special[SOT]) :] if t != no_timestamps]  # <|startoftranscript|>, language, task
    language = next((code for code, i in language_tokens(text_tok).items() if i in sot_sequence), None)  # how words are split
    tokens = [t for seg in segments for t in seg["tokens"] if t < eot]  # text, without timestamps
    alignment = find_alignment(model, text_tok, memory, sot_sequence, tokens, samples // HOP_LENGTH, language, heads)
    prepended, appended = (default if given is None else given for given, default in zip(punctuations, (PREPEND, APPEND)))
    return add_word_timestamps(segments, alignment, eot, start, last_speech, prepended, appended)


def transcribe(run_dir, paths: list[str], beam_size: int | None = None, min_pause: float | None = None, margin: float | None = None,
               language: str | None = None, task: str | None = None, fallback: bool | dict = False, suppress: bool | str = False,
               initial_prompt: str | None = None, condition_on_previous_text: bool = False, timestamps: bool = False,
               word_timestamps: bool = False, windows: str = "pauses", device=None) -> list[str]:  # fmt: skip
    """The text of each audio file (`transcribe_files`' results, their segments joined with a space)."""
    return [r["text"] for r in transcribe_files(run_dir, paths, beam_size, min_pause, margin, language, task, fallback, suppress,
                                                initial_prompt, condition_on_previous_text, timestamps, word_timestamps, windows=windows,
                                                device=device)]  # fmt: skip


@torch.no_grad()
def transcribe_files(run_dir, paths: list[str], beam_size: int | None = None, min_pause: float | None = None, margin: float | None = None,
                     language: str | None = None, task: str | None = None, fallback: bool | dict = False,
                     suppress: bool | str = False, initial_prompt: str | None = None, condition_on_previous_text: bool = False,
                     timestamps: bool = False, word_timestamps: bool = False, alignment_heads=None, windows: str = "pauses",
                     hallucination_silence_threshold: float | None = None, clip_timestamps: str | list[float] | None = None,
                     carry_initial_prompt: bool = False, prepend_punctuations: str | None = None,
                     append_punctuations: str | None = None, patience: float | None = None, length_penalty: float | None = None,
                     device=None, each: bool = False) -> list[dict] | Iterator[tuple[str, dict | Exception]]:  # fmt: skip
    """Transcribe audio files with a run's last checkpoint on `device` (None = the CPU; the log-mel is
    computed there too), with the run's beam_size and patience unless given (beam search as
    openai-whisper's, `MultimodalTransformer.beam_search`): one
    result per file as openai-whisper's `transcribe` returns it — {"text", "segments": [{"id",
    "start", "end", "text"}], "language"}, times in seconds — for `recipes.transcripts` to write as
    subtitles. Each file is cut at its pauses (`tokenizers_mm.audio.split_at_pauses`: pauses of at
    least `min_pause` seconds (None: split_at_pauses' 0.1), segments trimmed to their sound with `margin` seconds (None: 0) either side and
    no longer than the model's window, max_frames); silence is skipped. whisper_digits learns from
    single utterances cut tight, so a segment should hold one utterance and start where it does: the
    defaults do both. A run on Whisper's weights (30 s windows) reads consecutive segments together,
    up to 30 s, as Whisper does: its segments are those windows.
    language: for a prompt with a language token (multilingual Whisper weights), another language
    (a code or a name), or "auto" to detect each file's on its first window, as openai-whisper's
    transcribe does; None = the run's. task: "translate" (speech in any language to English text) or
    "transcribe", for multilingual Whisper weights; None = the run's. fallback: openai-whisper's
    temperature fallback and silence skipping (`decode_with_fallback`; a dict overrides FALLBACK's
    thresholds); each segment then also carries its temperature, avg_logprob, compression_ratio and
    no_speech_prob. suppress: openai-whisper's token suppression (`Suppress`; Whisper's vocabulary
    only): True for its default, or its suppress_tokens ("-1,1234": ids, -1 for its non-speech
    symbols). initial_prompt: text the decoder reads as said before every window
    (`previous_text`; names and spellings to follow). condition_on_previous_text: each window also
    reads the text decoded before it in the file, as openai-whisper's transcribe does by default
    (`decode_windows`; windows are then decoded one at a time; Whisper's vocabulary only).
    timestamps: decode Whisper's timestamp tokens (`TimestampRules`; the prompt without
    <|notimestamps|>), so each window's text comes as the segments they time (`window_segments`),
    as openai-whisper's transcribe decodes by default; Whisper's weights only. word_timestamps: each
    segment also carries its "words" ({"word", "start", "end", "probability"}), aligned to the audio
    by the decoder's cross-attention (`recipes.word_timing`, openai-whisper's --word_timestamps), and
    its start and end follow its words'; every piece of a window's text is aligned, then segments
    without text or length are dropped (openai-whisper keeps them, emptied), and only the kept ones'
    tokens are carried to the next window; Whisper's weights only. alignment_heads: the (decoder layer, head)
    pairs that align, as a list, "layer:head,..." or a released model's name ("small": the heads
    openai-whisper lists for it); None = every head of the decoder's second half, openai-whisper's
    default for weights loaded from a file (`recipes.word_timing.alignment_heads`).
    windows: "pauses" (the above) or "seek": openai-whisper's own windows, one after another over the
    whole file, each starting where the text before it ended (`recipes.whisper_seek`; the file is read
    whole, min_pause and margin are refused, and an initial prompt is read before the first window
    only, then as part of the carried text, as there, unless carry_initial_prompt: then before every
    window, as windows="pauses" always reads it); Whisper's weights only.
    hallucination_silence_threshold: with windows="seek" and word_timestamps, openai-whisper's option
    of that name: silences longer than this many seconds around words that look made up are skipped
    (`recipes.whisper_seek.skip_hallucinations`).
    prepend_punctuations / append_punctuations: with word_timestamps, the punctuation joined to the
    word after / before it (None: openai-whisper's defaults, `recipes.word_timing.PREPEND` / APPEND).
    clip_timestamps: with windows="seek", openai-whisper's option of that name: only these clips of
    each file are read, "start,end,start,end,..." in seconds or a list of them, an odd last start
    running to the end of the file (`recipes.whisper_seek.seek_clips`).
    length_penalty: openai-whisper's option of that name: None ranks beams and the fallback's
    samples as the run does (cfg.length_penalty: log-probability / tokens ** it; 1.0, the default,
    is openai-whisper's ranking), a number α from 0 to 1 by log-probability / ((5 + tokens) / 6) ** α
    (GNMT's, `GNMTPenalty`).
    each: instead of the list, an iterator of (path, result or the error that stopped that file),
    each file transcribed as it is reached: a long batch is not lost to one bad file (`mmtok transcribe`)."""
    from .runs import load_run_info

    if windows not in ("pauses", "seek"):
        raise ValueError(f"windows={windows!r}: expected 'pauses' (cut at pauses) or 'seek' (openai-whisper's windows)")

    _, _, cfg = load_run_info(run_dir)
    beam_size = beam_size or cfg.beam_size
    if patience is not None and beam_size == 1:  # as openai-whisper, which asks for a beam_size with it
        raise ValueError(f"patience={patience}: beam search's; give a beam_size above 1 ({run_dir} decodes greedily)")
    patience = cfg.patience if patience is None else patience
    if beam_size > 1:  # (beam_search's rule, before any file is read: not a skip per file)
        finished_beams(beam_size, patience)
    if length_penalty is not None and not 0 <= length_penalty <= 1:  # as openai-whisper
        raise ValueError(f"length_penalty={length_penalty}: openai-whisper's alpha, from 0 to 1")
    length_penalty = cfg.length_penalty if length_penalty is None else GNMTPenalty(length_penalty)
    model, toks = load_trained(run_dir, device)
    on = model.device  # the log-mel is computed there too, as openai-whisper's transcribe does
    import itertools
    import sys

    seconds = toks["audio"].max_frames * HOP_LENGTH / SAMPLE_RATE
    run_prompt = prompt_ids(toks["text"], cfg.prompt)
    if task:
        run_prompt = swap_task(run_prompt, toks["text"], task, str(run_dir))
    if language and language.strip().lower() == "auto":
        language = "auto"
        if not language_tokens(toks["text"]):
            raise ValueError(f"language=auto: {run_dir} is an English-only or a from-scratch model; it has no language tokens to choose from")
    run_language = getattr(cfg, "language", "") or ("en" if n_languages(toks["text"]) and not language_tokens(toks["text"]) else None)  # (English-only: en, as openai-whisper)
    suppressor = Suppress(toks["text"], "-1" if suppress is True else suppress) if suppress not in (False, None) else None  # the logits filter decoding runs with: suppression, timestamp rules
    if timestamps:
        if not toks["audio"].chunk:
            raise ValueError(f"timestamps: {run_dir} reads unpadded utterances; Whisper's timestamps count 0.02 s steps of its 30 s windows")
        suppressor = TimestampRules(toks["text"], suppressor)  # checks the vocabulary
        run_prompt = [t for t in run_prompt if t != toks["text"].special_ids[NO_TIMESTAMPS]]
    if hallucination_silence_threshold is not None and not (windows == "seek" and word_timestamps):
        raise ValueError("hallucination_silence_threshold: it skips silence around words that look made up; it needs windows=seek and word_timestamps")
    punctuations = (prepend_punctuations, append_punctuations)  # None: openai-whisper's set (`window_words`)
    if punctuations != (None, None) and not word_timestamps:
        raise ValueError("prepend_punctuations / append_punctuations: they join punctuation to words; it needs word_timestamps")
    if carry_initial_prompt and not (windows == "seek" and initial_prompt):
        raise ValueError("carry_initial_prompt: it reads the initial prompt before every window of windows=seek (windows=pauses always "
                         "does); it needs windows=seek and an initial_prompt")  # fmt: skip
    if windows == "seek" and (min_pause, margin) != (None, None):  # (seek's windows are openai-whisper's: no pause is looked for)
        raise ValueError("min_pause / margin: they cut a file at its pauses (windows=pauses); windows=seek reads openai-whisper's windows")
    cutting = {k: v for k, v in (("min_pause", min_pause), ("margin", margin)) if v is not None}  # (else split_at_pauses' defaults)
    if clip_timestamps is not None:
        if windows != "seek":
            raise ValueError("clip_timestamps: the clips are read as openai-whisper's windows; it needs windows=seek")
        from .whisper_seek import seek_clips

        seek_clips(clip_timestamps, 0)  # a malformed list fails before any file is read
    if windows == "seek" and not toks["audio"].chunk:
        raise ValueError(f"windows=seek: {run_dir} reads unpadded utterances; openai-whisper's windows are 30 s windows of Whisper's weights")
    if word_timestamps and not (toks["audio"].chunk and NO_TIMESTAMPS in toks["text"].special_ids):
        raise ValueError(f"word_timestamps: {run_dir} is not a run on Whisper's weights; its decoder was not trained to align words to 30 s windows")
    if alignment_heads is not None:
        from .word_timing import alignment_heads as checked_heads

        if not word_timestamps:
            raise ValueError("alignment_heads: the heads align words; it needs word_timestamps")
        alignment_heads = checked_heads(alignment_heads, model)
    if word_timestamps and toks["text"].special_ids.get("<|translate|>") in run_prompt:  # as openai-whisper warns
        print(f"transcribe {run_dir}: word timestamps on a translation may not be reliable (its English words are not the words said)",
              file=sys.stderr)  # fmt: skip
    initial = text_tokens(toks["text"], initial_prompt, "initial_prompt") if initial_prompt else []
    if condition_on_previous_text:
        needs_previous(toks["text"], "condition_on_previous_text")
    options = None if not fallback else fallback if isinstance(fallback, dict) else {}
    sample_len = sample_length(toks["text"], toks["audio"])  # Whisper's weights: openai-whisper's limit per window
    if language and language != "auto":  # checked before any audio is read
        run_prompt = swap_language(run_prompt, toks["text"], language, str(run_dir))
        run_language = language_code(language, None)  # checked by swap_language
    def segments_of(group, batch, prompt, i: int, d: dict) -> list[dict]:  # a decoded window's segments, in the file's order
        def words(window: list[dict]) -> None:
            nonlocal last_speech
            last_speech = window_words(model, toks["text"], batch.select(slice(i, i + 1)), prompt, window, t, len(w), last_speech,
                                       alignment_heads, punctuations)  # fmt: skip

        t, w = group[i]
        figures = {k: d[k] for k in FALLBACK_FIGURES} if fallback else {}
        return [seg | figures for seg in window_segments(toks["text"], d, t, len(w), timestamps, words if word_timestamps else None)]

    last_speech = 0.0  # (words' timing: where the last word ended, in the file being read)

    def transcribe_one(p) -> dict:
        nonlocal last_speech
        damage = ""  # a file that stops decoding part-way: its readable part is transcribed and the damage named

        def readable(pieces):
            nonlocal damage
            try:
                yield from pieces
            except AudioError as e:
                damage = str(e)

        stream = stream_audio(p, seconds)
        first = next(stream, None)  # a file unreadable from its start is an error
        if first is None:
            raise AudioError(f"audio {p}: the file holds no samples")
        stream = readable(itertools.chain([first], stream))
        import soundfile
        from tqdm.auto import tqdm

        info = soundfile.info(str(p))  # readable: stream_audio checked it
        total = math.ceil(info.duration)
        bar = tqdm(total=total, unit="s", desc=f"transcribe {Path(p).name}", leave=False, disable=None)  # off when stderr is not a terminal
        try:  # (the bar is closed when a bad file stops the transcription too: the next file's bar starts on its own line)
            prompt, file_language, carried, last_speech = run_prompt, run_language, [] if condition_on_previous_text else None, 0.0
            unread = ""  # why nothing of the recording was decoded, when nothing was

            def detect(first_window) -> None:  # language="auto": the file's first window (its encoder Memory) decides
                nonlocal prompt, file_language
                probs = detect_language(model, toks["text"], first_window)[0]
                file_language = max(probs, key=probs.get)
                print(f"transcribe {p}: detected language {file_language} (p={probs[file_language]:.2f})", file=sys.stderr)
                prompt = swap_language(run_prompt, toks["text"], file_language, str(run_dir))

            if windows == "seek":
                from .whisper_seek import recording_mel, seek_clips, transcribe_seeking, window_batch

                mel = recording_mel(toks["audio"], stream, str(p), on, -(-info.frames * SAMPLE_RATE // info.samplerate))
                if language == "auto":
                    detect(audio_memory(model, window_batch(toks["audio"], mel, 0, toks["audio"].max_frames)))
                content = mel.shape[-1] - toks["audio"].max_frames  # 10 ms frames of the recording (the mel carries a window of padding)
                clips = None if clip_timestamps is None else seek_clips(clip_timestamps, content)
                if not sum(max(0, b - a) for a, b in clips or [(0, content)]):  # nothing to decode: not "silence"
                    unread = "it is shorter than one 10 ms frame" if not content else f"clip_timestamps hold none of its {content / 100:g} s"
                found, ended = transcribe_seeking(model, toks["text"], toks["audio"], mel, prompt, cfg.max_text, sample_len, beam_size,
                                                  length_penalty, options, suppressor, initial, condition_on_previous_text, word_timestamps,
                                                  alignment_heads, hallucination_silence_threshold, clips, carry_initial_prompt, punctuations, patience,
                                                  progress=lambda s: bar.update(min(total, int(s)) - bar.n))  # fmt: skip
            else:  # cut at pauses, the stretches of speech joined into windows
                found, ended, segments = [], [], split_at_pauses(stream, seconds, **cutting)
                if toks["audio"].chunk:  # Whisper's weights: whole windows, not one utterance each
                    segments = fill_windows(segments, seconds)
                while group := list(itertools.islice(segments, TRANSCRIBE_GROUP)):  # a few segments at a time: memory stays flat
                    batch = toks["audio"].encode_batch([w for _, w in group], names=[f"{p} [{t:.1f} s]" for t, _ in group], device=on)
                    batch = audio_memory(model, batch)  # one encoder pass per window, whatever reads it
                    if language == "auto" and prompt is run_prompt:  # the file's first window decides its language
                        detect(batch.select(slice(0, 1)))
                    decoded = decode_windows(model, toks["text"], toks["audio"], batch, [w for _, w in group], prompt, cfg.max_text,
                                             beam_size, length_penalty, options, suppressor, initial, carried, sample_len,
                                             functools.partial(segments_of, group, batch, prompt), patience)  # fmt: skip
                    ended += [d["ended"] for d in decoded]
                    found += [seg for d in decoded for seg in d["segments"]]
                    bar.update(min(total, int(group[-1][0] + len(group[-1][1]) / SAMPLE_RATE)) - bar.n)  # seconds of the recording read
            bar.update(total - bar.n)  # the silence after the last window too
        finally:
            bar.close()
        if damage:
            print(f"transcribe {p}: {damage}; the text covers the recording up to there", file=sys.stderr)
        if not ended:
            why = ("nothing above -60 dBFS, steady noise, or sound too short to be a word: under 50 ms 15 dB above the noise floor"
                   if windows != "seek" else unread or "every window decoded as silence")  # (split_at_pauses' rules)
            print(f"transcribe {p}: no speech found ({why})", file=sys.stderr)
        elif not all(ended):
            after = new_tokens(cfg.max_text, len(previous_tokens(toks["text"], initial) + prompt), sample_len)
            limit = (f"their token limit ({sample_len or cfg.max_text} tokens, fewer after a long carried text)" if windows == "seek"
                     else f"openai-whisper's limit of {after} tokens a window (half the decoder's {toks['text'].max_positions} positions)"
                     if sample_len and after == sample_len else f"max_text={cfg.max_text} ({after} tokens after the prompt)")  # fmt: skip
            print(f"transcribe {p}: {ended.count(False)} of {len(ended)} {'windows' if windows == 'seek' else 'segments'} (up to "
                  f"{seconds:g} s) reached {limit} before their end; "
                  "their text is cut (fast speech, a model trained on shorter utterances, or one that has not yet learned to stop)",
                  file=sys.stderr)  # fmt: skip
        segs = [{"id": i, **seg, "start": round(seg["start"], 3), "end": round(seg["end"], 3)} for i, seg in enumerate(found)]
        for seg in (seg for seg in segs if "words" in seg and windows == "pauses"):  # (as the segments: a word moved to its window's
            # start took a float sum, 9.559999999999999; seek's are openai-whisper's own, to the bit)
            seg["words"] = [{**w, "start": round(w["start"], 3), "end": round(w["end"], 3)} for w in seg["words"]]
        # Whisper's vocabulary: the text of all the tokens, as openai-whisper's transcribe decodes it (its tokens carry their
        # spaces; none is added between segments of zh or ja); a from-scratch run's characters: the segments joined by a space
        text = (row_text(toks["text"], [t for seg in segs for t in seg["tokens"]]) if toks["audio"].chunk
                else " ".join(seg["text"] for seg in segs))  # fmt: skip
        for seg in segs:
            del seg["tokens"]
        return {"text": text, "segments": segs, "language": file_language}

    if not each:
        return [transcribe_one(p) for p in paths]
    return ((p, attempt(transcribe_one, p)) for p in paths)


def attempt(f, *args):
    """f(*args), or the error that makes one input of many unreadable (a bad file: named in it); other
    errors (out of memory, a bug) stop the whole."""
    from soundfile import LibsndfileError

    try:
        return f(*args)
    except (ValueError, OSError, LibsndfileError) as e:
        return e
