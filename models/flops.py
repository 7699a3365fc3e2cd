"""Model FLOPs and utilisation (MFU), as nanoGPT's `estimate_mfu` and the PaLM paper's appendix B.

A training step costs about 6·N FLOPs per token for the weights (forward 2N, backward 4N), N the
parameters that multiply activations (embedding tables excluded: they are lookups), plus the
attention scores and weighted sums, 12·L·C·T per token for L blocks of width C over T keys
(6·L·C·T for the cross-attention of an encoder-decoder, over the encoder's tokens). MFU is the
achieved FLOP rate over the device's peak, which comes from a table of known GPUs or, for anything
else, is measured with one large matmul.

Left out: the convolution stem of speech models and the output head's share of the vocabulary
(both are in N), recomputation for activation checkpointing (MFU counts model FLOPs only).
"""

from __future__ import annotations

import functools
import time

import torch
from torch import nn

# dense bf16 tensor-core peaks (FLOP/s) of common GPUs, from the vendors' data sheets
PEAK_BF16 = {"H200": 989e12, "H100 SXM": 989e12, "H100 80GB HBM3": 989e12, "H100 PCIe": 756e12, "H100": 756e12, "A100": 312e12,
             "L40S": 362e12, "A10G": 70e12, "L4": 121e12, "RTX 4090": 165e12}  # fmt: skip


def matmul_params(model: nn.Module) -> int:
    """Parameters that multiply activations: everything except embedding tables (a table tied to
    an output layer, as GPT-2's token table and LM head, counts once: the head multiplies)."""
    linear = {id(m.weight) for m in model.modules() if isinstance(m, nn.Linear)}
    tables = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Embedding) and id(m.weight) not in linear)
    return sum(p.numel() for p in model.parameters()) - tables


def flops_per_token(model: nn.Module, tokens: int, memory: int = 0, n_params: int | None = None) -> float:
    """Training FLOPs per token of a MultimodalTransformer at sequence length `tokens` (decoder or
    encoder), with `memory` encoder tokens seen by cross-attention. n_params: `matmul_params(model)`
    when the caller has it already (it walks every module)."""
    N = matmul_params(model) if n_params is None else n_params
    C = model.config.trunk.dim
    enc = len(model.encoder.blocks) if model.encoder is not None else 0
    dec = len(model.decoder.blocks) if model.decoder is not None else 0
    return 6 * N + 12 * (enc + dec) * C * tokens + (6 * dec * C * memory if memory else 0)


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
        for key, value in PEAK_BF16.items():
            if key in name:
                return value, f"table ({key})"
    n = 4096 if device.type == "cuda" else 1024
    return measure_peak(device, dtype, n), f"measured ({n}x{n} {str(dtype).removeprefix('torch.')} matmul)"
