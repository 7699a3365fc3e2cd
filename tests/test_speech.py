"""Offline speech: eSpeak NG through ctypes, and the deterministic spoken-digits corpus."""

import json
import subprocess
import sys
import time

import numpy as np
import pytest

pytest.importorskip("espeakng_loader")

from conftest import ROOT, subprocess_env  # noqa: E402
from recipes.speech import SYNTH_RATE, TEST_VOICES, TRAIN_VOICES, SpeechError, Synthesizer, make_corpus  # noqa: E402
from tokenizers_mm import AudioTokenizer, load_audio  # noqa: E402
from tokenizers_mm.audio import AudioError  # noqa: E402


def test_synthesizer_speaks_and_varies():
    s = Synthesizer.get()
    a = s.say("three one four", "en+m1", rate=170)
    assert a.dtype == np.int16 and 0.5 * SYNTH_RATE < len(a) < 3 * SYNTH_RATE and np.abs(a).max() > 1000
    slow = s.say("three one four", "en+m1", rate=100)
    assert len(slow) > 1.3 * len(a)  # rate changes the duration
    assert not np.array_equal(s.say("three one four", "en+f3", rate=170)[: len(a)], a[: len(a)])
    with pytest.raises(SpeechError, match="no voice"):
        s.say("hi", "xx+nobody")
    assert issubclass(SpeechError, ValueError)  # (mmtok's one-line errors are the ValueError family)


def test_corpus_is_deterministic_cached_and_tokenizable(tmp_path):
    rows = make_corpus(tmp_path / "c", 6, TRAIN_VOICES, seed=3)
    assert len(rows) == 6 and all(r.voice in TRAIN_VOICES for r in rows)
    mtime = (tmp_path / "c" / "manifest.jsonl").stat().st_mtime_ns
    again = make_corpus(tmp_path / "c", 6, TRAIN_VOICES, seed=3)
    assert again == rows and (tmp_path / "c" / "manifest.jsonl").stat().st_mtime_ns == mtime  # reused, not regenerated
    other = make_corpus(tmp_path / "d", 6, TRAIN_VOICES, seed=3)
    assert [r.transcription for r in other] == [r.transcription for r in rows]
    assert np.array_equal(load_audio(tmp_path / "d" / rows[0].file_name)[0], load_audio(tmp_path / "c" / rows[0].file_name)[0])
    # utterance i is the same whatever n: a corpus of fewer is the first ones of the cache (audio included), which is kept.
    # (Made in a process of its own, which ends without multiprocessing's "leaked semaphore" warning: the worker exits itself.)
    code = ("import recipes.whisper_digits; from recipes.speech import TRAIN_VOICES, make_corpus; "  # (as the recipes run it: torch loaded)
            f"make_corpus({str(tmp_path / 'e')!r}, 3, TRAIN_VOICES, seed=3)")
    made = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=subprocess_env(), cwd=ROOT, timeout=300)
    assert made.returncode == 0 and "synthesizing 3 utterances" in made.stderr and "leaked" not in made.stderr, made.stderr
    fewer = make_corpus(tmp_path / "e", 3, TRAIN_VOICES, seed=3)
    assert fewer == rows[:3] and make_corpus(tmp_path / "c", 3, TRAIN_VOICES, seed=3) == fewer
    assert (tmp_path / "c" / "manifest.jsonl").stat().st_mtime_ns == mtime
    assert np.array_equal(load_audio(tmp_path / "e" / rows[2].file_name)[0], load_audio(tmp_path / "c" / rows[2].file_name)[0])
    wave, rate = load_audio(tmp_path / "c" / rows[0].file_name)
    assert rate == 16000 and abs(len(wave) / 16000 - rows[0].seconds) < 1e-3
    ts = AudioTokenizer(chunk=False, max_frames=1000).encode(wave)
    assert ts.values.shape[1] == 80 and 20 < len(ts) < 1000
    assert not set(TRAIN_VOICES) & set(TEST_VOICES)
    for v in TRAIN_VOICES + TEST_VOICES:  # every listed voice exists in the bundled data
        Synthesizer.get().say("one", v)


def legacy(folder, cut: bytes) -> None:
    """A corpus as made before WAV sizes were recorded in its manifest, its second file then cut short."""
    lines = (folder / "manifest.jsonl").read_text().splitlines()
    rows = [{k: v for k, v in json.loads(line).items() if k != "file_bytes"} for line in lines[1:]]
    (folder / "manifest.jsonl").write_text("\n".join([lines[0]] + [json.dumps(r) for r in rows]) + "\n")
    assert make_corpus(folder, 3, TRAIN_VOICES, seed=3)[1].file_bytes == 0  # (such a corpus is reused as it is)
    (folder / rows[1]["file_name"]).write_bytes(cut)


def test_a_damaged_cache_is_synthesized_again_and_a_foreign_folder_refused(tmp_path, capsys):
    """A file of the corpus removed or cut short (a full disk, a broken copy), or a manifest line
    damaged: the corpus is made again, said on stderr, the same as before; a manifest.jsonl that is
    not a corpus's, or a file where the folder should be, is refused rather than written over."""
    folder = tmp_path / "c"
    rows = make_corpus(folder, 3, TRAIN_VOICES, seed=3)
    first = (folder / rows[1].file_name).read_bytes()
    assert all(r.file_bytes == (folder / r.file_name).stat().st_size > 44 for r in rows)
    capsys.readouterr()
    for damage, said in [(lambda: (folder / rows[1].file_name).unlink(), f"{rows[1].file_name} is missing"),
                         (lambda: (folder / rows[1].file_name).write_bytes(first[:100]), f"{rows[1].file_name} is 100 bytes, the manifest records"),
                         (lambda: (folder / "manifest.jsonl").write_text((folder / "manifest.jsonl").read_text().replace('"voice"', '"vo', 1)),
                          "line 2 of manifest.jsonl is damaged"),
                         (lambda: (folder / "manifest.jsonl").write_text((text := (folder / "manifest.jsonl").read_text())[:20] + text[text.index("\n"):]),
                          "manifest.jsonl is damaged"),  # (its first line cut)
                         (lambda: legacy(folder, first[:100]), f"{rows[1].file_name} is 100 bytes, too few for the")]:  # fmt: skip
        damage()  # (mended by a smaller corpus's call: the whole cache is made again, not cut to the 2 asked for)
        assert make_corpus(folder, 2, TRAIN_VOICES, seed=3) == rows[:2] and (folder / rows[1].file_name).read_bytes() == first
        assert f"{folder}: {said}" in capsys.readouterr().err
        assert make_corpus(folder, 3, TRAIN_VOICES, seed=3) == rows and not capsys.readouterr().err  # reused
    with pytest.raises(AudioError, match=r"the file ends after .* \(its header gives [\d,]+ bytes of samples, the file holds 56: cut short\?\)"):
        load_audio((tmp_path / "cut.wav").write_bytes(first[:100]) and tmp_path / "cut.wav")  # (a training set reading it stops, named)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "manifest.jsonl").write_text('{"path": "a.wav", "text": "hello"}\n')
    with pytest.raises(ValueError, match=r"manifest.jsonl is not a synthesized corpus's manifest .*remove the file to synthesize one there"):
        make_corpus(tmp_path / "mine", 3, TRAIN_VOICES, seed=3)
    with pytest.raises(ValueError, match=r"cut.wav is a file, where the folder that holds the synthesized corpus should be"):
        make_corpus(tmp_path / "cut.wav", 3, TRAIN_VOICES, seed=3)


def test_a_killed_callers_worker_writes_no_more(tmp_path):
    """make_corpus renders in a worker forked from multiprocessing's fork server (a corpus after the
    first costs no interpreter start); its caller SIGKILLed, the server ends and the worker stops
    at its next utterance instead of writing on."""
    folder = tmp_path / "c"
    code = f"from recipes.speech import TRAIN_VOICES, make_corpus; make_corpus({str(folder)!r}, 5000, TRAIN_VOICES, seed=3)"
    caller = subprocess.Popen([sys.executable, "-c", code], env=subprocess_env(), cwd=ROOT, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while len(list(folder.glob("*.wav"))) < 3 and time.monotonic() < deadline and caller.poll() is None:
        time.sleep(0.02)
    caller.kill()
    caller.wait()
    time.sleep(1.0)  # (an utterance takes about 20 ms)
    written = len(list(folder.glob("*.wav")))
    time.sleep(1.0)
    assert 3 <= written == len(list(folder.glob("*.wav"))) < 5000 and not (folder / "manifest.jsonl").exists()


def test_a_script_without_a_main_guard_is_told_not_left_waiting(tmp_path):
    """The worker imports the calling script (as spawn does): unguarded, its make_corpus would wait
    forever on the caller's lock; both sides say what happened instead."""
    script = tmp_path / "make.py"
    script.write_text(f"from recipes.speech import TRAIN_VOICES, make_corpus\nmake_corpus({str(tmp_path / 'c')!r}, 2, TRAIN_VOICES, seed=3)\n")
    p = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=subprocess_env(), cwd=ROOT, timeout=120)
    assert p.returncode == 1 and "put the script's code under if __name__ == '__main__':" in p.stderr, p.stderr[-2000:]
    assert p.stderr.strip().splitlines()[-1].startswith(f"recipes.speech.SpeechError: {tmp_path / 'c'}: the speech synthesis worker stopped")


def test_show_audio_draws_waveform_and_slices(tmp_path, monkeypatch, capsys):
    import soundfile as sf

    from recipes.speech import show_audio

    sf.write(tmp_path / "one.wav", Synthesizer.get().say("one two", "en+m3"), SYNTH_RATE)
    out = show_audio(tmp_path / "one.wav", tmp_path / "one_mel.png", slice_frames=5)
    assert out.exists() and out.stat().st_size > 5000
    whole = (tmp_path / "one.wav").read_bytes()  # a file cut short (training refuses it) is drawn as far as it goes, and said
    (tmp_path / "cut.wav").write_bytes(whole[: len(whole) // 2])
    assert show_audio(tmp_path / "cut.wav", tmp_path / "cut.png").stat().st_size > 5000
    assert f"show: audio {tmp_path / 'cut.wav'}: the file ends after " in capsys.readouterr().err

    from recipes.cli import main

    AudioTokenizer(slice_frames=4).save(tmp_path / "run" / "tokenizers" / "audio")  # `show --run`: a speech run's slices
    assert main(["show", str(tmp_path / "one.wav"), "--run", str(tmp_path / "run"), "--out", str(tmp_path / "run.png")]) == 0
    assert (tmp_path / "run.png").stat().st_size > 5000
    assert main(["show", str(tmp_path / "one.wav"), "--run", str(tmp_path)]) == 2  # no audio tokenizer there: one line
    capsys.readouterr()  # an image's options for audio, audio's for an image: named (they were ignored)
    assert main(["show", str(tmp_path / "one.wav"), "--patch-size", "4"]) == 2
    assert capsys.readouterr().err == f"mmtok: error: --patch-size: an image's; {tmp_path / 'one.wav'} is audio (its tokens: --slice-frames)\n"
    assert main(["show", str(tmp_path / "one.png"), "--slice-frames", "4"]) == 2
    assert capsys.readouterr().err == f"mmtok: error: --slice-frames: audio's; {tmp_path / 'one.png'} is an image (its tokens: --patch-size)\n"
    import recipes.speech

    drawn = []  # a 128-mel run (large-v3's front end) is drawn with its 128 bins, not 80
    monkeypatch.setattr(recipes.speech, "show_audio", lambda *a: drawn.append(a) or show_audio(*a))
    AudioTokenizer(n_mels=128, slice_frames=2).save(tmp_path / "run128" / "tokenizers" / "audio")
    assert main(["show", str(tmp_path / "one.wav"), "--run", str(tmp_path / "run128"), "--out", str(tmp_path / "run128.png")]) == 0
    assert drawn[0][2:] == (2, 128) and (tmp_path / "run128.png").stat().st_size > 5000
