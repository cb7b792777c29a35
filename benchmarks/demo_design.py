"""Size the demo study: how often each candidate design lets the headlines show the study's findings.

The demo segments a simulated study and analyses the measured volumes. Whether its report can show
the findings (faster WMH growth in ALS than in controls, and in short than in long survivors; a Cox
model that converges) depends on the design: subjects, visits, share of patients with survival data.
For each candidate design this script simulates ``--seeds`` cohorts (``wmhseg.synth.cohort``), adds
the segmentation's measurement error (a normal error per scan with the SD measured on the demo's
study, ``--error-sd``), runs the whole analysis, and reports

- the number of scans (what painting and segmenting cost),
- short / long survivors and patients with survival data,
- the share of cohorts in which headline 1 (ALS vs control) and headline 2 (short vs long) have
  95% intervals excluding 0, and the mean SE of each,
- the share in which the baseline Cox model converges.

    python benchmarks/demo_design.py --seeds 40      # about a minute per design on 2 cores
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from wmhseg.stats.analysis import run_analysis
from wmhseg.stats.analyze_config import AnalysisSettings
from wmhseg.synth.cohort import CohortParams, simulate_cohort

# (name, CohortParams overrides): the demo as it was, then larger cohorts with fewer visits
DESIGNS = {
    "16+16, 1-4 visits, 50% survival data (before)": dict(n_als=16, n_control=16),
    "40+24, 2-3 visits, 90% survival data": dict(n_als=40, n_control=24, visit_probabilities=(0.0, 0.5, 0.5),
                                                  p_survival_data=0.9),
    "48+32, 2 visits, 90% survival data": dict(n_als=48, n_control=32, visit_probabilities=(0.0, 1.0),
                                                p_survival_data=0.9),
    "32+24, 3 visits, 90% survival data": dict(n_als=32, n_control=24, visit_probabilities=(0.0, 0.0, 1.0),
                                                p_survival_data=0.9),
    "28+16, 3-4 visits, 90% survival data (the demo)": dict(n_als=28, n_control=16,
                                                             visit_probabilities=(0.0, 0.0, 0.5, 0.5),
                                                             p_survival_data=0.9),
}


def _one(params: CohortParams, error_sd: float) -> dict[str, float]:
    cohort = simulate_cohort(params)
    rng = np.random.default_rng([params.seed, 99])
    volumes = cohort.volumes.copy()
    volumes["wmh_mm3"] = np.clip(volumes["wmh_mm3"] + rng.normal(0.0, error_sd, len(volumes)), 0, None)
    result = run_analysis(volumes, cohort.clinical, AnalysisSettings(figures=False, bootstrap_samples=0))
    h = result.headline
    counts = result.survival.counts
    out = {"scans": len(volumes), "cox_converged": float(result.survival.cox["cox_baseline"].converged)}
    for key, short in (("wmh_progression_als_vs_control", "h1"), ("wmh_progression_short_vs_long", "h2")):
        e = h[key]
        out[f"{short}_excludes_0"] = float(np.isfinite(e.ci_low) and (e.ci_low > 0 or e.ci_high < 0))
        out[f"{short}_se"] = e.std_err
    out.update({k: float(v) for k, v in counts.items() if isinstance(v, (int, float))})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=40)
    ap.add_argument("--error-sd", type=float, default=465.0,
                    help="per-scan measurement error SD (mm3); 465 = the earlier in-family network, 933 = the "
                         "demo's current network on the demo study (independent mode)")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "demo_design.json")
    args = ap.parse_args()
    table = {}
    for name, overrides in DESIGNS.items():
        t0 = time.perf_counter()
        rows = [_one(CohortParams(seed=s, **overrides), args.error_sd) for s in range(args.seeds)]
        frame = pd.DataFrame(rows)
        table[name] = {k: round(float(v), 3) for k, v in frame.mean(numeric_only=True).items()}
        table[name]["seconds"] = round(time.perf_counter() - t0, 1)
        print(name, json.dumps(table[name]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"seeds": args.seeds, "error_sd": args.error_sd, "designs": table}, indent=2) + "\n")


if __name__ == "__main__":
    main()
