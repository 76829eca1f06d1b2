"""Random op configurations shared by every correctness suite (reference vs PyTorch, backends vs reference).

Each strategy draws a valid configuration as a dict: ``make_args(case, rng)`` gives the arrays and
``call(F, case, arrays, backend)`` runs the op through any functional-like module (fastconv.functional or
torch.nn.functional), so one case is checked against every implementation the same way.
"""
import numpy as np
from hypothesis import strategies as st

DTYPES = (np.float32, np.float64)
# float32 compares to ~1e-5 relative, float64 to ~1e-10 (both relative to the output's scale)
RTOL = {np.dtype(np.float32): 2e-5, np.dtype(np.float64): 1e-10}


def _spatial(draw, dims, lo=1, hi=9):
    return tuple(draw(st.integers(lo, hi)) for _ in range(dims))


@st.composite
def conv_cases(draw, dims=2, max_size=9, kernel=None, stride=None):
    """A convolution; ``kernel`` / ``stride`` fix those (a plan that runs only 3x3 stride 1, say)."""
    groups = draw(st.sampled_from([1, 1, 2, 3]))
    c_in = groups * draw(st.integers(1, 3))
    c_out = groups * draw(st.integers(1, 3))
    kernel = kernel or _spatial(draw, dims, 1, 4)
    dilation = _spatial(draw, dims, 1, 3)
    mode = draw(st.sampled_from(["int", "tuple", "same", "valid"]))
    stride = (1,) * dims if mode == "same" else stride or _spatial(draw, dims, 1, 3)
    if mode == "int":
        padding = draw(st.integers(0, 3))
    elif mode == "tuple":
        padding = _spatial(draw, dims, 0, 3)
    else:
        padding = mode
    pads = (padding,) * dims if isinstance(padding, int) else padding
    size = []
    for k, d, p in zip(kernel, dilation, pads):
        reach = d * (k - 1) + 1 - (2 * p if isinstance(p, int) else 0)
        size.append(draw(st.integers(max(1, reach), max(1, reach) + max_size)))
    return dict(op=f"conv{dims}d", dims=dims, n=draw(st.integers(1, 3)), c_in=c_in, c_out=c_out,
                size=tuple(size), kernel=kernel, stride=stride, padding=padding, dilation=dilation,
                groups=groups, bias=draw(st.booleans()), dtype=draw(st.sampled_from(DTYPES)))


@st.composite
def conv_transpose_cases(draw, dims=2, kernel=None, stride=None):
    groups = draw(st.sampled_from([1, 1, 2]))
    c_in = groups * draw(st.integers(1, 3))
    c_out = groups * draw(st.integers(1, 3))
    kernel = kernel or _spatial(draw, dims, 1, 4)
    stride = stride or _spatial(draw, dims, 1, 3)
    dilation = _spatial(draw, dims, 1, 2)
    padding = tuple(draw(st.integers(0, d * (k - 1))) for k, d in zip(kernel, dilation))
    output_padding = tuple(draw(st.integers(0, max(s, d) - 1)) for s, d in zip(stride, dilation))
    size = _spatial(draw, dims, 1, 7)
    for length, k, s, d, p, op in zip(size, kernel, stride, dilation, padding, output_padding):
        if (length - 1) * s - 2 * p + d * (k - 1) + op + 1 < 1:
            return draw(conv_transpose_cases(dims, kernel, stride))
    return dict(op=f"conv_transpose{dims}d", dims=dims, n=draw(st.integers(1, 3)), c_in=c_in, c_out=c_out,
                size=size, kernel=kernel, stride=stride, padding=padding, output_padding=output_padding,
                dilation=dilation, groups=groups, bias=draw(st.booleans()),
                dtype=draw(st.sampled_from(DTYPES)))


@st.composite
def pool_cases(draw, kind="max", dims=2):
    kernel = _spatial(draw, dims, 1, 4)
    stride = _spatial(draw, dims, 1, 3)
    dilation = _spatial(draw, dims, 1, 2) if kind == "max" else (1,) * dims
    padding = tuple(draw(st.integers(0, k // 2)) for k in kernel)
    size = tuple(draw(st.integers(d * (k - 1) + 1, d * (k - 1) + 9)) for k, d in zip(kernel, dilation))
    case = dict(op=f"{kind}_pool{dims}d", dims=dims, n=draw(st.integers(1, 3)), c=draw(st.integers(1, 3)),
                size=size, kernel=kernel, stride=stride, padding=padding, dilation=dilation,
                ceil_mode=draw(st.booleans()), count_include_pad=draw(st.booleans()),
                dtype=draw(st.sampled_from(DTYPES)))
    return case


def make_args(case, rng):
    """The float arrays of a case: ``[x, w, (b)]`` for convolutions, ``[x]`` for pooling."""
    dt = case["dtype"]
    if case["op"].startswith("conv_transpose"):
        x = rng.standard_normal((case["n"], case["c_in"]) + case["size"]).astype(dt)
        w = rng.standard_normal((case["c_in"], case["c_out"] // case["groups"]) + case["kernel"]).astype(dt)
        return [x, w] + ([rng.standard_normal(case["c_out"]).astype(dt)] if case["bias"] else [])
    if case["op"].startswith("conv"):
        x = rng.standard_normal((case["n"], case["c_in"]) + case["size"]).astype(dt)
        w = rng.standard_normal((case["c_out"], case["c_in"] // case["groups"]) + case["kernel"]).astype(dt)
        return [x, w] + ([rng.standard_normal(case["c_out"]).astype(dt)] if case["bias"] else [])
    return [rng.standard_normal((case["n"], case["c"]) + case["size"]).astype(dt)]


def call(F, case, arrays, **extra):
    """Run the case's op through ``F`` (fastconv.functional or torch.nn.functional)."""
    op = getattr(F, case["op"])
    if case["op"].startswith("conv_transpose"):
        x, w, *b = arrays
        return op(x, w, b[0] if b else None, stride=case["stride"], padding=case["padding"],
                  output_padding=case["output_padding"], groups=case["groups"], dilation=case["dilation"],
                  **extra)
    if case["op"].startswith("conv"):
        x, w, *b = arrays
        return op(x, w, b[0] if b else None, stride=case["stride"], padding=case["padding"],
                  dilation=case["dilation"], groups=case["groups"], **extra)
    (x,) = arrays
    if case["op"].startswith("max"):
        return op(x, case["kernel"], case["stride"], case["padding"], case["dilation"],
                  ceil_mode=case["ceil_mode"], **extra)
    return op(x, case["kernel"], case["stride"], case["padding"], ceil_mode=case["ceil_mode"],
              count_include_pad=case["count_include_pad"], **extra)


def all_cases(dims):
    """Every op family at ``dims`` spatial dims, as one strategy."""
    return st.one_of(conv_cases(dims), conv_transpose_cases(dims), pool_cases("max", dims),
                     pool_cases("avg", dims))


def cpu_plans():
    """Every CPU backend and algorithm a user can force (``"numpy"``, ``"cython:blocked"``, ...) that can
    run here: the names the suites run every property and oracle check under. A backend the build must
    have produced (``FASTCONV_REQUIRE_BACKENDS``) stays listed when it cannot run, so its tests fail."""
    from fastconv.backends import registry
    from helpers import REQUIRED_BACKENDS
    names = ["numpy"]
    for backend in ("numba", "cython", "fft", "winograd"):
        module = registry.usable(backend)
        if module is not None:
            names += [f"{backend}:{a}" for a in module.ALGORITHMS]
        elif backend in REQUIRED_BACKENDS:
            names.append(backend)
    return names


def runs_here(name, fn):
    """``fn()``, or None when the plan ``name`` cannot run this input (a float32-only algorithm given
    float64, a backend without the op): the planner says so with a ValueError naming the backend."""
    try:
        return fn()
    except ValueError as err:
        if f"'{name.split(':')[0]}" in str(err) and ("cannot run" in str(err) or "has no" in str(err)):
            return None
        raise


def matches_reference(name, case, seed):
    """Run ``case`` under plan ``name`` and check its output and gradients against the reference's: True,
    or None where the plan cannot run it (``cython:blocked`` runs float32 cases only)."""
    import fastconv.functional as F
    from helpers import check_against
    if name == "cython:blocked":
        case = dict(case, dtype=np.float32)
    arrays = make_args(case, np.random.default_rng(seed))
    return runs_here(name, lambda: check_against(
        lambda *t: call(F, case, t, backend=name), lambda *t: call(F, case, t, backend="numpy"),
        arrays, what=f"{name} {case}") or True)


def for_plan(plan, cases, dims=2, max_size=9):
    """``cases`` (a strategy) narrowed to what plan ``plan`` runs, so that hypothesis does not filter out
    nearly every case: 1-D for the FFT's blocks of long signals, stride-1 3x3 (``dims`` of them, volumes
    too: their depth taps run as 2-D convolutions) for Winograd; float32 for the float32-only kernels."""
    if plan == "fft:overlap":
        cases = st.one_of(conv_cases(1), conv_transpose_cases(1))
    elif plan.startswith("winograd"):
        cases = st.one_of(conv_cases(dims, max_size, kernel=(3,) * dims, stride=(1,) * dims),
                          conv_transpose_cases(dims, kernel=(3,) * dims, stride=(1,) * dims))
    if plan == "cython:blocked" or plan.startswith("winograd"):
        cases = cases.map(lambda case: dict(case, dtype=np.float32))
    return cases
