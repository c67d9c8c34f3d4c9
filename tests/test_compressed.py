"""TALL compressed form: save → load → reconstruct θ̂t bit-exactly; bad files and overwrites refused."""
import pytest
import torch

from engine_fixtures import space as make_space
from merging import CheckpointError, run_merge
from merging.atomic import OverwriteError
from merging.compressed import load_compressed, save_compressed


def test_roundtrip_reconstructs_each_task(tmp_path):
    sp = make_space(T=3, seed=2)
    result = run_merge(sp, "tall", {"tall_lambda": [0.2, 0.4, 0.6]})
    path = save_compressed(tmp_path / "m.tall.safetensors", sp, result)
    loaded = load_compressed(path)
    assert loaded.task_names == sp.task_names and loaded.params == result.params
    assert torch.equal(loaded.masks.packed, result.task_masks.packed)
    for t, name in enumerate(sp.task_names):
        expected = sp.state_dict(result.task_delta(t))
        got = loaded.reconstruct(name)
        assert list(got) == list(expected)
        assert all(torch.equal(got[k], expected[k]) for k in expected)


def test_refuses_non_tall_results_and_input_overwrite(tmp_path):
    sp = make_space(T=2)
    with pytest.raises(ValueError, match="only TALL"):
        save_compressed(tmp_path / "x", sp, run_merge(sp, "ties"))
    existing = tmp_path / "input.safetensors"
    existing.write_bytes(b"original")
    with pytest.raises(OverwriteError):
        save_compressed(existing, sp, run_merge(sp, "tall"), inputs=[existing])
    assert existing.read_bytes() == b"original"


def test_corrupt_and_foreign_files(tmp_path):
    sp = make_space(T=2)
    path = save_compressed(tmp_path / "m.safetensors", sp, run_merge(sp, "tall"))
    truncated = tmp_path / "trunc.safetensors"
    truncated.write_bytes(path.read_bytes()[:200])
    with pytest.raises(CheckpointError, match="trunc.safetensors"):
        load_compressed(truncated)
    from safetensors.torch import save_file
    save_file({"w": torch.zeros(2)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(CheckpointError, match="not a TALL compressed file"):
        load_compressed(tmp_path / "plain.safetensors")


def test_compression_size(tmp_path):
    sp = make_space(T=3)
    path = save_compressed(tmp_path / "m.safetensors", sp, run_merge(sp, "tall"))
    payload = sp.P * 4 * 2 + 3 * ((sp.P + 7) // 8)
    assert path.stat().st_size < payload + 8192  # header and integer buffers only on top
