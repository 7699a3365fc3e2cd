"""Property tests (hypothesis) for the trajectory tokenizer and Gato's binning: any well-typed
episode tokenizes to 3 tokens per step with the documented layout and decodes back; any finite
value survives binning within one companded bin."""

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from tokenizers_mm import TrajectoryTokenizer, gato_decode, gato_encode
from tokenizers_mm.trajectory import mu_law

finite = st.floats(-1e3, 1e3, allow_nan=False, width=32)


@st.composite
def episodes(draw):
    T, S = draw(st.integers(1, 40)), draw(st.integers(1, 6))
    discrete = draw(st.booleans())
    A = draw(st.integers(2, 5)) if discrete else draw(st.integers(1, 3))
    obs = draw(arrays(np.float32, (T, S), elements=finite))
    acts = draw(arrays(np.int64, T, elements=st.integers(0, A - 1))) if discrete else draw(arrays(np.float32, (T, A), elements=st.floats(-1, 1, width=32)))
    rew = draw(arrays(np.float32, T, elements=finite))
    return {"observations": obs, "actions": acts, "rewards": rew}, S, A, discrete, draw(st.integers(0, T - 1)), draw(st.integers(1, 12))


@settings(max_examples=60, deadline=None)
@given(episodes())
def test_any_episode_tokenizes_and_decodes(case):
    ep, S, A, discrete, start, K = case
    tok = TrajectoryTokenizer(S, A, discrete=discrete, context=K, max_timestep=64).fit([ep])
    ts = tok.encode(ep, start)
    n = min(K, len(ep["rewards"]) - start)
    assert len(ts) == 3 * n and ts.values.shape == (3 * n, max(1, S, A))
    assert ts.types.tolist() == [0, 1, 2] * n and ts.positions.tolist() == [t for t in range(start, start + n) for _ in range(3)]
    assert bool(torch.isfinite(ts.values).all())
    back = tok.decode(ts)
    np.testing.assert_allclose(back["observations"], ep["observations"][start : start + n], rtol=1e-4, atol=1e-2)
    if discrete:
        assert back["actions"].tolist() == ep["actions"][start : start + n].tolist()
    else:  # scaled to [-1, 1] and back (the default space is [-1, 1])
        np.testing.assert_allclose(back["actions"], ep["actions"][start : start + n], atol=1e-6)
    rtg = np.cumsum(ep["rewards"][::-1].astype(np.float64))[::-1]  # the rewards from each step on (gamma 1)
    np.testing.assert_allclose(back["returns_to_go"], rtg[start : start + n], rtol=1e-5, atol=1e-2)


@settings(max_examples=200, deadline=None)
@given(st.floats(-1e6, 1e6, allow_nan=False, width=32))
def test_gato_binning_stays_within_one_companded_bin(x):
    v = torch.tensor([x])
    ids = gato_encode(v)
    assert 0 <= int(ids) < 1024
    if abs(x) <= 256:  # inside mu-law's range [-M, M]
        assert abs(float(mu_law(gato_decode(ids)) - mu_law(v))) <= 1 / 1024 + 1e-6
