"""Longitudinal mixed-effects and survival statistics of WMH volumes, with a report.

    python analyze.py volumes=CSV clinical=CSV out_dir=DIR [cutoff_months=24 random_slope=true ...]
    python analyze.py --help                         # the settings

Settings are in configs/analyze.yaml. A bad table or setting prints one line naming the file,
column and rows, and exits with status 2; Ctrl-C exits 130.
"""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig

from wmhseg.cli import guard, run
from wmhseg.stats.analyze_config import register_configs

register_configs()
USAGE = "python analyze.py volumes=CSV clinical=CSV out_dir=DIR [setting=value ...]"


@hydra.main(config_path="configs", config_name="analyze", version_base="1.3")
def main(cfg: DictConfig) -> None:
    """Run the analysis as ``cfg`` says and print where the report is."""
    from wmhseg.lean_imports import quick_imports

    with quick_imports():
        from wmhseg.stats.analysis import analyze

    summary = guard("analyze.py", analyze, cfg)
    print(summary["left_out"])
    print(f"report: {summary['outputs']['report']}")


if __name__ == "__main__":
    run("analyze.py", main, config_dir=Path(__file__).resolve().parent / "configs", config_name="analyze",
        usage=USAGE)
