"""vit_folder: fine-tune a ViT on your own folder of images (Hugging Face `imagefolder` layout).

Layouts (as `datasets`' imagefolder): class sub-folders `PATH/<label>/*.png`; or split folders
`PATH/train/<label>/...` with `PATH/validation/` (or `valid/`, `val/`, `dev/`, `test/`); or a `metadata.csv` (or
`metadata.jsonl`) with `file_name,label` columns; or a Hugging Face dataset (`save_to_disk`'s folder, Parquet files; its Image and
ClassLabel / `label` columns; recipes/folders.py). Without a validation split, `val_fraction` of the images are held out
(stratified, fixed seed). Every image is decoded once when the run starts: a corrupt, truncated,
empty or non-image file stops the run with a message naming it, or is skipped and counted with
`skip_bad_samples=true`; training never dies mid-epoch. Augmentation: RandAugment (torchvision),
random affine, optional mixup / cutmix (timm). Start from timm weights held locally with
`timm_model=vit_tiny_patch16_224 init_from=weights.safetensors`.

    mmtok train vit_folder data=path/to/images image_size=64 patch_size=8 max_steps=2000
    mmtok predict RUN_DIR photo.jpg
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset

from tokenizers_mm import open_image
from tokenizers_mm.image import IMAGENET_MEAN, IMAGENET_STD, to_tensor

from . import vit
from .config import say, take_shape
from .checkpoint import held_checkpoint
from .folders import Labelled, class_order, find_metadata, held_out_count, kept_split, hf_splits, hidden, no_columns, image_extensions, image_files, is_hf_dataset, keep_good, local_data, read_metadata, say_added, say_trained_on, say_unused, scored_data, split_dirs, with_own_columns


@dataclass
class Config(vit.Config):
    data: str = ""  # the image folder, or a Hugging Face dataset (save_to_disk's folder, Parquet files) (required)
    image_column: str = ""  # a Hugging Face dataset's Image column; "" = its only one
    label_column: str = ""  # ... its label column; "" = its only ClassLabel, else `label` / `labels`
    image_size: int = 32
    patch_size: int = 4
    channels: int = 3
    val_fraction: float = 0.1  # held out when the folder has no validation split
    skip_bad_samples: bool = False  # skip (and count) unreadable images instead of stopping
    randaugment: bool = True  # torchvision RandAugment on training images
    hflip: float = 0.5  # probability of a horizontal flip of a training image (timm's hflip); 0 where left and right differ
    rotate: float = 0.0
    scale: float = 0.0
    translate: float = 0.0
    max_steps: int = 1000
    batch_size: int = 32
    lr: float = 1e-3
    warmup_steps: int = 100
    eval_every: int = 200
    ckpt_every: int = 500
    timm_model: str = ""  # a timm ViT architecture name, to start from timm weights
    init_from: str = ""  # a safetensors file of that architecture's timm state dict

    def check(self) -> None:
        super().check()
        no_columns(self, ("image_column", "label_column"))  # (an image folder has none)


# -- finding the images ---------------------------------------------------------------------------
def scan(root: Path) -> list[tuple[Path, str]]:
    """(file, label) pairs of one split: metadata.csv / metadata.jsonl, or class sub-folders."""
    if meta := find_metadata(root):
        return Labelled(read_metadata(meta, "label"))
    classes = sorted(p for p in root.iterdir() if p.is_dir() and not hidden(p, root))
    loose = sorted(p for p in root.iterdir() if p.is_file() and not hidden(p, root) and p.suffix.lower() in image_extensions())
    if classes and loose:  # (no class of their own: not read, but said)
        say(f"vit_folder: {len(loose)} image(s) at the top of {root} (e.g. {loose[0].name}) are not used: only class sub-folders' "
            "images are labelled")  # fmt: skip
    pairs = []
    for d in classes:
        files = image_files(d)
        if not files:
            raise ValueError(f"class folder {d} is empty (no image files)")
        pairs += [(p, d.name) for p in files]
    return pairs


def find_splits(root: Path, cfg: Config) -> tuple[list, list | None]:
    if is_hf_dataset(root):  # a Hugging Face dataset: save_to_disk's folder, Parquet files
        return hf_splits(root, "image", (cfg.image_column, cfg.label_column))
    train_dir, val_dir = split_dirs(root)
    val = scan(val_dir) if val_dir else None
    if val == []:  # (a Kaggle-style test/ folder of unlabelled images)
        raise ValueError(f"validation folder {val_dir} has no labelled images (class sub-folders, or metadata.csv with file_name,label): "
                         f"move unlabelled images out of it (mmtok predict classifies them), or remove it (training then holds out val_fraction of {train_dir})")  # fmt: skip
    return scan(train_dir), val


def check_images(pairs, cfg: Config, what: str) -> tuple[list, int]:
    """Decode every image once; return the good (file, label) pairs and how many were skipped."""
    def check(path, label):
        if label is None:  # a Hugging Face dataset's row without a label (-1)
            raise ValueError(f"image {path}: no label")
        to_tensor(open_image(path), cfg.channels, str(path))

    return keep_good(pairs, check, cfg.skip_bad_samples, f"{what} images")


def report_skipped(bad: int) -> None:
    if bad:
        say(f"vit_folder: skipped {bad} unreadable image(s) (skip_bad_samples=true)")  # (stdout: eval's JSON)


class FolderSet(Dataset):
    """Images read lazily from files, resized to image_size; RandAugment when training."""

    def __init__(self, pairs, label_ids: dict[str, int], cfg: Config, train: bool):
        from torchvision.transforms import v2

        self.pairs, self.label_ids, self.cfg = pairs, label_ids, cfg
        size = [cfg.image_size, cfg.image_size]
        self.augment = train and cfg.augment  # augment=false: training images are read as evaluation reads them
        # note: evaluation reads an image as the run's ImageTokenizer does (its `pixels`: the same resize and crop), so
        # `mmtok predict` on a file sees the pixels evaluation saw
        self.pixels = vit.make_tokenizer(cfg, [0.0] * cfg.channels, [1.0] * cfg.channels).pixels
        if self.augment:  # timm's training transform's steps: random resized crop (bicubic, as evaluation resizes; of 60-100 %
            # of the image, not timm's 8-100 %: folders here are small), horizontal flip, RandAugment
            crop = v2.RandomResizedCrop(size, scale=(0.6, 1.0), interpolation=v2.InterpolationMode.BICUBIC, antialias=True)
            steps = [crop, v2.RandomHorizontalFlip(cfg.hflip)]
            steps += [v2.RandAugment()] if cfg.randaugment else []
            self.transform = v2.Compose(steps)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int):
        path, label = self.pairs[i]
        if not self.augment:
            return self.pixels(open_image(path), str(path)), self.label_ids[label]
        x = to_tensor(open_image(path), self.cfg.channels, str(path))
        x = (x.clamp(0, 1) * 255).round().to(torch.uint8)  # RandAugment wants uint8 (a float image's overshoot clamped, not wrapped)
        return self.transform(x).float() / 255.0, self.label_ids[label]


def build_data(cfg: Config, evaluating: bool = False):
    """-> (train set, test set, classes, (mean, std)). `evaluating` a run (`mmtok eval`): where its
    held-out images are known (split.json, or the data's validation split) they are read alone."""
    if not cfg.data:
        raise ValueError("vit_folder needs data=PATH, a folder of images (class sub-folders or metadata.csv)")
    root = local_data(cfg.data)
    source, val_pairs = find_splits(root, cfg)
    if val_pairs is not None and not evaluating:
        say_unused(cfg, "vit_folder", ("val_fraction",))
    known = vit.read_classes(cfg.run_dir) if cfg.run_dir and held_checkpoint(cfg.run_dir) is not None else None  # resume / eval
    if known is not None:  # (other classes: named first, before the run's held-out images are looked for)
        labels = sorted({label for _, label in source if label is not None} | {label for _, label in val_pairs or []})
        if labels != sorted(known):
            vit.same_classes(cfg.run_dir, labels)
    kept = kept_split(source, cfg.run_dir, root, evaluating) if val_pairs is None else None  # resume / eval: the run's own split, in its order
    if evaluating and known is not None and (kept is not None or val_pairs is not None):  # (the training images are not read)
        pairs, bad = check_images(kept[1] if kept is not None else val_pairs, cfg, "evaluation")
        report_skipped(bad)
        return None, FolderSet(pairs, {c: i for i, c in enumerate(known)}, cfg, False), known, None
    train_pairs, bad = check_images(source if kept is None else kept[0], cfg, "training")
    if kept is not None:
        say_added(train_pairs, cfg.run_dir, root)
        val_pairs = kept[1]
    if val_pairs is not None:
        val_pairs, bad_val = check_images(val_pairs, cfg, "validation")
        bad += bad_val
    report_skipped(bad)
    present = {label for _, label in train_pairs}
    lost = sorted({label for _, label in source if label is not None} - present)
    if lost and present:  # (skip_bad_samples: a class whose every image was unreadable would vanish from the classifier)
        raise ValueError(f"data {root}: every training image of class(es) {lost[:5]} was skipped as unreadable; mend or remove them "
                         "(a class left without images would vanish from the classifier)")  # fmt: skip
    classes = class_order(present, source)
    if known is not None and sorted(known) == sorted(classes):  # the run's own numbering (one made when classes were numbered
        classes = known  # otherwise, by name, keeps its order)
    if not present and bad:
        raise ValueError(f"data folder {root}: none of its training images could be read ({bad} skipped)")
    if not present:
        raise ValueError(f"data folder {root} has no labelled images: put each class's images in a sub-folder named after it "
                         f"({root}/CLASS/IMAGE), or list them in {root}/metadata.csv (file_name,label)")  # fmt: skip
    if len(present) < 2:
        raise ValueError(f"data folder {root} has {len(present)} class(es) ({', '.join(sorted(present))}); a classifier needs at least 2")
    drawn = val_pairs is None
    if drawn:
        from sklearn.model_selection import train_test_split

        counts = Counter(label for _, label in train_pairs)
        stratify = [l for _, l in train_pairs] if min(counts.values()) >= 2 else None
        n_val = held_out_count(len(train_pairs), cfg.val_fraction)
        if stratify and n_val < len(counts):  # a stratified hold-out needs one image of every class, and leaves one of each
            if len(train_pairs) >= 2 * len(counts):
                n_val = len(counts)
            else:
                stratify = None
        if stratify:  # (sklearn's count check: as many training images as classes)
            n_val = min(n_val, len(train_pairs) - len(counts))
        train_pairs, val_pairs = train_test_split(train_pairs, test_size=n_val, stratify=stratify, random_state=0)
        for label in sorted(set(counts) - {label for _, label in train_pairs}):  # a small class all held out: one back to train on
            train_pairs.append(val_pairs.pop(next(i for i, (_, held) in enumerate(val_pairs) if held == label)))
        if not val_pairs:
            raise ValueError(f"data folder {root}: {len(train_pairs)} images, each class needed for training; none left to hold out "
                             "(add images, or a validation/ folder)")  # fmt: skip
    unknown = sorted({l for _, l in val_pairs} - present)
    if unknown:
        example = next(p for p, l in val_pairs if l in unknown)
        raise ValueError(f"{cfg.data}: validation labels {unknown[:5]} (e.g. {example}) do not occur in the training images; "
                         "the model cannot learn a class it never sees")  # fmt: skip
    ids = {c: i for i, c in enumerate(classes)}
    mean, std = (IMAGENET_MEAN, IMAGENET_STD) if cfg.channels == 3 else ((0.5,), (0.5,))
    if cfg.timm_model:  # the weights' own normalisation (vit_tiny_patch16_224: 0.5, CLIP's: its own), as timm's transform reads them
        mean, std = timm_mean_std(cfg.timm_model, mean, std)
    test_set = FolderSet(val_pairs, ids, cfg, False)
    if drawn:  # (recorded in RUN_DIR/split.json: resume and eval read these shares, whatever the folder holds by then)
        test_set.drawn_from = root
    return FolderSet(train_pairs, ids, cfg, True), test_set, classes, (list(mean), list(std))


def held_out(data: str):
    """build_data for scoring a run on another image folder or dataset (`evaluate(run_dir,
    data=...)`): its validation split when it has one, else all of it, labelled by the run's classes
    (a label the run never learned is an error naming it)."""

    def build(cfg: Config):
        trained, cfg.data = cfg.data, data
        root = local_data(data)
        train_pairs, val_pairs = with_own_columns(lambda c: find_splits(root, c), cfg, ("image_column", "label_column"), data)
        pairs, bad = check_images(val_pairs if val_pairs is not None else train_pairs, cfg, "evaluation")
        report_skipped(bad)
        if not pairs:
            raise ValueError(f"data {root}: no labelled images to evaluate on (class sub-folders, or metadata.csv with file_name,label)")
        say_trained_on(cfg.run_dir, trained, pairs, lambda root: find_splits(root, cfg)[0])
        classes = vit.read_classes(cfg.run_dir)
        unknown = sorted({label for _, label in pairs} - set(classes))
        if unknown:
            raise ValueError(f"data {root}: labels {unknown[:5]} are not among the run's {len(classes)} classes ({', '.join(classes[:10])}"
                             f"{', ...' if len(classes) > 10 else ''})")  # fmt: skip
        return None, FolderSet(pairs, {c: i for i, c in enumerate(classes)}, cfg, False), classes, None

    return build


def timm_vit(cfg: Config, num_classes: int = 2, device=None):
    """timm_model as a timm VisionTransformer with random weights (device="meta": its shapes only) and
    our config for it; a name, pooling, patch size or channel count that does not fit is one line."""
    import contextlib

    import timm
    from timm.models.vision_transformer import VisionTransformer

    from models import vit_model_config

    name = cfg.timm_model
    if not timm.is_model(name):
        raise ValueError(f"timm_model={name}: no such timm model; expected a timm VisionTransformer's name "
                         "(vit_tiny_patch16_224, ...: timm.list_models('vit_*'))")  # fmt: skip
    arch, dot, tag = name.partition(".")
    if dot and name not in timm.list_pretrained(f"{arch}.*"):  # (timm.is_model reads the architecture alone)
        tags = [n.partition(".")[2] for n in timm.list_pretrained(f"{arch}.*")]
        raise ValueError(f"timm_model={name}: {arch} has no pretrained tag {tag!r}; its tags: {', '.join(tags) or 'none'} "
                         f"(or give {arch} alone)")  # fmt: skip
    with torch.device(device) if device else contextlib.nullcontext():
        vit_model = timm.create_model(name, pretrained=False, num_classes=num_classes)
    if not isinstance(vit_model, VisionTransformer):
        kind = type(vit_model).__name__
        raise ValueError(f"timm_model={name} is a {kind}, not a timm VisionTransformer (vit_tiny_patch16_224, ...)")
    try:
        config = vit_model_config(vit_model, num_classes)  # refuses variants without an equivalent here
    except ValueError as e:
        raise ValueError(f"timm_model={name}: {e}") from None
    # note: the tokenizer is made from cfg.pool (a CLS token or none) before the timm model is built: they must agree
    want = "cls" if vit_model.cls_token is not None else "mean"
    if cfg.pool != want:
        how = "pools by its class token" if vit_model.global_pool == "token" else "has a class token"
        how = "pools by mean (no class token)" if want == "mean" else how
        raise ValueError(f"timm_model={name} {how}: pass pool={want}")
    for key, ours, theirs in (("patch_size", cfg.patch_size, vit_model.patch_embed.patch_size[0]),
                              ("channels", cfg.channels, vit_model.patch_embed.proj.in_channels)):  # fmt: skip
        if ours != theirs:
            raise ValueError(f"{key}={ours} does not match timm_model={name}'s {theirs}: pass {key}={theirs}")
    return vit_model, config


def timm_mean_std(name: str, mean, std) -> tuple:
    """The mean and std of timm's pretrained config for `name` (with its tag, `vit_base_patch16_clip_224.openai`,
    that tag's; without, timm's default weights'), or `mean`, `std` when timm has none."""
    import timm

    pretrained = timm.models.get_pretrained_cfg(name)
    return (pretrained.mean, pretrained.std) if pretrained is not None and pretrained.mean is not None else (mean, std)


def read_init_from(cfg: Config, tensors: bool = True) -> dict:
    """init_from's state dict (with tensors=False: each weight's shape only, the file not loaded), or
    one line naming the file and what was expected."""
    from safetensors import SafetensorError, safe_open

    path = Path(cfg.init_from)
    expected = f"expected a safetensors file of timm_model={cfg.timm_model}'s state dict (safetensors.torch.save_file)"
    if not path.is_file():
        raise FileNotFoundError(f"init_from={path}: {'a folder' if path.is_dir() else 'no such file'}; {expected}")
    try:
        with safe_open(str(path), "pt") as f:
            return {k: f.get_tensor(k) if tensors else f.get_slice(k).get_shape() for k in f.keys()}  # (a handle: keys() to iterate)
    except (SafetensorError, OSError) as e:  # a .pth / .bin pickle, or another file: its header does not parse
        raise ValueError(f"init_from={path}: not a safetensors file ({e}); {expected}") from None


def timm_shape(config) -> dict:
    """The shape keys a timm model's weights set (our config for it: `timm_vit`)."""
    t = config.trunk
    return {"dim": t.dim, "depth": t.depth, "num_heads": t.num_heads, "mlp_ratio": t.mlp_ratio}


def build_from_timm(cfg: Config, tokenizer, num_classes: int):
    """Our model with a timm ViT's weights (position table resampled to our grid; new head)."""
    from models import MultimodalTransformer, load_timm_vit

    vit_model, config = timm_vit(cfg, num_classes)
    config.modalities["image"].grid = list(tokenizer.grid)
    config.modalities["image"].max_positions = tokenizer.max_positions
    take_shape(cfg, timm_shape(config), f"timm_model={cfg.timm_model}", "vit_folder")  # (main checked it before any image was read)
    config.heads["cls"].label_smoothing = cfg.label_smoothing
    config.trunk = dataclasses.replace(config.trunk, dropout=cfg.dropout, flash=cfg.flash)  # (timm's model was built without them)
    sd = read_init_from(cfg)
    own = vit_model.state_dict()
    for k, v in sd.items():  # note: in timm's names, before the conversion renames them (the head is replaced, the table resampled)
        if k in own and own[k].shape != v.shape and not k.startswith("head.") and k != "pos_embed":
            width = sd["patch_embed.proj.weight"].shape[0] if "patch_embed.proj.weight" in sd else vit_model.embed_dim
            raise ValueError(f"init_from {cfg.init_from}: its {k} is {tuple(v.shape)}, timm_model={cfg.timm_model}'s {tuple(own[k].shape)}: "
                             f"weights of another architecture" + (f" (width {width} against {vit_model.embed_dim})" if width != vit_model.embed_dim else ""))  # fmt: skip
    grid = list(vit_model.patch_embed.grid_size)  # the architecture's own grid, when the file's table fits it (else inferred)
    fits = "pos_embed" in sd and sd["pos_embed"].shape[1] == vit_model.num_prefix_tokens + grid[0] * grid[1]
    if "pos_embed" in sd and not fits and math.isqrt(n := sd["pos_embed"].shape[1] - vit_model.num_prefix_tokens) ** 2 != n:
        raise ValueError(f"init_from={cfg.init_from}: its position table holds {n} patch positions, neither timm_model={cfg.timm_model}'s "
                         f"{grid[0]}x{grid[1]} grid nor a square one: weights made for another image shape (timm's img_size=(H, W)); "
                         "load them in Python, models.load_timm_vit(model, state_dict, old_grid=(rows, columns))")  # fmt: skip
    try:
        return load_timm_vit(MultimodalTransformer(config), sd, skip_head=True, old_grid=grid if fits else None)
    except ValueError as e:  # the import's message, with the file it read
        raise ValueError(f"init_from={cfg.init_from}: {e}") from None


def main(cfg: Config, resume: bool = False) -> dict:
    if bool(cfg.timm_model) != bool(cfg.init_from):
        raise ValueError("give both timm_model=ARCH and init_from=weights.safetensors, or neither")
    if cfg.init_from:  # before any image is read or the run directory written
        _, config = timm_vit(cfg, device="meta")
        take_shape(cfg, timm_shape(config), f"timm_model={cfg.timm_model}", "vit_folder")  # a value given for another is refused, not replaced
        if not resume:  # (a resumed run's weights are its checkpoint's: the file may be gone; its shape is timm_model's, as it trained)
            read_init_from(cfg, tensors=False)
    return vit.run(cfg, "vit_folder", build_data, resume, build=build_from_timm if cfg.init_from else None)


def evaluate(run_dir, device=None, data=None) -> dict:
    """The run's validation accuracy, or with data= (an image folder or dataset) on that (`held_out`)."""
    own, data = (lambda cfg: build_data(cfg, evaluating=True)), scored_data(run_dir, data)  # noqa: E731
    return vit.evaluate_run(run_dir, own if data is None else held_out(data), device)


predict = vit.predict
