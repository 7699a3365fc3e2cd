"""The example plugin package (examples/modality_plugin): installed with pip (into a folder of its own
on the path, so the environment running the tests is left as it was), found through its entry points,
listed by `mmtok tokenizers`, trained by `mmtok train` with no change to the toolkit."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from tests.conftest import ROOT, subprocess_env

PLUGIN = ROOT / "examples" / "modality_plugin"
SITE = None  # where the fixture installed the plugin: on the subprocesses' path


def run(*args, **kw):
    env = subprocess_env()
    if SITE is not None:
        env["PYTHONPATH"] = str(SITE) + os.pathsep + env["PYTHONPATH"]
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=600, env=env, **kw)


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    global SITE
    site, source = tmp_path_factory.mktemp("site"), tmp_path_factory.mktemp("plugin") / "src"
    shutil.copytree(PLUGIN, source, ignore=shutil.ignore_patterns("build", "*.egg-info"))  # (the build's files land beside the source)
    pip = run("-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index", "-q", "--target", str(site), str(source))
    if pip.returncode != 0:
        pytest.fail(f"pip install of the plugin failed: {pip.stderr[-2000:]}")
    SITE = site
    yield
    SITE = None


def test_plugin_is_found_and_trains(installed, tmp_path):
    listed = run("-m", "recipes.cli", "tokenizers", cwd=tmp_path)
    assert listed.returncode == 0 and "sensor" in listed.stdout, listed.stderr
    recipes = run("-m", "recipes.cli", "recipes", cwd=tmp_path)
    assert "sensor_activity" in recipes.stdout
    out = run("-m", "recipes.cli", "train", "sensor_activity", f"run_dir={tmp_path / 'run'}", "max_steps=60", "eval_every=60", "warmup_steps=5",
              "ckpt_every=60", "n_train=300", "n_test=100", "placement=true", "cpu=true", cwd=tmp_path)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["val_accuracy"] > 0.5  # 5 classes: well above chance (0.2) after 60 steps
    tok = json.loads((tmp_path / "run" / "tokenizers" / "sensor" / "tokenizer.json").read_text())
    assert tok["name"] == "sensor" and len(tok["config"]["mean"]) == 3
    ev = run("-m", "recipes.cli", "eval", str(tmp_path / "run"), cwd=tmp_path)
    assert ev.returncode == 0 and json.loads(ev.stdout)["val_accuracy"] == pytest.approx(results["val_accuracy"])
    bad = run("-m", "recipes.cli", "train", "sensor_activity", f"run_dir={tmp_path / 'bad'}", "patch=7", cwd=tmp_path)
    assert bad.returncode == 2 and not (tmp_path / "bad").exists()  # the plugin's own config check, before a run directory is made
    assert bad.stderr.strip().splitlines()[-1] == ("mmtok: error: patch=7: a token is patch samples of a 128-sample window; expected a "
                                                   "divisor of 128 (1, 2, 4, 8, 16, 32, 64, 128)")  # fmt: skip
