"""Safe checkpoint loading (safetensors, torch ``weights_only``, a restricted unpickler for pickled modules),
layout normalisation to open_clip visual keys, Hugging Face CLIP conversion and export."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

import torch

from .errors import PROBLEMS, CheckpointFileError, LimitError, UnsafePickleError
from .export import EXPORT_FORMATS, export_merge, save_hf, save_open_clip
from .formats import SAFETENSORS_DTYPES, detect_format, read_tensors, safetensors_header, torch_zip_mappable
from .hf import hf_to_open_clip_text, hf_to_open_clip_visual, open_clip_text_to_hf, open_clip_visual_to_hf
from .limits import check_storage
from .layout import Checkpoint, check_architecture, fill_frozen_projection, split_towers


def load_checkpoint(path: str | os.PathLike, expected: Mapping[str, tuple] | None = None,
                    arch_name: str = "the model", keep_text: bool = False) -> Checkpoint:
    """Load any supported checkpoint, normalised to open_clip visual keys; with ``expected`` (visual key →
    shape) the keys and shapes are checked.  The text tower is kept only when ``keep_text``."""
    path = Path(path)
    fmt, raw = read_tensors(path)
    checkpoint = split_towers(path, fmt, raw)
    if not keep_text:
        checkpoint.text = {}
    check_storage(path, {**checkpoint.visual, **checkpoint.text})
    if expected is not None:
        check_architecture(path, checkpoint.visual, expected, arch_name)
    return checkpoint


def inspect_checkpoint(path: str | os.PathLike, expected: Mapping[str, tuple] | None = None,
                       arch_name: str = "the model", keep_text: bool = False) -> Checkpoint | None:
    """Check a checkpoint's layout, keys and shapes cheaply (safetensors: header only, as meta tensors; torch zip:
    memory-mapped, after the checks of :mod:`.limits`).  Returns None for pickled-module files, which only a full
    read can check."""
    path = Path(path)
    fmt = detect_format(path)
    if fmt == "safetensors":
        header = safetensors_header(path)
        try:
            raw = {k: torch.empty(v["shape"], dtype=SAFETENSORS_DTYPES.get(v["dtype"], torch.float32), device="meta")
                   for k, v in header.items()}
        except RuntimeError as exc:  # e.g. an empty tensor whose other dimensions overflow torch's strides
            raise CheckpointFileError(path, "corrupt", f"a tensor shape torch cannot represent ({exc})") from None
    else:
        mappable = torch_zip_mappable(path, fmt)
        try:
            raw = torch.load(path, map_location="cpu", weights_only=True, mmap=mappable)
        except Exception:
            return None  # pickled modules (or damage): the full load reports it
        if not isinstance(raw, dict):
            return None
    checkpoint = split_towers(path, fmt, raw)
    if not keep_text:
        checkpoint.text = {}
    check_storage(path, {**checkpoint.visual, **checkpoint.text})
    if expected is not None:
        check_architecture(path, checkpoint.visual, expected, arch_name)
    return checkpoint


def load_visual(path: str | os.PathLike, expected: Mapping[str, tuple] | None = None,
                arch_name: str = "the model") -> dict[str, torch.Tensor]:
    """The open_clip visual state dict of a checkpoint file (see :func:`load_checkpoint`)."""
    return load_checkpoint(path, expected, arch_name).visual


def load_head_tensors(path: str | os.PathLike) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(weight (C, D), bias (C,) or None)`` of a head file: safetensors/torch ``{weight, bias}`` or a pickled
    task_vectors ``ClassificationHead``."""
    path = Path(path)
    _, raw = read_tensors(path)
    tensors = {k: v for k, v in raw.items() if torch.is_tensor(v)}
    check_storage(path, tensors)
    prefix = ""
    if "weight" not in tensors:  # e.g. a pickled ImageClassifier: classification_head.weight
        heads = [k[: -len("weight")] for k, v in tensors.items() if k.endswith(".weight") and v.ndim == 2]
        prefix = heads[0] if len(heads) == 1 else ""
    weight, bias = tensors.get(prefix + "weight"), tensors.get(prefix + "bias")
    if weight is None or weight.ndim != 2 or not weight.is_floating_point():
        raise CheckpointFileError(path, "not a head", f"expected a 2-D float 'weight' (classes × features); "
                                                      f"found {', '.join(sorted(tensors)[:5]) or 'no tensors'}")
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise CheckpointFileError(path, "shape mismatch", f"head bias {tuple(bias.shape)} for weight "
                                                          f"{tuple(weight.shape)}")
    return weight, bias


__all__ = ["Checkpoint", "CheckpointFileError", "EXPORT_FORMATS", "LimitError", "PROBLEMS", "UnsafePickleError",
           "check_architecture", "detect_format", "fill_frozen_projection", "export_merge", "hf_to_open_clip_text",
           "hf_to_open_clip_visual", "inspect_checkpoint", "load_checkpoint", "load_head_tensors", "load_visual",
           "open_clip_text_to_hf", "open_clip_visual_to_hf", "read_tensors", "safetensors_header", "save_hf",
           "save_open_clip"]
