"""Model FLOPs and utilisation (MFU), as nanoGPT's `estimate_mfu` and the PaLM paper's appendix B.

A training step costs about 6·N FLOPs per token for the weights (forward 2N, backward 4N), N the
parameters that multiply activations (embedding tables excluded: they are lookups), plus the
attention scores and weighted sums, 12·L·C·T per token for L blocks of width C over T keys.
`flops_per_token` is that one-stack estimate (nanoGPT's, for a GPT or a ViT). `batch_flops` counts
one batch of any model part by part, each at the rate of the tokens it sees: an encoder's weights
and self-attention over the encoder's tokens (after a strided stem: Whisper's keeps every second
frame), a decoder's over the decoder's tokens, cross-attention (12·L·C·M per decoder token over M
memory tokens, its key / value projections once per memory token), a pooled head once per sample.
MFU is the achieved FLOP rate over the device's peak, which comes from a table of known GPUs or,
for anything else, is measured with one large matmul.

Left out: elementwise work (norms, activations, softmax), recomputation for activation
checkpointing (MFU counts model FLOPs only); attention is counted over the whole padded row, as
the kernels compute it.
"""

from __future__ import annotations

import functools
import time

import torch
from torch import nn

# dense bf16 tensor-core peaks (FLOP/s) of common GPUs, from the vendors' data sheets
PEAK_BF16 = {"H200": 989e12, "H200 NVL": 835e12, "H100 SXM": 989e12, "H100 80GB HBM3": 989e12, "H100 NVL": 835e12, "H100 PCIe": 756e12,
             "H100": 756e12, "A100": 312e12, "L40S": 362e12, "A10G": 70e12, "L4": 121e12, "RTX 4090": 165e12}  # fmt: skip


def matmul_params(model: nn.Module) -> int:
    """Parameters that multiply activations: everything except embedding tables (a table tied to
    an output layer, as GPT-2's token table and LM head, counts once: the head multiplies)."""
    linear = {id(m.weight) for m in model.modules() if isinstance(m, nn.Linear)}
    tables = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Embedding) and id(m.weight) not in linear)
    return sum(p.numel() for p in model.parameters()) - tables


def flops_per_token(model: nn.Module, tokens: int, n_params: int | None = None) -> float:
    """Training FLOPs per token of a one-stack MultimodalTransformer (a decoder or an encoder) at
    sequence length `tokens`: nanoGPT's 6·N + 12·L·C·T. n_params: `matmul_params(model)` when the
    caller has it already (it walks every module). An encoder-decoder: `batch_flops`."""
    N = matmul_params(model) if n_params is None else n_params
    blocks = sum(len(s.blocks) for s in (model.encoder, model.decoder) if s is not None)
    return 6 * N + 12 * blocks * model.config.trunk.dim * tokens


def _matmul_numel(module: nn.Module) -> int:
    """`module`'s parameters less its embedding tables (a table tied to an output layer is counted
    where it multiplies: in the head)."""
    tables = {id(m.weight) for m in module.modules() if isinstance(m, nn.Embedding)}
    return sum(p.numel() for p in module.parameters() if id(p) not in tables)


def part_params(model: nn.Module) -> dict:
    """The matmul parameters of each part of a MultimodalTransformer, for `batch_flops` (it walks
    every module: compute once per model)."""
    stacks = {}
    for name in ("encoder", "decoder"):
        stack = getattr(model, name)
        if stack is not None:
            cross_kv = sum(_matmul_numel(b.cross_attn.kv) for b in stack.blocks if b.cross_attn is not None)
            stacks[name] = (_matmul_numel(stack) - cross_kv, cross_kv)
    return {"stacks": stacks, "embedders": {n: _matmul_numel(e) for n, e in model.embedders.items()},
            "heads": {n: _matmul_numel(h) for n, h in model.heads.items()}}  # fmt: skip


def batch_flops(model: nn.Module, inputs: dict, params: dict | None = None) -> float:
    """Training FLOPs (forward + backward: 3 × the forward's 2 per multiply-add) of one batch of a
    MultimodalTransformer: `inputs` the modality → TokenBatch dict it takes; real tokens (the mask)
    count, attention spans whole rows. params: `part_params(model)` when the caller has it."""
    params = part_params(model) if params is None else params
    cfg, C = model.config, model.config.trunk.dim
    forward, seen = 0.0, {}  # seen: modality -> (real tokens after its stem, row length)
    for name, batch in inputs.items():
        emb = model.embedders[name]
        k = getattr(emb, "stride", 1)
        mask = batch.mask[:, ::k]
        seen[name] = (int(mask.sum()), mask.shape[1])
        frames = int(batch.mask.sum())
        if hasattr(emb, "forward_flops"):  # a stem whose layers run at different rates (Whisper's convolutions)
            forward += emb.forward_flops(frames, seen[name][0])
        else:
            forward += 2 * params["embedders"][name] * frames

    def tokens(names):
        real = sum(seen[n][0] for n in names if n in seen)
        return real, sum(seen[n][1] for n in names if n in seen)

    B = next(iter(inputs.values())).mask.shape[0]
    enc_real, enc_len = tokens(cfg.encoder_inputs)
    if "encoder" in params["stacks"] and enc_len:
        forward += 2 * params["stacks"]["encoder"][0] * enc_real + 4 * len(model.encoder.blocks) * C * enc_len * enc_real
    dec_real, dec_len = tokens(cfg.decoder_inputs)
    if "decoder" in params["stacks"] and dec_len:  # (a generalist's batch of encoder tasks alone leaves the decoder out)
        blocks, cross_kv = params["stacks"]["decoder"]
        forward += 2 * blocks * dec_real + 4 * len(model.decoder.blocks) * C * dec_len * dec_real
        if cross_kv:  # memory: the encoder's tokens and, where the model has it, a null memory token in front of each row
            null = 1 if getattr(model, "null_memory", None) is not None else 0
            forward += 2 * cross_kv * (enc_real + null * B) + 4 * len(model.decoder.blocks) * C * (enc_len + null) * dec_real
    for name, head in model.heads.items():
        modality = cfg.heads[name].modality
        if modality in seen:
            rows = B if hasattr(head, "pool") else seen[modality][0]  # a pooled head runs once per sample
            forward += 2 * params["heads"][name] * rows
    return 3 * forward


def measure_peak(device: torch.device | str, dtype: torch.dtype = torch.bfloat16, n: int = 4096, seconds: float = 0.5) -> float:
    """FLOP/s of an (n × n) @ (n × n) matmul repeated for about `seconds`."""
    device = torch.device(device)
    g = torch.Generator(device=device).manual_seed(0)  # note: never the global RNG, or a resumed run's dropout would shift
    a = torch.randn(n, n, device=device, dtype=dtype, generator=g)
    b = torch.randn(n, n, device=device, dtype=dtype, generator=g)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    a @ b
    sync()
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        reps += 1
        sync() if reps % 8 == 0 else None
    sync()
    return 2 * n**3 * reps / (time.perf_counter() - t0)


@functools.lru_cache(maxsize=None)
def peak_flops(device: torch.device | str, dtype: torch.dtype) -> tuple[float, str]:
    """(peak FLOP/s, where it came from): the table for a known GPU in bf16, else measured (once
    per process and device)."""
    device = torch.device(device)
    if device.type == "cuda" and dtype == torch.bfloat16:
        name = torch.cuda.get_device_name(device)
        known = [key for key in PEAK_BF16 if key in name]  # the most specific name: "H200 NVL" before "H200"
        if known:
            key = max(known, key=len)
            return PEAK_BF16[key], f"table ({key})"
    n = 4096 if device.type == "cuda" else 1024
    return measure_peak(device, dtype, n), f"measured ({n}x{n} {str(dtype).removeprefix('torch.')} matmul)"
