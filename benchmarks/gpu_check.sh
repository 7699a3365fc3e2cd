#!/usr/bin/env bash
# One self-contained GPU check (< 8 minutes on one H200): a 124M GPT-2-sized trunk, context 1024,
# bf16 + torch.compile, a few hundred steps on synthetic tokens through the toolkit's training
# loop; prints tokens/s and MFU against the measured bf16 matmul peak, and the log-mel front end's
# throughput on the GPU. Needs PyTorch, torchaudio, Accelerate, timm; no network. The package
# travels on PYTHONPATH (this checkout) or as an installed wheel.
#   bash benchmarks/gpu_check.sh [size=gpt2] [steps=300] [batch=32,64] [compile=true]   (each batch size in turn; the fastest on top)
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export TOKENIZERS_PARALLELISM=false
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi: running on the CPU"; } >&2  # (stdout holds the JSON alone)
exec "${PYTHON:-python3}" benchmarks/gpu_check.py "$@"
