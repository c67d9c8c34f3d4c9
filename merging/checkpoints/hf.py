"""Hugging Face CLIP <-> open_clip key conversion (exact: concatenation, splitting and transposes only).

Vision tower (``CLIPVisionModel``: ``vision_model.*``; ``visual_projection.weight`` in CLIPVisionModelWithProjection
and CLIPModel) ↔ open_clip visual keys without the ``visual.`` prefix; text tower (``text_model.*``,
``text_projection.weight``, ``logit_scale`` of a CLIPModel) ↔ open_clip's text keys.  q/k/v projections are
concatenated into ``in_proj`` (rows q, k, v, as ``nn.MultiheadAttention``); projections are stored transposed
(open_clip: x @ proj, HF: Linear(x) = x @ Wᵀ).  The derived ``position_ids`` buffer is dropped.
"""
from __future__ import annotations

import re
from typing import Mapping

import torch

_LAYER_RENAMES = (("self_attn.out_proj.", "attn.out_proj."), ("layer_norm1.", "ln_1."), ("layer_norm2.", "ln_2."),
                  ("mlp.fc1.", "mlp.c_fc."), ("mlp.fc2.", "mlp.c_proj."))
_VISION_TOP = (("embeddings.class_embedding", "class_embedding"),
               ("embeddings.position_embedding.weight", "positional_embedding"),
               ("embeddings.patch_embedding.weight", "conv1.weight"),
               ("pre_layrnorm.weight", "ln_pre.weight"), ("pre_layrnorm.bias", "ln_pre.bias"),
               ("post_layernorm.weight", "ln_post.weight"), ("post_layernorm.bias", "ln_post.bias"))
_TEXT_TOP = (("embeddings.token_embedding.weight", "token_embedding.weight"),
             ("embeddings.position_embedding.weight", "positional_embedding"),
             ("final_layer_norm.weight", "ln_final.weight"), ("final_layer_norm.bias", "ln_final.bias"))
_HF_LAYER = re.compile(r"^encoder\.layers\.(\d+)\.(.+)$")
_OC_LAYER = re.compile(r"^transformer\.resblocks\.(\d+)\.(.+)$")
_DERIVED = ("embeddings.position_ids",)


class ConversionError(ValueError):
    """Keys that have no counterpart in the other layout."""


def _own(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().clone(memory_format=torch.contiguous_format)


def _tower_from_hf(state: Mapping[str, torch.Tensor], hf_prefix: str, top, what: str,
                   projection: tuple[str, str]) -> dict:
    """``state``'s ``hf_prefix`` tower in open_clip keys, plus its (HF key, open_clip key) projection transposed."""
    tower = {k[len(hf_prefix):]: v for k, v in state.items() if k.startswith(hf_prefix)}
    out, layers = {}, {}
    renames = dict(top)
    for key, value in tower.items():
        if key in _DERIVED:
            continue
        match = _HF_LAYER.match(key)
        if match:
            layers.setdefault(int(match.group(1)), {})[match.group(2)] = value
        elif key in renames:
            out[renames[key]] = value
        else:
            raise ConversionError(f"unexpected {what} key {key!r}")
    for i in sorted(layers):
        layer, prefix = dict(layers[i]), f"transformer.resblocks.{i}."
        for part in ("weight", "bias"):
            qkv = [layer.pop(f"self_attn.{p}_proj.{part}", None) for p in "qkv"]
            if any(t is None for t in qkv):
                raise ConversionError(f"layer {i}: q/k/v_proj.{part} incomplete")
            out[f"{prefix}attn.in_proj_{part}"] = torch.cat(qkv, 0)
        for key, value in layer.items():
            new = next((key.replace(a, b, 1) for a, b in _LAYER_RENAMES if key.startswith(a)), None)
            if new is None:
                raise ConversionError(f"unexpected {what} key encoder.layers.{i}.{key}")
            out[prefix + new] = value
    hf_key, oc_key = projection
    if hf_key in state:
        out[oc_key] = _own(state[hf_key].t())
    return out


def _tower_to_hf(tower: Mapping[str, torch.Tensor], top, what: str) -> dict:
    out = {}
    renames = {b: a for a, b in top}
    for key, value in tower.items():
        match = _OC_LAYER.match(key)
        if match:
            i, rest = match.groups()
            prefix = f"encoder.layers.{i}."
            if rest in ("attn.in_proj_weight", "attn.in_proj_bias"):
                part = rest.rsplit("_", 1)[1]
                for name, chunk in zip("qkv", value.chunk(3, 0)):
                    out[f"{prefix}self_attn.{name}_proj.{part}"] = _own(chunk)
                continue
            new = next((rest.replace(b, a, 1) for a, b in _LAYER_RENAMES if rest.startswith(b)), None)
            if new is None:
                raise ConversionError(f"open_clip {what} key {key!r} has no Hugging Face CLIP counterpart")
            out[prefix + new] = _own(value)
        elif key in renames:
            out[renames[key]] = _own(value)
        else:
            raise ConversionError(f"open_clip {what} key {key!r} has no Hugging Face CLIP counterpart")
    return out


def hf_to_open_clip_visual(state: Mapping[str, torch.Tensor]) -> dict:
    """``vision_model.*`` (+ ``visual_projection.weight``) → open_clip visual keys in open_clip's order."""
    return open_clip_order(_tower_from_hf(state, "vision_model.", _VISION_TOP, "vision",
                                          ("visual_projection.weight", "proj")))


def open_clip_visual_to_hf(visual: Mapping[str, torch.Tensor], projection: bool = True) -> dict:
    """open_clip visual keys → ``vision_model.*`` (+ ``visual_projection.weight`` when ``projection``)."""
    tower = {k: v for k, v in visual.items() if k != "proj"}
    out = {"vision_model." + k: v for k, v in _tower_to_hf(tower, _VISION_TOP, "visual").items()}
    if projection and "proj" in visual:
        out["visual_projection.weight"] = _own(visual["proj"].t())
    return out


def hf_to_open_clip_text(state: Mapping[str, torch.Tensor]) -> dict:
    """``text_model.*``, ``text_projection.weight``, ``logit_scale`` → open_clip text keys."""
    out = _tower_from_hf(state, "text_model.", _TEXT_TOP, "text", ("text_projection.weight", "text_projection"))
    if "logit_scale" in state:
        out["logit_scale"] = state["logit_scale"]
    return out


def open_clip_text_to_hf(text: Mapping[str, torch.Tensor]) -> dict:
    tower = {k: v for k, v in text.items() if k not in ("text_projection", "logit_scale")}
    out = {"text_model." + k: v for k, v in _tower_to_hf(tower, _TEXT_TOP, "text").items()}
    if "text_projection" in text:
        out["text_projection.weight"] = _own(text["text_projection"].t())
    if "logit_scale" in text:
        out["logit_scale"] = _own(text["logit_scale"])
    return out


_TOP_ORDER = ("class_embedding", "positional_embedding", "proj", "conv1.weight", "ln_pre.weight", "ln_pre.bias")
_TAIL_ORDER = ("ln_post.weight", "ln_post.bias")
_BLOCK_ORDER = ("ln_1.weight", "ln_1.bias", "attn.in_proj_weight", "attn.in_proj_bias", "attn.out_proj.weight",
                "attn.out_proj.bias", "ln_2.weight", "ln_2.bias", "mlp.c_fc.weight", "mlp.c_fc.bias",
                "mlp.c_proj.weight", "mlp.c_proj.bias")


def open_clip_order(state: dict) -> dict:
    """Keys in the order ``open_clip``'s VisionTransformer.state_dict() lists them."""
    def rank(key: str):
        match = _OC_LAYER.match(key)
        if match:
            rest = match.group(2)
            return (1, int(match.group(1)), _BLOCK_ORDER.index(rest) if rest in _BLOCK_ORDER else 99, key)
        if key in _TOP_ORDER:
            return (0, _TOP_ORDER.index(key), 0, key)
        if key in _TAIL_ORDER:
            return (2, _TAIL_ORDER.index(key), 0, key)
        return (3, 0, 0, key)
    return {k: state[k] for k in sorted(state, key=rank)}
