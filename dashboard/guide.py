"""The guided demo: five steps for non-experts, each a merge (or a sweep) run in place, its figure beside the text.

Each step's text says what its figure shows; :func:`finding` then states, from the numbers the step just measured,
what happened (pure functions of the run's small tables, so the Guide tells the truth on any zoo).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import pandas as pd

INTRO = """\
### What is model merging?
Start from one **pretrained** image model and fine-tune a copy of it on each task (digits, colours, shapes …).
What a fine-tune learned is its **task vector** τ = fine-tuned weights − pretrained weights.  *Merging* adds the
task vectors back onto the pretrained model to get **one model for all tasks**, with no training.

The catch is **interference**: two tasks may push the same weight in opposite directions, or one task's changes may
drown out another's.  The methods below are different answers to "which changes do we keep?".  Press **Run** on a
step: it merges the loaded zoo (test accuracy, averaged over its tasks), draws the step's figure beside the text and
says what the numbers show.  Every run is also saved to **Compare & download**.
"""


@dataclass(frozen=True)
class Step:
    title: str
    text: str  # what the figure shows
    method: str
    params: dict = field(default_factory=dict)
    figure: str = "accuracy"  # a key of dashboard.figures.run_figures, or "sweep"
    mask_kind: str | None = None


STEPS = (
    Step("1 · Add the task vectors (Task Arithmetic)",
         "θ = θ0 + λ·Σt τt with λ = 0.3.  The figure shows, per task, the **pretrained** model, each task's own "
         "fine-tune (**individual**: the best one model per task can do) and the **merged** model.  The gap "
         "between merged and individual is what interference costs; the gap between merged and pretrained is "
         "what merging gained without any training.",
         "task_arithmetic", {"lam": 0.3}),
    Step("2 · Resolve sign conflicts (TIES)",
         "TIES keeps each task's largest 20 % of changes, elects one sign per weight by vote, and averages only "
         "the changes that agree (λ = 1).  The figure shows, per layer, the share of weights where the kept "
         "changes of different tasks point in opposite directions: the conflicts TIES resolves by the vote.",
         "ties", {"k": 20, "lam": 1.0}, figure="table:sign_conflicts"),
    Step("3 · See which weights each task needs (TALL masks)",
         "A TALL mask marks the weights where a task's own change matters more than all the other tasks' "
         "changes together.  The histogram counts, for every weight, how many tasks' masks select it: c = 0 are "
         "*catastrophic* (no task needs them: they only add interference), c = 1 *selfish* (one task only), the "
         "rest *general*.  One shared merged vector plus a 1-bit mask per task serves each task separately "
         "(*TALL-reconstructed*).",
         "tall", {"tall_lambda": 0.6}, figure="histogram", mask_kind="tall"),
    Step("4 · Keep only what several tasks agree on (Consensus)",
         "Consensus Merging removes the weights fewer than k = 2 tasks need (catastrophic and selfish ones) and "
         "merges the rest (λ = 0.3, as step 1).  The heatmap shows, layer by layer, how many tasks need each "
         "weight: where in the network the selfish and the shared weights live.",
         "consensus", {"k": 2, "lam": 0.3}, figure="layers", mask_kind="tall"),
    Step("5 · Tune the strength λ on validation data",
         "Every method has knobs; λ scales the merged change.  The figure shows Task Arithmetic's average "
         "validation accuracy (never test) for λ = 0.1 … 1.0: too small stays at the pretrained model, too large "
         "lets the tasks overwrite each other.  The **Sweep** tab sweeps any method's parameter; **Compare & "
         "download** puts runs side by side.",
         "task_arithmetic", {}, figure="sweep"),
)


def _means(accuracy: pd.DataFrame) -> dict[str, float]:
    """Mean accuracy (in %) per model of a run's accuracy table (task, model, accuracy)."""
    return (100 * accuracy.groupby("model")["accuracy"].mean()).to_dict() if not accuracy.empty else {}


def _merged(means: Mapping[str, float]) -> float | None:
    return next((means[m] for m in ("merged", "TALL-reconstructed", "EMR-reconstructed") if m in means), None)


def _versus(value: float, found: Mapping[str, float], step: str, name: str) -> str:
    if step not in found:
        return ""
    return f" ({value - found[step]:+.1f} points vs {name} of step {step})"


def finding(index: int, accuracy: pd.DataFrame, tables: Mapping[str, pd.DataFrame],
            class_fractions: Mapping[str, float] | None = None, found: Mapping[str, float] | None = None,
            info: Mapping | None = None) -> tuple[str, float | None]:
    """(one or two sentences on what step ``index`` measured, the step's headline accuracy in %).

    ``accuracy``: the run's (task, model, accuracy) table with the pretrained and individual baselines;
    ``class_fractions``: catastrophic/selfish/general fractions of the TALL masks; ``found``: headline accuracies
    of the steps already run in this session (keys "1"…"5"); ``info``: the result's info (consensus fraction)."""
    found, info = found or {}, info or {}
    means = _means(accuracy)
    merged, pre, ind = _merged(means), means.get("pretrained"), means.get("individual")
    if merged is None or pre is None or ind is None:
        return "This zoo has no heads or test data, so there is no accuracy to report; the masks are still shown.", \
            None
    base = (f"**{merged:.1f} %** average test accuracy: {merged - pre:+.1f} points vs the pretrained model "
            f"({pre:.1f} %), {merged - ind:+.1f} vs the individual fine-tunes ({ind:.1f} %) — "
            f"{100 * merged / ind:.0f} % of their accuracy")
    if index == 0:
        return base + ", in one model.", merged
    if index == 1:
        text = base + _versus(merged, found, "1", "Task Arithmetic") + "."
        conflicts = tables.get("sign_conflicts")
        if conflicts is not None and not conflicts.empty:
            rate = 100 * conflicts["sign_conflicts"].sum() / conflicts["numel"].sum()
            text += f" The kept changes disagree in sign on {rate:.1f} % of all weights."
        return text, merged
    if index == 2:
        text = base + ", one 1-bit mask per task on top of a single merged vector."
        if class_fractions:
            text += (f" {100 * class_fractions.get('catastrophic', 0):.0f} % of the weights are catastrophic, "
                     f"{100 * class_fractions.get('selfish', 0):.0f} % selfish, "
                     f"{100 * class_fractions.get('general', 0):.0f} % general.")
        return text, merged
    kept = info.get("consensus_fraction")
    kept_text = f" keeping {100 * kept:.0f} % of the weights" if kept is not None else ""
    return base + kept_text + _versus(merged, found, "1", "Task Arithmetic") + ".", merged


def sweep_finding(table: pd.DataFrame, param: str = "lam") -> tuple[str, float]:
    """What a λ sweep (``param``, task, accuracy, normalized; validation split) shows: the best λ, whether it
    lies on the grid's edge, and how much worse the ends are."""
    mean = table.groupby(param)["accuracy"].mean().sort_index() * 100
    best = float(mean.idxmax())
    text = (f"Validation accuracy peaks at **λ = {best:g}** ({mean.max():.1f} %); λ = {mean.index[0]:g} gives "
            f"{mean.iloc[0]:.1f} % and λ = {mean.index[-1]:g} gives {mean.iloc[-1]:.1f} %.")
    if best in (mean.index[0], mean.index[-1]):
        text += " The best value lies on the grid's edge: a wider grid may find a better one."
    return text, float(mean.max())
