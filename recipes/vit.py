"""Shared pieces of the ViT recipes (vit_digits, vit_mnist, vit_folder): config, batched
augmentation, the classifier model, the accuracy metric, prediction and the training entry.

Images travel as float tensors (C, H, W) in [0, 1]; a training batch is augmented as a whole
(random affine by `affine_grid` / `grid_sample`, optional mixup / cutmix through timm), then
normalised and cut into patches by the image tokenizer in one call.
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate.utils import set_seed
from torch.utils.data import Dataset

from models import HeadConfig, ModalityConfig, ModelConfig, MultimodalTransformer, TrunkConfig
from tokenizers_mm import ImageTokenizer, load_tokenizer
from tokenizers_mm.base import write_text_atomic

from .config import ConfigError, TrainConfig, launched_processes
from .folders import save_split
from .runs import load_trained, resolve_run_dir, resumed_architecture, save_run_info
from .train import EvalBatches, accuracy, train


@dataclass
class Config(TrainConfig):
    image_size: int = 8  # pixels (square); images are resized to it
    patch_size: int = 2
    channels: int = 1
    dim: int = 64
    depth: int = 4
    num_heads: int = 4
    mlp_ratio: float = 2.0
    dropout: float = 0.0
    pool: str = "cls"  # "cls" (a learned CLS token) or "mean" (average of the patch tokens)
    flash: bool = True  # fused SDPA attention; False: the manual path (faster on CPU for very short sequences)
    label_smoothing: float = 0.1
    augment: bool = True
    rotate: float = 10.0  # degrees, random in [-rotate, rotate]
    translate: float = 0.125  # fraction of the image size, random shift in each direction
    scale: float = 0.1  # random zoom in [1 - scale, 1 + scale]
    mixup: float = 0.0  # mixup alpha (0 = off), applied through timm.data.Mixup
    cutmix: float = 0.0  # cutmix alpha (0 = off)
    batch_size: int = 128
    lr: float = 2e-3
    min_lr: float = 1e-5
    warmup_steps: int = 200
    weight_decay: float = 0.05
    beta2: float = 0.999
    eval_every: int = 500
    ckpt_every: int = 1000
    NOT_USED = ("eval_batches",)  # an evaluation reads the whole held-out set

    def check(self) -> None:
        super().check()
        if self.pool not in ("cls", "mean"):
            raise ConfigError(f"pool={self.pool!r}: expected cls or mean")
        if self.image_size % self.patch_size:  # (here, before a folder's every image is decoded)
            raise ConfigError(f"image_size={self.image_size} must be a multiple of patch_size={self.patch_size}")
        if self.channels not in (1, 3):  # image files are read as greyscale or RGB (alpha dropped): tokenizers_mm.image.to_tensor
            raise ConfigError(f"channels={self.channels}: expected 1 (greyscale) or 3 (RGB; an alpha channel is dropped)")

    def check_launch(self) -> None:
        super().check_launch()
        per = self.grad_accum * launched_processes()
        if (self.mixup > 0 or self.cutmix > 0) and self.batch_size % (2 * per):  # timm's Mixup mixes each image with another
            raise ConfigError(f"mixup / cutmix need an even batch per process and micro-step: batch_size={self.batch_size} / "
                              f"(grad_accum * processes = {self.grad_accum} * {per // self.grad_accum}) is {self.batch_size / per:g}; "
                              f"pass e.g. batch_size={-(-self.batch_size // (2 * per)) * 2 * per}")  # fmt: skip


class ImageSet(Dataset):
    """Images (N, C, H, W) float in [0, 1] with integer labels (N,)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.images[i], self.labels[i]


def random_affine(x: torch.Tensor, rotate: float, translate: float, scale: float) -> torch.Tensor:
    """Per-image random rotation / shift / zoom of a batch (B, C, H, W), in one grid_sample."""
    B = x.shape[0]
    angle = (torch.rand(B) * 2 - 1) * math.radians(rotate)
    zoom = 1 + (torch.rand(B) * 2 - 1) * scale
    shift = (torch.rand(B, 2) * 2 - 1) * translate * 2  # affine_grid coordinates span [-1, 1]
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)  # (B, 2, 3)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


class Collate:
    """(image, label) pairs → (inputs, targets); augments when `train`."""

    def __init__(self, tokenizer: ImageTokenizer, cfg: Config, num_classes: int, train: bool):
        self.tok, self.cfg, self.train = tokenizer, cfg, train
        self.mixup = None
        if train and (cfg.mixup > 0 or cfg.cutmix > 0):
            from timm.data import Mixup

            # note: no smoothing here: the head smooths (soft targets too), so labels are smoothed once, as timm trains
            self.mixup = Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, label_smoothing=0.0, num_classes=num_classes)

    def __call__(self, pairs):
        x = torch.stack([p[0] for p in pairs])
        y = torch.as_tensor([int(p[1]) for p in pairs])
        if self.train and self.cfg.augment:
            x = random_affine(x, self.cfg.rotate, self.cfg.translate, self.cfg.scale)
        if self.mixup is not None:
            if len(y) % 2:
                raise ValueError("mixup / cutmix need an even per-process batch size")
            x, y = self.mixup(x, y)  # y becomes soft targets (B, K)
        x = (x - self.tok._mean) / self.tok._std
        return {"image": self.tok.tokens_batch(x)}, {"cls": y}


def make_tokenizer(cfg: Config, mean, std) -> ImageTokenizer:
    return ImageTokenizer(image_size=cfg.image_size, patch_size=cfg.patch_size, channels=cfg.channels, mean=mean, std=std,
                          cls_token=cfg.pool == "cls")  # fmt: skip


def build_model(cfg: Config, tokenizer: ImageTokenizer, num_classes: int) -> MultimodalTransformer:
    trunk = TrunkConfig(dim=cfg.dim, depth=cfg.depth, num_heads=cfg.num_heads, mlp_ratio=cfg.mlp_ratio, dropout=cfg.dropout,
                        mode="encoder", norm_eps=1e-6, flash=cfg.flash)  # fmt: skip
    head = HeadConfig("classify", "image", num_outputs=num_classes, pool=cfg.pool, label_smoothing=cfg.label_smoothing)
    return MultimodalTransformer(ModelConfig(trunk, {"image": ModalityConfig.from_tokenizer(tokenizer)}, {"cls": head}, encoder_inputs=["image"]))


def make_evaluate(test_set: ImageSet, collate: Collate, batch_size: int = 256):
    """Accuracy over the whole test set, its batches made as they are first read (`EvalBatches`)."""
    batches = EvalBatches(test_set, collate, batch_size)
    return lambda model, accelerator: accuracy(model, accelerator, batches)


def mean_std(images: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of (N, C, H, W) training images, for normalisation."""
    return images.mean(dim=(0, 2, 3)).tolist(), images.std(dim=(0, 2, 3)).clamp(min=1e-3).tolist()


def run(cfg: Config, recipe: str, build_data, resume: bool = False, build=None) -> dict:
    """build_data(cfg) -> (train set, test set, class names, (mean, std)). Trains, prints accuracy.
    `build(cfg, tokenizer, num_classes)` replaces the default model builder (e.g. timm weights)."""
    run_dir = resolve_run_dir(cfg, recipe)
    train_set, test_set, classes, (mean, std) = build_data(cfg)
    if resume:
        same_classes(run_dir, classes)
        tokenizer = load_tokenizer(run_dir / "tokenizers" / "image")
    else:
        tokenizer = make_tokenizer(cfg, mean, std)
    set_seed(cfg.seed)
    model = (resume and resumed_architecture(run_dir, {"image": tokenizer})) or (build or build_model)(cfg, tokenizer, len(classes))
    if not resume:
        def files():
            tokenizer.save(run_dir / "tokenizers" / "image")
            write_text_atomic(run_dir / "classes.txt", "\n".join(classes) + "\n")

        save_run_info(run_dir, recipe, cfg, files)
    save_split(run_dir, train_set, test_set)  # (a split drawn here: a new run's, or one resumed before its first checkpoint)
    print(f"{recipe}: {len(train_set):,} training / {len(test_set):,} test images, {len(classes)} classes, "
          f"{model.params_text()}, run dir {run_dir}")  # fmt: skip
    evaluate = make_evaluate(test_set, Collate(tokenizer, cfg, len(classes), train=False))
    metrics = train(cfg, model, train_set, Collate(tokenizer, cfg, len(classes), train=True), evaluate, run_dir, resume=resume)
    print(f"test accuracy {metrics['val_accuracy'] * 100:.2f}%")
    return metrics


def evaluate_run(run_dir, build_data, device=None) -> dict:
    from .runs import load_for_eval

    cfg, model, toks, accelerator = load_for_eval(run_dir, device)
    _, test_set, classes, _ = build_data(cfg)
    same_classes(run_dir, classes)
    return make_evaluate(test_set, Collate(toks["image"], cfg, len(classes), train=False))(model, accelerator)


# -- using a trained classifier -------------------------------------------------------------------
def read_classes(run_dir) -> list[str]:
    return (Path(run_dir) / "classes.txt").read_text().splitlines()


def same_classes(run_dir, classes: list[str]) -> None:
    """Refuse data whose classes are not the run's (classes.txt): label ids would shift under the
    trained head (a renamed class folder: every later class one off) and it would learn or score
    the wrong classes."""
    known = read_classes(run_dir)
    if classes != known:
        gone, new = [c for c in known if c not in classes], [c for c in classes if c not in known]
        what = "; ".join(x for x in (f"not in the data: {', '.join(gone[:5])}" if gone else "",
                                      f"new in the data: {', '.join(new[:5])}" if new else "") if x)  # fmt: skip
        raise ValueError(f"the data's {len(classes)} classes are not the run's {len(known)} ({Path(run_dir) / 'classes.txt'}; "
                         f"{what or 'the same names in another order'}): resume and evaluate read the classes the run was trained on")  # fmt: skip


@torch.no_grad()
def predict(run_dir, paths: list[str] | str | Path, top_k: int = 3, device=None, batch_size: int = 64, progress: bool = False) -> list[dict]:
    """Classify images with a run's last checkpoint on `device` (None = the CPU), `batch_size` at a
    time: top-k labels and probabilities for each. `paths`: a list of paths, or one. A path may be
    a folder: its image files (any depth, sorted; other files passed over, as an image folder
    dataset does) are classified in turn; a file that is not an image, or a folder without one, is
    an error naming it."""
    from tqdm.auto import tqdm

    from tokenizers_mm import collate, open_image

    from .folders import image_files

    files = []
    for path in map(Path, [paths] if isinstance(paths, (str, os.PathLike)) else paths):  # (a string is one path, not its letters)
        found = image_files(path) if path.is_dir() else [path]
        if not found:
            raise ValueError(f"image folder {path}: no image files in it (extensions PIL reads: .png, .jpg, ...)")
        files += found
    model, toks = load_trained(run_dir, device)
    device = model.device
    tok, classes = toks["image"], read_classes(run_dir)
    results = []
    for start in tqdm(range(0, len(files), batch_size), unit="batch", desc="predict", disable=not progress or None, leave=False):
        part = files[start : start + batch_size]
        batch = collate([tok.encode(open_image(f), name=str(f)) for f in part]).to(device)
        probs, ids = model({"image": batch}).logits["cls"].float().softmax(-1).topk(min(top_k, len(classes)))
        for f, p, i in zip(part, probs.tolist(), ids.tolist()):
            results.append({"file": str(f), "top": [{"label": classes[j], "prob": round(q, 4)} for q, j in zip(p, i)]})
    return results


@torch.no_grad()
def cls_attention(model: MultimodalTransformer, batch) -> torch.Tensor:
    """Attention of the first token (CLS) to every token in the last encoder block, averaged over
    heads: (B, N). Reads the block's input through a forward pre-hook (visualisation only)."""
    block = model.encoder.blocks[-1]
    seen = {}
    handle = block.attn.register_forward_pre_hook(lambda mod, args: seen.setdefault("x", args[0]))
    try:
        model({"image": batch})
    finally:
        handle.remove()
    x, attn = seen["x"], block.attn
    B, N, C = x.shape
    q, k, _ = attn.qkv(x).split(C, dim=2)
    q = q.view(B, N, attn.num_heads, attn.head_dim).transpose(1, 2)[:, :, :1]  # (B, H, 1, hs)
    k = k.view(B, N, attn.num_heads, attn.head_dim).transpose(1, 2)  # (B, H, N, hs)
    att = (q @ k.transpose(-2, -1) / math.sqrt(attn.head_dim)).softmax(-1)  # (B, H, 1, hs) @ (B, H, hs, N) -> (B, H, 1, N)
    return att.mean(1)[:, 0]  # (B, N)


def show(image_path, out_path, run_dir=None, image_size: int = 224, patch_size: int = 16) -> Path:
    """PNG of the image with its patch grid and token indices; with a run directory, a second
    panel shows where the CLS token attends (last block, averaged over heads)."""
    from tokenizers_mm import collate, open_image

    from .plots import save_png, subplots

    img = open_image(image_path)
    model = None
    if run_dir is not None:
        model, toks = load_trained(run_dir)
        tok = toks["image"]
    else:
        tok = ImageTokenizer(image_size=image_size, patch_size=patch_size, channels=3, cls_token=False)
    ts = tok.encode(img, name=str(image_path))
    pixels = tok.decode(ts).clamp(0, 1).permute(1, 2, 0).numpy()
    gh, gw = tok.grid
    p = tok.patch_size
    panels = 2 if model is not None and tok.cls_token else 1
    if model is not None and not tok.cls_token:
        print(f"show: {run_dir} pools by mean (no class token): no CLS attention panel", file=sys.stderr)
    fig, axes = subplots(1, panels, figsize=(5 * panels, 5), squeeze=False)
    ax = axes[0, 0]
    ax.imshow(pixels.squeeze(), cmap="gray" if tok.channels == 1 else None, extent=(0, gw * p, gh * p, 0))
    for r in range(gh + 1):
        ax.axhline(r * p, color="yellow", lw=0.6)
    for c in range(gw + 1):
        ax.axvline(c * p, color="yellow", lw=0.6)
    if gh * gw <= 400:
        for i in range(gh * gw):
            ax.text((i % gw + 0.5) * p, (i // gw + 0.5) * p, str(i + tok.prefix_tokens), ha="center", va="center", fontsize=7,
                    color="white", bbox=dict(boxstyle="round,pad=0.1", fc="black", alpha=0.5, lw=0))  # fmt: skip
    ax.set_title(f"{gh}×{gw} patches of {p}×{p} px = {gh * gw} tokens" + (" + CLS" if tok.cls_token else ""))
    ax.axis("off")
    if panels == 2:
        att = cls_attention(model, collate([ts]))[0, tok.prefix_tokens :].reshape(gh, gw)
        ax = axes[0, 1]
        ax.imshow(pixels.squeeze(), cmap="gray" if tok.channels == 1 else None, extent=(0, gw * p, gh * p, 0))
        ax.imshow(att.numpy(), cmap="inferno", alpha=0.6, extent=(0, gw * p, gh * p, 0))
        ax.set_title("CLS attention, last block (mean over heads)")
        ax.axis("off")
    return save_png(fig, out_path, dpi=120)
