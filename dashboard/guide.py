"""The guided demo: a short walkthrough for non-experts on the demo zoo, one merge per step."""
from __future__ import annotations

from dataclasses import dataclass, field

INTRO = """\
### What is model merging?
Start from one **pretrained** image model and fine-tune a copy of it on each task (digits, colours, shapes …).
What a fine-tune learned is its **task vector** τ = fine-tuned weights − pretrained weights.  *Merging* adds the
task vectors back onto the pretrained model to get **one model for all tasks**, with no training.

The catch is **interference**: two tasks may push the same weight in opposite directions, or one task's changes may
drown out another's.  The methods below are different answers to "which changes do we keep?".  Each step runs one
merge on the built-in demo zoo (a tiny vision transformer, 8 tasks, 32×32 images; a merge takes seconds).
"""


@dataclass(frozen=True)
class Step:
    title: str
    text: str
    method: str
    params: dict = field(default_factory=dict)


STEPS = (
    Step("1 · Add the task vectors (Task Arithmetic)",
         "θ = θ0 + λ·Σ τt with λ = 0.3.  In **Accuracy per task**, compare *merged* with *individual* (each task's "
         "own fine-tune) and *pretrained*: the gap to *individual* is what interference costs.  **Normalized "
         "accuracy** shows it as a percentage of the fine-tuned accuracy.",
         "task_arithmetic", {"lam": 0.3}),
    Step("2 · Resolve sign conflicts (TIES)",
         "TIES keeps each task's largest 20 % of changes, elects a sign per weight by vote, and averages only the "
         "changes that agree.  **Sign conflicts per layer** shows where tasks pulled in opposite directions; the "
         "agreement histogram counts how many tasks' kept changes land on each weight.",
         "ties", {"k": 20, "lam": 1.0}),
    Step("3 · See which weights each task needs (TALL masks)",
         "A TALL mask marks the weights where a task's own change matters more than the other tasks' combined "
         "changes.  The **agreement histogram** counts, for every weight, how many tasks need it: c = 0 weights "
         "are *catastrophic* (no task needs them — they only add noise), c = 1 are *selfish* (one task only), the "
         "rest *general*.  Keeping one shared model plus the tiny masks recovers each task (*TALL-reconstructed*).",
         "tall", {"tall_lambda": 0.6}),
    Step("4 · Keep only what several tasks agree on (Consensus)",
         "Consensus Merging drops weights needed by fewer than k = 2 tasks (the dashed line in the histogram) and "
         "merges the rest.  The **per-layer heatmap** shows in which layers selfish and catastrophic weights "
         "live; the **Jaccard heatmap** shows which tasks use the same weights (similar tasks overlap more).",
         "consensus", {"k": 2, "lam": 0.3}),
    Step("5 · Tune and compare",
         "Open **Sweep** to see accuracy as λ (or the consensus k) changes, on validation images.  Every merge is "
         "saved: **Compare** puts two runs side by side and lets you download the merged model.",
         "consensus", {"k": 2, "lam": 0.3}),
)
