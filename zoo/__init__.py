"""The spiking model zoo: ``zoo.load("spikeyolo-coco")``.

The names below import their modules on first use, so that ``import zoo`` (and ``zoo --help``,
``zoo list``) stay fast: torch loads only when a model is built, loaded or profiled.
"""

from . import _shadowing  # noqa: F401  (first: the zoo's own top-level packages, not a user's files)
from .errors import OfflineError, WeightsError, ZooError
from .registry import Metric, ModelCard, info, list_models, register

_LAZY = {"load": "api", "profile": "profiling", "Profile": "profiling", "cache_dir": "hub"}

__all__ = ["load", "list_models", "info", "register", "profile", "Profile", "ModelCard", "Metric", "cache_dir",
           "ZooError", "WeightsError", "OfflineError"]


def __getattr__(name):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'zoo' has no attribute {name!r}")
