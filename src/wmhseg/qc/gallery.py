"""The QC gallery: ``qc/index.html``, one self-contained page over a run's scans.

One row per manifest row: thumbnail (a relative link to ``<subject>_<session>.png``), subject,
session, WMH volume, lesion count, uncertainty (the interval when one was computed), flags and
the error or warnings. Flagged and failed scans come first; a click on a column header sorts by
it (a few lines of inline JavaScript, no server, no network). IDs are escaped in the HTML and
percent-encoded in links, so any ID a manifest can hold displays as itself.
"""

from __future__ import annotations

import html
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

from wmhseg.files import atomic_write_text

__all__ = ["write_gallery", "picture_name"]

_STYLE = """
body{font-family:sans-serif;margin:1em 2em;background:#fafafa}
table{border-collapse:collapse}th{cursor:pointer;background:#eee;position:sticky;top:0}
td,th{border:1px solid #ccc;padding:3px 7px;vertical-align:middle;font-size:90%}
td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.flagged td{background:#fff4e0}tr.failed td{background:#fde2e2}
img{width:420px;display:block}.flag{color:#a33;font-weight:bold}.none{color:#888}
"""
_SCRIPT = """
document.querySelectorAll('th').forEach(function (th, col) {
  th.addEventListener('click', function () {
    var body = th.closest('table').tBodies[0], rows = Array.from(body.rows);
    var up = th.dataset.dir !== 'asc'; th.dataset.dir = up ? 'asc' : 'desc';
    rows.sort(function (a, b) {
      var x = a.cells[col].dataset.key, y = b.cells[col].dataset.key;
      var nx = parseFloat(x), ny = parseFloat(y);
      var c = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : x.localeCompare(y);
      return up ? c : -c;
    });
    rows.forEach(function (r) { body.appendChild(r); });
  });
});
"""
_HEADERS = ("picture", "subject", "session", "WMH (mm³)", "lesions", "uncertainty (mm³)", "flags", "notes")


def picture_name(subject_id: str, session_id: str) -> str:
    """``<subject_id>_<session_id>.png``: a scan's QC picture (IDs already checked as file-name safe)."""
    return f"{subject_id}_{session_id}.png"


def _num(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _cell(text: str, key: Any = None, cls: str = "") -> str:
    key = text if key is None else key
    attr = f" class='{cls}'" if cls else ""
    return f"<td{attr} data-key='{html.escape(str(key), quote=True)}'>{text}</td>"


def _uncertainty(r: dict[str, Any]) -> tuple[str, float]:
    lo, hi, sd = _num(r.get("wmh_mm3_ci_low")), _num(r.get("wmh_mm3_ci_high")), _num(r.get("wmh_mm3_sd"))
    if not math.isfinite(sd):
        return "<span class='none'>not computed</span>", -1.0
    return f"SD {sd:,.0f}<br>95% {lo:,.0f} to {hi:,.0f}", sd


def _row(r: dict[str, Any], qc_dir: Path) -> tuple[int, str]:
    esc = html.escape
    sub, ses = str(r.get("subject_id", "")), str(r.get("session_id", ""))
    flags = str(r.get("qc_flags") or "")
    ok = r.get("status") == "ok"
    name = picture_name(sub, ses)
    if ok and (qc_dir / name).is_file():
        href = quote(name)
        pic = f"<a href='{href}'><img src='{href}' alt='QC picture of {esc(sub)} {esc(ses)}' loading='lazy'></a>"
    elif ok:
        pic = "<span class='none'>no picture</span>"
    else:
        pic = "<span class='flag'>failed: no picture</span>"
    wmh = _num(r.get("wmh_mm3"))
    unc, unc_key = _uncertainty(r)
    notes = str(r.get("error") or "") if not ok else str(r.get("warnings") or "")
    shown_flags = "".join(f"<div class='flag'>{esc(f)}</div>" for f in flags.split(";") if f) or \
        "<span class='none'>none</span>"
    cells = [
        _cell(pic, key=name), _cell(esc(sub), key=sub), _cell(esc(ses), key=ses),
        _cell(f"{wmh:,.0f}" if math.isfinite(wmh) else "", key=wmh if math.isfinite(wmh) else -1, cls="num"),
        _cell(esc(str(r.get("n_lesions", "")) if ok else ""), key=_num(r.get("n_lesions")) if ok else -1, cls="num"),
        _cell(unc, key=unc_key, cls="num"), _cell(shown_flags, key=flags or "~"), _cell(esc(notes), key=notes),
    ]
    rank = 0 if not ok else 1 if flags else 2
    cls = "failed" if not ok else "flagged" if flags else ""
    return rank, f"<tr class='{cls}'>" + "".join(cells) + "</tr>"


def write_gallery(out_dir: str | os.PathLike, records: Sequence[dict[str, Any]], *, title: str = "WMH QC") -> Path:
    """Write ``out_dir/qc/index.html`` for ``records`` (the rows of volumes.csv, with ``qc_flags``).

    Rows are ordered failed, then flagged, then the rest, each in manifest order; pictures are
    linked when ``qc/<subject>_<session>.png`` exists.
    """
    qc_dir = Path(out_dir) / "qc"
    rows = sorted((_row(r, qc_dir) + (i,) for i, r in enumerate(records)), key=lambda t: (t[0], t[2]))
    n_failed = sum(1 for rank, _, _ in rows if rank == 0)
    n_flagged = sum(1 for rank, _, _ in rows if rank == 1)
    head = "".join(f"<th>{html.escape(h)}</th>" for h in _HEADERS)
    page = (
        f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{_STYLE}</style></head><body>\n<h1>{html.escape(title)}</h1>\n"
        f"<p>{len(rows)} scans: {n_failed} failed, {n_flagged} flagged (shown first; a flag is advice, no scan is "
        "dropped). Click a column header to sort; click a picture to open it. Flags are explained in the README.</p>\n"
        f"<table><thead><tr>{head}</tr></thead><tbody>\n" + "\n".join(row for _, row, _ in rows) +
        f"\n</tbody></table>\n<script>{_SCRIPT}</script>\n</body></html>\n"
    )
    return atomic_write_text(qc_dir / "index.html", page)
