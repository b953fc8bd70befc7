"""SDLLM model builders: a local Hugging Face model directory in, a cached spike-driven model out.

``zoo.load("sdllm-llama2-7b", pretrained=False, base="/models/Llama-2-7b-hf")``

1. The base model and tokenizer are read from ``base`` (a directory written
   by ``save_pretrained``). Without ``base``, the model's Hugging Face repo is
   looked up in the local Hugging Face cache, then downloaded unless
   ``ZOO_OFFLINE`` / ``HF_HUB_OFFLINE`` is set; if neither works, a one-line
   error says to pass ``base=PATH``.
2. The cache key is the sha256 of the model name, the conversion settings,
   the calibration spec and the base directory's ``config.json`` plus the
   names, sizes and modification times of its weight files (hashing tens of
   GB of weights on every load would cost more than it saves).
3. A converted model is cached as ``<zoo cache>/language/<name>-<key>.safetensors``
   (int4 codes + scales, see :func:`tasks.language.sdllm.pack_state`) with its
   sha256 in ``.sha256`` beside it. A later load with the same key verifies the
   sha256 and rebuilds the skeleton from the base's ``config.json`` (no base
   weights read, no calibration); a corrupt file is reported, deleted and
   rebuilt by converting again.
4. A base larger than memory converts block by block (``layerwise``,
   :mod:`tasks.language.layerwise`) into the same cache file, then loads from it.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path

import torch

from zoo import hub
from zoo.checkpoint import save_safetensors
from zoo.fileio import atomic_write_text
from zoo.errors import WeightsError, ZooError

from .sdllm import SDLLMConfig, convert, replace_structure, unpack_state, pack_state

__all__ = ["build_sdllm", "load_base", "resolve_base", "calibration_from_tokenizer", "CACHE_SUBDIR"]

CACHE_SUBDIR = "language"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
DEFAULT_CALIB = dict(samples=128, seq_len=2048, seed=0)  # SpikeLLM / GPTQ convention: 128 x 2048 tokens
_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float16": torch.float16, "fp16": torch.float16, "float64": torch.float64}


def _require_transformers():
    try:
        import transformers  # noqa: F401
    except ImportError:
        raise ZooError("SDLLM needs transformers: in the zoo's clone run pip install -e '.[language]'") from None
    return transformers


def resolve_base(name: str, base: str | os.PathLike | None, hf_repo: str | None) -> Path:
    """The local directory of the base model: ``base``, else ``hf_repo`` from the Hugging Face cache or hub.

    ``hf_repo = "zoo:KEY"`` names a model directory shipped with the zoo (manifest entry ``KEY``, its
    weights file sha256-checked on every load)."""
    if base is None and hf_repo is not None and hf_repo.startswith("zoo:"):
        return hub.fetch(hf_repo[4:]).parent
    if base is not None:
        path = Path(base).expanduser()
        if not (path / "config.json").is_file():
            raise ZooError(f"base={str(base)!r} is not a Hugging Face model directory (no config.json); "
                           "pass the folder written by save_pretrained / huggingface-cli download")
        return path
    hint = f"pass base=PATH (a local Hugging Face directory of {hf_repo or 'the base model'}; CLI: --base PATH)"
    if hf_repo is None:
        raise ZooError(f"{name} needs its base model: {hint}")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise ZooError(f"{name}: huggingface_hub is not installed; {hint}") from None
    offline = hub.is_offline() or os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
    try:
        return Path(snapshot_download(hf_repo, local_files_only=True))
    except Exception:
        pass
    if offline:
        raise ZooError(f"{name}: {hf_repo} is not in the Hugging Face cache and downloads are off; {hint}")
    try:
        return Path(snapshot_download(hf_repo))
    except Exception as e:
        raise ZooError(f"{name}: could not download {hf_repo} ({type(e).__name__}); {hint}") from None


def _fingerprint(base: Path) -> dict:
    files = sorted(p for p in base.iterdir() if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES))
    return {"config": (base / "config.json").read_text(),
            "weights": [(p.name, p.stat().st_size, int(p.stat().st_mtime)) for p in files]}


def cache_key(name: str, base: Path, config: SDLLMConfig, calib: dict, dtype: str) -> str:
    blob = json.dumps({"name": name, "base": _fingerprint(base), "config": config.to_dict(), "calib": calib,
                       "dtype": dtype, "format": 2}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def load_base(base: Path, dtype: torch.dtype = torch.float32):
    """(model, tokenizer or None) from a local Hugging Face directory."""
    _require_transformers()
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    cfg = AutoConfig.from_pretrained(base)
    try:
        model = AutoModelForCausalLM.from_pretrained(base, dtype=dtype)
    except ValueError:  # not a causal LM (BERT-style encoders)
        model = AutoModel.from_pretrained(base, dtype=dtype)
    except OSError as e:
        raise ZooError(f"cannot read the base model in {base} ({str(e).splitlines()[0]})") from None
    tok = _tokenizer(base)
    del cfg
    return model.eval(), tok


def _skeleton(base: Path, dtype: torch.dtype):
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    cfg = AutoConfig.from_pretrained(base)
    with torch.device("meta"):
        try:
            model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
        except ValueError:
            model = AutoModel.from_config(cfg, dtype=dtype)
    if getattr(cfg, "tie_word_embeddings", False) and hasattr(model, "tie_weights"):
        model.tie_weights()  # before loading: the tied lm_head is then not a tensor of its own
    return model


def calibration_from_tokenizer(tokenizer, texts: list[str] | None, vocab: int, samples: int, seq_len: int, seed: int):
    """Calibration token ids: ``samples`` random windows of ``seq_len`` tokens of ``texts`` (concatenated),
    or, with no texts, random token ids (documented as a fallback: real text calibrates better)."""
    g = torch.Generator().manual_seed(seed)
    if texts and tokenizer is not None:
        ids = tokenizer("\n\n".join(texts), return_tensors="pt")["input_ids"][0]
        if ids.numel() < seq_len:
            raise ZooError(f"the calibration text has {ids.numel()} tokens, fewer than one sequence of "
                           f"calib_seq_len={seq_len}; give a longer calib_file or a smaller calib_seq_len")
        if ids.numel() == seq_len:
            return ids.unsqueeze(0)
        starts = torch.randint(0, ids.numel() - seq_len, (samples,), generator=g)
        return torch.stack([ids[s: s + seq_len] for s in starts.tolist()])
    return torch.randint(0, vocab, (samples, seq_len), generator=g)


def _read_calib_texts(calib_file: str | os.PathLike | None) -> list[str] | None:
    if calib_file is None:
        return None
    path = Path(calib_file)
    if not path.is_file():
        raise ZooError(f"calibration file {path} does not exist")
    return [path.read_text(encoding="utf-8")]


def _verify_cached(path: Path) -> dict | None:
    """The cached model's info (its ``.json``) if the cache entry is whole, else None (it is converted again)."""
    pin, meta = path.with_name(path.name + ".sha256"), path.with_name(path.name + ".json")
    if not pin.exists():
        return None
    try:
        ok = hub.sha256_file(path) == hub.read_pin(pin, path)
        info = json.loads(meta.read_text(encoding="utf-8")) if meta.exists() else {}
        ok = ok and isinstance(info, dict)
    except (WeightsError, OSError, ValueError):  # a damaged pin or info file
        ok = False
    if not ok:
        warnings.warn(f"cached SDLLM model {path} is corrupt (sha256 or info mismatch); converting again", stacklevel=3)
        return None
    return info


def build_sdllm(name: str, hf_repo: str | None, base=None, *, D: int = 7, clip: int | None = None, w_bits: int = 4,
                group_size: int = 128, gamma_rule: str = "mse", calibration=None, calib_file=None,
                calib_samples: int = DEFAULT_CALIB["samples"], calib_seq_len: int = DEFAULT_CALIB["seq_len"],
                dtype: str = "float32", cache: bool = True, calib_device: str | None = None,
                layerwise: bool | None = None, device_map=None, offload_folder=None, max_memory=None, **extra):
    """Build (convert or load from cache) the SDLLM model of ``base``; see the module docstring.

    ``calibration``: token ids ``[N, L]`` or a list of texts; ``calib_file``: a
    text file to draw ``calib_samples`` windows of ``calib_seq_len`` tokens from
    (WikiText-2 train, as SpikeLLM). Neither: random token ids (a fallback; pass
    real text for real accuracy). ``calib_device``: run the conversion there
    (e.g. ``"cuda"``; the model stays there; layer by layer: each block's
    calibration forward runs there). ``layerwise``: convert block by block
    from the safetensors shards (:mod:`tasks.language.layerwise`; the same
    converted model at the memory of a few blocks); ``None``: when the base's
    weights in ``dtype`` exceed ``WHOLE_MODEL_FRACTION`` of the available
    memory. ``device_map`` (``"auto"``, ``"balanced"``, ``"sequential"`` or ``{module: device}``, with
    ``offload_folder`` for ``"disk"`` and ``max_memory``): load the converted model from its cache spread over
    GPUs, CPU memory and disk with accelerate (:mod:`tasks.language.offload`; converted first if not cached).
    Other keywords are :class:`SDLLMConfig` fields.
    """
    _require_transformers()
    if dtype not in _DTYPES:
        raise ZooError(f"dtype must be one of {', '.join(_DTYPES)}, got {dtype!r}")
    config = SDLLMConfig(D=D, clip=clip, w_bits=w_bits, group_size=group_size, gamma_rule=gamma_rule,
                         calib_seq_len=calib_seq_len, **extra)
    path_base = resolve_base(name, base, hf_repo)
    torch_dtype = _DTYPES[dtype]
    if isinstance(calibration, torch.Tensor):
        calib_spec = {"ids_sha256": hashlib.sha256(calibration.long().numpy().tobytes()).hexdigest()}
    elif calibration is not None:
        calib_spec = {"texts_sha256": hashlib.sha256("\x00".join(map(str, calibration)).encode()).hexdigest()}
    else:
        texts = _read_calib_texts(calib_file)
        calib_spec = {"file_sha256": hashlib.sha256(texts[0].encode()).hexdigest() if texts else None,
                      "samples": calib_samples, "seq_len": calib_seq_len, "seed": config.seed}
    key = cache_key(name, path_base, config, calib_spec, dtype)
    cached = hub.cache_dir() / CACHE_SUBDIR / f"{name}-{key}.safetensors"

    placement = None  # device_map: where the converted model is loaded from its cache file (tasks.language.offload)
    if device_map is not None:
        from .offload import require_accelerate

        require_accelerate()  # before converting, not after
        if not cache:
            raise ZooError("device_map loads the converted model from its cache file: drop cache=False")
        placement = dict(device_map=device_map, offload_folder=offload_folder, max_memory=max_memory)

    meta = _verify_cached(cached) if cache and cached.exists() else None
    if meta is not None:
        model = _load_cached(path_base, config, torch_dtype, cached, placement)
        model.sdllm = {**meta, "cache": str(cached), "from_cache": True}
        return model.eval()

    if _use_layerwise(layerwise, path_base, torch_dtype, config):
        return _build_layerwise(name, path_base, config, torch_dtype, key, cached if cache else None, calibration,
                                calib_file, calib_samples, calib_seq_len, calib_device, placement)
    model, tok = load_base(path_base, torch_dtype)
    if calib_device is not None:
        model.to(calib_device)
    if calibration is None:
        vocab = model.get_input_embeddings().num_embeddings
        calibration = calibration_from_tokenizer(tok, _read_calib_texts(calib_file), vocab, calib_samples,
                                                 calib_seq_len, config.seed)
        tokenizer = None
    else:
        tokenizer = tok if not isinstance(calibration, torch.Tensor) else None
    convert(model, calibration, config, tokenizer=tokenizer)
    if tok is not None and len(tok) > model.get_input_embeddings().num_embeddings:
        raise ZooError(f"tokenizer mismatch in {path_base}: {len(tok)} tokens vs embedding "
                       f"{model.get_input_embeddings().num_embeddings}")
    info = {"config": model.sdllm["config"], "gammas": model.sdllm["gammas"], "base": str(path_base), "key": key}
    if cache:
        cached.parent.mkdir(parents=True, exist_ok=True)
        save_safetensors(pack_state(model), cached, metadata={"model": name, "key": key})
        atomic_write_text(cached.with_name(cached.name + ".json"), json.dumps(info, indent=1))
        atomic_write_text(cached.with_name(cached.name + ".sha256"), hub.sha256_file(cached) + "\n")  # last: the seal
    if placement is not None:  # converted whole in memory; placed from the cache just written
        del model
        model = _load_cached(path_base, config, torch_dtype, cached, placement)
    model.sdllm = {**info, "cache": str(cached) if cache else None, "from_cache": False, "layerwise": False}
    return model.eval()


def _load_cached(path_base: Path, config: SDLLMConfig, torch_dtype: torch.dtype, cached: Path, placement=None):
    """The converted model from its cache file: a skeleton from ``config.json``, the packed state loaded into it;
    with ``placement`` (``device_map``, ``offload_folder``, ``max_memory``) tensor by tensor onto its devices."""
    from safetensors.torch import load_file

    if placement is not None:
        from .offload import load_dispatched

        skeleton = _skeleton(path_base, torch_dtype)
        replace_structure(skeleton, config)
        return load_dispatched(skeleton, cached, dtype=torch_dtype, **placement)

    try:
        state = load_file(str(cached))
    except Exception as e:
        raise WeightsError(f"{cached} cannot be read ({e}); delete it") from None
    model = _skeleton(path_base, torch_dtype)
    replace_structure(model, config)
    model.to_empty(device="cpu")
    if getattr(model.config, "tie_word_embeddings", False) and hasattr(model, "tie_weights"):
        model.tie_weights()  # to_empty (meta -> cpu) gives tied parameters separate storage
    unpack_state(model, state)
    return model


def _use_layerwise(option, path_base: Path, torch_dtype: torch.dtype, config: SDLLMConfig) -> bool:
    """``layerwise=True`` / ``False`` as given; ``None`` (auto): layer by layer when the base is a safetensors
    checkpoint of a supported decoder whose weights in ``dtype`` exceed ``WHOLE_MODEL_FRACTION`` of the available
    memory (the whole-model path peaks near twice the weights)."""
    from . import layerwise as lw

    if option is not None:
        if option not in (True, False):
            raise ZooError(f"layerwise must be True, False or None (auto), got {option!r}")
        return bool(option)
    files = lw.checkpoint_files(path_base)
    free = lw.available_memory()
    if files is None or free is None:
        return False
    need = lw.checkpoint_params(files) * torch.empty((), dtype=torch_dtype).element_size()
    if need <= lw.WHOLE_MODEL_FRACTION * free:
        return False
    reason = lw.layerwise_reason(_skeleton(path_base, torch_dtype), config)
    if reason is not None:
        warnings.warn(f"the base in {path_base} ({need / 2**30:.1f} GiB in {torch_dtype}) may not fit in memory, but "
                      f"it cannot be converted layer by layer ({reason}); converting the whole model", stacklevel=4)
        return False
    return True


def _build_layerwise(name, path_base, config, torch_dtype, key, cached, calibration, calib_file, calib_samples,
                     calib_seq_len, calib_device, placement=None):
    """Convert block by block (:mod:`tasks.language.layerwise`) into the cache file, then load it from there."""
    from transformers import AutoConfig

    from .layerwise import convert_checkpoint

    tok = _tokenizer(path_base)
    vocab = AutoConfig.from_pretrained(path_base).get_text_config().vocab_size
    if tok is not None and len(tok) > vocab:
        raise ZooError(f"tokenizer mismatch in {path_base}: {len(tok)} tokens vs embedding {vocab}")
    tokenizer = None
    if calibration is None:
        calibration = calibration_from_tokenizer(tok, _read_calib_texts(calib_file), vocab, calib_samples,
                                                 calib_seq_len, config.seed)
    elif not isinstance(calibration, torch.Tensor):
        tokenizer = tok
    scratch = hub.cache_dir() / CACHE_SUBDIR / f".{name}-{key}-{os.getpid()}.safetensors"  # cache=False: deleted after
    target = cached if cached is not None else scratch
    info = convert_checkpoint(path_base, target, config, calibration, tokenizer=tokenizer, dtype=torch_dtype,
                              metadata={"model": name, "key": key}, device=calib_device)
    info = {"config": info["config"], "gammas": info["gammas"], "base": str(path_base), "key": key}
    try:
        if cached is not None:
            atomic_write_text(cached.with_name(cached.name + ".json"), json.dumps(info, indent=1))
            atomic_write_text(cached.with_name(cached.name + ".sha256"), hub.sha256_file(cached) + "\n")  # the seal
        model = _load_cached(path_base, config, torch_dtype, target, placement)
    finally:
        if cached is None:
            target.unlink(missing_ok=True)
    model.sdllm = {**info, "cache": str(cached) if cached is not None else None, "from_cache": False, "layerwise": True}
    return model.eval()


def _tokenizer(path: Path):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path)
    except Exception:
        return None
