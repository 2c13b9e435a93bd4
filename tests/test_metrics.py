"""Metrics against hand-computed values."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from otbr.metrics import accuracy, attack_rates, der, evaluate


class Lookup(nn.Module):
    """Predicts the class stored in pixel (0, 0, 0) of each image (×10)."""

    def __init__(self) -> None:
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        cls = (x[:, 0, 0, 0] * 10).round().long()
        return nn.functional.one_hot(cls, 4).float() + 0 * self.dummy


def images(labels):
    x = torch.zeros(len(labels), 1, 2, 2)
    x[:, 0, 0, 0] = torch.tensor(labels, dtype=torch.float) / 10
    return x


def test_accuracy_hand_computed():
    m = Lookup()
    x = images([0, 1, 2, 3, 1])
    y = torch.tensor([0, 1, 2, 0, 0])
    assert accuracy(m, x, y, batch_size=2) == pytest.approx(3 / 5)


def test_asr_excludes_target_class_and_ra():
    m = Lookup()
    # predictions:   0  0  2  0  3  0
    x = images([0, 0, 2, 0, 3, 0])
    y = torch.tensor([1, 2, 2, 0, 3, 3])  # sample 3 is target-class: excluded
    asr, ra = attack_rates(m, x, y, target=0)
    assert asr == pytest.approx(3 / 5)  # samples 0, 1, 5 predicted as target among 5 kept
    assert ra == pytest.approx(2 / 5)  # samples 2, 4 keep their true label


def test_evaluate_restores_training_mode():
    m = Lookup().train()
    r = evaluate(m, (images([1]), torch.tensor([1])), (images([0]), torch.tensor([1]), 0))
    assert (r.acc, r.asr, r.ra) == (1.0, 1.0, 0.0)
    assert m.training


def test_uint8_images_are_scaled():
    m = Lookup()
    x = (images([2, 3]) * 255).round().to(torch.uint8)
    assert accuracy(m, x, torch.tensor([2, 3])) == 1.0


@pytest.mark.parametrize(
    ("acc_b", "asr_b", "acc_a", "asr_a", "expected"),
    [
        (0.9, 1.0, 0.9, 0.0, 1.0),
        (0.9, 1.0, 0.8, 0.1, (0.9 - 0.1 + 1) / 2),
        (0.9, 0.5, 0.95, 0.7, 0.5),  # ASR rose and ACC rose: both clipped at 0
        (0.9132, 0.9503, 0.9072, 0.0131, (0.9372 - 0.006 + 1) / 2),  # TSBD BadNets row of the slides
    ],
)
def test_der(acc_b, asr_b, acc_a, asr_a, expected):
    assert der(acc_b, asr_b, acc_a, asr_a) == pytest.approx(expected, abs=1e-9)


def test_mismatched_labels_are_refused_and_a_one_element_target_is_one_target():
    m = Lookup()
    x = images([0, 1, 2, 3])
    with pytest.raises(ValueError, match="4 images but 1 labels"):
        accuracy(m, x, torch.tensor([0]))  # used to broadcast the one label over every image
    y = torch.tensor([1, 2, 3, 0])
    assert attack_rates(m, x, y, torch.tensor([0])) == attack_rates(m, x, y, 0)
    with pytest.raises(ValueError, match="do not match"):
        attack_rates(m, x, y, torch.tensor([0, 1]))
