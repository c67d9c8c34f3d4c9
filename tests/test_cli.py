"""The CLI on real files: merge → safetensors that equal the library result; stats tables; clear errors."""
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from engine_fixtures import state_dicts
from merging.cli import main


@pytest.fixture()
def files(tmp_path):
    base, fts = state_dicts(T=3, seed=4)
    save_file({k: v for k, v in base.items()}, str(tmp_path / "pre.safetensors"))
    paths = []
    for i, ft in enumerate(fts):
        paths.append(tmp_path / f"task{i}.safetensors")
        save_file(ft, str(paths[-1]))
    return tmp_path, base, fts, paths


def test_merge_writes_the_library_result(files, capsys):
    tmp, base, fts, paths = files
    out = tmp / "merged.safetensors"
    code = main(["merge", "--pretrained", str(tmp / "pre.safetensors"), "--finetuned", *map(str, paths),
                 "--method", "ties", "--set", "k=30", "lam=0.7", "--out", str(out), "--device", "cpu"])
    assert code == 0, capsys.readouterr().err
    merged = load_file(str(out))
    from merging import TaskVectorSpace, run_merge
    sp = TaskVectorSpace.build(base, fts, device="cpu")
    expected = sp.state_dict(run_merge(sp, "ties", {"k": 30, "lam": 0.7}).delta)
    for k, v in expected.items():
        if v.is_floating_point():
            assert torch.equal(merged["visual." + k], v), k
    assert "TIES-Merging on 3 tasks" in capsys.readouterr().out


def test_stats_prints_tables(files, capsys):
    tmp, _, _, paths = files
    code = main(["stats", "--pretrained", str(tmp / "pre.safetensors"), "--finetuned", *map(str, paths),
                 "--method", "tall", "--csv", str(tmp / "csv")])
    out = capsys.readouterr().out
    assert code == 0
    for title in ("agreement histogram", "mask density", "pairwise Jaccard overlap", "agreement by layer"):
        assert f"tall: {title}" in out
    assert "catastrophic" in out and (tmp / "csv" / "tall_agreement_histogram.csv").exists()


@pytest.mark.parametrize("args,message", [
    (["--method", "nope"], "unknown merge method 'nope'"),
    (["--method", "ties", "--set", "k=500"], "k: 500.0 is above the maximum"),
    (["--method", "ties", "--set", "bogus=1"], "unknown parameter"),
])
def test_bad_arguments_exit_2_with_a_message(files, capsys, args, message):
    tmp, _, _, paths = files
    code = main(["merge", "--pretrained", str(tmp / "pre.safetensors"), "--finetuned", *map(str, paths), *args])
    assert code == 2 and message in capsys.readouterr().err


def test_corrupt_file_and_overwrite_refused(files, capsys):
    tmp, _, _, paths = files
    paths[1].write_bytes(paths[1].read_bytes()[:100])
    code = main(["merge", "--pretrained", str(tmp / "pre.safetensors"), "--finetuned", *map(str, paths),
                 "--method", "task_arithmetic"])
    assert code == 2 and "task1.safetensors" in capsys.readouterr().err
    before = paths[0].read_bytes()
    code = main(["merge", "--pretrained", str(tmp / "pre.safetensors"), "--finetuned", str(paths[0]),
                 str(paths[2]), "--method", "task_arithmetic", "--out", str(paths[0])])
    assert code == 2 and "refusing to overwrite" in capsys.readouterr().err
    assert paths[0].read_bytes() == before


def test_module_entry_point_runs():
    done = subprocess.run([sys.executable, "-m", "merging", "methods"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "consensus" in done.stdout and "tall_lambda" in done.stdout
