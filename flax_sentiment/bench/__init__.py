"""The side-by-side benchmark behind `scripts/bench.py`: one module per section.

  threads       the --threads policy (XLA_FLAGS), applied before JAX starts its backend
  common        printing, medians, the machine line, model resolution, `Shape`, `Context`
  runners       the step runners the in-process sections alternate: ours, PyTorch, a matmul probe
  peak          float32 matmul peak (the MFU denominator)
  train_step    our train step vs PyTorch's, interleaved
  profile       a step's phases, ours vs PyTorch's, at SST-2's real (short) shapes
  epoch         the SST-2 epoch: our length buckets vs fixed padding
  eval_compile  eval throughput and compile time per bucket shape
  gpu           the device check (GPU/TPU): attention parity, sweep vs PyTorch SDPA, memory,
                autotuning
  trainer       whole processes: scripts/train.py vs the Hugging Face Trainer (hf_trainer_run),
                400 steps (`trainer`) and one SST-2 epoch (`trainer-epoch`)

Nothing is imported here: `scripts/bench.py` imports `threads` before any module that uses JAX.
"""
