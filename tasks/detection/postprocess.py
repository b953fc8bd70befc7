"""Detection pre- and post-processing: image loading, letterbox, NMS, box rescaling, COCO names.

The semantics follow ultralytics 8.0.197 (the version SpikeYOLO vendors), written
here from its documented behaviour; no ultralytics code is used:

* :func:`letterbox` resizes keeping the aspect ratio and pads with grey 114,
  splitting the padding evenly (the odd pixel goes right / bottom);
* :func:`non_max_suppression` keeps boxes whose best class probability is
  *strictly* above ``conf``, runs class-aware NMS at ``iou`` and keeps at most
  ``max_det`` boxes by score; ``multi_label=True`` (validation) turns every
  (box, class) pair above ``conf`` into a candidate;
* :func:`scale_boxes` undoes the padding and the ratio and clips to the image.

Model output contract: ``[B, 4 + nc, A]`` with boxes ``(cx, cy, w, h)`` in
input pixels and class probabilities after the sigmoid, or a tuple whose first
element is that tensor.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
import torchvision

from zoo.errors import ZooError

PAD_VALUE = 114  # ultralytics' letterbox grey, in 0..255

from .classes import COCO80_TO_COCO91, COCO91_TO_COCO80, COCO_NAMES, GEN1_NAMES  # noqa: E402,F401  (re-exported)


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


# --------------------------------------------------------------------------- images


def load_image(path: str | Path) -> tuple[torch.Tensor, "PIL.Image.Image"]:  # noqa: F821
    """Read an image file as ``(tensor [3, H, W] float32 in [0, 1], 8-bit RGB PIL image)``.

    Any mode PIL opens is accepted: RGB, grayscale (copied to three channels),
    RGBA / LA (alpha dropped, as cv2.imread does for ultralytics), palette,
    CMYK, 1-bit, and 16-bit or float grayscale (scaled to [0, 1] at full
    precision). EXIF orientation is applied. Raises :class:`ZooError` for a
    missing, unreadable or corrupt file.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path)
    if not path.exists():
        raise ZooError(f"image not found: {path}")
    if path.is_dir():
        raise ZooError(f"{path} is a folder, not an image file")
    try:
        with Image.open(path) as im:
            im.load()
            im = ImageOps.exif_transpose(im) or im
            gray = _gray_high_precision(im)
            if gray is not None:
                tensor = torch.from_numpy(gray).unsqueeze(0).expand(3, -1, -1).contiguous()
                rgb = Image.fromarray(np.round(gray * 255).astype(np.uint8), "L").convert("RGB")
                return tensor, rgb
            if im.mode in ("P", "PA") and ("transparency" in im.info or im.mode == "PA"):
                im = im.convert("RGBA")
            rgb = im.convert("RGB")
    except UnidentifiedImageError:
        raise ZooError(f"{path} is not an image file that can be read (JPEG, PNG, BMP, TIFF, WebP, ...)") from None
    except Image.DecompressionBombError as e:
        raise ZooError(f"{path} is too large to decode safely ({e}); downscale it first") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise ZooError(f"{path} is corrupt or truncated ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    tensor = torch.from_numpy(np.array(rgb, dtype=np.uint8)).permute(2, 0, 1).float().div_(255)
    return tensor, rgb


def _gray_high_precision(im) -> np.ndarray | None:
    """A [H, W] float32 array in [0, 1] for 16-bit / 32-bit / float grayscale images, else None."""
    if im.mode.startswith("I;16"):
        return np.asarray(im).astype(np.float32) / 65535.0
    if im.mode == "I":
        a = np.asarray(im).astype(np.float64)
        top = 65535.0 if a.size == 0 or (a.min() >= 0 and a.max() <= 65535) else max(float(a.max()), 1.0)
        return np.clip(a / top, 0, 1).astype(np.float32)
    if im.mode == "F":
        a = np.nan_to_num(np.asarray(im).astype(np.float64))
        top = 1.0 if a.size == 0 or a.max() <= 1 else float(a.max())
        return np.clip(a / top, 0, 1).astype(np.float32)
    return None


# --------------------------------------------------------------------------- letterbox


def letterbox(
    image: torch.Tensor,
    imgsz: int | tuple[int, int] = 640,
    stride: int = 32,
    auto: bool = False,
    scaleup: bool = True,
    shape: tuple[int, int] | None = None,
    pad_value: int = PAD_VALUE,
) -> tuple[torch.Tensor, float, tuple[int, int]]:
    """Resize ``image`` [3, H, W] to fit ``imgsz`` keeping its aspect ratio, then pad.

    Returns ``(padded [3, H', W'] float in [0, 1], ratio, (pad_left, pad_top))``;
    a point ``p`` of the original maps to ``p * ratio + pad``.

    The canvas: ``shape`` (h, w) if given (e.g. a validation batch shape from
    :func:`val_shape`), else the smallest multiple of ``stride`` around the
    resized image if ``auto`` (ultralytics' predict), else ``imgsz`` itself.
    ``scaleup=False`` never enlarges. Downscaling is antialiased (close to
    cv2's INTER_AREA that ultralytics' validation loader uses), upscaling bilinear.
    """
    if not isinstance(image, torch.Tensor) or image.dim() != 3:
        raise ZooError(f"letterbox expects an image tensor [C, H, W], got {getattr(image, 'shape', type(image).__name__)}")
    if not image.is_floating_point():
        image = image.float().div(255)
    h, w = image.shape[-2:]
    if h == 0 or w == 0:
        raise ZooError(f"cannot letterbox an empty image of size {h}x{w}")
    th, tw = (imgsz, imgsz) if isinstance(imgsz, int) else (int(imgsz[0]), int(imgsz[1]))
    if th <= 0 or tw <= 0:
        raise ZooError(f"image size must be positive, got {imgsz}")
    r = min(th / h, tw / w)
    if not scaleup:
        r = min(r, 1.0)
    nh, nw = max(int(round(h * r)), 1), max(int(round(w * r)), 1)
    if shape is not None:
        ch, cw = int(shape[0]), int(shape[1])
        if ch < nh or cw < nw:
            raise ValueError(f"canvas {ch}x{cw} is smaller than the resized image {nh}x{nw}")
    elif auto:
        ch, cw = math.ceil(nh / stride) * stride, math.ceil(nw / stride) * stride
    else:
        ch, cw = th, tw
    if (nh, nw) != (h, w):
        image = F.interpolate(image[None].float(), size=(nh, nw), mode="bilinear", align_corners=False,
                              antialias=r < 1)[0].clamp_(0, 1)
    dh, dw = ch - nh, cw - nw
    top, left = dh // 2, dw // 2
    if dh or dw:
        image = F.pad(image, (left, dw - left, top, dh - top), value=pad_value / 255.0)
    return image, r, (left, top)


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
