"""Shared fixtures: the project on sys.path, the operator plugin, the authors' released graphs."""
import os
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
