"""The command line through click's CliRunner: list, inspect, evaluate and bad input."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from helpers import tiny_files
from otbr.cli.main import main


@pytest.fixture()
def tiny(tmp_path):
    return tiny_files(tmp_path, 40)


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_version_and_help():
    assert run("--version").output.startswith("otbr, version")
    out = run("--help").output
    for command in ("list", "inspect", "evaluate"):
        assert command in out


def test_list_json_names_registries():
    payload = json.loads(run("list", "--json").stdout)
    assert "preactresnet18" in payload["architectures"]
    assert "fashion-mnist" in payload["datasets"]
    assert "badnets" in payload["attacks"]
    assert "ssba" in payload["attacks_not_included"]


def test_inspect_lists_considered_layers(tiny):
    model, _ = tiny
    payload = json.loads(run("inspect", model, "--json").stdout)
    assert [layer["name"] for layer in payload["considered_layers"]] == ["conv1", "conv2"]
    assert payload["considered_neurons"] == 8 + 16
    assert payload["meta"]["attack"]["name"] == "badnets"
    assert "considered layers (2, 24 neurons)" in run("inspect", model).output


def test_evaluate_matches_library(tiny):
    from otbr.evaluation import evaluation_sets, measure
    from otbr.models import load_model

    model, _ = tiny
    result = run("evaluate", model, "--json")
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    net, meta = load_model(model)
    expected = measure(net, evaluation_sets(meta))
    assert payload["acc"] == pytest.approx(expected.acc)
    assert payload["asr"] == pytest.approx(expected.asr)
    assert payload["n_clean"] == 40 and payload["n_poisoned"] == 30  # 10 target-class images excluded
    text = run("evaluate", model).output
    assert "ACC" in text and "ASR" in text


def test_evaluate_with_exported_poisoned_set(tiny, tmp_path):
    model, data = tiny
    out = tmp_path / "p.npz"
    assert run("poison", "--attack", "blended", "--data", f"npz:{data}", "-o", out).exit_code == 0
    payload = json.loads(run("evaluate", model, "--poisoned", out, "--json").stdout)
    assert payload["poisoned"] == str(out) and payload["n_poisoned"] == 30


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("evaluate", "missing.safetensors"), "model file not found"),
        (("inspect", "{bad}"), "not a readable safetensors"),
        (("evaluate", "{model}", "--data", "nosuchset"), "unknown dataset"),
        (("evaluate", "{model}", "--arch-kwargs", "[1"), "--arch-kwargs must be a JSON object"),
    ],
)
def test_bad_input_is_one_line_without_traceback(tiny, tmp_path, args, message):
    model, _ = tiny
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"garbage")
    args = [str(a).format(model=model, bad=bad) for a in args]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], result.output
