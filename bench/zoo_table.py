"""The accuracy table of every merge method on a zoo (the README's demo-zoo table).

Protocol of the papers: each method's λ is chosen on the validation split (shared λ by mean normalized
accuracy; TALL's λt per task; LiNeS's β, with the method at λ = 1 as the official code), other hyperparameters
at their defaults; CALM and AdaMerging learn from the unlabeled validation images, PCB + ES searches λt on the
labeled ones (the rows marked "test-time" adapt on the unlabeled test images instead, as AdaMerging's and CALM's
official code do); every row is then measured once on the test split.  Normalized accuracy =
merged / fine-tuned test accuracy per task.  The time column is the wall time of the row (selection included).

    python bench/zoo_table.py                          # the demo zoo, all rows
    python bench/zoo_table.py --zoo path/to/zoo --rows ta ties tall --json table.json
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pandas as pd  # noqa: E402

from merging.evaluation import Evaluator, evaluate_baselines, evaluate_result  # noqa: E402
from merging.modifiers.lines import TIES_BETA_GRID  # noqa: E402
from merging.registry import get_method, run_merge  # noqa: E402
from merging.selection import select, select_modifier  # noqa: E402
from merging.zoo import load_zoo  # noqa: E402

# row label → (method, fixed parameters, how to set the rest: "select" on val, "default", or "test-time": the
# defaults, adapting on the unlabeled test images)
ROWS = {
    "averaging": ("Weight averaging", "averaging", {}, "default"),
    "ta": ("Task Arithmetic", "task_arithmetic", {}, "select"),
    "ties": ("TIES-Merging", "ties", {}, "select"),
    "dare": ("DARE + TA", "dare", {"base": "ta"}, "select"),
    "consensus_ta": ("Consensus TA", "consensus", {"base": "ta"}, "select"),
    "consensus_ties": ("Consensus TIES", "consensus", {"base": "ties"}, "select"),
    "pcb": ("PCB-Merging", "pcb", {}, "select"),
    "tall": ("TALL mask + TA", "tall", {"base": "ta"}, "select"),
    "adamerging_task": ("AdaMerging (task-wise)", "adamerging", {"granularity": "task"}, "default"),
    "adamerging_layer": ("AdaMerging (layer-wise)", "adamerging", {"granularity": "layer"}, "default"),
    "adamerging_layer_tt": ("AdaMerging (layer-wise, test-time)", "adamerging", {"granularity": "layer"},
                            "test-time"),
    "calm": ("CALM (lr auto, the default)", "calm", {}, "default"),
    "calm_tt": ("CALM (lr auto, test-time)", "calm", {}, "test-time"),
    "calm_lr1e7": ("CALM (official lr 1e7)", "calm", {"lr": 1e7}, "default"),
    # the official lr 1e7 fits ViT-B/32's per-weight gradients; a 0.7 M-parameter model's are far larger
    "calm_lr1e5": ("CALM (lr 1e5)", "calm", {"lr": 1e5}, "default"),
    "tsvm": ("TSV-M", "tsvm", {}, "select"),
    "iso_c": ("Iso-C", "iso_c", {}, "select"),
    "iso_cts": ("Iso-CTS", "iso_cts", {}, "select"),
    "cart": ("CART", "cart", {}, "default"),
    "wudi": ("WUDI-Merging", "wudi", {}, "default"),
    "wudi_exact": ("WUDI-Merging (exact minimiser)", "wudi", {"solver": "exact"}, "default"),
    "emr": ("EMR-Merging", "emr", {}, "default"),
    "pcb_es": ("PCB + ES", "pcb_es", {}, "default"),
    "ta_lines": ("Task Arithmetic + LiNeS", "task_arithmetic", {"lam": 1.0}, "lines"),
    "ties_lines": ("TIES + LiNeS", "ties", {"lam": 1.0}, "lines"),
}


def _row(label: str, table: pd.DataFrame, seconds: float | None, params: dict | None = None) -> dict:
    row = {"method": label, **{t: 100 * a for t, a in zip(table["task"], table["accuracy"])},
           "avg": 100 * table["accuracy"].mean()}
    if "normalized" in table:
        row["normalized"] = 100 * table["normalized"].mean()
    row["seconds"] = seconds
    row["params"] = params
    return row


def _markdown(row: dict, tasks) -> str:
    time_cell = "—" if row["seconds"] is None else f"{row['seconds']:.0f} s"
    cells = [f"{row[t]:.1f}" for t in tasks] + [f"**{row['avg']:.1f}**", f"{row['normalized']:.1f}", time_cell]
    return f"| {row['method']} | {' | '.join(cells)} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--zoo", default=str(Path(__file__).resolve().parents[1] / "assets" / "demo-zoo"))
    parser.add_argument("--rows", nargs="*", default=list(ROWS), choices=list(ROWS))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", help="also write the rows as JSON")
    args = parser.parse_args()

    zoo = load_zoo(args.zoo)
    evaluator = Evaluator(zoo, device=args.device)
    base = evaluate_baselines(zoo, split="test", evaluator=evaluator)
    val = evaluate_baselines(zoo, split="val", evaluator=evaluator)
    reference = dict(zip(base["task"], base["finetuned"]))
    val_reference = dict(zip(val["task"], val["finetuned"]))
    rows = [_row("Pretrained θ0", base.assign(accuracy=base["pretrained"], normalized=base["pretrained"]
                                              / base["finetuned"]), None),
            _row("Individual (fine-tuned)", base.assign(accuracy=base["finetuned"], normalized=1.0), None)]
    space = zoo.build_space(device=args.device)
    contexts = {}
    for key in args.rows:
        label, method, fixed, how = ROWS[key]
        start = time.perf_counter()
        if how == "select":
            chosen = select(zoo, space, method, fixed, reference=val_reference, evaluator=evaluator)
            result, params = chosen.result, chosen.params
        elif how == "lines":
            grid = TIES_BETA_GRID if method == "ties" else None
            chosen = select_modifier(zoo, space, method, fixed, grid=grid, reference=val_reference,
                                     evaluator=evaluator)
            result, params = chosen.result, {**chosen.params, "lines": chosen.modifiers[0][1]}
        else:
            split = "test" if how == "test-time" else "val"
            if get_method(method).needs_data and split not in contexts:
                contexts[split] = zoo.data_context(split=split, device=args.device, test_time=split == "test")
            result = run_merge(space, method, fixed, context=contexts.get(split))
            params = dict(result.params)
        table = evaluate_result(zoo, space, result, reference=reference, evaluator=evaluator)
        rows.append(_row(label, table, time.perf_counter() - start, params))
        print(_markdown(rows[-1], zoo.task_names), f"params: {params}", file=sys.stderr, flush=True)

    frame = pd.DataFrame(rows)
    tasks = list(zoo.task_names)
    print(f"| method | {' | '.join(tasks)} | avg | normalized | time |")
    print("|" + "---|" * (len(tasks) + 4))
    for row in rows:
        print(_markdown(row, tasks))
    if args.json:
        Path(args.json).write_text(frame.to_json(orient="records", indent=1))


if __name__ == "__main__":
    main()
