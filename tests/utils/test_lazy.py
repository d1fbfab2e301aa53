"""Package attributes load on first use: importing panfpn or its evaluator costs no torch import."""

import sys

import pytest

from process_helpers import run as run_in_group


def test_packages_import_without_torch_until_a_name_is_used():
    code = ("import sys, panfpn, panfpn.evaluation as ev\n"
            "assert 'torch' not in sys.modules\n"
            "ev.PQInputError\n"
            "assert 'torch' not in sys.modules\n"  # the PQ rules are pure Python + numpy
            "panfpn.build_model\n"
            "assert 'torch' in sys.modules\n")
    run_in_group([sys.executable, "-c", code], check=True)


def test_unknown_attribute_names_the_package():
    import panfpn.evaluation

    with pytest.raises(AttributeError, match="'panfpn.evaluation' has no attribute 'nope'"):
        panfpn.evaluation.nope  # noqa: B018
