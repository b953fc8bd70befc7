"""Tasks are plugins: what a task folder declares, and how the zoo finds the tasks.

A task is a package ``tasks/<name>/`` whose ``__init__.py`` defines ``TASK = Task(...)``; nothing in
``zoo/`` names a task. ``TASK`` points (by module name, imported only when needed, so that ``zoo --help``
and ``zoo list`` stay fast) at:

* ``models``: the module that registers the task's model cards and builders (:func:`zoo.register`);
  it must import no heavy library at module level (builders import their architecture when called);
* ``cli``: the module with the task's verbs, ``VERBS = {"predict": Verb(...), ...}``, each with its own
  options, and optionally ``PROFILING = Profiling(...)``: the example input ``zoo profile`` builds for the
  task's models and the task's own ``zoo profile`` options.

The bench suite of a task is the module ``benchmarks/<name>.py`` exposing ``VERB = Verb(...)``, found by
the task's name; its ``summary(size)`` (optional) gives the task's row of ``zoo bench`` with no task
(:mod:`zoo.bench`). Adding a task touches only its folder, its tests, its manifest entries and its bench module.

This module is a leaf: it imports nothing from the zoo's tasks, models or torch.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import pkgutil
from dataclasses import dataclass, field
from typing import Callable

from .errors import ZooError


@dataclass(frozen=True)
class Verb:
    """One command of a task: ``zoo NAME TARGET [options]``.

    ``add_arguments(parser)`` adds the task's own options (the zoo adds ``--json``); ``run(args)`` does the
    work, with ``args.target`` the model name (or task name when ``takes == "task"``)."""

    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], None]
    takes: str = "model"  # "model" or "task"


@dataclass(frozen=True)
class Profiling:
    """How ``zoo profile NAME`` runs a model of this task.

    ``example_input(model, card, size, generator) -> (args, kwargs)`` builds one input of shape ``size``;
    ``add_arguments`` / ``load_options(args) -> dict`` add task options and turn them into ``zoo.load``
    keywords (e.g. the language task's ``--base``)."""

    example_input: Callable
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None
    load_options: Callable[[argparse.Namespace], dict] | None = None
    note: str = ""  # printed under the table (e.g. what the example input is)


@dataclass(frozen=True)
class Task:
    name: str
    description: str
    models: str  # module registering the cards
    cli: str | None = None  # module with VERBS (and optionally PROFILING)
    extras: dict = field(default_factory=dict)  # free-form facts for the task's own code

    def verbs(self) -> dict[str, Verb]:
        return dict(getattr(importlib.import_module(self.cli), "VERBS", {})) if self.cli else {}

    def profiling(self) -> Profiling | None:
        return getattr(importlib.import_module(self.cli), "PROFILING", None) if self.cli else None

    def bench(self) -> Verb | None:
        """The task's bench suite, ``benchmarks/<name>.py``, or None."""
        module = f"benchmarks.{self.name}"
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:  # no benchmarks package installed
            found = False
        return getattr(importlib.import_module(module), "VERB", None) if found else None

    def bench_summary(self) -> Callable | None:
        """``summary(size)`` of the task's bench module: its row of ``zoo bench`` (:mod:`zoo.bench`), or None."""
        module = f"benchmarks.{self.name}"
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:
            found = False
        return getattr(importlib.import_module(module), "summary", None) if found else None


_TASKS: dict[str, Task] | None = None


def tasks() -> dict[str, Task]:
    """Every task package under ``tasks/`` that declares ``TASK``, by name (imports only their ``__init__``)."""
    global _TASKS
    if _TASKS is None:
        import tasks as package

        found = {}
        for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda i: i.name):
            if not info.ispkg:
                continue
            task = getattr(importlib.import_module(f"tasks.{info.name}"), "TASK", None)
            if isinstance(task, Task):
                if task.name != info.name:
                    raise RuntimeError(f"tasks/{info.name} declares TASK.name {task.name!r}; they must match")
                found[task.name] = task
        _TASKS = found
    return _TASKS


def task(name: str) -> Task:
    known = tasks()
    if name not in known:
        raise ZooError(f"unknown task {name!r}; tasks are: {', '.join(known)}")
    return known[name]


def load_object(spec: str):
    """``"module:attribute"`` -> the object (converters and other late-bound references)."""
    module, _, attr = spec.partition(":")
    return getattr(importlib.import_module(module), attr)


def lazy_exports(package: str, names: dict[str, str]):
    """A module ``__getattr__`` for a task package: ``names`` maps an exported name to the submodule defining
    it, imported on first use (the architectures import torch; the task's declaration must not)."""

    def __getattr__(name):
        if name in names:
            return getattr(importlib.import_module(f"{package}.{names[name]}"), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
