"""Official Spike2Former checkpoints -> this zoo's Spike2Former.

The released files (Hugging Face ``ZhenXXXXXin/Spike2Former``) are mmengine
checkpoints: a dict with ``meta``, ``state_dict`` (an ``OrderedDict`` of
tensors keyed ``backbone.*`` / ``decode_head.*``) and, as mmengine's
``CheckpointHook`` writes them, ``message_hub`` (``HistoryBuffer`` objects)
and possibly ``optimizer`` / ``param_schedulers``. :func:`zoo.checkpoint.read`
reads them without mmengine: ``torch.load(weights_only=True)`` refuses the
``HistoryBuffer`` class, and the stub unpickler then rebuilds every
``mmengine.*`` object as an inert stub (tensors and numpy arrays as data).

The zoo's Spike2Former uses the official key names, so the conversion is the
identity on the model's keys: take ``backbone.*`` and ``decode_head.*``, cast
to float32, and check that the result is one complete Spike2Former whose
every shape fits. Which Spike2Former it is (classes, queries, decoder layers,
encoder FFN width, ...) is read from the shapes by :func:`infer_config`.
``T`` and ``D`` leave no trace in a state dict: they come from the model card.
"""

from __future__ import annotations

import re

import torch

from tasks.detection.convert import validate_official
from zoo.errors import WeightsError

__all__ = ["from_official", "infer_config"]

_HEAD = "decode_head."
_PIX = _HEAD + "pixel_decoder."


def _count(state: dict, prefix: str) -> int:
    """How many ``prefix<i>.`` indices the keys use (``...layers.0. .. layers.8.`` -> 9)."""
    pat = re.compile(re.escape(prefix) + r"(\d+)\.")
    found = {int(m.group(1)) for k in state if (m := pat.match(k))}
    return max(found) + 1 if found else 0


def infer_config(state: dict[str, torch.Tensor]) -> dict:
    """Builder keywords (:class:`~tasks.segmentation.spike2former.Spike2FormerConfig` fields) of a state dict."""
    need = {
        "stem": "backbone.downsample1_1.encode_conv.weight",
        "d1": "backbone.downsample2.encode_conv.weight",
        "d2": "backbone.downsample3.encode_conv.weight",
        "d3": "backbone.downsample4.encode_conv.weight",
        "cls": _HEAD + "cls_embed.weight",
        "queries": _HEAD + "query_feat.weight",
        "enc_ffn": _PIX + "encoder.layers.0.ffn.fc1_conv.weight",
        "offset": _PIX + "encoder.layers.0.dcn.offset.0.weight",
        "dw": _PIX + "encoder.layers.0.dcn.dw_conv.0.weight",
        "dec_ffn": _HEAD + "transformer_decoder.layers.0.ffn.fc1.weight",
        "mlp": "backbone.block3.0.mlp.fc1_conv.weight",
    }
    missing = [k for k in need.values() if k not in state]
    if missing:
        raise WeightsError(f"not a Spike2Former state dict: missing {', '.join(missing[:5])}")
    shape = {name: tuple(state[key].shape) for name, key in need.items()}
    d2 = shape["d2"][0]
    return dict(
        embed_dims=(shape["stem"][0] * 2, shape["d1"][0], d2, shape["d3"][0]),
        mlp_ratio=shape["mlp"][0] // d2,
        block3_depth=_count(state, "backbone.block3."),
        block4_depth=_count(state, "backbone.block4."),
        num_classes=shape["cls"][0] - 1,
        num_queries=shape["queries"][0],
        feat_channels=shape["queries"][1],
        encoder_layers=_count(state, _PIX + "encoder.layers."),
        encoder_ffn=shape["enc_ffn"][0],
        dcn_group=shape["offset"][0] // 18,  # group * 3 * 3 * 2 offsets
        dcn_dw_kernel=shape["dw"][-1],
        decoder_layers=_count(state, _HEAD + "transformer_decoder.layers."),
        decoder_ffn=shape["dec_ffn"][0],
    )


def from_official(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map an official Spike2Former state dict (mmengine ``state_dict``) to this zoo's keys, validated.

    Raises :class:`zoo.errors.WeightsError` naming missing or unexpected keys, or tensors of the wrong shape.
    """
    from .spike2former import build_spike2former

    return validate_official(state, lambda key: key.startswith(("backbone.", _HEAD)), infer_config,
                             build_spike2former, "Spike2Former")
