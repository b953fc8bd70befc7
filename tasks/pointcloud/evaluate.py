"""Zero-shot evaluation (SVL's ``test_modelnet40`` / ``test_objaverse_lvis`` / ``test_scanobjectnn``).

Each test set's category features go through Rep-VLI once (:meth:`E3DSNN.set_zero_shot_head`: text_proj,
then L2 normalisation, folded into one bias-free linear head), so the evaluation is a plain forward:
top-1 / top-3 / top-5 over all samples and the per-class mean top-1 ("class acc"). Firing rate and energy
are measured on the first sample of each set (batch 1, the papers' convention) by :func:`sparse_energy`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn

import neurons
from neurons.nodes import is_count_neuron


@dataclass
class ZeroShotResult:
    dataset: str
    samples: int
    classes: int
    top1: float
    top3: float
    top5: float
    class_mean: float
    per_class: dict = field(default_factory=dict)
    firing_rate: float | None = None
    energy_mj: float | None = None
    macs: int | None = None
    acs: int | None = None

    def to_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def sparse_energy(model: nn.Module, points: torch.Tensor, preset: str = "fp32") -> dict:
    """Firing rate, MACs, ACs and energy of one forward (:func:`zoo.profile`, which counts the sparse convs
    from their kernel maps through their ``profile_operations``: a spike-fed conv (``Spike*Conv3d``) costs one
    AC per unit event per existing pair, a conv on real values (the stem's first, ``final``) its dense MACs
    over those pairs). Energy = 4.6 pJ x MACs + 0.9 pJ x ACs (fp32, 45 nm, as the papers)."""
    from zoo.profiling import profile

    p = profile(model, points, preset=preset)
    return {"firing_rate": p.firing_rate, "macs": int(p.macs), "acs": int(p.acs), "energy_mj": p.energy_mj,
            "preset": preset}


@torch.no_grad()
def zero_shot(model, test_set, batch_size: int = 16, text_proj: nn.Module | None = None, energy: bool = True,
              max_samples: int | None = None, progress: bool = False) -> ZeroShotResult:
    """Top-1/3/5 and per-class mean accuracy of ``model`` on ``test_set`` (a :mod:`.data` test set)."""
    from .e3dsnn import E3DSNN

    base = model.module if hasattr(model, "module") else model
    saved = (base.head, base._names, base.classes) if isinstance(base, E3DSNN) else None
    if saved is not None:
        base.classes = None  # the test set's categories, for this evaluation only
    base.set_zero_shot_head(test_set.category_features, text_proj, list(test_set.categories))
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    n = len(test_set) if max_samples is None else min(len(test_set), max_samples)
    k = len(test_set.categories)
    correct = torch.zeros(3)
    per_class_hit, per_class_n = torch.zeros(k), torch.zeros(k)
    try:
        indices = range(0, n, batch_size)
        if progress:
            from tqdm import tqdm

            indices = tqdm(indices, desc=test_set.name, unit="batch", leave=False)
        for start in indices:
            items = [test_set[i] for i in range(start, min(start + batch_size, n))]
            points = torch.stack([p for p, _ in items]).to(device)
            labels = torch.tensor([int(y) for _, y in items])
            logits = model(points).float().cpu()
            top = logits.topk(min(5, k), dim=1).indices
            for j, kk in enumerate((1, 3, 5)):
                correct[j] += (top[:, :kk] == labels[:, None]).any(1).sum()
            hit = top[:, 0] == labels
            per_class_n.index_add_(0, labels, torch.ones(len(labels)))
            per_class_hit.index_add_(0, labels, hit.float())
        res = ZeroShotResult(
            test_set.name, n, k, *(float(c / max(n, 1)) for c in correct),
            class_mean=float((per_class_hit[per_class_n > 0] / per_class_n[per_class_n > 0]).mean()) if n else 0.0,
            per_class={test_set.categories[c]: float(per_class_hit[c] / per_class_n[c])
                       for c in range(k) if per_class_n[c] > 0},
        )
        if energy and n:
            e = sparse_energy(model, test_set[0][0][None].to(device))
            res.firing_rate, res.energy_mj, res.macs, res.acs = e["firing_rate"], e["energy_mj"], e["macs"], e["acs"]
    finally:
        if saved is not None:
            base.head, base._names, base.classes = saved
        model.train(was_training)
    return res
