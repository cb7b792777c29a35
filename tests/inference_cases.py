"""Helpers for the inference tests: a fixed "network" that thresholds FLAIR, stored as a real
checkpoint, and tiny NIfTI scans with a known WMH mask in odd geometries.

The network is an allow-listed MONAI ``UNet`` reduced to 1x1x1 convolutions without
normalisation or activation (a pointwise linear map), with weights set so that the WMH logit is
``K * (FLAIR - FLAIR_THRESHOLD)``. With ``normalisation="none"`` in the checkpoint's
preprocessing, a voxel is predicted WMH exactly when its raw FLAIR exceeds the threshold.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import torch

from wmhseg.data.preprocessing import PreprocessSpec
from wmhseg.labels import LabelSpec

FLAIR_THRESHOLD = 200.0
HEAD, LESION, VENTRICLE_T1 = 100.0, 300.0, 200.0
K = 50.0
SHAPE = (40, 44, 36)


def threshold_network_config(out_channels: int = 2) -> dict:
    return {"_target_": "monai.networks.nets.UNet", "spatial_dims": 3, "in_channels": 2,
            "out_channels": out_channels, "channels": [2, 2], "strides": [1], "kernel_size": 1,
            "up_kernel_size": 1, "num_res_units": 0, "act": None, "norm": None}


def _state(out_channels: int) -> dict[str, torch.Tensor]:
    from wmhseg.checkpoint import build_network

    net = build_network(threshold_network_config(out_channels))
    sd = {k: torch.zeros_like(v) for k, v in net.state_dict().items()}
    sd["model.0.conv.weight"][0, 0] = 1.0  # T1 passes through
    sd["model.0.conv.weight"][1, 1] = 1.0  # FLAIR passes through
    w, b = sd["model.2.conv.weight"], sd["model.2.conv.bias"]  # ConvTranspose: (in, out, 1, 1, 1)
    if out_channels == 2:
        w[1, 1] = K
        b[1] = -K * FLAIR_THRESHOLD
    else:  # BISON classes: 0 background (FLAIR < 50), 1 ventricles (T1 > 150), 8 WM, 9 WMH
        b[:] = -1e4
        w[1, 0], b[0] = -K, K * 50.0
        w[0, 1], b[1] = K, -K * 150.0
        b[8] = 0.0
        w[1, 9], b[9] = K, -K * FLAIR_THRESHOLD
    return {f"net.{k}": v for k, v in sd.items()}


def make_checkpoint(path: Path, *, mode: str = "binary", spec: PreprocessSpec | None = None) -> Path:
    """A Lightning-style checkpoint of the threshold network (loads with ``weights_only=True``)."""
    out_channels = 2 if mode == "binary" else 10
    spec = spec or PreprocessSpec(normalisation="none", crop_margin=2)
    ckpt = {
        "epoch": 0, "global_step": 0, "pytorch-lightning_version": "2.6.6",
        "state_dict": _state(out_channels),
        "wmhseg": {"format_version": 1, "wmhseg_version": "0.1.0",
                   "network": threshold_network_config(out_channels), "preprocessing": spec.to_dict(),
                   "labels": LabelSpec(mode=mode).to_dict(),
                   "inference": {"roi_size": [48, 48, 48], "sw_batch_size": 2, "overlap": 0.25, "mode": "gaussian",
                                 "threshold": 0.5},
                   "config": "model: threshold-test\n"},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, path)
    return path


def phantom(shape=SHAPE, *, ventricles: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """RAS-ordered ``(t1, flair, label)`` with a box head, two lesion blocks, optional ventricles.

    Lesions: a 4x3x3 block near the centre and a 2x2x2 block far from it (36 + 8 voxels).
    """
    t1 = np.zeros(shape, np.float32)
    head = (slice(4, shape[0] - 4), slice(4, shape[1] - 4), slice(4, shape[2] - 4))
    t1[head] = HEAD
    flair = t1.copy()
    label = np.zeros(shape, np.uint8)
    label[head] = 8
    c = [s // 2 for s in shape]
    if ventricles:
        vent = (slice(c[0] - 3, c[0] + 3), slice(c[1] - 4, c[1] + 4), slice(c[2] - 3, c[2] + 3))
        t1[vent] = VENTRICLE_T1
        label[vent] = 1
    near = (slice(c[0] + 4, c[0] + 8), slice(c[1] - 1, c[1] + 2), slice(c[2] - 1, c[2] + 2))
    far = (slice(6, 8), slice(6, 8), slice(6, 8))
    for box in (near, far):
        flair[box] = LESION
        label[box] = 9
    return t1, flair, label


def reorient(arr: np.ndarray, affine: np.ndarray, codes: str) -> tuple[np.ndarray, np.ndarray]:
    """Store a RAS array in another axis orientation (e.g. ``"LPS"``), same world positions."""
    ornt = nib.orientations.ornt_transform(nib.orientations.axcodes2ornt("RAS"),
                                           nib.orientations.axcodes2ornt(codes))
    out = nib.orientations.apply_orientation(arr, ornt)
    return np.ascontiguousarray(out), affine @ nib.orientations.inv_ornt_aff(ornt, arr.shape)


def write_nifti(path: Path, arr: np.ndarray, affine: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(arr, affine), str(path))
    return path


def write_case(folder: Path, name: str, *, codes: str = "RAS", spacing=(1.0, 1.0, 1.0), origin=(-20.0, -22.0, -18.0),
               rotation_deg: float = 0.0, ventricles: bool = False, t1_grid: dict | None = None) -> dict:
    """Write one phantom scan; returns paths and the true mask volume (mm^3).

    ``t1_grid`` (``{"spacing": ..., "origin": ...}``) puts the T1 on its own grid.
    """
    t1, flair, label = phantom(ventricles=ventricles)
    affine = np.diag([*spacing, 1.0])
    if rotation_deg:
        a = np.deg2rad(rotation_deg)
        rot = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
        affine[:3, :3] = rot @ affine[:3, :3]
    affine[:3, 3] = origin
    t1_affine = affine.copy()
    if t1_grid is not None:
        t1_affine = np.diag([*t1_grid["spacing"], 1.0])
        t1_affine[:3, 3] = t1_grid["origin"]
    f_arr, f_aff = reorient(flair, affine, codes)
    l_arr, _ = reorient(label, affine, codes)
    t_arr, t_aff = reorient(t1, t1_affine, codes)
    paths = {"t1": write_nifti(folder / f"{name}_T1w.nii.gz", t_arr, t_aff),
             "flair": write_nifti(folder / f"{name}_FLAIR.nii.gz", f_arr, f_aff),
             "label": write_nifti(folder / f"{name}_label.nii.gz", l_arr, f_aff)}
    voxel = float(abs(np.linalg.det(affine[:3, :3])))
    return {**paths, "wmh_mm3": float((label == 9).sum()) * voxel, "affine": f_aff, "shape": f_arr.shape}


def write_manifest(path: Path, rows: list[dict]) -> Path:
    cols = ["subject_id", "session_id", "t1", "flair"] + (["label"] if any("label" in r for r in rows) else [])
    pd.DataFrame([{c: str(r.get(c, "")) for c in cols} for r in rows], columns=cols).to_csv(path, index=False)
    return path


def infer_cfg(ckpt: Path, manifest: Path, out_dir: Path, **kw) -> dict:
    cfg = {"ckpt_path": str(ckpt), "input": str(manifest), "out_dir": str(out_dir), "overwrite": False,
           "num_parts": 1, "part_id": 0, "num_workers": 0, "progress": False, "pv_distance_mm": 10.0,
           "inference": {"device": "cpu", "precision": "fp32"}}
    inference = kw.pop("inference", {})
    cfg.update(kw)
    cfg["inference"].update(inference)
    return cfg
