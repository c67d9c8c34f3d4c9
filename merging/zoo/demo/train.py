"""Training of the demo zoo: proxy pretraining, class-prototype heads and fine-tuning, all seeded.

* Pretraining (the proxy for CLIP's pretraining): SimCLR (Chen et al., 2020) on unlabeled images of the same
  visual world — two augmented views per image, NT-Xent loss ℓ = −log exp(z_i·z_j/τ) / Σ_{k≠i} exp(z_i·z_k/τ) on
  the L2-normalized image embeddings.  No task label is seen.
* Heads (the proxy for zero-shot heads): centred class prototypes W_c = s · normalize(μ_c − mean_c' μ_c') with
  μ_c = mean_{x in class c} normalize(f_θ0(x)), built once from the pretrained encoder and frozen, as task_vectors
  freezes its zero-shot heads (Ilharco et al., 2023).  Centring keeps the rows apart when θ0's features of a
  task's classes are alike (a weak θ0's prototypes have cosine ≈ 0.9), so fine-tuning can separate them.
* Fine-tuning: the whole image tower trained with cross-entropy through its frozen head (AdamW, cosine schedule).

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
from ...models import build_clip
from ...progress import as_progress

ARCHITECTURE = Architecture("mergescope-demo-vit", {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 96, "layers": 6, "head_width": 32},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
})
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # open_clip.constants.OPENAI_DATASET_MEAN/STD, the zoo's default
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class Schedule:
    """AdamW (no weight decay on gains, biases and position embeddings), linear warm-up, cosine decay to 0."""
    steps: int
    batch_size: int
    lr: float
    weight_decay: float
    warmup: int


PRETRAIN = Schedule(steps=1500, batch_size=256, lr=2e-3, weight_decay=0.05, warmup=40)
FINETUNE = Schedule(steps=300, batch_size=128, lr=1e-3, weight_decay=0.1, warmup=15)
TEMPERATURE = 0.2  # NT-Xent τ
HEAD_SCALE = 20.0  # s of the prototype heads


def to_input(images: np.ndarray) -> torch.Tensor:
    """(n, H, W, 3) uint8 → (n, 3, H, W) float32, normalized with CLIP's mean/std."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(255)
    return _normalize(x)


def _normalize(x01: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(CLIP_MEAN, device=x01.device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=x01.device).view(1, 3, 1, 1)
    return (x01 - mean) / std


def _unnormalize(x: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(CLIP_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=x.device).view(1, 3, 1, 1)
    return x * std + mean


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """SimCLR's views for normalized images: random resized crop (side 0.55–1) with horizontal flip, colour jitter
    (brightness, contrast, saturation ±40 %), random channel order (p 0.3) and greyscale (p 0.2)."""
    n, device = x.shape[0], x.device
    u = lambda *shape: torch.rand(shape, generator=generator, device=device)  # noqa: E731
    side = 0.55 + 0.45 * u(n)
    flip = torch.where(u(n) < 0.5, -1.0, 1.0)
    shift = (u(n, 2) * 2 - 1) * (1 - side)[:, None]
    theta = torch.zeros(n, 2, 3, device=device)
    theta[:, 0, 0], theta[:, 1, 1], theta[:, :, 2] = side * flip, side, shift
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    img = F.grid_sample(_unnormalize(x), grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    img = img * (0.6 + 0.8 * u(n, 1, 1, 1))  # brightness
    img = (img - img.mean((1, 2, 3), keepdim=True)) * (0.6 + 0.8 * u(n, 1, 1, 1)) + img.mean((1, 2, 3), keepdim=True)
    grey = img.mean(1, keepdim=True)
    img = grey + (img - grey) * (0.6 + 0.8 * u(n, 1, 1, 1))  # saturation
    perm = torch.argsort(u(n, 3), dim=1)
    permuted = torch.gather(img, 1, perm[:, :, None, None].expand_as(img))
    img = torch.where(u(n, 1, 1, 1) < 0.3, permuted, img)
    img = torch.where(u(n, 1, 1, 1) < 0.2, img.mean(1, keepdim=True).expand_as(img), img)
    return _normalize(img.clamp(0, 1))


def nt_xent(z: torch.Tensor, temperature: float) -> torch.Tensor:
    """NT-Xent over 2n embeddings where rows i and i+n are the two views of one image."""
    z = F.normalize(z.float(), dim=1)
    n2 = z.shape[0]
    logits = z @ z.T / temperature
    logits.fill_diagonal_(float("-inf"))
    targets = (torch.arange(n2, device=z.device) + n2 // 2) % n2
    return F.cross_entropy(logits, targets)


def _schedule(step: int, steps: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(steps - warmup, 1)))


def _optimizer(model: torch.nn.Module, lr: float, weight_decay: float):
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "positional" not in n]
    rest = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "positional" not in n)]
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0}],
                             lr=lr)


def initial_encoder(seed: int, device: torch.device) -> torch.nn.Module:
    """The randomly initialised open_clip visual tower of :data:`ARCHITECTURE` (seeded)."""
    torch.manual_seed(seed)
    return build_clip(ARCHITECTURE).visual.to(device)


def _train(model: torch.nn.Module, n: int, schedule: Schedule, generator: torch.Generator, loss_of, progress,
           name: str) -> None:
    """``schedule.steps`` AdamW steps on ``loss_of(batch indices)``, batches drawn from range(n) by ``generator``."""
    device = next(model.parameters()).device
    opt = _optimizer(model, schedule.lr, schedule.weight_decay)
    for step in range(schedule.steps):
        for group in opt.param_groups:
            group["lr"] = schedule.lr * _schedule(step, schedule.steps, schedule.warmup)
        loss = loss_of(torch.randint(n, (schedule.batch_size,), generator=generator, device=device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        progress((step + 1) / schedule.steps, f"{name} step {step + 1}/{schedule.steps}: loss {loss.item():.3f}")


def pretrain(images: torch.Tensor, schedule: Schedule, seed: int, device: torch.device,
             progress=None) -> torch.nn.Module:
    """SimCLR on unlabeled normalized images (n, 3, H, W); returns the encoder in eval mode."""
    model = initial_encoder(seed, device).train()
    generator = torch.Generator(device).manual_seed(seed + 1)
    images = images.to(device)

    def loss_of(idx: torch.Tensor) -> torch.Tensor:
        batch = images[idx]
        return nt_xent(model(torch.cat([augment(batch, generator), augment(batch, generator)])), TEMPERATURE)

    _train(model, len(images), schedule, generator, loss_of, as_progress(progress), "pretraining")
    return model.eval()


@torch.no_grad()
def features(model: torch.nn.Module, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    device = next(model.parameters()).device
    return torch.cat([model(images[i:i + batch_size].to(device)).float()
                      for i in range(0, len(images), batch_size)])


def prototype_head(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, num_classes: int,
                   scale: float) -> ClassificationHead:
    """W_c = scale · normalize(μ_c − mean_c' μ_c'), μ_c the mean normalized feature of class c: a task's frozen
    head."""
    f = F.normalize(features(model.eval(), images), dim=1).cpu()
    means = torch.stack([f[labels == c].mean(0) for c in range(num_classes)])
    return ClassificationHead(scale * F.normalize(means - means.mean(0), dim=1))


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
