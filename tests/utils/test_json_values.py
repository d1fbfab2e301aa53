"""Strict JSON out: write_json_atomic refuses NaN / Infinity; nonfinite_to_null makes them null."""

import json
import math

import numpy as np
import pytest

from panfpn.utils.atomic import write_json_atomic
from panfpn.utils.json_values import nonfinite_to_null


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_write_json_atomic_refuses_non_finite_numbers_and_leaves_no_file(tmp_path, value):
    with pytest.raises(ValueError, match="JSON compliant"):
        write_json_atomic(tmp_path / "x.json", {"score": [1.0, value]})
    assert list(tmp_path.iterdir()) == []


def test_nonfinite_to_null_replaces_only_non_finite_floats():
    value = {"a": [1, 2.5, math.nan, (math.inf, "x")], "b": {"c": -math.inf, "d": None, "e": True}}
    assert nonfinite_to_null(value) == {"a": [1, 2.5, None, [None, "x"]], "b": {"c": None, "d": None, "e": True}}
    assert json.loads(json.dumps(nonfinite_to_null([np.float64("nan")]), allow_nan=False)) == [None]
