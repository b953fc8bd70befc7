"""Category lists for zero-shot heads: ``zoo.load(NAME, classes=...)``.

``classes`` may be

* a path to category text features in OpenShape's formats: a dict ``.npy`` (category ->
  ``{'open_clip_text_feat': [1, D]}``, as ``cat_name_pt_feat.npy``; order = the dict's), or a ``[K, D]``
  ``.npy`` with the names in a ``.json`` / ``.txt`` file of the same stem beside it;
* ``(names, features)`` or a dict name -> feature vector (a user's own list with their features);
* a list of names, or ``"modelnet40"`` / ``"scanobjectnn"`` (their category names): encoded with the
  zoo's text encoder (:mod:`tasks.pointcloud.text`) averaged over :data:`PROMPTS`. Such features fit
  only models aligned to that encoder (the zoo's demo model), not SVL's OpenCLIP-aligned weights.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from zoo.errors import ZooError

MODELNET40 = [
    "airplane", "bathtub", "bed", "bench", "bookshelf", "bottle", "bowl", "car", "chair", "cone", "cup", "curtain",
    "desk", "door", "dresser", "flower pot", "glass box", "guitar", "keyboard", "lamp", "laptop", "mantel",
    "monitor", "night stand", "person", "piano", "plant", "radio", "range hood", "sink", "sofa", "stairs", "stool",
    "table", "tent", "toilet", "tv stand", "vase", "wardrobe", "xbox",
]
NAMED = {"modelnet40": MODELNET40}


def _prompts():
    from .synthetic import CATEGORY_PROMPTS

    return CATEGORY_PROMPTS


def encode_names(names: list[str]) -> torch.Tensor:
    from .text import TextEncoder

    return TextEncoder().encode_templates(list(names), _prompts())


def _from_file(path: Path) -> tuple[list[str], torch.Tensor]:
    from .data import _load_npy, category_features_from_dict

    obj = _load_npy(path, "category features")
    if isinstance(obj, dict):
        return category_features_from_dict(obj, None, str(path))
    feats = np.asarray(obj, dtype=np.float32)
    if feats.ndim != 2:
        raise ZooError(f"{path}: category features must be [K, D] or a dict category -> features, got shape {feats.shape}")
    for names_file in (path.with_suffix(".json"), path.with_suffix(".txt")):
        if names_file.is_file():
            text = names_file.read_text()
            names = json.loads(text) if names_file.suffix == ".json" else [l.strip() for l in text.splitlines() if l.strip()]
            break
    else:
        raise ZooError(f"{path} holds [K, D] features without names; put the K names in {path.with_suffix('.json')} "
                       "(a JSON list) or pass (names, features)")
    if len(names) != len(feats):
        raise ZooError(f"{len(names)} names for {len(feats)} feature rows in {path}")
    return list(names), torch.from_numpy(feats)


def resolve_classes(classes) -> tuple[list[str], torch.Tensor]:
    """``classes`` (see the module docstring) -> (names, features ``[K, D]`` float32)."""
    if isinstance(classes, str) and classes.lower() in NAMED:
        names = NAMED[classes.lower()]
        return names, encode_names(names)
    if isinstance(classes, (str, Path)):
        path = Path(classes)
        if not path.is_file():
            raise ZooError(f"classes={classes!r}: no such file; pass a features .npy, a list of names, "
                           f"(names, features) or one of {', '.join(NAMED)}")
        return _from_file(path)
    if isinstance(classes, dict):
        names = list(classes)
        return names, torch.stack([torch.as_tensor(np.asarray(classes[n]), dtype=torch.float32).reshape(-1) for n in names])
    if isinstance(classes, tuple) and len(classes) == 2 and not isinstance(classes[1], str):
        names, feats = classes
        feats = torch.as_tensor(np.asarray(feats), dtype=torch.float32)
        if feats.ndim != 2 or len(feats) != len(names):
            raise ZooError(f"classes=(names, features): expected {len(names)} rows of features, got shape {tuple(feats.shape)}")
        return list(names), feats
    if isinstance(classes, (list, tuple)) and classes and all(isinstance(c, str) for c in classes):
        return list(classes), encode_names(list(classes))
    raise ZooError(f"classes must be a list of names, (names, features), a dict, a features file or one of "
                   f"{', '.join(NAMED)}; got {type(classes).__name__}")
