"""sensor_activity: classify activities from accelerometer windows — a recipe a plugin ships.

Registered through the `tokenizers_mm.recipes` entry point, so after `pip install` of this
package `mmtok train sensor_activity` runs it. Config → data → model → loss/metric → main, with
the toolkit's pieces: the `sensor` tokenizer (found through its entry point), the shared trunk
as an encoder with a mean-pooled classification head, and the toolkit's training loop
(checkpoints, resume, metrics, loss plot).

`placement=true` shows conditioning by extra tokens: the device placement (wrist / pocket, which
changes how strongly the motion shows) is appended to each window's token set as one more token of
its own type, `placement`: a one-hot in the token's values, so the shared linear layer gives each
placement a learned vector, plus the `placement` row of the type table.

    pip install examples/modality_plugin
    mmtok train sensor_activity max_steps=300
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from models import HeadConfig, ModalityConfig, ModelConfig, MultimodalTransformer, TrunkConfig
from recipes.config import ConfigError, TrainConfig
from recipes.runs import resolve_run_dir, save_run_info
from recipes.train import accuracy, train
from tokenizers_mm import TokenSet, collate, create

from .data import ACTIVITIES, SAMPLES, make_windows


@dataclass
class Config(TrainConfig):
    n_train: int = 2000
    n_test: int = 500
    patch: int = 8  # samples per token
    dim: int = 64
    depth: int = 2
    num_heads: int = 4
    batch_size: int = 64
    lr: float = 1e-3
    max_steps: int = 300
    warmup_steps: int = 30
    eval_every: int = 100
    ckpt_every: int = 100
    placement: bool = False  # append a device-placement token of its own type

    AT_LEAST = {**TrainConfig.AT_LEAST, "n_train": 1, "n_test": 1, "patch": 1}  # refused below these when a run starts (`mmtok train`)

    def check(self) -> None:
        super().check()
        if SAMPLES % self.patch:
            divisors = ", ".join(str(d) for d in range(1, SAMPLES + 1) if SAMPLES % d == 0)
            raise ConfigError(f"patch={self.patch}: a token is patch samples of a {SAMPLES}-sample window; expected a divisor of "
                              f"{SAMPLES} ({divisors})")  # fmt: skip


# -- data -----------------------------------------------------------------------------------------
def placements(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng([seed, 7]).integers(0, 2, n)  # 0 wrist, 1 pocket


def build_data(cfg: Config):
    x_train, y_train = make_windows(cfg.n_train, seed=1)
    x_test, y_test = make_windows(cfg.n_test, seed=2)
    p_train, p_test = placements(cfg.n_train, 1), placements(cfg.n_test, 2)
    x_train[p_train == 1] *= 0.5  # in a pocket the motion reaches the sensor damped (gravity too: a scale change)
    x_test[p_test == 1] *= 0.5
    tok = create("sensor", channels=3, patch=cfg.patch, max_positions=x_train.shape[1] // cfg.patch).fit(x_train)
    return tok, (x_train, y_train, p_train), (x_test, y_test, p_test)


class Collate:
    def __init__(self, tok, placement: bool):
        self.tok, self.placement = tok, placement

    def tokens(self, window, place) -> TokenSet:
        ts = self.tok.encode(window)
        if not self.placement:
            return ts
        n, width = ts.values.shape
        extra = torch.zeros(1, width)
        extra[0, int(place)] = 1.0  # the placement as a one-hot in the extra token's value slot
        return TokenSet("sensor", values=torch.cat([ts.values, extra]), positions=torch.cat([ts.positions, torch.tensor([0])]),
                        types=torch.cat([ts.types, torch.tensor([1])]))  # fmt: skip

    def __call__(self, rows):
        sets = [self.tokens(w, p) for w, _, p in rows]
        return {"sensor": collate(sets)}, {"cls": torch.as_tensor([int(y) for _, y, _ in rows])}


# -- model ----------------------------------------------------------------------------------------
def build_model(cfg: Config, tok) -> MultimodalTransformer:
    trunk = TrunkConfig(dim=cfg.dim, depth=cfg.depth, num_heads=cfg.num_heads, mode="encoder")
    types = ["patch", "placement"] if cfg.placement else ["patch"]
    sensor = ModalityConfig("sensor", types, tok.max_positions, value_dim=tok.value_dim)
    head = HeadConfig("classify", "sensor", num_outputs=len(ACTIVITIES), pool="mean")
    return MultimodalTransformer(ModelConfig(trunk, {"sensor": sensor}, {"cls": head}, encoder_inputs=["sensor"]))


# -- main -----------------------------------------------------------------------------------------
def main(cfg: Config, resume: bool = False) -> dict:
    run_dir = resolve_run_dir(cfg, "sensor_activity")
    tok, train_arrays, test_arrays = build_data(cfg)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, tok)
    if not resume:
        save_run_info(run_dir, "sensor_activity", cfg)
        tok.save(run_dir / "tokenizers" / "sensor")
    collate_fn = Collate(tok, cfg.placement)
    train_set = list(zip(*train_arrays))
    test_rows = list(zip(*test_arrays))
    batches = [collate_fn(test_rows[i : i + 256]) for i in range(0, len(test_rows), 256)]
    print(f"sensor_activity: {len(train_set)} training / {len(test_rows)} test windows, {model.num_params() / 1e3:.0f}K parameters")
    metrics = train(cfg, model, train_set, collate_fn, lambda m, acc: accuracy(m, acc, batches), Path(run_dir), resume=resume)
    print(f"test accuracy {metrics['val_accuracy'] * 100:.2f}%")
    return metrics


def evaluate(run_dir, device=None) -> dict:
    """`mmtok eval RUN [--device cuda]`: the last checkpoint's test accuracy."""
    from recipes.runs import load_for_eval

    cfg, model, toks, accelerator = load_for_eval(run_dir, device)  # on `device` (None: the CPU)
    _, _, test_arrays = build_data(cfg)
    rows = list(zip(*test_arrays))
    collate_fn = Collate(toks["sensor"], cfg.placement)
    return accuracy(model, accelerator, [collate_fn(rows[i : i + 256]) for i in range(0, len(rows), 256)])
