"""Detect objects in images: :func:`detect` in memory, :func:`predict` over files and folders.

:func:`detect` takes image tensors (the :mod:`zoo.vision` contract, ``[3, H, W]`` in [0, 1]) or PIL
images, letterboxes each to ``imgsz`` (smallest multiple of the stride around it, as
ultralytics' predictor), runs NMS at the predict settings (``conf=0.25, iou=0.7, max_det=300``)
and maps the boxes back to the original pixels.

:func:`predict` is :func:`detect` plus files: it reads each image with
:func:`zoo.vision.load_image`, draws the boxes with PIL, writes the annotated copies and
``predictions.json`` into the output folder, profiles the first image with
:func:`zoo.vision.profile_first_sample` (firing rate, operations, energy) and times the detection
(frames per second). A file that cannot be read is reported and counted
(:attr:`Prediction.skipped`) and the others are still predicted; only when no file can be read
does it raise.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Sequence

import torch

from zoo.errors import ZooError
from zoo.vision import PredictionRun, as_images, find_images, letterbox, load_image, model_device_dtype, profile_first_sample, to_pil

from .postprocess import class_names, model_output, non_max_suppression, scale_boxes

_SAVE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
JSON_NAME = "predictions.json"

_PALETTE = ("#FF3838", "#2C99A8", "#FF9D97", "#48F90A", "#FF701F", "#00C2FF", "#FFB21D", "#3DDB86", "#CFD231",
            "#1A9334", "#00D4BB", "#344593", "#6473FF", "#0018EC", "#8438FF", "#520085", "#CB38FF", "#FF95C8",
            "#FF37C7", "#92CC17")


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):  # old Pillow or no FreeType: the fixed bitmap font
        return ImageFont.load_default()


def draw_detections(image, detections: Sequence[dict]):
    """Return a copy of the RGB PIL ``image`` with each detection's box and ``name score`` label drawn."""
    from PIL import ImageColor, ImageDraw

    im = image.convert("RGB").copy()
    draw = ImageDraw.Draw(im)
    lw = max(round(sum(im.size) / 2 * 0.003), 2)
    font = _font(max(round(lw * 5), 10))
    for d in detections:
        x1, y1, x2, y2 = d["box"]
        color = ImageColor.getrgb(_PALETTE[d["class_id"] % len(_PALETTE)])
        draw.rectangle((x1, y1, max(x2, x1), max(y2, y1)), outline=color, width=lw)
        label = f"{d['class_name']} {d['score']:.2f}"
        l, t, r, b = draw.textbbox((0, 0), label, font=font)
        tw, th = r - l, b - t + 2 * lw // 2 + 2
        ty = y1 - th if y1 - th >= 0 else y1  # above the box if it fits
        draw.rectangle((x1, ty, x1 + tw + 2 * lw, ty + th), fill=color)
        text = (0, 0, 0) if sum(color) > 384 else (255, 255, 255)
        draw.text((x1 + lw, ty + 1 - t), label, fill=text, font=font)
    return im


def _check_options(conf: float, iou: float, imgsz: int) -> None:
    if imgsz <= 0:
        raise ZooError(f"image size must be positive, got {imgsz}")
    if not 0 <= conf <= 1 or not 0 <= iou <= 1:
        raise ZooError(f"--conf and --iou must be in [0, 1], got {conf} and {iou}")


@torch.no_grad()
def detect(
    model: torch.nn.Module,
    images,
    conf: float = 0.25,
    iou: float = 0.7,
    imgsz: int = 640,
    max_det: int = 300,
    stride: int = 32,
    names: Sequence[str] | None = None,
) -> list[dict]:
    """Detect objects in in-memory images, one at a time (each on its own stride-multiple canvas).

    ``images``: a tensor ``[3, H, W]`` (float in [0, 1], or uint8) or a batch ``[B, 3, H, W]``, a PIL
    image, or a list of those. Returns one dict per image: ``boxes`` (float32 ``[n, 4]``, ``x1 y1 x2
    y2`` in the image's pixels), ``scores`` (``[n]``), ``labels`` (int64 ``[n]``) and ``names``
    (the ``n`` class names), sorted by score. ``names``: class names (default ``model.names``, else
    COCO's for 80 classes, Gen1's for 2).
    """
    from spikingjelly.activation_based import functional

    _check_options(conf, iou, imgsz)
    model.eval()
    device, dtype = model_device_dtype(model)
    names = names if names is not None else getattr(model, "names", None)
    out = []
    for image in as_images(images):
        h, w = image.shape[-2:]
        x, ratio, pad = letterbox(image, imgsz, stride, auto=True)
        functional.reset_net(model)
        y = model_output(model(x[None].to(device=device, dtype=dtype)))
        labels = class_names(y.shape[1] - 4, names)
        det = non_max_suppression(y, conf=conf, iou=iou, max_det=max_det)[0].cpu()
        cls = det[:, 5].long()
        out.append({"boxes": scale_boxes(det[:, :4], ratio, pad, (h, w)), "scores": det[:, 4], "labels": cls,
                    "names": [labels[c] for c in cls.tolist()]})
    return out


def _records(d: dict) -> list[dict]:
    """One :func:`detect` result as the JSON records of ``predictions.json``."""
    return [{"box": [round(float(v), 2) for v in b], "class_id": int(c), "class_name": n, "score": round(float(s), 4)}
            for b, s, c, n in zip(d["boxes"], d["scores"], d["labels"], d["names"])]


class Prediction(PredictionRun):
    """What :func:`predict` did (:class:`zoo.vision.PredictionRun`); ``seconds`` is the time in :func:`detect`."""

    timed = "letterbox, model, NMS"


def _output_name(src: Path, used: set[str]) -> str:
    suffix = src.suffix.lower() if src.suffix.lower() in _SAVE_SUFFIXES else ".png"
    name, k = f"{src.stem}{suffix}", 1
    while name in used or name == JSON_NAME:
        name, k = f"{src.stem}_{k}{suffix}", k + 1
    used.add(name)
    return name


def predict(
    model: torch.nn.Module,
    sources: Sequence[str | Path] | str | Path,
    out_dir: str | Path,
    conf: float = 0.25,
    iou: float = 0.7,
    imgsz: int = 640,
    max_det: int = 300,
    stride: int = 32,
    names: Sequence[str] | None = None,
    energy: bool = True,
) -> Prediction:
    """:func:`detect` on ``sources`` (image files and/or folders), with the results written into ``out_dir``.

    Writes one annotated image per input (same name; ``.png`` for formats other than
    JPEG/PNG/BMP/WebP) and ``predictions.json``: a list of ``{"file", "annotated", "width",
    "height", "detections": [{"box": [x1, y1, x2, y2] (original pixels), "class_id",
    "class_name", "score"}]}``. A file that cannot be read goes into ``Prediction.skipped``
    (``{"file", "error"}``) and the rest are predicted; if none can be read, ZooError.
    ``energy``: profile the first image with :func:`zoo.vision.profile_first_sample`.
    """
    _check_options(conf, iou, imgsz)
    files = find_images(sources)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ZooError(f"output path {out} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    result, used = Prediction(), set()
    for path in files:
        try:
            image = load_image(path)
        except ZooError as e:
            result.skipped.append({"file": str(path), "error": str(e)})
            continue
        if energy and result.profile is None:
            result.profile = profile_first_sample(model, image, imgsz=imgsz, stride=stride, auto=True)
        start = time.perf_counter()
        (det,) = detect(model, image, conf=conf, iou=iou, imgsz=imgsz, max_det=max_det, stride=stride, names=names)
        result.seconds += time.perf_counter() - start
        records = _records(det)
        target = out / _output_name(path, used)
        try:
            draw_detections(to_pil(image), records).save(target)
        except OSError as e:
            raise ZooError(f"cannot write {target} ({e})") from None
        h, w = image.shape[-2:]
        result.images.append({"file": str(path), "annotated": str(target), "width": int(w), "height": int(h),
                              "detections": records})
    if not result.images:
        first = result.skipped[0]["error"]
        more = f" (and {len(result.skipped) - 1} more unreadable file(s))" if len(result.skipped) > 1 else ""
        raise ZooError(f"no image could be read: {first}{more}")
    result.json_path = out / JSON_NAME
    result.json_path.write_text(json.dumps(result.images, indent=2))
    return result


__all__ = ["detect", "predict", "draw_detections", "Prediction", "JSON_NAME"]
