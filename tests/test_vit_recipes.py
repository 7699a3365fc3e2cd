"""ViT recipes end to end on real files: digits, an image folder with bad files, timm weights,
predict and show."""

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from recipes import vit, vit_digits, vit_folder
from recipes.vit import predict, show
from tokenizers_mm import ImageError, open_image

TINY = dict(dim=32, depth=2, num_heads=2, batch_size=32, max_steps=20, eval_every=20, ckpt_every=20, log_every=10, warmup_steps=5, cpu=True)


def test_vit_digits_trains_predicts_and_shows(tmp_path):
    run = tmp_path / "run"
    metrics = vit_digits.main(vit_digits.Config(run_dir=str(run), **{**TINY, "max_steps": 500, "eval_every": 500, "batch_size": 64, "lr": 3e-3}))
    assert metrics["val_accuracy"] > 0.3  # 500 steps of a tiny model: well above chance (0.1)
    train_set, test_set, classes, _ = vit_digits.build_data(vit_digits.Config())
    assert (len(train_set), len(test_set)) == (1437, 360)  # the fixed stratified split
    img, label = test_set[0]
    Image.fromarray((img[0].numpy() * 255).astype(np.uint8)).save(tmp_path / "digit.png")
    (result,) = predict(run, [tmp_path / "digit.png"], top_k=3)
    assert len(result["top"]) == 3 and result["top"][0]["prob"] >= result["top"][1]["prob"]
    assert predict(run, str(tmp_path / "digit.png"), top_k=3) == [result]  # one path as a string: not a list of its letters
    (auto,) = predict(run, [tmp_path / "digit.png"], top_k=3, device="auto")  # the GPU when there is one (`mmtok predict --device`)
    assert [t["label"] for t in auto["top"]] == [t["label"] for t in result["top"]]
    assert [t["prob"] for t in auto["top"]] == pytest.approx([t["prob"] for t in result["top"]], abs=1e-3)
    assert vit_digits.evaluate(run, device="auto")["val_accuracy"] == pytest.approx(metrics["val_accuracy"], abs=1 / 360)
    out = show(tmp_path / "digit.png", tmp_path / "digit_patches.png", run_dir=run)
    assert out.stat().st_size > 2000
    from recipes.cli import main  # the run's tokenizer sets size and patches: --image-size beside --run is refused, not ignored

    assert main(["show", str(tmp_path / "digit.png"), "--run", str(run), "--image-size", "64"]) == 2
    assert main(["show", str(tmp_path / "digit.png"), "--image-size", "32", "--patch-size", "8", "--out", str(tmp_path / "p.png")]) == 0


def make_folder(root, classes=("circle", "square", "bar"), n=12, size=20):
    rng = np.random.default_rng(0)
    for k, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            a = np.zeros((size, size, 3), dtype=np.uint8)
            c = rng.integers(4, size - 4, 2)
            if k == 0:
                yy, xx = np.ogrid[:size, :size]
                a[(yy - c[0]) ** 2 + (xx - c[1]) ** 2 < 12] = (255, 80, 80)
            elif k == 1:
                a[c[0] - 3 : c[0] + 3, c[1] - 3 : c[1] + 3] = (80, 255, 80)
            else:
                a[:, c[1] - 1 : c[1] + 1] = (80, 80, 255)
            Image.fromarray(a).save(root / name / f"{i}.png")


def test_vit_folder_trains_and_counts_bad_files(tmp_path, capsys):
    data = tmp_path / "imgs"
    make_folder(data)
    (data / "circle" / "zero.png").write_bytes(b"")
    (data / "square" / "notes.png").write_text("not an image")
    (data / "square" / "notes.txt").write_text("not an image extension: skipped, as hidden files and folders are")
    (data / "square" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (data / ".ipynb_checkpoints").mkdir()
    good = (data / "bar" / "0.png").read_bytes()
    (data / "bar" / "cut.png").write_bytes(good[: len(good) // 2])
    Image.fromarray(np.full((20, 20), 40000, dtype=np.uint16)).save(data / "bar" / "deep.png")  # 16-bit: fine
    Image.fromarray(np.zeros((20, 20, 3), dtype=np.uint8)).convert("CMYK").save(data / "square" / "cmyk.jpg")  # fine
    Image.fromarray(np.zeros((2, 2, 3), dtype=np.uint8)).save(data / "square" / "tiny.png")  # resized up: fine

    cfg = vit_folder.Config(data=str(data), image_size=16, patch_size=4, **TINY)
    with pytest.raises(ImageError, match=r"zero.png: the file is empty|notes.png: not an image|cut.png: corrupt"):
        vit_folder.build_data(cfg)
    run = tmp_path / "run"
    metrics = vit_folder.main(vit_folder.Config(data=str(data), image_size=16, patch_size=4, skip_bad_samples=True, run_dir=str(run), **TINY))
    assert "skipped 3 unreadable image(s)" in capsys.readouterr().err  # (stderr: stdout is eval's JSON)
    with pytest.MonkeyPatch.context() as mp:  # the launch's other processes read the same files: they stay quiet
        mp.setenv("RANK", "1")
        assert len(vit_folder.build_data(vit_folder.Config(data=str(data), image_size=16, patch_size=4, skip_bad_samples=True, **TINY))[0])
        assert "skipped" not in capsys.readouterr().err
    assert 0 <= metrics["val_accuracy"] <= 1
    (data / "onlybad").mkdir()  # a class whose every image is unreadable: refused, not dropped from the classifier unsaid
    (data / "onlybad" / "fake.png").write_text("not an image")
    with pytest.raises(ValueError, match=r"every training image of class\(es\) \['onlybad'\] was skipped as unreadable"):
        vit_folder.build_data(vit_folder.Config(data=str(data), image_size=16, patch_size=4, skip_bad_samples=True, **TINY))
    shutil.rmtree(data / "onlybad")
    assert (run / "classes.txt").read_text().split() == ["bar", "circle", "square"]
    split = json.loads((run / "split.json").read_text())  # the split drawn, by name within the folder: resume and eval read it
    held = split["held_out"]
    assert held and all((data / name).is_file() for name in held + split["train"])
    from recipes.folders import sample_key
    from recipes.runs import load_run_info

    again, held_again, _, _ = vit_folder.build_data(load_run_info(run)[2])  # as a resume reads it: both shares in their order
    assert [sample_key(p, data) for p, _ in again.pairs] == split["train"] and [sample_key(p, data) for p, _ in held_again.pairs] == held
    evaluated = vit_folder.evaluate(run)
    gone = data / held[0]
    kept = gone.read_bytes()
    gone.unlink()
    with pytest.raises(ValueError, match=rf"1 of the {len(held)} samples the run held out \(.*split.json\) are no longer in the data, e.g. {held[0]}"):
        vit_folder.evaluate(run)
    gone.write_bytes(kept)
    assert vit_folder.evaluate(run) == evaluated
    trained = data / split["train"][0]
    trained.rename(tmp_path / "away")  # a training image gone: eval reads the held-out images alone
    capsys.readouterr()
    assert vit_folder.evaluate(run) == evaluated and "training samples" not in capsys.readouterr().err
    fewer, _, _, _ = vit_folder.build_data(load_run_info(run)[2])  # a resume trains on without it, and says so
    assert len(fewer.pairs) == len(split["train"]) - 1
    assert (f"1 of the {len(split['train'])} training samples the run recorded (" in (err := capsys.readouterr().err)
            and f"are no longer in the data, e.g. {split['train'][0]}: it trains on without them" in err), err
    (tmp_path / "away").rename(trained)
    (data / "circle" / "added.png").write_bytes(trained.read_bytes())  # an image added: it trains too, last, and that is said
    more, _, _, _ = vit_folder.build_data(load_run_info(run)[2])
    assert [sample_key(p, data) for p, _ in more.pairs] == split["train"] + ["circle/added.png"]
    assert "1 sample(s) added since the run began (e.g. circle/added.png) train too, after the recorded ones" in capsys.readouterr().err
    vit_folder.evaluate(run)  # (an evaluation reads the held-out images: nothing to say)
    assert "added since" not in capsys.readouterr().err
    (data / "circle" / "added.png").unlink()
    (result,) = predict(run, [data / "circle" / "1.png"])
    assert result["top"][0]["label"] in ("bar", "circle", "square")
    (result,) = predict(run, [data / "square" / "tiny.png"])  # 2×2 pixels, smaller than a patch: resized, as training read it
    assert result["top"][0]["label"] in ("bar", "circle", "square")
    # a folder: its image files at any depth, sorted, other files passed over; in batches, as one by one
    (data / "circle" / "deeper").mkdir()
    (data / "circle" / "deeper" / "2.png").write_bytes((data / "circle" / "2.png").read_bytes())
    (data / "circle" / "readme.txt").write_text("not an image")
    (data / "circle" / "notes.pdf").write_bytes(b"%PDF-1.4")  # a format PIL writes but cannot read: passed over too
    with pytest.raises(ImageError, match="zero.png: the file is empty"):  # an unreadable image is named, in a folder too
        predict(run, [data / "circle"])
    (data / "circle" / "zero.png").unlink()
    expected = sorted(str(p) for p in (data / "circle").rglob("*.png"))
    batched = predict(run, [data / "circle"], batch_size=5)
    assert [r["file"] for r in batched] == expected and batched == predict(run, [data / "circle"], batch_size=64)
    one = {r["file"]: r["top"] for r in (predict(run, [f])[0] for f in expected[:3])}
    for r in batched[:3]:
        assert [t["label"] for t in r["top"]] == [t["label"] for t in one[r["file"]]]
        assert [t["prob"] for t in r["top"]] == pytest.approx([t["prob"] for t in one[r["file"]]], abs=2e-4)
    from recipes.cli import main

    capsys.readouterr()
    assert main(["predict", str(run), str(data / "circle"), "--top-k", "2", "--output-file", str(tmp_path / "out" / "labels.csv")]) == 0
    rows = (tmp_path / "out" / "labels.csv").read_text().splitlines()
    assert rows[0] == "file,label_1,prob_1,label_2,prob_2" and len(rows) == 1 + len(expected)
    assert rows[1].split(",")[:2] == [expected[0], batched[0]["top"][0]["label"]]
    assert main(["predict", str(run), str(data / "circle" / "1.png"), "--output-file", str(tmp_path / "labels.json")]) == 0
    assert json.loads((tmp_path / "labels.json").read_text())[0]["file"] == str(data / "circle" / "1.png")
    # another labelled folder, all of it held out (`mmtok eval RUN --data PATH`); a label the run never learned is named
    make_folder(tmp_path / "more", classes=("circle", "bar"), n=4)
    capsys.readouterr()
    assert main(["eval", str(run), "--data", str(tmp_path / "more")]) == 0
    assert 0 <= json.loads(capsys.readouterr().out)["val_accuracy"] <= 1
    acc = vit_folder.evaluate(run, data=str(tmp_path / "more"))["val_accuracy"]
    assert acc == pytest.approx(np.mean([r["top"][0]["label"] == Path(r["file"]).parent.name for r in predict(run, [tmp_path / "more"])]))
    own = vit_folder.evaluate(run)  # --data naming the run's own folder: its held-out share, as without (all of it holds the training images)
    capsys.readouterr()
    assert vit_folder.evaluate(run, data=str(data)) == own and f"{data} is the data {run} trained on" in capsys.readouterr().err
    subset = tmp_path / "subset" / "circle"  # the run's own images in another folder (linked): the score is said not to be a held-out one
    subset.mkdir(parents=True)
    circles = sorted((data / "circle").glob("*.png"))
    for f in circles:
        (subset / f.name).symlink_to(f)
    recorded = set(json.loads((run / "split.json").read_text())["train"])  # (the run drew its split: the training share it recorded)
    trained = sum(os.path.relpath(f, data) in recorded for f in circles)
    vit_folder.evaluate(run, data=str(tmp_path / "subset"))
    assert 0 < trained and f"{trained} of the {len(circles)} files scored are among those the run trained on" in capsys.readouterr().err
    make_folder(tmp_path / "new", classes=("circle", "star"), n=2)
    assert main(["eval", str(run), "--data", str(tmp_path / "new")]) == 2
    assert "labels ['star'] are not among the run's 3 classes (bar, circle, square)" in capsys.readouterr().err
    (tmp_path / "nothing").mkdir()
    capsys.readouterr()
    for args, message in ((["--output-file", "x.txt"], "write .csv"), ([], "image folder")):
        assert main(["predict", str(run), str(tmp_path / "nothing"), *args]) == 2
        assert message in capsys.readouterr().err


@pytest.mark.parametrize("case, message", [("one_class", "needs at least 2"), ("empty_class", "is empty"), ("escape", "outside the data folder"),
                                           ("missing", "does not exist"), ("flat", "no labelled images: put each class's images in a sub-folder"),
                                           ("file", "0.png is a file, not a data folder: expected a folder"),
                                           ("singletons", "2 images, each class needed for training; none left to hold out")])  # fmt: skip
def test_vit_folder_layout_errors(tmp_path, case, message):
    data = tmp_path / "imgs"
    if case == "one_class":
        make_folder(data, classes=("only",))
    elif case == "empty_class":
        make_folder(data)
        (data / "ghost").mkdir()
    elif case == "flat":  # images straight in the folder
        make_folder(tmp_path, classes=("imgs",))
    elif case == "singletons":  # one image a class: all to train on, none to validate with
        make_folder(data, classes=("a", "b"), n=1)
    elif case == "file":  # one image (`mmtok eval RUN --data imgs/red/0.png`)
        make_folder(tmp_path, classes=("imgs",), n=1)
        data = data / "0.png"
    elif case == "escape":
        make_folder(data)
        (data / "metadata.csv").write_text("file_name,label\ncircle/0.png,a\n../../etc/passwd,b\n")
    cfg = vit_folder.Config(data=str(data), image_size=16, patch_size=4, **TINY)
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        vit_folder.build_data(cfg)


def test_vit_folder_with_metadata_and_split_folders(tmp_path):
    data = tmp_path / "imgs"
    make_folder(data / "train")
    make_folder(data / "validation", n=3)
    train_set, val_set, classes, _ = vit_folder.build_data(vit_folder.Config(data=str(data), image_size=16, patch_size=4))
    assert (len(train_set), len(val_set), classes) == (36, 9, ["bar", "circle", "square"])
    flat = tmp_path / "flat"
    make_folder(flat)
    rows = ["file_name,label"] + [f"{c}/{i}.png,{c.upper()}" for c in ("circle", "square") for i in range(12)]
    (flat / "metadata.csv").write_text("\ufeff" + "\n".join(rows) + "\n", encoding="utf-8")  # a spreadsheet's BOM
    train_set, val_set, classes, _ = vit_folder.build_data(vit_folder.Config(data=str(flat), image_size=16, patch_size=4, val_fraction=0.25))
    assert classes == ["CIRCLE", "SQUARE"] and len(train_set) + len(val_set) == 24
    (flat / "metadata.csv").write_text("filename,class\n" + "\n".join(rows[1:]) + "\n")  # the columns it has, named
    with pytest.raises(ValueError, match=r"metadata.csv: needs the columns file_name and label \(its header has filename, class\)$"):
        vit_folder.build_data(vit_folder.Config(data=str(flat), image_size=16, patch_size=4))
    many = tmp_path / "many"  # 12 classes of 4 images: 10% would hold out 5, fewer than the classes
    make_folder(many, classes=tuple(f"c{i:02d}" for i in range(12)), n=4)
    train_set, val_set, classes, _ = vit_folder.build_data(vit_folder.Config(data=str(many), image_size=16, patch_size=4))
    assert len(classes) == 12 and len(val_set) == 12 and len(train_set) == 36  # one of each class held out
    rows = ["file_name,label"] + [f"c{c:02d}/{i}.png,{c}" for c in range(12) for i in range(4)]  # integer labels: numbered as numbers
    (many / "metadata.csv").write_text("\n".join(rows) + "\n")
    _, _, classes, _ = vit_folder.build_data(vit_folder.Config(data=str(many), image_size=16, patch_size=4))
    assert classes == [str(c) for c in range(12)]  # (not 0, 1, 10, 11, 2, ...: output i is the dataset's label i)
    old = tmp_path / "old_run"  # a run made when they were numbered by name resumes and evaluates in its own order
    (old / "checkpoints" / "step-0000002").mkdir(parents=True)  # (a run with a checkpoint: resumed or evaluated, not started anew)
    (old / "classes.txt").write_text("\n".join(sorted(classes)) + "\n")
    _, _, classes, _ = vit_folder.build_data(vit_folder.Config(data=str(many), image_size=16, patch_size=4, run_dir=str(old)))
    assert classes == sorted(classes) != [str(c) for c in range(12)]


def test_split_folders_by_datasets_names_in_any_case_and_what_they_cannot_hold(tmp_path, capsys):
    """Train/ + Val/ (or training/ + testing/) are split folders, not two classes; a validation folder
    without labelled images (Kaggle's test/ of unlabelled images) or an empty one is refused before
    training; images beside the class folders are said to be unused."""
    for train, val in (("Train", "Val"), ("training", "testing")):
        make_folder(tmp_path / train / train, n=3)
        make_folder(tmp_path / train / val, n=1)
        train_set, val_set, classes, _ = vit_folder.build_data(vit_folder.Config(data=str(tmp_path / train), image_size=16, patch_size=4))
        assert (len(train_set), len(val_set), classes) == (9, 3, ["bar", "circle", "square"])
    kaggle = tmp_path / "kaggle"
    make_folder(kaggle / "train", n=3)
    make_folder(kaggle, classes=("test",), n=2)  # test/0.png, test/1.png: no labels
    with pytest.raises(ValueError, match=r"validation folder \S+test has no labelled images .*: move unlabelled images out of it"):
        vit_folder.build_data(vit_folder.Config(data=str(kaggle), image_size=16, patch_size=4))
    for f in (kaggle / "test").iterdir():
        f.unlink()
    with pytest.raises(ValueError, match=r"validation folder \S+test is empty; put the held-out data there, or remove it"):
        vit_folder.build_data(vit_folder.Config(data=str(kaggle), image_size=16, patch_size=4))
    (kaggle / "test").rmdir()
    make_folder(kaggle, classes=("train",), n=1)  # train/0.png beside train's class folders
    capsys.readouterr()
    train_set, val_set, _, _ = vit_folder.build_data(vit_folder.Config(data=str(kaggle), image_size=16, patch_size=4))
    assert len(train_set) + len(val_set) == 9  # the class folders' images, not the one beside them
    assert "1 image(s) at the top of" in capsys.readouterr().err


def test_augment_false_reads_training_images_as_evaluation_does(tmp_path):
    make_folder(tmp_path / "imgs", n=2)
    cfg = vit_folder.Config(data=str(tmp_path / "imgs"), image_size=16, patch_size=4, augment=False)
    train_set, val_set, _, _ = vit_folder.build_data(cfg)
    reads = [train_set[0][0] for _ in range(3)]
    assert all(torch.equal(reads[0], r) for r in reads)
    same = vit_folder.FolderSet(train_set.pairs, train_set.label_ids, cfg, train=False)
    assert torch.equal(same[0][0], reads[0])
    flips = vit_folder.FolderSet(train_set.pairs, train_set.label_ids, vit_folder.Config(image_size=16, randaugment=False, hflip=1.0), train=True)
    assert flips.augment and [type(t).__name__ for t in flips.transform.transforms] == ["RandomResizedCrop", "RandomHorizontalFlip"]
    with pytest.raises(ValueError, match=r"hflip=1.5 must be at most 1.0"):
        vit_folder.Config(hflip=1.5).check()


def test_resume_and_eval_refuse_data_whose_classes_are_not_the_runs(tmp_path, capsys):
    from recipes.cli import main

    data, run = tmp_path / "imgs", tmp_path / "run"
    make_folder(data, n=4)
    vit_folder.main(vit_folder.Config(data=str(data), run_dir=str(run), image_size=16, patch_size=4, **{**TINY, "max_steps": 2}))
    (data / "square").rename(data / "aardvark")  # every label id after it would move
    capsys.readouterr()
    assert main(["eval", str(run)]) == 2
    assert "the data's 3 classes are not the run's 3" in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"not in the data: square; new in the data: aardvark\): resume and evaluate read the classes"):
        vit_folder.main(vit_folder.Config(data=str(data), run_dir=str(run), image_size=16, patch_size=4, **{**TINY, "max_steps": 4}), resume=True)


def test_vit_folder_from_timm_weights(tmp_path, capsys):
    timm = pytest.importorskip("timm")
    from safetensors.torch import save_file

    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False)  # the architecture's own sizes
    save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, str(tmp_path / "w.safetensors"))
    data = tmp_path / "imgs"
    make_folder(data)
    shape = ("dim", "depth", "num_heads")  # the weights' (a value given for one is refused, not replaced)
    kw = dict(data=str(data), image_size=32, timm_model="vit_tiny_patch16_224", init_from=str(tmp_path / "w.safetensors"),
              **{**{k: v for k, v in TINY.items() if k not in shape}, "max_steps": 4})  # fmt: skip
    with pytest.raises(ValueError, match="patch_size=4 does not match timm_model=vit_tiny_patch16_224's 16: pass patch_size=16"):
        vit_folder.main(vit_folder.Config(patch_size=4, run_dir=str(tmp_path / "bad"), **kw))
    with pytest.raises(ValueError, match=r"depth=2: timm_model=vit_tiny_patch16_224 has depth 12 \(its weights set the model's shape: leave depth out\)"):
        vit_folder.main(vit_folder.Config(patch_size=16, run_dir=str(tmp_path / "bad"), depth=2, **kw))
    for lost in ("pos_embed", "patch_embed.proj.weight"):  # a file of another model's state dict: the key named, with the file
        save_file({k: v.contiguous() for k, v in vit.state_dict().items() if k != lost}, str(tmp_path / "part.safetensors"))
        with pytest.raises(ValueError, match=rf"init_from=\S*part.safetensors: timm import: the checkpoint lacks {lost}; expected a timm"):
            vit_folder.main(vit_folder.Config(patch_size=16, run_dir=str(tmp_path / "bad"), **{**kw, "init_from": str(tmp_path / "part.safetensors")}))
    rect = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=(224, 112))  # 14 x 7 positions: the CLI cannot guess the grid
    save_file({k: v.contiguous() for k, v in rect.state_dict().items()}, str(tmp_path / "rect.safetensors"))
    with pytest.raises(ValueError, match=r"rect.safetensors: its position table holds 98 patch positions, neither timm_model=vit_tiny_patch16_224's "
                                         r"14x14 grid nor a square one: .* models.load_timm_vit\(model, state_dict, old_grid=\(rows, columns\)\)"):
        vit_folder.main(vit_folder.Config(patch_size=16, run_dir=str(tmp_path / "bad"), **{**kw, "init_from": str(tmp_path / "rect.safetensors")}))
    assert not (tmp_path / "bad").exists()
    with pytest.raises(ValueError, match=r"its \S+ is \(192.*\), timm_model=vit_small_patch16_224's "
                                         r"\(384.*\): weights of another architecture \(width 192 against 384\)"):
        vit_folder.main(vit_folder.Config(patch_size=16, run_dir=str(tmp_path / "bad"), **{**kw, "timm_model": "vit_small_patch16_224"}))
    run, _ = tmp_path / "run", capsys.readouterr()
    metrics = vit_folder.main(vit_folder.Config(patch_size=16, run_dir=str(run), **kw))  # 224 -> 32 px: positions resampled 14x14 -> 2x2
    assert json.loads((run / "run.json").read_text())["config"]["dim"] == 192 and 0 <= metrics["val_accuracy"] <= 1
    said = capsys.readouterr().err  # the defaults it replaced, said once (a value given equal to the default cannot be told from it)
    assert said.count("vit_folder: the model's shape comes from timm_model=vit_tiny_patch16_224 (dim=") == 1 and "depth=" in said
    tok = json.loads((run / "tokenizers" / "image" / "tokenizer.json").read_text())  # the weights' normalisation: timm's pretrained_cfg
    assert (tok["config"]["mean"], tok["config"]["std"]) == ([0.5] * 3, [0.5] * 3), tok
    # the weights it starts from are timm's: blocks as they are, the position table resampled as timm resamples it
    from recipes.runs import load_trained

    vit_folder.main(vit_folder.Config(patch_size=16, run_dir=str(tmp_path / "start"), **{**kw, "max_steps": 0, "dropout": 0.1}))
    start, weights = load_trained(tmp_path / "start")[0], vit.state_dict()
    assert start.config.trunk.dropout == 0.1  # the run's dropout, not timm's model's default
    assert torch.equal(start.encoder.blocks[0].attn.qkv.weight, weights["blocks.0.attn.qkv.weight"])
    assert torch.equal(start.encoder.blocks[-1].mlp.fc.weight, weights["blocks.11.mlp.fc1.weight"])
    resampled = timm.layers.resample_abs_pos_embed(weights["pos_embed"], (2, 2), num_prefix_tokens=1)[0]  # CLS row, then 2x2 patches
    torch.testing.assert_close(start.embedders["image"].pos.weight, resampled, atol=1e-6, rtol=0)
    (tmp_path / "w.safetensors").rename(tmp_path / "moved.safetensors")  # resume: the checkpoint's architecture and weights alone
    vit_folder.main(vit_folder.Config(patch_size=16, run_dir=str(run), **{**kw, "max_steps": 6}), resume=True)
    assert json.loads((run / "results.json").read_text())["step"] == 6


TIMM_MISTAKES = [
    (["timm_model=vit_base_patch16_gap_224"], r"timm_model=vit_base_patch16_gap_224 pools by mean \(no class token\): pass pool=mean"),
    (["pool=mean"], r"timm_model=vit_tiny_patch16_224 pools by its class token: pass pool=cls"),
    (["timm_model=vit_nope"], r"timm_model=vit_nope: no such timm model; expected a timm VisionTransformer's name"),
    (["timm_model=vit_tiny_patch16_224.bogus"], r"timm_model=vit_tiny_patch16_224.bogus: vit_tiny_patch16_224 has no pretrained tag 'bogus'; "
                                                r"its tags: augreg_in21k, augreg_in21k_ft_in1k \(or give vit_tiny_patch16_224 alone\)"),
    (["timm_model=resnet18"], r"timm_model=resnet18 is a ResNet, not a timm VisionTransformer"),
    (["channels=1"], r"channels=1 does not match timm_model=vit_tiny_patch16_224's 3: pass channels=3"),
    (["init_from=junk.safetensors"], (r"init_from=junk.safetensors: not a safetensors file \(.*header too small\); expected a "
                                      r"safetensors file of timm_model=vit_tiny_patch16_224's state dict")),
    (["init_from=w.pth"], r"init_from=w.pth: not a safetensors file \(.*header too large\)"),
]  # fmt: skip


@pytest.mark.parametrize("overrides, message", TIMM_MISTAKES)
def test_timm_keys_that_do_not_fit_are_one_line_before_the_run_starts(tmp_path, monkeypatch, capsys, overrides, message):
    import re

    from safetensors.torch import save_file

    from recipes.cli import main

    pytest.importorskip("timm")
    monkeypatch.chdir(tmp_path)
    save_file({"pos_embed": torch.zeros(1, 197, 192)}, "w.safetensors")  # before the run, only its header is read
    Path("junk.safetensors").write_bytes(b"junk")
    torch.save({"pos_embed": torch.zeros(1, 197, 192)}, "w.pth")  # a pickle, as timm's own .pth files
    make_folder(tmp_path / "imgs", n=2)
    args = ["data=imgs", "run_dir=run", "patch_size=16", "timm_model=vit_tiny_patch16_224", "init_from=w.safetensors", *overrides]
    assert main(["train", "vit_folder", *args]) == 2
    err = capsys.readouterr().err  # (after a note, where the shape came from timm_model= before the key was refused)
    assert re.fullmatch(f"(vit_folder: the model's shape comes from .*\n)?mmtok: error: {message}.*\n", err), err
    assert not Path("run").exists()


@pytest.mark.parametrize("overrides, world, message", [
    (["channels=2"], 1, r"channels=2: expected 1 \(greyscale\) or 3 \(RGB; an alpha channel is dropped\)"),
    (["pool=max"], 1, r"pool='max': expected cls or mean"),
    (["mixup=0.2", "cutmix=1.0", "batch_size=5"], 1, (r"mixup / cutmix need an even batch per process and micro-step: batch_size=5 / "
                                                      r"\(grad_accum \* processes = 1 \* 1\) is 5; pass e.g. batch_size=6")),
    (["cutmix=1.0", "batch_size=12", "grad_accum=2"], 2, r".*batch_size=12 / \(grad_accum \* processes = 2 \* 2\) is 3; pass e.g. batch_size=16"),
    (["mixup=0.2", "batch_size=10"], 4, r".*batch_size=10 / \(grad_accum \* processes = 1 \* 4\) is 2.5; pass e.g. batch_size=16"),  # uneven shares
])  # fmt: skip
def test_vit_values_a_run_cannot_use_are_refused_before_its_run_directory(tmp_path, monkeypatch, capsys, overrides, world, message):
    import re

    from recipes.cli import main
    from recipes.runs import make_config

    monkeypatch.setenv("WORLD_SIZE", str(world))
    args = [f"data={tmp_path / 'imgs'}", f"run_dir={tmp_path / 'run'}", *overrides]
    assert main(["train", "vit_folder", *args]) == 2
    err = capsys.readouterr().err
    assert re.fullmatch(f"mmtok: error: {message}\n", err), err
    assert not (tmp_path / "run").exists()
    even = [o.replace("=5", "=6").replace("=12", "=16").replace("=10", "=16") for o in args if not o.startswith(("channels", "pool"))]
    make_config("vit_folder", even)  # an even batch per process is fine
    make_config("vit_digits", [f"batch_size={5 * world}"])  # no mixup: an odd batch per process is fine


@pytest.mark.parametrize("override, message", [
    ("scale=2", r"scale=2.0 must be below 1.0"),  # (a zoom in (-1, 3): mirrored and vanishing images)
    ("translate=0.6", r"translate=0.6 must be at most 0.5"),  # (of the image size: more shifts most of an image out of the frame)
    ("rotate=-5", r"rotate=-5.0 must be at least 0.0"),
    ("eval_batches=1", r"config key 'eval_batches' does not apply to vit_digits: .* but vit_digits does not use it"),
    ("patch_size=3", r"image_size=8 must be a multiple of patch_size=3"),  # (before a folder's every image is decoded)
])  # fmt: skip
def test_augmentation_ranges_and_keys_a_vit_recipe_does_not_read_are_refused(override, message):
    from recipes.config import ConfigError
    from recipes.runs import make_config

    with pytest.raises(ConfigError, match=message):
        make_config("vit_digits", [override])


def test_vit_mnist_data_and_a_few_steps(tmp_path):
    from recipes import vit_mnist

    train_set, test_set, classes, (mean, std) = vit_mnist.build_data(vit_mnist.Config())
    assert (len(train_set), len(test_set)) == (4000, 1000) and train_set[0][0].shape == (1, 28, 28)
    assert 0.05 < mean[0] < 0.3 and classes == [str(d) for d in range(10)]
    metrics = vit_mnist.main(vit_mnist.Config(run_dir=str(tmp_path / "run"), **{**TINY, "max_steps": 10, "eval_every": 10}))
    assert 0 <= metrics["val_accuracy"] <= 1


def test_a_run_made_with_a_relative_data_path_evaluates_from_anywhere(tmp_path, monkeypatch, capsys):
    """run.json stores data paths absolute, so `mmtok eval` works from another directory."""
    from conftest import ROOT
    from recipes.cli import main

    make_folder(tmp_path / "imgs", n=6)
    args = ["data=imgs", "run_dir=run", "image_size=16", "patch_size=4", *[f"{k}={v}" for k, v in {**TINY, "max_steps": 2}.items()]]
    for cwd, cmd in ((tmp_path, ["train", "vit_folder", *args]), (ROOT, ["eval", str(tmp_path / "run")])):
        monkeypatch.chdir(cwd)
        assert main(cmd) == 0, capsys.readouterr().err[-2000:]
    assert json.loads((tmp_path / "run" / "run.json").read_text())["config"]["data"] == str(tmp_path / "imgs")


def test_predict_sees_the_pixels_evaluation_sees(tmp_path):
    """vit_folder's evaluation images and `predict`'s (the run's ImageTokenizer) resize alike."""
    from PIL import Image

    make_folder(tmp_path / "imgs", n=6)
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (30, 45, 3), dtype=np.uint8)).save(tmp_path / "imgs" / "bar" / "wide.png")
    cfg = vit_folder.Config(data=str(tmp_path / "imgs"), image_size=16, patch_size=4, val_fraction=0.5)
    _, val_set, _, (mean, std) = vit_folder.build_data(cfg)
    tok = vit.make_tokenizer(cfg, mean, std)
    Image.fromarray(np.random.default_rng(2).integers(0, 255, (3, 3, 3), dtype=np.uint8)).save(tmp_path / "tiny.png")
    val_set.pairs.append((tmp_path / "tiny.png", "bar"))  # smaller than a patch: resized up, by predict too
    for i, (path, _) in enumerate(val_set.pairs):
        evaluated, _ = val_set[i]
        torch.testing.assert_close(tok.preprocess(open_image(path)), (evaluated - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None],
                                   atol=1e-5, rtol=0)  # fmt: skip


@pytest.mark.parametrize("mix", [dict(mixup=0.8), dict(cutmix=1.0)])
def test_mixup_and_cutmix_smooth_labels_once_as_timm_trains(mix):
    """The recipe's loss on a mixed batch equals timm's training loss: Mixup with label smoothing,
    then SoftTargetCrossEntropy (the head's smoothing of soft targets gives the same targets)."""
    from timm.data import Mixup
    from timm.loss import SoftTargetCrossEntropy

    cfg = vit.Config(label_smoothing=0.1, augment=False, **mix)
    tok = vit.make_tokenizer(cfg, mean=(0.5,), std=(0.25,))
    torch.manual_seed(0)
    model = vit.build_model(cfg, tok, 10)
    pairs = [(torch.rand(1, 8, 8), i % 10) for i in range(8)]
    np.random.seed(0)  # timm's Mixup draws lambda (and the box) from NumPy
    inputs, targets = vit.Collate(tok, cfg, 10, train=True)(pairs)
    ours = model(inputs, targets).loss
    np.random.seed(0)
    x, y = Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, label_smoothing=0.1, num_classes=10)(
        torch.stack([p[0] for p in pairs]), torch.tensor([p[1] for p in pairs]))  # fmt: skip
    assert torch.equal(inputs["image"].values, tok.tokens_batch((x - tok._mean) / tok._std).values)  # the same mixed pixels
    torch.testing.assert_close(ours, SoftTargetCrossEntropy()(model(inputs).logits["cls"], y))
    # evaluation reports timm's validate loss: plain cross-entropy (the smoothed one has a floor of about 0.9 nats here)
    from accelerate import Accelerator

    from recipes.train import accuracy

    batch = vit.Collate(tok, cfg, 10, train=False)(pairs)
    figures = accuracy(model, Accelerator(cpu=True), [batch])
    plain = torch.nn.functional.cross_entropy(model.eval()(batch[0]).logits["cls"], batch[1]["cls"]).item()
    assert figures["val_loss"] == pytest.approx(plain, rel=1e-6) and abs(plain - model(*batch).loss.item()) > 1e-3  # (not the smoothed)


def test_a_validation_class_the_training_split_lacks_is_named_with_a_file(tmp_path):
    make_folder(tmp_path / "d" / "train", classes=("circle", "square"), n=3)
    make_folder(tmp_path / "d" / "validation", classes=("circle", "bar"), n=2)
    with pytest.raises(ValueError, match=r"d: validation labels \['bar'\] \(e\.g\. .*validation/bar/0\.png\) do not occur in the training images"):
        vit_folder.build_data(vit_folder.Config(data=str(tmp_path / "d")))


def test_a_held_out_share_of_any_size_leaves_each_class_on_both_sides(tmp_path):
    """val_fraction from 0 to near 1 on a small folder: every class held out once and trained on at
    least once (sklearn's stratified split refuses a side without every class)."""
    make_folder(tmp_path / "imgs", n=2)
    for fraction in (0.0, 0.5, 0.9):
        train_set, val_set, classes, _ = vit_folder.build_data(vit_folder.Config(data=str(tmp_path / "imgs"), image_size=20,
                                                                                 val_fraction=fraction))  # fmt: skip
        assert (len(train_set), len(val_set)) == (3, 3), fraction
    make_folder(tmp_path / "imgs", classes=("many",), n=40)  # imbalanced: 2, 2, 2 and 40
    for fraction in (0.8, 0.9):
        train_set, val_set, classes, _ = vit_folder.build_data(vit_folder.Config(data=str(tmp_path / "imgs"), image_size=20,
                                                                                 val_fraction=fraction))  # fmt: skip
        assert {l for _, l in train_set.pairs} == set(classes) == {l for _, l in val_set.pairs}, fraction


def test_column_keys_for_data_without_columns_are_refused_not_ignored(tmp_path, capsys):
    from recipes.cli import main

    make_folder(tmp_path / "imgs", n=2)
    (tmp_path / "c.txt").write_text("hello world " * 50)
    for recipe, data, key in (("vit_folder", "imgs", "label_column"), ("gpt_char", "c.txt", "text_column"), ("gpt_bpe", "c.txt", "text_column")):
        assert main(["train", recipe, f"data={tmp_path / data}", f"run_dir={tmp_path / 'run'}", f"{key}=fine_label"]) == 2
        assert f"{key}=fine_label: {tmp_path / data} is not a dataset with columns" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
