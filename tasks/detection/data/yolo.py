"""The ultralytics/YOLO txt layout (images/ + labels/, data .yaml files)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from zoo.errors import ZooError
from zoo.vision import file_error, image_files, load_image

from .common import DetectionDataset, load_names, read_config

__all__ = ["YOLODataset"]


def _label_path(image: Path) -> Path:
    """ultralytics' rule: the last ``/images/`` in the path becomes ``/labels/``, suffix ``.txt``."""
    s = str(image)
    sa, sb = f"{os.sep}images{os.sep}", f"{os.sep}labels{os.sep}"
    if sa in s:
        s = sb.join(s.rsplit(sa, 1))
    return Path(s).with_suffix(".txt")


def _parse_yolo_labels(path: Path, nc: int) -> np.ndarray:
    """Rows ``cls cx cy w h`` (normalised) from a YOLO txt file; polygons become their bounding box."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return np.zeros((0, 5))
    except (OSError, UnicodeDecodeError) as e:
        raise file_error(path, f"cannot read the label file ({e})") from None
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        try:
            vals = [float(v) for v in parts]
        except ValueError:
            raise file_error(path, f"line {n} is not numeric: {line.strip()!r}") from None
        if not all(np.isfinite(vals)):
            raise file_error(path, f"line {n} has a non-finite value")
        c = vals[0]
        if c != int(c) or not 0 <= c < nc:
            raise file_error(path, f"line {n}: class {parts[0]} is not an integer in 0..{nc - 1}")
        if len(vals) == 5:
            rows.append(vals)
        elif len(vals) >= 7 and len(vals) % 2 == 1:  # segment polygon: cls x1 y1 x2 y2 ...
            xy = np.asarray(vals[1:]).reshape(-1, 2)
            (x1, y1), (x2, y2) = xy.min(0), xy.max(0)
            rows.append([c, (x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1])
        else:
            raise file_error(path, f"line {n} has {len(vals)} values; expected 'cls cx cy w h' (5) or a polygon")
    if not rows:
        return np.zeros((0, 5))
    arr = np.asarray(rows, dtype=np.float64)
    _, first = np.unique(arr, axis=0, return_index=True)  # drop exact duplicates, as ultralytics does
    return arr[np.sort(first)]


class YOLODataset(DetectionDataset):
    """ultralytics/YOLO layout: images, and per image a ``.txt`` of ``cls cx cy w h`` lines.

    * ``images``: a folder (searched recursively; files sorted by path), a ``.txt`` file listing
      image paths (relative ones are taken from the list file's folder), or a list of those.
    * Label file: the path of the image with its last ``/images/`` replaced by ``/labels/`` and the
      suffix by ``.txt`` (ultralytics' rule); or, with ``labels=`` a folder, that folder plus the
      image's path relative to its image folder. A missing label file means no objects.
    * Lines: ``cls cx cy w h`` normalised to [0, 1] by the image width/height; a line with an odd
      number >= 7 of values is a polygon (``cls x1 y1 x2 y2 ...``) and gives its bounding box, as in
      ultralytics. Exact duplicate lines are kept once (as ultralytics). Coordinates outside [0, 1]
      are clipped to the image (ultralytics rejects the whole label file instead) and counted in
      ``clipped``; boxes with no area left are dropped and counted in ``dropped``.
    * Images: :data:`zoo.vision.IMAGE_SUFFIXES`, read with their stored pixel grid
      (``load_image(..., exif=False)``).
    * ``names``: see :func:`load_names`. A class index outside ``0..nc-1`` is a bad sample.
    * ``image_id`` is the sample's index.
    """

    def __init__(self, images, names, labels=None, transform=None, skip_bad: bool = False):
        super().__init__(transform, skip_bad)
        self.names = load_names(names)
        self.labels_dir = Path(labels) if labels is not None else None
        sources = [images] if isinstance(images, (str, os.PathLike)) else list(images)
        if not sources:
            raise ZooError("YOLODataset: no image folder or list given")
        self.root = Path(sources[0])
        found: list[tuple[Path, Path]] = []
        for src in sources:
            src = Path(src)
            if src.is_dir():
                files = image_files(src, recursive=True)
                found += [(p, self._label_for(p, src)) for p in files]
            elif src.is_file() and src.suffix.lower() == ".txt":
                for line in src.read_text(encoding="utf-8").splitlines():
                    if line.strip():
                        p = Path(line.strip())
                        p = p if p.is_absolute() else src.parent / p
                        if not p.is_file():
                            self._note_bad(file_error(p, f"image file is missing (listed in {src})"), at_init=True)
                            continue
                        found.append((p, self._label_for(p, p.parent)))
            else:
                raise file_error(src, "image folder or list file is missing")
        self.items = found
        self._check_not_empty(self.root)

    def _label_for(self, image: Path, base: Path) -> Path:
        if self.labels_dir is None:
            return _label_path(image)
        return (self.labels_dir / image.relative_to(base)).with_suffix(".txt")

    @classmethod
    def from_data_yaml(cls, data, split: str = "val", **kwargs) -> "YOLODataset":
        """Build from an ultralytics data file (``path``, ``train``/``val``/``test``, ``names``).

        ``path`` relative to the YAML file's folder; split entries relative to ``path``; a split may be
        a folder, a list file or a list of those (TDE's config/VOC.yaml lists four folders).
        """
        where = Path(data)
        cfg = read_config(where)
        if split not in cfg or cfg[split] in (None, "", []):
            raise file_error(where, f"no '{split}' entry")
        root = Path(cfg.get("path") or ".")
        if not root.is_absolute():
            root = where.parent / root
        entries = cfg[split] if isinstance(cfg[split], list) else [cfg[split]]
        paths = [p if Path(p).is_absolute() else root / p for p in map(str, entries)]
        names = cfg.get("names")
        if names is None:
            raise file_error(where, "no 'names' entry")
        try:
            names = load_names(names)
        except ZooError as e:
            raise file_error(where, str(e)) from None
        return cls(paths, names, **kwargs)

    def _load(self, i):
        path, label = self.items[i]
        rows = _parse_yolo_labels(label, self.nc)
        image = load_image(path, exif=False)
        h, w = image.shape[-2:]
        cx, cy, bw, bh = rows[:, 1] * w, rows[:, 2] * h, rows[:, 3] * w, rows[:, 4] * h
        xyxy = np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], 1)
        boxes, labels = self._boxes(i, xyxy, rows[:, 0].astype(np.int64), h, w)
        return image, dict(boxes=boxes, labels=labels, image_id=i, orig_size=(h, w), file=str(path))
