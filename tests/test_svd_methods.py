"""The SVD family (TSV-M, Iso-C, Iso-CTS, CART, WUDI) against plain float64 references (tests/svd_reference.py)
on small state dicts with square, wide, tall, rank-deficient and T > rank matrices; properties; tables."""
from dataclasses import replace

import pandas as pd
import pytest
import torch

import svd_reference as ref
from merging import TaskVectorSpace, layers, run_merge
from merging.methods import cart, iso
from merging.params import ParameterError
from merging.progress import CancelToken, Cancelled, Progress

SHAPES = {  # name → (shape, rank of each τt or None for full rank)
    "conv1.weight": ((6, 3, 2, 2), None),                              # 4-D: averaged
    "class_embedding": ((6,), None),
    "positional_embedding": ((2, 6), None),                            # r = 2 < T = 3: TSV keeps k = 0
    "transformer.resblocks.0.attn.in_proj_weight": ((18, 6), None),    # tall
    "transformer.resblocks.0.attn.in_proj_bias": ((18,), None),
    "transformer.resblocks.0.attn.out_proj.weight": ((6, 6), None),    # square
    "transformer.resblocks.0.ln_2.weight": ((6,), None),
    "transformer.resblocks.1.mlp.c_fc.weight": ((16, 10), 4),          # rank-deficient (rank 4 ≥ k = 3)
    "transformer.resblocks.1.mlp.c_proj.weight": ((6, 16), None),      # wide
    "text_projection": ((6, 4), None),                                 # excluded from the matrix path
    "proj": ((6, 4), None),                                            # 2-D, not attention / MLP
}
close = {"rtol": 1e-5, "atol": 1e-6}


def make_space(T=3, seed=0, shapes=SHAPES, scale=0.1):
    g = torch.Generator().manual_seed(seed)
    base = {k: torch.randn(s, generator=g) for k, (s, _) in shapes.items()}
    fts = []
    for _ in range(T):
        ft = {}
        for k, (s, rank) in shapes.items():
            tau = torch.randn(s, generator=g)
            if rank is not None:
                tau = torch.randn(s[0], rank, generator=g) @ torch.randn(rank, s[1], generator=g) / rank ** 0.5
            ft[k] = base[k] + scale * tau
        fts.append(ft)
    return TaskVectorSpace.build(base, fts, [f"task{t}" for t in range(T)], device="cpu")


def taus(space):
    return torch.stack([space.tau(t) for t in range(space.T)]).to(torch.float64)


@pytest.fixture(scope="module")
def sp():
    return make_space()


def delta(space, method, **params):
    return run_merge(space, method, params).delta.to(torch.float64)


@pytest.mark.parametrize("alpha", [1.0, 0.7])
def test_tsvm_matches_reference(sp, alpha):
    torch.testing.assert_close(delta(sp, "tsvm", lam=alpha), ref.tsvm(sp.index, taus(sp), alpha), **close)


@pytest.mark.parametrize("alpha", [1.0, 0.4])
def test_iso_c_matches_reference(sp, alpha):
    torch.testing.assert_close(delta(sp, "iso_c", lam=alpha), ref.iso_c(sp.index, taus(sp), alpha), **close)


@pytest.mark.parametrize("fraction", [0.8, 0.5, 1.0])
def test_iso_cts_matches_reference(sp, fraction):
    got = delta(sp, "iso_cts", lam=1.3, common_space_fraction=fraction)
    torch.testing.assert_close(got, ref.iso_cts(sp.index, taus(sp), 1.3, fraction), **close)


def test_iso_cts_without_common_space():
    """f = 0: only task-specific directions (q = r / T each), where r allows it (r ≥ T)."""
    wide = make_space(shapes={k: v for k, v in SHAPES.items() if k != "positional_embedding"})
    got = delta(wide, "iso_cts", common_space_fraction=0.0)
    torch.testing.assert_close(got, ref.iso_cts(wide.index, taus(wide), 1.0, 0.0), **close)


def test_iso_cts_caps_task_directions_when_rank_is_below_T():
    """r = 2 < T = 3 with f = 0: the official formula asks for round(2/3)·3 = 3 > r directions (and breaks);
    here q = r // T = 0, so the common space is everything and Iso-CTS is Iso-C."""
    small = make_space(shapes={"positional_embedding": ((2, 6), None)})
    assert iso.common_space_size(2, 3, 0.0) == (2, 0)
    torch.testing.assert_close(delta(small, "iso_cts", common_space_fraction=0.0), delta(small, "iso_c"))


@pytest.mark.parametrize("lam,rho", [("auto", "auto"), (1.5, 0.3), (1.0, 0.0), (0.5, 1.0)])
def test_cart_matches_reference(sp, lam, rho):
    want_lam, want_rho = (2.0 if lam == "auto" else lam), (0.12 if rho == "auto" else rho)  # T = 3 → T = 8's
    got = run_merge(sp, "cart", {"lam": lam, "rank_ratio": rho})
    assert got.info == {"lam": want_lam, "rank_ratio": want_rho}
    torch.testing.assert_close(got.delta.double(), ref.cart(sp.index, taus(sp), want_lam, want_rho), **close)


@pytest.mark.parametrize("keys", ["official", "all_2d"])
def test_wudi_matches_autograd_adam_reference(sp, keys):
    """Closed-form gradient + Adam vs the official autograd loop; a large lr so that the steps matter."""
    got = delta(sp, "wudi", iterations=25, lr=2e-3, keys=keys)
    want = ref.wudi(sp.index, taus(sp), 25, 2e-3, keys)
    start = ref.wudi(sp.index, taus(sp), 0, 2e-3, keys)
    assert (want - start).abs().max() > 1e-2  # the optimisation moved τm
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def _wudi_loss(merged, vectors):
    """The official objective Σt ‖(τm − τt) τtᵀ‖²_F / ‖τt‖²_F, written from the math (float64)."""
    return sum(((merged - v) @ v.T).square().sum() / v.square().sum() for v in vectors)


@pytest.mark.parametrize("T", [1, 3, 7])  # 7 > every rank of the 6-row matrices
def test_wudi_exact_is_the_minimiser_of_the_official_objective(T):
    space = make_space(T=T, seed=T)
    got = run_merge(space, "wudi", {"solver": "exact"})
    assert got.params["solver"] == "exact"
    stack = taus(space)
    for e in space.index.entries:
        if not layers.is_attn_mlp_weight(e):
            continue
        vectors = stack[:, e.slice].reshape(T, *e.shape)
        merged = got.delta[e.slice].reshape(e.shape).to(torch.float64).requires_grad_()
        loss = _wudi_loss(merged, vectors)
        (grad,) = torch.autograd.grad(loss, merged)
        zero = torch.zeros_like(vectors[0], requires_grad=True)
        (scale,) = torch.autograd.grad(_wudi_loss(zero, vectors), zero)  # −2B
        assert grad.norm() <= 1e-5 * scale.norm(), e.name  # ∇L = 0 (up to the result's float32 rounding)
        adam = ref.wudi_matrix(vectors, 200, 2e-3)  # the official loop, far along: no lower loss
        assert float(loss.detach()) <= float(_wudi_loss(adam, vectors)) * (1 + 1e-6) + 1e-12, e.name
        if T == 1:  # one task: τm = τ1
            torch.testing.assert_close(merged.detach(), vectors[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("keys", ["official", "all_2d"])
def test_wudi_exact_matches_the_least_squares_reference(sp, keys):
    got = delta(sp, "wudi", solver="exact", keys=keys)
    torch.testing.assert_close(got, ref.wudi_exact(sp.index, taus(sp), keys), rtol=1e-5, atol=1e-6)


def test_wudi_exact_ignores_the_adam_settings_which_do_not_apply(sp):
    from merging import get_method
    from merging.params import applicable

    a = run_merge(sp, "wudi", {"solver": "exact"})
    b = run_merge(sp, "wudi", {"solver": "exact", "iterations": 7, "lr": 0.5})
    assert torch.equal(a.delta, b.delta)
    assert set(applicable(get_method("wudi").params, a.params)) == {"solver", "keys", "lam", "tables"}


def test_wudi_official_keys_leave_everything_else_at_theta0(sp):
    out = run_merge(sp, "wudi", {"iterations": 2}).delta
    for e in sp.index.entries:
        on_path = e.name.endswith(("attn.in_proj_weight", "attn.out_proj.weight", "mlp.c_fc.weight",
                                   "mlp.c_proj.weight"))
        assert bool(out[e.slice].any()) == on_path, e.name


def test_matrix_path_rules(sp):
    matrix = {e.name for e in sp.index.entries if layers.is_matrix(e)}
    assert matrix == {"positional_embedding", "transformer.resblocks.0.attn.in_proj_weight", "proj",
                      "transformer.resblocks.0.attn.out_proj.weight", "transformer.resblocks.1.mlp.c_fc.weight",
                      "transformer.resblocks.1.mlp.c_proj.weight"}
    attn_mlp = {e.name for e in sp.index.entries if layers.is_attn_mlp_weight(e)}
    assert attn_mlp == {n for n in matrix if "resblocks" in n}


def test_tsvm_single_task_alpha_one_is_theta1():
    one = make_space(T=1)
    merged = one.theta0 + run_merge(one, "tsvm", {"lam": 1.0}).delta
    torch.testing.assert_close(merged, one.theta0 + one.tau(0), rtol=1e-5, atol=1e-5)


def test_iso_c_of_one_rank1_task_vector():
    """τ = σ u vᵀ (m×n, r = min(m, n)): S = τ has singular values (σ, 0, …), so Iso-C gives every direction
    σ/r: Δ v = (σ/r) u, uᵀ Δ = (σ/r) vᵀ, all r singular values σ/r; for r = 1 that is τ itself."""
    g = torch.Generator().manual_seed(3)
    shapes = {"a": (7, 4), "b": (3, 5), "c": (6, 1)}
    u = {k: torch.nn.functional.normalize(torch.randn(s[0], generator=g), dim=0) for k, s in shapes.items()}
    v = {k: torch.nn.functional.normalize(torch.randn(s[1], generator=g), dim=0) for k, s in shapes.items()}
    sigma = {"a": 2.0, "b": 0.5, "c": 1.5}
    base = {k: torch.zeros(s) for k, s in shapes.items()}
    ft = {k: sigma[k] * torch.outer(u[k], v[k]) for k in shapes}
    one = TaskVectorSpace.build(base, [ft], ["t"], device="cpu")
    out = run_merge(one, "iso_c", {"lam": 1.0}).delta
    for k, s in shapes.items():
        d = out[one.index.by_name[k].slice].reshape(s)
        level = sigma[k] / min(s)
        torch.testing.assert_close(d @ v[k], level * u[k], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(u[k] @ d, level * v[k], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(torch.linalg.svdvals(d), torch.full((min(s),), level), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out[one.index.by_name["c"].slice].reshape(6, 1), ft["c"])


@pytest.mark.parametrize("method,params", [("tsvm", {}), ("iso_c", {}), ("iso_cts", {}), ("cart", {}),
                                           ("wudi", {"iterations": 5, "lr": 1e-3}), ("wudi", {"solver": "exact"})])
def test_batched_and_one_matrix_at_a_time_agree(method, params, monkeypatch):
    """Same-shape matrices batched into one torch.linalg call (as on a GPU) or one at a time give one merge."""
    many = make_space(T=3, shapes={**SHAPES, **{f"transformer.resblocks.{i}.attn.out_proj.weight": ((6, 6), None)
                                                for i in range(2, 6)}})
    monkeypatch.setattr(layers, "BUDGET", 10 ** 6)
    assert max(len(b) for b in layers.batches(many.index, layers.is_matrix, many.T)) == 5
    batched = run_merge(many, method, params)
    monkeypatch.setattr(layers, "BUDGET", 1)
    single = run_merge(many, method, params)
    torch.testing.assert_close(batched.delta, single.delta, rtol=1e-5, atol=1e-6)
    for name in batched.tables:
        a, b = batched.tables[name], single.tables[name]
        key = [c for c in a.columns if c not in ("sigma", "sti", "pairwise")]
        a, b = a.sort_values(key).reset_index(drop=True), b.sort_values(key).reset_index(drop=True)
        assert a[key].equals(b[key])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")
@pytest.mark.parametrize("method", ["tsvm", "iso_c", "iso_cts", "cart", "wudi", "wudi exact"])
def test_cuda_matches_cpu(sp, method):
    gpu = TaskVectorSpace(sp.index, sp.base, sp.theta0.cuda(), sp.stack.cuda(), sp.task_names)
    params = {"iterations": 5, "lr": 1e-3} if method == "wudi" else {"solver": "exact"} if method == "wudi exact" \
        else {}
    method = method.split()[0]
    torch.testing.assert_close(run_merge(gpu, method, params).delta.cpu(), run_merge(sp, method, params).delta,
                               rtol=1e-4, atol=1e-5)


def test_cart_auto_defaults_follow_the_official_configs():
    assert [cart.official_defaults(T) for T in (8, 14, 20)] == [(2.0, 0.12), (1.5, 0.16), (1.9, 0.32)]
    assert cart.official_defaults(2) == (2.0, 0.12) and cart.official_defaults(30) == (1.9, 0.32)
    assert cart.official_defaults(11) == (2.0, 0.12) and cart.official_defaults(17) == (1.5, 0.16)  # ties: smaller
    assert cart.rank(0.12, 768) == 92 and cart.rank(0.01, 10) == 1 and cart.rank(0.0, 10) == 0


def test_cart_parameters_take_auto_or_a_number(sp):
    with pytest.raises(ParameterError, match="lam: expected 'auto' or a float"):
        run_merge(sp, "cart", {"lam": "big"})
    with pytest.raises(ParameterError, match=r"rank_ratio: 1.5 is above the maximum 1.0"):
        run_merge(sp, "cart", {"rank_ratio": "1.5"})
    assert run_merge(sp, "cart", {"lam": "1.25", "rank_ratio": "AUTO"}).info == {"lam": 1.25, "rank_ratio": 0.12}


def test_wudi_reports_progress_and_stops_when_cancelled(sp):
    token, seen = CancelToken(), []

    def callback(fraction, stage):
        seen.append((fraction, stage))
        if len(seen) == 3:
            token.cancel()
    with pytest.raises(Cancelled):
        run_merge(sp, "wudi", {"iterations": 100}, progress=Progress(callback, token))
    assert len(seen) == 3 and seen[0][1].startswith("WUDI transformer.resblocks")
    fractions = [f for f, _ in seen]
    assert fractions == sorted(fractions) and fractions[-1] < 0.5


def test_tsvm_tables(sp):
    result = run_merge(sp, "tsvm", {"lam": 0.5})
    spectra = result.tables["spectra"]
    assert set(spectra["model"]) == {"task0", "task1", "task2", "merged"}
    for e in sp.index.entries:
        if not layers.is_matrix(e):
            assert e.name not in set(spectra["layer"])
            continue
        matrix = result.delta[e.slice].reshape(e.shape).double()
        got = spectra[(spectra["layer"] == e.name) & (spectra["model"] == "merged")]["sigma"].to_numpy()
        want = torch.linalg.svdvals(matrix)[: len(got)].numpy()  # the merge's singular values are α·σ̂
        assert len(got) == 3 * int(min(e.shape) / 3)
        assert got == pytest.approx(want, rel=1e-4, abs=1e-6)
        task = spectra[(spectra["layer"] == e.name) & (spectra["model"] == "task1")]["sigma"].to_numpy()
        tau = sp.tau(1)[e.slice].reshape(e.shape).double()
        assert task == pytest.approx(torch.linalg.svdvals(tau).numpy(), rel=1e-4, abs=1e-6)


def _pair_sti(a, b, k):
    """The paper's STI over two tasks, from full float64 SVDs: ‖(UᵀU − I) Σ (VᵀV − I)‖₁ on the k-blocks."""
    (ua, sa, va), (ub, sb, vb) = torch.linalg.svd(a, full_matrices=False), torch.linalg.svd(b, full_matrices=False)
    U = torch.cat([ua[:, :k], ub[:, :k]], 1)
    V = torch.cat([va[:k], vb[:k]], 0)
    S = torch.diag(torch.cat([sa[:k], sb[:k]]))
    eye = torch.eye(2 * k, dtype=a.dtype)
    return float(((U.T @ U - eye) @ S @ (V @ V.T - eye)).abs().sum())


def test_tsvm_interference_is_the_papers_sti(sp):
    tables = run_merge(sp, "tsvm").tables
    pairs = tables["interference"]
    name = "transformer.resblocks.1.mlp.c_fc.weight"
    e = sp.index.by_name[name]
    mats = [sp.tau(t)[e.slice].reshape(e.shape).double() for t in range(3)]
    for i in range(3):
        for j in range(3):
            got = pairs[(pairs["layer"] == name) & (pairs["task_i"] == f"task{i}")
                        & (pairs["task_j"] == f"task{j}")]["sti"].item()
            assert got == pytest.approx(0.0 if i == j else _pair_sti(mats[i], mats[j], 3), rel=1e-3, abs=1e-6)
    depth = tables["interference_by_depth"]
    assert list(depth["block"]) == ["embed", "block.00", "block.01", "head"]
    assert depth["sti"].iloc[0] == 0.0  # embed: only positional_embedding (r = 2 < T: k = 0, nothing kept)
    assert (depth["sti"].iloc[1:] > 0).all()


def test_tasks_on_disjoint_rows_and_columns_do_not_interfere():
    base = {"w": torch.zeros(8, 8)}
    a, b = torch.zeros(8, 8), torch.zeros(8, 8)
    a[:4, :4] = torch.randn(4, 4, generator=torch.Generator().manual_seed(0))
    b[4:, 4:] = torch.randn(4, 4, generator=torch.Generator().manual_seed(1))
    two = TaskVectorSpace.build(base, [{"w": a}, {"w": b}], ["a", "b"], device="cpu")
    result = run_merge(two, "tsvm", {"lam": 1.0})
    assert result.tables["interference"]["sti"].abs().max() < 1e-5
    # orthogonal tasks: TSV-M keeps each task's top half exactly
    ua, sa, va = torch.linalg.svd(a)
    ub, sb, vb = torch.linalg.svd(b)
    want = (ua[:, :4] * sa[:4]) @ va[:4] + (ub[:, :4] * sb[:4]) @ vb[:4]
    torch.testing.assert_close(result.delta.reshape(8, 8), want, rtol=1e-5, atol=1e-5)


def test_iso_flattening_table(sp):
    for method in ("iso_c", "iso_cts"):
        flat = run_merge(sp, method, {"lam": 2.0}).tables["flattening"]
        for layer, rows in flat.groupby("layer"):
            before, after = rows[rows["stage"] == "before"]["sigma"], rows[rows["stage"] == "after"]["sigma"]
            assert len(before) == len(after) == min(sp.index.by_name[layer].shape)
            assert after.to_numpy() == pytest.approx(2.0 * before.mean() * torch.ones(len(after)).numpy(), rel=1e-5)


def test_tables_can_be_turned_off(sp):
    for method in ("tsvm", "iso_c", "iso_cts", "cart", "wudi"):
        assert run_merge(sp, method, {"tables": False, **({"iterations": 1} if method == "wudi" else {})}).tables == {}


def test_top_singular_values_helper():
    x = torch.randn(2, 3, 9, 5, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(layers.top_singular_values(x, 4), torch.linalg.svdvals(x)[..., :4], rtol=1e-5,
                               atol=1e-6)
    torch.testing.assert_close(layers.top_singular_values(x.mT), torch.linalg.svdvals(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape", [(9, 5), (5, 9), (6, 6)])
def test_svd_helper_matches_a_float64_svd(shape):
    x = torch.randn(2, 3, *shape, generator=torch.Generator().manual_seed(1))
    u, s, vh = layers.svd(x, 3)
    U, S, Vh = torch.linalg.svd(x.double(), full_matrices=False)
    torch.testing.assert_close(s, S)
    torch.testing.assert_close((u * s[..., None, :3]) @ vh, (U[..., :3] * S[..., None, :3]) @ Vh[..., :3, :])
    torch.testing.assert_close(u.mT @ u, torch.eye(3, dtype=torch.float64).expand(2, 3, 3, 3))
    torch.testing.assert_close(layers.polar(x), U @ Vh)


def test_svd_helper_completes_the_null_space_orthonormally():
    """A rank-2 matrix asked for 4 triplets: the Gram route cannot give the null directions, the SVD fallback
    does (orthonormal, as the official codes' SVD); polar factors of rank-deficient inputs stay orthonormal."""
    g = torch.Generator().manual_seed(2)
    x = torch.randn(8, 2, generator=g) @ torch.randn(2, 6, generator=g)
    for a in (x, x.T, torch.zeros(7, 5)):
        u, s, vh = layers.svd(a, 4)
        eye = torch.eye(4, dtype=torch.float64)
        torch.testing.assert_close(u.mT @ u, eye)
        torch.testing.assert_close(vh @ vh.mT, eye)
        torch.testing.assert_close((u * s[:4]) @ vh, a.double(), atol=1e-6, rtol=1e-6)
        p = layers.polar(a)
        small = min(a.shape)
        torch.testing.assert_close(p.mT @ p if a.shape[0] >= a.shape[1] else p @ p.mT,
                                   torch.eye(small, dtype=torch.float64))


def test_alpha_is_selected_on_the_official_grid():
    from merging.registry import get_method
    for name in ("tsvm", "iso_c", "iso_cts"):
        lam = get_method(name).param("lam")
        assert lam.default == 1.0 and len(lam.grid) == 30
        assert lam.grid == pytest.approx([0.1 * i for i in range(1, 31)])


def test_cart_grid_decomposes_each_matrix_once_and_equals_one_merge_per_point(sp, monkeypatch):
    from merging.registry import run_grid

    ks, real = [], cart.svd
    monkeypatch.setattr(cart, "svd", lambda x, k=None: ks.append(k) or real(x, k))
    points = [{"lam": lam, "rank_ratio": rho} for rho in (0.0, 0.3, 1.0, "auto") for lam in (0.5, 2.0)]
    fast = list(run_grid(sp, "cart", points))
    assert len(ks) == len(layers.batches(sp.index, layers.is_attn_mlp_weight, sp.T))  # one pass for 8 points
    ks.clear()
    for point, result in zip(points, fast):
        slow = run_merge(sp, "cart", point)
        assert result.info == slow.info and not result.tables
        torch.testing.assert_close(result.delta, slow.delta, rtol=1e-6, atol=1e-7)
        lam, rho = result.info["lam"], result.info["rank_ratio"]
        torch.testing.assert_close(result.delta.double(), ref.cart(sp.index, taus(sp), lam, rho), **close)
    with_lines = next(run_grid(sp, "cart", points[:1], modifiers=[("lines", {"beta": 0.5})]))
    assert torch.equal(with_lines.delta, run_merge(sp, "cart", points[0], modifiers=[("lines", {"beta": 0.5})]).delta)


def test_cart_sweep_through_the_grid_equals_the_point_by_point_sweep(tmp_path, monkeypatch):
    from ck_tiny_zoo import make_tiny_zoo
    from merging import registry
    from merging.sweep import best_point, sweep
    from merging.zoo import load_zoo

    make_tiny_zoo(tmp_path)
    zoo = load_zoo(tmp_path)
    space = zoo.build_space(device="cpu")
    grid = {"rank_ratio": [0.1, 0.5], "lam": [0.5, 3.0]}
    fast = sweep(zoo, space, "cart", grid)
    monkeypatch.setitem(registry.METHODS, "cart", replace(registry.METHODS["cart"], grid=None))
    slow = sweep(zoo, space, "cart", grid)
    pd.testing.assert_frame_equal(fast, slow, rtol=1e-6)
    assert best_point(fast, grid) == best_point(slow, grid)
