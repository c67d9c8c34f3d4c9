"""Task-vector space construction, mapping back to state dicts, and bad-input errors."""
import pytest
import torch

from engine_fixtures import SHAPES, space as make_space, state_dicts
from merging import CheckpointError, TaskVectorSpace
from merging.param_index import classify


def test_build_layout_and_roundtrip():
    base, fts = state_dicts(T=2)
    sp = TaskVectorSpace.build(base, fts, ["a", "b"], device="cpu")
    assert sp.P == sum(torch.Size(s).numel() for s in SHAPES.values())
    assert sp.stack.shape == (2, sp.P)
    # θ0 + τt reproduces each fine-tuned checkpoint; integer buffers are carried over untouched
    for t, ft in enumerate(fts):
        state = sp.state_dict(sp.tau(t))
        assert list(state) == list(base)
        for k, v in ft.items():
            assert state[k].dtype == v.dtype
            torch.testing.assert_close(state[k], v, rtol=0, atol=1e-6)
    assert all(torch.equal(sp.state_dict()[k], v) for k, v in base.items())


def test_loaders_are_called_once_each():
    base, fts = state_dicts(T=3)
    calls = []

    def loader(i):
        def load():
            calls.append(i)
            return fts[i]
        return load

    sp = TaskVectorSpace.build(base, [loader(i) for i in range(3)], device="cpu")
    assert calls == [0, 1, 2] and sp.task_names == ["task0", "task1", "task2"]


def test_half_precision_stack_and_subset_view():
    sp = make_space(T=3, dtype="float16")
    assert sp.stack.dtype == torch.float16 and sp.tau(0).dtype == torch.float32
    sub = sp.subset(["task2", "task0"])
    assert sub.stack is sp.stack and sub.T == 2
    assert torch.equal(sub.tau(0), sp.tau(2))
    torch.testing.assert_close(sub.sum_tau(), sp.tau(2) + sp.tau(0))
    with pytest.raises(CheckpointError, match="unknown task 'nope'"):
        sp.subset(["nope"])


@pytest.mark.parametrize("damage,message", [
    (lambda ft: ft.pop("proj"), "missing key.*proj"),
    (lambda ft: ft.__setitem__("extra.weight", torch.zeros(2)), "unexpected key.*extra.weight"),
    (lambda ft: ft.__setitem__("ln_pre.weight", torch.zeros(9)), r"shape mismatch for ln_pre.weight: \(9,\)"),
    (lambda ft: ft["conv1.weight"].view(-1).__setitem__(5, float("nan")), "NaN/Inf.*conv1.weight"),
    (lambda ft: ft["proj"].view(-1).__setitem__(0, float("inf")), "NaN/Inf.*proj"),
])
def test_bad_checkpoints_name_the_key_and_task(damage, message):
    base, fts = state_dicts(T=2)
    damage(fts[1])
    with pytest.raises(CheckpointError, match=message) as info:
        TaskVectorSpace.build(base, fts, ["a", "b"], device="cpu")
    assert "'b'" in str(info.value)


def test_bad_task_lists():
    base, fts = state_dicts(T=2)
    with pytest.raises(CheckpointError, match="at least one task"):
        TaskVectorSpace.build(base, [], device="cpu")
    with pytest.raises(CheckpointError, match="duplicate"):
        TaskVectorSpace.build(base, fts, ["a", "a"], device="cpu")
    with pytest.raises(CheckpointError, match="2 fine-tuned"):
        TaskVectorSpace.build(base, fts, ["a"], device="cpu")
    bad = dict(base)
    bad["ln_post.bias"] = torch.full((8,), float("nan"))
    with pytest.raises(CheckpointError, match="pretrained.*ln_post.bias"):
        TaskVectorSpace.build(bad, fts, device="cpu")


def test_unknown_dtype_and_missing_cuda():
    base, fts = state_dicts(T=1)
    with pytest.raises(ValueError, match="unknown dtype"):
        TaskVectorSpace.build(base, fts, device="cpu", dtype="int8")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="no GPU"):
            TaskVectorSpace.build(base, fts, device="cuda")


@pytest.mark.parametrize("name,layer,kind", [
    ("transformer.resblocks.11.attn.in_proj_weight", "block.11", "attn.in_proj"),
    ("visual.transformer.resblocks.3.mlp.c_fc.bias", "block.03", "mlp.c_fc"),
    ("transformer.resblocks.0.attn.out_proj.weight", "block.00", "attn.out_proj"),
    ("transformer.resblocks.0.ln_2.weight", "block.00", "ln"),
    ("vision_model.encoder.layers.4.self_attn.k_proj.weight", "block.04", "attn.in_proj"),
    ("vision_model.encoder.layers.4.mlp.fc2.weight", "block.04", "mlp.c_proj"),
    ("conv1.weight", "embed", "embedding"),
    ("positional_embedding", "embed", "embedding"),
    ("ln_pre.bias", "embed", "ln"),
    ("ln_post.weight", "head", "ln"),
    ("proj", "head", "proj"),
    ("model.embed_tokens.weight", "embed", "embedding"),
    ("model.layers.7.self_attn.q_proj.weight", "block.07", "attn.in_proj"),
    ("model.layers.7.self_attn.o_proj.weight", "block.07", "attn.out_proj"),
    ("model.layers.7.self_attn.q_norm.weight", "block.07", "ln"),
    ("model.layers.12.mlp.gate_proj.weight", "block.12", "mlp.gate"),
    ("model.layers.12.mlp.up_proj.weight", "block.12", "mlp.c_fc"),
    ("model.layers.12.mlp.down_proj.weight", "block.12", "mlp.c_proj"),
    ("model.layers.0.input_layernorm.weight", "block.00", "ln"),
    ("model.layers.0.post_attention_layernorm.weight", "block.00", "ln"),
    ("model.norm.weight", "head", "ln"),
    ("lm_head.weight", "head", "proj"),
])
def test_parameter_classification(name, layer, kind):
    assert classify(name) == (layer, kind)


@pytest.mark.parametrize("numpy_path", [True, False])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_finiteness_check_names_the_tensor_and_accepts_huge_finite_values(monkeypatch, numpy_path, bad):
    from merging import chunks
    from merging.param_index import ParamIndex
    from merging.space import _check_finite
    monkeypatch.setattr(chunks, "NUMPY_KERNELS", numpy_path)
    sizes = {"a": chunks.CHUNK - 3, "b": 10, "c": chunks.CHUNK + 7}
    index = ParamIndex.from_state_dict({k: torch.zeros(n) for k, n in sizes.items()})
    flat = torch.full((index.numel,), 3.0e38)  # a float32 sum of any chunk would overflow; all are finite
    _check_finite(flat, index, "x")
    for name, where in (("a", 0), ("b", 4), ("c", chunks.CHUNK + 6)):
        values = flat.clone()
        entry = next(e for e in index.entries if e.name == name)
        values[entry.offset + where] = bad
        with pytest.raises(CheckpointError, match=f"NaN/Inf.* in {name}$"):
            _check_finite(values, index, "x")
