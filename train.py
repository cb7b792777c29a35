"""Train a WMH segmentation network.

    python train.py experiment=smoke hydra.run.dir=DIR      # DIR/checkpoints/last.ckpt (+ best)
    python train.py experiment=synthetic hydra.run.dir=DIR  # a few minutes on CPU
    python train.py experiment=bison data.manifest=train.csv trainer=ddp trainer.devices=4
    python train.py experiment=smoke ckpt_path=DIR/checkpoints/last.ckpt   # resume

Configuration: configs/train.yaml and its groups; see README.md.
"""

from __future__ import annotations

import os

# Idle OpenMP threads sleep instead of spinning: spinning threads collapse PyTorch's CPU throughput
# (up to 50x for small 3-D convolutions) whenever the cores are shared with other processes,
# data-loader workers or DDP ranks. Read once when torch loads, so it must be set before the import.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from pathlib import Path  # noqa: E402

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from wmhseg.cli import guard, run  # noqa: E402

USAGE = "python train.py experiment=NAME [data.manifest=CSV] [hydra.run.dir=DIR] [setting=value ...]"


@hydra.main(config_path="configs", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    """Train as ``cfg`` says; return val/dice (for Hydra sweepers)."""
    from wmhseg.lean_imports import quick_imports

    with quick_imports():
        from wmhseg.training import train

    return guard("train.py", train, cfg)["metrics"].get("val/dice")


if __name__ == "__main__":
    from wmhseg.data.data_config import register_configs

    register_configs()
    run("train.py", main, config_dir=Path(__file__).resolve().parent / "configs", config_name="train", usage=USAGE)
