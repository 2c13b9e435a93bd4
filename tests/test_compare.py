"""``otbr.compare``: the grid, its resume, workers, and the CLI."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from otbr.attacks import create_attack
from otbr.compare import run_compare
from otbr.errors import OtbrError
from otbr.models import ModelMeta, Normalized, create_model, save_model

SIDE, CLASSES = 8, 4
FAST = {"ft": {"epochs": 1, "batch_size": 16}, "ulrl": {"unlearn_epochs": 1, "relearn_epochs": 1, "batch_size": 16}}


@pytest.fixture()
def zoo(tmp_path):
    """Two tiny model files whose metadata names an 8×8 npz dataset and a BadNets attack."""
    rng = np.random.default_rng(0)
    data = tmp_path / "tiny.npz"
    np.savez(data, x_train=rng.integers(0, 256, (80, 1, SIDE, SIDE), dtype=np.uint8),
             y_train=rng.integers(0, CLASSES, 80), x_test=rng.integers(0, 256, (40, 1, SIDE, SIDE), dtype=np.uint8),
             y_test=rng.integers(0, CLASSES, 40))
    paths = []
    for i, name in enumerate(("a", "b")):
        torch.manual_seed(i)
        net = Normalized(create_model("tinycnn", num_classes=CLASSES, in_channels=1), (0.5,), (0.25,))
        meta = ModelMeta(arch="tinycnn", arch_kwargs={"num_classes": CLASSES, "in_channels": 1},
                         num_classes=CLASSES, input_shape=(1, SIDE, SIDE), mean=(0.5,), std=(0.25,),
                         dataset=f"npz:{data}", attack=create_attack("badnets").config())
        paths.append(tmp_path / f"{name}.safetensors")
        save_model(net, paths[-1], meta)
    return {"data": f"npz:{data}", "models": [str(p) for p in paths], "dir": tmp_path}


def test_grid_rows_files_and_resume(zoo):
    out = zoo["dir"] / "cmp"
    kw = {"out_dir": out, "data": zoo["data"], "overrides": {"ft": FAST["ft"]}}
    res = run_compare(zoo["models"][:1], ["clp", "ft"], **kw)
    assert [r["defense"] for r in res.rows] == ["original", "clp", "ft"]
    assert res.ran == 3 and res.reused == 0
    modes = {r["defense"]: r["mode"] for r in res.rows}
    assert modes == {"original": "-", "clp": "data-free", "ft": "data-dependent"}
    ft = json.loads((out / "cells" / "a__ft.json").read_text())
    assert ft["data_used"].startswith("clean subset") and ft["ratio"] == 0.05 and "der" in ft
    assert ft["environment"]["torch"] == torch.__version__ and ft["environment"]["finished"][:2] == "20"
    for suffix in ("md", "csv", "json", "png"):
        assert (out / f"compare.{suffix}").is_file()
    mtimes = {p.name: p.stat().st_mtime_ns for p in (out / "cells").iterdir()}

    again = run_compare(zoo["models"][:1], ["clp", "ft"], **kw, device="cpu")  # the default, said explicitly
    assert again.ran == 0 and again.reused == 3
    assert {p.name: p.stat().st_mtime_ns for p in (out / "cells").iterdir()} == mtimes
    assert again.rows == res.rows

    changed = run_compare(zoo["models"][:1], ["clp", "ft"], **{**kw, "overrides": {"ft": {**FAST["ft"], "lr": 0.02}}})
    assert changed.ran == 1  # only the cell whose settings changed runs again


def test_resume_follows_the_model_bytes_not_its_path_or_mtime(zoo, monkeypatch):
    out = zoo["dir"] / "cmp2"
    first = run_compare(zoo["models"][:1], ["clp"], out_dir=out, plot=False)
    assert first.ran == 2
    # a fresh clone: the same bytes, a new modification time, the path spelled relative to another folder
    path = zoo["dir"] / "a.safetensors"
    os.utime(path, (1e9, 1e9))
    monkeypatch.chdir(zoo["dir"])
    again = run_compare(["a.safetensors"], ["clp"], out_dir=out, plot=False)
    assert again.ran == 0 and again.reused == 2
    # different bytes under the same name: everything runs again
    path.write_bytes(Path(zoo["models"][1]).read_bytes())
    assert run_compare(["a.safetensors"], ["clp"], out_dir=out, plot=False).ran == 2


def test_an_option_added_later_keeps_old_cells_at_its_neutral_value(zoo, monkeypatch):
    """A defense that gains an option (here CLP's made-up ``later``) keeps its earlier cells while the option
    holds the value listed in LATER_OPTIONS (the one that reproduces them); any other value runs them again."""
    import otbr.compare as compare
    from otbr.defenses.clp import CLP

    out = zoo["dir"] / "later"
    assert run_compare(zoo["models"][:1], ["clp"], out_dir=out, plot=False).ran == 2
    config = CLP.config
    monkeypatch.setattr(compare, "LATER_OPTIONS", {"clp": {"later": 1}})
    monkeypatch.setattr(CLP, "config", lambda self: {**config(self), "later": 1})
    assert run_compare(zoo["models"][:1], ["clp"], out_dir=out, plot=False).ran == 0
    monkeypatch.setattr(CLP, "config", lambda self: {**config(self), "later": 2})
    assert run_compare(zoo["models"][:1], ["clp"], out_dir=out, plot=False).ran == 1


def test_arguments_pinning_an_earlier_default_key_as_if_not_given(zoo, monkeypatch):
    """Cells made before a default changed are reused when the run pins the earlier behaviour with an argument
    listed in EARLIER_KWARGS (here CLP's u = 3, as if 3 were an earlier default); another value runs them again."""
    import otbr.compare as compare

    out = zoo["dir"] / "pinned"
    assert run_compare(zoo["models"][:1], ["clp"], out_dir=out, plot=False).ran == 2
    assert run_compare(zoo["models"][:1], ["clp"], out_dir=out, overrides={"clp": {"u": 3.0}}, plot=False).ran == 1
    monkeypatch.setattr(compare, "EARLIER_KWARGS", {"clp": {"u": 3.0}})
    out = zoo["dir"] / "pinned2"
    assert run_compare(zoo["models"][:1], ["clp"], out_dir=out, plot=False).ran == 2
    assert run_compare(zoo["models"][:1], ["clp"], out_dir=out, overrides={"clp": {"u": 3.0}}, plot=False).ran == 0
    assert run_compare(zoo["models"][:1], ["clp"], out_dir=out, overrides={"clp": {"u": 4.0}}, plot=False).ran == 1


def test_model_overrides_change_only_that_models_cells(zoo):
    """Hyperparameters given for one model re-run its cells alone (the others are reused) and are checked like the
    defense-wide ones."""
    out = zoo["dir"] / "per-model"
    assert run_compare(zoo["models"], ["clp"], out_dir=out, plot=False).ran == 4
    res = run_compare(zoo["models"], ["clp"], out_dir=out, model_overrides={"b": {"clp": {"u": 4.0}}}, plot=False)
    assert res.ran == 1 and res.reused == 3
    b = json.loads((out / "cells" / "b__clp.json").read_text())
    assert b["config"]["u"] == 4.0
    assert json.loads((out / "cells" / "a__clp.json").read_text())["config"]["u"] != 4.0
    with pytest.raises(OtbrError, match=r"model\(s\) c, which are not compared"):
        run_compare(zoo["models"], ["clp"], out_dir=out, model_overrides={"c": {"clp": {"u": 4.0}}}, plot=False)
    with pytest.raises(OtbrError, match="no hyperparameter"):
        run_compare(zoo["models"], ["clp"], out_dir=out, model_overrides={"b": {"clp": {"nope": 1}}}, plot=False)


def test_without_data_data_dependent_defenses_are_skipped(zoo):
    res = run_compare(zoo["models"][:1], ["clp", "ft"], out_dir=zoo["dir"] / "nodata")
    assert [r["defense"] for r in res.rows] == ["original", "clp"]
    assert any("ft" in n and "skipped" in n for n in res.notes)
    with pytest.raises(OtbrError, match="clean data"):
        run_compare(zoo["models"][:1], ["ft", "ulrl"], out_dir=zoo["dir"] / "nodata2")
    with pytest.raises(OtbrError, match="unknown defense"):
        run_compare(zoo["models"][:1], ["nope"], out_dir=zoo["dir"] / "x")
    with pytest.raises(OtbrError, match="unknown device"):
        run_compare(zoo["models"][:1], ["clp"], out_dir=zoo["dir"] / "x", device="tpu")


def test_workers_process_pool(zoo):
    # one model: the original cell runs here, the two defense cells in one pool of two spawned workers
    res = run_compare(zoo["models"][:1], ["clp", "ulrl"], out_dir=zoo["dir"] / "pool", data=zoo["data"], workers=2,
                      clean_ratio=0.5, overrides={"ulrl": FAST["ulrl"]}, plot=False)
    assert [(r["model"], r["defense"]) for r in res.rows] == [("a", "original"), ("a", "clp"), ("a", "ulrl")]
    assert res.ran == 3 and all(r["acc"] is not None for r in res.rows)


def test_a_failing_cell_is_reported_not_fatal(zoo):
    # 1 % of 80 training images is one image: ULRL refuses; the grid goes on and says so
    res = run_compare(zoo["models"][:1], ["clp", "ulrl"], out_dir=zoo["dir"] / "fail", data=zoo["data"], plot=False)
    assert [r["defense"] for r in res.rows] == ["original", "clp", "ulrl"]
    assert res.rows[-1]["acc"] is None and "FAILED" in res.rows[-1]["notes"]
    assert not (zoo["dir"] / "fail" / "cells" / "a__ulrl.json").exists()


def test_cli_compare_prints_table_and_refuses_without_data(zoo):
    from otbr.cli.main import main

    runner = CliRunner()
    res = runner.invoke(main, ["compare", *zoo["models"][:1], "--defenses", "ft", "--out", str(zoo["dir"] / "c")])
    assert res.exit_code == 2 and "clean data" in res.output and len(res.output.strip().splitlines()) == 1
    res = runner.invoke(main, ["compare", *zoo["models"][:1], "--defenses", "clp,ft", "--out", str(zoo["dir"] / "c"),
                               "--no-plot"])
    assert res.exit_code == 0, res.output
    assert "clp" in res.output and "skipped without --data" in res.output
    assert "mean over models" not in res.output  # one model: nothing to average
    res = runner.invoke(main, ["compare", *zoo["models"], "--defenses", "clp", "--out", str(zoo["dir"] / "c"),
                               "--no-plot"])
    assert res.exit_code == 0, res.output
    summary = res.output.split("mean over models")[1].splitlines()
    assert "worst_asr" in summary[1] and "asr_le_10" in summary[1]
    assert any(line.split()[:1] == ["clp"] and "/2" in line for line in summary)


def test_summary_and_pivot_from_rows() -> None:
    """Means, worst ASR and the removed count come from the rows; a missing cell shows as "-" in the pivot."""
    from otbr.compare import pivot_rows, summary_rows

    def row(model: str, defense: str, acc: float, asr: float, der: float | None) -> dict:
        return {"model": model, "defense": defense, "mode": "data-free" if defense == "clp" else "-", "acc": acc,
                "asr": asr, "ra": 0.0, "der": der, "wall_s": 1.0}

    rows = [row("a", "original", 90.0, 100.0, None), row("b", "original", 80.0, 99.0, None),
            row("a", "clp", 88.0, 4.0, 97.0), row("b", "clp", 70.0, 60.0, 64.5)]
    summary = {s["defense"]: s for s in summary_rows(rows, ["clp", "ft"])}
    assert set(summary) == {"original", "clp"}
    clp = summary["clp"]
    assert clp["models"] == 2 and clp["acc"] == pytest.approx(79.0) and clp["der"] == pytest.approx(80.75)
    assert clp["worst_asr"] == 60.0 and clp["asr_le_10"] == "1/2"
    assert summary["original"]["asr_le_10"] is None
    pivot, cols = pivot_rows(rows[:3], ["clp"])
    assert cols == ["defense", "mode", "a", "b"]
    assert pivot[1] == {"defense": "clp", "mode": "data-free", "a": "88.00 / 4.00 / 97.00", "b": "-"}
    assert pivot[0]["a"] == "90.00 / 100.00 / -"


def test_a_missing_model_leaves_no_output_folder_behind(tmp_path):
    out = tmp_path / "cmp"
    with pytest.raises(OtbrError, match="model file not found"):
        run_compare([tmp_path / "nope.safetensors"], ["clp"], out_dir=out)
    assert not out.exists()
