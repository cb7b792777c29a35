"""Independent vs longitudinal segmentation on a simulated study with realistic follow-ups.

    python benchmarks/bench_longitudinal.py --ckpt demo_out/train/checkpoints/best.ckpt [--n 16] [--weights 0 0.25 0.5 0.75]
        [--out benchmarks/results/longitudinal.json]

Simulates a study (``python -m wmhseg.synth study``, realistic follow-ups: repositioned head,
contrast drift, a scanner change for some subjects), segments it with ``infer.py`` once
independently (for the time) and once in longitudinal mode per prior weight (weight 0 gives the
independent masks plus registered change maps), again with left-right test-time flips for the
``--flip-weights``, and with flips, prior weight 0.25 and each ``--confirm-mm3``, and reports for
each:

* the within-subject residual SD of measured minus true volume (pooled over subjects with two
  or more visits, subject means removed), the share of the true within-subject change that is
  measured (least squares of measured on true deviations from the subject's mean), the mean/SD
  of the per-subject slope error, and the mean measured and true slope of each group;
* headline 1 and 2 (estimate, SE) against the same analysis of the true volumes;
* new-lesion detection against the simulated changes: a true new lesion is found when a voxel
  of a measured ``new`` lesion maps (through the known motion) into it or its 1-voxel rim; a
  measured new lesion is right when it maps onto a true new lesion likewise; recall/precision
  for all lesions and for lesions of at least ``--min-new`` mm^3;
* time per scan (mean of volumes.csv's ``t_total_s``: load, preprocess, predict, export,
  measure; in longitudinal mode the subject's prediction, registration and fusion shared over
  its visits), and the added time per visit of longitudinal mode.

Finished runs in ``--work`` are reused (infer.py skips finished scans). Writes
``benchmarks/results/longitudinal.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd
from scipy import ndimage

from wmhseg.metrics import label_lesions
from wmhseg.stats.analysis import run_analysis

ROOT = Path(__file__).resolve().parents[1]
IDS = {"subject_id": str, "session_id": str, "session_from": str, "session_to": str}
HEADLINES = ("wmh_progression_als_vs_control", "wmh_progression_short_vs_long")


def _infer(ckpt: Path, study: Path, out: Path, **extra: object) -> pd.DataFrame:
    args = [f"{k}={v}" for k, v in extra.items()]
    subprocess.run([sys.executable, str(ROOT / "infer.py"), f"ckpt_path={ckpt}", f"input={study / 'manifest.csv'}",
                    f"out_dir={out}", "qc=false", "progress=false", *args], check=False, cwd=ROOT)
    return pd.read_csv(out / "volumes.csv", dtype=IDS)


def volume_errors(measured: pd.DataFrame, true: pd.DataFrame, clinical: pd.DataFrame) -> dict[str, Any]:
    """Within-subject residual SD of measured minus true volume, how much of the true change
    within subjects is measured, and per-subject slope errors (overall and by group)."""
    d = measured.merge(true, on=["subject_id", "session_id"], suffixes=("", "_true"))
    d = d.merge(clinical[["subject_id", "session_id", "group", "years_since_baseline"]], on=["subject_id", "session_id"])
    d["err"] = d["wmh_mm3"] - d["wmh_mm3_true"]
    multi = d.groupby("subject_id").filter(lambda g: len(g) >= 2)
    resid = multi["err"] - multi.groupby("subject_id")["err"].transform("mean")
    dof = len(multi) - multi["subject_id"].nunique()
    # measured against true deviations from the subject's mean: 1 when every change is measured in full
    dev = multi["wmh_mm3"] - multi.groupby("subject_id")["wmh_mm3"].transform("mean")
    dev_true = multi["wmh_mm3_true"] - multi.groupby("subject_id")["wmh_mm3_true"].transform("mean")
    slopes = []
    for _, g in multi.groupby("subject_id"):
        t = g["years_since_baseline"].to_numpy(float)
        slopes.append({"group": g["group"].iloc[0], "measured": np.polyfit(t, g["wmh_mm3"], 1)[0],
                       "true": np.polyfit(t, g["wmh_mm3_true"], 1)[0]})
    slopes = pd.DataFrame(slopes)
    error = slopes["measured"] - slopes["true"]
    by_group = {str(k): {"n": int(len(g)), "true_mean": float(g["true"].mean()), "measured_mean": float(g["measured"].mean())}
                for k, g in slopes.groupby("group")}
    return {"within_subject_sd_mm3": float(np.sqrt((resid**2).sum() / dof)), "mean_error_mm3": float(d["err"].mean()),
            "change_measured_share": float((dev * dev_true).sum() / (dev_true**2).sum()),
            "slope_error_mean": float(error.mean()), "slope_error_sd": float(error.std(ddof=1)),
            "slope_by_group": by_group,
            "n_subjects": int(multi["subject_id"].nunique()), "n_scans": int(len(multi))}


def headlines(volumes: pd.DataFrame, clinical: pd.DataFrame) -> dict[str, dict[str, float]]:
    result = run_analysis(volumes.astype({"wmh_mm3": float}), clinical).headline_dict()
    return {k: {"estimate": result[k]["estimate"], "std_err": result[k]["std_err"]} for k in HEADLINES}


def _motion(row) -> np.ndarray:
    m = np.eye(4)
    m[:3] = np.array(str(row).split(), float).reshape(3, 4)
    return m


def detection(study: Path, out: Path, min_mm3: float) -> dict[str, float]:
    """New-lesion recall and precision of ``out``'s change maps against the simulated truth."""
    acq = pd.read_csv(study / "acquisitions.csv", dtype=IDS).set_index(["subject_id", "session_id"])
    pairs = pd.read_csv(study / "lesion_changes.csv", dtype=IDS)[["subject_id", "session_from", "session_to"]]
    counts = {"true": 0, "found": 0, "measured": 0, "right": 0}
    for sid, a, b in pairs.drop_duplicates().itertuples(index=False):
        measured_path = out / "longitudinal" / sid / f"{a}_to_{b}_changes.nii.gz"
        if not measured_path.is_file():
            continue
        truth_img = nib.load(study / "truth" / sid / f"{a}_to_{b}_changes.nii.gz")
        ref_voxel = float(abs(np.linalg.det(truth_img.affine[:3, :3])))
        true_new, n_true = label_lesions(ndimage.binary_dilation(np.asarray(truth_img.dataobj) == 1))
        core = np.asarray(truth_img.dataobj) == 1
        sizes = ndimage.sum_labels(core, true_new, np.arange(1, n_true + 1)) * ref_voxel
        img = nib.load(measured_path)
        voxel = float(abs(np.linalg.det(img.affine[:3, :3])))
        found_new, n_found = label_lesions(np.asarray(img.dataobj) == 1)
        to_ref = np.linalg.inv(truth_img.affine) @ np.linalg.inv(_motion(acq.loc[(sid, b), "world_from_reference"])) @ img.affine
        hit_true: set[int] = set()
        for k in range(1, n_found + 1):
            vox = np.argwhere(found_new == k)
            if len(vox) * voxel < min_mm3:
                continue
            ref = np.rint(np.c_[vox, np.ones(len(vox))] @ to_ref.T)[:, :3].astype(int)
            ref = ref[np.all((ref >= 0) & (ref < np.asarray(true_new.shape)), axis=1)]
            hits = {int(v) for v in true_new[tuple(ref.T)] if v > 0}
            counts["measured"] += 1
            counts["right"] += bool(hits)
            hit_true |= hits
        big = [i + 1 for i, s in enumerate(sizes) if s >= min_mm3]
        counts["true"] += len(big)
        counts["found"] += len(hit_true & set(big))
    recall = counts["found"] / counts["true"] if counts["true"] else float("nan")
    precision = counts["right"] / counts["measured"] if counts["measured"] else float("nan")
    return {"recall": recall, "precision": precision, **{f"n_{k}": v for k, v in counts.items()}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", type=Path, default=ROOT / "demo_out/train/checkpoints/best.ckpt")
    parser.add_argument("--work", type=Path, default=ROOT / "bench_out/longitudinal")
    parser.add_argument("--n", type=int, default=16, help="ALS patients and controls each")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--weights", type=float, nargs="+", default=[0.0, 0.25, 0.5, 0.75])
    parser.add_argument("--flip-weights", type=float, nargs="*", default=[0.0, 0.25],
                        help="prior weights run again with left-right test-time flips (inference.tta_flips=[[0]])")
    parser.add_argument("--confirm-mm3", type=float, nargs="*", default=[40.0, 200.0],
                        help="longitudinal_options.confirm_mm3 values, each run with flips and prior weight 0.25")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "longitudinal.json")
    parser.add_argument("--min-new", type=float, default=40.0, help="mm^3: the second detection figure's size")
    args = parser.parse_args(argv)
    study = args.work / "study"
    subprocess.run([sys.executable, "-m", "wmhseg.synth", "study", str(study), "--n-als", str(args.n), "--n-control",
                    str(args.n), "--seed", str(args.seed), "--anatomy", "procedural", "--shape", "80", "96", "80",
                    "--spacing", "2"], check=True, cwd=ROOT)
    true = pd.read_csv(study / "true_volumes.csv", dtype=IDS)
    clinical = pd.read_csv(study / "clinical.csv", dtype=IDS)
    n_scans = len(true)
    report: dict[str, object] = {"n_scans": n_scans, "loadavg_start": os.getloadavg(),
                                 "true_volumes": headlines(true, clinical)}
    independent = _infer(args.ckpt, study, args.work / "independent")
    t_ind = float(independent["t_total_s"].mean())
    report["independent"] = {**volume_errors(independent[["subject_id", "session_id", "wmh_mm3"]],
                                             true[["subject_id", "session_id", "wmh_mm3"]], clinical),
                             "headlines": headlines(independent, clinical), "s_per_scan": t_ind}
    variants = ([(w, False, 0.0) for w in args.weights] + [(w, True, 0.0) for w in args.flip_weights]
                + [(0.25, True, c) for c in args.confirm_mm3])
    for w, flips, confirm in variants:
        key = (f"flips, w={w:g}" if flips else f"w={w:g}") + (f", confirm {confirm:g}" if confirm else "")
        out = args.work / ((f"longitudinal_flips_w{w:g}" if flips else f"longitudinal_w{w:g}")
                           + (f"_confirm{confirm:g}" if confirm else ""))
        options = {"longitudinal_options.prior_weight": w, "longitudinal_options.confirm_mm3": confirm}
        vol = _infer(args.ckpt, study, out, longitudinal="true", visit_times=study / "clinical.csv", **options,
                     **({"inference.tta_flips": "[[0]]"} if flips else {}))
        t = float(vol["t_total_s"].mean())
        report[key] = {
            **volume_errors(vol[["subject_id", "session_id", "wmh_mm3"]], true[["subject_id", "session_id", "wmh_mm3"]],
                            clinical),
            "headlines": headlines(vol, clinical),
            "detection_all": detection(study, out, 0.0),
            f"detection_min{args.min_new:g}": detection(study, out, args.min_new),
            "s_per_scan": t, "added_s_per_visit": t - t_ind,
        }
        print(json.dumps({key: report[key]}, indent=1), flush=True)
    report["loadavg_end"] = os.getloadavg()
    args.out.write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
