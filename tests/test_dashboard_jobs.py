"""The background job queue: FIFO, concurrency limit, cooperative cancel, clear errors."""
import threading
import time

import pytest
import torch

from dashboard.jobs import CANCELLED, DONE, FAILED, JobQueue, describe_error
from merging import ParameterError, get_method


@pytest.fixture
def queue():
    q = JobQueue(slots=1)
    yield q
    q.close()


def _blocker():
    gate = threading.Event()

    def fn(progress):
        progress(0.0, "blocked")
        assert gate.wait(10)
        return "released"
    return gate, fn


def test_jobs_run_in_order_and_return_results(queue):
    order = []
    jobs = [queue.submit(lambda p, i=i: order.append(i) or i * i, owner="s") for i in range(5)]
    for job in jobs:
        assert job.wait(10)
    assert order == list(range(5))
    assert [j.result for j in jobs] == [0, 1, 4, 9, 16] and all(j.state == DONE for j in jobs)


@pytest.mark.parametrize("slots", [1, 2, 3])
def test_at_most_slots_jobs_run_at_once(slots):
    q = JobQueue(slots=slots)
    lock, running, peak = threading.Lock(), [0], [0]

    def fn(progress):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.05)
        with lock:
            running[0] -= 1
    try:
        jobs = [q.submit(fn) for _ in range(3 * slots)]
        assert all(j.wait(10) for j in jobs)
    finally:
        q.close()
    assert peak[0] == slots


def test_queued_job_reports_position_and_cancel_means_it_never_runs(queue):
    gate, block = _blocker()
    first = queue.submit(block)
    ran = []
    second = queue.submit(lambda p: ran.append(1))
    third = queue.submit(lambda p: ran.append(3))
    while first.stage != "blocked":
        time.sleep(0.01)
    assert queue.position(third) == 1
    assert "2 jobs ahead" in queue.describe(third)
    assert queue.cancel(second.id)
    assert second.state == CANCELLED and second.finished
    gate.set()
    assert third.wait(10) and first.wait(10)
    assert ran == [3]
    assert not queue.cancel(second.id)  # already finished


def test_cancel_stops_a_running_job_at_its_next_progress_call(queue):
    steps = []

    def endless(progress):
        for i in range(10_000):
            progress(i / 10_000, f"step {i}")
            steps.append(i)
            time.sleep(0.005)
    job = queue.submit(endless, owner="alice")
    while len(steps) < 5:
        time.sleep(0.01)
    assert [j.id for j in queue.cancel_owner("alice")] == [job.id]
    assert job.wait(5)
    assert job.state == CANCELLED and "cancelled during 'step" in job.error
    done = len(steps)
    time.sleep(0.05)
    assert len(steps) == done < 10_000


def test_cancel_stops_a_real_merge(queue):
    """TIES reports a stage per task: cancelling during the trim stops it before the disjoint merge."""
    from merging import TaskVectorSpace, run_merge
    torch.manual_seed(0)
    base = {"w": torch.randn(64)}
    space = TaskVectorSpace.build(base, [{"w": base["w"] + torch.randn(64)} for _ in range(4)], device="cpu")
    stages = []

    def merge(progress):
        def spy(fraction, stage):
            stages.append(stage)
            if stage.startswith("trim task1"):
                job.token.cancel()
            progress(fraction, stage)
        return run_merge(space, "ties", {}, spy)
    job = queue.submit(merge)
    assert job.wait(10)
    assert job.state == CANCELLED and job.result is None
    assert not any(s.startswith("disjoint") for s in stages)


def test_cancel_owner_only_touches_that_owner(queue):
    gate, block = _blocker()
    mine = queue.submit(block, owner="me")
    theirs = queue.submit(lambda p: "ok", owner="them")
    queue.cancel_owner("me")
    gate.set()
    assert mine.wait(5) and theirs.wait(5)
    assert mine.state == CANCELLED and theirs.state == DONE


def test_errors_become_one_clear_line(queue):
    def bad_param(progress):
        progress(0.5, "resolving parameters")
        from merging.params import resolve_params
        resolve_params(get_method("ties").params, {"k": 150})
    job = queue.submit(bad_param)
    job.wait(5)
    assert job.state == FAILED and job.error == "k: 150.0 is above the maximum 100.0"

    def boom(progress):
        progress(0.3, "evaluating cars")
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")
    job = queue.submit(boom)
    job.wait(5)
    assert job.state == FAILED and job.error.startswith("Out of GPU memory while evaluating cars.")
    # the queue keeps working after failures
    assert queue.submit(lambda p: 7).wait(5)


def test_describe_error_kinds():
    assert describe_error(ParameterError("lam: expected float, got 'x'")) == "lam: expected float, got 'x'"
    assert describe_error(KeyError("unknown merge method 'foo'")) == "unknown merge method 'foo'"
    assert describe_error(MemoryError(), "loading").startswith("Out of memory while loading")
    assert describe_error(RuntimeError("weird"), "merging") == "RuntimeError while merging: weird"


def test_follow_yields_progress_until_done(queue):
    gate = threading.Event()

    def fn(progress):
        progress(0.25, "quarter")
        gate.wait(5)
        progress(0.75, "three quarters")
    job = queue.submit(fn)
    seen = []
    for fraction, stage in queue.follow(job, interval=0.01):
        seen.append((fraction, stage))
        if stage == "quarter":
            gate.set()
    assert (0.25, "quarter") in seen and job.state == DONE


def test_closed_queue_refuses_work():
    q = JobQueue()
    q.close()
    with pytest.raises(RuntimeError):
        q.submit(lambda p: None)
