"""How well ``infer.py`` runs measured a simulated study: volumes, change within subjects, new lesions.

``python -m wmhseg.synth score STUDY NAME=RUN_DIR ...`` compares runs on a study written by
:func:`wmhseg.synth.study.write_study` with the study's truth (``true_volumes.csv``, the painted
volume of every scan; ``truth/<subject>/<from>_to_<to>_changes.nii.gz``, the true lesion changes
on the subject's reference grid; ``acquisitions.csv``, each visit's exact head motion).

:func:`volume_errors`, over the subjects with two or more measured visits:

* ``within_subject_sd_mm3``: the SD of measured minus true volume with each subject's mean error
  removed (``sum(residual^2) / (scans - subjects)``). A constant error per subject (a network
  that over-segments one head) does not enter the slopes, so this is the error a progression
  estimate sees;
* ``change_measured``: the least-squares slope of the measured on the true deviations of each
  visit from its subject's mean, 1 when the whole change is measured, below 1 when it is shrunk;
* ``mean_error_mm3``; the per-subject least-squares slopes' error (mean, SD) and, per group, the
  mean true and measured slope (mm^3/year).

:func:`new_lesion_detection`, for runs with change maps (``longitudinal=true``): a true new lesion
is *found* when a voxel of a measured ``new`` lesion maps, through the visit's known motion, into
it or within one voxel of it (its 26-neighbourhood); a measured new lesion is *right* when it maps
onto a true one likewise. ``min_mm3`` leaves smaller lesions out of both counts.

Example:
    >>> import pandas as pd
    >>> true = pd.DataFrame({"subject_id": ["a"] * 3, "session_id": ["1", "2", "3"], "wmh_mm3": [100.0, 200, 300]})
    >>> clinical = true.assign(group="ALS", years_since_baseline=[0.0, 1, 2])
    >>> measured = true.assign(wmh_mm3=[150.0, 200, 250])   # half of the change, no net bias
    >>> round(volume_errors(measured, true, clinical)["change_measured"], 3)
    0.5
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd
from scipy import ndimage

from wmhseg.errors import InputError
from wmhseg.metrics import label_lesions
from wmhseg.synth.followups import read_motion

__all__ = ["volume_errors", "new_lesion_detection", "score_run", "score_table"]

IDS = {"subject_id": str, "session_id": str, "session_from": str, "session_to": str}
_KEYS = ["subject_id", "session_id"]
_FULL = np.ones((3, 3, 3), bool)


def _read(path: Path, columns: tuple[str, ...]) -> pd.DataFrame:
    try:
        table = pd.read_csv(path, dtype=IDS)
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: cannot read the table ({exc})") from exc
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise InputError(f"{path}: missing column(s) {missing}")
    return table


def volume_errors(measured: pd.DataFrame, true: pd.DataFrame, clinical: pd.DataFrame) -> dict[str, Any]:
    """Within-subject error SD, share of the change measured, slope errors (see the module docstring).

    ``measured`` and ``true`` have ``subject_id, session_id, wmh_mm3``; ``clinical`` has
    ``subject_id, session_id, group, years_since_baseline``. Scans missing from ``measured`` (or
    with no volume) are left out.
    """
    d = measured[[*_KEYS, "wmh_mm3"]].dropna().merge(true[[*_KEYS, "wmh_mm3"]], on=_KEYS, suffixes=("", "_true"))
    d = d.merge(clinical[[*_KEYS, "group", "years_since_baseline"]], on=_KEYS)
    d["err"] = d["wmh_mm3"] - d["wmh_mm3_true"]
    multi = d.groupby("subject_id").filter(lambda g: len(g) >= 2)
    if multi.empty:
        raise InputError("no subject has two or more measured visits: nothing to compare within subjects")
    by_subject = multi.groupby("subject_id")
    resid = multi["err"] - by_subject["err"].transform("mean")
    dof = len(multi) - multi["subject_id"].nunique()
    dev = multi["wmh_mm3"] - by_subject["wmh_mm3"].transform("mean")
    dev_true = multi["wmh_mm3_true"] - by_subject["wmh_mm3_true"].transform("mean")
    slopes = pd.DataFrame([
        {"group": g["group"].iloc[0],
         "measured": np.polyfit(g["years_since_baseline"].to_numpy(float), g["wmh_mm3"].to_numpy(float), 1)[0],
         "true": np.polyfit(g["years_since_baseline"].to_numpy(float), g["wmh_mm3_true"].to_numpy(float), 1)[0]}
        for _, g in by_subject if np.ptp(g["years_since_baseline"].to_numpy(float)) > 0])
    error = slopes["measured"] - slopes["true"] if len(slopes) else pd.Series(dtype=float)
    return {
        "within_subject_sd_mm3": float(np.sqrt((resid**2).sum() / dof)),
        "change_measured": float((dev * dev_true).sum() / (dev_true**2).sum()) if (dev_true**2).sum() > 0 else np.nan,
        "mean_error_mm3": float(d["err"].mean()),
        "slope_error_mean": float(error.mean()) if len(error) else np.nan,
        "slope_error_sd": float(error.std(ddof=1)) if len(error) > 1 else np.nan,
        "slope_by_group": {str(k): {"n": int(len(g)), "true_mean": float(g["true"].mean()),
                                    "measured_mean": float(g["measured"].mean())}
                           for k, g in slopes.groupby("group")} if len(slopes) else {},
        "n_subjects": int(multi["subject_id"].nunique()), "n_scans": int(len(multi)),
    }


def _load(path: Path) -> tuple[nib.Nifti1Image, np.ndarray]:
    try:
        img = nib.load(str(path))
        return img, np.asarray(img.dataobj)
    except (OSError, ValueError, EOFError, nib.filebasedimages.ImageFileError) as exc:
        raise InputError(f"{path}: cannot read the change map ({exc})") from exc


def _at_least(size_mm3: float, min_mm3: float) -> bool:
    """``size_mm3 >= min_mm3`` at the lesion table's precision (mm^3 to 3 decimals): a voxel volume
    read from an affine (7.999999999999998 for 2 mm) must not drop a lesion of exactly ``min_mm3``."""
    return round(float(size_mm3), 3) >= min_mm3


def _pair_counts(truth_path: Path, measured_path: Path, later_motion: np.ndarray, min_mm3: float) -> dict[str, int]:
    """One consecutive pair's new-lesion counts (true, found, measured, right)."""
    truth_img, truth = _load(truth_path)
    ref_voxel = float(abs(np.linalg.det(truth_img.affine[:3, :3])))
    true_labels, n_true = label_lesions(truth == 1)
    sizes = ndimage.sum_labels(truth == 1, true_labels, np.arange(1, n_true + 1)) * ref_voxel
    big = {i + 1 for i, size in enumerate(sizes) if _at_least(size, min_mm3)}
    # each true new lesion with its one-voxel neighbourhood, labelled by the lesion it surrounds
    near = ndimage.grey_dilation(np.where(np.isin(true_labels, list(big)), true_labels, 0), footprint=_FULL)
    img, measured = _load(measured_path)
    voxel = float(abs(np.linalg.det(img.affine[:3, :3])))
    found_labels, n_found = label_lesions(measured == 1)
    to_ref = np.linalg.inv(truth_img.affine) @ np.linalg.inv(later_motion) @ img.affine
    counts = {"true": len(big), "found": 0, "measured": 0, "right": 0}
    hit: set[int] = set()
    for k in range(1, n_found + 1):
        vox = np.argwhere(found_labels == k)
        if not _at_least(len(vox) * voxel, min_mm3):
            continue
        ref = np.rint(np.c_[vox, np.ones(len(vox))] @ to_ref.T)[:, :3].astype(int)
        ref = ref[np.all((ref >= 0) & (ref < np.asarray(truth.shape)), axis=1)]
        hits = {int(v) for v in near[tuple(ref.T)] if v > 0}
        counts["measured"] += 1
        counts["right"] += bool(hits)
        hit |= hits
    counts["found"] = len(hit)
    return counts


def new_lesion_detection(study: str | os.PathLike, run: str | os.PathLike, min_mm3: float = 0.0) -> dict[str, float]:
    """New-lesion recall and precision of ``run``'s change maps against ``study``'s truth.

    Pairs without a measured change map (a subject segmented independently) are left out.
    """
    study, run = Path(study), Path(run)
    acq = _read(study / "acquisitions.csv", ("subject_id", "session_id", "world_from_reference"))
    motion = {(r.subject_id, r.session_id): read_motion(r.world_from_reference) for r in acq.itertuples(index=False)}
    pairs = _read(study / "lesion_changes.csv", ("subject_id", "session_from", "session_to"))
    counts = {"true": 0, "found": 0, "measured": 0, "right": 0, "pairs": 0}
    for sid, a, b in pairs[["subject_id", "session_from", "session_to"]].drop_duplicates().itertuples(index=False):
        measured = run / "longitudinal" / sid / f"{a}_to_{b}_changes.nii.gz"
        if not measured.is_file():
            continue
        pair = _pair_counts(study / "truth" / sid / f"{a}_to_{b}_changes.nii.gz", measured, motion[(sid, b)], min_mm3)
        counts = {k: counts[k] + pair[k] for k in pair} | {"pairs": counts["pairs"] + 1}
    return {"recall": counts["found"] / counts["true"] if counts["true"] else np.nan,
            "precision": counts["right"] / counts["measured"] if counts["measured"] else np.nan,
            **{f"n_{k}": v for k, v in counts.items()}}


def score_run(study: str | os.PathLike, run: str | os.PathLike, min_new_mm3: float = 40.0) -> dict[str, Any]:
    """:func:`volume_errors` of ``run/volumes.csv`` and its new-lesion detection (all lesions and
    those of at least ``min_new_mm3``; NaN without change maps)."""
    study, run = Path(study), Path(run)
    measured = _read(run / "volumes.csv", ("subject_id", "session_id", "status", "wmh_mm3"))
    true = _read(study / "true_volumes.csv", ("subject_id", "session_id", "wmh_mm3"))
    clinical = _read(study / "clinical.csv", ("subject_id", "session_id", "group", "years_since_baseline"))
    out = volume_errors(measured[measured["status"] == "ok"], true, clinical)
    out["detection_all"] = new_lesion_detection(study, run)
    out[f"detection_min{min_new_mm3:g}"] = new_lesion_detection(study, run, min_new_mm3)
    return out


def score_table(study: str | os.PathLike, runs: Mapping[str, str | os.PathLike]) -> pd.DataFrame:
    """One row per run: within-subject SD, change measured, mean error, slope error, new lesions."""
    rows = []
    for name, run in runs.items():
        s = score_run(study, run)
        det = s["detection_all"]
        rows.append({"run": name, "within-subject SD (mm3)": round(s["within_subject_sd_mm3"]),
                     "change measured": round(s["change_measured"], 2), "mean error (mm3)": round(s["mean_error_mm3"]),
                     "slope error SD (mm3/year)": round(s["slope_error_sd"]) if np.isfinite(s["slope_error_sd"]) else np.nan,
                     "new lesions recall": round(det["recall"], 2), "new lesions precision": round(det["precision"], 3),
                     "scans": s["n_scans"]})
    return pd.DataFrame(rows)
