"""``otbr compare``: every defense on every model, one table (thin layer over :mod:`otbr.compare`).

Example:
    $ otbr compare bd1.safetensors bd2.safetensors --defenses otbr,clp,ulrl,ft --data fashion-mnist --out cmp
"""

from __future__ import annotations

from typing import Any

import click

from otbr.errors import OtbrError

from .common import SEED, FiniteFloatRange, format_table, parse_json_kwargs, refuse_moot


@click.command("compare")
@click.argument("models", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--defenses", default="otbr,clp,ulrl,ft,fp", show_default=True,
              help="Comma-separated registered defense names.")
@click.option("--data", help="Dataset whose TRAINING split gives data-dependent defenses their clean subset.")
@click.option("--data-root", type=click.Path(file_okay=False), help="Folder holding dataset files.")
@click.option("--clean-ratio", type=FiniteFloatRange(0, 1, min_open=True),
              help="Clean-subset ratio for every data-dependent defense (default: each defense's own).")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1), help="Worker processes.")
@click.option("--out", "out_dir", default="compare-out", show_default=True, type=click.Path(file_okay=False),
              help="Output folder (cells/ and compare.md/.csv/.json/.png); re-running resumes.")
@click.option("--eval-limit", type=click.IntRange(1), help="Evaluate on the first N test images only.")
@click.option("--set", "overrides", help='JSON of per-defense hyperparameters, e.g. \'{"ft": {"epochs": 5}}\'.')
@click.option("--seed", default=0, show_default=True, type=SEED, help="Seed of every defense and the clean subset.")
@click.option("--no-plot", is_flag=True, help="Skip the PNG plot.")
@click.option("--device", default="auto", show_default=True, help="auto (CUDA when present), cpu, cuda or cuda:N.")
@click.pass_context
def compare(ctx: click.Context, models: tuple[str, ...], defenses: str, data: str | None, data_root: str | None,
            clean_ratio: float | None, workers: int, out_dir: str, eval_limit: int | None, overrides: str | None,
            seed: int, no_plot: bool, device: str) -> None:
    """Run every defense on every MODEL and compare ACC, ASR, RA, DER, wall time and data used.

    Data-free defenses read no data; data-dependent ones get a seeded clean subset of --data's
    training split (without --data they are skipped). Finished cells are kept in OUT/cells and
    skipped on a re-run.
    """
    from otbr.compare import COLUMNS, SUMMARY_COLUMNS, run_compare, summary_rows

    names = [d.strip() for d in defenses.split(",") if d.strip()]
    if not names:
        raise OtbrError("--defenses is empty")
    extra = parse_json_kwargs(overrides, "--set")
    if any(not isinstance(v, dict) for v in extra.values()):
        raise OtbrError('--set must map defense names to objects, e.g. {"ft": {"epochs": 5}}')
    from otbr.defenses import list_defenses

    known = list_defenses()
    free = ("when every defense named is data-free" if all(n in known and known[n].needs == "none" for n in names)
            else None)
    refuse_moot({"data": free, "clean_ratio": free})
    progress = bool((ctx.find_root().obj or {}).get("progress", False))
    res = run_compare(list(models), names, out_dir=out_dir, data=data, data_root=data_root, clean_ratio=clean_ratio,
                      workers=workers, eval_limit=eval_limit, seed=seed, overrides=extra, progress=progress,
                      plot=not no_plot, device=device)

    def fmt(v: Any) -> str:
        return "-" if v is None else (f"{v:.2f}" if isinstance(v, float) else str(v))

    cols = [c for c in COLUMNS if c != "notes"]
    click.echo(format_table([{c: fmt(r.get(c)) for c in cols} for r in res.rows], cols))
    if len({r["model"] for r in res.rows}) > 1:
        click.echo("\nmean over models (worst_asr: highest ASR left; asr_le_10: models with ASR ≤ 10 %):")
        click.echo(format_table([{c: fmt(r.get(c)) for c in SUMMARY_COLUMNS}
                                 for r in summary_rows(res.rows, names)], SUMMARY_COLUMNS))
    for note in res.notes:
        click.echo(f"note: {note}")
    click.echo(f"{res.ran} cell(s) run, {res.reused} reused; written: "
               + ", ".join(str(p) for p in res.files.values()))


COMMANDS = [compare]
