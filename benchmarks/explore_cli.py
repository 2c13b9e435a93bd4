"""The command line the development probes (``*_explore.py``) share: a ``ZOO:NAME`` model list, ``--threads``,
``--render`` (rewrite the Markdown from the committed JSON) and logging.

Example:
    >>> ap = parser("doc")
    >>> args = ap.parse_args(["--models", "main:badnets,fifth:lf-t2"])
    >>> model_specs(ap, args.models)
    [('main', 'badnets'), ('fifth', 'lf-t2')]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from zoo import FOLDERS


def parser(doc: str | None) -> argparse.ArgumentParser:
    """An argument parser with ``--models``, ``--threads`` and ``--render``; a probe adds its own options."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", help="comma-separated ZOO:NAME (required unless --render)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--render", action="store_true", help="only rewrite the Markdown from the JSON")
    return ap


def model_specs(ap: argparse.ArgumentParser, value: str | None) -> list[tuple[str, str]]:
    """``ZOO:NAME,...`` as pairs; a usage error (exit 2, one line) when missing or malformed."""
    if not value:
        ap.error("--models is required")
    specs = [tuple(s.split(":", 1)) for s in value.split(",")]
    if any(len(s) != 2 or s[0] not in FOLDERS or not s[1] for s in specs):
        ap.error(f"--models: give ZOO:NAME with ZOO one of {sorted(FOLDERS)}")
    return specs  # type: ignore[return-value]


def start(args: argparse.Namespace, path: Path, render: Callable[[dict[str, Any], Path], None]) -> bool:
    """Set up logging and threads; with ``--render`` rewrite ``path``'s Markdown and return True (nothing to run)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    torch.set_num_threads(args.threads)
    if args.render:
        render(json.loads(path.read_text()), path.with_suffix(".md"))
    return bool(args.render)
