"""Bit-packed binary masks, one row per task: 1 bit per parameter per task.

Layout is numpy ``packbits`` order (big-endian within a byte, rows padded to a whole byte), so a row
round-trips through ``numpy.unpackbits``.  TALL masks, TIES trims, PCB keep masks, DARE keep masks and CALM masks
are all stored as a :class:`MaskSet`; the TALL compressed form writes these bytes as they are.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from .chunks import map_chunks, use_numpy

_SHIFTS = {}


def _shifts(device: torch.device) -> torch.Tensor:
    key = str(device)
    if key not in _SHIFTS:
        _SHIFTS[key] = torch.arange(7, -1, -1, dtype=torch.uint8, device=device)
    return _SHIFTS[key]


def pack_bits(mask: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """(P,) bool → (⌈P/8⌉,) uint8 in numpy ``packbits`` order (written into ``out`` when given)."""
    mask = mask.reshape(-1)
    pad = (-mask.numel()) % 8
    if pad:
        mask = torch.cat([mask, mask.new_zeros(pad)])
    bits = torch.bitwise_left_shift(mask.view(torch.uint8).view(-1, 8), _shifts(mask.device))
    return torch.sum(bits, -1, dtype=torch.uint8, out=out)


def unpack_bits(packed: torch.Tensor, numel: int, out: torch.Tensor | None = None) -> torch.Tensor:
    """(…, B) uint8 → (…, numel) bool; inverse of :func:`pack_bits` along the last dimension.

    ``out`` (uint8, ``packed.numel() * 8`` elements) avoids allocating for one row."""
    if out is not None:
        bits = torch.bitwise_right_shift(packed.unsqueeze(-1), _shifts(packed.device), out=out.view(*packed.shape, 8))
    else:
        bits = packed.unsqueeze(-1) >> _shifts(packed.device)
    bits &= 1
    return bits.reshape(*packed.shape[:-1], -1)[..., :numel].view(torch.bool)


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
        self.set_chunk(t, 0, mask)

    def set_chunk(self, t: int, start: int, mask: torch.Tensor) -> None:
        """Bits [start, start + mask.numel()) of mask t; ``start`` is a multiple of 8 and so is the chunk's length
        unless it ends the mask."""
        stop = start + mask.numel()
        if start % 8 or stop > self.numel or (stop < self.numel and mask.numel() % 8):
            raise ValueError(f"a chunk of {mask.numel()} bits at {start} is not byte-aligned in {self.numel}")
        mask = mask.reshape(-1).to(self.packed.device).contiguous()
        row = self.packed[t, start // 8:(stop + 7) // 8]
        if use_numpy(mask):
            bits, out = mask.numpy(), row.numpy()
            map_chunks(bits.size, lambda a, b: np.copyto(out[a // 8:(b + 7) // 8], np.packbits(bits[a:b])))
        else:
            pack_bits(mask, out=row)

    def get(self, t: int, out: torch.Tensor | None = None) -> torch.Tensor:
        """Mask t as (P,) bool; pass a reusable uint8 buffer of ``8·⌈P/8⌉`` elements as ``out``."""
        if use_numpy(self.packed):
            row = self.packed[t].numpy()
            bits = (out if out is not None else self.buffer()).numpy()
            map_chunks(self.numel, lambda a, b: np.copyto(
                bits[a:b], np.unpackbits(row[a // 8:(b + 7) // 8], count=b - a)))
            return torch.from_numpy(bits[:self.numel]).view(torch.bool)
        return unpack_bits(self.packed[t], self.numel, out)

    def buffer(self) -> torch.Tensor:
        return torch.empty(self.packed.shape[1] * 8, dtype=torch.uint8, device=self.packed.device)

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
