"""Compare headline estimates with known true values (simulation studies).

``python -m wmhseg.stats.compare HEADLINE_JSON TRUTH_JSON`` prints, for each headline, the
estimate, its confidence interval, the true value and whether the interval covers it; the exit
code is 0 either way (a 95% interval misses the truth one time in twenty).
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from wmhseg.stats.tables import TableError

__all__ = ["compare_with_truth", "format_comparison"]


def compare_with_truth(headline: Mapping[str, Mapping[str, Any]], truth: Mapping[str, float]) -> list[dict[str, Any]]:
    """One row per headline key present in both: estimate, CI, truth, ``covered``.

    Raises:
        TableError: no headline key is shared by the two mappings.
    """
    rows = []
    for key, true_value in truth.items():
        if key not in headline:
            continue
        h = headline[key]
        est, lo, hi = (h.get(k) for k in ("estimate", "ci_low", "ci_high"))
        finite = all(isinstance(v, (int, float)) and math.isfinite(v) for v in (est, lo, hi))
        rows.append({"headline": key, "truth": float(true_value), "estimate": est, "ci_low": lo, "ci_high": hi,
                     "p_value": h.get("p_value"),
                     "covered": bool(finite and lo <= float(true_value) <= hi) if finite else None})
    if not rows:
        raise TableError(f"no headline key in common between the estimates {sorted(headline)} and the truth {sorted(truth)}")
    return rows


def format_comparison(rows: list[dict[str, Any]]) -> str:
    """A fixed-width text table of :func:`compare_with_truth` rows."""

    def num(v: Any) -> str:
        return "n/a" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.4g}"

    lines = [f"{'headline':34s} {'truth':>9s} {'estimate':>10s} {'95% CI':>22s}  covered"]
    for r in rows:
        ci = f"[{num(r['ci_low'])}, {num(r['ci_high'])}]"
        covered = {True: "yes", False: "NO", None: "n/a"}[r["covered"]]
        lines.append(f"{r['headline']:34s} {num(r['truth']):>9s} {num(r['estimate']):>10s} {ci:>22s}  {covered}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m wmhseg.stats.compare", description=__doc__.splitlines()[0])
    parser.add_argument("headline", type=Path, help="headline.json written by analyze.py")
    parser.add_argument("truth", type=Path, help="truth.json written by the simulator")
    args = parser.parse_args(argv)
    rows = compare_with_truth(json.loads(args.headline.read_text()), json.loads(args.truth.read_text()))
    print(format_comparison(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
