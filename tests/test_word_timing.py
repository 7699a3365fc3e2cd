"""Word timestamps against openai-whisper's own (`whisper.timing`): the dynamic time warping, the
median filter, the word splitting, and the alignment of a window's text to its audio on the same
weights and speech."""

import copy
import dataclasses
import re

import numpy as np
import pytest
import soundfile as sf
import torch

whisper = pytest.importorskip("whisper")
pytest.importorskip("espeakng_loader")
timing = pytest.importorskip("whisper.timing")

from recipes import whisper_folder  # noqa: E402
from recipes.speech import TRAIN_VOICES, make_corpus  # noqa: E402
from recipes.word_timing import add_word_timestamps, dtw, find_alignment, median_filter, split_to_word_tokens  # noqa: E402


def test_dtw_and_median_filter_equal_openai_whispers():
    """The anti-diagonal DTW takes openai-whisper's path on random costs, on costs full of ties
    (small integers: its diagonal-then-down-then-right preference decides), on costs whose paths
    differ by less than float32 tells apart (numba sums them in float64) and on thin shapes."""
    rng = np.random.default_rng(0)
    for shape in [(1, 1), (1, 7), (7, 1), (5, 9), (12, 40), (40, 12), (23, 700)]:
        for x in (rng.normal(size=shape), rng.integers(0, 3, size=shape).astype(np.float64), 100 + rng.normal(size=shape) * 1e-3):
            want = timing.dtw_cpu(x.copy())
            got = dtw(x)
            assert np.array_equal(np.stack(got), want), shape
    x = torch.randn(3, 6, 50)
    for width in (1, 3, 7):
        torch.testing.assert_close(median_filter(x, width), timing.median_filter(x, width), rtol=0, atol=0)
    assert torch.equal(median_filter(x[..., :2], 7), x[..., :2])  # shorter than the padding: unchanged, as there
    with pytest.raises(ValueError, match="median filter width 4: expected an odd number"):
        median_filter(x, 4)


QUERY_SCALE = 30.0


def sharp_whisper(path, width: int, heads: int, layers: int, positions: int, seed: int, confidence: float = 1.0):
    """A random openai-whisper model saved at `path` as openai-whisper saves one, with sharper cross-
    attention than random weights give (so that words align to different frames) and small token
    embeddings (so that it varies its tokens): (our model of it, its audio and text tokenizers,
    openai-whisper's model with the saved fp16 values in fp32)."""
    dims = whisper.model.ModelDimensions(n_mels=80, n_audio_ctx=1500, n_audio_state=width, n_audio_head=heads, n_audio_layer=1,
                                         n_vocab=51865, n_text_ctx=positions, n_text_state=width, n_text_head=heads, n_text_layer=layers)  # fmt: skip
    torch.manual_seed(seed)
    ref = whisper.model.Whisper(dims)
    torch.nn.init.normal_(ref.decoder.positional_embedding, std=0.02)  # note: openai-whisper leaves it torch.empty
    torch.nn.init.normal_(ref.decoder.token_embedding.weight, std=0.05)
    with torch.no_grad():
        for block in ref.decoder.blocks:
            block.cross_attn.query.weight.mul_(QUERY_SCALE)
        ref.decoder.ln.weight.mul_(confidence)  # scales its logits: the same greedy tokens, surer of them
    torch.save({"dims": dataclasses.asdict(dims), "model_state_dict": ref.half().state_dict()}, path)
    model, audio_tok, text_tok = whisper_folder.whisper_weights(whisper_folder.Config(data=str(path.parent), init_from=str(path), language="en"))
    return model.eval(), audio_tok, text_tok, ref.float().eval()


@pytest.fixture(scope="module")
def whisper_pair(tmp_path_factory):
    """(our model, its tokenizers, openai-whisper's model, two utterances, the folder with the weights
    and the utterances) on the same random weights: 2 decoder layers of 2 heads, so the default
    alignment heads are the second layer's."""
    root = tmp_path_factory.mktemp("words")
    model, audio_tok, text_tok, ref = sharp_whisper(root / "w.pt", width=32, heads=2, layers=2, positions=48, seed=0)
    rows = make_corpus(root / "speech", 2, TRAIN_VOICES, seed=3)
    waves = [sf.read(root / "speech" / r.file_name, dtype="float32")[0] for r in rows]
    with open(root / "speech" / "metadata.csv", "w") as f:  # the folder serves as a run's data too
        f.write("file_name,transcription\n" + "".join(f"{r.file_name},{r.transcription}\n" for r in rows))
    return model, audio_tok, text_tok, ref, waves, root


def test_words_split_as_openai_whisper_splits_them(whisper_pair):
    _, _, text_tok, *_ = whisper_pair
    eot = text_tok.special_ids["<|endoftext|>"]
    for language, text in [("en", " Hello, world. It's 3:30 — isn't it?\"Yes!\" (said she)"), ("de", " Grüße aus Köln, sagte Ĳsbrand."),
                           ("ja", "こんにちは、世界。"), ("zh", "你好，世界！"), ("en", " émoji 🎉🎉 done")]:  # fmt: skip
        ref = whisper.tokenizer.get_tokenizer(True, language=language)
        tokens = text_tok.encode_ids(text).tolist() + [eot]
        assert tokens == ref.encode(text) + [ref.eot]
        assert split_to_word_tokens(text_tok, tokens, language) == ref.split_to_word_tokens(tokens), text


def test_word_timestamps_equal_openai_whispers(whisper_pair):
    """find_alignment gives openai-whisper's words, token groups, times and probabilities for the
    same window and text; add_word_timestamps then gives its words per segment and moves the
    segments' ends as it does, across two windows (the second reads where the first's speech ended)."""
    model, audio_tok, text_tok, ref, waves, _ = whisper_pair
    tokenizer = whisper.tokenizer.get_tokenizer(True, language="en", task="transcribe")
    sot_sequence = list(tokenizer.sot_sequence)
    texts = [" The quick brown fox, it said, jumps over (the) lazy dog.", " Yes! \"Seven\" point two; done."]
    last = {"ours": 0.0, "theirs": 0.0}
    for wave, text in zip(waves, texts):
        tokens = text_tok.encode_ids(text).tolist()
        mel = whisper.log_mel_spectrogram(whisper.pad_or_trim(torch.from_numpy(wave)))
        num_frames = len(wave) // 160
        memory = model.encode_memory({"audio": audio_tok.encode_batch([wave])})
        ours = find_alignment(model, text_tok, memory, sot_sequence, tokens, num_frames, "en")
        theirs = timing.find_alignment(ref, tokenizer, tokens, mel, num_frames)
        assert [(w["word"], w["tokens"]) for w in ours] == [(t.word, t.tokens) for t in theirs]
        assert [(w["start"], w["end"]) for w in ours] == [(t.start, t.end) for t in theirs]
        assert len({w["start"] for w in ours}) >= 3 and ours[-1]["end"] <= num_frames / 100  # times vary, within the sound
        assert find_alignment(model, text_tok, memory, sot_sequence, tokens, 1, "en") == []  # 10 ms: no encoder position to align to
        np.testing.assert_allclose([w["probability"] for w in ours], [t.probability for t in theirs], rtol=1e-4)
        # two segments, as a timestamped window has them; openai-whisper's seek 100 = the window starts 1.0 s in
        half = len(tokens) // 2
        segments = [{"seek": 100, "start": 1.0, "end": 2.0, "tokens": tokens[:half] + [tokenizer.timestamp_begin + 50]},
                    {"seek": 100, "start": 2.0, "end": 1.0 + len(wave) / 16000, "tokens": tokens[half:]}]  # fmt: skip
        mine = copy.deepcopy(segments)
        last["ours"] = add_word_timestamps(mine, ours, tokenizer.eot, 1.0, last["ours"])
        timing.add_word_timestamps(segments=segments, model=ref, tokenizer=tokenizer, mel=mel, num_frames=num_frames,
                                   last_speech_timestamp=last["theirs"])  # fmt: skip
        last["theirs"] = segments[-1]["words"][-1]["end"]  # openai-whisper's transcribe: the last word's end
        for a, b in zip(mine, segments):
            assert (a["start"], a["end"]) == (b["start"], b["end"])
            assert [(w["word"], w["start"], w["end"]) for w in a["words"]] == [(w["word"], w["start"], w["end"]) for w in b["words"]]
        assert last["ours"] == last["theirs"] and sum(len(s["words"]) for s in mine) >= 5
    assert find_alignment(model, text_tok, memory, sot_sequence, [], 100) == []


def openai_window(tokenizer, tokens: list[int], time_offset: float, frames: int) -> list[dict]:
    """The segments openai-whisper's transcribe makes of a window's decoded tokens (its code, from
    whisper/transcribe.py, for windows that end on a timestamp or have none; no seeking)."""
    tokens = torch.tensor(tokens, dtype=torch.long)
    stamps = tokens.ge(tokenizer.timestamp_begin)
    consecutive = (torch.where(stamps[:-1] & stamps[1:])[0] + 1).tolist()
    pos = lambda t: (t.item() - tokenizer.timestamp_begin) * 0.02  # noqa: E731
    seg = lambda a, b, t: {"seek": round(time_offset * 100), "start": a, "end": b, "tokens": t.tolist(),  # noqa: E731
                           "text": tokenizer.decode([x for x in t.tolist() if x < tokenizer.eot])}
    if not consecutive:
        return [seg(time_offset, time_offset + frames * 0.01, tokens)]
    assert stamps[-2:].tolist() == [False, True], "a closed last segment"
    slices = [*consecutive, len(tokens)]
    return [seg(time_offset + pos(tokens[a]), time_offset + pos(tokens[b - 1]), tokens[a:b]) for a, b in zip([0, *slices], slices)]


def test_a_windows_segments_get_words_as_openai_whispers_transcribe_gives_them(whisper_pair):
    """window_segments with words equals openai-whisper's transcribe on one window: all its text is
    aligned, a segment timed in the padding (after the sound) too; the segments left without text or
    length are cleared after, the kept ones' tokens are what the next window reads, and where the
    speech ends (`get_end`) is the last word's end, or without words the last segment's."""
    import whisper.utils

    from recipes.whisper_digits import window_segments, window_words

    model, audio_tok, text_tok, ref, waves, _ = whisper_pair
    tokenizer = whisper.tokenizer.get_tokenizer(True, language="en", task="transcribe")
    wave = waves[0][: len(waves[0]) // 160 * 160]  # whole 10 ms frames, as openai-whisper counts a window's sound
    frames, seconds = len(wave) // 160, len(wave) / 16000
    mel = whisper.log_mel_spectrogram(whisper.pad_or_trim(torch.from_numpy(wave)))
    memory = model.encode_memory({"audio": audio_tok.encode_batch([wave])})
    ts = lambda s: tokenizer.timestamp_begin + round(s / 0.02)  # noqa: E731
    words = text_tok.encode_ids(" The quick brown fox, it said, jumps over the lazy dog. Yes!").tolist()
    late = round(seconds + 0.3, 1)  # in the padding: openai-whisper keeps its text, aligned to the sound
    q = [round(seconds * f / 0.02) * 0.02 for f in (0.3, 0.4, 0.8)]  # times within the sound
    windows = {"timed": ([ts(0), *words[:4], ts(q[0]), ts(q[0]), ts(q[1]), ts(q[1]), *words[4:9], ts(q[2]), ts(late), *words[9:], ts(late + 0.5)],
                         True),
               "blank": ([ts(0), ts(q[0]), ts(q[0]), *text_tok.encode_ids(" ").tolist(), ts(q[2])], True),
               "empty": ([], False)}  # fmt: skip
    for name, (tokens, timestamps) in windows.items():
        theirs = openai_window(tokenizer, tokens, 1.0, frames)
        timing.add_word_timestamps(segments=theirs, model=ref, tokenizer=tokenizer, mel=mel, num_frames=frames, last_speech_timestamp=0.5)
        their_end = whisper.utils.get_end(theirs)
        for s in theirs:  # openai-whisper's transcribe clears these, and carries every segment's tokens
            if s["start"] == s["end"] or s["text"].strip() == "":
                s["text"], s["tokens"], s["words"] = "", [], []
        end = {}

        def timed(window):
            end["ours"] = window_words(model, text_tok, memory, list(tokenizer.sot_sequence), window, 1.0, len(wave), 0.5)

        ours = window_segments(text_tok, {"tokens": tokens}, 1.0, len(wave), timestamps, timed)
        kept = [s for s in theirs if s["text"]]
        assert [(s["start"], s["end"], s["text"]) for s in ours] == [(s["start"], s["end"], s["text"].strip()) for s in kept], name
        assert [[(w["word"], w["start"], w["end"]) for w in s["words"]] for s in ours] == [
            [(w["word"], w["start"], w["end"]) for w in s["words"]] for s in kept], name  # fmt: skip
        assert [t for s in ours for t in s["tokens"]] == [t for s in theirs for t in s["tokens"]], name  # carried
        assert end["ours"] == their_end, name
    assert len(ours) == 0 and end["ours"] == 1.0 + seconds  # the empty window: speech ends with it
    timed_words = window_segments(text_tok, {"tokens": windows["timed"][0]}, 1.0, len(wave), True, timed)
    assert timed_words[-1]["text"] == text_tok.decode(words[9:]).strip() and timed_words[-1]["words"]  # the padding's segment, aligned
    assert len({w["start"] for s in timed_words for w in s["words"]}) >= 3
    for punctuations in [("", ""), ('"', ",")]:  # openai-whisper's prepend / append_punctuations options
        theirs = openai_window(tokenizer, windows["timed"][0], 1.0, frames)
        timing.add_word_timestamps(segments=theirs, model=ref, tokenizer=tokenizer, mel=mel, num_frames=frames, last_speech_timestamp=0.5,
                                   prepend_punctuations=punctuations[0], append_punctuations=punctuations[1])  # fmt: skip
        ours = window_segments(text_tok, {"tokens": windows["timed"][0]}, 1.0, len(wave), True, lambda window: window_words(
            model, text_tok, memory, list(tokenizer.sot_sequence), window, 1.0, len(wave), 0.5, None, punctuations))  # fmt: skip
        said = [(w["word"], w["start"], w["end"]) for s in ours for w in s["words"]]
        assert said == [(w["word"], w["start"], w["end"]) for s in theirs if s["text"].strip() and s["start"] != s["end"] for w in s["words"]]
        assert "." in [w for w, *_ in said]  # "." is in neither: a word of its own, not " dog." as by default


def test_transcribe_word_timestamps_on_the_command_line(whisper_pair, tmp_path, capsys):
    """`mmtok transcribe --word-timestamps`: every json segment carries its words, in order, inside the
    recording, whose text is the segment's; with --timestamps too, across two windows."""
    import json

    from recipes.cli import main

    *_, waves, root = whisper_pair
    run = tmp_path / "run"
    whisper_folder.main(whisper_folder.Config(data=str(root / "speech"), init_from=str(root / "w.pt"), language="en", run_dir=str(run),
                                              val_fraction=0.5, max_steps=0, batch_size=2, eval_utterances=1, max_text=48, cpu=True))  # fmt: skip
    silence = np.zeros(16000 * 35, np.float32)
    sf.write(tmp_path / "talk.wav", np.concatenate([waves[0], silence, waves[1]]), 16000)  # two windows
    for flags in ([], ["--timestamps"]):
        out = tmp_path / ("out" + "".join(flags))
        assert main(["transcribe", str(run), str(tmp_path / "talk.wav"), "--word-timestamps", "--output-format", "json", "--output-dir", str(out),
                     *flags]) == 0  # fmt: skip
        result = json.loads((out / "talk.json").read_text())
        starts = [w["start"] for s in result["segments"] for w in s["words"]]
        assert len(result["segments"]) >= 2 and starts == sorted(starts)  # (a random model: its words cluster in time)
        for seg in result["segments"]:
            assert seg["words"] and "".join(w["word"] for w in seg["words"]).strip() == seg["text"]
            assert 0 <= seg["start"] < seg["end"] <= 35 + (len(waves[0]) + len(waves[1])) / 16000
            assert all(w["start"] <= w["end"] and 0 <= w["probability"] <= 1 for w in seg["words"])
            assert all(w[k] == round(w[k], 3) for w in seg["words"] for k in ("start", "end"))  # (as the segments; was 9.559999999999999)
        assert result["segments"][-1]["words"][0]["start"] > 35  # the second window's words, in the recording's time
    sf.write(tmp_path / "cut.flac", np.concatenate([waves[0], silence[: 16000 * 10]]), 16000)
    size = (tmp_path / "cut.flac").stat().st_size  # (about where 10 s of the silence end in the whole file's bytes)
    sf.write(tmp_path / "cut.flac", np.concatenate([waves[0], silence, waves[1]]), 16000)
    (tmp_path / "cut.flac").write_bytes((tmp_path / "cut.flac").read_bytes()[:size])  # a copy cut short in the silence
    for windows in ("pauses", "seek"):
        capsys.readouterr()
        assert main(["transcribe", str(run), str(tmp_path / "cut.flac"), "--windows", windows, "--output-format", "json",
                     "--output-dir", str(tmp_path / f"cut-{windows}")]) == 0  # fmt: skip
        err = capsys.readouterr().err
        assert re.search(r"cut.flac: audio .*cut.flac: decoding failed after (\d+\.\d) s \(.*\); the text covers the recording up to there", err), err
        cut = float(re.search(r"after (\d+\.\d) s", err)[1])
        assert len(waves[0]) / 16000 < cut < 35
        segments = json.loads((tmp_path / f"cut-{windows}" / "cut.json").read_text())["segments"]
        assert segments and segments[-1]["end"] <= cut + 0.01, windows
    said = sum(len(s["words"]) for s in result["segments"])
    assert main(["transcribe", str(run), str(tmp_path / "talk.wav"), "--word-timestamps", "--timestamps", "--max-words-per-line", "1",
                 "--output-format", "srt", "--output-dir", str(tmp_path / "one")]) == 0  # fmt: skip
    assert (tmp_path / "one" / "talk.srt").read_text().count(" --> ") == said  # a cue per word
    capsys.readouterr()
    assert main(["transcribe", str(run), str(tmp_path / "talk.wav"), "--highlight-words"]) == 2
    assert "--highlight-words: subtitle lines are made of words; it needs --word-timestamps" in capsys.readouterr().err
    assert main(["transcribe", str(run), str(tmp_path / "talk.wav"), "--word-timestamps", "--alignment-heads", "1:0,1:1"]) == 0
    capsys.readouterr()
    assert main(["transcribe", str(run), str(tmp_path / "talk.wav"), "--word-timestamps", "--timestamps", "--windows", "seek", "--output-format", "json",
                 "--output-dir", str(tmp_path / "seek")]) == 0  # fmt: skip
    seek = json.loads((tmp_path / "seek" / "talk.json").read_text())["segments"]
    assert seek and all(s["words"] for s in seek) and seek[-1]["end"] > 35  # openai-whisper's windows reach the second utterance too
    assert main(["transcribe", str(run), str(tmp_path / "talk.wav"), "--word-timestamps", "--task", "translate"]) == 0
    assert "word timestamps on a translation may not be reliable" in capsys.readouterr().err  # as openai-whisper warns
    assert main(["transcribe", str(run), str(tmp_path / "talk.wav"), "--word-timestamps", "--hallucination-silence-threshold", "2"]) == 2
    assert "--hallucination-silence-threshold: it skips silence around words that look made up; it needs --windows seek and --word-timestamps" in capsys.readouterr().err
    assert main(["transcribe", str(run), str(tmp_path / "talk.wav"), "--clip-timestamps", "1,2"]) == 2
    assert "--clip-timestamps: the clips are read as openai-whisper's windows; it needs --windows seek" in capsys.readouterr().err
    threads = torch.get_num_threads()
    try:
        assert main(["transcribe", str(run), str(tmp_path / "talk.wav"), "--threads", "1"]) == 0 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
    assert main(["transcribe", str(run), str(tmp_path / "talk.wav"), "--suppress-tokens=-1,abc"]) == 2
    assert "--suppress-tokens '-1,abc': expected token ids separated by commas" in capsys.readouterr().err
    assert main(["transcribe", str(run), str(tmp_path / "talk.wav"), "--patience", "2"]) == 2  # as openai-whisper: patience needs beams
    assert "--patience 2.0: beam search's; give a --beam-size above 1" in capsys.readouterr().err
    talk = str(tmp_path / "talk.wav")
    assert main(["transcribe", str(run), talk, talk, "--beam-size", "2", "--patience", "0.2"]) == 2  # refused once, before any audio
    assert capsys.readouterr().err == "mmtok: error: --patience 0.2: --beam-size 2 × patience rounds to no finished beam; use a patience above 0.25\n"
    assert main(["transcribe", str(run), str(tmp_path / "talk.wav"), "--append-punctuations", ","]) == 2
    assert "--prepend-punctuations / --append-punctuations: they join punctuation to words; it needs --word-timestamps" in capsys.readouterr().err
    assert main(["transcribe", str(run), str(tmp_path / "talk.wav"), "--alignment-heads", "1:0"]) == 2
    assert "--alignment-heads: the heads align words; it needs --word-timestamps" in capsys.readouterr().err
    assert main(["transcribe", str(run), str(tmp_path / "talk.wav"), "--word-timestamps", "--alignment-heads", "2:0"]) == 2
    assert "alignment heads (2, 0): expected (layer, head) pairs within this decoder's 2 layers × 2 heads" in capsys.readouterr().err


def test_seek_windows_transcribe_as_openai_whisper_does(whisper_pair, tmp_path, capsys):
    """transcribe_files(windows="seek") on a run on Whisper's weights gives openai-whisper's
    `transcribe` segments (times, text, words) on the same weights and a 58 s recording: windows
    that start at the last timestamp of the one before, or at its last word's end; the text carried
    to the next window, windows that decode one token past the decoder's positions (as openai-
    whisper's decoder samples it); an initial prompt read first; and hallucination_silence_threshold,
    which drops segments whose words look made up and moves the windows past the silence around them;
    clip_timestamps, which reads only the clips given; carry_initial_prompt (also with an initial
    prompt longer than the decoder's room for previous text); beam search with patience.
    The model is sure of its tokens (confidence=10), so that some words are likely enough not to
    look made up."""
    *_, waves, root = whisper_pair
    model, audio_tok, text_tok, ref = sharp_whisper(tmp_path / "w.pt", width=32, heads=2, layers=2, positions=96, seed=0, confidence=10)
    run = tmp_path / "run"
    whisper_folder.main(whisper_folder.Config(data=str(root / "speech"), init_from=str(tmp_path / "w.pt"), language="en", run_dir=str(run),
                                              val_fraction=0.5, max_steps=0, batch_size=2, eval_utterances=1, max_text=96, cpu=True))  # fmt: skip
    rng = np.random.default_rng(0)
    audio = np.concatenate([p for w in waves * 6 for p in (w, np.zeros(int(16000 * rng.uniform(0.5, 6)), np.float32))])
    sf.write(tmp_path / "talk.wav", audio, 16000)
    counts, outs = [], []
    configs = [(True, True, None, None, "0", False, None), (False, False, "Seven, four.", None, "0", False, None),
               (True, True, None, 1.0, "0", False, None), (True, True, None, None, "5,25,40", False, None),
               (False, False, "Seven, four.", None, "0", True, None), (True, True, None, None, "0", False, 3),
               (True, False, "Seven, four. " * 12, None, "0", True, None)]  # fmt: skip
    for condition, words, prompt, threshold, clips, carry, beam in configs:
        patience = 2.0 if beam else None
        theirs = whisper.transcribe(ref, audio, language="en", temperature=0.0, fp16=False, condition_on_previous_text=condition, word_timestamps=words,
                                    initial_prompt=prompt, carry_initial_prompt=carry, hallucination_silence_threshold=threshold,
                                    clip_timestamps=clips, beam_size=beam, patience=patience, verbose=None)  # fmt: skip
        ours = whisper_folder.transcribe_files(run, [str(tmp_path / "talk.wav")], fallback={"temperatures": (0.0,)}, suppress=True,
                                               initial_prompt=prompt, condition_on_previous_text=condition, timestamps=True, word_timestamps=words,
                                               windows="seek", hallucination_silence_threshold=threshold, clip_timestamps=clips,
                                               carry_initial_prompt=carry, beam_size=beam, patience=patience)[0]  # fmt: skip
        kept = [s for s in theirs["segments"] if s["text"].strip()]  # openai-whisper keeps the ones it cleared, empty
        counts.append(len(kept))
        outs.append(ours)
        assert [(s["start"], s["end"], s["text"]) for s in ours["segments"]] == [
            (round(s["start"], 3), round(s["end"], 3), s["text"].strip()) for s in kept]  # fmt: skip
        assert ours["text"] == theirs["text"].strip()  # the file's text: every token decoded at once, as there
        assert [s["temperature"] for s in ours["segments"]] == [s["temperature"] for s in kept]
        np.testing.assert_allclose([s["avg_logprob"] for s in ours["segments"]], [s["avg_logprob"] for s in kept], rtol=1e-4)
        assert len({s["seek"] for s in kept}) >= 2 and (beam or any(s["seek"] % 3000 for s in kept))  # windows placed by their text
        if words:
            assert [(w["word"], w["start"], w["end"]) for s in ours["segments"] for w in s["words"]] == [
                (w["word"], w["start"], w["end"]) for s in kept for w in s["words"]]  # fmt: skip
    assert 0 < counts[2] < counts[0]  # the threshold dropped segments, and kept some
    assert counts[3] and outs[3]["segments"][0]["start"] >= 5 and not any(25 < s["start"] < 40 for s in outs[3]["segments"])  # only the clips
    assert [s["text"] for s in outs[4]["segments"]] != [s["text"] for s in outs[1]["segments"]]  # the prompt read before every window
    assert [s["text"] for s in outs[5]["segments"]] != [s["text"] for s in outs[0]["segments"]]  # the beams found other text (else as 0)
    with pytest.raises(ValueError, match="patience=2: beam search's; give a beam_size above 1"):
        whisper_folder.transcribe_files(run, [str(tmp_path / "talk.wav")], windows="seek", patience=2)
    for bad, why in [("5,x", "clip_timestamps '5,x': expected seconds separated by commas"), ("10,5", r"clip 1 \(10 s to 5 s\) ends before it starts")]:
        with pytest.raises(ValueError, match=why):
            whisper_folder.transcribe_files(run, [str(tmp_path / "talk.wav")], windows="seek", clip_timestamps=bad)
    capsys.readouterr()
    assert whisper_folder.transcribe_files(run, [str(tmp_path / "talk.wav")], windows="seek", clip_timestamps="500,600")[0]["segments"] == []
    assert "no speech found (clip_timestamps hold none of its 57.78 s)" in capsys.readouterr().err  # not "silence"
    with pytest.raises(ValueError, match="clip_timestamps: the clips are read as openai-whisper's windows; it needs windows=seek"):
        whisper_folder.transcribe_files(run, [str(tmp_path / "talk.wav")], clip_timestamps="5")
    with pytest.raises(ValueError, match="windows='both': expected 'pauses'"):
        whisper_folder.transcribe_files(run, [str(tmp_path / "talk.wav")], windows="both")
    with pytest.raises(ValueError, match="hallucination_silence_threshold: .* needs windows=seek and word_timestamps"):
        whisper_folder.transcribe_files(run, [str(tmp_path / "talk.wav")], windows="seek", hallucination_silence_threshold=1.0)


def test_word_subtitles_equal_openai_whispers_writers(tmp_path):
    """With words, vtt / srt cues are made from them byte for byte as openai-whisper's writers make
    them, under each of its subtitle options; without words, the segments' cues as before."""
    import whisper.utils

    from recipes.transcripts import render

    def words(start, text, step=0.4):
        return [{"word": w, "start": round(start + i * step, 2), "end": round(start + (i + 1) * step - 0.05, 2), "probability": 0.9}
                for i, w in enumerate(text)]  # fmt: skip

    first = words(0.5, [" Hello", " there,", " general", " Kenobi.", " You", " are", " a", " bold", " one."])
    second = words(9.0, [" It", " -->", " was", " a", " long", " pause."])  # more than 3 s after the first: a pause
    third = words(3700.2, [" An", " hour", " later."])  # past an hour: vtt writes hours
    result = {"text": "x", "language": "en", "segments": [
        {"id": i, "start": w[0]["start"] - 0.1, "end": w[-1]["end"] + 0.1, "text": "".join(x["word"] for x in w).strip(), "words": w}
        for i, w in enumerate((first, second, third))]}  # fmt: skip
    for options in [{}, {"max_words_per_line": 2}, {"max_line_width": 12, "max_line_count": 2}, {"max_line_width": 20, "max_line_count": 1},
                    {"highlight_words": True}, {"highlight_words": True, "max_words_per_line": 3}, {"max_line_width": 12}]:  # fmt: skip
        full = {"max_line_width": None, "max_line_count": None, "highlight_words": False, "max_words_per_line": None, **options}
        for fmt in ("vtt", "srt"):
            whisper.utils.get_writer(fmt, str(tmp_path))(result, "talk.wav", full)
            assert render(result, fmt, options) == (tmp_path / f"talk.{fmt}").read_text(encoding="utf-8"), (fmt, options)
    plain = {**result, "segments": [{k: v for k, v in s.items() if k != "words"} for s in result["segments"]]}
    whisper.utils.get_writer("srt", str(tmp_path))(plain, "talk.wav", {"max_line_width": None, "max_line_count": None, "highlight_words": False})
    assert render(plain, "srt") == (tmp_path / "talk.srt").read_text(encoding="utf-8") and "->" in render(plain, "srt")
    assert render(result, "srt", {"max_line_width": 12, "max_line_count": 2}).count("\n\n") > render(result, "srt").count("\n\n")


def test_a_released_models_alignment_heads(tmp_path):
    """alignment_heads("tiny") gives the heads openai-whisper sets for its tiny model, on weights of
    tiny's decoder shape (4 layers × 6 heads), and find_alignment with them gives its words; lists and
    "layer:head" text are checked against the model."""
    from recipes.word_timing import alignment_heads

    model, audio_tok, text_tok, ref = sharp_whisper(tmp_path / "w.pt", width=48, heads=6, layers=4, positions=32, seed=1)
    ref.set_alignment_heads(whisper._ALIGNMENT_HEADS["tiny"])
    heads = alignment_heads("tiny", model)
    assert heads == [tuple(p) for p in ref.alignment_heads.indices().T.tolist()] and len(heads) < 24
    assert alignment_heads("3:5, 2:0", model) == [(3, 5), (2, 0)] and alignment_heads(None, model) is None
    for bad, message in [("4:0", r"\(4, 0\): expected \(layer, head\) pairs within this decoder's 4 layers × 6 heads"),
                         ("base", "that model has 48 decoder heads in all, this one 4 layers × 6 heads"),
                         ("huge", "not a released Whisper model"), ("1:x", "expected layer:head pairs")]:  # fmt: skip
        with pytest.raises(ValueError, match=message):
            alignment_heads(bad, model)
    wave = np.random.default_rng(0).normal(0, 0.1, 16000 * 3).astype(np.float32)
    tokenizer = whisper.tokenizer.get_tokenizer(True, language="en", task="transcribe")
    tokens = text_tok.encode_ids(" One, two; three four five six.").tolist()
    mel = whisper.log_mel_spectrogram(whisper.pad_or_trim(torch.from_numpy(wave)))
    memory = model.encode_memory({"audio": audio_tok.encode_batch([wave])})
    ours = find_alignment(model, text_tok, memory, list(tokenizer.sot_sequence), tokens, 300, "en", heads)
    theirs = timing.find_alignment(ref, tokenizer, tokens, mel, 300)
    assert [(w["word"], w["start"], w["end"]) for w in ours] == [(t.word, t.start, t.end) for t in theirs]


def test_clip_timestamps_become_openai_whispers_frames():
    """seek_clips rounds seconds to frames as openai-whisper's transcribe does (round(t * 100), an
    int rate: t * 16000 / 160 rounds apart at some half frames), reads nothing for an empty clip,
    and names a non-finite time."""
    from recipes.whisper_seek import seek_clips

    times = sorted(round(x, 3) for x in np.random.default_rng(0).uniform(0, 200, 4000)) + [200.545, 201.035]
    assert [p for clip in seek_clips(times, 10**6) for p in clip] == [round(t * 100) for t in times]
    assert seek_clips("0.545,1.035", 3000) == [(55, 103)]
    assert seek_clips("5,5,7", 3000) == [(500, 500), (700, 3000)]  # the empty clip reads nothing (transcribe_seeking's loop)
    for bad in ("nan", "inf,10", [0.0, float("nan")]):
        with pytest.raises(ValueError, match="expected finite seconds"):
            seek_clips(bad, 3000)
    for bad, what in [("-5", r"clip 1 \(from -5 s\) starts before 0 s"), ("0,4,9,7", r"clip 2 \(9 s to 7 s\) ends before it starts")]:
        with pytest.raises(ValueError, match=what + "; expected start,end,start,end"):
            seek_clips(bad, 3000)
    from recipes.transcripts import timestamp

    assert timestamp(3725.5, False, ",") == "01:02:05,500"
    with pytest.raises(ValueError, match="subtitle time -0.02 s: expected a time of 0 or more"):  # it read -1:59:59,980
        timestamp(-0.02, True, ",")
