"""Trajectory tokenizer: the R s a layout, returns-to-go, normalisation, Gato's binning, bad episodes;
and Decision Transformer import parity with Hugging Face's DecisionTransformerModel."""

import numpy as np
import pytest
import torch

from models import MultimodalTransformer, dt_model_config, load_hf_decision_transformer
from tokenizers_mm import TokenBatch, TrajectoryTokenizer, collate, gato_decode, gato_encode, load_tokenizer, returns_to_go
from tokenizers_mm.trajectory import mu_law, mu_law_inverse


def episode(T=7, S=4, seed=0, discrete=True, A=2):
    rng = np.random.default_rng(seed)
    acts = rng.integers(0, A, T) if discrete else rng.uniform(-1, 1, (T, A)).astype(np.float32)  # the default space
    return {"observations": rng.normal(size=(T, S)).astype(np.float32), "actions": acts, "rewards": rng.normal(size=T).astype(np.float32)}


def test_returns_to_go_known_answer():
    np.testing.assert_allclose(returns_to_go(np.array([1.0, 2.0, 3.0])), [6.0, 5.0, 3.0])
    np.testing.assert_allclose(returns_to_go(np.array([1.0, 2.0, 3.0]), gamma=0.5), [1 + 0.5 * 2 + 0.25 * 3, 2 + 0.5 * 3, 3.0])


def test_layout_positions_types_targets_and_round_trip(tmp_path):
    ep = episode(T=7)
    tok = TrajectoryTokenizer(4, 2, discrete=True, context=5, max_timestep=50, rtg_scale=10.0).fit([ep])
    ts = tok.encode(ep, start=4)  # steps 4, 5, 6: the window runs past the end, so it is shorter
    assert ts.values.shape == (9, 4)
    assert ts.positions.tolist() == [4, 4, 4, 5, 5, 5, 6, 6, 6] and ts.types.tolist() == [0, 1, 2] * 3
    assert ts.loss_mask.tolist() == [False, True, False] * 3
    assert ts.targets[1::3].tolist() == ep["actions"][4:].tolist()  # state tokens predict the action taken there
    np.testing.assert_allclose(ts.values[0::3, 0].numpy(), returns_to_go(ep["rewards"])[4:] / 10.0, rtol=1e-6)
    np.testing.assert_allclose(tok.state_mean, ep["observations"].mean(0), rtol=1e-5)
    back = tok.decode(ts)
    np.testing.assert_allclose(back["observations"], ep["observations"][4:], atol=1e-5)
    assert back["actions"].tolist() == ep["actions"][4:].tolist() and back["timesteps"].tolist() == [4, 5, 6]
    tok.save(tmp_path)
    again = load_tokenizer(tmp_path)
    assert again.config() == tok.config() and torch.equal(again.encode(ep, 2).values, tok.encode(ep, 2).values)


def test_continuous_actions_scale_to_unit_and_back():
    ep = episode(T=5, discrete=False, A=1)
    tok = TrajectoryTokenizer(4, 1, discrete=False, context=5, action_low=[-2.0], action_high=[2.0])
    ts = tok.encode(ep)
    np.testing.assert_allclose(ts.targets[1::3, 0].numpy(), ep["actions"][:, 0] / 2, rtol=1e-6)
    np.testing.assert_allclose(tok.decode_action(ts.targets[1]), ep["actions"][0], rtol=1e-5)
    picked = TrajectoryTokenizer(4, 3, discrete=True).decode_action(torch.tensor([0.1, 2.0, -1.0]))
    assert picked == 1 and type(picked) is int  # a plain int: FrozenLake-style environments index tables with it
    binned = TrajectoryTokenizer(4, 1, discrete=False, action_low=[-2.0], action_high=[2.0], action_bins=1024).encode(ep)
    assert binned.targets.dtype == torch.long and binned.targets.shape == (15, 1)


def test_gato_binning_round_trip_error_is_bounded():
    x = torch.cat([torch.linspace(-256, 256, 20001), torch.linspace(-1, 1, 2001)])
    assert torch.allclose(mu_law_inverse(mu_law(x)), x, atol=1e-3, rtol=1e-5)
    ids = gato_encode(x)
    assert ids.min() == 0 and ids.max() == 1023
    # uniform bins in the companded domain: at most one bin width there, fine near 0, coarse far out
    y_err = (mu_law(gato_decode(ids)) - mu_law(x)).abs()
    assert y_err.max() <= 1 / 1024 + 1e-6
    small = x.abs() <= 1
    assert (gato_decode(ids) - x)[small].abs().max() < 0.01  # values near 0 come back to ~1%
    assert gato_encode(torch.tensor([1e9, -1e9])).tolist() == [1023, 0]  # out of range clips to the end bins
    a = torch.linspace(-1, 1, 5001)  # scaled actions: uniform bins without companding
    assert (gato_decode(gato_encode(a, companding=False), companding=False) - a).abs().max() <= 1 / 1024 + 1e-6


def test_bad_episodes_are_named():
    tok = TrajectoryTokenizer(4, 2, discrete=True, context=3, max_timestep=10)
    cases = [
        ({**episode(), "observations": np.zeros((0, 4)), "actions": np.zeros(0, int), "rewards": np.zeros(0)}, "the episode is empty"),
        ({**episode(), "observations": np.full((7, 4), np.nan)}, "observations hold NaN"),
        ({**episode(), "rewards": np.array([0, 0, np.inf, 0, 0, 0, 0])}, "rewards hold NaN or infinite values \\(first at step 2\\)"),
        ({**episode(), "actions": np.array([0, 1, 2, 0, 1, 0, 1])}, r"action ids must lie in \[0, 2\)"),
        ({**episode(), "actions": np.zeros((7, 3))}, r"discrete actions must be integer ids of shape \(T,\), got shape \(7, 3\)"),
        ({**episode(), "actions": np.array([0, 1, 0, np.nan, 1, 0, 1])}, "discrete actions must be integer ids; step 3's is nan"),
        ({**episode(), "actions": np.array([0, 1, 0, 1, 0.5, 0, 1])}, "discrete actions must be integer ids; step 4's is 0.5"),
        ({**episode(), "actions": np.zeros(6, int)}, "7 observations but 6 actions"),
        ({**episode(), "observations": np.zeros((7, 5))}, r"observations must have shape \(T, 4\)"),
        (episode(T=11), "11 steps exceed the timestep table"),
    ]
    for ep, message in cases:
        with pytest.raises(ValueError, match=f"ep 3: {message}"):
            tok.encode(ep, name="ep 3")
    assert len(tok.encode(episode(T=1))) == 3  # a one-step episode is one (R, s, a) step
    with pytest.raises(ValueError, match=r"continuous actions must have shape \(T, 2\)"):
        TrajectoryTokenizer(4, 2, discrete=False).encode(episode(discrete=False, A=3), name="e")
    continuous = {**episode(discrete=False, A=2), "actions": np.full((7, 2), 0.5)}
    continuous["actions"][4, 1] = 2.5  # beyond the declared [-1, 1]: not clipped into a target silently
    with pytest.raises(ValueError, match=r"e: action 1 at step 4 is 2.5, outside the declared space \[-1, 1\]"):
        TrajectoryTokenizer(4, 2, discrete=False).encode(continuous, name="e")
    clipped = TrajectoryTokenizer(4, 2, discrete=False, context=7, clip_actions=True).encode(continuous)  # as the environment clips
    assert clipped.targets[1::3][4].tolist() == [0.5, 1.0]
    continuous["actions"][4, 1] = 1 + 1e-5  # rounding in a stored dataset passes
    assert len(TrajectoryTokenizer(4, 2, discrete=False, context=7).encode(continuous)) == 21
    with pytest.raises(ValueError, match="the bounds and their span must be finite"):  # no scale to [-1, 1] from an unbounded side (it gave NaN or -1)
        TrajectoryTokenizer(4, 2, discrete=False, action_low=[-np.inf, -1], action_high=[1, 1])
    with pytest.raises(ValueError, match="the bounds and their span must be finite"):  # each finite, the span not (high - low overflows)
        TrajectoryTokenizer(4, 1, discrete=False, action_low=[-3.4e38], action_high=[3.4e38])
    for scale in (0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="rtg_scale=.* must be a finite number above 0"):
            TrajectoryTokenizer(4, 2, discrete=True, rtg_scale=scale)
    for gamma in (0, 1.5, float("nan")):  # (0: rollouts divide by it)
        with pytest.raises(ValueError, match=r"gamma=.* must lie in \(0, 1\]"):
            TrajectoryTokenizer(4, 2, discrete=True, gamma=gamma)
    with pytest.raises(ValueError, match="ep 2: no 'rewards'; an episode has observations, actions and rewards"):
        tok.encode({k: v for k, v in episode().items() if k != "rewards"}, name="ep 2")
    huge = {**episode(), "rewards": np.full(7, 3e38)}  # each finite, their sum not in float32
    with pytest.raises(ValueError, match="ep 3: its rewards add up beyond float32's range"):
        tok.encode(huge, name="ep 3")
    with pytest.raises(ValueError, match=r"context=30 steps must lie in \[1, max_timestep=20\]"):
        TrajectoryTokenizer(4, 2, discrete=True, context=30, max_timestep=20)


@pytest.mark.parametrize("discrete", [False, True])
def test_action_predictions_equal_hf_decision_transformer(discrete):
    transformers = pytest.importorskip("transformers")
    S, A, K, B = 5, 3, 6, 2
    cfg = transformers.DecisionTransformerConfig(state_dim=S, act_dim=A, hidden_size=32, n_layer=2, n_head=2, max_ep_len=50,
                                                 action_tanh=not discrete)  # fmt: skip
    torch.manual_seed(0)
    hf = transformers.DecisionTransformerModel(cfg).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.normal_(0, 0.2)
    ours = load_hf_decision_transformer(MultimodalTransformer(dt_model_config(cfg.to_dict(), discrete)), hf.state_dict()).eval()
    # episodes through our tokenizer; the same numbers into Hugging Face's model
    tok = TrajectoryTokenizer(S, A, discrete=discrete, context=K, max_timestep=50, rtg_scale=10.0)
    eps = [episode(T=20, S=S, seed=s, discrete=discrete, A=A) for s in range(B)]
    starts = [3, 11]
    sets = [tok.encode(ep, start) for ep, start in zip(eps, starts)]
    v = collate(sets)
    vals = v.values.reshape(B, K, 3, -1)
    with torch.no_grad():
        _, ref, _ = hf(states=vals[:, :, 1, :S], actions=vals[:, :, 2, :A], rewards=torch.zeros(B, K, 1), returns_to_go=vals[:, :, 0, :1],
                       timesteps=v.positions[:, ::3], attention_mask=torch.ones(B, K), return_dict=False)  # fmt: skip
        got = ours({"trajectory": v}).logits["action"][:, 1::3]
    assert ref.abs().max() > 0.1
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)
    emb = ours.embedders["trajectory"]  # one matmul for the three layers; each token gets its type's layer (a type beyond: type 0's)
    types = torch.tensor([[0, 1, 2, 3]])
    batch = TokenBatch("trajectory", None, torch.randn(1, 4, v.values.shape[-1]), torch.zeros(1, 4, dtype=torch.long), types,
                       torch.ones(1, 4, dtype=torch.bool))  # fmt: skip
    with torch.no_grad():
        layer = [t if t < 3 else 0 for t in types[0].tolist()]
        want = torch.stack([emb.tok[t](batch.values[0, i, : emb.type_value_dims[t]]) for i, t in enumerate(layer)])
        torch.testing.assert_close(emb(batch)[0], emb.norm(want + emb.pos.weight[0]))


def test_continuous_action_bounds_must_span_a_range():
    with pytest.raises(ValueError, match=r"action_high \[1.0, 0.5\] must exceed action_low \[-1.0, 0.5\]"):
        TrajectoryTokenizer(3, 2, discrete=False, action_low=[-1, 0.5], action_high=[1, 0.5])
    with pytest.raises(ValueError, match=r"fit: no episodes; expected at least one"):  # (was numpy's "need at least one array")
        TrajectoryTokenizer(4, 2, discrete=True).fit([])


def test_decode_reads_a_batch_row_by_row_and_bad_arrays_are_named():
    """A collated batch decodes to one episode window per row (its real tokens, not the rows run
    together); observations ragged, not numbers, or beyond float32 once tokenized are named."""
    tok = TrajectoryTokenizer(4, 2, discrete=True, context=5).fit([episode()])
    long, short = tok.encode(episode(T=7)), tok.encode(episode(T=3, seed=1))
    rows = tok.decode(collate([long, short]))
    assert [len(r["actions"]) for r in rows] == [5, 3]
    for row, one in zip(rows, (long, short)):
        want = tok.decode(one)
        assert all(np.array_equal(row[k], want[k]) for k in want)
    with pytest.raises(TypeError, match="trajectory decode: expected a TokenSet of .* got Tensor"):
        tok.decode(long.values)
    ep = episode()
    for obs, message in ((np.full((7, 4), 1e300), r"ep 3: observations hold values beyond float32's range \(first at step 0\)"),
                         ([[0.0] * 4] * 6 + [[0.0]], r"ep 3: observations are not an array of one shape"),
                         ([["a"] * 4] * 7, r"ep 3: observations must be real numbers, got an array of <U1"),
                         (np.zeros((7, 4), complex), r"ep 3: observations must be real numbers, got an array of complex128"),
                         (np.float32(0), r"ep 3: observations must hold one entry per step, got a single value \(0.0\)")):  # fmt: skip
        with pytest.raises(ValueError, match=message):
            tok.encode({**ep, "observations": obs}, name="ep 3")
    with pytest.raises(ValueError, match=r"ep 3: rewards hold values beyond float32's range \(first at step 2\)"):
        tok.encode({**ep, "rewards": np.array([0, 0, 1e300, 0, 0, 0, 0])}, name="ep 3")
    with pytest.raises(ValueError, match=r"ep 3: rewards must be one number per step, shape \(T,\), got \(7, 2\)"):  # (was "14 rewards")
        tok.encode({**ep, "rewards": np.ones((7, 2))}, name="ep 3")
    with pytest.raises(ValueError, match=r"ep 3: actions must hold one entry per step, got a single value \(0\)"):
        tok.encode({**ep, "actions": np.int64(0)}, name="ep 3")
