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
    "[B, K] zero-shot logits (cosine similarities). State-dict keys are the official ones (SVL "
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

def _builder(size: str):
    def build(**kwargs):
        from .e3dsnn import E3DSNNConfig, build_e3dsnn

        options = set(E3DSNNConfig.__dataclass_fields__) - {"embed_channels", "enc_channels", "enc_depth"}
        unknown = set(kwargs) - options
        if unknown:
            raise ZooError(f"unknown E-3DSNN option(s) {', '.join(sorted(unknown))}; options are {', '.join(sorted(options))}")
        return build_e3dsnn(size, **kwargs)

    return build


def name_of(size: str) -> str:
    return f"svl-e3dsnn-{size}-openshape"


for _size, _card in CARDS.items():
    register(name_of(_size), **COMMON, params=_card["params"], metrics=_card["metrics"],
             notes=_card["notes"] + " " + _OUTPUT)(_builder(_size))
