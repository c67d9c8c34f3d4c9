"""A restricted unpickler for torch zip checkpoints that hold whole pickled modules (task_vectors / TALL
``finetuned.pt``, ``zeroshot.pt``, ``head_<Task>.pt``).

Nothing from the file is imported or called.  Globals resolve to:

* an allowlist of real, side-effect-free callables — the torch tensor/parameter rebuild functions (re-implemented
  here on top of ``torch.frombuffer``), ``collections.OrderedDict``, ``set``/``frozenset``/``slice`` and
  ``_codecs.encode`` (how pickle protocol 2 stores bytes);
* inert stand-in classes for anything under the modules a saved model legitimately references (torch, torchvision,
  open_clip, the task_vectors ``src`` package, numpy, PIL, ...): their instances only record the state pickle
  hands them, and calling one records its arguments and runs nothing;
* anything else (``os.system``, ``builtins.eval``, ``subprocess.Popen``, ...) raises :class:`UnsafePickleError`
  before it could be called.

Tensor data is not copied: stored records are viewed through a copy-on-write memory map of the file.
Tensors are then collected by walking the stand-ins' ``_parameters`` / ``_buffers`` / ``_modules`` exactly as
``nn.Module.state_dict`` names them.
"""
from __future__ import annotations

import codecs
import collections
import io
import mmap
import pickle
import struct
import sys
import zipfile
from pathlib import Path

import torch

from .errors import CheckpointFileError, UnsafePickleError
from .limits import open_torch_zip

_STORAGE_DTYPES = {
    "FloatStorage": torch.float32, "DoubleStorage": torch.float64, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8, "BoolStorage": torch.bool,
    "UntypedStorage": torch.uint8,
}
# Module prefixes whose classes may appear in a saved model; they become inert stand-ins, never imported.
_STAND_IN_PREFIXES = ("torch", "torchvision", "open_clip", "src", "modeling", "models", "clip", "timm", "numpy",
                      "PIL", "collections", "enum", "functools", "typing", "pathlib", "argparse")


class _StandInMeta(type):
    def __call__(cls, *args, **kwargs):  # REDUCE on a stand-in: remember the arguments, run nothing
        obj = cls.__new__(cls)
        obj.__dict__["_standin_args"] = args
        return obj

    def __repr__(cls):
        return f"<stand-in {cls._standin_name}>"


class StandIn(metaclass=_StandInMeta):
    """An inert object in place of a class from the file; it only stores the state pickle gives it."""

    _standin_name = "?"

    def __new__(cls, *args, **kwargs):
        return object.__new__(cls)

    def __setstate__(self, state):
        if isinstance(state, tuple) and len(state) == 2 and all(s is None or isinstance(s, dict) for s in state):
            for part in state:
                self.__dict__.update(part or {})
        elif isinstance(state, dict):
            self.__dict__.update(state)
        else:
            self.__dict__["_standin_state"] = state


def _storage_type(name: str):
    return ("storage", _STORAGE_DTYPES[name])


def _rebuild_tensor(storage, storage_offset, size, stride, *rest):
    if not torch.is_tensor(storage):
        raise pickle.UnpicklingError("tensor rebuilt from something that is not a storage")
    return torch.as_strided(storage, tuple(size), tuple(stride), storage_offset)


def _rebuild_parameter(data, *rest):
    return data


def _reconstructor(cls, base, state=None):
    """copyreg._reconstructor (pickle protocols 0/1), for stand-ins only."""
    if not (isinstance(cls, type) and issubclass(cls, StandIn)):
        raise pickle.UnpicklingError("copyreg._reconstructor on something that is not a saved class")
    return cls.__new__(cls)


def _encode(text, encoding="latin1"):
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("unexpected _codecs.encode call")
    return codecs.encode(text, encoding)


_ALLOWED = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set, ("builtins", "frozenset"): frozenset, ("builtins", "slice"): slice,
    ("__builtin__", "set"): set,
    ("_codecs", "encode"): _encode,
    ("copyreg", "_reconstructor"): _reconstructor,
}


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, data: bytes, storages, path: Path):
        super().__init__(io.BytesIO(data))
        self._storages, self._path, self._classes = storages, path, {}

    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module.split(".")[0] == "torch" and name in _STORAGE_DTYPES:
            return _storage_type(name)
        if module.split(".")[0] not in _STAND_IN_PREFIXES:
            raise UnsafePickleError(self._path, f"the pickle references {module}.{name}, which could run code; "
                                                "refused (nothing from the file was executed)")
        key = (module, name)
        if key not in self._classes:
            self._classes[key] = _StandInMeta(name, (StandIn,), {"_standin_name": f"{module}.{name}"})
        return self._classes[key]

    def persistent_load(self, pid):
        if not isinstance(pid, tuple) or len(pid) < 5 or pid[0] not in ("storage", b"storage"):
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r:.80}")
        storage_type, key, _location, numel = pid[1:5]
        if not (isinstance(storage_type, tuple) and storage_type[0] == "storage"):
            raise pickle.UnpicklingError("unexpected storage type")
        return self._storages(str(key), storage_type[1], int(numel))


def _record_bytes(archive: zipfile.ZipFile, record: str, mapped: mmap.mmap):
    """A stored (uncompressed) record as a zero-copy view of the mapped file; a compressed one is read."""
    info = archive.getinfo(record)
    if info.compress_type != zipfile.ZIP_STORED:
        return bytearray(archive.read(record))
    local = info.header_offset
    if mapped[local:local + 4] != b"PK\x03\x04":
        raise zipfile.BadZipFile(f"bad local header for {record}")
    name_len, extra_len = struct.unpack("<HH", mapped[local + 26:local + 30])
    start = local + 30 + name_len + extra_len
    if start + info.file_size > len(mapped):
        raise zipfile.BadZipFile(f"record {record} runs past the end of the file")
    return memoryview(mapped)[start:start + info.file_size]


def load_pickled_module(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a torch zip checkpoint holding pickled modules/dicts, named like ``state_dict()``."""
    path = Path(path)
    archive, prefix, data = open_torch_zip(path)  # size limits checked, the pickle scanned
    with archive:
        names = set(archive.namelist())
        byteorder = archive.read(prefix + "byteorder").decode() if prefix + "byteorder" in names else "little"
        cache: dict[str, torch.Tensor] = {}
        with open(path, "rb") as handle:  # copy-on-write map: lazy, writable, private to this process
            mapped = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_COPY)

        def storage(key: str, dtype: torch.dtype, numel: int) -> torch.Tensor:
            if key not in cache:
                record = f"{prefix}data/{key}"
                if record not in names:
                    raise CheckpointFileError(path, "corrupt", f"tensor data record {record} is missing")
                raw = _record_bytes(archive, record, mapped)
                itemsize = torch.empty((), dtype=dtype).element_size()
                if len(raw) < numel * itemsize:
                    raise CheckpointFileError(path, "truncated", f"tensor data record {record} is short")
                flat = torch.frombuffer(raw, dtype=dtype, count=numel) if numel else torch.empty(0, dtype=dtype)
                if byteorder != sys.byteorder and itemsize > 1:
                    flat = flat.view(torch.uint8).view(-1, itemsize).flip(1).reshape(-1).view(dtype)
                cache[key] = flat
            return cache[key]

        try:
            root = _RestrictedUnpickler(data, storage, path).load()
            state: dict[str, torch.Tensor] = {}
            _walk(root, "", state, set())  # RecursionError (a RuntimeError) for absurdly nested modules
        except CheckpointFileError:
            raise
        except (pickle.UnpicklingError, EOFError, zipfile.BadZipFile, ValueError, TypeError, KeyError,
                AttributeError, IndexError, RuntimeError) as exc:
            raise CheckpointFileError(path, "corrupt", f"cannot read the pickled data ({exc})") from None
    if not state:
        raise CheckpointFileError(path, "not a checkpoint", "the pickle holds no tensors")
    return state


def _walk(obj, prefix: str, out: dict, seen: set) -> None:
    """Collect tensors the way ``nn.Module.state_dict`` names them (and plain dicts of tensors)."""
    if id(obj) in seen:
        return
    seen.add(id(obj))
    if torch.is_tensor(obj):
        out[prefix.rstrip(".")] = obj
    elif isinstance(obj, StandIn) and "_modules" in obj.__dict__:
        attrs = obj.__dict__
        for name, value in (attrs.get("_parameters") or {}).items():
            if value is not None:
                out[prefix + name] = value
        skip = attrs.get("_non_persistent_buffers_set") or set()
        for name, value in (attrs.get("_buffers") or {}).items():
            if value is not None and name not in skip:
                out[prefix + name] = value
        for name, child in (attrs.get("_modules") or {}).items():
            if child is not None:
                _walk(child, f"{prefix}{name}.", out, seen)
    elif isinstance(obj, dict):
        for key, value in obj.items():
            if isinstance(key, str) and (torch.is_tensor(value) or isinstance(value, (dict, StandIn))):
                _walk(value, f"{prefix}{key}.", out, seen)
