"""Untrusted files: no code path can unpickle, eval or load YAML objects; a crafted pickle offered
as a checkpoint or a config naming a Python object is refused and never runs."""

import ast
import io
import pickle
import re
import zipfile
from pathlib import Path

import pytest

from tests.conftest import ROOT

PACKAGES = ("tokenizers_mm", "models", "recipes", "benchmarks")


def calls(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
            owner = f.value.id if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) else ""
            yield node, owner, name


def test_no_code_path_unpickles_evals_or_loads_yaml_objects():
    found = []
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            for node in ast.walk(tree):
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) and node.module else [])
                    if any(n.split(".")[0] in ("pickle", "cPickle", "dill", "cloudpickle", "marshal", "shelve") for n in names):
                        found.append(f"{path}:{node.lineno} imports {names}")
            for node, owner, name in calls(tree):
                where = f"{path.relative_to(ROOT)}:{node.lineno}"
                if name in ("eval", "exec") and (isinstance(node.func, ast.Name) or owner == "builtins"):
                    found.append(f"{where} calls {name}")
                if owner == "torch" and name == "load":
                    safe = any(k.arg == "weights_only" and getattr(k.value, "value", None) is True for k in node.keywords)
                    if not safe:
                        found.append(f"{where} torch.load without weights_only=True")
                if owner == "yaml" and name in ("load", "unsafe_load", "full_load", "load_all"):
                    found.append(f"{where} yaml.{name} (use yaml.safe_load)")
                if owner in ("np", "numpy") and name == "load":
                    if not any(k.arg == "allow_pickle" and getattr(k.value, "value", None) is False for k in node.keywords):
                        found.append(f"{where} np.load without allow_pickle=False")
    assert not found, "\n".join(found)


class Boom:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_offered_as_a_checkpoint_is_refused_without_running(tmp_path):
    from models import MultimodalTransformer, UnsafeCheckpointError, load_openai_whisper, load_torch_file
    from recipes.checkpoint import verify

    marker = tmp_path / "pwned"
    payload = pickle.dumps({"dims": Boom(marker), "model_state_dict": {}}, protocol=2)
    # 1. as a torch.save zip (openai-whisper's format)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("archive/data.pkl", payload)
        zf.writestr("archive/version", "3\n")
    (tmp_path / "tiny.pt").write_bytes(buf.getvalue())
    with pytest.raises(UnsafeCheckpointError, match="system"):
        load_openai_whisper(tmp_path / "tiny.pt")
    with pytest.raises(UnsafeCheckpointError):
        load_torch_file(tmp_path / "tiny.pt")
    # 2. as a raw pickle in place of a real model's weights, its manifest rewritten to match: the
    # manifest (integrity, not trust) lets it through; the weights loader reads safetensors only
    from models import HeadConfig, ModalityConfig, ModelConfig, TrunkConfig
    from recipes.checkpoint import write_manifest
    from tokenizers_mm import ModalitySpec

    text = ModalityConfig.from_spec(ModalitySpec("text", ("token",), 16, vocab_size=32))
    ckpt = MultimodalTransformer(ModelConfig(TrunkConfig(dim=16, depth=1, num_heads=2), {"text": text}, {"lm": HeadConfig("lm", "text")},
                                             decoder_inputs=["text"])).save(tmp_path / "ckpt")  # fmt: skip
    (ckpt / "model.safetensors").write_bytes(payload)
    write_manifest(ckpt)
    verify(ckpt)  # the files are what the manifest says
    with pytest.raises(ValueError, match=r"model\.safetensors is corrupt or truncated"):
        MultimodalTransformer.load(ckpt)  # the config is read, the pickle refused as safetensors
    assert not marker.exists()


def test_configs_cannot_name_python_objects(tmp_path):
    from recipes.config import ConfigError
    from recipes.runs import make_config

    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.yaml"
    evil.write_text(f"recipe: gpt_char\nmax_steps: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        make_config(str(evil), [])
    with pytest.raises(ConfigError, match="unknown config key 'model'"):
        make_config("gpt_char", ["model=os.system"])  # unknown key: listed, not resolved
    with pytest.raises(ConfigError, match="config key 'max_steps' expects int"):
        make_config("gpt_char", ["max_steps=__import__('os').system('x')"])  # a string where an int belongs
    assert not marker.exists()
    runs = Path(ROOT / "recipes" / "runs.py").read_text()
    assert runs.count("importlib.import_module(") == 1 and "importlib.import_module(recipes[name])" in runs  # a fixed table + installed entry points


def test_crafted_files_are_refused_in_one_line_without_running_long(tmp_path):
    """An OrderedDict built by REDUCE from pairs has its keys checked (colliding integers made
    filling it quadratic; a deep tuple key crashed hashing); a YAML alias bomb in a refused value is
    not expanded into the message; a CSV field over csv's limit, a JSON line nested too deep and a
    tokenizer.json naming its class with a list are one-line errors naming the file."""
    from models import load_torch_file
    from recipes.config import ConfigError, read_yaml
    from recipes.folders import read_metadata
    from tokenizers_mm import load_tokenizer

    keys = b"".join(b"\x8a\x08" + ((1 << 61) - 1).to_bytes(8, "little") + b"K\x00\x86" for _ in range(3))  # LONG1 (2**61 - 1) keys
    payload = b"\x80\x02ccollections\nOrderedDict\n(" + keys + b"l\x85R."  # OrderedDict([(k, 0), ...]) by REDUCE
    with zipfile.ZipFile(tmp_path / "keys.pt", "w") as zf:
        zf.writestr("archive/data.pkl", payload)
    with pytest.raises(ValueError, match="a dict key of type int out of range"):
        load_torch_file(tmp_path / "keys.pt")
    levels = ["&a0 [x, x, x, x, x, x, x, x, x]"] + [f"&a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]
    (tmp_path / "bomb.yaml").write_text("recipe: gpt_char\ndata: [" + ", ".join(levels) + "]\n")  # 9**9 leaves, once expanded
    from recipes.runs import make_config

    with pytest.raises(ConfigError, match=r"config key 'data' expects str, got \[\['x', 'x', 'x', 'x', 'x', 'x', \.\.\.\], "):
        make_config(str(tmp_path / "bomb.yaml"), [])
    assert read_yaml(tmp_path / "bomb.yaml")["recipe"] == "gpt_char"
    (tmp_path / "metadata.csv").write_text('file_name,label\na.png,"' + "x" * 200_000 + '"\n')
    with pytest.raises(ValueError, match=r"metadata.csv, line \d+: not readable as CSV \(field larger than field limit"):
        read_metadata(tmp_path / "metadata.csv", "label")
    (tmp_path / "metadata.jsonl").write_text('{"file_name": "a.png", "label": ' + "[" * 100_000 + "]" * 100_000 + "}\n")
    with pytest.raises(ValueError, match=r"metadata.jsonl, line 1: JSON nested too deep to read"):
        read_metadata(tmp_path / "metadata.jsonl", "label")
    (tmp_path / "tok").mkdir()
    (tmp_path / "tok" / "tokenizer.json").write_text('{"format": "tokenizers-mm/tokenizer", "version": 1, "name": ["text"], "config": {}}')
    with pytest.raises(ValueError, match=r"tokenizer: \S+tokenizer.json names its tokenizer with a list; expected a registered name"):
        load_tokenizer(tmp_path / "tok")


def test_a_config_json_with_sizes_no_model_has_is_refused_in_one_line(tmp_path):
    """A model directory's config.json is read before any weight: sizes of zero, below zero or not
    whole (num_heads=0 divided by zero; a negative vocabulary was a torch error) are named."""
    import json

    from models import HeadConfig, ModalityConfig, ModelConfig, MultimodalTransformer, TrunkConfig
    from tokenizers_mm import ModalitySpec

    text = ModalityConfig.from_spec(ModalitySpec("text", ("token",), 16, vocab_size=32))
    folder = MultimodalTransformer(ModelConfig(TrunkConfig(dim=16, depth=1, num_heads=2), {"text": text}, {"lm": HeadConfig("lm", "text")},
                                               decoder_inputs=["text"])).save(tmp_path / "m")  # fmt: skip
    doc = json.loads((folder / "config.json").read_text())
    for where, key, value, message in (("trunk", "num_heads", 0, "trunk num_heads=0 must be a whole number of at least 1"),
                                       ("trunk", "mlp_ratio", -1, "trunk mlp_ratio=-1 must be a positive number"),
                                       ("text", "vocab_size", -1, "modality 'text' vocab_size=-1 must be a whole number of at least 1"),
                                       ("text", "max_positions", 1e3, "modality 'text' max_positions=1000.0 must be a whole number")):  # fmt: skip
        bad = json.loads(json.dumps(doc))
        (bad["config"]["trunk"] if where == "trunk" else bad["config"]["modalities"][where])[key] = value
        (folder / "config.json").write_text(json.dumps(bad))
        with pytest.raises(ValueError, match=f"holds a bad config: {re.escape(message)}"):
            MultimodalTransformer.load(folder)


def test_a_config_json_larger_than_its_weights_is_refused_before_allocating(tmp_path):
    """Sizes a model can have but its model.safetensors does not hold (400000 blocks, a 10**9-token
    vocabulary) are refused from the file's header, naming the tensors, before anything is built."""
    import json

    from models import HeadConfig, ModalityConfig, ModelConfig, MultimodalTransformer, TrunkConfig
    from tokenizers_mm import ModalitySpec

    text = ModalityConfig.from_spec(ModalitySpec("text", ("token",), 16, vocab_size=32))
    folder = MultimodalTransformer(ModelConfig(TrunkConfig(dim=16, depth=1, num_heads=2), {"text": text}, {"lm": HeadConfig("lm", "text")},
                                               decoder_inputs=["text"])).save(tmp_path / "m")  # fmt: skip
    doc = json.loads((folder / "config.json").read_text())
    for where, key, value, message in (("trunk", "depth", 400000, "asks for 400000 decoder blocks; .* holds 1"),
                                       ("text", "vocab_size", 10**9, r"embedders\.text\.tok\.weight \[1000000000, 16\] \(the file: \[32, 16\]\)"),
                                       ("trunk", "dim", 2**20, r"\[32, 1048576\] \(the file: \[32, 16\]\)")):  # fmt: skip
        bad = json.loads(json.dumps(doc))
        (bad["config"]["trunk"] if where == "trunk" else bad["config"]["modalities"][where])[key] = value
        (folder / "config.json").write_text(json.dumps(bad))
        with pytest.raises(ValueError, match=f"config.json does not match .*model.safetensors: .*{message}|config.json {message}"):
            MultimodalTransformer.load(folder)
