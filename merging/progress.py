"""Progress reporting and cooperative cancellation for long-running work (merges, evaluation, training).

Work calls ``progress(fraction, stage)`` between units of work; the callback may be ``None``.  A
:class:`CancelToken` that has been set makes :func:`check` raise :class:`Cancelled`, so work stops at the next
unit boundary and nothing half-computed is returned.
"""
from __future__ import annotations

import threading
from typing import Callable, Optional

ProgressFn = Callable[[float, str], None]


class Cancelled(RuntimeError):
    """Raised inside work whose :class:`CancelToken` was set."""


class CancelToken:
    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()


class Progress:
    """Bundles a progress callback and a cancel token; ``sub(lo, hi)`` maps a stage onto a sub-range."""

    def __init__(self, callback: Optional[ProgressFn] = None, token: Optional[CancelToken] = None,
                 lo: float = 0.0, hi: float = 1.0) -> None:
        self.callback, self.token, self.lo, self.hi = callback, token, lo, hi

    def __call__(self, fraction: float, stage: str) -> None:
        self.check()
        if self.callback is not None:
            self.callback(self.lo + (self.hi - self.lo) * min(max(fraction, 0.0), 1.0), stage)

    def check(self) -> None:
        if self.token is not None and self.token.cancelled:
            raise Cancelled("cancelled by the user")

    def sub(self, lo: float, hi: float) -> "Progress":
        span = self.hi - self.lo
        return Progress(self.callback, self.token, self.lo + span * lo, self.lo + span * hi)


def as_progress(progress: "Progress | ProgressFn | None") -> Progress:
    if isinstance(progress, Progress):
        return progress
    return Progress(progress)
