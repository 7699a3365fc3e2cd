"""Decision Transformer recipes end to end on small data: embedded CartPole / Pendulum datasets,
a user's NPZ file, training DT and BC, rollouts in the simulator, the plot, evaluate and resume."""

import json
import re
import shutil
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("gymnasium")

from recipes import dt, dt_cartpole, dt_offline, dt_pendulum, rl_data  # noqa: E402
from tests.conftest import install_entry_points  # noqa: E402
from tokenizers_mm import TrajectoryTokenizer  # noqa: E402

TINY = dict(dim=32, depth=1, num_heads=1, batch_size=16, max_steps=8, eval_every=8, ckpt_every=4, log_every=4, warmup_steps=2,
            eval_episodes=2, context=5, cpu=True)  # fmt: skip


def test_windows_cover_every_step_and_bc_blanks_returns(tmp_path):
    path = rl_data.make_dataset("CartPole-v1", tmp_path / "cp.npz", 12, seed=3)
    eps = rl_data.load_episodes(path)
    tok = TrajectoryTokenizer(4, 2, discrete=True, context=5, max_timestep=500).fit(eps)
    w, bc = dt.Windows(eps, tok), dt.Windows(eps, tok, blank_returns=True)
    assert len(w) == sum(len(ep.rewards) for ep in eps)
    assert w[0]["trajectory"].values[0, 0] == pytest.approx(eps[0].total_reward / tok.rtg_scale)
    assert torch.count_nonzero(bc[0]["trajectory"].values[0::3]) == 0  # return tokens blanked
    assert torch.equal(bc[0]["trajectory"].values[1::3], w[0]["trajectory"].values[1::3])  # states unchanged


def test_dt_cartpole_trains_dt_and_bc_plots_evaluates_and_resumes(tmp_path):
    run = tmp_path / "run"
    cfg = dt_cartpole.Config(run_dir=str(run), data_dir=str(tmp_path / "data"), n_episodes=30, targets="100,500", **TINY)
    metrics = dt_cartpole.main(cfg)
    assert 8 <= metrics["val_return"] <= 500 and metrics["bc_return"] is not None
    summary = json.loads((run / "returns.json").read_text())
    assert summary["table"]["targets"] == [100.0, 500.0] and len(summary["table"]["dt"]) == 2
    assert (run / "return_vs_target.png").stat().st_size > 10_000 and (run / "bc" / "results.json").exists()
    again = dt_cartpole.evaluate(run)
    assert again["val_return"] == pytest.approx(metrics["val_return"]) and again["bc_return"] == pytest.approx(metrics["bc_return"])
    summary_file = run / "returns.json"
    kept = summary_file.read_bytes()
    summary_file.unlink()  # as a run stopped before its summary: eval still uses the target training used
    assert dt_cartpole.evaluate(run, device="auto")["target"] == summary["target"] and summary["target"] > 0  # (auto: the GPU when there is one)
    summary_file.write_bytes(b"")  # a damaged summary (a full disk): said so, and the same target used
    assert dt_cartpole.evaluate(run)["target"] == summary["target"]
    summary_file.write_bytes(kept)
    # resume after the end: both runs load their last checkpoint and report the same returns
    resumed = dt_cartpole.main(dt_cartpole.Config(**{**cfg.__dict__}), resume=True)
    assert resumed["val_return"] == pytest.approx(metrics["val_return"])
    # a run stopped before its first checkpoint, resumed longer: it starts again, and run.json records the new length
    shutil.rmtree(run / "checkpoints")
    from recipes.cli import main as cli_main

    assert cli_main(["resume", str(run), "max_steps=10"]) == 0
    assert json.loads((run / "run.json").read_text())["config"]["max_steps"] == 10 == json.loads((run / "results.json").read_text())["step"]


@pytest.mark.slow
def test_dt_and_its_bc_baseline_train_one_after_the_other_on_two_processes(tmp_path):
    """Two trainings in one process group (DT, then BC): the first must not end the group. Their
    evaluations, and `mmtok eval` launched as two processes, roll out half the episodes in each
    process and report the figures one process gives for all of them."""
    from test_train import torchrun

    run = tmp_path / "run"
    args = [f"{k}={v}" for k, v in TINY.items()] + [f"run_dir={run}", f"data_dir={tmp_path / 'data'}", "n_episodes=30", "targets=500",
                                                    "target=500", "eval_episodes=3"]  # fmt: skip
    torchrun(2, "-m", "recipes.cli", "train", "dt_cartpole", *args)
    assert json.loads((run / "bc" / "results.json").read_text())["val_return"] > 0
    alone = dt_cartpole.evaluate(run)
    trained = json.loads((run / "results.json").read_text())
    assert trained["val_return"] == pytest.approx(alone["val_return"]) and trained["val_return_std"] == pytest.approx(alone["val_return_std"])
    both = json.loads(torchrun(2, "-m", "recipes.cli", "eval", str(run)).stdout)  # (JSON only: gloo's connection lines kept out)
    assert both == pytest.approx(alone) and alone["val_return_std"] > 0  # (3 episodes, 2 and 1 a process: the std of all 3)
    assert both["episodes"] == alone["episodes"] == 3  # each episode rolled out once, by one of the processes
    table = json.loads((run / "returns.json").read_text())["table"]  # the target table after training: split too (counted)
    assert table["episodes"] == 3 and table["dt"] == [pytest.approx([alone["val_return"], alone["val_return_std"]])]  # (target 500 both)
    assert table["bc"] == pytest.approx([alone["bc_return"], alone["bc_return_std"]])


def test_dt_pendulum_with_gato_bins_and_a_users_npz(tmp_path, capsys):
    run = tmp_path / "pend"
    metrics = dt_pendulum.main(dt_pendulum.Config(run_dir=str(run), data_dir=str(tmp_path / "data"), n_episodes=10, action_bins=1024,
                                                  targets="-1000,-200", baseline=False, **TINY))  # fmt: skip
    assert -2000 < metrics["val_return"] <= 0
    # the same data as a user's file, through dt_offline
    eps = rl_data.load_episodes(sorted((tmp_path / "data").glob("*.npz"))[0])
    rl_data.save_episodes_npz(eps, tmp_path / "mine.npz")
    m = dt_offline.main(dt_offline.Config(run_dir=str(tmp_path / "off"), data=str(tmp_path / "mine.npz"), env="Pendulum-v1",
                                          max_timestep=200, baseline=False, targets="-500,0", **TINY))  # fmt: skip
    assert np.isfinite(m["val_return"])  # 0, Pendulum's perfect return, is above any episode's: allowed, and said
    assert re.search(r"dt_offline: target 0 is above the best return in the data \(-\d+\.\d\): the DT is asked for returns it never saw",
                     capsys.readouterr().out)
    rl_data.save_episodes_npz(eps[:4], tmp_path / "mine.npz")  # the file replaced by other episodes: its resume is refused, naming both
    with pytest.raises(ValueError, match=r"mine\.npz: not the data run .*off started with \(10 episodes, 2,000 steps, sha256 \w{12} then; "
                                         r"4 episodes, 800 steps, sha256 \w{12} now\): a resume trains on the same episodes"):  # fmt: skip
        dt_offline.main(dt_offline.Config(run_dir=str(tmp_path / "off"), data=str(tmp_path / "mine.npz"), env="Pendulum-v1",
                                          max_timestep=200, baseline=False, targets="-500,0", **TINY), resume=True)  # fmt: skip
    with pytest.raises(ValueError, match="dt_offline needs data=PATH"):
        dt_offline.main(dt_offline.Config(env="Pendulum-v1"))
    cartpole = rl_data.make_dataset("CartPole-v1", tmp_path / "cp.npz", 3, seed=0)  # another environment's data: named as such
    with pytest.raises(ValueError, match=r"cp\.npz: observations of 4 values a step, and env=Pendulum-v1's have 3: is it data of another"):
        dt_offline.main(dt_offline.Config(run_dir=str(tmp_path / "wrong"), data=str(cartpole), env="Pendulum-v1", max_timestep=200, **TINY))
    with pytest.raises(ValueError, match=r"env=CartPole-v1's have 4: is it data of another environment\? \(mmtok train dt_offline data=.*mine\.npz env=ID"):
        dt_cartpole.main(dt_cartpole.Config(run_dir=str(tmp_path / "wrong2"), data=str(tmp_path / "mine.npz"), **TINY))  # (not "give env=":
        # dt_cartpole refuses another env=)
    with pytest.raises(ValueError, match=r"env=Pendulum-v1: this recipe's settings are made for CartPole-v1; for another environment use dt_offline"):
        dt_cartpole.Config(env="Pendulum-v1").check()  # CartPole's targets and return scale on Pendulum: refused, not run
    with pytest.raises(ValueError, match=r"n_episodes=30: these make the embedded dataset; data=mine.npz is read as it is"):
        dt_cartpole.Config(data="mine.npz", n_episodes=30).check()  # (ignored before)
    dt_offline.Config(data="mine.npz", env="Pendulum-v1").check()  # (its NOT_USED keys: refused by make_config, not here)


def test_episodes_past_the_timestep_table_are_refused_or_ended_there(tmp_path):
    path = rl_data.make_dataset("CartPole-v1", tmp_path / "cp.npz", 4, seed=3)
    eps = rl_data.load_episodes(path)
    cfg = dt.Config(context=5, max_timestep=10, dim=32, depth=1)
    eps = [type(e)(e.observations[:10], e.actions[:10], e.rewards[:10], False, True, e.policy) for e in eps]
    import gymnasium as gym

    with pytest.raises(ValueError, match=r"CartPole-v1: episodes run up to 500 steps \(its time limit\), more than max_timestep=10"):
        dt.make_tokenizer(cfg, eps, gym.make("CartPole-v1"))  # the recipes refuse it before training
    tok = TrajectoryTokenizer(4, 2, discrete=True, context=5, max_timestep=10).fit(eps)  # as for an environment without a time limit
    model = dt.build_model(cfg, tok)
    assert dt.rollouts(model, tok, "CartPole-v1", 500.0, [0, 1], device="cpu").max() <= 10  # ended at the table's last row


def test_environments_the_dt_cannot_play_are_refused_and_box_observations_are_flattened(tmp_path):
    """Discrete / Tuple observations and unbounded or offset action spaces are refused before
    training (they failed at the first rollout, or scaled actions to NaN); an observation Box of
    any shape is read flat, in the data and in the rollouts."""
    import gymnasium as gym

    cfg = dt.Config(context=5, dim=32, depth=1)
    for env_id, message in [("FrozenLake-v1", "observation space Discrete"), ("Blackjack-v1", "observation space Tuple")]:
        with pytest.raises(ValueError, match=f"{env_id}: {message}.*Box of numbers"):
            dt.check_env(cfg, gym.make(env_id))
    odd = gym.make("CartPole-v1")
    odd.action_space = gym.spaces.Discrete(2, start=1)
    with pytest.raises(ValueError, match="starts at 1; the tokenizer reads ids from 0"):
        dt.check_env(cfg, odd)
    odd.action_space = gym.spaces.Box(-np.inf, np.inf, (1,))
    with pytest.raises(ValueError, match="is unbounded"):
        dt.check_env(cfg, odd)

    from gymnasium.wrappers import ReshapeObservation

    gym.register("CartPole2x2-v0", entry_point=lambda **kw: ReshapeObservation(gym.make("CartPole-v1", **kw), (2, 2)), max_episode_steps=20)
    try:
        eps = rl_data.load_episodes(rl_data.make_dataset("CartPole-v1", tmp_path / "cp.npz", 4, seed=3))
        tok = dt.make_tokenizer(cfg, eps, gym.make("CartPole2x2-v0"))
        returns = dt.rollouts(dt.build_model(cfg, tok), tok, "CartPole2x2-v0", 20.0, [0, 1], device="cpu")  # (2, 2) observations read as 4
        assert tok.state_dim == 4 and returns.shape == (2,) and (returns >= 1).all()
    finally:
        gym.registry.pop("CartPole2x2-v0")


def test_an_environment_registered_by_a_plugin_package_trains_from_the_command_line(tmp_path, monkeypatch, capsys):
    """env= names an id that an installed package registers (entry point group tokenizers_mm.envs: a
    module imported or a function called), looked up only when gymnasium does not know the id; a
    broken plugin beside it is skipped with a one-line warning, and named when the id is still missing."""
    import gymnasium as gym

    from recipes.cli import main

    (tmp_path / "my_envs.py").write_text(
        "import gymnasium as gym\n\n"
        "def register():\n"
        "    gym.register('PluginCartPole-v0', entry_point='gymnasium.envs.classic_control.cartpole:CartPoleEnv', max_episode_steps=500)\n"
    )
    install_entry_points(tmp_path, "my-envs", f"[{rl_data.ENV_ENTRY_POINTS}]\nmine = my_envs:register\nbroken = no_such_envs_module\n", monkeypatch)
    monkeypatch.setattr(rl_data, "_env_plugins_failed", None)
    rl_data.make_dataset("CartPole-v1", tmp_path / "cp.npz", 6, seed=3)
    try:
        assert "PluginCartPole-v0" not in gym.registry
        assert main(["train", "dt_offline", f"data={tmp_path / 'cp.npz'}", "env=PluginCartPole-v0", "max_timestep=500",
                     f"run_dir={tmp_path / 'run'}", "baseline=false", "targets=20",
                     *(f"{k}={v}" for k, v in TINY.items())]) == 0  # fmt: skip
        err = capsys.readouterr().err
        assert "mmtok: warning: plugin environment 'broken' (no_such_envs_module) failed to load, skipped: ModuleNotFoundError" in err, err
        assert json.loads((tmp_path / "run" / "returns.json").read_text())["env"] == "PluginCartPole-v0"
        with pytest.raises(rl_data.RLDataError, match=r"env 'NoSuch-v0': .*\(plugin environment 'broken' \(no_such_envs_module\) failed"):
            rl_data.make_env("NoSuch-v0")
    finally:
        gym.registry.pop("PluginCartPole-v0", None)
        sys.modules.pop("my_envs", None)


def test_rollouts_with_a_discount_condition_on_returns_to_go_as_training_computes_them(tmp_path, monkeypatch):
    """gamma < 1: training's R_t = r_t + γ·R_t+1, so a rollout feeds R_t+1 = (R_t − r_t) / γ after a
    reward r_t (CartPole: 1 a step), from the target as R_0; targets are discounted start returns."""
    import gymnasium as gym

    from tokenizers_mm import returns_to_go

    eps = rl_data.load_episodes(rl_data.make_dataset("CartPole-v1", tmp_path / "cp.npz", 4, seed=3))
    cfg = dt.Config(context=5, dim=32, depth=1, gamma=0.9)
    tok = dt.make_tokenizer(cfg, eps, gym.make("CartPole-v1"))
    fed = []
    tokens = tok.tokens
    monkeypatch.setattr(tok, "tokens", lambda obs, acts, rtg, timesteps: fed.append((timesteps[-1], rtg[-1])) or tokens(obs, acts, rtg, timesteps))
    dt.rollouts(dt.build_model(cfg, tok), tok, "CartPole-v1", 9.0, [0], device="cpu")
    rtg = [r for _, r in sorted(fed)]
    assert len(rtg) > 5 and rtg[0] == 9.0
    np.testing.assert_allclose([rtg[t] - 0.9 * rtg[t + 1] for t in range(len(rtg) - 1)], 1.0, rtol=1e-5)
    starts = dt.start_returns(eps, 0.9)
    assert starts[0] == pytest.approx(returns_to_go(eps[0].rewards, 0.9)[0]) and starts.max() < 10  # 1 / (1 - γ) at most
    assert dt.start_returns(eps, 1.0).tolist() == [float(np.sum(e.rewards)) for e in eps]
    cartpole = dt_cartpole.Config(data=str(tmp_path / "cp.npz"), gamma=0.9, run_dir=str(tmp_path / "run"), **TINY)
    with pytest.raises(ValueError, match=r"target=500 is above the data's best discounted return at the start \(.*\); with gamma=0.9"):
        dt_cartpole.main(cartpole)  # its default target is an undiscounted return


def test_rolling_out_in_an_environment_of_other_spaces_is_one_clear_error(tmp_path):
    """A model trained for CartPole rolled out where the id now makes another environment (registered
    again, or run.json's env edited): one line naming both shapes (it was numpy's "operands could not
    be broadcast together with shapes (1,6) (4,)", from `mmtok eval`)."""
    import gymnasium as gym

    eps = rl_data.load_episodes(rl_data.make_dataset("CartPole-v1", tmp_path / "cp.npz", 4, seed=3))
    cfg = dt.Config(context=5, dim=32, depth=1)
    tok = dt.make_tokenizer(cfg, eps, gym.make("CartPole-v1"))
    model = dt.build_model(cfg, tok)
    for env_id, theirs in [("Acrobot-v1", "observations of 6 values and 3 discrete actions"),
                           ("Pendulum-v1", "observations of 3 values and actions of 1 value")]:  # fmt: skip
        with pytest.raises(ValueError, match=rf"^env={env_id}: {theirs}; the model was trained for observations of 4 values and 2 discrete"):
            dt.rollouts(model, tok, env_id, 9.0, [0], device="cpu")
    pendulum = gym.make("Pendulum-v1")
    tok = TrajectoryTokenizer(3, 1, discrete=False, context=5, max_timestep=200, action_low=[-1.0], action_high=[1.0])  # (Pendulum's are ±2)
    with pytest.raises(ValueError, match=r"^env=Pendulum-v1: actions within \[\[-2.0\], \[2.0\]\]; the model was trained for \[\[-1.0\], \[1.0\]\]"):
        dt.check_fits(tok, pendulum, "Pendulum-v1")


def test_data_whose_every_reward_is_zero_trains_and_says_the_returns_carry_nothing(tmp_path, capsys):
    eps = rl_data.load_episodes(rl_data.make_dataset("CartPole-v1", tmp_path / "cp.npz", 4, seed=3))
    zero = rl_data.save_episodes_npz([rl_data.Episode(e.observations, e.actions, 0 * e.rewards, e.terminated, e.truncated) for e in eps],
                                     tmp_path / "zero.npz")  # fmt: skip
    cfg = dt_offline.Config(run_dir=str(tmp_path / "run"), data=str(zero), env="CartPole-v1", baseline=False, targets="0",
                            **{**TINY, "max_steps": 2, "eval_every": 2, "eval_episodes": 1})  # fmt: skip
    dt_offline.main(cfg)
    assert "zero.npz: every reward is 0, so every return token is too: the DT learns what behaviour cloning does" in capsys.readouterr().err


def test_default_targets_stay_within_the_data_and_bad_settings_are_refused_before_training(tmp_path):
    """The 5 default targets are rounded down (the best, -350.728, as the last: rounding made it
    -350.7, above the data, refused with gamma < 1); action_bins 1 or below 0 and a negative
    eval_seed are refused when the config is checked; a [N, 1] rewards column is read as [N]."""
    from recipes.config import ConfigError

    returns = np.array([-900.0, -500.04, -350.728])
    targets = dt.target_list(dt.Config(), returns)
    assert targets[-1] == -350.728 and all(t <= -350.728 for t in targets) and targets == sorted(targets)
    assert dt.target_list(dt.Config(), np.full(4, -500.0)) == [-500.0]  # every episode of one return: one target, not five alike
    for key, value, message in (("action_bins", 1, "action_bins=1: expected 0"), ("action_bins", -3, "action_bins=-3: expected 0"),
                                ("eval_seed", -5, "eval_seed=-5 must be at least 0"),
                                ("target", 1e45, r"target=1e\+45 is beyond float32's range \(3.4e\+38\)"),  # (an inf return-to-go: was a
                                ("targets", "100,-1e40", r"targets=-1e\+40 is beyond float32's range")):  # meaningless rollout) # fmt: skip
        with pytest.raises(ConfigError, match=message):
            dt_offline.Config(env="Pendulum-v1", data="x.npz", **{key: value}).check()
    eps = rl_data.load_episodes(rl_data.make_dataset("CartPole-v1", tmp_path / "cp.npz", 3, seed=0))
    flat = {k: np.concatenate(v) for k, v in {"observations": [e.observations for e in eps], "actions": [e.actions for e in eps],
                                               "rewards": [e.rewards for e in eps]}.items()}  # fmt: skip
    ends = np.zeros(len(flat["rewards"]), np.float32)
    ends[np.cumsum([len(e.rewards) for e in eps]) - 1] = 1
    np.savez(tmp_path / "column.npz", **{**flat, "rewards": flat["rewards"][:, None]}, terminals=ends[:, None])
    again = rl_data.load_episodes(tmp_path / "column.npz")
    assert [len(e.rewards) for e in again] == [len(e.rewards) for e in eps]
    # target=0 is a target (Pendulum's perfect return), not "the data's best"; left out, it is the best
    from recipes.runs import make_config

    assert make_config("dt_pendulum", ["target=0"])[2].target == 0.0 and make_config("dt_pendulum", [])[2].target is None
    import json

    from recipes.runs import load_run_info

    for i, (fmt, saved, read) in enumerate(((None, 0.0, None), (2, 0.0, 0.0), (None, 300.0, 300.0))):  # a run.json of before format 2:
        (tmp_path / f"old{i}").mkdir()  # its 0 was the best (these hold the target alone: the other keys' defaults are said)
        doc = {"recipe": "dt_pendulum", "config": {"target": saved}} | ({"format": fmt} if fmt else {})
        (tmp_path / f"old{i}" / "run.json").write_text(json.dumps(doc))
        with pytest.warns(UserWarning, match=r"run.json holds no value for \d+ config key\(s\); they take their defaults: seed=1337"):
            assert load_run_info(tmp_path / f"old{i}")[2].target == read
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "run.json").write_text(json.dumps({"recipe": "dt_pendulum", "format": 9, "config": {}}))
    with pytest.raises(ConfigError, match=r"run.json: format 9; this version reads run formats 1 to 2"):
        load_run_info(tmp_path / "old")
    # integer action ids for a continuous environment: refused, not trained as torques; a bad size: no run directory left
    np.savez(tmp_path / "ids.npz", **{**flat, "observations": flat["observations"][:, :3]}, terminals=ends)  # (Pendulum's 3 values a step)
    with pytest.raises(ValueError, match=r"episode 0 holds integer action ids, and env=Pendulum-v1's actions are continuous \(Box\)"):
        dt.run(dt_offline.Config(env="Pendulum-v1", data=str(tmp_path / "ids.npz"), run_dir=str(tmp_path / "r1")), "dt_offline")
    with pytest.raises(ValueError, match="trunk dim=15 must be divisible by num_heads=2"):
        dt.run(dt_offline.Config(env="CartPole-v1", data=str(tmp_path / "column.npz"), dim=15, num_heads=2, run_dir=str(tmp_path / "r2")),
               "dt_offline")  # fmt: skip
    assert not (tmp_path / "r1").exists() and not (tmp_path / "r2").exists()
