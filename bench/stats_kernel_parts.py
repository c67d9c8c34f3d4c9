"""Where the mask statistics' kernel spends its time: one 32,768-word block of T = 20 random packed rows, one
thread, medians of 21: the whole ``kernels.agreement_histogram`` (one segment), its block copy alone, and copy +
the T(T+1)/2 pair AND-popcounts (the kernel's own helpers, from ``merging.kernels``); then how two threads scale
on it (each thread running the whole kernel on its own copy of the block: 2× the work).

    python bench/stats_kernel_parts.py
"""
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from numba import njit  # noqa: E402

from merging import kernels  # noqa: E402

T, W, size = 20, 32768, kernels.BLOCK // 8
rng = np.random.default_rng(0)
flat = rng.integers(0, 256, T * W * 8, dtype=np.uint8)
@njit(nogil=True)
def copy_blocks(flat, T, W, inter, pairs):
    """The kernel's block copy alone, or followed by its pair AND-popcounts (``pairs``)."""
    words = np.empty((T, size), np.uint64)
    for s in range(0, W, size):
        n = min(size, W - s)
        for u in range(T):
            kernels._load_words(flat, u * W * 8 + 8 * s, n, words[u])
        if pairs:
            kernels._block_pairs(words, n, T, inter)
        else:
            inter[0, 0] += words[0, 0] & np.uint64(1)  # a use of the copy, so it is not optimised away
def med(f, r=21):
    f(); ts = []
    for _ in range(r):
        a = time.perf_counter(); f(); ts.append(time.perf_counter() - a)
    return statistics.median(ts)
inter = np.zeros((T, T), np.int64); hist = np.zeros((1, T + 1), np.int64)
whole = np.array([[0, 0, W * 64]], np.int64)  # one segment: every bit of the rows
full = med(lambda: kernels.agreement_histogram(flat, W * 8, T, whole, hist, inter))
pairs = med(lambda: copy_blocks(flat, T, W, inter, True))
copy = med(lambda: copy_blocks(flat, T, W, inter, False))
print(f"T={T}, {W} words/row, 1 thread: full {full*1e6:.0f} µs, copy {copy*1e6:.0f}, copy+pairs {pairs*1e6:.0f} "
      f"→ pairs {(pairs-copy)*1e6:.0f} µs = {(pairs-copy)/(W*T*(T+1)/2)*1e9:.3f} ns per pair-word")


copies = [(flat.copy(), np.zeros((1, T + 1), np.int64), np.zeros((T, T), np.int64)) for _ in range(2)]


def twice() -> None:
    threads = [threading.Thread(target=kernels.agreement_histogram, args=(f, W * 8, T, whole, h, i))
               for f, h, i in copies]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


print(f"two threads, each the whole kernel: {med(twice) / full:.2f}× the time of one (2.00 = no parallel speed-up)")
