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
