"""Property-based tests (hypothesis): loaders round-trip, atomic writes, and OT fusion over random layer stacks.

Examples are few and tiny (the CI machine is a shared 2-core CPU); ``derandomize`` keeps runs reproducible.
"""

from __future__ import annotations

import copy
import gzip
import struct
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from torch import nn

from otbr import OtbrError
from otbr.atomic import atomic_path
from otbr.data import read_idx, read_npz
from otbr.fusion import _marginal, fuse
from otbr.models import ModelMeta, Normalized, create_model, load_model, save_model, unwrap
from otbr.pruning import global_topk, prune_neurons

SETTINGS = settings(max_examples=15, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


# ---------------------------------------------------------------------------------------------- npz
@st.composite
def npz_images(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, str]:
    """NCHW images in one of the accepted dtypes, and the layout to store them in."""
    n = draw(st.integers(1, 4))
    c = draw(st.sampled_from([1, 3]))
    h, w = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    kind = draw(st.sampled_from(["uint8", "int16", "int64", "float32", "float64"]))
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    if kind.startswith("float"):
        x = rng.random((n, c, h, w)).astype(kind)
    else:
        x = rng.integers(0, 256, size=(n, c, h, w)).astype(kind)
    layouts = ["nchw", "nhwc"] + (["nhw"] if c == 1 else [])
    return x, rng.integers(0, 5, size=n), draw(st.sampled_from(layouts))


def _recoverable(x: np.ndarray, layout: str) -> bool:
    """The documented rule: the channel axis is the one of axes 1 and 3 of size 1 or 3 (smaller; NCHW on a tie)."""
    c, h, w = x.shape[1:]
    if layout == "nchw":
        return not (w in (1, 3) and w < c)
    if layout == "nhwc":
        return not (h in (1, 3) and h <= c)
    return True


@SETTINGS
@given(data=npz_images(), label_dtype=st.sampled_from(["uint8", "int32", "int64"]), with_classes=st.booleans())
def test_npz_round_trip(tmp_path: Path, data: tuple[np.ndarray, np.ndarray, str], label_dtype: str,
                        with_classes: bool) -> None:
    x, y, layout = data
    assume(_recoverable(x, layout))
    stored = {"nchw": x, "nhwc": x.transpose(0, 2, 3, 1), "nhw": x[:, 0]}[layout]
    arrays = {"x": stored, "y": y.astype(label_dtype)}
    if with_classes:
        arrays["classes"] = np.array([f"c{i}" for i in range(5)])
    with tempfile.TemporaryDirectory(dir=tmp_path) as d:
        path = Path(d) / "d.npz"
        np.savez(path, **arrays)
        ds = read_npz(path)
    assert ds.input_shape == x.shape[1:]
    assert ds.x.dtype == (torch.float32 if x.dtype.kind == "f" else torch.uint8)
    np.testing.assert_array_equal(ds.x.numpy(), x.astype(ds.x.numpy().dtype))
    assert ds.y.dtype == torch.int64 and ds.y.tolist() == y.tolist()
    assert ds.num_classes == (5 if with_classes else int(y.max()) + 1)
    images = ds.images()
    assert images.dtype == torch.float32 and float(images.min()) >= 0 and float(images.max()) <= 1


@SETTINGS
@given(bad=st.sampled_from(["negative", "above255", "float_above1", "nan", "labels_short", "bool"]))
def test_npz_rejects_out_of_range(tmp_path: Path, bad: str) -> None:
    x: np.ndarray = np.zeros((2, 1, 4, 4), np.uint8)
    y = np.array([0, 1])
    if bad == "negative":
        x = x.astype(np.int16) - 1
    elif bad == "above255":
        x = x.astype(np.int32) + 256
    elif bad == "float_above1":
        x = x.astype(np.float32) + 1.5
    elif bad == "nan":
        x = np.full((2, 1, 4, 4), np.nan, np.float32)
    elif bad == "labels_short":
        y = np.array([0])
    else:
        x = x.astype(bool)
    with tempfile.TemporaryDirectory(dir=tmp_path) as d:
        np.savez(Path(d) / "b.npz", x=x, y=y)
        with pytest.raises(OtbrError):
            read_npz(Path(d) / "b.npz")


# ---------------------------------------------------------------------------------------------- IDX
_IDX_CODES = {"u1": 0x08, "i1": 0x09, ">i2": 0x0B, ">i4": 0x0C, ">f4": 0x0D, ">f8": 0x0E}


@SETTINGS
@given(dtype=st.sampled_from(sorted(_IDX_CODES)), shape=st.lists(st.integers(0, 5), min_size=1, max_size=4),
       gz=st.booleans(), seed=st.integers(0, 2**16))
def test_idx_write_read_round_trip(tmp_path: Path, dtype: str, shape: list[int], gz: bool, seed: int) -> None:
    rng = np.random.default_rng(seed)
    arr = (rng.standard_normal(shape) * 100).astype(dtype)
    raw = struct.pack(">BBBB", 0, 0, _IDX_CODES[dtype], len(shape)) + struct.pack(f">{len(shape)}I", *shape)
    raw += arr.tobytes()
    with tempfile.TemporaryDirectory(dir=tmp_path) as d:
        path = Path(d) / "a.idx"
        path.write_bytes(gzip.compress(raw) if gz else raw)
        out = read_idx(path)
        assert out.shape == tuple(shape) and out.dtype == np.dtype(dtype).newbyteorder("=")
        np.testing.assert_array_equal(out, arr)
        if raw[4 + 4 * len(shape):]:  # a file cut short is refused, never misread
            path.write_bytes(raw[:-1])
            with pytest.raises(OtbrError, match="IDX header says"):
                read_idx(path)


# ---------------------------------------------------------------------------------------------- model files
@SETTINGS
@given(width=st.integers(1, 6), classes=st.integers(2, 6), channels=st.sampled_from([1, 3]),
       size=st.integers(4, 10), seed=st.integers(0, 2**16))
def test_model_file_round_trip(tmp_path: Path, width: int, classes: int, channels: int, size: int,
                               seed: int) -> None:
    torch.manual_seed(seed)
    net = create_model("tinycnn", num_classes=classes, in_channels=channels, width=width)
    for p in net.parameters():
        nn.init.normal_(p)
    meta = ModelMeta(arch="tinycnn", arch_kwargs={"num_classes": classes, "in_channels": channels, "width": width},
                     num_classes=classes, input_shape=(channels, size, size), mean=(0.5,) * channels,
                     std=(0.25,) * channels, seed=seed)
    with tempfile.TemporaryDirectory(dir=tmp_path) as d:
        path = save_model(net, Path(d) / "m.safetensors", meta)
        first = path.read_bytes()
        save_model(net, path, meta)
        assert path.read_bytes() == first  # no timestamp: same weights and metadata, same bytes
        model, back = load_model(path)
        assert sorted(p.name for p in Path(d).iterdir()) == ["m.safetensors"]  # no temporary file left
    assert back.input_shape == meta.input_shape and back.num_classes == classes and back.seed == seed
    for k, v in net.state_dict().items():
        assert torch.equal(unwrap(model).state_dict()[k], v)


@SETTINGS
@given(fail=st.sampled_from([None, ValueError, KeyboardInterrupt]), existing=st.booleans())
def test_atomic_path_all_or_nothing(tmp_path: Path, fail: type[BaseException] | None, existing: bool) -> None:
    with tempfile.TemporaryDirectory(dir=tmp_path) as d:
        target = Path(d) / "out.bin"
        if existing:
            target.write_bytes(b"old")
        try:
            with atomic_path(target) as tmp:
                tmp.write_bytes(b"partial")
                if fail is not None:
                    raise fail
                tmp.write_bytes(b"new")
        except (ValueError, KeyboardInterrupt):
            pass
        names = sorted(p.name for p in Path(d).iterdir())
        if fail is None:
            assert target.read_bytes() == b"new" and names == ["out.bin"]
        else:
            assert names == (["out.bin"] if existing else [])
            assert not existing or target.read_bytes() == b"old"


# ---------------------------------------------------------------------------------------------- fusion
@st.composite
def layer_stacks(draw: st.DrawFn) -> tuple[nn.Module, tuple[int, int, int], dict[str, torch.Tensor]]:
    """A random conv (+BN) + ReLU stack, optional hidden Linear, a classifier; and random NWC scores."""
    seed = draw(st.integers(0, 2**16))
    torch.manual_seed(seed)
    c_in, size = draw(st.sampled_from([1, 3])), draw(st.integers(3, 6))
    layers: list[nn.Module] = []
    c = c_in
    for _ in range(draw(st.integers(1, 3))):
        out, k = draw(st.integers(2, 6)), draw(st.sampled_from([1, 3]))
        layers.append(nn.Conv2d(c, out, k, padding=k // 2, bias=draw(st.booleans())))
        if draw(st.booleans()):
            layers.append(nn.BatchNorm2d(out))
        layers.append(nn.ReLU())
        c = out
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    if draw(st.booleans()):
        hidden = draw(st.integers(2, 6))
        layers += [nn.Linear(c, hidden), nn.ReLU()]
        c = hidden
    layers.append(nn.Linear(c, draw(st.integers(2, 5))))
    net = Normalized(nn.Sequential(*layers), (0.5,) * c_in, (0.25,) * c_in).eval()
    gen = torch.Generator().manual_seed(seed)
    mods = list(net.net.named_children())
    last_linear = max(i for i, (_, m) in enumerate(mods) if isinstance(m, nn.Linear))
    scores = {n: torch.rand(m.weight.shape[0], generator=gen, dtype=torch.float64)
              for i, (n, m) in enumerate(mods) if isinstance(m, nn.Conv2d | nn.Linear) and i != last_linear}
    return net, (c_in, size, size), scores


def _state_equal(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@settings(max_examples=12, deadline=None, derandomize=True)
@given(stack=layer_stacks(), gamma=st.sampled_from([0.1, 0.3, 0.5]), lam=st.floats(0.0, 1.0),
       variant=st.sampled_from(["default", "paper"]), fuse_bn=st.booleans())
def test_fusion_properties_on_random_stacks(stack, gamma: float, lam: float, variant: str, fuse_bn: bool) -> None:
    net, shape, scores = stack
    masks = global_topk(scores, gamma)
    pruned = prune_neurons(net, masks)
    ref_net, ref_pruned = copy.deepcopy(net), copy.deepcopy(pruned)
    res = fuse(pruned, net, scores, masks=masks, lam=lam, variant=variant, fuse_bn=fuse_bn, keep_plans=True)
    # inputs untouched; shapes, dtypes and keys kept; output finite
    assert _state_equal(net, ref_net) and _state_equal(pruned, ref_pruned)
    fused_state, orig_state = res.model.state_dict(), net.state_dict()
    assert list(fused_state) == list(orig_state)
    for k, v in orig_state.items():
        assert fused_state[k].shape == v.shape and fused_state[k].dtype == v.dtype
    x = torch.rand(2, *shape, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(res.model(x)).all()
    # plans: nonnegative with marginals a = uniform, b = the safe NWC marginal
    for name, plan in res.plans.items():
        n = plan.shape[0]
        assert plan.dtype == torch.float64 and bool((plan >= 0).all())
        torch.testing.assert_close(plan.sum(1), torch.full((n,), 1.0 / n, dtype=torch.float64), rtol=0, atol=1e-10)
        torch.testing.assert_close(plan.sum(0), _marginal(scores[name]), rtol=0, atol=1e-10)
    # λ = 0 is "no fusion": the original, bit for bit
    zero = fuse(pruned, net, scores, masks=masks, lam=0.0, variant=variant, fuse_bn=fuse_bn)
    assert _state_equal(zero.model, net)
    # deterministic: same inputs, same bits
    again = fuse(pruned, net, scores, masks=masks, lam=lam, variant=variant, fuse_bn=fuse_bn)
    assert _state_equal(again.model, res.model)
