"""The GPU path without a GPU (`tests/helpers/simulated_cuda.py`): on a simulated CUDA device, no
op of the inference commands or of a training step mixes a GPU tensor with a CPU one, no draw uses
a generator on the other device, and decoding asks the GPU for values a bounded number of times
per token. (On a real GPU, `benchmarks/gpu_check.sh`'s `inference` part compares the results with
the CPU's.)"""

import sys

import numpy as np
import pytest
import torch

from recipes.runs import OneDevice
from tests.conftest import ROOT
from tests.helpers import simulated_cuda


def test_the_inference_commands_keep_to_the_gpu(tmp_path, monkeypatch):
    """gpu_check's inference part (speech greedy and beam decoding, transcribe_files on a WAV,
    predict, generate) with "cuda" as the device, each against the CPU: the same results, and
    nothing that a GPU would refuse."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import gpu_check

    sim = simulated_cuda.install(monkeypatch)
    with sim:
        out = gpu_check.inference_check("cuda", tmp_path)
    assert not sim.mixes and not sim.generators, (dict(sim.mixes), dict(sim.generators))
    assert sim.syncs  # the modes saw the GPU tensors (a harness that marks nothing would pass anything)
    assert out["speech_logprob_max_diff"] == 0 and out["image_prob_max_diff"] == 0 and out["text_eval_loss_diff"] == 0
    assert all(out[k] is True for k in ("speech_greedy_same", "speech_beam_same", "transcribe_files_same_text", "image_same_labels",
                                        "text_greedy_same"))  # fmt: skip


def test_the_harness_sees_a_cpu_tensor_meet_a_gpu_one(monkeypatch):
    """What the test above relies on: a mix, a generator on the wrong device, a non-blocking copy
    to the CPU and a host sync are each recorded; a CPU index and a 0-dim CPU tensor are not mixes."""
    sim = simulated_cuda.install(monkeypatch)
    with sim:
        gpu = torch.ones(3, device="cuda")
        assert gpu.device.type == "cuda" and gpu.is_cuda and not torch.ones(3).is_cuda
        gpu + torch.ones(3)
        gpu[torch.tensor([0, 2])] + torch.tensor(1.0)
        torch.rand(2, generator=torch.Generator("cpu"), device="cuda")
        gpu.to("cpu", non_blocking=True)
        bool(gpu.sum() > 0)
    assert [k for k, _ in sim.mixes] == ["add.Tensor: cuda(3,) cpu(3,)", "copy to the cpu with non_blocking=True (read before it arrives)"]
    assert [k for k, _ in sim.generators] == ["rand: a cpu generator for a cuda op"]
    assert {k for k, _ in sim.syncs} == {"copy to the cpu", "bool"}


@pytest.mark.parametrize("beam", [1, 3])
def test_decoding_syncs_with_the_host_a_bounded_number_of_times_per_token(tmp_path, monkeypatch, beam):
    """Greedy decoding reads one value back per token (whether every row has ended); beam search
    two (which candidates finished), and two per finished beam (its score and tokens, as
    openai-whisper's): checks that read tensors back (a TokenBatch built per token, boolean-mask
    indexing) cost a GPU a wait each, every token (beam search read 8 a step before)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import gpu_check

    from recipes import whisper_digits
    from recipes.runs import load_trained
    from tokenizers_mm import AudioTokenizer

    cfg = whisper_digits.Config(run_dir=str(tmp_path / "speech"), dim=32, depth=1, dec_depth=1, num_heads=2, max_frames=200, max_text=32)
    audio_tok = AudioTokenizer(n_mels=cfg.n_mels, slice_frames=1, chunk=False, max_frames=cfg.max_frames)
    text_tok = whisper_digits.text_tokenizer(cfg)
    torch.manual_seed(0)
    model = whisper_digits.build_model(cfg, audio_tok, text_tok)
    run = gpu_check.random_run(tmp_path / "speech", "whisper_digits", cfg, model, {"audio": audio_tok, "text": text_tok})
    sim = simulated_cuda.install(monkeypatch)
    wave = np.random.default_rng(0).normal(0, 0.1, 16000).astype(np.float32)
    with sim:
        model, toks = load_trained(run, "cuda")
        memory = whisper_digits.audio_memory(model, toks["audio"].encode_batch([wave, wave[:8000]]))
        sim.clear()
        ended = []
        whisper_digits.transcribe_batch(model, toks["text"], memory, 20, beam_size=beam, ended=ended)
    assert not sim.mixes and not sim.generators, (dict(sim.mixes), dict(sim.generators))
    steps = 20  # random weights: no row ends early (checked), so every step runs
    assert ended == [False, False]
    per_step = sum(sim.syncs.values()) / steps
    assert per_step <= (1.2 if beam == 1 else 3.5), "\n".join(f"{n} {k}" for k, n in sim.syncs.items())


@pytest.mark.parametrize("env, bins", [("CartPole-v1", 0), ("Pendulum-v1", 0), ("Pendulum-v1", 16)])
def test_decision_transformer_rollouts_keep_to_the_gpu(monkeypatch, env, bins):
    """dt.rollouts (mmtok eval of a DT run, the generalist's control task) on the simulated GPU:
    discrete, continuous and binned actions, each step's actions copied to the host once."""
    pytest.importorskip("gymnasium")
    from recipes import dt
    from recipes.rl_data import make_env
    from tokenizers_mm import TrajectoryTokenizer

    e = make_env(env)
    discrete = not hasattr(e.action_space, "low")
    action_dim = int(e.action_space.n) if discrete else int(np.prod(e.action_space.shape))
    low, high = (None, None) if discrete else (e.action_space.low.tolist(), e.action_space.high.tolist())
    tok = TrajectoryTokenizer(int(np.prod(e.observation_space.shape)), action_dim, discrete, 5, 1000, action_low=low, action_high=high,
                              action_bins=bins)  # fmt: skip
    torch.manual_seed(0)
    model = dt.build_model(dt.Config(dim=32, depth=1, num_heads=1), tok)
    sim = simulated_cuda.install(monkeypatch)
    cpu = dt.rollouts(model, tok, env, 100.0, [0, 1])
    for t in [*model.parameters(), *model.buffers()]:
        t._simulated_cuda = True
    with sim:
        gpu = dt.rollouts(model, tok, env, 100.0, [0, 1], device="cuda")
    assert not sim.mixes and not sim.generators, (dict(sim.mixes), dict(sim.generators))
    assert np.array_equal(cpu, gpu)
    steps = sum(n for (kind, _), n in sim.syncs.items() if kind == "copy to the cpu")
    assert steps > 0 and steps == sum(sim.syncs.values())  # nothing but the one copy a step


class TrainingAccelerator(OneDevice):
    """What the loop's forward_backward reads of an accelerator, on the simulated GPU."""

    def backward(self, loss):
        loss.backward()

    def no_sync(self, model):
        from contextlib import nullcontext

        return nullcontext()


def training_cases():
    """(name, model, [micro-batch, ...]) for each model family, batches made as the recipes make them."""
    from recipes import dt, gpt_char, vit, whisper_digits
    from tokenizers_mm import AudioTokenizer, CharTokenizer, TokenSet, TrajectoryTokenizer, collate_examples, next_token_set

    torch.manual_seed(0)
    chars = CharTokenizer.from_corpus("the quick brown fox jumps over the lazy dog\n", max_positions=16)
    text = gpt_char.build_model(gpt_char.Config(dim=32, depth=1, num_heads=2, block_size=16), chars)
    lm = [collate_examples([{"text": next_token_set("text", torch.randint(0, chars.vocab_size, (17,)))} for _ in range(4)])]
    wcfg = whisper_digits.Config(dim=32, depth=1, dec_depth=1, num_heads=2, max_frames=100, max_text=16)
    audio_tok, text_tok = AudioTokenizer(n_mels=wcfg.n_mels, slice_frames=1, chunk=False, max_frames=100), whisper_digits.text_tokenizer(wcfg)
    speech = whisper_digits.build_model(wcfg, audio_tok, text_tok)
    utterances = [{"audio": TokenSet("audio", values=torch.randn(n, wcfg.n_mels)), "text": whisper_digits.text_example(text_tok, words, "x.wav")}
                  for n, words in ((100, "one two"), (60, "three"))]  # fmt: skip
    vcfg = vit.Config(image_size=8, patch_size=4, channels=1, dim=32, depth=1, num_heads=2, mixup=0.8, cutmix=1.0)
    image_tok = vit.make_tokenizer(vcfg, [0.5], [0.25])
    image = vit.build_model(vcfg, image_tok, 10)
    images = vit.Collate(image_tok, vcfg, 10, train=True)([(torch.rand(1, 8, 8), i) for i in range(4)])
    traj_tok = TrajectoryTokenizer(4, 2, True, 5, 100)
    control = dt.build_model(dt.Config(dim=32, depth=1, num_heads=1), traj_tok)
    rng = np.random.default_rng(0)
    windows = [{"trajectory": traj_tok.tokens(rng.normal(size=(5, 4)).astype(np.float32), rng.integers(0, 2, 5), rng.normal(size=5).astype(np.float32),
                                              np.arange(3, 8))} for _ in range(2)]  # fmt: skip
    return [("gpt", text, lm), ("whisper", speech, [collate_examples(utterances)] * 2), ("vit mixup", image, [images]),
            ("decision transformer", control, [collate_examples(windows)])]  # fmt: skip


def test_a_training_step_keeps_to_the_gpu(monkeypatch):
    """The loop's step for each model family (forward and backward over micro-batches, host checks,
    clipping, AdamW) on the simulated GPU: no op mixes devices, and forward and backward read
    nothing back from it."""
    from recipes.train import build_optimizer, forward_backward, host_check
    from recipes.config import TrainConfig

    sim = simulated_cuda.install(monkeypatch)
    for name, model, micro in training_cases():
        for t in [*model.parameters(), *model.buffers()]:
            t._simulated_cuda = True
        optimizer = build_optimizer(model, TrainConfig(fused_adamw=False))
        sim.clear()
        with sim:
            accelerator = TrainingAccelerator("cuda")
            loss = forward_backward(accelerator, model, micro, len(micro), model, host_check(accelerator, model))
            syncs = dict(sim.syncs)
            # note: torch's clip_grad_norm_ groups tensors by their real device (the CPU here), so the simulation sees
            # a copy to the CPU inside it that a GPU does not make: its syncs are not counted
            norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        assert not sim.mixes and not sim.generators, (name, dict(sim.mixes), dict(sim.generators))
        assert not syncs, (name, syncs)
        assert simulated_cuda.on_gpu(loss) and simulated_cuda.on_gpu(norm) and bool(torch.isfinite(loss)), name


def test_evaluation_keeps_to_the_gpu(tmp_path, monkeypatch):
    """`mmtok eval --device cuda` (load_for_eval's one-device accelerator) for an image run (accuracy)
    and a speech run scored on a folder (--data: Whisper's WER decoding over EvalBatches), on the
    simulated GPU: the CPU's figures, nothing a GPU would refuse."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import soundfile as sf
    from gpu_check import random_run

    from recipes import vit, vit_digits, whisper_digits, whisper_folder
    from tokenizers_mm import AudioTokenizer

    torch.manual_seed(0)
    vcfg = vit_digits.Config(run_dir=str(tmp_path / "image"), dim=32, depth=1, num_heads=2)
    image_tok = vit.make_tokenizer(vcfg, [0.5], [0.25])
    image_run = random_run(tmp_path / "image", "vit_digits", vcfg, vit.build_model(vcfg, image_tok, 10), {"image": image_tok})
    (image_run / "classes.txt").write_text("".join(f"{i}\n" for i in range(10)))  # (as training writes it; eval checks the data's against it)
    wcfg = whisper_folder.Config(run_dir=str(tmp_path / "speech"), dim=32, depth=1, dec_depth=1, num_heads=2, max_frames=200, max_text=24)
    audio_tok = AudioTokenizer(n_mels=wcfg.n_mels, slice_frames=1, chunk=False, max_frames=wcfg.max_frames)
    text_tok = whisper_digits.text_tokenizer(wcfg)
    speech_run = random_run(tmp_path / "speech", "whisper_folder", wcfg, whisper_digits.build_model(wcfg, audio_tok, text_tok),
                            {"audio": audio_tok, "text": text_tok})  # fmt: skip
    (tmp_path / "clips").mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        sf.write(tmp_path / "clips" / f"{i}.wav", rng.normal(0, 0.1, 8000 + 2000 * i).astype(np.float32), 16000)
    (tmp_path / "clips" / "metadata.csv").write_text("file_name,transcription\n0.wav,one two\n1.wav,three\n2.wav,four five six\n")
    cpu = vit_digits.evaluate(image_run), whisper_folder.evaluate(speech_run, data=str(tmp_path / "clips"))
    sim = simulated_cuda.install(monkeypatch)
    with sim:
        gpu = vit_digits.evaluate(image_run, device="cuda"), whisper_folder.evaluate(speech_run, device="cuda", data=str(tmp_path / "clips"))
    assert not sim.mixes and not sim.generators, (dict(sim.mixes), dict(sim.generators))
    assert gpu == cpu and sim.syncs


def test_evaluation_on_a_gpu_checks_each_batch_on_the_host(monkeypatch):
    """Forward checks CPU tensors only (checking a GPU's would sync it), so accuracy and mean_loss on
    a GPU check each batch on the host before the copy: an image sample with no tokens for the
    pooled head and a character id past the vocabulary get the CPU's one-line errors, not a
    classification of nothing or a device-side assert."""
    from recipes import gpt_char, vit, vit_digits
    from recipes.train import accuracy, mean_loss
    from tokenizers_mm import CharTokenizer, TokenSet, collate, collate_examples, next_token_set

    torch.manual_seed(0)
    cfg = vit_digits.Config(dim=32, depth=1, num_heads=2)
    tok = vit.make_tokenizer(cfg, [0.5], [0.25])
    image = vit.build_model(cfg, tok, 10)
    full = tok.encode(torch.rand(1, 8, 8))
    empty = TokenSet("image", values=full.values[:0])
    chars = CharTokenizer.from_corpus("abc\n", max_positions=8)
    text = gpt_char.build_model(gpt_char.Config(dim=32, depth=1, num_heads=2, block_size=8), chars)
    past = [collate_examples([{"text": next_token_set("text", torch.tensor([0, 1, chars.vocab_size, 2]))}])]
    sim = simulated_cuda.install(monkeypatch)
    for model in (image, text):
        for t in [*model.parameters(), *model.buffers()]:
            t._simulated_cuda = True
    with sim:
        accelerator = OneDevice("cuda")
        assert 0 <= accuracy(image, accelerator, [({"image": collate([full, full])}, {"cls": torch.tensor([1, 2])})])["val_accuracy"] <= 1
        with pytest.raises(ValueError, match="sample 1 of the batch has no 'image' tokens for head 'cls'"):
            accuracy(image, accelerator, [({"image": collate([full, empty])}, {"cls": torch.tensor([1, 2])})])
        with pytest.raises(ValueError, match=f"id.*{chars.vocab_size}"):
            mean_loss(text, accelerator, past)
    assert not sim.mixes, dict(sim.mixes)
