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
_SHAPES_TRAIN = ("OMP_NUM_THREADS=2 zoo train spike2former-tiny-shapes --data shapes --iters 2800 --batch 8 --crop 64 "
                 "--time-limit 1140 --set lr=0.005 backbone_lr_mult=1 warmup_iters=50 val_interval=700 "
                 "scale_min=0.75 scale_max=1.5 clip_grad=0 semantic_weight=1")


def _register_tiny() -> None:
    from tasks.detection.classes import SHAPES_CLASSES  # the synthetic set's classes, without its numpy import

    register(
        "spike2former-tiny-shapes", **{**_COMMON, "license": "Apache-2.0", "converters": {}},
        params=778_529, weights=None, T=1, D=8, classes=("background", *SHAPES_CLASSES), input_size=(1, 3, 128, 128),
        input=_INPUT.format(test="trained on 128x128 crops; test resize: shortest edge 128 (long side at most 512)"),
        metrics=[],
        notes="A small Spike2Former (backbone widths 16/32/64/96, one block in stages 3 and 4; 64-channel pixel "
              "decoder with one DCN encoder layer; 16 queries, 3 decoder layers) for the synthetic shapes set "
              f"(7 classes: background and six shapes; `{_SHAPES_DATA}`), meant as the zoo's demo segmenter. "
              "Not the official architecture in one point: attention_gain=True (one scalar per softmax-free "
              "attention, set from data at a random start; see spike2former.AttentionGain). No weights yet: "
              "from random weights the official code's attention never fires on small images and the BatchNorm "
              "after it normalises a constant, so the backbone's gradient norm is ~1e9 (measured) and the official "
              "clip (max_norm 0.01) stalls training; `zoo train` now starts from a calibrated initialisation "
              "(train.calibrate_firing: gradient norms ~10) and can add a semantic cross-entropy "
              "(semantic_weight), but CPU runs of 10-20 minutes still stay near the background plateau: the best, "
              f"`{_SHAPES_TRAIN}` (2,538 iterations in 19 min), reached a held-out mIoU of 14.6 % (11.4 % at 700 "
              "iterations, 12.9 % at 1,400, 14.2 % at 2,100), so none is shipped. " + _OUTPUT.format(k=7, k1=8),
    )(_builder(_TINY))


_register_tiny()
