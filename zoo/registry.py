"""The model registry and model cards.

Each task registers its builders with :func:`register` in its ``models`` module (see :mod:`zoo.plugin`); a
builder takes keyword options and returns an ``nn.Module`` with random weights. The card holds everything a
user asks about a model before loading it, parameter count included, so that listing models builds none
(and imports no torch).
"""

from __future__ import annotations

import difflib
import importlib
from dataclasses import asdict, dataclass, field
from typing import Callable

from . import plugin
from .errors import ZooError


@dataclass
class Metric:
    """One number with its provenance: ``source`` is ``paper`` or ``reproduced``."""

    dataset: str
    metric: str
    value: float
    source: str = "paper"
    command: str = ""  # for reproduced numbers: the command that measured it
    note: str = ""


@dataclass
class ModelCard:
    name: str
    task: str
    paper: str
    arxiv: str = ""
    code: str = ""  # official code URL
    license: str = ""
    input: str = ""  # human-readable input spec
    input_size: tuple = ()  # one example input shape (batch 1), used by `zoo profile`
    T: int = 1
    D: int = 4
    neuron: str = ""
    classes: tuple = ()  # output class names, in index order (tasks that classify)
    weights: str | None = None  # key in weights/manifest.toml
    # checkpoint format -> "module:function" mapping such a file's state dict to this model's keys; a format
    # not listed here is read as the zoo's own keys (safetensors, a plain state dict)
    converters: dict = field(default_factory=dict)
    builds_weights: bool = False  # the builder reads its own weights (SDLLM: converted from a base model)
    metrics: list[Metric] = field(default_factory=list)
    notes: str = ""
    params: int | None = None  # parameter count (checked against the built model by the tests)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["input_size"] = list(self.input_size)
        d["classes"] = list(self.classes)
        return d


@dataclass
class Entry:
    card: ModelCard
    builder: Callable  # (**options) -> torch.nn.Module


_REGISTRY: dict[str, Entry] = {}
_loaded = False


def register(name: str, **card) -> Callable:
    """Decorator: register ``builder`` under ``name`` (``arch[-size]-dataset``) with its card fields."""

    def deco(builder):
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        if card.get("task") not in plugin.tasks():
            raise ValueError(f"task must be one of {tuple(plugin.tasks())}, got {card.get('task')!r}")
        metrics = [m if isinstance(m, Metric) else Metric(**m) for m in card.pop("metrics", [])]
        _REGISTRY[name] = Entry(ModelCard(name=name, metrics=metrics, **card), builder)
        return builder

    return deco


def _load_tasks() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        for task in plugin.tasks().values():
            importlib.import_module(task.models)


def list_models(task: str | None = None, pretrained: bool | None = None) -> list[str]:
    """Registered model names, optionally only one task's, or only those with (or without) weights."""
    _load_tasks()
    if task is not None:
        plugin.task(task)  # an unknown task is an error
    return sorted(
        n for n, e in _REGISTRY.items()
        if (task is None or e.card.task == task) and (pretrained is None or (e.card.weights is not None) == pretrained)
    )


def get(name: str) -> Entry:
    _load_tasks()
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=3, cutoff=0.4)
        hint = f"did you mean {', '.join(close)}?" if close else "run `zoo list` to see every model"
        raise ZooError(f"unknown model {name!r}: {hint}")
    return _REGISTRY[name]


def count_params(module) -> int:
    return sum(p.numel() for p in module.parameters())


def built_params(name: str) -> int:
    """Parameter count of ``name`` as built (on the meta device: nothing is allocated)."""
    import torch

    with torch.device("meta"):
        return count_params(get(name).builder())


def info(name: str) -> ModelCard:
    """The model card of ``name``, with its parameter count."""
    entry = get(name)
    if entry.card.params is None:  # cards that do not state it (e.g. registered by a user)
        entry.card.params = built_params(name)
    return entry.card
