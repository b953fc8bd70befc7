r"""Outlier handling before quantisation: Hadamard rotations folded into the weights (QuaRot-style).

A transformer's activations carry a few channels far above the rest; an
orthogonal rotation :math:`Q` spreads them over all channels, so a per-token
or per-layer step quantises every channel well. For a pre-RMSNorm decoder
(Llama, Qwen2) the rotation is exact and costs nothing at run time:

* every RMSNorm weight is folded into the linears it feeds (``q k v``,
  ``gate up``, ``lm_head``), leaving a plain ``x / rms(x)``, which commutes
  with :math:`Q` (``||x Q|| = ||x||``);
* the residual stream is rotated, :math:`x' = x Q`: the embedding becomes
  :math:`E Q`, each reader :math:`W \to W Q`, each writer (``o_proj``,
  ``down_proj``) :math:`W \to Q^\top W`, its bias :math:`b \to b Q`; the tied
  ``lm_head`` is untied (it now differs from the embedding by the norm weight);
* ``v_proj`` / ``o_proj`` get a per-head Hadamard :math:`H_d` (values rotate,
  ``P V H = (P V) H``; exact, folded);
* the input of ``down_proj`` (the SwiGLU product, the largest outliers) gets an
  *online* Hadamard :math:`h \to h H`, :math:`W_{down} \to W_{down} H`
  (:class:`HadamardLinear`; additions only: :func:`fwht`, the fast
  Walsh-Hadamard transform, ``log2 b`` add/subtract stages and one scaling --
  the product with the ``[b, b]`` matrix it replaced read 16 MB per decode step
  and layer for ``b = 2048``: a 134M model's W4 fused step took 73-76 ms with
  it, 55-58 ms with this, same tokens).

:math:`Q = \mathrm{diag}(\pm 1) \cdot \mathrm{blockdiag}(H_b)` (randomised
Hadamard, QuaRot), :math:`H_b` the Sylvester Hadamard matrix
(``scipy.linalg.hadamard``) of the largest power of two ``b`` dividing the width
(256 for 256 / 768, 128 for 384).

Other architectures (BERT-style post-LayerNorm encoders: the normalisation
sits on the residual stream itself, so a rotation does not commute with it)
fall back, with a one-line warning, to an online Hadamard on the input of every
converted linear (:math:`W x = (W H)(H^\top x)`; exact, additions at run time).

Source: Ashkboos et al., "QuaRot: Outlier-Free 4-Bit Inference in Rotated
LLMs" (NeurIPS 2024); Liu et al., "SpinQuant" (ICLR 2025) for the folding of
the norms; the anchor notes (/work/shared/anchors/sdllm.md).
"""

from __future__ import annotations

import warnings
from functools import lru_cache

import torch
from torch import nn

from zoo.errors import ZooError

__all__ = ["rotate", "rotate_structure", "rotate_block", "rotate_ends", "rotation_matrices", "HadamardLinear", "hadamard",
           "block_size", "foldable"]

_NORMS = ("LlamaRMSNorm", "Qwen2RMSNorm", "MistralRMSNorm")


def block_size(n: int, cap: int = 1 << 12) -> int:
    """The largest power of two dividing ``n`` (at most ``cap``)."""
    b = 1
    while n % (2 * b) == 0 and 2 * b <= cap:
        b *= 2
    return b


@lru_cache(maxsize=16)
def _hadamard(b: int) -> torch.Tensor:
    from scipy.linalg import hadamard as sylvester

    return torch.from_numpy(sylvester(b)).double() / b ** 0.5


def hadamard(n: int, dtype=torch.float64) -> torch.Tensor:
    """The orthogonal, symmetric ``[n, n]`` block-diagonal Hadamard matrix (blocks of :func:`block_size`)."""
    b = block_size(n)
    return torch.block_diag(*[_hadamard(b)] * (n // b)).to(dtype)


def fwht(x: torch.Tensor, b: int) -> torch.Tensor:
    """``x H_b`` over the last dimension in blocks of ``b`` (a power of two): the fast Walsh-Hadamard transform,
    ``log2 b`` butterfly stages ``(u, v) -> (u + v, u - v)`` (Sylvester order, ``H_2k = [[H, H], [H, -H]]``),
    then one multiply by ``b^-1/2``; ``n log2 b`` additions per row instead of the matrix's ``n b`` products."""
    lead, n = x.shape[:-1], x.shape[-1]
    h = 1
    while h < b:
        y = x.reshape(*lead, n // (2 * h), 2, h)
        u, v = y.select(-2, 0), y.select(-2, 1)
        x = torch.stack((u + v, u - v), -2)
        h *= 2
    return x.reshape(*lead, n) * b ** -0.5


def apply_hadamard(x: torch.Tensor) -> torch.Tensor:
    """``x H`` over the last dimension, block by block (the online transform of :class:`HadamardLinear`), in fp32."""
    return fwht(x.float(), block_size(x.shape[-1])).to(x.dtype)


class LinearView:
    """Mixin: ``weight`` / ``bias`` / ``in_features`` / ``out_features`` of the wrapped ``self.linear``, so code
    that inspects a replaced ``nn.Linear`` keeps working."""

    @property
    def weight(self) -> torch.Tensor:
        return self.linear.weight

    @property
    def bias(self):
        return self.linear.bias

    @property
    def in_features(self) -> int:
        return self.linear.in_features

    @property
    def out_features(self) -> int:
        return self.linear.out_features


class HadamardLinear(LinearView, nn.Module):
    r"""``y = linear(x H)``: an online block Hadamard on the input (``linear.weight`` holds :math:`W H`).

    :math:`H` is symmetric and orthogonal, so with the folded weight the product equals the original
    :math:`x W^\top`. SDLLM converts it into an :class:`~tasks.language.sdllm.SDLinear` with
    ``hadamard=True`` (its encoder sees the rotated input)."""

    def __init__(self, linear: nn.Module):
        super().__init__()
        self.linear = linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(apply_hadamard(x))


def foldable(model: nn.Module) -> str | None:
    """``None`` if the residual rotation folds into ``model`` (a pre-RMSNorm Llama / Qwen2), else why not."""
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if layers is None or not hasattr(model, "lm_head") or not hasattr(inner, "norm"):
        return f"{type(model).__name__} is not a Llama / Qwen2-style decoder (model.layers, model.norm, lm_head)"
    for layer in layers:
        att, mlp = getattr(layer, "self_attn", None), getattr(layer, "mlp", None)
        if att is None or mlp is None or not all(hasattr(att, a) for a in ("q_proj", "k_proj", "v_proj", "o_proj")) \
                or not all(hasattr(mlp, a) for a in ("gate_proj", "up_proj", "down_proj")):
            return f"{type(model).__name__}'s blocks lack q/k/v/o_proj or gate/up/down_proj"
        for norm in (layer.input_layernorm, layer.post_attention_layernorm):
            if type(norm).__name__ not in _NORMS:
                return f"{type(model).__name__} normalises with {type(norm).__name__}, not a plain RMSNorm"
    if type(inner.norm).__name__ not in _NORMS:
        return f"{type(model).__name__}'s final norm is {type(inner.norm).__name__}, not a plain RMSNorm"
    return None


def _untie(model: nn.Module) -> None:
    head = model.lm_head
    emb = model.get_input_embeddings()
    if head.weight is emb.weight or head.weight.data_ptr() == emb.weight.data_ptr():
        head.weight = nn.Parameter(head.weight.detach().clone())
    for cfg in {id(c): c for c in (model.config, model.config.get_text_config())}.values():
        cfg.tie_word_embeddings = False
    if hasattr(model, "_tied_weights_keys"):
        model._tied_weights_keys = None if not isinstance(model._tied_weights_keys, dict) else {}


def rotate_structure(model: nn.Module) -> str:
    """The data-free part of :func:`rotate` (for a skeleton about to load a rotated state): untie the head and
    put :class:`HadamardLinear` around the linears with an online transform. Returns the kind of rotation."""
    reason = foldable(model)
    if reason is None:
        _untie(model)
        for layer in model.model.layers:
            if not isinstance(layer.mlp.down_proj, HadamardLinear):
                layer.mlp.down_proj = HadamardLinear(layer.mlp.down_proj)
        return "residual"
    from .sdllm import _block_lists

    blocks = _block_lists(model)
    if not blocks:
        raise ZooError(f"rotate: {type(model).__name__} has no transformer blocks of nn.Linear layers to rotate")
    for prefix, block in blocks:
        for sub, m in list(block.named_modules()):
            if type(m) is nn.Linear:
                parent, _, child = sub.rpartition(".")
                holder = block.get_submodule(parent) if parent else block
                if not isinstance(holder, HadamardLinear):
                    setattr(holder, child, HadamardLinear(m))
    return "online"


def _fold_norm(norm: nn.Module, linears: list[nn.Linear]) -> None:
    w = norm.weight.detach().double()
    for lin in linears:
        lin.weight.data = (lin.weight.detach().double() * w).to(lin.weight.dtype)
    norm.weight.data.fill_(1.0)


class _Rotation:
    """``R = diag(signs) blockdiag(H_b, ..., H_b)`` (``[n, n]``, orthogonal; ``H_b`` the :func:`_hadamard` block of
    :func:`block_size` ``(n)``, or ``block``), applied block by block: ``x R`` costs ``n b`` multiply-adds per row,
    not ``n^2`` as the dense matrix (the conversion of a 134M model spent most of its rotation time on them)."""

    def __init__(self, n: int, signs: torch.Tensor | None = None, block: int | None = None):
        self.n, self.signs, self.b = n, signs, block or block_size(n)

    def right(self, x: torch.Tensor) -> torch.Tensor:
        """``x R`` (float64) over the last dimension."""
        x = x.double()
        if self.signs is not None:
            x = x * self.signs
        return (x.reshape(-1, self.b) @ _hadamard(self.b)).reshape(x.shape)

    def dense(self) -> torch.Tensor:
        return self.right(torch.eye(self.n, dtype=torch.float64))


def _mul(lin: nn.Linear, right: _Rotation | None = None, left: _Rotation | None = None) -> None:
    """``W <- left^T W right`` (``left`` acts on the output side, with the bias: ``b <- b left``)."""
    w = lin.weight.detach().double()
    if right is not None:
        w = right.right(w)
    if left is not None:
        w = left.right(w.t()).t()  # left^T W = (W^T left)^T
        if lin.bias is not None:
            lin.bias.data = left.right(lin.bias.detach()).to(lin.bias.dtype)
    lin.weight.data = w.to(lin.weight.dtype).contiguous()


@torch.no_grad()
def rotate(model: nn.Module, seed: int = 0) -> str:
    """Rotate a full-precision ``model`` in place (see the module docstring); its outputs stay the same up to
    float rounding. Returns ``"residual"`` (folded residual rotation) or ``"online"`` (the fallback, with a
    warning that says why)."""
    reason = foldable(model)
    if reason is not None:
        warnings.warn(f"rotate: {reason}, so the residual rotation cannot be folded into its weights; "
                      "using an online Hadamard transform on each converted linear's input instead", stacklevel=3)
        kind = rotate_structure(model)
        for m in model.modules():
            if isinstance(m, HadamardLinear):
                _mul(m.linear, right=_Rotation(m.in_features))
        return kind
    rotate_structure(model)
    Q, head_dim = rotation_matrices(model.config, seed)
    for layer in model.model.layers:
        rotate_block(layer, Q, head_dim)
    rotate_ends(model, Q)
    return "residual"


def rotation_matrices(cfg, seed: int = 0) -> tuple[_Rotation, int]:
    """``(Q, head_dim)``: the residual rotation ``diag(s) H`` (random signs from ``seed``, applied block by block)
    and the head width whose Hadamard rotates the values per head."""
    hidden = cfg.hidden_size
    head_dim = getattr(cfg, "head_dim", None) or hidden // cfg.num_attention_heads
    gen = torch.Generator().manual_seed(seed)
    signs = torch.randint(0, 2, (hidden,), generator=gen).double() * 2 - 1
    return _Rotation(hidden, signs), head_dim  # Q orthogonal: diag(s) H


@torch.no_grad()
def rotate_block(layer: nn.Module, Q: "_Rotation", head_dim: int) -> None:
    """Fold the norms and the rotations into one decoder block (its ``down_proj`` already a
    :class:`HadamardLinear`, :func:`rotate_structure`); exact on its own, so blocks can be rotated one at a time."""
    att, mlp = layer.self_attn, layer.mlp
    _fold_norm(layer.input_layernorm, [att.q_proj, att.k_proj, att.v_proj])
    _fold_norm(layer.post_attention_layernorm, [mlp.gate_proj, mlp.up_proj])
    for lin in (att.q_proj, att.k_proj, att.v_proj, mlp.gate_proj, mlp.up_proj):
        _mul(lin, right=Q)
    # values per head: V' = V Hd (rows of v_proj), o_proj columns per head: W_o Hd
    per_head = block_size(head_dim)
    _mul(att.v_proj, left=_Rotation(att.v_proj.out_features, block=per_head))
    _mul(att.o_proj, right=_Rotation(att.o_proj.in_features, block=per_head), left=Q)
    down = mlp.down_proj.linear
    _mul(down, right=_Rotation(down.in_features), left=Q)


@torch.no_grad()
def rotate_ends(model: nn.Module, Q: "_Rotation") -> None:
    """Fold the final norm into ``lm_head`` and rotate ``lm_head`` and the embedding (the parts outside the blocks)."""
    _fold_norm(model.model.norm, [model.lm_head])
    _mul(model.lm_head, right=Q)
    emb = model.get_input_embeddings()
    emb.weight.data = Q.right(emb.weight.detach()).to(emb.weight.dtype)
