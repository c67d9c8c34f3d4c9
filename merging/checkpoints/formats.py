"""Format detection and safe reading of the raw tensors in a checkpoint file.

* safetensors: read through ``safe_open`` (memory-mapped; the header is checked first, see
  :func:`safetensors_header`);
* torch zip files: ``torch.load(weights_only=True, mmap=True)`` (lazy, memory-mapped); a file that holds pickled
  modules (task_vectors ``ImageEncoder``) fails that and goes through :mod:`.unpickler` instead;
* legacy (pre-1.6) torch files: ``torch.load(weights_only=True)``.

Nothing from a file is executed, and no file may make a loader allocate much more than its own size
(:mod:`.limits`).  Failures raise :class:`CheckpointFileError` naming the file and the problem.
"""
from __future__ import annotations

import os
import pickle
import re
import struct
from pathlib import Path

import torch

from .errors import CheckpointFileError, LimitError
from .limits import SAFETENSORS_MAX_HEADER, SAFETENSORS_MAX_OBJECTS, is_compressed, open_torch_zip
from .unpickler import load_pickled_module

SAFETENSORS, TORCH_ZIP, TORCH_LEGACY = "safetensors", "torch", "torch-legacy"
SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                      "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
                      "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2}
_LEGACY_MAGIC = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19"  # pickle protocol 2 + torch's legacy magic number


def detect_format(path: str | os.PathLike) -> str:
    """``"safetensors"``, ``"torch"`` (zip) or ``"torch-legacy"`` from the file's first bytes."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointFileError(path, "missing", "no such file")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointFileError(path, "empty", "the file has 0 bytes")
    with open(path, "rb") as handle:
        head = handle.read(16)
    if head.startswith(b"PK\x03\x04"):
        return TORCH_ZIP
    if head.startswith(_LEGACY_MAGIC):
        return TORCH_LEGACY
    if len(head) >= 9:
        (header_len,) = struct.unpack("<Q", head[:8])
        if head[8:9] == b"{":
            if header_len > SAFETENSORS_MAX_HEADER:
                raise _header_too_large(path, header_len)
            if 8 + header_len > size:
                raise CheckpointFileError(path, "truncated", f"safetensors header announces {header_len} bytes "
                                                             f"but the file has {size}")
            return SAFETENSORS
    if head.startswith(b"\x80"):
        raise CheckpointFileError(path, "unsupported format", "a plain Python pickle, not a torch/safetensors "
                                                              "checkpoint; re-save it with torch.save or safetensors")
    raise CheckpointFileError(path, "not a checkpoint", "neither safetensors nor a torch file (unknown first bytes)")


def safetensors_header(path: str | os.PathLike) -> dict:
    """``{name: {"dtype", "shape"}}`` (the metadata is left out), parsed by the safetensors library (Rust, header
    only: no tensor data is read).  Before parsing, the header's size is capped as the library caps it
    (:data:`SAFETENSORS_MAX_HEADER`) and its JSON objects are counted (:data:`SAFETENSORS_MAX_OBJECTS`): the
    library's parse costs about 1 KB per tensor entry, so a 70 MB header of a million entries would cost ~1 GB.
    Malformed headers (wrong types, missing or non-list ``data_offsets``, negative or non-integer shapes, huge
    integers, deep nesting, unknown dtypes, overlapping offsets or offsets past the end) are the library's
    checks, reported as one line naming the file."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            raise CheckpointFileError(path, "truncated", "the safetensors header length is cut off")
        (header_len,) = struct.unpack("<Q", head)
        if header_len > SAFETENSORS_MAX_HEADER:
            raise _header_too_large(path, header_len)
        if 8 + header_len > size:
            raise CheckpointFileError(path, "truncated", "the safetensors header runs past the end of the file")
        objects = sum(handle.read(min(1 << 20, header_len - done)).count(b"{")  # a tensor entry is an object
                      for done in range(0, header_len, 1 << 20))
    if objects > SAFETENSORS_MAX_OBJECTS + 2:
        raise LimitError(path, f"the safetensors header holds {objects:,} JSON objects; at most "
                               f"{SAFETENSORS_MAX_OBJECTS:,} tensors are accepted")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            header: dict = {}
            for key in handle.keys():
                tensor = handle.get_slice(key)
                header[key] = {"dtype": tensor.get_dtype(), "shape": list(tensor.get_shape())}
    except SafetensorError as exc:
        raise _safetensors_error(path, exc) from None
    return header


def _header_too_large(path: Path, header_len: int) -> LimitError:
    return LimitError(path, f"the safetensors header announces {header_len:,} bytes; the limit (the safetensors "
                            f"library's) is {SAFETENSORS_MAX_HEADER:,}")


def _safetensors_error(path: Path, exc: Exception) -> CheckpointFileError:
    message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    message = message.removeprefix("Error while deserializing header: ")
    message = re.sub(r'"[^"]*"', '"…"', message)[:300]  # never echo strings from the file
    problem = "truncated" if "IncompleteBuffer" in message or "incomplete" in message.lower() else "corrupt"
    return CheckpointFileError(path, problem, f"unreadable safetensors header ({message})")


def read_safetensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError, safe_open

    safetensors_header(path)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            return {key: handle.get_tensor(key) for key in handle.keys()}
    except SafetensorError as exc:
        raise _safetensors_error(Path(path), exc) from None


def torch_zip_mappable(path: Path, fmt: str) -> bool:
    """Check a torch zip file's limits (:func:`.limits.open_torch_zip`); True when it can be memory-mapped (torch
    maps compressed records as if they were stored: their values would be garbage)."""
    if fmt != TORCH_ZIP:
        return False
    archive = open_torch_zip(path)[0]
    with archive:
        return not is_compressed(archive)


def read_torch(path: str | os.PathLike, fmt: str) -> dict:
    """A torch file through ``weights_only`` loading, or the restricted unpickler for pickled modules.  Zip files
    pass the checks of :mod:`.limits` first (record sizes, a scan of the pickle)."""
    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=torch_zip_mappable(path, fmt))
    except pickle.UnpicklingError as exc:
        if fmt != TORCH_ZIP:
            raise CheckpointFileError(path, "unsupported format", "a legacy torch file holding pickled objects; "
                                      "the restricted unpickler reads only zip-format files") from None
        if "weights only" not in str(exc).lower() and "weights_only" not in str(exc).lower():
            raise CheckpointFileError(path, "corrupt", str(exc).splitlines()[0]) from None
        return load_pickled_module(path)
    except CheckpointFileError:
        raise
    except Exception as exc:  # a damaged file can make torch's reader fail anywhere (struct.error, KeyError, ...)
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        problem = "truncated" if isinstance(exc, EOFError) or "central directory" in message else "corrupt"
        raise CheckpointFileError(path, problem, message[:300]) from None


def read_tensors(path: str | os.PathLike) -> tuple[str, dict]:
    """(format, raw loaded object) — a dict of tensors or nested dicts — for any supported file."""
    fmt = detect_format(path)
    raw = read_safetensors(path) if fmt == SAFETENSORS else read_torch(path, fmt)
    if not isinstance(raw, dict):
        raise CheckpointFileError(path, "not a checkpoint", f"the file holds a {type(raw).__name__}, not a state dict")
    return fmt, raw
