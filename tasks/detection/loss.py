"""The YOLOv8 detection loss as SpikeYOLO trains with it (ultralytics 8.0.197).

* Task-aligned assignment (TOOD): for each ground-truth box, the ``topk = 10``
  anchors whose centres lie inside it and maximise
  ``score^alpha x CIoU^beta`` (alpha 0.5, beta 6) are positives; an anchor
  claimed by several boxes goes to the one it overlaps most. Target scores
  are the one-hot class scaled by the normalised alignment metric.
* Classification: BCE with logits against those soft targets.
* Box: (1 - CIoU) and distribution focal loss on the ``reg_max = 16`` bins,
  both weighted by the target score.
* Gains box 7.5, cls 0.5, dfl 1.5; the total is multiplied by the batch size.

CIoU comes from torchvision (``complete_box_iou_loss``). Written from the
ultralytics semantics; checked against the official loss on the same
predictions and targets (see the closing note of the detection issue).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.ops import complete_box_iou_loss

from .spikeyolo import make_anchors


def ciou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Element-wise complete IoU of xyxy boxes ``a`` and ``b`` (same shape ``[..., 4]``)."""
    if a.numel() == 0:
        return a.new_zeros(a.shape[:-1])
    return 1.0 - complete_box_iou_loss(a.reshape(-1, 4), b.reshape(-1, 4), reduction="none", eps=1e-7).view(a.shape[:-1])


def dist2bbox(distance: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    lt, rb = distance.chunk(2, -1)
    return torch.cat((anchors - lt, anchors + rb), -1)


def bbox2dist(anchors: torch.Tensor, boxes: torch.Tensor, reg_max: int) -> torch.Tensor:
    x1y1, x2y2 = boxes.chunk(2, -1)
    return torch.cat((anchors - x1y1, x2y2 - anchors), -1).clamp_(0, reg_max - 1 - 0.01)


class TaskAlignedAssigner:
    def __init__(self, topk: int = 10, num_classes: int = 80, alpha: float = 0.5, beta: float = 6.0, eps: float = 1e-9):
        self.topk, self.nc, self.alpha, self.beta, self.eps = topk, num_classes, alpha, beta, eps

    @torch.no_grad()
    def __call__(self, pd_scores, pd_boxes, anchors, gt_labels, gt_boxes, mask_gt):
        """pd_scores [B, A, nc] (sigmoid), pd_boxes [B, A, 4] xyxy px, anchors [A, 2] px,
        gt_labels [B, M, 1], gt_boxes [B, M, 4] xyxy px, mask_gt [B, M, 1].
        Returns target boxes [B, A, 4], target scores [B, A, nc], foreground mask [B, A]."""
        B, A, _ = pd_scores.shape
        M = gt_boxes.shape[1]
        if M == 0:
            return torch.zeros_like(pd_boxes), torch.zeros_like(pd_scores), torch.zeros(B, A, dtype=torch.bool)
        # anchors whose centre is inside a gt box
        lt, rb = gt_boxes.unsqueeze(2).chunk(2, -1)  # [B, M, 1, 2]
        deltas = torch.cat((anchors[None, None] - lt, rb - anchors[None, None]), -1)  # [B, M, A, 4]
        in_gts = deltas.amin(-1).gt(self.eps)
        candidate = in_gts & mask_gt.bool()
        # alignment metric on the candidates
        labels = gt_labels.long().squeeze(-1)  # [B, M]
        scores = pd_scores.gather(2, labels.unsqueeze(1).expand(B, A, M)).transpose(1, 2)  # [B, M, A]
        overlaps = torch.zeros(B, M, A, dtype=pd_boxes.dtype)
        pairs_gt = gt_boxes.unsqueeze(2).expand(B, M, A, 4)[candidate]
        pairs_pd = pd_boxes.unsqueeze(1).expand(B, M, A, 4)[candidate]
        overlaps[candidate] = ciou(pairs_gt, pairs_pd).clamp_(0)
        metric = torch.where(candidate, scores, torch.zeros_like(scores)).pow(self.alpha) * overlaps.pow(self.beta)
        # top-k per gt (ties and empty rows as ultralytics: indices of masked rows collapse to 0 and are dropped)
        topk_idx = metric.topk(self.topk, dim=-1).indices  # [B, M, k]
        topk_idx = topk_idx.masked_fill(~mask_gt.bool().expand(-1, -1, self.topk), 0)
        counts = torch.zeros(B, M, A, dtype=torch.int8).scatter_add_(-1, topk_idx, torch.ones_like(topk_idx, dtype=torch.int8))
        mask_pos = (counts == 1).to(metric.dtype) * in_gts * mask_gt
        # an anchor claimed by several gts goes to the one it overlaps most
        fg = mask_pos.sum(1)  # [B, A]
        if fg.max() > 1:
            multi = (fg.unsqueeze(1) > 1).expand(-1, M, -1)
            best = torch.zeros_like(mask_pos).scatter_(1, overlaps.argmax(1, keepdim=True), 1)
            mask_pos = torch.where(multi, best, mask_pos)
            fg = mask_pos.sum(1)
        gt_idx = mask_pos.argmax(1)  # [B, A]
        target_labels = labels.gather(1, gt_idx).clamp_(0)
        target_boxes = gt_boxes.gather(1, gt_idx.unsqueeze(-1).expand(-1, -1, 4))
        target_scores = F.one_hot(target_labels, self.nc).to(pd_scores.dtype) * (fg > 0).unsqueeze(-1)
        metric = metric * mask_pos
        norm = (metric * (overlaps * mask_pos).amax(-1, keepdim=True) / (metric.amax(-1, keepdim=True) + self.eps)).amax(1)
        return target_boxes, target_scores * norm.unsqueeze(-1), fg > 0


class DetectionLoss:
    """YOLOv8 loss for a model with ``nc``, ``reg_max`` and ``strides`` (see module docstring)."""

    def __init__(self, nc: int, strides=(8, 16, 32), reg_max: int = 16, box: float = 7.5, cls: float = 0.5, dfl: float = 1.5):
        self.nc, self.reg_max, self.strides = nc, reg_max, tuple(float(s) for s in strides)
        self.gains = (box, cls, dfl)
        self.assigner = TaskAlignedAssigner(topk=10, num_classes=nc, alpha=0.5, beta=6.0)
        self.proj = torch.arange(reg_max, dtype=torch.float)

    @staticmethod
    def pad_targets(targets: list[dict], dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-image ``{'boxes': [N, 4] xyxy px, 'labels': [N]}`` -> labels [B, M, 1], boxes [B, M, 4]."""
        M = max([len(t["labels"]) for t in targets] + [0])
        labels = torch.zeros(len(targets), M, 1, dtype=dtype)
        boxes = torch.zeros(len(targets), M, 4, dtype=dtype)
        for i, t in enumerate(targets):
            n = len(t["labels"])
            if n:
                labels[i, :n, 0] = t["labels"].to(dtype)
                boxes[i, :n] = t["boxes"].to(dtype)
        return labels, boxes

    def __call__(self, feats: list[torch.Tensor], targets: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
        """``feats``: raw head outputs ``[B, 4*reg_max + nc, h, w]`` per level. Returns (loss x B, [box, cls, dfl])."""
        B = feats[0].shape[0]
        no = 4 * self.reg_max + self.nc
        pred = torch.cat([f.view(B, no, -1) for f in feats], 2)
        pred_dist, pred_scores = pred.split((4 * self.reg_max, self.nc), 1)
        pred_dist, pred_scores = pred_dist.permute(0, 2, 1), pred_scores.permute(0, 2, 1)  # [B, A, .]
        anchors, stride = make_anchors([tuple(f.shape[2:]) for f in feats], self.strides, pred.dtype, pred.device)
        gt_labels, gt_boxes = self.pad_targets(targets, pred.dtype)
        mask_gt = gt_boxes.sum(2, keepdim=True).gt(0)
        A = pred_dist.shape[1]
        pred_boxes = dist2bbox(pred_dist.view(B, A, 4, self.reg_max).softmax(3).matmul(self.proj.to(pred.dtype)), anchors)
        target_boxes, target_scores, fg = self.assigner(
            pred_scores.detach().sigmoid(), pred_boxes.detach() * stride, anchors * stride, gt_labels, gt_boxes, mask_gt)
        score_sum = max(target_scores.sum(), 1)
        loss = torch.zeros(3, dtype=pred.dtype)
        loss[1] = F.binary_cross_entropy_with_logits(pred_scores, target_scores, reduction="none").sum() / score_sum
        if fg.any():
            target_boxes = target_boxes / stride
            weight = target_scores.sum(-1)[fg].unsqueeze(-1)
            loss[0] = ((1.0 - ciou(pred_boxes[fg], target_boxes[fg])).unsqueeze(-1) * weight).sum() / score_sum
            target_ltrb = bbox2dist(anchors, target_boxes, self.reg_max)[fg]  # [n, 4]
            dist = pred_dist[fg].view(-1, self.reg_max)
            left = target_ltrb.long()
            wl = (left + 1) - target_ltrb
            ce = lambda idx: F.cross_entropy(dist, idx.view(-1), reduction="none").view(left.shape)  # noqa: E731
            dfl = (ce(left) * wl + ce(left + 1) * (1 - wl)).mean(-1, keepdim=True)
            loss[2] = (dfl * weight).sum() / score_sum
        loss = loss * torch.tensor(self.gains, dtype=pred.dtype)
        return loss.sum() * B, loss.detach()
