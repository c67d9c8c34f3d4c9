"""Hugging Face checkpoint folders of any architecture (Llama, Qwen2, Mistral, ...), read lazily tensor by tensor.

A folder holds ``model.safetensors.index.json`` and its shards (``save_pretrained`` with sharding), or one
``model.safetensors``; a single safetensors file is read the same way (the CLI does so for a file whose keys are no
CLIP layout, :func:`is_any_architecture`).  Keys are kept as they are (no CLIP
conversion).  Everything is checked before any tensor data is read:

* the index: at most :data:`.limits.INDEX_MAX_BYTES`, JSON nested at most :data:`.limits.INDEX_MAX_DEPTH` deep
  (counted before parsing), an object with a ``weight_map`` of tensor name → shard file, no key given twice, at
  most :data:`.limits.INDEX_MAX_TENSORS` tensors in :data:`.limits.INDEX_MAX_SHARDS` shards;
* shard names: plain relative names inside the folder (no absolute path, no ``..``, no backslash); a symlinked
  shard (the Hugging Face cache's layout) is followed;
* every shard: the safetensors header checks of :func:`.formats.safetensors_header`, and exactly the tensors the
  index gives it (a tensor missing from its shard, one the index does not list, one in two shards are named).

Keys come in natural order (``layers.2`` before ``layers.10``), which is also the order of an export's shards.

:class:`LazyStateDict` then reads one tensor at a time (memory-mapped by safetensors) when it is indexed, so
building a task-vector space never holds a whole checkpoint: see :meth:`LazyStateDict.meta`.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path, PurePosixPath
from typing import Iterator, Mapping, Sequence

import numpy as np
import torch

from .errors import CheckpointFileError, LimitError
from .formats import SAFETENSORS_DTYPES, detect_format, safetensors_header
from .limits import INDEX_MAX_BYTES, INDEX_MAX_DEPTH, INDEX_MAX_SHARDS, INDEX_MAX_TENSORS

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)


def is_any_architecture(path: str | os.PathLike) -> bool:
    """Read with :func:`open_state_dict`, keys kept: a folder, or a safetensors file whose keys are no open_clip
    or Hugging Face CLIP layout (checked from its header)."""
    from . import inspect_checkpoint

    path = Path(path)
    if path.is_dir():
        return True
    if not path.is_file() or detect_format(path) != "safetensors":
        return False
    try:
        inspect_checkpoint(path)
    except CheckpointFileError as exc:
        return exc.problem == "unrecognised layout"
    return False


class LazyStateDict(Mapping[str, torch.Tensor]):
    """A read-only state dict whose tensors stay in their files until indexed: ``state[key]`` reads that tensor
    (its own dtype, CPU); :meth:`meta` gives every key's shape and dtype as meta tensors without reading data."""

    def __init__(self, path: Path, where: dict[str, Path], specs: dict[str, tuple[torch.dtype, tuple]],
                 files: list[Path]):
        self.path, self._where, self._specs, self.files = path, where, specs, files
        self._open: tuple[Path, object] | None = None  # the last shard read (tensors are read shard by shard)

    def __getitem__(self, key: str) -> torch.Tensor:
        from safetensors import SafetensorError, safe_open

        shard = self._where[key]
        try:
            if self._open is None or self._open[0] != shard:
                self._open = None
                self._open = (shard, safe_open(str(shard), framework="pt", device="cpu"))
            return self._open[1].get_tensor(key)
        except SafetensorError as exc:  # e.g. the file changed since its header was checked
            reason = _names([str(exc).splitlines()[0] if str(exc) else type(exc).__name__])
            raise CheckpointFileError(shard, "corrupt", f"tensor {_names([key])} cannot be read ({reason})") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._specs)

    def __len__(self) -> int:
        return len(self._specs)

    def meta(self) -> dict[str, torch.Tensor]:
        """Every key as a meta tensor of its shape and dtype (nothing is read)."""
        return {k: torch.empty(shape, dtype=dtype, device="meta") for k, (dtype, shape) in self._specs.items()}


def open_state_dict(path: str | os.PathLike) -> LazyStateDict:
    """A Hugging Face folder (index + shards, or ``model.safetensors``) or one safetensors file, checked as the
    module docstring says; raises :class:`CheckpointFileError` naming the file and the problem."""
    path = Path(path)
    if path.is_dir():
        if (path / INDEX).is_file():
            return _open_index(path / INDEX)
        if (path / SINGLE).is_file():
            return _open_single(path / SINGLE, path)
        raise CheckpointFileError(path, "missing", f"a checkpoint folder needs {INDEX} (and its shards) or {SINGLE}")
    if path.name.endswith(".index.json"):
        return _open_index(path)
    return _open_single(path, path)


def folder_space(pretrained: str | os.PathLike, finetuned: Sequence[str | os.PathLike],
                 task_names: Sequence[str] | None = None, **options):
    """:meth:`merging.space.TaskVectorSpace.build` from checkpoint folders (or safetensors files) read lazily;
    ``options``: device, dtype, progress, max_memory, scratch."""
    from ..space import TaskVectorSpace

    return TaskVectorSpace.build(open_state_dict(pretrained), [lambda p=p: open_state_dict(p) for p in finetuned],
                                 task_names, sources=[str(pretrained), *map(str, finetuned)], **options)


def checkpoint_files(path: str | os.PathLike) -> list[Path]:
    """The files that hold a checkpoint's tensors (index first), for digests and overwrite checks."""
    return open_state_dict(path).files


def _open_single(file: Path, path: Path) -> LazyStateDict:
    if detect_format(file) != "safetensors":
        raise CheckpointFileError(file, "unsupported format", "a checkpoint folder is read as safetensors only")
    header = safetensors_header(file)
    specs = {k: _spec(file, k, v) for k, v in header.items()}
    return LazyStateDict(path, dict.fromkeys(specs, file), specs, [file])


def _spec(file: Path, key: str, entry: dict) -> tuple[torch.dtype, tuple]:
    dtype = SAFETENSORS_DTYPES.get(entry["dtype"])
    if dtype is None:
        raise CheckpointFileError(file, "unsupported format", f"tensor {key} has dtype {entry['dtype']}")
    return dtype, tuple(entry["shape"])


def read_index(index: Path) -> dict[str, str]:
    """The index's ``weight_map`` (tensor name → shard name) after the checks on size, depth, duplicates,
    counts and shard names."""
    if not index.is_file():
        raise CheckpointFileError(index, "missing", "no such file")
    size = index.stat().st_size
    if size > INDEX_MAX_BYTES:
        raise LimitError(index, f"the index has {size:,} bytes; at most {INDEX_MAX_BYTES:,} are accepted")
    data = index.read_bytes()
    depth = _depth(data)
    if depth > INDEX_MAX_DEPTH:
        raise LimitError(index, f"the index JSON is nested {depth} deep; at most {INDEX_MAX_DEPTH} is accepted")

    def unique(pairs):
        keys = [k for k, _ in pairs]
        if len(set(keys)) != len(keys):
            raise CheckpointFileError(index, "corrupt", f"duplicate key(s) {_names(sorted(_repeated(keys)))} in "
                                                        "the index")
        return dict(pairs)

    try:
        parsed = json.loads(data.decode("utf-8"), object_pairs_hook=unique)
    except (UnicodeDecodeError, ValueError) as exc:
        if isinstance(exc, CheckpointFileError):
            raise
        raise CheckpointFileError(index, "corrupt", f"not valid JSON ({str(exc).splitlines()[0][:120]})") from None
    weight_map = parsed.get("weight_map") if isinstance(parsed, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointFileError(index, "corrupt", "the index has no 'weight_map' object of tensor → shard file")
    if len(weight_map) > INDEX_MAX_TENSORS:
        raise LimitError(index, f"the index lists {len(weight_map):,} tensors; at most {INDEX_MAX_TENSORS:,}")
    bad = [k for k, v in weight_map.items() if not isinstance(v, str)]
    if bad:
        raise CheckpointFileError(index, "corrupt", f"weight_map entry {_names(bad[:1])!r} is not a shard file name")
    shards = set(weight_map.values())
    if len(shards) > INDEX_MAX_SHARDS:
        raise LimitError(index, f"the index names {len(shards):,} shards; at most {INDEX_MAX_SHARDS:,}")
    for name in sorted(shards):
        _check_shard_name(index, name)
    return weight_map


def _open_index(index: Path) -> LazyStateDict:
    weight_map = read_index(index)
    folder = index.parent
    by_shard: dict[str, list[str]] = {}
    for key, name in weight_map.items():
        by_shard.setdefault(name, []).append(key)
    where: dict[str, Path] = {}
    entries: dict[str, dict] = {}
    seen: dict[str, str] = {}
    for name, keys in by_shard.items():
        shard = folder / name
        if not shard.is_file():
            raise CheckpointFileError(shard, "missing", f"shard named by {index.name} does not exist")
        if detect_format(shard) != "safetensors":
            raise CheckpointFileError(shard, "unsupported format", "shards are read as safetensors only")
        header = safetensors_header(shard)
        twice = sorted(k for k in header if k in seen)
        if twice:
            raise CheckpointFileError(shard, "corrupt", f"tensor(s) {_names(twice)} also in {seen[twice[0]]}")
        seen.update(dict.fromkeys(header, name))
        missing = sorted(set(keys) - set(header))
        if missing:
            raise CheckpointFileError(shard, "missing keys", f"{_names(missing)} (listed for it in {index.name})")
        extra = sorted(set(header) - set(keys))
        if extra:
            raise CheckpointFileError(shard, "extra keys", f"{_names(extra)} (not listed for it in {index.name})")
        for key in keys:
            where[key], entries[key] = shard, header[key]
    specs = {key: _spec(where[key], key, entries[key]) for key in sorted(weight_map, key=_natural)}
    return LazyStateDict(folder, where, specs, [index, *(folder / name for name in by_shard)])


def _natural(key: str) -> list:
    """Sort key placing ``layers.2`` before ``layers.10`` (the index lists keys as plain sorted strings)."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", key)]


def _check_shard_name(index: Path, name: str) -> None:
    parts = PurePosixPath(name).parts
    if (not name or "\\" in name or "\x00" in name or PurePosixPath(name).is_absolute() or ".." in parts
            or name.startswith("~")):
        raise CheckpointFileError(index, "corrupt", f"shard name {_names([name])!r} is not a file inside the folder")


def _depth(data: bytes) -> int:
    """Deepest nesting of JSON arrays/objects, strings skipped (vectorised: no Python loop per byte)."""
    stripped = np.frombuffer(_STRING.sub(b'""', data), dtype=np.uint8)
    steps = np.zeros(stripped.shape, dtype=np.int32)
    steps[(stripped == ord("{")) | (stripped == ord("["))] = 1
    steps[(stripped == ord("}")) | (stripped == ord("]"))] = -1
    return int(np.cumsum(steps).max(initial=0))


def _repeated(keys: list[str]) -> set[str]:
    seen, repeated = set(), set()
    for key in keys:
        (repeated if key in seen else seen).add(key)
    return repeated


def _names(keys, limit: int = 5) -> str:
    keys = [str(k)[:120].encode("unicode_escape").decode("ascii") for k in keys]  # one line, whatever the file holds
    return ", ".join(keys[:limit]) + (f" (+{len(keys) - limit} more)" if len(keys) > limit else "")
