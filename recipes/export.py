"""`mmtok export RUN_DIR OUT`: a trained run's last checkpoint as the reference library's model folder.

- a text language model (gpt_char, gpt_bpe) → a Hugging Face folder: `GPT2LMHeadModel`
  (config.json + model.safetensors) and the run's tokenizer as tokenizer.json, so
  `AutoModelForCausalLM.from_pretrained(OUT)` and `AutoTokenizer.from_pretrained(OUT)` give the
  same ids and logits;
- an image classifier (vit_digits, vit_mnist, vit_folder) → a timm folder: `VisionTransformer`
  weights, its model arguments and preprocessing (mean, std, size, interpolation, class names),
  for `timm.create_model("local-dir:OUT", pretrained=True)`.

The folder is written beside OUT and renamed into place, so an interrupted export leaves nothing
half-written; an OUT that exists and is not empty is refused. After writing, the export loads the
folder with the reference library (timm always; transformers when installed) and compares its
outputs with ours on random inputs (the largest difference is printed; one past float32 rounding
is refused); a tokenizer.json must encode a probe text as the run's tokenizer does.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file

from models import gpt2_export, timm_vit_export
from tokenizers_mm import TokenSet, collate
from tokenizers_mm.hf import save_hf

from .runs import load_run_info, load_trained
from .vit import read_classes

# the reference's logits may differ from ours by float32 rounding, which grows with their size (GPT-2's reach ±100s)
TOLERANCE, RELATIVE_TOLERANCE = 1e-4, 2e-6  # allowed: max(TOLERANCE, RELATIVE_TOLERANCE × largest |logit|)


def kind_of(model) -> str:
    """"gpt2" or "timm": which reference a model exports to (decided by its modalities and head)."""
    c = model.config
    if list(c.modalities) == ["text"] and c.decoder_inputs == ["text"] and not c.encoder_inputs:
        return "gpt2"
    if list(c.modalities) == ["image"] and c.encoder_inputs == ["image"] and not c.decoder_inputs:
        return "timm"
    raise ValueError(f"export: a model reading {', '.join(c.modalities)} has no reference format here; text language models "
                     "(gpt_char, gpt_bpe) export to Hugging Face GPT-2, image classifiers (vit_*) to timm")  # fmt: skip


def write_model(folder: Path, config: dict, sd: dict) -> None:
    """config.json + model.safetensors, as transformers' and timm's folders hold them."""
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    save_file(sd, str(folder / "model.safetensors"), metadata={"format": "pt"})


def write_gpt2(model, tokenizers, folder: Path) -> None:
    write_model(folder, *gpt2_export(model, tokenizers["text"].special_ids))
    save_hf(tokenizers["text"], folder)


def write_timm(model, tokenizers, folder: Path, run_dir: Path) -> None:
    try:
        labels = read_classes(run_dir)  # the ViT recipes' class names
    except FileNotFoundError:
        labels = None
    write_model(folder, *timm_vit_export(model, tokenizers["image"], labels))


@torch.no_grad()
def check_gpt2(model, tokenizers, folder: Path) -> float | None:
    """Largest |logit difference| between transformers' model loaded from `folder` and ours; None without transformers."""
    try:
        from transformers import GPT2LMHeadModel
    except ImportError:
        return None
    ref = GPT2LMHeadModel.from_pretrained(folder).eval()
    m = model.config.modalities["text"]
    ids = torch.randint(0, m.vocab_size, (2, min(m.max_positions, 32)), generator=torch.Generator().manual_seed(0))
    ours = model({"text": collate([TokenSet("text", ids=row) for row in ids])}).logits
    return difference(next(iter(ours.values())), ref(ids).logits)


def difference(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    """Largest |ours - theirs|, refused past the tolerance for logits of this size."""
    found = float((ours - theirs).abs().max())
    allowed = max(TOLERANCE, RELATIVE_TOLERANCE * float(ours.abs().max()))
    if not found <= allowed:  # note: NaN fails too
        raise ValueError(f"export: the exported model's outputs differ from the run's by {found:.3g} (allowed {allowed:.3g})")
    return found


@torch.no_grad()
def check_timm(model, tokenizers, folder: Path) -> float:
    import timm

    ref = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    tok = tokenizers["image"]
    x = torch.randn(2, tok.channels, *tok.image_size, generator=torch.Generator().manual_seed(0))  # preprocessed pixels
    ours = model({"image": tok.tokens_batch(x)}).logits
    return difference(next(iter(ours.values())), ref(x))


def export(run_dir, out) -> dict:
    """Write the run's last checkpoint to `out` in its reference format; returns what was written
    (format, folder, files, the checked difference)."""
    run_dir, out = Path(run_dir), Path(out)
    if out.is_symlink():
        raise FileExistsError(f"export: {out} is a symbolic link; give the path of a new folder")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"export: {out} exists and is not an empty folder; choose a new one")
    recipe = load_run_info(run_dir)[0]
    model, tokenizers = load_trained(run_dir)
    model = model.float().eval()
    kind = kind_of(model)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))  # one of its own per export
    try:
        if kind == "gpt2":
            write_gpt2(model, tokenizers, tmp)
            found = check_gpt2(model, tokenizers, tmp)
        else:
            write_timm(model, tokenizers, tmp, run_dir)
            found = check_timm(model, tokenizers, tmp)
        if out.exists():
            out.rmdir()  # empty (checked above)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"recipe": recipe, "format": "transformers GPT2LMHeadModel" if kind == "gpt2" else "timm VisionTransformer", "folder": str(out),
            "files": sorted(p.name for p in out.iterdir()), "max_difference": found}  # fmt: skip
