"""Scan manifests: which T1w, FLAIR and (optional) BISON label files make each scan.

Two input forms are accepted:

* a CSV file with columns ``subject_id, session_id, t1, flair[, label][, xfm]`` (extra columns
  are ignored); ``xfm`` names a linear transform from the scan's space to stereotaxic space
  (:mod:`wmhseg.xfm`), given when the images themselves lie in stereotaxic space. IDs are read
  as strings, so ``001`` stays ``001``. Paths are absolute or relative to the manifest's folder. Row numbers in messages count data rows from 1 (the header is row 0).
* a BIDS-style folder ``sub-<id>/[ses-<id>/]anat/`` holding one ``*_T1w.nii[.gz]``, one
  ``*_FLAIR.nii[.gz]`` and at most one label map named ``*_label.nii[.gz]`` or
  ``*_dseg.nii[.gz]`` (each may be MINC instead: ``*_T1w.mnc`` ...). A subject without ``ses-*`` folders gets the session id ``"1"``. Rows
  are numbered from 1 in sorted (subject, session) order. When a visit has several candidates
  of a kind (``acq-2D`` and ``acq-3D`` FLAIRs), ``bids_filters`` chooses among them: a mapping
  from kind (``t1``, ``flair``, ``label``) to BIDS entities, e.g. ``{"flair": {"acq": "3D"}}``,
  keeps the candidates whose name has ``_acq-3D_`` (a ``null`` value keeps those without the
  entity). The one file left is used; none or several left is an error for that visit. A visit
  with a single candidate uses it, whatever the filters say.

An incomplete visit (no ``anat`` folder, no T1 or FLAIR, an empty cell, candidates that
``bids_filters`` does not settle) does not stop the cohort: its :class:`Scan` carries the reason
in ``problem`` and :func:`check_scan` raises it, so inference writes it as that scan's error.

Reading a manifest checks its structure only (columns, duplicate scans).
:func:`check_scan` and :func:`validate_scans` then check the files: that they exist, that the
headers are readable 3-D NIfTI or MINC, that the T1 and FLAIR grids overlap in world space (they may
differ: T1 is resampled onto the FLAIR grid), that the label lies on the FLAIR grid, and
(reading the data) that no file is truncated and every label value is known.

Example:
    >>> scans = read_manifest("cohort/manifest.csv")          # doctest: +SKIP
    >>> validate_scans(scans, LabelSpec(), read_data=False)   # headers only: fast
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from wmhseg.errors import ManifestError, ScanError
from wmhseg.image_io import load_nifti, read_header
from wmhseg.labels import LabelSpec
from wmhseg.schema import MANIFEST_OPTIONAL, MANIFEST_REQUIRED
from wmhseg.xfm import read_linear_transform

__all__ = [
    "MANIFEST_REQUIRED",
    "Scan",
    "read_manifest",
    "read_csv_manifest",
    "read_bids_folder",
    "check_bids_filters",
    "check_scan",
    "validate_scans",
]

_BIDS_NO_SESSION = "1"
_BIDS_KINDS = ("t1", "flair", "label")
_NII = r"\.(nii(\.gz)?|mnc)$"
_BIDS_PATTERNS = {
    "t1": re.compile(r"_T1w" + _NII),
    "flair": re.compile(r"_FLAIR" + _NII),
    "label": re.compile(r"_(label|dseg)" + _NII),
}
# Two grids "match" when their world bounding boxes share at least this fraction of the
# smaller box's volume; less means a wrong affine (or two different heads).
_MIN_OVERLAP = 0.5


@dataclass(frozen=True)
class Scan:
    """One scan: a T1w + FLAIR pair of one subject at one session, and its label if any.

    Attributes:
        subject_id, session_id: string IDs (leading zeros kept).
        t1, flair: absolute paths of the NIfTI or MINC files (``None`` only when ``problem`` says why).
        label: absolute path of the BISON label map, or ``None``.
        row: 1-based data row in the CSV (or position in the sorted BIDS listing).
        problem: why the visit cannot be processed (a missing file, an empty cell), else ``None``.
        xfm: absolute path of the linear scan-to-stereotaxic transform, or ``None``.
    """

    subject_id: str
    session_id: str
    t1: Path | None
    flair: Path | None
    label: Path | None
    row: int
    xfm: Path | None = None
    problem: str | None = None

    @property
    def key(self) -> str:
        """``"<subject_id>_<session_id>"``: the scan's name in output files."""
        return f"{self.subject_id}_{self.session_id}"

    def describe(self) -> str:
        """``"row 3 (subject 001, session 02)"``: how messages name this scan."""
        return f"row {self.row} (subject {self.subject_id!r}, session {self.session_id!r})"


def read_manifest(path: str | os.PathLike, *, bids_filters: Mapping[str, Any] | None = None) -> list[Scan]:
    """Read a CSV manifest or a BIDS-style folder (decided by ``path`` being a folder).

    Args:
        path: the CSV file or the BIDS folder.
        bids_filters: which file of several candidates a BIDS visit uses (module docstring).

    Raises:
        ManifestError: missing path, missing columns, duplicate (subject, session) pairs, a
            BIDS folder with no ``sub-*`` folder, or malformed ``bids_filters``.
    """
    path = Path(path)
    if path.is_dir():
        return read_bids_folder(path, bids_filters=bids_filters)
    if not path.is_file():
        raise ManifestError(f"{path}: manifest not found (expected a CSV file or a BIDS folder)")
    return read_csv_manifest(path)


def _resolve(value: str, base: Path) -> Path:
    p = Path(os.path.expanduser(value))
    return p if p.is_absolute() else (base / p)


def read_csv_manifest(path: str | os.PathLike) -> list[Scan]:
    """Read a ``subject_id,session_id,t1,flair[,label][,xfm]`` CSV file; see the module docstring.

    A row with an empty required cell is listed with its ``problem`` (an error for that scan alone).

    Raises:
        ManifestError: unreadable file, missing columns, no rows, or a duplicate
            (subject_id, session_id); the message names the file and row.
    """
    path = Path(path)
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig", skipinitialspace=True)
    except Exception as exc:  # pandas raises ParserError, UnicodeDecodeError, EmptyDataError ...
        raise ManifestError(f"{path}: cannot read the manifest as CSV ({exc})") from exc
    frame.columns = [str(c).strip() for c in frame.columns]
    missing = [c for c in MANIFEST_REQUIRED if c not in frame.columns]
    if missing:
        raise ManifestError(
            f"{path}: missing column(s) {missing}; a manifest needs {list(MANIFEST_REQUIRED)} "
            f"(and optionally 'label', 'xfm'), found {list(frame.columns)}"
        )
    optional = tuple(c for c in MANIFEST_OPTIONAL if c in frame.columns)
    base = path.resolve().parent
    scans: list[Scan] = []
    for i, rec in enumerate(frame.to_dict("records"), start=1):
        cells = {k: str(rec[k]).strip() for k in (*MANIFEST_REQUIRED, *optional)}
        empty = [k for k in MANIFEST_REQUIRED if not cells[k]]
        label, xfm = cells.get("label") or None, cells.get("xfm") or None
        scans.append(
            Scan(
                subject_id=cells["subject_id"],
                session_id=cells["session_id"],
                t1=_resolve(cells["t1"], base) if cells["t1"] else None,
                flair=_resolve(cells["flair"], base) if cells["flair"] else None,
                label=_resolve(label, base) if label else None,
                row=i,
                xfm=_resolve(xfm, base) if xfm else None,
                problem=f"{path}: row {i}: empty value in column(s) {empty}" if empty else None,
            )
        )
    if not scans:
        raise ManifestError(f"{path}: the manifest has a header but no rows")
    _check_unique(scans, str(path))
    return scans


def _check_unique(scans: Sequence[Scan], source: str) -> None:
    seen: dict[tuple[str, str], int] = {}
    for scan in (s for s in scans if not s.problem):
        k = (scan.subject_id, scan.session_id)
        if k in seen:
            raise ManifestError(
                f"{source}: row {scan.row}: duplicate scan (subject {scan.subject_id!r}, session "
                f"{scan.session_id!r}) already listed at row {seen[k]}"
            )
        seen[k] = scan.row


def _entities(name: str) -> dict[str, str]:
    """BIDS entities of a file name: ``sub-01_ses-2_acq-3D_FLAIR.nii.gz`` -> ``{"sub": "01", "ses": "2", "acq": "3D"}``."""
    return dict(part.split("-", 1) for part in name.split(".")[0].split("_") if "-" in part)


def check_bids_filters(filters: Mapping[str, Any] | None) -> dict[str, dict[str, str | None]]:
    """``bids_filters`` as plain ``{kind: {entity: value or None}}``; raise :class:`ManifestError` if malformed."""
    out: dict[str, dict[str, str | None]] = {}
    for kind, entities in dict(filters or {}).items():
        if kind not in _BIDS_KINDS or not isinstance(entities, Mapping):
            raise ManifestError(f"bids_filters.{kind}: expected one of {list(_BIDS_KINDS)} mapped to entities, "
                                f"e.g. {{flair: {{acq: 3D}}}}; got {entities!r}")
        out[kind] = {str(k): (None if v is None else str(v)) for k, v in dict(entities).items()}
    return out


def _pick(folder: Path, kind: str, filters: dict[str, str | None]) -> tuple[Path | None, str | None]:
    """``(file, None)`` for the one candidate of ``kind`` left by ``filters``; ``(None, why)`` otherwise
    (``(None, None)`` for no label: it is optional)."""
    pattern = _BIDS_PATTERNS[kind]
    found = sorted(p for p in folder.iterdir() if p.is_file() and pattern.search(p.name))
    if not found:
        return None, None if kind == "label" else f"{folder}: no {kind} file (expected a name ending in {pattern.pattern})"
    kept = found if len(found) == 1 else [p for p in found
                                          if all(_entities(p.name).get(k) == v for k, v in filters.items())]
    if len(kept) == 1:
        return kept[0].resolve(), None
    names = ", ".join(p.name for p in found)
    if not kept:
        return None, f"{folder}: no {kind} file matches bids_filters.{kind}={filters} (found {names})"
    return None, (f"{folder}: {len(kept)} {kind} files ({', '.join(p.name for p in kept)}); choose one with "
                  f"bids_filters, e.g. bids_filters={{{kind}: {{acq: <value>}}}}")


def _bids_scan(subject: str, session: str, anat: Path, row: int, filters: dict[str, dict]) -> Scan:
    if not anat.is_dir():
        return Scan(subject, session, None, None, None, row,
                    problem=f"{anat}: missing 'anat' folder for subject {subject!r}, session {session!r}")
    picked = {kind: _pick(anat, kind, filters.get(kind, {})) for kind in _BIDS_KINDS}
    problems = [why for _, why in picked.values() if why]
    return Scan(subject, session, picked["t1"][0], picked["flair"][0], picked["label"][0], row,
                problem="; ".join(problems) or None)


def read_bids_folder(root: str | os.PathLike, *, bids_filters: Mapping[str, Any] | None = None) -> list[Scan]:
    """List the scans of a BIDS-style folder; see the module docstring for the layout.

    A visit without an ``anat`` folder, a T1 or a FLAIR, or with several candidates that
    ``bids_filters`` does not settle, is listed with its ``problem``.

    Raises:
        ManifestError: no ``sub-*`` folder, an empty subject or session label, or malformed ``bids_filters``.
    """
    root = Path(root)
    filters = check_bids_filters(bids_filters)
    entries: list[tuple[str, str, Path]] = []
    for sub in sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("sub-")):
        sessions = sorted(p for p in sub.iterdir() if p.is_dir() and p.name.startswith("ses-"))
        if sessions:
            entries += [(sub.name[4:], ses.name[4:], ses / "anat") for ses in sessions]
        else:
            entries.append((sub.name[4:], _BIDS_NO_SESSION, sub / "anat"))
    if not entries:
        raise ManifestError(f"{root}: no sub-* folders: not a BIDS-style folder")
    for subject, session, anat in entries:
        if not subject or not session:
            raise ManifestError(f"{anat}: empty subject or session label in the folder name")
    return [_bids_scan(subject, session, anat, row, filters)
            for row, (subject, session, anat) in enumerate(entries, start=1)]


def _world_box(shape: Sequence[int], affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Axis-aligned world bounding box (mm) of a grid's voxel centres, +-half a voxel."""
    corners = np.array([[i, j, k] for i in (-0.5, shape[0] - 0.5) for j in (-0.5, shape[1] - 0.5)
                        for k in (-0.5, shape[2] - 0.5)])
    world = corners @ affine[:3, :3].T + affine[:3, 3]
    return world.min(0), world.max(0)


def _overlap_fraction(shape_a, affine_a, shape_b, affine_b) -> float:
    lo_a, hi_a = _world_box(shape_a, affine_a)
    lo_b, hi_b = _world_box(shape_b, affine_b)
    inter = np.clip(np.minimum(hi_a, hi_b) - np.maximum(lo_a, lo_b), 0, None).prod()
    smaller = min((hi_a - lo_a).prod(), (hi_b - lo_b).prod())
    return float(inter / smaller) if smaller > 0 else 0.0


def check_scan(scan: Scan, label_spec: LabelSpec | None = None, *, read_data: bool = False) -> None:
    """Check one scan's files; raise :class:`ScanError` naming the file and the problem.

    Args:
        scan: the scan to check.
        label_spec: which label values are known (default :class:`LabelSpec()`); used only
            when ``read_data`` and the scan has a label.
        read_data: also decompress every file (catches truncated files) and check the label
            values. Headers alone are cheap; reading data costs about a second per large scan.

    Checks: the visit is complete (``scan.problem``); files exist and are readable 3-D NIfTI or MINC;
    T1 and FLAIR are two files; the T1 and FLAIR world bounding boxes overlap by at least half of
    the smaller one; the label has the FLAIR's shape and affine; an ``xfm`` is a readable
    linear transform; images are not constant; label
    values are in ``label_spec.known_values`` and are not exactly {0, 1} (a binary mask, see
    :meth:`LabelSpec.binary_mask_problem`).
    """
    if scan.problem:
        raise ScanError(scan.problem)
    flair_shape, flair_affine = read_header(scan.flair)
    t1_shape, t1_affine = read_header(scan.t1)
    if os.path.samefile(scan.t1, scan.flair):
        raise ScanError(f"{scan.t1}: the same file is given as T1 and as FLAIR")
    overlap = _overlap_fraction(t1_shape, t1_affine, flair_shape, flair_affine)
    if overlap < _MIN_OVERLAP:
        raise ScanError(
            f"{scan.t1}: T1 and FLAIR ({scan.flair.name}) grids cannot be matched: their world extents "
            f"overlap by {overlap:.0%} (< {_MIN_OVERLAP:.0%}); check the affines (qform/sform) of both files"
        )
    if scan.label is not None:
        label_shape, label_affine = read_header(scan.label)
        if tuple(label_shape) != tuple(flair_shape) or not np.allclose(label_affine, flair_affine, atol=1e-3):
            raise ScanError(
                f"{scan.label}: the label is not on the FLAIR grid: shape {tuple(label_shape)} vs "
                f"{tuple(flair_shape)}, max affine difference "
                f"{float(np.abs(label_affine - flair_affine).max()):.4g} mm"
            )
    if scan.xfm is not None:
        read_linear_transform(scan.xfm)
    if not read_data:
        return
    for path in (scan.t1, scan.flair):
        data, _ = load_nifti(path)
        finite = data[np.isfinite(data)]
        if finite.size == 0 or float(finite.max()) == float(finite.min()):
            raise ScanError(f"{path}: the image is constant or has no finite voxel")
    if scan.label is not None:
        label, _ = load_nifti(scan.label, dtype=np.float32)
        if not np.all(np.isfinite(label)):
            raise ScanError(f"{scan.label}: the label map holds NaN or infinite values")
        spec = label_spec or LabelSpec()
        bad = spec.unknown_values(label)
        if bad:
            shown = ", ".join(str(v) for v in bad[:8]) + (" ..." if len(bad) > 8 else "")
            raise ScanError(
                f"{scan.label}: unknown label value(s) {shown}; known values are {list(spec.known_values)}"
            )
        binary = spec.binary_mask_problem(label)
        if binary:
            raise ScanError(f"{scan.label}: {binary}")


def validate_scans(
    scans: Sequence[Scan],
    label_spec: LabelSpec | None = None,
    *,
    read_data: bool = True,
    require_label: bool = False,
    max_report: int = 20,
) -> None:
    """Check every scan (see :func:`check_scan`) and report all problems at once.

    Args:
        scans: scans from :func:`read_manifest`.
        label_spec: known label values; default :class:`LabelSpec()`.
        read_data: also read the data (truncation, constant images, label values).
        require_label: every scan must have a label (training).
        max_report: at most this many problems are listed in the message.

    Raises:
        ManifestError: one line per failing scan: ``row N (subject 'X', session 'Y'): <file>: <problem>``.
    """
    problems: list[str] = []
    for scan in scans:
        try:
            if require_label and scan.label is None:
                raise ScanError("no label file: training needs a label for every scan")
            check_scan(scan, label_spec, read_data=read_data)
        except ScanError as exc:
            problems.append(f"{scan.describe()}: {exc}")
    if problems:
        shown = problems[:max_report]
        more = f"\n... and {len(problems) - len(shown)} more" if len(problems) > len(shown) else ""
        raise ManifestError(f"{len(problems)} of {len(scans)} scans failed validation:\n" + "\n".join(shown) + more)
