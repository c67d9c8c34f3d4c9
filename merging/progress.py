"""Progress reporting and cooperative cancellation for long-running work (merges, evaluation, training).

Work calls ``progress(fraction, stage)`` between units of work; the callback may be ``None``.  A
:class:`CancelToken` that has been set makes :func:`check` raise :class:`Cancelled`, so work stops at the next
unit boundary and nothing half-computed is returned.
"""
from __future__ import annotations

import math
import sys
import threading
import time
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


class TerminalProgress:
    """A :data:`ProgressFn` for command lines: on a terminal one line rewritten in place; into a file or pipe (a
    log), a line per ``every`` seconds and the last one, so logs stay readable."""

    def __init__(self, stream=None, every: float = 5.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.stream, self.every, self.clock, self._last = stream or sys.stderr, every, clock, -math.inf
        self.live = bool(getattr(self.stream, "isatty", lambda: False)())

    def __call__(self, fraction: float, stage: str) -> None:
        if self.live:
            print(f"\r[{fraction:6.1%}] {stage:<60}", end="\n" if fraction >= 1.0 else "", file=self.stream,
                  flush=True)
            return
        now = self.clock()
        if fraction >= 1.0 or now - self._last >= self.every:
            self._last = now
            print(f"[{fraction:6.1%}] {stage}", file=self.stream, flush=True)
