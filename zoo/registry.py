"""The model registry and model cards.

Each task registers its builders with :func:`register`; a builder takes
keyword options and returns an ``nn.Module`` with random weights. The card
holds everything a user asks about a model before loading it.
"""

from __future__ import annotations

import difflib
import importlib
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch

from .errors import ZooError

TASKS = ("detection", "segmentation", "pointcloud", "language")


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
    converter: str = ""  # "module:function" mapping an official state dict to this model's keys
    builds_weights: bool = False  # the builder reads its own weights (SDLLM: converted from a base model)
    metrics: list[Metric] = field(default_factory=list)
    notes: str = ""
    params: int | None = None  # filled from the built model

    def to_dict(self) -> dict:
        d = asdict(self)
        d["input_size"] = list(self.input_size)
        d["classes"] = list(self.classes)
        return d


@dataclass
class Entry:
    card: ModelCard
    builder: Callable[..., torch.nn.Module]


_REGISTRY: dict[str, Entry] = {}
_loaded = False


def register(name: str, **card) -> Callable:
    """Decorator: register ``builder`` under ``name`` (``arch[-size]-dataset``) with its card fields."""

    def deco(builder):
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        if card.get("task") not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {card.get('task')!r}")
        metrics = [m if isinstance(m, Metric) else Metric(**m) for m in card.pop("metrics", [])]
        _REGISTRY[name] = Entry(ModelCard(name=name, metrics=metrics, **card), builder)
        return builder

    return deco


def _load_tasks() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        for task in TASKS:
            importlib.import_module(f"tasks.{task}")


def list_models(task: str | None = None, pretrained: bool | None = None) -> list[str]:
    """Registered model names, optionally only one task's, or only those with (or without) weights."""
    _load_tasks()
    if task is not None and task not in TASKS:
        raise ZooError(f"unknown task {task!r}; tasks are: {', '.join(TASKS)}")
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


def count_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def info(name: str) -> ModelCard:
    """The model card of ``name``, with its parameter count."""
    entry = get(name)
    if entry.card.params is None:
        with torch.device("meta"):  # count without allocating
            entry.card.params = count_params(entry.builder())
    return entry.card
