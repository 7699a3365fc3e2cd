"""Whisper export at a real model size: a run on Whisper-tiny-sized weights (random, openai-whisper's
own model class and checkpoint format) exported as a Hugging Face Whisper folder and as an
openai-whisper checkpoint; prints each export's time and the largest |logit difference| the export
measured against the reference library that loaded it back.

    python benchmarks/whisper_export.py [--width 384 --heads 6 --layers 4 --vocab 51865 --text 448]

Defaults are Whisper tiny's sizes (37.2M parameters, its sinusoidal positions a buffer); nothing is downloaded. The run reads two noise
clips (max_steps=0: the weights as they are), so the figures measure the export, not a model.
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


def random_whisper(path: Path, width: int, heads: int, layers: int, vocab: int, text: int, half: bool = False):
    """openai-whisper's own model at these sizes (80 mel bins, 1,500 audio positions; `layers` blocks
    each side) with seeded random weights, saved at `path` as openai-whisper saves a checkpoint
    (`dims` + `model_state_dict`, in fp16 with `half`); returns the model, in fp32."""
    import dataclasses

    import torch
    import whisper.model as wm

    dims = wm.ModelDimensions(n_mels=80, n_audio_ctx=1500, n_audio_state=width, n_audio_head=heads, n_audio_layer=layers, n_vocab=vocab,
                              n_text_ctx=text, n_text_state=width, n_text_head=heads, n_text_layer=layers)  # fmt: skip
    torch.manual_seed(0)
    model = wm.Whisper(dims)
    torch.nn.init.normal_(model.decoder.positional_embedding, std=0.02)  # note: openai-whisper leaves it torch.empty
    torch.save({"dims": dataclasses.asdict(dims), "model_state_dict": (model.half() if half else model).state_dict()}, path)
    return model.float()


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--width", type=int, default=384)
    ap.add_argument("--heads", type=int, default=6)
    ap.add_argument("--layers", type=int, default=4, help="encoder and decoder blocks each")
    ap.add_argument("--vocab", type=int, default=51865, help="51865 multilingual, 51864 English-only")
    ap.add_argument("--text", type=int, default=448, help="decoder positions")
    args = ap.parse_args(argv)

    import soundfile as sf

    from recipes import whisper_folder
    from recipes.export import export

    with tempfile.TemporaryDirectory(prefix="whisper_export.") as tmp:  # a tiny-sized model three times over: not kept
        root = Path(tmp)
        model = random_whisper(root / "weights.pt", args.width, args.heads, args.layers, args.vocab, args.text, half=True)
        data = root / "data"
        data.mkdir()
        rng = np.random.default_rng(0)
        for i in range(2):
            sf.write(data / f"{i}.wav", (rng.normal(0, 0.1, 16000 * 2)).astype(np.float32), 16000)
        (data / "metadata.csv").write_text("file_name,transcription\n0.wav,one two\n1.wav,three\n")
        run = root / "run"
        whisper_folder.main(whisper_folder.Config(data=str(data), init_from=str(root / "weights.pt"), lowercase=False, run_dir=str(run),
                                                  val_fraction=0.5, max_steps=0, batch_size=1, eval_utterances=1, cpu=True))  # fmt: skip
        result = {"parameters_M": round(sum(p.numel() for p in model.parameters()) / 1e6, 1)}
        for name, out in (("hf_folder", root / "hf"), ("openai_pt", root / "out.pt")):
            start = time.perf_counter()
            r = export(run, out)
            result[name] = {"seconds": round(time.perf_counter() - start, 2), "max_difference": r["max_difference"], "format": r["format"]}
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
