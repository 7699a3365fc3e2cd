"""Registry and plugins: a real distribution on sys.path declares an entry point."""

import json
import sys
import textwrap

import pytest

from tests.conftest import install_entry_points
from tokenizers_mm import registry
from tokenizers_mm.base import Tokenizer, load_tokenizer


def test_duplicate_name_refused():
    @registry.register("dup_test_tok")
    class A(Tokenizer):
        pass

    with pytest.raises(ValueError, match="already registered"):

        @registry.register("dup_test_tok")
        class B(Tokenizer):
            pass

    registry._REGISTRY.pop("dup_test_tok")
    defined = []
    for _ in range(2):  # the same class defined again (a notebook cell run twice): it replaces the first

        @registry.register("dup_test_tok")
        class C(Tokenizer):
            pass

        defined.append(C)
    assert registry.get("dup_test_tok") is defined[1] is not defined[0]
    assert registry.name_of(defined[0]) == "dup_test_tok"  # an instance made before the cell ran again still saves
    registry._REGISTRY.pop("dup_test_tok")


def test_register_refuses_what_is_not_a_name_or_a_tokenizer_class():
    """A bare @register, a name that is not a non-empty string, or a class that is not a Tokenizer:
    one line at the decorator (a bare @register turned the class into a function; an int name broke
    every later lookup's sorted listing)."""
    with pytest.raises(TypeError, match=r'C given as the name; decorate with @register\("name"\), not a bare @register'):

        @registry.register
        class C(Tokenizer):
            pass

    for name in (3, "", " "):
        with pytest.raises(ValueError, match="a tokenizer's name must be a non-empty string"):
            registry.register(name)
    with pytest.raises(TypeError, match=r"register\('x'\): dict is not a Tokenizer subclass"):
        registry.register("x")(dict)
    assert "x" not in registry.list_tokenizers()


def test_entry_point_plugin_is_found(tmp_path, monkeypatch):
    (tmp_path / "toy_plugin.py").write_text(
        textwrap.dedent(
            '''
            import torch
            from tokenizers_mm import Tokenizer, TokenSet

            class ToyTokenizer(Tokenizer):
                """Toy plugin: a float sequence, one token per value."""
                modality = "toy"
                token_types = ("value",)
                value_dim = 1
                max_positions = 16

                def __init__(self, scale=1.0):
                    self.scale = scale

                def config(self):
                    return {"scale": self.scale}

                def encode(self, sample):
                    return TokenSet("toy", values=torch.as_tensor(sample, dtype=torch.float32)[:, None] * self.scale)
            '''
        )
    )
    install_entry_points(tmp_path, "toy-plugin", f"[{registry.ENTRY_POINT_GROUP}]\ntoy = toy_plugin:ToyTokenizer\n"
                         "broken = no_such_module_here:Nope\n"  # a half-installed plugin beside it
                         "text_char = toy_plugin:ToyTokenizer\n", monkeypatch)  # a name a built-in holds
    monkeypatch.setattr(registry, "_plugins_loaded", False)
    try:
        from toy_plugin import ToyTokenizer  # imported directly, saved before any lookup: its entry point names it

        with pytest.warns(UserWarning) as warned:
            ToyTokenizer(scale=3.0).save(tmp_path / "direct")
        said = [str(w.message) for w in warned]
        assert any("plugin tokenizer 'broken' (no_such_module_here:Nope) failed to load, skipped: ModuleNotFoundError" in m for m in said), said
        assert any("plugin tokenizer 'text_char' (toy_plugin:ToyTokenizer) not loaded: the name is registered by "
                   "tokenizers_mm.text_char.CharTokenizer" in m for m in said), said  # fmt: skip
        assert registry.get("text_char").__name__ == "CharTokenizer"
        assert load_tokenizer(tmp_path / "direct").scale == 3.0
        assert "toy" in registry.list_tokenizers() and "text_char" in registry.list_tokenizers()  # the broken one stops nothing
        tok = registry.create("toy", scale=2.0)
        ts = tok.encode([1.0, 2.0])
        assert ts.values[:, 0].tolist() == [2.0, 4.0] and ts.validate(tok.spec)
        tok.save(tmp_path / "saved")
        assert load_tokenizer(tmp_path / "saved").scale == 2.0
    finally:
        registry._REGISTRY.pop("toy", None)
        sys.modules.pop("toy_plugin", None)


def test_an_unregistered_subclass_is_not_saved_under_its_parents_name(tmp_path):
    """A subclass inherits its parent's registered name; saved under it, it would load back as the
    parent (without what the subclass changes): refused, naming the class and the fix."""
    from tokenizers_mm import CharTokenizer

    class LowerChar(CharTokenizer):
        def encode(self, text, name="text"):
            return super().encode(text.lower(), name)

    with pytest.raises(ValueError, match=r"LowerChar is not a registered tokenizer: decorate it with @register"):
        LowerChar(chars="abc").save(tmp_path / "lower")
    assert not (tmp_path / "lower" / "tokenizer.json").exists()
    assert type(load_tokenizer(CharTokenizer(chars="abc").save(tmp_path / "plain"))) is CharTokenizer


def test_a_recipe_plugin_that_fails_to_import_is_named_and_the_others_stay_usable(tmp_path, monkeypatch, capsys):
    from recipes.cli import main
    from recipes.runs import RECIPE_ENTRY_POINTS

    install_entry_points(tmp_path, "broken-recipes", f"[{RECIPE_ENTRY_POINTS}]\nbroken_recipe = no_such_pkg.recipe\ngpt_char = my_pkg.gpt_char\n"
                         "not_a_recipe = json\nan_object = json:JSONDecoder\n[tokenizers_mm.modalities]\nnot_a_class = json\n", monkeypatch)  # fmt: skip
    from recipes.runs import all_recipes

    with pytest.warns(UserWarning, match=r"plugin recipe 'gpt_char' \(my_pkg.gpt_char\) not used: gpt_char is a built-in recipe"):
        assert all_recipes()["gpt_char"] == "recipes.gpt_char"  # a built-in is never replaced, and the plugin's is named
    message = (f"recipe 'broken_recipe' (entry point {RECIPE_ENTRY_POINTS}: broken_recipe = no_such_pkg.recipe) fails to import: "
               "ModuleNotFoundError: No module named 'no_such_pkg'")  # fmt: skip
    assert main(["recipes"]) == 0
    listed = capsys.readouterr()
    assert "gpt_char" in listed.out and "broken_recipe    (not usable: see the warning)" in listed.out and message in listed.err
    assert main(["train", "broken_recipe", f"run_dir={tmp_path / 'run'}"]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and not (tmp_path / "run").exists()
    for name, says in (("not_a_recipe", "the module has no Config and no main; a recipe module defines a Config dataclass"),
                       ("an_object", "a recipe's entry point names its module (package.recipe), not an object in it")):  # fmt: skip
        assert main(["train", name, f"run_dir={tmp_path / 'run'}"]) == 2
        assert says in capsys.readouterr().err
    from tokenizers_mm import registry

    monkeypatch.setattr(registry, "_plugins_loaded", False)  # a tokenizer entry point naming a module: skipped with a warning
    with pytest.warns(UserWarning, match=r"plugin tokenizer 'not_a_class' \(json\) skipped: it names a module, not a Tokenizer class"):
        assert "not_a_class" not in registry.list_tokenizers() and "text" in registry.list_tokenizers()


def test_a_plugin_class_reexported_by_its_package_is_recognised(tmp_path, monkeypatch, recwarn):
    """The entry point names the class where the package re-exports it (pkg:Cls, defined in
    pkg/tok.py); imported directly first, it is the registered class itself: no warning."""
    pkg = tmp_path / "reexported"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("from .tok import Wave\n")
    (pkg / "tok.py").write_text(textwrap.dedent('''
        import torch
        from tokenizers_mm import Tokenizer, TokenSet, register

        @register("wave_reexported")
        class Wave(Tokenizer):
            modality = "wave"
            token_types = ("value",)
            value_dim, max_positions = 1, 8

            def config(self):
                return {}

            def encode(self, sample):
                return TokenSet("wave", values=torch.as_tensor(sample, dtype=torch.float32)[:, None])
    '''))
    install_entry_points(tmp_path, "reexported", f"[{registry.ENTRY_POINT_GROUP}]\nwave_reexported = reexported:Wave\n", monkeypatch)
    monkeypatch.setattr(registry, "_plugins_loaded", False)
    try:
        from reexported import Wave

        assert "wave_reexported" in registry.list_tokenizers()  # the plugins load: its entry point finds the class already held
        Wave().save(tmp_path / "saved")
        assert not [w for w in recwarn if "wave_reexported" in str(w.message)], [str(w.message) for w in recwarn]
        assert type(load_tokenizer(tmp_path / "saved")) is Wave
    finally:
        registry._REGISTRY.pop("wave_reexported", None)
        for name in ("reexported", "reexported.tok"):
            sys.modules.pop(name, None)


def test_eval_of_a_plugin_recipe_without_evaluate_and_of_a_run_without_a_checkpoint_say_so(tmp_path, monkeypatch, capsys):
    """A plugin recipe may define no evaluate(): `mmtok eval` of its run is refused in one line (it was an
    AttributeError); a run stopped before its first checkpoint is named as such, with the resume that trains it."""
    from recipes.cli import main
    from recipes.runs import RECIPE_ENTRY_POINTS

    (tmp_path / "noeval_recipe.py").write_text("from recipes.gpt_char import Config, main\n")  # (a recipe with no evaluate)
    install_entry_points(tmp_path, "noeval", f"[{RECIPE_ENTRY_POINTS}]\nnoeval = noeval_recipe\n", monkeypatch)
    for recipe, says in (("noeval", "recipe 'noeval' defines no evaluate(run_dir, device=None): mmtok eval cannot score its runs"),
                         ("gpt_char", "no checkpoint in {run}/checkpoints yet: the run is before its first, or was stopped there (then `mmtok resume {run}` trains it)")):  # fmt: skip
        run = tmp_path / recipe
        run.mkdir()
        (run / "run.json").write_text(json.dumps({"recipe": recipe, "format": 2, "config": {"run_dir": str(run)}}))
        assert main(["eval", str(run)]) == 2
        err = capsys.readouterr().err
        assert says.format(run=run) in err and "Traceback" not in err, err
