r"""Spiking attention for SDLLM models (option ``SDLLMConfig(spiking_attention=True)``).

SDLLM spikes the linear layers; its attention products ``Q K^T`` and ``P V``
can be spiking too (the issue's option, as SpikeLLM / SpikingBrain do). Per
layer, four calibrated steps (gamma-SQP, the same MSE rule as the linears):

.. math::
    C_q = \operatorname{round}(\operatorname{clip}(q / \gamma_q, -D, D)), \quad
    C_k, C_v \text{ alike}, \qquad
    S = \gamma_q \gamma_k \, (C_q C_k^\top) \cdot \text{scaling} + \text{mask}

.. math::
    P = \operatorname{softmax}(S), \quad C_p = \operatorname{round}(\operatorname{clip}(P / \gamma_p, 0, D)),
    \qquad O = \gamma_p \gamma_v \, (C_p C_v)

``C_q C_k^T`` and ``C_p C_v`` are integer matrices (|entries| below
``D^2 * max(head_dim, keys) < 2^24`` for D = 7 up to 340k keys), exact in
fp32. Integer mode multiplies the counts; spike-driven mode
(``neurons.to_spike_driven``) feeds ``C_q`` and ``C_p`` as D slots of
ternary / binary events and accumulates their integer partials, so both modes
give bit-identical outputs. The softmax stays a full-precision operation (as
in every spiking-LLM conversion we know of), and the profiler does not count
the attention products (as for the dense attention).

It plugs into transformers through its attention-function registry
(``config._attn_implementation = "sdllm_spiking"``, with the eager additive
mask), so the Llama / Qwen2 modules themselves are not replaced.
"""

from __future__ import annotations

import torch
from torch import nn

from neurons.nodes import ternary_counts
from neurons.synapse import Synapse, expand_events

NAME = "sdllm_spiking"
STEPS = ("q", "k", "v", "p")


class SpikingAttention(Synapse, nn.Module):
    """Per-layer state of spiking attention: the four gammas, ``D``, the mode (see the module docstring)."""

    def __init__(self, D: int = 7):
        nn.Module.__init__(self)
        self.spike_driven = False
        self.D = int(D)
        for s in STEPS:
            self.register_buffer(f"gamma_{s}", torch.tensor(1.0))
        self.recorders = None  # during calibration: {step: callable(tensor)}

    def counts(self, x: torch.Tensor, step: str) -> torch.Tensor:
        return ternary_counts(x, getattr(self, f"gamma_{step}"), self.D, signed=step != "p")

    def product(self, a: torch.Tensor, b: torch.Tensor, signed: bool) -> torch.Tensor:
        """``a @ b`` of integer count tensors; spike-driven: ``a`` as D slots of events, accumulated."""
        if not self.spike_driven:
            return torch.matmul(a, b)
        events = expand_events(a, self.D, signed)  # [D, ...] in {-1, 0, 1}
        return sum(torch.matmul(e, b) for e in events)

    def extra_repr(self) -> str:
        return f"D={self.D}"


def _repeat_kv(x: torch.Tensor, groups: int) -> torch.Tensor:
    return x if groups == 1 else x.repeat_interleave(groups, dim=1)


def spiking_attention_forward(module: nn.Module, query, key, value, attention_mask, scaling: float, dropout: float = 0.0,
                              **kwargs):
    sp: SpikingAttention = module.spiking
    groups = getattr(module, "num_key_value_groups", 1)
    key, value = _repeat_kv(key, groups), _repeat_kv(value, groups)
    if sp.recorders is not None:  # calibration: full-precision attention, record what each step sees
        for step, t in (("q", query), ("k", key), ("v", value)):
            sp.recorders[step](t)
        scores = torch.matmul(query, key.transpose(2, 3)) * scaling
        if attention_mask is not None:
            scores = scores + attention_mask
        probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
        sp.recorders["p"](probs)
        return torch.matmul(probs, value).transpose(1, 2).contiguous(), None
    cq, ck, cv = sp.counts(query.float(), "q"), sp.counts(key.float(), "k"), sp.counts(value.float(), "v")
    scores = sp.product(cq, ck.transpose(2, 3), signed=True) * (sp.gamma_q * sp.gamma_k * scaling)
    if attention_mask is not None:
        scores = scores + attention_mask
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32)
    cp = sp.counts(probs, "p")
    out = sp.product(cp, cv, signed=False) * (sp.gamma_p * sp.gamma_v)
    return out.to(query.dtype).transpose(1, 2).contiguous(), None


def register() -> None:
    """Make ``"sdllm_spiking"`` a transformers attention implementation (eager additive masks)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface, eager_mask

    if NAME not in AttentionInterface._global_mapping:
        AttentionInterface.register(NAME, spiking_attention_forward)
    if NAME not in ALL_MASK_ATTENTION_FUNCTIONS._global_mapping:
        AttentionMaskInterface.register(NAME, eager_mask)


def attention_modules(model: nn.Module) -> list[nn.Module]:
    """The attention modules of a Llama / Qwen2-style model (those with q/k/v projections)."""
    return [m for m in model.modules() if all(hasattr(m, a) for a in ("q_proj", "k_proj", "v_proj", "o_proj"))]


def require(model: nn.Module) -> list[nn.Module]:
    """The attention modules of ``model``; a one-line error if it has none."""
    from zoo.errors import ZooError

    mods = attention_modules(model)
    if not mods:
        raise ZooError(f"spiking attention needs Llama / Qwen2-style attention modules (q/k/v/o_proj); "
                       f"{type(model).__name__} has none")
    return mods


def install(model: nn.Module, D: int) -> list[SpikingAttention]:
    """Attach a :class:`SpikingAttention` to every attention module and switch the model's implementation."""
    mods = require(model)
    register()
    out = []
    for m in mods:
        if not isinstance(getattr(m, "spiking", None), SpikingAttention):
            m.spiking = SpikingAttention(D)
        out.append(m.spiking)
    for owner in [model, *mods]:  # the attention modules read their (usually shared) config
        if getattr(owner, "config", None) is not None:
            owner.config._attn_implementation = NAME
    return out
