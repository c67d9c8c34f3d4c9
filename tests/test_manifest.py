"""Zoo manifests: validation with named errors, YAML, inference from a folder, load_zoo failures."""
from __future__ import annotations

import json
import shutil

import pytest
import torch
import yaml
from safetensors.torch import save_file

from ck_tiny_zoo import TINY, TINY_CONFIG, make_tiny_zoo, tiny_clip
from merging.checkpoints import CheckpointFileError
from merging.manifest import Architecture, ManifestError, infer_architecture, infer_manifest, load_manifest
from merging.models import ArchitectureError, register_architecture
from merging.zoo import load_zoo


@pytest.fixture(scope="module")
def zoo_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("manifest_zoo")
    make_tiny_zoo(root, n_per_class=1)
    return root


@pytest.fixture
def scratch(zoo_dir, tmp_path):
    """A writable copy of the tiny zoo."""
    copy = tmp_path / "zoo"
    shutil.copytree(zoo_dir, copy)
    return copy


def test_valid_manifest_json_and_yaml(zoo_dir, tmp_path):
    manifest = load_manifest(zoo_dir / "zoo.json")
    assert manifest.task_names == ["task0", "task1"]
    assert manifest.architecture == Architecture(TINY, TINY_CONFIG)
    assert manifest.task("task0").head.weights == zoo_dir / "heads" / "task0.safetensors"
    assert manifest.task("task1").head.templates == ("a photo of a {}.", "a {} in the wild.")
    assert manifest.task("task1").data["test"].kind == "csv"
    assert manifest.preprocess.image_size == 32
    data = json.loads((zoo_dir / "zoo.json").read_text())
    (zoo_dir / "zoo_copy.yaml").write_text(yaml.safe_dump(data))
    again = load_manifest(zoo_dir / "zoo_copy.yaml")
    (zoo_dir / "zoo_copy.yaml").unlink()
    assert again.to_dict() == manifest.to_dict()
    assert manifest.to_dict()["tasks"][0]["finetuned"] == "finetuned/task0.safetensors"


@pytest.mark.parametrize("edit, field, message", [
    (lambda m: m["tasks"][0].update(finetuned="finetuned/nope.safetensors"), "tasks[0] (task0).finetuned",
     "file not found"),
    (lambda m: m.update(colour="red"), "colour", "unknown field"),
    (lambda m: m["tasks"][1].pop("classnames"), "tasks[1] (task1).classnames", "needs classnames"),
    (lambda m: m["tasks"][1].update(name="task0"), "tasks[1].name", "duplicate task"),
    (lambda m: m["tasks"][0].update(head={"templates": ["no placeholder"]}), "tasks[0] (task0).head.templates",
     "{}"),
    (lambda m: m["tasks"][0]["data"].update(holdout={"csv": "x.csv"}), "tasks[0] (task0).data", "unknown split"),
    (lambda m: m.update(format="mergescope-zoo/9"), "format", "not supported"),
    (lambda m: m.pop("architecture"), "architecture", "open_clip"),
    (lambda m: m.update(tasks=[]), "tasks", "non-empty"),
    (lambda m: m["preprocess"].update(std=[0.5, 0.0, 0.5]), "preprocess.std", "positive"),
])
def test_invalid_manifests_name_the_field(scratch, edit, field, message):
    data = json.loads((scratch / "zoo.json").read_text())
    edit(data)
    (scratch / "zoo.json").write_text(json.dumps(data))
    with pytest.raises(ManifestError) as info:
        load_manifest(scratch / "zoo.json")
    assert f"{scratch / 'zoo.json'}: {field}:" in str(info.value) and message in str(info.value)


def test_bad_json_and_unknown_architecture(scratch):
    (scratch / "zoo.json").write_text("{not json")
    with pytest.raises(ManifestError, match="not valid JSON"):
        load_zoo(scratch)
    with pytest.raises(ArchitectureError, match="unknown open_clip model"):
        register_architecture(Architecture("ViT-Q-99"))


def test_load_zoo_names_a_bad_checkpoint_before_loading_anything(scratch):
    path = scratch / "finetuned" / "task1.safetensors"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(CheckpointFileError) as info:
        load_zoo(scratch)
    assert info.value.problem == "truncated" and info.value.path == str(path)
    clip = tiny_clip(seed=3)
    visual = {k: v.detach().clone() for k, v in clip.visual.state_dict().items()}
    visual["proj"] = torch.zeros(32, 8)
    save_file(visual, str(path))
    with pytest.raises(CheckpointFileError, match="shape mismatch.*proj"):
        load_zoo(scratch)


def test_infer_manifest_from_folder(scratch):
    (scratch / "zoo.json").unlink()
    register_architecture(Architecture(TINY, TINY_CONFIG))  # a custom config must be registered to be matched
    manifest, report = infer_manifest(scratch)
    assert manifest.task_names == ["task0", "task1"]
    assert manifest.pretrained == scratch / "pretrained.safetensors"
    assert manifest.task("task0").head.weights == scratch / "heads" / "task0.safetensors"
    assert manifest.task("task1").head is None  # a zero-shot head cannot be inferred
    assert manifest.task("task0").data["val"].kind == "imagefolder"
    assert manifest.task("task1").data["test"].kind == "imagefolder"  # data/task1/test/ beside test.csv
    assert manifest.task("task0").classnames == ["bird", "cat", "dog"]
    assert manifest.architecture.name == TINY
    text = "\n".join(report)
    assert "pretrained checkpoint: pretrained.safetensors" in text
    assert "task task1: fine-tuned finetuned/task1.safetensors; head none found" in text
    assert f"architecture: {TINY}" in text
    zoo = load_zoo(scratch)
    assert zoo.report == report and zoo.task_names == ["task0", "task1"]


def test_infer_task_vectors_layout(tmp_path):
    """<Task>/finetuned.pt + zeroshot.pt beside it and head_<Task>.pt at the top, as task_vectors stores them."""
    register_architecture(Architecture(TINY, TINY_CONFIG))
    clip = tiny_clip(seed=4)
    visual = {k: v.detach().clone() for k, v in clip.visual.state_dict().items()}
    for task in ("MNIST", "SVHN"):
        (tmp_path / task).mkdir()
        torch.save(visual, tmp_path / task / "zeroshot.pt")
        torch.save({k: v + 0.01 for k, v in visual.items()}, tmp_path / task / "finetuned.pt")
        torch.save({"weight": torch.randn(10, 16), "bias": torch.zeros(10)}, tmp_path / f"head_{task}.pt")
    manifest, report = infer_manifest(tmp_path)
    assert manifest.task_names == ["MNIST", "SVHN"]
    assert manifest.pretrained == tmp_path / "MNIST" / "zeroshot.pt"
    assert manifest.task("SVHN").finetuned == tmp_path / "SVHN" / "finetuned.pt"
    assert manifest.task("SVHN").head.weights == tmp_path / "head_SVHN.pt"
    assert any("QuickGELU vs GELU cannot be read" in line for line in report)
    zoo = load_zoo(tmp_path)
    assert zoo.head("MNIST").num_classes == 10


def test_empty_folder_is_reported(tmp_path):
    with pytest.raises(ManifestError, match="no pretrained checkpoint found"):
        infer_manifest(tmp_path)


# ---------------------------------------------------------------------------------------------- architecture inference
@pytest.fixture(scope="module")
def real_shapes():
    """Full open_clip CLIP state-dict shapes of real models, from meta-device builds (no memory, no init)."""
    from merging.models import build_clip
    shapes = {}
    for name in ("ViT-B-32", "ViT-B-16", "ViT-L-14"):
        with torch.device("meta"):
            model = build_clip(Architecture(name), "meta")
        shapes[name] = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    return shapes


@pytest.mark.parametrize("name", ["ViT-B-32", "ViT-B-16", "ViT-L-14"])
def test_architecture_is_inferred_from_shapes_and_prefers_plain_names(tmp_path, real_shapes, name):
    """Real-shaped checkpoints (zero-filled, written sparsely: a 1.7 GB ViT-L-14 file costs no disk) in three
    layouts: an open_clip folder without zoo.json is the plain model (not mt5-base-ViT-B-32), a Hugging Face
    CLIPVisionModel (OpenAI-derived) the -quickgelu variant."""
    from hostile_files import sparse_safetensors
    from merging.checkpoints import open_clip_visual_to_hf

    full = real_shapes[name]
    visual = {k[len("visual."):]: v for k, v in full.items() if k.startswith("visual.")}
    hf = {k: tuple(v.shape) for k, v in open_clip_visual_to_hf({k: torch.empty(s, device="meta")
                                                                for k, s in visual.items()}).items()}
    (tmp_path / "finetuned").mkdir()
    sparse_safetensors(tmp_path / "pretrained.safetensors", full)
    sparse_safetensors(tmp_path / "finetuned" / "cars.safetensors", visual)
    manifest, report = infer_manifest(tmp_path)
    assert manifest.architecture == Architecture(name)
    assert any(line.startswith(f"architecture: {name} (") and "QuickGELU vs GELU cannot be read" in line
               for line in report)
    zoo = load_zoo(tmp_path)  # every file checked against the inferred architecture, from headers only
    assert zoo.architecture.name == name and zoo.task_names == ["cars"]
    for layout, shapes, expected in (("visual", visual, name), ("hf", hf, f"{name}-quickgelu")):
        path = sparse_safetensors(tmp_path / f"{layout}.safetensors", shapes)
        arch, note = infer_architecture(path)
        assert arch.name == expected, note
        assert "mt5" not in arch.name and "roberta" not in arch.name


def test_architecture_inference_refuses_an_unknown_vit(tmp_path, real_shapes):
    from hostile_files import sparse_safetensors
    shapes = {k: v for k, v in real_shapes["ViT-B-32"].items() if not k.startswith("visual.transformer.resblocks.11.")}
    with pytest.raises(ManifestError, match="no open_clip config has this ViT's keys and shapes.*11 layers"):
        infer_architecture(sparse_safetensors(tmp_path / "pretrained.safetensors", shapes))
