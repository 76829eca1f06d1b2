"""Without a usable GPU (and without the simulator), asking for CUDA is a clear RuntimeError, and nothing
CUDA-related happens at import time. Runs in the normal CPU test run, in a subprocess whose environment
hides any GPU (``NUMBA_DISABLE_CUDA=1``) and disables the simulator."""
import os
import subprocess
import sys
import textwrap

import fastconv

SCRIPT = textwrap.dedent("""
    import numpy as np
    import fastconv as fc
    import fastconv.functional as F
    import fastconv.gpu.backend, fastconv.gpu.xp, fastconv.gpu.optim  # importing the GPU code needs no GPU
    from fastconv.backends import plan

    assert not fc.cuda.is_available()
    assert "cuda" not in fc.available_backends()
    fc.show_config()

    def expect(exc, fn, words):
        try:
            fn()
        except exc as err:
            assert all(w in str(err) for w in words), str(err)
            print("raised", type(err).__name__)
        else:
            raise AssertionError(f"{fn} did not raise {exc}")

    x = np.ones((1, 1, 4, 4), np.float32)
    expect(RuntimeError, lambda: fc.tensor(x, device="cuda"), ["no CUDA GPU", "NUMBA_ENABLE_CUDASIM"])
    expect(RuntimeError, lambda: fc.tensor(x).to("cuda"), ["no CUDA GPU"])
    expect(RuntimeError, lambda: fc.nn.Linear(2, 2).to("cuda"), ["no CUDA GPU"])
    expect(RuntimeError, lambda: plan.set_backend("cuda"), ["GPU"])
    expect(ValueError, lambda: F.conv2d(x, np.ones((1, 1, 3, 3), np.float32), backend="cuda"), ["GPU"])
    print("OK")
""")


def test_cuda_requested_without_gpu_is_a_clear_error(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("NUMBA_ENABLE_CUDASIM")}
    env["NUMBA_DISABLE_CUDA"] = "1"
    env["PYTHONPATH"] = os.path.dirname(os.path.dirname(os.path.abspath(fastconv.__file__)))  # this fastconv
    done = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300,
                          cwd=tmp_path)
    assert done.returncode == 0 and done.stdout.strip().endswith("OK"), done.stdout + done.stderr
    assert done.stdout.count("raised") == 5
