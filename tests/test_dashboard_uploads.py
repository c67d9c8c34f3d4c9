"""Zoo archives: hostile archives refused with one line before anything is written; a real zoo archive is
unpacked in the session's folder, evaluable, and its runs resolve again after a restart by re-uploading it."""
import io
import os
import shutil
import tarfile
import zipfile

import pytest

from dashboard.service import Service, Settings
from dashboard.uploads import ArchiveError, ArchiveLimits, load_archive, unpack
from dashboard_app import zoo_dir  # noqa: F401 (module fixture)
from test_recipe import assert_same_file


def _tar(path, members, mode="w"):
    """members: (name, bytes | None for a folder | callable(TarInfo) to edit the header)."""
    with tarfile.open(path, mode) as tar:
        for name, data, *edit in members:
            info = tarfile.TarInfo(name)
            if data is None:
                info.type = tarfile.DIRTYPE
            else:
                info.size = len(data)
            for change in edit:
                change(info)
            real = data is not None and info.isreg() and info.size == len(data)  # else: the header alone
            tar.addfile(info, io.BytesIO(data) if real else None)
    return path


def _zip(path, members, compression=zipfile.ZIP_DEFLATED):
    with zipfile.ZipFile(path, "w", compression) as archive:
        for name, data, *mode in members:
            info = zipfile.ZipInfo(name)
            info.compress_type = compression
            if mode:
                info.external_attr = mode[0] << 16
            archive.writestr(info, data)
    return path


def _symlink(info):
    info.type, info.linkname, info.size = tarfile.SYMTYPE, "/etc/passwd", 0


def _hardlink(info):
    info.type, info.linkname, info.size = tarfile.LNKTYPE, "zoo.json", 0


def _device(info):
    info.type, info.devmajor, info.devminor, info.size = tarfile.CHRTYPE, 1, 3, 0


def _huge(info):
    info.size = 50 << 30  # declared 50 GiB (the bytes are not there)


HOSTILE = {
    "traversal.tar": (lambda p: _tar(p, [("zoo.json", b"{}"), ("../../evil.txt", b"x")]), "outside the archive (..)"),
    "absolute.zip": (lambda p: _zip(p, [("/tmp/evil.txt", b"x")]), "absolute or unusual path"),
    "backslash.zip": (lambda p: _zip(p, [("..\\evil.txt", b"x")]), "absolute or unusual path"),
    "symlink.tar": (lambda p: _tar(p, [("zoo.json", b"{}"), ("data", b"", _symlink)]), "is a symlink"),
    "symlink.zip": (lambda p: _zip(p, [("link", b"/etc/passwd", 0o120777)]), "is a symlink"),
    "hardlink.tar": (lambda p: _tar(p, [("zoo.json", b"{}"), ("copy", b"", _hardlink)]), "is a hard link"),
    "device.tar": (lambda p: _tar(p, [("zero", b"", _device)]), "is a device"),
    "bomb.zip": (lambda p: _zip(p, [("zeros.bin", bytes(8 << 20))]), "declares 8,388,608 bytes"),
    "bomb.tar.gz": (lambda p: _tar(p, [("a.bin", bytes(600 << 10)), ("b.bin", bytes(600 << 10))], "w:gz"),
                    "more than 1,048,576 bytes unpacked"),
    "declared.tar": (lambda p: _tar(p, [("huge.bin", b"", _huge)]), "declares 53,687,091,200 bytes"),
    "many.zip": (lambda p: _zip(p, [(f"f{i}.txt", b"x") for i in range(9)]), "9 members; at most 8"),
    "many.tar": (lambda p: _tar(p, [(f"f{i}.txt", b"x") for i in range(9)]), "more than 8 members"),
    "twice.zip": (lambda p: _zip(p, [("a.txt", b"x"), ("./a.txt", b"y")]), "appears twice"),
    "inside.tar": (lambda p: _tar(p, [("a", b"x"), ("a/b", b"y")]), "lies inside the file 'a'"),
    "garbage.zip": (lambda p: p.write_bytes(b"not an archive at all"), "not a readable zip or tar archive"),
}
LIMITS = ArchiveLimits(files=8, total=1 << 20, per_file=2 << 20)


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_archives_are_refused_with_one_line_and_nothing_written(tmp_path, name):
    build, message = HOSTILE[name]
    archive = tmp_path / name
    build(archive)
    target = tmp_path / "uploads" / "archive-x"
    with pytest.raises(ArchiveError) as error:
        unpack(archive, target, LIMITS)
    text = str(error.value)
    assert text.startswith(f"{name}: ") and message in text and "\n" not in text, text
    assert not (tmp_path / "uploads").exists() or not any((tmp_path / "uploads").iterdir())  # no scratch left
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path.parent / "evil.txt").exists()


def test_a_zip_inflating_past_its_declared_size_is_cut_off(tmp_path):
    archive = _zip(tmp_path / "liar.zip", [("zeros.bin", bytes(4 << 20))])
    data = bytearray(archive.read_bytes())  # declare 1000 bytes in the local and the central header
    for signature, offset in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        at = data.index(signature) + offset
        data[at:at + 4] = (1000).to_bytes(4, "little")
    archive.write_bytes(bytes(data))
    with pytest.raises(ArchiveError, match="zeros.bin") as error:
        unpack(archive, tmp_path / "out", LIMITS)
    assert "\n" not in str(error.value) and not (tmp_path / "out").exists()


def _zoo_archive(zoo_dir, path, fmt):
    """The whole tiny zoo (zoo.json, checkpoints, heads, data) as one archive, under a top folder."""
    base = str(path).removesuffix(".tar.gz").removesuffix(".zip")
    return shutil.make_archive(base, fmt, root_dir=zoo_dir.parent, base_dir=zoo_dir.name)


@pytest.mark.parametrize("fmt", ["gztar", "zip"])
def test_an_uploaded_zoo_archive_is_evaluable_and_its_runs_resolve_after_a_restart(zoo_dir, tmp_path, fmt):
    data = tmp_path / "data"
    archive = _zoo_archive(zoo_dir, tmp_path / ("zoo.tar.gz" if fmt == "gztar" else "zoo.zip"), fmt)
    name = os.path.basename(archive)
    service = Service(Settings(data, device="cpu"))
    entry = load_archive(service, archive, "user:alice")
    assert entry.evaluable() == ["task0", "task1", "task2"] and entry.owner == "user:alice"
    assert entry.path.is_relative_to(service.session_dir("user:alice") / "uploads")
    view = service.merge(entry.id, "ties", {"k": 30}, owner="user:alice")
    assert set(view.record.accuracy) == {"task0", "task1", "task2"}
    assert view.record.zoo_path.startswith(f"upload {name} (sha256 ") and str(data) not in view.record.zoo_path
    expected = service.export_checkpoint(view.id, "open_clip", "user:alice", folder=tmp_path / "a")
    other = load_archive(service, archive, "user:bob")  # the same bytes from someone else: their own copy
    assert other.id != entry.id and other.path != entry.path
    shutil.rmtree(service.session_dir("user:alice") / "uploads")  # restart after the uploads were pruned
    restarted = Service(Settings(data, device="cpu"))
    with pytest.raises(ValueError, match=f"load upload {name} .* again to download its checkpoint"):
        restarted.export_checkpoint(view.id, "open_clip", "user:alice", folder=tmp_path / "b")
    again = load_archive(restarted, archive, "user:alice")
    assert again.fingerprint == entry.fingerprint  # same folder, same file times: the run resolves
    assert_same_file(restarted.export_checkpoint(view.id, "open_clip", "user:alice", folder=tmp_path / "c"), expected)
    assert restarted.reopen(view.id, "user:alice").stats["ties_trim"].by_layer.equals(
        view.stats["ties_trim"].by_layer)


def test_an_archive_without_a_manifest_or_over_the_upload_limit(zoo_dir, tmp_path):
    service = Service(Settings(tmp_path / "data", device="cpu", upload_limit=1 << 20))
    bare = _zip(tmp_path / "bare.zip", [("pretrained.safetensors", b"x")])
    with pytest.raises(ArchiveError, match=r"^bare.zip: no zoo.json at the top"):
        load_archive(service, bare, "s")
    big = _zip(tmp_path / "big.zip", [("x.bin", os.urandom(2 << 20))], zipfile.ZIP_STORED)
    with pytest.raises(ArchiveError, match=r"^big.zip: 2.0 MiB is over the upload limit"):
        load_archive(service, big, "s")
    import json
    outside = _zip(tmp_path / "outside.zip", [("zoo.json", json.dumps(
        {"format": "mergescope-zoo/1", "name": "x", "architecture": {"open_clip": "ViT-B-32"},
         "pretrained": str(zoo_dir / "pretrained.safetensors"), "tasks": []}).encode())])
    with pytest.raises(ArchiveError) as error:  # the manifest may name only the archive's own files
        load_archive(service, outside, "s")
    assert str(error.value).startswith("outside.zip: zoo.json: pretrained: the path is not inside the archive") and str(tmp_path) not in \
        str(error.value)
    with pytest.raises(ArchiveError, match="must be one of"):
        load_archive(service, tmp_path / "bare.zip", "s", name="zoo.rar")
