"""Section `train`: our production train step vs transformers' PyTorch model + torch AdamW on
one fixed random batch, float32 and bfloat16 (ours: model.dtype='bfloat16' with float32 params;
torch: autocast bf16), both in train mode (dropout on). Rounds of A and B alternate so a load
change hits both alike; figures are medians over rounds, MFU is over the best peak seen."""

from __future__ import annotations

from typing import Any

from flax_sentiment.bench.common import Context, interleaved, log, median, random_batch
from flax_sentiment.bench.runners import Ours, PeakProbe, Torch


def measure(ctx: Context) -> tuple[list[dict[str, Any]], float | None]:
    """One row per (side, dtype), and the peak MFU divides by (raised by the per-round probe)."""
    args, shape, peak = ctx.args, ctx.shape, ctx.peak
    batch = random_batch(args.batch, args.seq, shape.vocab)
    rows = []
    flops_ex = shape.train_flops(args.seq)
    for dtype in args.dtypes:
        log(f"\n== train step, {dtype}: batch {args.batch} x seq {args.seq}, "
            f"{args.reps} rounds x {args.steps} steps, interleaved")
        ours = Ours(ctx.folder, dtype, batch, args.steps)
        theirs = Torch(ctx.folder, dtype == "bfloat16", batch)
        probe = PeakProbe(args.peak_size)
        t = interleaved({"ours": ours, "torch": theirs, "peak": probe}, args.reps, args.steps)
        if peak is not None and probe.best > peak:
            log(f"peak during the rounds: {probe.best:.1f} GFLOP/s (> {peak:.1f}: used for MFU)")
            peak = probe.best
        for name in ("ours", "torch"):
            sec = median(t[name])
            ex_s = args.batch / sec
            rows.append({
                "dtype": dtype, "who": name, "step_ms": 1e3 * sec, "ex_s": ex_s,
                "tok_s": ex_s * args.seq, "gflops": ex_s * flops_ex / 1e9,
                "spread": (min(t[name]) * 1e3, max(t[name]) * 1e3),
            })
        xf = ours.xla_flops
        log(f"compile (ours): {ours.compile_s:.1f}s; model FLOPs/example {flops_ex / 1e9:.2f} G "
            f"(analytic, matmuls x3)" + (f"; XLA cost_analysis {xf / args.batch / 1e9:.2f} G "
                                         f"({xf / args.batch / flops_ex:.2f}x analytic)"
                                         if xf else ""))
        per_round = [a / b for a, b in zip(t["torch"], t["ours"], strict=True)]
        log("per-round ratio ours/torch (examples/s): "
            + " ".join(f"{r:.2f}" for r in per_round))
        del ours, theirs
    for r in rows:
        r["mfu"] = r["gflops"] / peak if peak else None
    return rows, peak


def print_table(rows: list[dict[str, Any]], dtypes: list[str]) -> None:
    log(f"\n{'train step':<22}{'step ms':>9}{'ex/s':>9}{'tok/s':>10}{'GFLOP/s':>9}{'MFU':>7}"
        f"   min..max ms")
    for r in rows:
        mfu = f"{100 * r['mfu']:.0f}%" if r["mfu"] is not None else "-"
        log(f"{r['who'] + ' ' + r['dtype']:<22}{r['step_ms']:>9.1f}{r['ex_s']:>9.1f}"
            f"{r['tok_s']:>10.0f}{r['gflops']:>9.1f}{mfu:>7}   "
            f"{r['spread'][0]:.0f}..{r['spread'][1]:.0f}")
    by = {(r["who"], r["dtype"]): r for r in rows}
    for dtype in dtypes:
        if ("ours", dtype) in by:
            ratio = by[("ours", dtype)]["ex_s"] / by[("torch", dtype)]["ex_s"]
            log(f"RATIO train {dtype} ours/torch examples/s: {ratio:.2f}x")
    for who in ("ours", "torch"):
        if (who, "bfloat16") in by and (who, "float32") in by:
            ratio = by[(who, "bfloat16")]["ex_s"] / by[(who, "float32")]["ex_s"]
            log(f"RATIO bf16/fp32 {who}: {ratio:.2f}x")


def run(ctx: Context) -> dict[str, Any]:
    rows, ctx.peak = measure(ctx)
    print_table(rows, ctx.args.dtypes)
    return {"peak_used": ctx.peak, "train": rows}
