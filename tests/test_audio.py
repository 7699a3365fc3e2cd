"""Audio tokenizer: log-mel parity with openai-whisper, slicing, resampling, bad input."""

import numpy as np
import pytest
import soundfile as sf
import torch

from tokenizers_mm import load_tokenizer
from tokenizers_mm.audio import N_FRAMES, N_SAMPLES, SAMPLE_RATE, AudioError, AudioTokenizer, load_audio, log_mel_spectrogram, stream_audio, to_waveform

whisper_audio = pytest.importorskip("whisper.audio")


def speechlike(seconds: float, seed: int = 0) -> torch.Tensor:
    """A deterministic voiced signal: harmonics of a gliding pitch under a syllable envelope, plus noise."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    f0 = 120 + 40 * torch.sin(2 * torch.pi * 0.7 * t)
    phase = 2 * torch.pi * torch.cumsum(f0, 0) / SAMPLE_RATE
    voiced = sum(torch.sin(k * phase) / k for k in range(1, 12))
    envelope = 0.5 * (1 + torch.sin(2 * torch.pi * 3 * t)) ** 2
    return (0.3 * voiced * envelope + 0.01 * torch.randn(t.shape, generator=g)).float()


@pytest.mark.parametrize("n_mels", [80, 128])
@pytest.mark.parametrize(
    "audio",
    [
        speechlike(1.0),
        speechlike(7.3, seed=1),
        torch.zeros(SAMPLE_RATE),  # silence
        (speechlike(2.0, seed=2) * 20).clamp(-1, 1),  # clipping
        speechlike(0.05, seed=3),  # shorter than a second
    ],
    ids=["1s", "7.3s", "silence", "clipped", "50ms"],
)
def test_log_mel_equals_whisper(audio, n_mels):
    ours = log_mel_spectrogram(audio, n_mels)
    ref = whisper_audio.log_mel_spectrogram(audio, n_mels)
    assert ours.shape == ref.shape
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=0)


def test_thirty_second_chunk_equals_whisper_pipeline():
    audio = speechlike(12.0)
    ref = whisper_audio.log_mel_spectrogram(whisper_audio.pad_or_trim(audio), 80)  # (80, 3000)
    ts = AudioTokenizer(n_mels=80, slice_frames=1, chunk=True).encode(audio)
    assert ts.values.shape == (N_FRAMES, 80)
    torch.testing.assert_close(ts.values.T, ref, atol=1e-4, rtol=0)


def test_batched_equals_one_by_one():
    tok = AudioTokenizer(slice_frames=4, chunk=False, max_frames=1000)
    waves = [speechlike(s, seed=i) for i, s in enumerate((1.0, 2.5, 0.4))]
    batch = tok.encode_batch(waves)
    assert batch.values.shape == (3, 63, 320)  # 2.5 s = 250 frames -> 62.5 -> 63 slices of 4 frames
    assert batch.mask.sum(1).tolist() == [25, 63, 10]
    for i, wave in enumerate(waves):  # every row, not only the longest: a shorter one's tail and floor are its own
        alone = tok.encode(wave).values
        torch.testing.assert_close(batch.values[i, : len(alone)], alone, atol=1e-4, rtol=0)


@pytest.mark.parametrize("batched", [False, True])
def test_rows_of_a_batch_are_their_own_spectrograms(batched):
    """A short clip ending in a click, batched with a longer one: its last frames and its max − 8
    floor come from itself alone (reflect padding at its own end, not the batch's silence), in
    the CPU's row-by-row path and the batched STFT a GPU takes (here run on the CPU)."""
    from tokenizers_mm.audio import log_mel_rows

    quiet = speechlike(1.0, seed=3) * 1e-3
    quiet[-60:] = 0.9  # the click: the loudest thing in the clip, at its very end
    waves = [quiet, speechlike(2.0, seed=4)]
    rows = log_mel_rows(waves, 80, "cpu", batched=batched)
    assert rows.shape == (2, 80, 200)
    for row, wave in zip(rows, waves):
        alone = log_mel_spectrogram(wave)
        torch.testing.assert_close(row[:, : alone.shape[-1]], alone, atol=1e-4, rtol=0)


def test_slices_are_frame_major_with_positions():
    tok = AudioTokenizer(slice_frames=2, chunk=False, max_frames=100)
    ts = tok.encode(speechlike(0.2))
    mel = log_mel_spectrogram(tok.prepare(speechlike(0.2), "x"))
    assert ts.values.shape == (10, 160) and ts.positions.tolist() == list(range(10))
    torch.testing.assert_close(ts.values[3, :80], mel[:, 6])
    torch.testing.assert_close(ts.values[3, 80:], mel[:, 7])
    ts.validate(tok.spec)


def test_formats_rates_and_channels(tmp_path):
    wave = speechlike(1.0)
    pcm = (wave * 32767).round().short()
    torch.testing.assert_close(to_waveform(pcm.numpy()), pcm.float() / 32768)
    stereo = torch.stack([wave, wave])
    torch.testing.assert_close(to_waveform(stereo), wave)
    torch.testing.assert_close(to_waveform(stereo.T.numpy()), wave)  # (T, C) as soundfile gives it
    for rate in (8000, 22050, 44100, 44101, 48000):  # 44101: no small ratio to 16 kHz (another resampling path)
        t = np.arange(rate) / rate  # one second of a 440 Hz tone
        back = to_waveform((0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), rate)
        expected = 0.5 * np.sin(2 * np.pi * 440 * np.arange(SAMPLE_RATE) / SAMPLE_RATE)
        assert back.shape == (SAMPLE_RATE,)
        np.testing.assert_allclose(back[200:-200].numpy(), expected[200:-200], atol=2e-3)  # the same tone at 16 kHz (edges: filter ramp)
    sf.write(tmp_path / "x.wav", stereo.T.numpy(), 48000, subtype="PCM_16")
    data, rate = load_audio(tmp_path / "x.wav")
    assert rate == 48000 and data.shape == (16000,)  # mixed to mono
    assert AudioTokenizer().encode(data, rate).values.shape == (N_FRAMES, 80)
    sf.write(tmp_path / "short.wav", np.array([[0.5, -0.1, 0.3]], np.float32), 16000, subtype="FLOAT")  # 1 frame of 3 channels
    data, _ = load_audio(tmp_path / "short.wav")
    np.testing.assert_allclose(data, [0.7 / 3])  # (not 3 samples: a file's channels are known, not guessed from the shorter axis)


def test_bad_audio_is_named(tmp_path):
    (tmp_path / "empty.wav").write_bytes(b"")
    (tmp_path / "broken.wav").write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt garbage")
    (tmp_path / "folder.wav").mkdir()
    for name, message in [("empty.wav", "empty"), ("broken.wav", "not a readable audio file"), ("nope.wav", "no such file"),
                          ("folder.wav", "a folder, not an audio file")]:  # fmt: skip
        with pytest.raises(AudioError, match=f"{name}.*{message}"):
            load_audio(tmp_path / name)
    tok = AudioTokenizer(chunk=False, max_frames=200)
    with pytest.raises(AudioError, match="clip.wav: the waveform is empty"):
        tok.encode(np.zeros(0, dtype=np.float32), name="clip.wav")
    with pytest.raises(AudioError, match=r"NaN or infinite samples \(the first 0.00 s in\)$"):
        tok.encode(torch.tensor([0.0, float("nan")]))
    late = np.zeros(44100 * 20, np.float32)
    late[int(44100 * 13.37)] = np.inf
    sf.write(tmp_path / "late.wav", late, 44100, subtype="FLOAT")  # streamed in 8 s blocks: said where in the file, not the block
    with pytest.raises(AudioError, match=r"^audio \S+late.wav: the waveform holds NaN or infinite samples \(the first 13.37 s in\)$"):
        list(stream_audio(tmp_path / "late.wav", 8))
    with pytest.raises(AudioError, match="longer than max_frames=200"):
        tok.encode(torch.zeros(3 * SAMPLE_RATE))
    with pytest.raises(AudioError, match=r"pcm: int64 samples have no known scale; give float samples in \[-1, 1\] or int8"):
        tok.encode(torch.tensor([0, 1000, -1000] * 200), name="pcm")  # a list of PCM values as a tensor: not 32768 times too loud
    with pytest.raises(AudioError, match="encode_batch: 3 samples but 2 sample_rates; give one per sample"):
        tok.encode_batch([torch.zeros(1600)] * 3, sample_rates=[SAMPLE_RATE] * 2)  # no sample dropped by a short list
    with pytest.raises(AudioError, match="3 samples but 1 names"):
        tok.encode_batch([torch.zeros(1600)] * 3, names=["a"])
    waves = [np.zeros(8000, np.float32), np.zeros(8000, np.float32)]  # one rate per sample as an array or tensor, as a list
    for rates in (np.array([16000, 8000]), torch.tensor([16000, 8000])):
        assert torch.equal(tok.encode_batch(waves, rates).values, tok.encode_batch(waves, [16000, 8000]).values)
    assert AudioTokenizer(chunk=True).encode(torch.zeros(N_SAMPLES + 12345)).values.shape[0] == N_FRAMES  # trimmed


def test_stream_audio_reads_windows_block_by_block(tmp_path):
    stereo = np.stack([speechlike(7.0, seed=4).numpy(), np.zeros(7 * SAMPLE_RATE, dtype=np.float32)], 1)  # (T, 2)
    sf.write(tmp_path / "long.wav", stereo, SAMPLE_RATE, subtype="FLOAT")
    pieces = list(stream_audio(tmp_path / "long.wav", 3.0))
    assert [p.shape[0] for p in pieces] == [3 * SAMPLE_RATE, 3 * SAMPLE_RATE, SAMPLE_RATE]
    assert torch.equal(torch.cat(pieces), to_waveform(stereo, SAMPLE_RATE))
    for rate in (44100, 8000, 44101):  # other rates: the blocks join as the whole file resampled at once (no step at each join)
        t = np.arange(int(7 * rate)) / rate
        sf.write(tmp_path / "other.wav", (0.5 * np.sin(2 * np.pi * 440 * t) * (1 + np.sin(t))).astype(np.float32), rate, subtype="FLOAT")
        pieces = list(stream_audio(tmp_path / "other.wav", 3.0))
        assert len(pieces) == 3 and torch.allclose(torch.cat(pieces), to_waveform(*load_audio(tmp_path / "other.wav")), atol=1e-6), rate
    with pytest.raises(AudioError, match="empty.wav.*empty"):
        (tmp_path / "empty.wav").write_bytes(b"")
        next(stream_audio(tmp_path / "empty.wav", 3.0))


def test_a_long_recordings_log_mel_is_computed_in_pieces_with_the_same_values(monkeypatch):
    """Past LONG_FRAMES frames (10 min) a waveform's log-mel is computed that many frames at a time
    (the STFT of 1 h takes ~2 GB at once): the same values as one pass, bit for bit, reflected at the
    recording's ends only and floored at the max − 8 of all of it (here: pieces of 1,000 frames)."""
    import tokenizers_mm.audio as audio

    wave = speechlike(25.0, seed=6)
    wave[-16000:] *= 1e-4  # a quiet end: the floor is the whole recording's, not the last piece's
    for length in (len(wave), len(wave) - 37, 2001 * 160):  # (3 pieces of 833 or 834 frames, 2 of 1,000, 3 of 667)
        whole = audio._log_mel(wave[None, :length], 80)[0]
        monkeypatch.setattr(audio, "LONG_FRAMES", 1000)
        pieces = log_mel_spectrogram(wave[:length], 80)
        monkeypatch.undo()
        assert pieces.shape == whole.shape and torch.equal(pieces, whole), length


def test_stream_audio_keeps_what_a_file_cut_short_holds(tmp_path):
    """A FLAC file cut short (a broken copy): every sample before the cut comes out (libsndfile fails
    on the whole block that reaches it; that block is read again in 0.1 s pieces), then an AudioError
    that says where decoding stopped; a WAV or Ogg file cut short, which libsndfile reads to its end
    without an error, gives the same error; a file damaged from its start is an error with nothing read."""
    wave = 0.5 * speechlike(9.0, seed=5).numpy()  # (inside 16-bit FLAC's range)
    sf.write(tmp_path / "whole.flac", wave, SAMPLE_RATE)
    data = (tmp_path / "whole.flac").read_bytes()
    (tmp_path / "cut.flac").write_bytes(data[: len(data) * 2 // 3])
    pieces = []
    with pytest.raises(AudioError, match=r"audio .*cut.flac: decoding failed after \d\.\d s \(") as e:
        for piece in stream_audio(tmp_path / "cut.flac", 4.0):
            pieces.append(piece)
    read = torch.cat(pieces)
    assert 5.0 < len(read) / SAMPLE_RATE < 9.0 and f"after {len(read) / SAMPLE_RATE:.1f} s" in str(e.value)  # the cut lies in the second block
    assert torch.allclose(read, torch.from_numpy(wave[: len(read)]), atol=1 / 2**15)  # (16-bit FLAC)
    for suffix, why in (("wav", r"its header gives 288,000 bytes of samples, the file holds [\d,]+"), ("ogg", "its last Ogg page is not the stream's end")):
        sf.write(tmp_path / f"whole.{suffix}", wave, SAMPLE_RATE)  # libsndfile reads these cut short without an error: said all the same
        whole = (tmp_path / f"whole.{suffix}").read_bytes()
        (tmp_path / f"cut.{suffix}").write_bytes(whole[: len(whole) // 2])
        with pytest.raises(AudioError, match=rf"cut.{suffix}: the file ends after \d\.\d s \({why}: cut short\?\)"):
            list(stream_audio(tmp_path / f"cut.{suffix}", 4.0))
        assert sum(len(p) for p in stream_audio(tmp_path / f"whole.{suffix}", 4.0)) == len(wave)  # (a whole file: no word)
    (tmp_path / "header.flac").write_bytes(data[:200])
    with pytest.raises(AudioError, match=r"header.flac: (decoding failed \(|not a readable)"):
        next(stream_audio(tmp_path / "header.flac", 4.0))


def _hum(seconds: float) -> torch.Tensor:
    """A steady 1 kHz tone: sound in every frame, so no pause anywhere."""
    return 0.3 * torch.sin(2 * torch.pi * 1000 * torch.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE)


def _blocks(wave: torch.Tensor, seconds: float):
    n = int(seconds * SAMPLE_RATE)
    return [wave[i : i + n] for i in range(0, len(wave), n)]


def test_split_at_pauses_cuts_between_sounds_and_streams_any_block_size():
    from tokenizers_mm.audio import split_at_pauses

    sil = lambda s: torch.zeros(int(s * SAMPLE_RATE))  # noqa: E731
    parts = [sil(0.4), speechlike(0.7, 1), sil(0.3), speechlike(0.5, 2), sil(1.2), 0.1 * speechlike(0.6, 3), sil(0.2)]
    wave = torch.cat(parts)
    want = [(0.4, 0.7), (1.4, 0.5), (3.1, 0.6)]  # (start, seconds) of each sound; the quiet third is still speech
    for block in (0.37, 1.0, 10.0):  # the stream's block size changes nothing
        got = list(split_at_pauses(_blocks(wave, block), 1.0))
        assert len(got) == 3, block
        for (start, w), (s, n) in zip(got, want):
            assert abs(start - s) <= 0.011 and abs(len(w) / SAMPLE_RATE - n) <= 0.021, (block, start, len(w))
    # a margin keeps that much of the surroundings; a pause shorter than min_pause does not cut
    (start, w), *_ = split_at_pauses(_blocks(wave, 1.0), 1.0, margin=0.05)
    assert abs(start - 0.35) <= 0.011 and abs(len(w) / SAMPLE_RATE - 0.8) <= 0.021
    assert len(list(split_at_pauses(_blocks(wave, 1.0), 4.0, min_pause=0.5))) == 2
    # silence and a hum far below full scale hold nothing
    assert list(split_at_pauses([sil(3.0)], 1.0)) == []
    assert list(split_at_pauses([1e-4 * speechlike(2.0, 4)], 1.0)) == []


def test_split_at_pauses_cuts_speech_without_pauses_at_its_quietest_point():
    from tokenizers_mm.audio import split_at_pauses

    wave = speechlike(2.5, 5) + _hum(2.5)
    wave[int(0.8 * SAMPLE_RATE) : int(0.83 * SAMPLE_RATE)] *= 0.05  # a 30 ms dip (-26 dB: still sound)
    got = list(split_at_pauses(_blocks(wave, 0.6), 1.0))
    assert got[0][0] == 0 and int(0.8 * SAMPLE_RATE) <= len(got[0][1]) < int(0.83 * SAMPLE_RATE)  # cut in the dip
    assert all(len(w) <= SAMPLE_RATE for _, w in got)
    assert torch.equal(torch.cat([w for _, w in got]), wave)  # loud throughout: nothing left out
    assert [round(s * SAMPLE_RATE) for s, _ in got] == np.cumsum([0] + [len(w) for _, w in got[:-1]]).tolist()


def test_split_at_pauses_finds_pauses_in_room_noise_and_drops_clicks_and_silence():
    from tokenizers_mm.audio import split_at_pauses

    g = torch.Generator().manual_seed(0)
    hiss = lambda s, db: torch.randn(int(s * SAMPLE_RATE), generator=g) * 10 ** (db / 20)  # noqa: E731  # Gaussian noise at db dBFS
    click = torch.zeros(SAMPLE_RATE // 2)
    click[4000:4160] = 0.5  # one 10 ms frame
    # speech with room noise 25 dB below it through the pauses, then 10 s of that noise alone, then a click
    wave = torch.cat([hiss(0.3, -40), speechlike(0.7, 1), hiss(0.3, -40), speechlike(0.6, 2), hiss(10.0, -40), click + hiss(0.5, -40)])
    got = list(split_at_pauses(_blocks(wave, 8.0), 8.0))
    assert [round(s, 1) for s, _ in got] == [0.3, 1.3] and [round(len(w) / SAMPLE_RATE, 1) for _, w in got] == [0.7, 0.6]
    # a recording that starts with 10 s of room noise (no floor known yet): the noise is no segment
    assert [round(s, 1) for s, _ in split_at_pauses(_blocks(torch.cat([hiss(10.0, -45), speechlike(0.7, 1), hiss(1.0, -45)]), 8.0), 8.0)] == [10.0]
    # a DC offset (a bad recorder) is not taken for sound: the pause between the two sounds still cuts
    dc = torch.cat([speechlike(0.7, 1), torch.zeros(4000), speechlike(0.6, 2)]) + 0.1
    assert len(list(split_at_pauses([dc], 8.0))) == 2
    # a stream that ends exactly at a window's end is one segment, not a cut and a sliver
    loud = speechlike(1.0, 5) + _hum(1.0)
    assert [len(w) for _, w in split_at_pauses([loud[:8000], loud[8000:]], 1.0)] == [SAMPLE_RATE]
    # a quiet recording (peaks near -45 dBFS) is cut like a loud one; one below floor_db is silence
    quiet = 10 ** (-40 / 20) * torch.cat([speechlike(0.7, 1), torch.zeros(4000), speechlike(0.6, 2)])
    assert len(list(split_at_pauses([quiet], 8.0))) == 2 and list(split_at_pauses([quiet / 100], 8.0)) == []
    for bad, message in (({"margin": -0.1}, "margin=-0.1 must be"), ({"min_pause": float("nan")}, "min_pause=nan must be")):
        with pytest.raises(ValueError, match=message):
            list(split_at_pauses([quiet], 8.0, **bad))
    with pytest.raises(ValueError, match=r"a piece of shape \(8000, 2\); expected 1-D"):
        list(split_at_pauses([torch.zeros(8000, 2)], 8.0))


def test_encode_batch_takes_a_one_frame_clip_beside_a_long_one():
    """A 10 ms clip (padded to 201 samples for the STFT) batched with a longer one: every row has the
    batch's frame count (the CPU row path padded it one frame short)."""
    tok = AudioTokenizer(n_mels=80, chunk=False, max_frames=800)
    waves = [speechlike(0.01, 1), speechlike(0.5, 2)]
    batch = tok.encode_batch(waves)
    assert batch.values.shape[:2] == (2, 50)
    for row, w in enumerate(waves):
        alone = tok.encode(w)
        torch.testing.assert_close(batch.values[row, : alone.values.shape[0]], alone.values)


def test_save_load(tmp_path):
    tok = AudioTokenizer(n_mels=128, slice_frames=3, chunk=False, max_frames=300)
    tok.save(tmp_path)
    assert load_tokenizer(tmp_path).config() == tok.config()


def test_pcm_types_float_rates_and_a_stereo_stream_ending_in_one_frame(tmp_path):
    import soundfile as sf

    from tokenizers_mm.audio import stream_audio

    torch.testing.assert_close(to_waveform(np.array([64, -128], np.int8)), torch.tensor([0.5, -1.0]))
    assert to_waveform(np.zeros(44100, np.float32), 44100.0).shape == (16000,)  # a float rate from some readers
    with pytest.raises(AudioError, match="sample rate 44100.5 Hz is not a whole number"):
        to_waveform(np.zeros(100, np.float32), 44100.5)
    assert to_waveform(np.zeros(800, np.float32), np.float32(8000)).shape == to_waveform(np.zeros(800, np.float32), np.int64(8000)).shape == (1600,)
    with pytest.raises(AudioError, match="x.wav: sample rate '8000' is not a number of Hz"):
        to_waveform(np.zeros(100, np.float32), "8000", name="x.wav")
    for rate in (1, 0, -8000):  # a damaged header's 1 Hz made 16,000 samples of each one (gigabytes from a small file)
        with pytest.raises(AudioError, match=rf"x.wav: sample rate {rate} Hz; expected audio of at least 1,000 Hz \(a damaged header\?\)"):
            to_waveform(np.zeros(100, np.float32), rate, name="x.wav")
    # finite float samples far past [-1, 1]: refused where a folder's files are checked, not at the spectrogram mid-run
    with pytest.raises(AudioError, match=r"huge.wav: the spectrogram would overflow \(peak amplitude 1e\+20\); expected samples in \[-1, 1\]"):
        to_waveform(np.full(100, 1e20, np.float32), name="huge.wav")
    stereo = np.stack([np.full(16001, 0.5, np.float32), np.full(16001, -0.1, np.float32)], 1)  # the last block: 1 frame of 2 channels
    sf.write(tmp_path / "s.wav", stereo, 16000, subtype="FLOAT")
    pieces = list(stream_audio(tmp_path / "s.wav", 1.0))
    assert [len(p) for p in pieces] == [16000, 1] and torch.allclose(pieces[1], torch.tensor([0.2]))


def test_bad_tokenizer_arguments_and_batches_are_one_line_errors():
    """slice_frames=0 was a ZeroDivisionError, an empty batch max()'s error, one sample rate for a
    batch a TypeError; one rate for every sample is now taken as such."""
    for kw, message in [({"slice_frames": 0}, "slice_frames=0 must be a whole number of 10 ms frames"),
                        ({"max_frames": 2.5}, "max_frames=2.5 must be a whole number"),
                        ({"slice_frames": 3, "max_frames": 100}, "max_frames=100 must be a multiple of slice_frames=3")]:  # fmt: skip
        with pytest.raises(ValueError, match=message):
            AudioTokenizer(chunk=False, **kw)
    tok = AudioTokenizer(chunk=False, max_frames=200)
    with pytest.raises(ValueError, match="encode_batch: no samples; give at least one waveform"):
        tok.encode_batch([])
    waves = [np.random.default_rng(0).standard_normal(n).astype(np.float32) * 0.1 for n in (8000, 6000)]
    one = tok.encode_batch(waves, np.int64(8000))  # one rate for all (a numpy int too): each row as encode at that rate
    assert torch.allclose(one.values[1, : len(tok.encode(waves[1], 8000))], tok.encode(waves[1], 8000).values, atol=1e-5)
