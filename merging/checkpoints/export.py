"""Export a merge: open_clip state dict or Hugging Face CLIP checkpoint (safetensors), TALL's compressed form, or a
sharded Hugging Face checkpoint folder of any architecture (:mod:`.sharded_export`).  Writes are atomic
(:func:`merging.atomic.atomic_path`) and never replace an input file."""
from __future__ import annotations

import json
import os
from typing import Iterable, Mapping

import torch

from ..atomic import atomic_path, ensure_not_input
from .hf import open_clip_text_to_hf, open_clip_visual_to_hf

EXPORT_FORMATS = ("open_clip", "hf", "tall-compressed", "sharded")


def _save(path, tensors: Mapping[str, torch.Tensor], inputs: Iterable, metadata: Mapping | None) -> None:
    """safetensors writes the tensors' bytes as they are: no copy unless one is not contiguous (views of one
    merged vector are fine; tensors that overlap in memory are refused by safetensors itself)."""
    from safetensors.torch import save_file

    ensure_not_input(path, inputs)
    owned = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    meta = {"format": "pt", **{k: v if isinstance(v, str) else json.dumps(v) for k, v in (metadata or {}).items()}}
    with atomic_path(path) as tmp:
        save_file(owned, str(tmp), metadata=meta)


def save_open_clip(path: str | os.PathLike, visual: Mapping[str, torch.Tensor],
                   text: Mapping[str, torch.Tensor] | None = None, *, inputs: Iterable = (),
                   metadata: Mapping | None = None) -> None:
    """``visual.*`` keys (plus the text tower when given: a full CLIP state dict that
    ``open_clip.create_model(name, pretrained=path)`` loads)."""
    tensors = {"visual." + k: v for k, v in visual.items()}
    tensors.update(text or {})
    _save(path, tensors, inputs, metadata)


def save_hf(path: str | os.PathLike, visual: Mapping[str, torch.Tensor],
            text: Mapping[str, torch.Tensor] | None = None, *, projection: bool = True, inputs: Iterable = (),
            metadata: Mapping | None = None) -> None:
    """A Hugging Face ``CLIPVisionModel`` state dict (``CLIPVisionModelWithProjection`` with ``projection``;
    ``CLIPModel`` when the text tower is given)."""
    tensors = open_clip_visual_to_hf(visual, projection=projection or bool(text))
    if text:
        tensors.update(open_clip_text_to_hf(text))
    _save(path, tensors, inputs, metadata)


def export_merge(path: str | os.PathLike, space, result, fmt: str = "open_clip", *,
                 text: Mapping[str, torch.Tensor] | None = None, inputs: Iterable = (), task: int | None = None,
                 dtype: torch.dtype | None = None, config_from: str | os.PathLike | None = None,
                 max_shard_bytes: int | None = None) -> None:
    """Write ``θ0 + result.task_delta(task)`` (the shared merge when ``task`` is None) in ``fmt``; ``sharded``
    writes the folder ``path`` with shards of at most ``max_shard_bytes`` and the config files of the folder
    ``config_from``."""
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; choose one of {', '.join(EXPORT_FORMATS)}")
    if fmt == "tall-compressed":
        from ..compressed import save_compressed

        save_compressed(path, space, result, inputs=inputs)
        return
    delta = result.delta if task is None else result.task_delta(task)
    metadata = {"mergescope_method": result.method,
                "mergescope_params": {k: v for k, v in result.params.items()},
                "mergescope_tasks": list(space.task_names),
                **({"mergescope_modifiers": result.modifiers} if result.modifiers else {}),
                **({"mergescope_task": space.task_names[task]} if task is not None else {})}
    if fmt == "sharded":
        from .sharded_export import DEFAULT_MAX_SHARD, save_sharded

        save_sharded(path, space, space.theta0 + delta.to(space.theta0.device, torch.float32),
                     config_from=config_from, inputs=inputs, max_shard_bytes=max_shard_bytes or DEFAULT_MAX_SHARD,
                     dtype=dtype, metadata=metadata)
        return
    save = save_open_clip if fmt == "open_clip" else save_hf
    save(path, space.state_dict(delta, dtype=dtype, copy=False), text, inputs=inputs, metadata=metadata)
