"""Reading and checking the volume table and the clinical table.

Both tables are read with every cell as text, so IDs keep their leading zeros, and each column
is then checked and converted here. Problems a user can cause raise :class:`TableError`, whose
message names the table, the column and the offending rows as file line numbers (the header is
line 1, the first data row line 2; for a table given in memory, the line it would have once
written to CSV).

Cells that are empty or read ``NA``, ``N/A``, ``NaN``, ``null`` or ``None`` (any case) are
missing values.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from wmhseg.errors import InputError, closest, did_you_mean
from wmhseg.ids import MISSING_WORDS
from wmhseg.schema import CLINICAL_COLUMNS, GROUPS, SEXES, VOLUME_REQUIRED

__all__ = [
    "TableError",
    "VolumeTable",
    "read_table",
    "check_volumes",
    "check_clinical",
    "load_volumes",
    "load_clinical",
    "is_missing",
]

_MISSING = MISSING_WORDS  # the one rule for missing cells and IDs (wmhseg.ids)
_SHOW_ROWS = 5


class TableError(InputError):
    """A volume or clinical table is unusable; the message names the table, column and rows."""


@dataclass
class VolumeTable:
    """A checked volume table.

    Attributes:
        scans: rows with ``status == 'ok'``: ``subject_id, session_id, wmh_mm3, n_lesions, line``
            (``n_lesions`` is a nullable integer column, ``Int64``).
        failed: the other rows (``subject_id, session_id, status, error, line``), left out of
            every analysis.
        source: the table's name in messages (its path when read from a file).
    """

    scans: pd.DataFrame
    failed: pd.DataFrame
    source: str


def lines(index: Iterable[int], limit: int = _SHOW_ROWS) -> str:
    """Describe row positions as file line numbers: ``'lines 2, 7 and 3 more'``."""
    rows = [int(i) + 2 for i in index]
    shown = ", ".join(str(r) for r in rows[:limit])
    more = f" and {len(rows) - limit} more" if len(rows) > limit else ""
    return f"line{'s' if len(rows) > 1 else ''} {shown}{more}"


def is_missing(values: pd.Series) -> np.ndarray:
    """True where a cell is missing (NaN/None or one of the missing-value words)."""
    text = values.astype(object).where(values.notna(), "")
    return np.array([str(v).strip().lower() in _MISSING for v in text], dtype=bool)


def read_table(path: str | os.PathLike, *, name: str) -> pd.DataFrame:
    """Read a CSV file with every cell as text.

    Args:
        path: the CSV file.
        name: what the table is (``'volume table'``), used in messages.

    Raises:
        TableError: the file is missing, empty or not parseable as CSV.
    """
    path = Path(path)
    if not path.is_file():
        raise TableError(f"{name} {path}: file not found")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False, skipinitialspace=True)
    except pd.errors.EmptyDataError as exc:
        raise TableError(f"{name} {path}: the file is empty") from exc
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        msg = " ".join(str(exc).split())
        raise TableError(f"{name} {path}: cannot be read as CSV ({msg})") from exc
    frame.columns = [str(c).strip() for c in frame.columns]
    return frame


def _require_columns(frame: pd.DataFrame, columns: Sequence[str], source: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        hints = []
        for col in missing:
            close = closest(col, frame.columns)
            if close is not None:
                hints.append(f"{close!r} instead of {col!r}?")
        hint = f" (found {', '.join(hints)})" if hints else ""
        raise TableError(
            f"{source}: missing column{'s' if len(missing) > 1 else ''} {', '.join(missing)}{hint}; "
            f"the columns are {', '.join(map(str, frame.columns)) or 'none'}"
        )


def _ids(frame: pd.DataFrame, column: str, source: str) -> pd.Series:
    values = frame[column].astype(object).where(frame[column].notna(), "")
    text = pd.Series([str(v).strip() for v in values], index=frame.index, dtype=object)
    empty = np.flatnonzero(is_missing(text))
    if empty.size:
        raise TableError(f"{source}: column {column} is empty on {lines(empty)}")
    return text


def _numeric(
    frame: pd.DataFrame,
    column: str,
    source: str,
    *,
    required: np.ndarray | bool = True,
    low: float | None = None,
    high: float | None = None,
    allowed: Sequence[float] | None = None,
) -> np.ndarray:
    """Convert a column to float; missing cells become NaN unless ``required`` there."""
    col = frame[column]
    missing = is_missing(col)
    if pd.api.types.is_numeric_dtype(col.dtype):
        values = pd.to_numeric(col, errors="coerce").to_numpy(dtype=float, na_value=np.nan)
    else:
        text = col.astype(object).where(~missing, np.nan)
        values = pd.to_numeric(
            pd.Series([str(v).strip() if isinstance(v, str) else v for v in text]), errors="coerce"
        )
        values = values.to_numpy(dtype=float, na_value=np.nan)
        bad = np.flatnonzero(~missing & np.isnan(values))
        if bad.size:
            examples = ", ".join(repr(str(col.iloc[i])) for i in bad[:3])
            raise TableError(f"{source}: column {column} has non-numeric values ({examples}) on {lines(bad)}")
    missing = missing | np.isnan(values)
    need = np.broadcast_to(np.asarray(required, dtype=bool), missing.shape)
    absent = np.flatnonzero(missing & need)
    if absent.size:
        raise TableError(f"{source}: column {column} is missing on {lines(absent)}")
    infinite = np.flatnonzero(np.isinf(values))
    if infinite.size:
        raise TableError(f"{source}: column {column} is infinite on {lines(infinite)}")
    with np.errstate(invalid="ignore"):
        if low is not None and (bad := np.flatnonzero(values < low)).size:
            raise TableError(f"{source}: column {column} is below {low:g} on {lines(bad)}")
        if high is not None and (bad := np.flatnonzero(values > high)).size:
            raise TableError(f"{source}: column {column} is above {high:g} on {lines(bad)}")
    if allowed is not None:
        bad = np.flatnonzero(~np.isnan(values) & ~np.isin(values, allowed))
        if bad.size:
            raise TableError(
                f"{source}: column {column} must be one of {', '.join(f'{a:g}' for a in allowed)} on {lines(bad)}"
            )
    return values


def _category(frame: pd.DataFrame, column: str, source: str, allowed: Sequence[str]) -> np.ndarray:
    values = np.array([str(v).strip() for v in frame[column].astype(object).where(frame[column].notna(), "")])
    bad = np.flatnonzero(~np.isin(values, allowed))
    if bad.size:
        first = str(values[bad[0]])  # a plain str in messages, not np.str_
        raise TableError(
            f"{source}: column {column} has {first!r}, not one of {', '.join(map(repr, allowed))}, "
            f"on {lines(bad)}{did_you_mean(first, allowed)}"
        )
    return values


def _duplicates(keys: pd.DataFrame, source: str) -> None:
    dup = keys.duplicated(keep=False).to_numpy()
    if dup.any():
        first = keys[dup].iloc[0]
        raise TableError(
            f"{source}: subject_id/session_id pairs appear more than once, e.g. "
            f"({first['subject_id']}, {first['session_id']}), on {lines(np.flatnonzero(dup))}"
        )


def check_volumes(frame: pd.DataFrame, *, source: str = "volume table") -> VolumeTable:
    """Check a volume table (as written by ``infer.py``) and keep the usable scans.

    Required columns: ``subject_id, session_id, wmh_mm3``; ``status`` (rows other than ``ok``
    are left out and listed), ``n_lesions``, ``icv_mm3`` (intracranial volume) and ``error`` are
    optional.

    Args:
        frame: the table, typically from :func:`read_table`.
        source: the table's name in messages.

    Raises:
        TableError: missing columns, empty IDs, duplicate subject/session rows, or a
            non-numeric, missing or negative ``wmh_mm3`` on a row with status ``ok``.

    Example:
        >>> t = check_volumes(pd.DataFrame({"subject_id": ["001"], "session_id": ["01"], "wmh_mm3": ["12.5"]}))
        >>> t.scans["wmh_mm3"].tolist()
        [12.5]
    """
    _require_columns(frame, VOLUME_REQUIRED, source)
    frame = frame.reset_index(drop=True)
    subj = _ids(frame, "subject_id", source)
    sess = _ids(frame, "session_id", source)
    keys = pd.DataFrame({"subject_id": subj, "session_id": sess})
    _duplicates(keys, source)
    if "status" in frame.columns:
        status = np.array(
            [str(v).strip() for v in frame["status"].astype(object).where(frame["status"].notna(), "")]
        )
    else:
        status = np.full(len(frame), "ok")
    ok = status == "ok"
    wmh = _numeric(frame, "wmh_mm3", source, required=ok, low=None)
    negative = np.flatnonzero(ok & (wmh < 0))
    if negative.size:
        raise TableError(f"{source}: column wmh_mm3 is negative on {lines(negative)}")
    n_lesions = pd.array([pd.NA] * len(frame), dtype="Int64")
    if "n_lesions" in frame.columns:
        counts = _numeric(frame, "n_lesions", source, required=False, low=0)
        fractional = np.flatnonzero(np.isfinite(counts) & (counts != np.round(counts)))
        if fractional.size:
            raise TableError(f"{source}: column n_lesions is not a whole number on {lines(fractional)}")
        n_lesions = pd.array(np.where(np.isfinite(counts), counts, np.nan), dtype="Float64").astype("Int64")
    error = (
        frame["error"].astype(str).str.strip() if "error" in frame.columns else pd.Series([""] * len(frame))
    )
    line = np.arange(len(frame)) + 2
    columns = {"subject_id": subj, "session_id": sess, "wmh_mm3": wmh, "n_lesions": n_lesions, "line": line}
    if "icv_mm3" in frame.columns:
        columns["icv_mm3"] = _numeric(frame, "icv_mm3", source, required=False, low=0)
    scans = pd.DataFrame(columns)[ok].reset_index(drop=True)
    failed = pd.DataFrame(
        {"subject_id": subj, "session_id": sess, "status": status, "error": error.to_numpy(), "line": line}
    )[~ok].reset_index(drop=True)
    return VolumeTable(scans=scans, failed=failed, source=source)


def _constant_within(frame: pd.DataFrame, column: str, subj: pd.Series, source: str) -> None:
    """Error when a column takes more than one non-missing value within a subject."""
    values = frame[column]
    present = ~is_missing(values)
    sub = pd.DataFrame({"s": subj[present], "v": values[present].astype(str).str.strip()})
    n_distinct = sub.groupby("s", sort=False)["v"].nunique()
    changing = n_distinct[n_distinct > 1]
    if len(changing):
        who = changing.index[0]
        rows = np.flatnonzero((subj == who).to_numpy())
        seen = ", ".join(sorted(sub.loc[sub["s"] == who, "v"].unique()))
        raise TableError(
            f"{source}: column {column} changes within subject {who} ({seen}) on {lines(rows)}"
            + (f"; {len(changing) - 1} more subjects change too" if len(changing) > 1 else "")
        )


def check_clinical(frame: pd.DataFrame, *, source: str = "clinical table") -> pd.DataFrame:
    """Check a clinical table and return it typed.

    Required columns: ``subject_id, session_id, group, age, sex, years_since_baseline,
    alsfrs_r, survival_months, event`` (the last three may be empty cells). ``group`` is
    ``ALS`` or ``control``; ``sex`` is ``M`` or ``F``; both, and the survival columns, must not
    change within a subject. ``years_since_baseline`` >= 0; ``age`` may be left empty except on
    a subject's baseline row; ``alsfrs_r`` in 0-48; ``survival_months`` >= 0; ``event`` 0 or 1.
    Other columns are kept as text (they can serve as covariates).

    Args:
        frame: the table, typically from :func:`read_table`.
        source: the table's name in messages.

    Returns:
        The table with numeric columns as floats, IDs as stripped text and a ``line`` column.

    Raises:
        TableError: naming the column and rows of the first problem found.
    """
    _require_columns(frame, CLINICAL_COLUMNS, source)
    frame = frame.reset_index(drop=True)
    out = frame.copy()
    out["subject_id"] = _ids(frame, "subject_id", source)
    out["session_id"] = _ids(frame, "session_id", source)
    _duplicates(out[["subject_id", "session_id"]], source)
    out["group"] = _category(frame, "group", source, GROUPS)
    out["sex"] = _category(frame, "sex", source, SEXES)
    out["years_since_baseline"] = _numeric(frame, "years_since_baseline", source, low=0.0)
    out["age"] = _numeric(frame, "age", source, required=False, low=0.0, high=130.0)
    out["alsfrs_r"] = _numeric(frame, "alsfrs_r", source, required=False, low=0.0, high=48.0)
    out["survival_months"] = _numeric(frame, "survival_months", source, required=False, low=0.0)
    out["event"] = _numeric(frame, "event", source, required=False, allowed=(0.0, 1.0))
    for column in ("group", "sex", "survival_months", "event"):
        _constant_within(out, column, out["subject_id"], source)
    for column in ("survival_months", "event"):
        out[column] = out.groupby("subject_id", sort=False)[column].transform("first")
    first = out.groupby("subject_id", sort=False)["years_since_baseline"].idxmin()
    no_age = first[out.loc[first.to_numpy(), "age"].isna().to_numpy()]
    if len(no_age):
        raise TableError(
            f"{source}: column age is missing on the baseline row (smallest years_since_baseline) of "
            f"subject {no_age.index[0]}, {lines(no_age.to_numpy())}"
        )
    out["line"] = np.arange(len(out)) + 2
    return out


def load_volumes(path: str | os.PathLike) -> VolumeTable:
    """Read and check a volume table file (see :func:`check_volumes`)."""
    return check_volumes(read_table(path, name="volume table"), source=f"volume table {path}")


def load_clinical(path: str | os.PathLike) -> pd.DataFrame:
    """Read and check a clinical table file (see :func:`check_clinical`)."""
    return check_clinical(read_table(path, name="clinical table"), source=f"clinical table {path}")
