"""Semantic segmentation data sets in their real on-disk layouts: ADE20K, Cityscapes, Pascal VOC 2012.

Every item is ``(image, label, name)``: ``image`` a float tensor ``[3, H, W]`` in [0, 1] (RGB),
``label`` a long tensor ``[H, W]`` of class indices with :data:`IGNORE` (255) where a pixel is not
scored, ``name`` the image's file name. Labels follow mmseg 1.x's loaders as the official Spike2Former
configs use them:

* ADE20K (``ADEChallengeData2016/{images,annotations}/{training,validation}``): 150 classes,
  ``reduce_zero_label``: 0 (other) becomes 255 and every other value drops by one;
* Cityscapes (``leftImg8bit/{train,val}/CITY/*_leftImg8bit.png`` + ``gtFine/.../*_gtFine_labelTrainIds.png``):
  19 classes; where only ``*_gtFine_labelIds.png`` exist they are converted with the official
  ``labelIds -> trainIds`` table (cityscapesScripts' ``labels.py``);
* VOC 2012 (``JPEGImages``, ``SegmentationClass``, ``ImageSets/Segmentation/{train,val}.txt``): 21 classes
  (background included), 255 the object borders.

A wrong layout, a missing or unreadable file, a label map of another size than its image, label values
outside the classes (other than 255) and an empty split are one-line :class:`ZooError` s naming the file;
nothing is skipped silently. Images and label files are read by :mod:`zoo.vision` (palette PNGs give their
indices, as mmseg's ``imfrombytes(..., flag='unchanged', backend='pillow')``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from zoo.errors import ZooError
from zoo.vision import load_image, load_mask

from .classes import ADE20K_CLASSES, CITYSCAPES_CLASSES, VOC_CLASSES

IGNORE = 255
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")

# cityscapesScripts labels.py: labelId -> trainId (255 = ignored), ids 0..33 (and -1 for license plate)
_CITYSCAPES_TRAIN_IDS = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12,
                         26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
CITYSCAPES_LABEL_TO_TRAIN = np.full(256, IGNORE, dtype=np.uint8)
for _id, _train in _CITYSCAPES_TRAIN_IDS.items():
    CITYSCAPES_LABEL_TO_TRAIN[_id] = _train


def _err(path, problem: str) -> ZooError:
    return ZooError(f"{path}: {problem}")


def read_image(path: Path) -> torch.Tensor:
    """RGB float ``[3, H, W]`` in [0, 1] with the EXIF orientation applied (as mmseg's cv2 decoding does)."""
    return load_image(path)


def read_label(path: Path) -> np.ndarray:
    """The label map's values as stored (``int64 [H, W]``; no EXIF rotation, as mmseg's Pillow label reading)."""
    return load_mask(path, exif=False).numpy()


class SegmentationDataset(torch.utils.data.Dataset):
    """Image/label pairs of one split; :meth:`label_of` applies the data set's label rule."""

    classes: tuple[str, ...] = ()
    name = "segmentation"

    def __init__(self, root: Path, split: str, pairs: list[tuple[Path, Path]]):
        self.root, self.split, self.pairs = Path(root), split, pairs
        if not pairs:
            raise ZooError(f"{self.name} {split} split in {root} is empty: no images with labels found")

    def __len__(self) -> int:
        return len(self.pairs)

    def label_of(self, raw: np.ndarray, path: Path) -> np.ndarray:
        """Stored label values -> class indices (255 = ignore)."""
        return raw

    def __getitem__(self, i: int):
        image_path, label_path = self.pairs[i]
        image = read_image(image_path)
        raw = read_label(label_path)
        if raw.shape != tuple(image.shape[1:]):
            raise _err(label_path, f"label map is {raw.shape[1]}x{raw.shape[0]} but its image {image_path.name} is "
                                   f"{image.shape[2]}x{image.shape[1]}")
        label = self.label_of(raw, label_path).astype(np.int64)
        bad = (label != IGNORE) & ((label < 0) | (label >= len(self.classes)))
        if bad.any():
            values = sorted(set(np.unique(label[bad]).tolist()))[:5]
            raise _err(label_path, f"label values {values} are outside the {len(self.classes)} classes of {self.name} "
                                   f"(0..{len(self.classes) - 1}, {IGNORE} = ignore)")
        return image, torch.from_numpy(label), image_path.name


def _need(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise ZooError(f"{path} is missing: {what}")
    return path


class ADE20K(SegmentationDataset):
    classes, name = ADE20K_CLASSES, "ADE20K"

    def __init__(self, root, split: str = "val"):
        root = Path(root)
        sub = {"train": "training", "val": "validation"}.get(split, split)
        layout = "expected ADEChallengeData2016/images/{training,validation} and annotations/{training,validation}"
        images, labels = _need(root / "images" / sub, layout), _need(root / "annotations" / sub, layout)
        pairs = [(p, labels / (p.stem + ".png")) for p in sorted(images.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES]
        super().__init__(root, split, pairs)

    def label_of(self, raw, path):  # reduce_zero_label
        label = raw.astype(np.int64) - 1
        label[raw == 0] = IGNORE
        label[raw == IGNORE] = IGNORE
        return label


class Cityscapes(SegmentationDataset):
    classes, name = CITYSCAPES_CLASSES, "Cityscapes"

    def __init__(self, root, split: str = "val"):
        root = Path(root)
        layout = "expected leftImg8bit/{train,val}/CITY/*_leftImg8bit.png and gtFine/{train,val}/CITY/*_gtFine_*.png"
        images, labels = _need(root / "leftImg8bit" / split, layout), _need(root / "gtFine" / split, layout)
        self.converted = 0  # labels read from *_labelIds.png (no labelTrainIds beside them)
        pairs = []
        for p in sorted(images.rglob("*_leftImg8bit.png")):
            stem = p.name[: -len("_leftImg8bit.png")]
            folder = labels / p.parent.relative_to(images)
            train_ids = folder / f"{stem}_gtFine_labelTrainIds.png"
            if not train_ids.is_file() and (folder / f"{stem}_gtFine_labelIds.png").is_file():
                train_ids = folder / f"{stem}_gtFine_labelIds.png"
                self.converted += 1
            pairs.append((p, train_ids))
        super().__init__(root, split, pairs)

    def label_of(self, raw, path):
        if path.name.endswith("_gtFine_labelIds.png"):  # no labelTrainIds file: convert as cityscapesScripts does
            if raw.min(initial=0) < 0 or raw.max(initial=0) > 255:
                raise _err(path, "labelIds outside 0..255")
            return CITYSCAPES_LABEL_TO_TRAIN[raw]
        return raw


class VOC2012(SegmentationDataset):
    classes, name = VOC_CLASSES, "Pascal VOC 2012"

    def __init__(self, root, split: str = "val"):
        root = Path(root)
        layout = "expected JPEGImages/, SegmentationClass/ and ImageSets/Segmentation/{train,val}.txt"
        images, labels = _need(root / "JPEGImages", layout), _need(root / "SegmentationClass", layout)
        listing = root / "ImageSets" / "Segmentation" / f"{split}.txt"
        if not listing.is_file():
            raise ZooError(f"{listing} is missing: {layout}")
        ids = [line.strip() for line in listing.read_text().splitlines() if line.strip()]
        pairs = []
        for i in ids:
            image = images / f"{i}.jpg"
            if not image.is_file():
                raise _err(image, f"listed in {listing.name} but missing")
            pairs.append((image, labels / f"{i}.png"))
        super().__init__(root, split, pairs)


def find_root(path: Path) -> tuple[type, Path]:
    """Which data set ``path`` holds (its root or a parent of it)."""
    path = Path(path)
    if not path.is_dir():
        raise ZooError(f"--data {path} is not a folder")
    for cls, marker in ((ADE20K, "images/validation"), (ADE20K, "images/training"), (Cityscapes, "leftImg8bit"),
                        (VOC2012, "ImageSets/Segmentation")):
        for root in (path, path / "ADEChallengeData2016", path / "VOC2012", path / "VOCdevkit" / "VOC2012"):
            if (root / marker).is_dir():
                return cls, root
    raise ZooError(f"{path} is not an ADE20K (ADEChallengeData2016/images, annotations), Cityscapes (leftImg8bit, "
                   "gtFine) or VOC 2012 (JPEGImages, SegmentationClass, ImageSets/Segmentation) folder")


def load_dataset(path, split: str = "val") -> SegmentationDataset:
    cls, root = find_root(path)
    return cls(root, split)


__all__ = ["ADE20K", "Cityscapes", "VOC2012", "SegmentationDataset", "load_dataset", "find_root", "read_label",
           "read_image", "IGNORE", "CITYSCAPES_LABEL_TO_TRAIN"]
