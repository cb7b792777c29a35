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
* new-lesion detection against the simulated changes (:func:`wmhseg.synth.scoring.new_lesion_detection`:
  a true new lesion is found when a voxel of a measured ``new`` lesion maps, through the known
  motion, into it or within one voxel of it; a measured new lesion is right when it maps onto a
  true new lesion likewise); recall/precision for all lesions and for lesions of at least
  ``--min-new`` mm^3;
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

import pandas as pd

from wmhseg.stats.analysis import run_analysis
from wmhseg.synth.scoring import new_lesion_detection, volume_errors

ROOT = Path(__file__).resolve().parents[1]
IDS = {"subject_id": str, "session_id": str, "session_from": str, "session_to": str}
HEADLINES = ("wmh_progression_als_vs_control", "wmh_progression_short_vs_long")


def _infer(ckpt: Path, study: Path, out: Path, **extra: object) -> pd.DataFrame:
    args = [f"{k}={v}" for k, v in extra.items()]
    subprocess.run([sys.executable, str(ROOT / "infer.py"), f"ckpt_path={ckpt}", f"input={study / 'manifest.csv'}",
                    f"out_dir={out}", "qc=false", "progress=false", *args], check=False, cwd=ROOT)
    return pd.read_csv(out / "volumes.csv", dtype=IDS)


def headlines(volumes: pd.DataFrame, clinical: pd.DataFrame) -> dict[str, dict[str, float]]:
    result = run_analysis(volumes.astype({"wmh_mm3": float}), clinical).headline_dict()
    return {k: {"estimate": result[k]["estimate"], "std_err": result[k]["std_err"]} for k in HEADLINES}


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
            "detection_all": new_lesion_detection(study, out),
            f"detection_min{args.min_new:g}": new_lesion_detection(study, out, args.min_new),
            "s_per_scan": t, "added_s_per_visit": t - t_ind,
        }
        print(json.dumps({key: report[key]}, indent=1), flush=True)
    report["loadavg_end"] = os.getloadavg()
    args.out.write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
