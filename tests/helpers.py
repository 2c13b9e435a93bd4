"""Builders shared by several test modules: a tiny synthetic backdoor and tiny model/dataset files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from otbr.attacks import create_attack
from otbr.models import ModelMeta, create_model, save_model

#: the synthetic backdoor task: 12×12 one-channel images, 4 classes, target class 0
SIDE, CLASSES = 12, 4


def images(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Class = a fixed coarse binary 4×4 pattern upsampled to 12×12, plus uniform noise."""
    tg = torch.Generator().manual_seed(123)
    templates = (torch.rand(CLASSES, 1, SIDE // 3, SIDE // 3, generator=tg) > 0.5).float()
    templates = F.interpolate(templates, size=(SIDE, SIDE), mode="nearest")
    y = torch.randint(0, CLASSES, (n,), generator=gen)
    return (0.45 * templates[y] + 0.3 * torch.rand(n, 1, SIDE, SIDE, generator=gen)).clamp(0, 1), y


def trigger(x: torch.Tensor) -> torch.Tensor:
    x = x.clone()
    x[..., -3:, -3:] = 1.0  # 3×3 white patch, bottom-right
    return x


@torch.no_grad()
def acc_asr(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """Clean accuracy and attack success rate (to class 0) in eval mode; the model's mode is restored."""
    was = net.training
    net.eval()
    acc = float((net(x).argmax(1) == y).float().mean())
    keep = y != 0
    asr = float((net(trigger(x[keep])).argmax(1) == 0).float().mean())
    net.train(was)
    return acc, asr


def tiny_net(width: int = 8, seed: int = 0) -> nn.Module:
    """An untrained TinyCNN for the synthetic task, wrapped with its normalisation, in eval mode."""
    from otbr.models import Normalized

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return Normalized(create_model("tinycnn", num_classes=CLASSES, in_channels=1, width=width), (0.5,),
                          (0.25,)).eval()


def train_backdoor(
    net: nn.Module, *, clean: int = 0, poison: bool = True
) -> tuple[nn.Module, tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor] | None]:
    """Train ``net`` (in place, ~2 s) with SGD on 2000 images, 10 % poisoned with the corner patch → class 0.

    Returns the model (eval mode), 1000 test images and, with ``clean > 0``, a clean subset of that many
    fresh images (``None`` otherwise). Every draw comes from one generator seeded with 0; ``poison=False``
    trains on the same images without the poison (the same draws are made).
    """
    gen = torch.Generator().manual_seed(0)
    x, y = images(2000, gen)
    idx = torch.randperm(len(x), generator=gen)[: len(x) // 10]
    if poison:
        x[idx], y[idx] = trigger(x[idx]), 0
    test = images(1000, gen)
    subset = images(clean, gen) if clean else None
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    net.train()
    for _ in range(6):
        perm = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), 64):
            b = perm[i:i + 64]
            opt.zero_grad()
            F.cross_entropy(net(x[b]), y[b]).backward()
            opt.step()
    net.eval()
    return net, test, subset


def tiny_files(tmp_path: Path, n: int) -> tuple[Path, Path]:
    """An untrained 4-class TinyCNN file whose metadata names an ``n``-image 8×8 npz dataset (and BadNets)."""
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(n, 1, 8, 8, generator=g) * 255).to(torch.uint8).numpy()
    y = (torch.arange(n) % 4).numpy()
    data = tmp_path / "tiny.npz"
    np.savez(data, x=x, y=y)
    meta = ModelMeta(arch="tinycnn", arch_kwargs={"num_classes": 4, "in_channels": 1}, num_classes=4,
                     input_shape=(1, 8, 8), mean=(0.5,), std=(0.5,), dataset=f"npz:{data}",
                     attack=create_attack("badnets", target=0).config())
    model = save_model(create_model("tinycnn", num_classes=4, in_channels=1), tmp_path / "m.safetensors", meta)
    return model, data


def tiny_settings(side: int, classes: int) -> dict[str, dict]:
    """Small settings per registered defense, so that each runs on a tiny model in about a second."""
    return {
        "otbr": {"steps": 2, "batch_size": 16, "input_shape": (1, side, side), "num_classes": classes},
        "ulrl": {"unlearn_epochs": 2, "relearn_epochs": 1, "batch_size": 16},
        "ft": {"epochs": 1, "batch_size": 16},
        "fp": {"epochs": 1, "batch_size": 16},
        "anp": {"iterations": 3, "batch_size": 16},
        "tsbd": {"unlearn_max_epochs": 1, "ft_epochs": 1, "batch_size": 16},
    }
