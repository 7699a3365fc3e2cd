"""Audio tokenizer (registered as `audio`): Whisper's log-mel front end, cut into slice tokens.

Waveform (any sample rate, mono or multi-channel, int or float) → mono 16 kHz (torchaudio
resampling; scipy's polyphase filter for a rate sharing only a small factor with 16 kHz) →
log-mel spectrogram exactly as openai-whisper's `log_mel_spectrogram` computes it (STFT n_fft 400
/ hop 160 with a Hann window, power spectrum, Slaney mel filters, log10, clamp at max − 8,
(x + 4) / 4; Radford et al. 2022), with the filters built by torchaudio instead of read from
whisper's file → slices of `slice_frames` consecutive frames, one token each, with the slice
index as position. Fixed 30 s chunks (pad / trim, as Whisper) or variable length with a padding
mask. `log_mel_spectrogram` runs batched on whatever device the audio is on. Reading audio files
(`load_audio`, through soundfile) lives here too; speech synthesis and transcripts do not.
"""

from __future__ import annotations

import itertools
import math
import numbers
import os
import re
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .base import Tokenizer, source_bytes
from .registry import register
from .tokenset import TokenBatch, TokenSet

SAMPLE_RATE = 16000  # Hz
N_FFT = 400  # samples in a 25 ms window
HOP_LENGTH = 160  # samples in a 10 ms hop
CHUNK_LENGTH = 30  # seconds
N_SAMPLES = CHUNK_LENGTH * SAMPLE_RATE  # 480000 samples in a 30 s chunk
N_FRAMES = N_SAMPLES // HOP_LENGTH  # 3000 frames in a 30 s chunk
MIN_STFT_SAMPLES = N_FFT // 2 + 1  # 201: the STFT's reflect padding needs more than n_fft // 2 samples
SINC_KERNEL_LIMIT = 1 << 22  # elements of torchaudio's resampling kernel (32 MB in float64); past it, polyphase


class AudioError(ValueError):
    """Audio that cannot be tokenized: the message names it and says what was expected."""


@lru_cache(maxsize=None)
def mel_filters(n_mels: int, device: str = "cpu") -> Tensor:
    """(n_mels, 201) Slaney-normalised mel filterbank on the Slaney scale: librosa's, as whisper ships."""
    import torchaudio.functional as AF

    fb = AF.melscale_fbanks(N_FFT // 2 + 1, 0.0, SAMPLE_RATE / 2, n_mels, SAMPLE_RATE, norm="slaney", mel_scale="slaney")
    return fb.T.contiguous().to(device)  # (201, n_mels) -> (n_mels, 201)


@lru_cache(maxsize=None)
def _window(device: str) -> Tensor:
    return torch.hann_window(N_FFT, device=device)


def _log_mel(x: Tensor, n_mels: int, frames: Tensor | None = None) -> Tensor:
    """(B, T) → (B, n_mels, T // 160): whisper's steps, in place where it can. frames (B,): rows
    of different lengths, each already reflect-padded by n_fft // 2 at both ends (`log_mel_rows`):
    row b's floor is taken over its own `frames[b]` frames only."""
    log_spec = _log_spec(x, n_mels, center=frames is None)
    peak = log_spec if frames is None else log_spec.masked_fill(torch.arange(log_spec.shape[-1], device=x.device) >= frames[:, None, None], -torch.inf)
    floor = peak.amax(dim=(-2, -1), keepdim=True) - 8.0  # per sample
    return torch.maximum(log_spec, floor).add_(4.0).div_(4.0)


def _log_spec(x: Tensor, n_mels: int, center: bool) -> Tensor:
    """(B, T) → (B, n_mels, F): log10 of the mel power, before whisper's floor and scaling; F = T // 160
    (center: reflect-padded here by n_fft // 2 at both ends) or (T - n_fft) // 160 (padded already)."""
    stft = torch.stft(x, N_FFT, HOP_LENGTH, window=_window(str(x.device)), center=center, return_complex=True)[..., :-1]  # (B, 201, F)
    power = stft.abs().square_()
    mel = mel_filters(n_mels, str(x.device)) @ power  # (n_mels, 201) @ (B, 201, F) -> (B, n_mels, F)
    return mel.clamp_(min=1e-10).log10_()


def _log_mel_long(audio: Tensor, n_mels: int, chunk: int) -> Tensor:
    """log_mel_spectrogram of one waveform (T,), at most `chunk` frames at a time: the STFT's working memory
    is a chunk's (a 1 h recording's whole STFT takes about 2 GB), the floor is taken over all frames."""
    n, pad = audio.shape[-1] // HOP_LENGTH, N_FFT // 2
    out, pieces = torch.empty(n_mels, n, device=audio.device), -(-n // chunk)
    for a, b in itertools.pairwise(i * n // pieces for i in range(pieces + 1)):  # equal pieces (a last sliver of 1 frame rounds otherwise)
        lo, hi = a * HOP_LENGTH - pad, b * HOP_LENGTH + pad  # frames a..b (b dropped, as the whole STFT drops its last) centred on a*160..
        piece = audio[max(lo, 0) : hi]
        piece = F.pad(piece[None], (max(0, -lo), max(0, hi - audio.shape[-1])), mode="reflect") if lo < 0 or hi > audio.shape[-1] else piece[None]
        out[:, a:b] = _log_spec(piece, n_mels, center=False)[0]  # (reflected at the recording's ends only, as torch.stft's centring)
    return out.clamp_(min=out.amax() - 8.0).add_(4.0).div_(4.0)


LONG_FRAMES = 60_000  # a waveform of more 10 ms frames (10 min) has its log-mel computed in pieces of at most this many


def log_mel_rows(waves: list[Tensor], n_mels: int = 80, device=None, batched: bool | None = None) -> Tensor:
    """Waveforms of different lengths → (B, n_mels, F) for the longest: row b's first T_b // 160
    frames equal `log_mel_spectrogram(waves[b])` (its own reflect padding at both ends, its own
    max − 8 floor); the frames after them are padding. One batched STFT on a GPU (each row padded
    as it would be alone, then with zeros); row by row on the CPU, which measured faster there
    (`batched` forces either way)."""
    device = torch.device(device) if device is not None else waves[0].device
    longest = max(w.shape[-1] for w in waves)
    if not (device.type != "cpu" if batched is None else batched):
        mels = [log_mel_spectrogram(w.to(device), n_mels) for w in waves]
        return torch.stack([F.pad(m, (0, longest // HOP_LENGTH - m.shape[-1])) for m in mels])
    pad = N_FFT // 2
    x = torch.stack([F.pad(F.pad(w.to(device)[None], (pad, pad), mode="reflect")[0], (0, longest - w.shape[-1])) for w in waves])
    return _log_mel(x, n_mels, torch.tensor([w.shape[-1] // HOP_LENGTH for w in waves], device=device))


def log_mel_spectrogram(audio: Tensor, n_mels: int = 80) -> Tensor:
    """16 kHz waveform (T,) or (B, T) float → log-mel (n_mels, T // 160) or (B, n_mels, T // 160).

    Whisper's recipe; the max − 8 floor is taken per sample (whisper takes it over whatever
    tensor it is given, which is the same for one sample). Runs on the audio's device. A waveform of
    more than LONG_FRAMES frames (10 min) is computed in pieces, to the same values.
    """
    single = audio.dim() == 1
    if single and audio.shape[-1] // HOP_LENGTH > LONG_FRAMES:
        return _log_mel_long(audio, n_mels, LONG_FRAMES)
    x = audio[None] if single else audio
    if x.device.type == "cpu" and x.shape[0] > 1:
        # note: torch's batched STFT on the CPU measured ~5x slower per row than one row at a time.
        out = torch.cat([_log_mel(row[None], n_mels) for row in x])
    else:
        out = _log_mel(x, n_mels)
    return out[0] if single else out


def to_waveform(audio, sample_rate: int = SAMPLE_RATE, name: str = "audio") -> Tensor:
    """Any waveform → float32 mono 16 kHz (T,).

    Accepts NumPy arrays or tensors: (T,), or 2-D with the channels on the shorter axis ((C, T) as
    torchaudio, (T, C) as soundfile); int8 / int16 / int32 / uint8 PCM or float. Channels are averaged.
    Other integer types (an int64 tensor made from a Python list) are refused: their scale is unknown.
    """
    x = torch.from_numpy(np.ascontiguousarray(audio)) if isinstance(audio, np.ndarray) else audio
    if not isinstance(x, Tensor):
        raise AudioError(f"{name}: expected a NumPy array or tensor waveform, got {type(audio).__name__}")
    if x.dim() == 2:
        x = x if x.shape[0] <= x.shape[1] else x.T  # channels on the shorter axis
    elif x.dim() != 1:
        raise AudioError(f"{name}: expected a waveform of shape (T,) or (channels, T), got {tuple(x.shape)}")
    if x.dtype == torch.int16:
        x = x.float() / 32768.0
    elif x.dtype == torch.int32:
        x = x.float() / 2147483648.0
    elif x.dtype == torch.uint8:
        x = (x.float() - 128.0) / 128.0
    elif x.dtype == torch.int8:
        x = x.float() / 128.0
    elif x.is_floating_point():
        x = x.float()
    else:  # int64, uint16, bool...: is 1000 loud or quiet? Guessing would change every log-mel silently
        raise AudioError(f"{name}: {str(x.dtype).removeprefix('torch.')} samples have no known scale; give float samples "
                         "in [-1, 1] or int8 / int16 / int32 / uint8 PCM")  # fmt: skip
    if x.dim() == 2:
        x = x.mean(0)
    if x.numel() == 0:
        raise AudioError(f"{name}: the waveform is empty (0 samples)")
    if not torch.isfinite(x).all():
        first = int((~torch.isfinite(x)).nonzero()[0, 0])
        at = (f"{first / sample_rate:.2f} s in" if isinstance(sample_rate, numbers.Real) and not isinstance(sample_rate, bool) and sample_rate > 0
              else f"sample {first:,}")  # fmt: skip
        raise AudioError(f"{name}: the waveform holds NaN or infinite samples (the first {at})")
    if (peak := float(x.abs().max())) > MAX_PEAK:  # (refused here, where a folder's files are checked, not at the spectrogram mid-run)
        raise AudioError(f"{name}: the spectrogram would overflow (peak amplitude {peak:.3g}); expected samples in [-1, 1]")
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, numbers.Real):
        raise AudioError(f"{name}: sample rate {sample_rate!r} is not a number of Hz")
    if not isinstance(sample_rate, numbers.Integral):
        if not float(sample_rate).is_integer():
            raise AudioError(f"{name}: sample rate {sample_rate} Hz is not a whole number")
        sample_rate = int(sample_rate)  # 44100.0 (a float from some readers, numpy's too) is 44100
    sample_rate = int(sample_rate)
    if sample_rate != SAMPLE_RATE:
        if sample_rate < MIN_SAMPLE_RATE:  # (a header's 1 Hz would make 16,000 samples of each one: a small file, gigabytes)
            raise AudioError(f"{name}: sample rate {sample_rate} Hz; expected audio of at least {MIN_SAMPLE_RATE:,} Hz (a damaged header?)")
        x = resample(x, sample_rate)
    return x


MIN_SAMPLE_RATE = 1000  # Hz: below it no recording is speech or sound a log-mel of 16 kHz reads (telephony: 8 kHz)


def resample(x: Tensor, sample_rate: int) -> Tensor:
    """(T,) float at `sample_rate` → 16 kHz: torchaudio's windowed-sinc resampling, or, for a rate
    sharing only a small factor with 16 kHz (e.g. 44101 Hz), scipy's polyphase filter.

    note: torchaudio builds a (16000/g) × (rate/g + 2·width) kernel for g = gcd(rate, 16000):
    tens of GB at 44101 Hz (g = 1), from a one-second file. resample_poly's filter is 1-D.
    """
    import math

    g = math.gcd(sample_rate, SAMPLE_RATE)
    up, down = SAMPLE_RATE // g, sample_rate // g
    width = math.ceil(6 * down / (min(up, down) * 0.99))  # torchaudio's lowpass_filter_width 6, rolloff 0.99
    if up * (down + 2 * width) <= SINC_KERNEL_LIMIT:
        import torchaudio.functional as AF

        return AF.resample(x, sample_rate, SAMPLE_RATE)
    from scipy.signal import resample_poly  # scipy comes with scikit-learn

    return torch.from_numpy(resample_poly(x.cpu().numpy(), up, down).astype(np.float32)).to(x.device)


def _soundfile(path):
    """soundfile, after checking that `path` is a non-empty file libsndfile can read."""
    import soundfile as sf

    if not path.is_file():
        what = ("a folder, not an audio file" if path.is_dir() else "not a regular file (a pipe or a device): save the audio to a file first"
                if path.exists() else "no such file")  # fmt: skip
        raise AudioError(f"audio {path}: {what}")
    if path.stat().st_size == 0:
        raise AudioError(f"audio {path}: the file is empty (0 bytes)")
    try:
        info = sf.info(str(path))
    except (RuntimeError, sf.LibsndfileError) as e:
        raise AudioError(f"audio {path}: not a readable audio file ({str(e).splitlines()[0]})") from None
    return sf, info


def load_audio(source, on_cut_short=None) -> tuple[np.ndarray, int]:
    """Decode audio with soundfile (libsndfile: WAV, FLAC, OGG, ...): (mono samples, rate), the
    channels averaged. `source`: a file path, or an object with `read_bytes()` whose str() names it
    (a row of a Hugging Face dataset, recipes/folders.py). A file that decodes but looks cut short
    (a WAV whose header promises more samples: a broken copy or download) is an AudioError, not
    its first part taken for the whole (its transcript would not match); or, given
    `on_cut_short(message)`, said through it, and what the file holds returned (a picture of it)."""
    import io

    import soundfile as sf

    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        info = _soundfile(path)[1]
        source_arg = str(path)
    else:
        path, source_arg, info = source, io.BytesIO(source_bytes(source, "audio", AudioError)), None
    try:
        if info is None:
            info = sf.info(source_arg)
            source_arg.seek(0)
        data, rate = sf.read(source_arg, dtype="float32", always_2d=False)
    except (RuntimeError, sf.LibsndfileError) as e:
        reason = str(e).splitlines()[0].split(">: ", 1)[-1]  # note: not libsndfile's "Error opening <_io.BytesIO object at 0x...>"
        raise AudioError(f"audio {path}: not a readable audio file ({reason})") from None
    if short := _cut_short(info, len(data)):
        message = f"audio {path}: the file ends after {len(data) / rate:.1f} s ({short})"
        if on_cut_short is None:
            raise AudioError(message)
        on_cut_short(message)
    if data.ndim == 2:  # soundfile's (frames, channels), mixed to mono here: a file of fewer frames than channels has no shorter-axis guess
        data = data.mean(1, dtype=np.float32)
    return data, rate


def stream_audio(path, seconds: float):
    """An audio file as consecutive mono 16 kHz waveforms of at most `seconds` each (whole multiples
    of rate / gcd(rate, 16000) input samples: at least 1 s at 44,101 Hz), read block by block: a
    2-hour recording never sits in memory whole. Joined, they equal the whole file resampled. A file
    that stops decoding part-way (cut short by a broken download or copy, damaged) yields every
    sample before the damage (to within 0.1 s), then raises AudioError saying where; so does one that
    libsndfile reads without an error but that looks cut short (`_cut_short`)."""
    path = Path(path)
    sf, info = _soundfile(path)
    rate = info.samplerate
    g = math.gcd(rate, SAMPLE_RATE)
    up, down = SAMPLE_RATE // g, rate // g
    # note: a block is resampled with STREAM_CONTEXT samples of its neighbours on each side, then cut to its own span, so the
    # pieces join as the whole file resampled at once (resampled alone, each block's edges stepped: ~-36 dB at every join);
    # blocks and the context are whole multiples of `down` input samples, whole multiples of `up` output samples
    block = max(down, int(seconds * rate) // down * down)
    context = 0 if rate == SAMPLE_RATE else -(-STREAM_CONTEXT // down) * down
    before, current, done, failed, frames_read = np.zeros(0, np.float32), None, 0, None, 0  # (done: 16 kHz samples yielded)
    blocks = _decoded_blocks(sf, path, block, max(1, rate // 10))
    while True:
        try:
            piece = next(blocks, None)
        except (RuntimeError, sf.LibsndfileError) as e:
            piece, failed = None, str(e).splitlines()[0]
        if piece is None:
            break
        frames_read += len(piece)
        if current is not None:
            wave = _resampled_span(before, current, piece[:context], rate, up, down, path, done / SAMPLE_RATE)
            done += len(wave)
            yield wave
            before = np.concatenate([before, current])[-context:] if context else before
        current = piece
    if current is not None:
        wave = _resampled_span(before, current, current[:0], rate, up, down, path, done / SAMPLE_RATE)
        done += len(wave)
        yield wave
    if failed is not None:
        where = f" after {done / SAMPLE_RATE:.1f} s" if done else ""
        raise AudioError(f"audio {path}: decoding failed{where} ({failed})")
    if short := _cut_short(info, frames_read):
        raise AudioError(f"audio {path}: the file ends after {done / SAMPLE_RATE:.1f} s ({short})")


def _cut_short(info, frames_read: int) -> str:
    """Why a file that decoded without an error looks cut short (libsndfile reads what is there
    without a word), or "": a WAV whose header promised more samples, an Ogg stream whose last page
    is not its end, or fewer frames than the header gives (MP3)."""
    promised = re.search(r"data : (\d+) \(should be (\d+)\)", info.extra_info)
    if promised and 0 < int(promised[1]) < 0xFFFFFF00:  # (0 or ~4 GB: a recorder that did not know the length, not damage)
        return f"its header gives {int(promised[1]):,} bytes of samples, the file holds {int(promised[2]):,}: cut short?"
    if "lacks an end-of-stream bit" in info.extra_info:
        return "its last Ogg page is not the stream's end: cut short?"
    if info.frames > frames_read + info.samplerate // 10:  # (MP3: the header's count; 0.1 s of slack for encoder padding)
        return f"its header gives {info.frames / info.samplerate:.1f} s: cut short?"
    return ""


def _decoded_blocks(sf, path: Path, block: int, small: int):
    """The file's frames as mono float32 blocks of `block` frames (the last one shorter). A block that
    fails to decode is read again `small` frames at a time: what came before the damage is yielded,
    then the error raised (a block that reads whole the second time goes on as any other)."""
    f = sf.SoundFile(str(path))
    try:
        while True:
            at = f.tell()
            try:
                piece = f.read(block, dtype="float32", always_2d=True)
            except (RuntimeError, sf.LibsndfileError) as e:
                error, parts, got = e, [], 0
                f.close()
                f = sf.SoundFile(str(path))  # (the failed handle cannot seek any more)
                try:
                    f.seek(at)
                    while got < block and len(part := f.read(min(small, block - got), dtype="float32", always_2d=True)):
                        parts.append(part.mean(1))
                        got += len(part)
                    error = None  # read whole (or to the file's end) the second time
                except (RuntimeError, sf.LibsndfileError):
                    pass
                if parts:
                    yield np.concatenate(parts)
                if error is not None:
                    raise error from None
                continue
            if not len(piece):
                return
            yield piece.mean(1)  # mono here: a last block of 1 frame has no shorter axis
    finally:
        f.close()


STREAM_CONTEXT = 4096  # input samples of each neighbour a streamed block is resampled with (the filters reach ~10 output samples)


def _resampled_span(before: np.ndarray, current: np.ndarray, after: np.ndarray, rate: int, up: int, down: int, path: Path,
                    start: float) -> Tensor:  # fmt: skip
    """`current` (which starts `start` seconds into the file) at 16 kHz, resampled with `before` and
    `after` around it and cut to its own span."""
    joined = np.concatenate([before, current, after])
    if not np.isfinite(joined).all():  # (named here by its time in the file: to_waveform sees only this block)
        first = int(np.flatnonzero(~np.isfinite(joined))[0])
        raise AudioError(f"audio {path}: the waveform holds NaN or infinite samples (the first {start + (first - len(before)) / rate:.2f} s in)")
    wave = to_waveform(joined, rate, f"{path} [from {start:.0f} s]")
    start = len(before) * up // down  # (len(before): a multiple of down)
    return wave[start : start + math.ceil(len(current) * up / down)]


def split_at_pauses(pieces, max_seconds: float, min_pause: float = 0.1, quiet_db: float = 40.0, floor_db: float = -60.0,
                    margin: float = 0.0, min_sound: float = 0.05):
    """Cut a stream of 16 kHz mono waveforms (`stream_audio`'s) into segments of sound between
    pauses, none longer than `max_seconds`, for a model that hears one window at a time.

    Energy per 10 ms frame, judged per window of `max_seconds` against its loudest frame and the
    noise floor (the 10th percentile of a window's frames, taken from the last window where it lies
    20 dB or more below the loudest, or where frames vary by less than 6 dB between their 10th and
    90th percentiles — a window with quiet stretches, or one of steady room noise; continuous speech
    keeps the floor found before it; a DC offset past 0.02 is removed first): a frame is sound when
    it is within `quiet_db` of the loudest and at least 3 dB above the floor; at least `min_pause`
    seconds of other frames make a pause. Segments end in the middle of each pause; sound that runs
    a whole window without one is cut at its quietest frame in the window's second half (a fixed
    cut splits a word anywhere). Each segment is trimmed to its sound frames, `margin` seconds either side kept when
    the pause allows (a model trained on clips cut tight, as whisper_digits', may read leading
    silence as a word). Left out: segments with less than `min_sound` seconds 15 dB above the floor
    (a click, a breath of room noise), and windows whose loudest frame is below `floor_db` dBFS
    (silence has nothing to transcribe, and a model may invent text there). At most about two
    windows of samples are held, whatever the stream's length. Yields (start in seconds, waveform).
    """
    for name, v in (("max_seconds", max_seconds), ("min_pause", min_pause), ("quiet_db", quiet_db), ("margin", margin), ("min_sound", min_sound)):
        if not (math.isfinite(v) and v >= 0):
            raise ValueError(f"split_at_pauses: {name}={v} must be a finite number >= 0")
    if not math.isfinite(floor_db):
        raise ValueError(f"split_at_pauses: floor_db={floor_db} must be a finite number (dBFS)")
    window = int(max_seconds * SAMPLE_RATE)
    if window < 2 * HOP_LENGTH:
        raise ValueError(f"split_at_pauses: max_seconds={max_seconds} is shorter than two 10 ms frames")
    min_frames, sound_frames = max(1, round(min_pause * SAMPLE_RATE / HOP_LENGTH)), round(min_sound * SAMPLE_RATE / HOP_LENGTH)
    pad = int(margin * SAMPLE_RATE)
    pieces, buffer, offset, more = iter(pieces), torch.zeros(0), 0, True
    noise = -math.inf  # the noise floor (dB) of the last window that showed one
    while True:
        parts, n = [buffer], len(buffer)
        while more and n <= window:  # note: one piece past the window, so a stream ending exactly there is known to end
            piece = next(pieces, None)
            more = piece is not None
            if more:
                piece = torch.as_tensor(piece)
                if piece.dim() != 1:
                    raise ValueError(f"split_at_pauses: a piece of shape {tuple(piece.shape)}; expected 1-D mono samples (stream_audio's)")
                parts.append(piece)
                n += len(piece)
        buffer = torch.cat(parts) if len(parts) > 1 else buffer  # one copy per round, however small the pieces
        if not len(buffer):
            return
        head = buffer[:window]
        db = _frame_db(head)
        peak = float(db.max())
        low, high = torch.quantile(db, torch.tensor([0.1, 0.9], dtype=db.dtype)).tolist()
        if peak - low >= 20.0 or high - low < 6.0:  # quiet stretches, or steady (room noise, a fan): the 10th percentile is the floor
            noise = low
        sound = db >= max(peak - quiet_db, noise + 3.0)
        voiced = db >= max(peak - quiet_db, noise + 15.0)
        if peak < floor_db:
            sound = voiced = torch.zeros_like(sound)
        ends = [e for e in _pause_middles(sound, min_frames) if 0 < e < len(head)]  # sample indices where segments end
        final = not more and len(buffer) <= window
        if final:
            ends.append(len(head))
        elif not ends:  # no pause in a whole window: cut at its quietest frame in the second half (the last, if tied)
            second = db[len(db) // 2 :]
            ends = [(len(db) - 1 - int(second.flip(0).argmin())) * HOP_LENGTH]
        begin = 0
        for end in ends:
            first, last = begin // HOP_LENGTH, -(-end // HOP_LENGTH)
            hit = sound[first:last].nonzero()[:, 0]
            if len(hit) and int(voiced[first:last].sum()) >= max(1, sound_frames):
                a = max(begin, (first + int(hit[0])) * HOP_LENGTH - pad)
                b = min(end, (first + int(hit[-1]) + 1) * HOP_LENGTH + pad)
                yield (offset + a) / SAMPLE_RATE, head[a:b]
            begin = end
        if final:
            return
        buffer, offset = buffer[begin:], offset + begin


def _frame_db(wave: Tensor) -> Tensor:
    """Energy of each 10 ms frame in dB (the last frame zero-padded); a DC offset past 0.02 (a bad
    recorder) is removed first, or it would be every frame's floor."""
    frames = F.pad(wave, (0, -len(wave) % HOP_LENGTH)).view(-1, HOP_LENGTH).double()
    if abs(float(wave.mean())) > 0.02:
        frames = frames - float(wave.mean())
    return 10 * torch.log10(frames.pow(2).mean(1) + 1e-12)


def _pause_middles(sound: Tensor, min_frames: int) -> list[int]:
    """Sample index of the middle of each run of at least `min_frames` frames that are not sound."""
    middles, run, quiet = [], 0, (~sound).tolist() + [False]
    for i in range(len(sound)):
        run = run + 1 if quiet[i] else 0
        if run >= min_frames and not quiet[i + 1]:  # a pause ends here
            middles.append((i + 1 - run + run // 2) * HOP_LENGTH)
    return middles


MAX_PEAK = 1e16  # |samples| past which the float32 power spectrum may overflow ((n_fft · peak)² near float32's 3.4e38)


def check_finite(values: Tensor, wave: Tensor, name: str) -> None:
    """A finite waveform far outside [-1, 1] (past ~1e17) overflows the float32 power spectrum."""
    if not bool(torch.isfinite(values).all()):
        raise AudioError(f"{name}: the spectrogram overflows (peak amplitude {float(wave.abs().max()):.3g}); expected samples in [-1, 1]")


@register("audio")
class AudioTokenizer(Tokenizer):
    """Waveform → log-mel slices: one token per `slice_frames` frames of 10 ms."""

    modality = "audio"
    token_types = ("slice",)

    def __init__(self, n_mels: int = 80, slice_frames: int = 1, chunk: bool = True, max_frames: int = N_FRAMES):
        if n_mels not in (80, 128):
            raise ValueError(f"audio: n_mels must be 80 or 128 (Whisper's), got {n_mels}")
        for key, v in (("slice_frames", slice_frames), ("max_frames", max_frames)):
            if not (isinstance(v, numbers.Integral) and v >= 1):
                raise ValueError(f"audio: {key}={v!r} must be a whole number of 10 ms frames, at least 1")
        if max_frames % slice_frames:
            raise ValueError(f"audio: max_frames={max_frames} must be a multiple of slice_frames={slice_frames}")
        self.n_mels, self.slice_frames, self.chunk, self.max_frames = n_mels, slice_frames, chunk, max_frames
        self.value_dim = n_mels * slice_frames
        self.max_positions = max_frames // slice_frames

    def config(self) -> dict:
        return {"n_mels": self.n_mels, "slice_frames": self.slice_frames, "chunk": self.chunk, "max_frames": self.max_frames}

    def prepare(self, wave: Tensor, name: str) -> Tensor:
        """A mono 16 kHz waveform → padded / trimmed to the chunk (chunk mode), or checked against
        max_frames and rounded up to whole slices; no spectrogram yet."""
        limit = self.max_frames * HOP_LENGTH
        if self.chunk:
            return torch.nn.functional.pad(wave, (0, max(0, limit - wave.shape[-1])))[..., :limit]
        if wave.shape[-1] > limit:
            raise AudioError(f"{name}: {wave.shape[-1] / SAMPLE_RATE:.1f} s is longer than max_frames={self.max_frames} "
                             f"({limit / SAMPLE_RATE:.1f} s); split it or raise max_frames (in Python, AudioTokenizer(chunk=True) trims clips to the window instead)")  # fmt: skip
        step = HOP_LENGTH * self.slice_frames
        wave = torch.nn.functional.pad(wave, (0, -wave.shape[-1] % step))
        # note: a clip of one 10 ms frame (160 samples) is too short for the STFT's reflect
        # padding; silence makes up the window, and the spectrogram still has T // 160 frames
        return torch.nn.functional.pad(wave, (0, max(0, MIN_STFT_SAMPLES - wave.shape[-1])))

    def slices(self, mel: Tensor) -> Tensor:
        """(n_mels, F) → (F // k, k · n_mels): k consecutive frames per token, frame-major."""
        k = self.slice_frames
        n = mel.shape[-1] // k
        return mel[..., : n * k].transpose(-2, -1).reshape(*mel.shape[:-2], n, k * self.n_mels)

    def encode(self, sample, sample_rate: int = SAMPLE_RATE, name: str = "audio") -> TokenSet:
        wave = self.prepare(to_waveform(sample, sample_rate, name), name)
        values = self.slices(log_mel_spectrogram(wave, self.n_mels))
        check_finite(values, wave, name)
        return TokenSet(self.modality, values=values)

    def encode_batch(self, samples, sample_rates=None, device=None, names=None) -> TokenBatch:
        """Many waveforms → one TokenBatch, the spectrograms computed together on `device`.
        Variable-length mode pads to the longest and marks the padding in the mask; each row's
        tokens equal `encode` of its sample alone. sample_rates: one per sample, or one for all."""
        if not len(samples):
            raise AudioError("encode_batch: no samples; give at least one waveform")
        if isinstance(sample_rates, numbers.Real):  # one rate for every sample (an int, a numpy int, ...)
            sample_rates = [sample_rates] * len(samples)
        if sample_rates is None:
            sample_rates = [SAMPLE_RATE] * len(samples)
        sample_rates = list(sample_rates.tolist() if hasattr(sample_rates, "tolist") else sample_rates)  # (a list, array or tensor)
        names = [f"audio[{i}]" for i in range(len(samples))] if names is None else [str(n) for n in names]
        for what, given in (("sample_rates", sample_rates), ("names", names)):
            if len(given) != len(samples):
                raise AudioError(f"encode_batch: {len(samples)} samples but {len(given)} {what}; give one per sample")
        waves = [self.prepare(to_waveform(s, r, n), n) for s, r, n in zip(samples, sample_rates, names)]
        lengths = [w.shape[-1] // (HOP_LENGTH * self.slice_frames) for w in waves]
        values = self.slices(log_mel_rows(waves, self.n_mels, device))  # (B, N, k·n_mels); row b as encode(waves[b])
        if not bool(torch.isfinite(values).all()):  # one check for the batch, then name the first bad one
            for row, wave, name in zip(values, waves, names):
                check_finite(row, wave, name)
        B, N = values.shape[:2]
        mask = torch.arange(N, device=values.device)[None] < torch.tensor(lengths, device=values.device)[:, None]
        positions = torch.arange(N, device=values.device).expand(B, N)
        return TokenBatch(self.modality, None, values, positions, torch.zeros_like(positions), mask)
