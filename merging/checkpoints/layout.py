"""Recognise a checkpoint's key layout and normalise it to open_clip visual keys (plus the text tower if any).

Layouts: ``open_clip`` (full CLIP state dict, ``visual.*``), ``open_clip-visual`` (visual tower only),
``task_vectors`` (a pickled ``ImageEncoder``: ``model.visual.*``), ``hf-clip`` / ``hf-clip-vision`` (Hugging Face
``CLIPModel`` / ``CLIPVisionModel``: ``vision_model.*``).  Wrappers ``{"state_dict": ...}`` and ``module.``
prefixes (DDP) are removed first.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import torch

from .errors import CheckpointFileError
from .hf import ConversionError, hf_to_open_clip_text, hf_to_open_clip_visual, open_clip_order

_VISUAL_MARKERS = ("conv1.weight", "class_embedding")


@dataclass
class Checkpoint:
    """A loaded checkpoint: open_clip visual state (no prefix) and, when present, the open_clip text tower."""

    path: Path
    format: str
    layout: str
    visual: dict[str, torch.Tensor]
    text: dict[str, torch.Tensor] = field(default_factory=dict)


def _tensors(raw: Mapping) -> dict[str, torch.Tensor]:
    for wrapper in ("state_dict", "model_state_dict"):
        if isinstance(raw.get(wrapper), Mapping):
            raw = raw[wrapper]
    tensors = {k: v for k, v in raw.items() if isinstance(k, str) and torch.is_tensor(v)}
    for prefix in ("module.", "_orig_mod."):
        if tensors and all(k.startswith(prefix) for k in tensors):
            tensors = {k[len(prefix):]: v for k, v in tensors.items()}
    return tensors


def split_towers(path: Path, fmt: str, raw: Mapping) -> Checkpoint:
    """Normalise a raw loaded object to a :class:`Checkpoint` (raises on an unrecognised layout).  Visual keys come
    in open_clip's ``state_dict()`` order whatever the file's order (safetensors sorts keys), so every format
    gives the same flat parameter layout."""
    state = _tensors(raw)
    if not state:
        raise CheckpointFileError(path, "not a checkpoint", "no tensors found")
    pickled = any(k.startswith("model.visual.") for k in state)
    if pickled:
        state = {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")}
    try:
        if any(k.startswith("vision_model.") for k in state):
            extra = [k for k in state if not k.startswith(("vision_model.", "text_model.", "visual_projection.",
                                                            "text_projection.", "logit_scale"))]
            if extra:
                raise ConversionError(f"unexpected key(s) {', '.join(sorted(extra)[:5])}")
            text = hf_to_open_clip_text(state) if any(k.startswith("text_model.") for k in state) else {}
            layout = "hf-clip" if text else "hf-clip-vision"
            return Checkpoint(path, fmt, layout, hf_to_open_clip_visual(state), text)
    except ConversionError as exc:
        raise CheckpointFileError(path, "unrecognised layout", f"Hugging Face CLIP keys that do not convert: {exc}") \
            from None
    if any(k.startswith("visual.") for k in state):
        visual = {k[len("visual."):]: v for k, v in state.items() if k.startswith("visual.")}
        text = {k: v for k, v in state.items() if not k.startswith("visual.")}
        return Checkpoint(path, fmt, "task_vectors" if pickled else "open_clip", open_clip_order(visual), text)
    if any(k in state for k in _VISUAL_MARKERS):
        return Checkpoint(path, fmt, "open_clip-visual", open_clip_order(state))
    sample = ", ".join(sorted(state)[:4])
    raise CheckpointFileError(path, "unrecognised layout", f"not an open_clip or Hugging Face CLIP image encoder "
                                                           f"(keys like {sample})")


def check_architecture(path: Path, state: Mapping[str, torch.Tensor], expected: Mapping[str, tuple],
                       arch_name: str) -> None:
    """Compare against the model's visual state-dict shapes; name wrong architecture / missing / extra / shape."""
    have, want = set(state), set(expected)
    mismatched = [k for k in have & want if tuple(state[k].shape) != tuple(expected[k])]
    blocks = lambda keys: len({k.split(".")[2] for k in keys if k.startswith("transformer.resblocks.")})  # noqa: E731
    if (blocks(have) != blocks(want) or any(k in mismatched for k in _VISUAL_MARKERS)
            or len(have & want) < len(want) // 2):
        found = ", ".join(f"{k} {tuple(state[k].shape)}" for k in _VISUAL_MARKERS if k in state)
        raise CheckpointFileError(path, "wrong architecture",
                                  f"{blocks(have)} transformer blocks ({found or 'no ViT embedding'}); "
                                  f"{arch_name} has {blocks(want)} blocks "
                                  f"({', '.join(f'{k} {tuple(expected[k])}' for k in _VISUAL_MARKERS if k in expected)})")
    if want - have:
        raise CheckpointFileError(path, "missing keys", _list(want - have))
    if have - want:
        raise CheckpointFileError(path, "extra keys", _list(have - want))
    if mismatched:
        key = sorted(mismatched)[0]
        raise CheckpointFileError(path, "shape mismatch", f"{key} is {tuple(state[key].shape)}, {arch_name} expects "
                                                          f"{tuple(expected[key])}"
                                                          + (f" (+{len(mismatched) - 1} more)" if len(mismatched) > 1
                                                             else ""))


def _list(keys: set, limit: int = 5) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:limit]) + (f" (+{len(keys) - limit} more)" if len(keys) > limit else "")
