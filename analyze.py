"""Longitudinal mixed-effects and survival statistics of WMH volumes, with a report.

    python analyze.py volumes=CSV clinical=CSV out_dir=DIR [cutoff_months=24 random_slope=true ...]

Settings are in configs/analyze.yaml. A bad table or setting prints one line naming the file,
column and rows, and exits with status 2.
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from wmhseg.errors import InputError

_CONFIG_FLAGS = (
    "--config-name",
    "-cn",
    "--config-dir",
    "-cd",
    "--config-path",
    "-cp",
    "--experimental-rerun",
)
_INFO_FLAGS = (
    "--help",
    "-h",
    "--hydra-help",
    "--info",
    "-i",
    "--cfg",
    "-c",
    "--version",
    "--shell-completion",
    "-sc",
)


def _out_dir_given(argv: list[str]) -> bool:
    """Hydra's run folder is ``out_dir``: without it Hydra fails before the analysis can say why."""
    if any(a.split("=")[0] in _CONFIG_FLAGS + _INFO_FLAGS for a in argv):
        return True
    return any(a.lstrip("+").startswith("out_dir=") for a in argv)


@hydra.main(config_path="configs", config_name="analyze", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from wmhseg.stats.analysis import analyze

    try:
        summary = analyze(cfg)
    except InputError as err:
        print(f"analyze.py: error: {err}", file=sys.stderr)
        sys.exit(2)
    print(summary["left_out"])
    print(f"report: {summary['outputs']['report']}")


if __name__ == "__main__":
    if not _out_dir_given(sys.argv[1:]):
        print("analyze.py: error: missing required setting out_dir (give out_dir=DIR)", file=sys.stderr)
        sys.exit(2)
    main()
