"""Segment new scans and write per-scan WMH volume tables.

    python infer.py ckpt_path=CKPT input=MANIFEST_OR_FOLDER out_dir=DIR
    python infer.py ckpt_path=CKPT input=DIR_BIDS out_dir=DIR inference.roi_size=checkpoint inference.precision=fp32
    python infer.py ... num_parts=4 part_id=0        # one of four jobs over the same cohort
    python infer.py ... overwrite=true               # redo scans already done

Exit code: 0 every scan done, 1 some scan failed (see volumes.csv), 2 the run could not start.
Configuration: configs/infer.yaml; see README.md.
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig


@hydra.main(config_path="configs", config_name="infer", version_base="1.3")
def main(cfg: DictConfig) -> None:
    """Run inference as ``cfg`` says and exit with its code."""
    # imported here, so that --help and a bad command line answer without loading torch and MONAI
    from wmhseg.inference.runner import infer

    sys.exit(infer(cfg))


if __name__ == "__main__":
    main()
