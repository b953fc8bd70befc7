"""Fused greedy decoding for Llama / Qwen2 with a static, preallocated KV cache (CPU, torch.compile).

After ClusterFusion (NeurIPS 2025), which fuses one decode step of a Llama
attention block into one kernel, here each layer's attention block for one
decode step is *one function* compiled with ``torch.compile``:

    residual += delta                       (the previous block's output)
    x = RMSNorm(residual)
    q, k, v = x Wqkv (+ b)                  (one product for q|k|v; SDLLM: one encoding where they share it)
    q, k = RoPE(q, k, cos[pos], sin[pos])   (NeoX rotate-half, as transformers' Llama)
    K[:, :, pos], V[:, :, pos] = k, v       (in-place write into the static cache)
    a = softmax(q K^T / sqrt(d) + mask(pos)) V   over the whole static cache (positions > pos masked)
    return residual, a Wo (+ b)

The cache has a fixed length, so every step and every layer has the same
shapes: the function compiles once and is reused. The MLP (post-attention
RMSNorm, gate|up as one product -- SDLLM: where they share their encoder --,
down) is a second function, :func:`mlp_step`; :func:`layer_step` runs both and
is what is compiled (one call and one guard check per layer and step: 13.6 vs
15.7 ms per step of the SDLLM 134M model than two compiled calls, AMD EPYC
AVX2, 2 threads). The final norm and lm_head are a third compiled function,
:func:`head_step`. Inside the compiled code a one-row dense product is a
multiply-reduce that streams the weight (:func:`_dense`).

The prompt runs as one batched forward of the model (its keys and values
are copied into the static cache; the head only at the last position), then
each new token goes through the fused steps. Greedy decoding gives the tokens
of transformers' ``generate(do_sample=False)`` (tests/language/test_decode.py);
an SDLLM model's tokens are its eager ``generate``'s as long as no count
rounds differently: the static-cache attention sums in another order than
transformers' SDPA, so a count on a rounding boundary can flip and the
greedy paths part after some tokens (the random 134M model of
``zoo bench language``: at the 22nd new token, in the code before and after
the int4 kernel alike). SDLLM-converted models decode in their
integer mode (the Ternary encoders are applied inside the fused function).

On a GPU (not available where this was written, so neither built nor
tested here): ClusterFusion's kernel runs this same ``attention_step`` as
one launch on a Hopper thread-block cluster, the QKV projection split over
the cluster's blocks along the head dimension, partial results exchanged
through distributed shared memory (DSMEM) instead of global memory, the
attention over the KV cache split along the sequence with a cluster-wide
softmax reduction, and the output projection reduced across the cluster.
What that adds over ``torch.compile`` is that no intermediate (q, k, v,
scores, the attention output) leaves the chip between the five stages.
The interface is ready for it: ``attention_step`` and ``mlp_step`` are pure
functions of tensors with static shapes (the preallocated cache, the
position as a tensor), so a Triton / CUDA kernel with the same signature can
replace ``attention_step`` (called by ``layer_step``) without touching the decoder.
On a CPU each decode step reads every weight once from memory, so both this
path and transformers' eager decode are bound by memory bandwidth; the
``weight_dtype=torch.float16`` option halves the bytes read.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from zoo.errors import ZooError

from . import int_kernels
from .int4_kernel import group_linear_int4
from .int_kernels import group_linear_int8
from .rotation import HadamardLinear, apply_hadamard
from .sdllm import SDLinear, group_linear, sqp_encode

__all__ = ["FusedDecoder", "attention_step", "mlp_step"]


def _rms(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return w * xf.to(x.dtype)


def _project(x: torch.Tensor, proj: tuple) -> torch.Tensor:
    """One projection ``(W, b, gamma, bound, per_token, H)``: optionally the online Hadamard block ``H`` of a
    rotated model, then SDLLM's gamma-SQP counts (``gamma=None``: full precision), then ``x W^T + b`` in the
    weight's dtype (fp16 copies: half the bytes read per step), result in x's dtype.

    ``W = (codes, scales, codes_int8, codes_int4)``, one of the three codes set: an SDLLM layer's exact integer
    accumulation (the op of :class:`tasks.language.sdllm.GroupQuantLinear`), so decoding sees the eager model's
    counts; the codes given choose the kernel (fp32 batched product, the CPU's int8 GEMM of
    :mod:`tasks.language.int_kernels`, or the packed-int4 kernel of :mod:`tasks.language.int4_kernel`: same
    integers, and only those codes kept)."""
    w, b, gamma, bound, per_token, had = proj
    if had:  # the online Hadamard of a rotated model: x H, block by block (additions only)
        x = apply_hadamard(x)
    if isinstance(w, tuple):
        counts, g = sqp_encode(x, gamma, bound, per_token)
        flat = counts.reshape(-1, counts.shape[-1])
        g = g if g.ndim == 0 else g.reshape(-1, 1)
        if w[3] is not None:
            y = group_linear_int4(flat, w[3], w[1], g)
        elif w[2] is not None:
            y = group_linear_int8(flat, w[2], w[1], g)
        else:
            y = group_linear(flat, w[0], w[1], g)
        y = y.reshape(*x.shape[:-1], w[1].shape[-1]).to(x.dtype)
        return y if b is None else y + b
    if gamma is not None:
        counts, g = sqp_encode(x, gamma, bound, per_token)
        x = (counts * g).to(x.dtype)
    if w.dtype != x.dtype:
        return _dense(x.to(w.dtype), w, b).to(x.dtype)
    return _dense(x, w, b)


def _dense(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """``x W^T + b``. Inside ``torch.compile`` with one row, as a multiply-and-reduce over the input, which
    inductor turns into one loop that streams the weight (on 2 cores 1.5x faster than the BLAS product for a
    [32000, 768] head, which does not reach the memory bandwidth at one row: measured 8.3 vs 5.5 ms); else
    ``F.linear``. Same fp32 precision; another summation order (logits differ by rounding, ~1e-6 relative)."""
    if torch.compiler.is_compiling() and x.numel() == x.shape[-1]:
        y = (x.reshape(1, -1) * w).sum(-1).reshape(*x.shape[:-1], w.shape[0])
        return y if b is None else y + b
    return F.linear(x, w, b)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), -1)


def attention_step(residual, delta, ln_w, eps: float, projs, o, cos, sin, pos,
                   k_cache, v_cache, n_heads: int, n_kv: int, head_dim: int):
    """One decode step of one attention block (see the module docstring); mutates the caches.

    ``projs``: ``[(W, b, gamma, bound, per_token, hadamard)]`` (see :func:`_project`), either one fused q|k|v
    projection or three; ``o``: the output projection.
    Shapes: residual / delta ``[B, hidden]``, cos / sin ``[max_len, head_dim]``,
    pos ``[1]`` (long), caches ``[B, n_kv, max_len, head_dim]``.
    """
    residual = residual + delta
    x = _rms(residual, ln_w, eps)
    outs = [_project(x, p) for p in projs]
    qkv = outs[0] if len(outs) == 1 else torch.cat(outs, -1)
    B = x.shape[0]
    q, k, v = qkv.split([n_heads * head_dim, n_kv * head_dim, n_kv * head_dim], -1)
    q = q.view(B, n_heads, head_dim)
    k = k.view(B, n_kv, head_dim)
    v = v.view(B, n_kv, head_dim)
    c = cos.index_select(0, pos)  # [1, head_dim]
    s = sin.index_select(0, pos)
    q = q * c + _rotate_half(q) * s
    k = k * c + _rotate_half(k) * s
    k_cache.index_copy_(2, pos, k.unsqueeze(2).to(k_cache.dtype))
    v_cache.index_copy_(2, pos, v.unsqueeze(2).to(v_cache.dtype))
    group = n_heads // n_kv
    qg = q.view(B, n_kv, group, head_dim)
    scores = torch.einsum("bkgd,bksd->bkgs", qg, k_cache) / math.sqrt(head_dim)
    valid = torch.arange(k_cache.shape[2], device=pos.device) <= pos
    scores = scores.masked_fill(~valid, float("-inf"))
    probs = torch.softmax(scores.float(), -1).to(q.dtype)
    attn = torch.einsum("bkgs,bksd->bkgd", probs, v_cache).reshape(B, n_heads * head_dim)
    return residual, _project(attn, o)


def mlp_step(residual, delta, ln_w, eps: float, gate, up, down, gate_up=None):
    """Post-attention residual add, RMSNorm and the SwiGLU MLP; ``gate/up/down``: projections (:func:`_project`).

    ``gate_up``: gate and up as one projection (:func:`_merge`: one product for both), or None."""
    residual = residual + delta
    x = _rms(residual, ln_w, eps)
    if gate_up is not None:
        g, u = _project(x, gate_up).chunk(2, -1)
    else:
        g, u = _project(x, gate), _project(x, up)
    h = F.silu(g) * u
    return residual, _project(h, down)


def layer_step(residual, delta, L: "_Layer", cos, sin, pos, k_cache, v_cache, n_heads: int, n_kv: int, head_dim: int):
    """One decoder layer for one decode step: :func:`attention_step` then :func:`mlp_step` (compiled as one
    function: one call, one guard check per layer and step instead of two)."""
    residual, delta = attention_step(residual, delta, L.ln1, L.eps1, L.projs, L.o, cos, sin, pos, k_cache, v_cache,
                                     n_heads, n_kv, head_dim)
    return mlp_step(residual, delta, L.ln2, L.eps2, L.gate, L.up, L.down, L.gate_up)


def head_step(residual, delta, ln_w, eps: float, w, b):
    """The last residual add, the final RMSNorm and the lm_head: next-token logits in fp32."""
    return _project(_rms(residual + delta, ln_w, eps), (w, b, None, 0, False, None)).float()


def _proj(m: nn.Module, kernel: str | None = None, had: bool = False):
    if isinstance(m, HadamardLinear):
        return _proj(m.linear, kernel, True)
    if isinstance(m, SDLinear):
        had = had or bool(m.hadamard)
        enc = (m.neuron.gamma, m.neuron.bound, m.neuron.per_token, had)
        lin = m.linear
        if lin._exact():  # the chosen kernel's codes only (int4: half a byte per weight)
            fit = (lin._group_width(), lin.w_bits, m.neuron.bound)
            if kernel is not None and not int_kernels.fits(kernel, *fit):
                raise ZooError(f"kernel={kernel!r} cannot run {lin.out_features}x{lin.in_features} (groups of {fit[0]}, "
                               f"{fit[1]}-bit codes, counts up to {fit[2]}); use kernel=None to choose per layer")
            k = kernel or int_kernels.choose(1, m.neuron.bound, m.weight.device, *fit[:2])
            if k == "int4":
                w = (None, lin.scales(), None, lin.int4_codes())
            elif k == "int8":
                w = (None, lin.scales(), lin.int8_codes(), None)
            else:
                w = (*lin._codes(), None, None)
            return (w, lin.bias, *enc)
        return (m.linear.weight, m.linear.bias, *enc)
    if type(m) is nn.Linear:
        return (m.weight, m.bias, None, 0, False, had)
    raise ZooError(f"fused decode supports nn.Linear and SDLinear projections, got {type(m).__name__}")


def _merge(projs: list[tuple]) -> tuple | None:
    """Projections of one input as one (outputs concatenated: q|k|v, gate|up), or None where they differ in
    what they do to the input. Full precision: the weights stacked. SDLLM: where their encoders are the same
    (gamma, bound, per-token, Hadamard; q/k/v usually are, calibrated on the same input), the counts are the
    same, so one grouped product with the codes and scales stacked along the outputs gives each output the same
    integer partials and the same epilogue as its own projection (bit for bit), from one encoding."""
    (w0, _, g0, *enc0), rest = projs[0], projs[1:]
    for w, _, g, *enc in rest:
        if enc != enc0 or isinstance(w, tuple) != isinstance(w0, tuple) or (g is None) != (g0 is None):
            return None
        if g is not None and not torch.equal(g, g0):
            return None
        if isinstance(w, tuple) and (any((w[i] is None) != (w0[i] is None) for i in (0, 2, 3))
                                     or w[1].shape[0] != w0[1].shape[0]):
            return None
    if isinstance(w0, tuple) and w0[3] is not None and any(_out(w) % 8 for w, *_ in projs[:-1]):
        return None  # packed int4 codes come in tiles of 8 rows: stacked, a part must end on a tile
    given = [b for _, b, *_ in projs if b is not None]
    bias = None if not given else torch.cat([given[0].new_zeros(_out(w)) if b is None else b for w, b, *_ in projs])
    if not isinstance(w0, tuple):
        return (torch.cat([w for w, *_ in projs]).contiguous(), bias, g0, *enc0)
    cat = lambda i, dim: None if w0[i] is None else torch.cat([w[i] for w, *_ in projs], dim).contiguous()  # noqa: E731
    return ((cat(0, -1), cat(1, -1), cat(2, 0), cat(3, 0)), bias, g0, *enc0)


def _out(w) -> int:
    """Output features of a projection's weight (a tensor ``[out, in]`` or SDLLM's ``(codes, scales, ...)``)."""
    return w[1].shape[-1] if isinstance(w, tuple) else w.shape[0]


def _cache_tensors(cache, n_layers: int):
    """``[(keys, values)]`` per layer (``[B, n_kv, P, head_dim]``, after RoPE) from a transformers cache, or None."""
    if cache is None:
        return None
    layers = getattr(cache, "layers", None)
    if layers is not None and len(layers) == n_layers and all(hasattr(l, "keys") for l in layers):
        return [(l.keys, l.values) for l in layers]
    if hasattr(cache, "key_cache") and len(cache.key_cache) == n_layers:  # transformers 4.x DynamicCache
        return list(zip(cache.key_cache, cache.value_cache))
    if isinstance(cache, (tuple, list)) and len(cache) == n_layers:  # legacy tuple of (k, v)
        return [(k, v) for k, v in cache]
    return None


@dataclass
class _Layer:
    ln1: torch.Tensor
    eps1: float
    projs: list
    o: tuple
    ln2: torch.Tensor
    eps2: float
    gate: tuple
    up: tuple
    down: tuple
    gate_up: tuple | None = None


class FusedDecoder:
    """Greedy decoding of a Llama-style causal LM with a static KV cache and compiled per-layer steps.

    ``FusedDecoder(model, max_len=512).generate(input_ids, max_new_tokens=64)``.
    ``compile=False`` runs the same functions eagerly (for checking). ``kernel``: SDLLM's group products on
    ``"fp32"`` (batched product), ``"int8"`` (the CPU's int8 GEMM) or ``"int4"`` (packed-int4 kernel) for
    every layer; ``None`` (default): per layer, the fastest here that fits it (:func:`int_kernels.choose`).

    ``weight_dtype=torch.float16`` keeps a half-precision copy of every
    projection and of the lm_head for the decode steps (norms, RoPE,
    attention and the residual stream stay in the model's dtype): a decode
    step on a CPU reads every weight once, so it reads half the bytes. This
    is ClusterFusion's own setting (fp16 kernels checked against an fp32
    reference to max-abs 5e-2); the default keeps the model's dtype, whose
    tokens equal transformers' ``generate`` exactly.
    """

    def __init__(self, model: nn.Module, max_len: int = 2048, batch_size: int = 1, compile: bool = True,
                 weight_dtype: torch.dtype | None = None, kernel: str | None = None):
        inner = getattr(model, "model", None)
        layers = getattr(inner, "layers", None)
        if layers is None or not hasattr(model, "lm_head") or not hasattr(layers[0], "self_attn"):
            raise ZooError(f"fused decode supports Llama / Qwen2-style causal LMs (model.model.layers, lm_head), not {type(model).__name__}")
        if any(hasattr(layer.self_attn, "spiking") for layer in layers):
            raise ZooError("fused decode does not implement spiking attention (SDLLMConfig(spiking_attention=True)); "
                           "decode such a model with its own generate()")
        cfg = model.config
        self.model = model.eval()
        self.n_heads = cfg.num_attention_heads
        self.n_kv = getattr(cfg, "num_key_value_heads", None) or self.n_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.n_heads
        self.max_len = int(max_len)
        self.batch_size = int(batch_size)
        param = next(model.parameters())
        self.device, self.dtype = param.device, param.dtype
        self.layers = []
        with torch.no_grad():
            for layer in layers:
                att, mlp = layer.self_attn, layer.mlp
                P = lambda m: _proj(m, kernel)  # noqa: E731
                q, k, v = P(att.q_proj), P(att.k_proj), P(att.v_proj)
                qkv = _merge([q, k, v])
                projs = [q, k, v] if qkv is None else [qkv]
                self.layers.append(_Layer(
                    ln1=layer.input_layernorm.weight, eps1=float(layer.input_layernorm.variance_epsilon), projs=projs,
                    o=P(att.o_proj), ln2=layer.post_attention_layernorm.weight,
                    eps2=float(layer.post_attention_layernorm.variance_epsilon),
                    gate=P(mlp.gate_proj), up=P(mlp.up_proj), down=P(mlp.down_proj)))
                self.layers[-1].gate_up = _merge([self.layers[-1].gate, self.layers[-1].up])
            head = model.lm_head
            self.lm_w, self.lm_b = head.weight, head.bias
            if weight_dtype is not None and weight_dtype != self.dtype:
                def cast(t):  # SDLLM's exact (codes, scales) stay as they are
                    return t if t is None or isinstance(t, tuple) else t.detach().to(weight_dtype).contiguous()

                def cast_proj(p):
                    return None if p is None else (cast(p[0]), cast(p[1]), *p[2:])

                for L in self.layers:
                    L.projs = [cast_proj(p) for p in L.projs]
                    L.o, L.gate, L.up, L.down, L.gate_up = map(cast_proj, (L.o, L.gate, L.up, L.down, L.gate_up))
                self.lm_w, self.lm_b = cast(self.lm_w), cast(self.lm_b)
            self.weight_dtype = weight_dtype or self.dtype
            positions = torch.arange(self.max_len, device=self.device)[None]
            dummy = torch.zeros(1, device=self.device, dtype=self.dtype)
            cos, sin = inner.rotary_emb(dummy, positions)
            self.cos, self.sin = cos[0].contiguous(), sin[0].contiguous()
        shape = (self.batch_size, self.n_kv, self.max_len, self.head_dim)  # one preallocated buffer per layer
        self.k_cache = [torch.zeros(shape, device=self.device, dtype=self.dtype) for _ in self.layers]
        self.v_cache = [torch.zeros(shape, device=self.device, dtype=self.dtype) for _ in self.layers]
        self.pos = 0
        # the prefill's head at the last position only (transformers' logits_to_keep, where the model takes it)
        self._keep_last = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}
        self._layer = torch.compile(layer_step, dynamic=False) if compile else layer_step
        self._head = torch.compile(head_step, dynamic=False) if compile else head_step

    def reset(self) -> None:
        self.pos = 0
        for c in self.k_cache + self.v_cache:
            c.zero_()

    @torch.no_grad()
    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Feed one token per sequence (``[B]``); return the next-token logits ``[B, vocab]``."""
        if self.pos >= self.max_len:
            raise ZooError(f"the static KV cache is full ({self.max_len} tokens); build FusedDecoder with a larger max_len")
        inner = self.model.model
        residual = inner.embed_tokens(tokens.to(self.device))
        delta = torch.zeros_like(residual)
        pos = torch.tensor([self.pos], device=self.device)
        for i, L in enumerate(self.layers):
            residual, delta = self._layer(residual, delta, L, self.cos, self.sin, pos, self.k_cache[i], self.v_cache[i],
                                          self.n_heads, self.n_kv, self.head_dim)
        self.pos += 1
        return self._head(residual, delta, inner.norm.weight, float(inner.norm.variance_epsilon), self.lm_w, self.lm_b)

    @torch.no_grad()
    def prefill(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Run the prompt ``[B, P]`` in one batched forward of the model, copy its keys and values into the
        static cache, and return the last position's logits ``[B, vocab]``. Falls back to feeding the prompt
        token by token through :meth:`step` when the model's cache layout is not recognised."""
        P = input_ids.shape[1]
        out = self.model(input_ids=input_ids.to(self.device), use_cache=True, **self._keep_last)
        kv = _cache_tensors(getattr(out, "past_key_values", None), len(self.layers))
        if kv is None:
            self.reset()
            logits = None
            for t in range(P):
                logits = self.step(input_ids[:, t])
            return logits
        for i, (k, v) in enumerate(kv):
            self.k_cache[i][:, :, :P] = k
            self.v_cache[i][:, :, :P] = v
        self.pos = P
        return out.logits[:, -1].float()

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, max_new_tokens: int = 64, return_logits: bool = False):
        """Greedy decoding: ``[B, P]`` prompt -> ``[B, P + max_new_tokens]`` (no early stop at EOS); with
        ``return_logits``, also the logits each new token was chosen from, ``[B, max_new_tokens, vocab]``."""
        if input_ids.ndim != 2 or input_ids.shape[0] != self.batch_size:
            raise ZooError(f"input_ids must be [{self.batch_size}, P], got {list(input_ids.shape)}")
        if input_ids.shape[1] + max_new_tokens > self.max_len:
            raise ZooError(f"prompt + new tokens ({input_ids.shape[1] + max_new_tokens}) exceed max_len={self.max_len}")
        self.reset()
        logits = self.prefill(input_ids)
        out = [input_ids.to(self.device)]
        seen = []
        for i in range(max_new_tokens):
            nxt = logits.argmax(-1)
            out.append(nxt[:, None])
            if return_logits:
                seen.append(logits)
            if i + 1 < max_new_tokens:
                logits = self.step(nxt)
        tokens = torch.cat(out, 1)
        return (tokens, torch.stack(seen, 1)) if return_logits else tokens
