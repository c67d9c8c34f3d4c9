"""Training of the demo zoo: a miniature CLIP, its zero-shot heads and the fine-tuning of its image tower, seeded.

* Pretraining (CLIP, Radford et al., 2021): an open_clip image tower and text tower trained together with
  open_clip's own symmetric InfoNCE ``ClipLoss`` on (image, caption) pairs of the same visual world as the tasks
  (:func:`merging.zoo.demo.tasks.pretraining_pairs`), with the learned temperature clamped at 100 as in CLIP.
  The captions name what the image shows, so no task's factor is augmented away.
* Heads: zero-shot, from the class names and templates through the text tower
  (:func:`merging.heads.zero_shot_weights`), frozen, as task_vectors does (Ilharco et al., 2023).
* Fine-tuning: the image tower trained with cross-entropy through its frozen head (cosine schedule).  task_vectors
  fine-tunes with AdamW; the zoo uses SGD with momentum instead.  On this 0.7 M-parameter tower AdamW's per-weight
  step normalisation moves nearly every weight alike: the task vectors come out near-Gaussian (kurtosis 3–4), the
  top 20 % hold only 0.65 of ‖τt‖², and every trim-based merge (TIES, PCB) falls below Task Arithmetic.  SGD's steps
  follow the gradient's size: kurtosis 12–30, the top 20 % hold 0.82–0.88 and keep 98–101 % of the gain, and TIES and
  PCB rank above Task Arithmetic as on ViT-B/32 (README: the demo zoo).

Pixels are preprocessed exactly as the zoo's evaluation transform does for 32×32 images (÷255, CLIP mean/std), so
the recorded accuracies are those :class:`merging.evaluation.Evaluator` measures on the exported PNGs.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F

from ...heads import ClassificationHead
from ...manifest import Architecture
from ...models import build_clip, register_architecture
from ...progress import as_progress

ARCHITECTURE = Architecture("mergescope-demo-vit", {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 96, "layers": 6, "head_width": 32},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
})
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # open_clip.constants.OPENAI_DATASET_MEAN/STD, the zoo's default
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class Schedule:
    """``optimizer`` "adamw" or "sgd" (with ``momentum``); no weight decay on gains, biases and position embeddings;
    linear warm-up, cosine decay to 0."""
    steps: int
    batch_size: int
    lr: float
    weight_decay: float
    warmup: int
    optimizer: str = "adamw"
    momentum: float = 0.9


PRETRAIN = Schedule(steps=2500, batch_size=256, lr=1e-3, weight_decay=0.1, warmup=50)
FINETUNE = Schedule(steps=200, batch_size=128, lr=3e-3, weight_decay=0.0, warmup=15, optimizer="sgd")
MAX_LOGIT_SCALE = math.log(100)  # CLIP clamps its learned temperature 1/τ at 100


def to_input(images: np.ndarray) -> torch.Tensor:
    """(n, H, W, 3) uint8 → (n, 3, H, W) float32, normalized with CLIP's mean/std."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(255)
    return _normalize(x)


def _normalize(x01: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(CLIP_MEAN, device=x01.device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=x01.device).view(1, 3, 1, 1)
    return (x01 - mean) / std


def _schedule(step: int, steps: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(steps - warmup, 1)))


def _optimizer(model: torch.nn.Module, schedule: Schedule):
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "positional" not in n]
    rest = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "positional" not in n)]
    groups = [{"params": decay, "weight_decay": schedule.weight_decay}, {"params": rest, "weight_decay": 0}]
    if schedule.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=schedule.lr, momentum=schedule.momentum)
    if schedule.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=schedule.lr)
    raise ValueError(f"Schedule.optimizer must be 'adamw' or 'sgd', got {schedule.optimizer!r}")


def initial_clip(seed: int, device: torch.device) -> torch.nn.Module:
    """The randomly initialised open_clip CLIP model of :data:`ARCHITECTURE` (seeded)."""
    torch.manual_seed(seed)
    return build_clip(ARCHITECTURE).to(device)


def tokenize(texts: list[str]) -> torch.Tensor:
    """open_clip's tokenizer for :data:`ARCHITECTURE` (its BPE vocabulary ships with open_clip)."""
    import open_clip

    return open_clip.get_tokenizer(register_architecture(ARCHITECTURE))(texts)


def _train(model: torch.nn.Module, n: int, schedule: Schedule, generator: torch.Generator, loss_of, progress,
           name: str, after_step=lambda: None) -> None:
    """``schedule.steps`` optimizer steps on ``loss_of(batch indices)``, batches drawn from range(n) by ``generator``;
    ``after_step()`` after each."""
    device = next(model.parameters()).device
    opt = _optimizer(model, schedule)
    for step in range(schedule.steps):
        for group in opt.param_groups:
            group["lr"] = schedule.lr * _schedule(step, schedule.steps, schedule.warmup)
        loss = loss_of(torch.randint(n, (schedule.batch_size,), generator=generator, device=device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        after_step()
        progress((step + 1) / schedule.steps, f"{name} step {step + 1}/{schedule.steps}: loss {loss.item():.3f}")


def pretrain(images: torch.Tensor, tokens: torch.Tensor, schedule: Schedule, seed: int, device: torch.device,
             progress=None) -> torch.nn.Module:
    """CLIP on normalized images (n, 3, H, W) and their tokenized captions (n, L); returns the model in eval
    mode."""
    from open_clip.loss import ClipLoss

    model = initial_clip(seed, device).train()
    generator = torch.Generator(device).manual_seed(seed + 1)
    images, tokens, loss = images.to(device), tokens.to(device), ClipLoss()

    def loss_of(idx: torch.Tensor) -> torch.Tensor:
        return loss(model.encode_image(images[idx], normalize=True), model.encode_text(tokens[idx], normalize=True),
                    model.logit_scale.exp())

    def clamp() -> None:
        with torch.no_grad():
            model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)

    _train(model, len(images), schedule, generator, loss_of, as_progress(progress), "pretraining", clamp)
    return model.eval()


def finetune(pretrained: torch.nn.Module, head: ClassificationHead, images: torch.Tensor, labels: torch.Tensor,
             schedule: Schedule, seed: int, progress=None) -> dict[str, torch.Tensor]:
    """Fine-tune a copy of the image tower through the frozen head; returns its state dict (on the CPU)."""
    device = next(pretrained.parameters()).device
    model = copy.deepcopy(pretrained).train()
    head = head.to(device)
    images, labels = images.to(device), labels.to(device)
    generator = torch.Generator(device).manual_seed(seed)
    _train(model, len(images), schedule, generator, lambda idx: F.cross_entropy(head(model(images[idx])), labels[idx]),
           as_progress(progress), "fine-tuning")
    return {k: v.detach().cpu().clone() for k, v in model.eval().state_dict().items()}
