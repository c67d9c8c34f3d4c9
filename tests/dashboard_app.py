"""The dashboard tests' tiny zoo, and the dashboard launched in-process on a free port (not a test module)."""
from __future__ import annotations

import socket
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from ck_tiny_zoo import make_tiny_zoo
from merging.registry import MergeMethod, MergeResult
from merging.params import Param

SLOW = "slow_test"


@pytest.fixture(scope="module")
def zoo_dir(tmp_path_factory):
    """A tiny 3-task zoo on disk, built once per test module."""
    root = tmp_path_factory.mktemp("zoo")
    make_tiny_zoo(root, n_tasks=3, n_per_class=3, noise=0.05)
    return root


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _slow_run(space, params, progress, context=None) -> MergeResult:
    """Task Arithmetic that takes ``seconds`` in small steps, each reporting progress (so cancel can stop it)."""
    steps = int(params["seconds"] / 0.02)
    for i in range(steps):
        progress(i / steps, f"slow step {i + 1} of {steps}")
        time.sleep(0.02)
    return MergeResult(SLOW, params, 0.3 * space.sum_tau())


SLOW_METHOD = MergeMethod(SLOW, "Slow (test)", "Task Arithmetic that takes its time.", "test only",
                          (Param("seconds", float, 30.0, "how long to take", low=0.0, high=600.0),), _slow_run)


@contextmanager
def running_app(zoo: Path | None, data_dir: Path, slots: int = 1, auth=None, clean=(600, 3600), **settings):
    """Yield (url, demo) for an app serving ``zoo``; always shut down (server, job queue)."""
    from dashboard.service import Settings
    from dashboard.ui import create_app, launch

    demo = create_app(Settings(data_dir, device="cpu", upload_limit=50 << 20, **settings), str(zoo) if zoo else None,
                      slots=slots)
    port = free_port()
    try:
        launch(demo, "127.0.0.1", port, auth=auth, clean=clean, prevent_thread_lock=True, quiet=True)
        yield f"http://127.0.0.1:{port}/", demo
    finally:
        demo.dashboard.jobs.close()
        demo.close()
