"""The task-vector space: θ0 and the T task vectors τt = θt − θ0 flattened into one (T, P) tensor.

Only floating-point tensors are merged (integer buffers are carried over from θ0).  The stack lives on the
chosen device (CUDA when present) in float32 or a requested float dtype; θ0 is kept flat in float32.  Building
the space reads one fine-tuned checkpoint at a time, so memory is one (T, P) stack plus O(P) work space.  A state
dict may be lazy (:class:`merging.checkpoints.hf_folder.LazyStateDict`): one with a ``meta()`` method (every key
as a meta tensor) is checked from it and read one tensor at a time, never held whole.
"""
from __future__ import annotations

import tempfile
from typing import Callable, Mapping, Sequence

import numpy as np
import torch

from .chunks import CHUNK, map_chunks, use_numpy
from .device import pick_device, pick_dtype
from .diskstack import DiskStack, needs_disk
from .param_index import ParamIndex
from .progress import Progress, as_progress

StateDict = Mapping[str, torch.Tensor]


class CheckpointError(ValueError):
    """Checkpoints that cannot be merged: missing/extra keys, shape mismatch, NaN/Inf, empty task list."""


def _describe_keys(keys: set, limit: int = 5) -> str:
    keys = sorted(keys)
    more = f" … (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def described(state: StateDict) -> StateDict:
    """Shapes and dtypes of ``state`` without reading a lazy state dict's data (its ``meta()``)."""
    meta = getattr(state, "meta", None)
    return meta() if callable(meta) else state


def check_compatible(reference: StateDict, other: StateDict, what: str) -> None:
    """Raise :class:`CheckpointError` naming the offending key if ``other`` cannot be merged with ``reference``."""
    reference, other = described(reference), described(other)
    ref_float = {k for k, v in reference.items() if torch.is_tensor(v) and v.is_floating_point()}
    other_float = {k for k, v in other.items() if torch.is_tensor(v) and v.is_floating_point()}
    if ref_float - other_float:
        raise CheckpointError(f"{what}: missing key(s) {_describe_keys(ref_float - other_float)}")
    if other_float - ref_float:
        raise CheckpointError(f"{what}: unexpected key(s) {_describe_keys(other_float - ref_float)}")
    for key in ref_float:
        if tuple(reference[key].shape) != tuple(other[key].shape):
            raise CheckpointError(f"{what}: shape mismatch for {key}: {tuple(other[key].shape)} "
                                  f"vs pretrained {tuple(reference[key].shape)}")


class TaskVectorSpace:
    """θ0 (P,) float32 and a (T, P) stack of task vectors on one device, plus the parameter index."""

    def __init__(self, index: ParamIndex, base: dict, theta0: torch.Tensor, stack: torch.Tensor,
                 task_names: Sequence[str], rows: Sequence[int] | None = None):
        self.index, self.base, self.theta0, self.stack = index, base, theta0, stack
        self.rows = list(range(stack.shape[0])) if rows is None else list(rows)
        self.task_names = list(task_names)
        self._workspace: torch.Tensor | None = None
        if len(self.task_names) != len(self.rows):
            raise ValueError("one task name per row is required")

    # ---------------------------------------------------------------- construction
    @classmethod
    def build(cls, pretrained: StateDict, finetuned: Sequence[StateDict | Callable[[], StateDict]],
              task_names: Sequence[str] | None = None, device: str | torch.device | None = "auto",
              dtype: str | torch.dtype | None = None, progress=None,
              sources: Sequence[str] | None = None, max_memory: int | None = None,
              scratch: str | None = None) -> "TaskVectorSpace":
        """Flatten θ0 and every θt (a state dict, or a zero-argument loader called once) into the stack;
        ``sources`` (the pretrained file, then one per task) are named in error messages.  When the stack and the
        merge's working vectors would exceed ``max_memory`` bytes, the stack lives in a memory-mapped file in
        ``scratch`` (default: the system's temporary folder; CPU only), see :mod:`merging.diskstack`."""
        if len(finetuned) == 0:
            raise CheckpointError("no fine-tuned checkpoints given: a merge needs at least one task")
        names = list(task_names) if task_names is not None else [f"task{t}" for t in range(len(finetuned))]
        if len(names) != len(finetuned):
            raise CheckpointError(f"{len(names)} task names for {len(finetuned)} fine-tuned checkpoints")
        refuse_duplicates(names)
        if sources is not None and len(sources) != len(finetuned) + 1:
            raise ValueError("sources: the pretrained file and one file per fine-tuned checkpoint")
        named = lambda i, what: f"{what} ({sources[i]})" if sources is not None else what  # noqa: E731
        progress = as_progress(progress)
        device, dtype = pick_device(device), pick_dtype(dtype)
        specs = described(pretrained)
        index = ParamIndex.from_state_dict(specs)
        if index.numel == 0:
            raise CheckpointError("the pretrained checkpoint has no floating-point tensors to merge")
        theta0 = torch.empty(index.numel, dtype=torch.float32, device=device)
        for e in index.entries:
            theta0[e.slice] = pretrained[e.name].detach().reshape(-1).to(device=device, dtype=torch.float32)
        _check_finite(theta0, index, named(0, "pretrained checkpoint"))
        base = {k: pretrained[k].detach().clone().cpu() for k, v in specs.items()
                if torch.is_tensor(v) and not v.is_floating_point()}
        base["__order__"] = list(specs.keys())
        disk = None
        if needs_disk(len(finetuned), index.numel, torch.empty((), dtype=dtype).element_size(), max_memory):
            if device.type != "cpu":
                raise CheckpointError(f"the stack ({len(finetuned)} × {index.numel:,}) exceeds max_memory; an "
                                      "out-of-core stack is CPU only: use --device cpu or raise --max-memory")
            disk = DiskStack(len(finetuned), index.numel, dtype, scratch or tempfile.gettempdir())
            stack = disk.tensor
        else:
            stack = torch.empty((len(finetuned), index.numel), dtype=dtype, device=device)
        for t, item in enumerate(finetuned):
            progress(t / len(finetuned), f"loading task {names[t]}")
            state = item() if callable(item) else item
            what = named(t + 1, f"fine-tuned checkpoint for task {names[t]!r}")
            check_compatible(pretrained, state, what)
            for e in index.entries:  # τt straight into the stack (rounded to its dtype): no temporary
                torch.sub(state[e.name].detach().reshape(-1).to(device=device, dtype=torch.float32), theta0[e.slice],
                          out=stack[t, e.slice])
            del state
            _check_finite(stack[t], index, what)
            if disk is not None:
                disk.release_row(t)
        progress(1.0, "task vectors ready")
        return cls(index, base, theta0, stack, names)

    # ---------------------------------------------------------------- access
    @property
    def T(self) -> int:
        return len(self.rows)

    @property
    def P(self) -> int:
        return self.index.numel

    @property
    def device(self) -> torch.device:
        return self.stack.device

    def tau(self, t: int) -> torch.Tensor:
        """Task vector t as float32 (a view when the stack is float32 — do not modify it in place)."""
        return self.stack[self.rows[t]].to(torch.float32)

    def tau_chunk(self, t: int, start: int, stop: int) -> torch.Tensor:
        """Entries [start, stop) of task vector t as float32 (a view when the stack is float32)."""
        return self.stack[self.rows[t], start:stop].to(torch.float32)

    def float32_rows(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(the stack as a numpy array, each task's row in it) when every τt is a float32 view of a CPU stack
        (for chunk kernels that read all tasks at once), else None."""
        if self.stack.dtype != torch.float32 or not use_numpy(self.stack):
            return None
        return self.stack.numpy(), np.asarray(self.rows, dtype=np.int64)

    def sum_tau(self) -> torch.Tensor:
        """Σt τt as a new float32 (P,) tensor (rows added in task order; on CPU over cache-sized chunks)."""
        if use_numpy(self.stack):
            stack, rows = self.stack.numpy(), self.rows
            total = np.empty(self.P, dtype=np.float32)

            def body(a: int, b: int) -> None:
                out = total[a:b]
                np.copyto(out, stack[rows[0], a:b])
                for r in rows[1:]:
                    out += stack[r, a:b]

            map_chunks(self.P, body)
            return torch.from_numpy(total)
        total = torch.zeros(self.P, dtype=torch.float32, device=self.device)
        for t in range(self.T):
            total += self.tau(t)
        return total

    def workspace(self) -> torch.Tensor:
        """A reusable (P,) float32 scratch buffer (fresh pages are costly to fault in); never return it."""
        if self._workspace is None:
            self._workspace = torch.empty(self.P, dtype=torch.float32, device=self.device)
        return self._workspace

    def subset(self, tasks: Sequence[str | int]) -> "TaskVectorSpace":
        """A view on some tasks (by name or position) sharing the same stack: no copy."""
        if len(tasks) == 0:
            raise CheckpointError("select at least one task")
        refuse_duplicates(tasks)
        picked = []
        for task in tasks:
            if isinstance(task, str):
                if task not in self.task_names:
                    raise CheckpointError(f"unknown task {task!r}; tasks are {', '.join(self.task_names)}")
                task = self.task_names.index(task)
            picked.append(task)
        return TaskVectorSpace(self.index, self.base, self.theta0, self.stack,
                               [self.task_names[i] for i in picked], [self.rows[i] for i in picked])

    # ---------------------------------------------------------------- mapping back
    def state_dict(self, delta: torch.Tensor | None = None, dtype: torch.dtype | None = None,
                   copy: bool = True) -> dict:
        """θ0 + delta as a CPU state dict in the original key order (float tensors in their original dtype
        unless ``dtype`` is given; non-float buffers copied from θ0), ready for ``load_state_dict``; with
        ``copy=False`` (for writing out) tensors that need no cast are views (of θ0 itself when delta is None)."""
        flat = self.theta0 if delta is None else self.theta0 + delta.to(self.theta0.device, torch.float32)
        return self.index.to_state_dict(flat, self.base, self.base["__order__"], dtype, copy)

    def memory_bytes(self) -> int:
        return self.stack.numel() * self.stack.element_size() + self.theta0.numel() * 4


def refuse_duplicates(names: Sequence) -> None:
    """A task may appear once in a space (a repeated task would be merged, and held in memory, again)."""
    counts: dict = {}
    for name in names:
        counts[name] = counts.get(name, 0) + 1
    repeated = {k: n for k, n in counts.items() if n > 1}
    if repeated:
        listed = ", ".join(f"{k!r} ×{n}" for k, n in list(repeated.items())[:5])
        raise CheckpointError(f"duplicate task(s): {listed}{' …' if len(repeated) > 5 else ''}; give each task once")


def _check_finite(flat: torch.Tensor, index: ParamIndex, what: str) -> None:
    """Raise naming the first tensor that holds NaN/Inf.  On CPU a chunk is checked by its float64 sum: any NaN
    or Inf makes it non-finite, and 2^18 finite float32 values (|v| < 3.5e38) cannot overflow it; one read, no
    temporaries."""
    if use_numpy(flat):
        values = flat.numpy()
        finite = map_chunks(values.size, lambda a, b: bool(np.isfinite(values[a:b].sum(dtype=np.float64))))
        if all(finite):
            return
        start = finite.index(False) * CHUNK
        position = start + int(np.flatnonzero(~np.isfinite(values[start:start + CHUNK]))[0])
    else:
        bad = ~torch.isfinite(flat)
        if not bool(bad.any()):
            return
        position = int(bad.nonzero()[0, 0])
    raise CheckpointError(f"{what}: non-finite values (NaN/Inf) in {index.locate(position).name}")
