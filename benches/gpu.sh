#!/usr/bin/env bash
# One prepared GPU check, for a machine with an NVIDIA GPU and PyTorch
# installed (our device image). Runs in well under 8 minutes and writes its
# results to $OUT (default ./gpu-out):
#   gpu.txt           nvidia-smi
#   kernels-f32.json  ebv-train --check-kernels: cuDNN conv (forward and both
#   kernels-bf16.json backward passes), max-pool and BatchNorm on the GPU,
#                     both --kernels, against the CPU f64 reference, and
#                     ResNet-50 conv layers timed cuDNN vs candle (batch 32)
#   torch.json        PyTorch: ResNet-50, batch 256, 224², bf16 autocast,
#                     channels-last, EBV head C = 100,000, d = 5000
#   ebv.json          ebv-train --bench-steps on the same workload, bf16
#                     mixed precision (f32 master weights), or its error
#   ebv-chunked.json  the bf16 workload with the head scored 25,000 classes
#                     at a time (model.class_chunk): the chunking's cost
#   ebv-f32.json      the same in f32, batch 64 (the bf16 gain)
#   ebv-small.json    a small ResNet-18 step on the GPU (a smoke test)
#   ddp.txt           two-rank data-parallel smoke run when 2+ GPUs exist
#   basis-*.json      ebv-basis generate --device cuda:0: the same (1000, 512)
#                     run on CPU and GPU (parity), 10,000 classes in R^512 with
#                     p-norm steps from a Kerdock start (time to 1.3 × Welch),
#                     and the paper's 100,000 × 5000 case (one full evaluation)
#
# Build here, stripped and compressed so it can be carried (the device takes
# 64 MiB; the two stripped binaries are ~100 MB, ~30 MB gzipped):
#   eval "$(bash tools/cuda-env.sh /var/tmp/ebv-cuda)"
#   CARGO_PROFILE_RELEASE_DEBUG=0 CARGO_PROFILE_RELEASE_STRIP=true \
#     CARGO_TARGET_DIR=target-gpu cargo build --release --features cuda --bin ebv-train --bin ebv-basis
#   tar czf target-gpu/bins.tgz -C target-gpu/release ebv-train ebv-basis
# then carry target-gpu/bins.tgz and run bash benches/gpu.sh (it unpacks it).
# The CUDA libraries come from the PyTorch install (same sonames: CUDA 13,
# cuDNN 9, NCCL 2) unless LD_LIBRARY_PATH already provides them.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
if [ -f target-gpu/bins.tgz ]; then
  mkdir -p target-gpu/release && tar xzf target-gpu/bins.tgz -C target-gpu/release
fi
BIN=${EBV_TRAIN:-target-gpu/release/ebv-train}
BASIS=${EBV_BASIS:-target-gpu/release/ebv-basis}

nvidia-smi > "$OUT/gpu.txt" 2>&1 || echo "no nvidia-smi" > "$OUT/gpu.txt"
NV=$($PY -c 'import nvidia, os; print(os.path.dirname(nvidia.__path__[0]) + "/nvidia")' 2>/dev/null || true)
if [ -n "$NV" ]; then
  for d in "$NV"/*/lib "$NV"/cu13/lib; do
    [ -d "$d" ] && LD_LIBRARY_PATH="$d${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  done
  export LD_LIBRARY_PATH
fi
echo "LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}" >> "$OUT/gpu.txt"

timeout 150 "$BIN" --check-kernels --device cuda:0 --json > "$OUT/kernels-f32.json" 2> "$OUT/kernels-f32.err"
echo "check-kernels f32 exit $?" >> "$OUT/gpu.txt"
timeout 150 "$BIN" --check-kernels --device cuda:0 --precision bf16 --json \
  > "$OUT/kernels-bf16.json" 2> "$OUT/kernels-bf16.err"
echo "check-kernels bf16 exit $?" >> "$OUT/gpu.txt"

W=(--arch resnet50 --batch 256 --size 224 --classes 100000 --head ebv --dim 5000)
timeout 180 $PY benches/peers/torch_step.py "${W[@]}" --device cuda --bf16 --channels-last --steps 10 \
  > "$OUT/torch.json" 2> "$OUT/torch.err"

timeout 120 "$BIN" --bench-steps 3 --synthetic --device cuda:0 --arch resnet18 --width 16 \
  --set model.small_stem=true --batch 64 --size 32 --classes 10 --dim 32 --json --quiet \
  > "$OUT/ebv-small.json" 2> "$OUT/ebv-small.err"
timeout 200 "$BIN" --bench-steps 3 --synthetic --device cuda:0 "${W[@]}" --precision bf16 --json --quiet \
  > "$OUT/ebv.json" 2> "$OUT/ebv.err"
timeout 150 "$BIN" --bench-steps 3 --synthetic --device cuda:0 "${W[@]}" --precision bf16 \
  --set model.class_chunk=25000 --json --quiet > "$OUT/ebv-chunked.json" 2> "$OUT/ebv-chunked.err"
timeout 100 "$BIN" --bench-steps 2 --synthetic --device cuda:0 --arch resnet50 --batch 64 --size 224 \
  --classes 100000 --head ebv --dim 5000 --json --quiet > "$OUT/ebv-f32.json" 2> "$OUT/ebv-f32.err"
# Data-parallel smoke run: needs shards; skipped on one GPU.
if [ "$(nvidia-smi -L 2>/dev/null | wc -l)" -ge 2 ] && [ -n "${EBV_SHARDS:-}" ]; then
  timeout 120 "$BIN" --gpus 2 --shards "$EBV_SHARDS" --arch resnet18 --width 16 --epochs 1 \
    --batch 64 --head fc --out "$OUT/ddp-run" --quiet --json > "$OUT/ddp.txt" 2>&1
fi
# The basis generator on the GPU (its Gram slices as cuBLAS f32 GEMMs).
if [ -x "$BASIS" ]; then
  G=(generate --classes 1000 --dim 512 --alpha 0.05 --method adaptive --json -q)
  timeout 60 "$BASIS" "${G[@]}" --device cpu --out "$OUT/b-cpu.safetensors" \
    > "$OUT/basis-parity-cpu.json" 2> "$OUT/basis-parity-cpu.err"
  timeout 60 "$BASIS" "${G[@]}" --device cuda:0 --out "$OUT/b-gpu.safetensors" \
    > "$OUT/basis-parity-gpu.json" 2> "$OUT/basis-parity-gpu.err"
  timeout 60 "$BASIS" check "$OUT/b-gpu.safetensors" --json > "$OUT/basis-parity-check.json" 2>&1
  timeout 90 "$BASIS" generate --classes 10000 --dim 512 --init kerdock --method pnorm --alpha 0.056 \
    --steps 3000 --max-seconds 75 --device cuda:0 --mem 8GiB --out "$OUT/b-10k.safetensors" --json -q \
    > "$OUT/basis-10k.json" 2> "$OUT/basis-10k.err"
  timeout 60 "$BASIS" generate --classes 100000 --dim 5000 --alpha 0.12 --device cuda:0 --mem 16GiB \
    --out /tmp/b-100k.safetensors --json -q > "$OUT/basis-100k.json" 2> "$OUT/basis-100k.err"
  rm -f "$OUT"/b-*.safetensors /tmp/b-100k.safetensors
fi
for f in "$OUT"/*.json; do echo "== $f"; cat "$f"; done
