"""Benchmark of the 2025 methods — TSV-M, Iso-C, Iso-CTS, CART, WUDI (the SVD family), EMR-Merging and the LiNeS
modifier — on ViT-sized random task vectors, each against its plain reference in the same run: the engine and
the reference alternate call by call (so a change of machine load hits both), medians over --repeats, peak memory
and the largest difference.  References: tests/svd_reference.py (one loop over keys, ``torch.linalg.svd`` per
task matrix in float32, zero-padded stacks, autograd WUDI with ``torch.optim.Adam``, WUDI's exact minimiser by
``torch.linalg.lstsq`` on its normal equations in float64) and tests/reference.py
(EMR's per-tensor loop with dense masks; LiNeS per key with the official ``.abs().sum()`` α).

    python bench/svd_bench.py                                      # ViT-B/32 visual (87,849,216 params), T = 8
    python bench/svd_bench.py --blocks 1 --methods tsvm iso_c iso_cts cart wudi   # a slow CPU: 1 of 12 blocks
    python bench/svd_bench.py --device cuda                        # the GPU run (default device: cuda when present)
    python bench/svd_bench.py --methods wudi --engine-only --repeats 1   # WUDI's 300 steps on the whole model

``--blocks N`` keeps the stem, the head and the first N residual blocks (the per-matrix work is the same in every
block, so a whole model costs about ×12/N).  WUDI runs ``--wudi-iterations`` Adam steps (default 300, the
official count) in both the engine and the reference.  LiNeS (β = 0.5, multi-task α) is applied to a Task
Arithmetic merge at λ = 1 made before the timing.  ``diff`` = max |Δ − Δref| / max |Δref| (EMR: of τuni).
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import reference  # noqa: E402
import svd_reference as ref  # noqa: E402
from merge_bench import _lines, _rss, describe_device, measure, random_space, visual_index  # noqa: E402
from merging import run_merge  # noqa: E402
from merging.device import pick_device  # noqa: E402
from merging.methods.cart import official_defaults  # noqa: E402
from merging.param_index import ParamEntry, ParamIndex  # noqa: E402

F32 = torch.float32
OFFICIAL_ITERATIONS = 300
SVD_REFERENCES = {  # method → reference(space, args), float32 as the official codes
    "tsvm": lambda sp, a: ref.tsvm(sp.index, sp.stack, 1.0, F32),
    "iso_c": lambda sp, a: ref.iso_c(sp.index, sp.stack, 1.0, F32),
    "iso_cts": lambda sp, a: ref.iso_cts(sp.index, sp.stack, 1.0, 0.8, F32),
    "cart": lambda sp, a: ref.cart(sp.index, sp.stack, *official_defaults(sp.T), F32),
    "wudi": lambda sp, a: ref.wudi(sp.index, sp.stack, a.wudi_iterations, 1e-5, "official", F32),
    "wudi_exact": lambda sp, a: ref.wudi_exact(sp.index, sp.stack),
}


def _svd_case(name):
    def case(space, args):
        params = {"tables": not args.no_tables, **({"iterations": args.wudi_iterations} if name == "wudi" else {}),
                  **({"solver": "exact"} if name == "wudi_exact" else {})}
        return (lambda: run_merge(space, name.removesuffix("_exact"), params).delta,
                lambda: SVD_REFERENCES[name](space, args))
    return case


CASES = {  # name → (space, args) → (engine call, reference call), each returning the flat Δ
    **{name: _svd_case(name) for name in SVD_REFERENCES},
    "emr": lambda sp, a: (lambda: run_merge(sp, "emr").delta, lambda: reference.emr(sp.stack, sp.index)[0]),
    "lines": lambda sp, a: _lines(sp),
}


def first_blocks(index: ParamIndex, blocks: int | None) -> ParamIndex:
    """The stem, the head and residual blocks 0 … blocks − 1, re-laid out contiguously."""
    if blocks is None:
        return index
    keep = [e for e in index.entries if not e.layer.startswith("block") or int(e.layer[6:]) < blocks]
    entries, offset = [], 0
    for e in keep:
        entries.append(ParamEntry(e.name, e.shape, offset, e.numel, e.dtype, e.layer, e.kind))
        offset += e.numel
    return ParamIndex(entries)


def side_by_side(engine, plain, device, repeats):
    """Engine and reference called alternately, ``repeats`` times each, every output freed before the next call
    except the last engine output (kept for the diff; its bytes are not counted in the reference's peak):
    [(median seconds, peak bytes, last output)] for the engine and the reference (None without ``plain``)."""
    times, peaks, fast, slow = ([], []), [0, 0], None, None
    for i in range(repeats):
        for j, fn in enumerate((engine, plain) if plain is not None else (engine,)):
            if j == 0:
                fast = None
            held = fast.numel() * fast.element_size() if fast is not None else 0
            out = {}
            seconds, peak = measure(lambda: out.setdefault("delta", fn()), device, 1)
            times[j].append(seconds)
            peaks[j] = max(peaks[j], peak - held)
            if j == 0:
                fast = out.pop("delta")
            elif i == repeats - 1:
                slow = out.pop("delta")
            out.clear()
    return [(statistics.median(times[0]), peaks[0], fast),
            (statistics.median(times[1]), peaks[1], slow) if plain is not None else None]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["ViT-B-32"])
    parser.add_argument("--tasks", nargs="+", type=int, default=[8])
    parser.add_argument("--methods", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--device", default="auto", help="auto (cuda when present), cpu or cuda")
    parser.add_argument("--blocks", type=int, help="keep only the first N residual blocks (default: all)")
    parser.add_argument("--repeats", type=int, default=3, help="calls of the engine and of the reference each")
    parser.add_argument("--wudi-iterations", type=int, default=OFFICIAL_ITERATIONS,
                        help="WUDI's Adam steps, in the engine and in the reference")
    parser.add_argument("--no-tables", action="store_true", help="merge without the figures' tables")
    parser.add_argument("--engine-only", action="store_true",
                        help="time the engine alone (e.g. WUDI's 300 steps on the whole model, whose reference "
                             "would take hours on a CPU)")
    args = parser.parse_args()
    device = pick_device(args.device)
    print(f"device: {device} ({describe_device(device)}), torch {torch.__version__}, medians of {args.repeats} alternating calls")
    print("| model | blocks | P | T | method | engine s | reference s | speed-up | engine peak / stack | "
          "reference peak / stack | diff |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for model in args.models:
        full = visual_index(model)
        index = first_blocks(full, args.blocks)
        total_blocks = len({e.layer for e in full.entries if e.layer.startswith("block")})
        blocks = f"{args.blocks if args.blocks is not None else total_blocks} of {total_blocks}"
        for T in args.tasks:
            space = random_space(index, T, device)
            # merge_bench zeroes the first 1 % of P (exact zeros, for the sparsifying methods); here that would
            # make positional_embedding rank-deficient and the same for every task, where TSV-M's and Iso's
            # orthogonalisation is not unique (real task vectors have no such shared null space): refill it
            space.stack[:, : space.P // 100].normal_(generator=torch.Generator(device).manual_seed(1)).mul_(1e-3)
            stack_bytes = space.stack.numel() * 4
            base = torch.cuda.memory_allocated() if device.type == "cuda" else _rss("VmRSS")

            def ratio(peak):
                return f"{(stack_bytes + peak - base) / stack_bytes:.2f}"

            for name in args.methods:
                engine, plain = CASES[name](space, args)
                (fast_s, fast_peak, fast), reference = side_by_side(engine, None if args.engine_only else plain,
                                                                    device, args.repeats)
                label = f"{name} ({args.wudi_iterations} Adam steps)" if name == "wudi" else name
                columns = ["—"] * 4
                if reference is not None:
                    ref_s, ref_peak, slow = reference
                    diff = ((fast - slow.to(fast.dtype)).abs().max() / slow.abs().max()).item()
                    columns = [f"{ref_s:.2f}", f"{ref_s / fast_s:.1f}×", ratio(ref_peak), f"{diff:.1e}"]
                print(f"| {model} | {blocks} | {space.P:,} | {T} | {label} | {fast_s:.2f} | {columns[0]} | "
                      f"{columns[1]} | {ratio(fast_peak)} | {columns[2]} | {columns[3]} |", flush=True)
                del fast, reference, engine, plain
            del space
            if device.type == "cuda":
                torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
