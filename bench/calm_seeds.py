"""CALM against Task Arithmetic and θ0 on a zoo, over several method seeds (test accuracy, time of each run).

θ0 and the fine-tuned models are evaluated once; Task Arithmetic's λ is chosen on the val split (mean normalized
accuracy); CALM runs at its defaults (plus ``--set`` overrides) on the unlabeled val images (``--test-time``: the
unlabeled test images, as CALM's official code), once per seed.

    python bench/calm_seeds.py                                    # the demo zoo, seeds 0 1 2
    python bench/calm_seeds.py --zoo path/to/zoo --set lr=1e7 l1_form=official --json out.json
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

import torch  # noqa: E402

from merging.evaluation import Evaluator, evaluate_baselines, evaluate_result  # noqa: E402
from merging.params import parse_assignments  # noqa: E402
from merging.registry import run_merge  # noqa: E402
from merging.selection import select  # noqa: E402
from merging.zoo import load_zoo  # noqa: E402


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--zoo", default=str(Path(__file__).resolve().parents[1] / "assets" / "demo-zoo"))
    parser.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    parser.add_argument("--set", nargs="*", default=[], metavar="NAME=VALUE", help="CALM parameters")
    parser.add_argument("--test-time", action="store_true", help="adapt on the unlabeled test images")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the machine is shared)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", help="also write the rows as JSON")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    calm_params = parse_assignments(args.set)

    zoo = load_zoo(args.zoo)
    evaluator = Evaluator(zoo, device=args.device)
    base = evaluate_baselines(zoo, split="test", evaluator=evaluator)
    val = evaluate_baselines(zoo, split="val", evaluator=evaluator)
    reference = dict(zip(base["task"], base["finetuned"]))
    space = zoo.build_space(device=args.device)
    rows = [{"method": "Pretrained θ0", "seed": None, "avg": 100 * base["pretrained"].mean(), "seconds": None},
            {"method": "Individual", "seed": None, "avg": 100 * base["finetuned"].mean(), "seconds": None}]
    start = time.perf_counter()
    chosen = select(zoo, space, "task_arithmetic", {}, reference=dict(zip(val["task"], val["finetuned"])),
                    evaluator=evaluator)
    table = evaluate_result(zoo, space, chosen.result, reference=reference, evaluator=evaluator)
    rows.append({"method": f"Task Arithmetic (λ {chosen.params['lam']:g} on val)", "seed": None,
                 "avg": 100 * table["accuracy"].mean(), "seconds": time.perf_counter() - start})
    print(rows[-1], file=sys.stderr, flush=True)
    context = zoo.data_context(split="test" if args.test_time else "val", device=args.device,
                               test_time=args.test_time)
    for seed in args.seeds:
        start = time.perf_counter()
        result = run_merge(space, "calm", {**calm_params, "seed": seed}, context=context)
        table = evaluate_result(zoo, space, result, reference=reference, evaluator=evaluator)
        stages = result.tables["stages"]
        label = " ".join(["CALM", *args.set, *(["(test-time)"] if args.test_time else [])])
        rows.append({"method": label, "seed": seed, "avg": 100 * table["accuracy"].mean(),
                     "normalized": 100 * table["normalized"].mean(), "seconds": time.perf_counter() - start, "order": result.info["order"],
                     "lr": result.info["lr"], "mask_density": stages["mask_density"].dropna().tolist(),
                     **{t: 100 * a for t, a in zip(table["task"], table["accuracy"])}})
        print(rows[-1], file=sys.stderr, flush=True)
    print("| method | seed | test avg | time |\n|---|---|---|---|")
    for row in rows:
        seconds = "—" if row["seconds"] is None else f"{row['seconds']:.0f} s"
        print(f"| {row['method']} | {'—' if row['seed'] is None else row['seed']} | {row['avg']:.1f} | {seconds} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1, default=str))
    return rows


if __name__ == "__main__":
    main()
