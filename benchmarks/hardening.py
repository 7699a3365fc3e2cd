"""The bad-input catalogue: malformed inputs across every modality and recipe, each with its
documented outcome, and a summary of what happened to them.

    python benchmarks/hardening.py           # prints one line per case and the counts

Each case builds its input in a scratch folder, feeds it to the public entry point a user would
call, and checks the outcome: "error" — an exception of the given type whose message names the
sample and matches the pattern; or "handled" — no exception, and a check of the documented
handling (resampled, trimmed, skipped and counted, refused before decoding, ...) passes. The
test suite runs the same catalogue (tests/test_bad_inputs.py), so the table never drifts from
the code. Nothing here downloads anything.
"""

from __future__ import annotations

import io
import json
import re
import struct
import sys
import tempfile
import time
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


@dataclass
class Case:
    name: str
    modality: str
    run: Callable[[Path], object]  # (scratch folder) -> result
    outcome: str  # "error" | "handled"
    expect: type | Callable[[object], bool] = ValueError  # error: the exception type; handled: a check of the result
    pattern: str = ""  # error: a regex the message must match (names the sample and what was expected)
    slow: bool = False  # takes seconds, not milliseconds (benchmarks/faults.py --tiny leaves it out)


# -- builders of malformed files ------------------------------------------------------------------
def png(path: Path, size=(8, 8), mode="RGB") -> Path:
    from PIL import Image

    buf = io.BytesIO()
    Image.new(mode, size, color=(10, 20, 30) if mode == "RGB" else 128).save(buf, format="PNG")  # PNG whatever the name says
    path.write_bytes(buf.getvalue())
    return path


def png_header_claiming(path: Path, width: int, height: int) -> Path:
    """A tiny PNG whose header claims width × height: a decompression bomb in 100 bytes."""
    raw = bytearray(png(path, (1, 1), "L").read_bytes())
    ihdr = raw.index(b"IHDR")
    raw[ihdr + 4 : ihdr + 12] = struct.pack(">II", width, height)
    raw[ihdr + 17 : ihdr + 21] = struct.pack(">I", zlib.crc32(bytes(raw[ihdr : ihdr + 17])))
    path.write_bytes(bytes(raw))
    return path


def wav(path: Path, samples: np.ndarray, rate: int = 16000, subtype=None) -> Path:
    import soundfile as sf

    sf.write(path, samples, rate, subtype=subtype)
    return path


def episode(T=5, **override):
    rng = np.random.default_rng(0)
    ep = {"observations": rng.normal(size=(T, 4)).astype(np.float32), "actions": rng.integers(0, 2, T), "rewards": np.ones(T, np.float32)}
    return {**ep, **override}


def traj_tok(**kw):
    from tokenizers_mm import TrajectoryTokenizer

    return TrajectoryTokenizer(4, 2, discrete=True, **{"context": 3, "max_timestep": 10, **kw})


def folder(root: Path, column: str, rows: list[tuple[str, str]], files: dict[str, Callable[[Path], Path]]) -> Path:
    """A data folder: the files plus metadata.csv with file_name and `column`."""
    root.mkdir(parents=True, exist_ok=True)
    for name, make in files.items():
        make(root / name)
    (root / "metadata.csv").write_text(f"file_name,{column}\n" + "".join(f"{f},{v}\n" for f, v in rows))
    return root


def tone(seconds=0.5, rate=16000):
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


# -- the cases ------------------------------------------------------------------------------------
def cases() -> list[Case]:
    from tokenizers_mm import AudioTokenizer, BPETokenizer, CharTokenizer, ImageTokenizer, TokenSet, collate, load_audio, open_image
    from tokenizers_mm.image import to_tensor

    char = CharTokenizer(chars="abc ", max_positions=8)
    bpe = BPETokenizer.train(["hello world, hello tokens " * 50], vocab_size=300, max_positions=64)
    img = ImageTokenizer(image_size=8, patch_size=4, channels=3)
    aud = AudioTokenizer(chunk=False, max_frames=100)

    def vit_build(root):
        from recipes import vit_folder

        return vit_folder.build_data(vit_folder.Config(data=str(root), image_size=8, patch_size=4))

    def speech_build(root, **kw):
        from recipes import whisper_folder

        return whisper_folder.build_data(whisper_folder.Config(data=str(root), max_frames=100, **kw))

    good_imgs = {f"{c}{i}.png": png for c in "ab" for i in range(3)}
    good_rows = [(f"{c}{i}.png", c) for c in "ab" for i in range(3)]
    good_wavs = {f"u{i}.wav": (lambda p: wav(p, tone())) for i in range(4)}
    good_text = [(f"u{i}.wav", "abc") for i in range(4)]

    return [
        # text
        Case("text_char: bytes instead of str", "text", lambda d: char.encode(b"abc"), "error", TypeError, "expected a str, got bytes"),
        Case("text_char: character outside the vocabulary", "text", lambda d: char.encode("abz"), "error", ValueError, "'z'"),
        Case("text_char: longer than the position table", "text", lambda d: char.encode("abc " * 5), "error", ValueError, "exceed max_positions=8"),
        Case("text_char: empty string → 0 tokens", "text", lambda d: char.encode(""), "handled", lambda ts: len(ts) == 0),
        Case("text: invalid UTF-8 bytes", "text", lambda d: bpe.encode(b"\xff\xfe"), "error", TypeError, "expected a str, got bytes"),
        Case("text: lone surrogate → U+FFFD-safe round trip", "text", lambda d: bpe.decode(bpe.encode_ids("a\ud800b")), "handled",
             lambda s: s.startswith("a") and s.endswith("b")),
        Case("text: gigantic string (4 MB) → tokens", "text", lambda d: bpe.encode_ids("hello world " * 350_000), "handled", lambda ids: len(ids) > 100_000),
        Case("text: special token in user text", "text", lambda d: bpe.encode("hi <|endoftext|>"), "error", ValueError, "<\\|endoftext\\|>"),
        Case("text: ids outside the vocabulary", "text", lambda d: bpe.decode([10**6]), "error", ValueError, "outside the vocabulary"),
        # images
        Case("image: zero-byte file", "image", lambda d: open_image((d / "zero.png").write_bytes(b"") or d / "zero.png"), "error", ValueError,
             "zero.png: the file is empty"),
        Case("image: truncated PNG", "image", lambda d: open_image(trunc(png(d / "cut.png", (64, 64)))), "error", ValueError, "cut.png: corrupt or truncated"),
        Case("image: a text file", "image", lambda d: open_image((d / "notes.png").write_text("hello") and d / "notes.png"), "error", ValueError,
             "notes.png: not an image"),
        Case("image: PNG bytes named .jpg → decoded by content", "image", lambda d: open_image(png(d / "x.jpg")), "handled", lambda im: im.size == (8, 8)),
        Case("image: 20000×20000 header (decompression bomb)", "image", lambda d: open_image(png_header_claiming(d / "bomb.png", 20000, 20000)),
             "error", ValueError, "bomb.png: too large to decode safely"),
        Case("image: RGBA → RGB, alpha dropped", "image", lambda d: img.encode(open_image(png(d / "a.png", (8, 8), "RGBA"))), "handled",
             lambda ts: ts.values.shape[-1] == 48 and bool(torch.isfinite(ts.values).all())),
        Case("image: NaN pixels", "image", lambda d: img.encode(torch.full((3, 8, 8), float("nan")), name="nan_img"), "error", ValueError, "nan_img.*NaN"),
        Case("image: wrong shape (4-D)", "image", lambda d: to_tensor(torch.zeros(1, 3, 8, 8), 3, "batch_img"), "error", ValueError, "batch_img: expected"),
        Case("image: another size than the tokenizer's → resized", "image", lambda d: img.encode(torch.zeros(3, 30, 17), name="odd"), "handled",
             lambda ts: ts.values.shape[-1] == 48),
        # audio
        Case("audio: zero-byte file", "audio", lambda d: load_audio((d / "e.wav").write_bytes(b"") or d / "e.wav"), "error", ValueError, "e.wav: the file is empty"),
        Case("audio: WAV with a broken header", "audio", lambda d: load_audio(broken_wav(d / "h.wav")), "error", ValueError, "h.wav: not a readable audio file"),
        Case("audio: a PNG named .wav", "audio", lambda d: load_audio(png(d / "p.wav")), "error", ValueError, "p.wav: not a readable audio file"),
        Case("audio: NaN samples", "audio", lambda d: aud.encode(np.array([0.0, np.nan], np.float32), name="nan.wav"), "error", ValueError, "nan.wav.*NaN"),
        Case("audio: zero-length waveform", "audio", lambda d: aud.encode(np.zeros(0, np.float32), name="z.wav"), "error", ValueError, "z.wav: the waveform is empty"),
        Case("audio: all-silent → valid floor log-mel", "audio", lambda d: aud.encode(np.zeros(16000, np.float32)), "handled",
             lambda ts: bool(torch.isfinite(ts.values).all()) and ts.values.shape == (100, 80)),
        Case("audio: 8 kHz → resampled to 16 kHz", "audio", lambda d: aud.encode(*load_audio(wav(d / "8k.wav", tone(0.5, 8000), 8000))), "handled",
             lambda ts: ts.values.shape[0] == 50),
        Case("audio: 48 kHz stereo → mono 16 kHz", "audio", lambda d: aud.encode(*load_audio(wav(d / "48k.wav", np.stack([tone(0.5, 48000)] * 2, 1), 48000))),
             "handled", lambda ts: ts.values.shape[0] == 50),
        Case("audio: longer than max_frames", "audio", lambda d: aud.encode(np.zeros(32000, np.float32), name="long.wav"), "error", ValueError,
             "long.wav: 2.0 s is longer than max_frames=100"),
        Case("audio: longer than the chunk in chunk mode → trimmed", "audio", lambda d: AudioTokenizer(chunk=True).encode(np.zeros(16000 * 31, np.float32)),
             "handled", lambda ts: ts.values.shape[0] == 3000),
        Case("audio: 5 ms click, variable length → one token", "audio", lambda d: aud.encode(tone(0.005), name="click.wav"), "handled",
             lambda ts: ts.values.shape == (1, 80) and bool(torch.isfinite(ts.values).all())),
        Case("audio: finite samples of 1e20 (spectrogram overflow)", "audio", lambda d: aud.encode(np.full(1600, 1e20, np.float32), name="loud.wav"),
             "error", ValueError, "loud.wav: the spectrogram would overflow"),
        Case("audio: 3-D array", "audio", lambda d: aud.encode(np.zeros((2, 2, 100), np.float32), name="cube"), "error", ValueError, "cube: expected a waveform"),
        Case("audio: 2-hour file streamed in 30 s windows", "audio", lambda d: stream_two_hours(d), "handled", lambda r: r["windows"] == 240 and r["peak_mb"] < 200,
             slow=True),
        # trajectories
        Case("trajectory: empty episode", "rl", lambda d: traj_tok().encode(episode(0), name="ep0"), "error", ValueError, "ep0: the episode is empty"),
        Case("trajectory: one-step episode → one step", "rl", lambda d: traj_tok().encode(episode(1)), "handled", lambda ts: len(ts) == 3),
        Case("trajectory: NaN observation", "rl", lambda d: traj_tok().encode(episode(observations=np.full((5, 4), np.nan)), name="ep1"), "error", ValueError,
             "ep1: observations hold NaN"),
        Case("trajectory: infinite reward", "rl", lambda d: traj_tok().encode(episode(rewards=np.array([1, 1, np.inf, 1, 1])), name="ep2"), "error", ValueError,
             "ep2: rewards hold NaN or infinite"),
        Case("trajectory: action outside the discrete space", "rl", lambda d: traj_tok().encode(episode(actions=np.array([0, 1, 5, 0, 1])), name="ep3"),
             "error", ValueError, r"ep3: action ids must lie in \[0, 2\)"),
        Case("trajectory: action shape disagrees with the space", "rl", lambda d: traj_tok().encode(episode(actions=np.zeros((5, 3))), name="ep4"),
             "error", ValueError, "ep4: discrete actions must be integer ids"),
        Case("trajectory: longer than the timestep table", "rl", lambda d: traj_tok().encode(episode(11), name="ep5"), "error", ValueError,
             "ep5: 11 steps exceed the timestep table"),
        Case("trajectory: context longer than the table", "rl", lambda d: traj_tok(context=20), "error", ValueError, "context=20 steps must lie in"),
        Case("rl data: NPZ missing a key", "rl", lambda d: load_npz_missing(d), "error", ValueError, "bad.npz"),
        # folders and recipes
        Case("image folder: file_name escapes the folder", "image", lambda d: vit_build(folder(d / "f", "label", good_rows + [("../../etc/passwd", "a")], good_imgs)),
             "error", ValueError, "'../../etc/passwd' points outside the data folder"),
        Case("image folder: label outside the training labels", "image", lambda d: vit_split_unknown_label(d), "error", ValueError,
             r"validation labels \['c'\] \(e\.g\. .*\) do not occur"),
        Case("image folder: metadata.csv without a label column", "image", lambda d: vit_build(no_label_column(d)), "error", ValueError,
             "needs the columns file_name and label"),
        Case("image folder: corrupt file skipped and counted", "image", lambda d: skip_count(d), "handled", lambda n: n == 1),
        Case("speech folder: transcript outside a run's vocabulary", "audio",
             lambda d: oov_transcript(d),
             "error", ValueError, "transcript 'naïve'.*'ï'"),
        Case("speech folder: file_name escapes the folder", "audio", lambda d: speech_build(folder(d / "s", "transcription", good_text + [("../x.wav", "abc")], good_wavs)),
             "error", ValueError, "'../x.wav' points outside the data folder"),
        # model inputs
        Case("tokens: position beyond the table", "model", lambda d: TokenSet("text", ids=torch.zeros(3, dtype=torch.long), positions=torch.tensor([0, 1, 99]))
             .validate(char.spec), "error", ValueError, "position 99 is beyond the declared table of 8"),
        Case("tokens: ids outside the vocabulary", "model", lambda d: TokenSet("text", ids=torch.tensor([0, 9])).validate(char.spec), "error", ValueError,
             r"ids must lie in \[0, 5\)"),
        Case("tokens: float ids", "model", lambda d: TokenSet("text", ids=torch.zeros(3)), "error", TypeError, "ids must be an integer tensor"),
        Case("collate: two modalities in one batch", "model", lambda d: collate([TokenSet("a", ids=torch.zeros(2, dtype=torch.long)),
             TokenSet("b", ids=torch.zeros(2, dtype=torch.long))]), "error", ValueError, "sample 1 has modality 'b'"),  # fmt: skip
        # checkpoints
        Case("checkpoint: truncated weights", "checkpoint", lambda d: load_truncated_checkpoint(d), "error", ValueError, "model.safetensors"),
        Case("checkpoint: a pickle that runs os.system", "checkpoint", lambda d: load_malicious(d), "error", ValueError, "refusing global"),
    ]


# -- helpers of the cases -------------------------------------------------------------------------
def trunc(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def broken_wav(path: Path) -> Path:
    path.write_bytes(b"RIFF\xff\xff\xff\xffWAVEfmt \x02\x00\x00\x00garbage" + bytes(100))
    return path


def stream_two_hours(d: Path) -> dict:
    """Write 2 h of 8 kHz int16 audio (115 MB) block by block, stream it in 30 s windows, and
    report the windows and the largest resident-memory growth seen."""
    import resource

    import soundfile as sf

    from tokenizers_mm import stream_audio

    path = d / "two_hours.wav"
    with sf.SoundFile(path, "w", samplerate=8000, channels=1, subtype="PCM_16") as f:
        block = (tone(60.0, 8000) * 32767).astype(np.int16)
        for _ in range(120):
            f.write(block)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    n = sum(1 for _ in stream_audio(path, 30.0))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - before
    path.unlink()
    return {"windows": n, "peak_mb": peak}


def load_npz_missing(d: Path):
    from recipes import rl_data

    np.savez(d / "bad.npz", observations=np.zeros((3, 2)), actions=np.zeros(3))
    return rl_data.load_episodes(d / "bad.npz")


def vit_split_unknown_label(d: Path):
    from recipes import vit_folder

    root = d / "split"
    for split, labels in (("train", "ab"), ("validation", "abc")):
        for lab in labels:
            (root / split / lab).mkdir(parents=True)
            png(root / split / lab / "x.png")
    return vit_folder.build_data(vit_folder.Config(data=str(root), image_size=8, patch_size=4))


def no_label_column(d: Path) -> Path:
    root = d / "nolabel"
    root.mkdir()
    png(root / "x.png")
    (root / "metadata.csv").write_text("file_name,category\nx.png,a\n")
    return root


def skip_count(d: Path) -> int:
    import contextlib

    from recipes import vit_folder

    root = d / "skip"
    for lab in "ab":
        (root / lab).mkdir(parents=True)
        for i in range(10):
            png(root / lab / f"{i}.png")
    trunc(png(root / "a" / "cut.png", (64, 64)))
    out = io.StringIO()
    with contextlib.redirect_stderr(out):  # (the count is said on stderr: stdout is `mmtok eval`'s JSON)
        vit_folder.build_data(vit_folder.Config(data=str(root), image_size=8, patch_size=4, skip_bad_samples=True))
    return int(re.search(r"vit_folder: skipped (\d+)", out.getvalue()).group(1))


def oov_transcript(d: Path):
    from recipes import whisper_folder
    from recipes.whisper_digits import text_example, text_tokenizer

    tok = text_tokenizer(whisper_folder.Config())
    return text_example(tok, "naïve", str(d / "oov.wav"))


def load_truncated_checkpoint(d: Path):
    from models import HeadConfig, ModalityConfig, ModelConfig, MultimodalTransformer, TrunkConfig
    from tokenizers_mm import ModalitySpec

    text = ModalityConfig.from_spec(ModalitySpec("text", ("token",), 8, vocab_size=10))
    model = MultimodalTransformer(ModelConfig(TrunkConfig(dim=16, depth=1, num_heads=2), {"text": text}, {"lm": HeadConfig("lm", "text")},
                                              decoder_inputs=["text"]))  # fmt: skip
    model.save(d / "ckpt")
    trunc(d / "ckpt" / "model.safetensors")
    return MultimodalTransformer.load(d / "ckpt")


def malicious_pickle(command: str) -> bytes:
    """Pickle opcodes for os.system(command), written by hand (protocol 2: GLOBAL, BINUNICODE,
    TUPLE1, REDUCE, STOP): what a poisoned checkpoint holds."""
    arg = command.encode()
    return b"\x80\x02cos\nsystem\nX" + struct.pack("<I", len(arg)) + arg + b"\x85R."


def load_malicious(d: Path):
    from models import load_torch_file

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("archive/data.pkl", malicious_pickle(f"touch {d / 'pwned'}"))
    (d / "evil.pt").write_bytes(buf.getvalue())
    try:
        return load_torch_file(d / "evil.pt")
    finally:
        assert not (d / "pwned").exists(), "the malicious pickle ran"


# -- running the catalogue ------------------------------------------------------------------------
def check(case: Case, scratch: Path) -> tuple[bool, str]:
    """(outcome as documented, what happened)."""
    scratch.mkdir(parents=True, exist_ok=True)
    try:
        result = case.run(scratch)
    except Exception as e:  # noqa: BLE001 — the point is to see what escapes
        msg = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        if case.outcome != "error":
            return False, f"raised {msg}"
        ok = isinstance(e, case.expect) and re.search(case.pattern, str(e)) is not None and "\n" not in str(e).strip()
        return ok, msg
    if case.outcome == "error":
        return False, f"no error (returned {type(result).__name__})"
    ok = bool(case.expect(result))
    return ok, "handled" if ok else f"handled, but the check failed on {str(result)[:80]}"


def main() -> dict:
    results = []
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as d:
        for i, case in enumerate(cases()):
            ok, what = check(case, Path(d) / f"case{i}")
            results.append({"case": case.name, "modality": case.modality, "documented": case.outcome, "as_documented": ok, "what": what})
            print(f"{'ok ' if ok else 'BAD'} [{case.modality:10s}] {case.name:58s} {what[:90]}")
    summary = {"bad_inputs_tried": len(results), "as_documented": sum(r["as_documented"] for r in results),
               "errors": sum(r["documented"] == "error" for r in results), "handled": sum(r["documented"] == "handled" for r in results),
               "modalities": sorted({r["modality"] for r in results}), "seconds": time.perf_counter() - t0}  # fmt: skip
    print(json.dumps(summary, indent=2))
    return {"summary": summary, "results": results}


if __name__ == "__main__":
    import argparse

    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()  # (--help; no options)
    done = main()["summary"]
    sys.exit(0 if done["as_documented"] == done["bad_inputs_tried"] else 1)  # (a case not as documented: status 1, as faults.py)
