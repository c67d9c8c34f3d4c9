"""Small open_clip-like state dicts and spaces for engine tests."""
import torch

from merging import TaskVectorSpace

SHAPES = {
    "conv1.weight": (8, 3, 2, 2),
    "class_embedding": (8,),
    "positional_embedding": (5, 8),
    "ln_pre.weight": (8,),
    "transformer.resblocks.0.attn.in_proj_weight": (24, 8),
    "transformer.resblocks.0.attn.in_proj_bias": (24,),
    "transformer.resblocks.0.mlp.c_fc.weight": (16, 8),
    "transformer.resblocks.1.attn.out_proj.weight": (8, 8),
    "transformer.resblocks.1.mlp.c_proj.weight": (8, 16),
    "ln_post.bias": (8,),
    "proj": (8, 4),
}


def state_dicts(T=3, seed=0, scale=0.1):
    g = torch.Generator().manual_seed(seed)
    base = {k: torch.randn(s, generator=g) for k, s in SHAPES.items()}
    base["num_batches_tracked"] = torch.tensor(7)
    fts = []
    for _ in range(T):
        ft = {k: (v + scale * torch.randn(v.shape, generator=g) if v.is_floating_point() else v.clone())
              for k, v in base.items()}
        fts.append(ft)
    return base, fts


def space(T=3, seed=0, **kw):
    base, fts = state_dicts(T, seed)
    return TaskVectorSpace.build(base, fts, [f"task{t}" for t in range(T)], device="cpu", **kw)


def dense(space):
    return torch.stack([space.tau(t) for t in range(space.T)])
