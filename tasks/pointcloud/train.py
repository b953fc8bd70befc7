"""SVL pretraining: align a spiking 3D encoder to fixed text (and image) features, as SVL's train.py.

* features L2-normalised; a learned logit scale stored as its log, starting at 14.28 (~ 1 / 0.07;
  OpenShape's ``LogitScaleNetwork``);
* loss = lambda_t * L(f3D[has_text], text_proj(T)) + lambda_i * L(f3D[has_image], image_proj(I)), with
  L(a, b) the symmetric cross-entropy of ``s * norm(a) @ norm(b)^T`` against the diagonal (SVL's
  ``contras_loss``; across processes the features are all-gathered first, as there). The paper's
  "Multi-scale Triple Alignment" has no counterpart in the released code; this is the code's loss.
  The 3D-image term is used when the data carry ``image_feat``;
* AdamW over the backbone, both projections and the logit scale (lr 2e-3, betas (0.9, 0.98),
  eps 1e-8, weight decay 1e-4), the lr set every iteration by a warmup + cosine schedule
  (``cosine_scheduler``: linear from 1e-6 over the warmup epochs, cosine down to 1e-5);
* integer training: multispike counts forward, straight-through gradient (the neuron's own);
* checkpoints written atomically every epoch as ``last.pt`` in SVL's layout (``state_dict``,
  ``logit_scale``, ``text_proj``, ``image_proj``, ``optimizer``, ``epoch``; ``--resume``), the weights of
  the best epoch as ``best.safetensors``; data parallel over processes with ``torchrun`` (gloo on CPU).
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from zoo.errors import ZooError

from .data import collate_train

LOGIT_SCALE_INIT = 14.28


@dataclass
class TrainConfig:
    epochs: int = 250
    batch: int = 128  # per process (SVL: 128 per GPU, 2 GPUs)
    num_points: int = 10000
    lr: float = 2e-3
    lr_start: float = 1e-6
    lr_end: float = 1e-5
    warmup_epochs: float = 5.0
    beta1: float = 0.9
    beta2: float = 0.98
    eps: float = 1e-8
    weight_decay: float = 1e-4
    lambda_text: float = 1.0
    lambda_image: float = 1.0
    logit_scale_init: float = LOGIT_SCALE_INIT
    rgb_drop: float = 0.5
    augment: int = 1
    workers: int = 0
    seed: int = 0
    time_limit: float = 0.0  # seconds; 0 = none. Stops at the first iteration past it (then validates and saves).


class LogitScale(nn.Module):
    """OpenShape's ``LogitScaleNetwork``: stores ``log(init)``, returns ``exp``."""

    def __init__(self, init: float = LOGIT_SCALE_INIT):
        super().__init__()
        self.logit_scale = nn.Parameter(torch.tensor(math.log(init)))

    def forward(self):
        return self.logit_scale.exp()


def _gather(x: torch.Tensor) -> torch.Tensor:
    """All-gather with the local part keeping its gradient (SVL gathers both sides before the logits)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    parts = [torch.zeros_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    parts[dist.get_rank()] = x
    return torch.cat(parts)


def contrastive_loss(a: torch.Tensor, b: torch.Tensor, scale: torch.Tensor) -> tuple[torch.Tensor, float]:
    """SVL's ``contras_loss``: symmetric cross-entropy of ``scale * norm(a) @ norm(b)^T``; row-argmax accuracy."""
    a, b = _gather(F.normalize(a, dim=1)), _gather(F.normalize(b, dim=1))
    logits = scale * a @ b.T
    target = torch.arange(len(a), device=a.device)
    loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
    return loss, float((logits.argmax(1) == target).float().mean())


def cosine_scheduler(base: float, final: float, epochs: int, iters_per_epoch: int, warmup_epochs: float = 0,
                     start_warmup: float = 0.0) -> np.ndarray:
    """The lr of every iteration: linear warmup from ``start_warmup`` to ``base``, then cosine to ``final``."""
    warm = int(warmup_epochs * iters_per_epoch)
    total = epochs * iters_per_epoch
    warm = min(warm, total)
    warmup = np.linspace(start_warmup, base, warm) if warm else np.array([])
    i = np.arange(total - warm)
    cosine = final + 0.5 * (base - final) * (1 + np.cos(np.pi * i / max(len(i), 1)))
    return np.concatenate([warmup, cosine])


def _atomic_save(obj, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _unwrap(m):
    return m.module if isinstance(m, nn.parallel.DistributedDataParallel) else m


def _has_own_text_proj(model) -> bool:
    return getattr(_unwrap(model), "text_proj", None) is not None


def train(model: nn.Module, train_set, cfg: TrainConfig | None = None, out: str | Path = "runs/train",
          resume: str | Path | None = None, device: str = "cpu", evaluate=None, log=print,
          text_dim: int | None = None, image_dim: int | None = None, extra_state=None, progress: bool = True) -> dict:
    """Train ``model`` (an E-3DSNN returning ``[B, out]`` features) on ``train_set`` (items of
    :class:`tasks.pointcloud.data.OpenShapeTrain`). ``evaluate(model) -> dict`` runs after every epoch
    (rank 0); its ``'top1'`` (else minus the loss) picks ``best.safetensors``; ``extra_state(model) -> dict``
    adds tensors to that file; ``progress``: a progress bar within each epoch (stderr, rank 0).
    Returns the last epoch's metrics."""
    cfg = cfg or TrainConfig()
    out = Path(out)
    world, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if str(device).startswith("cuda") else "gloo"
        dist.init_process_group(backend)
        if backend == "nccl":
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
            torch.cuda.set_device(device)
    main = rank == 0
    if main:
        out.mkdir(parents=True, exist_ok=True)
    if len(train_set) == 0:
        raise ZooError("the training set is empty; check --data")
    torch.manual_seed(cfg.seed + rank)
    sample = train_set[0]
    text_dim = text_dim or (len(sample["text_feat"]) if sample["text_feat"] is not None else None)
    image_dim = image_dim or (len(sample["image_feat"]) if sample["image_feat"] is not None else None)
    if text_dim is None and image_dim is None:
        raise ZooError("the training shapes carry neither text_feat nor image_feat; SVL aligns to them")
    model = model.to(device).train()
    out_dim = _unwrap(model).cfg.out_channels
    own = _has_own_text_proj(model)
    if own and text_dim is not None and _unwrap(model).text_proj.in_features != text_dim:
        raise ZooError(f"the data's text features are {text_dim}-d but the model's text_proj takes "
                       f"{_unwrap(model).text_proj.in_features}-d; use features from the model's text encoder")
    heads = nn.ModuleDict({"logit_scale": LogitScale(cfg.logit_scale_init)})
    if text_dim is not None and not own:
        heads["text_proj"] = nn.Linear(text_dim, out_dim)
    if image_dim is not None:
        heads["image_proj"] = nn.Linear(image_dim, out_dim)
    heads = heads.to(device)
    params = list(model.parameters()) + list(heads.parameters())
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps,
                                  weight_decay=cfg.weight_decay)
    start_epoch, best, metrics = 0, -math.inf, {}
    if resume:
        ck = torch.load(resume, map_location="cpu", weights_only=True)
        _unwrap(model).load_state_dict(ck["state_dict"])
        heads["logit_scale"].load_state_dict(ck["logit_scale"])
        for key in ("text_proj", "image_proj"):
            if key in heads and ck.get(key):
                heads[key].load_state_dict(ck[key])
        optimizer.load_state_dict(ck["optimizer"])
        start_epoch, best = ck["epoch"] + 1, ck.get("best", -math.inf)
        if main:
            log(f"resumed from {resume} at epoch {start_epoch}")
    if world > 1:
        model = nn.parallel.DistributedDataParallel(model)
    sampler = torch.utils.data.DistributedSampler(train_set, shuffle=True, seed=cfg.seed, drop_last=True) if world > 1 else None
    loader = torch.utils.data.DataLoader(train_set, batch_size=cfg.batch, shuffle=sampler is None, sampler=sampler,
                                         num_workers=cfg.workers, collate_fn=collate_train, drop_last=True,
                                         generator=torch.Generator().manual_seed(cfg.seed))
    nb = len(loader)
    if nb == 0:
        raise ZooError(f"{len(train_set)} training shapes are fewer than one batch of {cfg.batch}; lower --batch")
    schedule = cosine_scheduler(cfg.lr, cfg.lr_end, cfg.epochs, nb, cfg.warmup_epochs, cfg.lr_start)
    t0 = time.time()
    for epoch in range(start_epoch, cfg.epochs):
        _unwrap(model).train()
        if sampler is not None:
            sampler.set_epoch(epoch)
        if hasattr(train_set, "epoch"):
            train_set.epoch = epoch
        sums = {"loss": 0.0, "text_acc": 0.0, "image_acc": 0.0}
        done = 0
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="batch", leave=False,
                   disable=not (main and progress))
        for i, batch in enumerate(bar):
            if cfg.time_limit and time.time() - t0 > cfg.time_limit:
                break
            for g in optimizer.param_groups:
                g["lr"] = float(schedule[epoch * nb + i])
            feats = model(batch["points"].to(device))
            scale = heads["logit_scale"]()
            loss = feats.new_zeros(())
            if batch["text_feat"] is not None and cfg.lambda_text:
                proj = _unwrap(model).text_proj if own else heads["text_proj"]
                lt, acc = contrastive_loss(feats[batch["has_text_idx"].to(device)], proj(batch["text_feat"].to(device)), scale)
                loss = loss + cfg.lambda_text * lt
                sums["text_acc"] += acc
            if batch["image_feat"] is not None and cfg.lambda_image:
                li, acc = contrastive_loss(feats[batch["has_image_idx"].to(device)],
                                           heads["image_proj"](batch["image_feat"].to(device)), scale)
                loss = loss + cfg.lambda_image * li
                sums["image_acc"] += acc
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            sums["loss"] += float(loss.detach())
            done += 1
            bar.set_postfix(loss=f"{float(loss.detach()):.3f}", refresh=False)
        if main:
            metrics = {"epoch": epoch, "iterations": done, **{k: v / max(done, 1) for k, v in sums.items()},
                       "logit_scale": float(heads["logit_scale"]().detach()), "lr": float(optimizer.param_groups[0]["lr"]),
                       "time_s": round(time.time() - t0, 1)}
            if evaluate is not None:
                metrics.update(evaluate(_unwrap(model)))
            fitness = metrics.get("top1", -metrics["loss"])
            if fitness > best:
                best = fitness
                from zoo.checkpoint import save_safetensors

                state = dict(_unwrap(model).state_dict())
                if extra_state is not None:
                    state.update(extra_state(_unwrap(model)))
                save_safetensors(state, out / "best.safetensors")
            _atomic_save({"state_dict": _unwrap(model).state_dict(), "logit_scale": heads["logit_scale"].state_dict(),
                          "text_proj": heads["text_proj"].state_dict() if "text_proj" in heads else {},
                          "image_proj": heads["image_proj"].state_dict() if "image_proj" in heads else {},
                          "optimizer": optimizer.state_dict(), "epoch": epoch, "best": best,
                          "train_args": asdict(cfg)}, out / "last.pt")
            log(" ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items()), )
        if cfg.time_limit and time.time() - t0 > cfg.time_limit:
            if main:
                log(f"time limit {cfg.time_limit:.0f} s reached in epoch {epoch}")
            break
    if world > 1:
        dist.barrier()
    return metrics
