"""A BISON run -> a wmhseg training manifest.

BISON (VANDAlab/BISON-WMH) reads a CSV with the columns ``Subjects,T1s,FLAIRs,Masks,XFMs`` and
writes, per subject, ``<classifier>_<Subjects>_Label.mnc`` on the brain mask's grid (and, in some
versions, ``..._Labelr.mnc`` resampled like the T1). :func:`import_bison_run` turns that into a
manifest ``subject_id,session_id,t1,flair,label[,xfm],bison_subject``:

* ``Subjects`` is split into subject and session IDs by ``id_pattern``, a template with
  ``{subject}`` and ``{session}`` (default ``{subject}_{session}``: the session is the part after
  the last ``_``); a template without ``{session}`` gives every row the session ``session``;
* the label is the BISON output; when it is not on the FLAIR's grid (BISON writes it on the
  mask's grid) it is resampled onto the FLAIR grid by nearest neighbour through the two affines
  and written as NIfTI under ``label_dir``; a label already on the FLAIR grid is used as it is;
* ``XFMs`` is *not* used for volumes: in BISON it is the (non-linear) transform between the
  template and the subject, used to warp its priors. When the images lie in stereotaxic space
  (PELICAN's ``*_stx2_lin.mnc``), name the linear native -> stereotaxic transform of each row with
  ``xfm_pattern`` (placeholders ``{Subjects}``, ``{subject}``, ``{session}``), e.g.
  ``{subject}/{session}/stx2/stx2_{subject}_{session}_t1.xfm``;
* a row whose files are missing or unreadable, or whose ``Subjects`` does not fit the pattern,
  is left out of the manifest and listed, with the reason, in the returned problems (the command
  writes them beside the manifest as ``<manifest stem>_missing.csv``).

Relative paths in BISON's CSV are taken relative to ``base_dir`` (default: the CSV's folder).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from nibabel.processing import resample_from_to

from wmhseg.errors import InputError, ManifestError, ScanError
from wmhseg.files import atomic_write_csv
from wmhseg.ids import check_safe_id
from wmhseg.image_io import atomic_save_nifti, load_nifti, read_header, same_grid
from wmhseg.xfm import read_linear_transform

__all__ = ["BISON_COLUMNS", "LABEL_KINDS", "ImportResult", "id_regex", "import_bison_run", "write_import"]

BISON_COLUMNS = ("Subjects", "T1s", "FLAIRs")  # required; Masks and XFMs are optional here
LABEL_KINDS = ("Label", "Labelr")
MISSING_COLUMNS = ("bison_subject", "subject_id", "session_id", "problem")


@dataclass
class ImportResult:
    """``rows``: manifest rows (dicts); ``problems``: rows left out, with the reason."""

    rows: list[dict] = field(default_factory=list)
    problems: list[dict] = field(default_factory=list)


def id_regex(pattern: str) -> re.Pattern:
    """The regular expression of an ID template: ``{subject}_{session}`` -> ``(?P<subject>.+)_(?P<session>.+?)``.

    The subject part is greedy, so with ``_`` as separator the session is the text after the last one.

    Raises:
        InputError: no ``{subject}``, a placeholder repeated, or an unknown placeholder.
    """
    parts = re.split(r"(\{[^}]*\})", pattern)
    holders = [p for p in parts if p.startswith("{")]
    unknown = sorted(set(holders) - {"{subject}", "{session}"})
    if "{subject}" not in holders or unknown or len(holders) != len(set(holders)):
        raise InputError(f"id_pattern={pattern!r} must hold {{subject}} once, and {{session}} at most once "
                         f"(unknown: {unknown})")
    body = "".join("(?P<subject>.+)" if p == "{subject}" else "(?P<session>.+?)" if p == "{session}"
                   else re.escape(p) for p in parts)
    return re.compile(body)


def _path(value: str, base: Path) -> Path:
    p = Path(os.path.expanduser(value.strip()))
    return (p if p.is_absolute() else base / p).resolve()


def _read_bison_csv(path: Path) -> pd.DataFrame:
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True, encoding="utf-8-sig")
    except Exception as exc:  # pandas: ParserError, EmptyDataError, UnicodeDecodeError ...
        raise ManifestError(f"{path}: cannot read BISON's CSV ({exc})") from exc
    frame.columns = [str(c).strip() for c in frame.columns]
    missing = [c for c in BISON_COLUMNS if c not in frame.columns]
    if missing:
        raise ManifestError(f"{path}: missing column(s) {missing}; BISON's CSV has Subjects,T1s,FLAIRs,Masks,XFMs, "
                            f"found {list(frame.columns)}")
    if frame.empty:
        raise ManifestError(f"{path}: BISON's CSV has no rows")
    return frame


def _label_on_flair_grid(label: Path, flair: Path, out_path: Path) -> Path:
    """``label`` itself when it lies on the FLAIR grid, else its nearest-neighbour resampling
    onto that grid, written to ``out_path`` (NIfTI, int16)."""
    flair_shape, flair_affine = read_header(flair)
    label_shape, label_affine = read_header(label)
    if same_grid(label_shape, label_affine, flair_shape, flair_affine):
        return label
    data, affine = load_nifti(label, dtype=np.float32)
    moved = resample_from_to(nib.Nifti1Image(np.rint(data).astype(np.int16), affine),
                             (tuple(flair_shape), flair_affine), order=0, mode="constant", cval=0)
    out = np.asarray(moved.dataobj).astype(np.int16)
    before = np.count_nonzero(np.rint(data)) * abs(np.linalg.det(affine[:3, :3]))
    after = np.count_nonzero(out) * abs(np.linalg.det(flair_affine[:3, :3]))
    if before > 0 and abs(after - before) > 0.1 * before:  # the FLAIR's field of view misses part of the label
        raise ScanError(f"{label}: on the FLAIR grid ({flair.name}) the labelled volume changes from {before:.0f} "
                        f"to {after:.0f} mm^3; the label and FLAIR do not cover the same head")
    atomic_save_nifti(nib.Nifti1Image(out, flair_affine), out_path)
    return out_path


def _import_row(rec: dict, *, regex: re.Pattern, session: str, base: Path, labels_dir: Path, label_name: str,
                label_dir: Path, xfm_pattern: str | None) -> dict:
    """One BISON row -> one manifest row; raises ScanError/InputError with the reason otherwise."""
    name = rec["Subjects"].strip()
    match = regex.fullmatch(name)
    if not match:
        raise InputError(f"Subjects {name!r} does not fit id_pattern ({regex.pattern})")
    ids = {"subject": match.group("subject"), "session": match.groupdict().get("session") or session}
    subject = check_safe_id(ids["subject"], name="subject_id")
    session_id = check_safe_id(ids["session"], name="session_id")
    t1, flair = _path(rec["T1s"], base), _path(rec["FLAIRs"], base)
    label = labels_dir / label_name.format(Subjects=name)
    missing = [f"{kind} {p}" for kind, p in (("T1", t1), ("FLAIR", flair), ("label", label)) if not p.is_file()]
    if missing:
        raise ScanError("missing file(s): " + "; ".join(missing))
    read_header(t1)
    row = {"subject_id": subject, "session_id": session_id, "t1": str(t1), "flair": str(flair),
           "label": str(_label_on_flair_grid(label, flair, label_dir / f"{subject}_{session_id}_label.nii.gz"))}
    if xfm_pattern:
        xfm = _path(xfm_pattern.format(Subjects=name, subject=subject, session=session_id), base)
        read_linear_transform(xfm)
        row["xfm"] = str(xfm)
    return {**row, "bison_subject": name}


def import_bison_run(bison_csv: str | os.PathLike, labels_dir: str | os.PathLike, label_dir: str | os.PathLike, *,
                     id_pattern: str = "{subject}_{session}", session: str = "1", classifier: str = "RF0",
                     label_kind: str = "Label", base_dir: str | os.PathLike | None = None,
                     xfm_pattern: str | None = None) -> ImportResult:
    """Read a BISON run; see the module docstring.

    Args:
        bison_csv: BISON's input CSV (``Subjects,T1s,FLAIRs[,Masks,XFMs]``).
        labels_dir: BISON's output folder (``<classifier>_<Subjects>_<label_kind>.mnc``).
        label_dir: where labels resampled onto the FLAIR grid are written.
        id_pattern: template splitting ``Subjects`` into ``{subject}`` and ``{session}``.
        session: the session ID when ``id_pattern`` has no ``{session}``.
        classifier: BISON's ``-c`` option (the output prefix).
        label_kind: ``"Label"`` (on the mask's grid) or ``"Labelr"``.
        base_dir: folder of relative paths in the CSV (default: the CSV's folder).
        xfm_pattern: optional template of each row's linear native -> stereotaxic transform.

    Raises:
        ManifestError: unreadable CSV or missing columns. Problems of single rows are returned.
        InputError: a bad ``id_pattern`` or ``label_kind``.
    """
    if label_kind not in LABEL_KINDS:
        raise InputError(f"label_kind={label_kind!r} is not one of {LABEL_KINDS}")
    bison_csv = Path(bison_csv)
    frame = _read_bison_csv(bison_csv)
    regex = id_regex(id_pattern)
    base = Path(base_dir) if base_dir is not None else bison_csv.resolve().parent
    result = ImportResult()
    seen: dict[tuple[str, str], str] = {}
    for rec in frame.to_dict("records"):
        try:
            row = _import_row(rec, regex=regex, session=session, base=base, labels_dir=Path(labels_dir).resolve(),
                              label_name=f"{classifier}_{{Subjects}}_{label_kind}.mnc",
                              label_dir=Path(label_dir).resolve(), xfm_pattern=xfm_pattern)
            key = (row["subject_id"], row["session_id"])
            if key in seen:
                raise InputError(f"subject {key[0]!r} / session {key[1]!r} already comes from Subjects {seen[key]!r}")
            seen[key] = rec["Subjects"]
            result.rows.append(row)
        except (ScanError, InputError) as exc:
            match = regex.fullmatch(rec["Subjects"].strip())
            result.problems.append({"bison_subject": rec["Subjects"],
                                    "subject_id": match.group("subject") if match else "",
                                    "session_id": (match.groupdict().get("session") or session) if match else "",
                                    "problem": str(exc)})
    return result


def write_import(result: ImportResult, out: str | os.PathLike) -> tuple[Path, Path | None]:
    """Write the manifest (and ``<stem>_missing.csv`` when rows were left out) atomically."""
    out = Path(out)
    columns = ["subject_id", "session_id", "t1", "flair", "label"]
    columns += ["xfm"] if any("xfm" in r for r in result.rows) else []
    atomic_write_csv(out, pd.DataFrame(result.rows, columns=[*columns, "bison_subject"]))
    missing = out.with_name(f"{out.stem}_missing.csv")
    if result.problems:
        return out, atomic_write_csv(missing, pd.DataFrame(result.problems, columns=list(MISSING_COLUMNS)))
    if missing.exists():
        missing.unlink()  # a stale list from an earlier import would mislead
    return out, None
