#!/usr/bin/env bash
# Every GPU measurement the project reports, in one short run (about 8 minutes on an H100/H200 with 16 cores):
#   bash bench/gpu_check.sh [OUT_DIR [STEP...]]      (steps: finish data pretrain_step backbone tests demo; default all
#                                                     but demo)
# 1. finishing raw clips on the GPU (colour jitter + scaling) as a share of the VATT-BBS pre-training step
# 2. data: clips/s per core from shards vs original videos, and a DataLoader with one worker per core
# 3. full VATT-BBS pre-training step at batch 64, DropToken 50 %, eager and torch.compile: samples/s and MFU
# 4. backbone training step vs nn.TransformerEncoderLayer(norm_first=True), bf16, Base, 785 tokens, batch 64
# 5. the model, loss and transform tests against the GPU machine's torch build
# demo: the toy demo's pre-training and zero-shot retrieval on the GPU (raw clips finished on the device)
# Each step has its own time limit, and a failed step does not stop the others.
set -uo pipefail
out="${1:-${OUT:-bench-results}}"
shift || true
steps=" ${*:-finish data pretrain_step backbone tests} "
mkdir -p "$out"
py="${PYTHON:-python3}"
cores="$(nproc)"
export PYTHONUNBUFFERED=1
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
step finish 120 "$py" bench/bench_finish.py --model vatt-bbs --batch 64 --json "$out/finish.json"
step data 240 "$py" bench/bench_data.py --videos "$cores" --seconds 40 --rounds 1 --clips 16 \
  --loader-workers "$((cores / 2)),$cores" --loader-seconds 12 --out-json "$out/data.json"
step pretrain_step 200 "$py" bench/bench_pretrain_step.py --model vatt-bbs --batch 64 --device cuda \
  --modes eager,compiled --warmup 3 --iters 5 --rounds 2 --json "$out/pretrain_step.json"
step backbone 90 "$py" bench/bench_backbone.py --device cuda --dtype bf16 --batch 64 --rounds 3 --iters 10 \
  --json "$out/backbone.json"
step tests 120 "$py" -m pytest -q -x tests/test_model.py tests/test_losses.py tests/test_transforms.py
export VATT_HOME="$PWD/runs/vatt-home"
step demo 200 bash -c "set -e; $py -m vattcli.cli preprocess toy --out data/toy --workers $cores
  $py -m vattcli.cli pretrain --recipe pretrain/vatt-tiny
  $py -m vattcli.cli evaluate youcook2 --ckpt runs/toy-pretrain --data data/toy/shards/youcook2 --index toy
  cp runs/toy-pretrain/eval-youcook2.json $out/demo_eval.json"
