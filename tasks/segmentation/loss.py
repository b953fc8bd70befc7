"""Spike2Former's training loss: MaskFormer set prediction with Hungarian matching.

What the official configs (BICLab/Spike2Former ``configs/Spike2Former/*.py``) build, through mmseg's
``MaskFormerHead.loss`` and mmdet 3.1's ``MaskFormerHead.loss_by_feat``:

* targets: one binary mask per class present in the label map (255 excluded), at the label's resolution;
* matching per image and per decoder output: ``HungarianAssigner`` (scipy ``linear_sum_assignment``) on
  ``ClassificationCost`` (``-softmax(cls)[gt]``, weight 1) + ``FocalLossCost`` (``binary_input``, weight 20,
  alpha 0.25, gamma 2, eps 1e-12, averaged over pixels) + ``DiceCost`` (``pred_act``, naive, eps 1, weight 1),
  with the ground truth nearest-resized to the prediction size (``H/2 x W/2`` here);
* losses on each of the ``1 + L`` outputs (deep supervision), summed:
  cross-entropy over ``K + 1`` classes (class weight 1, no-object 0.1; averaged by the summed class weights),
  weight 1; sigmoid focal loss on the matched masks bilinearly upsampled to the label size (alpha 0.25,
  gamma 2; mean over matched masks x pixels), weight 20; naive dice (eps 1; mean over matched masks),
  weight 1. No point sampling (the MaskFormer head of mmdet, not Mask2Former's ``num_points``).

Under data parallel the number of matched masks is averaged over processes (mmdet's ``reduce_mean``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment

from .data import IGNORE


@dataclass(frozen=True)
class LossWeights:
    """Official values (``SDTv2_maskformer_DCNpixelDecoder_ade20k.py``; VOC 4x4 uses cls 2 / cls_cost 2)."""

    cls: float = 1.0
    mask: float = 20.0
    dice: float = 1.0
    no_object: float = 0.1
    cls_cost: float = 1.0
    mask_cost: float = 20.0
    dice_cost: float = 1.0
    alpha: float = 0.25
    gamma: float = 2.0
    semantic: float = 0.0  # not in the official recipe: see MaskFormerLoss.semantic_loss


def semantic_to_instances(label: torch.Tensor, ignore_index: int = IGNORE) -> tuple[torch.Tensor, torch.Tensor]:
    """``label [H, W]`` -> (classes ``[G]``, binary masks ``[G, H, W]``), one per class present (mmseg order: sorted)."""
    classes = torch.unique(label)
    classes = classes[classes != ignore_index]
    return classes, (label[None] == classes[:, None, None]).float()


# ----------------------------------------------------------------------------- matching costs


def focal_cost(mask_logits: torch.Tensor, gt: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0,
               eps: float = 1e-12) -> torch.Tensor:
    """mmdet ``FocalLossCost`` with ``binary_input``: ``[Q, P]`` logits, ``[G, P]`` {0,1} -> ``[Q, G]``."""
    p = mask_logits.sigmoid()
    neg = -(1 - p + eps).log() * (1 - alpha) * p.pow(gamma)
    pos = -(p + eps).log() * alpha * (1 - p).pow(gamma)
    return (pos @ gt.T + neg @ (1 - gt).T) / mask_logits.shape[1]


def dice_cost(mask_logits: torch.Tensor, gt: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """mmdet ``DiceCost`` (``pred_act``, naive dice): ``[Q, P]`` logits, ``[G, P]`` -> ``[Q, G]``."""
    p = mask_logits.sigmoid()
    num = 2 * p @ gt.T
    den = p.sum(-1)[:, None] + gt.sum(-1)[None, :]
    return 1 - (num + eps) / (den + eps)


@torch.no_grad()
def match(cls_logits: torch.Tensor, mask_logits: torch.Tensor, gt_classes: torch.Tensor, gt_masks: torch.Tensor,
          w: LossWeights = LossWeights()) -> tuple[torch.Tensor, torch.Tensor]:
    """Hungarian matching of one image: ``cls [Q, K+1]``, ``masks [Q, h, w]`` (logits), ``gt_masks [G, H, W]``.

    Returns (query indices, gt indices), each ``[min(Q, G)]``.
    """
    if len(gt_classes) == 0:
        empty = torch.zeros(0, dtype=torch.long, device=cls_logits.device)
        return empty, empty
    gt = F.interpolate(gt_masks[:, None], size=mask_logits.shape[-2:], mode="nearest")[:, 0].flatten(1)
    pred = mask_logits.flatten(1).float()
    cost = (-cls_logits.float().softmax(-1)[:, gt_classes] * w.cls_cost
            + focal_cost(pred, gt, w.alpha, w.gamma) * w.mask_cost + dice_cost(pred, gt) * w.dice_cost)
    rows, cols = linear_sum_assignment(cost.cpu().numpy())
    dev = cls_logits.device
    return torch.as_tensor(rows, dtype=torch.long, device=dev), torch.as_tensor(cols, dtype=torch.long, device=dev)


# ----------------------------------------------------------------------------- losses


def sigmoid_focal_loss(logits: torch.Tensor, target: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0) -> torch.Tensor:
    """mmdet ``py_sigmoid_focal_loss`` per element (the official call passes ``1 - mask`` as the label index of a
    one-class focal loss, which is this loss with target = mask)."""
    p = logits.sigmoid()
    pt = (1 - p) * target + p * (1 - target)
    weight = (alpha * target + (1 - alpha) * (1 - target)) * pt.pow(gamma)
    return F.binary_cross_entropy_with_logits(logits, target, reduction="none") * weight


def dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """mmdet ``DiceLoss`` (sigmoid, naive dice) per mask: ``[N, ...]`` -> ``[N]``."""
    p, t = logits.sigmoid().flatten(1), target.flatten(1)
    return 1 - (2 * (p * t).sum(1) + eps) / (p.sum(1) + t.sum(1) + eps)


def _mean_over_processes(n: float, device) -> float:
    if dist.is_available() and dist.is_initialized():
        t = torch.tensor([n], dtype=torch.float, device=device)
        dist.all_reduce(t)
        n = float(t) / dist.get_world_size()
    return max(n, 1.0)


class MaskFormerLoss:
    """``loss(cls_scores [1+L, B, Q, K+1], mask_preds [1+L, B, Q, h, w], labels [B, H, W])`` ->
    ``(total, {'cls', 'mask', 'dice'})`` (the items are detached sums over the outputs)."""

    def __init__(self, num_classes: int, weights: LossWeights = LossWeights(), ignore_index: int = IGNORE):
        self.num_classes, self.w, self.ignore_index = num_classes, weights, ignore_index

    def class_weight(self, device) -> torch.Tensor:
        cw = torch.ones(self.num_classes + 1, device=device)
        cw[-1] = self.w.no_object
        return cw

    def single(self, cls: torch.Tensor, masks: torch.Tensor, targets: list[tuple[torch.Tensor, torch.Tensor]]):
        """One decoder output: ``cls [B, Q, K+1]``, ``masks [B, Q, h, w]``; ``targets`` per image (classes, masks)."""
        b, q = cls.shape[:2]
        labels = torch.full((b, q), self.num_classes, dtype=torch.long, device=cls.device)
        pred_masks, gt_masks = [], []
        for i, (gc, gm) in enumerate(targets):
            rows, cols = match(cls[i], masks[i], gc, gm, self.w)
            labels[i, rows] = gc[cols]
            pred_masks.append(masks[i, rows])
            gt_masks.append(gm[cols])
        cw = self.class_weight(cls.device)
        loss_cls = F.cross_entropy(cls.flatten(0, 1).float(), labels.flatten(), weight=cw, reduction="sum") \
            / cw[labels].sum()
        pred, gt = torch.cat(pred_masks), torch.cat(gt_masks)
        n = _mean_over_processes(float(len(gt)), cls.device)
        if len(gt) == 0:
            zero = masks.sum() * 0
            return loss_cls, zero, zero
        pred = F.interpolate(pred[:, None].float(), size=gt.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
        loss_dice = dice_loss(pred, gt).sum() / n
        loss_mask = sigmoid_focal_loss(pred, gt, self.w.alpha, self.w.gamma).sum() / (n * gt.shape[-2] * gt.shape[-1])
        return loss_cls, loss_mask, loss_dice

    def semantic_loss(self, cls: torch.Tensor, masks: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of the semantic map the model predicts at test time (``softmax(cls)[:-1] . sigmoid(masks)``,
        normalised over the classes) against the labels, at mask resolution, ignoring ``ignore_index``.

        Not part of the official recipe (``semantic`` weight 0 by default): MaskFormer's set loss alone needs
        far more iterations than a CPU run has before any query claims a small class; this term trains the
        output the metric reads from the first step (the zoo's demo model uses it; its card says so)."""
        probs = torch.einsum("bqc,bqhw->bchw", F.softmax(cls.float(), -1)[..., :-1], masks.float().sigmoid())
        small = F.interpolate(labels[:, None].float(), size=masks.shape[-2:], mode="nearest")[:, 0].long()
        log_p = torch.log(probs.clamp_min(1e-6) / probs.sum(1, keepdim=True).clamp_min(1e-6))
        return F.nll_loss(log_p, small, ignore_index=self.ignore_index)

    def __call__(self, cls_scores: torch.Tensor, mask_preds: torch.Tensor, labels: torch.Tensor):
        targets = [semantic_to_instances(lab, self.ignore_index) for lab in labels]
        total = cls_scores.new_zeros(())
        items = torch.zeros(4)
        for cls, masks in zip(cls_scores, mask_preds):
            lc, lm, ld = self.single(cls, masks, targets)
            total = total + self.w.cls * lc + self.w.mask * lm + self.w.dice * ld
            ls = self.semantic_loss(cls, masks, labels) if self.w.semantic > 0 else lc.new_zeros(())
            total = total + self.w.semantic * ls
            items += torch.stack([lc, lm, ld, ls]).detach().cpu()
        return total, {"cls": float(items[0]), "mask": float(items[1]), "dice": float(items[2]),
                       "semantic": float(items[3])}
