"""Working resolution: how much of the independent phantoms' WMH survives the working grid.

A perfect network at working voxel size ``s`` (1, 1.5, 2 mm) reproduces the label that
preprocessing gives it on its grid (the native label resampled, nearest neighbour); the export
(:meth:`wmhseg.inference.Predictor.to_native`, footprint means and the volume-keeping mask)
brings it back to the native FLAIR grid, its boundary placed by the fraction alone
(``native_boundary=fraction``) and by the fraction plus the native FLAIR's hyperintensity
(``flair``, the default). Its Dice and volume error against the native label are the ceiling
that working resolution puts on any network, measured on the independent family
(:mod:`wmhseg.synth.independent`: 1-1.2 mm, thick-slice, LPS and oblique grids).

    python benchmarks/bench_resolution.py [--n 4] [--spacings 1 1.5 2]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import torch
from monai.networks.nets import UNet

from wmhseg.data.preprocessing import PreprocessSpec, preprocess_transforms
from wmhseg.inference.infer_config import InferenceSettings
from wmhseg.inference.predictor import Predictor, WorkingPrediction
from wmhseg.labels import LabelSpec
from wmhseg.metrics import dice
from wmhseg.synth.independent import write_family


def ceiling(manifest: Path, spacing: float) -> list[dict]:
    """Per phantom: Dice and volume error of a perfect network at ``spacing`` mm, native grid."""
    table = pd.read_csv(manifest, dtype=str)
    predictors = {mode: Predictor(UNet(3, 2, 2, channels=(4, 8), strides=(2,)), PreprocessSpec(spacing=(spacing,) * 3),
                                  LabelSpec(), settings=InferenceSettings(native_boundary=mode))
                  for mode in ("fraction", "flair")}
    predictor = predictors["fraction"]
    tf = preprocess_transforms(predictor.preprocess_spec, with_label=True)
    rows = []
    for r in table.itertuples():
        files = {k: str(manifest.parent / getattr(r, k)) for k in ("t1", "flair", "label")}
        out = tf(files)
        work = WorkingPrediction(wmh=(out["label"][0] == 9).float().as_tensor(),
                                 affine=np.asarray(out["label"].affine, np.float64))
        img = nib.load(files["label"])
        truth = np.asarray(img.dataobj) == 9
        flair = np.asarray(nib.load(files["flair"]).dataobj, dtype=np.float32)
        voxel = abs(np.linalg.det(img.affine[:3, :3]))
        for mode, pred in predictors.items():
            native = pred.to_native(work, truth.shape, img.affine, intensity=flair)
            rows.append({"spacing_mm": spacing, "native_boundary": mode, "kind": r.kind,
                         "dice": float(dice(native.mask, truth)),
                         "volume_error_pct": 100 * (native.mask.sum() - truth.sum()) / truth.sum(),
                         "wmh_mm3": float(truth.sum() * voxel)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--spacings", type=float, nargs="+", default=[1.0, 1.5, 2.0])
    parser.add_argument("--out", default="benchmarks/results/resolution.json")
    args = parser.parse_args()
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        manifest = write_family(tmp, n_subjects=args.n, seed=1)
        rows = [row for s in args.spacings for row in ceiling(manifest, s)]
    frame = pd.DataFrame(rows)
    print(frame.to_string(index=False))
    summary = frame.groupby(["spacing_mm", "native_boundary"])[["dice", "volume_error_pct"]].mean().round(3)
    print(summary.to_string())
    Path(args.out).write_text(json.dumps({"per_scan": rows, "mean": summary.reset_index().to_dict("records")},
                                         indent=2))


if __name__ == "__main__":
    main()
