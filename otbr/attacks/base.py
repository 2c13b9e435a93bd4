"""The common shape of every attack: a trigger function plus data poisoning.

An :class:`Attack` is built with keyword-only, validated parameters (``target``,
``poison_rate``, ``seed`` and its own). Its trigger is built lazily for the
shape of the images it is applied to, so one object serves 1×28×28 and
3×32×32 images alike. All attacks are all-to-one.

* :meth:`Attack.apply` — triggered copies of float images in [0, 1] (vectorised, deterministic);
* :meth:`Attack.poison_train` — a poisoned training set and the indices that were poisoned;
* :meth:`Attack.poison_test` — the triggered non-target-class test images, a :class:`PoisonedSet`;
* :meth:`Attack.config` — a JSON-friendly dict from which :func:`otbr.attacks.attack_from_config`
  rebuilds exactly the same trigger.

Images are stored as uint8 after triggering (rounded), as a real poisoned file would be.

Example:
    >>> import torch
    >>> from otbr.attacks import create_attack, attack_from_config
    >>> a = create_attack("badnets", target=0, poison_rate=0.1)
    >>> x = torch.zeros(2, 1, 28, 28)
    >>> bool(torch.equal(attack_from_config(a.config()).apply(x), a.apply(x)))
    True
"""

from __future__ import annotations

import abc
import dataclasses
import json
import logging
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from otbr.errors import OtbrError
from otbr.pixels import as_float, quantize

log = logging.getLogger(__name__)

_CHUNK = 4096


def _seeded(seed: int, stream: int = 0) -> torch.Generator:
    """A CPU generator for ``seed``; ``stream`` separates independent uses of one seed."""
    return torch.Generator().manual_seed((int(seed) * 1_000_003 + stream) % 2**64)


@dataclasses.dataclass
class PoisonedSet:
    """Triggered test images of the non-target classes.

    Attributes:
        x: uint8 images, N×C×H×W, with the trigger applied.
        y_true: their true labels (int64); none equals ``target``.
        target: the attack's target label.
        attack: the attack configuration (``Attack.config()``).
    """

    x: torch.Tensor
    y_true: torch.Tensor
    target: int
    attack: dict[str, Any]

    def __len__(self) -> int:
        return len(self.y_true)

    def as_tuple(self) -> tuple[torch.Tensor, torch.Tensor, int]:
        """``(x, y_true, target)``, the ``poisoned`` argument of :func:`otbr.metrics.evaluate`."""
        return self.x, self.y_true, self.target

    def save_npz(self, path: str | Path) -> Path:
        """Write an ``.npz`` (keys ``x`` uint8, ``y``, ``target``, ``attack`` JSON string) atomically.

        The file loads with ``numpy.load(path, allow_pickle=False)``.
        """
        from otbr.atomic import atomic_path

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path, suffix=".npz") as tmp, tmp.open("wb") as f:
            np.savez(f, x=self.x.cpu().numpy().astype(np.uint8), y=self.y_true.cpu().numpy().astype(np.int64),
                     target=np.int64(self.target), attack=np.str_(json.dumps(self.attack, sort_keys=True)))
        return path

    @classmethod
    def load_npz(cls, path: str | Path) -> PoisonedSet:
        """Read a file written by :meth:`save_npz`, or any ``.npz`` with ``x``, ``y`` and ``target`` that
        :func:`otbr.data.formats.read_npz` accepts (no pickle): uint8 images (float ones in [0, 1] are quantised
        as stored images would be), one integer label per image, one integer target."""
        from otbr.data.formats import npz_arrays, npz_target

        path = Path(path)
        if not path.is_file():
            raise OtbrError(f"poisoned set not found: {path}")
        x, y, arrays = npz_arrays(path, "test")
        target = npz_target(path, arrays)
        if target is None:
            raise OtbrError(f"{path}: not a poisoned set (no 'target'; export one with `otbr poison`)")
        if x.dtype != torch.uint8:
            x = quantize(x)
        try:
            attack = json.loads(str(arrays["attack"])) if "attack" in arrays else {}
        except ValueError as exc:
            raise OtbrError(f"{path}: its 'attack' entry is not a JSON string ({exc})") from exc
        return cls(x=x, y_true=y, target=target, attack=attack if isinstance(attack, dict) else {})


class Attack(abc.ABC):
    """Base class of all attacks.

    Subclasses set ``name`` (and ``clean_label`` for clean-label attacks), take
    their own keyword-only parameters, list them in :meth:`params`, and
    implement :meth:`_trigger` for float images in [0, 1].

    Args:
        target: the target label (all-to-one).
        poison_rate: fraction of the whole training set to poison.
        seed: seeds the random parts of the trigger (``stream`` 0) and the choice of
            poisoned samples (``stream`` 1).
    """

    name: ClassVar[str]
    clean_label: ClassVar[bool] = False

    def __init__(self, *, target: int = 0, poison_rate: float = 0.1, seed: int = 0) -> None:
        if isinstance(target, bool) or not isinstance(target, int) or target < 0:
            raise OtbrError(f"attack target must be a non-negative int, got {target!r}")
        if not isinstance(poison_rate, int | float) or not 0.0 <= float(poison_rate) <= 1.0:
            raise OtbrError(f"poison_rate must be in [0, 1], got {poison_rate!r}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise OtbrError(f"seed must be an int, got {seed!r}")
        self.target = int(target)
        self.poison_rate = float(poison_rate)
        self.seed = int(seed)
        self._cache: dict[tuple, Any] = {}

    # -- description -------------------------------------------------------------------------
    def params(self) -> dict[str, Any]:
        """The attack-specific parameters (JSON-friendly), as accepted by the constructor."""
        return {}

    def config(self) -> dict[str, Any]:
        """Everything needed to rebuild this exact trigger with :func:`attack_from_config`."""
        return {"name": self.name, "target": self.target, "poison_rate": self.poison_rate, "seed": self.seed,
                **self.params()}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items() if k != "name" and not isinstance(v, list))
        return f"{type(self).__name__}({args})"

    # -- trigger -----------------------------------------------------------------------------
    @abc.abstractmethod
    def _trigger(self, x: torch.Tensor) -> torch.Tensor:
        """The triggered images (before clamping) for float images ``x`` (N×C×H×W)."""

    def _cached(self, key: tuple, build: Any) -> Any:
        if key not in self._cache:
            self._cache[key] = build()
        return self._cache[key]

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """Triggered copies of images ``x`` (N×C×H×W float in [0, 1], or uint8), clamped to [0, 1].

        Deterministic: the same object (or one rebuilt from its config) gives the same output.
        """
        if x.dim() != 4:
            raise OtbrError(f"attacks take N×C×H×W image batches, got shape {tuple(x.shape)}")
        x = as_float(x)
        return self._trigger(x).clamp(0.0, 1.0)

    def apply_uint8(self, x: torch.Tensor) -> torch.Tensor:
        """Trigger images and store them as uint8 (in chunks, to bound memory)."""
        out = torch.empty(x.shape, dtype=torch.uint8)
        for i in range(0, len(x), _CHUNK):
            out[i:i + _CHUNK] = quantize(self.apply(as_float(x[i:i + _CHUNK])))
        return out

    def _store(self, x: torch.Tensor) -> torch.Tensor:
        """Triggered images in the storage type of ``x`` (uint8 stays uint8)."""
        return self.apply_uint8(x) if x.dtype == torch.uint8 else self.apply(x)

    # -- poisoning ---------------------------------------------------------------------------
    def _check_target(self, ds: Any) -> None:
        if self.target >= int(ds.num_classes):
            raise OtbrError(f"attack target {self.target} is not a class of {ds.name} ({ds.num_classes} classes)")

    def _choose(self, ds: Any) -> torch.Tensor:
        """Indices of the training samples to poison (sorted)."""
        n = len(ds.y)
        count = round(self.poison_rate * n)
        if self.clean_label:
            candidates = torch.nonzero(ds.y == self.target).flatten()
            if count > len(candidates):
                log.warning("%s: poison rate %.3f asks for %d images but class %d has only %d; poisoning all of them",
                            self.name, self.poison_rate, count, self.target, len(candidates))
                count = len(candidates)
        else:
            candidates = torch.nonzero(ds.y != self.target).flatten()
            if count > len(candidates):
                raise OtbrError(f"poison rate {self.poison_rate} asks for {count} images; "
                                f"only {len(candidates)} are outside the target class")
        perm = torch.randperm(len(candidates), generator=_seeded(self.seed, 1))[:count]
        return candidates[perm].sort().values

    def poison_train(self, ds: Any) -> tuple[Any, torch.Tensor]:
        """Poison ``poison_rate`` of a training set (all-to-one).

        Args:
            ds: an :class:`otbr.data.ImageDataset`.

        Returns:
            ``(poisoned dataset, poisoned indices)``; the poisoned samples carry the trigger and,
            unless the attack is clean-label, the target label.
        """
        self._check_target(ds)
        idx = self._choose(ds)
        x, y = ds.x.clone(), ds.y.clone()
        if len(idx):
            x[idx] = self._store(ds.x[idx])
            if not self.clean_label:
                y[idx] = self.target
        x, y = self._extra_poison(ds, x, y, idx)
        log.info("%s: poisoned %d of %d training images (target %d)", self.name, len(idx), len(y), self.target)
        return ds.with_data(x, y), idx

    def _extra_poison(self, ds: Any, x: torch.Tensor, y: torch.Tensor,
                      idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Hook for attacks that also modify other samples (WaNet's noise mode)."""
        return x, y

    def poison_test(self, ds: Any) -> PoisonedSet:
        """The triggered test images of every non-target class, with their true labels."""
        self._check_target(ds)
        keep = torch.nonzero(ds.y != self.target).flatten()
        return PoisonedSet(x=self.apply_uint8(ds.x[keep]), y_true=ds.y[keep].clone(), target=self.target,
                           attack=self.config())


_ATTACKS: dict[str, type[Attack]] = {}

NOT_INCLUDED: dict[str, str] = {
    "input-aware": "Input-aware (a generator network per input) is not included in otbr",
    "ssba": "SSBA (sample-specific invisible triggers from a steganography encoder) is not included in otbr",
}


def register_attack(cls: type[Attack]) -> type[Attack]:
    """Class decorator: register an attack under ``cls.name``."""
    if cls.name in _ATTACKS:
        raise ValueError(f"attack {cls.name!r} registered twice")
    _ATTACKS[cls.name] = cls
    return cls


def list_attacks() -> list[str]:
    """Names of the available attacks.

    Input-aware and SSBA attacks are not included (see ``NOT_INCLUDED``).
    """
    return sorted(_ATTACKS)


def create_attack(name: str, **kwargs: Any) -> Attack:
    """Build an attack by name with keyword parameters.

    Example:
        >>> create_attack("blended", alpha=0.2).config()["alpha"]
        0.2
    """
    key = name.lower().replace("_", "-")
    if key in NOT_INCLUDED:
        raise OtbrError(f"{NOT_INCLUDED[key]}; available: {', '.join(list_attacks())}")
    if key not in _ATTACKS:
        raise OtbrError(f"unknown attack {name!r}; available: {', '.join(list_attacks())}")
    try:
        return _ATTACKS[key](**kwargs)
    except TypeError as exc:
        raise OtbrError(f"attack {key!r}: bad parameters {sorted(kwargs)}: {exc}") from exc


def attack_from_config(cfg: dict[str, Any]) -> Attack:
    """Rebuild an attack from :meth:`Attack.config` output (a dict with ``"name"``)."""
    if not isinstance(cfg, dict) or "name" not in cfg:
        raise OtbrError("attack config must be a dict with a 'name'")
    kwargs = {k: v for k, v in cfg.items() if k != "name"}
    return create_attack(str(cfg["name"]), **kwargs)
