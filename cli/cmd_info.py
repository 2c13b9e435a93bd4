"""``otbr list``, ``otbr inspect`` and ``otbr evaluate``."""

from __future__ import annotations

import json

import click

from .common import format_table, load_model_from_options, model_options, pct


@click.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def list_cmd(as_json: bool) -> None:
    """List architectures, datasets, attacks and defenses."""
    from otbr.attacks import NOT_INCLUDED, list_attacks
    from otbr.data import list_datasets
    from otbr.defenses import list_defenses
    from otbr.models import list_architectures

    defenses = {name: cls.needs for name, cls in sorted(list_defenses().items())}
    payload = {
        "architectures": [*list_architectures(), "path/to/file.py:Factory", "package.module:Factory"],
        "datasets": [*list_datasets(), "imagefolder:PATH", "npz:FILE"],
        "attacks": list_attacks(),
        "attacks_not_included": NOT_INCLUDED,
        "defenses": {k: ("data-free" if v == "none" else "needs clean data") for k, v in defenses.items()},
    }
    if as_json:
        click.echo(json.dumps(payload, indent=2))
        return
    for key, values in payload.items():
        click.echo(f"{key.replace('_', ' ')}:")
        items = values.items() if isinstance(values, dict) else ((v, "") for v in values)
        for name, note in items:
            click.echo(f"  {name}" + (f"  ({note})" if note else ""))


@click.command("inspect")
@click.argument("model", type=click.Path(dir_okay=False))
@model_options
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def inspect_cmd(model: str, as_json: bool, **kw) -> None:
    """Show a model file's metadata, size and the layers a defense will consider."""
    from otbr.layers import considered_layers
    from otbr.models import count_parameters, file_sha256, unwrap

    net, meta = load_model_from_options(model, kw)
    layers = [
        {"name": n, "type": type(m).__name__, "neurons": int(m.weight.shape[0]), "weights": int(m.weight.numel())}
        for n, m in considered_layers(unwrap(net))
    ]
    payload = {
        "file": model,
        "sha256": file_sha256(model),
        "parameters": count_parameters(net),
        "meta": json.loads(meta.to_json()),
        "considered_layers": layers,
        "considered_neurons": sum(layer["neurons"] for layer in layers),
    }
    if as_json:
        click.echo(json.dumps(payload, indent=2))
        return
    click.echo(f"file         {model}")
    click.echo(f"sha256       {payload['sha256']}")
    click.echo(f"architecture {meta.arch} {json.dumps(meta.arch_kwargs, sort_keys=True)}")
    click.echo(f"parameters   {payload['parameters']:,}")
    click.echo(f"input        {tuple(meta.input_shape)} mean={meta.mean} std={meta.std}")
    click.echo(f"classes      {meta.num_classes}" + (f" ({', '.join(meta.classes)})" if meta.classes else ""))
    click.echo(f"dataset      {meta.dataset or '-'}")
    click.echo(f"attack       {json.dumps(meta.attack, sort_keys=True) if meta.attack else '-'}")
    for step in meta.history:
        click.echo(f"history      {json.dumps(step, sort_keys=True)}")
    click.echo(f"considered layers ({len(layers)}, {payload['considered_neurons']} neurons):")
    click.echo(format_table([{k: str(v) for k, v in layer.items()} for layer in layers],
                            ["name", "type", "neurons", "weights"]))


@click.command("evaluate")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--data", help="Clean test set (default: the dataset in the model's metadata).")
@click.option("--data-root", type=click.Path(file_okay=False), help="Folder holding the dataset files.")
@click.option("--poisoned", type=click.Path(dir_okay=False), help="Poisoned test set (.npz from `otbr poison`).")
@click.option("--batch-size", default=512, show_default=True, type=click.IntRange(1))
@model_options
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def evaluate_cmd(model: str, data: str | None, data_root: str | None, poisoned: str | None, batch_size: int,
                 as_json: bool, **kw) -> None:
    """Report clean accuracy (ACC) and, when the attack is known, ASR and robust accuracy (RA)."""
    from otbr.evaluation import evaluation_sets, measure

    net, meta = load_model_from_options(model, kw)
    sets = evaluation_sets(meta, data=data, poisoned=poisoned, data_root=data_root)
    m = measure(net, sets, batch_size=batch_size)
    payload = {"model": model, "data": sets.clean_name, "poisoned": sets.poisoned_name,
               "n_clean": len(sets.clean[1]), "n_poisoned": None if sets.poisoned is None else len(sets.poisoned[1]),
               **m.as_dict()}
    if as_json:
        click.echo(json.dumps(payload, indent=2))
        return
    row = {"model": model, "ACC": pct(m.acc), "ASR": pct(m.asr), "RA": pct(m.ra)}
    click.echo(format_table([row], ["model", "ACC", "ASR", "RA"]))
    if sets.poisoned is None:
        click.echo("(no attack known: pass --poisoned FILE.npz for ASR and RA)")


COMMANDS = [list_cmd, inspect_cmd, evaluate_cmd]
