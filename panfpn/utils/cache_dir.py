"""Where panfpn keeps generated data and caches: ``$PANFPN_CACHE`` or ``~/.cache/panfpn``."""

from __future__ import annotations

import os
from pathlib import Path


def default_cache_dir() -> Path:
    """``$PANFPN_CACHE`` or ``~/.cache/panfpn`` (the synthetic datasets, the record cache)."""
    return Path(os.environ.get("PANFPN_CACHE") or Path.home() / ".cache" / "panfpn")
