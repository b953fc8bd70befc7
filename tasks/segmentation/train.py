"""Training Spike2Former with the official recipe (``configs/Spike2Former/SDTv2_maskformer_DCNpixelDecoder_ade20k.py``).

* integer-valued training: NI-LIF counts in the forward pass, straight-through gradient inside ``[0, D]``
  (:class:`neurons.NILIF`); neuron state reset before every forward (the official ``ResetModelHook``);
* loss: :class:`tasks.segmentation.loss.MaskFormerLoss` (Hungarian matching, CE + focal x20 + dice x1 on every
  decoder output);
* AdamW, lr 1e-3, betas (0.9, 0.999), weight decay 0.005; backbone lr x0.1; no weight decay on
  ``query_embed``, ``query_feat``, ``level_embed``; gradients clipped to norm 0.01;
  ``LinearLR`` warm-up over 1500 iterations from a factor 1e-6, then ``PolyLR`` (power 1, eta_min 0) to the
  last iteration; 160k iterations, batch 6 per GPU x 8 (here: per process);
* augmentation (the ADE20K pipeline): shortest edge drawn from ``crop x {0.625, 0.75, ..., 2.5}`` (long side at
  most ``5 x crop``), random crop with ``cat_max_ratio`` 0.75, horizontal flip, photometric distortion
  (mmseg ``PhotoMetricDistortion``); padding to the crop with 0 (image, after normalisation) and 255 (label);
* validation every ``val_interval`` iterations (mIoU, the zoo's metric), the best as ``best.safetensors``,
  ``last.pt`` written atomically at each validation and at the end; ``--resume``; ``torchrun`` data parallel;
  the shared pieces are :mod:`zoo.trainer`'s.
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from torch import nn

from zoo import trainer
from zoo.errors import ZooError

from .data import IGNORE
from .loss import LossWeights, MaskFormerLoss
from .metrics import SegmentationMetric

MEAN = torch.tensor([123.675, 116.28, 103.53]).view(3, 1, 1)
STD = torch.tensor([58.395, 57.12, 57.375]).view(3, 1, 1)


@dataclass
class TrainConfig:
    iters: int = 160_000
    batch: int = 6
    crop: int = 512
    lr: float = 1e-3
    weight_decay: float = 0.005
    backbone_lr_mult: float = 0.1
    clip_grad: float = 0.01  # 0 = no clipping
    warmup_iters: int = 1500
    warmup_factor: float = 1e-6
    poly_power: float = 1.0
    scale_min: float = 0.625  # shortest edge / crop (320 / 512)
    scale_max: float = 2.5  # (1280 / 512)
    scale_step: float = 0.125
    cat_max_ratio: float = 0.75
    flip: float = 0.5
    photometric: int = 1
    val_interval: int = 2500
    test_size: int = 0  # validation resize: shortest edge (0 = crop), long side at most 4x (the official (2048, 512))
    cls_weight: float = 1.0
    mask_weight: float = 20.0
    dice_weight: float = 1.0
    no_object_weight: float = 0.1
    semantic_weight: float = 0.0  # not official: cross-entropy on the predicted semantic map (MaskFormerLoss.semantic_loss)
    workers: int = 0
    seed: int = 0
    time_limit: float = 0.0  # seconds; 0 = none. Validates, saves and stops at the first iteration past it.

    def loss_weights(self) -> LossWeights:
        return LossWeights(cls=self.cls_weight, mask=self.mask_weight, dice=self.dice_weight,
                           no_object=self.no_object_weight, cls_cost=self.cls_weight, mask_cost=self.mask_weight,
                           dice_cost=self.dice_weight, semantic=self.semantic_weight)


def normalise(img: torch.Tensor) -> torch.Tensor:
    """RGB ``[.., 3, H, W]`` in [0, 1] -> the official input (mean / std on 0..255)."""
    return (img * 255 - MEAN.to(img.device)) / STD.to(img.device)


# ----------------------------------------------------------------------------- augmentation


def _resize(img: torch.Tensor, label: torch.Tensor, short: float, max_long: float):
    h, w = img.shape[-2:]
    r = min(short / min(h, w), max_long / max(h, w))
    size = (max(1, round(h * r)), max(1, round(w * r)))
    img = F.interpolate(img[None], size=size, mode="bilinear", align_corners=False)[0]
    label = F.interpolate(label[None, None].float(), size=size, mode="nearest")[0, 0].long()
    return img, label


def _photometric(img: torch.Tensor, rng: random.Random) -> torch.Tensor:
    """mmseg ``PhotoMetricDistortion``: brightness +-32, contrast 0.5-1.5, saturation 0.5-1.5, hue +-18 (of 180),
    each with probability 1/2; contrast before or after the colour changes at random."""
    if rng.random() < 0.5:
        img = img + rng.uniform(-32, 32) / 255
    contrast_first = rng.random() < 0.5
    if contrast_first and rng.random() < 0.5:
        img = img * rng.uniform(0.5, 1.5)
    img = img.clamp(0, 1)
    if rng.random() < 0.5:
        img = TF.adjust_saturation(img, rng.uniform(0.5, 1.5))
    if rng.random() < 0.5:
        img = TF.adjust_hue(img, rng.uniform(-18, 18) / 180)
    if not contrast_first and rng.random() < 0.5:
        img = img * rng.uniform(0.5, 1.5)
    return img.clamp(0, 1)


class TrainTransform:
    """One training sample: ``(normalised image [3, crop, crop], label [crop, crop])``."""

    def __init__(self, dataset, cfg: TrainConfig, seed: int = 0):
        self.dataset, self.cfg, self.rng = dataset, cfg, random.Random(seed)
        n = int(round((cfg.scale_max - cfg.scale_min) / cfg.scale_step)) + 1
        self.scales = [cfg.crop * (cfg.scale_min + i * cfg.scale_step) for i in range(max(n, 1))]

    def _crop_box(self, label: torch.Tensor):
        c, (h, w) = self.cfg.crop, label.shape
        for _ in range(10):  # mmseg RandomCrop: retry until no class covers more than cat_max_ratio
            y, x = self.rng.randint(0, max(h - c, 0)), self.rng.randint(0, max(w - c, 0))
            part = label[y:y + c, x:x + c]
            counts = torch.bincount(part[part != IGNORE].flatten(), minlength=1)
            counts = counts[counts > 0]
            if self.cfg.cat_max_ratio >= 1 or (len(counts) > 1 and counts.max() / counts.sum() < self.cfg.cat_max_ratio):
                break
        return y, x

    def __call__(self, i: int):
        cfg, c = self.cfg, self.cfg.crop
        img, label, _ = self.dataset[i]
        img, label = _resize(img.float(), label, self.rng.choice(self.scales), 5 * c)
        y, x = self._crop_box(label)
        img, label = img[:, y:y + c, x:x + c], label[y:y + c, x:x + c]
        if self.rng.random() < cfg.flip:
            img, label = img.flip(-1), label.flip(-1)
        if cfg.photometric:
            img = _photometric(img, self.rng)
        img = normalise(img)
        h, w = label.shape
        img = F.pad(img, (0, c - w, 0, c - h), value=0.0)
        label = F.pad(label, (0, c - w, 0, c - h), value=IGNORE)
        return img, label


# ----------------------------------------------------------------------------- optimisation


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """Official ``paramwise_cfg``: ``backbone`` lr x0.1; ``query_embed``, ``query_feat``, ``level_embed`` decay 0."""
    groups: dict[tuple[float, float], list] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        lr = cfg.lr * (cfg.backbone_lr_mult if "backbone" in name else 1.0)
        wd = 0.0 if any(k in name for k in ("query_embed", "query_feat", "level_embed")) else cfg.weight_decay
        groups.setdefault((lr, wd), []).append(p)
    params = [{"params": ps, "lr": lr, "initial_lr": lr, "weight_decay": wd} for (lr, wd), ps in groups.items()]
    return torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, 0.999), weight_decay=cfg.weight_decay)


def lr_factor(it: int, cfg: TrainConfig) -> float:
    """``LinearLR`` (start factor 1e-6, iterations [0, warmup)) then ``PolyLR`` (power 1, eta_min 0) to ``iters``."""
    if it < cfg.warmup_iters:
        return cfg.warmup_factor + (1 - cfg.warmup_factor) * it / cfg.warmup_iters
    span = max(cfg.iters - cfg.warmup_iters, 1)
    return max(1 - (it - cfg.warmup_iters) / span, 0.0) ** cfg.poly_power


# ----------------------------------------------------------------------------- start from random weights


def _start_scales(model: nn.Module) -> list[tuple[str, nn.Module, str]]:
    """The layers a random start leaves at the wrong scale, with what to scale them to: those that feed a neuron
    with no BatchNorm between (``"fire"``: every attention's gain, on ``attention_gain=True`` models, and the mask
    MLP's two no-bias linears), and the pixel decoder's ``mask_feature`` conv (``"unit"``: real-valued, read
    by the mask product; from random weights its output varies by ~0.04 over the image, so every mask is flat)."""
    from .spike2former import MLP, AttentionGain, DCNTransformerEncoderPixelDecoder

    found = [(n, m, "fire") for n, m in model.named_modules() if isinstance(m, AttentionGain)]
    for n, m in model.named_modules():
        if isinstance(m, MLP):
            found += [(f"{n}.fc1", m.fc1, "fire"), (f"{n}.fc2", m.fc2, "fire")]
        if isinstance(m, DCNTransformerEncoderPixelDecoder):
            found.append((f"{n}.mask_feature", m.mask_feature, "unit"))
    return found


@torch.no_grad()
def calibrate_firing(model: nn.Module, images: torch.Tensor, fire: float = 0.3, log=None) -> dict[str, float]:
    """A data-dependent initialisation (as LSUV, Mishkin and Matas 2016) for training from scratch: scale the
    layers of :func:`_start_scales` on ``images`` so that a fraction ``fire`` of a ``"fire"`` layer's outputs
    reach its neuron's first level (0.5), about what a BatchNorm-fed neuron fires at from random weights
    (measured: 27-39 %), and a ``"unit"`` layer's output has standard deviation 1. One forward per layer in
    execution order, BatchNorm on batch statistics as in training; an attention's gain buffer, a layer's
    weight and bias. Returns the factors applied."""
    from .spike2former import AttentionGain

    layers = _start_scales(model)
    if not layers:
        return {}
    was_training = model.training
    model.train()
    order, seen = [], {}
    hooks = [m.register_forward_hook(lambda mod, i, out, n=n: order.append(n) if n not in order else None)
             for n, m, _ in layers]
    model(images)
    for h in hooks:
        h.remove()
    modules = {n: (m, kind) for n, m, kind in layers}
    factors = {}
    for name in order:
        layer, kind = modules[name]
        hook = layer.register_forward_hook(lambda mod, i, out: seen.__setitem__("out", out.detach().flatten()))
        model(images)
        hook.remove()
        out = seen.pop("out").float()
        if kind == "unit":
            spread = float(out.std())
            factor = 1.0 / spread if spread > 0 else 1.0
        else:
            sample = out[torch.randperm(out.numel(), generator=torch.Generator().manual_seed(0))[:200_000]]
            level = float(torch.quantile(sample, 1 - fire))
            factor = 0.5 / level if level > 0 else 1.0
        if isinstance(layer, AttentionGain):
            layer.gain.mul_(factor)
        else:
            layer.weight.mul_(factor)
            if layer.bias is not None:
                layer.bias.mul_(factor)
        factors[name] = factor
    model.train(was_training)
    if log:
        log("calibrated the start: " + ", ".join(f"{n} x{f:.3g}" for n, f in factors.items()))
    return factors


# ----------------------------------------------------------------------------- validation


@torch.no_grad()
def evaluate(model: nn.Module, dataset, size: int, num_classes: int, device: str = "cpu",
             max_images: int | None = None) -> dict:
    """mIoU / mAcc / aAcc (the zoo's mmseg metric) with the official test resize: shortest edge ``size``, long
    side at most ``4 x size``, logits resized back to the label, argmax."""
    model.eval()
    metric = SegmentationMetric(num_classes)
    n = len(dataset) if max_images is None else min(len(dataset), max_images)
    for i in range(n):
        img, label, _ = dataset[i]
        h, w = img.shape[-2:]
        r = min(size / min(h, w), 4 * size / max(h, w))
        x = F.interpolate(img[None].float(), size=(round(h * r), round(w * r)), mode="bilinear", align_corners=False)
        logits = model(normalise(x).to(device))
        logits = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)
        metric.update(logits.argmax(1)[0].cpu(), label)
    res = metric.compute()
    return {k: v for k, v in res.items() if k in ("mIoU", "mAcc", "aAcc")}


# ----------------------------------------------------------------------------- loop


def _batches(loader, sampler, start_epoch: int):
    epoch = start_epoch
    while True:
        if sampler is not None:
            sampler.set_epoch(epoch)
        yield from loader
        epoch += 1


def train(model: nn.Module, train_set, val_set=None, cfg: TrainConfig | None = None, out="runs/train", resume=None,
          device: str = "cpu", num_classes: int | None = None, log=print, progress: bool = True,
          from_scratch: bool = False) -> dict:
    """Train a Spike2Former on ``train_set`` (items ``(image [3,H,W] in [0,1], label [H,W], name)``).

    ``from_scratch`` (random weights, not resumed): :func:`calibrate_firing` on the first batch first.

    Validates on ``val_set`` (mIoU) every ``cfg.val_interval`` iterations and at the end, on rank 0; the best
    mIoU selects ``best.safetensors``. Returns the last metrics.
    """
    cfg = cfg or TrainConfig()
    procs = trainer.setup_processes(device)
    out = Path(out)
    if procs.main:
        out.mkdir(parents=True, exist_ok=True)
    if len(train_set) == 0:
        raise ZooError("the training set is empty; check --data")
    num_classes = num_classes or trainer.unwrap(model).cfg.num_classes
    torch.manual_seed(cfg.seed + procs.rank)
    model = model.to(procs.device).train()
    criterion = MaskFormerLoss(num_classes, cfg.loss_weights())
    optimizer = build_optimizer(model, cfg)
    best = trainer.Best(out / "best.safetensors")
    start, metrics = 0, {}
    if resume:
        ck = trainer.read_checkpoint(resume, ("model", "optimizer", "iter"), counter="iter")
        trainer.load_states(resume, [(ck["model"], model), (ck["optimizer"], optimizer)])
        start, best.value = ck["iter"], float(ck.get("best_fitness", float("-inf")))
        if procs.main:
            log(f"resumed from {resume} at iteration {start}")
    data = trainer.Augmented(TrainTransform(train_set, cfg, seed=cfg.seed + procs.rank + 7919 * start))
    if from_scratch and not resume:  # before wrap: data parallel starts every process from rank 0's weights
        first = TrainTransform(train_set, cfg, seed=cfg.seed)
        images = torch.stack([first(i)[0] for i in range(min(cfg.batch, len(train_set)))]).to(procs.device)
        calibrate_firing(model, images, log=log if procs.main else None)
    ddp = trainer.wrap(model, procs)
    sampler = torch.utils.data.DistributedSampler(data, shuffle=True, seed=cfg.seed) if procs.world > 1 else None
    loader = torch.utils.data.DataLoader(data, batch_size=cfg.batch, shuffle=sampler is None, sampler=sampler,
                                         num_workers=cfg.workers, drop_last=len(data) >= cfg.batch * procs.world)
    limit = trainer.TimeLimit(cfg.time_limit)
    batches = _batches(loader, sampler, start // max(len(loader), 1))
    running, seen = torch.zeros(4), 0
    bar = trainer.progress(range(start, cfg.iters), "iterations", procs.main and progress)
    for it in bar:
        for g in optimizer.param_groups:
            g["lr"] = g["initial_lr"] * lr_factor(it, cfg)
        imgs, labels = next(batches)
        if ((labels >= num_classes) & (labels != IGNORE)).any():
            bad = sorted(set(labels[(labels >= num_classes) & (labels != IGNORE)].unique().tolist()))[:5]
            raise ZooError(f"label values {bad} are outside the model's {num_classes} classes; "
                           "train a model with as many classes as the data set")
        imgs, labels = imgs.to(procs.device), labels.to(procs.device)
        _, cls_scores, mask_preds = ddp(imgs, return_layers=True)
        loss, items = criterion(cls_scores, mask_preds, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.clip_grad > 0:
            nn.utils.clip_grad_norm_(model.parameters(), max_norm=cfg.clip_grad)
        optimizer.step()
        running += torch.tensor([items["cls"], items["mask"], items["dice"], items["semantic"]])
        seen += 1
        if hasattr(bar, "set_postfix"):
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
        stop = trainer.any_process(limit.reached(), procs)  # every process stops at the same iteration
        done = it + 1 == cfg.iters or stop
        if (it + 1) % cfg.val_interval and not done:
            continue
        if procs.main:
            metrics = {"iter": it + 1, "loss_cls": float(running[0] / seen), "loss_mask": float(running[1] / seen),
                       "loss_dice": float(running[2] / seen), **({"loss_semantic": float(running[3] / seen)}
                                                                  if cfg.semantic_weight else {}), "lr": optimizer.param_groups[0]["lr"],
                       "time_s": round(limit.elapsed(), 1)}
            if val_set is not None:
                metrics.update(evaluate(model, val_set, cfg.test_size or cfg.crop, num_classes, procs.device))
                model.train()
            fitness = metrics.get("mIoU", -float(running.sum() / seen))
            best.update(fitness if not math.isnan(fitness) else float("-inf"), model.state_dict())
            trainer.save_checkpoint({"iter": it + 1, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                     "best_fitness": best.value, "train_args": asdict(cfg)}, out / "last.pt")
            log(" ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items()))
        running, seen = torch.zeros(4), 0
        if stop:
            if procs.main:
                log(f"time limit {cfg.time_limit:.0f} s reached at iteration {it + 1}")
            break
    trainer.barrier(procs)
    return metrics
