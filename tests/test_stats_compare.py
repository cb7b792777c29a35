"""Headline-versus-truth comparison used by simulation studies and the demo."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from wmhseg.stats.compare import compare_with_truth, format_comparison
from wmhseg.stats.tables import TableError

HEADLINE = {
    "wmh_progression_als_vs_control": {"estimate": 950.0, "ci_low": 870.0, "ci_high": 1030.0, "p_value": 1e-9},
    "alsfrs_per_500mm3_wmh": {"estimate": -0.7, "ci_low": -0.9, "ci_high": -0.5, "p_value": 1e-4},
    "wmh_progression_short_vs_long": {"estimate": None, "ci_low": None, "ci_high": None, "p_value": None},
}
TRUTH = {"wmh_progression_als_vs_control": 911.5, "alsfrs_per_500mm3_wmh": -1.0,
         "wmh_progression_short_vs_long": 1006.0, "not_estimated": 1.0}


def test_coverage_is_decided_by_the_interval():
    rows = {r["headline"]: r for r in compare_with_truth(HEADLINE, TRUTH)}
    assert set(rows) == set(HEADLINE)
    assert rows["wmh_progression_als_vs_control"]["covered"] is True
    assert rows["alsfrs_per_500mm3_wmh"]["covered"] is False
    assert rows["wmh_progression_short_vs_long"]["covered"] is None
    text = format_comparison(list(rows.values()))
    assert "NO" in text and "yes" in text and "n/a" in text


def test_nothing_in_common_is_an_error():
    with pytest.raises(TableError, match="no headline key in common"):
        compare_with_truth(HEADLINE, {"other": 1.0})


def test_command_line(tmp_path):
    (tmp_path / "h.json").write_text(json.dumps(HEADLINE))
    (tmp_path / "t.json").write_text(json.dumps(TRUTH))
    out = subprocess.run([sys.executable, "-m", "wmhseg.stats.compare", str(tmp_path / "h.json"), str(tmp_path / "t.json")],
                         capture_output=True, text=True, check=True).stdout
    assert "wmh_progression_als_vs_control" in out and "911.5" in out
