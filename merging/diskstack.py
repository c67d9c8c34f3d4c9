"""Out-of-core task-vector stacks: the (T, P) stack in a memory-mapped scratch file instead of RAM.

The file is created in a scratch folder, mapped shared, and unlinked at once, so it never outlives the process
(not even a killed one).  Every CPU kernel reads the stack through the mapping chunk by chunk, so the kernel's
page cache holds only what is being read and evicts the rest under memory pressure: results are the same bits
as with an in-memory stack.  While the stack is built, each finished row is written back and dropped from the
process (``msync`` + ``MADV_DONTNEED``), so building never holds more than one row of dirty pages.
"""
from __future__ import annotations

import mmap
import os
import re
import tempfile
from pathlib import Path

import numpy as np
import torch

_NUMPY = {torch.float32: np.float32, torch.float16: np.float16}
WORKING_VECTORS = 4  # P-sized float32 vectors a merge keeps besides the stack (θ0, result, workspace, one more)


class DiskStack:
    """A (rows, cols) tensor backed by an unlinked, memory-mapped file in ``folder``."""

    def __init__(self, rows: int, cols: int, dtype: torch.dtype, folder: str | os.PathLike):
        if dtype not in _NUMPY:
            raise ValueError(f"an out-of-core stack holds float32 or float16, not {dtype}")
        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"scratch folder {folder} does not exist")
        itemsize = np.dtype(_NUMPY[dtype]).itemsize
        self.row_bytes = cols * itemsize
        fd, path = tempfile.mkstemp(prefix=".mergescope-stack-", dir=folder)
        try:
            os.unlink(path)
            os.ftruncate(fd, max(rows * self.row_bytes, 1))
            self._map = mmap.mmap(fd, max(rows * self.row_bytes, 1))
        finally:
            os.close(fd)
        array = np.frombuffer(self._map, dtype=_NUMPY[dtype], count=rows * cols).reshape(rows, cols)
        self.tensor = torch.from_numpy(array)  # keeps ``array`` and so the mapping alive

    def release_row(self, row: int) -> None:
        """Write row ``row`` back to the file and drop its pages from this process."""
        page = mmap.PAGESIZE
        start = -(-row * self.row_bytes // page) * page
        stop = (row + 1) * self.row_bytes // page * page
        if stop > start:
            self._map.flush(start, stop - start)
            self._map.madvise(mmap.MADV_DONTNEED, start, stop - start)


def parse_size(text: str, field: str = "--max-memory") -> int:
    """``"8G"``, ``"512M"``, ``"1.5GB"``, ``"1000000"`` → bytes (binary units); errors name ``field``."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:I?B)?\s*", str(text), re.IGNORECASE)
    if not match:
        raise ValueError(f"{field}: {text!r} is not a size such as 8G or 512M")
    return int(float(match.group(1)) * 1024 ** "_KMGT".index(match.group(2).upper() or "_"))


def needs_disk(rows: int, cols: int, itemsize: int, max_memory: int | None) -> bool:
    """Whether a (rows, cols) stack plus the merge's working vectors exceed ``max_memory`` bytes."""
    return max_memory is not None and rows * cols * itemsize + WORKING_VECTORS * cols * 4 > max_memory
