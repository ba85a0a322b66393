#!/usr/bin/env bash
# The prepared GPU check (issue #8), for a machine with an NVIDIA GPU and
# PyTorch installed (our device image). Stages run in priority order until a
# deadline (GPU_BUDGET_S, default 420 s), each under its own timeout, so a
# stage that hangs or a slow first start cannot cost the rest:
#
#   env        nvidia-smi, the libraries the binaries resolve, package versions
#   kernels    ebv-train --check-kernels (f32): cuDNN conv (forward and both
#              backward passes), max-pool and BatchNorm against the CPU f64
#              reference, both --kernels, and ResNet-50's conv layers timed
#              cuDNN vs candle (batch 32)
#   small      a small ResNet-18 step on the GPU (smoke test)
#   torch      PyTorch: ResNet-50, batch 256, 224², bf16 autocast,
#              channels-last, EBV head C = 100,000, d = 5000 (the peer)
#   ebv        ebv-train --bench-steps on the same workload, bf16 mixed
#              precision (f32 master weights), with a per-op breakdown
#   ebvfind    the same with cuDNN's algorithms measured (EBV_CUDNN_FIND=1)
#              instead of its heuristics' choice
#   basis      ebv-basis generate --device cuda:0: (1000, 512) on CPU and GPU
#              (parity), checked
#   kernels16  --check-kernels in bf16
#   chunked    the bf16 workload with the head scored 25,000 classes at a
#              time (model.class_chunk): the chunking's cost
#   torchnchw  the peer without channels-last (NCHW, as ebv lays out tensors)
#   convs      PyTorch's fwd+bwd time of the conv layers `kernels` times, NCHW
#              and channels-last
#   torchbench the peer with torch.backends.cudnn.benchmark = True
#   f32        the workload in f32, batch 64 (what bf16 gains)
#   basis10k   10,000 classes in R^512, p-norm steps from a Kerdock start
#   basis100k  the paper's 100,000 × 5000 case (one full evaluation)
#   ddp        two-rank data-parallel smoke run (2+ GPUs and EBV_SHARDS only)
#
#   bash benches/gpu.sh                  # every stage, in the order above
#   bash benches/gpu.sh ebv torch        # only these, in this order
#
# Results go to $OUT (default ./gpu-out) as three files, because the device
# returns at most 8: results.txt (each stage's exit code, seconds and stdout,
# JSON where the tool prints JSON), log.txt (the tail of each stage's stderr)
# and env.txt. A summary table is printed last.
#
# Build here, stripped and compressed so it can be carried (the device takes
# 64 MiB; the two stripped binaries are ~110 MB, ~28 MB gzipped):
#   eval "$(bash tools/cuda-env.sh /var/tmp/ebv-cuda)"
#   cargo build --release --features cuda --bin ebv-train --bin ebv-basis
#   mkdir -p target-gpu && cp target/release/ebv-{train,basis} target-gpu/ && strip target-gpu/ebv-*
#   tar czf target-gpu/bins.tgz -C target-gpu ebv-train ebv-basis
# then carry target-gpu/bins.tgz and run bash benches/gpu.sh (it unpacks it).
# The CUDA libraries come from the PyTorch install (same sonames: CUDA 13,
# cuDNN 9, NCCL 2) unless LD_LIBRARY_PATH already provides them.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
W=$(mktemp -d)
RES=$OUT/results.txt LOG=$OUT/log.txt ENV=$OUT/env.txt
: > "$RES"; : > "$LOG"; : > "$ENV"
DEADLINE=$((SECONDS + ${GPU_BUDGET_S:-420}))
PY=${PYTHON:-python3}
if [ -f target-gpu/bins.tgz ]; then
  mkdir -p target-gpu/release && tar xzf target-gpu/bins.tgz -C target-gpu/release
fi
BIN=${EBV_TRAIN:-target-gpu/release/ebv-train}
BASIS=${EBV_BASIS:-target-gpu/release/ebv-basis}

# The CUDA 13 libraries of the PyTorch install (nvidia/*/lib, nvidia/cu13/lib).
NVDIRS=$($PY -c 'import nvidia; print(" ".join(list(nvidia.__path__)))' 2>/dev/null || true)
for nv in $NVDIRS; do
  for d in "$nv"/*/lib "$nv"/cu13/lib; do
    [ -d "$d" ] && LD_LIBRARY_PATH="$d${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  done
done
export LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}
export RUST_BACKTRACE=1

SUMMARY=()
# stage NAME TIMEOUT CMD...: run CMD under min(TIMEOUT, time to the deadline).
stage() {
  local name=$1 limit=$2 left rc t0
  shift 2
  left=$((DEADLINE - SECONDS))
  if [ "$left" -lt 20 ]; then
    echo "== $name: skipped (deadline)" >> "$RES"
    SUMMARY+=("$(printf '%-10s skipped' "$name")")
    return
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  t0=$SECONDS
  timeout -k 5 "$limit" "$@" > "$W/$name.out" 2> "$W/$name.err"
  rc=$?
  {
    echo "== $name rc=$rc $((SECONDS - t0))s (limit ${limit}s): $*"
    cat "$W/$name.out"
    echo
  } >> "$RES"
  { echo "== $name rc=$rc"; tail -c 4000 "$W/$name.err"; echo; } >> "$LOG"
  SUMMARY+=("$(printf '%-10s rc=%-3s %4ss  %s' "$name" "$rc" "$((SECONDS - t0))" \
    "$(tr -d ' \n' < "$W/$name.out" | grep -o \
       '"images_per_second":[0-9.e+-]*\|"failures":[0-9]*\|"max_abs_cos":[0-9.e+-]*\|"steps":[0-9]*' \
       | head -4 | tr '\n' ' ')")")
}

WL=(--arch resnet50 --batch 256 --size 224 --classes 100000 --head ebv --dim 5000)
run_stage() {
  case $1 in
    env)
      {
        nvidia-smi
        echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
        for b in "$BIN" "$BASIS"; do echo "-- ldd $b"; ldd "$b" | grep -v -e linux-vdso -e ld-linux; done
        $PY -m pip list 2>/dev/null | grep -i -e torch -e nvidia -e cuda
      } > "$ENV" 2>&1 ;;
    kernels) stage kernels 120 "$BIN" --check-kernels --device cuda:0 --json ;;
    small) stage small 60 "$BIN" --bench-steps 3 --synthetic --device cuda:0 --arch resnet18 --width 16 \
      --set model.small_stem=true --batch 64 --size 32 --classes 10 --dim 32 --json --quiet ;;
    ebvfind) stage ebvfind 180 env EBV_CUDNN_FIND=1 "$BIN" --bench-steps 5 --synthetic --device cuda:0 "${WL[@]}" \
      --precision bf16 --json --quiet ;;
    torch) stage torch 120 $PY benches/peers/torch_step.py "${WL[@]}" --device cuda --bf16 --channels-last \
      --steps 10 ;;
    ebv) stage ebv 180 "$BIN" --bench-steps 5 --synthetic --device cuda:0 "${WL[@]}" --precision bf16 \
      --json --quiet ;;
    basis)
      local G=(generate --classes 1000 --dim 512 --alpha 0.05 --method adaptive --json -q)
      stage basis-cpu 60 "$BASIS" "${G[@]}" --device cpu --out "$W/b-cpu.safetensors"
      stage basis-gpu 60 "$BASIS" "${G[@]}" --device cuda:0 --out "$W/b-gpu.safetensors"
      stage basis-chk 30 "$BASIS" check "$W/b-gpu.safetensors" --json ;;
    kernels16) stage kernels16 120 "$BIN" --check-kernels --device cuda:0 --precision bf16 --json ;;
    chunked) stage chunked 150 "$BIN" --bench-steps 3 --synthetic --device cuda:0 "${WL[@]}" --precision bf16 \
      --set model.class_chunk=25000 --json --quiet ;;
    torchnchw) stage torchnchw 120 $PY benches/peers/torch_step.py "${WL[@]}" --device cuda --bf16 --steps 10 ;;
    convs) stage convs 90 $PY benches/peers/torch_convs.py --batch 32 --dtype bf16 ;;
    torchbench) stage torchbench 120 $PY benches/peers/torch_step.py "${WL[@]}" --device cuda --bf16 \
      --channels-last --cudnn-benchmark --steps 10 ;;
    f32) stage f32 120 "$BIN" --bench-steps 2 --synthetic --device cuda:0 --arch resnet50 --batch 64 --size 224 \
      --classes 100000 --head ebv --dim 5000 --json --quiet ;;
    basis10k) stage basis10k 90 "$BASIS" generate --classes 10000 --dim 512 --init kerdock --method pnorm \
      --alpha 0.056 --steps 3000 --max-seconds 60 --device cuda:0 --mem 8GiB --out "$W/b-10k.safetensors" \
      --json -q ;;
    basis100k) stage basis100k 90 "$BASIS" generate --classes 100000 --dim 5000 --alpha 0.12 --device cuda:0 \
      --mem 16GiB --out "$W/b-100k.safetensors" --json -q ;;
    ddp)
      if [ "$(nvidia-smi -L 2>/dev/null | wc -l)" -ge 2 ] && [ -n "${EBV_SHARDS:-}" ]; then
        stage ddp 120 "$BIN" --gpus 2 --shards "$EBV_SHARDS" --arch resnet18 --width 16 --epochs 1 \
          --batch 64 --head fc --out "$W/ddp-run" --quiet --json
      fi ;;
    *) echo "unknown stage $1" >&2; exit 2 ;;
  esac
}

STAGES=("$@")
[ ${#STAGES[@]} -eq 0 ] && STAGES=(env kernels small torch ebv ebvfind basis kernels16 chunked torchnchw convs torchbench f32 basis10k basis100k ddp)
for s in "${STAGES[@]}"; do run_stage "$s"; done
rm -rf "$W"
echo "== summary (details in $RES, stderr tails in $LOG)"
printf '%s\n' "${SUMMARY[@]}"
