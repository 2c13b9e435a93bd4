"""Architectures, the registry and model files."""

from __future__ import annotations

import textwrap

import pytest
import torch
import torchvision
from safetensors.torch import save_file

from otbr import OtbrError
from otbr.models import ModelMeta, create_model, load_model, read_meta, save_model, unwrap

BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def expected_preact_keys() -> list[str]:
    keys = ["conv1.weight"]
    for layer in range(1, 5):
        for block in range(2):
            p = f"layer{layer}.{block}."
            keys += [p + "bn1." + s for s in BN] + [p + "conv1.weight"]
            keys += [p + "bn2." + s for s in BN] + [p + "conv2.weight"]
            if block == 0 and layer > 1:
                keys.append(p + "shortcut.0.weight")
    return [*keys, "linear.weight", "linear.bias"]


def tiny_meta(**kw) -> ModelMeta:
    base = dict(arch="tinycnn", arch_kwargs={"num_classes": 4, "in_channels": 1}, num_classes=4,
                input_shape=(1, 8, 8), mean=(0.5,), std=(0.25,), dataset="npz:x.npz", seed=3)
    base.update(kw)
    return ModelMeta(**base)


def test_preactresnet18_keys_are_backdoorbench_keys():
    net = create_model("preactresnet18", num_classes=10)
    assert list(net.state_dict()) == expected_preact_keys()
    assert net.state_dict()["layer4.1.conv2.weight"].shape == (512, 512, 3, 3)
    assert net.linear.in_features == 512


def test_preactresnet18_width_and_channels():
    net = create_model("preactresnet18", num_classes=7, in_channels=1, width=16)
    assert net.conv1.weight.shape == (16, 1, 3, 3)
    assert net(torch.zeros(2, 1, 28, 28)).shape == (2, 7)


def test_vgg_matches_torchvision_layout():
    ours = create_model("vgg16_bn", num_classes=1000).state_dict()
    theirs = torchvision.models.vgg16_bn(weights=None).state_dict()
    assert list(ours) == list(theirs)
    assert all(ours[k].shape == theirs[k].shape for k in ours)


def test_small_vgg_on_28px():
    net = create_model("vgg11_bn", num_classes=10, in_channels=1, width=16, classifier_width=32,
                       pool_size=1, image_size=28)
    assert net(torch.zeros(3, 1, 28, 28)).shape == (3, 10)


def test_unknown_architecture_is_one_line_error():
    with pytest.raises(OtbrError, match="unknown architecture 'nope'"):
        create_model("nope")
    with pytest.raises(OtbrError, match="does not accept"):
        create_model("tinycnn", depth=3)


def test_safetensors_round_trip_with_metadata(tmp_path):
    net = create_model("tinycnn", num_classes=4, in_channels=1)
    for p in net.parameters():
        torch.nn.init.normal_(p)
    path = save_model(net, tmp_path / "m.safetensors", tiny_meta(attack={"name": "badnets", "target": 0}))
    model, meta = load_model(path)
    assert meta.arch == "tinycnn" and meta.input_shape == (1, 8, 8) and meta.seed == 3
    assert meta.attack == {"name": "badnets", "target": 0}
    assert meta.otbr_version is not None
    for k, v in net.state_dict().items():
        assert torch.equal(unwrap(model).state_dict()[k], v)
    x = torch.rand(2, 1, 8, 8)
    net.eval()
    assert torch.allclose(model(x), net((x - 0.5) / 0.25))
    assert read_meta(path).mean == (0.5,)
    assert not model.training


def test_save_refuses_other_suffix(tmp_path):
    with pytest.raises(OtbrError, match="safetensors"):
        save_model(create_model("tinycnn"), tmp_path / "m.pt", tiny_meta())
    assert list(tmp_path.iterdir()) == []


def test_pt_state_dict_prefixes_stripped(tmp_path):
    net = create_model("tinycnn", num_classes=4, in_channels=1)
    state = {"module._orig_mod." + k: v for k, v in net.state_dict().items()}
    torch.save({"state_dict": state}, tmp_path / "m.pth")
    model, meta = load_model(tmp_path / "m.pth", arch="tinycnn", arch_kwargs={"num_classes": 4, "in_channels": 1},
                             input_shape=(1, 8, 8))
    assert torch.equal(unwrap(model).conv1.weight, net.conv1.weight)
    assert meta.history[0]["step"] == "import"


def test_pt_without_arch_is_refused(tmp_path):
    torch.save(create_model("tinycnn").state_dict(), tmp_path / "m.pt")
    with pytest.raises(OtbrError, match="--arch"):
        load_model(tmp_path / "m.pt")


def test_backdoorbench_attack_result(tmp_path):
    net = create_model("preactresnet18", num_classes=10, in_channels=3, width=8)
    torch.save({"model_name": "preactresnet18", "num_classes": 10, "model": net.state_dict()}, tmp_path / "ar.pt")
    model, meta = load_model(tmp_path / "ar.pt", arch_kwargs={"width": 8})
    assert meta.input_shape == (3, 32, 32) and meta.dataset == "cifar10"
    assert meta.mean == (0.4914, 0.4822, 0.4465)
    assert torch.equal(unwrap(model).linear.weight, net.linear.weight)


def test_pickled_module_refused_unless_allowed(tmp_path):
    net = create_model("tinycnn", num_classes=4, in_channels=1)
    torch.save(net, tmp_path / "whole.pt")  # a pickled nn.Module: needs arbitrary unpickling
    with pytest.raises(OtbrError, match="--allow-pickle"):
        load_model(tmp_path / "whole.pt", arch="tinycnn", input_shape=(1, 8, 8))
    model, _ = load_model(tmp_path / "whole.pt", arch="tinycnn", input_shape=(1, 8, 8), allow_pickle=True,
                          arch_kwargs={"num_classes": 4, "in_channels": 1})
    assert torch.equal(unwrap(model).fc.weight, net.fc.weight)


def test_wrong_weights_for_architecture(tmp_path):
    save_file({"x": torch.zeros(2)}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(OtbrError, match="do not fit"):
        load_model(tmp_path / "bad.safetensors", arch="tinycnn", input_shape=(1, 8, 8), arch_kwargs={"num_classes": 4})
    with pytest.raises(OtbrError, match="cannot infer num_classes"):
        load_model(tmp_path / "bad.safetensors", arch="tinycnn", input_shape=(1, 8, 8))


def test_not_a_model_file(tmp_path):
    (tmp_path / "junk.safetensors").write_bytes(b"hello world, not a model")
    with pytest.raises(OtbrError, match="not a readable safetensors"):
        load_model(tmp_path / "junk.safetensors")
    with pytest.raises(OtbrError, match="not found"):
        load_model(tmp_path / "missing.safetensors")


def test_file_factory_architecture(tmp_path):
    src = tmp_path / "mynet.py"
    src.write_text(textwrap.dedent("""
        import torch.nn as nn
        def Small(num_classes=3, hidden=5):
            return nn.Sequential(nn.Flatten(), nn.Linear(16, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))
    """))
    arch = f"{src}:Small"
    net = create_model(arch, num_classes=3, hidden=6)
    assert net(torch.zeros(2, 1, 4, 4)).shape == (2, 3)
    meta = ModelMeta(arch=arch, arch_kwargs={"num_classes": 3, "hidden": 6}, num_classes=3, input_shape=(1, 4, 4),
                     mean=(0.0,), std=(1.0,))
    path = save_model(net, tmp_path / "c.safetensors", meta)
    assert read_meta(path).source_sha256 is not None
    with pytest.raises(OtbrError, match="custom architecture"):
        load_model(path)  # would import code named by the file: needs confirmation
    model, _ = load_model(path, arch=arch)
    assert torch.equal(unwrap(model)[1].weight, net[1].weight)
    with pytest.raises(OtbrError, match="not found"):
        create_model(f"{tmp_path}/nope.py:Small")
