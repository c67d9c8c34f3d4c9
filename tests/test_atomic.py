"""Atomic writes: a write killed with SIGKILL leaves the target as it was and a temporary file that
``clean_stale_temp`` removes on the next start, while writes in progress are left alone."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

import merging.atomic as atomic
from merging.atomic import OverwriteError, atomic_path, clean_stale_temp, ensure_not_input, same_file

_WRITER = r"""
import sys, time
from merging.atomic import atomic_path
with atomic_path(sys.argv[1]) as tmp:
    with open(tmp, "wb") as handle:
        handle.write(b"new" * 100_000)
        handle.flush()
        print("writing", flush=True)
        time.sleep(60)
"""


def _start_writer(target):
    child = subprocess.Popen([sys.executable, "-c", _WRITER, str(target)], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "writing"
    return child


def test_killed_write_keeps_the_target_and_its_temp_file_is_cleaned(tmp_path):
    target = tmp_path / "merged.safetensors"
    target.write_bytes(b"old")
    child = _start_writer(target)
    (temp,) = [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert temp.name.startswith(f".merged.safetensors.{child.pid}-")
    assert clean_stale_temp(tmp_path) == [] and temp.exists()  # the writer is alive: left alone
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    assert target.read_bytes() == b"old" and temp.exists()
    assert clean_stale_temp(tmp_path) == [temp] and not temp.exists()
    assert target.read_bytes() == b"old"


def test_clean_stale_temp_rules(tmp_path):
    (tmp_path / "sub").mkdir()
    mine_old = tmp_path / f".a.{os.getpid()}-abcdefgh.tmp"  # this pid, from before this process started
    mine_now = tmp_path / f".b.{os.getpid()}-abcdefgh.tmp"  # a write of this process in progress
    ancient = tmp_path / f".c.{os.getppid()}-abcdefgh.tmp"  # a live pid, but untouched for over a day
    nested = tmp_path / "sub" / f".d.{os.getpid()}-abcdefgh.tmp"
    user = tmp_path / ".notes.tmp"  # not our pattern
    for path in (mine_old, mine_now, ancient, nested, user):
        path.write_bytes(b"x")
    past = atomic._STARTED - 10
    for path in (mine_old, nested):
        os.utime(path, (past, past))
    os.utime(ancient, (time.time() - 2 * atomic.STALE_AFTER_S,) * 2)
    assert sorted(clean_stale_temp(tmp_path)) == sorted([mine_old, ancient])
    assert mine_now.exists() and user.exists() and nested.exists()
    assert clean_stale_temp(tmp_path, recursive=True) == [nested]
    assert clean_stale_temp(tmp_path / "missing") == []


def test_same_file_sees_symlinks_and_hard_links(tmp_path):
    real = tmp_path / "a.safetensors"
    real.write_bytes(b"x")
    (tmp_path / "link").symlink_to(real)
    os.link(real, tmp_path / "hard")
    assert same_file(tmp_path / "link", real) and same_file(tmp_path / "hard", real)
    assert same_file(tmp_path / "sub" / ".." / "a.safetensors", real)
    assert not same_file(tmp_path / "other", real)
    with pytest.raises(OverwriteError, match="refusing to overwrite input file"):
        ensure_not_input(tmp_path / "hard", [real])
    with atomic_path(tmp_path / "out.bin") as tmp:
        tmp.write_bytes(b"done")
    assert (tmp_path / "out.bin").read_bytes() == b"done"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
