"""Modifiers: the registry and run_merge chain, LiNeS by hand, against the official-code reference and on per-task
results, and through the CLI."""
import pytest
import torch
from safetensors.torch import load_file, save_file

import reference as ref
from engine_fixtures import dense, space as make_space, state_dicts
from merging import ParameterError, TaskVectorSpace, run_merge
from merging.cli import main
from merging.param_index import ParamIndex
from merging.registry import UnknownModifierError, get_modifier, list_modifiers

pytestmark = pytest.mark.usefixtures("one_thread")


def toy_space(taus):
    """Five 2-element tensors: an embedding, blocks 0, 1, 2, and ln_post."""
    names = ["conv1.weight", "transformer.resblocks.0.mlp.c_fc.weight", "transformer.resblocks.1.attn.in_proj_weight",
             "transformer.resblocks.2.ln_1.bias", "ln_post.weight"]
    taus = torch.as_tensor(taus, dtype=torch.float32)
    index = ParamIndex.from_state_dict({n: torch.zeros(2) for n in names})
    return TaskVectorSpace(index, {"__order__": names}, torch.zeros(10), taus, [f"t{i}" for i in range(len(taus))])


def test_registry_lists_and_finds_lines():
    assert "lines" in [m.name for m in list_modifiers()]
    assert get_modifier("LiNeS").name == "lines"
    with pytest.raises(UnknownModifierError, match="unknown modifier 'nope'; available: lines"):
        get_modifier("nope")


def test_lines_by_hand_on_three_blocks():
    sp = toy_space([[1.0] * 10, [3.0] * 10])  # Σ τ = 4 everywhere
    # manual α = 0.5, β = 0.4, L = 3: embed 0.5, block 0 → 0.5, block 1 → 0.7, block 2 → 0.9, ln_post 0.5
    result = run_merge(sp, "task_arithmetic", {"lam": 1.0},
                       modifiers=[("lines", {"mode": "manual", "alpha": 0.5, "beta": 0.4})])
    expected = 4 * torch.tensor([0.5, 0.5, 0.5, 0.5, 0.7, 0.7, 0.9, 0.9, 0.5, 0.5])
    torch.testing.assert_close(result.delta, expected)
    assert result.modifiers == [("lines", {"mode": "manual", "alpha": 0.5, "beta": 0.4})]
    # multi-task: α = ‖Στ‖₁ / ‖δ‖₁ / T; TA at λ = 0.5 → α = 1 / (0.5 · 2) = 1, so δ' = 2·(1, …, 1 + β)
    multi = run_merge(sp, "task_arithmetic", {"lam": 0.5}, modifiers=[("lines", {"beta": 0.4})])
    assert multi.info["lines_alpha"] == pytest.approx(1.0) and multi.info["lines_beta"] == 0.4
    torch.testing.assert_close(multi.delta, 2 * torch.tensor([1.0, 1, 1, 1, 1.2, 1.2, 1.4, 1.4, 1, 1]))
    # single-task: α = λ, β = 1 − λ: block 2 gets exactly 1
    single = run_merge(sp, "task_arithmetic", {"lam": 1.0}, modifiers=[("lines", {"mode": "single-task",
                                                                                   "alpha": 0.2})])
    torch.testing.assert_close(single.delta, 4 * torch.tensor([0.2, 0.2, 0.2, 0.2, 0.6, 0.6, 1.0, 1.0, 0.2, 0.2]))


@pytest.mark.parametrize("method", ["task_arithmetic", "ties", "tall", "emr"])
@pytest.mark.parametrize("lines", [{"mode": "manual", "alpha": 1.0, "beta": 0.0},
                                   {"mode": "single-task", "alpha": 1.0}])
def test_lines_identity(method, lines):
    """α = 1, β = 0 in the code's parametrisation (α = β = 1 in the paper's: first and last block scale 1)."""
    sp = make_space(T=3, seed=1)
    plain = run_merge(sp, method)
    modified = run_merge(sp, method, modifiers=[("lines", lines)])
    assert torch.equal(modified.delta, plain.delta)
    for t in range(sp.T):
        assert torch.equal(modified.task_delta(t), plain.task_delta(t))


@pytest.mark.parametrize("beta", [0.1, 0.7, 1.5])
def test_multi_task_lines_matches_the_official_code(beta):
    """The code: LiNeS_scaling(τm, α = (‖Σt τt‖₁/‖τm‖₁)/T, β) with the method's λ = 1 (TA: τm = Σt τt)."""
    sp = make_space(T=4, seed=2)
    result = run_merge(sp, "task_arithmetic", {"lam": 1.0}, modifiers=[("lines", {"beta": beta})])
    taus = dense(sp)
    torch.testing.assert_close(result.delta, ref.lines(taus.sum(0), sp.index, 1 / 4, beta), rtol=1e-6, atol=1e-7)
    ties = run_merge(sp, "ties", {"merge": "sum", "lam": 1.0})
    ties_lines = run_merge(sp, "ties", {"merge": "sum", "lam": 1.0}, modifiers=[("lines", {"beta": beta})])
    alpha = float(taus.sum(0).abs().double().sum() / ties.delta.abs().double().sum()) / 4
    torch.testing.assert_close(ties_lines.delta, ref.lines(ties.delta, sp.index, alpha, beta), rtol=1e-6, atol=1e-7)


def test_lines_cpu_kernels_and_gpu_code_path_agree(monkeypatch):
    """The chunked numpy pass (norms and scaling, chunks cutting through tensors) against the whole-vector torch
    path, on a task subset (rows picked out of the stack)."""
    from merging import chunks
    from merging.modifiers import lines

    sp = make_space(T=4, seed=3).subset([3, 0, 2])
    monkeypatch.setattr(lines, "CHUNK", 40)
    fast = run_merge(sp, "ties", modifiers=[("lines", {"beta": 0.7})])
    monkeypatch.setattr(chunks, "NUMPY_KERNELS", False)
    plain = run_merge(sp, "ties", modifiers=[("lines", {"beta": 0.7})])
    assert fast.info["lines_alpha"] == pytest.approx(plain.info["lines_alpha"], rel=1e-12)
    torch.testing.assert_close(fast.delta, plain.delta, rtol=1e-6, atol=0)
    alpha = float(dense(sp).sum(0).abs().double().sum() / run_merge(sp, "ties").delta.abs().double().sum()) / 3
    assert fast.info["lines_alpha"] == pytest.approx(alpha, rel=1e-9)


def test_lines_on_per_task_results_scales_every_reconstruction():
    sp = make_space(T=3, seed=4)
    for method in ("tall", "emr"):
        plain = run_merge(sp, method)
        modified = run_merge(sp, method, modifiers=[("lines", {"mode": "manual", "alpha": 0.3, "beta": 0.6})])
        for t in range(sp.T):
            torch.testing.assert_close(modified.task_delta(t), ref.lines(plain.task_delta(t), sp.index, 0.3, 0.6))


def test_modifier_chain_and_bad_parameters():
    sp = make_space(T=2)
    twice = run_merge(sp, "averaging", modifiers=[("lines", {"mode": "manual", "alpha": 2.0, "beta": 0.0}),
                                                 ("lines", {"mode": "manual", "alpha": 0.5, "beta": 0.0})])
    assert torch.equal(twice.delta, run_merge(sp, "averaging").delta)
    assert [name for name, _ in twice.modifiers] == ["lines", "lines"]
    with pytest.raises(ParameterError, match="mode: must be one of"):
        run_merge(sp, "averaging", modifiers=[("lines", {"mode": "deep"})])
    with pytest.raises(UnknownModifierError):
        run_merge(sp, "averaging", modifiers=[("nope", {})])


@pytest.fixture()
def files(tmp_path):
    base, fts = state_dicts(T=3, seed=4)
    save_file(base, str(tmp_path / "pre.safetensors"))
    paths = []
    for i, ft in enumerate(fts):
        paths.append(tmp_path / f"task{i}.safetensors")
        save_file(ft, str(paths[-1]))
    return tmp_path, base, fts, [str(p) for p in paths]


def test_cli_merge_with_a_modifier_writes_the_library_result(files, capsys):
    tmp, base, fts, paths = files
    out = tmp / "merged.safetensors"
    code = main(["merge", "--pretrained", str(tmp / "pre.safetensors"), "--finetuned", *paths, "--method",
                 "task_arithmetic", "--set", "lam=1", "--modifier", "lines", "beta=0.3", "--out", str(out),
                 "--device", "cpu"])
    assert code == 0, capsys.readouterr().err
    sp = TaskVectorSpace.build(base, fts, device="cpu")
    expected = sp.state_dict(run_merge(sp, "task_arithmetic", {"lam": 1}, modifiers=[("lines", {"beta": 0.3})]).delta)
    merged = load_file(str(out))
    assert all(torch.equal(merged["visual." + k], v) for k, v in expected.items() if v.is_floating_point())
    assert "modifier lines: mode=multi-task, alpha=1.0, beta=0.3" in capsys.readouterr().out


@pytest.mark.parametrize("modifier,message", [
    (["nope"], "unknown modifier 'nope'"),
    (["lines", "beta"], "--modifier lines expects NAME=VALUE, got 'beta'"),
    (["lines", "beta=99"], "beta: 99.0 is above the maximum"),
])
def test_cli_bad_modifiers_exit_2_with_a_message(files, capsys, modifier, message):
    tmp, _, _, paths = files
    code = main(["merge", "--pretrained", str(tmp / "pre.safetensors"), "--finetuned", *paths, "--method", "ties",
                 "--modifier", *modifier])
    assert code == 2 and message in capsys.readouterr().err


def test_cli_methods_lists_modifiers(capsys):
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    assert "emr: EMR-Merging" in out and "lines: LiNeS" in out and "beta=0.5" in out


def test_select_lines_beta_by_mean_normalized_validation_accuracy(tmp_path):
    from ck_tiny_zoo import make_tiny_zoo
    from merging.evaluation import Evaluator, evaluate
    from merging.selection import select_modifier
    from merging.zoo import load_zoo

    make_tiny_zoo(tmp_path)
    zoo = load_zoo(tmp_path)
    space, ev = zoo.build_space(device="cpu"), Evaluator(zoo, device="cpu")
    grid = [0.0, 0.5, 1.0, 2.0]
    chosen = select_modifier(zoo, space, "task_arithmetic", {"lam": 1.0}, grid=grid, evaluator=ev)
    finetuned = evaluate(zoo, zoo.finetuned_state, split="val", evaluator=ev).set_index("task")["accuracy"]
    scores = {}
    for beta in grid:  # plain: θ0 + LiNeS(Σt τt; α = 1/T, β) on val, normalized, averaged over tasks
        delta = ref.lines(space.sum_tau(), space.index, 1 / space.T, beta)
        table = evaluate(zoo, space.state_dict(delta), split="val", evaluator=ev)
        ratios = [a / finetuned[t] for t, a in zip(table["task"], table["accuracy"]) if finetuned[t] > 0]
        scores[beta] = sum(ratios) / len(ratios)
    best = min(b for b, s in scores.items() if s == max(scores.values()))
    assert chosen.modifiers == [("lines", {"mode": "multi-task", "alpha": 1.0, "beta": best})]
    assert chosen.result.modifiers == chosen.modifiers and chosen.params["lam"] == 1.0
    rerun = run_merge(space, "task_arithmetic", chosen.params, modifiers=chosen.modifiers)
    assert torch.equal(chosen.result.delta, rerun.delta)
    assert set(chosen.table["value"]) == set(grid)
