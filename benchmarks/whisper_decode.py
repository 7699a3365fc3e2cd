"""Whisper decoding at a real model size against openai-whisper, same weights and audio, same run:
greedy decoding of a batch of 30 s windows, and openai-whisper's transcribe with its temperature
fallback where every temperature is tried (random weights: the text repeats itself and is unlikely,
so each window is decoded at 0, then sampled best_of times at 0.2 ... 1.0).

    python benchmarks/whisper_decode.py [--width 384 --heads 6 --layers 4 --windows 8 --tokens 64 --sample-len 224]

Defaults are Whisper tiny's sizes (random weights, nothing downloaded). Both sides decode the same
number of tokens (a random model does not stop early), so the times compare the same work:
- greedy: `decode_rows` on a batch of windows vs `whisper.decode` (its suppressions off; the
  tokens are checked equal);
- beam search: `decode_rows(beam_size=5)` on one window vs `whisper.decode(beam_size=5)` (one
  window: openai-whisper's beam search fails on a batch on the CPU; the tokens are checked equal);
- fallback: `decode_with_fallback` with openai-whisper's suppression (`Suppress`) on one 30 s
  window vs `whisper.transcribe(language="en", without_timestamps=True, best_of=5,
  condition_on_previous_text=False)` (best_of=5 is its command's default; the function's is one
  sample), which decodes the same window with the same rules; the
  temperatures each side reached are printed (both 1.0 when every one was tried).
Also one sampling draw (5 rows × 51,865 tokens): ours (inverse CDF) vs torch.multinomial; and word
timestamps for one window (`recipes.word_timing.find_alignment` vs `whisper.timing.find_alignment`,
the same words and times checked).
ratio = ours / peer (time; ≤ 1.0 is at least as fast).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def timed(fn, repeats: int):
    """(best wall time of `repeats` calls, the last result)."""
    return side_by_side([fn], repeats)[0]


def side_by_side(fns: list, repeats: int) -> list[tuple[float, object]]:
    """(best wall time, last result) of each function, called in turn `repeats` times (a, b, a, b, ...),
    so that a slow spell of a shared machine falls on both sides."""
    best, out = [float("inf")] * len(fns), [None] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            start = time.perf_counter()
            out[i] = fn()
            best[i] = min(best[i], time.perf_counter() - start)
    return list(zip(best, out))


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--width", type=int, default=384)
    ap.add_argument("--heads", type=int, default=6)
    ap.add_argument("--layers", type=int, default=4, help="encoder and decoder blocks each")
    ap.add_argument("--text", type=int, default=448, help="decoder positions")
    ap.add_argument("--windows", type=int, default=8, help="windows decoded together greedily")
    ap.add_argument("--tokens", type=int, default=64, help="tokens decoded per window greedily")
    ap.add_argument("--beam-size", type=int, default=5, help="beams in the beam search comparison (openai-whisper's command: 5)")
    ap.add_argument("--sample-len", type=int, default=224, help="tokens per decoding in the fallback (openai-whisper's default: positions / 2)")
    ap.add_argument("--align-tokens", type=int, default=128, help="text tokens aligned to one window for its word timestamps")
    ap.add_argument("--repeats", type=int, default=3, help="calls of each side, in turn; the best counts")
    args = ap.parse_args(argv)

    import torch
    import whisper
    from whisper_export import random_whisper  # note: this folder, on sys.path as the script's own

    from recipes import whisper_folder
    from recipes.whisper_digits import Suppress, decode_rows, decode_with_fallback

    torch.set_grad_enabled(False)
    with tempfile.TemporaryDirectory(prefix="whisper_decode.") as tmp:
        path = Path(tmp) / "weights.pt"
        ref = random_whisper(path, args.width, args.heads, args.layers, 51865, args.text)
        cfg = whisper_folder.Config(data=tmp, init_from=str(path), language="en")
        model, audio_tok, text_tok = whisper_folder.whisper_weights(cfg)
    model, ref = model.eval(), ref.eval()
    prompt = whisper_folder.prompt_ids(text_tok, cfg.prompt)
    rng = np.random.default_rng(0)
    waves = [rng.normal(0, 0.1, 16000 * 30).astype(np.float32) for _ in range(args.windows)]
    result = {"parameters_M": round(sum(p.numel() for p in ref.parameters()) / 1e6, 1), "threads": torch.get_num_threads()}

    # greedy: the same tokens, timed from the waveforms (log-mel included on both sides)
    greedy = whisper.DecodingOptions(language="en", without_timestamps=True, fp16=False, temperature=0.0, suppress_blank=False,
                                     suppress_tokens=None, sample_len=args.tokens)  # fmt: skip
    (theirs_s, theirs), (ours_s, ours) = side_by_side(
        [lambda: whisper.decode(ref, torch.stack([whisper.log_mel_spectrogram(whisper.pad_or_trim(torch.from_numpy(w))) for w in waves]), greedy),
         lambda: decode_rows(model, text_tok, audio_tok.encode_batch(waves), args.tokens, prompt)], args.repeats)  # fmt: skip
    eot = text_tok.special_ids["<|endoftext|>"]
    same = [[t for t in row if t != eot] for row in ours] == [r.tokens for r in theirs]
    if not same:  # different work: the times would not compare
        raise SystemExit("whisper_decode: error: greedy decoding gave other tokens than openai-whisper's on the same weights and audio")
    result["greedy"] = {"windows": args.windows, "tokens": args.tokens, "ours_s": round(ours_s, 3), "openai_whisper_s": round(theirs_s, 3),
                        "ratio": round(ours_s / theirs_s, 3), "same_tokens": same}  # fmt: skip

    # beam search on one window, the same tokens
    beams = whisper.DecodingOptions(**{**greedy.__dict__, "beam_size": args.beam_size})
    (theirs_s, theirs), (ours_s, ours) = side_by_side(
        [lambda: whisper.decode(ref, whisper.log_mel_spectrogram(whisper.pad_or_trim(torch.from_numpy(waves[0]))), beams),
         lambda: decode_rows(model, text_tok, audio_tok.encode_batch(waves[:1]), args.tokens, prompt, beam_size=args.beam_size)], args.repeats)  # fmt: skip
    same = [t for t in ours[0] if t != eot] == theirs.tokens
    if not same:
        raise SystemExit("whisper_decode: error: beam search gave other tokens than openai-whisper's on the same weights and audio")
    result["beam_search"] = {"beam_size": args.beam_size, "tokens": args.tokens, "ours_s": round(ours_s, 3), "openai_whisper_s": round(theirs_s, 3),
                             "ratio": round(ours_s / theirs_s, 3), "same_tokens": same}  # fmt: skip

    # one sampling draw over Whisper's vocabulary (5 rows, a fallback's best_of): ours (inverse CDF) vs torch.multinomial
    from models import MultimodalTransformer

    logits, g = torch.randn(5, 51865, generator=torch.Generator().manual_seed(0)), torch.Generator().manual_seed(0)
    draw = lambda fn: timed(lambda: [fn() for _ in range(50)], args.repeats)[0] / 50 * 1e3  # noqa: E731 — ms per draw
    ours_ms = draw(lambda: MultimodalTransformer._sample(logits, 1.0, None, g))
    theirs_ms = draw(lambda: torch.multinomial(logits.softmax(-1), 1, generator=g))
    result["sampling_draw"] = {"rows": 5, "vocabulary": 51865, "ours_ms": round(ours_ms, 3), "torch_multinomial_ms": round(theirs_ms, 3),
                               "ratio": round(ours_ms / theirs_ms, 3)}  # fmt: skip

    # the fallback on one window: every temperature, best_of 5 samples each
    wave = waves[0]
    suppress = Suppress(text_tok)
    (theirs_s, theirs), (ours_s, ours) = side_by_side(
        [lambda: whisper.transcribe(ref, wave, language="en", without_timestamps=True, condition_on_previous_text=False, best_of=5,
                                    fp16=False, verbose=None, sample_len=args.sample_len),  # (the same token limit on both sides)
         lambda: decode_with_fallback(model, text_tok, audio_tok, [wave], args.sample_len, prompt, suppress=suppress)], args.repeats)  # fmt: skip
    temperatures = {"ours": ours[0]["temperature"],
                    "openai_whisper": max(s["temperature"] for s in theirs["segments"]) if theirs["segments"] else None}  # fmt: skip
    result["fallback"] = {"sample_len": args.sample_len, "ours_s": round(ours_s, 3), "openai_whisper_s": round(theirs_s, 3),
                          "ratio": round(ours_s / theirs_s, 3), "temperature": temperatures,
                          "same_work": temperatures["ours"] == temperatures["openai_whisper"]}  # (samples differ: each side's own draws)
    # word timestamps for one 30 s window: the alignment pass, attention normalisation, median filter and DTW (log-mel and
    # encoder included on both sides; openai-whisper's DTW is compiled by numba, called once first so that compiling is not timed)
    from whisper.timing import find_alignment as their_alignment
    from whisper.tokenizer import get_tokenizer

    from recipes.word_timing import find_alignment

    tokenizer = get_tokenizer(True, language="en", task="transcribe")
    n = min(args.align_tokens, args.text - len(tokenizer.sot_sequence) - 2)
    text = text_tok.encode_ids(" ".join(["the quick brown fox jumps over the lazy dog, said she."] * 40)).tolist()[:n]
    frames = len(wave) // 160
    align_theirs = lambda: their_alignment(ref, tokenizer, text, whisper.log_mel_spectrogram(whisper.pad_or_trim(torch.from_numpy(wave))), frames)  # noqa: E731
    align_ours = lambda: find_alignment(model, text_tok, model.encode_memory({"audio": audio_tok.encode_batch([wave])}),  # noqa: E731
                                        list(tokenizer.sot_sequence), text, frames, "en")
    align_theirs()
    (theirs_s, theirs), (ours_s, ours) = side_by_side([align_theirs, align_ours], args.repeats)
    same = [(w["word"], w["start"], w["end"]) for w in ours] == [(t.word, t.start, t.end) for t in theirs]
    if not same:
        raise SystemExit("whisper_decode: error: word alignment gave other words or times than openai-whisper's on the same weights and audio")
    result["word_alignment"] = {"tokens": n, "words": len(ours), "ours_s": round(ours_s, 4), "openai_whisper_s": round(theirs_s, 4),
                                "ratio": round(ours_s / theirs_s, 3), "same_words_and_times": same}  # fmt: skip
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
