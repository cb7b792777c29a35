"""Calibration of the WMH-progression inference over many simulated cohorts (not part of the tests).

    python benchmarks/calibration.py --seeds 200 [--n-als 60 --n-control 50] [--out FILE]

Cohorts come from :func:`wmhseg.synth.disease.simulate_disease`, which does not share the models'
assumptions (per-participant random slopes, deaths between visits, dropout, censoring). For each
scenario and seed, models 1 and 2 are fitted with a random intercept (the study's model, the
default headline) and with a random intercept and slope, with Satterthwaite t intervals:

* ``null_*``: no ALS-vs-control and no short-vs-long difference; the false-positive rate is the
  share of cohorts with p < 0.05 (nominal 5%);
* ``effect_*``: the study's effects; the coverage is the share of 95% intervals holding the truth;
* ``*_heterogeneous``: participants' WMH slopes vary (SD 300 mm3/year); ``*_homogeneous``: they do not;
* ``effect_no_prognosis_link``: slopes vary but not with prognosis. Where they do (the other
  ``effect_*``), fast progressors die early with fewer scans and model 1, which does not condition
  on survival group, is pulled toward the long survivors' slope: informative dropout.

Each rate has its exact binomial (Clopper-Pearson) 95% interval for the number of seeds.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from scipy import stats

from wmhseg.stats.headline_models import fit_spec, headline_specs
from wmhseg.stats.study_data import build_dataset
from wmhseg.stats.tables import check_clinical, check_volumes
from wmhseg.synth.disease import DiseaseParams, simulate_disease

KEYS = ("wmh_progression_als_vs_control", "wmh_progression_short_vs_long")
STRUCTURES = {"random_intercept": None, "random_slope": "~years_since_baseline"}
SCENARIOS = {
    "null_heterogeneous": {"als_extra_slope": 0.0, "short_extra_slope": 0.0, "slope_sd": 300.0},
    "null_homogeneous": {"als_extra_slope": 0.0, "short_extra_slope": 0.0, "slope_sd": 0.0},
    "effect_heterogeneous": {"slope_sd": 300.0},
    "effect_homogeneous": {"slope_sd": 0.0},
    # progression independent of prognosis: death-driven dropout is then ignorable for model 1
    "effect_no_prognosis_link": {"slope_sd": 300.0, "short_extra_slope": 0.0},
}


def one_cohort(params: DiseaseParams) -> dict[str, dict[str, tuple[bool, bool]]]:
    """Per structure and headline: (p < 0.05, interval covers the truth)."""
    cohort = simulate_disease(params)
    study = build_dataset(check_volumes(cohort.volumes), check_clinical(cohort.clinical))
    out: dict[str, dict[str, tuple[bool, bool]]] = {}
    for structure, re_formula in STRUCTURES.items():
        out[structure] = {}
        for spec in headline_specs(study)[:2]:
            _, e = fit_spec(spec, study, re_formula=re_formula)
            truth = cohort.truth[spec.key]
            out[structure][spec.key] = (bool(e.p_value < 0.05), bool(e.ci_low <= truth <= e.ci_high))
    return out


def clopper_pearson(k: int, n: int) -> tuple[float, float]:
    low = stats.beta.ppf(0.025, k, n - k + 1) if k > 0 else 0.0
    high = stats.beta.ppf(0.975, k + 1, n - k) if k < n else 1.0
    return float(low), float(high)


def run(seeds: int, n_als: int, n_control: int, scenarios: list[str]) -> dict:
    results: dict = {}
    for name in scenarios:
        changes = SCENARIOS[name]
        tallies = {s: {k: [0, 0] for k in KEYS} for s in STRUCTURES}
        start = time.perf_counter()
        for seed in range(seeds):
            params = DiseaseParams(n_als=n_als, n_control=n_control, seed=10_000 + seed, **changes)
            for structure, per_key in one_cohort(params).items():
                for key, (positive, covered) in per_key.items():
                    tallies[structure][key][0] += positive
                    tallies[structure][key][1] += covered
        rate = "false_positive_rate" if name.startswith("null") else "coverage"
        results[name] = {
            structure: {
                key: {
                    rate: (k := (pos if rate == "false_positive_rate" else cov)) / seeds,
                    "ci95": clopper_pearson(k, seeds),
                }
                for key, (pos, cov) in per_key.items()
            }
            for structure, per_key in tallies.items()
        }
        results[name]["seconds"] = time.perf_counter() - start
        print(name, json.dumps(results[name]), flush=True)
    return {"seeds": seeds, "n_als": n_als, "n_control": n_control, "scenarios": results}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=200)
    parser.add_argument("--n-als", type=int, default=60)
    parser.add_argument("--n-control", type=int, default=50)
    parser.add_argument("--scenarios", nargs="+", choices=list(SCENARIOS), default=list(SCENARIOS))
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "calibration.json")
    args = parser.parse_args()
    np.seterr(all="ignore")
    result = run(args.seeds, args.n_als, args.n_control, args.scenarios)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
