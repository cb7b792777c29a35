"""Goal 1 (and 4): the network part of segmenting one whole 1 mm brain, side by side.

One 2-channel 182 x 218 x 182 volume (nilearn's MNI152 T1 template at 1 mm, centre-cropped to
the MNI size, z-scored inside the head, used as both channels) goes through the default network
(``configs/model/net/unet.yaml``: MONAI's residual 3-D U-Net, channels 16-256, batch norm) in
several ways, timed interleaved in one process:

========================  ============================================================
``sw_default_fp32``       baseline: ``sliding_window_inference`` roi 96^3, overlap 0.25,
                          sw_batch_size 1, Gaussian blending, fp32
``whole_fp32``            one pass over the whole volume zero-padded to a multiple of 16
``crop_fp32``             crop to the head's bounding box (+4 voxels, as preprocessing
                          does), pad to a multiple of 16, one pass, paste back
``crop_fp32_wmhseg``      ``crop_fp32`` with the network as ``infer.py`` runs it: batch norm
                          folded into the convolutions and, on CPU, ``channels_last_3d``
                          (:mod:`wmhseg.inference.optimize`)
``crop_fp32_cl3d``        ``crop_fp32`` with weights and input in ``channels_last_3d``
``crop_*_openvino``       ``crop_*_wmhseg``'s folded network converted to OpenVINO and run by
                          its CPU plugin at that precision (``inference.backend: openvino``),
                          when ``openvino`` is installed; conversion time apart
``crop_fp32_1thread``     ``crop_fp32`` with ``torch.set_num_threads(1)``
``crop_fp32_compile``     ``crop_fp32`` through ``torch.compile`` (compile time apart)
``sw128_b2_fp32``         sliding window roi 128^3, sw_batch_size 2, Gaussian
``*_bf16``                the same under bf16 autocast, where the device runs bf16 natively
========================  ============================================================

Speed does not depend on the weights, so the network has random ones. Each fast path's
agreement with the baseline (Dice of the argmax masks, largest foreground-probability
difference) is in the details for information only: a random network's probabilities sit near
0.5, where tiny numeric differences flip voxels. The accuracy goal is judged on a trained
network by :mod:`bench_accuracy`.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from timing import PeakRSS, Samples, bf16_fast, interleaved, loadavg, ratio, time_once, torch_threads

__all__ = ["run", "head_volume", "default_unet", "conv_flops_per_voxel"]

MNI_SHAPE = (182, 218, 182)
ROOT = Path(__file__).resolve().parents[1]
# the project's default network (configs/model/net/unet.yaml), binary labels
DEFAULT_NET = {**OmegaConf.to_container(OmegaConf.load(ROOT / "configs" / "model" / "net" / "unet.yaml")),
               "out_channels": 2}
DIVISOR = 16
CROP_MARGIN = 4
SPEED_TARGET = 15.0


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

    Counted with forward hooks on a ``probe``^3 input; exact for any input whose sides are
    multiples of the network's size divisor, since every layer scales with the voxel count.
    """
    total = 0.0

    def hook(mod: torch.nn.Module, inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        nonlocal total
        k = math.prod(mod.kernel_size)
        if isinstance(mod, torch.nn.ConvTranspose3d):
            total += 2.0 * inp[0].numel() * mod.out_channels // mod.groups * k
        else:
            total += 2.0 * out.numel() * mod.in_channels // mod.groups * k

    handles = [m.register_forward_hook(hook) for m in net.modules()
               if isinstance(m, torch.nn.Conv3d | torch.nn.ConvTranspose3d)]
    try:
        with torch.inference_mode():
            net(torch.zeros(1, in_channels, probe, probe, probe, device=next(net.parameters()).device))
    finally:
        for h in handles:
            h.remove()
    return total / probe**3


def _bbox(mask: np.ndarray, margin: int) -> tuple[slice, ...]:
    idx = np.nonzero(mask)
    return tuple(slice(max(int(i.min()) - margin, 0), min(int(i.max()) + 1 + margin, n))
                 for i, n in zip(idx, mask.shape, strict=True))


def _pad_to(x: torch.Tensor, div: int) -> tuple[torch.Tensor, tuple[slice, ...]]:
    """Zero-pad the spatial axes of ``(B, C, X, Y, Z)`` to multiples of ``div`` (centred)."""
    size = x.shape[2:]
    pads: list[int] = []
    for n in reversed(size):
        extra = (-n) % div
        pads += [extra // 2, extra - extra // 2]
    crop = tuple(slice(pads[2 * (2 - i)], pads[2 * (2 - i)] + size[i]) for i in range(3))
    return (F.pad(x, pads) if any(pads) else x), crop


class _Counter:
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


def _make_paths(net: torch.nn.Module, x: torch.Tensor, box: tuple[slice, ...], *, device: torch.device,
                precisions: list[str], quick: bool,
                counters: dict[str, _Counter]) -> tuple[dict[str, Callable[[], torch.Tensor]], dict[str, float]]:
    """The candidate callables; each returns foreground-class logits ``(2, X, Y, Z)`` on the full grid."""
    from monai.inferers import sliding_window_inference

    from wmhseg.inference.optimize import inference_network

    dtypes = {"fp32": None, "bf16": torch.bfloat16}
    paths: dict[str, Callable[[], torch.Tensor]] = {}
    extra: dict[str, float] = {}
    full_box = (slice(None), slice(None), *box)

    def sw(name: str, roi: int, batch: int, dtype: torch.dtype | None) -> Callable[[], torch.Tensor]:
        counters[name] = _Counter()
        pred = counters[name].wrap(net)

        def run() -> torch.Tensor:
            with torch.inference_mode(), _autocast(device, dtype):
                return sliding_window_inference(x, roi_size=(roi,) * 3, sw_batch_size=batch, predictor=pred,
                                                overlap=0.25, mode="gaussian")[0]
        return run

    def whole(name: str, model: Callable[[torch.Tensor], torch.Tensor], dtype: torch.dtype | None, *,
              crop: bool, channels_last: bool = False, threads: int | None = None,
              grad_mode: Callable[[], Any] = torch.inference_mode) -> Callable[[], torch.Tensor]:
        counters[name] = _Counter()
        pred = counters[name].wrap(model)

        def run() -> torch.Tensor:
            with torch_threads(threads), grad_mode(), _autocast(device, dtype):
                xi = x[full_box] if crop else x
                xp, inner = _pad_to(xi, DIVISOR)
                if channels_last:
                    xp = xp.contiguous(memory_format=torch.channels_last_3d)
                y = pred(xp)[(0, slice(None), *inner)]
                if not crop:
                    return y
                out = torch.zeros((y.shape[0], *x.shape[2:]), dtype=y.dtype, device=y.device)
                out[0] = 1e4  # background outside the head: probability 1 for class 0
                out[(slice(None), *box)] = y
                return out
        return run

    paths["sw_default_fp32"] = sw("sw_default_fp32", 96, 1, None)
    for prec in precisions:
        dt = dtypes[prec]
        paths[f"whole_{prec}"] = whole(f"whole_{prec}", net, dt, crop=False)
        paths[f"crop_{prec}"] = whole(f"crop_{prec}", net, dt, crop=True)
        # the network as infer.py runs it: batch norm folded, channels-last on CPU
        cl = device.type == "cpu"
        rewritten, _ = inference_network(net, device, channels_last=cl)
        paths[f"crop_{prec}_wmhseg"] = whole(f"crop_{prec}_wmhseg", rewritten, dt, crop=True, channels_last=cl)
        if device.type == "cpu":
            _openvino_path(rewritten, prec, whole, paths, extra)
        net_cl = copy.deepcopy(net).to(memory_format=torch.channels_last_3d)
        paths[f"crop_{prec}_cl3d"] = whole(f"crop_{prec}_cl3d", net_cl, dt, crop=True, channels_last=True)
        if quick:
            continue
        paths[f"sw128_b2_{prec}"] = sw(f"sw128_b2_{prec}", 128, 2, dt)
        if device.type == "cpu" and torch.get_num_threads() > 1:
            paths[f"crop_{prec}_1thread"] = whole(f"crop_{prec}_1thread", net, dt, crop=True, threads=1)
        if prec == precisions[-1]:
            name = f"crop_{prec}_compile"
            try:
                compiled = torch.compile(net, dynamic=False)
                fn = whole(name, compiled, dt, crop=True, grad_mode=torch.no_grad)
                seconds, _ = time_once(fn, device)
                extra[f"{name}_first_call_s"] = round(seconds, 2)
                paths[name] = fn
            except Exception as exc:  # a compiler failure drops the variant, with the reason
                extra[f"{name}_error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    return paths, extra


def _openvino_path(rewritten: torch.nn.Module, prec: str, whole: Callable[..., Callable[[], torch.Tensor]],
                   paths: dict[str, Callable[[], torch.Tensor]], extra: dict[str, Any]) -> None:
    """Add ``crop_<prec>_openvino`` (the folded network through OpenVINO), or say why not."""
    from wmhseg.inference.backends import OpenVinoNetwork, openvino_available

    name = f"crop_{prec}_openvino"
    if not openvino_available():
        extra[f"{name}_skipped"] = "openvino is not installed (pip install 'wmhseg[openvino]')"
        return
    import openvino

    seconds, model = time_once(lambda: OpenVinoNetwork(rewritten, precision=prec), torch.device("cpu"))
    extra[f"{name}_convert_s"] = round(seconds, 2)
    extra["openvino_version"] = openvino.__version__
    paths[name] = whole(name, model, None, crop=True)


def _backend_row(variants: dict[str, Any], outputs: dict[str, torch.Tensor], prec: str) -> dict[str, Any]:
    """OpenVINO against PyTorch, both on the folded network at precision ``prec``."""
    torch_s, ov = variants[f"crop_{prec}_wmhseg"]["median_s"], variants[f"crop_{prec}_openvino"]
    diff = _agreement(outputs[f"crop_{prec}_wmhseg"], outputs[f"crop_{prec}_openvino"])["max_abs_prob_diff"]
    return {"goal": f"1. network backend on CPU, {prec} (inference.backend)",
            "baseline": f"torch, as infer.py runs it: {torch_s:.3f} s",
            "candidate": f"openvino: {ov['median_s']:.3f} s (largest probability difference vs torch {diff})",
            "ratio": round(ratio(torch_s, ov["median_s"]), 2), "target": "faster, same masks",
            "met": ov["median_s"] < torch_s}


def bf16_probe(device: torch.device, n: int = 512) -> dict[str, float]:
    """Seconds of one ``n`` x ``n`` matmul in fp32 and in bf16 on ``device``, and their ratio."""
    out: dict[str, float] = {}
    for name, dt in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a = torch.randn(n, n, device=device).to(dt)
        _ = a @ a
        seconds, _ = time_once(lambda a=a: a @ a, device)
        out[f"matmul{n}_{name}_s"] = round(seconds, 5)
        out[f"matmul{n}_{name}_gflop_s"] = round(2 * n**3 / seconds / 1e9, 1)
    out["bf16_slowdown_x"] = round(out[f"matmul{n}_bf16_s"] / out[f"matmul{n}_fp32_s"], 1)
    return out


def _agreement(ref: torch.Tensor, out: torch.Tensor) -> dict[str, float]:
    """Dice of the argmax foreground masks and max |p_fg difference|."""
    pr = torch.softmax(ref.float(), 0)[1]
    po = torch.softmax(out.float(), 0)[1]
    mr, mo = ref.argmax(0) == 1, out.argmax(0) == 1
    denom = int(mr.sum() + mo.sum())
    dice = 1.0 if denom == 0 else 2.0 * int((mr & mo).sum()) / denom
    return {"dice_vs_baseline": round(dice, 5), "max_abs_prob_diff": round(float((pr - po).abs().max()), 5),
            "fg_fraction": round(float(mo.float().mean()), 5)}


def _profile(fn: Callable[[], Any], device: torch.device, top: int = 8) -> dict[str, Any]:
    """Where one call's time goes: top operators by self time, and conv kernels' share."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        fn()
    events = prof.key_averages()
    attr = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    rows = sorted(events, key=lambda e: getattr(e, attr, 0), reverse=True)
    total = sum(getattr(e, attr, 0) for e in events) or 1.0
    return {
        "top_ops": [{"op": e.key, "self_ms": round(getattr(e, attr, 0) / 1000.0, 1), "calls": e.count,
                     "share": round(getattr(e, attr, 0) / total, 3)} for e in rows[:top]],
        "total_self_ms": round(total / 1000.0, 1),
    }


def run(*, quick: bool = False, device: str | torch.device = "cpu") -> dict[str, Any]:
    """Measure the inference paths; return the section's results (rows for the summary table).

    Args:
        quick: one timed round after the warm-up call; no larger windows, ``torch.compile`` or
            thread variant.
        device: ``"cpu"``, ``"cuda"``...
    """
    device = torch.device(device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    net, net_cfg = default_unet().to(device), dict(DEFAULT_NET)
    vol, head = head_volume()
    x = torch.from_numpy(vol)[None].to(device)
    box = _bbox(head, CROP_MARGIN)
    fast_bf16, bf16_reason = bf16_fast(device)
    probe = bf16_probe(device)
    precisions = ["fp32"] + (["bf16"] if fast_bf16 else [])
    repeats = 1 if quick else 5
    flops_vox = conv_flops_per_voxel(net)

    counters: dict[str, _Counter] = {}
    paths, extra = _make_paths(net, x, box, device=device, precisions=precisions, quick=quick,
                               counters=counters)
    outputs: dict[str, torch.Tensor] = {}
    memory: dict[str, float | None] = {}
    voxels: dict[str, int] = {}
    for name, fn in paths.items():
        counters[name].voxels = 0
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        with PeakRSS() as mem:
            _, out = time_once(fn, device)
        voxels[name] = counters[name].voxels
        memory[name] = (round(torch.cuda.max_memory_allocated(device) / 2**20, 1) if device.type == "cuda"
                        else (round(mem.delta_mib, 1) if mem.delta_mib is not None else None))
        outputs[name] = out.detach().float().cpu()
    load_before = loadavg()
    samples: dict[str, Samples] = interleaved(paths, repeats=repeats, warmup=0, device=device)
    load_after = loadavg()

    base = samples["sw_default_fp32"].median
    variants: dict[str, Any] = {}
    for name, s in samples.items():
        gflop = flops_vox * voxels[name] / 1e9
        variants[name] = {
            **s.to_dict(),
            "speedup_vs_baseline": round(ratio(base, s.median), 2),
            "gflop": round(gflop, 1),
            "gflop_per_s": round(gflop / s.median, 1),
            "peak_mem_mib": memory[name],
            **({} if name == "sw_default_fp32" else _agreement(outputs["sw_default_fp32"], outputs[name])),
        }
    candidates = {k: v for k, v in variants.items() if k != "sw_default_fp32"}
    best = min(candidates, key=lambda k: candidates[k]["median_s"])
    # where the time goes on the path infer.py runs
    profiled = next((n for n in (f"crop_{p}_wmhseg" for p in reversed(precisions)) if n in paths), best)
    profile = {"variant": profiled, **_profile(paths[profiled], device)}
    shape_crop = [s.stop - s.start for s in box]
    speed = variants[best]["speedup_vs_baseline"]
    rows = [{
        "goal": "1. whole-brain inference (network)",
        "baseline": f"MONAI sliding window defaults fp32: {base:.2f} s",
        "candidate": f"{best}: {variants[best]['median_s']:.3f} s",
        "ratio": speed,
        "target": f">= {SPEED_TARGET:g}x",
        "met": speed >= SPEED_TARGET,
    }]
    rows += [_backend_row(variants, outputs, prec) for prec in precisions if f"crop_{prec}_openvino" in variants]
    if device.type == "cuda":
        rows.append({"goal": "4. GPU throughput", "baseline": f"sliding window: {60 / base:.0f} vol/min",
                     "candidate": f"{best}: {60 / variants[best]['median_s']:.0f} vol/min",
                     "ratio": speed, "target": ">= 300 vol/min (H100)",
                     "met": 60 / variants[best]["median_s"] >= 300})
    else:
        rows.append({"goal": "4. GPU throughput", "baseline": "-", "candidate": "GPU: not available",
                     "ratio": None, "target": ">= 300 vol/min (H100)", "met": "not measured"})
    floor_s = flops_vox * math.prod(_pad_to(x[(slice(None), slice(None), *box)], DIVISOR)[0].shape[2:]) / 1e9
    return {
        "name": "inference",
        "available": True,
        "rows": rows,
        "details": {
            "input_shape": list(x.shape[1:]),
            "head_crop_shape": shape_crop,
            "network": net_cfg,
            "weights": "random (seed 0); agreement figures are informative only",
            "repeats": repeats,
            "bf16": {"used": fast_bf16, "reason": bf16_reason, "probe": probe,
                     **({} if fast_bf16 else {"skipped": "all *_bf16 variants (see bf16_probe)"})},
            "gflop_per_voxel_x1e6": round(flops_vox / 1e3, 3),
            "gflop_head_crop_pass": round(floor_s, 1),
            "fastest": best,
            "variants": variants,
            "profile": profile,
            "loadavg_during": [load_before, load_after],
            **extra,
        },
    }
