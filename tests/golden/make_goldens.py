"""Record goldens.npz from the current kernels (run once, before a change that must not
alter results): python tests/golden/make_goldens.py"""
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from cases import ALL_CASES, run_case  # noqa: E402

arrays = {}
for name in ALL_CASES:
    for key, value in run_case(name).items():
        arrays[f"{name}/{key}"] = np.asarray(value)
    print(name, flush=True)
np.savez_compressed(HERE / "goldens.npz", **arrays)
