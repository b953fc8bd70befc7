"""What every task's ``zoo train`` loop shares: processes, checkpoints, resume, progress, time limit, best.

* :func:`setup_processes`: the ``torchrun`` environment (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``) -> a
  process group (gloo on CPU, nccl on CUDA, one GPU per process); :func:`wrap` / :func:`unwrap` the model in
  ``DistributedDataParallel``;
* :func:`save_checkpoint` writes ``last.pt`` atomically (:mod:`zoo.fileio`: a crash leaves the old file);
  :func:`read_checkpoint` reads it back with the zoo's safe reader (:func:`zoo.checkpoint.read`) and
  :func:`load_states` restores modules / optimisers; every failure is one :class:`ZooError` line
  (``--resume`` itself is resolved by :func:`zoo.options.resume_path`);
* :func:`progress` (a tqdm bar on rank 0), :class:`TimeLimit`, :class:`Best` (keeps the best weights as
  ``best.safetensors``).

The task keeps its own recipe (optimiser, schedule, loss, augmentation) and loop.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from .errors import WeightsError, ZooError

__all__ = ["Processes", "setup_processes", "wrap", "unwrap", "save_checkpoint", "read_checkpoint", "load_states",
           "barrier", "any_process", "progress", "TimeLimit", "Best", "Augmented"]


@dataclass(frozen=True)
class Processes:
    rank: int
    world: int
    device: str

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_processes(device: str = "cpu") -> Processes:
    """Join the ``torchrun`` process group if there is one; the device this process trains on."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if str(device).startswith("cuda") else "gloo"
        dist.init_process_group(backend)
        if backend == "nccl":
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
            torch.cuda.set_device(device)
    return Processes(rank, world, str(device))


def wrap(model: nn.Module, procs: Processes) -> nn.Module:
    return nn.parallel.DistributedDataParallel(model) if procs.world > 1 else model


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def barrier(procs: Processes) -> None:
    if procs.world > 1:
        dist.barrier()


def any_process(flag: bool, procs: Processes) -> bool:
    """``flag`` of any process (all of them agree, e.g. on a time limit)."""
    if procs.world == 1:
        return bool(flag)
    t = torch.tensor([float(flag)], device=procs.device)
    dist.all_reduce(t)
    return bool(t.item() > 0)


def save_checkpoint(obj: dict, path: str | Path) -> None:
    """``torch.save`` to ``path`` atomically (written beside it, then renamed)."""
    from .fileio import atomic_write

    atomic_write(path, lambda f: torch.save(obj, f))


def read_checkpoint(path: str | Path, need: tuple[str, ...], counter: str = "epoch") -> dict:
    """A ``last.pt`` of ``zoo train``, read safely; a missing, truncated or foreign file is one ZooError line.

    ``need``: the keys it must hold; ``counter``: the one that must be an integer (epoch or iteration).
    """
    from .checkpoint import read

    try:
        ck = read(path)
    except WeightsError as e:
        raise ZooError(f"cannot resume: {e}") from None
    if not isinstance(ck, dict) or any(k not in ck for k in need) or not isinstance(ck.get(counter), int):
        raise ZooError(f"--resume {path} is not a last.pt of `zoo train` (it needs {', '.join(need)})")
    return ck


def load_states(path, pairs) -> None:
    """``pairs``: (checkpoint state, object with ``load_state_dict``); a mismatch is one ZooError line."""
    try:
        for state, obj in pairs:
            obj.load_state_dict(state)
    except (RuntimeError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise ZooError(f"--resume {path} does not fit this model ({str(e).splitlines()[0][:160]})") from None


def progress(iterable, desc: str, enabled: bool, total: int | None = None):
    """A progress bar on stderr (tqdm), or the plain iterable when not ``enabled``."""
    from tqdm import tqdm

    return tqdm(iterable, desc=desc, unit="batch", leave=False, total=total, disable=not enabled)


class TimeLimit:
    """``reached()`` once ``seconds`` (0 = never) have passed since construction."""

    def __init__(self, seconds: float = 0.0):
        self.seconds, self.t0 = float(seconds or 0.0), time.time()

    def elapsed(self) -> float:
        return time.time() - self.t0

    def reached(self) -> bool:
        return bool(self.seconds) and self.elapsed() > self.seconds


class Best:
    """The best ``fitness`` so far (higher is better); :meth:`update` saves ``state`` as ``path`` on improvement."""

    def __init__(self, path: str | Path, value: float = float("-inf")):
        self.path, self.value = Path(path), float(value)

    def update(self, fitness: float, state: dict) -> bool:
        if fitness > self.value:
            from .checkpoint import save_safetensors

            self.value = float(fitness)
            save_safetensors(state, self.path)
            return True
        return False


class Augmented(torch.utils.data.Dataset):
    """A data set whose items are ``transform(i)`` (a task's training transform that reads ``transform.dataset``)."""

    def __init__(self, transform):
        self.t = transform

    def __len__(self):
        return len(self.t.dataset)

    def __getitem__(self, i):
        return self.t(i)
