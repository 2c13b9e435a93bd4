"""VGG with BatchNorm in torchvision's layout (``features.N``, ``classifier.{0,3,6}``).

With the default arguments the modules and state-dict keys equal torchvision's
``vgg*_bn``; ``width``, ``classifier_width`` and ``pool_size`` shrink it for
small images and CPUs without changing the key names.

Example:
    >>> import torch
    >>> net = VGG("vgg11_bn", num_classes=10, in_channels=1, width=16,
    ...           classifier_width=128, pool_size=1, image_size=28)
    >>> net(torch.zeros(2, 1, 28, 28)).shape
    torch.Size([2, 10])
"""

from __future__ import annotations

import torch
from torch import nn

CONFIGS: dict[str, list[int | str]] = {
    "vgg11_bn": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg13_bn": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16_bn": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "vgg19_bn": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
                 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}


def _make_features(cfg: list[int | str], in_channels: int, scale: float, pools: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    seen_pools = 0
    for v in cfg:
        if v == "M":
            seen_pools += 1
            # Pools past what the image size allows are dropped; they hold no
            # parameters, so the indices of every parameterised layer stay put.
            if seen_pools <= pools:
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers.append(nn.Identity())
            continue
        out = max(1, round(int(v) * scale))
        layers += [nn.Conv2d(in_channels, out, 3, padding=1), nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
        in_channels = out
    return nn.Sequential(*layers)


class VGG(nn.Module):
    """VGG-BN.

    Args:
        variant: one of ``vgg11_bn``, ``vgg13_bn``, ``vgg16_bn``, ``vgg19_bn``.
        num_classes: number of classes.
        in_channels: image channels.
        width: channels of the first conv (64 in torchvision); later stages scale with it.
        classifier_width: hidden width of the classifier (4096 in torchvision).
        pool_size: side of the adaptive average pool before the classifier (7 in torchvision).
        image_size: input side; max-pools that would shrink the map below 1 pixel become identities.
        dropout: dropout in the classifier.
    """

    def __init__(
        self,
        variant: str = "vgg11_bn",
        num_classes: int = 10,
        in_channels: int = 3,
        width: int = 64,
        classifier_width: int = 4096,
        pool_size: int = 7,
        image_size: int = 224,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        cfg = CONFIGS[variant]
        pools, side = 0, image_size
        while side // 2 >= 1 and pools < cfg.count("M"):
            side //= 2
            pools += 1
        self.features = _make_features(cfg, in_channels, width / 64, pools)
        last = max(1, round(512 * width / 64))
        self.avgpool = nn.AdaptiveAvgPool2d((pool_size, pool_size))
        self.classifier = nn.Sequential(
            nn.Linear(last * pool_size * pool_size, classifier_width),
            nn.ReLU(True),
            nn.Dropout(p=dropout),
            nn.Linear(classifier_width, classifier_width),
            nn.ReLU(True),
            nn.Dropout(p=dropout),
            nn.Linear(classifier_width, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.avgpool(self.features(x)), 1)
        return self.classifier(x)
