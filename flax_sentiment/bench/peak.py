"""Section `peak`: the float32 matmul peak (the better of jnp.dot and torch.mm on n x n), the
denominator of MFU. Measured alone here; `train_step` keeps probing between its rounds and uses
the best seen, since a loaded machine's peak moves."""

from __future__ import annotations

from typing import Any

from flax_sentiment.bench.common import Context, log, median
from flax_sentiment.bench.runners import PeakProbe


def measure_peak(n: int, reps: int) -> dict[str, float]:
    """`PeakProbe` alone for `reps` rounds: each side's best and median, and the peak."""
    probe = PeakProbe(n)
    probe.step(reps)
    out = {}
    for name, seconds in probe.seconds.items():
        out[name] = probe.gflops(min(seconds))
        out[f"{name}_median"] = probe.gflops(median(seconds))
    out["peak"] = probe.best
    return out


def run(ctx: Context) -> dict[str, Any]:
    args = ctx.args
    reps = max(args.reps, 3)
    pk = measure_peak(args.peak_size, reps)
    ctx.peak = pk["peak"]
    log(f"\nfloat32 matmul peak ({args.peak_size}^3, best of {reps}): "
        f"jnp.dot {pk['jax']:.1f} GFLOP/s, torch.mm {pk['torch']:.1f} GFLOP/s -> "
        f"peak {ctx.peak:.1f} GFLOP/s (medians {pk['jax_median']:.1f} / "
        f"{pk['torch_median']:.1f})")
    return {"peak": pk}
