"""dt_cartpole: a Decision Transformer on CartPole-v1 from mixed-quality offline data.

The embedded dataset (recipes/rl_data.py) is played by several distinct sub-optimal behaviour
policies — random play, a good controller with lapses, a drifting position sensor, late
reactions, a tilted angle sensor, a wrong-signed position gain — so few episodes reach 500 and
the mean return is low. Conditioned on return 500, the DT should pick out the good behaviour that
behaviour cloning on the same data averages away. See recipes/dt.py for the pipeline.

    mmtok train dt_cartpole
    mmtok eval RUN_DIR
"""

from __future__ import annotations

from dataclasses import dataclass

from . import dt


@dataclass
class Config(dt.Config):
    env: str = "CartPole-v1"
    ENV = "CartPole-v1"
    targets: str = "100,200,300,400,500"
    target: float | None = 500.0  # None: the data's best return
    rtg_scale: float = 100.0
    max_timestep: int = 500


def main(cfg: Config, resume: bool = False) -> dict:
    return dt.run(cfg, "dt_cartpole", resume)


evaluate = dt.evaluate_run
