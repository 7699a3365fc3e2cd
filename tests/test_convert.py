"""Weight import parity: our model on converted weights equals the reference's logits."""

import pytest
import torch

from models import MultimodalTransformer, gpt2_model_config, load_gpt2
from tokenizers_mm import TokenSet, collate

transformers = pytest.importorskip("transformers")


@pytest.mark.parametrize("n_inner, n_positions", [(None, 32), (48, 64)])
def test_gpt2_logits_equal_hf(n_inner, n_positions):
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=101, n_positions=n_positions, n_embd=32, n_layer=3, n_head=4, n_inner=n_inner,
                                  bos_token_id=0, eos_token_id=0)  # fmt: skip
    hf = transformers.GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():  # random, non-trivial LayerNorm and bias values
        for name, p in hf.named_parameters():
            if name.endswith("bias") or "ln" in name:
                p.normal_(0, 0.1)
    ours = load_gpt2(MultimodalTransformer(gpt2_model_config(cfg.to_dict())), hf.state_dict()).eval()
    ids = torch.randint(0, 101, (3, 29))
    got = ours({"text": collate([TokenSet("text", ids=i) for i in ids])}).logits["lm"]
    torch.testing.assert_close(got, hf(ids).logits, atol=1e-4, rtol=1e-4)
    # greedy generation agrees token for token with the reference's
    ref = hf.generate(ids[:1, :5], max_new_tokens=10, do_sample=False, pad_token_id=0)
    assert torch.equal(ours.generate({"text": collate([TokenSet("text", ids=ids[0, :5])])}, 10, temperature=0), ref)


def test_gpt2_shape_mismatch_is_named():
    cfg = transformers.GPT2Config(vocab_size=50, n_positions=16, n_embd=32, n_layer=1, n_head=4)
    hf = transformers.GPT2LMHeadModel(cfg)
    wrong = gpt2_model_config({**cfg.to_dict(), "vocab_size": 60})
    with pytest.raises(ValueError, match="embedders.text.tok.weight has shape \\(50, 32\\), the model expects \\(60, 32\\)"):
        load_gpt2(MultimodalTransformer(wrong), hf.state_dict())
    deeper = gpt2_model_config({**cfg.to_dict(), "n_layer": 2})  # a checkpoint with fewer blocks: named, not a bare KeyError
    with pytest.raises(ValueError, match=r"GPT-2 import: the checkpoint lacks h\.1\.ln_1\.weight \(the model has 2 blocks\)"):
        load_gpt2(MultimodalTransformer(deeper), hf.state_dict())


@pytest.mark.parametrize("dim, hidden", [(752, 3072), (176, 960), (368, 832), (768, 3072)])
def test_an_imported_mlp_width_survives_its_ratio(dim, hidden):
    """Imports give the MLP width as a ratio (hidden / dim); the block gets the width back, where
    truncating the float product made it one short (3072 / 752 * 752 = 3071.99...)."""
    from models.blocks import Block, mlp_width
    from models.export import timm_mlp_ratio

    assert Block(dim, 8, mlp_ratio=hidden / dim).mlp.fc.out_features == hidden == mlp_width(dim, hidden / dim)  # the exports' width too
    assert int(dim * timm_mlp_ratio(dim, hidden / dim)) == hidden  # what timm builds from the exported ratio


def test_gpt2_and_whisper_variants_without_an_equivalent_are_refused():
    """Settings the import would silently get wrong are refused: an untied head, other attention
    scaling, a checkpoint deeper than the model (they used to load and give other logits)."""
    from models import whisper_model_config
    from models.convert import dt_model_config

    base = transformers.GPT2Config(vocab_size=50, n_positions=16, n_embd=32, n_layer=2, n_head=4).to_dict()
    for change, message in (({"tie_word_embeddings": False}, "untied LM head"), ({"scale_attn_weights": False}, "attention scaled"),
                            ({"scale_attn_by_inverse_layer_idx": True}, "attention scaled")):  # fmt: skip
        with pytest.raises(ValueError, match=message):
            gpt2_model_config({**base, **change})
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(**base))
    one_block = MultimodalTransformer(gpt2_model_config({**base, "n_layer": 1}))
    with pytest.raises(ValueError, match="more blocks than the model's 1"):
        load_gpt2(one_block, hf.state_dict())
    untied = {**hf.state_dict(), "lm_head.weight": torch.randn(50, 32)}
    with pytest.raises(ValueError, match="lm_head.weight differs from wte.weight"):
        load_gpt2(MultimodalTransformer(gpt2_model_config(base)), untied)
    whisper = transformers.WhisperConfig(tie_word_embeddings=False).to_dict()
    with pytest.raises(ValueError, match="untied output layer"):
        whisper_model_config(whisper)
    dt = transformers.DecisionTransformerConfig(state_dim=3, act_dim=2, hidden_size=32, n_layer=1, n_head=4, scale_attn_weights=False)
    with pytest.raises(ValueError, match="attention scaled"):
        dt_model_config(dt.to_dict())
