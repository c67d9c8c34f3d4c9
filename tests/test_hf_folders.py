"""Hugging Face checkpoint folders of decoder LLMs: tiny random Llama / Qwen2 models saved sharded by
``transformers`` → CLI merge → sharded folder that ``transformers`` loads back; index limits; output safety;
the ``--evaluator`` plug-in."""
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from merging import TaskVectorSpace, run_merge
from merging.checkpoints import CheckpointFileError
from merging.checkpoints import hf_folder
from merging.checkpoints.hf_folder import INDEX, open_state_dict
from merging.cli import main
from merging.param_index import ParamIndex, classify
from merging.space import described

transformers = pytest.importorskip("transformers")

SHARD = "24KB"  # a tiny model (~27k parameters) is saved in several shards
TASKS = ("alpha", "beta", "gamma")
TOKENIZER_CONFIG = '{"model_max_length": 64, "tokenizer_class": "PreTrainedTokenizerFast"}\n'


def _config(arch: str):
    shape = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=128, max_position_embeddings=64)
    if arch == "llama":
        return transformers.LlamaConfig(**shape)
    return transformers.Qwen2Config(**shape, tie_word_embeddings=True)  # Qwen2-0.5B ties embed and lm_head


def _save(model, folder: Path) -> None:
    model.save_pretrained(folder, safe_serialization=True, max_shard_size=SHARD)


def _tensors(folder: Path) -> dict:
    out = {}
    for shard in sorted(folder.glob("*.safetensors")):
        out.update(load_file(str(shard)))
    return out


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def zoo(request, tmp_path_factory):
    """θ0 (a random model; Qwen2 in bfloat16) and three fine-tunes: θ0 plus sparse noise."""
    arch = request.param
    root = tmp_path_factory.mktemp(arch)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(_config(arch))
    if arch == "qwen2":
        model = model.to(torch.bfloat16)
    _save(model, root / "base")
    (root / "base" / "tokenizer_config.json").write_text(TOKENIZER_CONFIG)
    generator = torch.Generator().manual_seed(1)
    base = {k: v.clone() for k, v in model.state_dict().items()}
    for task in TASKS:
        with torch.no_grad():
            for name, p in model.named_parameters():
                noise = torch.randn(p.shape, generator=generator) * 0.02
                keep = torch.rand(p.shape, generator=generator) < 0.5
                p.copy_((base[name].float() + noise * keep).to(p.dtype))
        _save(model, root / task)
    return arch, root


def _errors(capsys) -> list[str]:
    """The CLI's error lines (progress lines on stderr start with a carriage return)."""
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]


def _merge_args(root: Path, out: Path, method: str, *extra):
    return ["merge", "--pretrained", str(root / "base"), "--finetuned", *(str(root / t) for t in TASKS),
            "--method", method, "--out", str(out), "--max-shard-size", "16K", "--device", "cpu", *extra]


@pytest.mark.parametrize("method,params", [("ties", ["k=30", "lam=0.8"]), ("task_arithmetic", ["lam=0.4"])])
def test_cli_merge_writes_a_sharded_folder_transformers_loads(zoo, tmp_path, capsys, one_thread, method, params):
    arch, root = zoo
    assert len(list((root / "base").glob("model-*.safetensors"))) > 1  # the inputs are sharded
    out = tmp_path / "merged"
    assert main(_merge_args(root, out, method, "--set", *params)) == 0, capsys.readouterr().err
    shards = sorted(out.glob("model-*-of-*.safetensors"))
    assert len(shards) > 1
    index = json.loads((out / INDEX).read_text())
    written = _tensors(out)
    assert index["metadata"]["total_size"] == sum(v.numel() * v.element_size() for v in written.values())
    assert set(index["weight_map"]) == set(written)
    for key, shard in index["weight_map"].items():
        assert key in load_file(str(out / shard))
    assert all(s.stat().st_size <= 16 * 1024 + 4096 for s in shards if len(load_file(str(s))) > 1)
    assert (out / "config.json").read_bytes() == (root / "base" / "config.json").read_bytes()
    assert (out / "generation_config.json").exists()
    assert (out / "tokenizer_config.json").read_text() == TOKENIZER_CONFIG

    # the in-memory merge of plain (non-lazy) state dicts
    base = _tensors(root / "base")
    space = TaskVectorSpace.build(base, [_tensors(root / t) for t in TASKS], list(TASKS), device="cpu")
    cli_params = dict(p.split("=") for p in params)
    expected = space.state_dict(run_merge(space, method, {k: float(v) for k, v in cli_params.items()}).delta)
    assert set(written) == set(expected)
    for key, value in expected.items():
        assert written[key].dtype == base[key].dtype and torch.equal(written[key], value), key

    loaded = transformers.AutoModelForCausalLM.from_pretrained(out).state_dict()
    for key, value in expected.items():
        assert torch.equal(loaded[key], value), key
    if arch == "qwen2":  # tied: lm_head is not in the files, and loads as the merged embedding
        assert "lm_head.weight" not in written
        assert torch.equal(loaded["lm_head.weight"], expected["model.embed_tokens.weight"])


def test_out_of_core_and_single_file_finetunes_give_the_same_folder(zoo, tmp_path, capsys, one_thread):
    """--max-memory puts the stack on disk; a fine-tune may also be one safetensors file: same tensors."""
    _, root = zoo
    assert main(_merge_args(root, tmp_path / "memory", "ties")) == 0
    save_file(_tensors(root / TASKS[0]), str(tmp_path / "alpha.safetensors"))
    args = ["merge", "--pretrained", str(root / "base"), "--finetuned", str(tmp_path / "alpha.safetensors"),
            *(str(root / t) for t in TASKS[1:]), "--tasks", *TASKS, "--method", "ties", "--out",
            str(tmp_path / "disk"), "--max-shard-size", "16K", "--device", "cpu", "--max-memory", "1K",
            "--scratch", str(tmp_path)]
    assert main(args) == 0, capsys.readouterr().err
    memory, disk = _tensors(tmp_path / "memory"), _tensors(tmp_path / "disk")
    assert memory.keys() == disk.keys() and all(torch.equal(memory[k], disk[k]) for k in memory)


def test_single_safetensors_files_of_any_architecture(zoo, tmp_path, capsys, one_thread):
    """Plain safetensors files with LLM keys (no CLIP layout) merge like their folders; no config to copy."""
    _, root = zoo
    assert main(_merge_args(root, tmp_path / "from-folders", "task_arithmetic")) == 0
    for name in ("base", *TASKS):
        save_file(_tensors(root / name), str(tmp_path / f"{name}.safetensors"))
    args = ["merge", "--pretrained", str(tmp_path / "base.safetensors"), "--finetuned",
            *(str(tmp_path / f"{t}.safetensors") for t in TASKS), "--method", "task_arithmetic", "--out",
            str(tmp_path / "from-files"), "--device", "cpu"]
    assert main(args) == 0, capsys.readouterr().err
    folders, files = _tensors(tmp_path / "from-folders"), _tensors(tmp_path / "from-files")
    assert folders.keys() == files.keys() and all(torch.equal(folders[k], files[k]) for k in folders)
    assert sorted(p.name for p in (tmp_path / "from-files").iterdir()) == ["model-00001-of-00001.safetensors", INDEX]


def test_lazy_folder_reads_each_tensor_once_and_matches_plain_loading(zoo, monkeypatch, one_thread):
    _, root = zoo
    reads = []
    real = hf_folder.LazyStateDict.__getitem__
    monkeypatch.setattr(hf_folder.LazyStateDict, "__getitem__",
                        lambda self, key: reads.append((str(self.path), key)) or real(self, key))
    lazy = TaskVectorSpace.build(open_state_dict(root / "base"), [lambda t=t: open_state_dict(root / t)
                                                                   for t in TASKS], list(TASKS), device="cpu")
    assert len(reads) == len(set(reads)) == 4 * len(_tensors(root / "base"))  # once per tensor and checkpoint
    plain = TaskVectorSpace.build(_tensors(root / "base"), [_tensors(root / t) for t in TASKS], list(TASKS),
                                  device="cpu")
    order = {e.name: e for e in plain.index.entries}
    for e in lazy.index.entries:
        assert torch.equal(lazy.theta0[e.slice], plain.theta0[order[e.name].slice])
        assert torch.equal(lazy.stack[:, e.slice], plain.stack[:, order[e.name].slice])


def test_param_index_names_llm_layers_and_kinds(zoo):
    _, root = zoo
    index = ParamIndex.from_state_dict(described(open_state_dict(root / "base")))
    kinds = {e.name: (e.layer, e.kind) for e in index.entries}
    assert kinds["model.layers.1.self_attn.q_proj.weight"] == ("block.01", "attn.in_proj")
    assert kinds["model.layers.0.self_attn.o_proj.weight"] == ("block.00", "attn.out_proj")
    assert kinds["model.layers.0.mlp.gate_proj.weight"] == ("block.00", "mlp.gate")
    assert kinds["model.layers.1.mlp.up_proj.weight"] == ("block.01", "mlp.c_fc")
    assert kinds["model.layers.1.mlp.down_proj.weight"] == ("block.01", "mlp.c_proj")
    assert kinds["model.layers.0.input_layernorm.weight"] == ("block.00", "ln")
    assert kinds["model.embed_tokens.weight"] == ("embed", "embedding")
    assert kinds["model.norm.weight"] == ("head", "ln")
    assert classify("lm_head.weight") == ("head", "proj")
    assert index.layer_order() == ["embed", "block.00", "block.01", "head"]
    names = [e.name for e in index.entries]  # natural order: embeddings, layer 0, layer 1, ...
    assert names.index("model.embed_tokens.weight") < names.index("model.layers.0.mlp.up_proj.weight") \
        < names.index("model.layers.1.mlp.up_proj.weight") < names.index("model.norm.weight")


def test_stats_by_layer_of_an_llm_merge(zoo, capsys, one_thread):
    _, root = zoo
    code = main(["stats", "--pretrained", str(root / "base"), "--finetuned", *(str(root / t) for t in TASKS),
                 "--method", "ties", "--device", "cpu"])
    out = capsys.readouterr().out
    assert code == 0
    by_layer = out.split("agreement by layer")[1].split("##")[0]
    for layer in ("embed", "block.00", "block.01", "head"):
        assert layer in by_layer
    assert "mlp.gate" in out.split("agreement by kind")[1]


# ---------------------------------------------------------------------------------------------- hostile folders
def _copy(root: Path, tmp: Path, name="base") -> Path:
    target = tmp / name
    shutil.copytree(root / "base", target)
    return target


def _index(folder: Path) -> dict:
    return json.loads((folder / INDEX).read_text())


def _write_index(folder: Path, index) -> None:
    (folder / INDEX).write_text(index if isinstance(index, str) else json.dumps(index))


def _first(folder: Path) -> tuple[str, str]:
    key, shard = next(iter(_index(folder)["weight_map"].items()))
    return key, shard


def _edit_weight_map(edit):
    def apply(folder: Path) -> None:
        index = _index(folder)
        edit(index["weight_map"], folder)
        _write_index(folder, index)
    return apply


def _move_tensor_to_other_shard(weight_map, folder):
    key, shard = next(iter(weight_map.items()))
    other = next(s for s in weight_map.values() if s != shard)
    tensors = load_file(str(folder / other))
    tensors[key] = torch.zeros(1)
    save_file(tensors, str(folder / other))  # now in two shards


def _drop_from_shard(weight_map, folder):
    key, shard = next(iter(weight_map.items()))
    tensors = load_file(str(folder / shard))
    del tensors[key]
    save_file(tensors, str(folder / shard))


def _extra_in_shard(weight_map, folder):
    shard = next(iter(weight_map.values()))
    tensors = load_file(str(folder / shard))
    tensors["model.stowaway.weight"] = torch.zeros(2)
    save_file(tensors, str(folder / shard))


def _raw_duplicate(folder: Path) -> None:
    text = (folder / INDEX).read_text()
    key, shard = _first(folder)
    _write_index(folder, text.replace('"weight_map": {', f'"weight_map": {{"{key}": "{shard}", ', 1))


HOSTILE = {
    "deep nesting": (lambda f: _write_index(f, '{"metadata": ' + "[" * 5000 + "]" * 5000 + ', "weight_map": {}}'),
                     "over a limit", "nested 5001 deep"),
    "duplicate key": (_raw_duplicate, "corrupt", "duplicate key(s) "),
    "parent shard name": (_edit_weight_map(lambda m, f: m.update({next(iter(m)): "../escape.safetensors"})),
                          "corrupt", "is not a file inside the folder"),
    "absolute shard name": (_edit_weight_map(lambda m, f: m.update({next(iter(m)): "/etc/passwd"})),
                            "corrupt", "is not a file inside the folder"),
    "missing shard": (_edit_weight_map(lambda m, f: m.update({next(iter(m)): "model-99999.safetensors"})),
                      "missing", "shard named by"),
    "tensor missing from shard": (_edit_weight_map(_drop_from_shard), "missing keys", "listed for it in"),
    "tensor not in the index": (_edit_weight_map(_extra_in_shard), "extra keys", "model.stowaway.weight"),
    "tensor in two shards": (_edit_weight_map(_move_tensor_to_other_shard), "corrupt", "also in"),
    "no weight map": (lambda f: _write_index(f, {"metadata": {}}), "corrupt", "no 'weight_map'"),
    "not JSON": (lambda f: _write_index(f, '{"weight_map": '), "corrupt", "not valid JSON"),
    "shard not a name": (_edit_weight_map(lambda m, f: m.update({next(iter(m)): 7})), "corrupt",
                         "is not a shard file name"),
    "newline in a key": (_edit_weight_map(lambda m, f: m.update({"evil\nkey": next(iter(m.values()))})),
                         "missing keys", "evil\\nkey"),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_index_files_give_one_named_line(zoo, tmp_path, capsys, case):
    _, root = zoo
    make, problem, detail = HOSTILE[case]
    folder = _copy(root, tmp_path)
    make(folder)
    with pytest.raises(CheckpointFileError) as error:
        open_state_dict(folder)
    assert error.value.problem == problem and detail in str(error.value), str(error.value)
    code = main(["merge", "--pretrained", str(folder), "--finetuned", str(root / TASKS[0]), "--method",
                 "task_arithmetic", "--out", str(tmp_path / "out"), "--device", "cpu"])
    err = _errors(capsys)
    assert code == 2 and len(err) == 1 and problem in err[0] and str(folder) in err[0], err
    assert not (tmp_path / "out").exists()


def test_index_size_limit(zoo, tmp_path, monkeypatch):
    _, root = zoo
    folder = _copy(root, tmp_path)
    monkeypatch.setattr(hf_folder, "INDEX_MAX_BYTES", (folder / INDEX).stat().st_size - 1)
    with pytest.raises(CheckpointFileError, match="over a limit: the index has"):
        open_state_dict(folder)


def test_finetune_shape_and_key_mismatches_are_named(zoo, tmp_path, capsys):
    _, root = zoo
    wrong = _copy(root, tmp_path, "wrong")
    key, shard = "model.layers.1.mlp.up_proj.weight", _index(wrong)["weight_map"]["model.layers.1.mlp.up_proj.weight"]
    tensors = load_file(str(wrong / shard))
    tensors[key] = tensors[key][:-1].clone()
    save_file(tensors, str(wrong / shard))
    partial = tmp_path / "partial"
    partial.mkdir()
    keep = {k: v for k, v in _tensors(root / TASKS[0]).items() if "layers.1." not in k}
    save_file(keep, str(partial / "model.safetensors"))  # a single-file folder
    for folder, message in ((wrong, f"shape mismatch for {key}"), (partial, "missing key(s) model.layers.1.")):
        code = main(["merge", "--pretrained", str(root / "base"), "--finetuned", str(folder), "--method",
                     "task_arithmetic", "--device", "cpu"])
        err = _errors(capsys)
        assert code == 2 and len(err) == 1 and message in err[0] and str(folder) in err[0], err


# ---------------------------------------------------------------------------------------------- output safety
def test_output_folder_is_new_and_outside_the_inputs(zoo, tmp_path, capsys):
    _, root = zoo
    existing = tmp_path / "taken"
    existing.mkdir()
    (existing / "keep.txt").write_text("mine")
    for out, message in ((existing, "already exists"), (root / "base" / "merged", "inside the input"),
                         (tmp_path / "no" / "such", "does not exist")):
        code = main(_merge_args(root, out, "task_arithmetic"))
        err = capsys.readouterr().err
        assert code == 2 and message in err, err
    assert sorted(p.name for p in existing.iterdir()) == ["keep.txt"]
    assert not (root / "base" / "merged").exists()
    assert main(_merge_args(root, tmp_path / "m", "task_arithmetic", "--format", "open_clip")) == 2
    assert "--format sharded" in capsys.readouterr().err


def test_killed_folder_write_leaves_no_output_and_its_temp_folder_is_cleaned(zoo, tmp_path, monkeypatch, capsys):
    from merging.checkpoints import sharded_export

    _, root = zoo

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(sharded_export.shutil, "copyfile", crash)  # fails after the shards are written
    assert main(_merge_args(root, tmp_path / "merged", "task_arithmetic")) == 2
    assert "disk full" in capsys.readouterr().err
    assert not (tmp_path / "merged").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".merged.")]
    stale = tmp_path / ".merged.999999999-abcdefgh.tmp"  # left by a killed writer (no such pid)
    stale.mkdir()
    (stale / "model-00001-of-00002.safetensors").write_bytes(b"partial")
    monkeypatch.undo()
    assert main(_merge_args(root, tmp_path / "merged", "task_arithmetic")) == 0
    assert not stale.exists() and (tmp_path / "merged" / INDEX).exists()


def test_recipe_of_a_folder_merge_reruns_bit_for_bit(zoo, tmp_path, capsys, one_thread):
    _, root = zoo
    assert main(_merge_args(root, tmp_path / "first", "ties")) == 0
    assert main(["merge", "--recipe", str(tmp_path / "first.recipe.yaml"), "--out", str(tmp_path / "again"),
                 "--max-shard-size", "16K", "--device", "cpu"]) == 0, capsys.readouterr().err
    first, again = _tensors(tmp_path / "first"), _tensors(tmp_path / "again")
    assert first.keys() == again.keys() and all(torch.equal(first[k], again[k]) for k in first)
    shard = next((root / TASKS[0]).glob("model-*.safetensors"))
    changed = tmp_path / "changed"
    shutil.copytree(root / TASKS[0], changed)
    tensors = load_file(str(changed / shard.name))
    tensors = {k: v + 1 for k, v in tensors.items()}
    save_file(tensors, str(changed / shard.name))
    code = main(["merge", "--recipe", str(tmp_path / "first.recipe.yaml"), "--pretrained", str(root / "base"),
                 "--finetuned", str(changed), *(str(root / t) for t in TASKS[1:]), "--device", "cpu"])
    assert code == 2 and "sha256" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- evaluator plug-in
EVALUATOR = '''
import torch

def evaluate(state_dict, task, split="test"):
    """A stand-in accuracy: closeness of one tensor to a per-task target (deterministic, in (0, 1])."""
    value = state_dict["model.norm.weight"].float()
    target = torch.full_like(value, {"alpha": 1.0, "beta": 0.9, "gamma": 1.1}[task])
    return 1.0 / (1.0 + float((value - target).abs().sum()) + (0.5 if split == "val" else 0.0))

def broken(state_dict, task):
    return "high"
'''


def _reference_accuracy(state, task, split="test"):
    namespace: dict = {}
    exec(EVALUATOR, namespace)  # the same function the CLI imports from the file
    return namespace["evaluate"](state, task, split)


def test_evaluator_plugin_scores_the_merge_and_baselines(zoo, tmp_path, capsys, one_thread):
    _, root = zoo
    plugin = tmp_path / "evals.py"
    plugin.write_text(EVALUATOR)
    code = main(["merge", "--pretrained", str(root / "base"), "--finetuned", *(str(root / t) for t in TASKS),
                 "--method", "task_arithmetic", "--set", "lam=0.5", "--eval", "--evaluator",
                 f"{plugin}:evaluate", "--device", "cpu"])
    out = capsys.readouterr().out
    assert code == 0
    space = TaskVectorSpace.build(_tensors(root / "base"), [_tensors(root / t) for t in TASKS], list(TASKS),
                                  device="cpu")
    merged = space.state_dict(run_merge(space, "task_arithmetic", {"lam": 0.5}).delta)
    table = out.split("per-task test accuracy")[1]
    for t, task in enumerate(TASKS):
        row = next(line.split() for line in table.splitlines() if line.split()[:1] == [task])
        accuracy = _reference_accuracy(merged, task)
        finetuned = _reference_accuracy(space.state_dict(space.tau(t)), task)
        assert float(row[1]) == pytest.approx(_reference_accuracy(space.state_dict(), task), abs=1e-4)
        assert float(row[2]) == pytest.approx(finetuned, abs=1e-4)
        assert float(row[4]) == pytest.approx(accuracy, abs=1e-4)
    mean = sum(_reference_accuracy(merged, task) for task in TASKS) / len(TASKS)
    assert f"mean accuracy {mean:.4f}" in out


def test_evaluator_plugin_drives_a_sweep_without_a_zoo(zoo, tmp_path, capsys, one_thread, monkeypatch):
    _, root = zoo
    (tmp_path / "my_evals.py").write_text(EVALUATOR)
    monkeypatch.syspath_prepend(str(tmp_path))
    code = main(["sweep", "--pretrained", str(root / "base"), "--finetuned", *(str(root / t) for t in TASKS),
                 "--method", "task_arithmetic", "--grid", "lam=0.0,0.3,1.0", "--evaluator", "my_evals:evaluate",
                 "--device", "cpu"])
    out = capsys.readouterr().out
    assert code == 0
    space = TaskVectorSpace.build(_tensors(root / "base"), [_tensors(root / t) for t in TASKS], list(TASKS),
                                  device="cpu")
    means = {}
    for lam in (0.0, 0.3, 1.0):
        merged = space.state_dict(run_merge(space, "task_arithmetic", {"lam": lam}).delta)
        means[lam] = sum(_reference_accuracy(merged, task, "val")
                         / _reference_accuracy(space.state_dict(space.tau(t)), task, "val")
                         for t, task in enumerate(TASKS)) / len(TASKS)
    best = max(means, key=means.get)
    assert f"best: lam={best} (mean normalized {means[best]:.4f})" in out


def test_evaluator_plugin_drives_the_library_selection(zoo, tmp_path, one_thread):
    """merging.selection.select with the plug-in (no zoo): λ of Task Arithmetic, per-task λ of TALL."""
    from merging.plugin_eval import load_evaluator
    from merging.selection import select

    _, root = zoo
    (tmp_path / "evals.py").write_text(EVALUATOR)
    plugin = load_evaluator(f"{tmp_path / 'evals.py'}:evaluate")
    space = TaskVectorSpace.build(_tensors(root / "base"), [_tensors(root / t) for t in TASKS], list(TASKS),
                                  device="cpu")
    reference = dict(zip(TASKS, plugin.finetuned(space, TASKS, "val")))
    grid = [0.0, 0.5, 1.0]
    chosen = select(None, space, "task_arithmetic", grid=grid, reference=reference, evaluator=plugin)
    means = [sum(_reference_accuracy(space.state_dict(run_merge(space, "task_arithmetic", {"lam": lam}).delta), t,
                                     "val") / reference[t] for t in TASKS) / len(TASKS) for lam in grid]
    assert chosen.params["lam"] == grid[means.index(max(means))]
    tall = select(None, space, "tall", grid=grid, evaluator=plugin)
    for t, task in enumerate(TASKS):
        scores = []
        for lam in grid:
            result = run_merge(space, "tall", {"tall_lambda": lam})
            scores.append(_reference_accuracy(space.state_dict(result.task_delta(t)), task, "val"))
        assert tall.params["tall_lambda"][t] == grid[scores.index(max(scores))]


@pytest.mark.parametrize("spec,message", [
    ("nowhere.py:evaluate", "no such file"), ("{plugin}:missing", "has no callable 'missing'"),
    ("{plugin}", "is not MODULE:FUNCTION"), ("no_such_module_xyz:evaluate", "cannot import module"),
    ("{plugin}:broken", "returned 'high' for task"),
])
def test_bad_evaluators_exit_2_with_one_line(zoo, tmp_path, capsys, spec, message):
    _, root = zoo
    plugin = tmp_path / "evals.py"
    plugin.write_text(EVALUATOR)
    code = main(["merge", "--pretrained", str(root / "base"), "--finetuned", str(root / TASKS[0]), "--method",
                 "task_arithmetic", "--eval", "--evaluator", spec.format(plugin=plugin), "--device", "cpu"])
    err = _errors(capsys)
    assert code == 2 and len(err) == 1 and message in err[0], err
