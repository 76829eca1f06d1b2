"""``fastconv tune``: measure every pass of a model's layers on this machine and keep the fastest kernels.

The planner's default rules (``backends/model.py``) were measured on other machines; cores, caches and
BLAS differ, and so do the winners. Calibration runs each model once while recording the plans of its
layers (``explain.record``), times every candidate kernel of every pass (``plan.measure``: fresh random
inputs, best of a few calls) and stores the winner per shape class in the planner's cache, which every
later process on this machine (same threads, same fastconv) uses. ``fastconv info`` counts the stored
choices; ``fastconv plan`` shows them with the reason "measured earlier".
"""
from __future__ import annotations

from .backends import model, plan, registry
from .explain import PASSES, TRANSPOSED, _shape, record


def calibrate(target, *args, progress=None, **kwargs):
    """Measure every pass that ``target`` (a module and an input shape, or an op and its arguments, as in
    ``fc.explain``) plans; return one row per pass: the model's choice and the measured winner, with the
    time of each. ``progress(row)`` is called after each pass."""
    rows = []
    for layer in record(target, *args, **kwargs):
        passes = TRANSPOSED if layer.label.startswith("conv_transpose") else PASSES
        for op in layer.plans:
            if layer.spec is None:
                continue
            winner, times = plan.measure(op, layer.spec, layer.dtype)
            if winner is None:
                continue
            timed = dict(times)
            choice = model.choose(op, layer.spec, layer.dtype, [b for b in plan.AUTO if registry.runs(b, op)])
            model_choice = choice.backend if choice.algorithm is None else f"{choice.backend}:{choice.algorithm}"
            rows.append({"layer": layer.label, "pass": passes[op], "shape": _shape(layer.spec),
                         "model": model_choice, "model_ms": 1e3 * timed.get(model_choice, float("nan")),
                         "winner": winner.name, "winner_ms": 1e3 * timed[winner.name]})
            if progress is not None:
                progress(rows[-1])
    plan.forget()  # plans made before the measurements may be other choices now
    return rows


def table(rows):
    """The rows of :func:`calibrate` as aligned text, with the speed-up of the measured choice."""
    header = ("layer", "pass", "shape", "model's choice", "ms", "measured fastest", "ms", "speed-up")
    lines = [header] + [(r["layer"], r["pass"], r["shape"], r["model"], f"{r['model_ms']:.3g}", r["winner"],
                         f"{r['winner_ms']:.3g}", f"{r['model_ms'] / r['winner_ms']:.2f}x") for r in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(f"{c:<{w}}" for c, w in zip(line, widths)).rstrip() for line in lines)
