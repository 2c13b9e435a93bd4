"""ULRL, FT, FP, CLP, ANP: unit checks and a tiny end-to-end run of every registered defense."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner
from helpers import tiny_settings
from torch import nn

from otbr.defenses import create_defense, list_defenses
from otbr.defenses.clp import CLP, channel_lipschitz, conv_bn_pairs
from otbr.defenses.ulrl import flag_rows, robust_z
from otbr.errors import OtbrError
from otbr.models import Normalized, create_model, save_model
from otbr.models.io import ModelMeta

SIDE, CLASSES = 8, 4

#: small settings per defense so that every registered one runs in about a second
TINY = tiny_settings(SIDE, CLASSES)


def _tiny() -> nn.Module:
    torch.manual_seed(0)
    return Normalized(create_model("tinycnn", num_classes=CLASSES, in_channels=1), (0.5,), (0.25,)).eval()


def _data(n: int = 48) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.rand(n, 1, SIDE, SIDE, generator=g), torch.randint(0, CLASSES, (n,), generator=g)


# -- ULRL flagging ------------------------------------------------------------------------------------------------
def test_ulrl_flags_the_planted_row():
    g = torch.Generator().manual_seed(0)
    before = torch.randn(10, 32, generator=g)
    after = before + 0.01 * torch.randn(10, 32, generator=g)
    after[3] += 0.5  # row 3 moved a lot
    change = (after - before).abs().sum(1)
    rows, z = flag_rows(change)
    assert rows.tolist() == [3]
    assert z.argmax().item() == 3 and z[3] > 3.5


def test_ulrl_keeps_the_two_largest_not_the_first():
    change = torch.tensor([1.0, 6.0, 1.1, 0.9, 9.0, 1.0, 8.0, 1.05, 0.95, 1.0])
    rows, _ = flag_rows(change)
    assert rows.tolist() == [4, 6]  # three are flagged (1, 4, 6); the two largest are kept
    assert flag_rows(change, max_rows=3)[0].tolist() == [4, 6, 1]


def test_ulrl_flags_nothing_on_uniform_change_and_below_median():
    assert flag_rows(torch.ones(10))[0].numel() == 0
    change = torch.tensor([1.0, 1.1, 0.9, 1.0, 1.05, 0.95, 1.0, 1.02, 0.98, -20.0])
    assert flag_rows(change)[0].numel() == 0  # far away but below the median
    assert robust_z(change)[-1] > 3.5


# -- CLP --------------------------------------------------------------------------------------------------------------
def test_clp_bound_equals_hand_svd_with_bn_scaling():
    torch.manual_seed(0)
    conv, bn = nn.Conv2d(3, 5, 3), nn.BatchNorm2d(5)
    with torch.no_grad():
        bn.weight.uniform_(-2, 2)
        bn.running_var.uniform_(0.5, 3)
    got = channel_lipschitz(conv, bn)
    k = 2
    hand = torch.linalg.svdvals(conv.weight[k].detach().double().reshape(3, 9))[0]
    hand = hand * abs(bn.weight[k].item()) / (bn.running_var[k].item() + bn.eps) ** 0.5
    assert torch.allclose(got[k], hand, rtol=1e-10)
    assert torch.allclose(channel_lipschitz(conv)[k], torch.linalg.svdvals(conv.weight[k].double().reshape(3, 9))[0])


def test_clp_pairs_bn_with_what_the_network_computes():
    pairs, rule = conv_bn_pairs(create_model("preactresnet18", num_classes=4, in_channels=1, width=4))
    assert rule == "fx"
    assert pairs["layer1.0.conv1"] == "layer1.0.bn2"  # pre-activation: conv1 feeds the block's bn2
    assert pairs["layer1.0.conv2"] is None  # enters the residual sum: weight-only bound
    assert pairs["conv1"] is None
    vgg = create_model("vgg11_bn", num_classes=4, in_channels=1, width=8, classifier_width=16, pool_size=1,
                       image_size=8)
    assert conv_bn_pairs(vgg)[0]["features.0"] == "features.1"


def test_clp_prunes_a_planted_outlier_channel():
    net = _tiny()
    with torch.no_grad():
        net.net.conv2.weight[5] *= 30
    res = CLP(u=3.0).run(net)
    assert res.info["pruned"].get("conv2") == [5]
    assert float(res.model.net.conv2.weight[5].detach().abs().sum()) == 0.0
    assert float(res.model.net.bn2.weight[5].detach()) == 0.0 and float(res.model.net.bn2.bias[5].detach()) == 0.0
    assert res.data_used == "none"


# -- every registered defense ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(list_defenses()))
def test_every_defense_runs_and_keeps_the_architecture(name):
    cls = list_defenses()[name]
    net = _tiny()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    kwargs = dict(TINY.get(name, {}))
    try:
        defense = create_defense(name, progress=False, **kwargs)
    except TypeError:  # a defense whose test settings are unknown here: its defaults
        defense = create_defense(name)
    data = _data() if cls.needs == "clean" else None
    res = defense.run(net, data)
    assert res.method == name
    assert res.model is not net
    after = res.model.state_dict()
    assert after.keys() == before.keys()
    assert all(after[k].shape == before[k].shape for k in before)
    assert all(torch.equal(net.state_dict()[k], before[k]) for k in before), "input model was modified"
    assert res.model(_data(4)[0]).shape == (4, CLASSES)
    assert "total" in res.timings
    assert (res.data_used == "none") == (cls.needs == "none")


@pytest.mark.parametrize("name", [n for n, c in sorted(list_defenses().items()) if c.needs == "clean"])
def test_data_dependent_defense_refuses_without_data(name):
    defense = create_defense(name, progress=False, **TINY.get(name, {}))
    with pytest.raises(OtbrError, match="clean data"):
        defense.run(_tiny(), None)
    # what is not a clean subset is one error, for every data-dependent defense alike (TSBD included: it now reads
    # its subset through the same clean_tensors); a string used to end in an IndexError, a 3-D batch deep in a layer
    for bad, message in (("not data", "of type str"), ([1, 2], "tensor pairs"),
                         ([(torch.zeros(4, 8, 8), torch.zeros(4))], "NCHW"),
                         ((torch.zeros(4, 1, 8, 8), torch.zeros(4, 1)), "NCHW")):
        with pytest.raises(OtbrError, match=message):
            defense.run(_tiny(), bad)


def test_bad_hyperparameters_are_refused():
    with pytest.raises(OtbrError):
        create_defense("ulrl", alpha=-1)
    with pytest.raises(OtbrError):
        create_defense("fp", max_ratio=0)
    with pytest.raises(OtbrError):
        create_defense("anp", eps=2)


def test_fp_pruned_columns_stay_zero_after_finetuning():
    res = create_defense("fp", epochs=2, batch_size=16, max_acc_drop=1.0, max_ratio=0.5, progress=False).run(
        _tiny(), _data())
    pruned = res.info["pruned"]["fc:input_channels"]
    assert len(pruned) == 8
    assert float(res.model.net.fc.weight[:, pruned].detach().abs().sum()) == 0.0


def test_anp_accuracy_guard_stops_a_mask_collapse(monkeypatch):
    """Masks that all fell to 0.1 (the collapse seen on a narrow real model): the guard keeps the model usable."""
    from helpers import tiny_net, train_backdoor

    from otbr.defenses.anp import ANP
    from otbr.metrics import predict

    net, (x, _), _ = train_backdoor(tiny_net(), poison=False)
    x = x[:200]
    y = predict(net, x)  # labels the model gets all right: subset accuracy 1.0 before pruning
    monkeypatch.setattr(ANP, "learn_masks", lambda self, model, xs, ys: {
        n: torch.full_like(m.weight, 0.1) for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)})
    plain = ANP(iterations=1, acc_ratio=0.0, progress=False).run(net, (x, y))
    assert plain.info["num_pruned"] == plain.info["num_neurons"]  # the published threshold prunes every channel
    guarded = ANP(iterations=1, progress=False).run(net, (x, y))
    assert guarded.info["guard"] and all(c["subset_acc"] < 0.9 for c in guarded.info["guard"])  # pruning breaks it
    assert guarded.info["threshold"] == 0.0 and guarded.info["num_pruned"] == 0
    assert bool((predict(guarded.model, x) == y).all())


def test_anp_accuracy_guard_still_prunes_what_the_model_can_spare(monkeypatch):
    """One low mask in a wide layer (pruning it costs little): the guard keeps the published threshold's choice."""
    from helpers import tiny_net, train_backdoor

    from otbr.defenses.anp import ANP
    from otbr.metrics import predict

    net, (x, _), _ = train_backdoor(tiny_net(), poison=False)
    x = x[:200]
    y = predict(net, x)
    bns = [n for n, m in net.named_modules() if isinstance(m, nn.BatchNorm2d)]

    def masks(self, model, xs, ys):
        out = {n: torch.ones_like(m.weight) for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)}
        out[bns[-1]][0] = 0.05
        return out

    monkeypatch.setattr(ANP, "learn_masks", masks)
    res = ANP(iterations=1, progress=False).run(net, (x, y))
    assert res.info["num_pruned"] == 1 and res.info["threshold"] > 0.05
    assert (predict(res.model, x) == y).float().mean() >= 0.9


# -- CLI --------------------------------------------------------------------------------------------------------------
@pytest.fixture()
def model_file(tmp_path):
    meta = ModelMeta(arch="tinycnn", arch_kwargs={"num_classes": CLASSES, "in_channels": 1}, num_classes=CLASSES,
                     input_shape=(1, SIDE, SIDE), mean=(0.5,), std=(0.25,))
    path = tmp_path / "m.safetensors"
    save_model(_tiny(), path, meta)
    return path


@pytest.mark.parametrize("method", ["ulrl", "ft", "fp", "anp"])
def test_cli_refuses_data_dependent_defense_without_data(model_file, tmp_path, method):
    from otbr.cli.main import main

    res = CliRunner().invoke(main, ["defend", method, str(model_file), "-o", str(tmp_path / "o.safetensors")])
    assert res.exit_code == 2
    assert "needs clean data" in res.output
    assert "Traceback" not in res.output and len(res.output.strip().splitlines()) == 1


def test_cli_clp_writes_a_model(model_file, tmp_path):
    from otbr.cli.main import main

    out = tmp_path / "clp.safetensors"
    res = CliRunner().invoke(main, ["defend", "clp", str(model_file), "-o", str(out), "--no-eval"])
    assert res.exit_code == 0, res.output
    assert out.is_file() and "data used by the defense: none" in res.output
