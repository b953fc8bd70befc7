"""The YOLOv8 loss against the official ultralytics 8.0.197 loss (fixture: its outputs as data)."""

from pathlib import Path

import torch
from safetensors import safe_open

from tasks.detection.loss import DetectionLoss, TaskAlignedAssigner

FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "detection" / "loss_official.safetensors"


def _load():
    with safe_open(str(FIXTURE), "pt") as f:
        d = {k: f.get_tensor(k) for k in f.keys()}
    feats = [d[f"feats.{i}"] for i in range(3)]
    grads = [d[f"grads.{i}"] for i in range(3)]
    targets = [{"boxes": d[f"boxes.{i}"], "labels": d[f"labels.{i}"]} for i in range(feats[0].shape[0])]
    return feats, grads, targets, d["items"], d["loss"]


def test_loss_and_gradients_equal_official():
    feats, grads, targets, items, loss = _load()
    feats = [f.clone().requires_grad_() for f in feats]
    total, ours = DetectionLoss(nc=5)(feats, targets)
    total.backward()
    assert torch.allclose(ours, items, rtol=1e-5)
    assert torch.allclose(total.detach(), loss[0], rtol=1e-5)
    for f, g in zip(feats, grads):
        assert torch.allclose(f.grad, g, atol=1e-5)


def test_no_targets_gives_only_classification_loss():
    feats = [torch.randn(2, 64 + 3, s, s, requires_grad=True) for s in (8, 4, 2)]
    total, items = DetectionLoss(nc=3)(feats, [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0)}] * 2)
    total.backward()
    assert items[0] == 0 and items[2] == 0 and items[1] > 0


def test_assigner_picks_anchors_inside_the_box():
    anchors = torch.tensor([[4.0, 4.0], [12.0, 4.0], [4.0, 12.0], [12.0, 12.0]])
    gt = torch.tensor([[[0.0, 0.0, 8.0, 8.0]]])
    pd_boxes = torch.tensor([[[0.0, 0.0, 8.0, 8.0], [8.0, 0.0, 16.0, 8.0], [0.0, 8.0, 8.0, 16.0], [8.0, 8.0, 16.0, 16.0]]])
    scores = torch.full((1, 4, 2), 0.5)
    boxes, target_scores, fg = TaskAlignedAssigner(topk=2, num_classes=2)(scores, pd_boxes, anchors, torch.tensor([[[1.0]]]), gt, torch.ones(1, 1, 1))
    assert fg.tolist() == [[True, False, False, False]]
    assert torch.equal(boxes[0, 0], gt[0, 0]) and target_scores[0, 0, 1] > 0 and target_scores[0, 0, 0] == 0
