"""Longitudinal mode: a subject's visits segmented together, lesion change maps, progression.

``python infer.py ... longitudinal=true`` runs every subject with two or more valid visits
through :func:`segment_subject`:

1. each visit is prepared and predicted as usual (WMH probability on its working grid);
2. every follow-up is registered rigidly to the baseline
   (:func:`wmhseg.inference.subject_space.register_visit`, working-grid FLAIRs), which makes the
   baseline's working grid the subject space;
3. the subject's mean probability ``p_mean`` (each visit resampled into the subject space,
   averaged where the visits cover it) is the prior of every visit: the visit's probability
   becomes ``(1 - prior_weight) * p_visit + prior_weight * p_mean`` (``p_mean`` resampled back
   onto the visit's working grid); ``prior_weight=0`` is independent segmentation; with
   ``confirm_mm3 > 0`` a visit's lesion under that size that no other visit shows within one
   voxel is then removed (:func:`_confirmed`);
4. thresholding, the native-grid mask, measures and record are those of an independent run
   (:func:`wmhseg.inference.pipeline.process_prepared`), flagged ``longitudinal=True``;
5. between consecutive visits, the earlier native mask is mapped onto the later visit's native
   grid and every lesion is classified (:func:`wmhseg.changes.lesion_changes`):
   ``DIR/longitudinal/<subject_id>/<from>_to_<to>_changes.nii.gz`` (1 new, 2 enlarging,
   3 shrinking, 4 stable; on the later FLAIR's grid) and ``lesions.csv``.

A subject whose visits cannot be registered falls back to independent segmentation (the reason
in ``progression.csv`` and in its visits' ``warnings``), with no change maps. Single-visit
subjects are segmented as usual. Visits are ordered by ``years_since_baseline`` from
``visit_times`` (a CSV with ``subject_id, session_id, years_since_baseline``, e.g. the clinical
table) when given, else by manifest order.

``DIR/progression.csv`` (:data:`PROGRESSION_COLUMNS`, one row per subject): visits measured,
years spanned, WMH at the first and last visit, the least-squares slope (mm^3/year, needs
visit times), new lesions (count and volume summed over consecutive pairs) and ``status``:
``ok`` (longitudinal), ``independent`` (one visit, or a fallback; ``error`` says why) or
``error`` (no visit measured).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd
import torch
from scipy import ndimage

from wmhseg.changes import lesion_changes
from wmhseg.errors import InputError, WmhsegError
from wmhseg.files import atomic_write_csv, atomic_write_json
from wmhseg.image_io import atomic_save_nifti
from wmhseg.inference.infer_config import LongitudinalSettings
from wmhseg.inference.loading import PreparedScan
from wmhseg.inference.pipeline import ScanDataset, process_prepared, process_scans, run_scan
from wmhseg.inference.predictor import Predictor, WorkingPrediction
from wmhseg.inference.records import ResultStore
from wmhseg.inference.subject_space import (
    RegistrationError,
    between_visits,
    from_subject,
    register_visit_cached,
    to_subject,
)
from wmhseg.manifest import Scan
from wmhseg.metrics import label_lesions
from wmhseg.schema import PROGRESSION_COLUMNS, TIMING_COLUMNS

__all__ = ["PROGRESSION_COLUMNS", "LongitudinalSettings", "read_visit_times", "order_visits",
           "segment_subject", "process_longitudinal", "write_progression"]

log = logging.getLogger("wmhseg.infer")



def read_visit_times(path: str | os.PathLike) -> dict[tuple[str, str], float]:
    """``(subject_id, session_id) -> years_since_baseline`` from a CSV (e.g. the clinical table).

    Raises:
        InputError: an unreadable file, a missing column or a non-numeric time, naming the file.
    """
    try:
        table = pd.read_csv(path, dtype={"subject_id": str, "session_id": str}, keep_default_na=False)
    except (OSError, ValueError) as exc:
        raise InputError(f"visit_times={path}: cannot read the table ({exc})") from exc
    missing = [c for c in ("subject_id", "session_id", "years_since_baseline") if c not in table.columns]
    if missing:
        raise InputError(f"visit_times={path}: missing column(s) {missing}")
    years = pd.to_numeric(table["years_since_baseline"], errors="coerce")
    if years.isna().any():
        bad = table.loc[years.isna(), ["subject_id", "session_id"]].head(3).to_dict("records")
        raise InputError(f"visit_times={path}: years_since_baseline is not a number in rows such as {bad}")
    return dict(zip(zip(table["subject_id"], table["session_id"], strict=True), years.astype(float), strict=True))


def order_visits(scans: Sequence[Scan], times: dict[tuple[str, str], float] | None) -> dict[str, list[Scan]]:
    """The scans grouped by subject (first-appearance order), each subject's in time order."""
    groups: dict[str, list[Scan]] = {}
    for scan in scans:
        groups.setdefault(scan.subject_id, []).append(scan)
    if times:
        for visits in groups.values():
            visits.sort(key=lambda s: times.get((s.subject_id, s.session_id), math.inf))
    return groups


def _prior(predictions: list[WorkingPrediction], motions: list[np.ndarray]) -> list[torch.Tensor]:
    """The subject's mean WMH probability, resampled onto each visit's working grid
    (a visit's own probability where no other visit covers it)."""
    base = predictions[0]
    shape = tuple(base.wmh.shape)
    total = torch.zeros(shape)
    cover = torch.zeros(shape)
    for pred, motion in zip(predictions, motions, strict=True):
        total += to_subject(pred.wmh, pred.affine, motion, shape, base.affine)
        cover += to_subject(torch.ones_like(pred.wmh), pred.affine, motion, shape, base.affine)
    mean = total / cover.clamp(min=1e-6)
    out = []
    for pred, motion in zip(predictions, motions, strict=True):
        back = from_subject(mean, base.affine, motion, pred.wmh.shape, pred.affine)
        seen = from_subject(cover, base.affine, motion, pred.wmh.shape, pred.affine) > 0.5
        out.append(torch.where(seen, back, pred.wmh))
    return out


def _confirmed(predictions: list[WorkingPrediction], motions: list[np.ndarray], threshold: float,
               confirm_mm3: float) -> list[torch.Tensor]:
    """Each visit's probability with its unconfirmed small lesions removed (set to 0).

    A lesion (26-connected component above ``threshold`` on the visit's working grid) smaller than
    ``confirm_mm3`` is kept when another visit, brought onto this visit's grid through the subject
    space, is above the threshold within one voxel of it, or when part of it lies where no other
    visit sees; else it is taken for one visit's noise. Larger lesions are always kept."""
    full = np.ones((3, 3, 3), bool)
    out = []
    for t, pred in enumerate(predictions):
        mask = (pred.wmh > threshold).numpy()
        labels, count = label_lesions(mask)
        index = np.arange(1, count + 1)
        small = ndimage.sum_labels(mask, labels, index) * pred.voxel_mm3 < confirm_mm3
        if not small.any():  # nothing to confirm: no other visit needs resampling
            out.append(pred.wmh)
            continue
        support = torch.zeros_like(pred.wmh)
        seen = torch.zeros_like(pred.wmh)
        for k, other in enumerate(predictions):
            if k == t:
                continue
            args = (other.affine, motions[k], pred.wmh.shape, pred.affine, motions[t])
            support = torch.maximum(support, between_visits(other.wmh, *args))
            seen = torch.maximum(seen, between_visits(torch.ones_like(other.wmh), *args))
        keep = ndimage.binary_dilation(support.numpy() > threshold, structure=full) | (seen.numpy() < 0.5)
        confirmed = ndimage.maximum(keep, labels, index) > 0
        drop = np.r_[False, small & ~confirmed][labels]
        out.append(torch.where(torch.from_numpy(drop), 0.0, pred.wmh) if drop.any() else pred.wmh)
    return out


def _register_all(prepared: list[PreparedScan], cache_dir: str | None = None) -> list[np.ndarray]:
    """``visit_from_base`` of every visit (identity for the baseline), FLAIR channel of the working image."""
    base = prepared[0].image
    base_affine = np.asarray(base.affine, np.float64)
    motions = [np.eye(4)]
    for item in prepared[1:]:
        reg = register_visit_cached(np.asarray(base[1]), base_affine, np.asarray(item.image[1]),
                                    np.asarray(item.image.affine, np.float64), cache_dir)
        motions.append(reg.visit_from_base)
    return motions


def _change_maps(out_dir: Path, visits: list[Scan], prepared: list[PreparedScan], masks: list[np.ndarray],
                 motions: list[np.ndarray]) -> pd.DataFrame:
    """Write each consecutive pair's change map on the later native grid; return the lesion table.

    A native grid and its working grid live in the same visit world, so the working grids'
    ``visit_from_base`` serves the native masks too."""
    folder = out_dir / "longitudinal" / visits[0].subject_id
    tables = []
    for k in range(1, len(visits)):
        a, b = prepared[k - 1], prepared[k]
        before = between_visits(masks[k - 1].astype(np.float32), a.affine, motions[k - 1], b.shape, b.affine,
                                motions[k]).numpy() > 0.5
        voxel = float(abs(np.linalg.det(b.affine[:3, :3])))
        labels, table = lesion_changes(before, masks[k], voxel_mm3=voxel)
        name = f"{visits[k - 1].session_id}_to_{visits[k].session_id}_changes.nii.gz"
        header = nib.load(str(b.flair)).header.copy()
        header.set_data_dtype(np.uint8)
        header.set_slope_inter(1.0, 0.0)
        atomic_save_nifti(nib.Nifti1Image(labels, b.affine, header), folder / name)
        tables.append(table.assign(session_from=visits[k - 1].session_id, session_to=visits[k].session_id,
                                   change_map=name))
    return pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()


def segment_subject(predictor: Predictor, store: ResultStore, visits: list[tuple[Scan, PreparedScan]],
                    settings: LongitudinalSettings, process: Any) -> list[dict[str, Any]]:
    """Segment one subject's prepared visits (time order) together; return their records.

    ``process(scan, prepared, working)`` turns a working prediction into a written mask and an
    ok-record (the runner's per-scan layers 3 and measures). Writes the change maps and
    ``DIR/longitudinal/<subject_id>/subject.json``.
    """
    scans = [s for s, _ in visits]
    prepared = [p for _, p in visits]
    t0 = time.perf_counter()
    predictions = [predictor.predict(p.image) for p in prepared]
    t_predict = time.perf_counter() - t0
    status, reason, motions = "ok", "", None
    try:
        motions = _register_all(prepared, settings.registration_cache)
    except RegistrationError as exc:
        status, reason = "independent", f"longitudinal: visits not registered ({exc}); segmented independently"
        log.warning("%s: %s", scans[0].subject_id, reason)
    if motions is not None and settings.prior_weight > 0:
        w = float(settings.prior_weight)
        for pred, prior in zip(predictions, _prior(predictions, motions), strict=True):
            pred.wmh = (1.0 - w) * pred.wmh + w * prior
    if motions is not None and settings.confirm_mm3 > 0:
        confirmed = _confirmed(predictions, motions, predictor.threshold, float(settings.confirm_mm3))
        for pred, wmh in zip(predictions, confirmed, strict=True):
            pred.wmh = wmh
    t_subject = time.perf_counter() - t0  # prediction, registration and fusion
    records = []
    for scan, item, pred in zip(scans, prepared, predictions, strict=True):
        record = process(scan, item, pred)
        record["longitudinal"] = motions is not None
        share = t_subject / len(scans)  # prediction, registration and fusion of the subject, per visit
        record["t_total_s"] = round(record["t_total_s"] - record["t_predict_s"] + share, 4)
        record["t_predict_s"] = round(share, 4)
        if reason:
            record["warnings"] = "; ".join(w for w in (record.get("warnings"), reason) if w)
        records.append(record)
    summary: dict[str, Any] = {"status": status, "error": reason, "sessions": [s.session_id for s in scans],
                               "registration_and_fusion_s": round(t_subject - t_predict, 3)}
    if motions is not None:
        masks = [np.asarray(nib.load(str(store.out_dir / r["mask"])).dataobj) > 0 for r in records]
        table = _change_maps(store.out_dir, scans, prepared, masks, motions)
        folder = store.out_dir / "longitudinal" / scans[0].subject_id
        atomic_write_csv(folder / "lesions.csv", table)
        summary["visit_from_base"] = [m[:3].round(6).tolist() for m in motions]
    atomic_write_json(store.out_dir / "longitudinal" / scans[0].subject_id / "subject.json", summary)
    return records


def _new_lesions(out_dir: Path, subject_id: str, min_new_mm3: float) -> tuple[float, float]:
    path = out_dir / "longitudinal" / subject_id / "lesions.csv"
    if not path.is_file() or path.stat().st_size == 0:
        return math.nan, math.nan
    try:
        table = pd.read_csv(path)
    except pd.errors.EmptyDataError:
        return 0, 0.0
    new = table[(table["change"] == "new") & (table["after_mm3"] >= min_new_mm3)] if len(table) else table
    return int(len(new)), float(new["after_mm3"].sum()) if len(new) else 0.0


def write_progression(out_dir: Path, records: list[dict[str, Any]], times: dict[tuple[str, str], float] | None,
                      settings: LongitudinalSettings) -> Path:
    """Build ``DIR/progression.csv`` from the run's records and the subjects' summaries."""
    rows = []
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault(str(r["subject_id"]), []).append(r)
    for sid, recs in groups.items():
        ok = [r for r in recs if r.get("status") == "ok"]
        t = [times.get((sid, str(r["session_id"])), math.nan) if times else math.nan for r in ok]
        if times:
            order = np.argsort(t, kind="stable")
            ok, t = [ok[i] for i in order], [t[i] for i in order]
        wmh = [float(r["wmh_mm3"]) for r in ok]
        summary_path = out_dir / "longitudinal" / sid / "subject.json"
        summary = json.loads(summary_path.read_text()) if summary_path.is_file() and len(ok) >= 2 else {}
        years = float(np.nanmax(t) - np.nanmin(t)) if len(ok) and np.isfinite(t).any() else math.nan
        finite = np.isfinite(t)
        slope = (float(np.polyfit(np.asarray(t)[finite], np.asarray(wmh)[finite], 1)[0])
                 if finite.sum() >= 2 and np.ptp(np.asarray(t)[finite]) > 0 else math.nan)
        n_new, new_mm3 = _new_lesions(out_dir, sid, settings.min_new_mm3) if summary.get("status") == "ok" else (math.nan, math.nan)
        if not ok:
            status, error = "error", "no visit of the subject was measured"
        elif summary:
            status, error = summary["status"], summary.get("error", "")
        else:
            status, error = "independent", "one visit measured" if len(ok) == 1 else "segmented independently"
        rows.append({"subject_id": sid, "n_visits": len(ok), "years": years,
                     "wmh_first_mm3": wmh[0] if wmh else math.nan, "wmh_last_mm3": wmh[-1] if wmh else math.nan,
                     "slope_mm3_per_year": slope, "new_lesions": n_new, "new_lesion_mm3": new_mm3,
                     "status": status, "error": error})
    table = pd.DataFrame(rows, columns=list(PROGRESSION_COLUMNS))
    table["new_lesions"] = table["new_lesions"].astype("Int64")
    return atomic_write_csv(out_dir / "progression.csv", table)


def _run_subject(predictor: Predictor, store: ResultStore, visits: list[Scan], opts: Any) -> list[dict[str, Any]]:
    """Prepare a subject's visits and segment them together (independently when fewer than two load)."""
    dataset = ScanDataset(visits, predictor)
    loaded = [dataset[i] for i in range(len(visits))]
    ready = [(visits[i], prepared) for i, prepared, error in loaded if prepared is not None]
    if len(ready) < 2:
        return [run_scan(predictor, store, visits[i], p, e, pv_distance_mm=opts.pv_distance_mm) for i, p, e in loaded]

    def process(scan: Scan, prepared: PreparedScan, working: WorkingPrediction) -> dict[str, Any]:
        return process_prepared(predictor, store, scan, prepared, pv_distance_mm=opts.pv_distance_mm, working=working)

    try:
        done = segment_subject(predictor, store, ready, opts.longitudinal_options, process)
    except (WmhsegError, RuntimeError, ValueError, MemoryError) as exc:
        reason = f"longitudinal: failed ({type(exc).__name__}: {exc}); segmented independently"
        log.warning("%s: %s", visits[0].subject_id, reason)
        done = []
        for scan, prepared in ready:
            record = run_scan(predictor, store, scan, prepared, None, pv_distance_mm=opts.pv_distance_mm)
            record["warnings"] = "; ".join(w for w in (record.get("warnings"), reason) if w)
            done.append(record)
        atomic_write_json(store.out_dir / "longitudinal" / visits[0].subject_id / "subject.json",
                          {"status": "independent", "error": reason, "sessions": [s.session_id for s, _ in ready]})
    by_key = {r["session_id"]: r for r in done}
    return [by_key.get(scan.session_id) or run_scan(predictor, store, scan, None, error,
                                                     pv_distance_mm=opts.pv_distance_mm)
            for scan, (_, _, error) in zip(visits, loaded, strict=True)]


def process_longitudinal(predictor: Predictor, store: ResultStore, todo: list[Scan], candidates: list[Scan],
                         opts: Any, times: dict[tuple[str, str], float] | None = None
                         ) -> tuple[int, int, list[float], list[dict[str, float]]]:
    """The runner's per-scan loop in longitudinal mode: a subject with two or more valid visits is
    segmented together (all its visits, when any of them is to do); the rest scan by scan.
    Returns what :func:`~wmhseg.inference.pipeline.process_scans` returns."""
    pending = {s.subject_id for s in todo}
    groups = order_visits([s for s in candidates if s.subject_id in pending], times)
    singles = [s for s in todo if len(groups[s.subject_id]) < 2]
    n_ok, n_failed, walls, stages = process_scans(predictor, store, singles, opts, None)
    for visits in (v for v in groups.values() if len(v) >= 2):
        start = time.perf_counter()
        for scan, record in zip(visits, _run_subject(predictor, store, visits, opts), strict=True):
            store.write(scan, record)
            if record["status"] == "ok":
                n_ok += 1
                stages.append({k: record[k] for k in TIMING_COLUMNS})
            else:
                n_failed += 1
        walls.extend([(time.perf_counter() - start) / len(visits)] * len(visits))
    return n_ok, n_failed, walls, stages
