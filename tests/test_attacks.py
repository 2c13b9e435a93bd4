"""Attacks: exact trigger values, determinism, poisoning bookkeeping, npz and config round trips, the CLI."""

from __future__ import annotations

import functools
import json
import math

import click
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from otbr.attacks import (
    LF,
    SIG,
    BadNets,
    Blended,
    PoisonedSet,
    Trojan,
    WaNet,
    attack_from_config,
    create_attack,
    list_attacks,
)
from otbr.data import ImageDataset
from otbr.errors import OtbrError
from otbr.models import Normalized, create_model

SIMPLE = ["badnets", "blended", "sig", "wanet", "lf"]


def _dataset(n: int = 200, size: int = 12, channels: int = 1, classes: int = 4, seed: int = 0) -> ImageDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, channels, size, size), generator=g, dtype=torch.uint8)
    y = torch.arange(n) % classes
    return ImageDataset(x, y, [f"c{i}" for i in range(classes)], name="synthetic")


@functools.cache
def _clean_tiny() -> tuple[Normalized, torch.Tensor]:
    """A fixed (seeded) tinycnn and clean images for Trojan fitting."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = Normalized(create_model("tinycnn", num_classes=4, in_channels=1), (0.5,), (0.5,)).eval()
    return net, torch.rand(32, 1, 16, 16, generator=torch.Generator().manual_seed(0))


def _fitted_trojan(**kwargs) -> Trojan:
    net, x = _clean_tiny()
    return Trojan(steps=5, **kwargs).fit(net, x)


def _make(name: str, **kwargs):
    return _fitted_trojan(**kwargs) if name == "trojan" else create_attack(name, **kwargs)


def test_registry_lists_included_attacks_only():
    assert list_attacks() == ["badnets", "blended", "lf", "sig", "trojan", "wanet"]
    for excluded in ("input-aware", "ssba"):
        with pytest.raises(OtbrError, match="not included"):
            create_attack(excluded)
    with pytest.raises(OtbrError, match="unknown attack"):
        create_attack("nope")
    with pytest.raises(OtbrError):
        create_attack("badnets", poison_rate=1.5)
    with pytest.raises(OtbrError):
        create_attack("badnets", colour=3)


def test_badnets_corner_white_rest_untouched():
    x = torch.rand(5, 3, 32, 32) * 0.9
    out = BadNets().apply(x)
    assert torch.all(out[..., -3:, -3:] == 1.0)
    mask = torch.ones(32, 32, dtype=torch.bool)
    mask[-3:, -3:] = False
    assert torch.equal(out[..., mask], x[..., mask])
    assert BadNets().patch_size(28, 28) == 3 and BadNets().patch_size(64, 64) == 6


def test_blended_formula_exact():
    x = torch.rand(4, 1, 12, 12)
    a = Blended(alpha=0.2, seed=3)
    p = a.pattern_for(1, 12, 12)
    assert torch.allclose(a.apply(x), 0.8 * x + 0.2 * p, atol=1e-7)
    assert p.min() >= 0 and p.max() <= 1


def test_blended_user_image(tmp_path):
    from PIL import Image

    path = tmp_path / "kitty.png"
    Image.fromarray(np.full((20, 30, 3), 200, np.uint8)).save(path)
    a = Blended(pattern=str(path))
    cfg = a.config()
    assert cfg["pattern"] == str(path) and len(cfg["pattern_sha256"]) == 64
    out = a.apply(torch.zeros(1, 1, 12, 12))
    assert torch.allclose(out, torch.full_like(out, 0.2 * 200 / 255), atol=1e-6)
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(path)
    with pytest.raises(OtbrError, match="changed"):
        attack_from_config(cfg)


def test_sig_amplitude_and_frequency():
    w = 32
    x = torch.full((1, 1, 16, w), 0.5)
    delta = SIG().apply(x) - x
    assert torch.allclose(delta[0, 0], delta[0, 0, :1].expand(16, w))  # same along every row
    spectrum = torch.fft.rfft(delta[0, 0, 0].double()).abs()
    assert int(spectrum.argmax()) == 6
    assert math.isclose(float(spectrum[6]) * 2 / w, 40 / 255, rel_tol=1e-4)
    assert math.isclose(float(delta.abs().max()), 40 / 255, rel_tol=1e-4)  # j = 12 hits the peak


def test_sig_survives_uint8_storage():
    with pytest.raises(OtbrError, match="periods"):
        SIG().apply(torch.rand(1, 1, 12, 12))  # 6 periods on 12 px would be all zeros
    ds = _dataset(size=32)
    ds = ds.with_data(torch.full_like(ds.x, 128))
    pset = SIG(target=1).poison_test(ds)
    delta = pset.x.float() - 128
    assert delta.max() == 40 and delta.min() == -40


def test_wanet_identity_at_zero_strength_and_smooth():
    x = torch.rand(3, 1, 12, 12)
    assert torch.allclose(WaNet(strength=0.0).apply(x), x, atol=1e-6)
    a = WaNet(k=4, strength=0.5)
    # The displacement field is smooth: neighbouring displacements differ by a small part of its range.
    field = a.field(28, 28)[0]
    assert math.isclose(float(a.control_grid().abs().mean()), 1.0, rel_tol=1e-5)
    span = float(field.abs().max())
    for d in ((field[1:] - field[:-1]).abs(), (field[:, 1:] - field[:, :-1]).abs()):
        assert d.max() < 0.35 * span and d.mean() < 0.3 * field.abs().mean()  # white noise: ≈ 1.1 × mean
    # In pixels, the warp moves no pixel by more than s·max|field|/2 ≤ a couple of pixels.
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, 28), torch.linspace(-1, 1, 28), indexing="ij")
    disp_px = (a._grid(28, 28)[0] - torch.stack((xs, ys), -1)) * 27 / 2
    assert disp_px.abs().max() <= 0.5 * span / 2 + 1e-5
    out = a.apply(x)
    assert not torch.allclose(out, x) and out.min() >= 0 and out.max() <= 1


def test_lf_is_low_frequency_and_bounded():
    p = LF(eps=0.1).perturbation(1, 28, 28)
    assert math.isclose(float(p.abs().max()), 0.1, rel_tol=1e-5)
    spectrum = torch.fft.fft2(p[0].double()).abs()
    f = torch.fft.fftfreq(28) * 28
    high = (f[:, None] ** 2 + f[None, :] ** 2) > 10 ** 2  # > 3.3 σ of the default cutoff
    assert spectrum[high].sum() < 0.01 * spectrum.sum()


@pytest.mark.parametrize("name", [*SIMPLE, "trojan"])
def test_determinism_and_seed(name):
    x = torch.rand(4, 1, 16, 16)
    a, b = _make(name, seed=1), _make(name, seed=1)
    assert torch.equal(a.apply(x), b.apply(x))
    if name not in ("badnets", "sig"):  # these have no random part
        assert not torch.equal(_make(name, seed=1).apply(x), _make(name, seed=2).apply(x))


@pytest.mark.parametrize("name", [*SIMPLE, "trojan"])
def test_config_round_trip_any_shape(name):
    a = _make(name, seed=5, target=2)
    cfg = json.loads(json.dumps(a.config()))
    b = attack_from_config(cfg)
    assert cfg["name"] == name and b.config() == a.config()
    for shape in ((3, 1, 16, 16), (2, 3, 32, 32), (2, 1, 28, 28)):
        x = torch.rand(*shape)
        out = a.apply(x)
        assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
        assert torch.equal(b.apply(x), out)


@pytest.mark.parametrize("name", SIMPLE)
def test_poison_train_counts_and_labels(name):
    ds = _dataset(n=200, size=16)
    a = create_attack(name, target=1, poison_rate=0.1)
    pds, idx = a.poison_train(ds)
    assert len(pds) == len(ds) and pds.x.dtype == torch.uint8
    assert len(idx) == 20 and len(set(idx.tolist())) == 20
    if name == "sig":
        assert torch.equal(pds.y, ds.y) and torch.all(ds.y[idx] == 1)
    else:
        assert int((pds.y != ds.y).sum()) == 20 and torch.all(pds.y[idx] == 1) and torch.all(ds.y[idx] != 1)
    assert torch.equal(pds.x[idx], a.apply_uint8(ds.x[idx]))
    changed = (pds.x != ds.x).flatten(1).any(1)
    if name == "wanet":  # noise-mode samples: twice the poison count, labels kept
        assert len(a.noise_indices) == 40 and not set(a.noise_indices.tolist()) & set(idx.tolist())
        assert torch.equal(pds.y[a.noise_indices], ds.y[a.noise_indices])
        assert int(changed.sum()) <= 60
    else:
        assert int(changed.sum()) <= 20 and not changed[[i for i in range(200) if i not in set(idx.tolist())]].any()
    _, idx2 = create_attack(name, target=1, poison_rate=0.1).poison_train(ds)
    assert torch.equal(idx, idx2)


def test_sig_rate_capped_by_target_class(caplog):
    ds = _dataset(n=200, size=16, classes=4)  # 50 images of class 0
    _, idx = SIG(target=0, poison_rate=0.5).poison_train(ds)
    assert len(idx) == 50 and "only 50" in caplog.text


def test_poison_test_excludes_target_and_keeps_true_labels():
    ds = _dataset(n=40)
    pset = BadNets(target=2).poison_test(ds)
    keep = ds.y != 2
    assert len(pset) == int(keep.sum()) and torch.equal(pset.y_true, ds.y[keep])
    assert pset.target == 2 and pset.attack["name"] == "badnets"
    assert torch.all(pset.x[..., -1:, -1:] == 255)
    with pytest.raises(OtbrError, match="not a class"):
        BadNets(target=7).poison_test(ds)


def test_npz_round_trip(tmp_path):
    pset = create_attack("blended", target=1).poison_test(_dataset(n=30))
    path = pset.save_npz(tmp_path / "sub" / "p.npz")
    with np.load(path, allow_pickle=False) as f:
        assert f["x"].dtype == np.uint8 and json.loads(str(f["attack"]))["name"] == "blended"
    back = PoisonedSet.load_npz(path)
    assert torch.equal(back.x, pset.x) and torch.equal(back.y_true, pset.y_true)
    assert back.target == 1 and back.attack == pset.attack
    assert list(tmp_path.joinpath("sub").iterdir()) == [path]  # no temporary left behind


def test_trojan_needs_fit_and_excites_neurons():
    with pytest.raises(OtbrError, match="not fitted"):
        Trojan().apply(torch.rand(1, 1, 12, 12))
    net, x = _clean_tiny()
    a = Trojan(steps=40, target=1, size=4).fit(net, x)
    feats = {}
    hook = net.net.fc.register_forward_hook(lambda _m, inp, _o: feats.__setitem__("z", inp[0]))
    with torch.no_grad():
        net(x)
        before = feats["z"][:, a.neurons].mean()
        net(a.apply(x))
        after = feats["z"][:, a.neurons].mean()
    assert after > before
    assert len(a.config()["patch"][0]) == 4 and all(p.grad is None and p.requires_grad for p in net.parameters())
    hook.remove()


def _cli_group() -> click.Group:
    from otbr.cli.cmd_train import COMMANDS

    @click.group()
    def group() -> None:
        pass

    for command in COMMANDS:
        group.add_command(command)
    return group


def test_cli_poison_npz_dataset(tmp_path):
    ds = _dataset(n=40)
    data = tmp_path / "tiny.npz"
    np.savez(data, x_train=ds.x.numpy(), y_train=ds.y.numpy(), x_test=ds.x.numpy(), y_test=ds.y.numpy())
    out = tmp_path / "poisoned.npz"
    res = CliRunner().invoke(_cli_group(), ["poison", "--attack", "badnets", "--data", f"npz:{data}", "--target", "3",
                                            "-o", str(out)])
    assert res.exit_code == 0, res.output
    back = PoisonedSet.load_npz(out)
    assert back.target == 3 and len(back) == 30 and torch.all(back.y_true != 3)
    assert torch.all(back.x[..., -1:, -1:] == 255)
    res = CliRunner().invoke(_cli_group(), ["poison", "--attack", "ssba", "--data", f"npz:{data}", "-o", str(out)])
    assert res.exit_code != 0 and isinstance(res.exception, OtbrError)
