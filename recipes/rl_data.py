"""Offline RL data for the Decision Transformer recipe: episodes, embedded datasets generated with
real gymnasium simulators, loaders for a user's own trajectories, and rollouts for evaluation.

- `Episode`: one trajectory as numpy arrays (observations, actions, rewards) plus how it ended.
- `make_dataset`: runs a mix of deliberately sub-optimal behaviour policies in CartPole-v1 or
  Pendulum-v1 (offline, CPU, seconds) and writes one D4RL-style NPZ with a manifest (JSON) that
  records how it was made. The mix follows the Decision Transformer paper's premise (Chen et al.
  2021, "Decision Transformer: Reinforcement Learning via Sequence Modeling", §5): most episodes
  are poor, a few are good, and the good ones come from the same controller family, so a model
  conditioned on a high return can pick them out while behaviour cloning on everything cannot.
- `load_episodes`: a D4RL-style `.npz` / `.hdf5` file (Fu et al. 2020, "D4RL") or a Minari dataset.
- `rollout` / `evaluate_policy`: play a policy in the simulator and measure its returns.

Left out: the tokenizer (NaN/inf and action-space checks live there), return-to-go and
normalisation, image observations, dict observation spaces.
"""

from __future__ import annotations

import json
import math
import os
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import gymnasium as gym
import numpy as np

from tokenizers_mm.base import cache_folder, made_once
from tokenizers_mm.trajectory import _float32

from .checkpoint import sha256

CARTPOLE_EPISODES = 1000  # ~140k steps, ~1.5 s to generate on one core
PENDULUM_EPISODES = 1500  # 300k steps (200 per episode), ~4 s
DATA_VERSION = 3  # bump when a behaviour policy or the file layout changes: cached datasets regenerate
KEYS = ("observations", "actions", "rewards", "terminals", "timeouts")  # D4RL names; timeouts optional
READ = (*KEYS, "policy_ids", "policy_names")  # what load_episodes reads from a file; the rest is ignored
SHAPES = {"observations": "[N, S] (or [N, ...], read flat)", "actions": "[N] or [N, A]"}  # each key's expected shape, "[N]" for the rest (errors)
MANIFEST_SUFFIX = ".manifest.json"  # CartPole-v1.npz is described by CartPole-v1.manifest.json
QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)


class RLDataError(ValueError):
    pass


ENV_ENTRY_POINTS = "tokenizers_mm.envs"  # installed packages register environments here: name = "package.module" or "package.module:function"
_env_plugins_failed: list[str] | None = None  # the env plugins that failed to load, once loaded (None: not yet)


def load_env_plugins() -> list[str]:
    """Load each installed environment plugin once per process: an entry point in `ENV_ENTRY_POINTS`
    names a module, imported (its `gym.register` calls run), or a function in one, called with no
    arguments (as gymnasium's own plugins were before 1.0). One that fails is skipped with a warning
    naming it; returns those lines, for an id still not found."""
    global _env_plugins_failed
    if _env_plugins_failed is None:
        import inspect
        import warnings
        from importlib.metadata import entry_points

        failed = []
        for ep in entry_points(group=ENV_ENTRY_POINTS):
            try:
                loaded = ep.load()
                if inspect.isfunction(loaded):  # (a module is imported by loading it; an environment class is not made here)
                    loaded()
            except Exception as e:  # noqa: BLE001  # a broken or half-installed package: its error, named
                failed.append(f"plugin environment {ep.name!r} ({ep.value}) failed to load, skipped: "
                              f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0]}")  # fmt: skip
                warnings.warn(f"tokenizers_mm: {failed[-1]}", stacklevel=2)
        _env_plugins_failed = failed
    return _env_plugins_failed


def make_env(env_id: str, **kwargs):
    """`gym.make`, with one clear error for an unknown environment or a missing simulator (MuJoCo's
    environments need `pip install "gymnasium[mujoco]"`). An id gymnasium does not know is looked up
    again after the installed environment plugins (`load_env_plugins`) have registered theirs. An id
    with a module (`module:Env-v0`, which gymnasium imports first) is refused: a config (or a
    run.json) names no code to run."""
    if ":" in env_id:
        raise RLDataError(f"env {env_id!r}: 'module:' would make gymnasium import {env_id.partition(':')[0]!r}; a config names no code: "
                          "give a registered environment's id (CartPole-v1, Pendulum-v1, ...), or register yours in a plugin package "
                          f"(entry point group {ENV_ENTRY_POINTS})")  # fmt: skip
    failed = [] if env_id in gym.registry else load_env_plugins()
    try:
        return gym.make(env_id, **kwargs)
    except gym.error.Error as e:  # NameNotFound, DependencyNotInstalled, ...
        hint = f" ({'; '.join(failed)})" if failed and env_id not in gym.registry else ""
        if env_id not in gym.registry and not failed:
            hint = f" (your own environment: register it in a plugin package's entry point, group {ENV_ENTRY_POINTS})"
        raise RLDataError(f"env {env_id!r}: {str(e).splitlines()[0]}{hint}") from None


@dataclass
class Episode:
    """One trajectory. T steps: observations[t] is seen, actions[t] is taken, rewards[t] comes back."""

    observations: np.ndarray  # [T, S] float32
    actions: np.ndarray  # [T] int64 (discrete space) or [T, A] float32 (continuous space)
    rewards: np.ndarray  # [T] float32
    terminated: bool  # the last step reached a terminal state (no future reward to bootstrap)
    truncated: bool  # the episode was cut short: time limit, or the data simply ends
    policy: str = ""  # behaviour policy that played it, "" when unknown

    @property
    def length(self) -> int:
        return len(self.rewards)

    @property
    def total_reward(self) -> float:
        return float(np.sum(self.rewards, dtype=np.float64))


# -- behaviour policies ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Behaviour:
    """A named behaviour policy. In `params` a number is fixed and a (lo, hi) pair is drawn
    uniformly once per episode, so one policy plays episodes of different quality."""

    name: str
    share: float  # fraction of the dataset's episodes
    params: dict = field(default_factory=dict)


def _draw(params: dict, rng: np.random.Generator) -> dict:
    return {k: float(rng.uniform(*v)) if isinstance(v, tuple) else v for k, v in params.items()}


def cartpole_controller(p: dict, rng: np.random.Generator) -> Callable[[np.ndarray], int]:
    """CartPole act(obs [4]) -> 0 (push left) | 1 (push right), from drawn params `p`.

    Push right iff gains · (obs + sensor offset) > 0, with obs = (x, x_dot, theta, theta_dot).
    `x_drift` (m per step): the position sensor's error grows by this much each step.
    `delay` (steps, may be fractional): act on the observation from floor or ceil(delay) steps ago.
    `lapse_rate`: per-step chance to start a lapse of `lapse_steps` uniformly random actions.
    `tire_after` (steps): from then on every action is uniformly random (a controller that gives up).
    """
    if p.get("random"):
        return lambda obs: int(rng.integers(2))
    gains = np.array([p["kx"], p["kv"], p["ktheta"], p["komega"]], dtype=np.float64)
    offset = np.array([0.0, 0.0, p.get("theta_offset", 0.0), 0.0])
    drift = np.array([p.get("x_drift", 0.0), 0.0, 0.0, 0.0])
    delay, lapse_rate, lapse_steps = p.get("delay", 0.0), p.get("lapse_rate", 0.0), round(p.get("lapse_steps", 0))
    tire_after = p.get("tire_after", math.inf)
    history: list[np.ndarray] = []
    lapse_left = 0

    def act(obs: np.ndarray) -> int:
        nonlocal lapse_left
        history.append(obs)
        if len(history) > tire_after:
            return int(rng.integers(2))
        if lapse_left == 0 and lapse_rate and rng.random() < lapse_rate:
            lapse_left = lapse_steps
        if lapse_left > 0:
            lapse_left -= 1
            return int(rng.integers(2))
        d = math.floor(delay) + int(rng.random() < delay - math.floor(delay))  # latency jitters between floor and ceil
        seen = history[max(0, len(history) - 1 - d)] + offset + drift * (len(history) - 1)
        return int(gains @ seen > 0)

    return act


def pendulum_controller(p: dict, rng: np.random.Generator) -> Callable[[np.ndarray], np.ndarray]:
    """Pendulum act(obs [3] = cos theta, sin theta, theta_dot) -> torque [1] in [-2, 2] N·m.

    Swing-up by energy pumping (Åström & Furuta 2000): with E = theta_dot²/2 + 15 cos theta
    (15 = 3g/2l; E = 15 upright at rest, -15 hanging at rest), torque along theta_dot raises E
    toward `target_energy` · 15. Within `catch_angle` rad of upright a PD law (kp, kd) balances;
    catch_angle 0 never balances. `torque_bias` is added and N(0, `noise`²) torque noise on top.
    """
    if p.get("random"):
        return lambda obs: rng.uniform(-2.0, 2.0, size=1).astype(np.float32)

    def act(obs: np.ndarray) -> np.ndarray:
        theta, omega = math.atan2(float(obs[1]), float(obs[0])), float(obs[2])
        if abs(theta) < p["catch_angle"]:
            u = -(p["kp"] * theta + p["kd"] * omega)
        else:
            energy = 0.5 * omega**2 + 15.0 * math.cos(theta)
            u = p["energy_gain"] * (15.0 * p["target_energy"] - energy) * omega
        u += p.get("torque_bias", 0.0) + p.get("noise", 0.0) * rng.standard_normal()
        return np.array([min(2.0, max(-2.0, u))], dtype=np.float32)

    return act


GOOD_CARTPOLE = dict(kx=1.0, kv=1.0, ktheta=10.0, komega=2.0)  # balances 500/500 from every start
# note: the angle sensors of all flawed controllers read high (theta_offset > 0), never low. Biases of both
# signs would average out in behaviour cloning on the mix, and a small one gets lost in its decision
# boundary: either way behaviour cloning would balance almost as well as the best controller in the data.
# note: the Decision Transformer conditioned on 500 needs (1) no flawed policy with returns near 500 (a
# drifting sensor reaching 400-499 was imitated early on, then the cart ran off at ~400 steps), and (2) good
# play from unusual states: the lapses, when survived, show the good controller recovering, so a DT that
# strays into a leaning state has data on how to come back. Measured with dt_cartpole's defaults
# (benchmarks/dt_control.py): DT 500 ± 0 at target 500, BC 114; a 2x128 MLP cloned on all data: 100-250.
CARTPOLE_POLICIES = (
    Behaviour("random", 0.2, dict(random=True)),
    # the good controller that now and then plays randomly for a stretch and, when it survives, recovers:
    # most returns of 500, and the only data of good play in unusual states
    Behaviour("lapses", 0.16, dict(GOOD_CARTPOLE, lapse_rate=(0.004, 0.025), lapse_steps=(5, 20))),
    # the good controller that gives up after 250-550 steps and plays randomly: returns 250-500
    Behaviour("tiring", 0.02, dict(GOOD_CARTPOLE, tire_after=(250, 550))),
    # the good gains, but the angle sensor holds the cart ~1.5 m off centre and the position sensor drifts
    # by x_drift m per step, which takes the cart off the track (2.4 m) after ~0.9 m / x_drift steps
    Behaviour("drifting_sensor", 0.12, dict(GOOD_CARTPOLE, theta_offset=0.15, x_drift=(0.005, 0.01))),
    # acts on an observation 3-4 steps old: overshoots and oscillates
    Behaviour("late", 0.15, dict(GOOD_CARTPOLE, theta_offset=0.05, delay=(3.5, 4.0))),
    # watches the pole only: holds it leaning, so the cart runs off
    Behaviour("angle_only", 0.15, dict(kx=0.0, kv=0.0, ktheta=1.0, komega=(0.2, 0.5), theta_offset=(0.05, 0.1))),
    # position feedback with the wrong sign: balances while pushing the cart away from the centre
    Behaviour("wrong_position_gain", 0.2, dict(GOOD_CARTPOLE, theta_offset=0.05, kx=(-3.0, -1.0), kv=(-3.0, -1.0))),
)
GOOD_PENDULUM = dict(energy_gain=0.2, target_energy=1.0, catch_angle=0.5, kp=10.0, kd=2.0)
PENDULUM_POLICIES = (
    Behaviour("random", 0.2, dict(random=True)),
    # pumps toward the wrong energy and never balances: swings or spins
    Behaviour("pump_only", 0.25, dict(GOOD_PENDULUM, target_energy=(-0.3, 1.6), catch_angle=0.0)),
    # swings up but the balancing gains are too weak to hold, so it falls over and over
    Behaviour("weak_balance", 0.45, dict(GOOD_PENDULUM, kp=(2.0, 5.0), kd=(0.2, 1.0), torque_bias=(-0.5, 0.5))),
    # the good swing-up and balance controller (mean return about -153) with torque noise: a tenth of the
    # episodes, so the data's 90th-percentile return (about -260) lies below what it achieves
    Behaviour("swing_balance", 0.10, dict(GOOD_PENDULUM, energy_gain=(0.1, 0.5), noise=(0.0, 1.0))),
)


@dataclass(frozen=True)
class DatasetSpec:
    """An embedded dataset: which simulator, how many episodes, which behaviour policies."""

    env_id: str
    episodes: int
    seed: int
    policies: tuple[Behaviour, ...]
    controller: Callable  # (params, rng) -> act
    max_return: float | None  # best attainable return (None: not reachable as such)


DATASETS = {
    "CartPole-v1": DatasetSpec("CartPole-v1", CARTPOLE_EPISODES, 0, CARTPOLE_POLICIES, cartpole_controller, 500.0),
    "Pendulum-v1": DatasetSpec("Pendulum-v1", PENDULUM_EPISODES, 0, PENDULUM_POLICIES, pendulum_controller, None),
}


# -- rollouts -------------------------------------------------------------------------------------
def _play(env, act: Callable, seed: int, policy: str = "") -> Episode:
    """One episode in an already-made env, from env.reset(seed=seed) until terminated or truncated."""
    discrete = isinstance(env.action_space, gym.spaces.Discrete)
    obs, _ = env.reset(seed=int(seed))
    observations, actions, rewards = [], [], []
    while True:
        action = act(obs)
        action = int(action) if discrete else np.asarray(action, dtype=np.float32).reshape(env.action_space.shape)
        observations.append(obs)
        actions.append(action)
        obs, reward, terminated, truncated, _ = env.step(action)
        rewards.append(reward)
        if terminated or truncated:
            break
    return Episode(np.asarray(observations, dtype=np.float32).reshape(len(rewards), -1),
                   np.asarray(actions, dtype=np.int64 if discrete else np.float32), np.asarray(rewards, dtype=np.float32),
                   bool(terminated), bool(truncated), policy)  # fmt: skip


def rollout(env_id: str, act: Callable[[np.ndarray], object], seed: int, max_steps: int | None = None) -> Episode:
    """Play `act(obs) -> action` for one episode from env.reset(seed=seed); `max_steps` overrides the time limit."""
    env = make_env(env_id, max_episode_steps=max_steps)
    try:
        return _play(env, act, seed)
    finally:
        env.close()


def evaluate_policy(env_id: str, make_act: Callable[[], Callable], seeds) -> np.ndarray:
    """Returns [len(seeds)] float64: one episode per seed, with a fresh `make_act()` for each."""
    env = make_env(env_id)
    try:
        return np.array([_play(env, make_act(), s).total_reward for s in seeds], dtype=np.float64)
    finally:
        env.close()


# -- embedded datasets ----------------------------------------------------------------------------
def _write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """np.savez_compressed, but byte-for-byte reproducible (fixed zip timestamps) and atomic."""
    tmp = path.with_name(path.name + ".tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        for key, value in arrays.items():
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            with zf.open(info, "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.ascontiguousarray(value), allow_pickle=False)
    os.replace(tmp, path)


def _return_stats(returns: np.ndarray, max_return: float | None) -> dict:
    return {"episodes": len(returns), "mean": float(returns.mean()), "std": float(returns.std()),
            "min": float(returns.min()), "max": float(returns.max()),
            "quantiles": {str(q): float(np.quantile(returns, q)) for q in QUANTILES},
            "fraction_at_max": None if max_return is None else float(np.mean(returns >= max_return))}  # fmt: skip


def _schedule(policies: tuple[Behaviour, ...], n: int, seed: int) -> tuple[list[int], np.ndarray]:
    """Per episode: the env.reset seed, and the policy index (round(share * n) episodes each, the
    remainder to the largest share, in shuffled order)."""
    rng = np.random.default_rng(seed)
    env_seeds = [int(s) for s in rng.integers(0, 2**31 - 1, size=n)]
    counts = [round(b.share * n) for b in policies]
    counts[int(np.argmax([b.share for b in policies]))] += n - sum(counts)
    return env_seeds, rng.permutation(np.repeat(np.arange(len(policies)), counts))


def _stale(npz: Path, manifest_path: Path, recipe: dict) -> str | None:
    """None when the manifest was made with `recipe` and the NPZ's SHA-256 matches it; else why not
    ("" where there is no manifest yet: nothing to say)."""
    if not manifest_path.exists():
        return ""
    try:
        manifest = json.loads(manifest_path.read_text())
    except json.JSONDecodeError:
        manifest = {}
    if {k: manifest.get(k) for k in recipe} != recipe:
        return f"{manifest_path} was made with other settings"
    if not npz.exists() or sha256(npz) != manifest.get("sha256"):
        return f"{npz} is missing or does not match the SHA-256 in {manifest_path}"
    return None


def make_dataset(env_id: str, path, n_episodes: int, seed: int) -> Path:
    """Generate (or reuse) `n_episodes` of `env_id` as one NPZ at `path` (a `.npz` file, or a
    directory to hold `<env_id>.npz`); returns the NPZ's path.

    The NPZ holds flat arrays over all N steps: observations [N, S] float32, actions [N] int64 or
    [N, A] float32, rewards [N] float32, terminals [N] bool, timeouts [N] bool, policy_ids [N]
    int64 into policy_names [P] str. Beside it, `<stem>.manifest.json` records how it was made.
    Deterministic in (env_id, n_episodes, seed, DATA_VERSION, gymnasium version), byte for byte:
    episode i resets the env with its own seed and draws policy noise from default_rng([seed, i]).
    A manifest with the same settings whose SHA-256 matches the NPZ is reused; else regenerated.
    """
    if env_id not in DATASETS:
        raise RLDataError(f"no embedded dataset for env {env_id!r}; known: {', '.join(DATASETS)}")
    if n_episodes < 1:
        raise RLDataError(f"n_episodes must be >= 1, got {n_episodes}")
    spec = DATASETS[env_id]
    npz = Path(path) if Path(path).suffix.lower() == ".npz" else Path(path) / f"{env_id}.npz"
    cache_folder(npz.parent, "the generated episodes")  # (a file given as the folder: one line, not "[Errno 17] File exists")
    manifest_path = npz.with_name(npz.stem + MANIFEST_SUFFIX)  # one per NPZ, so several can share a directory
    recipe = {"env_id": env_id, "n_episodes": n_episodes, "seed": seed, "data_version": DATA_VERSION,
              "gymnasium_version": gym.__version__,
              "policies": [{"name": b.name, "share": b.share, "params": b.params} for b in spec.policies]}  # fmt: skip
    recipe = json.loads(json.dumps(recipe))  # tuples -> lists, as they come back from the file
    def check() -> tuple[Path | None, str | None]:
        why = _stale(npz, manifest_path, recipe)
        return (npz if why is None else None), why

    def make(found) -> Path:  # (under the lock, by one process: said once, on stderr, where eval's stdout is its JSON)
        if found[1]:
            print(f"rl_data: {found[1]}; regenerating", file=sys.stderr)
        return _generate(spec, env_id, npz, manifest_path, recipe, n_episodes, seed)

    return made_once(npz.with_name(npz.name + ".lock"), check, make)


def _generate(spec, env_id: str, npz: Path, manifest_path: Path, recipe: dict, n_episodes: int, seed: int) -> Path:
    from tqdm.auto import tqdm

    env_seeds, which = _schedule(spec.policies, n_episodes, seed)
    env = make_env(env_id)
    episodes = []
    for i in tqdm(range(n_episodes), desc=f"generating {env_id}", unit="episode", dynamic_ncols=True):
        behaviour = spec.policies[which[i]]
        rng = np.random.default_rng([seed, i])
        act = spec.controller(_draw(behaviour.params, rng), rng)
        episodes.append(_play(env, act, env_seeds[i], behaviour.name))
    env.close()
    npz.parent.mkdir(parents=True, exist_ok=True)
    _write_npz(npz, _flatten(episodes, [b.name for b in spec.policies]))

    returns = np.array([e.total_reward for e in episodes])
    manifest = {**recipe,
                "env_reset_seeds": "rng = numpy.random.default_rng(seed); rng.integers(0, 2**31 - 1, size=n_episodes)",
                "policy_order": "rng.permutation(policy index repeated round(share * n_episodes) times)",
                "policy_noise_rng": "numpy.random.default_rng([seed, episode_index])",
                "steps": int(sum(e.length for e in episodes)), "returns": _return_stats(returns, spec.max_return),
                "per_policy": {b.name: _return_stats(returns[which == j], spec.max_return) if np.any(which == j)
                               else {"episodes": 0} for j, b in enumerate(spec.policies)},
                "file": npz.name, "sha256": sha256(npz)}  # fmt: skip
    tmp = manifest_path.with_name(manifest_path.name + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(tmp, manifest_path)  # the manifest appears only once the NPZ it describes is in place
    return npz


# -- a user's own data ----------------------------------------------------------------------------
def _flatten(episodes: list[Episode], policy_names: list[str] | None = None) -> dict[str, np.ndarray]:
    """Episodes -> D4RL-style flat arrays; policy_ids/policy_names when any episode names its policy."""
    if not episodes:
        raise RLDataError("no episodes to save")
    for i, e in enumerate(episodes):
        if e.length == 0 or len(e.observations) != e.length or len(e.actions) != e.length:
            raise RLDataError(f"episode {i}: {len(e.observations)} observations, {len(e.actions)} actions, "
                              f"{e.length} rewards; expected the same number (at least 1) of each")  # fmt: skip
    ends = np.cumsum([e.length for e in episodes]) - 1
    n = int(ends[-1]) + 1
    terminals, timeouts = np.zeros(n, dtype=bool), np.zeros(n, dtype=bool)
    terminals[ends] = [e.terminated for e in episodes]
    # note: a boundary needs a flag, so an episode that is neither terminated nor truncated is stored as a timeout
    timeouts[ends] = [e.truncated or not e.terminated for e in episodes]
    arrays = {"observations": np.concatenate([e.observations for e in episodes]).astype(np.float32),
              "actions": np.concatenate([e.actions for e in episodes]),
              "rewards": np.concatenate([e.rewards for e in episodes]).astype(np.float32),
              "terminals": terminals, "timeouts": timeouts}  # fmt: skip
    names = policy_names or sorted({e.policy for e in episodes if e.policy})
    if names:
        index = {name: j for j, name in enumerate(names)}
        ids = [index.get(e.policy, -1) for e in episodes]
        arrays["policy_ids"] = np.repeat(ids, [e.length for e in episodes]).astype(np.int64)
        arrays["policy_names"] = np.array(names, dtype=str)
    return arrays


def save_episodes_npz(episodes: list[Episode], path) -> Path:
    """Write episodes as one D4RL-style NPZ that `load_episodes` reads back (atomically)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_npz(path, _flatten(episodes))
    return path


def _check_arrays(raw: dict, source: str) -> dict[str, np.ndarray]:
    """The D4RL keys of `raw` (name -> array, or None for a non-array entry), checked for presence,
    dtype, ndim and equal lengths, with `policy_ids` when present; every error is one line naming `source`."""
    for key in KEYS:
        if raw.get(key) is None and key != "timeouts":
            found = ", ".join(sorted(raw)) or "nothing"
            raise RLDataError(f"{source}: missing key {key!r}; expected {', '.join(KEYS)} (timeouts optional), found {found}")
    out = {}
    for key in (*KEYS, "policy_ids"):
        if raw.get(key) is None:
            continue
        a, want = np.asarray(raw[key]), SHAPES.get(key, "[N]")
        if a.ndim == 2 and a.shape[1] == 1 and key != "observations":  # (a column, [N, 1], as some writers store rewards and flags)
            a = a[:, 0] if key != "actions" else a
        if not (np.issubdtype(a.dtype, np.number) or a.dtype == bool) or np.iscomplexobj(a):  # (complex: cast to real, its imaginary part lost)
            raise RLDataError(f"{source}: {key} has dtype {a.dtype}; expected a real numeric array {want}")
        if key == "observations" and a.ndim > 2:  # (images, [N, H, W]: read flat, as an environment's observations are)
            a = a.reshape(len(a), int(np.prod(a.shape[1:])))  # (not -1: an empty [0, H, W] is named below, not numpy's error)
        if a.ndim != (2 if key == "observations" else 1) and not (key == "actions" and a.ndim == 2):
            raise RLDataError(f"{source}: {key} has shape {a.shape}; expected {want}")
        out[key] = a
    lengths = {k: len(a) for k, a in out.items()}
    if len(set(lengths.values())) > 1:
        listed = ", ".join(f"{k} {n}" for k, n in lengths.items())
        raise RLDataError(f"{source}: arrays of different lengths ({listed}); expected one row per step")
    if not lengths["observations"]:
        raise RLDataError(f"{source}: no steps (its arrays have 0 rows); expected at least one episode")
    for key in ("terminals", "timeouts"):  # flags: a NaN or a 2 read as True would cut an episode silently
        bad = ~np.isin(out[key], (0, 1)) if key in out else None
        if bad is not None and bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise RLDataError(f"{source}: {key}[{i}] is {out[key][i]}; expected 0 / 1 (or booleans) per step")
    return out


def _steps_float32(a, field: str, who: str) -> np.ndarray:
    """An episode's observations or rewards as float32, or an error naming `who` (the data and the
    episode), the field and its first step that is NaN / infinite or beyond float32's range."""
    try:
        return _float32(np.asarray(a), field, who)
    except ValueError as e:
        raise RLDataError(str(e)) from None


def _split(arrays: dict[str, np.ndarray], names: list[str] | None, source: str) -> list[Episode]:
    """Flat arrays -> episodes, cut after every step flagged terminal or timeout."""
    terminals = arrays["terminals"].astype(bool)
    timeouts = arrays["timeouts"].astype(bool) if "timeouts" in arrays else np.zeros_like(terminals)
    actions = arrays["actions"]
    if np.issubdtype(actions.dtype, np.integer) or actions.dtype == bool:
        # a discrete action stored as [N, 1] is the same as [N]
        actions = (actions.reshape(len(actions)) if actions.ndim == 2 and actions.shape[1] == 1 else actions).astype(np.int64)
    else:
        actions = actions.reshape(len(actions), -1).astype(np.float32)  # a 1-D continuous action is [N, 1]
    n = len(terminals)
    cuts = [0, *(np.flatnonzero(terminals | timeouts) + 1)]
    cuts += [n] if cuts[-1] < n else []  # the trailing piece
    ids = arrays.get("policy_ids")
    episodes = []
    for i, (a, b) in enumerate(zip(cuts[:-1], cuts[1:])):
        policy = names[int(ids[a])] if ids is not None and names and 0 <= int(ids[a]) < len(names) else ""
        obs, rewards = (_steps_float32(arrays[k][a:b], k, f"{source}: episode {i} (rows {a}-{b - 1})") for k in ("observations", "rewards"))
        terminated = bool(terminals[b - 1])
        episodes.append(Episode(obs, actions[a:b], rewards, terminated, bool(timeouts[b - 1]) or not terminated, policy))
    return episodes


def fingerprint(episodes: list[Episode]) -> dict:
    """What identifies a dataset's episodes, whatever file holds them: their number, steps and a
    SHA-256 over their arrays and ends (a run records it; its resume checks the data is the same)."""
    import hashlib

    h = hashlib.sha256()
    for e in episodes:
        for a in (e.observations, e.actions, e.rewards):
            h.update(str((a.dtype.str, a.shape)).encode())
            h.update(np.ascontiguousarray(a).tobytes())
        h.update(bytes([e.terminated, e.truncated]))
    return {"episodes": len(episodes), "steps": int(sum(e.length for e in episodes)), "sha256": h.hexdigest()}


def check_npz_sizes(path: Path) -> None:
    """Each .npy member's header against the bytes the archive holds for it, before numpy allocates
    what the header says: a crafted header of shape (10**12,) in a 258-byte file asked for 3.6 TiB."""
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            if not info.filename.endswith(".npy"):
                continue
            with archive.open(info) as member:
                version = np.lib.format.read_magic(member)  # (1.0; 2.0 and 3.0 for long headers, 3.0 read as 2.0's layout)
                read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                shape, _, dtype = read(member)
                body = info.file_size - member.tell()
            claimed = math.prod(shape) * dtype.itemsize
            if claimed > body:
                raise ValueError(f"{info.filename}: its header gives shape {shape} of {dtype} ({claimed:,} bytes); the archive holds {body:,}")


def _read_file(path: Path) -> dict:
    """Top-level entries of an NPZ or HDF5 file: name -> array for the ones read, else None."""
    suffix = path.suffix.lower()
    if suffix == ".npz":
        try:
            with open(path, "rb") as f:
                zipped = f.read(2) == b"PK"  # (an archive of no arrays starts PK\x05\x06)
        except OSError as e:
            raise RLDataError(f"{path}: cannot read it ({e.strerror})") from None
        if not zipped:  # (else numpy reads it as a pickle, and its error tells to unpickle what may not even be one)
            raise RLDataError(f"{path}: not an NPZ file (a zip archive of .npy arrays, as np.savez writes)")
        try:
            check_npz_sizes(path)
            with np.load(path, allow_pickle=False) as f:
                return {k: f[k] if k in READ else None for k in f.files}
        except (ValueError, OSError, zipfile.BadZipFile) as e:
            raise RLDataError(f"{path}: not a readable NPZ of numeric arrays ({e})") from None
        except MemoryError:
            raise RLDataError(f"{path}: its arrays do not fit in memory") from None
    if suffix in (".hdf5", ".h5"):
        import h5py

        try:
            with h5py.File(path, "r") as f:
                groups = [k for k in f.keys() if k in READ and not isinstance(f[k], h5py.Dataset)]
                if groups:  # e.g. dict observations, one dataset per key
                    raise RLDataError(f"{path}: {groups[0]} is an HDF5 group, not one array; expected a dataset of shape {SHAPES.get(groups[0], '[N]')}")
                return {k: f[k][()] if k in READ else None for k in f.keys()}
        except OSError as e:
            raise RLDataError(f"{path}: not a readable HDF5 file ({e})") from None
        except MemoryError:
            raise RLDataError(f"{path}: its arrays do not fit in memory") from None
    raise RLDataError(f"{path}: unknown file type {suffix!r}; expected a D4RL-style .npz, .hdf5 or .h5 file, or a Minari dataset")


def _load_minari(dataset) -> list[Episode]:
    """A MinariDataset -> episodes; Minari stores T + 1 observations per episode (the last is dropped)."""
    source = f"Minari dataset {dataset.spec.dataset_id!r}"
    if not isinstance(dataset.observation_space, gym.spaces.Box):
        raise RLDataError(f"{source}: observation space {dataset.observation_space}; expected a Box (flat vector observations)")
    discrete = isinstance(dataset.action_space, gym.spaces.Discrete)
    if not (discrete or isinstance(dataset.action_space, gym.spaces.Box)):
        raise RLDataError(f"{source}: action space {dataset.action_space}; expected Discrete or Box")
    episodes = []
    for ep in dataset.iterate_episodes():
        t = len(ep.rewards)
        obs = np.asarray(ep.observations)
        if len(obs) != t + 1:
            raise RLDataError(f"{source}: episode {ep.id} has {len(obs)} observations for {t} steps; expected {t + 1}")
        obs = _steps_float32(obs[:-1], "observations", f"{source}: episode {ep.id}")  # (the last, after the last step, is dropped)
        actions = np.asarray(ep.actions)
        actions = actions.reshape(t).astype(np.int64) if discrete else actions.reshape(t, -1).astype(np.float32)
        episodes.append(Episode(obs.reshape(t, -1), actions, _steps_float32(ep.rewards, "rewards", f"{source}: episode {ep.id}"),
                                bool(ep.terminations[-1]), bool(ep.truncations[-1]) or not ep.terminations[-1]))  # fmt: skip
    if not episodes:
        raise RLDataError(f"{source}: no episodes")
    return episodes


def load_episodes(path_or_id) -> list[Episode]:
    """Episodes from a D4RL-style `.npz` / `.hdf5` / `.h5` file, a Minari dataset directory, or a
    Minari dataset id (e.g. "cartpole/test-v0") under MINARI_DATASETS_PATH (default ~/.minari/datasets).

    Files hold flat arrays over N steps: observations [N, S], actions [N] (integer: discrete) or
    [N, A], rewards [N], terminals [N], timeouts [N] (optional); an episode ends after each step
    flagged terminal or timeout, and a trailing piece with neither counts as truncated. Optional
    policy_ids [N] + policy_names [P] (as `make_dataset` writes them) name each episode's policy.
    """
    path = Path(path_or_id)
    if path.is_file() and path.suffix in (".hdf5", ".h5") and (path.parent / "metadata.json").exists():
        path = path.parent  # a Minari dataset's own main_data.hdf5 (episode groups, not flat arrays): read as its dataset
    if path.is_file():
        raw = _read_file(path)
        names = raw.pop("policy_names", None)
        names = [s.decode() if isinstance(s, bytes) else str(s) for s in np.atleast_1d(names)] if names is not None else None
        return _split(_check_arrays(raw, str(path)), names, str(path))
    import minari

    if path.is_dir():
        data = path if (path / "metadata.json").exists() else path / "data"
        if not (data / "metadata.json").exists():
            raise RLDataError(f"{path}: a directory but not a Minari dataset; expected {path}/data/metadata.json")
        try:
            dataset = minari.MinariDataset(data)
        except Exception as e:  # noqa: BLE001  # minari reports a damaged dataset with assertions, JSON and HDF5 errors alike
            raise RLDataError(f"{data}: not a readable Minari dataset ({type(e).__name__}: {str(e).strip() or 'no detail'})") from None
        return _load_minari(dataset)
    try:
        dataset = minari.load_dataset(str(path_or_id), download=False)
    except (FileNotFoundError, ValueError) as e:
        local = ", ".join(minari.list_local_datasets()) or "none"
        reason = str(e).split(" Use download=True")[0].rstrip(".")  # note: minari's hint names its Python argument
        raise RLDataError(f"{path_or_id}: no such file, and not a local Minari dataset ({reason}); local ones: {local} "
                          f"(`minari download ID` fetches one where there is a network)") from None  # fmt: skip
    return _load_minari(dataset)
