"""``python -m merging.zoo build``: regenerate the demo zoo (assets/demo-zoo) from seeds.

Steps: generate captioned pretraining images of all eight tasks' visual world and the tasks' images (train in
memory; val and test exported as ImageFolders), pretrain a miniature CLIP (image and text towers) on the captioned
images, build each task's zero-shot head from its class names and templates through the text tower, fine-tune one
image tower per task through its frozen head, save θ0 (both towers) and the fine-tuned image towers as float16
open_clip safetensors, and record the pretrained and fine-tuned accuracies that the zoo's own evaluation code
measures on the exported splits.  The new
zoo is assembled in a temporary sibling folder and swapped in only when complete.  Same seed, hardware class
(CPU or a given GPU model), library versions and CPU thread count (``BuildConfig.threads``: torch's CPU kernels
split reductions by thread, so 1 and 2 threads differ in the last bits) → the same bytes.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ...checkpoints import save_open_clip
from ...device import pick_device
from ...progress import as_progress
from . import tasks as demo_tasks
from ...heads import ClassificationHead, zero_shot_weights
from .train import ARCHITECTURE, FINETUNE, PRETRAIN, Schedule, finetune, pretrain, to_input, tokenize

DEFAULT_OUT = Path(__file__).resolve().parents[3] / "assets" / "demo-zoo"
ZOO_NAME = "mergescope demo zoo"
BUILD_THREADS = 2  # torch's intra-op CPU threads during a build (part of what makes the bytes reproducible)


@dataclass(frozen=True)
class BuildConfig:
    seed: int = 0
    n_pretrain: int = 5000  # captioned pretraining images per task, in memory only
    pretrain_shift: float = 1.0  # the fraction of them moved into the tasks' domain (θ0 knows the domain)
    caption_confusion: float = demo_tasks.CAPTION_CONFUSION  # odd classes named by their partner in pretraining
    n_train: int = 3000  # per task, in memory only (fine-tuning)
    n_val: int = 150  # per task, shipped (selection of λ, unlabeled data for CALM/AdaMerging)
    n_test: int = 300  # per task, shipped (reported accuracies)
    pretrain: Schedule = PRETRAIN
    finetune: Schedule = FINETUNE
    threads: int = BUILD_THREADS


def _fp16_round(state: dict) -> dict:
    return {k: v.detach().cpu().half() for k, v in state.items()}


def build(out: str | os.PathLike = DEFAULT_OUT, config: BuildConfig = BuildConfig(), device="auto",
          progress=None, log=print) -> dict:
    """Build the zoo into ``out`` (replacing it atomically); returns timings in seconds per stage."""
    from .. import load_zoo
    from ...evaluation import evaluate_baselines

    out, device, progress = Path(out), pick_device(device), as_progress(progress)
    out.parent.mkdir(parents=True, exist_ok=True)
    deterministic, threads = torch.are_deterministic_algorithms_enabled(), torch.get_num_threads()
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(config.threads)
    times, start = {}, time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.building-", dir=out.parent))
    try:
        names = list(demo_tasks.TASKS)
        train, pre_images, captions = {}, [], []
        for i, task in enumerate(names):
            progress(0.1 * i / len(names), f"generating {task}")
            images, text = demo_tasks.pretraining_pairs(task, config.n_pretrain, config.pretrain_shift, config.seed,
                                                        config.caption_confusion)
            pre_images.append(to_input(images))
            captions += text
            images, labels = demo_tasks.generate(task, "train", config.n_train, config.seed)
            train[task] = (to_input(images), torch.from_numpy(labels))
            for split, n in (("val", config.n_val), ("test", config.n_test)):
                demo_tasks.export_imagefolder(task, split, n, tmp / "data" / task / split, config.seed)
        times["data"] = time.perf_counter() - start

        clip = pretrain(torch.cat(pre_images), tokenize(captions), config.pretrain, config.seed, device,
                        progress.sub(0.1, 0.5))
        theta0 = _fp16_round(clip.state_dict())  # heads and fine-tuning start from the shipped θ0
        clip.load_state_dict({k: v.float() for k, v in theta0.items()})
        save_open_clip(tmp / "pretrained.safetensors", {k[7:]: v for k, v in theta0.items() if k.startswith("visual.")},
                       {k: v for k, v in theta0.items() if not k.startswith("visual.")})
        times["pretrain"] = time.perf_counter() - start - times["data"]
        log(f"pretrained θ0 in {times['pretrain']:.0f} s")

        manifest_tasks = []
        for i, task in enumerate(names):
            generator = demo_tasks.TASKS[task]
            x, y = train[task]
            head = ClassificationHead(zero_shot_weights(clip, tokenize, generator.classnames, generator.templates,
                                                        device))
            state = finetune(clip.visual, head, x, y, config.finetune, config.seed + 1000 * (i + 1),
                             progress.sub(0.5 + 0.4 * i / len(names), 0.5 + 0.4 * (i + 1) / len(names)))
            save_open_clip(tmp / "finetuned" / f"{task}.safetensors", _fp16_round(state))
            manifest_tasks.append({
                "name": task, "finetuned": f"finetuned/{task}.safetensors", "classnames": list(generator.classnames),
                "head": {"templates": list(generator.templates)},
                "data": {s: {"imagefolder": f"data/{task}/{s}"} for s in ("val", "test")},
                "recorded": {"description": generator.description}})
        times["finetune"] = time.perf_counter() - start - times["data"] - times["pretrain"]
        log(f"fine-tuned {len(names)} towers in {times['finetune']:.0f} s")

        manifest = {"format": "mergescope-zoo/1", "name": ZOO_NAME,
                    "architecture": {"open_clip": ARCHITECTURE.name, "config": ARCHITECTURE.config},
                    "pretrained": "pretrained.safetensors", "tasks": manifest_tasks}
        _write_json(tmp / "zoo.json", manifest)
        zoo = load_zoo(tmp)
        for split in ("val", "test"):
            table = evaluate_baselines(zoo, split=split, device=device, progress=progress.sub(0.9, 1.0))
            for item, row in zip(manifest_tasks, table.itertuples()):
                item["recorded"][f"pretrained_{split}_acc"] = round(float(row.pretrained), 6)
                item["recorded"][f"finetuned_{split}_acc"] = round(float(row.finetuned), 6)
        _write_json(tmp / "zoo.json", manifest)
        times["total"] = time.perf_counter() - start
        _swap_in(tmp, out)
    finally:
        torch.use_deterministic_algorithms(deterministic)
        torch.set_num_threads(threads)
        if tmp.exists():
            shutil.rmtree(tmp)
    progress(1.0, "demo zoo built")
    return times


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")


def _swap_in(tmp: Path, out: Path) -> None:
    """Replace ``out`` by ``tmp``: the old folder is moved aside first and deleted only after the rename."""
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.replace(out, old / out.name)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old)


def digests(folder: str | os.PathLike) -> dict[str, str]:
    """sha256 of every file under ``folder`` (relative path → hex digest)."""
    folder = Path(folder)
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}
