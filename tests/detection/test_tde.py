"""TDE: parameter counts, parity with the official code (all eight configs), the AGM's running gate,
spike-driven mode, the neuron, the converter and input checks.

The parity fixture (tests/fixtures/detection/tde_tiny*) was produced by running the official
Mortal825/TDE code on reduced-width models; see its JSON. The checkpoint fixture
(tde_tiny_checkpoint.pt.xz) is an official checkpoint as the official trainer writes it: the official
code built a reduced TDE(SDA) model, ran the trainer's steps (stride probes, training steps with an EMA,
validation forwards of the EMA), pickled model and EMA whole in fp16 as BaseTrainer.save_model does, and
the official models loaded back from that file gave the recorded outputs; see official_checkpoints.json.
"""

from __future__ import annotations

import hashlib
import json
import lzma
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from spikingjelly.activation_based import functional

import neurons
import zoo
from tasks.detection.tde import (
    CONFIGS, TDE, BinaryLIF, TopKSpike, build_tde, from_official, infer_config,
)
from zoo import checkpoint
from zoo.errors import WeightsError, ZooError
from zoo.registry import count_params, get, info, list_models

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "detection"
TOL = 1e-4

# Measured by building the official models (Mortal825/TDE @ 996910e, ultralytics DetectionModel from
# config/<config>_yolov8.yaml with scale s, as train.py loads *_yolov8s.yaml).
OFFICIAL_PARAMS_S_NC20 = {
    "snn": 23_129_804,
    "SE": 23_278_033,
    "TCSA": 23_185_702,
    "SDA": 23_555_913,
    "TCSA+SE": 23_322_626,
    "SDA+SE": 23_622_167,
    "TDE(TCSA)": 23_322_626,
    "TDE(SDA)": 23_622_174,
}
OFFICIAL_PARAMS_TDE_SDA_S_NC10 = 23_618_304  # EvDET200K


@pytest.fixture(autouse=True)
def one_thread():
    """The fixture is bit-exact with one thread (more threads may reorder conv reductions, ~1e-5);
    tiny models also run faster on one thread than on a shared machine's several."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def tiny():
    desc = json.loads((FIXTURES / "tde_tiny.json").read_text())
    pool = load_file(FIXTURES / "tde_tiny_official.safetensors")
    io = load_file(FIXTURES / "tde_tiny_io.safetensors")
    return desc, pool, io


def _pool_name(key: str, repeat_layout: bool) -> str:
    m = re.match(r"^model\.(\d+)\.(.*)$", key)
    if not repeat_layout or not m:
        return key
    k = int(m.group(1))
    return f"stem.{m.group(2)}" if k == 1 else f"model.{k - 1}.{m.group(2)}"


def _official_state(desc, pool, config) -> dict[str, torch.Tensor]:
    """The official state dict of ``config`` (reduced width), rebuilt from the fixture's shared pool."""
    with torch.device("meta"):
        own = build_tde(config, tuple(desc["scale"]), nc=desc["nc"]).state_dict()
    repeat = "model.1.encode_conv.weight" in own
    out = {}
    for key, value in own.items():
        name = _pool_name(key, repeat)
        alt = f"{name}:" + "x".join(map(str, value.shape))
        out[key] = pool[alt] if alt in pool else pool[name]
    return out


def _tiny_model(desc, pool, config) -> TDE:
    model = build_tde(config, tuple(desc["scale"]), nc=desc["nc"], T=desc["T"])
    model.load_state_dict(from_official(_official_state(desc, pool, config)), strict=True)
    model.eval().reset_agm()  # the fixture starts from a fresh official model
    return model


def _meta(**kwargs) -> TDE:
    with torch.device("meta"):
        return build_tde(**kwargs)


# --------------------------------------------------------------------------- sizes, keys, registry


@pytest.mark.parametrize("config", list(CONFIGS))
def test_param_count_matches_official(config):
    assert count_params(_meta(config=config, scale="s", nc=20)) == OFFICIAL_PARAMS_S_NC20[config]


def test_registry_cards():
    assert {"tde-spikeyolo-voc", "tde-spikeyolo-evdet200k"} <= set(list_models("detection"))
    voc, ev = info("tde-spikeyolo-voc"), info("tde-spikeyolo-evdet200k")
    assert voc.params == OFFICIAL_PARAMS_S_NC20["TDE(SDA)"]
    assert ev.params == OFFICIAL_PARAMS_TDE_SDA_S_NC10
    for card in (voc, ev):
        assert card.task == "detection" and card.arxiv == "2512.02447"
        assert card.code == "https://github.com/Mortal825/TDE"
        assert card.T == 4 and card.D == 1 and card.weights is None and card.license == "AGPL-3.0"
        assert card.converters == {"ultralytics": "tasks.detection.convert:tde_from_official"}
        assert all(m.source == "paper" and m.metric == "mAP@50:95" for m in card.metrics)
    assert [m.value for m in voc.metrics] == [57.7] and [m.value for m in ev.metrics] == [47.6]
    with torch.device("meta"):
        model = get("tde-spikeyolo-evdet200k").builder()
        ablation = get("tde-spikeyolo-voc").builder(config="SDA+SE")
    assert model.cfg.nc == 10 and model.cfg.config == "TDE(SDA)" and model.gated
    assert ablation.cfg.config == "SDA+SE" and not ablation.gated
    with pytest.raises(ZooError, match="unknown TDE option"):
        get("tde-spikeyolo-voc").builder(num_classes=3)
    with pytest.raises(ZooError, match="unknown TDE config"):
        build_tde("TDE(XYZ)")


def test_official_key_names():
    keys = set(_meta(config="TDE(SDA)", scale="s").state_dict())
    for k in ("model.0.alpha_base", "model.0.alpha_current", "model.0.encode_conv.weight",
              "model.0.time_modules.3.encode_bn.running_var", "model.18.att.ta.conv1.weight",
              "model.21.att.ca.conv1.weight", "model.24.att.sa.conv.weight", "model.25.td.fc.weight",
              "model.25.td.fc.bias", "model.25.dfl.conv.weight", "attention_0", "attention_3"):
        assert k in keys, k
    assert not any("lif" in k for k in keys)
    tcsa = set(_meta(config="TCSA", scale="s").state_dict())
    assert {"model.1.encode_conv.weight", "model.12.att.ta.sharedMLP.0.weight", "model.25.att.ca.sharedMLP.2.weight",
            "model.25.att.sa.conv.weight", "model.26.cv3.2.2.conv.bias"} <= tcsa


@pytest.mark.parametrize("config", list(CONFIGS))
def test_infer_config_roundtrip(config):
    model = _meta(config=config, scale=(0.33, 0.25, 1024), nc=5)
    cfg = infer_config(model.state_dict())
    assert cfg["nc"] == 5 and cfg["T"] == 4
    if config != "TDE(TCSA)":  # same keys and shapes as TCSA+SE
        assert cfg["config"] == config
    again = _meta(**cfg)
    assert {k: v.shape for k, v in again.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}


def test_converter_casts_and_validates(tiny):
    desc, pool, _ = tiny
    official = _official_state(desc, pool, "TDE(SDA)")
    out = from_official({**official, "epoch": 3, "module.extra": torch.zeros(1)})
    assert set(out) == set(official)
    assert all(v.dtype == torch.float32 for v in out.values() if v.is_floating_point())
    missing = dict(official)
    del missing["attention_2"]
    with pytest.raises(WeightsError, match="missing 1 keys: attention_2"):
        from_official(missing)
    with pytest.raises(WeightsError, match="unexpected 1 keys: model.99.weight"):
        from_official({**official, "model.99.weight": torch.zeros(1)})
    bad = dict(official)
    bad["model.18.att.ta.conv1.weight"] = torch.zeros(4, 4, 1, 1)
    with pytest.raises(WeightsError, match="wrong shape"):
        from_official(bad)
    with pytest.raises(WeightsError):
        from_official({"foo": torch.zeros(1)})


# --------------------------------------------------------------------------- parity with the official code


def _max_diff(out, io, prefix) -> float:
    y, raw = out
    diffs = [(y - io[f"{prefix}/y"]).abs().max().item()]
    diffs += [(r - io[f"{prefix}/raw{i}"]).abs().max().item() for i, r in enumerate(raw)]
    return max(diffs)


@pytest.mark.parametrize("config", ["TDE(SDA)", "TDE(TCSA)", "SE", "TCSA+SE", "SDA+SE", "snn", "TCSA", "SDA"])
def test_parity_with_official(tiny, config):
    desc, pool, io = tiny
    model = _tiny_model(desc, pool, config)
    assert count_params(model) == desc["params"][config]
    order = desc["io"]["order"]
    stored = sorted(int(k.split("/")[1][1:]) for k in io if k.startswith(f"{config}/f") and k.endswith("/y"))
    gates = []
    with torch.no_grad():
        for j in range(max(stored) + 1):
            if model.gated:
                gates.append(model.agm_gate())
            out = model(io[f"input{order[j]}"].float())
            if j in stored:
                assert _max_diff(out, io, f"{config}/f{j}") <= TOL, (config, j)
        if not model.gated:  # stateless: a second call gives the same (neuron state reset by the model)
            assert _max_diff(model(io["input0"].float()), io, f"{config}/f0") <= TOL
    if model.gated:  # the AGM's running gate follows the official one forward by forward
        assert torch.allclose(torch.stack(gates), io[f"{config}/gates"], atol=1e-6)
        buffers = torch.stack([getattr(model, f"attention_{i}") for i in range(4)])
        assert torch.allclose(buffers, io[f"{config}/attention"], atol=1e-6)


def test_train_mode_returns_raw(tiny):
    desc, pool, _ = tiny
    model = _tiny_model(desc, pool, "TDE(SDA)").train()
    out = model(torch.rand(2, 3, 64, 64))
    assert isinstance(out, list) and [tuple(o.shape) for o in out] == [(2, 67, 8, 8), (2, 67, 4, 4), (2, 67, 2, 2)]


# --------------------------------------------------------------------------- the AGM's state


def test_agm_state_is_model_state(tiny):
    desc, pool, io = tiny
    model = _tiny_model(desc, pool, "TDE(SDA)")
    x = io["input0"].float()
    assert torch.equal(model.agm_gate(), torch.ones(4))  # a fresh model gates with ones
    with torch.no_grad():
        first = model(x)[0]
        g1 = model.agm_gate()
        functional.reset_net(model)  # resets neurons only
        assert torch.equal(model.agm_gate(), g1) and not torch.equal(g1, torch.ones(4))
        second = model(x)[0]  # same input, another gate: a different output, as in the official code
        assert (second - first).abs().max() > 1e-3
        # frozen: the gate stops moving and repeated calls agree
        model.agm_update = False
        g = model.agm_gate()
        a, b = model(x)[0], model(x)[0]
        assert torch.equal(a, b) and torch.equal(model.agm_gate(), g)
    # loading a state dict primes the history with the checkpoint's attention buffers
    state = model.state_dict()
    state.update({f"attention_{i}": torch.tensor(0.1 * (i + 1)) for i in range(4)})
    model.load_state_dict(state)
    assert torch.allclose(model.agm_gate(), torch.tensor([0.1, 0.2, 0.3, 0.4]))
    model.reset_agm()
    assert torch.equal(model.agm_gate(), torch.ones(4))


# --------------------------------------------------------------------------- an official checkpoint as released

CKPT_MODEL = dict(scale=(0.1, 0.03125, 256), nc=3)  # the checkpoint fixture's model (official_checkpoints.json)


@pytest.fixture(scope="module")
def official_ckpt(tmp_path_factory):
    """The official TDE checkpoint file, decompressed (byte for byte the official torch.save output)."""
    desc = json.loads((FIXTURES / "official_checkpoints.json").read_text())["tde"]
    path = tmp_path_factory.mktemp("tde") / "official.pt"
    path.write_bytes(lzma.decompress((FIXTURES / desc["file"]).read_bytes()))
    assert hashlib.sha256(path.read_bytes()).hexdigest() == desc["sha256"]
    return path, load_file(FIXTURES / "tde_tiny_checkpoint_io.safetensors")


def _follow(model, io, key):
    """Run the recorded forwards (input0, input1, input0); the largest output and gate differences to the
    official model's."""
    out = gate = 0.0
    with torch.no_grad():
        for j, i in enumerate((0, 1, 0)):
            gate = max(gate, (model.agm_gate() - io[f"{key}/gates"][j]).abs().max().item())
            out = max(out, _max_diff(model(io[f"input{i}"].float()), io, f"{key}/f{j}"))
    return out, gate


def test_official_checkpoint_loads_as_released(official_ckpt):
    """zoo.load reads the official pickle (its model holds a collections.deque) and the next forwards are
    the official model's: the gate comes from the pickled EMA's past_data / lenqueue / shared_params (the
    EMA is in its averaging phase), not from the attention_i buffers (~10 % off for the first forwards)."""
    path, io = official_ckpt
    model = zoo.load("tde-spikeyolo-voc", weights=path, **CKPT_MODEL)
    out, gate = _follow(model, io, "ema")
    assert gate <= 1e-6 and out <= TOL, (gate, out)


def test_official_checkpoint_model_entry_in_warm_up(official_ckpt):
    """Without an EMA the weights and the history both come from ckpt['model'], here still in the AGM
    warm-up (lenqueue 8: the gate is the previous forward's attention, then the averaging starts)."""
    path, io = official_ckpt
    ckpt = checkpoint.read(path)
    ckpt["ema"] = None
    model = build_tde("TDE(SDA)", CKPT_MODEL["scale"], nc=CKPT_MODEL["nc"]).eval()
    model.load_state_dict(from_official(checkpoint.to_state_dict(ckpt)))
    model.restore_from_checkpoint(ckpt)
    out, gate = _follow(model, io, "model")
    assert gate <= 1e-6 and out <= TOL, (gate, out)


def test_official_checkpoint_bad_history(official_ckpt):
    path, _ = official_ckpt
    ckpt = checkpoint.read(path)
    model = build_tde("TDE(SDA)", CKPT_MODEL["scale"], nc=CKPT_MODEL["nc"])
    ckpt["ema"].past_data.pop()  # 9 entries, lenqueue 10
    with pytest.raises(WeightsError, match="AGM history does not fit"):
        model.restore_from_checkpoint(ckpt)
    del vars(ckpt["ema"])["past_data"]
    with pytest.raises(WeightsError, match="no AGM history"):
        model.restore_from_checkpoint(ckpt)


# --------------------------------------------------------------------------- spike-driven mode


@pytest.mark.parametrize("config", ["TDE(SDA)", "SDA", "TCSA+SE"])
def test_spike_driven_equals_integer(tiny, config):
    desc, pool, _ = tiny
    model = _tiny_model(desc, pool, config)
    model.agm_update = False  # both runs must see the same gate
    x = torch.rand(1, 3, 64, 64)
    eq = neurons.check_equivalence(model, x)
    assert eq.outputs == 4
    assert eq.max_rel <= TOL, eq
    assert neurons.mode_of(model) == "integer"
    with torch.no_grad():
        neurons.to_spike_driven(model)(x)  # every neuron-fed conv (SDA's included) accepts its input as events


# --------------------------------------------------------------------------- every config builds and runs


@pytest.mark.parametrize("config", list(CONFIGS))
def test_each_config_builds_and_runs(config):
    torch.manual_seed(0)
    model = build_tde(config, (0.1, 0.0625, 256), nc=2).eval()
    with torch.no_grad():
        y, raw = model(torch.rand(1, 3, 32, 64))
    assert tuple(y.shape) == (1, 4 + 2, 4 * 8 + 2 * 4 + 1 * 2)
    assert [tuple(r.shape) for r in raw] == [(1, 66, 4, 8), (1, 66, 2, 4), (1, 66, 1, 2)]
    assert torch.isfinite(y).all()


# --------------------------------------------------------------------------- neurons


def test_binary_lif_equation():
    lif = BinaryLIF()
    x = torch.tensor([0.5, 0.6, 0.3, 0.1, 1.7, -0.2]).view(6, 1)
    # H0 = 0.5 -> 0 (ties to even); H1 = 0.25*0.5 + 0.6 = 0.725 -> 1; H2 = 0.25*(0.725 - 0.5) + 0.3 = 0.35625 -> 0;
    # H3 = 0.25*0.35625 + 0.1 = 0.1890625 -> 0; H4 = 0.25*0.1890625 + 1.7 = 1.747265625 -> 1;
    # H5 = 0.25*(1.747265625 - 0.5) - 0.2 = 0.11181640625 -> 0
    assert lif(x).view(-1).tolist() == [0.0, 1.0, 0.0, 0.0, 1.0, 0.0]
    assert torch.allclose(lif.v, torch.tensor([0.25 * 0.11181640625]))
    functional.reset_net(lif)
    h = torch.tensor([[0.7], [0.2]], requires_grad=True)
    lif(h).sum().backward()
    assert h.grad is not None and h.grad.abs().sum() > 0  # straight-through inside [0, 1]
    assert lif.levels.D == 1 and neurons.is_count_neuron(lif)


def test_topk_spike():
    x = torch.arange(10.0).view(1, 10, 1, 1, 1)
    out = TopKSpike(0.9)(x)
    assert out.view(-1).tolist() == [0.0] + [1.0] * 9  # k = int(10 * 0.9) = 9 largest
    assert TopKSpike(0.9)(torch.tensor([3.0])).tolist() == [0.0]  # k = 0: no spike


# --------------------------------------------------------------------------- input checks


@pytest.mark.parametrize(
    "x, match",
    [
        (torch.rand(3, 64, 64), "dims"),
        (torch.rand(1, 1, 64, 64), "3 input channels"),
        (torch.randint(0, 255, (1, 3, 64, 64), dtype=torch.uint8), "float"),
        (torch.rand(1, 3, 64, 48), "multiples of 32"),
        (torch.rand(1, 2, 3, 64, 64), "dims"),
    ],
)
def test_bad_input_raises(x, match):
    model = build_tde("TDE(SDA)", (0.1, 0.0625, 256), nc=2)
    with pytest.raises(ZooError, match=match) as err:
        model(x)
    assert "\n" not in str(err.value)
