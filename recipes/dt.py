"""Decision Transformer recipes: offline RL as sequence modelling (Chen et al. 2021), with a
behaviour-cloning baseline trained on the same data in the same run.

Config → data → model → loss/metric → main. Episodes (the embedded dataset generated from a
gymnasium simulator by recipes/rl_data.py, or the user's D4RL-style NPZ / HDF5 file or Minari
dataset) → `trajectory` tokens R s a R s a ... (K steps per window, windows starting at every
timestep) → the causal decoder → the action head read at each state token: cross-entropy over
action ids (discrete), MSE on tanh outputs (continuous), or cross-entropy over Gato's bins.

Behaviour cloning (BC) is the same model on the same windows with the return tokens blanked
(every return-to-go reads 0), so nothing can be read from them: what remains is imitation of
the data. Evaluation rolls out both policies in the simulator for `eval_episodes` seeded
episodes, the DT conditioned on each target in `targets`; it prints mean ± std returns, writes
`returns.json` and `return_vs_target.png` (achieved against target return, the paper's figure).

    mmtok train dt_cartpole
    mmtok train dt_pendulum
    mmtok train dt_offline data=path/to/dataset.hdf5 env=Hopper-v5
"""

from __future__ import annotations

import json
import math
import os
import shlex
import sys
import time
import typing
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from accelerate.utils import set_seed
from torch.utils.data import Dataset

from models import HeadConfig, ModalityConfig, ModelConfig, MultimodalTransformer, TrunkConfig
from tokenizers_mm import TrajectoryTokenizer, collate, returns_to_go
from tokenizers_mm.base import cache_folder, read_json, write_text_atomic
from tokenizers_mm.trajectory import finite_span

from .config import ConfigError, TrainConfig, say
from .runs import check_same_data, process_share, record_data, resolve_run_dir, save_run_info
from .train import my_share, summed, train


@dataclass
class Config(TrainConfig):
    NOT_USED = ("eval_batches",)  # an evaluation rolls out eval_episodes
    EVAL_KEYS = ("eval_episodes", "eval_seed", "targets", "target")
    env: str = "CartPole-v1"  # the gymnasium environment the data comes from and rollouts run in
    data: str = ""  # "" = the embedded dataset for env; else a .npz / .hdf5 file or a Minari dataset id
    data_dir: str = ""  # where the embedded dataset is cached; "" = ~/.cache/tokenizers-mm/rl
    n_episodes: int = 0  # embedded dataset size; 0 = rl_data's default for env
    data_seed: int = 0
    context: int = 20  # K steps per window (3K tokens)
    max_timestep: int = 1000  # rows of the timestep table; longer episodes are refused
    rtg_scale: float = 100.0  # returns-to-go are divided by this
    gamma: float = 1.0  # return-to-go discount; below 1, targets are discounted returns-to-go at the start (val_return stays the total)
    action_bins: int = 0  # continuous actions: 0 = regression (tanh), N >= 2 = N uniform bins over [-1, 1] (Gato's 1024; no mu-law, as Gato for values already in [-1, 1])
    clip_actions: bool = False  # continuous actions outside the environment's space: clipped into it (counted) instead of an error
    dim: int = 64
    depth: int = 3
    num_heads: int = 1
    dropout: float = 0.1
    batch_size: int = 64
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup_steps: int = 200
    max_steps: int = 3000
    weight_decay: float = 1e-4
    eval_every: int = 1000
    ckpt_every: int = 1000
    eval_episodes: int = 20  # seeded rollouts per target
    eval_seed: int = 10_000  # rollout seeds are eval_seed, eval_seed + 1, ...
    targets: str = ""  # comma-separated target returns for the table and plot; "" = 5 from the data's median to its best
    target: float | None = None  # the target return the DT is judged at; None = the best return in the data (0 is a target: Pendulum's perfect one)
    baseline: bool = True  # also train behaviour cloning on the same data

    ENV: typing.ClassVar[str] = ""  # a recipe made for one environment (its targets, return scale, timestep table): the only env=

    @staticmethod
    def upgrade_run(values: dict, fmt: int) -> dict:
        """An older run.json's values as they were meant: before format 2, target 0 was "the data's best"."""
        if fmt < 2 and values.get("target") == 0:
            values["target"] = None
        return values

    def check(self) -> None:
        super().check()
        made = [f"{k}={getattr(self, k)}" for k in ("n_episodes", "data_dir", "data_seed") if getattr(self, k) and k not in self.NOT_USED]
        if self.data and made:  # (they size and place the embedded dataset, which data= replaces)
            raise ConfigError(f"{', '.join(made)}: these make the embedded dataset; data={self.data} is read as it is: leave them out")
        if self.ENV and self.env != self.ENV:
            raise ConfigError(f"env={self.env}: this recipe's settings are made for {self.ENV}; for another environment "
                              "use dt_offline data=PATH env=ENV_ID")  # fmt: skip
        try:
            parsed = [float(x) for x in self.targets.split(",")] if self.targets else []
        except ValueError:
            parsed = [math.nan]
        if not all(math.isfinite(x) for x in parsed):
            raise ConfigError(f"targets={self.targets!r}: expected comma-separated target returns (numbers), e.g. targets=100,300,500")
        top = float(np.finfo(np.float32).max)  # (returns-to-go are float32 tokens: a larger target would be inf in them)
        for key, value in [("target", self.target)] + [("targets", x) for x in parsed]:
            if value is not None and abs(value) > top:
                raise ConfigError(f"{key}={value:g} is beyond float32's range ({top:.3g}), in which returns-to-go are read; "
                                  "expected a return on the data's scale")  # fmt: skip
        if self.action_bins == 1 or self.action_bins < 0:  # (1 bin: every action its centre, 0)
            raise ConfigError(f"action_bins={self.action_bins}: expected 0 (regression) or 2 or more bins (Gato's 1024)")


# -- data -----------------------------------------------------------------------------------------
def load_data(cfg: Config) -> list:
    from . import rl_data

    if cfg.data:
        return rl_data.load_episodes(cfg.data)
    if cfg.env not in rl_data.DATASETS:
        raise ValueError(f"no embedded dataset for env={cfg.env!r} (embedded: {', '.join(rl_data.DATASETS)}); give data=PATH")
    root = cache_folder(cfg.data_dir or os.path.expanduser("~/.cache/tokenizers-mm/rl"), "the generated episodes")
    n = cfg.n_episodes or rl_data.DATASETS[cfg.env].episodes
    path = rl_data.make_dataset(cfg.env, root / f"{cfg.env}-{n}-{cfg.data_seed}.npz", n, cfg.data_seed)
    return rl_data.load_episodes(path)


def data_name(cfg: Config) -> str:
    """The episodes' source, as errors about one of them name it."""
    return cfg.data or f"the embedded {cfg.env} data"


def check_env(cfg: Config, env) -> None:
    """Refuse, before training, an environment the Decision Transformer cannot play: observations that
    are not a Box of numbers (Discrete, Tuple, Dict), actions other than Discrete ids from 0 or a
    bounded Box, or a time limit longer than the timestep table (the first evaluation would fail)."""
    import gymnasium as gym

    name, obs, act = env.spec.id if env.spec else "the environment", env.observation_space, env.action_space
    if not isinstance(obs, gym.spaces.Box):
        raise ValueError(f"{name}: observation space {obs}; the Decision Transformer reads observations as a Box of numbers "
                         "(register an environment id wrapped in gymnasium.wrappers.FlattenObservation, and give env= that id)")  # fmt: skip
    if isinstance(act, gym.spaces.Discrete) and int(act.start) != 0:
        raise ValueError(f"{name}: action space {act} starts at {int(act.start)}; the tokenizer reads ids from 0")
    if not isinstance(act, (gym.spaces.Discrete, gym.spaces.Box)):
        raise ValueError(f"{name}: action space {act}; expected Discrete ids or a Box of values")
    if isinstance(act, gym.spaces.Box) and not finite_span(act.low, act.high):
        raise ValueError(f"{name}: action space {act} is unbounded; continuous actions are scaled from its bounds to [-1, 1]")
    limit = env.spec.max_episode_steps if env.spec else None
    if not limit:
        say(f"{name}: no time limit; evaluation episodes end at max_timestep={cfg.max_timestep} steps (the timestep table's rows)")
    if limit and limit > cfg.max_timestep:
        raise ValueError(f"{name}: episodes run up to {limit} steps (its time limit), more than max_timestep={cfg.max_timestep} "
                         f"(the timestep table's rows): give max_timestep={limit}")  # fmt: skip


def env_dims(env) -> tuple[int | None, bool, int]:
    """(values an observation holds, read flat: None for a space other than a Box; whether actions are
    Discrete ids; their count, or a continuous action's values)."""
    import gymnasium as gym

    obs, act = env.observation_space, env.action_space
    discrete = isinstance(act, gym.spaces.Discrete)
    return (int(np.prod(obs.shape)) if isinstance(obs, gym.spaces.Box) else None, discrete,
            int(act.n) if discrete else int(np.prod(act.shape)) if act.shape is not None else 0)  # fmt: skip


def check_fits(tok: TrajectoryTokenizer, env, env_id: str) -> None:
    """Refuse to roll out in an environment whose spaces are not those `tok` was made for (an id
    registered again with other spaces since training, or run.json's env edited): numpy's broadcast
    error, deep in the rollout, named neither."""
    obs, mine = env.observation_space, env_dims(env)
    if mine != (tok.state_dim, tok.discrete, tok.action_dim):
        values = lambda n: f"{n} value" + "s" * (n != 1)  # noqa: E731
        said = lambda o, d, a: f"observations of {values(o)} and " + (f"{a} discrete actions" if d else f"actions of {values(a)}")  # noqa: E731
        raise ValueError(f"env={env_id}: {said(*mine) if mine[0] else f'observation space {obs}'}; the model was trained for "
                         f"{said(tok.state_dim, tok.discrete, tok.action_dim)} (was the environment changed since training, or "
                         "is it another one?)")  # fmt: skip
    if not tok.discrete:  # (the same widths, other bounds: the actions would be scaled to another range, silently)
        low, high = (np.asarray(b, np.float32).reshape(-1) for b in (env.action_space.low, env.action_space.high))
        if not (np.allclose(low, tok.action_low) and np.allclose(high, tok.action_high)):
            raise ValueError(f"env={env_id}: actions within [{low.tolist()}, {high.tolist()}]; the model was trained for "
                             f"[{tok.action_low.tolist()}, {tok.action_high.tolist()}] (was the environment changed since training?)")  # fmt: skip


def other_env(cfg: Config) -> str:
    """How to train on another environment's data: env=, or with a recipe made for one environment, dt_offline."""
    return f"mmtok train dt_offline data={shlex.quote(cfg.data) if cfg.data else 'PATH'} env=ID trains on it" if cfg.ENV else "give the env= it was recorded in"


def make_tokenizer(cfg: Config, episodes: list, env) -> TrajectoryTokenizer:
    """The tokenizer for env's spaces (checked by `check_env`), with state statistics from the episodes."""
    check_env(cfg, env)
    widths = sorted({int(np.prod(np.shape(ep.observations)[1:])) for ep in episodes if np.size(ep.observations)})  # (an empty one: the tokenizer names it)
    want, discrete, action_dim = env_dims(env)  # (a Box of observations: `check_env`)
    if widths and widths != [want]:
        other = next(w for w in widths if w != want)
        raise ValueError(f"{data_name(cfg)}: observations of {other} values a step, and env={cfg.env}'s have {want}: is it data "
                         f"of another environment? ({other_env(cfg)})")  # fmt: skip
    space = env.action_space
    if cfg.clip_actions and discrete:
        raise ValueError(f"clip_actions=true clips continuous actions into their bounds; env={cfg.env}'s actions are discrete ids")
    ids = next((i for i, ep in enumerate(episodes) if np.asarray(ep.actions).dtype.kind in "iub"), None)
    if not discrete and ids is not None:  # (integer ids taken as torques: trains, and means nothing)
        raise ValueError(f"{cfg.data or 'the data'}: episode {ids} holds integer action ids, and env={cfg.env}'s actions are continuous "
                         f"({type(space).__name__}): is it data of a discrete environment? ({other_env(cfg)})")  # fmt: skip
    low, high = (None, None) if discrete else (space.low.reshape(-1).tolist(), space.high.reshape(-1).tolist())
    tok = TrajectoryTokenizer(want, action_dim, discrete, cfg.context, cfg.max_timestep,
                              cfg.rtg_scale, cfg.gamma, action_low=low, action_high=high, action_bins=cfg.action_bins,
                              clip_actions=cfg.clip_actions)  # fmt: skip
    if cfg.clip_actions and not discrete:
        n = sum(int(tok.outside(np.asarray(ep.actions, np.float32).reshape(len(ep.actions), -1)).sum()) for ep in episodes)
        say(f"clip_actions: {n:,} action values outside {env.spec.id if env.spec else 'the'} space's bounds, clipped into them")
    return tok.fit(episodes, data_name(cfg))


class Windows(Dataset):
    """Every (episode, start step) window; `blank_returns` zeroes the return tokens (BC)."""

    def __init__(self, episodes: list, tok: TrajectoryTokenizer, blank_returns: bool = False, source: str = "the data"):
        self.tok, self.blank = tok, blank_returns
        self.checked = [tok.check(ep, f"{source}: episode {i}") for i, ep in enumerate(episodes)]
        self.index = [(e, t) for e, (obs, _, _) in enumerate(self.checked) for t in range(len(obs))]
        self.rtg = [self._rtg(rew) for _, _, rew in self.checked]

    def _rtg(self, rew):
        return np.zeros_like(rew) if self.blank else returns_to_go(rew, self.tok.gamma)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict:
        e, t = self.index[i]
        obs, acts, _ = self.checked[e]
        end = min(t + self.tok.context, len(obs))
        return {"trajectory": self.tok.tokens(obs[t:end], acts[t:end], self.rtg[e][t:end], np.arange(t, end))}


def collate_windows(examples: list[dict]):
    return {"trajectory": collate([ex["trajectory"] for ex in examples])}, {}


# -- model ----------------------------------------------------------------------------------------
def build_model(cfg: Config, tok: TrajectoryTokenizer) -> MultimodalTransformer:
    trunk = TrunkConfig(dim=cfg.dim, depth=cfg.depth, num_heads=cfg.num_heads, dropout=cfg.dropout, mode="decoder", activation="relu")
    traj = ModalityConfig.from_tokenizer(tok, embed_norm=True)
    if tok.discrete:
        head = HeadConfig("token_classify", "trajectory", num_outputs=tok.action_dim, token_type="state")
    elif tok.action_bins:
        head = HeadConfig("token_classify", "trajectory", num_outputs=tok.action_dim * tok.action_bins, token_type="state")
    else:
        head = HeadConfig("token_regress", "trajectory", num_outputs=tok.action_dim, token_type="state", tanh=True)
    return MultimodalTransformer(ModelConfig(trunk, {"trajectory": traj}, {"action": head}, decoder_inputs=["trajectory"]))


# -- metric: rollouts -----------------------------------------------------------------------------
@torch.no_grad()
def rollouts(model: MultimodalTransformer, tok: TrajectoryTokenizer, env_id: str, target: float, seeds: list[int],
             blank_returns: bool = False, device="cpu") -> np.ndarray:  # fmt: skip
    """Returns of len(seeds) episodes run side by side, the policy conditioned on `target`: at
    each step the last K steps (return-to-go = target − reward so far, the current action a
    placeholder the causal mask hides from the state token) → the action read at the last state.
    With a discount (tok.gamma < 1) the return-to-go follows training's R_t = r_t + γ·R_t+1:
    R_t+1 = (R_t − r_t) / γ, `target` being R_0."""
    from .rl_data import make_env

    was = model.training
    envs = [make_env(env_id) for _ in seeds]
    try:  # (the environments closed and the model's mode restored however it ends: an error, Ctrl-C)
        for env in envs[:1]:
            check_fits(tok, env, env_id)
        model.eval()
        obs = [[env.reset(seed=s)[0]] for env, s in zip(envs, seeds)]
        acts, rtg, total = [[] for _ in seeds], [[0.0 if blank_returns else target] for _ in seeds], np.zeros(len(seeds))
        live = list(range(len(seeds)))
        zero_action = np.zeros((), np.int64) if tok.discrete else np.zeros(tok.action_dim, np.float32)
        t = 0
        while live:
            if t >= tok.max_timestep:  # an environment without a time limit (`check_env`): ended here, as the original DT's max_ep_len
                break
            lo = max(0, t + 1 - tok.context)
            sets = [tok.tokens(np.asarray(obs[i][lo:], np.float32).reshape(t + 1 - lo, -1), np.stack(acts[i][lo:] + [zero_action]), np.asarray(rtg[i][lo:], np.float32),
                               np.arange(lo, t + 1)) for i in live]  # fmt: skip
            out = model({"trajectory": collate(sets).to(device)}).logits["action"][:, -2].float().cpu()  # the last state token (one copy a step)
            still = []
            for row, i in enumerate(live):
                a = tok.decode_action(out[row])
                o, r, terminated, truncated, _ = envs[i].step(a)
                acts[i].append(np.asarray(a, np.int64 if tok.discrete else np.float32).reshape(zero_action.shape))
                obs[i].append(o)
                total[i] += r
                rtg[i].append(0.0 if blank_returns else (rtg[i][-1] - r) / tok.gamma)
                if not (terminated or truncated):
                    still.append(i)
            live, t = still, t + 1
    finally:
        for env in envs:
            env.close()
        model.train(was)
    return total


def start_returns(episodes, gamma: float) -> np.ndarray:
    """Each episode's return-to-go at its start, on the scale training conditions on: the total
    reward, or with a discount below 1 the discounted sum."""
    with np.errstate(over="ignore", invalid="ignore"):  # (rewards past float32's range: the tokenizer's check names the episode)
        return np.array([float(np.sum(ep.rewards)) if gamma == 1 else float(returns_to_go(ep.rewards, gamma)[0]) for ep in episodes])


def target_list(cfg: Config, returns: np.ndarray) -> list[float]:
    """cfg.targets, or 5 targets from the data's median return to its best (works for negative returns)."""
    if cfg.targets:
        return [float(x) for x in cfg.targets.split(",")]
    *below, _ = np.linspace(np.median(returns), returns.max(), 5)
    targets = [math.floor(float(x) * 10) / 10 for x in below] + [float(returns.max())]  # (rounded down: never above the data's best)
    return list(dict.fromkeys(targets))  # (every episode of one return, Acrobot's -500: one target, not five alike)


def shared_rollouts(accelerator, model: MultimodalTransformer, tok: TrajectoryTokenizer, env_id: str, target: float, seeds: list[int],
                    blank_returns: bool = False) -> tuple[float, float, int]:  # fmt: skip
    """(mean, std, episodes) of the returns of `rollouts` over `seeds`, each process running its
    share (seeds[rank::processes]) on its device, their counts, sums and sums of squares added up."""
    mine = rollouts(model, tok, env_id, target, [seeds[i] for i in my_share(accelerator, len(seeds))], blank_returns, accelerator.device)
    n, total, squares = summed(accelerator, len(mine), mine.sum(), np.square(mine).sum())
    mean = total / n
    return mean, math.sqrt(max(squares / n - mean**2, 0.0)), int(n)


def make_evaluate(cfg: Config, tok: TrajectoryTokenizer, target: float, blank_returns: bool):
    seeds = list(range(cfg.eval_seed, cfg.eval_seed + cfg.eval_episodes))

    def evaluate(model, accelerator) -> dict:
        mean, std, _ = shared_rollouts(accelerator, accelerator.unwrap_model(model), tok, cfg.env, target, seeds, blank_returns)
        return {"val_return": mean, "val_return_std": std}

    return evaluate


def plot_returns(table: dict, best_in_data: float, path: Path, title: str, gamma: float = 1.0) -> Path:
    """Achieved return against target return (the DT paper's figure), BC as a flat line. With a
    discount the targets are discounted returns-to-go: no achieved = target line (other scales)."""
    from .plots import save_png, subplots

    fig, ax = subplots(figsize=(6, 4.5))
    targets = np.array(table["targets"])
    dt = np.array(table["dt"])
    order = np.argsort(targets, kind="stable")  # (targets= may list them in any order: the line joins them by target)
    targets, dt = targets[order], dt[order]
    ax.errorbar(targets, dt[:, 0], yerr=dt[:, 1], marker="o", capsize=3, label="Decision Transformer")
    if table.get("bc"):
        ax.axhline(table["bc"][0], color="tab:orange", linestyle="--", label=f"behaviour cloning ({table['bc'][0]:.0f})")
    lo, hi = min(targets.min(), dt[:, 0].min()), max(targets.max(), dt[:, 0].max())
    if gamma == 1:
        ax.plot([lo, hi], [lo, hi], color="gray", linestyle=":", label="achieved = target")
    best = "best return in the data" if gamma == 1 else "best discounted return at the start in the data"
    ax.axvline(best_in_data, color="tab:green", alpha=0.4, label=f"{best} ({best_in_data:.0f})")
    ax.set_xlabel("target return" if gamma == 1 else f"target: discounted return-to-go at the start (γ = {gamma:g})")
    ax.set_ylabel(f"achieved return (mean ± std, {table['episodes']} episodes)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    return save_png(fig, path)


# -- main -----------------------------------------------------------------------------------------
def run(cfg: Config, recipe: str, resume: bool = False) -> dict:
    from .rl_data import fingerprint, make_env

    run_dir = resolve_run_dir(cfg, recipe)
    episodes = load_data(cfg)
    if resume:  # (the data checked first: what else is checked below comes from it)
        from tokenizers_mm import load_tokenizer

        check_same_data(run_dir, fingerprint(episodes), data_name(cfg), "episodes (the tokenizer's state statistics and the target "
                        "come from them)", made_here=not cfg.data)  # fmt: skip
        tok = load_tokenizer(run_dir / "tokenizers" / "trajectory")
    else:
        env = make_env(cfg.env)
        tok = make_tokenizer(cfg, episodes, env)
        env.close()
    returns = start_returns(episodes, cfg.gamma)
    if not any(np.any(ep.rewards) for ep in episodes):
        say(f"{data_name(cfg)}: every reward is 0, so every return token is too: the DT learns what behaviour cloning does, "
            "and the target return changes nothing")  # fmt: skip
    target = float(returns.max()) if cfg.target is None else cfg.target
    highest, best = max([target, *target_list(cfg, returns)]), float(returns.max())
    # note: dt_cartpole's default target 500 is an undiscounted return; 0.05: the best as printed (one decimal) is taken too
    if cfg.gamma != 1 and highest > best + 0.05 + 1e-6 * abs(best):
        raise ValueError(f"target={highest:g} is above the data's best discounted return at the start "
                         f"({best:.6g}); with gamma={cfg.gamma:g} targets are discounted returns-to-go: give target= (and "
                         "targets=) on that scale")  # fmt: skip
    if highest > best + 0.05 + 1e-6 * abs(best):  # (allowed: the Decision Transformer paper asks for more than its data holds too)
        print(f"{recipe}: target {highest:g} is above the best return in the data ({best:.1f}): the DT is asked for returns it never saw; "
              "the table shows how far it follows")  # fmt: skip
    if not resume:
        build_model(cfg, tok)  # (its sizes checked, dim against num_heads..., before the run directory is made)

        def files():
            tok.save(run_dir / "tokenizers" / "trajectory")
            record_data(run_dir, fingerprint(episodes))

        save_run_info(run_dir, recipe, cfg, files)
    print(f"{recipe}: {len(episodes):,} episodes, {int(sum(len(ep.rewards) for ep in episodes)):,} steps from {cfg.env}; "
          f"{'returns' if cfg.gamma == 1 else 'discounted returns at the start'} "
          f"mean {returns.mean():.1f}, median {np.median(returns):.1f}, max {returns.max():.1f}; run dir {run_dir}")  # fmt: skip
    timings, results, models = {}, {}, {}
    for name, blank in [("dt", False)] + ([("bc", True)] if cfg.baseline else []):
        set_seed(cfg.seed)
        model = build_model(cfg, tok)
        out_dir = run_dir if name == "dt" else run_dir / "bc"
        resume_this = resume and (out_dir / "checkpoints").is_dir()
        t0 = time.perf_counter()
        windows = Windows(episodes, tok, blank, data_name(cfg))
        results[name] = train(cfg, model, windows, collate_windows, make_evaluate(cfg, tok, target, blank), out_dir, resume=resume_this)
        timings[name], models[name] = time.perf_counter() - t0, model.cpu()
    seeds = list(range(cfg.eval_seed, cfg.eval_seed + cfg.eval_episodes))
    targets = target_list(cfg, returns)
    table = {"targets": targets, "episodes": cfg.eval_episodes, "dt": [], "bc": None}
    share = process_share(torch.device("cpu"))  # the models are on the CPU now; launched as several processes, each its share
    print(f"{'target':>8} {'DT return':>16}")
    for g in targets:
        mean, std, table["episodes"] = shared_rollouts(share, models["dt"], tok, cfg.env, g, seeds)  # (counted: every process's share)
        table["dt"].append([mean, std])
        print(f"{g:8.1f} {mean:9.1f} ± {std:5.1f}")
    if cfg.baseline:
        mean, std, _ = shared_rollouts(share, models["bc"], tok, cfg.env, 0.0, seeds, blank_returns=True)
        table["bc"] = [mean, std]
        print(f"{'BC':>8} {mean:9.1f} ± {std:5.1f}")
    summary = {
        "env": cfg.env, "target": target, "dt_return": results["dt"]["val_return"], "dt_return_std": results["dt"]["val_return_std"],
        "bc_return": results["bc"]["val_return"] if cfg.baseline else None, "train_seconds": timings,
        "data_returns": {"episodes": len(returns), "mean": float(returns.mean()), "p90": float(np.percentile(returns, 90)),
                         "max": float(returns.max()), "fraction_reaching_target": float(np.mean(returns >= target))},
        "table": table,
    }  # fmt: skip
    if share.is_main_process:  # (one writer of the run's files)
        write_text_atomic(run_dir / "returns.json", json.dumps(summary, indent=2))
        plot_returns(table, float(returns.max()), run_dir / "return_vs_target.png", f"{recipe}: {cfg.env}", cfg.gamma)
    print(f"DT at target {target:.1f}: {summary['dt_return']:.1f} ± {summary['dt_return_std']:.1f}"
          + (f"; BC {summary['bc_return']:.1f}" if cfg.baseline else "") + f"; plot {run_dir / 'return_vs_target.png'}")  # fmt: skip
    return {**results["dt"], "bc_return": summary["bc_return"]}


def evaluate_run(run_dir, device=None) -> dict:
    """Roll out a run's last checkpoint at its target return (and its BC baseline, when trained), on
    `device` (None = the CPU); launched as several processes, each runs its share of the episodes."""
    from .runs import load_for_eval, load_trained

    cfg, model, toks, accelerator = load_for_eval(run_dir, device)
    target = None
    if (Path(run_dir) / "returns.json").exists():
        try:
            target = read_json(Path(run_dir) / "returns.json", "returns").get("target")
        except ValueError as e:
            print(f"eval: {e}; the run's target is taken from its config and data", file=sys.stderr)
    if not isinstance(target, (int, float)):  # a run stopped before its summary: the target training used (cfg.target, or the
        target = float(start_returns(load_data(cfg), cfg.gamma).max()) if cfg.target is None else cfg.target  # data's best return)
    seeds = list(range(cfg.eval_seed, cfg.eval_seed + cfg.eval_episodes))
    mean, std, n = shared_rollouts(accelerator, model, toks["trajectory"], cfg.env, target, seeds)
    out = {"target": target, "val_return": mean, "val_return_std": std, "episodes": n}
    if (Path(run_dir) / "bc" / "checkpoints").is_dir():
        bc, _ = load_trained(Path(run_dir) / "bc", accelerator.device)
        out["bc_return"], out["bc_return_std"], _ = shared_rollouts(accelerator, bc, toks["trajectory"], cfg.env, 0.0, seeds, blank_returns=True)
    return out
