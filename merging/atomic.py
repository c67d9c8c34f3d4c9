"""Atomic file writes: write beside the target, fsync, then ``os.replace`` — never a half-written file.

A write in progress is a temporary file ``.<target name>.<writer pid>-<8 random characters>.tmp`` beside the
target (a folder of that name for :func:`atomic_folder`).  A writer that is killed leaves it behind;
:func:`clean_stale_temp` removes such files and folders (the CLI calls it before it writes, the app at startup).
"""
from __future__ import annotations

import os
import re
import shutil
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


def check_output_folder(target: str | os.PathLike, inputs: Iterable[str | os.PathLike]) -> Path:
    """Before any work: ``target`` (a folder to create) does not exist, its parent does, and it is neither an
    input nor inside an input folder.  Returns it resolved."""
    target = Path(target)
    if target.exists() or target.is_symlink():
        raise OutputPathError(f"{target}: already exists; give a new folder (outputs never replace anything)")
    if not target.parent.is_dir():
        raise OutputPathError(f"{target}: the folder {target.parent} does not exist; create it first")
    resolved = target.parent.resolve() / target.name
    for path in inputs:
        if path is not None and (same_file(target, path) or resolved.is_relative_to(Path(path).resolve())):
            raise OverwriteError(f"refusing to write the output {target} inside the input {path}")
    return resolved


@contextmanager
def atomic_folder(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside ``target``; on success its files are fsynced and it is renamed to
    ``target``, which must not exist (a folder is never replaced; a race that creates it makes the rename
    fail, except for an empty folder, which Linux's rename replaces)."""
    target = Path(target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.{os.getpid()}-", suffix=".tmp", dir=target.parent))
    try:
        yield tmp
        for path in tmp.iterdir():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
        if target.exists() or target.is_symlink():
            raise OutputPathError(f"{target}: appeared while the output was written; nothing was replaced")
        os.rename(tmp, target)
        _fsync_folder(target.parent)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
    if match is None or not (path.is_file() or path.is_dir()) or path.is_symlink():
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
    """Remove the temporary files and folders that killed writes left in ``folder`` (and below it with
    ``recursive``): those of writers no longer running, of an earlier process with this process's pid, or untouched
    for :data:`STALE_AFTER_S`.  Writes in progress are left alone.  Returns the removed paths."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    now, removed = time.time(), []
    candidates = folder.rglob(".*.tmp") if recursive else folder.glob(".*.tmp")
    for path in candidates:
        try:
            if _stale(path, now):
                shutil.rmtree(path) if path.is_dir() else path.unlink()
                removed.append(path)
        except OSError:  # gone meanwhile, or not ours to remove
            continue
    return removed
