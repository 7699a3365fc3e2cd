"""Tokenizer registry: `register`, `create`, `list_tokenizers`, plus plugins.

Third-party packages add modalities through the entry-point group `tokenizers_mm.modalities`
(name = registered name, value = "package.module:TokenizerClass"); they are found on the first
lookup, so `pip install` of a plugin is all a user does. Follows timm's `register_model` /
`create_model`.
"""

from __future__ import annotations

from importlib.metadata import entry_points

ENTRY_POINT_GROUP = "tokenizers_mm.modalities"

_REGISTRY: dict[str, type] = {}
_plugins_loaded = False


def register(name: str):
    """Class decorator: make a tokenizer class creatable by `name`."""

    def wrap(cls):
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"tokenizer {name!r} is already registered (by {_REGISTRY[name].__qualname__})")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return wrap


def _load_plugins():
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name not in _REGISTRY:
            register(ep.name)(ep.load())


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
