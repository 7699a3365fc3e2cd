"""Tokenizer registry: `register`, `create`, `list_tokenizers`, plus plugins.

Third-party packages add modalities through the entry-point group `tokenizers_mm.modalities`
(name = registered name, value = "package.module:TokenizerClass"); they are found on the first
lookup, so `pip install` of a plugin is all a user does. Follows timm's `register_model` /
`create_model`.
"""

from __future__ import annotations

import sys
import warnings
from contextlib import suppress
from importlib.metadata import entry_points

ENTRY_POINT_GROUP = "tokenizers_mm.modalities"

_REGISTRY: dict[str, type] = {}
_plugins_loaded = False


def _same_class(a: type, b: type) -> bool:
    """`a` is `b`, or a redefinition of it (a notebook cell run again, a module reloaded)."""
    return a is b or (a.__module__, a.__qualname__) == (b.__module__, b.__qualname__)


def register(name: str):
    """Class decorator: make a tokenizer class creatable by `name`: `@register("timeseries")`."""
    if callable(name):  # (a class: a bare @register)
        raise TypeError(f"register: {getattr(name, '__qualname__', name)} given as the name; decorate with @register(\"name\"), "
                        "not a bare @register")  # fmt: skip
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"register: a tokenizer's name must be a non-empty string, got {name!r}")

    def wrap(cls):
        from .base import Tokenizer  # (here: base imports this module)

        if not (isinstance(cls, type) and issubclass(cls, Tokenizer)):
            raise TypeError(f"register({name!r}): {getattr(cls, '__qualname__', cls)!s} is not a Tokenizer subclass")
        old = _REGISTRY.get(name)
        if old is not None and not _same_class(old, cls):  # (a redefinition replaces the class it redefines)
            raise ValueError(f"tokenizer {name!r} is already registered (by {_REGISTRY[name].__qualname__})")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return wrap


def _load_plugins():
    """Register every installed plugin once; one that fails to import is skipped with a warning naming
    it (the others, and the built-in tokenizers, stay usable)."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in _REGISTRY:  # the plugin's class itself (imported directly), or another class that took its name
            held = _REGISTRY[ep.name]
            same = False  # (a plugin not imported yet cannot have registered the class: it is not imported to find out)
            if ep.module in sys.modules:  # imported: its class may be the one held, re-exported where the entry point names it
                with suppress(Exception):
                    same = ep.load() is held
            if not same:
                warnings.warn(f"tokenizers_mm: plugin tokenizer {ep.name!r} ({ep.value}) not loaded: the name is registered by "
                              f"{held.__module__}.{held.__qualname__}; a run saved with the plugin's would not load", stacklevel=2)  # fmt: skip
            continue
        try:
            cls = ep.load()
        except Exception as e:  # noqa: BLE001  # a broken or half-installed package: ImportError, AttributeError, its own errors
            warnings.warn(f"tokenizers_mm: plugin tokenizer {ep.name!r} ({ep.value}) failed to load, skipped: "
                          f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0]}", stacklevel=2)  # fmt: skip
            continue
        from .base import Tokenizer

        if not (isinstance(cls, type) and issubclass(cls, Tokenizer)):  # (a module, a function: `package.module`, not `package.module:Class`)
            warnings.warn(f"tokenizers_mm: plugin tokenizer {ep.name!r} ({ep.value}) skipped: it names a {type(cls).__name__}, not a "
                          "Tokenizer class (the entry point's value is package.module:TokenizerClass)", stacklevel=2)  # fmt: skip
            continue
        register(ep.name)(cls)


def name_of(cls: type) -> str:
    """The name `cls` is registered under (what a saved tokenizer records, and loads back by), or an
    error: a class that is not registered itself (a subclass inherits its parent's name) would load
    back as another class."""
    def registered():  # (the class's own name first: one registered under two names saves under the name it answers to)
        own = cls.__dict__.get("name")
        if isinstance(own, str) and own in _REGISTRY and _same_class(_REGISTRY[own], cls):
            return own
        return next((name for name, c in _REGISTRY.items() if _same_class(c, cls)), None)

    found = registered()
    if found is None:
        _load_plugins()  # a plugin class imported directly is registered by its entry point
        found = registered()
    if found is not None:
        return found
    raise ValueError(f"{cls.__qualname__} is not a registered tokenizer: decorate it with @register(\"name\") (or declare its "
                     f"entry point) so that a saved one loads back as {cls.__qualname__}")  # fmt: skip


def get(name: str) -> type:
    if name not in _REGISTRY:
        _load_plugins()
    if name not in _REGISTRY:
        raise KeyError(f"unknown tokenizer {name!r}; registered: {', '.join(list_tokenizers())}")
    return _REGISTRY[name]


def create(name: str, **kwargs):
    """Build a registered tokenizer: `create("text_char", chars="abc")`."""
    return get(name)(**kwargs)


def list_tokenizers() -> list[str]:
    _load_plugins()
    return sorted(_REGISTRY)
