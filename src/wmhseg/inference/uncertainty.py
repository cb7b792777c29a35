"""How sure is a WMH volume? Test-time augmentation and checkpoint ensembles.

``inference.uncertainty``:

- ``none`` (default): nothing more is computed; the uncertainty columns stay empty.
- ``tta``: the working-grid image is perturbed ``uncertainty_samples`` times with MONAI's
  invertible random transforms (a random left-right flip, a small random affine: rotations up to
  ``uncertainty_rotate_deg``, scaling up to ``uncertainty_scale_range``, shifts up to
  ``uncertainty_translate_mm``; and a random intensity scaling of ``uncertainty_intensity``),
  segmented, mapped back through the transforms' inverses (``Compose.inverse``), resampled onto
  the native grid and thresholded as the mask is. Each perturbation gives one volume.
- ``ensemble``: ``ckpt_path`` names several checkpoints (e.g. the folds of ``data.n_folds``); each
  member segments the scan and gives one volume. The mask and ``wmh_mm3`` stay those of the first
  checkpoint.

From the volumes ``v_i``: ``wmh_mm3_sd`` = their standard deviation, and the interval is
``wmh_mm3 ± z * uncertainty_calibration * sd`` with ``z`` the normal quantile of
``uncertainty_level`` (0.95). ``uncertainty_calibration`` (default 1) is the factor a
calibration on scans with known volumes gives (``benchmarks/bench_uncertainty.py`` computes it
by split-conformal calibration on synthetic phantoms).

What the interval is: how much the measured volume moves when the scan is presented slightly
differently (TTA) or when the network is retrained on other folds (ensemble). What it is not: a
bound on the error against a manual or BISON segmentation. A network that is consistently wrong
(a missed lesion type, a scanner it never saw) can be confidently wrong; only calibration on
scans with known volumes says how the two relate.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from statistics import NormalDist
from typing import Any

import numpy as np
import torch

from wmhseg.errors import InputError
from wmhseg.geometry import voxel_sizes
from wmhseg.inference.infer_config import UNCERTAINTY_MODES, UncertaintySettings

__all__ = ["UNCERTAINTY_MODES", "UncertaintySettings", "VolumeUncertainty", "tta_volumes", "member_volumes",
           "volume_interval"]

def _augmentation(s: UncertaintySettings, spacing: Sequence[float], seed: int) -> Any:
    from monai.transforms import Compose, RandAffined, RandFlipd, RandScaleIntensityd

    rot = math.radians(s.rotate_deg)
    shift = [s.translate_mm / float(sp) for sp in spacing]  # MONAI translates in voxels
    aug = Compose([
        RandFlipd("image", prob=0.5, spatial_axis=0),
        RandAffined("image", prob=1.0, rotate_range=(rot, rot, rot), scale_range=(s.scale_range,) * 3,
                    translate_range=shift, mode="bilinear", padding_mode="border"),
        RandScaleIntensityd("image", factors=s.intensity, prob=1.0),
    ])
    aug.set_random_state(seed=seed)
    return aug


def _native_volume(predictor: Any, wmh: torch.Tensor, affine: np.ndarray, shape: Sequence[int],
                   native_affine: np.ndarray) -> float:
    """The volume of the mask ``predictor.to_native`` makes of a working-grid WMH probability."""
    from wmhseg.inference.predictor import WorkingPrediction

    native = predictor.to_native(WorkingPrediction(wmh=wmh, affine=affine), shape, native_affine)
    return float(np.count_nonzero(native.mask)) * float(abs(np.linalg.det(np.asarray(native_affine)[:3, :3])))


def tta_volumes(predictor: Any, image: Any, shape: Sequence[int], native_affine: np.ndarray,
                settings: UncertaintySettings) -> np.ndarray:
    """Native-grid WMH volumes (mm³) of ``settings.samples`` perturbed copies of ``image``.

    Args:
        predictor: a :class:`~wmhseg.inference.predictor.Predictor`.
        image: the working-grid MetaTensor ``(2, X, Y, Z)`` from ``prepare_scan``.
        shape, native_affine: the native FLAIR grid.
        settings: the perturbations and their seed (the same seed gives the same volumes).
    """
    from monai.data import MetaTensor

    affine = np.asarray(torch.as_tensor(image.affine, dtype=torch.float64).reshape(4, 4))
    spacing = voxel_sizes(affine)
    plain = (image.as_tensor() if hasattr(image, "as_tensor") else torch.as_tensor(image)).float()
    volumes = []
    for i in range(settings.samples):
        # a fresh, seeded pipeline per copy: the draws do not depend on what ran before
        aug = _augmentation(settings, spacing, settings.seed * 100_003 + i)
        out = aug({"image": MetaTensor(plain.clone(), affine=torch.as_tensor(affine))})["image"]
        wmh = MetaTensor(predictor.wmh_probability(out.as_tensor())[None], meta=dict(out.meta),
                         applied_operations=copy.deepcopy(out.applied_operations))
        back = aug.inverse({"image": wmh})["image"]
        volumes.append(_native_volume(predictor, back.as_tensor()[0], affine, shape, native_affine))
    return np.asarray(volumes)


def member_volumes(members: Sequence[Any], image: Any, shape: Sequence[int], native_affine: np.ndarray) -> np.ndarray:
    """Native-grid WMH volumes (mm³) of ``image`` segmented by each ensemble member."""
    affine = np.asarray(torch.as_tensor(image.affine, dtype=torch.float64).reshape(4, 4))
    return np.asarray([_native_volume(m, m.wmh_probability(image), affine, shape, native_affine) for m in members])


def volume_interval(wmh_mm3: float, volumes: np.ndarray, settings: UncertaintySettings) -> dict[str, float]:
    """``wmh_mm3_sd``, ``wmh_mm3_ci_low`` and ``wmh_mm3_ci_high`` from the perturbed volumes.

    Example:
        >>> volume_interval(100.0, np.array([90.0, 110.0]), UncertaintySettings(mode="tta"))
        {'wmh_mm3_sd': 14.1421, 'wmh_mm3_ci_low': 72.2819, 'wmh_mm3_ci_high': 127.7181}
    """
    sd = float(np.std(volumes, ddof=1))
    half = NormalDist().inv_cdf(0.5 + settings.level / 2) * settings.calibration * sd
    return {"wmh_mm3_sd": round(sd, 4), "wmh_mm3_ci_low": round(max(wmh_mm3 - half, 0.0), 4),
            "wmh_mm3_ci_high": round(wmh_mm3 + half, 4)}


class VolumeUncertainty:
    """The uncertainty of one scan's volume, as ``inference.uncertainty`` asks.

    Args:
        settings: the mode and its parameters.
        members: the ensemble's other predictors (mode ``ensemble``; the run's own predictor is
            the first member).
    """

    def __init__(self, settings: UncertaintySettings, members: Sequence[Any] = ()) -> None:
        if settings.mode == "ensemble" and not members:
            raise InputError("inference.uncertainty=ensemble needs several checkpoints: "
                             "ckpt_path=[fold0.ckpt,fold1.ckpt,...]")
        self.settings = settings
        self.members = list(members)

    def __call__(self, predictor: Any, prepared: Any, wmh_mm3: float) -> dict[str, float]:
        """``wmh_mm3_sd``, ``wmh_mm3_ci_low``, ``wmh_mm3_ci_high`` of one prepared scan."""
        if self.settings.mode == "tta":
            volumes = tta_volumes(predictor, prepared.image, prepared.shape, prepared.affine, self.settings)
        else:
            members = [predictor, *self.members]
            volumes = member_volumes(members, prepared.image, prepared.shape, prepared.affine)
        return volume_interval(wmh_mm3, volumes, self.settings)
