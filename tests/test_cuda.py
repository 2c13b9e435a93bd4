"""The CUDA paths: every defense, fusion, repair and the CLI on a GPU (skipped where there is none).

CI has no GPU, so these run only on a machine with one (``pytest tests/test_cuda.py``). They check what the CPU
tests cannot: that each stage keeps the model and its working tensors on the GPU, that CPU-side inputs (data
subsets, masks, scores) are moved where they are needed, that the deterministic stages (fusion, metrics) give the
CPU's answer, and that the tiny backdoor is removed on the GPU under the same bounds as on the CPU.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
from click.testing import CliRunner
from helpers import CLASSES, SIDE, acc_asr, tiny_files, tiny_settings
from torch import nn

from otbr.defenses import create_defense, list_defenses
from otbr.defenses.otbr import OTBR
from otbr.defenses.tsbd import TSBD
from otbr.fusion import fuse
from otbr.layers import considered_layers
from otbr.metrics import accuracy
from otbr.models import load_model
from otbr.pruning import global_topk, prune_neurons
from otbr.repair import repair

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

CUDA = torch.device("cuda")

#: small settings per defense so that every registered one runs in about a second
TINY = tiny_settings(SIDE, CLASSES)


def _on(model: nn.Module, device: torch.device) -> bool:
    return all(t.device.type == device.type for t in [*model.parameters(), *model.buffers()])


def _finite(model: nn.Module) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in model.state_dict().values() if t.is_floating_point())


@pytest.mark.parametrize("name", sorted(list_defenses()))
def test_every_defense_runs_on_the_gpu(name, backdoored) -> None:
    """``device="cuda"`` with a CPU model and CPU data: the result lives on the GPU, is finite, and the input model
    stays on the CPU, untouched."""
    net, _, clean = backdoored
    before = copy.deepcopy(net.state_dict())
    defense = create_defense(name, progress=False, device="cuda", **TINY.get(name, {}))
    data = clean if list_defenses()[name].needs == "clean" else None
    res = defense.run(net, data)
    assert _on(res.model, CUDA) and _finite(res.model)
    assert _on(net, torch.device("cpu")) and all(torch.equal(v, before[k]) for k, v in net.state_dict().items())
    assert res.model(clean[0][:4].to(CUDA)).shape == (4, CLASSES)


def test_fusion_on_the_gpu_gives_the_cpu_answer(backdoored) -> None:
    """Fusion is deterministic (exact OT on float64): the GPU's fused weights equal the CPU's to float32 rounding."""
    net = backdoored[0]
    gen = torch.Generator().manual_seed(0)
    scores = {n: torch.rand(m.weight.shape[0], generator=gen, dtype=torch.float64)
              for n, m in considered_layers(net.net)}
    masks = global_topk(scores, 0.25)
    pruned = prune_neurons(net, masks)
    cpu = fuse(pruned, net, scores, masks=masks).model
    gpu = fuse(copy.deepcopy(pruned).to(CUDA), copy.deepcopy(net).to(CUDA),
               {k: v.to(CUDA) for k, v in scores.items()}, masks={k: v.to(CUDA) for k, v in masks.items()}).model
    assert _on(gpu, CUDA)
    sc, sg = cpu.state_dict(), gpu.state_dict()
    for k in sc:
        assert torch.allclose(sc[k].double(), sg[k].cpu().double(), atol=1e-5, rtol=1e-5), k
    x = backdoored[1][0][:256]
    assert abs(accuracy(cpu, x, backdoored[1][1][:256]) - accuracy(gpu, x, backdoored[1][1][:256])) <= 1 / 256


def test_otbr_removes_the_tiny_backdoor_on_the_gpu(backdoored) -> None:
    """The CPU test's bound on the GPU: sweeping γ ∈ {5, 10, 15} %, some γ brings the ASR to ≤ 20 % with ACC down
    by at most 5 points (the noise is drawn on the GPU, so the run differs from the CPU's)."""
    net, (xt, yt), _ = backdoored
    acc0, asr0 = acc_asr(net, xt, yt)
    assert acc0 >= 0.95 and asr0 >= 0.90
    rows = [(g, *acc_asr(fused.cpu(), xt, yt)) for g, _, fused in
            OTBR(input_shape=(1, SIDE, SIDE), device="cuda", progress=False).sweep(net, [0.05, 0.10, 0.15])]
    assert any(asr <= 0.20 and acc >= acc0 - 0.05 for _, acc, asr in rows), rows


def test_otbr_auto_choice_and_repair_run_on_the_gpu(backdoored) -> None:
    """The automatic γ (BN inversions, probe, candidate scoring) and the repair stage on the GPU: the chosen model
    and the repaired one stay on the GPU, and the guarded repair keeps the tiny backdoor out (ASR ≤ 5 %, as on the
    CPU) with every pruned neuron still zero."""
    net, (xt, yt), _ = backdoored
    res = OTBR(gamma="auto", input_shape=(1, SIDE, SIDE), device="cuda", progress=False).run(net)
    assert _on(res.model, CUDA) and res.info["auto"]["chosen"] in [c["value"] for c in res.info["auto"]["candidates"]]
    gpu_net = copy.deepcopy(net).to(CUDA)
    d = OTBR(gamma=0.2, steps=5, batch_size=64, input_shape=(1, SIDE, SIDE), variant="prune", progress=False)
    masks = global_topk(d.scores(gpu_net), 0.2)
    pruned = prune_neurons(gpu_net, masks)
    out = repair(pruned, gpu_net, input_shape=(1, SIDE, SIDE), suspect=0, synthetic=512, steps=300, masks=masks,
                 check_budget=0.1, progress=False)
    assert _on(out.model, CUDA) and _finite(out.model)
    acc, asr = acc_asr(out.distilled.cpu(), xt, yt)
    assert asr <= 0.05, (acc, asr)
    mods = dict(out.distilled.net.named_modules())
    assert all(float(mods[n].weight.detach()[m.cpu()].abs().sum()) == 0 for n, m in masks.items())


def test_tsbd_removes_the_tiny_backdoor_on_the_gpu(backdoored) -> None:
    """The CPU test's bound on the GPU: TSBD at the published defaults on 200 clean CPU images brings the ASR to
    ≤ 20 % with ACC down by at most 5 points."""
    net, (xt, yt), clean = backdoored
    acc0, _ = acc_asr(net, xt, yt)
    res = TSBD(neuron_ratio=0.1, batch_size=32, device="cuda", progress=False).run(net, clean)
    assert _on(res.model, CUDA)
    acc, asr = acc_asr(res.model.cpu(), xt, yt)
    assert asr <= 0.20 and acc >= acc0 - 0.05, (acc0, acc, asr)


def test_cli_defend_and_repair_with_device_cuda(tmp_path) -> None:
    """``--device cuda`` end to end: the report says cuda, and the written files load on the CPU."""
    from otbr.cli.main import main

    model, _ = tiny_files(tmp_path, 60)
    out, report = tmp_path / "o.safetensors", tmp_path / "r.json"
    res = CliRunner().invoke(main, ["defend", "otbr", str(model), "--gamma", "0.2", "--steps", "2", "--device",
                                    "cuda", "-o", str(out), "--report", str(report)])
    assert res.exit_code == 0, res.output
    assert json.loads(report.read_text())["environment"]["device"].startswith("cuda")
    fused, _ = load_model(out, device=torch.device("cpu"))
    assert _on(fused, torch.device("cpu"))
    pruned = tmp_path / "p.safetensors"
    res = CliRunner().invoke(main, ["defend", "otbr", str(model), "--gamma", "0.2", "--steps", "2", "--variant",
                                    "prune", "--device", "cuda", "-o", str(pruned)])
    assert res.exit_code == 0, res.output
    rep = tmp_path / "rep.safetensors"
    res = CliRunner().invoke(main, ["repair", str(pruned), str(model), "--steps", "3", "--synthetic", "16",
                                    "--synthetic-steps", "2", "--no-eval", "--device", "cuda", "-o", str(rep)])
    assert res.exit_code == 0, res.output
    assert _on(load_model(rep, device=torch.device("cpu"))[0], torch.device("cpu"))


def test_compare_grid_on_the_gpu_is_keyed_apart_from_the_cpu(tmp_path) -> None:
    """``run_compare(device="cuda")``: cells run on the GPU (their environment says so) and do not reuse the CPU
    cells of the same folder, nor the CPU those of the GPU."""
    from otbr.compare import run_compare

    model, data = tiny_files(tmp_path, 60)
    kw = {"out_dir": tmp_path / "cmp", "data": f"npz:{data}", "overrides": {"ft": {"epochs": 1, "batch_size": 16}},
          "plot": False}
    cpu = run_compare([str(model)], ["clp", "ft"], **kw)
    gpu = run_compare([str(model)], ["clp", "ft"], **kw, device="cuda")
    assert cpu.ran == 3 and gpu.ran == 3 and gpu.reused == 0
    cells = [json.loads(p.read_text()) for p in (tmp_path / "cmp" / "cells").glob("m__*.json")]
    assert len(cells) == 3 and all(c["environment"]["device"].startswith("cuda") for c in cells)
    assert json.loads((tmp_path / "cmp" / "compare.json").read_text())["settings"]["device"].startswith("cuda")
    assert run_compare([str(model)], ["clp", "ft"], **kw, device="cuda").reused == 3
