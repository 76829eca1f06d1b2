import os
import sys
import tempfile

import pytest

sys.path.insert(0, os.path.dirname(__file__))  # tests import cases/helpers as plain modules
# The planner uses the kernels measured on this machine (autotune.json): the tests must not depend on
# what a user measured, so they get an empty cache of their own (subprocesses inherit it).
os.environ["FASTCONV_CACHE_DIR"] = tempfile.mkdtemp(prefix="fastconv-tests-")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATA = os.path.join(os.path.dirname(REPO), "shared", "data")


@pytest.fixture(scope="session")
def data_root():
    """Where the test data lives: $FASTCONV_DATA, else ../shared/data beside the repository."""
    root = os.environ.get("FASTCONV_DATA", SHARED_DATA)
    if not os.path.isdir(os.path.join(root, "mnist")):
        pytest.skip(f"MNIST not found under {root} (set FASTCONV_DATA)")
    return root
