"""One percent-or-n/a rule for the printed results (tools/eval.py), the TensorBoard scalars and the
HTML report (tests/evaluation/test_cityscapes_pixel.py checks the three use it)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from panfpn.utils.percent import percent, percent_text


@pytest.mark.parametrize("value, shown, text", [
    (0.25, 25.0, "25.00"), (1, 100.0, "100.00"), (0.0, 0.0, "0.00"), (np.float32(0.5), 50.0, "50.00"),
    (None, None, "n/a"), (float("nan"), None, "n/a"), (math.inf, None, "n/a"), ("0.5", None, "n/a")])
def test_a_fraction_in_percent_or_not_defined(value, shown, text):
    assert percent(value) == shown and percent_text(value) == text

