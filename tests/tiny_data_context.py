"""A tiny open_clip ViT, task vectors, heads and unlabeled datasets for the data-driven method tests."""
from __future__ import annotations

import pytest
import torch
from open_clip.model import VisionTransformer
from torch.utils.data import Dataset, TensorDataset

from merging import CancelToken, Cancelled, Progress, run_merge
from merging.context import DataContext
from merging.space import TaskVectorSpace

IMAGE, FEATURES = 16, 16


class Head(torch.nn.Module):
    """logits = 10 · normalize(features) @ Wᵀ (the shape of task_vectors' ClassificationHead)."""

    def __init__(self, classes: int, generator: torch.Generator):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(classes, FEATURES, generator=generator) / FEATURES ** 0.5)

    def forward(self, features):
        return 10 * torch.nn.functional.normalize(features, dim=-1) @ self.weight.T


class TupleDataset(Dataset):
    """A plain map-style dataset yielding (image, label) tuples (exercises the generic collate path)."""

    def __init__(self, images, labels):
        self.images, self.labels = images, labels

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i], int(self.labels[i])



def tiny_encoder() -> torch.nn.Module:
    return VisionTransformer(image_size=IMAGE, patch_size=8, width=32, layers=2, heads=2, mlp_ratio=2.0,
                             output_dim=FEATURES)


def tiny_setup(tasks=("a", "b", "c"), classes: int = 3, images: int = 24, labels: bool = True, seed: int = 0,
               scale: float = 0.05):
    """(space, context): θt = θ0 + scale·noise, one head and one unlabeled dataset per task (task 0 generic)."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    encoder = tiny_encoder()
    pretrained = {k: v.detach().clone() for k, v in encoder.state_dict().items()}
    finetuned = [{k: v + scale * torch.randn(v.shape, generator=gen) for k, v in pretrained.items()} for _ in tasks]
    space = TaskVectorSpace.build(pretrained, finetuned, list(tasks), device="cpu")
    heads = {t: Head(classes, gen) for t in tasks}
    data = {}
    for i, t in enumerate(tasks):
        x = torch.randn(images, 3, IMAGE, IMAGE, generator=gen)
        y = torch.randint(classes, (images,), generator=gen)
        data[t] = (TupleDataset(x, y) if i == 0 else TensorDataset(x, y)) if labels else TensorDataset(x)
    return space, DataContext(encoder, heads, data, torch.device("cpu"), batch_size=8)


def snapshot(space, context) -> list[torch.Tensor]:
    """Copies of everything a merge must leave untouched."""
    tensors = [space.stack, space.theta0, *context.encoder.state_dict().values()]
    for head in context.heads.values():
        tensors += list(head.state_dict().values())
    return [t.detach().clone() for t in tensors]


def assert_untouched(space, context, before) -> None:
    after = snapshot(space, context)
    assert len(after) == len(before)
    for a, b in zip(after, before):
        assert torch.equal(a, b)
    assert all(p.grad is None for p in context.encoder.parameters())
    assert all(p.grad is None for h in context.heads.values() for p in h.parameters())


def cancelled_at_step_2(method: str, params: dict) -> DataContext:
    """Cancel a ``method`` merge at step 2, check it stopped there with its inputs untouched; return its context."""
    space, ctx = tiny_setup()
    before = snapshot(space, ctx)
    token, calls = CancelToken(), []

    def callback(fraction, stage):
        calls.append(stage)
        if "step 2/" in stage:
            token.cancel()

    with pytest.raises(Cancelled):
        run_merge(space, method, params, progress=Progress(callback, token), context=ctx)
    assert not any("step 3/" in s for s in calls)
    assert_untouched(space, ctx, before)
    return ctx
