"""A simulated longitudinal study as files: scans, a scan manifest, a clinical table, the truth.

:func:`write_study` joins the two simulators: :func:`wmhseg.synth.cohort.simulate_cohort` draws
the cohort (ALS and controls, visits, survival, ALSFRS-R, and each scan's true WMH volume), and
:func:`wmhseg.synth.images.write_scan` paints every scan with that WMH volume (one anatomy and
lesion pattern per subject, lesions growing in place across visits). Follow-ups are acquired as
in real studies (:mod:`wmhseg.synth.followups`: the head repositioned, the FLAIR contrast
drifting, a scanner change midway for some subjects). The result is the input of
the real pipeline, ``infer.py`` on ``manifest.csv`` then ``analyze.py`` on its ``volumes.csv``
with ``clinical.csv``, and ``truth.json`` holds what the headline models should recover.

Files written under ``out_dir``::

    scans/sub-<id>/ses-<id>/anat/*_{T1w,FLAIR,label}.nii.gz
    manifest.csv        subject_id,session_id,t1,flair,label (paths relative to out_dir)
    clinical.csv        the clinical table (the documented schema)
    true_volumes.csv    the painted WMH volume of every scan, in the volume-table schema
    acquisitions.csv    each scan's scanner, voxel size, head motion and FLAIR contrast change
    lesion_changes.csv  the true change of every lesion between consecutive visits
                        (lesions.changes classes; centroid in the subject's reference voxels)
    truth/<subject>/<from>_to_<to>_changes.nii.gz   the true change map on the subject's
                        reference grid (the baseline's grid before any motion)
    truth.json          the simulated headline effects, keyed like headline.json
    study.json          the settings; a rerun with the same settings reuses the files

Example:
    >>> from wmhseg.synth.cohort import CohortParams
    >>> paths = write_study("study", CohortParams(n_als=10, n_control=10))  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd

from wmhseg.changes import lesion_changes
from wmhseg.files import atomic_write_csv, atomic_write_json, atomic_write_text
from wmhseg.image_io import atomic_save_nifti
from wmhseg.parallel import process_map
from wmhseg.synth.cohort import CohortParams, params_dict, simulate_cohort
from wmhseg.synth.followups import Acquisition, FollowUps, draw_acquisitions, move_scan
from wmhseg.synth.images import generate_subject, write_scan

__all__ = ["write_study", "FollowUps"]


def _scanner_geometry(geometry: dict[str, Any], params: FollowUps) -> dict[str, Any]:
    """The second scanner's grid: voxels scaled by ``scanner_spacing_factor``, field of view kept."""
    spacing = np.asarray(geometry["spacing"]) * np.asarray(params.scanner_spacing_factor)
    out = {**geometry, "spacing": tuple(float(s) for s in spacing)}
    if "shape" in geometry:
        fov = np.asarray(geometry["shape"]) * np.asarray(geometry["spacing"])
        out["shape"] = tuple(int(max(8, round(f / s))) for f, s in zip(fov, spacing, strict=True))
    return out


def _reference_label(info: dict[str, Any], visit: dict[str, Any], geometry: dict[str, Any],
                     other_grid: bool) -> np.ndarray:
    """The visit's WMH on the subject's reference grid (the baseline's grid, before motion)."""
    if not other_grid:
        return np.asarray(nib.load(str(info["label"])).dataobj) == 9
    keep = {k: visit[k] for k in ("seed", "wmh_volume_mm3", "subject_seed")}
    return generate_subject(**keep, **geometry, noise=0.0).label == 9


def _paint_subject(job: tuple[str, list[dict[str, Any]], dict[str, Any], FollowUps]) -> dict[str, Any]:
    """Paint one subject's visits (in time order), move them, and measure the true lesion changes."""
    out_dir, visits, geometry, params = job
    scanner_b = _scanner_geometry(geometry, params)
    painted, tables, masks = [], [], []
    ref_affine = None
    for visit in visits:
        acq: Acquisition = visit.pop("acquisition")
        extra = {**scanner_b, "noise": 0.03 * params.scanner_noise_factor,
                 "bias_field": params.scanner_bias_field} if acq.scanner == "B" else geometry
        protocol = {"protocol_seed": visit["subject_seed"] * 2 + (acq.scanner == "B"),
                    "session_jitter": params.session_contrast_jitter}
        info = write_scan(out_dir, **visit, **extra, **protocol)
        if ref_affine is None:
            ref_affine = nib.load(str(info["label"])).affine
        masks.append(_reference_label(info, visit, geometry, acq.scanner == "B"))
        move_scan(info, acq)
        painted.append({**info, **acq.record()})
    voxel_mm3 = float(abs(np.linalg.det(ref_affine[:3, :3])))
    truth_dir = Path(out_dir).parent / "truth" / visits[0]["subject_id"]
    for k in range(1, len(visits)):
        labels, table = lesion_changes(masks[k - 1], masks[k], voxel_mm3=voxel_mm3)
        a, b = visits[k - 1]["session_id"], visits[k]["session_id"]
        atomic_save_nifti(nib.Nifti1Image(labels, ref_affine), truth_dir / f"{a}_to_{b}_changes.nii.gz")
        tables.append(table.assign(subject_id=visits[0]["subject_id"], session_from=a, session_to=b))
    return {"painted": painted, "changes": tables}


def write_study(
    out_dir: str | os.PathLike,
    params: CohortParams | None = None,
    *,
    anatomy: str = "mni",
    spacing: float = 2.0,
    shape: Sequence[int] | None = None,
    followups: FollowUps | None = None,
    workers: int | None = None,
    overwrite: bool = False,
) -> dict[str, Path]:
    """Simulate a cohort and write its scans, manifest, clinical table and truth.

    Args:
        out_dir: destination folder (created).
        params: cohort parameters (default: the study's design, 439 subjects; pass smaller
            ``n_als``/``n_control`` for a quick study).
        anatomy: ``"mni"`` (nilearn's MNI152 anatomy) or ``"procedural"``.
        spacing: isotropic voxel size of the scans in mm.
        shape: grid size of the scans (default: the template's field of view for ``"mni"``;
            required in practice for ``"procedural"``, whose head fills the grid).
        followups: how follow-up visits are acquired (default :class:`FollowUps`: repositioned
            head, contrast drift, a scanner change for some; ``followups.IDEAL``: every visit on
            the baseline's grid, pose and scanner).
        workers: processes painting subjects in parallel (default: the usable cores).
        overwrite: repaint even when ``out_dir`` holds a study written with the same settings.

    Returns:
        Paths keyed ``manifest``, ``clinical``, ``true_volumes``, ``truth``, ``acquisitions``,
        ``lesion_changes``.
    """
    params = params if params is not None else CohortParams()
    followups = followups if followups is not None else FollowUps()
    out = Path(out_dir)
    paths = {name: out / f"{name}.{ext}" for name, ext in
             (("manifest", "csv"), ("clinical", "csv"), ("true_volumes", "csv"), ("truth", "json"),
              ("acquisitions", "csv"), ("lesion_changes", "csv"))}
    geometry: dict[str, Any] = {"anatomy": anatomy, "spacing": (float(spacing),) * 3}
    if shape is not None:
        geometry["shape"] = tuple(int(n) for n in shape)
    settings = json.dumps({"params": params_dict(params), "followups": followups.as_dict(), **geometry},
                          sort_keys=True)
    record = out / "study.json"
    if not overwrite and record.is_file() and record.read_text() == settings and all(p.is_file() for p in paths.values()):
        return paths

    cohort = simulate_cohort(params)
    subject_seed = {sid: params.seed * 100_003 + i for i, sid in enumerate(cohort.subjects["subject_id"])}
    visits = cohort.volumes.assign(years=cohort.clinical["years_since_baseline"].to_numpy())
    acquisitions = draw_acquisitions(visits, followups, np.random.default_rng([params.seed, 11]))
    jobs: dict[str, list[dict[str, Any]]] = {}
    for i, (row, acq) in enumerate(zip(visits.itertuples(index=False), acquisitions, strict=True)):
        jobs.setdefault(row.subject_id, []).append({
            "subject_id": row.subject_id, "session_id": row.session_id, "wmh_volume_mm3": float(row.wmh_mm3),
            "seed": subject_seed[row.subject_id] * 31 + i, "subject_seed": subject_seed[row.subject_id],
            "acquisition": acq})
    done = process_map(_paint_subject, [(str(out / "scans"), v, geometry, followups) for v in jobs.values()], workers)
    painted = [p for d in done for p in d["painted"]]
    changes = [t for d in done for t in d["changes"]]

    manifest = pd.DataFrame({
        "subject_id": [p["subject_id"] for p in painted],
        "session_id": [p["session_id"] for p in painted],
        **{k: [str(Path(p[k]).relative_to(out)) for p in painted] for k in ("t1", "flair", "label")},
    })
    true_volumes = cohort.volumes.assign(wmh_mm3=[round(p["wmh_mm3"], 1) for p in painted])
    acq_table = manifest[["subject_id", "session_id"]].assign(**{
        k: [p[k] for p in painted] for k in acquisitions[0].record()})
    change_cols = ["subject_id", "session_from", "session_to", "lesion", "change", "before_mm3", "after_mm3",
                   "x_vox", "y_vox", "z_vox"]
    change_table = pd.concat(changes, ignore_index=True)[change_cols] if changes else pd.DataFrame(columns=change_cols)
    atomic_write_csv(paths["acquisitions"], acq_table)
    atomic_write_csv(paths["lesion_changes"], change_table)
    atomic_write_csv(paths["manifest"], manifest)
    atomic_write_csv(paths["clinical"], cohort.clinical)
    atomic_write_csv(paths["true_volumes"], true_volumes)
    atomic_write_json(paths["truth"], cohort.truth)
    atomic_write_text(record, settings)
    return paths
