"""wmhseg: learn BISON white-matter-hyperintensity labels from T1w + FLAIR MRI, measure WMH
volumes on new scans, and run the longitudinal statistics of an ALS study on them.

Data flows one way: scan files -> dataset -> model -> inference -> volume table -> statistics
-> report. Importing :mod:`wmhseg` loads nothing heavy; :mod:`wmhseg.stats` never imports torch.
"""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["__version__"]
