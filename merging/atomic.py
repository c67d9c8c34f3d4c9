"""Atomic file writes: write beside the target, fsync, then ``os.replace`` — never a half-written file."""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator


class OverwriteError(ValueError):
    """Refused to write over one of the inputs."""


def ensure_not_input(target: str | os.PathLike, inputs: Iterable[str | os.PathLike]) -> Path:
    target = Path(target).resolve()
    for path in inputs:
        if path is not None and Path(path).resolve() == target:
            raise OverwriteError(f"refusing to overwrite input file {target}")
    return target


@contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; on success it replaces ``target`` atomically."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()
