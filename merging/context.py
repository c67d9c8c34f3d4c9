"""What data-driven methods (CALM, AdaMerging) receive besides the task-vector space."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.data import Dataset


@dataclass
class DataContext:
    """A model and unlabeled images per task.

    ``encoder`` maps images to features and its floating-point parameter names equal the space's index names
    (open_clip visual keys), so a merged flat vector can be swapped in with ``torch.func.functional_call``.
    ``heads[task]`` maps features to logits.  ``unlabeled[task]`` yields ``(image, label)`` from a train or
    validation split — never test data; labels are used only to report accuracy in progress messages.
    """

    encoder: torch.nn.Module
    heads: dict[str, torch.nn.Module]
    unlabeled: dict[str, Dataset]
    device: torch.device
    batch_size: int = 128
