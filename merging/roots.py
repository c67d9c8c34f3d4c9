"""Server-side zoo roots: the only folders a hosted dashboard opens zoos from.

A user's path is resolved inside the roots or refused.  Messages name paths as ``<root label>/<relative path>``
and say nothing about what lies outside the roots: a path outside them gets the same message whether or not it
exists, and nothing is expanded (``~`` is a plain name, ``/proc/self`` stays outside).  Every file or folder a
zoo manifest references (checkpoints, heads, data) must lie inside the roots too; :meth:`Roots.check_manifest`
looks before the manifest is parsed (parsing checks that the files exist), :meth:`Roots.check_zoo` after.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable

from .manifest import find_manifest


class RootError(ValueError):
    """A path outside the zoo roots, or nothing at a path inside them."""


class Roots:
    def __init__(self, folders: Iterable[str | os.PathLike]):
        self.folders: list[Path] = []
        for folder in folders:
            path = Path(folder).resolve()
            if path not in self.folders:
                self.folders.append(path)
        if not self.folders:
            raise RootError("no zoo roots configured")
        self.labels: list[str] = []
        for path in self.folders:
            label, n = path.name or "root", 2
            while label in self.labels:
                label, n = f"{path.name}-{n}", n + 1
            self.labels.append(label)

    def __iter__(self):
        return iter(self.folders)

    def describe(self) -> str:
        return ", ".join(self.labels)

    # ---------------------------------------------------------------- membership and display
    def root_of(self, path: str | os.PathLike) -> int | None:
        """Index of the root holding ``path`` (symlinks resolved), or None."""
        full = Path(path).resolve()
        for i, root in enumerate(self.folders):
            if full == root or root in full.parents:
                return i
        return None

    def contains(self, path: str | os.PathLike) -> bool:
        return self.root_of(path) is not None

    def display(self, path: str | os.PathLike) -> str:
        """``label/relative`` for a path inside the roots; a placeholder that reveals nothing otherwise."""
        i = self.root_of(path)
        if i is None:
            return "(outside the zoo roots)"
        rel = Path(path).resolve().relative_to(self.folders[i])
        return self.labels[i] + ("" if str(rel) == "." else f"/{rel.as_posix()}")

    def redact(self, message: str) -> str:
        """``message`` with every root's absolute path replaced by its label (longest first)."""
        for root, label in sorted(zip(self.folders, self.labels), key=lambda p: -len(str(p[0]))):
            message = message.replace(str(root), label)
        return message

    # ---------------------------------------------------------------- resolving user input
    def resolve(self, text: str) -> Path:
        """The zoo folder or manifest the user means by ``text``: an absolute path inside a root, a path starting
        with a root's label, or a path relative to a root (first root holding it)."""
        text = str(text or "").strip()
        if not text or "\x00" in text:
            raise RootError(f"give a zoo folder or zoo.json inside the zoo roots ({self.describe()})")
        given = Path(text)
        if given.is_absolute():
            candidates = [given]
        else:
            head, _, rest = given.as_posix().partition("/")
            candidates = [self.folders[self.labels.index(head)] / rest] if head in self.labels else \
                [root / given for root in self.folders]
        inside = [c.resolve() for c in candidates if self.contains(c)]
        if not inside:
            raise RootError(f"{text!r} is not inside the zoo roots ({self.describe()})")
        found = next((c for c in inside if c.exists()), None)
        if found is None:
            raise RootError(f"no zoo at {self.display(inside[0])!r}: give a zoo folder or zoo.json inside the zoo "
                            f"roots ({self.describe()})")
        return found

    # ---------------------------------------------------------------- what a zoo references
    def check_manifest(self, path: Path) -> None:
        """Refuse a manifest (file, or the one in folder ``path``) that references a path outside the roots."""
        path = Path(path)
        manifest = path if path.is_file() else find_manifest(path)
        if manifest is None:
            return
        self._refuse_outside(manifest)
        try:
            text = manifest.read_text(encoding="utf-8")
            if manifest.suffix in (".yaml", ".yml"):
                import yaml
                data = yaml.safe_load(text)
            else:
                data = json.loads(text)
        except Exception:  # noqa: BLE001 — the manifest loader reports syntax errors with its own message
            return
        for field, value in manifest_paths(data):
            if isinstance(value, str) and value and not self.contains(manifest.parent / value):
                raise RootError(f"{self.display(manifest)}: {field}: the path is not inside the zoo roots "
                                f"({self.describe()})")

    def check_tree(self, folder: Path) -> None:
        """Refuse a folder (a zoo to infer) holding a symbolic link that leads outside the roots."""
        self._refuse_outside(folder)
        for top, dirs, files in os.walk(folder):
            for name in dirs + files:
                entry = Path(top) / name
                if entry.is_symlink() and not self.contains(entry):
                    raise RootError(f"{self.display(folder)}: {Path(top, name).relative_to(folder).as_posix()} "
                                    "links outside the zoo roots")

    def check_zoo(self, zoo) -> None:
        """Every checkpoint, head and data path of a loaded :class:`merging.zoo.Zoo` lies inside the roots."""
        manifest = zoo.manifest
        fields = [("pretrained", manifest.pretrained)]
        for task in manifest.tasks:
            fields.append((f"{task.name}.finetuned", task.finetuned))
            if task.head is not None and task.head.weights is not None:
                fields.append((f"{task.name}.head.weights", task.head.weights))
            fields += [(f"{task.name}.data.{split}", spec.path) for split, spec in task.data.items()]
        for field, path in fields:
            if not self.contains(path):
                raise RootError(f"zoo {zoo.name!r}: {field}: the path is not inside the zoo roots "
                                f"({self.describe()})")

    def _refuse_outside(self, path: Path) -> None:
        if not self.contains(path):
            raise RootError(f"the zoo is not inside the zoo roots ({self.describe()})")


def manifest_paths(data: Any) -> list[tuple[str, Any]]:
    """(field, raw value) of every path a manifest dict names (the fields of ``merging.manifest``)."""
    if not isinstance(data, dict):
        return []
    out = [("pretrained", data.get("pretrained"))]
    tasks = data.get("tasks")
    for i, task in enumerate(tasks if isinstance(tasks, list) else []):
        if not isinstance(task, dict):
            continue
        out.append((f"tasks[{i}].finetuned", task.get("finetuned")))
        head = task.get("head")
        if isinstance(head, dict):
            out.append((f"tasks[{i}].head.weights", head.get("weights")))
        splits = task.get("data")
        for split, spec in (splits.items() if isinstance(splits, dict) else ()):
            for kind, value in (spec.items() if isinstance(spec, dict) else ()):
                out.append((f"tasks[{i}].data.{split}.{kind}", value))
    return out

