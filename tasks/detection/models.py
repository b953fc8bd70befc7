"""The detection model cards and their builders (SpikeYOLO, its demo model, TDE).

Builders import their architecture when called, so that listing the cards imports no torch.
"""

from __future__ import annotations

from zoo.errors import ZooError
from zoo.registry import register

from .classes import COCO_NAMES, EVDET200K_CLASSES, GEN1_NAMES, SHAPES_CLASSES, VOC_CLASSES

_PAPER = (
    "Integer-Valued Training and Spike-Driven Inference Spiking Neural Network "
    "for High-performance and Energy-efficient Object Detection (ECCV 2024)"
)
_COMMON = dict(
    task="detection",
    paper=_PAPER,
    arxiv="2407.20708",
    code="https://github.com/BICLab/SpikeYOLO",
    license="AGPL-3.0",
    D=4,
    converters={"ultralytics": "tasks.detection.convert:from_official"},
)
_COCO_INPUT = (
    "RGB image [B, 3, H, W], float in [0, 1], H and W multiples of 32 (the paper: 640x640 letterboxed); "
    "repeated over T time steps"
)
_GEN1_INPUT = (
    "Gen1 event frames [B, T, 3, H, W] (per slice: 127/255 background, 1 positive, 0 negative event), "
    "float in [0, 1], H and W multiples of 32 (the paper: 304x240 letterboxed to 320); "
    "a single [B, 3, H, W] frame runs one time step (T = 1), as the official Gen1 code does"
)
_OUTPUT = (
    "eval: (y, raw) with y = [B, 4 + nc, anchors] (box centre x, y, width, height in input pixels, then "
    "per-class sigmoid scores; no NMS) and raw = per-level head maps [B, 64 + nc, H/s, W/s] for strides 8, 16, 32; "
    "train: raw only. State-dict keys are the official ones."
)
_ILIF = "I-LIF (neurons.ILIF, decay 0.25)"
_ILIF_GEN1 = "I-LIF, Gen1 release (neurons.ILIFGen1, decay-input, tau 2)"


def _builder(scale: str, **defaults):
    """A registry builder: ``build_spikeyolo`` with this model's defaults; keywords override them."""
    allowed = {"nc", "T", "scale", "p5_ratio", "repeats"}

    def build(**kwargs):
        unknown = set(kwargs) - allowed
        if unknown:
            raise ZooError(f"unknown SpikeYOLO option(s) {', '.join(sorted(unknown))}; options are {', '.join(sorted(allowed))}")
        from .spikeyolo import build_spikeyolo

        opts = dict(scale=scale, **defaults)
        opts.update(kwargs)
        return build_spikeyolo(**opts)

    return build


def _coco_metrics(map50, map5095, note=""):
    return [
        dict(dataset="COCO val2017", metric="mAP@50", value=map50, source="paper", note=note),
        dict(dataset="COCO val2017", metric="mAP@50:95", value=map5095, source="paper", note=note),
    ]


register(
    "spikeyolo-n-coco", params=13_271_632, **_COMMON, input=_COCO_INPUT, input_size=(1, 3, 640, 640), T=1, neuron=_ILIF, classes=COCO_NAMES,
    weights=None, metrics=[],
    notes="Scale n [0.33, 0.375, 1024] of snn_yolov8.yaml; no released weights. " + _OUTPUT,
)(_builder("n", nc=80, T=1))

register(
    "spikeyolo-coco", params=23_153_024, **_COMMON, input=_COCO_INPUT, input_size=(1, 3, 640, 640), T=1, neuron=_ILIF, classes=COCO_NAMES,
    weights="spikeyolo-coco-23m",
    metrics=_coco_metrics(62.25, 45.57, note="23M, T1 D4; official logs_23M/results.csv, epoch 295 of 300"),
    notes="Scale s [0.33, 0.5, 1024] (23M, T=1, D=4). " + _OUTPUT,
)(_builder("s", nc=80, T=1))

register(
    "spikeyolo-m-coco", params=47_841_856, **_COMMON, input=_COCO_INPUT, input_size=(1, 3, 640, 640), T=1, neuron=_ILIF, classes=COCO_NAMES,
    weights=None, metrics=[],
    notes="Scale m [0.5, 0.625] with layer 25 = MS_ConvBlock[2,7] (48M); no released weights. " + _OUTPUT,
)(_builder("m", nc=80, T=1))

register(
    "spikeyolo-l-coco", params=68_478_400, **_COMMON, input=_COCO_INPUT, input_size=(1, 3, 640, 640), T=1, neuron=_ILIF, classes=COCO_NAMES,
    weights="spikeyolo-coco-69m",
    metrics=_coco_metrics(66.2, 48.9, note="69M, T1 D4"),
    notes="Scale l [0.5, 0.75, 1024] with layer 25 = MS_ConvBlock[2,7] (69M, T=1, D=4). " + _OUTPUT,
)(_builder("l", nc=80, T=1))

register(
    "spikeyolo-gen1", params=23_122_838, **_COMMON, input=_GEN1_INPUT, input_size=(1, 3, 320, 320), T=2, neuron=_ILIF_GEN1, classes=GEN1_NAMES,
    weights="spikeyolo-gen1-23m",
    metrics=[dict(dataset="Gen1 Automotive", metric="mAP@50", value=67.2, source="paper", note="23M, T2 D4")],
    notes="Scale s, nc=2 (car, pedestrian), SpikeYOLO_for_Gen1 release (its own neuron). " + _OUTPUT,
)(_builder("s", nc=2, T=2, gen1=True))

_SHAPES_DATA = "python -m tasks.detection.synthetic shapes --train 2000 --val 300 --seed 0"
_SHAPES_TRAIN = ("zoo train spikeyolo-tiny-shapes --data shapes --epochs 15 --batch 16 --time-limit 1140 "
                 "--set warmup_epochs=1 close_mosaic=3 nbs=16 lr0=0.02")
_SHAPES_FINETUNE = ("zoo train spikeyolo-tiny-shapes --data shapes --weights weights/spikeyolo_tiny_shapes.safetensors "
                    "--epochs 10 --batch 16 --time-limit 3300 --set warmup_epochs=0 min_warmup_iters=50 "
                    "warmup_bias_lr=0.01 close_mosaic=5 nbs=16 lr0=0.01 lrf=0.05")
_SHAPES_VAL = "synthetic shapes val (300 images, seed 0)"

register(
    "spikeyolo-tiny-shapes", params=1_749_842, **{**_COMMON, "license": "Apache-2.0 (weights trained here)"},
    input="RGB image [B, 3, H, W], float in [0, 1], H and W multiples of 32 (trained at 128x128 letterboxed)",
    input_size=(1, 3, 128, 128), T=1, neuron=_ILIF, weights="spikeyolo-tiny-shapes", classes=SHAPES_CLASSES,
    metrics=[
        dict(dataset=_SHAPES_VAL, metric="mAP@50", value=83.93, source="reproduced",
             command="zoo eval spikeyolo-tiny-shapes --data shapes --batch 16"),
        dict(dataset=_SHAPES_VAL, metric="mAP@50:95", value=62.60, source="reproduced",
             command="zoo eval spikeyolo-tiny-shapes --data shapes --batch 16"),
        dict(dataset=_SHAPES_VAL, metric="mAP@50 (spike-driven)", value=83.86, source="reproduced",
             command="zoo eval spikeyolo-tiny-shapes --data shapes --batch 16 --mode spike",
             note="a few counts round differently when events are summed in another order"),
        dict(dataset=_SHAPES_VAL, metric="energy (mJ, first val image, fp32)", value=0.2047, source="reproduced",
             command="zoo eval spikeyolo-tiny-shapes --data shapes --batch 16", note="firing rate 0.4908"),
    ],
    notes="The zoo's demo model: SpikeYOLO [depth 0.33, width 0.125] with 6 classes (circle, square, triangle, "
          f"cross, ring, diamond). Data: `{_SHAPES_DATA}`. Trained on CPU (2 cores, shared with other jobs) in two "
          f"runs: `{_SHAPES_TRAIN}` (stopped by its time limit after 9 of 15 epochs, 19.1 min, mAP@50 54.28), then "
          f"fine-tuned from those weights with `{_SHAPES_FINETUNE}` (all 10 epochs, 57.5 min with validation, one "
          "thread; mosaic off for the last 5); best EMA weights (the last epoch). On the bundled image "
          "weights/demo/shapes.jpg it finds all 5 objects with their classes (3 circles, a ring, a square). "
          + _OUTPUT,
)(_builder((0.33, 0.125, 1024), nc=6, T=1))


# --------------------------------------------------------------------------- TDE

_TDE_PAPER = "Temporal Dynamics Enhancer for Directly Trained Spiking Object Detectors (AAAI 2026)"
_TDE_INPUT = (
    "RGB image [B, 3, H, W], float in [0, 1], H and W multiples of 32 (the release: 640x640 letterboxed); "
    "the spiking encoder turns it into T = 4 different stimuli"
)
_TDE_NOTES = (
    "TDE(SDA) config (SE + AGM + spike-driven attention, SpikeDetect_TD), scale s [0.33, 0.5, 1024] as train.py "
    "loads it. Weights: released only as a Google Drive folder (weights/manifest.toml key 'tde-spikeyolo'), "
    "no per-file id. The AGM gate is model state averaged over the last 10 forwards (see tasks/detection/tde.py). "
    "Output as SpikeYOLO's: eval (y [B, 4 + nc, anchors], raw maps), train raw maps. "
    "State-dict keys are the official ones."
)
_TDE = dict(
    task="detection", paper=_TDE_PAPER, arxiv="2512.02447", code="https://github.com/Mortal825/TDE",
    license="AGPL-3.0", input=_TDE_INPUT, input_size=(1, 3, 640, 640), T=4, D=1,
    neuron="binary LIF, decay 0.25, reset 0.5 x spike (neurons.BinaryLIF)",
    weights=None, converters={"ultralytics": "tasks.detection.convert:tde_from_official"},
)


def _tde_builder(**defaults):
    allowed = {"config", "scale", "nc", "T", "repeats"}

    def build(**kwargs):
        unknown = set(kwargs) - allowed
        if unknown:
            raise ZooError(
                f"unknown TDE option(s) {', '.join(sorted(unknown))}; options are {', '.join(sorted(allowed))}"
            )
        from .tde import build_tde

        opts = dict(defaults)
        opts.update(kwargs)
        return build_tde(**opts)

    return build


register(
    "tde-spikeyolo-voc", params=23_622_174, **_TDE, classes=VOC_CLASSES,
    metrics=[dict(dataset="PASCAL VOC 2007 test (07+12 trainval)", metric="mAP@50:95", value=57.7, source="paper",
                  note="TDE(SDA), T=4")],
    notes="nc=20 (config/VOC.yaml). " + _TDE_NOTES,
)(_tde_builder(config="TDE(SDA)", scale="s", nc=20, T=4))

register(
    "tde-spikeyolo-evdet200k", params=23_618_304, **_TDE, classes=EVDET200K_CLASSES,
    metrics=[dict(dataset="EvDET200K test", metric="mAP@50:95", value=47.6, source="paper", note="TDE(SDA), T=4")],
    notes="nc=10 (config/EvDET200K.yaml: people, car, bicycle, electric bicycle, basketball, ping_pong, goose, cat, "
          "bird, UAV; event frames rendered as RGB images). " + _TDE_NOTES,
)(_tde_builder(config="TDE(SDA)", scale="s", nc=10, T=4))
