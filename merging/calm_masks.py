"""CALM part 3: consensus-aware mask optimisation (Yan et al., ICML 2025, "CALM").

Merging task j into the current merge τseq uses real-valued scores S (P,) and the soft mask σ(S):

    θ(S) = θ0 + τseq + σ(S) ⊙ (τj − τseq)          (= θ0 + (1 − σ(S)) ⊙ τseq + σ(S) ⊙ τj)
    u = ∂CE/∂σ(S) = Σ_i Σ_b ∂CE(f_θ(S)(x_ib), ŷ_ib)/∂θ ⊙ (τj − τseq)
    S ← S − (lr·u + sparsity·r(S)) ⊙ σ'(S)

summed over the sampled pseudo-labelled batches b of every task i merged so far (the consensus), each batch's
CE a batch mean (the official code sums the batches' gradients).  Plain gradient descent with the official
learning rate 1e7 (``yankd22/CALM`` ``mask_merging.py``), or the scale-free :func:`auto_lr`.  The L1 step is
decoupled from lr, as in the official update, with one of two forms r(S) (``l1_form``):

* ``"gradient"``: r = 1, the true gradient of (sparsity/lr)·Σ_p σ(S_p): every score pulled towards "off", the
  paper's sparsity objective;
* ``"official"``: r = −sign(S) (``reg_term = l1·where(S > 0, σ', −σ')``, ``S -= g·σ' − reg_term``): each score
  pushed further to the side it is on, the gradient of −(sparsity/lr)·Σ_p sign(S_p)·σ(S_p) — a binarising pull
  that keeps a mask that turned on, on.

For a score that is off (S < 0) both forms oppose turning on by sparsity·σ'(S) per update.

Init (``init_rule``): with k = ⌊init_fraction·P⌋ and t the k-th largest |τj| (exact
:func:`merging.select.kth_smallest`), S = +init_logit where ``"top_k"``: |τj| ≥ t (the k largest, ties at t
included), ``"official"``: |τj| > t (``q[|p| > values.min()]`` of ``torch.topk``: the k-th largest itself and
its ties stay off); −init_logit elsewhere (k = 0: all off).  Result: Mj = round(σ(S)) = 1{S > 0}.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from .functional import LogitsFn, PassStats, batch_pass
from .param_index import ParamIndex
from .select import kth_smallest
from .unlabeled import Batch

INIT_RULES = ("top_k", "official")
L1_FORMS = ("gradient", "official")


def kth_largest(values: torch.Tensor, k: int) -> torch.Tensor:
    """The k-th largest (1-based) element of ``values``."""
    return kth_smallest(values, values.numel() - k + 1)


def init_scores(tau: torch.Tensor, fraction: float, logit: float, rule: str = "top_k") -> torch.Tensor:
    """S0: +logit on the ⌊fraction·P⌋ largest |τ| (``rule`` says what happens at the threshold), −logit elsewhere."""
    if rule not in INIT_RULES:
        raise ValueError(f"init_rule must be one of {', '.join(INIT_RULES)}; got {rule!r}")
    magnitude = tau.abs()
    k = int(math.floor(fraction * magnitude.numel()))
    scores = torch.full_like(magnitude, -logit, dtype=torch.float32)
    if k > 0:
        threshold = kth_largest(magnitude, k)
        scores[magnitude >= threshold if rule == "top_k" else magnitude > threshold] = logit
    return scores


def flip_margin(logit: float) -> float:
    """M(L) = ∫_{−L}^{0} dS/σ'(S) = e^L − e^−L + 2L: the summed drive that moves a score from −L to 0 under
    dS = −drive·σ'(S) (1/σ'(S) = e^S + 2 + e^−S)."""
    return math.exp(logit) - math.exp(-logit) + 2.0 * logit


def auto_lr(u: torch.Tensor, scores: torch.Tensor, logit: float, fraction: float, steps: int,
            sparsity: float) -> float:
    """The scale-free learning rate from the first update's attribution ``u`` = ∂CE/∂θ ⊙ (τj − τseq).

    Each score's drive towards zero is a_p = sign_p·u_p (sign_p = +1 on, −1 off: the update moves S_p by
    −(lr·u_p + L1)·σ'(S_p)); a_q is its k-th largest value, k = max(1, ⌈fraction·P⌉).  Held constant, a drive a
    moves an off score from −L to 0 in n updates when (lr·a − sparsity)·n = M(L) (:func:`flip_margin`), so

        lr = (M(L)/steps + sparsity) / a_q,     L = init_logit = |S0|, n = steps (the stage's schedule)

    lets exactly the top ``fraction`` of the scores cross zero within the schedule.  Rescaling the loss rescales
    u and a_q alike, so lr·u — the update — is unchanged (scale-free).  The rule is exact for the scores that
    start off (all but ⌊init_fraction·P⌋), which the L1 opposes in both forms."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"lr_fraction must be in (0, 1], got {fraction}")
    drive = torch.where(scores > 0, u, -u)
    k = max(1, math.ceil(fraction * drive.numel()))
    top = float(kth_largest(drive, k))
    if not top > 0.0:
        raise ValueError(f"lr auto: fewer than {fraction:g} of the scores have a gradient towards flipping "
                         f"(the first update's {k}-th largest drive is {top:g}); give lr a number")
    return (flip_margin(logit) / max(steps, 1) + sparsity) / top


def pseudo_label_ce(logits: torch.Tensor, batch: Batch) -> torch.Tensor:
    """Batch-mean cross-entropy against the sampled pseudo-labels."""
    return F.cross_entropy(logits, batch.targets)


def soft_theta(scores: torch.Tensor, base: torch.Tensor, diff: torch.Tensor) -> torch.Tensor:
    """θ(S) = base + σ(S) ⊙ diff with base = θ0 + τseq and diff = τj − τseq."""
    return torch.addcmul(base, torch.sigmoid(scores), diff)


def l1_weights(scores: torch.Tensor, form: str) -> torch.Tensor:
    """r(S) of the module docstring: 1 (``"gradient"``) or −sign(S) with sign(0) = −1 (``"official"``)."""
    if form not in L1_FORMS:
        raise ValueError(f"l1_form must be one of {', '.join(L1_FORMS)}; got {form!r}")
    if form == "gradient":
        return torch.ones_like(scores)
    return torch.where(scores > 0, -1.0, 1.0)


def regulariser(scores: torch.Tensor, sparsity: float, lr: float, form: str) -> float:
    """The L1 term whose gradient the update follows: (sparsity/lr)·Σ r(S)·σ(S)."""
    return sparsity / lr * float((l1_weights(scores, form) * torch.sigmoid(scores)).sum())


def mask_loss(scores: torch.Tensor, base: torch.Tensor, diff: torch.Tensor, index: ParamIndex,
              batches: Sequence[Batch], logits_fn: LogitsFn, sparsity: float, lr: float,
              form: str = "gradient") -> PassStats:
    """loss(S) on the given batches (no gradient)."""
    stats, _ = batch_pass(soft_theta(scores, base, diff), index, batches, logits_fn, pseudo_label_ce,
                          with_grad=False)
    stats.regulariser = regulariser(scores, sparsity, lr, form)
    return stats


def mask_attribution(scores: torch.Tensor, base: torch.Tensor, diff: torch.Tensor, index: ParamIndex,
                     batches: Sequence[Batch], logits_fn: LogitsFn) -> tuple[PassStats, torch.Tensor]:
    """(CE stats at S, u = ∂CE/∂θ ⊙ diff): the gradient of the summed CE w.r.t. the soft mask σ(S)."""
    stats, grad = batch_pass(soft_theta(scores, base, diff), index, batches, logits_fn, pseudo_label_ce,
                             with_grad=True)
    return stats, grad.mul_(diff)


def apply_update(scores: torch.Tensor, u: torch.Tensor, sparsity: float, lr: float, form: str) -> None:
    """S −= (lr·u + sparsity·r(S)) ⊙ σ'(S) in place (``u`` is consumed)."""
    sig = torch.sigmoid(scores)
    step = u.mul_(lr).add_(l1_weights(scores, form), alpha=sparsity)
    scores.sub_(step.mul_(sig).mul_(1.0 - sig))


@dataclass(frozen=True)
class AutoLr:
    """``lr = "auto"``: :func:`auto_lr` of the stage's first update (then kept for the stage)."""

    fraction: float
    steps: int
    logit: float

    def __call__(self, u: torch.Tensor, scores: torch.Tensor, sparsity: float) -> float:
        return auto_lr(u, scores, self.logit, self.fraction, self.steps, sparsity)


def mask_update(scores: torch.Tensor, base: torch.Tensor, diff: torch.Tensor, index: ParamIndex,
                batches: Sequence[Batch], logits_fn: LogitsFn, sparsity: float, lr: float | AutoLr,
                form: str = "gradient") -> tuple[PassStats, float]:
    """One step on ``scores`` in place; returns (loss(S) before the step, the lr used: ``lr`` or the AutoLr's
    value on this step's gradients).  ``form="gradient"`` is gradient descent on CE + (sparsity/lr)·Σ σ(S)."""
    stats, u = mask_attribution(scores, base, diff, index, batches, logits_fn)
    if isinstance(lr, AutoLr):
        lr = lr(u, scores, sparsity)
    stats.regulariser = regulariser(scores, sparsity, lr, form)
    apply_update(scores, u, sparsity, lr, form)
    return stats, lr
