"""Image tokenizer and timm ViT import: patches, round trips, bad files, parity with timm."""

import functools

import numpy as np
import pytest
import torch
from PIL import Image

from models import MultimodalTransformer, load_timm_vit, vit_model_config
from models.embedders import resample_grid
from tokenizers_mm import ImageError, ImageTokenizer, collate, load_tokenizer, open_image

timm = pytest.importorskip("timm")


def test_patches_in_raster_order_and_exact_round_trip():
    tok = ImageTokenizer(image_size=(4, 6), patch_size=2, channels=1, mean=(0.0,), std=(1.0,), cls_token=False, resize=False)
    img = torch.arange(24, dtype=torch.float32).reshape(1, 4, 6) / 24
    ts = tok.encode(img)
    assert ts.values.shape == (6, 4) and tok.grid == (2, 3)
    assert (ts.values[1] * 24).round().tolist() == [2, 3, 8, 9]  # second patch of the first row
    assert ts.positions.tolist() == list(range(6)) and ts.types.tolist() == [0] * 6
    assert torch.equal(tok.decode(ts), img)  # exact: no resize happened
    batch = collate([ts, tok.encode(1 - img)])  # a batch decodes to (B, C, H, W), from a TokenBatch or its values
    assert torch.equal(tok.decode(batch), torch.stack([img, 1 - img])) and torch.equal(tok.decode(batch.values), tok.decode(batch))
    with pytest.raises(ImageError, match=r"image decode: expected 6 patches of 4 values \(this tokenizer's 4×6 images, patch 2, 1 channels\), "
                                         r"got patch values of shape \(5, 4\)"):  # fmt: skip
        tok.decode(ts.values[:5])


def test_cls_token_slot_and_spec():
    tok = ImageTokenizer(image_size=8, patch_size=4, channels=3)
    ts = tok.encode(np.zeros((8, 8, 3), dtype=np.uint8))
    assert ts.types.tolist() == [1, 0, 0, 0, 0] and ts.positions.tolist() == [0, 1, 2, 3, 4]
    ts.validate(tok.spec)
    assert tok.spec.value_dim == 48 and tok.spec.max_positions == 5


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "P", "CMYK", "I;16"])
def test_any_pil_mode_and_size(mode, tmp_path):
    """Every PIL mode reads as PIL's own conversion to RGB reads it (alpha dropped, the palette and
    CMYK converted); 16-bit greyscale as its values / 65535 (PIL's convert clips it at 255)."""
    rng = np.random.default_rng(0)
    if mode == "I;16":
        grey = rng.integers(0, 65535, (30, 20), dtype=np.uint16)
        img = Image.fromarray(grey)
    else:
        img = Image.fromarray(rng.integers(0, 255, (30, 20, 3), dtype=np.uint8)).convert(mode)
    path = tmp_path / ("x.tiff" if mode in ("CMYK", "I;16") else "x.png")
    img.save(path)
    tok = ImageTokenizer(image_size=16, patch_size=4)
    ts = tok.encode(open_image(path))
    assert ts.values.shape == (17, 48) and ts.values.std() > 0.5
    if mode == "I;16":
        expected = tok.encode(torch.from_numpy(grey.astype(np.float32) / 65535)[None].expand(3, -1, -1).contiguous())
    else:
        expected = tok.encode(Image.open(path).convert("RGB"))
    torch.testing.assert_close(ts.values, expected.values, atol=1e-6, rtol=0)


def test_sixteen_bit_png_keeps_its_range(tmp_path):
    arr = np.full((8, 8), 65535, dtype=np.uint16)
    Image.fromarray(arr).save(tmp_path / "w.png")
    tok = ImageTokenizer(image_size=8, patch_size=4, channels=1, mean=(0.0,), std=(1.0,), cls_token=False)
    assert torch.allclose(tok.encode(open_image(tmp_path / "w.png")).values, torch.ones(4, 16))


def test_bad_images_name_the_file(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.png").write_text("not an image at all")
    Image.fromarray(np.zeros((64, 64, 3), dtype=np.uint8)).save(tmp_path / "ok.jpg")
    data = (tmp_path / "ok.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 3])
    (tmp_path / "folder.png").mkdir()
    for name, message in [("empty.png", "empty"), ("text.png", "not an image"), ("cut.jpg", "corrupt or truncated"), ("nope.png", "no such file"),
                          ("folder.png", "a folder, not an image file")]:  # fmt: skip
        with pytest.raises(ImageError, match=f"{name}.*{message}"):
            open_image(tmp_path / name)
    tok = ImageTokenizer(image_size=16, patch_size=8)
    assert tok.encode(np.zeros((3, 5), dtype=np.uint8)).values.shape == (5, 192)  # smaller than a patch: resized up, as training does
    with pytest.raises(ImageError, match="0×5 pixels, an empty image"):
        tok.encode(np.zeros((0, 5), dtype=np.uint8))
    with pytest.raises(ImageError, match="NaN"):
        tok.encode(torch.full((3, 16, 16), float("nan")))
    with pytest.raises(ImageError, match=r"has 16 channels, expected 1, 3 or 4; a NumPy array is read as \(H, W, C\).*looks like \(C, H, W\)"):
        tok.encode(np.zeros((3, 16, 16), dtype=np.uint8))  # (a channels-first array: the hint says how arrays are read)
    with pytest.raises(ImageError, match=r"has 5 channels, expected 1, 3 or 4$"):
        tok.encode(np.zeros((16, 16, 5), dtype=np.uint8))
    with pytest.raises(ImageError, match="expected 16×16"):
        ImageTokenizer(image_size=16, patch_size=8, resize=False).encode(np.zeros((20, 20), dtype=np.uint8))


def test_save_load(tmp_path):
    tok = ImageTokenizer(image_size=(8, 12), patch_size=4, channels=1, mean=(0.5,), std=(0.25,), cls_token=False)
    tok.save(tmp_path)
    back = load_tokenizer(tmp_path)
    assert back.config() == tok.config() and back.spec == tok.spec


def randomized_vit(**kw):
    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=7, embed_dim=48, depth=2, num_heads=3, **kw).eval()
    with torch.no_grad():  # non-trivial norms, biases, tokens and positions
        for n, p in vit.named_parameters():
            if "norm" in n or n.endswith("bias") or "token" in n or "pos" in n:
                p.normal_(0, 0.2)
    return vit


@pytest.mark.parametrize(
    "kw",
    [
        dict(img_size=32, patch_size=4, global_pool="token"),  # CLS token
        dict(img_size=24, patch_size=6, global_pool="avg", class_token=False),  # mean pooling
        dict(img_size=(16, 24), patch_size=4, global_pool="avg", fc_norm=True),  # timm's fc_norm, non-square
        dict(img_size=32, patch_size=4, global_pool="token", act_layer="gelu_tanh"),  # tanh-approximated GELU
        dict(img_size=16, patch_size=4, global_pool="token", qkv_bias=False),  # no qkv bias alone (vit_base_patch16_224_miil)
        dict(img_size=(8, 32), patch_size=4, global_pool="token"),  # a 2×8 grid: a square count, its own table copied as it is
    ],
)
def test_logits_equal_timm(kw):
    vit = randomized_vit(**kw)
    model = load_timm_vit(MultimodalTransformer(vit_model_config(vit)), vit.state_dict()).eval()
    size = kw["img_size"]
    tok = ImageTokenizer(image_size=size, patch_size=kw["patch_size"], cls_token=kw.get("class_token", True), mean=(0, 0, 0), std=(1, 1, 1))
    x = torch.rand(3, 3, *tok.image_size)
    ours = model({"image": collate([tok.encode(i) for i in x])}).logits["cls"]
    torch.testing.assert_close(ours, vit(x), atol=1e-4, rtol=1e-4)


def test_position_resampling_equals_timm():
    from timm.layers import resample_abs_pos_embed

    table = torch.randn(1 + 4 * 4, 8)
    ours = resample_grid(table, (4, 4), (6, 5), prefix=1)
    theirs = resample_abs_pos_embed(table[None], new_size=[6, 5], old_size=[4, 4], num_prefix_tokens=1)[0]
    torch.testing.assert_close(ours, theirs)


@pytest.mark.parametrize("kw", [dict(init_values=0.5), dict(qk_norm=True), dict(act_layer="quick_gelu"), dict(pre_norm=True),
                                dict(global_pool="avg", pool_include_prefix=True), "ResPostBlock", "ParallelScalingBlock",
                                dict(mlp_layer="SwiGLU")])  # fmt: skip
def test_timm_variants_without_an_equivalent_are_refused(kw):
    """Layer scale, q/k norms, other activations, a pre-norm, prefix pooling, other blocks (a
    residual post-norm block has a plain block's weight names: timm's vit_base_patch16_rpn_224),
    other MLPs: refused by the config, and their weights refused by the loader where the names
    differ (they used to load and give other logits)."""
    import timm.layers
    import timm.models.vision_transformer as tv

    if isinstance(kw, str):  # a block class (residual post-norm as timm's rpn ViTs build it)
        kw = dict(block_fn=getattr(tv, kw), **(dict(class_token=False, global_pool="avg") if kw == "ResPostBlock" else {}))
    elif "mlp_layer" in kw:
        kw = dict(mlp_layer=getattr(timm.layers, kw["mlp_layer"]))
    vit = randomized_vit(img_size=16, patch_size=4, **kw)
    with pytest.raises(ValueError, match="timm import: plain ViTs only"):
        vit_model_config(vit)
    plain = randomized_vit(img_size=16, patch_size=4, global_pool=kw.get("global_pool", "token"), class_token=kw.get("class_token", True))
    if set(vit.state_dict()) != set(plain.state_dict()):
        with pytest.raises(ValueError, match="has no place for"):
            load_timm_vit(MultimodalTransformer(vit_model_config(plain)), vit.state_dict())
    deeper = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=7, embed_dim=48, depth=3, num_heads=3, img_size=16, patch_size=4)
    with pytest.raises(ValueError, match="more blocks than the model's 2"):
        load_timm_vit(MultimodalTransformer(vit_model_config(plain)), deeper.state_dict())


def test_a_timm_checkpoint_without_its_patch_embedding_or_positions_is_named():
    """A state dict lacking a weight every ViT has (another model's file) is one line naming it, not a bare KeyError."""
    vit = randomized_vit(img_size=16, patch_size=4, global_pool="token")
    for lost in ("pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias"):
        sd = {k: v for k, v in vit.state_dict().items() if k != lost}
        with pytest.raises(ValueError, match=rf"timm import: the checkpoint lacks {lost}; expected a timm VisionTransformer's state dict"):
            load_timm_vit(MultimodalTransformer(vit_model_config(vit)), sd)
    # a block's weights missing: named as timm names them (not as our model does); a wrapper's prefix: said, with how to strip it
    sd = {k: v for k, v in vit.state_dict().items() if not k.startswith("blocks.1.") and k != "norm.weight"}
    with pytest.raises(ValueError, match=r"timm import: the checkpoint lacks \['blocks.1.norm1.weight', 'blocks.1.norm1.bias', "
                                         r"'blocks.1.attn.qkv.weight', 'blocks.1.attn.qkv.bias', 'blocks.1.attn.proj.weight'\]"):
        load_timm_vit(MultimodalTransformer(vit_model_config(vit)), sd)
    with pytest.raises(ValueError, match=r"timm import: the checkpoint lacks \['norm.weight'\]"):
        load_timm_vit(MultimodalTransformer(vit_model_config(vit)), {k: v for k, v in vit.state_dict().items() if k != "norm.weight"})
    with pytest.raises(ValueError, match=r"every name in the checkpoint starts with 'module.model.' \(a wrapper's state dict, e.g. "
                                         r"'module.model.cls_token'\); strip it: \{k.removeprefix\('module.model.'\): v for k, v in"):
        load_timm_vit(MultimodalTransformer(vit_model_config(vit)), {f"module.model.{k}": v for k, v in vit.state_dict().items()})


def test_a_distilled_vit_is_refused_by_the_config():
    """DeiT's distillation token is a second prefix token our image tokenizer has no slot for."""
    with torch.device("meta"):
        vit = timm.create_model("deit_tiny_distilled_patch16_224", pretrained=False)
    with pytest.raises(ValueError, match="plain ViTs only .*no register or distillation tokens"):
        vit_model_config(vit)


def test_a_non_square_checkpoint_grid_is_resampled_as_timm_or_refused():
    from timm.layers import resample_abs_pos_embed

    vit = randomized_vit(img_size=(8, 24), patch_size=4, global_pool="token")  # a 2×6 grid: 12 positions, no square
    cfg = vit_model_config(vit)
    cfg.modalities["image"].grid, cfg.modalities["image"].max_positions = [4, 12], 49
    with pytest.raises(ValueError, match="not a square grid; pass old_grid"):
        load_timm_vit(MultimodalTransformer(cfg), vit.state_dict())
    model = load_timm_vit(MultimodalTransformer(cfg), vit.state_dict(), old_grid=(2, 6))
    want = resample_abs_pos_embed(vit.pos_embed.detach(), new_size=[4, 12], old_size=[2, 6], num_prefix_tokens=1)[0]
    torch.testing.assert_close(model.embedders["image"].pos.weight.detach(), want)
    square = randomized_vit(img_size=16, patch_size=4, global_pool="token")  # 4×4 into a 2×8 grid of the same 16 positions
    cfg = vit_model_config(square)
    cfg.modalities["image"].grid = [2, 8]
    model = load_timm_vit(MultimodalTransformer(cfg), square.state_dict(), old_grid=(4, 4))  # the same count: old_grid says it is 4×4
    want = resample_abs_pos_embed(square.pos_embed.detach(), new_size=[2, 8], num_prefix_tokens=1)[0]
    torch.testing.assert_close(model.embedders["image"].pos.weight.detach(), want)


def test_timm_weights_at_a_new_resolution():
    vit = randomized_vit(img_size=16, patch_size=4, global_pool="token")
    cfg = vit_model_config(vit, num_classes=3)
    cfg.modalities["image"].grid, cfg.modalities["image"].max_positions = [6, 6], 37  # fine-tune at 24×24
    model = load_timm_vit(MultimodalTransformer(cfg), vit.state_dict(), skip_head=True)
    tok = ImageTokenizer(image_size=24, patch_size=4)
    assert model({"image": collate([tok.encode(torch.rand(3, 24, 24))])}).logits["cls"].shape == (1, 3)


def test_a_vit_without_linear_biases_but_with_norm_biases_is_refused():
    """One bias flag covers our linear layers and LayerNorms: timm's norms keep theirs without
    qkv / proj / MLP biases, so such a ViT is refused by the config, not failed in the load."""
    vit = randomized_vit(img_size=16, patch_size=4, qkv_bias=False, proj_bias=False, mlp_layer=functools.partial(timm.layers.Mlp, bias=False))
    with pytest.raises(ValueError, match=r"plain ViTs only; this one has \[\"norm1 bias=True \(its linear layers' False\)\""):
        vit_model_config(vit)


def test_a_new_head_keeps_the_pooled_features_norm():
    """skip_head (a new label set) drops timm's classifier only: an average-pooled ViT's fc_norm, the
    backbone's last norm there, keeps its trained weights, as timm keeps them."""
    vit = randomized_vit(img_size=16, patch_size=4, global_pool="avg", class_token=False)
    assert not isinstance(vit.fc_norm, torch.nn.Identity)
    model = load_timm_vit(MultimodalTransformer(vit_model_config(vit, num_classes=3)), vit.state_dict(), skip_head=True).eval()
    torch.testing.assert_close(model.heads["cls"].norm.weight.detach(), vit.fc_norm.weight.detach())
    tok = ImageTokenizer(image_size=16, patch_size=4, cls_token=False, mean=(0, 0, 0), std=(1, 1, 1))
    x = torch.rand(2, 3, 16, 16)
    out = model({"image": collate([tok.encode(i) for i in x])})
    head = model.heads["cls"]
    pooled = vit.forward_head(vit.forward_features(x), pre_logits=True)
    torch.testing.assert_close(out.logits["cls"], head.proj(pooled), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("crop_pct", [1.0, 0.875, 0.9])
@pytest.mark.parametrize("hw", [(375, 500), (480, 640), (500, 375), (224, 300), (231, 231), (224, 224)])
def test_resize_and_crop_follow_timm(hw, crop_pct):
    """timm's eval transform: shorter side to floor(224 / crop_pct), the longer truncated as
    torchvision's Resize(int), then the centre crop: the same pixels on the same float image."""
    import math

    from torchvision.transforms import v2

    g = torch.Generator().manual_seed(0)
    img = torch.nn.functional.interpolate(torch.rand(1, 3, 12, 16, generator=g), size=hw, mode="bilinear")[0]  # smooth, in [0, 1]
    tok = ImageTokenizer(image_size=224, patch_size=16, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), crop_pct=crop_pct)
    scale = math.floor(224 / crop_pct)
    steps = [] if hw == (224, 224) and crop_pct == 1 else [v2.Resize(scale, interpolation=v2.InterpolationMode.BICUBIC, antialias=True)]
    ref = v2.Compose([*steps, v2.CenterCrop(224)])(img)
    torch.testing.assert_close(tok.preprocess(img, "img"), ref, atol=1e-5, rtol=0)
    if hw == (224, 224):
        with pytest.raises(ValueError, match="crop_pct must lie in"):
            ImageTokenizer(crop_pct=1.5)
        with pytest.raises(ValueError, match="interpolation must be 'bicubic' or 'bilinear'"):
            ImageTokenizer(interpolation="nearest")


@pytest.mark.parametrize("hw", [(375, 500), (500, 375), (231, 231), (224, 161)])
def test_a_non_square_target_resizes_as_timms_resize_keep_ratio(hw):
    """A non-square image_size: timm's eval transform resizes with its ResizeKeepRatio (the binding
    side to floor(size / crop_pct), both sides rounded), then the centre crop."""
    import math

    from timm.data.transforms import ResizeKeepRatio
    from torchvision.transforms import v2

    g = torch.Generator().manual_seed(0)
    img = torch.nn.functional.interpolate(torch.rand(1, 3, 12, 16, generator=g), size=hw, mode="bilinear")[0]
    tok = ImageTokenizer(image_size=(224, 160), patch_size=16, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), crop_pct=0.9)
    size = ResizeKeepRatio.get_params(img, [math.floor(t / 0.9) for t in (224, 160)], longest=0.0)
    ref = v2.CenterCrop([224, 160])(v2.Resize(size, interpolation=v2.InterpolationMode.BICUBIC, antialias=True)(img))
    torch.testing.assert_close(tok.preprocess(img, "img"), ref, atol=1e-5, rtol=0)


def test_float_pil_images_one_scale_for_wide_integer_images_and_unknown_scales_refused():
    """PIL's 32-bit "I" images are 16-bit data, whatever their content (200 was read as 200/255 and
    300 as 300/65535: brighter pixels darker); arrays of int16 / int32 / int64 have no known scale
    and are refused, as audio's are; an image Pillow cannot convert is named."""
    from PIL import Image

    from tokenizers_mm.image import to_tensor

    assert to_tensor(Image.fromarray(np.full((4, 4), 0.5, np.float32)), 1).mean().item() == 0.5  # a float TIFF's mode "F"
    for value in (200, 300, 40000):
        assert to_tensor(Image.fromarray(np.full((4, 4), value, np.int32)), 1).mean().item() == pytest.approx(value / 65535)
    for dtype in (np.int64, np.int32, np.int16):
        with pytest.raises(ValueError, match=f"x.png: {np.dtype(dtype).name} pixels have no known scale; give uint8 \\(0-255\\), uint16"):
            to_tensor(np.full((4, 4), 200, dtype), 1, "x.png")
    for pixels, message in ((Image.fromarray(np.full((4, 4), 200.0, np.float32)), r"\[200, 200\]; expected floats in \[0, 1\] \(0-255 floats\?"),
                            (torch.full((3, 4, 4), -2.0), r"\[-2, -2\]; expected floats in \[0, 1\] \(already normalised\?")):  # fmt: skip
        with pytest.raises(ValueError, match=r"f.tif: float pixels span " + message):  # (augmentation's 8-bit step wrapped them)
            to_tensor(pixels, 1, "f.tif")
    tok = ImageTokenizer(image_size=32, patch_size=8)  # a resize's overshoot is no other scale: the tokenizer's own pixels read back
    stark = (np.random.default_rng(0).random((50, 70, 3)) > 0.5).astype(np.uint8) * 255
    assert tok.encode(tok.pixels(stark)).values.shape == (17, 192) and float(tok.pixels(stark).min()) < 0
    lab = Image.new("RGB", (8, 8)).convert("LAB")
    with pytest.raises(ValueError, match=r"lab.tif: a LAB image, which Pillow cannot convert to L \(conversion from LAB to RGB not supported\)"):
        ImageTokenizer(8, 4, channels=1, mean=(0.5,), std=(0.5,)).encode(lab, name="lab.tif")
    two = ImageTokenizer(8, 4, channels=2, mean=(0.5, 0.5), std=(0.5, 0.5))  # (two bands of a sensor: read as they are, nothing converts)
    assert two.encode(torch.rand(2, 8, 8)).values.shape == (5, 32)
    with pytest.raises(ValueError, match=r"grey.png: has 3 channels, expected 2 \(the tokenizer's channels=2: give arrays or tensors of 2 "
                                         r"channels; an image file or PIL image reads as RGB\)"):  # (was "expected 1, 3 or 4")
        two.encode(Image.new("L", (8, 8)), name="grey.png")


def test_open_image_applies_the_exif_orientation(tmp_path):
    from PIL import Image

    from tokenizers_mm import open_image

    from PIL import ImageOps

    pixels = np.zeros((20, 40, 3), dtype=np.uint8)  # 40 wide, 20 high as stored, a bright left end (a wrong turn moves it)
    pixels[:, :8] = 255
    img = Image.fromarray(pixels)
    exif = img.getexif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise to view
    img.save(tmp_path / "phone.png", exif=exif)  # PNG: lossless, so the pixels compare exactly
    upright = open_image(tmp_path / "phone.png")
    assert upright.size == (20, 40) and upright.getexif().get(0x0112) in (None, 1)  # 20 wide, 40 high
    assert np.array_equal(np.asarray(upright), np.asarray(ImageOps.exif_transpose(Image.open(tmp_path / "phone.png"))))
    assert np.asarray(upright)[:8].min() == 255 and np.asarray(upright)[8:].max() == 0  # the left end is now the top


def test_tokens_refuse_images_that_are_not_preprocessed_to_the_tokenizers_size():
    """tokens / tokens_batch cut (C, H, W) of image_size into patches: an (H, W, C) array, another
    size or integer pixels would be cut in the wrong places, so they are refused; encode resizes."""
    tok = ImageTokenizer(image_size=8, patch_size=4, channels=3, cls_token=False)
    assert len(tok.tokens(torch.rand(3, 8, 8))) == 4 and tok.tokens_batch(torch.rand(2, 3, 8, 8)).shape == (2, 4)
    for bad in (torch.rand(3, 4, 16), torch.rand(8, 8, 3), torch.randint(0, 255, (3, 8, 8), dtype=torch.uint8)):
        with pytest.raises(ImageError, match=r"image tokens: expected a preprocessed float tensor \(3, 8, 8\), got"):
            tok.tokens(bad)
    with pytest.raises(ImageError, match=r"expected a preprocessed float tensor \(B, 3, 8, 8\), got torch.float32 of shape \(3, 8, 8\)"):
        tok.tokens_batch(torch.rand(3, 8, 8))
    assert len(tok.encode(torch.rand(3, 4, 16))) == 4  # any size, resized


@pytest.mark.parametrize("crop_pct", [1.0, 0.9])
def test_an_8_bit_pil_image_gives_timms_eval_pixels_exactly(crop_pct):
    """An 8-bit PIL image is resized as PIL resizes it (in 8 bits), as timm's eval transform does:
    the same pixels, not a float resize a few grey levels away (up to 0.15 after normalising on noise)."""
    rng = np.random.default_rng(0)
    for image in (Image.fromarray(rng.integers(0, 256, (375, 500, 3), dtype=np.uint8)), Image.fromarray(rng.integers(0, 256, (300, 200), dtype=np.uint8)).convert("P")):
        tok = ImageTokenizer(image_size=224, patch_size=16, crop_pct=crop_pct)
        ref = timm.data.create_transform(input_size=(3, 224, 224), is_training=False, crop_pct=crop_pct, interpolation="bicubic")
        torch.testing.assert_close(tok.preprocess(image), ref(image.convert("RGB")), atol=1e-6, rtol=0)
