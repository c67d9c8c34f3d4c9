"""EMR-Merging and the LiNeS modifier on ViT-sized random task vectors, each timed against its plain reference
(tests/reference.py: ``emr`` — the official per-tensor loop with dense (T, P) masks —, ``lines``) in the same run,
with peak memory; medians over --repeats.  Same table as bench/merge_bench.py (whose helpers it uses).

    python bench/emr_lines_bench.py                    # ViT-B/32 visual, T = 8
    python bench/emr_lines_bench.py --tasks 8 20 --device cuda

LiNeS is timed alone (α from the norms included): applied to a Task Arithmetic merge (λ = 1) in multi-task mode
(β = 0.5).
"""
from __future__ import annotations

import argparse

import torch

from merge_bench import _rss, measure, random_space, ref, visual_index
from merging import get_modifier, run_merge
from merging.device import pick_device
from merging.registry import resolve_modifiers


def official_alpha(taus, merged) -> float:
    """The LiNeS code's multi-task α: ‖Σt τt‖₁ / ‖τm‖₁ / T with .abs().sum()."""
    return float(taus.sum(0).abs().sum() / merged.abs().sum()) / taus.shape[0]


def cases(space):
    """name → (engine call, reference call)."""
    ta = run_merge(space, "task_arithmetic", {"lam": 1.0})
    lines = get_modifier("lines")
    (_, params), = resolve_modifiers([(lines, {"beta": 0.5})], space.T)
    return {
        "emr": (lambda: run_merge(space, "emr"), lambda: ref.emr(space.stack, space.index)),
        "lines": (lambda: lines.apply(space, ta, params),
                  lambda: ref.lines(ta.delta, space.index, official_alpha(space.stack, ta.delta), 0.5)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["ViT-B-32"])
    parser.add_argument("--tasks", nargs="+", type=int, default=[8])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--reference-repeats", type=int, default=1)
    args = parser.parse_args()
    device = pick_device(args.device)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} threads"
    print(f"device: {device} ({where}), torch {torch.__version__}")
    print("| model | T | method | engine s | reference s | speed-up | engine peak / stack | reference peak / stack |")
    print("|---|---|---|---|---|---|---|---|")
    for model in args.models:
        index = visual_index(model)
        for T in args.tasks:
            space = random_space(index, T, device)
            stack_bytes = space.stack.numel() * 4
            calls = cases(space)
            base = torch.cuda.memory_allocated() if device.type == "cuda" else _rss("VmRSS")
            for name, (fast, plain) in calls.items():
                fast()  # warm-up
                seconds, peak = measure(fast, device, args.repeats)
                ref_seconds, ref_peak = measure(plain, device, args.reference_repeats)
                print(f"| {model} | {T} | {name} | {seconds:.3f} | {ref_seconds:.3f} | {ref_seconds / seconds:.1f}× | "
                      f"{(stack_bytes + peak - base) / stack_bytes:.2f} | "
                      f"{(stack_bytes + ref_peak - base) / stack_bytes:.2f} |", flush=True)
            del space, calls
            if device.type == "cuda":
                torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
