"""Evaluation throughput (images/s) of a ViT-B/32 encoder + head at 224×224 through ``merging.evaluation``.

Random-init open_clip ViT-B-32-quickgelu (no download), synthetic images.  Side by side in one run, medians of
``--repeats``: the :class:`merging.evaluation.Evaluator` (split cached on the device, inference mode, autocast on
CUDA) and a plain loop (DataLoader → model → head per batch, ``torch.no_grad``, float32), plus the Evaluator
without autocast on CUDA.

    python bench/eval_bench.py                      # CPU (and CUDA when present)
    python bench/eval_bench.py --device cuda --images 16384 --batch 1024
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import torch  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from merging.evaluation import Evaluator  # noqa: E402
from merging.heads import ClassificationHead  # noqa: E402
from merging.manifest import Architecture  # noqa: E402
from merging.models import build_clip, build_visual  # noqa: E402

ARCH = Architecture("ViT-B-32-quickgelu")


class SyntheticZoo:
    """The part of the Zoo API the Evaluator uses, over random weights and random 224×224 images."""

    def __init__(self, images: int, classes: int = 10):
        torch.manual_seed(0)
        self.architecture = ARCH
        self.state = build_clip(ARCH).visual.state_dict()
        self.head_weight = torch.randn(classes, 512)
        self.images = torch.randn(images, 3, 224, 224)
        self.labels = torch.randint(0, classes, (images,))
        self.task_names = ["synthetic"]

    def encoder(self, device):
        return build_visual(ARCH, self.state, device)

    def head(self, task, device):
        return ClassificationHead(self.head_weight).to(device)

    def dataset(self, task, split):
        return TensorDataset(self.images, self.labels)


def timed(fn, repeats: int, device: torch.device) -> float:
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def plain_loop(zoo: SyntheticZoo, device: torch.device, batch: int) -> None:
    model, head = zoo.encoder(device), zoo.head("synthetic", device)
    correct = 0
    with torch.no_grad():
        for images, labels in DataLoader(zoo.dataset("synthetic", "test"), batch_size=batch):
            logits = head(model(images.to(device)))
            correct += int((logits.argmax(1).cpu() == labels).sum())


def bench(device: torch.device, images: int, batch: int, repeats: int) -> None:
    zoo = SyntheticZoo(images)
    rows = {}
    for amp in ((True, False) if device.type == "cuda" else (False,)):
        ev = Evaluator(zoo, device=device, batch_size=batch, amp=amp)
        ev.accuracy("synthetic", "test")  # warm-up, fills the device cache
        rows[f"Evaluator ({'autocast fp16' if amp else 'fp32'})"] = timed(
            lambda: ev.accuracy("synthetic", "test"), repeats, device)
    plain_loop(zoo, device, batch)  # warm-up
    rows["plain loop (fp32, no_grad)"] = timed(lambda: plain_loop(zoo, device, batch), repeats, device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"\nViT-B/32 224x224, {images} images, batch {batch}, median of {repeats}, {name}")
    base = rows["plain loop (fp32, no_grad)"]
    for label, seconds in rows.items():
        print(f"  {label:32s} {images / seconds:10.1f} images/s   ({base / seconds:.2f}x plain loop)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--images", type=int, default=None, help="default: 96 on CPU, 16384 on CUDA")
    parser.add_argument("--batch", type=int, default=None, help="default: 32 on CPU, 1024 on CUDA")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    devices = ([torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
               if args.device == "auto" else [torch.device(args.device)])
    for device in devices:
        gpu = device.type == "cuda"
        bench(device, args.images or (16384 if gpu else 96), args.batch or (1024 if gpu else 32), args.repeats)


if __name__ == "__main__":
    main()
