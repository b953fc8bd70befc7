"""`zoo export NAME --format onnx`: the demo detector round-trips through onnxruntime within 1e-4, neurons are
round/clip with T unrolled, the card travels in the metadata; spike mode; language models and a missing
onnxruntime are one-line errors."""

from __future__ import annotations

import json
import sys
from collections import Counter

import pytest
import torch
from torch import nn

import neurons
import zoo
import zoo.cli
from tasks.detection import export
from tasks.detection.export import TOLERANCE, ExportILIF, export_onnx, max_difference
from zoo import registry
from zoo.errors import ZooError

DEMO = "spikeyolo-tiny-shapes"


@pytest.fixture
def ort():
    pytest.importorskip("onnx", reason="onnx is not installed (pip install -e '.[export]')")
    return pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install -e '.[export]')")


def _ops(path) -> Counter:
    import onnx

    return Counter(n.op_type for n in onnx.load(str(path)).graph.node)


def test_export_ilif_equals_ilif_over_time_steps():
    """The export form of I-LIF is the neuron: same counts on values spread over and beyond [0, D], halves
    included, over 3 steps (SpikingJelly's multi-step operator on one side, plain round/clip on the other)."""
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.rand(3, 2, 500, generator=g) * 7 - 1.5, torch.arange(-2, 6.5, 0.5).expand(3, 2, -1)], -1)
    lif = neurons.ILIF()
    with torch.no_grad():
        want = lif(x)
        got = ExportILIF(lif)(x)
    assert torch.equal(got, want)
    lif.reset()
    with torch.no_grad():
        assert torch.equal(ExportILIF(lif)(x[:1]), lif(x[:1]))  # one step from rest


class SmallDetector(nn.Module):
    """A stand-in detector with SpikeYOLO's output convention ``(y, raw)``: conv -> T copies -> I-LIF ->
    spiking conv -> I-LIF -> spiking conv, averaged over T."""

    def __init__(self, T: int = 3):
        super().__init__()
        self.T = T
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.lif1 = neurons.ILIF()
        self.conv = neurons.SpikeConv2d(8, 8, 3, padding=1, source=self.lif1)
        self.lif2 = neurons.ILIF()
        self.head = neurons.SpikeConv2d(8, 10, 1, source=self.lif2)

    def forward(self, x):
        T, B = self.T, x.shape[0]
        x = (self.stem(x) * 3).unsqueeze(0).repeat(T, 1, 1, 1, 1)
        x = self.conv(self.lif1(x).flatten(0, 1)).unflatten(0, (T, B))
        y = self.head(self.lif2(x).flatten(0, 1)).unflatten(0, (T, B)).mean(0)
        return y.flatten(2), None


def test_time_steps_unroll_into_round_and_clip(ort, tmp_path):
    model = neurons.auto_reset(SmallDetector(T=3)).eval()
    card = registry.info(DEMO)
    res = export_onnx(model, card, (2, 3, 16, 16), tmp_path / "small.onnx")
    ops = _ops(tmp_path / "small.onnx")
    assert ops["Round"] == 2 * 3 and ops["Clip"] == 2 * 3  # two neurons, three steps each, no loop operator
    assert "Loop" not in ops and "Scan" not in ops
    assert res.max_rel <= TOLERANCE and res.metadata["T"] == str(card.T)
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(7))
    session = ort.InferenceSession(str(tmp_path / "small.onnx"), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        assert max_difference(session.run(None, {"images": x.numpy()})[0], model(x)[0])[1] <= TOLERANCE


def test_a_graph_that_differs_is_refused(ort, tmp_path, monkeypatch):
    monkeypatch.setattr(ExportILIF, "forward", lambda self, x: torch.clamp(x, 0.0, self.D))  # no rounding
    model = neurons.auto_reset(SmallDetector(T=2)).eval()
    with pytest.raises(ZooError, match="differs from the torch model"):
        export_onnx(model, registry.info(DEMO), (1, 3, 16, 16), tmp_path / "bad.onnx")
    # the same difference, where the torch model itself moved as much under last-bit changes: reported, accepted
    monkeypatch.setattr(export, "rounding_floor", lambda *a: 1.0)
    res = export_onnx(model, registry.info(DEMO), (1, 3, 16, 16), tmp_path / "noisy.onnx")
    assert res.max_rel > TOLERANCE and res.rounding_floor == 1.0


def test_rounding_floor_is_what_folding_bn_moves():
    model = zoo.load(DEMO)
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        floor = export.rounding_floor(model, x, model(x)[0])
    assert 0 <= floor < TOLERANCE  # the demo model: no count flips on this input


def test_demo_detector_round_trips_through_onnxruntime(ort, tmp_path, capsys):
    import onnx

    out = tmp_path / "demo.onnx"
    assert zoo.cli.main(["export", DEMO, "--format", "onnx", "--input-size", "1", "3", "64", "64",
                         "--out", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["max_rel"] <= TOLERANCE and report["path"] == str(out)

    card = registry.info(DEMO)
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert meta["name"] == DEMO and meta["paper"] == card.paper and meta["T"] == "1" and meta["D"] == "4"
    assert json.loads(meta["classes"]) == list(card.classes) and meta["input"] == card.input
    assert json.loads(meta["input_shape"]) == [1, 3, 64, 64] and meta["mode"] == "integer"
    ops = _ops(out)
    assert ops["Round"] > 0 and ops["Round"] == ops["Clip"] and "Less" not in ops  # counts, no events

    # an input the export never saw: the decoded head, [1, 4 + 6 classes, 8*8 + 4*4 + 2*2 anchors]
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"images": x.numpy()})[0]
    with torch.no_grad():
        want = zoo.load(DEMO)(x)[0]
    assert got.shape == (1, 10, 84)
    assert max_difference(got, want)[1] <= TOLERANCE

    # the batch is symbolic: a batch of 3 runs and matches the torch model image by image
    x3 = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(6))
    got3 = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"images": x3.numpy()})[0]
    with torch.no_grad():
        want3 = zoo.load(DEMO)(x3)[0]
    assert got3.shape == (3, 10, 84) and max_difference(got3, want3)[1] <= TOLERANCE


def test_spike_mode_exports_the_event_form_equal_to_integer(ort, tmp_path, capsys):
    out = tmp_path / "spike.onnx"
    assert zoo.cli.main(["export", DEMO, "--mode", "spike", "--input-size", "1", "3", "32", "32",
                         "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "vs integer mode" in printed and "NMS is not in the graph" in printed
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"images": x.numpy()})[0]
    with torch.no_grad():
        assert max_difference(got, zoo.load(DEMO)(x)[0])[1] <= TOLERANCE
    ops = _ops(out)
    assert ops["Less"] > 0 and ops["ReduceSum"] > 0  # counts -> thermometer-coded events, slots summed


def test_language_models_refuse_export(capsys):
    name = registry.list_models("language")[0]
    assert zoo.cli.main(["export", name, "--format", "onnx"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not available for language models" in err


def test_missing_onnxruntime_says_how_to_install(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails
    assert zoo.cli.main(["export", DEMO, "--format", "onnx"]) == 2
    err = capsys.readouterr().err
    assert "pip install -e '.[export]'" in err and len(err.strip().splitlines()) == 1


def test_bad_input_size_is_one_line(ort, capsys):
    assert zoo.cli.main(["export", DEMO, "--input-size", "1", "3", "60", "60"]) == 2
    assert "multiple" in capsys.readouterr().err
    assert zoo.cli.main(["export", DEMO, "--input-size", "3", "64"]) == 2
