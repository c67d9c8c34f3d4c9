"""The parameter index: where each state-dict tensor lives in the flat (P,) vector, and what it is.

Each entry records name, shape, offset, numel, dtype, the layer/block it belongs to (``embed``, ``block.07``,
``head``) and a kind (``attn.in_proj``, ``attn.out_proj``, ``mlp.c_fc``, ``mlp.c_proj``, ``ln``, ``embedding``,
``proj``, ``other``; decoder LLMs add ``mlp.gate``) so that P-sized results map back to state dicts and
per-layer statistics.  Keys follow open_clip (``visual.transformer.resblocks.N``), the Hugging Face CLIP vision
tower (``vision_model.encoder.layers.N``), Hugging Face decoder LLMs (Llama/Qwen/Mistral:
``model.layers.N.self_attn.{q,k,v,o}_proj``, ``mlp.{gate,up,down}_proj``, ``input_layernorm``,
``model.embed_tokens``, ``model.norm``, ``lm_head``) and anything else with a numbered block component.
"""
from __future__ import annotations

import bisect
import re
from dataclasses import dataclass

import torch

_BLOCK = re.compile(r"(?:^|\.)(?:resblocks|layers|blocks|layer|h)\.(\d+)\.")
_KINDS = (  # first match wins
    (re.compile(r"(attn\.in_proj|self_attn\.(q|k|v)_proj|attention\.(query|key|value))"), "attn.in_proj"),
    (re.compile(r"(attn\.out_proj|self_attn\.(out|o)_proj|attention\.output\.dense)"), "attn.out_proj"),
    (re.compile(r"mlp\.gate_proj"), "mlp.gate"),
    (re.compile(r"(mlp\.c_fc|mlp\.fc1|mlp\.up_proj|intermediate\.dense)"), "mlp.c_fc"),
    (re.compile(r"(mlp\.c_proj|mlp\.fc2|mlp\.down_proj|output\.dense)"), "mlp.c_proj"),
    (re.compile(r"(ln_|layer_norm|layernorm|layrnorm|(\.|_)norm)"), "ln"),
    (re.compile(r"(conv1|patch_embed|class_embedding|positional_embedding|position_embedding|embeddings|"
                r"embed_tokens)"), "embedding"),
    (re.compile(r"(^|\.)(proj|visual_projection|head|lm_head)(\.weight|\.bias)?$"), "proj"),
)


def classify(name: str) -> tuple[str, str]:
    """Return (layer, kind) for a state-dict key."""
    block = _BLOCK.search(name)
    kind = next((k for pattern, k in _KINDS if pattern.search(name)), "other")
    if block:
        return f"block.{int(block.group(1)):02d}", kind
    if kind in ("embedding",) or re.search(r"(ln_pre|pre_layrnorm|pre_layernorm)", name):
        return "embed", kind
    return "head", kind


@dataclass(frozen=True)
class ParamEntry:
    name: str
    shape: tuple[int, ...]
    offset: int
    numel: int
    dtype: torch.dtype
    layer: str
    kind: str

    @property
    def slice(self) -> slice:
        return slice(self.offset, self.offset + self.numel)


class ParamIndex:
    """Ordered entries of the merged (floating-point) tensors; ``entries[i].offset`` is cumulative."""

    def __init__(self, entries: list[ParamEntry]):
        self.entries = entries
        self.by_name = {e.name: e for e in entries}
        self.numel = sum(e.numel for e in entries)

    @classmethod
    def from_state_dict(cls, state: dict) -> "ParamIndex":
        entries, offset = [], 0
        for name, tensor in state.items():
            if not torch.is_tensor(tensor) or not tensor.is_floating_point():
                continue
            layer, kind = classify(name)
            entries.append(ParamEntry(name, tuple(tensor.shape), offset, tensor.numel(), tensor.dtype, layer, kind))
            offset += tensor.numel()
        return cls(entries)

    def __len__(self) -> int:
        return len(self.entries)

    def names(self) -> list[str]:
        return [e.name for e in self.entries]

    def locate(self, flat_position: int) -> ParamEntry:
        """The entry holding flat element ``flat_position`` (for error messages)."""
        offsets = [e.offset for e in self.entries]
        return self.entries[bisect.bisect_right(offsets, flat_position) - 1]

    def entry_ids(self, device: torch.device) -> torch.Tensor:
        """(P,) int32: the entry number of every flat element (for per-tensor bincounts)."""
        numels = torch.tensor([e.numel for e in self.entries], device=device)
        return torch.repeat_interleave(torch.arange(len(self.entries), device=device, dtype=torch.int32), numels)

    def to_state_dict(self, flat: torch.Tensor, extras: dict, order: list[str],
                      dtype: torch.dtype | None = None, copy: bool = True) -> dict:
        """A CPU state dict in ``order``: float entries cut from ``flat`` (cast to their own dtype unless
        ``dtype`` is given), every other key copied from ``extras``.  With ``copy=False`` tensors that need no
        cast are views of ``flat`` / the tensors of ``extras`` (to write them out, not to keep)."""
        flat = flat.cpu()
        out = {}
        for key in order:
            e = self.by_name.get(key)
            out[key] = (flat[e.slice].reshape(e.shape).to(dtype or e.dtype, copy=copy) if e
                        else extras[key].clone() if copy else extras[key])
        return out

    def table(self):
        import pandas as pd
        return pd.DataFrame([{"name": e.name, "shape": "×".join(map(str, e.shape)) or "scalar", "numel": e.numel,
                              "offset": e.offset, "layer": e.layer, "kind": e.kind, "dtype": str(e.dtype)
                              .replace("torch.", "")} for e in self.entries])

    def layer_order(self) -> list[str]:
        seen = dict.fromkeys(["embed"] + sorted({e.layer for e in self.entries if e.layer.startswith("block")})
                             + ["head"])
        present = {e.layer for e in self.entries}
        return [layer for layer in seen if layer in present]
