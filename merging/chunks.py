"""Cache-sized chunked execution for CPU kernels.

On CPU, whole-vector torch ops over 88 M elements are bound by memory traffic and by thread start-up; running
numpy ufuncs (which release the GIL) over cache-resident chunks split among a few threads is several times
faster.  GPU code paths use whole-vector torch ops instead.
"""
from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, TypeVar

import torch

CHUNK = 1 << 18  # elements (1 MiB of float32); a multiple of 8 so chunks start on packed-mask byte boundaries
R = TypeVar("R")


def threads() -> int:
    return max(1, min(torch.get_num_threads(), os.cpu_count() or 1))


def map_chunks(numel: int, body: Callable[[int, int], R], chunk: int | None = None) -> list[R]:
    """``[body(start, stop) for each chunk]`` in order, chunks interleaved over :func:`threads` threads
    (``chunk`` elements each, :data:`CHUNK` at call time by default)."""
    chunk = chunk or CHUNK
    return map_items([(start, min(start + chunk, numel)) for start in range(0, numel, chunk)], body)


def map_items(items: list[tuple], body: Callable[..., R]) -> list[R]:
    """``[body(*item) for item in items]`` in order, items interleaved over :func:`threads` threads: the calling
    thread and the workers of one process-wide pool (starting threads per call costs more than a pass over
    memory on a loaded machine).  Called from inside a body it runs serially."""
    n = threads()
    if n == 1 or len(items) <= 1 or getattr(_LOCAL, "inside", False):
        return [body(*item) for item in items]

    def run(part: list[tuple]) -> list[R]:
        _LOCAL.inside = True
        try:
            return [body(*item) for item in part]
        finally:
            _LOCAL.inside = False

    parts = [items[i::n] for i in range(n)]
    futures = [_pool(n - 1).submit(run, part) for part in parts[1:]]
    done = [run(parts[0])] + [future.result() for future in futures]
    out: list[R] = [None] * len(items)  # type: ignore[list-item]
    for i in range(n):
        out[i::n] = done[i]
    return out


_LOCAL = threading.local()
_POOL: dict = {}  # worker count → the process-wide pool
_POOL_LOCK = threading.Lock()


def _pool(workers: int) -> ThreadPoolExecutor:
    with _POOL_LOCK:
        if workers not in _POOL:
            _POOL[workers] = ThreadPoolExecutor(workers, thread_name_prefix="mergescope-chunks")
        return _POOL[workers]


NUMPY_KERNELS = True  # tests turn this off to run the torch (GPU) code paths on CPU
_NUMPY_DTYPES = (torch.float32, torch.bool, torch.uint8, torch.int8)


def use_numpy(tensor: torch.Tensor) -> bool:
    """Whether the chunked numpy kernels apply: contiguous CPU tensors of float32, bool or bytes."""
    return NUMPY_KERNELS and tensor.device.type == "cpu" and tensor.dtype in _NUMPY_DTYPES and \
        tensor.is_contiguous()


def map_ranges(numel: int, body: Callable[[int, int], R], device: torch.device) -> list[R]:
    """:func:`map_chunks` on CPU (while :data:`NUMPY_KERNELS` is on), else ``[body(0, numel)]``: for bodies of
    elementwise torch ops, which give the same bits on a chunk as on the whole vector."""
    if NUMPY_KERNELS and device.type == "cpu":
        return map_chunks(numel, body)
    return [body(0, numel)]


def scratch(like: torch.Tensor, slot: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """An uninitialised buffer shaped like the chunk ``like``: for a CPU chunk, the calling thread's buffer number
    ``slot`` of that dtype, reused across chunks (fresh pages are costly to fault in); a fresh tensor otherwise."""
    n = like.numel()
    if like.device.type != "cpu" or n > CHUNK:
        return torch.empty(like.shape, dtype=dtype, device=like.device)
    buffers = _LOCAL.__dict__.setdefault("buffers", {})
    key = (slot, dtype)
    if key not in buffers or buffers[key].numel() < n:
        buffers[key] = torch.empty(CHUNK, dtype=dtype)
    return buffers[key][:n]
