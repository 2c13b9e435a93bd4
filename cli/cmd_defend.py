"""``otbr defend METHOD``, ``otbr nwc`` and ``otbr fuse``.

Each defense command loads the model, runs the library's defense, writes the
defended model (atomically, only after success), and — when the attack is
known from the metadata or ``--poisoned`` — evaluates before and after.
Evaluation data is never given to a data-free defense.
"""

from __future__ import annotations

import datetime as _dt
import functools
import logging
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import click

from otbr.errors import OtbrError

from .common import (
    FINITE,
    SEED,
    AutoFraction,
    FiniteFloatRange,
    check_new_output,
    check_plot,
    check_writable,
    data_files,
    format_table,
    load_model_from_options,
    model_options,
    overwrites,
    parse_floats,
    pct,
    refuse_moot,
    same_file,
)

log = logging.getLogger(__name__)


# -- shared pieces ---------------------------------------------------------------------------------------------
_INPUT_KEYS = ("model", "original", "pruned", "poisoned", "scores", "clean_model")


def _check_report_early(fn: Callable) -> Callable:
    """Before any work: --report must be writable, differ from every input and from -o, and exist only with --force."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        report = kwargs.get("report")
        if report:
            inputs = [kwargs.get(k) for k in _INPUT_KEYS] + data_files(kwargs.get("clean_data"),
                                                                        kwargs.get("eval_data"), kwargs.get("data"))
            if kwargs.get("output") and (Path(report).resolve() == Path(kwargs["output"]).resolve()):
                raise OtbrError("--report and -o name the same file; choose another --report")
            check_new_output(report, kwargs.get("force", False), inputs, what="--report")
        return fn(*args, **kwargs)

    return wrapper


def output_options(fn: Callable) -> Callable:
    """-o/--force/--report and the evaluation options every defense command shares."""
    fn = _check_report_early(fn)
    options = [
        click.option("-o", "--output", type=click.Path(dir_okay=False), help="Defended model (.safetensors)."),
        click.option("--force", is_flag=True, help="Overwrite an existing output file."),
        click.option("--report", type=click.Path(dir_okay=False), help="Write a JSON report of the run here."),
        click.option("--eval-data", "eval_data",
                     help="Clean test set for the before/after table (default: the model's dataset)."),
        click.option("--data-root", type=click.Path(file_okay=False), help="Folder holding dataset files."),
        click.option("--poisoned", type=click.Path(dir_okay=False),
                     help="Poisoned test set (.npz) for ASR/RA (default: rebuilt from the model's attack metadata)."),
        click.option("--no-eval", is_flag=True, help="Skip the before/after evaluation."),
        click.option("--eval-limit", type=click.IntRange(1), help="Evaluate on the first N test images only."),
        click.option("--seed", default=0, show_default=True, type=SEED, help="Seed of the defense."),
    ]
    for opt in reversed(options):
        fn = opt(fn)
    return fn


def clean_data_options(fn: Callable) -> Callable:
    """--data/--clean-ratio/--clean-count/--balanced for defenses that need a clean subset."""
    options = [
        click.option("--data", "clean_data", help="Dataset whose TRAINING split provides the clean subset."),
        click.option("--clean-ratio", type=FiniteFloatRange(0, 1, min_open=True),
                     help="Fraction of the training split to use (default: the defense's own, e.g. 0.05)."),
        click.option("--clean-count", type=click.IntRange(1), help="Number of clean images instead of a ratio."),
        click.option("--balanced", is_flag=True, help="Sample the subset class-balanced."),
    ]
    for opt in reversed(options):
        fn = opt(fn)
    return fn


def clean_subset(kw: dict[str, Any], default_ratio: float, method: str):
    """The seeded clean subset of the training split named by --data (one-line error without it)."""
    from otbr.data import load_dataset, sample_subset

    name = kw.get("clean_data")
    if not name:
        raise OtbrError(f"{method} needs clean data: pass --data NAME (its training split is subsampled)")
    train = load_dataset(name, "train", root=kw.get("data_root"))
    count = kw.get("clean_count")
    ratio = None if count else (kw.get("clean_ratio") or default_ratio)
    subset = sample_subset(train, ratio=ratio, count=count, seed=kw.get("seed", 0), balanced=kw.get("balanced", False))
    log.info("clean subset: %d images of %s train (%s)", len(subset), name,
             f"ratio {ratio}" if ratio else f"count {count}")
    return subset


def check_output(output: str | None, model: str, force: bool, required: bool = True,
                 others: Iterable[str | Path | None] = ()) -> Path | None:
    """Validate -o before any work is done (suffix, not the input model nor any of ``others``, writable folder, no
    silent overwrite)."""
    if output is None:
        if required:
            raise OtbrError("missing -o/--output FILE.safetensors")
        return None
    out = Path(output)
    if out.suffix != ".safetensors":
        raise OtbrError(f"output must be a .safetensors file, got {out.name}")
    if overwrites(out, model):
        raise OtbrError("output would overwrite the input model; choose another -o")
    for src in others:
        if overwrites(out, src):
            raise OtbrError(f"output would overwrite the input {src}; choose another -o")
    check_writable(out)
    if out.exists() and not force:
        raise OtbrError(f"{out} exists; pass --force to overwrite it")
    return out


def _eval_sets(meta, kw: dict[str, Any]):
    from otbr.evaluation import evaluation_sets

    if kw.get("no_eval"):
        return None
    if not (kw.get("eval_data") or meta.dataset):
        log.info("no dataset known for this model: skipping evaluation (pass --eval-data)")
        return None
    return evaluation_sets(meta, data=kw.get("eval_data"), poisoned=kw.get("poisoned"),
                           data_root=kw.get("data_root"), limit=kw.get("eval_limit"))


def finish(model_path: str, net, meta, result, kw: dict[str, Any], out: Path | None, sets) -> dict[str, Any]:
    """Evaluate, save, print the table and write the report of one defense run."""
    from otbr.device import model_device
    from otbr.evaluation import compare_row, measure
    from otbr.models import file_sha256, save_model
    from otbr.models.io import weights_sha256
    from otbr.report import environment, write_json

    payload: dict[str, Any] = {
        "method": result.method,
        "seed": result.config.get("seed", kw.get("seed")),
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "argv": sys.argv[1:],
        "config": result.config,
        "data_used": result.data_used,
        "timings_s": result.timings,
        "info": {k: v for k, v in result.info.items() if k != "pruned"},
        "pruned": result.info.get("pruned"),
        "input": {"path": model_path, "sha256": file_sha256(model_path)},
        "environment": {**environment(model_device(result.model)), "packages": _package_versions()},
        "oracle": False,
    }
    if sets is not None:
        before, after = measure(net, sets), measure(result.model, sets)
        payload["evaluation"] = {"clean": sets.clean_name, "poisoned": sets.poisoned_name,
                                 "n_clean": len(sets.clean[1]), **compare_row(before, after)}
        rows = [{"model": "before", "ACC": pct(before.acc), "ASR": pct(before.asr), "RA": pct(before.ra), "DER": ""},
                {"model": "after", "ACC": pct(after.acc), "ASR": pct(after.asr), "RA": pct(after.ra),
                 "DER": pct(payload["evaluation"].get("der"))}]
        click.echo(format_table(rows, ["model", "ACC", "ASR", "RA", "DER"]))
        if sets.poisoned is None:
            click.echo("(attack unknown: pass --poisoned FILE.npz for ASR, RA and DER)")
    if out is not None:
        step = {"step": "defend", "method": result.method, "config": result.config, "data_used": result.data_used,
                "input_sha256": payload["input"]["sha256"]}
        save_model(result.model, out, meta.derived(step, seed=result.config.get("seed")))
        payload["output"] = {"path": str(out), "sha256": file_sha256(out),
                             "weights_sha256": weights_sha256(result.model)}
        click.echo(f"defended model written to {out}")
    if "auto" in result.info:
        auto = result.info["auto"]
        est = {c["value"]: c["estimated_der"] for c in auto["candidates"]}
        margin, lean = auto.get("margin"), auto.get("lean") or {}
        moved = (f", the most pruning within {100 * lean['within']:g} points of the best estimate "
                 f"({lean['best_estimate']:g}: {100 * est[lean['best_estimate']]:.2f})") if lean.get("moved") else ""
        click.echo(f"automatic choice: {auto['chosen']:g} of {list(est)} "
                   f"(estimated DER {100 * est[auto['chosen']]:.2f}{moved}"
                   + ("" if margin is None or moved else f", {100 * margin:.2f} points ahead of the next candidate")
                   + f", suspected target class {auto['suspected_target']}; no poisoned data used — candidates in "
                   "the report)")
        warp = auto.get("warp_scan") or {}
        if warp.get("override") is not None and warp["override"] != warp.get("patch_suspect"):
            click.echo(f"suspect from the warp scan: class {warp['override']} is reached by a {warp['pixels']:g}-pixel "
                       f"warp from nearly every source class (median {warp['median'][warp['override']]:.2f}); the "
                       f"patch scan named class {warp['patch_suspect']}")
        recall = auto.get("recall_scan") or {}
        if recall.get("named") is not None and recall["named"] != recall.get("scan_suspect"):
            share = 100 * recall["recall"][recall["named"]]
            click.echo(f"suspect from the clean recall: the original gets {share:.0f} % of class {recall['named']}'s "
                       f"clean images right, below {recall['floor']:g} × the other classes' median (a clean-label "
                       f"backdoor's mark); the patch scan named class {recall['scan_suspect']}")
        rep = result.info.get("repair") or {}
        cost = clean_cost_line(auto, replaced_by=rep.get("guarded") if rep.get("returned") == "repaired" else None)
        if cost:
            click.echo(cost)
        if "repair_gamma" in result.info:
            click.echo(f"repair: started from the pruning at γ {result.info['repair_gamma']:g}, the automatic "
                       f"{auto['chosen']:g} capped (--repair-gamma-cap; 1 starts from the automatic γ itself)")
        if auto.get("repeats"):
            alone = [r["chosen"] for r in auto["repeats"]]
            click.echo(f"averaged over {len(alone)} synthetic sets; each set alone would choose "
                       f"{', '.join(f'{v:g}' for v in alone)} ({sum(v == auto['chosen'] for v in alone)} of "
                       f"{len(alone)} agree with the averaged choice)")
        guard = auto.get("collapse_guard") or {}
        if guard.get("all_out"):
            click.echo(f"warning: every candidate's model disagrees with the original on more than "
                       f"{100 * guard['limit']:g} % of the inverted inputs; the smallest, {auto['chosen']:g}, was "
                       "taken and may be broken too — check it with a little clean data if you can")
        elif guard.get("left_out"):
            click.echo(f"collapse guard: {', '.join(f'{v:g}' for v in guard['left_out'])} left out (their models "
                       f"disagree with the original on more than {100 * guard['limit']:g} % of the inverted inputs)")
        if auto.get("probe", {}).get("found") is False:
            click.echo(f"warning: {auto['probe']['note']}")
        elif auto.get("suspect_check", {}).get("weak"):
            click.echo(f"warning: {auto['suspect_check']['note']}")
        removal = auto.get("removal")
        if removal:
            click.echo(f"{'removal evidence' if removal['likely_removed'] else 'warning'}: {removal['note']}")
    click.echo(f"{result.method}: {result.timings.get('total', 0.0):.1f} s; data used by the defense: "
               f"{result.data_used}")
    if kw.get("report"):
        write_json(kw["report"], payload)
        click.echo(f"report written to {kw['report']}")
    return payload


def clean_cost_line(auto: dict[str, Any], replaced_by: Iterable[int] | None = None) -> str | None:
    """For a choice whose clean term is estimated with no data (OTBR), the estimated loss of clean accuracy of the
    chosen candidate and how far such estimates were from the truth on the zoo models; ``None`` otherwise (TSBD
    measures its clean term on its subset). ``replaced_by``: the classes a kept repair guarded — the estimate is
    then the fused candidate's, not the returned model's, and the line says so.

    Example:
        >>> auto = {"clean_term": "synthetic disagreement × 0.7", "chosen": 0.1,
        ...         "candidates": [{"value": 0.1, "clean_drop": 0.123}]}
        >>> clean_cost_line(auto)[:62]
        'estimated clean cost: about 12 % of the original accuracy lost'
        >>> clean_cost_line(auto, replaced_by=[0])[:93]
        'estimated clean cost of the fused candidate, which the repair replaced: about 12 % of the ori'
    """
    from otbr.selection import CLEAN_ESTIMATE_ERROR

    if not str(auto.get("clean_term", "")).startswith("synthetic"):
        return None
    chosen = next(c for c in auto["candidates"] if c["value"] == auto["chosen"])
    subject = "estimated clean cost" if replaced_by is None else \
        "estimated clean cost of the fused candidate, which the repair replaced"
    line = (f"{subject}: about {100 * max(chosen['clean_drop'], 0.0):.0f} % of the original accuracy lost "
            f"(from the inverted inputs; on the zoo models the real loss was within "
            f"{CLEAN_ESTIMATE_ERROR['median']:g} points of such estimates for half the candidates, within "
            f"{CLEAN_ESTIMATE_ERROR['p90']:g} for nine in ten)")
    if replaced_by is not None:
        line += (f"; the repaired model's own cost is not estimated, and it includes the guarded class(es) "
                 f"{list(replaced_by)}")
    return line


def _package_versions() -> dict[str, str | None]:
    """Installed versions of the packages that shape a defended model."""
    from importlib import metadata

    versions: dict[str, str | None] = {}
    for name in ("numpy", "pot", "safetensors", "scipy", "click"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _progress(fn: Callable) -> Callable:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        ctx = click.get_current_context()
        kwargs["progress"] = bool((ctx.find_root().obj or {}).get("progress", False))
        return fn(*args, **kwargs)

    return wrapper


def _refuse_moot_shared(fn: Callable) -> Callable:
    """Refuse the shared options the others make moot (evaluation options with --no-eval, a clean ratio beside a
    clean count) before the command starts."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        no_eval = "with --no-eval" if kwargs.get("no_eval") else None
        refuse_moot({"eval_data": no_eval, "poisoned": no_eval, "eval_limit": no_eval,
                     **({"clean_ratio": "beside --clean-count"} if kwargs.get("clean_count") else {})})
        return fn(*args, **kwargs)

    return wrapper


def defense_options(clean: bool = False) -> Callable[[Callable], Callable]:
    """The options every defense command shares: the clean-subset options (when ``clean``), the output
    and evaluation options, the model options, and the global ``--progress`` flag; the shared options that the
    others make moot are refused."""
    def deco(fn: Callable) -> Callable:
        fn = _refuse_moot_shared(_progress(fn))
        fn = model_options(fn)
        fn = output_options(fn)
        return clean_data_options(fn) if clean else fn

    return deco


def batch_size_option(default: int = 128, help: str | None = None) -> Callable[[Callable], Callable]:
    """``--batch-size`` (a positive integer)."""
    return click.option("--batch-size", default=default, show_default=True, type=click.IntRange(1), help=help)


def sweep_row(series: str, key: str, value: float, model, sets, base) -> dict[str, Any]:
    """One row of a sweep table: ACC, ASR, RA and DER (in %) of ``model`` against the original ``base``."""
    from otbr.evaluation import measure
    from otbr.metrics import der

    r = measure(model, sets)
    return {"series": series, key: value, "acc": 100 * r.acc,
            "asr": None if r.asr is None else 100 * r.asr, "ra": None if r.ra is None else 100 * r.ra,
            "der": None if r.asr is None or base.asr is None else 100 * der(base.acc, base.asr, r.acc, r.asr)}


def echo_sweep(rows: list[dict[str, Any]], key: str, base, seconds: float, *, plot: str | None, plot_title: str,
               sets, kw: dict[str, Any], method: str, model: str, config: dict[str, Any],
               extra: dict[str, Any] | None = None, timing_note: str = "") -> None:
    """Print a sweep table (an ORACLE), then write its plot and (without ``-o``) its JSON report.

    The report holds ``method``, the ORACLE note, ``model``, ``config``, the ``extra`` entries, the
    original model's metrics and the rows.
    """
    from otbr.report import ORACLE_NOTE, plot_sweep, write_json

    click.echo(ORACLE_NOTE)
    click.echo(f"original: ACC {pct(base.acc)}  ASR {pct(base.asr)}  RA {pct(base.ra)}")
    text_rows = [{k: (f"{v:.2f}" if isinstance(v, float) else ("-" if v is None else str(v))) for k, v in r.items()}
                 for r in rows]
    click.echo(format_table(text_rows, ["series", key, "acc", "asr", "ra", "der"]))
    click.echo(f"sweep: {seconds:.1f} s{timing_note}")
    if plot:
        plot_sweep(rows, plot, x=key, title=plot_title, oracle=sets.poisoned is not None)
        click.echo(f"plot written to {plot}")
    if kw.get("report") and kw.get("output") is None:
        write_json(kw["report"], {"method": method, "oracle": True, "note": ORACLE_NOTE, "model": model,
                                  "config": config, **(extra or {}), "original": base.as_dict(), "rows": rows})
        click.echo(f"report written to {kw['report']}")


# -- otbr defend ----------------------------------------------------------------------------------------------
@click.group("defend")
def defend() -> None:
    """Run a defense on a model file and write the defended model."""


@defend.command("otbr")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--gamma", default="auto", show_default=True, type=AutoFraction(),
              help="Fraction of neurons pruned (global NWC ranking), or auto: chosen from --gamma-grid with no data "
                   "(estimated DER from BatchNorm-inverted synthetic inputs; every candidate goes in the report).")
@click.option("--gamma-grid", default="0.02,0.05,0.1,0.15,0.2", show_default=True,
              help="Candidates for --gamma auto.")
@click.option("--clean-scale", default=0.7, show_default=True, type=FiniteFloatRange(0, 1, min_open=True),
              help="--gamma auto: factor from the loss of agreement on the inverted inputs to the estimated loss "
                   "of clean accuracy (calibrated on the development zoos' clean accuracy; 1 takes it as is).")
@click.option("--lean", default=None, type=FiniteFloatRange(0, 1),
              help="--gamma auto: take the largest γ whose estimated DER is within this of the best (under-pruning "
                   "leaves the backdoor; 0: the best estimate itself). Default: 0.065, and 0 with --repair.")
@click.option("--selection-repeats", default=3, show_default=True, type=click.IntRange(1),
              help="--gamma auto: average the estimates over this many synthetic sets (seeds); the report gives "
                   "each set's lone choice and how many agree. Costs that many times the selection's time.")
@click.option("--suspect-rule", type=click.Choice(["scan", "stratified", "warp"]), default=None,
              help="--gamma auto: how the suspected target is named. scan: the class one small patch reaches most "
                   "often from the pooled other-class inversions; stratified: the class it reaches from the most "
                   "source classes (median over sources); warp: stratified, unless one class alone is reached by a "
                   "1-pixel universal warp from nearly every source class. Default: warp.")
@click.option("--collapse-limit", type=FiniteFloatRange(0, 1, min_open=True), default=None,
              help="--gamma auto: the collapse guard; γ whose fused model disagrees with the original on more than "
                   "this share of the inverted inputs are not chosen (unless all do: then the smallest). 1 turns "
                   "the guard off. Default: 0.7.")
@click.option("--lam", "lam", default=0.5, show_default=True, type=FiniteFloatRange(0, 1),
              help="Fusion weight λ of the aligned pruned model.")
@click.option("--variant", type=click.Choice(["default", "paper", "prune"]), default="default", show_default=True,
              help="default: improved fusion; paper: the published procedure; prune: pruning only.")
@click.option("--steps", default=20, show_default=True, type=click.IntRange(1), help="Random-unlearning steps.")
@batch_size_option(256, help="Noise batch size.")
@click.option("--lr", default=1e-4, show_default=True, type=FINITE, help="Unlearning learning rate.")
@click.option("--solver", type=click.Choice(["emd", "sinkhorn"]), default="emd", show_default=True)
@click.option("--repair", "repair_steps", default=0, show_default=True, type=click.IntRange(0),
              help="N > 0: replace the fusion by N steps of data-free repair of the pruned model (distillation "
                   "of the original on BatchNorm-inverted inputs, pruned neurons held at zero; see otbr repair). "
                   "When the repair's backdoor check rejects it, the fused model is written, as without --repair.")
@click.option("--repair-gamma-cap", type=FiniteFloatRange(0, 1, min_open=True), default=None,
              help="--repair with --gamma auto: the repair starts from the pruning at min(automatic γ, this); the "
                   "automatic choice is still reported. 1: the automatic γ itself. Default: 0.05.")
@click.option("--sweep", help="Comma-separated γ grid to evaluate (an ORACLE table: scored on poisoned data).")
@click.option("--plot", type=click.Path(dir_okay=False), help="With --sweep: PNG of ACC and ASR against γ.")
@defense_options()
def defend_otbr(model: str, gamma: float | str, gamma_grid: str, clean_scale: float, lean: float | None,
                selection_repeats: int, suspect_rule: str | None, collapse_limit: float | None, lam: float,
                variant: str, steps: int, batch_size: int, lr: float, solver: str,
                repair_steps: int, repair_gamma_cap: float | None, sweep: str | None, plot: str | None,
                progress: bool, **kw: Any) -> None:
    """Data-free OTBR: random-noise unlearning → NWC pruning → optimal-transport fusion.

    Needs only the model file. The defense reads no data; the test set is used only for the
    before/after table (skip it with --no-eval).
    """
    from otbr.defenses import create_defense

    fixed = None if gamma == "auto" else "without --gamma auto"
    no_fusion = "with --variant prune (no fusion)" if variant == "prune" else None
    refuse_moot({"gamma_grid": fixed, "clean_scale": fixed, "lean": fixed, "selection_repeats": fixed,
                 "suspect_rule": fixed, "collapse_limit": fixed, "lam": no_fusion, "solver": no_fusion,
                 "repair_gamma_cap": fixed or (None if repair_steps else "without --repair")})
    out = check_output(kw.get("output"), model, kw.get("force", False), required=sweep is None)
    check_plot(plot, kw.get("force", False), [model, kw.get("output"), kw.get("report")], needed=sweep is not None)
    net, meta = load_model_from_options(model, kw)
    defense = create_defense("otbr", gamma=gamma, gamma_grid=parse_floats(gamma_grid, "--gamma-grid") or (),
                             clean_scale=clean_scale, lean=lean, selection_repeats=selection_repeats, lam=lam,
                             **({} if suspect_rule is None else {"suspect_rule": suspect_rule}),
                             **({} if collapse_limit is None else {"collapse_limit": collapse_limit}),
                             **({} if repair_gamma_cap is None else {"repair_gamma_cap": repair_gamma_cap}),
                             variant=variant, steps=steps,
                             batch_size=batch_size, repair_steps=repair_steps, lr=lr, solver=solver,
                             input_shape=meta.input_shape, num_classes=meta.num_classes, seed=kw["seed"],
                             progress=progress)
    sets = _eval_sets(meta, kw)
    if sweep is not None:
        _otbr_sweep(defense, net, sets, parse_floats(sweep, "--sweep") or (), plot, kw, model)
        if out is None:
            return
    result = defense.run(net)
    finish(model, net, meta, result, kw, out, sets)


def _otbr_sweep(defense, net, sets, gammas, plot: str | None, kw: dict[str, Any], model: str) -> None:
    from otbr.evaluation import measure

    if sets is None:
        raise OtbrError("--sweep needs a test set to score each γ (drop --no-eval or pass --eval-data)")
    base = measure(net, sets)
    rows: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    for g, pruned, fused in defense.sweep(net, gammas):
        for series, m in (("prune", pruned), (defense.variant, fused)):
            if series == "prune" and defense.variant == "prune" and rows and rows[-1]["gamma"] == g:
                continue
            rows.append(sweep_row(series, "gamma", g, m, sets, base))
    echo_sweep(rows, "gamma", base, time.perf_counter() - t0, plot=plot,
               plot_title=f"OTBR γ sweep: {Path(model).name}", sets=sets, kw=kw, method="otbr-sweep", model=model,
               config=defense.config())


# -- otbr nwc ---------------------------------------------------------------------------------------------------
@click.command("nwc")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--mode", type=click.Choice(["random", "clean"]), default="random", show_default=True,
              help="random: noise (data-free); clean: a clean subset of --data.")
@click.option("--steps", default=20, show_default=True, type=click.IntRange(1), help="Random mode: noise batches.")
@click.option("--data", help="Clean mode: dataset whose training split provides the subset.")
@click.option("--data-root", type=click.Path(file_okay=False))
@click.option("--clean-ratio", default=0.05, show_default=True, type=FiniteFloatRange(0, 1, min_open=True))
@click.option("--include-linear", is_flag=True, help="Also score hidden Linear layers.")
@click.option("--seed", default=0, show_default=True, type=SEED)
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Scores (.csv).")
@click.option("--force", is_flag=True, help="Overwrite an existing output file.")
@click.option("--plot", type=click.Path(dir_okay=False), help="Histogram of the scores (.png).")
@model_options
@_progress
def nwc_cmd(model: str, mode: str, steps: int, data: str | None, data_root: str | None, clean_ratio: float,
            include_linear: bool, seed: int, output: str, force: bool, plot: str | None, progress: bool,
            **kw: Any) -> None:
    """Score every considered neuron by its weight change under unlearning (NWC) and save CSV (+ PNG)."""
    from otbr.atomic import atomic_path
    from otbr.nwc import nwc_scores
    from otbr.report import plot_histogram

    clean = "with --mode random (no data)" if mode == "random" else None
    refuse_moot({"data": clean, "data_root": clean, "clean_ratio": clean,
                 "steps": "with --mode clean (it unlearns the subset)" if mode == "clean" else None})
    if not output.endswith(".csv"):
        raise OtbrError(f"scores are written as .csv, got {output}")
    check_new_output(output, force, [model])
    check_plot(plot, force, [model, output])
    net, meta = load_model_from_options(model, kw)
    if mode == "random":
        scores = nwc_scores(net, "random", include_linear=include_linear, steps=steps,
                            input_shape=meta.input_shape, num_classes=meta.num_classes, seed=seed, progress=progress)
    else:
        from otbr.data import load_dataset, make_loader, sample_subset

        if not data:
            raise OtbrError("--mode clean needs --data NAME")
        subset = sample_subset(load_dataset(data, "train", root=data_root), ratio=clean_ratio, seed=seed)
        scores = nwc_scores(net, "clean", include_linear=include_linear, seed=seed, progress=progress,
                            loader=make_loader(subset, batch_size=128, shuffle=True, seed=seed))
    with atomic_path(output) as tmp:
        scores.to_csv(tmp)
    flat = scores.flat()
    click.echo(f"{scores.total} neurons in {len(scores.layers)} layers scored ({mode} unlearning); "
               f"max NWC {float(flat.values.max()):.6g} at {flat.neuron(int(flat.values.argmax()))}")
    click.echo(f"scores written to {output}")
    if plot:
        plot_histogram(scores.layers, plot, title=f"{mode}-unlearning NWC: {Path(model).name}")
        click.echo(f"histogram written to {plot}")


# -- otbr fuse --------------------------------------------------------------------------------------------------
@click.command("fuse")
@click.argument("pruned", type=click.Path(dir_okay=False))
@click.argument("original", type=click.Path(dir_okay=False))
@click.option("--scores", type=click.Path(dir_okay=False),
              help="NWC scores (.csv from `otbr nwc`); default: computed by random unlearning of ORIGINAL.")
@click.option("--lam", "lam", default=0.5, show_default=True, type=FiniteFloatRange(0, 1))
@click.option("--variant", type=click.Choice(["default", "paper"]), default="default", show_default=True)
@click.option("--solver", type=click.Choice(["emd", "sinkhorn"]), default="emd", show_default=True)
@defense_options()
def fuse_cmd(pruned: str, original: str, scores: str | None, lam: float, variant: str, solver: str, progress: bool,
             **kw: Any) -> None:
    """Fuse any PRUNED model (OTBR, CLP, fine-pruning …) back with its ORIGINAL by OT alignment.

    Pruned neurons are the rows that are all zero in PRUNED but not in ORIGINAL.
    """
    from otbr.defenses.base import DefenseResult
    from otbr.fusion import fuse
    from otbr.nwc import NWCScores, nwc_scores

    out, pruned_net, orig_net, meta = pruned_and_original(pruned, original, kw)
    t0 = time.perf_counter()
    if scores:
        sc = NWCScores.from_csv(scores)
    else:
        sc = nwc_scores(orig_net, "random", input_shape=meta.input_shape, num_classes=meta.num_classes,
                        seed=kw["seed"], progress=progress)
        sc.unlearn = None
    t1 = time.perf_counter()
    fr = fuse(pruned_net, orig_net, sc, lam=lam, variant=variant, solver=solver)
    t2 = time.perf_counter()
    if not any(isinstance(v, dict) and v.get("pruned") for v in fr.info.values()):
        raise OtbrError(f"{pruned} has no pruned neurons against {original} (no weight row that is zero there and "
                        "not in ORIGINAL): nothing to fuse; pass the pruned model first, then its original")
    result = DefenseResult(model=fr.model, method="fuse",
                           config={"lam": lam, "variant": variant, "solver": solver, "seed": kw["seed"],
                                   "scores": scores or "random unlearning", "pruned_model": pruned},
                           timings={"score": t1 - t0, "fuse": t2 - t1, "total": t2 - t0},
                           info={"fusion": fr.info}, data_used="none")
    finish(original, orig_net, meta, result, kw, out, _eval_sets(meta, kw))


def pruned_and_original(pruned: str, original: str, kw: dict[str, Any]):
    """``fuse``/``repair``: check -o (neither input may be overwritten), then load PRUNED and ORIGINAL with the
    :func:`model_options` in ``kw`` (which it pops); PRUNED must be another file holding a pruned copy of ORIGINAL
    (the same parameter names and shapes). Returns ``(out, pruned_net, orig_net, meta of ORIGINAL)``."""
    from otbr.models.io import state_mismatch

    out = check_output(kw.get("output"), original, kw.get("force", False), others=[pruned])
    if same_file(pruned, original):
        raise OtbrError("PRUNED and ORIGINAL are the same file")
    load_kw = dict(kw)
    orig_net, meta = load_model_from_options(original, kw)
    pruned_net, _ = load_model_from_options(pruned, load_kw)
    mismatch = state_mismatch(orig_net.net.state_dict(), pruned_net.net.state_dict())
    if mismatch:
        raise OtbrError(f"{pruned} is not a pruned copy of {original} ({mismatch}); pass the pruned model first, "
                        "then its original")
    return out, pruned_net, orig_net, meta


# -- otbr repair ------------------------------------------------------------------------------------------------
@click.command("repair")
@click.argument("pruned", type=click.Path(dir_okay=False))
@click.argument("original", type=click.Path(dir_okay=False))
@click.option("--steps", default=150, show_default=True, type=click.IntRange(0), help="Distillation steps.")
@click.option("--synthetic", default=512, show_default=True, type=click.IntRange(2),
              help="BatchNorm-inverted transfer images.")
@click.option("--synthetic-steps", default=100, show_default=True, type=click.IntRange(0), help="Inversion steps.")
@click.option("--lr", default=1e-4, show_default=True, type=FiniteFloatRange(0, min_open=True),
              help="Adam learning rate of the distillation.")
@click.option("--time-budget", type=FiniteFloatRange(0, min_open=True),
              help="Stop the distillation after the step that crosses this many seconds (the inversion counts; the "
                   "backdoor check after it does not).")
@click.option("--keep-suspect", is_flag=True,
              help="Turn off the guards on the suspected target class (risks distilling the backdoor back).")
@click.option("--invariance", default=0.5, show_default=True, type=FiniteFloatRange(0),
              help="Weight of the invariance phase (first sixth of the steps): the result learns to ignore the "
                   "small universal perturbation that most changes its outputs, as a trigger would. 0: plain "
                   "distillation.")
@click.option("--check/--no-check", default=True, show_default=True,
              help="After the distillation, compare how easily each class is triggered (small reverse-engineered "
                   "triggers, no data) on ORIGINAL, PRUNED and the result; keep PRUNED when a class the pruning "
                   "had made harder to trigger got easier again (beyond ORIGINAL's level, unless it is the suspected "
                   "target).")
@click.option("--stripe-pass/--no-stripe-pass", default=True, show_default=True,
              help="When ORIGINAL shows no patch-like backdoor, scan the distilled model with sinusoidal stripes "
                   "(SIG's trigger form) and, if one class answers them, distil again with that class guarded too.")
@batch_size_option(128)
@defense_options()
def repair_cmd(pruned: str, original: str, steps: int, synthetic: int, synthetic_steps: int, lr: float,
               time_budget: float | None, keep_suspect: bool, invariance: float, check: bool, stripe_pass: bool,
               batch_size: int, progress: bool, **kw: Any) -> None:
    """EXPERIMENTAL data-free repair of a PRUNED model (OTBR --variant prune, CLP, …): distil its ORIGINAL into it.

    Measured per zoo model in benchmarks/results/repair-gpu-fmnist.md; check the result before using it. It
    removes a backdoor by giving up the suspected class: on every zoo model it cleaned, the result no longer
    recognised that class (info.repair.guarded_kept estimates this with no data; a warning says so).

    The transfer set is inverted from ORIGINAL's BatchNorm statistics (no data is read); the pruned neurons
    (rows all zero in PRUNED but not in ORIGINAL) stay zero; the inversions of the suspected target class
    are left out (they carry the trigger), the teacher's belief in that class is capped at PRUNED's own
    (after the invariance phase: at the partly repaired model's), and no hard label points to it. With
    --check (the default) the result is PRUNED itself when a data-free scan finds a class that the pruning
    had made harder to trigger (ORIGINAL vs PRUNED) easier to trigger again after the distillation (a class
    other than the suspect: only when it ends easier to trigger than on ORIGINAL). The test set is
    used only for the before/after table (of ORIGINAL vs the repaired model).
    """
    from otbr.defenses.base import DefenseResult
    from otbr.repair import repair

    out, pruned_net, orig_net, meta = pruned_and_original(pruned, original, kw)
    rr = repair(pruned_net, orig_net, input_shape=meta.input_shape, num_classes=meta.num_classes,
                keep_suspect=keep_suspect, synthetic=synthetic, synthetic_steps=synthetic_steps, steps=steps,
                batch_size=batch_size, lr=lr, time_budget=time_budget, seed=kw["seed"], progress=progress, check=check,
                adversarial=invariance, stripe_pass=stripe_pass)
    result = DefenseResult(model=rr.model, method="repair",
                           config={"steps": steps, "synthetic": synthetic, "synthetic_steps": synthetic_steps,
                                   "lr": lr, "batch_size": batch_size, "time_budget": time_budget,
                                   "keep_suspect": keep_suspect, "invariance": invariance, "check": check,
                                   "stripe_pass": stripe_pass,
                                   "seed": kw["seed"], "pruned_model": pruned},
                           timings={"total": rr.info["seconds"]}, info={"repair": rr.info}, data_used="none")
    finish(original, orig_net, meta, result, kw, out, _eval_sets(meta, kw))


COMMANDS = [defend, nwc_cmd, fuse_cmd, repair_cmd]
