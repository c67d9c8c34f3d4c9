"""Weight averaging: θ = θ0 + (1/T) Σt τt."""
from ..registry import MergeMethod, MergeResult, register


def run(space, params, progress, context=None) -> MergeResult:
    progress(0.0, "averaging")
    return MergeResult("averaging", params, space.sum_tau().div_(space.T))


METHOD = register(MergeMethod(
    "averaging", "Weight averaging", "Average the fine-tuned weights: every task counts the same.",
    "Wortsman et al., ICML 2022 (model soups)", (), run))
