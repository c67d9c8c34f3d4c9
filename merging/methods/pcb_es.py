"""PCB + ES (Du et al., NeurIPS 2024): PCB-Merging with its per-task λt found by an evolutionary search on
validation data, following the official code (github duguodong7/pcb-merging, vision_source_code/pcb_ES.py).

The PCB scores s_t and clipped vectors τc,t are computed once (:func:`merging.methods.pcb.balanced_terms`; the
inter-balancing defaults to pcb_ES.py's Σj tanh(ñt ⊙ ñj), see ``inter``); then
θ(λ) = θ0 + Σt λt·s_t ⊙ τc,t / max(Σt s_t, 1e-12) is linear in λ, so each candidate costs one weighted sum of
the T stored terms (memory: one extra (T, P) float32 stack).  nevergrad's NGOpt (``ng.p.Array`` with init 1.0,
bounds [0.8, 1.3], budget 100, as the code) minimises −(mean over tasks of the top-1 accuracy on the context's
images; nevergrad 1.0.12's NGOpt delegates to COBYLA for 8 bounded dimensions and budget 100); the seed fixes
the optimiser's random state, so a run is reproducible.  The result uses the optimiser's
recommendation (the code's ``recommendation.value``).  Every candidate is a row of the ``search`` table (step,
λ per task, accuracy, best accuracy so far).  Unlike the other data-driven methods this one needs the labels of
its (validation) images: the official objective is validation accuracy.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from torch.utils.data import TensorDataset

from .. import functional as F
from ..maskset import MaskSet
from ..params import Param
from ..registry import MergeMethod, MergeResult, register
from ..unlabeled import CACHE_BYTES, gather, in_memory
from . import pcb

PARAMS = (
    pcb.METHOD.param("r"), pcb.METHOD.param("clip_q"),
    Param("inter", str, "sum_tanh", pcb.INTER.help, choices=pcb.INTER.choices),
    Param("lam_init", float, 1.0, "initial λt of the search", low=0.0, high=3.0, step=0.05),
    Param("lam_low", float, 0.8, "lower bound of every λt", low=0.0, high=3.0, step=0.05),
    Param("lam_high", float, 1.3, "upper bound of every λt", low=0.0, high=3.0, step=0.05),
    Param("budget", int, 100, "candidates evaluated (objective calls)", low=1, high=100_000),
    Param("optimizer", str, "NGOpt", "nevergrad optimiser", choices=("NGOpt", "CMA", "OnePlusOne", "DE", "PSO")),
    Param("seed", int, 0, "seed of the optimiser's random state", low=0, high=2**31 - 1),
    Param("amp", bool, True, "bfloat16 autocast on GPU (ignored on CPU)"),
)


class Objective:
    """Mean top-1 accuracy over the tasks of θ0 + Σt λt·terms[t] on the context's labeled images."""

    def __init__(self, space, terms: torch.Tensor, context, amp: bool, progress):
        self.space, self.terms, self.context, self.amp = space, terms, context, amp
        self.sources = {task: self._source(task, progress) for task in space.task_names}
        self.theta = torch.empty_like(space.theta0)

    def _source(self, task: str, progress):
        """(dataset, positions, batches): the batches gathered once when the images fit the memory budget."""
        dataset, size = self.context.unlabeled[task], self.context.batch_size
        data, positions = in_memory(dataset, torch.arange(len(dataset)), CACHE_BYTES // self.space.T, size,
                                    progress.check)
        if gather(data, positions[:1], torch.device("cpu"))[1] is None:
            raise ValueError(f"PCB + ES maximises validation accuracy: the images of task {task!r} have no labels")
        batches = list(self._batches(data, positions)) if isinstance(data, TensorDataset) else None
        return data, positions, batches

    def _batches(self, data, positions):
        size = self.context.batch_size
        for start in range(0, len(positions), size):
            images, labels = gather(data, positions[start:start + size], self.context.device)
            if labels is None:
                raise ValueError("PCB + ES maximises validation accuracy: some images have no (or a negative) label")
            yield images, labels

    def delta(self, lams) -> torch.Tensor:
        out = torch.zeros_like(self.space.theta0)
        for t, lam in enumerate(lams):
            out.add_(self.terms[t], alpha=float(lam))
        return out

    @torch.no_grad()
    def __call__(self, lams, check=lambda: None) -> tuple[float, list[float]]:
        """(mean accuracy, per-task accuracy)."""
        torch.add(self.space.theta0, self.delta(lams), out=self.theta)
        params = F.param_views(self.theta, self.space.index)
        accuracies = []
        for task, (data, positions, batches) in self.sources.items():
            correct = torch.zeros((), dtype=torch.long, device=self.theta.device)
            seen = 0
            for images, labels in batches if batches is not None else self._batches(data, positions):
                check()
                out = F.logits(self.context.encoder, self.context.heads[task], params, images, self.amp)
                correct += (out.argmax(-1) == labels).sum()
                seen += labels.numel()
            accuracies.append(int(correct) / seen)
        return float(np.mean(accuracies)), accuracies


def scored_terms(space, params, progress) -> tuple[torch.Tensor, MaskSet]:
    """(T, P) float32 terms s_t ⊙ τc,t / max(Σt s_t, 1e-12) and PCB's keep masks."""
    terms = torch.empty((space.T, space.P), dtype=torch.float32, device=space.device)
    denominator = torch.zeros(space.P, dtype=torch.float32, device=space.device)

    def add(t: int, a: int, b: int, score: torch.Tensor, scored: torch.Tensor) -> None:
        terms[t, a:b] = scored
        denominator[a:b] += score

    keeps = pcb.balanced_terms(space, params, progress, add)
    terms /= denominator.clamp_min_(1e-12)
    return terms, keeps


def run(space, params, progress, context=None) -> MergeResult:
    import nevergrad as ng

    F.check_context(space, context, space.task_names)
    p, T, names = params, space.T, space.task_names
    if not p["lam_low"] <= p["lam_init"] <= p["lam_high"] or p["lam_low"] == p["lam_high"]:
        raise ValueError(f"PCB + ES needs lam_low ≤ lam_init ≤ lam_high and lam_low < lam_high; got "
                         f"{p['lam_low']}, {p['lam_init']}, {p['lam_high']}")
    terms, keeps = scored_terms(space, p, progress.sub(0.0, 0.1))
    progress(0.1, "PCB + ES: reading the validation images")
    objective = Objective(space, terms, context, p["amp"], progress)
    parametrization = ng.p.Array(init=[p["lam_init"]] * T, lower=[p["lam_low"]] * T, upper=[p["lam_high"]] * T)
    parametrization.random_state = np.random.RandomState(p["seed"])
    optimizer = ng.optimizers.registry[p["optimizer"]](parametrization=parametrization, budget=p["budget"])
    rows, best = [], -np.inf
    search = progress.sub(0.1, 1.0)
    with F.eval_mode(context.encoder, *context.heads.values()):
        for step in range(p["budget"]):
            candidate = optimizer.ask()
            lams = [float(v) for v in candidate.value]
            accuracy, _ = objective(lams, progress.check)
            optimizer.tell(candidate, -accuracy)
            best = max(best, accuracy)
            rows.append({"step": step + 1, **{f"lam_{task}": lam for task, lam in zip(names, lams)},
                         "accuracy": accuracy, "best_accuracy": best})
            search((step + 1) / (p["budget"] + 1),
                   f"PCB + ES step {step + 1}/{p['budget']}: val acc {accuracy:.1%} (best {best:.1%})")
        chosen = [float(v) for v in optimizer.provide_recommendation().value]
        accuracy, per_task = objective(chosen, progress.check)
    columns = ["step", *(f"lam_{task}" for task in names), "accuracy", "best_accuracy"]
    info = {"val_accuracy": accuracy, **{f"lam_{task}": lam for task, lam in zip(names, chosen)},
            **{f"val_accuracy_{task}": a for task, a in zip(names, per_task)}}
    return MergeResult("pcb_es", p, objective.delta(chosen), masks={"pcb_keep": keeps},
                       tables={"search": pd.DataFrame(rows, columns=columns)}, info=info)


METHOD = register(MergeMethod(
    "pcb_es", "PCB + ES",
    "PCB-Merging whose per-task scaling λt is tuned by an evolutionary search that maximises accuracy on "
    "labeled validation images.",
    "Du et al., Parameter Competition Balancing for Model Merging, NeurIPS 2024 (PCB + ES)",
    PARAMS, run, needs_data=True, needs_labels=True))
