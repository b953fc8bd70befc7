"""Class tables, the validation canvas, box rescaling and NMS semantics (image loading and the
letterbox itself: tests/test_vision.py)."""

from __future__ import annotations

import pytest
import torch
import torchvision

from tasks.detection import postprocess
from tasks.detection.classes import COCO80_TO_COCO91, COCO91_TO_COCO80, COCO_NAMES, GEN1_NAMES
from tasks.detection.postprocess import class_names, non_max_suppression, scale_boxes, val_shape, xywh2xyxy
from zoo.errors import ZooError
from zoo.vision import letterbox


def test_coco_names_and_ids():
    assert len(COCO_NAMES) == len(set(COCO_NAMES)) == 80 and COCO_NAMES[0] == "person" and COCO_NAMES[79] == "toothbrush"
    ids = list(COCO80_TO_COCO91)
    assert len(ids) == 80 and ids == sorted(set(ids)) and ids[:12] == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13]
    assert ids[-1] == 90 and 12 not in ids and 83 not in ids and ids[COCO_NAMES.index("dog")] == 18
    assert class_names(80) == list(COCO_NAMES) and class_names(3) == ["class0", "class1", "class2"]
    assert class_names(2, {0: "a", 1: "b"}) == ["a", "b"] and class_names(2) == list(GEN1_NAMES) == ["car", "pedestrian"]
    assert all(COCO91_TO_COCO80[c] == i for i, c in enumerate(ids))
    # the cards and the CLI import the tables from here: the same objects, not copies
    assert postprocess.COCO_NAMES is COCO_NAMES and postprocess.COCO80_TO_COCO91 is COCO80_TO_COCO91


def test_val_shape_like_ultralytics():
    assert val_shape([(480, 640)], 640) == (512, 672)  # landscape: ceil(0.75 * 20 + 0.5) * 32
    assert val_shape([(640, 427)], 640) == (672, 448)  # portrait: ceil(0.667 * 20 + 0.5) * 32
    assert val_shape([(480, 640), (640, 480)], 640) == (672, 672)  # mixed batch: square
    assert val_shape([(500, 500)], 640) == (672, 672)


def test_scale_boxes_round_trip():
    g = torch.Generator().manual_seed(1)
    for h, w, imgsz, auto in ((37, 53, 64, True), (480, 640, 640, False), (333, 101, 320, True), (64, 64, 64, False)):
        img = torch.rand(3, h, w, generator=g)
        out, r, pad = letterbox(img, imgsz, auto=auto)
        xy = torch.rand(20, 2, generator=g) * torch.tensor([w, h]) * 0.8
        wh = torch.rand(20, 2, generator=g) * torch.tensor([w, h]) * 0.2
        boxes = torch.cat((xy, xy + wh), 1)
        boxed = boxes * r + torch.tensor([pad[0], pad[1], pad[0], pad[1]])
        assert (boxed[:, 2] <= out.shape[2] + 1e-3).all() and (boxed[:, 3] <= out.shape[1] + 1e-3).all()
        back = scale_boxes(boxed, r, pad, (h, w))
        assert torch.allclose(back, boxes, atol=1e-3)
    # clipping to the original image; the input is not modified
    b = torch.tensor([[-5.0, -5.0, 700.0, 30.0]])
    assert scale_boxes(b, 1.0, (0, 0), (20, 640)).tolist() == [[0.0, 0.0, 640.0, 20.0]]
    assert b.tolist() == [[-5.0, -5.0, 700.0, 30.0]]


def _pred(rows, nc=3):
    """rows: (cx, cy, w, h, {class: prob}) -> [1, 4 + nc, A]."""
    p = torch.zeros(1, 4 + nc, len(rows))
    for a, (cx, cy, w, h, probs) in enumerate(rows):
        p[0, :4, a] = torch.tensor([cx, cy, w, h])
        for c, v in probs.items():
            p[0, 4 + c, a] = v
    return p


def test_nms_hand_example():
    pred = _pred([
        (50, 50, 20, 20, {0: 0.9}),  # kept
        (52, 50, 20, 20, {0: 0.8}),  # IoU 0.82 with the first, same class: suppressed
        (52, 50, 20, 20, {1: 0.85}),  # same place, other class: kept (class-aware)
        (200, 200, 10, 10, {0: 0.2}),  # below 0.25: dropped at predict, kept at val
        (300, 300, 10, 10, {2: 0.25}),  # exactly conf: dropped (strictly above)
        (100, 100, 40, 40, {0: 0.5, 2: 0.4}),  # one label, or two with multi_label
        (60, 50, 20, 20, {0: 0.7}),  # IoU 0.33 with the first: kept
    ])
    before = pred.clone()
    (d,) = non_max_suppression(pred)
    assert torch.equal(pred, before)
    assert d[:, 4].tolist() == pytest.approx([0.9, 0.85, 0.7, 0.5])
    assert d[:, 5].tolist() == [0, 1, 0, 0]
    assert d[0, :4].tolist() == [40, 40, 60, 60] and d[3, :4].tolist() == [80, 80, 120, 120]
    (d,) = non_max_suppression((pred, "raw"), conf=0.001, multi_label=True)  # val settings; tuple output
    got = sorted((round(s, 4), int(c)) for s, c in zip(d[:, 4].tolist(), d[:, 5].tolist()))
    assert got == sorted([(0.9, 0), (0.85, 1), (0.7, 0), (0.5, 0), (0.4, 2), (0.25, 2), (0.2, 0)])
    (d,) = non_max_suppression(pred, agnostic=True)
    assert d[:, 4].tolist() == pytest.approx([0.9, 0.7, 0.5])  # the class-1 box now suppressed by the first
    (d,) = non_max_suppression(pred, iou=0.9)
    assert len(d) == 5  # 0.82 overlap no longer suppressed
    assert len(non_max_suppression(pred, max_det=2)[0]) == 2
    assert non_max_suppression(pred, classes=[1])[0][:, 5].tolist() == [1]
    empty = non_max_suppression(torch.zeros(2, 7, 10))
    assert len(empty) == 2 and all(e.shape == (0, 6) for e in empty)
    with pytest.raises(ZooError, match="confidence"):
        non_max_suppression(pred, conf=1.5)
    with pytest.raises(ZooError, match="detections"):
        non_max_suppression(torch.zeros(1, 4, 10))


def _reference_nms(pred, conf, iou, multi_label):
    """Per image and class: threshold, then torchvision.ops.nms on that class alone."""
    x = pred[0].T
    boxes, cls = xywh2xyxy(x[:, :4]), x[:, 4:]
    best = cls.max(1).values > conf
    out = []
    for c in range(cls.shape[1]):
        m = best & ((cls[:, c] > conf) if multi_label else (cls.argmax(1) == c) & (cls[:, c] > conf))
        b, s = boxes[m], cls[m, c]
        for i in torchvision.ops.nms(b, s, iou).tolist():
            out.append((round(float(s[i]), 6), c, *[round(float(v), 3) for v in b[i]]))
    return sorted(out)


@pytest.mark.parametrize("multi_label,conf", [(False, 0.25), (True, 0.001), (False, 0.05)])
def test_nms_matches_torchvision(multi_label, conf):
    g = torch.Generator().manual_seed(3)
    nc, a = 5, 600
    xy = torch.rand(2, a, generator=g) * 200
    wh = torch.rand(2, a, generator=g) * 60 + 4
    cls = torch.rand(nc, a, generator=g) ** 3
    pred = torch.cat((xy, wh, cls))[None]
    (d,) = non_max_suppression(pred, conf=conf, iou=0.7, multi_label=multi_label, max_det=10_000)
    got = sorted((round(float(r[4]), 6), int(r[5]), *[round(float(v), 3) for v in r[:4]]) for r in d)
    assert got == _reference_nms(pred, conf, 0.7, multi_label) and len(got) > 20
    assert (d[:-1, 4] >= d[1:, 4]).all()  # sorted by score
    (d300,) = non_max_suppression(pred, conf=conf, multi_label=multi_label)
    assert torch.equal(d300, d[:300])
