"""Atomic file writes: write beside the target, fsync, then ``os.replace`` — never a half-written file.

A write in progress is a temporary file ``.<target name>.<writer pid>-<8 random characters>.tmp`` beside the
target.  A writer that is killed leaves it behind; :func:`clean_stale_temp` removes such files (the CLI calls it
before it writes, the app at startup).
"""
from __future__ import annotations

import os
import re
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

STALE_AFTER_S = 24 * 3600  # a temporary file untouched this long is stale whoever wrote it
_STARTED = time.time()  # temporary files of this pid older than this belong to an earlier process of that pid
_TEMP = re.compile(r"^\..+\.(\d+)-[A-Za-z0-9_]{8}\.tmp$")


class OverwriteError(ValueError):
    """Refused to write over one of the inputs."""


class OutputPathError(ValueError):
    """An output path that cannot be written as given (its folder is missing, or it is a folder)."""


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """The same file: equal after resolving symlinks, or (both existing) the same inode (hard links)."""
    a, b = Path(a), Path(b)
    if a.resolve() == b.resolve():
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist
        return False


def ensure_not_input(target: str | os.PathLike, inputs: Iterable[str | os.PathLike]) -> Path:
    """``target`` resolved; :class:`OverwriteError` when it is one of ``inputs`` (see :func:`same_file`)."""
    for path in inputs:
        if path is not None and same_file(target, path):
            raise OverwriteError(f"refusing to overwrite input file {path} with the output {target}")
    return Path(target).resolve()


def check_output_path(target: str | os.PathLike, inputs: Iterable[str | os.PathLike]) -> Path:
    """Before any work: ``target``'s folder exists (it is not created), ``target`` is not a folder and it is none
    of ``inputs``.  Returns it resolved."""
    target = Path(target)
    if target.is_dir():
        raise OutputPathError(f"{target}: is a folder; give the output file's name")
    if not target.parent.is_dir():
        raise OutputPathError(f"{target}: the folder {target.parent} does not exist; create it first")
    return ensure_not_input(target, inputs)


@contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; on success it replaces ``target`` atomically."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.{os.getpid()}-", suffix=".tmp", dir=target.parent)
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


def _stale(path: Path, now: float) -> bool:
    match = _TEMP.match(path.name)
    if match is None or not path.is_file() or path.is_symlink():
        return False
    pid, modified = int(match.group(1)), path.stat().st_mtime
    if now - modified > STALE_AFTER_S:
        return True
    if pid == os.getpid():
        return modified < _STARTED
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except (PermissionError, OverflowError):
        return False  # alive (another user's process) / not a pid
    return False


def clean_stale_temp(folder: str | os.PathLike, recursive: bool = False) -> list[Path]:
    """Remove the temporary files that killed writes left in ``folder`` (and below it with ``recursive``): those
    of writers no longer running, of an earlier process with this process's pid, or untouched for
    :data:`STALE_AFTER_S`.  Writes in progress are left alone.  Returns the removed paths."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    now, removed = time.time(), []
    candidates = folder.rglob(".*.tmp") if recursive else folder.glob(".*.tmp")
    for path in candidates:
        try:
            if _stale(path, now):
                path.unlink()
                removed.append(path)
        except OSError:  # gone meanwhile, or not ours to remove
            continue
    return removed
