"""MultimodalTransformer: every modality's embedder, one shared trunk, and the output heads.

Each input modality's TokenBatch is embedded (token + position + type vectors) and the sets are
concatenated into one sequence, in the order the config lists them. The trunk is an encoder
(full attention), a decoder (causal) or both (the decoder cross-attends to the encoder output).
Heads read the final hidden states of the modality they name. `generate` samples from the LM
head with an explicit KV cache. Weights save as `config.json` + `model.safetensors`.

Dimension legend: B batch, N tokens of one modality, L tokens of all modalities, C model width.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, load_model, save_model
from torch import Tensor, nn

from tokenizers_mm import TokenBatch, TokenSet
from tokenizers_mm.tokenset import positive
from tokenizers_mm.base import read_json, umask_mode, write_json_atomic

from .attention import KVCache, build_mask
from .blocks import Stack
from .config import ModelConfig
from .embedders import build_embedder, shared_rows
from .heads import LMHead, PooledHead, TokenHead

MODEL_FORMAT = "tokenizers-mm/model"
MODEL_VERSION = 1
CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"
IGNORE = -100  # cross_entropy's ignore_index
NULL_SEGMENT = -2  # the null memory token's segment: every decoder query may attend to it


@dataclass
class Output:
    logits: dict[str, Tensor]  # head name -> (B, N, V) for lm heads, (B, K) for pooled heads
    loss: Tensor | None = None  # weighted sum of the heads' losses that had targets
    losses: dict[str, Tensor] = field(default_factory=dict)


@dataclass
class Memory:
    """The encoder's output for a batch (`MultimodalTransformer.encode_memory`), for decoding from it
    more than once without running the encoder again (samples, beams, a scoring pass, retries):
    states (B, L, C) and the cross-attention key mask (B, L), None when every memory token is real."""

    states: Tensor
    mask: Tensor | None = None

    @property
    def shape(self) -> tuple[int, int]:
        """(B, L), as a TokenBatch's (B, N)."""
        return tuple(self.states.shape[:2])

    def select(self, rows) -> "Memory":
        """The memory of rows `rows` (a slice, or indices that may repeat: one copy per sample or beam)."""
        pick = (lambda t: t[rows]) if isinstance(rows, slice) else (lambda t: t.index_select(0, torch.as_tensor(rows, device=t.device)))
        return Memory(pick(self.states), None if self.mask is None else pick(self.mask))


class GNMTPenalty(float):
    """A length penalty α that ranks finished sequences as openai-whisper's numeric `length_penalty`
    (GNMT's, Wu et al. 2016): summed log-probability / ((5 + length) / 6) ** α. A plain float α
    ranks by summed log-probability / length ** α (Hugging Face's; 1.0 is openai-whisper's default,
    0 the plain sum). A float, so it passes wherever a length_penalty does."""

    def __repr__(self) -> str:
        return f"GNMTPenalty({float(self)!r})"


def length_normalised(sum_logprob: float, length: int, length_penalty: float = 1.0) -> float:
    """The figure beam search and the temperature fallback rank candidates by: `sum_logprob` over
    `length` new tokens (the end token not counted), normalised by `length_penalty`: a float α
    divides by max(length, 1) ** α, a `GNMTPenalty` α by ((5 + length) / 6) ** α."""
    if isinstance(length_penalty, GNMTPenalty):
        return sum_logprob / ((5 + length) / 6) ** float(length_penalty)
    return sum_logprob / max(length, 1) ** length_penalty


class MultimodalTransformer(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        t = config.trunk
        self.embedders = nn.ModuleDict(
            {n: build_embedder(m.embedder, t.dim, m.max_positions, m.vocab_size, m.value_dim, [m.token_types.index(x) for x in m.learned_types],
                               n, m.type_value_dims, m.embed_norm) for n, m in config.modalities.items()}  # fmt: skip
        )
        # One type table for all modalities: each modality owns a contiguous block of rows.
        self.type_offset, n_types = {}, 0
        for name, m in config.modalities.items():
            self.type_offset[name] = n_types
            n_types += len(m.token_types)
        self.type_embed = nn.Embedding(n_types, t.dim)
        # An encoder-decoder generalist (subset_inputs): the decoder always cross-attends to one learned
        # "null" memory token besides its own example's encoder tokens, so an example without encoder
        # inputs (a trajectory) computes the same alone, in a batch, or packed beside an utterance.
        self.null_memory = None
        if config.subset_inputs and config.encoder_inputs and config.decoder_inputs:
            self.null_memory = nn.Parameter(torch.zeros(1, 1, t.dim))
        self.drop = nn.Dropout(t.dropout)
        block_kw = dict(dim=t.dim, num_heads=t.num_heads, mlp_ratio=t.mlp_ratio, bias=t.bias, dropout=t.dropout,
                        norm_eps=t.norm_eps, activation=t.activation, flash=t.flash, final_norm=t.final_norm, grad_checkpoint=t.grad_checkpoint)  # fmt: skip
        self.encoder = Stack(t.depth, **block_kw) if config.encoder_inputs else None
        self.decoder = Stack(t.decoder_depth, cross=self.encoder is not None, **block_kw) if config.decoder_inputs else None
        self.heads = nn.ModuleDict()
        for name, h in config.heads.items():
            m = config.modalities[h.modality]
            if h.kind == "lm":
                if m.vocab_size is None:
                    raise ValueError(f"head {name!r}: an lm head needs a modality with ids, {h.modality!r} has values")
                self.heads[name] = LMHead(t.dim, m.vocab_size)
            elif h.kind.startswith("token_"):
                if h.token_type not in m.token_types:
                    raise ValueError(f"head {name!r}: token_type {h.token_type!r} is not among {h.modality!r}'s types {m.token_types}")
                self.heads[name] = TokenHead(t.dim, h.num_outputs, h.tanh)
            else:
                if not h.num_outputs:
                    raise ValueError(f"head {name!r}: a {h.kind} head needs num_outputs")
                self.heads[name] = PooledHead(t.dim, h.num_outputs, h.pool, h.norm, t.norm_eps)
        self.apply(self._init_weights)
        for m in self.modules():  # a layer with its own starting values (Whisper's sinusoidal positions) sets them again
            if hasattr(m, "reset_table"):
                m.reset_table()
        n_layers = (len(self.encoder.blocks) if self.encoder else 0) + (len(self.decoder.blocks) if self.decoder else 0)
        for pn, p in self.named_parameters():
            if pn.endswith("proj.weight") and (pn.startswith("encoder.") or pn.startswith("decoder.")):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * n_layers))  # GPT-2's scaled residual init
        for name, h in config.heads.items():
            if h.kind == "lm" and h.tie and isinstance(self.embedders[h.modality].tok, nn.Embedding):
                self.heads[name].proj.weight = self.embedders[h.modality].tok.weight

    @staticmethod
    def _init_weights(module: nn.Module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def set_dropout(self, p: float) -> "MultimodalTransformer":
        """Dropout `p` everywhere the trunk config's dropout acts (embeddings, attention, MLPs), and
        in the config saved with the model: for weights loaded into a model built without it
        (fine-tuning Whisper's or GPT-2's weights with the run's `dropout`)."""
        from .attention import Attention

        for m in self.modules():
            if isinstance(m, nn.Dropout):
                m.p = p
            elif isinstance(m, Attention):
                m.dropout = p
        self.config.trunk = dataclasses.replace(self.config.trunk, dropout=p)
        return self

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def params_text(self) -> str:
        """The parameter count as the recipes print it: "85.81M parameters", "28,416 parameters"."""
        n = self.num_params()
        return f"{n / 1e6:.2f}M parameters" if n >= 1e6 else f"{n:,} parameters"

    @property
    def device(self) -> torch.device:
        """Where the model's weights are (as Hugging Face's `PreTrainedModel.device`)."""
        return next(self.parameters()).device

    # -- embedding ------------------------------------------------------------------------------
    def embed(self, names: list[str], inputs: dict[str, TokenBatch]):
        """Embed and concatenate modalities. Returns x (B, L, C), mask (B, L), segments or None,
        and each modality's (start, end) span in L."""
        if self.config.subset_inputs:  # a generalist: each batch carries the modalities of its tasks
            names = [n for n in names if n in inputs]
            if not names:
                raise KeyError(f"model inputs: none of {self.config.decoder_inputs or self.config.encoder_inputs} given, got {sorted(inputs)}")
        xs, masks, segs, spans, start = [], [], [], {}, 0
        for name in names:
            if name not in inputs:
                raise KeyError(f"model input {name!r} is missing; this model reads {names}, got {sorted(inputs)}")
            b, emb = inputs[name], self.embedders[name]
            types, mask, seg = (self._strided(name, t) for t in (shared_rows(b.types), b.mask, b.segments))
            x = emb(b)
            xs.append(x + self.type_embed(types + self.type_offset[name]))
            masks.append(mask)
            segs.append(seg)
            spans[name] = (start, start + x.shape[1])
            start += x.shape[1]
        x, mask = (xs[0], masks[0]) if len(xs) == 1 else (torch.cat(xs, 1), torch.cat(masks, 1))
        segments = None
        if any(s is not None for s in segs):
            segments = torch.cat([s if s is not None else torch.where(m, 0, -1) for s, m in zip(segs, masks)], 1)
        return self.drop(x), mask, segments, spans

    def _strided(self, name: str, t: Tensor | None) -> Tensor | None:
        """A modality's per-token tensor (B, N, ...) at the tokens the trunk reads: a strided stem
        (Whisper's) keeps every k-th token."""
        k = getattr(self.embedders[name], "stride", 1)
        return t if t is None or k == 1 else t[:, ::k]

    # -- trunk ----------------------------------------------------------------------------------
    def encode(self, inputs: dict[str, TokenBatch]) -> tuple[Tensor, Tensor, dict]:
        """Run the encoder over its modalities: memory (B, L, C), its mask (B, L), spans."""
        memory, mask, _, spans = self.encode_packed(inputs)
        return memory, mask, spans

    def encode_memory(self, inputs: dict[str, TokenBatch]) -> Memory:
        """The encoder's output over its modalities, to pass as `memory=` to forward, generate and
        beam_search (unpacked inputs)."""
        memory, mask, spans = self.encode(inputs)
        return Memory(memory, self._cross_mask(inputs, spans, mask))

    def encode_packed(self, inputs: dict[str, TokenBatch]) -> tuple[Tensor, Tensor, Tensor | None, dict]:
        """`encode`, also returning the memory's segment ids (packed inputs) or None. With a null
        memory token (see __init__) it comes first, with segment NULL_SEGMENT, and the spans follow it."""
        if self.null_memory is not None and not any(n in inputs for n in self.config.encoder_inputs):
            first = next(iter(inputs.values()))  # no encoder inputs: the memory is the null token alone
            B, device = first.shape[0], first.mask.device
            memory, spans = self.null_memory.new_zeros(B, 0, self.null_memory.shape[-1]), {}
            mask = torch.zeros(B, 0, dtype=torch.bool, device=device)
            packed = any(b.segments is not None for b in inputs.values())
            seg = torch.zeros(B, 0, dtype=torch.long, device=device) if packed else None
        else:
            x, mask, seg, spans = self.embed(self.config.encoder_inputs, inputs)
            key_mask = None if seg is not None or all(inputs[n].all_real for n in spans) else mask
            attn_mask, causal = build_mask(x.shape[1], x.shape[1], causal=False, key_mask=key_mask if seg is None else mask,
                                           q_segments=seg, k_segments=seg, device=x.device)  # fmt: skip
            memory = self.encoder(x, attn_mask, causal)
        if self.null_memory is not None:
            B = memory.shape[0]
            # note: "* 1.0" (exact) gives the token a gradient of its own layout: with one row (B = 1) the expand passes on its slice
            # of the concatenation's gradient, strided as the whole memory, which DDP copies and warns of ("Grad strides do not match")
            memory = torch.cat([self.null_memory.expand(B, 1, -1).to(memory.dtype) * 1.0, memory], 1)
            mask = torch.cat([mask.new_ones(B, 1), mask], 1)
            if seg is not None:
                seg = torch.cat([seg.new_full((B, 1), NULL_SEGMENT), seg], 1)
            spans = {n: (s + 1, e + 1) for n, (s, e) in spans.items()}
        return memory, mask, seg, spans

    def decode(self, inputs, names=None, memory=None, memory_mask=None, cache: KVCache | None = None, memory_segments=None):
        """Run the decoder over `names` (default: all its modalities): hidden (B, L, C), mask, spans.
        memory_segments (packed inputs): each query cross-attends to its own segment's memory (and
        the null memory token). memory_mask None: every memory token is real (`_cross_mask`)."""
        x, mask, seg, spans = self.embed(names or self.config.decoder_inputs, inputs)
        offset = cache.length if cache is not None else 0
        key_mask = None if seg is not None or all(inputs[n].all_real for n in spans) else mask
        if cache is not None and seg is not None:
            raise ValueError("cached decoding takes unpacked inputs")
        if cache is not None and (key_mask is not None or cache.key_mask is not None):  # a padded prefix (a batch of utterances)
            if cache.key_mask is None:
                if offset:
                    raise ValueError("cached decoding: only the first step may be padded")
                cache.key_mask = torch.ones(x.shape[0], cache.max_len, dtype=torch.bool, device=x.device)
            cache.key_mask[:, offset : offset + x.shape[1]] = mask
            key_mask = cache.key_mask[:, : offset + x.shape[1]]
        bidir = None
        prefix = [spans[n] for n in self.config.prefix_inputs if n in spans]
        if prefix:
            bidir = torch.zeros(1, x.shape[1], dtype=torch.bool, device=x.device)
            for s, e in prefix:
                bidir[:, s:e] = True
        attn_mask, causal = build_mask(x.shape[1], offset + x.shape[1], causal=True, key_mask=key_mask if seg is None else mask,
                                       q_segments=seg, k_segments=seg, q_offset=offset, bidirectional=bidir, device=x.device)  # fmt: skip
        mem_mask = None
        if memory is not None and memory_segments is not None and seg is not None:  # packed: own segment + the null token
            if getattr(self, "null_memory", None) is None:  # (a device read, in this layout only) no null token to fall back on
                own = (seg[..., None] == memory_segments[:, None, :]).any(-1) | (seg == -1)  # (B, T): a memory token of its own
                if not bool(own.all()):
                    raise ValueError("packed encoder-decoder input: an example has decoder tokens but no encoder tokens, and this "
                                     "model has no null memory token (subset_inputs=True gives it one): they would read other examples' memory")
            mem_mask, _ = build_mask(x.shape[1], memory.shape[1], causal=False, key_mask=memory_mask, q_segments=seg,
                                     k_segments=memory_segments, shared_keys=memory_segments == NULL_SEGMENT, device=x.device)  # fmt: skip
        elif memory is not None and memory_mask is not None:
            mem_mask, _ = build_mask(x.shape[1], memory.shape[1], causal=False, key_mask=memory_mask, device=x.device)
        return self.decoder(x, attn_mask, causal, memory, mem_mask, cache), mask, spans

    @staticmethod
    def _cross_mask(inputs: dict[str, TokenBatch], spans: dict, memory_mask: Tensor, memory_segments: Tensor | None = None):
        """The memory mask `decode` needs: None when every memory token is real, which the batches
        know (`TokenBatch.all_real`) without reading the device."""
        return None if memory_segments is None and all(inputs[n].all_real for n in spans) else memory_mask

    def forward_features(self, inputs: dict[str, TokenBatch], memory: Memory | None = None) -> dict[str, tuple[Tensor, Tensor]]:
        """Final hidden states per modality: name -> (h (B, N, C), mask (B, N)). memory: the
        encoder's output computed before (`encode_memory`); the encoder does not run again, and its
        modalities' states are not among the features."""
        feats, memory_segments = {}, None
        if memory is not None and (self.encoder is None or any(b.segments is not None for b in inputs.values())):
            raise ValueError("forward: memory= is the encoder's output for unpacked inputs" + (" (this model has no encoder)" if self.encoder is None else ""))
        if memory is not None and inputs and memory.shape[0] != next(iter(inputs.values())).shape[0]:
            raise ValueError(f"forward: memory= holds {memory.shape[0]} rows for a batch of {next(iter(inputs.values())).shape[0]}")
        memory, memory_mask = (memory.states, memory.mask) if memory is not None else (None, None)
        if self.encoder is not None and memory is None:
            memory, memory_mask, memory_segments, spans = self.encode_packed(inputs)
            feats.update({n: (memory[:, s:e], memory_mask[:, s:e]) for n, (s, e) in spans.items()})
            memory_mask = self._cross_mask(inputs, spans, memory_mask, memory_segments)
        if self.decoder is not None and (not self.config.subset_inputs or any(n in inputs for n in self.config.decoder_inputs)):
            h, mask, spans = self.decode(inputs, memory=memory, memory_mask=memory_mask, memory_segments=memory_segments)
            feats.update({n: (h[:, s:e], mask[:, s:e]) for n, (s, e) in spans.items()})
        return feats

    def forward_head(self, feats, inputs: dict[str, TokenBatch], targets: dict[str, Tensor] | None = None,
                     loss_norms: dict[str, Tensor] | None = None) -> Output:  # fmt: skip
        out, unused = Output(logits={}), []
        for name, head in self.heads.items():
            hc = self.config.heads[name]
            if hc.modality not in feats:  # subset_inputs: this batch carries no tokens for the head; or memory= stands for them
                if targets is not None and targets.get(name) is not None:  # (it would train nothing, without a word)
                    why = (f"memory= stands for the encoder's {hc.modality!r} tokens (their states are not computed again): give the "
                           "inputs without memory= to train it" if hc.modality in inputs else f"this batch carries no {hc.modality!r} tokens")
                    raise ValueError(f"targets[{name!r}]: head {name!r} reads {hc.modality!r} and {why}")
                continue
            h, mask = feats[hc.modality]
            if hc.kind in ("classify", "regress") and inputs[hc.modality].segments is not None:  # (read on the host: no sync)
                raise ValueError(f"head {name!r} pools each row, and the {hc.modality!r} rows are packed (several examples in a row): "
                                 "give it its own rows (collate), or read one token per example (token_classify at a token type)")
            logits = out.logits[name] = head(h, mask if hc.kind == "lm" else self._pool_mask(name, mask, inputs[hc.modality]))
            terms = self._loss_terms(name, inputs, targets, mask)
            if terms is None:
                if loss_norms is not None:  # a share of a step: every process's backward must reach every head DDP saw used
                    unused.append(logits.float().sum() * 0.0)
                continue
            valid, y, count = terms
            # note: a mean over the valid terms as a masked sum over all of them: no boolean indexing, so no dynamic shapes
            # or host sync (one compiled graph), and a batch without such terms adds 0, not an error (or 0/0)
            if hc.kind == "token_classify":  # targets (B, N) ids, or (B, N, A) ids over num_outputs // A classes each
                tgt = y.masked_fill(~valid[..., None], IGNORE).reshape(-1)
                total = F.cross_entropy(logits.reshape(tgt.numel(), -1).float(), tgt, ignore_index=IGNORE, label_smoothing=hc.label_smoothing,
                                        reduction="sum")  # fmt: skip
            elif hc.kind == "token_regress":  # targets (B, N, ...) values, K per token
                # (the difference masked before it is squared: a NaN target where no loss is read leaves the gradients finite)
                total = torch.where(valid[..., None], logits.float() - y.float(), 0.0).square().sum()
            elif hc.kind == "lm":
                tgt = y.masked_fill(~valid, IGNORE)
                total = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), tgt.reshape(-1), ignore_index=IGNORE, reduction="sum")
            elif hc.kind == "classify":  # (B,) class ids, any integer dtype (`check_inputs`; -100: no loss), or (B, C) probabilities
                total = F.cross_entropy(logits.float(), y if y.is_floating_point() else y.long(), label_smoothing=hc.label_smoothing,
                                        reduction="sum")  # fmt: skip
            else:  # (B, K) predictions, one (B,) or (B, K) target each: never broadcast into (B, B) pairs
                total = F.mse_loss(logits.float(), y.float(), reduction="sum")
            # the mean over this batch's terms, or (loss_norms) a share of a step's mean over every micro-batch and process
            out.losses[name] = total / (loss_norms[name] if loss_norms is not None else count.clamp(min=1))
        if out.losses or unused:
            out.loss = sum([self.config.heads[n].loss_weight * l for n, l in out.losses.items()] + unused)
        return out

    def _loss_terms(self, name: str, inputs: dict[str, TokenBatch], targets: dict[str, Tensor] | None, mask: Tensor):
        """What head `name`'s loss on this batch averages: (valid (B, N) tokens or None, its targets
        shaped as its outputs, the number of terms), or None when the batch gives it no targets.
        mask: the trunk's tokens of the head's modality (`_strided`)."""
        hc = self.config.heads[name]
        hc_mod = hc.modality
        b = inputs.get(hc_mod)
        if b is None:
            return None
        if hc.kind in ("classify", "regress"):
            y = None if targets is None else targets.get(name)
            if y is None:
                return None
            if hc.kind == "classify":
                return None, y, (y != IGNORE).sum() if not y.is_floating_point() else torch.tensor(y.shape[0], device=y.device)
            rows = b.shape[0]
            if y.numel() != rows * hc.num_outputs:
                raise ValueError(f"head {name!r}: targets of shape {tuple(y.shape)} for predictions of shape {(rows, hc.num_outputs)}")
            return None, y.reshape(rows, hc.num_outputs), torch.tensor(y.numel(), device=y.device)  # (a count, never in y's half precision)
        if b.targets is None:
            return None
        self._check_token_targets(name, b)  # (shapes and dtypes, no device sync: loss_counts reads them before forward checks)
        y, loss_mask = self._strided(hc_mod, b.targets), self._strided(hc_mod, b.loss_mask)
        valid = mask & loss_mask if loss_mask is not None else mask
        if hc.kind == "lm":
            valid = valid & (y != IGNORE)  # (targets may carry -100 too)
            return valid, y, valid.sum()
        m = self.config.modalities[hc_mod]
        valid = valid & (self._strided(hc_mod, b.types) == m.token_types.index(hc.token_type))
        B, N = valid.shape
        if hc.kind == "token_classify":  # (-100: no loss, as the lm head's; not counted in the mean)
            y = y.reshape(B, N, -1)
            return valid, y, (valid[..., None] & (y != IGNORE)).sum()
        y = y.reshape(B, N, hc.num_outputs)
        return valid, y, valid.sum() * y.shape[-1]

    def loss_counts(self, inputs: dict[str, TokenBatch], targets: dict[str, Tensor] | None = None) -> dict[str, Tensor]:
        """Per head, how many terms (targets) its loss averages on this batch, read from the batch
        alone (no forward pass): what a training step sums over its micro-batches and processes to
        weight every target alike (`forward(..., loss_norms=)`), as one large batch would."""
        reads = {*self.config.encoder_inputs, *self.config.decoder_inputs}
        counts = {}
        for name, hc in self.config.heads.items():
            if hc.modality in inputs and hc.modality in reads:
                terms = self._loss_terms(name, inputs, targets, self._strided(hc.modality, inputs[hc.modality].mask))
                if terms is not None:
                    counts[name] = terms[2]
        return counts

    def _pool_mask(self, head: str, mask: Tensor, batch: TokenBatch) -> Tensor:
        """The tokens a pooled head averages: `mask` (the trunk's tokens, `_strided`), without the
        learned (CLS-like) tokens for a mean."""
        hc = self.config.heads[head]
        m = self.config.modalities[hc.modality]
        if hc.pool == "mean" and m.learned_types:  # average the content tokens, not CLS
            types = self._strided(hc.modality, batch.types)
            for t in m.learned_types:
                mask = mask & (types != m.token_types.index(t))
        return mask

    def forward(self, inputs: dict[str, TokenBatch], targets: dict[str, Tensor] | None = None, memory: Memory | None = None,
                loss_norms: dict[str, Tensor] | None = None) -> Output:  # fmt: skip
        """loss_norms: per head, what to divide its summed loss by instead of this batch's count of
        terms (a training step's count over all its micro-batches and processes, `loss_counts`)."""
        if not torch.compiler.is_compiling():
            self.check_inputs(inputs, targets)
        return self.forward_head(self.forward_features(inputs, memory), inputs, targets, loss_norms)

    def check_inputs(self, inputs: dict[str, TokenBatch], targets: dict[str, Tensor] | None = None) -> None:
        """One-line errors for a batch the model would misread or fail on deep inside: an input or a
        target naming no modality or head of the model (ignored, it would train nothing), and a
        modality's tokens against its declarations (width, vocabulary, types, positions: an
        out-of-range type or position otherwise reads another's embedding, or fails as an index
        error). The declarations are checked on CPU tensors only (no device sync; the training loop
        checks each batch before moving it to an accelerator)."""
        reads = {*self.config.encoder_inputs, *self.config.decoder_inputs}
        if not isinstance(inputs, Mapping):  # (a list of batches: "unhashable type: 'TokenBatch'")
            raise TypeError(f"model inputs: a {type(inputs).__name__}; expected a dict {{modality: TokenBatch}}, as "
                            f"{{{', '.join(f'{n!r}: ...' for n in sorted(reads))}}}")  # fmt: skip
        if targets is not None and not isinstance(targets, Mapping):
            raise TypeError(f"targets: a {type(targets).__name__}; expected a dict {{head name: tensor}} (heads: {', '.join(self.heads)})")
        unknown = sorted(set(inputs) - reads)
        if unknown:
            raise ValueError(f"model inputs {unknown}: this model reads {sorted(reads)}; a batch's keys name its modalities")
        self._check_batch(inputs, "model inputs")
        unknown = sorted(set(targets or {}) - set(self.heads))
        if unknown:
            raise ValueError(f"targets {unknown}: this model's heads are {sorted(self.heads)}; targets are keyed by head name")
        per_token = sorted(n for n in targets or {} if self.config.heads[n].kind == "lm" or self.config.heads[n].kind.startswith("token_"))
        if per_token:  # (they would be ignored: no loss, nothing learned)
            raise ValueError(f"targets {per_token}: {'an lm or a per-token head reads' if len(per_token) == 1 else 'lm and per-token heads read'} "
                             "its modality's TokenBatch.targets (each token's), not targets=; targets= is for pooled heads (classify, regress)")
        for name, b in inputs.items():
            if b.mask.device.type == "cpu":
                b.validate(self.config.modalities[name].spec)
        for name, hc in self.config.heads.items():  # a pooled head reads each row: a row with nothing to read is classified from nothing
            b = inputs.get(hc.modality)
            if hc.kind in ("classify", "regress") and b is not None and b.mask.device.type == "cpu" and b.segments is None:
                empty = ~self._pool_mask(name, self._strided(hc.modality, b.mask), b).any(1)
                if empty.any():
                    what = "content tokens (only its learned tokens: CLS, ...)" if bool(b.mask[empty].any()) else "tokens"
                    raise ValueError(f"sample {int(empty.nonzero()[0])} of the batch has no {hc.modality!r} {what} for head {name!r} "
                                     f"to {'read' if hc.pool == 'cls' else 'average'}: a pooled head needs at least one per sample")  # fmt: skip
                if hc.pool == "cls" and not bool(b.mask[:, 0].all()):  # (it reads each row's first token: padding, in a left-padded row)
                    raise ValueError(f"sample {int((~b.mask[:, 0]).nonzero()[0])} of the batch starts with padding in {hc.modality!r}; head "
                                     f"{name!r} (pool='cls') reads each sample's first token: pad at the end, as collate does")  # fmt: skip
            y = (targets or {}).get(name)
            if y is not None and b is not None and hc.kind in ("classify", "regress"):  # a pooled head's targets: one per sample (shapes and dtypes: no device sync)
                self._check_sample_targets(name, y, b.shape[0])
            if b is not None and b.targets is not None and hc.kind not in ("classify", "regress"):
                self._check_token_targets(name, b)
            if hc.kind in ("classify", "token_classify", "lm"):
                self._check_classes(name, inputs, targets)

    @staticmethod
    def _check_batch(inputs: dict[str, TokenBatch], who: str) -> None:
        """Every modality a TokenBatch of the same batch size: one sample's tokens (a TokenSet) are
        collated first, and rows of different counts would be broadcast or fail deep in torch."""
        for name, b in inputs.items():
            if not isinstance(b, TokenBatch):
                hint = f"collate([...]) the samples' {type(b).__name__}s into one" if isinstance(b, TokenSet) else "a tokenizer's TokenSets, collated"
                raise TypeError(f"{who}: {name!r} is a {type(b).__name__}, expected a TokenBatch ({hint})")
        sizes = {name: b.shape[0] for name, b in inputs.items()}
        if len(set(sizes.values())) > 1:
            raise ValueError(f"{who}: the modalities' batch sizes differ ({', '.join(f'{n} {k}' for n, k in sizes.items())}); "
                             "each row is one sample across all of them")

    def _check_sample_targets(self, name: str, y, batch: int) -> None:
        """A classify head's targets are (B,) integer class ids or (B, C) class probabilities; a
        regress head's, (B,) or (B, K) numbers: anything else, one line naming the head (not torch's
        "expected scalar type Long" or "0D or 1D target tensor expected")."""
        hc = self.config.heads[name]
        if not isinstance(y, Tensor):
            raise TypeError(f"targets[{name!r}]: expected a tensor, got {type(y).__name__}")
        if hc.kind == "classify":
            ids = not (y.is_floating_point() or y.is_complex() or y.dtype == torch.bool)
            if not ((ids and tuple(y.shape) == (batch,)) or (y.is_floating_point() and tuple(y.shape) == (batch, hc.num_outputs))):
                raise ValueError(f"targets[{name!r}]: {y.dtype} of shape {tuple(y.shape)}; head {name!r} takes ({batch},) integer class "
                                 f"ids or ({batch}, {hc.num_outputs}) class probabilities for a batch of {batch}")  # fmt: skip
        elif hc.kind == "regress" and (y.dtype == torch.bool or y.is_complex() or not y.shape or y.shape[0] != batch):
            raise ValueError(f"targets[{name!r}]: {y.dtype} of shape {tuple(y.shape)}; head {name!r} takes ({batch},) or "
                             f"({batch}, {hc.num_outputs}) numbers for a batch of {batch}")  # fmt: skip

    def _check_token_targets(self, name: str, b: TokenBatch) -> None:
        """A per-token head's TokenBatch.targets: (B, N) integer ids for an lm head, (B, N) or (B, N, A)
        ids for token_classify (A parts of num_outputs // A classes each), (B, N, K) or (B, N) numbers
        for token_regress of K = num_outputs: anything else, one line naming the head (not torch's
        "expected scalar type Long" or "shape '[15, -1]' is invalid")."""
        hc, y = self.config.heads[name], b.targets
        B, N = b.mask.shape
        ids = not (y.is_floating_point() or y.is_complex() or y.dtype == torch.bool)
        if hc.kind == "lm":
            ok, wanted = ids and tuple(y.shape) == (B, N), f"({B}, {N}) integer token ids"
        elif hc.kind == "token_classify":
            parts = y.shape[2] if y.dim() == 3 else 1
            ok = ids and tuple(y.shape[:2]) == (B, N) and y.dim() in (2, 3) and parts > 0 and hc.num_outputs % parts == 0
            wanted = f"({B}, {N}) integer class ids, or ({B}, {N}, A) for A parts of num_outputs={hc.num_outputs} // A classes"
        else:
            K = hc.num_outputs
            ok = not (y.is_complex() or y.dtype == torch.bool) and tuple(y.shape) in ((B, N, K),) + (((B, N),) if K == 1 else ())
            wanted = f"({B}, {N}, {K}) numbers"
        if not ok:
            raise ValueError(f"{hc.modality!r} TokenBatch.targets: {str(y.dtype).removeprefix('torch.')} of shape {tuple(y.shape)}; "
                             f"head {name!r} ({hc.kind}) takes {wanted} for {B} samples of {N} tokens")  # fmt: skip

    def _check_classes(self, name: str, inputs: dict[str, TokenBatch], targets: dict[str, Tensor] | None) -> None:
        """Class targets outside head `name`'s classes (cross_entropy's bare "Target 7 is out of
        bounds", or a device-side assert on a GPU), named by sample; CPU tensors only. Targets where
        the head takes no loss (padding, other token types, loss_mask off, IGNORE) are not read."""
        hc, m = self.config.heads[name], self.config.modalities[self.config.heads[name].modality]
        if hc.kind == "classify":
            y = (targets or {}).get(name)
            if y is None or y.device.type != "cpu" or y.is_floating_point():  # (floating targets: class probabilities)
                return
            classes, read = hc.num_outputs, torch.ones_like(y, dtype=torch.bool)
        else:
            b = inputs.get(hc.modality)
            if b is None or b.targets is None or b.targets.device.type != "cpu" or b.targets.is_floating_point():
                return
            read = b.mask if b.loss_mask is None else b.mask & b.loss_mask
            if hc.kind == "lm":
                y, classes = b.targets, m.vocab_size  # (the LM head's width, whatever num_outputs says)
            else:  # (B, N) ids, or (B, N, A) ids over num_outputs // A classes each
                y = b.targets.reshape(*b.mask.shape, -1)
                classes, read = hc.num_outputs // y.shape[-1], (read & (b.types == m.token_types.index(hc.token_type)))[..., None]
        bad = read & (y != IGNORE) & ((y < 0) | (y >= classes))
        if bad.any():
            at = bad.nonzero()[0].tolist()
            where = f" at token {at[1]}" if len(at) > 1 else ""
            raise ValueError(f"head {name!r}: sample {at[0]} of the batch has target {int(y[tuple(at)])}{where}; expected a class "
                             f"from 0 to {classes - 1} ({IGNORE}: no loss)")  # fmt: skip

    @torch.no_grad()
    def cross_attention_scores(self, inputs: dict[str, TokenBatch], memory: Memory | None = None,
                               layers: list[int] | None = None) -> tuple[Output, dict[int, Tensor]]:  # fmt: skip
        """One forward pass, with the decoder's cross-attention scores before softmax, q·k / sqrt(hs):
        {layer: (B, H, T, S)} for each of `layers` (None = every decoder layer), T the decoder's
        tokens and S the encoder's; -inf where a token may not attend (a padded memory's padding).
        What openai-whisper's word timestamps align text to audio with.
        note: each layer's q and k are computed again from its inputs (forward pre-hooks), so the
        fused attention kernels, which never form the scores, stay as they are."""
        if self.encoder is None or self.decoder is None:
            raise ValueError("cross_attention_scores: this model has no cross-attention (it needs an encoder and a decoder)")
        blocks = self.decoder.blocks
        layers = list(range(len(blocks))) if layers is None else list(layers)
        if bad := [i for i in layers if not 0 <= i < len(blocks)]:
            raise ValueError(f"cross_attention_scores: layer {bad[0]} is not one of the decoder's {len(blocks)} layers")
        scores: dict[int, Tensor] = {}

        def grab(layer: int):
            def hook(attn, args, kwargs):
                x, mem, mask = args[0], kwargs["memory"], args[1] if len(args) > 1 else kwargs.get("mask")
                q = attn._heads(attn.q(x))  # (B, T, C) -> (B, H, T, hs)
                k = attn._heads(attn.kv(mem).split(x.shape[-1], dim=2)[0])  # (B, S, C) -> (B, H, S, hs)
                s = (q @ k.transpose(-2, -1)).float() / math.sqrt(attn.head_dim)  # (B, H, T, hs) @ (B, H, hs, S) -> (B, H, T, S)
                scores[layer] = s if mask is None else s.masked_fill(~mask, float("-inf"))  # mask: (B|1, 1, T, S), True = may attend

            return hook

        hooks = [blocks[i].cross_attn.register_forward_pre_hook(grab(i), with_kwargs=True) for i in layers]
        try:
            out = self(inputs, memory=memory)
        finally:
            for h in hooks:
                h.remove()
        return out, scores

    # -- generation -----------------------------------------------------------------------------
    def _lm_prompt(self, inputs: dict[str, TokenBatch], who: str) -> tuple[str, str, TokenBatch]:
        """(lm head name, its modality, the prompt batch), checked for decoding."""
        self._check_batch(inputs, who)
        lm = [(n, h) for n, h in self.config.heads.items() if h.kind == "lm" and h.modality in inputs]
        if not lm or self.decoder is None:
            raise ValueError(f"{who} needs a decoder with an lm head on one of the given inputs {sorted(inputs)}")
        last = [n for n in self.config.decoder_inputs if n in inputs][-1]
        head, name = next(((n, h.modality) for n, h in lm if h.modality == last), (lm[0][0], lm[0][1].modality))
        if last != name:
            raise ValueError(f"{who}: the lm modality {name!r} must be the decoder's last input")
        prompt = inputs[name]
        if prompt.shape[1] == 0:  # (nothing to continue from: a start token, GPT-2's end-of-text or a newline, is the usual prompt)
            raise ValueError(f"{who}: the {name!r} prompt is empty; give at least one token (a start token, as GPT-2's end-of-text)")
        if not prompt.all_real:
            raise ValueError(f"{who}: the prompt must not be padded (give prompts of equal length)")
        if not torch.equal(prompt.positions, torch.arange(prompt.shape[1], device=prompt.positions.device).expand(prompt.shape)):
            raise ValueError(f"{who}: the prompt's positions must be 0 .. {prompt.shape[1] - 1} (new tokens take the next ones)")
        return head, name, prompt

    def _prefix_tokens(self, inputs: dict[str, TokenBatch]) -> int:
        """Decoder tokens before the LM modality (a strided stem keeps every k-th frame)."""
        names = [n for n in self.config.decoder_inputs if n in inputs][:-1]  # the LM modality is the last one given
        return sum(-(-inputs[n].shape[1] // getattr(self.embedders[n], "stride", 1)) for n in names)

    def _memory(self, inputs: dict[str, TokenBatch], memory: Memory | None, batch: int, who: str, rows=None):
        """(states, cross mask) for decoding `batch` rows: the memory given, or the encoder's output
        over `inputs`; None, None without an encoder. rows: the memory rows each decoding row reads."""
        if self.encoder is None:
            if memory is not None:
                raise ValueError(f"{who}: memory= given to a model without an encoder")
            return None, None
        memory = memory if memory is not None else self.encode_memory(inputs)
        if memory.shape[0] != batch:
            raise ValueError(f"{who}: memory= holds {memory.shape[0]} rows for {batch} prompts")
        memory = memory if rows is None else memory.select(rows)
        return memory.states, memory.mask

    def _new_cache(self, batch: int, length: int, device) -> KVCache:
        """A cache in the dtype the keys and values come in: autocast's (bf16 / fp16) when it is on and
        casts the weights (it leaves float64 alone), else the weights' (an fp32 buffer under autocast
        held the same bf16 values at twice the memory, and attention cast all of it back at every step)."""
        t, device, dtype = self.config.trunk, torch.device(device), self.type_embed.weight.dtype
        if torch.is_autocast_enabled(device.type) and dtype != torch.float64:
            dtype = torch.get_autocast_dtype(device.type)
        return KVCache(len(self.decoder.blocks), batch, t.num_heads, length, t.dim // t.num_heads, device, dtype)

    @torch.no_grad()
    def generate(
        self,
        inputs: dict[str, TokenBatch],
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        use_cache: bool = True,
        generator: torch.Generator | None = None,
        eos_id: int | None = None,
        logits_filter=None,
        memory: Memory | None = None,
        return_logprobs: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Sample continuations from the LM head. Returns ids (B, N + max_new_tokens), or fewer new
        tokens when `eos_id` is given and every row has produced it (one host sync per step); a row
        that has produced it is filled with `eos_id` after it, as beam_search pads (and transformers).
        return_logprobs: also return each new token's log-probability, (B, new) float32: the
        log-softmax of its step's logits after logits_filter, before temperature and top_k (the
        model's probability, as openai-whisper's decoder sums it); 0 after a row's `eos_id`, so that a
        row's sum is the log-probability of its tokens up to and with its end. No second pass.
        logits_filter(logits, step, ids) -> logits, when given, changes each step's (B, V) float logits
        before sampling (step 0 = the first new token; ids (B, N + step): each row so far, prompt
        included): token suppression or rules on what came before, as a LogitsProcessor.
        memory: the encoder's output for these rows (`encode_memory`), when it is computed already.

        temperature 0 is greedy. The LM modality must be the decoder's last input and unpadded.
        Past the modality's position table, the context is cropped to its last max_positions
        tokens and re-run without the cache (nanoGPT's sliding window).
        """
        if not (isinstance(temperature, numbers.Real) and temperature >= 0 and math.isfinite(temperature)):  # (a negative one: the least likely)
            raise ValueError(f"generate: temperature={temperature!r} must be a finite number >= 0 (0 is greedy decoding)")
        if generator is not None and not hasattr(generator, "initial_seed"):  # (a seed given as one: torch's long "invalid combination")
            raise TypeError(f"generate: generator is a torch.Generator (torch.Generator().manual_seed({generator!r}) for a seed), "
                            f"got {type(generator).__name__}")  # fmt: skip
        if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, numbers.Integral) or top_k < 0):
            raise ValueError(f"generate: top_k={top_k!r} must be a positive number of tokens (None or 0: no top-k cut)")
        top_k, max_new_tokens = top_k and int(top_k), positive("generate", "max_new_tokens", max_new_tokens, least=0)
        lm_name, name, prompt = self._lm_prompt(inputs, "generate")
        max_pos = self.config.modalities[name].max_positions
        ids, types = prompt.ids, prompt.types
        B = ids.shape[0]
        memory, memory_mask = self._memory(inputs, memory, B, "generate")
        prefix = self._prefix_tokens(inputs)
        cache = None
        if use_cache:
            cache = self._new_cache(B, prefix + max_pos, ids.device)
        step_inputs = dict(inputs)
        names = None  # first step: the whole decoder input
        ended = torch.zeros(B, dtype=torch.bool, device=ids.device)
        logprobs = []
        for step in range(max_new_tokens):
            if cache is not None and cache.length and cache.length - prefix + 1 > max_pos:
                cache = None  # the position table is full: slide the window, uncached
            if cache is None or not cache.length:
                window = ids[:, -max_pos:]
                n = window.shape[1]
                step_inputs = dict(inputs)  # the other decoder inputs (a prefix) again, with the cropped window
                step_inputs[name] = TokenBatch.unmasked(name, window, torch.arange(n, device=ids.device).expand(B, n), types[:, -n:])
                names = None
            h, _, _ = self.decode(step_inputs, names, memory, memory_mask, cache)
            logits = self.heads[lm_name](h[:, -1:])[:, -1].float()  # (B, V)
            if logits_filter is not None:
                logits = logits_filter(logits, step, ids)
            nxt = self._sample(logits, temperature, top_k, generator)
            if eos_id is not None:  # a row that has ended goes on with eos_id (as transformers' pad after the end), its draw dropped
                nxt = nxt.masked_fill(ended[:, None], eos_id)
            if return_logprobs:
                chosen = logits.log_softmax(-1).gather(1, nxt)[:, 0]
                logprobs.append(chosen.masked_fill(ended, 0.0))  # a row that ended before this step adds nothing
            ids = torch.cat([ids, nxt], 1)
            types = torch.cat([types, types[:, -1:]], 1)
            if eos_id is not None:
                ended |= nxt[:, 0] == eos_id
                if bool(ended.all()):
                    break
            if cache is not None:
                pos = torch.full_like(nxt, cache.length - prefix)
                step_inputs = {name: TokenBatch.unmasked(name, nxt, pos, types[:, -1:])}
                names = [name]
        if return_logprobs:
            return ids, torch.stack(logprobs, 1) if logprobs else ids.new_zeros(B, 0, dtype=torch.float32)
        return ids

    @torch.no_grad()
    def beam_search(self, inputs: dict[str, TokenBatch], max_new_tokens: int, beam_size: int = 5, length_penalty: float = 1.0,
                    eos_id: int | None = None, logits_filter=None, memory: Memory | None = None,
                    return_scores: bool = False, patience: float = 1.0) -> Tensor | tuple[Tensor, Tensor]:  # fmt: skip
        """Beam search on the LM head with the KV cache, as openai-whisper's BeamSearchDecoder (and
        fairseq's): each sample keeps `beam_size` open beams. At each step every open beam offers its
        beam_size + 1 likeliest next tokens (after logits_filter); the beam_size likeliest candidates
        that do not end become the open beams, and those ending with `eos_id` that rank above the
        last of them are set aside as finished, up to round(beam_size × patience) per sample. The
        search stops once every sample has that many, or after max_new_tokens; a sample with fewer
        than beam_size finished also takes its likeliest open beams. Of these, each sample's best by
        summed log-probability / (new tokens, eos_id not counted) ** length_penalty is returned
        (`length_normalised`; a `GNMTPenalty` ranks as openai-whisper's numeric length_penalty):
        (B, N + L), prompt then continuation, padded with `eos_id` after its end (an open beam has
        none); return_scores: with its summed log-probability (B,), of its tokens up to and with
        `eos_id`, the figure it was ranked by before length normalisation. beam_size 1 is greedy
        decoding. The prompt (the decoder's last input) must be unpadded, as for `generate`;
        logits_filter and memory as there. The last new token may take the position after the
        table's last: it is sampled, never read.
        """
        if not (isinstance(beam_size, numbers.Integral) and not isinstance(beam_size, bool) and beam_size >= 1):
            raise ValueError(f"beam_search: beam_size={beam_size!r} must be a whole number >= 1 (1 is greedy decoding)")
        max_new_tokens = positive("beam_search", "max_new_tokens", max_new_tokens, least=0)
        lm_name, name, prompt = self._lm_prompt(inputs, "beam_search")
        B, N = prompt.shape
        K, V = int(beam_size), self.config.modalities[name].vocab_size
        wanted = finished_beams(K, patience)  # finished beams each sample collects before the search stops
        if N + max_new_tokens - 1 > self.config.modalities[name].max_positions:  # the last new token is never read
            raise ValueError(f"beam_search: {N} + {max_new_tokens} - 1 tokens read exceed the {self.config.modalities[name].max_positions}-position table")
        rows = torch.arange(B, device=prompt.ids.device).repeat_interleave(K)  # (B·K,) which sample each beam belongs to
        expand = lambda b: b if b is None else b.index_select(0, rows)  # noqa: E731
        beams = {n: TokenBatch(n, expand(b.ids), expand(b.values), expand(b.positions), expand(b.types), expand(b.mask),
                               segments=expand(b.segments)) for n, b in inputs.items()}  # fmt: skip
        memory, memory_mask = self._memory(inputs, memory, B, "beam_search", rows)  # each sample encoded once, copied to its beams
        prefix = self._prefix_tokens(beams)
        cache = self._new_cache(B * K, prefix + N + max_new_tokens, prompt.ids.device)
        ids, types = beams[name].ids, beams[name].types
        scores = torch.full((B, K), float("-inf"), device=ids.device)
        scores[:, 0] = 0.0  # all beams start equal: keep one so the first step does not pick duplicates
        scores = scores.view(-1)
        first_row = torch.arange(B, device=ids.device)[:, None] * K
        finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(B)]  # per sample: (summed log-probability, new tokens)
        step_inputs, names = beams, None
        for step in range(max_new_tokens):
            h, _, _ = self.decode(step_inputs, names, memory, memory_mask, cache)
            logits = self.heads[lm_name](h[:, -1:])[:, -1].float()
            logp = (logits if logits_filter is None else logits_filter(logits, step, ids)).log_softmax(-1)  # (B·K, V)
            top, token = logp.topk(min(K + 1, V), dim=-1)  # each beam's candidates
            cand = (scores[:, None] + top).view(B, -1)
            order = cand.argsort(dim=-1, descending=True, stable=True)  # (B, K·(K+1)), likeliest first
            cand, token = cand.gather(1, order), token.view(B, -1).gather(1, order)
            parent = order // top.shape[1] + first_row  # the candidates' beams (rows)
            ends = token == eos_id if eos_id is not None else torch.zeros_like(token, dtype=torch.bool)
            opened = (~ends).cumsum(-1)  # open beams kept up to each candidate (at most one candidate per beam ends)
            keep = ~ends & (opened <= K)  # K per sample, in rank order
            for b, j in (ends & (opened < K)).nonzero().tolist():  # row-major: each sample's finished in rank order
                if len(finished[b]) < wanted:
                    finished[b].append((float(cand[b, j]), ids[parent[b, j], N:].tolist() + [eos_id]))
            # note: exactly K kept per sample (K·(K+1) candidates, at most K of them ending): gathered in rank order, not
            # selected by the boolean mask, which would read the mask back to the host three times a step
            sel = keep.to(torch.int8).argsort(dim=-1, descending=True, stable=True)[:, :K]
            parent, token, scores = parent.gather(1, sel).view(-1), token.gather(1, sel).view(-1, 1), cand.gather(1, sel).view(-1)
            ids, types = torch.cat([ids[parent], token], 1), torch.cat([types[parent], types[parent, -1:]], 1)
            cache.reorder(parent, cross=False)  # a beam's parent is of its sample: the same memory
            if all(len(f) >= wanted for f in finished):
                break
            pos = torch.full_like(token, cache.length - prefix)
            step_inputs, names = {name: TokenBatch.unmasked(name, token, pos, types[:, -1:])}, [name]
        out = ids.new_full((B, ids.shape[1]), eos_id if eos_id is not None else 0)
        out[:, :N] = prompt.ids
        sums, new = [], lambda tokens: len(tokens) - (tokens[-1:] == [eos_id])  # noqa: E731 — tokens but the end
        for b, found in enumerate(finished):
            if len(found) < K:  # not enough finished: the likeliest open beams join them
                for r in (b * K + scores[b * K : (b + 1) * K].argsort(descending=True, stable=True)).tolist()[: K - len(found)]:
                    found.append((float(scores[r]), ids[r, N:].tolist()))
            score, tokens = max(found, key=lambda f: length_normalised(f[0], new(f[1]), length_penalty))  # the first best, as openai-whisper's argmax
            out[b, N : N + len(tokens)] = torch.tensor(tokens, dtype=out.dtype)
            sums.append(score)
        return (out, torch.tensor(sums, device=out.device)) if return_scores else out

    @staticmethod
    def _sample(logits: Tensor, temperature: float, top_k: int | None, generator) -> Tensor:
        if temperature == 0:
            return logits.argmax(-1, keepdim=True)
        logits = logits / temperature
        if top_k:  # (None or 0: off, as Hugging Face's top_k=0)
            v, _ = torch.topk(logits, min(top_k, logits.shape[-1]))
            logits = logits.masked_fill(logits < v[:, -1:], float("-inf"))
        # note: one draw by inverse CDF, as torch.multinomial draws it but ~30x faster on a CPU over a
        # 50k vocabulary (multinomial makes a random number per token); a token of probability 0 is never drawn
        cdf = logits.softmax(-1, dtype=torch.float32).cumsum(-1)  # float32: a 16-bit cumsum over 50k tokens has ~1k distinct steps
        valid = cdf[:, -1] > 0  # False for a NaN row (NaN logits, or a temperature so low that logits overflow)
        if cdf.device.type == "cpu":  # note: on an accelerator, an asynchronous check as torch.multinomial's, no host sync
            if not bool(valid.all()):
                raise ValueError(f"generate: row {int((~valid).nonzero()[0, 0])}'s probabilities are NaN (NaN logits, or a temperature too low)")
        else:
            torch._assert_async(valid.all())
        u = torch.rand(cdf.shape[0], 1, generator=generator, device=cdf.device, dtype=cdf.dtype) * cdf[:, -1:]
        return torch.searchsorted(cdf, u, right=True).clamp(max=cdf.shape[-1] - 1)

    # -- save / load ----------------------------------------------------------------------------
    def save(self, directory) -> Path:
        """Write config.json + model.safetensors (tied weights stored once)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        write_json_atomic(directory / CONFIG_FILE, {"format": MODEL_FORMAT, "version": MODEL_VERSION, "config": self.config.to_dict()})
        save_model(self, str(directory / WEIGHTS_FILE))
        umask_mode(directory / WEIGHTS_FILE)
        return directory

    @classmethod
    def architecture(cls, directory) -> "MultimodalTransformer":
        """The model that a saved directory's config.json describes, with freshly initialised weights."""
        directory = Path(directory)
        doc = read_json(directory / CONFIG_FILE, "model")
        if doc.get("format") != MODEL_FORMAT or doc.get("version") != MODEL_VERSION:
            raise ValueError(f"model: {directory / CONFIG_FILE} is not a tokenizers-mm model config of version {MODEL_VERSION}")
        try:
            config = ModelConfig.from_dict(doc["config"])
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"model: {directory / CONFIG_FILE} holds a bad config: {e}") from None
        if (directory / WEIGHTS_FILE).exists():
            cls._check_against_weights(config, directory)
        return cls(config)

    @classmethod
    def _check_against_weights(cls, config: ModelConfig, directory: Path) -> None:
        """Refuse a config.json that its model.safetensors does not fit, from the file's header, before
        any weight is allocated: a crafted config (depth 400000, dim 10**6) would otherwise fill the
        memory building the model that load_weights then refuses."""
        path = directory / WEIGHTS_FILE
        shapes = weight_shapes(path, "model")
        t = config.trunk
        depths = {"encoder": t.depth if config.encoder_inputs else 0,
                  "decoder": t.decoder_depth if config.decoder_inputs else 0}  # fmt: skip
        for stack, depth in depths.items():  # (checked first: a meta model of 400000 blocks takes minutes to build)
            held = {k.split(".")[2] for k in shapes if k.startswith(f"{stack}.blocks.")}
            if depth != len(held):
                raise ValueError(f"model: {directory / CONFIG_FILE} asks for {depth} {stack} blocks; {path} holds {len(held)}")
        with torch.device("meta"):
            meta = cls(config)
        state = meta.state_dict(keep_vars=True)
        groups: dict[int, list[str]] = {}  # tied weights: one tensor under several names, saved under one of them
        for name, tensor in state.items():
            groups.setdefault(id(tensor), []).append(name)
        wrong = [f"{n} {list(state[n].shape)} (the file: {shapes[n]})" for names in groups.values() for n in names
                 if n in shapes and list(state[n].shape) != shapes[n]]  # fmt: skip
        wrong += [f"{names[0]} {list(state[names[0]].shape)} (not in the file)" for names in groups.values() if not any(n in shapes for n in names)]
        if wrong:
            raise ValueError(f"model: {directory / CONFIG_FILE} does not match {path}: {'; '.join(wrong[:3])}{' ...' if len(wrong) > 3 else ''}")

    @classmethod
    def load(cls, directory, device="cpu", dtype: torch.dtype | None = None) -> "MultimodalTransformer":
        """A model folder (`save`'s, a checkpoint's) on `device`, in eval mode as Hugging Face's
        `from_pretrained` returns one (dropout off: `.train()` to fine-tune it). Its parameters are
        float32 whatever the file holds (a model saved in bf16 too), or `dtype` (from_pretrained's
        torch_dtype), e.g. torch.bfloat16."""
        if not (Path(directory) / WEIGHTS_FILE).is_file():  # (before the config's model is built: nothing to check its sizes against)
            raise FileNotFoundError(f"model: {Path(directory) / WEIGHTS_FILE} does not exist")
        model = cls.architecture(directory)
        load_weights(model, Path(directory) / WEIGHTS_FILE)
        return model.to(device=device, dtype=dtype).eval()


def finished_beams(beam_size: int, patience: float) -> int:
    """The finished beams each sample collects before beam search stops, round(beam_size ×
    patience) (openai-whisper's patience); a patience that rounds to none is refused."""
    wanted = round(beam_size * patience)
    if wanted < 1:
        raise ValueError(f"patience={patience}: beam_size {beam_size} × patience rounds to no finished beam; "
                         f"use a patience above {0.5 / beam_size:g}")  # fmt: skip
    return wanted


def read_weights(path: Path, where: str) -> dict[str, Tensor]:
    """A safetensors file's tensors (another project's checkpoint: init_from), with one clear error
    if it is damaged."""
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise ValueError(f"{where}: {path} is corrupt or truncated ({str(e).splitlines()[0]})") from None


def weight_shapes(path: Path, where: str) -> dict[str, list[int]]:
    """Each weight's shape in a safetensors file, from its header alone (nothing allocated), with
    one clear error if it is damaged."""
    try:
        with safe_open(str(path), "pt") as f:
            return {k: list(f.get_slice(k).get_shape()) for k in f.keys()}
    except (SafetensorError, OSError) as e:
        raise ValueError(f"{where}: {path} is corrupt or truncated ({str(e).splitlines()[0]})") from None


def check_config_fits(config: ModelConfig, path: Path, where: str) -> None:
    """Refuse another project's config.json (init_from: a GPT-2 or Whisper folder) that its weights
    file cannot fill, from the file's header alone, before the model is built: a crafted config
    (d_model 4096 × 32 layers beside a file of a few bytes) would fill the memory first. Its blocks
    and its parameter count (within 10 %: our type table is extra) must be the file's."""
    shapes = weight_shapes(path, where)
    blocks = {m[1] for k in shapes if (m := re.match(r"(.*?(?:^|\.)(?:layers|h|blocks)\.\d+)\.", k))}
    t = config.trunk
    asked = (t.depth if config.encoder_inputs else 0) + (t.decoder_depth if config.decoder_inputs else 0)
    if asked > len(blocks):  # (checked first: a meta model of 400000 blocks takes minutes to build)
        raise ValueError(f"{where}: its config asks for {asked} blocks; {path} holds {len(blocks)}")
    with torch.device("meta"):
        wanted = MultimodalTransformer(config).num_params()
    held = sum(math.prod(s) for s in shapes.values())
    if wanted > 1.1 * held:
        raise ValueError(f"{where}: its config describes a model of {wanted:,} parameters; {path} holds {held:,}")


def load_weights(model: nn.Module, path: Path):
    """Load a safetensors file into `model`, strictly, with one clear error if it is damaged."""
    try:
        missing, unexpected = load_model(model, str(path), strict=False)
    except FileNotFoundError:
        raise FileNotFoundError(f"model: {path} does not exist") from None
    except RuntimeError as e:  # torch's load_state_dict: the shapes of another config
        if "size mismatch" not in str(e):
            raise ValueError(f"model: {path} is corrupt or truncated ({str(e).splitlines()[0]})") from None
        sizes = [line.strip().removeprefix("size mismatch for ") for line in str(e).splitlines() if "size mismatch" in line]
        raise ValueError(f"model: {path} does not match the config: {'; '.join(sizes[:3])}{' ...' if len(sizes) > 3 else ''}") from None
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"model: {path} is corrupt or truncated ({str(e).splitlines()[0]})") from None
    if missing or unexpected:
        raise ValueError(f"model: {path} does not match the config (missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]})")
