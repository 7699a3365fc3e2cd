"""The training loop end to end, in real subprocesses: kill and resume, DDP, the CLI."""

import dataclasses
import importlib.metadata
import json
import math
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import ROOT, subprocess_env, write_small_text
from recipes import gpt_char
from recipes.checkpoint import load_state
from recipes.train import StepSampler, lr_lambda
from recipes.config import TrainConfig

TINY = ["dim=32", "depth=2", "num_heads=2", "block_size=32", "batch_size=8", "eval_batches=4", "log_every=5",
        "sample_tokens=0", "dropout=0.1", "warmup_steps=10"]  # fmt: skip


def mmtok(*args, check=True, **kw) -> subprocess.CompletedProcess:
    p = subprocess.run([sys.executable, "-m", "recipes.cli", *args], capture_output=True, text=True, env=subprocess_env(), cwd=ROOT, **kw)
    if check and p.returncode != 0:
        raise AssertionError(f"mmtok {' '.join(args)} failed ({p.returncode}):\n{p.stderr[-3000:]}")
    return p


def metric_rows(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in ("tokens_per_s", "mfu")} for r in rows]  # wall-clock speed differs


def test_sampler_shards_the_same_global_batch():
    one = StepSampler(100, 8, 2, seed=3)
    two = [StepSampler(100, 8, 2, seed=3, rank=r, world=2) for r in range(2)]
    it1, its = iter(one), [iter(s) for s in two]
    for _ in range(30):  # crosses epoch boundaries
        step1 = next(it1) + next(it1)
        step2 = [i for _ in range(2) for it in its for i in next(it)]
        assert sorted(step1) == sorted(step2)
    resumed = iter(StepSampler(100, 8, 2, seed=3, start_step=7))
    fresh = iter(StepSampler(100, 8, 2, seed=3))
    for _ in range(14):
        next(fresh)
    assert next(resumed) == next(fresh)
    uneven = [StepSampler(100, 7, 2, seed=3, rank=r, world=2) for r in range(2)]  # 7 samples in 4 parts: 1, 2, 2, 2
    one, its = iter(StepSampler(100, 7, 1, seed=3)), [iter(s) for s in uneven]
    for _ in range(30):
        parts = [next(it) for _ in range(2) for it in its]
        assert sorted(len(p) for p in parts) == [1, 2, 2, 2] and sorted(i for p in parts for i in p) == sorted(next(one))
    with pytest.raises(ValueError, match=r"batch_size=3 is smaller than grad_accum \* processes = 2 \* 2: every micro-batch"):
        StepSampler(100, 3, 2, seed=0, world=2)


def test_lr_schedule_warmup_and_cosine():
    f = lr_lambda(TrainConfig(lr=1e-3, min_lr=1e-4, warmup_steps=10, max_steps=110))
    assert f(0) < f(5) < f(9) <= 1.0
    assert f(10) == pytest.approx(1.0) and f(60) == pytest.approx(0.55) and f(110) == pytest.approx(0.1) and f(500) == pytest.approx(0.1)
    lowered = lr_lambda(TrainConfig(lr=5e-5, min_lr=1e-4, warmup_steps=10, max_steps=110))  # lr lowered, min_lr left at its default
    assert [lowered(s) for s in (10, 60, 110, 500)] == [1.0, 1.0, 1.0, 1.0]  # flat after warmup, never raised above lr


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """One short gpt_char run (20 steps, trained in this process as `mmtok train` trains) that the
    tests below copy or read. (SIGKILL and resume: tests/test_faults.py, every recipe family.)"""
    from recipes.cli import main

    root = tmp_path_factory.mktemp("trained")
    assert main(["train", "gpt_char", f"data={write_small_text(root)}", *TINY, "max_steps=20", "ckpt_every=10", f"run_dir={root / 'run'}"]) == 0
    return root / "run"


def test_resume_refuses_a_corrupt_checkpoint(tmp_path, trained, capsys):
    from recipes.cli import main

    run = tmp_path / "run"
    shutil.copytree(trained, run)
    weights = sorted((run / "checkpoints").glob("step-*"))[-1] / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    p = mmtok("resume", str(run), "max_steps=30", check=False)  # a process's whole stderr: one line (no warning, no traceback)
    assert p.returncode == 2 and p.stderr.strip().count("\n") == 0 and "truncated" in p.stderr, p.stderr
    assert main(["eval", str(run)]) == 2
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0 and "truncated" in err, err
    assert json.loads((run / "run.json").read_text())["config"]["max_steps"] == 20  # the refused resume recorded nothing
    # a damaged optimizer state stops resume, which reads it, not eval, which reads the weights alone
    shutil.rmtree(run)
    shutil.copytree(trained, run)
    optimizer = sorted((run / "checkpoints").glob("step-*"))[-1] / "optimizer.safetensors"
    optimizer.write_bytes(optimizer.read_bytes()[:-100])
    assert main(["resume", str(run), "max_steps=30"]) == 2 and "truncated: optimizer.safetensors" in capsys.readouterr().err
    assert main(["eval", str(run)]) == 0 and json.loads(capsys.readouterr().out)["val_loss"] > 0


def test_resume_longer_takes_the_new_schedule_from_its_first_step(tmp_path, trained):
    """`mmtok resume RUN max_steps=N`: the first resumed step takes the new schedule's rate (the
    checkpoint's optimizer holds the old one's, the end of its decay: min_lr)."""
    from recipes.cli import main

    run = tmp_path / "run"
    shutil.copytree(trained, run)
    assert main(["resume", str(run), "max_steps=21"]) == 0
    saved = json.loads((run / "run.json").read_text())["config"]
    cfg = TrainConfig(**{f.name: saved[f.name] for f in dataclasses.fields(TrainConfig) if f.name in saved})
    assert cfg.max_steps == 21 and cfg.warmup_steps == 10
    lr = next(r["lr"] for r in metric_rows(run) if r["step"] == 21 and "lr" in r)
    assert lr == cfg.lr * lr_lambda(cfg)(20) and lr > 1.01 * cfg.min_lr  # (LambdaLR's own product, bit for bit)


def test_resume_on_text_other_than_the_run_started_with_is_refused(tmp_path, trained, capsys):
    """The data file edited after the run started (same characters, other text): its resume would go
    on training on other windows without a word; refused, naming the file and both fingerprints."""
    from recipes.cli import main

    run = tmp_path / "run"
    shutil.copytree(trained, run)
    doc = json.loads((run / "run.json").read_text())
    text = Path(doc["config"]["data"]).read_text(encoding="utf-8")
    mine = tmp_path / "mine.txt"
    mine.write_text(text, encoding="utf-8")
    doc["config"]["data"] = str(mine)
    (run / "run.json").write_text(json.dumps(doc))
    assert main(["resume", str(run), "max_steps=21"]) == 0  # the same text: resumed
    mine.write_text(text[len(text) // 2 :] + text[: len(text) // 2], encoding="utf-8")
    assert main(["resume", str(run), "max_steps=22"]) == 2
    err = capsys.readouterr().err
    assert re.search(rf"mmtok: error: {re.escape(str(mine))}: not the data run .*run started with \([\d,]+ training tokens, [\d,]+ "
                     r"validation tokens, sha256 \w{12} then; .* now\): a resume trains on the same text", err), err  # fmt: skip
    assert json.loads((run / "results.json").read_text())["step"] == 21
    (run / "data.json").write_text('{"sha256": ')  # damaged: said, and resumed unchecked (as a run made before data.json)
    assert main(["resume", str(run), "max_steps=22"]) == 0
    assert f"{mine}: not checked against the data the run started with (" in capsys.readouterr().err
    batch = doc["config"].pop("batch_size")  # a key taken out of run.json by hand: its default is used, and said (not silently)
    (run / "run.json").write_text(json.dumps(doc))
    assert main(["eval", str(run)]) == 0
    default = gpt_char.Config().batch_size
    assert batch != default and f"run.json holds no value for 1 config key(s); they take their defaults: batch_size={default!r}" in capsys.readouterr().err
    from recipes.runs import check_same_data, record_data

    record_data(tmp_path, {"tokens": 3, "sha256": "a" * 64})  # data the toolkit makes (the built-in corpus) may come out otherwise
    check_same_data(tmp_path, {"tokens": 4, "sha256": "b" * 64}, "the built-in corpus", "text", made_here=True)  # under another Python:
    assert "the built-in corpus: not the data run" in (err := capsys.readouterr().err) and "made again otherwise here" in err  # said
    with pytest.raises(ValueError, match=r"\(3 tokens, sha256 aaaaaaaaaaaa then; 4 tokens, sha256 bbbbbbbbbbbb now\): a resume trains"):
        check_same_data(tmp_path, {"tokens": 4, "sha256": "b" * 64}, "mine.txt", "text")


def test_accelerate_launch_asked_for_two_processes_that_starts_one_says_so(trained):
    """Without GPUs, `accelerate launch --num_processes 2` (no --multi_gpu) starts one process: it
    runs alone, and says so (the README's caveat, now told to whoever missed it)."""
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
              "--dynamo_backend", "no", "-m", "recipes.cli", "eval", str(trained)]  # fmt: skip
    p = subprocess.run(launch, capture_output=True, text=True, env=subprocess_env(), cwd=ROOT, timeout=300)
    assert p.returncode == 0 and json.loads(p.stdout)["val_loss"] > 0, p.stderr[-2000:]
    assert "mmtok: warning: this runs as one process: if accelerate launch was asked for several, it started one alone" in p.stderr, \
        p.stderr[-2000:]


def test_cli_eval_and_generate(tmp_path, trained, capsys):
    """eval, resume and generate in this process (as the CLI's main runs them; other tests launch it as a command)."""
    from recipes.cli import main

    run = tmp_path / "run"
    shutil.copytree(trained, run)
    assert main(["eval", str(run)]) == 0
    val = json.loads(capsys.readouterr().out)["val_loss"]
    assert val == pytest.approx(json.loads((run / "results.json").read_text())["val_loss"], rel=1e-5)
    corpus = Path(json.loads((run / "run.json").read_text())["config"]["data"]).read_text(encoding="utf-8")
    (tmp_path / "other.txt").write_text(corpus[:3000], encoding="utf-8")  # another text, all of it held out (--data)
    assert main(["eval", str(run), "--data", str(tmp_path / "other.txt")]) == 0
    scored = json.loads(capsys.readouterr().out)
    other = scored["val_loss"]
    assert math.isfinite(other) and other != pytest.approx(val, rel=1e-4)
    assert scored["val_tokens"] == 2999  # each token predicted once: every non-overlapping 32-character window, then the tail
    from recipes.runs import load_trained
    from tokenizers_mm import TokenSet, collate

    model, toks = load_trained(run)
    ids = torch.as_tensor(np.asarray(toks["text"].encode_ids(corpus[:3000]), dtype=np.int64))
    starts = [*range(0, 3000 - 33 + 1, 32), 3000 - 33]  # the whole windows, then the one ending at the text's end
    with torch.no_grad():
        logits = model({"text": collate([TokenSet("text", ids=ids[s : s + 32]) for s in starts])}).logits["lm"]
    nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), torch.stack([ids[s + 1 : s + 33] for s in starts]), reduction="none")
    tail = 2999 - (len(starts) - 1) * 32
    assert other == pytest.approx(float(torch.cat([nll[:-1].reshape(-1), nll[-1, -tail:]]).double().mean()), rel=1e-5)
    (tmp_path / "odd.txt").write_text(corpus[:3000] + "€", encoding="utf-8")
    assert main(["eval", str(run), "--data", str(tmp_path / "odd.txt")]) == 2
    assert f"--data {tmp_path / 'odd.txt'}: text_char: character '€' (at offset 3000)" in capsys.readouterr().err  # the file named
    assert main(["eval", str(run), "--data", str(tmp_path / "none.txt")]) == 2
    assert f"data file {tmp_path / 'none.txt'} does not exist\n" in capsys.readouterr().err
    own = Path(json.loads((run / "run.json").read_text())["config"]["data"])
    assert main(["eval", str(run), "--data", str(own)]) == 0
    said = capsys.readouterr()  # (was all of it: 90% trained on)
    assert json.loads(said.out)["val_loss"] == pytest.approx(val, rel=1e-5) and f"{own} is the data {run} trained on: scoring its held-out" in said.err
    assert main(["resume", str(run)]) == 0
    assert "step 20 of 20; the run is already complete: evaluating it" in capsys.readouterr().out
    assert main(["generate", str(run), "--prompt", "First", "--max-new-tokens", "50"]) == 0
    out = capsys.readouterr().out
    assert main(["generate", str(run), "--prompt", "First", "--max-new-tokens", "5", "--top-k", "0"]) == 0  # 0: no cut (top_k=None)
    assert capsys.readouterr().out.startswith("First")
    assert out.startswith("First") and len(out.rstrip("\n")) >= 50
    assert main(["generate", str(run), "--prompt", "First", "--max-new-tokens", "50", "--device", "cpu"]) == 0 and capsys.readouterr().out == out
    (tmp_path / "prompt.txt").write_text("First")  # nanoGPT's start=FILE:prompt.txt; several samples drawn side by side
    assert main(["generate", str(run), "--prompt-file", str(tmp_path / "prompt.txt"), "--max-new-tokens", "30", "--num-samples", "3"]) == 0
    samples = capsys.readouterr().out.rstrip("\n").split("\n---------------\n")
    assert len(samples) == 3 and all(s.startswith("First") and len(s) >= 30 for s in samples) and len(set(samples)) > 1
    long_prompt = corpus[:100] + "<|endoftext|>First"  # longer than block_size=32 (the window slides), a special token in it
    (tmp_path / "long.txt").write_text(long_prompt)
    assert main(["generate", str(run), "--prompt-file", str(tmp_path / "long.txt"), "--max-new-tokens", "40"]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert out.startswith(long_prompt) and len(out.rstrip("\n")) >= len(long_prompt) + 40
    assert main(["generate", str(run), "--prompt-file", str(tmp_path / "none.txt")]) == 2
    assert "--prompt-file" in capsys.readouterr().err
    (tmp_path / "latin1.txt").write_bytes("café".encode("latin-1"))
    assert main(["generate", str(run), "--prompt-file", str(tmp_path / "latin1.txt")]) == 2
    assert "latin1.txt is not UTF-8 (invalid byte 0xe9 at offset 3)" in capsys.readouterr().err
    assert main(["generate", str(run), "--prompt-file", str(tmp_path)]) == 2
    assert f"--prompt-file {tmp_path} is a folder; expected a UTF-8 text file" in capsys.readouterr().err
    assert main(["eval", str(tmp_path / "latin1.txt")]) == 2  # a file where a run directory goes
    assert "latin1.txt is a file; expected a run directory" in capsys.readouterr().err
    for f in ("run.json", "metrics.jsonl", "loss.png", "tokenizers/text/tokenizer.json"):
        assert (run / f).exists(), f
    # longer, on the schedule the run had: the cosine ends at its old length, then min_lr (nanoGPT's lr_decay_iters)
    assert main(["resume", str(run), "max_steps=25", "lr_decay_steps=20"]) == 0, capsys.readouterr().err[-2000:]
    saved = json.loads((run / "run.json").read_text())["config"]
    assert (saved["max_steps"], saved["lr_decay_steps"]) == (25, 20)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["lr"] for r in rows if "lr" in r and r["step"] > 20] == [saved["min_lr"]]  # (logged every 5 steps: step 25)
    assert main(["resume", str(run), "lr_decay_steps=-1"]) == 2 and "lr_decay_steps=-1 must be at least 0" in capsys.readouterr().err


def test_cli_device_option(trained, capsys):
    """--device names where eval / generate / predict / transcribe run the model: the CPU (the
    default), a GPU, or auto (the GPU when there is one); a device this machine lacks, or a name
    torch does not know, is one line, not a CUDA error from inside the model."""
    from recipes.cli import main

    assert main(["eval", str(trained), "--device", "cpu"]) == 0
    on_cpu = json.loads(capsys.readouterr().out)
    assert main(["eval", str(trained), "--device", "auto"]) == 0
    assert json.loads(capsys.readouterr().out)["val_loss"] == pytest.approx(on_cpu["val_loss"], rel=1e-4)
    missing = "mps" if torch.cuda.is_available() else "cuda"
    for device, message in ((missing, f"device '{missing}': this machine has no {missing} device"), ("gpu0", "device 'gpu0': expected cpu, cuda")):
        for cmd in (["eval", str(trained)], ["generate", str(trained)]):
            assert main([*cmd, "--device", device]) == 2
            err = capsys.readouterr().err
            assert err.startswith("mmtok: error:") and message in err and err.strip().count("\n") == 0, err


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "gpt_chr"], "unknown recipe 'gpt_chr'"),
        (["train", "gpt_char", "max_steps=lots"], "expects int"),
        (["train", "gpt_char", "colour=red"], "unknown config key 'colour'"),
        (["train", "gpt_char", "data=/no/such/file.txt"], "does not exist"),
        (["train", "missing.yaml"], "does not exist"),
        (["resume", "/no/such/run"], "does not exist"),
        (["eval", "/no/such/run"], "does not exist"),
        (["train", "gpt_char", "max_steps=-5"], "max_steps=-5 must be at least 0"),
        (["train", "gpt_char", "lr=-1"], "lr=-1.0 must be above 0"),
        (["train", "gpt_char", "top_k=0"], "top_k=0 must be at least 1"),
        (["train", "gpt_char", "lr=inf"], "lr=inf must be a finite number"),
        (["train", "gpt_char", "lr=nan"], "lr=nan must be a finite number"),
        (["train", "gpt_char", "lr=1e38"], "lr=1e+38: AdamW's step can reach lr / (1 - beta1) = 1e+39, which overflows float32"),
        (["train", "gpt_char", "eval_every=0"], "eval_every=0 must be at least 1"),
        (["train", "gpt_char", "batch_size=2", "grad_accum=3"], "batch_size=2 is smaller than grad_accum * processes = 3 * 1"),
        (["train", "vit_digits", "label_smoothing=2"], "label_smoothing=2.0 must be below 1.0"),
        (["train", "dt_cartpole", "eval_episodes=0"], "eval_episodes=0 must be at least 1"),
        (["train", "gpt_char", "precision=fp4"], "precision='fp4': expected one of auto, no, bf16, fp16, fp8"),
        (["train", "gpt_char", "precision=fp8"], "precision=fp8: Accelerate's fp8 needs transformer-engine, MS-AMP or torchao installed"),
        (["train", "gpt_char", "fsdp=true"], "fsdp=true shards the model over processes: launch 2 or more"),
        (["train", "gpt_char", "precision=fp16"], "precision=fp16 needs a GPU (on the CPU Accelerate trains in fp32 instead, silently)"),
        (["train", "gpt_bpe", "init_from=/no/such/gpt2"], "init_from=/no/such/gpt2: no such file or folder"),
        (["train", "whisper_folder", "data=.", "n_train=5"], "config key 'n_train' does not apply to whisper_folder"),
        (["train", "generalist", "tasks=digits,contrl"], "unknown task 'contrl'; tasks are digits, speech, control, text"),
        (["train", "generalist", "fsdp=true"], "fsdp=true needs every process to run every block each step"),  # (not "launch 2 or more")
        (["train", "dt_cartpole", "targets=100,abc"], "targets='100,abc': expected comma-separated target returns (numbers)"),
        (["train", "gpt_char", "dim=7"], "trunk dim=7 must be divisible by num_heads=4"),  # (refused once the run's folder is made)
    ],
)
def test_cli_errors_are_one_line(args, message, tmp_path, capsys, monkeypatch):
    """One line naming what is wrong, and a refused run leaves no run directory behind. The
    commands run in this process, as `mmtok` runs them (`recipes.cli.main`); a real process's
    stderr holds the one line alone (the first of them here, and test_resume_refuses_a_corrupt_checkpoint)."""
    from recipes.cli import main

    monkeypatch.chdir(ROOT)
    if "precision=fp8" in args:
        from accelerate.utils import is_fp8_available

        if is_fp8_available():
            pytest.skip("an fp8 library is installed here: precision=fp8 is not refused")
    if "precision=fp16" in args and torch.accelerator.is_available():
        pytest.skip("this machine has an accelerator: precision=fp16 trains there")
    run = tmp_path / "runs" / "run"  # (a folder made for it goes too: the default run_dir's runs/)
    argv = [*args, *([f"run_dir={run}"] if args[0] == "train" else [])]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.strip().startswith("mmtok: error:") and message in err and err.strip().count("\n") == 0, err
    assert not run.parent.exists()
    if args == ["train", "gpt_chr"]:
        p = mmtok(*argv, check=False)
        assert p.returncode == 2 and p.stderr.strip() == err.strip()


def test_a_run_started_before_a_rule_existed_still_resumes(tmp_path, small_text, capsys):
    """The config rules apply when a run starts; a run whose run.json holds a value they now refuse
    (here keep_checkpoints=-1, which kept every checkpoint) resumes and trains longer."""
    from recipes import gpt_char
    from recipes.cli import main
    from recipes.runs import make_config

    _, _, cfg = make_config("gpt_char", [f"data={small_text}", *TINY, "max_steps=10", "ckpt_every=5", f"run_dir={tmp_path / 'run'}"])
    cfg.keep_checkpoints = -1  # as an older version accepted it
    gpt_char.main(cfg)
    capsys.readouterr()
    assert main(["resume", str(tmp_path / "run"), "max_steps=20"]) == 0 and "resume: from step-0000010, step 10 of 20" in capsys.readouterr().out
    assert [c.name for c in sorted((tmp_path / "run" / "checkpoints").glob("step-*"))] == [f"step-{n:07d}" for n in (5, 10, 15, 20)]
    assert main(["resume", str(tmp_path / "run"), "max_steps=-1"]) == 2 and "max_steps=-1 must be at least 0" in capsys.readouterr().err
    # a length below the last checkpoint's step is refused, run.json left as it was (not a length the run has passed)
    kept = (tmp_path / "run" / "run.json").read_bytes()
    assert main(["resume", str(tmp_path / "run"), "fsdp=true", "max_steps=12"]) == 2  # (no override is recorded before all pass)
    assert "max_steps=12: the run's last checkpoint is at step 20; resume trains on to a later step" in capsys.readouterr().err
    assert main(["resume", str(tmp_path / "run"), "max_steps=30", "fsdp=true"]) == 2  # fsdp=true in one process
    assert "fsdp=true shards the model over processes" in capsys.readouterr().err
    small_text.rename(tmp_path / "moved.txt")  # refused once the recipe reads its data: run.json is written only when training starts
    assert main(["resume", str(tmp_path / "run"), "max_steps=30"]) == 2 and "does not exist" in capsys.readouterr().err
    small_text.write_text((tmp_path / "moved.txt").read_text())
    doc = json.loads(kept)  # a run started with fsdp=true, resumed in one process: named, with the way out
    (tmp_path / "run" / "run.json").write_text(json.dumps({**doc, "config": {**doc["config"], "fsdp": True}}))
    assert main(["resume", str(tmp_path / "run")]) == 2
    assert "fsdp=true (the run was started so) shards the model over processes: launch 2 or more" in capsys.readouterr().err
    (tmp_path / "run" / "run.json").write_bytes(kept)
    assert (tmp_path / "run" / "run.json").read_bytes() == kept and json.loads(kept)["config"]["max_steps"] == 20
    # generate: a temperature below 0 or no new tokens is refused, as training's sampling settings are
    for flag, value in (("--temperature", "-1"), ("--max-new-tokens", "0")):
        with pytest.raises(SystemExit):
            main(["generate", str(tmp_path / "run"), flag, value])
        assert f"argument {flag}: expected" in capsys.readouterr().err


def test_a_tokenizer_changed_since_training_is_refused(tmp_path, trained, capsys):
    """A run's tokenizer edited to fewer characters would decode other text without a word: eval,
    generate and resume name the tokenizer and the model's vocabulary."""
    from recipes.cli import main

    run = tmp_path / "run"
    shutil.copytree(trained, run)
    path = run / "tokenizers" / "text" / "tokenizer.json"
    doc = json.loads(path.read_text())
    doc["config"]["chars"] = doc["config"]["chars"][:-1]
    path.write_text(json.dumps(doc))
    for cmd in (["eval", str(run)], ["generate", str(run), "--max-new-tokens", "2"], ["resume", str(run), "max_steps=21"]):
        assert main(cmd) == 2
        err = capsys.readouterr().err
        assert "tokenizers/text has vocab_size" in err and "the model's 'text' embedding" in err and err.count("\n") == 1, err


def test_max_steps_0_evaluates_and_saves_the_starting_model(tmp_path, small_text, capsys):
    from recipes.cli import main

    run = tmp_path / "run"
    assert main(["train", "gpt_char", f"data={small_text}", *TINY, "max_steps=0", f"run_dir={run}"]) == 0
    assert [c.name for c in (run / "checkpoints").glob("step-*")] == ["step-0000000"]
    started = json.loads((run / "results.json").read_text())["val_loss"]
    capsys.readouterr()
    assert main(["eval", str(run)]) == 0 and json.loads(capsys.readouterr().out)["val_loss"] == pytest.approx(started, rel=1e-5)


def test_generalist_grows_only_from_a_generalist_run(tmp_path, capsys):
    from recipes.cli import main

    other = tmp_path / "vf"
    other.mkdir()
    (other / "run.json").write_text(json.dumps({"recipe": "vit_folder", "config": {}}))
    assert main(["train", "generalist", f"init_from={other}", f"run_dir={tmp_path / 'run'}"]) == 2
    err = capsys.readouterr().err
    assert f"init_from={other} is a vit_folder run; init_from takes a generalist run directory" in err, err


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(nproc: int, *args) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--master_addr=127.0.0.1",
           f"--master_port={free_port()}", *args]  # fmt: skip
    p = subprocess.run(cmd, capture_output=True, text=True, env=subprocess_env(), cwd=ROOT, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    return p


def test_two_process_first_step_gradients_equal_one_process(tmp_path, small_text):
    """A global batch of 7 split over 2 processes (3 + 4 samples) gives one process's gradients: every
    target weighs alike however the batch divides."""
    helper = str(ROOT / "tests" / "helpers" / "ddp_first_grads.py")
    torchrun(1, helper, str(small_text), str(tmp_path / "g1.safetensors"), "7")
    p = torchrun(2, helper, str(small_text), str(tmp_path / "g2.safetensors"), "7")
    assert "rank 1/2 ok" in p.stdout and "rank 0/2 ok" in p.stdout
    g1, g2 = load_file(tmp_path / "g1.safetensors"), load_file(tmp_path / "g2.safetensors")
    assert g1.keys() == g2.keys() and len(g1) > 5
    for k in g1:
        torch.testing.assert_close(g2[k], g1[k], atol=1e-6, rtol=1e-5)


def test_two_process_logged_loss_is_the_global_batch_loss(tmp_path, small_text):
    """The loss a step logs is the whole global batch's (the sum its finite check reduced, over the
    processes): a batch of 7 split 3 + 4 over 2 processes logs one process's loss."""
    from recipes.cli import main

    args = ["gpt_char", f"data={small_text}", *TINY, "batch_size=7", "dropout=0", "max_steps=1", "log_every=1", "eval_batches=1"]
    assert main(["train", *args, f"run_dir={tmp_path / '1'}"]) == 0  # (one process: this one)
    torchrun(2, "-m", "recipes.cli", "train", *args, f"run_dir={tmp_path / '2'}")
    rows = {n: json.loads((tmp_path / str(n) / "metrics.jsonl").read_text().splitlines()[0]) for n in (1, 2)}
    assert rows[2]["loss"] == pytest.approx(rows[1]["loss"], rel=1e-6) and rows[1]["loss"] > 1.0
    assert rows[2]["tokens_per_s"] > 0 and rows[2]["mfu"] > 0


def test_two_process_training_run_and_exact_resume(tmp_path, small_text, monkeypatch, capsys):
    """Two processes train as one data-parallel run; each draws its own dropout masks (its own RNG
    stream, kept in the checkpoint per process), and a resume continues every stream exactly."""
    run = tmp_path / "ddp"
    # note: no cpu=true: on a machine without a GPU the processes still form one data-parallel run
    torchrun(2, "-m", "recipes.cli", "train", "gpt_char", f"data={small_text}", *TINY, "max_steps=20", "ckpt_every=10", f"run_dir={run}")
    rows = metric_rows(run)
    assert [r["step"] for r in rows if "loss" in r] == [5, 10, 15, 20]  # written once, by the main process
    assert json.loads((run / "results.json").read_text())["val_loss"] < 4.0
    states = load_state(run / "checkpoints" / "step-0000020", "rng")["processes"]
    assert len(states) == 2 and not torch.equal(states[0]["torch"], states[1]["torch"])  # were one stream, twice

    shutil.rmtree(run / "checkpoints" / "step-0000020")  # as if killed after step 10's checkpoint
    torchrun(2, "-m", "recipes.cli", "resume", str(run))
    assert metric_rows(run) == rows  # every loss after the resume, bit for bit (rank 1 got rank 0's stream before)
    # eval launched as 2 processes: the batches split over them, the sums
    # gathered; the figures of one process, printed once
    from recipes import cli

    capsys.readouterr()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # (as each of the 2 processes: OMP_NUM_THREADS=1, the same sums)
    other = shutil.copy(small_text, tmp_path / "other.txt")  # (the run's own file would score its held-out share)
    try:
        assert cli.main(["eval", str(run), "--data", str(other), "--device", "auto"]) == 0  # (as both: the same device kind)
    finally:
        torch.set_num_threads(threads)
    alone = json.loads(capsys.readouterr().out)
    both = torchrun(2, "-m", "recipes.cli", "eval", str(run), "--data", str(other), "--device", "auto")
    assert both.stdout.count("val_loss") == 1 and len(alone) == 2
    split = json.loads(both.stdout)  # (JSON only: gloo's "[Gloo] Rank 1 is connected to ..." lines are kept out of it)
    assert split["val_tokens"] == alone["val_tokens"] and split["val_loss"] == pytest.approx(alone["val_loss"], rel=1e-12)  # (float64 sums)
    printed = torchrun(2, str(ROOT / "tests" / "helpers" / "eval_split.py"), "gpt_char", str(run), str(small_text)).stdout
    shares = [json.loads(m) for m in re.findall(r'\{"rank"[^{}]*\}', printed)]  # (the processes' lines may run into each other)
    assert sorted(r["rank"] for r in shares) == [0, 1] and all(r["loss"] == shares[0]["loss"] for r in shares)
    assert sorted(shares[0]["read"] + shares[1]["read"]) == list(range(shares[0]["batches"])) and min(len(r["read"]) for r in shares) > 1  # each its share
    # the other commands run in one process: launched as several, each would do the whole work, on one GPU
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert cli.main(["generate", str(run), "--max-new-tokens", "4"]) == 2
    assert "mmtok generate runs in one process: launch it without torchrun" in capsys.readouterr().err
    assert cli.main(["export", str(run), str(tmp_path / "exported")]) == 2 and not (tmp_path / "exported").exists()
    assert "mmtok export runs in one process" in capsys.readouterr().err
    assert cli.main(["show", str(run), "--out", str(tmp_path / "shown.png")]) == 2 and not (tmp_path / "shown.png").exists()
    assert "mmtok show runs in one process" in capsys.readouterr().err
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # what depends on the launch is checked again on resume
    assert cli.main(["resume", str(run), "max_steps=30"]) == 2
    assert "launched with Accelerate's FSDP config" in capsys.readouterr().err
    monkeypatch.delenv("ACCELERATE_USE_FSDP")


def test_the_processes_of_one_launch_name_one_default_run_directory():
    printed = torchrun(2, str(ROOT / "tests" / "helpers" / "default_run_dir.py")).stdout
    named = [json.loads(m) for m in re.findall(r'\{"rank"[^{}]*\}', printed)]
    assert sorted(r["rank"] for r in named) == [0, 1] and len({r["run_dir"] for r in named}) == 1, printed
    assert len({r["second"] for r in named}) == 1 and "gpt_bpe" in named[0]["second"], printed  # a second name: its own, agreed


def test_a_peers_failure_is_one_line_on_the_other_processes(monkeypatch, capsys):
    """Launched as several, a process whose peer stopped on its own error (gloo: "Connection closed
    by peer") prints one line saying so, not a traceback; alone, such an error is raised as it is."""
    from recipes import cli

    def lost_peer(args):
        raise RuntimeError("[../third_party/gloo/gloo/transport/tcp/pair.cc:547] Connection closed by peer [127.0.0.1]:29500")

    monkeypatch.setattr(cli, "cmd_tokenizers", lost_peer)
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert cli.main(["tokenizers"]) == 2
    assert "another process stopped (its error is printed above; one killed prints none, its launcher names its exit code); this one stopped with it" in capsys.readouterr().err
    monkeypatch.setenv("WORLD_SIZE", "1")
    with pytest.raises(RuntimeError, match="Connection closed by peer"):
        cli.main(["tokenizers"])

    def own_error(args):  # a process's own NCCL / gloo error: raised as it is, not blamed on a peer
        raise RuntimeError("[enforce fail at ../third_party/gloo/gloo/transport/tcp/pair.cc:446] op.preamble.length <= op.nbytes")

    monkeypatch.setattr(cli, "cmd_tokenizers", own_error)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(RuntimeError, match="op.preamble.length"):
        cli.main(["tokenizers"])


@pytest.mark.parametrize("where", ["loss", "gradients", "gradients, grad_clip=0"])
def test_a_non_finite_loss_stops_naming_step_and_samples_or_is_skipped(tmp_path, where):
    """A sample with NaN values (or, with a finite loss, NaN gradients: a hook on the input layer's
    gradient while the bad sample is in the batch): the run stops with the step and the batch's
    samples named, the checkpoint before it (never NaN weights) intact; with skip_nonfinite it
    skips (and counts) those batches."""
    from models import HeadConfig, ModalityConfig, ModelConfig, MultimodalTransformer, TrunkConfig
    from recipes.checkpoint import latest_checkpoint, verify
    from recipes.config import TrainConfig
    from recipes.train import batch_samples, lr_lambda, train
    from tokenizers_mm import ModalitySpec, TokenSet, collate

    cfg = TrainConfig(max_steps=9, batch_size=4, log_every=1, eval_every=100, ckpt_every=1, cpu=True, warmup_steps=1,
                      grad_clip=0.0 if "grad_clip=0" in where else 1.0)  # (the norm is measured unclipped then)
    bad = next(i for i in range(12) if i not in batch_samples(12, cfg, 1))  # first seen after step 1: a checkpoint exists before it
    nan_input = where == "loss"
    data = [(torch.full((3, 4), float("nan")) if i == bad and nan_input else torch.randn(3, 4), i % 2) for i in range(12)]
    in_batch = [False]

    def collate_fn(rows):
        in_batch[0] = any(torch.equal(v, data[bad][0]) for v, _ in rows)
        return {"x": collate([TokenSet("x", values=v) for v, _ in rows])}, {"cls": torch.tensor([y for _, y in rows])}

    def model():
        torch.manual_seed(0)
        spec = ModalityConfig.from_spec(ModalitySpec("x", ("t",), 3, value_dim=4))
        m = MultimodalTransformer(ModelConfig(TrunkConfig(dim=16, depth=1, num_heads=2, mode="encoder"), {"x": spec},
                                              {"cls": HeadConfig("classify", "x", num_outputs=2, pool="mean")}, encoder_inputs=["x"]))  # fmt: skip
        if not nan_input:
            m.embedders["x"].tok.weight.register_hook(lambda g: g * float("nan") if in_batch[0] else g)
        return m

    hits = [s for s in range(1, 10) if bad in batch_samples(len(data), cfg, s)]
    assert hits and hits[0] > 1, "the bad sample must first fall in a later batch of the run"
    with pytest.raises(FloatingPointError, match=rf"at step {hits[0]} \(its batch holds samples \[.*\b{bad}\b.*\]\); "
                                                 rf"the last good checkpoint, step-{hits[0] - 1:07d}, is kept"):  # fmt: skip
        train(cfg, model(), data, collate_fn, lambda m, a: {}, tmp_path / "stop")
    with pytest.raises(FloatingPointError, match=r"\); no checkpoint was written before it; skip_nonfinite=true"):
        train(dataclasses.replace(cfg, ckpt_every=100), model(), data, collate_fn, lambda m, a: {}, tmp_path / "early")
    last = latest_checkpoint(tmp_path / "stop")
    assert last is not None and last.name == f"step-{hits[0] - 1:07d}"  # the checkpoint of the step before, intact
    verify(last)
    cfg.skip_nonfinite = True
    m = model()
    train(cfg, m, data, collate_fn, lambda m, a: {}, tmp_path / "skip")
    rows = metric_rows(tmp_path / "skip")
    train_rows = [r for r in rows if "loss" in r]
    counts = [0] + [r.get("skipped_batches", 0) for r in train_rows]  # log_every=1: a row per step
    assert [r["step"] for r, a, b in zip(train_rows, counts, counts[1:]) if b > a] == hits and counts[-1] == len(hits)
    assert [r["step"] for r in train_rows if r["loss"] is None] == (hits if nan_input else [])  # NaN gradients: a finite loss
    assert all(bool(torch.isfinite(p).all()) for p in m.parameters())
    assert [r["lr"] for r in train_rows] == [cfg.lr * lr_lambda(cfg)(s - 1) for s in range(1, 10)]  # the rate each step used
    assert hits[0] < cfg.max_steps
    shutil.rmtree(latest_checkpoint(tmp_path / "skip"))  # killed before the last checkpoint: a resume goes on counting skips
    train(cfg, model(), data, collate_fn, lambda m, a: {}, tmp_path / "skip", resume=True)
    assert metric_rows(tmp_path / "skip") == rows


def test_training_into_a_directory_with_checkpoints_is_refused(trained, small_text, capsys):
    from recipes.cli import main

    before = sorted(p.name for p in (trained / "checkpoints").iterdir())
    assert main(["train", "gpt_char", f"data={small_text}", *TINY, "max_steps=4", f"run_dir={trained}"]) == 2
    err = capsys.readouterr().err
    assert "already holds checkpoints" in err and len(err.strip().splitlines()) == 1, err
    assert sorted(p.name for p in (trained / "checkpoints").iterdir()) == before


def test_cli_version_names_ours_torchs_and_pythons(capsys):
    """`mmtok --version` (for a bug report): the package's version as installed, torch's and Python's, on stdout."""
    import platform

    import torch

    import tokenizers_mm
    from recipes.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    out = capsys.readouterr().out
    assert exit_.value.code == 0 and tokenizers_mm.__version__ == importlib.metadata.version("tokenizers-mm")
    assert out.startswith(f"mmtok (tokenizers-mm) {tokenizers_mm.__version__}; torch {torch.__version__}") and platform.python_version() in out


def test_cli_sizes_must_be_positive(capsys):
    from recipes.cli import main

    with pytest.raises(SystemExit) as exit_:  # argparse's own error: one line naming the option, as the commands' own
        main(["show", "README.md", "--slice-frames", "0"])
    assert exit_.value.code == 2 and capsys.readouterr().err == (
        "mmtok show: error: argument --slice-frames: expected a positive integer, got 0 (see mmtok show --help)\n")
    for argv, said in ((["generate", "r", "--max-new-tokens", "ten"], "mmtok generate: error: argument --max-new-tokens: invalid positive whole "
                                                                     "number value: 'ten' (see mmtok generate --help)"),
                       (["generate", "r", "ROMEO:"], "mmtok generate: error: unrecognized arguments: ROMEO: (see mmtok generate --help)"),
                       (["generate", "r", "--top-k", "-1"], "mmtok generate: error: argument --top-k: expected a positive integer, or 0 "
                                                              "for no cut, got -1 (see mmtok generate --help)"),
                       (["generate", "r", "--max_new_tokens", "5"], "mmtok generate: error: unrecognized arguments: --max_new_tokens 5 "
                                                                    "(did you mean --max-new-tokens?) (see mmtok generate --help)"),  # (nanoGPT's)
                       (["train", "gpt_char", "--max-steps", "3"], "mmtok train: error: unrecognized arguments: --max-steps 3; config keys are "
                                                                   "given as key=value (max_steps=...), not as options (see mmtok train --help)"),
                       (["transcribe", "r", "a.wav", "--output-dir", ""], "mmtok transcribe: error: argument --output-dir: expected a value, "
                                                                          "got '' (an unset shell variable?) (see mmtok transcribe --help)"),
                       (["transcribe", "r", ""], "mmtok transcribe: error: argument AUDIO: expected a value, got '' (an unset shell variable?) "
                                                 "(see mmtok transcribe --help)"),
                       (["export", "", "out"], "mmtok export: error: argument RUN_DIR: expected a value, got '' (an unset shell variable?) "
                                               "(see mmtok export --help)"),
                       (["transcribe", "r", "a.wav", "--no-speech-threshold", "2"], "mmtok transcribe: error: argument --no-speech-threshold: "
                                                                                   "expected a probability from 0 to 1, or none for no check, got 2 "
                                                                                   "(see mmtok transcribe --help)"),
                       (["transcribe", "r", "a.wav", "--logprob-threshold", "nan"], "mmtok transcribe: error: argument --logprob-threshold: "
                                                                                   "expected a number, or none for no check, got nan (see mmtok transcribe --help)"),
                       (["transcribe", "r", "a.wav", "--compression-ratio-threshold", "abc"], "mmtok transcribe: error: argument "
                        "--compression-ratio-threshold: invalid number value: 'abc' (see mmtok transcribe --help)")):  # fmt: skip
        with pytest.raises(SystemExit) as exit_:  # an argument of the command's: its name and help, not `mmtok --help`
            main(argv)
        assert exit_.value.code == 2 and capsys.readouterr().err == said + "\n"


def test_resume_refuses_a_run_json_edited_since_its_checkpoint(tmp_path, trained, capsys):
    """A resumed run takes its model, optimizer and schedule from the checkpoint: a width or learning
    rate edited into run.json would be ignored without a word (the run went on at dim=32 under a
    run.json saying 64). Refused, naming each value and the one trained with; how often it logs,
    evaluates and saves, and skipping non-finite batches, may change."""
    from recipes.checkpoint import list_checkpoints
    from recipes.cli import main

    run = shutil.copytree(trained, tmp_path / "run")
    doc = json.loads((run / "run.json").read_text())
    kept = dict(doc["config"])
    doc["config"].update(dim=64, lr=0.01)
    (run / "run.json").write_text(json.dumps(doc))
    capsys.readouterr()
    assert main(["resume", str(run), "max_steps=24"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and f"run.json was changed since the run wrote step-0000020: lr=0.01 (trained with: {kept['lr']!r}), " \
        f"dim=64 (trained with: {kept['dim']})" in err and "put the values back, or start a new run" in err, err
    assert [c.name for c in list_checkpoints(run)] == ["step-0000010", "step-0000020"]  # nothing written
    assert json.loads((run / "run.json").read_text())["config"]["max_steps"] == 20
    doc["config"] = {**kept, "ckpt_every": 2, "skip_nonfinite": True}
    (run / "run.json").write_text(json.dumps(doc))
    assert main(["resume", str(run), "max_steps=24"]) == 0
    assert [c.name for c in list_checkpoints(run)] == ["step-0000022", "step-0000024"]  # every 2 steps now (2 kept)


def test_what_a_resume_may_find_changed(tmp_path):
    """Evaluation keys (a recipe's EVAL_KEYS), cadence and paths may differ from the checkpoint's
    record; a value recorded before a run.json format changed its meaning is read as that format's
    (dt's target 0 of format 1: the data's best, None now); num_workers may not (augmentation's draws)."""
    from recipes import dt_pendulum
    from recipes.runs import changed_since

    cfg = dt_pendulum.Config()
    recorded = json.loads(json.dumps(dataclasses.asdict(cfg)))
    (tmp_path / "run.json").write_text(json.dumps({"recipe": "dt_pendulum", "format": 1, "config": recorded}))
    assert cfg.target is None and changed_since(cfg, {**recorded, "target": 0.0, "eval_episodes": 3, "ckpt_every": 7, "run_dir": "/a"}, tmp_path) == []
    assert changed_since(cfg, {**recorded, "lr": 1.0, "num_workers": 2}, tmp_path) == [
        f"lr={cfg.lr!r} (trained with: 1.0)", f"num_workers={cfg.num_workers!r} (trained with: 2)"]


def test_a_checkpoint_whose_state_files_are_of_another_shape_is_named(tmp_path, trained, capsys):
    """trainer_state.json or rng.json edited (their manifest written again to match): one line naming the
    file (was "mmtok: error: step", a bare KeyError, and "checkpoint: unknown node []")."""
    from recipes.checkpoint import latest_checkpoint, write_manifest
    from recipes.cli import main

    run = shutil.copytree(trained, tmp_path / "run")
    ckpt = latest_checkpoint(run)
    for name, text, said in (("trainer_state.json", "{}", "trainer_state.json: expected {\"step\": N"),
                             ("rng.json", '{"processes": []}', "rng.json does not describe rng.safetensors' state")):  # fmt: skip
        kept = (ckpt / name).read_text()
        (ckpt / name).write_text(text)
        write_manifest(ckpt)
        assert main(["resume", str(run), "max_steps=30"]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"mmtok: error: {ckpt}") and said in err and f"move {ckpt.name} aside" in err and err.count("\n") == 1, err
        (ckpt / name).write_text(kept)
        write_manifest(ckpt)


def test_a_model_too_big_for_memory_is_one_line(tmp_path, small_text):
    """dim=1000000000 (a typo): the allocator's error as one line with what needs less, no traceback
    (was about 15 lines ending in the CPU allocator's "[enforce fail at alloc_cpu.cpp:124]"); no run
    folder. Run under an address-space limit of 16 GiB, so the allocation fails on any machine (where
    Linux overcommits, or a container sees its host's memory, it could succeed and be killed on first touch)."""
    pytest.importorskip("resource")  # (POSIX)
    argv = ["train", "gpt_char", f"data={small_text}", "dim=1000000000", "num_heads=1", "depth=1", "max_steps=0", f"run_dir={tmp_path / 'huge'}"]
    script = f"import resource, sys\nresource.setrlimit(resource.RLIMIT_AS, ({16 << 30}, {16 << 30}))\nfrom recipes.cli import main\nsys.exit(main({argv!r}))\n"
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=subprocess_env(), cwd=ROOT, timeout=300)
    assert p.returncode == 2 and p.stderr.startswith("mmtok: error: out of memory: the CPU could not allocate ") and p.stderr.count("\n") == 1, p.stderr
    assert "GiB more; a smaller batch_size (grad_accum=N keeps the batch), dim or depth" in p.stderr and not (tmp_path / "huge").exists()


def test_throughput_times_the_steps_alone_and_results_name_the_step_reached(tmp_path, monkeypatch):
    """tokens_per_s (and MFU) divide by the training steps' time: an evaluation's or a checkpoint's
    is left out of the next row (here a clock that jumps 1000 s inside evaluate); a resume with a
    smaller max_steps evaluates the checkpoint, and results.json names the step that model reached."""
    import types

    from models import HeadConfig, ModalityConfig, ModelConfig, MultimodalTransformer, TrunkConfig
    from tokenizers_mm import ModalitySpec, TokenSet, collate

    loop = sys.modules["recipes.train"]  # note: the package's `train` attribute is the function
    clock = [0.0]

    def tick():
        clock[0] += 0.01
        return clock[0]

    def evaluate(model, accelerator):
        clock[0] += 1000.0  # a long evaluation
        return {"val_score": 1.0}

    monkeypatch.setattr(loop, "time", types.SimpleNamespace(perf_counter=tick))
    data = [(torch.randn(3, 4), i % 2) for i in range(12)]

    def collate_fn(rows):
        return {"x": collate([TokenSet("x", values=v) for v, _ in rows])}, {"cls": torch.tensor([y for _, y in rows])}

    spec = ModalityConfig.from_spec(ModalitySpec("x", ("t",), 3, value_dim=4))
    model = MultimodalTransformer(ModelConfig(TrunkConfig(dim=16, depth=1, num_heads=2, mode="encoder"), {"x": spec},
                                              {"cls": HeadConfig("classify", "x", num_outputs=2)}, encoder_inputs=["x"]))  # fmt: skip
    cfg = TrainConfig(max_steps=8, batch_size=4, log_every=2, eval_every=2, ckpt_every=4, cpu=True, warmup_steps=1, log_mfu=False)
    loop.train(cfg, model, data, collate_fn, evaluate, tmp_path)
    speeds = [r["tokens_per_s"] for r in loop.read_metrics(tmp_path) if "tokens_per_s" in r]
    assert len(speeds) == 4 and max(speeds) < 3 * min(speeds)  # with the evaluations counted, the later rows were ~1e5 times lower
    cfg.max_steps = 6
    loop.train(cfg, model, data, collate_fn, evaluate, tmp_path, resume=True)  # the last checkpoint is step 8's
    assert json.loads((tmp_path / "results.json").read_text())["step"] == 8


def test_weight_decay_reaches_hugging_face_gpt2_matrices():
    """build_optimizer decays Linear matrices, and transformers' Conv1D ones (GPT-2's), never norms,
    biases or embeddings: the gpt_step benchmark's peer trains under the same rule as ours."""
    transformers = pytest.importorskip("transformers")
    from recipes.train import build_optimizer

    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=50, n_positions=8, n_embd=16, n_layer=1, n_head=2))
    decay, no_decay = build_optimizer(hf, TrainConfig()).param_groups
    names = {id(p): n for n, p in hf.named_parameters()}
    assert sorted(names[id(p)] for p in decay["params"]) == [f"transformer.h.0.{m}.weight" for m in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")]
    assert decay["weight_decay"] > 0 and no_decay["weight_decay"] == 0 and any("wte" in names[id(p)] for p in no_decay["params"])


def tiny_lm(image: bool = False):
    """A 2-block text decoder; with image=True an encoder-decoder reading 12-value image tokens, with
    a classification head too."""
    from models import HeadConfig, ModalityConfig, ModelConfig, MultimodalTransformer, TrunkConfig
    from tokenizers_mm import ModalitySpec

    mods = {"text": ModalityConfig.from_spec(ModalitySpec("text", ("token",), 16, vocab_size=40))}
    heads, io = {"lm": HeadConfig("lm", "text")}, {"decoder_inputs": ["text"]}
    if image:
        mods["image"] = ModalityConfig.from_spec(ModalitySpec("image", ("patch",), 16, value_dim=12))
        heads["cls"], io["encoder_inputs"] = HeadConfig("classify", "image", num_outputs=3, pool="mean"), ["image"]
    trunk = TrunkConfig(dim=32, depth=2, num_heads=2, mode="encoder-decoder" if image else "decoder")
    return MultimodalTransformer(ModelConfig(trunk, mods, heads, **io))


@pytest.mark.parametrize("lengths", ["equal", "unequal", "uneven split"])
def test_gradient_accumulation_gives_the_whole_batch_gradients(lengths):
    """grad_accum=2 over two halves of a batch leaves the gradients one backward pass over the whole
    batch gives, and the mean loss, also when the halves hold different numbers of target tokens
    (short sequences first; or 3 and 5 samples, as a batch_size that grad_accum does not divide):
    every token weighs alike (`loss_counts`), not each half's mean."""
    from accelerate import Accelerator

    from recipes.train import forward_backward
    from tokenizers_mm import collate_examples, next_token_set

    torch.manual_seed(0)
    model = tiny_lm()
    sizes = [13] * 8 if lengths == "equal" else [3, 4, 3, 5, 14, 12, 15, 13]
    examples = [{"text": next_token_set("text", torch.randint(0, 40, (n,)))} for n in sizes]
    batch = lambda exs: collate_examples(exs)  # noqa: E731
    accelerator = Accelerator(cpu=True)
    grads, losses = [], []
    cut = 3 if lengths == "uneven split" else 4
    for micro in ([batch(examples)], [batch(examples[:cut]), batch(examples[cut:])]):
        model.zero_grad(set_to_none=True)
        losses.append(forward_backward(accelerator, model, micro, len(micro)))
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    torch.testing.assert_close(losses[1], losses[0], atol=1e-6, rtol=1e-6)
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 20
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], atol=1e-6, rtol=1e-5, msg=name)


def test_weight_decay_reaches_linear_matrices_of_our_model_only():
    """Our model decays every Linear matrix (attention, MLP, cross-attention, patch / value
    projections, heads) and nothing else: token, position and type tables, norms, biases; the LM
    head tied to the token table counts once, as the table (no decay, as minGPT)."""
    from torch import nn

    from recipes.train import build_optimizer

    for model, matrices in ((tiny_lm(), 8), (tiny_lm(image=True), 8 + 6 + 8 + 2)):  # + cross-attention, encoder, patch and cls
        decay, no_decay = build_optimizer(model, TrainConfig(weight_decay=0.1)).param_groups
        linear = {id(m.weight) for m in model.modules() if isinstance(m, nn.Linear)}
        tied = {id(model.embedders["text"].tok.weight)}
        assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
        assert {id(p) for p in decay["params"]} == linear - tied
        assert {id(p) for p in no_decay["params"]} == {id(p) for p in model.parameters()} - (linear - tied)
        assert len(decay["params"]) == matrices and model.heads["lm"].proj.weight is model.embedders["text"].tok.weight


def test_eval_batches_are_made_when_read_and_kept_only_for_a_small_set():
    from recipes.train import EvalBatches

    made = []

    def collate(items):
        made.append(list(items))
        return items

    small = EvalBatches(list(range(10)), collate, 4)
    assert len(small) == 3 and list(small) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]] and list(small) == list(small)
    assert len(made) == 3  # made once, then kept
    made.clear()
    large = EvalBatches(list(range(10)), collate, 4, n=9, keep=5)
    assert list(large) == [[0, 1, 2, 3], [4, 5, 6, 7], [8]] and list(large)[2] == [8]
    assert len(made) == 6  # the first n only, made anew each time: never held whole
    with pytest.raises(IndexError):
        large[3]


def test_a_compressed_text_file_and_a_run_dir_that_is_a_file_are_named(tmp_path, capsys):
    import gzip

    from recipes.cli import main
    from recipes.gpt_char import load_text

    (tmp_path / "corpus.txt.gz").write_bytes(gzip.compress(b"hello world " * 100))
    with pytest.raises(ValueError, match=r"corpus.txt.gz is gzip-compressed; decompress it"):
        load_text(str(tmp_path / "corpus.txt.gz"))
    data = write_small_text(tmp_path)
    assert main(["train", "gpt_char", f"data={data}", f"run_dir={data}", *TINY, "max_steps=1"]) == 2
    assert f"run_dir={data} is a file; a run directory is a folder" in capsys.readouterr().err


def test_a_run_dir_in_use_a_damaged_config_a_damaged_log_line_and_run_json(tmp_path, trained, capsys):
    """A second train / resume into a run directory that trains is refused (they deleted each
    other's checkpoint being written and interleaved their logs); a plain resume of a checkpoint
    whose config.json is damaged names the older one that verifies (the model was built from it
    first); a damaged metrics.jsonl line is skipped and counted, not a stop; a run.json not as a
    run writes it is one line."""
    from recipes.cli import main
    from recipes.runs import run_lock

    run = tmp_path / "run"
    shutil.copytree(trained, run)
    with run_lock(run):
        assert main(["resume", str(run), "max_steps=21"]) == 2
        assert main(["train", "gpt_char", f"data={write_small_text(tmp_path)}", *TINY, f"run_dir={run}"]) == 2
        with pytest.MonkeyPatch.context() as mp:  # the other processes of an MPI launch (no RANK yet) take no lock
            mp.setenv("OMPI_COMM_WORLD_RANK", "1")
            with run_lock(run):
                pass
    err = capsys.readouterr().err
    assert err.count(f"mmtok: error: run_dir {run} is in use by another training process (pid ") == 2, err
    import multiprocessing
    import time

    started, tell = multiprocessing.Pipe(duplex=False)
    with run_lock(run):  # a forked child (a DataLoader worker, orphaned by a killed trainer) holds no share of the lock
        worker = multiprocessing.get_context("fork").Process(target=lambda: (tell.send("up"), time.sleep(60)))
        worker.start()
        assert started.poll(60) and started.recv() == "up"  # (running: the fork's handlers have run in it)
    try:
        with run_lock(run):  # the trainer gone, its folder is free at once (a resume right after a kill)
            pass
    finally:
        worker.kill()
        worker.join()
    import errno
    import fcntl

    with pytest.MonkeyPatch.context() as mp:  # a file system without locks (NFS without lockd): a warning, the run goes on
        mp.setattr(fcntl, "flock", lambda *a: (_ for _ in ()).throw(OSError(errno.ENOLCK, "No locks available")))
        with pytest.warns(UserWarning, match=r"its file system takes no lock \(No locks available\)"), run_lock(run):
            pass
    if not torch.accelerator.is_available():  # an fp16 run resumed on a machine without a GPU: refused before run.json records anything
        doc = json.loads((run / "run.json").read_text())
        (run / "run.json").write_text(json.dumps({**doc, "config": {**doc["config"], "precision": "fp16"}}))
        assert main(["resume", str(run), "max_steps=21"]) == 2
        assert "this run trains in fp16: resume it on a machine with a GPU" in capsys.readouterr().err
        assert json.loads((run / "run.json").read_text())["config"]["max_steps"] == 20
        (run / "run.json").write_text(json.dumps(doc))
    assert json.loads((run / "run.json").read_text())["config"]["max_steps"] == 20  # the refused resume recorded nothing
    lines = (run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text("\n".join([lines[0], '{"step": 3, "loss": 4.1', *lines[1:]]) + "\n")
    assert main(["resume", str(run), "max_steps=21"]) == 0
    assert f"warning: {run / 'metrics.jsonl'}: skipped 1 line(s) that are not a logged step (line 2)" in capsys.readouterr().err
    assert [r["step"] for r in metric_rows(run)][-1] == 21
    (sorted((run / "checkpoints").glob("step-*"))[-1] / "config.json").write_text("{")
    assert main(["resume", str(run)]) == 2
    assert re.search(r"step-0000021 is truncated: config.json .*; step-0000020 before it verifies", capsys.readouterr().err)
    (run / "run.json").write_text('{"recipe": "gpt_char", "config": [1]}')
    assert main(["eval", str(run)]) == 2
    assert 'run.json: expected {"recipe": NAME, "config": {KEY: VALUE, ...}}' in capsys.readouterr().err


def test_a_sample_the_model_refuses_is_named_by_its_dataset_index(tmp_path):
    """A batch check's "sample 3 of the batch" is told as the dataset's sample and the step: the
    micro-batch and row mapped back through the sampler (here the 2nd micro-batch of step 4)."""
    from torch.utils.data import Dataset

    from models import HeadConfig, ModalityConfig, ModelConfig, MultimodalTransformer, TrunkConfig
    from recipes.train import batch_samples, train
    from tokenizers_mm import ModalitySpec, TokenSet, collate_examples

    class Series(Dataset):
        def __len__(self):
            return 40

        def __getitem__(self, i):  # sample 27: 12 tokens for a table of 8 positions
            return {"ts": TokenSet("ts", values=torch.randn(12 if i == 27 else 4, 2)), "targets": {"y": torch.tensor(i % 2)}}

    spec = ModalitySpec("ts", ("v",), 8, value_dim=2)
    model = MultimodalTransformer(ModelConfig(TrunkConfig(dim=16, depth=1, num_heads=2, mode="encoder"), {"ts": ModalityConfig.from_spec(spec)},
                                              {"y": HeadConfig("classify", "ts", num_outputs=2, pool="mean")}, encoder_inputs=["ts"]))  # fmt: skip
    cfg = TrainConfig(max_steps=20, batch_size=8, grad_accum=2, cpu=True, eval_every=100, ckpt_every=100, log_every=100, log_mfu=False)
    step = next(s for s in range(1, 21) if 27 in batch_samples(40, cfg, s))
    with pytest.raises(ValueError, match=rf"position 11 is beyond the declared table of 8 positions \(sample \d of the batch\): "
                                         rf"dataset sample 27 \(training step {step}\)"):  # fmt: skip
        train(cfg, model, Series(), collate_examples, None, tmp_path / "run")


def test_a_full_disk_at_the_end_of_a_run_leaves_the_last_files_and_names_them(tmp_path, monkeypatch):
    """loss.png and results.json are written through a temporary and a rename: a full disk leaves the
    last ones whole (an empty loss.png before), and its error names the file meant."""
    import errno

    import matplotlib.figure

    from recipes.plots import save_png, subplots
    from recipes.train import METRICS_FILE, append_metrics

    path = tmp_path / "loss.png"
    fig, ax = subplots()
    ax.plot([1, 2])
    save_png(fig, path)
    before = path.read_bytes()

    def full(self, target, **kw):
        Path(target).write_bytes(b"\x89PNG")  # (some of it written, then the disk is full)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", full)
    fig, ax = subplots()
    with pytest.raises(OSError, match=rf"cannot write {re.escape(str(path))}: No space left on device"):
        save_png(fig, path)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["loss.png"]
    (tmp_path / METRICS_FILE).mkdir()  # (an append that fails: named)
    with pytest.raises(OSError, match=rf"cannot write {re.escape(str(tmp_path / METRICS_FILE))}: "):
        append_metrics(tmp_path, {"step": 1})


def test_ctrl_c_says_how_to_go_on_and_an_empty_data_path_is_refused(tmp_path, trained, capsys, monkeypatch):
    from recipes import gpt_char
    from recipes.cli import main

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(gpt_char, "main", interrupted)
    assert main(["train", "gpt_char", f"run_dir={tmp_path / 'run'}"]) == 130  # before its first checkpoint: nothing to resume
    assert capsys.readouterr().err == "mmtok: interrupted\n" and not (tmp_path / "run").exists()
    run = tmp_path / "held"
    shutil.copytree(trained, run)
    assert main(["resume", str(run), "max_steps=30"]) == 130
    assert capsys.readouterr().err == f"mmtok: interrupted; {run / 'checkpoints' / 'step-0000020'} is kept: `mmtok resume {run}` goes on from it\n"
    shutil.rmtree(run / "checkpoints")  # stopped before its first checkpoint, once started: its run.json says how to go on
    assert main(["resume", str(run), "max_steps=30"]) == 130
    assert capsys.readouterr().err == f"mmtok: interrupted; {run} holds no checkpoint yet: `mmtok resume {run}` starts it again from step 0\n"
    assert main(["eval", str(trained), "--data", ""]) == 2  # (an unset shell variable: not the run's own data, silently)
    assert "--data: expected a file, a folder or a dataset, got an empty string" in capsys.readouterr().err


def test_run_json_is_written_last_of_a_runs_setup(tmp_path, small_text, monkeypatch, capsys):
    """run.json marks a run as started: it is written after the tokenizers and class names, so a kill
    while a run is set up leaves either no run.json (`mmtok train` starts it again) or one beside
    everything `mmtok resume` reads (a tokenizer missing there stopped the resume)."""
    import recipes.runs as runs
    from recipes.cli import main

    beside, write = [], runs.write_json_atomic

    def spy(path, doc):
        if path.name == "run.json":
            beside.append({p.relative_to(path.parent).as_posix() for p in path.parent.rglob("*") if p.is_file()})
        return write(path, doc)

    monkeypatch.setattr(runs, "write_json_atomic", spy)
    assert main(["train", "gpt_char", f"data={small_text}", *TINY, "max_steps=0", f"run_dir={tmp_path / 'lm'}"]) == 0
    assert main(["train", "vit_digits", "dim=16", "depth=1", "num_heads=2", "max_steps=0", f"run_dir={tmp_path / 'vit'}"]) == 0
    assert "tokenizers/text/tokenizer.json" in beside[0]
    assert {"classes.txt", "tokenizers/image/tokenizer.json"} <= beside[1]
    step = tmp_path / "vit" / "checkpoints" / "step-0000001"
    step.mkdir(parents=True, exist_ok=True)
    for folder, said in ((step, f"a checkpoint of the run {tmp_path / 'vit'}; give the run directory"),
                         (step.parent, f"the checkpoints of the run {tmp_path / 'vit'}; give the run directory"),
                         (tmp_path, "a folder of 2 runs (lm, vit); give one of them")):  # fmt: skip
        assert main(["eval", str(folder)]) == 2
        assert f"{folder} holds no run.json: {said}" in capsys.readouterr().err
    (tmp_path / "lm" / "run.json").unlink()  # as a run killed before it: resume says how to start it
    assert main(["resume", str(tmp_path / "lm")]) == 2
    assert f"{tmp_path / 'lm'} holds no run.json: not a run directory, or a run killed while it was set up" in capsys.readouterr().err


def test_a_run_without_its_tokenizers_says_so(tmp_path, trained, capsys):
    from recipes.cli import main

    run = tmp_path / "run"
    shutil.copytree(trained, run)
    shutil.rmtree(run / "tokenizers")
    assert main(["generate", str(run), "--max-new-tokens", "3"]) == 2
    assert capsys.readouterr().err == (f"mmtok: error: run {run} has no tokenizers ({run / 'tokenizers'} is missing or empty); the run cannot "
                                       "encode or decode without the ones it was trained with\n")  # fmt: skip


def test_a_checkpoint_pruned_while_it_is_read_gives_way_to_the_next(tmp_path, trained, monkeypatch):
    """`mmtok eval` on a run still training: the checkpoint it chose can be pruned before its files
    are read (ckpt_every=1); the newest one then is read instead of failing on a missing file."""
    import recipes.runs as runs

    run = tmp_path / "run"
    shutil.copytree(trained, run)
    newest = runs.latest_checkpoint(run)
    verify, read = runs.verify_latest, []

    def pruned_meanwhile(ckpt, **kw):
        read.append(ckpt.name)
        if ckpt == newest:
            shutil.move(ckpt, tmp_path / "moved")  # (as the training process prunes it)
            raise FileNotFoundError(f"model: {ckpt / 'model.safetensors'} does not exist")
        return verify(ckpt, **kw)

    monkeypatch.setattr(runs, "verify_latest", pruned_meanwhile)
    model, _ = runs.load_trained(run)
    assert read == [newest.name, "step-0000010"] and model is not None
