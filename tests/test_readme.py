"""README.md runs as written: its ```python blocks, in order, in one namespace, in a
fresh folder; a block whose first line is ``# needs: WHAT`` runs only where WHAT is
there (an optional extra, or a CUDA GPU). The transcript of ``fastbp demo xor`` it
shows is what the demo prints today, timing lines aside."""

import importlib.util
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCK = re.compile(r"^```python\n(.*?)^```$", re.S | re.M)
NEEDS = re.compile(r"^# needs: (.+)$")
# what a block may need, and the modules that show it is installed
EXTRAS = {"scikit-learn": ("sklearn",), "pandas": ("pandas",), "matplotlib": ("matplotlib",),
          "tqdm": ("tqdm",), "dask": ("distributed",), "torch": ("torch",),
          "onnx": ("onnx", "onnxruntime"), "scipy": ("scipy",)}
GPU = "CUDA GPU"


def python_blocks(text):
    """(line number, source) of every ```python block."""
    return [(text.count("\n", 0, m.start()) + 2, m.group(1)) for m in BLOCK.finditer(text)]


def needs(source):
    """What the block's first line says it needs (a list, empty when nothing)."""
    first = source.splitlines()[0] if source.strip() else ""
    m = NEEDS.match(first)
    return [] if m is None else [w.strip() for w in m.group(1).split(",")]


def missing(what):
    """Why a need is not met here, or None when it is."""
    if what == GPU:
        from fastbp._cuda import cuda_available
        return None if cuda_available() else "no CUDA GPU"
    if what not in EXTRAS:
        raise AssertionError(f"README: '# needs: {what}' is not a known extra or {GPU!r}; "
                             f"known: {', '.join(EXTRAS)}")
    found = all(importlib.util.find_spec(module) for module in EXTRAS[what])
    return None if found else f"{what} is not installed"


def test_readme_python_blocks_run_in_order(tmp_path, monkeypatch, capsys):
    blocks = python_blocks(README.read_text(encoding="utf-8"))
    assert len(blocks) >= 6
    monkeypatch.chdir(tmp_path)  # the blocks write m.npz, run.npz
    namespace = {"__name__": "__readme__"}
    skipped = []
    for line, source in blocks:
        reasons = [r for r in map(missing, needs(source)) if r]
        if reasons:
            skipped.append(f"line {line}: {'; '.join(reasons)}")
            continue
        code = compile(source, f"README.md, block at line {line}", "exec")
        with warnings.catch_warnings():  # a block that warns (a ConvergenceWarning, a
            warnings.simplefilter("error")  # deprecation) shows its reader a problem
            exec(code, namespace)
    capsys.readouterr()
    # the blocks really ran: their names hold what the README says they do
    assert namespace["hist"] is not None and "res" in namespace
    assert len(namespace["res"].rows) == 24
    assert namespace["ens"].predict(namespace["X"]).shape == (256, 21, 1)
    for reason in skipped:
        print("skipped README block", reason)


# code that needs an extra or a GPU, and what its block must then say it needs
USES = [(re.compile(r"fastbp\.sklearn|^\s*(from|import) sklearn\b", re.M), "scikit-learn"),
        (re.compile(r"\.to_pandas\(|^\s*(from|import) pandas\b", re.M), "pandas"),
        (re.compile(r"fastbp\.plot|^\s*(from|import) matplotlib\b", re.M), "matplotlib"),
        (re.compile(r"optimizer=\"lbfgs\""), "scipy"),
        (re.compile(r"device=\"cuda\""), GPU)]


def test_readme_blocks_needing_extras_say_so():
    for line, source in python_blocks(README.read_text(encoding="utf-8")):
        for pattern, what in USES:
            if pattern.search(source):
                assert what in needs(source), \
                    f"README block at line {line} needs {what}: say so on its first line"


def test_needs_names_only_known_things():
    assert needs("# needs: scikit-learn\nx = 1\n") == ["scikit-learn"]
    assert needs("# needs: CUDA GPU, pandas\n") == [GPU, "pandas"]
    assert needs("x = 1  # needs: pandas\n") == []
    with pytest.raises(AssertionError, match="not a known extra"):
        missing("sklearn")  # the extra is called scikit-learn


def test_readme_transcript_is_what_the_demo_prints():
    text = README.read_text(encoding="utf-8")
    m = re.search(r"^```\n\$ fastbp demo xor\n(.*?)^```$", text, re.S | re.M)
    assert m, "the README shows the output of 'fastbp demo xor'"
    shown = m.group(1).splitlines()
    proc = subprocess.run([sys.executable, "-m", "fastbp", "demo", "xor", "--no-progress"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    printed = proc.stdout.splitlines()
    timing = ("Training:", "Wall time:")  # measured, not reproducible
    checked = [line for line in shown if line != "..." and not line.startswith(timing)]
    assert len(checked) >= 8
    for line in checked:
        assert line in printed, f"README shows {line!r}; the demo does not print it"
