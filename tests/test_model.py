import copy

import numpy as np
import pytest
import torch
from torch import Tensor

from models import (Attention, GNMTPenalty, HeadConfig, KVCache, ModalityConfig, ModelConfig, MultimodalTransformer, TrunkConfig,
                    build_mask, length_normalised)  # fmt: skip
from tokenizers_mm import ModalitySpec, TokenBatch, TokenSet, collate, next_token_set, pack

TEXT = ModalitySpec("text", ("token",), max_positions=32, vocab_size=50)
IMAGE = ModalitySpec("image", ("patch", "extra"), max_positions=16, value_dim=12)


def lm_model(**trunk) -> MultimodalTransformer:
    cfg = ModelConfig(TrunkConfig(dim=32, depth=2, num_heads=4, **trunk), {"text": ModalityConfig.from_spec(TEXT)},
                      {"lm": HeadConfig("lm", "text")}, decoder_inputs=["text"])  # fmt: skip
    return MultimodalTransformer(cfg).eval()


def rand_text(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return TokenSet("text", ids=torch.randint(0, 50, (n,), generator=g))


@pytest.mark.parametrize("cross", [False, True])
@pytest.mark.parametrize("pattern", ["full", "causal", "padding", "packed"])
def test_sdpa_equals_manual(pattern, cross):
    torch.manual_seed(0)
    attn = Attention(32, 4, cross=cross).eval()
    x, mem = torch.randn(3, 7, 32), torch.randn(3, 5, 32)
    key_mask = torch.rand(3, 5 if cross else 7) > 0.3
    seg = torch.tensor([[0, 0, 0, 1, 1, 2, 2]] * 3)
    S = 5 if cross else 7
    kw = dict(causal=pattern == "causal" and not cross)
    if pattern == "padding":
        kw["key_mask"] = key_mask
    if pattern == "packed" and not cross:
        kw.update(q_segments=seg, k_segments=seg)
    mask, causal = build_mask(7, S, **kw)
    fused = attn(x, mask, causal, memory=mem if cross else None)
    attn.flash = False
    manual = attn(x, mask, causal, memory=mem if cross else None)
    torch.testing.assert_close(fused, manual, atol=1e-5, rtol=1e-5)


def test_mask_builder_patterns():
    m, causal = build_mask(4, 4, causal=True)
    assert m is None and causal
    m, _ = build_mask(3, 3, causal=True, key_mask=torch.tensor([[True, True, False]]))
    assert m[0, 0].tolist() == [[True, False, False], [True, True, False], [True, True, False]]
    m, _ = build_mask(2, 2, causal=True, key_mask=torch.tensor([[False, True]]))
    assert m[0, 0].tolist() == [[True, True], [False, True]]  # a row with no visible key sees all: no NaN
    seg = torch.tensor([[0, 0, 1]])
    m, _ = build_mask(3, 3, causal=False, q_segments=seg, k_segments=seg)
    assert m[0, 0].tolist() == [[True, True, False], [True, True, False], [False, False, True]]
    m, _ = build_mask(1, 5, causal=True, q_offset=4)
    assert m.all()


def test_packed_sequences_do_not_see_each_other():
    torch.manual_seed(0)
    for mode, names in [("decoder", dict(decoder_inputs=["text"])), ("encoder", dict(encoder_inputs=["text"]))]:
        cfg = ModelConfig(TrunkConfig(dim=32, depth=2, num_heads=4, mode=mode), {"text": ModalityConfig.from_spec(TEXT)},
                          {"lm": HeadConfig("lm", "text")}, **names)  # fmt: skip
        model = MultimodalTransformer(cfg).eval()
        sets = [rand_text(n, seed=n) for n in (5, 3, 7, 2)]
        packed = pack(sets, row_length=10)
        logits = model({"text": packed}).logits["lm"]
        for b in range(packed.shape[0]):
            for seg in set(packed.segments[b].tolist()) - {-1}:
                sel = packed.segments[b] == seg
                alone = model({"text": collate([TokenSet("text", ids=packed.ids[b][sel])])}).logits["lm"][0]
                torch.testing.assert_close(logits[b][sel], alone, atol=1e-5, rtol=1e-5)


def test_padding_does_not_change_real_tokens():
    model = lm_model()
    a, b = rand_text(6, 1), rand_text(3, 2)
    both = model({"text": collate([a, b])}).logits["lm"]
    alone = model({"text": collate([b])}).logits["lm"]
    torch.testing.assert_close(both[1, :3], alone[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("temperature, top_k", [(0.0, None), (1.0, 5)])
def test_cached_generation_equals_uncached(temperature, top_k):
    torch.manual_seed(0)
    model = lm_model()
    prompt = {"text": collate([rand_text(4, 3), rand_text(4, 4)])}
    outs = [model.generate(prompt, 40, temperature, top_k, use_cache=c, generator=torch.Generator().manual_seed(1)) for c in (True, False)]
    assert outs[0].shape == (2, 44)  # past the 32-position table: sliding window
    assert torch.equal(outs[0], outs[1])


def test_cached_generation_under_autocast_keeps_the_cache_in_its_dtype():
    """Under bf16 autocast the cache holds bf16 (the keys and values come in it; an fp32 buffer took
    twice the memory for the same values) and cached decoding still equals uncached, decoder-only
    and encoder-decoder; without autocast the cache takes the weights' dtype."""
    torch.manual_seed(0)
    model = lm_model()
    assert model._new_cache(1, 4, "cpu").k[0].dtype == torch.float32
    encdec = multimodal("encoder-decoder").eval()
    inputs = {"image": collate([TokenSet("image", values=torch.randn(n, 12)) for n in (3, 5)]), "text": collate([rand_text(2, 5)] * 2)}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model._new_cache(1, 4, torch.device("cpu")).k[0].dtype == torch.bfloat16
        prompt = {"text": collate([rand_text(4, 3), rand_text(4, 4)])}
        assert torch.equal(model.generate(prompt, 40, 0.0, use_cache=True), model.generate(prompt, 40, 0.0, use_cache=False))
        assert torch.equal(encdec.generate(inputs, 10, temperature=0, use_cache=True), encdec.generate(inputs, 10, temperature=0, use_cache=False))
        assert torch.equal(encdec.beam_search(inputs, 6, beam_size=1), encdec.generate(inputs, 6, temperature=0))  # beam 1 is greedy
        assert encdec.beam_search(inputs, 6, beam_size=3).shape[0] == 2  # the bf16 cache reorders between beams
        wide = lm_model().double()  # autocast leaves float64 alone: so does the cache
        assert wide._new_cache(1, 4, "cpu").k[0].dtype == torch.float64
        assert torch.equal(wide.generate(prompt, 8, 0.0, use_cache=True), wide.generate(prompt, 8, 0.0, use_cache=False))


def test_generation_stops_when_every_row_has_ended():
    """eos_id: greedy decoding goes on while any row has not produced it (a row that has is filled
    with eos_id, as transformers pads), stops at the step the last row does, with the tokens of the
    full-length run up to each row's end."""
    torch.manual_seed(0)
    model = lm_model()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 1.0)  # random weights: rows vary their tokens
    prompt = {"text": collate([rand_text(4, 3), rand_text(4, 4)])}
    full = model.generate(prompt, 20, temperature=0)
    first = [{}, {}]  # per row: token -> the step (1-based) it first appears
    for r in range(2):
        for step, t in enumerate(full[r, 4:].tolist(), 1):
            first[r].setdefault(t, step)
    # a token one row produces first, and not again when the other row first does: only remembering who has ended stops there
    later = [t for t in first[0] if t in first[1] and first[0][t] != first[1][t]
             and full[:, 3 + max(first[0][t], first[1][t])].tolist().count(t) == 1]  # fmt: skip
    assert later, "no token that both rows produce at different steps: change the seed"
    eos = min(later, key=lambda t: max(first[0][t], first[1][t]))
    short = model.generate(prompt, 20, temperature=0, eos_id=eos)
    assert short.shape[1] == 4 + max(first[0][eos], first[1][eos])
    for r in range(2):
        end = 4 + first[r][eos]
        assert torch.equal(short[r, :end], full[r, :end]) and set(short[r, end:].tolist()) <= {eos}


def test_kv_cache_capacity():
    cache = KVCache(1, 1, 2, 3, 4)
    cache.update(0, torch.zeros(1, 2, 3, 4), torch.zeros(1, 2, 3, 4))
    cache.advance(3)
    with pytest.raises(ValueError, match="exceed its capacity"):
        cache.update(0, torch.zeros(1, 2, 1, 4), torch.zeros(1, 2, 1, 4))


def test_kv_cache_reorder_moves_every_layer_and_the_cross_keys():
    """Beam search keeps the rows `index`: the cached self-attention keys/values, cross-attention
    keys/values (unless cross=False: rows that share a memory) and the key mask of every layer follow."""
    cache = KVCache(2, 3, 1, 4, 2)
    rows = torch.arange(3.0).view(3, 1, 1, 1)  # row r holds r everywhere
    for layer in range(2):
        cache.update(layer, rows.expand(3, 1, 2, 2), rows.expand(3, 1, 2, 2))
        cache.cross[layer] = (rows.expand(3, 1, 5, 2), rows.expand(3, 1, 5, 2))
    cache.advance(2)
    for layer in range(2):  # past the cached positions: row r holds -r, which a reorder leaves
        cache.k[layer][:, :, 2:] = -rows
    cache.key_mask = torch.arange(3)[:, None].expand(3, 4) > 0
    index = torch.tensor([2, 2, 0])
    cache.reorder(index)
    want = index.float().view(3, 1, 1, 1)
    for layer in range(2):
        for t in (cache.k[layer], cache.v[layer], *cache.cross[layer]):
            assert torch.equal(t[:, :, :2, :1], want.expand(3, 1, 2, 1)), layer
        assert torch.equal(cache.k[layer][:, 0, 2:, 0], -torch.arange(3.0)[:, None].expand(3, 2))  # untouched
    assert cache.key_mask[:, 0].tolist() == [True, True, False]
    cache.reorder(torch.tensor([1, 0, 0]), cross=False)
    assert torch.equal(cache.k[0][:, 0, 0, 0], torch.tensor([2.0, 2.0, 2.0])) and torch.equal(cache.cross[0][0][:, 0, 0, 0], index.float())


def test_lm_head_tied_and_loss_matches_cross_entropy():
    model = lm_model()
    assert model.heads["lm"].proj.weight is model.embedders["text"].tok.weight
    batch = collate([next_token_set("text", rand_text(9).ids)])
    out = model({"text": batch})
    ref = torch.nn.functional.cross_entropy(out.logits["lm"][0], batch.targets[0])
    torch.testing.assert_close(out.loss, ref)


def multimodal(mode: str) -> MultimodalTransformer:
    mods = {"text": ModalityConfig.from_spec(TEXT), "image": ModalityConfig.from_spec(IMAGE)}
    heads = {"cls": HeadConfig("classify", "image", num_outputs=3, pool="mean"), "lm": HeadConfig("lm", "text"),
             "reg": HeadConfig("regress", "image", num_outputs=2, pool="cls", loss_weight=0.5)}  # fmt: skip
    if mode == "encoder-decoder":
        io = dict(encoder_inputs=["image"], decoder_inputs=["text"])
    elif mode == "decoder":
        io = dict(decoder_inputs=["image", "text"], prefix_inputs=["image"])  # (the regress head pools image CLS: both directions)
    else:
        io = dict(encoder_inputs=["image", "text"])
    return MultimodalTransformer(ModelConfig(TrunkConfig(dim=32, depth=2, num_heads=4, mode=mode), mods, heads, **io))


@pytest.mark.parametrize("mode", ["encoder", "decoder", "encoder-decoder"])
def test_every_mode_trains_on_a_mix(mode):
    torch.manual_seed(0)
    model = multimodal(mode)
    image = collate([TokenSet("image", values=torch.randn(n, 12), types=torch.tensor([0] * (n - 1) + [1])) for n in (4, 6)])
    text = collate([next_token_set("text", rand_text(n).ids) for n in (5, 8)])
    targets = {"cls": torch.tensor([0, 2]), "reg": torch.randn(2, 2)}
    out = model({"image": image, "text": text}, targets)
    assert out.logits["cls"].shape == (2, 3) and out.logits["lm"].shape == (2, 7, 50) and out.logits["reg"].shape == (2, 2)
    assert set(out.losses) == {"cls", "lm", "reg"}
    torch.testing.assert_close(out.loss, out.losses["cls"] + out.losses["lm"] + 0.5 * out.losses["reg"])
    out.loss.backward()
    assert model.type_embed.weight.grad is not None
    # the type table has one block of rows per modality: text 1, image 2
    assert model.type_offset == {"text": 0, "image": 1} and model.type_embed.num_embeddings == 3


def test_encoder_decoder_generation_cached_equals_uncached():
    torch.manual_seed(0)
    model = multimodal("encoder-decoder").eval()
    inputs = {"image": collate([TokenSet("image", values=torch.randn(n, 12)) for n in (3, 5)]), "text": collate([rand_text(2, 5)] * 2)}
    a = model.generate(inputs, 10, temperature=0, use_cache=True)
    b = model.generate(inputs, 10, temperature=0, use_cache=False)
    assert torch.equal(a, b)


def test_cross_attention_scores_leave_a_padded_memory_out():
    """cross_attention_scores gives q·k / sqrt(hs) per decoder layer; a short row of a padded batch
    scores its real memory tokens as it does alone, and its padding -inf (it may not attend there)."""
    torch.manual_seed(0)
    model = multimodal("encoder-decoder").eval()
    images = [TokenSet("image", values=torch.randn(n, 12)) for n in (3, 5)]
    text = collate([rand_text(4, 1), rand_text(4, 2)])
    with torch.no_grad():
        out, scores = model.cross_attention_scores({"image": collate(images), "text": text})
        alone_out, alone = model.cross_attention_scores({"image": collate(images[:1]), "text": collate([rand_text(4, 1)])}, layers=[1])
    assert sorted(scores) == [0, 1] and scores[1].shape == (2, 4, 4, 5) and sorted(alone) == [1]
    torch.testing.assert_close(scores[1][0, :, :, :3], alone[1][0], atol=1e-5, rtol=1e-5)
    assert torch.isinf(scores[1][0, :, :, 3:]).all() and torch.isfinite(scores[1][1]).all()
    torch.testing.assert_close(out.logits["lm"][0], alone_out.logits["lm"][0], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="layer 2 is not one of the decoder's 2 layers"):
        model.cross_attention_scores({"image": collate(images), "text": text}, layers=[2])


def test_save_load_round_trip(tmp_path):
    model = multimodal("encoder-decoder").eval()
    model.save(tmp_path)
    back = MultimodalTransformer.load(tmp_path)
    assert back.config == model.config and not back.training  # in eval mode, as transformers' from_pretrained
    copy.deepcopy(model).to(torch.bfloat16).save(tmp_path / "bf16")
    assert MultimodalTransformer.load(tmp_path / "bf16").embedders["text"].tok.weight.dtype == torch.float32
    assert MultimodalTransformer.load(tmp_path / "bf16", dtype=torch.bfloat16).embedders["text"].tok.weight.dtype == torch.bfloat16
    inputs = {"image": collate([TokenSet("image", values=torch.randn(3, 12))]), "text": collate([rand_text(4)])}
    torch.testing.assert_close(back(inputs).logits["lm"], model(inputs).logits["lm"], atol=0, rtol=0)


def test_load_refuses_damaged_weights(tmp_path):
    lm_model().save(tmp_path)
    weights = tmp_path / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="corrupt or truncated"):
        MultimodalTransformer.load(tmp_path)
    weights.write_bytes(b"\x80\x04garbage pickle")
    with pytest.raises(ValueError, match="corrupt or truncated"):
        MultimodalTransformer.load(tmp_path)
    lm_model().save(tmp_path)  # whole weights of another size: named as such, with the tensors that differ
    from models.transformer import load_weights

    other = MultimodalTransformer(ModelConfig(TrunkConfig(dim=64, depth=1, num_heads=2), {"text": ModalityConfig.from_spec(TEXT)}, {},
                                              decoder_inputs=["text"]))  # fmt: skip
    with pytest.raises(ValueError, match=r"does not match the config: embedders\.text\.tok\.weight: .*torch\.Size"):
        load_weights(other, weights)


def test_config_errors():
    with pytest.raises(ValueError, match="divisible by num_heads"):
        TrunkConfig(dim=30, num_heads=4)
    with pytest.raises(ValueError, match="mode"):
        TrunkConfig(mode="sideways")
    with pytest.raises(ValueError, match="needs encoder_inputs"):
        ModelConfig(TrunkConfig(mode="encoder"), {"text": ModalityConfig.from_spec(TEXT)}, {}, decoder_inputs=["text"])
    with pytest.raises(ValueError, match="not configured"):
        ModelConfig(TrunkConfig(), {"text": ModalityConfig.from_spec(TEXT)}, {}, decoder_inputs=["audio"])
    with pytest.raises(KeyError, match="model input 'text' is missing"):
        lm_model()({})
    spec = dict(modality="ts", token_types=("a",), max_positions=4, value_dim=2)
    for change, message in ((dict(token_types="point"), r"got the string 'point' \(a tuple of one needs its comma: \('point',\)\)"),
                            (dict(token_types=["a", "a"]), r"must be distinct non-empty names \(\['a'\] twice\)"),
                            (dict(modality=""), "a modality's name must be a non-empty string"),
                            (dict(max_positions="16"), r"max_positions='16' must be a whole number of at least 1"),
                            (dict(value_dim=2.5), r"value_dim=2.5 must be a whole number of at least 1"),
                            (dict(value_dim=0), r"value_dim=0 must be a whole number of at least 1")):  # fmt: skip
        with pytest.raises(ValueError, match=message):
            ModalitySpec(**{**spec, **change})
    with pytest.raises(ValueError, match=r"got the string 'point'"):  # the model's config refuses it as the tokenizer's spec does
        ModalityConfig("ts", "point", 4, value_dim=2)
    ts = ModalityConfig.from_spec(ModalitySpec(**spec))
    for mods, heads, message in (({"keys": ts}, {}, r"modality names \['keys'\]: a name is a non-empty string without '\.'"),
                                 ({"a.b": ts}, {}, r"modality names \['a\.b'\]"),
                                 ({"ts": ts}, {"training": HeadConfig("regress", "ts", num_outputs=1)}, r"head names \['training'\]"),
                                 ({"other": ts}, {}, r"modalities \{'other': 'ts'\}: each is keyed by its own name")):  # fmt: skip
        with pytest.raises(ValueError, match=message):
            ModelConfig(TrunkConfig(mode="encoder"), mods, heads, encoder_inputs=list(mods))
    # a pooled head on a causal modality's first token would see none of the tokens after it: the same output for every sample
    cls = {"cls": HeadConfig("classify", "image", num_outputs=3)}
    mods = {"image": ModalityConfig.from_spec(IMAGE), "text": ModalityConfig.from_spec(TEXT)}
    with pytest.raises(ValueError, match=r"heads \['cls'\] pool the first token \(pool='cls'\) of 'image', the decoder's first input, "
                                         r"attended causally with no encoder: it sees only itself"):  # fmt: skip
        ModelConfig(TrunkConfig(), mods, cls, decoder_inputs=["image", "text"])
    ModelConfig(TrunkConfig(), mods, cls, decoder_inputs=["image", "text"], prefix_inputs=["image"])  # both directions: fine
    ModelConfig(TrunkConfig(), mods, cls, decoder_inputs=["text", "image"])  # its first token sees the text before it
    ModelConfig(TrunkConfig(mode="encoder-decoder"), mods, cls, encoder_inputs=["text"], decoder_inputs=["image"])  # ... or the encoder


def _logprob(model, prompt, ids):
    """Summed log-probability of the continuation ids[N:] given the prompt (teacher forcing)."""
    N = prompt["text"].shape[1]
    full = {**prompt, "text": collate([TokenSet("text", ids=ids[0])])}
    logp = model(full).logits["lm"][0, :-1].log_softmax(-1)
    return logp[torch.arange(N - 1, ids.shape[1] - 1), ids[0, N:]].sum().item()


@pytest.mark.parametrize("mode", ["decoder", "encoder-decoder"])
def test_beam_search(mode):
    torch.manual_seed(0)
    model = lm_model() if mode == "decoder" else multimodal("encoder-decoder").eval()
    prompt = {"text": collate([rand_text(3, 7)])}
    if mode == "encoder-decoder":
        prompt["image"] = collate([TokenSet("image", values=torch.randn(4, 12))])
    greedy = model.generate(prompt, 8, temperature=0)
    assert torch.equal(model.beam_search(prompt, 8, beam_size=1, length_penalty=0.0), greedy)  # beam 1 is greedy
    beam = model.beam_search(prompt, 8, beam_size=4, length_penalty=0.0)
    assert beam.shape == greedy.shape and _logprob(model, prompt, beam) >= _logprob(model, prompt, greedy) - 1e-5
    # the last new token may sit one past the position table: it is sampled, never read (openai-whisper's decoder)
    room = model.config.modalities["text"].max_positions + 1 - 3
    assert torch.equal(model.beam_search(prompt, room, beam_size=1), model.generate(prompt, room, temperature=0))
    assert model.beam_search(prompt, room, beam_size=3).shape[1] == room + 3
    with pytest.raises(ValueError, match=f"beam_search: 3 \\+ {room + 1} - 1 tokens read exceed the"):
        model.beam_search(prompt, room + 1, beam_size=3)
    # with an end token, decoding stops once every beam has ended, and a beam that ended first is padded with it
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 1.0)  # varied tokens (small weights repeat one)
    full = model.beam_search(prompt, 8, beam_size=3)
    eos = int(full[0, 4])  # the best beam's second new token
    out = model.beam_search(prompt, 8, beam_size=3, eos_id=eos)
    new = out[0, 3:].tolist()
    assert eos in new and set(new[new.index(eos) :]) == {eos} and out.shape[1] < full.shape[1]


def test_decoding_returns_the_log_probabilities_teacher_forcing_gives():
    """generate(return_logprobs=True) gives each new token's log-probability under the filtered
    logits (before temperature and top_k), 0 after a row's end; beam_search(return_scores=True) its
    best beam's summed log-probability: what a second, teacher-forced pass over the rows gives."""
    torch.manual_seed(0)
    model = lm_model()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.5)
    banned = lambda logits, step, ids: logits.index_fill(1, torch.tensor([5]), float("-inf"))  # noqa: E731
    prompt = {"text": collate([rand_text(4, 3), rand_text(4, 4), rand_text(4, 5)])}

    def forced(row: Tensor, end: int) -> list[float]:  # each new token's log-probability, teacher-forced, up to `end`
        logits = banned(model({"text": collate([TokenSet("text", ids=row[:end])])}).logits["lm"][0], 0, None)
        return logits[3 : end - 1].log_softmax(-1).gather(1, row[4:end, None])[:, 0].tolist()

    with torch.no_grad():
        plain = model.generate(prompt, 12, temperature=0.8, top_k=20, generator=torch.Generator().manual_seed(2), logits_filter=banned)
        eos = int(plain[0, 7])  # the first row ends at its fourth new token; the others where they meet it
        ids, logprobs = model.generate(prompt, 12, temperature=0.8, top_k=20, generator=torch.Generator().manual_seed(2), logits_filter=banned,
                                       eos_id=eos, return_logprobs=True)  # fmt: skip
        assert logprobs.shape == (3, ids.shape[1] - 4) and logprobs.dtype == torch.float32
        for r in range(3):
            new = ids[r, 4:].tolist()
            end = 4 + (new.index(eos) + 1 if eos in new else len(new))
            assert torch.equal(ids[r, :end], plain[r, :end]) and set(ids[r, end:].tolist()) <= {eos}  # (the other rows' draws as without eos_id)
            np.testing.assert_allclose(logprobs[r, : end - 4].tolist(), forced(ids[r], end), atol=1e-5)
            assert (logprobs[r, end - 4 :] == 0).all() and (logprobs[r, : end - 4] < 0).all()
        assert model.generate(prompt, 0, return_logprobs=True)[1].shape == (3, 0)
        beams, scores = model.beam_search(prompt, 8, beam_size=3, eos_id=eos, logits_filter=banned, return_scores=True)
        assert torch.equal(beams, model.beam_search(prompt, 8, beam_size=3, eos_id=eos, logits_filter=banned))
        for r in range(3):
            new = beams[r, 4:].tolist()
            end = 4 + (new.index(eos) + 1 if eos in new else len(new))  # after its end a beam is padded with eos, at no cost
            assert float(scores[r]) == pytest.approx(sum(forced(beams[r], end)), abs=1e-4)


@pytest.mark.filterwarnings("ignore:__array_wrap__:DeprecationWarning")  # openai-whisper's finalize sorts a tensor with numpy
def test_beam_search_is_openai_whisper_beam_search():
    """beam_search keeps, finishes and ranks beams as openai-whisper's BeamSearchDecoder driven over
    the same logits (its MaximumLikelihoodRanker: log-probability / tokens without the end token,
    or with its numeric length_penalty, GNMT's, as GNMTPenalty), with patience, and with open beams
    when too few finish; the sums are its sum_logprobs."""
    decoding = pytest.importorskip("whisper.decoding")
    torch.manual_seed(0)
    model, eos, K = lm_model(), 49, 3
    prompts = torch.stack([rand_text(4, s).ids for s in range(3)])
    bigram = torch.randn(50, 50, generator=torch.Generator().manual_seed(1)) * 1.5  # varied next-token choices that ...
    bigram[:, eos] += 1.0  # ... end now and then

    def rules(logits, step, ids):  # and, as openai-whisper's SuppressBlank, no end as the first token
        logits = logits + bigram[ids[:, -1]]
        return logits.index_fill(1, torch.tensor([eos]), float("-inf")) if step == 0 else logits

    class Uncached:  # openai-whisper's decoder reorders its cache; the logits here are computed afresh
        rearrange_kv_cache = staticmethod(lambda source: None)

    rows = lambda t: {"text": collate([TokenSet("text", ids=r) for r in t])}  # noqa: E731
    picked = []
    for patience, penalty, steps in [(1.0, 1.0, 10), (2.0, 1.0, 10), (0.5, 0.0, 10), (1.0, 1.0, 3), (2.0, GNMTPenalty(0.6), 10)]:
        with torch.no_grad():
            ours, sums = model.beam_search(rows(prompts), steps, K, penalty, eos, rules, return_scores=True, patience=patience)
            beam, tokens, sum_logprobs = decoding.BeamSearchDecoder(K, eos, Uncached(), patience), prompts.repeat_interleave(K, 0), torch.zeros(3 * K)
            for step in range(steps):
                tokens, completed = beam.update(tokens, rules(model(rows(tokens)).logits["lm"][:, -1], step, tokens), sum_logprobs)
                if completed:
                    break
        found, logprobs = beam.finalize(tokens.view(3, K, -1), sum_logprobs.view(3, K))
        found = [[t[4:][: (t[4:] == eos).nonzero()[0, 0]] for t in s] for s in found]  # as openai-whisper cuts them
        best = decoding.MaximumLikelihoodRanker(None if penalty == 1.0 else penalty).rank(found, logprobs)  # (0.0: both the plain sum)
        for b in range(3):
            new = ours[b, 4:].tolist()
            assert new[: new.index(eos) if eos in new else len(new)] == found[b][best[b]].tolist()
            assert float(sums[b]) == pytest.approx(logprobs[b][best[b]], abs=1e-4)
        picked.append([tuple(r) for r in ours.tolist()])
    assert 3 <= sum(eos in r for p in picked for r in p) < 15 and len(set(map(tuple, picked))) == 5  # some end, some run out; each setting differs


def test_length_normalised_ranks_as_openai_whisper():
    """The figure beam search and the temperature fallback rank candidates by picks what openai-whisper's
    MaximumLikelihoodRanker picks: log-probability / tokens by default (our 1.0), the plain sum (0),
    and its numeric length_penalty, GNMT's ((5 + tokens) / 6) ** α, as GNMTPenalty(α)."""
    decoding = pytest.importorskip("whisper.decoding")
    g, differ = torch.Generator().manual_seed(0), 0
    for _ in range(200):
        lengths, sums = torch.randint(1, 30, (5,), generator=g).tolist(), (-30 * torch.rand(5, generator=g)).tolist()
        picks = []
        for ours, theirs in ((1.0, None), (0.0, 0.0), (GNMTPenalty(0.6), 0.6), (GNMTPenalty(1.0), 1.0)):
            want = decoding.MaximumLikelihoodRanker(theirs).rank([[torch.zeros(n) for n in lengths]], [sums])[0]
            picks.append(max(range(5), key=lambda i: length_normalised(sums[i], lengths[i], ours)))
            assert picks[-1] == want, (ours, lengths, sums)
        differ += picks[0] != picks[3]  # GNMT at α = 1 is not log-probability / tokens
    assert differ > 10


def test_beam_search_batches_match_single():
    torch.manual_seed(0)
    model = lm_model()
    prompts = [rand_text(3, s) for s in (1, 2)]
    both = model.beam_search({"text": collate(prompts)}, 6, beam_size=3)
    for i, p in enumerate(prompts):
        assert torch.equal(both[i : i + 1], model.beam_search({"text": collate([p])}, 6, beam_size=3))


def test_beam_search_encodes_each_sample_once():
    """The encoder runs once per sample, not once per beam; padded memories of different lengths
    give each sample the beams it gets alone."""
    torch.manual_seed(0)
    model = multimodal("encoder-decoder").eval()
    images = [TokenSet("image", values=torch.randn(n, 12)) for n in (4, 2)]
    prompts = [rand_text(3, s) for s in (1, 2)]
    rows = []
    model.encoder.register_forward_hook(lambda mod, args, out: rows.append(out.shape[0]))
    both = model.beam_search({"image": collate(images), "text": collate(prompts)}, 5, beam_size=3)
    assert rows == [2]
    for i in range(2):
        alone = model.beam_search({"image": collate([images[i]]), "text": collate([prompts[i]])}, 5, beam_size=3)
        assert torch.equal(both[i : i + 1], alone)


def test_memory_computed_once_serves_forward_generate_and_beam_search():
    """encode_memory's output, passed as memory=, gives what encoding again gives: logits, greedy and
    sampled continuations, beams; rows selected from it (repeated, as samples of one input) decode as
    those inputs do; the encoder does not run again."""
    torch.manual_seed(0)
    model = multimodal("encoder-decoder").eval()
    images = collate([TokenSet("image", values=torch.randn(n, 12)) for n in (4, 2)])  # padded: the mask travels
    prompts = collate([rand_text(3, s) for s in (1, 2)])
    inputs = {"image": images, "text": prompts}
    with torch.no_grad():
        memory = model.encode_memory({"image": images})
        calls = []
        model.encoder.register_forward_hook(lambda mod, args, out: calls.append(out.shape[0]))
        assert memory.mask is not None and memory.shape[0] == 2
        torch.testing.assert_close(model({"text": prompts}, memory=memory).logits["lm"], model(inputs).logits["lm"], rtol=0, atol=1e-6)
        assert torch.equal(model.generate({"text": prompts}, 6, temperature=0, memory=memory), model.generate(inputs, 6, temperature=0))
        assert torch.equal(model.beam_search({"text": prompts}, 5, beam_size=3, memory=memory), model.beam_search(inputs, 5, beam_size=3))
        sampled = [model.generate(x, 6, generator=torch.Generator().manual_seed(1), memory=m)
                   for x, m in (({"text": prompts}, memory), (inputs, None))]  # fmt: skip
        assert torch.equal(*sampled)
        assert calls == [2, 2, 2, 2]  # only the calls without memory= encoded
        rows = torch.tensor([1, 1, 0])
        again = model.generate({"text": prompts.select(rows)}, 6, temperature=0, memory=memory.select(rows))
        assert torch.equal(again, model.generate({"image": images.select(rows), "text": prompts.select(rows)}, 6, temperature=0))
        with pytest.raises(ValueError, match="memory= holds 3 rows for 2 prompts"):
            model.generate({"text": prompts}, 2, memory=memory.select(rows))
        with pytest.raises(ValueError, match="without an encoder"):
            lm_model().generate({"text": prompts}, 2, memory=memory)
        with pytest.raises(ValueError, match="memory= is the encoder's output for unpacked inputs .this model has no encoder."):
            lm_model()({"text": prompts}, memory=memory)
        with pytest.raises(ValueError, match=r"^targets\['cls'\]: head 'cls' reads 'image' and memory= stands for the encoder's 'image' tokens"):
            model(inputs, {"cls": torch.tensor([0, 1])}, memory=memory)  # (its loss was left out without a word)


def test_sampling_draws_from_the_softmax_of_the_top_k():
    """generate's draw (inverse CDF) follows softmax(logits / temperature) over the top_k tokens and
    never draws a token outside them, on each row independently."""
    g = torch.Generator().manual_seed(0)
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0, 5.0], [0.0, 0.0, 0.0, 0.0, -50.0]]).repeat_interleave(20000, 0)
    draws = MultimodalTransformer._sample(logits, 2.0, 3, g)
    assert draws.shape == (40000, 1)
    for row, half in zip(logits[::20000], draws.view(2, 20000)):
        top = torch.topk(row / 2.0, 3).values[-1]
        want = torch.where(row / 2.0 >= top, row / 2.0, float("-inf")).softmax(-1)
        seen = torch.bincount(half, minlength=5).float() / 20000
        assert seen[want == 0].sum() == 0
        torch.testing.assert_close(seen, want, atol=0.015, rtol=0)  # ~4 standard errors of 20,000 draws
    # 16-bit logits are drawn in float32 (a bf16 cumulative sum over 50k tokens has a few hundred steps)
    wide = torch.linspace(0, 1, 50000)
    draws = MultimodalTransformer._sample(wide.bfloat16().expand(2000, -1), 1.0, None, g)[:, 0]
    assert len(draws.unique()) > 1500  # 2,000 draws over 50,000 near-equal tokens: ~1,960 distinct; a bf16 CDF reaches ~700
    with pytest.raises(ValueError, match="row 1's probabilities are NaN"):
        MultimodalTransformer._sample(torch.tensor([[0.0, 1.0], [float("nan"), 0.0]]), 1.0, None, g)


def _two_input_lm(decoder_inputs, subset=False, prefix=()):
    text = ModalitySpec("text", ("token",), max_positions=8, vocab_size=20)
    image = ModalitySpec("image", ("patch",), max_positions=16, value_dim=6)
    torch.manual_seed(0)
    cfg = ModelConfig(TrunkConfig(dim=16, depth=1, num_heads=2), {"text": ModalityConfig.from_spec(text), "image": ModalityConfig.from_spec(image)},
                      {"lm": HeadConfig("lm", "text")}, decoder_inputs=list(decoder_inputs), prefix_inputs=list(prefix),
                      subset_inputs=subset)  # fmt: skip
    model = MultimodalTransformer(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)  # varied predictions, so a wrong position or a lost prefix shows
    return model


@pytest.mark.parametrize("layout", ["image prefix", "image prefix, subset", "lm not the config's last input"])
def test_cached_generation_equals_uncached_with_other_decoder_inputs(layout):
    """Greedy decoding with the KV cache equals decoding without it, past the 8-position table
    (the window slides and keeps the other inputs) and when the LM modality is not the config's
    last decoder input (a generalist's prose); beam search of width 1 is the same greedy path."""
    g = torch.Generator().manual_seed(0)
    image = collate([TokenSet("image", values=torch.randn(n, 6, generator=g)) for n in (3, 3)])
    text = collate([TokenSet("text", ids=torch.randint(0, 20, (4,), generator=g)) for _ in range(2)])
    if layout == "lm not the config's last input":
        model, inputs, new = _two_input_lm(["text", "image"], subset=True), {"text": text}, 4
    else:
        model, inputs, new = _two_input_lm(["image", "text"], subset="subset" in layout, prefix=["image"]), {"image": image, "text": text}, 10
    uncached = model.generate(inputs, new, temperature=0, use_cache=False)
    assert torch.equal(model.generate(inputs, new, temperature=0, use_cache=True), uncached)
    if layout == "lm not the config's last input":
        assert torch.equal(model.beam_search(inputs, new, beam_size=1, length_penalty=0.0), uncached)


@pytest.mark.parametrize("kind", ["token_classify", "token_regress"])
def test_token_head_loss_is_the_mean_over_its_tokens_and_zero_without_any(kind):
    """Per-token heads average their loss over the tokens of their type that carry a loss; a batch
    without such tokens adds 0 (no error). Regression targets stay fp32 under bf16 autocast."""
    spec = ModalitySpec("traj", ("state", "action"), max_positions=8, value_dim=3)
    outputs = 4 if kind == "token_classify" else 2
    cfg = ModelConfig(TrunkConfig(dim=16, depth=1, num_heads=2), {"traj": ModalityConfig.from_spec(spec)},
                      {"act": HeadConfig(kind, "traj", num_outputs=outputs, token_type="action")}, decoder_inputs=["traj"])  # fmt: skip
    torch.manual_seed(0)
    model = MultimodalTransformer(cfg)
    types = torch.tensor([0, 1, 0, 1, 0, 1])
    targets = torch.randint(0, 4, (6,)) if kind == "token_classify" else torch.randn(6, 2)
    batch = collate([TokenSet("traj", values=torch.randn(6, 3), types=types, targets=targets)])
    out = model({"traj": batch})
    logits, valid = out.logits["act"][0], types == 1
    if kind == "token_classify":
        want = torch.nn.functional.cross_entropy(logits[valid], targets[valid])
    else:
        want = torch.nn.functional.mse_loss(logits[valid], targets[valid])
    torch.testing.assert_close(out.loss, want)
    none = collate([TokenSet("traj", values=torch.randn(6, 3), types=torch.zeros(6, dtype=torch.long), targets=targets)])
    assert model({"traj": none}).loss.item() == 0.0
    if kind == "token_regress":
        with torch.autocast("cpu", dtype=torch.bfloat16):
            fine = collate([TokenSet("traj", values=torch.randn(6, 3), types=types, targets=torch.full((6, 2), 1 + 2**-9))])
            out = model({"traj": fine})
        assert out.logits["act"].dtype == torch.bfloat16
        want = ((out.logits["act"][0][valid].float() - (1 + 2**-9)) ** 2).mean()
        torch.testing.assert_close(out.loss, want)


@pytest.mark.parametrize("kind, bad, wanted", [
    ("token_classify", torch.randn(6), r"\(1, 6\) integer class ids, or \(1, 6, A\) for A parts of num_outputs=4 // A classes"),
    ("token_classify", torch.zeros(6, 3, dtype=torch.long), r"\(1, 6, A\) for A parts"),  # (4 classes do not split in 3 parts)
    ("token_regress", torch.randn(6, 3), r"\(1, 6, 2\) numbers"),
    ("token_regress", torch.zeros(6, 2, dtype=torch.bool), r"\(1, 6, 2\) numbers"),
    ("lm", torch.randn(6), r"\(1, 6\) integer token ids"),
    ("lm", torch.zeros(6, 2, dtype=torch.long), r"\(1, 6\) integer token ids")])  # fmt: skip
def test_per_token_targets_of_another_dtype_or_shape_are_named(kind, bad, wanted):
    """TokenBatch.targets a per-token head cannot read: one line naming the head and what it takes
    (not torch's "expected scalar type Long" or "shape '[6, -1]' is invalid")."""
    if kind == "lm":
        model, batch = lm_model(), collate([TokenSet("text", ids=torch.arange(6), targets=bad)])
        name, inputs = "text", {"text": batch}
    else:
        spec = ModalitySpec("traj", ("state", "action"), max_positions=8, value_dim=3)
        cfg = ModelConfig(TrunkConfig(dim=16, depth=1, num_heads=2), {"traj": ModalityConfig.from_spec(spec)},
                          {"act": HeadConfig(kind, "traj", num_outputs=4 if kind == "token_classify" else 2, token_type="action")},
                          decoder_inputs=["traj"])  # fmt: skip
        model, name = MultimodalTransformer(cfg), "traj"
        inputs = {"traj": collate([TokenSet("traj", values=torch.randn(6, 3), types=torch.tensor([0, 1] * 3), targets=bad)])}
    for call in (model, model.loss_counts):  # (loss_counts reads them before forward, with grad_accum or several processes)
        with pytest.raises(ValueError, match=rf"'{name}' TokenBatch.targets: .* of shape .*; head '\w+' \({kind}\) takes .*{wanted}.* for 1 samples of 6"):
            call(inputs)


def _speech_model(subset_inputs=False):
    torch.manual_seed(0)
    audio = ModalityConfig.from_spec(ModalitySpec("audio", ("frame",), 40, value_dim=8), embedder="whisper_conv")
    cfg = ModelConfig(TrunkConfig(dim=16, depth=1, dec_depth=1, num_heads=2, mode="encoder-decoder"),
                      {"audio": audio, "text": ModalityConfig.from_spec(TEXT)}, {"lm": HeadConfig("lm", "text")},
                      encoder_inputs=["audio"], decoder_inputs=["text"], subset_inputs=subset_inputs)  # fmt: skip
    return MultimodalTransformer(cfg).eval()


def test_packed_audio_for_a_strided_stem_is_read_as_alone_or_refused():
    """Whisper's conv stem (stride 2) reads packed utterances as it reads each alone when pack()
    aligns them (stride=2: each starts at an even frame, padding after it); packed end to end they
    would read each other's frames at the edges, start at odd frames and take wrong positions:
    refused (TokenBatch.packed_stride, read where the batch is made)."""
    model = _speech_model()
    sets = [TokenSet("audio", values=torch.randn(n, 8)) for n in (5, 4, 7)]
    embed = model.embedders["audio"]
    packed = pack(sets, 40, stride=2)
    assert packed.packed_stride >= 2 and packed.shape[0] == 1
    out = embed(packed)[0]
    for seg in range(len(sets)):  # each segment's stem outputs equal its utterance's alone (pack places the longest first)
        where = torch.nonzero(packed.segments[0] == seg)[:, 0]
        start, ts = int(where[0]), next(ts for ts in sets if len(ts) == len(where))
        alone = embed(collate([ts]))[0]
        torch.testing.assert_close(out[start // 2 : start // 2 + alone.shape[0]], alone, atol=1e-6, rtol=1e-5)
    end_to_end = pack(sets, 40)
    assert end_to_end.packed_stride == 1
    with pytest.raises(ValueError, match=r"packed rows for a stem of stride 2 need .*pack\(\.\.\., stride=2\)"):
        embed(end_to_end)


def test_losses_without_targets_or_with_per_example_targets():
    """An LM batch whose every target is masked adds 0 (it was 0/0, a NaN that stops a run); a
    pooled regression head takes one target per example, (B,) or (B, K), never broadcast into
    (B, B) pairs."""
    model = lm_model()
    ts = next_token_set("text", rand_text(6).ids)
    ts = TokenSet("text", ids=ts.ids, targets=ts.targets, loss_mask=torch.zeros(len(ts), dtype=torch.bool))
    assert model({"text": collate([ts])}).losses["lm"].item() == 0.0
    torch.manual_seed(0)
    image = ModalityConfig.from_spec(IMAGE)
    reg = MultimodalTransformer(ModelConfig(TrunkConfig(dim=32, depth=1, num_heads=4, mode="encoder"), {"image": image},
                                            {"reg": HeadConfig("regress", "image", num_outputs=1, pool="mean")}, encoder_inputs=["image"]))  # fmt: skip
    inputs = {"image": collate([TokenSet("image", values=torch.randn(4, 12)) for _ in range(3)])}
    y = torch.tensor([1.0, -2.0, 3.0])
    out = reg(inputs, {"reg": y})
    torch.testing.assert_close(out.losses["reg"], ((out.logits["reg"][:, 0] - y) ** 2).mean())
    with pytest.raises(ValueError, match=r"targets\['reg'\]: torch.float32 of shape \(2,\); head 'reg' takes \(3,\) or \(3, 1\) numbers"):
        reg(inputs, {"reg": y[:2]})
    with pytest.raises(ValueError, match=r"head 'reg': targets of shape \(3, 2\) for predictions of shape \(3, 1\)"):
        reg(inputs, {"reg": torch.zeros(3, 2)})


def test_generate_from_an_empty_prompt_is_refused_in_one_line():
    with pytest.raises(ValueError, match=r"generate: the 'text' prompt is empty; give at least one token"):
        lm_model().generate({"text": collate([TokenSet("text", ids=torch.zeros(0, dtype=torch.long))])}, 3)


def test_ids_and_class_targets_of_any_integer_dtype_train_and_other_targets_are_named():
    """A tokenizer's uint32 / int32 ids and a dataset's int32 / uint8 labels are int64 to the model
    (same loss as int64); (B, 1) labels, bool or float (B,) ones are refused naming the head."""
    torch.manual_seed(0)
    model = lm_model()
    ids = rand_text(7).ids
    want = model({"text": collate([next_token_set("text", ids)])}).loss
    for dtype in (np.uint32, np.int32, np.uint16):
        got = model({"text": collate([next_token_set("text", torch.from_numpy(ids.numpy().astype(dtype)))])}).loss
        torch.testing.assert_close(got, want)
    assert TokenSet("text", ids=ids.numpy().astype(np.uint8)).ids.dtype == torch.int64  # numpy arrays are taken too
    with pytest.raises(TypeError, match=r"TokenSet\('text'\): ids must be a tensor \(or a numpy array\), got list"):
        TokenSet("text", ids=[1, 2, 3])
    image = ModalityConfig.from_spec(IMAGE)
    cls = MultimodalTransformer(ModelConfig(TrunkConfig(dim=32, depth=1, num_heads=4, mode="encoder"), {"image": image},
                                            {"cls": HeadConfig("classify", "image", num_outputs=5, pool="mean")}, encoder_inputs=["image"]))  # fmt: skip
    inputs = {"image": collate([TokenSet("image", values=torch.randn(4, 12)) for _ in range(3)])}
    y = torch.tensor([0, 4, 2])
    want = cls(inputs, {"cls": y}).loss
    torch.testing.assert_close(cls(inputs, {"cls": y.int()}).loss, want)
    torch.testing.assert_close(cls(inputs, {"cls": y.to(torch.uint8)}).loss, want)
    torch.testing.assert_close(cls(inputs, {"cls": torch.nn.functional.one_hot(y, 5).float()}).loss, want)  # probabilities
    for bad in (y[:, None], y.bool(), y.float(), torch.zeros(3, 4)):
        with pytest.raises(ValueError, match=r"targets\['cls'\]: .* head 'cls' takes \(3,\) integer class ids or \(3, 5\) class probabilities"):
            cls(inputs, {"cls": bad})


def test_packed_decoder_tokens_without_memory_need_the_null_token():
    """Packed encoder-decoder rows: an example with text but no audio has no memory of its own;
    without a null memory token (subset_inputs=True) its queries would attend to the other
    examples' audio, so the model refuses; with it, the example computes what it computes alone."""
    from tokenizers_mm import pack_examples

    examples = [{"text": rand_text(5)}, {"audio": TokenSet("audio", values=torch.randn(6, 8)), "text": rand_text(4, seed=1)}]
    inputs, placement = pack_examples(examples, 64, stride={"audio": 2})
    with pytest.raises(ValueError, match="an example has decoder tokens but no encoder tokens, and this model has no null memory token"):
        _speech_model()(inputs)
    model = _speech_model(subset_inputs=True)
    torch.nn.init.normal_(model.null_memory, std=0.02)
    packed = model(inputs).logits["lm"][0]
    seg = inputs["text"].segments[0]
    for (_, segment), ex in zip(placement, examples):
        alone = model({k: collate([v]) for k, v in ex.items()}).logits["lm"][0]
        torch.testing.assert_close(packed[seg == segment], alone, atol=1e-5, rtol=1e-4)


def test_a_pooled_head_refuses_packed_rows_and_a_loss_mask_must_be_bool():
    """A pooled head reads one vector per row: on packed rows (several examples each) that would mix
    examples, so it is refused with what to do; a 0/1 integer loss_mask is named where it is made."""
    model = multimodal("encoder")
    image = pack([TokenSet("image", values=torch.randn(n, 12)) for n in (3, 4)], 8)
    with pytest.raises(ValueError, match="head 'cls' pools each row, and the 'image' rows are packed"):
        model({"image": image, "text": collate([rand_text(4)])})
    with pytest.raises(ValueError, match="loss_mask must be bool .* got torch.int64"):
        TokenSet("text", ids=torch.tensor([1, 2]), targets=torch.tensor([2, 3]), loss_mask=torch.tensor([1, 0]))


def test_a_target_for_a_head_whose_tokens_the_batch_lacks_is_refused():
    """subset_inputs (a generalist's task batches): a batch without a head's modality skips that
    head, and a target given for it was skipped with it, training nothing."""
    mods = {"text": ModalityConfig.from_spec(TEXT), "image": ModalityConfig.from_spec(IMAGE)}
    model = MultimodalTransformer(ModelConfig(TrunkConfig(dim=32, depth=1, num_heads=4, mode="encoder"), mods,
                                              {"cls": HeadConfig("classify", "image", num_outputs=3, pool="mean")},
                                              encoder_inputs=["image", "text"], subset_inputs=True))  # fmt: skip
    text = collate([rand_text(3), rand_text(2)])
    assert model({"text": text}).logits == {}  # no image tokens: no head runs
    with pytest.raises(ValueError, match=r"^targets\['cls'\]: head 'cls' reads 'image' and this batch carries no 'image' tokens$"):
        model({"text": text}, {"cls": torch.tensor([0, 1])})


def test_a_pooled_head_refuses_a_sample_with_nothing_to_read():
    """A sample with no tokens of a pooled head's modality (an empty text) was classified from a
    zero vector, its loss trained on nothing; with learned tokens (CLS) a mean over none of the
    content was the same. Each is named by its row; the token heads and LM losses skip such rows."""
    model = multimodal("encoder")
    text = collate([rand_text(3), rand_text(2)])
    empty = TokenSet("image", values=torch.zeros(0, 12))
    with pytest.raises(ValueError, match="sample 1 of the batch has no 'image' tokens for head 'cls' to average"):
        model({"image": collate([TokenSet("image", values=torch.randn(3, 12)), empty]), "text": text}, {"cls": torch.tensor([0, 1])})
    mods = {"image": ModalityConfig.from_spec(IMAGE, learned_types=["extra"])}
    pooled = MultimodalTransformer(ModelConfig(TrunkConfig(dim=32, depth=1, num_heads=4, mode="encoder"), mods,
                                               {"cls": HeadConfig("classify", "image", num_outputs=3, pool="mean")}, encoder_inputs=["image"]))  # fmt: skip
    only_cls = TokenSet("image", values=torch.zeros(1, 12), types=torch.tensor([1]))
    full = TokenSet("image", values=torch.randn(3, 12), types=torch.tensor([1, 0, 0]))
    with pytest.raises(ValueError, match=r"sample 0 of the batch has no 'image' content tokens \(only its learned tokens"):
        pooled({"image": collate([only_cls, full])})
    assert pooled({"image": collate([full, full])}).logits["cls"].isfinite().all()
    mask = torch.tensor([[True] * 4, [False, False, True, True]])  # a batch made by hand, padded on the left
    left = TokenBatch("image", None, torch.randn(2, 4, 12), torch.tensor([[0, 1, 2, 3], [0, 0, 0, 1]]), torch.zeros(2, 4, dtype=torch.long), mask)
    with pytest.raises(ValueError, match=r"sample 1 of the batch starts with padding in 'image'; head 'reg' \(pool='cls'\) reads each sample's first token"):
        model({"image": left, "text": text})  # (it read the padding's vector)
    lm = lm_model()  # a decoder's LM loss over rows with and without targets: the empty row adds nothing
    loss = lm({"text": collate([next_token_set("text", torch.arange(5)), TokenSet("text", ids=torch.zeros(0, dtype=torch.long),
                                                                                   targets=torch.zeros(0, dtype=torch.long))])}).loss  # fmt: skip
    assert torch.allclose(loss, lm({"text": collate([next_token_set("text", torch.arange(5))])}).loss, atol=1e-5)


def test_decoding_needs_a_prompt_at_positions_from_zero():
    """generate and beam_search continue a prompt at positions 0 .. N-1 (new tokens take N, N+1,
    ...); a prompt placed elsewhere (a window of a longer text) is refused, not decoded two ways."""
    model = lm_model()
    ts = rand_text(4)
    shifted = TokenSet("text", ids=ts.ids, positions=torch.arange(3, 7))
    for decode in (lambda b: model.generate(b, 2, temperature=0), lambda b: model.beam_search(b, 2, beam_size=2, eos_id=0)):
        with pytest.raises(ValueError, match=r"the prompt's positions must be 0 \.\. 3"):
            decode({"text": collate([shifted])})
        assert decode({"text": collate([ts])}).shape[1] >= 4


def test_inputs_and_targets_the_model_would_misread_are_named():
    """A batch key or a target naming no modality or head (silently ignored before: nothing trained
    on it), and tokens beyond a modality's declarations (a type past its own read the next
    modality's type row; a position past the table failed as a bare IndexError)."""
    model = multimodal("encoder-decoder").eval()
    image = collate([TokenSet("image", values=torch.randn(4, 12))])
    text = collate([rand_text(3, 1)])
    with pytest.raises(ValueError, match=r"model inputs \['pointcloud'\]: this model reads \['image', 'text'\]"):
        model({"image": image, "text": text, "pointcloud": image})
    with pytest.raises(TypeError, match=r"model inputs: a list; expected a dict \{modality: TokenBatch\}, as \{'image': ..., 'text': ...\}"):
        model([image, text])  # (was "unhashable type: 'TokenBatch'")
    with pytest.raises(TypeError, match=r"targets: a Tensor; expected a dict \{head name: tensor\} \(heads: "):
        model({"image": image, "text": text}, torch.tensor([1]))
    with pytest.raises(ValueError, match=r"targets \['label'\]: this model's heads are \['cls', 'lm', 'reg'\]"):
        model({"image": image, "text": text}, {"label": torch.tensor([1])})
    cases = [
        (TokenSet("image", values=torch.randn(4, 12), types=torch.tensor([0, 1, 2, 0])), r"type 2 is beyond the declared types \('patch', 'extra'\) \(sample 1 of the batch\)"),
        (TokenSet("image", values=torch.randn(20, 12)), r"position 19 is beyond the declared table of 16 positions \(sample 1 of the batch\)"),
    ]
    for bad, message in cases:  # the second sample of the batch
        with pytest.raises(ValueError, match=message):
            model({"image": collate([TokenSet("image", values=torch.randn(4, 12)), bad]), "text": collate([rand_text(3, 1)] * 2)})
    with pytest.raises(ValueError, match="values have width 13"):  # (one width for the whole batch)
        model({"image": collate([TokenSet("image", values=torch.randn(4, 13))]), "text": text})
    model({"image": image, "text": text}, {"cls": torch.tensor([1])})  # a good batch passes


def test_class_targets_outside_a_heads_classes_are_named_by_sample():
    """cross_entropy said only "Target 7 is out of bounds" (on a GPU, a device-side assert): a class
    target outside the head's classes is named by sample (and token), for pooled, LM and per-token
    heads; targets where the head takes no loss (-100, loss_mask off, other token types) are not read."""
    model = multimodal("encoder")
    image = collate([TokenSet("image", values=torch.randn(3, 12)), TokenSet("image", values=torch.randn(2, 12))])
    text = collate([rand_text(3), rand_text(2)])
    with pytest.raises(ValueError, match=r"head 'cls': sample 1 of the batch has target 3; expected a class from 0 to 2 \(-100: no loss\)"):
        model({"image": image, "text": text}, {"cls": torch.tensor([0, 3])})
    assert model({"image": image, "text": text}, {"cls": torch.tensor([2, -100])}).loss.isfinite()
    lm = lm_model()
    bad = TokenSet("text", ids=torch.arange(3), targets=torch.tensor([1, 50, 2]))
    with pytest.raises(ValueError, match=r"head 'lm': sample 1 of the batch has target 50 at token 1; expected a class from 0 to 49"):
        lm({"text": collate([next_token_set("text", torch.arange(4)), bad])})
    masked = TokenSet("text", ids=torch.arange(3), targets=torch.tensor([1, 50, 2]), loss_mask=torch.tensor([True, False, True]))
    assert lm({"text": collate([masked])}).loss.isfinite()
    mods = {"image": ModalityConfig.from_spec(IMAGE)}  # actions as per-token classes at the "extra" tokens, 2 ids of 3 classes each
    tokens = MultimodalTransformer(ModelConfig(TrunkConfig(dim=32, depth=1, num_heads=4, mode="encoder"), mods,
                                               {"act": HeadConfig("token_classify", "image", num_outputs=6, token_type="extra")},
                                               encoder_inputs=["image"]))  # fmt: skip
    types = torch.tensor([0, 1, 0])
    good = TokenSet("image", values=torch.randn(3, 12), types=types, targets=torch.tensor([[7, 7], [2, 0], [7, 7]]))  # 7s at patches: unread
    assert tokens({"image": collate([good])}).loss.isfinite()
    wrong = TokenSet("image", values=torch.randn(3, 12), types=types, targets=torch.tensor([[0, 0], [1, 3], [0, 0]]))
    with pytest.raises(ValueError, match=r"head 'act': sample 1 of the batch has target 3 at token 1; expected a class from 0 to 2"):
        tokens({"image": collate([good, wrong])})


def test_batches_the_model_would_misread_are_refused_in_one_line():
    """Modalities of different batch sizes (an encoder-decoder broadcast a 1-row memory to every
    decoder row), one sample's TokenSet, an lm head's targets given as targets= (read from the
    TokenBatch: they trained nothing), and a head on a modality no stack reads."""
    model = multimodal("encoder-decoder").eval()
    one, two = collate([TokenSet("image", values=torch.randn(4, 12))]), collate([rand_text(3), rand_text(3, 1)])
    with pytest.raises(ValueError, match=r"model inputs: the modalities' batch sizes differ \(image 1, text 2\)"):
        model({"image": one, "text": two})
    with pytest.raises(ValueError, match=r"generate: the modalities' batch sizes differ \(image 1, text 2\)"):
        model.generate({"image": one, "text": two}, 2)
    with pytest.raises(ValueError, match=r"forward: memory= holds 1 rows for a batch of 2"):
        model.forward_features({"text": two}, memory=model.encode_memory({"image": one}))
    with pytest.raises(TypeError, match=r"'text' is a TokenSet, expected a TokenBatch \(collate\(\[\.\.\.\]\) the samples' TokenSets into one\)"):
        model({"image": one, "text": rand_text(3)})
    with pytest.raises(ValueError, match=r"targets \['lm'\]: an lm or a per-token head reads its modality's TokenBatch.targets"):
        model({"image": one, "text": collate([rand_text(3)])}, {"lm": torch.tensor([[1, 2, 3]])})
    with pytest.raises(ValueError, match=r"heads \['cls'\] read \['image'\], which neither the encoder nor the decoder reads"):
        ModelConfig(TrunkConfig(dim=32, depth=1, num_heads=4, mode="encoder"), {"text": ModalityConfig.from_spec(TEXT), "image": ModalityConfig.from_spec(IMAGE)},
                    {"cls": HeadConfig("classify", "image", num_outputs=3)}, encoder_inputs=["text"])  # fmt: skip


def test_a_per_token_head_on_a_strided_stem_reads_the_tokens_the_trunk_keeps():
    """Whisper's conv stem keeps every second frame: a per-token head's types, targets and loss
    mask are taken at those frames (they were read at full length: a shape error)."""
    torch.manual_seed(0)
    spec = ModalitySpec("audio", ("frame", "mark"), 40, value_dim=8)
    cfg = ModelConfig(TrunkConfig(dim=16, depth=1, num_heads=2, mode="encoder"), {"audio": ModalityConfig.from_spec(spec, embedder="whisper_conv")},
                      {"tag": HeadConfig("token_classify", "audio", num_outputs=3, token_type="frame"),
                       "cls": HeadConfig("classify", "audio", num_outputs=2, pool="mean")}, encoder_inputs=["audio"])  # fmt: skip
    model = MultimodalTransformer(cfg).eval()
    sets = [TokenSet("audio", values=torch.randn(n, 8), types=torch.tensor([1] + [0] * (n - 1)), targets=torch.randint(0, 3, (n,)),
                     loss_mask=torch.rand(n) > 0.3) for n in (9, 6)]  # fmt: skip
    batch = collate(sets)
    out = model({"audio": batch}, {"cls": torch.tensor([0, 1])})
    assert out.logits["tag"].shape == (2, 5, 3)
    kept = batch.mask[:, ::2] & (batch.types[:, ::2] == 0) & batch.loss_mask[:, ::2]
    want = torch.nn.functional.cross_entropy(out.logits["tag"][kept], batch.targets[:, ::2][kept])
    torch.testing.assert_close(out.losses["tag"], want)


def test_sampling_arguments_are_checked():
    """top_k=0 is no cut (as Hugging Face's); a negative temperature (it favoured the least likely
    tokens), a negative top_k and a beam size below 1 are refused in one line."""
    model = lm_model()
    inputs = {"text": collate([rand_text(3)])}
    a = model.generate(inputs, 4, top_k=0, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, model.generate(inputs, 4, top_k=None, generator=torch.Generator().manual_seed(1)))
    for kw, message in [(dict(temperature=-1.0), r"temperature=-1.0 must be a finite number >= 0"), (dict(top_k=-2), r"top_k=-2 must be a positive number")]:
        with pytest.raises(ValueError, match=message):
            model.generate(inputs, 2, **kw)
    with pytest.raises(ValueError, match=r"beam_search: beam_size=0 must be a whole number >= 1"):
        model.beam_search(inputs, 2, beam_size=0)
    with pytest.raises(ValueError, match=r"^generate: temperature=None must be a finite number >= 0"):
        model.generate(inputs, 2, temperature=None)
    with pytest.raises(TypeError, match=r"^generate: generator is a torch.Generator \(torch.Generator\(\).manual_seed\(123\) for a seed\), got int$"):
        model.generate(inputs, 2, generator=123)
    assert model.generate(inputs, np.int64(2), top_k=np.int64(5), temperature=np.float32(0.8)).shape == (1, 5)  # NumPy numbers, as before
    assert model.beam_search(inputs, np.int64(2), beam_size=np.int64(2)).shape[1] <= 5
    with pytest.raises(ValueError, match=r"^generate: top_k=2.5 must be a positive number of tokens"):
        model.generate(inputs, 2, top_k=2.5)
    for search in (model.generate, model.beam_search):  # (range(-3) or range(2.0) gave the prompt back, or a TypeError)
        for n in (-3, 2.0):
            with pytest.raises(ValueError, match=rf"^{search.__name__}: max_new_tokens={n!r} must be a whole number of at least 0$"):
                search(inputs, n)


def test_loss_counts_are_what_each_head_averages_and_a_share_reaches_every_head():
    """`loss_counts` (a training step's weights) equals what forward divides by, in a count's own
    dtype (half-precision targets: 67551 rounded, inf in fp16); with loss_norms, a head with logits
    but no targets still joins the backward pass (DDP waits for a gradient of every used head)."""
    torch.manual_seed(0)
    image = ModalityConfig.from_spec(IMAGE)
    reg = MultimodalTransformer(ModelConfig(TrunkConfig(dim=32, depth=1, num_heads=4, mode="encoder"), {"image": image},
                                            {"reg": HeadConfig("regress", "image", num_outputs=2048, pool="mean"),
                                             "cls": HeadConfig("classify", "image", num_outputs=3)}, encoder_inputs=["image"]))  # fmt: skip
    inputs = {"image": collate([TokenSet("image", values=torch.randn(4, 12)) for _ in range(33)])}
    y = torch.randn(33, 2048).half()
    counts = reg.loss_counts(inputs, {"reg": y, "cls": torch.tensor([1, -100] * 16 + [2])})
    assert counts["reg"].item() == 33 * 2048 and counts["cls"].item() == 17
    out = reg(inputs, {"reg": y})
    torch.testing.assert_close(out.losses["reg"], ((out.logits["reg"] - y.float()) ** 2).mean())
    share = reg(inputs, {"reg": y}, loss_norms={"reg": torch.tensor(2.0 * 33 * 2048), "cls": torch.tensor(1.0)})
    share.loss.backward()
    assert reg.heads["cls"].proj.weight.grad is not None  # (zero: no target here, but reached)


def test_per_token_losses_skip_ignored_and_unread_targets():
    """token_classify: a -100 target is no loss and no term of the mean (F.cross_entropy's
    ignore_index; it counted in the mean before); token_regress: a NaN target where no loss is read
    leaves the gradients finite; an lm head on a prefix modality (it would see its targets) is refused."""
    import torch.nn.functional as F

    spec = ModalitySpec("traj", ("state", "action"), max_positions=8, value_dim=3)
    heads = {"act": HeadConfig("token_classify", "traj", num_outputs=4, token_type="action"),
             "val": HeadConfig("token_regress", "traj", num_outputs=2, token_type="state")}  # fmt: skip
    types, ids = torch.tensor([0, 1, 0, 1, 0, 1]), torch.tensor([0, 2, 0, -100, 0, 3])
    regress = torch.randn(6, 2)
    regress[types == 1] = float("nan")  # (no loss at action tokens for the state head)
    for kind, targets in (("act", ids), ("val", regress)):
        torch.manual_seed(0)
        model = MultimodalTransformer(ModelConfig(TrunkConfig(dim=16, depth=1, num_heads=2), {"traj": ModalityConfig.from_spec(spec)},
                                                  {kind: heads[kind]}, decoder_inputs=["traj"]))  # fmt: skip
        batch = collate([TokenSet("traj", values=torch.randn(6, 3), types=types, targets=targets)])
        out = model({"traj": batch})
        logits, state = out.logits[kind][0], types == 0
        if kind == "act":
            kept = (types == 1) & (ids != -100)
            assert out.losses["act"].item() == pytest.approx(F.cross_entropy(logits[kept], ids[kept]).item(), rel=1e-5)
            assert int(model.loss_counts({"traj": batch})["act"]) == 2
        else:
            assert out.losses["val"].item() == pytest.approx(F.mse_loss(logits[state], regress[state]).item(), rel=1e-5)
        out.losses[kind].backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    text = ModalityConfig.from_spec(TEXT)
    with pytest.raises(ValueError, match=r"heads \['lm'\]: an lm head predicts the next token, and prefix_inputs \['text'\] attend both ways"):
        ModelConfig(TrunkConfig(dim=16, depth=1, num_heads=2), {"text": text}, {"lm": HeadConfig("lm", "text", num_outputs=50)},
                    decoder_inputs=["text"], prefix_inputs=["text"])  # fmt: skip
