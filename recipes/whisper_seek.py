"""openai-whisper's own window placement for `mmtok transcribe --windows seek`: one 30 s window after
another over the whole recording's log-mel, each starting where the text before it ended.

`transcribe_files` cuts a file at its pauses and joins the stretches of speech into windows (silence
skipped without decoding, no text decoded twice). This module follows whisper/transcribe.py step for
step instead, so that a run on Whisper's weights gives the segments openai-whisper's `transcribe`
gives on the same weights and audio (the same samples: a 16-bit file at 16 kHz; openai-whisper
reads every file through ffmpeg as 16-bit PCM, `load_audio` keeps a float or 24-bit file's
precision and resamples with torchaudio):

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
  the text carried (carry_initial_prompt=False, its default), or before every window, the carried
  text after it (carry_initial_prompt=True).

The whole recording is read into memory, and its log-mel computed in one pass, as openai-whisper
does (a 1 h file: 230 MB of samples and 115 MB of log-mel; about 1.2 GB at the peak, in the STFT).
With word timestamps, hallucination_silence_threshold skips silence around segments whose words
look made up (`skip_hallucinations`), as there. Like openai-whisper's decoder, a window may decode
one token past the decoder's positions (sampled from the last one, never read). clip_timestamps
limits the windows to clips of the recording (`seek_clips`), as there.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from tokenizers_mm import TokenSet, collate
from tokenizers_mm.audio import HOP_LENGTH, SAMPLE_RATE, check_finite, log_mel_spectrogram

from .whisper_digits import EOT, FALLBACK_FIGURES, TIME_PRECISION, _decode_group, audio_memory, previous_tokens, row_text, window_words
from .word_timing import APPEND, PREPEND, get_end

FRAMES_PER_SECOND = SAMPLE_RATE // HOP_LENGTH  # an int, as openai-whisper's: t * 100 and t * 16000 / 160 round apart at half frames
INPUT_STRIDE = round(TIME_PRECISION * FRAMES_PER_SECOND)  # log-mel frames per timestamp step (the encoder's stride): 2


def recording_mel(audio_tok, pieces, name: str = "audio", device=None, samples: int | None = None) -> torch.Tensor:
    """openai-whisper's transcribe: the log-mel (n_mels, F) of the recording (`pieces`: its 16 kHz
    waveforms, `stream_audio`'s, or one tensor) followed by one window of silence (so that every
    window can be sliced whole), floored at its max − 8 over all of it. The pieces are copied into
    one waveform as they come (`samples`: how many the file's header promises, to size it), so the
    recording is held once, at 16 kHz."""
    if isinstance(pieces, torch.Tensor):
        pieces, samples = [pieces], len(pieces)
    pad = audio_tok.max_frames * HOP_LENGTH
    wave, at = torch.empty((samples or 0) + pad, device=device), 0
    for piece in pieces:
        if at + len(piece) + pad > len(wave):  # more than promised: room for as much again
            wave = torch.cat([wave[:at], torch.empty(max(at, len(piece)) + pad, device=device)])
        wave[at : at + len(piece)] = piece
        at += len(piece)
    wave = wave[: at + pad] if at + pad > 3 * len(wave) // 4 else wave[: at + pad].clone()  # (a file cut short: not its header's size)
    wave[at:] = 0
    mel = log_mel_spectrogram(wave, audio_tok.n_mels)
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


PUNCTUATION = PREPEND + APPEND  # openai-whisper's transcribe: words an anomaly score leaves out (the default sets, whatever the options)


def word_anomaly(word: dict) -> float:
    """openai-whisper's anomaly score of a word: improbable (p < 0.15), very short or very long."""
    duration = word["end"] - word["start"]
    return (word["probability"] < 0.15) + max(0.0, 0.133 - duration) * 15 + max(0.0, duration - 2.0)


def segment_anomaly(segment: dict | None) -> bool:
    """Whether a segment's first 8 words (punctuation left out) look made up, as openai-whisper scores them."""
    if segment is None or not segment["words"]:
        return False
    words = [w for w in segment["words"] if w["word"] not in PUNCTUATION][:8]
    score = sum(word_anomaly(w) for w in words)
    return score >= 3 or score + 0.01 >= len(words)


def skip_hallucinations(segments: list[dict], threshold: float, previous_seek: int, seek: int, frames: int, window: int, content: int,
                        single_ending: bool, last_speech: float) -> tuple[int, bool]:  # fmt: skip
    """openai-whisper's hallucination_silence_threshold for one window with words: (where the next
    window starts, whether this window's segments are kept). A window ending in more than `threshold`
    seconds of silence after its last word is followed from that word; one whose first segment with
    words looks made up (`segment_anomaly`) after a longer silence is decoded again from that
    segment's start (not kept); a made-up segment with silence (or more made-up text) on both sides
    is dropped with all after it (in place), and the next window starts there."""
    time_offset, window_end = previous_seek * HOP_LENGTH / SAMPLE_RATE, (previous_seek + window) * HOP_LENGTH / SAMPLE_RATE
    with_words = [s for s in segments if s["words"]]
    if not single_ending:
        last_word_end = get_end(segments, time_offset)
        if last_word_end > time_offset:
            seek = round(last_word_end * FRAMES_PER_SECOND) if window_end - last_word_end > threshold else previous_seek + frames
    if with_words and segment_anomaly(with_words[0]) and (gap := with_words[0]["start"] - time_offset) > threshold:
        return previous_seek + round(gap * FRAMES_PER_SECOND), False
    last_end = last_speech
    for i, segment in enumerate(segments):
        if not segment["words"]:
            continue
        if segment_anomaly(segment):
            following = next((s for s in segments[i + 1 :] if s["words"]), None)
            next_start = following["words"][0]["start"] if following is not None else time_offset + frames * HOP_LENGTH / SAMPLE_RATE
            silence_before = segment["start"] - last_end > threshold or segment["start"] < threshold or segment["start"] - time_offset < 2.0
            silence_after = next_start - segment["end"] > threshold or segment_anomaly(following) or window_end - segment["end"] < 2.0
            if silence_before and silence_after:
                seek = round(max(time_offset + 1, segment["start"]) * FRAMES_PER_SECOND)
                if content * HOP_LENGTH / SAMPLE_RATE - segment["end"] < threshold:
                    seek = content
                del segments[i:]
                break
        last_end = segment["end"]
    return seek, True


def seek_clips(clip_timestamps, content: int) -> list[tuple[int, int]]:
    """openai-whisper's clip_timestamps ("start,end,start,end,..." in seconds, or a list of them) as
    (start, end) frames of a recording of `content` frames: an odd last start runs to the end, none
    is the whole recording; ends past the recording stop at its end; an empty clip reads nothing,
    as there. A clip that ends before it starts (which openai-whisper skips) is refused as a typo."""
    given = clip_timestamps
    if isinstance(clip_timestamps, str):
        try:
            clip_timestamps = [float(t) for t in clip_timestamps.split(",") if t.strip()]
        except ValueError:
            raise ValueError(f"clip_timestamps {clip_timestamps!r}: expected seconds separated by commas, start,end,start,end,...") from None
    if not all(math.isfinite(t) for t in clip_timestamps):
        raise ValueError(f"clip_timestamps {given!r}: expected finite seconds, start,end,start,end,...")
    points = [round(t * FRAMES_PER_SECOND) for t in clip_timestamps] or [0]
    clips = list(zip(points[::2], points[1::2]))
    opened = [(points[-1], None)] if len(points) % 2 else []  # an open last clip: its start, to the recording's end
    for k, (a, b) in enumerate(clips + opened):
        span = f"{a / FRAMES_PER_SECOND:g} s to {b / FRAMES_PER_SECOND:g} s" if b is not None else f"from {a / FRAMES_PER_SECOND:g} s"
        if a < 0 or (b is not None and b < a):
            raise ValueError(f"clip_timestamps: clip {k + 1} ({span}) {'starts before 0 s' if a < 0 else 'ends before it starts'}; "
                             "expected start,end,start,end,... seconds, each start from 0 and not after its end")  # fmt: skip
    if len(points) % 2:
        clips.append((points[-1], content))
    return [(a, min(b, content)) for a, b in clips]


@torch.no_grad()
def transcribe_seeking(model, text_tok, audio_tok, mel: torch.Tensor, prompt: list[int], max_text: int, sample_len: int | None,
                       beam_size: int = 1, length_penalty: float = 1.0, fallback: dict | None = None, suppress=None,
                       initial: list[int] = (), condition_on_previous_text: bool = False, word_timestamps: bool = False, heads=None,
                       hallucination_silence_threshold: float | None = None, clips: list[tuple[int, int]] | None = None,
                       carry_initial_prompt: bool = False, punctuations: tuple[str | None, str | None] = (None, None),
                       patience: float = 1.0, progress=None) -> tuple[list[dict], list[bool]]:  # fmt: skip
    """One recording (its `recording_mel`) transcribed window after window as openai-whisper's
    `transcribe` places its windows (see the module's notes): (its segments {"start", "end", "text",
    "tokens", ...} with text and length, in order, each window's fallback figures when `fallback` is
    given and its "words" with `word_timestamps`; per decoded window whether it reached
    <|endoftext|>). prompt: <|startoftranscript|> and its language and task tokens (without
    <|notimestamps|> for timestamps). hallucination_silence_threshold (seconds; with word_timestamps):
    openai-whisper's skipping of silences longer than this around words that look made up
    (`skip_hallucinations`). clips: the (start, end) frames read (`seek_clips`; default: all), one
    after another, each from its start as there. carry_initial_prompt: `initial` before every window,
    then the latest text carried (`previous_tokens`), as there. punctuations: as `window_words`
    takes them. patience: the beam search's (`MultimodalTransformer.beam_search`). progress: called
    with the seconds read so far."""
    eot = text_tok.special_ids[EOT]
    window = audio_tok.max_frames
    content = mel.shape[-1] - window  # frames of the recording itself
    last_speech, reset_since, ended, found = 0.0, 0, [], []
    said = list(initial)  # openai-whisper's all_tokens: the initial prompt, then every kept segment's tokens
    for clip_start, clip_end in clips if clips is not None else [(0, content)]:
        seek = clip_start  # as openai-whisper: each clip from its start, wherever the one before stopped
        while seek < clip_end:
            time_offset, frames = seek * HOP_LENGTH / SAMPLE_RATE, min(window, content - seek, clip_end - seek)
            memory = audio_memory(model, window_batch(audio_tok, mel, seek, frames))
            if carry_initial_prompt:  # the initial prompt, then what was decoded since (or since the last reset)
                full = previous_tokens(text_tok, initial, said[max(len(initial), reset_since) :]) + prompt
            else:
                full = previous_tokens(text_tok, [], said[reset_since:]) + prompt
            d = _decode_group(model, text_tok, audio_tok, memory, [None], full, max_text, beam_size, length_penalty, fallback, suppress,
                              sample_len, patience)[0]  # fmt: skip
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
                end = window_words(model, text_tok, memory, prompt, segments, time_offset, frames * HOP_LENGTH, last_speech, heads,
                                   punctuations)  # fmt: skip
                if not single_ending and end > time_offset:  # the next window starts where the last word ended
                    seek = round(end * FRAMES_PER_SECOND)
                if hallucination_silence_threshold is not None:
                    seek, keep = skip_hallucinations(segments, hallucination_silence_threshold, previous_seek, seek, frames, window, content,
                                                     single_ending, last_speech)  # fmt: skip
                    if not keep:  # the window's first words look made up after a long silence: decode again from their start
                        continue
                last_speech = get_end(segments, last_speech)
            kept = [s for s in segments if s["text"] and s["end"] != s["start"]]  # openai-whisper clears the others
            found += kept
            said += [t for s in kept for t in s["tokens"]]
            if not condition_on_previous_text or d["temperature"] > 0.5:  # the next window reads nothing decoded so far
                reset_since = len(said)
            if progress is not None:
                progress(min(content, max(seek, previous_seek)) * HOP_LENGTH / SAMPLE_RATE)
    return found, ended
