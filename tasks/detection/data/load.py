"""Open a detection data set by its on-disk layout."""

from __future__ import annotations

from pathlib import Path

from zoo.vision import file_error

from .coco import COCODataset, coco_images_for
from .common import DetectionDataset
from .gen1 import Gen1Dataset
from .voc import VOCDataset
from .yolo import YOLODataset

__all__ = ["load_dataset"]


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
            return COCODataset(p, coco_images_for(p), **kwargs)
        if suffix in (".yaml", ".yml"):
            return YOLODataset.from_data_yaml(p, split or "val", **kwargs)
        raise file_error(p, "unknown data file type; give a COCO .json, a data .yaml or a data set folder")
    if not p.is_dir():
        raise file_error(p, "data path is missing")
    anns = sorted((p / "annotations").glob("instances_*.json"))
    if anns:
        if split is not None:
            pick = [a for a in anns if a.stem == f"instances_{split}"]
        else:
            pick = [a for a in anns if "val" in a.stem] or anns
        if not pick:
            raise file_error(p, f"no annotations/instances_{split}.json (found {', '.join(a.name for a in anns)})")
        return COCODataset(pick[0], coco_images_for(pick[0]), **kwargs)
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
            raise file_error(p, "a YOLO-layout folder needs class names: load_dataset(path, names=[...]) or a data.yaml")
        images = p / "images"
        for cand in ([split] if split else ["val", "test"]):
            if (images / cand).is_dir():
                images = images / cand
                break
        else:
            if split:
                raise file_error(images / split, "split folder is missing")
        return YOLODataset(images, **kwargs)
    raise file_error(p, "unrecognised data set layout; expected COCO (annotations/instances_*.json), a data.yaml, "
                         "VOC (Annotations/, ImageSets/Main/), Gen1 (*_bbox.npy + *_td.dat) or YOLO (images/, labels/)")
