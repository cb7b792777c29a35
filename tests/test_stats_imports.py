"""Importing the analysis stays light: the heavy libraries load only where a run uses them.

A fresh ``python analyze.py`` pays for every module imported at start-up, so the figures'
matplotlib, scikit-survival and statsmodels' models must not be pulled in by importing
:mod:`wmhseg.stats.analysis` itself. Checked in a fresh interpreter through ``sys.modules``.
"""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("matplotlib", "sksurv", "sklearn", "statsmodels", "torch")


def test_importing_the_analysis_loads_no_heavy_library():
    code = (
        "import json, sys; import wmhseg.stats.analysis; "
        f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r})))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = json.loads(proc.stdout.strip().splitlines()[-1])
    assert loaded == [], f"importing wmhseg.stats.analysis loaded {loaded[:10]}"


def test_a_whole_analysis_loads_neither_scipy_stats_nor_statsmodels_models(tmp_path):
    """The models, survival statistics and figures run on NumPy, scipy.special/optimize and statsmodels'
    formula engine: scipy.stats, scikit-learn and statsmodels' model classes (about 1.3 s of imports
    together in a fresh process) stay out of a run."""
    code = (
        "import json, sys; from wmhseg.synth.cohort import CohortParams, simulate_cohort, write_cohort; "
        "from wmhseg.stats.analysis import analyze; "
        f"p = write_cohort(simulate_cohort(CohortParams(n_als=40, n_control=30)), {str(tmp_path)!r}); "
        f"analyze({{'volumes': str(p['volumes']), 'clinical': str(p['clinical']), 'out_dir': {str(tmp_path / 'out')!r}, "
        "'bootstrap_samples': 20}); "
        "print(json.dumps(sorted(m for m in sys.modules if m == 'scipy.stats' or m.split('.')[0] in ('sklearn', 'sksurv') "
        "or m.startswith(('statsmodels.regression', 'statsmodels.duration', 'statsmodels.base')))))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = json.loads(proc.stdout.strip().splitlines()[-1])
    assert loaded == [], f"an analysis loaded {loaded[:10]}"
    assert (tmp_path / "out" / "report.html").is_file()
