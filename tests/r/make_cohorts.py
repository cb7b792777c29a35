"""Write the two cohorts the R reference fits use (tests/data/r/<name>_{volumes,clinical}.csv).

    .venv/bin/python tests/r/make_cohorts.py

Values are rounded so that the CSV files are exact inputs for both R and Python.
"""

from __future__ import annotations

from pathlib import Path

from wmhseg.synth.cohort import CohortParams, simulate_cohort

OUT = Path(__file__).resolve().parents[1] / "data" / "r"
COHORTS = {
    "cohort360": CohortParams(n_als=190, n_control=170, p_survival_data=0.8, seed=11),
    "cohort30": CohortParams(n_als=18, n_control=12, p_survival_data=1.0, seed=12),
}
DIGITS = {"wmh_mm3": 1, "age": 1, "years_since_baseline": 3, "survival_months": 2}


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for name, params in COHORTS.items():
        cohort = simulate_cohort(params)
        vol = cohort.volumes[["subject_id", "session_id", "wmh_mm3", "status"]].copy()
        clin = cohort.clinical.copy()
        for frame in (vol, clin):
            for col, digits in DIGITS.items():
                if col in frame:
                    frame[col] = frame[col].round(digits)
        vol.to_csv(OUT / f"{name}_volumes.csv", index=False)
        clin.to_csv(OUT / f"{name}_clinical.csv", index=False)


if __name__ == "__main__":
    main()
