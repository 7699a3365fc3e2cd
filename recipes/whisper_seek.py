"""openai-whisper's own window placement for `mmtok transcribe --windows seek`: one 30 s window after
another over the whole recording's log-mel, each starting where the text before it ended.

`transcribe_files` cuts a file at its pauses and joins the stretches of speech into windows (silence
skipped without decoding, no text decoded twice). This module follows whisper/transcribe.py step for
step instead, so that a run on Whisper's weights gives the segments openai-whisper's `transcribe`
gives on the same weights and audio:

- the log-mel of the whole recording (with 30 s of silence after it), its max − 8 floor taken over
  all of it; a window is 3,000 frames of it from `seek`, the last one padded with zeros;
- a window whose timestamps end on a pair (text after its last pair never closed) is not kept to its
  end: the next window starts at that last timestamp and decodes the text again; a window ending on
  a single timestamp, or without timestamps, is read whole;
- with word timestamps, a window that does not end on a single timestamp is followed from its last
  word's end;
- silence is found by decoding (no_speech_prob, with the fallback's thresholds), not by level;
- the previous text a window reads (condition_on_previous_text) and an initial prompt are openai-
  whisper's: the initial prompt before the first window, and before the later ones only as part of
  the text carried (carry_initial_prompt=False, its default).

The whole recording is read into memory (a 1 h file: about 230 MB of samples and 115 MB of log-mel).
Not followed: openai-whisper's clip_timestamps and hallucination_silence_threshold; and a window whose
decoding fills the decoder's positions stops one token before openai-whisper's, which samples one
token past its context (never reading it).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tokenizers_mm import TokenSet, collate
from tokenizers_mm.audio import HOP_LENGTH, SAMPLE_RATE, check_finite, log_mel_spectrogram

from .whisper_digits import EOT, FALLBACK_FIGURES, TIME_PRECISION, _decode_group, audio_memory, previous_tokens, row_text, window_words

INPUT_STRIDE = round(TIME_PRECISION * SAMPLE_RATE / HOP_LENGTH)  # log-mel frames per timestamp step (the encoder's stride): 2


def recording_mel(audio_tok, wave: torch.Tensor, name: str = "audio") -> torch.Tensor:
    """openai-whisper's transcribe: the log-mel (n_mels, F) of the recording followed by one window of
    silence (so that every window can be sliced whole), floored at its max − 8 over all of it."""
    mel = log_mel_spectrogram(F.pad(wave, (0, audio_tok.max_frames * HOP_LENGTH)), audio_tok.n_mels)
    check_finite(mel, wave, name)
    return mel


def window_batch(audio_tok, mel: torch.Tensor, seek: int, frames: int):
    """The audio TokenBatch of one window: `frames` frames of `mel` from `seek`, padded with zeros to
    the window (as openai-whisper's pad_or_trim pads a log-mel)."""
    return collate([TokenSet("audio", values=audio_tok.slices(F.pad(mel[:, seek : seek + frames], (0, audio_tok.max_frames - frames))))])


def seek_pieces(text_tok, tokens: list[int], time_offset: float, frames: int) -> tuple[list[tuple[float, float, list[int]]], int, bool]:
    """A window's decoded tokens (no <|endoftext|>) as openai-whisper's transcribe cuts them: (pieces
    (start, end, tokens) in the recording, frames to advance `seek` by, whether the window ends on a
    single timestamp). Between consecutive timestamps one piece ends and the next starts; text after
    the last pair is left for the next window, which starts at that timestamp; without a pair the
    window is one piece, to its last timestamp (or its end)."""
    first = text_tok.special_ids["<|0.00|>"]
    stamp = [t >= first for t in tokens]
    single_ending = stamp[-2:] == [False, True]
    consecutive = [i + 1 for i in range(len(tokens) - 1) if stamp[i] and stamp[i + 1]]
    at = lambda t: time_offset + (t - first) * TIME_PRECISION  # noqa: E731 — a timestamp's time in the recording
    if consecutive:
        slices = consecutive + ([len(tokens)] if single_ending else [])
        pieces = [(at(tokens[a]), at(tokens[b - 1]), tokens[a:b]) for a, b in zip([0, *slices], slices)]
        advance = frames if single_ending else (tokens[slices[-1] - 1] - first) * INPUT_STRIDE  # to the last timestamp
        return pieces, advance, single_ending
    stamps = [t for t in tokens if t >= first]
    duration = (stamps[-1] - first) * TIME_PRECISION if stamps and stamps[-1] != first else frames * HOP_LENGTH / SAMPLE_RATE
    return [(time_offset, time_offset + duration, tokens)], frames, single_ending


@torch.no_grad()
def transcribe_seeking(model, text_tok, audio_tok, mel: torch.Tensor, prompt: list[int], max_text: int, sample_len: int | None,
                       beam_size: int = 1, length_penalty: float = 1.0, fallback: dict | None = None, suppress=None,
                       initial: list[int] = (), condition_on_previous_text: bool = False, word_timestamps: bool = False, heads=None,
                       progress=None) -> tuple[list[dict], list[bool]]:  # fmt: skip
    """One recording (its `recording_mel`) transcribed window after window as openai-whisper's
    `transcribe` places its windows (see the module's notes): (its segments {"start", "end", "text",
    "tokens", ...} with text and length, in order, each window's fallback figures when `fallback` is
    given and its "words" with `word_timestamps`; per decoded window whether it reached
    <|endoftext|>). prompt: <|startoftranscript|> and its language and task tokens (without
    <|notimestamps|> for timestamps). progress: called with the seconds read so far."""
    eot = text_tok.special_ids[EOT]
    window = audio_tok.max_frames
    content = mel.shape[-1] - window  # frames of the recording itself
    seek, last_speech, reset_since, ended, found = 0, 0.0, 0, [], []
    said = list(initial)  # openai-whisper's all_tokens: the initial prompt, then every kept segment's tokens
    while seek < content:
        time_offset, frames = seek * HOP_LENGTH / SAMPLE_RATE, min(window, content - seek)
        memory = audio_memory(model, window_batch(audio_tok, mel, seek, frames))
        full = previous_tokens(text_tok, [], said[reset_since:]) + prompt
        d = _decode_group(model, text_tok, audio_tok, memory, [None], full, max_text, beam_size, length_penalty, fallback, suppress,
                          sample_len)[0]  # fmt: skip
        if d.get("skipped"):  # silence: on to the next window
            seek += frames
            continue
        ended.append(d["ended"])
        tokens = [t for t in d["tokens"] if t != eot]
        pieces, advance, single_ending = seek_pieces(text_tok, tokens, time_offset, frames)
        previous_seek, seek = seek, seek + advance
        figures = {k: d[k] for k in FALLBACK_FIGURES} if fallback is not None else {}
        segments = [{"start": a, "end": b, "text": row_text(text_tok, piece), "tokens": piece, **figures} for a, b, piece in pieces]
        if word_timestamps:
            end = window_words(model, text_tok, memory, prompt, segments, time_offset, frames * HOP_LENGTH, last_speech, heads)
            if not single_ending and end > time_offset:  # the next window starts where the last word ended
                seek = round(end * SAMPLE_RATE / HOP_LENGTH)
            last_speech = end
        kept = [s for s in segments if s["text"] and s["end"] != s["start"]]  # openai-whisper clears the others
        found += kept
        said += [t for s in kept for t in s["tokens"]]
        if not condition_on_previous_text or d["temperature"] > 0.5:  # the next window reads nothing decoded so far
            reset_since = len(said)
        if progress is not None:
            progress(min(content, max(seek, previous_seek)) * HOP_LENGTH / SAMPLE_RATE)
    return found, ended
