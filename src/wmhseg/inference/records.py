"""Per-scan result records and the tables built from them.

Every processed scan leaves ``out_dir/rows/<subject>_<session>.json`` (written atomically after
its mask). A scan is *done* when its record says ``ok``, was made by the same model from the same
input files, and its mask exists; a rerun skips done scans. ``volumes.csv`` and ``metrics.csv``
are rebuilt from the records of the whole manifest, so runs split into parts (or interrupted
and resumed) give the same tables as one uninterrupted run.

Table schemas:

- ``volumes.csv``: ``VOLUME_COLUMNS`` (one row per manifest row, in manifest order);
- ``metrics.csv``: ``METRICS_COLUMNS`` (one row per manifest row that has a ``label``).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from wmhseg.io import atomic_write_csv, atomic_write_json, check_safe_id
from wmhseg.manifest import Scan
from wmhseg.metrics import METRIC_NAMES

__all__ = [
    "VOLUME_COLUMNS",
    "METRICS_COLUMNS",
    "TIMING_COLUMNS",
    "UNCERTAINTY_COLUMNS",
    "mask_name",
    "unsafe_reason",
    "error_record",
    "ResultStore",
]

UNCERTAINTY_COLUMNS = ("wmh_mm3_sd", "wmh_mm3_ci_low", "wmh_mm3_ci_high")
TIMING_COLUMNS = ("t_load_s", "t_preprocess_s", "t_predict_s", "t_export_s", "t_measure_s", "t_uncertainty_s",
                  "t_total_s")
VOLUME_COLUMNS = (
    "subject_id", "session_id", "wmh_mm3", "n_lesions", "status", "error", "warnings",
    "wmh_periventricular_mm3", "wmh_deep_mm3", "pv_rule", "icv_mm3", "brain_mm3", "mean_lesion_prob",
    *UNCERTAINTY_COLUMNS, "qc_flags", "fov_cut_share", "wmh_outside_wm_share", "wmh_voxels", "voxel_x_mm", "voxel_y_mm", "voxel_z_mm", "voxel_mm3", "mask", "model_id", "row",
    *TIMING_COLUMNS,
)
METRICS_COLUMNS = (
    "subject_id", "session_id", "status", "error", *METRIC_NAMES, "wmh_mm3", "ref_wmh_mm3", "n_lesions",
    "ref_n_lesions", "row",
)


def mask_name(scan: Scan) -> str:
    """``<subject_id>_<session_id>_wmh.nii.gz``: the mask's file name (DESIGN.md contract)."""
    return f"{scan.key}_wmh.nii.gz"


def unsafe_reason(scan: Scan) -> str | None:
    """Why the scan's IDs cannot name output files, or ``None`` when they can."""
    try:
        check_safe_id(scan.subject_id, name="subject_id")
        check_safe_id(scan.session_id, name="session_id")
    except ValueError as exc:
        return f"{exc}; nothing was written for this scan"
    return None


def _inputs(scan: Scan) -> dict[str, str | None]:
    return {"t1": str(scan.t1), "flair": str(scan.flair), "label": str(scan.label) if scan.label else None}


def error_record(scan: Scan, message: str, *, model_id: str = "", timings: dict[str, float] | None = None) -> dict[str, Any]:
    """The record of a scan that could not be processed."""
    return {"subject_id": scan.subject_id, "session_id": scan.session_id, "row": scan.row, "status": "error",
            "error": message, "model_id": model_id, "inputs": _inputs(scan), **(timings or {})}


class ResultStore:
    """Reads and writes the per-scan records under ``out_dir`` and assembles the tables.

    Args:
        out_dir: the run's output folder.
        model_id: the checkpoint hash; records of another model are stale.
    """

    def __init__(self, out_dir: str | os.PathLike, model_id: str) -> None:
        self.out_dir = Path(out_dir)
        self.rows_dir = self.out_dir / "rows"
        self.masks_dir = self.out_dir / "masks"
        self.model_id = model_id

    def mask_path(self, scan: Scan) -> Path:
        return self.masks_dir / mask_name(scan)

    def record_path(self, scan: Scan) -> Path:
        return self.rows_dir / f"{scan.key}.json"

    def read(self, scan: Scan) -> dict[str, Any] | None:
        """The scan's current record (same model, same inputs), or ``None``."""
        path = self.record_path(scan)
        try:
            rec = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if rec.get("model_id") != self.model_id or rec.get("inputs") != _inputs(scan):
            return None
        if (rec.get("subject_id"), rec.get("session_id")) != (scan.subject_id, scan.session_id):
            return None
        return rec

    def is_done(self, scan: Scan) -> bool:
        rec = self.read(scan)
        return rec is not None and rec.get("status") == "ok" and self.mask_path(scan).is_file()

    def write(self, scan: Scan, record: dict[str, Any]) -> None:
        """Write a record atomically (a scan with unsafe IDs gets none)."""
        record = {**record, "model_id": self.model_id, "inputs": _inputs(scan), "row": scan.row}
        atomic_write_json(self.record_path(scan), record)

    def ok_record(self, scan: Scan, measures: dict[str, Any], *, warnings: Sequence[str] = (),
                  timings: dict[str, float] | None = None, metrics: dict[str, float] | None = None) -> dict[str, Any]:
        """The record of a processed scan."""
        return {"subject_id": scan.subject_id, "session_id": scan.session_id, "row": scan.row, "status": "ok",
                "error": "", "warnings": "; ".join(warnings), **measures,
                "mask": str(self.mask_path(scan).relative_to(self.out_dir)), **(timings or {}),
                "metrics": metrics}

    def collect(self, scans: Iterable[Scan], invalid: dict[int, str]) -> list[dict[str, Any]] | None:
        """Records of all ``scans`` in order, or ``None`` while some are missing.

        ``invalid`` maps a manifest row to the error of a scan that never gets a record file
        (unsafe IDs, colliding names); those rows are built here.
        """
        out = []
        for scan in scans:
            if scan.row in invalid:
                out.append(error_record(scan, invalid[scan.row], model_id=self.model_id))
                continue
            rec = self.read(scan)
            if rec is None or (rec.get("status") == "ok" and not self.mask_path(scan).is_file()):
                return None
            out.append(rec)
        return out

    def write_tables(self, records: list[dict[str, Any]], *, with_metrics: bool) -> dict[str, Path]:
        """Write ``volumes.csv`` (and ``metrics.csv``) atomically; return their paths."""
        vol = pd.DataFrame([{c: r.get(c) for c in VOLUME_COLUMNS} for r in records], columns=list(VOLUME_COLUMNS))
        for col in ("subject_id", "session_id", "status", "error", "warnings", "pv_rule", "qc_flags", "mask",
                    "model_id"):
            vol[col] = vol[col].fillna("").astype(str)
        paths = {"volumes": atomic_write_csv(self.out_dir / "volumes.csv", vol)}
        if with_metrics:
            rows = []
            for r in records:
                if not r.get("inputs", {}).get("label"):
                    continue
                m = r.get("metrics") or {}
                rows.append({"subject_id": r["subject_id"], "session_id": r["session_id"], "status": r["status"],
                             "error": r.get("error", ""), **{k: m.get(k, math.nan) for k in METRIC_NAMES},
                             "wmh_mm3": r.get("wmh_mm3"), "ref_wmh_mm3": m.get("ref_wmh_mm3"),
                             "n_lesions": r.get("n_lesions"), "ref_n_lesions": m.get("ref_n_lesions"),
                             "row": r["row"]})
            met = pd.DataFrame(rows, columns=list(METRICS_COLUMNS))
            for col in ("subject_id", "session_id", "status", "error"):
                met[col] = met[col].fillna("").astype(str)
            paths["metrics"] = atomic_write_csv(self.out_dir / "metrics.csv", met)
        return paths
