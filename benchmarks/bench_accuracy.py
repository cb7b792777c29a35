"""Goal 1, accuracy: does the fast path give the masks of MONAI's default sliding window?

A trained checkpoint (``--ckpt``) segments held-out synthetic scans (``wmhseg.synth``, the
procedural anatomy over a 160 x 192 x 160 mm field of view at the checkpoint's working voxel
size, WMH of 2-25 cm^3, seeds no training run uses) through :class:`wmhseg.inference.Predictor`,
the code ``infer.py`` runs, with each inference setting:

====================  ==============================================================
``sw_monai_default``  reference: MONAI ``sliding_window_inference`` defaults (overlap 0.25,
                      sw_batch_size 1, Gaussian), fp32, with its 96^3 window scaled to the
                      same 96 mm at the working voxel size (48^3 at 2 mm), so a head
                      takes as many windows as at 1 mm
``sw_checkpoint``     the checkpoint's own window, overlap and batch (``roi_size: checkpoint``)
``one_pass``          the whole head-cropped volume in one pass (``roi_size: null``), fp32
``one_pass_bf16``     the same under bf16 autocast, where the device runs bf16 natively
``auto``              what ``infer.py`` does by default (``roi_size: auto``)
``one_pass_openvino`` ``one_pass`` through OpenVINO (``backend: openvino``), fp32, and
                      ``one_pass_bf16_openvino`` in bf16, when OpenVINO is installed
``one_pass_cpu``      on a GPU run: ``one_pass`` on this machine's CPU (torch fp32), to hold
                      the GPU's fp32 masks to the CPU's
====================  ==============================================================

For each: seconds of ``predict`` per scan (median), the Dice of its native-grid masks against
the reference's (pooled over the scans, and the lowest per scan), against the checkpoint
window's and against the true labels. The goal: Dice >= 0.995 against the fp32 reference.

The second goal: a faster backend or precision must not change the masks. Each of ``one_pass_bf16``,
``one_pass_openvino``, ``one_pass_bf16_openvino`` and ``auto`` is held to torch's fp32 one pass
(``one_pass``): Dice >= 0.999 pooled over the scans, and the largest change of a scan's WMH volume
(ONNX Runtime's reduced-precision instance norm moved other tools' lesion volumes by +14 %). On a
GPU, ``one_pass_cpu`` is held to the same goal: fp32 on the GPU must give the CPU's masks.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from timing import device_sync, loadavg, ratio

__all__ = ["run", "FOV_MM", "DICE_TARGET", "SAME_MASK_DICE"]

FOV_MM = (160.0, 192.0, 160.0)
DICE_TARGET = 0.995
SAME_MASK_DICE = 0.999  # a backend or precision against torch fp32
REFERENCE = "sw_monai_default"
FP32 = "one_pass"
_MONAI_DEFAULT = {"overlap": 0.25, "sw_batch_size": 1, "blend_mode": "gaussian"}
_MONAI_WINDOW_MM = 96.0  # MONAI's default 96^3 window at 1 mm


def _reference_window(spacing: list[float], divisor: list[int]) -> list[int]:
    """MONAI's default window (96 mm at 1 mm) at ``spacing``, rounded to a multiple of ``divisor`` per axis."""
    return [max(d, int(round(_MONAI_WINDOW_MM / s / d)) * d) for s, d in zip(spacing, divisor, strict=True)]


def _variants(device: str, fast_bf16: bool, window: list[int], openvino: bool) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {
        REFERENCE: {**_MONAI_DEFAULT, "roi_size": window, "precision": "fp32"},
        "sw_checkpoint": {"roi_size": "checkpoint", "precision": "fp32"},
        FP32: {"roi_size": None, "precision": "fp32"},
    }
    if fast_bf16:
        out["one_pass_bf16"] = {"roi_size": None, "precision": "bf16"}
    if openvino and device == "cpu":
        out["one_pass_openvino"] = {"roi_size": None, "precision": "fp32", "backend": "openvino"}
        if fast_bf16:
            out["one_pass_bf16_openvino"] = {"roi_size": None, "precision": "bf16", "backend": "openvino"}
    out["auto"] = {"backend": "auto"}
    if device != "cpu":
        out["one_pass_cpu"] = {"roi_size": None, "precision": "fp32", "backend": "torch", "device": "cpu"}
    return {k: {"device": device, **v} for k, v in out.items()}


def _segment(predictors: dict[str, Any], spacing: list[float], n_scans: int,
             device: str) -> tuple[dict[str, list[float]], dict[str, list[np.ndarray]], list[np.ndarray], list[float]]:
    """Held-out scans through every predictor, in rotating order: seconds, masks, truths, true volumes."""
    import nibabel as nib

    from wmhseg.synth.images import write_scan

    shape = [int(round(f / s)) for f, s in zip(FOV_MM, spacing, strict=True)]
    volumes = [float(v) for v in np.linspace(2000.0, 25000.0, n_scans)]
    seconds: dict[str, list[float]] = {k: [] for k in predictors}
    masks: dict[str, list[np.ndarray]] = {k: [] for k in predictors}
    truths: list[np.ndarray] = []
    with tempfile.TemporaryDirectory(prefix="wmhseg-acc-") as tmp:
        for i, vol in enumerate(volumes):
            paths = write_scan(tmp, f"acc{i}", "1", wmh_volume_mm3=vol, seed=90_001 + i, shape=shape,
                               spacing=spacing, anatomy="procedural", rotation_deg=5.0)
            truths.append(np.asarray(nib.load(str(paths["label"])).dataobj) == 9)
            prepared = predictors[REFERENCE].prepare(paths["t1"], paths["flair"])
            names = list(predictors)
            for name in names[i % len(names):] + names[: i % len(names)]:  # rotate: load hits all alike
                pred = predictors[name]
                if i == 0:
                    pred.predict(prepared.image)  # warm-up (oneDNN primitive caches)
                device_sync(device)
                t = time.perf_counter()
                working = pred.predict(prepared.image)
                device_sync(device)
                seconds[name].append(time.perf_counter() - t)
                masks[name].append(pred.to_native(working, prepared.shape, prepared.affine).mask)
    return seconds, masks, truths, volumes


def _summaries(predictors: dict[str, Any], seconds: dict[str, list[float]], masks: dict[str, list[np.ndarray]],
               truths: list[np.ndarray]) -> dict[str, Any]:
    """Per variant: time, pooled and lowest-scan Dice against the reference, torch fp32, the truth."""
    from wmhseg.metrics import dice

    pooled = {name: np.concatenate([m.ravel() for m in ms]) for name, ms in masks.items()}
    truth = np.concatenate([t.ravel() for t in truths])
    base = statistics.median(seconds[REFERENCE])
    out: dict[str, Any] = {}
    for name, pred in predictors.items():
        per_scan = [dice(m, r) for r, m in zip(masks[REFERENCE], masks[name], strict=True)]
        change = [abs(int(m.sum()) - int(r.sum())) / max(int(r.sum()), 1) for r, m in zip(masks[FP32], masks[name], strict=True)]
        out[name] = {
            "settings": pred.describe(),
            "predict_median_s": round(statistics.median(seconds[name]), 3),
            "speedup_vs_reference": round(ratio(base, statistics.median(seconds[name])), 2),
            "dice_vs_reference": round(dice(pooled[name], pooled[REFERENCE]), 5),
            "dice_vs_reference_min_scan": round(min(per_scan), 5),
            "dice_vs_truth": round(dice(pooled[name], truth), 4),
            "dice_vs_checkpoint_window": round(dice(pooled[name], pooled["sw_checkpoint"]), 5),
            "dice_vs_torch_fp32": round(dice(pooled[name], pooled[FP32]), 5),
            "max_volume_change_vs_torch_fp32_pct": round(100 * max(change), 3),
        }
    return out


def _window_rows(variants: dict[str, Any], window: list[int], checkpoint_roi: list[int]) -> list[dict[str, Any]]:
    fast = "one_pass_bf16" if "one_pass_bf16" in variants else FP32
    auto, ref = variants["auto"], variants[REFERENCE]
    auto_mode = "one pass" if auto["settings"]["roi_size"] is None else "sliding window"
    return [{
        "goal": "1. accuracy: one pass vs MONAI's default window (trained network, held-out scans)",
        "baseline": f"MONAI sliding window ({window[0]}^3 = 96 mm) fp32: Dice vs truth {ref['dice_vs_truth']:.3f}, "
                    f"{ref['predict_median_s']:.2f} s",
        "candidate": f"{fast}: Dice vs baseline {variants[fast]['dice_vs_reference']:.4f} "
                     f"(lowest scan {variants[fast]['dice_vs_reference_min_scan']:.4f}), "
                     f"vs truth {variants[fast]['dice_vs_truth']:.3f}, {variants[fast]['predict_median_s']:.2f} s",
        "ratio": variants[fast]["speedup_vs_reference"],
        "target": f"Dice >= {DICE_TARGET}",
        "met": variants[fast]["dice_vs_reference"] >= DICE_TARGET,
    }, {
        "goal": "1. accuracy: infer.py default vs the checkpoint's training window",
        "baseline": f"sliding window {checkpoint_roi[0]}^3 fp32: {variants['sw_checkpoint']['predict_median_s']:.2f} s",
        "candidate": f"roi_size auto ({auto_mode}, {auto['settings']['precision']}, {auto['settings'].get('backend', 'torch')}): "
                     f"Dice vs baseline {auto['dice_vs_checkpoint_window']:.4f}, {auto['predict_median_s']:.2f} s",
        "ratio": round(ratio(variants["sw_checkpoint"]["predict_median_s"], auto["predict_median_s"]), 2),
        "target": f"Dice >= {DICE_TARGET}",
        "met": auto["dice_vs_checkpoint_window"] >= DICE_TARGET,
    }]


def _same_mask_rows(variants: dict[str, Any]) -> list[dict[str, Any]]:
    """Each faster backend or precision against torch's fp32 one pass."""
    ref = variants[FP32]
    rows = []
    for name in ("one_pass_bf16", "one_pass_openvino", "one_pass_bf16_openvino", "auto", "one_pass_cpu"):
        if name not in variants:
            continue
        v = variants[name]
        what = (f"torch fp32 on {ref['settings']['device']} vs on the CPU" if name == "one_pass_cpu"
                else f"{name} vs torch fp32")
        rows.append({
            "goal": f"1. masks unchanged: {what} (trained network, held-out scans)",
            "baseline": f"torch fp32 one pass: {ref['predict_median_s']:.2f} s",
            "candidate": f"Dice {v['dice_vs_torch_fp32']:.4f}, largest WMH volume change "
                         f"{v['max_volume_change_vs_torch_fp32_pct']:.2f} %, {v['predict_median_s']:.2f} s",
            "ratio": round(ratio(ref["predict_median_s"], v["predict_median_s"]), 2),
            "target": f"Dice >= {SAME_MASK_DICE}",
            "met": v["dice_vs_torch_fp32"] >= SAME_MASK_DICE,
        })
    return rows


def run(*, ckpt: str | None, quick: bool = False, device: str = "cpu") -> dict[str, Any]:
    """Segment held-out synthetic scans with each inference setting; rows for the summary table."""
    if not ckpt:
        return {"name": "accuracy", "available": False, "rows": [],
                "reason": "needs a trained checkpoint: --ckpt (e.g. make demo's demo_out/train/checkpoints/best.ckpt)"}
    from timing import bf16_fast

    from wmhseg.inference import Predictor
    from wmhseg.inference.backends import openvino_available

    fast_bf16, _ = bf16_fast(torch.device(device))
    probe = Predictor.from_checkpoint(ckpt, device=device)
    spacing = [float(s) for s in probe.preprocess_spec.spacing]
    window = _reference_window(spacing, probe.size_divisor)
    predictors = {name: Predictor.from_checkpoint(ckpt, **kw)
                  for name, kw in _variants(device, fast_bf16, window, openvino_available()).items()}
    n_scans = 2 if quick else 6
    load_before = loadavg()
    seconds, masks, truths, volumes = _segment(predictors, spacing, n_scans, device)
    load_after = loadavg()
    variants = _summaries(predictors, seconds, masks, truths)
    rows = _window_rows(variants, window, list(predictors["sw_checkpoint"].roi_size)) + _same_mask_rows(variants)
    return {"name": "accuracy", "available": True, "rows": rows, "details": {
        "checkpoint": str(Path(ckpt)), "scans": n_scans, "shape": list(truths[0].shape), "spacing_mm": spacing,
        "reference_window": window, "true_wmh_mm3": [round(v) for v in volumes], "variants": variants,
        "loadavg_during": [load_before, load_after]}}
