"""Command line: ``python -m merging {methods,merge,stats}``.

    python -m merging merge --pretrained A --finetuned B C … --method ties --set k=20 --out merged.safetensors
    python -m merging merge --zoo assets/demo-zoo --method tall --out demo.tall.safetensors --eval
    python -m merging stats --zoo assets/demo-zoo --method tall --set tall_lambda=0.4
    python -m merging merge --zoo assets/demo-zoo --method task_arithmetic --set lam=1 --modifier lines beta=0.3
    python -m merging sweep --zoo assets/demo-zoo --method ties --grid k=10,20,40 lam=0.5,1.0 [--ray [ADDRESS]]
    python -m merging merge --recipe merged.recipe.yaml --out again.safetensors   # the same tensors
    python -m merging merge --pretrained llama/ --finetuned ft1/ ft2/ --method ties --out merged/   # HF folders

Every merge with --out also writes its recipe beside it (OUT with the suffix .recipe.yaml; see merging/recipe.py).

Errors (bad files, keys, parameters, unknown methods) are printed as one line and exit with status 2.  ``--out``
is checked before anything is loaded or merged: its folder must exist (it is not created), and it may not be one of
the inputs (the same file after resolving symlinks, or a hard link to one).  A folder as ``--pretrained`` is a
Hugging Face checkpoint of any architecture (see merging/checkpoints/hf_folder.py; so is a safetensors file whose
keys are no CLIP layout): its keys are kept, and the merge is written as a sharded checkpoint folder (``--format
sharded``, a new folder outside every input).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from .atomic import check_output_folder, check_output_path, clean_stale_temp
from .diskstack import parse_size
from .params import ParameterError, parse_assignments
from .progress import Cancelled, TerminalProgress
from .recipe import RecipeError, load_recipe, make_recipe, verify_inputs, write_recipe
from .registry import UnknownMethodError, get_method, list_methods, list_modifiers, resolve_modifiers, run_merge
from .space import CheckpointError, TaskVectorSpace


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m merging", description="mergescope merge engine")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("methods", help="list merge methods and modifiers with their parameters")
    helps = {"merge": "merge checkpoints", "stats": "print mask statistics",
             "sweep": "evaluate a 1-D or 2-D parameter grid on a zoo's validation split"}
    for name in ("merge", "stats", "sweep"):
        cmd = sub.add_parser(name, help=helps[name])
        source = cmd.add_argument_group("checkpoints (a zoo, or pretrained + fine-tuned files)")
        source.add_argument("--zoo", help="zoo folder or manifest (zoo.json)")
        source.add_argument("--pretrained", help="pretrained checkpoint θ0: an open_clip / Hugging Face CLIP file, "
                            "or a Hugging Face checkpoint folder of any architecture (model.safetensors[.index.json])")
        source.add_argument("--finetuned", nargs="+", default=[], help="one fine-tuned checkpoint per task (folders "
                            "or safetensors files with the pretrained folder's keys when --pretrained is a folder)")
        source.add_argument("--tasks", nargs="+", help="task names (default: file stems, or all zoo tasks)")
        cmd.add_argument("--method", help="merge method (see `methods`); required without --recipe")
        cmd.add_argument("--set", nargs="*", default=[], metavar="NAME=VALUE", help="method parameters")
        cmd.add_argument("--modifier", nargs="+", action="append", default=[], metavar=("MODIFIER", "NAME=VALUE"),
                         help="apply a modifier (see `methods`) with its parameters to the merged vector; "
                              "repeat for several, applied in order")
        cmd.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda[:N]")
        cmd.add_argument("--dtype", default="float32", help="stack dtype: float32, float16 or bfloat16")
        cmd.add_argument("--max-memory", metavar="SIZE", help="e.g. 8G: when the task-vector stack and the merge's "
                         "working vectors would exceed it, the stack lives in a memory-mapped scratch file")
        cmd.add_argument("--scratch", metavar="DIR", help="folder of the out-of-core stack (default: the system's "
                         "temporary folder)")
        if name == "merge":
            cmd.add_argument("--recipe", help="rerun a recipe file: its method, parameters, modifiers, tasks and "
                                              "checkpoints (--zoo / --pretrained / --finetuned point at other "
                                              "copies; their sha256 must match)")
            cmd.add_argument("--recipe-out", help="where to write this merge's recipe (default: beside --out)")
            cmd.add_argument("--out", help="output file (safetensors) in an existing folder, or a new folder for "
                                           "--format sharded; never an input")
            cmd.add_argument("--format", choices=("open_clip", "hf", "tall-compressed", "sharded"),
                             help="open_clip state dict (default), Hugging Face CLIP vision, TALL compressed "
                                  "(default for tall), or a sharded Hugging Face folder (default for folder inputs)")
            cmd.add_argument("--max-shard-size", default="5G", metavar="SIZE",
                             help="largest shard of --format sharded (default 5G)")
            cmd.add_argument("--eval", action="store_true", help="evaluate per task on the test split (the zoo's, "
                                                                 "or --evaluator's)")
            cmd.add_argument("--test-time", action="store_true", help="data-driven methods (AdaMerging, CALM) "
                             "adapt on the zoo's unlabeled test images, as their official code does (default: val)")
        elif name == "stats":
            cmd.add_argument("--csv", help="also write the tables as CSV files into this folder")
        else:
            cmd.add_argument("--grid", nargs="+", required=True, metavar="NAME=V1,V2,…",
                             help="swept parameters and their values (two for a 2-D grid)")
            cmd.add_argument("--split", default="val", help="held-out split (never test)")
            cmd.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                             help="run the points as Ray tasks: a cluster address, auto, or nothing for a local "
                                  "Ray instance (pip install ray)")
            cmd.add_argument("--csv", help="write the per-task table to this CSV file")
        if name != "stats":
            cmd.add_argument("--evaluator", metavar="MODULE:FUNCTION", help="per-task evaluation plug-in "
                             "evaluate(state_dict, task[, split]) -> accuracy, from a module or FILE.py (see "
                             "merging/plugin_eval.py); replaces the zoo's heads and data")
    return parser


def _source(args) -> tuple[object, list]:
    """The zoo (checked from headers, nothing loaded) or None, and every input file: known before any work."""
    if args.zoo:
        from .zoo import load_zoo

        zoo = load_zoo(args.zoo)
        return zoo, zoo.inputs()
    if not args.pretrained or not args.finetuned:
        raise CheckpointError("give --zoo, or --pretrained and at least one --finetuned checkpoint")
    inputs = [args.pretrained, *args.finetuned]
    if _folder_mode(args):
        from .checkpoints.hf_folder import checkpoint_files

        inputs += [file for path in inputs for file in checkpoint_files(path)]
    return None, inputs


def _folder_mode(args) -> bool:
    """--pretrained is a Hugging Face checkpoint folder (or a safetensors file of no CLIP layout): keys kept as they
    are, any architecture."""
    from .checkpoints.hf_folder import is_any_architecture

    return bool(args.pretrained) and not args.zoo and is_any_architecture(args.pretrained)


def _space(args, zoo) -> TaskVectorSpace:
    storage = {"max_memory": parse_size(args.max_memory) if args.max_memory else None, "scratch": args.scratch}
    if zoo is not None:
        return zoo.build_space(args.tasks, device=args.device, dtype=args.dtype, **storage)
    from .checkpoints import check_architecture, fill_frozen_projection, load_checkpoint

    names = args.tasks or [Path(p).name.split(".")[0] for p in args.finetuned]
    if _folder_mode(args):
        from .checkpoints.hf_folder import folder_space

        return folder_space(args.pretrained, args.finetuned, names, device=args.device, dtype=args.dtype, **storage)
    pretrained = load_checkpoint(args.pretrained).visual
    shapes = {k: tuple(v.shape) for k, v in pretrained.items()}

    def loader(path):
        def load():
            checkpoint = fill_frozen_projection(load_checkpoint(path), pretrained.get("proj"), shapes)
            check_architecture(Path(path), checkpoint.visual, shapes, "the pretrained checkpoint's architecture")
            return checkpoint.visual
        return load

    return TaskVectorSpace.build(pretrained, [loader(p) for p in args.finetuned], names, device=args.device,
                                 dtype=args.dtype, sources=[args.pretrained, *args.finetuned], **storage)


def _prepare_output(out: str, inputs: list, folder: bool = False) -> None:
    """Refuse a bad ``--out`` before anything is merged; remove temporary files of killed writes beside it."""
    (check_output_folder if folder else check_output_path)(out, inputs)
    removed = clean_stale_temp(Path(out).parent)
    if removed:
        print(f"removed {len(removed)} temporary file(s) left by killed writes in {Path(out).parent}",
              file=sys.stderr)


def _print(title: str, table: pd.DataFrame) -> None:
    print(f"\n## {title}")
    print(table.to_string(index=not isinstance(table.index, pd.RangeIndex), float_format=lambda v: f"{v:.4f}"))


def _methods() -> None:
    for method in list_methods():
        print(f"{method.name}: {method.title} — {method.summary}")
        for p in method.params:
            print(f"    {p.describe()}")
    print("\nmodifiers (--modifier NAME [NAME=VALUE ...], after any method):")
    for modifier in list_modifiers():
        print(f"{modifier.name}: {modifier.title} — {modifier.summary}")
        for p in modifier.params:
            print(f"    {p.describe()}")


def _modifiers(args) -> list[tuple[str, dict]]:
    """``--modifier lines beta=0.3`` → ``[("lines", {"beta": "0.3"})]``, checked before any file is read."""
    chain = []
    for name, *assignments in args.modifier:
        params = parse_assignments(assignments, f"--modifier {name}")
        resolve_modifiers([(name, params)])
        chain.append((name, params))
    return chain


def _apply_recipe(args) -> None:
    """Fill ``args`` from ``--recipe`` (command-line checkpoint paths take precedence over the recipe's)."""
    if args.method or args.set or args.tasks or args.modifier or args.test_time:
        raise RecipeError("--recipe fixes the method, parameters, modifiers, tasks and data: drop --method, --set, "
                          "--modifier, --tasks and --test-time")
    recipe = load_recipe(args.recipe)
    args.method, args.tasks, args.dtype = recipe.method, recipe.tasks, recipe.dtype
    if not (args.zoo or args.pretrained):
        args.zoo = str(recipe.zoo) if recipe.zoo else None
        args.pretrained = str(recipe.pretrained) if recipe.pretrained else None
        args.finetuned = [str(recipe.finetuned[t]) for t in recipe.tasks] if recipe.pretrained else []
    args.recipe_loaded = recipe


def _checkpoint_files(space, zoo, args) -> dict[str, str]:
    """"pretrained" and each task → the checkpoint file the merge read."""
    if zoo is not None:
        return {"pretrained": str(zoo.manifest.pretrained),
                **{t.name: str(t.finetuned) for t in zoo.manifest.tasks if t.name in space.task_names}}
    return {"pretrained": args.pretrained, **dict(zip(space.task_names, args.finetuned))}


def _merge(args) -> None:
    if args.recipe:
        _apply_recipe(args)
    if not args.method:
        raise ParameterError("--method is required (or give --recipe)")
    method = get_method(args.method)
    if args.test_time and not method.needs_data:
        raise ParameterError(f"--test-time: {method.title} learns from no images (only AdaMerging, CALM and other "
                             "data-driven methods adapt)")
    if args.recipe:
        params, modifiers = args.recipe_loaded.params, args.recipe_loaded.modifiers
    else:
        params, modifiers = parse_assignments(args.set), _modifiers(args)
    zoo, inputs = _source(args)
    plugin = _plugin(args)
    if args.eval and zoo is None and plugin is None:
        raise CheckpointError("--eval needs --zoo (heads and datasets come from the zoo manifest) or --evaluator")
    fmt = _export_format(args)
    shard_bytes = parse_size(args.max_shard_size, "--max-shard-size")
    recipe_out = args.recipe_out or (str(Path(args.out).with_suffix(".recipe.yaml")) if args.out else None)
    for target in (args.out, recipe_out):
        if target:
            _prepare_output(target, [*inputs, *([args.recipe] if args.recipe else [])],
                            folder=target == args.out and fmt == "sharded")
    space = _space(args, zoo)
    files = _checkpoint_files(space, zoo, args)
    if args.recipe:
        verify_inputs(args.recipe_loaded, list(files.values()))
    split = (args.recipe_loaded.data or "val") if args.recipe else ("test" if args.test_time else "val")
    context = _context(method, zoo, space, split)
    result = run_merge(space, method, params, progress=TerminalProgress(), context=context, modifiers=modifiers)
    print(f"{method.title} on {space.T} tasks ({space.P:,} parameters) in {result.seconds:.2f} s on {result.device}")
    print("parameters:", ", ".join(f"{k}={v}" for k, v in result.params.items()) or "none")
    for name, values in result.modifiers:
        print(f"modifier {name}:", ", ".join(f"{k}={v}" for k, v in values.items()))
    if args.out:
        from .checkpoints import export_merge

        fmt = fmt or ("tall-compressed" if result.per_task else "open_clip")
        export_merge(args.out, space, result, fmt, inputs=inputs, max_shard_bytes=shard_bytes,
                     config_from=args.pretrained if Path(args.pretrained or "").is_dir() else None)
        print(f"wrote {args.out} ({fmt})")
    if recipe_out:
        recipe = make_recipe(recipe_out, method.name, result.params, space.task_names, files, zoo=args.zoo,
                             pretrained=None if args.zoo else args.pretrained,
                             finetuned=None if args.zoo else dict(zip(space.task_names, args.finetuned)),
                             modifiers=result.modifiers, dtype=args.dtype,
                             data=split if method.needs_data else None)
        write_recipe(recipe_out, recipe)
        print(f"wrote {recipe_out} (recipe)")
    if args.eval:
        from .evaluation import evaluate_baselines, evaluate_result

        base = plugin.baselines(space) if plugin else evaluate_baselines(zoo, space.task_names)
        table = evaluate_result(zoo, space, result, reference=base, evaluator=plugin)
        table.insert(1, "pretrained", base["pretrained"].to_numpy())
        table.insert(2, "finetuned", base["finetuned"].to_numpy())
        _print("per-task test accuracy", table)
        print(f"\nmean accuracy {table['accuracy'].mean():.4f}, mean normalized {table['normalized'].mean():.4f}")


def _plugin(args):
    """The ``--evaluator`` plug-in, imported before any checkpoint is read (None without it)."""
    if not getattr(args, "evaluator", None):
        return None
    from .plugin_eval import load_evaluator

    return load_evaluator(args.evaluator)


def _export_format(args) -> str | None:
    """``--format``, or ``sharded`` for folder inputs (None: decided by the result, see _merge)."""
    if not _folder_mode(args):
        return args.format
    if args.format in ("open_clip", "hf"):
        raise ParameterError(f"--format {args.format} writes an open_clip / CLIP checkpoint; a Hugging Face folder "
                             "merge is written with --format sharded (or tall-compressed)")
    return args.format or "sharded"


def _stats(args) -> None:
    from .maskstats import mask_statistics

    if not args.method:
        raise ParameterError("--method is required")
    method = get_method(args.method)
    params, modifiers = parse_assignments(args.set), _modifiers(args)
    zoo, _ = _source(args)
    space = _space(args, zoo)
    result = run_merge(space, method, params, progress=TerminalProgress(), context=_context(method, zoo, space),
                       modifiers=modifiers)
    if not result.masks:
        raise ParameterError(f"{method.title} produces no masks; try tall, emr, consensus, ties, dare or pcb")
    for name, masks in result.masks.items():
        stats = mask_statistics(masks, space.index)
        tables = {"agreement histogram": stats.histogram, "mask density": stats.density,
                  "pairwise Jaccard overlap": stats.jaccard,
                  "agreement by layer": stats.by_layer.pivot_table(index="layer", columns="c", values="fraction",
                                                                   observed=True),
                  "agreement by kind": stats.by_kind.pivot_table(index="kind", columns="c", values="fraction",
                                                                 observed=True)}
        for title, table in tables.items():
            _print(f"{name}: {title}", table)
            if args.csv:
                Path(args.csv).mkdir(parents=True, exist_ok=True)
                table.to_csv(Path(args.csv) / f"{name}_{title.replace(' ', '_')}.csv")
    for title, table in result.tables.items():
        _print(title, table)


def _sweep(args) -> None:
    from .sweep import RayRunner, best_point, parse_grid, sweep

    if not args.method:
        raise ParameterError("--method is required")
    method = get_method(args.method)
    zoo, _ = _source(args)
    plugin = _plugin(args)
    if zoo is None and plugin is None:
        raise CheckpointError("sweep needs --zoo (heads and validation data come from the zoo manifest) or "
                              "--evaluator")
    if plugin is not None and args.ray:
        raise ParameterError("an --evaluator plug-in runs in-process only; drop --ray")
    space = _space(args, zoo)
    grid = parse_grid(method, args.grid, space.T)
    runner = None
    if args.ray:
        runner = RayRunner(None if args.ray == "local" else args.ray)
    table = sweep(zoo, space, method.name, grid, parse_assignments(args.set), _modifiers(args), args.split,
                  runner, TerminalProgress(), plugin)
    names = list(grid)
    means = table.groupby(names, sort=False)["normalized"].mean()
    _print(f"mean normalized {args.split} accuracy", means.unstack(names[-1]) if len(names) == 2 else
           means.to_frame())
    best = best_point(table, grid)
    print("\nbest:", ", ".join(f"{k}={v}" for k, v in best.point.items()),
          f"(mean normalized {best.mean_normalized:.4f})")
    for name in best.on_edge:
        print(f"warning: the best {name} lies on the grid's edge; widen the grid", file=sys.stderr)
    if args.csv:
        from .atomic import atomic_path

        with atomic_path(args.csv) as tmp:
            table.to_csv(tmp, index=False)
        print(f"wrote {args.csv}")


def _context(method, zoo, space, split: str = "val"):
    if not method.needs_data:
        return None
    if zoo is None:
        raise CheckpointError(f"{method.title} needs unlabeled data: give --zoo")
    return zoo.data_context(space.task_names, split=split, device=space.device, test_time=split == "test")


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    try:
        {"methods": lambda a: _methods(), "merge": _merge, "stats": _stats, "sweep": _sweep}[args.command](args)
    except (CheckpointError, ParameterError, RecipeError, UnknownMethodError, ValueError, KeyError, OSError,
            Cancelled, RuntimeError) as error:
        lines = str(error).strip().splitlines() or [type(error).__name__]
        print(f"\nerror: {lines[0]}", file=sys.stderr)
        return 2
    return 0
