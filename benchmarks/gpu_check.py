"""A ready GPU check: train a GPT-2-small-sized trunk (124M parameters, context 1024, bf16,
torch.compile, fused AdamW) on synthetic tokens through the toolkit's own training loop, and
report tokens/s and MFU against the device's measured bf16 matmul peak; the same model in the
barest loop (one batch on the device, no loader or logging: what the training loop costs on top);
then the batched log-mel front end's throughput on the device; then what the inference commands'
`--device` runs (transcribe, predict, generate on random-weight runs), on the device against the
CPU (`inference`: whether tokens and labels agree, and by how much the log-probabilities differ).

    bash benchmarks/gpu_check.sh                 # on a GPU machine: about 4-6 minutes on one H200 (three compilations)
    python benchmarks/gpu_check.py size=tiny     # the same path on the CPU in seconds (tested)

Options (key=value): size=gpt2|tiny, steps=300, batch=32,64 (sequences per step; each size in the
comma-separated list trains in turn, the fastest is reported at the top and every one under
`runs`), compile=true, mel_batch=64. Prints one JSON object; nothing is downloaded. If a compiled
run fails (no Triton, no C++ compiler, a compiler bug), the check says why on stderr and in
`compile_error`, and measures without compiling from then on; a run that fails otherwise (out of
memory) is recorded in `runs` and the next size is tried; a failing bare loop or log-mel part is
reported as `bare_loop_error` / `mel_error` / `inference_error` beside the training figures, so a scarce GPU run
still gives figures.
"""

from __future__ import annotations

import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models import HeadConfig, ModalityConfig, ModelConfig, MultimodalTransformer, TrunkConfig  # noqa: E402
from models.flops import flops_per_token, measure_peak, peak_flops  # noqa: E402
from recipes.cli import out_of_memory  # noqa: E402
from recipes.config import TrainConfig  # noqa: E402
from recipes.train import read_metrics, train  # noqa: E402
from tokenizers_mm import ModalitySpec, collate_examples, next_token_set  # noqa: E402

SIZES = {  # (dim, depth, heads, context, vocab)
    "gpt2": (768, 12, 12, 1024, 50304),  # 124M parameters (GPT-2 small, vocabulary padded to a multiple of 64)
    "tiny": (64, 2, 2, 128, 512),
}


class Synthetic(torch.utils.data.Dataset):
    """Random token windows (context + 1 ids): the model's speed, not what it learns."""

    def __init__(self, context: int, vocab: int, n: int = 1 << 20):
        self.context, self.vocab, self.n = context, vocab, n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i)
        return {"text": next_token_set("text", torch.randint(0, self.vocab, (self.context + 1,), generator=g))}


def one_line(e: BaseException) -> str:
    return f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0]}"


def parse(argv):
    opts = {"size": "gpt2", "steps": "300", "batch": "32,64", "compile": "true", "mel_batch": "64"}
    for a in argv:
        k, _, v = a.partition("=")
        if k not in opts:
            raise SystemExit(f"unknown option {k!r}; options: {', '.join(opts)}")
        opts[k] = v
    return opts


def mel_throughput(device, batch: int, reps: int = 5) -> dict:
    from tokenizers_mm.audio import N_SAMPLES, log_mel_spectrogram

    x = torch.randn(batch, N_SAMPLES, device=device) * 0.1
    log_mel_spectrogram(x)  # warm-up (filters, window, kernels)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    for _ in range(reps):
        log_mel_spectrogram(x)
    sync()
    per_chunk = (time.perf_counter() - t0) / (reps * batch)
    return {"mel_ms_per_30s_chunk": per_chunk * 1000, "mel_chunks_per_s": 1 / per_chunk, "mel_batch": batch}


def bare_loop(config: ModelConfig, inputs: dict, steps: int, device, compile_: bool) -> float:
    """Tokens/s of the same model in the barest loop (nanoGPT's): one batch kept on the device,
    bf16 autocast on a GPU, fused AdamW, no loader, clipping, scheduler or logging. Ours ÷ this
    is what the toolkit's training loop costs on top of the model."""
    torch.manual_seed(0)
    model = MultimodalTransformer(config).to(device)
    gpu = device.type == "cuda"
    opt = torch.optim.AdamW(model.parameters(), lr=6e-4, fused=gpu or None)
    run = torch.compile(model) if compile_ else model
    inputs = {k: v.to(device) for k, v in inputs.items()}
    sync = torch.cuda.synchronize if gpu else (lambda: None)

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=gpu):
            loss = run(inputs).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(3):  # compilation and warm-up
        step()
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    return steps * sum(int(b.mask.sum()) for b in inputs.values()) / (time.perf_counter() - t0)


def random_run(run: Path, recipe: str, cfg, model: MultimodalTransformer, tokenizers: dict) -> Path:
    """A run directory of `model` as it is (random weights), written as training writes one, for
    the commands that load a run (`load_trained`) to read."""
    from recipes.checkpoint import write_checkpoint
    from recipes.runs import save_run_info

    save_run_info(run, recipe, cfg)
    for modality, tok in tokenizers.items():
        tok.save(run / "tokenizers" / modality)
    write_checkpoint(run, 0, model.save)
    return run


@torch.no_grad()
def inference_check(device, root: Path) -> dict:
    """What `mmtok transcribe / predict / generate --device` run, on the device and on the CPU, on
    random-weight run directories (nothing to download or synthesize): a small Whisper-style run
    decodes two waveforms greedily and with beam search (`transcribe_batch`: the encoder's Memory, the
    KV cache), an image run classifies a picture (`predict`), a character LM samples (`generate`)
    and scores a text (`evaluate`).
    Reports whether the device's tokens, labels and samples equal the CPU's and the largest
    difference of the first decoding step's log-probabilities: random weights put logits close
    together, so a near tie may flip a token (TF32 convolutions on the GPU): figures, not a verdict."""
    import math

    from PIL import Image

    from recipes import gpt_char, vit, vit_digits, whisper_digits
    from recipes.runs import load_trained
    from tokenizers_mm import AudioTokenizer, CharTokenizer

    out, torch_device = {}, torch.device(device)
    cfg = whisper_digits.Config(run_dir=str(root / "speech"), dim=64, depth=2, dec_depth=2, num_heads=2, max_frames=300, max_text=32)
    audio_tok = AudioTokenizer(n_mels=cfg.n_mels, slice_frames=1, chunk=False, max_frames=cfg.max_frames)
    text_tok = whisper_digits.text_tokenizer(cfg)
    torch.manual_seed(0)
    speech_model = whisper_digits.build_model(cfg, audio_tok, text_tok)
    with torch.no_grad():  # (tied LM head) specials score 0, so a random model writes characters: the texts compared are not empty
        speech_model.embedders["text"].tok.weight[list(text_tok.special_ids.values())] = 0.0
    run = random_run(root / "speech", "whisper_digits", cfg, speech_model, {"audio": audio_tok, "text": text_tok})
    t = torch.arange(40000) / 16000
    waves = [0.3 * torch.sin(2 * math.pi * 220 * t) * (t < 1.5), 0.1 * torch.randn(24000, generator=torch.Generator().manual_seed(1))]
    first, texts = {}, {}
    for where in ("cpu", torch_device):
        model, toks = load_trained(run, where)
        memory = whisper_digits.audio_memory(model, toks["audio"].encode_batch(waves))  # the batch moves to the model's device
        inputs, mem = whisper_digits.decoder_feed(memory, [whisper_digits.prompt_ids(toks["text"])] * len(waves))
        first[where] = model(inputs, memory=mem).logits["lm"][:, -1].float().log_softmax(-1).cpu()
        texts[where] = [whisper_digits.transcribe_batch(model, toks["text"], memory, cfg.max_text - 4, beam_size=b) for b in (1, 2)]
    out.update(speech_logprob_max_diff=float((first["cpu"] - first[torch_device]).abs().max()),
               speech_greedy_same=texts["cpu"][0] == texts[torch_device][0], speech_beam_same=texts["cpu"][1] == texts[torch_device][1])  # fmt: skip
    try:  # the whole command, from a file (its log-mel on the device too), where soundfile is installed
        import soundfile

        soundfile.write(root / "speech.wav", torch.cat([waves[0], torch.zeros(8000), waves[1]]).numpy(), 16000)
        files = {where: whisper_digits.transcribe_files(run, [root / "speech.wav"], device=where)[0] for where in ("cpu", torch_device)}
        out.update(transcribe_files_same_text=files["cpu"]["text"] == files[torch_device]["text"],
                   transcribe_files_chars=len(files[torch_device]["text"]))  # fmt: skip
    except ImportError:
        out["transcribe_files_same_text"] = "not run: soundfile is not installed"
    vcfg = vit_digits.Config(run_dir=str(root / "image"), dim=32, depth=2, num_heads=2)
    image_tok = vit.make_tokenizer(vcfg, [0.5] * vcfg.channels, [0.25] * vcfg.channels)
    run = random_run(root / "image", "vit_digits", vcfg, vit.build_model(vcfg, image_tok, 10), {"image": image_tok})
    (run / "classes.txt").write_text("\n".join(str(i) for i in range(10)) + "\n")
    pixels = torch.randint(0, 256, (vcfg.image_size, vcfg.image_size), generator=torch.Generator().manual_seed(2), dtype=torch.uint8)
    Image.fromarray(pixels.numpy()).save(root / "digit.png")
    found = {where: vit.predict(run, [root / "digit.png"], top_k=3, device=where)[0]["top"] for where in ("cpu", torch_device)}
    out.update(image_same_labels=[t["label"] for t in found["cpu"]] == [t["label"] for t in found[torch_device]],
               image_prob_max_diff=max(abs(a["prob"] - b["prob"]) for a, b in zip(found["cpu"], found[torch_device])))  # fmt: skip
    gcfg = gpt_char.Config(run_dir=str(root / "text"), dim=32, depth=2, num_heads=2, block_size=64)
    chars = CharTokenizer.from_corpus("First Citizen: before we proceed any further, hear me speak.\n", max_positions=gcfg.block_size)
    run = random_run(root / "text", "gpt_char", gcfg, gpt_char.build_model(gcfg, chars), {"text": chars})
    (root / "held_out.txt").write_text("hear me speak, first citizen, before we proceed any further.\n" * 4)
    losses = {where: gpt_char.evaluate(run, device=where, data=str(root / "held_out.txt"))["val_loss"] for where in ("cpu", torch_device)}
    out.update(text_eval_loss_diff=abs(losses["cpu"] - losses[torch_device]))  # `mmtok eval --device --data`
    greedy = {where: gpt_char.generate(run, "First", 40, temperature=0, top_k=None, device=where) for where in ("cpu", torch_device)}
    sampled = gpt_char.generate(run, "First", 40, temperature=0.8, top_k=5, seed=0, device=torch_device)  # the device's generator
    out.update(text_greedy_same=greedy["cpu"] == greedy[torch_device], text_sampled_chars=len(sampled))
    return out


def free(gpu: bool) -> None:
    """Drop compiled graphs and cached memory between runs (a new batch shape must not turn the
    next compile dynamic, nor a failed run's memory crowd the next)."""
    import gc

    torch._dynamo.reset()
    gc.collect()
    if gpu:
        torch.cuda.empty_cache()


def main(argv):
    opts = parse(argv)
    dim, depth, heads, context, vocab = SIZES[opts["size"]]
    gpu = torch.cuda.is_available()
    device = torch.device("cuda" if gpu else "cpu")
    trunk = TrunkConfig(dim=dim, depth=depth, num_heads=heads, dropout=0.0, bias=False, activation="gelu_tanh", mode="decoder")
    text = ModalityConfig.from_spec(ModalitySpec("text", ("token",), context, vocab_size=vocab))
    model = MultimodalTransformer(ModelConfig(trunk, {"text": text}, {"lm": HeadConfig("lm", "text")}, decoder_inputs=["text"]))
    try:
        steps, batches = int(opts["steps"]), [int(b) for b in opts["batch"].split(",") if b.strip()]
    except ValueError:
        raise SystemExit(f"steps={opts['steps']!r} and batch={opts['batch']!r} must be numbers (batch: comma-separated)") from None

    def run(compile_: bool, batch: int) -> dict:
        with tempfile.TemporaryDirectory() as d:
            cfg = TrainConfig(run_dir=d, max_steps=steps, batch_size=batch, lr=6e-4, warmup_steps=min(100, steps // 10), eval_every=10**9,
                              ckpt_every=10**9, log_every=max(1, steps // 10), compile=compile_, cpu=not gpu, num_workers=2 if gpu else 0)  # fmt: skip
            t0 = time.perf_counter()
            with contextlib.redirect_stdout(sys.stderr):  # the loop's lines go with its progress bar: stdout holds the JSON alone
                train(cfg, MultimodalTransformer(model.config), Synthetic(context, vocab), collate_examples, lambda m, a: {}, Path(d))
            wall = time.perf_counter() - t0
            rows = [r for r in read_metrics(d) if "tokens_per_s" in r]
        steady = rows[len(rows) // 2 :] or rows  # after compilation and warm-up
        # windows of equal tokens (a fixed batch of real tokens): their harmonic mean is all the tokens over all the time
        return {"batch": batch, "compiled": compile_, "tokens_per_s": len(steady) / sum(1 / r["tokens_per_s"] for r in steady),
                "mfu_logged": [round(r.get("mfu", float("nan")), 4) for r in steady], "wall_seconds": wall}  # fmt: skip

    def attempt(compile_: bool, batch: int) -> tuple[dict | None, str | None, bool]:
        """(figures, None, _) or (None, the error in one line, whether it was out of memory)."""
        try:  # note: only the message leaves: the exception's frames (and a failed run's GPU memory) go with the block
            return run(compile_, batch), None, False
        except Exception as e:  # noqa: BLE001  # one GPU run is scarce: a failure is recorded, and the check goes on
            return None, one_line(e), out_of_memory(e) is not None  # (mmtok's test: through torch.compile's wrapper too)

    dtype = torch.bfloat16 if gpu else torch.float32
    measured = measure_peak(device, dtype, 8192 if gpu else 1024, seconds=2.0 if gpu else 0.5)  # before training: a GPU not yet hot
    compile_ = opts["compile"] == "true"
    compile_error, runs = None, []
    for batch in batches:  # each micro-batch size in turn; the fastest is reported at the top
        result, error, oom = attempt(compile_, batch)
        if error is not None and compile_ and not oom:  # compiling failed (no Triton, no C++ compiler, a bug): measure without
            compile_error, compile_ = error, False
            print(f"gpu_check: the compiled run failed ({compile_error}); measuring without torch.compile", file=sys.stderr)
            free(gpu)
            result, error, _ = attempt(False, batch)
        runs.append(result if error is None else {"batch": batch, "error": error})
        free(gpu)
    ok = [r for r in runs if "error" not in r]
    table, source = peak_flops(device, dtype)
    per_token = flops_per_token(model, context)
    out = {"device": torch.cuda.get_device_name() if gpu else "cpu", "size": opts["size"], "params_M": model.num_params() / 1e6,
           "context": context, "steps": steps, "precision": "bf16" if gpu else "fp32", "peak_tflops_measured": measured / 1e12,
           "peak_tflops_table": table / 1e12, "peak_source": source, "torch": torch.__version__, "compile_error": compile_error}  # fmt: skip
    for r in ok:
        r["mfu_vs_measured_peak"] = per_token * r["tokens_per_s"] / measured
    if ok:  # the fastest size's figures at the top
        best = max(ok, key=lambda r: r["tokens_per_s"])
        achieved = per_token * best["tokens_per_s"]
        out.update(batch=best["batch"], compiled=best["compiled"], tokens_per_s=best["tokens_per_s"], model_tflops=achieved / 1e12,
                   mfu_vs_measured_peak=achieved / measured, mfu_vs_table_peak=achieved / table, mfu_logged=best["mfu_logged"],
                   wall_seconds=best["wall_seconds"])  # fmt: skip
        inputs, _ = collate_examples([Synthetic(context, vocab)[i] for i in range(best["batch"])])
        try:  # note: the training figures above are printed whatever the two parts below do
            bare = bare_loop(model.config, inputs, max(3, steps // 3), device, best["compiled"])
            out.update(bare_loop_tokens_per_s=bare, loop_efficiency=best["tokens_per_s"] / bare,
                       mfu_bare_vs_measured_peak=per_token * bare / measured)  # fmt: skip
        except Exception as e:  # noqa: BLE001
            out.update(bare_loop_error=one_line(e))
    else:
        out["training_error"] = "no micro-batch size finished; see runs"
    out["runs"] = runs
    try:
        out.update(mel_throughput(device, int(opts["mel_batch"]) if gpu else 4))
    except Exception as e:  # noqa: BLE001
        out.update(mel_error=one_line(e))
    try:
        with tempfile.TemporaryDirectory() as d, contextlib.redirect_stdout(sys.stderr):
            out["inference"] = inference_check(device, Path(d))
    except Exception as e:  # noqa: BLE001
        out.update(inference_error=one_line(e))
    print(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    sys.exit(1 if "training_error" in main(sys.argv[1:]) else 0)
