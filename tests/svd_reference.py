"""Plain reference implementations of the SVD family, written from the math and the official codes' structure:
one Python loop over the state-dict keys, one full thin SVD per task matrix, the official key filters as string
tests, zero-padded full-width stacks as the TSV / Iso codes build them.  ``taus`` is (T, P), ``index`` the
ParamIndex; each function returns the flat Δ (θ = θ0 + Δ) in ``dtype`` (float64 in the tests)."""
import torch


def _matrices(index, taus, dtype):
    for e in index.entries:
        yield e, torch.stack([tau[e.slice].reshape(e.shape).to(dtype) for tau in taus])


def _tsv_key(name, shape):
    return len(shape) == 2 and "text_projection" not in name


def _polar(x):
    u, _, vh = torch.linalg.svd(x, full_matrices=False)
    return u @ vh


def tsvm(index, taus, alpha, dtype=torch.float64):
    T = len(taus)
    out = torch.zeros(index.numel, dtype=dtype, device=taus.device)
    for e, mats in _matrices(index, taus, dtype):
        if not _tsv_key(e.name, e.shape):
            out[e.slice] = mats.mean(0).reshape(-1)
            continue
        sum_u = sum_s = sum_v = None
        for i in range(T):
            u, s, v = torch.linalg.svd(mats[i], full_matrices=False)
            if i == 0:
                sum_u, sum_s, sum_v = torch.zeros_like(u), torch.zeros_like(s), torch.zeros_like(v)
            k = int(s.shape[0] * (1 / T))
            sum_u[:, i * k:(i + 1) * k] = u[:, :k]
            sum_s[i * k:(i + 1) * k] = s[:k]
            sum_v[i * k:(i + 1) * k, :] = v[:k, :]
        out[e.slice] = (_polar(sum_u) @ torch.diag(sum_s) @ _polar(sum_v)).reshape(-1)
    return alpha * out


def iso_c(index, taus, alpha, dtype=torch.float64):
    out = torch.zeros(index.numel, dtype=dtype, device=taus.device)
    for e, mats in _matrices(index, taus, dtype):
        if not _tsv_key(e.name, e.shape):
            out[e.slice] = mats.mean(0).reshape(-1)
            continue
        u, s, v = torch.linalg.svd(mats.sum(0), full_matrices=False)
        out[e.slice] = (u @ torch.diag(torch.full_like(s, float(s.mean()))) @ v).reshape(-1)
    return alpha * out


def iso_cts(index, taus, alpha, fraction=0.8, dtype=torch.float64):
    T = len(taus)
    out = torch.zeros(index.numel, dtype=dtype, device=taus.device)
    for e, mats in _matrices(index, taus, dtype):
        if not _tsv_key(e.name, e.shape):
            out[e.slice] = mats.mean(0).reshape(-1)
            continue
        r = min(e.shape)
        kc = int(r * fraction)
        kc = r - round((r - kc) / T) * T
        u, s, v = torch.linalg.svd(mats.sum(0), full_matrices=False)
        n = int((r - kc) / T)
        cu = torch.zeros_like(u)
        cs = torch.zeros_like(s)
        cv = torch.zeros_like(v)
        for i in range(T):
            w = mats[i] - u[:, :kc] @ u[:, :kc].T @ mats[i]
            ut, st, vt = torch.linalg.svd(w, full_matrices=False)
            cu[:, i * n:(i + 1) * n] = ut[:, :n]
            cs[i * n:(i + 1) * n] = st[:n]
            cv[i * n:(i + 1) * n, :] = vt[:n, :]
        cu[:, T * n:T * n + kc] = u[:, :kc]
        cs[T * n:T * n + kc] = s[:kc]
        cv[T * n:T * n + kc, :] = v[:kc, :]
        out[e.slice] = (_polar(cu) @ torch.diag(torch.full_like(cs, float(cs.mean()))) @ _polar(cv)).reshape(-1)
    return alpha * out


def _cart_key(name):
    return ("attn" in name or "mlp" in name) and not ("ln" in name or "bias" in name)


def cart(index, taus, lam, rho, dtype=torch.float64):
    T = len(taus)
    out = torch.zeros(index.numel, dtype=dtype, device=taus.device)
    for e, mats in _matrices(index, taus, dtype):
        avg = mats.mean(0)
        if not _cart_key(e.name):
            out[e.slice] = (avg + lam * sum(mats[i] - avg for i in range(T))).reshape(-1)
            continue
        low = torch.zeros_like(avg)
        for i in range(T):
            u, s, v = torch.linalg.svd(mats[i] - avg, full_matrices=False)
            k = 0 if rho == 0.0 else s.shape[0] if rho == 1.0 else max(1, int(rho * s.shape[0]))
            low += (u[:, :k] * s[:k]) @ v[:k, :]
        out[e.slice] = (avg + lam * low).reshape(-1)
    return out


WUDI_KEYS = ("attn.in_proj_weight", "attn.out_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def wudi_matrix(vectors, iterations, lr):
    """The official loop: autograd through Σt ‖(τm − τt) τtᵀ‖² / ‖τt‖², torch.optim.Adam."""
    merged = torch.nn.Parameter(vectors.sum(0))
    optimizer = torch.optim.Adam([merged], lr=lr, weight_decay=0)
    norms = torch.square(torch.norm(vectors.reshape(vectors.shape[0], -1), p=2, dim=-1))
    for _ in range(iterations):
        inner = torch.matmul(merged.unsqueeze(0) - vectors, vectors.transpose(1, 2))
        loss = torch.sum(torch.square(inner) / norms.unsqueeze(-1).unsqueeze(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return merged.data.detach()


def _wudi_key(e, keys):
    return any(k in e.name for k in WUDI_KEYS) if keys == "official" else _tsv_key(e.name, e.shape)


def wudi(index, taus, iterations=300, lr=1e-5, keys="official", dtype=torch.float64):
    out = torch.zeros(index.numel, dtype=dtype, device=taus.device)
    for e, mats in _matrices(index, taus, dtype):
        chosen = _wudi_key(e, keys)
        if chosen:
            out[e.slice] = wudi_matrix(mats, iterations, lr).reshape(-1)
        elif keys != "official":
            out[e.slice] = mats.mean(0).reshape(-1)
    return out


def wudi_exact(index, taus, keys="official", dtype=torch.float64):
    """The minimiser of WUDI's objective per matrix, from the normal equations τm A = B (A = Σt τtᵀτt / ‖τt‖²,
    B = Σt τt τtᵀ τt / ‖τt‖²), one key at a time, by ``torch.linalg.lstsq`` (τm = B A⁺ as Aᵀ τmᵀ = Bᵀ)."""
    out = torch.zeros(index.numel, dtype=dtype, device=taus.device)
    for e, mats in _matrices(index, taus, dtype):
        chosen = _wudi_key(e, keys)
        if chosen:
            A = sum(m.T @ m / m.square().sum() for m in mats)
            B = sum(m @ m.T @ m / m.square().sum() for m in mats)
            solution = torch.linalg.lstsq(A.cpu(), B.T.cpu(), rcond=1e-12, driver="gelsd").solution.T
            out[e.slice] = solution.to(out.device).reshape(-1)
        elif keys != "official":
            out[e.slice] = mats.mean(0).reshape(-1)
    return out
