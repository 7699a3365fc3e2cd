"""Log-mel front end speed: ms per 30 s chunk, batch 8, ours vs openai-whisper's
`log_mel_spectrogram` and Hugging Face's `WhisperFeatureExtractor` (torch and NumPy paths),
all in one run on the same audio; and the memory a long recording's log-mel takes at its peak
(openai-whisper's transcribe takes it in one pass; ours in 10-minute pieces), each side in a
process of its own.

    python benchmarks/mel_speed.py [--repeats 10] [--device cpu] [--long-minutes 60]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tokenizers_mm.audio import N_SAMPLES, log_mel_spectrogram  # noqa: E402


def best_ms(fns: dict, repeats: int, per: int, sync=lambda: None) -> dict[str, float]:
    """Each function's best time in ms per `per` items, the functions called in turn (a, b, c, a, b,
    c, ...) so that a busy moment of a shared machine falls on every side alike."""
    for fn in fns.values():  # warm-up
        fn()
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            sync()
            best[name] = min(best[name], time.perf_counter() - t0)
    return {name: t * 1e3 / per for name, t in best.items()}


def peak_mb(minutes: float, side: str) -> dict:
    """In this process: the log-mel of a `minutes`-long recording (whole, as openai-whisper's transcribe
    pads and reads it), its seconds and the peak resident memory it reached (MB) over what was resident with the waveform
    (Linux: /proc; the imports' own peak can hide a short recording's)."""
    import whisper.audio as wa

    wave = 0.1 * torch.randn(int(minutes * 60 * 16000), generator=torch.Generator().manual_seed(0))
    wave = torch.cat([wave, torch.zeros(N_SAMPLES)])  # (the window of silence both transcribes append)
    before = int(Path("/proc/self/statm").read_text().split()[1]) * resource.getpagesize() // 1024  # resident now, KB (as ru_maxrss)
    t0 = time.perf_counter()
    mel = log_mel_spectrogram(wave, 80) if side == "ours" else wa.log_mel_spectrogram(wave, 80)
    seconds = time.perf_counter() - t0
    return {"peak_mb": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024, "seconds": seconds, "frames": mel.shape[-1]}


def long_recording(minutes: float) -> dict:
    """peak_mb for ours and openai-whisper's, each measured in a fresh process."""
    out = {}
    for side in ("ours", "openai-whisper"):
        run = subprocess.run([sys.executable, __file__, "--peak-of", side, "--long-minutes", str(minutes)], capture_output=True, text=True, check=True)
        out[side] = json.loads(run.stdout)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--long-minutes", type=float, default=60.0, help="the long recording's length (0: not measured)")
    ap.add_argument("--peak-of", choices=("ours", "openai-whisper"), help=argparse.SUPPRESS)  # (a child process's side)
    args = ap.parse_args()
    if args.peak_of:
        print(json.dumps(peak_mb(args.long_minutes, args.peak_of)))
        return
    import whisper.audio as wa
    from transformers import WhisperFeatureExtractor

    g = torch.Generator().manual_seed(0)
    audio = (0.1 * torch.randn(args.batch, N_SAMPLES, generator=g)).to(args.device)
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    fe = WhisperFeatureExtractor(feature_size=80)
    np_audio = [a.cpu().numpy() for a in audio]
    rows = best_ms({"ours (batched)": lambda: log_mel_spectrogram(audio, 80),
                    "openai-whisper (per chunk)": lambda: [wa.log_mel_spectrogram(a, 80) for a in audio],
                    "hf WhisperFeatureExtractor (torch)": lambda: fe(np_audio, sampling_rate=16000, return_tensors="pt", device=args.device)},
                   args.repeats, args.batch, sync)  # fmt: skip
    # (the slow numpy path, after the others and fewer times: no ratio is read from it)
    rows |= best_ms({"hf WhisperFeatureExtractor (numpy)": lambda: fe._np_extract_fbank_features(np_audio, "cpu")}, max(2, args.repeats // 3), args.batch)
    ratio = rows["ours (batched)"] / rows["openai-whisper (per chunk)"]
    long = long_recording(args.long_minutes) if args.long_minutes > 0 else None
    print(json.dumps({"benchmark": "log-mel, ms per 30 s chunk", "batch": args.batch, "device": args.device, "ms_per_chunk": rows,
                      "ratio_ours_over_whisper": ratio, "goal": "<= 1.0",
                      "long_recording": long and {"minutes": args.long_minutes, **long}}, indent=2))  # fmt: skip
    for k, v in rows.items():
        print(f"{k:38s} {v:8.2f} ms/chunk")
    print(f"ratio ours / openai-whisper: {ratio:.3f} (goal <= 1.0)")
    if long:
        ours, theirs = long["ours"], long["openai-whisper"]
        print(f"{args.long_minutes:g} min recording's log-mel: peak {ours['peak_mb']:.0f} MB in {ours['seconds']:.2f} s, openai-whisper "
              f"{theirs['peak_mb']:.0f} MB in {theirs['seconds']:.2f} s (peak ratio {ours['peak_mb'] / theirs['peak_mb']:.3f}, goal <= 1.0)")


if __name__ == "__main__":
    main()
