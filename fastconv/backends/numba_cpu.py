"""The Numba CPU backend (``"numba"``): parallel compiled loops, and BLAS where a convolution is a GEMM.

Every convolution kernel runs one of three algorithms (the planner chooses, see ``model.numba_algorithm``):

- ``"direct"``: loops over the window (``_numba_loops.conv_*_direct``), one output plane per thread task.
  Used for depthwise and other thin groups, where each group's GEMM would be a matrix-vector product.
- ``"per_task"``: batches (a sample or more per thread): each Numba task builds the columns of a few
  samples, or of one sample's bands of rows, in a cache-sized buffer of its thread and multiplies them
  by BLAS (``np.dot``) on that thread, SciPy's OpenBLAS held to one thread meanwhile. The whole op is one
  parallel region: no hand-over between Numba's threads and BLAS's, which costs little on an idle
  machine but a great deal on a busy one (measured: 5-10x slower than PyTorch there, vs on par).
- ``"gemm"``: a single sample (or a BLAS that cannot be held to one thread): im2col (a parallel Numba
  kernel), then one BLAS product per group (``numpy.matmul`` on BLAS's own threads); col2im for the
  input gradient. Small samples are merged side by side, big ones cut into bands of rows, and a 1x1
  stride-1 unpadded convolution skips im2col (its input is its columns).

Columns and other temporaries live in per-thread workspaces reused from call to call: big buffers freed
and allocated again on every call cost page faults. Pooling, unpooling and their gradients are direct
loops over ``n*c`` planes. Signatures are those of ``reference`` (the conv kernels also take
``algorithm=`` to force one). Nothing compiles at import.
"""
import numba
import numpy as np

from .. import runtime
from ..shapes import is_pointwise
from . import _numba_loops as loops
from .registry import RESULT
from .workspaces import clear_workspaces, result, workspace  # noqa: F401 (part of this module's API)

runtime.start_pools()  # before Numba's first parallel loop loads OpenMP: the runtime's wait policy and threads

ALGORITHMS = ("direct", "gemm", "per_task")
#: Kernels that take 3-D specs too (max pooling of volumes: one pass over the input, its gradient a scatter
#: into flat volumes); the planner runs the others' 3-D specs through ``depth``.
DEPTH_OPS = ("max_pool2d", "max_pool2d_grad")
#: Operands whose NaN or inf an algorithm does not propagate as the reference does (the direct loops skip
#: the padding that the reference multiplies): the planner checks them (``registry.nonfinite_checks``).
NONFINITE_CHECKS = {"direct": {"conv2d": ("w",), "conv2d_grad_weight": (RESULT,)}}
MAX_COLUMN_BYTES = 8 << 20    # one sample's columns above this are cut into bands of output rows
MERGE_BYTES = 2 << 20         # samples' columns are put side by side up to this (about the L2 cache)
POINTWISE_MERGE_BELOW = 1024  # ... for a 1x1 conv only when a sample has fewer output pixels than this


# ----------------------------------------------------------------------------- convolution
BLAS_ONE_THREAD = 65536 * 4  # OpenBLAS runs a GEMM of at most this m*n*k on the calling thread
TASK_BYTES = 1 << 20         # columns of one "per_task" band, at most (half the L2 cache) ...
TASK_MERGE_BYTES = 256 << 10  # ... and of the samples one task merges (smaller blocks measured faster)


def sample_gemm_size(spec):
    """``m*n*k`` of one sample's GEMM for one group."""
    cig, cog = spec.c_in // spec.groups, spec.c_out // spec.groups
    return cog * cig * spec.kh * spec.kw * spec.oh * spec.ow


def _on_one_blas_thread(kernel, *args):
    """Run a ``per_task`` kernel with the kernels' BLAS held to one thread: each Numba task's product then
    runs on the task's own thread, never starting BLAS threads inside it."""
    with runtime.blas_threads(1):
        kernel(*args)


def num_threads():
    """Threads of Numba's parallel kernels."""
    return numba.get_num_threads()


def holds_blas():
    """Whether BLAS can be held to one thread inside each ``"per_task"`` task (SciPy's OpenBLAS)."""
    return runtime.blas_controllable()


def supports(op, spec, dtype, algorithm):
    """Every algorithm runs every convolution (float32 and float64)."""
    return algorithm in ALGORITHMS


#: Seconds per multiply-add of the convolution kernels on one core (the cost model's constant; only its
#: ratio to the FFT's constants matters).
SECONDS_PER_MAC = 6e-11


def seconds(op, spec, dtype, algorithm):
    """Model time of one convolution kernel (forward and both gradients cost the same)."""
    return SECONDS_PER_MAC * spec.flops / 2


def _task_shape(spec, itemsize):
    """``(nb, bh)``: samples per task and output rows per band. A band's columns stay within
    ``TASK_BYTES`` (and its GEMMs within ``BLAS_ONE_THREAD`` where BLAS cannot be held to one thread);
    samples that fit are merged up to ``TASK_MERGE_BYTES``; the task count is a multiple of the threads."""
    n, oh = spec.n, spec.oh
    row_bytes = spec.c_in * spec.kh * spec.kw * spec.ow * itemsize
    rows = max(1, TASK_BYTES // row_bytes)
    if not runtime.blas_controllable():
        rows = min(rows, max(1, BLAS_ONE_THREAD * spec.oh // max(1, sample_gemm_size(spec))))
    if rows < oh:
        return 1, -(-oh // -(-oh // rows))
    threads = numba.get_num_threads()
    tasks = -(-n // max(1, min(rows // oh, TASK_MERGE_BYTES // (row_bytes * oh))))
    tasks = -(-tasks // threads) * threads
    return max(1, -(-n // tasks)), oh


def _task_buffers(spec, dtype):
    """Per-thread columns ``(threads, C_in, kh, kw, nb, bh, ow)`` and GEMM rows ``(threads,
    C_out/groups, nb*bh*ow)`` of the ``"per_task"`` kernels."""
    nb, bh = _task_shape(spec, np.dtype(dtype).itemsize)
    threads = numba.config.NUMBA_NUM_THREADS
    cols = workspace("cols", (threads, spec.c_in, spec.kh, spec.kw, nb, bh, spec.ow), dtype)
    rows = workspace("task_rows", (threads, spec.c_out // spec.groups, nb * bh * spec.ow), dtype)
    return cols, rows


def _grouped(a, spec, c):
    """``(N, groups, c/groups, oh*ow)`` view of an ``(N, c, oh, ow)`` array."""
    return a.reshape(spec.n, spec.groups, c // spec.groups, spec.oh * spec.ow)


def _blocks(spec, itemsize):
    """The GEMM blocks ``(n0, nb, oy0, bh)``: output rows ``oy0 .. oy0+bh`` of samples ``n0 .. n0+nb``.

    As many samples are merged as fit ``MERGE_BYTES``: fewer, wider GEMMs, and fewer hand-overs between
    Numba's threads and BLAS's. A 1x1 conv merges only small images (merging copies the input it
    otherwise reads in place). A sample whose columns exceed ``MAX_COLUMN_BYTES`` is cut into bands of
    rows. Blocks are balanced in size.
    """
    n, oh, ow = spec.n, spec.oh, spec.ow
    row_bytes = spec.c_in * spec.kh * spec.kw * ow * itemsize
    if row_bytes * oh > MAX_COLUMN_BYTES:
        bh = max(1, MAX_COLUMN_BYTES // row_bytes)
        bh = -(-oh // -(-oh // bh))
        return [(m, 1, oy0, min(bh, oh - oy0)) for m in range(n) for oy0 in range(0, oh, bh)]
    merge = not is_pointwise(spec) or oh * ow < POINTWISE_MERGE_BELOW
    nb = max(1, min(n, MERGE_BYTES // (row_bytes * oh))) if merge else 1
    nb = -(-n // -(-n // nb)) if n else 1
    return [(n0, min(nb, n - n0), 0, oh) for n0 in range(0, n, nb)]


def _columns(x, spec, n0, nb, oy0, bh):
    """The columns of a block as ``(groups, C_in/groups * kh * kw, nb * bh * ow)``."""
    g = spec.groups
    if nb == 1 and is_pointwise(spec):  # the input is its own columns
        return x[n0].reshape(g, spec.c_in // g, -1)[:, :, oy0 * spec.w:(oy0 + bh) * spec.w]
    cols = workspace("cols", (spec.c_in, spec.kh, spec.kw, nb, bh, spec.ow), x.dtype)
    loops.im2col(x, n0, oy0, cols, *spec.window)
    return cols.reshape(g, -1, nb * bh * spec.ow)


def _block_rows(a3, spec, n0, nb, oy0, bh, name):
    """Block rows of an ``(N, C, oh*ow)`` array as ``(groups, C/groups, nb * bh * ow)``: a view of one
    sample's band, or the samples copied side by side into workspace ``name``."""
    ow = spec.ow
    if nb == 1:
        return a3[n0].reshape(spec.groups, -1, a3.shape[2])[:, :, oy0 * ow:(oy0 + bh) * ow]
    out = workspace(name, (a3.shape[1], nb, a3.shape[2]), a3.dtype)
    loops.merge(a3, n0, out)
    return out.reshape(spec.groups, -1, nb * a3.shape[2])


def _bias(b, c_out, dtype):
    return np.zeros(c_out, dtype) if b is None else b


def conv2d(x, w, b, spec, algorithm):
    y = result(spec.y_shape, x.dtype)
    if spec.n == 0:  # empty batch: nothing to compute (and the reshapes below would be ambiguous)
        return y
    if algorithm == "direct":
        loops.conv_direct(x, w, _bias(b, spec.c_out, x.dtype), y, *spec.window)
        return y
    if algorithm == "per_task":
        _on_one_blas_thread(loops.conv_per_task, x, w.reshape(spec.groups, spec.c_out // spec.groups, -1),
                            _bias(b, spec.c_out, x.dtype), _grouped(y, spec, spec.c_out),
                            *_task_buffers(spec, x.dtype), *spec.window)
        return y
    wg = w.reshape(spec.groups, spec.c_out // spec.groups, -1)
    y3 = y.reshape(spec.n, spec.c_out, -1)
    blocks = _blocks(spec, x.itemsize)
    merged = any(nb > 1 for _, nb, _, _ in blocks)
    for n0, nb, oy0, bh in blocks:
        cols = _columns(x, spec, n0, nb, oy0, bh)
        if merged:
            out = workspace("gemm_out", wg.shape[:2] + cols.shape[2:], x.dtype)
            np.matmul(wg, cols, out=out)
            loops.unmerge(out.reshape(spec.c_out, nb, -1), n0, _bias(b, spec.c_out, x.dtype), y3)
        else:
            np.matmul(wg, cols, out=_block_rows(y3, spec, n0, 1, oy0, bh, None))
    if b is not None and not merged:
        loops.add_bias(y3, b)
    return y


def conv2d_grad_input(gy, w, spec, algorithm):
    gx = result(spec.x_shape, gy.dtype)
    if spec.n == 0:
        return gx
    if algorithm == "direct":
        loops.conv_grad_input_direct(gy, w, gx, *spec.window)
        return gx
    if algorithm == "per_task":
        _on_one_blas_thread(loops.conv_grad_input_per_task, _grouped(gy, spec, spec.c_out),
                            w.reshape(spec.groups, spec.c_out // spec.groups, -1), gx,
                            *_task_buffers(spec, gy.dtype), *spec.window)
        return gx
    wt = w.reshape(spec.groups, spec.c_out // spec.groups, -1).transpose(0, 2, 1)
    gy3 = gy.reshape(spec.n, spec.c_out, -1)
    pointwise = is_pointwise(spec)
    for n0, nb, oy0, bh in _blocks(spec, gy.itemsize):
        gyc = _block_rows(gy3, spec, n0, nb, oy0, bh, "gy_merged")
        if nb == 1 and pointwise:  # the columns are the input gradient itself
            gx3 = gx.reshape(spec.n, spec.c_in, -1)
            np.matmul(wt, gyc, out=_block_rows(gx3, spec, n0, 1, oy0, bh, None))
            continue
        cols = workspace("cols", (spec.c_in, spec.kh, spec.kw, nb, bh, spec.ow), gy.dtype)
        np.matmul(wt, gyc, out=cols.reshape(wt.shape[0], wt.shape[1], -1))
        loops.col2im(cols, n0, oy0, gx, oy0 == 0, *spec.window)
    return gx


def conv2d_grad_weight(gy, x, spec, algorithm):
    gw = np.zeros(spec.w_shape, gy.dtype)
    if spec.n == 0:
        return gw
    if algorithm == "direct":
        loops.conv_grad_weight_direct(gy, x, gw, *spec.window)
        return gw
    if algorithm == "per_task":
        g, cog, threads = spec.groups, spec.c_out // spec.groups, numba.config.NUMBA_NUM_THREADS
        parts = workspace("gw_parts", (threads, g, cog, gw.size // spec.c_out), gy.dtype)
        parts[...] = 0
        cols, rows = _task_buffers(spec, gy.dtype)
        _on_one_blas_thread(loops.conv_grad_weight_per_task, _grouped(gy, spec, spec.c_out), x, parts, rows,
                            workspace("gw_prod", (threads,) + parts.shape[2:], gy.dtype), cols,
                            *spec.window)
        return parts.sum(axis=0).reshape(spec.w_shape)
    gw3 = gw.reshape(spec.groups, spec.c_out // spec.groups, -1)
    gy3 = gy.reshape(spec.n, spec.c_out, -1)
    part = workspace("gemm_gw", gw3.shape, gy.dtype)
    for n0, nb, oy0, bh in _blocks(spec, gy.itemsize):
        gyc = _block_rows(gy3, spec, n0, nb, oy0, bh, "gy_merged")
        np.matmul(gyc, _columns(x, spec, n0, nb, oy0, bh).transpose(0, 2, 1), out=part)
        gw3 += part
    return gw


# ---------------------------------------------------------------------------------- pooling
def max_pool2d(x, spec):
    y = result(spec.y_shape, x.dtype)
    indices = result(spec.y_shape, np.int64)
    if spec.dims == 3:
        loops.max_pool3d(x, y, indices, spec.kd, spec.kh, spec.kw, *spec.window3)
    else:
        loops.max_pool(x, y, indices, spec.kh, spec.kw, *spec.window)
    return y, indices


def _planes(a):
    """``(N*C, H*W)`` view of an NCHW (or NCDHW) array (explicit sizes: ``reshape(-1)`` fails for an empty
    batch)."""
    n, c = a.shape[:2]
    return a.reshape(n * c, int(np.prod(a.shape[2:])))


def max_pool2d_grad(gy, indices, spec):
    gx = result(spec.x_shape, gy.dtype)
    loops.scatter(_planes(gy), _planes(indices), _planes(gx), True)
    return gx


def avg_pool2d(x, spec):
    y = result(spec.y_shape, x.dtype)
    loops.avg_pool(x, y, spec.divisors(x.dtype), spec.kh, spec.kw, *spec.window[:4])
    return y


def avg_pool2d_grad(gy, spec):
    gx = result(spec.x_shape, gy.dtype)
    loops.avg_pool_grad(gy, gx, spec.divisors(gy.dtype), spec.kh, spec.kw, *spec.window[:4])
    return gx


def max_unpool2d(x, indices, out_hw):
    n, c = x.shape[:2]
    y = result((n, c) + tuple(out_hw), x.dtype)
    loops.scatter(_planes(x), _planes(indices), _planes(y), False)
    return y


def max_unpool2d_grad(gy, indices):
    n, c = gy.shape[:2]
    gx = result(indices.shape, gy.dtype)
    loops.gather(_planes(gy), _planes(indices), _planes(gx))
    return gx
