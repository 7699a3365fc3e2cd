"""Model configuration: plain dataclasses, saved as config.json and rebuilt with `Config(**saved)`.

`TrunkConfig` sizes the shared transformer; `ModalityConfig` records what a tokenizer declared
(its `ModalitySpec`) plus how to embed it; `HeadConfig` names an output head; `ModelConfig`
ties them together with which modalities feed the encoder and which the decoder.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from torch import nn

from tokenizers_mm import ModalitySpec

MODES = ("encoder", "decoder", "encoder-decoder")
HEAD_KINDS = ("lm", "classify", "regress", "token_classify", "token_regress")


def whole(owner: str, **values) -> None:
    """Sizes as whole numbers of at least their least (None: not given): a config read from a file
    otherwise fails deep in torch (num_heads=0 divides by zero, a negative width is a torch error)."""
    for name, (value, least) in values.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < least):
            raise ValueError(f"{owner} {name}={value!r} must be a whole number of at least {least}")


@dataclass
class TrunkConfig:
    dim: int = 128  # width of every token vector (C)
    depth: int = 4  # blocks in the encoder, or in the decoder when mode="decoder"
    num_heads: int = 4
    mlp_ratio: float = 4.0  # MLP hidden width = mlp_ratio * dim
    dropout: float = 0.0
    bias: bool = True  # True: like GPT-2 / timm. False: a bit faster
    norm_eps: float = 1e-5
    mode: str = "decoder"  # "encoder" (all tokens see each other) | "decoder" (causal) | "encoder-decoder"
    cross_attention: bool = True  # encoder-decoder: decoder blocks cross-attend to the encoder output
    dec_depth: int | None = None  # encoder-decoder: decoder blocks (default: depth)
    activation: str = "gelu"  # "gelu" (exact: timm, Whisper), "gelu_tanh" (GPT-2) or "relu" (Decision Transformer)
    flash: bool = True  # True: F.scaled_dot_product_attention; False: the readable manual path
    final_norm: bool = True  # LayerNorm after the last block (False: timm's fc_norm models norm after pooling instead)
    grad_checkpoint: bool = False  # training: recompute each block's activations in backward (less memory, ~1/3 more compute)

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"trunk mode must be one of {MODES}, got {self.mode!r}")
        whole("trunk", dim=(self.dim, 1), num_heads=(self.num_heads, 1), depth=(self.depth, 0), dec_depth=(self.dec_depth, 0))
        if isinstance(self.mlp_ratio, bool) or not isinstance(self.mlp_ratio, (int, float)) or not 0 < self.mlp_ratio < float("inf"):
            raise ValueError(f"trunk mlp_ratio={self.mlp_ratio!r} must be a positive number")
        if self.dim % self.num_heads:
            raise ValueError(f"trunk dim={self.dim} must be divisible by num_heads={self.num_heads}")
        if self.activation not in ("gelu", "gelu_tanh", "relu"):
            raise ValueError(f"trunk activation must be 'gelu', 'gelu_tanh' or 'relu', got {self.activation!r}")
        if self.mode == "encoder-decoder" and not self.cross_attention:
            raise ValueError("trunk mode 'encoder-decoder' needs cross_attention=True")

    @property
    def decoder_depth(self) -> int:
        """Blocks in the decoder stack: `depth` for a decoder-only trunk, else `dec_depth` (0 or None: `depth`)."""
        return self.depth if self.mode == "decoder" else (self.dec_depth or self.depth)


@dataclass
class ModalityConfig:
    """A tokenizer's declarations (see tokenizers_mm.ModalitySpec) and how to embed them."""

    modality: str
    token_types: list[str]
    max_positions: int
    vocab_size: int | None = None
    value_dim: int | None = None
    embedder: str = "auto"  # "auto": nn.Embedding for ids, nn.Linear for values
    learned_types: list[str] = field(default_factory=list)  # types embedded as one learned vector each (ViT's "cls")
    grid: list[int] | None = None  # patch grid (rows, cols) of the position table, after the learned-type rows
    type_value_dims: list[int] | None = None  # per token type, how many value columns it uses: one linear layer per type
    embed_norm: bool = False  # LayerNorm on token + position vectors (the Decision Transformer's embed_ln)

    @classmethod
    def from_spec(cls, spec: ModalitySpec, **kw) -> "ModalityConfig":
        return cls(**{**spec.to_dict(), **kw})

    @classmethod
    def from_tokenizer(cls, tokenizer, **kw) -> "ModalityConfig":
        """The tokenizer's spec plus what it says about learned tokens and its patch grid."""
        extra = {"learned_types": list(getattr(tokenizer, "learned_types", ()))}
        if getattr(tokenizer, "grid", None) is not None:
            extra["grid"] = list(tokenizer.grid)
        if getattr(tokenizer, "type_value_dims", None) is not None:
            extra["type_value_dims"] = list(tokenizer.type_value_dims)
        return cls.from_spec(tokenizer.spec, **{**extra, **kw})

    def __post_init__(self):
        whole(f"modality {self.modality!r}", max_positions=(self.max_positions, 1), vocab_size=(self.vocab_size, 1),
              value_dim=(self.value_dim, 1))  # fmt: skip
        self.spec  # what a tokenizer's ModalitySpec checks too: a name, distinct token types, ids or values
        unknown = [t for t in self.learned_types if t not in self.token_types]
        if unknown:
            raise ValueError(f"modality {self.modality!r}: learned_types {unknown} are not among its token types {self.token_types}")
        if self.type_value_dims is not None:
            if len(self.type_value_dims) != len(self.token_types) or self.value_dim is None or max(self.type_value_dims) > self.value_dim:
                raise ValueError(f"modality {self.modality!r}: type_value_dims {self.type_value_dims} needs one width per token type "
                                 f"{self.token_types}, each at most value_dim={self.value_dim}")  # fmt: skip

    @property
    def spec(self) -> ModalitySpec:
        return ModalitySpec(self.modality, self.token_types, self.max_positions, self.vocab_size, self.value_dim)  # (a string refused there)


@dataclass
class HeadConfig:
    kind: str  # "lm" (next token) | "classify" / "regress" (pooled) | "token_classify" / "token_regress" (per token)
    modality: str  # whose tokens the head reads
    num_outputs: int | None = None  # classes / regression width (lm: the modality's vocab_size)
    token_type: str | None = None  # token_*: the token type whose outputs carry the loss (DT: "state" predicts the action)
    tanh: bool = False  # token_regress: squash outputs to [-1, 1] (bounded continuous actions)
    pool: str = "cls"  # classify/regress: "cls" (first token of the modality) or "mean"
    tie: bool = True  # lm: share weights with the modality's token embedding
    norm: bool = False  # classify/regress: LayerNorm on the pooled vector (timm's fc_norm)
    label_smoothing: float = 0.0  # classify: cross-entropy label smoothing
    loss_weight: float = 1.0

    def __post_init__(self):
        whole("head", num_outputs=(self.num_outputs, 1))
        if self.kind not in HEAD_KINDS:
            raise ValueError(f"head kind must be one of {HEAD_KINDS}, got {self.kind!r}")
        if self.pool not in ("cls", "mean"):
            raise ValueError(f"head pool must be 'cls' or 'mean', got {self.pool!r}")
        if self.kind.startswith("token_") and not (self.token_type and self.num_outputs):
            raise ValueError(f"a {self.kind} head needs token_type (which tokens carry the loss) and num_outputs")


@dataclass
class ModelConfig:
    trunk: TrunkConfig
    modalities: dict[str, ModalityConfig]
    heads: dict[str, HeadConfig]
    encoder_inputs: list[str] = field(default_factory=list)  # modalities the encoder reads, in order
    decoder_inputs: list[str] = field(default_factory=list)  # modalities the decoder reads, in order
    # Decoder modalities attended in both directions within their own sequence (a prefix LM, as in
    # T5 / PaLI): an image's patches or an utterance's frames see each other, later tokens see them
    # causally. Lets one decoder-only trunk serve classification, speech recognition and control.
    prefix_inputs: list[str] = field(default_factory=list)
    subset_inputs: bool = False  # a batch may carry any non-empty subset of the inputs (a generalist's task batches)

    def __post_init__(self):
        for what, names in (("modality", self.modalities), ("head", self.heads)):  # (module names: torch's add_module refuses these)
            bad = [n for n in names if not isinstance(n, str) or not n or "." in n or hasattr(nn.ModuleDict(), n)]
            if bad:
                raise ValueError(f"{what} names {bad}: a name is a non-empty string without '.' and not an attribute of "
                                 f"torch's ModuleDict (keys, items, training, ...)")  # fmt: skip
        wrong = {k: m.modality for k, m in self.modalities.items() if m.modality != k}
        if wrong:
            raise ValueError(f"modalities {wrong}: each is keyed by its own name (ModalityConfig.modality)")
        enc, dec = self.trunk.mode != "decoder", self.trunk.mode != "encoder"
        if enc != bool(self.encoder_inputs) or dec != bool(self.decoder_inputs):
            raise ValueError(
                f"mode {self.trunk.mode!r} needs {'encoder_inputs' if enc else 'no encoder_inputs'} and "
                f"{'decoder_inputs' if dec else 'no decoder_inputs'}; got {self.encoder_inputs} / {self.decoder_inputs}"
            )
        stray = [n for n in self.prefix_inputs if n not in self.decoder_inputs]
        if stray:
            raise ValueError(f"prefix_inputs {stray} must be decoder inputs; the decoder reads {self.decoder_inputs}")
        seeing = sorted(n for n, h in self.heads.items() if h.kind == "lm" and h.modality in self.prefix_inputs)
        if seeing:  # (its tokens attend both ways: each next-token target would be among the inputs it sees)
            raise ValueError(f"heads {seeing}: an lm head predicts the next token, and prefix_inputs "
                             f"{sorted({self.heads[n].modality for n in seeing})} attend both ways (they would see it); keep them causal")
        for name in [*self.encoder_inputs, *self.decoder_inputs, *(h.modality for h in self.heads.values())]:
            if name not in self.modalities:
                raise ValueError(f"modality {name!r} is used but not configured; configured: {sorted(self.modalities)}")
        unread = {n: h.modality for n, h in self.heads.items() if h.modality not in (*self.encoder_inputs, *self.decoder_inputs)}
        if unread:  # (it would never see a token: no output, its targets ignored)
            raise ValueError(f"heads {sorted(unread)} read {sorted(set(unread.values()))}, which neither the encoder nor the decoder "
                             f"reads (encoder_inputs {self.encoder_inputs}, decoder_inputs {self.decoder_inputs})")

        first = self.decoder_inputs[0] if self.decoder_inputs and not self.encoder_inputs else None  # (no encoder to cross-attend)
        blind = sorted(n for n, h in self.heads.items() if h.kind in ("classify", "regress") and h.pool == "cls"
                       and h.modality == first and first not in self.prefix_inputs)  # fmt: skip
        if blind:  # (causal, first, nothing to cross-attend: the very first token sees only itself, so every sample gets one output)
            raise ValueError(f"heads {blind} pool the first token (pool='cls') of {first!r}, the decoder's first input, attended causally "
                             f"with no encoder: it sees only itself, one output for every sample; add {first!r} to prefix_inputs "
                             "(both directions), or pool='mean'")  # fmt: skip

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        return cls(
            trunk=TrunkConfig(**d["trunk"]),
            modalities={k: ModalityConfig(**v) for k, v in d["modalities"].items()},
            heads={k: HeadConfig(**v) for k, v in d["heads"].items()},
            encoder_inputs=list(d.get("encoder_inputs", [])),
            decoder_inputs=list(d.get("decoder_inputs", [])),
            prefix_inputs=list(d.get("prefix_inputs", [])),
            subset_inputs=bool(d.get("subset_inputs", False)),
        )
