"""Loader limits: what a checkpoint file may ask a loader to allocate, checked before the memory is spent.

A small file must not be able to make a loader use much more memory than the file's own size:

* torch zip files: at most :data:`MAX_ZIP_RECORDS` records (read from the end record before the central
  directory is parsed: ~0.5 KB of Python objects each); ``data.pkl`` is at most :data:`MAX_PICKLE_BYTES`;
  compressed records (torch itself never compresses) may together expand to at most
  ``MAX_EXPANSION × file size + EXPANSION_ALLOWANCE`` (their declared sizes are checked before anything is
  inflated, and :mod:`zipfile` / torch's reader stop at the declared size); stored records must lie inside the
  file; a file with compressed records is read, not memory-mapped (torch would map them as stored);
* pickles are scanned opcode by opcode before they are unpickled: a memo index may not exceed the number of
  opcodes read so far (the C unpickler sizes its memo array by the largest index: one ``LONG_BINPUT 2**27`` in a
  393-byte file costs 2 GB), a ``FRAME`` may not announce more bytes than remain, and every length-prefixed
  string must fit in the remaining bytes;
* a tensor may not have more elements than its storage holds past its offset: a stride-0 view of a 1-element
  storage with 2**28 elements is a 141 KB file that becomes a 1 GB tensor when merged.  Such tensors are refused,
  not materialised (``torch.save`` of an ``expand()``-ed tensor writes them; real checkpoints never hold them);
* safetensors headers: the size cap of the safetensors library (:data:`SAFETENSORS_MAX_HEADER`) and at most
  :data:`SAFETENSORS_MAX_OBJECTS` tensor entries (see :func:`.formats.safetensors_header`);
* Hugging Face index files (``model.safetensors.index.json``): at most :data:`INDEX_MAX_BYTES`, JSON nested at
  most :data:`INDEX_MAX_DEPTH` deep, at most :data:`INDEX_MAX_TENSORS` tensors in at most :data:`INDEX_MAX_SHARDS`
  shards (see :mod:`.hf_folder`).

Each breach raises :class:`.errors.LimitError` naming the file.
"""
from __future__ import annotations

import pickletools
import zipfile
from pathlib import Path
from typing import Mapping

import torch

from .errors import CheckpointFileError, LimitError

MAX_ZIP_RECORDS = 100_000
MAX_PICKLE_BYTES = 16 << 20  # a state dict pickles to ~100 bytes per tensor; the scan reads ~2 MB/s
MAX_EXPANSION = 4
EXPANSION_ALLOWANCE = 16 << 20
SAFETENSORS_MAX_HEADER = 100_000_000  # safetensors' MAX_HEADER_SIZE (the library refuses larger headers)
SAFETENSORS_MAX_OBJECTS = 65_536
INDEX_MAX_BYTES = 32 << 20  # a 400 B-parameter model's index (~100k tensors) is ~10 MB
INDEX_MAX_DEPTH = 4  # {"metadata": {...}, "weight_map": {name: shard}}: depth 2; a little room for metadata
INDEX_MAX_TENSORS = 1 << 20
INDEX_MAX_SHARDS = 100_000
_MEMO_PUTS = ("PUT", "BINPUT", "LONG_BINPUT")


def open_torch_zip(path: Path) -> tuple[zipfile.ZipFile, str, bytes]:
    """``(archive, record prefix, data.pkl bytes)`` of a torch zip file, after the size checks above and a scan
    of the pickle (:func:`check_pickle`)."""
    with open(path, "rb") as handle:
        end = zipfile._EndRecData(handle)  # the end-of-central-directory record (zip64 aware)
    if end is not None and end[zipfile._ECD_ENTRIES_TOTAL] > MAX_ZIP_RECORDS:
        raise LimitError(path, f"the zip archive announces {end[zipfile._ECD_ENTRIES_TOTAL]:,} records; at most "
                               f"{MAX_ZIP_RECORDS:,} are accepted")
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise CheckpointFileError(path, "truncated", f"the zip archive is incomplete or damaged ({exc})") from None
    try:
        pickles = [n for n in archive.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
        if len(pickles) != 1:
            raise CheckpointFileError(path, "not a checkpoint", "a zip file without a torch data.pkl record")
        check_zip(path, archive)
        data = archive.read(pickles[0])
        check_pickle(path, data)
    except BaseException:
        archive.close()
        raise
    return archive, pickles[0][: -len("data.pkl")], data


def check_zip(path: Path, archive: zipfile.ZipFile) -> None:
    size = path.stat().st_size
    inflated = 0
    for info in archive.infolist():
        if info.filename.endswith("data.pkl") and info.file_size > MAX_PICKLE_BYTES:
            raise LimitError(path, f"record {info.filename} declares {info.file_size:,} bytes; a torch pickle may "
                                   f"have at most {MAX_PICKLE_BYTES:,}")
        if info.compress_type == zipfile.ZIP_STORED:
            if info.header_offset + info.file_size > size:
                raise CheckpointFileError(path, "truncated", f"record {info.filename} runs past the end of the file")
        else:
            inflated += info.file_size
    budget = MAX_EXPANSION * size + EXPANSION_ALLOWANCE
    if inflated > budget:
        raise LimitError(path, f"compressed records would inflate to {inflated:,} bytes; a {size:,}-byte file may "
                               f"inflate to at most {budget:,} ({MAX_EXPANSION}× its size + "
                               f"{EXPANSION_ALLOWANCE >> 20} MiB)")


def is_compressed(archive: zipfile.ZipFile) -> bool:
    return any(info.compress_type != zipfile.ZIP_STORED for info in archive.infolist())


def check_pickle(path: Path, data: bytes) -> None:
    """Scan the opcodes (nothing is built): memo indices, frame and string lengths against the bytes present."""
    try:
        for count, (op, arg, pos) in enumerate(pickletools.genops(data)):
            if op.name in _MEMO_PUTS and arg > count:
                raise LimitError(path, f"the pickle stores memo index {arg:,} after {count:,} opcodes (the memo "
                                       "would be allocated to that size)")
            if op.name == "FRAME" and arg > len(data) - pos:
                raise LimitError(path, f"a pickle frame announces {arg:,} bytes; {len(data) - pos:,} remain")
    except CheckpointFileError:
        raise
    except (ValueError, TypeError, OverflowError) as exc:  # unknown opcode, a string longer than the data, ...
        raise CheckpointFileError(path, "corrupt", f"cannot read the pickled data ({str(exc)[:200]})") from None


def check_storage(path: Path, tensors: Mapping[str, torch.Tensor]) -> None:
    """Refuse tensors with more elements than their storage holds (stride-0 / overlapping views)."""
    for name, tensor in tensors.items():
        if tensor.device.type == "meta" or tensor.numel() == 0:
            continue
        held = tensor.untyped_storage().nbytes() // tensor.element_size() - tensor.storage_offset()
        if tensor.numel() > held:
            raise LimitError(path, f"tensor {name} {tuple(tensor.shape)} has {tensor.numel():,} elements but its "
                                   f"storage holds {max(held, 0):,} (a stride-0 or overlapping view); refused rather "
                                   "than materialised at full size")
