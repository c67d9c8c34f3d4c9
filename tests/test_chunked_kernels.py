"""The chunked CPU kernels of TIES and PCB give exactly the values of the plain references (tests/reference.py;
the engine may write −0 where they write +0) and the same bits as the whole-vector torch path, for any chunk
size and task count (TIES sweeps tasks four at a time), on inputs with heavy ties and exact zeros."""
import pytest
import torch

import reference as ref
from merging import TaskVectorSpace, chunks, run_merge, select
from merging.methods import emr
from merging.param_index import ParamEntry, ParamIndex

CHUNKS = [8, 64, 1000]  # multiples of 8 (packed masks); P = 3001 is not


def tied_space(seed: int, T: int = 4, P: int = 3001) -> TaskVectorSpace:
    g = torch.Generator().manual_seed(seed)
    taus = torch.round(torch.randn(T, P, generator=g) * 4) / 8  # few distinct values: ties everywhere
    taus[:, : P // 20] = 0.0
    taus[0, P // 3: P // 2] = 0.0
    index = ParamIndex([ParamEntry("w", (P,), 0, P, torch.float32, "block.00", "mlp.c_fc")])
    return TaskVectorSpace(index, {"__order__": ["w"]}, torch.zeros(P), taus, [f"t{i}" for i in range(T)])


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.equal(a.contiguous().view(torch.int32), b.contiguous().view(torch.int32))


@pytest.fixture
def small_selection(monkeypatch):
    """Selection by the sampled bracket (the compiled kernel over |τ|) even on these small vectors."""
    monkeypatch.setattr(select, "SMALL", 64)
    monkeypatch.setattr(select, "SAMPLE", 32)


@pytest.mark.parametrize("chunk", CHUNKS)
@pytest.mark.parametrize("T", [3, 4, 6])
@pytest.mark.parametrize("merge,k", [("mean", 20.0), ("sum", 50.0), ("mean", 100.0)])
def test_ties_chunked_equals_reference_exactly(monkeypatch, small_selection, chunk, T, merge, k):
    sp = tied_space(chunk + T, T)
    monkeypatch.setattr(chunks, "CHUNK", chunk)
    result = run_merge(sp, "ties", {"k": k, "merge": merge, "lam": 1.0})
    expected, keeps = ref.ties_merged(torch.stack([sp.tau(t) for t in range(sp.T)]), k, merge)
    assert torch.equal(result.delta, expected)
    assert torch.equal(result.masks["ties_trim"].to_bool(), keeps)


@pytest.mark.parametrize("chunk", CHUNKS)
@pytest.mark.parametrize("r,q", [(0.05, 0.01), (0.3, 0.05), (0.5, 0.0)])
def test_pcb_chunked_equals_reference_exactly(monkeypatch, chunk, r, q):
    sp = tied_space(chunk + 1)
    lams = [1.2, 0.8, 1.0, 1.3]
    monkeypatch.setattr(chunks, "CHUNK", chunk)
    result = run_merge(sp, "pcb", {"r": r, "clip_q": q, "lam": lams})
    expected, kept = ref.pcb(sp.theta0, torch.stack([sp.tau(t) for t in range(sp.T)]), r, q, lams)
    assert torch.equal(sp.theta0 + result.delta, expected)
    assert torch.equal(result.masks["pcb_keep"].to_bool(), kept)


@pytest.mark.parametrize("chunk", CHUNKS)
@pytest.mark.parametrize("method,params", [("ties", {}), ("ties", {"merge": "sum", "k": 35.0}), ("pcb", {}),
                                           ("pcb", {"inter": "sum_tanh", "r": 0.3, "clip_q": 0.05}),
                                           ("dare", {"base": "ties", "rescale": "l1", "p": 0.5}),
                                           ("consensus", {"base": "ties"}), ("emr", {})])
@pytest.mark.parametrize("T", [4, 7])
def test_chunked_equals_whole_vector_path(monkeypatch, small_selection, chunk, method, params, T):
    sp = tied_space(chunk + 2, T)
    monkeypatch.setattr(chunks, "CHUNK", chunk)
    monkeypatch.setattr(emr, "CHUNK", chunk)  # EMR's chunks are part of its float64 sums' definition
    fast = run_merge(sp, method, params)
    monkeypatch.setattr(chunks, "NUMPY_KERNELS", False)
    plain = run_merge(sp, method, params)
    assert same_bits(fast.delta, plain.delta)
    for name in fast.masks:
        assert torch.equal(fast.masks[name].packed, plain.masks[name].packed)


def test_masks_chunks_must_be_byte_aligned():
    from merging.maskset import MaskSet
    masks = MaskSet.empty(["a"], 20, "cpu", "x")
    masks.set_chunk(0, 16, torch.ones(4, dtype=torch.bool))  # the last chunk may be short
    assert masks.to_bool()[0].tolist() == [False] * 16 + [True] * 4
    with pytest.raises(ValueError, match="byte-aligned"):
        masks.set_chunk(0, 4, torch.ones(8, dtype=torch.bool))
    with pytest.raises(ValueError, match="byte-aligned"):
        masks.set_chunk(0, 8, torch.ones(5, dtype=torch.bool))
