"""Merge-engine benchmark: every training-free method and the mask statistics on ViT-sized random task vectors,
each timed against the plain reference implementation (tests/reference.py: kthvalue-based TIES etc.) in the same
run, with peak memory.  Prints a markdown table; medians over --repeats.

    python bench/merge_bench.py                       # ViT-B/32 visual (87,849,216 params), T = 8 and 20
    python bench/merge_bench.py --models ViT-L-14 --tasks 8 --device cuda
    python bench/merge_bench.py --tasks 8 --methods emr lines

LiNeS is timed alone (its α from the norms included), applied to a Task Arithmetic merge (λ = 1), β = 0.5.

Each row also gives the engine's time as a multiple of F, one read of the (T, P) float32 stack (torch.sum,
median), and of the method's own floor: the fewest full reads of the stack it needs × F (TA and averaging 1,
TALL, Consensus and EMR 2, TIES 3, PCB 4 plus one exp and one tanh of every entry (timed in the same run, chunked
into one reused buffer), DARE 1 plus its draws (one uint32 per entry from its default Philox stream, compared and
packed: `philox_keep_packed` for every task, timed in the same run), LiNeS 1 (Σt τt for its α); mask statistics
read only the packed masks: one read of their bytes as 64-bit words, torch.sum, timed the same way).

CPU peak memory is the process's peak resident set (VmHWM, reset before each call); on CUDA it is
torch.cuda.max_memory_allocated.  Both are reported as a multiple of the (T, P) stack's size.
"""
from __future__ import annotations

import argparse
import re
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import reference as ref  # noqa: E402
from merging import TaskVectorSpace, get_modifier, run_merge  # noqa: E402
from merging.chunks import map_ranges  # noqa: E402
from merging.device import pick_device  # noqa: E402
from merging.maskstats import mask_statistics  # noqa: E402
from merging.methods.dare import philox_keep_packed  # noqa: E402
from merging.param_index import ParamIndex  # noqa: E402

FLOOR_READS = {"averaging": 1, "task_arithmetic": 1, "ties": 3, "dare": 1, "tall": 2, "consensus": 2, "pcb": 4,
               "emr": 2, "lines": 1}
METHODS = {  # method → (params, reference(theta0, taus, T))
    "averaging": ({}, lambda th, taus, T: th + taus.sum(0) / T),
    "task_arithmetic": ({}, lambda th, taus, T: ref.ta(th, taus, 0.3)),
    "ties": ({}, lambda th, taus, T: ref.ties(th, taus, 20, "mean", 1.0)),
    "dare": ({"p": 0.9}, lambda th, taus, T: th + 0.3 * sum(ref.dare_dropped(tau.cpu(), t, 0.9, 0, "inverse")
                                                            .to(th.device) for t, tau in enumerate(taus))),
    "tall": ({}, lambda th, taus, T: ref.tall_masks(taus, taus.sum(0), [0.6] * T)),
    "consensus": ({}, lambda th, taus, T: ref.consensus(th, taus, 2, 0.3, [0.6] * T)),
    "pcb": ({}, lambda th, taus, T: ref.pcb(th, taus, 0.05, 0.01, [1.2] * T)[0]),
}


def _official_alpha(taus, merged) -> float:
    """The LiNeS code's multi-task α: ‖Σt τt‖₁ / ‖τm‖₁ / T with .abs().sum()."""
    return float(taus.sum(0).abs().sum() / merged.abs().sum()) / taus.shape[0]


def _lines(space):
    ta, lines = run_merge(space, "task_arithmetic", {"lam": 1.0}), get_modifier("lines")
    params = {**lines.defaults(), "beta": 0.5}
    return (lambda: lines.apply(space, ta, params),
            lambda: ref.lines(ta.delta, space.index, _official_alpha(space.stack, ta.delta), 0.5))


SPACE_CASES = {  # name → space → (engine call, reference call), for references that need the index
    "emr": lambda space: (lambda: run_merge(space, "emr"), lambda: ref.emr(space.stack, space.index)),
    "lines": _lines,
}


def visual_index(model: str) -> ParamIndex:
    """The parameter layout of an open_clip visual tower, built on the meta device (no memory)."""
    import open_clip
    from open_clip.model import _build_vision_tower

    cfg = open_clip.get_model_config(model)
    with torch.device("meta"):
        tower = _build_vision_tower(cfg["embed_dim"], cfg["vision_cfg"])
    return ParamIndex.from_state_dict(tower.state_dict())


def random_space(index: ParamIndex, T: int, device: torch.device) -> TaskVectorSpace:
    g = torch.Generator(device=device).manual_seed(0)
    theta0 = torch.randn(index.numel, generator=g, device=device) * 0.02
    stack = torch.empty((T, index.numel), device=device)
    for t in range(T):  # heavy-tailed, like real task vectors, with some exact zeros
        stack[t].normal_(generator=g).mul_(1e-3)
        stack[t, : index.numel // 100] = 0.0
    return TaskVectorSpace(index, {"__order__": index.names()}, theta0, stack, [f"task{t}" for t in range(T)])


def exp_tanh(taus: torch.Tensor) -> None:
    """One torch.exp and one torch.tanh of every entry of the stack (PCB's transcendental floor)."""
    out = torch.empty(taus.shape[1], device=taus.device)
    for tau in taus:
        map_ranges(tau.numel(), lambda a, b: (torch.exp(tau[a:b], out=out[a:b]), torch.tanh(tau[a:b], out=out[a:b])),
                   taus.device)


def _rss_peak_reset() -> None:
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")


def _rss(field: str) -> int:
    text = open("/proc/self/status").read()
    return int(re.search(rf"{field}:\s+(\d+)", text).group(1)) * 1024


def measure(fn, device: torch.device, repeats: int):
    """(median seconds, peak bytes in use during the call)."""
    times, peak = [], 0
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        else:
            _rss_peak_reset()
        start = time.perf_counter()
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
        del out
        peak = max(peak, torch.cuda.max_memory_allocated() if device.type == "cuda" else _rss("VmHWM"))
    return statistics.median(times), peak


def describe_device(device: torch.device) -> str:
    """The GPU's name, or how many CPU threads torch uses."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} threads"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["ViT-B-32"])
    parser.add_argument("--tasks", nargs="+", type=int, default=[8, 20])
    parser.add_argument("--methods", nargs="+", default=list(METHODS) + list(SPACE_CASES) + ["stats"])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--reference-repeats", type=int, default=1)
    parser.add_argument("--no-reference", action="store_true", help="time the engine only")
    args = parser.parse_args()
    device = pick_device(args.device)
    print(f"device: {device} ({describe_device(device)}), torch {torch.__version__}")
    print("| model | T | method | engine s | ÷ F | ÷ own floor | reference s | speed-up | engine peak / stack | "
          "reference peak / stack |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for model in args.models:
        index = visual_index(model)
        for T in args.tasks:
            space = random_space(index, T, device)
            stack_bytes = space.stack.numel() * 4
            taus = space.stack
            base = torch.cuda.memory_allocated() if device.type == "cuda" else _rss("VmRSS")
            one_read = measure(lambda: torch.sum(taus), device, 5)[0]
            print(f"F (one read of the {T} × {space.P:,} stack) = {one_read:.4f} s", flush=True)
            for name in args.methods:
                if name == "stats":
                    masks = run_merge(space, "tall").masks["tall"]
                    fast = lambda: mask_statistics(masks, space.index)  # noqa: E731
                    plain = lambda: ref.mask_stats(masks.to_bool())  # noqa: E731
                    words = masks.packed.reshape(-1)[: masks.packed.numel() // 8 * 8].view(torch.int64)
                    floor = measure(lambda: torch.sum(words), device, 5)[0]
                elif name in SPACE_CASES:
                    fast, plain = SPACE_CASES[name](space)
                    floor = FLOOR_READS[name] * one_read
                else:
                    params, reference = METHODS[name]
                    fast = lambda: run_merge(space, name, params)  # noqa: E731
                    plain = lambda: reference(space.theta0, taus, T)  # noqa: E731
                    floor = FLOOR_READS[name] * one_read
                    if name == "pcb":
                        floor += measure(lambda: exp_tanh(taus), device, 3)[0]
                    if name == "dare":  # the draws are made on the CPU on every device
                        floor += measure(lambda: [philox_keep_packed(space.P, params["p"], 0, t) for t in range(T)],
                                         torch.device("cpu"), 3)[0]
                fast()  # warm-up (workspace, allocator, thread pool)
                seconds, peak = measure(fast, device, args.repeats)
                row = f"| {model} | {T} | {name} | {seconds:.3f} | {seconds / one_read:.1f} | {seconds / floor:.1f} | "
                if args.no_reference:
                    row += "– | – | " + f"{(stack_bytes + peak - base) / stack_bytes:.2f} | – |"
                else:
                    ref_seconds, ref_peak = measure(plain, device, args.reference_repeats)
                    row += (f"{ref_seconds:.3f} | {ref_seconds / seconds:.1f}× | "
                            f"{(stack_bytes + peak - base) / stack_bytes:.2f} | "
                            f"{(stack_bytes + ref_peak - base) / stack_bytes:.2f} |")
                print(row, flush=True)
            del space, taus
            if device.type == "cuda":
                torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
