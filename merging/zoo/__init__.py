"""A model zoo on disk: pretrained + fine-tuned checkpoints, heads and datasets described by a manifest.

``load_zoo(path)`` accepts a manifest file, a folder with ``zoo.json``/``zoo.yaml``, or a folder to infer a
manifest from (``zoo.report`` says what was found).  Every checkpoint's layout, keys and shapes are checked
against the architecture up front (cheaply: headers / memory maps), so a bad file fails ``load_zoo`` with its
name and problem instead of failing halfway through a merge.
"""
from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch.utils.data import Dataset

from ..checkpoints import (Checkpoint, CheckpointFileError, check_architecture, fill_frozen_projection,
                          inspect_checkpoint, load_checkpoint,
                          load_head_tensors)
from ..context import DataContext
from ..data import build_transform, open_split
from ..device import pick_device
from ..heads import ClassificationHead, zero_shot_weights
from ..manifest import Manifest, ManifestError, find_manifest, infer_manifest, load_manifest
from ..models import build_clip, build_visual, model_config, visual_shapes
from ..space import TaskVectorSpace

StateDict = dict[str, torch.Tensor]


class Zoo:
    """Checkpoints, heads and datasets of one zoo; checkpoints load lazily, one at a time.  The cached θ0 and
    heads are loaded under a lock, so the dashboard's worker threads may share one Zoo."""

    def __init__(self, manifest: Manifest, report: Sequence[str] = (), validate: bool = True):
        self.manifest, self.report = manifest, list(report)
        self.expected = visual_shapes(manifest.architecture)
        self._pretrained: StateDict | None = None
        self._heads: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {}
        self._transform = None
        self._lock = threading.RLock()
        if validate:
            self.validate()

    # ---------------------------------------------------------------- description
    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def root(self) -> Path:
        return self.manifest.root

    @property
    def task_names(self) -> list[str]:
        return self.manifest.task_names

    @property
    def architecture(self):
        return self.manifest.architecture

    def splits(self, task: str) -> list[str]:
        return list(self.manifest.task(task).data)

    def classnames(self, task: str) -> list[str] | None:
        return self.manifest.task(task).classnames

    def recorded(self, task: str) -> dict:
        return dict(self.manifest.task(task).recorded)

    def inputs(self) -> list[Path]:
        """Every file the zoo reads (exports must not overwrite them)."""
        files = [self.manifest.pretrained] + [t.finetuned for t in self.manifest.tasks]
        files += [t.head.weights for t in self.manifest.tasks if t.head and t.head.weights]
        return files + ([self.manifest.path] if self.manifest.path else [])

    # ---------------------------------------------------------------- checkpoints
    def _arch_name(self) -> str:
        return f"architecture {self.architecture.name}"

    def _complete(self, checkpoint: Checkpoint, proj: torch.Tensor | None) -> Checkpoint:
        return fill_frozen_projection(checkpoint, proj, self.expected)

    def validate(self) -> None:
        """Check every checkpoint's layout, keys and shapes (cheap: headers and memory maps)."""
        meta_proj = torch.empty(self.expected.get("proj", (0,)), device="meta")
        for path in [self.manifest.pretrained] + [t.finetuned for t in self.manifest.tasks]:
            checkpoint = inspect_checkpoint(path)
            if checkpoint is not None:
                self._complete(checkpoint, meta_proj if path != self.manifest.pretrained else None)
                check_architecture(path, checkpoint.visual, self.expected, self._arch_name())

    def pretrained_state(self) -> StateDict:
        """θ0 as an open_clip visual state dict on the CPU (loaded once; do not modify the tensors)."""
        with self._lock:
            if self._pretrained is None:
                checkpoint = load_checkpoint(self.manifest.pretrained, self.expected, self._arch_name())
                self._pretrained = checkpoint.visual
            return dict(self._pretrained)

    def finetuned_state(self, task: str) -> StateDict:
        path = self.manifest.task(task).finetuned
        checkpoint = load_checkpoint(path)
        self._complete(checkpoint, self.pretrained_state().get("proj"))
        check_architecture(path, checkpoint.visual, self.expected, self._arch_name())
        return checkpoint.visual

    def finetuned_loader(self, task: str) -> Callable[[], StateDict]:
        """A zero-argument callable that loads task's fine-tuned visual state dict when called."""
        self.manifest.task(task)  # unknown task → KeyError now, not later
        return lambda: self.finetuned_state(task)

    def build_space(self, tasks: Sequence[str] | None = None, device: str | torch.device | None = "auto",
                    dtype=None, progress=None, **storage) -> TaskVectorSpace:
        """The space of ``tasks`` (default all); ``storage``: ``max_memory`` / ``scratch`` of
        :meth:`TaskVectorSpace.build`."""
        tasks = list(tasks) if tasks is not None else self.task_names
        sources = [str(self.manifest.pretrained)] + [str(self.manifest.task(t).finetuned) for t in tasks]
        return TaskVectorSpace.build(self.pretrained_state(), [self.finetuned_loader(t) for t in tasks], tasks,
                                     device=device, dtype=dtype, progress=progress, sources=sources, **storage)

    # ---------------------------------------------------------------- models
    def encoder(self, device: str | torch.device | None = "auto", state: StateDict | None = None) -> torch.nn.Module:
        """A fresh open_clip visual tower holding ``state`` (θ0 by default), in eval mode on ``device``."""
        return build_visual(self.architecture, state if state is not None else self.pretrained_state(),
                            pick_device(device))

    def head(self, task: str, device: str | torch.device | None = "cpu") -> ClassificationHead:
        with self._lock:
            if task not in self._heads:
                spec = self.manifest.task(task)
                if spec.head is not None and spec.head.templates is not None:  # one text tower for all of them
                    todo = [t.name for t in self.manifest.tasks
                            if t.head and t.head.templates and t.name not in self._heads]
                    self._heads.update({t: (w, None) for t, w in self.zero_shot_heads(todo).items()})
                else:
                    self._heads[task] = self._load_head(task)
            weight, bias = self._heads[task]
        return ClassificationHead(weight, bias).to(pick_device(device))

    def _load_head(self, task: str):
        spec = self.manifest.task(task)
        embed_dim = model_config(self.architecture)["embed_dim"]
        if spec.head is None:
            raise ManifestError(f"{self.manifest.path or self.root}: task {task!r} has no head (add head.weights or "
                                "head.templates with classnames)")
        weight, bias = load_head_tensors(spec.head.weights)
        if weight.shape[1] != embed_dim:
            raise CheckpointFileError(spec.head.weights, "shape mismatch", f"head features {weight.shape[1]} "
                                      f"but {self.architecture.name} has embed_dim {embed_dim}")
        if spec.classnames and weight.shape[0] != len(spec.classnames):
            raise CheckpointFileError(spec.head.weights, "shape mismatch", f"{weight.shape[0]} head rows for "
                                      f"{len(spec.classnames)} class names of task {task!r}")
        return weight, bias

    def zero_shot_heads(self, tasks: Sequence[str], device: str | torch.device | None = "auto") -> dict:
        """Build zero-shot head weights for ``tasks`` with one text tower (the pretrained checkpoint's).

        The tower is built outside inference mode and runs in float32 whatever the caller's mode (an evaluation
        asks for a head inside ``torch.inference_mode`` and, on CUDA, float16 autocast): built in inference mode it
        encodes the prompts to other last bits (≈ 3e-6 here), under autocast to other values, and the heads — and
        every merge that learns through them — would depend on which caller came first."""
        with torch.inference_mode(False), torch.autocast("cpu", enabled=False), torch.autocast("cuda", enabled=False):
            return self._zero_shot_heads(tasks, device)

    def _zero_shot_heads(self, tasks: Sequence[str], device) -> dict:
        import open_clip

        checkpoint = load_checkpoint(self.manifest.pretrained, keep_text=True)
        if not checkpoint.text:
            raise CheckpointFileError(self.manifest.pretrained, "missing keys", "zero-shot heads need the text "
                                      "tower, but the pretrained checkpoint holds only the image encoder")
        model = build_clip(self.architecture)
        missing, unexpected = model.load_state_dict(
            {**{"visual." + k: v for k, v in checkpoint.visual.items()}, **checkpoint.text}, strict=False)
        if missing or unexpected:
            raise CheckpointFileError(self.manifest.pretrained, "missing keys" if missing else "extra keys",
                                      "zero-shot heads need the complete text tower: "
                                      + ", ".join((missing or unexpected)[:5]))
        tokenizer = open_clip.get_tokenizer(self.architecture.name)
        out = {}
        for task in tasks:
            spec = self.manifest.task(task)
            out[task] = zero_shot_weights(model, tokenizer, spec.classnames, spec.head.templates, pick_device(device))
        return out

    # ---------------------------------------------------------------- data
    @property
    def transform(self):
        if self._transform is None:
            size = model_config(self.architecture)["vision_cfg"].get("image_size", 224)
            self._transform = build_transform(self.manifest.preprocess, size if isinstance(size, int) else size[0])
        return self._transform

    def dataset(self, task: str, split: str) -> Dataset:
        """(preprocessed image tensor, label) pairs of one task's split."""
        spec = self.manifest.task(task)
        if split not in spec.data:
            raise ManifestError(f"task {task!r} has no {split!r} split (it has {', '.join(spec.data) or 'none'})")
        return open_split(spec.data[split], self.transform, spec.classnames)

    def data_context(self, tasks: Sequence[str] | None = None, split: str = "val",
                     device: str | torch.device | None = "auto", batch_size: int = 128,
                     test_time: bool = False) -> DataContext:
        """The pretrained encoder, the tasks' heads and their ``split`` images, for data-driven methods.

        ``split="test"`` needs ``test_time=True``: test-time adaptation on the unlabeled test images, the protocol
        of AdaMerging's and CALM's official code (their loaders are the test sets; the labels only report)."""
        if split == "test" and not test_time:
            raise ValueError("data-driven merging must not see test data; use split='val' or 'train' "
                             "(or test_time=True for the official codes' test-time adaptation)")
        tasks = list(tasks) if tasks is not None else self.task_names
        device = pick_device(device)
        return DataContext(self.encoder(device), {t: self.head(t, device) for t in tasks},
                           {t: self.dataset(t, split) for t in tasks}, device, batch_size)


def load_zoo(path: str | os.PathLike, validate: bool = True) -> Zoo:
    """A :class:`Zoo` from a manifest file, a folder holding one, or a folder to infer one from."""
    path = Path(path)
    if path.is_file():
        return Zoo(load_manifest(path), validate=validate)
    if not path.is_dir():
        raise ManifestError(f"{path}: no such zoo folder or manifest file")
    manifest_file = find_manifest(path)
    if manifest_file is not None:
        return Zoo(load_manifest(manifest_file), validate=validate)
    manifest, report = infer_manifest(path)
    return Zoo(manifest, report, validate=validate)
