"""Linear transforms from a scan's own space to stereotaxic space, read from transform files.

A manifest's optional ``xfm`` column names one per scan when the images lie in stereotaxic space
(e.g. VANDAlab's PELICAN ``*_stx2_lin.mnc`` images, on which BISON runs). A volume measured on
such images is a stereotaxic volume; the scan's own (native) volume is that divided by
``|det|`` of the transform's 3x3 part (:func:`stereotaxic_scale`).

Accepted files, all returned by :func:`read_linear_transform` as a 4x4 matrix mapping native
world coordinates (RAS mm) to stereotaxic ones:

* MINC ``.xfm`` (``MNI Transform File``): one or more ``Linear`` transforms, applied in the order
  listed (as ``xfmconcat`` writes them), each inverted when its ``Invert_Flag = True``. A
  non-linear part (``Grid_Transform``, ``Thin_Plate_Spline_Transform``) is an error: a
  non-linear transform has no single scale.
* ITK transform files (``#Insight Transform File`` text, ``.tfm``, ``.mat``, read with
  SimpleITK): ITK stores the transform of a registration in the resampling direction, from the
  fixed image to the moving image. The file is read as a registration of the scan (moving) to
  the stereotaxic template (fixed), i.e. stereotaxic -> native, and is inverted here.
* plain text: a 4x4 matrix (or its top 3 rows), numbers separated by spaces or commas, mapping
  native to stereotaxic coordinates; lines starting with ``#`` or ``%`` are comments.

Example:
    >>> stereotaxic_scale("sub-01_t1_stx.xfm")     # doctest: +SKIP
    1.183
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from wmhseg.errors import ScanError

__all__ = ["read_linear_transform", "stereotaxic_scale", "parse_minc_xfm", "parse_matrix_text", "native_volumes",
           "itk_matrix", "RAS_LPS"]

_MINC_MAGIC = "MNI Transform File"
_ITK_MAGIC = "#Insight Transform File"
_NONLINEAR = ("Grid_Transform", "Thin_Plate_Spline_Transform")
RAS_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])  # RAS <-> ITK's LPS world (its own inverse)


def _statements(text: str) -> list[tuple[str, str]]:
    """``key = value;`` statements of a MINC transform file, comments (``%``) removed."""
    body = "\n".join(line.split("%", 1)[0] for line in text.splitlines()[1:])
    out = []
    for stmt in body.split(";"):
        if "=" in stmt:
            key, value = stmt.split("=", 1)
            out.append((key.strip(), value.strip()))
    return out


def _matrix_from_numbers(values: list[float], source: str) -> np.ndarray:
    if len(values) not in (12, 16):
        raise ScanError(f"{source}: expected 12 or 16 numbers of a linear transform, found {len(values)}")
    m = np.eye(4)
    m[: len(values) // 4] = np.asarray(values, dtype=np.float64).reshape(-1, 4)
    if not np.all(np.isfinite(m)):
        raise ScanError(f"{source}: the transform holds non-finite numbers")
    if not np.allclose(m[3], [0, 0, 0, 1], atol=1e-6):
        raise ScanError(f"{source}: the last row {m[3].tolist()} is not [0, 0, 0, 1]: not an affine transform")
    return m


def parse_minc_xfm(text: str, source: str = "xfm") -> np.ndarray:
    """The 4x4 native -> stereotaxic matrix of a MINC transform file's text.

    Raises:
        ScanError: not a MINC transform file, a non-linear part, or malformed numbers.
    """
    lines = text.lstrip().splitlines()
    if not lines or lines[0].strip() != _MINC_MAGIC:
        raise ScanError(f"{source}: not a MINC transform file (no '{_MINC_MAGIC}' first line)")
    total = np.eye(4)
    parts: list[dict[str, str]] = []
    for key, value in _statements(text):
        if key == "Transform_Type":
            parts.append({"type": value})
        elif parts:
            parts[-1][key] = value
    if not parts:
        raise ScanError(f"{source}: no Transform_Type in the MINC transform file")
    for i, part in enumerate(parts, start=1):
        kind = part["type"]
        if kind in _NONLINEAR:
            raise ScanError(f"{source}: transform {i} is non-linear ({kind}); a linear transform to stereotaxic "
                            f"space is needed (the linear part of the registration, e.g. bestlinreg's .xfm)")
        if kind != "Linear":
            raise ScanError(f"{source}: transform {i} has unknown type {kind!r}")
        if "Linear_Transform" not in part:
            raise ScanError(f"{source}: transform {i} has no Linear_Transform matrix")
        try:
            values = [float(v) for v in part["Linear_Transform"].split()]
        except ValueError as exc:
            raise ScanError(f"{source}: transform {i}: {exc}") from exc
        m = _matrix_from_numbers(values, f"{source}: transform {i}")
        if part.get("Invert_Flag", "False").strip().lower() == "true":
            m = np.linalg.inv(m)
        total = m @ total
    return total


def parse_matrix_text(text: str, source: str = "matrix") -> np.ndarray:
    """A 4x4 (or 3x4) matrix written as text; lines starting with ``#`` or ``%`` are comments."""
    rows = [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith(("#", "%"))]
    try:
        values = [float(v) for v in re.split(r"[\s,]+", " ".join(rows).strip()) if v]
    except ValueError as exc:
        raise ScanError(f"{source}: not a matrix of numbers ({exc})") from exc
    return _matrix_from_numbers(values, source)


def _read_itk(path: Path) -> np.ndarray:
    import SimpleITK as sitk

    try:
        tx = sitk.ReadTransform(str(path))
    except RuntimeError as exc:
        raise ScanError(f"{path}: SimpleITK cannot read the transform ({str(exc).strip().splitlines()[-1]})") from exc
    if not tx.IsLinear():
        raise ScanError(f"{path}: the ITK transform ({tx.GetName()}) is not linear; a linear transform is needed")
    stx_to_native = RAS_LPS @ itk_matrix(tx) @ RAS_LPS
    return np.linalg.inv(stx_to_native)


def itk_matrix(transform) -> np.ndarray:
    """The 4x4 matrix (LPS mm) of a linear SimpleITK transform, found by mapping the origin and
    the unit vectors (works for every linear transform type and for composites of them)."""
    origin = np.asarray(transform.TransformPoint((0.0, 0.0, 0.0)))
    m = np.eye(4)
    for j in range(3):
        m[:3, j] = np.asarray(transform.TransformPoint(tuple(np.eye(3)[j]))) - origin
    m[:3, 3] = origin
    return m


def read_linear_transform(path: str | os.PathLike) -> np.ndarray:
    """Read a transform file (see the module docstring) as a 4x4 native -> stereotaxic matrix.

    Raises:
        ScanError: missing or unreadable file, a non-linear transform, a singular matrix; the
            message names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise ScanError(f"{path}: transform file not found")
    if path.suffix.lower() == ".mat":
        matrix = _read_itk(path)
    else:
        try:
            text = path.read_text(encoding="utf-8", errors="strict")
        except (OSError, UnicodeDecodeError) as exc:
            raise ScanError(f"{path}: cannot read the transform file as text ({exc})") from exc
        head = text.lstrip()
        if head.startswith(_MINC_MAGIC):
            matrix = parse_minc_xfm(text, str(path))
        elif head.startswith(_ITK_MAGIC):
            matrix = _read_itk(path)
        else:
            matrix = parse_matrix_text(text, str(path))
    det = float(np.linalg.det(matrix[:3, :3]))
    if not np.isfinite(det) or abs(det) < 1e-6:
        raise ScanError(f"{path}: the transform is singular (determinant {det:.3g})")
    return matrix


def stereotaxic_scale(path: str | os.PathLike) -> float:
    """``|det|`` of the transform's 3x3 part: stereotaxic volume / native volume."""
    return float(abs(np.linalg.det(read_linear_transform(path)[:3, :3])))


def native_volumes(measures: dict, scale: float) -> dict:
    """Volumes measured in stereotaxic space -> native ones: every ``*_mm3*`` value / ``scale``.

    The stereotaxic WMH volume is kept as ``wmh_stx_mm3`` and ``scale`` as ``stx_scale``; the
    voxel size columns (``voxel_*``) stay those of the stereotaxic grid the mask lies on.
    """
    out = {}
    for key, value in measures.items():
        is_volume = "_mm3" in key and not key.startswith("voxel_") and isinstance(value, (int, float))
        out[key] = value / scale if is_volume else value
    out["wmh_stx_mm3"], out["stx_scale"] = measures["wmh_mm3"], scale
    return out
