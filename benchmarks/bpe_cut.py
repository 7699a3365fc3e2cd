"""What cutting the training text costs BPE: tokens of a corpus encoded with a vocabulary trained on
the whole text, on it cut by `training_texts` (where every piece ends anyway), and on it cut at every
line (the recipe's cut before 2026-12-06). Fewer tokens is better; the first two must be equal.

    python benchmarks/bpe_cut.py [--vocab 1000] [--data ../shared/data/tinyshakespeare.txt]

Corpora: this project's own code (indentation: what cutting at lines loses) and the first 300 KB of
tinyshakespeare (when present). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tokenizers_mm import BPETokenizer  # noqa: E402
from tokenizers_mm.text_bpe import training_texts  # noqa: E402


def main() -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vocab", type=int, default=1000)
    ap.add_argument("--data", default=None, help="tinyshakespeare.txt (default: ../shared/data/ beside the repository, its row left out "
                    "when absent)")  # fmt: skip
    args = ap.parse_args()
    if args.data is not None and not Path(args.data).is_file():
        ap.error(f"--data {args.data}: no such file")
    args.data = args.data or str(ROOT.parent / "shared" / "data" / "tinyshakespeare.txt")
    corpora = {"project code (recipes/train.py, recipes/cli.py, models/transformer.py)":
               "".join((ROOT / f).read_text() for f in ("recipes/train.py", "recipes/cli.py", "models/transformer.py"))}  # fmt: skip
    if Path(args.data).is_file():
        corpora["tinyshakespeare, first 300 KB"] = Path(args.data).read_text(encoding="utf-8")[:300_000]
    rows = []
    for name, text in corpora.items():
        cuts = {"whole text": [text], "training_texts": training_texts(text), "every line": text.splitlines(keepends=True)}
        tokens = {cut: len(BPETokenizer.train(parts, args.vocab).encode_ids(text, disallowed_special=())) for cut, parts in cuts.items()}
        rows.append({"corpus": name, "vocab": args.vocab, "tokens": tokens,
                     "every_line_over_training_texts": tokens["every line"] / tokens["training_texts"]})  # fmt: skip
    out = {"benchmark": "BPE training text cuts: tokens of the corpus (fewer is better)", "rows": rows}
    print(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
