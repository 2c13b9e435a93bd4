"""Training: the SGD loop, augmentation, reports, and a tiny backdoor that is really learned."""

from __future__ import annotations

import dataclasses

import click
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from otbr.attacks import BadNets, create_attack
from otbr.data import ImageDataset
from otbr.errors import OtbrError
from otbr.models import Normalized, create_model, load_model
from otbr.training import iterate_batches, random_crop, run_epoch, train_backdoored, train_model


def _stripes(n: int, seed: int, size: int = 12, classes: int = 4) -> ImageDataset:
    """Class c = a bright horizontal band in the c-th quarter of the image, plus noise."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    x = torch.rand(n, 1, size, size, generator=g) * 0.25
    band = size // classes
    rows = torch.arange(size)[None, :] // band == y[:, None]  # n × size
    x = x + 0.35 * rows[:, None, :, None].float()
    return ImageDataset((x.clamp(0, 1) * 255).round().to(torch.uint8), y, [f"c{i}" for i in range(classes)], "stripes")


def _net(seed: int = 0) -> Normalized:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return Normalized(create_model("tinycnn", num_classes=4, in_channels=1, width=8), (0.5,), (0.25,))


def test_random_crop_shifts_content_within_padding():
    x = torch.zeros(64, 1, 8, 8)
    x[:, :, 3, 3] = 1.0
    out = random_crop(x, 2, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and torch.all(out.sum((1, 2, 3)) == 1)
    pos = out.flatten(1).argmax(1)
    r, c = pos // 8, pos % 8
    assert r.min() >= 1 and r.max() <= 5 and c.min() >= 1 and c.max() <= 5 and len(set(pos.tolist())) > 5
    assert torch.equal(random_crop(x, 0), x)


def test_iterate_batches_covers_all_and_is_seeded():
    x = torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1)
    y = torch.arange(10)
    seen = torch.cat([yb for _, yb in iterate_batches(x, y, 4, generator=torch.Generator().manual_seed(1))])
    again = torch.cat([yb for _, yb in iterate_batches(x, y, 4, generator=torch.Generator().manual_seed(1))])
    assert sorted(seen.tolist()) == list(range(10)) and torch.equal(seen, again)
    xb, _ = next(iterate_batches(x, y, 4, shuffle=False))
    assert xb.dtype == torch.float32 and float(xb.max()) == pytest.approx(3 / 255)


def test_run_epoch_restores_mode():
    net = _net().eval()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    batches = [(torch.rand(8, 1, 8, 8), torch.randint(0, 4, (8,)))]
    loss, acc = run_epoch(net, batches, opt, progress=False)
    assert not net.training and loss > 0 and 0 <= acc <= 1


def test_train_model_is_seeded_and_reports():
    ds = _stripes(64, seed=0)
    a, b = _net(), _net()
    ra = train_model(a, ds, epochs=2, batch_size=16, seed=3, progress=False, test=ds)
    rb = train_model(b, ds, epochs=2, batch_size=16, seed=3, progress=False)
    assert ra.loss == rb.loss and len(ra.acc) == 2 and ra.wall_s > 0 and ra.metrics is not None
    assert ra.lr[0] == pytest.approx(0.01) and ra.lr[1] < ra.lr[0]
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    with pytest.raises(OtbrError):
        train_model(a, ds, epochs=0)


def test_backdoor_is_learned_end_to_end():
    """BadNets on tiny synthetic images: the trained model keeps ACC and learns the trigger."""
    train, test = _stripes(600, seed=0), _stripes(200, seed=1)
    attack = BadNets(size=3, target=0, poison_rate=0.1)
    poisoned_train, idx = attack.poison_train(train)
    pset = attack.poison_test(test)
    net = _net()
    report = train_model(net, poisoned_train, epochs=12, batch_size=32, lr=0.05, seed=0, progress=False,
                         test=test, poisoned=pset)
    m = report.metrics
    assert len(idx) == 60
    assert m.acc > 0.9, m
    assert m.asr > 0.8, m
    assert m.ra < 0.2, m


def test_train_backdoored_meta_and_cli(tmp_path):
    train, test = _stripes(96, seed=0), _stripes(48, seed=1)
    result = train_backdoored("stripes", "tinycnn", arch_kwargs={"width": 4}, attack=create_attack("blended"),
                              epochs=1, batch_size=32, train_ds=train, test_ds=test, progress=False)
    meta = result.meta
    assert meta.attack == create_attack("blended").config() and meta.dataset == "stripes"
    assert meta.arch_kwargs == {"width": 4, "num_classes": 4, "in_channels": 1}
    assert meta.input_shape == (1, 12, 12) and meta.classes == train.classes
    step = meta.history[0]
    assert step["step"] == "train" and step["epochs"] == 1 and step["poison_rate"] == 0.1 and step["n_poisoned"] == 10
    assert result.poisoned is not None and len(result.poisoned) == 36
    assert dataclasses.asdict(meta)  # JSON-friendly dataclass

    # The command line: `otbr train` on an npz dataset, then `otbr poison --model`.
    from otbr.cli.cmd_train import COMMANDS

    @click.group()
    def group() -> None:
        pass

    for command in COMMANDS:
        group.add_command(command)
    data = tmp_path / "stripes.npz"
    np.savez(data, x_train=train.x.numpy(), y_train=train.y.numpy(), x_test=test.x.numpy(), y_test=test.y.numpy())
    model_path = tmp_path / "m.safetensors"
    res = CliRunner().invoke(group, ["train", "--data", f"npz:{data}", "--arch", "tinycnn", "--width", "4",
                                     "--attack", "badnets", "--target", "1", "--epochs", "1", "--batch-size", "32",
                                     "--device", "cpu", "-o", str(model_path)])
    assert res.exit_code == 0, res.output
    assert "ASR" in res.output and "ACC" in res.output
    _, meta = load_model(model_path)
    assert meta.attack["name"] == "badnets" and meta.attack["target"] == 1
    out = tmp_path / "p.npz"
    res = CliRunner().invoke(group, ["poison", "--model", str(model_path), "--data", f"npz:{data}", "-o", str(out)])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(group, ["train", "--data", f"npz:{data}", "--arch", "tinycnn", "--epochs", "1",
                                     "--attack-kwargs", "[1]", "--attack", "badnets", "-o", str(model_path)])
    assert res.exit_code != 0 and isinstance(res.exception, OtbrError)


def test_a_relative_npz_path_is_recorded_absolute(tmp_path, monkeypatch):
    """A model trained on ``npz:data.npz`` from one folder must evaluate with no flags from another."""
    train = _stripes(64, seed=0)
    np.savez(tmp_path / "data.npz", x=train.x.numpy(), y=train.y.numpy())
    monkeypatch.chdir(tmp_path)
    result = train_backdoored("npz:data.npz", "tinycnn", arch_kwargs={"width": 4}, epochs=1, batch_size=32,
                              progress=False)
    assert result.meta.dataset == f"npz:{tmp_path.resolve() / 'data.npz'}"
