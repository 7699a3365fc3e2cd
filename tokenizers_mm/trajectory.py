"""Trajectory tokenizer: an RL episode → interleaved return-to-go / state / action tokens, as the
Decision Transformer reads them (Chen et al. 2021, "Decision Transformer: Reinforcement Learning
via Sequence Modeling"; the Hugging Face `DecisionTransformerModel` layout).

An episode (observations [T, S], actions [T] ids or [T, A] values, rewards [T]) becomes, for a
window of K steps starting at t0,

    R_t0 s_t0 a_t0  R_t0+1 s_t0+1 a_t0+1  ...        3K tokens

with the timestep as every token's position (R_t, s_t, a_t share position t) and return / state /
action as token types. Return-to-go R_t = sum_{u>=t} gamma^(u-t) r_u, divided by `rtg_scale`;
states are normalised with the dataset's mean and std (computed by `fit`, saved with the
tokenizer). Every token carries a value vector of width max(1, S, A_in), zero-padded: the model
embeds each type with its own linear layer over the first 1 / S / A_in columns.

Actions:
- "discrete": ids in [0, n_actions). They enter the model one-hot (a linear layer on a one-hot
  vector is an embedding lookup plus a bias, and is what Hugging Face's model does), and are the
  classification targets read at each state token.
- "continuous": vectors in [low, high]; inputs and regression targets are scaled to [-1, 1] (the
  action head ends in tanh), `decode_action` scales back.
- Gato's scheme for any continuous quantity (Reed et al. 2022): mu-law companding (mu = 100,
  M = 256) into [-1, 1], then 1024 uniform bins: `gato_encode` / `gato_decode`. With
  `action_bins=1024`, continuous actions (already scaled to [-1, 1], so not companded, as in Gato)
  become classification targets over the bins.

Training windows start at every timestep of every episode (the DT paper's sampling: episodes in
proportion to their length, the start uniform); a window that runs past the episode's end is
shorter, and collate pads it. Bad episodes (empty, NaN / infinite values, actions that disagree with
the declared space, longer than the timestep table) raise an error naming the episode.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from .base import Tokenizer
from .registry import register
from .tokenset import TokenBatch, TokenSet, positive

RETURN, STATE, ACTION = 0, 1, 2  # token types
MU, M, BINS = 100.0, 256.0, 1024  # Gato's mu-law constants and bin count


# -- Gato's discretisation ------------------------------------------------------------------------
def mu_law(x: Tensor, mu: float = MU, m: float = M) -> Tensor:
    """Gato's companding: sign(x) · log(|x|·mu + 1) / log(M·mu + 1); maps [-M, M] to [-1, 1]."""
    return torch.sign(x) * torch.log1p(x.abs() * mu) / math.log1p(m * mu)


def mu_law_inverse(y: Tensor, mu: float = MU, m: float = M) -> Tensor:
    return torch.sign(y) * torch.expm1(y.abs() * math.log1p(m * mu)) / mu


def gato_encode(x: Tensor, bins: int = BINS, companding: bool = True) -> Tensor:
    """Continuous values → bin ids in [0, bins): mu-law (skipped with companding=False, for values
    already in [-1, 1] such as scaled actions), clip to [-1, 1], uniform bins."""
    y = (mu_law(x.float()) if companding else x.float()).clamp(-1, 1)
    return ((y + 1) / 2 * bins).long().clamp(0, bins - 1)


def gato_decode(ids: Tensor, bins: int = BINS, companding: bool = True) -> Tensor:
    """Bin ids → the value at each bin's centre (after inverting the mu-law)."""
    y = (ids.float() + 0.5) / bins * 2 - 1
    return mu_law_inverse(y) if companding else y


def returns_to_go(rewards: np.ndarray, gamma: float = 1.0) -> np.ndarray:
    """(T,) rewards → (T,) discounted sums of the rewards from each step on."""
    out = np.zeros(len(rewards), dtype=np.float64)
    acc = 0.0
    for t in range(len(rewards) - 1, -1, -1):
        acc = float(rewards[t]) + gamma * acc
        out[t] = acc
    return out.astype(np.float32)


def _field(episode, name: str, who: str):
    """episode[name] (a dict) or episode.name (an Episode, a Minari EpisodeData), or an error naming the episode."""
    try:
        return episode[name] if isinstance(episode, dict) else getattr(episode, name)
    except (KeyError, AttributeError):
        raise ValueError(f"{who}: no {name!r}; an episode has observations, actions and rewards (a dict or an object "
                         "with those fields)") from None  # fmt: skip


def _array(episode, field: str, who: str) -> np.ndarray:
    """episode's `field` as a numeric array, or an error naming the episode (steps of different lengths,
    text)."""
    value = _field(episode, field, who)
    try:
        a = np.asarray(value)
    except ValueError:  # numpy's "setting an array element with a sequence" (an inhomogeneous shape)
        raise ValueError(f"{who}: {field} are not an array of one shape: steps of different lengths?") from None
    if not (np.issubdtype(a.dtype, np.number) or a.dtype == np.bool_) or np.iscomplexobj(a):
        raise ValueError(f"{who}: {field} must be real numbers, got an array of {a.dtype}")
    if a.ndim == 0:
        raise ValueError(f"{who}: {field} must hold one entry per step, got a single value ({a.item()!r})")
    return a


def _float32(a: np.ndarray, field: str, who: str) -> np.ndarray:
    """`a` as float32, the tokens' dtype, or an error naming the episode and the first step that
    is NaN / infinite, or finite but beyond float32's range (it would be inf in the tokens)."""
    if not np.isfinite(a).all():
        raise ValueError(f"{who}: {field} hold NaN or infinite values (first at step {int(np.argwhere(~np.isfinite(a))[0][0])})")
    with np.errstate(over="ignore"):
        b = a.astype(np.float32)
    if not np.isfinite(b).all():
        raise ValueError(f"{who}: {field} hold values beyond float32's range (first at step {int(np.argwhere(~np.isfinite(b))[0][0])}); "
                         "scale them down")  # fmt: skip
    return b


def finite_span(low, high) -> bool:
    """Whether action bounds and their span are finite in float32, as actions are scaled from them
    (±float32 max: finite bounds, an infinite span)."""
    with np.errstate(over="ignore", invalid="ignore"):
        return bool(np.isfinite(np.asarray(high, np.float32) - np.asarray(low, np.float32)).all())


# -- tokenizer ------------------------------------------------------------------------------------
@register("trajectory")
class TrajectoryTokenizer(Tokenizer):
    """Episodes → R/s/a tokens. See the module docstring for the layout."""

    modality = "trajectory"
    token_types = ("return", "state", "action")

    def __init__(self, state_dim: int, action_dim: int, discrete: bool, context: int = 20, max_timestep: int = 1000,
                 rtg_scale: float = 1.0, gamma: float = 1.0, state_mean=None, state_std=None, action_low=None,
                 action_high=None, action_bins: int = 0, clip_actions: bool = False):  # fmt: skip
        """action_dim: the number of actions (discrete) or the action vector's width (continuous).
        context: K steps per window. max_timestep: rows of the timestep table (episode length cap).
        action_low / action_high: a continuous space's bounds (default [-1, 1]); an action outside
        them is an error naming the episode, or with clip_actions clipped into them, as an
        environment clips what it is given."""
        state_dim, action_dim, context, max_timestep = (positive("trajectory", k, v) for k, v in (
            ("state_dim", state_dim), ("action_dim", action_dim), ("context", context), ("max_timestep", max_timestep)))  # fmt: skip
        if not 1 <= context <= max_timestep:
            raise ValueError(f"trajectory: context={context} steps must lie in [1, max_timestep={max_timestep}] "
                             "(the timestep table has max_timestep rows)")  # fmt: skip
        if action_bins and discrete:
            raise ValueError("trajectory: action_bins (Gato's binning) applies to continuous actions only")
        if action_bins == 1 or action_bins < 0:
            raise ValueError(f"trajectory: action_bins={action_bins}: expected 0 (regression) or 2 or more bins (Gato's 1024)")
        if not 0 < gamma <= 1:  # (math: NaN fails too)
            raise ValueError(f"trajectory: gamma={gamma} must lie in (0, 1] (returns-to-go discount; rollouts divide by it)")
        if not (math.isfinite(rtg_scale) and rtg_scale > 0):
            raise ValueError(f"trajectory: rtg_scale={rtg_scale} must be a finite number above 0 (returns-to-go are divided by it)")
        self.state_dim, self.action_dim, self.discrete = state_dim, action_dim, discrete
        self.context, self.max_timestep, self.rtg_scale, self.gamma = context, max_timestep, float(rtg_scale), float(gamma)
        self.state_mean = np.zeros(state_dim, np.float32) if state_mean is None else np.asarray(state_mean, np.float32)
        self.state_std = np.ones(state_dim, np.float32) if state_std is None else np.asarray(state_std, np.float32)
        self.action_low = -np.ones(action_dim, np.float32) if action_low is None else np.asarray(action_low, np.float32).reshape(action_dim)
        self.action_high = np.ones(action_dim, np.float32) if action_high is None else np.asarray(action_high, np.float32).reshape(action_dim)
        if not discrete and not finite_span(self.action_low, self.action_high):
            raise ValueError(f"trajectory: continuous actions are scaled from [action_low, action_high] to [-1, 1] (the action head "
                             f"ends in tanh); the bounds and their span must be finite, got {self.action_low.tolist()} .. {self.action_high.tolist()}")  # fmt: skip
        if not discrete and not np.all(self.action_high > self.action_low):
            raise ValueError(f"trajectory: action_high {self.action_high.tolist()} must exceed action_low {self.action_low.tolist()} "
                             "in every dimension")  # fmt: skip
        self.action_bins, self.clip_actions = action_bins, bool(clip_actions)
        self.type_value_dims = (1, state_dim, action_dim)
        self.value_dim = max(self.type_value_dims)
        self.max_positions = max_timestep

    def config(self) -> dict:
        return {"state_dim": self.state_dim, "action_dim": self.action_dim, "discrete": self.discrete, "context": self.context,
                "max_timestep": self.max_timestep, "rtg_scale": self.rtg_scale, "gamma": self.gamma,
                "state_mean": self.state_mean.tolist(), "state_std": self.state_std.tolist(),
                "action_low": self.action_low.tolist(), "action_high": self.action_high.tolist(), "action_bins": self.action_bins,
                "clip_actions": self.clip_actions}  # fmt: skip

    # -- checking and normalising -----------------------------------------------------------------
    def check(self, episode, name: str = "episode") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(observations [T, S] float32, actions [T] int64 | [T, A] float32, rewards [T] float32),
        or an error naming the episode and what was expected."""
        obs, acts, rew = (_array(episode, f, name) for f in ("observations", "actions", "rewards"))
        if rew.ndim == 2 and rew.shape[1] == 1:
            rew = rew[:, 0]
        if rew.ndim != 1:  # (flattened, (T, 2) rewards were counted as 2T)
            raise ValueError(f"{name}: rewards must be one number per step, shape (T,), got {rew.shape}")
        T = len(obs)
        if T == 0:
            raise ValueError(f"{name}: the episode is empty (0 steps)")
        if T > self.max_timestep:
            raise ValueError(f"{name}: {T} steps exceed the timestep table (max_timestep={self.max_timestep})")
        if obs.ndim != 2 or obs.shape[1] != self.state_dim:
            raise ValueError(f"{name}: observations must have shape (T, {self.state_dim}), got {obs.shape}")
        if len(acts) != T or len(rew) != T:
            raise ValueError(f"{name}: {T} observations but {len(acts)} actions and {len(rew)} rewards; expected one each per step")
        obs, rew = _float32(obs, "observations", name), _float32(rew, "rewards", name)
        if np.abs(rew.astype(np.float64)).sum() > np.finfo(np.float32).max:  # bounds every return-to-go (gamma <= 1)
            raise ValueError(f"{name}: its rewards add up beyond float32's range ({np.finfo(np.float32).max:.3g}): the returns-to-go "
                             "would be infinite; scale the rewards down")  # fmt: skip
        if self.discrete:
            if acts.ndim == 2 and acts.shape[1] == 1:
                acts = acts[:, 0]
            if acts.ndim != 1:
                raise ValueError(f"{name}: discrete actions must be integer ids of shape (T,), got shape {acts.shape}")
            if not np.issubdtype(acts.dtype, np.integer):
                whole = np.isfinite(acts) & (acts == np.round(acts))  # (an id stored as a float: 2.0)
                if not whole.all():
                    t = int(np.argwhere(~whole)[0][0])
                    raise ValueError(f"{name}: discrete actions must be integer ids; step {t}'s is {acts[t].item()!r} ({acts.dtype})")
            acts = acts.astype(np.int64)
            if acts.min() < 0 or acts.max() >= self.action_dim:
                t = int(np.argmax((acts < 0) | (acts >= self.action_dim)))
                raise ValueError(f"{name}: action ids must lie in [0, {self.action_dim}); step {t}'s is {acts[t]}")
        else:
            acts = acts.reshape(T, -1) if acts.ndim == 1 and self.action_dim == 1 else acts
            if acts.ndim != 2 or acts.shape[1] != self.action_dim:
                raise ValueError(f"{name}: continuous actions must have shape (T, {self.action_dim}), got {acts.shape}")
            acts = _float32(acts, "actions", name)
            outside = self.outside(acts)
            if outside.any() and self.clip_actions:
                acts = np.clip(acts, self.action_low, self.action_high)
            elif outside.any():
                t, j = (int(v) for v in np.argwhere(outside)[0])
                raise ValueError(f"{name}: action {j} at step {t} is {acts[t, j]:.4g}, outside the declared space "
                                 f"[{self.action_low[j]:.4g}, {self.action_high[j]:.4g}]; clip_actions=true clips such actions "
                                 "as the environment does (a TrajectoryTokenizer built by hand can instead declare the space the data "
                                 "uses: action_low / action_high)")  # fmt: skip
        return obs, acts, rew

    def outside(self, acts: np.ndarray) -> np.ndarray:
        """Which continuous action values lie outside [low, high], beyond rounding in a stored dataset."""
        slack = 1e-4 * (self.action_high - self.action_low)  # note: the bounds are finite (checked when built)
        return (acts < self.action_low - slack) | (acts > self.action_high + slack)

    def fit(self, episodes, source: str = "") -> "TrajectoryTokenizer":
        """Set the state normalisation from a dataset's observations (checked on the way; an error
        names the episode, after `source`, the data's name, when given)."""
        observations = [self.check(ep, f"{source}: episode {i}" if source else f"episode {i}")[0] for i, ep in enumerate(episodes)]
        if not observations:
            raise ValueError("fit: no episodes; expected at least one episode to take the state statistics from")
        obs = np.concatenate(observations)
        self.state_mean = obs.mean(0).astype(np.float32)
        self.state_std = (obs.std(0) + 1e-6).astype(np.float32)
        return self

    def scale_action(self, acts: np.ndarray) -> np.ndarray:
        """Continuous actions [low, high] → [-1, 1]."""
        return (2 * (acts - self.action_low) / (self.action_high - self.action_low) - 1).clip(-1, 1)

    def decode_action(self, out: Tensor) -> int | np.ndarray:
        """The action head's output at one state token → an environment action: an int id (discrete,
        argmax; environments such as FrozenLake index tables with it), a bin's value (Gato) or a
        vector scaled back to [low, high]."""
        if self.discrete:
            return int(out.argmax(-1))
        y = gato_decode(out.view(self.action_dim, -1).argmax(-1), self.action_bins, companding=False) if self.action_bins else out.float()
        y = y.detach().cpu().numpy().astype(np.float32)
        return self.action_low + (y + 1) / 2 * (self.action_high - self.action_low)

    # -- tokens ---------------------------------------------------------------------------------
    def tokens(self, obs: np.ndarray, acts: np.ndarray, rtg: np.ndarray, timesteps: np.ndarray) -> TokenSet:
        """Checked arrays of n <= K steps → 3n interleaved tokens, with action targets at state tokens."""
        n = len(obs)
        W = self.value_dim
        values = torch.zeros(n, 3, W)  # (n, {R, s, a}, W)
        values[:, RETURN, 0] = torch.from_numpy(np.asarray(rtg, np.float32) / self.rtg_scale)
        values[:, STATE, : self.state_dim] = torch.from_numpy((obs - self.state_mean) / self.state_std)
        if self.discrete:
            ids = torch.from_numpy(acts)
            values[:, ACTION, : self.action_dim] = torch.nn.functional.one_hot(ids, self.action_dim).float()
            target = torch.zeros(n, 3, dtype=torch.long)
            target[:, STATE] = ids
        else:
            a = torch.from_numpy(self.scale_action(acts))  # (n, A)
            values[:, ACTION, : self.action_dim] = a
            if self.action_bins:
                target = torch.zeros(n, 3, self.action_dim, dtype=torch.long)
                target[:, STATE] = gato_encode(a, self.action_bins, companding=False)  # already in [-1, 1]
            else:
                target = torch.zeros(n, 3, self.action_dim)
                target[:, STATE] = a
        positions = torch.from_numpy(np.asarray(timesteps, np.int64)).repeat_interleave(3)
        types = torch.tensor([RETURN, STATE, ACTION]).repeat(n)
        loss_mask = types == STATE
        return TokenSet(self.modality, values=values.reshape(3 * n, W), positions=positions, types=types,
                        targets=target.reshape(3 * n, *target.shape[2:]), loss_mask=loss_mask)  # fmt: skip

    def encode(self, episode, start: int = 0, name: str = "episode") -> TokenSet:
        """The window of up to `context` steps of `episode` that starts at step `start`."""
        obs, acts, rew = self.check(episode, name)
        if not 0 <= start < len(obs):
            raise ValueError(f"{name}: window start {start} is outside the episode's {len(obs)} steps")
        rtg = returns_to_go(rew, self.gamma)
        end = min(start + self.context, len(obs))
        return self.tokens(obs[start:end], acts[start:end], rtg[start:end], np.arange(start, end))

    def decode(self, tokens: TokenSet | TokenBatch) -> dict | list[dict]:
        """Tokens → {"returns_to_go", "observations", "actions", "timesteps"} (un-normalised); a
        TokenBatch → one such dict per row (its real tokens)."""
        if isinstance(tokens, TokenBatch):
            return [self.decode(TokenSet(tokens.modality, values=tokens.values[i][m], positions=tokens.positions[i][m], types=tokens.types[i][m]))
                    for i, m in enumerate(tokens.mask)]  # fmt: skip
        if not isinstance(tokens, TokenSet) or tokens.values is None or len(tokens) % 3:
            got = type(tokens).__name__ if not isinstance(tokens, TokenSet) else f"a TokenSet of {len(tokens)} tokens"
            raise TypeError(f"trajectory decode: expected a TokenSet of (return, state, action) steps from this tokenizer, got {got}")
        tokens = TokenSet(tokens.modality, values=tokens.values.detach().cpu().float(), positions=tokens.positions.cpu())
        v = tokens.values.reshape(-1, 3, self.value_dim)
        obs = v[:, STATE, : self.state_dim].numpy() * self.state_std + self.state_mean
        a = v[:, ACTION, : self.action_dim]
        acts = a.argmax(-1).numpy() if self.discrete else self.action_low + (a.numpy() + 1) / 2 * (self.action_high - self.action_low)
        return {"returns_to_go": v[:, RETURN, 0].numpy() * self.rtg_scale, "observations": obs, "actions": acts,
                "timesteps": tokens.positions[::3].numpy()}  # fmt: skip
