"""dt_pendulum: a Decision Transformer on Pendulum-v1 (continuous torque) from mixed-quality data.

The embedded dataset (recipes/rl_data.py) mixes random torques, energy pumping toward the wrong
energy, a swing-up whose balance gains are too weak, and a good swing-up-and-balance controller
with torque noise. The DT conditioned on the best return in the data is compared with behaviour
cloning and with the data's 90th-percentile return. Actions are regressed through tanh, or, with
`action_bins=1024`, classified over Gato's bins. See recipes/dt.py for the pipeline.

    mmtok train dt_pendulum
    mmtok train dt_pendulum action_bins=1024
"""

from __future__ import annotations

from dataclasses import dataclass

from . import dt


@dataclass
class Config(dt.Config):
    env: str = "Pendulum-v1"
    ENV = "Pendulum-v1"
    rtg_scale: float = 1000.0  # returns reach -1500; at 100 the embedding LayerNorm keeps little beyond their sign
    max_timestep: int = 200
    target: float | None = None  # the best return in the data
    context: int = 30  # the swing-up takes ~60 steps
    dropout: float = 0.0
    max_steps: int = 6000
    warmup_steps: int = 300
    eval_every: int = 2000
    ckpt_every: int = 2000


def main(cfg: Config, resume: bool = False) -> dict:
    return dt.run(cfg, "dt_pendulum", resume)


evaluate = dt.evaluate_run
