"""The OTBR defense end to end, including a tiny synthetic backdoor."""

from __future__ import annotations

import copy
import logging

import pytest
import torch
from helpers import CLASSES, SIDE, acc_asr, train_backdoor
from torch import nn

import otbr.defenses.otbr as otbr_mod
from otbr.defenses.base import DefenseResult, list_defenses
from otbr.defenses.otbr import OTBR, sweep
from otbr.errors import OtbrError
from otbr.models import Normalized, create_model


def _same(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _tiny(width: int = 8) -> nn.Module:
    torch.manual_seed(0)
    return Normalized(create_model("tinycnn", num_classes=CLASSES, in_channels=1, width=width), (0.5,), (0.25,)).eval()


@pytest.fixture(scope="module")
def backdoored():
    """TinyCNN (width 8) trained ~2 s with SGD on 2000 images, 10 % poisoned with the corner patch → class 0."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny model: threading only adds overhead on a shared machine
    try:
        net, (xt, yt), _ = train_backdoor(_tiny())
        yield net, xt, yt
    finally:
        torch.set_num_threads(threads)


def test_registered_and_validated() -> None:
    assert list_defenses()["otbr"] is OTBR and OTBR.needs == "none"
    for bad in ({"gamma": 1.5}, {"lam": -0.1}, {"steps": 0}, {"variant": "x"}, {"solver": "lp"},
                {"input_shape": (1, 8)}, {"num_classes": 1}, {"lr": 0.0}):
        with pytest.raises(OtbrError):
            OTBR(**bad)
    with pytest.raises(OtbrError, match="input shape"):
        OTBR(progress=False).run(_tiny())


def test_run_result_and_input_untouched(caplog) -> None:
    net = _tiny()
    ref = copy.deepcopy(net.state_dict())
    with caplog.at_level(logging.WARNING):
        res = OTBR(gamma=0.25, steps=3, batch_size=32, input_shape=(1, SIDE, SIDE), progress=False).run(
            net, data="some data")
    assert "ignored" in caplog.text
    assert isinstance(res, DefenseResult) and res.data_used == "none" and res.method == "otbr"
    assert all(torch.equal(v, ref[k]) for k, v in net.state_dict().items()) and not net.training
    assert set(res.timings) == {"unlearn", "score", "select", "prune", "fuse", "total"} and res.timings["select"] == 0
    info = res.info
    assert info["num_pruned"] == int(0.25 * 24) == sum(len(v) for v in info["pruned"].values())
    assert info["num_classes"] == CLASSES and info["variant"] == "default" and info["lambda"] == 0.5
    assert set(res.scores) == {"conv1", "conv2"} and res.scores["conv2"].shape == (16,)
    for k, v in res.model.state_dict().items():
        assert v.shape == ref[k].shape and v.dtype == ref[k].dtype and v.device == ref[k].device
    assert res.config["gamma"] == 0.25


def test_deterministic_and_gamma_zero() -> None:
    net = _tiny()
    kw = {"gamma": 0.2, "steps": 2, "batch_size": 16, "input_shape": (1, 8, 8), "progress": False}
    a, b = OTBR(**kw).run(net).model, OTBR(**kw).run(net).model
    assert _same(a, b)
    for variant in ("default", "paper", "prune"):
        res = OTBR(**{**kw, "gamma": 0.0, "variant": variant}).run(net)
        assert res.info["num_pruned"] == 0 and _same(res.model, net)


def test_prune_variant_zeroes_top_scores() -> None:
    net = _tiny()
    res = OTBR(gamma=0.125, steps=2, batch_size=16, input_shape=(1, 8, 8), variant="prune", progress=False).run(net)
    flat = torch.cat([res.scores["conv1"], res.scores["conv2"]])
    top = set(torch.topk(flat, 3).indices.tolist())
    rows = torch.cat([res.model.net.conv1.weight.detach().flatten(1).abs().sum(1),
                      res.model.net.conv2.weight.detach().flatten(1).abs().sum(1)])
    zeroed = set(torch.nonzero(rows == 0).flatten().tolist())
    assert zeroed == top


def test_sweep_unlearns_once(monkeypatch) -> None:
    net = _tiny()
    calls = []
    real = otbr_mod.unlearn
    monkeypatch.setattr(otbr_mod, "unlearn", lambda *a, **k: calls.append(1) or real(*a, **k))
    out = list(sweep(net, [0.0, 0.1, 0.3], steps=2, batch_size=16, input_shape=(1, 8, 8), progress=False))
    assert len(calls) == 1 and [g for g, _, _ in out] == [0.0, 0.1, 0.3]
    assert _same(out[0][1], net) and _same(out[0][2], net)
    assert sum(float(w.flatten(1).abs().sum(1).eq(0).sum()) for w in
               (out[2][1].net.conv1.weight, out[2][1].net.conv2.weight)) == int(0.3 * 24)


def test_otbr_lowers_asr_on_a_tiny_backdoor(backdoored) -> None:
    """Asserted: the backdoor is real (ACC ≥ 95 %, ASR ≥ 90 %) and, sweeping γ ∈ {5, 10, 15} % with the default
    variant (one unlearning run), some γ brings the ASR to ≤ 20 % while ACC drops by at most 5 points."""
    net, xt, yt = backdoored
    acc0, asr0 = acc_asr(net, xt, yt)
    assert acc0 >= 0.95 and asr0 >= 0.90
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rows = [(g, *acc_asr(fused, xt, yt)) for g, _, fused in
                OTBR(input_shape=(1, SIDE, SIDE), progress=False).sweep(net, [0.05, 0.10, 0.15])]
    finally:
        torch.set_num_threads(threads)
    good = [r for r in rows if r[2] <= 0.20 and r[1] >= acc0 - 0.05]
    assert good, f"no gamma removed the backdoor: base ACC {acc0:.3f} ASR {asr0:.3f}; (gamma, ACC, ASR) {rows}"


def test_unlearning_with_dropout_is_seeded_and_leaves_the_global_rng() -> None:
    """A model with dropout (like VGG's classifier) draws dropout masks from the global RNG during unlearning:
    two runs must still give identical NWC scores, and the caller's RNG must not move."""
    from otbr.nwc import unlearn

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = Normalized(nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                                       nn.Dropout(0.5), nn.Linear(4 * 6 * 6, 3)), (0.5,), (0.25,))
    kw = {"steps": 3, "input_shape": (1, 8, 8), "num_classes": 3, "batch_size": 8, "progress": False}
    state = torch.random.get_rng_state()
    a = unlearn(net, "random", **kw).model.state_dict()
    assert torch.equal(state, torch.random.get_rng_state())
    torch.rand(5)  # move the global RNG: the result must not depend on it
    b = unlearn(net, "random", **kw).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
