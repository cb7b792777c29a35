"""inference.backend: OpenVINO against PyTorch fp32 on trained networks, the cache, the fallbacks."""

from __future__ import annotations

import logging
import pickle

import numpy as np
import pandas as pd
import pytest
import torch

from wmhseg.checkpoint import build_network
from wmhseg.data.preprocessing import PreprocessSpec
from wmhseg.errors import InputError
from wmhseg.inference import backends
from wmhseg.inference.export import resample_to_grid
from wmhseg.inference.loading import prepare_scan
from wmhseg.inference.predictor import Predictor
from wmhseg.labels import LabelSpec
from wmhseg.metrics import dice

WINDOW = [24, 24, 24]
_NO_OPENVINO = "openvino is not installed (pip install 'wmhseg[openvino]')"


def _net_config(norm: str) -> dict:
    return {"_target_": "monai.networks.nets.UNet", "spatial_dims": 3, "in_channels": 2, "out_channels": 2,
            "channels": [4, 8, 16], "strides": [2, 2], "num_res_units": 1, "norm": norm}


@pytest.fixture(scope="module")
def scans(tiny_dataset):
    """The tiny cohort's working-grid images and their WMH labels on the same grid."""
    manifest = pd.read_csv(tiny_dataset, dtype=str)
    spec, out = PreprocessSpec(), []
    for row in manifest.itertuples():
        folder = tiny_dataset.parent
        prepared = prepare_scan(folder / row.t1, folder / row.flair, spec, label=folder / row.label)
        working_affine = np.asarray(prepared.image.affine, dtype=np.float64)
        wmh = torch.as_tensor(prepared.reference == 9, dtype=torch.float32)[None]
        target = resample_to_grid(wmh, prepared.affine, prepared.image.shape[1:], working_affine)[0] > 0.5
        out.append((prepared, target))
    return out


def _train(norm: str, scans, steps: int = 40, batch: int = 2) -> torch.nn.Module:
    """A small U-Net fitted to the tiny cohort (Dice + cross-entropy, full volumes, Adam)."""
    from monai.losses import DiceCELoss

    torch.manual_seed(0)
    net = build_network(_net_config(norm))
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    opt = torch.optim.Adam(net.parameters(), lr=2e-2)
    shape = np.max([p.image.shape[1:] for p, _ in scans], axis=0).tolist()
    shape = [s + (-s) % 4 for s in shape]
    x = torch.zeros(len(scans), 2, *shape)
    y = torch.zeros(len(scans), 1, *shape)
    for i, (p, t) in enumerate(scans):
        sx, sy, sz = p.image.shape[1:]
        x[i, :, :sx, :sy, :sz] = torch.as_tensor(p.image)
        y[i, 0, :sx, :sy, :sz] = t
    net.train()
    for step in range(steps):
        pick = [(step * batch + i) % len(scans) for i in range(batch)]
        opt.zero_grad()
        loss_fn(net(x[pick]), y[pick]).backward()
        opt.step()
    return net.eval()


def _checkpoint(net: torch.nn.Module, norm: str, path):
    ckpt = {"state_dict": {f"net.{k}": v for k, v in net.state_dict().items()},
            "wmhseg": {"format_version": 1, "wmhseg_version": "0.1.0", "network": _net_config(norm),
                       "preprocessing": PreprocessSpec().to_dict(), "labels": LabelSpec().to_dict(),
                       "inference": {"roi_size": WINDOW, "sw_batch_size": 2, "overlap": 0.25, "mode": "gaussian",
                                     "threshold": 0.5}}}
    torch.save(ckpt, path)
    return path


def _masks(predictor: Predictor, scans) -> list[np.ndarray]:
    return [predictor.to_native(predictor.predict(p.image), p.shape, p.affine).mask for p, _ in scans]


def _compare(ckpt, scans, **kw) -> tuple[list[np.ndarray], list[np.ndarray], Predictor]:
    reference = Predictor.from_checkpoint(ckpt, device="cpu", precision="fp32", backend="torch", **kw)
    candidate = Predictor.from_checkpoint(ckpt, device="cpu", precision="fp32", backend="openvino", **kw)
    assert candidate.backend == "openvino" and candidate.describe()["backend"] == "openvino"
    return _masks(reference, scans), _masks(candidate, scans), candidate


def test_backend_names_and_fallbacks(monkeypatch, caplog):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    with pytest.raises(InputError, match="did you mean 'openvino'"):
        backends.resolve_backend("openvin", cpu)
    assert backends.resolve_backend("torch", cpu) == "torch"
    assert backends.resolve_backend("auto", cuda) == "torch"
    with caplog.at_level(logging.WARNING):
        assert backends.resolve_backend("openvino", cuda) == "torch"
    assert "CPU only" in caplog.text
    monkeypatch.setattr(backends, "openvino_available", lambda: True)
    assert backends.resolve_backend("auto", cpu) == "openvino"
    assert backends.resolve_backend("auto", cpu, "bf16") == "torch"  # measured faster under bf16
    assert backends.resolve_backend("openvino", cpu, "bf16") == "openvino"
    monkeypatch.setattr(backends, "openvino_available", lambda: False)
    caplog.clear()
    assert backends.resolve_backend("auto", cpu) == "torch"
    assert not caplog.text  # auto falls back silently
    with caplog.at_level(logging.WARNING):
        net = build_network(_net_config("BATCH"))
        predictor = Predictor(net, PreprocessSpec(), LabelSpec(), settings=None)
        assert predictor.backend == "torch"
        from wmhseg.inference.infer_config import InferenceSettings

        predictor = Predictor(net, PreprocessSpec(), LabelSpec(), settings=InferenceSettings(device="cpu",
                                                                                            backend="openvino"))
    assert predictor.backend == "torch" and predictor.channels_last
    assert "pip install 'wmhseg[openvino]'" in caplog.text


@pytest.mark.slow
def test_openvino_masks_match_torch_fp32_and_the_cache_is_checked(scans, tmp_path, caplog):
    pytest.importorskip("openvino", reason=_NO_OPENVINO)
    ckpt = _checkpoint(_train("BATCH", scans), "BATCH", tmp_path / "bn.ckpt")
    ref, cand, first = _compare(ckpt, scans)
    assert sum(int(m.sum()) for m in ref) > 100  # a trained network: masks worth comparing
    assert dice(np.concatenate([m.ravel() for m in cand]), np.concatenate([m.ravel() for m in ref])) >= 0.999
    assert first.roi_size is None and not first._forward.from_cache
    entry = backends.cache_folder(ckpt, first.model_id)
    assert entry.is_dir() and (entry / "meta.json").is_file()
    again = Predictor.from_checkpoint(ckpt, device="cpu", precision="fp32", backend="openvino")
    assert again._forward.from_cache
    image = scans[0][0].image
    expected = first.predict(image).wmh
    torch.testing.assert_close(again.predict(image).wmh, expected, rtol=0, atol=0)
    # a damaged cache entry is rebuilt, not trusted
    weights = entry / "model.bin"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING):
        rebuilt = Predictor.from_checkpoint(ckpt, device="cpu", precision="fp32", backend="openvino")
    assert "damaged" in caplog.text and not rebuilt._forward.from_cache
    torch.testing.assert_close(rebuilt.predict(image).wmh, expected, rtol=0, atol=0)
    assert Predictor.from_checkpoint(ckpt, device="cpu", precision="fp32", backend="openvino")._forward.from_cache


@pytest.mark.slow
def test_instance_norm_network_volume_is_unchanged(scans, tmp_path):
    """Reduced precision inside instance norm changed other tools' lesion volumes by +14 %."""
    pytest.importorskip("openvino", reason=_NO_OPENVINO)
    ckpt = _checkpoint(_train("INSTANCE", scans), "INSTANCE", tmp_path / "in.ckpt")
    ref, cand, predictor = _compare(ckpt, scans)
    assert predictor.roi_size == WINDOW  # instance norm keeps the sliding window
    ref_mm3 = np.array([m.sum() for m in ref], dtype=float)
    assert ref_mm3.sum() > 100
    cand_mm3 = np.array([m.sum() for m in cand], dtype=float)
    np.testing.assert_allclose(cand_mm3, ref_mm3, rtol=1e-3, atol=1.0)
    assert dice(np.concatenate([m.ravel() for m in cand]), np.concatenate([m.ravel() for m in ref])) >= 0.999


def test_instance_norm_keeps_fp32_on_unnormalised_intensities(tmp_path, caplog):
    """Variance of raw intensities (mean 1000, sd 1) is where reduced precision breaks instance norm."""
    pytest.importorskip("openvino", reason=_NO_OPENVINO)
    torch.manual_seed(1)
    net = torch.nn.Sequential(torch.nn.InstanceNorm3d(2), torch.nn.Conv3d(2, 2, 3, padding=1)).eval()
    x = 1000.0 + torch.randn(1, 2, 20, 24, 16)
    with torch.no_grad():
        expected = net(x)
    model = backends.OpenVinoNetwork(net, precision="fp32", cache=tmp_path / "cache" / "entry")
    got = model(x)
    assert got.shape == expected.shape
    # fp32 holds values near 1000 to within half an ulp (6e-5): after the mean is removed that is an
    # error of up to an ulp (sd 1) in each normalised input, which the convolution sums with its
    # weights. Two such errors bound what fp32 kernels may differ by (AVX2 and AVX-512 sum in other
    # orders); bf16 or fp16 would be off by whole units here.
    conv = net[1]
    ulp = float(torch.finfo(torch.float32).eps) * 1024
    bound = 2 * ulp * float(conv.weight.detach().abs().sum(dim=(1, 2, 3, 4)).max())
    torch.testing.assert_close(got, expected, rtol=0, atol=bound)
    # it travels to spawned processes (strategy=ddp_spawn) and compiles again from its cache there
    copy = pickle.loads(pickle.dumps(model))
    assert copy.from_cache and copy.precision == "fp32"
    torch.testing.assert_close(copy(x), got, rtol=0, atol=0)
    # an unwritable cache location costs the cache only
    (tmp_path / "a_file").write_text("")
    with caplog.at_level(logging.WARNING):
        uncached = backends.OpenVinoNetwork(net, precision="fp32", cache=tmp_path / "a_file" / "entry")
    assert "could not cache" in caplog.text and not uncached.from_cache
    torch.testing.assert_close(uncached(x), got, rtol=0, atol=0)


def test_each_input_shape_is_compiled_once_and_matches_torch(tmp_path):
    """The model is compiled per input shape: every shape gives PyTorch's output, a shape met
    again reuses its compiled model, and only the most recently used few are kept."""
    pytest.importorskip("openvino", reason=_NO_OPENVINO)
    torch.manual_seed(2)
    net = build_network(_net_config("BATCH")).eval()
    model = backends.OpenVinoNetwork(net, precision="fp32")
    shapes = [(1, 2, 16, 20, 24), (2, 2, 24, 16, 16), (1, 2, 32, 32, 16), (1, 2, 16, 16, 16), (1, 2, 20, 16, 28)]
    first = {}
    for shape in shapes:
        x = torch.randn(*shape)
        with torch.no_grad():
            expected = net(x)
        got = model(x)
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
        first[shape] = model.compiled(shape)
    assert len(model._compiled) == backends._SHAPES_KEPT < len(shapes)
    assert shapes[0] not in model._compiled  # the least recently used went first
    assert model.compiled(shapes[-1]) is first[shapes[-1]]  # met again: not compiled again
