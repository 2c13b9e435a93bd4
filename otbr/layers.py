"""Which layers the neuron-level defenses consider.

A *neuron* is one output channel of a ``Conv2d`` or one output unit of a
``Linear``. By default the considered layers are the ``Conv2d`` layers that are
not 1×1 projections on a residual shortcut (names containing ``shortcut`` or
``downsample``, as in the published OTBR/TSBD code); ``include_linear`` adds
the ``Linear`` layers.

Example:
    >>> from otbr.models import create_model
    >>> net = create_model("preactresnet18", num_classes=10, in_channels=1, width=16)
    >>> [n for n, _ in considered_layers(net)][:2]
    ['conv1', 'layer1.0.conv1']
"""

from __future__ import annotations

from torch import nn

from otbr.errors import OtbrError
from otbr.models.normalize import unwrap

SHORTCUT_MARKERS = ("shortcut", "downsample")


def is_shortcut(name: str) -> bool:
    """True for a module on a residual shortcut (by name, as the published code decides)."""
    return any(m in name.split(".") or any(part.startswith(m) for part in name.split(".")) for m in SHORTCUT_MARKERS)


def considered_layers(
    model: nn.Module, *, include_linear: bool = False, include_shortcut: bool = False
) -> list[tuple[str, nn.Module]]:
    """The (name, module) pairs whose output neurons are scored, in forward-definition order."""
    out: list[tuple[str, nn.Module]] = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d) or (include_linear and isinstance(module, nn.Linear)):
            if not include_shortcut and is_shortcut(name):
                continue
            out.append((name, module))
    return out


def classifier_layer(model: nn.Module) -> tuple[str, nn.Linear]:
    """The last ``Linear`` layer defined in the model (its rows are the classes)."""
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError("model has no Linear layer")
    return linears[-1]


def scored_layers(model: nn.Module, *, include_linear: bool = False, method: str = "OTBR") -> list[str]:
    """Names of the layers a neuron-level defense scores: the considered layers minus the classifier.

    ``model`` may be wrapped (:class:`otbr.models.Normalized`); the names are those of the bare
    network. With ``include_linear`` the hidden ``Linear`` layers are scored too, never the
    classifier (the last ``Linear``: its rows are the classes).

    Raises:
        OtbrError: no layer is left to score (the message names ``method``).

    Example:
        >>> from otbr.models import create_model
        >>> scored_layers(create_model("tinycnn"), include_linear=True)
        ['conv1', 'conv2']
    """
    net = unwrap(model)
    names = [n for n, _ in considered_layers(net, include_linear=include_linear)]
    if include_linear and any(isinstance(m, nn.Linear) for m in net.modules()):
        clf = classifier_layer(net)[0]
        names = [n for n in names if n != clf]
    if not names:
        raise OtbrError(f"the model has no Conv2d layer for {method} to score")
    return names
