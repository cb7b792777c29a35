"""Inference: segment new scans with a trained checkpoint and measure their WMH.

- :mod:`~wmhseg.inference.loading`: read, check and preprocess a scan (layer 1);
- :mod:`~wmhseg.inference.infer_config`: how the network is run (:class:`InferenceSettings`);
- :mod:`~wmhseg.inference.predictor`: :class:`Predictor` (prediction on the working grid, native export);
- :mod:`~wmhseg.inference.optimize`: output-preserving network rewrites (batch norm folding, channels-last);
- :mod:`~wmhseg.inference.export`: resampling through affines and atomic mask writing;
- :mod:`~wmhseg.inference.measures`: per-scan volumes, lesion counts, periventricular/deep split;
- :mod:`~wmhseg.inference.agreement`: ICC and Bland-Altman against the teacher's labels;
- :mod:`~wmhseg.inference.records`: per-scan records and the tables built from them;
- :mod:`~wmhseg.inference.pipeline`: the per-scan pipeline (prepare, predict, export, measure) all runs share;
- :mod:`~wmhseg.inference.runner`: :func:`infer`, the ``infer.py`` entry point's body;
- :mod:`~wmhseg.inference.distributed`: the same through Lightning ``predict`` with DDP.

Submodules are imported on use, so ``import wmhseg.inference`` stays light.
"""

from __future__ import annotations

from typing import Any

__all__ = ["infer", "Predictor", "InferenceSettings"]


def __getattr__(name: str) -> Any:
    if name == "infer":
        from wmhseg.inference.runner import infer

        return infer
    if name == "Predictor":
        from wmhseg.inference.predictor import Predictor

        return Predictor
    if name == "InferenceSettings":
        from wmhseg.inference.infer_config import InferenceSettings

        return InferenceSettings
    raise AttributeError(f"module 'wmhseg.inference' has no attribute {name!r}")
