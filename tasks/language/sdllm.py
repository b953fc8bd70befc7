"""SDLLM: spike-driven conversion of a pretrained language model, at inference, without SNN training.

Every weight layer inside the model's transformer blocks (Llama / Qwen2:
``q k v o gate up down``; BERT-style encoders: every ``nn.Linear`` of the
encoder layers) becomes an :class:`SDLinear`::

    x --> [online Hadamard] --> SQPEncoder(gamma, D) --> counts C (integers), step g
      --> GroupQuantLinear(W4 codes) --> integer mode: g * (W_q C) + b (exact integer group sums)
                                         spike-driven mode: C expanded into T x D slots of
                                         -1/0/+1 events, their integer partials accumulated

gamma-SQP, two steps (spike quantisation with a data-dependent step):

* step 1, float -> integer count: ``C = round(clip(x / g, -B, B))`` with the
  step ``g`` either one calibrated ``gamma`` per layer (``gamma="static"``) or,
  the default, ``g_t = c * mean_i |x_ti|`` per token at run time
  (``gamma="per_token"``: one reduction per token and layer; ``c`` calibrated
  per layer with the rule below on ``x / mean|x_t|``). ``g`` is a per-row
  factor of the shared epilogue, so the exact integer path keeps it;
* step 2, count -> spike train: a count is ``|C|`` ternary events over
  ``T x D`` slots, ``T = ceil(max|C| / D)`` chosen per token from the counts
  (``steps="auto"``, the default, after Int2Spike; ``B = T_max D`` with ``T_max = 127 // D`` so
  counts fit int8) or fixed (``steps=T``; ``steps=1`` is the classic
  clip at ``D``). Large activations cost events, not accuracy;
* outliers before quantisation: ``rotate=True`` (default) rotates the residual
  stream by a randomised Hadamard matrix folded into the weights, rotates the
  values per head and puts an online Hadamard before ``down_proj``
  (:mod:`tasks.language.rotation`; BERT-style encoders fall back to an online
  Hadamard on every converted linear's input, with a warning);
* weights: ``gptq=True`` adds GPTQ error compensation (:func:`quantize_weight_gptq`).

The defaults were chosen by measurement (README, language section: the tiny
Shakespeare Llama's perplexity and all-MiniLM-L6-v2's embedding cosine for
each variant).

Design choices (SDLLM has no public code; see ``/work/shared/ANCHORS.md``):

* ``D = 7`` by default: the paper reports "4-bit weights, 1.58-bit spikes" and
  that bidirectional (ternary) coding halves the time steps of a symmetric
  quantiser. A symmetric 4-bit activation grid is the counts ``-7..7``; as
  ternary events that is 7 slots instead of the 15 an unsigned code needs.
  ``D`` is configurable (``D=4``: 9 levels, 4 slots).
* ``gamma`` rule ``"mse"`` by default: on a sample of each layer's calibration
  inputs (64k values; per-token mode: of ``x / mean|x_t|``), the step among ``mean|x| * c`` (a coarse grid of ``c`` in
  [0.05, 4], refined around its best) and ``max|x| / D`` that minimises the quantisation error ``||x - gamma C(x)||^2``. LLM
  activations are heavy-tailed (a few outlier channels): ``max|x|/D`` wastes
  the levels on outliers, a fixed ``mean|x|/k`` (SpikingBrain's dynamic
  threshold, rule ``"mean"``) ignores ``D``; the MSE search adapts to both.
  ``"percentile"`` (``quantile(|x|, p) / D``) is also available. The error is
  that of one step (counts clipped at ``D``), so the bulk of the values gets
  ``D`` levels and the few above get more steps.
  Calibration runs the full-precision model once (all layers' statistics in
  one pass).
* membrane-potential clipping (``clip=K``): counts are clipped to
  ``[-K, K]`` with the gamma calibrated for ``D``; it bounds ``T`` (``ceil(K / D)``) and lowers the
  firing rate, at some accuracy cost.
* weights: symmetric group-wise quantisation along the input dimension
  (``w_bits = 4``, ``group_size = 128``): per group ``s = max|w| / (2^(b-1)-1)``,
  codes ``round(w / s)`` in ``[-(2^(b-1)-1), 2^(b-1)-1]``. The layer holds the
  *dequantised* weights ``codes * s`` (a plain ``nn.Linear`` weight, so both
  modes and ``zoo.profile`` work unchanged); the cache file stores the int
  codes (two 4-bit codes per byte) and the scales (:func:`pack_state`).
* full precision stays: embeddings, every norm, the rotary tables, the final
  norm and ``lm_head`` (and, in BERT, the pooler and task heads). The
  attention products ``QK^T`` and ``PV`` stay dense by default (not counted
  by the profiler); ``spiking_attention=True`` runs them on calibrated counts
  too (:mod:`tasks.language.spiking_attention`, Llama / Qwen2).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

import neurons
from neurons.synapse import expand_events
from zoo.errors import ZooError

from .rotation import LinearView

__all__ = ["SDLLMConfig", "SDLinear", "convert", "quantize_weight", "dequantize_weight", "find_targets",
           "replace_structure", "pack_state", "unpack_state", "GAMMA_RULES"]

GAMMA_RULES = ("mse", "mean", "percentile")
GAMMA_MODES = ("static", "per_token")
TOKEN_EPS = 1e-12  # floor of mean|x_t| (an all-zero token gets counts 0)


@dataclass
class SDLLMConfig:
    """Conversion settings (defaults: the paper's W4, ternary spikes)."""

    D: int = 7  # count bound: counts in [-D, D], D ternary event slots
    clip: int | None = None  # membrane-potential clipping: counts bounded by clip < D (None: no clipping)
    w_bits: int = 4  # weight bits, symmetric (None or 0: keep weights full precision)
    group_size: int = 128  # weight quantisation group along the input dimension (0: per output channel)
    gamma_rule: str = "mse"  # "mse" | "mean" | "percentile"
    gamma_k: float = 1.0  # rule "mean": gamma = mean|x| / k
    gamma_percentile: float = 0.999  # rule "percentile": gamma = quantile(|x|, p) / D
    calib_batch: int = 4  # sequences per calibration forward
    calib_seq_len: int = 2048  # texts are truncated to this many tokens
    samples_per_layer: int = 1 << 16  # activation values kept per layer for the gamma search
    targets: Sequence[str] | None = None  # names (suffixes) of the linears to convert; None: every linear of the blocks
    spiking_attention: bool = False  # also spike Q K^T and P V (tasks.language.spiking_attention)
    gamma: str = "per_token"  # "per_token": g_t = c * mean|x_t| at run time (c calibrated) | "static": one per layer
    steps: int | str = "auto"  # time steps T of D slots: "auto" (per token, T = ceil(max|C| / D)), an int T (counts clipped to T*D; 1: to D)
    max_steps: int | None = None  # bound on T for steps="auto" (None: 127 // D, so counts fit int8)
    rotate: bool = True  # Hadamard rotation of the residual stream, folded into the weights (tasks.language.rotation)
    gptq: bool = False  # GPTQ-style error compensation of the weight quantisation (quantize_weight_gptq)
    gptq_damp: float = 0.01  # GPTQ: damping, a fraction of mean diag(H)
    seed: int = 0

    def __post_init__(self):
        if int(self.D) != self.D or self.D < 1:
            raise ZooError(f"D must be a positive integer, got {self.D!r}")
        if self.w_bits and not 2 <= int(self.w_bits) <= 8:
            raise ZooError(f"w_bits must be in 2..8 (or 0 for full-precision weights), got {self.w_bits!r}")
        if self.group_size < 0:
            raise ZooError(f"group_size must be >= 0 (0: one group per output channel), got {self.group_size}")
        if self.gamma_rule not in GAMMA_RULES:
            raise ZooError(f"gamma_rule must be one of {', '.join(GAMMA_RULES)}, got {self.gamma_rule!r}")
        if self.gamma not in GAMMA_MODES:
            raise ZooError(f"gamma must be one of {', '.join(GAMMA_MODES)}, got {self.gamma!r}")
        if self.max_steps is not None and not (1 <= int(self.max_steps) and int(self.max_steps) * self.D <= 127):
            raise ZooError(f"max_steps must be in 1..{127 // self.D} (counts up to max_steps * D must fit int8), "
                           f"got {self.max_steps!r}")
        if self.steps != "auto" and not (isinstance(self.steps, int) and 1 <= self.steps and self.steps * self.D <= 127):
            raise ZooError(f"steps must be 'auto' or an integer T in 1..{127 // self.D} (T * D <= 127), got {self.steps!r}")
        if self.clip is not None and not (1 <= int(self.clip) <= self.bound_without_clip):
            raise ZooError(f"clip must be an integer in [1, {self.bound_without_clip}] (D={self.D} x steps), got {self.clip!r}")

    @property
    def bound_without_clip(self) -> int:
        if self.steps == "auto":
            return (int(self.max_steps) if self.max_steps else 127 // self.D) * self.D
        return int(self.steps) * self.D

    @property
    def bound(self) -> int:
        """The largest |count| a converted layer emits: ``clip``, else ``D`` x the largest number of steps."""
        return int(self.clip) if self.clip is not None else self.bound_without_clip

    def to_dict(self) -> dict:
        d = asdict(self)
        d["targets"] = list(self.targets) if self.targets is not None else None
        return d


# ----------------------------------------------------------------------------------------------- weights

def _qmax(bits: int) -> int:
    return 2 ** (int(bits) - 1) - 1


def _grouped(w: torch.Tensor, group_size: int) -> tuple[torch.Tensor, int]:
    """``[out, in]`` -> ``[out, groups, g]`` (zero-padded), and the padding."""
    out_f, in_f = w.shape
    g = group_size if group_size and group_size < in_f else in_f
    pad = (-in_f) % g
    if pad:
        w = torch.nn.functional.pad(w, (0, pad))
    return w.reshape(out_f, -1, g), pad


@torch.no_grad()
def quantize_weight(w: torch.Tensor, bits: int = 4, group_size: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric group-wise quantisation: ``(codes int8 [out, in], scales float32 [out, groups])``.

    Per group of ``group_size`` input columns (the last group may be shorter):
    ``s = max|w| / qmax``, ``codes = clamp(round(w / s), -qmax, qmax)`` with
    ``qmax = 2^(bits-1) - 1``; ``|w - codes s| <= s / 2``.
    """
    qmax = _qmax(bits)
    wg, pad = _grouped(w.detach().float(), group_size)
    scales = wg.abs().amax(-1) / qmax
    scales = torch.where(scales > 0, scales, torch.ones_like(scales))  # all-zero group: any scale
    codes = torch.clamp(torch.round(wg / scales.unsqueeze(-1)), -qmax, qmax).to(torch.int8)
    codes = codes.reshape(w.shape[0], -1)
    return (codes[:, : w.shape[1]] if pad else codes).contiguous(), scales


@torch.no_grad()
def quantize_weight_gptq(w: torch.Tensor, hessian: torch.Tensor, bits: int = 4, group_size: int = 128,
                         damp: float = 0.01, block: int = 128) -> torch.Tensor:
    r"""GPTQ: quantise ``w`` ``[out, in]`` column by column onto the symmetric group grid of :func:`quantize_weight`,
    moving each column's error onto the columns not yet quantised along the inverse Hessian of the layer's
    inputs (``hessian`` = mean :math:`x^\top x` over calibration tokens). Returns the dequantised weight
    ``codes * s`` (float64).

    The group scales are fixed beforehand from the original weights (GPTQ's static groups), so
    :func:`quantize_weight` of the result gives back the same codes: in each group whose largest code
    ended below ``qmax`` (the compensation moved it), that code is set to ``+-qmax`` (one weight per such group).
    Source: Frantar et al., "GPTQ" (ICLR 2023), Algorithm 1 (lazy batches, Cholesky of the inverse).
    """
    qmax = _qmax(bits)
    W = w.detach().double().clone()
    out_f, in_f = W.shape
    g = group_size if group_size and group_size < in_f else in_f
    _, scales = quantize_weight(W, bits, g)  # [out, groups]: the static grid
    col_scale = scales.double().repeat_interleave(g, 1)[:, :in_f]
    H = hessian.double().clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    H += damp * torch.diag(H).mean() * torch.eye(in_f, dtype=H.dtype)
    Hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    Q = torch.zeros_like(W)
    for i1 in range(0, in_f, block):
        i2 = min(i1 + block, in_f)
        W1, Hinv1 = W[:, i1:i2].clone(), Hinv[i1:i2, i1:i2]
        err1 = torch.zeros_like(W1)
        for i in range(i2 - i1):
            s = col_scale[:, i1 + i]
            q = torch.clamp(torch.round(W1[:, i] / s), -qmax, qmax)
            Q[:, i1 + i] = q
            err = (W1[:, i] - q * s) / Hinv1[i, i]
            W1[:, i:] -= err[:, None] * Hinv1[i, i:][None]
            err1[:, i] = err
        W[:, i2:] -= err1 @ Hinv[i1:i2, i2:]
    pad = (-in_f) % g
    codes = F.pad(Q, (0, pad)).reshape(out_f, -1, g)
    top = codes.abs().amax(-1, keepdim=True)
    arg = codes.abs().argmax(-1, keepdim=True)
    fix = (top < qmax) & (_grouped(w.detach().double(), g)[0].abs().amax(-1, keepdim=True) > 0)
    sign = torch.where(codes.gather(-1, arg) < 0, -1.0, 1.0).double()
    codes.scatter_(-1, arg, torch.where(fix, sign * qmax, codes.gather(-1, arg)))
    codes = codes.reshape(out_f, -1)[:, :in_f]
    return codes * col_scale


def dequantize_weight(codes: torch.Tensor, scales: torch.Tensor, group_size: int = 128, dtype=torch.float32) -> torch.Tensor:
    """Inverse of :func:`quantize_weight`: ``codes * scale`` of each column's group."""
    out_f, in_f = codes.shape
    wg, pad = _grouped(codes.float(), group_size)
    if wg.shape[1] != scales.shape[1]:
        raise ZooError(f"{scales.shape[1]} weight scales per row do not fit {in_f} columns in groups of {group_size}")
    w = (wg * scales.float().unsqueeze(-1)).reshape(out_f, -1)
    return (w[:, :in_f] if pad else w).to(dtype)


def _pack4(codes: torch.Tensor) -> torch.Tensor:
    """int8 codes in [-8, 7] -> uint8, two per byte (last dim padded to even)."""
    u = (codes.to(torch.int16) + 8).to(torch.uint8)
    if u.shape[-1] % 2:
        u = torch.nn.functional.pad(u, (0, 1), value=8)
    return (u[..., 0::2] | (u[..., 1::2] << 4)).contiguous()


def _unpack4(packed: torch.Tensor, n: int) -> torch.Tensor:
    lo = (packed & 0x0F).to(torch.int16) - 8
    hi = (packed >> 4).to(torch.int16) - 8
    return torch.stack([lo, hi], -1).flatten(-2)[..., :n].to(torch.int8)


# ----------------------------------------------------------------------------------------------- the layer

EXACT_LIMIT = 2 ** 24  # integers up to this are exact in fp32
CHUNK_ELEMENTS = 1 << 26  # at most this many fp32 group partial sums at once (256 MB)


def group_partials(counts: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """``[N, in]`` integer-valued counts, codes ``[G, g, out]`` -> ``[G, N, out]`` exact integer group partial sums."""
    G, g, out_f = codes.shape
    x = counts.float()
    pad = G * g - x.shape[-1]
    if pad:
        x = F.pad(x, (0, pad))
    return torch.bmm(x.reshape(-1, G, g).transpose(0, 1), codes)


def group_epilogue(P: torch.Tensor, scales: torch.Tensor, gamma) -> torch.Tensor:
    """``gamma * sum_g s_g P_g``: the one float step after the exact partial sums (shared by every path).

    The order is fixed: ``((s_0 P_0 + s_1 P_1) + s_2 P_2) + ...``, then ``* gamma``, each step one fp32 rounding,
    so a kernel that computes it in its own loop (:mod:`tasks.language.int4_kernel`) gets the same bits
    (``sum(0)``'s order is torch's own: the same up to 16 groups, another at 40, measured with torch 2.14)."""
    Q = P * scales
    acc = Q[0].clone()
    for q in Q[1:]:
        acc += q
    return acc * gamma


@torch.library.custom_op("spiking_zoo::group_linear", mutates_args=())
def group_linear(counts: torch.Tensor, codes: torch.Tensor, scales: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """``[N, in]`` counts -> ``[N, out]``: exact group partials and the shared epilogue, as one opaque op
    (so ``torch.compile`` calls the BLAS batched product instead of unrolling it into slower loops).
    ``gamma``: a scalar tensor (static) or ``[N, 1]`` (one factor per row: per-token gamma)."""
    return group_epilogue(group_partials(counts, codes), scales, gamma)


@group_linear.register_fake
def _(counts, codes, scales, gamma):
    return counts.new_empty((counts.shape[0], codes.shape[-1]), dtype=torch.float32)


def sqp_encode(x: torch.Tensor, gamma: torch.Tensor, bound: int, per_token: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """gamma-SQP step 1: ``(counts, g)`` with ``counts = ternary_counts(x, g, bound)`` and ``g`` the step:
    ``gamma`` (static, one per layer) or ``gamma * mean_i |x_ti|`` per token (one reduction per token,
    shape ``[..., 1]``). Computed in fp32."""
    x = x.float()
    g = gamma.float()
    if per_token:
        g = g * x.abs().mean(-1, keepdim=True).clamp_min(TOKEN_EPS)
    return neurons.ternary_counts(x, g, bound), g


class SQPEncoder(neurons.Ternary):
    r"""SDLLM's two-step gamma-SQP encoder: float -> integer count -> ternary spike train.

    .. math::
        g = \gamma \ \text{(static)} \quad\text{or}\quad g_t = \gamma \cdot \tfrac{1}{n}\textstyle\sum_i |x_{ti}|
        \ \text{(per token)}, \qquad C = \operatorname{round}(\operatorname{clip}(x / g, -B, B))

    Step 2 (count -> spike train, in the synapse's spike-driven mode): ``C`` becomes ``T x D`` ternary slots,
    ``T = ceil(max|C| / D)`` chosen from the counts (Int2Spike's temporal expansion: a count above ``D``
    costs more events, not accuracy). ``B = T_max * D`` bounds the count (``clip`` when set: membrane-potential
    clipping, fewer events). The neuron emits the integer counts (``Levels.scale = 1``); its step ``g`` (a
    scalar, or one factor per token) is :attr:`row_gamma`, applied once in the synapse's shared epilogue.
    Source: SDLLM (2026, gamma-SQP; no public code), BICLab/Int2Spike ``SpikeCountTernaryLIFNode`` (T from the
    counts), BICLab/SpikingBrain-7B ``dynamic_spikes`` (a per-token threshold ``mean|x| / k``).
    """

    def __init__(self, D: int = 7, gamma: float = 1.0, bound: int | None = None, per_token: bool = False):
        super().__init__(D=D, gamma=gamma)
        self.bound = int(bound or D)
        self.per_token = bool(per_token)
        self.row_gamma: torch.Tensor | None = None  # the step of the last forward (scalar or [..., 1])

    @property
    def levels(self) -> neurons.Levels:
        return neurons.Levels(D=self.bound, signed=True, scale=1.0)

    @property
    def slots(self) -> int:
        """``D``: ternary slots per time step."""
        return self._D

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        counts, self.row_gamma = sqp_encode(x, self.gamma, self.bound, self.per_token)
        return counts

    def extra_repr(self) -> str:
        mode = "per-token gamma = %g * mean|x|" % float(self.gamma) if self.per_token else f"gamma={float(self.gamma):g}"
        return f"D={self._D}, bound={self.bound}, {mode}"


def _row_gamma(neuron, rows: int, lead: tuple) -> torch.Tensor:
    g = neuron.row_gamma
    if g is None:
        raise ZooError("GroupQuantLinear fed by an SQPEncoder needs the encoder's step: call the SDLinear, "
                       "not its inner linear alone")
    if g.ndim == 0:
        return g.float()
    if tuple(g.shape[:-1]) != lead:
        raise ZooError(f"the encoder's per-token gamma has shape {list(g.shape)}, the counts {list(lead)} rows; "
                       "call the SDLinear, not its inner linear")
    return g.reshape(rows, 1).float()


class GroupQuantLinear(neurons.SpikeLinear):
    r"""A :class:`neurons.SpikeLinear` with group-quantised weights that accumulates like integer hardware.

    With counts :math:`C` (integers), weight codes :math:`q` (integers) and
    one scale :math:`s_{o,g}` per output row and input group :math:`g`:

    .. math::
        y_o = \gamma_t \sum_g s_{o,g} P_{o,g} + b_o, \qquad P_{o,g} = \sum_{i \in g} q_{o,i} C_i

    Each :math:`P` is an integer below :math:`2^{24}` (``qmax * bound * group``),
    so fp32 computes it exactly in any summation order. Integer mode computes
    :math:`P` from the counts, spike-driven mode as the sum over the ``T x D``
    slots of the events' integer partials; both then share the same
    epilogue (``gamma_t``: the encoder's step, one per layer or one per token),
    so the two modes give bit-identical outputs however long the
    input (a plain fp32 ``W_q x`` would differ in the last bits, and a later
    ``round`` can turn that into a different count). Integer mode uses the
    CPU's int8 x int8 -> int32 GEMM where :mod:`tasks.language.int_kernels` finds it fast (decode-sized
    inputs; same integers, so the same outputs). Without quantised weights
    (``w_bits = 0``) or past the exactness bound, it is a plain product with the epilogue factor.
    """

    def __init__(self, *args, w_bits: int = 4, group_size: int = 128, **kwargs):
        super().__init__(*args, **kwargs)
        self.w_bits = int(w_bits or 0)
        self.group_size = int(group_size)
        self._grid = None  # (key, {"scales": [G, 1, out], "int8": [out, G*g] int8, "codes": fp32, "int4": packed})

    def _key(self):
        w = self.weight
        return (w.data_ptr(), w._version, w.device, w.dtype)

    def _cached(self, want: str) -> torch.Tensor:
        """The weight's codes and scales, derived once per weight version; the fp32 codes (4 bytes per weight)
        only when the fp32 path asks for them, so the int8 path keeps 1 byte per weight besides the model's own."""
        if self._grid is None or self._grid[0] != self._key():
            codes, scales = quantize_weight(self.weight, self.w_bits, self.group_size)  # exact: w is on the grid
            cg, _ = _grouped(codes, self.group_size)  # [out, G, g] int8
            self._grid = (self._key(), {"scales": scales.t().unsqueeze(1).float().contiguous(),
                                        "int8": cg.reshape(cg.shape[0], -1).to(torch.int8).contiguous()})
        cache = self._grid[1]
        if want == "codes" and "codes" not in cache:
            i8 = cache["int8"]
            cache["codes"] = i8.float().reshape(i8.shape[0], -1, self._group_width()).permute(1, 2, 0).contiguous()
        if want == "int4" and "int4" not in cache:
            from .int4_kernel import pack

            cache["int4"] = pack(cache["int8"])
        return cache[want]

    def _group_width(self) -> int:
        return self.group_size if self.group_size and self.group_size < self.in_features else self.in_features

    def _codes(self):
        """``(codes [G, g, out] fp32, scales [G, 1, out] fp32)`` for the fp32 batched product."""
        return self._cached("codes"), self._cached("scales")

    def scales(self) -> torch.Tensor:
        return self._cached("scales")

    def int8_codes(self) -> torch.Tensor:
        """The weight codes as int8 ``[out, G*g]`` (zero-padded groups): 1 byte per weight, for the int8 GEMM."""
        return self._cached("int8")

    def int4_codes(self) -> torch.Tensor:
        """The weight codes packed two per byte in tiles of 8 rows, ``[ceil(out/8), 4 * G * g]`` uint8
        (:func:`tasks.language.int4_kernel.pack`), for the int4 kernel."""
        return self._cached("int4")

    def _exact(self) -> bool:
        lv = self.levels
        if not self.w_bits or self.weight.device.type == "meta":
            return False
        g = self.group_size if self.group_size and self.group_size < self.in_features else self.in_features
        return _qmax(self.w_bits) * lv.D * g < EXACT_LIMIT

    def _partials(self, counts: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        return group_partials(counts, codes)

    def _slots(self, counts: torch.Tensor) -> int:
        """``T x D`` slots for these counts: ``T = ceil(max|C| / D)`` (at least one step)."""
        neuron = self.__dict__.get("_source_neuron")
        D = neuron.slots if isinstance(neuron, SQPEncoder) else self.levels.D
        top = int(counts.abs().max()) if counts.numel() else 0
        return max(1, -(-top // D)) * D

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lv = self.levels
        neuron = self.__dict__.get("_source_neuron")
        if not isinstance(neuron, SQPEncoder):  # a plain count neuron: values in, the classic SpikeLinear
            return self._forward_values(x)
        counts = self.input_counts(x) if self.spike_driven else torch.round(x.float())
        flat = counts.reshape(-1, self.in_features)
        gamma = _row_gamma(neuron, flat.shape[0], tuple(x.shape[:-1]))
        if not self._exact():
            if self.spike_driven:
                events = expand_events(flat, self._slots(flat), True)
                y = sum(F.linear(e, self.weight.float()) for e in events) * gamma
            else:
                y = F.linear(flat, self.weight.float()) * gamma
        else:
            scales = self.scales()  # [G, 1, out]; the fp32 codes only where the fp32 product runs
            codes = self._codes()[0] if self.spike_driven else None
            rows = max(1, CHUNK_ELEMENTS // (scales.shape[0] * scales.shape[2]))
            outs = []
            for i, part in enumerate(flat.split(rows)):
                g = gamma if gamma.ndim == 0 else gamma[i * rows: i * rows + part.shape[0]]
                if self.spike_driven:  # accumulate the events slot by slot: integer partials, exact
                    events = expand_events(part, self._slots(part), lv.signed)  # [T*D, n, in], -1/0/+1
                    outs.append(group_epilogue(sum(self._partials(e, codes) for e in events), scales, g))
                else:
                    from .int_kernels import group_linear_auto

                    outs.append(group_linear_auto(part.float(), self, g))
            y = torch.cat(outs)
        y = y.reshape(*x.shape[:-1], self.out_features).to(self.weight.dtype)
        return y if self.bias is None else y + self.bias

    def _forward_values(self, x: torch.Tensor) -> torch.Tensor:
        """Fed by a classic :class:`neurons.Ternary` (value ``gamma * C`` in, scalar gamma)."""
        if not self._exact():
            return super().forward(x)
        lv = self.levels
        codes, scales = self._codes()
        counts = self.input_counts(x) if self.spike_driven else torch.round(x / lv.scale)
        flat = counts.reshape(-1, self.in_features)
        gamma = torch.tensor(lv.scale, dtype=torch.float32)
        if self.spike_driven:
            events = expand_events(flat, lv.D, lv.signed)
            y = group_epilogue(sum(self._partials(e, codes) for e in events), scales, gamma)
        else:
            y = group_linear(flat.float(), codes, scales, gamma)
        y = y.reshape(*x.shape[:-1], self.out_features).to(x.dtype)
        return y if self.bias is None else y + self.bias


class SDLinear(LinearView, nn.Module):
    r"""A spike-driven linear layer: :class:`SQPEncoder` + :class:`GroupQuantLinear`.

    .. math::
        C = \operatorname{round}(\operatorname{clip}(x / g, -B, B)), \qquad y = g\, W_q C + b

    with ``g`` the encoder's step (static or per token) and ``B = clip`` or ``T_max x D``. Integer mode
    multiplies the counts; spike-driven mode (``neurons.to_spike_driven``) accumulates ``T x D`` slots of
    -1/0/+1 events. ``weight`` / ``bias`` / ``in_features`` / ``out_features`` are those of the
    inner linear, so code that inspects a replaced ``nn.Linear`` keeps working. ``D``: the count bound ``B``.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, D: int = 7, gamma: float = 1.0,
                 w_bits: int = 4, group_size: int = 128, device=None, dtype=None, slots: int | None = None,
                 per_token: bool = False, hadamard: bool = False):
        super().__init__()
        self.hadamard = bool(hadamard)  # an online block Hadamard on the input (rotation; weights hold W H)
        self.neuron = SQPEncoder(D=slots or D, gamma=gamma, bound=D, per_token=per_token)
        self.linear = GroupQuantLinear(in_features, out_features, bias=bias, source=self.neuron, w_bits=w_bits,
                                       group_size=group_size, device=device, dtype=dtype)
        self.w_bits = int(w_bits or 0)
        self.group_size = int(group_size)

    @property
    def D(self) -> int:
        return self.neuron.D

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.hadamard:
            from .rotation import apply_hadamard

            return self.linear(self.neuron(apply_hadamard(x))).to(x.dtype)
        return self.linear(self.neuron(x)).to(x.dtype)

    def extra_repr(self) -> str:
        return f"w_bits={self.w_bits}, group_size={self.group_size}" + (", online Hadamard" if self.hadamard else "")


# ----------------------------------------------------------------------------------------------- structure

def _block_lists(model: nn.Module) -> list[tuple[str, nn.ModuleList]]:
    """The ModuleLists that hold the model's transformer blocks (those whose children contain nn.Linear)."""
    found = []
    for name, m in model.named_modules():
        if isinstance(m, nn.ModuleList) and len(m) and all(
            any(isinstance(x, nn.Linear) for x in child.modules()) for child in m
        ):
            if not any(name.startswith(p + ".") for p, _ in found):  # outermost only
                found.append((name, m))
    return found


def find_targets(model: nn.Module, targets: Sequence[str] | None = None) -> list[str]:
    """Qualified names of the ``nn.Linear`` layers that conversion replaces.

    Default: every ``nn.Linear`` inside the block lists (``model.layers`` of
    Llama / Qwen2, ``encoder.layer`` of BERT). ``targets``: name suffixes
    (``["q_proj", "v_proj"]``) to restrict to.
    """
    if any(isinstance(m, SDLinear) for m in model.modules()):
        raise ZooError(f"{type(model).__name__} is already converted (it has SDLinear layers); convert the full-precision model")
    from .rotation import HadamardLinear

    names = []
    for prefix, blocks in _block_lists(model):
        wrapped = set()
        for sub, m in blocks.named_modules():
            if isinstance(m, HadamardLinear):  # a linear with an online Hadamard on its input (rotation)
                wrapped.add(sub + ".linear")
                names.append(f"{prefix}.{sub}" if prefix else sub)
            elif isinstance(m, nn.Linear) and not isinstance(m, neurons.SpikeLinear) and sub not in wrapped:
                names.append(f"{prefix}.{sub}" if prefix else sub)
    if targets is not None:
        wanted = tuple(targets)
        names = [n for n in names if n.rsplit(".", 1)[-1] in wanted or n.endswith(wanted)]
    if not names:
        raise ZooError(
            f"{type(model).__name__} has no nn.Linear layers in repeated blocks to convert (unsupported architecture; "
            "SDLLM converts Llama / Qwen2 / BERT-style models whose block weights are nn.Linear)"
        )
    return names


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def replace_structure(model: nn.Module, config: SDLLMConfig, names: Sequence[str] | None = None,
                      linears_only: bool = False) -> list[str]:
    """Put an :class:`SDLinear` (gamma 1, weights not quantised yet) in place of each target linear; no data needed.

    Used to rebuild the skeleton of a converted model before loading its cached state. ``linears_only``: only
    the SDLinears (the rotation structure is already in place; no spiking attention installed).
    """
    if config.rotate and not linears_only:
        from .rotation import rotate_structure

        rotate_structure(model)
    names = list(names) if names is not None else find_targets(model, config.targets)
    for name in names:
        lin = model.get_submodule(name)
        sd = SDLinear(lin.in_features, lin.out_features, bias=lin.bias is not None, D=config.bound,
                      w_bits=config.w_bits, group_size=config.group_size, slots=config.D,
                      per_token=config.gamma == "per_token", hadamard=not isinstance(lin, nn.Linear),
                      device=lin.weight.device, dtype=lin.weight.dtype)
        _set(model, name, sd)
    if config.spiking_attention and not linears_only:
        from .spiking_attention import install

        install(model, config.D)
    return names


@torch.no_grad()
def calibrate_attention(model: nn.Module, batches: list[torch.Tensor], config: SDLLMConfig) -> dict[str, float]:
    """Gammas of the spiking attention steps (q, k, v, p) of every layer, from the model's own forward."""
    from .spiking_attention import STEPS, SpikingAttention

    layers = {n: m for n, m in model.named_modules() if isinstance(m, SpikingAttention)}
    gen = torch.Generator().manual_seed(config.seed)
    stats = {(n, s): _Stats(config.samples_per_layer, gen) for n in layers for s in STEPS}
    for n, m in layers.items():
        m.recorders = {s: stats[(n, s)].update for s in STEPS}
    try:
        for ids in batches:
            _forward(model, ids)
    finally:
        for m in layers.values():
            m.recorders = None
    gammas = {}
    for (n, s), st in stats.items():
        gammas[f"{n}.{s}"] = choose_gamma(st, config)
        getattr(layers[n], f"gamma_{s}").fill_(gammas[f"{n}.{s}"])
    return gammas


# ----------------------------------------------------------------------------------------------- calibration

class _Stats:
    def __init__(self, keep: int, generator: torch.Generator):
        self.abs_sum = 0.0
        self.count = 0
        self.max = 0.0
        self.samples: list[torch.Tensor] = []
        self.kept = 0
        self.keep = keep
        self.gen = generator

    def update(self, x: torch.Tensor) -> None:
        x = x.detach().float().reshape(-1)
        if not x.numel():
            return
        a = x.abs()
        self.abs_sum += float(a.sum(dtype=torch.float64))
        self.count += x.numel()
        self.max = max(self.max, float(a.max()))
        if self.kept < self.keep:
            n = min(self.keep - self.kept, x.numel())
            idx = torch.randint(0, x.numel(), (n,), generator=self.gen)
            self.samples.append(x[idx].cpu())
            self.kept += n


def _quant_error(x: torch.Tensor, gamma: torch.Tensor, bound: int) -> torch.Tensor:
    """Squared quantisation error for each candidate gamma ([G]) on samples x ([N])."""
    x = x.float()
    out = []
    for g in gamma.float().split(8):  # bounded memory: [8, N] at a time
        q = neurons.ternary_counts(x.unsqueeze(0), g.unsqueeze(1), bound) * g.unsqueeze(1)
        out.append(((q - x.unsqueeze(0)) ** 2).sum(1, dtype=torch.float64))
    return torch.cat(out)


def choose_gamma(stats: _Stats, config: SDLLMConfig) -> float:
    """One layer's gamma from its calibration statistics (see the module docstring)."""
    if not stats.count:
        raise ZooError("calibration never reached a converted layer; is the calibration data for this model?")
    mean_abs = stats.abs_sum / stats.count
    tiny = 1e-8
    if config.gamma_rule == "mean":
        return max(mean_abs / config.gamma_k, tiny)
    x = torch.cat(stats.samples)
    if config.gamma_rule == "percentile":
        q = float(torch.quantile(x.abs().double(), config.gamma_percentile))
        return max(q / config.D, tiny)
    if mean_abs <= tiny:
        return 1.0
    # coarse grid over mean|x| * [0.05, 4] plus max|x| / D, then a fine grid around the best coarse step
    coarse = torch.cat([mean_abs * torch.linspace(0.05, 4.0, 24), torch.tensor([stats.max / config.D])])
    best = float(coarse[int(_quant_error(x, coarse, config.D).argmin())])
    width = mean_abs * (4.0 - 0.05) / 23
    fine = torch.linspace(max(best - width, tiny), best + width, 17)
    fine = torch.cat([fine, torch.tensor([best])])
    return max(float(fine[int(_quant_error(x, fine, config.D).argmin())]), tiny)


def _check_tokenizer(model: nn.Module, tokenizer) -> None:
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if tokenizer is None or emb is None:
        return
    if len(tokenizer) > emb.num_embeddings:
        raise ZooError(
            f"tokenizer mismatch: the tokenizer has {len(tokenizer)} tokens but the model's embedding has "
            f"{emb.num_embeddings}; use the tokenizer saved with this model"
        )


def calibration_batches(calibration, model: nn.Module, tokenizer=None, config: SDLLMConfig | None = None) -> list[torch.Tensor]:
    """Calibration data as a list of ``[b, L]`` LongTensors, checked against the model's vocabulary."""
    config = config or SDLLMConfig()
    _check_tokenizer(model, tokenizer)
    if isinstance(calibration, torch.Tensor):
        ids = calibration
        if ids.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
            raise ZooError(f"calibration token ids must be an integer tensor [N, L], got dtype {ids.dtype}")
        if ids.ndim == 1:
            ids = ids.unsqueeze(0)
        if ids.ndim != 2 or ids.numel() == 0:
            raise ZooError(f"empty calibration data (token ids of shape {list(ids.shape)}); pass token ids [N, L] with N, L > 0")
        seqs = list(ids.long().split(max(1, config.calib_batch)))
    elif isinstance(calibration, str):
        raise ZooError("calibration must be a list of texts (with tokenizer=) or token ids [N, L], not one string")
    else:
        texts = [t for t in (calibration or []) if isinstance(t, str) and t.strip()]
        if not texts:
            raise ZooError("empty calibration data: pass a non-empty list of texts (with tokenizer=) or token ids [N, L]")
        if tokenizer is None:
            raise ZooError("calibration texts need tokenizer= (or pass token ids [N, L])")
        seqs = []
        for t in texts:
            ids = tokenizer(t, return_tensors="pt", truncation=True, max_length=config.calib_seq_len)["input_ids"]
            if ids.numel():
                seqs.append(ids.long())
        if not seqs:
            raise ZooError("empty calibration data: the texts tokenise to no tokens")
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if emb is not None:
        top = max(int(s.max()) for s in seqs)
        low = min(int(s.min()) for s in seqs)
        if top >= emb.num_embeddings or low < 0:
            raise ZooError(
                f"tokenizer mismatch: calibration token id {top if top >= emb.num_embeddings else low} is outside the "
                f"model's vocabulary of {emb.num_embeddings}; tokenise with this model's tokenizer"
            )
    return seqs


def _forward(model: nn.Module, ids: torch.Tensor):
    try:
        from transformers import PreTrainedModel
    except ImportError:  # pragma: no cover
        PreTrainedModel = ()
    if isinstance(model, PreTrainedModel):
        try:
            return model(input_ids=ids, use_cache=False)
        except TypeError:
            return model(input_ids=ids)
    return model(ids)


def calibration_site(model: nn.Module, name: str) -> nn.Module:
    """The module whose input the encoder of target ``name`` will see (inside an online Hadamard: its linear)."""
    m = model.get_submodule(name)
    return m.linear if not isinstance(m, nn.Linear) and hasattr(m, "linear") else m


def record_input(x: torch.Tensor, stats: _Stats, name: str, hessians: dict | None, config: SDLLMConfig) -> None:
    """One calibration input of target ``name``: its gamma statistics and (GPTQ) its ``(sum x^T x, rows)``."""
    x = x.detach().float()
    if hessians is not None:
        flat = x.reshape(-1, x.shape[-1]).double()
        h, rows = hessians.get(name, (0.0, 0))
        hessians[name] = (h + flat.t() @ flat, rows + flat.shape[0])
    if config.gamma == "per_token":  # the multiplier c of g_t = c * mean|x_t|: statistics of x_t / mean|x_t|
        x = x / x.abs().mean(-1, keepdim=True).clamp_min(TOKEN_EPS)
    stats.update(x)


@torch.no_grad()
def calibrate(model: nn.Module, names: Sequence[str], batches: list[torch.Tensor], config: SDLLMConfig,
              hessians: dict | None = None) -> dict[str, float]:
    """Run the full-precision model on the calibration batches; return each target layer's gamma.
    ``hessians``: a dict to fill with each layer's ``(sum x^T x, rows)`` (GPTQ)."""
    gen = torch.Generator().manual_seed(config.seed)
    stats = {n: _Stats(config.samples_per_layer, gen) for n in names}
    device = next(model.parameters()).device
    hooks = [calibration_site(model, n).register_forward_pre_hook(
        lambda m, args, s=stats[n], n=n: record_input(args[0], s, n, hessians, config)) for n in names]
    was_training = model.training
    model.eval()
    # a causal LM's body alone (model.model) when every target is in it: the lm_head's logits are not needed
    body = getattr(model, "model", None)
    runner = body if isinstance(body, nn.Module) and hasattr(model, "lm_head") and all(
        n.startswith("model.") for n in names) else model
    try:
        for ids in batches:
            _forward(runner, ids.to(device))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return {n: choose_gamma(stats[n], config) for n in names}


# ----------------------------------------------------------------------------------------------- conversion

@torch.no_grad()
def install_linears(model: nn.Module, names: Sequence[str], gammas: dict[str, float], hessians: dict | None,
                    config: SDLLMConfig) -> None:
    """Replace each calibrated full-precision target by its :class:`SDLinear`: weights quantised (GPTQ when
    ``hessians`` has the layer's), bias copied, gamma set. The rotation structure must already be in place."""
    originals = {n: model.get_submodule(n) for n in names}
    replace_structure(model, config, names, linears_only=True)
    for n in names:
        lin, sd = originals[n], model.get_submodule(n)
        w = lin.weight.detach()
        if config.w_bits and hessians is not None and n in hessians:
            h, rows = hessians.pop(n)
            w = quantize_weight_gptq(w, h / rows, config.w_bits, config.group_size, config.gptq_damp).to(w.dtype)
        elif config.w_bits:
            codes, scales = quantize_weight(w, config.w_bits, config.group_size)
            w = dequantize_weight(codes, scales, config.group_size, dtype=w.dtype)
        sd.linear.weight.copy_(w)
        if lin.bias is not None:
            sd.linear.bias.copy_(lin.bias)
        sd.neuron.gamma.fill_(gammas[n])


@torch.no_grad()
def convert(model: nn.Module, calibration, config: SDLLMConfig | dict | None = None, tokenizer=None) -> nn.Module:
    """Convert ``model`` (in place) to SDLLM's spike-driven form and return it.

    ``calibration``: token ids ``[N, L]`` (LongTensor) or a list of texts with
    ``tokenizer``. ``config``: an :class:`SDLLMConfig` or a dict of its fields.
    The returned model runs in integer mode; ``neurons.to_spike_driven(model)``
    switches it to ternary events (bit-identical logits with quantised weights, see
    :class:`GroupQuantLinear`; up to float rounding with ``w_bits=0``). The
    conversion settings and per-layer gammas are kept in ``model.sdllm``.
    """
    if config is None:
        config = SDLLMConfig()
    elif isinstance(config, dict):
        config = SDLLMConfig(**config)
    find_targets(model, config.targets)  # an unsupported model fails before anything changes
    batches = calibration_batches(calibration, model, tokenizer, config)
    if config.spiking_attention:  # fail before the rotation changes the model
        from .spiking_attention import require

        require(model)
    rotation = None
    if config.rotate:
        from .rotation import rotate

        rotation = rotate(model, seed=config.seed)
    names = find_targets(model, config.targets)
    hessians = {} if config.gptq and config.w_bits else None
    gammas = calibrate(model, names, batches, config, hessians)
    install_linears(model, names, gammas, hessians, config)
    if config.spiking_attention:  # calibrated on the converted linears' outputs
        from .spiking_attention import install

        install(model, config.D)
        gammas.update(calibrate_attention(model, batches, config))
    model.sdllm = {"config": config.to_dict(), "layers": names, "gammas": gammas, "rotation": rotation}
    return model


# ----------------------------------------------------------------------------------------------- storage

def pack_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Everything needed to rebuild a converted model, with the SDLinear weights as int codes + scales.

    Keys: the model's parameters and *all* buffers (non-persistent ones such as
    rotary tables included), except that each quantised ``X.linear.weight``
    becomes ``X.linear.qweight`` (uint8, two 4-bit codes per byte; int8 codes
    above 4 bits) and ``X.linear.qscale`` (float32 ``[out, groups]``).
    """
    state: dict[str, torch.Tensor] = {}
    quantised = {f"{n}.linear.weight": m for n, m in model.named_modules() if isinstance(m, SDLinear) and m.w_bits}
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        if name in quantised:
            m = quantised[name]
            codes, scales = quantize_weight(t, m.w_bits, m.group_size)  # exact: t is already on the grid
            base = name[: -len("weight")]
            state[base + "qweight"] = (_pack4(codes) if m.w_bits <= 4 else codes).cpu()
            state[base + "qscale"] = scales.cpu()
        else:
            state[name] = t.detach().cpu()
    return state


def unpacked_values(model: nn.Module, get):
    """``(name, tensor, value)`` for every parameter and buffer ``tensor`` of a skeleton from :func:`pack_state` output, read one
    tensor at a time through ``get(key) -> tensor or None`` (a dict's ``get``, or a lazy safetensors reader):
    the quantised weights dequantised from their codes, in the skeleton's dtype."""
    from zoo.errors import WeightsError

    quantised = {f"{n}.linear.weight": m for n, m in model.named_modules() if isinstance(m, SDLinear) and m.w_bits}
    tensors = dict(model.named_parameters())
    tensors.update(dict(model.named_buffers()))
    missing = []
    for name, t in tensors.items():
        if name in quantised:
            m = quantised[name]
            base = name[: -len("weight")]
            q = get(base + "qweight")
            if q is None:
                missing.append(base + "qweight")
                continue
            codes = _unpack4(q, m.in_features) if m.w_bits <= 4 else q
            value = dequantize_weight(codes, get(base + "qscale"), m.group_size, dtype=t.dtype)
        else:
            value = get(name)
            if value is None:
                missing.append(name)
                continue
        if tuple(value.shape) != tuple(t.shape):
            raise WeightsError(f"cached tensor {name} has shape {list(value.shape)}, the model {list(t.shape)}; delete the cache file")
        yield name, t, value.to(t.dtype)
    if missing:
        raise WeightsError(f"cached SDLLM state misses {len(missing)} tensors (e.g. {missing[0]}); delete the cache file")


@torch.no_grad()
def unpack_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load :func:`pack_state` output into a skeleton (``replace_structure`` applied, any device incl. meta)."""
    for _, tensor, value in unpacked_values(model, state.get):
        tensor.copy_(value)
