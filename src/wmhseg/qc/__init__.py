"""Quality control of a run: flags in the volume table, a picture per scan and a gallery page.

- :mod:`~wmhseg.qc.flags`: per-scan checks and the cohort's ``qc_flags``;
- :mod:`~wmhseg.qc.image`: the per-scan picture (``qc/<subject>_<session>.png``);
- :mod:`~wmhseg.qc.gallery`: ``qc/index.html``.

:func:`write_qc` draws the pictures that are missing or out of date (a picture is redrawn when
its text, the model or the input files change) and writes the gallery.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from wmhseg.errors import WmhsegError
from wmhseg.files import atomic_write_json
from wmhseg.qc.gallery import picture_name, write_gallery
from wmhseg.qc.image import CONVENTIONS, qc_picture

__all__ = ["write_qc", "draw_pictures", "picture_lines", "CONVENTIONS"]

log = logging.getLogger("wmhseg.qc")
_STATE = ".pictures.json"


def picture_lines(record: dict[str, Any]) -> list[str]:
    """The text written on a scan's picture: identity, volume (with its interval) and flags."""
    wmh = float(record.get("wmh_mm3") or 0.0)
    volume = f"WMH {wmh:,.0f} mm³, {record.get('n_lesions', '?')} lesions"
    lo, hi = record.get("wmh_mm3_ci_low"), record.get("wmh_mm3_ci_high")
    if lo is not None and hi is not None and math.isfinite(float(lo)) and math.isfinite(float(hi)):
        volume += f" (95% interval {float(lo):,.0f} to {float(hi):,.0f})"
    return [f"subject {record['subject_id']}, session {record['session_id']}", volume,
            f"flags: {(record.get('qc_flags') or 'none').replace(';', ', ')}"]


def _signature(record: dict[str, Any]) -> str:
    return json.dumps([picture_lines(record), record.get("model_id"), record.get("inputs"), record.get("mask")])


def _draw(out_dir: Path, record: dict[str, Any], convention: str) -> str | None:
    inputs = record.get("inputs") or {}
    path = out_dir / "qc" / picture_name(record["subject_id"], record["session_id"])
    try:
        qc_picture(inputs["flair"], out_dir / record["mask"], inputs.get("t1"), path,
                   lines=picture_lines(record), convention=convention)
    except (WmhsegError, OSError, ValueError) as exc:
        log.warning("QC picture of %s %s not drawn: %s", record["subject_id"], record["session_id"], exc)
        return None
    return _signature(record)


def write_qc(out_dir: str | os.PathLike, records: Sequence[dict[str, Any]], *,
             convention: str = "radiological") -> Path:
    """Draw the out-of-date pictures of the ok ``records`` and write ``qc/index.html``.

    Args:
        out_dir: the run's folder (records' ``mask`` paths are relative to it).
        records: every row of the table, with ``qc_flags``; failed rows get a gallery row only.
        convention: ``radiological`` or ``neurological``.

    Returns:
        The gallery's path.
    """
    draw_pictures(out_dir, records, convention=convention)
    return write_gallery(Path(out_dir), records)


def draw_pictures(out_dir: str | os.PathLike, records: Sequence[dict[str, Any]], *,
                  convention: str = "radiological") -> None:
    """Draw the pictures of the ok ``records`` that are missing or out of date (their text, model,
    inputs or mask changed), one at a time; failed records are left to the gallery."""
    out = Path(out_dir)
    qc_dir = out / "qc"
    qc_dir.mkdir(parents=True, exist_ok=True)
    try:
        state = json.loads((qc_dir / _STATE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        state = {}
    todo = []
    for r in records:
        if r.get("status") != "ok" or not r.get("mask"):
            continue
        name = picture_name(r["subject_id"], r["session_id"])
        if state.get(name) != _signature(r) or not (qc_dir / name).is_file():
            todo.append((name, r))
    for name, record in todo:  # one at a time: matplotlib is not thread-safe (each picture reads its files in threads)
        state[name] = _draw(out, record, convention)
    atomic_write_json(qc_dir / _STATE, {k: v for k, v in state.items() if v is not None})
