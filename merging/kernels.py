"""Compiled (numba) chunk kernels of the CPU code paths: selection brackets, TALL masks, Consensus, TIES, EMR and PCB.

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

_jit = njit(cache=True, nogil=True, error_model="numpy")  # IEEE division (inf, NaN), as torch
BLOCK = 2048  # elements per L1-resident block when a kernel sweeps every task over one stretch
_ONES = np.uint64(0x0101010101010101)
_PACK = np.uint64(0x8040201008040201)  # (8 little-endian 0/1 bytes × this) >> 56 = those bits, first one highest
_BITS = np.uint64(0x0102040810204080)  # byte q of a little-endian word: bit 7 − q (numpy packbits order)


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


# ---------------------------------------------------------------- TALL masks and the Consensus filter


@_jit
def tall_bits(stack, rows, lambdas, mtl, start, stop, masks):
    """For every task u (row rows[u] of stack) over [start, stop): mu = 1{|τu| > λu·|τMTL − τu|} (float32: |τMTL −
    τu|, then ·λu) → bits of masks[u].  Task by task over the whole chunk (each row read as one stream; τMTL's
    chunk, read from memory once, stays in L2), packed per L1-resident block.  mtl: [start, stop)."""
    flags = np.empty(BLOCK, dtype=np.uint8)
    for u in range(rows.size):
        lam = lambdas[u]
        for s in range(0, stop - start, BLOCK):
            e = min(s + BLOCK, stop - start)
            a, b = start + s, start + e
            tau, m, f = stack[rows[u], a:b], mtl[s:e], flags[:e - s]
            for i in range(e - s):
                f[i] = abs(tau[i]) > abs(m[i] - tau[i]) * lam
            pack(f, masks[u, a // 8:(b + 7) // 8])


@njit(inline="always")
def _digits(n):
    """The binary digits needed for the counts 0 … n: ⌊log2 n⌋ + 1 (1 for n = 0)."""
    digits = 1
    while (1 << digits) <= n:
        digits += 1
    return digits


@njit(inline="always")
def _count_bits(masks, a, b, planes, carry):
    """c = Σu masks[u, a:b], bit-sliced: planes[p, j] holds binary digit p of the counts of word j's entries (8 or
    64 entries per operation on bytes or uint64).  Rows are taken two at a time: a full adder puts their sum and
    digit 0 into digit 0 and a carry of weight 2, which ripples through the planes it can reach (after u rows
    c ≤ u); an odd last row ripples from digit 0."""
    n, T = b - a, masks.shape[0]
    planes[:, :n] = 0
    c, low = carry[:n], planes[0, :n]
    u = 0
    while u < T:
        x = masks[u, a:b]
        if u + 1 < T:
            y = masks[u + 1, a:b]
            for j in range(n):
                s = x[j] ^ y[j]
                c[j] = (x[j] & y[j]) | (low[j] & s)
                low[j] ^= s
            first, u = 1, u + 2
        else:
            for j in range(n):
                c[j] = x[j]
            first, u = 0, u + 1
        for p in range(first, min(planes.shape[0], _digits(u))):
            plane = planes[p, :n]
            for j in range(n):
                t = plane[j] & c[j]
                plane[j] ^= c[j]
                c[j] = t


@njit(inline="always")
def _at_least(planes, n, k, keep, equal):
    """keep[j] = the bits 1{c ≥ k} of byte j's 8 counts (bit-sliced in planes), digit by digit from the highest:
    greater |= equal ∧ cp ∧ ¬kp, equal ∧= (cp = kp); then c ≥ k = greater ∨ equal (keep holds greater; equal is
    scratch)."""
    keep[:n] = 0
    equal[:n] = 0xFF
    for p in range(planes.shape[0] - 1, -1, -1):
        plane = planes[p, :n]
        if (k >> p) & 1:
            for j in range(n):
                equal[j] &= plane[j]
        else:
            for j in range(n):
                keep[j] |= equal[j] & plane[j]
                equal[j] &= ~plane[j]
    for j in range(n):
        keep[j] |= equal[j]


@njit(inline="always")
def _unpack(byte):
    """The 8 bits of ``byte`` as little-endian 0/1 bytes, the highest first (the inverse of :func:`pack`)."""
    spread = (np.uint64(byte) * _ONES) & _BITS  # byte q: bit 7 − q in place; + 0x7F sets bit 7 of nonzero bytes
    return ((spread + _ONES * np.uint64(0x7F)) >> np.uint64(7)) & _ONES


@_jit
def consensus_keep(masks, k, factor, start, stop, kept, vector):
    """Over [start, stop) of the packed masks (T, ⌈P/8⌉): c = Σu mu (bit-sliced counts, :func:`_count_bits`); keep
    = c ≥ k; kept[u] = mu ∧ keep (packed); vector ← (vector where keep, else 0)·factor.  Returns #keep.  vector:
    [start, stop)."""
    digits = _digits(max(masks.shape[0], k))  # c ≤ T and k both fit in the planes
    planes, carry = np.empty((digits, BLOCK // 8), np.uint8), np.empty(BLOCK // 8, np.uint8)
    keep, flags = np.empty(BLOCK // 8, np.uint8), np.empty(BLOCK, np.uint8)
    words, total = flags.view(np.uint64), 0
    for s in range(0, stop - start, BLOCK):
        e = min(s + BLOCK, stop - start)
        a, b = (start + s) // 8, (start + e + 7) // 8
        _count_bits(masks, a, b, planes, carry)
        _at_least(planes, b - a, k, keep, carry)
        for u in range(masks.shape[0]):
            row, out = masks[u, a:b], kept[u, a:b]
            for j in range(b - a):
                out[j] = row[j] & keep[j]
        for j in range(b - a):
            words[j] = _unpack(keep[j])
        chunk, f = vector[s:e], flags[:e - s]
        for i in range(e - s):  # a select, not a branch: vectorised
            chunk[i] = (chunk[i] if f[i] else np.float32(0)) * factor
            total += f[i]
    return total


@njit(inline="always")
def _four(stack, rows, thresholds, u, a, b):
    """Tasks u … u + 3 over [a, b): their four rows of ``stack`` and their four thresholds."""
    return (stack[rows[u], a:b], stack[rows[u + 1], a:b], stack[rows[u + 2], a:b], stack[rows[u + 3], a:b],
            thresholds[u], thresholds[u + 1], thresholds[u + 2], thresholds[u + 3])


@njit(inline="always")
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
            t0, t1, t2, t3, h0, h1, h2, h3 = _four(stack, rows, thresholds, u, a, b)
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


@njit(inline="always")
def _disjoint_one(v, threshold, g, total, count, conflict):
    """One task's term: w = v·γ·1{|v| ≥ threshold}; (total + max(w, 0), count + (w > 0), conflict | (w < 0))."""
    w = v * g * np.float32(abs(v) >= threshold)
    return total + (w if not w < 0 else np.float32(0)), count + (w > 0), conflict | (w < 0)


@_jit
def ties_disjoint(stack, rows, thresholds, gamma, fill, start, stop, total, count, conflicts, mean, finish):
    """For every task u (row rows[u] of stack) over [start, stop), in task order (four per sweep of an
    L1-resident block): w = τu·γ·1{|τu| ≥ thresholds[u]} (γ = fill where gamma is 0); conflicts |= w < 0;
    count += w > 0; total += max(w, 0).  Then, if ``finish``: total ← γ·total (/ max(1, count) when ``mean``).
    gamma, total, count, conflicts: [start, stop)."""
    sign = np.empty(BLOCK, dtype=np.float32)
    for s in range(0, stop - start, BLOCK):
        e = min(s + BLOCK, stop - start)
        g, tot, cnt, conf = sign[:e - s], total[s:e], count[s:e], conflicts[s:e]
        for i in range(e - s):
            g[i] = gamma[s + i] if gamma[s + i] != 0 else fill
        a, b = start + s, start + e
        u = 0
        while u + 4 <= rows.size:
            t0, t1, t2, t3, h0, h1, h2, h3 = _four(stack, rows, thresholds, u, a, b)
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
def _lanes(typingctx, x, mask, start, count):
    """numpy's pairwise-sum block over the count values v_i (i = start …; count a multiple of 8, at least 8):
    8 float64 accumulators, lane j summing v_j, v_{8+j}, … in order, then ((r0 + r1) + (r2 + r3)) + ((r4 + r5) +
    (r6 + r7)).  v_i = |x_i| when mask is None, else x_i·mask_i (as :func:`_value`).  Written as one <8 x double>
    vector, which LLVM does not form from the scalar code."""
    masked = not isinstance(mask, types.NoneType)

    def codegen(context, builder, signature, args):
        array, flags, first, n = args
        f8, d8 = ir.VectorType(ir.FloatType(), 8), ir.VectorType(ir.DoubleType(), 8)
        b8, i32 = ir.VectorType(ir.IntType(8), 8), ir.VectorType(ir.IntType(32), 8)
        x_at = builder.gep(context.make_array(signature.args[0])(context, builder, array).data, [first])
        x_base = builder.bitcast(x_at, f8.as_pointer())
        if masked:
            m_at = builder.gep(context.make_array(signature.args[1])(context, builder, flags).data, [first])
            m_base = builder.bitcast(m_at, b8.as_pointer())

        def block(k):
            v = builder.load(builder.gep(x_base, [k]), align=4)
            if masked:
                v = builder.fmul(v, builder.uitofp(builder.load(builder.gep(m_base, [k]), align=1), f8))
            else:  # |v|: the sign bit cleared
                v = builder.bitcast(builder.and_(builder.bitcast(v, i32), ir.Constant(i32, [0x7FFFFFFF] * 8)), f8)
            return builder.fpext(v, d8)

        zero, one = ir.Constant(n.type, 0), ir.Constant(n.type, 1)
        acc = cgutils.alloca_once_value(builder, block(zero))
        with cgutils.for_range_slice(builder, one, builder.udiv(n, ir.Constant(n.type, 8)), one) as (k, _):
            builder.store(builder.fadd(builder.load(acc), block(k)), acc)
        r = [builder.extract_element(builder.load(acc), ir.Constant(ir.IntType(32), j)) for j in range(8)]
        add = builder.fadd
        return add(add(add(r[0], r[1]), add(r[2], r[3])), add(add(r[4], r[5]), add(r[6], r[7])))

    if not (isinstance(x, types.Array) and x.dtype == types.float32 and x.layout == "C") or \
            masked and not (isinstance(mask, types.Array) and mask.dtype == types.uint8 and mask.layout == "C"):
        return None
    return types.float64(x, mask, types.intp, types.intp), codegen


@njit(inline="always")
def _value(x, mask, i):
    """The summed value: |x_i| when mask is None, else x_i·mask_i (float32)."""
    return abs(x[i]) if mask is None else x[i] * np.float32(mask[i])


@_jit
def _pairwise(x, mask, start, n):
    """numpy's float64 pairwise sum (``pairwise_sum``: blocks of ≤ 128 in 8 accumulators, halves above) of the n
    values from ``start`` (:func:`_value`)."""
    if n < 8:
        res = -0.0
        for i in range(start, start + n):
            res += np.float64(_value(x, mask, i))
        return res
    if n <= 128:
        res = _lanes(x, mask, start, n - n % 8)
        for i in range(start + n - n % 8, start + n):
            res += _value(x, mask, i)
        return res
    half = n // 2
    half -= half % 8
    return _pairwise(x, mask, start, half) + _pairwise(x, mask, start + half, n - half)


@_jit
def segment_sums(x, mask, cuts, out):
    """out[k] = ``np.add.reduceat(v, cuts, dtype=np.float64)[k]`` bit for bit, v = |x| (mask None) or x·mask: v at
    cuts[k] plus the pairwise sum of the rest of the segment [cuts[k], cuts[k+1]) (the last one ends at x's end); that
    value alone where nothing follows it."""
    for k in range(cuts.size):
        a, b = cuts[k], cuts[k + 1] if k + 1 < cuts.size else x.size
        first = np.float64(_value(x, mask, a))
        out[k] = first + _pairwise(x, mask, a + 1, b - a - 1) if a + 1 < b else first


@njit(inline="always")
def _agree(v, positive, magnitude):
    """One task's EMR step: m = v > 0 where the elected sign is positive, else v < 0; (max(magnitude, |v|·m), m)."""
    m = v > 0 if positive else v < 0
    b = abs(v) * np.float32(m)
    return (b if b > magnitude else magnitude), m


@_jit
def emr_chunk(stack, rows, start, stop, cuts, uni, packed, numer, denom):
    """EMR over [start, stop) (see merging.methods.emr): Σt τt (rows added in task order, as ``sum_tau``); Mt =
    1{τt > 0} where it is > 0, else 1{τt < 0} → packed rows; τuni = ±maxt |τt|·Mt → uni; numer[t] = segment sums
    of |τt|, denom[t] of |τuni|·Mt (float64, as :func:`segment_sums`, over the entries cut at ``cuts``, relative
    to start).  The chunk's rows are read from memory once, then from cache; the maximum sweeps four tasks at a
    time."""
    n, T = stop - start, rows.size
    total = stack[rows[0], start:stop].copy()
    for t in range(1, T):
        total += stack[rows[t], start:stop]
    positive = total > 0
    magnitude = np.zeros(n, dtype=np.float32)
    masks = np.empty((T, n), dtype=np.uint8)
    for t in range(T):
        segment_sums(stack[rows[t], start:stop], None, cuts, numer[t])
    u = 0
    while u + 4 <= T:
        t0, t1 = stack[rows[u], start:stop], stack[rows[u + 1], start:stop]
        t2, t3 = stack[rows[u + 2], start:stop], stack[rows[u + 3], start:stop]
        m0, m1, m2, m3 = masks[u], masks[u + 1], masks[u + 2], masks[u + 3]
        for i in range(n):
            p = positive[i]
            x, m0[i] = _agree(t0[i], p, magnitude[i])
            x, m1[i] = _agree(t1[i], p, x)
            x, m2[i] = _agree(t2[i], p, x)
            magnitude[i], m3[i] = _agree(t3[i], p, x)
        u += 4
    for u in range(u, T):
        tau, mask = stack[rows[u], start:stop], masks[u]
        for i in range(n):
            magnitude[i], mask[i] = _agree(tau[i], positive[i], magnitude[i])
    for t in range(T):
        pack(masks[t], packed[t, start // 8:(stop + 7) // 8])
        segment_sums(magnitude, masks[t], cuts, denom[t])
    for i in range(n):
        uni[start + i] = magnitude[i] if positive[i] else -magnitude[i]


@njit(inline="always")
def _sign(v):
    """torch.sign(v) as float32: 1, 0 or −1."""
    return np.float32((v > 0) - (v < 0))


@njit(inline="always")
def _clamp_abs(v, low, high):
    """PCB's a = clamp(|v|, low, high)."""
    return min(max(abs(v), low), high)


@njit(inline="always")
def _pcb_norm(v, low, high, span, spread):
    """PCB's Norm(a) = (a − low) / span (0 without ``spread``)."""
    return (_clamp_abs(v, low, high) - low) / span if spread else np.float32(0)


@_jit
def pcb_direction(tau, low, high, span, spread, direction):
    """direction += sign(τ)·Norm(a) (PCB's Σj ñj, one task)."""
    for i in range(tau.size):
        direction[i] += _sign(tau[i]) * _pcb_norm(tau[i], low, high, span, spread)


@_jit
def pcb_beta_args(tau, direction, low, high, span, spread, T, intra, inter):
    """intra = Norm(a)²·T and inter = τ·direction: the arguments of PCB's exp and tanh, which torch evaluates (so
    the CPU and GPU paths share torch's exp/tanh)."""
    for i in range(tau.size):
        n = _pcb_norm(tau[i], low, high, span, spread)
        intra[i] = n * n * T
        inter[i] = tau[i] * direction[i]


@_jit
def mul_max(x, y):
    """x ← x·y; returns max(x) (NaN if any is NaN, as torch.max)."""
    top = np.float32(-np.inf)
    for i in range(x.size):
        x[i] *= y[i]
        if x[i] > top or x[i] != x[i]:
            top = x[i] if top == top else top
    return top


@_jit
def pcb_score(beta, tau, low, high, floor, scale, scaled, scored, keep):
    """PCB's s = (max(β, floor) − floor) / scale (0 without ``scaled``) into beta, scored = sign(τ)·s·a and the
    bits of s > 0 into the packed row ``keep``."""
    flags = np.empty(beta.size, dtype=np.uint8)
    for i in range(beta.size):
        s = (max(beta[i], floor) - floor) / scale if scaled else np.float32(0)
        beta[i] = s
        flags[i] = s > 0
        scored[i] = _sign(tau[i]) * s * _clamp_abs(tau[i], low, high)
    pack(flags, keep)


@intrinsic
def _popcount(typingctx, x):
    """The number of set bits of a uint64, as int64 (LLVM's ctpop: one instruction where the CPU has it)."""
    def codegen(context, builder, signature, args):
        return builder.ctpop(args[0])

    if isinstance(x, types.Integer) and x.bitwidth == 64 and not x.signed:
        return types.int64(x), codegen
    return None


@njit(inline="always")
def _pair_popcounts(words, n, i, j, inter):
    """inter[i, j..j+3] += popcount(mi ∧ mj') over words[:, :n], one load of row i shared by four partners."""
    x, a, b, c, d = words[i, :n], words[j, :n], words[j + 1, :n], words[j + 2, :n], words[j + 3, :n]
    ta = tb = tc = td = 0
    for w in range(n):
        ta += _popcount(x[w] & a[w])
        tb += _popcount(x[w] & b[w])
        tc += _popcount(x[w] & c[w])
        td += _popcount(x[w] & d[w])
    inter[i, j] += ta
    inter[i, j + 1] += tb
    inter[i, j + 2] += tc
    inter[i, j + 3] += td


@njit(inline="always")
def _block_pairs(words, n, T, inter):
    """inter[i, j] += popcount(mi ∧ mj) over words[:, :n] for all i ≤ j: four partners per load of row i."""
    for i in range(T):
        j = i
        while j + 4 <= T:
            _pair_popcounts(words, n, i, j, inter)
            j += 4
        row = words[i, :n]
        for k in range(j, T):
            other, total = words[k, :n], 0
            for w in range(n):
                total += _popcount(row[w] & other[w])
            inter[i, k] += total


@njit(inline="always")
def _position_mask(a, b):
    """The bits of positions a … b − 1 (0 ≤ a < b ≤ 64) of a 64-bit word read little-endian from packbits bytes."""
    mask = np.uint64(0)
    for p in range(a, b):
        mask |= np.uint64(1) << np.uint64(8 * (p // 8) + 7 - p % 8)
    return mask


@njit(inline="always")
def _load_words(flat, at, n, row):
    """row[:n] = the n little-endian 64-bit words at byte ``at`` of ``flat``, read in place whatever their alignment;
    bytes past the end of ``flat`` read as 0."""
    whole = min(n, max(flat.size - at, 0) // 8)
    source = flat[at:at + 8 * whole].view(np.uint64)
    for w in range(whole):  # an explicit loop: a slice assignment would check for overlap and stage a copy
        row[w] = source[w]
    for w in range(whole, n):
        word = np.uint64(0)
        for q in range(min(8, flat.size - at - 8 * w)):
            word |= np.uint64(flat[at + 8 * w + q]) << np.uint64(8 * q)
        row[w] = word


@_jit
def agreement_histogram(flat, stride, T, segments, hist, inter):
    """For each segment (e, start, stop) of T packed mask rows (row u: bytes u·stride … of ``flat``):
    hist[e, c] += #positions in bits [start, stop) where c = Σt mt (1 ≤ c ≤ T), and inter[i, j] += #(mi ∧ mj)
    (i ≤ j), all by popcounts, in L1-resident blocks of words (the first and last word masked to the segment).

    c is held bit-sliced (``_count_bits``).  For v = 1 … T, N(v) = popcount of the AND of the planes of v's set
    bits = #positions whose c contains v's bits (N(v) = 0 for v > T, since such a c ≥ v); each AND extends the one
    of v without its highest bit.  Möbius inversion over the subsets then gives
    hist[e, c] = Σ_{v ⊇ c, v ≤ T} (−1)^{|v| − |c|} N(v): T ANDs and T popcounts per word, whatever T."""
    digits = _digits(T)
    size = BLOCK // 8
    words, planes, carry = np.empty((T, size), np.uint64), np.empty((digits, size), np.uint64), np.empty(size, np.uint64)
    subsets = np.empty((T + 1, size), np.uint64)
    hits = np.zeros(T + 1, np.int64)
    for g in range(segments.shape[0]):
        e, start, stop = segments[g, 0], segments[g, 1], segments[g, 2]
        hits[:] = 0
        w0, w1 = start // 64, (stop + 63) // 64
        for s in range(w0, w1, size):
            n = min(size, w1 - s)
            for u in range(T):
                _load_words(flat, u * stride + 8 * s, n, words[u])
            if s == w0:
                head = _position_mask(start % 64, 64)
                for u in range(T):
                    words[u, 0] &= head
            if s + n == w1 and stop % 64:
                tail = _position_mask(0, stop % 64)
                for u in range(T):
                    words[u, n - 1] &= tail
            _count_bits(words, 0, n, planes, carry)
            for v in range(1, T + 1):
                high = _digits(v) - 1
                rest, plane, total = v ^ (1 << high), planes[high, :n], 0
                if rest == 0:  # v = 2^high: N(v) = popcount(plane)
                    below = plane
                elif rest & (rest - 1) == 0:
                    below = planes[_digits(rest) - 1, :n]
                else:
                    below = subsets[rest, :n]
                if v + (2 << high) <= T:  # v is the rest of a larger v': keep its AND
                    sub = subsets[v, :n]
                    for w in range(n):
                        sub[w] = below[w] & plane[w]
                        total += _popcount(sub[w])
                else:
                    for w in range(n):
                        total += _popcount(below[w] & plane[w])
                hits[v] += total
            _block_pairs(words, n, T, inter)
        for c in range(1, T + 1):
            total = 0
            for v in range(c, T + 1):
                if v & c == c:
                    total += -hits[v] if _popcount(np.uint64(v ^ c)) & 1 else hits[v]
            hist[e, c] += total
