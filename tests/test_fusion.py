"""Optimal-transport fusion: plan properties, exact guarantees, residual handling."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from otbr.fusion import _marginal, fuse, layer_links, solve_plan
from otbr.layers import considered_layers
from otbr.models import Normalized, create_model
from otbr.pruning import global_topk, prune_neurons


def _model(arch: str, **kw) -> nn.Module:
    torch.manual_seed(0)
    net = Normalized(create_model(arch, num_classes=4, in_channels=1, **kw), (0.5,), (0.25,))
    return net.eval()


def _setup(net: nn.Module, gamma: float = 0.2, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    scores = {n: torch.rand(m.weight.shape[0], generator=gen, dtype=torch.float64)
              for n, m in considered_layers(net.net)}
    masks = global_topk(scores, gamma)
    return scores, masks, prune_neurons(net, masks)


def _same(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_plan_marginals_equal_a_and_b() -> None:
    gen = torch.Generator().manual_seed(0)
    n, m = 7, 5
    a = torch.full((n,), 1.0 / n, dtype=torch.float64)
    b = _marginal(torch.rand(m, generator=gen, dtype=torch.float64))
    cost = torch.rand(n, m, generator=gen, dtype=torch.float64)
    plan = solve_plan(a, b, cost)
    assert plan.dtype == torch.float64 and (plan >= 0).all()
    torch.testing.assert_close(plan.sum(1), a, rtol=0, atol=1e-12)
    torch.testing.assert_close(plan.sum(0), b, rtol=0, atol=1e-12)
    ent = solve_plan(a, b, cost, solver="sinkhorn", reg=0.05)
    torch.testing.assert_close(ent.sum(0), b, rtol=0, atol=1e-6)


def test_marginal_is_zero_safe() -> None:
    b = _marginal(torch.tensor([0.0, 0.0, 2.0]))
    assert (b > 0).all() and torch.isclose(b.sum(), torch.tensor(1.0, dtype=torch.float64))
    assert torch.equal(_marginal(torch.zeros(4)), torch.full((4,), 0.25, dtype=torch.float64))


@pytest.mark.parametrize("variant", ["default", "paper"])
def test_lambda_zero_returns_original_bit_for_bit(variant: str) -> None:
    net = _model("tinycnn", width=8)
    scores, masks, pruned = _setup(net)
    res = fuse(pruned, net, scores, masks=masks, lam=0.0, variant=variant)
    assert res.first_layer == "conv1" and res.info["conv1"]["pruned"] > 0
    assert _same(res.model, net)


def test_no_pruned_neuron_changes_nothing() -> None:
    net = _model("tinycnn", width=8)
    scores, masks, pruned = _setup(net, gamma=0.0)
    for variant in ("default", "paper"):
        res = fuse(pruned, net, scores, masks=masks, variant=variant)
        assert res.first_layer is None and res.info == {} and _same(res.model, net)
        assert _same(fuse(copy.deepcopy(net), net, scores, variant=variant).model, net)  # masks inferred: none


def test_fusion_keeps_shapes_dtype_device_and_inputs() -> None:
    net = _model("tinycnn", width=8)
    scores, masks, pruned = _setup(net)
    ref_net, ref_pruned = copy.deepcopy(net), copy.deepcopy(pruned)
    res = fuse(pruned, net, scores, masks=masks, lam=0.5, keep_plans=True)
    assert _same(net, ref_net) and _same(pruned, ref_pruned)
    for (k, v), (k2, v2) in zip(res.model.state_dict().items(), net.state_dict().items(), strict=True):
        assert k == k2 and v.shape == v2.shape and v.dtype == v2.dtype and v.device == v2.device
    assert not torch.equal(res.model.net.conv2.weight, net.net.conv2.weight)
    # masks inferred from the zero rows give the same result
    assert _same(fuse(pruned, net, scores, lam=0.5).model, res.model)
    # the plans have the published marginals
    for name, plan in res.plans.items():
        n = plan.shape[0]
        torch.testing.assert_close(plan.sum(1), torch.full((n,), 1.0 / n, dtype=torch.float64), atol=1e-12, rtol=0)
        torch.testing.assert_close(plan.sum(0), _marginal(scores[name]), atol=1e-12, rtol=0)


def test_first_layer_formula_and_per_neuron_lambda() -> None:
    net = _model("tinycnn", width=8)
    scores, masks, pruned = _setup(net, gamma=0.3)
    name = "conv1"
    assert masks[name].any()
    wp = pruned.net.conv1.weight.detach().double()
    wo = net.net.conv1.weight.detach().double()
    b = _marginal(scores[name])
    for variant, lam_pruned in [("paper", None), ("default", 1.0), ("default", None)]:
        res = fuse(pruned, net, scores, masks=masks, lam=0.5, variant=variant, lam_pruned=lam_pruned,
                   keep_plans=True)
        plan = res.plans[name]
        aligned = (torch.diag(1 / b) @ plan.T @ wp.flatten(1)).view_as(wo)
        lam = torch.full((wo.shape[0],), 0.5, dtype=torch.float64)
        if variant == "default" and lam_pruned is not None:
            lam[masks[name]] = 1.0
        expect = (lam.view(-1, 1, 1, 1) * aligned + (1 - lam.view(-1, 1, 1, 1)) * wo).float()
        torch.testing.assert_close(res.model.net.conv1.weight, expect, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(
    ("arch", "kw"),
    [("preactresnet18", {"width": 4}), ("vgg11_bn", {"width": 4, "classifier_width": 16, "pool_size": 1,
                                                      "image_size": 16})],
)
def test_residual_and_vgg_structure(arch: str, kw: dict) -> None:
    net = _model(arch, **kw)
    links = layer_links(net.net)
    assert links.traced
    if arch == "preactresnet18":
        assert links.pred["layer1.0.conv2"] == "layer1.0.conv1"
        assert "layer2.0.conv1" not in links.pred and "layer1.0.conv1" not in links.pred  # residual stream
        assert links.bn["layer1.0.conv1"] == "layer1.0.bn2" and "conv1" not in links.bn
    else:
        assert links.pred["features.4"] == "features.0" and links.pred["classifier.0"] == "features.25"
        assert links.bn["features.0"] == "features.1"
    scores, masks, pruned = _setup(net, gamma=0.1)
    x = torch.rand(3, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    for variant in ("default", "paper"):
        res = fuse(pruned, net, scores, masks=masks, lam=0.5, variant=variant, fuse_bn=True)
        out = res.model(x)
        assert out.shape == (3, 4) and torch.isfinite(out).all()
        if arch == "preactresnet18":
            started = [n for n in res.info if n.startswith("layer2")]
            assert started, "fusion should reach layer2"
            expect = "identity" if variant == "default" else "plan:layer1.1.conv2"
            assert res.info["layer2.0.conv1"]["input"] == expect
            assert res.info["layer2.0.conv2"]["input"] == "plan:layer2.0.conv1"


def test_fuse_bn_and_classifier_options() -> None:
    net = _model("tinycnn", width=8)
    net.net.bn2.running_mean.uniform_(-1, 1, generator=torch.Generator().manual_seed(3))
    scores, masks, pruned = _setup(net, gamma=0.3)
    plain = fuse(pruned, net, scores, masks=masks)
    assert torch.equal(plain.model.net.bn2.running_mean, net.net.bn2.running_mean)
    assert torch.equal(plain.model.net.fc.weight, net.net.fc.weight)
    full = fuse(pruned, net, scores, masks=masks, fuse_bn=True, fuse_classifier=True)
    assert full.info["conv2"]["bn"] == "bn2"
    assert not torch.equal(full.model.net.bn2.running_mean, net.net.bn2.running_mean)
    assert full.info["fc"]["input"] == "plan:conv2"
    assert not torch.equal(full.model.net.fc.weight, net.net.fc.weight)
    assert torch.equal(full.model.net.fc.bias, net.net.fc.bias)
    assert (full.model.net.bn2.running_var >= 0).all()
