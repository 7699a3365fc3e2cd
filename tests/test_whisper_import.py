"""Whisper import parity: our encoder-decoder on converted Hugging Face Whisper weights."""

import pytest
import torch

from models import MultimodalTransformer, load_hf_whisper, whisper_model_config
from models.embedders import sinusoids
from tokenizers_mm import TokenSet, collate

transformers = pytest.importorskip("transformers")


def small_whisper(**kw):
    args = dict(vocab_size=100, num_mel_bins=80, d_model=32, encoder_layers=2, decoder_layers=3, encoder_attention_heads=4, decoder_attention_heads=4,
                encoder_ffn_dim=64, decoder_ffn_dim=64, max_source_positions=50, max_target_positions=32, pad_token_id=0, bos_token_id=1,
                eos_token_id=2, decoder_start_token_id=1)  # fmt: skip
    cfg = transformers.WhisperConfig(**{**args, **kw})
    torch.manual_seed(0)
    hf = transformers.WhisperForConditionalGeneration(cfg).eval()
    with torch.no_grad():  # non-trivial biases and norms
        for n, p in hf.named_parameters():
            if n.endswith("bias") or "norm" in n:
                p.normal_(0, 0.1)
            elif "embed_tokens" in n:
                p.normal_(0, 0.5)  # logits well away from zero
    return cfg, hf


@pytest.mark.parametrize("n_mels", [80, 128])
def test_logits_equal_hf_whisper(n_mels):
    cfg, hf = small_whisper(**({} if n_mels == 80 else {"num_mel_bins": 128}))
    ours = load_hf_whisper(MultimodalTransformer(whisper_model_config(cfg.to_dict())), hf.state_dict()).eval()
    feats = torch.randn(2, n_mels, 100)  # (B, n_mels, 2 * max_source_positions)
    ids = torch.randint(0, 100, (2, 7))
    ref = hf(input_features=feats, decoder_input_ids=ids).logits
    inputs = {"audio": collate([TokenSet("audio", values=f.T) for f in feats]), "text": collate([TokenSet("text", ids=i) for i in ids])}
    got = ours(inputs).logits["lm"]
    assert got.shape == ref.shape == (2, 7, 100) and ref.abs().max() > 0.1
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)
    # greedy decoding with the KV cache agrees with the reference's generate, token for token
    start = torch.tensor([[1]])
    hf_out = hf.generate(input_features=feats[:1], decoder_input_ids=start, max_new_tokens=8, do_sample=False, suppress_tokens=None,
                         begin_suppress_tokens=None)  # fmt: skip
    prompt = {"audio": collate([TokenSet("audio", values=feats[0].T)]), "text": collate([TokenSet("text", ids=start[0])])}
    ours_out = ours.generate(prompt, 8, temperature=0)
    assert torch.equal(ours_out[:, -hf_out.shape[1] :], hf_out[:, -8:]) and ours_out.shape == (1, 9)  # HF returns the new tokens


def test_sinusoids_equal_whisper():
    """Whisper's sinusoidal positions, and the table a model built from scratch starts from (the
    generic N(0, 0.02) init of embedding tables must not overwrite it)."""
    whisper_model = pytest.importorskip("whisper.model")
    torch.testing.assert_close(sinusoids(50, 32), whisper_model.sinusoids(50, 32))
    cfg, _ = small_whisper()
    fresh = MultimodalTransformer(whisper_model_config(cfg.to_dict()))
    torch.testing.assert_close(fresh.embedders["audio"].pos.weight.detach(), whisper_model.sinusoids(50, 32))


def test_audio_tokens_feed_the_stem_with_padding():
    from tokenizers_mm import AudioTokenizer

    cfg, hf = small_whisper()
    ours = load_hf_whisper(MultimodalTransformer(whisper_model_config(cfg.to_dict())), hf.state_dict()).eval()
    tok = AudioTokenizer(chunk=False, max_frames=100)
    batch = tok.encode_batch([0.1 * torch.randn(9600), 0.1 * torch.randn(16000)])  # 60 and 100 frames
    memory, mask, spans = ours.encode({"audio": batch})
    assert memory.shape == (2, 50, 32) and mask.sum(1).tolist() == [30, 50] and spans == {"audio": (0, 50)}
    # the unpadded sample's encoding matches HF's encoder on the same frames
    ref = hf.model.encoder(batch.values[1:].transpose(1, 2)).last_hidden_state
    torch.testing.assert_close(memory[1:], ref, atol=1e-4, rtol=1e-4)


def test_openai_whisper_checkpoint_loads_without_unpickling(tmp_path):
    """A checkpoint saved as openai-whisper saves its own (`{"dims", "model_state_dict"}`, fp16) gives
    the reference model's logits."""
    import dataclasses

    wm = pytest.importorskip("whisper.model")
    from models import load_openai_whisper

    dims = wm.ModelDimensions(n_mels=80, n_audio_ctx=50, n_audio_state=32, n_audio_head=4, n_audio_layer=2, n_vocab=100,
                              n_text_ctx=16, n_text_state=32, n_text_head=4, n_text_layer=2)  # fmt: skip
    torch.manual_seed(0)
    ref = wm.Whisper(dims).eval()
    with torch.no_grad():
        for n, p in ref.named_parameters():
            p.normal_(0, 0.5 if "token_embedding" in n else 0.1)
    ref.half().float()  # the values an fp16 checkpoint holds
    torch.save({"dims": dataclasses.asdict(dims), "model_state_dict": ref.half().state_dict()}, tmp_path / "tiny.pt")
    ref.float()
    ours = load_openai_whisper(tmp_path / "tiny.pt").eval()
    mel = torch.randn(2, 80, 100)
    ids = torch.randint(0, 100, (2, 6))
    with torch.no_grad():
        want = ref(mel, ids)
        inputs = {"audio": collate([TokenSet("audio", values=m.T) for m in mel]), "text": collate([TokenSet("text", ids=i) for i in ids])}
        got = ours(inputs).logits["lm"]
    assert want.abs().max() > 0.1
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="not an openai-whisper checkpoint"):
        torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
        load_openai_whisper(tmp_path / "other.pt")
    # dims the weights do not bear out are refused before a model is built from them
    for change, message in (({"n_text_layer": 5000}, r"does not match its dims \(89 tensors; 2 \+ 5000 layers take 120041\)"),
                            ({"n_text_layer": 3}, r"\(89 tensors; 2 \+ 3 layers take 113: missing \['decoder.blocks.2.attn.key.weight', "),
                            ({"n_audio_state": 4096, "n_text_state": 4096}, r"dims say encoder.conv1.weight is \(4096, 80, 3\)"),
                            ({"n_mels": "80"}, r"n_mels='80': dims must give every ModelDimensions field as a positive integer")):  # fmt: skip
        torch.save({"dims": {**dataclasses.asdict(dims), **change}, "model_state_dict": ref.state_dict()}, tmp_path / "big.pt")
        with pytest.raises(ValueError, match=message):
            load_openai_whisper(tmp_path / "big.pt")


def test_checkpoints_with_weights_the_import_has_no_place_for_are_refused():
    """A variant's extra weights (here a q/k norm) and a checkpoint deeper than the model are
    refused instead of loading and giving other logits."""
    cfg, hf = small_whisper()
    model = lambda **kw: MultimodalTransformer(whisper_model_config({**cfg.to_dict(), **kw}))  # noqa: E731
    extra = {**hf.state_dict(), "model.encoder.layers.0.self_attn.q_norm.weight": torch.ones(8)}
    with pytest.raises(ValueError, match=r"no place for \['encoder.layers.0.self_attn.q_norm.weight'\]"):
        load_hf_whisper(model(), extra)
    with pytest.raises(ValueError, match="more blocks than the model's encoder 2, decoder 2"):
        load_hf_whisper(model(decoder_layers=2), hf.state_dict())
    big = torch.zeros(100_000)  # one tensor under every projection's name: refused before q / k / v are fused (copied)
    shared = {k: big if k.endswith("proj.weight") else v for k, v in hf.state_dict().items()}
    with pytest.raises(ValueError, match="holds more weights than the model"):
        load_hf_whisper(model(), shared)
