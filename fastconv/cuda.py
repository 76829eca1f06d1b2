"""The GPU seen from the user: ``fc.cuda.is_available()``, a clear error where a GPU is asked for but absent,
and :func:`profile`, which records every kernel launch."""
import contextlib
import functools


@functools.lru_cache(maxsize=None)
def is_available():
    """True when Numba can launch CUDA kernels here (a GPU, or Numba's CUDA simulator)."""
    try:
        from numba import cuda
        return bool(cuda.is_available())
    except Exception:  # numba without a CUDA target, broken driver, ...
        return False


def is_simulator():
    """True when CUDA kernels run under Numba's simulator (``NUMBA_ENABLE_CUDASIM=1``)."""
    from numba import config
    return bool(getattr(config, "ENABLE_CUDASIM", False))


def require():
    """Raise a RuntimeError that says what to do when no GPU is usable."""
    if not is_available():
        raise RuntimeError(
            "device='cuda' was requested but no CUDA GPU is available (numba.cuda.is_available() is "
            "False). Install the GPU extra (pip install 'fastconv[gpu]') on a machine with an NVIDIA GPU "
            "and driver, or set NUMBA_ENABLE_CUDASIM=1 to run the CUDA kernels in Numba's simulator, "
            "or use device='cpu'.")


def device_name():
    """The GPU's name, 'simulator', or None."""
    if not is_available():
        return None
    if is_simulator():
        return "simulator"
    from numba import cuda
    name = cuda.get_current_device().name
    return name.decode() if isinstance(name, bytes) else str(name)


@contextlib.contextmanager
def profile(count_only=False):
    """Record every GPU kernel launch made inside the block: kernel, category, grid, block, bytes of its
    array arguments, host microseconds and, on a GPU, the kernel's microseconds. ::

        with fc.cuda.profile() as prof:
            loss = F.cross_entropy(model(x), y); loss.backward(); opt.step()
        print(prof.summary())   # 21 launches (gemm 9, conv 2, ...); 35.2 us host per launch; ...
        print(prof.table())     # per kernel, Markdown

    ``count_only=True`` records the launches without running them (outputs hold whatever memory held),
    with a GPU's launch shapes: under the simulator, a training step is counted in a fraction of a second.
    """
    require()
    from .gpu import launch
    recorder = launch.Profile(count_only=count_only)
    previous = launch.start_profile(recorder)
    try:
        yield recorder
    finally:
        launch.stop_profile(previous)
