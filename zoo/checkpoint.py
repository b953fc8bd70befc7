"""Reading checkpoints safely: nothing in a weights file can run code.

* safetensors files are read with ``safetensors``;
* torch files with ``torch.load(weights_only=True)``;
* checkpoints that pickle whole modules (ultralytics, as SpikeYOLO and TDE
  release them) with :class:`StubUnpickler`: tensors are rebuilt with torch's
  own functions, and every class from an official code base becomes an inert
  :class:`Stub` that only records its pickled state. No official code is
  imported or run; any other callable is refused.
"""

from __future__ import annotations

import codecs
import collections
import pickle
import types
import zipfile
from pathlib import Path

import torch

from .errors import WeightsError

# classes from these code bases are rebuilt as inert stubs (never imported)
STUB_PREFIXES = (
    "ultralytics.", "torch.nn.modules.", "spikingjelly.", "models.", "mmseg.", "mmdet.", "mmengine.",
    "pathlib.", "argparse.Namespace", "types.SimpleNamespace", "__main__.",
)
# real callables a checkpoint may use: all rebuild data, none reaches the system
SAFE_GLOBALS = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set, ("builtins", "frozenset"): frozenset, ("builtins", "slice"): slice,
    ("builtins", "complex"): complex, ("builtins", "bytearray"): bytearray,
    ("_codecs", "encode"): codecs.encode,  # protocol-2 pickles store bytes as latin-1 text
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor"): torch._utils._rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): torch._utils._rebuild_parameter_with_state,
    ("torch.nn.parameter", "Parameter"): torch.nn.Parameter,
    ("torch", "Size"): torch.Size, ("torch", "device"): torch.device,
    ("torch.storage", "UntypedStorage"): torch.UntypedStorage,
}
for _name in ("Float", "Half", "BFloat16", "Double", "Long", "Int", "Short", "Char", "Byte", "Bool"):
    SAFE_GLOBALS[("torch", f"{_name}Storage")] = getattr(torch, f"{_name}Storage")
for _dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64, torch.int32,
               torch.int16, torch.int8, torch.uint8, torch.bool):
    SAFE_GLOBALS[("torch", str(_dtype).split(".")[1])] = _dtype


def _numpy_globals() -> dict:
    import numpy as np

    out = {}
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        out[(mod, "scalar")] = np._core.multiarray.scalar
        out[(mod, "_reconstruct")] = np._core.multiarray._reconstruct
    out[("numpy", "dtype")] = np.dtype
    out[("numpy", "ndarray")] = np.ndarray
    for name in ("Float64DType", "Float32DType", "Int64DType", "Int32DType", "BoolDType"):
        if hasattr(np.dtypes, name):
            out[("numpy.dtypes", name)] = getattr(np.dtypes, name)
    return out


class Stub:
    """An object from an official code base, rebuilt without its code: only its pickled state."""

    _zoo_origin = "?"

    def __init__(self, *args, **kwargs):
        self._zoo_args = args
        if kwargs:
            self.__dict__.update(kwargs)

    def __setstate__(self, state):
        if isinstance(state, tuple) and len(state) == 2:  # (dict state, slot state)
            state = {**(state[0] or {}), **(state[1] or {})}
        if isinstance(state, dict):
            self.__dict__.update(state)
        else:
            self._zoo_state = state

    def __call__(self, *args, **kwargs):  # a stub standing for a function: inert
        return Stub(*args, **kwargs)

    def __repr__(self):
        return f"<stub {self._zoo_origin}>"


_stub_classes: dict[str, type] = {}


def _stub(module: str, name: str) -> type:
    key = f"{module}.{name}"
    if key not in _stub_classes:
        _stub_classes[key] = type(name, (Stub,), {"_zoo_origin": key, "__module__": "zoo.checkpoint.stubs"})
    return _stub_classes[key]


def _safe_reconstructor(cls, base, state):
    if not (isinstance(cls, type) and issubclass(cls, Stub)):
        raise pickle.UnpicklingError(f"copyreg._reconstructor of {cls!r} refused")
    obj = cls.__new__(cls)
    if state is not None:
        obj.__setstate__(state)
    return obj


def _safe_getattr(obj, name: str):
    """``getattr`` as pickles use it for methods (mmengine's ``HistoryBuffer.statistics_methods`` holds
    ``getattr(HistoryBuffer, 'min')`` ...): allowed on stubs only, and it gives another inert stub."""
    if (isinstance(obj, type) and issubclass(obj, Stub)) or isinstance(obj, Stub):
        return _stub(obj._zoo_origin, str(name))
    raise pickle.UnpicklingError(f"getattr on {type(obj).__name__} refused")


class StubUnpickler(pickle.Unpickler):
    """Unpickler that allows only :data:`SAFE_GLOBALS` and stubs for :data:`STUB_PREFIXES`."""

    _numpy = None

    def find_class(self, module: str, name: str):
        if StubUnpickler._numpy is None:
            StubUnpickler._numpy = _numpy_globals()
        module = {"__builtin__": "builtins", "copy_reg": "copyreg"}.get(module, module)  # protocol < 3 names
        key = (module, name)
        if key in SAFE_GLOBALS:
            return SAFE_GLOBALS[key]
        if key in StubUnpickler._numpy:
            return StubUnpickler._numpy[key]
        if key == ("copyreg", "_reconstructor"):
            return _safe_reconstructor
        if key == ("builtins", "getattr"):
            return _safe_getattr
        if f"{module}.{name}".startswith(STUB_PREFIXES) or module.startswith(STUB_PREFIXES):
            return _stub(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


# torch.load(pickle_module=...) wants an object with Unpickler and load
stub_pickle = types.SimpleNamespace(Unpickler=StubUnpickler, load=lambda f, **kw: StubUnpickler(f, **kw).load(),
                                    __name__="zoo_stub_pickle")


def sniff(path: Path) -> str:
    """``safetensors``, ``zip`` (torch >= 1.6), ``pickle`` (legacy torch) or ``unknown``."""
    with open(path, "rb") as f:
        head = f.read(16)
    if head[:4] == b"PK\x03\x04" or zipfile.is_zipfile(path):
        return "zip"  # possibly truncated: torch.load says so below
    if len(head) >= 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < 100_000_000:
        return "safetensors"
    if head[:1] == b"\x80":
        return "pickle"
    return "unknown"


def read(path: str | Path) -> object:
    """Read a checkpoint file safely, whatever its format; raise :class:`WeightsError` with advice."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist")
    kind = sniff(path)
    if kind == "unknown":
        raise WeightsError(f"{path} is not a checkpoint (neither safetensors nor a torch file)")
    if kind == "safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as e:  # safetensors raises its own error types
            raise WeightsError(f"{path} is a corrupt safetensors file ({e}); download it again") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        pass  # pickles whole modules (ultralytics): try the stub unpickler below
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as e:
        raise WeightsError(f"{path} is a corrupt or truncated torch file ({str(e).splitlines()[0]}); download it again") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=False, pickle_module=stub_pickle)
    except pickle.UnpicklingError as e:
        raise WeightsError(f"{path} is unsafe to load: {e}; only tensors and official model classes are allowed") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as e:
        raise WeightsError(f"{path} is a corrupt or truncated torch file ({str(e).splitlines()[0]}); download it again") from None


def module_state_dict(module) -> dict[str, torch.Tensor]:
    """The state dict of a pickled module (a real ``nn.Module`` or a :class:`Stub` of one)."""
    if isinstance(module, torch.nn.Module):
        return module.state_dict()
    out: dict[str, torch.Tensor] = {}

    def walk(m, prefix):
        d = getattr(m, "__dict__", {})
        for group in ("_parameters", "_buffers"):
            for k, v in (d.get(group) or {}).items():
                if isinstance(v, torch.Tensor) and k not in (d.get("_non_persistent_buffers_set") or ()):
                    out[prefix + k] = v.detach()
        for k, child in (d.get("_modules") or {}).items():
            if child is not None:
                walk(child, f"{prefix}{k}.")

    walk(module, "")
    if not out:
        raise WeightsError("the checkpoint's model holds no tensors; is it the right file?")
    return out


def to_state_dict(obj) -> dict[str, torch.Tensor]:
    """Find the model weights in whatever a checkpoint holds, as float32 tensors.

    Understands plain state dicts, ``{'state_dict': ...}`` (mmengine, SVL),
    ``{'model': ...}`` and ultralytics' ``{'ema': module, 'model': module}``
    (the EMA weights are preferred, as ultralytics does when it evaluates).
    """
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        sd = obj
    elif isinstance(obj, dict) and (obj.get("ema") is not None or obj.get("model") is not None):
        m = obj.get("ema") if obj.get("ema") is not None else obj["model"]
        sd = m if isinstance(m, dict) else module_state_dict(m)
    elif isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        sd = obj["state_dict"]
    elif isinstance(obj, (torch.nn.Module, Stub)):
        sd = module_state_dict(obj)
    else:
        raise WeightsError("the checkpoint holds no state dict (no tensors, 'state_dict', 'model' or 'ema'); is it the right file?")
    return {k: (v.float() if v.is_floating_point() else v) for k, v in sd.items() if isinstance(v, torch.Tensor)}


def save_safetensors(state: dict[str, torch.Tensor], path: str | Path, metadata: dict | None = None) -> Path:
    """Write a state dict as safetensors atomically (``.tmp`` then rename)."""
    import os

    from safetensors.torch import save_file

    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp), metadata=metadata)
    os.replace(tmp, path)
    return path


__all__ = ["read", "to_state_dict", "module_state_dict", "sniff", "StubUnpickler", "Stub", "save_safetensors"]
