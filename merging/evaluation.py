"""Per-task evaluation of merged encoders: top-1 accuracy with each task's frozen head, normalized accuracy.

One encoder module is built per :class:`Evaluator` and re-filled between tasks (``load_state_dict``, or a direct
copy of θ0 + δ from the task-vector space's flat vector), batches run under ``torch.inference_mode`` and, on
CUDA, autocast (float16 by default).  Normalized accuracy = merged accuracy / fine-tuned accuracy per task
(Ilharco et al., 2023; Wang et al., 2024).  TALL results are evaluated per task on θ̂t = θ0 + mt ⊙ τMTL
(``MergeResult.task_delta(t)``).
"""
from __future__ import annotations

from typing import Callable, Mapping, Sequence, Union

import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset

from .device import pick_device
from .progress import as_progress

StateDict = Mapping[str, torch.Tensor]
Weights = Union[None, StateDict, Callable[[str], StateDict]]
COLUMNS = ["task", "split", "accuracy", "correct", "n"]


class Evaluator:
    """Reusable evaluation state for one zoo: the encoder module, heads, and preprocessed splits cached on the
    evaluation device when they fit in ``cache_bytes`` (default 1 GiB on CPU, 4 GiB on CUDA), so repeated
    evaluations (λ grids, dashboards) neither decode images nor copy them to the GPU again."""

    def __init__(self, zoo, device: str | torch.device | None = "auto", batch_size: int = 256,
                 num_workers: int = 0, amp: bool = True, amp_dtype: torch.dtype = torch.float16,
                 cache_bytes: int | None = None):
        self.zoo, self.device = zoo, pick_device(device)
        self.batch_size, self.num_workers = batch_size, num_workers
        self.cache_bytes = cache_bytes if cache_bytes is not None else (4 << 30 if self.device.type == "cuda"
                                                                        else 1 << 30)
        self.amp = amp and self.device.type == "cuda"
        self.amp_dtype = amp_dtype
        self.encoder = zoo.encoder(self.device)
        self._params = dict(self.encoder.state_dict(keep_vars=True))
        self._heads: dict[str, torch.nn.Module] = {}
        self._data: dict[tuple[str, str], Dataset | tuple[torch.Tensor, torch.Tensor]] = {}

    # ---------------------------------------------------------------- weights
    def load_state(self, state: StateDict) -> None:
        """Put an open_clip visual state dict into the encoder (strict)."""
        self.encoder.load_state_dict(state, strict=True)

    def load_flat(self, space, delta: torch.Tensor | None) -> None:
        """Put θ0 + δ (flat, on the space's device) into the encoder without a CPU round trip."""
        missing = [e.name for e in space.index.entries if e.name not in self._params]
        if missing:
            raise KeyError(f"the encoder has no parameter(s) {', '.join(missing[:5])}; the space does not match "
                           f"architecture {self.zoo.architecture.name}")
        theta = space.theta0 if delta is None else space.theta0 + delta.to(space.theta0.device, torch.float32)
        with torch.no_grad():
            for e in space.index.entries:
                self._params[e.name].copy_(theta[e.slice].view(e.shape))
            for key, value in space.base.items():
                if key != "__order__" and key in self._params:
                    self._params[key].copy_(value)

    # ---------------------------------------------------------------- data
    def head(self, task: str) -> torch.nn.Module:
        if task not in self._heads:
            self._heads[task] = self.zoo.head(task, self.device)
        return self._heads[task]

    def data(self, task: str, split: str):
        """A dataset, or (images, labels) tensors when the preprocessed split fits in ``cache_bytes``."""
        key = (task, split)
        if key not in self._data:
            dataset = self.zoo.dataset(task, split)
            first = dataset[0][0]
            if len(dataset) * first.numel() * first.element_size() <= self.cache_bytes:
                batches = [(x.to(self.device), y) for x, y in self._loader(dataset)]
                dataset = (torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches]))
            self._data[key] = dataset
        return self._data[key]

    def _loader(self, dataset: Dataset):
        return DataLoader(dataset, batch_size=self.batch_size, shuffle=False, num_workers=self.num_workers,
                          pin_memory=self.device.type == "cuda")

    def batches(self, task: str, split: str):
        data = self.data(task, split)
        if isinstance(data, tuple):
            images, labels = data
            return [(images[i:i + self.batch_size], labels[i:i + self.batch_size])
                    for i in range(0, len(labels), self.batch_size)]
        return self._loader(data)

    def size(self, task: str, split: str) -> int:
        data = self.data(task, split)
        return len(data[1]) if isinstance(data, tuple) else len(data)

    # ---------------------------------------------------------------- evaluation
    @torch.inference_mode()
    def predict(self, images: torch.Tensor, task: str) -> torch.Tensor:
        images = images.to(self.device, non_blocking=True)
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp):
            return self.head(task)(self.encoder(images)).float()

    def accuracy(self, task: str, split: str, progress=None) -> tuple[int, int]:
        """(correct, n) of the encoder as it is now, with task's head, on task's split."""
        progress = as_progress(progress)
        n_total, seen = self.size(task, split), 0
        correct = torch.zeros((), dtype=torch.int64, device=self.device)  # summed on the device: no sync per batch
        for images, labels in self.batches(task, split):
            progress(seen / max(n_total, 1), f"evaluating {task} ({split})")
            logits = self.predict(images, task)
            correct += (logits.argmax(1) == labels.to(self.device, non_blocking=True)).sum()
            seen += len(labels)
        return int(correct), seen

    def run(self, set_weights: Callable[[str], None], tasks: Sequence[str], split: str, progress=None) -> pd.DataFrame:
        def score(task: str, split: str, progress) -> tuple[float, int, int]:
            correct, n = self.accuracy(task, split, progress)
            return (correct / n if n else float("nan")), correct, n

        return run_tasks(score, set_weights, tasks, split, progress)


def run_tasks(score: Callable, set_weights: Callable[[str], None], tasks: Sequence[str], split: str,
              progress=None) -> pd.DataFrame:
    """One row per task (:data:`COLUMNS`): ``set_weights(task)``, then ``score(task, split, progress)`` →
    ``(accuracy, correct, n)``."""
    progress = as_progress(progress)
    rows = []
    for i, task in enumerate(tasks):
        progress(i / len(tasks), f"evaluating {task}")
        set_weights(task)
        accuracy, correct, n = score(task, split, progress.sub(i / len(tasks), (i + 1) / len(tasks)))
        rows.append({"task": task, "split": split, "accuracy": accuracy, "correct": correct, "n": n})
    progress(1.0, "evaluation done")
    return pd.DataFrame(rows, columns=COLUMNS)


def _evaluator(zoo, evaluator: Evaluator | None, **options) -> Evaluator:
    return evaluator if evaluator is not None else Evaluator(zoo, **options)


def evaluate(zoo, weights: Weights = None, tasks: Sequence[str] | None = None, split: str = "test", *,
             reference: Mapping[str, float] | pd.DataFrame | None = None, evaluator: Evaluator | None = None,
             progress=None, **options) -> pd.DataFrame:
    """Per-task top-1 of an encoder given as a state dict (one for all tasks), a callable ``task -> state dict``
    (per-task models), or None (θ0).  With ``reference`` (fine-tuned accuracies) a ``normalized`` column is added.
    ``options`` go to :class:`Evaluator` (device, batch_size, num_workers, amp, amp_dtype, cache_bytes)."""
    ev = _evaluator(zoo, evaluator, **options)
    tasks = list(tasks) if tasks is not None else zoo.task_names
    if not callable(weights):
        ev.load_state(zoo.pretrained_state() if weights is None else weights)

    def set_weights(task: str) -> None:
        if callable(weights):
            ev.load_state(weights(task))

    return with_normalized(ev.run(set_weights, tasks, split, progress), reference)


def evaluate_result(zoo, space, result, tasks: Sequence[str] | None = None, split: str = "test", *,
                    reference: Mapping[str, float] | pd.DataFrame | None = None, evaluator: Evaluator | None = None,
                    progress=None, **options) -> pd.DataFrame:
    """Evaluate a :class:`MergeResult`: θ0 + δ for every task (tasks outside the merge too: generalization), or
    θ̂t = θ0 + task_delta(t) per merged task for TALL."""
    tasks = list(tasks) if tasks is not None else list(space.task_names)
    outside = [t for t in tasks if t not in space.task_names]
    if result.per_task and outside:
        raise ValueError(f"{result.method} reconstructs one model per merged task; {', '.join(outside)} "
                         f"{'is' if len(outside) == 1 else 'are'} not among them")
    ev = _evaluator(zoo, evaluator, **options)
    if not result.per_task:
        ev.load_flat(space, result.delta)

    def set_weights(task: str) -> None:
        if result.per_task:
            ev.load_flat(space, result.task_delta(space.task_names.index(task)))

    return with_normalized(ev.run(set_weights, tasks, split, progress), reference)


def evaluate_baselines(zoo, tasks: Sequence[str] | None = None, split: str = "test", *,
                       evaluator: Evaluator | None = None, progress=None, **options) -> pd.DataFrame:
    """Pretrained (zero-shot) and individual fine-tuned accuracy per task: columns task, split, pretrained,
    finetuned."""
    progress = as_progress(progress)
    ev = _evaluator(zoo, evaluator, **options)
    tasks = list(tasks) if tasks is not None else zoo.task_names
    pre = evaluate(zoo, None, tasks, split, evaluator=ev, progress=progress.sub(0.0, 0.5))
    fine = evaluate(zoo, zoo.finetuned_state, tasks, split, evaluator=ev, progress=progress.sub(0.5, 1.0))
    return pd.DataFrame({"task": tasks, "split": split, "pretrained": pre["accuracy"].to_numpy(),
                         "finetuned": fine["accuracy"].to_numpy()})


def with_normalized(table: pd.DataFrame, reference: Mapping[str, float] | pd.DataFrame | None) -> pd.DataFrame:
    """Add ``normalized`` = accuracy / reference accuracy (the fine-tuned model's, per task)."""
    if reference is None:
        return table
    if isinstance(reference, pd.DataFrame):
        column = "finetuned" if "finetuned" in reference else "accuracy"
        reference = dict(zip(reference["task"], reference[column]))
    missing = [t for t in table["task"] if t not in reference]
    if missing:
        raise KeyError(f"no reference (fine-tuned) accuracy for task(s) {', '.join(missing)}")
    table = table.copy()
    table["normalized"] = [a / reference[t] if reference[t] else float("nan")
                           for t, a in zip(table["task"], table["accuracy"])]
    return table


def recorded_reference(zoo, split: str = "test") -> dict[str, float] | None:
    """Fine-tuned accuracies recorded in the manifest (``recorded.finetuned_<split>_acc``), if every task has one."""
    key = f"finetuned_{split}_acc"
    values = {t: zoo.recorded(t).get(key) for t in zoo.task_names}
    return None if any(v is None for v in values.values()) else {t: float(v) for t, v in values.items()}


def summary(table: pd.DataFrame) -> dict[str, float]:
    """Mean accuracy (and mean normalized accuracy when present) over tasks."""
    out = {"mean_accuracy": float(table["accuracy"].mean())}
    if "normalized" in table:
        out["mean_normalized"] = float(table["normalized"].mean())
    return out
