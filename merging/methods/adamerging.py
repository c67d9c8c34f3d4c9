"""AdaMerging (Yang et al., ICLR 2024), official code github.com/EnnengYang/AdaMerging.

θ = θ0 + Σt λ_{t,l} τ_{t,l}: one coefficient per task and parameter tensor l (layer-wise, as the official code's
one λ per named parameter) or one per task (task-wise).  λ starts at ``init`` (0.3 = Task Arithmetic) and is
learned with Adam (lr 1e-3) to minimise the prediction entropy H(softmax(logits)) on unlabeled images: each
step sums the batch-mean entropy of ``batches_per_task`` batches of ``batch_size`` images of every task (as the
official loop), then clamps λ to [0, 1].  Tables: the coefficients, the objective per step, and each task's
entropy and batch accuracy per step (``task_history``).  The merged vector is built in O(P) memory by
:func:`merging.functional.weighted_task_sum`, whose backward gives ∂L/∂λ_{t,l} = Σ_{p∈l} τt[p]·∂L/∂θ[p].
"""
from __future__ import annotations

import time

import pandas as pd
import torch

from .. import functional as F
from ..entropy_sampling import prediction_entropy
from ..params import Param
from ..registry import MergeMethod, MergeResult, register
from ..unlabeled import CACHE_BYTES, BatchStream, generator, in_memory

PARAMS = (
    Param("granularity", str, "layer", "one coefficient per task and parameter tensor (layer) or per task (task)",
          choices=("layer", "task")),
    Param("init", float, 0.3, "initial coefficient λ (0.3 = Task Arithmetic's default)", low=0.0, high=1.0,
          step=0.05),
    Param("steps", int, 500, "Adam steps", low=0, high=1_000_000),
    Param("lr", float, 1e-3, "Adam learning rate", low=1e-12, high=10.0),
    Param("batch_size", int, 16, "images per batch", low=1, high=65_536),
    Param("batches_per_task", int, 2, "batches per task per step", low=1, high=1_000),
    Param("seed", int, 0, "seed of the batch draws", low=0, high=2**31 - 1),
    Param("amp", bool, True, "bfloat16 autocast on GPU (ignored on CPU)"),
)


def batch_entropy(logits: torch.Tensor, batch) -> torch.Tensor:
    """Mean prediction entropy of a batch (labels unused)."""
    return prediction_entropy(logits).mean()


def adamerging_step(coefficients: torch.Tensor, optimizer: torch.optim.Optimizer, space, batches,
                    logits_fn: F.LogitsFn, lengths: torch.Tensor) -> F.PassStats:
    """One Adam step on the entropy summed over ``batches`` at θ = θ0 + Σt λt τt, then λ ← clamp(λ, 0, 1);
    returns the statistics before the step."""
    theta = space.theta0 + F.weighted_task_sum(coefficients, space, lengths)
    stats, grad = F.batch_pass(theta, space.index, batches, logits_fn, batch_entropy, with_grad=True)
    optimizer.zero_grad(set_to_none=True)
    theta.backward(grad)
    optimizer.step()
    with torch.no_grad():
        coefficients.clamp_(0.0, 1.0)
    return stats


def task_rows(step: int, stats: F.PassStats) -> list[dict]:
    """One row per task of a step: its mean batch entropy and, where the images have labels (reporting only), the
    accuracy on its batches — where entropy falls while accuracy falls too, the proxy misleads the method."""
    return [{"step": step, "task": task, "entropy": summed / batches,
             "accuracy": correct / counted if counted else None}
            for task, (summed, batches, correct, counted) in stats.by_task.items()]


def coefficient_table(coefficients: torch.Tensor, space) -> pd.DataFrame:
    """One row per task and coefficient: task, entry, layer, kind, coefficient (task-wise: entry "(all)")."""
    values = coefficients.detach().cpu().tolist()
    rows = []
    for t, task in enumerate(space.task_names):
        if coefficients.shape[1] == 1:
            rows.append({"task": task, "entry": "(all)", "layer": "all", "kind": "all", "coefficient": values[t][0]})
            continue
        for e, entry in enumerate(space.index.entries):
            rows.append({"task": task, "entry": entry.name, "layer": entry.layer, "kind": entry.kind,
                         "coefficient": values[t][e]})
    return pd.DataFrame(rows)


def run(space, params, progress, context=None) -> MergeResult:
    F.check_context(space, context, space.task_names)
    p, device = params, space.device
    width = len(space.index) if p["granularity"] == "layer" else 1
    coefficients = torch.full((space.T, width), p["init"], device=device, requires_grad=True)
    optimizer = torch.optim.Adam([coefficients], lr=p["lr"], betas=(0.9, 0.999), weight_decay=0.0)
    lengths = F.entry_lengths(space.index, device)
    progress(0.0, "AdaMerging: reading the unlabeled images")
    streams = []
    for t, task in enumerate(space.task_names):
        data, positions = in_memory(context.unlabeled[task], torch.arange(len(context.unlabeled[task])),
                                    CACHE_BYTES // space.T, context.batch_size, progress.check)
        streams.append(BatchStream(task, data, p["batch_size"], generator(p["seed"], t), device, positions))

    def logits_fn(params, task, images):
        return F.logits(context.encoder, context.heads[task], params, images, p["amp"])

    history, per_task = [], []
    with F.eval_mode(context.encoder, *context.heads.values()):
        for step in range(p["steps"]):
            tic = time.perf_counter()
            batches = [s.next() for s in streams for _ in range(p["batches_per_task"])]
            stats = adamerging_step(coefficients, optimizer, space, batches, logits_fn, lengths)
            history.append({"step": step + 1, "entropy": stats.total, "accuracy": stats.accuracy,
                            "seconds": time.perf_counter() - tic})
            per_task += task_rows(step + 1, stats)
            acc = "" if stats.accuracy is None else f", acc {stats.accuracy:.1%}"
            progress((step + 1) / p["steps"], f"AdaMerging step {step + 1}/{p['steps']}: entropy {stats.total:.4f}{acc}")
    with torch.no_grad():
        delta = F.weighted_task_sum(coefficients, space, lengths)
    return MergeResult("adamerging", p, delta,
                       tables={"coefficients": coefficient_table(coefficients, space),
                               "history": pd.DataFrame(history, columns=["step", "entropy", "accuracy", "seconds"]),
                               "task_history": pd.DataFrame(per_task, columns=["step", "task", "entropy", "accuracy"])},
                       info={"granularity": p["granularity"],
                             "final_entropy": history[-1]["entropy"] if history else None})


METHOD = register(MergeMethod(
    "adamerging", "AdaMerging",
    "Learn how much of each task vector to add, per layer or per task, by making the merged model confident "
    "(low prediction entropy) on unlabeled images.",
    "Yang et al., AdaMerging: Adaptive Model Merging for Multi-Task Learning, ICLR 2024",
    PARAMS, run, needs_data=True))
