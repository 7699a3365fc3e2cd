"""Export parity: a model (and tokenizer) written by our export, loaded by the reference library
(transformers' GPT2LMHeadModel / WhisperForConditionalGeneration / AutoTokenizer, timm's
VisionTransformer), computes our outputs. The Whisper export of trained runs, through transformers'
speech-recognition pipeline: tests/test_whisper_folder.py."""

import json
import dataclasses
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from models import (HeadConfig, ModalityConfig, ModelConfig, MultimodalTransformer, TrunkConfig, gpt2_export, openai_whisper_export,
                    timm_vit_export, whisper_export, whisper_model_config)  # fmt: skip
from recipes import gpt_char, vit
from recipes.export import check_whisper_tokenizers, write_model
from tokenizers_mm import AudioTokenizer, BPETokenizer, CharTokenizer, TokenSet, collate
from tokenizers_mm.hf import PROBE as AWKWARD
from tokenizers_mm.hf import save_hf

transformers = pytest.importorskip("transformers")
timm = pytest.importorskip("timm")


def randomise(model: MultimodalTransformer) -> MultimodalTransformer:
    """Every weight random (type rows, biases and LayerNorms included), so nothing passes by being zero or one."""
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.1)
    return model.eval()


def write(folder, config: dict, sd: dict):
    folder.mkdir(parents=True, exist_ok=True)
    write_model(folder, config, sd)
    return folder


@pytest.mark.parametrize("activation, bias, tie", [("gelu", False, True), ("gelu_tanh", True, False)])
def test_gpt2_export_gives_our_logits_in_transformers(tmp_path, activation, bias, tie):
    torch.manual_seed(0)
    trunk = TrunkConfig(dim=32, depth=2, num_heads=4, bias=bias, activation=activation, mode="decoder", mlp_ratio=3.0)
    text = ModalityConfig("text", ["token"], 24, vocab_size=57)
    model = randomise(MultimodalTransformer(ModelConfig(trunk, {"text": text}, {"lm": HeadConfig("lm", "text", tie=tie)}, decoder_inputs=["text"])))
    config, sd = gpt2_export(model, {"<|endoftext|>": 56})
    ref = transformers.AutoModelForCausalLM.from_pretrained(write(tmp_path / "m", config, sd)).eval()
    assert type(ref).__name__ == "GPT2LMHeadModel" and ref.config.tie_word_embeddings == tie and ref.config.eos_token_id == 56
    import os

    from tokenizers_mm.base import current_umask

    for mask in (0o022, 0o077):  # the weights files get the umask's mode, as the JSON beside them (safetensors writes 0600)
        was = os.umask(mask)
        try:
            assert current_umask() == mask
            write(tmp_path / f"m{mask}", config, sd)
            model.save(tmp_path / f"ours{mask}")
        finally:
            os.umask(was)
        for path in (tmp_path / f"m{mask}" / "model.safetensors", tmp_path / f"ours{mask}" / "model.safetensors"):
            assert path.stat().st_mode & 0o777 == 0o666 & ~mask == (tmp_path / f"ours{mask}" / "config.json").stat().st_mode & 0o777
    ids = torch.randint(0, 57, (3, 24))
    with torch.no_grad():
        ours = model({"text": collate([TokenSet("text", ids=i) for i in ids])}).logits["lm"]
        torch.testing.assert_close(ref(ids).logits, ours, atol=1e-5, rtol=1e-5)
    prompt = collate([TokenSet("text", ids=ids[0, :5])])
    assert torch.equal(ref.generate(ids[:1, :5], max_new_tokens=10, do_sample=False, pad_token_id=0), model.generate({"text": prompt}, 10, temperature=0))


NUMBERS = " ".join(str(n) for n in np.random.default_rng(0).integers(0, 10**12, 3000))  # long digit runs


def tokenizer_cases():
    from pathlib import Path

    import whisper

    corpus = gpt_char.default_corpus()[:100_000]
    gpt2_file = Path(whisper.__file__).parent / "assets" / "gpt2.tiktoken"
    return {
        "gpt2 ranks": lambda: BPETokenizer.from_tiktoken_file(gpt2_file),
        "trained, gpt4 pattern": lambda: BPETokenizer.train([corpus, NUMBERS], 600, pattern="gpt4"),  # merges across 3-digit groups
        "characters": lambda: CharTokenizer.from_corpus(corpus + AWKWARD),
        "bytes": lambda: CharTokenizer(),
    }


@pytest.mark.parametrize("case", ["gpt2 ranks", "trained, gpt4 pattern", "characters", "bytes"])
def test_tokenizer_export_gives_our_ids_in_autotokenizer(tmp_path, case):
    pytest.importorskip("whisper")
    tok = tokenizer_cases()[case]()
    save_hf(tok, tmp_path / "tok")
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path / "tok")
    text = gpt_char.default_corpus()[200_000:230_000] + AWKWARD + NUMBERS[:3000]
    if case == "characters":
        text = "".join(c for c in text if c in tok.stoi)
    ours = [int(i) for i in tok.encode_ids(text)]
    assert hf.encode(text) == ours and hf.decode(ours) == text
    special = "a<|endoftext|>b" if case != "characters" else f"{text[0]}<|endoftext|>{text[1]}"
    assert hf.encode(special) == [int(i) for i in tok.encode_ids(special, allowed_special="all")]  # specials keep their ids
    assert hf.eos_token == "<|endoftext|>" and hf.model_max_length == tok.max_positions
    assert "token_type_ids" not in hf("a b")  # GPT-2 would add their embedding to every position


@pytest.mark.parametrize("pool, fc_norm", [("cls", False), ("mean", True)])
def test_timm_export_gives_our_logits_and_preprocessing(tmp_path, pool, fc_norm):
    torch.manual_seed(0)
    cfg = vit.Config(image_size=12, patch_size=4, channels=1, dim=32, depth=2, num_heads=4, pool=pool)
    tok = vit.make_tokenizer(cfg, [0.3], [0.2])
    model = vit.build_model(cfg, tok, 5)
    if fc_norm:  # timm's fc_norm: the LayerNorm after pooling instead of after the blocks
        c = model.config
        c.trunk.final_norm, c.heads["cls"].norm = False, True
        model = MultimodalTransformer(c)
    randomise(model)
    config, sd = timm_vit_export(model, tok, ["a", "b", "c", "d", "e"])
    ref = timm.create_model(f"local-dir:{write(tmp_path / 'vit', config, sd)}", pretrained=True).eval()
    x = torch.randn(4, 1, 12, 12)
    with torch.no_grad():
        torch.testing.assert_close(ref(x), model({"image": tok.tokens_batch(x)}).logits["cls"], atol=1e-5, rtol=1e-5)
    assert ref.pretrained_cfg["label_names"] == ["a", "b", "c", "d", "e"]
    # timm's eval transform from the exported config prepares a file's pixels as our tokenizer does
    data_config = timm.data.resolve_data_config({}, model=ref)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (30, 19), dtype=np.uint8))  # grey, 19 wide, 30 high
    theirs = timm.data.create_transform(**data_config)(image)
    torch.testing.assert_close(theirs, tok.preprocess(image), atol=1e-6, rtol=0)  # (both resize the PIL image in 8 bits)


def test_what_a_reference_cannot_express_is_refused(tmp_path):
    cfg = vit.Config(image_size=8, patch_size=4, channels=1, dim=16, depth=1, num_heads=2)
    tok = vit.make_tokenizer(cfg, [0.5], [0.5])
    model = vit.build_model(cfg, tok, 3)
    model.config.trunk.norm_eps = 1e-5
    with pytest.raises(ValueError, match="timm export: VisionTransformer needs LayerNorm eps=1e-06 \\(this model uses 1e-05\\)"):
        timm_vit_export(model, tok)
    model.config.trunk.norm_eps = 1e-6
    model.config.heads["cls"].pool = "mean"  # a CLS token and mean pooling (MAE's fine-tuning): both leave the CLS token out
    model = randomise(MultimodalTransformer(model.config)).eval()
    config, sd = timm_vit_export(model, tok)
    ref = timm.create_model(f"local-dir:{write(tmp_path / 'vit', config, sd)}", pretrained=True).eval()
    assert ref.global_pool == "avg" and ref.cls_token is not None
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(ref(x), model({"image": tok.tokens_batch(x)}).logits["cls"], atol=1e-5, rtol=1e-5)
    tokenless = vit.build_model(dataclasses.replace(cfg, pool="mean"), vit.make_tokenizer(dataclasses.replace(cfg, pool="mean"), [0.5], [0.5]), 3)
    tokenless.config.heads["cls"].pool = "cls"
    with pytest.raises(ValueError, match="timm export: VisionTransformer needs a CLS token for CLS pooling"):
        timm_vit_export(tokenless, tok)
    trunk = TrunkConfig(dim=16, depth=1, num_heads=2, mode="decoder")
    mixed = ModelConfig(trunk, {"text": ModalityConfig("text", ["token"], 8, vocab_size=9), "image": ModalityConfig.from_tokenizer(tok)},
                        {"lm": HeadConfig("lm", "text")}, decoder_inputs=["image", "text"], prefix_inputs=["image"])  # fmt: skip
    with pytest.raises(ValueError, match="GPT-2 export: GPT2LMHeadModel needs a text-only decoder .*; a causal decoder \\(not a prefix LM"):
        gpt2_export(MultimodalTransformer(mixed))
    from models import dt_model_config
    from recipes.export import kind_of

    dt = MultimodalTransformer(dt_model_config({"state_dim": 4, "act_dim": 2, "hidden_size": 16, "n_layer": 1, "n_head": 1, "max_ep_len": 20}))
    with pytest.raises(ValueError, match="Decision Transformer runs have no export: .* adds one position row to every token after its embed_ln"):
        kind_of(dt)


def test_whisper_export_gives_our_logits_in_transformers():
    """Every weight random — the key biases Whisper lacks and the type rows included — and
    WhisperForConditionalGeneration computes our logits (a key bias moves every score a query gives
    by the same amount, which softmax ignores)."""
    hf = {"vocab_size": 300, "num_mel_bins": 80, "d_model": 32, "encoder_layers": 2, "decoder_layers": 1, "encoder_attention_heads": 4,
          "decoder_attention_heads": 4, "encoder_ffn_dim": 64, "decoder_ffn_dim": 64, "max_source_positions": 50, "max_target_positions": 12}  # fmt: skip
    model = randomise(MultimodalTransformer(whisper_model_config(hf)))
    assert float(model.encoder.blocks[0].attn.qkv.bias.detach()[32:64].abs().min()) > 0  # the keys' part: not zero
    config, sd = whisper_export(model, {"<|endoftext|>": 298, "<|startoftranscript|>": 299})
    ref = transformers.WhisperForConditionalGeneration(transformers.WhisperConfig(**config)).eval()
    missing, unexpected = ref.load_state_dict(sd, strict=False)
    assert missing == ["proj_out.weight"] and not unexpected  # proj_out is tied to the token embedding
    mel, ids = torch.randn(2, 100, 80), torch.randint(0, 300, (2, 12))
    with torch.no_grad():
        ours = model({"audio": collate([TokenSet("audio", values=m) for m in mel]), "text": collate([TokenSet("text", ids=i) for i in ids])})
        theirs = ref(input_features=mel.transpose(1, 2), decoder_input_ids=ids).logits
    torch.testing.assert_close(ours.logits["lm"], theirs, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="Whisper export: the text tokenizer lacks <\\|startoftranscript\\|>"):
        whisper_export(model, {"<|endoftext|>": 298})
    with pytest.raises(ValueError, match="openai-whisper export: openai-whisper's MLP is 4 × the width \\(this model's: 64 for width 32\\)"):
        openai_whisper_export(model, {"<|endoftext|>": 298, "<|startoftranscript|>": 299})
    # openai-whisper's own model, its MLP 4 × the width: the same logits
    wm = pytest.importorskip("whisper.model")
    model = randomise(MultimodalTransformer(whisper_model_config({**hf, "encoder_ffn_dim": 128, "decoder_ffn_dim": 128})))
    dims, sd = openai_whisper_export(model, {"<|endoftext|>": 298, "<|startoftranscript|>": 299})
    ref = wm.Whisper(wm.ModelDimensions(**dims)).eval()
    ref.load_state_dict(sd)  # strict: every tensor named as openai-whisper names it
    with torch.no_grad():
        ours = model({"audio": collate([TokenSet("audio", values=m) for m in mel]), "text": collate([TokenSet("text", ids=i) for i in ids])})
        torch.testing.assert_close(ours.logits["lm"], ref(mel.transpose(1, 2), ids), atol=1e-4, rtol=1e-4)
    # runs that read unpadded utterances (whisper_digits) would not compute what they learned in Whisper's padded window
    whisper_digits_toks = {"audio": AudioTokenizer(chunk=False, max_frames=800), "text": CharTokenizer(chars="ab")}
    with pytest.raises(ValueError, match="Whisper export: this run reads each utterance unpadded; Hugging Face's Whisper pads"):
        check_whisper_tokenizers(whisper_digits_toks)
    with pytest.raises(ValueError, match="Whisper export: this run reads each utterance unpadded; openai-whisper pads"):
        check_whisper_tokenizers(whisper_digits_toks, "openai-whisper")
    with pytest.raises(ValueError, match="WhisperTokenizer is byte-level BPE with Whisper's special tokens"):
        check_whisper_tokenizers({**whisper_digits_toks, "audio": AudioTokenizer()})


def test_mmtok_export_of_trained_runs(tmp_path, capsys, monkeypatch):
    """A gpt_bpe run (its trained BPE) and a vit_digits run (its class names), through the command line."""
    from recipes import gpt_bpe, vit_digits
    from recipes.cli import main

    tiny = dict(max_steps=2, eval_every=2, ckpt_every=2, log_every=1, warmup_steps=1, cpu=True)
    text = tmp_path / "corpus.txt"
    text.write_text(gpt_char.default_corpus()[:60_000])
    gpt_bpe.main(gpt_bpe.Config(data=str(text), vocab_size=300, dim=32, depth=1, num_heads=2, block_size=16, sample_tokens=0,
                                run_dir=str(tmp_path / "bpe"), **tiny))  # fmt: skip
    assert main(["export", str(tmp_path / "bpe"), str(tmp_path / "bpe_hf")]) == 0
    out = capsys.readouterr().out
    assert "gpt_bpe run as transformers GPT2LMHeadModel" in out and "AutoTokenizer.from_pretrained" in out
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "bpe_hf")
    ours = BPETokenizer.load(tmp_path / "bpe" / "tokenizers" / "text")
    assert hf_tok.encode(AWKWARD) == [int(i) for i in ours.encode_ids(AWKWARD)]
    # transformers' pipeline with its defaults on a 16-position model: generation stops at the table (it asked 256 new tokens)
    made = transformers.pipeline("text-generation", model=str(tmp_path / "bpe_hf"), device="cpu")("The", do_sample=False)[0]["generated_text"]
    assert made.startswith("The") and len(hf_tok.encode(made)) <= 16
    # the export starts a run again (init_from): its tokenizer.json read back, its exact GELU kept: the same loss
    gpt_bpe.main(gpt_bpe.Config(data=str(text), init_from=str(tmp_path / "bpe_hf"), block_size=16, sample_tokens=0,
                                run_dir=str(tmp_path / "again"), **{**tiny, "max_steps": 0}))  # fmt: skip
    assert gpt_bpe.evaluate(tmp_path / "again")["val_loss"] == pytest.approx(gpt_bpe.evaluate(tmp_path / "bpe")["val_loss"], abs=1e-5)

    vit_digits.main(vit_digits.Config(dim=32, depth=1, num_heads=2, run_dir=str(tmp_path / "vit"), **tiny))
    assert main(["export", str(tmp_path / "vit"), str(tmp_path / "vit_timm")]) == 0
    assert "timm VisionTransformer" in capsys.readouterr().out
    ref = timm.create_model(f"local-dir:{tmp_path / 'vit_timm'}", pretrained=True)
    assert ref.pretrained_cfg["label_names"] == [str(i) for i in range(10)] and ref.num_classes == 10
    assert main(["export", str(tmp_path / "vit"), str(tmp_path / "vit_timm")]) == 2  # refuses to write over an export
    assert "vit_timm exists and is not an empty folder" in capsys.readouterr().err
    (tmp_path / "here").mkdir()  # "." when it is an empty folder (it made its temporary folder inside OUT and failed)
    monkeypatch.chdir(tmp_path / "here")
    assert main(["export", str(tmp_path / "vit"), "."]) == 0 and (tmp_path / "here" / "model.safetensors").is_file()
    capsys.readouterr()
    import recipes.export as export_module  # another export filling OUT while this one writes: refused, theirs kept

    real = export_module.check_timm

    def meanwhile(*args):
        (tmp_path / "vit_race").mkdir()
        (tmp_path / "vit_race" / "theirs.txt").write_text("x")
        return real(*args)

    monkeypatch.setattr(export_module, "check_timm", meanwhile)
    assert main(["export", str(tmp_path / "vit"), str(tmp_path / "vit_race")]) == 2
    monkeypatch.undo()
    assert "vit_race appeared while exporting (another export?)" in capsys.readouterr().err
    assert [p.name for p in (tmp_path / "vit_race").iterdir()] == ["theirs.txt"]
    assert not list(tmp_path.glob(".*partial"))
    import errno  # a read-only file system: named by the folder meant, not its temporary

    monkeypatch.setattr(export_module.Path, "mkdir", lambda *a, **k: (_ for _ in ()).throw(OSError(errno.EROFS, "Read-only file system")))
    assert main(["export", str(tmp_path / "vit"), str(tmp_path / "ro")]) == 2
    monkeypatch.undo()
    assert capsys.readouterr().err.strip() == f"mmtok: error: export: cannot write {tmp_path / 'ro'}: Read-only file system"
    full = lambda *a, **k: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left on device"))  # noqa: E731  # (as a file closes)
    monkeypatch.setattr(export_module, "write_json", full)  # a disk full as config.json closes: its error named no file, nor did the line
    assert main(["export", str(tmp_path / "vit"), str(tmp_path / "full")]) == 2
    monkeypatch.undo()
    assert capsys.readouterr().err.strip() == f"mmtok: error: export: cannot write {tmp_path / 'full'}: No space left on device"
    assert not (tmp_path / "full").exists() and not list(tmp_path.glob(".*partial"))
    # what an export killed mid-write left (its process gone) goes with the next export to that OUT; a live one's stays
    from recipes.export import HOST

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale, live = tmp_path / f".vit_again.{dead.pid}@{HOST}.0a1b.partial", tmp_path / f".vit_again.{os.getpid()}@{HOST}.2c3d.partial"
    for leftover in (stale, live):
        leftover.mkdir()
        (leftover / "model.safetensors").write_bytes(b"half")
    assert main(["export", str(tmp_path / "vit"), str(tmp_path / "vit_again")]) == 0
    assert not stale.exists() and live.exists() and (tmp_path / "vit_again" / "config.json").is_file()
    # an export killed while it filled an existing empty folder: the files its marker lists go with the next export there
    filled = tmp_path / "vit_filled"
    filled.mkdir()
    (filled / "config.json").write_text("{")
    (filled / f".vit_filled.{dead.pid}@{HOST}.0a1b.filling").write_text("config.json\nmodel.safetensors\n")
    assert main(["export", str(tmp_path / "vit"), str(filled)]) == 0, capsys.readouterr().err
    assert not list(filled.glob(".*")) and json.loads((filled / "config.json").read_text())["num_classes"] == 10
    (filled / "notes.txt").write_text("mine")  # beside a file the killed export did not list, nothing is removed: OUT is not empty
    marker = filled / f".vit_filled.{dead.pid}@{HOST}.0a1b.filling"
    marker.write_text("config.json\nmodel.safetensors\n")
    assert main(["export", str(tmp_path / "vit"), str(filled)]) == 2 and marker.exists() and (filled / "config.json").exists()
    assert "vit_filled exists and is not an empty folder" in capsys.readouterr().err
    capsys.readouterr()
    (tmp_path / "afile").write_text("x")  # OUT inside a file: said so (mkdir's "File exists" read as OUT existing)
    assert main(["export", str(tmp_path / "vit"), str(tmp_path / "afile" / "out")]) == 2
    assert capsys.readouterr().err == f"mmtok: error: export: {tmp_path / 'afile'} is not a folder; out cannot be made inside it\n"
    assert main(["export", str(tmp_path / "vit"), ""]) == 2  # (an unset shell variable: not the current folder)
    assert "export: OUT is an empty string" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "vit"), "/"]) == 2  # (a StopIteration traceback)
    assert capsys.readouterr().err == "mmtok: error: export: / is the file system's root; give the path of a new folder\n"
    for inside in ("tokenizers/hf", "checkpoints/step-9999999", "checkpoints/step-0000004/hf"):  # read as the run's, or pruned
        assert main(["export", str(tmp_path / "vit"), str(tmp_path / "vit" / inside)]) == 2
        assert f"is inside the run's {inside.split('/')[0]}/ folder, which the run manages" in capsys.readouterr().err
        assert not (tmp_path / "vit" / inside).exists()
    monkeypatch.setattr(export_module, "check_timm", lambda *a: (_ for _ in ()).throw(ValueError("refused late")))
    assert main(["export", str(tmp_path / "vit"), str(tmp_path / "np1" / "np2" / "out")]) == 2  # the folders made for it go too
    monkeypatch.undo()
    assert "refused late" in capsys.readouterr().err and not (tmp_path / "np1").exists()


def test_a_tokenizer_json_that_encodes_otherwise_is_refused(tmp_path, monkeypatch):
    """save_hf encodes a probe text with the written file: a different split pattern is caught."""
    import tokenizers_mm.hf as hf

    tok = BPETokenizer.train([gpt_char.default_corpus()[:50_000]], 400, pattern="gpt4")
    other = BPETokenizer(tok.ranks, pattern="gpt2", specials=tok.specials)  # same vocabulary, GPT-2's split
    build = hf.to_hf
    monkeypatch.setattr(hf, "to_hf", lambda t, *plain: build(other, *plain))
    with pytest.raises(ValueError, match="tokenizer.json encodes the probe text otherwise than the run's tokenizer \\(from token \\d+"):
        save_hf(tok, tmp_path / "tok")
    monkeypatch.undo()
    # a pattern of one's own whose \w reads "²" as a word character in Oniguruma (HF, and our trainer) but not in tiktoken: the
    # one merge "x²" that encoding never makes is a token the exported file would make (a sample of every 7th token missed it)
    own = BPETokenizer.train([" x² " * 300 + gpt_char.default_corpus()[:30_000]], 300, pattern=r"\w+|\s+|[^\w\s]+")
    assert "x²".encode() in own.ranks
    with pytest.raises(ValueError, match="tokenizer.json encodes the probe text otherwise than the run's tokenizer"):
        save_hf(own, tmp_path / "own")
