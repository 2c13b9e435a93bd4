"""Build the evaluation sets of a model and measure it.

The clean test set comes from ``--data`` or the dataset named in the model's
metadata; the poisoned test set from ``--poisoned FILE.npz`` or, when the
metadata names the attack the model was trained with, by re-applying that
attack to the clean test set.

Example:
    >>> sets = evaluation_sets(meta)          # doctest: +SKIP
    >>> report = measure(model, sets)         # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from otbr.errors import OtbrError
from otbr.metrics import Metrics, der, evaluate
from otbr.models.io import ModelMeta

log = logging.getLogger(__name__)


@dataclasses.dataclass
class EvalSets:
    """The clean test set ``(x, y)`` and, if known, the poisoned set ``(x, y_true, target)``."""

    clean: tuple[torch.Tensor, torch.Tensor]
    poisoned: tuple[torch.Tensor, torch.Tensor, int] | None
    clean_name: str
    poisoned_name: str | None


def evaluation_sets(
    meta: ModelMeta,
    data: str | None = None,
    poisoned: str | Path | None = None,
    data_root: str | Path | None = None,
    limit: int | None = None,
) -> EvalSets:
    """The test sets for a model; ``limit`` keeps the first N images of each (quick looks)."""
    from otbr.data import load_dataset

    name = data or meta.dataset
    if name is None:
        raise OtbrError("the model names no dataset; pass --data NAME")
    test = load_dataset(name, split="test", root=data_root)
    if len(test) == 0:
        raise OtbrError(f"dataset {name} (test split) holds no images; pass a test set with images (--data)")
    if tuple(test.input_shape) != tuple(meta.input_shape):
        raise OtbrError(
            f"dataset {name} has images {tuple(test.input_shape)}, the model expects {tuple(meta.input_shape)}; "
            "pass the dataset the model was trained on (--data), or resize/convert it"
        )
    if test.num_classes != meta.num_classes:
        raise OtbrError(
            f"dataset {name} has {test.num_classes} classes, the model outputs {meta.num_classes}; "
            "pass the dataset the model was trained on (--data)"
        )
    clean = (test.x[:limit], test.y[:limit])
    pois = None
    pois_name = None
    if poisoned is not None:
        from otbr.attacks import PoisonedSet

        ps = PoisonedSet.load_npz(poisoned)
        _check_poisoned(ps.x, ps.y_true, int(ps.target), meta, str(poisoned))
        pois, pois_name = (ps.x[:limit], ps.y_true[:limit], int(ps.target)), str(poisoned)
    elif meta.attack:
        from otbr.attacks import attack_from_config

        attack = attack_from_config(meta.attack)
        ps = attack.poison_test(test)
        pois = (ps.x[:limit], ps.y_true[:limit], int(ps.target))
        pois_name = f"{meta.attack.get('name')} (from metadata)"
    return EvalSets(clean=clean, poisoned=pois, clean_name=name, poisoned_name=pois_name)


def _check_poisoned(x: torch.Tensor, y: torch.Tensor, target: int, meta: ModelMeta, name: str) -> None:
    """A poisoned test set must hold images of the model's input shape, and labels and a target class the model
    has."""
    if len(x) == 0:
        raise OtbrError(f"poisoned set {name} holds no images; export one with `otbr poison`")
    if tuple(x.shape[1:]) != tuple(meta.input_shape):
        raise OtbrError(f"poisoned set {name} has images {tuple(x.shape[1:])}, the model expects "
                        f"{tuple(meta.input_shape)}; export it from the model's dataset with `otbr poison`")
    if not 0 <= target < meta.num_classes:
        raise OtbrError(f"poisoned set {name} targets class {target}, the model has classes 0..{meta.num_classes - 1}")
    if len(y) and not 0 <= int(y.min()) <= int(y.max()) < meta.num_classes:
        raise OtbrError(f"poisoned set {name} has labels {int(y.min())}..{int(y.max())}, the model has classes "
                        f"0..{meta.num_classes - 1}")


def measure(model: nn.Module, sets: EvalSets, batch_size: int = 512) -> Metrics:
    """ACC (and ASR/RA when a poisoned set is known) of ``model``."""
    return evaluate(model, sets.clean, sets.poisoned, batch_size=batch_size)


def compare_row(before: Metrics, after: Metrics) -> dict[str, Any]:
    """ACC/ASR/RA before and after, plus DER when ASR is known (fractions)."""
    row: dict[str, Any] = {"before": before.as_dict(), "after": after.as_dict()}
    if before.asr is not None and after.asr is not None:
        row["der"] = der(before.acc, before.asr, after.acc, after.asr)
    return row
