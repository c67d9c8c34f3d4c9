"""mergescope's merge engine: task-vector spaces, merge methods, mask statistics, checkpoints and evaluation.

No UI code lives here; the dashboard and the CLI are thin layers over this package.
"""
from .params import Param, ParameterError
from .progress import CancelToken, Cancelled, Progress
from .registry import (MergeMethod, MergeResult, Modifier, UnknownMethodError, get_method, get_modifier, list_methods,
                       list_modifiers, run_merge)
from .space import CheckpointError, TaskVectorSpace

__all__ = ["CancelToken", "Cancelled", "CheckpointError", "MergeMethod", "MergeResult", "Modifier", "Param",
           "ParameterError", "Progress", "TaskVectorSpace", "UnknownMethodError", "get_method", "get_modifier",
           "list_methods", "list_modifiers", "run_merge"]
