"""Checkpoint loading: formats, layouts, the restricted unpickler, named errors, HF conversion, export."""
from __future__ import annotations

import os
import sys
import types
import zipfile

import open_clip
import pytest
import torch
from safetensors.torch import load_file, save_file

from ck_tiny_zoo import TINY, TINY_CONFIG, tiny_clip
from merging.atomic import OverwriteError
from merging.checkpoints import (CheckpointFileError, UnsafePickleError, detect_format, hf_to_open_clip_text,
                                 hf_to_open_clip_visual, load_checkpoint, load_head_tensors, open_clip_text_to_hf,
                                 open_clip_visual_to_hf, save_hf, save_open_clip)
from merging.manifest import Architecture
from merging.models import visual_shapes
from merging.space import CheckpointError


@pytest.fixture(scope="module")
def clip():
    return tiny_clip(seed=1)


@pytest.fixture(scope="module")
def visual(clip):
    return {k: v.detach().clone() for k, v in clip.visual.state_dict().items()}


@pytest.fixture(scope="module")
def expected():
    return visual_shapes(Architecture(TINY, TINY_CONFIG))


def assert_same(a: dict, b: dict) -> None:
    assert list(a) == list(b)
    for key in a:
        assert a[key].dtype == b[key].dtype and a[key].shape == b[key].shape, key
        assert torch.equal(a[key], b[key]), key


# ---------------------------------------------------------------------------------------------- formats / layouts
def test_every_layout_loads_to_the_same_visual_state(tmp_path, clip, visual, expected):
    full = {k: v.detach().clone() for k, v in clip.state_dict().items()}
    files = {
        "open_clip.safetensors": lambda p: save_file(full, str(p)),
        "open_clip_full.pt": lambda p: torch.save(full, p),
        "visual_only.pt": lambda p: torch.save(visual, p),
        "legacy.pt": lambda p: torch.save(visual, p, _use_new_zipfile_serialization=False),
        "wrapped_ddp.pt": lambda p: torch.save({"epoch": 3, "state_dict": {"module." + k: v for k, v in full.items()}},
                                               p),
        "hf_vision.safetensors": lambda p: save_file(open_clip_visual_to_hf(visual, projection=True), str(p)),
        "hf_clip.bin": lambda p: torch.save({**open_clip_visual_to_hf(visual),
                                             **open_clip_text_to_hf({k: v for k, v in full.items()
                                                                     if not k.startswith("visual.")})}, p),
    }
    layouts = {}
    for name, write in files.items():
        write(tmp_path / name)
        checkpoint = load_checkpoint(tmp_path / name, expected, keep_text=True)
        assert_same(checkpoint.visual, visual)
        layouts[name] = checkpoint.layout
        if name in ("open_clip.safetensors", "hf_clip.bin"):
            text = {k: v for k, v in full.items() if not k.startswith("visual.")}
            assert set(checkpoint.text) == set(text)
            assert all(torch.equal(checkpoint.text[k], text[k]) for k in text)
    assert layouts == {"open_clip.safetensors": "open_clip", "open_clip_full.pt": "open_clip",
                       "visual_only.pt": "open_clip-visual", "legacy.pt": "open_clip-visual",
                       "wrapped_ddp.pt": "open_clip",
                       "hf_vision.safetensors": "hf-clip-vision", "hf_clip.bin": "hf-clip"}
    assert detect_format(tmp_path / "open_clip.safetensors") == "safetensors"
    assert detect_format(tmp_path / "visual_only.pt") == "torch"
    assert detect_format(tmp_path / "legacy.pt") == "torch-legacy"


def test_hf_conversion_is_exact_and_uses_hf_names(visual):
    hf = open_clip_visual_to_hf(visual)
    width = visual["conv1.weight"].shape[0]
    in_proj = visual["transformer.resblocks.1.attn.in_proj_weight"]
    # nn.MultiheadAttention stacks q, k, v row-wise
    assert torch.equal(hf["vision_model.encoder.layers.1.self_attn.q_proj.weight"], in_proj[:width])
    assert torch.equal(hf["vision_model.encoder.layers.1.self_attn.v_proj.weight"], in_proj[2 * width:])
    assert torch.equal(hf["visual_projection.weight"], visual["proj"].t())
    assert torch.equal(hf["vision_model.encoder.layers.0.mlp.fc2.bias"],
                       visual["transformer.resblocks.0.mlp.c_proj.bias"])
    assert {"vision_model.pre_layrnorm.weight", "vision_model.post_layernorm.bias",
            "vision_model.embeddings.patch_embedding.weight", "vision_model.embeddings.class_embedding",
            "vision_model.embeddings.position_embedding.weight",
            "vision_model.encoder.layers.0.layer_norm1.weight"} <= set(hf)
    assert_same(hf_to_open_clip_visual(hf), visual)
    hf["vision_model.embeddings.position_ids"] = torch.arange(5)[None]  # derived buffer of older transformers
    back = open_clip_visual_to_hf(hf_to_open_clip_visual(hf))
    assert set(back) == set(hf) - {"vision_model.embeddings.position_ids"}
    assert all(torch.equal(back[k], hf[k]) for k in back)


def test_text_tower_conversion_round_trips(clip):
    text = {k: v.detach() for k, v in clip.state_dict().items() if not k.startswith("visual.")}
    back = hf_to_open_clip_text(open_clip_text_to_hf(text))
    assert set(back) == set(text) and all(torch.equal(back[k], text[k]) for k in text)


# ---------------------------------------------------------------------------------------------- restricted unpickler
class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_restricted_unpickler_refuses_code(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "finetuned.pt"
    torch.save({"weight": torch.zeros(2, 2), "payload": _Evil(marker)}, path)
    with pytest.raises(UnsafePickleError) as info:
        load_checkpoint(path)
    assert info.value.problem == "unsafe pickle" and str(path) in str(info.value)
    assert "system" in str(info.value) and "nothing from the file was executed" in str(info.value)
    assert not marker.exists()
    assert isinstance(info.value, CheckpointError)


@pytest.fixture
def task_vectors_module(monkeypatch):
    """Classes that pickle as ``src.modeling.ImageEncoder`` / ``ClassificationHead``, as task_vectors' do."""
    module = types.ModuleType("src.modeling")
    package = types.ModuleType("src")
    package.modeling = module

    class ImageEncoder(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model
            self.cache_dir = "/nowhere"
            self.val_preprocess = open_clip.image_transform(32, is_train=False)  # torchvision objects, an enum

        def __setstate__(self, state):  # never called on load: classes from the file are inert stand-ins
            raise AssertionError("the real class must not be used when loading")

    class ClassificationHead(torch.nn.Linear):
        def __init__(self, normalize, weights, biases):
            super().__init__(weights.shape[1], weights.shape[0])
            self.normalize = normalize
            self.weight = torch.nn.Parameter(weights.clone())
            self.bias = torch.nn.Parameter(biases.clone())

    for cls in (ImageEncoder, ClassificationHead):
        cls.__module__, cls.__qualname__ = "src.modeling", cls.__name__
        setattr(module, cls.__name__, cls)
    monkeypatch.setitem(sys.modules, "src", package)
    monkeypatch.setitem(sys.modules, "src.modeling", module)
    return module


def test_task_vectors_pickled_modules(tmp_path, visual, expected, task_vectors_module):
    encoder = task_vectors_module.ImageEncoder(tiny_clip(seed=1))
    del encoder.model.transformer  # task_vectors drops the text transformer (keep_lang=False)
    torch.save(encoder, tmp_path / "finetuned.pt")
    head = task_vectors_module.ClassificationHead(True, torch.randn(3, 16), torch.randn(3))
    torch.save(head, tmp_path / "head_Task.pt")
    checkpoint = load_checkpoint(tmp_path / "finetuned.pt", expected)
    assert checkpoint.layout == "task_vectors" and checkpoint.format == "torch"
    assert_same(checkpoint.visual, visual)
    weight, bias = load_head_tensors(tmp_path / "head_Task.pt")
    assert torch.equal(weight, head.weight.detach()) and torch.equal(bias, head.bias.detach())


# ---------------------------------------------------------------------------------------------- named errors
def _problem(path, expected=None) -> str:
    with pytest.raises(CheckpointFileError) as info:
        load_checkpoint(path, expected, "tiny")
    assert str(path) in str(info.value)
    return info.value.problem


def test_malformed_files_give_named_errors(tmp_path, visual, expected):
    good = tmp_path / "good.safetensors"
    save_file(visual, str(good))
    data = good.read_bytes()
    (tmp_path / "truncated.safetensors").write_bytes(data[: len(data) // 2])
    assert _problem(tmp_path / "truncated.safetensors") == "truncated"
    (tmp_path / "header_cut.safetensors").write_bytes(data[:20])
    assert _problem(tmp_path / "header_cut.safetensors") == "truncated"
    (tmp_path / "random.bin").write_bytes(bytes(range(256)) * 16)  # no magic: not PK, \x80, nor 8 bytes + "{"
    assert _problem(tmp_path / "random.bin") == "not a checkpoint"
    (tmp_path / "empty.pt").write_bytes(b"")
    assert _problem(tmp_path / "empty.pt") == "empty"
    assert _problem(tmp_path / "absent.pt") == "missing"
    torch.save(visual, tmp_path / "good.pt")
    raw = (tmp_path / "good.pt").read_bytes()
    (tmp_path / "truncated.pt").write_bytes(raw[: len(raw) * 2 // 3])
    assert _problem(tmp_path / "truncated.pt") == "truncated"
    with zipfile.ZipFile(tmp_path / "good.pt") as archive:  # a zip with a damaged pickle record
        records = {n: archive.read(n) for n in archive.namelist()}
    pkl = next(n for n in records if n.endswith("data.pkl"))
    records[pkl] = records[pkl][:10]
    with zipfile.ZipFile(tmp_path / "corrupt.pt", "w") as archive:
        for name, blob in records.items():
            archive.writestr(name, blob)
    assert _problem(tmp_path / "corrupt.pt") == "corrupt"
    torch.save({"hello": torch.zeros(3)}, tmp_path / "other.pt")
    assert _problem(tmp_path / "other.pt") == "unrecognised layout"


def test_architecture_mismatches_give_named_errors(tmp_path, visual, expected):
    def problem(state):
        path = tmp_path / "ckpt.safetensors"
        save_file({k: v.clone() for k, v in state.items()}, str(path))
        return _problem(path, expected)

    missing = {k: v for k, v in visual.items() if k != "ln_post.bias"}
    assert problem(missing) == "missing keys"
    assert problem({**visual, "extra.weight": torch.zeros(2)}) == "extra keys"
    assert problem({**visual, "proj": torch.zeros(32, 8)}) == "shape mismatch"
    bigger = {k: v for k, v in visual.items()}
    bigger.update({k.replace("resblocks.1.", "resblocks.2."): v for k, v in visual.items() if "resblocks.1." in k})
    assert problem(bigger) == "wrong architecture"
    assert problem({k: torch.zeros(s[:-1] + (s[-1] * 2,)) if k == "conv1.weight" else v
                    for k, v, s in ((k, v, tuple(v.shape)) for k, v in visual.items())}) == "wrong architecture"


# ---------------------------------------------------------------------------------------------- export
def test_export_round_trips_and_refuses_inputs(tmp_path, clip, visual, expected):
    text = {k: v.detach().clone() for k, v in clip.state_dict().items() if not k.startswith("visual.")}
    save_open_clip(tmp_path / "merged.safetensors", visual, text, metadata={"method": "ta"})
    assert_same(load_checkpoint(tmp_path / "merged.safetensors", expected).visual, visual)
    full = load_file(str(tmp_path / "merged.safetensors"))
    assert set(full) == set(clip.state_dict()) - {"attn_mask"}
    clip2 = tiny_clip(seed=5)
    clip2.load_state_dict(full, strict=True)  # loadable by open_clip as a full CLIP model
    save_hf(tmp_path / "merged_hf.safetensors", visual, projection=False)
    hf = load_file(str(tmp_path / "merged_hf.safetensors"))
    assert "visual_projection.weight" not in hf and all(k.startswith("vision_model.") for k in hf)
    assert_same(open_clip_visual_to_hf(visual, projection=False), {k: hf[k] for k in
                                                                    open_clip_visual_to_hf(visual, False)})
    before = (tmp_path / "merged.safetensors").read_bytes()
    with pytest.raises(OverwriteError):
        save_open_clip(tmp_path / "merged.safetensors", visual, inputs=[tmp_path / "merged.safetensors"])
    assert (tmp_path / "merged.safetensors").read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


# ---------------------------------------------------------------------------------------------- ViT-B-32, all formats
@pytest.mark.slow  # ~40 s on 2 cores: 88M-parameter tensors in four formats
def test_vit_b32_every_format_load_merge_export_load_bit_exact(tmp_path, task_vectors_module):
    """Random-init ViT-B-32 written in each supported format → zoo → Task Arithmetic → export → load."""
    import json

    from merging import run_merge
    from merging.checkpoints import export_merge
    from merging.models import build_clip
    from merging.zoo import load_zoo

    arch = Architecture("ViT-B-32-quickgelu")
    torch.manual_seed(0)
    model = build_clip(arch)
    theta0 = {k: v.detach().clone() for k, v in model.visual.state_dict().items()}
    save_file({k: v.detach() for k, v in model.state_dict().items()}, str(tmp_path / "pretrained.safetensors"))
    finetuned = []
    for t in range(3):
        g = torch.Generator().manual_seed(t)
        finetuned.append({k: v + 1e-3 * torch.randn(v.shape, generator=g) for k, v in theta0.items()})
    finetuned[1]["proj"] = theta0["proj"]  # CLIPVisionModel files carry no projection: the zoo uses θ0's
    model.visual.load_state_dict(finetuned[0])
    del model.transformer
    torch.save(task_vectors_module.ImageEncoder(model), tmp_path / "t0.pt")  # task_vectors pickled module
    save_file(open_clip_visual_to_hf(finetuned[1], projection=False), str(tmp_path / "t1.safetensors"))  # HF
    torch.save(finetuned[2], tmp_path / "t2.pt")  # open_clip visual-only torch state dict
    del model
    manifest = {"architecture": {"open_clip": arch.name}, "pretrained": "pretrained.safetensors",
                "tasks": [{"name": f"t{t}", "finetuned": f"t{t}.{ext}"} for t, ext in
                          enumerate(("pt", "safetensors", "pt"))]}
    (tmp_path / "zoo.json").write_text(json.dumps(manifest))
    zoo = load_zoo(tmp_path)
    assert_same(zoo.pretrained_state(), theta0)
    for t in range(3):
        assert_same(zoo.finetuned_state(f"t{t}"), finetuned[t])
    space = zoo.build_space(device="cpu")
    result = run_merge(space, "task_arithmetic", {"lam": 0.3})
    merged = space.state_dict(result.delta)
    for fmt in ("open_clip", "hf"):
        out = tmp_path / f"merged_{fmt}.safetensors"
        export_merge(out, space, result, fmt, inputs=zoo.inputs())
        assert_same(load_checkpoint(out, zoo.expected).visual, merged)
    with pytest.raises(OverwriteError):
        export_merge(tmp_path / "t1.safetensors", space, result, "hf", inputs=zoo.inputs())


def test_export_every_format_from_a_tall_merge(tmp_path):
    """open_clip / HF exports of θ̂t and the TALL compressed form reproduce the result bit-exactly."""
    from ck_tiny_zoo import make_tiny_zoo
    from merging import run_merge
    from merging.checkpoints import export_merge
    from merging.compressed import load_compressed
    from merging.zoo import load_zoo

    make_tiny_zoo(tmp_path / "zoo", n_per_class=1)
    zoo = load_zoo(tmp_path / "zoo")
    space = zoo.build_space(device="cpu")
    result = run_merge(space, "tall", {"tall_lambda": 0.4})
    export_merge(tmp_path / "tall.safetensors", space, result, "tall-compressed", inputs=zoo.inputs())
    compressed = load_compressed(tmp_path / "tall.safetensors")
    for t, task in enumerate(space.task_names):
        expected = space.state_dict(result.task_delta(t))
        assert_same(compressed.reconstruct(task), expected)
        for fmt in ("open_clip", "hf"):
            out = tmp_path / f"{task}_{fmt}.safetensors"
            export_merge(out, space, result, fmt, task=t, inputs=zoo.inputs())
            assert_same(load_checkpoint(out, zoo.expected).visual, expected)
    with pytest.raises(ValueError, match="unknown export format"):
        export_merge(tmp_path / "x.bin", space, result, "onnx")
    with pytest.raises(OverwriteError):
        export_merge(zoo.inputs()[0], space, result, "tall-compressed", inputs=zoo.inputs())


@pytest.mark.parametrize("fmt,dtype", [("open_clip", None), ("open_clip", torch.float16), ("hf", None)])
def test_export_writes_the_bytes_of_a_plain_save_of_copied_tensors(tmp_path, fmt, dtype):
    """The export writes the tensors it is given (no defensive copy): the file equals safetensors' own save of
    cloned tensors with the same metadata, byte for byte."""
    import json

    from safetensors import safe_open

    from ck_tiny_zoo import make_tiny_zoo
    from merging import run_merge
    from merging.checkpoints import export_merge
    from merging.zoo import load_zoo

    make_tiny_zoo(tmp_path / "zoo", n_per_class=1)
    space = load_zoo(tmp_path / "zoo").build_space(device="cpu")
    result = run_merge(space, "ties", {"k": 30})
    out = tmp_path / "merged.safetensors"
    export_merge(out, space, result, fmt, dtype=dtype)
    with safe_open(str(out), framework="pt") as handle:
        metadata = handle.metadata()
    visual = {k: v.clone() for k, v in space.state_dict(result.delta, dtype=dtype).items()}
    tensors = {"visual." + k: v for k, v in visual.items()} if fmt == "open_clip" else open_clip_visual_to_hf(visual)
    save_file(tensors, str(tmp_path / "reference.safetensors"), metadata=metadata)
    written, reference = out.read_bytes(), (tmp_path / "reference.safetensors").read_bytes()
    length = int.from_bytes(written[:8], "little")
    assert written[:8] == reference[:8]  # the same header size; its JSON (metadata order aside) and the data equal
    assert json.loads(written[8:8 + length]) == json.loads(reference[8:8 + length])
    assert written[8 + length:] == reference[8 + length:]
    transposed = {"w": torch.arange(6.0).reshape(2, 3).t()}  # not contiguous: packed before writing
    save_open_clip(tmp_path / "t.safetensors", transposed)
    assert torch.equal(load_file(str(tmp_path / "t.safetensors"))["visual.w"], transposed["w"])
