"""Hugging Face datasets as a recipe's data= (`save_to_disk` folders, Parquet files as the Hub lays
them out): images with a ClassLabel (vit_folder), audio with transcripts (whisper_folder), text
(gpt_char) — real Arrow / Parquet files read by `datasets`, their images and audio decoded by our
own decoders (no torchcodec)."""

import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

datasets = pytest.importorskip("datasets")

from recipes import gpt_char, vit_folder  # noqa: E402
from recipes.folders import HFRecord, hf_splits, is_hf_dataset, local_data  # noqa: E402
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


def raw_images(ds) -> list:
    """The img column undecoded: {"bytes", "path"} per row."""
    return list(ds.cast_column("img", datasets.Image(decode=False))["img"])


def test_vit_folder_trains_on_a_saved_image_dataset(tmp_path, capsys):
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
    # the ClassLabel's own order: output i is the dataset's label i (sorted by name, "zero" would have been output 1)
    assert 0 <= metrics["val_accuracy"] <= 1 and (run / "classes.txt").read_text().split() == ["zero", "one"]
    ds.rename_column("label", "digit").save_to_disk(tmp_path / "renamed")  # a run's label_column that other data lacks (eval --data
    cfg.label_column = "label"  # cannot change it): that data's own column, said
    scored = vit_folder.held_out(str(tmp_path / "renamed"))(cfg)[1]
    assert len(scored) == 20 and "renamed: read with the columns found as in any data, not the run's (" in capsys.readouterr().err


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
    assert len(train_set) + len(val_set) == 16 and classes == ["zero", "one"]  # (the ClassLabel's order)


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
    with pytest.raises(ValueError, match="the label column \\(a ClassLabel or label\\) is missing; name it with label_column= "
                                         "\\(columns: img \\(Image\\)\\)"):  # fmt: skip
        hf_splits(tmp_path / "no_label", "image")
    with pytest.raises(ValueError, match="the Audio column is missing; name it with audio_column="):
        hf_splits(tmp_path / "no_label", "audio")
    image_dataset(2).select(range(0)).save_to_disk(tmp_path / "empty")
    with pytest.raises(ValueError, match="empty.*: (no rows|not a dataset)"):
        hf_splits(tmp_path / "empty", "image")
    labels = datasets.Sequence(datasets.ClassLabel(names=["a", "b"]))
    multi = datasets.Dataset.from_dict({"img": raw_images(image_dataset(2)), "labels": [[0, 1]] * 4})
    multi.cast_column("img", datasets.Image()).cast_column("labels", labels).save_to_disk(tmp_path / "multi")
    with pytest.raises(ValueError, match="column 'labels' holds (Sequence|List) values \\(several labels per row\\?\\)"):
        hf_splits(tmp_path / "multi", "image")


def test_columns_are_chosen_or_named(tmp_path):
    """Two Image columns or two ClassLabels (CIFAR-100's fine / coarse): refused until named."""
    ds = image_dataset(2)
    ds = ds.add_column("mask", raw_images(ds)).cast_column("mask", datasets.Image())
    ds = ds.add_column("coarse", [0, 0, 0, 0]).cast_column("coarse", datasets.ClassLabel(names=["digit"]))
    ds.save_to_disk(tmp_path / "two")
    with pytest.raises(ValueError, match="the Image column could be any of img, mask; name it with image_column="):
        hf_splits(tmp_path / "two", "image")
    with pytest.raises(ValueError, match="the label column \\(a ClassLabel or label\\) could be any of label, coarse; name it with label_column="):
        hf_splits(tmp_path / "two", "image", ("img", ""))
    train, _ = hf_splits(tmp_path / "two", "image", ("img", "label"))
    assert [label for _, label in train] == ["zero", "zero", "one", "one"]
    with pytest.raises(ValueError, match="no column 'lable' \\(label_column=\\)"):
        hf_splits(tmp_path / "two", "image", ("img", "lable"))


def test_unlabelled_rows_relative_paths_saved_formats_and_split_names(tmp_path):
    """-1 labels (the Hub's "no label"): a test split without labels is not used for validation,
    a training row without one is refused or skipped; a row holding a path relative to the dataset
    reads that file from any working directory; a saved torch format is ignored; `dev` validates."""
    ds = image_dataset(4)
    unlabelled = ds.select(range(2)).map(lambda r: {"label": -1})
    datasets.DatasetDict({"train": ds, "test": unlabelled}).save_to_disk(tmp_path / "hub_test")
    train, val = hf_splits(tmp_path / "hub_test", "image")
    assert len(train) == 8 and val is None

    with_gap = ds.map(lambda r, i: {"label": -1 if i == 5 else r["label"]}, with_indices=True)
    with_gap.save_to_disk(tmp_path / "gap")
    cfg = vit_folder.Config(data=str(tmp_path / "gap"), image_size=8, patch_size=4, channels=1)
    with pytest.raises(ValueError, match=r"gap\[5\]: no label \(set skip_bad_samples=true"):
        vit_folder.build_data(cfg)
    cfg.skip_bad_samples = True
    assert sum(len(d) for d in vit_folder.build_data(cfg)[:2]) == 7

    (tmp_path / "rel" / "files").mkdir(parents=True)
    for i, image in enumerate(raw_images(ds)):
        (tmp_path / "rel" / "files" / f"{i}.png").write_bytes(image["bytes"])
    paths = datasets.Dataset.from_dict({"img": [{"bytes": None, "path": f"files/{i}.png"} for i in range(8)], "label": ds["label"]})
    paths = paths.cast_column("img", datasets.Image(decode=False)).cast_column("label", ds.features["label"])
    import pyarrow.parquet as pq

    pq.write_table(paths.data.table, tmp_path / "rel" / "train.parquet")  # note: to_parquet would embed the files' bytes
    with pytest.raises(ValueError, match="mixes Parquet files with other files"):  # the folder: is it images or a dataset?
        hf_splits(tmp_path / "rel", "image")
    train, _ = hf_splits(tmp_path / "rel" / "train.parquet", "image")  # the file: a dataset
    assert open_image(train[3][0]).size == (8, 8)  # resolved against the dataset's folder, not the working directory
    (tmp_path / "rel" / "files" / "3.png").unlink()
    with pytest.raises(ImageError, match=r"train.parquet\[train\]\[3\]: its file .*files/3.png does not exist"):
        open_image(train[3][0])

    torch_format = ds.with_format("torch", columns=["label"])
    datasets.DatasetDict({"train": torch_format, "dev": torch_format.select(range(2))}).save_to_disk(tmp_path / "fmt")
    train, val = hf_splits(tmp_path / "fmt", "image")
    assert len(train) == 8 and len(val) == 2 and str(val[0][0]).endswith("[dev][0]") and open_image(val[0][0]).size == (8, 8)


def test_a_stray_parquet_file_does_not_make_a_folder_a_dataset(tmp_path):
    from tests.test_vit_recipes import make_folder

    make_folder(tmp_path / "imgs", n=4)
    image_dataset(2).to_parquet(tmp_path / "imgs" / "circle" / "stats.parquet")
    assert vit_folder.find_splits(tmp_path / "imgs", vit_folder.Config())[0]  # one level down: still an image folder
    image_dataset(2).to_parquet(tmp_path / "imgs" / "stats.parquet")
    with pytest.raises(ValueError, match="imgs mixes Parquet files with other files .*: give data= the Parquet files' folder"):
        vit_folder.find_splits(tmp_path / "imgs", vit_folder.Config())
    for config in ("plain", "extra"):  # the Hub's converted layout, CONFIG/SPLIT/NNNN.parquet
        (tmp_path / "conv" / config / "train").mkdir(parents=True)
        image_dataset(2).to_parquet(tmp_path / "conv" / config / "train" / "0000.parquet")
    with pytest.raises(ValueError, match="conv holds the dataset configs extra, plain: give data=.*conv/CONFIG"):
        hf_splits(tmp_path / "conv", "image")
    assert len(hf_splits(tmp_path / "conv" / "plain", "image")[0]) == 4


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
    with pytest.raises(ValueError, match=r"cv\[train\]: audio_column=sentence holds string values, and the dataset's Audio column is audio: "
                                         r"give audio_column=audio"):  # fmt: skip  # (its transcripts were read as file paths)
        hf_splits(tmp_path / "cv", "audio", ("sentence", ""))

    run = tmp_path / "run"
    cfg = whisper_folder.Config(data=str(tmp_path / "cv"), run_dir=str(run), dim=32, depth=1, dec_depth=1, num_heads=2, batch_size=4,
                                max_steps=2, eval_every=2, ckpt_every=2, log_every=1, warmup_steps=1, eval_utterances=2,
                                max_frames=600, cpu=True)  # fmt: skip
    metrics = whisper_folder.main(cfg)
    assert "val_wer" in metrics and json.loads((run / "results.json").read_text())["step"] == 2
    # a test split whose transcripts are withheld (all empty, as the Hub's test sets): part of train is held out instead
    blank = ds.select(range(10, 12)).map(lambda row: {"sentence": ""})
    datasets.DatasetDict({"train": ds.select(range(10)), "test": blank}).save_to_disk(tmp_path / "withheld")
    train, val = hf_splits(tmp_path / "withheld", "audio")
    assert len(train) == 10 and val is None  # (it was the validation set: val_wer NaN, without a word)


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
    with pytest.raises(ValueError, match="the text column could be any of body, title; name it with text_column="):
        gpt_char.split_text(gpt_char.Config(data=str(tmp_path / "two")))
    (tmp_path / "folder").mkdir()
    with pytest.raises(ValueError, match="is a folder but not a dataset: it holds no .jsonl / .json / .csv / .tsv / .parquet file at its top, in data/ or in split "
                       "folders \\(train/, validation/\\); expected a UTF-8 text file, a JSON lines / CSV / TSV"):
        gpt_char.split_text(gpt_char.Config(data=str(tmp_path / "folder")))


def test_gpt_char_reads_json_lines_and_csv_rows_not_their_syntax(tmp_path, small_text, caplog, capsys):
    """A corpus as JSON lines (the usual form of an LLM corpus), CSV or compressed: the text column's
    rows are the text, not the file's braces and quotes; a folder of train / dev files gives both splits."""
    import gzip

    lines = [t for t in small_text.read_text().splitlines() if t][:200]
    rows = "".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(lines))
    (tmp_path / "c.jsonl").write_text(rows)
    (tmp_path / "c.jsonl.gz").write_bytes(gzip.compress(rows.encode()))
    (tmp_path / "c.json").write_text(json.dumps([{"text": t} for t in lines]))  # one JSON array
    datasets.Dataset.from_dict({"text": lines, "n": list(range(len(lines)))}).to_csv(tmp_path / "c.csv", index=False)
    for name in ("c.jsonl", "c.jsonl.gz", "c.json", "c.csv"):
        train, val = gpt_char.split_text(gpt_char.Config(data=str(tmp_path / name), val_fraction=0.1))
        assert train + val == "\n".join(lines), name  # the rows joined by newlines; 10% of them held out
    corpus = tmp_path / "corpus"
    (corpus / "data").mkdir(parents=True)
    (corpus / "README.md").write_text("# a corpus\n")
    (corpus / "data" / "train.jsonl").write_text(rows)
    (corpus / "data" / "dev.jsonl").write_text(json.dumps({"text": "held out"}) + "\n")
    assert gpt_char.split_text(gpt_char.Config(data=str(corpus))) == ("\n".join(lines), "held out")
    assert "unused" not in capsys.readouterr().err
    assert gpt_char.split_text(gpt_char.Config(data=str(corpus), val_fraction=0.3)) == ("\n".join(lines), "held out")
    assert f"gpt_char: val_fraction=0.3 unused: {corpus} has a validation split" in capsys.readouterr().err  # (was ignored unsaid)
    from recipes import whisper_folder
    from recipes.folders import say_unused

    say_unused(whisper_folder.Config(data="cv", val_group="client_id"), "whisper_folder", ("val_fraction", "val_group"))
    assert "whisper_folder: val_group=client_id unused: cv has a validation split" in capsys.readouterr().err
    (corpus / "data" / "extra.csv").write_text("text\nx\n")
    with pytest.raises(ValueError, match="corpus holds data files of several formats \\(csv, json\\); keep one"):
        gpt_char.split_text(gpt_char.Config(data=str(corpus)))
    (tmp_path / "bad.jsonl").write_text('{"text": "a"}\n{"text": broken}\n')
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "bad.json").write_text('[{"text": "a"},\n {"text": ]')
    with pytest.raises(ValueError, match=r"bad.json line 2: Expecting value"):  # a JSON array: the line in the document
        gpt_char.split_text(gpt_char.Config(data=str(tmp_path / "bad.json")))
    for name, reason in ((r"bad.jsonl", r".*bad.jsonl line 2: Expecting value"), ("empty.jsonl", "no rows: an empty file")):
        with pytest.raises(ValueError, match=f"{name}: not a dataset `datasets` can read here \\({reason}"):
            gpt_char.split_text(gpt_char.Config(data=str(tmp_path / name)))
    assert "Failed to load JSON" not in caplog.text  # (datasets' own log line before its error: the message says it)
    (tmp_path / "n.jsonl").write_text('{"n": 1}\n')
    with pytest.raises(ValueError, match=r"n.jsonl\[train\]: the text column is missing; name it with text_column="):
        gpt_char.split_text(gpt_char.Config(data=str(tmp_path / "n.jsonl")))


def test_text_eval_on_data_without_the_runs_column_reads_the_columns_found(tmp_path, small_text, capsys):
    """`mmtok eval RUN --data` of a text run whose text_column this data lacks: read as any data is,
    and said, as the folder recipes do (it was "no column 'body' (text_column=)")."""
    lines = [t for t in small_text.read_text().splitlines() if t][:300]
    (tmp_path / "c.jsonl").write_text("".join(json.dumps({"body": t, "title": "x"}) + "\n" for t in lines))
    (tmp_path / "d.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in lines[::-1]))
    cfg = gpt_char.Config(data=str(tmp_path / "c.jsonl"), text_column="body", run_dir=str(tmp_path / "run"), max_steps=2, dim=16, depth=1,
                          num_heads=1, block_size=16, batch_size=4, eval_batches=1, sample_tokens=0)  # fmt: skip
    gpt_char.main(cfg)
    scored = gpt_char.evaluate(tmp_path / "run", data=str(tmp_path / "d.jsonl"))
    assert scored["val_tokens"] > 1000 and "d.jsonl: read with the columns found as in any data, not the run's" in capsys.readouterr().err


def test_metadata_jsonl_and_data_files_beside_images(tmp_path):
    """imagefolder's metadata.jsonl serves as metadata.csv does; a labels.csv in an image folder does
    not turn it into a CSV dataset; both metadata files at once are refused."""
    from tests.test_vit_recipes import make_folder

    make_folder(tmp_path / "imgs", n=4)
    (tmp_path / "imgs" / "labels.csv").write_text("file_name,label\ncircle/0.png,a\n")
    assert len(vit_folder.find_splits(tmp_path / "imgs", vit_folder.Config())[0]) == 12  # class folders, not the CSV
    lines = [json.dumps({"file_name": f"{c}/{i}.png", "label": k, "note": [1]}) for k, c in enumerate(("circle", "square")) for i in range(4)]
    (tmp_path / "imgs" / "metadata.jsonl").write_text("\n".join(lines) + "\n\n")  # a blank last line
    train, val = vit_folder.find_splits(tmp_path / "imgs", vit_folder.Config())
    assert val is None and [(p.relative_to(tmp_path).as_posix(), y) for p, y in train[::4]] == [("imgs/circle/0.png", "0"), ("imgs/square/0.png", "1")]
    (tmp_path / "imgs" / "metadata.jsonl").write_text(lines[0] + "\n" + json.dumps({"file_name": "bar/0.png"}) + "\n")
    with pytest.raises(ValueError, match="metadata.jsonl, line 2: expected a value for label"):
        vit_folder.find_splits(tmp_path / "imgs", vit_folder.Config())
    (tmp_path / "imgs" / "metadata.jsonl").write_text(lines[0] + "\n[1, 2]\n")
    with pytest.raises(ValueError, match="metadata.jsonl, line 2: a JSON list; expected one object per line"):
        vit_folder.find_splits(tmp_path / "imgs", vit_folder.Config())
    (tmp_path / "imgs" / "metadata.csv").write_text("file_name,label\ncircle/0.png\n")  # a short row: its value is missing
    with pytest.raises(ValueError, match="imgs holds both metadata.csv and metadata.jsonl: keep one"):
        vit_folder.find_splits(tmp_path / "imgs", vit_folder.Config())
    (tmp_path / "imgs" / "metadata.jsonl").unlink()
    with pytest.raises(ValueError, match="metadata.csv, line 2: expected a value for label"):
        vit_folder.find_splits(tmp_path / "imgs", vit_folder.Config())
    # a row of more fields than the header (an unquoted comma cut the value short), a file named twice (it could land in both splits)
    (tmp_path / "imgs" / "metadata.csv").write_text('file_name,label\ncircle/0.png,"a, b"\ncircle/1.png,a, b\n')
    with pytest.raises(ValueError, match=r'metadata.csv, line 3: 3 fields, and the header names 2; a value holding a comma needs quotes'):
        vit_folder.find_splits(tmp_path / "imgs", vit_folder.Config())
    (tmp_path / "imgs" / "metadata.csv").write_text("file_name,label\ncircle/0.png,a\nsquare/0.png,b\n./circle/0.png,b\n")
    with pytest.raises(ValueError, match=r"metadata.csv, line 4: ./circle/0.png is named again \(first on line 2\); one row per file"):
        vit_folder.find_splits(tmp_path / "imgs", vit_folder.Config())


def test_a_text_corpus_folder_reads_its_data_files_only_and_says_why_not(tmp_path, capsys):
    """README / LICENSE files beside the corpus are not read as data (load_dataset alone would pick
    the commonest suffix); what blocks a folder is named; unusable text columns are named."""
    rows = "".join(json.dumps({"text": f"row {i}", "meta": {"n": i}, "none": None}) + "\n" for i in range(30))
    for name, write in (("jsonl", lambda d: (d / "corpus.jsonl").write_text(rows)),
                        ("parquet", lambda d: datasets.Dataset.from_dict({"text": [f"row {i}" for i in range(30)]}).to_parquet(d / "corpus.parquet"))):  # fmt: skip
        d = tmp_path / name
        d.mkdir()
        write(d)
        (d / "README.txt").write_text("about\nthis corpus\n")
        (d / "LICENSE.txt").write_text("MIT\n")
        (d / "LICENSE").write_text("MIT\n")
        (d / "info.json").write_text(json.dumps({"name": "corpus", "license": "MIT"}))  # a repository's JSON, not data
        train, val = gpt_char.split_text(gpt_char.Config(data=str(d), val_fraction=0.1))
        assert (train + val).split("\n") == [f"row {i}" for i in range(30)], name  # the corpus, not the README
    (tmp_path / "jsonl" / "notes.ipynb").write_text("{}")
    with pytest.raises(ValueError, match="jsonl is a folder but not a dataset: beside corpus.jsonl it holds notes.ipynb, which is not a data file"):
        gpt_char.split_text(gpt_char.Config(data=str(tmp_path / "jsonl")))
    (tmp_path / "c.ndjson").write_text(rows)
    for column, holds in (("meta", "objects with the fields n \\(name one: text_column=meta.FIELD\\)"), ("none", "only nulls"), ("meta.n", "int64 values, e.g. row 0: int \\d+")):
        with pytest.raises(ValueError, match=f"c.ndjson\\[train\\]: column '{column}' holds {holds}; expected text"):
            gpt_char.split_text(gpt_char.Config(data=str(tmp_path / "c.ndjson"), text_column=column))
    (tmp_path / "nested.jsonl").write_text("".join(json.dumps({"doc": {"body": f"line {i}"}}) + "\n" for i in range(10)))
    train, val = gpt_char.split_text(gpt_char.Config(data=str(tmp_path / "nested.jsonl"), text_column="doc.body", val_fraction=0.0))
    assert train == "\n".join(f"line {i}" for i in range(10))
    (tmp_path / "mixed.jsonl").write_text('{"text": "a"}\n{"text": 5}\n')  # `datasets` reads it as a Json column: the row named
    with pytest.raises(ValueError, match=r"mixed.jsonl\[train\]: column 'text' holds values of mixed types, e.g. row 1: int 5; expected text"):
        gpt_char.split_text(gpt_char.Config(data=str(tmp_path / "mixed.jsonl")))
    (tmp_path / "nulls.jsonl").write_text('{"text": null}\n' * 3)
    with pytest.raises(ValueError, match="column 'text' holds only nulls; expected text"):
        gpt_char.split_text(gpt_char.Config(data=str(tmp_path / "nulls.jsonl")))
    (tmp_path / "some.jsonl").write_text('{"text": "one"}\n{"text": null}\n{"text": ""}\n{"text": "two"}\n')  # left out, and counted
    assert gpt_char.split_text(gpt_char.Config(data=str(tmp_path / "some.jsonl"), val_fraction=0.0))[0] == "one\ntwo"
    assert "some.jsonl[train]: 2 of 4 rows have no 'text' text (null or empty); left out" in capsys.readouterr().err
    (tmp_path / "latin1.jsonl").write_bytes('{"text": "caf\xe9"}\n'.encode("latin-1"))
    with pytest.raises(ValueError, match="latin1.jsonl"):
        gpt_char.split_text(gpt_char.Config(data=str(tmp_path / "latin1.jsonl")))


def test_tsv_files_and_split_folders_of_data_files(tmp_path, small_text, capsys):
    """A tab-separated corpus (commas inside the text stay text); split folders of JSON lines as
    the Hub holds them (train/part-0.jsonl, validation/part-0.jsonl); an audio folder's split folders
    with metadata.jsonl stay an audio folder."""
    lines = [t for t in small_text.read_text().splitlines() if t and "\t" not in t and '"' not in t][:100]
    (tmp_path / "c.tsv").write_text("id\ttext\n" + "".join(f"{i}\t{t}\n" for i, t in enumerate(lines)))
    train, val = gpt_char.split_text(gpt_char.Config(data=str(tmp_path / "c.tsv"), val_fraction=0.0))
    assert train == "\n".join(lines) and any("," in t for t in lines)
    # cells are text as written: a quote is a character in TSV, and "NA" / "null" are words (CSV too)
    (tmp_path / "q.tsv").write_text('text\n"Quoted" at start\nNA\nnull\n"unbalanced\n')
    assert gpt_char.split_text(gpt_char.Config(data=str(tmp_path / "q.tsv"), val_fraction=0.0))[0] == '"Quoted" at start\nNA\nnull\n"unbalanced'
    assert "CSV quoting" not in capsys.readouterr().err  # (a quote that opens a sentence: no CSV quoting)
    # pandas' to_csv(sep="\t") quotes cells holding a newline or a quote: read as written, and said; with a quoted tab, refused, and said
    (tmp_path / "pandas.tsv").write_text('text\nplain\n"two\nlines"\n"he said ""hi"""\n"Who\'s there?"\n')
    assert gpt_char.split_text(gpt_char.Config(data=str(tmp_path / "pandas.tsv"), val_fraction=0.0))[0] == \
        'plain\n"two\nlines"\n"he said ""hi"""\n"Who\'s there?"'
    assert "pandas.tsv: 1 cells (in its first 10,000 lines) are in CSV quoting" in capsys.readouterr().err  # (not the quotation)
    (tmp_path / "tab.tsv").write_text('text\nplain\n"a\tb"\n"say ""c"""\n')
    with pytest.raises(ValueError, match=r"tab.tsv: not a dataset .*\); 1 cells of tab.tsv are in CSV quoting: a quoted tab\?"):
        gpt_char.split_text(gpt_char.Config(data=str(tmp_path / "tab.tsv")))
    (tmp_path / "long.tsv").write_text("text\n" + "x" * 200_000 + "\nshort\n")  # a cell over csv's 128 KiB field limit: read, not refused
    assert gpt_char.split_text(gpt_char.Config(data=str(tmp_path / "long.tsv"), val_fraction=0.0))[0] == "x" * 200_000 + "\nshort"
    (tmp_path / "na.csv").write_text('text\nNA\n"a, b"\nnull\n')
    assert gpt_char.split_text(gpt_char.Config(data=str(tmp_path / "na.csv"), val_fraction=0.0))[0] == "NA\na, b\nnull"
    (tmp_path / "header.tsv").write_text("text\n")
    with pytest.raises(ValueError, match="header.tsv: not a dataset `datasets` can read here \\(no rows: an empty file"):
        gpt_char.split_text(gpt_char.Config(data=str(tmp_path / "header.tsv")))
    corpus = tmp_path / "corpus"
    for split, part in (("train", lines[:60]), ("train", lines[60:90]), ("validation", lines[90:])):
        (corpus / split).mkdir(parents=True, exist_ok=True)
        n = len(list((corpus / split).iterdir()))
        (corpus / split / f"part-{n}.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in part))
    (corpus / "README.md").write_text("# a corpus\n")
    train, val = gpt_char.split_text(gpt_char.Config(data=str(corpus)))
    assert sorted(train.split("\n")) == sorted(lines[:90]) and val == "\n".join(lines[90:])
    other = tmp_path / "other"  # split folders as `datasets` names them: training/ and eval/ (its test split), under data/
    for split, part in (("training", lines[:10]), ("eval", lines[10:12])):
        (other / "data" / split).mkdir(parents=True)
        (other / "data" / split / "part-0.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in part))
    assert gpt_char.split_text(gpt_char.Config(data=str(other))) == ("\n".join(lines[:10]), "\n".join(lines[10:12]))
    (corpus / "train.jsonl").write_text(json.dumps({"text": "named by split"}) + "\n")  # a file named by split beside split folders
    with pytest.raises(ValueError, match="corpus holds data files both in split folders \\(train/part-0.jsonl\\) and named by split \\(train.jsonl\\)"):
        gpt_char.split_text(gpt_char.Config(data=str(corpus)))
    (corpus / "train.jsonl").unlink()
    (corpus / "validation" / "notes.wav").write_bytes(b"RIFF")
    with pytest.raises(ValueError, match="corpus is a folder but not a dataset: beside train/part-0.jsonl it holds validation/notes.wav"):
        gpt_char.split_text(gpt_char.Config(data=str(corpus)))
    audio = tmp_path / "audio" / "train"
    audio.mkdir(parents=True)
    (audio / "metadata.jsonl").write_text(json.dumps({"file_name": "a.wav", "transcription": "hi"}) + "\n")
    (audio / "a.wav").write_bytes(b"RIFF")
    assert not is_hf_dataset(tmp_path / "audio")


def hub_snapshot(cache, repo: str, files: dict[str, bytes], revision: str = "0123abcd") -> Path:
    """A dataset repository as huggingface_hub's cache holds it: refs/main names the snapshot, whose
    files are links to their blobs."""
    import hashlib

    repo_dir = cache / f"datasets--{repo.replace('/', '--')}"
    (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
    (repo_dir / "refs" / "main").write_text(revision)
    snapshot = repo_dir / "snapshots" / revision
    for name, data in files.items():
        blob = repo_dir / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        (snapshot / name).parent.mkdir(parents=True, exist_ok=True)
        (snapshot / name).symlink_to(os.path.relpath(blob, (snapshot / name).parent))
    return snapshot


def test_data_may_be_a_dataset_id_in_the_local_hugging_face_cache(tmp_path, monkeypatch):
    """data=owner/name reads the dataset's snapshot in the Hugging Face cache (linked files
    included), offline; a dataset that is not there is named with how to get it."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    buf = io.BytesIO()
    datasets.Dataset.from_dict({"text": [f"line {i}" for i in range(40)]}).to_parquet(buf)
    val = io.BytesIO()
    datasets.Dataset.from_dict({"text": ["held out"]}).to_parquet(val)
    hub_snapshot(tmp_path / "hub", "me/corpus", {"README.md": b"# corpus\n", "data/train-00000-of-00001.parquet": buf.getvalue(),
                                                 "data/validation-00000-of-00001.parquet": val.getvalue()})  # fmt: skip
    train, held = gpt_char.split_text(gpt_char.Config(data="me/corpus"))
    assert train == "\n".join(f"line {i}" for i in range(40)) and held == "held out"
    hub_snapshot(tmp_path / "hub", "me/multi", {"a/train/0.parquet": buf.getvalue(), "b/train/0.parquet": val.getvalue()})  # two configs
    with pytest.raises(ValueError, match="holds the dataset configs a, b: .*data=OWNER/NAME/CONFIG"):
        gpt_char.split_text(gpt_char.Config(data="me/multi"))
    assert gpt_char.split_text(gpt_char.Config(data="me/multi/b", val_fraction=0.0))[0] == "held out"
    with pytest.raises(FileNotFoundError, match="data=me/multi/c: the cached dataset me/multi has no config folder 'c'"):
        gpt_char.split_text(gpt_char.Config(data="me/multi/c"))
    from tests.test_vit_recipes import make_folder

    make_folder(tmp_path / "imgs", classes=("circle", "square"), n=3)
    files = {f"{c}/{i}.png": (tmp_path / "imgs" / c / f"{i}.png").read_bytes() for c in ("circle", "square") for i in range(3)}
    rows = "".join(f"{name},{name.split('/')[0]}\n" for name in files)
    hub_snapshot(tmp_path / "hub", "me/shapes", {**files, "metadata.csv": ("file_name,label\n" + rows).encode()})
    train, val = vit_folder.find_splits(local_data("me/shapes"), vit_folder.Config())
    assert val is None and sorted(label for _, label in train) == ["circle"] * 3 + ["square"] * 3
    assert all(open_image(path).size == (20, 20) for path, _ in train)  # the links to the blobs are read
    with pytest.raises(FileNotFoundError, match="data=me/missing: no such file or folder, and as a Hugging Face dataset id it is not in "
                                                "the local Hugging Face cache .*hf download me/missing --repo-type dataset"):  # fmt: skip
        gpt_char.split_text(gpt_char.Config(data="me/missing"))
    with pytest.raises(FileNotFoundError, match=r"^data=data/shakespeare_char/input.txt: no such file$"):  # a mistyped path, not a dataset id
        gpt_char.split_text(gpt_char.Config(data="data/shakespeare_char/input.txt"))
    # a folder that links out of the data folder still counts as outside it (only files may be links)
    outside = tmp_path / "elsewhere"
    make_folder(outside, classes=("circle",), n=1)
    imgs = tmp_path / "linked"
    imgs.mkdir()
    (imgs / "out").symlink_to(outside)
    (imgs / "metadata.csv").write_text("file_name,label\nout/circle/0.png,circle\n")
    with pytest.raises(ValueError, match="file_name 'out/circle/0.png' points outside the data folder"):
        vit_folder.find_splits(imgs, vit_folder.Config())


def test_metadata_and_data_files_are_read_whole_and_only_from_the_folder(tmp_path):
    """Found in review: a CSV's empty cell is no value (datasets reads it as null), a JSON string may
    hold U+2028, a metadata file that is not UTF-8 is named; a data file named by no split joins
    train beside train.jsonl, a .PARQUET file counts; a dataset card's data_files may not point
    outside the folder; images in a linked sub-folder of a class are found."""
    from recipes.folders import hf_source
    from tests.test_vit_recipes import make_folder

    make_folder(tmp_path / "imgs", n=2)
    meta = tmp_path / "imgs" / "metadata.csv"
    meta.write_text("file_name,label\ncircle/0.png,a\ncircle/1.png, \n")
    with pytest.raises(ValueError, match="metadata.csv, line 3: expected a value for label"):
        vit_folder.find_splits(tmp_path / "imgs", vit_folder.Config())
    from recipes.folders import read_metadata

    assert [y for _, y in read_metadata(meta, "label", empty_ok=True)] == ["a", " "]  # a silent clip's transcript may be empty
    meta.write_bytes("file_name,label\ncircle/0.png,caf\xe9\n".encode("cp1252"))
    with pytest.raises(ValueError, match=r"metadata.csv: not UTF-8 text \(byte 32: invalid continuation byte\); save it as UTF-8"):
        vit_folder.find_splits(tmp_path / "imgs", vit_folder.Config())
    meta.unlink()
    (tmp_path / "imgs" / "metadata.jsonl").write_text(json.dumps({"file_name": "circle/0.png", "label": "one\u2028two"}, ensure_ascii=False) + "\n")
    assert [y for _, y in vit_folder.find_splits(tmp_path / "imgs", vit_folder.Config())[0]] == ["one\u2028two"]
    (tmp_path / "imgs" / "metadata.jsonl").unlink()
    (tmp_path / "more").mkdir()
    Image.new("L", (8, 8)).save(tmp_path / "more" / "linked.png")
    os.symlink(tmp_path / "more", tmp_path / "imgs" / "circle" / "more")
    os.symlink(tmp_path / "imgs" / "circle", tmp_path / "imgs" / "circle" / "loop")  # a link to itself is walked once, not forever
    names = sorted(p.name for p, y in vit_folder.find_splits(tmp_path / "imgs", vit_folder.Config())[0] if y == "circle")
    assert names == ["0.png", "1.png", "linked.png"]

    rows = lambda split: "".join(json.dumps({"text": f"{split} {i}"}) + "\n" for i in range(3))  # noqa: E731
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for name in ("train", "extra", "test"):
        (corpus / f"{name}.jsonl").write_text(rows(name))
    with pytest.raises(ValueError, match="corpus: extra.jsonl is named by no split beside the train, test files, and would not be read"):
        hf_source(corpus)  # datasets' patterns would skip it silently
    (corpus / "extra.jsonl").rename(corpus / "train-extra.jsonl")
    builder, files = hf_source(corpus)
    assert builder == "json" and [Path(f).name for f in files["train"]] == ["train-extra.jsonl", "train.jsonl"]
    shards = tmp_path / "shards"
    shards.mkdir()
    for i, suffix in enumerate((".parquet", ".PARQUET")):
        datasets.Dataset.from_dict({"text": [f"part {i}"]}).to_parquet(shards / f"part-{i}{suffix}")
    assert [Path(f).name for f in hf_source(shards)[1]["train"]] == ["part-0.parquet", "part-1.PARQUET"]
    (tmp_path / "secret.csv").write_text("text\nsecret\n")
    for pattern in (str(tmp_path / "secret.csv"), "../secret.csv", "hf://datasets/someone/else/*.csv"):
        (shards / "README.md").write_text(f"---\nconfigs:\n- config_name: default\n  data_files:\n  - split: train\n    path: {pattern}\n---\n")
        with pytest.raises(ValueError, match="README.md: data_files / data_dir .* points outside"):
            hf_source(shards)
    (shards / "README.md").write_text("---\nconfigs:\n- config_name: default\n  data_dir: ../elsewhere\n---\n")
    with pytest.raises(ValueError, match="data_files / data_dir '../elsewhere' points outside"):
        hf_source(shards)


def test_the_bad_json_line_finder_names_only_real_faults(tmp_path):
    """first_bad_json_line (the error path of a JSON file `datasets` could not read) names the first
    line that is not JSON, and nothing for valid JSON: one object over several lines, a string with a
    U+2028 in it, or a compressed file too damaged to re-read (datasets' own reason then stands)."""
    import gzip

    from recipes.folders import first_bad_json_line

    (tmp_path / "pretty.json").write_text('{\n  "text": ["a", "b"]\n}\n')
    (tmp_path / "sep.jsonl").write_text('{"text": "a\u2028b"}\n{"text": "c"}\n', encoding="utf-8")
    (tmp_path / "bad.jsonl.gz").write_bytes(gzip.compress(b'{"text": "a"}\n{"text": ]\n'))
    (tmp_path / "cut.jsonl.gz").write_bytes(gzip.compress(b'{"text": "a"}\n' * 100)[:30])
    assert first_bad_json_line({"train": [str(tmp_path / "pretty.json"), str(tmp_path / "sep.jsonl")]}) is None
    assert first_bad_json_line({"train": str(tmp_path / "bad.jsonl.gz")}) == f"{tmp_path / 'bad.jsonl.gz'} line 2: Expecting value"
    assert first_bad_json_line({"train": str(tmp_path / "cut.jsonl.gz")}) is None
