"""Export a merge as a Hugging Face checkpoint folder: safetensors shards of at most ``max_shard_bytes``, the
``model.safetensors.index.json`` that ``transformers``' ``from_pretrained`` reads (``metadata.total_size`` and
``weight_map``), and the base model's configuration and tokenizer files (:data:`CONFIG_FILES`) copied from the
pretrained folder.

Shards are filled in state-dict order, a new one started when the next tensor would exceed the limit (a tensor
larger than the limit gets a shard of its own), as ``transformers`` does; names are
``model-00001-of-0000N.safetensors``.  Each shard's tensors are cut from the merged flat vector one shard at a
time (views of it when no cast is needed), so the write holds θ (float32) plus at most one shard.  The folder is written under a temporary name and renamed
(:func:`merging.atomic.atomic_folder`); it must not exist, and it may not lie inside an input.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Iterable, Mapping

import torch

from ..atomic import atomic_folder, check_output_folder
from .hf_folder import INDEX

DEFAULT_MAX_SHARD = 5 << 30
CONFIG_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                "special_tokens_map.json", "added_tokens.json", "tokenizer.model", "vocab.json", "merges.txt",
                "chat_template.jinja", "chat_template.json", "preprocessor_config.json")


def plan_shards(sizes: Mapping[str, int], max_shard_bytes: int) -> list[list[str]]:
    """Keys grouped into shards in order: a shard is closed when the next tensor would take it past the limit."""
    if max_shard_bytes <= 0:
        raise ValueError("the maximum shard size must be positive")
    shards: list[list[str]] = [[]]
    filled = 0
    for key, size in sizes.items():
        if shards[-1] and filled + size > max_shard_bytes:
            shards.append([])
            filled = 0
        shards[-1].append(key)
        filled += size
    return shards


def save_sharded(folder: str | os.PathLike, space, flat: torch.Tensor, *, config_from: str | os.PathLike | None,
                 inputs: Iterable = (), max_shard_bytes: int = DEFAULT_MAX_SHARD, dtype: torch.dtype | None = None,
                 metadata: Mapping | None = None) -> Path:
    """Write θ = ``flat`` (P,) of ``space`` into a new checkpoint folder (see the module docstring); every float
    tensor in its own dtype unless ``dtype`` is given, every other tensor copied from θ0."""
    from safetensors.torch import save_file

    inputs = list(inputs)
    target = check_output_folder(folder, inputs)
    flat = flat.detach().cpu()
    order = space.base["__order__"]
    entries = space.index.by_name
    out_dtype = {k: (dtype or entries[k].dtype) if k in entries else space.base[k].dtype for k in order}
    sizes = {k: _numel(space, k) * torch.empty((), dtype=out_dtype[k]).element_size() for k in order}
    shards = plan_shards(sizes, max_shard_bytes)
    names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    extra = {k: v if isinstance(v, str) else json.dumps(v) for k, v in (metadata or {}).items()}
    with atomic_folder(target) as tmp:
        for name, keys in zip(names, shards):
            tensors = {}
            for key in keys:
                e = entries.get(key)
                source = flat[e.slice].view(e.shape) if e is not None else space.base[key]
                tensors[key] = source.to(out_dtype[key], memory_format=torch.contiguous_format)  # a view if no cast
            save_file(tensors, str(tmp / name), metadata={"format": "pt"})
            del tensors
        index = {"metadata": {"total_size": sum(sizes.values()), **extra},
                 "weight_map": {key: name for name, keys in zip(names, shards) for key in keys}}
        (tmp / INDEX).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
        if config_from is not None:
            for name in CONFIG_FILES:
                source = Path(config_from) / name
                if source.is_file():
                    shutil.copyfile(source, tmp / name)
    return target


def _numel(space, key: str) -> int:
    e = space.index.by_name.get(key)
    return e.numel if e is not None else space.base[key].numel()
