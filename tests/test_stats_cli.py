"""analyze.py and analyze(cfg): config, outputs, user errors, and no torch anywhere near."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from test_stats_models import MODELS_CSV_HEAD

from wmhseg.stats import AnalysisSettings, SettingsError, TableError, analyze
from wmhseg.stats.analyze_config import register_configs
from wmhseg.stats.headline_models import HEADLINE_KEYS
from wmhseg.synth.cohort import CohortParams, simulate_cohort, write_cohort

ROOT = Path(__file__).resolve().parents[1]
FIELDS = {"estimate", "std_err", "df", "ci_low", "ci_high", "p_value", "n_subjects", "n_obs", "method"}


@pytest.fixture(scope="module")
def tables(tmp_path_factory):
    cohort = simulate_cohort(CohortParams(n_als=60, n_control=50, p_survival_data=0.8, seed=21))
    vol = cohort.volumes.copy()
    vol.loc[3, ["wmh_mm3", "n_lesions", "status", "error"]] = [None, None, "error", "FLAIR unreadable"]
    folder = tmp_path_factory.mktemp("cohort")
    paths = write_cohort(cohort, folder)
    vol.to_csv(paths["volumes"], index=False)
    paths["failed"] = (vol.loc[3, "subject_id"], vol.loc[3, "session_id"])
    return paths


def compose_cfg(overrides: list[str]):
    register_configs()
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        return compose(config_name="analyze", overrides=overrides)


@pytest.mark.slow
def test_analyze_writes_every_output(tables, tmp_path):
    out = tmp_path / "out"
    cfg = compose_cfg([f"volumes={tables['volumes']}", f"clinical={tables['clinical']}", f"out_dir={out}"])
    summary = analyze(cfg)
    headline = json.loads((out / "headline.json").read_text())
    assert list(headline) == list(HEADLINE_KEYS) and summary["headline"] == headline
    assert all(set(v) == FIELDS for v in headline.values())
    models = pd.read_csv(out / "models.csv")
    assert list(models.columns[:len(MODELS_CSV_HEAD)]) == MODELS_CSV_HEAD
    figures = sorted(p.name for p in (out / "figures").iterdir())
    assert figures == [
        "alsfrs_vs_wmh.png",
        "forest_plot.png",
        "kaplan_meier.png",
        "wmh_trajectories_als_vs_control.png",
        "wmh_trajectories_by_survival_group.png",
    ]
    assert all((out / "figures" / f).read_bytes()[:4] == b"\x89PNG" for f in figures)
    report = (out / "report.md").read_text()
    assert "mm³/year faster in ALS patients than in controls" in report
    assert "points lower per 500 mm³" in report
    assert "![kaplan_meier](figures/kaplan_meier.png)" in report
    assert "1 have a status other than ok" in report
    left = pd.read_csv(out / "left_out.csv", dtype=str)
    subject, session = tables["failed"]
    failed = left[(left["subject_id"] == subject) & (left["session_id"] == session)]
    assert set(failed["table"]) == {"volumes", "clinical"}
    assert (failed["left_out_of"] == "all analyses").all()
    assert not list(out.glob(".*.tmp")) and not [
        p for p in out.rglob("*") if p.name.startswith(".") and p.is_file()
    ]


@pytest.mark.slow
def test_settings_from_config(tables, tmp_path):
    cfg = compose_cfg(
        [
            f"volumes={tables['volumes']}",
            f"clinical={tables['clinical']}",
            f"out_dir={tmp_path}",
            "cutoff_months=18",
            "covariates=[age]",
            "report_format=html",
            "figure_format=svg",
            "alpha=0.1",
        ]
    )
    analyze(cfg)
    html = (tmp_path / "report.html").read_text()
    assert html.startswith("<!DOCTYPE html>") and "90% CI" in html and "Survival groups at 18 months" in html
    assert (tmp_path / "figures" / "kaplan_meier.svg").exists()
    models = pd.read_csv(tmp_path / "models.csv")
    assert not models["term"].astype(str).str.contains("sex").any()
    assert (
        json.loads((tmp_path / "headline.json").read_text())["alsfrs_per_500mm3_wmh"]["estimate"] is not None
    )


@pytest.mark.parametrize(
    ("override", "pattern"),
    [
        ({"figure_format": "jpeg"}, r"figure_format='jpeg': must be one of png, svg, pdf"),
        ({"report_format": "htm"}, r"did you mean 'html'"),
        ({"cutoff_months": 0}, r"cutoff_months=0"),
        ({"alpha": 1.5}, r"alpha=1.5"),
        ({"covariates": ["age", "age"]}, r"listed twice"),
        ({"covariates": ["group"]}, r"'group' cannot be a covariate"),
        ({"random_slope": "yes"}, r"random_slope='yes': must be true or false"),
    ],
)
def test_bad_settings(override, pattern):
    with pytest.raises(SettingsError, match=pattern):
        AnalysisSettings(**override)


def test_missing_paths_are_settings_errors(tmp_path):
    cfg = compose_cfg([f"out_dir={tmp_path}"])
    with pytest.raises(SettingsError, match=r"missing required settings volumes, clinical"):
        analyze(cfg)
    with pytest.raises(TableError, match="file not found"):
        analyze({"volumes": tmp_path / "v.csv", "clinical": tmp_path / "c.csv", "out_dir": tmp_path})


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "analyze.py"), *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )


@pytest.mark.slow
def test_cli_end_to_end(tables, tmp_path):
    out = tmp_path / "run"
    proc = run_cli(f"volumes={tables['volumes']}", f"clinical={tables['clinical']}", f"out_dir={out}")
    assert proc.returncode == 0, proc.stderr
    assert f"report: {out / 'report.md'}" in proc.stdout
    # one console line counts the rows left out after the joins (the failed scan) and says where they are
    line = next(x for x in proc.stdout.splitlines() if x.startswith("left out:"))
    left = pd.read_csv(out / "left_out.csv")
    assert f"{(left['table'] == 'volumes').sum()} volumes rows" in line and str(out / "left_out.csv") in line
    assert (out / "headline.json").exists() and (out / ".hydra" / "config.yaml").exists()
    assert not (ROOT / "outputs").exists() or not any((ROOT / "outputs").rglob("analyze.log"))


@pytest.mark.slow
def test_cli_bad_table_exits_2_with_one_line(tables, tmp_path):
    bad = tmp_path / "clinical.csv"
    frame = pd.read_csv(tables["clinical"], dtype=str, keep_default_na=False)
    frame.loc[5, "sex"] = "X"
    frame.to_csv(bad, index=False)
    proc = run_cli(f"volumes={tables['volumes']}", f"clinical={bad}", f"out_dir={tmp_path / 'o'}")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    assert (
        lines[0].startswith("analyze.py: error: clinical table")
        and "column sex" in lines[0]
        and "line 7" in lines[0]
    )


@pytest.mark.slow
def test_stats_and_cohort_never_import_torch():
    code = (
        "import sys, wmhseg.cli, wmhseg.stats, wmhseg.stats.figures, wmhseg.stats.report, wmhseg.synth.cohort\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in {'torch', 'monai', 'lightning', 'torchio'})\n"
        "print(heavy); sys.exit(1 if heavy else 0)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_cli_without_out_dir_exits_2(tables):
    proc = run_cli(f"volumes={tables['volumes']}", f"clinical={tables['clinical']}")
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("analyze.py: error: missing required setting out_dir; usage: python analyze.py "
                                   "volumes=CSV clinical=CSV out_dir=DIR [setting=value ...]")


def test_config_schema_is_the_settings_dataclass():
    """configs/analyze.yaml extends AnalyzeConfig: its values are the dataclass defaults, and the composed
    config builds the same settings as the dataclass (the hand-written validation it replaced)."""
    from omegaconf import OmegaConf

    from wmhseg.stats.analyze_config import AnalyzeConfig

    cfg = compose_cfg(["volumes=v.csv", "clinical=c.csv", "out_dir=o"])
    assert OmegaConf.get_type(cfg) is AnalyzeConfig
    built = OmegaConf.to_object(cfg)
    assert isinstance(built, AnalyzeConfig) and built.as_dict() == AnalysisSettings().as_dict()
    assert built.covariates == ("age", "sex") and built.volumes == "v.csv"


@pytest.mark.parametrize(
    ("override", "pattern"),
    [("cutoff_month=3", r"Could not override 'cutoff_month'"), ("cutoff_months=abc", r"cutoff_months=abc"),
     ("bootstrap_samples=1.5", r"bootstrap_samples=1.5"), ("random_slope=maybe", r"random_slope=maybe")],
)
def test_unknown_key_or_wrong_type_is_named_by_the_schema(override, pattern):
    from hydra.errors import HydraException

    with pytest.raises(HydraException, match=pattern):
        compose_cfg([override])


def test_unknown_setting_in_a_mapping_suggests_the_closest(tmp_path):
    with pytest.raises(SettingsError, match=r"unknown analysis setting 'cutoff_month'; did you mean 'cutoff_months'\?"):
        analyze({"volumes": "v.csv", "clinical": "c.csv", "out_dir": tmp_path, "cutoff_month": 3})
