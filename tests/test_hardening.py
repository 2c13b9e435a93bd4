"""Hardening: untrusted model files, bad inputs, interrupted runs, overwrite rules, determinism, provenance.

Every row of the table in ``docs/hardening.md`` has a test here: the exact message substring, exit status 2,
one line without a traceback, and no output file.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from otbr.cli.main import main
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from otbr import OtbrError
from otbr.attacks import create_attack
from otbr.models import ModelMeta, create_model, load_model, save_model
from otbr.models.io import state_mismatch, weights_sha256


# ---------------------------------------------------------------------------------------------- fixtures
class _Payload:
    """Unpickling this object calls ``open(marker, "w")``: it creates a file (no shell needed)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _meta(data: Path) -> ModelMeta:
    return ModelMeta(arch="tinycnn", arch_kwargs={"num_classes": 4, "in_channels": 1}, num_classes=4,
                     input_shape=(1, 8, 8), mean=(0.5,), std=(0.5,), dataset=f"npz:{data}",
                     attack=create_attack("badnets", target=0).config())


@pytest.fixture()
def files(tmp_path: Path) -> dict[str, Path]:
    """A tiny model (1×8×8, 4 classes), its npz test set, and bad variants of both."""
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(40, 1, 8, 8, generator=g) * 255).to(torch.uint8).numpy()
    y = (torch.arange(40) % 4).numpy()
    f: dict[str, Path] = {"data": tmp_path / "tiny.npz"}
    np.savez(f["data"], x=x, y=y)
    torch.manual_seed(0)
    f["model"] = save_model(create_model("tinycnn", num_classes=4, in_channels=1), tmp_path / "m.safetensors",
                            _meta(f["data"]))
    raw = f["model"].read_bytes()
    f["empty"] = tmp_path / "empty.safetensors"
    f["empty"].write_bytes(b"")
    f["truncated"] = tmp_path / "truncated.safetensors"
    f["truncated"].write_bytes(raw[: len(raw) // 2])
    f["corrupt"] = tmp_path / "corrupt.safetensors"
    f["corrupt"].write_bytes(bytes(range(256)) * 4)
    with safe_open(str(f["model"]), "pt") as fh:
        metadata = fh.metadata()
    state = load_file(str(f["model"]))
    for name, key, value in (("nan", "conv1.weight", float("nan")), ("inf", "fc.weight", float("inf"))):
        bad = dict(state)
        bad[key] = state[key].clone()
        bad[key].view(-1)[0] = value
        f[name] = tmp_path / f"{name}.safetensors"
        save_file(bad, str(f[name]), metadata=metadata)
    mism = {k: v for k, v in state.items() if k != "fc.bias"}
    mism["extra.weight"] = torch.zeros(2)
    mism["conv1.weight"] = torch.zeros(3, 1, 3, 3)
    f["mismatch"] = tmp_path / "mismatch.safetensors"
    save_file(mism, str(f["mismatch"]), metadata=metadata)
    f["other_arch"] = tmp_path / "other_arch.safetensors"
    meta_doc = json.loads(metadata["otbr"])
    meta_doc["arch"] = "resnet5000"
    save_file(state, str(f["other_arch"]), metadata={"otbr": json.dumps(meta_doc)})
    for name, arr_x, arr_y in (("empty_data", np.zeros((0, 1, 8, 8), np.uint8), np.zeros(0, np.int64)),
                               ("rgb_data", np.zeros((8, 3, 8, 8), np.uint8), np.arange(8) % 4),
                               ("ten_classes", x, np.arange(40) % 10)):
        f[name] = tmp_path / f"{name}.npz"
        np.savez(f[name], x=arr_x, y=arr_y)
    f["out"] = tmp_path / "out" / "d.safetensors"
    f["out"].parent.mkdir()
    return f


_LOG = re.compile(r"^[DIW] otbr[.\w]*: ")


def cli(*args: object):
    """Run ``otbr ARGS`` in-process; exceptions are caught as a user would see them."""
    return CliRunner().invoke(main, [str(a) for a in args])


def assert_one_line_error(result, message: str) -> str:
    """Exit 2, exactly one non-empty line (no traceback; log lines aside) containing ``message``."""
    lines = [ln for ln in result.output.splitlines() if ln.strip() and not _LOG.match(ln)]
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert len(lines) == 1, result.output
    assert lines[0].startswith("Error: ") and message in lines[0], lines[0]
    return lines[0]


def _no_outputs(folder: Path) -> None:
    assert list(folder.iterdir()) == [], sorted(p.name for p in folder.iterdir())


# ---------------------------------------------------------------------------------------------- pickles
def test_crafted_pickle_never_runs_in_library(tmp_path: Path) -> None:
    marker = tmp_path / "PWNED"
    evil = tmp_path / "evil.pt"
    torch.save({"state_dict": _Payload(str(marker))}, evil)
    assert not marker.exists()
    with pytest.raises(OtbrError, match=r"needs arbitrary unpickling.*io\.open.*--allow-pickle"):
        load_model(evil, arch="tinycnn", input_shape=(1, 8, 8))
    assert not marker.exists()
    # the payload is real: full unpickling (the opt-in) does run it
    with pytest.raises(OtbrError):
        load_model(evil, arch="tinycnn", input_shape=(1, 8, 8), allow_pickle=True)
    assert marker.exists()


@pytest.mark.parametrize("command", ["evaluate", "inspect", "defend otbr"])
def test_crafted_pickle_never_runs_through_cli(tmp_path: Path, command: str) -> None:
    marker = tmp_path / "PWNED"
    evil = tmp_path / "evil.pth"
    torch.save({"model": _Payload(str(marker))}, evil)
    out = tmp_path / "o.safetensors"
    extra = ["-o", out] if command.startswith("defend") else []
    res = cli(*command.split(), evil, "--arch", "tinycnn", "--input-shape", "1,8,8", *extra)
    line = assert_one_line_error(res, "needs arbitrary unpickling, which can run code (it references ")
    assert "io.open)" in line  # pickled as io.open or _io.open, depending on the Python version
    assert not marker.exists() and not out.exists()


def test_crafted_pickle_in_safetensors_disguise(tmp_path: Path) -> None:
    """A pickle named .safetensors is read as safetensors (never unpickled) and refused."""
    marker = tmp_path / "PWNED"
    evil = tmp_path / "evil.safetensors"
    torch.save({"w": _Payload(str(marker))}, evil)
    assert_one_line_error(cli("evaluate", evil), "not a readable safetensors file")
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------- bad model files
@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("empty", "model file is empty (0 bytes)"),
        ("truncated", "not a readable safetensors file"),
        ("corrupt", "not a readable safetensors file"),
        ("nan", "the weights hold conv1.weight: 1 NaN"),
        ("inf", "the weights hold fc.weight: 1 Inf"),
        ("mismatch", "missing: fc.bias; unexpected: extra.weight; shape mismatch: conv1.weight (file (3, 1, 3, 3) "
                     "vs model (8, 1, 3, 3))"),
        ("other_arch", "unknown architecture 'resnet5000'"),
    ],
)
def test_bad_model_file_is_one_line_and_writes_nothing(files: dict[str, Path], key: str, message: str) -> None:
    for args in (("evaluate", files[key]), ("defend", "otbr", files[key], "-o", files["out"], "--no-eval")):
        assert_one_line_error(cli(*args), message)
    _no_outputs(files["out"].parent)
    with pytest.raises(OtbrError):
        load_model(files[key])


def test_missing_model_file(files: dict[str, Path]) -> None:
    res = cli("defend", "otbr", files["out"].parent / "nope.safetensors", "-o", files["out"])
    assert_one_line_error(res, "model file not found")
    _no_outputs(files["out"].parent)


def test_bad_pt_files(tmp_path: Path) -> None:
    good = tmp_path / "ok.pt"
    torch.save(create_model("tinycnn").state_dict(), good)
    raw = good.read_bytes()
    (tmp_path / "trunc.pt").write_bytes(raw[: len(raw) // 2])
    (tmp_path / "junk.pt").write_bytes(bytes(range(200)))
    for name in ("trunc.pt", "junk.pt"):
        res = cli("evaluate", tmp_path / name, "--arch", "tinycnn", "--input-shape", "1,8,8")
        assert_one_line_error(res, "not a readable PyTorch file")


def test_mismatch_message_is_truncated() -> None:
    expected = {f"k{i}": torch.zeros(1) for i in range(12)}
    text = state_mismatch(expected, {"k0": torch.zeros(1)})
    assert text == "missing: k1, k2, k3, k4, k5, … (+6 more)"
    assert state_mismatch(expected, dict(expected)) == ""


def test_wrong_arch_kwargs_for_pt(tmp_path: Path) -> None:
    torch.save(create_model("tinycnn", num_classes=4, in_channels=1, width=8).state_dict(), tmp_path / "w.pt")
    res = cli("evaluate", tmp_path / "w.pt", "--arch", "tinycnn", "--input-shape", "1,8,8",
              "--arch-kwargs", '{"width": 4}')
    line = assert_one_line_error(res, "shape mismatch: conv1.weight (file (8, 1, 3, 3) vs model (4, 1, 3, 3))")
    assert "--arch-kwargs" in line


def test_input_shape_the_model_cannot_take(files: dict[str, Path]) -> None:
    res = cli("evaluate", files["model"], "--input-shape", "3,8,8", "--mean", "0.5,0.5,0.5", "--std", "0.5,0.5,0.5")
    assert_one_line_error(res, "model does not accept inputs of shape (3, 8, 8)")
    res = cli("evaluate", files["model"], "--input-shape", "3,8,8")
    assert_one_line_error(res, "3 input channels but 1 means and 1 stds")


def test_num_classes_contradicting_the_weights(files: dict[str, Path], tmp_path: Path) -> None:
    with safe_open(str(files["model"]), "pt") as fh:
        doc = json.loads(fh.metadata()["otbr"])
    doc["num_classes"] = 7
    lying = tmp_path / "lying.safetensors"
    save_file(load_file(str(files["model"])), str(lying), metadata={"otbr": json.dumps(doc)})
    assert_one_line_error(cli("evaluate", lying), "the model outputs 4 classes but its metadata says 7")


def test_save_refuses_non_finite_weights(tmp_path: Path) -> None:
    net = create_model("tinycnn", num_classes=4, in_channels=1)
    with torch.no_grad():
        net.fc.bias[0] = float("nan")
    with pytest.raises(OtbrError, match=r"refusing to write .*fc.bias: 1 NaN"):
        save_model(net, tmp_path / "x.safetensors", _meta(tmp_path / "d.npz"))
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------- bad datasets
@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("empty_data", "holds no images"),
        ("rgb_data", "has images (3, 8, 8), the model expects (1, 8, 8)"),
        ("ten_classes", "has 10 classes, the model outputs 4"),
        ("missing_data", "missing npz file"),
        ("unknown_name", "unknown dataset 'imagenet-99'"),
    ],
)
def test_bad_dataset(files: dict[str, Path], key: str, message: str) -> None:
    spec = "imagenet-99" if key == "unknown_name" else f"npz:{files.get(key, files['out'].parent / 'missing.npz')}"
    assert_one_line_error(cli("evaluate", files["model"], "--data", spec), message)
    res = cli("defend", "otbr", files["model"], "--eval-data", spec, "-o", files["out"])
    assert_one_line_error(res, message)
    _no_outputs(files["out"].parent)


def test_empty_clean_data_for_clean_unlearning(files: dict[str, Path]) -> None:
    res = cli("nwc", files["model"], "--mode", "clean", "--data", f"npz:{files['empty_data']}",
              "-o", files["out"].with_suffix(".csv"))
    assert_one_line_error(res, "holds no images")
    _no_outputs(files["out"].parent)


def test_poisoned_set_of_the_wrong_shape(files: dict[str, Path], tmp_path: Path) -> None:
    p = tmp_path / "p.npz"
    np.savez(p, x=np.zeros((3, 3, 8, 8), np.uint8), y=np.ones(3, np.int64), target=np.int64(0),
             attack=np.str_(json.dumps({"name": "badnets"})))
    assert_one_line_error(cli("evaluate", files["model"], "--poisoned", p), "poisoned set")


# ---------------------------------------------------------------------------------------------- option ranges
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("defend", "otbr", "{model}", "--gamma", "1.5"), "Invalid value for '--gamma': 1.5 is not in the range"),
        (("defend", "otbr", "{model}", "--gamma", "-0.1"), "Invalid value for '--gamma'"),
        (("defend", "otbr", "{model}", "--lam", "2"), "Invalid value for '--lam': 2.0 is not in the range 0<=x<=1"),
        (("fuse", "{model}", "{model}", "--lam", "-1"), "Invalid value for '--lam'"),
        (("nwc", "{model}", "--mode", "clean", "--clean-ratio", "0"), "Invalid value for '--clean-ratio': 0.0 is not"),
        (("nwc", "{model}", "--mode", "clean", "--clean-ratio", "1.5"), "Invalid value for '--clean-ratio'"),
        (("defend", "ulrl", "{model}", "--clean-ratio", "0"), "Invalid value for '--clean-ratio'"),
        (("defend", "ulrl", "{model}", "--clean-ratio", "-0.5"), "Invalid value for '--clean-ratio'"),
        (("defend", "ulrl", "{model}", "--clean-ratio", "1.5"), "Invalid value for '--clean-ratio': 1.5 is not"),
    ],
)
def test_out_of_range_options(files: dict[str, Path], args: tuple[str, ...], message: str) -> None:
    if args[:2] == ("defend", "ulrl") and "ulrl" not in cli("defend", "--help").output:
        pytest.skip("ulrl not in this build")
    out = files["out"].with_suffix(".csv") if args[0] == "nwc" else files["out"]
    res = cli(*[a.format(model=files["model"]) for a in args], "-o", out)
    line = assert_one_line_error(res, message)
    assert "--help" in line
    _no_outputs(files["out"].parent)


def test_clean_ratio_one_is_accepted(files: dict[str, Path]) -> None:
    res = cli("nwc", files["model"], "--mode", "clean", "--data", f"npz:{files['data']}", "--clean-ratio", "1",
              "-o", files["out"].with_suffix(".csv"))
    assert res.exit_code == 0, res.output


# ---------------------------------------------------------------------------------------------- output paths
def _unwritable_dir(tmp_path: Path) -> Path:
    """A folder this process cannot create files in (a read-only folder; as root, /sys)."""
    d = tmp_path / "ro"
    d.mkdir()
    d.chmod(0o500)
    for cand in (d, Path("/sys")):
        try:
            fd, name = tempfile.mkstemp(dir=cand)
        except OSError:
            return cand
        os.close(fd)
        os.unlink(name)
    pytest.skip("no unwritable folder available")


def test_unwritable_output_folder(files: dict[str, Path], tmp_path: Path) -> None:
    ro = _unwritable_dir(tmp_path)
    res = cli("defend", "otbr", files["model"], "-o", ro / "d.safetensors", "--no-eval")
    assert_one_line_error(res, f"cannot write to folder {ro}")
    res = cli("defend", "otbr", files["model"], "-o", files["out"], "--report", ro / "r.json", "--no-eval")
    assert_one_line_error(res, f"cannot write to folder {ro}")
    _no_outputs(files["out"].parent)


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("{out}/missing/d.safetensors", "output folder does not exist"),
        ("{model}/d.safetensors", "is not a folder"),
        ("{out}", "is a directory"),
        ("{model}", "output would overwrite the input model"),
    ],
)
def test_bad_output_path(files: dict[str, Path], target: str, message: str) -> None:
    before = files["model"].read_bytes()
    target = target.format(out=files["out"].parent, model=files["model"])
    if message == "is a directory":
        target = str(Path(target) / "sub.safetensors")
        Path(target).mkdir()
    res = cli("defend", "otbr", files["model"], "-o", target, "--force", "--no-eval")
    assert_one_line_error(res, message)
    assert files["model"].read_bytes() == before


def test_output_equal_to_input_through_a_symlink(files: dict[str, Path]) -> None:
    link = files["out"].parent / "link.safetensors"
    link.symlink_to(files["model"])
    res = cli("defend", "otbr", files["model"], "-o", link, "--force", "--no-eval")
    assert_one_line_error(res, "output would overwrite the input model")


def test_report_may_not_overwrite_the_input_or_output(files: dict[str, Path]) -> None:
    before = files["model"].read_bytes()
    res = cli("defend", "otbr", files["model"], "-o", files["out"], "--report", files["model"], "--force", "--no-eval")
    assert_one_line_error(res, "--report")
    assert "would overwrite the input" in res.output
    res = cli("defend", "otbr", files["model"], "-o", files["out"], "--report", files["out"], "--no-eval")
    assert_one_line_error(res, "--report and -o name the same file")
    assert files["model"].read_bytes() == before
    _no_outputs(files["out"].parent)


def test_existing_outputs_need_force(files: dict[str, Path], tmp_path: Path) -> None:
    for args, out in (
        (("defend", "otbr", files["model"], "--no-eval", "--steps", "1"), files["out"]),
        (("nwc", files["model"], "--steps", "1"), files["out"].with_suffix(".csv")),
        (("poison", "--attack", "badnets", "--data", f"npz:{files['data']}"), tmp_path / "p.npz"),
    ):
        out.write_bytes(b"precious")
        assert_one_line_error(cli(*args, "-o", out), f"{out} exists; pass --force to overwrite it")
        assert out.read_bytes() == b"precious"
        res = cli(*args, "-o", out, "--force")
        assert res.exit_code == 0, res.output
        assert out.read_bytes() != b"precious"
    report = tmp_path / "r.json"
    report.write_text("{}")
    res = cli("defend", "otbr", files["model"], "--no-eval", "--steps", "1", "-o", files["out"], "--force",
              "--report", report)
    assert res.exit_code == 0 and json.loads(report.read_text())["method"] == "otbr"


def test_train_refuses_existing_output_before_training(files: dict[str, Path]) -> None:
    files["out"].write_bytes(b"precious")
    res = cli("train", "--data", f"npz:{files['data']}", "--arch", "tinycnn", "--epochs", "1", "-o", files["out"])
    assert_one_line_error(res, "exists; pass --force to overwrite it")
    assert files["out"].read_bytes() == b"precious"
    res = cli("train", "--data", f"npz:{files['data']}", "--arch", "tinycnn", "--epochs", "1",
              "--clean-model", files["model"], "-o", files["model"])
    assert_one_line_error(res, "would overwrite the input")


# ---------------------------------------------------------------------------------------------- interrupts
def _interrupting(*_args, **_kwargs):
    raise KeyboardInterrupt


def test_ctrl_c_while_saving_model_leaves_nothing(files: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    import safetensors.torch

    def half_then_interrupt(state, filename, metadata=None):
        Path(filename).write_bytes(b"half a model")
        raise KeyboardInterrupt

    monkeypatch.setattr(safetensors.torch, "save_file", half_then_interrupt)
    res = cli("defend", "otbr", files["model"], "-o", files["out"], "--no-eval", "--steps", "1")
    assert res.exit_code == 130 and "interrupted" in res.output
    _no_outputs(files["out"].parent)
    with pytest.raises(KeyboardInterrupt):
        save_model(create_model("tinycnn"), files["out"], _meta(files["data"]))
    _no_outputs(files["out"].parent)


def test_ctrl_c_while_writing_report_leaves_nothing(files: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    from otbr import report

    def half_then_interrupt(self, text, *args, **kwargs):
        with open(self, "w") as fh:
            fh.write(text[:10])
        raise KeyboardInterrupt

    target = files["out"].parent / "r.json"
    monkeypatch.setattr(Path, "write_text", half_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        report.write_json(target, {"a": 1})
    _no_outputs(files["out"].parent)


def test_ctrl_c_while_writing_nwc_csv_leaves_nothing(files: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    from otbr.nwc import NWCScores

    real = NWCScores.to_csv

    def half_then_interrupt(self, path):
        real(self, path)
        raise KeyboardInterrupt

    monkeypatch.setattr(NWCScores, "to_csv", half_then_interrupt)
    res = cli("nwc", files["model"], "--steps", "1", "-o", files["out"].with_suffix(".csv"))
    assert res.exit_code == 130
    _no_outputs(files["out"].parent)


def test_sigterm_becomes_a_clean_interrupt() -> None:
    import signal

    from otbr.cli import main as main_module

    with pytest.raises(KeyboardInterrupt):
        main_module._terminate(signal.SIGTERM, None)


def test_written_files_get_normal_permissions(files: dict[str, Path]) -> None:
    mask = os.umask(0o022)
    try:
        path = save_model(create_model("tinycnn"), files["out"], _meta(files["data"]))
    finally:
        os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o644


# ---------------------------------------------------------------------------------------------- --debug and others
def test_debug_reraises(files: dict[str, Path]) -> None:
    res = CliRunner().invoke(main, ["--debug", "evaluate", str(files["empty"])])
    assert isinstance(res.exception, OtbrError) and "model file is empty" in str(res.exception)
    res = cli("evaluate", files["empty"])
    assert not isinstance(res.exception, OtbrError) and res.exit_code == 2


def test_unexpected_error_is_one_line_exit_1(files: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    import otbr.evaluation

    def boom(*_a, **_k):
        raise ZeroDivisionError("synthetic bug")

    monkeypatch.setattr(otbr.evaluation, "measure", boom)
    res = cli("evaluate", files["model"])
    lines = [ln for ln in res.output.splitlines() if ln.strip() and not _LOG.match(ln)]
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert lines == ["Error: unexpected ZeroDivisionError: synthetic bug (re-run with 'otbr --debug …' for the "
                     "traceback and report it)"]


# ---------------------------------------------------------------------------------------------- determinism, report
def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_otbr_defense_is_bit_identical_and_reported(files: dict[str, Path]) -> None:
    outs, reports = [], []
    for i in range(2):
        out, rep = files["out"].parent / f"d{i}.safetensors", files["out"].parent / f"r{i}.json"
        res = cli("defend", "otbr", files["model"], "--steps", "2", "--batch-size", "16", "--gamma", "0.2",
                  "--seed", "7", "--eval-limit", "16", "-o", out, "--report", rep)
        assert res.exit_code == 0, res.output
        outs.append(out)
        reports.append(json.loads(rep.read_text()))
    assert _sha(outs[0]) == _sha(outs[1])
    assert weights_sha256(load_model(outs[0])[0]) == weights_sha256(load_model(outs[1])[0])
    res = cli("defend", "otbr", files["model"], "--steps", "2", "--batch-size", "16", "--gamma", "0.2",
              "--seed", "8", "--no-eval", "-o", files["out"])
    assert res.exit_code == 0 and _sha(files["out"]) != _sha(outs[0])
    r = reports[0]
    assert r["seed"] == 7 and r["config"]["seed"] == 7
    assert r["input"]["sha256"] == _sha(files["model"])
    assert r["output"]["sha256"] == _sha(outs[0])
    assert r["output"]["weights_sha256"] == weights_sha256(load_model(outs[0])[0])
    env = r["environment"]
    assert env["device"].startswith("cuda" if torch.cuda.is_available() else "cpu")  # --device auto
    assert env["torch"] == torch.__version__ and env["otbr"] and env["python"]
    assert env["packages"]["numpy"] == np.__version__ and "safetensors" in env["packages"]


# ---------------------------------------------------------------------------------------------- review of 2026-11-24
def test_a_backdoorbench_file_naming_code_is_refused_before_any_import(files: dict[str, Path], tmp_path: Path) -> None:
    """``model_name`` in an ``attack_result.pt`` is the file's word, like a safetensors file's architecture: a
    ``file.py:Factory`` there must not be imported unless the user passes it as ``--arch``."""
    marker = tmp_path / "imported"
    (tmp_path / "evil.py").write_text(f"open({str(marker)!r}, 'w').close()\ndef Net(**kw):\n    raise SystemExit\n")
    pt = tmp_path / "attack_result.pt"
    torch.save({"model": load_file(str(files["model"])), "model_name": f"{tmp_path / 'evil.py'}:Net",
                "num_classes": 4}, pt)
    assert_one_line_error(cli("inspect", pt), "would import code")
    assert not marker.exists()


def _poisoned(path: Path, **arrays: object) -> Path:
    base = {"x": np.zeros((4, 1, 8, 8), np.uint8), "y": np.array([1, 2, 3, 1]), "target": np.int64(0)}
    np.savez(path, **{**base, **arrays})
    return path


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"x": np.full((4, 1, 8, 8), 2.0, np.float32)}, "float x must lie in [0, 1]"),
        ({"x": np.full((4, 1, 8, 8), 300, np.int16)}, "integer x must lie in 0..255"),
        ({"y": np.array([1, 2])}, "y must be 4 integer labels"),
        ({"y": np.array([1, 2, 3, 9])}, "has labels 1..9, the model has classes 0..3"),
        ({"target": np.array([0, 1])}, "target must be one integer"),
    ],
)
def test_a_malformed_poisoned_set_is_refused(files: dict[str, Path], tmp_path: Path, arrays: dict, message: str
                                             ) -> None:
    """A --poisoned file was read with a bare cast: float images became zeros and int16 wrapped (silently wrong
    ASR), and bad labels or targets ended in an unexpected error."""
    assert_one_line_error(cli("evaluate", files["model"], "--poisoned", _poisoned(tmp_path / "p.npz", **arrays)),
                          message)


def test_a_poisoned_set_in_float_images_is_quantised_and_broken_files_are_one_line(tmp_path: Path) -> None:
    from otbr.attacks import PoisonedSet

    x = np.random.default_rng(0).integers(0, 256, (4, 1, 8, 8)).astype(np.uint8)
    a = PoisonedSet.load_npz(_poisoned(tmp_path / "a.npz", x=x))
    b = PoisonedSet.load_npz(_poisoned(tmp_path / "b.npz", x=x.astype(np.float32) / 255))
    assert torch.equal(a.x, b.x) and a.target == b.target == 0
    trunc = tmp_path / "t.npz"
    trunc.write_bytes((tmp_path / "a.npz").read_bytes()[:100])
    np.save(tmp_path / "plain.npy", x)
    (tmp_path / "plain.npy").rename(tmp_path / "plain.npz")
    for bad, message in ((trunc, "cannot read as npz"), (tmp_path / "plain.npz", "not an .npz archive")):
        with pytest.raises(OtbrError, match=message):
            PoisonedSet.load_npz(bad)


def test_no_output_replaces_a_data_file_or_the_pruned_input(files: dict[str, Path], tmp_path: Path) -> None:
    data, before = files["data"], files["data"].read_bytes()
    assert_one_line_error(cli("poison", "--attack", "badnets", "--data", f"npz:{data}", "-o", data, "--force"),
                          "would overwrite the input")
    assert_one_line_error(cli("defend", "otbr", files["model"], "--gamma", "0.05", "--eval-data", f"npz:{data}",
                              "-o", files["out"], "--report", data, "--force"), "would overwrite the input")
    assert_one_line_error(cli("train", "--data", f"npz:{data}", "--arch", "tinycnn", "--attack", "badnets",
                              "--epochs", "1", "-o", files["out"], "--poisoned-out", data, "--force"),
                          "would overwrite the input")
    assert data.read_bytes() == before
    pruned = tmp_path / "pruned.safetensors"
    pruned.write_bytes(files["model"].read_bytes())
    for command in ("fuse", "repair"):
        assert_one_line_error(cli(command, pruned, files["model"], "--no-eval", "-o", pruned, "--force"),
                              "would overwrite the input")
    assert_one_line_error(cli("fuse", files["model"], files["model"], "--no-eval", "-o", files["out"]),
                          "PRUNED and ORIGINAL are the same file")
    _no_outputs(files["out"].parent)


def test_malformed_metadata_and_normalisation_are_one_line(files: dict[str, Path], tmp_path: Path) -> None:
    with safe_open(str(files["model"]), "pt") as fh:
        doc = json.loads(fh.metadata()["otbr"])
    state = load_file(str(files["model"]))
    for name, change in (("shape", {"input_shape": "1,8,8"}), ("arch", {"arch": 5}), ("std", {"std": [0.0]})):
        path = tmp_path / f"{name}.safetensors"
        save_file(state, str(path), metadata={"otbr": json.dumps({**doc, **change})})
        assert_one_line_error(cli("inspect", path), str(path))
    assert_one_line_error(cli("evaluate", files["model"], "--std", "nan"), "finite with positive stds")
    assert_one_line_error(cli("inspect", files["model"], "--input-shape", "1,nan,8"), "--input-shape needs three")
    bn = create_model("preactresnet18", num_classes=4, in_channels=1, width=2)
    sd = {k: v.clone() for k, v in bn.state_dict().items()}
    sd["layer1.0.bn1.running_var"][0] = -1.0
    meta = ModelMeta(arch="preactresnet18", arch_kwargs={"num_classes": 4, "in_channels": 1, "width": 2},
                     num_classes=4, input_shape=(1, 8, 8), mean=(0.5,), std=(0.5,))
    neg = save_model(bn, tmp_path / "neg.safetensors", meta)
    save_file(sd, str(neg), metadata={"otbr": meta.to_json()})
    assert_one_line_error(cli("inspect", neg), "negative BatchNorm running variances")


def test_clean_data_must_fit_the_model(files: dict[str, Path]) -> None:
    """Images of another shape, or labels beyond the model's classes, ended in an unexpected error (or a misleading
    'at least 2 images') inside the data-dependent defenses."""
    for method in ("ft", "ulrl", "tsbd"):
        if method not in cli("defend", "--help").output:
            continue
        assert_one_line_error(cli("defend", method, files["model"], "--data", f"npz:{files['rgb_data']}",
                                  "--clean-ratio", "1", "--no-eval", "-o", files["out"]),
                              "the model expects (1, 8, 8)" if method == "tsbd" else "do not fit the model")
        assert_one_line_error(cli("defend", method, files["model"], "--data", f"npz:{files['ten_classes']}",
                                  "--clean-ratio", "1", "--no-eval", "-o", files["out"]), "labels run 0..9")
    _no_outputs(files["out"].parent)


def test_poisoned_sets_get_normal_permissions(files: dict[str, Path], tmp_path: Path) -> None:
    mask = os.umask(0o022)
    try:
        res = cli("poison", "--attack", "badnets", "--data", f"npz:{files['data']}", "-o", tmp_path / "p.npz")
    finally:
        os.umask(mask)
    assert res.exit_code == 0, res.output
    assert (tmp_path / "p.npz").stat().st_mode & 0o777 == 0o644


def test_fuse_refuses_what_it_cannot_fuse_and_options_must_be_finite(files: dict[str, Path], tmp_path: Path) -> None:
    """Fusing a model with itself, with a model of another architecture, or from an empty or broken score file
    used to 'succeed' with the original unchanged or end in an unexpected error; NaN slipped through ranges."""
    copy_ = tmp_path / "copy.safetensors"
    copy_.write_bytes(files["model"].read_bytes())
    assert_one_line_error(cli("fuse", copy_, files["model"], "--no-eval", "-o", files["out"]), "no pruned neurons")
    other = save_model(create_model("tinycnn", num_classes=4, in_channels=1, width=4), tmp_path / "w4.safetensors",
                       ModelMeta(arch="tinycnn", arch_kwargs={"num_classes": 4, "in_channels": 1, "width": 4},
                                 num_classes=4, input_shape=(1, 8, 8), mean=(0.5,), std=(0.5,)))
    assert_one_line_error(cli("fuse", other, files["model"], "--no-eval", "-o", files["out"]),
                          "is not a pruned copy of")
    for text, message in (("", "holds no scores"), ("a,b\n1,2\n", "not an NWC score file"),
                          ("layer,index,nwc\nconv1,0,abc\n", "not an NWC score file"),
                          ("layer,index,nwc\nconv1,0,nan\n", "non-finite scores")):
        scores = tmp_path / "s.csv"
        scores.write_text(text)
        assert_one_line_error(cli("fuse", copy_, files["model"], "--scores", scores, "--no-eval", "-o",
                                  files["out"]), message)
    assert_one_line_error(cli("repair", copy_, files["model"], "--lr", "nan", "-o", files["out"]),
                          "'nan' is not a finite number")
    _no_outputs(files["out"].parent)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("--arch-kwargs", '{"width": -1}'), "cannot build tinycnn"),
        (("--arch-kwargs", '{"num_classes": 3}'), "num_classes 3 in the architecture arguments"),
        (("--arch-kwargs", '{"in_channels": 3}'), "in_channels 3 in the architecture arguments"),
        (("--attack", "blended", "--attack-kwargs", '{"alpha": "x"}'), "--attack-kwargs for blended"),
        (("--device", "mps"), "device 'mps' is not supported"),
        (("--lr", "inf"), "'inf' is not a finite number"),
    ],
)
def test_train_refuses_arguments_the_model_or_data_cannot_take(files: dict[str, Path], extra: tuple[str, ...],
                                                               message: str) -> None:
    res = cli("train", "--data", f"npz:{files['data']}", "--arch", "tinycnn", "--epochs", "1", *extra,
              "-o", files["out"])
    assert_one_line_error(res, message)
    _no_outputs(files["out"].parent)


def test_plot_paths_are_checked_before_any_work(files: dict[str, Path], tmp_path: Path) -> None:
    """A bad --plot suffix was found only after the whole sweep (and after `nwc` had written its CSV), an existing
    figure was overwritten without --force, and --plot without --sweep was ignored."""
    existing = tmp_path / "fig.png"
    existing.write_bytes(b"keep")
    csv_out = files["out"].with_suffix(".csv")
    assert_one_line_error(cli("nwc", files["model"], "-o", csv_out, "--plot", tmp_path / "h.txt"), "--plot must end in")
    assert_one_line_error(cli("defend", "otbr", files["model"], "--sweep", "0.05", "--plot", existing), "exists")
    assert_one_line_error(cli("defend", "otbr", files["model"], "--plot", tmp_path / "p.png", "-o", files["out"]),
                          "pass --sweep with it")
    assert existing.read_bytes() == b"keep"
    _no_outputs(files["out"].parent)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("defend", "otbr", "--gamma", "0.1", "--lean", "0.1"), "--lean has no effect without --gamma auto"),
        (("defend", "otbr", "--gamma", "0.1", "--gamma-grid", "0.1,0.2"), "--gamma-grid has no effect"),
        (("defend", "otbr", "--variant", "prune", "--lam", "0.3"), "--lam has no effect with --variant prune"),
        (("defend", "otbr", "--repair-gamma-cap", "0.1"), "--repair-gamma-cap has no effect without --repair"),
        (("defend", "otbr", "--gamma", "0.1", "--repair", "5", "--repair-gamma-cap", "0.1"),
         "--repair-gamma-cap has no effect without --gamma auto"),
        (("defend", "otbr", "--variant", "prune", "--repair", "5", "--solver", "sinkhorn"),
         "--solver has no effect with --variant prune"),
        (("defend", "otbr", "--no-eval", "--eval-limit", "10"), "--eval-limit has no effect with --no-eval"),
        (("defend", "tsbd", "--data", "npz:DATA", "--clean-count", "8", "--clean-ratio", "0.5"),
         "--clean-ratio has no effect beside --clean-count"),
        (("defend", "tsbd", "--data", "npz:DATA", "--finetune", "vanilla", "--alpha", "0.5"),
         "--alpha has no effect with --finetune vanilla"),
        (("defend", "tsbd", "--data", "npz:DATA", "--finetune", "none", "--ft-epochs", "3"),
         "--ft-epochs has no effect with --finetune none"),
        (("defend", "tsbd", "--data", "npz:DATA", "--neuron-ratio", "0.1", "--neuron-grid", "0.1"),
         "--neuron-grid has no effect without --neuron-ratio auto"),
        (("defend", "tsbd", "--data", "npz:DATA", "--neuron-ratio", "0.1", "--suspect-rule", "recall"),
         "--suspect-rule has no effect without --neuron-ratio auto"),
        (("defend", "ft", "--data", "npz:DATA", "--clean-count", "8", "--clean-ratio", "0.5"),
         "--clean-ratio has no effect beside --clean-count"),
        (("defend", "otbr", "--seed", str(2**64)), "is not in the range 0<=x<=4294967295"),
    ],
)
def test_options_that_would_be_ignored_are_refused(files: dict[str, Path], args: tuple[str, ...],
                                                   message: str) -> None:
    """An option the rest of the command line makes moot used to be accepted and silently ignored (the run then
    did something else than the user asked), and a seed past 2^64 ended in an unexpected error."""
    args = tuple(a.replace("DATA", str(files["data"])) for a in args)
    assert_one_line_error(cli(*args[:2], files["model"], *args[2:], "-o", files["out"]), message)
    _no_outputs(files["out"].parent)


def test_nwc_refuses_options_of_the_other_mode(files: dict[str, Path]) -> None:
    out = files["out"].with_suffix(".csv")
    assert_one_line_error(cli("nwc", files["model"], "--data", f"npz:{files['data']}", "-o", out),
                          "--data has no effect with --mode random")
    assert_one_line_error(cli("nwc", files["model"], "--mode", "clean", "--data", f"npz:{files['data']}",
                              "--steps", "3", "-o", out), "--steps has no effect with --mode clean")
    _no_outputs(files["out"].parent)


def test_compare_refuses_clean_data_options_with_only_data_free_defenses(files: dict[str, Path],
                                                                         tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    assert_one_line_error(cli("compare", files["model"], "--defenses", "otbr,clp", "--data", f"npz:{files['data']}",
                              "--out", out), "--data has no effect when every defense named is data-free")
    assert not out.exists()


def test_the_defaults_of_moot_options_are_not_refused(files: dict[str, Path]) -> None:
    """Only options given on the command line are refused: a fixed γ with every selection option at its default
    runs."""
    res = cli("defend", "otbr", files["model"], "--gamma", "0.1", "--variant", "prune", "--steps", "2",
              "--no-eval", "-o", files["out"])
    assert res.exit_code == 0, res.output
