"""SVL's loss, schedule and trainer (checkpoint / resume), the zero-shot metrics, energy counting, classes=."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import zoo
from tasks.pointcloud.classes import resolve_classes
from tasks.pointcloud.data import OpenShapeTrain
from tasks.pointcloud.e3dsnn import E3DSNN, E3DSNNConfig, text_proj_from_checkpoint
from tasks.pointcloud.evaluate import sparse_energy, zero_shot
from tasks.pointcloud.train import LogitScale, TrainConfig, contrastive_loss, cosine_scheduler, train
from zoo.errors import WeightsError, ZooError

from .test_data import D, write_train

TINY = E3DSNNConfig(4, (4, 4, 8, 8), (1, 1, 1, 1), out_channels=16, voxel_size=0.2, text_dim=D)


def test_contrastive_loss_is_svls_symmetric_cross_entropy():
    torch.manual_seed(0)
    a, b = torch.randn(5, 7), torch.randn(5, 7)
    scale = LogitScale()().detach()
    assert float(scale) == pytest.approx(14.28, rel=1e-6)
    loss, acc = contrastive_loss(a, b, scale)
    logits = scale * F.normalize(a, dim=1) @ F.normalize(b, dim=1).T
    t = torch.arange(5)
    expected = (-logits.log_softmax(1)[t, t].mean() - logits.log_softmax(0)[t, t].mean()) / 2
    torch.testing.assert_close(loss, expected)
    assert acc == float((logits.argmax(1) == t).float().mean())
    perfect, acc1 = contrastive_loss(b * 3, b, torch.tensor(100.0))
    assert acc1 == 1.0 and float(perfect) < float(loss)


def test_cosine_schedule_warms_up_then_decays():
    lr = cosine_scheduler(2e-3, 1e-5, epochs=10, iters_per_epoch=4, warmup_epochs=2, start_warmup=1e-6)
    assert len(lr) == 40
    assert lr[0] == pytest.approx(1e-6) and lr[7] == pytest.approx(2e-3) and lr[8] == pytest.approx(2e-3)
    assert np.all(np.diff(lr[8:]) <= 0) and 1e-5 < lr[-1] < 2e-5  # DINO-style: the last step is just above the end


def test_train_writes_svl_checkpoints_and_resumes(tmp_path):
    rng = np.random.default_rng(0)
    write_train(tmp_path, rng, n=6)
    data = OpenShapeTrain(tmp_path, num_points=40, augment=True)
    torch.manual_seed(0)
    model = E3DSNN(TINY)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = TrainConfig(epochs=2, batch=3, num_points=40, warmup_epochs=1)
    logs = []
    metrics = train(model, data, cfg=cfg, out=tmp_path / "run", log=logs.append)
    assert metrics["epoch"] == 1 and math.isfinite(metrics["loss"]) and metrics["loss"] > 0
    ck = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert {"state_dict", "logit_scale", "text_proj", "image_proj", "optimizer", "epoch"} <= set(ck)
    assert ck["text_proj"] == {}  # this model carries its own text_proj (in state_dict)
    assert tuple(ck["image_proj"]["weight"].shape) == (16, D)  # the data have image features
    assert any(not torch.equal(before[k], v) for k, v in ck["state_dict"].items() if v.is_floating_point())
    assert (tmp_path / "run" / "best.safetensors").is_file()
    resumed = train(E3DSNN(TINY), data, cfg=TrainConfig(epochs=3, batch=3, num_points=40), out=tmp_path / "run",
                    resume=tmp_path / "run" / "last.pt", log=logs.append)
    assert resumed["epoch"] == 2 and any("resumed" in line for line in logs)


def test_train_with_separate_text_proj_saves_it_like_svl(tmp_path):
    write_train(tmp_path, np.random.default_rng(1), n=4, image=False)
    data = OpenShapeTrain(tmp_path, num_points=40, augment=False)
    cfg = E3DSNNConfig(4, (4, 4, 8, 8), (1, 1, 1, 1), out_channels=16, voxel_size=0.2)
    train(E3DSNN(cfg), data, cfg=TrainConfig(epochs=1, batch=3, num_points=40), out=tmp_path / "run", log=lambda *_: None)
    ck = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    proj = text_proj_from_checkpoint(ck)
    assert (proj.in_features, proj.out_features) == (D, 16) and ck["image_proj"] == {}


class _FixedLogits(nn.Module):
    """Stands in for a model: returns the logits stored for each cloud (its first coordinate = its index)."""

    def __init__(self, logits):
        super().__init__()
        self.logits, self.w = logits, nn.Parameter(torch.zeros(1))
        self.head = self.names = None

    def set_zero_shot_head(self, feats, proj=None, names=None):
        self.k = len(feats)

    def forward(self, points):
        return self.logits[points[:, 0, 0].long()]


class _Set:
    name = "fake"

    def __init__(self, labels, k):
        self.labels, self.categories = labels, [f"c{i}" for i in range(k)]
        self.category_features = torch.zeros(k, 3)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return torch.full((4, 6), float(i)), self.labels[i]


def test_zero_shot_top_k_and_per_class_mean():
    logits = torch.tensor([
        [9, 1, 0, 0, 0, 0],  # label 0: top-1
        [0, 1, 9, 2, 0, 0],  # label 1: 3rd -> top-3
        [9, 8, 7, 6, 5, 0],  # label 5: last -> miss
        [0, 0, 1, 2, 3, 9],  # label 4: 2nd -> top-3
    ], dtype=torch.float)
    labels = [0, 1, 5, 4]
    res = zero_shot(_FixedLogits(logits), _Set(labels, 6), batch_size=3, energy=False)
    assert (res.top1, res.top3, res.top5) == (0.25, 0.75, 0.75)
    assert res.class_mean == pytest.approx(0.25)  # classes 0, 1, 4, 5 present: 1, 0, 0, 0
    assert res.per_class == {"c0": 1.0, "c1": 0.0, "c4": 0.0, "c5": 0.0}


def _firing(model):
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm1d):
                m.bias.fill_(0.6)
    return model.eval()


def _spiking_conv_inputs(model, points):
    """(spike-fed sparse conv, its input features) of one forward, caught with plain hooks."""
    import neurons
    from tasks.pointcloud.sparse import SparseConvBase

    seen, hooks = [], []
    for m in model.modules():
        if isinstance(m, SparseConvBase) and isinstance(m, neurons.Synapse):
            hooks.append(m.register_forward_hook(lambda mod, args, out: seen.append((mod, args[0].features))))
    with torch.no_grad():
        model(points)
    for h in hooks:
        h.remove()
    return seen


def test_sparse_energy_counts_sparse_convs_from_their_kernel_maps():
    torch.manual_seed(0)
    model = _firing(E3DSNN(E3DSNNConfig(4, (4, 4, 8, 8), (1, 1, 1, 1), out_channels=16, voxel_size=0.1)))
    points = torch.rand(1, 300, 6)
    e = sparse_energy(model, points)  # zoo.profile, through the sparse convs' profile_operations
    assert e["acs"] > 0 and 0 < e["firing_rate"]
    dense = model.stem[0].dense_ops() + model.final.dense_ops()  # the two convs on real values
    head = model.head.in_features * model.head.out_features if isinstance(getattr(model, "head", None), nn.Linear) else 0
    assert e["macs"] == dense + head
    by_hand = sum(m.event_acs(m.input_counts(feats)) for m, feats in _spiking_conv_inputs(model, points))
    assert e["acs"] == by_hand
    assert e["energy_mj"] == pytest.approx((4.6 * e["macs"] + 0.9 * e["acs"]) * 1e-9)


def test_classes_option_folds_a_users_features():
    names, feats = ["chair", "lamp", "mug"], torch.randn(3, 1280)
    model = zoo.load("svl-e3dsnn-t-openshape", pretrained=False, classes=(names, feats))
    assert model.names == names and model.head.out_features == 3
    assert model(torch.rand(2, 200, 6)).shape == (2, 3)
    with pytest.raises(ZooError, match="category features are 384-d but the head takes 1280-d"):
        zoo.load("svl-e3dsnn-t-openshape", pretrained=False, classes=(names, torch.randn(3, 384)))


def test_resolve_classes_reads_openshape_feature_files(tmp_path):
    feats = {"bed": {"open_clip_text_feat": np.ones((1, 4), np.float32)}, "sofa": {"open_clip_text_feat": np.zeros((1, 4), np.float32)}}
    np.save(tmp_path / "cat.npy", feats, allow_pickle=True)
    names, f = resolve_classes(str(tmp_path / "cat.npy"))
    assert names == ["bed", "sofa"] and f.shape == (2, 4) and float(f[0].sum()) == 4
    np.save(tmp_path / "lvis.npy", np.zeros((2, 4), np.float32))
    with pytest.raises(ZooError, match="without names"):
        resolve_classes(str(tmp_path / "lvis.npy"))
    (tmp_path / "lvis.json").write_text('["a", "b"]')
    assert resolve_classes(str(tmp_path / "lvis.npy"))[0] == ["a", "b"]
    assert resolve_classes({"x": [1.0, 2.0]})[1].shape == (1, 2)
    with pytest.raises(ZooError, match="classes must be"):
        resolve_classes(3)


def test_a_checkpoint_of_another_variant_is_one_clear_error(tmp_path):
    from zoo.checkpoint import save_safetensors

    other = zoo.load("svl-e3dsnn-s-openshape", pretrained=False)
    save_safetensors(other.state_dict(), tmp_path / "s.safetensors")
    with pytest.raises(WeightsError, match="does not fit this model.*checkpoint for this model and size"):
        zoo.load("svl-e3dsnn-t-openshape", weights=tmp_path / "s.safetensors")
