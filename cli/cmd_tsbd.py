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
    batch_size_option,
    check_output,
    clean_subset,
    defend,
    defense_options,
    echo_sweep,
    finish,
    sweep_row,
)
from .common import (
    FINITE,
    AutoFraction,
    FiniteFloatRange,
    check_plot,
    load_model_from_options,
    parse_floats,
    refuse_moot,
)

log = logging.getLogger(__name__)


@defend.command("tsbd")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--neuron-ratio", default="auto", show_default=True, type=AutoFraction(),
              help="Fraction n of neurons selected by clean-unlearning NWC (global ranking), or auto: chosen from "
                   "--neuron-grid with the clean subset and synthetic inputs only.")
@click.option("--neuron-grid", default="0.05,0.1,0.15,0.2", show_default=True, help="Candidates for auto.")
@click.option("--suspect-rule", type=click.Choice(["scan", "recall"]), default=None,
              help="--neuron-ratio auto: how the suspected target is named. scan: the class a small patch reaches "
                   "most easily from the clean subset; recall: that class, unless the original misses one class's "
                   "clean images (recall below 0.4 × the other classes' median: the mark of a clean-label backdoor "
                   "such as SIG). Default: otbr.defenses.tsbd.SUSPECT_RULE.")
@click.option("--weight-ratio", default=0.7, show_default=True, type=FiniteFloatRange(0, 1),
              help="Fraction m of the selected neurons' weights zeroed (largest weight change).")
@click.option("--finetune", type=click.Choice(["activeness", "vanilla", "none"]), default="activeness",
              show_default=True, help="Stage 2: activeness-aware (the paper), plain SGD, or none (stage 1 only).")
@click.option("--ft-epochs", default=20, show_default=True, type=click.IntRange(1), help="Fine-tuning epochs.")
@click.option("--ft-lr", default=0.01, show_default=True, type=FINITE, help="Fine-tuning learning rate.")
@click.option("--r", "r", default=0.05, show_default=True, type=FiniteFloatRange(0), help="Perturbation radius r.")
@click.option("--alpha", default=0.7, show_default=True, type=FiniteFloatRange(0, 1),
              help="Weight α of the gradient at the perturbed point.")
@click.option("--unlearn-lr", default=1e-4, show_default=True, type=FINITE, help="Clean-unlearning learning rate.")
@click.option("--unlearn-max-epochs", default=100, show_default=True, type=click.IntRange(1),
              help="Epoch cap of clean unlearning.")
@click.option("--stop-acc", default=0.10, show_default=True, type=FiniteFloatRange(0, 1),
              help="Unlearning stops at the first epoch with subset accuracy ≤ this.")
@batch_size_option()
@click.option("--no-augment", is_flag=True, help="No random-crop augmentation during fine-tuning.")
@click.option("--include-linear", is_flag=True, help="Also score hidden Linear layers (never the classifier).")
@click.option("--sweep", help="Comma-separated neuron-ratio grid to evaluate (an ORACLE table: scored on poisoned "
                              "data; one unlearning run).")
@click.option("--plot", type=click.Path(dir_okay=False), help="With --sweep: PNG of ACC and ASR against n.")
@defense_options(clean=True)
def defend_tsbd(model: str, neuron_ratio: float | str, neuron_grid: str, suspect_rule: str | None,
                weight_ratio: float, finetune: str, ft_epochs: int, ft_lr: float,
                r: float, alpha: float, unlearn_lr: float, unlearn_max_epochs: int, stop_acc: float, batch_size: int,
                no_augment: bool, include_linear: bool, sweep: str | None, plot: str | None, progress: bool,
                **kw: Any) -> None:
    """Data-dependent TSBD: clean unlearning → NWC zero-reinitialisation → activeness-aware fine-tuning.

    Needs a small clean subset: --data NAME samples --clean-ratio (default 5 %) of its TRAINING split
    (seeded by --seed). The test set is used only for the before/after table.
    """
    from otbr.defenses.tsbd import TSBD

    no_ft = "with --finetune none" if finetune == "none" else None
    plain = no_ft or ("with --finetune vanilla" if finetune == "vanilla" else None)
    fixed = None if neuron_ratio == "auto" else "without --neuron-ratio auto"
    refuse_moot({"neuron_grid": fixed, "suspect_rule": fixed,
                 "ft_epochs": no_ft, "ft_lr": no_ft, "no_augment": no_ft, "r": plain, "alpha": plain})
    out = check_output(kw.get("output"), model, kw.get("force", False), required=sweep is None)
    check_plot(plot, kw.get("force", False), [model, kw.get("output"), kw.get("report")], needed=sweep is not None)
    ratios = parse_floats(sweep, "--sweep") if sweep is not None else None
    defense = TSBD(clean_ratio=kw.get("clean_ratio") or 0.05, neuron_ratio=neuron_ratio,
                   neuron_grid=parse_floats(neuron_grid, "--neuron-grid") or (), weight_ratio=weight_ratio,
                   unlearn_lr=unlearn_lr, unlearn_max_epochs=unlearn_max_epochs, stop_acc=stop_acc, r=r,
                   alpha=alpha, ft_epochs=ft_epochs, ft_lr=ft_lr, batch_size=batch_size, finetune=finetune,
                   augment=not no_augment, include_linear=include_linear, seed=kw["seed"], progress=progress,
                   **({} if suspect_rule is None else {"suspect_rule": suspect_rule}))
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

    if sets is None:
        raise OtbrError("--sweep needs a test set to score each ratio (drop --no-eval or pass --eval-data)")
    base = measure(net, sets)
    rows: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    for n, reinit, res in defense.sweep(net, subset, ratios):
        rows.append(sweep_row("stage1", "neuron_ratio", n, reinit, sets, base))
        if defense.finetune != "none":
            rows.append(sweep_row(defense.finetune, "neuron_ratio", n, res.model, sets, base))
        for note in res.info.get("notes", []) if n == ratios[0] else []:
            click.echo(f"note: {note}")
    echo_sweep(rows, "neuron_ratio", base, time.perf_counter() - t0, plot=plot,
               plot_title=f"TSBD neuron-ratio sweep: {Path(model).name}", sets=sets, kw=kw, method="tsbd-sweep",
               model=model, config=defense.config(), extra={"data_used": f"clean subset: {len(subset)} images"},
               timing_note=" (one clean-unlearning run)")


COMMANDS: list = []
