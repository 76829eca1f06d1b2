"""Threads, OpenMP's wait policy and BLAS (``fastconv.runtime``), and the facts ``fastconv info`` prints.

What happens when a process starts is checked in fresh interpreters: ``import fastconv`` starts no thread,
loads no BLAS and changes no environment variable; the first compiled backend loads OpenMP under the wait
policy (read back from libgomp itself) and with the thread count the runtime chose."""
import json
import os
import re
import shutil
import subprocess
import sys
import time

import numba
import numpy as np
import pytest

import fastconv
from fastconv import _cy, cli, info, runtime
from fastconv.backends import fft, plan, registry, tune

LINUX = sys.platform.startswith("linux")
PACKAGE = os.path.dirname(os.path.abspath(fastconv.__file__))


def _python(code, tmp_path, env=None, *args):
    """Run ``code`` in a fresh interpreter outside the repository root (whose package would shadow a
    non-editable install), without the thread variables of this process unless ``env`` gives them."""
    base = {k: v for k, v in os.environ.items() if k not in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS")}
    done = subprocess.run([sys.executable, "-c", code, *args], cwd=tmp_path, env={**base, **(env or {})},
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


# ------------------------------------------------------------------------------- at import
IMPORT_ONLY = """
import json, os
import numpy  # NumPy's own BLAS is loaded by NumPy, before fastconv

def libraries():
    with open("/proc/self/maps") as maps:
        return {line.split()[-1] for line in maps if ".so" in line}

env, threads, libs = dict(os.environ), len(os.listdir("/proc/self/task")), libraries()
import fastconv, fastconv.runtime, fastconv.info
facts = {"threads": [threads, len(os.listdir("/proc/self/task"))], "new": sorted(libraries() - libs),
         "env": sorted(k for k in set(env) | set(os.environ) if env.get(k) != os.environ.get(k)),
         "started": fastconv.runtime.pools_started()}
from numba.np.ufunc import parallel  # importing Numba starts no pool either
facts["numba pool"] = parallel._is_initialized
print(json.dumps(facts))
"""


@pytest.mark.skipif(not LINUX, reason="reads /proc/self")
def test_import_fastconv_starts_no_thread_and_loads_no_blas(tmp_path):
    facts = json.loads(_python(IMPORT_ONLY, tmp_path).stdout)
    assert facts["threads"][1] == facts["threads"][0]
    assert not [lib for lib in facts["new"] if re.search(r"blas|gomp|mkl|/_cy/", lib)]
    assert facts["env"] == [] and not facts["started"] and not facts["numba pool"]


# -------------------------------------------------------------------- when the pools start
PROBE = """
import ctypes, json, os, sys
if sys.argv[1] == "libgomp first":
    ctypes.CDLL("libgomp.so.1")
import fastconv
from fastconv import runtime
if sys.argv[1] == "1 thread first":
    fastconv.set_num_threads(1)
started_early = runtime.pools_started()
from fastconv.backends import cython_cpu, numba_cpu
import numba
omp = runtime.openmp()
print(json.dumps({"started early": started_early, "policy": runtime.wait_policy(),
                  "threads": runtime.threads(), "source": runtime.threads_source(),
                  "numba": numba.get_num_threads(), "omp": omp.max_threads() if omp else None,
                  "GOMP_SPINCOUNT": os.environ.get("GOMP_SPINCOUNT"),
                  "libgomp": "libgomp.so" in open("/proc/self/maps").read()}))
sys.stdout.flush()
if "libgomp.so" in open("/proc/self/maps").read():
    ctypes.CDLL("libgomp.so.1").omp_display_env(1)  # libgomp's own view, on stderr
"""


@pytest.mark.skipif(not LINUX, reason="GNU libgomp")
@pytest.mark.parametrize("case, env, spins, policy", [
    ("plain", {}, "chosen", "fastconv's choice"),
    ("plain", {"OMP_WAIT_POLICY": "passive", "OMP_NUM_THREADS": "1"}, "0", "OMP_WAIT_POLICY=passive (environment)"),
    ("libgomp first", {}, "300000", "loaded before"),
    ("1 thread first", {}, "chosen", "fastconv's choice"),
])
def test_backends_start_openmp_under_the_wait_policy(tmp_path, case, env, spins, policy):
    done = _python(PROBE, tmp_path, env, case)
    facts = json.loads(done.stdout)
    if not facts["libgomp"]:
        pytest.skip("neither the Cython kernels nor Numba run on GNU libgomp here")
    assert policy in facts["policy"]
    if spins == "chosen":  # by the load at that moment: one of two counts, stated in the policy
        spins = re.search(r"GOMP_SPINCOUNT=(\d+)", facts["policy"]).group(1)
        assert int(spins) in (runtime.SPIN_COUNT, runtime.SPIN_COUNT_LOADED)
    assert re.search(rf"GOMP_SPINCOUNT = '{spins}'", done.stderr), done.stderr
    assert facts["GOMP_SPINCOUNT"] is None  # set only while libgomp loaded
    assert not facts["started early"]
    threads = 1 if case == "1 thread first" or "OMP_NUM_THREADS" in env else runtime.usable_cores()
    assert facts["threads"] == threads and facts["numba"] == min(threads, numba.config.NUMBA_NUM_THREADS)
    assert facts["omp"] in (threads, None)
    assert facts["source"] == {"1 thread first": "fastconv.set_num_threads"}.get(
        case, "OMP_NUM_THREADS" if "OMP_NUM_THREADS" in env else "usable cores")


def test_spin_count_is_short_where_other_tasks_want_the_cores():
    assert runtime.spin_count(0, 2, 2) == runtime.SPIN_COUNT
    assert runtime.spin_count(1, 2, 2) == runtime.spin_count(3, 1, 2) == runtime.SPIN_COUNT_LOADED
    assert runtime.spin_count(8, 8, 16) == runtime.SPIN_COUNT and runtime.spin_count(9, 8, 16) < runtime.SPIN_COUNT


@pytest.mark.skipif(not LINUX, reason="reads /proc")
def test_other_tasks_sees_a_busy_process():
    busy = subprocess.Popen([sys.executable, "-S", "-c", "while True: pass"])
    try:
        time.sleep(0.3)  # past its start-up
        assert runtime.other_tasks() >= 1
    finally:
        busy.kill()
        busy.wait()


# ------------------------------------------------------------------------------ thread counts
@pytest.fixture
def restore_threads():
    before = runtime.threads()
    yield
    runtime.set_num_threads(before)


def test_set_num_threads_reaches_every_pool(restore_threads):
    from fastconv.backends import numba_cpu  # noqa: F401  (starts the pools)
    omp = runtime.openmp()
    for n in (1, 2):
        fastconv.set_num_threads(n)
        assert fastconv.get_num_threads() == runtime.threads() == fft._workers() == n
        assert numba.get_num_threads() == min(n, numba.config.NUMBA_NUM_THREADS)
        assert omp is None or omp.max_threads() == n
    assert runtime.threads_source() == "fastconv.set_num_threads"


@pytest.mark.parametrize("setter", [runtime.set_num_threads, runtime.set_blas_threads])
@pytest.mark.parametrize("bad, error", [(0, ValueError), (-2, ValueError), (1.0, TypeError), ("2", TypeError),
                                        (True, TypeError), (None, TypeError)])
def test_thread_counts_must_be_positive_ints(setter, bad, error, restore_threads):
    with pytest.raises(error, match="n must be"):
        setter(bad)


# -------------------------------------------------------------------------------------- BLAS
@pytest.fixture
def restore_blas():
    before = set(runtime.blas_libraries().values()) - {None}
    yield
    runtime.set_blas_threads(max(before, default=runtime.usable_cores()))


@pytest.mark.skipif(not LINUX, reason="finds the BLAS libraries in /proc/self/maps")
def test_set_blas_threads_reaches_every_blas(restore_blas):
    assert runtime.set_blas_threads(1) == 1
    libraries = runtime.blas_libraries()
    assert any("scipy" in os.path.basename(p) or "scipy.libs" in p for p in libraries)  # the kernels' BLAS
    assert set(libraries.values()) == {1}
    runtime.set_blas_threads(2)
    assert set(runtime.blas_libraries().values()) == {2}


@pytest.mark.skipif(not (LINUX and runtime.blas_controllable()), reason="SciPy's BLAS count is not reachable")
def test_blas_threads_holds_the_kernels_blas_and_restores_it(restore_blas):
    runtime.set_blas_threads(2)
    with runtime.blas_threads(1):
        inside = runtime.blas_libraries()
    assert 1 in inside.values()  # SciPy's, which the kernels call
    assert set(runtime.blas_libraries().values()) == {2}


@pytest.mark.skipif(not (LINUX and runtime._numpy_blas()), reason="NumPy's BLAS count is not reachable")
def test_small_linear_products_run_numpy_blas_on_one_thread(restore_blas, monkeypatch):
    """Linear layers' small products hold NumPy's BLAS to one thread (its idle threads would spin beside
    the kernels' own), large ones leave it as the user set it, and the count is restored after each."""
    from fastconv import numpy_xp
    runtime.set_blas_threads(2)
    seen = []
    real = numpy_xp.np.matmul

    def spy(a, b):
        seen.append(runtime._numpy_blas()[0]())
        return real(a, b)
    monkeypatch.setattr(numpy_xp.np, "matmul", spy)
    x, w = np.ones((8, 16), np.float32), np.ones((4, 16), np.float32)
    y = numpy_xp.linear(x, w)
    numpy_xp.linear_grad(np.ones_like(y), x, w, y)
    monkeypatch.setattr(numpy_xp, "SMALL_GEMM", 8 * 16 * 4 - 1)
    numpy_xp.linear(x, w)
    assert seen == [1, 1, 1, 2]
    assert runtime._numpy_blas()[0]() == 2


# -------------------------------------------------------------------------------------- info
def test_info_states_the_facts(capsys):
    facts = info.config()
    omp = runtime.openmp()
    assert ("cython" in facts["backends"].split(", ")) == (omp is not None)
    if omp is None:
        assert facts["cython extension"].startswith("not built") and facts["cython openmp"] == "n/a"
    else:
        assert facts["cython extension"] == "built"
        assert facts["cython openmp"].startswith("yes" if omp.openmp_enabled() else "NO: serial build")
        assert facts["cython threads"] == omp.max_threads() == runtime.threads()
    assert facts["threads"].startswith(f"{runtime.threads()} (from {runtime.threads_source()};")
    assert facts["numba threads"] == numba.get_num_threads() == min(runtime.threads(),
                                                                     numba.config.NUMBA_NUM_THREADS)
    assert facts["openmp wait policy"] == runtime.wait_policy()
    assert facts["backends"].split(", ") == registry.available()
    assert facts["planner cache"].startswith(tune.cache_path() + " (")
    assert facts["default backend"] == plan.get_backend()
    assert facts["fastconv"].startswith(fastconv.__version__)
    assert cli.main(["info"]) == 0
    printed = dict(re.split(r"\s{2,}", line, maxsplit=1) for line in capsys.readouterr().out.splitlines())
    assert printed == {key: str(value) for key, value in facts.items()}


def test_info_explains_an_unbuilt_source_tree(tmp_path):
    """Python started in a checkout whose extensions were never compiled imports that checkout."""
    shutil.copytree(PACKAGE, tmp_path / "fastconv", ignore=shutil.ignore_patterns("*.so", "*.pyd", "__pycache__"))
    (tmp_path / "src_cython").mkdir()
    (tmp_path / "setup.py").write_text("")
    out = _python("import fastconv.cli; fastconv.cli.main(['info'])", tmp_path).stdout
    facts = dict(re.split(r"\s{2,}", line, maxsplit=1) for line in out.splitlines())
    assert facts["cython extension"].startswith(f"not built: Python imported the source tree {tmp_path}")
    assert "`pip install -e .`" in facts["cython extension"] and "run from another directory" in out
    assert "cython" not in facts["backends"].split(", ") and facts["cython openmp"] == "n/a"


def test_a_missing_extension_outside_a_source_tree_asks_for_a_compiler(monkeypatch):
    monkeypatch.setattr(_cy, "source_tree", lambda: None)
    assert _cy.not_built(ImportError("no _conv")).startswith("not built (no _conv): reinstall fastconv with a C")
