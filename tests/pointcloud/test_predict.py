"""Reading clouds and meshes, `zoo predict` / `zoo eval` on the bundled demo model, the demo's accuracy."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import zoo
from tasks.pointcloud.models import DEMO, DEMO_CLASSES
from tasks.pointcloud.predict import read_cloud
from zoo import cli
from zoo.errors import ZooError


def _sphere(n=2000, seed=0):
    xyz = np.random.default_rng(seed).normal(size=(n, 3))
    return xyz / np.linalg.norm(xyz, axis=1, keepdims=True)


def test_read_cloud_formats(tmp_path):
    xyz = _sphere(100)
    np.save(tmp_path / "d.npy", {"xyz": xyz, "rgb": np.full((100, 3), 0.5)}, allow_pickle=True)
    got, rgb = read_cloud(tmp_path / "d.npy", 50)
    assert np.allclose(got, xyz) and np.allclose(rgb, 0.5)
    np.save(tmp_path / "a.npy", np.concatenate([xyz, np.full((100, 3), 255.0)], 1))
    assert np.allclose(read_cloud(tmp_path / "a.npy", 50)[1], 1.0)  # 0..255 colour scaled
    np.savetxt(tmp_path / "p.xyz", xyz)
    got, rgb = read_cloud(tmp_path / "p.xyz", 50)
    assert np.allclose(got, xyz) and rgb is None
    np.save(tmp_path / "bad.npy", np.zeros((10, 2)))
    with pytest.raises(ZooError, match=r"expected \[N, 3\]"):
        read_cloud(tmp_path / "bad.npy", 5)
    with pytest.raises(ZooError, match="no such file"):
        read_cloud(tmp_path / "none.ply", 5)


def test_read_a_coloured_ply_mesh(tmp_path):
    pytest.importorskip("trimesh")
    verts = "\n".join(f"{x} {y} {z} 255 0 0" for x, y, z in [(0, 0, 0), (1, 0, 0), (0, 1, 0), (0, 0, 1)])
    faces = "3 0 1 2\n3 0 1 3\n3 0 2 3\n3 1 2 3"
    (tmp_path / "t.ply").write_text(
        "ply\nformat ascii 1.0\nelement vertex 4\nproperty float x\nproperty float y\nproperty float z\n"
        "property uchar red\nproperty uchar green\nproperty uchar blue\nelement face 4\n"
        f"property list uchar int vertex_indices\nend_header\n{verts}\n{faces}\n")
    xyz, rgb = read_cloud(tmp_path / "t.ply", 500)
    assert xyz.shape == (10000, 3) and xyz.min() >= -1e-6 and xyz.sum(1).max() <= 1 + 1e-6  # on the tetrahedron
    assert np.allclose(rgb, [1, 0, 0])


def test_bundled_demo_loads_with_its_categories():
    model = zoo.load(DEMO)
    assert model.names == list(DEMO_CLASSES) and model.head.out_features == len(DEMO_CLASSES)
    with torch.no_grad():
        logits = model(torch.rand(2, 512, 6))
    assert logits.shape == (2, len(DEMO_CLASSES)) and logits.abs().max() <= 1 + 1e-5  # cosine similarities


def test_demo_classifies_fresh_held_out_shapes_zero_shot():
    pytest.importorskip("trimesh")
    from tasks.pointcloud.data import prepare
    from tasks.pointcloud.synthetic import make_shape

    rng = np.random.default_rng(2024)  # not the generator's training or test seed
    model = zoo.load(DEMO)
    points, labels = [], []
    for i in range(24):
        k = i % len(DEMO_CLASSES)
        xyz, rgb, _ = make_shape(DEMO_CLASSES[k], 2048, rng)
        points.append(prepare(xyz, rgb, 512, y_up=False, rng=rng))
        labels.append(k)
    with torch.no_grad():
        pred = model(torch.stack(points)).argmax(1)
    accuracy = float((pred == torch.tensor(labels)).float().mean())
    assert accuracy >= 0.5  # chance is 1/8


def test_zoo_predict_writes_images_and_json(tmp_path, capsys):
    np.save(tmp_path / "ball.npy", np.concatenate([_sphere(), np.tile([[0.9, 0.1, 0.1]], (2000, 1))], 1))
    assert cli.main(["predict", DEMO, str(tmp_path / "ball.npy"), "--out", str(tmp_path / "out"), "--top", "3"]) == 0
    out = capsys.readouterr().out
    assert "ball.npy (2000 points)" in out and "energy (first cloud, fp32)" in out
    doc = json.loads((tmp_path / "out" / "predictions.json").read_text())
    assert len(doc["results"][0]["top"]) == 3 and doc["results"][0]["top"][0]["category"] in DEMO_CLASSES
    assert (tmp_path / "out" / "ball.png").is_file()
    np.save(tmp_path / "few.npy", _sphere(100))
    assert cli.main(["predict", DEMO, str(tmp_path / "few.npy"), "--out", str(tmp_path / "out")]) == 2
    assert "fewer than the 512 the model samples; pass --num-points 100" in capsys.readouterr().err


def test_zoo_eval_prints_the_three_metrics(tmp_path, capsys):
    from .test_data import write_modelnet40

    rng = np.random.default_rng(5)
    cats = list(DEMO_CLASSES[:3])
    folder = tmp_path / "meta_data" / "modelnet40"
    write_modelnet40(folder, rng, cats=cats, n=6, points=600)
    feats = {c: {"open_clip_text_feat": rng.normal(size=(1, 384)).astype(np.float32)} for c in cats}
    np.save(folder / "cat_name_pt_feat.npy", feats, allow_pickle=True)
    assert cli.main(["eval", DEMO, "--data", str(tmp_path), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    (r,) = doc["results"]
    assert r["dataset"] == "ModelNet40" and r["samples"] == 6 and r["classes"] == 3
    assert 0 <= r["top1"] <= r["top3"] <= r["top5"] == 1.0 and r["energy_mj"] > 0
    np.save(folder / "cat_name_pt_feat.npy", {c: {"open_clip_text_feat": np.zeros((1, 1280), np.float32)} for c in cats},
            allow_pickle=True)
    assert cli.main(["eval", DEMO, "--data", str(tmp_path)]) == 2
    assert "category features are 1280-d but the head takes 384-d" in capsys.readouterr().err


def test_demo_with_a_users_class_list_keeps_its_names():
    names = ["ball", "box", "donut"]
    feats = torch.randn(3, 384)
    model = zoo.load(DEMO, classes=(names, feats))
    assert model.names == names and model.head.out_features == 3
    expected = torch.nn.functional.normalize(model.text_proj(feats), dim=1)
    torch.testing.assert_close(model.head.weight, expected)  # folded with the trained text_proj
