"""Train the model zoo: a clean and one backdoored model per attack on Fashion-MNIST.

Models are cached in ``benchmarks/zoo/<name>.safetensors`` and reused when the
file's recorded zoo configuration matches; results go to
``benchmarks/results/zoo-fmnist.md`` and ``.json``.

Usage:
    python benchmarks/zoo.py [--epochs 3] [--out benchmarks/zoo] [--only NAME[,NAME]] [--threads 2] [--force]

Example:
    $ python benchmarks/zoo.py --epochs 3 --only badnets
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import torch

from otbr.attacks import attack_from_config, create_attack
from otbr.data import load_dataset
from otbr.metrics import evaluate
from otbr.models import load_model, read_meta, save_model
from otbr.training import train_backdoored

log = logging.getLogger("zoo")

DATA = "fashion-mnist"
SEED = 0
PREACT = {"arch": "preactresnet18", "arch_kwargs": {"width": 16}}
VGG = {"arch": "vgg11_bn", "arch_kwargs": {"width": 16, "classifier_width": 128, "pool_size": 1, "image_size": 28}}

#: name → (architecture, attack name or None, attack kwargs). Order matters: trojan needs "clean".
ENTRIES: dict[str, dict[str, Any]] = {
    "clean": {**PREACT, "attack": None},
    "badnets": {**PREACT, "attack": "badnets"},
    "blended": {**PREACT, "attack": "blended"},
    "sig": {**PREACT, "attack": "sig"},
    "wanet": {**PREACT, "attack": "wanet"},
    "lf": {**PREACT, "attack": "lf"},
    "trojan": {**PREACT, "attack": "trojan"},
    "vgg11-badnets": {**VGG, "attack": "badnets"},
}

#: attacks that need more epochs than --epochs to reach a high ASR (name → epochs); see the results note.
EPOCHS: dict[str, int] = {}

ASR_MIN = 0.90
ACC_DROP_MAX = 0.03


def zoo_key(name: str, entry: dict[str, Any], epochs: int) -> dict[str, Any]:
    """What a cached model must match to be reused."""
    return {"name": name, "data": DATA, "arch": entry["arch"], "arch_kwargs": entry["arch_kwargs"],
            "attack": entry["attack"], "attack_kwargs": entry.get("attack_kwargs", {}), "epochs": epochs, "seed": SEED}


def cached(path: Path, key: dict[str, Any]) -> bool:
    """True if ``path`` holds a model trained with ``key``."""
    if not path.is_file():
        return False
    meta = read_meta(path)
    return bool(meta and meta.history and meta.history[0].get("zoo_key") == key)


def build_one(name: str, epochs: int, out: Path, test: Any, train: Any, force: bool) -> dict[str, Any]:
    """Train (or reuse) one zoo model and return its results row."""
    entry = ENTRIES[name]
    epochs = EPOCHS.get(name, epochs)
    key = zoo_key(name, entry, epochs)
    path = out / f"{name}.safetensors"
    if not force and cached(path, key):
        log.info("%s: cached at %s", name, path)
        model, meta = load_model(path)
        poisoned = attack_from_config(meta.attack).poison_test(test) if meta.attack else None
        metrics = evaluate(model, (test.x, test.y), poisoned.as_tuple() if poisoned is not None else None)
        wall = float(meta.history[0].get("wall_s", float("nan")))
    else:
        attack = None
        clean_model = None
        if entry["attack"] is not None:
            attack = create_attack(entry["attack"], seed=SEED, **entry.get("attack_kwargs", {}))
        if entry["attack"] == "trojan":
            clean_path = out / "clean.safetensors"
            if not clean_path.is_file():
                raise SystemExit("trojan needs the clean model: run the zoo with --only clean first")
            clean_model, _ = load_model(clean_path)
        log.info("%s: training %s, attack %s, %d epochs", name, entry["arch"], entry["attack"], epochs)
        t0 = time.perf_counter()
        result = train_backdoored(DATA, entry["arch"], arch_kwargs=entry["arch_kwargs"], attack=attack,
                                  clean_model=clean_model, epochs=epochs, seed=SEED, train_ds=train, test_ds=test)
        result.meta.history[0]["zoo_key"] = key
        result.meta.history[0]["total_s"] = round(time.perf_counter() - t0, 2)
        save_model(result.model, path, result.meta)
        metrics, meta, wall = result.report.metrics, result.meta, result.report.wall_s
    log.info("%s: ACC %.4f ASR %s RA %s (%.0f s)", name, metrics.acc, metrics.asr, metrics.ra, wall)
    return {"model": name, "arch": entry["arch"], "arch_kwargs": entry["arch_kwargs"], "attack": entry["attack"],
            "attack_config": meta.attack, "epochs": epochs, "acc": metrics.acc, "asr": metrics.asr, "ra": metrics.ra,
            "train_s": round(wall, 1), "file": str(path)}


def _pct(v: float | None) -> str:
    return "—" if v is None else f"{100 * v:.2f}"


def write_results(rows: list[dict[str, Any]], results: Path) -> None:
    """Write ``zoo-fmnist.json`` and ``zoo-fmnist.md`` (ACC gap to clean, notes for weak attacks)."""
    results.mkdir(parents=True, exist_ok=True)
    clean_acc = next((r["acc"] for r in rows if r["attack"] is None), None)
    for r in rows:
        notes = []
        r["acc_gap"] = None if clean_acc is None else r["acc"] - clean_acc
        if r["asr"] is not None and r["asr"] < ASR_MIN:
            notes.append(f"ASR < {100 * ASR_MIN:.0f} %")
        if r["acc_gap"] is not None and r["acc_gap"] < -ACC_DROP_MAX:
            notes.append(f"ACC > {100 * ACC_DROP_MAX:.0f} points below clean")
        r["note"] = "; ".join(notes)
    (results / "zoo-fmnist.json").write_text(json.dumps({"dataset": DATA, "seed": SEED, "models": rows}, indent=2))
    lines = [
        "# Model zoo — Fashion-MNIST",
        "",
        f"Dataset {DATA} (60 000 train / 10 000 test), seed {SEED}, all-to-one target 0, poison rate 10 %.",
        "ACC: clean test accuracy; ASR/RA: on the triggered non-target test images (9 000); percentages.",
        "ΔACC: ACC minus the clean model's. Train time: wall seconds of the training loop on the machine it ran on",
        "(2 CPU cores shared with other work, so times are indicative only).",
        "Generated by `python benchmarks/zoo.py`.",
        "",
        "| model | arch | attack | epochs | ACC | ASR | RA | ΔACC | train time (s) | note |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        gap = "—" if r["acc_gap"] is None or r["attack"] is None else f"{100 * r['acc_gap']:+.2f}"
        lines.append(f"| {r['model']} | {r['arch']} | {r['attack'] or 'none'} | {r['epochs']} | {_pct(r['acc'])} | "
                     f"{_pct(r['asr'])} | {_pct(r['ra'])} | {gap} | {r['train_s']:.0f} | {r['note']} |")
    (results / "zoo-fmnist.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/zoo"))
    parser.add_argument("--results", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--only", default=None, help="comma-separated zoo names: " + ", ".join(ENTRIES))
    parser.add_argument("--threads", type=int, default=2, help="torch threads (1 is faster on a contended machine)")
    parser.add_argument("--force", action="store_true", help="retrain even if a matching cached model exists")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    names = list(ENTRIES) if args.only is None else [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in ENTRIES]
    if unknown:
        parser.error(f"unknown zoo names {unknown}; known: {', '.join(ENTRIES)}")
    train = load_dataset(DATA, "train")
    test = load_dataset(DATA, "test")
    json_path = args.results / "zoo-fmnist.json"
    rows: dict[str, dict[str, Any]] = {}
    if json_path.is_file():
        rows = {r["model"]: r for r in json.loads(json_path.read_text()).get("models", [])}
    for name in names:
        rows[name] = build_one(name, args.epochs, args.out, test, train, args.force)
        write_results([rows[n] for n in ENTRIES if n in rows], args.results)
    log.info("results in %s", args.results / "zoo-fmnist.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
