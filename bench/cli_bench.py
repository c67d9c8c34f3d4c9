"""The CLI end to end against the plain pipeline it wraps, side by side in one run (medians of ``--repeats``, warm
page cache, calls alternated so a change of load hits both):

* plain: ``safetensors.torch.load_file`` of θ0 and each fine-tuned file, flatten, subtract into a (T, P) stack,
  the engine's merge (``run_merge`` on that stack), θ0 + Δ reshaped and written with ``save_file``;
* CLI in process: ``merging.cli.main(["merge", "--pretrained", …, "--finetuned", …, "--method", M, "--out", …])``
  — key and shape checks, the finiteness check, the merge, the atomic export and the recipe (which hashes every
  input file with sha256); it writes an open_clip state dict ("visual." keys), compared with the plain
  output key by key;
* the same two as subprocesses, as a user runs them: ``python bench/cli_bench.py --plain-run …`` (the plain
  pipeline as a script: interpreter start, the same imports) and ``python -m merging merge …``.

Inputs: random-init open_clip ViT-B/32 visual towers (87.8 M parameters) as safetensors, θ0 and ``--tasks``
fine-tunes (θ0 + 1e-3·N(0, 1) per entry).

    python bench/cli_bench.py [--tasks 8] [--method ties] [--repeats 3]
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from merging import TaskVectorSpace, run_merge  # noqa: E402  (before torch: turns on huge pages)
from merging.cli import main as cli_main  # noqa: E402
from merging.param_index import ParamIndex  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def write_inputs(folder: Path, tasks: int) -> list[Path]:
    """θ0 (random-init ViT-B/32 visual tower) and ``tasks`` fine-tunes as safetensors files."""
    from merging.manifest import Architecture
    from merging.models import build_clip

    torch.manual_seed(0)
    visual = {k: v.detach().contiguous() for k, v in build_clip(Architecture("ViT-B-32-quickgelu")).visual
              .state_dict().items()}
    files = [folder / f"visual{t}.safetensors" for t in range(tasks + 1)]
    for t, path in enumerate(files):
        save_file({k: (v + 1e-3 * torch.randn_like(v) if t and v.is_floating_point() else v).contiguous()
                   for k, v in visual.items()}, str(path))
    return files


def plain(files: list[Path], method: str, out: Path) -> None:
    base = load_file(str(files[0]))
    index = ParamIndex.from_state_dict(base)
    theta0 = torch.cat([base[name].reshape(-1).float() for name in index.names()])
    stack = torch.empty((len(files) - 1, theta0.numel()))
    for t, path in enumerate(files[1:]):
        tuned = load_file(str(path))
        torch.sub(torch.cat([tuned[name].reshape(-1).float() for name in index.names()]), theta0, out=stack[t])
    space = TaskVectorSpace(index, {"__order__": index.names()}, theta0, stack,
                            [f"task{t}" for t in range(len(files) - 1)])
    merged = theta0 + run_merge(space, method).delta
    save_file({e.name: merged[e.slice].reshape(e.shape) for e in index.entries}, str(out))


def check(code: int) -> None:
    if code:
        raise SystemExit(f"the CLI failed (exit {code})")


def cli_args(files: list[Path], method: str, out: Path) -> list[str]:
    return ["merge", "--pretrained", str(files[0]), "--finetuned", *map(str, files[1:]), "--method", method,
            "--out", str(out)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=8)
    parser.add_argument("--method", default="ties")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--plain-run", nargs="+", metavar=("OUT", "FILE"), help=argparse.SUPPRESS)  # one plain run
    args = parser.parse_args()
    if args.plain_run:
        out, *files = args.plain_run
        plain([Path(f) for f in files], args.method, Path(out))
        return
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        files = write_inputs(tmp, args.tasks)
        outs = {name: tmp / "out" / name for name in ("plain", "cli", "script", "subprocess")}
        for folder in outs.values():
            folder.mkdir(parents=True)

        def fresh(name: str, i: int) -> Path:
            return outs[name] / f"merged{i}.safetensors"  # the CLI never overwrites: a new name per call

        env = {**os.environ, "PYTHONPATH": str(ROOT)}

        def run(*argv: str) -> None:
            subprocess.run([sys.executable, *argv], check=True, env=env, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)

        cases = {
            "plain load + subtract + merge + save_file": lambda i: plain(files, args.method, fresh("plain", i)),
            "CLI in process (merging.cli.main)": lambda i: check(cli_main(cli_args(files, args.method,
                                                                                   fresh("cli", i)))),
            "plain, as a script (subprocess)": lambda i: run(__file__, "--method", args.method, "--plain-run",
                                                             str(fresh("script", i)), *map(str, files)),
            "CLI subprocess (python -m merging merge)": lambda i: run(
                "-m", "merging", *cli_args(files, args.method, fresh("subprocess", i))),
        }
        times = {name: [] for name in cases}
        for i in range(args.repeats + 1):  # the first round warms the page cache and is not counted
            for name, case in cases.items():
                start = time.perf_counter()
                case(i)
                if i:
                    times[name].append(time.perf_counter() - start)
        a = load_file(str(fresh("plain", args.repeats)))
        b = {k.removeprefix("visual."): v for k, v in load_file(str(fresh("cli", args.repeats))).items()}
        same = all(torch.equal(a[k], b[k]) for k in a) and a.keys() == b.keys()
        medians = [statistics.median(values) for values in times.values()]
        print(f"{args.method} on {args.tasks} × ViT-B/32 visual safetensors, {torch.get_num_threads()} threads, "
              f"medians of {args.repeats}; CLI output {'identical to' if same else 'DIFFERS from'} the plain one")
        print("| path | seconds | ÷ the plain pipeline run the same way |\n|---|---|---|")
        for (name, median), plain_median in zip(zip(times, medians), [medians[0]] * 2 + [medians[2]] * 2):
            print(f"| {name} | {median:.2f} | {median / plain_median:.2f} |")


if __name__ == "__main__":
    main()
