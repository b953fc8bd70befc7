"""Reading checkpoints safely: nothing in a weights file can run code or take memory it does not hold.

* safetensors files are read with ``safetensors``;
* torch files (zip, and legacy pickles) with ``torch.load`` driven by
  :class:`StubUnpickler`, a restricted pure-Python unpickler: tensors are
  rebuilt with torch's own functions after their arguments are checked, every
  class from an official code base (ultralytics modules, as SpikeYOLO and TDE
  release them) becomes an inert :class:`Stub` that only records its pickled
  state, a few data containers (``OrderedDict``, ``deque``, ``set``, ...) are
  rebuilt, and any other callable is refused. No official code is imported or
  run.
* Nothing a file declares is allocated before it is checked against what the
  file holds: storages against their zip records (or the file's size), byte
  arrays and frames against the bytes left, numpy arrays against their data,
  tensor views against their storage. TorchScript archives and legacy tar
  files (whose loaders run code or unpack files) are refused.
* Any error a file can cause is one :class:`~zoo.errors.WeightsError` line.
"""

from __future__ import annotations

import codecs
import collections
import math
import os
import pickle
import struct
import tarfile
import types
import zipfile
from pathlib import Path

import torch

from .errors import WeightsError, one_line

# classes from these code bases are rebuilt as inert stubs (never imported)
STUB_PREFIXES = (
    "ultralytics.", "torch.nn.modules.", "spikingjelly.", "models.", "mmseg.", "mmdet.", "mmengine.",
    "pathlib.", "argparse.Namespace", "types.SimpleNamespace", "__main__.",
)
MAX_OVERLAP = 1 << 24  # a tensor view may hold more elements than its storage (zero strides) up to this many
MAX_COMPRESSION = 64  # torch.save stores zip records uncompressed; a compressed one may expand this much


class Refused(pickle.UnpicklingError):
    """The file asks for something the zoo does not do (run code, allocate what the file does not hold)."""


def _refuse(msg: str):
    raise Refused(msg)


def _is_int(x) -> bool:
    return type(x) is int


def _ints(xs, what: str) -> tuple:
    if not isinstance(xs, (tuple, list)) or not all(_is_int(v) and v >= 0 for v in xs) or len(xs) > 64:
        _refuse(f"{what} must be a tuple of at most 64 non-negative ints, got {type(xs).__name__}")
    return tuple(xs)


# ----------------------------------------------------------------------------- the callables a file may use


def _bytearray(*args):
    if not args:
        return bytearray()
    if len(args) == 1 and isinstance(args[0], (bytes, bytearray)):
        return bytearray(args[0])
    if len(args) == 2 and isinstance(args[0], str) and args[1] in ("latin1", "latin-1"):
        return bytearray(args[0], "latin-1")
    _refuse(f"bytearray({', '.join(type(a).__name__ for a in args)}) refused: only bytearray(bytes) rebuilds data "
            "the file holds (an int argument allocates memory the file does not hold)")


def _codecs_encode(obj, encoding="utf-8", errors="strict"):
    if not isinstance(obj, str) or encoding not in ("latin1", "latin-1") or errors != "strict":
        _refuse(f"_codecs.encode({type(obj).__name__}, {one_line(encoding, 40)!r}) refused: "
                "only latin-1 text (how protocol-2 pickles store bytes) is decoded")
    return codecs.encode(obj, "latin-1")


def _no_hooks(hooks, what):
    if hooks is not None and not (isinstance(hooks, dict) and not hooks):
        _refuse(f"{what} with backward hooks refused (hooks are code)")


def _check_view(storage, offset, size, stride, what: str):
    if not isinstance(storage, torch.storage.TypedStorage):
        _refuse(f"{what} of a {type(storage).__name__} refused: a tensor needs a storage from the file")
    if not _is_int(offset) or offset < 0:
        _refuse(f"{what}: storage offset must be a non-negative int")
    size, stride = _ints(size, f"{what} size"), _ints(stride, f"{what} stride")
    if len(size) != len(stride):
        _refuse(f"{what}: size {list(size)} and stride {list(stride)} differ in length")
    n = math.prod(size)
    have = storage._size()
    if n and offset + sum((s - 1) * st for s, st in zip(size, stride)) >= have:
        _refuse(f"{what} of size {list(size)} reaches past its storage of {have} elements")
    if n > max(have, MAX_OVERLAP):
        _refuse(f"{what} of {n} elements over a storage of {have} (overlapping strides) refused")


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None):
    _check_view(storage, storage_offset, size, stride, "tensor")
    _no_hooks(backward_hooks, "tensor")
    if not isinstance(requires_grad, bool):
        _refuse("tensor: requires_grad must be a bool")
    if metadata is not None and not (isinstance(metadata, dict) and all(isinstance(v, bool) for v in metadata.values())):
        _refuse("tensor: metadata must be a dict of flags")
    return torch._utils._rebuild_tensor_v2(storage, storage_offset, tuple(size), tuple(stride), requires_grad,
                                           collections.OrderedDict(), metadata)


def _rebuild_tensor(storage, storage_offset, size, stride):
    _check_view(storage, storage_offset, size, stride, "tensor")
    return torch._utils._rebuild_tensor(storage, storage_offset, tuple(size), tuple(stride))


def _tensor_arg(data, what):
    if not isinstance(data, torch.Tensor):
        _refuse(f"{what} of a {type(data).__name__} refused: it needs a tensor")


def _parameter(data=None, requires_grad=True):
    if data is not None:
        _tensor_arg(data, "Parameter")
    return torch.nn.Parameter(data, bool(requires_grad))


def _rebuild_parameter(data, requires_grad, backward_hooks):
    _tensor_arg(data, "Parameter")
    _no_hooks(backward_hooks, "Parameter")
    return torch.nn.Parameter(data, bool(requires_grad))


def _plain_state(state, what):
    """Attribute state a file may set on a tensor: str names, no dunders, no slots."""
    if state is None:
        return
    d, slots = state if isinstance(state, tuple) and len(state) == 2 else (state, None)
    if slots or not isinstance(d, (dict, type(None))) or any(not isinstance(k, str) or k.startswith("__") for k in (d or {})):
        _refuse(f"{what} state of {type(state).__name__} refused: only plain attribute names")


def _rebuild_parameter_with_state(data, requires_grad, backward_hooks, state):
    _plain_state(state, "Parameter")
    p = _rebuild_parameter(data, requires_grad, backward_hooks)
    for k, v in ((state[0] if isinstance(state, tuple) else state) or {}).items():
        setattr(p, k, v)
    return p


class _TypeRef:
    """Stands for a class a pickle may name but never call (``torch.Tensor(4e9)`` allocates 16 GB)."""

    def __init__(self, name):
        self.name = name

    def __call__(self, *args, **kwargs):
        _refuse(f"calling {self.name} refused (a constructor allocates what the file asks, not what it holds)")

    def __repr__(self):
        return self.name


_TENSOR = _TypeRef("torch.Tensor")


def _rebuild_from_type_v2(func, new_type, args, state):
    if func not in (_rebuild_tensor_v2, _rebuild_tensor) or new_type not in (_TENSOR, _parameter):
        _refuse(f"tensor subclass {one_line(getattr(new_type, '__name__', new_type), 60)} refused")
    if not isinstance(args, tuple):
        _refuse("tensor rebuild arguments must be a tuple")
    _plain_state(state, "tensor")
    t = func(*args)
    t = t if new_type is _TENSOR else torch.nn.Parameter(t, t.requires_grad)
    for k, v in ((state[0] if isinstance(state, tuple) else state) or {}).items():
        setattr(t, k, v)
    return t


def _size(dims=()):
    return torch.Size(_ints(dims, "torch.Size"))


def _device(spec, index=None):
    if not isinstance(spec, str) or not (index is None or _is_int(index)):
        _refuse(f"torch.device({type(spec).__name__}) refused")
    return torch.device(spec) if index is None else torch.device(spec, index)


SAFE_GLOBALS = {  # data containers and checked torch rebuilders; nothing that reaches the system
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("collections", "deque"): collections.deque,  # TDE's DetectionModel.past_data (the AGM's gate history)
    ("builtins", "set"): set, ("builtins", "frozenset"): frozenset, ("builtins", "slice"): slice,
    ("builtins", "complex"): complex, ("builtins", "bytearray"): _bytearray,
    ("_codecs", "encode"): _codecs_encode,  # protocol-2 pickles store bytes as latin-1 text
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter_with_state,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
    ("torch", "Tensor"): _TENSOR, ("torch._tensor", "Tensor"): _TENSOR, ("torch.nn.parameter", "Parameter"): _parameter,
    ("torch", "Size"): _size, ("torch", "device"): _device,
}
for _name in dir(torch):  # dtypes are values, not callables
    if isinstance(getattr(torch, _name, None), torch.dtype):
        SAFE_GLOBALS[("torch", _name)] = getattr(torch, _name)


_NDARRAY = _TypeRef("numpy.ndarray")  # passed to numpy's _reconstruct, never called


def _numpy_globals() -> dict:
    import numpy as np

    def reconstruct(cls, shape, typecode):
        # numpy pickles every array as _reconstruct(ndarray, (0,), b'b') + BUILD(state): anything else is not numpy's
        if cls is not _NDARRAY or shape != (0,) or typecode != b"b":
            _refuse(f"numpy _reconstruct({one_line(cls, 40)}, {one_line(shape, 40)}, ...) refused: only numpy's own (ndarray, (0,), b'b')")
        return np.ndarray.__new__(np.ndarray, (0,), "b")

    def scalar(dtype, data=None):
        if not isinstance(dtype, np.dtype):
            _refuse(f"numpy scalar of a {type(dtype).__name__} refused: it needs a dtype")
        if dtype.hasobject:
            if dtype != np.dtype("O"):
                _refuse("numpy scalar of a structured object dtype refused")
            return data
        if not isinstance(data, bytes) or len(data) != dtype.itemsize:
            _refuse(f"numpy scalar of {dtype.itemsize} bytes from {type(data).__name__} data refused (the file must hold its bytes)")
        return np._core.multiarray.scalar(dtype, data)

    def dtype(spec, align=False, copy=True):
        if not isinstance(spec, str) or len(spec) > 16:
            _refuse(f"numpy dtype({type(spec).__name__}) refused: only a short type code")
        return np.dtype(spec, bool(align), bool(copy))

    out = {("numpy", "dtype"): dtype, ("numpy", "ndarray"): _NDARRAY}
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        out[(mod, "scalar")] = scalar
        out[(mod, "_reconstruct")] = reconstruct
    for name in ("Float64DType", "Float32DType", "Float16DType", "Int64DType", "Int32DType", "BoolDType"):
        if hasattr(np.dtypes, name):
            out[("numpy.dtypes", name)] = getattr(np.dtypes, name)
    return out


class Stub:
    """An object from an official code base, rebuilt without its code: only its pickled state."""

    _zoo_origin = "?"

    def __init__(self, *args, **kwargs):
        self._zoo_args = args
        if kwargs:
            self.__dict__.update({k: v for k, v in kwargs.items() if isinstance(k, str)})

    def __setstate__(self, state):
        if isinstance(state, tuple) and len(state) == 2 and all(isinstance(s, (dict, type(None))) for s in state):
            state = {**(state[0] or {}), **(state[1] or {})}  # (dict state, slot state)
        if isinstance(state, dict) and all(isinstance(k, str) for k in state):
            self.__dict__.update({k: v for k, v in state.items() if not k.startswith("__")})  # no dunders
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
        _refuse(f"copyreg._reconstructor of {one_line(cls, 60)} refused")
    obj = cls.__new__(cls)
    if state is not None:
        obj.__setstate__(state)
    return obj


def _safe_getattr(obj, name):
    """``getattr`` as pickles use it for methods (mmengine's ``HistoryBuffer`` keeps its statistics methods,
    pickled as ``getattr(HistoryBuffer, 'min')``): allowed on stubs only, and it gives another inert stub."""
    if not ((isinstance(obj, type) and issubclass(obj, Stub)) or isinstance(obj, Stub)) or not isinstance(name, str):
        _refuse(f"getattr on {one_line(type(obj).__name__, 60)} refused (only on stubs of official classes)")
    return _stub(obj._zoo_origin, name)


# ----------------------------------------------------------------------------- the unpickler


def _check_array_state(state):
    import numpy as np

    if not isinstance(state, tuple) or len(state) not in (4, 5):
        _refuse("numpy array state must be numpy's (version, shape, dtype, fortran, data)")
    shape, dtype, data = state[-4], state[-3], state[-1]
    n = math.prod(_ints(shape, "numpy array shape"))
    if not isinstance(dtype, np.dtype):
        _refuse(f"numpy array of a {type(dtype).__name__} dtype refused")
    if dtype.hasobject:  # a list of the objects (numpy crashes when the list is short)
        if dtype != np.dtype("O") or not isinstance(data, list) or len(data) != n:
            _refuse(f"numpy object array of shape {list(shape)} needs a list of exactly {n} objects")
    elif not isinstance(data, (bytes, bytearray)) or len(data) != n * dtype.itemsize:
        _refuse(f"numpy array of shape {list(shape)} needs {n * dtype.itemsize} bytes of data, the file holds "
                f"{len(data) if isinstance(data, (bytes, bytearray)) else 'none'}")


def _check_build(inst, state):
    import numpy as np

    if isinstance(inst, Stub) or isinstance(inst, np.dtype):
        return
    if type(inst) is np.ndarray:
        return _check_array_state(state)
    if type(inst) in (collections.OrderedDict, collections.deque, dict, set) and (
            state is None or isinstance(state, dict) and all(isinstance(k, str) for k in state)):
        return
    _refuse(f"setting the state of a {type(inst).__name__} refused (only official classes' stubs and numpy arrays)")


class StubUnpickler(pickle._Unpickler):
    """Pure-Python unpickler that allows only :data:`SAFE_GLOBALS`, numpy's arrays and stubs for :data:`STUB_PREFIXES`.

    Pure Python because the C unpickler's memo is an array an index can grow
    (``LONG_BINPUT 4e9`` allocates 32 GB); opcodes that allocate what the file
    does not hold, set state on arbitrary objects, or reach the process-wide
    extension registry are checked or refused here. :attr:`limits` (set per
    file by :func:`read`) bounds the storages torch allocates.
    """

    _numpy = None
    limits: dict = {}  # {"file_bytes": n, "records": {name: bytes} (zip) or None (legacy)}
    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, file, *args, **kwargs):
        super().__init__(file, *args, **kwargs)
        self._allocated, self._keys = 0, set()
        try:
            pos = file.tell()
            file.seek(0, os.SEEK_END)
            self._size = file.tell()
            file.seek(pos)
        except (AttributeError, OSError, ValueError):
            self._size = self.limits.get("file_bytes", 1 << 40)
        read = self._file_read

        def bounded_read(n):  # never ask the file for more than it holds (a buffered read allocates n first)
            return read(max(0, min(n, self._size)))

        self._file_read = bounded_read

    def find_class(self, module: str, name: str):
        if StubUnpickler._numpy is None:
            StubUnpickler._numpy = _numpy_globals()
        if not isinstance(module, str) or not isinstance(name, str):
            _refuse("a global's module and name must be text")
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
        _refuse(f"refusing to load {one_line(module, 80)}.{one_line(name, 80)}")

    # --- opcodes
    def _build(self):
        _check_build(self.stack[-2] if len(self.stack) > 1 else None, self.stack[-1] if self.stack else None)
        pickle._Unpickler.load_build(self)

    def _bytearray8(self):
        (n,) = struct.unpack("<Q", self.read(8))
        if n > self._size:
            _refuse(f"a byte array of {n} bytes in a file of {self._size} refused")
        b = bytearray(n)
        self.readinto(b)
        self.append(b)

    def _ext(self):
        _refuse("pickle extension codes (EXT opcodes) refused: they name objects outside the file")

    dispatch[pickle.BUILD[0]] = _build
    dispatch[pickle.BYTEARRAY8[0]] = _bytearray8
    dispatch[pickle.EXT1[0]] = dispatch[pickle.EXT2[0]] = dispatch[pickle.EXT4[0]] = _ext

    # --- storages: torch sets persistent_load; every reference is checked before torch allocates
    @property
    def persistent_load(self):
        return self._checked_persistent_load

    @persistent_load.setter
    def persistent_load(self, fn):
        self._torch_persistent_load = fn

    def _checked_persistent_load(self, pid):
        if not isinstance(pid, tuple) or not pid:
            _refuse(f"persistent id of a {type(pid).__name__} refused: torch files reference storages with tuples")
        kind = pid[0].decode("ascii", "replace") if isinstance(pid[0], bytes) else pid[0]
        records = self.limits.get("records")
        if kind == "module" and records is None and len(pid) == 4:  # legacy torch.save(model): the class, source
            return pid[1]  # (torch would compare sources; a stub has none)
        if kind != "storage" or len(pid) != (5 if records is not None else 6):
            _refuse(f"persistent id {one_line(kind, 40)!r} of {len(pid)} fields refused: not a torch storage reference")
        storage_type, key, location, numel = pid[1:5]
        if storage_type is torch.UntypedStorage:
            itemsize = 1
        elif isinstance(storage_type, torch.serialization.StorageType):
            itemsize = torch._utils._element_size(storage_type.dtype)
        else:
            what = storage_type.__name__ if isinstance(storage_type, type) else type(storage_type).__name__
            _refuse(f"storage of type {one_line(what, 60)} refused: it needs a torch storage class")
        if not isinstance(key, str) or not isinstance(location, (str, bytes)) or not _is_int(numel) or numel < 0:
            _refuse("storage reference needs a text key, a text location and a non-negative int size")
        nbytes = numel * itemsize
        if records is not None:
            have = records.get(f"data/{key}")
            if have is None:
                _refuse(f"storage {one_line(key, 40)!r} has no record in the archive")
            if nbytes > have:
                _refuse(f"storage {one_line(key, 40)!r} declares {nbytes} bytes, its record holds {have}")
        else:
            view = pid[5]
            if view is not None and not (isinstance(view, tuple) and len(view) == 3 and isinstance(view[0], str)
                                         and all(_is_int(v) and v >= 0 for v in view[1:])):
                _refuse("legacy storage view must be (key, offset, size)")
            if key not in self._keys:
                self._allocated += nbytes
                if self._allocated > self.limits.get("file_bytes", 0):
                    _refuse(f"storages declare {self._allocated} bytes in a file of {self.limits.get('file_bytes', 0)}")
                self._keys.add(key)
        return self._torch_persistent_load(pid)


def _pickle_module(limits: dict):
    """A ``pickle_module`` for ``torch.load`` whose unpickler knows this file's limits."""
    cls = type("Unpickler", (StubUnpickler,), {"limits": limits})
    return types.SimpleNamespace(Unpickler=cls, load=lambda f, **kw: cls(f, **kw).load(), __name__="zoo_stub_pickle")


stub_pickle = _pickle_module({"file_bytes": 0, "records": None})  # plain pickles (no storages)


def sniff(path: Path) -> str:
    """``safetensors``, ``zip`` (torch >= 1.6), ``pickle`` (legacy torch) or ``unknown``."""
    with open(path, "rb") as f:
        head = f.read(16)
    if head[:4] == b"PK\x03\x04":  # as torch decides (a zip's directory may sit after a pickle)
        return "zip"
    if len(head) >= 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < 100_000_000:
        return "safetensors"
    if head[:1] == b"\x80":
        return "pickle"
    return "unknown"


def _zip_records(path: Path) -> dict[str, int]:
    """The records of a torch zip, checked before torch reads any: ``{name below the archive folder: bytes}``."""
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
        raise WeightsError(f"{path} is a corrupt or truncated torch file ({one_line(e, 120)}); download it again") from None
    if not infos:
        raise WeightsError(f"{path} is an empty zip, not a torch checkpoint")
    prefix = infos[0].filename.split("/")[0] + "/"
    records = {}
    for i in infos:
        declared, stored = i.file_size, i.compress_size
        if (i.compress_type == zipfile.ZIP_STORED and declared != stored) or declared > MAX_COMPRESSION * stored + (1 << 16):
            raise WeightsError(f"{path} is a crafted zip: record {one_line(i.filename, 80)} declares {declared} bytes "
                               f"from {stored} stored; refusing to read it")
        if i.filename.startswith(prefix):
            records[i.filename[len(prefix):]] = declared
    if "constants.pkl" in records:
        raise WeightsError(f"{path} is a TorchScript archive (torch.jit.save), whose loading runs its code; "
                           "save the model's state_dict with torch.save instead")
    if "data.pkl" not in records:
        raise WeightsError(f"{path} is a zip without {prefix}data.pkl, not a torch checkpoint")
    return records


def _read_torch(path: Path, kind: str):
    size = path.stat().st_size
    if kind == "zip":
        limits = {"file_bytes": size, "records": _zip_records(path)}
    else:
        if tarfile.is_tarfile(path):
            raise WeightsError(f"{path} is a legacy tar-format torch file (torch < 0.4), which the zoo does not read; "
                               "re-save its state_dict with a current torch")
        limits = {"file_bytes": size, "records": None}
    try:
        return torch.load(path, map_location="cpu", weights_only=False, pickle_module=_pickle_module(limits))
    except Refused as e:
        raise WeightsError(f"{path} is unsafe to load: {one_line(e, 200)}; only tensors and official model classes are allowed") from None
    except Exception as e:  # any other failure of a crafted or damaged file: one line
        raise WeightsError(f"{path} is a corrupt or truncated torch file ({type(e).__name__}: "
                           f"{one_line(e, 160) or 'the file ends early'}); download it again") from None


def read(path: str | Path) -> object:
    """Read a checkpoint file safely, whatever its format; raise :class:`WeightsError` with advice."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file {path} " + ("is not a regular file" if path.exists() else "does not exist"))
    try:
        kind = sniff(path)
    except OSError as e:
        raise WeightsError(f"cannot read {path} ({e.strerror or e})") from None
    if kind == "unknown":
        raise WeightsError(f"{path} is not a checkpoint (neither safetensors nor a torch file)")
    if kind == "safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as e:  # safetensors raises its own error types
            raise WeightsError(f"{path} is a corrupt safetensors file ({one_line(e, 160)}); download it again") from None
    return _read_torch(path, kind)


def module_state_dict(module) -> dict[str, torch.Tensor]:
    """The state dict of a pickled module (a real ``nn.Module`` or a :class:`Stub` of one)."""
    if isinstance(module, torch.nn.Module):
        return module.state_dict()
    out: dict[str, torch.Tensor] = {}
    todo, visits = [(module, "")], 0
    while todo:  # iteratively: a crafted tree may be deep, cyclic or shared a million times
        m, prefix = todo.pop()
        visits += 1
        if visits > 200_000 or len(prefix) > 4096:
            raise WeightsError("the checkpoint's model tree is cyclic or too deep; is it the right file?")
        d = getattr(m, "__dict__", None)
        d = d if isinstance(d, dict) else {}
        skip = d.get("_non_persistent_buffers_set")
        skip = skip if isinstance(skip, (set, frozenset)) else ()
        for group in ("_parameters", "_buffers"):
            items = d.get(group)
            for k, v in (items.items() if isinstance(items, dict) else ()):
                if isinstance(k, str) and isinstance(v, torch.Tensor) and k not in skip:
                    out[prefix + k] = v.detach()
        children = d.get("_modules")
        for k, child in reversed(list(children.items()) if isinstance(children, dict) else []):
            if isinstance(k, str) and child is not None:
                todo.append((child, f"{prefix}{k}."))
    if not out:
        raise WeightsError("the checkpoint's model holds no tensors; is it the right file?")
    return out


def to_state_dict(obj) -> dict[str, torch.Tensor]:
    """Find the model weights in whatever a checkpoint holds, as float32 tensors.

    Understands plain state dicts, ``{'state_dict': ...}`` (mmengine, SVL),
    ``{'model': ...}`` and ultralytics' ``{'ema': module, 'model': module}``
    (the EMA weights are preferred, as ultralytics does when it evaluates).
    Only text keys and tensors are kept.
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
    out = {k: v for k, v in sd.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    odd = [k for k, v in out.items() if v.is_sparse or v.is_quantized or v.is_complex() or v.device.type != "cpu"]
    if odd:
        raise WeightsError(f"the checkpoint's tensor {one_line(odd[0], 80)} is sparse, quantized, complex or not on "
                           "the CPU; the zoo reads dense real weights")
    return {k: (v.float() if v.is_floating_point() else v) for k, v in out.items()}


FORMATS = ("safetensors", "torch", "ultralytics", "mmengine", "state_dict")


def recognise(obj) -> str:
    """The checkpoint format of what :func:`read` returned (the manifest's ``format`` names):

    ``ultralytics`` (``{'model' / 'ema': pickled module}``), ``mmengine`` (``{'state_dict', 'meta'}``),
    ``state_dict`` (another ``{'state_dict': ...}`` wrapper, e.g. SVL's), ``torch`` (a plain state dict:
    the zoo's own keys, as :func:`read` also returns a safetensors file's)."""
    if isinstance(obj, dict):
        if obj.get("ema") is not None or obj.get("model") is not None:
            return "ultralytics"
        if isinstance(obj.get("state_dict"), dict):
            return "mmengine" if "meta" in obj else "state_dict"
    return "torch"


def save_safetensors(state: dict[str, torch.Tensor], path: str | Path, metadata: dict | None = None) -> Path:
    """Write a state dict as safetensors atomically (:mod:`zoo.fileio`)."""
    from safetensors.torch import save_file

    from .fileio import atomic_path

    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in state.items()}, str(tmp), metadata=metadata)
    return Path(path)


__all__ = ["read", "recognise", "FORMATS", "to_state_dict", "module_state_dict", "sniff", "StubUnpickler", "Stub", "Refused",
           "save_safetensors"]
