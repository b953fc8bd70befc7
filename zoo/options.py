"""Options every task's verbs share, parsed the same way everywhere: the device, ``--resume``, the
training verbs' common options and ``--set KEY=VALUE`` onto a recipe dataclass.

Imports no torch at module level (the CLI modules that use it must stay light).
"""

from __future__ import annotations

import argparse
from dataclasses import fields
from pathlib import Path

from .errors import ZooError


def device(name: str | None) -> str:
    """``--device``: ``None`` -> cuda when available, else cpu; a bad or absent device is a one-line error."""
    import torch

    if name is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise ZooError(f"unknown device {name!r}; use cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ZooError(f"device {name!r} asked for but CUDA is not available; use --device cpu")
    return name


def resume_path(resume: str | None, out: str) -> Path | None:
    """``--resume``: a ``last.pt``, a run folder holding one, or (empty) the ``--out`` folder's."""
    if resume is None:
        return None
    path = Path(resume or out)
    if path.is_dir():
        path = path / "last.pt"
    if not path.is_file():
        raise ZooError(f"--resume: no checkpoint at {path}; pass a run's last.pt or its folder (zoo train writes OUT/last.pt)")
    return path


def add_training_options(parser: argparse.ArgumentParser, epochs: str, batch: str) -> None:
    """``--epochs --batch --out --resume --time-limit --workers --set``, with the task's defaults in the help."""
    parser.add_argument("--epochs", type=int, default=None, metavar="N", help=f"epochs (default {epochs})")
    parser.add_argument("--batch", type=int, default=None, metavar="N", help=f"batch size per process (default {batch})")
    parser.add_argument("--out", default="runs/train", metavar="DIR",
                        help="run folder: last.pt (resumable) and best.safetensors (default runs/train)")
    parser.add_argument("--resume", nargs="?", const="", default=None, metavar="PATH",
                        help="continue a run: its last.pt, or its run folder (no value: the --out folder's last.pt)")
    parser.add_argument("--time-limit", type=float, default=None, metavar="S", help="stop after the epoch that passes S seconds")
    parser.add_argument("--workers", type=int, default=None, metavar="N", help="data loader processes (default 0)")
    parser.add_argument("--set", nargs="*", default=None, metavar="KEY=VALUE", help="other recipe values, e.g. lr0=0.02")


def recipe(cfg, args):
    """``cfg`` (a recipe dataclass) with the training options of ``args`` and each ``--set KEY=VALUE`` applied."""
    types = {f.name: f.type for f in fields(cfg)}
    for key, value in (("epochs", args.epochs), ("batch", args.batch), ("time_limit", args.time_limit),
                       ("workers", args.workers)):
        if value is not None and key in types:
            setattr(cfg, key, value)
    for item in args.set or []:
        key, _, value = item.partition("=")
        if key not in types or not value:
            raise ZooError(f"--set {item!r}: expected KEY=VALUE with KEY one of {', '.join(types)}")
        kind = types[key]
        try:
            setattr(cfg, key, float(value) if kind in ("float", float) else int(value))
        except ValueError:
            raise ZooError(f"--set {item!r}: {key} takes a {kind if isinstance(kind, str) else kind.__name__}") from None
    return cfg
