"""Training-step time: our Whisper-style encoder-decoder against Hugging Face's
WhisperForConditionalGeneration of identical size, same weights, same batch, same run.

    python benchmarks/whisper_step.py [--steps 12] [--rounds 3] [--batch 32] [--frames 300] [--text 40]

Both models are the whisper_digits recipe's size (width 128, 3 encoder + 3 decoder blocks, 4 heads,
MLP 512, 80 mel bins, the recipe's 43-token character vocabulary). The peer is built offline from a
`WhisperConfig` with random weights; ours is converted from it (models/convert.py), so both compute
the same function, and the first losses are checked equal before any timing. Hugging Face's
encoder takes exactly 2 · max_source_positions frames, so the source length is a fixed `--frames`
(300 frames = 3 s: a whisper_digits batch of 32 pads to 2.2-3.2 s, median 2.6 s, and to about 35
decoder tokens); the target is `--text` tokens, unpadded. A step is forward + cross-entropy +
backward + AdamW (fp32, CPU); the encoder's sinusoidal position table is frozen in both (Hugging
Face freezes it; the recipe trains ours). Rounds alternate between the two; the median step time
of each is printed with the ratio (ours / peer: <= 1.0 is the goal), steps/s and each round's ratio
(benchmarks/timing.py).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from timing import alternating_rounds, summary  # noqa: E402  (benchmarks/timing.py)

from models import MultimodalTransformer, load_hf_whisper, whisper_model_config  # noqa: E402
from recipes.whisper_digits import Config, text_tokenizer  # noqa: E402
from tokenizers_mm import TokenBatch  # noqa: E402


def hf_whisper(cfg: Config, vocab_size: int, frames: int):
    """WhisperForConditionalGeneration of the recipe's size, random weights, no download."""
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    hf_cfg = WhisperConfig(vocab_size=vocab_size, num_mel_bins=cfg.n_mels, d_model=cfg.dim, encoder_layers=cfg.depth, decoder_layers=cfg.dec_depth,
                           encoder_attention_heads=cfg.num_heads, decoder_attention_heads=cfg.num_heads, encoder_ffn_dim=4 * cfg.dim,
                           decoder_ffn_dim=4 * cfg.dim, max_source_positions=frames // 2, max_target_positions=cfg.max_text,
                           dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, pad_token_id=0, bos_token_id=0, eos_token_id=0,
                           decoder_start_token_id=0)  # fmt: skip
    torch.manual_seed(0)
    model = WhisperForConditionalGeneration(hf_cfg)
    with torch.no_grad():  # non-trivial biases and norms, as the parity test does
        for n, p in model.named_parameters():
            if n.endswith("bias") or "norm" in n:
                p.normal_(0, 0.1)
    return hf_cfg, model


def param_counts(ours: MultimodalTransformer, hf) -> dict:
    """Parameter counts of both, and ours less what the peer lacks by design: the type table
    (one row per token type) and the key bias inside our fused qkv projections (the peer's k_proj
    has none; it is zero after import and its gradient is zero: softmax ignores a per-query constant)."""
    total = lambda m: sum(p.numel() for p in {id(p): p for p in m.parameters()}.values())  # noqa: E731
    type_rows = ours.type_embed.weight.numel()
    key_bias = sum(m.qkv.bias.numel() // 3 for m in ours.modules() if hasattr(m, "qkv") and m.qkv.bias is not None)
    key_bias += sum(m.kv.bias.numel() // 2 for m in ours.modules() if hasattr(m, "kv") and m.kv.bias is not None)
    return {"ours": total(ours), "hf": total(hf), "ours_type_table": type_rows, "ours_key_bias": key_bias,
            "ours_matching": total(ours) - type_rows - key_bias}  # fmt: skip


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--frames", type=int, default=300, help="mel frames per utterance (even)")
    ap.add_argument("--text", type=int, default=40, help="decoder tokens per utterance")
    args = ap.parse_args()
    cfg = Config()
    vocab = text_tokenizer(cfg).vocab_size
    hf_cfg, hf = hf_whisper(cfg, vocab, args.frames)
    ours = load_hf_whisper(MultimodalTransformer(whisper_model_config(hf_cfg.to_dict())), hf.state_dict())
    for p in (ours.embedders["audio"].pos.weight, hf.model.encoder.embed_positions.weight):
        p.requires_grad_(False)
    counts = param_counts(ours, hf)
    assert counts["ours_matching"] == counts["hf"], f"parameter counts differ: {counts}"

    g = torch.Generator().manual_seed(1)
    B, Fr, T = args.batch, args.frames, args.text
    feats = torch.randn(B, cfg.n_mels, Fr, generator=g)  # (B, n_mels, F): Hugging Face's layout
    ids = torch.randint(0, vocab, (B, T + 1), generator=g)
    dec_in, labels = ids[:, :-1], ids[:, 1:]
    pos_a, pos_t = torch.arange(Fr).expand(B, Fr), torch.arange(T).expand(B, T)
    audio = TokenBatch("audio", None, feats.transpose(1, 2).contiguous(), pos_a, torch.zeros_like(pos_a), torch.ones(B, Fr, dtype=torch.bool))
    text = TokenBatch("text", dec_in, None, pos_t, torch.zeros_like(pos_t), torch.ones(B, T, dtype=torch.bool), targets=labels)
    inputs = {"audio": audio, "text": text}

    def loss_hf():
        logits = hf(input_features=feats, decoder_input_ids=dec_in, use_cache=False).logits  # training: no KV cache to build
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1))

    def loss_ours():
        return ours(inputs).loss

    with torch.no_grad():
        l_ours, l_hf = loss_ours().item(), loss_hf().item()
    assert abs(l_ours - l_hf) < 1e-4 * max(1.0, abs(l_hf)), f"the converted model's loss {l_ours} differs from the peer's {l_hf}"

    s = summary(alternating_rounds({"ours": (ours, loss_ours), "hf": (hf, loss_hf)}, args.steps, args.rounds, warmup=3), peer="hf")
    result = {"benchmark": "Whisper-style training step (whisper_digits size), fp32 CPU", "batch": B, "frames": Fr, "text_tokens": T,
              "ours_ms": s["ours_ms"], "hf_ms": s["peer_ms"], "ours_steps_per_s": s["ours_steps_per_s"], "hf_steps_per_s": s["peer_steps_per_s"],
              "ratio_ours_over_hf": s["ratio"], "round_ratios": s["round_ratios"], "goal": "<= 1.0", "first_loss": {"ours": l_ours, "hf": l_hf},
              "params": counts, "rounds_ms": s["rounds_ms"], "threads": torch.get_num_threads()}  # fmt: skip
    print(json.dumps(result, indent=2))
    print(f"\nparameters: ours {counts['ours']:,} ({counts['ours_matching']:,} without the type table and key biases), "
          f"HF {counts['hf']:,}; first loss ours {l_ours:.6f}, HF {l_hf:.6f}")  # fmt: skip
    print(f"ours {s['ours_ms']:.1f} ms/step ({s['ours_steps_per_s']:.2f} steps/s), HF WhisperForConditionalGeneration {s['peer_ms']:.1f} ms/step "
          f"({s['peer_steps_per_s']:.2f} steps/s), ratio {s['ratio']:.3f} (goal <= 1.0)")  # fmt: skip


if __name__ == "__main__":
    main()
