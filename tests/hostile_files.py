"""Makers of hostile checkpoint files: small files that ask a loader for much memory, and malformed headers.

Every maker writes a real file the loaders read, using little memory itself (large records are streamed through
zlib; big safetensors are sparse).  ``python tests/hostile_files.py`` measures each loader's peak memory growth.
"""
from __future__ import annotations

import collections
import io
import json
import pickle
import struct
import sys
import zipfile
from pathlib import Path

import torch


class _Storage:
    """Pickled as torch's persistent storage id ``("storage", FloatStorage, key, "cpu", numel)``."""

    def __init__(self, key: str, numel: int):
        self.key, self.numel = key, numel


class _Tensor:
    def __init__(self, storage: _Storage, size: tuple, stride: tuple, offset: int = 0):
        self.args = (storage, offset, size, stride, False, collections.OrderedDict())

    def __reduce__(self):
        return torch._utils._rebuild_tensor_v2, self.args


class _TorchPickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, _Storage):
            return ("storage", torch.FloatStorage, obj.key, "cpu", obj.numel)
        return None


def tensor_pickle(tensors: dict[str, _Tensor]) -> bytes:
    buffer = io.BytesIO()
    try:
        _TorchPickler(buffer, protocol=2).dump(collections.OrderedDict(tensors))
    finally:
        for name in ("src", "src.modeling"):
            sys.modules.pop(name, None)
    return buffer.getvalue()


def write_torch_zip(path: Path, data_pkl: bytes, records: dict[str, bytes] = {}, *, deflate_pkl: int = 0,
                    deflate_records: dict[str, int] = {}) -> Path:
    """A torch zip file; ``deflate_pkl`` / ``deflate_records[name]`` > 0: that record is that many zero bytes
    appended (for the pickle: after its real bytes), deflated, streamed (never held in memory)."""
    with zipfile.ZipFile(path, "w") as archive:
        def put(name: str, blob: bytes, zeros: int) -> None:
            if not zeros:
                archive.writestr(f"archive/{name}", blob)
                return
            info = zipfile.ZipInfo(f"archive/{name}")
            info.compress_type = zipfile.ZIP_DEFLATED
            with archive.open(info, "w", force_zip64=True) as handle:
                handle.write(blob)
                chunk = bytes(1 << 20)
                for _ in range(zeros >> 20):
                    handle.write(chunk)

        put("data.pkl", data_pkl, deflate_pkl)
        put("byteorder", b"little", 0)
        for name, blob in records.items():
            put(f"data/{name}", blob, deflate_records.get(name, 0))
        for name, zeros in deflate_records.items():
            if name not in records:
                put(f"data/{name}", b"", zeros)
        put("version", b"3\n", 0)
    return path


def memo_bomb(path: Path, index: int = 2 ** 27) -> Path:
    """A pickle that stores one value at memo index ``index`` (the C unpickler sizes its memo array to 2×index),
    then references a class, so that torch's weights-only load fails over to the restricted unpickler."""
    pkl = (b"\x80\x02N" + b"r" + struct.pack("<I", index) + b"0" + b"csrc.modeling\nImageEncoder\n)\x81."
           )
    return write_torch_zip(path, pkl)


def deflated_pickle_bomb(path: Path, zeros: int = 256 << 20) -> Path:
    return write_torch_zip(path, b"\x80\x02}q\x00.", deflate_pkl=zeros)


def deflated_record_bomb(path: Path, zeros: int = 256 << 20) -> Path:
    numel = zeros // 4
    pkl = tensor_pickle({"conv1.weight": _Tensor(_Storage("0", numel), (numel,), (1,))})
    return write_torch_zip(path, pkl, deflate_records={"0": zeros})


def deflated_module_record_bomb(path: Path, zeros: int = 256 << 20) -> Path:
    """The same record inside a pickled module (the restricted unpickler's path, which reads compressed records)."""
    numel = zeros // 4
    pkl = tensor_pickle({"module": _module_object(), "conv1.weight": _Tensor(_Storage("0", numel), (numel,), (1,))})
    return write_torch_zip(path, pkl, deflate_records={"0": zeros})


def _module_object():
    """An object that pickles as ``src.modeling.ImageEncoder`` (task_vectors' class), importable only while
    pickling."""
    import types

    module = types.ModuleType("src.modeling")

    class ImageEncoder:
        def __reduce__(self):
            sys.modules["src"] = sys.modules["src.modeling"] = module  # removed again by tensor_pickle
            return ImageEncoder, ()

    ImageEncoder.__module__, ImageEncoder.__qualname__ = "src.modeling", "ImageEncoder"
    module.ImageEncoder = ImageEncoder
    return ImageEncoder()


def stride0_tensor(path: Path, numel: int = 2 ** 28) -> Path:
    """A 1-element storage viewed as ``numel`` elements (stride 0): a tiny file, a 1 GB tensor when merged."""
    pkl = tensor_pickle({"conv1.weight": _Tensor(_Storage("0", 1), (numel,), (0,)),
                         "class_embedding": _Tensor(_Storage("1", 4), (4,), (1,))})
    return write_torch_zip(path, pkl, {"0": bytes(4), "1": bytes(16)})


def write_safetensors_header(path: Path, header: bytes, data_bytes: int = 0, announced: int | None = None) -> Path:
    """A safetensors file with this exact header and ``data_bytes`` zero bytes after it (sparse)."""
    with open(path, "wb") as handle:
        handle.write(struct.pack("<Q", len(header) if announced is None else announced))
        handle.write(header)
        handle.truncate(8 + len(header) + data_bytes)
    return path


def sparse_safetensors(path: Path, shapes: dict[str, tuple], dtype: str = "F16") -> Path:
    """A valid safetensors file with these shapes, all zeros, written sparsely (costs no disk or memory)."""
    itemsize = {"F16": 2, "F32": 4}[dtype]
    header, offset = {}, 0
    for name, shape in shapes.items():
        size = itemsize
        for dim in shape:
            size *= dim
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    return write_safetensors_header(path, blob, offset)


def many_entries_header(path: Path, entries: int) -> Path:
    parts = [f'"t{i}":{{"dtype":"U8","shape":[1],"data_offsets":[{i},{i + 1}]}}' for i in range(entries)]
    return write_safetensors_header(path, ("{" + ",".join(parts) + "}").encode(), entries)


def long_metadata_header(path: Path, size: int) -> Path:
    return write_safetensors_header(path, b'{"__metadata__":{"x":"' + b"a" * size + b'"}}')


BOMBS = {  # name → (maker(folder), the problem the loader must name)
    "memo index 2**27 (393-byte file)": (lambda p: memo_bomb(p / "memo.pt"), "over a limit"),
    "data.pkl deflated 256 MiB → 256 KB": (lambda p: deflated_pickle_bomb(p / "pkl.pt"), "over a limit"),
    "tensor record deflated 256 MiB → 256 KB": (lambda p: deflated_record_bomb(p / "record.pt"), "over a limit"),
    "pickled-module record deflated 256 MiB": (lambda p: deflated_module_record_bomb(p / "module.pt"),
                                               "over a limit"),
    "stride-0 tensor of 2**28 elements": (lambda p: stride0_tensor(p / "stride0.pt"), "over a limit"),
    "safetensors header of 70k entries (5 MB)": (lambda p: many_entries_header(p / "many.safetensors", 70_000),
                                                 "over a limit"),
    "safetensors header announcing 2**40 bytes": (
        lambda p: write_safetensors_header(p / "huge.safetensors", b"{}", announced=2 ** 40), "over a limit"),
    "safetensors metadata string of 90 MB": (lambda p: long_metadata_header(p / "meta.safetensors", 90_000_000),
                                             "not a checkpoint"),
}

_MEASURE = r"""
import json, resource, sys
import torch
from merging.checkpoints import load_checkpoint
from merging.space import CheckpointError
rss = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
base = rss()
out = []
for path in sys.argv[1:]:
    try:
        load_checkpoint(path)
        outcome = "loaded"
    except CheckpointError as exc:
        outcome = f"{type(exc).__name__}: {exc}"
    except Exception as exc:  # noqa: BLE001  (a report, not a handler)
        outcome = f"UNNAMED {type(exc).__name__}: {str(exc)[:200]}"
    out.append({"path": path, "outcome": outcome, "growth_mb": rss() - base})
print(json.dumps(out))
"""


def measure(paths: list[Path], python: str = sys.executable, cwd: str | None = None) -> list[dict]:
    """Load each file in one fresh process; the peak resident-set growth over the post-import baseline after
    each file (peaks are cumulative, so each value bounds every file up to it)."""
    import os
    import subprocess

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([python, "-c", _MEASURE, *map(str, paths)], capture_output=True, text=True, timeout=300,
                          cwd=cwd, env=env)
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-2000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


if __name__ == "__main__":  # python tests/hostile_files.py [REPO_ROOT]: before/after numbers for the report
    import tempfile

    root = sys.argv[1] if len(sys.argv) > 1 else str(Path(__file__).resolve().parents[1])
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        for name, (make, _) in BOMBS.items():
            path = make(folder)
            (result,) = measure([path], cwd=root)
            print(f"{name:45s} {path.stat().st_size:>12,} B  +{result['growth_mb']:7.0f} MB  {result['outcome'][:150]}")
