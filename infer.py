"""Segment new scans and write per-scan WMH volume tables.

    python infer.py ckpt_path=CKPT input=MANIFEST_OR_FOLDER out_dir=DIR
    python infer.py ckpt_path=CKPT input=DIR_BIDS out_dir=DIR inference.roi_size=checkpoint inference.precision=fp32
    python infer.py ... num_parts=4 part_id=0        # one of four jobs over the same cohort
    python infer.py ... overwrite=true               # redo scans already done
    python infer.py --help                           # the settings

Exit code: 0 every scan done, 1 some scan failed (see volumes.csv), 2 the run could not start
(one line on stderr says why), 130 interrupted (one line says what was finished and how to resume).
Configuration: configs/infer.yaml; see README.md.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from wmhseg.cli import guard, run
from wmhseg.inference.infer_config import USAGE, register_configs

register_configs()


@hydra.main(config_path="configs", config_name="infer", version_base="1.3")
def main(cfg: DictConfig) -> None:
    """Run inference as ``cfg`` says and exit with its code."""
    from wmhseg.lean_imports import import_monai, quick_imports

    with quick_imports():
        import_monai()  # before the runner's imports: MONAI without the optional packages inference never uses
        from wmhseg.inference.runner import infer

    sys.exit(guard("infer.py", infer, cfg))


if __name__ == "__main__":
    run("infer.py", main, config_dir=Path(__file__).resolve().parent / "configs", config_name="infer", usage=USAGE)
