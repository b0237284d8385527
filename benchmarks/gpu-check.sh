#!/usr/bin/env bash
# What only a GPU can tell, in one run of about 8 minutes: the `gpu` test tier, the SD-1.5-scale step at
# 512 px fp16 (every DPG variant, critic diagnostics included), the SDXL LoRA step at 1024 px, and the
# evaluation throughput. Results land in $OUT (or benchmarks/results/gpu-<date>/) as JSON and logs.
#
#   bash benchmarks/gpu-check.sh            # on the GPU machine, from the repository root
#
# Random weights of the real architectures time exactly like trained ones; nothing is downloaded.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-benchmarks/results/gpu-$(date +%Y%m%d)}
mkdir -p "$out"
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv && .venv/bin/pip install --quiet -e ".[test]"  # the machine's own CUDA torch
fi
export HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$out/gpu.csv" 2>&1
step() {  # name, timeout in seconds, command...
  local name=$1 limit=$2; shift 2
  echo "== $name" | tee -a "$out/summary.txt"
  timeout "$limit" "$@" > "$out/$name.log" 2>&1
  echo "   exit $? ($(tail -n 1 "$out/$name.log"))" | tee -a "$out/summary.txt"
}
step gpu-tests 150 .venv/bin/python -m pytest -q -m gpu tests
step sd15-512-fp16 150 .venv/bin/rewardbooth bench step --model sd15-random --mixed-precision fp16 \
  --timed-steps 8 --warmup-steps 2 --output "$out/sd15-random-512px-fp16.json"
step sd15-512-fp16-lora 60 .venv/bin/rewardbooth bench step --model sd15-random --method lora \
  --mixed-precision fp16 --variants dpg-look-forward --timed-steps 8 --warmup-steps 2 --output "$out/sd15-random-512px-fp16-lora.json"
step sdxl-1024-bf16-lora 90 .venv/bin/rewardbooth bench step --model sdxl-random --method lora \
  --mixed-precision bf16 --variants dpg-look-forward --timed-steps 5 --warmup-steps 1 --set train.gradient_checkpointing=true \
  --output "$out/sdxl-random-1024px-bf16-lora.json"
step evaluation 60 .venv/bin/rewardbooth bench evaluation --images 512 --output "$out/evaluation.json"
cat "$out/summary.txt"
