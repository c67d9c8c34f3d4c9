"""Task Arithmetic (Ilharco et al., ICLR 2023): θ = θ0 + λ Σt τt."""
from ..registry import MergeMethod, MergeResult, lam_param, register


def run(space, params, progress, context=None) -> MergeResult:
    progress(0.0, "summing task vectors")
    return MergeResult("task_arithmetic", params, space.sum_tau().mul_(params["lam"]))


METHOD = register(MergeMethod(
    "task_arithmetic", "Task Arithmetic",
    "Add up what each fine-tune learned (its task vector), scaled by one coefficient λ.",
    "Ilharco et al., Editing Models with Task Arithmetic, ICLR 2023", (lam_param(0.3),), run))
