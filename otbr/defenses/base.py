"""The common shape of every defense: a configured object whose ``run`` returns a result.

A defense is built with keyword-only, validated hyperparameters; ``run(model,
data=None)`` copies the model once, never modifies its input, and returns a
:class:`DefenseResult`. Defenses register themselves by name so the command
line and the tests can iterate them.

Example:
    >>> sorted(list_defenses())  # doctest: +SKIP
    ['otbr', ...]
"""

from __future__ import annotations

import abc
import copy
import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from otbr.device import resolve_device
from otbr.errors import OtbrError

DataNeed = Literal["none", "clean"]

_NO_SEED: Any = object()  # marks "this defense takes no seed" for Defense._set_run_options


@dataclasses.dataclass
class DefenseResult:
    """What a defense returns.

    Attributes:
        model: the defended model (a new module; the input model is untouched).
        method: registry name of the defense.
        config: the hyperparameters the run used (JSON-serialisable).
        timings: wall seconds per stage, plus ``"total"``.
        scores: per-layer neuron scores (e.g. NWC), if the method computes them.
        info: method-specific facts (pruned neurons, chosen ratios, warnings, notes).
        data_used: a description of the data the run touched (``"none"`` for data-free runs).
    """

    model: nn.Module
    method: str
    config: dict[str, Any]
    timings: dict[str, float]
    scores: dict[str, torch.Tensor] | None = None
    info: dict[str, Any] = dataclasses.field(default_factory=dict)
    data_used: str = "none"


class Defense(abc.ABC):
    """Base class. Subclasses set ``name`` and ``needs``, and implement :meth:`run`."""

    name: ClassVar[str]
    needs: ClassVar[DataNeed] = "none"

    def config(self) -> dict[str, Any]:
        """The hyperparameters of this instance (public attributes), JSON-friendly."""
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}

    @abc.abstractmethod
    def run(self, model: nn.Module, data: Any | None = None) -> DefenseResult:
        """Defend ``model`` (images in [0, 1]); ``data`` is the clean subset for data-dependent methods."""

    def _require_data(self, data: Any | None) -> None:
        if self.needs == "clean" and data is None:
            raise OtbrError(f"defense {self.name!r} needs clean data; pass --data NAME (and --clean-ratio)")

    def _clean_data(self, model: nn.Module, data: Any | None) -> tuple[torch.Tensor, torch.Tensor]:
        """The clean subset as ``(images, labels)``, checked against the model (:func:`otbr.finetune.clean_tensors`)."""
        from otbr.finetune import clean_tensors

        self._require_data(data)
        return clean_tensors(data, model)

    def _set_sgd_options(self, momentum: float, weight_decay: float, batch_size: int) -> None:
        """Validate and set ``momentum``, ``weight_decay`` and ``batch_size``, in that order."""
        self.momentum = check_range("momentum", float(momentum), 0.0, 0.999)
        self.weight_decay = check_range("weight_decay", float(weight_decay), 0.0, 1.0)
        self.batch_size = int(check_range("batch_size", int(batch_size), 1, 1_000_000))

    def _set_run_options(self, *, seed: Any = _NO_SEED, device: str | None, progress: bool) -> None:
        """Set ``seed`` (when given), ``device`` (resolved; ``None``: where the model is) and ``progress``.

        Called last in ``__init__`` so that :meth:`config` lists them last, in that order.
        """
        if seed is not _NO_SEED:
            self.seed = int(seed)
        self.device = None if device is None else str(resolve_device(device))
        self.progress = bool(progress)

    def _work_copy(self, model: nn.Module) -> nn.Module:
        """The one copy of the model a run modifies (moved to ``device`` if one was given)."""
        work = copy.deepcopy(model)
        if self.device is not None:
            work = work.to(self.device)
        return work


_DEFENSES: dict[str, type[Defense]] = {}


def register_defense(cls: type[Defense]) -> type[Defense]:
    """Class decorator: register a defense under ``cls.name``."""
    if cls.name in _DEFENSES:
        raise ValueError(f"defense {cls.name!r} registered twice")
    _DEFENSES[cls.name] = cls
    return cls


def list_defenses() -> dict[str, type[Defense]]:
    """Registered defenses by name."""
    return dict(_DEFENSES)


def create_defense(name: str, **kwargs: Any) -> Defense:
    """Build a registered defense with its keyword hyperparameters."""
    if name not in _DEFENSES:
        raise OtbrError(f"unknown defense {name!r}; known: {', '.join(sorted(_DEFENSES))}")
    return _DEFENSES[name](**kwargs)


def check_choice(name: str, value: Any, choices: Sequence[Any]) -> Any:
    """Validate a hyperparameter against its allowed values with a one-line OtbrError.

    Example:
        >>> check_choice("variant", "prune", ("default", "prune"))
        'prune'
    """
    if value not in choices:
        raise OtbrError(f"{name} must be one of {', '.join(map(str, choices))}, got {value!r}")
    return value


def check_range(name: str, value: float, low: float, high: float, *, low_open: bool = False) -> float:
    """Validate a hyperparameter range with a one-line OtbrError."""
    ok = (low < value if low_open else low <= value) and value <= high
    if not ok:
        bracket = "(" if low_open else "["
        raise OtbrError(f"{name} must be in {bracket}{low}, {high}], got {value}")
    return value


def check_auto_fraction(name: str, value: float | str, grid: Any) -> tuple[float | str, list[float]]:
    """Validate a fraction that may be ``"auto"`` and its candidate grid (sorted, deduplicated, non-empty).

    Example:
        >>> check_auto_fraction("gamma", "auto", (0.1, 0.05, 0.1))
        ('auto', [0.05, 0.1])
    """
    if isinstance(value, str) and value != "auto":
        raise OtbrError(f"{name} must be a number in [0, 1] or 'auto', got {value!r}")
    checked: float | str = value if value == "auto" else check_range(name, float(value), 0.0, 1.0)
    values = sorted({check_range(f"{name} grid value", float(g), 0.0, 1.0) for g in grid})
    if not values:
        raise OtbrError(f"the {name} grid must hold at least one value")
    return checked, values


Factory = Callable[..., Defense]
