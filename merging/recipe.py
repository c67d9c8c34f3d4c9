"""Recipes: one merge fully described by a small YAML file, to rerun it bit for bit or send it to a colleague.

```yaml
format: mergescope-recipe/1
zoo: /data/demo-zoo               # or: pretrained: θ0.safetensors + finetuned: {task: file, ...}
tasks: [digits, letters]
method: ties
params: {k: 20.0, merge: mean, lam: 1.0}   # every parameter of the method, resolved
modifiers: []                      # [{name: lines, params: {...}}], applied in order
selection: {split: val, grid: [0.8, 1.0], chosen: {lam: 1.0}}   # how params were chosen (informative)
data: null                         # the split a data-driven method adapts on: val, train or test (test-time)
dtype: float32
seed: 0                            # the method's seed parameter when it has one, else null
inputs: {pretrained.safetensors: <sha256>, finetuned/digits.safetensors: <sha256>, ...}
versions: {mergescope: 0.1.0, torch: 2.14.1, ...}
```

Paths are relative to the recipe's folder when they lie inside it, absolute otherwise (a colleague points
``--zoo`` / ``--pretrained`` / ``--finetuned`` at their own copies; the digests say whether they are the same).
``inputs`` holds the sha256 of every checkpoint the merge reads, keyed like the paths, and
:func:`verify_inputs` refuses a file whose digest differs.  Loading uses ``yaml.safe_load`` (no code runs)
and rejects unknown keys and wrong types by name.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

FORMAT = "mergescope-recipe/1"
MAX_BYTES = 1 << 20  # a recipe is a few hundred bytes; refuse anything large before parsing it
_KEYS = {"format", "zoo", "pretrained", "finetuned", "tasks", "method", "params", "modifiers", "selection",
         "data", "dtype", "seed", "inputs", "versions"}
DATA_SPLITS = ("val", "train", "test")  # a data-driven method's unlabeled images (test: the official codes' protocol)


class RecipeError(ValueError):
    """A recipe file that cannot be read or reproduced (names the file and the field)."""


@dataclass
class Recipe:
    method: str
    params: dict
    tasks: list[str]
    zoo: Path | None = None
    pretrained: Path | None = None
    finetuned: dict[str, Path] = field(default_factory=dict)
    modifiers: list[tuple[str, dict]] = field(default_factory=list)
    selection: dict | None = None
    data: str | None = None  # the split a data-driven method adapted on; None for data-free methods
    dtype: str = "float32"
    seed: int | None = None
    inputs: dict[str, str] = field(default_factory=dict)  # recipe-relative path → sha256
    versions: dict[str, str] = field(default_factory=dict)


def file_sha256(path: str | os.PathLike, block: int = 1 << 22) -> str:
    """The file's sha256; for a Hugging Face checkpoint folder, the sha256 of its files' names and digests
    (index and shards, see :func:`merging.checkpoints.hf_folder.checkpoint_files`)."""
    if Path(path).is_dir():
        from .checkpoints.hf_folder import checkpoint_files

        listing = "".join(f"{file.relative_to(path).as_posix()}\0{file_sha256(file, block)}\n"
                          for file in checkpoint_files(path))
        return hashlib.sha256(listing.encode("utf-8")).hexdigest()
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(block):
            digest.update(chunk)
    return digest.hexdigest()


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"mergescope": _project_version()}
    for name in ("torch", "open_clip_torch", "numpy", "safetensors"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


def _project_version() -> str:
    import tomllib

    pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
    try:
        return str(tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]["version"])
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        return "unknown"


def _relative(path: Path, folder: Path) -> str:
    path = Path(path).resolve()
    return path.relative_to(folder).as_posix() if path.is_relative_to(folder) else str(path)


def make_recipe(target: str | os.PathLike, method: str, params: Mapping[str, Any], tasks: Sequence[str],
                checkpoints: Mapping[str, str | os.PathLike], *, zoo: str | os.PathLike | None = None,
                pretrained: str | os.PathLike | None = None, finetuned: Mapping[str, str | os.PathLike] | None = None,
                modifiers: Sequence[tuple[str, Mapping]] = (), selection: Mapping | None = None,
                data: str | None = None, dtype: str = "float32") -> dict:
    """The recipe (a plain dict, ready for YAML) of a merge, with paths relative to ``target``'s folder.

    ``checkpoints`` maps "pretrained" and every task name to the file the merge read (hashed here)."""
    folder = Path(target).resolve().parent
    recipe: dict[str, Any] = {"format": FORMAT}
    if zoo is not None:
        recipe["zoo"] = _relative(Path(zoo), folder)
    else:
        recipe["pretrained"] = _relative(Path(pretrained), folder)
        recipe["finetuned"] = {t: _relative(Path(p), folder) for t, p in (finetuned or {}).items()}
    params = {k: (list(v) if isinstance(v, tuple) else v) for k, v in params.items()}
    recipe.update({
        "tasks": list(tasks), "method": method, "params": params,
        "modifiers": [{"name": name, "params": dict(p)} for name, p in modifiers],
        "selection": dict(selection) if selection else None, "data": data, "dtype": dtype,
        "seed": params.get("seed"),
        "inputs": {_relative(Path(p), folder): file_sha256(p) for p in dict.fromkeys(checkpoints.values())},
        "versions": versions()})
    return recipe


def write_recipe(path: str | os.PathLike, recipe: Mapping) -> Path:
    import yaml

    from .atomic import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_text(yaml.safe_dump(dict(recipe), sort_keys=False, allow_unicode=True), encoding="utf-8")
    return Path(path)


def load_recipe(path: str | os.PathLike) -> Recipe:
    """Read and check a recipe file; every problem is one :class:`RecipeError` line naming the file."""
    import yaml

    path = Path(path)
    name = path.name
    try:
        if path.stat().st_size > MAX_BYTES:
            raise RecipeError(f"recipe {name}: {path.stat().st_size:,} bytes is too large for a recipe")
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RecipeError(f"recipe {name}: no such file") from None
    except (OSError, UnicodeDecodeError) as error:
        raise RecipeError(f"recipe {name}: cannot be read ({type(error).__name__})") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise RecipeError(f"recipe {name}: not valid YAML{where}") from None
    if not isinstance(data, dict):
        raise RecipeError(f"recipe {name}: expected a mapping of fields, got {type(data).__name__}")
    if data.get("format") != FORMAT:
        raise RecipeError(f"recipe {name}: format must be {FORMAT!r}")
    unknown = sorted(set(map(str, data)) - _KEYS)
    if unknown:
        raise RecipeError(f"recipe {name}: unknown field(s) {', '.join(unknown)}")
    folder = path.resolve().parent

    def typed(key, kind, default=None, required=False):
        if key not in data or data[key] is None:
            if required:
                raise RecipeError(f"recipe {name}: field {key!r} is required")
            return default
        if not isinstance(data[key], kind):
            raise RecipeError(f"recipe {name}: field {key!r} must be {getattr(kind, '__name__', kind)}")
        return data[key]

    def resolve(value: str, key: str) -> Path:
        if not isinstance(value, str) or not value:
            raise RecipeError(f"recipe {name}: field {key!r} must be a path")
        return (folder / value) if not Path(value).is_absolute() else Path(value)

    tasks = typed("tasks", list, required=True)
    if not tasks or not all(isinstance(t, str) and t for t in tasks) or len(set(tasks)) != len(tasks):
        raise RecipeError(f"recipe {name}: field 'tasks' must list distinct task names")
    zoo, pretrained, finetuned = typed("zoo", str), typed("pretrained", str), typed("finetuned", dict, {})
    if (zoo is None) == (pretrained is None):
        raise RecipeError(f"recipe {name}: give either 'zoo' or 'pretrained' + 'finetuned'")
    if pretrained is not None and set(finetuned) != set(tasks):
        raise RecipeError(f"recipe {name}: field 'finetuned' must name one checkpoint per task")
    modifiers = []
    for i, item in enumerate(typed("modifiers", list, [])):
        if not (isinstance(item, dict) and isinstance(item.get("name"), str)
                and isinstance(item.get("params", {}), dict)):
            raise RecipeError(f"recipe {name}: modifiers[{i}] must be {{name: ..., params: {{...}}}}")
        modifiers.append((item["name"], dict(item.get("params") or {})))
    inputs = typed("inputs", dict, {})
    if not all(isinstance(k, str) and isinstance(v, str) and len(v) == 64 for k, v in inputs.items()):
        raise RecipeError(f"recipe {name}: field 'inputs' must map paths to sha256 hex digests")
    seed, data_split = typed("seed", int), typed("data", str)
    if data_split is not None and data_split not in DATA_SPLITS:
        raise RecipeError(f"recipe {name}: field 'data' must be one of {', '.join(DATA_SPLITS)}")
    return Recipe(method=typed("method", str, required=True), params=dict(typed("params", dict, {})),
                  tasks=list(tasks), zoo=resolve(zoo, "zoo") if zoo is not None else None,
                  pretrained=resolve(pretrained, "pretrained") if pretrained is not None else None,
                  finetuned={t: resolve(p, f"finetuned.{t}") for t, p in finetuned.items()},
                  modifiers=modifiers, selection=typed("selection", dict), data=data_split,
                  dtype=typed("dtype", str, "float32"),
                  seed=seed, inputs={str(resolve(k, "inputs")): v for k, v in inputs.items()},
                  versions={str(k): str(v) for k, v in typed("versions", dict, {}).items()})


def verify_inputs(recipe: Recipe, used: Sequence[str | os.PathLike]) -> None:
    """Check that every file a rerun reads has the digest the recipe recorded (by path, else by content)."""
    recorded = {Path(p).resolve(): digest for p, digest in recipe.inputs.items()}
    digests = set(recorded.values())
    for path in used:
        path = Path(path).resolve()
        digest = file_sha256(path)
        if path in recorded and recorded[path] != digest:
            raise RecipeError(f"{path.name}: sha256 differs from the recipe's ({digest[:12]}… vs "
                              f"{recorded[path][:12]}…): not the checkpoint the recipe was made with")
        if path not in recorded and digest not in digests:
            raise RecipeError(f"{path.name}: not one of the checkpoints the recipe was made with (sha256)")
