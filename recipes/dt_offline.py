"""dt_offline: a Decision Transformer on your own offline data, evaluated in a gymnasium simulator.

`data=` is a D4RL-style `.npz` / `.hdf5` file (observations, actions, rewards, terminals, and
optionally timeouts; episodes end after each terminal or timeout) or a Minari dataset id found
under MINARI_DATASETS_PATH (e.g. `mujoco/hopper/medium-v0` downloaded beforehand). `env=` is the
gymnasium environment to roll out in (its spaces must match the data's). See recipes/dt.py.

    mmtok train dt_offline data=hopper_medium.hdf5 env=Hopper-v5 rtg_scale=1000 max_timestep=1000 target=3600
"""

from __future__ import annotations

from dataclasses import dataclass

from . import dt


@dataclass
class Config(dt.Config):
    env: str = ""  # required: the gymnasium environment id

    NOT_USED = ("data_dir", "n_episodes", "data_seed", *dt.Config.NOT_USED)  # the embedded datasets' (dt_cartpole, dt_pendulum)


def main(cfg: Config, resume: bool = False) -> dict:
    if not cfg.data or not cfg.env:
        raise ValueError("dt_offline needs data=PATH (or a Minari dataset id) and env=ENV_ID")
    return dt.run(cfg, "dt_offline", resume)


evaluate = dt.evaluate_run
