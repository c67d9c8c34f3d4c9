"""Validation-based λ selection: argmax with ties to the smallest λ, never test data."""
from __future__ import annotations

import math

import pytest

from ck_tiny_zoo import make_tiny_zoo
from merging import run_merge
from merging.evaluation import Evaluator, evaluate
from merging.selection import argmax_smallest, select
from merging.zoo import load_zoo


def test_argmax_smallest_constructed_cases():
    assert argmax_smallest([0.1, 0.2, 0.3], [0.5, 0.9, 0.7]) == 0.2
    assert argmax_smallest([0.3, 0.1, 0.2], [0.8, 0.5, 0.8]) == 0.2  # tie between 0.2 and 0.3 → smallest
    assert argmax_smallest([0.5, 0.4], [0.7, 0.7]) == 0.4
    assert argmax_smallest([0.1, 0.2], [math.nan, 0.1]) == 0.2  # NaN never wins
    assert argmax_smallest([0.1, 0.2], [math.nan, math.nan]) == 0.1
    with pytest.raises(ValueError):
        argmax_smallest([0.1], [])


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("selection_zoo")
    make_tiny_zoo(root)
    zoo = load_zoo(root)
    return zoo, zoo.build_space(device="cpu"), Evaluator(zoo, device="cpu")


def test_task_arithmetic_lambda_by_mean_normalized_validation_accuracy(setup):
    zoo, space, ev = setup
    grid = [0.6, 0.0, 0.3, 1.0]
    chosen = select(zoo, space, "task_arithmetic", grid=grid, evaluator=ev)
    finetuned = evaluate(zoo, zoo.finetuned_state, split="val", evaluator=ev).set_index("task")["accuracy"]
    scores = {}
    for lam in grid:  # the plain reference: evaluate θ0 + λ Στ on val, normalize, average over tasks
        table = evaluate(zoo, space.state_dict(lam * space.sum_tau()), split="val", evaluator=ev)
        ratios = [a / finetuned[t] for t, a in zip(table["task"], table["accuracy"]) if finetuned[t] > 0]
        scores[lam] = sum(ratios) / len(ratios)
    best = max(scores.values())
    assert chosen.params["lam"] == min(lam for lam, s in scores.items() if s == best)
    assert set(chosen.table["value"]) == set(grid) and set(chosen.table["split"]) == {"val"}
    assert chosen.result.params["lam"] == chosen.params["lam"]


def test_tall_lambda_per_task_by_validation_top1(setup):
    zoo, space, ev = setup
    grid = [0.2, 0.4, 0.6]
    chosen = select(zoo, space, "tall", grid=grid, evaluator=ev)
    expected = []
    for t, task in enumerate(space.task_names):
        accuracy = {}
        for lam in grid:
            result = run_merge(space, "tall", {"tall_lambda": lam})
            accuracy[lam] = evaluate(zoo, space.state_dict(result.task_delta(t)), [task], "val",
                                     evaluator=ev)["accuracy"][0]
        expected.append(min(lam for lam in grid if accuracy[lam] == max(accuracy.values())))
    assert chosen.params["tall_lambda"] == expected
    assert chosen.result.params["tall_lambda"] == expected


def test_selection_refuses_test_data(setup):
    zoo, space, ev = setup
    with pytest.raises(ValueError, match="validation"):
        select(zoo, space, "task_arithmetic", split="test", evaluator=ev)
    with pytest.raises(ValueError, match="no scaling coefficient"):
        select(zoo, space, "averaging", evaluator=ev)
