"""gpt_bpe: a GPT on byte-level BPE tokens; trains its tokenizer on the corpus, or loads one,
or starts from GPT-2's weights and vocabulary held locally.

Config → data → model → loss/metric → main, as gpt_char (whose loop, windows and metric it
shares): only the tokenizer and the model builder differ. The metric is validation loss in nats
per BPE token (not comparable with gpt_char's nats per character).

    mmtok train gpt_bpe data=corpus.txt vocab_size=4096                # train a tokenizer, then the model
    mmtok train gpt_bpe data=corpus.txt tokenizer=runs/x/tokenizers/text
    mmtok train gpt_bpe data=corpus.txt init_from=path/to/gpt2 lr=1e-4 # fine-tune GPT-2 weights
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from models import MultimodalTransformer, gpt2_model_config, load_gpt2
from models.convert import check_gpt2_config
from models.transformer import check_config_fits, read_weights
from tokenizers_mm import BPETokenizer, load_tokenizer
from tokenizers_mm.base import FORMAT, read_json
from tokenizers_mm.text_bpe import training_texts

from . import gpt_char
from .config import ConfigError, take_shape

GPT2_FOLDER = "a Hugging Face GPT-2 folder: config.json, model.safetensors, and its tokenizer (vocab.json + merges.txt, or tokenizer.json)"


@dataclass
class Config(gpt_char.Config):
    vocab_size: int = 2048  # BPE vocabulary to train: 256 bytes + merges + <|endoftext|>
    pattern: str = "gpt2"  # pre-tokenization regex: "gpt2", "gpt4" or a regex of your own
    tokenizer: str = ""  # instead of training: a saved tokenizer folder (ours or Hugging Face's), a .tiktoken file, or vocab.json + merges.txt
    init_from: str = ""  # a local Hugging Face GPT-2 folder (config.json + model.safetensors + vocab.json, merges.txt or tokenizer.json)

    def check(self) -> None:
        super().check()
        given = "tokenizer" if self.tokenizer else "init_from" if self.init_from else ""
        if given and self.vocab_size != Config.vocab_size:  # note: the default is no sign of intent; another value is
            raise ConfigError(f"vocab_size={self.vocab_size} sizes a tokenizer trained on the corpus; {given}={getattr(self, given)} "
                              "brings its own vocabulary: leave vocab_size out")  # fmt: skip


# -- data -----------------------------------------------------------------------------------------
def load_bpe(path: str, cfg: Config, key: str = "tokenizer") -> BPETokenizer:
    """The tokenizer at `path`, named in errors by the config key that gave it; cfg takes its split
    pattern (run.json records how the tokenizer splits, not the default; vocab_size stays as given:
    it sizes a tokenizer trained on the corpus, and the run's tokenizer holds its own)."""
    tok = read_bpe(Path(path), cfg, key)
    cfg.pattern = tok.pattern_name
    return tok


def read_bpe(p: Path, cfg: Config, key: str) -> BPETokenizer:
    if (p / "tokenizer.json").exists() and read_json(p / "tokenizer.json", "tokenizer").get("format") == FORMAT:
        tok = load_tokenizer(p, expect=BPETokenizer)  # ours; a Hugging Face GPT-2 folder's tokenizer.json is its own format: below
        if cfg.pattern != Config.pattern and cfg.pattern != tok.pattern_name:  # (the default is no sign of intent)
            raise ConfigError(f"pattern={cfg.pattern}: {key}={p} splits text with its own pattern ({tok.pattern_name}); leave pattern out")
        tok.max_positions = cfg.block_size
        return tok
    if p.suffix == ".tiktoken":
        return BPETokenizer.from_tiktoken_file(p, pattern=cfg.pattern, max_positions=cfg.block_size)
    if (p / "tokenizer.json").exists():  # Hugging Face's (beside vocab.json + merges.txt or alone, as transformers 5 saves it): as
        # AutoTokenizer reads the folder, its split pattern with it (Qwen2's folders hold all three, and split as GPT-4 does)
        given = cfg.pattern if cfg.pattern != Config.pattern else None  # (the file says how it splits; the default does not contradict it)
        return BPETokenizer.from_hf_tokenizer_json(p / "tokenizer.json", pattern=given, max_positions=cfg.block_size)
    if (p / "vocab.json").exists() and (p / "merges.txt").exists():
        if cfg.pattern != "gpt2":  # (GPT2Tokenizer's files split as GPT-2 does: another pattern gives other ids, silently)
            raise ConfigError(f"pattern={cfg.pattern}: {key}={p} is a GPT-2 tokenizer (vocab.json + merges.txt), which splits text with "
                              "GPT-2's pattern; leave pattern out")  # fmt: skip
        return BPETokenizer.from_gpt2_files(p / "vocab.json", p / "merges.txt", pattern=cfg.pattern, max_positions=cfg.block_size)
    expected = (GPT2_FOLDER if key == "init_from" else
                "a tokenizer folder (tokenizer.json: ours or Hugging Face's), a .tiktoken file, or a folder with vocab.json + merges.txt")  # fmt: skip
    raise FileNotFoundError(f"{key}={p}: expected {expected}" + ("" if p.exists() else f"; {p} does not exist"))


def build_data(cfg: Config, tokenizer: BPETokenizer | None = None):
    """(tokenizer, train windows, val windows); the tokenizer is trained on the training split only."""
    train_text, val_text = gpt_char.split_text(cfg)
    if tokenizer is None:
        key = "tokenizer" if cfg.tokenizer else "init_from"
        if getattr(cfg, key):
            tokenizer = load_bpe(getattr(cfg, key), cfg, key)
        else:
            texts = training_texts(train_text, cfg.pattern)
            tokenizer = BPETokenizer.train(texts, cfg.vocab_size, pattern=cfg.pattern, max_positions=cfg.block_size)
            if tokenizer.vocab_size < cfg.vocab_size:  # (run.json records the vocabulary the run has)
                print(f"gpt_bpe: vocab_size={cfg.vocab_size:,}: the training text ran out of pairs to merge at {tokenizer.vocab_size:,} tokens")
                cfg.vocab_size = tokenizer.vocab_size
    return tokenizer, *gpt_char.windows(cfg, tokenizer, train_text, val_text)


# -- model ----------------------------------------------------------------------------------------
def build_model(cfg: Config, tokenizer: BPETokenizer) -> MultimodalTransformer:
    if not cfg.init_from:
        return gpt_char.build_model(cfg, tokenizer)
    folder = Path(cfg.init_from)
    weights = folder / "model.safetensors"
    if not weights.is_file():
        raise FileNotFoundError(f"init_from {folder}: no model.safetensors (pickled .bin checkpoints are never loaded; convert them to safetensors)")
    if not (folder / "config.json").exists():
        raise FileNotFoundError(f"init_from {folder}: no config.json; expected {GPT2_FOLDER}")
    hf = read_json(folder / "config.json", f"init_from {folder}")
    check_gpt2_config(hf, f"init_from {folder}")
    if hf["vocab_size"] != tokenizer.vocab_size:
        raise ValueError(f"init_from {folder}: the model's vocabulary has {hf['vocab_size']} ids, the tokenizer {tokenizer.vocab_size}")
    if cfg.block_size > hf["n_positions"]:
        default = " (the default)" if cfg.block_size == type(cfg).block_size else ""
        raise ValueError(f"block_size={cfg.block_size}{default} exceeds init_from {folder}'s {hf['n_positions']} positions: give "
                         f"block_size={hf['n_positions']} or less")  # fmt: skip
    config = gpt2_model_config(hf, max_positions=cfg.block_size, dropout=cfg.dropout, flash=cfg.flash)
    check_config_fits(config, weights, f"init_from {folder}")  # (before the model is allocated)
    model = MultimodalTransformer(config)
    t = model.config.trunk
    sizes = {"dim": t.dim, "depth": t.depth, "num_heads": t.num_heads, "mlp_ratio": t.mlp_ratio, "bias": t.bias, "activation": t.activation}
    take_shape(cfg, {k: v for k, v in sizes.items() if hasattr(cfg, k)}, f"init_from {folder}", "gpt_bpe")  # a value given otherwise: refused
    return load_gpt2(model, read_weights(weights, f"init_from {folder}"))


# -- main -----------------------------------------------------------------------------------------
def main(cfg: Config, resume: bool = False) -> dict:
    return gpt_char.run_text_lm(cfg, "gpt_bpe", build_data, build_model, resume)


def evaluate(run_dir, device=None, data=None) -> dict:
    """The run's validation loss, or with data= (a text file or dataset) on that text (`gpt_char.evaluate_text_lm`)."""
    return gpt_char.evaluate_text_lm(run_dir, build_data, device, data)


generate = gpt_char.generate
