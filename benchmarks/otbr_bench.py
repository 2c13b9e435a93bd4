"""OTBR on the Fashion-MNIST zoo: γ grids of pruning alone, the paper fusion and the default fusion,
the random-vs-poison NWC correlation, and stage timings.

Every number comes from the zoo models in ``benchmarks/zoo/`` (train them with
``python benchmarks/zoo.py``). Rows picked by looking at the poisoned test set
are labelled ORACLE; the default-setting rows use no data at all.

Usage:
    python benchmarks/otbr_bench.py [--only badnets,blended] [--grid 0.01,0.02,...] [--threads 2]

Writes ``benchmarks/results/otbr-fmnist.{md,json}`` and ``otbr-fmnist-<model>.png``.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from scipy import stats

from otbr.attacks import attack_from_config
from otbr.data import load_dataset, sample_subset
from otbr.defenses.otbr import OTBR
from otbr.metrics import der, evaluate
from otbr.models import load_model
from otbr.nwc import neuron_weight_change, unlearn
from otbr.pixels import as_float
from otbr.report import ORACLE_NOTE, environment, markdown_table, plot_sweep, write_json

log = logging.getLogger("otbr_bench")

ROOT = Path(__file__).resolve().parent
ZOO = ROOT / "zoo"
RESULTS = ROOT / "results"
MODELS = ["badnets", "blended", "sig", "wanet", "lf", "trojan", "vgg11-badnets"]
GRID = [0.02, 0.05, 0.1, 0.2]
DEFAULT_GAMMA = 0.05
SERIES = ("prune", "paper", "default")


def pct(v: float | None) -> float | None:
    return None if v is None else 100 * v


def correlation(model, meta, train, seed: int = 0) -> dict[str, Any]:
    """Pearson/Spearman between random-unlearning and poison-unlearning NWC over all considered neurons."""
    attack = attack_from_config(meta.attack)
    sub = sample_subset(train, ratio=0.05, seed=seed)
    ps = attack.poison_test(sub)  # triggered non-target training images
    x = as_float(ps.x)
    y = torch.full_like(ps.y_true, int(ps.target))  # unlearn the attacker's mapping
    t0 = time.perf_counter()
    pois = unlearn(model, "poison", loader=(x, y), lr=1e-4, batch_size=128, max_epochs=10, stop_acc=0.10, seed=seed,
                   progress=False)
    otbr = OTBR(input_shape=meta.input_shape, num_classes=meta.num_classes, seed=seed, progress=False)
    rnd = otbr.scores(model)
    layers = list(rnd.layers)
    pnwc = neuron_weight_change(model, pois.model, layers)
    a = torch.cat([rnd.layers[n] for n in layers]).numpy()
    b = torch.cat([pnwc[n] for n in layers]).numpy()
    within = [stats.pearsonr(rnd.layers[n].numpy(), pnwc[n].numpy())[0] for n in layers if len(pnwc[n]) > 2]
    return {"pearson": float(stats.pearsonr(a, b)[0]), "spearman": float(stats.spearmanr(a, b)[0]),
            "pearson_within_layer_mean": float(statistics.fmean(within)), "poison_unlearn_epochs": pois.epochs,
            "poison_unlearn_final_acc": pois.accuracy, "seconds": round(time.perf_counter() - t0, 1),
            "n_neurons": int(a.size)}


def grid_rows(name, model, meta, sets, grid) -> list[dict[str, Any]]:
    base = evaluate(model, *sets)
    rows = [{"model": name, "series": "original", "gamma": 0.0, "acc": pct(base.acc), "asr": pct(base.asr),
             "ra": pct(base.ra), "der": None}]
    for variant in ("paper", "default"):
        otbr = OTBR(variant=variant, input_shape=meta.input_shape, num_classes=meta.num_classes, progress=False)
        for g, pruned, fused in otbr.sweep(model, grid):
            pairs = [(variant, fused)] + ([("prune", pruned)] if variant == "default" else [])
            for series, m in pairs:
                r = evaluate(m, *sets)
                rows.append({"model": name, "series": series, "gamma": g, "acc": pct(r.acc), "asr": pct(r.asr),
                             "ra": pct(r.ra), "der": pct(der(base.acc, base.asr, r.acc, r.asr))})
        log.info("%s: %s grid done", name, variant)
    return rows


def timing(model, meta, repeats: int = 3) -> dict[str, Any]:
    """Median wall seconds of the bare 20 unlearning steps and of OTBR end to end (default variant)."""
    bare, total, stages = [], [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        unlearn(model, "random", steps=20, input_shape=meta.input_shape, num_classes=meta.num_classes, seed=0,
                progress=False)
        bare.append(time.perf_counter() - t0)
        res = OTBR(gamma=DEFAULT_GAMMA, input_shape=meta.input_shape, num_classes=meta.num_classes,
                   progress=False).run(model)
        total.append(res.timings["total"])
        stages.append(res.timings)
    b, t = statistics.median(bare), statistics.median(total)
    return {"bare_unlearn_s": round(b, 3), "otbr_total_s": round(t, 3), "ratio": round(t / b, 3),
            "stages_last_run": {k: round(v, 3) for k, v in stages[-1].items()}, "repeats": repeats}


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean over models of the default-γ rows (no oracle) and of each series' best-DER row (ORACLE)."""
    out = []
    models = sorted({r["model"] for r in rows if r["series"] != "original"})
    for series in SERIES:
        at_default = [r for r in rows if r["series"] == series and r["gamma"] == DEFAULT_GAMMA]
        best = [max((r for r in rows if r["series"] == series and r["model"] == m), key=lambda r: r["der"])
                for m in models]
        for label, sel in ((f"γ = {DEFAULT_GAMMA} (no oracle)", at_default), ("best γ per model (ORACLE)", best)):
            if sel:
                out.append({"series": series, "selection": label,
                            "acc": statistics.fmean(r["acc"] for r in sel),
                            "asr": statistics.fmean(r["asr"] for r in sel),
                            "ra": statistics.fmean(r["ra"] for r in sel),
                            "der": statistics.fmean(r["der"] for r in sel),
                            "max_asr": max(r["asr"] for r in sel)})
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", help="comma-separated zoo model names")
    ap.add_argument("--grid", default=",".join(map(str, GRID)))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--timing-repeats", type=int, default=3)
    ap.add_argument("--append", action="store_true",
                    help="keep the other models' rows of an existing otbr-fmnist.json (same grid and eval limit)")
    ap.add_argument("--skip-correlation", action="store_true")
    ap.add_argument("--eval-limit", type=int, default=5000,
                    help="evaluate on the first N clean and first N triggered test images (0: all)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    torch.set_num_threads(args.threads)
    names = args.only.split(",") if args.only else MODELS
    grid = [float(g) for g in args.grid.split(",")]
    if DEFAULT_GAMMA not in grid:
        grid.append(DEFAULT_GAMMA)
    test = load_dataset("fashion-mnist", "test")
    train = load_dataset("fashion-mnist", "train")
    rows, corr = [], {}
    timings: dict[str, Any] = {}
    old = RESULTS / "otbr-fmnist.json"
    if args.append and old.is_file():
        prev = json.loads(old.read_text())
        if prev["grid"] != grid or prev.get("eval_limit") != args.eval_limit:
            raise SystemExit("--append: the existing results used another grid or eval limit")
        rows = [r for r in prev["rows"] if r["model"] not in names]
        corr = {k: v for k, v in prev["correlation"].items() if k not in names}
        timings = prev["timing"]
    for name in names:
        path = ZOO / f"{name}.safetensors"
        if not path.is_file():
            log.warning("%s missing: run python benchmarks/zoo.py first", path)
            continue
        model, meta = load_model(path)
        ps = attack_from_config(meta.attack).poison_test(test)
        n = args.eval_limit or None
        sets = ((test.x[:n], test.y[:n]), (ps.x[:n], ps.y_true[:n], int(ps.target)))
        t0 = time.perf_counter()
        rows += grid_rows(name, model, meta, sets, grid)
        if not args.skip_correlation:
            corr[name] = correlation(model, meta, train)
            log.info("%s: NWC correlation %s", name, corr[name])
        if name == names[0] and not timings:
            timings = {"model": name, **timing(model, meta, repeats=args.timing_repeats)}
        log.info("%s: %.0f s", name, time.perf_counter() - t0)
        plot_sweep([r for r in rows if r["model"] == name and r["series"] != "original"],
                   RESULTS / f"otbr-fmnist-{name}.png", title=f"OTBR on {name} (Fashion-MNIST)")
        # Written after every model, so an interrupted run keeps what it measured.
        payload = {"grid": grid, "default_gamma": DEFAULT_GAMMA, "eval_limit": args.eval_limit, "rows": rows,
                   "summary": summarise(rows), "correlation": corr, "timing": timings,
                   "environment": environment(), "oracle_note": ORACLE_NOTE}
        write_json(RESULTS / "otbr-fmnist.json", payload)
        write_markdown(payload)
    return 0


def write_markdown(p: dict[str, Any]) -> None:
    lines = [
        "# OTBR on the Fashion-MNIST zoo",
        "",
        "Generated by `python benchmarks/otbr_bench.py` (zoo from `python benchmarks/zoo.py`). PreAct-ResNet18",
        f"width 16 (and one VGG11-BN). Evaluated on the first {p['eval_limit'] or 'all'} clean test images and the",
        f"first {p['eval_limit'] or 'all'} triggered non-target test images (a fixed subset, to fit the CPU budget).",
        "Series: `prune` = NWC pruning alone; `paper` = the published OT fusion (λ = 0.5); `default` = otbr's fusion",
        "(λ = 0.5 for kept neurons, pruned neurons rebuilt from the transported mixture). All runs use 20",
        "random-noise unlearning steps, seed 0, and no data.",
        "",
        f"**{ORACLE_NOTE}** Only the `γ = {p['default_gamma']} (no oracle)` rows are what a data-free user gets.",
        "",
        "## Mean over the zoo",
        "",
        markdown_table(p["summary"], ["series", "selection", "acc", "asr", "ra", "der", "max_asr"]),
        "",
        "## Default γ, per model (no oracle)",
        "",
        markdown_table([r for r in p["rows"] if r["gamma"] in (0.0, p["default_gamma"])],
                       ["model", "series", "gamma", "acc", "asr", "ra", "der"]),
        "",
        "## Random- vs poison-unlearning NWC (the paper's observation)",
        "",
        markdown_table([{"model": k, **v} for k, v in p["correlation"].items()],
                       ["model", "pearson", "spearman", "pearson_within_layer_mean", "poison_unlearn_epochs",
                        "n_neurons"]),
        "",
        "## Timing",
        "",
        f"Model `{p['timing'].get('model')}`: bare 20 unlearning steps {p['timing'].get('bare_unlearn_s')} s, "
        f"OTBR end to end {p['timing'].get('otbr_total_s')} s, ratio **{p['timing'].get('ratio')}×** "
        f"(median of {p['timing'].get('repeats')}; stages {json.dumps(p['timing'].get('stages_last_run'))}).",
        f"Machine: {p['environment']['platform']}, {p['environment']['threads']} threads, torch "
        f"{p['environment']['torch']}.",
        "",
        "## Full γ grid (ORACLE: every row is scored on the poisoned test set)",
        "",
        markdown_table(p["rows"], ["model", "series", "gamma", "acc", "asr", "ra", "der"]),
        "",
    ]
    (RESULTS / "otbr-fmnist.md").write_text("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
