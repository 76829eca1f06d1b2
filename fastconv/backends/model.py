"""The default choice of kernel on the CPU: every rule and threshold, each with the measurement behind it.

``choose(op, spec, dtype, backends)`` picks one of ``backends`` (the candidates that load here and run
``op``; a single one when the user forced it) and one of its algorithms, and says why. The planner
(``plan``) asks it when nothing was measured for the spec; measurements (``tune``) override it.

The rules, in order, for the kernels of a convolution:

1. Winograd for stride-1 3x3 float32 layers with enough channels (:func:`winograd_wins`).
   FFT for big kernels: ``"fft"`` when the kernel has at least ``FFT_MIN_TAPS`` taps and its model time
   (``fft.seconds``: transforms and per-frequency products) undercuts the direct backend's
   (``seconds``: multiply-adds) by ``FFT_MARGIN``; long 1-D signals run it in blocks (``"overlap"``).
2. Else the first direct backend of the op's preference (``PREFERENCE``; wide float64 GEMMs prefer
   Numba's per-task path), with that backend's algorithm: :func:`cython_algorithm`, :func:`numba_algorithm`.
3. Rank-1 kernels: the planner runs :func:`separable_worthwhile` specs as two 1-D passes where the
   weight is rank 1 (a property of the values, checked per call), else as rule 2 says.

Pooling and unpooling: the first backend of the op's preference. Every number here was measured with
``fastconv bench`` or the asv suite ``Conv2dAlgorithms`` (each kernel with each algorithm forced, in blocks
of back-to-back calls) on a 2-core AVX-512 AMD EPYC, 2 threads, float32 GEMM 250 GFLOP/s; ms per call.
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
#: (Max pooling: Cython's window-by-window kernel beats Numba's two passes on small and large maps, 2x2
#: windows, ms, Cython against Numba: (128, 6, 28, 28) 0.14 against 0.51, (32, 128, 28, 28) 0.79 against
#: 2.7, (2, 64, 56, 56) 0.11 against 0.29; (8, 64, 112, 112) 4.7 against 4.2 is within the run's noise.)
#: Wide float64 GEMMs (>= 128 output channels per group over a reduction of >= 256) run faster on Numba's
#: per-task GEMM path than on Cython's im2col + GEMM (resnet_s2 forward / input / weight gradient 9.3 / 9.5
#: / 10.2 against 16.5 / 17.9 / 17.4, pointwise 17.0 / 8.7 / 11.4 against 19.1 / 14.0 / 16.0); in float32
#: Cython wins them (resnet_s2's input gradient: GEMM 5.1 against 8.6).
WIDE_GEMM_PREFERENCE = ("numba", "cython", "numpy")
WIDE_GEMM_OUT, WIDE_GEMM_REDUCTION = 128, 256
#: Input gradients of strided convolutions whose windows do not overlap (kernel no larger than the
#: stride: patchify layers, 2x2 stride-2 downsampling, the transposed convolutions that upsample) run
#: faster on Numba's per-task GEMMs than on Cython's im2col + GEMM, whose column-to-image pass is made for
#: overlapping windows (float32 ms: 2x2 stride 2, 64 -> 128 channels at 56x56, batch 8: 2.2 against 4.5;
#: the 3-D U-Net's 2x2x2 upsampling, folded: 4.2 against 7.5); with overlapping windows Cython wins
#: (resnet_s2, 3x3 stride 2: 5.1 against 8.6; AlexNet's 11x11 stride 4: 7.3 against 14). Where Numba would
#: not run per task (fewer samples than threads) Cython's GEMM stays first.
DISJOINT_WINDOWS_PREFERENCE = ("numba", "cython", "numpy")
#: Kernels with fewer taps never go to the FFT, whatever the model says (its error is largest there).
FFT_MIN_TAPS = 25
#: The FFT must be predicted this many times faster than the direct backend to be chosen.
FFT_MARGIN = 1.25
#: Rank-1 kernels run as two 1-D passes for specs with at least this many taps and at most this many
#: channel pairs per group (the passes' intermediate holds that many planes per input image).
SEPARABLE_MIN_TAPS = 25
SEPARABLE_MAX_PAIRS = 16

#: Below these Cython's register-blocked kernel loses to its GEMM path (see :func:`cython_algorithm`).
BLOCKED_MIN_CHANNELS = 4     # output channels per group of the tile (forward pass and weight gradient)
BLOCKED_MIN_INPUT_CHANNELS = 8  # input channels per group (the input gradient's tile)
# (neither applies where the tile of pixel vectors runs instead: see :func:`cython_algorithm`)
BLOCKED_MAX_PADDING = 0.9    # share of the adjoint's input that is padding (input gradient)
BLOCKED_MIN_TAPS = 16        # reduction length of a forward tile (input channels per group x kernel taps)
BLOCKED_MIN_PHASE_FLOPS = 8e6  # a strided input gradient's flops per input phase (one blocked pass each)
#: Cython's direct loops, where the register-blocked kernel does not run, for at most this many channel
#: pairs per group (input x output channels): GEMMs that thin lose to the loops; forward passes and weight
#: gradients of kernels with ``DIRECT_WIDE_TAPS`` or more taps up to ``DIRECT_MAX_PAIRS_WIDE`` pairs
#: (see :func:`cython_algorithm`).
DIRECT_MAX_PAIRS, DIRECT_MAX_PAIRS_WIDE, DIRECT_WIDE_TAPS = 4, 16, 9
#: Numba's direct loops for fewer output channels per group than this (each group's GEMM would be a
#: matrix-vector product).
NUMBA_DIRECT_BELOW = 4
#: Backends whose own kernels for 3-D specs (their ``DEPTH_OPS``) beat the depth decomposition of the 2-D
#: plan (``depth``), per op; every other 3-D spec runs through it. Numba's max pooling of volumes reads the
#: input once, where the decomposition pools each slice and then reduces over depth (bench/compare.py
#: --volumes, maxpool3d: see the README's table).
NATIVE_VOLUMES = {"max_pool2d": ("numba",), "max_pool2d_grad": ("numba",)}
#: Winograd (stride-1 3x3, float32) where the harmonic mean of the input and output channels per group
#: is at least this (twice this for dilations over ``winograd.dense_dilation()``: 2 with AVX-512) and the
#: layer has at least ``WINOGRAD_MIN_FLOPS`` direct flops: its transforms cost in proportion to each
#: channel count, its products to both, and each call pays for its weights' transform. Against the
#: register-blocked kernel, forward / input gradient / weight gradient ms, batch 8 unless said: 24
#: channels at 56x56 0.49 / 0.49 / 0.58 against 0.78 / 0.78 / 0.80, at 28x28 0.18 / 0.18 / 0.20 against
#: 0.20 / 0.21 / 0.22; 32 at 28x28 in 4 groups (grouped_3x3) 0.80 / 0.81 / 0.93 against 1.05 / 1.06 / 1.07;
#: 64 at 14x14 0.21 / 0.21 / 0.20 against 0.26 / 0.26 / 0.31; batch 1, 24 at 56x56 (32 MFLOP) 0.094 /
#: 0.096 / 0.101 against 0.101 / 0.106 / 0.113; dilation 2 at 64x64 with 20 channels 0.48 / 0.48 / 0.60
#: against 0.84 / 0.85 / 0.88, with 32 (the dilated shape) 0.85 / 0.83 / 0.88 against 1.34 / 1.33 / 1.40;
#: dilation 3 with 64 channels at 48x48 2.6 / 2.6 / 2.8 against 3.3 / 3.2 / 3.8, with 48 at 64x64 3.8 / 3.7
#: / 4.2 against 4.4 / 4.4 / 3.9. It loses with 16 channels (56x56: 0.31 / 0.31 / 0.34 against 0.29 / 0.29
#: / 0.29), dilation 3 with 32 (2.0 / 2.0 / 2.3-2.4 against 1.5 / 1.5 / 1.7) and on small layers (batch 1,
#: 64 at 14x14, 15 MFLOP: 0.056 / 0.056 / 0.050 against 0.042 / 0.045 / 0.044; 32 at 14x14, 29 MFLOP:
#: 0.091 / 0.091 / 0.099 against 0.076 / 0.079 / 0.089).
WINOGRAD_MIN_CHANNELS = 24
WINOGRAD_MIN_FLOPS = 32e6
#: Backends whose float32 results carry more rounding error than a direct sum; ``exact`` plans skip them.
INEXACT = ("fft", "winograd")


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
        algorithm = {"fft": _fft_algorithm, "winograd": _winograd_algorithm}.get(
            backend, lambda spec: registry.algorithms(backend, op)[0])(spec)
        return Choice(backend, algorithm, f"forced backend {backend!r}",
                      seconds(backend, op, spec, dtype, algorithm))
    direct = directs[0]
    algorithm, why = direct_algorithm(direct, op, spec, dtype)
    direct_s = seconds(direct, op, spec, dtype, algorithm)
    if "winograd" in backends and winograd_wins(op, spec, dtype):
        tile = _winograd_algorithm(spec)
        return Choice("winograd", tile, f"winograd:{tile}: stride-1 3x3 float32, channels per group in and "
                      f"out of harmonic mean >= {WINOGRAD_MIN_CHANNELS} (x2 dilated over "
                      f"{registry.load('winograd').dense_dilation()}), >= "
                      f"{WINOGRAD_MIN_FLOPS / 1e6:.0f} MFLOP", seconds("winograd", op, spec, dtype, tile))
    if "fft" in backends and op in registry.CONV_OPS and spec.kh * spec.kw >= FFT_MIN_TAPS:
        fft_algorithm = _fft_algorithm(spec)
        fft_s = seconds("fft", op, spec, dtype, fft_algorithm)
        if FFT_MARGIN * fft_s < direct_s:
            return Choice("fft", fft_algorithm, f"model: fft {1e3 * fft_s:.3g} ms x {FFT_MARGIN} < {direct} "
                          f"{1e3 * direct_s:.3g} ms (one core)", fft_s)
    return Choice(direct, algorithm, why, direct_s)


def preference(op, spec, dtype):
    """Direct backends in order of preference for ``op`` on ``spec``."""
    if (op == "conv2d_grad_input" and spec is not None and spec.stride != (1, 1)
            and spec.kh <= spec.stride[0] and spec.kw <= spec.stride[1] and registry.usable("numba")
            and numba_algorithm(op, spec, dtype)[0] == "per_task"):
        return DISJOINT_WINDOWS_PREFERENCE
    if (op in registry.CONV_OPS and spec is not None and np.dtype(dtype) != np.float32
            and spec.c_out // spec.groups >= WIDE_GEMM_OUT
            and (spec.c_in // spec.groups) * spec.kh * spec.kw >= WIDE_GEMM_REDUCTION):
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


def _winograd_algorithm(spec):
    """The tile the Winograd backend's own model finds cheaper (``winograd.default_tile``)."""
    return f"f{registry.load('winograd').default_tile(spec)}"


def winograd_wins(op, spec, dtype):
    """Whether Winograd runs ``op`` on ``spec`` and has the channels and the work to win
    (``WINOGRAD_MIN_CHANNELS``, ``WINOGRAD_MIN_FLOPS``)."""
    if op not in registry.CONV_OPS or spec is None or not registry.supports("winograd", op, spec, dtype):
        return False
    cig, cog = spec.c_in // spec.groups, spec.c_out // spec.groups
    dense = registry.load("winograd").dense_dilation()
    channels = WINOGRAD_MIN_CHANNELS * (2 if max(spec.dilation) > dense else 1)
    return 2 * cig * cog >= channels * (cig + cog) and spec.flops >= WINOGRAD_MIN_FLOPS


def cython_algorithm(op, spec, dtype):
    """Cython's algorithm for ``op`` on ``spec``: the register-blocked kernel where it runs (float32) and
    was measured faster (2 threads, ms, blocked against GEMM):

    - forward passes with 4 or more output channels per group (4 channels from 3 by 5x5 at batch 64:
      0.30 against 0.91), or fewer where its tile of pixel vectors runs (stride 1, more pixels to a row
      than channels: 2 channels from 3 by 3x3 at batch 64, 0.043 against direct 0.095; LeNet's C1, 6:
      0.056 against direct 0.21), pointwise and strided too (pointwise 2.3
      against 4.8, resnet_s2 2.1 against 5.4, AlexNet's conv1 (11x11, stride 4) 2.5 against 7.2), the
      smallest too (MNIST-1D's third layer, 0.5 MFLOP: 0.014 against 0.024), except one-pixel outputs
      (LeNet's C5: 0.13 against 0.11) and reductions of fewer than 16 taps (MNIST-1D's first layer, one
      input channel and 3 taps: 0.02 against 0.01);
    - weight gradients with 4 or more output channels per group (the same 4-channel layer 0.32 against
      0.97; pointwise 2.6 against 4.9, resnet_s2 2.9 against 5.1; 4x4 outputs 0.21 against 0.54, MNIST-1D's
      first layer 0.02 against 0.03), except one-pixel outputs (LeNet's C5: 0.53 against 0.13);
    - input gradients with 8 or more input channels per group (odd's 37: 1.2 against 2.5; pointwise 2.8
      against 3.9), or fewer where the adjoint runs the tile of pixel vectors (LeNet's C3, 6, at batch
      128: 0.35 against 0.61; 2 at 28x28: 0.19 against 0.32) and sums at least 16 taps per output
      (depthwise 3x3: direct 0.79-0.84 against 2.1-2.2); strided ones one input phase at a time
      (``input_phases``) from 8 MFLOP per phase (resnet_s2 4.0 against 4.9; 5x5 stride 2, 32 -> 64
      channels at 28x28: 1.2 against 2.1; 1-D, 32 channels, stride 2, 10 MFLOP per phase: 0.15 against
      0.18; 16 -> 32 channels at 14x14, 7 MFLOP per phase: 0.32 against 0.30; MNIST-1D's second layer:
      0.05 against 0.02), whose adjoint reads at most 90% padding (4x4 outputs padded to 12x12, 89%: 0.30
      against 0.45; LeNet's C5, 1x1 padded to 9x9: 0.58 against 0.11).

    Elsewhere the direct loops for thin GEMMs (:func:`direct_wins`) and im2col + GEMM for the rest.
    """
    cig, cog = spec.c_in // spec.groups, spec.c_out // spec.groups
    pixels, phases = spec.oh * spec.ow, spec.stride[0] * spec.stride[1]
    losing = {  # the first measured limit of the register-blocked kernel this pass is outside of, if any
        "conv2d": [(cog < BLOCKED_MIN_CHANNELS and not pixels_in_lanes(op, spec),
                    f"{cog} < {BLOCKED_MIN_CHANNELS} output channels per group"),
                   (pixels == 1, "one output pixel"),
                   (cig * spec.kh * spec.kw < BLOCKED_MIN_TAPS,
                    f"{cig * spec.kh * spec.kw} < {BLOCKED_MIN_TAPS} taps per output")],
        "conv2d_grad_input": [(cig < BLOCKED_MIN_INPUT_CHANNELS and not pixels_in_lanes(op, spec),
                               f"{cig} < {BLOCKED_MIN_INPUT_CHANNELS} input channels per group"),
                              (cog * spec.kh * spec.kw < BLOCKED_MIN_TAPS,
                               f"{cog * spec.kh * spec.kw} < {BLOCKED_MIN_TAPS} taps per output of the adjoint"),
                              (phases > 1 and spec.flops / phases < BLOCKED_MIN_PHASE_FLOPS,
                               f"{spec.flops / phases / 1e6:.1f} < {BLOCKED_MIN_PHASE_FLOPS / 1e6:.0f} MFLOP per "
                               f"input phase"),
                              (shapes.adjoint_padding(spec) > BLOCKED_MAX_PADDING,
                               f"the adjoint reads {shapes.adjoint_padding(spec):.0%} > "
                               f"{BLOCKED_MAX_PADDING:.0%} padding")],
        "conv2d_grad_weight": [(cog < BLOCKED_MIN_CHANNELS, f"{cog} < {BLOCKED_MIN_CHANNELS} output channels per group"),
                               (pixels == 1, "one output pixel")],
    }[op]
    if not registry.supports("cython", op, spec, dtype, "blocked"):
        why = "float32 only" if np.dtype(dtype) != np.float32 else "no stride-1 adjoint"
        why = f"the register-blocked kernel does not run this ({why})"
    else:
        why = next((text for failed, text in losing if failed), None)
        if why is None:
            return "blocked", "cython:blocked: register-blocked kernel, within its measured limits"
        why = f"the register-blocked kernel loses here ({why})"
    pairs = direct_wins(op, spec)
    if pairs:
        return "direct", f"cython:direct: {why}; at most {pairs} channel pairs per group"
    return "gemm", f"cython:gemm: {why}"


def pixels_in_lanes(op, spec):
    """Whether Cython's blocked kernel would run ``op`` on ``spec`` with its tile of pixel vectors."""
    cython = registry.usable("cython")
    return cython is not None and cython.pixel_tiles(op, spec)


def direct_wins(op, spec):
    """The most channel pairs per group (input x output) for which Cython's direct loops beat im2col +
    GEMM on ``spec``, if ``spec`` has no more, else 0. Measured where the register-blocked kernel does
    not run (float64, forward / weight gradient ms, direct against GEMM): 2 -> 4 channels 3x3 0.27 / 0.28
    against 0.55 / 0.66, 3 -> 4 channels 5x5 0.56 / 0.75 against 1.08 / 1.17, LeNet's C1 (1 -> 6, 5x5)
    0.31 / 0.37 against 0.48 / 0.62; its C3 (96 pairs) 1.46 / 1.90 against 0.59 / 0.64; kernels of 3
    taps lose beyond depthwise-like layers (MNIST-1D's first layer, 15 pairs, float32: 0.03 against 0.01),
    and so do input gradients (LeNet's C1 0.37 against 0.32)."""
    if shapes.is_pointwise(spec):
        return 0
    wide = op != "conv2d_grad_input" and spec.kh * spec.kw >= DIRECT_WIDE_TAPS
    most = DIRECT_MAX_PAIRS_WIDE if wide else DIRECT_MAX_PAIRS
    return most if (spec.c_in // spec.groups) * (spec.c_out // spec.groups) <= most else 0


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


def native_volume(op, backends):
    """The backend of ``backends`` that runs 3-D specs of ``op`` itself where it should
    (``NATIVE_VOLUMES``), or None: the plan then goes through ``depth``."""
    return next((b for b in NATIVE_VOLUMES.get(op, ()) if b in backends and registry.runs_depth(b, op)), None)


def separable_worthwhile(op, spec):
    """Whether ``op`` on ``spec`` should check its weight for rank 1: big enough kernels, few channel
    pairs, and fewer multiply-adds in the two passes."""
    if op not in ("conv2d", "conv2d_grad_input") or spec is None:
        return False
    pairs = (spec.c_in // spec.groups) * (spec.c_out // spec.groups)
    passes = spec.oh * spec.w * spec.kh + spec.oh * spec.ow * spec.kw
    return (spec.kh > 1 and spec.kw > 1 and spec.kh * spec.kw >= SEPARABLE_MIN_TAPS
            and pairs <= SEPARABLE_MAX_PAIRS and passes < spec.oh * spec.ow * spec.kh * spec.kw)
