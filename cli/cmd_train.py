"""``otbr train`` and ``otbr poison``: make backdoored models and poisoned test sets.

The group registers these with ``main.add_command(...)`` (see ``COMMANDS``).

Example:
    $ otbr train --data fashion-mnist --arch preactresnet18 --width 16 --attack badnets --epochs 3 -o bd.safetensors
    $ otbr poison --model bd.safetensors --data fashion-mnist -o poisoned-test.npz
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import click

from otbr.errors import OtbrError

from .common import FINITE, SEED, check_new_output, data_files

log = logging.getLogger(__name__)


def _json_option(text: str | None, what: str) -> dict[str, Any]:
    from otbr.cli.common import parse_json_kwargs

    return parse_json_kwargs(text, what)


def _progress(quiet: bool) -> bool:
    """Progress bars unless --quiet (here or on the group) or stderr is not a terminal."""
    ctx = click.get_current_context(silent=True)
    obj = ctx.find_root().obj if ctx is not None else None
    group_progress = obj.get("progress", True) if isinstance(obj, dict) else True
    return not quiet and group_progress


def _build_attack(name: str, target: int | None, poison_rate: float | None, seed: int,
                  attack_kwargs: str | None) -> Any:
    from otbr.attacks import create_attack

    kwargs = _json_option(attack_kwargs, "--attack-kwargs")
    if target is not None:
        kwargs["target"] = target
    if poison_rate is not None:
        kwargs["poison_rate"] = poison_rate
    kwargs.setdefault("seed", seed)
    try:
        return create_attack(name, **kwargs)
    except (TypeError, ValueError) as exc:  # a value of the wrong type in --attack-kwargs
        raise OtbrError(f"--attack-kwargs for {name}: {exc}") from exc


def _table(rows: list[tuple[str, str]]) -> str:
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


def _pct(v: float | None) -> str:
    return "—" if v is None else f"{100 * v:6.2f} %"


@click.command("train")
@click.option("--data", "data", required=True, help="dataset name or spec (fashion-mnist, cifar10, npz:FILE …)")
@click.option("--data-root", default=None, help="where the dataset lives (default: its usual places)")
@click.option("--arch", default="preactresnet18", show_default=True, help="architecture name or file.py:Factory")
@click.option("--width", type=int, default=None, help="architecture width (shortcut for --arch-kwargs width)")
@click.option("--arch-kwargs", default=None, help='JSON object of architecture arguments, e.g. \'{"width": 16}\'')
@click.option("--attack", default=None, help="attack name (badnets, blended, sig, wanet, lf, trojan); none: clean")
@click.option("--target", type=int, default=None, help="attack target class [0]")
@click.option("--poison-rate", type=FINITE, default=None, help="fraction of the training set to poison [0.1]")
@click.option("--attack-kwargs", default=None, help="JSON object of attack parameters")
@click.option("--clean-model", type=click.Path(dir_okay=False), default=None,
              help="clean model on which the trojan attack optimises its patch")
@click.option("--epochs", type=click.IntRange(min=1), required=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=128, show_default=True)
@click.option("--lr", type=FINITE, default=0.01, show_default=True)
@click.option("--no-augment", is_flag=True, help="turn off the random-crop augmentation")
@click.option("--train-limit", type=click.IntRange(min=2), default=None, help="train on a random subset of N images")
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:1 …")
@click.option("--poisoned-out", type=click.Path(dir_okay=False), default=None,
              help="also write the poisoned test set (.npz)")
@click.option("--quiet", is_flag=True, help="no progress bars")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="model file (.safetensors)")
@click.option("--force", is_flag=True, help="overwrite existing output files")
def train(data: str, data_root: str | None, arch: str, width: int | None, arch_kwargs: str | None,
          attack: str | None, target: int | None, poison_rate: float | None, attack_kwargs: str | None,
          clean_model: str | None, epochs: int, batch_size: int, lr: float, no_augment: bool,
          train_limit: int | None, seed: int, device: str, poisoned_out: str | None, quiet: bool,
          output: str, force: bool) -> None:
    """Train a clean or backdoored model and save it with its metadata."""
    from otbr.models import load_model, save_model
    from otbr.training import train_backdoored

    if not output.endswith(".safetensors"):
        raise OtbrError(f"the model is written as .safetensors, got {output}")
    kwargs = _json_option(arch_kwargs, "--arch-kwargs")
    if width is not None:
        kwargs["width"] = width
    atk = None
    if attack is not None and attack.lower() not in ("none", "clean"):
        atk = _build_attack(attack, target, poison_rate, seed, attack_kwargs)
    elif target is not None or poison_rate is not None or attack_kwargs:
        raise OtbrError("--target, --poison-rate and --attack-kwargs need --attack")
    check_new_output(output, force, [clean_model, *data_files(data)])
    if poisoned_out is not None:
        if atk is None:
            raise OtbrError("--poisoned-out needs --attack (a clean model has no poisoned test set)")
        check_new_output(poisoned_out, force, [clean_model, output, *data_files(data)], what="--poisoned-out")
    clean = None
    if clean_model is not None:
        clean, _ = load_model(clean_model)
    result = train_backdoored(data, arch, arch_kwargs=kwargs, attack=atk, clean_model=clean, epochs=epochs,
                              seed=seed, batch_size=batch_size, lr=lr, augment=not no_augment, data_root=data_root,
                              train_limit=train_limit, device=device, progress=_progress(quiet))
    save_model(result.model, output, result.meta)
    if poisoned_out is not None and result.poisoned is not None:
        result.poisoned.save_npz(poisoned_out)
    m = result.report.metrics
    rows = [("model", output), ("arch", arch), ("attack", atk.name if atk else "none"),
            ("epochs", str(epochs)), ("ACC", _pct(m.acc if m else None)), ("ASR", _pct(m.asr if m else None)),
            ("RA", _pct(m.ra if m else None)), ("train time", f"{result.report.wall_s:.1f} s")]
    click.echo(_table(rows))


@click.command("poison")
@click.option("--attack", default=None, help="attack name (or take it from --model)")
@click.option("--model", "model_path", type=click.Path(dir_okay=False), default=None,
              help="a model file whose metadata names the attack it carries")
@click.option("--data", "data", required=True, help="dataset name or spec whose test split is triggered")
@click.option("--data-root", default=None)
@click.option("--split", type=click.Choice(["test", "train"]), default="test", show_default=True,
              help="which split's non-target images to trigger")
@click.option("--target", type=int, default=None, help="attack target class [0]")
@click.option("--attack-kwargs", default=None, help="JSON object of attack parameters")
@click.option("--clean-model", type=click.Path(dir_okay=False), default=None,
              help="clean model on which a trojan attack optimises its patch")
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="output .npz")
@click.option("--force", is_flag=True, help="overwrite an existing output file")
def poison(attack: str | None, model_path: str | None, data: str, data_root: str | None, split: str,
           target: int | None, attack_kwargs: str | None, clean_model: str | None, seed: int, output: str,
           force: bool) -> None:
    """Write the triggered non-target-class images of a dataset split (.npz: x, y, target, attack)."""
    from otbr.attacks import Trojan, attack_from_config
    from otbr.data import load_dataset
    from otbr.models import load_model, read_meta

    if (attack is None) == (model_path is None):
        raise OtbrError("give exactly one of --attack NAME or --model FILE")
    if model_path is not None:
        if not Path(model_path).is_file():
            raise OtbrError(f"model file not found: {model_path}")
        meta = read_meta(model_path) if model_path.endswith(".safetensors") else None
        if meta is None or not meta.attack:
            raise OtbrError(f"{model_path} does not record the attack it carries; pass --attack NAME instead")
        cfg = dict(meta.attack)
        cfg.update(_json_option(attack_kwargs, "--attack-kwargs"))
        if target is not None:
            cfg["target"] = target
        atk = attack_from_config(cfg)
    else:
        atk = _build_attack(attack, target, None, seed, attack_kwargs)
    check_new_output(output, force, [model_path, clean_model, *data_files(data)])
    ds = load_dataset(data, split, root=data_root)
    if isinstance(atk, Trojan) and atk.patch is None:
        if clean_model is None:
            raise OtbrError("the trojan attack needs a fitted patch: pass --model of a trojan model or --clean-model")
        clean, _ = load_model(clean_model)
        atk.fit(clean, ds)
    pset = atk.poison_test(ds)
    if len(pset) == 0:
        raise OtbrError(f"{data} ({split}) has no images outside the target class {atk.target}")
    path = pset.save_npz(output)
    click.echo(_table([("attack", atk.name), ("target", str(atk.target)), ("images", str(len(pset))),
                       ("shape", "×".join(str(s) for s in pset.x.shape[1:])), ("written", str(path))]))


COMMANDS = [train, poison]
