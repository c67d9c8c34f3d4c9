"""Recipes in the dashboard: a run's recipe YAML (the file ``python -m merging merge --recipe`` reads and writes,
:mod:`merging.recipe`), and an uploaded recipe turned into the Merge tab's settings.

A downloaded recipe names its paths relative to the zoo's folder (``zoo: .``, ``inputs: {pretrained.safetensors:
<sha256>, …}``), never a server path: put the recipe in a copy of the zoo, or point ``--zoo`` at one; the sha256
digests say whether it is the same zoo.  No gradio here.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from merging.params import ParameterError, applicable, resolve_params
from merging.recipe import RecipeError, file_sha256, load_recipe, make_recipe, write_recipe
from merging.registry import UnknownMethodError, get_method, resolve_modifiers

from .service import UserError, safe_name

if TYPE_CHECKING:
    from .service import Service, ZooEntry

SUFFIX = ".recipe.yaml"


def checkpoint_files(entry: "ZooEntry", tasks) -> dict[str, Path]:
    """"pretrained" and each task → the checkpoint file a merge of ``tasks`` reads (as the CLI records them)."""
    manifest = entry.zoo.manifest
    return {"pretrained": manifest.pretrained, **{t: manifest.task(t).finetuned for t in tasks}}


def export_recipe(service: "Service", run_id: int, viewer: str, folder: Path | None = None) -> Path:
    """Write the recipe of one of ``viewer``'s runs (or a shared run) as ``run<N>-<method>.recipe.yaml``."""
    record = service.history.get(run_id, viewer)
    entry = service.entry_for(record, viewer, "download its recipe")
    spec = get_method(record.method)
    params = resolve_params(spec.params, record.params, len(record.tasks))  # every parameter, as the CLI writes
    modifiers = [(m.name, values) for m, values in
                 resolve_modifiers([(m["name"], m["params"]) for m in record.modifiers], len(record.tasks))]
    recipe = make_recipe(entry.zoo.root / "run.recipe.yaml", spec.name, params, record.tasks,
                         checkpoint_files(entry, record.tasks), zoo=entry.path, modifiers=modifiers,
                         data=service.data_split(entry, spec, record.tasks))
    target = Path(folder or service.session_dir(viewer) / "exports") / f"run{record.id}-{safe_name(spec.name)}{SUFFIX}"
    return write_recipe(target, recipe)


def digest(path: str | Path) -> str:
    """sha256 of a checkpoint, computed once per (path, size, modification time)."""
    info = Path(path).stat()
    return _digest(str(Path(path).resolve()), info.st_size, info.st_mtime_ns)


@lru_cache(maxsize=256)
def _digest(path: str, size: int, mtime_ns: int) -> str:
    return file_sha256(path)


@dataclass
class Imported:
    """An uploaded recipe as the Merge tab's settings (``params``: the parameters that apply, validated;
    ``modifiers``: ``[{"name", "params"}]`` with each modifier's applicable parameters)."""

    method: str
    params: dict
    tasks: list[str]
    note: str
    modifiers: list[dict]


def import_recipe(service: "Service", path: str | Path, zoo_id: str, viewer: str) -> Imported:
    """Read an uploaded recipe and check it against the session's zoo: one :class:`UserError` line naming the
    file and the field otherwise.  The note says whether the zoo's checkpoints are the recipe's (sha256)."""
    name = Path(path).name
    try:
        recipe = load_recipe(path)
        spec = get_method(recipe.method)
    except (RecipeError, UnknownMethodError) as exc:
        raise UserError(f"recipe {name}: field 'method': {exc}" if isinstance(exc, UnknownMethodError)
                        else str(exc)) from None
    if len(recipe.modifiers) > 1:
        names = ", ".join(m for m, _ in recipe.modifiers)
        raise UserError(f"recipe {name}: field 'modifiers': the dashboard applies one modifier, the recipe has "
                        f"{len(recipe.modifiers)} ({names}); run it with python -m merging merge --recipe")
    try:
        modifiers = [{"name": m.name, "params": applicable(m.params, values)}
                     for m, values in resolve_modifiers(recipe.modifiers, len(recipe.tasks))]
    except (ParameterError, UnknownMethodError) as exc:
        raise UserError(f"recipe {name}: field 'modifiers': {exc.args[0] if isinstance(exc, KeyError) else exc}"
                        ) from None
    entry = service.zoo(zoo_id, viewer)
    missing = [t for t in recipe.tasks if t not in entry.zoo.task_names]
    if missing:
        raise UserError(f"recipe {name}: field 'tasks': {', '.join(missing[:5])} not in the loaded zoo "
                        f"{entry.name!r} (it has {', '.join(entry.zoo.task_names)})")
    try:
        params = resolve_params(spec.params, recipe.params, len(recipe.tasks))
    except ParameterError as exc:
        raise UserError(f"recipe {name}: field 'params': {exc}") from None
    params = applicable(spec.params, params)
    recorded = set(recipe.inputs.values())
    files = checkpoint_files(entry, recipe.tasks).values()
    same = bool(recorded) and all(digest(f) in recorded for f in files)
    note = ("the loaded zoo's checkpoints are the recipe's (sha256)" if same else
            "⚠️ the loaded zoo's checkpoints are not the ones the recipe was made with (sha256 differs): the "
            "merge will not reproduce it" if recorded else "the recipe records no checkpoint digests")
    with_modifier = "".join(f" + {m['name']}" for m in modifiers)
    return Imported(spec.name, params, list(recipe.tasks), f"Recipe {name}: {spec.title}{with_modifier} on "
                    f"{len(recipe.tasks)} tasks; {note}.", modifiers)
