"""Log-mel front end speed: ms per 30 s chunk, batch 8, ours vs openai-whisper's
`log_mel_spectrogram` and Hugging Face's `WhisperFeatureExtractor` (torch and NumPy paths),
all in one run on the same audio.

    python benchmarks/mel_speed.py [--repeats 10] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
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


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
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
    print(json.dumps({"benchmark": "log-mel, ms per 30 s chunk", "batch": args.batch, "device": args.device, "ms_per_chunk": rows,
                      "ratio_ours_over_whisper": ratio, "goal": "<= 1.0"}, indent=2))  # fmt: skip
    for k, v in rows.items():
        print(f"{k:38s} {v:8.2f} ms/chunk")
    print(f"ratio ours / openai-whisper: {ratio:.3f} (goal <= 1.0)")


if __name__ == "__main__":
    main()
