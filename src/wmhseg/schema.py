"""The table columns wmhseg reads and writes: each contract defined once.

Pure data (no third-party imports), so every stage can name a column without importing another
stage. ``docs/contracts.md`` describes each table in words; the code checks against these tuples.
"""

from __future__ import annotations

__all__ = [
    "MANIFEST_REQUIRED", "MANIFEST_OPTIONAL",
    "VOLUME_REQUIRED", "VOLUME_CORE", "UNCERTAINTY_COLUMNS", "TIMING_COLUMNS", "STEREOTAXIC_COLUMNS",
    "REGISTRATION_COLUMNS", "VOLUME_COLUMNS", "METRIC_NAMES", "METRICS_COLUMNS",
    "CLINICAL_COLUMNS", "GROUPS", "SEXES", "HEADLINE_KEYS", "ESTIMATE_FIELDS", "MODELS_COLUMNS", "LEFT_OUT_COLUMNS",
    "PROGRESSION_COLUMNS", "CHANGE_COLUMNS",
]

# ---- the manifest infer.py reads (CSV); a BIDS folder is turned into the same rows
MANIFEST_REQUIRED = ("subject_id", "session_id", "t1", "flair")
MANIFEST_OPTIONAL = ("label", "xfm")

# ---- volumes.csv, written by infer.py, read by analyze.py
VOLUME_REQUIRED = ("subject_id", "session_id", "wmh_mm3")  # what analyze.py needs
VOLUME_CORE = (*VOLUME_REQUIRED, "n_lesions", "status", "error")  # the smallest table a producer writes
UNCERTAINTY_COLUMNS = ("wmh_mm3_sd", "wmh_mm3_ci_low", "wmh_mm3_ci_high")
TIMING_COLUMNS = ("t_load_s", "t_preprocess_s", "t_predict_s", "t_export_s", "t_measure_s", "t_uncertainty_s",
                  "t_total_s")
# with an `xfm`: the stereotaxic WMH volume and |det| of the transform (wmh_mm3 is then native)
STEREOTAXIC_COLUMNS = ("wmh_stx_mm3", "stx_scale")
# T1-to-FLAIR alignment (wmhseg.registration.Alignment.record)
REGISTRATION_COLUMNS = ("t1_registration", "t1_align_mi_before", "t1_align_mi_after", "t1_shift_mm",
                        "t1_transform", "t_register_s")
VOLUME_COLUMNS = (
    *VOLUME_CORE, "warnings", "longitudinal",
    "wmh_periventricular_mm3", "wmh_deep_mm3", "pv_rule", "icv_mm3", "brain_mm3", "mean_lesion_prob",
    *UNCERTAINTY_COLUMNS, "qc_flags", "fov_cut_share", "wmh_outside_wm_share", "wmh_voxels",
    "voxel_x_mm", "voxel_y_mm", "voxel_z_mm", "voxel_mm3", "mask", "model_id", "row",
    *TIMING_COLUMNS, *STEREOTAXIC_COLUMNS, *REGISTRATION_COLUMNS,
)

# ---- metrics.csv, written by infer.py when the manifest has labels (MICCAI 2017 WMH challenge metrics)
METRIC_NAMES = ("dice", "hd95", "avd", "lesion_recall", "lesion_f1")
METRICS_COLUMNS = (
    "subject_id", "session_id", "status", "error", *METRIC_NAMES, "wmh_mm3", "ref_wmh_mm3", "n_lesions",
    "ref_n_lesions", "row",
)

# ---- the clinical table analyze.py reads
CLINICAL_COLUMNS = (
    "subject_id", "session_id", "group", "age", "sex", "years_since_baseline", "alsfrs_r", "survival_months",
    "event",
)
GROUPS = ("control", "ALS")
SEXES = ("F", "M")

# ---- analyze.py's outputs: headline.json (one entry per key), models.csv, left_out.csv
HEADLINE_KEYS = (
    "wmh_progression_als_vs_control", "wmh_progression_short_vs_long", "alsfrs_per_500mm3_wmh",
    "alsfrs_wmh_slope_short_vs_long",
)
ESTIMATE_FIELDS = ("estimate", "std_err", "df", "ci_low", "ci_high", "p_value", "n_subjects", "n_obs", "method")
MODELS_COLUMNS = (
    "model", "term", "estimate", "std_err", "df", "ci_low", "ci_high", "p_value", "n_subjects", "n_obs", "converged",
    "optimizer", "method", "kind", "formula", "hazard_ratio", "hr_ci_low", "hr_ci_high", "ph_p_value", "note",
)
LEFT_OUT_COLUMNS = ("table", "line", "subject_id", "session_id", "left_out_of", "reason")

# ---- longitudinal mode: progression.csv and the per-pair lesion change tables
PROGRESSION_COLUMNS = ("subject_id", "n_visits", "years", "wmh_first_mm3", "wmh_last_mm3", "slope_mm3_per_year",
                       "new_lesions", "new_lesion_mm3", "status", "error")
CHANGE_COLUMNS = ("lesion", "change", "before_mm3", "after_mm3", "x_vox", "y_vox", "z_vox")
