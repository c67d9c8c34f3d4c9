"""Running the encoder on a flat (P,) parameter vector, and the coefficient-weighted sum of task vectors.

* :func:`param_views` cuts a flat vector into per-tensor views (one per :class:`ParamIndex` entry, no copy);
  :func:`logits` runs ``head(encoder(images))`` with such tensors swapped in by ``torch.func.functional_call``,
  so the encoder's own parameters are never written.
* :func:`batch_pass` sums a per-batch loss over batches and accumulates its gradient w.r.t. θ (one backward
  per batch, so activations of one batch at a time).  The views are made leaves themselves and their
  gradients concatenated once: a single (P,) leaf would make autograd build one zero-filled (P,) gradient per
  slice (100× slower backward on ViT-B/32).  The heads' own ``.grad`` stay untouched.
* :func:`weighted_task_sum` builds δ = Σt λ_{t,e(p)} τt[p] (one coefficient per task and parameter tensor e)
  in O(P) memory with gradients to the (T, E) coefficients: ∂L/∂λ_{t,e} = Σ_{p∈e} τt[p]·∂L/∂δ[p]
  (AdaMerging, Yang et al., ICLR 2024).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import torch
from torch.func import functional_call

from .param_index import ParamIndex
from .unlabeled import Batch

Params = dict[str, torch.Tensor]
LogitsFn = Callable[[Params, str, torch.Tensor], torch.Tensor]  # ({name: tensor}, task, images) -> logits
LossFn = Callable[[torch.Tensor, Batch], torch.Tensor]  # (logits, batch) -> scalar


def param_views(flat: torch.Tensor, index: ParamIndex) -> Params:
    """{name: flat[entry] viewed in the entry's shape} for every index entry."""
    return {e.name: flat[e.slice].view(e.shape) for e in index.entries}


def check_context(space, context, tasks: Sequence[str]) -> None:
    """Raise ``ValueError`` naming the problem if ``context`` cannot run the space's model on ``tasks``."""
    for attr in ("encoder", "heads", "unlabeled", "device"):
        if not hasattr(context, attr):
            raise ValueError(f"the data context has no {attr!r}: pass a merging.context.DataContext")
    device, own = torch.device(context.device), space.device
    if device.type != own.type or (device.index is not None and own.index is not None and device.index != own.index):
        raise ValueError(f"the data context runs on {device} but the task-vector space is on {own}")
    check_encoder(context.encoder, space.index)
    for task in tasks:
        if task not in context.heads:
            raise ValueError(f"the data context has no classification head for task {task!r}")
        if task not in context.unlabeled or len(context.unlabeled[task]) == 0:
            raise ValueError(f"the data context has no unlabeled images for task {task!r}")


def check_encoder(encoder: torch.nn.Module, index: ParamIndex) -> None:
    """Raise ``ValueError`` unless the encoder's floating-point tensors are exactly the index entries."""
    own = {k: tuple(v.shape) for k, v in encoder.state_dict().items() if v.is_floating_point()}
    want = {e.name: e.shape for e in index.entries}
    missing, extra = sorted(set(want) - set(own)), sorted(set(own) - set(want))
    if missing or extra:
        raise ValueError(f"the encoder does not match the task-vector space: missing {missing[:5]}, "
                         f"unexpected {extra[:5]}")
    bad = [k for k in want if own[k] != want[k]]
    if bad:
        raise ValueError(f"the encoder does not match the task-vector space: shape mismatch for {bad[0]}: "
                         f"{own[bad[0]]} vs {want[bad[0]]}")


def autocast(device: torch.device, enabled: bool):
    """bfloat16 autocast on CUDA when ``enabled``; a no-op context on CPU."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def logits(encoder: torch.nn.Module, head: torch.nn.Module, params: Params, images: torch.Tensor,
           amp: bool = True) -> torch.Tensor:
    """float32 logits of ``head(encoder_θ(images))`` with θ = ``params`` (the encoder itself is not modified)."""
    with autocast(images.device, amp):
        features = functional_call(encoder, params, (images,))
        return head(features).float()


@contextlib.contextmanager
def eval_mode(*modules: torch.nn.Module) -> Iterator[None]:
    """Put modules in eval mode for the duration and restore every submodule's training flag afterwards."""
    saved = [(m, m.training) for module in modules for m in module.modules()]
    try:
        for module in modules:
            module.eval()
        yield
    finally:
        for m, training in saved:
            m.training = training


@dataclass
class PassStats:
    """Summed per-batch losses, accuracy counts (``counted`` = 0 without labels) and an extra regulariser;
    ``by_task`` splits them per task: {task: (summed loss, batches, correct, counted)}."""

    total: float
    correct: int
    counted: int
    regulariser: float = 0.0
    by_task: dict[str, tuple[float, int, int, int]] = field(default_factory=dict)

    @property
    def loss(self) -> float:
        return self.total + self.regulariser

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.counted if self.counted else None


def batch_pass(theta: torch.Tensor, index: ParamIndex, batches: Sequence[Batch], logits_fn: LogitsFn,
               loss_fn: LossFn, with_grad: bool) -> tuple[PassStats, torch.Tensor | None]:
    """Σ_b loss_fn(f_θ(x_b), b) and, with ``with_grad``, its gradient w.r.t. θ (P,) (one backward per batch)."""
    params = param_views(theta.detach(), index)
    leaves = [view.requires_grad_(with_grad) for view in params.values()]
    total = torch.zeros((), device=theta.device)
    losses, hits = [], []
    with torch.set_grad_enabled(with_grad):
        for batch in batches:
            out = logits_fn(params, batch.task, batch.images)
            loss = loss_fn(out, batch)
            if with_grad:
                torch.autograd.backward(loss, inputs=leaves)
            total += loss.detach()
            losses.append(loss.detach().float())
            hits.append(torch.zeros((), device=theta.device) if batch.labels is None
                        else (out.detach().argmax(-1) == batch.labels).sum().float())
    values = torch.stack([total.float(), *losses, *hits]).tolist() if batches else [0.0]  # one device sync
    n, by_task = len(batches), {}
    for batch, loss, hit in zip(batches, values[1:n + 1], values[n + 1:]):
        summed, count, correct, counted = by_task.get(batch.task, (0.0, 0, 0, 0))
        by_task[batch.task] = (summed + loss, count + 1, correct + int(hit),
                               counted + (0 if batch.labels is None else batch.labels.numel()))
    stats = PassStats(values[0], sum(r[2] for r in by_task.values()), sum(r[3] for r in by_task.values()),
                      by_task=by_task)
    if not with_grad:
        return stats, None
    return stats, torch.cat([torch.zeros(v.numel(), device=v.device) if v.grad is None else v.grad.reshape(-1)
                             for v in leaves])


def entry_lengths(index: ParamIndex, device: torch.device) -> torch.Tensor:
    """(E,) int64 numel of every entry (the segment lengths of the flat vector)."""
    return torch.tensor([e.numel for e in index.entries], dtype=torch.long, device=device)


def segment_sum(values: torch.Tensor, index: ParamIndex) -> torch.Tensor:
    """(E,) sums of a (P,) vector over each entry's segment (pairwise summation per segment)."""
    return torch.stack([part.sum() for part in values.split([e.numel for e in index.entries])])


class _WeightedTaskSum(torch.autograd.Function):
    """δ = Σt repeat(λt, lengths) ⊙ τt, looping over tasks (no (T, P) temporary)."""

    @staticmethod
    def forward(ctx, coefficients: torch.Tensor, space, lengths: torch.Tensor) -> torch.Tensor:
        ctx.space = space
        out = torch.zeros(space.P, dtype=torch.float32, device=space.device)
        for t in range(space.T):
            out.addcmul_(space.tau(t), coefficients[t].repeat_interleave(lengths, output_size=space.P))
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        space = ctx.space
        rows = [segment_sum(space.tau(t) * grad, space.index) for t in range(space.T)]
        return torch.stack(rows), None, None


def weighted_task_sum(coefficients: torch.Tensor, space, lengths: torch.Tensor | None = None) -> torch.Tensor:
    """δ (P,) float32 = Σt λ_{t,e(p)} τt[p] for coefficients (T, E) (one per task and index entry), or (T, 1)
    task-wise (broadcast to every entry); differentiable w.r.t. ``coefficients``."""
    if coefficients.dim() != 2 or coefficients.shape[0] != space.T:
        raise ValueError(f"coefficients must be (T={space.T}, E) or (T, 1), got {tuple(coefficients.shape)}")
    entries = len(space.index)
    if coefficients.shape[1] == 1:
        coefficients = coefficients.expand(space.T, entries)
    elif coefficients.shape[1] != entries:
        raise ValueError(f"coefficients have {coefficients.shape[1]} columns, the space has {entries} entries")
    if lengths is None:
        lengths = entry_lengths(space.index, space.device)
    return _WeightedTaskSum.apply(coefficients.to(torch.float32), space, lengths)
