"""Point-cloud data in OpenShape's formats (what SVL trains and tests on), read without its code.

* :class:`OpenShapeTrain` -- ``split/train_all.json`` ``[{data_path, dataset, group, id}]`` pointing at
  per-shape ``.npy`` dicts (``xyz [N, 3]``, ``rgb [N, 3]`` in [0, 1], ``text`` [...], ``text_feat``
  [{``original``, ``prompt_avg``}], ``image_feat [12, D]``, optionally ``thumbnail_feat``); returns points
  and the shape's text / image features (OpenShape's ``Four`` with the ``text`` source and prompt_avg).
* :class:`ModelNet40Test` -- ``modelnet40/test_split.json`` ``[{name, category}]``, ``test_pc.npy``
  (an object array of ``{xyz, rgb}``, rgb in 0..255), ``cat_name_pt_feat.npy`` (a dict category ->
  ``{'open_clip_text_feat': [1, D]}``; the class order is the dict's).
* :class:`ObjaverseLVIS` -- ``split/lvis.json`` ``[{uid, category, data_path, group}]``,
  ``lvis_cat_name_pt_feat.npy`` ``[K, D]`` in the order of the sorted unique categories.
* :class:`ScanObjectNNTest` -- ``scanobjectnn/xyz_label.npy`` (a dict ``xyz`` [M][N, 3], ``label`` [M],
  optional ``rgb``; missing rgb is 0.4 as OpenShape), ``cat_name_pt_feat.npy`` (dict, the fixed 15-class order).

Every loader applies OpenShape's test-time pipeline: sample ``num_points`` points (without replacement;
ScanObjectNN with replacement, as the official loader), swap y and z (``y_up``, the files are y-up),
normalise to the unit sphere (centre on the mean, divide by the largest norm), features ``[xyz, rgb]``.
Training adds OpenShape's augmentation (:func:`augment`) and its rgb drop (prob 0.5 -> 0.4).
``--data`` is OpenShape's ``meta_data`` folder (or the folder holding it); relative ``data_path`` entries are
resolved against the folder holding ``meta_data``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from zoo.errors import ZooError

DEFAULT_RGB = 0.4  # OpenShape: missing or dropped colour
SCANOBJECTNN_CLASSES = ["bag", "bin", "box", "cabinet", "chair", "desk", "display", "door", "shelf", "table",
                        "bed", "pillow", "sink", "sofa", "toilet"]


# ----------------------------------------------------------------------------- point pipeline


def normalize_pc(xyz: np.ndarray) -> np.ndarray:
    """OpenShape ``normalize_pc``: centre on the mean, divide by the largest norm."""
    xyz = xyz - xyz.mean(0, keepdims=True)
    scale = np.linalg.norm(xyz, axis=1).max() if len(xyz) else 0.0
    return xyz / scale if scale > 1e-8 else xyz


def check_points(xyz: np.ndarray, rgb: np.ndarray | None, where: str, num_points: int | None = None) -> None:
    xyz = np.asarray(xyz)
    if xyz.ndim != 2 or xyz.shape[1] != 3:
        raise ZooError(f"{where}: xyz must be [N, 3], got shape {xyz.shape}")
    if not np.isfinite(xyz).all():
        bad = int((~np.isfinite(xyz)).any(1).sum())
        raise ZooError(f"{where}: {bad} of {len(xyz)} points have NaN or infinite coordinates; remove them "
                       "(e.g. xyz[np.isfinite(xyz).all(1)]) before passing the cloud")
    if num_points is not None and len(xyz) < num_points:
        raise ZooError(f"{where}: {len(xyz)} points, fewer than the {num_points} the model samples; "
                       f"pass --num-points {len(xyz)} (or fewer), or resample the cloud")
    if rgb is not None and np.asarray(rgb).shape != xyz.shape:
        raise ZooError(f"{where}: rgb has shape {np.asarray(rgb).shape}, xyz {xyz.shape}; they must match")


def prepare(xyz, rgb=None, num_points: int | None = None, y_up: bool = True, rng: np.random.Generator | None = None,
            replace: bool = False, where: str = "point cloud", rgb_scale: float = 1.0) -> torch.Tensor:
    """OpenShape's test-time pipeline for one cloud -> ``[num_points, 6]`` float32 (xyz in the unit sphere, rgb).

    ``rgb=None`` uses OpenShape's default colour 0.4; ``rgb_scale`` divides it (255 for ModelNet40's file).
    """
    xyz = np.asarray(xyz, dtype=np.float64)
    check_points(xyz, rgb, where, None if replace else num_points)
    rgb = np.full_like(xyz, DEFAULT_RGB) if rgb is None else np.asarray(rgb, dtype=np.float64) / rgb_scale
    rng = rng or np.random.default_rng(0)
    if num_points is not None and len(xyz) != num_points:
        idx = rng.choice(len(xyz), num_points, replace=replace)
        xyz, rgb = xyz[idx], rgb[idx]
    if y_up:
        xyz = xyz[:, [0, 2, 1]]
    return torch.from_numpy(np.concatenate([normalize_pc(xyz), rgb], 1).astype(np.float32))


def augment(xyz: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """OpenShape's training augmentation (``augment_pc`` + ``random_rotate_z``): random point dropout
    (up to 87.5 %, dropped points replaced by the first), scale 0.8-1.25, shift +-0.1, a small random
    rotation (sigma 0.06 rad, clipped 0.18) and a random rotation about z."""
    xyz = xyz.copy()
    ratio = rng.random() * 0.875
    drop = np.where(rng.random(len(xyz)) <= ratio)[0]
    if len(drop):
        xyz[drop] = xyz[0]
    xyz = xyz * rng.uniform(0.8, 1.25, 3) + rng.uniform(-0.1, 0.1, 3)
    angles = np.clip(0.06 * rng.standard_normal(3), -0.18, 0.18)
    xyz = xyz @ _rotation(*angles).T
    return xyz @ _rotation(0, 0, rng.uniform(0, 2 * np.pi)).T


def _rotation(a: float, b: float, c: float) -> np.ndarray:
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return rz @ ry @ rx


# ----------------------------------------------------------------------------- files


def meta_dir(path: str | Path) -> Path:
    """``--data``: OpenShape's ``meta_data`` folder, or a folder holding one."""
    path = Path(path)
    if not path.exists():
        raise ZooError(f"--data {path} does not exist; pass OpenShape's meta_data folder (or the folder holding it)")
    return path / "meta_data" if (path / "meta_data").is_dir() else path


def _load_npy(path: Path, what: str):
    try:
        obj = np.load(path, allow_pickle=True)
    except (OSError, ValueError) as e:
        raise ZooError(f"cannot read {what} {path} ({e})") from None
    return obj.item() if isinstance(obj, np.ndarray) and obj.dtype == object and obj.ndim == 0 else obj


def _load_json(path: Path, what: str):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise ZooError(f"cannot read {what} {path} ({e})") from None


def _resolve(data_path: str, root: Path) -> Path:
    p = Path(data_path)
    for cand in (p, root / p, root / "meta_data" / p):
        if cand.is_file():
            return cand
    raise ZooError(f"shape file {data_path} not found (tried as given and under {root}); fix data_path in the split")


def _feat_array(x, where: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float32)
    if a.ndim == 2 and a.shape[0] == 1:
        a = a[0]
    if a.ndim != 1:
        raise ZooError(f"{where}: expected one feature vector, got shape {a.shape}")
    return a


def category_features_from_dict(feats: dict, categories: list[str] | None, where: str) -> tuple[list[str], torch.Tensor]:
    """OpenShape's dict format category -> {'open_clip_text_feat': [1, D]} (order: ``categories`` or the dict's)."""
    if not isinstance(feats, dict):
        raise ZooError(f"{where}: expected a dict category -> {{'open_clip_text_feat': [1, D]}}, got {type(feats).__name__}")
    names = list(categories) if categories is not None else list(feats)
    missing = [c for c in names if c not in feats]
    if missing:
        raise ZooError(f"{where} has no features for {len(missing)} categories (e.g. {missing[0]!r})")
    rows = []
    for c in names:
        v = feats[c]
        v = v.get("open_clip_text_feat", v.get("text_feat")) if isinstance(v, dict) else v
        if v is None:
            raise ZooError(f"{where}[{c!r}] has no 'open_clip_text_feat'")
        rows.append(_feat_array(v, f"{where}[{c!r}]"))
    return names, torch.from_numpy(np.stack(rows))


class _Test(torch.utils.data.Dataset):
    """A zero-shot test set: items ``(points [num_points, 6], label)``; ``categories``, ``category_features``."""

    name = ""
    categories: list[str]
    category_features: torch.Tensor

    def __init__(self, num_points: int, y_up: bool = True, seed: int = 0):
        self.num_points, self.y_up, self.seed = num_points, y_up, seed

    def _rng(self, i: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, i])  # the same points on every run


class ModelNet40Test(_Test):
    name = "ModelNet40"

    def __init__(self, folder: str | Path, num_points: int = 10000, y_up: bool = True, seed: int = 0):
        super().__init__(num_points, y_up, seed)
        folder = Path(folder)
        self.split = _load_json(folder / "test_split.json", "ModelNet40 split")
        self.pcs = _load_npy(folder / "test_pc.npy", "ModelNet40 points")
        feats = _load_npy(folder / "cat_name_pt_feat.npy", "ModelNet40 category features")
        self.categories, self.category_features = category_features_from_dict(feats, None, str(folder / "cat_name_pt_feat.npy"))
        if len(self.pcs) != len(self.split):
            raise ZooError(f"{folder}: test_pc.npy has {len(self.pcs)} clouds but test_split.json {len(self.split)} entries")
        index = {c: i for i, c in enumerate(self.categories)}
        unknown = sorted({s["category"] for s in self.split} - set(index))
        if unknown:
            raise ZooError(f"{folder}/test_split.json names categories without features (e.g. {unknown[0]!r})")
        self.labels = [index[s["category"]] for s in self.split]

    def __len__(self):
        return len(self.split)

    def __getitem__(self, i):
        pc = self.pcs[i]
        return prepare(pc["xyz"], pc.get("rgb"), self.num_points, self.y_up, self._rng(i),
                       where=f"ModelNet40 cloud {i} ({self.split[i]['name']})", rgb_scale=255.0), self.labels[i]


class ObjaverseLVIS(_Test):
    name = "Objaverse-LVIS"

    def __init__(self, split: str | Path, features: str | Path, root: str | Path, num_points: int = 10000,
                 y_up: bool = True, seed: int = 0):
        super().__init__(num_points, y_up, seed)
        self.split, self.root = _load_json(split, "Objaverse-LVIS split"), Path(root)
        self.categories = sorted({s["category"] for s in self.split})
        feats = _load_npy(Path(features), "LVIS category features")
        feats = np.asarray(feats, dtype=np.float32)
        if feats.ndim != 2 or len(feats) != len(self.categories):
            raise ZooError(f"{features}: expected [{len(self.categories)}, D] features (one per sorted LVIS category), "
                           f"got shape {feats.shape}")
        self.category_features = torch.from_numpy(feats)
        index = {c: i for i, c in enumerate(self.categories)}
        self.labels = [index[s["category"]] for s in self.split]

    def __len__(self):
        return len(self.split)

    def __getitem__(self, i):
        d = _load_npy(_resolve(self.split[i]["data_path"], self.root), "LVIS shape")
        return prepare(d["xyz"], d.get("rgb"), self.num_points, self.y_up, self._rng(i),
                       where=f"LVIS shape {self.split[i].get('uid', i)}"), self.labels[i]


class ScanObjectNNTest(_Test):
    name = "ScanObjectNN"

    def __init__(self, folder: str | Path, num_points: int = 10000, y_up: bool = True, seed: int = 0):
        super().__init__(num_points, y_up, seed)
        folder = Path(folder)
        self.data = _load_npy(folder / "xyz_label.npy", "ScanObjectNN data")
        if not isinstance(self.data, dict) or "xyz" not in self.data or "label" not in self.data:
            raise ZooError(f"{folder}/xyz_label.npy must be a dict with 'xyz' and 'label' (and optional 'rgb')")
        feats = _load_npy(folder / "cat_name_pt_feat.npy", "ScanObjectNN category features")
        self.categories, self.category_features = category_features_from_dict(
            feats, SCANOBJECTNN_CLASSES, str(folder / "cat_name_pt_feat.npy"))

    def __len__(self):
        return len(self.data["xyz"])

    def __getitem__(self, i):
        rgb = self.data["rgb"][i] if "rgb" in self.data else None
        return prepare(self.data["xyz"][i], rgb, self.num_points, self.y_up, self._rng(i), replace=True,
                       where=f"ScanObjectNN cloud {i}"), int(self.data["label"][i])


def load_test_sets(path: str | Path, num_points: int = 10000) -> list[_Test]:
    """Every zero-shot test set OpenShape's ``meta_data`` folder ``path`` holds."""
    meta = meta_dir(path)
    root = meta.parent if meta.name == "meta_data" else meta
    sets: list[_Test] = []
    if (meta / "modelnet40" / "test_split.json").is_file():
        sets.append(ModelNet40Test(meta / "modelnet40", num_points))
    if (meta / "split" / "lvis.json").is_file() and (meta / "lvis_cat_name_pt_feat.npy").is_file():
        sets.append(ObjaverseLVIS(meta / "split" / "lvis.json", meta / "lvis_cat_name_pt_feat.npy", root, num_points))
    if (meta / "scanobjectnn" / "xyz_label.npy").is_file():
        sets.append(ScanObjectNNTest(meta / "scanobjectnn", num_points))
    if not sets:
        raise ZooError(f"no test set found under {meta}: expected modelnet40/test_split.json, split/lvis.json + "
                       "lvis_cat_name_pt_feat.npy or scanobjectnn/xyz_label.npy (OpenShape's meta_data layout)")
    return sets


class OpenShapeTrain(torch.utils.data.Dataset):
    """OpenShape's training shapes: items ``{'points' [num_points, 6], 'text_feat' [D] or None,
    'image_feat' [D] or None}`` (the ``text`` source with ``prompt_avg``, one random image view)."""

    def __init__(self, path: str | Path, num_points: int = 10000, augment: bool = True, rgb_drop: float = 0.5,
                 y_up: bool = True, text_version: str = "prompt_avg", seed: int = 0):
        meta = meta_dir(path)
        split = meta / "split" / "train_all.json"
        if not split.is_file():
            raise ZooError(f"no training split at {split} (OpenShape's meta_data/split/train_all.json)")
        self.split = _load_json(split, "training split")
        if not self.split:
            raise ZooError(f"{split} lists no shapes")
        self.root = meta.parent if meta.name == "meta_data" else meta
        self.num_points, self.augment, self.rgb_drop, self.y_up = num_points, augment, rgb_drop, y_up
        self.text_version, self.seed, self.epoch = text_version, seed, 0

    def __len__(self):
        return len(self.split)

    def __getitem__(self, i):
        rng = np.random.default_rng([self.seed, self.epoch, i])
        meta = self.split[i]
        d = _load_npy(_resolve(meta["data_path"], self.root), "training shape")
        where = f"training shape {meta.get('id', i)}"
        xyz = np.asarray(d["xyz"], np.float64)
        check_points(xyz, d.get("rgb"), where, self.num_points)
        rgb = np.full_like(xyz, DEFAULT_RGB) if d.get("rgb") is None else np.asarray(d["rgb"], np.float64)
        if len(xyz) != self.num_points:
            idx = rng.choice(len(xyz), self.num_points, replace=False)
            xyz, rgb = xyz[idx], rgb[idx]
        if self.y_up:
            xyz = xyz[:, [0, 2, 1]]
        xyz = normalize_pc(xyz)
        if self.augment:
            xyz = augment(xyz, rng)
        if rng.random() < self.rgb_drop:
            rgb = np.full_like(rgb, DEFAULT_RGB)
        text = None
        if d.get("text_feat"):
            j = int(rng.integers(len(d["text_feat"])))
            text = torch.from_numpy(_feat_array(d["text_feat"][j][self.text_version], where + " text_feat"))
        image = None
        if d.get("image_feat") is not None:
            views = np.asarray(d["image_feat"], np.float32).reshape(-1, np.asarray(d["image_feat"]).shape[-1])
            image = torch.from_numpy(views[int(rng.integers(len(views)))])
        points = torch.from_numpy(np.concatenate([xyz, rgb], 1).astype(np.float32))
        return {"points": points, "text_feat": text, "image_feat": image}


def collate_train(items: list[dict]) -> dict:
    """Stack the points; keep the samples that have text / image features and their indices (``has_text_idx``)."""
    out = {"points": torch.stack([it["points"] for it in items])}
    for key in ("text", "image"):
        idx = [i for i, it in enumerate(items) if it[f"{key}_feat"] is not None]
        out[f"has_{key}_idx"] = torch.tensor(idx, dtype=torch.long)
        out[f"{key}_feat"] = torch.stack([items[i][f"{key}_feat"] for i in idx]) if idx else None
    return out
