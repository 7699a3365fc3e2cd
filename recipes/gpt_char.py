"""gpt_char: a character-level GPT, nanoGPT's "baby GPT" on shakespeare_char.

Config → data → model → loss/metric → main. The corpus is split 90/10 (the last tenth is
validation, as nanoGPT's prepare.py); every window of block_size + 1 characters is one training
example (inputs = first block_size, targets = the next character at each position). The metric
is validation loss in nats per character. With no `data=`, the embedded default corpus is the
text that ships with every Python install: the documentation topics (`pydoc_data`) and the
source of a fixed list of standard-library modules, so the recipe runs offline on a fresh machine.

    mmtok train gpt_char                                    # embedded corpus
    mmtok train gpt_char data=input.txt max_steps=5000      # your own UTF-8 text
"""

from __future__ import annotations

import hashlib
import inspect
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from accelerate.utils import set_seed
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from models import HeadConfig, ModalityConfig, ModelConfig, MultimodalTransformer, TrunkConfig
from tokenizers_mm import ENDOFTEXT, CharTokenizer, TokenSet, collate, collate_examples, load_tokenizer, next_token_set
from tokenizers_mm.base import read_utf8

from .config import TrainConfig
from .folders import hf_splits, is_hf_dataset, local_data, no_columns, not_a_dataset, say_unused, scored_data, with_own_columns
from .runs import check_same_data, load_trained, record_data, resolve_run_dir, resumed_architecture, save_run_info
from .train import mean_loss, train

# Standard-library modules whose source joins the documentation topics in the default corpus.
STDLIB_MODULES = ("argparse", "collections", "dataclasses", "functools", "json.decoder", "pathlib", "textwrap", "typing")


@dataclass
class Config(TrainConfig):
    EVAL_KEYS = (*TrainConfig.EVAL_KEYS, "sample_tokens", "temperature", "top_k")
    data: str = ""  # a UTF-8 text file, JSON lines / CSV / Parquet rows or a Hugging Face dataset; "" = the embedded corpus
    text_column: str = ""  # a Hugging Face dataset's text column; "" = `text`, or its only string column
    val_fraction: float = 0.1  # the last fraction of the text is the validation split
    block_size: int = 64  # context length in characters
    dim: int = 128
    depth: int = 4
    num_heads: int = 4
    dropout: float = 0.0
    bias: bool = False  # nanoGPT's default: no biases in Linear and LayerNorm
    flash: bool = True  # fused SDPA attention (False: the manual path)
    activation: str = "gelu"  # "gelu" (exact), "gelu_tanh" (GPT-2's approximation) or "relu"
    sample_tokens: int = 300  # tokens generated at the end of training (0 = none)
    temperature: float = 0.8
    top_k: int = 200

    def check(self) -> None:
        super().check()
        no_columns(self, ("text_column",))  # (a plain text file has none)


# -- data -----------------------------------------------------------------------------------------
def default_corpus() -> str:
    """Python's documentation topics and some standard-library source: offline, ~0.7 MB."""
    import importlib

    from pydoc_data.topics import topics

    parts = [topics[k] for k in sorted(topics)]
    parts += [inspect.getsource(importlib.import_module(m)) for m in STDLIB_MODULES]
    return "\n".join(parts)


def load_text(path: str) -> str:
    p = Path(path)
    if p.is_dir():
        raise ValueError(f"data {p} is a folder but not a dataset: {not_a_dataset(p)}; expected a UTF-8 text file, "
                         "a JSON lines / CSV / TSV / Parquet file or a folder of them, or a Hugging Face dataset (save_to_disk)")  # fmt: skip
    text = read_utf8(p, "data file", "decompress it, or give JSON lines / CSV (.jsonl.gz, .csv.gz) read as rows")
    if len(text) < 2:
        raise ValueError(f"data file {p} holds {len(text)} characters; expected text")
    return text


class Windows(Dataset):
    """Every window of block_size + 1 ids: example i = ids[i·stride : i·stride + block_size + 1]
    (stride = block_size: windows that predict each token once, the text's tail shorter than a block left out)."""

    def __init__(self, ids: torch.Tensor, block_size: int, stride: int = 1, what: str = "the text", key: str = "block_size"):
        if len(ids) <= block_size:
            raise ValueError(f"{what} holds {len(ids)} tokens; {key}={block_size} needs at least {block_size + 1}")
        self.ids, self.block_size, self.stride = ids, block_size, stride

    def __len__(self) -> int:
        return (len(self.ids) - self.block_size - 1) // self.stride + 1

    def __getitem__(self, i: int) -> dict:
        start = i * self.stride
        return {"text": next_token_set("text", self.ids[start : start + self.block_size + 1])}


def read_text(cfg: Config) -> tuple[str, str | None]:
    """(text, validation text or None): cfg.data's text (the default corpus without one), or a
    Hugging Face dataset's (save_to_disk's folder, Parquet files) text column and its validation
    split when it has one."""
    data = local_data(cfg.data) if cfg.data else None
    if data is not None and is_hf_dataset(data):
        return hf_splits(data, "text", (cfg.text_column, ""))
    return (load_text(data) if data is not None else default_corpus()), None


def split_text(cfg: Config) -> tuple[str, str]:
    """(train text, validation text): a dataset's validation split, else the last val_fraction of the text."""
    text, val = read_text(cfg)
    if val is not None:
        if hasattr(type(cfg), "val_fraction"):
            say_unused(cfg, type(cfg).__module__.rpartition(".")[2], ("val_fraction",))
        return text, val
    cut = len(text) - int(len(text) * cfg.val_fraction)
    start = text.find(ENDOFTEXT, max(0, cut - len(ENDOFTEXT) + 1), cut + len(ENDOFTEXT) - 1)  # a separator the cut would halve:
    cut = cut if start < 0 else start + len(ENDOFTEXT)  # to training, whole (each half would read as plain characters)
    return text[:cut], text[cut:]


def text_windows(cfg: Config, tokenizer, text: str, stride: int = 1, what: str = "the text", key: str = "block_size") -> Windows:
    """Encode a text (special-token strings in it become special tokens) into windows; a character
    the tokenizer lacks (a resumed run's data changed) is named with `what` it is in."""
    try:
        ids = torch.as_tensor(np.asarray(tokenizer.encode_ids(text, allowed_special="all"), dtype=np.int64))
    except ValueError as e:
        raise ValueError(f"{what}: {e}") from None
    return Windows(ids, cfg.block_size, stride, what, key)


def windows(cfg: Config, tokenizer, train_text: str, val_text: str, key: str = "block_size",
            fraction: str | None = "val_fraction") -> tuple[Windows, Windows]:  # fmt: skip
    """Both splits' windows (`text_windows`); errors name the config keys `key` (block_size) and
    `fraction` (val_fraction; None: a recipe that has no such key)."""
    data = cfg.data or "the built-in corpus"
    last = f"{fraction}={cfg.val_fraction}" if fraction else f"{cfg.val_fraction:g} of it"
    val = f"the validation split of {data} (its own split, or where it has none its last {last})"
    return (text_windows(cfg, tokenizer, train_text, what=f"the training split of {data}", key=key),
            text_windows(cfg, tokenizer, val_text, what=val, key=key))  # fmt: skip


def text_fingerprint(train_set: Windows, val_set: Windows) -> dict:
    """The token ids of both splits: counts and a SHA-256 (a resume checks its text is the same)."""
    h = hashlib.sha256()
    for ids in (train_set.ids, val_set.ids):
        h.update(np.ascontiguousarray(ids.numpy()))
        h.update(b"|")
    return {"training tokens": len(train_set.ids), "validation tokens": len(val_set.ids), "sha256": h.hexdigest()}


def build_data(cfg: Config, tokenizer: CharTokenizer | None = None):
    """(tokenizer, train windows, val windows); the character vocabulary comes from the corpus."""
    train_text, val_text = split_text(cfg)
    tokenizer = tokenizer or CharTokenizer.from_corpus(train_text + val_text, max_positions=cfg.block_size)
    return tokenizer, *windows(cfg, tokenizer, train_text, val_text)


# -- model ----------------------------------------------------------------------------------------
def build_model(cfg: Config, tokenizer) -> MultimodalTransformer:
    trunk = TrunkConfig(dim=cfg.dim, depth=cfg.depth, num_heads=cfg.num_heads, dropout=cfg.dropout, bias=cfg.bias,
                        mode="decoder", flash=cfg.flash, activation=cfg.activation)  # fmt: skip
    config = ModelConfig(trunk, {"text": ModalityConfig.from_spec(tokenizer.spec)}, {"lm": HeadConfig("lm", "text")},
                         decoder_inputs=["text"])  # fmt: skip
    return MultimodalTransformer(config)


# -- metric ---------------------------------------------------------------------------------------
def make_evaluate(cfg: Config, val_set: Windows):
    """Validation loss on a fixed set of windows (the same every evaluation and every run)."""
    g = torch.Generator().manual_seed(cfg.seed)
    idx = torch.randint(len(val_set), (cfg.eval_batches, cfg.batch_size), generator=g)
    batches = [collate_examples([val_set[int(i)] for i in row]) for row in idx]
    return lambda model, accelerator: {"val_loss": mean_loss(model, accelerator, batches)}


def sample(model: MultimodalTransformer, tokenizer, prompt: str, n: int, temperature: float, top_k: int | None, seed: int = 0,
           num_samples: int | None = None, progress: bool = False) -> str | list[str]:  # fmt: skip
    """`n` new tokens after `prompt`: one continuation, or with num_samples that many, drawn side by
    side in one batch (so the first of several is not the one drawn alone with the seed).
    progress: a bar of the tokens drawn on stderr (when it is a terminal)."""
    try:  # a special token's text is that token (nanoGPT's sample.py allows <|endoftext|>: a new document)
        ids = tokenizer.encode_ids(prompt or "\n", allowed_special="all")
    except ValueError:
        if prompt not in ("", "\n"):
            raise
        ids = [0]  # the default "\n" is not in this corpus's vocabulary: start from its first token
    tokens = TokenSet("text", ids=torch.as_tensor(np.asarray(ids, dtype=np.int64)))  # longer than the context: generate slides its window
    device = model.device
    batch = collate([tokens] * (num_samples or 1)).to(device)  # (num_samples, N)
    g = torch.Generator(device).manual_seed(seed)
    with tqdm(total=n, desc="generate", unit="token", leave=False, disable=None if progress else True) as bar:
        def counted(logits, step, ids):  # (called once a step, on the host: no wait for the device)
            bar.update()
            return logits

        out = model.generate({"text": batch}, n, temperature=temperature, top_k=top_k, generator=g, logits_filter=counted)
    texts = [tokenizer.decode(row) for row in out.cpu()]  # (one copy from the device)
    return texts if num_samples is not None else texts[0]


# -- main -----------------------------------------------------------------------------------------
def run_text_lm(cfg: Config, recipe: str, build_data, build_model, resume: bool = False) -> dict:
    """Train a decoder LM on text: shared by gpt_char and gpt_bpe (which bring their own
    tokenizer and model builders)."""
    run_dir = resolve_run_dir(cfg, recipe)
    tokenizer = load_tokenizer(run_dir / "tokenizers" / "text") if resume else None
    resumed = resume and resumed_architecture(run_dir, {"text": tokenizer})  # (checked against the tokenizer before it encodes)
    tokenizer, train_set, val_set = build_data(cfg, tokenizer)
    set_seed(cfg.seed)
    # note: build_model may fill in sizes (gpt_bpe's init_from), so before run.json
    model = resumed or build_model(cfg, tokenizer)
    data = cfg.data or "the built-in corpus (data is empty)"
    held = text_fingerprint(train_set, val_set)
    if not resume:
        def files():
            tokenizer.save(run_dir / "tokenizers" / "text")
            record_data(run_dir, held)

        save_run_info(run_dir, recipe, cfg, files)
    else:
        check_same_data(run_dir, held, cfg.data or "the built-in corpus", "text (its windows, and the validation loss, come from it)",
                        made_here=not cfg.data)
    print(f"{recipe}: {len(train_set):,} training windows of {data}, vocabulary {tokenizer.vocab_size}, "
          f"{model.params_text()}, run dir {run_dir}")  # fmt: skip
    metrics = train(cfg, model, train_set, collate_examples, make_evaluate(cfg, val_set), run_dir, resume=resume)
    print(f"val_loss {metrics['val_loss']:.4f} nats/token")
    if cfg.sample_tokens:
        model.eval()
        text = sample(model.cpu(), tokenizer, "\n", cfg.sample_tokens, cfg.temperature, cfg.top_k, cfg.seed)
        print("--- sample ---\n" + text + "\n--------------")
    return metrics


def evaluate_text_lm(run_dir, build_data, device=None, data=None) -> dict:
    """The run's validation loss (the windows training evaluates), or with data= (a text file or a
    dataset: its validation split, else all of it) the mean loss over every non-overlapping window
    of that text, each token predicted once (`val_tokens` of them: the tail after the last whole
    window too, read with the block_size tokens before it)."""
    from .runs import load_for_eval
    from .train import EvalBatches

    cfg, model, toks, accelerator = load_for_eval(run_dir, device)
    if (data := scored_data(run_dir, data)) is None:
        _, _, val_set = build_data(cfg, toks["text"])
        return make_evaluate(cfg, val_set)(model, accelerator)
    cfg.data = data
    text, val = with_own_columns(read_text, cfg, ("text_column",), data)
    windows = text_windows(cfg, toks["text"], val if val is not None else text, stride=cfg.block_size, what=f"--data {data}")
    loss, scored = mean_loss(model, accelerator, EvalBatches(windows, collate_examples, cfg.batch_size), "evaluating"), len(windows) * cfg.block_size
    tail = len(windows.ids) - 1 - scored  # the targets after the last whole window: one more window, ending at the text's end,
    if tail > 0:  # scores them alone (its loss mask), weighted by their count
        last = next_token_set("text", windows.ids[-cfg.block_size - 1 :])
        last = TokenSet("text", ids=last.ids, targets=last.targets, loss_mask=torch.arange(cfg.block_size) >= cfg.block_size - tail)
        loss = (loss * scored + mean_loss(model, accelerator, [collate_examples([{"text": last}])]) * tail) / (scored + tail)
    return {"val_loss": loss, "val_tokens": scored + tail}


def main(cfg: Config, resume: bool = False) -> dict:
    return run_text_lm(cfg, "gpt_char", build_data, build_model, resume)


def evaluate(run_dir, device=None, data=None) -> dict:
    """The run's validation loss, or with data= (a text file or dataset) on that text (`evaluate_text_lm`)."""
    return evaluate_text_lm(run_dir, build_data, device, data)


def generate(run_dir, prompt: str, max_new_tokens: int = 300, temperature: float = 0.8, top_k: int | None = 200, seed: int = 0,
             device=None, num_samples: int | None = None) -> str | list[str]:  # fmt: skip
    """A continuation of `prompt` sampled from a run's last checkpoint on `device` (None = the CPU;
    a seed draws other samples on a GPU than on the CPU, as torch's generators do); with
    num_samples, a list of that many (`sample`)."""
    model, toks = load_trained(run_dir, device)
    return sample(model, toks["text"], prompt, max_new_tokens, temperature, top_k, seed, num_samples, progress=True)
