#!/usr/bin/env bash
# The main job end to end on a real dataset that ships as a Debian package:
# Fashion-MNIST (60,000 train + 10,000 test images, 10 classes).
#   basis vectors → shards → shard statistics → training → evaluation,
# first with the EBV head, then the ordinary FC head for comparison.
# Usage: bash demo/fashion-mnist.sh [RUN_DIR]   (default runs/fashion-mnist)
#   FC=0 skips the FC baseline; EPOCHS=N overrides the recipe's 3 epochs.
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${1:-runs/fashion-mnist}
DATA=/usr/share/datasets/fashion-mnist

if [ ! -f "$DATA/train-images-idx3-ubyte.gz" ]; then
  echo "== installing Debian's dataset-fashion-mnist"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  $SUDO apt-get update -q && $SUDO apt-get install -y -q dataset-fashion-mnist
fi

echo "== building (release)"
cargo build --release --bins -q
BIN=${CARGO_TARGET_DIR:-target}/release
mkdir -p "$RUN"

echo "== ebv-basis: 10 class vectors in 32 dimensions"
"$BIN/ebv-basis" generate --classes 10 --dim 32 --alpha 0.002 --seed 42 --out "$RUN/ebv.safetensors"

echo "== ebv-pack: IDX files → 28x28 raw RGB shards"
"$BIN/ebv-pack" "$DATA" --out "$RUN/shards" --encoding raw --size 28 \
  --class-names pipelines/fashion-mnist.classes --force

echo "== ebv-stats"
"$BIN/ebv-stats" "$RUN/shards" --verify

EXTRA=()
[ -n "${EPOCHS:-}" ] && EXTRA+=(--epochs "$EPOCHS")

train() { # head out
  rm -rf "$2"
  local t0=$SECONDS
  local basis=()
  [ "$1" = ebv ] && basis=(--ebv "$RUN/ebv.safetensors")
  "$BIN/ebv-train" --config pipelines/fashion-mnist.toml --shards "$RUN/shards" \
    "${basis[@]}" --head "$1" --out "$2" "${EXTRA[@]}"
  echo "$((SECONDS - t0))" > "$2/wall-seconds"
}

echo "== ebv-train: ResNet-18 (width 8, small stem), EBV head, $RUN/ebv"
train ebv "$RUN/ebv"
echo "== ebv-eval on the 10,000 test images"
"$BIN/ebv-eval" --checkpoint "$RUN/ebv" --shards "$RUN/shards" --quiet
"$BIN/ebv-eval" --checkpoint "$RUN/ebv" --shards "$RUN/shards" --quiet --json > "$RUN/ebv/eval.json"

if [ "${FC:-1}" != 0 ]; then
  echo "== ebv-train: the same network with the ordinary FC head, $RUN/fc"
  train fc "$RUN/fc"
  "$BIN/ebv-eval" --checkpoint "$RUN/fc" --shards "$RUN/shards" --quiet --json > "$RUN/fc/eval.json"
fi

top1() { sed -n 's/.*"top1": *\([0-9.]*\).*/\1/p' "$1"; }
echo
echo "== Fashion-MNIST test top-1"
printf '   EBV head: %s  (training + evaluation %s s)\n' "$(top1 "$RUN/ebv/eval.json")" "$(cat "$RUN/ebv/wall-seconds")"
if [ -f "$RUN/fc/eval.json" ]; then
  printf '   FC head:  %s  (training + evaluation %s s)\n' "$(top1 "$RUN/fc/eval.json")" "$(cat "$RUN/fc/wall-seconds")"
fi
echo "   curves: $RUN/ebv/curves.png, metrics: $RUN/ebv/metrics.jsonl"
