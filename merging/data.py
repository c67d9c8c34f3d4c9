"""Per-task datasets from a manifest: an ImageFolder-style directory (one sub-folder per class) or a CSV of
``path,label`` rows (paths relative to the CSV; labels a class index or a class name), with open_clip's
evaluation preprocessing (resize, center crop, RGB, normalise)."""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch.utils.data import Dataset

from .manifest import Preprocess, SplitSpec

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")


class DataError(ValueError):
    """A dataset that cannot be read: missing folder, unknown label, unreadable image (the message names it)."""


def build_transform(preprocess: Preprocess, image_size: int) -> Callable:
    """open_clip's eval transform (``open_clip.image_transform(..., is_train=False)``)."""
    import open_clip

    return open_clip.image_transform(preprocess.image_size or image_size, is_train=False, mean=preprocess.mean,
                                     std=preprocess.std, resize_mode=preprocess.resize_mode,
                                     interpolation=preprocess.interpolation)


class ImageListDataset(Dataset):
    """(image tensor, label) for a list of (path, label)."""

    def __init__(self, samples: Sequence[tuple[Path, int]], transform: Callable | None, classnames: Sequence[str],
                 source: Path):
        if not samples:
            raise DataError(f"{source}: no images found")
        self.samples, self.transform, self.classnames, self.source = list(samples), transform, list(classnames), source

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def labels(self) -> list[int]:
        return [label for _, label in self.samples]

    def __getitem__(self, i: int):
        from PIL import Image, UnidentifiedImageError

        path, label = self.samples[i]
        try:
            with Image.open(path) as image:
                image.load()
                item = self.transform(image) if self.transform is not None else image.copy()
        except (OSError, UnidentifiedImageError) as exc:
            raise DataError(f"{path}: cannot read image ({exc})") from None
        return item, label


def _class_index(name: str, classnames: Sequence[str] | None, where: Path) -> int | None:
    if classnames and name in classnames:
        return list(classnames).index(name)
    if name.isdigit():
        return int(name)
    if classnames:
        raise DataError(f"{where}: label {name!r} is neither a class name of this task nor a class index")
    return None


def image_folder(root: Path, transform: Callable | None, classnames: Sequence[str] | None) -> ImageListDataset:
    """Class sub-folders named by class name (from ``classnames``) or index; otherwise sorted folder order."""
    if not root.is_dir():
        raise DataError(f"{root}: dataset folder not found")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise DataError(f"{root}: no class sub-folders")
    indices = [_class_index(p.name, classnames, root) for p in folders]
    if any(i is None for i in indices):
        indices = list(range(len(folders)))
    names = list(classnames) if classnames else [p.name for p in folders]
    samples = []
    for folder, label in zip(folders, indices):
        if label >= len(names) and classnames:
            raise DataError(f"{folder}: class index {label} but the task has {len(names)} classes")
        samples += [(p, label) for p in sorted(folder.rglob("*")) if p.suffix.lower() in IMAGE_SUFFIXES]
    return ImageListDataset(samples, transform, names, root)


def csv_dataset(path: Path, transform: Callable | None, classnames: Sequence[str] | None) -> ImageListDataset:
    """A CSV with a header row containing ``path`` and ``label`` columns."""
    if not path.is_file():
        raise DataError(f"{path}: CSV file not found")
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if not reader.fieldnames or not {"path", "label"} <= set(reader.fieldnames):
            raise DataError(f"{path}: the CSV needs a header with 'path' and 'label' columns")
        rows = list(reader)
    samples = []
    for line, row in enumerate(rows, start=2):
        image = (path.parent / row["path"]).resolve()
        if not image.is_file():
            raise DataError(f"{path}:{line}: image {row['path']!r} not found")
        label = _class_index(row["label"].strip(), classnames, Path(f"{path}:{line}"))
        if label is None:
            raise DataError(f"{path}:{line}: label {row['label']!r} is not a class index")
        samples.append((image, label))
    names = list(classnames) if classnames else [str(i) for i in range(max(l for _, l in samples) + 1)] \
        if samples else []
    return ImageListDataset(samples, transform, names, path)


def open_split(spec: SplitSpec, transform: Callable | None, classnames: Sequence[str] | None) -> ImageListDataset:
    return (image_folder if spec.kind == "imagefolder" else csv_dataset)(spec.path, transform, classnames)


def stack_dataset(dataset: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """All (images, labels) of a small dataset as two tensors."""
    images, labels = zip(*(dataset[i] for i in range(len(dataset))))
    return torch.stack(images), torch.tensor(labels)
