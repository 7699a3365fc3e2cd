"""Transcripts as files, in openai-whisper's output formats (`whisper --output_format`), so the
subtitle tools and scripts that read Whisper's files read ours:

- txt: one segment's text per line;
- vtt, srt: subtitles, one cue per segment (its start and end in the recording);
- tsv: start and end in integer milliseconds, then the text;
- json: the whole result — text, segments (id, start, end, text, and words with word timestamps)
  and language.

With word timestamps, subtitle cues are made from the words, as openai-whisper's writers make
them: a cue per segment (or max_words_per_line words), lines of max_line_width characters in cues
of max_line_count lines, or highlight_words (each word underlined as it is said).

A result is what `whisper_digits.transcribe_files` returns for one file (the shape of
openai-whisper's `transcribe` result; a segment carries its decoding statistics, temperature,
avg_logprob, compression_ratio, no_speech_prob, when the fallback decided them). The file is named after the
audio file (`talk.flac` → `talk.srt`) in the output folder, and written whole under a temporary
name, then renamed.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from tokenizers_mm.base import write_text_atomic

FORMATS = ("txt", "vtt", "srt", "tsv", "json")


def timestamp(seconds: float, hours: bool, marker: str) -> str:
    """HH:MM:SS,mmm (srt) or MM:SS.mmm, hours when there are some (vtt), as openai-whisper writes them."""
    if not seconds >= 0:  # openai-whisper asserts it; a cue at a negative (or NaN) time would read as garbage
        raise ValueError(f"subtitle time {seconds} s: expected a time of 0 or more")
    ms = round(seconds * 1000.0)
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1_000)
    return f"{f'{h:02d}:' if hours or h else ''}{m:02d}:{s:02d}{marker}{ms:03d}"


def word_cues(result: dict, max_line_width: int | None = None, max_line_count: int | None = None, max_words_per_line: int | None = None):
    """Subtitles from a result's words (`transcribe_files(word_timestamps=True)`): lists of word
    timings, one list per cue, a word starting a new line carrying "\n" — openai-whisper's
    `SubtitlesWriter.iterate_result`. Without both max_line_width and max_line_count, a cue is a
    segment (at most max_words_per_line words at a time); with both, words flow into lines of at most
    max_line_width characters and cues of at most max_line_count lines, a pause over 3 s starting a
    new cue."""
    preserve_segments = max_line_count is None or max_line_width is None
    max_line_width, max_words_per_line = max_line_width or 1000, max_words_per_line or 1000
    line_len, line_count, subtitle = 0, 1, []
    last = next((w["start"] for s in result["segments"] for w in s["words"]), result["segments"][0]["start"] if result["segments"] else 0.0)
    for segment in result["segments"]:
        for chunk in range(0, len(segment["words"]), max_words_per_line):
            for i, original in enumerate(segment["words"][chunk : chunk + max_words_per_line]):
                timing = dict(original)
                long_pause = not preserve_segments and timing["start"] - last > 3.0
                has_room = line_len + len(timing["word"]) <= max_line_width
                seg_break = i == 0 and len(subtitle) > 0 and preserve_segments  # note: each chunk of a segment starts a cue
                if line_len > 0 and has_room and not long_pause and not seg_break:
                    line_len += len(timing["word"])  # the line goes on
                else:
                    timing["word"] = timing["word"].strip()
                    if subtitle and max_line_count is not None and (long_pause or line_count >= max_line_count) or seg_break:
                        yield subtitle  # a new cue
                        subtitle, line_count = [], 1
                    elif line_len > 0:
                        line_count += 1  # a new line in this cue
                        timing["word"] = "\n" + timing["word"]
                    line_len = len(timing["word"].strip())
                subtitle.append(timing)
                last = timing["start"]
    if subtitle:
        yield subtitle


def cues(result: dict, hours: bool, marker: str, options: dict | None = None):
    """(start, end, text) per subtitle cue, as openai-whisper's writers make them: a segment's, or
    with words (word timestamps), `word_cues`' — and with options["highlight_words"] one cue per
    word, the word underlined (<u>), and the cue's text shown in the gaps between words."""
    o = {k: v for k, v in (options or {}).items() if v is not None}
    segments = result["segments"]
    if not (segments and "words" in segments[0]):
        for s in segments:
            yield timestamp(s["start"], hours, marker), timestamp(s["end"], hours, marker), s["text"].strip().replace("-->", "->")
        return
    for subtitle in word_cues(result, o.get("max_line_width"), o.get("max_line_count"), o.get("max_words_per_line")):
        start, end = timestamp(subtitle[0]["start"], hours, marker), timestamp(subtitle[-1]["end"], hours, marker)
        text = "".join(w["word"] for w in subtitle)
        if not o.get("highlight_words"):
            yield start, end, text
            continue
        last, words = start, [w["word"] for w in subtitle]
        for i, word in enumerate(subtitle):
            a, b = timestamp(word["start"], hours, marker), timestamp(word["end"], hours, marker)
            if last != a:
                yield last, a, text
            yield a, b, "".join(re.sub(r"^(\s*)(.*)$", r"\1<u>\2</u>", w) if j == i else w for j, w in enumerate(words))
            last = b


SUBTITLE_OPTIONS = ("max_line_width", "max_line_count", "max_words_per_line", "highlight_words")  # openai-whisper's; word timestamps only


def render(result: dict, fmt: str, options: dict | None = None) -> str:
    """The file's text for one of FORMATS. options: SUBTITLE_OPTIONS for vtt / srt, for a result with words."""
    segments = result["segments"]
    if fmt == "txt":
        return "".join(f"{s['text'].strip()}\n" for s in segments)
    if fmt in ("vtt", "srt"):
        hours, marker = (True, ",") if fmt == "srt" else (False, ".")
        listed = list(cues(result, hours, marker, options))
        if fmt == "srt":
            return "".join(f"{i}\n{a} --> {b}\n{text}\n\n" for i, (a, b, text) in enumerate(listed, 1))
        return "WEBVTT\n\n" + "".join(f"{a} --> {b}\n{text}\n\n" for a, b, text in listed)
    if fmt == "tsv":
        rows = "".join(f"{round(1000 * s['start'])}\t{round(1000 * s['end'])}\t{s['text'].strip().replace(chr(9), ' ')}\n" for s in segments)
        return "start\tend\ttext\n" + rows
    if fmt == "json":
        return json.dumps(result)
    raise ValueError(f"transcript format {fmt!r}: expected one of {', '.join(FORMATS)} or all")


def write_transcripts(result: dict, audio_path, fmt: str, out_dir, options: dict | None = None) -> list[Path]:
    """Write `result` as `fmt` (one of FORMATS, or "all") into out_dir, named after audio_path; returns
    the files. options: SUBTITLE_OPTIONS for the subtitles of a result with words."""
    formats = FORMATS if fmt == "all" else (fmt,)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for f in formats:
        text = render(result, f, options)
        path = out_dir / f"{Path(audio_path).stem}.{f}"
        write_text_atomic(path, text)
        written.append(path)
    return written
