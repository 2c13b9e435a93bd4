"""TSBD: zero-reinitialisation, the activeness-aware step, the stop rule, a tiny synthetic backdoor, the CLI."""

from __future__ import annotations

import copy
import json
import logging

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from helpers import CLASSES, acc_asr, tiny_net, train_backdoor
from helpers import tiny_files as make_tiny_files
from torch import nn
from torch.func import functional_call

from otbr.activeness import ActivenessStep, finetune
from otbr.defenses.base import DefenseResult, list_defenses
from otbr.defenses.tsbd import TSBD, subweight_changes, zero_masks
from otbr.errors import OtbrError
from otbr.nwc import unlearn

#: tiny-model settings: with unlearning lr 0.01 the ≤ 10 % stop comes after a few epochs
FAST = {"unlearn_lr": 0.01, "batch_size": 32, "progress": False}


def _state(m: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in m.state_dict().items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def backdoored():
    """TinyCNN (width 8) trained ~2 s with SGD on 2000 images, 10 % poisoned with the corner patch → class 0.

    Yields the model, a clean subset of 200 fresh images (10 % of the training-set size) and 1000 test images.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        net, (xt, yt), (xc, yc) = train_backdoor(tiny_net(), clean=200)
        yield net, (xc, yc), (xt, yt)
    finally:
        torch.set_num_threads(threads)


# -- construction ----------------------------------------------------------------------------------------------
def test_registered_validated_and_needs_data() -> None:
    assert list_defenses()["tsbd"] is TSBD and TSBD.needs == "clean"
    for bad in ({"neuron_ratio": 1.5}, {"weight_ratio": -0.1}, {"alpha": 2.0}, {"r": -1.0}, {"ft_epochs": 0},
                {"unlearn_max_epochs": 0}, {"finetune": "sam"}, {"batch_size": 0}, {"ft_lr": 0.0},
                {"clean_ratio": 0.0}, {"stop_acc": 1.5}):
        with pytest.raises(OtbrError):
            TSBD(**bad)
    with pytest.raises(OtbrError, match="needs clean data"):
        TSBD(progress=False).run(tiny_net(), None)
    with pytest.raises(OtbrError):
        TSBD(progress=False).run(tiny_net(), "not data")


# -- stage 1: zero reinitialisation ----------------------------------------------------------------------------
def test_zero_masks_exact_count_and_largest() -> None:
    g = torch.Generator().manual_seed(1)
    changes = {"a": torch.rand(4, 2, 3, 3, generator=g, dtype=torch.float64),
               "b": torch.rand(6, 4, 3, 3, generator=g, dtype=torch.float64)}
    neurons = {"a": torch.tensor([True, False, True, False]), "b": torch.tensor([False] * 5 + [True])}
    masks, k, total = zero_masks(changes, neurons, 0.7)
    assert total == 2 * 18 + 36 and k == int(0.7 * total) == sum(int(m.sum()) for m in masks.values())
    sel = {n: neurons[n].reshape(-1, 1, 1, 1).expand_as(changes[n]) for n in changes}
    assert all(not bool((masks[n] & ~sel[n]).any()) for n in changes)  # only inside selected neurons
    chosen = torch.cat([changes[n][masks[n]] for n in changes])
    rest = torch.cat([changes[n][sel[n] & ~masks[n]] for n in changes])
    assert float(chosen.min()) >= float(rest.max())
    assert zero_masks(changes, neurons, 0.0)[1] == 0 and zero_masks(changes, neurons, 1.0)[1] == total


def test_stage1_zeroes_int_m_times_selected_largest_changes(backdoored) -> None:
    net, clean, _ = backdoored
    ref = _state(net)
    res = TSBD(neuron_ratio=0.25, weight_ratio=0.7, finetune="none", **FAST).run(net, clean)
    info = res.info
    assert _same(ref, _state(net)) and not net.training  # input untouched, mode kept
    assert info["selected_neurons"] == int(0.25 * 24)
    fan_in = {"conv1": 1 * 9, "conv2": 8 * 9}
    assert info["selected_subweights"] == sum(fan_in[n] * len(v) for n, v in info["pruned"].items())
    assert info["zeroed_subweights"] == int(0.7 * info["selected_subweights"])
    # the zeroed weights are exactly those the same (deterministic) unlearning run changed most
    un = unlearn(net, "clean", loader=clean, lr=0.01, batch_size=32, max_epochs=100, seed=0, progress=False)
    assert un.epochs == info["unlearn_epochs"]
    changes = subweight_changes(net, un.model, ["conv1", "conv2"])
    zeroed = {n: (getattr(res.model.net, n).weight == 0) & (getattr(net.net, n).weight != 0)
              for n in ("conv1", "conv2")}
    assert sum(int(z.sum()) for z in zeroed.values()) == info["zeroed_subweights"]
    sel = {n: torch.zeros(changes[n].shape[0], dtype=torch.bool).index_fill_(0, torch.tensor(info["pruned"].get(
        n, []), dtype=torch.long), True).reshape(-1, 1, 1, 1).expand_as(changes[n]) for n in changes}
    chosen = torch.cat([changes[n][zeroed[n]] for n in changes])
    rest = torch.cat([changes[n][sel[n] & ~zeroed[n]] for n in changes])
    assert float(chosen.min()) >= float(rest.max())
    # nothing else changed: the defended model is the ORIGINAL with those weights zeroed
    out = _state(res.model)
    for k, v in ref.items():
        name = k.split(".")[1] if k.startswith("net.") else k
        if k.endswith("weight") and name in zeroed:
            assert torch.equal(out[k], v.masked_fill(zeroed[name], 0.0))
        else:
            assert torch.equal(out[k], v), k
    assert set(res.timings) >= {"unlearn", "score", "reinit", "finetune", "total"}
    assert res.data_used == "clean subset: 200 images" and isinstance(res, DefenseResult)


def test_stop_rule_first_epoch_below_threshold(backdoored) -> None:
    net, clean, _ = backdoored
    res = TSBD(stop_acc=0.10, finetune="none", **FAST).run(net, clean)
    e = res.info["unlearn_epochs"]
    assert not res.info["hit_cap"] and res.info["unlearn_accuracy"] <= 0.10 and e >= 1
    if e > 1:  # one epoch fewer (same seed, same batches) had not reached the threshold
        short = unlearn(net, "clean", loader=clean, lr=0.01, batch_size=32, max_epochs=e - 1, seed=0, progress=False)
        assert short.hit_cap and short.accuracy > 0.10


def test_unlearning_cap_is_reported(backdoored, caplog) -> None:
    net, clean, _ = backdoored
    with caplog.at_level(logging.WARNING):
        res = TSBD(stop_acc=0.0, unlearn_max_epochs=1, finetune="none", unlearn_lr=1e-6, batch_size=64,
                   progress=False).run(net, clean)
    assert res.info["hit_cap"] and res.info["unlearn_epochs"] == 1
    assert any("cap" in n for n in res.info["notes"]) and "cap" in caplog.text


# -- stage 2: the activeness-aware step ------------------------------------------------------------------------
def test_combined_gradient_matches_hand_computation() -> None:
    torch.manual_seed(3)
    net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    x, y = torch.randn(5, 3, dtype=torch.float64), torch.tensor([0, 1, 1, 0, 1])
    r, alpha = 0.3, 0.7
    theta = {k: v.detach().clone() for k, v in net.named_parameters()}

    def loss_at(params: dict[str, torch.Tensor]) -> torch.Tensor:
        return F.cross_entropy(functional_call(net, params, (x,)), y)

    p1 = {k: v.clone().requires_grad_(True) for k, v in theta.items()}
    g1 = dict(zip(p1, torch.autograd.grad(loss_at(p1), list(p1.values())), strict=True))
    perturbed = {k: (theta[k] + r * g1[k] / g1[k].norm()).requires_grad_(True) for k in theta}
    g2 = dict(zip(perturbed, torch.autograd.grad(loss_at(perturbed), list(perturbed.values())), strict=True))
    expected = {k: theta[k] - ((1 - alpha) * g1[k] + alpha * g2[k]) for k in theta}  # SGD lr 1, momentum 0

    opt = torch.optim.SGD(net.parameters(), lr=1.0, momentum=0.0)
    opt.zero_grad()
    loss, _ = ActivenessStep(net, r=r, alpha=alpha)(x, y)
    assert torch.allclose(loss, loss_at(theta))
    opt.step()
    for k, p in net.named_parameters():
        assert torch.allclose(p, expected[k], rtol=0, atol=1e-12), k
    # α = 0 is plain SGD
    net2 = copy.deepcopy(net)
    ActivenessStep(net2, r=r, alpha=0.0)(x, y)
    plain = torch.autograd.grad(F.cross_entropy(net2(x), y), list(net2.parameters()))
    assert all(torch.equal(p.grad, g) for p, g in zip(net2.parameters(), plain, strict=True))


def test_perturb_and_restore_is_bit_exact_and_bn_updated_once() -> None:
    net = tiny_net().train()
    twin = copy.deepcopy(net)
    x, y = torch.rand(16, 1, 8, 8), torch.arange(16) % CLASSES
    before = _state(net)
    step = ActivenessStep(net, r=0.05, alpha=0.7)
    for _ in range(2):
        step(x, y)
        params_now = {k: v for k, v in _state(net).items() if "running" not in k and "num_batches" not in k}
        assert all(torch.equal(v, before[k]) for k, v in params_now.items())  # weights bit-identical
    twin(x)
    twin(x)  # two plain forward passes in train mode: what the running statistics must look like
    assert _same(_state(net), _state(twin))


def test_finetune_modes_and_mode_restored() -> None:
    net = tiny_net().eval()
    x, y = torch.rand(40, 1, 8, 8), torch.arange(40) % CLASSES
    for mode in ("activeness", "vanilla"):
        rep = finetune(net, x, y, mode=mode, epochs=2, batch_size=16, progress=False)
        assert rep.epochs == 2 and len(rep.epoch_seconds) == 2 and rep.mode == mode and not net.training
    with pytest.raises(OtbrError):
        finetune(net, x, y, mode="sam", progress=False)


# -- end to end ------------------------------------------------------------------------------------------------
def test_tsbd_removes_a_tiny_backdoor(backdoored) -> None:
    """Asserted: the backdoor is real (ACC ≥ 95 %, ASR ≥ 90 %); TSBD at the published defaults (unlearning lr 1e-4
    to ≤ 10 %, n = 0.1, m = 0.7, activeness FT 20 epochs, lr 0.01, r = 0.05, α = 0.7) with batch 32 on 200 clean
    images brings the ASR to ≤ 20 % while ACC drops by at most 5 points; the input model is untouched.
    (On this tiny model plain fine-tuning also removes the backdoor, so the test cannot show the activeness gain.)"""
    net, clean, (xt, yt) = backdoored
    acc0, asr0 = acc_asr(net, xt, yt)
    assert acc0 >= 0.95 and asr0 >= 0.90
    ref = _state(net)
    res = TSBD(neuron_ratio=0.1, batch_size=32, progress=False).run(net, clean)
    assert not res.info["hit_cap"]
    acc, asr = acc_asr(res.model, xt, yt)
    assert _same(ref, _state(net))
    msg = f"before ACC {acc0:.3f} ASR {asr0:.3f}; after ACC {acc:.3f} ASR {asr:.3f}"
    assert asr <= 0.20 and acc >= acc0 - 0.05, msg
    assert len(res.info["finetune_epoch_s"]) == 20


def test_sweep_unlearns_once(backdoored, monkeypatch) -> None:
    import otbr.defenses.tsbd as tsbd_mod

    net, clean, _ = backdoored
    calls = []
    real = tsbd_mod.unlearn
    monkeypatch.setattr(tsbd_mod, "unlearn", lambda *a, **k: calls.append(1) or real(*a, **k))
    out = list(TSBD(ft_epochs=1, **FAST).sweep(net, clean, [0.0, 0.25]))
    assert len(calls) == 1 and [n for n, _, _ in out] == [0.0, 0.25]
    assert _same(_state(out[0][1]), _state(net))  # n = 0: nothing zeroed
    assert out[1][2].info["zeroed_subweights"] == int(0.7 * out[1][2].info["selected_subweights"]) > 0


# -- command line ----------------------------------------------------------------------------------------------
@pytest.fixture()
def tiny_files(tmp_path):
    return make_tiny_files(tmp_path, 60)


def _cli(*args):
    from otbr.cli.main import main

    return CliRunner().invoke(main, [str(a) for a in args])


def test_cli_defend_tsbd(tiny_files, tmp_path) -> None:
    model, data = tiny_files
    out, report = tmp_path / "out.safetensors", tmp_path / "r.json"
    res = _cli("defend", "tsbd", model, "--data", f"npz:{data}", "--clean-ratio", "0.5", "--ft-epochs", "1",
               "--unlearn-max-epochs", "2", "--batch-size", "16", "-o", out, "--report", report)
    assert res.exit_code == 0, res.output
    assert out.is_file() and "ACC" in res.output and "tsbd:" in res.output
    payload = json.loads(report.read_text())
    assert payload["method"] == "tsbd" and payload["data_used"].startswith("clean subset: 30 images")
    assert payload["info"]["unlearn_epochs"] <= 2 and "evaluation" in payload and payload["oracle"] is False


def test_cli_recall_rule_names_the_missed_class_and_says_so(tiny_files, tmp_path, monkeypatch) -> None:
    """``--suspect-rule recall``: when the original misses one class's clean images (forced: the class after the
    patch scan's), the report's suspect is that class and the screen says so; the scan rule prints no such line."""
    import otbr.scans as scans

    model, data = tiny_files
    forced: dict[str, int] = {}

    def fake(pred, labels, num_classes):  # every class kept (the tiny model's own recall may miss one), or one not
        out = torch.ones(num_classes, dtype=torch.float64)
        if "class" in forced:
            out[forced["class"]] = 0.0
        return out

    monkeypatch.setattr(scans, "class_recall", fake)
    args = ["defend", "tsbd", model, "--data", f"npz:{data}", "--clean-ratio", "1", "--ft-epochs", "1",  # 15 a class
            "--unlearn-max-epochs", "2", "--batch-size", "16", "--no-eval", "--suspect-rule", "recall"]
    plain = _cli(*args, "-o", tmp_path / "a.safetensors", "--report", tmp_path / "a.json")
    assert plain.exit_code == 0, plain.output
    auto = json.loads((tmp_path / "a.json").read_text())["info"]["auto"]
    scan = auto["recall_scan"]["scan_suspect"]
    assert auto["suspected_target"] == scan and "suspect from the clean recall" not in plain.output
    forced["class"] = (scan + 1) % CLASSES
    res = _cli(*args, "-o", tmp_path / "b.safetensors", "--report", tmp_path / "b.json")
    assert res.exit_code == 0, res.output
    payload = json.loads((tmp_path / "b.json").read_text())
    assert payload["info"]["auto"]["suspected_target"] == forced["class"]
    assert payload["config"]["suspect_rule"] == "recall"
    assert f"suspect from the clean recall: the original gets 0 % of class {forced['class']}'s" in res.output
    assert f"the patch scan named class {scan}" in res.output


def test_cli_sweep_is_labelled_oracle(tiny_files, tmp_path) -> None:
    model, data = tiny_files
    res = _cli("defend", "tsbd", model, "--data", f"npz:{data}", "--clean-ratio", "0.5", "--ft-epochs", "1",
               "--unlearn-max-epochs", "1", "--sweep", "0.1,0.2")
    assert res.exit_code == 0, res.output
    assert "ORACLE" in res.output and "stage1" in res.output and "activeness" in res.output


def test_cli_without_data_is_one_line(tiny_files, tmp_path) -> None:
    model, _ = tiny_files
    res = _cli("defend", "tsbd", model, "-o", tmp_path / "o.safetensors")
    assert res.exit_code == 2
    lines = [line for line in res.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "--data" in lines[0] and "Traceback" not in res.output


def test_fine_tuning_with_dropout_depends_on_its_seed_only_and_leaves_the_callers_rng() -> None:
    """Dropout draws from the global RNG: both fine-tuning loops must fork and seed it from their ``seed``, so the
    same seed gives the same weights whatever the caller's RNG state, and the caller's state is left as it was."""
    from otbr.finetune import finetune as plain_finetune

    def net() -> nn.Module:
        torch.manual_seed(0)
        return nn.Sequential(nn.Flatten(), nn.Linear(16, 32), nn.ReLU(), nn.Dropout(0.5), nn.Linear(32, 3))

    x, y = torch.rand(24, 1, 4, 4), torch.arange(24) % 3
    runs = []
    for caller_seed in (1, 2):
        a, b = net(), net()
        torch.manual_seed(caller_seed)
        state = torch.random.get_rng_state()
        finetune(a, x, y, epochs=2, batch_size=8, lr=0.1, seed=5, progress=False)
        b = plain_finetune(b, (x, y), epochs=2, batch_size=8, lr=0.1, seed=5, progress=False).model
        assert torch.equal(state, torch.random.get_rng_state())
        runs.append((a, b))
    for i in (0, 1):
        assert all(torch.equal(p, q) for p, q in zip(runs[0][i].parameters(), runs[1][i].parameters(), strict=True))
    c = net()
    finetune(c, x, y, epochs=2, batch_size=8, lr=0.1, seed=6, progress=False)
    assert not all(torch.equal(p, q) for p, q in zip(runs[0][0].parameters(), c.parameters(), strict=True))
