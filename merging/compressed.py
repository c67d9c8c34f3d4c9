"""TALL's compressed form (Wang et al., ICML 2024): θ0 + τMTL + one bit-packed mask per task (+ EMR's rescalers).

Task t is served by θ̂t = θ0 + s_t·mt ⊙ τMTL (s_t = 1 for TALL; EMR-Merging's λt, with its τuni as τMTL).  One
safetensors file holds ``theta0.<key>`` (every key of θ0, in its own dtype), ``tau_mtl.<key>`` (float32),
``masks`` (T × ⌈P/8⌉ uint8, numpy packbits order) and, for results with rescalers, ``scales`` (T float64), with
the task names, key order and merge parameters in its metadata.  Size ≈ P·(4 + 4) + T·P/8 bytes instead of T·P·4.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .atomic import atomic_path, ensure_not_input
from .maskset import MaskSet
from .param_index import ParamIndex
from .space import CheckpointError

FORMAT = "mergescope-tall/1"


def save_compressed(path, space, result, inputs=()) -> Path:
    """Write a TALL result atomically; refuses to overwrite any of ``inputs``."""
    if result.task_masks is None:
        raise ValueError(f"{result.method} has no per-task masks; only TALL and EMR results have a "
                         f"compressed form")
    target = ensure_not_input(path, inputs)
    theta0 = space.state_dict()
    tau = space.index.to_state_dict(result.delta, {}, space.index.names(), torch.float32)
    tensors = {f"theta0.{k}": v.contiguous() for k, v in theta0.items()}
    tensors.update({f"tau_mtl.{k}": v.contiguous() for k, v in tau.items()})
    tensors["masks"] = result.task_masks.packed.cpu().contiguous()
    if result.task_scales is not None:
        tensors["scales"] = torch.tensor(result.task_scales, dtype=torch.float64)
    metadata = {"format": FORMAT, "tasks": json.dumps(space.task_names), "order": json.dumps(list(theta0)),
                "merged": json.dumps(space.index.names()), "params": json.dumps(result.params),
                "method": result.method, "modifiers": json.dumps(result.modifiers)}
    with atomic_path(target) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return target


class CompressedTall:
    """A loaded compressed form; ``reconstruct(task)`` returns θ̂t as a state dict."""

    def __init__(self, theta0: dict, tau_mtl: torch.Tensor, masks: MaskSet, index: ParamIndex, params: dict,
                 scales: list[float] | None = None):
        self.theta0, self.tau_mtl, self.masks, self.index, self.params = theta0, tau_mtl, masks, index, params
        self.scales = scales
        self.flat0 = torch.cat([theta0[e.name].reshape(-1).float() for e in index.entries])

    @property
    def task_names(self) -> list[str]:
        return self.masks.task_names

    def reconstruct(self, task: str | int) -> dict:
        t = self.task_names.index(task) if isinstance(task, str) else task
        masked = self.tau_mtl * self.masks.get(t)
        flat = self.flat0 + (masked if self.scales is None else masked * self.scales[t])
        return self.index.to_state_dict(flat, self.theta0, list(self.theta0))


def load_compressed(path) -> CompressedTall:
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("format") != FORMAT:
                raise CheckpointError(f"{path}: not a TALL compressed file (format {meta.get('format')!r})")
            order, merged = json.loads(meta["order"]), json.loads(meta["merged"])
            theta0 = {k: f.get_tensor(f"theta0.{k}") for k in order}
            tau = torch.cat([f.get_tensor(f"tau_mtl.{k}").reshape(-1) for k in merged])
            packed = f.get_tensor("masks")
            scales = f.get_tensor("scales").tolist() if "scales" in f.keys() else None
            tasks, params = json.loads(meta["tasks"]), json.loads(meta["params"])
    except CheckpointError:
        raise
    except Exception as error:  # safetensors raises on truncated/corrupt headers
        raise CheckpointError(f"{path}: cannot read TALL compressed file ({error})") from error
    index = ParamIndex.from_state_dict({k: theta0[k] for k in merged})
    if index.numel != tau.numel() or packed.shape != (len(tasks), (index.numel + 7) // 8) or \
            (scales is not None and len(scales) != len(tasks)):
        raise CheckpointError(f"{path}: inconsistent sizes in TALL compressed file")
    kind = meta.get("method", "tall")
    return CompressedTall(theta0, tau, MaskSet(packed, index.numel, tasks, kind), index, params, scales)
