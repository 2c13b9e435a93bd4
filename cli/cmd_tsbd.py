"""``otbr defend tsbd``: clean unlearning → NWC zero-reinitialisation → activeness-aware fine-tuning.

The command attaches itself to the ``defend`` group of :mod:`cmd_defend` when this
module is imported (``COMMANDS`` is empty on purpose).

Example:
    $ otbr defend tsbd bd.safetensors --data fashion-mnist --clean-ratio 0.05 -o clean.safetensors
    $ otbr defend tsbd bd.safetensors --data fashion-mnist --sweep 0.01,0.05,0.1 --ft-epochs 5   # ORACLE table
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import click

from otbr.errors import OtbrError

from .cmd_defend import (
    _eval_sets,
    _progress,
    check_output,
    clean_data_options,
    clean_subset,
    defend,
    finish,
    output_options,
)
from .common import format_table, load_model_from_options, model_options, parse_floats, pct

log = logging.getLogger(__name__)


@defend.command("tsbd")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--neuron-ratio", default=0.1, show_default=True, type=click.FloatRange(0, 1),
              help="Fraction n of neurons selected by clean-unlearning NWC (global ranking).")
@click.option("--weight-ratio", default=0.7, show_default=True, type=click.FloatRange(0, 1),
              help="Fraction m of the selected neurons' weights zeroed (largest weight change).")
@click.option("--finetune", type=click.Choice(["activeness", "vanilla", "none"]), default="activeness",
              show_default=True, help="Stage 2: activeness-aware (the paper), plain SGD, or none (stage 1 only).")
@click.option("--ft-epochs", default=20, show_default=True, type=click.IntRange(1), help="Fine-tuning epochs.")
@click.option("--ft-lr", default=0.01, show_default=True, type=float, help="Fine-tuning learning rate.")
@click.option("--r", "r", default=0.05, show_default=True, type=click.FloatRange(0), help="Perturbation radius r.")
@click.option("--alpha", default=0.7, show_default=True, type=click.FloatRange(0, 1),
              help="Weight α of the gradient at the perturbed point.")
@click.option("--unlearn-lr", default=1e-4, show_default=True, type=float, help="Clean-unlearning learning rate.")
@click.option("--unlearn-max-epochs", default=100, show_default=True, type=click.IntRange(1),
              help="Epoch cap of clean unlearning.")
@click.option("--stop-acc", default=0.10, show_default=True, type=click.FloatRange(0, 1),
              help="Unlearning stops at the first epoch with subset accuracy ≤ this.")
@click.option("--batch-size", default=128, show_default=True, type=click.IntRange(1))
@click.option("--no-augment", is_flag=True, help="No random-crop augmentation during fine-tuning.")
@click.option("--include-linear", is_flag=True, help="Also score hidden Linear layers (never the classifier).")
@click.option("--sweep", help="Comma-separated neuron-ratio grid to evaluate (an ORACLE table: scored on poisoned "
                              "data; one unlearning run).")
@click.option("--plot", type=click.Path(dir_okay=False), help="With --sweep: PNG of ACC and ASR against n.")
@clean_data_options
@output_options
@model_options
@_progress
def defend_tsbd(model: str, neuron_ratio: float, weight_ratio: float, finetune: str, ft_epochs: int, ft_lr: float,
                r: float, alpha: float, unlearn_lr: float, unlearn_max_epochs: int, stop_acc: float, batch_size: int,
                no_augment: bool, include_linear: bool, sweep: str | None, plot: str | None, progress: bool,
                **kw: Any) -> None:
    """Data-dependent TSBD: clean unlearning → NWC zero-reinitialisation → activeness-aware fine-tuning.

    Needs a small clean subset: --data NAME samples --clean-ratio (default 5 %) of its TRAINING split
    (seeded by --seed). The test set is used only for the before/after table.
    """
    from otbr.defenses.tsbd import TSBD

    out = check_output(kw.get("output"), model, kw.get("force", False), required=sweep is None)
    ratios = parse_floats(sweep, "--sweep") if sweep is not None else None
    defense = TSBD(clean_ratio=kw.get("clean_ratio") or 0.05, neuron_ratio=neuron_ratio, weight_ratio=weight_ratio,
                   unlearn_lr=unlearn_lr, unlearn_max_epochs=unlearn_max_epochs, stop_acc=stop_acc, r=r,
                   alpha=alpha, ft_epochs=ft_epochs, ft_lr=ft_lr, batch_size=batch_size, finetune=finetune,
                   augment=not no_augment, include_linear=include_linear, seed=kw["seed"], progress=progress)
    subset = clean_subset(kw, 0.05, "TSBD")
    net, meta = load_model_from_options(model, kw)
    if tuple(subset.input_shape) != tuple(meta.input_shape):
        raise OtbrError(f"--data images are {tuple(subset.input_shape)}, the model expects {tuple(meta.input_shape)}")
    if kw.get("clean_count"):
        defense.clean_ratio = None  # the subset was given by count; data_used records its size
    sets = _eval_sets(meta, kw)
    if ratios is not None:
        _tsbd_sweep(defense, net, subset, sets, ratios, plot, kw, model)
        if out is None:
            return
    result = defense.run(net, subset)
    for note in result.info.get("notes", []):
        click.echo(f"note: {note}")
    finish(model, net, meta, result, kw, out, sets)


def _tsbd_sweep(defense, net, subset, sets, ratios, plot: str | None, kw: dict[str, Any], model: str) -> None:
    from otbr.evaluation import measure
    from otbr.metrics import der
    from otbr.report import ORACLE_NOTE, plot_sweep, write_json

    if sets is None:
        raise OtbrError("--sweep needs a test set to score each ratio (drop --no-eval or pass --eval-data)")
    base = measure(net, sets)

    def row(series: str, n: float, m) -> dict[str, Any]:
        r = measure(m, sets)
        return {"series": series, "neuron_ratio": n, "acc": 100 * r.acc,
                "asr": None if r.asr is None else 100 * r.asr, "ra": None if r.ra is None else 100 * r.ra,
                "der": None if r.asr is None or base.asr is None else 100 * der(base.acc, base.asr, r.acc, r.asr)}

    rows: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    for n, reinit, res in defense.sweep(net, subset, ratios):
        rows.append(row("stage1", n, reinit))
        if defense.finetune != "none":
            rows.append(row(defense.finetune, n, res.model))
        for note in res.info.get("notes", []) if n == ratios[0] else []:
            click.echo(f"note: {note}")
    click.echo(ORACLE_NOTE)
    click.echo(f"original: ACC {pct(base.acc)}  ASR {pct(base.asr)}  RA {pct(base.ra)}")
    text_rows = [{k: (f"{v:.2f}" if isinstance(v, float) else ("-" if v is None else str(v))) for k, v in r.items()}
                 for r in rows]
    click.echo(format_table(text_rows, ["series", "neuron_ratio", "acc", "asr", "ra", "der"]))
    click.echo(f"sweep: {time.perf_counter() - t0:.1f} s (one clean-unlearning run)")
    if plot:
        plot_sweep(rows, plot, x="neuron_ratio", title=f"TSBD neuron-ratio sweep: {Path(model).name}",
                   oracle=sets.poisoned is not None)
        click.echo(f"plot written to {plot}")
    if kw.get("report") and kw.get("output") is None:
        write_json(kw["report"], {"method": "tsbd-sweep", "oracle": True, "note": ORACLE_NOTE, "model": model,
                                  "config": defense.config(), "data_used": f"clean subset: {len(subset)} images",
                                  "original": base.as_dict(), "rows": rows})
        click.echo(f"report written to {kw['report']}")


COMMANDS: list = []
