"""benchmarks/gpu_check.py runs end to end on the CPU with a tiny trunk, so it is ready for a GPU;
and the MFU estimate matches nanoGPT's formula."""

import sys

import pytest
import torch

from models import HeadConfig, ModalityConfig, ModelConfig, MultimodalTransformer, TrunkConfig
from models.flops import batch_flops, flops_per_token, matmul_params, peak_flops
from tests.conftest import ROOT
from tokenizers_mm import ModalitySpec, TokenSet, collate


def gpt(dim=64, depth=2, heads=2, context=128, vocab=512, flash=True):
    trunk = TrunkConfig(dim=dim, depth=depth, num_heads=heads, mode="decoder", bias=False, flash=flash)
    text = ModalityConfig.from_spec(ModalitySpec("text", ("token",), context, vocab_size=vocab))
    return MultimodalTransformer(ModelConfig(trunk, {"text": text}, {"lm": HeadConfig("lm", "text")}, decoder_inputs=["text"]))


def test_flops_follow_nanogpt_estimate():
    model = gpt()
    # nanoGPT: N excludes the position table (the tied token table is its LM head, so it counts)
    n_nanogpt = sum(p.numel() for p in model.parameters()) - model.embedders["text"].pos.weight.numel() - model.type_embed.weight.numel()
    assert matmul_params(model) == n_nanogpt
    assert flops_per_token(model, 128) == 6 * n_nanogpt + 12 * 2 * 64 * 128
    peak, source = peak_flops("cpu", torch.float32)
    assert peak > 1e8 and source.startswith("measured")


def test_batch_flops_agree_with_torch_flop_counter():
    """Every part counted at its own rate (a strided stem, cross-attention over the memory, a
    pooled head once per sample): within a few percent of what torch's FlopCounterMode counts in a
    forward + backward (the manual attention path, whose matmuls it sees; it leaves out the input
    gradient of the first convolution, and norms and biases, which the estimate keeps)."""
    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(0)
    B, frames, n_text = 3, 200, 32
    audio = ModalityConfig.from_spec(ModalitySpec("audio", ("frame",), frames, value_dim=16), embedder="whisper_conv")
    text = ModalityConfig.from_spec(ModalitySpec("text", ("token",), n_text, vocab_size=100))
    image = ModalityConfig.from_spec(ModalitySpec("image", ("patch",), 50, value_dim=48))
    whisper = ModelConfig(TrunkConfig(dim=64, depth=2, dec_depth=2, num_heads=2, mode="encoder-decoder", flash=False),
                          {"audio": audio, "text": text}, {"lm": HeadConfig("lm", "text")}, encoder_inputs=["audio"], decoder_inputs=["text"])  # fmt: skip
    vit = ModelConfig(TrunkConfig(dim=64, depth=3, num_heads=2, mode="encoder", flash=False), {"image": image},
                      {"cls": HeadConfig("classify", "image", num_outputs=10, pool="mean")}, encoder_inputs=["image"])  # fmt: skip
    text_batch = collate([TokenSet("text", ids=torch.randint(0, 100, (n_text,)), targets=torch.randint(0, 100, (n_text,))) for _ in range(B)])
    cases = [(whisper, {"audio": collate([TokenSet("audio", values=torch.randn(frames, 16)) for _ in range(B)]), "text": text_batch}, {}),
             (vit, {"image": collate([TokenSet("image", values=torch.randn(50, 48)) for _ in range(B)])}, {"cls": torch.arange(B)}),
             (gpt(context=n_text, vocab=100, flash=False).config, {"text": text_batch}, {})]  # fmt: skip
    for config, inputs, targets in cases:
        model = MultimodalTransformer(config)
        with FlopCounterMode(display=False) as counter:
            model(inputs, targets).loss.backward()
        assert abs(batch_flops(model, inputs) / counter.get_total_flops() - 1) < 0.05, config.trunk.mode
    model = gpt(context=n_text, vocab=100)  # one stack, no padding: nanoGPT's per-token estimate, token for token
    assert batch_flops(model, {"text": text_batch}) == flops_per_token(model, n_text) * B * n_text


def test_gpu_check_runs_on_cpu_with_a_tiny_trunk():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import gpu_check

    out = gpu_check.main(["size=tiny", "steps=6", "batch=2,4", "compile=false"])
    assert [r["batch"] for r in out["runs"]] == [2, 4] and all(r["tokens_per_s"] > 0 for r in out["runs"])
    best = max(out["runs"], key=lambda r: r["tokens_per_s"])  # the fastest micro-batch is the one reported
    assert out["batch"] == best["batch"] and out["tokens_per_s"] == best["tokens_per_s"]
    # note: wall-clock ratios on a shared CPU (the peak is measured apart from the run): bounds that catch a wrong factor, not noise
    assert out["mfu_vs_measured_peak"] == best["mfu_vs_measured_peak"] and 0 < out["mfu_vs_measured_peak"] < 10
    assert out["bare_loop_tokens_per_s"] > 0 and 0 < out["loop_efficiency"] < 10  # the loop on top of the model
    assert out["mel_ms_per_30s_chunk"] > 0 and out["params_M"] > 0.05 and len(out["mfu_logged"]) >= 1
    assert out["compile_error"] is None and out["compiled"] is False and "bare_loop_error" not in out and "mel_error" not in out
    # the inference commands' device path, here the CPU against itself: the same figures exactly
    assert "inference_error" not in out and out["inference"]["speech_logprob_max_diff"] == 0 and out["inference"]["text_sampled_chars"] > 5
    assert out["inference"]["text_eval_loss_diff"] == 0
    assert all(out["inference"][k] is True for k in ("speech_greedy_same", "speech_beam_same", "transcribe_files_same_text", "image_same_labels",
                                                     "text_greedy_same"))  # fmt: skip
    assert out["inference"]["transcribe_files_chars"] > 0  # (the random model writes characters: the texts compared are not empty)


def test_gpu_check_reports_what_it_measured_when_every_size_fails(monkeypatch):
    """Out of memory at every size (a compiler may wrap the error): each size is recorded, compiling
    stays on (it was not the cause), and the peak and log-mel figures are still printed."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import gpu_check

    def out_of_memory(cfg, *args, **kw):
        try:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        except torch.cuda.OutOfMemoryError as e:
            raise RuntimeError(f"compiled graph failed (batch {cfg.batch_size}, compile {cfg.compile})") from e

    monkeypatch.setattr(gpu_check, "train", out_of_memory)
    out = gpu_check.main(["size=tiny", "steps=4", "batch=2,4,", "compile=true"])
    assert [(r["batch"], r["error"]) for r in out["runs"]] == [(b, f"RuntimeError: compiled graph failed (batch {b}, compile True)") for b in (2, 4)]
    assert out["training_error"] and out["compile_error"] is None and "tokens_per_s" not in out
    assert out["peak_tflops_measured"] > 0 and out["mel_ms_per_30s_chunk"] > 0


# what a machine with only PyTorch, torchaudio, Accelerate and timm (and what they pull in) lacks
NOT_ON_A_BARE_GPU_MACHINE = ("tiktoken", "tokenizers", "regex", "soundfile", "scipy", "sklearn", "datasets", "matplotlib", "transformers",
                             "espeakng_loader", "gymnasium", "minari", "jiwer", "mlxtend", "whisper", "pandas", "pyarrow", "tensorboard")  # fmt: skip


def test_gpu_check_needs_only_torch_torchaudio_accelerate_and_timm():
    """The GPU check imports and runs with every other dependency of the package missing (as the
    issue's GPU machine has them): an import of one at module level would stop it before it starts."""
    import json
    import subprocess

    from tests.conftest import subprocess_env

    code = (f"import sys, runpy\nfor m in {NOT_ON_A_BARE_GPU_MACHINE!r}: sys.modules[m] = None\n"
            "sys.argv = ['gpu_check.py', 'size=tiny', 'steps=4', 'batch=2', 'compile=false']\n"
            "runpy.run_path('benchmarks/gpu_check.py', run_name='__main__')")  # fmt: skip
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=subprocess_env(), timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    out = json.loads(p.stdout)  # the JSON alone: the training loop's lines go to stderr
    assert out["tokens_per_s"] > 0 and out["mel_ms_per_30s_chunk"] > 0 and "inference_error" not in out and out["inference"]["speech_greedy_same"]
    assert out["inference"]["transcribe_files_same_text"] == "not run: soundfile is not installed"
    assert "matplotlib is not installed" in p.stderr  # the loss curve is skipped with a note, not a crash


def test_gpu_check_sh_prints_the_json_alone_on_stdout():
    """`bash benchmarks/gpu_check.sh > out.json` is one JSON object: the GPU's nvidia-smi line (or
    that there is none) goes to stderr with the progress."""
    import json
    import shutil
    import subprocess

    from tests.conftest import subprocess_env

    env = {**subprocess_env(), "PYTHON": sys.executable}
    p = subprocess.run(["bash", "benchmarks/gpu_check.sh", "size=tiny", "steps=2", "batch=2", "compile=false"], capture_output=True, text=True,
                       cwd=ROOT, env=env, timeout=300)  # fmt: skip
    assert p.returncode == 0, p.stderr[-2000:]
    assert json.loads(p.stdout)["tokens_per_s"] > 0
    assert shutil.which("nvidia-smi") or "no nvidia-smi: running on the CPU" in p.stderr


@pytest.mark.parametrize("name, key", [("NVIDIA H200", "H200"), ("NVIDIA H200 NVL", "H200 NVL"), ("NVIDIA H100 80GB HBM3", "H100 80GB HBM3"),
                                       ("NVIDIA H100 NVL", "H100 NVL"), ("NVIDIA H100 PCIe", "H100 PCIe")])  # fmt: skip
def test_the_peak_table_takes_the_most_specific_gpu_name(monkeypatch, name, key):
    """A GPU's bf16 peak comes from the data-sheet table by its most specific name ("H200 NVL",
    835 TFLOP/s, not "H200", 989)."""
    from models.flops import PEAK_BF16

    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    peak_flops.cache_clear()
    try:
        assert peak_flops("cuda", torch.bfloat16) == (PEAK_BF16[key], f"table ({key})")
    finally:
        peak_flops.cache_clear()
