"""Pairwise task interference of a zoo: how much adding one other task vector costs each task.

A[t, s] = accuracy on task t of θ0 + τt + τs (s ≠ t), A[t, t] = accuracy of θ0 + τt (the fine-tuned model), on the
val split; the row "drop" is A[t, t] − mean_s≠t A[t, s].  Ilharco et al. (2023, §4: adding pairs of task vectors)
report that pairs of ViT task vectors keep ≈ 98 % of both tasks' accuracy; a zoo whose pairs already lose many
points cannot show Task Arithmetic gaining much at T = 8.  Also prints each task's accuracy at λ·τt alone (the
gain Task Arithmetic can at most keep at that λ).  With ``--by-layer``, where the drop comes from: for every block,
and every tensor outside the blocks, the mean over pairs of A[t, t] − accuracy of θ0 + τt + τs restricted to that
group (a drop far larger for one group than the others names the weights the tasks fight over; on a zoo whose
tasks each need their own pixel statistics it is the patch embedding ``conv1``).  With ``--features``, weight
disentanglement at the level of the image features (Ortiz-Jimenez et al., 2023, "Task arithmetic in the tangent
space"): D[t, s] = mean over task t's images of ‖f(θ0 + τs)(x) − f(θ0)(x)‖ ÷ the same for τt (f: unit-norm
image features); entries near 0 off the diagonal mean τs leaves task t's inputs alone, as ViT task vectors
largely do, entries near 1 that every task vector rewrites every task's features.  With ``--trim K``, each
task's accuracy at θ0 + (its τt's top K % by magnitude, TIES's trim) against θ0 + τt, the kurtosis of τt, the
share of ‖τt‖² its top K % holds, and how many tasks keep each parameter (against independent top-K % sets).
With ``--decompose METHOD [k=v …]`` (repeatable), each task's share of that merge's δ: its own coefficient
ct = ⟨δ, τt⟩ / ‖τt‖² (Task Arithmetic at λ: λ plus the cross terms), the interference ‖δ − ct τt‖ the other
tasks add, task t's accuracy at θ0 + the same merge of the other T − 1 tasks (what they cost it) and at θ0 + δ
(what adding task t to them gains back).

    python bench/zoo_interference.py                       # the demo zoo
    python bench/zoo_interference.py --zoo path/to/zoo --split test --by-layer --features
    python bench/zoo_interference.py --decompose task_arithmetic lam=0.3 --decompose ties lam=0.8
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from merging.evaluation import Evaluator  # noqa: E402
from merging.params import parse_assignments  # noqa: E402
from merging.registry import run_merge  # noqa: E402
from merging.zoo import load_zoo  # noqa: E402

LAMBDAS = (0.1, 0.2, 0.3, 0.5, 1.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--zoo", default=str(Path(__file__).resolve().parents[1] / "assets" / "demo-zoo"))
    parser.add_argument("--split", default="val", choices=("val", "test"))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--by-layer", action="store_true", help="also split the drop by block / tensor")
    parser.add_argument("--features", action="store_true", help="also the feature-level disentanglement matrix")
    parser.add_argument("--trim", type=float, metavar="K", help="also each task at θ0 + top K %% of its τt")
    parser.add_argument("--decompose", nargs="+", action="append", default=[], metavar="METHOD [k=v]",
                        help="also each task's own coefficient and interference in that merge (repeatable)")
    args = parser.parse_args()

    zoo = load_zoo(args.zoo)
    evaluator, space = Evaluator(zoo, device=args.device), zoo.build_space(device=args.device)
    names = list(zoo.task_names)

    def accuracy(t: int, delta) -> float:
        evaluator.load_flat(space, delta)
        correct, n = evaluator.accuracy(names[t], args.split)
        return 100 * correct / n

    pairs = np.array([[accuracy(t, space.tau(t) + space.tau(s) if s != t else space.tau(t))
                       for s in range(len(names))] for t in range(len(names))])
    drop = np.diag(pairs) - (pairs.sum(1) - np.diag(pairs)) / (len(names) - 1)
    corner = "task / + τs"
    width = max(len(corner), *map(len, names))
    print(f"{corner:>{width}} " + " ".join(f"{n[:8]:>8}" for n in names) + "     drop")
    for t, name in enumerate(names):
        print(f"{name:>{width}} " + " ".join(f"{v:8.1f}" for v in pairs[t]) + f" {drop[t]:8.1f}")
    print(f"mean drop from adding one other task vector: {drop.mean():.1f} points")
    for lam in LAMBDAS:
        alone = np.mean([accuracy(t, lam * space.tau(t)) for t in range(len(names))])
        print(f"θ0 + {lam}·τt on its own task: {alone:.1f} %")
    if args.by_layer:
        by_group(space, names, np.diag(pairs), accuracy)
    if args.features:
        feature_moves(evaluator, space, names, args.split)
    if args.trim is not None:
        trimmed(space, names, np.diag(pairs), accuracy, args.trim)
    for method, *assignments in args.decompose:
        decompose(space, names, accuracy, method, parse_assignments(assignments, "--decompose"))


def by_group(space, names, alone, accuracy) -> None:
    """Mean drop when only one group of the other task's vector is added (blocks whole, other tensors alone)."""
    groups: dict[str, list] = {}
    for entry in space.index.entries:
        groups.setdefault(entry.layer if entry.layer.startswith("block") else entry.name, []).append(entry.slice)
    print(f"{'group':>28} {'mean drop':>10} {'rms ‖τ‖':>8}")
    for group, slices in groups.items():
        drops = []
        for t in range(len(names)):
            for s in range(len(names)):
                if s != t:
                    delta = space.tau(t).clone()
                    for part in slices:
                        delta[part] += space.tau(s)[part]
                    drops.append(alone[t] - accuracy(t, delta))
        norm = np.sqrt(np.mean([sum(float(space.tau(t)[part].square().sum()) for part in slices)
                                for t in range(len(names))]))
        print(f"{group:>28} {np.mean(drops):10.1f} {norm:8.3f}")


def trimmed(space, names, alone, accuracy, k: float) -> None:
    """Each task at θ0 + top-k % of its own τt (by |τt|, as TIES trims) against θ0 + τt and θ0; the share of ‖τt‖²
    the top k % holds (a Gaussian's top 20 %: 0.65); how many tasks keep each parameter, against independent draws."""
    from math import comb

    from merging.select import top_fraction_threshold

    rows, keeps = [], torch.zeros(space.P, dtype=torch.int64)
    for t, name in enumerate(names):
        tau = space.tau(t)
        keep = tau.abs() >= top_fraction_threshold(tau, k)
        kept = torch.where(keep, tau, torch.zeros_like(tau))
        keeps += keep
        x = (tau - tau.mean()) / tau.std()
        rows.append((accuracy(t, None), alone[t], accuracy(t, kept), float(x.pow(4).mean()),
                     float(kept.double().square().sum() / tau.double().square().sum())))
        print(f"{name:>12}  θ0 {rows[-1][0]:5.1f}  θ0 + τt {rows[-1][1]:5.1f}  θ0 + top {k:g} % {rows[-1][2]:5.1f}  "
              f"kurtosis {rows[-1][3]:.1f}  energy share {rows[-1][4]:.2f}")
    pre, full, top, _, _ = np.array(rows).T
    print(f"mean: θ0 {pre.mean():.1f}, θ0 + τt {full.mean():.1f}, θ0 + top {k:g} % {top.mean():.1f} — keeps "
          f"{100 * (top.mean() - pre.mean()) / (full.mean() - pre.mean()):.0f} % of the fine-tuning gain")
    T, q = len(names), k / 100
    found = torch.bincount(keeps, minlength=T + 1).double() / space.P
    print(f"share of parameters kept by c tasks (independent top-{k:g} % sets in brackets): " + ", ".join(
        f"{c}: {found[c]:.3f} ({comb(T, c) * q ** c * (1 - q) ** (T - c):.3f})" for c in range(T + 1)))


def decompose(space, names, accuracy, method: str, params: dict) -> None:
    """Per task t of ``method``'s merge δ: ct = ⟨δ, τt⟩ / ‖τt‖², ‖δ − ct τt‖, and the accuracy of θ0 + the same
    merge without task t (against θ0 and θ0 + δ)."""
    delta = run_merge(space, method, params).delta
    exact = delta.double()
    print(f"{method} {params}: ‖δ‖ {float(delta.norm()):.2f}")
    print(f"{'task':>12} {'‖τt‖':>6} {'ct':>6} {'‖δ − ct τt‖':>12} {'θ0':>6} {'θ0 + others':>12} {'θ0 + δ':>7}")
    rows = []
    for t, name in enumerate(names):
        tau = space.tau(t).double()
        own = float(exact @ tau / (tau @ tau))
        others = space.subset([n for n in names if n != name])
        rows.append((own, float((exact - own * tau).norm()), accuracy(t, None),
                     accuracy(t, run_merge(others, method, params).delta), accuracy(t, delta)))
        print(f"{name:>12} {float(tau.norm()):6.2f} {rows[-1][0]:6.2f} {rows[-1][1]:12.2f} {rows[-1][2]:6.1f} "
              f"{rows[-1][3]:12.1f} {rows[-1][4]:7.1f}")
    own, rest, pre, cost, merged = np.array(rows).T
    print(f"mean: ct {own.mean():.2f}, interference {rest.mean():.2f}; the other tasks' merge costs "
          f"{(pre - cost).mean():.1f} points, adding task t to it gains {(merged - cost).mean():.1f}, merged "
          f"{merged.mean():.1f}")


def feature_moves(evaluator, space, names, split) -> None:
    """D[t, s]: how far τs moves task t's unit image features, relative to τt (see the module docstring)."""
    images = {t: [x for x, _ in evaluator.batches(t, split)] for t in names}

    @torch.inference_mode()
    def features(delta) -> dict[str, torch.Tensor]:
        evaluator.load_flat(space, delta)
        return {t: torch.cat([torch.nn.functional.normalize(evaluator.encoder(x.to(evaluator.device)).float(), dim=-1)
                              for x in batches]) for t, batches in images.items()}

    base = features(None)
    moved = [features(space.tau(s)) for s in range(len(names))]
    D = np.array([[float((moved[s][t] - base[t]).norm(dim=-1).mean() / (moved[i][t] - base[t]).norm(dim=-1).mean())
                   for s in range(len(names))] for i, t in enumerate(names)])
    corner = "images / τs"
    width = max(len(corner), *map(len, names))
    print(f"{corner:>{width}} " + " ".join(f"{n[:8]:>8}" for n in names))
    for t, name in enumerate(names):
        print(f"{name:>{width}} " + " ".join(f"{v:8.2f}" for v in D[t]))
    print(f"mean off-diagonal feature move (1 = as far as the task's own vector): "
          f"{(D.sum() - np.trace(D)) / (len(names) * (len(names) - 1)):.2f}")


if __name__ == "__main__":
    main()
