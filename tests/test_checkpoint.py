"""Safe checkpoint reading: every format, and nothing that can run code."""

import os
import sys
import types

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from zoo import checkpoint
from zoo.errors import WeightsError


def _fake_ultralytics_checkpoint(path):
    """Write a checkpoint the way ultralytics does: whole (fp16) modules of classes the reader lacks."""
    names = ["ultralytics", "ultralytics.nn", "ultralytics.nn.tasks"]
    for n in names:
        sys.modules[n] = types.ModuleType(n)

    class DetectionModel(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
            self.stride = torch.tensor([8.0, 16.0])  # a plain attribute, not a buffer
            self.yaml = {"nc": 80}

    DetectionModel.__module__ = "ultralytics.nn.tasks"
    DetectionModel.__qualname__ = "DetectionModel"
    sys.modules["ultralytics.nn.tasks"].DetectionModel = DetectionModel
    try:
        torch.manual_seed(0)
        model, ema = DetectionModel(), DetectionModel()
        torch.save({"epoch": 3, "best_fitness": np.float64(0.5), "model": model.half(), "ema": ema.half(),
                    "updates": 10, "optimizer": None, "train_args": {"lr0": 0.01}, "date": "2024"}, path)
    finally:
        for n in names:
            del sys.modules[n]
    return ema


def test_reads_ultralytics_pickle_without_its_code(tmp_path):
    path = tmp_path / "official.pt"
    ema = _fake_ultralytics_checkpoint(path)
    assert "ultralytics" not in sys.modules
    obj = checkpoint.read(path)
    assert isinstance(obj["ema"], checkpoint.Stub) and obj["epoch"] == 3 and obj["best_fitness"] == 0.5
    sd = checkpoint.to_state_dict(obj)  # prefers ema, fp16 -> fp32
    assert set(sd) == set(ema.state_dict())
    for k, v in ema.state_dict().items():
        assert torch.equal(sd[k], v.float() if v.is_floating_point() else v)
        assert sd[k].dtype == (torch.float32 if v.is_floating_point() else v.dtype)


def test_refuses_code_in_pickle(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pt"
    torch.save({"model": Evil()}, path)
    with pytest.raises(WeightsError, match="unsafe.*system"):
        checkpoint.read(path)
    assert not marker.exists()


def test_refuses_callable_from_allowed_prefix_module_function(tmp_path):
    class Evil:
        def __reduce__(self):
            return (eval, ("1+1",))

    path = tmp_path / "evil2.pt"
    torch.save(Evil(), path)
    with pytest.raises(WeightsError, match="unsafe"):
        checkpoint.read(path)


def test_reads_safetensors_and_plain_state_dicts(tmp_path):
    sd = {"a.weight": torch.randn(2, 3), "a.bias": torch.zeros(2)}
    save_file(sd, str(tmp_path / "w.safetensors"))
    torch.save({"state_dict": sd, "meta": {"epoch": 1}}, tmp_path / "mm.pth")
    for f in ("w.safetensors", "mm.pth"):
        out = checkpoint.to_state_dict(checkpoint.read(tmp_path / f))
        assert set(out) == set(sd) and all(torch.equal(out[k], sd[k]) for k in sd)


@pytest.mark.parametrize("content,match", [(b"hello world, not a checkpoint", "not a checkpoint"),
                                           (None, "corrupt or truncated")])
def test_bad_files(tmp_path, content, match):
    path = tmp_path / "bad.pt"
    if content is None:
        torch.save({"w": torch.randn(100, 100)}, path)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    else:
        path.write_bytes(content)
    with pytest.raises(WeightsError, match=match):
        checkpoint.read(path)


def test_corrupt_safetensors(tmp_path):
    path = tmp_path / "w.safetensors"
    save_file({"w": torch.randn(64, 64)}, str(path))
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(WeightsError, match="corrupt safetensors"):
        checkpoint.read(path)


def test_missing_file(tmp_path):
    with pytest.raises(WeightsError, match="does not exist"):
        checkpoint.read(tmp_path / "nope.pt")


def test_no_state_dict_inside(tmp_path):
    torch.save({"epoch": 1}, tmp_path / "x.pt")
    with pytest.raises(WeightsError, match="no state dict"):
        checkpoint.to_state_dict(checkpoint.read(tmp_path / "x.pt"))
