"""A tiny CNN (a few hundred parameters) for tests and quick experiments.

Example:
    >>> import torch
    >>> TinyCNN(num_classes=4, in_channels=1)(torch.zeros(3, 1, 8, 8)).shape
    torch.Size([3, 4])
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class TinyCNN(nn.Module):
    """conv → BN → ReLU → conv(stride 2) → BN → ReLU → global average pool → linear."""

    def __init__(self, num_classes: int = 4, in_channels: int = 1, width: int = 8) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, stride=2, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(2 * width)
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))
