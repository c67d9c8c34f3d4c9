"""Two runs' masks side by side and where they differ (server side; no gradio).

Both runs are reopened (:meth:`Service.reopen`: merged again when their tensors left memory) and must come from
the same zoo; their masks are compared on the tasks both merged.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import pandas as pd

from merging.maskdiff import mask_difference
from merging.progress import as_progress

from . import figures
from .compare_figures import difference_numbers, mask_difference_bars
from .service import UserError

if TYPE_CHECKING:
    from .service import RunView, Service


@dataclass
class MaskComparison:
    a: "RunView"
    b: "RunView"
    kind_a: str
    kind_b: str
    table: pd.DataFrame  # merging.maskdiff.mask_difference

    def figures(self) -> dict:
        """The two runs' per-layer agreement heatmaps and the difference bars."""
        label_a, label_b = self.a.record.label(), self.b.record.label()
        out = {}
        for side, view, kind, label in (("a", self.a, self.kind_a, label_a), ("b", self.b, self.kind_b, label_b)):
            tall = kind in figures.TALL_KINDS
            out[side] = figures.layer_heatmap(view.stats[kind].by_layer, f"{label} · {kind}", tall)
        out["difference"] = mask_difference_bars(self.table, f"A ({label_a.split(' ')[0]})",
                                                 f"B ({label_b.split(' ')[0]})")
        return out

    def numbers(self) -> pd.DataFrame:
        return difference_numbers(self.table)

    def summary(self) -> str:
        total = self.table[["total", "only_a", "only_b"]].sum()
        tasks = list(dict.fromkeys(self.table["task"]))
        return (f"A = run #{self.a.id} ({self.kind_a} masks), B = run #{self.b.id} ({self.kind_b} masks), on "
                f"{len(tasks)} task{'s' if len(tasks) != 1 else ''} both merged: A keeps {int(total['only_a']):,} "
                f"weights that B drops, B keeps {int(total['only_b']):,} that A drops "
                f"({100 * (total['only_a'] + total['only_b']) / max(int(total['total']), 1):.2f}% of "
                f"{int(total['total']):,} task-weights).")


def _kind(view: "RunView", kind: str | None, side: str) -> str:
    kinds = list(view.stats)
    if not kinds:
        raise UserError(f"run {side}: #{view.id} ({view.record.method}) makes no masks; TIES, DARE, PCB, TALL and "
                        "Consensus do")
    if kind and kind not in kinds:
        raise UserError(f"mask set of run {side}: #{view.id} has {', '.join(kinds)}, not {kind!r}")
    return kind or kinds[0]


def compare_masks(service: "Service", first: int, second: int, viewer: str, kind_a: str | None = None,
                  kind_b: str | None = None, progress=None) -> MaskComparison:
    progress = as_progress(progress)
    a = service.reopen(first, viewer, progress.sub(0.0, 0.45))
    b = service.reopen(second, viewer, progress.sub(0.45, 0.9))
    if a.record.zoo_hash != b.record.zoo_hash:
        raise UserError(f"runs: #{a.id} is on zoo {a.record.zoo!r} and #{b.id} on {b.record.zoo!r}; masks compare "
                        "only within one zoo")
    kind_a, kind_b = _kind(a, kind_a, "A"), _kind(b, kind_b, "B")
    if not set(a.record.tasks) & set(b.record.tasks):
        raise UserError(f"runs: #{a.id} and #{b.id} merged no task in common")
    progress(0.9, "comparing the masks")
    table = mask_difference(a.result.masks[kind_a], b.result.masks[kind_b], a.space.index)
    progress(1.0, "done")
    return MaskComparison(a, b, kind_a, kind_b, table)
