"""BPE speed against the peers, same process, same text: encode throughput (MB/s of UTF-8)
single-thread and batched on all cores, with GPT-2's ranks, and the time to train a 4,096-token
vocabulary on 1 MB of text.

    python benchmarks/bpe_speed.py [--data PATH] [--repeats 7] [--train-only]

Peers: tiktoken (`Encoding.encode_to_numpy`, the same output as ours: an array, no Python list;
batched, what its `encode_batch` does — a thread pool over the texts — with `encode_to_numpy` in
place of `encode`, so both sides return arrays) and Hugging Face `tokenizers` (ByteLevel
BPE from GPT-2's vocab.json + merges.txt; `BpeTrainer` with the ByteLevel pre-tokenizer).
Each figure is the best of `repeats` runs, the contenders interleaved. Goal: ratios >= 1.0
for throughput (ours / peer), <= 1.0 for training time.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/timing.py, when imported from elsewhere too

from tokenizers_mm import ENDOFTEXT, BPETokenizer  # noqa: E402
from tokenizers_mm.text_bpe import train_ranks, write_gpt2_files  # noqa: E402
from timing import add_corpus_argument, corpus_path  # noqa: E402  (benchmarks/timing.py)


def best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def numpy_batch(tk, texts: list[str], threads: int) -> list:
    """tiktoken's `encode_batch` (a thread pool mapping one encode call per text), returning arrays
    as ours does: `encode_to_numpy` in place of `encode`."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(tk.encode_to_numpy, texts))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_corpus_argument(ap)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--train-only", action="store_true", help="only the training rows (a fresh process: the encoding rows' "
                    "thread pools, run first, slow both trainers after them)")  # fmt: skip
    args = ap.parse_args()
    data = corpus_path(ap, args.data)
    import tiktoken
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if data:
        text = Path(data).read_text(encoding="utf-8")
    else:
        from recipes.gpt_char import default_corpus

        text = default_corpus()
    mb = len(text.encode()) / 1e6
    lines = text.splitlines(keepends=True)
    per_doc = -(-len(lines) // 64)
    docs = ["".join(lines[i : i + per_doc]) for i in range(0, len(lines), per_doc)]  # 64 documents
    threads = os.cpu_count() or 1
    ranks_path = Path(importlib.util.find_spec("whisper").submodule_search_locations[0]) / "assets" / "gpt2.tiktoken"
    ours = BPETokenizer.from_tiktoken_file(ranks_path)
    tk = tiktoken.Encoding("gpt2", pat_str=ours.pattern, mergeable_ranks=ours.ranks, special_tokens={ENDOFTEXT: 50256})
    with tempfile.TemporaryDirectory() as d:
        vocab, merges = write_gpt2_files(ours.ranks, ours.specials, d)
        hf = Tokenizer(models.BPE.from_file(str(vocab), str(merges)))
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    assert ours.encode_ids(text).tolist() == tk.encode(text) == hf.encode(text).ids  # same ids before timing anything

    contenders = {
        "single": {"ours": lambda: ours.encode_ids(text), "tiktoken": lambda: tk.encode_to_numpy(text), "hf_tokenizers": lambda: hf.encode(text).ids},
        "batched, 64 documents": {
            "ours": lambda: ours.encode_batch(docs, num_threads=threads),
            "tiktoken": lambda: numpy_batch(tk, docs, threads),
            "hf_tokenizers": lambda: hf.encode_batch(docs),
        },
        "batched, one text per line": {
            "ours": lambda: ours.encode_batch(lines, num_threads=threads),
            "tiktoken": lambda: numpy_batch(tk, lines, threads),
            "hf_tokenizers": lambda: hf.encode_batch(lines),
        },
    }
    secs = {mode: {k: float("inf") for k in fns} for mode, fns in contenders.items()}
    for _ in range(0 if args.train_only else args.repeats):  # interleave the contenders to spread machine noise
        for mode, fns in contenders.items():
            for k, fn in fns.items():
                secs[mode][k] = min(secs[mode][k], best(fn, 1))
    rows = []
    for mode in () if args.train_only else contenders:
        mbs = {k: mb / s for k, s in secs[mode].items()}
        rows.append({"figure": f"encode MB/s, {mode}" + (f" ({threads} threads)" if mode.startswith("batched") else ""), **mbs,
                     "ratio_vs_tiktoken": mbs["ours"] / mbs["tiktoken"], "ratio_vs_hf": mbs["ours"] / mbs["hf_tokenizers"],
                     "goal": "ratio >= 1.0"})  # fmt: skip

    train_text = text[:1_000_000]

    def hf_train():
        t = Tokenizer(models.BPE())
        t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        trainer = trainers.BpeTrainer(vocab_size=4096, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
                                      special_tokens=[ENDOFTEXT])  # fmt: skip
        t.train_from_iterator(train_text.splitlines(keepends=True), trainer)

    def our_train():
        BPETokenizer.train(train_text.splitlines(keepends=True), vocab_size=4096)

    def our_train_unjoined():  # train_ranks as BPETokenizer.train calls it, but one text per trainer item
        train_ranks(train_text.splitlines(keepends=True), 4096 - 1, ours.pattern, specials=(ENDOFTEXT,), block=0)

    t_ours = t_hf = t_unjoined = float("inf")
    for _ in range(args.repeats):
        t_ours, t_hf, t_unjoined = min(t_ours, best(our_train, 1)), min(t_hf, best(hf_train, 1)), min(t_unjoined, best(our_train_unjoined, 1))
    train_mb = f"{len(train_text.encode()) / 1e6:.2g} MB"
    rows.append({"figure": f"train 4096-token vocab on {train_mb}, seconds", "ours": t_ours, "hf_tokenizers": t_hf,
                 "ratio_vs_hf": t_ours / t_hf, "goal": "ratio <= 1.0"})  # fmt: skip
    rows.append({"figure": f"train on {train_mb}, ours with one line per trainer item (no blocks), seconds", "ours": t_unjoined,
                 "hf_tokenizers": t_hf, "ratio_vs_hf": t_unjoined / t_hf, "goal": "— (what the blocks save)"})  # fmt: skip
    print(json.dumps({"benchmark": "byte-level BPE", "corpus": data or "embedded", "text_mb": mb, "rows": rows}, indent=2))
    for r in rows:
        figs = ", ".join(f"{k} {r[k]:.3f}" for k in ("ours", "tiktoken", "hf_tokenizers") if k in r)
        ratios = ", ".join(f"{k} {r[k]:.2f}" for k in r if k.startswith("ratio"))
        print(f"{r['figure']:56s} {figs}  |  {ratios}  (goal {r['goal']})")


if __name__ == "__main__":
    main()
