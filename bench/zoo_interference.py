"""Pairwise task interference of a zoo: how much adding one other task vector costs each task.

A[t, s] = accuracy on task t of θ0 + τt + τs (s ≠ t), A[t, t] = accuracy of θ0 + τt (the fine-tuned model), on the
val split; the row "drop" is A[t, t] − mean_s≠t A[t, s].  Ilharco et al. (2023, §4: adding pairs of task vectors)
report that pairs of ViT task vectors keep ≈ 98 % of both tasks' accuracy; a zoo whose pairs already lose many
points cannot show Task Arithmetic gaining much at T = 8.  Also prints each task's accuracy at λ·τt alone (the
gain Task Arithmetic can at most keep at that λ).

    python bench/zoo_interference.py                       # the demo zoo
    python bench/zoo_interference.py --zoo path/to/zoo --split test
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from merging.evaluation import Evaluator  # noqa: E402
from merging.zoo import load_zoo  # noqa: E402

LAMBDAS = (0.1, 0.2, 0.3, 0.5, 1.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--zoo", default=str(Path(__file__).resolve().parents[1] / "assets" / "demo-zoo"))
    parser.add_argument("--split", default="val", choices=("val", "test"))
    parser.add_argument("--device", default="auto")
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


if __name__ == "__main__":
    main()
