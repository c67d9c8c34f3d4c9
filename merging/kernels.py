"""Compiled (numba) chunk kernels of the CPU code paths: selection brackets, TIES and EMR.

Each kernel makes one pass over a cache-sized chunk (``merging.chunks.map_chunks`` runs them on its threads;
they release the GIL) and does the same IEEE operations, in the same order per element, as the whole-vector
torch code (GPU) path, so both give the same bits (no fastmath).  Bit masks are in numpy ``packbits`` order.
Compiled on first use and cached on disk (``cache=True``).
"""
from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

_jit = njit(cache=True, nogil=True)
BLOCK = 2048  # elements per L1-resident block when a kernel sweeps every task over one stretch
_ONES = np.uint64(0x0101010101010101)
_PACK = np.uint64(0x8040201008040201)  # (8 little-endian 0/1 bytes × this) >> 56 = those bits, first one highest


@_jit
def pack(flags, row):
    """row[j] = the 0/1 bytes flags[8j : 8j + 8] as bits, the first one highest (numpy ``packbits``)."""
    n = flags.size
    words = flags[:n // 8 * 8].view(np.uint64)
    for j in range(words.size):
        row[j] = (words[j] * _PACK) >> np.uint64(56)
    if n % 8:
        byte = 0
        for q in range(n % 8):
            byte |= np.int64(flags[n // 8 * 8 + q]) << (7 - q)
        row[n // 8] = byte


@_jit
def bracket(x, lo, hi, absolute):
    """(#{v < lo}, #{v = lo}, #{v = hi}, the values with lo < v < hi in order) over v = x (|x| when ``absolute``),
    for lo < hi.  One vectorised pass writes a byte per element (bit 0: v < lo, bit 1: lo ≤ v ≤ hi); then, 8 bytes
    at a time, bit 0 is counted and the groups holding any bit 1 are gathered and split at lo and hi."""
    n = x.size
    flags = np.empty(n, dtype=np.uint8)
    for i in range(n):
        v = abs(x[i]) if absolute else x[i]
        flags[i] = np.uint8(v < lo) | (np.uint8((v >= lo) & (v <= hi)) << np.uint8(1))
    out, m, below = np.empty(n, dtype=x.dtype), 0, 0
    words = flags[:n // 8 * 8].view(np.uint64)
    for j in range(words.size):
        w = words[j]
        below += ((w & _ONES) * _ONES) >> np.uint64(56)  # the sum of the 8 bytes' bit 0
        if w & (_ONES << np.uint64(1)):
            for i in range(8 * j, 8 * j + 8):
                out[m] = abs(x[i]) if absolute else x[i]
                m += flags[i] >> 1
    for i in range(n // 8 * 8, n):
        below += flags[i] & 1
        out[m] = abs(x[i]) if absolute else x[i]
        m += flags[i] >> 1
    on_lo, on_hi, inside = 0, 0, 0
    for j in range(m):
        v = out[j]
        if v == lo:
            on_lo += 1
        elif v == hi:
            on_hi += 1
        else:
            out[inside] = v
            inside += 1
    return below, on_lo, on_hi, out[:inside].copy()


@_jit
def _trim_one(v, threshold, elected):
    """One task's trim: keep = |v| ≥ threshold; (elected + v·keep, keep)."""
    keep = abs(v) >= threshold
    return elected + v * np.float32(keep), keep


@_jit
def ties_trim(stack, rows, thresholds, start, stop, elected, masks, gamma, finish):
    """For every task u (row rows[u] of stack) over [start, stop), in task order (four per sweep of an
    L1-resident block): keep = |τu| ≥ thresholds[u] → bits of masks[u]; elected += τu·keep.  Then, if ``finish``:
    γ = sign(elected) → gamma and elected ← 0 (it becomes the disjoint sum); returns #(γ > 0) − #(γ < 0) (0
    without ``finish``).  elected, gamma: [start, stop)."""
    keep = np.empty((4, BLOCK), dtype=np.uint8)
    balance = 0
    for s in range(0, stop - start, BLOCK):
        e = min(s + BLOCK, stop - start)
        acc, a, b = elected[s:e], start + s, start + e
        k0, k1, k2, k3 = keep[0, :e - s], keep[1, :e - s], keep[2, :e - s], keep[3, :e - s]
        u = 0
        while u + 4 <= rows.size:
            t0, t1, t2, t3 = stack[rows[u], a:b], stack[rows[u + 1], a:b], stack[rows[u + 2], a:b], stack[rows[u + 3], a:b]
            h0, h1, h2, h3 = thresholds[u], thresholds[u + 1], thresholds[u + 2], thresholds[u + 3]
            for i in range(e - s):
                x, k0[i] = _trim_one(t0[i], h0, acc[i])
                x, k1[i] = _trim_one(t1[i], h1, x)
                x, k2[i] = _trim_one(t2[i], h2, x)
                acc[i], k3[i] = _trim_one(t3[i], h3, x)
            for q in range(4):
                pack(keep[q, :e - s], masks[u + q, a // 8:(b + 7) // 8])
            u += 4
        for u in range(u, rows.size):
            tau, h = stack[rows[u], a:b], thresholds[u]
            for i in range(e - s):
                acc[i], k0[i] = _trim_one(tau[i], h, acc[i])
            pack(k0, masks[u, a // 8:(b + 7) // 8])
        if finish:
            for i in range(e - s):
                sign = (acc[i] > 0) - (acc[i] < 0)
                gamma[s + i] = sign
                balance += sign
                acc[i] = 0
    return balance


@_jit
def _disjoint_one(v, threshold, g, total, count, conflict):
    """One task's term: w = v·γ·1{|v| ≥ threshold}; (total + max(w, 0), count + (w > 0), conflict | (w < 0))."""
    w = v * g * np.float32(abs(v) >= threshold)
    return total + (w if not w < 0 else np.float32(0)), count + (w > 0), conflict | (w < 0)


@_jit
def ties_disjoint(stack, rows, thresholds, gamma, fill, start, stop, total, count, conflicts, mean, finish):
    """For every task u (row rows[u] of stack) over [start, stop), in task order (four per sweep of an
    L1-resident block): w = τu·γ·1{|τu| ≥ thresholds[u]} (γ = fill where gamma is 0); conflicts |= w < 0; count +=
    w > 0; total += max(w, 0).  Then, if ``finish``: total ← γ·total (/ max(1, count) when ``mean``).  gamma,
    total, count, conflicts: [start, stop)."""
    sign = np.empty(BLOCK, dtype=np.float32)
    for s in range(0, stop - start, BLOCK):
        e = min(s + BLOCK, stop - start)
        g, tot, cnt, conf = sign[:e - s], total[s:e], count[s:e], conflicts[s:e]
        for i in range(e - s):
            g[i] = gamma[s + i] if gamma[s + i] != 0 else fill
        a, b = start + s, start + e
        u = 0
        while u + 4 <= rows.size:
            t0, t1, t2, t3 = stack[rows[u], a:b], stack[rows[u + 1], a:b], stack[rows[u + 2], a:b], stack[rows[u + 3], a:b]
            h0, h1, h2, h3 = thresholds[u], thresholds[u + 1], thresholds[u + 2], thresholds[u + 3]
            for i in range(e - s):
                x, n, c = _disjoint_one(t0[i], h0, g[i], tot[i], cnt[i], conf[i])
                x, n, c = _disjoint_one(t1[i], h1, g[i], x, n, c)
                x, n, c = _disjoint_one(t2[i], h2, g[i], x, n, c)
                tot[i], cnt[i], conf[i] = _disjoint_one(t3[i], h3, g[i], x, n, c)
            u += 4
        for u in range(u, rows.size):
            tau, h = stack[rows[u], a:b], thresholds[u]
            for i in range(e - s):
                tot[i], cnt[i], conf[i] = _disjoint_one(tau[i], h, g[i], tot[i], cnt[i], conf[i])
        if finish:
            for i in range(e - s):
                tot[i] *= g[i]
                if mean:
                    tot[i] /= np.float32(max(cnt[i], 1))


@intrinsic
def _lanes(typingctx, x, count):
    """numpy's pairwise-sum block of x[:count] (count a multiple of 8, at least 8): 8 float64 accumulators, lane
    j summing x[j], x[8 + j], … in order, then ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7)).  Written as one
    <8 x double> vector, which LLVM does not form from the scalar code."""
    def codegen(context, builder, signature, args):
        array, n = args
        f8, d8 = ir.VectorType(ir.FloatType(), 8), ir.VectorType(ir.DoubleType(), 8)
        base = builder.bitcast(context.make_array(signature.args[0])(context, builder, array).data, f8.as_pointer())
        acc = cgutils.alloca_once_value(builder, builder.fpext(builder.load(base, align=4), d8))
        one = ir.Constant(n.type, 1)
        with cgutils.for_range_slice(builder, one, builder.udiv(n, ir.Constant(n.type, 8)), one) as (k, _):
            lane = builder.fpext(builder.load(builder.gep(base, [k]), align=4), d8)
            builder.store(builder.fadd(builder.load(acc), lane), acc)
        r = [builder.extract_element(builder.load(acc), ir.Constant(ir.IntType(32), j)) for j in range(8)]
        add = builder.fadd
        return add(add(add(r[0], r[1]), add(r[2], r[3])), add(add(r[4], r[5]), add(r[6], r[7])))

    if not (isinstance(x, types.Array) and x.dtype == types.float32 and x.layout == "C"):
        return None
    return types.float64(x, types.intp), codegen


@_jit
def _pairwise(x):
    """numpy's float64 pairwise sum of x (``pairwise_sum``: blocks of ≤ 128 in 8 accumulators, halves above)."""
    n = x.size
    if n < 8:
        res = -0.0
        for i in range(n):
            res += np.float64(x[i])
        return res
    if n <= 128:
        res = _lanes(x, n - n % 8)
        for i in range(n - n % 8, n):
            res += x[i]
        return res
    half = n // 2
    half -= half % 8
    return _pairwise(x[:half]) + _pairwise(x[half:])


@_jit
def segment_sums(x, cuts, out):
    """out[k] = ``np.add.reduceat(x, cuts, dtype=np.float64)[k]``, bit for bit: x[c] + pairwise sum of the rest of
    the segment [cuts[k], cuts[k+1]) (the last one ends at x's end); x[cuts[k]] alone where the segment is empty."""
    for k in range(cuts.size):
        a, b = cuts[k], cuts[k + 1] if k + 1 < cuts.size else x.size
        out[k] = np.float64(x[a]) + _pairwise(x[a + 1:b]) if a + 1 < b else np.float64(x[a])


@_jit
def emr_chunk(stack, rows, total, start, stop, cuts, uni, packed, numer, denom):
    """EMR over [start, stop) (see merging.methods.emr): Mt = 1{τt > 0} where total > 0, else 1{τt < 0} → packed
    rows; τuni = ±maxt |τt|·Mt → uni; numer[t] = segment sums of |τt|, denom[t] of |τuni|·Mt (float64, as
    :func:`segment_sums`, over the entries cut at ``cuts``, relative to start)."""
    n, T = stop - start, rows.size
    positive = total[start:stop] > 0
    magnitude = np.zeros(n, dtype=np.float32)
    size = np.empty(n, dtype=np.float32)
    masks = np.empty((T, n), dtype=np.uint8)
    for t in range(T):
        tau, mask = stack[rows[t], start:stop], masks[t]
        for i in range(n):
            v = tau[i]
            m = v > 0 if positive[i] else v < 0
            a = abs(v)
            size[i] = a
            magnitude[i] = max(magnitude[i], a * np.float32(m))
            mask[i] = m
        segment_sums(size, cuts, numer[t])
        pack(mask, packed[t, start // 8:(stop + 7) // 8])
    for t in range(T):
        mask = masks[t]
        for i in range(n):
            size[i] = magnitude[i] * np.float32(mask[i])
        segment_sums(size, cuts, denom[t])
    for i in range(n):
        uni[start + i] = magnitude[i] if positive[i] else -magnitude[i]
