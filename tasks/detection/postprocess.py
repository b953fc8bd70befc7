"""Detection post-processing: NMS, box rescaling, the validation canvas.

The semantics follow ultralytics 8.0.197 (the version SpikeYOLO vendors), written
here from its documented behaviour; no ultralytics code is used:

* :func:`non_max_suppression` keeps boxes whose best class probability is
  *strictly* above ``conf``, runs class-aware NMS at ``iou`` and keeps at most
  ``max_det`` boxes by score; ``multi_label=True`` (validation) turns every
  (box, class) pair above ``conf`` into a candidate;
* :func:`scale_boxes` undoes :func:`zoo.vision.letterbox` (the padding and the
  ratio) and clips to the image;
* :func:`val_shape` is the canvas of ultralytics' rectangular validation.

Image reading and the letterbox live in :mod:`zoo.vision`, the class tables and
the COCO category table in :mod:`tasks.detection.classes`.

Model output contract: ``[B, 4 + nc, A]`` with boxes ``(cx, cy, w, h)`` in
input pixels and class probabilities after the sigmoid, or a tuple whose first
element is that tensor.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torchvision

from zoo.errors import ZooError

from .classes import COCO80_TO_COCO91, COCO91_TO_COCO80, COCO_NAMES, GEN1_NAMES  # noqa: F401  (re-exported)


def class_names(nc: int, names: Sequence[str] | dict | None = None) -> list[str]:
    """Names for ``nc`` classes: the given ones, COCO's for 80, Gen1's for 2, else ``class0``, ``class1``..."""
    if isinstance(names, dict):
        names = [names.get(i, f"class{i}") for i in range(nc)]
    if names is not None and len(names) >= nc:
        return list(names)[:nc]
    if nc == len(COCO_NAMES):
        return list(COCO_NAMES)
    if nc == len(GEN1_NAMES):
        return list(GEN1_NAMES)
    return [f"class{i}" for i in range(nc)]


# --------------------------------------------------------------------------- canvas


def val_shape(sizes: Sequence[tuple[int, int]], imgsz: int = 640, stride: int = 32, pad: float = 0.5) -> tuple[int, int]:
    """The canvas (h, w) ultralytics' rectangular validation gives a batch of images of ``sizes`` (h, w).

    The batch's aspect ratios set the canvas; ``pad`` is half a stride of extra border, as in validation.
    """
    ratios = [h / w for h, w in sizes]
    lo, hi = min(ratios), max(ratios)
    s = (hi, 1.0) if hi < 1 else (1.0, 1.0 / lo) if lo > 1 else (1.0, 1.0)
    return tuple(int(math.ceil(v * imgsz / stride + pad)) * stride for v in s)


# --------------------------------------------------------------------------- boxes


def xywh2xyxy(x: torch.Tensor) -> torch.Tensor:
    """(cx, cy, w, h) -> (x1, y1, x2, y2), last dim; returns a new tensor."""
    xy, wh = x[..., :2], x[..., 2:4] / 2
    return torch.cat((xy - wh, xy + wh), -1)


def scale_boxes(
    boxes: torch.Tensor,
    ratio: float,
    pad: tuple[float, float],
    orig_shape: tuple[int, int],
) -> torch.Tensor:
    """Map xyxy ``boxes`` from the letterboxed image back to the original (h, w) ``orig_shape``.

    Undoes :func:`letterbox` (subtract ``pad`` = (left, top), divide by
    ``ratio``) and clips to the image. Returns a new tensor.
    """
    out = boxes[..., :4].clone().float()
    out[..., [0, 2]] -= pad[0]
    out[..., [1, 3]] -= pad[1]
    out /= ratio
    h, w = orig_shape
    out[..., [0, 2]] = out[..., [0, 2]].clamp(0, w)
    out[..., [1, 3]] = out[..., [1, 3]].clamp(0, h)
    return out


def model_output(out) -> torch.Tensor:
    """The ``[B, 4 + nc, A]`` prediction tensor from a model's eval output (tensor, or tuple ``(y, raw)``)."""
    if isinstance(out, (list, tuple)):
        if not out:
            raise ZooError("the model returned an empty output; is it in eval mode?")
        out = out[0]
    if not isinstance(out, torch.Tensor) or out.dim() != 3 or out.shape[1] < 5:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ZooError(f"expected detections [B, 4 + classes, anchors] from the model, got {shape}; "
                       "is it a detection model in eval mode?")
    return out


@torch.no_grad()
def non_max_suppression(
    prediction,
    conf: float = 0.25,
    iou: float = 0.7,
    max_det: int = 300,
    multi_label: bool = False,
    agnostic: bool = False,
    classes: Sequence[int] | None = None,
    max_nms: int = 30000,
) -> list[torch.Tensor]:
    """Class-aware NMS over decoded predictions ``[B, 4 + nc, A]`` (xywh, class probabilities).

    Returns one ``[n, 6]`` tensor per image: ``x1, y1, x2, y2, score, class``,
    sorted by score. Defaults are ultralytics' predict settings; validation
    uses ``conf=0.001, multi_label=True``. ``agnostic``: one NMS over all
    classes. ``classes``: keep only these class ids. At most ``max_nms``
    highest-scoring candidates enter NMS. The input is not modified.
    """
    if not 0 <= conf <= 1:
        raise ZooError(f"confidence threshold must be in [0, 1], got {conf}")
    if not 0 <= iou <= 1:
        raise ZooError(f"IoU threshold must be in [0, 1], got {iou}")
    pred = model_output(prediction)
    nc = pred.shape[1] - 4
    multi_label = multi_label and nc > 1
    pred = pred.transpose(1, 2).float()  # [B, A, 4 + nc]
    keep_cls = None if classes is None else torch.as_tensor(list(classes), device=pred.device)
    output = []
    for x in pred:
        x = x[x[:, 4:].amax(1) > conf]  # candidates: best class above the threshold
        box, cls = xywh2xyxy(x[:, :4]), x[:, 4:]
        if multi_label:
            i, j = torch.nonzero(cls > conf, as_tuple=True)
            det = torch.cat((box[i], cls[i, j, None], j[:, None].float()), 1)
        else:
            score, j = cls.max(1, keepdim=True)
            det = torch.cat((box, score, j.float()), 1)[score.view(-1) > conf]
        if keep_cls is not None:
            det = det[(det[:, 5:6] == keep_cls).any(1)]
        if det.shape[0] > max_nms:
            det = det[det[:, 4].argsort(descending=True)[:max_nms]]
        if det.shape[0]:
            groups = torch.zeros_like(det[:, 5]) if agnostic else det[:, 5]
            det = det[torchvision.ops.batched_nms(det[:, :4], det[:, 4], groups, iou)[:max_det]]
        output.append(det)
    return output
