"""Options a GPU user expects, each checked on the CPU: torch.compile, bf16 autocast through
Accelerate, fused AdamW, activation checkpointing, DataLoader workers, the batched log-mel path a
GPU takes, and FSDP sharding (torch's fully_shard on gloo: Accelerate only switches to FSDP on
accelerator devices, so on the CPU its plugin would silently give DDP)."""

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from conftest import ROOT
from models import HeadConfig, ModalityConfig, ModelConfig, MultimodalTransformer, TrunkConfig
from recipes.config import TrainConfig
from recipes.train import build_optimizer, make_loader, read_metrics, train
from tokenizers_mm import ModalitySpec, collate_examples, next_token_set
from tokenizers_mm.audio import _log_mel, log_mel_spectrogram

V, N = 20, 16  # vocabulary, tokens per window


def tiny(mode: str = "decoder", **trunk) -> MultimodalTransformer:
    """A decoder LM on ids, or an encoder-decoder whose encoder reads value vectors."""
    text = ModalityConfig.from_spec(ModalitySpec("text", ("token",), N, vocab_size=V))
    if mode == "decoder":
        return MultimodalTransformer(ModelConfig(TrunkConfig(dim=16, depth=2, num_heads=2, **trunk), {"text": text},
                                                 {"lm": HeadConfig("lm", "text")}, decoder_inputs=["text"]))  # fmt: skip
    src = ModalityConfig.from_spec(ModalitySpec("src", ("frame",), N, value_dim=6))
    return MultimodalTransformer(ModelConfig(TrunkConfig(dim=16, depth=2, num_heads=2, mode="encoder-decoder", **trunk), {"src": src, "text": text},
                                             {"lm": HeadConfig("lm", "text")}, encoder_inputs=["src"], decoder_inputs=["text"]))  # fmt: skip


class Windows(torch.utils.data.Dataset):
    """Next-token windows over a fixed random id stream (as gpt_char's); period=k: the ids 0..k-1
    repeating, a stream a model learns (a random one stays near ln V whatever the training does)."""

    def __init__(self, n: int = 200, seed: int = 0, period: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.arange(n + N + 1) % period if period else torch.randint(0, V, (n + N + 1,), generator=g)

    def __len__(self):
        return len(self.ids) - N - 1

    def __getitem__(self, i):
        return {"text": next_token_set("text", self.ids[i : i + N + 1])}


def batch(mode: str, b: int = 4):
    inputs, _ = collate_examples([Windows()[i] for i in range(b)])
    if mode != "decoder":
        from tokenizers_mm import TokenSet, collate

        lengths = [N, N - 5, N, N - 3][:b]  # padded sources: the encoder and cross-attention masks are built
        inputs["src"] = collate([TokenSet("src", values=torch.randn(n, 6)) for n in lengths])
    return inputs


def grads(model) -> dict:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.fixture
def fresh_accelerate():
    """Accelerate keeps one process-wide state; each run here picks its own mixed precision."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)
    yield
    AcceleratorState._reset_state(True)


# -- activation checkpointing ---------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["decoder", "encoder-decoder"])
def test_grad_checkpoint_gives_the_same_gradients(mode):
    plain = tiny(mode, dropout=0.1)
    ckpt = tiny(mode, dropout=0.1, grad_checkpoint=True)
    ckpt.load_state_dict(plain.state_dict())
    inputs = batch(mode)
    calls = []
    ckpt.decoder.blocks[0].register_forward_pre_hook(lambda *_: calls.append(1))
    for model in (plain, ckpt):
        model.train()
        torch.manual_seed(5)  # the same dropout masks: checkpoint replays the RNG state when it recomputes
        model(inputs).loss.backward()
    assert len(calls) == 2  # the block ran again in the backward pass
    g0, g1 = grads(plain), grads(ckpt)
    assert g0.keys() == g1.keys() and len(g0) > 10
    for k in g0:
        torch.testing.assert_close(g1[k], g0[k], atol=1e-6, rtol=0, msg=k)
    with torch.no_grad():  # inference never recomputes
        calls.clear()
        ckpt.eval()
        ckpt(inputs)
        assert len(calls) == 1


# -- fused AdamW ----------------------------------------------------------------------------------
def test_fused_adamw_equals_the_foreach_step():
    models = [tiny(), tiny()]
    models[1].load_state_dict(models[0].state_dict())
    opts = [build_optimizer(m, TrainConfig(cpu=True, fused_adamw=f, lr=1e-2, weight_decay=0.1)) for m, f in zip(models, (False, True))]
    assert [o.defaults["fused"] for o in opts] == [None, True] and opts[0].defaults["foreach"]
    inputs = batch("decoder")
    for _ in range(5):
        # note: both get the same gradients, so only the kernels differ (Adam turns the rounding noise of
        # a zero gradient, e.g. the key bias's, into a full-size step; from two models it would not agree)
        models[0](inputs).loss.backward()
        for a, b in zip(models[0].parameters(), models[1].parameters()):
            b.grad = a.grad.clone()
        for o in opts:
            o.step()
            o.zero_grad(set_to_none=True)
    for (n, a), b in zip(models[0].named_parameters(), models[1].parameters()):
        torch.testing.assert_close(b, a, atol=1e-6, rtol=1e-5, msg=n)


# -- DataLoader workers ---------------------------------------------------------------------------
def test_loader_workers_deliver_the_same_batches():
    cpu = SimpleNamespace(process_index=0, num_processes=1, device=torch.device("cpu"))
    data = Windows()
    loaders = [make_loader(data, collate_examples, TrainConfig(batch_size=8, num_workers=w, seed=3), cpu, start_step=2) for w in (0, 2)]
    assert not loaders[1].pin_memory and loaders[1].persistent_workers  # pinned memory only when the device is a GPU
    iters = [iter(x) for x in loaders]
    for _ in range(6):
        (a, _), (b, _) = (next(it) for it in iters)
        assert torch.equal(a["text"].ids, b["text"].ids) and torch.equal(a["text"].targets, b["text"].targets)


class Augmented(torch.utils.data.Dataset):
    """Random draws in __getitem__ (torch, NumPy, Python), as augmentation makes them."""

    def __len__(self):
        return 40

    def __getitem__(self, i):
        import random

        return torch.tensor([float(i), torch.rand(()).item(), np.random.rand(), random.random()])


def _draws(items):  # a collate function that draws too (as vit's random_affine / timm's Mixup)
    return torch.stack(items), torch.rand(len(items))


def test_loader_workers_draw_augmentation_as_an_uninterrupted_run():
    """Random augmentation read in DataLoader workers is a function of (seed, stream position):
    a loader resumed at step 3 delivers exactly the batches (random draws included) that an
    uninterrupted loader delivers from step 3, with any number of workers."""
    cpu = SimpleNamespace(process_index=0, num_processes=1, device=torch.device("cpu"))
    cfg = lambda w: TrainConfig(batch_size=4, grad_accum=2, num_workers=w, seed=5)  # noqa: E731
    fresh = iter(make_loader(Augmented(), _draws, cfg(2), cpu))
    expected = [next(fresh) for _ in range(10)][6:]  # steps 3 and 4 (two micro-batches a step)
    for workers in (2, 1):
        resumed = iter(make_loader(Augmented(), _draws, cfg(workers), cpu, start_step=3))
        for a, ca in expected:
            b, cb = next(resumed)
            assert torch.equal(a, b) and torch.equal(ca, cb)
    assert len(set(a[:, 1].tolist())) == len(a)  # the draws are random within a batch


# -- batched log-mel on the device ----------------------------------------------------------------
def test_batched_log_mel_equals_per_sample():
    """The batched STFT path (what a GPU runs; the CPU loops over rows) gives each row's own
    spectrogram: the max − 8 floor is per sample, so a loud neighbour changes nothing."""
    g = torch.Generator().manual_seed(0)
    audio = torch.randn(3, 32000, generator=g) * torch.tensor([[0.01], [0.5], [0.1]])
    one_by_one = torch.stack([log_mel_spectrogram(a) for a in audio])
    torch.testing.assert_close(_log_mel(audio, 80), one_by_one, atol=1e-4, rtol=0)
    torch.testing.assert_close(log_mel_spectrogram(audio), one_by_one, atol=1e-4, rtol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (benchmarks/gpu_check.sh times it there)")
def test_batched_log_mel_on_the_gpu_equals_the_cpu():
    g = torch.Generator().manual_seed(0)
    audio = torch.randn(3, 32000, generator=g) * torch.tensor([[0.01], [0.5], [0.1]])
    one_by_one = torch.stack([log_mel_spectrogram(a) for a in audio])
    torch.testing.assert_close(log_mel_spectrogram(audio.cuda()).cpu(), one_by_one, atol=1e-3, rtol=0)


# -- bf16 autocast through Accelerate -------------------------------------------------------------
def test_bf16_autocast_through_accelerate(fresh_accelerate):
    from accelerate import Accelerator

    model = tiny("encoder-decoder")
    inputs = batch("encoder-decoder")
    with torch.no_grad():
        ref = model(inputs).loss.item()
        acc = Accelerator(cpu=True, mixed_precision="bf16")
        wrapped = acc.prepare(model)
        out = wrapped(inputs)
    assert out.logits["lm"].dtype == torch.bfloat16  # autocast is on
    assert out.loss.dtype == torch.float32 and abs(out.loss.item() - ref) < 0.02 * ref


def test_training_options_in_one_short_run(tmp_path, fresh_accelerate):
    """precision=bf16, fused_adamw and grad_checkpoint through `train`: the losses follow an fp32 run's
    on a stream the model learns (so a bf16 run that does not learn falls outside the tolerance)."""
    from accelerate.state import AcceleratorState

    losses = {}
    for name, opts in (("fp32", {}), ("bf16", {"precision": "bf16", "fused_adamw": True, "grad_checkpoint": True})):
        AcceleratorState._reset_state(True)
        cfg = TrainConfig(cpu=True, max_steps=10, batch_size=8, lr=3e-3, warmup_steps=2, log_every=5, eval_every=10, ckpt_every=10,
                          log_mfu=False, **opts)  # fmt: skip
        torch.manual_seed(0)
        model = tiny(dropout=0.1)
        train(cfg, model, Windows(period=7), collate_examples, lambda m, a: {"val_loss": 0.0}, tmp_path / name)
        losses[name] = [r["loss"] for r in read_metrics(tmp_path / name) if "loss" in r]
        assert model.decoder.grad_checkpoint == bool(opts)
    assert len(losses["bf16"]) == 2 and losses["fp32"][1] < math.log(V) - 0.2  # it learns (2.63 at step 10; untrained: ln V = 3.0)
    for a, b in zip(losses["fp32"], losses["bf16"]):
        assert abs(a - b) < 0.03 * a, losses


# -- torch.compile --------------------------------------------------------------------------------
@pytest.mark.slow
def test_compiled_model_equals_eager():
    """TrainConfig.compile wraps the model in torch.compile (inductor; C++ kernels on the CPU,
    about 30 s the first time, seconds once its cache is warm)."""
    model = tiny("encoder-decoder")
    inputs = batch("encoder-decoder")
    loss = model(inputs).loss
    loss.backward()
    ref = grads(model)
    model.zero_grad(set_to_none=True)
    compiled = torch.compile(model)
    got = compiled(inputs).loss
    got.backward()
    torch.testing.assert_close(got, loss, atol=1e-5, rtol=1e-5)
    for k, g in grads(model).items():
        torch.testing.assert_close(g, ref[k], atol=1e-5, rtol=1e-4, msg=k)


def test_a_compiled_run_checks_each_batch_on_the_host(tmp_path, fresh_accelerate):
    """A compiled forward cannot check its inputs (no graph breaks, no syncs), so with compile=true
    the loop checks each batch on the host first: an id past the vocabulary is named in one line
    before anything compiles, not an index error from inside generated code."""
    data = Windows()
    data.ids[::10] = V + 4  # in every window
    cfg = TrainConfig(cpu=True, compile=True, max_steps=2, batch_size=4, warmup_steps=1, log_every=1, eval_every=2, ckpt_every=2, log_mfu=False)
    with pytest.raises(ValueError, match=rf"TokenBatch\('text'\): ids must lie in \[0, {V}\), got \[0, {V + 4}\]"):
        train(cfg, tiny(), data, collate_examples, lambda m, a: {"val_loss": 0.0}, tmp_path / "run")
    assert not list((tmp_path / "run").glob("checkpoints/step-*"))


@pytest.mark.parametrize("mode", ["decoder", "encoder-decoder"])
@pytest.mark.parametrize("padded", [False, True])
def test_forward_compiles_to_one_graph(mode, padded):
    """The training forward pass never reads the device to decide its masks (TokenBatch.all_real
    is read where the batch is made, on the CPU, and travels with `to()`): under torch.compile it
    is one graph, with no graph break and no host sync per step."""
    from tokenizers_mm import TokenSet, collate

    model = tiny(mode)
    inputs = batch(mode)
    if mode == "decoder" and padded:
        inputs["text"] = collate([TokenSet("text", ids=torch.randint(0, V, (n,))) for n in (N, N - 4, N, N - 1)])
    if mode == "encoder-decoder" and not padded:
        inputs["src"] = collate([TokenSet("src", values=torch.randn(N, 6)) for _ in range(4)])
    moved = {k: v.to("cpu") for k, v in inputs.items()}
    assert [b.all_real for b in moved.values()] == [b.all_real for b in inputs.values()]
    assert any(not b.all_real for b in inputs.values()) == padded
    explained = torch._dynamo.explain(lambda i: model(i).logits["lm"])(moved)
    assert explained.graph_count == 1 and explained.graph_break_count == 0, explained.break_reasons


# -- FSDP -----------------------------------------------------------------------------------------
@pytest.mark.slow
def test_fsdp_two_processes_train_like_one(tmp_path):
    """Our model sharded with FSDP2 (fully_shard per block, as Accelerate's transformer wrap policy
    does) over 2 CPU processes (gloo): after 3 AdamW steps, the gathered weights equal one unsharded
    process trained on the same global batch."""
    from test_train import torchrun

    p = torchrun(2, str(ROOT / "tests" / "helpers" / "fsdp_cpu.py"))
    assert "fsdp: 2 processes match 1" in p.stdout, p.stdout[-2000:]


@pytest.mark.slow
def test_fsdp_key_trains_resumes_and_checkpoints_like_ddp(tmp_path, small_text):
    """fsdp=true through the training loop on 2 CPU processes, with gradient accumulation,
    activation checkpointing and dropout: killed-and-resumed at step 3, its step-6 checkpoint (the
    gathered model and the name-keyed AdamW state) equals a DDP run's; the checkpoint loads as an
    ordinary model."""
    from safetensors.torch import load_file
    from test_train import TINY, torchrun

    from models import MultimodalTransformer

    common = ["train", "gpt_char", f"data={small_text}", *TINY, "grad_accum=2", "ckpt_every=3", "eval_every=3", "cpu=true"]
    torchrun(2, "-m", "recipes.cli", *common, "max_steps=6", f"run_dir={tmp_path / 'ddp'}")
    p = torchrun(2, "-m", "recipes.cli", *common, "max_steps=3", "fsdp=true", "grad_checkpoint=true", f"run_dir={tmp_path / 'fsdp'}")
    assert "parameters sharded over 2 processes" in p.stdout, p.stdout[-2000:]
    torchrun(2, "-m", "recipes.cli", "resume", str(tmp_path / "fsdp"), "max_steps=6")
    assert json.loads((tmp_path / "fsdp" / "run.json").read_text())["config"]["max_steps"] == 6  # kept for a later resume / eval
    for name in ("model", "optimizer"):
        want, got = (load_file(tmp_path / run / "checkpoints" / "step-0000006" / f"{name}.safetensors") for run in ("ddp", "fsdp"))
        assert want.keys() == got.keys() and len(want) > 10
        for k in want:
            torch.testing.assert_close(got[k], want[k], atol=1e-6, rtol=1e-5, msg=f"{name} {k}")
    MultimodalTransformer.load(tmp_path / "fsdp" / "checkpoints" / "step-0000006")  # whole weights, strict load
    results = [json.loads((tmp_path / run / "results.json").read_text())["val_loss"] for run in ("ddp", "fsdp")]
    assert abs(results[0] - results[1]) < 1e-5, results
    # the sharded run resumes in one process: fsdp=false on the command line, recorded (fsdp=true alone is refused, naming it)
    from recipes.cli import main

    assert main(["resume", str(tmp_path / "fsdp"), "max_steps=7"]) == 2
    assert main(["resume", str(tmp_path / "fsdp"), "fsdp=false", "max_steps=7"]) == 0
    assert json.loads((tmp_path / "fsdp" / "run.json").read_text())["config"]["fsdp"] is False
    assert json.loads((tmp_path / "fsdp" / "results.json").read_text())["step"] == 7


def test_the_loop_refuses_a_directory_with_checkpoints_unless_resuming(tmp_path, fresh_accelerate):
    """train() itself (not only `mmtok train`): a new run's checkpoints would mix with the old ones,
    which are pruned by step number."""
    from recipes.checkpoint import write_checkpoint

    write_checkpoint(tmp_path, 300, lambda d: (d / "a.bin").write_bytes(b"x"))
    with pytest.raises(ValueError, match=r"already holds checkpoints \(step-0000300\): resume it or train into another run_dir"):
        train(TrainConfig(cpu=True, max_steps=2, batch_size=4), tiny(), Windows(), collate_examples, lambda m, a: {}, tmp_path)
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-0000300"]
    (tmp_path / "checkpoints" / "step-0000300").rename(tmp_path / "checkpoints" / ".trash-step-0000300")  # a killed overwrite's
    with pytest.raises(ValueError, match=r"already holds checkpoints \(\.trash-step-0000300\)"):  # (the next write restores it)
        train(TrainConfig(cpu=True, max_steps=2, batch_size=4), tiny(), Windows(), collate_examples, lambda m, a: {}, tmp_path)


def test_the_fp16_loss_scale_is_checkpointed_and_resumed(tmp_path, fresh_accelerate):
    """fp16's GradScaler (on the CPU here, as Accelerate builds it on a GPU): its scale and growth
    count go into trainer_state.json and come back on resume, so a resumed run scales as an
    uninterrupted one (growth_interval=1: the scale doubles every step)."""
    from accelerate import Accelerator

    def run(run_dir, steps, resume=False):
        accelerator = Accelerator(cpu=True)
        accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=1)
        cfg = TrainConfig(cpu=True, max_steps=steps, batch_size=4, ckpt_every=3, eval_every=100, log_mfu=False)
        train(cfg, tiny(), Windows(), collate_examples, lambda m, a: {}, run_dir, resume=resume, accelerator=accelerator)
        return json.loads((run_dir / "checkpoints" / f"step-{steps:07d}" / "trainer_state.json").read_text())["grad_scaler"]

    whole = run(tmp_path / "whole", 6)
    assert run(tmp_path / "cut", 3)["scale"] == 2.0**13
    assert run(tmp_path / "cut", 6, resume=True) == whole and whole["scale"] == 2.0**16


def test_fsdp_needs_several_processes(tmp_path, fresh_accelerate):
    cfg = TrainConfig(cpu=True, max_steps=2, batch_size=4, fsdp=True)
    with pytest.raises(ValueError, match="fsdp=true shards the model over processes: launch 2 or more"):
        train(cfg, tiny(), Windows(), collate_examples, lambda m, a: {}, tmp_path)


def test_accelerates_own_fsdp_launch_is_refused_before_the_run_directory(tmp_path, monkeypatch, capsys):
    """`accelerate launch --use_fsdp` (ACCELERATE_USE_FSDP=true) with several processes would make
    Accelerator() fail with a traceback on a CPU machine, after the run directory is made: one line
    says to pass fsdp=true (one process: Accelerate ignores the variable, and so does the check)."""
    from recipes.cli import main

    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    TrainConfig(cpu=True, batch_size=4).check_launch()
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["train", "gpt_char", "max_steps=1", f"run_dir={tmp_path / 'run'}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "launched with Accelerate's FSDP config" in err and "pass fsdp=true" in err, err
    assert not (tmp_path / "run").exists()
