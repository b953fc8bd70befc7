"""A small detection data set with real variety, written in COCO format.

Six shape classes (circle, square, triangle, cross, ring, diamond) in random
colours, sizes (10-45 % of the short side), positions and counts (1-6 per
image, limited overlap) on textured backgrounds (smooth noise, stripes,
checkerboards, gradients, blotches), at varied image sizes. Colour does not
tell the class: only shape does. Used to train the zoo's demo model on a CPU.

    python -m tasks.detection.synthetic OUT [--train 1500] [--val 200] [--seed 0]

writes ``OUT/{train,val}/*.jpg`` and ``OUT/annotations/instances_{train,val}.json``.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from .classes import SHAPES_CLASSES as CLASSES  # noqa: E402


def background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A textured ``[h, w, 3]`` uint8 background: smooth noise, stripes, checkerboard, gradient or blotches."""
    kind = rng.integers(5)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = rng.uniform(0, 255, 3).astype(np.float32)
    other = rng.uniform(0, 255, 3).astype(np.float32)
    if kind == 0:  # smooth noise
        small = rng.uniform(0, 1, (max(2, h // 24), max(2, w // 24), 1)).astype(np.float32)
        t = np.asarray(Image.fromarray((small[..., 0] * 255).astype(np.uint8)).resize((w, h), Image.BICUBIC), np.float32)[..., None] / 255
    elif kind == 1:  # stripes at a random angle
        a, f = rng.uniform(0, math.pi), rng.uniform(0.05, 0.3)
        t = (np.sin((xx * math.cos(a) + yy * math.sin(a)) * f) * 0.5 + 0.5)[..., None]
    elif kind == 2:  # checkerboard
        s = int(rng.integers(6, 30))
        t = (((xx // s) + (yy // s)) % 2)[..., None]
    elif kind == 3:  # gradient
        a = rng.uniform(0, 2 * math.pi)
        t = (xx * math.cos(a) + yy * math.sin(a))
        t = ((t - t.min()) / (np.ptp(t) + 1e-6))[..., None]
    else:  # blotches
        t = np.zeros((h, w, 1), np.float32)
        for _ in range(int(rng.integers(3, 9))):
            cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(5, max(h, w) / 3)
            t[..., 0] = np.maximum(t[..., 0], np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r)))
    img = base * (1 - t) + other * t + rng.normal(0, rng.uniform(0, 12), (h, w, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def draw_shape(draw: ImageDraw.ImageDraw, cls: int, box, color, rng) -> None:
    """Draw shape ``CLASSES[cls]`` filling ``box`` (x0, y0, x1, y1) in ``color`` (also a class index on a mask)."""
    x0, y0, x1, y1 = box
    cx, cy, r = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2
    if CLASSES[cls] == "circle":
        draw.ellipse(box, fill=color)
    elif CLASSES[cls] == "square":
        draw.rectangle(box, fill=color)
    elif CLASSES[cls] == "triangle":
        draw.polygon([(cx, y0), (x1, y1), (x0, y1)], fill=color)
    elif CLASSES[cls] == "cross":
        t = r * rng.uniform(0.25, 0.4)
        draw.rectangle([x0, cy - t, x1, cy + t], fill=color)
        draw.rectangle([cx - t, y0, cx + t, y1], fill=color)
    elif CLASSES[cls] == "ring":
        draw.ellipse(box, outline=color, width=max(2, int(r * rng.uniform(0.25, 0.45))))
    else:  # diamond
        draw.polygon([(cx, y0), (x1, cy), (cx, y1), (x0, cy)], fill=color)


def _iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def make_image(rng: np.random.Generator):
    h, w = int(rng.integers(120, 260)), int(rng.integers(120, 260))
    img = Image.fromarray(background(rng, h, w))
    draw = ImageDraw.Draw(img)
    boxes, labels = [], []
    for _ in range(int(rng.integers(1, 7))):
        for _try in range(20):
            s = rng.uniform(0.10, 0.45) * min(h, w)
            x0, y0 = rng.uniform(0, w - s), rng.uniform(0, h - s)
            box = [x0, y0, x0 + s, y0 + s]
            if all(_iou(box, b) < 0.2 for b in boxes):
                break
        else:
            continue
        cls = int(rng.integers(len(CLASSES)))
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        draw_shape(draw, cls, box, color, rng)
        boxes.append(box)
        labels.append(cls)
    if rng.uniform() < 0.3:
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.2)))
    return img, boxes, labels


def write_coco(root: str | Path, n_train: int = 1500, n_val: int = 200, seed: int = 0) -> Path:
    root = Path(root)
    rng = np.random.default_rng(seed)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    categories = [{"id": i + 1, "name": n, "supercategory": "shape"} for i, n in enumerate(CLASSES)]
    ann_id = 1
    for split, n in (("train", n_train), ("val", n_val)):
        (root / split).mkdir(exist_ok=True)
        images, annotations = [], []
        for i in range(n):
            img, boxes, labels = make_image(rng)
            name = f"{split}_{i:05d}.jpg"
            img.save(root / split / name, quality=92)
            images.append({"id": i + 1, "file_name": name, "width": img.width, "height": img.height})
            for b, c in zip(boxes, labels):
                annotations.append({"id": ann_id, "image_id": i + 1, "category_id": c + 1, "iscrowd": 0,
                                    "bbox": [round(b[0], 2), round(b[1], 2), round(b[2] - b[0], 2), round(b[3] - b[1], 2)],
                                    "area": round((b[2] - b[0]) * (b[3] - b[1]), 2)})
                ann_id += 1
        (root / "annotations" / f"instances_{split}.json").write_text(
            json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return root


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out")
    p.add_argument("--train", type=int, default=1500)
    p.add_argument("--val", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    print(write_coco(a.out, a.train, a.val, a.seed))


if __name__ == "__main__":
    main()
