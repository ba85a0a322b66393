#!/usr/bin/env bash
# Two ebv-pack binaries (an earlier commit's and this one's) and the Python
# peer packer, alternating tool by tool on the same zips, with zune-jpeg's
# decode-only rate beside them: what a change cost, and the issue's targets,
# in one run. Prints one JSON line per run, then a table of medians.
# Usage: bash benches/pack_old_new_peer.sh OLD_BIN NEW_BIN PYTHON WORKDIR [REPEATS]
# WORKDIR/data holds the zips made by benches/pack_vs_peer.sh
# (synth_224_stored, synth_224_large_stored, synth_varied); PYTHON needs
# numpy, pillow and pyarrow. EBV_ZIPS="224 224_large varied" picks other
# zips of WORKDIR/data (synth_NAME.zip; a name with "varied" in it gets raw
# and re-encode rows, the others raw and passthrough). Build an old binary with, e.g.,
#   git worktree add /tmp/old COMMIT && (cd /tmp/old && cargo build --release --bin ebv-pack)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PEER=${EBV_PEER:-"$ROOT/../shared/peers/pack-baseline"}
OLD=$(realpath "${1:?old ebv-pack}")
NEW=$(realpath "${2:?new ebv-pack}")
PY=${3:?python}
WORK=${4:?workdir}
REPEATS=${5:-3}
ZIPS=${EBV_ZIPS:-"224_stored 224_large_stored varied"}
(cd "$ROOT" && cargo build --release -q --example decode_rate)
EX=${CARGO_TARGET_DIR:-$ROOT/target}/release/examples/decode_rate
cd "$WORK"
RES="$WORK/old_new_peer.jsonl"
: > "$RES"
echo "# $(date -Is) load: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
for rep in $(seq "$REPEATS"); do
  for zip in $ZIPS; do
    for mode in raw bytes jpeg; do
      case $zip in *varied*) [ "$mode" = bytes ] && continue ;; *) [ "$mode" = jpeg ] && continue ;; esac
      emode=$mode; [ "$mode" = bytes ] && emode=jpeg
      for tool in old new peer; do
        rm -rf out/x
        if [ "$tool" = peer ]; then
          line=$($PY "$PEER/pack_parquet.py" "data/synth_$zip.zip" out/x --mode "$mode" --workers 2 | tail -1)
        else
          bin=$OLD; [ "$tool" = new ] && bin=$NEW
          line=$("$bin" "data/synth_$zip.zip" --out out/x --encoding "$emode" --quiet --json | tr -d '\n ')
        fi
        echo "{\"tool\": \"$tool\", \"zip\": \"$zip\", \"mode\": \"$mode\", \"rep\": $rep, ${line#\{}" | tee -a "$RES"
      done
    done
    line=$("$EX" "data/synth_$zip.zip" 2)
    echo "{\"tool\": \"decode-only\", \"zip\": \"$zip\", \"mode\": \"decode\", \"rep\": $rep, ${line#\{}" | tee -a "$RES"
  done
done
rm -rf out/x
$PY - "$RES" $ZIPS <<'PY'
import json, sys, statistics as st
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
def med(tool, zip, mode, key="images_per_s"):
    v = [r[key] for r in rows if r["tool"] == tool and r["zip"] == zip and r["mode"] == mode]
    return st.median(v) if v else None
print(f"\n{'zip':<17} {'mode':<6} {'old':>8} {'new':>8} {'peer':>8} {'new/old':>8} {'new/peer':>9} {'/CPU-s':>7} {'decode':>8} {'new/dec':>8}")
for zip in sys.argv[2:]:
    d = med("decode-only", zip, "decode")
    for mode in ["raw", "bytes", "jpeg"]:
        o, n, p = med("old", zip, mode), med("new", zip, mode), med("peer", zip, mode)
        if n is None:
            continue
        c = med("new", zip, mode, "images_per_cpu_s") / med("peer", zip, mode, "images_per_cpu_s")
        dec = f"{d:>8.0f} {n / d:>8.2f}" if mode == "raw" else ""
        print(f"{zip:<17} {mode:<6} {o:>8.0f} {n:>8.0f} {p:>8.0f} {n / o:>8.2f} {n / p:>8.1f}x {c:>6.1f}x {dec}")
PY
