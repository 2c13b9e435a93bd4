"""NWC scores, unlearning and pruning masks."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from otbr.errors import OtbrError
from otbr.models import Normalized, create_model
from otbr.nwc import NWCScores, neuron_weight_change, nwc_scores, unlearn
from otbr.pruning import global_topk, mask_count, num_selected, prune_neurons


def _tiny(width: int = 4, classes: int = 4) -> nn.Module:
    torch.manual_seed(0)
    return Normalized(create_model("tinycnn", num_classes=classes, in_channels=1, width=width), (0.5,), (0.25,))


class _Hand(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 1, bias=False)
        self.fc = nn.Linear(3, 2)


def test_nwc_exact_values_by_hand() -> None:
    before, after = _Hand(), _Hand()
    with torch.no_grad():
        before.conv.weight.copy_(torch.tensor([[1.0, 2.0], [0.5, -1.0], [0.0, 0.0]]).view(3, 2, 1, 1))
        after.conv.weight.copy_(torch.tensor([[1.5, 1.0], [0.5, -1.0], [-0.25, 0.125]]).view(3, 2, 1, 1))
        before.fc.weight.zero_()
        after.fc.weight.copy_(torch.tensor([[1.0, -2.0, 0.5], [0.0, 0.0, 0.0]]))
    out = neuron_weight_change(before, after, include_linear=True)
    assert list(out) == ["conv", "fc"]
    assert out["conv"].dtype == torch.float64
    assert out["conv"].tolist() == [1.5, 0.0, 0.375]
    assert out["fc"].tolist() == [3.5, 0.0]
    assert list(neuron_weight_change(before, after)) == ["conv"]


def test_scores_flat_and_csv_roundtrip(tmp_path) -> None:
    s = NWCScores({"a": torch.tensor([0.1 + 1e-17, 1 / 3], dtype=torch.float64),
                   "b": torch.tensor([2 / 7], dtype=torch.float64)})
    flat = s.flat()
    assert flat.values.tolist() == [0.1 + 1e-17, 1 / 3, 2 / 7]
    assert flat.neuron(2) == ("b", 0) and flat.neuron(1) == ("a", 1)
    back = NWCScores.from_csv(s.to_csv(tmp_path / "s.csv"))
    assert list(back.layers) == ["a", "b"]
    for k in s.layers:
        assert torch.equal(back.layers[k], s.layers[k])


def test_global_topk_count_and_order() -> None:
    scores = {"a": torch.tensor([0.1, 0.9, 0.3]), "b": torch.tensor([0.8, 0.2, 0.5, 0.7])}
    for frac, expect in [(0.0, 0), (0.1, 0), (0.15, 1), (0.3, 2), (0.5, 3), (1.0, 7)]:
        masks = global_topk(scores, frac)
        assert mask_count(masks) == expect == num_selected(frac, 7) == int(frac * 7)
    masks = global_topk(scores, 0.5)
    assert masks["a"].tolist() == [False, True, False]
    assert masks["b"].tolist() == [True, False, False, True]
    with pytest.raises(OtbrError):
        global_topk(scores, 1.5)


def test_prune_zeroes_top_neurons_on_a_copy() -> None:
    net = _tiny()
    ref = copy.deepcopy(net.state_dict())
    scores = {"conv1": torch.tensor([0.1, 0.9, 0.3, 0.2]), "conv2": torch.arange(8, dtype=torch.float64)}
    masks = global_topk(scores, 0.25)  # 3 of 12: conv2 7, 6 and 5
    pruned = prune_neurons(net, masks)
    for k, v in net.state_dict().items():
        assert torch.equal(v, ref[k])
    w2 = pruned.net.conv2.weight
    assert w2[5:].abs().sum() == 0 and (w2[:5].flatten(1).abs().sum(1) > 0).all()
    assert torch.equal(pruned.net.conv1.weight, net.net.conv1.weight)


def test_random_unlearning_uses_all_classes_and_copies(monkeypatch) -> None:
    net = _tiny(classes=5)
    ref = copy.deepcopy(net.state_dict())
    seen: list[torch.Tensor] = []
    real = torch.nn.functional.cross_entropy

    def spy(logits, y, *a, **k):
        seen.append(y.detach().clone())
        return real(logits, y, *a, **k)

    monkeypatch.setattr(torch.nn.functional, "cross_entropy", spy)
    net.eval()
    res = unlearn(net, "random", steps=3, batch_size=64, input_shape=(1, 8, 8), num_classes=5, progress=False)
    labels = torch.cat(seen)
    assert labels.min() == 0 and labels.max() == 4 and len(labels.unique()) == 5
    assert res.steps == 3 and res.epochs == 0 and res.model is not net
    assert not net.training and not res.model.training  # mode restored
    for k, v in net.state_dict().items():
        assert torch.equal(v, ref[k])
    assert not torch.equal(res.model.net.conv1.weight, net.net.conv1.weight)


def test_random_unlearning_is_deterministic_and_needs_shape() -> None:
    net = _tiny()
    a = nwc_scores(net, input_shape=(1, 8, 8), num_classes=4, steps=2, batch_size=32, progress=False)
    b = nwc_scores(net, input_shape=(1, 8, 8), num_classes=4, steps=2, batch_size=32, progress=False)
    c = nwc_scores(net, input_shape=(1, 8, 8), num_classes=4, steps=2, batch_size=32, seed=1, progress=False)
    assert all(torch.equal(a.layers[k], b.layers[k]) for k in a.layers)
    assert not all(torch.equal(a.layers[k], c.layers[k]) for k in a.layers)
    assert a.total == 12 and (a.flat().values > 0).all()
    with pytest.raises(OtbrError):
        unlearn(net, "random", steps=1, progress=False)


def test_clean_unlearning_stops_and_caps() -> None:
    net = _tiny()
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(64, 1, 8, 8, generator=gen)
    with torch.no_grad():
        y = net.train()(x).argmax(1)  # labels the model gets right: accuracy starts at 100 %
    res = unlearn(net, "clean", loader=(x, y), batch_size=32, lr=0.5, max_epochs=10, progress=False)
    assert res.accuracy <= 0.10 and not res.hit_cap and res.epochs >= 1
    capped = unlearn(net, "clean", loader=(x, y), batch_size=32, lr=1e-9, stop_acc=0.0, max_epochs=2,
                     progress=False)
    assert capped.hit_cap and capped.epochs == 2 and capped.steps == 4


def _bn_at_1x1() -> nn.Module:
    """A net whose BatchNorm sees 1×1 feature maps (like VGG's last block on 28×28 images): a batch of one image
    cannot train it."""
    torch.manual_seed(0)
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(1, 4, 1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4, 2))


def test_clean_unlearning_drops_a_trailing_batch_of_one_and_reads_uint8_images() -> None:
    """33 images in batches of 32 left a last batch of one, which BatchNorm on 1×1 maps cannot train on (TSBD
    crashed on such subset sizes); uint8 images from a loader must be scaled like everywhere else."""
    x = torch.randint(0, 256, (33, 1, 8, 8), dtype=torch.uint8)
    y = torch.arange(33) % 2
    res = unlearn(_bn_at_1x1(), "clean", loader=(x, y), batch_size=32, lr=1e-3, max_epochs=2, stop_acc=0.0,
                  progress=False)
    assert res.steps == 2 and res.epochs == 2  # one batch of 32 per epoch; the 33rd image is left out


def test_scores_from_csv_refuse_missing_or_repeated_indices(tmp_path) -> None:
    path = tmp_path / "s.csv"
    path.write_text("layer,index,nwc\na,0,1.0\na,0,2.0\n")
    with pytest.raises(OtbrError, match="exactly once"):
        NWCScores.from_csv(path)
    path.write_text("layer,index,nwc\na,0,1.0\na,2,2.0\n")
    with pytest.raises(OtbrError, match="exactly once"):
        NWCScores.from_csv(path)


def test_diverged_unlearning_is_an_error_not_a_ranking() -> None:
    """NaN weight changes would sort first and be pruned as the most changed neurons."""
    with pytest.raises(OtbrError, match="diverged"):
        nwc_scores(_tiny(), input_shape=(1, 8, 8), num_classes=4, steps=2, batch_size=8, lr=float("nan"),
                   progress=False)
    # OTBR and TSBD score through neuron_weight_change directly: the check lives there, so they get it too
    net = _tiny()
    broken = copy.deepcopy(net)
    with torch.no_grad():
        next(broken.parameters()).view(-1)[0] = float("nan")
    with pytest.raises(OtbrError, match="diverged"):
        neuron_weight_change(net, broken)
