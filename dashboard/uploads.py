"""Evaluable uploads: a whole zoo (zoo.json + checkpoints + heads + data) as one zip or tar archive, unpacked
safely into the uploading session's folder.  No gradio here.

Before a byte is written, every member is checked from the archive's own directory (zip: the central
directory, its record count read from the end record first; tar: the headers, read one at a time and stopped at
the count limit): at most :attr:`ArchiveLimits.files` members, each at most :attr:`ArchiveLimits.per_file`
bytes and together at most :attr:`ArchiveLimits.total` bytes as *declared*; names relative, without ``..``,
backslashes or drive letters, each once; only regular files and folders (no symlinks, hard links, devices,
fifos).  Writing then copies at most the declared size of each member (a zip whose data inflates past its
declared size is refused), so a zip bomb costs no more disk than its declaration allowed.  Files are written
into a fresh temporary folder with ``O_EXCL | O_NOFOLLOW``, get the archive's modification times, and the folder
is renamed into place (``archive-<sha256 prefix>``), so a half-unpacked archive is never used.

A zoo from an archive is named ``upload <archive name> (sha256 <12 hex>)`` in its runs: the same bytes uploaded
again by the same user unpack to the same folder with the same file times, hence the same zoo fingerprint, so
the history's runs on it can be reopened, downloaded and compared again after a restart.
"""
from __future__ import annotations

import os
import shutil
import stat
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from merging.checkpoints.limits import MAX_ZIP_RECORDS
from merging.recipe import file_sha256
from merging.roots import RootError, Roots

from .service import UserError

if TYPE_CHECKING:
    from .service import Service, ZooEntry

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.xz", ".tar.bz2")
MANIFEST = "zoo.json"
COPY_BLOCK = 1 << 20


class ArchiveError(UserError):
    """An archive refused before (or while) it is unpacked; the message names the archive and the member."""


@dataclass(frozen=True)
class ArchiveLimits:
    files: int = MAX_ZIP_RECORDS  # as for a torch zip: ~0.5 KB of Python objects per record parsed
    total: int = 8 << 30  # declared unpacked bytes of all members
    per_file: int = 2 << 30


@dataclass(frozen=True)
class Member:
    name: str  # checked relative POSIX path
    size: int
    is_dir: bool
    mtime: float


def is_archive(path: str | os.PathLike) -> bool:
    return str(path).lower().endswith(ARCHIVE_SUFFIXES)


def _safe_name(raw: str, archive: str) -> str:
    """``raw`` as a relative POSIX path without "." parts; refused when absolute, a drive path, with backslashes
    or NUL, or with a ".." part."""
    if not raw or "\\" in raw or "\x00" in raw or raw.startswith("/") or (len(raw) > 1 and raw[1] == ":"):
        raise ArchiveError(f"{archive}: member {raw!r} has an absolute or unusual path; only relative paths are "
                           "unpacked")
    parts = [p for p in PurePosixPath(raw).parts if p != "."]
    if ".." in parts:
        raise ArchiveError(f"{archive}: member {raw!r} points outside the archive (..)")
    return "/".join(parts)


def _zip_members(path: Path, check: "Checker") -> tuple[zipfile.ZipFile, dict]:
    archive, limit = check.archive, check.limits.files
    with open(path, "rb") as handle:
        end = zipfile._EndRecData(handle)  # the end record, read before the central directory is parsed
    if end is None:
        raise ArchiveError(f"{archive}: not a readable zip archive")
    if end[zipfile._ECD_ENTRIES_TOTAL] > limit:
        raise ArchiveError(f"{archive}: {end[zipfile._ECD_ENTRIES_TOTAL]:,} members; at most {limit:,} are accepted")
    try:
        handle = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise ArchiveError(f"{archive}: not a readable zip archive ({exc})") from None
    infos = {}
    try:
        for info in handle.infolist():
            kind = stat.S_IFMT(info.external_attr >> 16)
            if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
                what = "symlink" if kind == stat.S_IFLNK else "special file"
                raise ArchiveError(f"{archive}: member {info.filename!r} is a {what}; only files and folders are "
                                   "unpacked")
            if info.flag_bits & 0x1:
                raise ArchiveError(f"{archive}: member {info.filename!r} is encrypted")
            infos[check.add(Member(info.filename, info.file_size, info.is_dir(), _zip_time(info.date_time)))] = info
    except BaseException:
        handle.close()
        raise
    return handle, infos


def _zip_time(date_time) -> float:
    import time
    return float(int(time.mktime((*date_time, 0, 0, -1))))


def _tar_members(path: Path, check: "Checker") -> tuple[tarfile.TarFile, dict]:
    archive = check.archive
    try:
        handle = tarfile.open(path, "r:*")
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise ArchiveError(f"{archive}: not a readable zip or tar archive ({type(exc).__name__})") from None
    infos = {}
    try:
        while (info := handle.next()) is not None:  # one header at a time: reading stops at a refused member
            if not (info.isreg() or info.isdir()):
                what = "symlink" if info.issym() else "hard link" if info.islnk() else \
                    "device" if info.isdev() else "fifo" if info.isfifo() else "special file"
                raise ArchiveError(f"{archive}: member {info.name!r} is a {what}; only files and folders are "
                                   "unpacked")
            infos[check.add(Member(info.name, info.size, info.isdir(), float(int(info.mtime))))] = info
    except (tarfile.TarError, EOFError, OSError) as exc:
        handle.close()
        raise ArchiveError(f"{archive}: damaged tar archive ({type(exc).__name__})") from None
    except BaseException:
        handle.close()
        raise
    return handle, infos


class Checker:
    """Members checked one at a time as the archive's directory is read (names safe and unique, sizes within
    the limits, from the declarations only), so reading stops at the first refused member."""

    def __init__(self, limits: ArchiveLimits, archive: str):
        self.limits, self.archive = limits, archive
        self.members: list[Member] = []
        self.total = 0
        self._seen: set[str] = set()

    def add(self, member: Member) -> str:
        archive, limits = self.archive, self.limits
        if len(self.members) >= limits.files:
            raise ArchiveError(f"{archive}: more than {limits.files:,} members; at most {limits.files:,} are accepted")
        name = _safe_name(member.name, archive)
        if name in self._seen:
            raise ArchiveError(f"{archive}: member {name!r} appears twice")
        if member.size < 0 or (not member.is_dir and member.size > limits.per_file):
            raise ArchiveError(f"{archive}: member {name!r} declares {member.size:,} bytes; at most "
                               f"{limits.per_file:,} per file")
        self.total += 0 if member.is_dir else member.size
        if self.total > limits.total:
            raise ArchiveError(f"{archive}: members declare more than {limits.total:,} bytes unpacked (the limit)")
        if name:  # not "./" itself
            self._seen.add(name)
            self.members.append(Member(name, member.size, member.is_dir, member.mtime))
        return name

    def done(self) -> list[Member]:
        files = {m.name for m in self.members if not m.is_dir}
        for name in files:  # a file may not also be the folder of another member
            clash = next((str(p) for p in PurePosixPath(name).parents if str(p) in files), None)
            if clash is not None:
                raise ArchiveError(f"{self.archive}: member {name!r} lies inside the file {clash!r}")
        return self.members


def _copy(source, target: Path, size: int, archive: str, name: str) -> None:
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as out:
        left = size
        while left > 0:
            block = source.read(min(COPY_BLOCK, left))
            if not block:
                raise ArchiveError(f"{archive}: member {name!r} is shorter than its declared {size:,} bytes")
            out.write(block)
            left -= len(block)
        if source.read(1):
            raise ArchiveError(f"{archive}: member {name!r} holds more than its declared {size:,} bytes")


def _open_member(handle, info):
    if isinstance(handle, zipfile.ZipFile):
        return handle.open(info)
    return handle.extractfile(info)


def unpack(path: str | os.PathLike, target: Path, limits: ArchiveLimits = ArchiveLimits(),
           name: str | None = None) -> Path:
    """Unpack the archive ``path`` into the new folder ``target`` (which must not exist), atomically."""
    path, target = Path(path), Path(target)
    archive = name or path.name
    check = Checker(limits, archive)
    handle, infos = (_zip_members if zipfile.is_zipfile(path) else _tar_members)(path, check)
    with handle:
        members = check.done()
        target.parent.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
        try:
            folders = {scratch}
            for member in members:
                where = scratch / member.name
                for parent in reversed([*where.parents]):
                    if parent in folders or not str(parent).startswith(str(scratch)):
                        continue
                    parent.mkdir(exist_ok=True)
                    folders.add(parent)
                if member.is_dir:
                    where.mkdir(exist_ok=True)
                    folders.add(where)
                    continue
                source = _open_member(handle, infos[member.name])
                try:
                    _copy(source, where, member.size, archive, member.name)
                except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError, ValueError) as exc:
                    if isinstance(exc, ArchiveError):
                        raise
                    raise ArchiveError(f"{archive}: member {member.name!r} cannot be read "
                                       f"({type(exc).__name__})") from None
                finally:
                    source.close()
                os.utime(where, (member.mtime, member.mtime))
            times = {scratch / m.name: m.mtime for m in members if m.is_dir}
            for folder in sorted(folders - {scratch}, key=lambda p: -len(p.parts)):  # deepest first
                stamp = times.get(folder, 0.0)
                os.utime(folder, (stamp, stamp))
            os.replace(scratch, target)
        except BaseException:
            shutil.rmtree(scratch, ignore_errors=True)
            raise
    return target


def zoo_root(folder: Path, archive: str) -> Path:
    """The folder holding zoo.json: the archive's top, or its single top-level folder."""
    if (folder / MANIFEST).is_file():
        return folder
    tops = [p for p in folder.iterdir()]
    if len(tops) == 1 and tops[0].is_dir() and (tops[0] / MANIFEST).is_file():
        return tops[0]
    raise ArchiveError(f"{archive}: no {MANIFEST} at the top of the archive (or in its single top folder)")


def reference(name: str, digest: str) -> str:
    """How runs on an uploaded archive name their zoo: what the uploader uploads again to resolve them."""
    return f"upload {name} (sha256 {digest[:12]})"


def load_archive(service: "Service", path: str | os.PathLike, session: str, name: str | None = None,
                 limits: ArchiveLimits | None = None, progress=None) -> "ZooEntry":
    """Unpack an uploaded zoo archive into ``session``'s uploads (once per content) and load it as the
    session's own zoo; its tasks with heads and data are evaluable."""
    path = Path(path)
    name = name or path.name
    if not is_archive(name):
        raise ArchiveError(f"{name}: a zoo archive must be one of {', '.join(ARCHIVE_SUFFIXES)}")
    size = path.stat().st_size
    if size > service.settings.upload_limit:
        raise ArchiveError(f"{name}: {size / 2**20:.1f} MiB is over the upload limit of "
                           f"{service.settings.upload_limit / 2**20:.0f} MiB")
    digest = file_sha256(path)
    limits = limits or ArchiveLimits(per_file=service.settings.upload_limit)
    target = service.session_dir(session) / "uploads" / f"archive-{digest[:32]}"
    if not target.is_dir():
        try:
            unpack(path, target, limits, name)
        except OSError:  # the same archive unpacked meanwhile by another request: use that copy
            if not target.is_dir():
                raise
    root = zoo_root(target, name)
    here = str(root.resolve())

    def redact(message: str) -> str:  # name members of the archive, never our folder
        return message.replace(here + "/", "").replace(here, name).replace(str(target.resolve()), name)

    roots = Roots([target])
    try:  # before anything the manifest names is opened: only files of this archive
        roots.check_manifest(root / MANIFEST)
    except RootError as exc:
        text = str(exc).replace(f" ({roots.describe()})", "").replace(f"{target.name}/", "")
        raise ArchiveError(f"{name}: {text.replace('the zoo roots', 'the archive')}") from None
    return service._load(root, progress, roots, redact, session, label=reference(name, digest))
