"""Architecture registry and factory.

Architectures are listed by name (``otbr list``); a user's own architecture is
named ``path/to/file.py:Factory`` or ``package.module:Factory``.

Example:
    >>> net = create_model("preactresnet18", num_classes=10, in_channels=1, width=16)
    >>> sorted(list_architectures())[:2]
    ['preactresnet18', 'resnet18']
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from otbr.errors import OtbrError
from otbr.models.preact import PreActResNet18
from otbr.models.tiny import TinyCNN
from otbr.models.vgg import CONFIGS as VGG_CONFIGS
from otbr.models.vgg import VGG

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: register an architecture factory under ``name``."""

    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"architecture {name!r} registered twice")
        _REGISTRY[name] = fn
        return fn

    return deco


def list_architectures() -> list[str]:
    """Names of the registered architectures."""
    return sorted(_REGISTRY)


@register_model("preactresnet18")
def _preactresnet18(num_classes: int = 10, in_channels: int = 3, width: int = 64) -> nn.Module:
    return PreActResNet18(num_classes=num_classes, in_channels=in_channels, width=width)


@register_model("tinycnn")
def _tinycnn(num_classes: int = 4, in_channels: int = 1, width: int = 8) -> nn.Module:
    return TinyCNN(num_classes=num_classes, in_channels=in_channels, width=width)


def _vgg_factory(variant: str) -> Callable[..., nn.Module]:
    def make(num_classes: int = 10, in_channels: int = 3, **kwargs: Any) -> nn.Module:
        return VGG(variant, num_classes=num_classes, in_channels=in_channels, **kwargs)

    make.__doc__ = f"{variant} in torchvision's layout; see :class:`otbr.models.vgg.VGG`."
    return make


for _v in VGG_CONFIGS:
    register_model(_v)(_vgg_factory(_v))


def _torchvision_resnet(variant: str) -> Callable[..., nn.Module]:
    def make(num_classes: int = 1000, in_channels: int = 3, small_input: bool = False) -> nn.Module:
        import torchvision

        net = getattr(torchvision.models, variant)(weights=None, num_classes=num_classes)
        if small_input or in_channels != 3:
            # CIFAR-style stem for small images; key names stay those of torchvision.
            k, s, p = (3, 1, 1) if small_input else (7, 2, 3)
            net.conv1 = nn.Conv2d(in_channels, net.conv1.out_channels, k, stride=s, padding=p, bias=False)
            if small_input:
                net.maxpool = nn.Identity()
        return net

    make.__doc__ = f"torchvision's {variant}; small_input=True uses a 3×3 stride-1 stem and no max-pool."
    return make


for _v in ("resnet18", "resnet34", "resnet50"):
    register_model(_v)(_torchvision_resnet(_v))


def is_custom_arch(arch: str) -> bool:
    """True for a user architecture given as ``file.py:Factory`` or ``module:Factory``."""
    return ":" in arch


def _resolve_custom(arch: str) -> tuple[Callable[..., nn.Module], str | None]:
    target, _, attr = arch.rpartition(":")
    if not target or not attr:
        raise OtbrError(f"custom architecture must look like path/file.py:Factory or pkg.module:Factory, got {arch!r}")
    if target.endswith(".py"):
        path = Path(target)
        if not path.is_file():
            raise OtbrError(f"architecture file not found: {path}")
        spec = importlib.util.spec_from_file_location(f"otbr_user_arch_{path.stem}", path)
        if spec is None or spec.loader is None:
            raise OtbrError(f"cannot import architecture file {path}")
        module = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(module)
        except Exception as exc:  # user code: report, do not crash with a traceback
            raise OtbrError(f"importing {path} failed: {type(exc).__name__}: {exc}") from exc
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as exc:
            raise OtbrError(f"cannot import module {target!r} for architecture {arch!r}: {exc}") from exc
        digest = None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise OtbrError(f"{attr!r} is not a callable in {target}")
    return factory, digest


def arch_source_sha256(arch: str) -> str | None:
    """sha256 of the file defining a ``file.py:Factory`` architecture (``None`` otherwise)."""
    if is_custom_arch(arch) and arch.rpartition(":")[0].endswith(".py"):
        return hashlib.sha256(Path(arch.rpartition(":")[0]).read_bytes()).hexdigest()
    return None


def create_model(arch: str, **kwargs: Any) -> nn.Module:
    """Build an architecture by registered name or ``file.py:Factory`` / ``module:Factory``.

    Args:
        arch: registered name (see :func:`list_architectures`) or a custom factory reference.
        **kwargs: keyword arguments of the factory (``num_classes``, ``in_channels``, ``width`` …).

    Returns:
        A freshly initialised ``nn.Module``.

    Raises:
        OtbrError: unknown name, bad factory reference, or arguments the factory does not take.
    """
    if is_custom_arch(arch):
        factory, _ = _resolve_custom(arch)
    elif arch in _REGISTRY:
        factory = _REGISTRY[arch]
    else:
        raise OtbrError(f"unknown architecture {arch!r}; known: {', '.join(list_architectures())}")
    try:
        inspect.signature(factory).bind(**kwargs)
    except TypeError as exc:
        raise OtbrError(f"architecture {arch!r} does not accept {sorted(kwargs)}: {exc}") from exc
    except ValueError:  # builtins without a signature: let the call decide
        pass
    net = factory(**kwargs)
    if not isinstance(net, nn.Module):
        raise OtbrError(f"factory {arch!r} returned {type(net).__name__}, not a torch.nn.Module")
    return net


def count_parameters(net: nn.Module) -> int:
    """Number of parameters (trainable or not)."""
    return sum(p.numel() for p in net.parameters())


def output_classes(net: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Number of logits the network produces for one input of ``input_shape`` (C, H, W)."""
    was_training = net.training
    net.eval()
    try:
        with torch.inference_mode():
            p = next(net.parameters(), None)
            x = torch.zeros(1, *input_shape, device=p.device if p is not None else "cpu")
            return int(net(x).shape[-1])
    finally:
        net.train(was_training)
