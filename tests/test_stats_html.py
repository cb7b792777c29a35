"""The HTML report and the forest plot: key terms picked from models.csv, figures embedded in one
self-contained file, report.html written beside report.md with each figure also as PNG."""

from __future__ import annotations

import base64
import math
import re

import numpy as np
import pandas as pd
import pytest

from wmhseg.stats.analysis import analyze
from wmhseg.stats.forest import forest_figure, key_terms
from wmhseg.stats.html import embed_figures
from wmhseg.synth.cohort import CohortParams, simulate_cohort, write_cohort


def _models() -> pd.DataFrame:
    rows = [
        {"model": "model1_wmh", "term": "years_since_baseline:group[T.ALS]", "kind": "fixed", "estimate": 900.0},
        {"model": "model1_wmh", "term": "wmh_progression_als_vs_control", "kind": "headline", "estimate": 900.0,
         "ci_low": 400.0, "ci_high": 1400.0, "p_value": 0.001},
        {"model": "model3_alsfrs", "term": "alsfrs_per_500mm3_wmh", "kind": "headline", "estimate": -1.0,
         "ci_low": -1.5, "ci_high": -0.5, "p_value": 1e-6},
        {"model": "model3_alsfrs_log_wmh", "term": "alsfrs_per_500mm3_wmh", "kind": "sensitivity", "estimate": -5.0,
         "ci_low": -7.0, "ci_high": -3.0, "p_value": 1e-4, "note": "log WMH (per unit of log(WMH + 1)): same"},
        {"model": "cox_baseline", "term": "wmh_per_1000mm3", "kind": "cox", "estimate": math.log(1.2),
         "hazard_ratio": 1.2, "hr_ci_low": 1.05, "hr_ci_high": 1.37, "p_value": 0.01},
        {"model": "cox_baseline", "term": "age", "kind": "cox", "estimate": 0.02, "hazard_ratio": 1.02,
         "hr_ci_low": 1.0, "hr_ci_high": 1.04, "p_value": 0.05},
        {"model": "cox_time_varying", "term": "wmh_per_1000mm3", "kind": "cox", "estimate": 80.0,
         "hazard_ratio": math.exp(80.0), "hr_ci_low": -math.inf, "hr_ci_high": math.inf, "p_value": math.nan},
    ]
    return pd.DataFrame(rows)


def test_key_terms_are_the_headlines_and_the_cox_wmh_terms():
    terms = key_terms(_models())
    assert list(terms["panel"]) == ["WMH progression (mm³/year)", "ALSFRS-R points per 500 mm³ WMH",
                                    "Sensitivity: log WMH (per unit of log(WMH + 1))",
                                    "Hazard ratio (log scale)", "Hazard ratio (log scale)"]
    assert list(terms["null"]) == [0.0, 0.0, 0.0, 1.0, 1.0]
    assert terms.loc[3, ["estimate", "ci_low", "ci_high"]].tolist() == [1.2, 1.05, 1.37]  # hazard ratio, not log
    assert "age" not in " ".join(terms["label"])
    fig = forest_figure(_models())  # a non-finite interval is drawn, not raised
    assert len(fig.axes) == 4
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert "900 [400, 1,400], p = 0.001" in texts
    assert any("interval not finite" in t for t in texts)


def test_embed_figures_inlines_relative_png_and_svg_only(tmp_path):
    png = bytes(range(256)) * 3
    (tmp_path / "figures").mkdir()
    (tmp_path / "figures" / "a.png").write_bytes(png)
    (tmp_path / "figures" / "b.svg").write_text("<svg xmlns='http://www.w3.org/2000/svg'/>")
    text = ("<img src='figures/a.png' alt='a'><img src=\"figures/b.svg\"><img src='figures/c.pdf'>"
            "<img src='https://example.org/x.png'><img src='figures/missing.png'>")
    out = embed_figures(text, tmp_path)
    uris = re.findall(r"src='data:([^;]+);base64,([^']+)'", out)
    assert [u[0] for u in uris] == ["image/png", "image/svg+xml"]
    assert base64.b64decode(uris[0][1]) == png
    for kept in ("figures/c.pdf", "https://example.org/x.png", "figures/missing.png"):
        assert f"src='{kept}'" in out


@pytest.mark.slow
def test_analyze_writes_a_self_contained_html_report_beside_the_markdown(tmp_path):
    cohort = simulate_cohort(CohortParams(n_als=40, n_control=30, p_survival_data=0.9, seed=5))
    paths = write_cohort(cohort, tmp_path / "in")
    summary = analyze({"volumes": str(paths["volumes"]), "clinical": str(paths["clinical"]),
                       "out_dir": str(tmp_path / "out"), "figure_format": "svg"})
    out = tmp_path / "out"
    assert summary["outputs"]["report"] == str(out / "report.md")
    md = (out / "report.md").read_text(encoding="utf-8")
    page = (out / "report.html").read_text(encoding="utf-8")
    names = ["wmh_trajectories_als_vs_control", "wmh_trajectories_by_survival_group", "alsfrs_vs_wmh",
             "kaplan_meier", "forest_plot"]
    for name in names:
        assert f"figures/{name}.svg" in md
        assert (out / "figures" / f"{name}.png").stat().st_size > 1000  # each figure as PNG too
    assert "<img src='figures/" not in page
    assert page.count("src='data:image/png;base64,") == len(names)
    assert "Figure 2A" in page and "Figures 3A and 3B" in page
    assert "<h2 id='figures'>Figures</h2>" in page and "<a href='#figures'>Figures</a>" in page
    assert page.index("id='headline-results'") < page.index("id='figures'") < page.index("id='data'")
    # the embedded picture is the PNG on disk
    first = re.search(r"src='data:image/png;base64,([^']+)'", page).group(1)
    assert base64.b64decode(first) == (out / "figures" / f"{names[0]}.png").read_bytes()
    assert np.isfinite(summary["headline"]["wmh_progression_als_vs_control"]["estimate"])
