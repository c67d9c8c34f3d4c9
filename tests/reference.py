"""Plain reference implementations of the merge methods, written straightforwardly from ALGORITHMS.md over a
dense (T, P) tensor with torch.kthvalue / torch.sort, to check the engine's fast paths against."""
import math

import torch


def ta(theta0, taus, lam):
    return theta0 + lam * taus.sum(0)


def ties_trimmed(taus, K):
    T, P = taus.shape
    k = max(P - math.floor(P * K / 100), 1)
    thr = taus.abs().kthvalue(k, dim=1, keepdim=True).values
    keep = taus.abs() >= thr
    return torch.where(keep, taus, torch.zeros_like(taus)), keep


def ties_merged(taus, K, merge):
    trimmed, keep = ties_trimmed(taus, K)
    gamma = torch.sign(trimmed.sum(0))
    gamma[gamma == 0] = torch.sign(gamma.sum())
    agree = (torch.sign(trimmed) == gamma) & (trimmed != 0)
    total = (trimmed * agree).sum(0)
    if merge == "mean":
        total = total / agree.sum(0).clamp(min=1)
    return total, keep


def ties(theta0, taus, K, merge, lam):
    return theta0 + lam * ties_merged(taus, K, merge)[0]


def dare_dropped(taus, p, seed, rescale):
    out = []
    for t in range(taus.shape[0]):
        g = torch.Generator().manual_seed(seed * 1_000_003 + t)
        keep = torch.rand(taus.shape[1], generator=g) >= p
        kept = taus[t] * keep
        if rescale == "l1":
            kept = kept * (taus[t].abs().sum() / kept.abs().sum())
        else:
            kept = kept / (1 - p)
        out.append(kept)
    return torch.stack(out)


def tall_masks(taus, tau_mtl, lambdas):
    return torch.stack([taus[t].abs() > lambdas[t] * (tau_mtl - taus[t]).abs() for t in range(taus.shape[0])])


def consensus(theta0, taus, k, lam, lambdas, base="ta", ties_k=20):
    tau_mtl = taus.sum(0) if base == "ta" else ties_merged(taus, ties_k, "sum")[0]
    masks = tall_masks(taus, tau_mtl, lambdas)
    keep = masks.sum(0) >= k
    return theta0 + lam * tau_mtl * keep


def pcb(theta0, taus, r, q, lams):
    T, P = taus.shape
    a = taus.abs()
    s = a.sort(dim=1).values
    lo, hi = s[:, int(P * q)], s[:, int(P * (1 - q) - 1)]
    a = torch.maximum(torch.minimum(a, hi[:, None]), lo[:, None])
    norm = (a - lo[:, None]) / (hi - lo)[:, None]
    intra = torch.exp(T * norm ** 2)
    inter = torch.tanh(taus * (torch.sign(taus) * norm).sum(0))
    beta = intra * inter
    bs = beta.sort(dim=1).values
    floor = bs[:, int(P * (1 - r))]
    score = (torch.maximum(beta, floor[:, None]) - floor[:, None]) / (bs[:, -1] - floor)[:, None]
    clipped = torch.sign(taus) * a
    lams = torch.as_tensor(lams, dtype=taus.dtype)[:, None]
    return theta0 + (lams * score * clipped).sum(0) / score.sum(0).clamp(min=1e-12), score > 0
