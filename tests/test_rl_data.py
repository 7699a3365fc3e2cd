"""Offline RL data: generated datasets (determinism, the CartPole return mix, manifest reuse),
D4RL-style NPZ / HDF5 files, Minari datasets, and rollouts."""

import json

import gymnasium as gym
import h5py
import numpy as np
import pytest

from recipes.rl_data import (
    DATASETS,
    GOOD_CARTPOLE,
    Episode,
    RLDataError,
    cartpole_controller,
    evaluate_policy,
    load_episodes,
    make_dataset,
    rollout,
    save_episodes_npz,
)


def good_cartpole(obs):
    return cartpole_controller(GOOD_CARTPOLE, np.random.default_rng(0))(obs)


def arrays(path) -> dict:
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def episode(t: int, terminated: bool, truncated: bool, policy: str = "", action_dim=None, start: float = 0.0) -> Episode:
    """T steps with distinct observations; discrete actions, or continuous ones of width action_dim."""
    obs = start + np.arange(t * 3, dtype=np.float32).reshape(t, 3)
    actions = np.arange(t, dtype=np.int64) % 2 if action_dim is None else np.full((t, action_dim), 0.5, dtype=np.float32)
    return Episode(obs, actions, np.full(t, 1.0, dtype=np.float32), terminated, truncated, policy)


def same(a: Episode, b: Episode) -> bool:
    fields = ("observations", "actions", "rewards")
    flags = ("terminated", "truncated", "policy")
    return (all(np.array_equal(getattr(a, f), getattr(b, f)) for f in fields) and a.actions.dtype == b.actions.dtype
            and all(getattr(a, f) == getattr(b, f) for f in flags))


# -- generated datasets ---------------------------------------------------------------------------
@pytest.mark.parametrize("env_id", list(DATASETS))
def test_dataset_is_deterministic(tmp_path, env_id):
    a = make_dataset(env_id, tmp_path / "a", 12, seed=3)
    b = make_dataset(env_id, tmp_path / "b", 12, seed=3)
    c = make_dataset(env_id, tmp_path / "c", 12, seed=4)
    assert a.read_bytes() == b.read_bytes()  # fixed zip timestamps: same seed, same file
    xa, xc = arrays(a), arrays(c)
    assert set(xa) == {"observations", "actions", "rewards", "terminals", "timeouts", "policy_ids", "policy_names"}
    assert not (xa["observations"].shape == xc["observations"].shape and np.array_equal(xa["observations"], xc["observations"]))
    episodes = load_episodes(a)
    assert len(episodes) == 12 and all(e.policy in xa["policy_names"] for e in episodes)
    manifest = json.loads((tmp_path / "a" / f"{env_id}.manifest.json").read_text())
    assert manifest["env_id"] == env_id and manifest["gymnasium_version"] == gym.__version__
    assert manifest["sha256"] == json.loads((tmp_path / "b" / f"{env_id}.manifest.json").read_text())["sha256"]
    assert sum(p["episodes"] for p in manifest["per_policy"].values()) == 12
    assert [p["name"] for p in manifest["policies"]] == [b.name for b in DATASETS[env_id].policies]
    assert all("params" in p and "share" in p for p in manifest["policies"])
    assert set(manifest["returns"]) >= {"mean", "std", "min", "max", "quantiles", "fraction_at_max"}
    assert (manifest["returns"]["fraction_at_max"] is None) == (DATASETS[env_id].max_return is None)
    assert manifest["returns"]["mean"] == pytest.approx(np.mean([e.total_reward for e in episodes]), rel=1e-5)


def test_cartpole_dataset_return_mix(tmp_path):
    spec = DATASETS["CartPole-v1"]
    episodes = load_episodes(make_dataset("CartPole-v1", tmp_path, spec.episodes, spec.seed))
    returns = np.array([e.total_reward for e in episodes])
    bands = {f"{lo}-{lo + 99}": int(np.sum((returns >= lo) & (returns < lo + 100))) for lo in range(0, 500, 100)}
    bands["500"] = int(np.sum(returns >= 500))
    for band, count in bands.items():
        print(f"{band:>7s} {count:4d} {'#' * (count // 5)}")
    assert len(episodes) == spec.episodes
    assert bands["500"] <= 0.05 * len(episodes) and bands["500"] >= 10
    assert returns.mean() <= 150
    assert all(count >= 15 for count in bands.values())
    # returns of 500 are the good controller's (with lapses, or before it tires), not the flawed ones'
    top = [e.policy for e in episodes if e.total_reward >= 500]
    assert top.count("lapses") + top.count("tiring") >= 0.8 * len(top)
    assert all(e.terminated != (e.total_reward >= 500) and e.truncated == (e.total_reward >= 500) for e in episodes)
    assert all(e.observations.shape == (e.length, 4) and e.actions.dtype == np.int64 for e in episodes)


def test_pendulum_dataset_spread(tmp_path):
    spec = DATASETS["Pendulum-v1"]
    episodes = load_episodes(make_dataset("Pendulum-v1", tmp_path, spec.episodes, spec.seed))
    returns = np.array([e.total_reward for e in episodes])
    assert np.quantile(returns, 0.1) < -1000 and np.quantile(returns, 0.9) > -300
    assert all(e.length == 200 and e.truncated and not e.terminated for e in episodes)
    actions = np.concatenate([e.actions for e in episodes])
    assert actions.dtype == np.float32 and actions.shape[1] == 1 and np.abs(actions).max() <= 2.0
    means = {name: returns[[e.policy == name for e in episodes]].mean() for name in {e.policy for e in episodes}}
    assert means["random"] < means["weak_balance"] < means["swing_balance"]


def test_manifest_reuse_and_regeneration(tmp_path, capsys):
    path = make_dataset("CartPole-v1", tmp_path / "cp.npz", 8, seed=0)
    original, stamp = path.read_bytes(), path.stat().st_mtime_ns
    capsys.readouterr()
    assert make_dataset("CartPole-v1", tmp_path / "cp.npz", 8, seed=0) == path
    assert path.stat().st_mtime_ns == stamp and "regenerating" not in capsys.readouterr().err  # reused, not rewritten

    path.write_bytes(original[:-10] + b"corrupted!")
    make_dataset("CartPole-v1", tmp_path / "cp.npz", 8, seed=0)
    said = capsys.readouterr()
    assert said.err.count("does not match the SHA-256") == 1 and not said.out  # once, and not on stdout (eval's JSON)
    assert path.read_bytes() == original

    make_dataset("CartPole-v1", tmp_path / "cp.npz", 9, seed=0)
    assert "other settings" in capsys.readouterr().err
    assert json.loads((tmp_path / "cp.manifest.json").read_text())["n_episodes"] == 9
    assert len(load_episodes(path)) == 9
    with pytest.raises(ValueError, match=r"cp.manifest.json is a file, where the folder that holds the generated episodes should be"):
        make_dataset("CartPole-v1", tmp_path / "cp.manifest.json", 8, seed=0)  # (as rl_dir=: it was "[Errno 17] File exists")


# -- files ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".npz", ".hdf5"])
@pytest.mark.parametrize("action_dim", [None, 2])
def test_round_trip(tmp_path, suffix, action_dim):
    flags = [(5, True, False, "a"), (3, False, True, "b"), (4, True, True, ""), (2, False, True, "a")]
    episodes = [episode(t, term, trunc, policy, action_dim, start=100 * i) for i, (t, term, trunc, policy) in enumerate(flags)]
    path = save_episodes_npz(episodes, tmp_path / "mine.npz")
    if suffix == ".hdf5":  # the same arrays as a D4RL-style HDF5 file
        with h5py.File(tmp_path / "mine.hdf5", "w") as f:
            for key, value in arrays(path).items():
                f[key] = value.astype("S") if value.dtype.kind == "U" else value
        path = tmp_path / "mine.hdf5"
    back = load_episodes(path)
    assert len(back) == 4 and all(same(a, b) for a, b in zip(episodes, back))
    assert [e.length for e in back] == [5, 3, 4, 2] and back[0].total_reward == 5.0


def test_observations_of_more_dimensions_are_read_flat(tmp_path):
    """[N, H, W] observations (a small image a step) are read flat, as an environment's are and a
    Minari dataset's: they were refused as "expected [N, S]"."""
    obs = np.arange(24, dtype=np.float32).reshape(6, 2, 2)
    np.savez(tmp_path / "img.npz", observations=obs, actions=np.zeros(6, np.int64), rewards=np.ones(6), terminals=np.eye(6)[5] > 0)
    (back,) = load_episodes(tmp_path / "img.npz")
    assert back.observations.shape == (6, 4) and np.array_equal(back.observations, obs.reshape(6, 4))
    np.savez(tmp_path / "none.npz", observations=obs[:0], actions=np.zeros(0, np.int64), rewards=np.ones(0), terminals=np.zeros(0, bool))
    with pytest.raises(RLDataError, match=r"none.npz: no steps \(its arrays have 0 rows\)"):
        load_episodes(tmp_path / "none.npz")


def test_unflagged_episode_is_saved_as_a_timeout(tmp_path):
    back = load_episodes(save_episodes_npz([episode(3, False, False), episode(2, True, False)], tmp_path / "x.npz"))
    assert [(e.length, e.terminated, e.truncated) for e in back] == [(3, False, True), (2, True, False)]
    with pytest.raises(RLDataError, match="episode 1: 0 observations"):
        save_episodes_npz([episode(3, True, False), episode(0, True, False)], tmp_path / "y.npz")


def test_hdf5_boundaries_and_trailing_piece(tmp_path):
    # terminal after step 2, timeout after step 5, then a trailing piece of 2 steps with neither flag
    n = 8
    terminals, timeouts = np.zeros(n, dtype=bool), np.zeros(n, dtype=bool)
    terminals[2], timeouts[5] = True, True
    path = tmp_path / "d4rl.hdf5"
    with h5py.File(path, "w") as f:
        f["observations"] = np.arange(n * 2, dtype=np.float64).reshape(n, 2)
        f["actions"] = np.linspace(-1, 1, n * 2).reshape(n, 2)
        f["rewards"] = np.arange(n, dtype=np.float64)
        f["terminals"], f["timeouts"] = terminals, timeouts
        f.create_group("infos")  # extra entries are ignored
    back = load_episodes(path)
    assert [e.length for e in back] == [3, 3, 2]
    assert [(e.terminated, e.truncated) for e in back] == [(True, False), (False, True), (False, True)]
    assert back[1].observations.dtype == np.float32 and back[1].actions.shape == (3, 2) and back[2].rewards.tolist() == [6.0, 7.0]

    # the same through NPZ, without the optional timeouts key and with discrete actions
    np.savez(tmp_path / "d.npz", observations=np.zeros((n, 2)), actions=np.arange(n) % 2, rewards=np.ones(n), terminals=terminals)
    back = load_episodes(tmp_path / "d.npz")
    assert [e.length for e in back] == [3, 5] and back[0].terminated and back[1].truncated and back[1].actions.dtype == np.int64


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda a: a.pop("rewards"), "missing key 'rewards'"),
        (lambda a: a.update(rewards=np.ones(5)), "arrays of different lengths"),
        (lambda a: a.update(observations=np.zeros(6)), "observations has shape (6,); expected [N, S]"),
        (lambda a: a.update(actions=np.array(["left"] * 6)), "actions has dtype <U4; expected a real numeric array"),
        (lambda a: a.update(observations=a["observations"] + 1j), "observations has dtype complex128; expected a real numeric array"),  # was cast
        (lambda a: a.update({k: v[:0] for k, v in a.items()}), "no steps (its arrays have 0 rows)"),
        (lambda a: a.update(terminals=np.array([0, 0, np.nan, 0, 0, 1])), "terminals[2] is nan; expected 0 / 1"),  # was a silent cut
        (lambda a: a.update(terminals=np.eye(6)[2] > 0, observations=np.where(np.arange(18).reshape(6, 3) == 13, np.nan, 0.0)),  # row 4: NaN
         "episode 1 (rows 3-5): observations hold NaN or infinite values (first at step 1)"),
        (lambda a: a.update(rewards=np.full(6, 1e39)),  # finite in float64, inf in float32 (was named as NaN / infinite, after numpy's warning)
         "episode 0 (rows 0-5): rewards hold values beyond float32's range (first at step 0); scale them down"),
    ],
)
@pytest.mark.parametrize("suffix", [".npz", ".h5"])
def test_bad_file_names_file_and_problem(tmp_path, change, message, suffix):
    data = {"observations": np.zeros((6, 3)), "actions": np.zeros(6, dtype=np.int64), "rewards": np.ones(6),
            "terminals": np.eye(6)[5] > 0}
    change(data)
    path = tmp_path / f"bad{suffix}"
    if suffix == ".npz":
        np.savez(path, **data)
    else:
        with h5py.File(path, "w") as f:
            for k, v in data.items():
                f[k] = v.astype("S") if v.dtype.kind == "U" else v
            message = message.replace("<U4", "|S4")
    with pytest.raises(RLDataError) as e:
        load_episodes(path)
    assert str(path) in str(e.value) and message in str(e.value) and "\n" not in str(e.value)


def test_dict_observations_and_a_damaged_minari_folder_are_named(tmp_path):
    path = tmp_path / "dict.h5"
    with h5py.File(path, "w") as f:
        f["observations/position"] = np.zeros((4, 2))  # dict observations: a group of arrays
        for k, v in {"actions": np.zeros(4, dtype=np.int64), "rewards": np.ones(4), "terminals": np.eye(4)[3] > 0}.items():
            f[k] = v
    with pytest.raises(RLDataError, match=r"dict\.h5: observations is an HDF5 group, not one array; expected a dataset of shape \[N, S\]"):
        load_episodes(path)
    (tmp_path / "broken" / "data").mkdir(parents=True)
    for text in ("{}", "not json"):  # minari raised a bare AssertionError / a JSON error naming no file
        (tmp_path / "broken" / "data" / "metadata.json").write_text(text)
        with pytest.raises(RLDataError, match=r"broken/data: not a readable Minari dataset \(\w+"):
            load_episodes(tmp_path / "broken")


def test_unknown_source(tmp_path, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    (tmp_path / "x.csv").write_text("1,2\n")
    with pytest.raises(RLDataError, match=r"x\.csv: unknown file type '\.csv'"):
        load_episodes(tmp_path / "x.csv")
    (tmp_path / "text.npz").write_text("observations,actions\n")  # numpy read it as a pickle, and said to unpickle it
    with pytest.raises(RLDataError, match=r"text\.npz: not an NPZ file \(a zip archive of \.npy arrays, as np\.savez writes\)$"):
        load_episodes(tmp_path / "text.npz")
    np.savez(tmp_path / "empty.npz")  # an archive of no arrays (it starts PK\x05\x06): an NPZ, without the keys
    with pytest.raises(RLDataError, match=r"empty\.npz: missing key 'observations'; .* found nothing"):
        load_episodes(tmp_path / "empty.npz")
    np.savez(tmp_path / "objects.npz", observations=np.array([{"a": 1}], dtype=object))
    with pytest.raises(RLDataError, match=r"objects\.npz: not a readable NPZ of numeric arrays \(Object arrays cannot be loaded"):
        load_episodes(tmp_path / "objects.npz")
    import io
    import zipfile

    header = io.BytesIO()  # a crafted header, shape (10**12,) float32 without its data: numpy asked for 3.6 TiB (a traceback)
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": (10**12,)})
    with zipfile.ZipFile(tmp_path / "bomb.npz", "w") as archive:
        archive.writestr("observations.npy", header.getvalue())  # (the magic string, then the header)
    with pytest.raises(RLDataError, match=r"bomb\.npz: not a readable NPZ of numeric arrays \(observations\.npy: its header gives shape "
                                          r"\(1000000000000,\) of float32 \(4,000,000,000,000 bytes\); the archive holds 0\)$"):  # fmt: skip
        load_episodes(tmp_path / "bomb.npz")
    with pytest.raises(RLDataError, match="nothing/here-v0: no such file, and not a local Minari dataset"):
        load_episodes("nothing/here-v0")


# -- Minari ---------------------------------------------------------------------------------------
def record_minari(dataset_id: str, how: str) -> tuple[list, list]:
    """Three CartPole episodes (one hits the 40-step limit) written as a Minari dataset; returns
    each episode's first observation and length."""
    import minari

    rng = np.random.default_rng(0)
    env = gym.make("CartPole-v1", max_episode_steps=40)
    if how == "collector":
        pytest.importorskip("jax", reason="minari.DataCollector needs jax (minari[create])")
        env = minari.DataCollector(env)
    first_obs, lengths, buffers = [], [], []
    for seed, policy in [(0, "good"), (1, "random"), (2, "random")]:
        obs, _ = env.reset(seed=seed)
        first_obs.append(obs)
        steps = {"observations": [obs], "actions": [], "rewards": [], "terminations": [], "truncations": []}
        while True:
            action = good_cartpole(obs) if policy == "good" else int(rng.integers(2))
            obs, reward, terminated, truncated, _ = env.step(action)
            for key, value in zip(steps, (obs, action, reward, terminated, truncated)):
                steps[key].append(value)
            if terminated or truncated:
                break
        lengths.append(len(steps["rewards"]))
        buffers.append(minari.data_collector.EpisodeBuffer(id=seed, seed=seed, infos={}, **steps))
    about = dict(algorithm_name="test", author="test", author_email="test@example.com", code_permalink="tests/test_rl_data.py",
                 description="three CartPole episodes", eval_env="CartPole-v1", ref_min_score=0.0, ref_max_score=40.0)
    if how == "collector":
        env.create_dataset(dataset_id, **about)
    else:
        minari.create_dataset_from_buffers(dataset_id, buffers, env=env, **about)
    env.close()
    return first_obs, lengths


@pytest.mark.parametrize("how", ["buffers", "collector"])
def test_minari_dataset_offline(tmp_path, monkeypatch, how):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    first_obs, lengths = record_minari("cartpole/test-v0", how)
    back = load_episodes("cartpole/test-v0")
    assert [e.length for e in back] == lengths and lengths[0] == 40
    assert (back[0].terminated, back[0].truncated) == (False, True)  # the good controller hits the time limit
    assert all(e.terminated and not e.truncated for e in back[1:] if e.length < 40)
    assert all(np.array_equal(e.observations[0], o) for e, o in zip(back, first_obs))
    assert back[0].actions.dtype == np.int64 and back[0].observations.shape == (40, 4) and back[0].total_reward == 40.0
    by_path = load_episodes(tmp_path / "cartpole" / "test-v0")  # a dataset directory works too
    assert all(same(a, b) for a, b in zip(back, by_path))
    by_file = load_episodes(tmp_path / "cartpole" / "test-v0" / "data" / "main_data.hdf5")  # and its main_data.hdf5 (episode groups)
    assert all(same(a, b) for a, b in zip(back, by_file))


# -- rollouts -------------------------------------------------------------------------------------
def test_rollout_and_evaluate():
    ep = rollout("CartPole-v1", good_cartpole, seed=0)
    assert ep.length == 500 and ep.truncated and not ep.terminated and ep.total_reward == 500.0
    short = rollout("CartPole-v1", good_cartpole, seed=0, max_steps=30)
    assert short.length == 30 and short.truncated and np.array_equal(short.observations, ep.observations[:30])
    pend = rollout("Pendulum-v1", lambda obs: np.zeros(1), seed=0)
    assert pend.actions.shape == (200, 1) and pend.observations.shape == (200, 3) and pend.total_reward < 0

    returns = evaluate_policy("CartPole-v1", lambda: (lambda obs: 0), seeds=[0, 1, 2])
    assert returns.shape == (3,) and returns.dtype == np.float64 and np.all(returns < 20)


def _hold_lock(path, log, seconds):
    import time

    from tokenizers_mm.base import locked

    with locked(path):
        with open(log, "a") as f:
            f.write("in\n")
        time.sleep(seconds)
        with open(log, "a") as f:
            f.write("out\n")


def test_processes_building_the_same_cache_take_turns(tmp_path):
    """`locked` (around make_dataset's and make_corpus's check-or-generate): torchrun's processes
    never generate the same files at once; the later one finds the first one's cache."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_hold_lock, args=(tmp_path / "x.lock", tmp_path / "log", 0.5)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    assert (tmp_path / "log").read_text().split() == ["in", "out", "in", "out"]  # never both inside


def test_an_environment_that_cannot_be_made_is_one_clear_error():
    import importlib.util

    from recipes import rl_data

    with pytest.raises(rl_data.RLDataError, match="env 'Nope-v0': Environment `Nope` doesn't exist"):
        rl_data.make_env("Nope-v0")
    import sys

    before = set(sys.modules)  # gymnasium imports the module of "module:Env" first: a config (or a run.json) would run code
    with pytest.raises(rl_data.RLDataError, match=r"env 'this:CartPole-v1': 'module:' would make gymnasium import 'this'; a config names no code"):
        rl_data.make_env("this:CartPole-v1")
    assert "this" not in set(sys.modules) - before
    if importlib.util.find_spec("mujoco") is None:  # MuJoCo's environments need gymnasium[mujoco]
        with pytest.raises(rl_data.RLDataError, match=r"env 'Hopper-v5': MuJoCo is not installed, run `pip install \"gymnasium\[mujoco\]\"`"):
            rl_data.make_env("Hopper-v5")
