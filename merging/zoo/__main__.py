"""``python -m merging.zoo build [--out DIR] [--device auto|cpu|cuda] [--seed N] [--threads N] [--verify]``: regenerate the
built-in demo zoo from seeds (see :mod:`merging.zoo.demo.build`).  ``--verify`` builds into a temporary folder and
compares every file's bytes with ``--out`` instead of replacing it.  ``--n-pretrain``, ``--pretrain-steps``,
``--caption-confusion``, ``--finetune-optimizer``, ``--finetune-lr`` and ``--finetune-weight-decay`` build a variant of
the design (for experiments; the shipped zoo uses the defaults)."""
from __future__ import annotations

import argparse
import math
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

from ..progress import TerminalProgress
from .demo.build import BUILD_THREADS, DEFAULT_OUT, BuildConfig, build, digests


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m merging.zoo", description="the built-in demo zoo")
    sub = parser.add_subparsers(dest="command", required=True)
    cmd = sub.add_parser("build", help="regenerate the demo zoo from seeds")
    cmd.add_argument("--out", default=str(DEFAULT_OUT), help=f"zoo folder (default {DEFAULT_OUT})")
    cmd.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda[:N]")
    cmd.add_argument("--seed", type=int, default=0)
    cmd.add_argument("--threads", type=int, default=BUILD_THREADS,
                     help="torch CPU threads (default %(default)s; the bytes depend on it, so --verify needs the same)")
    cmd.add_argument("--verify", action="store_true",
                     help="build into a temporary folder and compare its files with --out byte for byte")
    cmd.add_argument("--n-pretrain", type=int, help="captioned pretraining images per task (default: the shipped "
                                                    "design's, BuildConfig.n_pretrain)")
    cmd.add_argument("--pretrain-steps", type=int, help="pretraining steps (default: train.PRETRAIN.steps)")
    cmd.add_argument("--caption-confusion", type=float,
                     help="probability that an odd class is captioned by its partner's name (default: "
                          "tasks.CAPTION_CONFUSION)")
    cmd.add_argument("--finetune-optimizer", choices=("sgd", "adamw"),
                     help="fine-tuning optimizer (default: train.FINETUNE.optimizer)")
    cmd.add_argument("--finetune-lr", type=float, help="fine-tuning peak lr (default: train.FINETUNE.lr)")
    cmd.add_argument("--finetune-weight-decay", type=float,
                     help="fine-tuning weight decay (default: train.FINETUNE.weight_decay)")
    args = parser.parse_args(argv)

    for flag, value, low in (("--threads", args.threads, 1), ("--n-pretrain", args.n_pretrain, 1),
                             ("--pretrain-steps", args.pretrain_steps, 1)):
        if value is not None and value < low:
            parser.error(f"{flag} must be at least {low}, got {value}")
    if args.caption_confusion is not None and not 0.0 <= args.caption_confusion <= 1.0:
        parser.error(f"--caption-confusion must be between 0 and 1, got {args.caption_confusion}")
    for flag, value in (("--finetune-lr", args.finetune_lr), ("--finetune-weight-decay", args.finetune_weight_decay)):
        if value is not None and not (math.isfinite(value) and value >= 0):
            parser.error(f"{flag} must be a finite number >= 0, got {value}")
    config = BuildConfig(seed=args.seed, threads=args.threads)
    if args.n_pretrain is not None:
        config = replace(config, n_pretrain=args.n_pretrain)
    if args.pretrain_steps is not None:
        config = replace(config, pretrain=replace(config.pretrain, steps=args.pretrain_steps))
    if args.caption_confusion is not None:
        config = replace(config, caption_confusion=args.caption_confusion)
    finetune = {k: v for k, v in (("optimizer", args.finetune_optimizer), ("lr", args.finetune_lr),
                                  ("weight_decay", args.finetune_weight_decay)) if v is not None}
    if finetune:
        config = replace(config, finetune=replace(config.finetune, **finetune))
    try:
        if not args.verify:
            show = TerminalProgress()
            times = build(args.out, config, args.device, show,
                          log=lambda m: print(f"\n{m}" if show.live else m, file=sys.stderr))
            print(f"\nbuilt {args.out} in {times['total']:.0f} s "
                  f"(data {times['data']:.0f} s, pretraining {times['pretrain']:.0f} s, "
                  f"fine-tuning {times['finetune']:.0f} s)")
            return 0
        with tempfile.TemporaryDirectory() as scratch:
            fresh = Path(scratch) / "zoo"
            build(fresh, config, args.device, TerminalProgress(), log=lambda m: None)
            old, new = digests(args.out), digests(fresh)
    except (RuntimeError, ValueError, KeyError, OSError) as exc:
        print(f"\nerror: {exc}", file=sys.stderr)
        return 2
    differ = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
    print(f"\n{len(new) - len(differ)} of {len(new)} files identical"
          + (f"; differing: {', '.join(differ[:10])}{' …' if len(differ) > 10 else ''}" if differ else ""))
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
