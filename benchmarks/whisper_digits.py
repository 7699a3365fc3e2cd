"""whisper_digits word error rate on held-out voices and the training time on this machine.

    python benchmarks/whisper_digits.py [key=value ...]

Synthesizes the corpus once (cached under ~/.cache/tokenizers-mm/whisper_digits), trains the
recipe with its defaults plus overrides, evaluating only at the end on every test utterance, and
prints the WER, the time the recipe's run takes (training and the evaluation at its end, the corpus
made before the clock starts) and the goal: <= 5% within 15 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from recipes.runs import make_config  # noqa: E402
from recipes.train import read_metrics  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import recipe_overrides  # noqa: E402  (benchmarks/timing.py)


def main():
    _, overrides = recipe_overrides(argparse.ArgumentParser(description=__doc__.splitlines()[0]), {"eval_every": "1000000", "ckpt_every": "1000000"})
    with tempfile.TemporaryDirectory() as d:
        _, module, cfg = make_config("whisper_digits", [f"run_dir={d}", *overrides])
        cfg.eval_utterances = cfg.n_test
        module.build_data(cfg)  # synthesize (or reuse) the corpus before the clock starts
        t0 = time.perf_counter()
        metrics = module.main(cfg)
        total = time.perf_counter() - t0
        rows = [r for r in read_metrics(d) if "tokens_per_s" in r]
    result = {"benchmark": "whisper_digits", "test_wer": metrics["val_wer"], "test_utterances": cfg.n_test, "unseen_voices": True,
              "train_and_eval_seconds": total, "steps": cfg.max_steps, "last_train_loss": rows[-1]["loss"] if rows else None,
              "goal": "WER <= 0.05 within 900 s", "met": metrics["val_wer"] <= 0.05 and total <= 900}  # fmt: skip
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
