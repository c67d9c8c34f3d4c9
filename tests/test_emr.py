"""EMR-Merging: hand-computed cases (the official per-tensor rescalers), the plain reference, both code paths,
the sign-consistency property, mask statistics, the compressed form and export of its per-task models."""
import pytest
import torch
from hypothesis import given, settings, strategies as st
from safetensors.torch import load_file

import reference as ref
from engine_fixtures import dense, space as make_space
from merging import TaskVectorSpace, chunks, run_merge
from merging.checkpoints import export_merge
from merging.compressed import load_compressed, save_compressed
from merging.maskstats import mask_statistics
from merging.methods import emr
from merging.param_index import ParamEntry, ParamIndex

pytestmark = pytest.mark.usefixtures("one_thread")


def flat_space(taus, sizes=None):
    """A space straight from a (T, P) tensor, cut into tensors of ``sizes`` (default: one tensor)."""
    taus = torch.as_tensor(taus, dtype=torch.float32)
    T, P = taus.shape
    sizes = sizes or [P]
    entries, offset = [], 0
    for i, n in enumerate(sizes):
        entries.append(ParamEntry(f"transformer.resblocks.{i}.w", (n,), offset, n, torch.float32, f"block.{i:02d}",
                                  "mlp.c_fc"))
        offset += n
    index = ParamIndex(entries)
    return TaskVectorSpace(index, {"__order__": index.names()}, torch.zeros(P), taus.clone(),
                           [f"t{i}" for i in range(T)])


def test_by_hand_one_tensor():
    # Σ = [4, −1, 0, 0] → γ = [+, −, −, −] (a zero sum elects −1, as the code's (mean > 0)·2 − 1)
    sp = flat_space([[1.0, -2.0, 0.5, 0.0], [3.0, 1.0, -0.5, 0.0]])
    result = run_merge(sp, "emr")
    assert result.masks["emr"].to_bool().tolist() == [[True, True, False, False], [True, False, True, False]]
    assert torch.equal(result.delta, torch.tensor([3.0, -2.0, -0.5, 0.0]))
    # λ0 = mean(1, 2, .5, 0) / mean(3, 2, 0, 0) = 0.7; λ1 = mean(3, 1, .5, 0) / mean(3, 0, .5, 0) = 9/7
    assert result.task_scales == pytest.approx([0.7, 9 / 7], rel=1e-12)
    torch.testing.assert_close(result.task_delta(0), torch.tensor([2.1, -1.4, 0.0, 0.0]))
    torch.testing.assert_close(result.task_delta(1), torch.tensor([27 / 7, 0.0, -0.5 * 9 / 7, 0.0]))
    assert result.per_task


def test_rescalers_are_sums_of_per_tensor_means_as_the_code():
    # tensors a (1 entry) and b (3): τ0 = [2 | 1, 1, 1], τ1 = [1 | −3, 0, 0]; Σ = [3 | −2, 1, 1]
    # M0 = [1 | 0, 1, 1], M1 = [1 | 1, 0, 0], τuni = [2 | −3, 1, 1]
    # λ0 = (2 + 3/3) / (2 + 2/3) = 9/8 (whole-vector sums, as the paper writes, would give 5/4)
    # λ1 = (1 + 3/3) / (2 + 3/3) = 2/3
    sp = flat_space([[2.0, 1.0, 1.0, 1.0], [1.0, -3.0, 0.0, 0.0]], sizes=[1, 3])
    result = run_merge(sp, "emr")
    assert torch.equal(result.delta, torch.tensor([2.0, -3.0, 1.0, 1.0]))
    assert result.task_scales == pytest.approx([9 / 8, 2 / 3], rel=1e-12)


def test_an_empty_mask_gets_rescaler_zero():
    sp = flat_space([[1.0, 1.0], [-0.5, -0.5]])  # task 1 disagrees with the elected sign everywhere
    result = run_merge(sp, "emr")
    assert result.task_scales[1] == 0.0 and torch.equal(result.task_delta(1), torch.zeros(2))


@pytest.mark.parametrize("T,seed", [(1, 0), (4, 3), (8, 5)])
def test_matches_the_reference(T, seed, monkeypatch):
    monkeypatch.setattr(emr, "CHUNK", 64)  # several chunks, tensors straddling chunk borders
    sp = make_space(T=T, seed=seed)
    sp.stack[:, ::7] = 0.0  # exact zeros: no task agrees there
    uni, masks, scales = ref.emr(dense(sp), sp.index)
    result = run_merge(sp, "emr")
    assert torch.equal(result.delta, uni)
    assert torch.equal(result.masks["emr"].to_bool(), masks)
    assert result.task_scales == pytest.approx(scales, rel=1e-9)
    for t in range(T):
        torch.testing.assert_close(result.task_delta(t), scales[t] * masks[t] * uni, rtol=1e-6, atol=0)


def test_cpu_kernels_and_gpu_code_path_identical(monkeypatch):
    sp = make_space(T=5, seed=1)
    monkeypatch.setattr(emr, "CHUNK", 64)
    fast = run_merge(sp, "emr")
    monkeypatch.setattr(chunks, "NUMPY_KERNELS", False)
    plain = run_merge(sp, "emr")
    assert torch.equal(fast.delta, plain.delta)
    assert torch.equal(fast.task_masks.packed, plain.task_masks.packed)
    assert fast.task_scales == pytest.approx(plain.task_scales, rel=1e-12)


magnitudes = st.lists(st.floats(0.0625, 4, width=32), min_size=10, max_size=10)


@settings(max_examples=40, deadline=None)
@given(rows=st.integers(1, 5).flatmap(lambda T: st.lists(magnitudes, min_size=T, max_size=T)),
       signs=st.lists(st.sampled_from([-1.0, 1.0]), min_size=10, max_size=10),
       mixed=st.lists(st.floats(-4, 4, width=32), min_size=3, max_size=3))
def test_sign_consistent_entries_are_reconstructed_exactly_up_to_the_rescaler(rows, signs, mixed):
    """Where every τt has the same strict sign, every Mt is 1 and θ̂t − θ0 = λt·sign·maxj|τj| exactly; so the
    task with the largest magnitude there gets exactly λt·τt, and with T = 1 (λ1 = 1) θ̂1 = θ1 exactly."""
    T = len(rows)
    consistent = torch.tensor(rows) * torch.tensor(signs)  # (T, 10): one sign per entry across tasks
    other = torch.tensor(mixed).repeat(T, 1) * torch.linspace(-1, 1, T)[:, None]  # 3 entries of mixed signs
    taus = torch.cat([consistent, other], 1)
    sp = flat_space(taus, sizes=[6, 7])
    result = run_merge(sp, "emr")
    peak = consistent.abs().max(0)
    assert result.masks["emr"].to_bool()[:, :10].all()
    for t in range(T):
        expected = result.task_scales[t] * (torch.tensor(signs) * peak.values)
        assert torch.equal(result.task_delta(t)[:10], expected)
        owner = peak.indices == t
        assert torch.equal(result.task_delta(t)[:10][owner], result.task_scales[t] * consistent[t][owner])
    if T == 1:
        assert result.task_scales == [1.0]
        assert torch.equal(sp.theta0 + result.task_delta(0), sp.theta0 + sp.tau(0))


def test_identical_task_vectors_are_reconstructed_exactly():
    tau = torch.randn(40, generator=torch.Generator().manual_seed(0))
    sp = flat_space(tau.repeat(3, 1), sizes=[15, 25])
    result = run_merge(sp, "emr")
    assert result.task_scales == [1.0, 1.0, 1.0]
    for t in range(3):
        assert torch.equal(result.task_delta(t), tau)


def test_mask_statistics_of_emr_results():
    sp = make_space(T=4, seed=2)
    result = run_merge(sp, "emr")
    stats = mask_statistics(result.masks["emr"], sp.index)
    histogram, active, jaccard = ref.mask_stats(ref.emr(dense(sp), sp.index)[1])
    assert stats.histogram["count"].tolist() == histogram
    assert stats.density["active"].tolist() == active
    torch.testing.assert_close(torch.tensor(stats.jaccard.to_numpy()), jaccard)
    assert stats.kind == "emr" and histogram[0] == 0  # every entry agrees with its elected sign for some task


def test_compressed_form_and_per_task_export(tmp_path):
    sp = make_space(T=3, seed=6)
    result = run_merge(sp, "emr")
    loaded = load_compressed(save_compressed(tmp_path / "m.tall.safetensors", sp, result))
    assert loaded.scales == result.task_scales
    for t, name in enumerate(sp.task_names):
        expected = sp.state_dict(result.task_delta(t))
        got = loaded.reconstruct(name)
        assert all(torch.equal(got[k], expected[k]) for k in expected)
        export_merge(tmp_path / f"{name}.safetensors", sp, result, "open_clip", task=t)
        written = load_file(str(tmp_path / f"{name}.safetensors"))
        assert all(torch.equal(written["visual." + k], v) for k, v in expected.items())


def test_cli_writes_the_compressed_form_with_rescalers(tmp_path, capsys):
    from safetensors.torch import save_file

    from engine_fixtures import state_dicts
    from merging.cli import main

    base, fts = state_dicts(T=3, seed=8)
    save_file(base, str(tmp_path / "pre.safetensors"))
    paths = []
    for i, ft in enumerate(fts):
        paths.append(str(tmp_path / f"task{i}.safetensors"))
        save_file(ft, paths[-1])
    out = tmp_path / "emr.safetensors"
    assert main(["merge", "--pretrained", str(tmp_path / "pre.safetensors"), "--finetuned", *paths,
                 "--method", "emr", "--out", str(out), "--device", "cpu"]) == 0, capsys.readouterr().err
    assert "(tall-compressed)" in capsys.readouterr().out
    sp = TaskVectorSpace.build(base, fts, device="cpu")
    result = run_merge(sp, "emr")
    loaded = load_compressed(out)
    assert loaded.scales == result.task_scales and loaded.task_names == ["task0", "task1", "task2"]
    expected = sp.state_dict(result.task_delta(2))
    assert all(torch.equal(loaded.reconstruct("task2")[k], v) for k, v in expected.items())
