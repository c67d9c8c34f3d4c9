"""Checkpoint load time of ``merging.checkpoints`` vs plain loaders, ViT-B/32 (random init, no download).

Side by side in one run, medians of ``--repeats`` (warm page cache; every tensor is read to the end so lazy
memory-mapped loads are not flattered):

* open_clip full state dict, torch ``.pt``: plain ``torch.load(weights_only=True)`` vs ``load_checkpoint``;
* the same as safetensors: ``safetensors.torch.load_file`` vs ``load_checkpoint``;
* Hugging Face CLIPVisionModel safetensors: ``load_file`` (no conversion) vs ``load_checkpoint`` (→ open_clip keys);
* task_vectors pickled ``ImageEncoder``: ``torch.load(weights_only=False)`` (runs code from the file: the unsafe
  reference) vs ``load_checkpoint`` (restricted unpickler);
* header-only validation (``inspect_checkpoint``) of the safetensors file;
* building a task-vector space from ``--tasks`` visual safetensors files (random fine-tunes): plain ``load_file``
  + flatten + subtract vs ``load_checkpoint`` + ``TaskVectorSpace.build`` (key checks, finiteness check).

    python bench/load_bench.py [--repeats 3]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import types
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from merging import TaskVectorSpace  # noqa: E402  (before torch: turns on huge pages)
import torch  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

from merging.checkpoints import inspect_checkpoint, load_checkpoint, open_clip_visual_to_hf  # noqa: E402
from merging.manifest import Architecture  # noqa: E402
from merging.models import build_clip  # noqa: E402


def touch(state) -> float:
    """Read every tensor (forces lazily mapped pages in)."""
    return float(sum(float(v.float().sum()) for v in state.values() if torch.is_tensor(v)))


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def pickled_encoder_class():
    """A class that pickles as task_vectors' ``src.modeling.ImageEncoder``."""
    module, package = types.ModuleType("src.modeling"), types.ModuleType("src")
    package.modeling = module

    class ImageEncoder(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

    ImageEncoder.__module__, ImageEncoder.__qualname__ = "src.modeling", "ImageEncoder"
    module.ImageEncoder = ImageEncoder
    sys.modules.update({"src": package, "src.modeling": module})
    return ImageEncoder


def space_case(tmp: Path, visual: dict, tasks: int, repeats: int) -> None:
    """Space build from safetensors files vs plain load + subtract, side by side."""
    files = [tmp / f"visual{t}.safetensors" for t in range(tasks + 1)]
    for t, path in enumerate(files):
        save_file({k: (v + 1e-3 * t * torch.randn_like(v) if v.is_floating_point() else v).contiguous()
                   for k, v in visual.items()}, str(path))

    def flat(path: Path) -> torch.Tensor:
        return torch.cat([v.reshape(-1).float() for v in load_file(str(path)).values() if v.is_floating_point()])

    def plain() -> None:
        theta0 = flat(files[0])
        stack = torch.empty((tasks, theta0.numel()))
        for t, path in enumerate(files[1:]):
            torch.sub(flat(path), theta0, out=stack[t])

    def ours() -> None:
        TaskVectorSpace.build(load_checkpoint(files[0]).visual,
                              [lambda path=path: load_checkpoint(path).visual for path in files[1:]], device="cpu")

    plain(), ours()
    a, b = median_time(plain, repeats), median_time(ours, repeats)
    print(f"  {f'space build, {tasks} tasks':36s} {a:8.3f}s {b:10.3f}s {b / a:6.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tasks", type=int, default=4, help="fine-tuned files in the space-build case")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = build_clip(Architecture("ViT-B-32-quickgelu"))
    full = {k: v.detach() for k, v in model.state_dict().items()}
    visual = model.visual.state_dict()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        torch.save(full, tmp / "full.pt")
        save_file(full, str(tmp / "full.safetensors"))
        save_file(open_clip_visual_to_hf(visual), str(tmp / "hf.safetensors"))
        del model.transformer
        torch.save(pickled_encoder_class()(model), tmp / "finetuned.pt")
        cases = [
            ("open_clip full .pt", lambda: touch(torch.load(tmp / "full.pt", weights_only=True)),
             lambda: touch(load_checkpoint(tmp / "full.pt").visual)),
            ("open_clip full .safetensors", lambda: touch(load_file(str(tmp / "full.safetensors"))),
             lambda: touch(load_checkpoint(tmp / "full.safetensors").visual)),
            ("HF CLIPVisionModel .safetensors", lambda: touch(load_file(str(tmp / "hf.safetensors"))),
             lambda: touch(load_checkpoint(tmp / "hf.safetensors").visual)),
            ("task_vectors pickled ImageEncoder",
             lambda: touch(torch.load(tmp / "finetuned.pt", weights_only=False).state_dict()),
             lambda: touch(load_checkpoint(tmp / "finetuned.pt").visual)),
        ]
        print(f"ViT-B/32 checkpoints, median of {args.repeats}, {torch.get_num_threads()} threads "
              f"(full model {sum(v.numel() for v in full.values()) / 1e6:.1f}M params, visual "
              f"{sum(v.numel() for v in visual.values()) / 1e6:.1f}M)")
        print(f"  {'file':36s} {'plain':>9s} {'mergescope':>11s} {'ratio':>7s}")
        for name, plain, ours in cases:
            plain(), ours()  # warm the page cache
            a, b = median_time(plain, args.repeats), median_time(ours, args.repeats)
            print(f"  {name:36s} {a:8.3f}s {b:10.3f}s {b / a:6.2f}x")
        space_case(tmp, visual, args.tasks, args.repeats)
        header = median_time(lambda: inspect_checkpoint(tmp / "full.safetensors"), args.repeats)
        print(f"  header-only validation (inspect_checkpoint, safetensors): {header * 1000:.1f} ms")


if __name__ == "__main__":
    main()
