"""Errors for checkpoint files: every one names the file and the problem."""
from __future__ import annotations

import os

from ..space import CheckpointError

PROBLEMS = ("missing", "empty", "not a checkpoint", "corrupt", "truncated", "unsafe pickle", "unsupported format",
            "unrecognised layout", "wrong architecture", "missing keys", "extra keys", "shape mismatch",
            "not a head", "over a limit")


class CheckpointFileError(CheckpointError):
    """A checkpoint file that cannot be used; ``problem`` is one of :data:`PROBLEMS`."""

    def __init__(self, path: str | os.PathLike, problem: str, detail: str = ""):
        if problem not in PROBLEMS:
            raise ValueError(f"unknown checkpoint problem {problem!r}")
        self.path, self.problem, self.detail = str(path), problem, detail
        super().__init__(f"{self.path}: {problem}" + (f": {detail}" if detail else ""))


class UnsafePickleError(CheckpointFileError):
    """The pickle references a global outside the allowlist (it would run code); nothing was executed."""

    def __init__(self, path: str | os.PathLike, detail: str):
        super().__init__(path, "unsafe pickle", detail)


class LimitError(CheckpointFileError):
    """The file asks for more than a loader limit allows (header size, pickle memo, decompressed size, a tensor
    larger than its storage): refused before the memory is spent (see :mod:`.limits`)."""

    def __init__(self, path: str | os.PathLike, detail: str):
        super().__init__(path, "over a limit", detail)
