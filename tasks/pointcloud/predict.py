"""``zoo predict`` for point clouds: read clouds or meshes, classify them zero-shot, draw them.

Inputs: ``.npy`` (an OpenShape shape dict with ``xyz`` / ``rgb``, or an ``[N, 3]`` / ``[N, 6]`` array),
``.txt`` / ``.xyz`` / ``.csv`` (``x y z [r g b]`` rows), or a mesh or point file trimesh reads (``.ply``,
``.obj``, ``.off``, ``.stl``, ``.glb`` ...). Meshes are sampled on their surface (area-weighted, with
vertex colours where the file has them); colour in 0..255 is scaled to [0, 1]; without colour,
OpenShape's default 0.4 is used. Then OpenShape's pipeline (:func:`tasks.pointcloud.data.prepare`;
``y_up=False``: files read here are taken as z-up unless ``--y-up``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from zoo.errors import ZooError

from .data import prepare

TEXT_SUFFIXES = (".txt", ".xyz", ".csv", ".pts")


def read_cloud(path: str | Path, num_points: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray | None]:
    """``path`` -> (xyz ``[N, 3]``, rgb ``[N, 3]`` in [0, 1] or None). Meshes give ``max(num_points, 10000)`` samples."""
    path = Path(path)
    if not path.is_file():
        raise ZooError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        obj = np.load(path, allow_pickle=True)
        if obj.dtype == object and obj.ndim == 0:
            obj = obj.item()
        if isinstance(obj, dict):
            if "xyz" not in obj:
                raise ZooError(f"{path}: a dict without 'xyz' (expected OpenShape's per-shape dict)")
            return np.asarray(obj["xyz"], np.float64), _colour(obj.get("rgb"))
        return _split(np.asarray(obj, np.float64), path)
    if suffix in TEXT_SUFFIXES:
        try:
            arr = np.loadtxt(path, delimiter="," if suffix == ".csv" else None, ndmin=2)
        except ValueError as e:
            raise ZooError(f"{path}: not a table of numbers ({e})") from None
        return _split(arr, path)
    try:
        import trimesh
    except ImportError:
        raise ZooError(f"reading {suffix} files needs trimesh: pip install trimesh") from None
    try:
        geom = trimesh.load(str(path), force=None)
    except Exception as e:  # trimesh raises many kinds
        raise ZooError(f"{path}: trimesh cannot read it ({e})") from None
    if isinstance(geom, trimesh.Scene):
        geom = geom.to_geometry() if hasattr(geom, "to_geometry") else geom.dump(concatenate=True)
    if isinstance(geom, trimesh.PointCloud):
        colours = getattr(geom, "colors", None)
        rgb = np.asarray(colours, np.float64)[:, :3] / 255.0 if colours is not None and len(colours) else None
        return np.asarray(geom.vertices, np.float64), rgb
    if not isinstance(geom, trimesh.Trimesh) or len(geom.faces) == 0:
        raise ZooError(f"{path}: no mesh or point cloud in it")
    count = max(num_points, 10000)
    xyz, faces = trimesh.sample.sample_surface(geom, count, seed=seed)
    rgb = None
    vc = getattr(geom.visual, "vertex_colors", None) if geom.visual.kind == "vertex" else None
    if vc is not None and len(vc) == len(geom.vertices):
        rgb = np.asarray(vc, np.float64)[geom.faces[faces]][:, :, :3].mean(1) / 255.0
    return np.asarray(xyz, np.float64), rgb


def _colour(rgb):
    if rgb is None:
        return None
    rgb = np.asarray(rgb, np.float64)
    return rgb / 255.0 if rgb.size and rgb.max() > 1.0 else rgb


def _split(arr: np.ndarray, path: Path):
    if arr.ndim != 2 or arr.shape[1] not in (3, 6):
        raise ZooError(f"{path}: expected [N, 3] (xyz) or [N, 6] (xyz + rgb) points, got shape {arr.shape}")
    return arr[:, :3], (_colour(arr[:, 3:]) if arr.shape[1] == 6 else None)


def draw(points: torch.Tensor, path: Path, title: str, size: int = 480) -> Path:
    """The coloured cloud seen from an oblique view (orthographic, far points drawn first), with PIL."""
    from PIL import Image, ImageDraw

    p = points.numpy().astype(np.float64)
    a, b = np.radians(35.0), np.radians(-30.0)  # azimuth about z, then elevation
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    v = p[:, :3] @ (rx @ rz).T  # x right, z up, y depth
    order = np.argsort(-v[:, 1])
    img = Image.new("RGB", (size, size), "white")
    d = ImageDraw.Draw(img)
    half, r = size / 2, max(1.5, size / 240)
    shade = np.clip(0.75 + 0.25 * (-v[:, 1]), 0.4, 1.0)  # nearer is brighter
    for i in order:
        x, y = half + v[i, 0] * half * 0.85, half - v[i, 2] * half * 0.85
        c = tuple(int(255 * min(1.0, max(0.0, ch * shade[i]))) for ch in p[i, 3:6])
        d.ellipse((x - r, y - r, x + r, y + r), fill=c)
    d.text((8, 8), title, fill="black")
    img.save(path)
    return path


@torch.no_grad()
def predict(model, sources: list[str], out: str | Path, num_points: int, top: int = 5, y_up: bool = False,
            energy: bool = True) -> dict:
    """Classify every source; write ``OUT/<stem>.png`` and ``OUT/predictions.json``; return the results."""
    from .evaluate import sparse_energy

    if getattr(model, "head", None) is None:
        raise ZooError("the model has no zero-shot head: load it with classes=... (zoo predict --classes)")
    names = model.names or [str(i) for i in range(model.head.out_features)]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    device = next(model.parameters()).device
    results = []
    first_energy = None
    for src in sources:
        xyz, rgb = read_cloud(src, num_points)
        points = prepare(xyz, rgb, num_points, y_up=y_up, where=str(src))
        logits = model(points[None].to(device))[0].float().cpu()
        probs = torch.softmax(logits * 100.0, 0)  # CLIP's temperature on cosine similarities
        order = logits.argsort(descending=True)[:top]
        ranked = [{"category": names[int(i)], "cosine": float(logits[i]), "prob": float(probs[i])} for i in order]
        image = draw(points, out / f"{Path(src).stem}.png", f"{Path(src).name}: {ranked[0]['category']}")
        if energy and first_energy is None:
            first_energy = sparse_energy(model, points[None].to(device))
        results.append({"file": str(src), "points": int(len(xyz)), "colour": rgb is not None, "top": ranked,
                        "image": str(image)})
    doc = {"results": results, "energy_first": first_energy}
    (out / "predictions.json").write_text(json.dumps(doc, indent=2))
    doc["json"] = str(out / "predictions.json")
    return doc
