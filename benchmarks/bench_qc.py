"""The time QC adds per scan: one picture (load FLAIR, mask and T1, draw, save) and the gallery.

    python benchmarks/bench_qc.py [--repeats 5]

Synthetic scans at two sizes: a 1 mm head (182 x 218 x 182, compressed NIfTI) and the demo's
2 mm scan (80 x 96 x 80). The mask is the painted WMH label. Prints the median seconds per
picture over ``--repeats`` draws and the gallery's time for 400 rows, with the load average.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
from timing import loadavg

from wmhseg.qc.gallery import write_gallery
from wmhseg.qc.image import qc_picture
from wmhseg.synth.images import write_scan

SIZES = {"1mm_182x218x182": ((182, 218, 182), (1.0, 1.0, 1.0)), "2mm_80x96x80": ((80, 96, 80), (2.0, 2.0, 2.0))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    out = {"load_average_start": loadavg(), "seconds_per_picture": {}}
    with tempfile.TemporaryDirectory(prefix="wmhseg-qc-") as tmp:
        root = Path(tmp)
        for name, (shape, spacing) in SIZES.items():
            scan = write_scan(root / name, "001", "01", wmh_volume_mm3=8000.0, seed=5, shape=shape, spacing=spacing)
            label = nib.load(str(scan["label"]))
            mask = root / f"{name}_mask.nii.gz"
            nib.save(nib.Nifti1Image((np.asarray(label.dataobj) == 9).astype(np.uint8), label.affine), str(mask))
            times = []
            for i in range(args.repeats):
                t0 = time.perf_counter()
                qc_picture(scan["flair"], mask, scan["t1"], root / f"{name}_{i}.png", lines=["subject 001"])
                times.append(time.perf_counter() - t0)
            out["seconds_per_picture"][name] = round(statistics.median(times), 3)
        records = [{"subject_id": f"{i:04d}", "session_id": "01", "status": "ok", "wmh_mm3": 1000.0 + i,
                    "n_lesions": 3, "qc_flags": "volume_outlier" if i % 20 == 0 else ""} for i in range(400)]
        t0 = time.perf_counter()
        write_gallery(root, records)
        out["gallery_400_rows_s"] = round(time.perf_counter() - t0, 3)
    out["load_average_end"] = loadavg()
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
