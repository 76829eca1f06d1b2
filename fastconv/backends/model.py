"""The default choice of kernel on the CPU: every rule and threshold, each with the measurement behind it.

``choose(op, spec, dtype, backends)`` picks one of ``backends`` (the candidates that load here and run
``op``; a single one when the user forced it) and one of its algorithms, and says why. The planner
(``plan``) asks it when nothing was measured for the spec; measurements (``tune``) override it.

The rules, in order, for the kernels of a convolution:

1. FFT for big kernels: ``"fft"`` when the kernel has at least ``FFT_MIN_TAPS`` taps and its model time
   (``fft.seconds``: transforms and per-frequency products) undercuts the direct backend's
   (``seconds``: multiply-adds) by ``FFT_MARGIN``; long 1-D signals run it in blocks (``"overlap"``).
2. Else the first direct backend of the op's preference (``PREFERENCE``; wide GEMMs prefer Numba's
   per-task path unless Cython's register-blocked kernel runs the pass), with that backend's algorithm:
   :func:`cython_algorithm`, :func:`numba_algorithm`.
3. Rank-1 kernels: the planner runs :func:`separable_worthwhile` specs as two 1-D passes where the
   weight is rank 1 (a property of the values, checked per call), else as rule 2 says.

Pooling and unpooling: the first backend of the op's preference. Every number here was measured with
``bench/compare.py`` or the asv suite ``Conv2dAlgorithms`` on a 2-core AVX-512 machine, 2 threads.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import shapes
from . import registry

#: Direct backends in order of preference, per op (ops not listed use ``DEFAULT_PREFERENCE``). The
#: Cython kernels won most shapes (LeNet layers, 1-D, pooling, most backward passes); Numba won large
#: average pooling by a little.
DEFAULT_PREFERENCE = ("cython", "numba", "numpy")
PREFERENCE = {"avg_pool2d": ("numba", "cython", "numpy")}
#: Wide GEMMs (>= 128 output channels per group over a reduction of >= 256) ran faster on Numba's
#: per-task GEMM path (resnet_s2, pointwise: 0.81 -> 0.84 and 0.86 -> 0.97 of PyTorch's speed, forward),
#: except the float32 passes that Cython runs register-blocked.
WIDE_GEMM_PREFERENCE = ("numba", "cython", "numpy")
WIDE_GEMM_OUT, WIDE_GEMM_REDUCTION = 128, 256
#: Kernels with fewer taps never go to the FFT, whatever the model says (its error is largest there).
FFT_MIN_TAPS = 25
#: The FFT must be predicted this many times faster than the direct backend to be chosen.
FFT_MARGIN = 1.25
#: Rank-1 kernels run as two 1-D passes for specs with at least this many taps and at most this many
#: channel pairs per group (the passes' intermediate holds that many planes per input image).
SEPARABLE_MIN_TAPS = 25
SEPARABLE_MAX_PAIRS = 16

#: Below these Cython's register-blocked kernel loses to its GEMM path (see :func:`cython_algorithm`).
BLOCKED_MIN_CHANNELS = 8     # output channels per group of the tile (input channels for the input gradient)
BLOCKED_MIN_PIXELS = 32      # output pixels per sample: the weight gradient's reduction
BLOCKED_MAX_PADDING = 0.25   # share of the adjoint's input that is padding (input gradient)
BLOCKED_MIN_TAPS = 16        # reduction length of a forward tile (input channels per group x kernel taps)
BLOCKED_MIN_FLOPS = 2e6      # forward passes smaller than this are dominated by the call's set-up
#: Numba's direct loops for fewer output channels per group than this (each group's GEMM would be a
#: matrix-vector product).
NUMBA_DIRECT_BELOW = 4
#: Algorithms whose float32 results carry more rounding error than a direct sum; ``exact`` plans skip them.
INEXACT = ("fft",)


@dataclass(frozen=True)
class Choice:
    backend: str
    algorithm: str | None
    reason: str
    seconds: float | None = None   # the model's time for one call (one core), where it has one


def seconds(backend, op, spec, dtype, algorithm=None):
    """The model time of one call, from the backend's own estimate (``seconds``), or None."""
    estimate = getattr(registry.load(backend), "seconds", None)
    if estimate is None or spec is None or op not in registry.CONV_OPS:
        return None
    return estimate(op, spec, dtype, algorithm)


def choose(op, spec, dtype, backends):
    """The backend and algorithm for ``op`` on ``spec`` among ``backends``, and the reason."""
    directs = [b for b in preference(op, spec, dtype) if b in backends]
    if not directs:  # only non-direct candidates: the user forced one
        backend = backends[0]
        algorithm = (_fft_algorithm(spec) if backend == "fft" else registry.algorithms(backend, op)[0])
        return Choice(backend, algorithm, f"forced backend {backend!r}",
                      seconds(backend, op, spec, dtype, algorithm))
    direct = directs[0]
    algorithm, why = direct_algorithm(direct, op, spec, dtype)
    direct_s = seconds(direct, op, spec, dtype, algorithm)
    if "fft" in backends and op in registry.CONV_OPS and spec.kh * spec.kw >= FFT_MIN_TAPS:
        fft_algorithm = _fft_algorithm(spec)
        fft_s = seconds("fft", op, spec, dtype, fft_algorithm)
        if FFT_MARGIN * fft_s < direct_s:
            return Choice("fft", fft_algorithm, f"model: fft {1e3 * fft_s:.3g} ms x {FFT_MARGIN} < {direct} "
                          f"{1e3 * direct_s:.3g} ms (one core)", fft_s)
    return Choice(direct, algorithm, why, direct_s)


def preference(op, spec, dtype):
    """Direct backends in order of preference for ``op`` on ``spec``."""
    if (op in registry.CONV_OPS and spec is not None and spec.c_out // spec.groups >= WIDE_GEMM_OUT
            and (spec.c_in // spec.groups) * spec.kh * spec.kw >= WIDE_GEMM_REDUCTION
            and cython_algorithm(op, spec, dtype)[0] != "blocked"):
        return WIDE_GEMM_PREFERENCE
    return PREFERENCE.get(op, DEFAULT_PREFERENCE)


def direct_algorithm(backend, op, spec, dtype):
    """``(algorithm, reason)`` of a direct backend for ``op`` on ``spec``."""
    if op not in registry.CONV_OPS or registry.algorithms(backend, op) == (None,):
        return None, f"{backend}: first backend of the preference for {op}"
    rule = {"cython": cython_algorithm, "numba": numba_algorithm}[backend]
    return rule(op, spec, dtype)


def _fft_algorithm(spec):
    return "overlap" if registry.load("fft").long_signal(spec) else "whole"


def cython_algorithm(op, spec, dtype):
    """Cython's algorithm for ``op`` on ``spec``. The matrix products of im2col + GEMM have ``C_out/groups``
    rows and ``C_in/groups * kh * kw`` columns; when both channel counts per group are tiny (depthwise:
    1 and 1) they are too thin to beat the direct loops, which are memory-bound. Elsewhere the
    register-blocked kernel runs where it applies and was measured faster (2 threads, ms, blocked
    against GEMM):

    - forward passes with 8 or more output channels per group (a tile's vector of channels is then
      mostly full: LeNet's C1, 6 channels, 0.99 against 0.72 at batch 128), pointwise too
      (x(16, 256, 28, 28), w(128, 256, 1, 1): 4.8 against 6.1), except one-pixel outputs (LeNet's C5),
      reductions of fewer than 16 taps (MNIST-1D's first layer, one input channel: 0.066 against
      0.021) and passes under 2 MFLOP (its third: 0.085 against 0.060; its second, 3.8 MFLOP: 0.116
      against 0.149);
    - input gradients with 8 or more input channels per group (lenet_c3's 6: 0.78 against 0.32) whose
      adjoint reads at most 25% padding (vgg_3x3 9.3 against 11.5; LeNet's C5, 1x1 outputs padded to
      9x9: 2.1 against 0.35), pointwise excepted (5.7 against 4.9);
    - weight gradients of stride-1 convolutions with 8 or more output channels per group and at least
      32 output pixels per sample to reduce over (vgg_3x3 11.8 against 14.0, dilated 3.6 against 5.1,
      lenet_c3 0.75 against 1.8; 4x4 outputs: 1.0 against 0.8; resnet_s2's stride 2: 6.1 against 5.6),
      pointwise excepted (5.9 against 5.3).
    """
    cig, cog = spec.c_in // spec.groups, spec.c_out // spec.groups
    pointwise, pixels = shapes.is_pointwise(spec), spec.oh * spec.ow
    if not pointwise and cig * cog <= 4:
        return "direct", "cython:direct: at most 4 channel pairs per group (depthwise-like)"
    if not registry.supports("cython", op, spec, dtype, "blocked"):
        why = "float32 only" if np.dtype(dtype) != np.float32 else "no stride-1 adjoint"
        return "gemm", f"cython:gemm: the register-blocked kernel does not run this ({why})"
    losing = {  # the first measured limit this pass is outside of, if any
        "conv2d": [(cog < BLOCKED_MIN_CHANNELS, f"{cog} < {BLOCKED_MIN_CHANNELS} output channels per group"),
                   (pixels == 1, "one output pixel"),
                   (spec.flops < BLOCKED_MIN_FLOPS, f"{spec.flops / 1e6:.2g} < {BLOCKED_MIN_FLOPS / 1e6:g} MFLOP"),
                   (cig * spec.kh * spec.kw < BLOCKED_MIN_TAPS,
                    f"{cig * spec.kh * spec.kw} < {BLOCKED_MIN_TAPS} taps per output")],
        "conv2d_grad_input": [(cig < BLOCKED_MIN_CHANNELS, f"{cig} < {BLOCKED_MIN_CHANNELS} input channels per group"),
                              (pointwise, "pointwise"),
                              (shapes.adjoint_padding(spec) > BLOCKED_MAX_PADDING,
                               f"the adjoint reads {shapes.adjoint_padding(spec):.0%} > "
                               f"{BLOCKED_MAX_PADDING:.0%} padding")],
        "conv2d_grad_weight": [(cog < BLOCKED_MIN_CHANNELS, f"{cog} < {BLOCKED_MIN_CHANNELS} output channels per group"),
                               (pixels < BLOCKED_MIN_PIXELS, f"{pixels} < {BLOCKED_MIN_PIXELS} output pixels"),
                               (spec.stride != (1, 1), "strided"), (pointwise, "pointwise")],
    }[op]
    why = next((text for failed, text in losing if failed), None)
    if why is None:
        return "blocked", "cython:blocked: register-blocked kernel, within its measured limits"
    return "gemm", f"cython:gemm: the register-blocked kernel loses here ({why})"


def numba_algorithm(op, spec, dtype):
    """Numba's algorithm: ``"direct"`` for thin groups (fewer than 4 output channels per group:
    depthwise), where each group's GEMM would be a matrix-vector product; else ``"per_task"`` when there
    are samples for every thread and BLAS can be held to one thread inside each task (or the GEMMs are
    small enough for it to stay there by itself): the whole op is then one parallel region; else
    ``"gemm"``."""
    if spec.c_out // spec.groups < NUMBA_DIRECT_BELOW:
        return "direct", f"numba:direct: fewer than {NUMBA_DIRECT_BELOW} output channels per group"
    numba_cpu = registry.load("numba")
    small = numba_cpu.sample_gemm_size(spec) <= numba_cpu.BLAS_ONE_THREAD
    if spec.n >= max(2, numba_cpu.num_threads()) and (small or numba_cpu.holds_blas()):
        return "per_task", "numba:per_task: a sample or more per thread, BLAS on the task's thread"
    return "gemm", "numba:gemm: fewer samples than threads (BLAS threads each product)"


def separable_worthwhile(op, spec):
    """Whether ``op`` on ``spec`` should check its weight for rank 1: big enough kernels, few channel
    pairs, and fewer multiply-adds in the two passes."""
    if op not in ("conv2d", "conv2d_grad_input") or spec is None:
        return False
    pairs = (spec.c_in // spec.groups) * (spec.c_out // spec.groups)
    passes = spec.oh * spec.w * spec.kh + spec.oh * spec.ow * spec.kw
    return (spec.kh > 1 and spec.kw > 1 and spec.kh * spec.kw >= SEPARABLE_MIN_TAPS
            and pairs <= SEPARABLE_MAX_PAIRS and passes < spec.oh * spec.ow * spec.kh * spec.kw)
