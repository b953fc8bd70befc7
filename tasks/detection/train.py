"""Training SpikeYOLO with the official recipe (ultralytics 8.0.197, SpikeYOLO's cfg/default.yaml).

* integer-valued training: I-LIF counts in the forward pass, straight-through
  gradient inside [0, D] (the neurons' surrogate);
* YOLOv8 loss (:mod:`tasks.detection.loss`);
* SGD, nesterov, momentum 0.937, lr0 0.01 decaying linearly to lr0 x lrf,
  three parameter groups (biases, weights with weight decay 5e-4 scaled by the
  accumulated batch / 64, BN weights without decay); warmup over
  ``max(warmup_epochs x batches, 100)`` iterations from momentum 0.8 and a bias
  lr of 0.1; gradients clipped to norm 10; gradient accumulation to a nominal
  batch of 64;
* EMA of the weights (decay 0.9999 x (1 - exp(-updates / 2000))), used for
  validation and for the saved weights;
* augmentation: letterbox to ``imgsz``, random scale and translation, HSV
  jitter (hue rotated in YIQ space rather than through HSV), horizontal flip, and 4-image mosaic (off for the last
  ``close_mosaic`` epochs);
* a checkpoint written atomically every epoch (``last.pt``: model, EMA,
  optimizer, epoch, arguments) and ``--resume``; the best EMA weights as
  ``best.safetensors``;
* data parallel over processes with ``torchrun`` (gloo on CPU, nccl on GPU);
  AMP (fp16 autocast + grad scaler) on a GPU.
"""

from __future__ import annotations

import math
import random
from copy import deepcopy
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from zoo import trainer
from zoo.errors import ZooError

from .loss import DetectionLoss


@dataclass
class TrainConfig:
    epochs: int = 300
    batch: int = 40
    imgsz: int = 640
    lr0: float = 0.01
    lrf: float = 0.004
    momentum: float = 0.937
    weight_decay: float = 5e-4
    warmup_epochs: float = 10.0
    warmup_momentum: float = 0.8
    warmup_bias_lr: float = 0.1
    nbs: int = 64
    box: float = 7.5
    cls: float = 0.5
    dfl: float = 1.5
    hsv_h: float = 0.015
    hsv_s: float = 0.7
    hsv_v: float = 0.4
    translate: float = 0.1
    scale: float = 0.5
    fliplr: float = 0.5
    mosaic: float = 1.0
    close_mosaic: int = 10
    workers: int = 0
    seed: int = 0
    min_warmup_iters: int = 100
    time_limit: float = 0.0  # seconds; 0 = none. Stops after the epoch that crosses it.


# ----------------------------------------------------------------------------- augmentation


_TO_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_FROM_YIQ = torch.linalg.inv(_TO_YIQ)


def _hsv(img: torch.Tensor, h: float, s: float, v: float, rng: random.Random) -> torch.Tensor:
    """Random hue / saturation / value gains on a [3, H, W] RGB image in [0, 1].

    Hue is rotated in YIQ space (one 3x3 matrix per image: the cheap equivalent of
    a hue shift), saturation blends with the luma, value scales; gains drawn as
    ultralytics draws them (uniform in +-h, +-s, +-v).
    """
    gh, gs, gv = (rng.uniform(-1, 1) * g for g in (h, s, v))
    theta = gh * 2 * math.pi  # hue gain is a fraction of the colour circle
    c, si = math.cos(theta), math.sin(theta)
    rot = torch.tensor([[1.0, 0.0, 0.0], [0.0, c * (1 + gs), -si * (1 + gs)], [0.0, si * (1 + gs), c * (1 + gs)]])
    m = _FROM_YIQ @ rot @ _TO_YIQ * (1 + gv)
    return (m @ img.reshape(3, -1)).reshape(img.shape).clamp_(0, 1)


def _place(img: torch.Tensor, boxes: torch.Tensor, size: int, cfg: TrainConfig, rng: random.Random,
           base: float | None = None):
    """Resize ``img`` by ``base`` (default: letterbox to ``size``) times a random scale gain, place it
    centred on a ``size`` x ``size`` canvas with a random translation (cropping what falls outside),
    and move the boxes with it."""
    _, h, w = img.shape
    r = (size / max(h, w) if base is None else base) * rng.uniform(1 - cfg.scale, 1 + cfg.scale)
    nh, nw = max(1, round(h * r)), max(1, round(w * r))
    img = F.interpolate(img[None], size=(nh, nw), mode="bilinear", align_corners=False)[0]
    dx = (size - nw) / 2 + rng.uniform(-cfg.translate, cfg.translate) * size
    dy = (size - nh) / 2 + rng.uniform(-cfg.translate, cfg.translate) * size
    dx, dy = round(dx), round(dy)
    canvas = torch.full((3, size, size), 114 / 255)
    x0, y0, x1, y1 = max(dx, 0), max(dy, 0), min(dx + nw, size), min(dy + nh, size)
    if x1 > x0 and y1 > y0:
        canvas[:, y0:y1, x0:x1] = img[:, y0 - dy:y1 - dy, x0 - dx:x1 - dx]
    boxes = boxes * r + torch.tensor([dx, dy, dx, dy], dtype=boxes.dtype)
    return canvas, boxes


def _clip_boxes(boxes, labels, w, h, min_size=2.0, min_keep=0.25, area0=None):
    """Clip to the canvas; drop boxes that became tiny or lost most of their area."""
    clipped = boxes.clone()
    clipped[:, 0::2] = clipped[:, 0::2].clamp(0, w)
    clipped[:, 1::2] = clipped[:, 1::2].clamp(0, h)
    bw, bh = clipped[:, 2] - clipped[:, 0], clipped[:, 3] - clipped[:, 1]
    keep = (bw > min_size) & (bh > min_size)
    if area0 is not None:
        keep &= bw * bh > min_keep * area0
    return clipped[keep], labels[keep]


class TrainTransform:
    """Official-style augmentation for one sample (or a mosaic of four)."""

    def __init__(self, dataset, cfg: TrainConfig, seed: int = 0):
        self.dataset, self.cfg, self.mosaic_on = dataset, cfg, True
        self.rng = random.Random(seed)

    def one(self, i: int, size: int):
        img, t = self.dataset[i]
        boxes, labels = t["boxes"].float(), t["labels"].long()
        area0 = None
        img, boxes = _place(img.float(), boxes, size, self.cfg, self.rng)
        return img, boxes, labels, area0

    def __call__(self, i: int):
        cfg, s = self.cfg, self.cfg.imgsz
        if self.mosaic_on and self.rng.random() < cfg.mosaic:
            idx = [i] + [self.rng.randrange(len(self.dataset)) for _ in range(3)]
            canvas = torch.full((3, 2 * s, 2 * s), 114 / 255)
            cx, cy = (int(self.rng.uniform(s * 0.5, s * 1.5)) for _ in range(2))
            all_boxes, all_labels = [], []
            for k, j in enumerate(idx):
                img, t = self.dataset[j]
                _, h, w = img.shape
                r = s / max(h, w)
                img = F.interpolate(img.float()[None], size=(max(1, round(h * r)), max(1, round(w * r))),
                                    mode="bilinear", align_corners=False)[0]
                _, h, w = img.shape
                x0, y0 = (cx - w if k in (0, 2) else cx), (cy - h if k in (0, 1) else cy)
                a0, b0 = max(x0, 0), max(y0, 0)
                a1, b1 = min(x0 + w, 2 * s), min(y0 + h, 2 * s)
                canvas[:, b0:b1, a0:a1] = img[:, b0 - y0:b1 - y0, a0 - x0:a1 - x0]
                all_boxes.append(t["boxes"].float() * r + torch.tensor([x0, y0, x0, y0], dtype=torch.float))
                all_labels.append(t["labels"].long())
            boxes, labels = torch.cat(all_boxes), torch.cat(all_labels)
            area0 = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
            boxes, labels = _clip_boxes(boxes, labels, 2 * s, 2 * s, area0=area0)
            area0 = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
            img, boxes = _place(canvas, boxes, s, cfg, self.rng, base=1.0)  # centre crop at scale ~1, as ultralytics
            area0 = area0 * ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).div(area0.clamp(min=1e-6)).nan_to_num(0)
        else:
            img, boxes, labels, area0 = self.one(i, s)
        boxes, labels = _clip_boxes(boxes, labels, s, s, area0=area0)
        img = _hsv(img, cfg.hsv_h, cfg.hsv_s, cfg.hsv_v, self.rng)
        if self.rng.random() < cfg.fliplr:
            img = img.flip(-1)
            boxes = torch.stack((s - boxes[:, 2], boxes[:, 1], s - boxes[:, 0], boxes[:, 3]), 1) if len(boxes) else boxes
        return img, {"boxes": boxes, "labels": labels}


def _collate(batch):
    return torch.stack([b[0] for b in batch]), [b[1] for b in batch]


# ----------------------------------------------------------------------------- optimisation


class ModelEMA:
    """Exponential moving average of a model's state (ultralytics' ModelEMA semantics)."""

    def __init__(self, model: nn.Module, decay: float = 0.9999, tau: float = 2000, updates: int = 0):
        self.ema = deepcopy(model).eval().requires_grad_(False)
        self.decay, self.tau, self.updates = decay, tau, updates

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = self.decay * (1 - math.exp(-self.updates / self.tau))
        msd = model.state_dict()
        for k, v in self.ema.state_dict().items():
            if v.dtype.is_floating_point:
                v.mul_(d).add_(msd[k].detach(), alpha=1 - d)


def build_optimizer(model: nn.Module, cfg: TrainConfig, accumulate: int) -> torch.optim.SGD:
    """Three groups as ultralytics: biases (no decay), weights (decay), norm weights (no decay)."""
    decay = cfg.weight_decay * cfg.batch * accumulate / cfg.nbs
    biases, weights, norms = [], [], []
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad:
                continue
            if name == "bias":
                biases.append(p)
            elif isinstance(module, nn.modules.batchnorm._BatchNorm):
                norms.append(p)
            else:
                weights.append(p)
    opt = torch.optim.SGD(biases, lr=cfg.lr0, momentum=cfg.momentum, nesterov=True)
    opt.add_param_group({"params": weights, "weight_decay": decay})
    opt.add_param_group({"params": norms, "weight_decay": 0.0})
    return opt


def _atomic_save(obj, path: Path) -> None:
    trainer.save_checkpoint(obj, path)


def _read_resume(path) -> dict:
    """A ``last.pt`` of :func:`train`, read safely; a missing, truncated or foreign file is one ZooError line."""
    return trainer.read_checkpoint(path, ("model", "ema", "updates", "optimizer", "epoch"))


# ----------------------------------------------------------------------------- loop


_unwrap = trainer.unwrap


def train(model: nn.Module, train_set, val_set=None, cfg: TrainConfig | None = None, out: str | Path = "runs/train",
          resume: str | Path | None = None, device: str = "cpu", evaluate=None, log=print, progress: bool = True) -> dict:
    """Train ``model`` (a SpikeYOLO) on ``train_set`` (items ``(image [3,H,W] in [0,1], {'boxes' xyxy px, 'labels'})``).

    ``evaluate(model) -> dict`` (e.g. mAP on ``val_set``) runs on the EMA model after each epoch on rank 0;
    the best ``evaluate(...)['map50']`` selects ``best.safetensors``. Returns the last metrics.
    ``progress``: a progress bar within each epoch (stderr, rank 0).
    """
    cfg = cfg or TrainConfig()
    out = Path(out)
    procs = trainer.setup_processes(device)
    world, rank, device, main = procs.world, procs.rank, procs.device, procs.main
    if main:
        out.mkdir(parents=True, exist_ok=True)
    if len(train_set) == 0:
        raise ZooError("the training set is empty; check --data")
    torch.manual_seed(cfg.seed + rank)
    model = model.to(device).train()
    det = _unwrap(model).model[-1]
    criterion = DetectionLoss(det.nc, det.stride.tolist(), det.reg_max, cfg.box, cfg.cls, cfg.dfl)
    accumulate = max(round(cfg.nbs / (cfg.batch * world)), 1)
    optimizer = build_optimizer(model, cfg, accumulate)
    lf = lambda e: (1 - e / cfg.epochs) * (1.0 - cfg.lrf) + cfg.lrf  # noqa: E731
    ema = ModelEMA(model)
    start_epoch, best, metrics = 0, trainer.Best(out / "best.safetensors", -1.0), {}
    if resume:
        ck = _read_resume(resume)
        trainer.load_states(resume, [(ck["model"], model), (ck["ema"], ema.ema), (ck["optimizer"], optimizer)])
        ema.updates = ck["updates"]
        start_epoch, best.value = ck["epoch"] + 1, ck.get("best_fitness", -1.0)
        if main:
            log(f"resumed from {resume} at epoch {start_epoch}")
    model = trainer.wrap(model, procs)
    transform = TrainTransform(train_set, cfg, seed=cfg.seed + rank)
    data = trainer.Augmented(transform)
    sampler = torch.utils.data.DistributedSampler(data, shuffle=True, seed=cfg.seed) if world > 1 else None
    loader = torch.utils.data.DataLoader(data, batch_size=cfg.batch, shuffle=sampler is None, sampler=sampler,
                                         num_workers=cfg.workers, collate_fn=_collate, drop_last=False)
    nb = len(loader)
    nw = max(round(cfg.warmup_epochs * nb), cfg.min_warmup_iters)
    amp = str(device).startswith("cuda")
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    limit = trainer.TimeLimit(cfg.time_limit)
    last_step = -1
    for epoch in range(start_epoch, cfg.epochs):
        _unwrap(model).train()
        if sampler is not None:
            sampler.set_epoch(epoch)
        transform.mosaic_on = epoch < cfg.epochs - cfg.close_mosaic
        running = torch.zeros(3)
        optimizer.zero_grad()
        bar = trainer.progress(loader, f"epoch {epoch + 1}/{cfg.epochs}", main and progress)
        for i, (imgs, targets) in enumerate(bar):
            ni = i + nb * epoch
            if ni <= nw:  # warmup
                accumulate = max(1, round(float(np.interp(ni, [0, nw], [1, cfg.nbs / (cfg.batch * world)]))))
                for j, g in enumerate(optimizer.param_groups):
                    g["lr"] = float(np.interp(ni, [0, nw], [cfg.warmup_bias_lr if j == 0 else 0.0, cfg.lr0 * lf(epoch)]))
                    g["momentum"] = float(np.interp(ni, [0, nw], [cfg.warmup_momentum, cfg.momentum]))
            imgs = imgs.to(device, non_blocking=True)
            with torch.autocast("cuda", dtype=torch.float16, enabled=amp):
                feats = model(imgs)
                loss, items = criterion([f.float() for f in feats], targets)
            scaler.scale(loss * (world if world > 1 else 1)).backward()
            if ni - last_step >= accumulate:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), max_norm=10.0)
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad()
                ema.update(_unwrap(model))
                last_step = ni
            running += items
            bar.set_postfix(box=f"{items[0]:.3f}", cls=f"{items[1]:.3f}", dfl=f"{items[2]:.3f}", refresh=False)
        for g in optimizer.param_groups:  # linear schedule, stepped per epoch (warmup overrides it per iteration)
            g["lr"] = cfg.lr0 * lf(epoch + 1)
        if main:
            metrics = {"epoch": epoch, "box": float(running[0] / nb), "cls": float(running[1] / nb),
                       "dfl": float(running[2] / nb), "time_s": round(limit.elapsed(), 1)}
            if evaluate is not None:
                metrics.update(evaluate(ema.ema))
            fitness = metrics.get("map50", -metrics["box"] - metrics["cls"] - metrics["dfl"])
            best.update(fitness, ema.ema.state_dict())
            _atomic_save({"epoch": epoch, "model": _unwrap(model).state_dict(), "ema": ema.ema.state_dict(),
                          "updates": ema.updates, "optimizer": optimizer.state_dict(), "best_fitness": best.value,
                          "train_args": asdict(cfg)}, out / "last.pt")
            log(" ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items()))
        if limit.reached():
            if main:
                log(f"time limit {cfg.time_limit:.0f} s reached after epoch {epoch}")
            break
    trainer.barrier(procs)
    return metrics
