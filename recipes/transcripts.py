"""Transcripts as files, in openai-whisper's output formats (`whisper --output_format`), so the
subtitle tools and scripts that read Whisper's files read ours:

- txt: one segment's text per line;
- vtt, srt: subtitles, one cue per segment (its start and end in the recording);
- tsv: start and end in integer milliseconds, then the text;
- json: the whole result — text, segments (id, start, end, text) and language.

A result is what `whisper_digits.transcribe_files` returns for one file (the shape of
openai-whisper's `transcribe` result, without its decoding statistics). The file is named after the
audio file (`talk.flac` → `talk.srt`) in the output folder, and written whole under a temporary
name, then renamed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

FORMATS = ("txt", "vtt", "srt", "tsv", "json")


def timestamp(seconds: float, hours: bool, marker: str) -> str:
    """HH:MM:SS,mmm (srt) or MM:SS.mmm, hours when there are some (vtt), as openai-whisper writes them."""
    ms = round(seconds * 1000.0)
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1_000)
    return f"{f'{h:02d}:' if hours or h else ''}{m:02d}:{s:02d}{marker}{ms:03d}"


def render(result: dict, fmt: str) -> str:
    """The file's text for one of FORMATS."""
    segments = result["segments"]
    if fmt == "txt":
        return "".join(f"{s['text'].strip()}\n" for s in segments)
    if fmt in ("vtt", "srt"):
        hours, marker = (True, ",") if fmt == "srt" else (False, ".")
        cues = [(timestamp(s["start"], hours, marker), timestamp(s["end"], hours, marker), s["text"].strip().replace("-->", "->"))
                for s in segments]  # fmt: skip
        if fmt == "srt":
            return "".join(f"{i}\n{a} --> {b}\n{text}\n\n" for i, (a, b, text) in enumerate(cues, 1))
        return "WEBVTT\n\n" + "".join(f"{a} --> {b}\n{text}\n\n" for a, b, text in cues)
    if fmt == "tsv":
        rows = "".join(f"{round(1000 * s['start'])}\t{round(1000 * s['end'])}\t{s['text'].strip().replace(chr(9), ' ')}\n" for s in segments)
        return "start\tend\ttext\n" + rows
    if fmt == "json":
        return json.dumps(result)
    raise ValueError(f"transcript format {fmt!r}: expected one of {', '.join(FORMATS)} or all")


def write_transcripts(result: dict, audio_path, fmt: str, out_dir) -> list[Path]:
    """Write `result` as `fmt` (one of FORMATS, or "all") into out_dir, named after audio_path; returns the files."""
    formats = FORMATS if fmt == "all" else (fmt,)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for f in formats:
        text = render(result, f)
        path = out_dir / f"{Path(audio_path).stem}.{f}"
        tmp = path.with_name(f".{path.name}.partial")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
        written.append(path)
    return written
