"""Run reports: what was run, on what, with which result — as JSON, Markdown and plots.

Every figure a command prints is also written here, so results never live only
in a log. A report built from a sweep that was scored on the poisoned test set
carries ``"oracle": true`` and says so in every table it renders.

Example:
    >>> env = environment()
    >>> sorted(env)[:2]
    ['device', 'otbr']
"""

from __future__ import annotations

import json
import platform
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

ORACLE_NOTE = (
    "ORACLE: these rows are scored on the poisoned test set; choosing a setting from them uses knowledge "
    "a defender does not have."
)


def environment(device: torch.device | str | None = None) -> dict[str, Any]:
    """Versions and hardware of this run."""
    from otbr import __version__

    dev = torch.device(device) if device is not None else torch.device("cpu")
    env: dict[str, Any] = {
        "otbr": __version__,
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "device": str(dev),
        "threads": torch.get_num_threads(),
    }
    if dev.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(dev)
    return env


def write_json(path: str | Path, payload: Any) -> Path:
    """Atomic JSON write (temporary file, then rename; removed again on failure or Ctrl-C)."""
    from otbr.atomic import atomic_path

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(payload, indent=2, sort_keys=True, default=_jsonable) + "\n"
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return path


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    return str(obj)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """A GitHub Markdown table; floats with two decimals, ``None`` as ``-``."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(_fmt(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def save_figure(fig: Any, path: Path) -> Path:
    """Save a matplotlib figure atomically (temporary file, then rename) and close it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)
    return path


def plot_sweep(
    rows: Sequence[dict[str, Any]], path: str | Path, *, x: str = "gamma", title: str = "", oracle: bool = True
) -> Path:
    """ACC and ASR (in %) against ``x``; one line per ``series`` value if rows carry one."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    series = sorted({str(r.get("series", "")) for r in rows})
    for s in series:
        pts = sorted((r for r in rows if str(r.get("series", "")) == s), key=lambda r: r[x])
        xs = [100 * r[x] for r in pts]
        label = f"{s} " if s else ""
        ax.plot(xs, [r["acc"] for r in pts], "o-", label=f"{label}ACC")
        if all(r.get("asr") is not None for r in pts):
            ax.plot(xs, [r["asr"] for r in pts], "s--", label=f"{label}ASR")
    ax.set_xlabel(f"{x} (%)")
    ax.set_ylabel("%")
    ax.set_ylim(-2, 102)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title((title + "\n" if title else "") + ("ORACLE sweep: scored on the poisoned test set" if oracle else ""),
                 fontsize=9)
    return save_figure(fig, path)


def plot_histogram(scores: dict[str, torch.Tensor], path: str | Path, *, title: str = "NWC") -> Path:
    """Histogram of all neurons' scores (log-count), plus the per-layer means."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    values = torch.cat([v.reshape(-1).double() for v in scores.values()]).numpy()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6), dpi=120)
    ax1.hist(values, bins=60, log=True, color="tab:blue")
    ax1.set_xlabel("neuron weight change")
    ax1.set_ylabel("neurons (log)")
    ax1.set_title(title, fontsize=9)
    names = list(scores)
    ax2.bar(range(len(names)), [float(scores[n].double().mean()) for n in names], color="tab:orange")
    ax2.set_xticks(range(len(names)), names, rotation=90, fontsize=6)
    ax2.set_ylabel("mean NWC per layer")
    return save_figure(fig, path)
