"""COCO instances JSON + image folder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from zoo.vision import file_error, load_image

from .common import DetectionDataset

__all__ = ["COCODataset", "coco_images_for"]


class COCODataset(DetectionDataset):
    """COCO ``instances_*.json`` + image folder (no pycocotools needed).

    * Classes: the JSON's category ids, sorted ascending, map to ``0..nc-1`` (for COCO 2017 this is
      ultralytics' ``coco91_to_coco80_class`` table). ``category_ids`` / ``coco80_to_91`` give the
      inverse (contiguous index -> COCO id) for writing results; ``names`` follow the same order.
    * As ultralytics' ``convert_coco``: ``iscrowd`` annotations are skipped, boxes with
      ``w <= 0`` or ``h <= 0`` are dropped (counted in ``dropped`` while indexing), and exact
      duplicates (same class and box) are kept once.
    * Boxes: COCO ``[x, y, w, h]`` -> ``[x, y, x + w, y + h]``, clipped to the decoded image
      (counted in ``clipped``, or in ``dropped`` when nothing is left).
    * Images are read with the stored pixel grid (``load_image(..., exif=False)``): COCO's boxes
      refer to the stored pixels.
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
            raise file_error(ann_path, "annotation file is missing") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise file_error(ann_path, f"not valid JSON ({e})") from None
        if not isinstance(data, dict):
            raise file_error(ann_path, "expected a JSON object with 'images', 'annotations' and 'categories'")
        for key in ("images", "annotations", "categories"):
            if not isinstance(data.get(key), list):
                raise file_error(ann_path, f"missing or malformed field '{key}' (a list is required)")
        if not self.root.is_dir():
            raise file_error(self.root, "image folder is missing")

        cats = {}
        for k, c in enumerate(data["categories"]):
            if not isinstance(c, dict) or not isinstance(c.get("id"), int) or "name" not in c:
                raise file_error(ann_path, f"categories[{k}] lacks an integer 'id' or a 'name'")
            cats[c["id"]] = str(c["name"])
        self.category_ids: tuple[int, ...] = tuple(sorted(cats))
        self.names = tuple(cats[i] for i in self.category_ids)
        self.cat_to_label = {cid: k for k, cid in enumerate(self.category_ids)}

        order, info = [], {}
        for k, im in enumerate(data["images"]):
            if not isinstance(im, dict) or not isinstance(im.get("id"), int) or not isinstance(im.get("file_name"), str):
                raise file_error(ann_path, f"images[{k}] lacks an integer 'id' or a string 'file_name'")
            if im["id"] in info:
                raise file_error(ann_path, f"image id {im['id']} appears twice in 'images'")
            info[im["id"]] = im["file_name"]
            order.append(im["id"])

        per_image: dict[int, list] = {i: [] for i in order}
        empty_boxes: dict[int, int] = {}  # image id -> boxes with w <= 0 or h <= 0
        bad_images: dict[int, str] = {}
        for k, a in enumerate(data["annotations"]):
            if not isinstance(a, dict) or not isinstance(a.get("image_id"), int):
                raise file_error(ann_path, f"annotations[{k}] lacks an integer 'image_id'")
            iid = a["image_id"]
            if iid not in per_image:
                raise file_error(ann_path, f"annotations[{k}] refers to image id {iid}, which is not in 'images'")
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
                    raise file_error(ann_path, problem)
                bad_images.setdefault(iid, problem)
                continue
            x, y, w, h = (float(v) for v in bbox)
            if w <= 0 or h <= 0:
                empty_boxes[iid] = empty_boxes.get(iid, 0) + 1
                continue
            row = (self.cat_to_label[cid], x, y, x + w, y + h)
            if row not in per_image[iid]:
                per_image[iid].append(row)

        for iid in order:
            path = self.root / info[iid]
            if iid in bad_images:
                self._note_bad(file_error(ann_path, f"{bad_images[iid]} (image {path})"), at_init=True)
                continue
            if not path.is_file():
                self._note_bad(file_error(path, "image file is missing"), at_init=True)
                continue
            rows = np.asarray(per_image[iid], dtype=np.float64).reshape(-1, 5)
            self.items.append((iid, path, rows))
            self._count_boxes(dropped=empty_boxes.get(iid, 0))
        self._check_not_empty(ann_path)

    @property
    def coco80_to_91(self) -> tuple[int, ...]:
        """Contiguous class index -> COCO category id (the JSON's ids, sorted)."""
        return self.category_ids

    def _load(self, i):
        iid, path, rows = self.items[i]
        image = load_image(path, exif=False)
        h, w = image.shape[-2:]
        boxes, labels = self._boxes(i, rows[:, 1:], rows[:, 0].astype(np.int64), h, w)
        return image, dict(boxes=boxes, labels=labels, image_id=iid, orig_size=(h, w), file=str(path))


def coco_images_for(ann: Path) -> Path:
    """The image folder of ``.../annotations/instances_SPLIT.json``: ``SPLIT/`` or ``images/SPLIT/``
    next to the annotations folder (COCO's and ultralytics' layouts), or beside the JSON file."""
    split = ann.stem[len("instances_"):] if ann.stem.startswith("instances_") else ann.stem
    for cand in (ann.parent.parent / split, ann.parent.parent / "images" / split, ann.parent / split,
                 ann.parent / "images"):
        if cand.is_dir():
            return cand
    raise file_error(ann, f"cannot find its image folder (tried {split}/ and images/{split}/ beside "
                           f"{ann.parent.name}/); build COCODataset(annotations, images) directly")
