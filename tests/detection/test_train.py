"""Training: the recipe runs, checkpoints atomically, resumes, and runs data-parallel under torchrun."""

import os
import subprocess
import sys

import pytest
import torch

import zoo
from tasks.detection.data import load_dataset
from tasks.detection.spikeyolo import build_spikeyolo
from tasks.detection.synthetic import write_coco
from tasks.detection.train import TrainConfig, TrainTransform, build_optimizer, train


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return write_coco(tmp_path_factory.mktemp("shapes"), n_train=8, n_val=4, seed=3)


def _cfg(**kw):
    return TrainConfig(**{"epochs": 2, "batch": 4, "imgsz": 64, "warmup_epochs": 1, "min_warmup_iters": 2,
                          "close_mosaic": 1, **kw})


def test_train_checkpoint_and_resume(shapes, tmp_path):
    data = load_dataset(shapes, split="train")
    model = build_spikeyolo((0.33, 0.0625, 1024), nc=6)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    seen = []
    metrics = train(model, data, cfg=_cfg(), out=tmp_path, evaluate=lambda m: seen.append(m) or {"map50": 0.1},
                    log=lambda s: None)
    assert metrics["epoch"] == 1 and len(seen) == 2 and not seen[0].training  # the EMA model, in eval mode
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert {p.name for p in tmp_path.iterdir()} == {"last.pt", "best.safetensors"}  # no .tmp left behind
    ck = torch.load(tmp_path / "last.pt", weights_only=True)
    assert ck["epoch"] == 1 and ck["train_args"]["imgsz"] == 64
    # resume continues at the next epoch from the saved state
    resumed = build_spikeyolo((0.33, 0.0625, 1024), nc=6)
    logs = []
    out = train(resumed, data, cfg=_cfg(epochs=3), out=tmp_path, resume=tmp_path / "last.pt", log=logs.append)
    assert out["epoch"] == 2 and "resumed" in logs[0]
    # the best weights load into the registered demo architecture
    model = zoo.load("spikeyolo-tiny-shapes", weights=tmp_path / "best.safetensors", scale=(0.33, 0.0625, 1024))
    assert model(torch.rand(1, 3, 64, 64))[0].shape[1] == 4 + 6


def test_optimizer_groups_follow_ultralytics():
    model = build_spikeyolo((0.33, 0.0625, 1024), nc=6)
    opt = build_optimizer(model, _cfg(batch=16), accumulate=4)
    biases, weights, norms = opt.param_groups
    assert all(p.ndim == 1 for p in biases["params"]) and biases["weight_decay"] == 0
    assert weights["weight_decay"] == pytest.approx(5e-4 * 16 * 4 / 64) and all(p.ndim > 1 for p in weights["params"])
    assert norms["weight_decay"] == 0 and opt.defaults["nesterov"]
    n = sum(len(g["params"]) for g in opt.param_groups)
    assert n == len([p for p in model.parameters() if p.requires_grad])


def test_augmentation_keeps_boxes_on_their_objects(shapes):
    data = load_dataset(shapes, split="train")
    t = TrainTransform(data, _cfg(imgsz=96, hsv_h=0, hsv_s=0, hsv_v=0, translate=0, scale=0, fliplr=1.0, mosaic=0))
    img, target = t(0)
    assert img.shape == (3, 96, 96)
    assert (target["boxes"][:, 2:] <= 96).all() and (target["boxes"][:, :2] >= 0).all()
    assert len(target["labels"]) == len(data[0][1]["labels"])
    t.cfg.mosaic = 1.0
    img, target = t(1)
    assert img.shape == (3, 96, 96) and target["boxes"].shape[1] == 4


def test_empty_training_set_is_an_error(tmp_path):
    from zoo.errors import ZooError

    with pytest.raises(ZooError, match="empty"):
        train(build_spikeyolo((0.33, 0.0625, 1024), nc=6), [], cfg=_cfg(), out=tmp_path)


def test_torchrun_data_parallel(shapes, tmp_path):
    """Two processes (gloo) train one epoch through the `zoo train` command."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "zoo.cli",
           "train", "spikeyolo-tiny-shapes", "--data", str(shapes), "--epochs", "1", "--batch", "2", "--imgsz", "64",
           "--out", str(tmp_path), "--device", "cpu", "--set", "min_warmup_iters=1", "--json"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "last.pt").exists() and '"map50"' in proc.stdout
