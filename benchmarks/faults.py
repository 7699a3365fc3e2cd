"""Fault injection across the training recipes, and the hardening summary table.

    python benchmarks/faults.py            # every recipe family, then the whole bad-input catalogue
    python benchmarks/faults.py --tiny     # gpt_char killed once, and the catalogue less its slow case

tests/test_faults.py runs the same families (one test each) and prints the same table at its end.

Each recipe family trains a tiny configuration (a few seconds a run) twice, in real subprocesses
of `mmtok`: once uninterrupted (the reference) and once through a chain of faults, each followed
by `mmtok resume` until the run finishes:

  ckpt_write  the process SIGKILLs itself inside its N-th checkpoint write, at one of the phases
              of recipes/checkpoint.py (TOKENIZERS_MM_FAULT=ckpt_write:N:PHASE)
  disk_full   a resume under RLIMIT_FSIZE: files cannot grow past 32 KiB (EFBIG, as on a full
              disk), so the next checkpoint cannot be written
  read_only   a resume whose checkpoints folder is a read-only bind mount, made in a private mount
              namespace (`unshare --mount`), so nothing outside that process sees it
  sigkill     SIGKILL from outside once the run has logged a random step

After every kill each visible checkpoint must verify against its SHA-256 manifest; after a disk
error the run must stop with one line naming the checkpoint and the OS error, the last good
checkpoint unchanged and no temporary directory left. At the end metrics.jsonl (less wall-clock
fields), the results and every tensor and JSON file of the kept checkpoints must equal the
reference bit for bit (CPU, fixed seed). "Lost" counts the faults after which a checkpoint did
not verify or a good one vanished or changed, and the finished runs that differ from their
reference. Kill points come from random.Random seeded with the family's name, so a rerun aims
at the same ones; where an outside SIGKILL lands also depends on timing.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from recipes.checkpoint import CKPT_DIR, FAULT_ENV, MANIFEST, CheckpointError, list_checkpoints, verify  # noqa: E402

MAX_STEPS, CKPT_EVERY, KEEP = 60, 10, 2  # every family: 6 checkpoint writes per model, the last 2 kept
WRITES = MAX_STEPS // CKPT_EVERY
COMMON = [f"max_steps={MAX_STEPS}", f"ckpt_every={CKPT_EVERY}", f"keep_checkpoints={KEEP}", "log_every=1", "cpu=true",
          "log_mfu=false"]  # note: MFU is a wall-clock figure, and measuring the CPU's peak costs half a second a run
WALL_CLOCK = ("tokens_per_s", "mfu")  # metrics that measure speed, not training
FSIZE_LIMIT = 32 * 1024  # bytes: above metrics.jsonl, below every model.safetensors of the tiny configs
SIGKILL_MARGIN = 20  # outside kills aim at least this many steps before the end, so they land before it
TIMEOUT = 300  # seconds for one process


@dataclass
class Family:
    recipe: str
    args: list[str]  # a tiny config as key=value overrides (log_every=1 lets the poller see every step)
    faults: tuple[str, ...]  # in order, then a final resume
    phase: str  # where the ckpt_write kill lands (recipes/checkpoint.py FAULT_PHASES)
    first_write: bool = False  # the ckpt_write kill hits the first checkpoint: nothing to resume from
    models: int = 1  # models trained one after another in one run (the DT recipes' DT + BC)
    needs: str = ""  # an optional module the recipe needs


def families() -> list[Family]:
    gpt = ["dim=32", "depth=2", "num_heads=2", "block_size=32", "batch_size=8", "eval_batches=2", "sample_tokens=0", "dropout=0.1",
           "warmup_steps=5", "eval_every=20"]  # fmt: skip
    dt = ["dim=16", "depth=1", "num_heads=1", "batch_size=16", "warmup_steps=2", "eval_every=60", "eval_episodes=1", "context=5"]
    return [
        Family("gpt_char", gpt, ("ckpt_write", "disk_full", "sigkill"), "files"),
        Family("gpt_bpe", [*gpt, "vocab_size=300", "depth=1"], ("ckpt_write", "read_only"), "manifest"),
        Family("vit_digits", ["dim=16", "depth=1", "num_heads=2", "batch_size=32", "warmup_steps=5", "eval_every=60"],
               ("ckpt_write", "sigkill"), "rename"),  # fmt: skip
        Family("whisper_digits", ["n_train=8", "n_test=2", "dim=16", "depth=1", "dec_depth=1", "num_heads=2", "batch_size=4",
                                  "warmup_steps=2", "eval_every=60", "eval_utterances=2"],
               ("ckpt_write",), "prune", needs="espeakng_loader"),  # fmt: skip
        Family("dt_cartpole", [*dt, "n_episodes=30", "targets=500"], ("ckpt_write", "sigkill"), "files", models=2, needs="gymnasium"),
        Family("generalist", ["tasks=digits,control", "weights=8,8", "batch_size=16", "row_tokens=128", "dim=16", "depth=1", "num_heads=2",
                              "n_episodes=30", "context=5", "eval_episodes=1", "warmup_steps=2", "eval_every=60"],
               ("ckpt_write",), "manifest", first_write=True, needs="gymnasium"),  # fmt: skip
    ]


@dataclass
class FaultResult:
    family: str
    kind: str
    detail: str  # where it was aimed and where it landed
    injected: bool  # the fault happened (a kill killed, a disk error stopped the run)
    ok: bool  # the documented outcome: checkpoints verify, the error is one clear line, nothing lost
    lost: int = 0
    what: str = ""


@dataclass
class FamilyResult:
    family: str
    faults: list[FaultResult] = field(default_factory=list)
    finished: bool = False
    differences: list[str] = field(default_factory=list)  # finished run vs reference

    @property
    def lost(self) -> int:
        return sum(f.lost for f in self.faults) + (0 if self.finished and not self.differences else 1)


# -- processes ------------------------------------------------------------------------------------
def env(fault: str = "") -> dict:
    e = {k: v for k, v in os.environ.items() if k != FAULT_ENV}
    e["PYTHONPATH"] = str(ROOT) + os.pathsep + e.get("PYTHONPATH", "")
    e.setdefault("OMP_NUM_THREADS", "1")
    if fault:
        e[FAULT_ENV] = fault
    return e


def mmtok(args: list[str], log: Path, fault: str = "", preexec=None, wrapper: tuple = ()) -> subprocess.Popen:
    with open(log, "w") as out:  # the child keeps its own descriptor
        return subprocess.Popen([*wrapper, sys.executable, "-m", "recipes.cli", *args], cwd=ROOT, env=env(fault), stdout=out,
                                stderr=subprocess.STDOUT, preexec_fn=preexec)  # fmt: skip


def wait(proc: subprocess.Popen) -> int:
    try:
        return proc.wait(TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise


def limit_file_size():  # runs in the child before exec: writes past the limit fail with EFBIG
    resource.setrlimit(resource.RLIMIT_FSIZE, (FSIZE_LIMIT, FSIZE_LIMIT))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # else the kernel's SIGXFSZ kills the process instead


def read_only_wrapper(folder: Path) -> tuple:
    """Run the command in a private mount namespace where `folder` is a read-only bind mount."""
    script = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" "$0" && exec "$@"'
    return ("unshare", "--mount", "--propagation", "private", "sh", "-c", script, str(folder))


def read_only_available() -> bool:
    if shutil.which("unshare") is None:
        return False
    with tempfile.TemporaryDirectory() as d:
        p = subprocess.run([*read_only_wrapper(Path(d)), "sh", "-c", f'! touch "{d}/probe" 2>/dev/null'], capture_output=True)
        return p.returncode == 0 and not Path(d, "probe").exists()


# -- run directories ------------------------------------------------------------------------------
def model_dirs(run: Path, family: Family) -> list[Path]:
    return [run] if family.models == 1 else [run, run / "bc"]


def progress(run: Path, family: Family) -> int:
    """Optimizer steps the run has logged (summed over its models); complete lines only."""
    total = 0
    for d in model_dirs(run, family):
        f = d / "metrics.jsonl"
        lines = f.read_text().split("\n")[:-1] if f.exists() else []
        total += max((json.loads(line)["step"] for line in lines if line.strip()), default=0)
    return total


def resumes_from(run: Path, family: Family) -> int:
    """The step a resume starts from (summed over the run's models): its latest checkpoints'."""
    return sum(int(c[-1].name.split("-")[1]) for c in (list_checkpoints(d) for d in model_dirs(run, family)) if c)


def snapshot(run: Path, family: Family) -> dict[str, bytes]:
    """Visible checkpoints -> their manifest bytes."""
    return {str(c.relative_to(run)): (c / MANIFEST).read_bytes() for d in model_dirs(run, family) for c in list_checkpoints(d)}


def check_visible(run: Path, family: Family) -> str:
    """'' when every visible checkpoint verifies against its manifest, else the problem."""
    for d in model_dirs(run, family):
        for c in list_checkpoints(d):
            try:
                verify(c)
            except CheckpointError as e:
                return str(e)
    return ""


def leftovers(run: Path, family: Family, prefix: str) -> list[Path]:
    return [p for d in model_dirs(run, family) for p in (d / CKPT_DIR).glob(f"{prefix}-step-*")]


def last_line(log: Path) -> str:
    lines = [s.strip() for s in log.read_text(errors="replace").replace("\r", "\n").split("\n") if s.strip()]
    return lines[-1] if lines else ""


# -- the faults -----------------------------------------------------------------------------------
def ckpt_write(family: Family, run: Path, args: list[str], rng: random.Random, log: Path) -> FaultResult:
    """A fresh run SIGKILLs itself inside its n-th checkpoint write."""
    writes = WRITES * family.models
    if family.first_write:
        n = 1
    else:  # not the first (a later fault needs a checkpoint to keep) nor a model's last; prune needs KEEP older ones
        choices = [n for n in range(2, writes + 1) if (n - 1) % WRITES + 1 < WRITES and (family.phase != "prune" or (n - 1) % WRITES >= KEEP)]
        n = rng.choice(choices)
    rc = wait(mmtok(["train", family.recipe, *args], log, fault=f"ckpt_write:{n}:{family.phase}"))
    model = model_dirs(run, family)[(n - 1) // WRITES] if family.models > 1 else run
    step = ((n - 1) % WRITES + 1) * CKPT_EVERY
    name = f"step-{step:07d}"
    listed = [c.name for c in list_checkpoints(model)]
    tmp = list((model / CKPT_DIR).glob(f".tmp-{name}-*"))
    landed = {  # evidence that the kill happened where it was aimed
        "files": bool(tmp) and (tmp[0] / "model.safetensors").exists() and not (tmp[0] / MANIFEST).exists() and name not in listed,
        "manifest": bool(tmp) and (tmp[0] / MANIFEST).exists() and name not in listed,
        "rename": name in listed and not tmp,
        "prune": name in listed and bool(list((model / CKPT_DIR).glob(".trash-step-*"))),
    }[family.phase]
    problem = check_visible(run, family)
    detail = f"write {n} ({model.name}/{name}), phase {family.phase}; visible after: {listed or 'none'}"
    what = problem or ("" if landed else f"the kill did not land in phase {family.phase} (rc {rc}): {last_line(log)}")
    return FaultResult(family.recipe, "ckpt_write", detail, rc == -signal.SIGKILL, not problem and landed, int(bool(problem)), what)


def disk_error(family: Family, run: Path, kind: str, log: Path) -> FaultResult:
    """A resume on a full (kind="disk_full") or read-only ("read_only") disk: one clear line, the last good checkpoint kept."""
    before = snapshot(run, family)
    checkpoints = model_dirs(run, family)[0] / CKPT_DIR
    if kind == "disk_full":
        proc, expect = mmtok(["resume", str(run)], log, preexec=limit_file_size), "File too large"
    else:
        proc, expect = mmtok(["resume", str(run)], log, wrapper=read_only_wrapper(checkpoints)), "Read-only file system"
    rc = wait(proc)
    line, text = last_line(log), log.read_text(errors="replace")
    clear = line.startswith("mmtok: error: cannot write checkpoint") and str(checkpoints) in line and expect in line and "Traceback" not in text
    after, problem = snapshot(run, family), check_visible(run, family)
    vanished = sorted(set(before) - set(after)) + [k for k in before if k in after and before[k] != after[k]]
    temp_left = kind == "disk_full" and bool(leftovers(run, family, ".tmp"))
    lost = int(bool(problem or vanished))
    what = problem or (f"checkpoints lost or changed: {vanished}" if vanished else "") or ("" if clear else f"rc {rc}, last line: {line!r}")
    what = what or ("a temporary directory was left behind" if temp_left else "")
    detail = f"{'RLIMIT_FSIZE 32 KiB' if kind == 'disk_full' else 'read-only bind mount'}: {line[:160]}"
    return FaultResult(family.recipe, kind, detail, rc == 2, rc == 2 and clear and not lost and not temp_left, lost, what)


def sigkill(family: Family, run: Path, rng: random.Random, log: Path) -> FaultResult:
    """A resume SIGKILLed from outside once it has logged a random step."""
    start, total = resumes_from(run, family), MAX_STEPS * family.models
    target = rng.randint(start + 1, max(start + 1, total - SIGKILL_MARGIN))
    proc = mmtok(["resume", str(run)], log)
    deadline = time.monotonic() + TIMEOUT
    while proc.poll() is None and progress(run, family) < target and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    rc = proc.wait()
    reached, problem = progress(run, family), check_visible(run, family)
    detail = f"aimed at step {target} of {total}, landed at {reached}; visible after: {sorted(snapshot(run, family)) or 'none'}"
    what = problem or ("" if rc == -signal.SIGKILL else f"the run ended (rc {rc}) before the kill: {last_line(log)}")
    return FaultResult(family.recipe, "sigkill", detail, rc == -signal.SIGKILL, not problem, int(bool(problem)), what)


# -- comparing a finished run with its reference --------------------------------------------------
def differences(ref: Path, run: Path, family: Family) -> list[str]:
    """Everything a training run produces, less wall-clock fields and its own path."""
    import torch
    from safetensors.torch import load_file

    out = []
    for rd, d in zip(model_dirs(ref, family), model_dirs(run, family)):
        rows = [{k: v for k, v in r.items() if k not in WALL_CLOCK} for r in map(json.loads, (rd / "metrics.jsonl").read_text().splitlines())]
        got = [{k: v for k, v in r.items() if k not in WALL_CLOCK} for r in map(json.loads, (d / "metrics.jsonl").read_text().splitlines())]
        if rows != got:
            bad = next((i for i, (a, b) in enumerate(zip(rows, got)) if a != b), min(len(rows), len(got)))
            out.append(f"{d.name}/metrics.jsonl: {len(got)} rows vs {len(rows)}, first difference at row {bad}")
        if (rd / "results.json").read_text() != (d / "results.json").read_text():
            out.append(f"{d.name}/results.json differs")
        refs, gots = [c.name for c in list_checkpoints(rd)], [c.name for c in list_checkpoints(d)]
        if refs != gots:
            out.append(f"{d.name}: checkpoints {gots} vs {refs}")
            continue
        for name in refs:
            a, b = rd / CKPT_DIR / name, d / CKPT_DIR / name
            for f in sorted(p.name for p in a.iterdir()):
                if f.endswith(".safetensors"):
                    ta, tb = load_file(a / f), load_file(b / f)
                    if ta.keys() != tb.keys() or not all(torch.equal(ta[k], tb[k]) and ta[k].dtype == tb[k].dtype for k in ta):
                        out.append(f"{d.name}/{name}/{f}: tensors differ")
                elif f == "trainer_state.json":
                    sa, sb = json.loads((a / f).read_text()), json.loads((b / f).read_text())
                    sa["config"].pop("run_dir"), sb["config"].pop("run_dir")
                    if sa != sb:
                        out.append(f"{d.name}/{name}/{f} differs")
                elif f != MANIFEST and (a / f).read_bytes() != (b / f).read_bytes():
                    out.append(f"{d.name}/{name}/{f} differs")
    if (ref / "returns.json").exists():  # the DT recipes' summary, less its timings
        ra, rb = (json.loads((p / "returns.json").read_text()) for p in (ref, run))
        ra.pop("train_seconds"), rb.pop("train_seconds")
        if ra != rb:
            out.append("returns.json differs")
    return out


# -- one family -----------------------------------------------------------------------------------
def prepare(family: Family, data: Path) -> list[str]:
    """Make the family's data once, in this process, so that its two runs can share it; returns
    the key=value arguments that point the recipe at it."""
    data.mkdir(parents=True, exist_ok=True)
    if family.recipe.startswith("gpt"):
        corpus = data / "corpus.txt"
        if not corpus.exists():
            from recipes.gpt_char import default_corpus

            corpus.write_text(default_corpus()[:30000], encoding="utf-8")
        return [f"data={corpus}"]
    if family.recipe.startswith("vit"):
        return []  # scikit-learn's bundled digits
    extra = [f"{'rl_dir' if family.recipe == 'generalist' else 'data_dir'}={data / family.recipe}"]
    from recipes.runs import make_config

    _, module, cfg = make_config(family.recipe, [*family.args, *extra])
    if family.recipe == "whisper_digits":
        module.build_data(cfg)
    elif family.recipe.startswith("dt_") or family.recipe == "generalist":
        from recipes.dt import Config, load_data

        load_data(Config(data_dir=str(data / family.recipe), n_episodes=cfg.n_episodes))
    return extra


def run_family(family: Family, work: Path) -> FamilyResult:
    """The reference run and the chain of faults side by side; then the comparison."""
    rng = random.Random(f"faults-{family.recipe}")
    work.mkdir(parents=True, exist_ok=True)
    args = [*family.args, *COMMON, *prepare(family, work / "data")]
    ref, run = work / "reference", work / "faulted"
    reference = mmtok(["train", family.recipe, *args, f"run_dir={ref}"], work / "reference.log")
    result = FamilyResult(family.recipe)
    try:
        for i, kind in enumerate(family.faults):
            log = work / f"{i}-{kind}.log"
            if kind == "ckpt_write":
                result.faults.append(ckpt_write(family, run, [*args, f"run_dir={run}"], rng, log))
            elif kind == "sigkill":
                result.faults.append(sigkill(family, run, rng, log))
            elif kind == "read_only" and not read_only_available():
                warnings.warn(f"{family.recipe}: read_only skipped: no private read-only bind mount can be made here (unshare / mount)")
            else:
                result.faults.append(disk_error(family, run, kind, log))
        final = wait(mmtok(["resume", str(run)], work / "final.log"))
        result.finished = final == 0 and wait(reference) == 0
        if result.finished:
            result.differences = differences(ref, run, family)
        else:
            result.differences = [f"final resume rc {final}: {last_line(work / 'final.log')}; reference: {last_line(work / 'reference.log')}"]
    finally:
        if reference.poll() is None:
            reference.kill()
            reference.wait()
    return result


# -- the summary ----------------------------------------------------------------------------------
KINDS = {"sigkill": "SIGKILL mid-training, then resume", "ckpt_write": "SIGKILL inside a checkpoint write",
         "disk_full": "full disk at a checkpoint (RLIMIT_FSIZE)", "read_only": "read-only file system at a checkpoint"}  # fmt: skip


def table(results: list[FamilyResult], bad_inputs: list[dict]) -> tuple[str, int, bool]:
    """(the summary table, lost, everything as documented)."""
    rows = []
    for kind, label in KINDS.items():
        fs = [f for r in results for f in r.faults if f.kind == kind]
        if fs:
            rows.append((label, len(fs), sum(f.injected and f.ok for f in fs), sum(f.lost for f in fs)))
    rows.append(("finished runs equal to uninterrupted ones", len(results), sum(r.finished and not r.differences for r in results),
                 sum(not (r.finished and not r.differences) for r in results)))  # fmt: skip
    if bad_inputs:
        # (no run is killed here: "lost" does not apply; an input handled otherwise than documented counts above)
        rows.append(("bad inputs (benchmarks/hardening.py)", len(bad_inputs), sum(b["as_documented"] for b in bad_inputs), None))
    total = ("total", sum(r[1] for r in rows), sum(r[2] for r in rows), sum(r[3] or 0 for r in rows))
    faults = sum(len(r.faults) for r in results)
    lines = [f"faults injected: {faults} across {len(results)} recipe{'s' * (len(results) != 1)} ({', '.join(r.family for r in results)})"
             + (f"; bad inputs tried: {len(bad_inputs)}" if bad_inputs else ""), "", f"{'':44s} {'tried':>6s} {'as documented':>14s} {'lost':>5s}"]  # fmt: skip
    lines += [f"{label:44s} {n:6d} {ok:14d} {'—' if lost is None else lost:>5}" for label, n, ok, lost in rows + [total]]
    return "\n".join(lines), total[3], total[1] == total[2]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiny", action="store_true", help="gpt_char killed once in a checkpoint write, and the bad-input catalogue less its slow cases")
    p.add_argument("--work", help="keep the runs here (default: a temporary folder)")
    args = p.parse_args(argv)
    import importlib.util

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import hardening

    chosen = families() if not args.tiny else [dataclasses.replace(families()[0], faults=("ckpt_write",))]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        for fam in chosen:
            if fam.needs and importlib.util.find_spec(fam.needs) is None:
                print(f"{fam.recipe}: skipped ({fam.needs} is not installed)")
                continue
            t0 = time.perf_counter()
            r = run_family(fam, work / fam.recipe)
            results.append(r)
            for f in r.faults:
                print(f"{'ok ' if f.injected and f.ok else 'BAD'} {fam.recipe:15s} {f.kind:10s} {f.detail[:110]}{'  ' + f.what if f.what else ''}")
            same = r.finished and not r.differences
            print(f"{'ok ' if same else 'BAD'} {fam.recipe:15s} {'finished':10s} equal to the uninterrupted run bit for bit"
                  f"{'' if same else ': ' + '; '.join(r.differences[:3])} ({time.perf_counter() - t0:.0f} s)")  # fmt: skip
        bad = []
        for i, case in enumerate(hardening.cases()):
            if args.tiny and case.slow:
                continue
            ok, what = hardening.check(case, work / "bad_inputs" / f"case{i}")
            bad.append({"case": case.name, "as_documented": ok, "what": what})
            if not ok:
                print(f"BAD bad input {case.name}: {what}")
    text, lost, documented = table(results, bad)
    print("\n" + text)
    return 1 if lost or not documented else 0


if __name__ == "__main__":
    sys.exit(main())
