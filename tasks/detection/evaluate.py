"""COCO-style detection evaluation: mAP@50 and mAP@50:95 with pycocotools, plus energy.

:func:`coco_map` scores detections against ground truth held in memory with
pycocotools' ``COCOeval`` (the numbers SpikeYOLO's validator reports for COCO).
:func:`evaluate` runs a model over a data set the way ultralytics' validation
does (rectangular letterbox at ``imgsz``, NMS with ``conf=0.001, iou=0.7,
multi_label=True, max_det=300``), maps the boxes back to the original image and
scores them; it also profiles the first image with :func:`zoo.profile`.

Data set contract (that of :mod:`tasks.detection.data`, with no resizing
transform): any iterable of ``(image, target)`` with ``image`` a float tensor
``[3, H, W]`` (Gen1: ``[T, 3, H, W]``) in [0, 1] and ``target`` a dict with
``boxes`` (xyxy in the pixels of ``image``), ``labels`` (0..nc-1),
``image_id`` and optionally ``orig_size`` ((h, w) of the original image; if it
differs from the image, predictions and boxes are both scaled to it),
``iscrowd`` and ``area`` (COCO's crowd flags and segment areas; default 0 and
the box area).

Ground truth: a data set with an ``annotation_file`` (COCO instances JSON) and
``category_ids`` (label -> COCO category id), as ``tasks.detection.data``'s
COCO data set has, is scored against that file, as ultralytics does for COCO
(crowd regions ignored, official areas); any other data set against its
targets (:func:`coco_map`).
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import asdict, dataclass, field
from typing import Iterable, Sequence

import numpy as np
import torch

from zoo.errors import ZooError

from zoo.vision import letterbox, model_device_dtype, profile_first_sample

from .classes import COCO80_TO_COCO91
from .postprocess import model_output, non_max_suppression, scale_boxes, val_shape

STAT_NAMES = ("mAP50:95", "mAP50", "mAP75", "mAP_small", "mAP_medium", "mAP_large",
              "AR1", "AR10", "AR100", "AR_small", "AR_medium", "AR_large")


def _np(x, dtype=np.float64, shape=None) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    a = np.asarray(x if x is not None else [], dtype=dtype)
    return a.reshape(shape) if shape is not None else a.reshape(-1)


def _image_id(v):
    if isinstance(v, torch.Tensor):
        v = v.item()
    if isinstance(v, (np.integer,)):
        v = int(v)
    return v


def _xywh(boxes: np.ndarray) -> np.ndarray:
    out = boxes.copy()
    out[:, 2:] -= out[:, :2]
    return out


def _coco_gt(targets: Sequence[dict]):
    from pycocotools.coco import COCO

    images, annotations, cats = [], [], set()
    for t in targets:
        img_id = _image_id(t["image_id"])
        boxes = _np(t.get("boxes"), shape=(-1, 4))
        labels = _np(t.get("labels"), np.int64)
        n = len(boxes)
        if len(labels) != n:
            raise ZooError(f"image {img_id}: {n} boxes but {len(labels)} labels")
        crowd = _np(t["iscrowd"], np.int64) if t.get("iscrowd") is not None else np.zeros(n, np.int64)
        wh = boxes[:, 2:] - boxes[:, :2]
        area = _np(t["area"]) if t.get("area") is not None else wh[:, 0] * wh[:, 1]
        size = t.get("orig_size")
        h, w = (int(size[0]), int(size[1])) if size is not None else (0, 0)
        images.append({"id": img_id, "height": h, "width": w})
        for b, c, cr, ar in zip(_xywh(boxes), labels, crowd, area):
            cats.add(int(c))
            annotations.append({"id": len(annotations) + 1, "image_id": img_id, "category_id": int(c),
                                "bbox": [float(v) for v in b], "area": float(ar), "iscrowd": int(cr)})
    if len({i["id"] for i in images}) != len(images):
        raise ZooError("the ground truth has repeated image_id values; every image needs its own id")
    gt = COCO()
    gt.dataset = {"images": images, "annotations": annotations, "categories": [{"id": c} for c in sorted(cats)]}
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    return gt


def to_coco_results(detections: Sequence[dict], category_ids: Sequence[int] | None = None) -> list[dict]:
    """Detections (per image: ``image_id``, ``boxes`` xyxy, ``scores``, ``labels``) as COCO result records.

    ``category_ids[label]`` gives the written ``category_id`` (e.g.
    :data:`COCO80_TO_COCO91` for the official COCO JSON); default the label itself.
    """
    out = []
    for d in detections:
        img_id = _image_id(d["image_id"])
        boxes = _xywh(_np(d.get("boxes"), shape=(-1, 4)))
        for b, s, c in zip(boxes, _np(d.get("scores")), _np(d.get("labels"), np.int64)):
            out.append({"image_id": img_id, "category_id": int(category_ids[c]) if category_ids is not None else int(c),
                        "bbox": [float(v) for v in b], "score": float(s)})
    return out


def coco_map(detections: Sequence[dict], targets: Sequence[dict]) -> dict:
    """COCO box mAP of ``detections`` against ``targets``, computed by pycocotools' ``COCOeval``.

    ``detections``: per image ``{"image_id", "boxes" [n, 4] xyxy, "scores" [n], "labels" [n]}``;
    ``targets``: per image ``{"image_id", "boxes" [m, 4] xyxy, "labels" [m]}`` (optional
    ``iscrowd``, ``area``, ``orig_size``). Returns ``{"map50", "map50_95", "stats"}`` with
    ``stats`` COCOeval's 12 numbers by name (-1 where undefined). Labels are used as
    category ids on both sides, so any consistent numbering works.
    """
    gt = _coco_gt(targets)
    if not gt.dataset["annotations"]:
        raise ZooError("the ground truth has no boxes; there is nothing to evaluate against")
    return _evaluate(gt, to_coco_results(detections), "the ground truth")


def _evaluate(gt, results: list[dict], where: str, image_ids=None) -> dict:
    """COCOeval of ``results`` against the pycocotools ``gt`` (optionally on ``image_ids`` only)."""
    from pycocotools.cocoeval import COCOeval

    unknown = {r["image_id"] for r in results} - set(gt.imgs)
    if unknown:
        raise ZooError(f"detections for image ids not in {where} (e.g. {sorted(unknown, key=str)[0]!r})")
    if not results:
        return _no_results()
    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(gt, gt.loadRes(results), "bbox")
    if image_ids is not None:
        ev.params.imgIds = sorted({_image_id(i) for i in image_ids})
    return _summarize(ev)


def _summarize(ev) -> dict:
    with contextlib.redirect_stdout(io.StringIO()):
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    stats = [float(s) for s in ev.stats]
    return {"map50": max(stats[1], 0.0), "map50_95": max(stats[0], 0.0), "stats": dict(zip(STAT_NAMES, stats))}


def _no_results() -> dict:
    return {"map50": 0.0, "map50_95": 0.0, "stats": {k: 0.0 for k in STAT_NAMES}}


def coco_map_json(
    detections: Sequence[dict],
    annotation_file,
    category_ids: Sequence[int] | None = None,
    image_ids: Sequence | None = None,
) -> dict:
    """Like :func:`coco_map`, against a COCO instances JSON (the official route for COCO numbers).

    ``category_ids[label]`` is the JSON's category id of each label (default the
    label itself); ``image_ids``: score only these images (default all in the file).
    """
    from pycocotools.coco import COCO  # a dependency of the zoo (pyproject.toml)

    try:
        with contextlib.redirect_stdout(io.StringIO()):
            gt = COCO(str(annotation_file))
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ZooError(f"cannot read COCO annotations {annotation_file} ({e})") from None
    return _evaluate(gt, to_coco_results(detections, category_ids), str(annotation_file), image_ids)


@dataclass
class DetectionEval:
    """What :func:`evaluate` measured. mAPs are fractions (0..1); energy is for the first image."""

    map50: float
    map50_95: float
    images: int
    stats: dict = field(default_factory=dict)
    firing_rate: float | None = None
    energy_mj: float | None = None
    macs: int | None = None
    acs: int | None = None
    imgsz: int = 640
    nc: int = 0  # classes the model predicts
    ground_truth: str = "targets"  # what the detections were scored against: "targets" or the annotation file
    detections: list = field(default_factory=list, repr=False)

    def to_dict(self, with_detections: bool = False) -> dict:
        d = asdict(self)
        if not with_detections:
            d.pop("detections")
        return d


def _check_item(item, index: int):
    try:
        image, target = item
    except (TypeError, ValueError):
        raise ZooError(f"data set item {index} is not an (image, target) pair") from None
    if not isinstance(image, torch.Tensor) or image.dim() not in (3, 4) or image.shape[-3] != 3:
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise ZooError(f"data set item {index}: expected an image tensor [3, H, W] (or frames [T, 3, H, W]), got {shape}")
    if not isinstance(target, dict) or "image_id" not in target or "boxes" not in target or "labels" not in target:
        raise ZooError(f"data set item {index}: the target must be a dict with boxes, labels and image_id")
    return image, target


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    dataset: Iterable,
    imgsz: int = 640,
    batch_size: int = 1,
    conf: float = 0.001,
    iou: float = 0.7,
    max_det: int = 300,
    stride: int = 32,
    rect: bool = True,
    max_images: int | None = None,
    energy: bool = True,
    progress: bool = False,
    ground_truth="auto",
) -> DetectionEval:
    """Run ``model`` over ``dataset`` and return COCO mAP@50 and mAP@50:95 (see the module doc).

    Each batch is letterboxed onto one canvas: the rectangular validation shape
    of its images (:func:`val_shape`, ``rect=True``) or ``imgsz`` x ``imgsz``.
    ultralytics sorts the whole data set by aspect ratio before batching; this
    does not, so with ``batch_size > 1`` canvases can be larger than theirs
    (``batch_size=1`` gives each image its own validation shape).
    ``energy``: profile the first image with :func:`zoo.vision.profile_first_sample`.
    ``ground_truth``: ``"auto"`` (the data set's ``annotation_file`` if it has
    one, else its targets), ``"targets"``, or the path of a COCO instances JSON
    (labels mapped by the data set's ``category_ids`` if it has them).
    """
    from spikingjelly.activation_based import functional
    from tqdm import tqdm

    if imgsz <= 0 or batch_size <= 0:
        raise ZooError(f"imgsz and batch size must be positive, got {imgsz} and {batch_size}")
    model.eval()
    device, dtype = model_device_dtype(model)
    detections, targets = [], []
    result = DetectionEval(0.0, 0.0, 0, imgsz=imgsz)
    total = None
    try:
        total = len(dataset)  # type: ignore[arg-type]
        total = min(total, max_images) if max_images is not None else total
    except TypeError:
        pass
    bar = tqdm(total=total, desc="eval", unit="img", disable=not progress, leave=False)

    def run(batch):
        images = [im for im, _ in batch]
        canvas = val_shape([im.shape[-2:] for im in images], imgsz, stride) if rect else (imgsz, imgsz)
        boxed = [letterbox(im, imgsz, stride, shape=canvas) for im in images]  # [T, 3, H, W] frames alike
        x = torch.stack([b[0] for b in boxed]).to(device=device, dtype=dtype)
        if energy and result.energy_mj is None:
            p = profile_first_sample(model, x)
            result.firing_rate, result.energy_mj, result.macs, result.acs = p.firing_rate, p.energy_mj, p.macs, p.acs
        functional.reset_net(model)
        y = model_output(model(x))
        result.nc = y.shape[1] - 4
        preds = non_max_suppression(y, conf=conf, iou=iou, max_det=max_det, multi_label=True)
        for (image, target), (_, ratio, pad), det in zip(batch, boxed, preds):
            h, w = image.shape[-2:]
            size = target.get("orig_size")
            oh, ow = (int(size[0]), int(size[1])) if size is not None else (h, w)
            boxes = scale_boxes(det[:, :4].cpu(), ratio, pad, (h, w))
            gt_boxes = torch.as_tensor(target["boxes"], dtype=torch.float64).reshape(-1, 4)
            if (oh, ow) != (h, w):  # the data set resized the image: score in original pixels
                gain = torch.tensor([ow / w, oh / h, ow / w, oh / h])
                boxes, gt_boxes = boxes * gain, gt_boxes * gain.double()
            detections.append({"image_id": _image_id(target["image_id"]), "boxes": boxes,
                               "scores": det[:, 4].cpu(), "labels": det[:, 5].cpu().long()})
            targets.append({k: v for k, v in target.items() if k in ("image_id", "labels", "iscrowd", "area")}
                           | {"boxes": gt_boxes, "orig_size": (oh, ow)})
        bar.update(len(batch))

    batch = []
    try:
        for i, item in enumerate(dataset):
            if max_images is not None and i >= max_images:
                break
            batch.append(_check_item(item, i))
            if len(batch) == batch_size:
                run(batch)
                batch = []
        if batch:
            run(batch)
    finally:
        bar.close()
    if not targets:
        raise ZooError("the data set is empty; there is nothing to evaluate")
    ann = getattr(dataset, "annotation_file", None) if ground_truth == "auto" else (
        None if ground_truth == "targets" else ground_truth)
    if ann is not None:
        ids = getattr(dataset, "category_ids", None)
        scores = coco_map_json(detections, ann, ids, [t["image_id"] for t in targets])
        result.ground_truth = str(ann)
    else:
        scores = coco_map(detections, targets)
    result.map50, result.map50_95, result.stats = scores["map50"], scores["map50_95"], scores["stats"]
    result.images = len(targets)
    result.detections = detections
    return result


__all__ = ["coco_map", "coco_map_json", "evaluate", "DetectionEval", "to_coco_results", "COCO80_TO_COCO91", "STAT_NAMES"]
