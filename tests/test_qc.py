"""QC: the per-scan picture (orientation, the mask it shows, a missing T1), the flags against
hand-worked cases, the gallery with odd IDs and failed rows, and the hooks in infer()."""

from __future__ import annotations

import html.parser
import math

import numpy as np
import pandas as pd
import pytest
from inference_cases import (
    infer_cfg,
    make_checkpoint,
    phantom,
    reorient,
    write_case,
    write_manifest,
    write_nifti,
)
from matplotlib.image import imread

from wmhseg.errors import InputError
from wmhseg.inference.runner import infer
from wmhseg.qc import picture_lines
from wmhseg.qc.flags import QCThresholds, cohort_flags, fov_cut_share, wmh_outside_wm_share
from wmhseg.qc.gallery import write_gallery
from wmhseg.qc.image import qc_picture

IDS = {"subject_id": str, "session_id": str}


def _one_sided_scan(tmp_path, codes: str):
    """A box head with one lesion on the patient's right (RAS x high), stored in ``codes`` order."""
    shape = (40, 44, 36)
    flair = np.zeros(shape, np.float32)
    flair[4:-4, 4:-4, 4:-4] = 100.0
    mask = np.zeros(shape, np.uint8)
    mask[28:33, 18:26, 14:22] = 1  # right of the centre (x = 20)
    flair[mask > 0] = 300.0
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    f, aff = reorient(flair, affine, codes)
    m, _ = reorient(mask, affine, codes)
    return write_nifti(tmp_path / "flair.nii.gz", f, aff), write_nifti(tmp_path / "mask.nii.gz", m, aff)


def _red_and_head_columns(png):
    img = imread(str(png))[..., :3]
    top = img[60:]  # below the text header
    red = (top[..., 0] > 0.9) & (top[..., 1] < 0.3)
    gray = (np.abs(top[..., 0] - top[..., 1]) < 0.02) & (top[..., 0] > 0.2)
    cols_red = np.flatnonzero(red.any(axis=0))
    cols_head = np.flatnonzero(gray.any(axis=0))
    return cols_red, cols_head


@pytest.mark.parametrize("codes", ["RAS", "LPS"])
@pytest.mark.parametrize("convention", ["radiological", "neurological"])
def test_picture_puts_the_patients_right_where_the_convention_says(tmp_path, codes, convention):
    flair, mask = _one_sided_scan(tmp_path, codes)
    png = qc_picture(flair, mask, None, tmp_path / "qc.png", lines=["x"], convention=convention, n_slices=1)
    red, head = _red_and_head_columns(png)
    assert red.size > 0, "the WMH outline is not drawn"
    centre = (head.min() + head.max()) / 2
    if convention == "radiological":  # patient's right on the viewer's left
        assert red.mean() < centre
    else:
        assert red.mean() > centre


def test_picture_without_t1_is_one_row_shorter_and_a_bad_mask_is_refused(tmp_path):
    case = write_case(tmp_path, "a")
    with_t1 = qc_picture(case["flair"], case["label"], case["t1"], tmp_path / "t1.png")
    without = qc_picture(case["flair"], case["label"], None, tmp_path / "no_t1.png")
    unreadable = qc_picture(case["flair"], case["label"], tmp_path / "missing_T1w.nii.gz", tmp_path / "bad_t1.png")
    h_with, h_without = imread(str(with_t1)).shape[0], imread(str(without)).shape[0]
    assert h_with > h_without + 100  # the T1 row (170 px panels)
    assert imread(str(unreadable)).shape == imread(str(without)).shape
    t1, flair, _ = phantom(shape=(30, 30, 30))
    other = write_nifti(tmp_path / "other_mask.nii.gz", (flair > 200).astype(np.uint8), np.eye(4))
    with pytest.raises(InputError, match="not on the FLAIR's grid"):
        qc_picture(case["flair"], other, None, tmp_path / "x.png")
    with pytest.raises(InputError, match="convention"):
        qc_picture(case["flair"], case["label"], None, tmp_path / "x.png", convention="coronal")


def test_cohort_flags_robust_outlier_and_thresholds():
    rng = np.random.default_rng(3)
    vols = np.exp(rng.normal(np.log(2000), 0.5, 40))
    records = [{"status": "ok", "wmh_mm3": float(v), "mean_lesion_prob": 0.85} for v in vols]
    records[5]["wmh_mm3"] = 2000 * math.exp(0.5 * 8)  # 8 SD above on the log scale
    records[6]["mean_lesion_prob"] = 0.55
    records[7].update(fov_cut_share=0.6, wmh_outside_wm_share=0.5, t1_shift_mm=7.0)
    records.append({"status": "error", "error": "f.nii.gz: truncated"})
    flags = cohort_flags(records)
    # the robust z of the others, computed independently of the module (Iglewicz-Hoaglin)
    logs = np.log1p([r["wmh_mm3"] for r in records[:-1]])
    mad = np.median(np.abs(logs - np.median(logs)))
    expected_outliers = {i for i, v in enumerate(logs) if abs(0.6745 * (v - np.median(logs)) / mad) > 3.5}
    assert expected_outliers == {5}
    assert flags[5] == "volume_outlier"
    assert flags[6] == "low_lesion_prob"
    assert flags[7] == "wmh_outside_wm;fov_cut;misaligned"
    assert flags[-1] == "failed"
    assert sum(bool(f) for f in flags) == 4
    # too small a cohort: no outlier test; a stricter threshold flags more
    assert cohort_flags(records[:4] + [records[5]])[-1] == ""
    assert cohort_flags(records, QCThresholds(low_lesion_prob=0.9))[0] == "low_lesion_prob"


def test_fov_cut_share_sees_a_cut_vertex_but_not_the_neck():
    head = np.zeros((30, 30, 30), np.float32)
    zz, yy, xx = np.meshgrid(*(np.arange(30),) * 3, indexing="ij")
    head[((xx - 15) ** 2 + (yy - 15) ** 2 + (zz - 15) ** 2) < 12**2] = 100.0
    ras = np.eye(4)
    assert fov_cut_share(head, ras) == 0.0
    cut_top = head[:, :, :20]  # superior edge through the sphere 4 voxels above its centre
    share = fov_cut_share(cut_top, ras)
    # cross-section at z=19 (radius^2 = 144 - 16) over the biggest one (radius^2 = 143): counted independently
    assert share == pytest.approx((cut_top[:, :, -1] > 0).sum() / (head[:, :, 15] > 0).sum())
    assert share > 0.8
    assert fov_cut_share(head[:, :, 10:], ras) == 0.0  # the inferior edge (neck) is not a cut
    ras_i = np.diag([1.0, 1.0, -1.0, 1.0])  # stored R-A-I: index 0 is the top of the head
    assert fov_cut_share(head[:, :, 11:], ras_i) == pytest.approx(share)
    assert fov_cut_share(cut_top, ras_i) == 0.0
    assert fov_cut_share(head[11:], ras) == pytest.approx(share)  # a lateral edge counts


def test_wmh_outside_wm_share_hand_worked():
    classes = np.zeros((30, 5, 5), np.uint8)
    classes[:10] = 8
    wmh = np.zeros(classes.shape, bool)
    wmh[9, 2, 2] = wmh[12, 2, 2] = True  # inside; 3 mm away (kept)
    wmh[14, 2, 2] = wmh[25, 2, 2] = True  # 5 mm and 16 mm away
    assert wmh_outside_wm_share(wmh, classes, (1.0, 1.0, 1.0)) == 0.5
    assert math.isnan(wmh_outside_wm_share(np.zeros_like(wmh), classes, (1.0, 1.0, 1.0)))


class _Parser(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.rows, self.links, self.text = 0, [], []

    def handle_starttag(self, tag, attrs):
        self.rows += tag == "tr"
        self.links += [v for k, v in attrs if k in ("href", "src")]

    def handle_data(self, data):
        self.text.append(data)


def test_gallery_escapes_odd_ids_and_puts_failed_and_flagged_first(tmp_path):
    odd = "<b>x&y\"'#%?"
    (tmp_path / "qc").mkdir()
    (tmp_path / "qc" / f"{odd}_01.png").write_bytes(b"png")
    records = [
        {"subject_id": "001", "session_id": "01", "status": "ok", "wmh_mm3": 100.0, "n_lesions": 2, "qc_flags": ""},
        {"subject_id": odd, "session_id": "01", "status": "ok", "wmh_mm3": 5.0, "n_lesions": 1,
         "qc_flags": "volume_outlier", "wmh_mm3_sd": 1.5, "wmh_mm3_ci_low": 2.0, "wmh_mm3_ci_high": 8.0},
        {"subject_id": "003", "session_id": "01", "status": "error", "error": "f.nii.gz: <truncated>",
         "qc_flags": "failed"},
    ]
    page = write_gallery(tmp_path, records).read_text(encoding="utf-8")
    parser = _Parser()
    parser.feed(page)
    text = "".join(parser.text)
    assert odd in text  # shown as itself once unescaped
    assert "<b>x" not in page and "f.nii.gz: <truncated>" not in page
    assert parser.links == ["%3Cb%3Ex%26y%22%27%23%25%3F_01.png"] * 2  # link and thumbnail, no other picture
    assert text.index("003") < text.index(odd) < text.index("001")  # failed, flagged, then the rest
    assert "failed: no picture" in text and "f.nii.gz: <truncated>" in text
    assert "95% 2 to 8" in text


@pytest.fixture(scope="module")
def qc_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("qc_run")
    ckpt = make_checkpoint(root / "m.ckpt", mode="bison")
    cases = [write_case(root / "data", f"c{i}", codes=c, ventricles=True) for i, c in enumerate(("RAS", "LPS"))]
    rows = [{"subject_id": f"s#{i}", "session_id": "01", "t1": c["t1"], "flair": c["flair"]} for i, c in enumerate(cases)]
    rows.append({"subject_id": "bad", "session_id": "01", "t1": cases[0]["t1"], "flair": root / "missing.nii.gz"})
    manifest = write_manifest(root / "manifest.csv", rows)
    out = root / "out"
    code = infer(infer_cfg(ckpt, manifest, out))
    return code, out, ckpt, manifest


def test_infer_writes_flags_pictures_and_gallery(qc_run):
    code, out, _, _ = qc_run
    assert code == 1  # one scan failed
    vol = pd.read_csv(out / "volumes.csv", dtype=IDS, keep_default_na=False)
    assert list(vol["qc_flags"]) == ["", "", "failed"]
    assert (vol.loc[:1, "fov_cut_share"].astype(float) == 0).all()
    assert (vol.loc[:1, "wmh_outside_wm_share"].astype(float) >= 0).all()
    assert sorted(p.name for p in (out / "qc").glob("*.png")) == ["s#0_01.png", "s#1_01.png"]
    page = (out / "qc" / "index.html").read_text(encoding="utf-8")
    assert "s%230_01.png" in page and "missing.nii.gz" in page
    # the same scan stored RAS and LPS gives the same picture
    a, b = (imread(str(out / "qc" / f"s#{i}_01.png")) for i in (0, 1))
    assert a.shape == b.shape
    assert np.abs(a[60:] - b[60:]).max() < 1e-6


def test_qc_false_writes_no_pictures_and_a_rerun_keeps_unchanged_pictures(qc_run, tmp_path):
    code, out, ckpt, manifest = qc_run
    png = out / "qc" / "s#0_01.png"
    before = png.stat().st_mtime_ns
    infer(infer_cfg(ckpt, manifest, out))
    assert png.stat().st_mtime_ns == before  # same text, model and inputs: not redrawn
    other = tmp_path / "noqc"
    infer(infer_cfg(ckpt, manifest, other, qc=False))
    assert (other / "volumes.csv").is_file() and not (other / "qc").exists()
    with pytest.raises(Exception, match="qc_convention"):
        from wmhseg.inference.infer_config import InferConfig

        InferConfig.from_mapping(infer_cfg(ckpt, manifest, other, qc_convention="sideways"))


def test_picture_lines_carry_the_interval_and_flags():
    rec = {"subject_id": "1", "session_id": "2", "wmh_mm3": 1234.0, "n_lesions": 3, "qc_flags": "a;b",
           "wmh_mm3_ci_low": 1000.0, "wmh_mm3_ci_high": 1500.0}
    assert picture_lines(rec) == ["subject 1, session 2", "WMH 1,234 mm³, 3 lesions (95% interval 1,000 to 1,500)",
                                  "flags: a, b"]
