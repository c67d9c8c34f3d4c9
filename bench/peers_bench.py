"""mergescope side by side with its peers, FusionBench and mergekit, on the same random task vectors in one run:
each method's merge by ``merging.run_merge`` and by the peer's own code with matched hyperparameters, called
alternately (medians of --repeats, after one untimed call of both on a small space: ``warm_up``), and the largest
difference ``max |Δms − Δpeer| / max |Δpeer|``.

    python bench/peers_bench.py --peers-site /work/peers-site     # peers installed as bench/requirements-peers.txt
    python bench/peers_bench.py --peers-site /work/peers-site --blocks 2 --tasks 8 --methods ties iso_c

Inputs.  FusionBench rows: ViT-B/32's visual tower (``visual_index``), stem, head and the first --blocks residual
blocks (``first_blocks``), T random task vectors (``random_space``: N(0, 1e-3²) entries, the first 1 % exact zeros).
mergekit rows: a random Llama state dict with Hugging Face key names and shapes (``LlamaForCausalLM`` built on
the meta device; --llama-hidden, --llama-layers), the same kind of task vectors.  Peers get state dicts whose
tensors are views of the same stack (θt = θ0 + τt materialised once, outside the timing, where a peer wants
fine-tuned weights); mergescope gets the TaskVectorSpace built on that stack.  Every peer's stdout/stderr (its
prints and progress bars) is discarded.

What is called (the smallest wrapper around the peer's plain function):
* FusionBench 0.2.33 — ``TaskArithmeticAlgorithm(scaling_factor=0.3, inplace=False).run(pool)``, ``pool`` a dict
  {"_pretrained_": θ0, task: θt} of nn.Modules holding the state dicts (``as_module``; the plain function
  ``task_arithmetic_merge`` raises TypeError on any module with nn.Parameters in 0.2.33: it adds a
  ``state_dict(keep_vars=True)`` of Parameters to a dict of Tensors, which its ``state_dict_add`` rejects); ``ties_merging_utils.ties_merging(
  (T, P) τ, reset_thresh=20, merge_func="sum")`` × 0.3 (its config's defaults; ``TiesMergingAlgorithm.run``
  flattens sorted keys into that matrix, the order does not change a whole-model top-k); ``TSVM_utils.
  compute_and_sum_svd_mem_reduction(τ dicts, accelerator="cpu")``; ``iso_utils.iso_c`` / ``iso_cts(…, 0.8)``;
  ``wudi.wudi_merging(τ dicts, "cpu", iter_num=--wudi-iterations)``; ``emr_merging.utils.emr_merge(τ dicts)``;
  ``tall_mask.utils.generate_task_masks(τ, θt, θ0, tall_mask_lambda=0.6)`` (flat, with θt as its docstring asks).
* mergekit 0.1.5 — ``merge_methods.registry.get(name)(groups, parameters=…)``, one ``TensorGroup`` per tensor
  holding [θ0, θ1 … θT] with the base first: ``linear`` (θt only, weight 1, normalize), ``task_arithmetic``
  (weight λ = 0.3), ``ties`` (density = K/100 = 0.2, weight 1, normalize = dis-mean, λ = 1), ``dare_linear`` /
  ``dare_ties`` (density = 1 − p = 0.1, weight 0.3, rescale), ``della`` (density 0.3, ε 0.15);
  ``sparsify.sparsify`` for the kept fraction and rescale factor of one task vector.

Hyperparameter mapping: FusionBench ``scaling_factor`` = mergescope ``lam``, ``threshold`` = TIES ``k``,
``merge_func`` = ``merge``; TSV-M/Iso α = 1 both; WUDI ``keys = all_2d`` (FusionBench optimises every 2-D tensor and
averages the rest), lr 1e-5 both; mergescope's figure tables are off (``tables = False``).  mergekit ``density`` =
K/100 (TIES) or 1 − p (DARE), ``weight`` = λ with ``normalize = False`` (TA, DARE) or weight 1 and ``lambda`` = λ
with ``normalize = True`` (TIES dis-mean); ``dare_ties`` has no magnitude trim and sums (normalize False) →
mergescope ``dare`` with base ties, k = 100, merge sum.

Differences beyond float rounding, and why (read in both codes):
* mergekit ``ties``: its top-k is per tensor (``sparsify.magnitude``: argsort of |τ| within each tensor), mergescope's
  (and the TIES paper's, FusionBench's) over the whole model.  The note runs mergescope tensor by tensor (one space
  per tensor): then the only difference is the count kept — mergekit exactly int(density·n) entries, TIES (official
  code, FusionBench, mergescope) every |τ| ≥ the (n − ⌊n·K⌋)-th smallest, i.e. ⌊n·K⌋ + 1 entries, one more per task
  and tensor; the entries where that extra one enters the disjoint mean differ (at most T per tensor), the rest is
  rounding.  The election agrees (mergekit sign(Σ τ̂) with 0 → +1, mergescope 0 → the majority sign: only where
  no kept entry exists, which contributes nothing either way), and so does the disjoint mean.
* mergekit ``dare_*`` rescales each dropped tensor to its own L1 norm (``rescale=True``), mergescope by 1/(1 − p)
  (its ``rescale = l1`` matches the L1 norm over the whole task vector, not per tensor); masks are random in both
  (torch.bernoulli vs mergescope's Philox stream): the rows compare properties — kept fraction, the rescale
  factor, and the relative L2 error of the mean of --repeats seeded merges against λ Σt τt next to its expected
  value √(p / ((1 − p)·S) · Σt ‖τt‖²) / ‖Σt τt‖ for an unbiased 1/(1 − p) drop.
* mergekit ``linear`` / ``task_arithmetic`` start from θt and subtract θ0 (|θ0| ≈ 20·|τ|): a relative difference of
  a few 1e-6 is the rounding of θ0 + τt − θ0 in float32, not a different merge.
* FusionBench TALL masks compare |θ0 − θt| with λ|θ0 + τMTL − θt| in float32 θ, mergescope |τt| with λ|τMTL − τt|:
  entries within rounding of the boundary flip (the note counts them).
* mergekit ``della``: mergescope has no DELLA (rank-dependent keep probabilities); only the peer is timed.
Not callable: FusionBench Consensus (``construct_consensus_mask`` loads TALL masks from files named by a config),
FusionBench PCB (absent from 0.2.33).
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from merge_bench import random_space, visual_index  # noqa: E402
from svd_bench import first_blocks  # noqa: E402
from merging import TaskVectorSpace, run_merge  # noqa: E402
from merging.methods.dare import DroppedVectors  # noqa: E402
from merging.param_index import ParamEntry, ParamIndex  # noqa: E402

LAM, TIES_K, DARE_P, DELLA = 0.3, 20.0, 0.9, (0.3, 0.15)


class Inputs:
    """One space and the peers' views of it: θ0 and τt as state dicts (views of the stack), θt materialised."""

    def __init__(self, space: TaskVectorSpace):
        self.space, self.names = space, space.index.names()
        self.theta0 = self._dict(space.theta0)
        self.taus = [self._dict(space.stack[t]) for t in range(space.T)]
        self.finetuned = [self._dict(space.theta0 + space.stack[t]) for t in range(space.T)]

    def _dict(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        return {e.name: flat[e.offset:e.offset + e.numel].view(e.shape) for e in self.space.index.entries}

    def flat(self, state: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.cat([state[name].detach().reshape(-1) for name in self.names])

    def sum_tau(self) -> torch.Tensor:
        return self.space.stack.sum(0)


def as_module(state: dict[str, torch.Tensor]) -> nn.Module:
    """An nn.Module whose state_dict() is ``state`` (nested empty modules for the dotted prefixes)."""
    root = nn.Module()
    for name, tensor in state.items():
        *path, leaf = name.split(".")
        module = root
        for part in path:
            if not hasattr(module, part):
                module.add_module(part, nn.Module())
            module = getattr(module, part)
        module.register_parameter(leaf, nn.Parameter(tensor, requires_grad=False))
    return root


def quiet(fn: Callable) -> Callable:
    def call():
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            return fn()
    return call


def alternate(first: Callable, second: Callable, repeats: int):
    """Both called alternately ``repeats`` times: (median s, median s, outputs of every call of each)."""
    times, outs = ([], []), ([], [])
    for _ in range(repeats):
        for j, fn in enumerate((first, second)):
            start = time.perf_counter()
            outs[j].append(fn())
            times[j].append(time.perf_counter() - start)
    return statistics.median(times[0]), statistics.median(times[1]), outs


def rel_max(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@dataclass
class Row:
    method: str
    peer: str
    ms: Callable | None  # () → mergescope output
    peer_fn: Callable  # () → peer output
    compare: Callable  # (mergescope outputs, peer outputs) → (diff text, note)


# ---------- FusionBench ----------

def fusionbench_rows(inp: Inputs, args) -> list[Row]:
    tv = importlib.import_module("fusion_bench.method.task_arithmetic.task_arithmetic")
    ties = importlib.import_module("fusion_bench.method.ties_merging.ties_merging_utils")
    tsvm = importlib.import_module("fusion_bench.method.task_singular_vector.utils.TSVM_utils")
    iso = importlib.import_module("fusion_bench.method.isotropic_merging.iso_utils")
    wudi = importlib.import_module("fusion_bench.method.wudi.wudi")
    emr = importlib.import_module("fusion_bench.method.emr_merging.utils")
    tall = importlib.import_module("fusion_bench.method.tall_mask.utils")
    space, peer = inp.space, "FusionBench"
    pool = {"_pretrained_": as_module(inp.theta0), **{name: as_module(f) for name, f in
                                                      zip(space.task_names, inp.finetuned)}}

    def delta(ms, fb):
        return f"{rel_max(ms[-1].delta, fb[-1]):.1e}"

    def flat_delta(fn):
        return lambda: inp.flat(fn())

    rows = [
        Row("task_arithmetic (λ 0.3)", peer, lambda: run_merge(space, "task_arithmetic", {"lam": LAM}),
            lambda: inp.flat(tv.TaskArithmeticAlgorithm(scaling_factor=LAM, inplace=False).run(pool).state_dict())
            - space.theta0,
            lambda ms, fb: (delta(ms, fb), "peer from modules (θt − θ0)")),
        Row("ties (k 20, dis-sum, λ 0.3)", peer,
            lambda: run_merge(space, "ties", {"k": TIES_K, "merge": "sum", "lam": LAM}),
            lambda: ties.ties_merging(space.stack, reset_thresh=TIES_K, merge_func="sum") * LAM,
            lambda ms, fb: (delta(ms, fb), "whole-model top-k both")),
        Row("tsvm", peer, lambda: run_merge(space, "tsvm", {"tables": False}),
            flat_delta(lambda: tsvm.compute_and_sum_svd_mem_reduction(inp.taus, accelerator="cpu")),
            lambda ms, fb: (delta(ms, fb), "float32 SVD both")),
        Row("iso_c", peer, lambda: run_merge(space, "iso_c", {"tables": False}),
            flat_delta(lambda: iso.iso_c(inp.taus, accelerator="cpu")),
            lambda ms, fb: (delta(ms, fb), "")),
        Row("iso_cts (0.8)", peer, lambda: run_merge(space, "iso_cts", {"tables": False}),
            flat_delta(lambda: iso.iso_cts(inp.taus, 0.8, accelerator="cpu")),
            lambda ms, fb: (delta(ms, fb), "")),
        Row(f"wudi (all_2d, {args.wudi_iterations} Adam steps)", peer,
            lambda: run_merge(space, "wudi", {"keys": "all_2d", "iterations": args.wudi_iterations,
                                              "tables": False}),
            flat_delta(lambda: wudi.wudi_merging(inp.taus, "cpu", iter_num=args.wudi_iterations)),
            lambda ms, fb: (delta(ms, fb), "")),
        Row("emr", peer, lambda: run_merge(space, "emr"), lambda: emr.emr_merge(inp.taus),
            lambda ms, fb: (f"{rel_max(ms[-1].delta, inp.flat(fb[-1][0])):.1e}",
                            f"λt: {rel_max(torch.tensor(ms[-1].task_scales), fb[-1][2].double()):.1e}")),
        Row("tall masks (λ 0.6)", peer, lambda: run_merge(space, "tall", {"tall_lambda": 0.6}).masks["tall"].to_bool(),
            lambda: tall.generate_task_masks(space.stack, space.theta0 + space.stack, space.theta0,
                                             tall_mask_lambda=0.6),
            lambda ms, fb: (f"{float((ms[-1] != fb[-1]).float().mean()):.1e}",
                            f"diff = fraction of mask bits that differ; peer from θ; density "
                            f"{float(fb[-1].float().mean()):.3f}")),
    ]
    return [r for r in rows if any(r.method.startswith(m) for m in args.methods)]


# ---------- mergekit ----------

def llama_index(hidden: int, layers: int) -> ParamIndex:
    """The parameter layout of a Hugging Face LlamaForCausalLM, built on the meta device."""
    import transformers

    config = transformers.LlamaConfig(hidden_size=hidden, intermediate_size=hidden * 11 // 4,
                                      num_hidden_layers=layers, num_attention_heads=max(1, hidden // 64),
                                      num_key_value_heads=max(1, hidden // 256), vocab_size=16 * hidden,
                                      tie_word_embeddings=False)
    with torch.device("meta"):
        model = transformers.LlamaForCausalLM(config)
    return ParamIndex.from_state_dict(model.state_dict())


def per_tensor_space(space: TaskVectorSpace, entry: ParamEntry) -> TaskVectorSpace:
    """A space holding one tensor of ``space`` (its own contiguous copy)."""
    a, b = entry.offset, entry.offset + entry.numel
    index = ParamIndex([ParamEntry(entry.name, entry.shape, 0, entry.numel, entry.dtype, entry.layer, entry.kind)])
    return TaskVectorSpace(index, {"__order__": [entry.name]}, space.theta0[a:b].clone(),
                           space.stack[:, a:b].contiguous(), space.task_names)


def mergekit_rows(inp: Inputs, args) -> list[Row]:
    registry = importlib.import_module("mergekit.merge_methods.registry")
    base_mod = importlib.import_module("mergekit.merge_methods.base")
    sparsify = importlib.import_module("mergekit.sparsify")
    space, peer, T = inp.space, "mergekit", inp.space.T
    ids = range(1, T + 1)

    def groups(with_base: bool = True):
        return [base_mod.TensorGroup.from_tensors(
            ([inp.theta0[n]] if with_base else []) + [f[n] for f in inp.finetuned],
            base_index=0 if with_base else None, name=n) for n in inp.names]

    def merge(name: str, with_base: bool = True, **params):
        method = registry.get(name)
        params = {k: ({i: v for i in (ids if with_base else range(T))} if k in ("weight", "density", "epsilon")
                      else v) for k, v in params.items()}
        return lambda: torch.cat([o.reshape(-1) for o in method(groups(with_base), parameters=params)]) - space.theta0

    def delta(ms, mk):
        return f"{rel_max(ms[-1].delta, mk[-1]):.1e}"

    def per_tensor_ties(ms, mk):
        pieces = torch.cat([run_merge(per_tensor_space(space, e), "ties", {"k": TIES_K, "merge": "mean", "lam": 1.0})
                            .delta for e in space.index.entries])
        differ = int(torch.count_nonzero((pieces - mk[-1]).abs() > 1e-5 * mk[-1].abs().max()))
        return (delta(ms, mk), f"mergekit top-k per tensor; mergescope run per tensor: {rel_max(pieces, mk[-1]):.1e}, "
                f"at {differ} entries of {space.P:,} ({len(space.index)} tensors, T = {T}), else rounding")

    def dropped_properties(mk_rescale: bool):
        """Kept fraction and rescale factor of task 0 (mergescope's mask vs mergekit's sparsify)."""
        tau0, p = space.stack[0], DARE_P
        nonzero = tau0 != 0
        ms_tau = DroppedVectors(space, p, 0, "inverse").tau(0)
        mk_tau = torch.cat([sparsify.sparsify(inp.taus[0][n].clone(), density=1 - p,
                                              method=sparsify.SparsificationMethod.random,
                                              rescale_norm=sparsify.RescaleNorm.l1 if mk_rescale else None).reshape(-1)
                            for n in inp.names])

        def describe(t):
            kept = (t != 0) & nonzero
            ratio = t[kept] / tau0[kept]
            share = float(kept.sum() / nonzero.sum())
            return f"kept {share:.4f}, ×{float(ratio.min()):.3f}…{float(ratio.max()):.3f}"
        return f"ms {describe(ms_tau)}; mk {describe(mk_tau)}"

    def dare_linear_compare(ms, mk):
        target = LAM * inp.sum_tau()
        expected = (DARE_P / ((1 - DARE_P) * len(ms)) * float((space.stack ** 2).sum())) ** 0.5 / float(
            inp.sum_tau().norm())
        ms_mean = torch.stack([r.delta for r in ms]).mean(0)
        mk_mean = torch.stack(mk).mean(0)
        return ("random", f"{dropped_properties(True)}; rel. L2 of the {len(ms)}-seed mean vs λΣτ: "
                f"ms {rel_l2(ms_mean, target):.3f}, mk {rel_l2(mk_mean, target):.3f} (expected {expected:.3f})")

    def dare_ties_compare(ms, mk):
        ms_mean, mk_mean = torch.stack([r.delta for r in ms]).mean(0), torch.stack(mk).mean(0)
        return ("random", f"{dropped_properties(True)}; rel. L2 between the {len(ms)}-seed means "
                f"{rel_l2(ms_mean, mk_mean):.3f}, of ms seed 0 vs its mean {rel_l2(ms[0].delta, ms_mean):.3f}")

    def della_compare(ms, mk):
        density, eps = DELLA
        tau = inp.taus[0]
        kept = sum(int(torch.count_nonzero(sparsify.sparsify(tau[n].clone(), density=density, epsilon=eps,
                                                             method=sparsify.SparsificationMethod.della_magprune)))
                   for n in inp.names)
        return ("–", f"no mergescope DELLA; mergekit kept {kept / int(torch.count_nonzero(space.stack[0])):.4f} "
                f"(density {density})")

    seeds = iter(range(10 ** 6))
    rows = [
        Row("averaging", peer, lambda: run_merge(space, "averaging"),
            merge("linear", with_base=False, weight=1.0, normalize=True),
            lambda ms, mk: (delta(ms, mk), "mergekit linear from θt, normalize")),
        Row("task_arithmetic (λ 0.3)", peer, lambda: run_merge(space, "task_arithmetic", {"lam": LAM}),
            merge("task_arithmetic", weight=LAM),
            lambda ms, mk: (delta(ms, mk), "weight λ, normalize False")),
        Row("ties (k 20, dis-mean, λ 1)", peer,
            lambda: run_merge(space, "ties", {"k": TIES_K, "merge": "mean", "lam": 1.0}),
            merge("ties", weight=1.0, density=TIES_K / 100, normalize=True),
            per_tensor_ties),
        Row("dare (p 0.9, TA, λ 0.3)", peer,
            lambda: run_merge(space, "dare", {"p": DARE_P, "lam": LAM, "seed": next(seeds)}),
            merge("dare_linear", weight=LAM, density=1 - DARE_P), dare_linear_compare),
        Row("dare (p 0.9, TIES k 100 dis-sum, λ 0.3)", peer,
            lambda: run_merge(space, "dare", {"p": DARE_P, "lam": LAM, "base": "ties", "k": 100.0, "merge": "sum",
                                              "seed": next(seeds)}),
            merge("dare_ties", weight=LAM, density=1 - DARE_P), dare_ties_compare),
        Row("della (density 0.3, ε 0.15)", peer, None,
            merge("della", weight=1.0, density=DELLA[0], epsilon=DELLA[1]), della_compare),
    ]
    return [r for r in rows if any(r.method.startswith(m) for m in args.methods)]


def vit_space(args) -> TaskVectorSpace:
    """``random_space`` of the ViT's first blocks with its leading 1 % of exact zeros refilled, as svd_bench does:
    they make positional_embedding rank-deficient and alike in every task, where the SVD methods' orthogonal
    factors are not unique (Iso-C differed by 1.2 × max there, by 1e-6 once refilled)."""
    space = random_space(first_blocks(visual_index(args.model), args.blocks), args.tasks, torch.device("cpu"))
    space.stack[:, : space.P // 100].normal_(generator=torch.Generator().manual_seed(1)).mul_(1e-3)
    return space


def importable(package: str) -> str | None:
    """None, or why ``package`` cannot be imported."""
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            importlib.import_module(package)
    except Exception as error:  # noqa: BLE001 — any import failure means skip, with its reason
        return f"{type(error).__name__}: {error}"
    return None


def version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version as get

    try:
        return get(package)
    except PackageNotFoundError:
        return "?"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--peers-site", help="folder holding the peers (appended to sys.path); default: none")
    parser.add_argument("--model", default="ViT-B-32", help="open_clip visual tower of the FusionBench rows")
    parser.add_argument("--blocks", type=int, default=1, help="residual blocks kept (default 1)")
    parser.add_argument("--llama-hidden", type=int, default=512, help="hidden size of the mergekit rows' Llama")
    parser.add_argument("--llama-layers", type=int, default=2)
    parser.add_argument("--tasks", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3, help="alternating calls of each (DARE: seeds)")
    parser.add_argument("--wudi-iterations", type=int, default=3,
                        help="WUDI's Adam steps, both sides (official 300: about 100× the time of the default)")
    parser.add_argument("--methods", nargs="+", default=["averaging", "task_arithmetic", "ties", "tsvm", "iso_c",
                                                         "iso_cts", "wudi", "emr", "tall", "dare", "della"])
    args = parser.parse_args()
    if args.peers_site:
        sys.path.append(args.peers_site)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, medians of {args.repeats} alternating calls "
          "after a warm-up call of each on a small space")
    suites = []
    for package, dist, build in (("fusion_bench", "fusion_bench", lambda: Inputs(vit_space(args))),
                                 ("mergekit", "mergekit", lambda: Inputs(random_space(
                                     llama_index(args.llama_hidden, args.llama_layers), args.tasks,
                                     torch.device("cpu"))))):
        reason = importable(package)
        if reason:
            print(f"skipped: {package} not importable ({reason})", flush=True)
        else:
            suites.append((package, dist, build))
    print("| method | peer | P | T | mergescope s | peer s | speed-up | max abs diff / max abs peer | note |")
    print("|---|---|---|---|---|---|---|---|---|")
    for package, dist, build in suites:
        warm_up(package, args)
        inp = build()
        print(f"<!-- {package} {version(dist)}: {inp.space.P:,} parameters -->", flush=True)
        rows = rows_of(package)(inp, args)
        for row in rows:
            peer_fn = quiet(row.peer_fn)
            if row.ms is None:
                peer_s = statistics.median(_timed(peer_fn) for _ in range(args.repeats))
                ms_s, outs = None, ([], [peer_fn()])
            else:
                ms_s, peer_s, outs = alternate(row.ms, peer_fn, args.repeats)
            diff, note = row.compare(*outs)
            ms_text = f"{ms_s:.3f}" if ms_s is not None else "–"
            speed = f"{peer_s / ms_s:.1f}×" if ms_s is not None else "–"
            print(f"| {row.method} | {row.peer} {version(dist)} | {inp.space.P:,} | {inp.space.T} | {ms_text} | "
                  f"{peer_s:.3f} | {speed} | {diff} | {note} |", flush=True)
        del inp


def rows_of(package: str) -> Callable:
    return fusionbench_rows if package == "fusion_bench" else mergekit_rows


def warm_up(package: str, args) -> None:
    """One untimed call of both sides of every row on a small space (a 640 × 512 weight and its bias, over
    ``merging.select.SMALL`` so the top-k takes its compiled selection; --tasks tasks), so that no timed call pays
    a first use: the compile of ``merging.kernels`` (numba, about 5 s cold), thread pools, the peers' lazy imports."""
    index = ParamIndex.from_state_dict({"block.weight": torch.empty(640, 512), "block.bias": torch.empty(640)})
    inp = Inputs(random_space(index, args.tasks, torch.device("cpu")))
    for row in rows_of(package)(inp, args):
        if row.ms is not None:
            row.ms()
        quiet(row.peer_fn)()


def _timed(fn: Callable) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
