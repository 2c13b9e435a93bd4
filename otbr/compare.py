"""Run several defenses on several models and compare them in one table.

Every (model, defense) pair is a *cell*: the defense is built with its default
hyperparameters (plus any overrides), data-dependent defenses get the seeded
clean subset of the training split of ``data`` (at their own default ratio, or
``clean_ratio``), data-free ones get nothing. Each defended model is scored on
the clean test set and on the poisoned test set rebuilt from the model's attack
metadata: ACC, ASR, RA and DER against the undefended model (its own cell,
``<model>__original``).

Cells are written to ``OUT/cells/<model>__<defense>.json`` as soon as they are
done and skipped on a re-run when their settings are unchanged, so an
interrupted grid resumes. With ``workers > 1`` cells run in a spawn-context
process pool, one torch thread per worker. The summary goes to
``OUT/compare.md``, ``.csv``, ``.json`` and ``compare.png`` (ACC against ASR;
data-free defenses drawn as circles, data-dependent ones as triangles).

Example:
    >>> res = run_compare(["bd.safetensors"], ["clp", "ft"], out_dir="out", data="fashion-mnist")  # doctest: +SKIP
    >>> [r["defense"] for r in res.rows]  # doctest: +SKIP
    ['original', 'clp', 'ft']
"""

from __future__ import annotations

import concurrent.futures as cf
import csv
import dataclasses
import functools
import hashlib
import inspect
import json
import logging
import multiprocessing
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from otbr.errors import OtbrError
from otbr.report import markdown_table, save_figure, write_json

log = logging.getLogger(__name__)

ORIGINAL = "original"
DATA_FREE, DATA_DEPENDENT = "data-free", "data-dependent"
COLUMNS = ["model", "defense", "mode", "acc", "asr", "ra", "der", "wall_s", "data_used", "notes"]
SUMMARY_COLUMNS = ["defense", "mode", "models", "acc", "asr", "ra", "der", "worst_asr", "asr_le_10", "wall_s"]
#: ASR (%) at or below which a summary counts a model's backdoor as removed (``asr_le_10``)
REMOVED_ASR = 10.0
#: the default clean ratio of a data-dependent defense that declares none
FALLBACK_RATIO = 0.05

#: Options a defense gained after cells were made, with the value that reproduces those cells exactly: at that
#: value they stay out of a cell's key, so the cells made before stay valid (any other value re-runs them). Empty
#: since OTBR's committed cells were re-made under its shipped defaults (2026-11-25); until then it held OTBR's
#: ``selection_repeats`` 1 and ``lean_used`` 0.035.
LATER_OPTIONS: dict[str, dict[str, Any]] = {}

#: Constructor arguments that pin a defense to its behaviour from before a default changed: given with these values
#: they key as if not given, so the cells made before the change are reused. TSBD's automatic n until the recall
#: suspect (2026-11-24 evening): the scan suspect (``benchmarks/compare_bench.py`` pins its stored cells to it). OTBR's
#: entry (the scan suspect without the collapse guard) went when its cells were re-made as shipped (2026-11-25).
EARLIER_KWARGS: dict[str, dict[str, Any]] = {"tsbd": {"suspect_rule": "scan"}}


@dataclasses.dataclass
class CompareResult:
    """Rows of the comparison (one per cell, in fractions × 100), notes, and the files written."""

    rows: list[dict[str, Any]]
    notes: list[str]
    files: dict[str, Path]
    ran: int = 0
    reused: int = 0


def _registry() -> dict[str, Any]:
    from otbr.defenses import list_defenses

    return list_defenses()


def defense_mode(name: str) -> str:
    """``"data-free"`` or ``"data-dependent"`` for a registered defense."""
    return DATA_FREE if _registry()[name].needs == "none" else DATA_DEPENDENT


def default_ratio(name: str) -> float:
    """The clean-subset ratio a data-dependent defense uses by default."""
    return float(getattr(_registry()[name], "default_clean_ratio", FALLBACK_RATIO))


def defense_kwargs(name: str, meta: Any, *, seed: int, progress: bool,
                   overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Constructor arguments for ``name``: model facts and seed where the defense takes them, then ``overrides``."""
    params = inspect.signature(_registry()[name].__init__).parameters
    facts = {"input_shape": list(meta.input_shape), "num_classes": meta.num_classes, "seed": seed,
             "progress": progress}
    kwargs = {k: v for k, v in facts.items() if k in params}
    kwargs.update(overrides or {})
    return kwargs


def cell_name(model: str | Path, defense: str) -> str:
    """File stem of a cell: ``<model file stem>__<defense>``."""
    return f"{Path(model).stem}__{defense}"


# -- one cell (runs in a worker process) --------------------------------------------------------------------------
_CACHE: dict[tuple, Any] = {}


def _eval_sets(path: str, data_root: str | None, limit: int | None) -> Any:
    from otbr.evaluation import evaluation_sets
    from otbr.models import read_meta

    key = ("eval", path, data_root, limit)
    if key not in _CACHE:
        meta = read_meta(path)
        if meta is None:
            raise OtbrError(f"{path} carries no otbr metadata (dataset and attack are needed to evaluate)")
        _CACHE[key] = evaluation_sets(meta, data_root=data_root, limit=limit)
    return _CACHE[key]


def _clean_subset(data: str, data_root: str | None, ratio: float, seed: int) -> Any:
    from otbr.data import load_dataset, sample_subset

    key = ("train", data, data_root)
    if key not in _CACHE:
        _CACHE[key] = load_dataset(data, "train", root=data_root)
    return sample_subset(_CACHE[key], ratio=ratio, seed=seed)


def _short_info(info: Mapping[str, Any]) -> dict[str, Any]:
    keep = ("notes", "num_pruned", "num_neurons", "flagged_rows", "classifier", "unlearn_epochs", "weight_only_layers",
            "pruned_ratio", "feature_layer", "gamma", "mask_mean")
    return {k: info[k] for k in keep if k in info}


def run_cell(task: dict[str, Any]) -> dict[str, Any]:
    """Run one (model, defense) cell described by ``task`` and write its JSON; returns the row.

    ``task`` keys: ``model``, ``defense``, ``kwargs``, ``data``, ``data_root``, ``ratio``, ``seed``,
    ``eval_limit``, ``before`` (metrics of the undefended model; absent for the original cell), ``path``, ``key``.
    """
    from otbr.defenses import create_defense
    from otbr.evaluation import measure
    from otbr.metrics import der
    from otbr.models import load_model
    from otbr.report import environment

    model, name = task["model"], task["defense"]
    net, _meta = load_model(model, device=task.get("device"))  # absent: the CPU
    sets = _eval_sets(model, task.get("data_root"), task.get("eval_limit"))
    row: dict[str, Any] = {"model": Path(model).stem, "model_path": str(model), "defense": name, "key": task["key"]}
    if name == ORIGINAL:
        m = measure(net, sets)
        row.update(mode="-", data_used="-", wall_s=0.0, notes="", metrics=m.as_dict())
    else:
        defense = create_defense(name, **task["kwargs"])
        data = None
        if defense.needs == "clean":
            data = _clean_subset(task["data"], task.get("data_root"), task["ratio"], task["seed"])
        t0 = time.perf_counter()
        result = defense.run(net, data)
        wall = time.perf_counter() - t0
        m = measure(result.model, sets)
        before = task["before"]
        notes = "; ".join(str(n) for n in result.info.get("notes", []) if not str(n).startswith("data-free"))
        row.update(mode=defense_mode(name), data_used=result.data_used, wall_s=wall, notes=notes,
                   metrics=m.as_dict(), config=result.config, timings=result.timings, info=_short_info(result.info),
                   ratio=task["ratio"] if data is not None else None)
        if m.asr is not None and before.get("asr") is not None:
            row["der"] = der(before["acc"], before["asr"], m.acc, m.asr)
    # provenance only (not part of the key): which code and machine made the cell, and when
    row["environment"] = {**environment(task.get("device")), "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    write_json(task["path"], row)
    return row


def _init_worker() -> None:
    torch.set_num_threads(1)


# -- the grid -----------------------------------------------------------------------------------------------------
def _key(payload: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _load_done(path: Path, key: str, legacy: str | None = None) -> dict[str, Any] | None:
    """The cell stored at ``path`` when it was made with the settings ``key`` names, else ``None``.

    A cell keyed the way earlier versions keyed them (``legacy``: the model's path as spelled and its size and
    modification time) is accepted once and re-keyed in place.
    """
    if not path.is_file():
        return None
    try:
        row = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        log.warning("unreadable cell %s: running it again", path)
        return None
    if legacy is not None and row.get("key") == legacy:
        row["key"] = key
        write_json(path, row)
    if row.get("key") != key:
        log.info("cell %s was made with other settings: running it again", path.name)
        return None
    return row


class _Runner:
    """Runs cells in this process or in one spawn-context pool, created on first need and reused."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self.pool: cf.ProcessPoolExecutor | None = None

    def __enter__(self) -> _Runner:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.pool is not None:
            self.pool.shutdown(cancel_futures=True)

    def run(self, tasks: list[dict[str, Any]], on_done: Callable[[dict[str, Any]], None]) -> None:
        if not tasks:
            return
        if self.workers <= 1 or (len(tasks) == 1 and self.pool is None):
            for t in tasks:
                try:
                    row = run_cell(t)
                except OtbrError as exc:
                    row = _failed(t, exc)
                on_done(row)
            return
        if self.pool is None:
            ctx = multiprocessing.get_context("spawn")
            self.pool = cf.ProcessPoolExecutor(max_workers=self.workers, mp_context=ctx, initializer=_init_worker)
        futures = {self.pool.submit(run_cell, t): t for t in tasks}
        for fut in cf.as_completed(futures):
            try:
                row = fut.result()
            except OtbrError as exc:
                row = _failed(futures[fut], exc)
            on_done(row)


def _failed(task: Mapping[str, Any], exc: Exception) -> dict[str, Any]:
    """The row of a cell whose defense refused to run (not stored, so a re-run tries again)."""
    log.error("%s / %s failed: %s", Path(task["model"]).stem, task["defense"], exc)
    return {"model": Path(task["model"]).stem, "model_path": str(task["model"]), "defense": task["defense"],
            "mode": defense_mode(task["defense"]) if task["defense"] != ORIGINAL else "-", "metrics": {},
            "data_used": "-", "wall_s": None, "notes": f"FAILED: {exc}", "failed": True}


def _pct(v: float | None) -> float | None:
    return None if v is None else 100.0 * v


def table_row(cell: Mapping[str, Any]) -> dict[str, Any]:
    """A flat row (percentages) of a stored cell."""
    m = cell.get("metrics", {})
    return {"model": cell["model"], "defense": cell["defense"], "mode": cell.get("mode", "-"),
            "acc": _pct(m.get("acc")), "asr": _pct(m.get("asr")), "ra": _pct(m.get("ra")),
            "der": _pct(cell.get("der")), "wall_s": cell.get("wall_s"), "data_used": cell.get("data_used", "-"),
            "notes": cell.get("notes", "")}


def summary_rows(rows: Sequence[Mapping[str, Any]], defenses: Sequence[str]) -> list[dict[str, Any]]:
    """Mean ACC/ASR/RA/DER/wall time per defense over the models it ran on, the worst ASR, and on how many
    models the ASR is at most 10 % (``asr_le_10``, e.g. ``"3/7"``)."""
    out = []
    for d in [ORIGINAL, *defenses]:
        sel = [r for r in rows if r["defense"] == d and r.get("acc") is not None]
        if not sel:
            continue

        def mean(col: str, sel: list = sel) -> float | None:
            vals = [r[col] for r in sel if r.get(col) is not None]
            return sum(vals) / len(vals) if vals else None

        out.append({"defense": d, "mode": sel[0]["mode"], "models": len(sel), "acc": mean("acc"), "asr": mean("asr"),
                    "ra": mean("ra"), "der": mean("der"), "wall_s": mean("wall_s"),
                    "worst_asr": max(r["asr"] for r in sel if r.get("asr") is not None) if d != ORIGINAL else None,
                    "asr_le_10": (f"{sum(r['asr'] <= REMOVED_ASR for r in sel if r.get('asr') is not None)}"
                                  f"/{len(sel)}") if d != ORIGINAL else None})
    return out


def pivot_rows(rows: Sequence[Mapping[str, Any]], defenses: Sequence[str]) -> tuple[list[dict[str, Any]], list[str]]:
    """One row per defense, one ``"ACC / ASR / DER"`` column per model (and the column names).

    Example:
        >>> rows = [{"model": "m", "defense": "ft", "mode": "data-dependent", "acc": 89.2, "asr": 100.0, "der": 49.5}]
        >>> pivot_rows(rows, ["ft"])
        ([{'defense': 'ft', 'mode': 'data-dependent', 'm': '89.20 / 100.00 / 49.50'}], ['defense', 'mode', 'm'])
    """
    models = list(dict.fromkeys(r["model"] for r in rows))
    out = []
    for d in [ORIGINAL, *defenses]:
        cells = {r["model"]: r for r in rows if r["defense"] == d}
        if not cells:
            continue
        row: dict[str, Any] = {"defense": d, "mode": next(iter(cells.values())).get("mode", "-")}
        for m in models:
            r = cells.get(m)
            row[m] = "-" if r is None or r.get("acc") is None else " / ".join(
                "-" if r.get(c) is None else f"{r[c]:.2f}" for c in ("acc", "asr", "der"))
        out.append(row)
    return out, ["defense", "mode", *models]


def run_compare(
    models: Sequence[str | Path],
    defenses: Sequence[str],
    *,
    out_dir: str | Path,
    data: str | None = None,
    data_root: str | None = None,
    clean_ratio: float | None = None,
    workers: int = 1,
    eval_limit: int | None = None,
    seed: int = 0,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    model_overrides: Mapping[str, Mapping[str, Mapping[str, Any]]] | None = None,
    progress: bool = False,
    plot: bool = True,
    device: str | None = "cpu",
) -> CompareResult:
    """Run every defense on every model (resumably) and write the comparison.

    Args:
        models: model files with otbr metadata (dataset and attack).
        defenses: registered defense names.
        out_dir: output folder (``cells/`` and ``compare.{md,csv,json,png}``).
        data: dataset whose training split gives data-dependent defenses their clean subset;
            without it those defenses are skipped (with a note).
        data_root: where datasets live.
        clean_ratio: subset ratio for every data-dependent defense (default: each one's own).
        workers: processes (spawn context, one torch thread each).
        eval_limit: evaluate on the first N test images only.
        seed: seed of every defense and of the clean subset.
        overrides: ``{defense: {hyperparameter: value}}`` on top of the defaults.
        model_overrides: ``{model file stem: {defense: {hyperparameter: value}}}`` on top of ``overrides``, for that
            model's cells only (e.g. to re-run one cell under a changed default while the others, which the change
            leaves the same, are reused pinned to the earlier one).
        progress: progress bars (sequential runs only).
        plot: write ``compare.png``.
        device: where the cells run: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"auto"`` (CUDA when present). A GPU
            cell is keyed apart from a CPU one (its numbers differ in rounding), so neither reuses the other.

    Returns:
        :class:`CompareResult`.
    """
    registry = _registry()
    unknown = [d for d in defenses if d not in registry]
    if unknown:
        raise OtbrError(f"unknown defense(s) {', '.join(unknown)}; known: {', '.join(sorted(registry))}")
    if not models:
        raise OtbrError("no model given")
    if workers < 1:
        raise OtbrError(f"workers must be ≥ 1, got {workers}")
    if clean_ratio is not None and not 0 < clean_ratio <= 1:
        raise OtbrError(f"clean ratio must be in (0, 1], got {clean_ratio}")
    stems = [Path(m).stem for m in models]
    if len(set(stems)) != len(stems):
        raise OtbrError("two model files share a name; cells are keyed by file name")
    unknown_models = sorted(set(model_overrides or {}) - set(stems))
    if unknown_models:
        raise OtbrError(f"hyperparameters given for model(s) {', '.join(unknown_models)}, which are not compared")
    for d, kw in [*(overrides or {}).items(), *(i for per in (model_overrides or {}).values() for i in per.items())]:
        if d not in defenses:
            raise OtbrError(f"hyperparameters given for {d!r}, which is not in --defenses")
        params = inspect.signature(registry[d].__init__).parameters
        bad = sorted(k for k in kw if k not in params or k == "self")
        if bad:
            raise OtbrError(f"{d} has no hyperparameter(s) {', '.join(bad)}")
    from otbr.device import resolve_device

    dev = resolve_device(device)
    gpu = str(dev) if dev.type != "cpu" else None
    notes: list[str] = []
    dependent = [d for d in defenses if registry[d].needs != "none"]
    if data is None and dependent:
        if len(dependent) == len(defenses):
            raise OtbrError(f"{', '.join(dependent)} need(s) clean data: pass --data NAME")
        notes.append(f"skipped without --data (data-dependent): {', '.join(dependent)}")
        defenses = [d for d in defenses if d not in dependent]
    from otbr.models import read_meta

    out = Path(out_dir)
    metas = {}
    for m in models:
        if not Path(m).is_file():
            raise OtbrError(f"model file not found: {m}")
        meta = read_meta(m)
        if meta is None or not meta.dataset:
            raise OtbrError(f"{m} names no dataset in its metadata; compare needs otbr model files")
        if not meta.attack:
            notes.append(f"{Path(m).name}: no attack in its metadata, so no ASR/RA/DER")
        metas[str(m)] = meta
    (out / "cells").mkdir(parents=True, exist_ok=True)  # only once every model is readable: a bad one leaves nothing

    cells: dict[str, dict[str, Any]] = {}
    result = CompareResult([], notes, {})

    def done(row: dict[str, Any]) -> None:
        cells[Path(row["model_path"]).stem + "__" + row["defense"]] = row
        result.ran += 1
        log.info("done: %s / %s (%.1f s)", row["model"], row["defense"], row.get("wall_s") or 0.0)

    def plan(defense_names: Sequence[str]) -> list[dict[str, Any]]:
        tasks = []
        for m in models:
            for d in defense_names:
                base = cells.get(cell_name(m, ORIGINAL))
                if d != ORIGINAL and (base is None or base.get("failed")):
                    continue
                task: dict[str, Any] = {"model": str(m), "defense": d, "data_root": data_root,
                                        "eval_limit": eval_limit, "seed": seed}
                if gpu is not None:  # CPU cells carry no device: their keys stay those of earlier versions
                    task["device"] = gpu
                if d != ORIGINAL:
                    needs_data = registry[d].needs != "none"
                    task.update(kwargs=defense_kwargs(d, metas[str(m)], seed=seed, progress=progress and workers == 1,
                                                      overrides={**(overrides or {}).get(d, {}),
                                                                 **(model_overrides or {}).get(Path(m).stem, {})
                                                                 .get(d, {})}),
                                data=data if needs_data else None,
                                ratio=(clean_ratio or default_ratio(d)) if needs_data else None,
                                before=base["metrics"])
                keyed = {k: v for k, v in task.items() if k not in ("before", "data_root")}
                pinned = EARLIER_KWARGS.get(d, {}).items()
                keyed["kwargs"] = {k: v for k, v in keyed.get("kwargs", {}).items()
                                   if k != "progress" and (k, v) not in pinned}
                if d != ORIGINAL:
                    # key on the full configuration, defaults included: a changed default must not reuse old cells
                    neutral = LATER_OPTIONS.get(d, {}).items()
                    keyed["config"] = {k: v for k, v in registry[d](**task["kwargs"]).config().items()
                                       if k != "progress" and (k, v) not in neutral}
                legacy = _key({**keyed, "model_sha": _file_id(m), "before": task.get("before")})
                # the model's bytes, not how its path was spelled nor when the file was touched (a clone resumes)
                keyed.pop("model")
                task["key"] = _key({**keyed, "model_sha": _file_sha(m), "before": task.get("before")})
                task["path"] = str(out / "cells" / f"{cell_name(m, d)}.json")
                prev = _load_done(Path(task["path"]), task["key"], legacy)
                if prev is not None:
                    cells[cell_name(m, d)] = prev
                    result.reused += 1
                else:
                    tasks.append(task)
        return tasks

    with _Runner(workers) as runner:
        runner.run(plan([ORIGINAL]), done)
        runner.run(plan(defenses), done)

    for m in models:
        for d in [ORIGINAL, *defenses]:
            if cell_name(m, d) in cells:
                result.rows.append(table_row(cells[cell_name(m, d)]))
    failed = [f"{r['model']} / {r['defense']}: {r['notes']}" for r in cells.values() if r.get("failed")]
    notes.extend(failed)
    result.files = write_outputs(result.rows, list(defenses), out, notes=notes, plot=plot,
                                 settings={"data": data, "clean_ratio": clean_ratio, "eval_limit": eval_limit,
                                           "seed": seed, "overrides": overrides or {},
                                           **({"model_overrides": model_overrides} if model_overrides else {}),
                                           "device": str(dev),
                                           "ratios": {d: (clean_ratio or default_ratio(d)) for d in defenses
                                                      if registry[d].needs != "none"}})
    return result


def _file_id(path: str | Path) -> str:
    st = Path(path).stat()
    return f"{st.st_size}:{int(st.st_mtime)}"


@functools.lru_cache(maxsize=256)
def _sha_of(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _file_sha(path: str | Path) -> str:
    """SHA-256 of the file's bytes (cached per path, size and modification time)."""
    p = Path(path).resolve()
    st = p.stat()
    return _sha_of(str(p), st.st_size, st.st_mtime_ns)


def write_outputs(rows: list[dict[str, Any]], defenses: list[str], out: Path, *, notes: Sequence[str] = (),
                  plot: bool = True, settings: Mapping[str, Any] | None = None) -> dict[str, Path]:
    """Write ``compare.md``, ``.csv``, ``.json`` (and ``.png``) from the table rows."""
    from otbr.report import environment

    files: dict[str, Path] = {}
    summary = summary_rows(rows, defenses)
    md = ["# Defense comparison", "",
          "ACC: clean test accuracy; ASR/RA: on the poisoned test set (non-target images); DER vs the original "
          "model; wall: seconds of the defense run (evaluation excluded). All values in %.", "",
          "## Mean over models", "",
          markdown_table(summary, SUMMARY_COLUMNS), "",
          "## ACC / ASR / DER per model", "", markdown_table(*pivot_rows(rows, defenses)), "",
          "## Every cell", "", markdown_table(rows, COLUMNS), ""]
    if notes:
        md += ["## Notes", "", *[f"- {n}" for n in notes], ""]
    files["md"] = out / "compare.md"
    files["md"].write_text("\n".join(md))
    files["csv"] = out / "compare.csv"
    with files["csv"].open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows({c: r.get(c) for c in COLUMNS} for r in rows)
    files["json"] = write_json(out / "compare.json", {"rows": rows, "summary": summary, "notes": list(notes),
                                                      "settings": dict(settings or {}),
                                                      "environment": environment()})
    if plot:
        files["png"] = plot_compare(rows, out / "compare.png")
    return files


def plot_compare(rows: Sequence[Mapping[str, Any]], path: str | Path, *, title: str = "") -> Path:
    """ACC against ASR, one colour per defense; circles data-free, triangles data-dependent, × the originals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    fig, ax = plt.subplots(figsize=(6.8, 4.6), dpi=120)
    names = list(dict.fromkeys(r["defense"] for r in rows))
    colours = plt.get_cmap("tab10")
    for i, d in enumerate(names):
        pts = [r for r in rows if r["defense"] == d and r.get("asr") is not None and r.get("acc") is not None]
        if not pts:
            continue
        mode = pts[0].get("mode")
        if d == ORIGINAL:
            style = {"marker": "x", "color": "black", "s": 40}
        elif mode == DATA_FREE:
            style = {"marker": "o", "color": colours(i % 10), "s": 40}
        else:
            style = {"marker": "^", "facecolors": "none", "edgecolors": colours(i % 10), "s": 50}
        ax.scatter([r["asr"] for r in pts], [r["acc"] for r in pts], label=f"{d} ({mode})" if d != ORIGINAL else d,
                   **style)
    ax.set_xlabel("ASR (%) — lower is better")
    ax.set_ylabel("ACC (%) — higher is better")
    ax.set_xlim(-3, 103)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    ax.set_title(title or "Defenses: ACC vs ASR (● data-free, △ data-dependent, × original)", fontsize=9)
    return save_figure(fig, path)
