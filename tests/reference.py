"""Plain reference implementations of the merge methods, written straightforwardly from ALGORITHMS.md with
torch.kthvalue for every order statistic.  They take the (T, P) task-vector tensor and loop over tasks, so the
benchmark (bench/merge_bench.py) can run them at ViT size too."""
import math
import re

import numpy as np

import torch


def ta(theta0, taus, lam):
    return theta0 + lam * taus.sum(0)


def ties_keep(tau, K):
    P = tau.numel()
    k = max(P - math.floor(P * K / 100), 1)
    return tau.abs() >= tau.abs().kthvalue(k).values


def ties_merged(taus, K, merge):
    keeps = [ties_keep(tau, K) for tau in taus]
    elected = sum(torch.where(keep, tau, 0.0) for keep, tau in zip(keeps, taus))
    gamma = torch.sign(elected)
    gamma[gamma == 0] = torch.sign(gamma.sum())
    total = torch.zeros_like(elected)
    count = torch.zeros_like(elected)
    for keep, tau in zip(keeps, taus):
        trimmed = torch.where(keep, tau, 0.0)
        agree = (torch.sign(trimmed) == gamma) & (trimmed != 0)
        total += torch.where(agree, trimmed, 0.0)
        count += agree
    if merge == "mean":
        total = total / count.clamp(min=1)
    return total, torch.stack(keeps)


def ties(theta0, taus, K, merge, lam):
    return theta0 + lam * ties_merged(taus, K, merge)[0]


def dare_keep(n, t, p, seed, generator="philox"):
    """DARE's keep mask from its definition: per 2^18-entry chunk c, uint32 draws of Philox(key=(seed, t),
    counter=(0, c, 0, 0)); keep where u ≥ ⌊p·2^32⌋ (or the legacy torch.rand stream)."""
    if generator == "torch":
        return torch.rand(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + t)) >= p
    keep = []
    for c, start in enumerate(range(0, n, 1 << 18)):
        bits = np.random.Philox(key=[seed, t], counter=[0, c, 0, 0])
        u = np.random.Generator(bits).integers(0, 2**32, size=min(1 << 18, n - start), dtype=np.uint32)
        keep.append(u.astype(np.float64) >= math.floor(p * 2**32))
    return torch.from_numpy(np.concatenate(keep))


def dare_dropped(tau, t, p, seed, rescale, generator="philox"):
    kept = tau * dare_keep(tau.numel(), t, p, seed, generator)
    if rescale == "l1":
        return kept * (tau.abs().sum() / kept.abs().sum())
    return kept / (1 - p)


def tall_masks(taus, tau_mtl, lambdas):
    return torch.stack([taus[t].abs() > lambdas[t] * (tau_mtl - taus[t]).abs() for t in range(taus.shape[0])])


def consensus(theta0, taus, k, lam, lambdas, base="ta", ties_k=20):
    tau_mtl = taus.sum(0) if base == "ta" else ties_merged(taus, ties_k, "sum")[0]
    agreement = sum(taus[t].abs() > lambdas[t] * (tau_mtl - taus[t]).abs() for t in range(taus.shape[0]))
    return theta0 + lam * tau_mtl * (agreement >= k)


def _sorted_at(x, position):
    """sorted(x)[position] (0-based), as the official PCB code indexes its sorted copy."""
    return x.kthvalue(position + 1).values


def _pcb_clip(tau, q):
    P = tau.numel()
    lo, hi = _sorted_at(tau.abs(), int(P * q)), _sorted_at(tau.abs(), int(P * (1 - q) - 1))
    a = torch.maximum(torch.minimum(tau.abs(), hi), lo)
    return a, (a - lo) / (hi - lo)


def pcb(theta0, taus, r, q, lams):
    T, P = taus.shape
    direction = sum(torch.sign(tau) * _pcb_clip(tau, q)[1] for tau in taus)
    numerator, denominator, kept = 0, 0, []
    for t, tau in enumerate(taus):
        a, norm = _pcb_clip(tau, q)
        beta = torch.exp(T * norm ** 2) * torch.tanh(tau * direction)
        floor = _sorted_at(beta, int(P * (1 - r)))
        score = (torch.maximum(beta, floor) - floor) / (beta.max() - floor)
        numerator = numerator + lams[t] * (score * torch.sign(tau) * a)
        denominator = denominator + score
        kept.append(score > 0)
    return theta0 + numerator / denominator.clamp(min=1e-12), torch.stack(kept)


def mask_stats(masks):
    """Agreement histogram (counts of c = 0..T), per-task active counts and the T×T Jaccard matrix of dense
    (T, P) bool masks."""
    T = masks.shape[0]
    c = masks.sum(0)
    histogram = [int((c == v).sum()) for v in range(T + 1)]
    jaccard = torch.ones(T, T, dtype=torch.float64)
    for i in range(T):
        for j in range(T):
            union = int((masks[i] | masks[j]).sum())
            if union:
                jaccard[i, j] = int((masks[i] & masks[j]).sum()) / union
    return histogram, masks.sum(1).tolist(), jaccard


# ---------------------------------------------------------------- EMR-Merging, LiNeS, PCB's pcb_ES.py variant
def emr(taus, index):
    """Official emr_merge per tensor: (τuni, masks (T, P) bool, rescalers) with per-tensor mean |·| sums."""
    T = taus.shape[0]
    flag = torch.where(taus.sum(0) > 0, 1.0, -1.0)
    masks = torch.stack([tau * flag > 0 for tau in taus])
    uni = torch.zeros_like(flag)
    for tau, mask in zip(taus, masks):
        uni = torch.maximum(uni, (mask * tau).abs())
    uni = uni * flag
    scales = []
    for t in range(T):
        num = sum(float(taus[t, e.slice].abs().double().mean()) for e in index.entries)
        den = sum(float((masks[t, e.slice] * uni[e.slice]).abs().double().mean()) for e in index.entries)
        scales.append(num / den if den > 0 else 0.0)
    return uni, masks, scales


def lines(delta, index, alpha, beta):
    """LiNeS_scaling on the state dict: a key holding ".l." (l < L, first match) gets α + β·l/(L − 1)."""
    blocks = sorted({int(n) for e in index.entries for n in re.findall(r"\.(\d+)\.", e.name)})
    L = len(blocks)
    out = delta.clone()
    for e in index.entries:
        layer = next((l for l in range(L) if f".{l}." in e.name), None)
        out[e.slice] = delta[e.slice] * (alpha if layer is None else alpha + beta * layer / max(L - 1, 1))
    return out


def pcb_sum_tanh(theta0, taus, r, q, lams):
    """pcb_ES.py's PCB: inter_t = Σj tanh(ñt ⊙ ñj) on the whole (T, P) stack."""
    T, P = taus.shape
    parts = [_pcb_clip(tau, q) for tau in taus]
    signed = torch.stack([torch.sign(tau) * norm for tau, (_, norm) in zip(taus, parts)])
    numerator, denominator = 0, 0
    for t, tau in enumerate(taus):
        a, norm = parts[t]
        beta = torch.exp(T * norm ** 2) * torch.tanh(signed[t] * signed).sum(0)
        floor = _sorted_at(beta, int(P * (1 - r)))
        score = (torch.maximum(beta, floor) - floor) / (beta.max() - floor)
        numerator = numerator + lams[t] * score * torch.sign(tau) * a
        denominator = denominator + score
    return theta0 + numerator / denominator.clamp(min=1e-12)
