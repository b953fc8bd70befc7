"""Pascal VOC (Annotations/ XML, JPEGImages/, ImageSets/Main/)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from zoo.vision import file_error, load_image

from ..classes import VOC_CLASSES
from .common import DetectionDataset, load_names

__all__ = ["VOCDataset"]


class VOCDataset(DetectionDataset):
    """Pascal VOC: ``root/Annotations/{id}.xml``, ``root/JPEGImages/{id}.jpg``,
    ``root/ImageSets/Main/{split}.txt`` (``root`` is e.g. ``VOCdevkit/VOC2007``).

    * Boxes: VOC's 1-based inclusive pixel corners become ``[xmin - 1, ymin - 1, xmax - 1, ymax - 1]``
      (the conversion of ultralytics' VOC.yaml, which TDE uses: centre ``(xmin + xmax) / 2 - 1``,
      width ``xmax - xmin``), clipped to the image (counted in ``clipped``; a box with no area left
      is dropped and counted in ``dropped``). Images are read with their stored pixel grid
      (``load_image(..., exif=False)``).
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
            raise file_error(list_file, f"VOC split list is missing (is {self.root} a VOC20xx folder?)") from None
        for vid in ids:
            xml = self.root / "Annotations" / f"{vid}.xml"
            img = self.root / "JPEGImages" / f"{vid}.jpg"
            if not xml.is_file():
                self._note_bad(file_error(xml, "annotation file is missing"), at_init=True)
            elif not img.is_file():
                self._note_bad(file_error(img, "image file is missing"), at_init=True)
            else:
                self.items.append((img, xml))
        self._check_not_empty(list_file)

    def _parse(self, xml: Path):
        try:
            tree = ET.parse(xml)
        except (ET.ParseError, OSError) as e:
            raise file_error(xml, f"cannot parse the XML ({e})") from None
        rows, diff = [], []
        for k, obj in enumerate(tree.getroot().iter("object")):
            name = (obj.findtext("name") or "").strip()
            if name not in self._index:
                raise file_error(xml, f"object {k} has class {name!r}, which is not among the {self.nc} class names")
            bb = obj.find("bndbox")
            try:
                coords = [float(bb.findtext(t)) for t in ("xmin", "ymin", "xmax", "ymax")]
            except (AttributeError, TypeError, ValueError):
                raise file_error(xml, f"object {k} ({name}) lacks a numeric bndbox xmin/ymin/xmax/ymax") from None
            d = (obj.findtext("difficult") or "0").strip()
            try:
                d = bool(int(float(d)))
            except ValueError:
                raise file_error(xml, f"object {k} has a non-numeric 'difficult' ({d!r})") from None
            if d and not self.keep_difficult:
                continue
            rows.append([self._index[name]] + [v - 1.0 for v in coords])
            diff.append(d)
        return np.asarray(rows, dtype=np.float64).reshape(-1, 5), np.asarray(diff, dtype=bool)

    def _load(self, i):
        img, xml = self.items[i]
        rows, diff = self._parse(xml)
        image = load_image(img, exif=False)
        h, w = image.shape[-2:]
        boxes, labels, difficult = self._boxes(i, rows[:, 1:], rows[:, 0].astype(np.int64), h, w, diff)
        return image, dict(boxes=boxes, labels=labels, difficult=difficult, image_id=i, orig_size=(h, w),
                           file=str(img))
