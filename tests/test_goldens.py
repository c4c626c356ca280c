"""Results must not change when the kernels are restructured: every golden case
(tests/golden/cases.py: every training path, rule, activation, loss and dtype) is rerun
and compared bit for bit with what the kernels computed when goldens.npz was written.

A change that needs another order of operations for a measured speed gain updates the
goldens once (``python tests/golden/make_goldens.py``) and says so in its commit."""
import sys
from pathlib import Path

import numpy as np
import pytest

GOLDEN = Path(__file__).resolve().parent / "golden"
sys.path.insert(0, str(GOLDEN))
from cases import ALL_CASES, run_case  # noqa: E402

_recorded = np.load(GOLDEN / "goldens.npz")


def _expected(name):
    prefix = name + "/"
    return {k[len(prefix):]: _recorded[k] for k in _recorded.files if k.startswith(prefix)}


@pytest.mark.parametrize("name", ALL_CASES)
def test_results_equal_the_recorded_bits(name):
    expected = _expected(name)
    assert expected, f"no goldens recorded for {name}"
    got = {k: np.asarray(v) for k, v in run_case(name).items()}
    assert sorted(got) == sorted(expected)
    for key, want in expected.items():
        have = got[key]
        assert have.dtype == want.dtype and have.shape == want.shape, key
        assert have.tobytes() == want.tobytes(), (
            f"{name}/{key} differs: max |diff| "
            f"{np.nanmax(np.abs(have.astype(float) - want.astype(float))) if have.size else 0}")
