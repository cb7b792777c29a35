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

On a GPU the fp32 paths run with torch's defaults, TF32 convolutions on Ampere and later;
``infer.py``'s fp32 turns TF32 off (1.6x slower on an H200, the CPU's logits to 2e-6), which
:mod:`bench_gpu_precision` times beside TF32 and bf16.

Speed does not depend on the weights, so the network has random ones. Each fast path's
agreement with the baseline (Dice of the argmax masks, largest foreground-probability
difference) is in the details for information only: a random network's probabilities sit near
0.5, where tiny numeric differences flip voxels. The accuracy goal is judged on a trained
network by :mod:`bench_accuracy`.

How close the network comes to the hardware: its convolution FLOPs (counted with hooks) over its
best time, against the best of several large matrix products (2048 x 2048, fp32 and, where the
device runs it natively, bf16) timed in the same process before and after the variants, so a
change of load shows as a change of peak. The candidate paths live in :mod:`network_paths`.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from network_paths import (
    CROP_MARGIN,
    DEFAULT_NET,
    DIVISOR,
    Counter,
    bbox,
    conv_flops_per_voxel,
    default_unet,
    head_volume,
    make_paths,
    pad_to,
)
from timing import PeakRSS, Samples, bf16_fast, device_sync, interleaved, loadavg, ratio, time_once

__all__ = ["run", "matmul_peak", "SPEED_TARGET", "PEAK_TARGET"]

SPEED_TARGET = 15.0
PEAK_TARGET = 0.5  # the network's share of the measured matmul peak
GPU_RESULTS = Path(__file__).resolve().parent / "results" / "gpu" / "latest.json"  # benchmarks/gpu.sh's


def matmul_peak(device: torch.device, dtype: torch.dtype = torch.float32, n: int = 2048,
                repeats: int = 8) -> dict[str, float]:
    """The best GFLOP/s of ``repeats`` ``n`` x ``n`` matrix products in ``dtype`` on ``device``.

    The best rather than the median, since a peak is what the hardware can do when nothing
    else takes its cores; the median is kept for the load.
    """
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    _ = a @ b
    rates = []
    for _ in range(repeats):
        device_sync(device)
        t = time.perf_counter()
        _ = a @ b
        device_sync(device)
        rates.append(2 * n**3 / (time.perf_counter() - t) / 1e9)
    rates.sort()
    return {"n": n, "best_gflop_s": round(rates[-1], 1), "median_gflop_s": round(rates[len(rates) // 2], 1)}


def _peaks(device: torch.device, precisions: list[str]) -> dict[str, dict[str, float]]:
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    return {p: matmul_peak(device, dtypes[p]) for p in precisions}


def _layers_note(layers: dict[str, Any] | None, peak: float) -> str:
    """The OpenVINO fp32 pass's layer profile in words: where the peak is lost."""
    if not layers:
        return ""
    wide, narrow = layers["wide"], layers["narrow"]
    return (f"; its layers (OpenVINO's counters, {layers['total_ms']:.0f} ms): convolutions with >= 16 output "
            f"channels {100 * wide['share']:.0f} % of the time at {wide['gflop_per_s']:.0f} GFLOP/s "
            f"({wide['gflop_per_s'] / peak:.2f} of the peak), those with fewer (the 2 output classes at full "
            f"resolution) {100 * narrow['share']:.0f} % at {narrow['gflop_per_s']:.0f} GFLOP/s, other nodes "
            f"(layout reorders, concatenations, additions, activations) {100 * layers['other_share']:.0f} %")


def _peak_rows(variants: dict[str, Any], peaks: list[dict[str, dict[str, float]]], precisions: list[str],
               layers: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Per precision: the fastest one-pass path's convolution GFLOP/s against the matmul peak (and,
    for fp32 through OpenVINO, where its pass loses it: ``layers``, see :func:`network_paths.openvino_layers`)."""
    rows = []
    for prec in precisions:
        peak = max(p[prec]["best_gflop_s"] for p in peaks)
        names = [n for n in variants if n.startswith(f"crop_{prec}") and "compile" not in n and "1thread" not in n]
        best = min(names, key=lambda n: variants[n]["min_s"])
        rate = variants[best]["best_gflop_per_s"]
        share = rate / peak
        note = _layers_note(layers, peak) if best == "crop_fp32_openvino" else ""
        rows.append({"goal": f"1. network against the {prec} matmul peak",
                     "baseline": f"2048^2 {prec} matmul: {peak:.0f} GFLOP/s (best of 8, before and after)",
                     "candidate": f"{best}: {rate:.0f} GFLOP/s of convolutions (best run){note}",
                     "ratio": round(share, 2), "target": f">= {PEAK_TARGET:g} of the peak" if prec == "fp32" else "-",
                     "met": share >= PEAK_TARGET if prec == "fp32" else None})
    return rows


def _backend_row(variants: dict[str, Any], outputs: dict[str, torch.Tensor], prec: str) -> dict[str, Any]:
    """OpenVINO against PyTorch, both on the folded network at precision ``prec``."""
    torch_s, ov = variants[f"crop_{prec}_wmhseg"]["median_s"], variants[f"crop_{prec}_openvino"]
    diff = _agreement(outputs[f"crop_{prec}_wmhseg"], outputs[f"crop_{prec}_openvino"])["max_abs_prob_diff"]
    return {"goal": f"1. network backend on CPU, {prec} (inference.backend)",
            "baseline": f"torch, as infer.py runs it: {torch_s:.3f} s",
            "candidate": f"openvino: {ov['median_s']:.3f} s (largest probability difference vs torch {diff})",
            "ratio": round(ratio(torch_s, ov["median_s"]), 2), "target": "faster, same masks",
            "met": ov["median_s"] < torch_s}


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


def _first_calls(paths: dict[str, Callable[[], torch.Tensor]], counters: dict[str, Counter],
                 device: torch.device) -> tuple[dict[str, torch.Tensor], dict[str, float | None], dict[str, int]]:
    """One untimed call of each path: its output, peak memory and the voxels its network saw."""
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
    return outputs, memory, voxels


def _variants(samples: dict[str, Samples], outputs: dict[str, torch.Tensor], memory: dict[str, float | None],
              voxels: dict[str, int], flops_vox: float) -> dict[str, Any]:
    base = samples["sw_default_fp32"].median
    variants: dict[str, Any] = {}
    for name, s in samples.items():
        gflop = flops_vox * voxels[name] / 1e9
        variants[name] = {
            **s.to_dict(),
            "speedup_vs_baseline": round(ratio(base, s.median), 2),
            "gflop": round(gflop, 1),
            "gflop_per_s": round(gflop / s.median, 1),
            "best_gflop_per_s": round(gflop / min(s.seconds), 1),
            "peak_mem_mib": memory[name],
            **({} if name == "sw_default_fp32" else _agreement(outputs["sw_default_fp32"], outputs[name])),
        }
    return variants


def _speed_rows(variants: dict[str, Any], outputs: dict[str, torch.Tensor], precisions: list[str],
                device: torch.device) -> tuple[list[dict[str, Any]], str]:
    base = variants["sw_default_fp32"]["median_s"]
    candidates = {k: v for k, v in variants.items() if k != "sw_default_fp32"}
    best = min(candidates, key=lambda k: candidates[k]["median_s"])
    speed = variants[best]["speedup_vs_baseline"]
    rows = [{"goal": "1. whole-brain inference (network)",
             "baseline": f"MONAI sliding window defaults fp32: {base:.2f} s",
             "candidate": f"{best}: {variants[best]['median_s']:.3f} s",
             "ratio": speed, "target": f">= {SPEED_TARGET:g}x", "met": speed >= SPEED_TARGET}]
    rows += [_backend_row(variants, outputs, prec) for prec in precisions if f"crop_{prec}_openvino" in variants]
    if device.type == "cuda":
        per_min = 60 / variants[best]["median_s"]
        rows.append({"goal": "4. GPU throughput", "baseline": f"sliding window: {60 / base:.0f} vol/min",
                     "candidate": f"{best}: {per_min:.0f} vol/min", "ratio": speed,
                     "target": ">= 300 vol/min (H100)", "met": per_min >= 300})
    else:
        rows.append(_gpu_row_measured_elsewhere())
    return rows, best


def _gpu_row_measured_elsewhere(path: Path = GPU_RESULTS) -> dict[str, Any]:
    """On a machine without a GPU: the throughput row of the last ``benchmarks/gpu.sh`` run, named as such."""
    row = {"goal": "4. GPU throughput", "baseline": "-", "candidate": "GPU: not available",
           "ratio": None, "target": ">= 300 vol/min (H100)", "met": "not measured"}
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
        gpu = next(r for s in result["sections"] for r in s["rows"] if r["goal"] == row["goal"])
    except (OSError, ValueError, KeyError, StopIteration):
        return row
    where = f"{result['machine'].get('gpu', 'GPU')}, {result['started'][:10]}, benchmarks/gpu.sh"
    return {**gpu, "candidate": f"{gpu['candidate']} (measured on {where})"}


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
    net = default_unet().to(device)
    vol, head = head_volume()
    x = torch.from_numpy(vol)[None].to(device)
    box = bbox(head, CROP_MARGIN)
    fast_bf16, bf16_reason = bf16_fast(device)
    precisions = ["fp32"] + (["bf16"] if fast_bf16 else [])
    flops_vox = conv_flops_per_voxel(net)
    counters: dict[str, Counter] = {}
    paths, extra = make_paths(net, x, box, device=device, precisions=precisions, quick=quick, counters=counters)
    outputs, memory, voxels = _first_calls(paths, counters, device)
    load_before, peaks = loadavg(), [_peaks(device, precisions)]
    samples = interleaved(paths, repeats=1 if quick else 5, warmup=0, device=device)
    peaks.append(_peaks(device, precisions))
    load_after = loadavg()
    variants = _variants(samples, outputs, memory, voxels, flops_vox)
    rows, best = _speed_rows(variants, outputs, precisions, device)
    rows += _peak_rows(variants, peaks, precisions, extra.get("openvino_fp32_layers"))
    profiled = next((n for n in (f"crop_{p}_wmhseg" for p in reversed(precisions)) if n in paths), best)
    padded = pad_to(x[(slice(None), slice(None), *box)], DIVISOR)[0].shape[2:]
    return {"name": "inference", "available": True, "rows": rows, "details": {
        "input_shape": list(x.shape[1:]), "head_crop_shape": [s.stop - s.start for s in box],
        "network": dict(DEFAULT_NET), "weights": "random (seed 0); agreement figures are informative only",
        "repeats": 1 if quick else 5, "bf16": {"used": fast_bf16, "reason": bf16_reason},
        "matmul_peak_before_after": peaks, "gflop_per_voxel_x1e6": round(flops_vox / 1e3, 3),
        "gflop_head_crop_pass": round(flops_vox * math.prod(padded) / 1e9, 1), "fastest": best,
        "variants": variants, "profile": {"variant": profiled, **_profile(paths[profiled], device)},
        "loadavg_during": [load_before, load_after], **extra}}
