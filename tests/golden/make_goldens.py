"""Record goldens.npz from the current kernels (run once, before a change that must not
alter results): python tests/golden/make_goldens.py

    python tests/golden/make_goldens.py _f32    rerecord only the cases whose name
                                                contains "_f32", keep every other one"""
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from cases import ALL_CASES, run_case  # noqa: E402

only = sys.argv[1] if len(sys.argv) > 1 else ""
arrays = {}
if only:
    with np.load(HERE / "goldens.npz") as kept:
        arrays = {k: kept[k] for k in kept.files if only not in k.split("/")[0]}
for name in ALL_CASES:
    if only not in name:
        continue
    for key, value in run_case(name).items():
        arrays[f"{name}/{key}"] = np.asarray(value)
    print(name, flush=True)
np.savez_compressed(HERE / "goldens.npz", **arrays)
