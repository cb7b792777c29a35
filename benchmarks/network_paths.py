"""The network candidates of the inference benchmark: the volume, the network and each path.

:func:`head_volume` gives one realistic 2-channel 1 mm head, :func:`default_unet` the project's
default network with random weights, :func:`conv_flops_per_voxel` its convolution FLOPs, and
:func:`make_paths` the timed callables (sliding windows, one pass over the whole or the
head-cropped volume, the network as ``infer.py`` runs it, OpenVINO, ``torch.compile``), each
returning foreground-class logits on the full grid. :mod:`bench_inference` times them.
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from timing import time_once, torch_threads

__all__ = ["MNI_SHAPE", "DEFAULT_NET", "DIVISOR", "CROP_MARGIN", "head_volume", "default_unet",
           "conv_flops_per_voxel", "bbox", "pad_to", "Counter", "make_paths"]

MNI_SHAPE = (182, 218, 182)
ROOT = Path(__file__).resolve().parents[1]
# the project's default network (configs/model/net/unet.yaml), binary labels
DEFAULT_NET = {**OmegaConf.to_container(OmegaConf.load(ROOT / "configs" / "model" / "net" / "unet.yaml")),
               "out_channels": 2}
DIVISOR = 16
CROP_MARGIN = 4
NARROW = 16  # output channels below one AVX-512 register of fp32 values: such a kernel cannot fill its vectors


def head_volume(shape: tuple[int, int, int] = MNI_SHAPE) -> tuple[np.ndarray, np.ndarray]:
    """A realistic 2-channel head ``(2, *shape)`` float32 and its head mask.

    The MNI152 2009a T1 template (1 mm, shipped with nilearn, offline) is centre-cropped or
    padded to ``shape``, z-scored inside the head (FLAIR-style threshold: 5 % of the 99th
    percentile) and used as both channels.
    """
    from nilearn.datasets import load_mni152_template

    data = np.asarray(load_mni152_template(resolution=1).get_fdata(), dtype=np.float32)
    out = np.zeros(shape, np.float32)
    src, dst = [], []
    for n_in, n_out in zip(data.shape, shape, strict=True):
        if n_in >= n_out:
            lo = (n_in - n_out) // 2
            src.append(slice(lo, lo + n_out))
            dst.append(slice(0, n_out))
        else:
            lo = (n_out - n_in) // 2
            src.append(slice(0, n_in))
            dst.append(slice(lo, lo + n_in))
    out[tuple(dst)] = data[tuple(src)]
    head = out > 0.05 * np.percentile(out[out > 0], 99)
    vals = out[head]
    z = np.where(head, (out - vals.mean()) / vals.std(), 0.0).astype(np.float32)
    return np.stack([z, z]), head


def default_unet() -> torch.nn.Module:
    """MONAI's ``UNet`` with the project's default configuration, random weights, eval mode."""
    from wmhseg.checkpoint import build_network

    torch.manual_seed(0)
    return build_network(dict(DEFAULT_NET)).eval()


def conv_flops_per_voxel(net: torch.nn.Module, in_channels: int = 2, probe: int = 32) -> float:
    """Multiply-add FLOPs (2 per MAC) of the network's convolutions per input voxel.

    Counted with forward hooks on a ``probe``^3 input (:func:`conv_flops_by_module`); exact for any
    input whose sides are multiples of the network's size divisor, since every layer scales with
    the voxel count.
    """
    shape = (probe, probe, probe)
    layers = conv_flops_by_module(net, shape, in_channels=in_channels, probe=probe)
    return sum(layer["flops"] for layer in layers.values()) / probe**3


def conv_flops_by_module(net: torch.nn.Module, shape: tuple[int, int, int], in_channels: int = 2,
                         probe: int = 32) -> dict[str, dict[str, Any]]:
    """Per convolution (by module name): multiply-add FLOPs on an input of ``shape`` and its output
    channels. Counted as :func:`conv_flops_per_voxel` does, on a ``probe``^3 input, and scaled by the
    voxel count (exact for sides that are multiples of the size divisor)."""
    found: dict[str, dict[str, Any]] = {}
    names = {m: n for n, m in net.named_modules()}

    def hook(mod: torch.nn.Module, inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        k = math.prod(mod.kernel_size)
        if isinstance(mod, torch.nn.ConvTranspose3d):
            flops = 2.0 * inp[0].numel() * mod.out_channels // mod.groups * k
        else:
            flops = 2.0 * out.numel() * mod.in_channels // mod.groups * k
        scale = math.prod(shape) / probe**3
        layer = found.setdefault(names[mod], {"flops": 0.0, "out_channels": int(mod.out_channels),
                                              "out_voxels": int(out[0, 0].numel() * scale),
                                              "transposed": isinstance(mod, torch.nn.ConvTranspose3d)})
        layer["flops"] += flops * scale  # a module called twice counts twice

    handles = [m.register_forward_hook(hook) for m in net.modules()
               if isinstance(m, torch.nn.Conv3d | torch.nn.ConvTranspose3d)]
    try:
        with torch.inference_mode():
            net(torch.zeros(1, in_channels, probe, probe, probe, device=next(net.parameters()).device))
    finally:
        for h in handles:
            h.remove()
    return found


_CONV_NAME = re.compile(r"__module\.([\w.]+?)/aten::_convolution")


def openvino_layers(model: Any, network: torch.nn.Module, x: torch.Tensor, repeats: int = 5) -> dict[str, Any]:
    """Where an fp32 OpenVINO pass over ``x`` goes, from its CPU plugin's per-layer counters (the
    fastest of ``repeats`` passes): each convolution's milliseconds and GFLOP/s (FLOPs of
    ``network``'s module of that name), grouped into convolutions with fewer than :data:`NARROW`
    output channels, the other convolutions, and the nodes that are not convolutions (layout
    reorders, concatenations, additions, activations)."""
    import openvino as ov

    graph = model.model.clone()
    graph.reshape({graph.inputs[0]: ov.PartialShape(list(x.shape))})
    compiled = model._core.compile_model(graph, "CPU", {**model._config, "PERF_COUNT": True})
    request = compiled.create_infer_request()
    array = x.detach().float().contiguous().numpy()
    best: tuple[float, list[tuple[str, str, float]]] | None = None
    for _ in range(repeats + 2):  # the first two warm up
        request.infer({0: array})
        nodes = [(p.node_name, p.node_type, p.real_time.total_seconds()) for p in request.get_profiling_info()]
        total = sum(t for *_, t in nodes)
        if best is None or total < best[0]:
            best = (total, nodes)
    assert best is not None
    total, nodes = best
    flops = conv_flops_by_module(network, tuple(x.shape[2:]), in_channels=int(x.shape[1]))
    groups = {"narrow": {"ms": 0.0, "gflop": 0.0}, "wide": {"ms": 0.0, "gflop": 0.0}}
    other: dict[str, float] = {}
    layers = []
    for name, kind, seconds in nodes:
        match = _CONV_NAME.search(name) if kind.startswith("Convolution") else None
        if match is None or match.group(1) not in flops:
            other[kind] = other.get(kind, 0.0) + 1e3 * seconds
            continue
        conv = flops[match.group(1)]
        group = groups["narrow" if conv["out_channels"] < NARROW else "wide"]
        group["ms"] += 1e3 * seconds
        group["gflop"] += conv["flops"] / 1e9
        layers.append({"layer": match.group(1), "kind": kind, "out_channels": conv["out_channels"],
                       "out_voxels": conv["out_voxels"], "ms": round(1e3 * seconds, 2),
                       "gflop_per_s": round(conv["flops"] / 1e9 / seconds, 1) if seconds > 0 else None})
    for group in groups.values():
        group["share"] = round(group["ms"] / (1e3 * total), 3)
        group["gflop_per_s"] = round(group["gflop"] / (group["ms"] / 1e3), 1) if group["ms"] else None
        group["ms"], group["gflop"] = round(group["ms"], 1), round(group["gflop"], 2)
    return {"input": list(x.shape), "total_ms": round(1e3 * total, 1), **groups,
            "other_ms": {k: round(v, 1) for k, v in sorted(other.items(), key=lambda kv: -kv[1])},
            "other_share": round(sum(other.values()) / (1e3 * total), 3),
            "top_layers": sorted(layers, key=lambda r: -r["ms"])[:8]}


def bbox(mask: np.ndarray, margin: int) -> tuple[slice, ...]:
    idx = np.nonzero(mask)
    return tuple(slice(max(int(i.min()) - margin, 0), min(int(i.max()) + 1 + margin, n))
                 for i, n in zip(idx, mask.shape, strict=True))


def pad_to(x: torch.Tensor, div: int) -> tuple[torch.Tensor, tuple[slice, ...]]:
    """Zero-pad the spatial axes of ``(B, C, X, Y, Z)`` to multiples of ``div`` (centred)."""
    size = x.shape[2:]
    pads: list[int] = []
    for n in reversed(size):
        extra = (-n) % div
        pads += [extra // 2, extra - extra // 2]
    crop = tuple(slice(pads[2 * (2 - i)], pads[2 * (2 - i)] + size[i]) for i in range(3))
    return (F.pad(x, pads) if any(pads) else x), crop


class Counter:
    """Voxels the network was run on (to turn seconds into GFLOP/s)."""

    def __init__(self) -> None:
        self.voxels = 0

    def wrap(self, net: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
        def run(p: torch.Tensor) -> torch.Tensor:
            self.voxels += p.shape[0] * math.prod(p.shape[2:])
            return net(p).float()

        return run


def _autocast(device: torch.device, dtype: torch.dtype | None) -> Any:
    if dtype is None:
        return torch.autocast(device_type=device.type, enabled=False)
    return torch.autocast(device_type=device.type, dtype=dtype)


class _Paths:
    """Builds the named callables over one input ``x`` (and its head box), counting network voxels."""

    def __init__(self, x: torch.Tensor, box: tuple[slice, ...], device: torch.device,
                 counters: dict[str, Counter]) -> None:
        self.x, self.box, self.device, self.counters = x, box, device, counters
        self.paths: dict[str, Callable[[], torch.Tensor]] = {}
        self.extra: dict[str, Any] = {}

    def sliding(self, name: str, net: torch.nn.Module, roi: int, batch: int, dtype: torch.dtype | None) -> None:
        """MONAI's Gaussian-blended sliding window, overlap 0.25."""
        from monai.inferers import sliding_window_inference

        self.counters[name] = Counter()
        pred, x, device = self.counters[name].wrap(net), self.x, self.device

        def run() -> torch.Tensor:
            with torch.inference_mode(), _autocast(device, dtype):
                return sliding_window_inference(x, roi_size=(roi,) * 3, sw_batch_size=batch, predictor=pred,
                                                overlap=0.25, mode="gaussian")[0]
        self.paths[name] = run

    def one_pass(self, name: str, model: Callable[[torch.Tensor], torch.Tensor], dtype: torch.dtype | None, *,
                 crop: bool, channels_last: bool = False, threads: int | None = None,
                 grad_mode: Callable[[], Any] = torch.inference_mode) -> Callable[[], torch.Tensor]:
        """One pass over the whole volume or its head box, padded to the divisor, pasted back."""
        self.counters[name] = Counter()
        pred, x, box, device = self.counters[name].wrap(model), self.x, self.box, self.device
        full_box = (slice(None), slice(None), *box)

        def run() -> torch.Tensor:
            with torch_threads(threads), grad_mode(), _autocast(device, dtype):
                xp, inner = pad_to(x[full_box] if crop else x, DIVISOR)
                if channels_last:
                    xp = xp.contiguous(memory_format=torch.channels_last_3d)
                y = pred(xp)[(0, slice(None), *inner)]
                if not crop:
                    return y
                out = torch.zeros((y.shape[0], *x.shape[2:]), dtype=y.dtype, device=y.device)
                out[0] = 1e4  # background outside the head: probability 1 for class 0
                out[(slice(None), *box)] = y
                return out
        self.paths[name] = run
        return run

    def compiled(self, net: torch.nn.Module, prec: str, dtype: torch.dtype | None) -> None:
        """``crop_<prec>_compile`` through ``torch.compile``, first-call time apart, or the error."""
        name = f"crop_{prec}_compile"
        try:
            fn = self.one_pass(name, torch.compile(net, dynamic=False), dtype, crop=True, grad_mode=torch.no_grad)
            seconds, _ = time_once(fn, self.device)
            self.extra[f"{name}_first_call_s"] = round(seconds, 2)
        except Exception as exc:  # a compiler failure drops the variant, with the reason
            self.paths.pop(name, None)
            self.extra[f"{name}_error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"


def make_paths(net: torch.nn.Module, x: torch.Tensor, box: tuple[slice, ...], *, device: torch.device,
               precisions: list[str], quick: bool,
               counters: dict[str, Counter]) -> tuple[dict[str, Callable[[], torch.Tensor]], dict[str, Any]]:
    """The candidate callables; each returns foreground-class logits ``(2, X, Y, Z)`` on the full grid."""
    from wmhseg.inference.optimize import inference_network

    dtypes = {"fp32": None, "bf16": torch.bfloat16}
    b = _Paths(x, box, device, counters)
    b.sliding("sw_default_fp32", net, 96, 1, None)
    cpu = device.type == "cpu"
    for prec in precisions:
        dt = dtypes[prec]
        b.one_pass(f"whole_{prec}", net, dt, crop=False)
        b.one_pass(f"crop_{prec}", net, dt, crop=True)
        # the network as infer.py runs it: batch norm folded, channels-last on CPU
        rewritten, _ = inference_network(net, device, channels_last=cpu)
        b.one_pass(f"crop_{prec}_wmhseg", rewritten, dt, crop=True, channels_last=cpu)
        if cpu:
            _openvino_path(rewritten, prec, b)
        net_cl = copy.deepcopy(net).to(memory_format=torch.channels_last_3d)
        b.one_pass(f"crop_{prec}_cl3d", net_cl, dt, crop=True, channels_last=True)
        if quick:
            continue
        b.sliding(f"sw128_b2_{prec}", net, 128, 2, dt)
        if cpu and torch.get_num_threads() > 1:
            b.one_pass(f"crop_{prec}_1thread", net, dt, crop=True, threads=1)
        if prec == precisions[-1]:
            b.compiled(net, prec, dt)
    return b.paths, b.extra


def _openvino_path(rewritten: torch.nn.Module, prec: str, b: _Paths) -> None:
    """Add ``crop_<prec>_openvino`` (the folded network through OpenVINO), or say why not."""
    from wmhseg.inference.backends import OpenVinoNetwork, openvino_available

    name = f"crop_{prec}_openvino"
    if not openvino_available():
        b.extra[f"{name}_skipped"] = "openvino is not installed (pip install 'wmhseg[openvino]')"
        return
    import openvino

    seconds, model = time_once(lambda: OpenVinoNetwork(rewritten, precision=prec), torch.device("cpu"))
    b.extra[f"{name}_convert_s"] = round(seconds, 2)
    b.extra["openvino_version"] = openvino.__version__
    b.one_pass(name, model, None, crop=True)
    if prec == "fp32":
        crop, _ = pad_to(b.x[(slice(None), slice(None), *b.box)], DIVISOR)
        b.extra["openvino_fp32_layers"] = openvino_layers(model, rewritten, crop.cpu())
