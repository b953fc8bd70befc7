"""Spike2Former: parameter counts and state-dict keys of the official models, parity with the official
code on a reduced model, the converter, mmengine checkpoints, the DCNv3 core and the model cards.

Fixtures (tests/fixtures/segmentation/) were produced by building / running the official
BICLab/Spike2Former code (see the JSON files for how); they are data only.
"""

from __future__ import annotations

import json
import sys
import types
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import neurons
from tasks.segmentation.convert import from_official, infer_config
from tasks.segmentation.dcnv3 import dcnv3_core
from tasks.segmentation.spike2former import Spike2Former, build_spike2former
from zoo import checkpoint, hub
from zoo.errors import WeightsError, ZooError
from zoo.registry import count_params, get, info, list_models

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "segmentation"
TOL = 1e-4  # relative to the largest official value

V2L = dict(num_queries=200, decoder_layers=9, encoder_ffn=2048)
CITY = dict(num_classes=19, T=4)
# parameter counts of the official models (mmseg EncoderDecoder built from the released configs' model dicts)
OFFICIAL_PARAMS = {"ade20k": 34_361_112, "ade20k-v2l": 42_364_432, "cityscapes": 34_327_445}


def _meta(**kwargs) -> Spike2Former:
    with torch.device("meta"):
        return build_spike2former(**kwargs)


@pytest.fixture(scope="module")
def official_keys():
    return json.loads((FIXTURES / "spike2former_official_keys.json").read_text())


@pytest.fixture(scope="module")
def tiny():
    desc = json.loads((FIXTURES / "spike2former_tiny.json").read_text())
    state = load_file(FIXTURES / "spike2former_tiny_official.safetensors")
    io = load_file(FIXTURES / "spike2former_tiny_io.safetensors")
    model = build_spike2former(**desc["config"])
    model.load_state_dict(from_official(state), strict=True)
    return desc, state, io, model.eval()


def _expected_keys(official_keys, name: str) -> dict:
    keys = dict(official_keys["ade20k"])
    if name != "ade20k":
        diff = official_keys[name]
        for k in diff["removed"]:
            del keys[k]
        keys.update(diff["added"])
        keys.update(diff["changed"])
    return keys


# --------------------------------------------------------------------------- sizes and keys


@pytest.mark.parametrize("name,options", [("ade20k", {}), ("ade20k-v2l", V2L), ("cityscapes", CITY)])
def test_param_count_matches_official(name, options, official_keys):
    assert count_params(_meta(**options)) == OFFICIAL_PARAMS[name] == official_keys["params"][name]


@pytest.mark.parametrize("name,options", [("ade20k", {}), ("ade20k-v2l", V2L), ("cityscapes", CITY)])
def test_state_dict_keys_and_shapes_are_official(name, options, official_keys):
    ours = {k: list(v.shape) for k, v in _meta(**options).state_dict().items()}
    expected = _expected_keys(official_keys, name)
    assert set(ours) == set(expected)
    assert ours == expected


@pytest.mark.parametrize("options", [{}, V2L, CITY])
def test_infer_config_roundtrip(options):
    state = _meta(**options).state_dict()
    again = _meta(**infer_config(state)).state_dict()
    assert {k: v.shape for k, v in again.items()} == {k: v.shape for k, v in state.items()}


# --------------------------------------------------------------------------- parity with the official code


def _close(ours: torch.Tensor, ref: torch.Tensor) -> float:
    assert ours.shape == ref.shape
    return ((ours - ref).abs().max() / ref.abs().max()).item()


def test_parity_with_official(tiny):
    desc, _, io, model = tiny
    with torch.no_grad():
        feats = model.backbone(io["input"])
        for i, f in enumerate(feats):
            assert _close(f, io[f"feat{i + 1}"]) <= TOL
        for _ in range(2):  # the second call checks that the model resets its neurons itself
            logits, cls, masks = model(io["input"], return_layers=True)
            assert _close(logits, io["logits"]) <= TOL
            assert _close(cls, io["cls_scores"]) <= TOL
            assert _close(masks, io["mask_preds"]) <= TOL
    n_layers = desc["config"]["decoder_layers"] + 1
    assert cls.shape[0] == masks.shape[0] == n_layers
    assert masks.shape[-2:] == (io["input"].shape[-2] // 2, io["input"].shape[-1] // 2)


def test_paper_D_changes_the_output(tiny):
    desc, state, io, model = tiny
    d4 = build_spike2former(**{**desc["config"], "D": 4})
    d4.load_state_dict(from_official(state))
    assert {m.D for m in d4.modules() if neurons.is_count_neuron(m)} == {4}
    with torch.no_grad():
        assert (d4.eval()(io["input"]) - io["logits"]).abs().max() > 1e-3


def test_spike_driven_mode_matches_integer_mode(tiny):
    _, _, io, model = tiny
    eq = neurons.check_equivalence(model, io["input"])
    assert eq.max_rel <= 1e-4
    assert neurons.mode_of(model) == "integer"


# --------------------------------------------------------------------------- converter and checkpoints


def test_converter_validates(tiny):
    _, state, _, _ = tiny
    out = from_official({**state, "meta_tensor_not_model": torch.zeros(1)} | {"module.backbone.x": 1})
    assert set(out) == set(state)
    missing = dict(state)
    del missing["decode_head.w"]
    with pytest.raises(WeightsError, match="missing 1 keys: decode_head.w"):
        from_official(missing)
    with pytest.raises(WeightsError, match="unexpected 1 keys: decode_head.extra.weight"):
        from_official({**state, "decode_head.extra.weight": torch.zeros(1)})
    bad = dict(state)
    bad["decode_head.pixel_decoder.mask_feature.weight"] = torch.zeros(3, 3, 1, 1)
    with pytest.raises(WeightsError, match="wrong shape"):
        from_official(bad)
    with pytest.raises(WeightsError, match="not a Spike2Former"):
        from_official({"model.1.weight": torch.zeros(1)})


class HistoryBuffer:
    """Stand-in for mmengine.logging.HistoryBuffer with the same pickled layout (numpy histories and a
    ``statistics_methods`` dict of its own methods, which pickle writes as ``getattr(HistoryBuffer, 'min')``)."""

    def __init__(self):
        self.max_length = 1000000
        self._log_history = np.array([0.5, 0.25])
        self._count_history = np.array([1, 1])
        self.statistics_methods = {"min": HistoryBuffer.min, "mean": HistoryBuffer.mean}

    def min(self):
        return self._log_history.min()

    def mean(self):
        return self._log_history.mean()


def test_mmengine_checkpoint_reads_safely(tiny, tmp_path, monkeypatch):
    desc, state, io, _ = tiny
    mod = types.ModuleType("mmengine.logging.history_buffer")
    mod.HistoryBuffer = HistoryBuffer
    for name in ("mmengine", "mmengine.logging"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, "mmengine.logging.history_buffer", mod)
    monkeypatch.setattr(HistoryBuffer, "__module__", "mmengine.logging.history_buffer")
    ckpt = dict(
        meta=dict(iter=102500, cfg="model = dict(type='EncoderDecoder')", seed=0, mmengine_version="0.8.4",
                  dataset_meta=dict(classes=("wall", "building"), palette=[[120, 120, 120], [180, 120, 120]]),
                  hook_msgs=dict(best_score=np.float64(46.3))),
        state_dict=OrderedDict(state),
        message_hub=dict(log_scalars=OrderedDict({"train/loss": HistoryBuffer()}),
                         runtime_info=OrderedDict(iter=102500, best_score=np.float64(46.3)), resumed_keys={}),
        param_schedulers=[dict(eta_min=0.0, power=1.0, begin=1500, end=160000, last_step=102500)],
    )
    path = tmp_path / "ckpt-best.pth"
    torch.save(ckpt, path)
    obj = checkpoint.read(path)
    assert type(obj["message_hub"]["log_scalars"]["train/loss"]).__module__ == "zoo.checkpoint.stubs"
    loaded = from_official(checkpoint.to_state_dict(obj))
    model = build_spike2former(**desc["config"])
    model.load_state_dict(loaded, strict=True)
    with torch.no_grad():
        assert _close(model.eval()(io["input"]), io["logits"]) <= TOL


def test_getattr_in_a_checkpoint_is_refused_off_stubs(tmp_path):
    class Sneaky:  # getattr on an allowed real class (not a stub) must not pass
        def __reduce__(self):
            return (getattr, (OrderedDict, "fromkeys"))

    path = tmp_path / "sneaky.pth"
    torch.save({"state_dict": {}, "x": Sneaky()}, path)
    with pytest.raises(WeightsError, match="getattr on type refused"):
        checkpoint.read(path)


# --------------------------------------------------------------------------- DCNv3 core


def test_dcnv3_core_samples_where_told():
    torch.manual_seed(0)
    n, h, w, group, gc = 2, 5, 7, 2, 3
    x = torch.randn(n, h, w, group * gc)
    points = 9
    centre = torch.zeros(n, h, w, group, points)
    centre[..., 4] = 1.0  # only the kernel centre (x-major order: point 4 is (0, 0))
    zero = torch.zeros(n, h, w, group * points * 2)
    out = dcnv3_core(x, zero, centre.flatten(3), kernel=3, pad=1, group=group)
    assert torch.allclose(out, x, atol=1e-6)
    # point 7 is (dx=+1, dy=0): the right neighbour, zero beyond the border
    right = torch.zeros(n, h, w, group, points)
    right[..., 7] = 1.0
    out = dcnv3_core(x, zero, right.flatten(3), kernel=3, pad=1, group=group)
    assert torch.allclose(out[:, :, :-1], x[:, :, 1:], atol=1e-6) and out[:, :, -1].abs().max() == 0
    # a learned offset of dy=+1 at the centre point: the neighbour below
    offset = torch.zeros(n, h, w, group, points, 2)
    offset[..., 4, 1] = 1.0
    out = dcnv3_core(x, offset.flatten(3), centre.flatten(3), kernel=3, pad=1, group=group)
    assert torch.allclose(out[:, :-1], x[:, 1:], atol=1e-6)


# --------------------------------------------------------------------------- cards and weights

NAMES = ("spike2former-ade20k", "spike2former-l-ade20k", "spike2former-cityscapes", "spike2former-voc2012",
         "spike2former-voc2012-t4")


def test_registry_cards():
    assert set(NAMES) <= set(list_models("segmentation"))
    params = {n: info(n).params for n in NAMES}
    assert params == {"spike2former-ade20k": OFFICIAL_PARAMS["ade20k"], "spike2former-l-ade20k": OFFICIAL_PARAMS["ade20k-v2l"],
                      "spike2former-cityscapes": OFFICIAL_PARAMS["cityscapes"],
                      "spike2former-voc2012": OFFICIAL_PARAMS["ade20k"], "spike2former-voc2012-t4": OFFICIAL_PARAMS["ade20k"]}
    ade = info("spike2former-ade20k")
    assert ade.task == "segmentation" and ade.arxiv == "2412.14587" and ade.D == 8 and len(ade.classes) == 150
    assert {(m.metric, m.value) for m in ade.metrics} == {("mIoU (%)", 46.3), ("energy (mJ)", 68.0)}
    assert len(info("spike2former-cityscapes").classes) == 19 and len(info("spike2former-voc2012").classes) == 21
    assert {m.value for m in info("spike2former-voc2012-t4").metrics} == {75.4}
    with torch.device("meta"):
        city = get("spike2former-cityscapes").builder()
        voc = get("spike2former-voc2012").builder(D=4)
    assert city.cfg.T == 4 and city.decode_head.cls_embed.out_features == 20
    assert voc.decode_head.cls_embed.out_features == 151 and voc.cfg.D == 4  # the VOC checkpoints keep 150 classes
    with pytest.raises(ZooError, match="unknown Spike2Former option"):
        get("spike2former-ade20k").builder(classes=3)


def test_manifest_entries():
    for name in NAMES:
        entry = hub.entry(info(name).weights)
        assert entry.format == "mmengine" and len(entry.sha256) == 64
        assert info(name).converters == {"mmengine": "tasks.segmentation.convert:from_official"}
    assert hub.entry("spike2former-ade20k-sdtv2").sha256.startswith("6384d6bf")


def test_input_checks():
    model = build_spike2former(embed_dims=(8, 16, 24, 32), mlp_ratio=2, num_classes=3, num_queries=4, feat_channels=32,
                               encoder_layers=1, encoder_ffn=32, dcn_group=4, decoder_layers=1, decoder_ffn=32)
    with pytest.raises(ZooError, match="3 input channels"):
        model(torch.zeros(1, 1, 32, 32))
    with pytest.raises(ZooError, match="float"):
        model(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 40, 56)).shape == (1, 3, 40, 56)  # any size: no padding needed
