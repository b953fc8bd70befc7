"""SpikeYOLO: parameter counts, parity with the official code, spike-driven mode, input checks.

The parity fixture (tests/fixtures/detection/) was produced by running the
official BICLab/SpikeYOLO code on a reduced-width model; see its JSON.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import neurons
from tasks.detection.convert import from_official, infer_config
from tasks.detection.spikeyolo import SpikeYOLO, build_spikeyolo
from zoo.errors import WeightsError, ZooError
from zoo.registry import count_params, get, info, list_models

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "detection"
TOL = 1e-4

# Measured by building the official models (BICLab/SpikeYOLO @ 309ef5e, ultralytics DetectionModel,
# snn_yolov8.yaml; m and l with layer 25 = MS_ConvBlock[2,7]; gen1 from SpikeYOLO_for_Gen1, scale s, nc=2).
OFFICIAL_PARAMS = {
    "n": 13_271_632,
    "s": 23_153_024,
    "m": 47_841_856,
    "l": 68_478_400,
    "gen1": 23_122_838,
}


def _meta(**kwargs) -> SpikeYOLO:
    with torch.device("meta"):
        return build_spikeyolo(**kwargs)


@pytest.fixture(scope="module")
def tiny():
    desc = json.loads((FIXTURES / "spikeyolo_tiny.json").read_text())
    official = load_file(FIXTURES / "spikeyolo_tiny_official.safetensors")
    return desc, official


def _tiny_model(desc, official, gen1=False) -> SpikeYOLO:
    model = build_spikeyolo(tuple(desc["scale"]), nc=desc["nc"], T=2, gen1=gen1, p5_ratio=desc["p5_ratio"])
    model.load_state_dict(from_official(official), strict=True)
    return model.eval()


# --------------------------------------------------------------------------- sizes and keys


@pytest.mark.parametrize("scale", ["n", "s", "m", "l"])
def test_param_count_matches_official(scale):
    assert count_params(_meta(scale=scale)) == OFFICIAL_PARAMS[scale]


def test_param_count_gen1_matches_official():
    assert count_params(_meta(scale="s", nc=2, T=2, gen1=True)) == OFFICIAL_PARAMS["gen1"]


def test_registry_cards():
    names = set(list_models("detection"))
    assert {"spikeyolo-n-coco", "spikeyolo-coco", "spikeyolo-m-coco", "spikeyolo-l-coco", "spikeyolo-gen1"} <= names
    card = info("spikeyolo-coco")
    assert card.params == OFFICIAL_PARAMS["s"]
    assert card.weights == "spikeyolo-coco-23m" and card.arxiv == "2407.20708" and card.task == "detection"
    assert card.converters == {"ultralytics": "tasks.detection.convert:from_official"}
    assert {(m.metric, m.value) for m in card.metrics} == {("mAP@50", 62.25), ("mAP@50:95", 45.57)}
    assert info("spikeyolo-l-coco").weights == "spikeyolo-coco-69m"
    assert info("spikeyolo-n-coco").weights is None and info("spikeyolo-m-coco").weights is None
    gen1 = info("spikeyolo-gen1")
    assert gen1.weights == "spikeyolo-gen1-23m" and gen1.T == 2 and gen1.input_size == (1, 3, 320, 320)
    with torch.device("meta"):
        model = get("spikeyolo-gen1").builder()
    assert model.cfg.gen1 and model.cfg.nc == 2
    with pytest.raises(ZooError):
        get("spikeyolo-coco").builder(num_classes=3)


def test_official_key_names():
    keys = set(_meta(scale="s").state_dict())
    for k in ("model.1.encode_conv.weight", "model.1.encode_conv.bias", "model.2.Conv.pwconv3.body.0.bn.running_var",
              "model.4.1.conv1.conv.weight", "model.6.2.conv1.body.2.2.weight", "model.26.cv2.0.0.conv.weight",
              "model.26.cv3.2.2.conv.bias", "model.26.dfl.conv.weight"):
        assert k in keys, k
    assert not any("lif" in k for k in keys)


@pytest.mark.parametrize("scale", ["n", "s", "m", "l"])
def test_infer_config_roundtrip(scale):
    model = _meta(scale=scale)
    cfg = infer_config(model.state_dict())
    again = _meta(**cfg)
    assert {k: v.shape for k, v in again.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}


# --------------------------------------------------------------------------- converter


def test_converter_casts_and_validates(tiny):
    desc, official = tiny
    out = from_official({**official, "epoch": 3, "module.extra": 1})
    assert set(out) == set(official)
    assert all(v.dtype == torch.float32 for v in out.values() if v.is_floating_point())
    missing = dict(official)
    del missing["model.26.dfl.conv.weight"]
    with pytest.raises(WeightsError, match="missing 1 keys: model.26.dfl.conv.weight"):
        from_official(missing)
    with pytest.raises(WeightsError, match="unexpected 1 keys: model.99.weight"):
        from_official({**official, "model.99.weight": torch.zeros(1)})
    bad = dict(official)
    bad["model.3.encode_conv.weight"] = torch.zeros(1, 1, 3, 3)
    with pytest.raises(WeightsError, match="wrong shape"):
        from_official(bad)
    with pytest.raises(WeightsError):
        from_official({"foo": torch.zeros(1)})


# --------------------------------------------------------------------------- parity with the official code


def _compare(model, io):
    with torch.no_grad():
        y, raw = model(io["input"])
    diffs = [(y - io["y"]).abs().max().item()]
    diffs += [(r - io[f"raw{i}"]).abs().max().item() for i, r in enumerate(raw)]
    return max(diffs)


def test_parity_with_official_coco(tiny):
    desc, official = tiny
    model = _tiny_model(desc, official)
    io = load_file(FIXTURES / "spikeyolo_tiny_io.safetensors")
    assert _compare(model, io) <= TOL
    assert _compare(model, io) <= TOL  # a second call: neuron state was reset by the model itself


def test_parity_with_official_gen1(tiny):
    desc, official = tiny
    io = load_file(FIXTURES / "spikeyolo_tiny_gen1_io.safetensors")
    assert _compare(_tiny_model(desc, official, gen1=True), io) <= TOL


def test_train_mode_returns_raw(tiny):
    desc, official = tiny
    model = _tiny_model(desc, official).train()
    out = model(torch.rand(2, 3, 64, 64))
    assert isinstance(out, list) and [tuple(o.shape) for o in out] == [(2, 67, 8, 8), (2, 67, 4, 4), (2, 67, 2, 2)]


# --------------------------------------------------------------------------- spike-driven mode


@pytest.mark.parametrize("gen1", [False, True], ids=["coco", "gen1"])
def test_spike_driven_equals_integer(tiny, gen1):
    desc, official = tiny
    model = _tiny_model(desc, official, gen1=gen1)
    x = torch.rand(1, 2, 3, 64, 64) if gen1 else torch.rand(1, 3, 64, 64)
    eq = neurons.check_equivalence(model, x)
    assert eq.outputs == 4
    assert eq.max_rel <= TOL, eq
    assert neurons.mode_of(model) == "integer"
    # every neuron-fed conv really is a synapse that runs on events: spike mode must not reject any input
    with torch.no_grad():
        neurons.to_spike_driven(model)(x)


def test_spike_driven_needs_eval(tiny):
    desc, official = tiny
    model = _tiny_model(desc, official).train()
    neurons.to_spike_driven(model)
    with pytest.raises(ZooError, match="eval"):
        model(torch.rand(1, 3, 64, 64))


# --------------------------------------------------------------------------- input checks


@pytest.mark.parametrize(
    "x, match",
    [
        (torch.rand(3, 64, 64), "dims"),
        (torch.rand(1, 1, 64, 64), "3 input channels"),
        (torch.rand(1, 4, 64, 64), "3 input channels"),
        (torch.randint(0, 255, (1, 3, 64, 64), dtype=torch.uint8), "float"),
        (torch.rand(1, 3, 64, 48), "multiples of 32"),
        (torch.rand(1, 2, 3, 64, 64), "dims"),  # [B, T, C, H, W] is for Gen1 only
    ],
)
def test_bad_input_raises(x, match):
    model = build_spikeyolo((0.33, 0.03125, 1024), nc=3)
    with pytest.raises(ZooError, match=match) as err:
        model(x)
    assert "\n" not in str(err.value)
