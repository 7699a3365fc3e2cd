"""whisper_digits end to end on a tiny synthesized corpus: data, training, WER, transcribe."""

import json

import pytest

pytest.importorskip("espeakng_loader")

from recipes import whisper_digits  # noqa: E402
from recipes.whisper_digits import EOT, SOT, Config, text_example, text_tokenizer  # noqa: E402

TINY = dict(n_train=48, n_test=8, dim=32, depth=1, dec_depth=1, num_heads=2, batch_size=8, max_steps=12, eval_every=12, ckpt_every=12,
            log_every=4, warmup_steps=2, eval_utterances=8, cpu=True)  # fmt: skip


def test_text_side_prompt_targets_and_bad_characters():
    tok = text_tokenizer(Config())
    ts = text_example(tok, "two four", "x.wav")
    assert ts.ids[0].item() == tok.special_ids[SOT] and ts.targets[-1].item() == tok.special_ids[EOT]
    assert tok.decode(ts.targets[ts.loss_mask][:-1]) == "two four"  # the loss covers the characters and EOT only
    assert ts.loss_mask.sum().item() == len("two four") + 1
    with pytest.raises(ValueError, match=r"x.wav: transcript 'naïve'.*'ï'"):
        text_example(tok, "naïve", "x.wav")


def test_trains_evaluates_and_transcribes(tmp_path, capsys):
    run = tmp_path / "run"
    metrics = whisper_digits.main(Config(data_dir=str(tmp_path / "data"), run_dir=str(run), **TINY))
    assert 0 <= metrics["val_wer"] and metrics["val_loss"] < 5
    rows = [json.loads(line) for line in (tmp_path / "data" / "test" / "manifest.jsonl").read_text().splitlines()[1:]]
    assert {r["voice"] for r in rows}.isdisjoint({json.loads(line)["voice"] for line in (tmp_path / "data" / "train" / "manifest.jsonl").read_text().splitlines()[1:]})
    files = [tmp_path / "data" / "test" / r["file_name"] for r in rows[:2]]
    texts = whisper_digits.transcribe(run, files)
    assert len(texts) == 2 and all(isinstance(t, str) for t in texts)
    assert len(whisper_digits.transcribe(run, files, beam_size=3)) == 2  # beam search on the KV cache
    assert whisper_digits.transcribe_files(run, files[:1], language="en")[0] == {**whisper_digits.transcribe_files(run, files[:1])[0], "language": "en"}
    with pytest.raises(ValueError, match="openai-whisper's token suppression is for Whisper's vocabulary; this run has its own"):
        whisper_digits.transcribe(run, files[:1], suppress=True)
    with pytest.raises(ValueError, match="initial_prompt: this run's vocabulary has no <\\|startofprev\\|>"):
        whisper_digits.transcribe(run, files[:1], initial_prompt="two four")
    with pytest.raises(ValueError, match="condition_on_previous_text: this run's vocabulary has no <\\|startofprev\\|>"):
        whisper_digits.transcribe(run, files[:1], condition_on_previous_text=True)
    with pytest.raises(ValueError, match="word_timestamps: .* is not a run on Whisper's weights"):
        whisper_digits.transcribe(run, files[:1], word_timestamps=True)
    with pytest.raises(ValueError, match="windows=seek: .* reads unpadded utterances"):
        whisper_digits.transcribe(run, files[:1], windows="seek")
    import numpy as np
    import soundfile as sf

    from recipes.runs import load_trained
    from tokenizers_mm.audio import AudioError

    sf.write(tmp_path / "empty.wav", np.zeros(0, np.int16), 16000)  # a valid WAV of no samples: one clear error
    with pytest.raises(AudioError, match="empty.wav: the file holds no samples"):
        whisper_digits.transcribe(run, [tmp_path / "empty.wav"])
    ended = []  # a window that does not reach <|endoftext|> within max_new is reported, so transcribe can warn
    batch = load_trained(run)[1]["audio"].encode_batch([sf.read(files[0], dtype="float32")[0]])
    whisper_digits.transcribe_batch(load_trained(run)[0], load_trained(run)[1]["text"], batch, 1, ended=ended)
    assert ended == [False]
    assert json.loads((run / "results.json").read_text())["val_wer"] == pytest.approx(metrics["val_wer"])
    # a recording of the two clips with pauses around them: cut at the pauses, one segment per clip
    from recipes import cli
    from tokenizers_mm.audio import split_at_pauses, stream_audio

    clips = [sf.read(f, dtype="float32")[0] for f in files]
    gap = np.zeros(8000, np.float32)
    sf.write(tmp_path / "long.wav", np.concatenate([gap, clips[0], gap, clips[1], gap]), 16000)
    segments = list(split_at_pauses(stream_audio(tmp_path / "long.wav", 8.0), 8.0))
    spans = [(0.5, 0.5 + len(clips[0]) / 16000), (1.0 + len(clips[0]) / 16000, 1.0 + (len(clips[0]) + len(clips[1])) / 16000)]
    assert len(segments) == 2
    for (start, w), (a, b) in zip(segments, spans):  # each within its clip (to a frame), most of it (a fade-in may be quiet)
        assert a - 0.011 <= start and start + len(w) / 16000 <= b + 0.011 and len(w) / 16000 >= 0.8 * (b - a)
    sf.write(tmp_path / "quiet.wav", np.zeros(16000, np.float32), 16000)
    capsys.readouterr()
    assert cli.main(["transcribe", str(run), str(tmp_path / "long.wav"), str(tmp_path / "quiet.wav"), "--min-pause", "0.2", "--device", "auto"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"{tmp_path / 'long.wav'}: ") and out[1] == f"{tmp_path / 'quiet.wav'}: "  # silence: nothing to say
    (tmp_path / "empty.wav").write_bytes(b"")  # a file that cannot be read, in a batch: skipped, the others' transcripts kept
    args = [str(tmp_path / "empty.wav"), str(tmp_path / "quiet.wav"), "--output-dir", str(tmp_path / "kept")]
    assert cli.main(["transcribe", str(run), *args]) == 2
    captured = capsys.readouterr()
    assert captured.out == f"{tmp_path / 'quiet.wav'}: \n" and (tmp_path / "kept" / "quiet.srt").is_file()
    assert f"transcribe: skipped {tmp_path / 'empty.wav'}: audio {tmp_path / 'empty.wav'}: the file is empty" in captured.err
    assert f"mmtok: error: 1 of 2 audio files not transcribed ({tmp_path / 'empty.wav'}): each named above\n" in captured.err
    capsys.readouterr()  # two files of one name would overwrite each other's transcripts
    assert cli.main(["transcribe", str(run), str(tmp_path / "long.wav"), str(tmp_path / "subs" / "long.wav"), "--output-format", "srt"]) == 2
    assert "two audio files share a name (long)" in capsys.readouterr().err
    assert cli.main(["eval", str(run), "--data", str(tmp_path)]) == 2  # its test set is its own synthesized voices
    assert "--data: mmtok eval of a whisper_digits run takes no data (it evaluates on its own data)" in capsys.readouterr().err
    # the long-recording benchmark runs on this run (its figures mean nothing for a 12-step model)
    import sys

    from conftest import ROOT

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import whisper_long

    result = whisper_long.main([str(run), "--utterances", "8", "--per-file", "4", "--gap-noise", "30"])
    assert result["files"] == 2 and result["utterances"] == 8 and 0 <= result["wer_long_files_cut_at_pauses"]



def test_word_errors_count_text_made_up_on_silence():
    """(errors, reference words) as jiwer 4 counts a corpus: a reference without words (silence, or
    one the normaliser empties) makes each word of its hypothesis an insertion."""
    import jiwer

    pairs = [("one two three", "one too three"), ("", "four five"), ("six", ""), ("  ", "")]
    assert whisper_digits.word_errors(pairs) == (4, 4)  # one substitution, two insertions on silence, one deletion
    assert jiwer.wer([r for r, _ in pairs[:3]], [h for _, h in pairs[:3]]) == 4 / 4
    assert whisper_digits.word_errors([("", "a b c")]) == (3, 0) and whisper_digits.word_errors([]) == (0, 0)
