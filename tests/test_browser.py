"""The QC gallery and the HTML report as a real browser shows them (headless Chromium).

Skipped where Debian's ``chromium`` is not installed (CI need not have it).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from inference_cases import write_case
from matplotlib.image import imread

from wmhseg.qc.gallery import write_gallery
from wmhseg.qc.image import qc_picture
from wmhseg.stats.figures import save_figure
from wmhseg.stats.forest import forest_figure
from wmhseg.stats.html import write_html_report

_SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "browser_check.py"
_spec = importlib.util.spec_from_file_location("browser_check", _SCRIPT)
browser_check = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(browser_check)

pytestmark = pytest.mark.skipif(not Path(browser_check.CHROMIUM).is_file(),
                                reason=f"headless Chromium ({browser_check.CHROMIUM}, Debian package chromium) "
                                       "is not installed")


def _share(img: np.ndarray, rgb: tuple[int, int, int], tol: float = 6 / 255) -> float:
    return float(np.all(np.abs(img[..., :3] - np.array(rgb) / 255) <= tol, axis=-1).mean())


def test_gallery_shows_pictures_and_row_colours_in_chromium(tmp_path):
    case = write_case(tmp_path / "data", "a")
    odd = "sub<1>&#"
    qc_picture(case["flair"], case["label"], case["t1"], tmp_path / "qc" / f"{odd}_01.png", lines=["x"])
    records = [{"subject_id": odd, "session_id": "01", "status": "ok", "wmh_mm3": 44.0, "n_lesions": 2,
                "qc_flags": "volume_outlier"},
               {"subject_id": "002", "session_id": "01", "status": "error", "error": "f.nii.gz: truncated",
                "qc_flags": "failed"}]
    page = write_gallery(tmp_path, records)
    img = imread(str(browser_check.screenshot(page, tmp_path / "shot.png", width=1000, height=700)))
    assert _share(img, (0, 0, 0)) > 0.03  # the thumbnail (black background) was loaded through its escaped link
    assert _share(img, (0xFD, 0xE2, 0xE2)) > 0.005  # the failed row's colour: the page's CSS applies
    assert _share(img, (0xFF, 0xF4, 0xE0)) > 0.005  # the flagged row's


def test_report_figures_are_embedded_and_shown_in_chromium(tmp_path):
    models = pd.DataFrame([{"model": "model1", "term": "wmh_progression_als_vs_control", "kind": "headline",
                            "estimate": 900.0, "ci_low": 400.0, "ci_high": 1400.0, "p_value": 0.001}])
    save_figure(forest_figure(models), tmp_path / "figures" / "forest_plot.png")
    page = write_html_report(tmp_path / "report.html",
                             "<!DOCTYPE html><html><body><h1>x</h1><img src='figures/forest_plot.png'></body></html>")
    (tmp_path / "figures" / "forest_plot.png").unlink()  # the page must not need the file any more
    img = imread(str(browser_check.screenshot(page, tmp_path / "shot.png", width=1200, height=700)))
    assert _share(img, (0xC4, 0x4E, 0x52), tol=10 / 255) > 1e-5  # the estimate's red square
    assert _share(img, (0x40, 0x40, 0x40), tol=12 / 255) > 1e-5  # its interval line (0.25 grey)


def test_gallery_sorts_by_a_clicked_column_in_chromium(tmp_path):
    records = [{"subject_id": sub, "session_id": "01", "status": "ok", "wmh_mm3": wmh, "n_lesions": 1,
                "qc_flags": ""} for sub, wmh in (("a", 500.0), ("b", 40.0), ("c", 3000.0))]
    page = write_gallery(tmp_path, records).read_text(encoding="utf-8")
    click = "<script>var h = document.querySelectorAll('th')[3]; h.click();{}</script></body>"
    orders = {}
    for name, clicks in (("ascending", ""), ("descending", " h.click();")):
        clicked = tmp_path / "qc" / f"{name}.html"
        clicked.write_text(page.replace("</body>", click.format(clicks)), encoding="utf-8")
        dom = browser_check.dump_dom(clicked)
        body = dom[dom.index("<tbody>"):]
        orders[name] = sorted("abc", key=lambda s, body=body: body.index(f"data-key=\"{s}\""))
    assert orders == {"ascending": ["b", "a", "c"], "descending": ["c", "a", "b"]}
