"""The dispatcher's bookkeeping (fastbp/_dispatch.py): what it knows is compiled, and the
work that counts toward compiling a faster kernel, within a process and across them."""
import hashlib
import os

import numpy as np
import pytest

import fastbp
from fastbp import _dispatch as D
from fastbp.kernels import gemm as G


@pytest.fixture
def fresh_process(monkeypatch, tmp_path):
    """The dispatcher as a new process sees it, with its markers in tmp_path; calling
    the fixture again starts another 'process' on the same folder."""
    monkeypatch.setattr(D, "POLICY", "auto")
    monkeypatch.setattr(D, "_marker", lambda key: str(
        tmp_path / "compiled" / hashlib.sha256(repr(key).encode()).hexdigest()))

    def start():
        monkeypatch.setattr(D, "_loaded", set())
        monkeypatch.setattr(D, "_on_disk", set())
        monkeypatch.setattr(D, "_absent", {})
        monkeypatch.setattr(D, "_plans", {})
        monkeypatch.setattr(D, "_work_seen", {})
        monkeypatch.setattr(D, "_spared", set())
    start()
    return start


def test_work_toward_a_faster_kernel_counts_across_processes(fresh_process):
    key = ("gemm", "tiles", "float64")
    assert not D._worth(key, 1.0, 2.5)
    fresh_process()  # the next run of the script
    assert not D._worth(key, 1.0, 2.5)
    fresh_process()
    assert D._worth(key, 1.0, 2.5)  # 3 s saved in all: worth its 2.5 s compile


def test_work_is_written_at_most_once_a_second_and_at_exit(fresh_process, monkeypatch):
    """A loop of fits too short to pay writes its count when the process first reads it,
    then at most every WORK_WRITE_SECONDS, and what is left when the process ends
    (_write_pending_work, registered with atexit): a write cost more than such a fit."""
    monkeypatch.setattr(D, "_work_written", {})
    monkeypatch.setattr(D, "_work_unwritten", {})
    key = ("gemm", "tiles", "float64")
    assert not D._worth(key, 1.0, 100.0)
    assert D._read_work(key) == 1.0  # read and written at once
    for _ in range(3):
        assert not D._worth(key, 1.0, 100.0)
    assert D._read_work(key) == 1.0  # within the second: counted, not written
    D._write_pending_work()
    assert D._read_work(key) == 4.0
    monkeypatch.setattr(D, "WORK_WRITE_SECONDS", 0.0)
    assert not D._worth(key, 1.0, 100.0)
    assert D._read_work(key) == 5.0
    fresh_process()
    assert not D._worth(key, 1.0, 100.0) and D._read_work(key) == 6.0


def test_pending_work_goes_where_it_was_counted(monkeypatch, tmp_path):
    """The exit's writes go to the folder the work was counted for, and only while it
    exists; a forked child writes its first count at once (it ends without atexit)."""
    monkeypatch.setattr(D, "POLICY", "auto")
    for name, value in (("_loaded", set()), ("_on_disk", set()), ("_absent", {}),
                        ("_work_seen", {}), ("_work_written", {}), ("_work_unwritten", {})):
        monkeypatch.setattr(D, name, value)
    folder = {"now": tmp_path / "a"}
    monkeypatch.setattr(D, "_marker", lambda key: str(folder["now"] / "compiled" / "k"))
    key = ("gemm", "tiles", "float64")
    for _ in range(3):
        assert not D._worth(key, 1.0, 100.0)
    folder["now"] = tmp_path / "b"  # e.g. FASTBP_CACHE_DIR changed
    D._write_pending_work()
    assert (tmp_path / "a" / "compiled" / "k.work").read_text() == "3.0"
    assert not (tmp_path / "b").exists()
    folder["now"] = tmp_path / "a"
    assert not D._worth(key, 1.0, 100.0)
    import shutil
    shutil.rmtree(tmp_path / "a")  # the cache folder deleted while the process runs
    D._write_pending_work()
    assert not (tmp_path / "a").exists()
    D._forget_writes()  # as in a forked child
    assert not D._worth(key, 1.0, 100.0)
    assert (tmp_path / "a" / "compiled" / "k.work").read_text() == "5.0"


def test_a_compiled_kernel_is_known_to_the_next_process(fresh_process):
    key = ("train", "mini", "fused", False, "float64")
    assert not D.is_compiled(key)
    D.mark_compiled(key)
    fresh_process()
    assert D.is_compiled(key) and not D.is_loaded(key)


def test_a_missing_marker_is_looked_for_again_after_absent_seconds(fresh_process,
                                                                   monkeypatch):
    """A negative answer is kept ABSENT_SECONDS (a predict asks for narrower units that are
    seldom compiled); a marker another process writes meanwhile is seen after it, and
    mark_compiled in this process forgets the negative at once."""
    key = ("train", "full", "plain", False, "float64")
    clock = [100.0]
    monkeypatch.setattr(D.time, "monotonic", lambda: clock[0])
    assert not D.is_compiled(key)
    path = D._marker(key)  # another process compiles it
    os.makedirs(os.path.dirname(path), exist_ok=True)
    open(path, "w").close()
    clock[0] += 0.5 * D.ABSENT_SECONDS
    assert not D.is_compiled(key)  # not looked for again yet
    clock[0] += D.ABSENT_SECONDS
    assert D.is_compiled(key)
    other = ("train", "mini", "plain", False, "float64")
    assert not D.is_compiled(other) and other in D._absent
    D.mark_compiled(other)
    assert other not in D._absent
    fresh_process()  # the next process: its own registry, the same marker folder
    assert D.is_compiled(other)


def test_the_marker_follows_numbas_cpu_features(monkeypatch):
    """Numba keeps its cache per CPU name and features (NUMBA_CPU_FEATURES): kernels
    compiled for other features are not known to be compiled for these."""
    import numba
    key = ("train", "mini", "fused", False, "float64")
    monkeypatch.setattr(numba.config, "CPU_FEATURES", None)
    default = D._marker(key)
    monkeypatch.setattr(numba.config, "CPU_FEATURES", "+avx2,-prefer-256-bit")
    wide = D._marker(key)
    monkeypatch.setattr(numba.config, "CPU_FEATURES", "+avx2")
    assert len({default, wide, D._marker(key)}) == 3


def test_whole_avx512_registers_only_where_they_pay_and_nobody_chose_otherwise():
    from fastbp.kernels.config import wide_vector_features
    avx512 = "+avx2,+avx512f,+fma"
    assert wide_vector_features("emeraldrapids", avx512, {}) == avx512 + ",-prefer-256-bit"
    assert wide_vector_features("sapphirerapids", avx512, {}) == avx512 + ",-prefer-256-bit"
    # older AVX-512 parts (the clock), AMD (already whole registers), no AVX-512
    assert wide_vector_features("skylake-avx512", avx512, {}) is None
    assert wide_vector_features("znver5", avx512, {}) is None
    assert wide_vector_features("emeraldrapids", "+avx2,-avx512f,+fma", {}) is None
    # the user's own choice, Numba's or fastbp's
    for environ in ({"FASTBP_WIDE_VECTORS": "0"}, {"NUMBA_CPU_NAME": "generic"},
                    {"NUMBA_CPU_FEATURES": "+avx2"}):
        assert wide_vector_features("emeraldrapids", avx512, environ) is None


_FIT_IN_A_PROCESS = """
import json, sys, numpy as np, numba, fastbp
X = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], float); y = np.array([[0], [1], [1], [0]], float)
m = fastbp.MLP([2, 4, 4, 1], seed=3); m.fit(X, y, epochs=300, lr=0.5)
e = fastbp.MLP([2, 4, 4, 1], seed=3); e.fit(X, y, epochs=3, lr=0.5, batch_size=1)
json.dump({"features": numba.config.CPU_FEATURES,
           "params": [p.hex() for p in np.concatenate([m.params, e.params])]}, sys.stdout)
"""


def test_whole_registers_give_the_same_bits():
    """fastbp's choice of vector width (kernels/config.py) changes the speed, never the
    numbers: a process with it and one without train the same bits."""
    import json
    import os
    import subprocess
    import sys

    import llvmlite.binding as llvm
    from numba.core.codegen import get_host_cpu_features

    from fastbp.kernels.config import wide_vector_features
    env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_CPU_NAME", "NUMBA_CPU_FEATURES")}
    runs = {}
    for wide in ("1", "0"):
        out = subprocess.run([sys.executable, "-c", _FIT_IN_A_PROCESS], check=True,
                             capture_output=True, text=True,
                             env=dict(env, FASTBP_WIDE_VECTORS=wide)).stdout
        runs[wide] = json.loads(out)
    expected = wide_vector_features(llvm.get_host_cpu_name(), get_host_cpu_features(),
                                    {})
    assert runs["1"]["features"] == expected  # set on a CPU where it pays, else not
    assert runs["0"]["features"] is None
    assert runs["1"]["params"] == runs["0"]["params"]


def test_the_tiles_are_chosen_once_enough_product_work_was_seen(fresh_process):
    sizes = (32, 64, 64, 10)
    assert D.choose_gemm(sizes, np.float64, 64, 1) == "recurrence"
    assert D.choose_gemm(sizes, np.float64, 64, 10 ** 12) == "tiles"
    assert D.choose_gemm((2, 4, 4, 1), np.float64, 21, 10 ** 12) is None  # no products


@pytest.mark.parametrize("dtype,units", [(np.float64, 512), (np.float32, 1024)])
def test_the_tiles_copy_op_a_only_for_networks_whose_layers_need_it(fresh_process, dtype,
                                                                    units):
    """Layers of 512 float64 or 1,024 float32 units or more (after one of more than
    tiles.ROWS) take the tiles unit with the copy of op(a), tiles_packed; other networks
    the one without it, which compiles in about 60% of the time -- unless tiles_packed
    alone is compiled already: it serves them too, with the same numbers."""
    name = np.dtype(dtype).name
    narrow, wide, after_few = (32, units - 1, 10), (32, units, 10), (6, units, 10)
    assert [G.tiles_kind(s, dtype) for s in (narrow, wide, after_few)] == [
        "tiles", "tiles_packed", "tiles"]
    assert D.choose_gemm(narrow, dtype, 64, 10 ** 12) == "tiles"
    assert D.choose_gemm(wide, dtype, 64, 10 ** 12) == "tiles_packed"
    fresh_process()
    D.mark_compiled(("gemm", "tiles_packed", name))
    assert D.choose_gemm(narrow, dtype, 64, 1) == "tiles_packed"  # compiled: no wait
    D.mark_compiled(("gemm", "tiles", name))
    assert D.choose_gemm(narrow, dtype, 64, 1) == "tiles"


def test_a_settled_plan_is_reused_and_an_unsettled_one_is_not(fresh_process, monkeypatch):
    from fastbp import _config
    m = fastbp.MLP([3, 5, 2], seed=0)
    rule, _ = _config.build(0.1, 10)
    plan = D.plan_fit(m, 20, 20, False, rule, False, 10)
    assert not D._plans  # nothing compiled yet: it may still change
    D.mark_compiled(plan.key)
    again = D.plan_fit(m, 20, 20, False, rule, False, 10)
    assert again.key == plan.key
    if plan.could_generate:  # the general entry: a generated kernel may yet be worth it
        assert not D._plans
    else:  # the fastest there is, compiled: settled, not weighed again
        assert D.plan_fit(m, 20, 20, False, rule, False, 10) is again


def test_a_plan_left_on_one_thread_is_not_settled_by_the_other_kind_of_threads(
        fresh_process):
    """A batched fit too short to pay for the pool's compilation runs on one thread; its
    plan must not be kept while the pool is not compiled, or a longer fit of the same
    shape would never run on threads in this process.  The per-sample units being
    compiled (another fit's threads) do not make the pool compiled."""
    from fastbp import _config
    m = fastbp.MLP([32, 512, 512, 10], seed=0)
    rule, _ = _config.build(0.01, 1)
    short = D.plan_fit(m, 300, 64, False, rule, False, 1, threads=2)
    assert short.threads == 1 and short.gemm == "recurrence"
    tiles = G.tiles_kind(m.sizes, m.dtype)  # (512 float64 units: "tiles_packed")
    for key in (short.key, ("gemm", tiles, "float64"), ("sample", "shared", "float64")):
        D.mark_compiled(key)
    short = D.plan_fit(m, 300, 64, False, rule, False, 1, threads=2)
    assert short.threads == 1 and short.gemm == tiles
    assert not D._plans  # the pool may yet be worth compiling
    long = D.plan_fit(m, 300, 64, False, rule, False, 10 ** 4, threads=2)
    assert long.threads == 2


def test_settled_plans_stay_bounded_over_new_sample_counts(monkeypatch):
    """A loop fitting one architecture to ever new sample counts (a learning curve,
    partial_fit's chunks) settles a plan for each: the memo keeps at most PLANS_CAP,
    the latest, instead of growing ~1 KB a fit for the life of the process."""
    monkeypatch.setattr(D, "_plans", {})
    monkeypatch.setattr(D, "PLANS_CAP", 8, raising=False)
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(60, 3)), rng.normal(size=(60, 1))
    for n in range(20, 60):
        m = fastbp.MLP([3, 2, 1], activation="tanh", seed=0)
        m.fit(X[:n], y[:n], epochs=1, batch_size=4, shuffle=True)
    assert 0 < len(D._plans) <= 8
    memo = next(reversed(D._plans))
    assert memo[5] == 59  # the newest plan is kept (the oldest are dropped)


_TINY_FIT = """
import numpy as np, fastbp
X = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], float); y = np.array([[0], [1], [1], [0]], float)
fastbp.MLP([2, 4, 4, 1], seed=3).fit(X, y, epochs=2, lr=0.5)
"""


def test_bounds_checked_code_is_cached_apart(tmp_path):
    """Numba's cache key leaves out NUMBA_BOUNDSCHECK (and NUMBA_OPT, NUMBA_DEBUGINFO,
    NUMBA_ENABLE_PROFILING): one bounds-checked run would leave its slower code for every
    later run to load (a profiling run once left a W4b fit's float32 layers 3x slower).
    fastbp's kernels cache such code in a folder of their own (config.codegen_variant)."""
    import os
    import subprocess
    import sys
    env = {k: v for k, v in os.environ.items() if not k.startswith("NUMBA_")}
    env.update(NUMBA_CACHE_DIR=str(tmp_path), FASTBP_CACHE_DIR=str(tmp_path / "fastbp"))

    def cached():
        return {p for p in tmp_path.rglob("*.nbc")}

    subprocess.run([sys.executable, "-c", _TINY_FIT], check=True, timeout=300,
                   env=dict(env, NUMBA_BOUNDSCHECK="1"))
    checked = cached()
    assert checked and all("boundscheck" in p.parent.name for p in checked)
    subprocess.run([sys.executable, "-c", _TINY_FIT], check=True, timeout=300, env=env)
    plain = cached() - checked
    # the plain run compiled its own code (none of it under the bounds-checked folders)
    assert plain and not any("boundscheck" in str(p) for p in plain)
    assert {p.name for p in plain} >= {p.name for p in checked}


def test_every_setting_that_changes_the_code_names_a_cache_folder(monkeypatch):
    """Each of Numba's settings that change the compiled code but not its cache key gives
    the kernels' caches a folder name of its own; the defaults give none."""
    from numba import config as numba_config
    from fastbp.kernels.config import codegen_variant
    for setting, default in (("BOUNDSCHECK", None), ("DEBUGINFO_DEFAULT", 0),
                             ("ENABLE_PROFILING", 0), ("LOOP_VECTORIZE", 1),
                             ("SLP_VECTORIZE", 0), ("OPT", 3)):
        monkeypatch.setattr(numba_config, setting, default)
    assert codegen_variant() is None
    names = set()
    for setting, value in (("BOUNDSCHECK", 1), ("DEBUGINFO_DEFAULT", 1),
                           ("ENABLE_PROFILING", 1), ("LOOP_VECTORIZE", 0),
                           ("SLP_VECTORIZE", 1), ("OPT", 1)):
        with monkeypatch.context() as m:
            m.setattr(numba_config, setting, value)
            name = codegen_variant()
        assert name, setting
        names.add(name)
    assert len(names) == 6
