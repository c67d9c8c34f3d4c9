"""Benchmark CALM and AdaMerging on T × ViT-B/32-sized models with synthetic task vectors and 224×224 images.

The encoder is a random-init open_clip ViT-B-32 visual tower (pretrained=None, 87.8 M merged parameters);
θt = θ0 + 1e-3·N(0, 1) per task; 10-class heads; random images.  Reports the CALM run time (pseudo-labelling
and the two sequential stages), the time per mask update and the AdaMerging time per step.

GPU (default schedule: 100 updates × 2 batches × 128 images per merged task, 2 sequential tasks):
    python bench/calm_bench.py
CPU (reduced schedule, stated in the output):
    python bench/calm_bench.py --device cpu --steps 2 --batch-size 8 --batches-per-task 1 --images 16 --ada-steps 2
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

import open_clip  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import TensorDataset  # noqa: E402

from merging import TaskVectorSpace, run_merge  # noqa: E402
from merging.context import DataContext  # noqa: E402
from merging.device import pick_device  # noqa: E402


class Head(torch.nn.Module):
    """logits = 10 · normalize(features) @ Wᵀ."""

    def __init__(self, classes: int, dim: int, generator: torch.Generator):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(classes, dim, generator=generator) / dim ** 0.5)

    def forward(self, features):
        return 10 * torch.nn.functional.normalize(features, dim=-1) @ self.weight.T


def build(args, device):
    torch.manual_seed(args.seed)
    model = open_clip.create_model(args.model, pretrained=None)
    encoder = model.visual.to(device)
    del model
    pretrained = {k: v.detach().clone() for k, v in encoder.state_dict().items()}
    tasks = [f"task{t}" for t in range(args.tasks)]

    def loader(t):
        def load():
            gen = torch.Generator(device=device).manual_seed(args.seed + 1 + t)
            return {k: v + 1e-3 * torch.randn(v.shape, generator=gen, device=device) for k, v in pretrained.items()}
        return load

    space = TaskVectorSpace.build(pretrained, [loader(t) for t in range(args.tasks)], tasks, device=device)
    size = encoder.image_size if isinstance(encoder.image_size, int) else encoder.image_size[0]
    gen = torch.Generator(device=device).manual_seed(args.seed)
    dim = encoder.output_dim
    heads = {t: Head(args.classes, dim, torch.Generator().manual_seed(i)).to(device) for i, t in enumerate(tasks)}
    data = {t: TensorDataset(torch.randn(args.images, 3, size, size, generator=gen, device=device),
                             torch.randint(args.classes, (args.images,), generator=gen, device=device))
            for t in tasks}
    return space, DataContext(encoder, heads, data, device, batch_size=args.batch_size)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--tasks", type=int, default=8)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--images", type=int, default=512, help="unlabeled images per task")
    parser.add_argument("--steps", type=int, default=100, help="CALM mask updates per sequential task")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--batches-per-task", type=int, default=2)
    parser.add_argument("--ada-steps", type=int, default=10, help="AdaMerging steps timed (batch 16 × 2 per task)")
    parser.add_argument("--no-amp", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="write the numbers to this file")
    args = parser.parse_args(argv)
    device = pick_device(args.device)
    amp = not args.no_amp

    start = time.perf_counter()
    space, context = build(args, device)
    setup = time.perf_counter() - start
    print(f"device {device}  model {args.model}  P = {space.P:,}  T = {space.T}  {args.images} images/task  "
          f"setup {setup:.1f} s")

    calm_params = {"steps": args.steps, "batch_size": args.batch_size, "batches_per_task": args.batches_per_task,
                   "amp": amp, "seed": args.seed}
    calm = run_merge(space, "calm", calm_params, context=context)
    stages = calm.tables["stages"]
    history = calm.tables["history"]
    staged = float(stages["seconds"].sum())
    per_update = history.groupby("task", sort=False)["seconds"].median()
    print(f"CALM schedule: first group {len(calm.info['first_group'])} tasks, sequential {calm.info['order']}, "
          f"{args.steps} updates × {args.batches_per_task} batches × {args.batch_size} images per merged task, "
          f"lr {calm.params['lr']} ({', '.join(f'{lr:.3g}' for lr in calm.info['lr'])})")
    for task, seconds in per_update.items():
        seen = int(stages.loc[stages["task"] == task, "tasks_merged"].iloc[0])
        print(f"  mask update for {task} ({seen} merged tasks): {seconds * 1e3:.0f} ms median")
    print(f"  total {calm.seconds:.1f} s  (pseudo-labelling and rule {calm.seconds - staged:.1f} s, "
          f"stages {staged:.1f} s)")

    ada = run_merge(space, "adamerging", {"steps": args.ada_steps, "amp": amp, "seed": args.seed}, context=context)
    ada_step = float(ada.tables["history"]["seconds"].iloc[1:].median() if args.ada_steps > 1
                     else ada.tables["history"]["seconds"].iloc[0])
    print(f"AdaMerging layer-wise: {ada_step * 1e3:.0f} ms per step (median of {args.ada_steps}; 16 × 2 images per "
          f"task); 500 steps ≈ {500 * ada_step:.0f} s")
    numbers = {"device": str(device), "model": args.model, "P": space.P, "T": space.T, "images": args.images,
               "calm_params": calm_params, "calm_total_s": calm.seconds, "calm_stage_s": staged,
               "calm_update_ms": {k: v * 1e3 for k, v in per_update.items()},
               "adamerging_step_ms": ada_step * 1e3}
    if device.type == "cuda":
        numbers["peak_gpu_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        print(f"peak GPU memory {numbers['peak_gpu_gib']:.1f} GiB")
    if args.json:
        Path(args.json).write_text(json.dumps(numbers, indent=2))
    return numbers


if __name__ == "__main__":
    main()
