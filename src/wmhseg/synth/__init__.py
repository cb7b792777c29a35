"""Synthetic data: brain-like T1/FLAIR scans with BISON-style labels (:mod:`wmhseg.synth.images`)
and longitudinal ALS/control cohorts (:mod:`wmhseg.synth.cohort`).

Submodules are imported explicitly; the cohort simulator never imports torch.
"""
