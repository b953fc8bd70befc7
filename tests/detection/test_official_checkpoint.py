"""Official SpikeYOLO checkpoints exactly as the official trainers write them load through
``zoo.load(..., weights=path)`` and reproduce the official outputs.

The fixtures (tests/fixtures/detection/spikeyolo_tiny*_checkpoint.pt.xz, see official_checkpoints.json)
were made by the official code itself: a reduced-width DetectionModel of BICLab/SpikeYOLO (COCO tree,
MS_GetT T = 2) and of its SpikeYOLO_for_Gen1 tree (own neuron, MS_GetT T = 1) got the weights of
spikeyolo_tiny_official.safetensors, was saved as BaseTrainer.save_model saves (whole fp16 modules, with
an EMA) and stripped by the official strip_optimizer; the recorded outputs are those of the official
models loaded back from these files. None of their classes exists here: the zoo reads them as stubs.
"""

import hashlib
import json
import lzma
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import zoo
from zoo import checkpoint
from zoo.errors import WeightsError

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "detection"
SCALE = (0.33, 0.03125, 1024)
TOL = 1e-4


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _official(tmp_path, key: str) -> Path:
    """The official checkpoint file ``key`` of official_checkpoints.json, decompressed (the official bytes)."""
    desc = json.loads((FIXTURES / "official_checkpoints.json").read_text())[key]
    path = tmp_path / f"{key}.pt"
    path.write_bytes(lzma.decompress((FIXTURES / desc["file"]).read_bytes()))
    assert hashlib.sha256(path.read_bytes()).hexdigest() == desc["sha256"]
    return path


def _diff(out, io, prefix) -> float:
    y, raw = out
    return max([(y - io[f"{prefix}/y"]).abs().max().item()]
               + [(r - io[f"{prefix}/raw{i}"]).abs().max().item() for i, r in enumerate(raw)])


def test_coco_checkpoint_as_released(tmp_path):
    path = _official(tmp_path, "spikeyolo")
    assert "ultralytics" not in sys.modules
    ckpt = checkpoint.read(path)  # what strip_optimizer leaves: the EMA as 'model', no 'ema'
    assert type(ckpt["model"]).__name__ == "DetectionModel" and ckpt["ema"] is None
    io = load_file(FIXTURES / "spikeyolo_tiny_checkpoint_io.safetensors")
    x = load_file(FIXTURES / "spikeyolo_tiny_io.safetensors")["input"]
    model = zoo.load("spikeyolo-coco", weights=path, scale=SCALE, nc=3, T=2)
    with torch.no_grad():
        assert _diff(model(x), io, "coco") <= TOL
    spike = zoo.load("spikeyolo-coco", weights=path, mode="spike", scale=SCALE, nc=3, T=2)
    with torch.no_grad():
        ys, _ = spike(x)
    assert ((ys - io["coco/y"]).abs().max() / io["coco/y"].abs().max()) <= TOL


def test_coco_checkpoint_T_is_checked(tmp_path):
    """T is not in the state dict, only in the pickled MS_GetT: a model built with another T is refused."""
    path = _official(tmp_path, "spikeyolo")
    with pytest.raises(WeightsError, match="MS_GetT with T=2, this model was built with T=1; pass T=2"):
        zoo.load("spikeyolo-coco", weights=path, scale=SCALE, nc=3)


def test_gen1_checkpoint_as_released(tmp_path):
    """Event frames [B, T, 3, H, W], and a single [B, 3, H, W] frame, which the official Gen1 code runs
    with T = 1 (its MS_GetT [3, 1]), as the zoo does."""
    path = _official(tmp_path, "gen1")
    io = load_file(FIXTURES / "spikeyolo_tiny_checkpoint_io.safetensors")
    events = load_file(FIXTURES / "spikeyolo_tiny_gen1_io.safetensors")["input"]
    model = zoo.load("spikeyolo-gen1", weights=path, scale=SCALE, nc=3)
    assert model.model[0].T == 1
    with torch.no_grad():
        assert _diff(model(events), io, "gen1") <= TOL
        assert _diff(model(io["gen1_frame/input"].float()), io, "gen1_frame") <= TOL
