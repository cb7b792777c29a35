"""Calibration and cost of the volume intervals (``inference.uncertainty``) on held-out phantoms.

    python benchmarks/bench_uncertainty.py --ckpt demo_out/train/checkpoints/best.ckpt [--n 30] [--samples 8]
    python benchmarks/bench_uncertainty.py --ckpt fold0.ckpt --ensemble fold1.ckpt fold2.ckpt ...

Held-out synthetic scans (procedural anatomy, seeds no training run uses, WMH drawn log-uniform
over 1-20 cm³, rotated up to 10 degrees) are segmented by :class:`~wmhseg.inference.Predictor`
as ``infer.py`` does; each mode gives the volume's SD. The true volume is the painted label's.

Calibration is split-conformal: the scans with even index calibrate, the odd ones are held out.
On the calibration half the score of a scan is ``|true - wmh_mm3| / (z * sd)``; the calibration
factor is its ``ceil((n + 1) * 0.95)``-th smallest value, which makes the interval
``wmh_mm3 ± z * factor * sd`` cover 95 % of exchangeable scans. Reported: the share of held-out
true volumes inside the uncalibrated interval (factor 1) and inside the calibrated one, the
factor (``inference.uncertainty_calibration``), and the added seconds per scan of each mode.
Writes ``benchmarks/results/uncertainty.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path
from statistics import NormalDist
from typing import Any

import numpy as np
from timing import loadavg

RESULTS = Path(__file__).resolve().parent / "results" / "uncertainty.json"
LEVEL = 0.95


def _phantoms(tmp: str, n: int, spacing: list[float], shape: list[int]) -> list[dict[str, Any]]:
    from wmhseg.synth.images import write_scan

    rng = np.random.default_rng(20_261_202)
    volumes = np.exp(rng.uniform(math.log(1000.0), math.log(20000.0), n))
    angles = rng.uniform(0.0, 10.0, n)
    return [write_scan(tmp, f"unc{i:03d}", "1", wmh_volume_mm3=float(v), seed=70_001 + i, shape=shape,
                       spacing=spacing, anatomy="procedural", rotation_deg=float(a))
            for i, (v, a) in enumerate(zip(volumes, angles, strict=True))]


def _calibrate(true: np.ndarray, est: np.ndarray, sd: np.ndarray) -> dict[str, Any]:
    z = NormalDist().inv_cdf(0.5 + LEVEL / 2)
    score = np.abs(true - est) / np.maximum(z * sd, 1e-9)
    cal, held = np.arange(0, len(true), 2), np.arange(1, len(true), 2)
    rank = math.ceil((len(cal) + 1) * LEVEL)
    factor = float(np.sort(score[cal])[rank - 1]) if rank <= len(cal) else math.inf
    return {
        "n_calibration": int(len(cal)), "n_held_out": int(len(held)),
        "coverage_uncalibrated_held_out": round(float(np.mean(score[held] <= 1.0)), 3),
        "coverage_uncalibrated_all": round(float(np.mean(score <= 1.0)), 3),
        "calibration_factor": round(factor, 3) if math.isfinite(factor) else None,
        "coverage_calibrated_held_out": round(float(np.mean(score[held] <= factor)), 3),
        "median_sd_mm3": round(float(np.median(sd)), 1),
        "median_abs_error_mm3": round(float(np.median(np.abs(true - est))), 1),
        "mean_error_mm3": round(float(np.mean(est - true)), 1),
    }


def run(ckpt: str, n: int, samples: int, ensemble: list[str]) -> dict[str, Any]:
    import nibabel as nib

    from wmhseg.inference import Predictor
    from wmhseg.inference.uncertainty import UncertaintySettings, VolumeUncertainty

    predictor = Predictor.from_checkpoint(ckpt, device="cpu")
    spacing = [float(s) for s in predictor.preprocess_spec.spacing]
    shape = [int(round(f / s)) for f, s in zip((160.0, 192.0, 160.0), spacing, strict=True)]
    modes = {"tta": VolumeUncertainty(UncertaintySettings(mode="tta", samples=samples))}
    if ensemble:
        members = [Predictor.from_checkpoint(p, device="cpu") for p in ensemble]
        modes["ensemble"] = VolumeUncertainty(UncertaintySettings(mode="ensemble"), members)
    rows: list[dict[str, Any]] = []
    load_before = loadavg()
    with tempfile.TemporaryDirectory(prefix="wmhseg-unc-") as tmp:
        for i, paths in enumerate(_phantoms(tmp, n, spacing, shape)):
            prepared = predictor.prepare(paths["t1"], paths["flair"])
            t0 = time.perf_counter()
            native = predictor.to_native(predictor.predict(prepared.image), prepared.shape, prepared.affine)
            row: dict[str, Any] = {"t_plain_s": time.perf_counter() - t0}
            vox = float(abs(np.linalg.det(prepared.affine[:3, :3])))
            row["wmh_mm3"] = float(native.mask.sum()) * vox
            row["true_mm3"] = float((np.asarray(nib.load(str(paths["label"])).dataobj) == 9).sum()) * vox
            for name, unc in modes.items():
                t0 = time.perf_counter()
                row[f"{name}_sd"] = unc(predictor, prepared, row["wmh_mm3"])["wmh_mm3_sd"]
                row[f"t_{name}_s"] = time.perf_counter() - t0
            rows.append(row)
            print(f"scan {i}: true {row['true_mm3']:.0f}, measured {row['wmh_mm3']:.0f}, "
                  + ", ".join(f"{m} SD {row[f'{m}_sd']:.0f}" for m in modes), file=sys.stderr)
    true = np.array([r["true_mm3"] for r in rows])
    est = np.array([r["wmh_mm3"] for r in rows])
    out: dict[str, Any] = {
        "checkpoint": ckpt, "n_scans": n, "level": LEVEL, "tta_samples": samples,
        "plain_seconds_per_scan": round(float(np.median([r["t_plain_s"] for r in rows])), 3),
        "load_average": {"start": load_before, "end": loadavg()}, "modes": {},
    }
    for name in modes:
        sd = np.array([r[f"{name}_sd"] for r in rows])
        out["modes"][name] = {**_calibrate(true, est, sd),
                              "added_seconds_per_scan": round(float(np.median([r[f"t_{name}_s"] for r in rows])), 3)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", required=True)
    parser.add_argument("--ensemble", nargs="*", default=[], help="the ensemble's other checkpoints")
    parser.add_argument("--n", type=int, default=30)
    parser.add_argument("--samples", type=int, default=8)
    args = parser.parse_args()
    result = run(args.ckpt, args.n, args.samples, args.ensemble)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
