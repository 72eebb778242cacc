"""Shared fixtures: the project on sys.path, the operator plugin, the authors' released graphs."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

# The authors' released graph files live beside the checkout, never inside it.
RELEASED_SYMBOLS_DIR = os.path.normpath(
    os.path.join(ROOT, "..", "shared", "reference", "released_symbols"))


@pytest.fixture(scope="session")
def ops():
    """Loads build/libigc_ops.so (or $IGC_OPS_LIB) once; mx.nd/mx.sym.Reorder exist afterwards."""
    import utility
    return utility.load_ops()


@pytest.fixture(scope="session")
def run_on_threads(ops):
    """run(module, statement, threads): in a fresh process with OMP_NUM_THREADS=threads (OpenMP
    reads it once, at start-up) and the plugin loaded, imports the test module `module` as `t`
    and runs `statement`, which must succeed."""
    tests = os.path.join(ROOT, "tests")

    def run(module, statement, threads):
        script = (f"import sys; sys.path[:0] = [{ROOT!r}, {tests!r}]; import utility; "
                  f"utility.load_ops(); import {module} as t; {statement}")
        result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                                env=dict(os.environ, OMP_NUM_THREADS=str(threads)), timeout=300)
        assert result.returncode == 0, result.stderr[-2000:]
    return run


@pytest.fixture(scope="session")
def released_symbols_dir():
    if not os.path.isdir(RELEASED_SYMBOLS_DIR):
        pytest.skip(f"authors' released graphs not found at {RELEASED_SYMBOLS_DIR}")
    return RELEASED_SYMBOLS_DIR


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    """The demo set at its full size (5,000 + 1,000 images)."""
    from records import make_demo
    return make_demo(tmp_path_factory.mktemp("demo"), 5000, 1000)


@pytest.fixture(scope="module")
def small_demo_dir(tmp_path_factory):
    from records import make_demo
    return make_demo(tmp_path_factory.mktemp("small_demo"), 320, 100)
