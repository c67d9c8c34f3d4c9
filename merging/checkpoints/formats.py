"""Format detection and safe reading of the raw tensors in a checkpoint file.

* safetensors: read through ``safe_open`` (memory-mapped; a header check first catches truncation);
* torch zip files: ``torch.load(weights_only=True, mmap=True)`` (lazy, memory-mapped); a file that holds pickled
  modules (task_vectors ``ImageEncoder``) fails that and goes through :mod:`.unpickler` instead;
* legacy (pre-1.6) torch files: ``torch.load(weights_only=True)``.

Nothing from a file is executed.  Failures raise :class:`CheckpointFileError` naming the file and the problem.
"""
from __future__ import annotations

import json
import os
import pickle
import struct
import zipfile
from pathlib import Path

import torch

from .errors import CheckpointFileError
from .unpickler import load_pickled_module

SAFETENSORS, TORCH_ZIP, TORCH_LEGACY = "safetensors", "torch", "torch-legacy"
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
            if 8 + header_len > size:
                raise CheckpointFileError(path, "truncated", f"safetensors header announces {header_len} bytes "
                                                             f"but the file has {size}")
            return SAFETENSORS
    if head.startswith(b"\x80"):
        raise CheckpointFileError(path, "unsupported format", "a plain Python pickle, not a torch/safetensors "
                                                              "checkpoint; re-save it with torch.save or safetensors")
    raise CheckpointFileError(path, "not a checkpoint", "neither safetensors nor a torch file (unknown first bytes)")


def safetensors_header(path: str | os.PathLike) -> dict:
    """The JSON header (``{name: {dtype, shape, data_offsets}}``, ``__metadata__``) with truncation checks."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as handle:
        (header_len,) = struct.unpack("<Q", handle.read(8))
        if 8 + header_len > size:
            raise CheckpointFileError(path, "truncated", "the safetensors header runs past the end of the file")
        try:
            header = json.loads(handle.read(header_len))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CheckpointFileError(path, "corrupt", f"unreadable safetensors header ({exc})") from None
    if not isinstance(header, dict):
        raise CheckpointFileError(path, "corrupt", "the safetensors header is not a JSON object")
    data_len = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    if 8 + header_len + data_len > size:
        raise CheckpointFileError(path, "truncated", f"tensor data needs {8 + header_len + data_len} bytes, "
                                                     f"the file has {size}")
    return header


def read_safetensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError, safe_open

    safetensors_header(path)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            return {key: handle.get_tensor(key) for key in handle.keys()}
    except SafetensorError as exc:
        raise CheckpointFileError(path, "corrupt", str(exc)) from None


def read_torch(path: str | os.PathLike, fmt: str) -> dict:
    """A torch file through ``weights_only`` loading, or the restricted unpickler for pickled modules."""
    path = Path(path)
    try:
        if fmt == TORCH_ZIP:
            try:
                zipfile.ZipFile(path).close()
            except zipfile.BadZipFile as exc:
                raise CheckpointFileError(path, "truncated", f"the zip archive is incomplete or damaged ({exc})") \
                    from None
        return torch.load(path, map_location="cpu", weights_only=True, mmap=fmt == TORCH_ZIP)
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
        raise CheckpointFileError(path, problem, message) from None


def read_tensors(path: str | os.PathLike) -> tuple[str, dict]:
    """(format, raw loaded object) — a dict of tensors or nested dicts — for any supported file."""
    fmt = detect_format(path)
    raw = read_safetensors(path) if fmt == SAFETENSORS else read_torch(path, fmt)
    if not isinstance(raw, dict):
        raise CheckpointFileError(path, "not a checkpoint", f"the file holds a {type(raw).__name__}, not a state dict")
    return fmt, raw
