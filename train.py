"""Train a WMH segmentation network.

    python train.py experiment=smoke hydra.run.dir=DIR      # DIR/checkpoints/last.ckpt (+ best)
    python train.py experiment=synthetic hydra.run.dir=DIR  # a few minutes on CPU
    python train.py experiment=bison data.manifest=train.csv trainer=ddp trainer.devices=4
    python train.py experiment=smoke ckpt_path=DIR/checkpoints/last.ckpt   # resume

Configuration: configs/train.yaml and its groups; see README.md.
"""

from __future__ import annotations

import os

from wmhseg.cli import TRAIN_ENV, guard, run  # torch-free

# OpenMP's settings are read once when torch loads, so they are set before anything imports it
for _key, _value in TRAIN_ENV.items():
    os.environ.setdefault(_key, _value)

from pathlib import Path  # noqa: E402

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

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
