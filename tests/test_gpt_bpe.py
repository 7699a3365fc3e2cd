"""gpt_bpe end to end: its own tokenizer, and fine-tuning GPT-2 weights held in a local folder."""

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from recipes.cli import main as cli_main
from recipes.gpt_bpe import Config, build_data, build_model, main
from recipes.runs import load_trained
from tokenizers_mm import BPETokenizer, TokenSet, collate
from tokenizers_mm.text_bpe import split_pattern, write_gpt2_files

TINY = dict(dim=32, depth=2, num_heads=2, block_size=32, batch_size=8, eval_batches=2, log_every=5, sample_tokens=10, max_steps=10,
            eval_every=10, warmup_steps=2, cpu=True)  # fmt: skip
SHAPELESS = {k: v for k, v in TINY.items() if k not in ("dim", "depth", "num_heads")}  # for a model whose weights set its shape


def test_trains_its_tokenizer_and_generates(tmp_path, small_text):
    cfg = Config(data=str(small_text), vocab_size=400, run_dir=str(tmp_path / "run"), **{**TINY, "max_steps": 30, "eval_every": 30})
    metrics = main(cfg)
    model, toks = load_trained(tmp_path / "run")
    tok = toks["text"]
    assert metrics["val_loss"] < math.log(tok.vocab_size) - 0.25  # it learned: untrained, the loss is ln(vocabulary) (6.0 at step 0; 5.59 here)
    assert isinstance(tok, BPETokenizer) and tok.vocab_size <= 400 and model.config.modalities["text"].vocab_size == tok.vocab_size
    again = Config(data=str(small_text), tokenizer=str(tmp_path / "run" / "tokenizers" / "text"), **TINY)
    assert build_data(again)[0].ranks == tok.ranks  # a saved tokenizer is reused, not retrained


def test_init_from_local_gpt2_folder(tmp_path, small_text, capsys):
    transformers = pytest.importorskip("transformers")
    tok = BPETokenizer.train([small_text.read_text()], vocab_size=300)
    folder = tmp_path / "gpt2"
    hf_cfg = transformers.GPT2Config(vocab_size=tok.vocab_size, n_positions=64, n_embd=48, n_layer=2, n_head=4, bos_token_id=0, eos_token_id=0)
    hf = transformers.GPT2LMHeadModel(hf_cfg).eval()
    hf.save_pretrained(folder, safe_serialization=True)
    write_gpt2_files(tok.ranks, tok.specials, folder)
    transformers.GPT2TokenizerFast.from_pretrained(folder).save_pretrained(folder)  # (vocab.json + merges.txt: read by from_pretrained)
    assert "format" not in json.loads((folder / "tokenizer.json").read_text())  # HF's own tokenizer.json, beside vocab + merges

    with pytest.raises(ValueError, match=r"dim=32: init_from \S+ has dim 48 \(its weights set the model's shape: leave dim out\)"):
        build_model(Config(data=str(small_text), init_from=str(folder), **TINY), tok)
    with pytest.raises(ValueError, match=r"block_size=128 exceeds init_from \S+'s 64 positions: give block_size=64 or less"):
        build_model(Config(data=str(small_text), init_from=str(folder), **{**SHAPELESS, "block_size": 128}), tok)
    cfg = Config(data=str(small_text), init_from=str(folder), **{**SHAPELESS, "max_steps": 0, "flash": False})
    tokenizer, _, _ = build_data(cfg)
    assert tokenizer.ranks == tok.ranks
    model = build_model(cfg, tokenizer).eval()
    assert (cfg.dim, cfg.depth, cfg.bias, cfg.activation) == (48, 2, True, "gelu_tanh") and not model.config.trunk.flash  # flash: the run's
    assert "gpt_bpe: the model's shape comes from init_from " in (out := capsys.readouterr().err) and "(dim=128 -> 48" in out  # (the defaults replaced)
    ids = torch.randint(0, tok.vocab_size, (2, 32))
    ours = model({"text": collate([TokenSet("text", ids=i) for i in ids])}).logits["lm"]
    torch.testing.assert_close(ours, hf(ids).logits, atol=1e-4, rtol=1e-4)  # starts exactly from GPT-2

    run = tmp_path / "ft"
    main(Config(data=str(small_text), init_from=str(folder), run_dir=str(run), **{**SHAPELESS, "lr": 1e-4}))
    saved = json.loads((run / "run.json").read_text())["config"]
    assert saved["dim"] == 48 and saved["pattern"] == "gpt2"
    from recipes.runs import make_config

    make_config("gpt_bpe", [f"{k}={v}" for k, v in saved.items()])  # run.json's config is one a new run takes
    ckpt = sorted((run / "checkpoints").glob("step-*"))[-1]
    assert load_file(str(ckpt / "model.safetensors"))["embedders.text.tok.weight"].shape == (tok.vocab_size, 48)
    (folder / "vocab.json").unlink()  # transformers 5 saves GPT-2's tokenizer as tokenizer.json alone: read the same
    (folder / "merges.txt").unlink()
    cfg = Config(data=str(small_text), init_from=str(folder), **{**SHAPELESS, "max_steps": 0})
    assert build_data(cfg)[0].ranks == tok.ranks and build_data(cfg)[0].specials == tok.specials
    llama = tmp_path / "llama"  # another architecture's folder: named, not a KeyError
    llama.mkdir()
    (llama / "model.safetensors").write_bytes((folder / "model.safetensors").read_bytes())
    (llama / "config.json").write_text(json.dumps({"model_type": "llama", "vocab_size": tok.vocab_size, "hidden_size": 48}))
    with pytest.raises(ValueError, match=r"init_from \S+llama: not a GPT-2 config \(model_type 'llama'\); expected a transformers GPT2LMHeadModel"):
        build_model(Config(data=str(small_text), init_from=str(llama), **TINY), tokenizer)
    damaged = tmp_path / "damaged"  # weights cut short (a download that stopped): one line naming the file
    damaged.mkdir()
    (damaged / "config.json").write_text((folder / "config.json").read_text())
    (damaged / "model.safetensors").write_bytes((folder / "model.safetensors").read_bytes()[:1000])
    with pytest.raises(ValueError, match=r"init_from \S+damaged: \S+model.safetensors is corrupt or truncated"):
        build_model(Config(data=str(small_text), init_from=str(damaged), **SHAPELESS), tokenizer)
    folder.rename(tmp_path / "moved")  # the checkpoint holds every weight: resume reads its architecture, not init_from
    assert cli_main(["resume", str(run), "max_steps=12"]) == 0, capsys.readouterr().err[-2000:]
    assert sorted((run / "checkpoints").glob("step-*"))[-1].name == "step-0000012"


def test_a_tokenizer_given_keeps_its_pattern_and_a_large_vocab_size_is_what_the_text_gives(tmp_path, small_text, capsys):
    from recipes.config import ConfigError
    from tokenizers_mm import CharTokenizer

    tok = BPETokenizer.train([small_text.read_text()], vocab_size=300)
    tok.save(tmp_path / "bpe")
    cfg = Config(data=str(small_text), tokenizer=str(tmp_path / "bpe"), **TINY)
    assert build_data(cfg)[0].ranks == tok.ranks and cfg.pattern == "gpt2"
    with pytest.raises(ConfigError, match=r"pattern=gpt4: tokenizer=\S+bpe splits text with its own pattern \(gpt2\); leave pattern out"):
        build_data(Config(data=str(small_text), tokenizer=str(tmp_path / "bpe"), pattern="gpt4", **TINY))
    write_gpt2_files(tok.ranks, tok.specials, tmp_path / "gpt2files")  # GPT-2's files split as GPT-2 does: another pattern gave other ids
    with pytest.raises(ConfigError, match=r"pattern=gpt4: tokenizer=\S+gpt2files is a GPT-2 tokenizer \(vocab.json \+ merges.txt\), which splits"):
        build_data(Config(data=str(small_text), tokenizer=str(tmp_path / "gpt2files"), pattern="gpt4", **TINY))
    from tokenizers_mm.hf import save_hf  # beside Hugging Face's tokenizer.json (as Qwen2's folders): its pattern, as AutoTokenizer reads it

    gpt4 = BPETokenizer.train([small_text.read_text()], vocab_size=300, pattern="gpt4")
    save_hf(gpt4, tmp_path / "qwenlike")
    write_gpt2_files(gpt4.ranks, gpt4.specials, tmp_path / "qwenlike")
    assert build_data(Config(data=str(small_text), tokenizer=str(tmp_path / "qwenlike"), **TINY))[0].pattern == split_pattern("gpt4")
    CharTokenizer.from_corpus("abc").save(tmp_path / "chars")
    with pytest.raises(ValueError, match=r"holds a 'text_char' tokenizer, expected BPETokenizer"):
        build_data(Config(data=str(small_text), tokenizer=str(tmp_path / "chars"), **TINY))
    big = Config(data=str(small_text), vocab_size=50_000, **TINY)
    tokenizer = build_data(big)[0]
    assert big.vocab_size == tokenizer.vocab_size < 50_000  # (run.json records the vocabulary the run has)
    assert "vocab_size=50,000: the training text ran out of pairs to merge at" in capsys.readouterr().out


def test_training_leaves_the_special_tokens_text_unmerged():
    """<|endoftext|> in the training text (TinyStories' separator) encodes as one token: merges
    of its pieces would never be used, so training cuts it out."""
    text = "Once upon a time there was a cat.<|endoftext|>" * 50
    tok = BPETokenizer.train([text], 300)
    assert not [k for k in tok.ranks if any(p in k for p in (b"<|", b"|>", b"endoftext"))]
    assert tok.decode(tok.encode_ids(text, allowed_special="all")) == text


def test_init_from_refuses_pickles(tmp_path, small_text):
    folder = tmp_path / "gpt2"
    folder.mkdir()
    (folder / "pytorch_model.bin").write_bytes(b"\x80\x04pickle")
    cfg = Config(data=str(small_text), init_from=str(folder), **TINY)
    with pytest.raises(FileNotFoundError, match="never loaded"):
        build_model(cfg, BPETokenizer.train(["abc"], 260))
    with pytest.raises(FileNotFoundError, match=r"init_from=.*gpt2: expected a Hugging Face GPT-2 folder: config.json, model.safetensors, "):
        build_data(cfg)  # the tokenizer comes from init_from too, and is named so
    cfg.tokenizer = str(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="tokenizer=.*nowhere: expected .*; .*nowhere does not exist"):
        build_data(cfg)


def test_vocab_size_beside_a_given_tokenizer_is_refused(tmp_path, small_text):
    """vocab_size sizes the tokenizer trained on the corpus; with tokenizer= or init_from= (which bring
    their own vocabulary) it would be ignored, so another value than the default is refused."""
    from recipes.config import ConfigError
    from recipes.runs import make_config

    tok = tmp_path / "tok"
    BPETokenizer.train([small_text.read_text()], vocab_size=300).save(tok)
    with pytest.raises(ConfigError, match=r"vocab_size=1000 sizes a tokenizer trained on the corpus; tokenizer=.*tok brings its own"):
        make_config("gpt_bpe", [f"data={small_text}", f"tokenizer={tok}", "vocab_size=1000"])
    make_config("gpt_bpe", [f"data={small_text}", f"tokenizer={tok}"])  # alone: fine
