"""Bit-packed binary masks, one row per task: 1 bit per parameter per task.

Layout is numpy ``packbits`` order (big-endian within a byte, rows padded to a whole byte), so a row
round-trips through ``numpy.unpackbits``.  TALL masks, TIES trims, PCB keep masks, DARE keep masks and CALM masks
are all stored as a :class:`MaskSet`; the TALL compressed form writes these bytes as they are.
"""
from __future__ import annotations

from typing import Sequence

import torch

_SHIFTS = {}


def _shifts(device: torch.device) -> torch.Tensor:
    key = str(device)
    if key not in _SHIFTS:
        _SHIFTS[key] = torch.arange(7, -1, -1, dtype=torch.uint8, device=device)
    return _SHIFTS[key]


def pack_bits(mask: torch.Tensor) -> torch.Tensor:
    """(P,) bool → (⌈P/8⌉,) uint8, numpy ``packbits`` order."""
    mask = mask.reshape(-1)
    pad = (-mask.numel()) % 8
    if pad:
        mask = torch.cat([mask, mask.new_zeros(pad)])
    bits = mask.view(-1, 8).to(torch.uint8) << _shifts(mask.device)
    return bits.sum(-1, dtype=torch.uint8)


def unpack_bits(packed: torch.Tensor, numel: int) -> torch.Tensor:
    """(…, B) uint8 → (…, numel) bool; inverse of :func:`pack_bits` along the last dimension."""
    bits = (packed.unsqueeze(-1) >> _shifts(packed.device)) & 1
    return bits.reshape(*packed.shape[:-1], -1)[..., :numel].bool()


class MaskSet:
    """T binary masks over P parameters, packed 8 per byte on the space's device."""

    def __init__(self, packed: torch.Tensor, numel: int, task_names: Sequence[str], kind: str):
        if packed.dtype != torch.uint8 or packed.dim() != 2 or packed.shape[1] != (numel + 7) // 8:
            raise ValueError("packed masks must be uint8 of shape (T, ceil(P/8))")
        if packed.shape[0] != len(task_names):
            raise ValueError("one task name per mask row is required")
        self.packed, self.numel, self.task_names, self.kind = packed, numel, list(task_names), kind

    @classmethod
    def empty(cls, task_names: Sequence[str], numel: int, device, kind: str) -> "MaskSet":
        packed = torch.zeros((len(task_names), (numel + 7) // 8), dtype=torch.uint8, device=device)
        return cls(packed, numel, task_names, kind)

    @classmethod
    def from_bool(cls, masks: torch.Tensor, task_names: Sequence[str], kind: str) -> "MaskSet":
        out = cls.empty(task_names, masks.shape[1], masks.device, kind)
        for t in range(masks.shape[0]):
            out.set(t, masks[t])
        return out

    @property
    def T(self) -> int:
        return self.packed.shape[0]

    def set(self, t: int, mask: torch.Tensor) -> None:
        if mask.numel() != self.numel:
            raise ValueError(f"mask has {mask.numel()} elements, expected {self.numel}")
        self.packed[t] = pack_bits(mask.to(self.packed.device))

    def get(self, t: int) -> torch.Tensor:
        return unpack_bits(self.packed[t], self.numel)

    def columns(self, start: int, stop: int) -> torch.Tensor:
        """(T, stop − start) bool for a column range; ``start`` must be a multiple of 8."""
        if start % 8:
            raise ValueError("column ranges start on a byte boundary")
        return unpack_bits(self.packed[:, start // 8:(stop + 7) // 8], stop - start)

    def to_bool(self) -> torch.Tensor:
        return unpack_bits(self.packed, self.numel)

    def nbytes(self) -> int:
        return self.packed.numel()

    def to(self, device) -> "MaskSet":
        return MaskSet(self.packed.to(device), self.numel, self.task_names, self.kind)
