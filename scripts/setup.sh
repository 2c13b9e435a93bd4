#!/usr/bin/env bash
# Prepare everything otbr needs on a fresh machine: a virtual environment with the
# pinned torch/torchvision, the package itself, and Fashion-MNIST from Debian.
# Idempotent: a second run only checks. Source it or run it.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${OTBR_VENV:-$here/.venv}"
py="${PYTHON:-python3.11}"
command -v "$py" >/dev/null 2>&1 || py=python3

if [ ! -x "$venv/bin/python" ]; then
    echo "[setup] creating virtual environment $venv" >&2
    "$py" -m venv "$venv"
fi
stamp="$venv/.otbr-installed"
want="$(cat "$here/setup.cfg" "$here/pyproject.toml" | sha256sum | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "[setup] installing otbr and its dependencies (torch 2.14.1, torchvision 0.29.1; ~2-5 min)" >&2
    free_gb=$(df -Pk "$venv" | awk 'NR==2 {print int($4 / 1048576)}')
    if [ "${free_gb:-0}" -lt 8 ]; then
        echo "[setup] warning: ${free_gb} GB free next to $venv; torch's install needs about 8 GB" >&2
    fi
    "$venv/bin/python" -m pip install -q --disable-pip-version-check torch==2.14.1 torchvision==0.29.1
    "$venv/bin/python" -m pip install -q --disable-pip-version-check -e "$here[test]"
    echo "$want" > "$stamp"
fi

fm=/usr/share/datasets/fashion-mnist
if [ ! -f "$fm/t10k-images-idx3-ubyte.gz" ] && [ -z "${OTBR_DATA_ROOT:-}" ]; then
    echo "[setup] installing Fashion-MNIST (Debian package dataset-fashion-mnist)" >&2
    if [ "$(id -u)" = 0 ]; then sudo=""; else sudo="sudo"; fi
    $sudo apt-get update -qq >/dev/null && $sudo apt-get install -y -qq dataset-fashion-mnist >/dev/null \
        || echo "[setup] could not install dataset-fashion-mnist; set OTBR_DATA_ROOT to a folder with Fashion-MNIST" >&2
fi
