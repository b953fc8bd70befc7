"""Official SpikeYOLO and TDE state dicts -> this zoo's models: the detection task's checkpoint converters.

The zoo's SpikeYOLO uses the official key names (``model.1.encode_conv.weight``,
``model.26.cv2.0.0.conv.weight``, ``model.26.dfl.conv.weight`` ...), so the
conversion is: drop what is not a tensor of the model (DDP ``module.``
prefixes are stripped), cast floating tensors to float32 (the released
checkpoints are fp16), and check that the result is one complete SpikeYOLO
whose every shape is right. Which SpikeYOLO it is (width, number of classes,
block repeats, layer 25's ratio) is read from the shapes by :func:`infer_config`.

The released ``.pt`` files are ultralytics pickles holding whole ``nn.Module``
objects; :mod:`zoo.checkpoint` reads them without the official classes (inert
stubs) and takes the tensors of ``ckpt['ema']`` (else ``ckpt['model']``).
:func:`official_module` gives that same pickled model, for what the state dict
does not hold (``MS_GetT``'s ``T``; TDE's AGM history).
"""

from __future__ import annotations

import re

import torch

from zoo.errors import WeightsError

__all__ = ["from_official", "infer_config", "official_module", "pickled_attr", "check_pickled_T"]

_SHOW = 5  # how many key names an error message lists


def _names(keys) -> str:
    keys = sorted(keys)
    more = f" (+{len(keys) - _SHOW} more)" if len(keys) > _SHOW else ""
    return ", ".join(keys[:_SHOW]) + more


def official_module(ckpt):
    """The pickled model an ultralytics checkpoint's weights come from: ``ckpt['ema']``, else ``ckpt['model']``
    (the choice :func:`zoo.checkpoint.to_state_dict` makes); ``None`` for a plain state dict."""
    if not isinstance(ckpt, dict) or all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        return None
    module = ckpt.get("ema") if ckpt.get("ema") is not None else ckpt.get("model")
    return None if module is None or isinstance(module, dict) else module


def pickled_attr(module, path: str, default=None):
    """Attribute ``path`` (``"model.0.T"``) of a pickled module tree (real ``nn.Module`` or stub), or ``default``."""
    for part in path.split("."):
        children = vars(module).get("_modules") or {}
        if part in children:
            module = children[part]
        elif part in vars(module):
            module = vars(module)[part]
        else:
            return default
    return module


def check_pickled_T(model, ckpt, label: str) -> None:
    """Raise :class:`WeightsError` if the checkpoint's ``MS_GetT`` repeats an image another number of times
    than ``model``'s :class:`GetT` (``T`` is not in the state dict, only in the pickled module)."""
    T = pickled_attr(official_module(ckpt), "model.0.T") if official_module(ckpt) is not None else None
    own = getattr(model.model[0], "T", None)
    if isinstance(T, int) and own is not None and T != own:
        raise WeightsError(f"the {label} checkpoint runs MS_GetT with T={T}, this model was built with T={own}; "
                           f"pass T={T} to build the model the checkpoint was trained as")


def _repeats(state: dict, layer: int) -> int:
    """How many blocks layer ``layer`` stacks: ``model.4.0. .. model.4.5.`` -> 6; no index -> 1."""
    pat = re.compile(rf"^model\.{layer}\.(\d+)\.")
    found = {int(m.group(1)) for k in state if (m := pat.match(k))}
    return max(found) + 1 if found else 1


def infer_config(state: dict[str, torch.Tensor]) -> dict:
    """Builder keywords (``scale``, ``nc``, ``repeats``, ``p5_ratio``) of the SpikeYOLO a state dict belongs to."""
    need = ("model.1.encode_conv.weight", "model.26.cv3.0.2.conv.weight", "model.25.conv1.body.2.1.weight")
    missing = [k for k in need if k not in state]
    if missing:
        raise WeightsError(f"not a SpikeYOLO state dict: missing {_names(missing)}")
    c1 = state["model.1.encode_conv.weight"].shape[0]
    hidden, dim = state["model.25.conv1.body.2.1.weight"].shape[:2]
    return dict(
        scale=(0.33, c1 / 128, 1024),
        nc=int(state["model.26.cv3.0.2.conv.weight"].shape[0]),
        repeats=tuple(_repeats(state, i) for i in (2, 4, 6, 8)),
        p5_ratio=max(1, int(hidden) // max(int(dim), 1)),
    )


def from_official(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map an official SpikeYOLO state dict to this zoo's keys (float32), validating it completely.

    Raises :class:`zoo.errors.WeightsError` naming the missing or unexpected
    keys, or the tensors whose shapes do not fit.
    """
    from .spikeyolo import build_spikeyolo

    return validate_official(state, lambda key: key.startswith("model."), infer_config, build_spikeyolo, "SpikeYOLO")


def validate_official(state, keep, infer, build, label: str) -> dict[str, torch.Tensor]:
    """The tensors of an official state dict whose (``module.``-stripped) key passes ``keep``, in float32,
    checked key by key and shape by shape against ``build(**infer(tensors))``; :class:`WeightsError` otherwise."""
    if not isinstance(state, dict):
        raise WeightsError(f"expected a state dict (dict of tensors), got {type(state).__name__}")
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            continue  # non-tensor junk (e.g. metadata)
        key = key.removeprefix("module.")
        if keep(key):
            out[key] = value.detach().to(torch.float32) if value.is_floating_point() else value.detach()
    cfg = infer(out)
    with torch.device("meta"):
        expected = build(**cfg).state_dict()
    missing, unexpected = set(expected) - set(out), set(out) - set(expected)
    if missing or unexpected:
        parts = [f"missing {len(missing)} keys: {_names(missing)}" if missing else "",
                 f"unexpected {len(unexpected)} keys: {_names(unexpected)}" if unexpected else ""]
        raise WeightsError(f"{label} state dict does not fit the model ({cfg}): " + "; ".join(p for p in parts if p))
    bad = [f"{k} {tuple(out[k].shape)} != {tuple(v.shape)}" for k, v in expected.items() if out[k].shape != v.shape]
    if bad:
        raise WeightsError(f"{label} state dict has {len(bad)} tensors of the wrong shape: {_names(bad)}")
    return out


# --------------------------------------------------------------------------- TDE (a SpikeYOLO fork)


def infer_tde_config(state: dict[str, torch.Tensor]) -> dict:
    """Builder keywords (``config``, ``scale``, ``nc``, ``T``, ``repeats``) of the TDE a state dict belongs to.

    ``TCSA+SE`` and ``TDE(TCSA)`` have identical keys and shapes (they differ
    only in where the attention sits); such a state dict is reported as ``TCSA+SE``.
    """
    if "model.0.encode_conv.weight" in state:
        o, encoder = 0, ("agm" if "model.0.alpha_base" in state else "se")
    elif "model.1.encode_conv.weight" in state:
        o, encoder = 1, "repeat"
    else:
        raise WeightsError("not a TDE state dict: no model.0.encode_conv.weight or model.1.encode_conv.weight")
    head = 25 + o
    cls_key = f"model.{head}.cv3.0.2.conv.weight"
    if cls_key not in state:
        raise WeightsError(f"not a TDE state dict: missing {cls_key}")
    if any(".att.ta.conv1." in k for k in state):
        att = "sda"
    elif any(".att.ta.sharedMLP." in k for k in state):
        att = "tcsa"
    else:
        att = None
    td = f"model.{head}.td.fc.weight" in state
    if encoder == "agm":
        config = "TDE(SDA)"
    elif encoder == "repeat":
        config = {None: "snn", "tcsa": "TCSA", "sda": "SDA"}[att]
    else:
        config = {None: "SE", "tcsa": "TCSA+SE", "sda": "SDA+SE"}[att]
    if encoder == "se" or encoder == "agm":
        T = sum(1 for k in state if re.match(r"^model\.0\.time_modules\.\d+\.encode_conv\.weight$", k))
    elif td:
        T = int(state[f"model.{head}.td.fc.weight"].shape[1])
    else:
        T = sum(1 for k in state if re.match(r"^attention_\d+$", k)) or 4
    c1 = int(state[f"model.{o}.encode_conv.weight"].shape[0])
    width = c1 / 128
    c9_key = f"model.{9 + o}.conv.weight"  # MS_StandardConv to min(512 w, max_ch w): reveals a channel cap
    c9 = int(state[c9_key].shape[0]) if c9_key in state else int(512 * width)
    max_ch = 1024 if c9 >= int(512 * width) else round(c9 / width)
    return dict(
        config=config,
        scale=(0.33, width, max_ch),
        nc=int(state[cls_key].shape[0]),
        T=int(T),
        repeats=tuple(_repeats(state, i + o) for i in (1, 3, 5, 7)),
    )


def tde_from_official(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map an official TDE state dict (``model.N...`` and ``attention_i``) to this zoo's keys (float32), validating it.

    The keys are the official ones; this drops non-tensors and other keys,
    strips DDP ``module.`` prefixes, casts to float32 and checks that every key
    and shape fits the TDE config the state dict belongs to (:func:`infer_tde_config`).
    """
    from .tde import build_tde

    return validate_official(state, lambda key: key.startswith("model.") or re.match(r"^attention_\d+$", key),
                             infer_tde_config, build_tde, "TDE")
