"""COCO mAP equals pycocotools' own COCOeval; evaluate() over a data set with a fake detector; `zoo eval`."""

from __future__ import annotations

import json
import sys
import types

import numpy as np
import pytest
import torch
from torch import nn

import neurons
import zoo
import zoo.cli
from tasks.detection.evaluate import STAT_NAMES, coco_map, evaluate, to_coco_results
from tasks.detection.postprocess import COCO80_TO_COCO91
from zoo.errors import ZooError

NC = 3
ONE = pytest.approx(1.0, abs=1e-9)  # COCOeval's precision tp / (tp + fp + eps) can fall short of 1 by an ulp


def _random_gt_and_dets(seed=0, n_images=8):
    rng = np.random.default_rng(seed)
    targets, dets = [], []
    for i in range(n_images):
        h, w = int(rng.integers(60, 400)), int(rng.integers(60, 400))
        n = int(rng.integers(0, 7))
        xy = rng.random((n, 2)) * [w * 0.7, h * 0.7]
        wh = rng.random((n, 2)) * [w * 0.3, h * 0.3] + 2
        boxes = np.concatenate([xy, xy + wh], 1)
        labels = rng.integers(0, NC, n)
        crowd = (rng.random(n) < 0.1).astype(int)
        area = (wh[:, 0] * wh[:, 1]) * rng.uniform(0.5, 1.0, n)  # segment areas are smaller than boxes
        targets.append({"image_id": 100 + i, "boxes": torch.tensor(boxes), "labels": torch.tensor(labels),
                        "iscrowd": torch.tensor(crowd), "area": torch.tensor(area), "orig_size": (h, w)})
        keep = rng.random(n) < 0.8  # some objects missed
        jitter = rng.normal(0, 3, (n, 4))
        db = (boxes + jitter)[keep]
        dl = np.where(rng.random(n) < 0.9, labels, rng.integers(0, NC, n))[keep]  # some wrong classes
        m = int(rng.integers(0, 5))  # false positives
        fxy = rng.random((m, 2)) * [w * 0.7, h * 0.7]
        db = np.concatenate([db, np.concatenate([fxy, fxy + rng.random((m, 2)) * 50 + 2], 1)])
        dl = np.concatenate([dl, rng.integers(0, NC, m)])
        dets.append({"image_id": 100 + i, "boxes": torch.tensor(db, dtype=torch.float32),
                     "scores": torch.tensor(rng.random(len(db)), dtype=torch.float32), "labels": torch.tensor(dl)})
    return targets, dets


def _pycocotools_reference(tmp_path, targets, dets):
    """The official route: an instances JSON and a results JSON on disk, COCO ids, pycocotools alone."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    images, anns = [], []
    for t in targets:
        images.append({"id": t["image_id"], "height": t["orig_size"][0], "width": t["orig_size"][1], "file_name": "x.jpg"})
        for b, c, cr, ar in zip(t["boxes"].tolist(), t["labels"].tolist(), t["iscrowd"].tolist(), t["area"].tolist()):
            anns.append({"id": len(anns) + 1, "image_id": t["image_id"], "category_id": COCO80_TO_COCO91[c],
                         "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]], "area": ar, "iscrowd": cr})
    cats = [{"id": COCO80_TO_COCO91[c], "name": str(c)} for c in range(NC)]
    (tmp_path / "instances.json").write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    (tmp_path / "results.json").write_text(json.dumps(to_coco_results(dets, COCO80_TO_COCO91)))
    gt = COCO(str(tmp_path / "instances.json"))
    ev = COCOeval(gt, gt.loadRes(str(tmp_path / "results.json")), "bbox")
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    return [float(s) for s in ev.stats]


@pytest.mark.parametrize("seed", [0, 1])
def test_coco_map_equals_pycocotools(tmp_path, seed):
    targets, dets = _random_gt_and_dets(seed)
    ref = _pycocotools_reference(tmp_path, targets, dets)
    got = coco_map(dets, targets)
    assert 0.05 < got["map50_95"] < got["map50"] < 1
    assert got["map50"] == pytest.approx(ref[1], abs=1e-12) and got["map50_95"] == pytest.approx(ref[0], abs=1e-12)
    assert [got["stats"][k] for k in STAT_NAMES] == pytest.approx(ref, abs=1e-12)


def test_exact_detections_score_one():
    targets, _ = _random_gt_and_dets(2)
    for t in targets:
        t.pop("iscrowd")  # a crowd box is never matched, so it cannot score 1
    dets = [{"image_id": t["image_id"], "boxes": t["boxes"], "labels": t["labels"],
             "scores": torch.linspace(1, 0.5, len(t["labels"]))} for t in targets]
    got = coco_map(dets, targets)
    assert got["map50"] == ONE and got["map50_95"] == ONE
    assert coco_map([], targets)["map50"] == 0.0
    with pytest.raises(ZooError, match="not in the ground truth"):
        coco_map([{**next(d for d in dets if len(d["labels"])), "image_id": 999}], targets)
    with pytest.raises(ZooError, match="no boxes"):
        coco_map([], [{"image_id": 1, "boxes": torch.zeros(0, 4), "labels": torch.zeros(0)}])


class BrightBoxDetector(nn.Module):
    """A fake SpikeYOLO: finds the one bright rectangle (red > 0.5) in each image; its green value is the class.

    Output like SpikeYOLO in eval mode: ``([B, 4 + nc, A] xywh + probabilities, raw)``; anchor 0 the box,
    anchor 1 a shifted duplicate NMS must remove, anchor 2 a faint false positive. A conv and an I-LIF
    in front give zoo.profile something to count.
    """

    def __init__(self, nc=NC):
        super().__init__()
        self.nc = nc
        self.stem = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.lif = neurons.ILIF()

    def forward(self, x):
        if x.dim() == 5:  # [B, T, 3, H, W] frames (Gen1 form): look at the last one
            x = x[:, -1]
        self.lif(self.stem(x).unsqueeze(0))
        out = torch.zeros(x.shape[0], 4 + self.nc, 3)
        for b, im in enumerate(x):
            ys, xs = torch.nonzero(im[0] > 0.5, as_tuple=True)
            if not len(ys):
                continue
            x1, y1, x2, y2 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
            c = int(torch.round(im[1, (y1 + y2) // 2, (x1 + x2) // 2] * (self.nc - 1)))
            box = torch.tensor([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1]).float()
            out[b, :4, 0], out[b, 4 + c, 0] = box, 0.9
            out[b, :4, 1], out[b, 4 + c, 1] = box + torch.tensor([1.0, 0, 0, 0]), 0.6
            out[b, :4, 2], out[b, 4, 2] = torch.tensor([5.0, 5, 4, 4]), 0.01
        return out, [x]


def _bright_box_dataset(sizes, seed=0):
    g = torch.Generator().manual_seed(seed)
    items = []
    for i, (h, w) in enumerate(sizes):
        img = torch.zeros(3, h, w)
        bw, bh = int(w * 0.3) + 4, int(h * 0.4) + 4
        x1 = int(torch.randint(0, w - bw, (1,), generator=g))
        y1 = int(torch.randint(0, h - bh, (1,), generator=g))
        label = i % NC
        img[0, y1:y1 + bh, x1:x1 + bw] = 1.0
        img[1, y1:y1 + bh, x1:x1 + bw] = label / (NC - 1)
        items.append((img, {"image_id": i, "boxes": torch.tensor([[x1, y1, x1 + bw, y1 + bh]], dtype=torch.float32),
                            "labels": torch.tensor([label]), "orig_size": torch.tensor([h, w])}))
    return items


def test_evaluate_fake_detector_exact():
    # images that need no resizing at imgsz 96: the boxes come back exactly, so mAP is 1.0
    data = _bright_box_dataset([(64, 96), (96, 96), (96, 64), (32, 96)])
    res = evaluate(BrightBoxDetector(), data, imgsz=96)
    assert res.images == 4 and res.map50 == ONE and res.map50_95 == ONE and res.nc == NC
    assert res.firing_rate is not None and res.energy_mj > 0 and res.macs > 0
    assert all(len(d["boxes"]) == 2 for d in res.detections)  # the box and the faint one; the duplicate is gone
    assert set(res.to_dict()) >= {"map50", "map50_95", "firing_rate", "energy_mj"} and "detections" not in res.to_dict()


def test_evaluate_odd_sizes_batched():
    data = _bright_box_dataset([(37, 53), (101, 67), (250, 333), (64, 40), (77, 77)], seed=1)
    res = evaluate(BrightBoxDetector(), iter(data), imgsz=64, batch_size=2)  # a plain iterator works too
    assert res.images == 5 and res.map50 == ONE and 0.6 < res.map50_95 <= 1.0
    for d, (img, t) in zip(res.detections, data):  # boxes are in original pixels
        assert torch.allclose(d["boxes"][0], t["boxes"][0], atol=3.5)
    res = evaluate(BrightBoxDetector(), data, imgsz=64, rect=False, max_images=2, energy=False)
    assert res.images == 2 and res.map50 == ONE and res.energy_mj is None
    # a data set that resized the image (boxes in its pixels, orig_size the original): scored in original pixels
    img, t = data[2]
    half = torch.nn.functional.interpolate(img[None], size=(125, 166), mode="nearest")[0]
    res = evaluate(BrightBoxDetector(), [(half, {**t, "boxes": t["boxes"] * torch.tensor([166 / 333, 0.5] * 2)})], imgsz=64)
    assert res.map50 == ONE and torch.allclose(res.detections[0]["boxes"][0], t["boxes"][0], atol=3)


class _CocoLikeDataset(list):
    """What tasks.detection.data's COCO data set offers for scoring: the JSON and the label -> id table."""

    def __init__(self, items, annotation_file, category_ids):
        super().__init__(items)
        self.annotation_file, self.category_ids = annotation_file, category_ids


def test_evaluate_scores_against_annotation_file(tmp_path):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    data = _bright_box_dataset([(64, 96), (96, 96), (96, 64), (50, 70)], seed=2)
    images, anns = [], []
    for img, t in data:
        images.append({"id": t["image_id"], "height": img.shape[1], "width": img.shape[2], "file_name": "x.png"})
        x1, y1, x2, y2 = t["boxes"][0].tolist()
        anns.append({"id": len(anns) + 1, "image_id": t["image_id"], "category_id": COCO80_TO_COCO91[int(t["labels"][0])],
                     "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1) * 0.8, "iscrowd": 0})
    anns.append({"id": 99, "image_id": 0, "category_id": 1, "bbox": [0, 0, 10, 10], "area": 100, "iscrowd": 1})
    cats = [{"id": COCO80_TO_COCO91[c], "name": str(c)} for c in range(NC)]
    ann_file = tmp_path / "instances_val.json"
    ann_file.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    ds = _CocoLikeDataset(data, ann_file, COCO80_TO_COCO91[:NC])
    res = evaluate(BrightBoxDetector(), ds, imgsz=96, energy=False)
    assert res.ground_truth == str(ann_file) and res.map50 == ONE and res.map50_95 == ONE
    # the same numbers as pycocotools on a results file
    (tmp_path / "res.json").write_text(json.dumps(to_coco_results(res.detections, COCO80_TO_COCO91)))
    gt = COCO(str(ann_file))
    ev = COCOeval(gt, gt.loadRes(str(tmp_path / "res.json")), "bbox")
    ev.evaluate(), ev.accumulate(), ev.summarize()
    assert [res.stats[k] for k in STAT_NAMES] == pytest.approx([float(v) for v in ev.stats], abs=1e-12)
    # only the evaluated images count (else the two unseen objects would be misses)
    res = evaluate(BrightBoxDetector(), ds, imgsz=96, max_images=2, energy=False)
    assert res.images == 2 and res.map50_95 == ONE
    res = evaluate(BrightBoxDetector(), ds, imgsz=96, ground_truth="targets", energy=False)
    assert res.ground_truth == "targets" and res.map50 == ONE
    with pytest.raises(ZooError, match="cannot read COCO annotations"):
        evaluate(BrightBoxDetector(), ds, imgsz=96, ground_truth=tmp_path / "missing.json", energy=False)


def test_evaluate_event_frames():
    data = [(img[None].expand(2, -1, -1, -1), t) for img, t in _bright_box_dataset([(40, 60), (64, 64)])]
    res = evaluate(BrightBoxDetector(), data, imgsz=64, batch_size=2)
    assert res.images == 2 and res.map50 == ONE


def test_evaluate_bad_data():
    with pytest.raises(ZooError, match="empty"):
        evaluate(BrightBoxDetector(), [], imgsz=64)
    with pytest.raises(ZooError, match="image tensor"):
        evaluate(BrightBoxDetector(), [(torch.zeros(64, 64), {"image_id": 0, "boxes": [], "labels": []})], imgsz=64)
    with pytest.raises(ZooError, match="target"):
        evaluate(BrightBoxDetector(), [(torch.zeros(3, 64, 64), {"boxes": []})], imgsz=64)
    with pytest.raises(ZooError, match="pair"):
        evaluate(BrightBoxDetector(), [torch.zeros(3, 64, 64)], imgsz=64)


# --------------------------------------------------------------------------- zoo eval


@pytest.fixture
def detection_cli(monkeypatch):
    """`zoo` verbs as registered by tasks.detection, with zoo.load faked."""
    monkeypatch.setattr(zoo, "load", lambda name, **kw: BrightBoxDetector())


def _fake_data_module(monkeypatch, items):
    mod = types.ModuleType("tasks.detection.data")
    mod.calls = []

    def load_dataset(path, **kw):
        mod.calls.append(path)
        return items

    mod.load_dataset = load_dataset
    monkeypatch.setitem(sys.modules, "tasks.detection.data", mod)
    return mod


def test_zoo_eval_command(detection_cli, monkeypatch, capsys, tmp_path):
    mod = _fake_data_module(monkeypatch, _bright_box_dataset([(64, 96), (96, 64)]))
    assert zoo.cli.main(["eval", "tinysnn-test", "--data", "coco/", "--imgsz", "96", "--device", "cpu", "--json",
                         "--weights", "w.pt", "--save-json", str(tmp_path / "dets.json")]) == 0
    out = json.loads(capsys.readouterr().out)
    assert mod.calls == ["coco/"] and out["map50"] == ONE and out["map50_95"] == ONE and out["images"] == 2
    assert out["energy_mj"] > 0 and out["firing_rate"] is not None
    saved = json.loads((tmp_path / "dets.json").read_text())
    assert {"image_id", "category_id", "bbox", "score"} == set(saved[0]) and len(saved) == 4
    assert zoo.cli.main(["eval", "tinysnn-test", "--data", "coco/", "--imgsz", "96", "--batch", "2", "--weights", "w.pt"]) == 0
    text = capsys.readouterr().out
    assert "mAP@50 100.00" in text and "mAP@50:95 100.00" in text and "mJ" in text


def test_zoo_eval_errors(detection_cli, monkeypatch, capsys):
    assert zoo.cli.main(["eval", "tinysnn-test", "--imgsz", "96"]) == 2
    err = capsys.readouterr().err
    assert "--data" in err and err.count("\n") == 1
    _fake_data_module(monkeypatch, [])
    assert zoo.cli.main(["eval", "tinysnn-test", "--data", "coco/", "--batch", "0"]) == 2
    assert "--batch" in capsys.readouterr().err
