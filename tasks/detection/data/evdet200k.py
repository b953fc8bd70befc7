"""EvDET200K event frames in the YOLO layout, as TDE uses them."""

from __future__ import annotations

from pathlib import Path

from zoo.vision import file_error

from ..classes import EVDET200K_CLASSES
from .yolo import YOLODataset

__all__ = ["EvDET200KDataset"]


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
            raise file_error(images, f"EvDET200K split folder is missing (expected {root}/images/{split} and "
                                      f"{root}/labels/{split})")
        super().__init__(images, EVDET200K_CLASSES, transform=transform, skip_bad=skip_bad)
