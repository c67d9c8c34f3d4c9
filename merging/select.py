"""Exact order statistics without sorting: the k-th smallest element and torch.quantile-identical quantiles.

``kth_smallest(x, k)`` returns exactly ``torch.kthvalue(x, k).values`` (ties and zeros included) with a
sample-bracket selection (Floyd–Rivest): a seeded sample of the input brackets the k-th value between two
sample order statistics lo ≤ hi; one counting pass finds how many elements fall below, on and strictly between them;
the k-th element is then either lo, hi, or the matching order statistic of the (small) strict interior.  If the bracket misses (rare, or adversarial input) the search recurses on the side that
holds it, so the answer is exact whatever the sample.  Cost: a few passes over memory instead of kthvalue's
partial sort (0.64 s per 88 M elements on an H100, ~1.8 s on 2 CPU cores).
"""
from __future__ import annotations

import math

import numpy as np
import torch

from . import kernels
from .chunks import map_chunks, use_numpy

SMALL = 1 << 18  # below this size torch.kthvalue itself is cheap
SAMPLE = 1 << 16
_Z = 6.0  # bracket half-width in standard deviations of the sample rank


def kth_smallest(x: torch.Tensor, k: int, seed: int = 0, absolute: bool = False) -> torch.Tensor:
    """The k-th smallest (1-based) element of ``x`` (of |x| with ``absolute``; flattened, no NaN), identical to
    ``torch.kthvalue``.  On the CPU path |x| is computed on the fly, materialised only where the bracket misses or
    sits on a heavily tied value."""
    x = x.reshape(-1)
    n = x.numel()
    if not 1 <= k <= n:
        raise ValueError(f"k={k} out of range for {n} elements")
    if absolute and not use_numpy(x):
        x, absolute = x.abs(), False
    generator = torch.Generator(device=x.device).manual_seed(seed)
    return _select(x, k, generator, absolute)


def _select(x: torch.Tensor, k: int, generator: torch.Generator, absolute: bool = False) -> torch.Tensor:
    """The k-th smallest of x (of |x| with ``absolute``, CPU path only)."""
    n = x.numel()
    if n <= SMALL:
        return torch.kthvalue(x.abs() if absolute else x, k).values
    idx = torch.randint(n, (SAMPLE,), device=x.device, generator=generator)
    if use_numpy(x):  # numpy: torch's small threaded ops cost more than the gather itself on a loaded machine
        sample = x.numpy()[idx.numpy()]
        sample = torch.from_numpy(np.sort(np.abs(sample) if absolute else sample))
    else:
        sample = torch.sort(x[idx]).values
    p = k / n
    centre = p * (SAMPLE - 1)
    half = _Z * math.sqrt(SAMPLE * p * (1 - p)) + 16
    lo = sample[max(int(centre - half), 0)]
    hi = sample[min(int(math.ceil(centre + half)), SAMPLE - 1)]
    if bool(lo == hi):  # a heavily tied value (e.g. exact zeros): count it instead of gathering it
        x = x.abs() if absolute else x
        below = int(torch.count_nonzero(x < lo))
        if k <= below:
            return _select(x[x < lo], k, generator)
        equal = int(torch.count_nonzero(x == lo))
        if k <= below + equal:
            return lo.clone()
        return _select(_above(x, lo, k - below - equal), k - below - equal, generator)
    below, on_lo, inside, on_hi = _bracket(x, lo, hi, absolute)
    if k <= below:
        x = x.abs() if absolute else x
        return _select(x[x < lo], k, generator)
    k -= below
    if k <= on_lo:
        return lo.clone()
    k -= on_lo
    if k <= inside.numel():
        return _select(inside, k, generator)
    k -= inside.numel()
    if k <= on_hi:
        return hi.clone()
    rest = k - on_hi
    return _select(_above(x.abs() if absolute else x, hi, rest), rest, generator)


def _bracket(x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor,
             absolute: bool = False) -> tuple[int, int, torch.Tensor, int]:
    """(#{v < lo}, #{v = lo}, the elements with lo < v < hi, #{v = hi}) over v = x (|x| with ``absolute``, CPU
    path only) in one pass (a compiled chunk kernel on CPU).

    The interior is strict, so a heavily tied value next to the k-th (e.g. exact zeros) is counted, never
    gathered again; and since lo and hi are elements of ``x``, every recursion works on fewer elements."""
    if not use_numpy(x):
        below = int(torch.count_nonzero(x < lo))
        on_lo, on_hi = int(torch.count_nonzero(x == lo)), int(torch.count_nonzero(x == hi))
        return below, on_lo, x[(x > lo) & (x < hi)], on_hi
    values, low, high = x.numpy(), np.float32(lo), np.float32(hi)
    parts = map_chunks(values.size, lambda a, b: kernels.bracket(values[a:b], low, high, absolute))
    return (sum(p[0] for p in parts), sum(p[1] for p in parts),
            torch.from_numpy(np.concatenate([p[3] for p in parts])), sum(p[2] for p in parts))


def _above(x: torch.Tensor, value: torch.Tensor, needed: int) -> torch.Tensor:
    above = x[x > value]
    if above.numel() < needed:
        raise ValueError("input contains NaN")
    return above


def quantile(x: torch.Tensor, q: float, seed: int = 0) -> torch.Tensor:
    """``torch.quantile(x, q)`` (linear interpolation) for any size, computed with :func:`kth_smallest`.

    Follows torch's arithmetic exactly: q is rounded to x's dtype, rank = q·(n−1) in double precision,
    result = lerp(x₍⌊rank⌋₎, x₍⌈rank⌉₎, rank − ⌊rank⌋) with the weight in x's dtype."""
    x = x.reshape(-1)
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile q={q} must be in [0, 1]")
    rank = float(torch.tensor(q, dtype=x.dtype)) * (x.numel() - 1)
    below, above = math.floor(rank), math.ceil(rank)
    v_below = kth_smallest(x, below + 1, seed)
    v_above = v_below if above == below else kth_smallest(x, above + 1, seed)
    return torch.lerp(v_below, v_above, torch.tensor(rank - below, dtype=x.dtype, device=x.device))


def top_fraction_threshold(tau: torch.Tensor, keep_percent: float) -> torch.Tensor:
    """TIES trim threshold: the k-th smallest |τ| with k = P − ⌊P·K/100⌋ (keep entries with |τ| ≥ it).

    K = 100 keeps everything (threshold = min |τ|); K = 0 keeps only entries equal to the maximum."""
    n = tau.numel()
    k = n - int(math.floor(n * keep_percent / 100.0))
    return kth_smallest(tau, max(k, 1), absolute=True)
