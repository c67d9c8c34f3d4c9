"""The guided demo: five steps for non-experts, each a merge (or a sweep) run in place, its figure beside the text.

Each step's text says what its figure shows; :func:`finding` then states, from the numbers the step just measured,
what happened (pure functions of the run's small tables, so the Guide tells the truth on any zoo).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import pandas as pd

from merging.sweep import best_point

INTRO = """\
### What is model merging?
Start from one **pretrained** image model and fine-tune a copy of it on each task (digits, colours, shapes …).
What a fine-tune learned is its **task vector** τ = fine-tuned weights − pretrained weights.  *Merging* adds the
task vectors back onto the pretrained model to get **one model for all tasks**, with no training.

The catch is **interference**: two tasks may push the same weight in opposite directions, or one task's changes may
drown out another's.  The methods below are different answers to "which changes do we keep?".  Press **Run** on a
step: it merges the loaded zoo (test accuracy, averaged over its tasks), draws the step's figure beside the text and
says what the numbers show.  As in the papers, each step's strength λ is first chosen on the zoo's
**validation** images (never the test ones the figures report; step 5 shows that choice).  Every run is also
listed in **Compare & download**.
"""


@dataclass(frozen=True)
class Step:
    title: str
    text: str  # what the figure shows
    method: str
    params: dict = field(default_factory=dict)
    figure: str = "accuracy"  # a key of dashboard.figures.run_figures, or "sweep"
    mask_kind: str | None = None
    tune: bool = False  # choose λ (TALL: λt per task) on validation first (merging.selection.select)


STEPS = (
    Step("1 · Add the task vectors (Task Arithmetic)",
         "θ = θ0 + λ·Σt τt, with λ chosen on validation.  The figure shows, per task, the **pretrained** model, "
         "each task's own fine-tune (**individual**: the best one model per task can do) and the **merged** model. "
         " The gap between merged and individual is what interference costs; the gap between merged and "
         "pretrained is what merging gained (or lost) without any training.",
         "task_arithmetic", tune=True),
    Step("2 · Resolve sign conflicts (TIES)",
         "TIES keeps each task's largest 20 % of changes, elects one sign per weight by vote, and averages only "
         "the changes that agree (λ chosen on validation from the paper's grid 0.8 … 2.5).  The figure shows, per "
         "layer, the share of weights where the kept changes of different tasks point in opposite directions: "
         "the conflicts the vote resolves.  Whether resolving them pays depends on the models: the result says.",
         "ties", {"k": 20}, figure="table:sign_conflicts", tune=True),
    Step("3 · See which weights each task needs (TALL masks)",
         "A TALL mask keeps weight i for task t where |τt,i| > λt·|Σs≠t τs,i|: the task's own change against λt "
         "times the sum of all the other tasks' changes (λt per task, chosen on validation).  The histogram "
         "counts, for every weight, how many tasks' masks select it: c = 0 are *catastrophic* (no task needs "
         "them: they only add interference), c = 1 *selfish* (one task only), the rest *general*.  One shared "
         "merged vector plus a 1-bit mask per task serves each task separately (*TALL-reconstructed*).",
         "tall", figure="histogram", mask_kind="tall", tune=True),
    Step("4 · Keep only what several tasks agree on (Consensus)",
         "Consensus Merging removes the weights fewer than k = 2 tasks need (catastrophic and selfish ones) and "
         "merges the rest with Task Arithmetic (its own λ chosen on validation).  The heatmap shows, layer by "
         "layer, how many tasks need each weight: where in the network the selfish and the shared weights live.",
         "consensus", {"k": 2}, figure="layers", mask_kind="tall", tune=True),
    Step("5 · Tune the strength λ on validation data",
         "Every method has knobs; λ scales the merged change (λ = 0 is the pretrained model; too large lets the "
         "tasks overwrite each other).  The figure shows Task Arithmetic's validation accuracy (never test) for "
         "λ = 0.1 … 1.0; the ★ marks the highest mean *normalized* accuracy (each task's accuracy ÷ its "
         "fine-tune's), the rule that chose step 1's λ.  The **Sweep** tab sweeps any method's parameter; "
         "**Compare & download** puts runs side by side.",
         "task_arithmetic", {}, figure="sweep"),
)


def tuning_note(method: str, params: Mapping | None) -> str:
    """How a step's λ was chosen: "λ = 0.2" (TALL: the per-task λt), or a note that the zoo has no validation
    data (``params`` None) and the method's defaults were used."""
    if params is None:
        return " No validation images for every task: λ at the method's default."
    if method == "tall":
        values = params.get("tall_lambda")
        values = values if isinstance(values, (list, tuple)) else [values]
        low, high = min(values), max(values)
        return f" λt chosen on validation: {low:g}" + (f" … {high:g} across tasks." if high != low else " for all.")
    return f" λ = {params['lam']:g}, chosen on validation." if "lam" in params else ""


def _means(accuracy: pd.DataFrame) -> dict[str, float]:
    """Mean accuracy (in %) per model of a run's accuracy table (task, model, accuracy)."""
    return (100 * accuracy.groupby("model")["accuracy"].mean()).to_dict() if not accuracy.empty else {}


MERGED = ("merged", "TALL-reconstructed", "EMR-reconstructed")


def _merged(means: Mapping[str, float]) -> float | None:
    return next((means[m] for m in MERGED if m in means), None)


def _per_task(accuracy: pd.DataFrame) -> pd.DataFrame:
    """task × model accuracy (in %), the merged model's column named "merged"."""
    wide = 100 * accuracy.pivot_table(index="task", columns="model", values="accuracy", sort=False)
    return wide.rename(columns={m: "merged" for m in MERGED})


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
    wide = _per_task(accuracy)
    normalized = float((wide["merged"] / wide["individual"]).mean() * 100)
    base = (f"**{merged:.1f} %** average test accuracy: {merged - pre:+.1f} points vs the pretrained model "
            f"({pre:.1f} %), {merged - ind:+.1f} vs the individual fine-tunes ({ind:.1f} %) — "
            f"on average {normalized:.0f} % of each task's fine-tuned accuracy")
    if index == 0:
        below = list(wide.index[wide["merged"] < wide["pretrained"]])
        worse = f" Below the pretrained model on {', '.join(below)}: there merging lost." if below else ""
        return base + ", in one model." + worse, merged
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
            text += (f" {100 * class_fractions.get('catastrophic', 0):.1f} % of the weights are catastrophic, "
                     f"{100 * class_fractions.get('selfish', 0):.1f} % selfish, "
                     f"{100 * class_fractions.get('general', 0):.1f} % general.")
        return text, merged
    kept = info.get("consensus_fraction")
    kept_text = f" keeping {100 * kept:.0f} % of the weights" if kept is not None else ""
    return base + kept_text + _versus(merged, found, "1", "Task Arithmetic") + ".", merged


def sweep_finding(table: pd.DataFrame, param: str = "lam") -> tuple[str, float]:
    """What a λ sweep (``param``, task, accuracy, normalized; validation split) shows: the best λ by
    :func:`merging.sweep.best_point` (highest mean normalized accuracy: the figure's ★ and the rule of
    :func:`merging.selection.select`), its mean accuracy, whether it lies on the grid's edge, and the ends of the
    grid."""
    mean = table.groupby(param)["accuracy"].mean().sort_index() * 100
    best = best_point(table, {param: list(mean.index)})
    value = best.point[param]
    text = (f"Mean normalized validation accuracy peaks at **λ = {value:g}** ({100 * best.mean_normalized:.1f} % "
            f"of the fine-tunes'; mean accuracy {mean[value]:.1f} %); λ = {mean.index[0]:g} gives "
            f"{mean.iloc[0]:.1f} % and λ = {mean.index[-1]:g} gives {mean.iloc[-1]:.1f} %.")
    if best.on_edge:
        text += " The best value lies on the grid's edge: a wider grid may find a better one."
    return text, float(mean[value])
