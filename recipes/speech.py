"""Speech that needs no download: the eSpeak NG synthesizer bundled by the `espeakng-loader` wheel
(shared library + voice data), called through ctypes, and a deterministic corpus of spoken
number sequences and short phrases built with it for the Whisper-style recipes.

eSpeak NG keeps global state, so one process-wide `Synthesizer` serialises calls. Each utterance
varies voice variant (e.g. "en+f3", "en-us+m2"), speaking rate, pitch, pitch range and word gap,
and gets background noise at a chosen SNR; `make_corpus` draws all of that from a seeded
generator and caches the result on disk as 16 kHz WAV files plus a `manifest.jsonl` that records
how each was made. Test splits use voice variants never heard in training.
"""

from __future__ import annotations

import ctypes
import json
import os
import sys
import threading
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from tokenizers_mm.base import cache_folder, made_once

SYNTH_RATE = 22050  # Hz, eSpeak NG's output rate
AUDIO_OUTPUT_SYNCHRONOUS = 2
POS_CHARACTER = 1
RATE, VOLUME, PITCH, RANGE, WORDGAP = 1, 2, 3, 4, 7  # espeak_PARAMETER
DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
PHRASES = ("yes", "no", "stop", "go", "left", "right", "up", "down", "on", "off", "hello world", "good morning", "thank you")
# Voice variants shipped in espeak-ng-data/voices/!v; the test split uses the last ones only.
TRAIN_VOICES = ("en+m1", "en+m2", "en+m3", "en+m4", "en+f1", "en+f2", "en+f3", "en-us+m5", "en-us+f4", "en+klatt", "en+klatt2",
                "en+Andy", "en+Annie", "en+david", "en+john", "en+linda", "en-us+max", "en+michel", "en+norbert", "en+iven")  # fmt: skip
TEST_VOICES = ("en+m6", "en+m7", "en-us+f5", "en+klatt3", "en+belinda", "en+edward", "en+Mike", "en-us+ian")

_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


class SpeechError(RuntimeError, ValueError):
    """Speech could not be made (no such voice, the synthesis worker stopped). A ValueError too:
    `mmtok` says it in one line, as it says bad input, not with a traceback."""


class Synthesizer:
    """eSpeak NG through ctypes: text → int16 waveform at 22,050 Hz."""

    _lock = threading.Lock()
    _instance = None

    def __init__(self):
        try:
            import espeakng_loader
        except ImportError:
            raise SpeechError("speech synthesis needs the espeakng-loader package (pip install espeakng-loader)") from None
        self.lib = ctypes.CDLL(espeakng_loader.get_library_path())
        self._chunks: list[np.ndarray] = []
        self._cb = _CALLBACK(self._collect)  # note: keep a reference, or ctypes frees the callback
        rate = self.lib.espeak_Initialize(AUDIO_OUTPUT_SYNCHRONOUS, 0, espeakng_loader.get_data_path().encode(), 0)
        if rate != SYNTH_RATE:
            raise SpeechError(f"eSpeak NG failed to start (espeak_Initialize returned {rate})")
        self.lib.espeak_SetSynthCallback(self._cb)

    @classmethod
    def get(cls) -> "Synthesizer":
        with cls._lock:
            if cls._instance is None:
                cls._instance = Synthesizer()
            return cls._instance

    def _collect(self, wav, n, events) -> int:
        if n > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
        return 0

    def say(self, text: str, voice: str = "en", rate: int = 175, pitch: int = 50, pitch_range: int = 50, word_gap: int = 0) -> np.ndarray:
        """Speak `text`: int16 samples at SYNTH_RATE. rate in words per minute (80-450), pitch and
        pitch_range 0-100, word_gap in units of 10 ms.

        note: eSpeak NG varies its output slightly from call to call within a process (a
        process-wide state that neither espeak_ng_SetRandSeed nor re-initialising resets), while
        the same sequence of calls in a fresh process gives the same samples. `make_corpus`
        therefore renders in a fresh process.
        """
        with self._lock:
            if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
                raise SpeechError(f"eSpeak NG has no voice {voice!r}")
            for param, value in ((RATE, rate), (PITCH, pitch), (RANGE, pitch_range), (WORDGAP, word_gap), (VOLUME, 100)):
                self.lib.espeak_SetParameter(param, int(value), 0)
            self._chunks = []
            data = text.encode("utf-8") + b"\0"
            if self.lib.espeak_Synth(data, len(data), 0, POS_CHARACTER, 0, 0, None, None) != 0:
                raise SpeechError(f"eSpeak NG could not speak {text!r}")
            self.lib.espeak_Synchronize()
            return np.concatenate(self._chunks) if self._chunks else np.zeros(0, dtype=np.int16)


@dataclass
class Utterance:
    """How one utterance was made (a manifest row)."""

    file_name: str
    transcription: str
    voice: str
    rate: int
    pitch: int
    pitch_range: int
    word_gap: int
    snr_db: float
    seconds: float = 0.0
    file_bytes: int = 0  # the WAV's size as written (0: a manifest from before it was recorded), checked when reused


def random_text(rng: np.random.Generator) -> str:
    """A spoken number sequence (2-6 digits) or, one time in four, a short phrase."""
    if rng.random() < 0.25:
        return str(PHRASES[rng.integers(len(PHRASES))])
    return " ".join(DIGITS[d] for d in rng.integers(0, 10, rng.integers(2, 7)))


def render(u: Utterance, rng: np.random.Generator) -> np.ndarray:
    """Synthesize, resample to 16 kHz, add noise at the utterance's SNR: float32 in [-1, 1]."""
    import torch
    import torchaudio.functional as AF

    wave = Synthesizer.get().say(u.transcription, u.voice, u.rate, u.pitch, u.pitch_range, u.word_gap).astype(np.float32) / 32768.0
    wave = AF.resample(torch.from_numpy(wave), SYNTH_RATE, 16000).numpy()
    power = float(np.mean(wave**2)) + 1e-12
    noise = rng.standard_normal(wave.shape).astype(np.float32) * np.sqrt(power / 10 ** (u.snr_db / 10))
    return np.clip(wave + noise, -1.0, 1.0)


def _render_all(directory: str, rows: list[dict], seed: int) -> list[tuple[float, int]]:
    """Worker: render every row to a 16 kHz WAV (in a fresh process: see `Synthesizer.say`). It stops
    when the process that asked for the corpus is gone: a killed run leaves no worker writing on."""
    import multiprocessing

    import soundfile as sf
    from tqdm.auto import tqdm

    caller, written = multiprocessing.parent_process(), []  # (its sentinel: readable once the caller is gone, however it ended)
    for i, row in enumerate(tqdm(rows, desc="synthesizing speech", unit="utt", disable=None)):  # (off when stderr is not a terminal)
        if caller is not None and not caller.is_alive():
            os._exit(1)
        wave = render(Utterance(**row), np.random.default_rng([seed, i]))  # noise: its own stream per utterance
        sf.write(path := Path(directory) / row["file_name"], wave, 16000, subtype="PCM_16")
        written.append((round(len(wave) / 16000, 3), path.stat().st_size))
    return written


def make_corpus(directory, n: int, voices: tuple[str, ...], seed: int) -> list[Utterance]:
    """Generate (or reuse) `n` utterances under `directory`: WAV files + manifest.jsonl.

    Deterministic in (voices, seed), utterance by utterance: texts and settings come from a seeded
    generator in order, each utterance's noise from a stream of its own, and the audio is rendered
    in order in a fresh process. So utterance i is the same whatever `n`, and a corpus made for
    more utterances serves fewer (its first n, the manifest kept). One made for fewer, or with other
    settings, is rendered again whole: eSpeak NG's output depends on the calls before it in its
    process (`Synthesizer.say`), so utterances added to it would differ from a fresh corpus's.
    """
    import multiprocessing

    if getattr(multiprocessing.current_process(), "_inheriting", False):  # (else it would wait forever on the caller's lock)
        raise SpeechError("make_corpus ran while a synthesis worker was importing the main script: put the script's code under "
                          "if __name__ == '__main__': (the workers import it, as multiprocessing's spawn and forkserver do)")  # fmt: skip
    directory = cache_folder(directory, "the synthesized corpus")
    recipe = {"n": n, "voices": list(voices), "seed": seed, "version": 1}

    def make(found) -> list[Utterance]:  # (under the lock, by one process)
        _, why, made = found
        if why:
            print(f"{directory}: {why}; synthesizing the corpus again", file=sys.stderr)
        return _render_corpus(directory, {**recipe, "n": max(n, made)})[:n]  # (a damaged larger cache is mended whole)

    return made_once(directory / ".lock", lambda: _stale_corpus(directory, recipe), make)


WAV_HEADER = 44  # bytes before the samples of the PCM WAV files soundfile writes


def _stale_corpus(directory: Path, recipe: dict) -> tuple[list[Utterance] | None, str, int]:
    """(the first n utterances of directory's corpus, "", its size) when its manifest was made with
    recipe's settings (any n at least recipe's) and their files are there, as large as written (a
    manifest from before sizes were recorded: as large as the seconds it records); else (None, why:
    "" where there is nothing to say, no corpus yet or a smaller one; how many utterances it lists
    with these settings, 0 where others). A manifest.jsonl that is not a corpus's is refused: the
    folder is someone else's, not a cache to write over."""
    manifest = directory / "manifest.jsonl"
    if not manifest.exists():
        return None, "", 0
    lines = manifest.read_bytes().decode("utf-8", "replace").splitlines()
    made, row = _json_line(lines, 0), _json_line(lines, 1)
    ours = isinstance(made, dict) and {"voices", "seed", "version"} <= set(made)  # (another version's: other settings)
    if not ours and lines and not (isinstance(row, dict) and {"file_name", "transcription", "voice"} <= set(row)):
        raise ValueError(f"{manifest} is not a synthesized corpus's manifest (its first line should record {', '.join(recipe)}): "
                         "give the corpus a folder of its own, or remove the file to synthesize one there")  # fmt: skip
    if not ours:  # (an empty file, or its first line damaged: mended with as many utterances as it lists)
        return None, f"{manifest.name} is damaged", max(len(lines) - 1, 0)
    if {**made, "n": recipe["n"]} != recipe:
        return None, "its manifest was made with other settings", 0
    listed = len(lines) - 1
    if listed < recipe["n"]:
        return None, "", listed
    rows = []
    for i, line in enumerate(lines[1 : recipe["n"] + 1], 2):
        try:
            rows.append(Utterance(**json.loads(line)))
        except (ValueError, TypeError):
            return None, f"line {i} of {manifest.name} is damaged", listed
        u, path = rows[-1], directory / rows[-1].file_name
        size = path.stat().st_size if path.is_file() else None
        if size is None:
            return None, f"{path.name} is missing", listed
        if u.file_bytes and size != u.file_bytes:
            return None, f"{path.name} is {size:,} bytes, the manifest records {u.file_bytes:,}", listed
        if not u.file_bytes and size < WAV_HEADER + 2 * (round(u.seconds * 16000) - 8):  # (seconds: to the ms, 16 samples)
            return None, f"{path.name} is {size:,} bytes, too few for the {u.seconds:g} s the manifest records", listed
    return rows, "", listed


def _json_line(lines: list[str], i: int):
    try:
        return json.loads(lines[i]) if i < len(lines) else None
    except ValueError:
        return None


def _fresh_process(spawn: bool = False):
    """A multiprocessing context whose workers have never called eSpeak NG: forked from a server
    that imported this module (torch included) and nothing more, so a corpus after the first costs
    no interpreter start (the server stays, idle, until this process ends); spawn where there is no
    fork server (or `spawn`)."""
    import multiprocessing

    if spawn or "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload([__name__])  # (read when the server starts; it calls nothing here)
    return ctx


def _render_in_worker(directory: Path, rows: list[dict], seed: int) -> list[tuple[float, int]]:
    """_render_all in a fresh worker; a worker that dies (killed, out of memory) is an error, not a wait."""
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    def run(ctx) -> list[tuple[float, int]]:
        with ProcessPoolExecutor(1, mp_context=ctx) as pool:  # (its worker ends itself: no "leaked semaphore" warning)
            return pool.submit(_render_all, str(directory), rows, seed).result()

    try:
        try:
            return run(_fresh_process())
        except ChildProcessError:  # a fork server this process inherited through fork (its parent's): not this one's to use
            return run(_fresh_process(spawn=True))
    except BrokenProcessPool:
        raise SpeechError(f"{directory}: the speech synthesis worker stopped before the corpus was written (its error is above, or it was "
                          "killed: out of memory?; a script read from stdin cannot start one: run it from a file)") from None  # fmt: skip


def _render_corpus(directory: Path, recipe: dict) -> list[Utterance]:
    n, voices, seed, manifest = recipe["n"], recipe["voices"], recipe["seed"], directory / "manifest.jsonl"
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = [Utterance(file_name=f"{i:06d}.wav", transcription=random_text(rng), voice=str(voices[rng.integers(len(voices))]),
                      rate=int(rng.integers(120, 260)), pitch=int(rng.integers(20, 80)), pitch_range=int(rng.integers(20, 90)),
                      word_gap=int(rng.integers(0, 4)), snr_db=round(float(rng.uniform(10, 40)), 2)) for i in range(n)]  # fmt: skip
    print(f"synthesizing {n:,} utterances with eSpeak NG into {directory} (once: later runs of up to {n:,} reuse them)", file=sys.stderr)
    for u, (seconds, size) in zip(rows, _render_in_worker(directory, [asdict(u) for u in rows], seed)):
        u.seconds, u.file_bytes = seconds, size
    tmp = manifest.with_suffix(".tmp")
    tmp.write_text("\n".join([json.dumps(recipe)] + [json.dumps(asdict(u)) for u in rows]) + "\n")
    tmp.replace(manifest)  # the manifest appears only once every file is written
    return rows


MAX_DRAWN_SLICES = 300  # show_audio marks each token's slice up to this many


def show_audio(path, out_path, slice_frames: int = 10, n_mels: int = 80) -> Path:
    """PNG of an audio file: waveform on top, Whisper log-mel (n_mels bins) below, token slices marked."""
    from tokenizers_mm import AudioTokenizer, load_audio
    from tokenizers_mm.audio import HOP_LENGTH, SAMPLE_RATE, log_mel_spectrogram, to_waveform

    from .config import say

    samples, rate = load_audio(path, on_cut_short=lambda why: say(f"show: {why}; drawn as far as it goes"))
    wave = to_waveform(samples, rate, str(path))
    tok = AudioTokenizer(slice_frames=slice_frames, chunk=False, max_frames=max(slice_frames, -(-len(wave) // HOP_LENGTH // slice_frames) * slice_frames))
    mel = log_mel_spectrogram(tok.prepare(wave, str(path)), n_mels)  # (n_mels, F)
    seconds = len(wave) / SAMPLE_RATE
    from .plots import save_png, subplots

    fig, (a0, a1) = subplots(2, 1, figsize=(10, 5), sharex=True, gridspec_kw={"height_ratios": [1, 2]})
    a0.plot(np.arange(len(wave)) / SAMPLE_RATE, wave.numpy(), lw=0.4)
    a0.set_ylabel("amplitude")
    tokens = mel.shape[1] // slice_frames
    drawn = tokens <= MAX_DRAWN_SLICES  # more boundaries than that hide the spectrogram
    a0.set_title(f"{Path(path).name}: {seconds:.2f} s, {mel.shape[1]} frames of 10 ms → {tokens} token{'s' * (tokens != 1)} of "
                 f"{slice_frames} frame{'s' * (slice_frames != 1)}" + ("" if drawn else " (too many to mark)"))  # fmt: skip
    a1.imshow(mel.numpy(), origin="lower", aspect="auto", extent=(0, mel.shape[1] * HOP_LENGTH / SAMPLE_RATE, 0, mel.shape[0]), cmap="magma")
    for k in range(0, mel.shape[1] + 1, slice_frames) if drawn else ():
        a1.axvline(k * HOP_LENGTH / SAMPLE_RATE, color="white", lw=0.3, alpha=0.6)
    a1.set_xlabel("seconds")
    a1.set_ylabel("mel bin")
    return save_png(fig, out_path)
