"""Per-scan result records and the tables built from them.

Every processed scan leaves ``out_dir/rows/<subject>_<session>.json`` (written atomically after
its mask). A scan is *done* when its record says ``ok``, was made by the same model from the same
input paths, its mask exists, and its input files still hold what was processed: each file's
size and modification time are compared with the record's, and when they differ its SHA-256
decides (a file rewritten with the same content stays done; a record written before files were
signed is trusted on its paths). A rerun skips done scans and redoes a scan whose input changed,
saying so in the log. ``volumes.csv`` and ``metrics.csv``
are rebuilt from the records of the whole manifest, so runs split into parts (or interrupted
and resumed) give the same tables as one uninterrupted run.

Table schemas:

- ``volumes.csv``: :data:`wmhseg.schema.VOLUME_COLUMNS` (one row per manifest row, in manifest order);
- ``metrics.csv``: :data:`wmhseg.schema.METRICS_COLUMNS` (one row per manifest row that has a ``label``).
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from wmhseg.checkpoint import file_sha256
from wmhseg.files import atomic_write_csv, atomic_write_json
from wmhseg.ids import check_safe_id, missing_id_problem
from wmhseg.manifest import Scan
from wmhseg.schema import METRIC_NAMES, METRICS_COLUMNS, VOLUME_COLUMNS

__all__ = [
    "mask_name",
    "unsafe_reason",
    "invalid_rows",
    "error_record",
    "file_signature",
    "ResultStore",
]

log = logging.getLogger("wmhseg.infer")



def mask_name(scan: Scan) -> str:
    """``<subject_id>_<session_id>_wmh.nii.gz``: the mask's file name (a documented output contract)."""
    return f"{scan.key}_wmh.nii.gz"


def unsafe_reason(scan: Scan) -> str | None:
    """Why the scan's IDs cannot name output files, or ``None`` when they can."""
    for name in ("subject_id", "session_id"):
        missing = missing_id_problem(getattr(scan, name), name)
        if missing:
            return f"{missing}; nothing was written for this scan"
    try:
        check_safe_id(scan.subject_id, name="subject_id")
        check_safe_id(scan.session_id, name="session_id")
    except ValueError as exc:
        return f"{exc}; nothing was written for this scan"
    return None


def invalid_rows(scans: Sequence[Scan]) -> dict[int, str]:
    """Manifest row -> error, for incomplete visits, IDs that cannot name files, and names that collide."""
    invalid: dict[int, str] = {}
    seen: dict[str, int] = {}
    for scan in scans:
        if scan.problem:
            invalid[scan.row] = scan.problem
            continue
        reason = unsafe_reason(scan)
        if reason is None and scan.key in seen:
            reason = (f"subject {scan.subject_id!r} / session {scan.session_id!r} would write the same files "
                      f"({scan.key}_*) as row {seen[scan.key]}")
        if reason is not None:
            invalid[scan.row] = f"row {scan.row}: {reason}"
        else:
            seen[scan.key] = scan.row
    return invalid


def _inputs(scan: Scan) -> dict[str, str | None]:
    return {"t1": str(scan.t1), "flair": str(scan.flair), "label": str(scan.label) if scan.label else None,
            "xfm": str(scan.xfm) if scan.xfm else None}


def file_signature(path: str | os.PathLike, *, with_hash: bool = True) -> dict[str, Any]:
    """``{"size", "mtime_ns"[, "sha256"]}`` of a file: what tells whether it changed since."""
    st = os.stat(path)
    sig: dict[str, Any] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
    if with_hash:
        sig["sha256"] = file_sha256(path, length=64)
    return sig


def _changed(path: str, stored: dict[str, Any]) -> bool:
    """True when ``path`` no longer holds what ``stored`` (a :func:`file_signature`) describes."""
    try:
        now = file_signature(path, with_hash=False)
        if now["size"] == stored.get("size") and now["mtime_ns"] == stored.get("mtime_ns"):
            return False
        return now["size"] != stored.get("size") or file_sha256(path, length=64) != stored.get("sha256")
    except OSError:
        return True


def error_record(scan: Scan, message: str, *, model_id: str = "", timings: dict[str, float] | None = None) -> dict[str, Any]:
    """The record of a scan that could not be processed."""
    return {"subject_id": scan.subject_id, "session_id": scan.session_id, "row": scan.row, "status": "error",
            "error": message, "model_id": model_id, "inputs": _inputs(scan), **(timings or {})}


def _integers(frame: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    """Count columns as pandas' nullable ``Int64``: written ``3``, not ``3.0``, even beside failed rows."""
    return frame.astype({c: "Int64" for c in columns})


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

    def changed_inputs(self, scan: Scan) -> list[str]:
        """Input files of the scan's record that changed since it was written (empty: none, or no record)."""
        signatures = (self.read(scan) or {}).get("input_files") or {}
        return [path for path, sig in signatures.items() if _changed(path, sig)]

    def is_done(self, scan: Scan) -> bool:
        """Finished with this model from these paths, mask on disk, and no input changed since."""
        rec = self.read(scan)
        return (rec is not None and rec.get("status") == "ok" and self.mask_path(scan).is_file()
                and not any(_changed(p, sig) for p, sig in (rec.get("input_files") or {}).items()))

    def to_do(self, scans: Sequence[Scan], *, overwrite: bool = False) -> list[Scan]:
        """The scans to process: all with ``overwrite``, else those not done; a changed input is logged."""
        if overwrite:
            return list(scans)
        todo = []
        for scan in scans:
            if self.is_done(scan):
                continue
            changed = self.changed_inputs(scan)
            if changed:
                log.warning("%s: %s changed since it was processed; redoing it", scan.describe(), ", ".join(changed))
            todo.append(scan)
        return todo

    def write(self, scan: Scan, record: dict[str, Any]) -> None:
        """Write a record atomically (a scan with unsafe IDs gets none); an ok record keeps its files' signatures."""
        record = {**record, "model_id": self.model_id, "inputs": _inputs(scan), "row": scan.row}
        if record.get("status") == "ok":
            record["input_files"] = {p: file_signature(p) for p in _inputs(scan).values() if p is not None}
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
                    "model_id", "t1_registration", "t1_transform"):
            vol[col] = vol[col].fillna("").astype(str)
        vol["longitudinal"] = vol["longitudinal"].fillna(False).astype(bool)
        vol = _integers(vol, ("n_lesions", "wmh_voxels", "row"))
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
            met = _integers(met, ("n_lesions", "ref_n_lesions", "row"))
            paths["metrics"] = atomic_write_csv(self.out_dir / "metrics.csv", met)
        return paths
