"""A synthetic BISON run on disk, laid out as BISON and VANDAlab's PELICAN preprocessing leave it.

:func:`write_bison_run` writes, under ``out_dir``::

    to_segment.csv                          Subjects,T1s,FLAIRs,Masks,XFMs (BISON's input list)
    scans/<Subjects>_{t1,flair,mask}.mnc    stereotaxic-space images (MINC2, every other scan MINC1)
    scans/<Subjects>_t1_stx.xfm             linear native -> stereotaxic transform (MINC .xfm)
    scans/<Subjects>_nl.xfm                 BISON's non-linear template transform (a grid; unused)
    Outputs/RF0_<Subjects>_Label.mnc        BISON's labels, on the mask's grid
    truth.csv                               Subjects, subject, session, wmh_stx_mm3, stx_scale, wmh_native_mm3

``Subjects`` is ``<subject>_<visit>`` (e.g. ``S001_V1``). Each scan is a synthetic head
(:func:`wmhseg.synth.images.generate_subject`) whose world coordinates are scaled by a known
linear transform: the images lie in "stereotaxic space", their WMH volume there is the native
one times ``|det|``. The mask's grid is the FLAIR's grid stored in another axis order with a
margin, so the labels must be resampled onto the FLAIR grid, as BISON's are.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from wmhseg.files import atomic_write_csv, atomic_write_text
from wmhseg.synth.images import generate_subject
from wmhseg.synth.minc import write_minc1, write_minc2

__all__ = ["write_bison_run", "linear_xfm_text"]

_MASK_MARGIN = 3  # voxels added on each side of the mask grid


def linear_xfm_text(matrix: np.ndarray) -> str:
    """A MINC ``.xfm`` holding one linear transform (``matrix``, 4x4)."""
    rows = "\n".join(" " + " ".join(f"{v:.10g}" for v in row) for row in np.asarray(matrix)[:3])
    return f"MNI Transform File\n%synthetic native -> stereotaxic\n\nTransform_Type = Linear;\nLinear_Transform =\n{rows};\n"


def _scale(rng: np.random.Generator) -> np.ndarray:
    """A native -> stereotaxic transform: anisotropic scaling 0.9-1.2 and a small shift."""
    m = np.diag([*rng.uniform(0.9, 1.2, size=3), 1.0])
    m[:3, 3] = rng.uniform(-5, 5, size=3)
    return m


def _mask_grid(label: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The label on a grid holding the FLAIR's voxel centres: padded, axes reversed (z, y, x)."""
    m = _MASK_MARGIN
    padded = np.pad(label, m)
    shifted = affine.copy()
    shifted[:3, 3] = affine[:3, 3] - affine[:3, :3] @ np.full(3, m)
    perm = np.transpose(padded, (2, 1, 0))
    perm_affine = np.eye(4)
    perm_affine[:3, :3] = shifted[:3, :3][:, [2, 1, 0]]
    perm_affine[:3, 3] = shifted[:3, 3]
    return np.ascontiguousarray(perm), perm_affine


def write_bison_run(out_dir: str | os.PathLike, *, n_subjects: int = 4, n_visits: int = 2,
                    shape=(32, 32, 32), spacing=(1.0, 1.0, 1.0), seed: int = 0,
                    wmh_volume_mm3=(300.0, 800.0), anatomy: str = "procedural") -> dict[str, Path]:
    """Write a synthetic BISON run (see the module docstring); returns the paths of its parts."""
    out = Path(out_dir)
    scans, outputs = out / "scans", out / "Outputs"
    scans.mkdir(parents=True, exist_ok=True)
    outputs.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows, truth = [], []
    for s in range(n_subjects):
        stx = _scale(rng)
        for v in range(n_visits):
            name = f"S{s + 1:03d}_V{v + 1}"
            scan = generate_subject(shape=shape, spacing=spacing, seed=seed * 1000 + s * 10 + v,
                                    subject_seed=seed * 1000 + s, anatomy=anatomy,
                                    wmh_volume_mm3=float(rng.uniform(*wmh_volume_mm3)))
            affine, t1_affine = stx @ scan.affine, stx @ scan.t1_affine
            write = write_minc2 if (s + v) % 2 == 0 else write_minc1
            paths = {"T1s": write(scans / f"{name}_t1.mnc", scan.t1, t1_affine),
                     "FLAIRs": write(scans / f"{name}_flair.mnc", scan.flair, affine)}
            label, label_affine = _mask_grid(scan.label.astype(np.int16), affine)
            paths["Masks"] = write(scans / f"{name}_mask.mnc", (label > 0).astype(np.uint8), label_affine)
            write_minc2(outputs / f"RF0_{name}_Label.mnc", label, label_affine)
            atomic_write_text(scans / f"{name}_t1_stx.xfm", linear_xfm_text(stx))
            paths["XFMs"] = scans / f"{name}_nl.xfm"
            atomic_write_text(paths["XFMs"], f"MNI Transform File\nTransform_Type = Grid_Transform;\n"
                                             f"Displacement_Volume = {name}_nl_grid_0.mnc;\n")
            rows.append({"Subjects": name, **{k: str(p.relative_to(out)) for k, p in paths.items()}})
            det = float(abs(np.linalg.det(stx[:3, :3])))
            stx_mm3 = float((scan.label == 9).sum()) * abs(np.linalg.det(affine[:3, :3]))
            truth.append({"Subjects": name, "subject": f"S{s + 1:03d}", "session": f"V{v + 1}",
                          "wmh_stx_mm3": stx_mm3, "stx_scale": det, "wmh_native_mm3": stx_mm3 / det})
    csv = atomic_write_csv(out / "to_segment.csv", pd.DataFrame(rows, columns=["Subjects", "T1s", "FLAIRs", "Masks", "XFMs"]))
    return {"bison_csv": csv, "labels_dir": outputs,
            "truth": atomic_write_csv(out / "truth.csv", pd.DataFrame(truth))}
