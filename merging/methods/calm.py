"""CALM — Consensus-Aware Localized Merging (Yan et al., ICML 2025); official code github.com/yankd22/CALM.

Three parts, each usable on its own:

1. class-balanced entropy-minimization sampling of each task's unlabeled images (:mod:`merging.entropy_sampling`),
   pseudo-labels from the task's fine-tuned model θ0 + τt (``pseudo_model``: or θ0, or the global TA merge);
2. the efficient-aware sequential framework (:func:`sequential_merge`): the first group is merged globally,
   τseq = λ Σ_{t∈group} τt (TA, λ = 0.3), then the remaining tasks one at a time, τseq ← (1 − Mj) ⊙ τseq + Mj ⊙ τj
   (τj unscaled), θ = θ0 + τseq.  ``first_group="official"`` (default) as the official ``main.py``: TA only for
   a group of more than two tasks; one task enters unscaled (τseq = τa), and of two the first enters unscaled and
   the second is merged into it by a mask (:func:`plan_groups`); ``"ta"``: always λ Σ τt.  With eight tasks and
   two sequential (the default) both give the same merge;
3. consensus-aware mask optimisation of each Mj (:mod:`merging.calm_masks`) on the pseudo-labelled samples of
   every task merged so far.  ``lr="auto"`` (default) sets each stage's learning rate from its first update
   (:func:`merging.calm_masks.auto_lr`: the top ``lr_fraction`` of the scores can cross zero within ``steps``),
   because the official constant 1e7 is calibrated to ViT-B/32's per-weight gradients and, on a small model
   whose gradients are far larger, flips most of the mask at once; ``lr=1e7`` is the official rule.
   ``l1_form`` and ``init_rule`` choose the library's or the official code's L1 step and init
   (:mod:`merging.calm_masks` states both).

Which tasks go sequential (``order``, empty = default rule): the ``num_sequential`` tasks whose fine-tuned
predictions change most under the global TA merge — disagreement rate between argmax of θ0 + λ Σt τt and of
θ0 + τt on the task's unlabeled pool, no labels used — merged least-hurt first and most-hurt last (the last mask
has the final word on the parameters it takes).  Default 2 of T, as the official 8-task schedule
[SUN397, Cars, RESISC45, EuroSAT, SVHN, GTSRB] → [MNIST] → [DTD].
"""
from __future__ import annotations

import math
import time
from typing import Sequence

import pandas as pd
import torch

from .. import functional as F
from ..calm_masks import INIT_RULES, L1_FORMS, AutoLr, init_scores, mask_update, pseudo_label_ce
from ..entropy_sampling import PseudoLabels, sample_pseudo_labels
from ..maskset import MaskSet
from ..params import Param, ParameterError
from ..registry import MergeMethod, MergeResult, register
from ..unlabeled import CACHE_BYTES, BatchStream, dataset_logits, generator, in_memory

PSEUDO_MODELS = ("finetuned", "pretrained", "ta")
FIRST_GROUPS = ("official", "ta")
SAMPLING_SHARE = 0.1  # progress fraction given to the pseudo-labelling passes

PARAMS = (
    Param("order", str, "", "tasks merged one at a time, in order, comma-separated (empty: default rule — the "
          "tasks whose predictions the TA merge changes most, most affected last)"),
    Param("num_sequential", int, 2, "how many tasks the default rule merges sequentially (the rest: TA group)",
          low=0, high=10_000),
    Param("lam", float, 0.3, "TA coefficient λ of the first, globally merged group", low=0.0, high=3.0, step=0.05),
    Param("pseudo_model", str, "finetuned", "model whose argmax gives the pseudo-labels: the task's fine-tuned "
          "model, the pretrained model, or the global TA merge", choices=PSEUDO_MODELS),
    Param("sample_ratio", float, 0.9, "fraction of each predicted class kept (lowest entropy first)",
          low=0.01, high=1.0, step=0.05),
    Param("max_unlabeled", int, 0, "unlabeled images per task looked at (0 = all; else a seeded random subset)",
          low=0, high=10**9),
    Param("steps", int, 100, "mask updates per sequential task", low=0, high=100_000),
    Param("batches_per_task", int, 2, "batches per merged task per update", low=1, high=1_000),
    Param("batch_size", int, 128, "images per batch", low=1, high=65_536),
    Param("lr", str, "auto", "step on the mask scores: 'auto' (scale-free, per stage from its first update's "
          "attribution u = ∂CE/∂θ ⊙ (τj − τseq): lr = (M(L)/steps + sparsity)/a_q, M(L) = e^L − e^−L + 2L, a_q the "
          "⌈lr_fraction·P⌉-th largest drive towards zero ±u, so the top lr_fraction of the scores can cross zero "
          "within the steps) or a positive number (official 1e7, calibrated to ViT-B/32's gradients)"),
    Param("lr_fraction", float, 0.01, "lr 'auto': fraction of the mask scores whose first-update drive flips "
          "them within the steps", low=1e-9, high=1.0),
    Param("sparsity", float, 1.0, "L1 strength: each score moves by sparsity·σ'(S) per update",
          low=0.0, high=1e6),
    Param("l1_form", str, "gradient", "L1 step: 'gradient' pulls every score towards off (the paper's sparsity "
          "term); 'official' pushes each score away from zero on its own side (official code)", choices=L1_FORMS),
    Param("init_fraction", float, 1e-5, "fraction of largest |τj| whose mask starts on", low=0.0, high=1.0),
    Param("init_rule", str, "official", "mask init: 'official' on where |τj| > the k-th largest (official "
          "code: k − 1 on without ties); 'top_k' on where |τj| ≥ it (the k largest)", choices=INIT_RULES),
    Param("init_logit", float, 5.0, "initial score magnitude: S = ±init_logit", low=0.0, high=50.0),
    Param("first_group", str, "official", "first group: 'official' TA (λ) only with more than two tasks, one "
          "task unscaled, two tasks: the first unscaled and the second merged by a mask; 'ta' always λ Σ τt",
          choices=FIRST_GROUPS),
    Param("seed", int, 0, "seed of the pool subsets and batch draws", low=0, high=2**31 - 1),
    Param("amp", bool, True, "bfloat16 autocast on GPU (ignored on CPU)"),
)


def parse_order(text: str, tasks: Sequence[str]) -> list[str] | None:
    """The explicit sequential order, or ``None`` (empty text: use the default rule)."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        return None
    unknown = [n for n in names if n not in tasks]
    if unknown:
        raise ParameterError(f"order: unknown task(s) {', '.join(unknown)}; tasks are {', '.join(tasks)}")
    if len(set(names)) != len(names):
        raise ParameterError(f"order: a task is listed twice in {text!r}")
    return names


def parse_lr(text: str) -> float | None:
    """``None`` for "auto", else the positive learning rate."""
    if text.strip().lower() == "auto":
        return None
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0.0 < value < math.inf:
        raise ParameterError(f"lr: expected 'auto' or a positive number, got {text!r}")
    return value


def plan_groups(first: Sequence[str], order: Sequence[str], rule: str, lam: float
                ) -> tuple[list[str], list[str], float]:
    """(first group, sequential order, the first group's coefficient) under the ``first_group`` rule: "ta" keeps
    λ; "official" (``main.py``: TA only ``if step == 0 and len(seen_dataname) > 2``, else the group goes through
    MaskMerging with paramslist[1] its first task) keeps λ for more than two tasks, takes one task unscaled and,
    of two, the first unscaled with the second merged into it by a mask (the first sequential stage)."""
    first, order = list(first), list(order)
    if rule == "ta" or len(first) > 2 or not first:
        return first, order, lam
    return first[:1], first[1:] + order, 1.0


def default_order(tasks: Sequence[str], disagreement: Sequence[float], count: int) -> list[str]:
    """The ``count`` most-disagreeing tasks, ordered least to most (ties: task order)."""
    ranked = sorted(range(len(tasks)), key=lambda t: (-disagreement[t], t))[:count]
    return [tasks[t] for t in sorted(ranked, key=lambda t: (disagreement[t], t))]


def sequential_merge(space, first_group: Sequence[str], order: Sequence[str], masks: Sequence[torch.Tensor],
                     lam: float) -> torch.Tensor:
    """τseq: λ Σ_{t∈first_group} τt, then τseq ← where(Mj, τj, τseq) for each task j of ``order``."""
    tau_seq = (lam * space.subset(list(first_group)).sum_tau() if first_group
               else torch.zeros(space.P, dtype=torch.float32, device=space.device))
    for task, mask in zip(order, masks, strict=True):
        tau_seq = torch.where(mask.to(space.device), space.tau(space.task_names.index(task)), tau_seq)
    return tau_seq


class _Calm:
    """One CALM run: the model, the pools and pseudo-labels, and the stage loop."""

    def __init__(self, space, params, progress, context):
        self.space, self.p, self.progress, self.ctx = space, params, progress, context
        self.device = space.device
        self.tasks = space.task_names
        self.data = {}  # task -> the unlabeled images looked at (in memory when they fit)
        self._ta = None  # θ0 + λ Σt τt, built when needed

    def logits_fn(self, params, task, images):
        return F.logits(self.ctx.encoder, self.ctx.heads[task], params, images, self.p["amp"])

    def model_flat(self, kind: str, t: int) -> torch.Tensor:
        if kind == "pretrained":
            return self.space.theta0
        if kind == "finetuned":
            return self.space.theta0 + self.space.tau(t)
        if self._ta is None:
            self._ta = self.space.theta0 + self.p["lam"] * self.space.sum_tau()
        return self._ta

    def pool(self, t: int) -> torch.Tensor:
        n, cap = len(self.ctx.unlabeled[self.tasks[t]]), self.p["max_unlabeled"]
        if cap == 0 or cap >= n:
            return torch.arange(n)
        return torch.sort(torch.randperm(n, generator=generator(self.p["seed"], t))[:cap]).values

    def sample(self, kinds: list[str], progress) -> tuple[dict[str, PseudoLabels], dict[str, float]]:
        """Pseudo-labels of every task; TA-vs-fine-tuned disagreement when both models were run."""
        labels, disagreement = {}, {}
        for t, task in enumerate(self.tasks):
            progress(t / len(self.tasks), f"CALM: reading the unlabeled images of {task}")
            self.data[task], pool = in_memory(self.ctx.unlabeled[task], self.pool(t), CACHE_BYTES // len(self.tasks),
                                              self.ctx.batch_size, progress.check)
            out = {}
            for kind in kinds:
                progress((t + len(out) / len(kinds)) / len(self.tasks),
                         f"CALM: pseudo-labelling {task} with the {kind} model")
                params = F.param_views(self.model_flat(kind, t), self.space.index)
                out[kind], truth = dataset_logits(lambda x: self.logits_fn(params, task, x), self.data[task], pool,
                                                  self.ctx.batch_size, self.device, progress.check)
            labels[task] = sample_pseudo_labels(out[self.p["pseudo_model"]], pool, self.p["sample_ratio"], truth)
            if labels[task].positions.numel() == 0:
                raise ValueError(f"CALM: sampling kept no images of task {task!r} ({pool.numel()} looked at, ratio "
                                 f"{self.p['sample_ratio']}); give it more unlabeled images or a higher ratio")
            if "ta" in out and "finetuned" in out:
                disagreement[task] = float((out["ta"].argmax(-1) != out["finetuned"].argmax(-1)).float().mean())
        return labels, disagreement

    def draw(self, streams: dict[str, BatchStream], seen: Sequence[str]):
        return [streams[task].next() for task in seen for _ in range(self.p["batches_per_task"])]

    def evaluate(self, tau_seq, streams, seen) -> F.PassStats:
        stats, _ = F.batch_pass(self.space.theta0 + tau_seq, self.space.index, self.draw(streams, seen),
                                self.logits_fn, pseudo_label_ce, with_grad=False)
        return stats

    def run(self) -> MergeResult:
        p, space, tasks = self.p, self.space, self.tasks
        self.lr = parse_lr(p["lr"])
        order = parse_order(p["order"], tasks)
        rule = order is None
        count = min(p["num_sequential"], max(len(tasks) - 1, 0)) if rule else len(order)
        if count == 0:
            first, order, coef = plan_groups(tasks, [], p["first_group"], p["lam"])
            if not order:
                self.progress(0.0, "CALM: no sequential task — the first group only")
                return MergeResult("calm", p, sequential_merge(space, first, [], [], coef),
                                   info={"first_group": first, "order": [], "rule": "none", "first_coef": coef})
            rule = False
        F.check_context(space, self.ctx, tasks)
        kinds = list(dict.fromkeys([p["pseudo_model"]] + (["finetuned", "ta"] if rule else [])))
        with F.eval_mode(self.ctx.encoder, *(self.ctx.heads[t] for t in tasks)):
            pseudo, disagreement = self.sample(kinds, self.progress.sub(0.0, SAMPLING_SHARE))
            if rule:
                order = default_order(tasks, [disagreement[t] for t in tasks], count)
            first, order, coef = plan_groups([t for t in tasks if t not in order], order, p["first_group"],
                                             p["lam"])
            streams = {task: BatchStream(task, self.data[task], p["batch_size"],
                                         generator(p["seed"], len(tasks) + i), self.device,
                                         pseudo[task].positions, pseudo[task].targets)
                       for i, task in enumerate(tasks)}
            tau_seq, masks, history, stages = self.stages(first, coef, order, streams)
        mask_set = MaskSet.from_bool(torch.stack(masks), order, "calm")
        sampling = pd.DataFrame([{
            "task": task, "role": f"sequential {order.index(task) + 1}" if task in order else "first group",
            "looked_at": pseudo[task].pool, "kept": int(pseudo[task].positions.numel()),
            "pseudo_label_accuracy": pseudo[task].accuracy, "ta_disagreement": disagreement.get(task)}
            for task in tasks])
        return MergeResult("calm", p, tau_seq, masks={"calm": mask_set},
                           tables={"stages": stages, "history": history, "sampling": sampling},
                           info={"first_group": first, "order": order, "rule": "disagreement" if rule else "given",
                                 "first_coef": coef, "pseudo_model": p["pseudo_model"],
                                 "lr": stages["lr"].dropna().tolist()})

    def stages(self, first, coef, order, streams):
        p, space = self.p, self.space
        progress = self.progress.sub(SAMPLING_SHARE, 1.0)
        start = time.perf_counter()
        tau_seq = sequential_merge(space, first, [], [], coef)
        rows, history, masks = [], [], []
        if first:
            label = f"unscaled: {first[0]}" if coef != p["lam"] else "TA group: " + ", ".join(first)
            stats = self.evaluate(tau_seq, streams, first)
            rows.append(self._stage_row(0, label, len(first), None, stats, [], start, None))
        for j, task in enumerate(order):
            start = time.perf_counter()
            seen = first + order[:j + 1]
            tau_j = space.tau(space.task_names.index(task))
            scores = init_scores(tau_j, p["init_fraction"], p["init_logit"], p["init_rule"])
            base, diff = space.theta0 + tau_seq, tau_j - tau_seq
            lr = self.lr if self.lr is not None else AutoLr(p["lr_fraction"], p["steps"], p["init_logit"])
            steps = []
            for step in range(p["steps"]):
                tic = time.perf_counter()
                stats, lr = mask_update(scores, base, diff, space.index, self.draw(streams, seen), self.logits_fn,
                                        p["sparsity"], lr, p["l1_form"])
                steps.append({"stage": j + 1, "task": task, "step": step + 1, "loss": stats.loss,
                              "cross_entropy": stats.total, "sparsity_term": stats.regulariser,
                              "accuracy": stats.accuracy, "seconds": time.perf_counter() - tic})
                acc = "" if stats.accuracy is None else f", acc {stats.accuracy:.1%}"
                progress((j + (step + 1) / p["steps"]) / len(order),
                         f"CALM mask {task} ({j + 1}/{len(order)}) step {step + 1}/{p['steps']}: "
                         f"loss {stats.loss:.4f}{acc}")
            del base, diff
            mask = scores > 0  # round(σ(S))
            tau_seq = torch.where(mask, tau_j, tau_seq)
            masks.append(mask)
            history += steps
            stats = self.evaluate(tau_seq, streams, seen)
            rows.append(self._stage_row(j + 1, task, len(seen), mask, stats, steps, start,
                                        lr if isinstance(lr, float) else None))
            progress((j + 1) / len(order), f"CALM: merged {task} ({j + 1}/{len(order)})")
        columns = ["stage", "task", "step", "loss", "cross_entropy", "sparsity_term", "accuracy", "seconds"]
        return tau_seq, masks, pd.DataFrame(history, columns=columns), pd.DataFrame(rows)

    def _stage_row(self, stage, task, merged, mask, stats, steps, start, lr) -> dict:
        batches = merged * self.p["batches_per_task"]
        return {"stage": stage, "task": task, "tasks_merged": merged, "updates": len(steps), "lr": lr,
                "mask_on": None if mask is None else int(mask.sum()),
                "mask_density": None if mask is None else float(mask.float().mean()),
                "first_loss": steps[0]["loss"] if steps else None, "last_loss": steps[-1]["loss"] if steps else None,
                "cross_entropy": stats.total / batches, "accuracy": stats.accuracy,
                "seconds": time.perf_counter() - start}


def run(space, params, progress, context=None) -> MergeResult:
    return _Calm(space, params, progress, context).run()


METHOD = register(MergeMethod(
    "calm", "CALM",
    "Merge most tasks with Task Arithmetic, then add the rest one by one through learned binary masks that keep "
    "every merged task's (pseudo-labelled) predictions right.",
    "Yan et al., CALM: Consensus-Aware Localized Merging for Multi-Task Learning, ICML 2025",
    PARAMS, run, needs_data=True))
