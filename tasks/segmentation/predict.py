"""Segment images: :func:`segment` in memory, :func:`predict` over files and folders.

:func:`segment` runs the official test pipeline (:mod:`tasks.segmentation.pipeline`: keep-ratio resize as mmcv,
ImageNet normalisation, padding where the config pads, whole-image inference, padding cut, bilinear resize back,
argmax) on image tensors (the :mod:`zoo.vision` contract, ``[3, H, W]`` in [0, 1]) or PIL images.

:func:`predict` is :func:`segment` plus files. For each readable image it writes, into the output folder:

* ``NAME_label.png``: the class index of every pixel (a palette PNG: the index is the class, the palette only
  colours it for viewing; :func:`zoo.vision.load_mask` reads the indices back);
* ``NAME_overlay.png``: the image blended with the class colours, with a legend of the classes present;

and ``segmentation.json``: per image its size, the files written and the area of every class present (pixels
and fraction, largest first). The first image is profiled (firing rate, operations, energy). A file that cannot
be read is reported and counted (:attr:`Segmentation.skipped`) and the others are still segmented; only when no
file can be read does it raise.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from zoo.errors import ZooError
from zoo.vision import PredictionRun, as_images, find_images, load_image, model_device_dtype, to_pil

from .pipeline import TestPipeline, pipeline_for, postprocess, preprocess

JSON_NAME = "segmentation.json"


def palette(n: int) -> np.ndarray:
    """``uint8 [n, 3]``: the Pascal VOC colour map (bit-interleaved class index), distinct for up to 256 classes."""
    out = np.zeros((n, 3), dtype=np.uint8)
    for i in range(n):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        out[i] = (r, g, b)
    return out


@torch.no_grad()
def segment(model: torch.nn.Module, images, pipeline: TestPipeline | None = None,
            return_logits: bool = False) -> list[dict]:
    """Segment in-memory images one at a time, each through the official test pipeline.

    ``images``: a tensor ``[3, H, W]`` (float in [0, 1], or uint8) or a batch ``[B, 3, H, W]``, a PIL image, or a
    list of those. ``pipeline``: the test settings (default: the model's, :func:`pipeline_for`). Returns per image
    ``{"label": int64 [H, W] (argmax over all the model's channels), "input_size": (h, w) of the model input}``,
    plus ``"logits"`` ``[K, H, W]`` (at the original size) with ``return_logits``.
    """
    from spikingjelly.activation_based import functional

    pipeline = pipeline or pipeline_for(model)
    model.eval()
    device, dtype = model_device_dtype(model)
    out = []
    for image in as_images(images):
        x, resized = preprocess(image, pipeline)
        functional.reset_net(model)
        logits = postprocess(model(x.to(device=device, dtype=dtype))[0].float().cpu(), resized,
                             tuple(image.shape[-2:]))
        item = {"label": logits.argmax(0), "input_size": tuple(x.shape[-2:])}
        if return_logits:
            item["logits"] = logits
        out.append(item)
    return out


def class_areas(label: torch.Tensor, names: Sequence[str]) -> list[dict]:
    """The classes present in ``label``, largest first: ``{"class_id", "class_name", "pixels", "fraction"}``."""
    counts = torch.bincount(label.flatten(), minlength=len(names))
    total = label.numel()
    order = [int(i) for i in torch.argsort(counts, descending=True, stable=True) if counts[i] > 0]
    return [{"class_id": i, "class_name": names[i] if i < len(names) else f"class {i}", "pixels": int(counts[i]),
             "fraction": round(float(counts[i]) / total, 6)} for i in order]


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):
        return ImageFont.load_default()


def overlay(image: torch.Tensor, label: torch.Tensor, areas: list[dict], colours: np.ndarray, alpha: float = 0.5):
    """An RGB PIL image: ``image`` blended with the class colours, and a legend of ``areas`` on its right."""
    from PIL import Image, ImageDraw

    base = np.asarray(to_pil(image), dtype=np.float32)
    blend = (1 - alpha) * base + alpha * colours[label.numpy()].astype(np.float32)
    im = Image.fromarray(blend.round().clip(0, 255).astype(np.uint8), "RGB")
    h = im.height
    size = int(min(max(h / 40, 10), 24))
    font = _font(size)
    row = size + 6
    lines = [f"{a['class_name']} {100 * a['fraction']:.1f}%" for a in areas]
    probe = ImageDraw.Draw(im)
    text_w = max(probe.textbbox((0, 0), t, font=font)[2] for t in lines) if lines else 0
    legend_w = size + 16 + text_w
    canvas = Image.new("RGB", (im.width + legend_w, max(h, row * len(lines) + 8)), (255, 255, 255))
    canvas.paste(im, (0, 0))
    draw = ImageDraw.Draw(canvas)
    for k, (a, t) in enumerate(zip(areas, lines)):
        y = 4 + k * row
        draw.rectangle((im.width + 4, y, im.width + 4 + size, y + size), fill=tuple(int(v) for v in colours[a["class_id"]]),
                       outline=(0, 0, 0))
        draw.text((im.width + size + 10, y), t, fill=(0, 0, 0), font=font)
    return canvas


def save_label(label: torch.Tensor, path: Path, colours: np.ndarray) -> None:
    """A palette PNG of class indices (16-bit grey when there are more than 256 classes)."""
    from PIL import Image

    top = int(label.max()) if label.numel() else 0
    if top < 256:
        im = Image.fromarray(label.numpy().astype(np.uint8))  # grey "L"; a palette makes it "P"
        im.putpalette(colours[:256].flatten().tolist() + [0] * (768 - 3 * min(len(colours), 256)))
    else:
        im = Image.fromarray(label.numpy().astype(np.uint16))
    im.save(path)


class Segmentation(PredictionRun):
    """What :func:`predict` did (:class:`zoo.vision.PredictionRun`); ``seconds`` is the time in :func:`segment`."""

    timed = "pipeline and model"


def _stem(src: Path, used: set[str]) -> str:
    stem, k = src.stem, 1
    while stem in used:
        stem, k = f"{src.stem}_{k}", k + 1
    used.add(stem)
    return stem


def predict(model: torch.nn.Module, sources: Sequence[str | Path] | str | Path, out_dir: str | Path,
            pipeline: TestPipeline | None = None, names: Sequence[str] | None = None,
            energy: bool = True) -> Segmentation:
    """:func:`segment` on ``sources`` (image files and/or folders), results written into ``out_dir`` (module doc).

    ``names``: class names (default ``model.names``); ``energy``: profile the first image (its model input)."""
    from zoo.profiling import profile

    pipeline = pipeline or pipeline_for(model)
    files = find_images(sources)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ZooError(f"output path {out} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    names = list(names if names is not None else getattr(model, "names", None) or [])
    result, used, colours = Segmentation(), set(), None
    for path in files:
        try:
            image = load_image(path)
        except ZooError as e:
            result.skipped.append({"file": str(path), "error": str(e)})
            continue
        if energy and result.profile is None:
            device, dtype = model_device_dtype(model)
            result.profile = profile(model, preprocess(image, pipeline)[0].to(device=device, dtype=dtype))
        start = time.perf_counter()
        (seg,) = segment(model, image, pipeline)
        result.seconds += time.perf_counter() - start
        label = seg["label"]
        if colours is None:
            n = max(len(names), int(label.max()) + 1)
            names += [f"class {i}" for i in range(len(names), n)]
            colours = palette(max(n, 256))
        elif int(label.max()) >= len(names):
            names += [f"class {i}" for i in range(len(names), int(label.max()) + 1)]
        areas = class_areas(label, names)
        stem = _stem(path, used)
        label_path, overlay_path = out / f"{stem}_label.png", out / f"{stem}_overlay.png"
        try:
            save_label(label, label_path, colours)
            overlay(image, label, areas, colours).save(overlay_path)
        except OSError as e:
            raise ZooError(f"cannot write into {out} ({e})") from None
        h, w = image.shape[-2:]
        result.images.append({"file": str(path), "width": int(w), "height": int(h),
                              "input_size": list(seg["input_size"]), "label": str(label_path),
                              "overlay": str(overlay_path), "classes": areas})
    if not result.images:
        first = result.skipped[0]["error"]
        more = f" (and {len(result.skipped) - 1} more unreadable file(s))" if len(result.skipped) > 1 else ""
        raise ZooError(f"no image could be read: {first}{more}")
    result.json_path = out / JSON_NAME
    result.json_path.write_text(json.dumps(result.images, indent=2))
    return result


__all__ = ["segment", "predict", "Segmentation", "class_areas", "overlay", "palette", "save_label", "JSON_NAME"]
