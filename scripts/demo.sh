#!/usr/bin/env bash
# The main job on an embedded default, from a fresh clone: set everything up, take a small
# backdoored Fashion-MNIST model (shipped in benchmarks/zoo/, or trained on the spot if absent),
# clean it with OTBR using no data at all, and print ACC / ASR before and after.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$here/scripts/setup.sh"
venv="${OTBR_VENV:-$here/.venv}"
otbr="$venv/bin/otbr"
attack="${OTBR_DEMO_ATTACK:-badnets}"
out="$here/demo"
mkdir -p "$out"
model="$here/benchmarks/zoo/$attack.safetensors"
if [ ! -f "$model" ]; then
    model="$out/$attack.safetensors"
    if [ ! -f "$model" ]; then
        echo "[demo] training a backdoored PreAct-ResNet18 (width 16, $attack, 2 epochs, ~3 min on 2 cores)" >&2
        "$otbr" train --data fashion-mnist --arch preactresnet18 --width 16 --attack "$attack" --epochs 2 -o "$model"
    fi
fi
echo "[demo] model: $model" >&2
"$otbr" inspect "$model" | head -n 8
echo "[demo] OTBR, data-free: random-noise unlearning -> NWC pruning -> OT fusion (no data is read by the defense;" >&2
echo "[demo] the Fashion-MNIST test set and the model's recorded trigger are used only to measure before/after)" >&2
"$otbr" defend otbr "$model" -o "$out/defended.safetensors" --report "$out/report.json" --force
echo "[demo] defended model: $out/defended.safetensors   report: $out/report.json" >&2
