import pytest

from recipes.config import ConfigError, apply_values, parse_overrides, read_yaml
from recipes.gpt_char import Config
from recipes.runs import make_config


def test_overrides_are_type_checked():
    cfg = apply_values(Config(), parse_overrides(["max_steps=5", "lr=3e-4", "bias=true", "data=x.txt", "lr_decay_steps=1_000"]), "cli")
    assert (cfg.max_steps, cfg.lr, cfg.bias, cfg.data, cfg.lr_decay_steps) == (5, 3e-4, True, "x.txt", 1000)
    with pytest.raises(ConfigError, match="'max_steps' expects int, got 'ten'"):
        apply_values(Config(), {"max_steps": "ten"}, "cli")
    with pytest.raises(ConfigError, match="'bias' expects bool"):
        apply_values(Config(), {"bias": "maybe"}, "cli")
    with pytest.raises(ConfigError, match="expects int, got 2.5 in mine.yaml$"):  # where the value came from
        apply_values(Config(), {"depth": 2.5}, "mine.yaml")
    for raw in ([1, 2], None, {"a": 1}):  # YAML's other shapes: int() or float() of them raised a bare TypeError
        with pytest.raises(ConfigError, match=r"'max_steps' expects int, got "):
            apply_values(Config(), {"max_steps": raw}, "yaml")
    with pytest.raises(ConfigError, match="'lr' expects float, got None"):
        apply_values(Config(), {"lr": None}, "yaml")
    from recipes.dt_offline import Config as OfflineConfig

    with pytest.raises(ConfigError, match=r"'targets' expects str, got \[100, 200\] \(a list: .* targets: 100,200\) in run.yaml$"):
        apply_values(OfflineConfig(), {"targets": [100, 200]}, "run.yaml")  # YAML's list, where the key takes a comma-separated string


def test_unknown_key_lists_valid_keys():
    with pytest.raises(ConfigError, match="unknown config key 'lrate'.*valid keys: run_dir, seed, max_steps"):
        apply_values(Config(), {"lrate": "1"}, "cli")
    from recipes.dt_offline import Config as OfflineConfig  # builds on dt_cartpole's config: keys it does not use are not offered

    with pytest.raises(ConfigError, match="unknown config key 'contxt'") as refused:
        apply_values(OfflineConfig(), {"contxt": "5"}, "cli")
    listed = str(refused.value).split("valid keys: ")[1].split(", ")
    assert "context" in listed and OfflineConfig.NOT_USED and not set(OfflineConfig.NOT_USED) & set(listed)
    with pytest.raises(ConfigError, match="not of the form key=value"):
        parse_overrides(["max_steps"])
    assert parse_overrides(["lr=1e-3", "max_steps=5", "lr=3e-4"]) == {"lr": "3e-4", "max_steps": "5"}  # the last wins, as nanoGPT's
    with pytest.raises(ConfigError, match="unknown config key 'AT_LEAST'"):  # the class's tables are no keys
        apply_values(Config(), {"AT_LEAST": "1"}, "cli")
    for given, meant in (("max_step", "max_steps"), ("n_layer", "depth"), ("learning_rate", "lr")):  # a typo; nanoGPT's and HF's names
        with pytest.raises(ConfigError, match=rf"unknown config key '{given}' in cli \(did you mean {meant}\?\); valid keys: run_dir"):
            apply_values(Config(), {given: "1"}, "cli")


def test_a_home_path_in_a_config_file_is_expanded(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "corpus.txt").write_text("hello world " * 100)
    (tmp_path / "mine.yaml").write_text("recipe: gpt_char\ndata: ~/corpus.txt\nrun_dir: ~/runs/one\n")  # (no shell expands ~ here)
    cfg = make_config(str(tmp_path / "mine.yaml"), [])[2]
    assert (cfg.data, cfg.run_dir) == (str(tmp_path / "corpus.txt"), str(tmp_path / "runs" / "one"))


def test_named_and_file_configs(tmp_path, monkeypatch):
    (tmp_path / "input.txt").write_text("hello world " * 100)
    name, _, cfg = make_config("gpt_char_shakespeare", ["max_steps=7", f"data={tmp_path / 'input.txt'}"])
    assert name == "gpt_char" and cfg.depth == 4 and cfg.dim == 128 and cfg.max_steps == 7
    monkeypatch.chdir(tmp_path)  # the named config's data, ../shared/data/..., is a checkout's: elsewhere it is named
    with pytest.raises(ConfigError, match=r"^data=../shared/data/tinyshakespeare.txt, set in \S+gpt_char_shakespeare.yaml, does not exist here: "
                                          r"give data=PATH on the command line$"):  # fmt: skip
        make_config("gpt_char_shakespeare", [])
    with pytest.raises(ConfigError, match=r"^input.txt is neither a recipe nor a config file \(config file input.txt must be a mapping with a "
                                          r"'recipe:' name\); to train on it, give a recipe and data=, as in `mmtok train gpt_char data=input.txt`"):  # fmt: skip
        make_config("input.txt", [])
    (tmp_path / "c.json").write_text('{"recipe": "gpt_char", "dim": 48}')  # JSON is YAML: a config of any name is read
    assert make_config("c.json", [])[2].dim == 48
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "run.json").write_text('{"recipe": "gpt_char", "config": {}}')
    for given in ("run", "run/run.json"):
        with pytest.raises(ConfigError, match=r"^run is a run directory: `mmtok resume run` continues it"):
            make_config(given, [])
    (tmp_path / "big.txt").write_text("x" * (2 << 20))  # a corpus given as the config: refused by its size, unread
    with pytest.raises(ConfigError, match=r"^big.txt is neither a recipe nor a config file \(2,097,152 bytes\); to train on it"):
        make_config("big.txt", [])
    with pytest.raises(ConfigError, match=r"^config file missing.json does not exist"):
        make_config("missing.json", [])
    path = tmp_path / "mine.yaml"
    path.write_text("recipe: gpt_char\ndim: 64\n")
    assert make_config(str(path), [])[2].dim == 64
    with pytest.raises(ConfigError, match="unknown recipe 'nope'"):
        make_config("nope", [])
    path.write_text(f"recipe: gpt_char_shakespeare\ndata: {tmp_path / 'input.txt'}\nmax_steps: 9\n")  # a named config built on
    name, _, cfg = make_config(str(path), [])  # (was "unknown recipe 'gpt_char_shakespeare'; ... named configs: gpt_char_shakespeare")
    assert name == "gpt_char" and (cfg.depth, cfg.dim, cfg.max_steps, cfg.data) == (4, 128, 9, str(tmp_path / "input.txt"))
    path.write_text("recipe: gpt_char_shakespeare\nmax_steps: 9\n")  # the named config's data, not found from here: its file named
    with pytest.raises(ConfigError, match=r"^data=../shared/data/tinyshakespeare.txt, set in \S+gpt_char_shakespeare.yaml, does not exist"):
        make_config(str(path), [])
    with pytest.raises(ConfigError, match=r"^an empty recipe name; expected a recipe"):  # (was ". is neither a recipe nor ...")
        make_config("", [])
    path.write_text("recipe: gpt_char\ndim: 64\nlr: 1e-3\ndim: 32\n")  # PyYAML keeps the last of a key given twice
    with pytest.raises(ConfigError, match=r"mine.yaml is not valid YAML: key 'dim' is given twice \(line 4, column 1\)$"):
        make_config(str(path), [])
    path.write_bytes(b"recipe: gpt_char\n# caf\xe9\n")
    with pytest.raises(ConfigError, match=r"^config file \S+mine.yaml is not UTF-8 \(invalid byte 0xe9 at offset 22\)$"):
        make_config(str(path), [])
    with pytest.raises(ConfigError, match=r"is a folder; expected a UTF-8 text file"):
        read_yaml(tmp_path)


def test_yaml_cannot_name_python_objects(tmp_path):
    path = tmp_path / "evil.yaml"
    path.write_text("recipe: gpt_char\ndata: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        read_yaml(path)
