"""whisper_folder on a real audio folder: synthesized speech written as 8 / 16 / 48 kHz, mono and
stereo, WAV and FLAC; the documented handling of every kind of bad file; fine-tuning from a run;
transcribing audio longer than the model's window."""

import csv
import json
import os
import re
import shutil

import numpy as np
import pytest
import soundfile as sf
import torch

from tokenizers_mm import BPETokenizer, TokenSet, collate

pytest.importorskip("espeakng_loader")

from models import load_openai_whisper  # noqa: E402
from recipes import whisper_digits, whisper_folder  # noqa: E402
from recipes.runs import load_run_info, load_trained  # noqa: E402
from recipes.speech import TRAIN_VOICES, make_corpus  # noqa: E402
from recipes.whisper_folder import Config  # noqa: E402

TINY = dict(dim=32, depth=1, dec_depth=1, num_heads=2, batch_size=8, max_steps=6, eval_every=6, ckpt_every=6, log_every=3,
            warmup_steps=1, eval_utterances=8, max_frames=600, max_text=64, cpu=True)  # fmt: skip
TUNE = {k: v for k, v in TINY.items() if k not in ("max_frames", "max_text")}  # on Whisper's weights: their windows and positions


@pytest.fixture(scope="module")
def speech(tmp_path_factory):
    """24 synthesized utterances: (16 kHz int16 samples, transcript)."""
    root = tmp_path_factory.mktemp("speech")
    rows = make_corpus(root, 24, TRAIN_VOICES, seed=5)
    return [(sf.read(root / r.file_name, dtype="int16")[0], r.transcription) for r in rows]


def write_folder(root, speech, extra=()):
    """An audiofolder: metadata.csv + files in several rates, channel counts and formats."""
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (wave, text) in enumerate(speech):
        if i % 3 == 0:  # 8 kHz mono WAV
            name, data, rate = f"a{i}.wav", wave[::2], 8000
        elif i % 3 == 1:  # 48 kHz stereo FLAC
            up = np.repeat(wave, 3)
            name, data, rate = f"b{i}.flac", np.stack([up, up // 2], 1), 48000
        else:
            name, data, rate = f"c{i}.wav", wave, 16000
        sf.write(root / name, data, rate)
        rows.append((name, text.title()))  # upper case in the file; lower-cased by the recipe
    with open(root / "metadata.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file_name", "transcription"])
        w.writerows(rows + list(extra))
    return root


def test_val_group_holds_out_whole_speakers(tmp_path, speech, capsys):
    """val_group=COLUMN: val_fraction of the column's groups (speakers) are held out, every
    utterance of each with it; the split is recorded as any drawn split (split.json). A Hugging
    Face dataset's column serves as a metadata column does."""
    import datasets

    data = write_folder(tmp_path / "data", speech[:12])
    rows = list(csv.reader((data / "metadata.csv").read_text().splitlines()))
    speaker = {r[0]: f"spk{i % 4}" for i, r in enumerate(rows[1:])}
    with open(data / "metadata.csv", "w", newline="") as f:
        csv.writer(f).writerows([rows[0] + ["speaker_id"]] + [r + [speaker[r[0]]] for r in rows[1:]])
    run = tmp_path / "run"
    whisper_folder.main(Config(data=str(data), run_dir=str(run), val_fraction=0.25, val_group="speaker_id", **{**TINY, "max_steps": 0}))
    assert "held out 1 of 4 speaker_id groups (3 of 12 utterances)" in capsys.readouterr().err
    split = json.loads((run / "split.json").read_text())
    held, trained = ({speaker[n] for n in split[k]} for k in ("held_out", "train"))
    assert len(split["held_out"]) == 3 and len(held) == 1 and not held & trained and len(split["train"]) == 9
    assert whisper_folder.evaluate(run)["val_wer"] >= 0  # scored on the recorded share
    # recordings added since: a held-out speaker's are not trained on when the run resumes (a training speaker's are)
    spoken = {s: next(n for n in split["train" if s in trained else "held_out"] if speaker[n] == s) for s in set(speaker.values())}
    added = [("new_held.wav", spoken[next(iter(held))]), ("new_trained.wav", spoken[next(iter(trained))])]
    for name, like in added:
        shutil.copy(data / like, data / name)
    with open(data / "metadata.csv", "a", newline="") as f:
        csv.writer(f).writerows([[name, "one two", speaker[like]] for name, like in added])
    from recipes.cli import main

    capsys.readouterr()
    assert main(["resume", str(run), "max_steps=1"]) == 0
    said = capsys.readouterr().err
    assert "whisper_folder: 1 utterance(s) added since the run began are of held-out speaker_id groups: not trained on" in said
    assert f"{data}: 1 sample(s) added since the run began (e.g. new_trained.wav) train too, after the recorded ones" in said
    with pytest.raises(ValueError, match=r"val_group=gender: .*metadata.csv: needs the columns file_name and gender \(its header has file_name, "
                                         r"transcription, speaker_id\)"):  # fmt: skip
        whisper_folder.main(Config(data=str(data), run_dir=str(tmp_path / "bad"), val_group="gender", **{**TINY, "max_steps": 0}))
    one = {**speaker, **dict.fromkeys(speaker, "alone")}
    with open(data / "metadata.csv", "w", newline="") as f:
        csv.writer(f).writerows([rows[0] + ["speaker_id"]] + [r + [one[r[0]]] for r in rows[1:]])
    with pytest.raises(ValueError, match=r"val_group=speaker_id: the training data has 1 group \('alone'\); holding out whole groups needs at least 2"):
        whisper_folder.main(Config(data=str(data), run_dir=str(tmp_path / "one"), val_group="speaker_id", **{**TINY, "max_steps": 0}))
    # a dataset without a validation split: its column
    audio = [{"bytes": (data / r[0]).read_bytes(), "path": r[0]} for r in rows[1:]]
    ds = datasets.Dataset.from_dict({"audio": audio, "text": [r[1] for r in rows[1:]], "client_id": [speaker[r[0]] for r in rows[1:]]})
    ds = ds.cast_column("audio", datasets.Audio(decode=False))
    ds.save_to_disk(tmp_path / "hf")
    cfg = Config(data=str(tmp_path / "hf"), val_fraction=0.5, val_group="client_id")
    pairs, _, groups = whisper_folder.read_pairs(cfg)
    train, val = whisper_folder.group_split(pairs, groups(pairs), cfg)
    assert len(train) == len(val) == 6 and not {speaker[rows[1 + p.row][0]] for p, _ in train} & {speaker[rows[1 + p.row][0]] for p, _ in val}
    cfg.val_group = "speaker"
    with pytest.raises(ValueError, match=r"hf\[train\]: no column 'speaker' \(val_group=\); columns: audio, text, client_id"):
        whisper_folder.read_pairs(cfg).groups(pairs)
    ds.map(lambda r, i: {"client_id": " " if i == 4 else r["client_id"]}, with_indices=True).save_to_disk(tmp_path / "blank")
    cfg = Config(data=str(tmp_path / "blank"), val_group="client_id")
    with pytest.raises(ValueError, match=r"blank\[4\]: no client_id value \(val_group=\): every row needs its group"):
        (speech := whisper_folder.read_pairs(cfg)).groups(speech.train)


def test_trains_on_mixed_formats_then_fine_tunes_and_transcribes_long_audio(tmp_path, speech, capsys):
    data = write_folder(tmp_path / "data", speech)
    run = tmp_path / "run"
    metrics = whisper_folder.main(Config(data=str(data), run_dir=str(run), val_fraction=0.25, eval_batch_size=2, **TINY))
    assert 0 <= metrics["val_wer"] and np.isfinite(metrics["val_loss"])
    alone = whisper_folder.evaluate(run)
    assert alone["val_loss"] == pytest.approx(metrics["val_loss"], rel=1e-4)
    # the held-out share is the run's (RUN_DIR/split.json), not drawn again from what the folder holds now
    held = json.loads((run / "split.json").read_text())["held_out"]
    assert len(held) == 6 and all((data / name).is_file() for name in held)
    rows = (data / "metadata.csv").read_text().splitlines()
    trained = next(r for r in rows[1:] if r.split(",")[0] not in held)
    (data / "metadata.csv").write_text("\n".join(r for r in rows if r != trained) + "\n")  # a training row less: the same share
    assert whisper_folder.evaluate(run) == alone
    (data / "metadata.csv").write_text("\n".join(r for r in rows if r.split(",")[0] != held[0]) + "\n")
    with pytest.raises(ValueError, match=rf"1 of the 6 samples the run held out \(.*split.json\) are no longer in the data, e.g. {held[0]}"):
        whisper_folder.evaluate(run)
    (data / "metadata.csv").write_text("\n".join(rows) + "\n")
    away = data / trained.split(",")[0]
    away.rename(tmp_path / "away")  # a training file gone: eval reads the held-out files alone
    assert whisper_folder.evaluate(run) == alone
    (tmp_path / "away").rename(away)
    # launched as two processes (torchrun ... mmtok eval RUN): each decodes its own batches; the figures are the whole set's
    from test_train import ROOT, torchrun

    printed = torchrun(2, str(ROOT / "tests" / "helpers" / "eval_split.py"), "whisper_folder", str(run)).stdout
    shares = [json.loads(m) for m in re.findall(r'\{"rank"[^{}]*\}', printed)]  # (the processes' lines may run into each other)
    assert sorted(r["rank"] for r in shares) == [0, 1] and shares[0]["batches"] == 3  # 6 validation utterances, 2 a batch
    assert sorted(shares[0]["read"] + shares[1]["read"]) == [0, 1, 2] and all(r["read"] for r in shares)
    for r in shares:
        assert r["val_wer"] == alone["val_wer"] and r["val_loss"] == pytest.approx(alone["val_loss"], rel=1e-5)
    # another folder, all of it held out (`mmtok eval RUN --data PATH`): its own figures, a transcript the run cannot write named
    other = whisper_folder.evaluate(run, data=str(write_folder(tmp_path / "other", speech[:5])))
    assert np.isfinite(other["val_loss"]) and other["val_loss"] != pytest.approx(metrics["val_loss"], rel=1e-4) and other["val_wer"] >= 0
    (tmp_path / "odd").mkdir()
    sf.write(tmp_path / "odd" / "x.wav", speech[0][0], 16000)
    (tmp_path / "odd" / "metadata.csv").write_text("file_name,transcription\nx.wav,straße\n")
    with pytest.raises(ValueError, match=r"x.wav.*'ß'.*\(mend or remove it: evaluation skips such files only for a run trained with skip_bad"):
        whisper_folder.evaluate(run, data=str(tmp_path / "odd"))  # (not training's hint: mmtok eval takes no skip_bad_samples)
    (tmp_path / "silent").mkdir()  # silence, nothing said: no reference words, so no WER (null in mmtok eval's JSON), but a loss
    sf.write(tmp_path / "silent" / "s.wav", np.zeros(8000, np.int16), 16000)
    (tmp_path / "silent" / "metadata.csv").write_text("file_name,transcription\ns.wav,\n")
    from recipes.cli import main

    capsys.readouterr()
    assert main(["eval", str(run), "--data", str(tmp_path / "silent")]) == 0
    printed = json.loads(capsys.readouterr().out)  # strict JSON: no NaN
    assert printed["val_wer"] is None and printed["val_loss"] > 0
    (tmp_path / "silent" / "metadata.csv").write_text("file_name,transcription\ns.wav,naïve\n")  # a character the run's vocabulary lacks
    assert main(["eval", str(run), "--data", str(tmp_path / "silent")]) == 2
    assert "s.wav: transcript 'naïve'" in capsys.readouterr().err

    # fine-tune: architecture and tokenizers come from the run (a width given otherwise is refused, not replaced)
    tuned = tmp_path / "tuned"
    (tmp_path / "weights_only").mkdir()  # neither a run nor a Whisper folder: named as such (not "no checkpoint ...: train first")
    (tmp_path / "weights_only" / "model.safetensors").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=r"init_from=\S+weights_only: expected an openai-whisper .pt file, a Hugging Face Whisper"):
        whisper_folder.main(Config(data=str(data), run_dir=str(tuned), init_from=str(tmp_path / "weights_only"), val_fraction=0.25, **TINY))
    assert not tuned.exists()
    with pytest.raises(ValueError, match=r"dim=64: init_from=\S+ has dim 32 \(its weights set the model's shape: leave dim out\)"):
        whisper_folder.main(Config(data=str(data), run_dir=str(tuned), init_from=str(run), val_fraction=0.25, **{**TINY, "dim": 64}))
    whisper_folder.main(Config(data=str(data), run_dir=str(tuned), init_from=str(run), val_fraction=0.25, **TINY))
    saved = json.loads((tuned / "run.json").read_text())["config"]
    assert saved["dim"] == 32 and saved["init_from"] == str(run)
    assert (tuned / "tokenizers" / "text" / "tokenizer.json").read_text() == (run / "tokenizers" / "text" / "tokenizer.json").read_text()

    # 15 s of speech through a 6 s window: three windows, one transcript
    long = np.concatenate([speech[i][0] for i in range(8)])[: 15 * 16000]
    sf.write(tmp_path / "long.wav", long, 16000)
    texts = whisper_folder.transcribe(tuned, [tmp_path / "long.wav"])
    assert len(texts) == 1 and isinstance(texts[0], str)


def bad_files(root):
    """(file_name, transcription) rows of bad samples, written into root; each with what the error says."""
    (root / "empty.wav").write_bytes(b"")
    (root / "header.wav").write_bytes(b"RIFF\xff\xff\xff\xffWAVEfmt \x02\x00\x00\x00garbage" + bytes(100))
    sf.write(root / "nan.wav", np.full(1600, np.nan, dtype=np.float32), 16000, subtype="FLOAT")
    sf.write(root / "long.wav", np.zeros(16000 * 7, dtype=np.int16), 16000)  # 7 s > max_frames=600 (6 s)
    sf.write(root / "cut.wav", np.zeros(16000, dtype=np.int16), 16000)
    (root / "cut.wav").write_bytes((root / "cut.wav").read_bytes()[:20_044])  # a broken copy: its header promises 1 s, 0.6 s left
    return {
        ("cut.wav", "one"): "cut.wav: the file ends after 0.6 s",  # (its header gives 32,000 bytes of samples, ...: cut short?)
        ("empty.wav", "one"): "empty.wav: the file is empty",
        ("header.wav", "one"): "header.wav: not a readable audio file",
        ("nan.wav", "one"): "nan.wav: the waveform holds NaN",
        ("long.wav", "one"): "long.wav: 7.0 s is longer than max_frames=600",
        ("missing.wav", "one"): "missing.wav: no such file",
    }


def test_every_bad_file_is_named_or_skipped_and_counted(tmp_path, speech, capsys):
    data = write_folder(tmp_path / "data", speech[:8])
    train = data
    cases = bad_files(train)
    for row, message in cases.items():
        write_folder(tmp_path / "one", speech[:8], extra=[row])
        for p in train.iterdir():
            if p.name != "metadata.csv" and not (tmp_path / "one" / p.name).exists():
                (tmp_path / "one" / p.name).write_bytes(p.read_bytes())
        with pytest.raises(ValueError, match=message.replace(".", r"\.")):
            whisper_folder.build_data(Config(data=str(tmp_path / "one"), **TINY))
    _, _, train_set, val_set, _ = whisper_folder.build_data(Config(data=str(data), **{**TINY, "val_fraction": 0.0}))
    assert (len(train_set), len(val_set)) == (7, 1)  # val_fraction=0: one utterance held out all the same (a split needs one)
    # a separate validation split: a file outside the folder refused; a character only it holds is in the vocabulary
    folder = tmp_path / "split"
    write_folder(folder / "train", speech[:8])
    write_folder(folder / "validation", speech[8:12], extra=[("../escape.wav", "one")])
    with pytest.raises(ValueError, match=r"file_name '\.\./escape\.wav' points outside"):
        whisper_folder.build_data(Config(data=str(folder), **TINY))
    write_folder(folder / "validation", speech[8:12], extra=[("oov.wav", "naïve")])
    sf.write(folder / "validation" / "oov.wav", np.zeros(1600, dtype=np.int16), 16000)
    _, text_tok, _, val_set, _ = whisper_folder.build_data(Config(data=str(folder), **TINY))
    assert "ï" in text_tok.chars and len(val_set) == 5  # a from-scratch vocabulary holds the validation split's characters too

    # skip_bad_samples: all five bad training rows skipped and counted, silence kept
    write_folder(tmp_path / "all", speech[:8], extra=list(cases) + [("silence.wav", "one")])
    for p in train.iterdir():
        if p.name != "metadata.csv" and not (tmp_path / "all" / p.name).exists():
            (tmp_path / "all" / p.name).write_bytes(p.read_bytes())
    sf.write(tmp_path / "all" / "silence.wav", np.zeros(8000, dtype=np.int16), 16000)
    _, _, train_set, val_set, _ = whisper_folder.build_data(Config(data=str(tmp_path / "all"), skip_bad_samples=True, val_fraction=0.25, **TINY))
    assert len(train_set) + len(val_set) == 9  # 8 utterances + silence
    printed = capsys.readouterr()
    train_skipped, val_skipped = map(int, re.search(r"skipped (\d+) training and (\d+) validation", printed.err).groups())  # (stderr: stdout is eval's JSON)
    assert train_skipped + val_skipped == len(cases)
    named = [line for line in printed.err.splitlines() if line.startswith("skipped ")]  # each named, with its reason
    assert len(named) == len(cases) and all(any(message in line for line in named) for message in cases.values()), printed.err


def write_common_voice(root, speech) -> None:
    """A Common Voice download in small: MP3 clips in clips/, TSVs of its columns (client_id, path,
    sentence, ...), tab-separated without quoting; a sentence holding quotes, as Common Voice's do."""
    (root / "clips").mkdir(parents=True)
    columns = ["client_id", "path", "sentence", "up_votes", "down_votes", "age", "gender", "accents", "locale", "segment"]
    rows = []
    for i, (wave, text) in enumerate(speech):
        sf.write(root / "clips" / f"common_voice_en_{i}.mp3", wave, 16000, format="MP3")
        rows.append([f"speaker{i % 4}", f"common_voice_en_{i}.mp3", text, "2", "0", "", "", "", "en", ""])
    for name, part in (("train", rows[:8]), ("dev", rows[8:10]), ("test", rows[10:12]), ("validated", rows), ("other", rows[:1])):
        (root / f"{name}.tsv").write_text("\t".join(columns) + "\n" + "".join("\t".join(r) + "\n" for r in part), encoding="utf-8")
    (root / "clip_durations.tsv").write_text("clip\tduration[ms]\n")


def test_a_common_voice_download_trains_as_it_is_and_its_test_split_scores(tmp_path, speech, capsys):
    """data= a Common Voice locale folder (clips/ beside train.tsv, dev.tsv, ...): train.tsv's sentences
    train, dev.tsv validates; one of its TSV files alone (test.tsv) is evaluated on, and validated.tsv,
    which holds the training clips too, is said to; validated.tsv with val_group=client_id holds out speakers."""
    cv = tmp_path / "cv-corpus" / "en"
    write_common_voice(cv, speech[:12])
    cfg = Config(data=str(cv), **TINY)
    train, val, _ = whisper_folder.read_pairs(cfg)
    assert [p.name for p, _ in train] == [f"common_voice_en_{i}.mp3" for i in range(8)] and len(val) == 2
    assert [t for _, t in train] == [whisper_folder.normalise(t, cfg) for _, t in speech[:8]]
    run = tmp_path / "run"
    whisper_folder.main(Config(data=str(cv), run_dir=str(run), **TINY))
    scored = whisper_folder.evaluate(run, data=str(cv / "test.tsv"))
    assert scored["val_utterances"] == 2 and 0 <= scored["val_wer"] and "trained on" not in capsys.readouterr().err
    whisper_folder.evaluate(run, data=str(cv / "validated.tsv"))  # (it holds train.tsv's clips: said)
    assert f"8 of the 12 files scored are among those the run trained on ({cv})" in capsys.readouterr().err
    grouped = Config(data=str(cv / "validated.tsv"), val_group="client_id", val_fraction=0.25, **TINY)
    train, val = whisper_folder.build_data(grouped)[2:4]
    assert "held out 1 of 4 client_id groups (3 of 12 utterances)" in capsys.readouterr().err and (len(train), len(val)) == (9, 3)
    (cv / "bad.tsv").write_text("client_id\tpath\tsentence\nx\t\thello\n")
    with pytest.raises(ValueError, match=r"bad.tsv, line 2: expected a value for path$"):
        whisper_folder.read_pairs(Config(data=str(cv / "bad.tsv")))
    (cv / "bad.tsv").write_text("client_id\tfile\tsentence\n")
    with pytest.raises(ValueError, match=r"bad.tsv: needs the columns path and sentence \(Common Voice's; its header has client_id, file, "):
        whisper_folder.read_pairs(Config(data=str(cv / "bad.tsv")))
    (cv / "bad.tsv").write_text("client_id\tpath\tsentence\nx\tcommon_voice_en_0.mp3\tone\ttab\n")  # a tab inside a sentence
    with pytest.raises(ValueError, match=r"bad.tsv, line 2: 4 fields, and the header names 3: a tab inside a value\?"):
        whisper_folder.read_pairs(Config(data=str(cv / "bad.tsv")))
    with pytest.raises(ValueError, match=r"audio_column=path: .* is Common Voice's \(its clips named by the path column\): leave it out"):
        whisper_folder.read_pairs(Config(data=str(cv / "test.tsv"), audio_column="path"))
    (cv / "dev.tsv").write_text((cv / "dev.tsv").read_text().splitlines()[0] + "\n")  # a small locale's header-only dev.tsv
    train, val, _ = whisper_folder.read_pairs(Config(data=str(cv)))
    assert len(train) == 8 and val is None and "dev.tsv has no rows: holding out part of train.tsv instead" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match=r"metadata.csv does not exist: .*; it holds Common Voice locales: give data= one of them \(en\)"):
        whisper_folder.read_pairs(Config(data=str(cv.parent)))  # the release's top folder


def test_a_librispeech_split_folder_trains_and_scores_as_it_unpacks(tmp_path, speech, capsys):
    """data= a LibriSpeech split folder (SPEAKER/CHAPTER/SPEAKER-CHAPTER.trans.txt beside the FLAC files,
    transcripts in capitals): every utterance read; val_group=speaker holds out whole speakers; a run
    is scored on another split with eval --data; a malformed transcript line is named."""
    split = tmp_path / "LibriSpeech" / "test-clean"
    for i, (wave, text) in enumerate(speech[:12]):
        speaker, chapter = 19 + i % 3, 198
        folder = split / str(speaker) / str(chapter)
        folder.mkdir(parents=True, exist_ok=True)
        sf.write(folder / f"{speaker}-{chapter}-{i:04d}.flac", wave, 16000)
        with open(folder / f"{speaker}-{chapter}.trans.txt", "a", encoding="utf-8") as f:
            f.write(f"{speaker}-{chapter}-{i:04d} {text.upper()}\n")
    cfg = Config(data=str(split), val_group="speaker", val_fraction=0.3, **TINY)
    train, val, _ = whisper_folder.read_pairs(cfg)
    assert train is not None and val is None and len(train) == 12 and all(p.is_file() for p, _ in train)
    assert sorted(t for _, t in train) == sorted(whisper_folder.normalise(t, cfg) for _, t in speech[:12])  # (lower-cased)
    run = tmp_path / "run"
    whisper_folder.main(Config(data=str(split), run_dir=str(run), val_group="speaker", val_fraction=0.3, **TINY))
    assert "held out 1 of 3 speaker groups (4 of 12 utterances)" in capsys.readouterr().err
    other = tmp_path / "other"
    shutil.copytree(split, other)
    assert whisper_folder.evaluate(run, data=str(other))["val_utterances"] == 12  # another folder: all of it scored
    with pytest.raises(ValueError, match=r"val_group=gender: .* is a LibriSpeech folder, whose folders name the groups: val_group=speaker or"):
        whisper_folder.build_data(Config(data=str(other), val_group="gender", **TINY))
    (other / "19" / "198" / "._19-198.trans.txt").write_bytes(b"\x00\x05\x16\x07\xff")  # macOS's AppleDouble copy: passed over
    assert len(whisper_folder.read_pairs(Config(data=str(other)))[0]) == 12
    for folder, says in ((tmp_path / "LibriSpeech", r"it holds LibriSpeech splits: give data= one of them \(test-clean\)"),
                         (other / "19", r"it is a LibriSpeech speaker or chapter folder: give data= its split folder")):  # fmt: skip
        with pytest.raises(FileNotFoundError, match=says):
            whisper_folder.read_pairs(Config(data=str(folder)))
    top = tmp_path / "LibriSpeech"  # the top folder with a train-* split: its train-* splits train, dev-clean validates
    shutil.copytree(split, top / "train-clean-100")
    train, val, _ = whisper_folder.read_pairs(Config(data=str(top)))
    assert len(train) == 12 and val is None and all("train-clean-100" in str(p) for p, _ in train)  # (test-clean: not a validation split)
    assert f"{top}: LibriSpeech's train-clean-100 to train, val_fraction of it to validate" in capsys.readouterr().err
    shutil.move(top / "test-clean", top / "dev-clean")
    assert len(whisper_folder.read_pairs(Config(data=str(top)))[1]) == 12
    assert f"{top}: LibriSpeech's train-clean-100 to train, dev-clean to validate" in capsys.readouterr().err
    shutil.rmtree(top / "dev-clean")  # no dev split: val_fraction of the training speakers, grouped below the split's folder
    grouped = whisper_folder.build_data(Config(data=str(top), val_group="speaker", val_fraction=0.3, **TINY))
    assert (len(grouped[2]), len(grouped[3])) == (8, 4) and "held out 1 of 3 speaker groups" in capsys.readouterr().err
    (other / "19" / "198" / "19-198.trans.txt").write_text("19-198-0000\n")
    with pytest.raises(ValueError, match=r"19-198.trans.txt, line 1: expected 'ID TRANSCRIPT' \(LibriSpeech's"):
        whisper_folder.read_pairs(Config(data=str(other)))


def test_transcripts_beside_the_audio_files_serve_as_metadata(tmp_path, speech, capsys):
    """A folder without metadata whose audio files each have their transcript beside them (NAME.txt, or
    .lab as Montreal Forced Aligner's corpora), one folder per speaker: trains, holds out whole folders
    with val_group=folder; an audio file without its transcript is named (or skipped and counted)."""
    data = tmp_path / "corpus"
    for i, (wave, text) in enumerate(speech[:12]):
        folder = data / f"speaker{i % 3}"
        folder.mkdir(parents=True, exist_ok=True)
        sf.write(folder / f"u{i}.flac", wave, 16000)
        (folder / f"u{i}{'.lab' if i % 4 == 0 else '.txt'}").write_text(f"\ufeff{text.title()}\n" if i == 1 else text.title() + "\n")
    (data / "README.txt").write_text("recorded in 2026\n")  # a text file beside no audio file: not a transcript
    train, val, groups = whisper_folder.read_pairs(Config(data=str(data), val_group="folder"))
    assert val is None and sorted(train) == sorted((data / f"speaker{i % 3}" / f"u{i}.flac", t.lower()) for i, (_, t) in enumerate(speech[:12]))
    assert groups(train[:2]) == ["speaker0", "speaker0"]  # (sorted: speaker0's files first)
    assert groups([(data / "speaker0" / "chapter1" / "x.flac", ""), (data / "top.flac", "")]) == ["speaker0", "."]  # the top-level folder
    run = tmp_path / "run"
    whisper_folder.main(Config(data=str(data), run_dir=str(run), val_group="folder", val_fraction=0.3, **TINY))
    assert "held out 1 of 3 folder groups (4 of 12 utterances)" in capsys.readouterr().err
    other = tmp_path / "other"  # another folder: 2 of the run's training files (linked) and a file it never saw
    other.mkdir()
    for name in json.loads((run / "split.json").read_text())["train"][:2]:
        for f in (data / name, (data / name).with_suffix(".txt") if (data / name).with_suffix(".txt").exists() else (data / name).with_suffix(".lab")):
            (other / f.name).symlink_to(f)
    sf.write(other / "new.wav", speech[12][0], 16000)
    (other / "new.txt").write_text(speech[12][1])
    assert whisper_folder.evaluate(run, data=str(other))["val_utterances"] == 3
    assert f"2 of the 3 files scored are among those the run trained on ({data})" in capsys.readouterr().err
    cfg = load_run_info(run)[2]  # a run's text_column that other data lacks (eval --data cannot change it): that data's own column
    cfg.text_column = "words"
    scored = whisper_folder.held_out(str(write_folder(tmp_path / "meta", speech[12:15])))(cfg, run)[3]
    assert len(scored) == 3 and "read with the columns found as in any data, not the run's (" in (err := capsys.readouterr().err)
    assert "no column 'words' (text_column=)" in err
    with pytest.raises(ValueError, match=r"val_group=speaker: .*corpus has no metadata \(its transcripts lie beside the audio files\): "
                                         r"val_group=folder holds out whole folders"):  # fmt: skip
        whisper_folder.build_data(Config(data=str(data), val_group="speaker", **TINY))
    with pytest.raises(ValueError, match=r"text_column=words: .*corpus's transcripts are the text files beside its audio files: leave it out"):
        whisper_folder.read_pairs(Config(data=str(data), text_column="words"))
    (data / "speaker2" / "u5.txt").unlink()  # an audio file without its transcript: named, or with skip_bad_samples skipped and counted
    with pytest.raises(ValueError, match=r"audio .*speaker2/u5.flac: no transcript \(set skip_bad_samples=true"):
        whisper_folder.build_data(Config(data=str(data), **TINY))
    assert f"{data}: 1 of 12 audio files have no transcript beside them (.txt or .lab)" in capsys.readouterr().err
    built = whisper_folder.build_data(Config(data=str(data), skip_bad_samples=True, val_fraction=0.25, **TINY))
    assert len(built[2]) + len(built[3]) == 11 and "skipped 1 training and 0 validation utterance(s)" in capsys.readouterr().err
    (data / "speaker2" / "u5.txt").write_bytes(b"caf\xe9\n")  # Latin-1: named
    with pytest.raises(ValueError, match=r"speaker2/u5.txt: not UTF-8 text \(byte 3: invalid continuation byte\)"):
        whisper_folder.read_pairs(Config(data=str(data)))


def test_metadata_jsonl_serves_as_metadata_csv(tmp_path, speech, capsys):
    """audiofolder's other metadata form: one JSON object per file (file_name, transcription); a
    blank transcription is silence, and how many there are is said."""
    folder = write_folder(tmp_path / "data", speech[:3])
    csv_pairs = whisper_folder.read_split(folder)
    assert "empty transcription" not in capsys.readouterr().err
    (folder / "metadata.jsonl").write_text("".join(json.dumps({"file_name": p.name, "transcription": t if i else " "}) + "\n"
                                                   for i, (p, t) in enumerate(csv_pairs)))  # fmt: skip
    (folder / "metadata.csv").rename(folder / "kept.csv")
    assert whisper_folder.read_split(folder)[0][1].strip() == ""
    assert "metadata.jsonl: 1 of 3 files have an empty transcription, taken as silence" in capsys.readouterr().err
    (folder / "kept.csv").rename(folder / "metadata.csv")
    (folder / "metadata.jsonl").unlink()
    (folder / "metadata.csv").unlink()
    (folder / "metadata.jsonl").write_text("".join(json.dumps({"file_name": p.name, "transcription": t}) + "\n" for p, t in csv_pairs))
    assert whisper_folder.read_split(folder) == csv_pairs
    (folder / "metadata.jsonl").unlink()
    with pytest.raises(FileNotFoundError, match="data/metadata.csv does not exist: .* \\(or metadata.jsonl, one JSON object per file\\)"):
        whisper_folder.read_split(folder)
    # a transcript column under another usual name (Common Voice's sentence), or named with text_column=
    rows = "".join(f"{p.name},{t},spk{i % 2}\n" for i, (p, t) in enumerate(csv_pairs))
    (folder / "metadata.csv").write_text("file_name,sentence,speaker\n" + rows)
    assert whisper_folder.read_split(folder) == csv_pairs
    (folder / "metadata.csv").write_text("file_name,sentence,text\n" + rows)
    with pytest.raises(ValueError, match=r"metadata.csv: the transcript could be any of text, sentence; name it with text_column= "
                                         r"\(its columns: file_name, sentence, text\)"):  # fmt: skip
        whisper_folder.read_split(folder)
    assert whisper_folder.read_split(folder, "sentence") == csv_pairs
    (folder / "metadata.csv").write_text("file_name,words,speaker\n" + rows)
    with pytest.raises(ValueError, match=r"metadata.csv: the transcript is in none of the columns transcription, text, sentence, "):
        whisper_folder.read_split(folder)
    assert whisper_folder.read_split(folder, "words") == csv_pairs
    with pytest.raises(ValueError, match=r"metadata.csv: no column 'said' \(text_column=\); its columns: file_name, words, speaker"):
        whisper_folder.read_split(folder, "said")
    whisper_folder.Config(data=str(folder), text_column="words").check()  # (an audio folder's text_column: its metadata's column)
    (folder / "metadata.csv").unlink()  # a JSON lines file whose first row leaves the transcript out: that row is named
    (folder / "metadata.jsonl").write_text(json.dumps({"file_name": csv_pairs[0][0].name}) + "\n" + "".join(
        json.dumps({"file_name": p.name, "sentence": t}) + "\n" for p, t in csv_pairs[1:]))  # fmt: skip
    with pytest.raises(ValueError, match=r"metadata.jsonl, line 1: expected a value for sentence"):
        whisper_folder.read_split(folder)


def openai_checkpoint(path, n_vocab: int, reference: bool = False):
    """A small openai-whisper model with Whisper's real vocabulary size, saved as openai-whisper saves
    (fp16); with `reference`, also the model itself (the fp16 values, in fp32)."""
    import dataclasses

    wm = pytest.importorskip("whisper.model")
    dims = wm.ModelDimensions(n_mels=80, n_audio_ctx=1500, n_audio_state=32, n_audio_head=2, n_audio_layer=1, n_vocab=n_vocab,
                              n_text_ctx=24, n_text_state=32, n_text_head=2, n_text_layer=1)  # fmt: skip
    torch.manual_seed(0)
    model = wm.Whisper(dims)
    torch.nn.init.normal_(model.decoder.positional_embedding, std=0.02)  # note: openai-whisper leaves it torch.empty (inf in fp16)
    torch.nn.init.normal_(model.decoder.token_embedding.weight, std=0.05)  # small: a random model then varies its tokens
    torch.save({"dims": dataclasses.asdict(dims), "model_state_dict": model.half().state_dict()}, path)
    return (path, model.float().eval()) if reference else path


def test_fine_tunes_openai_whisper_weights_with_whispers_vocabulary_and_prompt(tmp_path, speech, capsys, monkeypatch):
    """init_from=an openai-whisper checkpoint: its weights, Whisper's tokenizer (ids as openai-whisper's),
    its prompt with the language token, 30 s windows; the run then resumes, evaluates and transcribes."""
    tokenizer = pytest.importorskip("whisper.tokenizer")
    data = write_folder(tmp_path / "data", speech[:6])
    multi = openai_checkpoint(tmp_path / "multi.pt", 51865)
    run = tmp_path / "run"
    from recipes.config import ConfigError

    with pytest.raises(ConfigError, match=r"max_frames=600: init_from=.*multi.pt has max_frames 3000 \(its weights set"):
        whisper_folder.build_data(Config(data=str(data), init_from=str(multi), **TINY))  # (given otherwise: refused, not replaced)
    japanese = Config(data=str(data), init_from=str(multi), prompt="<|startoftranscript|><|ja|><|transcribe|><|notimestamps|>", **TUNE)
    whisper_folder.build_data(japanese)
    assert japanese.language == "ja"  # the prompt's language token: the run's language (the WER normaliser, transcripts)
    with pytest.raises(ValueError, match=r"language='klingon': not a Whisper language code \(en, "):  # (from scratch: the normaliser's)
        whisper_folder.build_data(Config(data=str(data), language="klingon", **TINY))
    german = Config(data=str(data), language="German", **TINY)
    whisper_folder.build_data(german)
    assert german.language == "de"
    cfg = Config(data=str(data), init_from=str(multi), language="de", lowercase=False, run_dir=str(run), val_fraction=0.34, wer_text="whisper",
                 **{**TUNE, "max_steps": 2, "batch_size": 2, "eval_utterances": 2, "dropout": 0.2})  # fmt: skip
    metrics = whisper_folder.main(cfg)
    assert np.isfinite(metrics["val_loss"]) and np.isfinite(metrics["val_wer"])
    trained = load_trained(run)[0]  # the run's dropout, in a model built from weights that had none
    assert trained.config.trunk.dropout == 0.2 and {m.p for m in trained.modules() if isinstance(m, torch.nn.Dropout)} == {0.2}
    caps = []  # evaluation decodes as transcribe does: at most half the decoder's 24 positions a window, not all 24 - prompt
    decode = whisper_digits.transcribe_batch
    monkeypatch.setattr(whisper_digits, "transcribe_batch", lambda m, t, a, max_new, *rest, **kw: caps.append(max_new) or decode(m, t, a, max_new, *rest, **kw))
    assert whisper_folder.evaluate(run)["val_utterances"] == 3 and set(caps) == {12}  # every one (training decoded eval_utterances=2)
    monkeypatch.undo()
    saved = json.loads((run / "run.json").read_text())["config"]
    assert saved["prompt"] == "<|startoftranscript|><|de|><|transcribe|><|notimestamps|>" and saved["max_text"] == 24
    ref = tokenizer.get_tokenizer(True, language="de", task="transcribe")
    audio_tok, text_tok, train_set, _, _ = whisper_folder.build_data(whisper_folder.load_run_info(run)[2], run)
    example = train_set[0]["text"]
    transcript = train_set.pairs[0][1]
    want = [*ref.sot_sequence_including_notimestamps, *ref.encode(" " + transcript), ref.eot]  # Whisper writes " Text"
    assert example.ids.tolist() + example.targets[-1:].tolist() == want
    assert audio_tok.chunk and audio_tok.max_frames == 3000 and train_set[0]["audio"].values.shape[0] == 3000  # padded to 30 s
    assert isinstance(whisper_folder.transcribe(run, [str(data / "a0.wav")])[0], str)
    resumed = whisper_folder.main(whisper_folder.load_run_info(run)[2].__class__(**{**saved, "max_steps": 3}), resume=True)
    assert json.loads((run / "results.json").read_text())["step"] == 3 and np.isfinite(resumed["val_loss"])
    shutil.rmtree(run / "checkpoints")  # killed before its first checkpoint: a resume starts from Whisper's weights again
    whisper_folder.main(whisper_folder.load_run_info(run)[2].__class__(**{**saved, "max_steps": 0}), resume=True)
    start, weights = load_trained(run)[0].state_dict(), load_openai_whisper(multi).state_dict()
    assert start.keys() == weights.keys() and all(torch.equal(start[k], weights[k]) for k in weights)
    shutil.rmtree(run / "checkpoints")
    multi.rename(tmp_path / "moved.pt")
    with pytest.raises(FileNotFoundError, match=r"was stopped before its first checkpoint: resuming starts again from init_from=.*multi.pt"):
        whisper_folder.main(whisper_folder.load_run_info(run)[2].__class__(**{**saved, "max_steps": 0}), resume=True)
    (tmp_path / "moved.pt").rename(multi)
    whisper_folder.main(whisper_folder.load_run_info(run)[2].__class__(**{**saved, "max_steps": 0}), resume=True)  # (read below)

    english = openai_checkpoint(tmp_path / "tiny.en.pt", 51864)  # English-only: no language or task token
    cfg = Config(data=str(data), init_from=str(english))
    _, _, text_tok = whisper_folder.whisper_weights(cfg)
    assert whisper_folder.prompt_ids(text_tok, cfg.prompt) == list(tokenizer.get_tokenizer(False).sot_sequence_including_notimestamps)
    with pytest.raises(ValueError, match="language='xx': not one of this Whisper model's 99 languages"):
        whisper_folder.whisper_weights(Config(data=str(data), init_from=str(multi), language="xx"))
    with pytest.raises(ValueError, match=r"prompt='<\|startoftranscript\|><\|de\|><\|transcribe\|>': an English-only Whisper model \(.en\) has no "
                                         r"language token \(<\|de\|>\)"):  # fmt: skip
        whisper_folder.whisper_weights(Config(data=str(data), init_from=str(english), prompt="<|startoftranscript|><|de|><|transcribe|>"))
    with pytest.raises(ValueError, match="language='de': an English-only Whisper model \\(.en\\) has no language token"):
        whisper_folder.whisper_weights(Config(data=str(data), init_from=str(english), language="de"))
    named = Config(data=str(data), init_from=str(multi), language="German")  # a name, as openai-whisper takes it
    whisper_folder.whisper_weights(named)
    assert (named.language, named.prompt) == ("de", "<|startoftranscript|><|de|><|transcribe|><|notimestamps|>")
    # fine-tuning the run again in French: its prompt's language token replaced, and recorded
    again = Config(data=str(data), init_from=str(run), language="fr", lowercase=False, run_dir=str(tmp_path / "again"), val_fraction=0.34,
                   **{**TUNE, "max_steps": 0, "batch_size": 2, "eval_utterances": 2})  # fmt: skip
    capsys.readouterr()
    whisper_folder.main(again)
    assert "on Whisper's weights, lr=0.001 may undo what it knows" in capsys.readouterr().err  # a run on them: its weights are Whisper's too
    saved = json.loads((tmp_path / "again" / "run.json").read_text())["config"]
    assert (saved["language"], saved["prompt"]) == ("fr", "<|startoftranscript|><|fr|><|transcribe|><|notimestamps|>")
    # an empty transcript is the prompt, then <|endoftext|>; audio past the 30 s window is refused, not cut
    empty = whisper_folder.text_example(text_tok, "", "x", list(tokenizer.get_tokenizer(False).sot_sequence_including_notimestamps))
    assert empty.ids.tolist() + empty.targets[-1:].tolist() == [*tokenizer.get_tokenizer(False).sot_sequence_including_notimestamps, 50256]
    sf.write(data / "long.wav", np.resize(speech[0][0], 31 * 16000), 16000)
    with open(data / "metadata.csv", "a") as f:
        f.write("long.wav,one two\n")
    with pytest.raises(ValueError, match="long.wav: 31.0 s is longer than the model's 30 s window; cut long recordings"):
        whisper_folder.build_data(Config(data=str(data), init_from=str(multi)))


def test_whisper_windows_join_segments_with_their_silence():
    """transcribe on Whisper's weights: pause-cut segments joined back, gaps as silence, up to 30 s."""
    from recipes.whisper_digits import fill_windows

    one = np.ones(16000, dtype=np.float32)
    windows = list(fill_windows([(0.0, one), (1.5, one), (29.5, one), (40.0, one)], 30.0))
    assert [t for t, _ in windows] == [0.0, 29.5]  # 29.5-30.5 s would end past the first window's 30 s
    first, second = windows[0][1], windows[1][1]
    assert len(first) == int(2.5 * 16000) and first[16000:24000].max() == 0 and first[24000:].min() == 1
    assert len(second) == int(11.5 * 16000) and second[16000 : int(10.5 * 16000)].max() == 0 and second[-16000:].min() == 1


def test_a_hugging_face_whisper_folder_serves_as_init_from(tmp_path):
    """init_from=a Hugging Face Whisper folder (save_pretrained's config.json + model.safetensors):
    the same model (logits equal transformers' after Whisper's prompt) and the multilingual prompt."""
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("whisper")
    cfg = transformers.WhisperConfig(vocab_size=51865, num_mel_bins=80, d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                                     decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, max_source_positions=1500,
                                     max_target_positions=24)  # fmt: skip
    torch.manual_seed(0)
    hf = transformers.WhisperForConditionalGeneration(cfg).eval()
    hf.save_pretrained(tmp_path / "whisper-hf")
    config = Config(data=str(tmp_path), init_from=str(tmp_path / "whisper-hf"), language="fr")
    model, audio_tok, text_tok = whisper_folder.whisper_weights(config)
    prompt = whisper_folder.prompt_ids(text_tok, config.prompt)
    assert config.prompt == "<|startoftranscript|><|fr|><|transcribe|><|notimestamps|>" and prompt == [50258, 50265, 50359, 50363]
    audio = audio_tok.encode(np.random.default_rng(0).normal(0, 0.1, 16000 * 3).astype(np.float32), 16000)  # 3 s, padded to 30
    with torch.no_grad():
        ours = model.eval()({"audio": collate([audio]), "text": collate([TokenSet("text", ids=torch.tensor(prompt))])}).logits["lm"]
        theirs = hf(input_features=audio.values.T[None], decoder_input_ids=torch.tensor([prompt])).logits
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)
    doc = json.loads((tmp_path / "whisper-hf" / "config.json").read_text())  # a config its weights cannot fill: refused from
    wide = {k: doc[k] * 8 for k in ("d_model", "encoder_ffn_dim", "decoder_ffn_dim")}
    (tmp_path / "whisper-hf" / "config.json").write_text(json.dumps({**doc, **wide}))  # its header
    with pytest.raises(ValueError, match=r"whisper-hf: its config describes a model of [\d,]+ parameters; \S+model.safetensors holds [\d,]+$"):
        whisper_folder.whisper_weights(config)  # (before the model is built: a crafted config filled the memory first)
    (tmp_path / "whisper-hf" / "config.json").write_text(json.dumps({**doc, "decoder_layers": 64}))
    with pytest.raises(ValueError, match=r"whisper-hf: its config asks for \d+ blocks; \S+model.safetensors holds \d+$"):
        whisper_folder.whisper_weights(config)
    (tmp_path / "whisper-hf" / "config.json").write_text(json.dumps(doc))
    (tmp_path / "whisper-hf" / "model.safetensors").rename(tmp_path / "whisper-hf" / "other.safetensors")
    with pytest.raises(FileNotFoundError, match="a Whisper folder needs model.safetensors \\(one file; found config.json, generation_config.json, other.safetensors\\)"):
        whisper_folder.whisper_weights(config)


def test_decoding_equals_openai_whisper(tmp_path, speech):
    """On the same weights and audio, our log-mel window and greedy decoding give openai-whisper's
    tokens (its decode with its token suppressions off)."""
    whisper = pytest.importorskip("whisper")
    from recipes.whisper_digits import transcribe_batch

    path, ref = openai_checkpoint(tmp_path / "multi.pt", 51865, reference=True)
    cfg = Config(data=str(tmp_path), init_from=str(path), language="de")
    model, audio_tok, text_tok = whisper_folder.whisper_weights(cfg)
    prompt = whisper_folder.prompt_ids(text_tok, cfg.prompt)
    wave = torch.as_tensor(speech[0][0] / 32768.0, dtype=torch.float32)
    mel = whisper.log_mel_spectrogram(whisper.pad_or_trim(wave))  # (80, 3000)
    batch = audio_tok.encode_batch([wave.numpy()])
    torch.testing.assert_close(batch.values[0].T, mel, atol=1e-4, rtol=0)
    options = whisper.DecodingOptions(language="de", without_timestamps=True, fp16=False, temperature=0.0, suppress_blank=False,
                                      suppress_tokens=None, sample_len=24 - len(prompt))  # fmt: skip
    want = whisper.decode(ref, mel, options)
    with torch.no_grad():
        text = transcribe_batch(model.eval(), text_tok, batch, 24 - len(prompt), prompt=prompt)[0]
        out = model.generate({"audio": batch, "text": collate([TokenSet("text", ids=torch.tensor(prompt))])}, 24 - len(prompt), temperature=0)
    ids = out[0, len(prompt) :].tolist()
    eot = text_tok.special_ids["<|endoftext|>"]
    ids = ids[: ids.index(eot)] if eot in ids else ids
    assert len(want.tokens) > 3 and ids == want.tokens and text == want.text.strip()
    # an initial prompt (openai-whisper's prompt=): <|startofprev|> and its text before the prompt; the same tokens
    from recipes.whisper_digits import previous_text

    hint = "Picas gleichzeitig, Kubernetes"
    before = previous_text(text_tok, hint)
    assert before[0] == text_tok.special_ids["<|startofprev|>"] and len(before) <= 24 // 2
    hinted = whisper.decode(ref, mel, whisper.DecodingOptions(**{**options.__dict__, "prompt": hint, "sample_len": 24 - len(before) - len(prompt)}))
    with torch.no_grad():
        ours_hinted = transcribe_batch(model.eval(), text_tok, audio_tok.encode_batch([wave.numpy()]), 24 - len(before) - len(prompt),
                                       prompt=before + prompt)  # fmt: skip
    assert ours_hinted == [hinted.text.strip()] and hinted.tokens != want.tokens  # the prompt changed what was decoded
    # openai-whisper's condition_on_previous_text: the second window reads the first's tokens after <|startofprev|>;
    # a window decoded hotter than 0.5 starts the carried text afresh, one at 0.5 or cooler does not
    from recipes.whisper_digits import decode_windows, decode_with_fallback, previous_tokens

    w1, w2 = wave.numpy(), speech[1][0].astype(np.float32) / 32768.0
    m2 = whisper.log_mel_spectrogram(whisper.pad_or_trim(torch.from_numpy(w2)))
    both, carried = audio_tok.encode_batch([w1, w2]), []
    with torch.no_grad():
        ours = decode_windows(model, text_tok, audio_tok, both, [w1, w2], prompt, 24, carried=carried)
    second = whisper.decode(ref, m2, whisper.DecodingOptions(**{**options.__dict__, "prompt": want.tokens,
                                                                "sample_len": 24 - len(previous_tokens(text_tok, [], want.tokens) + prompt)}))  # fmt: skip
    assert [r["tokens"] for r in ours] == [want.tokens, second.tokens] and carried == want.tokens + second.tokens
    assert second.tokens != whisper.decode(ref, m2, options).tokens  # the first window's text changed what the second decoded
    hot, warm = [], []
    with torch.no_grad():
        hot_second = decode_windows(model, text_tok, audio_tok, both, [w1, w2], prompt, 24, fallback={"temperatures": (1.0,)}, carried=hot)[1]
        alone = decode_with_fallback(model, text_tok, audio_tok, [w2], 24 - len(prompt), prompt, options={"temperatures": (1.0,)})[0]
        decode_windows(model, text_tok, audio_tok, both, [w1, w2], prompt, 24, fallback={"temperatures": (0.4,)}, carried=warm)
    assert hot == [] and hot_second["tokens"] == alone["tokens"] and hot_second["text"]  # read nothing before it
    assert len(warm) > 0
    # only the segments a window keeps are carried (with word timestamps, those its words leave some length)
    dropped = []
    with torch.no_grad():
        unheard = decode_windows(model, text_tok, audio_tok, both, [w1, w2], prompt, 24, carried=dropped, segments=lambda i, r: [])
    assert dropped == [] and unheard[1]["tokens"] == whisper.decode(ref, m2, options).tokens and unheard[0]["segments"] == []
    assert ours[0]["segments"][0]["tokens"] == want.tokens  # the default: the window as one segment
    from recipes.whisper_digits import decode_rows, decoding_stats

    one = audio_tok.encode_batch([wave.numpy()])
    with torch.no_grad():
        scored = decoding_stats(model, text_tok, one, before + prompt, decode_rows(model, text_tok, one, 24 - len(before) - len(prompt), before + prompt))[0]
    assert scored["avg_logprob"] == pytest.approx(hinted.avg_logprob, abs=1e-4) and scored["no_speech_prob"] == pytest.approx(hinted.no_speech_prob, rel=1e-3)
    # the figures openai-whisper's fallback decides on: avg_logprob, no_speech_prob, compression_ratio of the same decoding
    with torch.no_grad():
        stats = decoding_stats(model, text_tok, batch, prompt, decode_rows(model, text_tok, batch, 24 - len(prompt), prompt))[0]
    assert stats["tokens"] == want.tokens and stats["compression_ratio"] == pytest.approx(want.compression_ratio)
    assert stats["avg_logprob"] == pytest.approx(want.avg_logprob, abs=1e-4) and stats["no_speech_prob"] == pytest.approx(want.no_speech_prob, rel=1e-3)
    # the fallback keeps the likeliest of best_of samples (log-probability / tokens), and does not retry silence
    one, encoded = [wave.numpy()], []
    hook = model.encoder.register_forward_hook(lambda mod, args, out: encoded.append(out.shape[0]))
    with torch.no_grad():
        kept = decode_with_fallback(model, text_tok, audio_tok, one, 24 - len(prompt), prompt, options={"temperatures": (1.0,)})[0]
    hook.remove()
    assert encoded == [1]  # one encoder pass for the window: its 5 samples and their scoring read its memory
    from recipes.whisper_digits import audio_memory

    assert torch.is_grad_enabled() and not audio_memory(model, audio_tok.encode_batch(one)).states.requires_grad  # no autograd graph kept
    with torch.no_grad():
        five = audio_tok.encode_batch(one * 5)  # the same five samples: the fallback's generator starts from seed 0
        samples = decode_rows(model, text_tok, five, 24 - len(prompt), prompt, 1.0, generator=torch.Generator().manual_seed(0))
        scored = decoding_stats(model, text_tok, five, prompt, samples)
        quiet = decode_with_fallback(model, text_tok, audio_tok, one, 24 - len(prompt), prompt, options={"no_speech_threshold": 0.0})[0]
    ranked = sorted(scored, key=lambda r: r["sum_logprob"] / max(len(r["tokens"]), 1))
    assert kept["tokens"] == ranked[-1]["tokens"] != ranked[0]["tokens"] and kept["temperature"] == 1.0
    # its figures are summed while sampling, no_speech_prob read once: what scoring the rows again gives
    assert kept["sum_logprob"] == pytest.approx(ranked[-1]["sum_logprob"], abs=1e-4) and kept["no_speech_prob"] == pytest.approx(ranked[-1]["no_speech_prob"])
    assert quiet["temperature"] == 0.0 and quiet["text"] == "" and quiet["avg_logprob"] < -1.0  # silent and unlikely: skipped at once
    # beam search (its default length normalisation: log-probability / length, ours with length_penalty=1), on several clips
    waves = [torch.as_tensor(w / 32768.0, dtype=torch.float32) for w, _ in speech[:8]]
    mels = torch.stack([whisper.log_mel_spectrogram(whisper.pad_or_trim(w)) for w in waves])
    batch = audio_tok.encode_batch([w.numpy() for w in waves])
    beams = whisper.DecodingOptions(language="de", without_timestamps=True, fp16=False, suppress_blank=False, suppress_tokens=None,
                                    sample_len=24 - len(prompt), beam_size=3)  # fmt: skip
    with torch.no_grad():
        texts = transcribe_batch(model.eval(), text_tok, batch, 24 - len(prompt), beam_size=3, length_penalty=1.0, prompt=prompt)
        greedy = transcribe_batch(model.eval(), text_tok, batch, 24 - len(prompt), prompt=prompt)
    # note: one clip at a time, as openai-whisper's beam search on a batch fails in its attention (CPU, this version)
    assert texts == [whisper.decode(ref, m, beams).text.strip() for m in mels] and texts != greedy  # beams found other texts
    # timestamps (openai-whisper's default decoding, without_timestamps=False): TimestampRules gives its tokens and
    # log-probabilities, greedy and with beams; the prompt drops <|notimestamps|>
    from recipes.whisper_digits import TimestampRules

    timed = [t for t in prompt if t != text_tok.special_ids["<|notimestamps|>"]]
    stamped = whisper.DecodingOptions(language="de", without_timestamps=False, fp16=False, suppress_blank=False, suppress_tokens=None,
                                      sample_len=24 - len(timed))  # fmt: skip
    rules = TimestampRules(text_tok)
    with torch.no_grad():
        rows = decode_rows(model, text_tok, batch, 24 - len(timed), timed, suppress=rules)
        stats = decoding_stats(model, text_tok, batch, timed, rows, rules)
        beamed, beam_sums = decode_rows(model, text_tok, batch, 24 - len(timed), timed, beam_size=3, suppress=rules, scored=True, patience=2.0)
        again, sums = decode_rows(model, text_tok, batch, 24 - len(timed), timed, suppress=rules, scored=True)
        beam_stats = decoding_stats(model, text_tok, batch, timed, beamed, rules)
    # decoding sums the log-probabilities it decodes by (greedy, and the chosen beams), as teacher forcing gives them
    assert again == rows
    np.testing.assert_allclose(sums, [r["sum_logprob"] for r in stats], atol=1e-4)
    np.testing.assert_allclose(beam_sums, [r["sum_logprob"] for r in beam_stats], atol=1e-4)
    want = [whisper.decode(ref, m, stamped) for m in mels]
    assert [r["tokens"] for r in stats] == [w.tokens for w in want]
    assert sum(t >= rules.first_time for w in want for t in w.tokens) > 8 and any(t < text_tok.special_ids["<|endoftext|>"] for t in want[0].tokens)
    np.testing.assert_allclose([r["avg_logprob"] for r in stats], [w.avg_logprob for w in want], atol=1e-4)
    eot = text_tok.special_ids["<|endoftext|>"]
    patient = [whisper.decode(ref, m, whisper.DecodingOptions(**{**stamped.__dict__, "beam_size": 3, "patience": 2.0})) for m in mels]
    assert [[t for t in r if t != eot] for r in beamed] == [w.tokens for w in patient]  # openai-whisper's beam search, with its patience
    np.testing.assert_allclose([r["avg_logprob"] for r in beam_stats], [w.avg_logprob for w in patient], atol=1e-4)
    # openai-whisper's default options (blank and non-speech suppression on): Suppress gives its tokens and log-probabilities.
    # A non-speech token ('"') is made the likeliest everywhere (its embedding row 4x the row greedy decoding starts with, in both
    # models), so that suppressing it changes the text
    from recipes.whisper_digits import Suppress

    suppress = Suppress(text_tok)
    quote, top = text_tok.encode_ids('"')[0], decode_rows(model, text_tok, batch, 1, prompt)[0][0]
    assert quote in suppress.always
    with torch.no_grad():
        for table in (model.embedders["text"].tok.weight, ref.decoder.token_embedding.weight):
            table[quote] = 4 * table[top]
    defaults = whisper.DecodingOptions(language="de", without_timestamps=True, fp16=False, sample_len=24 - len(prompt))
    want = [whisper.decode(ref, m, defaults) for m in mels]
    with torch.no_grad():
        unsuppressed = decode_rows(model, text_tok, batch, 24 - len(prompt), prompt)
        rows = decode_rows(model, text_tok, batch, 24 - len(prompt), prompt, suppress=suppress)
        stats = decoding_stats(model, text_tok, batch, prompt, rows, suppress)
        beamed = transcribe_batch(model, text_tok, batch, 24 - len(prompt), beam_size=3, prompt=prompt, suppress=suppress)
    assert all(quote in row for row in unsuppressed) and not any(quote in r["tokens"] for r in stats)
    assert [r["tokens"] for r in stats] == [w.tokens for w in want]
    np.testing.assert_allclose([r["avg_logprob"] for r in stats], [w.avg_logprob for w in want], atol=1e-4)
    assert beamed == [whisper.decode(ref, m, whisper.DecodingOptions(**{**defaults.__dict__, "beam_size": 3})).text.strip() for m in mels]
    # openai-whisper's suppress_tokens: ids of one's own (with -1: and the non-speech symbols), or none ("")
    for listed in (f"-1,{want[0].tokens[0]}", ""):
        chosen = whisper.DecodingOptions(**{**defaults.__dict__, "suppress_tokens": listed})
        with torch.no_grad():
            rows = decode_rows(model, text_tok, batch, 24 - len(prompt), prompt, suppress=Suppress(text_tok, listed))
        assert [[t for t in r if t != eot] for r in rows] == [whisper.decode(ref, m, chosen).tokens for m in mels]
        assert (quote in rows[0]) != bool(listed) and not (listed and want[0].tokens[0] in rows[0])  # the symbols, the id listed
    assert Suppress(text_tok, "").always == []  # openai-whisper adds no SuppressTokens filter for "" (its blank rule stays)
    for bad, why in [("-1,x", "expected token ids separated by commas"), ("51865", "51865 is no token of this 51865-token vocabulary")]:
        with pytest.raises(ValueError, match=why):
            Suppress(text_tok, bad)
    # and both together: openai-whisper's decoding with every default (suppression, then the timestamp rules)
    both = TimestampRules(text_tok, suppress)
    with torch.no_grad():
        stats = decoding_stats(model, text_tok, batch, timed, decode_rows(model, text_tok, batch, 24 - len(timed), timed, suppress=both), both)
    want = [whisper.decode(ref, m, whisper.DecodingOptions(language="de", fp16=False, sample_len=24 - len(timed))) for m in mels]
    assert [r["tokens"] for r in stats] == [w.tokens for w in want]
    np.testing.assert_allclose([r["avg_logprob"] for r in stats], [w.avg_logprob for w in want], atol=1e-4)


def test_window_segments_are_cut_as_openai_whisper_cuts_them():
    """Consecutive timestamps end one segment and start the next; a closing timestamp alone at the
    end closes the last; text after the last pair runs to the window's end; no pair: one segment to
    the last timestamp; times are in the recording (the window starts at 10 s) and stop at its end."""
    pytest.importorskip("whisper")
    from recipes.whisper_digits import window_segments

    text_tok = BPETokenizer.whisper(whisper_folder.whisper_assets() / "multilingual.tiktoken", 51865)
    t = lambda s: text_tok.special_ids[f"<|{s:.2f}|>"]  # noqa: E731
    a, b, c = (text_tok.encode_ids(w).tolist() for w in (" one", " two", " three"))
    eot = text_tok.special_ids["<|endoftext|>"]
    segments = lambda tokens, start, length, timestamps=True: window_segments(text_tok, {"tokens": tokens}, start, int(length * 16000), timestamps)  # noqa: E731
    cut = lambda *args: [(s["start"], s["end"], s["text"]) for s in segments(*args)]  # noqa: E731
    assert cut([t(0), *a, *b, t(1), t(1), *c, t(2.5), eot], 10.0, 20.0) == [(10.0, 11.0, "one two"), (11.0, 12.5, "three")]
    assert cut([t(0), *a, t(1), t(1.2), *c], 10.0, 20.0) == [(10.0, 11.0, "one"), (11.2, 30.0, "three")]
    assert cut([t(0.5), *a, *b, t(3)], 10.0, 20.0) == [(10.0, 13.0, "one two")]
    assert cut([t(0), *a, t(1), t(3), *b, t(28), t(28), *c], 10.0, 5.0) == [(10.0, 11.0, "one"), (13.0, 15.0, "two")]  # "three" in the padding
    assert segments([t(0), t(1), t(1), *b, t(2)], 10.0, 20.0) == [{"start": 11.0, "end": 12.0, "text": "two", "tokens": [t(1), *b, t(2)]}]  # no text: none
    assert cut([*a, *b, t(3)], 10.0, 20.0, False) == [(10.0, 30.0, "one two")]  # without timestamps: the window is one segment
    assert window_segments(text_tok, {"tokens": a, "skipped": True}, 0.0, 16000, False) == []  # silence
    # what the next window reads as said before (condition_on_previous_text): the kept segments' tokens, as openai-whisper carries
    blank = text_tok.encode_ids(" ").tolist()
    said = lambda *args: [t for s in segments(*args) for t in s["tokens"]]  # noqa: E731
    assert said([t(0), *a, t(1), t(1), *blank, t(2), eot], 0.0, 20.0) == [t(0), *a, t(1)]
    assert said([*a, *b], 0.0, 20.0, False) == [*a, *b]  # no timestamps: every token


def test_wer_on_whisper_normalised_text():
    """wer_text=whisper: openai-whisper's English normaliser for English, its basic one otherwise."""
    pytest.importorskip("whisper.normalizers")
    from recipes.config import ConfigError
    from recipes.whisper_digits import wer_normaliser

    english = wer_normaliser(Config(wer_text="whisper"))
    assert english("Hello, World! It's Mr. Smith.") == english("hello world it is mister smith") == "hello world it is mister smith"
    assert wer_normaliser(Config(wer_text="whisper", language="de"))("Grüße, Welt!").split() == ["grüße", "welt"]
    assert wer_normaliser(Config())("Hello, World!") == "Hello, World!"  # raw: as written
    with pytest.raises(ConfigError, match="wer_text='plain': expected raw or whisper"):
        Config(data="x", wer_text="plain").check()


def test_export_to_hugging_face_whisper_transcribes_as_we_do(tmp_path, speech, capsys):
    """`mmtok export` of runs on Whisper's weights (multilingual with a language; English-only; multilingual
    with a prompt of its own and beam search): transformers' speech-recognition pipeline on the
    exported folder writes `mmtok transcribe`'s text; its tokenizer writes the run's prompt and
    training targets; an OUT ending in .pt loads in openai-whisper, whose greedy decoding agrees."""
    transformers = pytest.importorskip("transformers")
    whisper = pytest.importorskip("whisper")
    from recipes.cli import main

    data = write_folder(tmp_path / "data", speech[:6])
    clips = [data / "c2.wav", data / "c5.wav"]  # 16 kHz: the pipeline is given the samples (it would need ffmpeg for files)
    for name, n_vocab, options in (("multi", 51865, {"language": "de"}), ("en", 51864, {}),
                                   ("own", 51865, {"prompt": "<|startoftranscript|><|transcribe|><|notimestamps|>", "beam_size": 2})):  # fmt: skip
        run, out = tmp_path / f"run_{name}", tmp_path / f"hf_{name}"
        whisper_folder.main(Config(data=str(data), init_from=str(openai_checkpoint(tmp_path / f"{name}.pt", n_vocab)), lowercase=False,
                                   run_dir=str(run), val_fraction=0.34, **{**TUNE, "max_steps": 1, "batch_size": 2, "eval_utterances": 2},
                                   **options))  # fmt: skip
        assert main(["export", str(run), str(out)]) == 0
        said = capsys.readouterr().out
        assert "whisper_folder run as transformers WhisperForConditionalGeneration" in said
        assert ("export: num_beams=2: transformers' beam search ranks finished beams by a length that counts" in said) == (name == "own")
        asr = transformers.pipeline("automatic-speech-recognition", model=str(out), device="cpu")
        theirs = [asr({"raw": sf.read(c, dtype="float32")[0], "sampling_rate": 16000})["text"].strip() for c in clips]
        ours = whisper_folder.transcribe(run, [str(c) for c in clips])
        assert theirs == ours and all(len(t.split()) > 3 for t in ours)  # a random model: many tokens to agree on (beam search: on
        # these clips; transformers' ranking and stopping rule can keep another beam, as the export says)
        if name == "multi":  # generate's language= swaps the language token as --language does; timestamps run
            samples = lambda: {"raw": sf.read(clips[0], dtype="float32")[0], "sampling_rate": 16000}  # noqa: E731  # the pipeline empties it
            french = whisper_folder.transcribe(run, [str(clips[0])], language="fr")
            assert [asr(samples(), generate_kwargs={"language": "fr"})["text"].strip()] == french != ours[:1]  # the token matters here
            assert asr(samples(), return_timestamps="word")["chunks"] and asr(samples(), return_timestamps=True)["chunks"] is not None
        # the tokenizer writes the run's prompt before a transcript, and the run's training example
        _, text_tok, train_set, _, _ = whisper_folder.build_data(whisper_folder.load_run_info(run)[2], run)
        example, transcript = train_set[0]["text"], train_set.pairs[0][1]
        hf_tok = transformers.AutoTokenizer.from_pretrained(out)
        assert hf_tok(" " + transcript).input_ids == example.ids.tolist() + example.targets[-1:].tolist()
        generation = json.loads((out / "generation_config.json").read_text())
        assert ("lang_to_id" in generation) == (n_vocab == 51865)  # an English-only model must not detect a language
        assert generation["max_length"] == text_tok.max_positions // 2 and "max_new_tokens" not in generation  # (it warned at each call)
        if name == "own":  # its prompt has no language: forced, or transformers would detect one (and the run's beam search)
            assert generation["forced_decoder_ids"] == [[1, 50359], [2, 50363]] and generation["num_beams"] == 2
            continue
        # an openai-whisper checkpoint (OUT ending in .pt): whisper.load_model and its greedy decoding, suppressions off
        assert main(["export", str(run), str(tmp_path / f"{name} out.PT")]) == 0  # any case: a .pt file, not a folder
        printed = capsys.readouterr().out
        assert "whisper.load_model" in printed and ("--language de" in printed) == (name == "multi")  # the run's language for its CLI
        assert f"whisper AUDIO --model '{tmp_path / name} out.PT'" in printed  # (a shell line: the path quoted)
        ref = whisper.load_model(str(tmp_path / f"{name} out.PT"), device="cpu")
        decoding = whisper.DecodingOptions(language=options.get("language", "en"), without_timestamps=True, fp16=False, suppress_blank=False,
                                           suppress_tokens=None, sample_len=12)  # fmt: skip (transcribe's limit: positions // 2)
        mels = [whisper.log_mel_spectrogram(whisper.pad_or_trim(torch.as_tensor(sf.read(c, dtype="float32")[0]))) for c in clips]
        assert [whisper.decode(ref, m, decoding).text.strip() for m in mels] == ours
    umask = os.umask(0)
    os.umask(umask)
    assert (out.stat().st_mode & 0o777) == 0o777 & ~umask  # a folder like any other, not mkdtemp's 0700


def test_language_detection_equals_openai_whisper_and_chooses_the_prompt(tmp_path, speech, capsys):
    """detect_language gives openai-whisper's language probabilities on the same weights and audio;
    `mmtok transcribe --language auto` prompts with the detected language, `--language fr` with French;
    English-only runs refuse both. Subtitles (--output-format) put a cue where each window's speech is,
    in the files openai-whisper's writers make."""
    pytest.importorskip("whisper")
    import whisper.utils
    from recipes.cli import main
    from recipes.whisper_digits import detect_language, previous_text, swap_language, swap_task, transcribe_batch

    path, ref = openai_checkpoint(tmp_path / "multi.pt", 51865, reference=True)
    model, audio_tok, text_tok = whisper_folder.whisper_weights(Config(data=str(tmp_path), init_from=str(path)))
    waves = [torch.as_tensor(w / 32768.0, dtype=torch.float32) for w, _ in speech[:3]]
    batch = audio_tok.encode_batch([w.numpy() for w in waves])
    ours = detect_language(model.eval(), text_tok, batch)
    _, theirs = whisper.decoding.detect_language(ref, torch.stack([whisper.log_mel_spectrogram(whisper.pad_or_trim(w)) for w in waves]))
    for o, t in zip(ours, theirs):
        assert sorted(o) == sorted(t) and max(o, key=o.get) == max(t, key=t.get)
        np.testing.assert_allclose([o[c] for c in t], list(t.values()), atol=1e-4)
    assert abs(sum(ours[0].values()) - 1) < 1e-5

    data = write_folder(tmp_path / "data", speech[:6])
    run = tmp_path / "run"
    whisper_folder.main(Config(data=str(data), init_from=str(path), language="de", run_dir=str(run), val_fraction=0.34,
                               **{**TUNE, "max_steps": 0, "batch_size": 2, "eval_utterances": 2}))  # fmt: skip
    clip = data / "c2.wav"
    capsys.readouterr()
    assert main(["transcribe", str(run), str(clip), "--language", "auto"]) == 0
    out, err = capsys.readouterr()
    code = re.search(r"detected language (\w+) \(p=", err).group(1)
    wave = batch.values.new_tensor(sf.read(clip, dtype="float32")[0])
    probs = detect_language(model, text_tok, audio_tok.encode_batch([wave.numpy()]))[0]
    assert code == max(probs, key=probs.get) != "de"  # openai-whisper's choice (probabilities checked above), not the run's language
    prompt = whisper_folder.prompt_ids(text_tok, f"<|startoftranscript|><|{code}|><|transcribe|><|notimestamps|>")
    with torch.no_grad():
        want = transcribe_batch(model, text_tok, audio_tok.encode_batch([wave.numpy()]), 12, prompt=prompt)[0]
    assert out.strip() == f"{clip}: {want}"
    french = whisper_folder.prompt_ids(text_tok, "<|startoftranscript|><|fr|><|transcribe|><|notimestamps|>")
    with torch.no_grad():
        want = transcribe_batch(model, text_tok, audio_tok.encode_batch([wave.numpy()]), 12, prompt=french)[0]
    assert whisper_folder.transcribe(run, [str(clip)], language="French") == [want]
    german = whisper_folder.prompt_ids(text_tok, "<|startoftranscript|><|de|><|transcribe|><|notimestamps|>")  # --initial-prompt
    before = previous_text(text_tok, "Kubernetes, PyTorch")
    with torch.no_grad():
        want = transcribe_batch(model, text_tok, audio_tok.encode_batch([wave.numpy()]), min(24 - len(before + german), 12),
                                prompt=before + german)[0]
    capsys.readouterr()
    assert main(["transcribe", str(run), str(clip), "--initial-prompt", "Kubernetes, PyTorch"]) == 0
    assert capsys.readouterr().out.strip() == f"{clip}: {want}"
    translate = whisper_folder.prompt_ids(text_tok, "<|startoftranscript|><|de|><|translate|><|notimestamps|>")  # --task translate
    with torch.no_grad():
        want = transcribe_batch(model, text_tok, audio_tok.encode_batch([wave.numpy()]), 12, prompt=translate)[0]
    assert whisper_folder.transcribe(run, [str(clip)], task="translate") == [want]
    bare = whisper_folder.prompt_ids(text_tok, "<|startoftranscript|><|notimestamps|>")
    assert swap_task(bare, text_tok, "translate", "x") == whisper_folder.prompt_ids(text_tok, "<|startoftranscript|><|translate|><|notimestamps|>")
    with pytest.raises(ValueError, match="language='xx': not one of this Whisper model's 99 languages"):
        whisper_folder.transcribe(run, [str(clip)], language="xx")
    # subtitles: a recording with a long silence is read as two windows; a cue for each, where its speech is
    first, second = (sf.read(data / name, dtype="float32")[0] for name in ("c2.wav", "c5.wav"))
    silence = lambda s: np.zeros(int(s * 16000), np.float32)  # noqa: E731
    sf.write(tmp_path / "talk.wav", np.concatenate([silence(1.0), first, silence(40.0), second, silence(0.5)]), 16000)
    spans = [(1.0, 1.0 + len(first) / 16000), (41.0 + len(first) / 16000, 41.0 + (len(first) + len(second)) / 16000)]
    capsys.readouterr()
    assert main(["transcribe", str(run), str(tmp_path / "talk.wav"), "--output-format", "all", "--output-dir", str(tmp_path / "subs")]) == 0
    result = json.loads((tmp_path / "subs" / "talk.json").read_text())
    assert result == whisper_folder.transcribe_files(run, [tmp_path / "talk.wav"])[0] and result["language"] == "de"
    assert len(result["segments"]) == 2 and result["text"] == capsys.readouterr().out.split(": ", 1)[1].strip()
    for seg, (a, b) in zip(result["segments"], spans):  # each cue inside its speech (to a 10 ms frame)
        assert a - 0.011 <= seg["start"] < seg["end"] <= b + 0.011 and seg["end"] - seg["start"] > 0.5 * (b - a), seg
    assert main(["transcribe", str(run), str(tmp_path / "talk.wav"), "--output-dir", str(tmp_path / "every")]) == 0  # alone: all formats
    assert sorted(p.name for p in (tmp_path / "every").iterdir()) == [f"talk.{f}" for f in ("json", "srt", "tsv", "txt", "vtt")]
    (tmp_path / "afile").write_text("")
    capsys.readouterr()
    for args, message in [(["--output-dir", str(tmp_path / "afile")], f"--output-dir {tmp_path / 'afile'}: a file, not a folder"),
                          (["--carry-initial-prompt", "--initial-prompt", "Seven."], "--carry-initial-prompt: it reads the initial prompt "
                           "before every window of --windows seek (--windows pauses always does); it needs --windows seek and an --initial-prompt"),
                          (["--windows", "seek", "--margin", "0.2"], "--min-pause / --margin: they cut a file at its pauses (--windows pauses); "
                           "--windows seek reads openai-whisper's windows"),
                          (["--initial-prompt", "<|endoftext|> Seven."], "--initial-prompt: the text holds the special token '<|endoftext|>', "
                           "which a prompt's text cannot hold")]:  # fmt: skip  # (the flags as typed, not the Python keywords)
        assert main(["transcribe", str(run), str(tmp_path / "talk.wav"), *args]) == 2  # refused before any decoding
        assert message in capsys.readouterr().err
    (tmp_path / "part" / "talk.srt").mkdir(parents=True)  # one file's transcript cannot be written: the next is still transcribed
    assert main(["transcribe", str(run), str(tmp_path / "talk.wav"), str(data / "c2.wav"), "--output-format", "srt", "--output-dir", str(tmp_path / "part")]) == 2
    err = capsys.readouterr().err
    assert f"transcribe: {tmp_path / 'talk.wav'}: transcript not written: cannot write {tmp_path / 'part' / 'talk.srt'}: Is a directory" in err
    assert (tmp_path / "part" / "c2.srt").is_file() and f"1 of 2 audio files transcribed but their transcripts not written ({tmp_path / 'talk.wav'}): each named above" in err
    assert main(["transcribe", str(run), str(tmp_path / "talk.wav"), "--condition-on-previous-text"]) == 0  # the second window reads the first's text
    conditioned = whisper_folder.transcribe_files(run, [tmp_path / "talk.wav"], condition_on_previous_text=True)[0]
    assert capsys.readouterr().out.split(": ", 1)[1].strip() == conditioned["text"]
    assert conditioned["segments"][0] == result["segments"][0] and conditioned["segments"][1]["text"] != result["segments"][1]["text"]
    # timestamp tokens: each window's text in the segments they time, inside that window's speech
    assert main(["transcribe", str(run), str(tmp_path / "talk.wav"), "--timestamps", "--output-format", "srt", "--output-dir", str(tmp_path / "ts")]) == 0
    timed = whisper_folder.transcribe_files(run, [tmp_path / "talk.wav"], timestamps=True)[0]
    assert timed["segments"] and (tmp_path / "ts" / "talk.srt").read_text().count(" --> ") == len(timed["segments"])
    assert timed["segments"] != result["segments"]  # timed by the tokens, not the windows
    for seg in timed["segments"]:
        assert any(a - 0.011 <= seg["start"] <= seg["end"] <= b + 0.011 for a, b in spans), seg
    for fmt in ("txt", "vtt", "srt", "tsv"):  # the files openai-whisper's writers make of the same result
        whisper.utils.get_writer(fmt, str(tmp_path))(result, "talk.wav", {"max_line_width": None, "max_line_count": None, "highlight_words": False})
        assert (tmp_path / "subs" / f"talk.{fmt}").read_text() == (tmp_path / f"talk.{fmt}").read_text(), fmt

    assert whisper_folder.transcribe(run, [str(clip)], language="AUTO") == whisper_folder.transcribe(run, [str(clip)], language=code)
    # openai-whisper's fallback: the random model's text repeats itself and is unlikely, so every temperature is tried
    plain = whisper_folder.transcribe_files(run, [str(clip)])[0]
    hot = whisper_folder.transcribe_files(run, [str(clip)], fallback=True)[0]
    assert [s["temperature"] for s in hot["segments"]] == [1.0] and hot["segments"][0]["avg_logprob"] < -1.0 and hot["text"] != plain["text"]
    calm = whisper_folder.transcribe_files(run, [str(clip)], fallback={"compression_ratio_threshold": 100, "logprob_threshold": -100})[0]
    assert calm["text"] == plain["text"] and calm["segments"][0]["temperature"] == 0.0  # nothing to retry: the plain decoding
    silent = whisper_folder.transcribe_files(run, [str(clip)], fallback={"no_speech_threshold": 0.0})[0]  # unlikely and "silent": skipped
    assert silent["text"] == "" and silent["segments"] == []
    # the fallback's flags on the command line, as openai-whisper's: each implies --fallback
    out = tmp_path / "flags"
    assert main(["transcribe", str(run), str(clip), "--temperature-increment-on-fallback", "0.3", "--best-of", "2", "--output-format", "json",
                 "--output-dir", str(out)]) == 0  # fmt: skip
    assert [s["temperature"] for s in json.loads((out / f"{clip.stem}.json").read_text())["segments"]] == [0.9]  # 0, 0.3, 0.6, 0.9: all tried
    assert main(["transcribe", str(run), str(clip), "--temperature", "0.5", "--temperature-increment-on-fallback", "none", "--best-of", "2",
                 "--output-format", "json", "--output-dir", str(out)]) == 0  # fmt: skip
    assert [s["temperature"] for s in json.loads((out / f"{clip.stem}.json").read_text())["segments"]] == [0.5]  # that one alone, sampled
    assert main(["transcribe", str(run), str(clip), "--logprob-threshold", "none", "--compression-ratio-threshold", "none", "--output-format",
                 "json", "--output-dir", str(out)]) == 0  # fmt: skip
    assert json.loads((out / f"{clip.stem}.json").read_text())["text"] == plain["text"]  # no check left: nothing retried
    assert main(["transcribe", str(run), str(clip), "--temperature-increment-on-fallback", "0"]) == 2
    # openai-whisper's --length_penalty (GNMT's ranking, GNMTPenalty: tests/test_model.py), from 0 to 1 as there
    assert main(["transcribe", str(run), str(clip), "--beam-size", "2", "--length-penalty", "0.6"]) == 0
    capsys.readouterr()
    assert main(["transcribe", str(run), str(clip), "--beam-size", "2", "--length-penalty", "1.5"]) == 2
    assert "--length-penalty 1.5: openai-whisper's alpha, from 0 to 1" in capsys.readouterr().err
    # a multilingual prompt without a language token gets one after <|startoftranscript|>, as Whisper's prompt holds it
    assert swap_language(whisper_folder.prompt_ids(text_tok, "<|startoftranscript|><|transcribe|><|notimestamps|>"), text_tok, "fr", "x") == french

    # English-only: its vocabulary carries language tokens, unused (a prompt holding one is refused when the run starts); no swap
    english = tmp_path / "run_en"
    whisper_folder.main(Config(data=str(data), init_from=str(openai_checkpoint(tmp_path / "en.pt", 51864)), run_dir=str(english),
                               val_fraction=0.34, **{**TUNE, "max_steps": 0, "batch_size": 2, "eval_utterances": 2}))  # fmt: skip
    with pytest.raises(ValueError, match="language=auto: .*run_en is an English-only or a from-scratch model; it has no language tokens"):
        whisper_folder.transcribe(english, [str(clip)], language="Auto")
    with pytest.raises(ValueError, match="language='de': .*run_en is an English-only or a from-scratch model"):
        whisper_folder.transcribe(english, [str(clip)], language="de")
    assert whisper_folder.transcribe(english, [str(clip)], language="en") == whisper_folder.transcribe(english, [str(clip)])
    assert whisper_folder.transcribe_files(english, [str(clip)])[0]["language"] == "en"  # as openai-whisper's result for a .en model
    with pytest.raises(ValueError, match="task=translate: .*run_en is an English-only or a from-scratch model; it has no task tokens"):
        whisper_folder.transcribe(english, [str(clip)], task="translate")
    assert whisper_folder.transcribe(english, [str(clip)], task="transcribe") == whisper_folder.transcribe(english, [str(clip)])  # what it does
