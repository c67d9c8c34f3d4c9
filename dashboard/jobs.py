"""Background jobs: a FIFO queue served by ``slots`` worker threads — the GPU concurrency limit.

A job is a function ``fn(progress)`` that reports ``progress(fraction, stage)`` (:class:`merging.progress.Progress`)
between units of work.  Cancelling sets the job's :class:`~merging.progress.CancelToken`: a queued job never
starts, a running one raises :class:`~merging.progress.Cancelled` at its next progress call, so GPU work really
stops.  Failures become one clear line for the user (bad input, out of GPU memory, …) instead of a crash.
"""
from __future__ import annotations

import itertools
import logging
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from merging.progress import CancelToken, Cancelled, Progress

log = logging.getLogger(__name__)
QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"
USER_ERRORS = (ValueError, KeyError, FileNotFoundError, NotADirectoryError, PermissionError)


def describe_error(exc: BaseException, stage: str = "") -> str:
    """One line for the user: input errors as they are, out-of-memory with what to try instead."""
    where = f" while {stage}" if stage and stage != QUEUED else ""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(exc, torch.cuda.OutOfMemoryError):
        torch.cuda.empty_cache()
        return (f"Out of GPU memory{where}. Merge fewer tasks, use a float16 task-vector stack, or run on the CPU; "
                "nothing was lost and the app keeps running.")
    if isinstance(exc, MemoryError):
        return f"Out of memory{where}. Merge fewer tasks or use a smaller zoo; the app keeps running."
    if isinstance(exc, KeyError) and exc.args:
        return str(exc.args[0])
    if isinstance(exc, USER_ERRORS):
        return str(exc)
    log.exception("job failed%s", where, exc_info=exc)
    return f"{type(exc).__name__}{where}: {exc}"


@dataclass
class Job:
    id: str
    owner: str
    label: str
    fn: Callable[[Progress], Any]
    token: CancelToken = field(default_factory=CancelToken)
    state: str = QUEUED
    fraction: float = 0.0
    stage: str = QUEUED
    result: Any = None
    error: str | None = None
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished_at: float | None = None
    _done: threading.Event = field(default_factory=threading.Event, repr=False)

    @property
    def finished(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        return self._done.wait(timeout)

    def _report(self, fraction: float, stage: str) -> None:
        self.fraction, self.stage = fraction, stage

    def _finish(self, state: str, result: Any = None, error: str | None = None) -> None:
        self.state, self.result, self.error, self.finished_at = state, result, error, time.time()
        self._done.set()


class JobQueue:
    """FIFO queue of :class:`Job`; at most ``slots`` run at once (one per worker thread)."""

    def __init__(self, slots: int = 1, keep: int = 500):
        if slots < 1:
            raise ValueError("the job queue needs at least one slot")
        self.slots, self.keep = slots, keep
        self._pending: deque[Job] = deque()
        self._jobs: dict[str, Job] = {}
        self._cond = threading.Condition()
        self._ids = itertools.count(1)
        self._workers: list[threading.Thread] = []
        self._closed = False

    # ---------------------------------------------------------------- submitting and watching
    def submit(self, fn: Callable[[Progress], Any], owner: str = "", label: str = "") -> Job:
        with self._cond:
            if self._closed:
                raise RuntimeError("the job queue is shut down")
            job = Job(f"job{next(self._ids)}", owner, label or getattr(fn, "__name__", "job"), fn)
            self._jobs[job.id] = job
            self._pending.append(job)
            self._forget_old()
            if len(self._workers) < self.slots:
                worker = threading.Thread(target=self._work, name=f"mergescope-job-{len(self._workers)}",
                                          daemon=True)
                self._workers.append(worker)
                worker.start()
            self._cond.notify()
        return job

    def get(self, job_id: str) -> Job | None:
        return self._jobs.get(job_id)

    def position(self, job: Job) -> int:
        """How many queued jobs are ahead of ``job`` (0 when running or next)."""
        with self._cond:
            try:
                return self._pending.index(job)
            except ValueError:
                return 0

    def describe(self, job: Job) -> str:
        if job.state == QUEUED:
            ahead = self.position(job) + sum(1 for j in self._jobs.values() if j.state == RUNNING)
            return f"waiting for a free slot ({ahead} job{'s' if ahead != 1 else ''} ahead)"
        if job.state == RUNNING:
            return job.stage
        return job.error or job.state

    def follow(self, job: Job, interval: float = 0.1) -> Iterator[tuple[float, str]]:
        """Yield (fraction, stage description) every ``interval`` seconds until the job has finished."""
        while not job.wait(interval):
            yield job.fraction, self.describe(job)

    def active(self, owner: str | None = None) -> list[Job]:
        with self._cond:
            return [j for j in self._jobs.values() if not j.finished and (owner is None or j.owner == owner)]

    # ---------------------------------------------------------------- cancelling
    def cancel(self, job_id: str) -> bool:
        """Cancel a queued or running job; False when it is unknown or already finished."""
        job = self._jobs.get(job_id)
        if job is None or job.finished:
            return False
        job.token.cancel()
        with self._cond:
            if job in self._pending:
                self._pending.remove(job)
                job._finish(CANCELLED, error="cancelled before it started")
        return True

    def cancel_owner(self, owner: str) -> list[Job]:
        jobs = self.active(owner)
        return [job for job in jobs if self.cancel(job.id)]

    def close(self, timeout: float = 10.0) -> None:
        """Cancel everything and stop the workers (tests and shutdown)."""
        with self._cond:
            self._closed = True
            pending = list(self._pending)
        for job in pending + self.active():
            self.cancel(job.id)
        with self._cond:
            self._cond.notify_all()
        for worker in self._workers:
            worker.join(timeout)

    # ---------------------------------------------------------------- internals
    def _forget_old(self) -> None:
        done = [j for j in self._jobs.values() if j.finished]
        for job in done[:max(0, len(self._jobs) - self.keep)]:
            del self._jobs[job.id]

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closed:
                    self._cond.wait()
                if not self._pending:
                    return
                job = self._pending.popleft()
                job.state, job.started, job.stage = RUNNING, time.time(), "starting"
            self._run(job)

    @staticmethod
    def _run(job: Job) -> None:
        try:
            result = job.fn(Progress(job._report, job.token))
        except Cancelled:
            job._finish(CANCELLED, error=f"cancelled during {job.stage!r}")
        except BaseException as exc:  # noqa: BLE001 — a job never takes the app down
            job._finish(FAILED, error=describe_error(exc, job.stage))
        else:
            if job.token.cancelled:  # cancelled after its last progress call: the user asked not to have it
                job._finish(CANCELLED, error=f"cancelled during {job.stage!r}")
            else:
                job._finish(DONE, result)
