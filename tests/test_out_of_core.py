"""Out-of-core stacks: a memory-mapped stack gives the same bits as an in-memory one, and a merge runs under a
memory cap (a cgroup) smaller than the stack, where the in-memory merge is killed."""
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from engine_fixtures import state_dicts
from merging import TaskVectorSpace, list_methods, run_merge
from merging.diskstack import needs_disk, parse_size
from merging.maskstats import mask_statistics

ROOT = Path(__file__).resolve().parents[1]
CGROUP = Path("/sys/fs/cgroup/memory")


@pytest.fixture(scope="module")
def spaces(tmp_path_factory):
    scratch = tmp_path_factory.mktemp("scratch")
    base, fts = state_dicts(T=4, seed=3)
    memory = TaskVectorSpace.build(base, fts, device="cpu")
    disk = TaskVectorSpace.build(base, fts, device="cpu", max_memory=0, scratch=str(scratch))
    return memory, disk, scratch


def test_disk_stack_is_the_same_stack_and_leaves_no_file(spaces):
    memory, disk, scratch = spaces
    assert torch.equal(memory.stack, disk.stack) and torch.equal(memory.theta0, disk.theta0)
    assert list(scratch.iterdir()) == []  # unlinked at creation: nothing survives the process


@pytest.mark.parametrize("method", [m.name for m in list_methods() if not m.needs_data])
def test_every_method_gives_the_same_bits_out_of_core(spaces, method):
    memory, disk, _ = spaces
    a, b = run_merge(memory, method), run_merge(disk, method)
    assert torch.equal(a.delta, b.delta)
    assert a.masks.keys() == b.masks.keys()
    for name in a.masks:
        assert torch.equal(a.masks[name].packed, b.masks[name].packed)
        sa, sb = mask_statistics(a.masks[name], memory.index), mask_statistics(b.masks[name], disk.index)
        assert sa.histogram.equals(sb.histogram)


def test_sizes_and_the_rule():
    assert parse_size("8G") == 8 * 2**30 and parse_size("512m") == 512 * 2**20 and parse_size("1.5GB") == 3 * 2**29
    assert parse_size("1000") == 1000
    with pytest.raises(ValueError, match="--max-memory"):
        parse_size("lots")
    assert not needs_disk(8, 1000, 4, None) and needs_disk(8, 1000, 4, 8 * 4000)
    assert not needs_disk(8, 1000, 4, 8 * 4000 + 4 * 4000)


def _cgroup_available() -> bool:
    return os.geteuid() == 0 and (CGROUP / "cgroup.procs").exists() and os.access(CGROUP, os.W_OK)


@pytest.mark.skipif(not _cgroup_available(), reason="needs root and the cgroup v1 memory controller")
def test_merge_under_a_memory_cap_smaller_than_the_stack(tmp_path):
    """16 tasks × 12 M parameters: a 768 MB stack under a 700 MB cap (the whole process, page cache included)."""
    T, P, cap = 16, 12 * 2**20, 700 * 2**20
    g = torch.Generator().manual_seed(0)
    theta0 = torch.randn(P, generator=g)
    save_file({"visual.w": theta0}, str(tmp_path / "pre.safetensors"))  # an open_clip visual tensor
    paths = []
    for t in range(T):
        paths.append(tmp_path / f"t{t:02d}.safetensors")
        save_file({"visual.w": theta0 + 1e-2 * torch.randn(P, generator=g)}, str(paths[-1]))
    group = CGROUP / f"mergescope-test-{uuid.uuid4().hex[:8]}"
    group.mkdir()
    try:
        (group / "memory.limit_in_bytes").write_text(str(cap))
        (group / "memory.swappiness").write_text("0")

        def merge(out, *extra):
            command = [sys.executable, "-m", "merging", "merge", "--pretrained", str(tmp_path / "pre.safetensors"),
                       "--finetuned", *map(str, paths), "--method", "ties", "--device", "cpu",
                       "--out", str(out), *extra]
            enter = f"echo $$ > {group / 'cgroup.procs'} && exec \"$@\""
            return subprocess.run(["sh", "-c", enter, "sh", *command], cwd=ROOT, capture_output=True, text=True,
                                  env={**os.environ, "OMP_NUM_THREADS": "2"}, timeout=600)

        in_memory = merge(tmp_path / "ram.safetensors")
        assert in_memory.returncode == -9, in_memory.stderr[-2000:]  # the cap bites: killed, the stack is larger
        done = merge(tmp_path / "disk.safetensors", "--max-memory", "600M", "--scratch", str(tmp_path))
        assert done.returncode == 0, done.stderr[-2000:]
    finally:
        group.rmdir()
    strip = lambda p: {"w": load_file(str(p))["visual.w"]}  # noqa: E731
    space = TaskVectorSpace.build({"w": theta0}, [lambda p=p: strip(p) for p in paths], device="cpu")
    expected = space.theta0 + run_merge(space, "ties").delta
    assert torch.equal(load_file(str(tmp_path / "disk.safetensors"))["visual.w"], expected)
