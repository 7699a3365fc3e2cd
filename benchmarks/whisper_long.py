"""Long recordings: word error rate of a trained speech run on files that join many test
utterances with pauses between them, transcribed as `mmtok transcribe` does (cut at pauses), against
the same model on fixed consecutive windows (the cut transcribe made before) and on each utterance
alone (the recipe's own metric), all in one run.

    python benchmarks/whisper_long.py RUN_DIR [--per-file 12] [--gaps 0.2,0.6] [--gap-noise DB] [--utterances 300]
                                              [--min-pause 0.1] [--margin 0]

RUN_DIR: a whisper_digits run (`python benchmarks/whisper_digits.py` trains one in ~12 minutes;
`mmtok train whisper_digits`). The long files are written to a temporary folder; pauses between
utterances are drawn uniformly from --gaps seconds (seeded), silent or, with --gap-noise DB, filled
with steady Gaussian noise DB below the file's median clip power (the clips themselves carry noise
10-40 dB below their own power, mixed when the corpus was synthesized).
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from recipes import whisper_digits as wd  # noqa: E402
from recipes.runs import load_run_info, load_trained  # noqa: E402
from tokenizers_mm.audio import HOP_LENGTH, SAMPLE_RATE, load_audio, stream_audio, to_waveform  # noqa: E402


def fixed_windows(model, toks, max_text: int, path) -> str:
    """The same model on consecutive windows of its full length, transcripts joined."""
    pieces, out = stream_audio(path, toks["audio"].max_frames * HOP_LENGTH / SAMPLE_RATE), []
    while group := list(itertools.islice(pieces, wd.TRANSCRIBE_GROUP)):
        out += wd.transcribe_batch(model, toks["text"], toks["audio"].encode_batch(group), max_text - 3)
    return " ".join(t for t in out if t)


def main(argv=None):
    import jiwer
    import soundfile as sf

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir")
    ap.add_argument("--per-file", type=int, default=12)
    ap.add_argument("--gaps", default="0.2,0.6")
    ap.add_argument("--utterances", type=int, default=300)
    ap.add_argument("--min-pause", type=float, default=0.1)
    ap.add_argument("--margin", type=float, default=0.0)
    ap.add_argument("--gap-noise", type=float, default=None, metavar="DB",
                    help="fill each file's pauses with steady noise DB below its clips' median power (room tone), not silence")
    args = ap.parse_args(argv)
    lo, hi = map(float, args.gaps.split(","))
    cfg = load_run_info(args.run_dir)[2]
    test = wd.build_data(cfg)[3]
    n = min(args.utterances, len(test))
    model, toks = load_trained(args.run_dir)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as d:
        paths, refs, waves = [], [], []
        for f in range(0, n, args.per_file):
            clips = [to_waveform(*load_audio(test.pairs[i][0])).numpy() for i in range(f, min(f + args.per_file, n))]
            waves += clips
            level = 0.0 if args.gap_noise is None else np.sqrt(np.median([np.mean(c**2) for c in clips])) * 10 ** (-args.gap_noise / 20)
            parts = []
            for wave in clips:
                parts += [wave, (rng.standard_normal(int(rng.uniform(lo, hi) * SAMPLE_RATE)) * level).astype(np.float32)]
            paths.append(f"{d}/long{f:04d}.wav")
            sf.write(paths[-1], np.concatenate(parts[:-1]), SAMPLE_RATE)
            refs.append(" ".join(test.pairs[i][1] for i in range(f, min(f + args.per_file, n))))
        audio_seconds = sum(sf.info(p).duration for p in paths)
        alone = []
        for s in range(0, n, 32):
            alone += wd.transcribe_batch(model, toks["text"], toks["audio"].encode_batch(waves[s : s + 32]), cfg.max_text - 3)
        t0 = time.perf_counter()
        pauses = wd.transcribe(args.run_dir, paths, min_pause=args.min_pause, margin=args.margin)
        t_pauses = time.perf_counter() - t0
        t0 = time.perf_counter()  # (each timing loads the run, as transcribe does: the same work around the decoding)
        loaded, loaded_toks = load_trained(args.run_dir)
        fixed = [fixed_windows(loaded, loaded_toks, cfg.max_text, p) for p in paths]
        t_fixed = time.perf_counter() - t0
    result = {"benchmark": "whisper_long", "run_dir": str(args.run_dir), "files": len(paths), "utterances": n, "audio_seconds": audio_seconds,
              "pauses_s": [lo, hi], "pause_noise": args.gap_noise, "min_pause": args.min_pause, "margin": args.margin, "wer_each_utterance_alone": jiwer.wer([p[1] for p in test.pairs[:n]], alone),
              "wer_long_files_cut_at_pauses": jiwer.wer(refs, pauses), "wer_long_files_fixed_windows": jiwer.wer(refs, fixed),
              "seconds_cut_at_pauses": t_pauses, "seconds_fixed_windows": t_fixed}  # fmt: skip
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
