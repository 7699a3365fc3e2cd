"""Decision Transformer against behaviour cloning on the embedded offline datasets, and the
training step against Hugging Face's DecisionTransformerModel of the same size, on this machine.

    python benchmarks/dt_control.py [dt_cartpole|dt_pendulum] [key=value ...]
    python benchmarks/dt_control.py --step-only      # only the step comparison (cartpole sizes; 1-2 minutes on 2 CPU cores)
    python benchmarks/dt_control.py --step-only --steps 5 --rounds 1    # ... shorter (the tests' check that it runs)
    python benchmarks/dt_control.py dt_pendulum max_steps=20 n_episodes=20 eval_episodes=2 --steps 10 --rounds 1   # a quick try

Generates (or reuses) the recipe's dataset, prints its return statistics, trains DT and BC with the
recipe's defaults plus overrides, and prints achieved return for each target (mean ± std over the
recipe's 20 seeded episodes), DT at the recipe's target against BC, the training time, DT's return
at the target rolled out again in fp32 and under bf16 autocast (same weights and seeds), and the
goals: dt_cartpole — DT >= 475 at target 500 and >= BC + 100, the data with <= 5% episodes at 500
and mean return <= 150; dt_pendulum — DT > BC and >= the data's 90th-percentile return. Then times
300 training steps (forward + backward + AdamW, batch 64, K = 20; ours includes laying the batch
out as its return / state / action tokens, which HF's model does inside its forward) of our model and of
`DecisionTransformerModel` (hidden 64, 3 layers, 1 head, ReLU) in the same process, in 3 rounds that
alternate between the two (benchmarks/timing.py): the median ms per step, steps/s, the ratio and
each round's ratio.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from recipes.config import ConfigError, parse_overrides  # noqa: E402
from recipes.runs import make_config  # noqa: E402


def step_times(steps: int = 300, batch: int = 64, K: int = 20, S: int = 4, A: int = 2, rounds: int = 3) -> dict:
    """ms per training step: ours vs Hugging Face's DecisionTransformerModel, same weights and batch;
    the median of `rounds` alternating rounds of steps / rounds steps each."""
    from timing import alternating_rounds, summary  # benchmarks/timing.py
    from transformers import DecisionTransformerConfig, DecisionTransformerModel

    from models import MultimodalTransformer, dt_model_config, load_hf_decision_transformer

    torch.manual_seed(0)
    p = 0.1  # the recipe's dropout, on both sides (HF's default for each of its three rates)
    hf_cfg = DecisionTransformerConfig(state_dim=S, act_dim=A, hidden_size=64, n_layer=3, n_head=1, max_ep_len=500, action_tanh=True,
                                       resid_pdrop=p, embd_pdrop=p, attn_pdrop=p)  # fmt: skip
    hf = DecisionTransformerModel(hf_cfg)
    ours = load_hf_decision_transformer(MultimodalTransformer(dt_model_config(hf_cfg.to_dict(), dropout=p)), hf.state_dict())
    count = lambda m: sum(t.numel() for t in m.parameters())  # noqa: E731
    params = {"ours": count(ours), "hf": count(hf), "hf_position_table": hf.encoder.wpe.weight.numel()}  # HF trains a 1024-row
    # table of which it reads row 0 (its positions are all 0; ours folds that row into the type rows): the peer as users train it
    states, actions, rtg = torch.randn(batch, K, S), torch.randn(batch, K, A).tanh(), torch.randn(batch, K, 1)
    timesteps = torch.randint(0, 480, (batch, 1)) + torch.arange(K)
    from tokenizers_mm import TokenBatch

    W = max(S, A, 1)
    types = torch.tensor([0, 1, 2]).repeat(K).expand(batch, -1)

    def interleaved() -> TokenBatch:
        """The batch as our trajectory tokens: return, state, action per timestep (a tokenizer's
        work, timed in our step as HF's model stacks its three embeddings inside its forward)."""
        v = torch.zeros(batch, K, 3, W)
        v[:, :, 0, :1], v[:, :, 1, :S], v[:, :, 2, :A] = rtg, states, actions
        target = torch.zeros(batch, K, 3, A)
        target[:, :, 1] = actions
        return TokenBatch("trajectory", None, v.reshape(batch, 3 * K, W), timesteps.repeat_interleave(3, 1), types,
                          torch.ones(batch, 3 * K, dtype=torch.bool), targets=target.reshape(batch, 3 * K, A), loss_mask=types == 1)  # fmt: skip

    def hf_step():
        _, pred, _ = hf(states=states, actions=actions, rewards=None, returns_to_go=rtg, timesteps=timesteps,
                        attention_mask=torch.ones(batch, K), use_cache=False, return_dict=False)  # fmt: skip
        return torch.nn.functional.mse_loss(pred, actions)

    def our_step():
        return ours({"trajectory": interleaved()}).loss

    per_round = steps // rounds
    s = summary(alternating_rounds({"ours": (ours, our_step), "hf": (hf, hf_step)}, per_round, rounds, warmup=10, lr=1e-4), peer="hf")
    return {"ours_ms_per_step": s["ours_ms"], "hf_ms_per_step": s["peer_ms"], "ours_steps_per_s": s["ours_steps_per_s"],
            "hf_steps_per_s": s["peer_steps_per_s"], "ratio": s["ratio"], "round_ratios": s["round_ratios"], "dropout": p, "parameters": params,
            "rounds_ms": s["rounds_ms"]}  # fmt: skip


def precision_returns(run_dir, cfg, target: float) -> dict:
    """The trained DT's return at `target` rolled out in fp32 and under CPU bf16 autocast (its linear
    layers in bf16, as a bf16 run's rollouts take them on a GPU, though CUDA's autocast lists other
    operations too): same weights, same seeded episodes; each episode's return, and the means."""
    import contextlib

    from recipes.dt import rollouts
    from recipes.runs import load_trained

    model, toks = load_trained(run_dir)
    seeds = list(range(cfg.eval_seed, cfg.eval_seed + cfg.eval_episodes))
    out = {}
    for name, precision in (("fp32", contextlib.nullcontext()), ("bf16_autocast", torch.autocast("cpu", dtype=torch.bfloat16))):
        with precision, torch.no_grad():
            returns = rollouts(model, toks["trajectory"], cfg.env, target, seeds)
        out[name] = [float(returns.mean()), float(returns.std())]
        out[f"{name}_episodes"] = [float(r) for r in returns]
    out["bf16_minus_fp32"] = out["bf16_autocast"][0] - out["fp32"][0]
    out["episodes_differing"] = sum(a != b for a, b in zip(out["fp32_episodes"], out["bf16_autocast_episodes"]))
    return out


def main():
    args = sys.argv[1:]
    if args[:1] in (["-h"], ["--help"]):
        print(__doc__)
        return
    import argparse

    parser = argparse.ArgumentParser(prog="dt_control.py", add_help=False)
    parser.add_argument("--step-only", action="store_true")
    parser.add_argument("--steps", type=int, default=300)  # the step comparison's, in both modes
    parser.add_argument("--rounds", type=int, default=3)
    opts, args = parser.parse_known_args(args)
    if not 1 <= opts.rounds <= opts.steps:
        parser.error(f"--steps {opts.steps} --rounds {opts.rounds}: expected 1 <= rounds <= steps")
    if flags := [a for a in args if a.startswith("-")]:
        parser.error(f"unrecognized arguments: {' '.join(flags)} (options: --step-only, --steps N, --rounds N; the rest is RECIPE key=value ...)")
    if opts.step_only:
        print(json.dumps({"benchmark": "Decision Transformer training step (cartpole sizes)",
                          "step_vs_hf": step_times(steps=opts.steps, rounds=opts.rounds)}, indent=2))  # fmt: skip
        return
    recipe = args.pop(0) if args and "=" not in args[0] else "dt_cartpole"
    try:
        given = parse_overrides(args)
    except ConfigError as e:
        sys.exit(f"dt_control.py: {e}")
    overrides = [f"{k}={v}" for k, v in {"eval_every": "1000000", "ckpt_every": "1000000", **given}.items()]  # (the user's replace ours)
    with tempfile.TemporaryDirectory() as d:
        _, module, cfg = make_config(recipe, [f"run_dir={d}", *overrides])
        module.dt.load_data(cfg)  # generate (or reuse) the dataset before the clock starts
        t0 = time.perf_counter()
        metrics = module.main(cfg)
        total = time.perf_counter() - t0
        summary = json.loads((Path(d) / "returns.json").read_text())
        precision = precision_returns(d, cfg, summary["target"])
    data = summary["data_returns"]
    result = {"benchmark": recipe, "env": cfg.env, "target": summary["target"],
              "data": {"episodes": data["episodes"], "mean_return": data["mean"], "p90_return": data["p90"], "max_return": data["max"],
                       "fraction_at_500": data["fraction_reaching_target"] if cfg.env == "CartPole-v1" and summary["target"] == 500 else None},
              "dt_return": [metrics["val_return"], summary["dt_return_std"]], "bc_return": metrics["bc_return"],
              "return_by_target": dict(zip(map(str, summary["table"]["targets"]), summary["table"]["dt"])),
              "train_seconds": summary["train_seconds"], "total_seconds": total, "steps": cfg.max_steps,
              "eval_precision": precision}  # fmt: skip
    if cfg.env == "CartPole-v1":
        result["goal"] = "DT >= 475 at 500, DT - BC >= 100; data: <= 5% at 500, mean <= 150"
        result["met"] = (metrics["val_return"] >= 475 and metrics["val_return"] - metrics["bc_return"] >= 100
                         and (result["data"]["fraction_at_500"] or 0.0) <= 0.05 and result["data"]["mean_return"] <= 150)  # fmt: skip
    else:
        result["goal"] = "DT > BC and DT >= the data's 90th-percentile return"
        result["met"] = metrics["val_return"] > metrics["bc_return"] and metrics["val_return"] >= result["data"]["p90_return"]
    result["step_vs_hf"] = step_times(opts.steps, S=4 if cfg.env == "CartPole-v1" else 3, A=2 if cfg.env == "CartPole-v1" else 1,
                                      rounds=opts.rounds)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
