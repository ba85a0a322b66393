#!/usr/bin/env bash
# ebv-pack against the Python peer packer (../shared/peers/pack-baseline),
# side by side on the same generated zips, alternating runs, in one go.
# Prints one JSON line per run and a table of median images/s and ratios.
# Usage: bash benches/pack_vs_peer.sh [PYTHON] [WORKDIR] [N_IMAGES] [REPEATS]
# PYTHON needs numpy, pillow and pyarrow (python3 -m venv V && V/bin/pip install numpy pillow pyarrow).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PEER=${EBV_PEER:-"$ROOT/../shared/peers/pack-baseline"}
PY=${1:-python3}
WORK=${2:-/tmp/ebv-pack-bench}
N=${3:-2000}
REPEATS=${4:-3}
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release
(cd "$ROOT" && cargo build --release -q --bin ebv-pack --example decode_rate)
EX=${CARGO_TARGET_DIR:-$ROOT/target}/release/examples/decode_rate
mkdir -p "$WORK/data" "$WORK/out"
cd "$WORK"
[ -f data/synth_224.zip ] || $PY "$PEER/gen_synth_zip.py" --out data/synth_224.zip --n "$N" --classes 100 --sizes 224 >&2
[ -f data/synth_224_stored.zip ] || $PY "$PEER/gen_synth_zip.py" --out data/synth_224_stored.zip --n "$N" --classes 100 --sizes 224 --compression stored >&2
[ -f data/synth_varied.zip ] || $PY "$PEER/gen_synth_zip.py" --out data/synth_varied.zip --n "$N" --classes 100 --sizes varied >&2
# At scale: 10 × N distinct 224 images, stored (raw and passthrough), so that
# per-run fixed costs (start-up, listing, the final sync, the peer's ~1.3 s
# first pyarrow write) do not dominate. Distinct, not the small zip's entries
# repeated: pyarrow dictionary-encodes repeated values, and on a zip of ten
# copies the peer writes a tenth of the bytes (300 MiB instead of 2.9 GB raw).
LARGE=data/synth_224_large_stored.zip
[ -f "$LARGE" ] || $PY "$PEER/gen_synth_zip.py" --out "$LARGE" --n "$((N * 10))" --classes 100 --sizes 224 --compression stored >&2
RES="$WORK/results.jsonl"
: > "$RES"
echo "# $(date -Is) load: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
for rep in $(seq "$REPEATS"); do
  for zip in 224 224_stored varied 224_large_stored; do
    # peer modes: raw (decode+resize, raw pixels), jpeg (decode+resize+re-encode), bytes (passthrough)
    for mode in raw jpeg bytes; do
      [ "$mode" = bytes ] && [ "$zip" = varied ] && continue
      [ "$mode" = jpeg ] && [ "$zip" = 224_large_stored ] && continue
      for w in 1 2; do
        rm -rf out/peer
        line=$($PY "$PEER/pack_parquet.py" "data/synth_$zip.zip" out/peer --mode "$mode" --workers "$w" | tail -1)
        echo "{\"tool\": \"peer\", \"zip\": \"$zip\", \"mode\": \"$mode\", \"threads\": $w, \"rep\": $rep, ${line#\{}" | tee -a "$RES"
        emode=$mode; [ "$mode" = bytes ] && emode=jpeg
        [ "$mode" = jpeg ] && [ "$zip" != varied ] && continue  # ebv's jpeg on 224 input is passthrough (the bytes row)
        rm -rf out/ebv
        line=$("$BIN/ebv-pack" "data/synth_$zip.zip" --out out/ebv --encoding "$emode" --threads "$w" --quiet --json | tr -d '\n ')
        echo "{\"tool\": \"ebv\", \"zip\": \"$zip\", \"mode\": \"$mode\", \"threads\": $w, \"rep\": $rep, ${line#\{}" | tee -a "$RES"
      done
    done
    for w in 1 2; do
      line=$("$EX" "data/synth_$zip.zip" "$w")
      echo "{\"tool\": \"decode-only\", \"zip\": \"$zip\", \"mode\": \"decode\", \"threads\": $w, \"rep\": $rep, ${line#\{}" | tee -a "$RES"
    done
  done
done
$PY - "$RES" <<'PY'
import json, sys, statistics as st
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
def med(tool, zip, mode, t, key="images_per_s"):
    v = [r[key] for r in rows if r["tool"] == tool and r["zip"] == zip and r["mode"] == mode and r["threads"] == t]
    return st.median(v) if v else None
print(f"\n{'zip':<16} {'mode':<6} {'thr':>3} {'ebv img/s':>10} {'peer img/s':>10} {'ratio':>6} {'ebv/CPU-s':>10} {'peer/CPU-s':>10} {'ratio':>6} {'decode-only':>11} {'ebv/decode':>10}")
for zip in ["224", "224_stored", "varied", "224_large_stored"]:
    for mode in ["raw", "jpeg", "bytes"]:
        for t in [1, 2]:
            e, p, d = med("ebv", zip, mode, t), med("peer", zip, mode, t), med("decode-only", zip, "decode", t)
            ec, pc = med("ebv", zip, mode, t, "images_per_cpu_s"), med("peer", zip, mode, t, "images_per_cpu_s")
            if e is None or p is None:
                continue
            d = d or float("nan")
            print(f"{zip:<16} {mode:<6} {t:>3} {e:>10.0f} {p:>10.0f} {e/p:>5.1f}x {ec:>10.0f} {pc:>10.0f} {ec/pc:>5.1f}x {d:>11.0f} {e/d:>9.2f}x")
PY
