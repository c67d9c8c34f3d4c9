"""mergescope's merge engine: task-vector spaces, merge methods, mask statistics, checkpoints and evaluation.

No UI code lives here; the dashboard and the CLI are thin layers over this package.

Importing it before torch turns on transparent huge pages in torch's CPU allocator (``THP_MEM_ALLOC_ENABLE=1``,
unless the environment sets it): each fresh (P,) tensor otherwise costs about one read of the whole stack in page
faults (an 88 M-element ``x * 2`` took 0.18 s without, 0.05 s with, on 2 cores).  Set the variable yourself when
torch is imported first.
"""
import os

os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

from .params import Param, ParameterError  # noqa: E402
from .progress import CancelToken, Cancelled, Progress
from .registry import (MergeMethod, MergeResult, Modifier, UnknownMethodError, get_method, get_modifier, list_methods,
                       list_modifiers, run_merge)
from .space import CheckpointError, TaskVectorSpace

__all__ = ["CancelToken", "Cancelled", "CheckpointError", "MergeMethod", "MergeResult", "Modifier", "Param",
           "ParameterError", "Progress", "TaskVectorSpace", "UnknownMethodError", "get_method", "get_modifier",
           "list_methods", "list_modifiers", "run_merge"]
