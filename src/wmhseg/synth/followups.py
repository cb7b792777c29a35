"""Follow-up scans as real studies have them: a repositioned head, drifting contrast, a new scanner.

Every visit of a subject shares its anatomy and lesion pattern (the lesions grow in place, new
ones appear where the subject's lesion score crosses the threshold, and they shrink when the
volume falls). On top of that, :func:`draw_acquisitions` gives each visit after the baseline:

* **head repositioning**: a rigid motion of the head in the scanner's world frame, each axis
  rotated by up to ``rotation_deg`` about the head centre and shifted by up to ``shift_mm``
  (uniform draws). The voxel grid moves with the head, so the truth of the motion is exact
  (``acquisitions.csv``: ``world_from_reference``, the 3x4 matrix taking the subject's reference
  frame, the baseline's world, to this visit's world);
* **intensity drift**: the FLAIR's contrast drifts with time, ``I -> m * (I / m) ** (1 + g)``
  (``m`` the median head intensity) with ``g = gamma_drift_per_year * years * (+-1 per subject)``;
* **a scanner change midway** for a share ``p_scanner_change`` of the subjects with two or more
  visits: from visit ``n // 2 + 1`` on, voxels ``scanner_spacing_factor`` times the baseline's
  (the field of view kept), ``scanner_noise_factor`` times the noise, a stronger bias field and
  a FLAIR contrast offset ``scanner_gamma``, and a protocol of its own.

A scanner's **protocol** (its tissue and lesion contrasts, gamma, gain and noise level, drawn as
:func:`wmhseg.synth.images.generate_subject` draws them) is shared by all visits of a subject on
that scanner: from one session to the next only the tissue intensities jitter, by up to
``session_contrast_jitter`` (relative), and the bias field, the FLAIR look-alikes and the noise
are drawn again. Scan-rescan studies on one scanner and protocol see intensity changes of a few
per cent, far below the spread between scanners that the per-scan draws of a cross-sectional
cohort model.

Example:
    >>> import numpy as np, pandas as pd
    >>> visits = pd.DataFrame({"subject_id": ["a", "a"], "years": [0.0, 0.5]})
    >>> acq = draw_acquisitions(visits, FollowUps(), np.random.default_rng(0))
    >>> bool(np.allclose(acq[0].world_from_reference, np.eye(4)))
    True
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd

from wmhseg.image_io import atomic_save_nifti
from wmhseg.synth.anatomy import rotation_matrix

__all__ = ["FollowUps", "Acquisition", "draw_acquisitions", "move_scan", "read_motion", "IDEAL"]


@dataclass(frozen=True)
class FollowUps:
    """How follow-up visits differ from the baseline (see the module docstring).

    Raises:
        ValueError: a negative size, a probability outside [0, 1] or a non-positive factor.
    """

    rotation_deg: float = 3.0
    shift_mm: float = 4.0
    gamma_drift_per_year: float = 0.08
    p_scanner_change: float = 0.3
    scanner_spacing_factor: tuple[float, float, float] = (1.25, 1.0, 1.25)
    scanner_noise_factor: float = 1.5
    scanner_bias_field: float = 0.35
    scanner_gamma: float = 0.12
    session_contrast_jitter: float = 0.03

    def __post_init__(self) -> None:
        for name in ("rotation_deg", "shift_mm", "gamma_drift_per_year", "scanner_bias_field"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"FollowUps.{name}={getattr(self, name)!r} must be >= 0")
        if not 0 <= self.session_contrast_jitter <= 0.5:
            raise ValueError(f"FollowUps.session_contrast_jitter={self.session_contrast_jitter!r} must be within [0, 0.5]")
        if not 0 <= self.p_scanner_change <= 1:
            raise ValueError(f"FollowUps.p_scanner_change={self.p_scanner_change!r} must be within [0, 1]")
        factors = (*self.scanner_spacing_factor, self.scanner_noise_factor)
        if len(self.scanner_spacing_factor) != 3 or min(factors) <= 0:
            raise ValueError(f"FollowUps.scanner_spacing_factor={self.scanner_spacing_factor!r} and "
                             f"scanner_noise_factor={self.scanner_noise_factor!r} must be positive (three factors)")

    def as_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


#: Follow-ups on the baseline's exact grid, head position and scanner protocol: visits differ only
#: by what no protocol fixes (look-alikes, bias field, noise).
IDEAL = FollowUps(rotation_deg=0.0, shift_mm=0.0, gamma_drift_per_year=0.0, p_scanner_change=0.0,
                  session_contrast_jitter=0.0)


@dataclass
class Acquisition:
    """One visit's acquisition: scanner, rigid motion, FLAIR contrast change."""

    scanner: str
    world_from_reference: np.ndarray
    rotation_deg: np.ndarray
    shift_mm: np.ndarray
    flair_gamma: float

    def record(self) -> dict[str, Any]:
        """The columns of ``acquisitions.csv`` for this visit."""
        out: dict[str, Any] = {"scanner": self.scanner}
        for axis, r, s in zip("xyz", self.rotation_deg, self.shift_mm, strict=True):
            out[f"rotation_{axis}_deg"] = round(float(r), 4)
            out[f"shift_{axis}_mm"] = round(float(s), 4)
        out["flair_gamma"] = round(self.flair_gamma, 5)
        out["world_from_reference"] = " ".join(f"{v:.8g}" for v in self.world_from_reference[:3].ravel())
        return out


def read_motion(text: str) -> np.ndarray:
    """The 4x4 ``world_from_reference`` of an ``acquisitions.csv`` cell (:meth:`Acquisition.record`'s 3x4)."""
    m = np.eye(4)
    m[:3] = np.array(str(text).split(), float).reshape(3, 4)
    return m


def draw_acquisitions(visits: pd.DataFrame, params: FollowUps, rng: np.random.Generator) -> list[Acquisition]:
    """One :class:`Acquisition` per row of ``visits`` (columns ``subject_id``, ``years``; rows of a
    subject consecutive and in time order). The first visit of each subject is the reference."""
    out: list[Acquisition] = []
    for _, rows in visits.groupby("subject_id", sort=False):
        n = len(rows)
        change_at = n // 2 if n >= 2 and rng.random() < params.p_scanner_change else n
        sign = rng.choice([-1.0, 1.0])
        for k, years in enumerate(rows["years"].to_numpy(float)):
            angles = np.zeros(3) if k == 0 else rng.uniform(-params.rotation_deg, params.rotation_deg, 3)
            shift = np.zeros(3) if k == 0 else rng.uniform(-params.shift_mm, params.shift_mm, 3)
            motion = np.eye(4)
            motion[:3, :3] = rotation_matrix(angles)
            motion[:3, 3] = shift
            new = k >= change_at
            gamma = sign * params.gamma_drift_per_year * years + (params.scanner_gamma if new else 0.0)
            out.append(Acquisition("B" if new else "A", motion, angles, shift, float(gamma)))
    return out


def move_scan(paths: dict[str, Path], acquisition: Acquisition) -> None:
    """Rewrite a painted visit's files with its motion (all affines) and FLAIR contrast change."""
    for key in ("t1", "flair", "label"):
        img = nib.load(str(paths[key]))
        data = np.asanyarray(img.dataobj)
        if key == "flair" and acquisition.flair_gamma:
            m = float(np.median(data[data > np.percentile(data, 60)]))
            data = (m * np.power(np.clip(data, 0, None) / m, 1.0 + acquisition.flair_gamma)).astype(np.float32)
        moved = nib.Nifti1Image(data, acquisition.world_from_reference @ img.affine, img.header)
        atomic_save_nifti(moved, paths[key])
