"""Command-line overrides one at a time, as the user typed them: what the tools' checks before
hydra (:mod:`panfpn.engine.config.misspelt`, :mod:`panfpn.engine.record_overrides`) parse, and
how messages quote an override that :func:`~panfpn.engine.record_overrides.force_recorded_model_keys`
handed to hydra in its ``++`` form. No torch: tools/merge.py's start imports this."""

from __future__ import annotations

from typing import Any


def parsed_override(arg: str) -> Any | None:
    """Hydra's parse of one command-line argument; None for flags (``-m``), arguments without ``=``
    and what hydra cannot parse (it reports its own error for that argument when it composes)."""
    if arg.startswith("-") or "=" not in arg:
        return None
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        return OverridesParser.create().parse_overrides([arg])[0]
    except Exception:  # noqa: BLE001 - hydra reports its own parse error for this argument
        return None


def as_typed(input_line: str) -> str:
    """An override as the user typed it: ``model.*`` keys reach hydra as ``++model.*`` when the
    weights' recorded model has them (or the weights are an exported pipeline)."""
    return input_line.removeprefix("++")


__all__ = ["as_typed", "parsed_override"]
