"""Detection data sets in one common form: COCO, YOLO txt, Pascal VOC, Prophesee Gen1, EvDET200K.

Every data set here yields ``(image, target)``:

* ``image``: ``float32`` in [0, 1], ``[3, H, W]`` for still images (:func:`zoo.vision.load_image`'s
  contract, with the stored pixel grid: EXIF orientation not applied, as the boxes refer to it), and
  ``[T, 3, H, W]`` for Gen1 event frames (the frame value divided by 255: background 127/255,
  positive event 1, negative event 0). No resizing: use :class:`Letterbox` (or your own
  ``transform``) to reach the model's input size.
* ``target``: a dict with ``boxes`` (``float32 [N, 4]``, ``x1 y1 x2 y2`` in pixels of the
  returned image), ``labels`` (``int64 [N]``, class index ``0..nc-1`` in ``dataset.names``),
  ``image_id`` (int), ``orig_size`` (``(H, W)`` before any transform) and ``file`` (str).
  VOC adds ``difficult`` (bool ``[N]``); Gen1 adds ``t_us`` (the label time stamp).

Boxes are clipped to the image by every adapter, and boxes with non-positive width or height (or
none left after clipping) are dropped (the official pipelines differ here and there; each class
says where). Neither happens silently: ``dataset.dropped`` and ``dataset.clipped`` count them (what
indexing found plus the samples read so far), ``dataset.box_summary()`` says it in one line, a
warning gives that line when indexing finds some, and ``zoo eval`` / ``zoo train`` print it.

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

One module per format: :mod:`.coco`, :mod:`.yolo`, :mod:`.voc`, :mod:`.gen1`, :mod:`.evdet200k`;
:mod:`.common` holds the base class, config/names files, :class:`Letterbox` and batching;
:mod:`.load` finds the format of a path (:func:`load_dataset`). Class-name tables live in
:mod:`tasks.detection.classes`.
"""

from __future__ import annotations

from ..classes import COCO80_TO_COCO91, EVDET200K_CLASSES, GEN1_NAMES, VOC_CLASSES
from .coco import COCODataset
from .common import DetectionDataset, Letterbox, collate, load_names, read_config
from .evdet200k import EvDET200KDataset
from .gen1 import GEN1_SENSOR, Gen1Dataset, read_prophesee_dat
from .load import load_dataset
from .voc import VOCDataset
from .yolo import YOLODataset

__all__ = [
    "VOC_CLASSES", "GEN1_NAMES", "EVDET200K_CLASSES", "COCO80_TO_COCO91", "GEN1_SENSOR",
    "DetectionDataset", "COCODataset", "YOLODataset", "VOCDataset", "Gen1Dataset", "EvDET200KDataset",
    "Letterbox", "collate", "load_dataset", "read_prophesee_dat", "load_names",
    "read_config",
]
