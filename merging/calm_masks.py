"""CALM part 3: consensus-aware mask optimisation (Yan et al., ICML 2025, "CALM").

Merging task j into the current merge τseq uses real-valued scores S (P,) and the soft mask σ(S):

    θ(S) = θ0 + τseq + σ(S) ⊙ (τj − τseq)          (= θ0 + (1 − σ(S)) ⊙ τseq + σ(S) ⊙ τj)
    loss(S) = Σ_i Σ_b CE(f_θ(S)(x_ib), ŷ_ib) + (sparsity / lr) · Σ_p σ(S_p)
    S ← S − lr · ∇_S loss

summed over the sampled pseudo-labelled batches b of every task i merged so far (the consensus), each batch's
CE a batch mean (the official code sums the batches' gradients).  Plain gradient descent with the official
learning rate 1e7 (``yankd22/CALM`` ``mask_merging.py``): ∂CE/∂S per element is tiny on ~10⁸ parameters.
The L1 term is normalised by the learning rate so that its step is decoupled from it, as in the official
update ``S -= lr·g·σ'(S) − l1_strength·(±σ'(S))``: with strength 1 each score moves by σ'(S) ≤ 0.25 per
update.  Unlike the official code, whose ±σ'(S) pushes each score further to the side it is on, this is the
true L1 gradient (every score pulled towards "off"), as the paper's sparsity objective states.

Init: S = +init_logit on the k = ⌊init_fraction·P⌋ largest |τj| (|τj| ≥ the k-th largest, found with the exact
:func:`merging.select.kth_smallest`), −init_logit elsewhere.  Result: Mj = round(σ(S)) = 1{S > 0}.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

from .functional import LogitsFn, PassStats, batch_pass
from .param_index import ParamIndex
from .select import kth_smallest
from .unlabeled import Batch


def init_scores(tau: torch.Tensor, fraction: float, logit: float) -> torch.Tensor:
    """S0: +logit on the ⌊fraction·P⌋ largest |τ| (ties at the threshold included), −logit elsewhere."""
    magnitude = tau.abs()
    k = int(math.floor(fraction * magnitude.numel()))
    scores = torch.full_like(magnitude, -logit, dtype=torch.float32)
    if k > 0:
        threshold = kth_smallest(magnitude, magnitude.numel() - k + 1)
        scores[magnitude >= threshold] = logit
    return scores


def pseudo_label_ce(logits: torch.Tensor, batch: Batch) -> torch.Tensor:
    """Batch-mean cross-entropy against the sampled pseudo-labels."""
    return F.cross_entropy(logits, batch.targets)


def soft_theta(scores: torch.Tensor, base: torch.Tensor, diff: torch.Tensor) -> torch.Tensor:
    """θ(S) = base + σ(S) ⊙ diff with base = θ0 + τseq and diff = τj − τseq."""
    return torch.addcmul(base, torch.sigmoid(scores), diff)


def mask_loss(scores: torch.Tensor, base: torch.Tensor, diff: torch.Tensor, index: ParamIndex,
              batches: Sequence[Batch], logits_fn: LogitsFn, sparsity: float, lr: float) -> PassStats:
    """loss(S) on the given batches (no gradient)."""
    stats, _ = batch_pass(soft_theta(scores, base, diff), index, batches, logits_fn, pseudo_label_ce,
                          with_grad=False)
    stats.regulariser = sparsity / lr * float(torch.sigmoid(scores).sum())
    return stats


def mask_update(scores: torch.Tensor, base: torch.Tensor, diff: torch.Tensor, index: ParamIndex,
                batches: Sequence[Batch], logits_fn: LogitsFn, sparsity: float, lr: float) -> PassStats:
    """One gradient step on ``scores`` in place; returns loss(S) before the step.

    ∇_S loss = (∂CE/∂θ ⊙ diff + sparsity/lr) ⊙ σ'(S), so S −= (lr·∂CE/∂θ ⊙ diff + sparsity) ⊙ σ'(S)."""
    stats, grad = batch_pass(soft_theta(scores, base, diff), index, batches, logits_fn, pseudo_label_ce,
                             with_grad=True)
    sig = torch.sigmoid(scores)
    stats.regulariser = sparsity / lr * float(sig.sum())
    step = grad.mul_(diff).mul_(lr).add_(sparsity)
    scores.sub_(step.mul_(sig).mul_(1.0 - sig))
    return stats
