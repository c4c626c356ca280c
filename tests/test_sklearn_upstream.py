"""scikit-learn's own MLP tests, run against fastbp.sklearn.

The installed scikit-learn's ``sklearn/neural_network/tests/test_mlp.py`` (not a copy
kept here) is read, its one import of the estimators is replaced by fastbp's, and the
result runs in a pytest subprocess with scikit-learn's conftest (``-p sklearn.conftest``:
its fixtures, e.g. global_random_seed).  Each upstream test function is one test here,
so the report says which pass; every one must pass except those listed below, each with
its reason.  Skipped when scikit-learn's tests are not installed.
"""
import ast
import importlib.util
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

pytest.importorskip("sklearn")

UPSTREAM_IMPORT = "from sklearn.neural_network import MLPClassifier, MLPRegressor"
FASTBP_IMPORT = "from fastbp.sklearn import MLPClassifier, MLPRegressor"

# Upstream tests that need what fastbp does not do yet (none today).  Strict: once one
# passes, its test here fails, so that the entry is removed.
EXPECTED_FAILURES = {}

# Upstream tests that read or set scikit-learn's private optimizer state, with the
# reason each is not run.  None today: fastbp.sklearn's read-only ``_optimizer`` gives
# the learning_rate that test_learning_rate_warmstart and test_adaptive_learning_rate
# read, and ``_loss_grad_lbfgs`` the objective that test_gradient differentiates.
EXCLUDED = {}


def _upstream_path():
    try:
        spec = importlib.util.find_spec("sklearn.neural_network.tests.test_mlp")
    except ModuleNotFoundError:  # scikit-learn installed without its tests
        return None
    if spec is None or spec.origin is None or importlib.util.find_spec(
            "sklearn.conftest") is None:
        return None
    return Path(spec.origin)


UPSTREAM = _upstream_path()


def _upstream_tests(path):
    """The test functions the upstream module defines, in file order."""
    tree = ast.parse(path.read_text())
    return [node.name for node in tree.body
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")]


def _params():
    if UPSTREAM is None:
        return [pytest.param(None, marks=pytest.mark.skip(
            reason="scikit-learn's tests (sklearn/neural_network/tests/test_mlp.py, "
                   "sklearn/conftest.py) are not installed"))]
    out = []
    for name in _upstream_tests(UPSTREAM):
        marks = []
        if name in EXPECTED_FAILURES:
            marks.append(pytest.mark.xfail(strict=True, reason=EXPECTED_FAILURES[name]))
        if name in EXCLUDED:
            marks.append(pytest.mark.skip(reason=EXCLUDED[name]))
        out.append(pytest.param(name, marks=marks, id=name))
    return out


@pytest.fixture(scope="module")
def upstream_results(tmp_path_factory):
    """{upstream test function: [(test id, outcome, message)]} from one pytest run of the
    installed test_mlp.py with fastbp's estimators."""
    text = UPSTREAM.read_text()
    lines = text.splitlines(keepends=True)
    hits = [i for i, line in enumerate(lines) if line.strip() == UPSTREAM_IMPORT]
    if len(hits) != 1:
        pytest.fail(f"{UPSTREAM} has {len(hits)} lines {UPSTREAM_IMPORT!r}, expected "
                    f"exactly one: scikit-learn changed its test, update this module")
    lines[hits[0]] = lines[hits[0]].replace(UPSTREAM_IMPORT, FASTBP_IMPORT)
    folder = tmp_path_factory.mktemp("sklearn_upstream")
    test_file = folder / "test_mlp_fastbp.py"
    test_file.write_text("".join(lines))
    (folder / "pytest.ini").write_text("[pytest]\n")  # not this project's settings
    report = folder / "report.xml"
    deselect = [f"--deselect=test_mlp_fastbp.py::{name}" for name in EXCLUDED]
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "sklearn.conftest", "-p", "no:cacheprovider",
         "-q", f"--junitxml={report}", *deselect, test_file.name],
        cwd=folder, capture_output=True, text=True)
    if not report.is_file():
        pytest.fail(f"the upstream run wrote no report (exit {proc.returncode}):\n"
                    f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    results = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        test_id = case.get("name")
        outcome, message = "passed", ""
        for tag in ("failure", "error", "skipped"):
            node = case.find(tag)
            if node is not None:
                outcome = "skipped" if tag == "skipped" else "failed"
                message = (node.get("message") or "") + "\n" + (node.text or "")
                break
        results.setdefault(test_id.split("[")[0], []).append((test_id, outcome, message))
    return results


@pytest.mark.parametrize("name", _params())
def test_sklearn_upstream(name, upstream_results):
    cases = upstream_results.get(name)
    assert cases, f"upstream {name} was not collected (an import or collection error?)"
    failed = [(test_id, message) for test_id, outcome, message in cases
              if outcome == "failed"]
    assert not failed, "\n\n".join(f"{test_id}:\n{message[:2000]}"
                                   for test_id, message in failed)
    if all(outcome == "skipped" for _, outcome, _ in cases):
        pytest.skip(f"skipped upstream: {cases[0][2].strip()[:200]}")


def test_the_lists_name_upstream_tests():
    if UPSTREAM is None:
        pytest.skip("scikit-learn's tests are not installed")
    names = set(_upstream_tests(UPSTREAM))
    assert set(EXPECTED_FAILURES) <= names and set(EXCLUDED) <= names
    assert not set(EXPECTED_FAILURES) & set(EXCLUDED)
