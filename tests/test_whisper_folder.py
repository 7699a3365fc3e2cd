"""whisper_folder on a real audio folder: synthesized speech written as 8 / 16 / 48 kHz, mono and
stereo, WAV and FLAC; the documented handling of every kind of bad file; fine-tuning from a run;
transcribing audio longer than the model's window."""

import csv
import json
import re

import numpy as np
import pytest
import soundfile as sf

pytest.importorskip("espeakng_loader")

from recipes import whisper_folder  # noqa: E402
from recipes.speech import TRAIN_VOICES, make_corpus  # noqa: E402
from recipes.whisper_folder import Config  # noqa: E402

TINY = dict(dim=32, depth=1, dec_depth=1, num_heads=2, batch_size=8, max_steps=6, eval_every=6, ckpt_every=6, log_every=3,
            warmup_steps=1, eval_utterances=8, max_frames=600, max_text=64, cpu=True)  # fmt: skip


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


def test_trains_on_mixed_formats_then_fine_tunes_and_transcribes_long_audio(tmp_path, speech):
    data = write_folder(tmp_path / "data", speech)
    run = tmp_path / "run"
    metrics = whisper_folder.main(Config(data=str(data), run_dir=str(run), val_fraction=0.25, **TINY))
    assert 0 <= metrics["val_wer"] and np.isfinite(metrics["val_loss"])
    assert whisper_folder.evaluate(run)["val_loss"] == pytest.approx(metrics["val_loss"], rel=1e-4)

    # fine-tune: architecture and tokenizers come from the run, whatever the config says
    tuned = tmp_path / "tuned"
    whisper_folder.main(Config(data=str(data), run_dir=str(tuned), init_from=str(run), val_fraction=0.25, **{**TINY, "dim": 64}))
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
    return {
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
    # a transcript character outside a fine-tuned vocabulary, in a separate validation split
    folder = tmp_path / "split"
    write_folder(folder / "train", speech[:8])
    write_folder(folder / "validation", speech[8:12], extra=[("../escape.wav", "one")])
    with pytest.raises(ValueError, match=r"file_name '\.\./escape\.wav' points outside"):
        whisper_folder.build_data(Config(data=str(folder), **TINY))
    write_folder(folder / "validation", speech[8:12], extra=[("oov.wav", "naïve")])
    sf.write(folder / "validation" / "oov.wav", np.zeros(1600, dtype=np.int16), 16000)
    with pytest.raises(ValueError, match=r"oov\.wav: transcript 'naïve'.*'ï'"):
        whisper_folder.build_data(Config(data=str(folder), **TINY))

    # skip_bad_samples: all five bad training rows skipped and counted, silence kept
    write_folder(tmp_path / "all", speech[:8], extra=list(cases) + [("silence.wav", "one")])
    for p in train.iterdir():
        if p.name != "metadata.csv" and not (tmp_path / "all" / p.name).exists():
            (tmp_path / "all" / p.name).write_bytes(p.read_bytes())
    sf.write(tmp_path / "all" / "silence.wav", np.zeros(8000, dtype=np.int16), 16000)
    _, _, train_set, val_set, _ = whisper_folder.build_data(Config(data=str(tmp_path / "all"), skip_bad_samples=True, val_fraction=0.25, **TINY))
    assert len(train_set) + len(val_set) == 9  # 8 utterances + silence
    train_skipped, val_skipped = map(int, re.search(r"skipped (\d+) training and (\d+) validation", capsys.readouterr().out).groups())
    assert train_skipped + val_skipped == len(cases)


def test_metadata_jsonl_serves_as_metadata_csv(tmp_path, speech):
    """audiofolder's other metadata form: one JSON object per file (file_name, transcription)."""
    folder = write_folder(tmp_path / "data", speech[:3])
    csv_pairs = whisper_folder.read_split(folder)
    (folder / "metadata.csv").unlink()
    (folder / "metadata.jsonl").write_text("".join(json.dumps({"file_name": p.name, "transcription": t}) + "\n" for p, t in csv_pairs))
    assert whisper_folder.read_split(folder) == csv_pairs
    (folder / "metadata.jsonl").unlink()
    with pytest.raises(FileNotFoundError, match="data/metadata.csv does not exist: .* \\(or metadata.jsonl, one JSON object per file\\)"):
        whisper_folder.read_split(folder)
