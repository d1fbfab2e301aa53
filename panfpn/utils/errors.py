"""The error type for a bad config value, in the bottom layer so data/, evaluation/ and utils/ can
raise it too (``panfpn.engine.config.ConfigError`` is this class)."""

from __future__ import annotations


class ConfigError(ValueError):
    """A config key is unknown, missing or has a value outside its type, range or choices."""
