#!/usr/bin/env bash
# What only a GPU can tell, in parts of at most ~4 minutes each, so that one part plus a rerun fits a 15-minute
# device lease (the machine's start counts too). Random weights of the real architectures time exactly like
# trained ones; nothing is downloaded. Results land in $OUT (or benchmarks/results/gpu-<date>/) as JSON and logs.
#
#   bash benchmarks/gpu-check.sh prepare               # HERE, before a lease: wheels into .gpu-wheels/ (ignored)
#   bash benchmarks/gpu-check.sh PART [PART ...]       # on the GPU machine, from the repository root
#   bash benchmarks/gpu-check.sh --dry-run all         # on a CPU: every part's commands at tiny scale (CI runs it)
#
# Parts: tests (the `gpu` test tier), sd (SD-1.5 512 px fp16, every DPG variant; LoRA), sdxl (SDXL LoRA 1024 px
# bf16; evaluation throughput), flow (FLUX.1 LoRA 512 px bf16, SD3.5-medium LoRA 1024 px bf16, peak memory),
# quant (FLUX.1 LoRA over an nf4 base at 512 and 1024 px, peak memory against issue 22's targets).
# `all` is every part in turn (too long for one call on a lease: run the parts one call each).
#
# The GPU machine reaches no package registry: its python3 has CUDA torch, transformers, accelerate, peft,
# safetensors, tokenizers, pillow and pyyaml, but not diffusers. `prepare` puts wheels of diffusers (the
# version installed here), of pytest and of the quantization backends (bitsandbytes for nf4, torchao for
# int8/fp8: model.quantize) into .gpu-wheels/ (53 MB, under the device tool's 64 MiB carry limit); carry that
# folder with the run (device tool: carry [".gpu-wheels"]) and the script installs them with --no-index
# --no-deps into a venv that sees the machine's own packages, and this project from the copied working tree
# (its src/ on the venv's path: a wheel of it would add 17 MB of toy-world assets to the carry). Parts that
# need what is not there (dlib, for the face reward) are skipped.
set -uo pipefail
cd "$(dirname "$0")/.."
wheels=.gpu-wheels

prepare() {
  local python=${PYTHON:-.venv/bin/python}
  rm -rf "$wheels.partial" && mkdir -p "$wheels.partial"
  local diffusers_version
  diffusers_version=$("$python" -c "import diffusers; print(diffusers.__version__)") || exit 1
  "$python" -m pip download --quiet --no-deps --only-binary=:all: -d "$wheels.partial" \
    "diffusers==$diffusers_version" pytest pluggy iniconfig pytest-timeout \
    "bitsandbytes>=0.45,<0.51" "torchao>=0.15,<0.19" || exit 1
  rm -rf "$wheels" && mv "$wheels.partial" "$wheels"
  du -sh "$wheels"; ls "$wheels"
}

dry_run=0
if [ "${1:-}" = "--dry-run" ]; then dry_run=1; shift; fi
if [ "${1:-}" = "prepare" ]; then prepare; exit $?; fi
[ $# -gt 0 ] || { echo "usage: gpu-check.sh [--dry-run] prepare | all | PART... (parts: tests sd sdxl flow quant)" >&2; exit 2; }

out=${OUT:-benchmarks/results/gpu-$(date +%Y%m%d)}
mkdir -p "$out"
export HF_HUB_OFFLINE=1
if [ $dry_run = 1 ]; then
  python=${PYTHON:-.venv/bin/python}
else
  if [ ! -x .venv-gpu/bin/python ]; then
    [ -d "$wheels" ] || { echo "no $wheels/: run 'bash benchmarks/gpu-check.sh prepare' here and carry it" >&2; exit 2; }
    python3 -m venv --system-site-packages .venv-gpu && \
      .venv-gpu/bin/pip install --quiet --no-index --no-deps "$wheels"/*.whl && \
      .venv-gpu/bin/python -c "import site, sys; open(site.getsitepackages()[0] + '/rewardbooth-src.pth', 'w').write(sys.argv[1])" \
        "$PWD/src" || exit 1
  fi
  python=.venv-gpu/bin/python
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$out/gpu.csv" 2>&1
fi

failures=0
step() {  # name, timeout in seconds, command...
  local name=$1 limit=$2 status; shift 2
  echo "== $name" | tee -a "$out/summary.txt"
  timeout "$limit" "$@" > "$out/$name.log" 2>&1
  status=$?
  [ $status = 0 ] || failures=$((failures + 1))
  echo "   exit $status ($(tail -n 1 "$out/$name.log"))" | tee -a "$out/summary.txt"
}
# bench NAME LIMIT MODEL RESOLUTION PRECISION TIMED WARMUP [bench step options...]: on a dry run the model is its
# tiny twin at 64 px, full precision, one timed step of baseline and DPG look-forward (options given later win),
# and an nf4 base (bitsandbytes: CUDA only) is torchao's int8, so every option is exercised on the CPU in seconds.
bench() {
  local name=$1 limit=$2 model=$3 resolution=$4 precision=$5 timed=$6 warmup=$7; shift 7
  local dry=() options=("$@")
  if [ $dry_run = 1 ]; then
    options=("${options[@]/model.quantize=nf4/model.quantize=int8}")
    dry=(--variants dpg-look-forward)
    case $model in sd15-random) model=tiny ;; sdxl-random) model=tiny-sdxl ;; flux-random) model=tiny-flux ;;
                   sd35m-random) model=tiny-sd3 ;; esac
    resolution=64 precision=no timed=1 warmup=0 limit=300
  fi
  step "$name" "$limit" "$python" -m rewardbooth bench step --model "$model" --resolution "$resolution" \
    --mixed-precision "$precision" --timed-steps "$timed" --warmup-steps "$warmup" \
    --output "$out/$name.json" "${dry[@]}" "${options[@]}"
}
# targets NAME [PEAK_GIB]: the bench report's peak memory (CUDA reserved) and DPG/baseline memory ratio against
# issue 22's targets (rewardbooth.experiments.memory_targets); a dry run prints them without failing.
targets() {
  local name=$1 peak=() report=()
  [ -n "${2:-}" ] && peak=(--peak-gib "$2")
  [ $dry_run = 1 ] && report=(--report-only)
  [ -f "$out/$name.json" ] || return 0  # its bench failed, and says so above
  step "$name-targets" 60 "$python" -m rewardbooth.experiments.memory_targets "$out/$name.json" "${peak[@]}" \
    "${report[@]}"
}

part_tests() {
  if [ $dry_run = 1 ]; then
    step gpu-tests 300 "$python" -m pytest -q -p no:cacheprovider --collect-only -m gpu tests/gpu
  elif "$python" -c "import dlib" 2>/dev/null; then
    step gpu-tests 200 "$python" -m pytest -q -p no:cacheprovider -m gpu tests
  else  # the face reward's dlib is not on the GPU machine
    step gpu-tests 200 "$python" -m pytest -q -p no:cacheprovider -m gpu tests -k "not face"
  fi
}
part_sd() {
  bench sd15-512-fp16 130 sd15-random 512 fp16 8 2
  bench sd15-512-fp16-lora 90 sd15-random 512 fp16 8 2 --method lora --variants dpg-look-forward \
    direct-dino-clip-text-scenes-anchored  # the sd15-lora-scenes recipe's step (docs/rewards.md)
}
part_sdxl() {
  bench sdxl-1024-bf16-lora 110 sdxl-random 1024 bf16 5 1 --method lora --variants dpg-look-forward \
    --set train.gradient_checkpointing=true
  if [ $dry_run = 1 ]; then
    step evaluation 300 "$python" -m rewardbooth bench evaluation --images 2 --output "$out/evaluation.json"
  else
    step evaluation 60 "$python" -m rewardbooth bench evaluation --images 512 --output "$out/evaluation.json"
  fi
}
part_flow() {
  bench flux-512-bf16-lora 120 flux-random 512 bf16 5 1 --method lora --variants dpg-look-forward \
    --set train.gradient_checkpointing=true
  bench sd35m-1024-bf16-lora 110 sd35m-random 1024 bf16 5 1 --method lora --variants dpg-look-forward \
    --set train.gradient_checkpointing=true
  targets flux-512-bf16-lora
  targets sd35m-1024-bf16-lora 16
}
# FLUX.1 LoRA over an nf4 base (QLoRA): the 12 B transformer in 4 bits, T5's weights dropped after setup, the
# transformer checkpointed. Building the random transformer, then saving and reloading it quantized, takes
# about a minute of each limit (rewardbooth.models.quantization.quantize_denoiser).
part_quant() {
  local qlora=(--method lora --variants dpg-look-forward --set model.quantize=nf4
               --set train.gradient_checkpointing=true --set train.offload_text_encoders=free)
  bench flux-512-nf4-lora 240 flux-random 512 bf16 3 1 "${qlora[@]}"
  targets flux-512-nf4-lora 24
  bench flux-1024-nf4-lora 240 flux-random 1024 bf16 3 1 "${qlora[@]}"
  targets flux-1024-nf4-lora 40
}

for part in "$@"; do
  case $part in
    all) part_tests; part_sd; part_sdxl; part_flow; part_quant ;;
    tests|sd|sdxl|flow|quant) "part_$part" ;;
    *) echo "unknown part '$part': choose from tests sd sdxl flow quant all" >&2; exit 2 ;;
  esac
done
cat "$out/summary.txt"
[ $failures = 0 ]
