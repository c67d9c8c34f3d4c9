"""A tiny open_clip ViT zoo written to disk for the checkpoint/zoo/evaluation tests (not a test module)."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file

TINY = "mergescope-test-tiny-vit"
TINY_CONFIG = {"embed_dim": 16,
               "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "patch_size": 8, "head_width": 16},
               "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
CLASSES = ["cat", "dog", "bird"]


def tiny_clip(seed: int = 0):
    from merging.manifest import Architecture
    from merging.models import build_clip

    torch.manual_seed(seed)
    return build_clip(Architecture(TINY, TINY_CONFIG))


def write_images(folder: Path, n_per_class: int, seed: int, classes=CLASSES) -> list[tuple[str, str]]:
    rng = np.random.default_rng(seed)
    rows = []
    for c, name in enumerate(classes):
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            pixels = rng.integers(0, 256, size=(40, 36, 3), dtype=np.uint8)
            pixels[..., c] = 255 - c * 40  # a class-dependent channel so heads can separate them
            path = folder / name / f"{i}.png"
            Image.fromarray(pixels).save(path)
            rows.append((f"{folder.name}/{name}/{i}.png", name))
    return rows


def make_tiny_zoo(root: Path, n_tasks: int = 2, n_per_class: int = 3, noise: float = 0.02) -> Path:
    """Pretrained (full open_clip state dict), fine-tuned visual-only checkpoints, a weight head and zero-shot
    heads, ImageFolder and CSV splits; returns the manifest path."""
    root.mkdir(parents=True, exist_ok=True)
    model = tiny_clip()
    full = {k: v.detach().clone() for k, v in model.state_dict().items()}
    save_file(full, str(root / "pretrained.safetensors"))
    (root / "finetuned").mkdir(exist_ok=True)
    (root / "heads").mkdir(exist_ok=True)
    tasks = []
    for t in range(n_tasks):
        g = torch.Generator().manual_seed(100 + t)
        visual = {k[len("visual."):]: v + noise * torch.randn(v.shape, generator=g)
                  for k, v in full.items() if k.startswith("visual.")}
        save_file(visual, str(root / "finetuned" / f"task{t}.safetensors"))
        task = {"name": f"task{t}", "finetuned": f"finetuned/task{t}.safetensors", "classnames": CLASSES}
        data = root / "data" / f"task{t}"
        if t % 2 == 0:
            save_file({"weight": torch.randn(len(CLASSES), 16, generator=g), "bias": torch.randn(3, generator=g)},
                      str(root / "heads" / f"task{t}.safetensors"))
            task["head"] = {"weights": f"heads/task{t}.safetensors"}
            write_images(data / "val", n_per_class, seed=10 * t)
            write_images(data / "test", n_per_class, seed=10 * t + 1)
            task["data"] = {"val": {"imagefolder": f"data/task{t}/val"}, "test": {"imagefolder": f"data/task{t}/test"}}
        else:
            task["head"] = {"templates": ["a photo of a {}.", "a {} in the wild."]}
            task["data"] = {}
            for k, split in enumerate(("val", "test")):
                rows = write_images(data / split, n_per_class, seed=10 * t + k)
                with open(data / f"{split}.csv", "w", newline="") as handle:
                    writer = csv.writer(handle)
                    writer.writerow(["path", "label"])
                    writer.writerows(rows if k == 0 else [(p, CLASSES.index(c)) for p, c in rows])
                task["data"][split] = {"csv": f"data/task{t}/{split}.csv"}
        tasks.append(task)
    manifest = {"format": "mergescope-zoo/1", "name": "tiny",
                "architecture": {"open_clip": TINY, "config": TINY_CONFIG},
                "preprocess": {"image_size": 32},
                "pretrained": "pretrained.safetensors", "tasks": tasks}
    (root / "zoo.json").write_text(json.dumps(manifest, indent=1))
    return root / "zoo.json"
