"""Export time of a merge, ViT-B/32 visual tower (random tensors of its shapes, ~88 M parameters), medians.

Side by side in one run:

* ``floor``: ``safetensors.torch.save_file`` of a state dict that is already built (the write alone), through
  :func:`merging.atomic.atomic_path` (temporary file, fsync, rename) as every export;
* ``copies (before)``: the export as it was — θ0 + δ, ``to_state_dict`` (``.to(dtype)`` then ``.clone()``), a
  defensive ``.clone()`` of every tensor in ``_save``, the same atomic write — reproduced here as the reference;
* ``export_merge``: the export now (one copy per tensor, written as it is);
* ``sharded``: :func:`merging.checkpoints.sharded_export.save_sharded` into a folder (1 GiB shards, one here),
  which cuts each shard's tensors from the merged vector when that shard is written.

Both float32 and float16 outputs (tests/test_checkpoints.py checks that the bytes are those of a plain save).

    python bench/export_bench.py [--repeats 3]
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from load_bench import median_time  # noqa: E402
from merging.atomic import atomic_path  # noqa: E402
from merging.checkpoints import export_merge  # noqa: E402
from merging.checkpoints.sharded_export import save_sharded  # noqa: E402
from merging.manifest import Architecture  # noqa: E402
from merging.models import visual_shapes  # noqa: E402
from merging.registry import MergeResult  # noqa: E402
from merging.space import TaskVectorSpace  # noqa: E402


def copies_before(space, delta, dtype):
    """The pre-change path: to_state_dict's .to(dtype).clone(), then _save's .clone() of every tensor."""
    flat = space.theta0 + delta
    state = {e.name: flat[e.slice].reshape(e.shape).to(dtype or e.dtype).clone() for e in space.index.entries}
    return {"visual." + k: v.detach().cpu().clone(memory_format=torch.contiguous_format) for k, v in state.items()}


def atomic_save(tensors, path: Path, metadata=None) -> None:
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    shapes = visual_shapes(Architecture("ViT-B-32-quickgelu"))
    generator = torch.Generator().manual_seed(0)
    theta0 = {k: torch.randn(s, generator=generator) for k, s in shapes.items()}
    space = TaskVectorSpace.build(theta0, [{k: v + 1e-3 for k, v in theta0.items()}], device="cpu")
    delta = torch.randn(space.P, generator=generator) * 1e-3
    result = MergeResult(method="task_arithmetic", params={"lam": 1.0}, delta=delta)
    print(f"ViT-B/32 visual: {space.P:,} parameters; medians of {args.repeats}")
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as tmp:
        tmp = Path(tmp)
        for dtype in (None, torch.float16):
            name = "float32" if dtype is None else "float16"
            built = copies_before(space, delta, dtype)
            floor = median_time(lambda: atomic_save(built, tmp / "floor.safetensors"), args.repeats)
            before = median_time(lambda: atomic_save(copies_before(space, delta, dtype), tmp / "before.safetensors",
                                                     {"format": "pt"}), args.repeats)
            now = median_time(lambda: export_merge(tmp / "now.safetensors", space, result, dtype=dtype),
                              args.repeats)

            def sharded():
                shutil.rmtree(tmp / "sharded", ignore_errors=True)
                save_sharded(tmp / "sharded", space, space.theta0 + delta, config_from=None, max_shard_bytes=1 << 30,
                             dtype=dtype)

            folder = median_time(sharded, args.repeats)
            print(f"{name}: floor {floor:.2f} s | copies (before) {before:.2f} s ({before / floor:.2f}× floor) | "
                  f"export_merge {now:.2f} s ({now / floor:.2f}×) | sharded folder {folder:.2f} s "
                  f"({folder / floor:.2f}×) | before ÷ now {before / now:.2f}×")
            del built


if __name__ == "__main__":
    main()
