"""``otbr defend ulrl|ft|fp|clp|anp``: the ULRL defense and the comparison baselines.

Each command builds the library defense from its options, gives data-dependent
ones the seeded clean subset of ``--data``'s training split (refusing, with one
line and exit status 2, when ``--data`` is missing), and shares the output,
evaluation and report handling of ``otbr defend otbr``.

Example:
    $ otbr defend ulrl bd.safetensors --data fashion-mnist -o ulrl.safetensors
    $ otbr defend clp bd.safetensors -o clp.safetensors
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from otbr.errors import OtbrError

from .cmd_defend import _eval_sets, batch_size_option, check_output, clean_subset, defend, defense_options, finish
from .common import FiniteFloatRange, load_model_from_options


def _run(method: str, model: str, hyper: dict[str, Any], progress: bool, kw: dict[str, Any]) -> None:
    from otbr.defenses import create_defense, list_defenses

    cls = list_defenses()[method]
    if cls.needs == "clean" and not kw.get("clean_data"):
        raise OtbrError(f"{method} needs clean data: pass --data NAME (its training split is subsampled)")
    out = check_output(kw.get("output"), model, kw.get("force", False))
    defense = create_defense(method, **hyper, seed=kw["seed"], progress=progress) if method != "clp" else \
        create_defense(method, **hyper, progress=progress)
    net, meta = load_model_from_options(model, kw)
    data = clean_subset(kw, getattr(cls, "default_clean_ratio", 0.05), method) if cls.needs == "clean" else None
    sets = _eval_sets(meta, kw)
    finish(model, net, meta, defense.run(net, data), kw, out, sets)


def _sgd_options(epochs: int, lr: float) -> Callable[[Callable], Callable]:
    def deco(fn: Callable) -> Callable:
        for opt in reversed([
            click.option("--epochs", default=epochs, show_default=True, type=click.IntRange(0), help="Epochs."),
            click.option("--lr", default=lr, show_default=True, type=FiniteFloatRange(0, min_open=True)),
            batch_size_option(),
        ]):
            fn = opt(fn)
        return fn

    return deco


@defend.command("ulrl")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--unlearn-epochs", default=20, show_default=True, type=click.IntRange(1), help="Unlearning cap.")
@click.option("--unlearn-lr", default=0.01, show_default=True, type=FiniteFloatRange(0, min_open=True))
@click.option("--stop-acc", default=0.2, show_default=True, type=FiniteFloatRange(0, 1),
              help="Stop unlearning once an epoch's running accuracy is at most this.")
@click.option("--z-threshold", default=3.5, show_default=True, type=FiniteFloatRange(0))
@click.option("--max-rows", default=2, show_default=True, type=click.IntRange(1), help="Flagged rows kept.")
@click.option("--relearn-epochs", default=20, show_default=True, type=click.IntRange(0))
@click.option("--relearn-lr", default=0.005, show_default=True, type=FiniteFloatRange(0, min_open=True))
@click.option("--alpha", default=0.7, show_default=True, type=FiniteFloatRange(0), help="Cosine penalty weight.")
@batch_size_option()
@defense_options(clean=True)
def defend_ulrl(model: str, unlearn_epochs: int, unlearn_lr: float, stop_acc: float, z_threshold: float,
                max_rows: int, relearn_epochs: int, relearn_lr: float, alpha: float, batch_size: int, progress: bool,
                **kw: Any) -> None:
    """ULRL (default 1 % clean data): unlearning flags classifier rows, which are re-drawn and relearned."""
    _run("ulrl", model, {"unlearn_epochs": unlearn_epochs, "unlearn_lr": unlearn_lr, "stop_acc": stop_acc,
                         "z_threshold": z_threshold, "max_rows": max_rows, "relearn_epochs": relearn_epochs,
                         "relearn_lr": relearn_lr, "alpha": alpha, "batch_size": batch_size}, progress, kw)


@defend.command("ft")
@click.argument("model", type=click.Path(dir_okay=False))
@_sgd_options(10, 0.01)
@defense_options(clean=True)
def defend_ft(model: str, epochs: int, lr: float, batch_size: int, progress: bool, **kw: Any) -> None:
    """Plain fine-tuning (default 5 % clean data, SGD + cosine, 10 epochs)."""
    _run("ft", model, {"epochs": max(1, epochs), "lr": lr, "batch_size": batch_size}, progress, kw)


@defend.command("fp")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--max-acc-drop", default=0.10, show_default=True, type=FiniteFloatRange(0, 1),
              help="Stop pruning before clean-subset accuracy drops by more than this.")
@click.option("--max-ratio", default=0.9, show_default=True, type=FiniteFloatRange(0, 1, min_open=True))
@_sgd_options(10, 0.01)
@defense_options(clean=True)
def defend_fp(model: str, max_acc_drop: float, max_ratio: float, epochs: int, lr: float, batch_size: int,
              progress: bool, **kw: Any) -> None:
    """Fine-pruning (default 5 % clean data): prune the least active feature channels, then fine-tune."""
    _run("fp", model, {"max_acc_drop": max_acc_drop, "max_ratio": max_ratio, "epochs": epochs, "lr": lr,
                       "batch_size": batch_size}, progress, kw)


@defend.command("clp")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--u", "u", default=3.0, show_default=True, type=FiniteFloatRange(0),
              help="Prune channels with UCLC above mean + u·std of their layer.")
@defense_options()
def defend_clp(model: str, u: float, progress: bool, **kw: Any) -> None:
    """Data-free CLP: prune channels with an outlying channel Lipschitz bound (BN pairing from the graph)."""
    _run("clp", model, {"u": u}, progress, kw)


@defend.command("anp")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--eps", default=0.4, show_default=True, type=FiniteFloatRange(0, 1), help="Perturbation budget.")
@click.option("--threshold", default=0.2, show_default=True, type=FiniteFloatRange(0, 1),
              help="Pruning threshold (the largest one the accuracy guard tries).")
@click.option("--acc-ratio", default=0.9, show_default=True, type=FiniteFloatRange(0, 1),
              help="Lower the threshold until the pruned model keeps this fraction of its clean-subset accuracy "
                   "(0: the plain published threshold).")
@click.option("--iterations", default=2000, show_default=True, type=click.IntRange(1), help="Mask-update batches.")
@click.option("--alpha", default=0.2, show_default=True, type=FiniteFloatRange(0, 1), help="Natural-loss weight.")
@batch_size_option()
@defense_options(clean=True)
def defend_anp(model: str, eps: float, threshold: float, acc_ratio: float, iterations: int, alpha: float,
               batch_size: int, progress: bool, **kw: Any) -> None:
    """ANP (default 1 % clean data): learn BN-neuron masks under adversarial perturbation, prune low masks."""
    _run("anp", model, {"eps": eps, "threshold": threshold, "acc_ratio": acc_ratio, "iterations": iterations,
                        "alpha": alpha, "batch_size": batch_size}, progress, kw)


COMMANDS: list = []
