"""CALM part 1: class-balanced entropy-minimization sampling (Yan et al., ICML 2025, "CALM").

Each unlabeled sample gets the pseudo-label ŷ = argmax logits of a chosen model and the prediction entropy
H = −Σc p_c log p_c (p = softmax(logits)).  Within every predicted class c with n_c samples the ⌊ratio·n_c⌋
lowest-entropy samples are kept (ties: lower position first), so every class keeps the same fraction — as the
official ``credible_entropy_samples`` (ratio 0.9 in the latest code, 0.3 before).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


def prediction_entropy(logits: torch.Tensor) -> torch.Tensor:
    """(N,) entropy of softmax(logits) in nats."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


def class_balanced_selection(logits: torch.Tensor, ratio: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(kept positions ascending, their pseudo-labels): per predicted class the ⌊ratio·n_c⌋ lowest-entropy."""
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"sampling ratio must be in (0, 1], got {ratio}")
    predicted = logits.argmax(-1)
    entropy = prediction_entropy(logits)
    kept = []
    for c in torch.unique(predicted):
        members = (predicted == c).nonzero().squeeze(1)
        order = torch.sort(entropy[members], stable=True).indices
        kept.append(members[order[:int(members.numel() * ratio)]])
    positions = torch.sort(torch.cat(kept)).values if kept else predicted.new_zeros(0)
    return positions, predicted[positions]


@dataclass
class PseudoLabels:
    """The sampled subset of one task's unlabeled pool."""

    positions: torch.Tensor  # dataset positions kept
    targets: torch.Tensor  # their pseudo-labels
    pool: int  # images looked at
    accuracy: float | None  # pseudo-label accuracy on the kept samples (when the dataset has labels)


def sample_pseudo_labels(logits: torch.Tensor, pool_positions: torch.Tensor, ratio: float,
                         labels: torch.Tensor | None = None) -> PseudoLabels:
    """Apply :func:`class_balanced_selection` to the logits of a pool of dataset positions."""
    kept, targets = class_balanced_selection(logits, ratio)
    acc = None
    if labels is not None and kept.numel():
        acc = float((labels[kept] == targets).float().mean())
    return PseudoLabels(pool_positions[kept], targets, int(pool_positions.numel()), acc)
