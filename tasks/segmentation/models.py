"""Model cards of the segmentation task: every registered Spike2Former, its data in one place.

``CARDS`` holds, per registered name, the card fields and the builder options
(:class:`~tasks.segmentation.spike2former.Spike2FormerConfig` fields) of that
model, registered below with :func:`zoo.registry.register` (builders import the architecture when called).
Sources: the paper (AAAI 2025, arXiv 2412.14587) for metrics; the official
released configs (BICLab/Spike2Former ``Segmentation/configs/Spike2Former/
released/`` @4b0d0ff) for the architecture; ``checkpoint_checksums.sha256`` of
the same repository for the weights (``weights/manifest.toml``).
"""

from __future__ import annotations

from zoo.errors import ZooError
from zoo.registry import register

from .classes import ADE20K_CLASSES, CITYSCAPES_CLASSES, VOC_CLASSES

__all__ = ["CARDS"]


_COMMON = dict(
    task="segmentation",
    paper="Spike2Former: Efficient Spiking Transformer for High-performance Image Segmentation (AAAI 2025)",
    arxiv="2412.14587",
    code="https://github.com/BICLab/Spike2Former",
    license="Apache-2.0 (Segmentation/LICENSE of the official repository, inherited from MMSegmentation; weights: no separate license stated)",
    neuron="NI-LIF (neurons.NILIF, beta 1; D 8 as released)",
    converters={"mmengine": "tasks.segmentation.convert:from_official"},
)
_INPUT = ("RGB image [B, 3, H, W], float, normalised with mean (123.675, 116.28, 103.53) and std (58.395, 57.12, "
          "57.375) on 0..255; {test}; whole-image inference, single scale")
_OUTPUT = ("forward(x) -> semantic logits [B, {k}, H, W] (softmax(cls)[:-1] . sigmoid(masks), the official encode_decode "
           "before the resize to the original image and the argmax); forward(x, return_layers=True) -> (logits, "
           "cls_scores [1+L, B, Q, {k1}], mask_preds [1+L, B, Q, H/2, W/2]). State-dict keys are the official ones. "
           "T has no effect at eval (neurons are stateless within one forward); D = 8 is what the released code "
           "computes, the paper says D = 4 (build with D=4 to try it).")
_ADE_TEST = "the official test resize: (2048, 512) keep-ratio (short side 512)"
_CITY_TEST = "the official test resize: (2048, 1024) keep-ratio (Cityscapes images stay 1024x2048)"


def _metric(dataset: str, value: float, note: str = "", metric: str = "mIoU (%)") -> dict:
    return dict(dataset=dataset, metric=metric, value=value, source="paper", note=note)


# name -> (card fields, builder options). Architecture numbers are the released configs'; classes of the
# VOC checkpoints: the configs keep num_classes=150, so their heads have 151 outputs although VOC has 21.
CARDS: dict[str, tuple[dict, dict]] = {
    "spike2former-ade20k": (dict(
        params=34_361_112,
        weights="spike2former-ade20k-sdtv2", T=4, D=8, classes=ADE20K_CLASSES, input_size=(1, 3, 512, 512),
        input=_INPUT.format(test=_ADE_TEST),
        metrics=[_metric("ADE20K val", 46.3, "T1 x D4, 34M"),
                 _metric("ADE20K val", 68.0, "T1 x D4", metric="energy (mJ)")],
        notes="Released ADE20K_SDTv2_iter102500 (backbone T=4 in its config; 100 queries, 6 decoder layers, "
              "encoder FFN 1024). tools/test.sh tags it 'Train 46.3 Test 44.5'. " + _OUTPUT.format(k=150, k1=151),
    ), dict(T=4)),
    "spike2former-l-ade20k": (dict(
        params=42_364_432,
        weights="spike2former-ade20k-v2l", T=1, D=8, classes=ADE20K_CLASSES, input_size=(1, 3, 512, 512),
        input=_INPUT.format(test=_ADE_TEST), metrics=[],
        notes="Released ADE20K_V2_L_iter155000: the same SDTv2 backbone with a larger head (200 queries, 9 decoder "
              "layers, encoder FFN 2048); the paper reports no separate number for it. " + _OUTPUT.format(k=150, k1=151),
    ), dict(T=1, num_queries=200, decoder_layers=9, encoder_ffn=2048)),
    "spike2former-cityscapes": (dict(
        params=34_327_445,
        weights="spike2former-cityscapes-sdtv2", T=4, D=8, classes=CITYSCAPES_CLASSES, input_size=(1, 3, 1024, 2048),
        input=_INPUT.format(test=_CITY_TEST),
        metrics=[_metric("Cityscapes val", 75.2, "paper table: T1 x D4"),
                 _metric("Cityscapes val", 93.8, "T1 x D4", metric="energy (mJ)")],
        notes="Released Cityscapes_SDTv2_iter75000 (backbone T=4, 19 classes). The paper's 75.2 is for 1x4; the "
              "released checkpoint is T=4 in its config, and tools/test.sh tags it '74.2 (Multi-Spikenorm)', so it "
              "may have been trained with another quantiser. " + _OUTPUT.format(k=19, k1=20),
    ), dict(T=4, num_classes=19)),
    "spike2former-voc2012": (dict(
        params=34_361_112,
        weights="spike2former-voc2012-1x4", T=1, D=8, classes=VOC_CLASSES, input_size=(1, 3, 512, 512),
        input=_INPUT.format(test=_ADE_TEST),
        metrics=[_metric("PASCAL VOC2012 val", 75.1, "T1 x D4"),
                 _metric("PASCAL VOC2012 val", 63.0, "T1 x D4", metric="energy (mJ)")],
        notes="Released VOC2012_1x4_iter97500. The checkpoint keeps num_classes=150 (cls_embed [151, 256]): logits "
              "have 150 channels, of which the first 21 are the VOC classes; take the argmax over all 150 (a pixel "
              "predicted >= 21 is a miss, as in mmseg's IoUMetric). " + _OUTPUT.format(k=150, k1=151),
    ), dict(T=1, num_classes=150)),
    "spike2former-voc2012-t4": (dict(
        params=34_361_112,
        weights="spike2former-voc2012-4x4", T=4, D=8, classes=VOC_CLASSES, input_size=(1, 3, 512, 512),
        input=_INPUT.format(test=_ADE_TEST),
        metrics=[_metric("PASCAL VOC2012 val", 75.4, "T4 x D4")],
        notes="Released VOC2012_4x4_iter72500 (backbone T=4). As the 1x4 checkpoint it keeps num_classes=150 "
              "(151 class outputs; argmax over all 150, the first 21 are VOC's). " + _OUTPUT.format(k=150, k1=151),
    ), dict(T=4, num_classes=150)),
}


def _builder(defaults: dict):
    """A registry builder: :func:`build_spike2former` with this model's options; keywords override them."""
    def build(**kwargs):
        from .spike2former import Spike2FormerConfig, build_spike2former

        allowed = set(Spike2FormerConfig.__dataclass_fields__)
        unknown = set(kwargs) - allowed
        if unknown:
            raise ZooError(f"unknown Spike2Former option(s) {', '.join(sorted(unknown))}; "
                           f"options are {', '.join(sorted(allowed))}")
        return build_spike2former(**{**defaults, **kwargs})

    return build


for _name, (_card, _options) in CARDS.items():
    register(_name, **_COMMON, **_card)(_builder(_options))


# --------------------------------------------------------------------------- the zoo's demo model

_TINY = dict(embed_dims=(16, 32, 64, 96), block3_depth=1, block4_depth=1, num_classes=7, num_queries=16,
             feat_channels=64, encoder_layers=1, encoder_ffn=128, dcn_group=8, decoder_layers=3, decoder_heads=4,
             decoder_ffn=128, attention_gain=True)
_SHAPES_DATA = "python -m tasks.segmentation.synthetic shapes --train 2000 --val 200 --seed 0"
_SHAPES_TRAIN = ("OMP_NUM_THREADS=2 zoo train spike2former-tiny-shapes --data shapes --iters 2400 --batch 8 --crop 64 "
                 "--time-limit 1140 --set lr=0.005 backbone_lr_mult=1 warmup_iters=50 val_interval=600 "
                 "scale_min=0.75 scale_max=1.5 clip_grad=0 semantic_weight=1")
_SHAPES_VAL = "synthetic shapes val (200 images, seed 0)"
_SHAPES_EVAL = "zoo eval spike2former-tiny-shapes --data shapes"


def _register_tiny() -> None:
    from tasks.detection.classes import SHAPES_CLASSES  # the synthetic set's classes, without its numpy import

    register(
        "spike2former-tiny-shapes", **{**_COMMON, "license": "Apache-2.0 (weights trained here)", "converters": {}},
        params=778_529, weights="spike2former-tiny-shapes", T=1, D=8, classes=("background", *SHAPES_CLASSES),
        input_size=(1, 3, 64, 64),
        input=_INPUT.format(test="trained on 64x64 crops; test resize: (256, 64) keep-ratio (short side 64)"),
        metrics=[_demo_metric("mIoU (%)", 85.33), _demo_metric("mAcc (%)", 89.52), _demo_metric("aAcc (%)", 97.03),
                 _demo_metric("mIoU (%, spike-driven)", 85.33, " --mode spike"),
                 _demo_metric("energy (mJ, first val image, fp32)", 0.0373, note="firing rate 0.5205")],
        notes="The zoo's demo segmenter: a small Spike2Former (backbone widths 16/32/64/96, one block in stages 3 "
              "and 4; 64-channel pixel decoder with one DCN encoder layer; 16 queries, 3 decoder layers) for the "
              f"synthetic shapes set (7 classes: background and six shapes, each with its own hue; `{_SHAPES_DATA}`). "
              "Not the official architecture in one point: attention_gain=True (one scalar per softmax-free "
              "attention, set from data at the random start; see spike2former.AttentionGain): from random weights "
              "the official code's attention never fires on small images and the official clip (max_norm 0.01) "
              "stalls training, so `zoo train` starts from a calibrated initialisation (train.calibrate_firing) "
              "and this recipe adds a semantic cross-entropy (semantic_weight). Trained on CPU (2 cores, nothing "
              f"else running) with `{_SHAPES_TRAIN}`: all 2,400 iterations in 16.3 min (977 s with validation; "
              "held-out mIoU 73.5 % at 600, 83.8 at 1,200, 83.6 at 1,800, 85.35 at 2,400); weights: the best "
              "validation (the last). On the bundled image weights/demo/shapes_segmentation.jpg (a held-out "
              "sample, seed 1001) its IoUs are background 94 %, circle 93, triangle 89, ring 57, diamond 91 (96 % "
              "of pixels right). "
              + _OUTPUT.format(k=7, k1=8),
    )(_builder(_TINY))


def _demo_metric(metric: str, value: float, mode: str = "", note: str = "") -> dict:
    return dict(dataset=_SHAPES_VAL, metric=metric, value=value, source="reproduced",
                command=_SHAPES_EVAL + mode, note=note)


_register_tiny()
