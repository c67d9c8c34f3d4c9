"""Cache-sized chunked execution for CPU kernels.

On CPU, whole-vector torch ops over 88 M elements are bound by memory traffic and by thread start-up; running
numpy ufuncs (which release the GIL) over cache-resident chunks split among a few threads is several times
faster.  GPU code paths use whole-vector torch ops instead.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, TypeVar

import torch

CHUNK = 1 << 18  # elements (1 MiB of float32); a multiple of 8 so chunks start on packed-mask byte boundaries
R = TypeVar("R")


def threads() -> int:
    return max(1, min(torch.get_num_threads(), os.cpu_count() or 1))


def map_chunks(numel: int, body: Callable[[int, int], R], chunk: int = CHUNK) -> list[R]:
    """``[body(start, stop) for each chunk]`` in order, chunks interleaved over :func:`threads` threads."""
    return map_items([(start, min(start + chunk, numel)) for start in range(0, numel, chunk)], body)


def map_items(items: list[tuple], body: Callable[..., R]) -> list[R]:
    """``[body(*item) for item in items]`` in order, items interleaved over :func:`threads` threads."""
    n = threads()
    if n == 1 or len(items) <= 1:
        return [body(*item) for item in items]
    parts = [items[i::n] for i in range(n)]
    with ThreadPoolExecutor(n) as pool:
        done = list(pool.map(lambda part: [body(*item) for item in part], parts))
    out: list[R] = [None] * len(items)  # type: ignore[list-item]
    for i in range(n):
        out[i::n] = done[i]
    return out


NUMPY_KERNELS = True  # tests turn this off to run the torch (GPU) code paths on CPU
_NUMPY_DTYPES = (torch.float32, torch.bool, torch.uint8, torch.int8)


def use_numpy(tensor: torch.Tensor) -> bool:
    """Whether the chunked numpy kernels apply: contiguous CPU tensors of float32, bool or bytes."""
    return NUMPY_KERNELS and tensor.device.type == "cpu" and tensor.dtype in _NUMPY_DTYPES and \
        tensor.is_contiguous()
