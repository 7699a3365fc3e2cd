"""gpt_char on tiny shakespeare with nanoGPT's published CPU configuration; prints the validation
loss against nanoGPT's figure (1.88) and the run's time (training and its evaluations).

    python benchmarks/gpt_char_shakespeare.py [--data PATH] [key=value ...]
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import recipe_overrides  # noqa: E402  (benchmarks/timing.py)

NANOGPT_VAL_LOSS = 1.88  # nanoGPT README, CPU run: 4 layers, 4 heads, width 128, context 64, batch 12, 2000 iters


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "tinyshakespeare.txt"))
    args, overrides = recipe_overrides(ap, {"sample_tokens": "0"})
    if not Path(args.data).exists():
        sys.exit(f"{args.data} is absent: pass --data PATH to tiny shakespeare")
    with tempfile.TemporaryDirectory() as d:
        _, module, cfg = make_config("gpt_char_shakespeare", [f"data={args.data}", f"run_dir={d}", *overrides])
        t0 = time.perf_counter()
        metrics = module.main(cfg)
        seconds = time.perf_counter() - t0
    result = {"benchmark": "gpt_char tiny shakespeare, nanoGPT CPU config", "val_loss": metrics["val_loss"],
              "goal": f"<= {NANOGPT_VAL_LOSS} (nanoGPT)", "met": metrics["val_loss"] <= NANOGPT_VAL_LOSS,
              "train_and_eval_seconds": seconds, "steps": cfg.max_steps}  # fmt: skip
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
