"""The Guide's findings: sentences built from the numbers a step measured (hand-made tables)."""
import pandas as pd
import pytest

from dashboard import guide


def _accuracy(pre, ind, merged, model="merged"):
    rows = []
    for task, (p, i, m) in enumerate(zip(pre, ind, merged)):
        rows += [{"task": f"t{task}", "model": "pretrained", "accuracy": p},
                 {"task": f"t{task}", "model": "individual", "accuracy": i},
                 {"task": f"t{task}", "model": model, "accuracy": m}]
    return pd.DataFrame(rows)


def test_task_arithmetic_finding_quotes_the_gaps():
    text, headline = guide.finding(0, _accuracy([0.4, 0.6], [0.9, 1.0], [0.7, 0.8]), {})
    assert headline == pytest.approx(75.0)
    assert "**75.0 %**" in text and "+25.0 points vs the pretrained model (50.0 %)" in text
    assert "-20.0 vs the individual fine-tunes (95.0 %)" in text
    assert "on average 79 % of each task's fine-tuned accuracy" in text
    text, _ = guide.finding(0, _accuracy([0.4, 0.4], [0.5, 1.0], [0.5, 0.5]), {})
    assert "on average 75 % of each task's" in text  # the mean of 0.5/0.5 and 0.5/1.0, not 0.5/0.75 = 67 %
    assert "Below the pretrained" not in text
    text, _ = guide.finding(0, _accuracy([0.4, 0.9], [0.9, 1.0], [0.7, 0.8]), {})
    assert "Below the pretrained model on t1: there merging lost." in text


def test_ties_finding_compares_with_step_one_and_counts_conflicts():
    conflicts = pd.DataFrame({"layer": ["a", "b"], "numel": [100, 300], "sign_conflicts": [10, 30]})
    text, _ = guide.finding(1, _accuracy([0.5], [1.0], [0.8]), {"sign_conflicts": conflicts}, found={"1": 75.0})
    assert "(+5.0 points vs Task Arithmetic of step 1)" in text and "10.0 % of all weights" in text
    text, _ = guide.finding(1, _accuracy([0.5], [1.0], [0.8]), {})
    assert "step 1" not in text  # not run yet: no comparison invented


def test_tall_and_consensus_findings():
    acc = _accuracy([0.5], [1.0], [0.99], model="TALL-reconstructed")
    text, headline = guide.finding(2, acc, {}, {"catastrophic": 0.3, "selfish": 0.25, "general": 0.45})
    assert headline == pytest.approx(99.0)
    assert "30.0 % of the weights are catastrophic, 25.0 % selfish, 45.0 %" in text
    text, _ = guide.finding(3, _accuracy([0.5], [1.0], [0.7]), {}, found={"1": 72.0}, info={"consensus_fraction": 0.4})
    assert "keeping 40 % of the weights" in text and "-2.0 points vs Task Arithmetic" in text


def test_no_accuracy_says_so():
    text, headline = guide.finding(0, pd.DataFrame(columns=["task", "model", "accuracy"]), {})
    assert headline is None and "no heads or test data" in text


def test_sweep_finding_ranks_by_normalized_accuracy_as_the_selection_does():
    table = pd.DataFrame({"lam": [0.1, 0.1, 0.5, 0.5, 1.0, 1.0], "task": ["a", "b"] * 3,
                          "accuracy": [0.5, 0.6, 0.8, 0.9, 0.6, 0.6], "normalized": [0.6, 0.7, 0.9, 1.0, 0.7, 0.7]})
    text, best = guide.sweep_finding(table)
    assert "λ = 0.5" in text and best == pytest.approx(85.0) and "edge" not in text
    assert "95.0 % of the fine-tunes'" in text
    text, _ = guide.sweep_finding(table[table["lam"] < 0.6])
    assert "grid's edge" in text
    # mean accuracy and mean normalized accuracy disagree: the normalized one (the ★, merging.selection) wins
    table = pd.DataFrame({"lam": [0.1, 0.1, 0.2, 0.2, 0.3, 0.3], "task": ["easy", "hard"] * 3,
                          "accuracy": [0.99, 0.40, 0.90, 0.45, 0.80, 0.41],
                          "normalized": [0.99, 0.40, 0.91, 0.55, 0.80, 0.41]})
    text, best = guide.sweep_finding(table)
    assert "**λ = 0.2**" in text and best == pytest.approx(67.5)


def test_tuning_note_states_the_chosen_values():
    assert guide.tuning_note("ties", {"k": 20, "lam": 0.8}) == " λ = 0.8, chosen on validation."
    assert guide.tuning_note("tall", {"tall_lambda": [0.2, 0.6, 0.4]}) == " λt chosen on validation: 0.2 … 0.6 across tasks."
    assert guide.tuning_note("tall", {"tall_lambda": [0.4, 0.4]}) == " λt chosen on validation: 0.4 for all."
    assert "default" in guide.tuning_note("ties", None)
