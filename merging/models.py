"""open_clip model building from a manifest's architecture.

A custom config (e.g. the demo zoo's tiny ViT) is registered in open_clip's model-config registry under its name,
so it is built by ``open_clip.create_model`` exactly like ``ViT-B-32``.  The visual tower is built on the meta
device and materialised by loading the checkpoint (no wasted random init); the text tower, needed only for
zero-shot heads, is built normally.
"""
from __future__ import annotations

import copy
import logging
from contextlib import contextmanager

import torch

from .manifest import Architecture


class ArchitectureError(ValueError):
    """An unknown open_clip model name or a config that open_clip cannot build."""


def register_architecture(arch: Architecture) -> str:
    """Make ``arch.name`` resolvable by open_clip (registering ``arch.config`` when given); returns the name."""
    import open_clip
    from open_clip import factory

    if arch.config is not None:
        existing = factory._MODEL_CONFIGS.get(arch.name)
        if existing is not None and existing != arch.config and arch.name in _BUILTIN:
            raise ArchitectureError(f"architecture config for {arch.name!r} conflicts with open_clip's built-in "
                                    "config of that name; give the custom model another name")
        config = copy.deepcopy(arch.config)
        config.setdefault("text_cfg", {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 1,
                                       "layers": 1})
        factory._MODEL_CONFIGS[arch.name] = config  # open_clip's registry (add_model_config reads files only)
    elif open_clip.get_model_config(arch.name) is None:
        raise ArchitectureError(f"unknown open_clip model {arch.name!r}; add a \"config\" to the architecture or use "
                                f"one of open_clip.list_models() (e.g. ViT-B-32-quickgelu)")
    return arch.name


def _builtin_names() -> frozenset:
    import open_clip
    return frozenset(open_clip.list_models())


_BUILTIN = _builtin_names()


@contextmanager
def _quiet():
    logger = logging.getLogger()
    level = logger.level
    logger.setLevel(max(level, logging.ERROR))  # "No pretrained weights loaded ... initialized randomly."
    try:
        yield
    finally:
        logger.setLevel(level)


def build_clip(arch: Architecture, device: str | torch.device = "cpu") -> torch.nn.Module:
    """The full open_clip CLIP model (random init; load weights afterwards), in eval mode."""
    import open_clip

    name = register_architecture(arch)
    try:
        with _quiet():
            model = open_clip.create_model(name, pretrained=None, device=device)
    except Exception as exc:  # open_clip raises RuntimeError/TypeError/KeyError for bad configs
        raise ArchitectureError(f"open_clip cannot build {name!r}: {exc}") from None
    return model.eval()


def build_visual(arch: Architecture, state: dict | None = None, device: str | torch.device = "cpu") -> torch.nn.Module:
    """The open_clip visual tower in eval mode; with ``state`` it is built on the meta device, materialised empty
    on ``device`` and filled by a strict ``load_state_dict`` (a copy), without a random init."""
    if state is None:
        return build_clip(arch, device).visual
    with torch.device("meta"):
        visual = build_clip(arch, "meta").visual
    if {n for n, _ in visual.named_buffers()} - set(visual.state_dict()):
        visual = build_clip(arch).visual  # non-persistent buffers need a real init
    else:
        visual = visual.to_empty(device=device)
    visual.load_state_dict(state, strict=True)
    return visual.to(device).eval()


def visual_shapes(arch: Architecture) -> dict[str, tuple[int, ...]]:
    """Visual state-dict key → shape, from a meta-device build (no memory, no init)."""
    with torch.device("meta"):
        visual = build_clip(arch, "meta").visual
    return {k: tuple(v.shape) for k, v in visual.state_dict().items()}


def model_config(arch: Architecture) -> dict:
    import open_clip
    return open_clip.get_model_config(register_architecture(arch))
