#!/usr/bin/env bash
# Every GPU measurement the project reports, in one run of at most ten minutes on an H100/H200 with 16 cores (each
# step has its own time limit; a failed or cut step does not stop the others, and the benchmarks rewrite their JSON
# as they go, so a cut step keeps what it measured):
#   bash bench/gpu_check.sh [OUT_DIR [STEP...]]
# Default steps (issue 13, pre-training throughput), results as JSON in OUT_DIR:
#   pretrain_step      VATT-BBS step, batch 64, DropToken 50 %, bf16, side by side with today's trainer path
#                      (torch.compile of the model): eager; the whole step compiled as one graph; eager with each
#                      attention kernel; compiled with cuDNN attention; torchao fp8 (when importable); activation
#                      checkpointing at batch 256. Samples/s, MFU of 989 TFLOP/s, speedups; 50-step loss curves of
#                      today's path and the fastest variant from the same weights; a compiled-vs-eager fp32
#                      gradient check; the VATT-BBS cost in GPU-hours at 500k x 2048.
#   pretrain_autotune  the compiled step with compile_mode max-autotune (CUDA graphs + GEMM tuning), against eager
#   mbs, lbs           VATT-MBS and VATT-LBS steps, eager and compiled (batch 64, halved until it fits); the MBS
#                      pre-training cost in GPU-hours at the paper's 500k steps x batch 2048
#   loader             the DataLoader from 1 worker to one per core: clips/s per worker, decode / transform / collate
#                      / shared-memory bytes per clip, worker and main-process CPU; then all cores feeding a step at
#                      the fastest rate measured above: data wait as a share of the step time
#   tests              the loss and compiled-step tests against the GPU machine's torch build
# Also by name: finish (raw clips finished on the GPU), data (clips/s from shards vs original videos), backbone
# (encoder vs nn.TransformerEncoderLayer), demo (the toy pipeline on the GPU), index (vatt index build with VATT-BBS:
# media time per GPU-second, decoding in one worker per core).
set -uo pipefail
out="${1:-${OUT:-bench-results}}"
shift || true
steps=" ${*:-pretrain_step pretrain_autotune mbs lbs loader tests} "
mkdir -p "$out"
py="${PYTHON:-python3}"
cores="$(nproc)"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
step() {  # step NAME SECONDS COMMAND...
  local name="$1" limit="$2"
  shift 2
  [[ "$steps" == *" $name "* ]] || return 0
  echo "== $name (limit ${limit} s)"
  timeout "$limit" "$@" > "$out/$name.log" 2>&1
  echo "== $name: exit $? after ${SECONDS} s in all"
  tail -n 14 "$out/$name.log"
}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
lscpu | grep -E '^CPU\(s\)|Thread|Core|Model name' | tee "$out/cpu.txt"
step pretrain_step 220 "$py" bench/bench_pretrain_step.py --model vatt-bbs --batch 64 --device cuda \
  --variants compiled,eager,step,eager+flash,eager+cudnn,eager+efficient,step+cudnn,step+fp8,step+ckpt@256 \
  --warmup 3 --iters 5 --rounds 2 --budget-s 140 --agree-steps 50 --grad-check step --json "$out/pretrain_step.json"
step pretrain_autotune 90 "$py" bench/bench_pretrain_step.py --model vatt-bbs --batch 64 --device cuda \
  --variants eager,step+max-autotune --warmup 3 --iters 5 --rounds 2 --json "$out/pretrain_autotune.json"
for size in mbs lbs; do
  step "$size" "$([[ $size == mbs ]] && echo 70 || echo 90)" "$py" bench/bench_pretrain_step.py --model "vatt-$size" \
    --batch 64 --fit-batch --device cuda --variants eager,step --warmup 3 --iters 4 --rounds 2 \
    --json "$out/pretrain_$size.json"
done
rate="$("$py" -c 'import json, sys; r = json.load(open(sys.argv[1])); f = r["fastest"]
print(round(r["baseline_figures"]["samples_per_s"] * r["variants"].get(f, {}).get("speedup", 1.0)))' \
  "$out/pretrain_step.json" 2>/dev/null || echo 535)"  # the step rate to feed; 535 = the issue's target
step loader 70 "$py" bench/bench_loader.py --workers "$(printf '%s\n' 1 4 8 "$cores" | awk -v c="$cores" '$1 <= c' \
  | sort -nu | paste -sd,)" --seconds 3 --batch 32 --device cuda --step-samples-per-s "$rate" --json "$out/loader.json"
step tests 60 "$py" -m pytest -q -x -p no:cacheprovider tests/test_losses.py tests/test_compile.py -k "not cli"
step index 120 "$py" bench/bench_index.py --model vatt-bbs --device cuda --workers "$cores" --videos "$cores" \
  --seconds 30 --windows 64 --json "$out/index.json"
step finish 120 "$py" bench/bench_finish.py --model vatt-bbs --batch 64 --json "$out/finish.json"
step data 240 "$py" bench/bench_data.py --videos "$cores" --seconds 40 --rounds 1 --clips 16 \
  --loader-workers "$((cores / 2)),$cores" --loader-seconds 12 --out-json "$out/data.json"
step backbone 90 "$py" bench/bench_backbone.py --device cuda --dtype bf16 --batch 64 --rounds 3 --iters 10 \
  --json "$out/backbone.json"
export VATT_HOME="$PWD/runs/vatt-home"
step demo 200 bash -c "set -e; $py -m vattcli.cli preprocess toy --out data/toy --workers $cores
  $py -m vattcli.cli pretrain --recipe pretrain/vatt-tiny
  $py -m vattcli.cli evaluate youcook2 --ckpt runs/toy-pretrain --data data/toy/shards/youcook2 --index toy
  cp runs/toy-pretrain/eval-youcook2.json $out/demo_eval.json"
