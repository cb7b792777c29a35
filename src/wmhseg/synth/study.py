"""A simulated longitudinal study as files: scans, a scan manifest, a clinical table, the truth.

:func:`write_study` joins the two simulators: :func:`wmhseg.synth.cohort.simulate_cohort` draws
the cohort (ALS and controls, visits, survival, ALSFRS-R, and each scan's true WMH volume), and
:func:`wmhseg.synth.images.write_scan` paints every scan with that WMH volume (one anatomy and
lesion pattern per subject, lesions growing in place across visits). The result is the input of
the real pipeline, ``infer.py`` on ``manifest.csv`` then ``analyze.py`` on its ``volumes.csv``
with ``clinical.csv``, and ``truth.json`` holds what the headline models should recover.

Files written under ``out_dir``::

    scans/sub-<id>/ses-<id>/anat/*_{T1w,FLAIR,label}.nii.gz
    manifest.csv        subject_id,session_id,t1,flair,label (paths relative to out_dir)
    clinical.csv        the clinical table (DESIGN schema)
    true_volumes.csv    the painted WMH volume of every scan, in the volume-table schema
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
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import pandas as pd

from wmhseg.io import atomic_write_csv, atomic_write_json, atomic_write_text
from wmhseg.synth.cohort import CohortParams, params_dict, simulate_cohort
from wmhseg.synth.images import write_scan

__all__ = ["write_study"]


def _paint(job: tuple[str, dict[str, Any]]) -> dict[str, Any]:
    out_dir, kw = job
    return write_scan(out_dir, **kw)


def write_study(
    out_dir: str | os.PathLike,
    params: CohortParams | None = None,
    *,
    anatomy: str = "mni",
    spacing: float = 2.0,
    shape: Sequence[int] | None = None,
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
        workers: processes painting scans in parallel (default: the CPU count).
        overwrite: repaint even when ``out_dir`` holds a study written with the same settings.

    Returns:
        Paths keyed ``manifest``, ``clinical``, ``true_volumes``, ``truth``.
    """
    params = params if params is not None else CohortParams()
    out = Path(out_dir)
    paths = {name: out / f"{name}.{ext}" for name, ext in
             (("manifest", "csv"), ("clinical", "csv"), ("true_volumes", "csv"), ("truth", "json"))}
    geometry: dict[str, Any] = {"anatomy": anatomy, "spacing": (float(spacing),) * 3}
    if shape is not None:
        geometry["shape"] = tuple(int(n) for n in shape)
    settings = json.dumps({"params": params_dict(params), **geometry}, sort_keys=True)
    record = out / "study.json"
    if not overwrite and record.is_file() and record.read_text() == settings and all(p.is_file() for p in paths.values()):
        return paths

    cohort = simulate_cohort(params)
    subject_seed = {sid: params.seed * 100_003 + i for i, sid in enumerate(cohort.subjects["subject_id"])}
    jobs = [
        (str(out / "scans"), {
            "subject_id": row.subject_id, "session_id": row.session_id,
            "wmh_volume_mm3": float(row.wmh_mm3), "seed": subject_seed[row.subject_id] * 31 + i,
            "subject_seed": subject_seed[row.subject_id], **geometry,
        })
        for i, row in enumerate(cohort.volumes.itertuples(index=False))
    ]
    with ProcessPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
        painted = list(pool.map(_paint, jobs, chunksize=4))

    manifest = pd.DataFrame({
        "subject_id": [p["subject_id"] for p in painted],
        "session_id": [p["session_id"] for p in painted],
        **{k: [str(Path(p[k]).relative_to(out)) for p in painted] for k in ("t1", "flair", "label")},
    })
    true_volumes = cohort.volumes.assign(wmh_mm3=[round(p["wmh_mm3"], 1) for p in painted])
    atomic_write_csv(paths["manifest"], manifest)
    atomic_write_csv(paths["clinical"], cohort.clinical)
    atomic_write_csv(paths["true_volumes"], true_volumes)
    atomic_write_json(paths["truth"], cohort.truth)
    atomic_write_text(record, settings)
    return paths
