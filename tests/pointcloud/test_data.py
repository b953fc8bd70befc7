"""OpenShape's file formats (written here, small) through the zoo's adapters; bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tasks.pointcloud.data import (
    DEFAULT_RGB, SCANOBJECTNN_CLASSES, ModelNet40Test, ObjaverseLVIS, OpenShapeTrain, ScanObjectNNTest,
    collate_train, normalize_pc, prepare, load_test_sets,
)
from zoo.errors import ZooError

D = 8  # feature width of the fake category / text features


def _cloud(rng, n=64):
    return (rng.normal(size=(n, 3)) * [1.0, 2.0, 0.5] + [3.0, -1.0, 0.5]).astype(np.float32)


def _unit_sphere(p):
    xyz = p[:, :3]
    assert torch.allclose(xyz.mean(0), torch.zeros(3), atol=1e-5)
    assert float(xyz.norm(dim=1).max()) == pytest.approx(1.0, abs=1e-5)


def write_modelnet40(folder, rng, cats=("airplane", "chair", "cup"), n=6, points=64):
    folder.mkdir(parents=True, exist_ok=True)
    split = [{"name": f"{cats[i % len(cats)]}_{i:04d}", "category": cats[i % len(cats)]} for i in range(n)]
    (folder / "test_split.json").write_text(json.dumps(split))
    pcs = np.empty(n, dtype=object)
    for i in range(n):
        pcs[i] = {"xyz": _cloud(rng, points), "rgb": np.full((points, 3), 100.0, np.float32)}  # 0..255
    np.save(folder / "test_pc.npy", pcs, allow_pickle=True)
    feats = {c: {"open_clip_text_feat": rng.normal(size=(1, D)).astype(np.float32)} for c in cats}
    np.save(folder / "cat_name_pt_feat.npy", feats, allow_pickle=True)
    return split, pcs, feats


def test_modelnet40_format(tmp_path):
    rng = np.random.default_rng(0)
    split, pcs, feats = write_modelnet40(tmp_path / "modelnet40", rng)
    ds = ModelNet40Test(tmp_path / "modelnet40", num_points=32)
    assert ds.categories == ["airplane", "chair", "cup"]  # the dict's order
    torch.testing.assert_close(ds.category_features[1], torch.from_numpy(feats["chair"]["open_clip_text_feat"][0]))
    p, label = ds[4]
    assert p.shape == (32, 6) and label == 1  # chair_0004
    _unit_sphere(p)
    assert torch.allclose(p[:, 3:], torch.full((32, 3), 100 / 255))  # "100 -> 0.4"
    # y_up: OpenShape swaps y and z; with every point kept, the swap is visible exactly
    full = ModelNet40Test(tmp_path / "modelnet40", num_points=64)[0][0]
    xyz = pcs[0]["xyz"].astype(np.float64)[:, [0, 2, 1]]
    torch.testing.assert_close(full[:, :3], torch.from_numpy(normalize_pc(xyz)).float(), rtol=1e-5, atol=1e-5)
    again = ModelNet40Test(tmp_path / "modelnet40", num_points=32)[4][0]
    torch.testing.assert_close(p, again)  # the sampled points are reproducible


def test_objaverse_lvis_format(tmp_path):
    rng = np.random.default_rng(1)
    meta = tmp_path / "meta_data"
    (meta / "split").mkdir(parents=True)
    (tmp_path / "shapes").mkdir()
    cats = ["zebra", "apple", "mug"]
    split = []
    for i in range(5):
        path = tmp_path / "shapes" / f"{i}.npy"
        np.save(path, {"xyz": _cloud(rng), "rgb": rng.random((64, 3)).astype(np.float32)}, allow_pickle=True)
        split.append({"uid": f"u{i}", "category": cats[i % 3], "data_path": f"shapes/{i}.npy", "group": "g"})
    (meta / "split" / "lvis.json").write_text(json.dumps(split))
    feats = rng.normal(size=(3, D)).astype(np.float32)
    np.save(meta / "lvis_cat_name_pt_feat.npy", feats)
    (ds,) = load_test_sets(tmp_path, num_points=48)
    assert isinstance(ds, ObjaverseLVIS) and ds.categories == ["apple", "mug", "zebra"]  # sorted unique
    assert [ds[i][1] for i in range(5)] == [2, 0, 1, 2, 0]
    _unit_sphere(ds[0][0])
    np.save(meta / "lvis_cat_name_pt_feat.npy", feats[:2])
    with pytest.raises(ZooError, match=r"expected \[3, D\] features"):
        load_test_sets(tmp_path)


def test_scanobjectnn_format_without_rgb_uses_the_official_default(tmp_path):
    rng = np.random.default_rng(2)
    folder = tmp_path / "meta_data" / "scanobjectnn"
    folder.mkdir(parents=True)
    np.save(folder / "xyz_label.npy", {"xyz": [_cloud(rng, 40), _cloud(rng, 40)], "label": np.array([3, 14])},
            allow_pickle=True)
    feats = {c: {"open_clip_text_feat": np.full((1, D), k, np.float32)} for k, c in enumerate(reversed(SCANOBJECTNN_CLASSES))}
    np.save(folder / "cat_name_pt_feat.npy", feats, allow_pickle=True)
    (ds,) = load_test_sets(tmp_path / "meta_data", num_points=64)  # more than the file has: sampled with replacement
    assert isinstance(ds, ScanObjectNNTest) and ds.categories == SCANOBJECTNN_CLASSES
    assert float(ds.category_features[0, 0]) == 14.0  # the fixed order, not the dict's
    p, label = ds[1]
    assert p.shape == (64, 6) and label == 14
    assert torch.all(p[:, 3:] == DEFAULT_RGB)


def _train_shape(rng, uid, with_text=True, with_image=True):
    d = {"dataset": "Objaverse", "group": "0", "id": uid, "xyz": _cloud(rng, 80), "rgb": rng.random((80, 3)).astype(np.float32)}
    if with_text:
        d["text"] = ["a chair"]
        d["text_feat"] = [{"original": rng.normal(size=D).astype(np.float32), "prompt_avg": rng.normal(size=D).astype(np.float32)}]
    if with_image:
        d["image_feat"] = rng.normal(size=(12, D)).astype(np.float32)
    return d


def write_train(root, rng, n=4, **kw):
    (root / "meta_data" / "split").mkdir(parents=True, exist_ok=True)
    (root / "shapes").mkdir(exist_ok=True)
    split, shapes = [], []
    for i in range(n):
        d = _train_shape(rng, f"s{i}", with_text=kw.get("text", True) and i != 1, with_image=kw.get("image", True))
        np.save(root / "shapes" / f"s{i}.npy", d, allow_pickle=True)
        split.append({"data_path": f"shapes/s{i}.npy", "dataset": "Objaverse", "group": "0", "id": f"s{i}"})
        shapes.append(d)
    (root / "meta_data" / "split" / "train_all.json").write_text(json.dumps(split))
    return shapes


def test_openshape_training_shapes(tmp_path):
    rng = np.random.default_rng(3)
    shapes = write_train(tmp_path, rng)
    ds = OpenShapeTrain(tmp_path, num_points=50, augment=False, rgb_drop=0.0)
    item = ds[0]
    assert item["points"].shape == (50, 6)
    _unit_sphere(item["points"])
    torch.testing.assert_close(item["text_feat"], torch.from_numpy(shapes[0]["text_feat"][0]["prompt_avg"]))
    assert any(torch.equal(item["image_feat"], torch.from_numpy(v)) for v in shapes[0]["image_feat"])
    assert ds[1]["text_feat"] is None
    batch = collate_train([ds[i] for i in range(4)])
    assert batch["points"].shape == (4, 50, 6) and batch["has_text_idx"].tolist() == [0, 2, 3]
    assert batch["text_feat"].shape == (3, D) and batch["image_feat"].shape == (4, D)
    dropped = OpenShapeTrain(tmp_path, num_points=50, augment=True, rgb_drop=1.0)[2]["points"]
    assert torch.all(dropped[:, 3:] == DEFAULT_RGB) and torch.isfinite(dropped).all()


def test_bad_points_give_one_clear_line():
    xyz = np.random.default_rng(0).normal(size=(20, 3))
    xyz[3, 1] = np.nan
    with pytest.raises(ZooError, match="NaN or infinite coordinates"):
        prepare(xyz, None, 10)
    xyz[3, 1] = np.inf
    with pytest.raises(ZooError, match="NaN or infinite"):
        prepare(xyz, None, 10)
    with pytest.raises(ZooError, match="fewer than the 100 the model samples; pass --num-points 20"):
        prepare(np.zeros((20, 3)) + np.arange(20)[:, None], None, 100)
    with pytest.raises(ZooError, match=r"xyz must be \[N, 3\]"):
        prepare(np.zeros((20, 2)), None, 10)


def test_missing_data_folder_and_empty_folder(tmp_path):
    with pytest.raises(ZooError, match="does not exist"):
        load_test_sets(tmp_path / "nope")
    with pytest.raises(ZooError, match="no test set found"):
        load_test_sets(tmp_path)
    with pytest.raises(ZooError, match="no training split"):
        OpenShapeTrain(tmp_path)
