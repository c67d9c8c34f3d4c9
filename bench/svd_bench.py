"""SVD-family benchmark: TSV-M, Iso-C, Iso-CTS, CART and WUDI on ViT-sized random task vectors, each timed against
its plain reference (tests/svd_reference.py: one loop over keys, ``torch.linalg.svd`` per task matrix in float32,
zero-padded stacks, autograd WUDI) in the same run, with peak memory and the largest difference.  Markdown table,
medians over --repeats (the reference runs --reference-repeats times).

    python bench/svd_bench.py                                # ViT-B/32 visual (87,849,216 params), T = 8, CPU
    python bench/svd_bench.py --device cuda --tasks 8 14 20
    python bench/svd_bench.py --blocks 2 --wudi-iterations 10   # a slow CPU: 2 of 12 blocks, WUDI extrapolated

``--blocks N`` keeps the stem, the head and the first N residual blocks (the per-matrix work is the same in every
block, so ×12/N extrapolates).  WUDI's Adam loop costs the same per iteration: with ``--wudi-iterations i`` below
300 the engine and the reference are also timed at 0 iterations (setup and tables) and the table shows
t(0) + (t(i) − t(0)) · 300 / i, marked "extrapolated".  ``diff`` = max |Δ − Δref| / max |Δref|.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import svd_reference as ref  # noqa: E402
from merge_bench import _rss, measure, random_space, visual_index  # noqa: E402
from merging import run_merge  # noqa: E402
from merging.device import pick_device  # noqa: E402
from merging.methods.cart import official_defaults  # noqa: E402
from merging.param_index import ParamEntry, ParamIndex  # noqa: E402

F32 = torch.float32
METHODS = {  # method → reference(index, taus, T, iterations)
    "tsvm": lambda ix, taus, T, it: ref.tsvm(ix, taus, 1.0, F32),
    "iso_c": lambda ix, taus, T, it: ref.iso_c(ix, taus, 1.0, F32),
    "iso_cts": lambda ix, taus, T, it: ref.iso_cts(ix, taus, 1.0, 0.8, F32),
    "cart": lambda ix, taus, T, it: ref.cart(ix, taus, *official_defaults(T), F32),
    "wudi": lambda ix, taus, T, it: ref.wudi(ix, taus, it, 1e-5, "official", F32),
}
OFFICIAL_ITERATIONS = 300


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


def timed(fn, device, repeats):
    holder = {}

    def call():
        holder.pop("out", None)  # free the previous repeat's output before the next one
        holder["out"] = fn()
        return holder["out"]
    seconds, peak = measure(call, device, repeats)
    return seconds, peak, holder.pop("out")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["ViT-B-32"])
    parser.add_argument("--tasks", nargs="+", type=int, default=[8])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--blocks", type=int, help="keep only the first N residual blocks (default: all)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--reference-repeats", type=int, default=1)
    parser.add_argument("--wudi-iterations", type=int, default=OFFICIAL_ITERATIONS,
                        help="engine WUDI iterations actually run (extrapolated to 300 when fewer)")
    parser.add_argument("--reference-wudi-iterations", type=int, default=None,
                        help="reference WUDI iterations actually run (default: --wudi-iterations)")
    parser.add_argument("--no-reference", action="store_true", help="time the engine only")
    parser.add_argument("--no-tables", action="store_true", help="merge without the figures' tables")
    args = parser.parse_args()
    device = pick_device(args.device)
    ref_iterations = args.reference_wudi_iterations or args.wudi_iterations
    what = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} threads"
    print(f"device: {device} ({what}), torch {torch.__version__}")
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
                wudi = name == "wudi"

                def engine(iterations=args.wudi_iterations):
                    params = {"iterations": iterations} if wudi else {}
                    return run_merge(space, name, {**params, "tables": not args.no_tables}).delta

                def plain(iterations=ref_iterations):
                    return METHODS[name](space.index, space.stack, T, iterations)
                seconds, peak, fast = timed(engine, device, args.repeats)
                note = ""
                if wudi and args.wudi_iterations < OFFICIAL_ITERATIONS:
                    zero = timed(lambda: engine(0), device, 1)[0]
                    seconds = zero + (seconds - zero) * OFFICIAL_ITERATIONS / args.wudi_iterations
                    note = f" (extrapolated from {args.wudi_iterations} iterations)"
                row = f"| {model} | {blocks} | {space.P:,} | {T} | {name}{note} | {seconds:.1f} | "
                if args.no_reference:
                    print(row + f"– | – | {ratio(peak)} | – | – |", flush=True)
                    continue
                ref_seconds, ref_peak, slow = timed(plain, device, args.reference_repeats)
                if wudi and ref_iterations < OFFICIAL_ITERATIONS:
                    zero = timed(lambda: plain(0), device, 1)[0]
                    ref_seconds = zero + (ref_seconds - zero) * OFFICIAL_ITERATIONS / ref_iterations
                    row += f"{ref_seconds:.1f} (extrapolated from {ref_iterations}) | "
                else:
                    row += f"{ref_seconds:.1f} | "
                comparable = not wudi or args.wudi_iterations == ref_iterations
                diff = ((fast - slow).abs().max() / slow.abs().max()).item() if comparable else float("nan")
                print(row + f"{ref_seconds / seconds:.1f}× | {ratio(peak)} | {ratio(ref_peak)} | "
                      f"{'–' if diff != diff else f'{diff:.1e}'} |", flush=True)
                del fast, slow
            del space
            if device.type == "cuda":
                torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
