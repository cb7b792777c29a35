"""The LightningModule that trains an injected MONAI network on T1w + FLAIR patches."""

from __future__ import annotations

from wmhseg.models.module import WMHSegModule, check_inference_settings, to_plain

__all__ = ["WMHSegModule", "check_inference_settings", "to_plain"]
