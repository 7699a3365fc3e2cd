"""Hugging Face datasets as a recipe's data= (`save_to_disk` folders, Parquet files as the Hub lays
them out): images with a ClassLabel (vit_folder), audio with transcripts (whisper_folder), text
(gpt_char) — real Arrow / Parquet files read by `datasets`, their images and audio decoded by our
own decoders (no torchcodec)."""

import io
import json

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

datasets = pytest.importorskip("datasets")

from recipes import gpt_char, vit_folder  # noqa: E402
from recipes.folders import HFRecord, hf_splits  # noqa: E402
from tokenizers_mm import ImageError, load_audio, open_image  # noqa: E402


@pytest.fixture(autouse=True)
def hf_cache(tmp_path, monkeypatch):
    """load_dataset's Arrow cache in the test's folder, not the user's ~/.cache/huggingface."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_cache")


def png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def image_dataset(n_per_class=10, corrupt_row=None):
    """Digits 0 and 1 of scikit-learn's 8×8 set as PNG bytes, labels a ClassLabel."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    rows = [(i, int(y)) for i, y in enumerate(digits.target) if y in (0, 1)]
    rows = [r for r in rows if r[1] == 0][:n_per_class] + [r for r in rows if r[1] == 1][:n_per_class]
    images = [{"bytes": png((digits.images[i] * 255 / 16).astype(np.uint8)), "path": None} for i, _ in rows]
    if corrupt_row is not None:
        images[corrupt_row] = {"bytes": images[corrupt_row]["bytes"][:40], "path": None}  # truncated PNG
    ds = datasets.Dataset.from_dict({"img": images, "label": [y for _, y in rows]})
    return ds.cast_column("img", datasets.Image()).cast_column("label", datasets.ClassLabel(names=["zero", "one"]))


def test_vit_folder_trains_on_a_saved_image_dataset(tmp_path):
    ds = image_dataset().shuffle(seed=0)
    datasets.DatasetDict({"train": ds.select(range(16)), "validation": ds.select(range(16, 20))}).save_to_disk(tmp_path / "digits")
    train, val = hf_splits(tmp_path / "digits", "image")
    assert len(train) == 16 and len(val) == 4 and {label for _, label in train} == {"zero", "one"}
    record = train[0][0]
    assert isinstance(record, HFRecord) and str(record) == f"{tmp_path / 'digits'}[train][0]"
    assert open_image(record).size == (8, 8)  # decoded by PIL from the row's bytes

    run = tmp_path / "run"
    cfg = vit_folder.Config(data=str(tmp_path / "digits"), image_size=8, patch_size=4, channels=1, run_dir=str(run), dim=32, depth=1,
                            num_heads=2, batch_size=8, max_steps=4, eval_every=4, ckpt_every=4, log_every=2, warmup_steps=1, cpu=True)  # fmt: skip
    metrics = vit_folder.main(cfg)
    assert 0 <= metrics["val_accuracy"] <= 1 and (run / "classes.txt").read_text().split() == ["one", "zero"]


def test_parquet_files_as_the_hub_lays_them_out(tmp_path):
    """A dataset repository's `data/train-00000-of-00001.parquet` + `data/validation-...` (what
    `huggingface-cli download --repo-type dataset` leaves), read offline; and one Parquet file."""
    ds = image_dataset().shuffle(seed=1)
    (tmp_path / "repo" / "data").mkdir(parents=True)
    ds.select(range(16)).to_parquet(tmp_path / "repo" / "data" / "train-00000-of-00001.parquet")
    ds.select(range(16, 20)).to_parquet(tmp_path / "repo" / "data" / "validation-00000-of-00001.parquet")
    (tmp_path / "repo" / "README.md").write_text("# digits\n")
    train, val = hf_splits(tmp_path / "repo", "image")
    assert len(train) == 16 and len(val) == 4 and str(train[2][0]) == f"{tmp_path / 'repo'}[train][2]"
    assert open_image(val[0][0]).size == (8, 8) and {label for _, label in train} == {"zero", "one"}
    cfg = vit_folder.Config(data=str(tmp_path / "repo" / "data" / "train-00000-of-00001.parquet"), image_size=8, patch_size=4, channels=1)
    train_set, val_set, classes = vit_folder.build_data(cfg)[:3]  # one file: a train split only, 10% held out
    assert len(train_set) + len(val_set) == 16 and classes == ["one", "zero"]


def test_a_bad_row_is_named_or_skipped(tmp_path):
    image_dataset(n_per_class=6, corrupt_row=3).save_to_disk(tmp_path / "digits")  # a Dataset: no splits, 10% held out
    cfg = vit_folder.Config(data=str(tmp_path / "digits"), image_size=8, patch_size=4, channels=1)
    with pytest.raises(ImageError, match=r"digits\[3\]: not an image file PIL can read .*skip_bad_samples=true"):
        vit_folder.build_data(cfg)
    cfg.skip_bad_samples = True
    train_set, val_set, _ = vit_folder.build_data(cfg)[:3]
    assert len(train_set) + len(val_set) == 11


def test_saved_dataset_layout_errors(tmp_path):
    datasets.DatasetDict({"test": image_dataset(2)}).save_to_disk(tmp_path / "no_train")
    with pytest.raises(ValueError, match="needs a 'train' split \\(it has test\\)"):
        hf_splits(tmp_path / "no_train", "image")
    image_dataset(2).remove_columns("label").save_to_disk(tmp_path / "no_label")
    with pytest.raises(ValueError, match="needs a ClassLabel or label column \\(columns: img \\(Image\\)\\)"):
        hf_splits(tmp_path / "no_label", "image")
    with pytest.raises(ValueError, match="no Audio column"):
        hf_splits(tmp_path / "no_label", "audio")


def test_whisper_folder_reads_a_saved_audio_dataset(tmp_path):
    """Audio rows as WAV / FLAC bytes at 16 and 8 kHz, transcripts in a `sentence` column (as
    Common Voice names it); the Audio column is read undecoded (datasets would need torchcodec)."""
    pytest.importorskip("espeakng_loader")
    from recipes import whisper_folder
    from recipes.speech import TRAIN_VOICES, make_corpus

    rows = make_corpus(tmp_path / "speech", 12, TRAIN_VOICES, seed=3)
    audio = []
    for i, r in enumerate(rows):
        wave, rate = sf.read(tmp_path / "speech" / r.file_name, dtype="float32")
        buf = io.BytesIO()
        sf.write(buf, wave[:: 1 + i % 2], rate // (1 + i % 2), format="FLAC" if i % 2 else "WAV")
        audio.append({"bytes": buf.getvalue(), "path": f"{i}.{'flac' if i % 2 else 'wav'}"})
    ds = datasets.Dataset.from_dict({"audio": audio, "sentence": [r.transcription.upper() for r in rows]})
    ds = ds.cast_column("audio", datasets.Audio(sampling_rate=16000))
    datasets.DatasetDict({"train": ds.select(range(10)), "validation": ds.select(range(10, 12))}).save_to_disk(tmp_path / "cv")
    train, val = hf_splits(tmp_path / "cv", "audio")
    wave, rate = load_audio(train[1][0])
    assert rate == 8000 and len(wave) > 1000 and train[1][1] == rows[1].transcription.upper()

    run = tmp_path / "run"
    cfg = whisper_folder.Config(data=str(tmp_path / "cv"), run_dir=str(run), dim=32, depth=1, dec_depth=1, num_heads=2, batch_size=4,
                                max_steps=2, eval_every=2, ckpt_every=2, log_every=1, warmup_steps=1, eval_utterances=2,
                                max_frames=600, cpu=True)  # fmt: skip
    metrics = whisper_folder.main(cfg)
    assert "val_wer" in metrics and json.loads((run / "results.json").read_text())["step"] == 2


def test_gpt_char_trains_on_a_saved_text_dataset(tmp_path, small_text):
    lines = small_text.read_text().splitlines()
    ds = datasets.Dataset.from_dict({"id": list(range(len(lines))), "text": lines})
    datasets.DatasetDict({"train": ds.select(range(len(lines) - 20)), "validation": ds.select(range(len(lines) - 20, len(lines)))}).save_to_disk(
        tmp_path / "corpus"
    )
    cfg = gpt_char.Config(data=str(tmp_path / "corpus"), block_size=16)
    train_text, val_text = gpt_char.split_text(cfg)
    assert train_text == "\n".join(t for t in lines[:-20] if t) and val_text == "\n".join(t for t in lines[-20:] if t)
    datasets.Dataset.from_dict({"id": [1, 2], "body": ["a", "b"], "title": ["c", "d"]}).save_to_disk(tmp_path / "two")
    with pytest.raises(ValueError, match="needs a 'text' column \\(string columns: body, title\\)"):
        gpt_char.split_text(gpt_char.Config(data=str(tmp_path / "two")))
    (tmp_path / "folder").mkdir()
    with pytest.raises(ValueError, match="is a folder; expected a UTF-8 text file or a Hugging Face dataset"):
        gpt_char.split_text(gpt_char.Config(data=str(tmp_path / "folder")))
