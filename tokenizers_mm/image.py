"""Image tokenizer (registered as `image`): an image becomes a set of non-overlapping patches.

"An image is worth 16x16 words" (Dosovitskiy et al., 2021): resize / crop / normalise, cut into
p×p patches in raster order (row by row), and emit each patch as one token of C·p·p values,
flattened in (channel, row, column) order so a linear layer on it equals timm's convolutional
patch embedding. Positions index a learned table laid out as timm's `pos_embed`: an optional CLS
slot first, then the patch grid. The CLS token is emitted as a placeholder of type "cls"; the
model replaces it with a learned vector. `decode` puts patches back into an image (exact when no
resize happened). Reading image files lives here too (`open_image`), with one clear error per
bad file. Augmentation is the recipe's business; this file leaves it out.
"""

from __future__ import annotations

import math
import numbers
import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .base import Tokenizer, source_bytes
from .registry import register
from .tokenset import TokenSet, positive

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class ImageError(ValueError):
    """An image that cannot be tokenized: the message names it and says what was expected."""


def open_image(source) -> "PIL.Image.Image":  # noqa: F821
    """Open and fully decode an image, upright (its EXIF orientation applied, as a phone's photo is
    meant to be seen), or raise ImageError naming it. `source`: a file path, or an object with
    `read_bytes()` whose str() names it (a row of a Hugging Face dataset, recipes/folders.py)."""
    import io

    from PIL import Image, ImageOps, UnidentifiedImageError

    is_path = isinstance(source, (str, os.PathLike))
    path = Path(source) if is_path else source
    if is_path and path.is_dir():
        raise ImageError(f"image {path}: a folder, not an image file")
    data = None if is_path else source_bytes(source, "image", ImageError)
    try:
        if is_path and path.stat().st_size == 0:
            raise ImageError(f"image {path}: the file is empty (0 bytes)")
        with Image.open(path if is_path else io.BytesIO(data)) as im:
            im.load()  # decode now: a truncated file fails here, not mid-epoch
            return ImageOps.exif_transpose(im)  # a new image (a copy even without EXIF), so the file can close
    except FileNotFoundError:
        raise ImageError(f"image {path}: no such file") from None
    except UnidentifiedImageError:
        raise ImageError(f"image {path}: not an image file PIL can read") from None
    except Image.DecompressionBombError as e:  # refused from the header, before any pixel is decoded
        raise ImageError(f"image {path}: too large to decode safely ({e}); downscale it first") from None
    except (OSError, SyntaxError, ValueError) as e:
        if isinstance(e, ImageError):
            raise
        raise ImageError(f"image {path}: corrupt or truncated ({e})") from None


PIL_WIDE_MODES = ("I;16", "I;16B", "I;16L", "I", "F")  # PIL modes of more than 8 bits a channel (integer grayscale, then float)


def pil_convert(image, mode: str, name: str = "image"):
    """A PIL image in `mode`, or one line naming it (Pillow 13 converts no "La" image, nor Lab to "L")."""
    try:
        return image.convert(mode)
    except ValueError as e:
        raise ImageError(f"{name}: a {image.mode} image, which Pillow cannot convert to {mode} ({e}); save it as RGB or grayscale") from None


UNIT_SLACK = 0.5  # float pixels may stray this far outside [0, 1] (a bicubic resize overshoots; `pixels` / `decode` give such)


def check_unit(x: Tensor, name: str) -> None:
    """Float pixels on the [0, 1] scale, give or take a resize's overshoot (UNIT_SLACK): one scale
    for every float image (0-255 floats, or an image already normalised, would be read as other
    pixels, and augmentation's 8-bit step would wrap them)."""
    if x.numel() == 0:  # (an empty image: refused as such, later)
        return
    low, high = (float(v) for v in torch.aminmax(x))
    if low < -UNIT_SLACK or high > 1 + UNIT_SLACK:
        hint = "0-255 floats? divide by 255, or give uint8" if high > 1 + UNIT_SLACK and low >= -UNIT_SLACK else "already normalised? give the pixels"
        raise ImageError(f"{name}: float pixels span [{low:.4g}, {high:.4g}]; expected floats in [0, 1] ({hint})")


def to_tensor(image, channels: int, name: str = "image") -> Tensor:
    """PIL / NumPy / tensor image → float (C, H, W) in [0, 1] with `channels` channels.

    Accepts grayscale, RGB, RGBA (alpha dropped), palette and CMYK images, 8-bit, 16-bit and float
    data (PIL's 32-bit "I" mode read as 16-bit, as Pillow gives 16-bit PNG / PGM / TIFF; arrays of
    other integer types refused: their scale is unknown). NumPy arrays are (H, W) or (H, W, C);
    tensors are (H, W) or (C, H, W).
    """
    chw = False  # a NumPy array that looks (C, H, W): its channel error says how arrays are read
    if hasattr(image, "mode") and hasattr(image, "convert"):  # PIL
        if image.mode in PIL_WIDE_MODES and image.mode != "F":  # 16-bit / 32-bit integer grayscale: 16-bit data (PNG, PGM, TIFF), one scale
            x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 65535.0)[None]
        elif image.mode == "F":  # float grayscale (TIFF): taken as [0, 1] like a float array; "L" would round it to 0 / 1
            x = torch.from_numpy(np.asarray(image, dtype=np.float32).copy())[None]
            if not torch.isfinite(x).all():
                raise ImageError(f"{name}: the image holds NaN or infinite values")
            check_unit(x, name)
        else:
            image = pil_convert(image, "L" if channels == 1 else "RGB", name)  # RGBA, P, CMYK, LA → RGB / L
            x = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy())
            x = (x[None] if x.dim() == 2 else x.permute(2, 0, 1)).float() / 255.0
    else:
        if isinstance(image, np.ndarray):
            if image.ndim == 3:
                chw = image.shape[0] in (1, 3, 4) and image.shape[-1] not in (1, 3, 4)  # (C, H, W) given: read as (H, W, C) it fails below
                image = np.moveaxis(image, -1, 0)  # (H, W, C) -> (C, H, W)
            x = torch.from_numpy(np.ascontiguousarray(image))
        elif isinstance(image, Tensor):
            x = image
        else:
            raise ImageError(f"{name}: expected a PIL image, NumPy array or tensor, got {type(image).__name__}")
        if x.dim() == 2:
            x = x[None]
        if x.dim() != 3:
            raise ImageError(f"{name}: expected (H, W) or (C, H, W) / (H, W, C), got shape {tuple(x.shape)}")
        floats = False
        if x.dtype == torch.uint8:
            x = x.float() / 255.0
        elif x.dtype == torch.uint16:
            x = x.float() / 65535.0
        elif x.is_floating_point() or x.dtype == torch.bool:
            x, floats = x.float(), x.is_floating_point()
        else:  # int64 (a tensor made from a list), int16, int32...: 0-255 or 0-65535? Guessing from the content would scale images apart
            raise ImageError(f"{name}: {str(x.dtype).removeprefix('torch.')} pixels have no known scale; give uint8 (0-255), "
                             "uint16 (0-65535) or float pixels in [0, 1]")  # fmt: skip
        if not torch.isfinite(x).all():
            raise ImageError(f"{name}: the image holds NaN or infinite values")
        if floats:  # (integer pixels were scaled to [0, 1])
            check_unit(x, name)
    c = x.shape[0]
    if c == 4:
        x = x[:3]  # drop alpha
        c = 3
    if c == channels:
        return x
    if c == 1 and channels == 3:
        return x.expand(3, -1, -1)
    if c == 3 and channels == 1:
        return (0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2])[None]  # ITU-R 601-2 luma, as PIL's "L"
    if channels not in (1, 3):  # (a multispectral tokenizer reads its own channel count alone: nothing converts to it)
        raise ImageError(f"{name}: has {c} channels, expected {channels} (the tokenizer's channels={channels}: give arrays or "
                         f"tensors of {channels} channels; an image file or PIL image reads as RGB)")  # fmt: skip
    hint = f"; a NumPy array is read as (H, W, C), as PIL and OpenCV give it: this one looks like (C, H, W) (np.moveaxis(a, 0, -1), or a tensor)"
    raise ImageError(f"{name}: has {c} channels, expected 1, 3 or 4" + (hint if chw else ""))


@register("image")
class ImageTokenizer(Tokenizer):
    """Image → patch tokens (C·p·p values each) in raster order, with an optional CLS token."""

    modality = "image"
    token_types = ("patch", "cls")

    def __init__(self, image_size=224, patch_size: int = 16, channels: int = 3, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                 cls_token: bool = True, resize: bool = True, interpolation: str = "bicubic", crop_pct: float = 1.0):  # fmt: skip
        """crop_pct: the centre crop's share of the resized image, as timm's eval transform (an image is
        resized so that its shorter side is image_size / crop_pct, then cropped to image_size)."""
        if interpolation not in ("bicubic", "bilinear"):
            raise ValueError(f"image: interpolation must be 'bicubic' or 'bilinear', got {interpolation!r}")
        if not 0 < crop_pct <= 1:
            raise ValueError(f"image: crop_pct must lie in (0, 1], got {crop_pct}")
        self.crop_pct = float(crop_pct)
        if isinstance(image_size, numbers.Integral):
            image_size = (image_size, image_size)
        elif hasattr(image_size, "__len__") and not isinstance(image_size, (str, bytes)):  # (a list from JSON, an array)
            image_size = tuple(image_size)
        if not (isinstance(image_size, tuple) and len(image_size) == 2):
            raise ValueError(f"image: image_size is one side or (height, width), got {image_size!r}")
        self.image_size = tuple(positive("image", "image_size", side) for side in image_size)
        patch_size, channels = positive("image", "patch_size", patch_size), positive("image", "channels", channels)
        self.patch_size, self.channels, self.cls_token = patch_size, channels, cls_token
        self.mean, self.std = tuple(mean)[:channels], tuple(std)[:channels]
        if len(self.mean) != channels or len(self.std) != channels:
            raise ValueError(f"image: mean and std need {channels} values")
        if not all(math.isfinite(s) and s > 0 for s in self.std) or not all(map(math.isfinite, self.mean)):
            raise ValueError(f"image: mean {list(self.mean)} must be finite and std {list(self.std)} above 0 (pixels are divided by it)")
        self.resize, self.interpolation = resize, interpolation
        H, W = self.image_size
        if H % patch_size or W % patch_size:
            raise ValueError(f"image: image_size {self.image_size} must be a multiple of patch_size={patch_size}")
        self.grid = (H // patch_size, W // patch_size)
        self.prefix_tokens = int(cls_token)
        self.learned_types = ("cls",) if cls_token else ()  # the model embeds the CLS placeholder as one learned vector
        self.value_dim = channels * patch_size * patch_size
        self.max_positions = self.prefix_tokens + self.grid[0] * self.grid[1]
        self._mean = torch.tensor(self.mean).view(-1, 1, 1)
        self._std = torch.tensor(self.std).view(-1, 1, 1)

    def config(self) -> dict:
        return {"image_size": list(self.image_size), "patch_size": self.patch_size, "channels": self.channels, "mean": list(self.mean),
                "std": list(self.std), "cls_token": self.cls_token, "resize": self.resize, "interpolation": self.interpolation,
                "crop_pct": self.crop_pct}  # fmt: skip

    # -- pixels --
    def preprocess(self, image, name: str = "image") -> Tensor:
        """Any image → normalised float (C, H, W) of `image_size`: shorter side resized, centre crop."""
        px = self.pixels(image, name)
        x = (px - self._mean.to(px.device)) / self._std.to(px.device)
        if not bool(torch.isfinite(x).all()):  # (pixels are near [0, 1]: only a std near 0 overflows here)
            raise ImageError(f"{name}: pixel values overflow float32 once normalised by the tokenizer's std {list(self.std)}")
        return x

    def pixels(self, image, name: str = "image") -> Tensor:
        """Any image → float (C, H, W) of `image_size` in pixel units ([0, 1]; a bicubic resize can
        overshoot a little), before normalising: shorter side resized, centre crop, as timm's eval
        transform (an 8-bit PIL image resized by PIL, in 8 bits; arrays, tensors and 16-bit images in float)."""
        from torchvision.transforms.v2 import functional as TF

        pil = hasattr(image, "mode") and hasattr(image, "convert") and image.mode not in PIL_WIDE_MODES
        if pil:  # an 8-bit PIL image is resized as PIL resizes it, as timm's eval transform does: the same pixels
            image = pil_convert(image, "L" if self.channels == 1 else "RGB", name)
            w, h = image.size
        else:
            x = to_tensor(image, self.channels, name)
            h, w = x.shape[-2:]
        if h == 0 or w == 0:  # note: any other size is resized (a 3×3 image up to image_size), as training and evaluation resize it
            raise ImageError(f"{name}: {h}×{w} pixels, an empty image")
        crop = (h, w) != self.image_size or self.crop_pct < 1
        if crop:
            if not self.resize:
                raise ImageError(f"{name}: is {h}×{w}, expected {self.image_size[0]}×{self.image_size[1]} (resize=False)")
            H, W = (math.floor(t / self.crop_pct) for t in self.image_size)  # timm's scale_size
            if H == W:  # timm's eval transform: torchvision's Resize(int), the other side truncated: 500×375 → 298×224, not 299
                size = [H, max(W, int(H * w / h))] if h <= w else [max(H, int(W * h / w)), W]
            else:  # a non-square target: timm's ResizeKeepRatio, the binding side to its target, both rounded
                ratio = min(h / H, w / W)
                size = [round(h / ratio), round(w / ratio)]
            mode = TF.InterpolationMode.BICUBIC if self.interpolation == "bicubic" else TF.InterpolationMode.BILINEAR
            if pil:
                image = TF.resize(image, size, interpolation=mode, antialias=True)
            else:
                x = TF.resize(x, size, interpolation=mode, antialias=True)
        if pil:
            x = to_tensor(image, self.channels, name)
        if crop:
            x = TF.center_crop(x, list(self.image_size))
        return x

    def patchify(self, x: Tensor) -> Tensor:
        """(C, H, W) → (N, C·p·p) patches in raster order, each flattened as (C, p, p)."""
        C, H, W = x.shape
        p = self.patch_size
        x = x.reshape(C, H // p, p, W // p, p)  # (C, gh, p, gw, p)
        return x.permute(1, 3, 0, 2, 4).reshape((H // p) * (W // p), C * p * p)  # (gh, gw, C, p, p) -> (N, C·p·p)

    def unpatchify(self, patches: Tensor) -> Tensor:
        """(N, C·p·p) → (C, H, W); the inverse of `patchify`."""
        gh, gw = self.grid
        p, C = self.patch_size, self.channels
        x = patches.reshape(gh, gw, C, p, p).permute(2, 0, 3, 1, 4)  # (C, gh, p, gw, p)
        return x.reshape(C, gh * p, gw * p)

    # -- tokens --
    def tokens(self, x: Tensor) -> TokenSet:
        """A preprocessed (C, H, W) image → TokenSet (used after batched augmentation too)."""
        self._check_shape(x, 3)
        values = self.patchify(x)
        if self.cls_token:  # timm's layout: the CLS slot is position 0
            values = torch.cat([values.new_zeros(1, values.shape[1]), values])
        return TokenSet(self.modality, values=values, positions=self._positions, types=self._types)

    @property
    def _positions(self) -> Tensor:
        """Each token's position: 0 for the CLS token when there is one, then the patches' (raster order)."""
        return torch.arange(self.max_positions)

    @property
    def _types(self) -> Tensor:
        """Each token's type: 1 for the CLS token, 0 for the patches."""
        return (torch.arange(self.max_positions) < self.prefix_tokens).long()

    def tokens_batch(self, x: Tensor) -> "TokenBatch":
        """Preprocessed images (B, C, H, W) → one TokenBatch, without a Python loop over samples."""
        from .tokenset import TokenBatch

        self._check_shape(x, 4)
        B, C, H, W = x.shape
        p = self.patch_size
        values = x.reshape(B, C, H // p, p, W // p, p).permute(0, 2, 4, 1, 3, 5).reshape(B, -1, C * p * p)  # (B, N, C·p·p)
        if self.cls_token:
            values = torch.cat([values.new_zeros(B, 1, values.shape[2]), values], 1)
        n = values.shape[1]
        return TokenBatch(self.modality, None, values, self._positions.expand(B, n), self._types.expand(B, n),
                          torch.ones(B, n, dtype=torch.bool))  # fmt: skip

    def _check_shape(self, x: Tensor, dims: int) -> None:
        """tokens / tokens_batch read preprocessed images of exactly (channels, *image_size): any other
        shape (an (H, W, C) array, another size) would be cut into patches of the wrong places."""
        want = (self.channels, *self.image_size)
        if not isinstance(x, Tensor) or x.dim() != dims or tuple(x.shape[-3:]) != want or not x.is_floating_point():
            got = f"{x.dtype} of shape {tuple(x.shape)}" if isinstance(x, Tensor) else type(x).__name__
            lead = "(B, " if dims == 4 else "("
            raise ImageError(f"image tokens: expected a preprocessed float tensor {lead}{', '.join(map(str, want))}), got {got}; "
                             "`encode` / `preprocess` read any image and resize it")  # fmt: skip

    def encode(self, sample, name: str = "image") -> TokenSet:
        return self.tokens(self.preprocess(sample, name))

    def decode(self, tokens) -> Tensor:
        """TokenSet (or patch values (N, C·p·p)) → image (C, H, W) in [0, 1] pixel units (CLS
        dropped; an antialiased resize in `encode` can overshoot the range slightly: clamp to
        display); a TokenBatch (or values (B, N, C·p·p)) → images (B, C, H, W)."""
        from .tokenset import TokenBatch

        if isinstance(tokens, TokenBatch):
            return torch.stack([self.decode(TokenSet(tokens.modality, values=tokens.values[i][m], positions=tokens.positions[i][m],
                                                     types=tokens.types[i][m])) for i, m in enumerate(tokens.mask)])  # fmt: skip
        if isinstance(tokens, Tensor) and tokens.dim() == 3:
            return torch.stack([self.decode(t) for t in tokens])
        if isinstance(tokens, TokenSet):
            values = tokens.values[tokens.types == 0] if tokens.values is not None else None
        elif isinstance(tokens, Tensor) and tokens.dim() == 2:
            values = tokens[self.prefix_tokens :] if tokens.shape[0] == self.max_positions else tokens
        else:
            got = f"a tensor of shape {tuple(tokens.shape)}" if isinstance(tokens, Tensor) else type(tokens).__name__
            raise ImageError(f"image decode: expected a TokenSet, a TokenBatch or patch values (N, D) / (B, N, D), got {got}")
        want = (self.grid[0] * self.grid[1], self.channels * self.patch_size**2)
        if values is None or tuple(values.shape) != want:
            got = "no values" if values is None else f"patch values of shape {tuple(values.shape)}"
            raise ImageError(f"image decode: expected {want[0]} patches of {want[1]} values (this tokenizer's {self.image_size[0]}×"
                             f"{self.image_size[1]} images, patch {self.patch_size}, {self.channels} channels), got {got}")  # fmt: skip
        return self.unpatchify(values) * self._std.to(values.device) + self._mean.to(values.device)
