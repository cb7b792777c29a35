"""Goal 5: the full analysis of a 439-subject cohort (all models, survival, figures, report).

The cohort is simulated with :func:`wmhseg.synth.cohort.simulate_cohort` (the study's 232 ALS
patients and 207 controls) and written as the two CSV tables. Two figures are reported:

* ``analyze()`` in a warm process (imports done): the analysis itself, with its stage split;
* ``python analyze.py ...`` in a fresh interpreter: what a user waits for, imports included;
* ``python analyze.py --help`` in a fresh interpreter.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from timing import Samples, loadavg

__all__ = ["run"]

TARGET_S = 3.0
HELP_TARGET_S = 1.0
# the modules a fresh analyze.py run imports (Hydra, the statistics, statsmodels' models, survival metrics, figures)
IMPORTS = ("import hydra, omegaconf, wmhseg.stats.analysis, statsmodels.regression.mixed_linear_model, "
           "statsmodels.duration.hazard_regression, sksurv.metrics, matplotlib.figure")
ROOT = Path(__file__).resolve().parents[1]


def available() -> tuple[bool, str]:
    """Whether the statistics and the cohort simulator can be imported."""
    try:
        import wmhseg.stats.analysis  # noqa: F401
        import wmhseg.synth.cohort  # noqa: F401
    except ImportError as exc:
        return False, f"not available: {exc}"
    return True, ""


def run(*, quick: bool = False) -> dict[str, Any]:
    """Time the whole analysis in-process (repeated) and once as a fresh ``analyze.py`` process."""
    ok, reason = available()
    if not ok:
        return {"name": "analysis", "available": False, "reason": reason, "rows": []}
    from wmhseg.stats.analysis import analyze
    from wmhseg.synth.cohort import CohortParams, simulate_cohort, write_cohort

    repeats = 1 if quick else 3
    with tempfile.TemporaryDirectory(prefix="wmhseg-bench-analysis-") as tmp:
        t0 = time.perf_counter()
        cohort = simulate_cohort(CohortParams())
        paths = write_cohort(cohort, Path(tmp) / "cohort")
        simulate_s = time.perf_counter() - t0
        n_subjects = int(cohort.volumes["subject_id"].nunique())
        n_scans = len(cohort.volumes)

        warm = Samples("analyze_in_process")
        stages: list[dict[str, float]] = []
        for i in range(repeats + 1):  # the first call also pays the imports of statsmodels/matplotlib
            t = time.perf_counter()
            out = analyze({"volumes": str(paths["volumes"]), "clinical": str(paths["clinical"]),
                           "out_dir": str(Path(tmp) / f"out{i}")})
            seconds = time.perf_counter() - t
            if i == 0:
                first_s = seconds
            else:
                warm.seconds.append(seconds)
                stages.append({k: round(float(v), 3) for k, v in out.get("seconds", {}).items()})

        cold: float | None = None
        imports_s: float | None = None
        help_s: float | None = None
        cold_error = ""
        script = ROOT / "analyze.py"
        if script.is_file():
            cmd = [sys.executable, str(script), f"volumes={paths['volumes']}", f"clinical={paths['clinical']}",
                   f"out_dir={Path(tmp) / 'out_cli'}", f"hydra.run.dir={Path(tmp) / 'hydra'}"]
            t = time.perf_counter()
            proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
            cold = time.perf_counter() - t
            if proc.returncode != 0:
                cold_error = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["failed"]
                cold_error = f"exit {proc.returncode}: {cold_error[0][:200]}"
                cold = None
            # what a fresh process pays before any work: interpreter start-up and the imports
            t = time.perf_counter()
            subprocess.run([sys.executable, "-c", IMPORTS], cwd=ROOT, capture_output=True, check=False)
            imports_s = time.perf_counter() - t
            t = time.perf_counter()
            subprocess.run([sys.executable, str(script), "--help"], cwd=ROOT, capture_output=True, check=False)
            help_s = time.perf_counter() - t

    med = warm.median
    rows = [{
        "goal": "5. analysis of 439 subjects (in process)",
        "baseline": "-",
        "candidate": f"analyze(): {med:.2f} s",
        "ratio": None,
        "target": f"< {TARGET_S:g} s",
        "met": med < TARGET_S,
    }, {
        "goal": "5. analysis of 439 subjects (python analyze.py)",
        "baseline": "-",
        "candidate": (f"fresh process: {cold:.2f} s, of which start-up and imports {imports_s:.2f} s"
                      if cold is not None and imports_s is not None else f"failed ({cold_error})"),
        "ratio": None,
        "target": f"< {TARGET_S:g} s",
        "met": (cold < TARGET_S) if cold is not None else False,
    }, {
        "goal": "5. python analyze.py --help",
        "baseline": "-",
        "candidate": f"fresh process: {help_s:.2f} s" if help_s is not None else "not measured",
        "ratio": None,
        "target": f"< {HELP_TARGET_S:g} s",
        "met": (help_s < HELP_TARGET_S) if help_s is not None else False,
    }]
    return {
        "name": "analysis",
        "available": True,
        "rows": rows,
        "details": {
            "n_subjects": n_subjects,
            "n_scans": n_scans,
            "simulate_and_write_s": round(simulate_s, 3),
            "analyze_first_call_s": round(first_s, 3),
            "analyze_in_process": warm.to_dict(),
            "stages_s": stages[-1] if stages else {},
            "cli_fresh_process_s": round(cold, 3) if cold is not None else None,
            "fresh_process_imports_s": round(imports_s, 3) if imports_s is not None else None,
            "help_fresh_process_s": round(help_s, 3) if help_s is not None else None,
            "cli_error": cold_error or None,
            "loadavg": loadavg(),
        },
    }
