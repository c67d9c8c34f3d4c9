"""Seeded access to the unlabeled images of the data-driven methods (CALM, AdaMerging).

Datasets yield ``(image, label)`` (train or validation splits) or images alone; a label < 0 means unknown.
Labels are never used for optimisation, only to report accuracy in progress messages and stage tables.
A :class:`TensorDataset` is gathered with one indexing operation; :func:`in_memory` turns the images a method
will revisit into one (decoded and preprocessed once) when they fit in a memory budget.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch.utils.data import Dataset, TensorDataset, default_collate

CACHE_BYTES = 1 << 30  # preprocessed images kept in (CPU) memory per method run, over all tasks


@dataclass
class Batch:
    task: str
    images: torch.Tensor
    targets: torch.Tensor | None  # pseudo-labels (CALM) or None
    labels: torch.Tensor | None  # true labels when the dataset has them (reporting only)


def generator(seed: int, stream: int = 0) -> torch.Generator:
    """A CPU generator for one seeded random stream (stream = task position)."""
    return torch.Generator().manual_seed(int(seed) * 1_000_003 + int(stream))


def gather(dataset: Dataset, idx: torch.Tensor, device: torch.device):
    """(images, labels or None) for the dataset positions ``idx`` on ``device``."""
    if isinstance(dataset, TensorDataset):
        items = [t[idx.to(t.device)] for t in dataset.tensors]
    else:
        items = default_collate([dataset[i] for i in idx.tolist()])
    if torch.is_tensor(items):
        items = [items]
    images = items[0].to(device, non_blocking=True)
    labels = None
    if len(items) > 1 and torch.is_tensor(items[1]) and not bool((items[1] < 0).any()):
        labels = items[1].to(device, non_blocking=True).long()
    return images, labels


def in_memory(dataset: Dataset, positions: torch.Tensor, budget: int, batch_size: int = 256,
              check: Callable[[], None] = lambda: None) -> tuple[Dataset, torch.Tensor]:
    """(TensorDataset of the items at ``positions``, their new positions 0..n−1) when the images fit in
    ``budget`` bytes; otherwise ``(dataset, positions)`` unchanged."""
    if isinstance(dataset, TensorDataset) or positions.numel() == 0:
        return dataset, positions
    first, _ = gather(dataset, positions[:1], torch.device("cpu"))
    if first.numel() * first.element_size() * positions.numel() > budget:
        return dataset, positions
    images, labels = [], []
    for start in range(0, positions.numel(), batch_size):
        check()
        x, y = gather(dataset, positions[start:start + batch_size], torch.device("cpu"))
        images.append(x)
        labels.append(y)
    tensors = [torch.cat(images)] + ([torch.cat(labels)] if all(y is not None for y in labels) else [])
    return TensorDataset(*tensors), torch.arange(positions.numel())


class BatchStream:
    """Endless batches without replacement from ``positions`` of a dataset, reshuffled every pass (seeded)."""

    def __init__(self, task: str, dataset: Dataset, batch_size: int, gen: torch.Generator, device: torch.device,
                 positions: torch.Tensor | None = None, targets: torch.Tensor | None = None):
        self.task, self.dataset, self.batch_size, self.gen, self.device = task, dataset, batch_size, gen, device
        self.positions = torch.arange(len(dataset)) if positions is None else positions.long().cpu()
        if self.positions.numel() == 0:
            raise ValueError(f"task {task!r}: no unlabeled images to draw batches from")
        self.targets = None if targets is None else targets.long().cpu()
        self._order, self._at = torch.empty(0, dtype=torch.long), 0

    def next(self) -> Batch:
        if self._at >= self._order.numel():
            self._order, self._at = torch.randperm(self.positions.numel(), generator=self.gen), 0
        pick = self._order[self._at:self._at + self.batch_size]
        self._at += pick.numel()
        images, labels = gather(self.dataset, self.positions[pick], self.device)
        targets = None if self.targets is None else self.targets[pick].to(self.device)
        return Batch(self.task, images, targets, labels)


def dataset_logits(logits_fn: Callable[[torch.Tensor], torch.Tensor], dataset: Dataset, positions: torch.Tensor,
                   batch_size: int, device: torch.device, check: Callable[[], None] = lambda: None):
    """One pass over ``positions``: (logits (N, C) float32 CPU, labels (N,) or None)."""
    outs, labels, known = [], [], True
    with torch.no_grad():
        for start in range(0, positions.numel(), batch_size):
            check()
            images, y = gather(dataset, positions[start:start + batch_size], device)
            outs.append(logits_fn(images).float().cpu())
            known = known and y is not None
            if known:
                labels.append(y.cpu())
    return torch.cat(outs), (torch.cat(labels) if known else None)
