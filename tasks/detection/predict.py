"""Detect objects in image files or folders: annotated images plus a JSON of the detections.

:func:`predict` letterboxes each image to ``imgsz`` (smallest multiple of the
stride around it, as ultralytics' predictor), runs NMS at the predict settings
(``conf=0.25, iou=0.7, max_det=300``), maps boxes back to the original pixels,
draws them with PIL and writes ``predictions.json`` into the output folder.
The first image is also profiled with :func:`zoo.profile` (firing rate,
operations, energy).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch

from zoo.errors import ZooError

from .postprocess import class_names, letterbox, load_image, model_output, non_max_suppression, scale_boxes

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".pgm", ".ppm", ".pbm", ".pnm",
                  ".jfif", ".dng", ".mpo")
_SAVE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
JSON_NAME = "predictions.json"

_PALETTE = ("#FF3838", "#2C99A8", "#FF9D97", "#48F90A", "#FF701F", "#00C2FF", "#FFB21D", "#3DDB86", "#CFD231",
            "#1A9334", "#00D4BB", "#344593", "#6473FF", "#0018EC", "#8438FF", "#520085", "#CB38FF", "#FF95C8",
            "#FF37C7", "#92CC17")


def find_images(sources: Sequence[str | Path]) -> list[Path]:
    """The image files named by ``sources`` (files as given; folders: their image files, sorted, not recursive).

    Raises :class:`ZooError` for a path that does not exist or a folder without images.
    """
    if isinstance(sources, (str, Path)):
        sources = [sources]
    if not sources:
        raise ZooError("no input given; pass an image file or a folder of images")
    files: list[Path] = []
    for s in sources:
        p = Path(s)
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise ZooError(f"no images in folder {p} (looked for {', '.join(IMAGE_SUFFIXES[:6])}, ...)")
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise ZooError(f"input not found: {p}")
    return files


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


@dataclass
class Prediction:
    """What :func:`predict` wrote: per-image records (as in the JSON), its path, and the first image's profile."""

    images: list[dict] = field(default_factory=list)
    json_path: Path | None = None
    profile: object | None = None  # zoo.profiling.Profile of the first image

    def to_dict(self) -> dict:
        d = {"images": self.images, "json": str(self.json_path) if self.json_path else None}
        if self.profile is not None:
            d["energy"] = self.profile.summary()
        return d


def _output_name(src: Path, used: set[str]) -> str:
    suffix = src.suffix.lower() if src.suffix.lower() in _SAVE_SUFFIXES else ".png"
    name, k = f"{src.stem}{suffix}", 1
    while name in used or name == JSON_NAME:
        name, k = f"{src.stem}_{k}{suffix}", k + 1
    used.add(name)
    return name


@torch.no_grad()
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
    """Detect objects in ``sources`` (image files and/or folders) and write the results into ``out_dir``.

    Writes one annotated image per input (same name; ``.png`` for formats other
    than JPEG/PNG/BMP/WebP) and ``predictions.json``: a list of
    ``{"file", "annotated", "width", "height", "detections": [{"box": [x1, y1, x2, y2]
    (original pixels), "class_id", "class_name", "score"}]}``. ``names``: class
    names (default: ``model.names``, else COCO's for 80 classes).
    ``energy``: profile the first image with :func:`zoo.profile`.
    """
    from spikingjelly.activation_based import functional

    from zoo.profiling import profile as zoo_profile

    if imgsz <= 0:
        raise ZooError(f"image size must be positive, got {imgsz}")
    if not 0 <= conf <= 1 or not 0 <= iou <= 1:
        raise ZooError(f"--conf and --iou must be in [0, 1], got {conf} and {iou}")
    files = find_images(sources)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ZooError(f"output path {out} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    model.eval()
    p = next(model.parameters(), None)
    device = p.device if p is not None else torch.device("cpu")
    dtype = p.dtype if p is not None and p.is_floating_point() else torch.float32
    names = names if names is not None else getattr(model, "names", None)
    result, used = Prediction(), set()
    for path in files:
        tensor, rgb = load_image(path)
        h, w = tensor.shape[-2:]
        x, ratio, pad = letterbox(tensor, imgsz, stride, auto=True)
        x = x[None].to(device=device, dtype=dtype)
        if energy and result.profile is None:
            result.profile = zoo_profile(model, x)
        functional.reset_net(model)
        y = model_output(model(x))
        labels = class_names(y.shape[1] - 4, names)
        det = non_max_suppression(y, conf=conf, iou=iou, max_det=max_det)[0].cpu()
        boxes = scale_boxes(det[:, :4], ratio, pad, (h, w))
        dets = [{"box": [round(float(v), 2) for v in b], "class_id": int(c), "class_name": labels[int(c)],
                 "score": round(float(s), 4)} for b, s, c in zip(boxes, det[:, 4], det[:, 5])]
        target = out / _output_name(path, used)
        try:
            draw_detections(rgb, dets).save(target)
        except OSError as e:
            raise ZooError(f"cannot write {target} ({e})") from None
        result.images.append({"file": str(path), "annotated": str(target), "width": int(w), "height": int(h),
                              "detections": dets})
    result.json_path = out / JSON_NAME
    result.json_path.write_text(json.dumps(result.images, indent=2))
    return result


__all__ = ["predict", "find_images", "draw_detections", "Prediction", "IMAGE_SUFFIXES", "JSON_NAME"]
