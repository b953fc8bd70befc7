"""What every detection data set shares: the base class (``skip_bad`` and box bookkeeping), the
box finishing step, config and class-name files, the letterbox transform and batching."""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from zoo.errors import ZooError
from zoo.vision import file_error, letterbox, letterbox_geometry

__all__ = ["DetectionDataset", "finish_boxes", "read_config", "load_names", "Letterbox", "collate"]


# --------------------------------------------------------------------------------------------------
# Boxes


def finish_boxes(boxes: np.ndarray, labels: np.ndarray, h: int, w: int, *extra: np.ndarray, clip: bool = True):
    """Clip ``xyxy`` boxes to the ``h`` x ``w`` image and drop those with no area.

    Returns ``(tensors, dropped, clipped)``: ``tensors`` the kept boxes (float32), labels (int64)
    and each ``extra`` array, ``dropped`` the number of boxes removed (non-positive width or height,
    or, with ``clip``, nothing left inside the image) and ``clipped`` the number of kept boxes that
    reached past the image border (clipped to it with ``clip``, kept as they are without).
    """
    boxes = np.array(boxes, dtype=np.float64).reshape(-1, 4)  # a copy: the data set's rows stay as indexed
    outside = (boxes[:, 0] < 0) | (boxes[:, 1] < 0) | (boxes[:, 2] > w) | (boxes[:, 3] > h)
    if clip:
        boxes[:, 0::2] = boxes[:, 0::2].clip(0, w)
        boxes[:, 1::2] = boxes[:, 1::2].clip(0, h)
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    out = [torch.from_numpy(boxes[keep].astype(np.float32)), torch.from_numpy(np.asarray(labels, np.int64)[keep])]
    out += [torch.from_numpy(np.asarray(e)[keep]) for e in extra]
    return out, int((~keep).sum()), int((outside & keep).sum())


# --------------------------------------------------------------------------------------------------
# Base class


class DetectionDataset(Dataset):
    """Shared behaviour: ``skip_bad`` bookkeeping, box counts, ``transform`` and the common target form.

    Subclasses fill ``self.items`` (one entry per sample), ``self.names`` and implement
    ``_load(i) -> (image, target)``, raising ZooError for a bad sample; they finish the boxes of
    sample ``i`` with :meth:`_boxes` (which counts what it drops and clips) and count what they drop
    while indexing with :meth:`_count_boxes`.

    ``dropped``: boxes removed because their width or height is not positive or nothing of them is
    inside the image; ``clipped``: boxes that reached past the image border. Both count what
    indexing found plus what the samples read so far held (each sample once, however often it is
    read; with DataLoader worker processes the per-sample part lives in the workers).
    :meth:`box_summary` says it in one line; a warning gives that line at the end of indexing when
    indexing already found some.
    """

    names: tuple[str, ...] = ()

    def __init__(self, transform: Callable | None = None, skip_bad: bool = False):
        self.transform = transform
        self.skip_bad = bool(skip_bad)
        self.items: list = []
        self.bad: list[tuple[str, str]] = []
        self._bad_idx: set[int] = set()
        self._init_bad = 0
        self._warned = False
        self._init_boxes = [0, 0]  # dropped, clipped while indexing
        self._sample_boxes: dict[int, tuple[int, int]] = {}  # sample -> (dropped, clipped) when read

    @property
    def nc(self) -> int:
        return len(self.names)

    @property
    def skipped(self) -> int:
        """Distinct bad samples skipped so far (at indexing time and while loading)."""
        return self._init_bad + len(self._bad_idx)

    @property
    def dropped(self) -> int:
        """Boxes dropped so far: non-positive size, or wholly outside the image."""
        return self._init_boxes[0] + sum(d for d, _ in self._sample_boxes.values())

    @property
    def clipped(self) -> int:
        """Boxes found so far reaching past the image border (clipped to it, unless the format keeps them)."""
        return self._init_boxes[1] + sum(c for _, c in self._sample_boxes.values())

    def box_summary(self) -> str:
        """One line on the boxes dropped and clipped so far, or ``""`` when there were none."""
        if not (self.dropped or self.clipped):
            return ""
        read = len(self._sample_boxes)
        where = (f"found while indexing and in the {read} of {len(self)} samples read so far" if read else
                 "found while indexing the annotations")
        return (f"{type(self).__name__}: {self.dropped} box(es) dropped (non-positive size or wholly outside the "
                f"image), {self.clipped} reaching past the image border clipped; {where}")

    def _count_boxes(self, dropped: int = 0, clipped: int = 0):
        """Count boxes dropped / clipped while indexing."""
        self._init_boxes[0] += int(dropped)
        self._init_boxes[1] += int(clipped)

    def _boxes(self, i: int, boxes, labels, h: int, w: int, *extra, clip: bool = True):
        """:func:`finish_boxes` for sample ``i``, its drops and clips counted once per sample."""
        out, dropped, clipped = finish_boxes(boxes, labels, h, w, *extra, clip=clip)
        self._sample_boxes[i] = (dropped, clipped)
        return out

    def _warn_boxes(self):
        """At the end of indexing: one warning line if indexing dropped or clipped boxes."""
        if any(self._init_boxes):
            warnings.warn(self.box_summary(), stacklevel=3)

    def _note_bad(self, err: ZooError, at_init: bool = False, index: int | None = None):
        """Raise ``err`` unless ``skip_bad``; then record it and warn once."""
        if not self.skip_bad:
            raise err
        msg = str(err)
        self.bad.append((msg.split(": ", 1)[0], msg))
        if at_init:
            self._init_bad += 1
        elif index is not None:
            self._bad_idx.add(index)
        if not self._warned:
            self._warned = True
            warnings.warn(f"{type(self).__name__}: skipping bad sample(s) (skip_bad=True); first: {msg}; "
                          f"see dataset.skipped and dataset.bad", stacklevel=3)

    def _check_not_empty(self, where):
        if not self.items:
            extra = f" ({self.skipped} bad sample(s) skipped)" if self.skipped else ""
            raise file_error(where, f"the data set is empty{extra}; check the path and the split")
        self._warn_boxes()

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        n = len(self.items)
        if index < 0:
            index += n
        if not 0 <= index < n:
            raise IndexError(f"index {index} out of range for a data set of {n}")
        for k in range(n):
            j = (index + k) % n
            if j in self._bad_idx:
                continue
            try:
                image, target = self._load(j)
            except ZooError as e:
                self._note_bad(e, index=j)
                continue
            if self.transform is not None:
                image, target = self.transform(image, target)
            return image, target
        raise ZooError(f"{type(self).__name__}: every sample failed to load ({self.skipped} bad); see dataset.bad")

    def _load(self, i: int):  # pragma: no cover - abstract
        raise NotImplementedError


# --------------------------------------------------------------------------------------------------
# Config and class-name files


def read_config(path) -> dict:
    """A YAML (PyYAML's ``safe_load``) or JSON file as a dict; ZooError naming the file otherwise."""
    import yaml

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise file_error(path, "file is missing") from None
    except (OSError, UnicodeDecodeError) as e:
        raise file_error(path, f"cannot read ({e})") from None
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise file_error(path, f"not valid JSON ({e})") from None
    else:
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            problem = getattr(e, "problem", None) or (str(e).splitlines() or [type(e).__name__])[0]
            at = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
            raise file_error(path, f"not valid YAML ({at}{problem})") from None
    if not isinstance(data, dict):
        raise file_error(path, "expected a mapping at the top level")
    return data


def load_names(names) -> tuple[str, ...]:
    """Class names from a list/tuple, a ``{index: name}`` dict, or a file: ``.yaml``/``.yml``/``.json``
    with a ``names`` entry (list or dict), or a ``.txt``/``.names`` file with one name per line."""
    where = "names"
    if isinstance(names, (str, os.PathLike)):
        where = Path(names)
        if where.suffix.lower() in (".txt", ".names"):
            try:
                return tuple(x.strip() for x in where.read_text(encoding="utf-8").splitlines() if x.strip())
            except FileNotFoundError:
                raise file_error(where, "names file is missing") from None
        data = read_config(where)
        if "names" not in data:
            raise file_error(where, "no 'names' entry")
        names = data["names"]
    if isinstance(names, dict):
        try:
            idx = sorted(int(k) for k in names)
        except (TypeError, ValueError):
            raise file_error(where, "'names' keys must be class indices 0..nc-1") from None
        if idx != list(range(len(idx))):
            raise file_error(where, f"'names' keys must be 0..{len(idx) - 1} without gaps")
        names = [names[k] if k in names else names[str(k)] for k in idx]
    if not isinstance(names, (list, tuple)) or not names:
        raise file_error(where, "'names' must be a non-empty list or {index: name} mapping")
    return tuple(str(n) for n in names)


# --------------------------------------------------------------------------------------------------
# Transforms and batching


class Letterbox:
    """Resize (keeping the aspect ratio) and pad to ``size`` x ``size``, as ultralytics' LetterBox:
    :func:`zoo.vision.letterbox` onto a ``size`` canvas, bilinear without antialiasing (cv2's
    INTER_LINEAR), ``fill`` / 255 padding (114 by default), ``scaleup=False`` never enlarges. Works
    on ``[..., C, H, W]`` (Gen1 ``[T, 3, H, W]`` too) and moves the boxes; records
    ``target['letterbox'] = dict(scale=(sy, sx), pad=(left, top))`` so that predictions can be
    mapped back with ``(box - pad) / scale``."""

    def __init__(self, size: int | tuple[int, int] = 640, fill: int = 114, scaleup: bool = True):
        self.size = (size, size) if isinstance(size, int) else tuple(size)
        self.fill = fill
        self.scaleup = scaleup

    def __call__(self, image: torch.Tensor, target: dict):
        h, w = image.shape[-2:]
        _, (nh, nw), _, _ = letterbox_geometry(h, w, self.size, scaleup=self.scaleup)
        image, _, (left, top) = letterbox(image, self.size, scaleup=self.scaleup, pad_value=self.fill, antialias=False)
        target = dict(target)
        sy, sx = nh / h, nw / w
        scale = torch.tensor([sx, sy, sx, sy], dtype=torch.float32)
        shift = torch.tensor([left, top, left, top], dtype=torch.float32)
        target["boxes"] = target["boxes"] * scale + shift
        target["letterbox"] = dict(scale=(sy, sx), pad=(left, top))
        return image, target


def collate(batch: Sequence):
    """DataLoader ``collate_fn``: ``(images, targets)`` with images stacked on a new first axis when
    they share one shape (``[B, 3, H, W]``; Gen1 ``[B, T, 3, H, W]``), else a list; targets a list."""
    images, targets = zip(*batch)
    if len({tuple(im.shape) for im in images}) == 1:
        return torch.stack(images, 0), list(targets)
    return list(images), list(targets)

