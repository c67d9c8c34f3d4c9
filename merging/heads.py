"""Classification heads: logits = normalize(features) @ Wᵀ + b (task_vectors' ``ClassificationHead``).

A head comes from a weight file (``weight`` (C, D), optional ``bias`` (C,)) or is built zero-shot from class names
and prompt templates with the open_clip text tower, as task_vectors ``get_zeroshot_classifier`` does:
W_c = logit_scale · normalize(mean_templates normalize(text_features(template(c)))) (Radford et al., 2021).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F


class ClassificationHead(nn.Module):
    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None):
        super().__init__()
        if weight.ndim != 2:
            raise ValueError(f"head weight must be (classes, features), got shape {tuple(weight.shape)}")
        self.weight = nn.Parameter(weight.detach().float().clone(), requires_grad=False)
        self.bias = None if bias is None else nn.Parameter(bias.detach().float().clone(), requires_grad=False)

    @property
    def num_classes(self) -> int:
        return self.weight.shape[0]

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        features = features / features.norm(dim=-1, keepdim=True)
        return F.linear(features, self.weight.to(features.dtype),
                        None if self.bias is None else self.bias.to(features.dtype))


@torch.inference_mode()
def zero_shot_weights(clip_model: nn.Module, tokenizer, classnames: Sequence[str], templates: Sequence[str],
                      device: torch.device | str = "cpu") -> torch.Tensor:
    """(C, D) zero-shot weights: logit_scale · normalized mean of the normalized template embeddings per class."""
    clip_model = clip_model.to(device).eval()
    rows = []
    for name in classnames:
        tokens = tokenizer([t.replace("{}", name) for t in templates]).to(device)
        embeddings = clip_model.encode_text(tokens).float()
        embeddings = embeddings / embeddings.norm(dim=-1, keepdim=True)
        mean = embeddings.mean(0)
        rows.append(mean / mean.norm())
    return torch.stack(rows).cpu() * clip_model.logit_scale.exp().float().cpu()
