#!/usr/bin/env bash
# ebv-load against the Python peer loader (`read_parquet.py stream [--aug]`
# from ../shared/peers/pack-baseline) on the same shards, in one run:
# raw and jpeg shards, with and without augmentation, ebv with 1 and 2
# workers, plus the machine's memory-copy rate (examples/memcpy_rate.rs).
# Both read the *same* train shards made by ebv-pack (the peer reads any
# Parquet with `image` and `label` columns). Prints one JSON line per run
# and a table of medians.
# Both stream the train split EPOCHS times (default 5) in one process, so
# the figures are the steady state (ebv's batch buffers are reused from the
# second epoch on, as in training; a one-epoch run of 8 batches mostly
# measures fresh page faults).
# Usage: [EPOCHS=5] bash benches/loader_vs_peer.sh [PYTHON] [WORKDIR] [N_IMAGES] [REPEATS]
# PYTHON needs numpy, pillow and pyarrow.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PEER=${EBV_PEER:-"$ROOT/../shared/peers/pack-baseline"}
PY=${1:-python3}
WORK=${2:-/tmp/ebv-load-bench}
N=${3:-3000}
REPEATS=${4:-3}
EPOCHS=${EPOCHS:-5}
TGT=${CARGO_TARGET_DIR:-$ROOT/target}/release
(cd "$ROOT" && cargo build --release -q --bin ebv-pack --bin ebv-load --example memcpy_rate)
mkdir -p "$WORK/data"
cd "$WORK"
[ -f "data/synth_224_$N.zip" ] || $PY "$PEER/gen_synth_zip.py" --out "data/synth_224_$N.zip" --n "$N" --classes 100 --sizes 224 >&2
for enc in raw jpeg; do
  if [ ! -f "shards-$enc/manifest.json" ]; then
    "$TGT/ebv-pack" "data/synth_224_$N.zip" --out "shards-$enc" --encoding "$enc" --quiet >&2
  fi
  # The peer streams every *.parquet of a folder: give it the train shards only.
  rm -rf "peer-$enc" && mkdir "peer-$enc"
  for f in "shards-$enc"/train-*.parquet; do ln -s "$PWD/$f" "peer-$enc/"; done
done
RES="$WORK/results.jsonl"
: > "$RES"
echo "# $(date -Is) epochs: $EPOCHS load: $(cut -d' ' -f1-3 /proc/loadavg) cores: $(nproc)" >&2
for rep in $(seq "$REPEATS"); do
  line=$("$TGT/examples/memcpy_rate" 1)
  echo "{\"tool\": \"memcpy\", \"threads\": 1, \"rep\": $rep, ${line#\{}" | tee -a "$RES"
  line=$("$TGT/examples/memcpy_rate" 2)
  echo "{\"tool\": \"memcpy\", \"threads\": 2, \"rep\": $rep, ${line#\{}" | tee -a "$RES"
  for enc in raw jpeg; do
    for aug in 0 1; do
      flag=""; [ "$aug" = 1 ] && flag="--aug"
      line=$($PY "$PEER/read_parquet.py" stream "peer-$enc" --epochs "$EPOCHS" $flag | tail -1)
      echo "{\"tool\": \"peer\", \"enc\": \"$enc\", \"aug\": $aug, \"threads\": 1, \"rep\": $rep, ${line#\{}" | tee -a "$RES"
      eflag="--no-aug"; [ "$aug" = 1 ] && eflag="--aug"
      for w in 1 2; do
        line=$("$TGT/ebv-load" --shards "shards-$enc" --split train --batch 256 --keep-last \
          --workers "$w" --prefetch 4 --size 224 $eflag --shuffle global --seed "$rep" \
          --epochs "$EPOCHS" --json)
        echo "{\"tool\": \"ebv\", \"enc\": \"$enc\", \"threads\": $w, \"rep\": $rep, ${line#\{}" | tee -a "$RES"
      done
    done
  done
done
$PY - "$RES" <<'PY'
import json, sys, statistics as st
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
for r in rows:
    if "aug" in r: r["aug"] = int(bool(r["aug"]))
def med(key, **kw):
    v = [r[key] for r in rows if all(r.get(k) == x for k, x in kw.items())]
    return st.median(v) if v else None
mc1 = med("gb_per_s", tool="memcpy", threads=1); mc2 = med("gb_per_s", tool="memcpy", threads=2)
print(f"\nmemcpy: {mc1:.2f} GB/s (1 thread), {mc2:.2f} GB/s (2 threads)")
print(f"{'enc':<5} {'aug':<3} {'ebv thr':>7} {'ebv img/s':>9} {'ebv img/cpu-s':>13} {'peer img/s':>10} {'peer img/cpu-s':>14} {'ratio/s':>7} {'ratio/cpu-s':>11} {'out GB/s':>8} {'% memcpy':>8}")
for enc in ["raw", "jpeg"]:
    for aug in [0, 1]:
        p = med("images_per_s", tool="peer", enc=enc, aug=aug); pc = med("images_per_cpu_s", tool="peer", enc=enc, aug=aug)
        for t in [1, 2]:
            e = med("images_per_s", tool="ebv", enc=enc, aug=aug, threads=t); ec = med("images_per_cpu_s", tool="ebv", enc=enc, aug=aug, threads=t)
            ob = med("output_bytes_per_s", tool="ebv", enc=enc, aug=aug, threads=t) / 1e9
            mc = mc1 if t == 1 else mc2
            print(f"{enc:<5} {aug:<3} {t:>7} {e:>9.0f} {ec:>13.0f} {p:>10.0f} {pc:>14.0f} {e/p:>7.2f} {ec/pc:>11.2f} {ob:>8.2f} {100*ob/mc:>7.0f}%")
PY
