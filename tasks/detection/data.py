"""Detection data sets in one common form: COCO, YOLO txt, Pascal VOC, Prophesee Gen1, EvDET200K.

Every data set here yields ``(image, target)``:

* ``image``: ``float32`` in [0, 1], ``[3, H, W]`` for still images (any PIL mode, RGB out), and
  ``[T, 3, H, W]`` for Gen1 event frames (the frame value divided by 255: background 127/255,
  positive event 1, negative event 0). No resizing: use :class:`Letterbox` (or your own
  ``transform``) to reach the model's input size.
* ``target``: a dict with ``boxes`` (``float32 [N, 4]``, ``x1 y1 x2 y2`` in pixels of the
  returned image), ``labels`` (``int64 [N]``, class index ``0..nc-1`` in ``dataset.names``),
  ``image_id`` (int), ``orig_size`` (``(H, W)`` before any transform) and ``file`` (str).
  VOC adds ``difficult`` (bool ``[N]``); Gen1 adds ``t_us`` (the label time stamp).

Boxes are clipped to the image by every adapter, and boxes left with zero width or height after
clipping are dropped (the official pipelines differ here and there; each class says where).

Bad input raises :class:`zoo.errors.ZooError` with one line naming the file and the problem: a
missing or undecodable image, a JSON/XML/label file that cannot be parsed or lacks a field, a
truncated Prophesee ``.dat`` file, an empty data set. With ``skip_bad=True`` a bad sample is
skipped instead, ``dataset.skipped`` counts the distinct samples skipped so far (``dataset.bad``
lists ``(file, problem)``), and a warning is issued once per data set. Samples found bad while
loading are replaced by the next good sample, so ``len()`` stays fixed; with DataLoader worker
processes the counters live in the workers. Structural errors that concern the whole data set (an
annotation file that is not JSON, a missing folder, no samples at all) always raise.

``collate`` batches samples for a ``DataLoader``: images of one shape are stacked (``[B, 3, H, W]``
or, for Gen1, ``[B, T, 3, H, W]``, the input form of the ``spikeyolo-gen1`` card), images of
different shapes come back as a list; targets always come back as a list of dicts.
"""

from __future__ import annotations

import bisect
import json
import os
import re
import warnings
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from zoo.errors import ZooError

__all__ = [
    "IMG_EXTENSIONS", "VOC_CLASSES", "GEN1_CLASSES", "EVDET200K_CLASSES", "COCO80_TO_91",
    "DetectionDataset", "COCODataset", "YOLODataset", "VOCDataset", "Gen1Dataset", "EvDET200KDataset",
    "Letterbox", "collate", "flatten_targets", "load_dataset", "load_image", "read_prophesee_dat", "load_names",
]

IMG_EXTENSIONS = (".bmp", ".dng", ".jpeg", ".jpg", ".mpo", ".png", ".tif", ".tiff", ".webp", ".pfm")

from .classes import COCO80_TO_COCO91 as COCO80_TO_91  # noqa: E402
from .classes import EVDET200K_CLASSES, VOC_CLASSES  # noqa: E402,F401
from .classes import GEN1_NAMES as GEN1_CLASSES  # noqa: E402,F401

GEN1_SENSOR = (240, 304)  # (H, W) of the ATIS sensor of the Gen1 Automotive data set


def _err(path, problem) -> ZooError:
    """A one-line ZooError naming the file and the problem."""
    text = f"{path}: {problem}"
    return ZooError(" ".join(text.split()))


# --------------------------------------------------------------------------------------------------
# Images


def load_image(path) -> torch.Tensor:
    """Read an image file with PIL into ``float32 [3, H, W]`` in [0, 1].

    Grayscale, RGBA (alpha dropped), palette and CMYK images become RGB. The EXIF orientation tag is
    not applied: boxes refer to the stored pixels.
    """
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
            if im.mode == "P" and "transparency" in im.info:
                im = im.convert("RGBA")
            if im.mode != "RGB":
                im = im.convert("RGB")
            arr = np.array(im, dtype=np.uint8)
    except FileNotFoundError:
        raise _err(path, "image file is missing") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise _err(path, f"cannot decode the image ({type(e).__name__}: {e}); replace or remove the file") from None
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise _err(path, f"image decoded to an unexpected shape {arr.shape}")
    return torch.from_numpy(arr).permute(2, 0, 1).float().div_(255.0)


def _finish_boxes(boxes: np.ndarray, labels: np.ndarray, h: int, w: int, *extra: np.ndarray, clip: bool = True):
    """Clip ``xyxy`` boxes to the image and drop those left with no area; returns tensors."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if clip:
        boxes[:, 0::2] = boxes[:, 0::2].clip(0, w)
        boxes[:, 1::2] = boxes[:, 1::2].clip(0, h)
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    out = [torch.from_numpy(boxes[keep].astype(np.float32)), torch.from_numpy(np.asarray(labels, np.int64)[keep])]
    out += [torch.from_numpy(np.asarray(e)[keep]) for e in extra]
    return out


# --------------------------------------------------------------------------------------------------
# Base class


class DetectionDataset(Dataset):
    """Shared behaviour: ``skip_bad`` bookkeeping, ``transform`` and the common target form.

    Subclasses fill ``self.items`` (one entry per sample), ``self.names`` and implement
    ``_load(i) -> (image, target)``, raising ZooError for a bad sample.
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

    @property
    def nc(self) -> int:
        return len(self.names)

    @property
    def skipped(self) -> int:
        """Distinct bad samples skipped so far (at indexing time and while loading)."""
        return self._init_bad + len(self._bad_idx)

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
            raise _err(where, f"the data set is empty{extra}; check the path and the split")

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
# COCO


class COCODataset(DetectionDataset):
    """COCO ``instances_*.json`` + image folder (no pycocotools needed).

    * Classes: the JSON's category ids, sorted ascending, map to ``0..nc-1`` (for COCO 2017 this is
      ultralytics' ``coco91_to_coco80_class`` table). ``category_ids`` / ``coco80_to_91`` give the
      inverse (contiguous index -> COCO id) for writing results; ``names`` follow the same order.
    * As ultralytics' ``convert_coco``: ``iscrowd`` annotations are skipped, boxes with
      ``w <= 0`` or ``h <= 0`` are skipped, and exact duplicates (same class and box) are kept once.
    * Boxes: COCO ``[x, y, w, h]`` -> ``[x, y, x + w, y + h]``, clipped to the decoded image.
    * Every image of the JSON is a sample (images without annotations have no boxes), in the JSON's
      order; ``image_id`` is the COCO image id.
    * Required fields: ``images`` (``id``, ``file_name``), ``annotations`` (``image_id``,
      ``category_id``, ``bbox``), ``categories`` (``id``, ``name``).
    """

    def __init__(self, annotations, images, transform=None, skip_bad: bool = False):
        super().__init__(transform, skip_bad)
        ann_path = Path(annotations)
        self.root = Path(images)
        self.annotation_file = ann_path
        try:
            with open(ann_path, encoding="utf-8") as f:
                data = json.load(f)
        except FileNotFoundError:
            raise _err(ann_path, "annotation file is missing") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise _err(ann_path, f"not valid JSON ({e})") from None
        if not isinstance(data, dict):
            raise _err(ann_path, "expected a JSON object with 'images', 'annotations' and 'categories'")
        for key in ("images", "annotations", "categories"):
            if not isinstance(data.get(key), list):
                raise _err(ann_path, f"missing or malformed field '{key}' (a list is required)")
        if not self.root.is_dir():
            raise _err(self.root, "image folder is missing")

        cats = {}
        for k, c in enumerate(data["categories"]):
            if not isinstance(c, dict) or not isinstance(c.get("id"), int) or "name" not in c:
                raise _err(ann_path, f"categories[{k}] lacks an integer 'id' or a 'name'")
            cats[c["id"]] = str(c["name"])
        self.category_ids: tuple[int, ...] = tuple(sorted(cats))
        self.names = tuple(cats[i] for i in self.category_ids)
        self.cat_to_label = {cid: k for k, cid in enumerate(self.category_ids)}

        order, info = [], {}
        for k, im in enumerate(data["images"]):
            if not isinstance(im, dict) or not isinstance(im.get("id"), int) or not isinstance(im.get("file_name"), str):
                raise _err(ann_path, f"images[{k}] lacks an integer 'id' or a string 'file_name'")
            if im["id"] in info:
                raise _err(ann_path, f"image id {im['id']} appears twice in 'images'")
            info[im["id"]] = im["file_name"]
            order.append(im["id"])

        per_image: dict[int, list] = {i: [] for i in order}
        bad_images: dict[int, str] = {}
        for k, a in enumerate(data["annotations"]):
            if not isinstance(a, dict) or not isinstance(a.get("image_id"), int):
                raise _err(ann_path, f"annotations[{k}] lacks an integer 'image_id'")
            iid = a["image_id"]
            if iid not in per_image:
                raise _err(ann_path, f"annotations[{k}] refers to image id {iid}, which is not in 'images'")
            if a.get("iscrowd", 0):
                continue
            bbox, cid = a.get("bbox"), a.get("category_id")
            problem = None
            if cid not in self.cat_to_label:
                problem = f"annotations[{k}] has category_id {cid!r}, which is not in 'categories'"
            elif (not isinstance(bbox, (list, tuple)) or len(bbox) != 4
                  or not all(isinstance(v, (int, float)) and np.isfinite(v) for v in bbox)):
                problem = f"annotations[{k}] lacks a 'bbox' of 4 finite numbers"
            if problem:
                if not self.skip_bad:
                    raise _err(ann_path, problem)
                bad_images.setdefault(iid, problem)
                continue
            x, y, w, h = (float(v) for v in bbox)
            if w <= 0 or h <= 0:
                continue
            row = (self.cat_to_label[cid], x, y, x + w, y + h)
            if row not in per_image[iid]:
                per_image[iid].append(row)

        for iid in order:
            path = self.root / info[iid]
            if iid in bad_images:
                self._note_bad(_err(ann_path, f"{bad_images[iid]} (image {path})"), at_init=True)
                continue
            if not path.is_file():
                self._note_bad(_err(path, "image file is missing"), at_init=True)
                continue
            rows = np.asarray(per_image[iid], dtype=np.float64).reshape(-1, 5)
            self.items.append((iid, path, rows))
        self._check_not_empty(ann_path)

    @property
    def coco80_to_91(self) -> tuple[int, ...]:
        """Contiguous class index -> COCO category id (the JSON's ids, sorted)."""
        return self.category_ids

    def _load(self, i):
        iid, path, rows = self.items[i]
        image = load_image(path)
        h, w = image.shape[-2:]
        boxes, labels = _finish_boxes(rows[:, 1:], rows[:, 0].astype(np.int64), h, w)
        return image, dict(boxes=boxes, labels=labels, image_id=iid, orig_size=(h, w), file=str(path))


# --------------------------------------------------------------------------------------------------
# YAML / names


def _scalar(text: str):
    t = text.strip()
    if len(t) >= 2 and t[0] == t[-1] and t[0] in "'\"":
        return t[1:-1]
    if t in ("", "~", "null"):
        return None
    if re.fullmatch(r"[-+]?\d+", t):
        return int(t)
    if re.fullmatch(r"[-+]?(\d+\.\d*|\.\d+|\d+)([eE][-+]?\d+)?", t):
        return float(t)
    if t.startswith("[") and t.endswith("]"):
        inner = t[1:-1].strip()
        return [_scalar(x) for x in inner.split(",")] if inner else []
    return t


def _strip_comment(line: str) -> str:
    quote = None
    for k, ch in enumerate(line):
        if ch in "'\"":
            quote = None if quote == ch else (ch if quote is None else quote)
        elif ch == "#" and quote is None and (k == 0 or line[k - 1] in " \t"):
            return line[:k].rstrip()
    return line.rstrip()


def _mini_yaml(text: str, where) -> dict:
    """The YAML subset of ultralytics data files: top-level ``key: value``, with a value that is a
    scalar, an inline list, an indented ``- item`` list or an indented ``k: v`` mapping; block scalars
    (``|``, ``>``) are skipped. Used only when PyYAML is not installed."""
    out: dict = {}
    lines = text.splitlines()
    k = 0
    key = None
    while k < len(lines):
        raw = lines[k]
        k += 1
        line = _strip_comment(raw)
        if not line.strip() or line.strip() == "---":
            continue
        indent = len(line) - len(line.lstrip())
        body = line.strip()
        if indent == 0:
            if ":" not in body:
                raise _err(where, f"cannot parse line {k} ({body!r}) with the built-in YAML reader; pip install pyyaml")
            key, _, val = body.partition(":")
            key, val = key.strip(), val.strip()
            if val in ("|", ">", "|-", ">-", "|+", ">+"):
                while k < len(lines) and (not lines[k].strip() or lines[k].startswith((" ", "\t"))):
                    k += 1
                out[key] = None
                continue
            out[key] = _scalar(val)
            continue
        if key is None:
            raise _err(where, f"unexpected indented line {k}")
        if body.startswith("- ") or body == "-":
            if not isinstance(out[key], list):
                out[key] = []
            out[key].append(_scalar(body[1:]))
        elif ":" in body:
            sub, _, val = body.partition(":")
            if not isinstance(out[key], dict):
                out[key] = {}
            out[key][_scalar(sub)] = _scalar(val)
        else:
            raise _err(where, f"cannot parse line {k} ({body!r}) with the built-in YAML reader; pip install pyyaml")
    return out


def _read_config(path) -> dict:
    """A YAML (PyYAML if installed, else a small subset) or JSON file as a dict."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise _err(path, "file is missing") from None
    except (OSError, UnicodeDecodeError) as e:
        raise _err(path, f"cannot read ({e})") from None
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise _err(path, f"not valid JSON ({e})") from None
    else:
        try:
            import yaml  # PyYAML, optional
        except ImportError:
            data = _mini_yaml(text, path)
        else:
            try:
                data = yaml.safe_load(text)
            except yaml.YAMLError as e:
                raise _err(path, f"not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise _err(path, "expected a mapping at the top level")
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
                raise _err(where, "names file is missing") from None
        data = _read_config(where)
        if "names" not in data:
            raise _err(where, "no 'names' entry")
        names = data["names"]
    if isinstance(names, dict):
        try:
            idx = sorted(int(k) for k in names)
        except (TypeError, ValueError):
            raise _err(where, "'names' keys must be class indices 0..nc-1") from None
        if idx != list(range(len(idx))):
            raise _err(where, f"'names' keys must be 0..{len(idx) - 1} without gaps")
        names = [names[k] if k in names else names[str(k)] for k in idx]
    if not isinstance(names, (list, tuple)) or not names:
        raise _err(where, "'names' must be a non-empty list or {index: name} mapping")
    return tuple(str(n) for n in names)


# --------------------------------------------------------------------------------------------------
# YOLO txt


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
        raise _err(path, f"cannot read the label file ({e})") from None
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        try:
            vals = [float(v) for v in parts]
        except ValueError:
            raise _err(path, f"line {n} is not numeric: {line.strip()!r}") from None
        if not all(np.isfinite(vals)):
            raise _err(path, f"line {n} has a non-finite value")
        c = vals[0]
        if c != int(c) or not 0 <= c < nc:
            raise _err(path, f"line {n}: class {parts[0]} is not an integer in 0..{nc - 1}")
        if len(vals) == 5:
            rows.append(vals)
        elif len(vals) >= 7 and len(vals) % 2 == 1:  # segment polygon: cls x1 y1 x2 y2 ...
            xy = np.asarray(vals[1:]).reshape(-1, 2)
            (x1, y1), (x2, y2) = xy.min(0), xy.max(0)
            rows.append([c, (x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1])
        else:
            raise _err(path, f"line {n} has {len(vals)} values; expected 'cls cx cy w h' (5) or a polygon")
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
      are clipped to the image (ultralytics rejects the whole label file instead).
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
                files = sorted(p for p in src.rglob("*") if p.suffix.lower() in IMG_EXTENSIONS and p.is_file())
                found += [(p, self._label_for(p, src)) for p in files]
            elif src.is_file() and src.suffix.lower() == ".txt":
                for line in src.read_text(encoding="utf-8").splitlines():
                    if line.strip():
                        p = Path(line.strip())
                        p = p if p.is_absolute() else src.parent / p
                        if not p.is_file():
                            self._note_bad(_err(p, f"image file is missing (listed in {src})"), at_init=True)
                            continue
                        found.append((p, self._label_for(p, p.parent)))
            else:
                raise _err(src, "image folder or list file is missing")
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
        cfg = _read_config(where)
        if split not in cfg or cfg[split] in (None, "", []):
            raise _err(where, f"no '{split}' entry")
        root = Path(cfg.get("path") or ".")
        if not root.is_absolute():
            root = where.parent / root
        entries = cfg[split] if isinstance(cfg[split], list) else [cfg[split]]
        paths = [p if Path(p).is_absolute() else root / p for p in map(str, entries)]
        names = cfg.get("names")
        if names is None:
            raise _err(where, "no 'names' entry")
        try:
            names = load_names(names)
        except ZooError as e:
            raise _err(where, str(e)) from None
        return cls(paths, names, **kwargs)

    def _load(self, i):
        path, label = self.items[i]
        rows = _parse_yolo_labels(label, self.nc)
        image = load_image(path)
        h, w = image.shape[-2:]
        cx, cy, bw, bh = rows[:, 1] * w, rows[:, 2] * h, rows[:, 3] * w, rows[:, 4] * h
        xyxy = np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], 1)
        boxes, labels = _finish_boxes(xyxy, rows[:, 0].astype(np.int64), h, w)
        return image, dict(boxes=boxes, labels=labels, image_id=i, orig_size=(h, w), file=str(path))


class EvDET200KDataset(YOLODataset):
    """EvDET200K as TDE uses it (github Mortal825/TDE, config/EvDET200K.yaml and README).

    TDE trains with stock ultralytics on event frames rendered as ordinary images, converted to the
    YOLO layout::

        root/images/train/*.png|jpg    root/labels/train/*.txt
        root/images/test/*.png|jpg     root/labels/test/*.txt     (TDE's val and test split)

    Each label line ``cls cx cy w h`` normalised; 10 classes in TDE's order: people, car, bicycle,
    electric bicycle, basketball, ping_pong, goose, cat, bird, UAV. The images are read as RGB.
    (The data set's own release, github Event-AHU/OpenEvDET, ships the same frames with COCO-style
    JSON: read that with :class:`COCODataset`; its category-id order is not checked against TDE's.)
    """

    def __init__(self, root, split: str = "test", transform=None, skip_bad: bool = False):
        root = Path(root)
        images = root / "images" / split
        if not images.is_dir():
            raise _err(images, f"EvDET200K split folder is missing (expected {root}/images/{split} and "
                               f"{root}/labels/{split})")
        super().__init__(images, EVDET200K_CLASSES, transform=transform, skip_bad=skip_bad)


# --------------------------------------------------------------------------------------------------
# Pascal VOC


class VOCDataset(DetectionDataset):
    """Pascal VOC: ``root/Annotations/{id}.xml``, ``root/JPEGImages/{id}.jpg``,
    ``root/ImageSets/Main/{split}.txt`` (``root`` is e.g. ``VOCdevkit/VOC2007``).

    * Boxes: VOC's 1-based inclusive pixel corners become ``[xmin - 1, ymin - 1, xmax - 1, ymax - 1]``
      (the conversion of ultralytics' VOC.yaml, which TDE uses: centre ``(xmin + xmax) / 2 - 1``,
      width ``xmax - xmin``), clipped to the image.
    * ``difficult`` (default 0 when absent) is kept as a bool tensor in the target; with
      ``keep_difficult=False`` difficult objects are dropped, as ultralytics/TDE's converted labels do.
    * An object whose name is not in ``names`` is a bad sample (ultralytics drops it silently).
    * ``image_id`` is the sample's index; the VOC id is ``Path(target['file']).stem``.
    """

    def __init__(self, root, split: str = "val", names=VOC_CLASSES, keep_difficult: bool = True,
                 transform=None, skip_bad: bool = False):
        super().__init__(transform, skip_bad)
        self.root = Path(root)
        self.names = load_names(names)
        self.keep_difficult = keep_difficult
        self._index = {n: k for k, n in enumerate(self.names)}
        list_file = self.root / "ImageSets" / "Main" / f"{split}.txt"
        try:
            ids = [ln.split()[0] for ln in list_file.read_text(encoding="utf-8").splitlines() if ln.strip()]
        except FileNotFoundError:
            raise _err(list_file, f"VOC split list is missing (is {self.root} a VOC20xx folder?)") from None
        for vid in ids:
            xml = self.root / "Annotations" / f"{vid}.xml"
            img = self.root / "JPEGImages" / f"{vid}.jpg"
            if not xml.is_file():
                self._note_bad(_err(xml, "annotation file is missing"), at_init=True)
            elif not img.is_file():
                self._note_bad(_err(img, "image file is missing"), at_init=True)
            else:
                self.items.append((img, xml))
        self._check_not_empty(list_file)

    def _parse(self, xml: Path):
        try:
            tree = ET.parse(xml)
        except (ET.ParseError, OSError) as e:
            raise _err(xml, f"cannot parse the XML ({e})") from None
        rows, diff = [], []
        for k, obj in enumerate(tree.getroot().iter("object")):
            name = (obj.findtext("name") or "").strip()
            if name not in self._index:
                raise _err(xml, f"object {k} has class {name!r}, which is not among the {self.nc} class names")
            bb = obj.find("bndbox")
            try:
                coords = [float(bb.findtext(t)) for t in ("xmin", "ymin", "xmax", "ymax")]
            except (AttributeError, TypeError, ValueError):
                raise _err(xml, f"object {k} ({name}) lacks a numeric bndbox xmin/ymin/xmax/ymax") from None
            d = (obj.findtext("difficult") or "0").strip()
            try:
                d = bool(int(float(d)))
            except ValueError:
                raise _err(xml, f"object {k} has a non-numeric 'difficult' ({d!r})") from None
            if d and not self.keep_difficult:
                continue
            rows.append([self._index[name]] + [v - 1.0 for v in coords])
            diff.append(d)
        return np.asarray(rows, dtype=np.float64).reshape(-1, 5), np.asarray(diff, dtype=bool)

    def _load(self, i):
        img, xml = self.items[i]
        rows, diff = self._parse(xml)
        image = load_image(img)
        h, w = image.shape[-2:]
        boxes, labels, difficult = _finish_boxes(rows[:, 1:], rows[:, 0].astype(np.int64), h, w, diff)
        return image, dict(boxes=boxes, labels=labels, difficult=difficult, image_id=i, orig_size=(h, w),
                           file=str(img))


# --------------------------------------------------------------------------------------------------
# Prophesee Gen1

_DAT_RAW = np.dtype([("t", "<u4"), ("_", "<u4")])


def _dat_header(path: Path) -> tuple[int, int, int]:
    """Parse a Prophesee ``.dat`` header: returns (offset of the first event, event type, event size).

    Header lines start with ``'% '``; if there is at least one, the next two bytes are the event type
    and the event size (uint8). A file without header lines has events from byte 0 (type 0, size 8).
    """
    try:
        with open(path, "rb") as f:
            n_lines = 0
            while True:
                pos = f.tell()
                line = f.readline()
                if line[:2] != b"% ":
                    break
                n_lines += 1
            f.seek(pos)
            if n_lines == 0:
                return pos, 0, 8
            two = f.read(2)
            if len(two) < 2:
                raise _err(path, "truncated: the header ends before the event type and size bytes")
            return pos + 2, two[0], two[1]
    except FileNotFoundError:
        raise _err(path, "event file is missing") from None
    except OSError as e:
        raise _err(path, f"cannot read ({e})") from None


def _open_dat(path: Path) -> np.memmap | np.ndarray:
    """Memory-map the raw events (``t`` uint32 us, ``_`` packed uint32) after checking the layout."""
    start, ev_type, ev_size = _dat_header(path)
    if ev_size != 8:
        raise _err(path, f"event size {ev_size} in the header; only 8-byte events (Event2D/CD) are supported")
    size = path.stat().st_size
    extra = (size - start) % 8
    if extra:
        raise _err(path, f"truncated: {extra} trailing byte(s) after the last whole 8-byte event "
                         "(partial last event); re-copy the file")
    n = (size - start) // 8
    if n == 0:
        return np.zeros(0, dtype=_DAT_RAW)
    return np.memmap(path, dtype=_DAT_RAW, mode="r", offset=start, shape=(n,))


def _decode(raw: np.ndarray):
    """Unpack the 32-bit word: x = bits 0-13, y = bits 14-27, polarity = bit 28 (bits 29-31 ignored)."""
    w = np.asarray(raw["_"], dtype=np.uint32)
    x = (w & 0x3FFF).astype(np.int64)
    y = ((w >> 14) & 0x3FFF).astype(np.int64)
    p = ((w >> 28) & 1).astype(np.uint8)
    return x, y, p


def read_prophesee_dat(path) -> np.ndarray:
    """All events of a Prophesee ``.dat`` file as a structured array ``t`` (uint32, us), ``x``, ``y``
    (uint16), ``p`` (uint8, 0/1). Raises ZooError on a truncated or unsupported file."""
    path = Path(path)
    raw = _open_dat(path)
    x, y, p = _decode(raw)
    out = np.empty(len(raw), dtype=[("t", "<u4"), ("x", "<u2"), ("y", "<u2"), ("p", "u1")])
    out["t"], out["x"], out["y"], out["p"] = raw["t"], x, y, p
    return out


def _gen1_boxes(rows: np.ndarray, h: int, w: int):
    """Boxes of one label time, as SpikeYOLO_for_Gen1/pre_gen1.py ``create_targets`` computes them.

    Keep the last row of every track_id (ordered by descending track_id); clamp x, w to [0, W] and
    y, h to [0, H] *separately*; centre = corner + size / 2, clamped again to [0, W] / [0, H]; drop
    boxes with w == 0 or h == 0. Returns (cx, cy, w, h) and the class ids.
    """
    _, first_in_flipped = np.unique(rows["track_id"][::-1], return_index=True)
    last = (len(rows) - 1 - first_in_flipped)[::-1]
    rows = rows[last]
    b = np.stack([rows["x"], rows["y"], rows["w"], rows["h"]], 1).astype(np.float32)
    b[:, 0::2] = b[:, 0::2].clip(0, w)
    b[:, 1::2] = b[:, 1::2].clip(0, h)
    b[:, 0] = b[:, 0] + b[:, 2] / 2
    b[:, 1] = b[:, 1] + b[:, 3] / 2
    b[:, 0::2] = b[:, 0::2].clip(0, w)
    b[:, 1::2] = b[:, 1::2].clip(0, h)
    keep = (b[:, 2] != 0) & (b[:, 3] != 0)
    return b[keep], rows["class_id"].astype(np.int64)[keep]


class Gen1Dataset(DetectionDataset):
    """Prophesee Gen1 Automotive: ``*_td.dat`` events + ``*_bbox.npy`` labels, sliced as
    SpikeYOLO's ``SpikeYOLO_for_Gen1/pre_gen1.py`` does.

    Layout: ``root/[split/]NAME_td.dat`` and ``NAME_bbox.npy`` (files sorted by name).

    Events (``.dat``, Prophesee toolbox ``src/io/dat_events_tools.py``): text header lines starting
    with ``'% '``, then 1 byte event type and 1 byte event size (8), then little-endian events of
    uint32 time stamp (us) and uint32 word: x = bits 0-13, y = bits 14-27, polarity = bit 28.
    A file whose event bytes are not a multiple of 8 (partial last event) is rejected (the official
    loader silently ignores the partial event).

    Labels (``.npy`` structured array): ``ts`` (or ``t``), ``x``, ``y`` (top-left corner), ``w``, ``h``
    in sensor pixels, ``class_id`` (0 car, 1 pedestrian), ``track_id`` (+ ``confidence``, unused).
    One sample per distinct label time ``t``:

    * events: the window ``[s, s + T*dt)`` with ``s = t - window_us`` and ``dt = window_us // T``,
      split into ``T`` slices (slice k covers ``[s + k*dt, s + (k+1)*dt)``); each slice becomes one
      frame of 127 with the pixel of an event set to 255 (positive) or 0 (negative), the last event in
      the slice winning; the 3 channels are equal. Returned as ``[T, 3, 240, 304]`` float (frame / 255).
    * labels earlier than ``window_us`` (``early_labels``): ``"official"`` (default) does what
      pre_gen1.py does. Gen1 stores ``ts`` as uint64, so its ``ts - sample_size`` wraps around, the
      loader seeks past the end of the file and the frames are all background (127); with a signed
      time field ``PSEELoader.seek_time`` resets to 0 and the window is ``[0, T*dt)``. ``"clamp"``
      always uses ``[0, T*dt)``; ``"drop"`` leaves such labels out (counted in ``early_dropped``).
    * boxes: as ``create_targets`` (see ``_gen1_boxes``: last row per track, the official separate
      clamping of corner and size, zero-size boxes dropped), converted to ``xyxy`` pixels; with
      ``clip_boxes=True`` (default) the result is also clipped to the 304x240 frame (the official
      pipeline can leave a box reaching past the right/bottom edge: ``clip_boxes=False`` keeps that).
      Label times left without any box are not samples (the official script returns None for them);
      their count is ``dataset.empty_labels``.
    * ``T`` default 2: the released SpikeYOLO Gen1 model (``gen1_yolo_T2`` in gen1.yaml, weights
      ``gen1_T2D4``); pre_gen1.py's own default is ``T = 4``. ``window_us`` 250 000 (``sample_size``).
    * Events outside the sensor make the sample bad (the official code asserts).
    * ``image_id`` is the sample's index; the target also has ``t_us`` (the label time).
    * Not reproduced on purpose: with repeated track ids at one label time the official script fails
      (its label array keeps the pre-deduplication length) or repeats the one kept box; here the
      last row per track is kept. Its binary search (``PSEELoader.seek_time``, files over 100 000
      events) can land after events whose time stamp equals the window start; here the window starts
      at the first such event.
    * A bad event or box file (``skip_bad=True``) counts once in ``skipped``, whatever its samples.
    """

    names = GEN1_CLASSES

    def __init__(self, root, split: str | None = None, T: int = 2, window_us: int = 250_000,
                 sensor_size: tuple[int, int] = GEN1_SENSOR, clip_boxes: bool = True,
                 early_labels: str = "official", transform=None, skip_bad: bool = False):
        super().__init__(transform, skip_bad)
        if early_labels not in ("official", "clamp", "drop"):
            raise ZooError(f"Gen1Dataset: early_labels must be 'official', 'clamp' or 'drop', not {early_labels!r}")
        self.early_labels = early_labels
        self.early_dropped = 0
        if int(T) < 1 or int(window_us) // int(T) < 1:
            raise ZooError(f"Gen1Dataset: need T >= 1 and window_us // T >= 1 us (got T={T}, window_us={window_us})")
        self.T, self.window_us = int(T), int(window_us)
        self.h, self.w = (int(v) for v in sensor_size)
        self.clip_boxes = clip_boxes
        self.root = Path(root) / split if split else Path(root)
        if not self.root.is_dir():
            raise _err(self.root, "Gen1 folder is missing")
        self.empty_labels = 0
        for bbox_file in sorted(self.root.glob("*_bbox.npy")):
            dat = bbox_file.with_name(bbox_file.name[: -len("_bbox.npy")] + "_td.dat")
            try:
                samples = self._index_file(bbox_file, dat)
            except ZooError as e:
                self._note_bad(e, at_init=True)
                continue
            self.items += samples
        self._check_not_empty(self.root)

    def _index_file(self, bbox_file: Path, dat: Path) -> list:
        try:
            boxes = np.load(bbox_file, allow_pickle=False)
        except (OSError, ValueError, EOFError) as e:
            raise _err(bbox_file, f"cannot read the box array ({e})") from None
        names = boxes.dtype.names or ()
        tkey = "t" if "t" in names else "ts"
        missing = [f for f in (tkey, "x", "y", "w", "h", "class_id", "track_id") if f not in names]
        if boxes.ndim != 1 or missing:
            raise _err(bbox_file, f"not a Gen1 box array (missing fields {missing or 'none'}, ndim {boxes.ndim})")
        if len(boxes) and (boxes["class_id"].max() >= len(self.names) or boxes["class_id"].min() < 0):
            raise _err(bbox_file, f"class_id outside 0..{len(self.names) - 1}")
        _open_dat(dat)  # header, size and truncation checks now, not mid-epoch
        blank_early = self.early_labels == "official" and boxes.dtype[tkey].kind == "u"
        t = boxes[tkey].astype(np.int64)
        order = np.argsort(t, kind="stable")  # group by label time, file order kept within a group
        uniq, starts = np.unique(t[order], return_index=True)
        out = []
        for ts, group in zip(uniq, np.split(order, starts[1:])):
            rows = boxes[group]
            early = int(ts) < self.window_us
            if early and self.early_labels == "drop":
                self.early_dropped += 1
                continue
            b, labels = _gen1_boxes(rows, self.h, self.w)
            if len(b) == 0:
                self.empty_labels += 1
                continue
            xyxy = np.concatenate([b[:, :2] - b[:, 2:] / 2, b[:, :2] + b[:, 2:] / 2], 1)
            out.append((dat, int(ts), xyxy, labels, early and blank_early))
        return out

    def frames(self, dat: Path, t_label: int, blank: bool = False) -> np.ndarray:
        """The ``[T, H, W]`` uint8 frames (127 / 255 / 0) of the window before ``t_label``."""
        raw = _open_dat(dat)
        if blank:
            return np.full((self.T, self.h, self.w), 127, dtype=np.uint8)
        dt = self.window_us // self.T
        start = max(t_label - self.window_us, 0)
        edges = start + dt * np.arange(self.T + 1, dtype=np.int64)
        # binary search on the memory map (np.searchsorted would copy the whole strided column)
        ts = raw["t"]
        idx = np.array([bisect.bisect_left(ts, int(e)) for e in edges], dtype=np.int64)
        chunk = np.asarray(raw[idx[0]: idx[-1]])
        x, y, p = _decode(chunk)
        frame = np.full((self.T * self.h * self.w,), 127, dtype=np.uint8)
        if len(chunk):
            if x.max() >= self.w or y.max() >= self.h:
                k = int(np.argmax((x >= self.w) | (y >= self.h)))
                raise _err(dat, f"event at x={x[k]}, y={y[k]} lies outside the {self.w}x{self.h} sensor")
            slice_of = np.repeat(np.arange(self.T), np.diff(idx))
            key = (slice_of * self.h + y) * self.w + x
            # last event per pixel and slice: first occurrence in the reversed sequence
            uniq, first_rev = np.unique(key[::-1], return_index=True)
            frame[uniq] = np.where(p[::-1][first_rev] == 1, 255, 0).astype(np.uint8)
        return frame.reshape(self.T, self.h, self.w)

    def _load(self, i):
        dat, ts, xyxy, labels, blank = self.items[i]
        fr = self.frames(dat, ts, blank)
        image = torch.from_numpy(fr).float().div_(255.0).unsqueeze(1).repeat(1, 3, 1, 1)
        boxes, labels = _finish_boxes(xyxy, labels, self.h, self.w, clip=self.clip_boxes)
        return image, dict(boxes=boxes, labels=labels, image_id=i, orig_size=(self.h, self.w), file=str(dat),
                           t_us=ts)


# --------------------------------------------------------------------------------------------------
# Format detection


def _coco_images_for(ann: Path) -> Path:
    """The image folder of ``.../annotations/instances_SPLIT.json``: ``SPLIT/`` or ``images/SPLIT/``
    next to the annotations folder (COCO's and ultralytics' layouts), or beside the JSON file."""
    split = ann.stem[len("instances_"):] if ann.stem.startswith("instances_") else ann.stem
    for cand in (ann.parent.parent / split, ann.parent.parent / "images" / split, ann.parent / split,
                 ann.parent / "images"):
        if cand.is_dir():
            return cand
    raise _err(ann, f"cannot find its image folder (tried {split}/ and images/{split}/ beside "
                    f"{ann.parent.name}/); build COCODataset(annotations, images) directly")


def load_dataset(path, split: str | None = None, **kwargs) -> DetectionDataset:
    """Open a detection data set by its on-disk layout (keywords go to the data set class):

    * ``*.json``, or a folder with ``annotations/instances_*.json``: COCO (``split`` picks
      ``instances_{split}.json``; default the one whose name has ``val``); images in ``{split}/`` or
      ``images/{split}/`` beside ``annotations/``.
    * ``*.yaml`` / ``*.yml``, or a folder with ``data.yaml``: ultralytics data file (split default ``val``).
    * a folder with ``Annotations/`` and ``ImageSets/Main/``: Pascal VOC (default split ``test`` if
      listed, else ``val``).
    * a folder with ``*_bbox.npy`` (directly or in ``{split}/``, default ``test``): Gen1.
    * a folder with ``images/`` and ``labels/``: YOLO txt (``images/{split}`` if present, default
      ``val`` then ``test``); needs ``names=``.
    """
    p = Path(path)
    if p.is_file():
        suffix = p.suffix.lower()
        if suffix == ".json":
            return COCODataset(p, _coco_images_for(p), **kwargs)
        if suffix in (".yaml", ".yml"):
            return YOLODataset.from_data_yaml(p, split or "val", **kwargs)
        raise _err(p, "unknown data file type; give a COCO .json, a data .yaml or a data set folder")
    if not p.is_dir():
        raise _err(p, "data path is missing")
    anns = sorted((p / "annotations").glob("instances_*.json"))
    if anns:
        if split is not None:
            pick = [a for a in anns if a.stem == f"instances_{split}"]
        else:
            pick = [a for a in anns if "val" in a.stem] or anns
        if not pick:
            raise _err(p, f"no annotations/instances_{split}.json (found {', '.join(a.name for a in anns)})")
        return COCODataset(pick[0], _coco_images_for(pick[0]), **kwargs)
    for name in ("data.yaml", "data.yml"):
        if (p / name).is_file():
            return YOLODataset.from_data_yaml(p / name, split or "val", **kwargs)
    if (p / "Annotations").is_dir() and (p / "ImageSets" / "Main").is_dir():
        if split is None:
            split = "test" if (p / "ImageSets" / "Main" / "test.txt").is_file() else "val"
        return VOCDataset(p, split, **kwargs)
    gen1_split = split or "test"
    if any((p / gen1_split).glob("*_bbox.npy")):
        return Gen1Dataset(p, gen1_split, **kwargs)
    if any(p.glob("*_bbox.npy")):
        return Gen1Dataset(p, **kwargs)
    if (p / "images").is_dir() and (p / "labels").is_dir():
        if "names" not in kwargs:
            raise _err(p, "a YOLO-layout folder needs class names: load_dataset(path, names=[...]) or a data.yaml")
        images = p / "images"
        for cand in ([split] if split else ["val", "test"]):
            if (images / cand).is_dir():
                images = images / cand
                break
        else:
            if split:
                raise _err(images / split, "split folder is missing")
        return YOLODataset(images, **kwargs)
    raise _err(p, "unrecognised data set layout; expected COCO (annotations/instances_*.json), a data.yaml, "
                  "VOC (Annotations/, ImageSets/Main/), Gen1 (*_bbox.npy + *_td.dat) or YOLO (images/, labels/)")


# --------------------------------------------------------------------------------------------------
# Transforms and batching


class Letterbox:
    """Resize (keeping the aspect ratio) and pad to ``size`` x ``size``, as ultralytics' LetterBox:
    scale ``r = min(size / H, size / W)`` (not above 1 with ``scaleup=False``), new size
    ``round(W r) x round(H r)``, bilinear resize, pad centred with ``fill`` / 255 (114 by default),
    top/left ``round(pad / 2 - 0.1)``. Works on ``[..., C, H, W]`` (Gen1 ``[T, 3, H, W]`` too) and
    moves the boxes; records ``target['letterbox'] = dict(scale=(sy, sx), pad=(left, top))`` so that
    predictions can be mapped back with ``(box - pad) / scale``."""

    def __init__(self, size: int | tuple[int, int] = 640, fill: int = 114, scaleup: bool = True):
        self.size = (size, size) if isinstance(size, int) else tuple(size)
        self.fill = fill
        self.scaleup = scaleup

    def __call__(self, image: torch.Tensor, target: dict):
        th, tw = self.size
        h, w = image.shape[-2:]
        r = min(th / h, tw / w)
        if not self.scaleup:
            r = min(r, 1.0)
        nh, nw = int(round(h * r)), int(round(w * r))
        if (nh, nw) != (h, w):
            lead = image.shape[:-3]
            flat = image.reshape(-1, *image.shape[-3:])
            flat = torch.nn.functional.interpolate(flat, size=(nh, nw), mode="bilinear", align_corners=False)
            image = flat.reshape(*lead, *flat.shape[-3:])
        dh, dw = (th - nh) / 2, (tw - nw) / 2
        top, bottom = int(round(dh - 0.1)), int(round(dh + 0.1))
        left, right = int(round(dw - 0.1)), int(round(dw + 0.1))
        image = torch.nn.functional.pad(image, (left, right, top, bottom), value=self.fill / 255.0)
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


def flatten_targets(targets: Sequence[dict]) -> dict:
    """ultralytics-style flat targets: ``batch_idx`` [M], ``cls`` [M], ``bboxes`` [M, 4] (xyxy pixels)."""
    idx = [torch.full((len(t["labels"]),), k, dtype=torch.int64) for k, t in enumerate(targets)]
    return dict(
        batch_idx=torch.cat(idx) if idx else torch.zeros(0, dtype=torch.int64),
        cls=torch.cat([t["labels"] for t in targets]) if targets else torch.zeros(0, dtype=torch.int64),
        bboxes=torch.cat([t["boxes"] for t in targets]) if targets else torch.zeros(0, 4),
    )
