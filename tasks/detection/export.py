"""``zoo export``: a detector as an ONNX model, checked on the spot with onnxruntime.

    zoo export spikeyolo-tiny-shapes --format onnx [--mode integer] [--input-size 1 3 128 128] [--out model.onnx]

What is exported is the integer-mode network as it runs in the zoo: every neuron as its exact ops (``Round``
and ``Clip`` on the membrane potential; with ``T > 1`` the recurrence unrolled over the time steps, the state
a tensor carried from step to step), every convolution and BatchNorm as it is (no folding: the graph computes
what the torch model computes), and the decoded head: the graph's output ``y`` is ``[B, 4 + nc, anchors]``
(box centre x, y, width, height in input pixels, then per-class sigmoid scores), as ``model(x)[0]``. NMS stays
outside, as in the zoo's post-processing (:func:`tasks.detection.postprocess.non_max_suppression`). The batch
size is symbolic (the graph runs any batch: the model's reshapes name no batch size); height and width are fixed
at export (the anchors of the decoded head are constants of the graph).

The model card travels in the ONNX ``metadata_props`` (name, paper, arxiv, T, D, classes as JSON, the input
description and shape, the output layout, the mode). After writing, the file is loaded by onnxruntime and run
on a random test input next to the torch model; the largest difference (absolute, and relative to the largest
output value, as :func:`neurons.check_equivalence` measures) is reported and must be within ``1e-4``.

onnxruntime's convolutions add in another order than torch's (and it folds BN into them), so its outputs
differ in the last bits; a membrane potential on a rounding boundary then gives one count more or less, and a
large network (SpikeYOLO-s at 640 with random weights: up to 4 % of the box range, the same as torch itself
with BN folded) can carry that to many outputs. Where the difference is over ``1e-4``, the torch model's own
sensitivity is measured (:func:`rounding_floor`: BN folded, torch against torch) and reported; a difference
within ``NOISE_FACTOR`` times it is that effect, anything more an export error.

The only change the export needs: :class:`neurons.ILIF` runs ``T > 1`` steps through SpikingJelly's registered
``sj_ilif::forward`` operator, which ONNX has no counterpart for; the export copy replaces each ILIF by
:class:`ExportILIF`, the same equations as plain tensor ops in SpikingJelly's reference order
(``spikingjelly/_ops/ilif/reference.py``). The other neurons (``ILIFGen1``, ``BinaryLIF``, ...) are plain
tensor ops already.

Spike-driven mode (``--mode spike``) exports the event form: each count expanded into ``D`` binary event slots
(SpikingJelly's ``SpikeCountToBinary``), bias-free convolutions on the events, the slots summed
(``TemporalBinSum``), the bias added once. Its onnxruntime output is checked against the torch model in spike
mode *and* in integer mode (both within 1e-4); the synapses' input check (that their inputs are counts) is
Python control flow a tracer would freeze, so the export copy turns it off (the graph's inputs to every synapse
are its neuron's counts by construction). Summing the slots in another order can round a membrane potential on
a boundary differently; on an input where that happens the integer check fails and says so.

onnx and onnxruntime are an optional extra: ``pip install -e '.[export]'``.
"""

from __future__ import annotations

import copy
import json
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

import neurons
from zoo.errors import ZooError

__all__ = ["INSTALL", "TOLERANCE", "NOISE_FACTOR", "ExportILIF", "ExportResult", "export_form", "export_onnx",
           "metadata", "require_onnx", "max_difference", "rounding_floor"]

INSTALL = "pip install -e '.[export]' (or: pip install onnx onnxruntime)"
TOLERANCE = 1e-4  # largest accepted |onnxruntime - torch| relative to the largest output value
NOISE_FACTOR = 4  # ... or this many times the torch model's own rounding-boundary noise (see rounding_floor)
OPSET = 17


def require_onnx():
    """``(onnx, onnxruntime)``, or a :class:`ZooError` that says how to install them."""
    try:
        import onnx
        import onnxruntime
    except ImportError as e:
        raise ZooError(f"ONNX export needs onnx and onnxruntime ({e.name} is not installed): {INSTALL}") from None
    return onnx, onnxruntime


class ExportILIF(nn.Module):
    r""":class:`neurons.ILIF` (integer mode, inference) as plain tensor ops, for export.

    .. math::
        H[t] = \beta\,V[t-1] + X[t], \quad V[-1] = 0, \qquad
        S[t] = \operatorname{round}(\operatorname{clip}(H[t] / \theta, 0, D)), \qquad V[t] = H[t] - \theta S[t]

    with :math:`\beta = 1 - 1/\tau` (0.25), threshold :math:`\theta` (1) and ``D`` (4): SpikeYOLO's I-LIF
    (ECCV 2024, arXiv 2407.20708), in the order of SpikingJelly's reference implementation
    (``spikingjelly/_ops/ilif/reference.py``), so the floats are the same. The loop over ``T`` unrolls in the
    exported graph. Input ``[T, ...]``; no gradient, no stored state (each forward starts from rest)."""

    def __init__(self, neuron: neurons.ILIF):
        super().__init__()
        self.D = float(neuron.D)
        self.decay = 1.0 - 1.0 / neuron.tau
        self.threshold = float(neuron.v_threshold)

    def forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        th = self.threshold
        if x_seq.shape[0] == 1:  # one step from rest: H = X (as ILIF's own one-step path)
            h = x_seq / th if th != 1.0 else x_seq
            return torch.round(torch.clamp(h, 0.0, self.D))
        v, spikes = None, []
        for x in x_seq:
            h = x if v is None else self.decay * v + x
            s = torch.round(torch.clamp(h / th, 0.0, self.D))
            v = h - s * th
            spikes.append(s)
        return torch.stack(spikes)

    def extra_repr(self) -> str:
        return f"D={self.D:g}, decay={self.decay:g}, threshold={self.threshold:g}"


def export_form(model: nn.Module) -> nn.Module:
    """A copy of ``model`` (eval) that the ONNX exporter can trace: each :class:`neurons.ILIF` replaced by
    :class:`ExportILIF`. The original model is not changed."""
    model = copy.deepcopy(model).eval()
    for m in model.modules():
        if isinstance(m, neurons.Synapse):
            m.check_inputs = False  # spike mode's input check is Python control flow: a tracer freezes it
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if isinstance(child, neurons.ILIF):
                setattr(parent, name, ExportILIF(child))
    return model


class _Decoded(nn.Module):
    """The detector's decoded output only: ``model(x)[0]``, ``[B, 4 + nc, anchors]``."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x)[0]


def _time_steps(model: nn.Module, card, shape: tuple[int, ...]) -> int:
    """The time steps the exported graph runs: a 5D input brings its own, an image is repeated ``T`` times
    (SpikeYOLO's ``cfg.T``, which a builder option may change from the card's; Gen1 runs one frame as one step)."""
    if len(shape) == 5:
        return int(shape[1])
    cfg = getattr(model, "cfg", None)
    if cfg is None:
        return int(card.T)
    return 1 if getattr(cfg, "gen1", False) else int(getattr(cfg, "T", card.T))


def metadata(card, mode: str, shape: tuple[int, ...], T: int | None = None) -> dict[str, str]:
    """The model card's facts as ONNX ``metadata_props`` (strings)."""
    return {
        "name": card.name,
        "task": card.task,
        "paper": card.paper,
        "arxiv": card.arxiv,
        "code": card.code,
        "license": card.license,
        "T": str(card.T if T is None else T),
        "D": str(card.D),
        "neuron": card.neuron,
        "classes": json.dumps(list(card.classes)),
        "input": card.input,
        "input_shape": json.dumps(list(shape)),
        "output": ("y [B, 4 + nc, anchors]: box centre x, y, width, height in input pixels, then per-class "
                   "sigmoid scores; no NMS (run it outside, as the zoo's post-processing)"),
        "mode": mode,
        "exporter": "spiking-zoo (zoo export)",
    }


def max_difference(got, ref) -> tuple[float, float]:
    """``(max |got - ref|, that / max |ref|)``, in float64."""
    got, ref = torch.as_tensor(got).double(), torch.as_tensor(ref).double()
    diff = float((got - ref).abs().max()) if ref.numel() else 0.0
    return diff, diff / max(float(ref.abs().max()) if ref.numel() else 0.0, 1e-12)


@dataclass
class ExportResult:
    path: str
    input_shape: list
    mode: str
    opset: int
    max_abs: float  # onnxruntime vs the torch model (same mode) on the test input
    max_rel: float  # ... relative to the largest output value
    integer_max_abs: float  # onnxruntime vs the torch model in integer mode (the same as above in integer mode)
    integer_max_rel: float
    tolerance: float
    # only where a difference is over the tolerance: what folding BN (last-bit changes) does to the torch model;
    # a difference within NOISE_FACTOR times that is accepted as rounding-boundary flips, not an export error
    rounding_floor: float | None
    metadata: dict

    def to_dict(self) -> dict:
        return asdict(self)


def _trace(module: nn.Module, x: torch.Tensor, path: Path, opset: int) -> None:
    with warnings.catch_warnings():
        # the legacy (TorchScript) exporter: it traces the model's Python control flow (shape checks, the
        # one-step neuron paths) as constants, which is what a fixed-shape export wants; torch warns about both
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (x,), str(path), dynamo=False, opset_version=opset,
                          input_names=["images"], output_names=["y"], do_constant_folding=True,
                          dynamic_axes={"images": {0: "batch"}, "y": {0: "batch"}})


@torch.no_grad()
def export_onnx(model: nn.Module, card, shape, path, opset: int = OPSET, seed: int = 0,
                strict: bool = True) -> ExportResult:
    """Write ``model`` (a zoo detector, in integer or spike mode) as ONNX to ``path`` for inputs of ``shape``
    and check it with onnxruntime against ``model`` on a random test input (seeded); see the module docstring.
    ``strict``: a difference over :data:`TOLERANCE` is an error (else it is only reported)."""
    onnx, ort = require_onnx()
    mode = neurons.mode_of(model)
    if mode not in ("integer", "spike"):
        raise ZooError(f"{card.name} has synapses in both modes; load it with mode='integer' or mode='spike'")
    shape = tuple(int(s) for s in shape)
    x = torch.rand(shape, generator=torch.Generator().manual_seed(seed))
    check = getattr(model, "check_input", None)
    if callable(check):
        check(x)  # a one-line error for a shape the model cannot take
    model = model.eval().cpu()
    reference = model(x)[0]
    integer = neurons.to_integer(copy.deepcopy(model))(x)[0] if mode == "spike" else reference
    path = Path(path)
    if path.parent and not path.parent.exists():
        raise ZooError(f"cannot write {path}: folder {path.parent} does not exist")
    _trace(_Decoded(export_form(model)).eval(), x, path, opset)

    proto = onnx.load(str(path))
    props = metadata(card, mode, shape, _time_steps(model, card, shape))
    onnx.helper.set_model_props(proto, props)
    proto.doc_string = f"{card.name}: {card.paper}"
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"images": x.numpy()})[0]
    max_abs, max_rel = max_difference(got, reference)
    int_abs, int_rel = max_difference(got, integer)
    floor = None
    if max(max_rel, int_rel) > TOLERANCE:
        floor = rounding_floor(model, x, reference)
    result = ExportResult(str(path), list(shape), mode, opset, max_abs, max_rel, int_abs, int_rel, TOLERANCE,
                          floor, props)
    for label, a, r in (("the torch model", max_abs, max_rel), ("the torch model in integer mode", int_abs, int_rel)):
        if strict and not (r <= TOLERANCE or r <= NOISE_FACTOR * floor):
            raise ZooError(f"the ONNX model written to {path} differs from {label} by {a:.3g} ({r:.3g} of the "
                           f"output range) on the test input, more than {TOLERANCE:g} and more than {NOISE_FACTOR}x "
                           f"what last-bit changes move the torch model by ({floor:.3g}); do not use it")
    return result


def rounding_floor(model: nn.Module, x: torch.Tensor, reference: torch.Tensor) -> float:
    """How far last-bit changes move ``model``'s output on ``x`` (relative to its range): the model with its
    BatchNorms folded into the convolutions (:func:`zoo.fuse.fold_batchnorm`, each layer within ~1e-7) against
    itself. A count whose membrane potential sits on a rounding boundary flips under such a change, and a
    network (a randomly initialised one especially) can carry the flip to many outputs."""
    from zoo.fuse import fold_batchnorm

    try:
        folded, _ = fold_batchnorm(model, x)
    except ZooError:
        return 0.0
    return max_difference(folded(x)[0], reference)[1]
