#!/usr/bin/env bash
# Every GPU measurement the project reports, in one short run (a few minutes on an H100/H200):
#   bash bench/gpu_check.sh [OUT_DIR]
# 1. backbone training step vs nn.TransformerEncoderLayer(norm_first=True), bf16, Base, 785 tokens, batch 64
# 2. full VATT-BBS pre-training step at batch 64, DropToken 50 %, eager and torch.compile: samples/s and MFU
# 3. the model and loss tests against the GPU machine's torch build
set -euo pipefail
out="${1:-${OUT:-bench-results}}"
mkdir -p "$out"
py="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1
"$py" bench/bench_backbone.py --device cuda --dtype bf16 --batch 64 --rounds 5 --iters 10 \
  --json "$out/backbone.json" 2>&1 | tee "$out/backbone.log"
"$py" bench/bench_pretrain_step.py --model vatt-bbs --batch 64 --device cuda --modes eager,compiled \
  --warmup 5 --iters 10 --rounds 3 --json "$out/pretrain_step.json" 2>&1 | tee "$out/pretrain_step.log"
"$py" -m pytest -q tests/test_model.py tests/test_losses.py 2>&1 | tee "$out/tests.log"
