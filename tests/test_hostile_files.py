"""Hostile checkpoint files made by the tests: bombs refused with small peak memory, malformed headers as one
named line, non-finite tensors named with their file, malicious pickles never executed."""
from __future__ import annotations

import pickle
import zipfile

import pytest
import torch
from safetensors.torch import save_file

from hostile_files import (BOMBS, measure, memo_bomb, stride0_tensor, tensor_pickle, write_safetensors_header,
                           write_torch_zip, _Storage, _Tensor)
from merging.checkpoints import CheckpointFileError, LimitError, UnsafePickleError, inspect_checkpoint, load_checkpoint
from merging.checkpoints.limits import MAX_EXPANSION, check_pickle
from merging.space import CheckpointError, TaskVectorSpace

GROWTH_MB = 200


def test_bombs_are_refused_before_the_memory_is_spent(tmp_path):
    """Each file in one fresh process: a named error and a peak resident-set growth under 200 MB (before the
    limits: +2 GB for the memo index, +0.5–0.8 GB per 256 MiB bomb; see tests/hostile_files.py)."""
    paths = {name: make(tmp_path) for name, (make, _) in BOMBS.items()}
    results = measure(list(paths.values()))
    for (name, (_, problem)), result in zip(BOMBS.items(), results):
        assert result["outcome"].split(":")[0] in ("LimitError", "CheckpointFileError"), (name, result)
        assert f"{paths[name]}: {problem}" in result["outcome"], (name, result)
        assert result["growth_mb"] < GROWTH_MB, (name, result)


def test_limits_name_the_file_in_process(tmp_path):
    for path in (memo_bomb(tmp_path / "memo.pt"), stride0_tensor(tmp_path / "s0.pt")):
        for load in (load_checkpoint, inspect_checkpoint):
            with pytest.raises(LimitError) as info:
                load(path)
            assert str(info.value).startswith(f"{path}: over a limit: ") and "\n" not in str(info.value)


def test_legitimate_small_memo_and_compressed_records_still_load(tmp_path):
    """The limits refuse only what a real file never asks for: a torch file re-zipped with deflate loads."""
    state = {"conv1.weight": torch.randn(8, 3, 4, 4), "class_embedding": torch.zeros(8),
             "positional_embedding": torch.randn(5, 8)}
    torch.save(state, tmp_path / "plain.pt")
    with zipfile.ZipFile(tmp_path / "plain.pt") as src, zipfile.ZipFile(tmp_path / "deflated.pt", "w",
                                                                        zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info.filename))
    loaded = load_checkpoint(tmp_path / "deflated.pt").visual
    assert all(torch.equal(loaded[k], v) for k, v in state.items())
    # a record that inflates past MAX_EXPANSION × the file is refused even when its pickle is honest
    numel = 2 ** 22
    path = write_torch_zip(tmp_path / "zeros.pt", tensor_pickle({"conv1.weight": _Tensor(_Storage("0", numel),
                                                                                          (numel,), (1,))}),
                           deflate_records={"0": 4 * numel})
    assert 4 * numel > MAX_EXPANSION * path.stat().st_size  # 16 MiB from ~16 KB: within the 16 MiB allowance
    assert load_checkpoint(path).visual["conv1.weight"].count_nonzero() == 0


@pytest.mark.parametrize("pickled, problem", [
    (b"\x80\x02X\xff\xff\xff\x7fabc.", "corrupt"),  # BINUNICODE announcing 2 GB, 3 bytes present
    (b"\x80\x04\x95" + (2 ** 40).to_bytes(8, "little") + b"N.", "over a limit"),  # FRAME of 1 TB
    (b"\x80\x02Np" + b"9" * 5000 + b"\n0.", "corrupt"),  # a 5000-digit memo index (int-str limit)
    (b"\x80\x02N\xff.", "corrupt"),  # unknown opcode
])
def test_pickle_scan(tmp_path, pickled, problem):
    with pytest.raises(CheckpointFileError) as info:
        check_pickle(tmp_path / "x.pt", pickled)
    assert info.value.problem == problem


# ---------------------------------------------------------------------------------------------- safetensors headers
_MALFORMED = {
    "value not an object": b'{"key": 5}',
    "data_offsets missing": b'{"a": {"dtype": "F32", "shape": [1]}}',
    "data_offsets not a list": b'{"a": {"dtype": "F32", "shape": [1], "data_offsets": "0,4"}}',
    "negative shape": b'{"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}',
    "fractional shape": b'{"a": {"dtype": "F32", "shape": [1.5], "data_offsets": [0, 4]}}',
    "shape vs offsets": b'{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}',
    "offsets past the file": b'{"a": {"dtype": "F32", "shape": [100], "data_offsets": [0, 400]}}',
    "overlapping offsets": b'{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, '
                           b'"b": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}',
    "unknown dtype": b'{"a": {"dtype": "F99", "shape": [1], "data_offsets": [0, 4]}}',
    "100k-deep nesting": b'{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    "5000-digit integer": b'{"a": {"dtype": "F32", "shape": [' + b"9" * 5000 + b'], "data_offsets": [0, 4]}}',
    "NaN in the header": b'{"a": {"dtype": "F32", "shape": [NaN], "data_offsets": [0, 4]}}',
    "metadata not strings": b'{"__metadata__": {"secret": 5}, "a": {"dtype": "F32", "shape": [1], '
                            b'"data_offsets": [0, 4]}}',
    "not UTF-8": b'{"\xff\xfe": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}',
    "string value echoed": b'{"a": {"dtype": "F32", "shape": [1], "data_offsets": "aws_secret_value"}}',
}


@pytest.mark.parametrize("case", list(_MALFORMED))
def test_malformed_safetensors_headers_are_one_named_line(tmp_path, case):
    path = write_safetensors_header(tmp_path / "bad.safetensors", _MALFORMED[case], 4)
    for load in (load_checkpoint, inspect_checkpoint):
        with pytest.raises(CheckpointFileError) as info:
            load(path)
        message = str(info.value)
        assert message.startswith(f"{path}: ") and "\n" not in message and len(message) < 500, message
        assert info.value.problem in ("corrupt", "truncated"), message
        assert "aws_secret_value" not in message


def test_safetensors_limits(tmp_path):
    from merging.checkpoints.limits import SAFETENSORS_MAX_HEADER
    path = write_safetensors_header(tmp_path / "big.safetensors", b"{}", announced=SAFETENSORS_MAX_HEADER + 1)
    with pytest.raises(LimitError, match="100,000,000"):
        load_checkpoint(path)


# ---------------------------------------------------------------------------------------------- tensors and spaces
def _visual(seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"conv1.weight": torch.randn(4, 3, 2, 2, generator=g), "class_embedding": torch.randn(4, generator=g)}


def test_non_finite_tensors_name_their_file(tmp_path):
    """Finiteness is checked where the space is built (space._check_finite); the message names the file."""
    pre, bad = _visual(0), _visual(1)
    bad["class_embedding"][2] = float("nan")
    save_file(pre, str(tmp_path / "pre.safetensors"))
    save_file(bad, str(tmp_path / "bad.safetensors"))
    paths = [tmp_path / "pre.safetensors", tmp_path / "bad.safetensors"]
    with pytest.raises(CheckpointError) as info:
        TaskVectorSpace.build(load_checkpoint(paths[0]).visual, [lambda: load_checkpoint(paths[1]).visual], ["t"],
                              device="cpu", sources=[str(p) for p in paths])
    assert str(paths[1]) in str(info.value) and "non-finite" in str(info.value) and "class_embedding" in str(info.value)


def test_duplicate_tasks_are_refused_wherever_a_space_is_built():
    pre = _visual(0)
    with pytest.raises(CheckpointError, match=r"duplicate task\(s\): 'a' ×2"):
        TaskVectorSpace.build(pre, [_visual(1), _visual(2)], ["a", "a"], device="cpu")
    space = TaskVectorSpace.build(pre, [_visual(1), _visual(2)], ["a", "b"], device="cpu")
    with pytest.raises(CheckpointError, match=r"duplicate task\(s\): 'a' ×256"):
        space.subset(["a"] * 256)
    with pytest.raises(CheckpointError, match=r"duplicate task\(s\): 1 ×2"):
        space.subset([1, 1])


# ---------------------------------------------------------------------------------------------- malicious pickles
_PAYLOADS = [  # (module, name, arguments): each would create the marker file (or do harm) if called
    ("os", "system", "touch {m}"), ("posix", "system", "touch {m}"), ("subprocess", "Popen", ["touch", "{m}"]),
    ("subprocess", "call", ["touch", "{m}"]), ("subprocess", "check_output", ["touch", "{m}"]),
    ("builtins", "eval", "open('{m}', 'w')"), ("builtins", "exec", "open('{m}', 'w')"),
    ("builtins", "open", "{m}"), ("builtins", "__import__", "antigravity"), ("builtins", "getattr", "x"),
    ("builtins", "compile", "x"), ("importlib", "import_module", "antigravity"), ("runpy", "run_path", "{m}"),
    ("pty", "spawn", "touch {m}"), ("shutil", "rmtree", "{d}"), ("pickle", "loads", b"x"),
    ("marshal", "loads", b"x"), ("ctypes", "CDLL", "libc.so.6"), ("webbrowser", "open", "http://x"),
    ("io", "open", "{m}"),
]


def _payload_pickle(module: str, name: str, arg) -> bytes:
    """``{"weight": module.name(arg)}`` as a pickle, written opcode by opcode (nothing is imported)."""
    body = pickle.dumps(arg, protocol=2)[2:-1]  # the argument's opcodes, without PROTO and STOP
    return (b"\x80\x02}q\x00X\x06\x00\x00\x00weightq\x01c" + f"{module}\n{name}\n".encode() + body
            + b"\x85R" + b"s.")


@pytest.mark.parametrize("module, name, arg", _PAYLOADS, ids=[f"{m}.{n}" for m, n, _ in _PAYLOADS])
def test_malicious_pickles_never_run(tmp_path, module, name, arg):
    marker, victim = tmp_path / "pwned", tmp_path / "victim"
    victim.mkdir()
    fill = lambda a: ([fill(x) for x in a] if isinstance(a, list) else  # noqa: E731
                      a.format(m=marker, d=victim) if isinstance(a, str) else a)
    path = write_torch_zip(tmp_path / "finetuned.pt", _payload_pickle(module, name, fill(arg)))
    with pytest.raises(UnsafePickleError) as info:
        load_checkpoint(path)
    assert f"{module}.{name}" in str(info.value) and "nothing from the file was executed" in str(info.value)
    assert not marker.exists() and victim.is_dir()
