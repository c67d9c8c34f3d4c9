"""The CLI on real files: merge → safetensors that equal the library result; stats tables; clear errors."""
import os
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


def test_hf_vision_finetunes_merge_with_an_open_clip_pretrained(tmp_path, capsys):
    """HF CLIPVisionModel fine-tunes carry no projection; the CLI takes θ0's, as a zoo does."""
    from ck_tiny_zoo import tiny_clip
    from merging.checkpoints import open_clip_visual_to_hf
    pre = {k: v.clone() for k, v in tiny_clip(0).visual.state_dict().items()}
    save_file(pre, str(tmp_path / "pre.safetensors"))
    paths = []
    for i in range(2):
        ft = {k: v + 0.01 * torch.randn_like(v) if v.is_floating_point() else v for k, v in pre.items()}
        paths.append(tmp_path / f"hf{i}.safetensors")
        save_file(open_clip_visual_to_hf(ft, projection=False), str(paths[-1]))
    out = tmp_path / "merged.safetensors"
    code = main(["merge", "--pretrained", str(tmp_path / "pre.safetensors"), "--finetuned", *map(str, paths),
                 "--method", "task_arithmetic", "--out", str(out), "--device", "cpu"])
    assert code == 0, capsys.readouterr().err
    assert torch.equal(load_file(str(out))["visual.proj"], pre["proj"])


# ---------------------------------------------------------------------------------------------- --out and bad files
def _merge_args(tmp, paths, *extra):
    return ["merge", "--pretrained", str(tmp / "pre.safetensors"), "--finetuned", *map(str, paths),
            "--method", "task_arithmetic", "--device", "cpu", *extra]


def _one_line_error(capsys) -> tuple[str, str]:
    captured = capsys.readouterr()
    last = captured.err.strip().splitlines()[-1]
    assert last.startswith("error: "), captured.err
    return last, captured.out


def test_out_is_checked_before_the_merge_runs(files, capsys):
    tmp, _, _, paths = files
    missing = tmp / "no" / "such" / "merged.safetensors"
    assert main(_merge_args(tmp, paths, "--out", str(missing))) == 2
    line, out = _one_line_error(capsys)
    assert str(missing) in line and "does not exist" in line and not (tmp / "no").exists()
    assert "Task Arithmetic on" not in out  # refused before merging
    assert main(_merge_args(tmp, paths, "--out", str(tmp))) == 2
    assert "is a folder" in _one_line_error(capsys)[0]
    (tmp / "link.safetensors").symlink_to(paths[1])
    os.link(paths[2], tmp / "hard.safetensors")
    before = [p.read_bytes() for p in paths]
    for alias in ("link.safetensors", "hard.safetensors"):
        assert main(_merge_args(tmp, paths, "--out", str(tmp / alias))) == 2
        line, out = _one_line_error(capsys)
        assert "refusing to overwrite input file" in line and "Task Arithmetic on" not in out
    assert [p.read_bytes() for p in paths] == before


def test_stale_temp_files_of_killed_writes_are_removed_before_writing(files, capsys):
    tmp, _, _, paths = files
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp / f".merged.safetensors.{int(dead.stdout)}-abcd1234.tmp"
    live = tmp / f".other.safetensors.{os.getppid()}-abcd1234.tmp"  # a running writer's file is left alone
    stale.write_bytes(b"half")
    live.write_bytes(b"half")
    assert main(_merge_args(tmp, paths, "--out", str(tmp / "merged.safetensors"))) == 0
    err = capsys.readouterr().err
    assert not stale.exists() and live.exists() and "removed 1 temporary file(s)" in err
    assert load_file(str(tmp / "merged.safetensors"))


def test_bad_checkpoints_exit_2_with_one_line_naming_the_file(files, capsys, tmp_path):
    from hostile_files import stride0_tensor, write_safetensors_header
    tmp, base, fts, paths = files
    bad = {k: v.clone() for k, v in fts[1].items()}
    key = next(k for k, v in bad.items() if v.is_floating_point())
    bad[key].view(-1)[0] = float("inf")
    save_file(bad, str(paths[1]))
    out = tmp / "merged.safetensors"
    cases = {paths[1]: "non-finite",
             write_safetensors_header(tmp / "hdr.safetensors", b'{"key": 5}', 4): "corrupt",
             stride0_tensor(tmp / "stride0.pt"): "over a limit"}
    for path, problem in cases.items():
        assert main(_merge_args(tmp, [paths[0], path], "--out", str(out))) == 2
        line = _one_line_error(capsys)[0]
        assert str(path) in line and problem in line, line
    assert not out.exists()
    assert main(_merge_args(tmp, paths[:2], "--tasks", "a", "a")) == 2
    assert "duplicate task(s): 'a' ×2" in _one_line_error(capsys)[0]
