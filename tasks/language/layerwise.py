"""Layer-by-layer SDLLM conversion: bases larger than memory (13B / 14B fp16 on a 24 GB machine).

:func:`convert_checkpoint` gives the same converted model as :func:`tasks.language.sdllm.convert` on the
whole base (same tensors, bit for bit: tested), but never holds more than one decoder block's weights:

1. the skeleton is built on the ``meta`` device from ``config.json`` (no weights); only the parts outside
   the blocks (embedding, final norm, ``lm_head``, the rotary tables) are read and kept;
2. the calibration hidden states entering block 0 are captured by a probe in place of the blocks
   (GPTQ's "Catcher"), and kept between blocks: one ``[N, L, hidden]`` tensor set, each batch replaced by
   its block output;
3. block by block: its tensors are read from the safetensors shards (``safe_open``, the shard closed
   afterwards), the rotation folded into it (:func:`tasks.language.rotation.rotate_block`: the residual
   rotation is exact block by block, so nothing of the whole model is needed), the calibration batches run
   through it with the same recorders as the whole-model pass (gamma statistics, GPTQ Hessians), its linears
   quantised, its packed state appended to the cache file's data, and the block dropped back to ``meta``.
   The block's mask and rotary inputs come from the model's own forward (the probe), so they are exactly
   those of the whole-model pass;
4. the cache file (one safetensors file, as :func:`tasks.language.build.build_sdllm` writes it) is assembled
   by streaming the data behind its header.

The whole-model pass samples every layer's activations with one shared random generator, in the order
batch, layer, linear. The draws only depend on shapes, so the generator state of each draw is computed
beforehand (:func:`_draw_states`) and replayed: the sampled values, hence the gammas, are the same.

Not supported (one line each, ``layerwise=False`` converts the whole model): spiking attention (its
gammas are calibrated on the converted model's own forward), models that are not Llama / Qwen2-style
decoders, checkpoints without safetensors.

Peak memory (:func:`peak_estimate`): the parts outside the blocks + the calibration hidden states + about two
blocks (the full-precision one and its converted copy) + one batch's activations in one block + the
rotation's float64 temporaries; it does not grow with the number of layers (tested under a cap).

Source of the method: Frantar et al., "GPTQ" (ICLR 2023), reference code's sequential per-layer
quantisation (inputs of the first layer caught, hidden states passed from block to block); safetensors'
``safe_open`` (lazy, per-tensor reads).
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import tempfile
from pathlib import Path

import torch
from torch import nn

from zoo.errors import ZooError

from .rotation import HadamardLinear, foldable, rotate_block, rotate_ends, rotate_structure, rotation_matrices
from .sdllm import (SDLLMConfig, _Stats, _block_lists, calibration_batches, calibration_site, choose_gamma,
                    find_targets, install_linears, pack_state, record_input)

__all__ = ["convert_checkpoint", "checkpoint_files", "checkpoint_params", "layerwise_reason", "available_memory",
           "peak_estimate", "WHOLE_MODEL_FRACTION"]

SAFE_INDEX = "model.safetensors.index.json"
SAFE_SINGLE = "model.safetensors"
WHOLE_MODEL_FRACTION = 0.4  # auto mode: layer by layer when the base's weights exceed this share of free memory
_ST_DTYPES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
              torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
              torch.bool: "BOOL"}


# ----------------------------------------------------------------------------------------------- the checkpoint

def checkpoint_files(base: Path) -> dict[str, Path] | None:
    """Tensor name -> safetensors file of a Hugging Face directory (sharded with ``model.safetensors.index.json``
    or one ``model.safetensors``); ``None`` without safetensors."""
    from safetensors import safe_open

    base = Path(base)
    index = base / SAFE_INDEX
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (ValueError, KeyError, TypeError):
            raise ZooError(f"{index} is not a safetensors index (no weight_map); "
                           "repair or re-download the base") from None
        return {k: base / v for k, v in weight_map.items()}
    single = base / SAFE_SINGLE
    if single.is_file():
        with safe_open(str(single), "pt") as f:
            return {k: single for k in f.keys()}
    return None


def checkpoint_params(files: dict[str, Path]) -> int:
    """Number of values in the checkpoint (headers only)."""
    from safetensors import safe_open

    total = 0
    for file in sorted(set(files.values())):
        with safe_open(str(file), "pt") as f:
            for k in f.keys():
                n = 1
                for d in f.get_slice(k).get_shape():
                    n *= d
                total += n
    return total


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation (``MemAvailable`` of ``/proc/meminfo``), or None."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _read(files: dict[str, Path], names: list[str], dtype: torch.dtype, base) -> dict[str, torch.Tensor]:
    """The named tensors, floating ones cast to ``dtype`` (as ``from_pretrained(dtype=)``); each shard closed after."""
    from safetensors import safe_open

    missing = [n for n in names if n not in files]
    if missing:
        raise ZooError(f"the safetensors checkpoint in {base} has no tensor {missing[0]}; convert with layerwise=False")
    by_file: dict[Path, list[str]] = {}
    for n in names:
        by_file.setdefault(files[n], []).append(n)
    out = {}
    for file, keys in by_file.items():
        with safe_open(str(file), "pt", device="cpu") as f:
            for k in keys:
                t = f.get_tensor(k)
                out[k] = t.to(dtype) if t.is_floating_point() else t
    return out


def _assign(root: nn.Module, name: str, value: torch.Tensor) -> None:
    parent, _, leaf = name.rpartition(".")
    owner = root.get_submodule(parent) if parent else root
    old = getattr(owner, leaf)
    if tuple(old.shape) != tuple(value.shape):
        raise ZooError(f"checkpoint tensor {name} has shape {list(value.shape)}, config.json says {list(old.shape)}")
    setattr(owner, leaf, nn.Parameter(value, requires_grad=old.requires_grad))


def _checkpoint_name(root: nn.Module, name: str) -> str:
    """The checkpoint's name of parameter ``name``: without the ``.linear`` of a :class:`HadamardLinear` wrapper."""
    out, m = [], root
    for part in name.split("."):
        if not (isinstance(m, HadamardLinear) and part == "linear"):
            out.append(part)
        m = m._modules.get(part, m)
    return ".".join(out)


# ----------------------------------------------------------------------------------------------- structure

def layerwise_reason(model: nn.Module, config: SDLLMConfig) -> str | None:
    """``None`` if ``model`` (a skeleton) converts layer by layer with ``config``, else why not."""
    if config.spiking_attention:
        return "spiking attention is calibrated on the converted model's own forward"
    inner = getattr(model, "model", None)
    if not all(hasattr(inner, a) for a in ("layers", "embed_tokens", "norm")) or not hasattr(model, "lm_head"):
        return f"{type(model).__name__} is not a Llama / Qwen2-style decoder (model.layers, model.norm, lm_head)"
    if [p for p, _ in _block_lists(model)] != ["model.layers"]:
        return f"{type(model).__name__} has linears outside model.layers"
    if any(True for _ in inner.layers[0].buffers()):
        return f"{type(model).__name__}'s blocks hold buffers"
    if config.rotate and foldable(model) is not None:
        return foldable(model)
    return None


class _Caught(Exception):
    def __init__(self, hidden, kwargs):
        super().__init__("caught")
        self.hidden, self.kwargs = hidden, kwargs


class _Probe(nn.Module):
    """Stands in for block ``index`` of ``target``'s forward: raises with its inputs, or passes them on."""

    def __init__(self, index: int, target: int):
        super().__init__()
        self.index, self.target = index, target

    def forward(self, hidden_states, *args, **kwargs):
        if self.index == self.target:
            raise _Caught(hidden_states, kwargs)
        return hidden_states


def _block_inputs(model: nn.Module, target: int, **inputs):
    """``(hidden_states, kwargs)`` the model's forward passes to block ``target`` (mask, rotary tables, ...)."""
    layers = model.model.layers
    kept = list(layers)
    for i in range(target + 1):
        layers[i] = _Probe(i, target)
    try:
        model(**inputs, use_cache=False)
    except _Caught as c:
        return c.hidden, c.kwargs
    finally:
        for i in range(target + 1):
            layers[i] = kept[i]
    raise ZooError(f"{type(model).__name__}'s forward never reached block {target}")


def _rebuild_buffers(model: nn.Module, prefix: str) -> None:
    """Non-persistent buffers outside the blocks (rotary tables), computed again as the module's constructor does."""
    for name, m in model.named_modules():
        if name.startswith(prefix):
            continue
        metas = [b for b, t in m.named_buffers(recurse=False) if t.is_meta]
        if not metas:
            continue
        try:
            fresh = type(m)(config=getattr(m, "config", model.config))
        except TypeError:
            raise ZooError(f"cannot rebuild the buffers of {name or 'the model'} ({type(m).__name__}) for "
                           "layer-by-layer conversion; pass layerwise=False") from None
        for b in metas:
            m._buffers[b] = fresh._buffers[b].to(m._buffers[b].dtype)


# ----------------------------------------------------------------------------------------------- sampling

class _ReplayStats(_Stats):
    """:class:`_Stats` whose draws use generator states computed beforehand (:func:`_draw_states`)."""

    def __init__(self, keep: int, states: list):
        super().__init__(keep, torch.Generator())
        self._states = list(states)

    def update(self, x: torch.Tensor) -> None:
        if x.numel() and self.kept < self.keep:
            self.gen.set_state(self._states.pop(0))
        super().update(x)


def _draw_states(rows: list[int], n_layers: int, order: list[tuple[str, int]], prefix: str, names: set[str],
                 keep: int, seed: int) -> dict[str, list]:
    """The generator state before each sampling draw of the whole-model pass (order: batch, layer, linear),
    per layer name; ``rows``: tokens per batch, ``order``: (name in the block, input width) as they run."""
    gen = torch.Generator().manual_seed(seed)
    states: dict[str, list] = {n: [] for n in names}
    kept: dict[str, int] = {}
    for r in rows:
        for i in range(n_layers):
            for rel, width in order:
                name = f"{prefix}.{i}.{rel}"
                numel, k = r * width, kept.get(name, 0)
                if name in states and numel and k < keep:
                    states[name].append(gen.get_state())
                    n = min(keep - k, numel)
                    torch.randint(0, numel, (n,), generator=gen)
                    kept[name] = k + n
    return states


# ----------------------------------------------------------------------------------------------- output

class _StreamWriter:
    """A safetensors file written tensor by tensor: data appended to a temporary file, the header put in front
    at the end."""

    def __init__(self, folder: Path):
        folder.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=folder, prefix=".layerwise-", suffix=".data")
        self.path = Path(name)
        self.data = os.fdopen(fd, "wb")
        self.entries: dict[str, dict] = {}
        self.offset = 0

    def add(self, state: dict[str, torch.Tensor]) -> None:
        for name, t in state.items():
            t = t.detach().cpu().contiguous()
            if t.dtype not in _ST_DTYPES:
                raise ZooError(f"tensor {name} has dtype {t.dtype}, which safetensors cannot store")
            raw = t.reshape(-1).view(torch.uint8).numpy()
            self.data.write(raw.data)
            self.entries[name] = {"dtype": _ST_DTYPES[t.dtype], "shape": list(t.shape),
                                  "data_offsets": [self.offset, self.offset + raw.nbytes]}
            self.offset += raw.nbytes

    def finish(self, path: Path, metadata: dict | None) -> Path:
        from zoo.fileio import atomic_path

        self.data.close()
        header = {"__metadata__": {str(k): str(v) for k, v in (metadata or {}).items()}, **self.entries}
        blob = json.dumps(header, separators=(",", ":")).encode()
        blob += b" " * (-len(blob) % 8)
        try:
            with atomic_path(path) as tmp, open(tmp, "wb") as out, open(self.path, "rb") as data:
                out.write(struct.pack("<Q", len(blob)))
                out.write(blob)
                shutil.copyfileobj(data, out, 1 << 24)
        finally:
            self.path.unlink(missing_ok=True)
        return path

    def discard(self) -> None:
        self.data.close()
        self.path.unlink(missing_ok=True)


# ----------------------------------------------------------------------------------------------- conversion

def _load_block(model: nn.Module, prefix: str, i: int, files, dtype, base) -> nn.Module:
    block = model.get_submodule(prefix)[i]
    params = [n for n, _ in block.named_parameters()]
    names = {n: f"{prefix}.{i}." + _checkpoint_name(block, n) for n in params}
    values = _read(files, list(names.values()), dtype, base)
    for n in params:
        _assign(block, n, values.pop(names[n]))
    return block


@torch.no_grad()
def convert_checkpoint(base: Path, out: Path, config: SDLLMConfig, calibration, tokenizer=None,
                       dtype: torch.dtype = torch.float32, metadata: dict | None = None, device=None) -> dict:
    """Convert the safetensors base in ``base`` block by block into the cache file ``out``; return the info
    (``config``, ``layers``, ``gammas``, ``rotation``) that :func:`~tasks.language.sdllm.convert` keeps in
    ``model.sdllm``. ``device``: run the blocks' calibration forward there (weights are folded and quantised
    on the CPU)."""
    from .build import _skeleton

    base = Path(base)
    files = checkpoint_files(base)
    if files is None:
        raise ZooError(f"layer-by-layer conversion reads safetensors, and {base} has none "
                       f"({SAFE_SINGLE} or {SAFE_INDEX}); pass layerwise=False")
    model = _skeleton(base, dtype).eval()
    reason = layerwise_reason(model, config)
    if reason is not None:
        raise ZooError(f"cannot convert {base} layer by layer: {reason}; pass layerwise=False")
    prefix = "model.layers"
    layers = model.model.layers
    text_cfg = model.config.get_text_config()
    tied = bool(getattr(text_cfg, "tie_word_embeddings", False))
    emb = model.get_input_embeddings()
    emb_name = next(n for n, p in model.named_parameters(remove_duplicate=False) if p is emb.weight)
    find_targets(model, config.targets)  # an unsupported model fails before anything is read
    batches = calibration_batches(calibration, model, tokenizer, config)

    rotation = None
    if config.rotate:
        rotate_structure(model)  # unties lm_head, wraps down_proj (as the whole-model rotate)
    ends = [n for n, _ in model.named_parameters(remove_duplicate=False) if not n.startswith(prefix + ".")]
    load = [n for n in ends if not (tied and n == "lm_head.weight")]
    values = _read(files, load, dtype, base)
    for n in load:
        _assign(model, n, values.pop(n))
    if tied and "lm_head.weight" in ends:
        if config.rotate:  # untied by the rotation: a copy of the embedding
            _assign(model, "lm_head.weight", model.get_input_embeddings().weight.detach().clone())
        else:
            model.lm_head.weight = model.get_input_embeddings().weight
    _rebuild_buffers(model, prefix + ".")
    Q = head_dim = None
    if config.rotate:
        Q, head_dim = rotation_matrices(model.config, config.seed)
        rotate_ends(model, Q)
        rotation = "residual"

    all_sites = find_targets(model)
    names = find_targets(model, config.targets)
    hidden = [_block_inputs(model, 0, input_ids=ids)[0].cpu() for ids in batches]
    gammas: dict[str, float] = {}
    writer = _StreamWriter(Path(out).parent)
    try:
        states = None
        for i in range(len(layers)):
            block = _load_block(model, prefix, i, files, dtype, base)
            if Q is not None:
                rotate_block(block, Q, head_dim)
            if device is not None:
                block.to(device)
            mine = [n for n in names if n.startswith(f"{prefix}.{i}.")]
            if states is None:  # the order the block's linears run in, from one forward of block 0
                order = _site_order(model, block, [n for n in all_sites if n.startswith(f"{prefix}.0.")],
                                    hidden[0], device)
                states = _draw_states([int(ids.numel()) for ids in batches], len(layers), order, prefix,
                                      set(names), config.samples_per_layer, config.seed)
            stats = {n: _ReplayStats(config.samples_per_layer, states.pop(n)) for n in mine}
            hessians = {} if config.gptq and config.w_bits else None
            hooks = [calibration_site(model, n).register_forward_pre_hook(
                lambda m, args, s=stats[n], n=n: record_input(args[0], s, n, hessians, config)) for n in mine]
            try:
                for b, h in enumerate(hidden):
                    hidden[b] = _run_block(model, block, i, h, device)
            finally:
                for hook in hooks:
                    hook.remove()
            block.cpu()
            for n in mine:
                gammas[n] = choose_gamma(stats.pop(n), config)
            if hessians:
                hessians = {n: (h.cpu(), rows) for n, (h, rows) in hessians.items()}
            install_linears(model, mine, gammas, hessians, config)
            writer.add({f"{prefix}.{i}.{k}": v for k, v in pack_state(layers[i]).items()})
            layers[i] = layers[i].to("meta")  # frees the block
        state = {}
        for name, t in list(model.named_parameters()) + list(model.named_buffers()):
            if not name.startswith(prefix + "."):
                state[name] = t.detach().cpu()
        writer.add(state)
        writer.finish(Path(out), metadata)
    except BaseException:
        writer.discard()
        raise
    return {"config": config.to_dict(), "layers": names, "gammas": {n: gammas[n] for n in names},
            "rotation": rotation}


def _run_block(model: nn.Module, block: nn.Module, i: int, h: torch.Tensor, device) -> torch.Tensor:
    x = h if device is None else h.to(device)
    _, kwargs = _block_inputs(model, i, inputs_embeds=x)
    out = block(x, **kwargs)
    return (out[0] if isinstance(out, tuple) else out).cpu()


def _site_order(model: nn.Module, block: nn.Module, sites: list[str], h: torch.Tensor, device) -> list[tuple[str, int]]:
    """(name in the block, input width) of block 0's linears in the order its forward runs them."""
    cut = len("model.layers.0.")
    seen: list[tuple[str, int]] = []
    hooks = [calibration_site(model, n).register_forward_pre_hook(
        lambda m, args, n=n: seen.append((n[cut:], int(args[0].shape[-1])))) for n in sites]
    try:
        _run_block(model, block, 0, h, device)
    finally:
        for hook in hooks:
            hook.remove()
    if len({n for n, _ in seen}) != len(seen) or len(seen) != len(sites):
        raise ZooError("a block calls its linears other than once each; convert with layerwise=False")
    return seen


# ----------------------------------------------------------------------------------------------- memory

def peak_estimate(cfg, samples: int, seq_len: int, calib_batch: int = 4, dtype_bytes: int = 4, rotate: bool = True,
                  gptq: bool = False) -> dict[str, int]:
    """Bytes of the largest parts alive at once while a Llama / Qwen2 config converts layer by layer (computed,
    not measured): ``ends`` (embedding + lm_head + norms), ``start`` (``ends`` + the rotation of the embedding
    and lm_head, float64), ``hidden`` (calibration hidden states), ``blocks`` (one block + its converted copy),
    ``activations`` (one batch through one block: q/k/v/o and four MLP-wide tensors; attention by SDPA's flash
    kernel, no L x L scores), ``rotation`` (float64: the dense block-diagonal Hadamard of the MLP width and two
    copies of ``down_proj``), ``gptq`` (float64 Hessians of one block), and ``total``: the larger of ``start`` and
    the block phase ``ends + hidden + blocks + max(activations, rotation) + gptq``."""
    h, f, v = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size
    heads = cfg.num_attention_heads
    kv = getattr(cfg, "num_key_value_heads", None) or heads
    hd = getattr(cfg, "head_dim", None) or h // heads
    block = h * heads * hd * 2 + h * kv * hd * 2 + 3 * h * f + 2 * h
    tokens = calib_batch * seq_len
    parts = {
        "ends": (2 * v * h + h) * dtype_bytes,
        "hidden": samples * seq_len * h * dtype_bytes,
        "blocks": 2 * block * dtype_bytes,
        "activations": tokens * (4 * h + 4 * f) * dtype_bytes,
        "rotation": (f * f + 2 * h * f) * 8 if rotate else 0,
        "gptq": (6 * h * h + f * f) * 8 if gptq else 0,
    }
    parts["start"] = parts["ends"] + (2 * v * h * 8 if rotate else 0)
    steady = (parts["ends"] + parts["hidden"] + parts["blocks"] + max(parts["activations"], parts["rotation"])
              + parts["gptq"])
    parts["total"] = max(parts["start"], steady)
    return parts
