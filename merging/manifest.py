"""The zoo manifest (``zoo.json`` / ``zoo.yaml``): architecture, checkpoints, heads and datasets of a model zoo.

Schema ``mergescope-zoo/1`` (see docs/architecture.md); paths are relative to the manifest's folder.
:func:`load_manifest` validates it and raises :class:`ManifestError` naming the file and field;
:func:`infer_manifest` builds one from a folder's contents and reports what it found.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FORMAT = "mergescope-zoo/1"
MANIFEST_NAMES = ("zoo.json", "zoo.yaml", "zoo.yml")
SPLITS = ("train", "val", "test")
CHECKPOINT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")
_TASK_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


class ManifestError(ValueError):
    """An invalid or incomplete zoo manifest (the message names the file and the field)."""


@dataclass(frozen=True)
class Architecture:
    name: str  # an open_clip model name (registered from ``config`` when given)
    config: dict | None = None


@dataclass(frozen=True)
class Preprocess:
    image_size: int | None = None  # None: the architecture's
    mean: tuple[float, ...] | None = None  # None: OpenAI CLIP's
    std: tuple[float, ...] | None = None
    interpolation: str = "bicubic"
    resize_mode: str = "shortest"


@dataclass(frozen=True)
class HeadSpec:
    weights: Path | None = None
    templates: tuple[str, ...] | None = None


@dataclass(frozen=True)
class SplitSpec:
    kind: str  # "imagefolder" | "csv"
    path: Path


@dataclass
class TaskSpec:
    name: str
    finetuned: Path
    classnames: list[str] | None = None
    head: HeadSpec | None = None
    data: dict[str, SplitSpec] = field(default_factory=dict)
    recorded: dict[str, Any] = field(default_factory=dict)


@dataclass
class Manifest:
    name: str
    root: Path
    architecture: Architecture
    pretrained: Path
    tasks: list[TaskSpec]
    preprocess: Preprocess = Preprocess()
    path: Path | None = None  # the manifest file; None when inferred

    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]

    def task(self, name: str) -> TaskSpec:
        for spec in self.tasks:
            if spec.name == name:
                return spec
        raise KeyError(f"unknown task {name!r}; the zoo has {', '.join(self.task_names)}")

    def to_dict(self) -> dict:
        """The JSON form (paths relative to ``root``)."""
        rel = lambda p: os.path.relpath(p, self.root)  # noqa: E731
        arch = {"open_clip": self.architecture.name, **({"config": self.architecture.config}
                                                       if self.architecture.config else {})}
        pre = {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(self.preprocess).items()
               if v is not None and v != getattr(Preprocess(), k)}
        tasks = []
        for t in self.tasks:
            item = {"name": t.name, "finetuned": rel(t.finetuned)}
            if t.classnames:
                item["classnames"] = list(t.classnames)
            if t.head is not None:
                item["head"] = ({"weights": rel(t.head.weights)} if t.head.weights else
                                {"templates": list(t.head.templates)})
            if t.data:
                item["data"] = {s: {d.kind: rel(d.path)} for s, d in t.data.items()}
            if t.recorded:
                item["recorded"] = dict(t.recorded)
            tasks.append(item)
        return {"format": FORMAT, "name": self.name, "architecture": arch, **({"preprocess": pre} if pre else {}),
                "pretrained": rel(self.pretrained), "tasks": tasks}


# ---------------------------------------------------------------------------------------------------- loading
def find_manifest(folder: str | os.PathLike) -> Path | None:
    for name in MANIFEST_NAMES:
        if (Path(folder) / name).is_file():
            return Path(folder) / name
    return None


def load_manifest(path: str | os.PathLike) -> Manifest:
    """Read and validate a manifest file (JSON, or YAML by suffix)."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{path}: manifest file not found")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix in (".yaml", ".yml"):
            import yaml
            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as exc:  # json.JSONDecodeError / yaml.YAMLError
        raise ManifestError(f"{path}: not valid {'YAML' if path.suffix != '.json' else 'JSON'}: {exc}") from None
    return parse_manifest(data, path.parent, path)


def parse_manifest(data: Any, root: str | os.PathLike, source: str | os.PathLike | None = None) -> Manifest:
    """Validate a manifest dict; paths resolve against ``root``."""
    root = Path(root)
    where = str(source or root)
    err = lambda field_, msg: ManifestError(f"{where}: {field_}: {msg}")  # noqa: E731
    if not isinstance(data, dict):
        raise ManifestError(f"{where}: the manifest must be a JSON/YAML object")
    known = {"format", "name", "architecture", "preprocess", "pretrained", "tasks"}
    if set(data) - known:
        raise err(", ".join(sorted(set(data) - known)), f"unknown field(s); allowed: {', '.join(sorted(known))}")
    if data.get("format", FORMAT) != FORMAT:
        raise err("format", f"{data['format']!r} is not supported (expected {FORMAT!r})")

    def file(value, field_: str, folder: bool = False) -> Path:
        if not isinstance(value, str) or not value:
            raise err(field_, "expected a path (string)")
        full = (root / value).resolve()
        if folder and not full.is_dir():
            raise err(field_, f"folder not found: {full}")
        if not folder and not full.is_file():
            raise err(field_, f"file not found: {full}")
        return full

    arch = data.get("architecture")
    if isinstance(arch, str):
        arch = {"open_clip": arch}
    if not isinstance(arch, dict) or not isinstance(arch.get("open_clip"), str):
        raise err("architecture", 'expected {"open_clip": "<model name>"} (optionally with "config")')
    config = arch.get("config")
    if config is not None and not (isinstance(config, dict) and {"embed_dim", "vision_cfg"} <= set(config)):
        raise err("architecture.config", "an open_clip model config needs embed_dim, vision_cfg (and text_cfg)")
    architecture = Architecture(arch["open_clip"], config)

    pre = data.get("preprocess") or {}
    if not isinstance(pre, dict) or set(pre) - set(vars(Preprocess())):
        raise err("preprocess", f"allowed keys: {', '.join(vars(Preprocess()))}")
    for key in ("mean", "std"):
        if key in pre and (not isinstance(pre[key], list) or len(pre[key]) != 3):
            raise err(f"preprocess.{key}", "expected a list of 3 numbers")
    if "std" in pre and any(float(s) <= 0 for s in pre["std"]):
        raise err("preprocess.std", "must be positive")
    if "image_size" in pre and (not isinstance(pre["image_size"], int) or pre["image_size"] <= 0):
        raise err("preprocess.image_size", "expected a positive integer")
    preprocess = Preprocess(**{k: tuple(map(float, v)) if k in ("mean", "std") else v for k, v in pre.items()})

    tasks_raw = data.get("tasks")
    if not isinstance(tasks_raw, list) or not tasks_raw:
        raise err("tasks", "expected a non-empty list of tasks")
    tasks, seen = [], set()
    for i, item in enumerate(tasks_raw):
        at = f"tasks[{i}]"
        if not isinstance(item, dict):
            raise err(at, "expected an object")
        unknown = set(item) - {"name", "finetuned", "classnames", "head", "data", "recorded"}
        if unknown:
            raise err(at, f"unknown field(s) {', '.join(sorted(unknown))}")
        name = item.get("name")
        if not isinstance(name, str) or not _TASK_NAME.match(name):
            raise err(f"{at}.name", "expected a name of letters, digits, '_', '-', '.'")
        if name in seen:
            raise err(f"{at}.name", f"duplicate task {name!r}")
        seen.add(name)
        at = f"tasks[{i}] ({name})"
        classnames = item.get("classnames")
        if classnames is not None and (not isinstance(classnames, list) or not classnames
                                       or not all(isinstance(c, str) for c in classnames)):
            raise err(f"{at}.classnames", "expected a non-empty list of strings")
        head = None
        if "head" in item:
            h = item["head"]
            if not isinstance(h, dict) or len(set(h) & {"weights", "templates"}) != 1 or set(h) - {"weights",
                                                                                                  "templates"}:
                raise err(f"{at}.head", 'expected {"weights": file} or {"templates": [...]}')
            if "weights" in h:
                head = HeadSpec(weights=file(h["weights"], f"{at}.head.weights"))
            else:
                templates = h["templates"]
                if (not isinstance(templates, list) or not templates
                        or not all(isinstance(t, str) and "{}" in t for t in templates)):
                    raise err(f"{at}.head.templates", 'expected a list of strings with a "{}" for the class name')
                if not classnames:
                    raise err(f"{at}.classnames", "a zero-shot head (templates) needs classnames")
                head = HeadSpec(templates=tuple(templates))
        splits = {}
        for split, spec in (item.get("data") or {}).items():
            if split not in SPLITS:
                raise err(f"{at}.data", f"unknown split {split!r}; use {', '.join(SPLITS)}")
            if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in ("imagefolder", "csv"):
                raise err(f"{at}.data.{split}", 'expected {"imagefolder": dir} or {"csv": file}')
            kind, value = next(iter(spec.items()))
            splits[split] = SplitSpec(kind, file(value, f"{at}.data.{split}.{kind}", folder=kind == "imagefolder"))
        recorded = item.get("recorded") or {}
        if not isinstance(recorded, dict):
            raise err(f"{at}.recorded", "expected an object")
        tasks.append(TaskSpec(name, file(item.get("finetuned"), f"{at}.finetuned"), classnames, head, splits,
                              recorded))
    pretrained = file(data.get("pretrained"), "pretrained")
    name = data.get("name") or root.resolve().name
    return Manifest(str(name), root.resolve(), architecture, pretrained, tasks, preprocess,
                    Path(source) if source else None)


# ---------------------------------------------------------------------------------------------------- inference
_PRETRAINED_STEMS = ("pretrained", "zeroshot", "zero_shot", "base", "pretrained_model", "open_clip_model")
_TASK_FILE_STEMS = ("finetuned", "model", "pytorch_model", "open_clip_model", "open_clip_pytorch_model")


def _checkpoints_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in CHECKPOINT_SUFFIXES
                  and not p.name.startswith("."))


def infer_manifest(folder: str | os.PathLike, architecture: Architecture | None = None) -> tuple[Manifest, list[str]]:
    """Guess a manifest from a folder: ``pretrained.*``/``zeroshot.pt``, fine-tuned checkpoints as
    ``finetuned/<task>.*`` or ``<task>/finetuned.pt`` (task_vectors) or ``<task>/model.safetensors``, heads as
    ``heads/<task>.*`` or ``head_<task>.pt``, data as ``data/<task>/<split>/`` or ``data/<task>/<split>.csv``.
    Returns the manifest and a report (one line per finding).  The architecture is read from the pretrained
    checkpoint's shapes unless given."""
    root = Path(folder).resolve()
    if not root.is_dir():
        raise ManifestError(f"{root}: not a folder")
    report = [f"inferred a zoo manifest from {root} (no zoo.json found)"]
    top = _checkpoints_in(root)
    pretrained = next((p for p in top if p.stem.lower() in _PRETRAINED_STEMS), None)
    finetuned: dict[str, Path] = {}
    if (root / "finetuned").is_dir():
        finetuned = {p.stem: p for p in _checkpoints_in(root / "finetuned")}
    for sub in sorted(p for p in root.iterdir() if p.is_dir() and p.name not in ("finetuned", "heads", "data")
                      and not p.name.startswith(".")):
        files = _checkpoints_in(sub)
        stems = {p.stem: p for p in files}
        found = next((stems[s] for s in _TASK_FILE_STEMS if s in stems), files[0] if len(files) == 1 else None)
        if sub.name.lower() in _PRETRAINED_STEMS and found is not None:
            pretrained = pretrained or found
        elif found is not None:
            finetuned.setdefault(sub.name, found)
            if pretrained is None and "zeroshot" in stems:  # task_vectors keeps zeroshot.pt beside each task
                pretrained = stems["zeroshot"]
    if pretrained is None:
        raise ManifestError(f"{root}: no pretrained checkpoint found (looked for "
                            f"{', '.join(s + '.*' for s in _PRETRAINED_STEMS[:3])} at the top or in pretrained/)")
    report.append(f"pretrained checkpoint: {pretrained.relative_to(root)}")
    if not finetuned:
        raise ManifestError(f"{root}: no fine-tuned checkpoints found (finetuned/<task>.safetensors or "
                            "<task>/finetuned.pt)")
    tasks = []
    for name, path in finetuned.items():
        spec = TaskSpec(name, path)
        for candidate in ([root / "heads" / f"{name}{s}" for s in CHECKPOINT_SUFFIXES]
                          + [root / f"head_{name}.pt", root / name / f"head_{name}.pt"]):
            if candidate.is_file():
                spec.head = HeadSpec(weights=candidate)
                break
        data_dir = root / "data" / name
        for split in SPLITS:
            if (data_dir / split).is_dir():
                spec.data[split] = SplitSpec("imagefolder", data_dir / split)
            elif (data_dir / f"{split}.csv").is_file():
                spec.data[split] = SplitSpec("csv", data_dir / f"{split}.csv")
        folders = [s.path for s in spec.data.values() if s.kind == "imagefolder"]
        if folders:
            spec.classnames = sorted(p.name for p in folders[0].iterdir() if p.is_dir())
        report.append(f"task {name}: fine-tuned {path.relative_to(root)}; head "
                      f"{spec.head.weights.relative_to(root) if spec.head else 'none found'}; data splits "
                      f"{', '.join(f'{s} ({d.kind})' for s, d in spec.data.items()) or 'none found'}")
        tasks.append(spec)
    if architecture is None:
        architecture, note = infer_architecture(pretrained)
        report.append(note)
    else:
        report.append(f"architecture: {architecture.name} (given)")
    manifest = Manifest(root.name, root, architecture, pretrained, tasks)
    return manifest, report


def infer_architecture(pretrained: Path) -> tuple[Architecture, str]:
    """The open_clip model whose visual tower has exactly the pretrained checkpoint's keys and shapes.

    Only shapes are read (safetensors: the header; torch zip: a memory map).  Every open_clip config whose ViT
    width, depth, patch and image size agree is built on the meta device (no memory, no init; configs with the
    same vision tower share one build) and its visual ``state_dict`` shapes are compared key by key; when the file
    holds an open_clip text tower, its vocabulary, width, context length and depth must agree as well.  Among exact
    matches the plain name wins: open_clip text towers before Hugging Face ones (``mt5-``/``roberta-`` … need
    ``transformers``), then GELU vs QuickGELU by the file's layout, then the shortest name.  QuickGELU cannot be
    read from weights: OpenAI-derived fine-tunes (task_vectors pickles, Hugging Face CLIP files) get the
    ``-quickgelu`` variant, open_clip state dicts the plain one; set ``architecture`` in zoo.json to override."""
    from .checkpoints import inspect_checkpoint, load_checkpoint

    checkpoint = inspect_checkpoint(pretrained, keep_text=True) or load_checkpoint(pretrained, keep_text=True)
    visual = {k: tuple(v.shape) for k, v in checkpoint.visual.items()}
    if "conv1.weight" not in visual or "positional_embedding" not in visual or len(visual["conv1.weight"]) != 4:
        raise ManifestError(f"{pretrained}: cannot infer the architecture (not a ViT); set architecture in zoo.json")
    width, _, patch, _ = visual["conv1.weight"]
    image_size = int(round((visual["positional_embedding"][0] - 1) ** 0.5)) * patch
    layers = len({k.split(".")[2] for k in visual if k.startswith("transformer.resblocks.")})
    text = {k: tuple(v.shape) for k, v in checkpoint.text.items()}
    matches = [name for name, cfg in _open_clip_configs()
               if _visual_shapes_of(cfg, (width, layers, patch, image_size)) == visual and _text_agrees(cfg, text)]
    if not matches:
        raise ManifestError(f"{pretrained}: no open_clip config has this ViT's keys and shapes (width {width}, "
                            f"{layers} layers, patch {patch}, {image_size}px); set architecture (with config) in "
                            "zoo.json")
    openai_style = checkpoint.layout in ("task_vectors", "hf-clip", "hf-clip-vision")
    configs = dict(_open_clip_configs())
    rank = lambda name: ("hf_model_name" in configs[name].get("text_cfg", {}),  # noqa: E731
                         name.endswith("-quickgelu") != openai_style, len(name), name)
    matches.sort(key=rank)
    chosen = matches[0]
    note = (f"architecture: {chosen} (the pretrained checkpoint's keys and shapes: width {width}, {layers} layers, "
            f"patch {patch}, {image_size}px; exact matches {', '.join(matches)}; QuickGELU vs GELU cannot be read "
            f"from weights — set architecture in zoo.json if {chosen} is wrong)")
    return Architecture(chosen), note


def _open_clip_configs() -> list[tuple[str, dict]]:
    import open_clip

    return [(name, open_clip.get_model_config(name) or {}) for name in open_clip.list_models()]


_TOWER_SHAPES: dict[str, dict] = {}


def _visual_shapes_of(cfg: dict, coarse: tuple) -> dict | None:
    """A config's visual state-dict shapes (meta-device build, cached per tower), or None when its ViT width,
    depth, patch and image size already differ from ``coarse`` (or it is not an open_clip ViT)."""
    import json

    v = cfg.get("vision_cfg") or {}
    size = v.get("image_size", 224)
    if v.get("timm_model_name") or not isinstance(v.get("layers"), int) or (
            v.get("width", 768), v["layers"], v.get("patch_size", 16), size) != coarse:
        return None
    key = json.dumps([cfg.get("embed_dim"), v], sort_keys=True)
    if key not in _TOWER_SHAPES:
        import torch
        from open_clip.model import _build_vision_tower

        try:
            with torch.device("meta"):
                tower = _build_vision_tower(cfg["embed_dim"], v)
            _TOWER_SHAPES[key] = {k: tuple(t.shape) for k, t in tower.state_dict().items()}
        except Exception:  # a config open_clip itself cannot build here
            _TOWER_SHAPES[key] = {}
    return _TOWER_SHAPES[key]


def _text_agrees(cfg: dict, text: dict) -> bool:
    """No open_clip text tower in the file, or one with the config's vocabulary, width, context and depth."""
    if "token_embedding.weight" not in text:
        return True
    t = cfg.get("text_cfg") or {}
    if "hf_model_name" in t:
        return False
    layers = len({k.split(".")[2] for k in text if k.startswith("transformer.resblocks.")})
    return (text["token_embedding.weight"] == (t.get("vocab_size", 49408), t.get("width", 512))
            and text.get("positional_embedding", (None,))[0] == t.get("context_length", 77)
            and layers == t.get("layers", 12))
