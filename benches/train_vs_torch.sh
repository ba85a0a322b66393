#!/usr/bin/env bash
# One training step of ebv (its CPU kernels, and candle's own ops) against
# the same step in PyTorch (benches/peers/torch_step.py), random data, f32,
# same threads, run one after the other in this invocation:
#   rn50: ResNet-50, batch 8, 224×224, 1000 classes (FC head)
#   rn18: ResNet-18 at width 32, small stem, batch 64, 32×32, 10 classes (FC head)
# Prints seconds per step (mean of STEPS after one warm-up step; with REPS > 1
# the median over REPS alternated rounds, each round's value listed), peak RSS,
# and the ratios ours/torch.
#
# Usage: benches/train_vs_torch.sh [PYTHON_WITH_TORCH]
# Env:   THREADS  "1 2" (default)   WORKLOADS "rn50 rn18"   STEPS 2   REPS 1
#        CANDLE=0 skips candle's own ops (slow: ~7× torch)
#        IM2COL=1 also times ebv's kernels with run.conv_algo=im2col (no Winograd)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-python3}
THREADS=${THREADS:-"1 2"}
WORKLOADS=${WORKLOADS:-"rn50 rn18"}
STEPS=${STEPS:-2}
REPS=${REPS:-1}
cargo build --release --quiet --bin ebv-train
BIN=${CARGO_TARGET_DIR:-target}/release/ebv-train

echo "# $(date -u +%FT%TZ) $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); $($PY -c 'import torch; print("torch", torch.__version__)'); load $(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-5s %3s %-7s %9s %9s %8s\n' work thr impl s/step rss_GiB vs_torch

field() { python3 -c "import json,sys; print(json.load(sys.stdin)['$1'])"; }

median() { python3 -c "import statistics,sys; print(statistics.median(float(x) for x in sys.argv[1:]))" "$@"; }

for w in $WORKLOADS; do
  case $w in
    rn50) ours=(--arch resnet50 --batch 8 --size 224 --head fc --classes 1000)
          peer=(--arch resnet50 --batch 8 --size 224 --classes 1000) ;;
    rn18) ours=(--arch resnet18 --width 32 --set model.small_stem=true --batch 64 --size 32 --head fc --classes 10)
          peer=(--arch resnet18 --width 32 --small-stem --batch 64 --size 32 --classes 10) ;;
    *) echo "unknown workload $w" >&2; exit 2 ;;
  esac
  impls="ebv"
  [ "${IM2COL:-0}" != 0 ] && impls="$impls im2col"
  [ "${CANDLE:-1}" != 0 ] && impls="$impls candle"
  for t in $THREADS; do
    # REPS rounds, each running torch then every impl once (alternated, so slow
    # phases of a shared machine hit all of them); medians of the rounds.
    declare -A secs=() rss=()
    for ((r = 0; r < REPS; r++)); do
      p=$($PY benches/peers/torch_step.py "${peer[@]}" --threads "$t" --steps "$STEPS")
      secs[torch]+=" $(echo "$p" | field mean_step_seconds)"
      rss[torch]=$(echo "$p" | field peak_rss_bytes)
      for k in $impls; do
        case $k in
          im2col) kflags=(--kernels ebv --set run.conv_algo=im2col) ;;
          *) kflags=(--kernels "$k") ;;
        esac
        o=$(RAYON_NUM_THREADS=$t "$BIN" --bench-steps "$STEPS" --synthetic "${ours[@]}" "${kflags[@]}" --json --quiet)
        secs[$k]+=" $(echo "$o" | field mean_step_seconds)"
        rss[$k]=$(echo "$o" | field peak_rss_bytes)
      done
    done
    ps=$(median ${secs[torch]})
    for k in torch $impls; do
      ks=$(median ${secs[$k]})
      printf '%-5s %3s %-7s %9.3f %9.2f %8.2f   rounds:%s\n' "$w" "$t" "$k" "$ks" "$(awk "BEGIN{print ${rss[$k]}/2^30}")" "$(python3 -c "print($ks/$ps)")" "${secs[$k]}"
    done
    unset secs rss
  done
done
