#!/usr/bin/env bash
# Row-group and shard sizes against pack and loader throughput, the measurement
# behind ebv-pack's defaults (16 MiB row groups, 12 per shard).
#
# For each size the same zip is packed (wall, img/s, peak RSS, footer bytes),
# the shards are summarised by `ebv-stats` (every footer, and the label page
# of every row group), and the train split is streamed by `ebv-load`: one
# epoch from a cold page cache with a global shuffle and with a shuffle
# buffer, and 5 epochs (jpeg: 1) from a warm one. Variants run interleaved,
# REPEATS rounds, medians printed at the end; one JSON line per measurement
# goes to WORKDIR/results.jsonl.
#
# The cache state is set before every measurement: "cold" evicts the shards'
# pages (posix_fadvise DONTNEED), "warm" reads them once. Shards are written
# with O_DIRECT, so they start uncached, and with this disk's 8 MiB readahead
# a label scan over 1 MiB row groups pulls whole shards into the cache:
# without the eviction, whatever ran before would decide the figure.
#
# Inputs: the peer's generated 224x224 zips (`gen_synth_zip.py --sizes 224`,
# as benches/pack_vs_peer.sh makes them): JPEG passthrough on the 20,000
# distinct images of synth_224_large_stored.zip (session 11 used the
# 2,000-image zip's entries ten times over), raw on the 2,000-image one (raw
# is 150 KB an image: 300 MB of shards per variant).
# Usage: bash benches/rowgroup_sweep.sh [ZIPDIR] [WORKDIR] [REPEATS]
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
ZIPS=${1:-/tmp/ebv-pack-bench/data}
WORK=${2:-/var/tmp/ebv-rowgroup-sweep}
REPEATS=${3:-3}
TGT=${CARGO_TARGET_DIR:-$ROOT/target}/release
(cd "$ROOT" && cargo build --release -q --bin ebv-pack --bin ebv-load --bin ebv-stats)
mkdir -p "$WORK"
RES="$WORK/results.jsonl"
: > "$RES"
echo "# $(date -Is) load: $(cut -d' ' -f1-3 /proc/loadavg) cores: $(nproc)" >&2

# encoding zip row_group_MiB rows_per_group rows_per_shard
# rows per group = MiB / image bytes (18.7 KB per JPEG, 150,528 B raw);
# shards keep ~192 MiB except in the last two lines, which vary the shard.
VARIANTS=(
  "jpeg synth_224_large_stored.zip 1 56 10692"
  "jpeg synth_224_large_stored.zip 4 224 10692"
  "jpeg synth_224_large_stored.zip 16 891 10692"
  "jpeg synth_224_large_stored.zip 64 3564 10692"
  "raw synth_224_stored.zip 1 7 1332"
  "raw synth_224_stored.zip 4 28 1332"
  "raw synth_224_stored.zip 16 111 1332"
  "raw synth_224_stored.zip 64 444 1332"
  "jpeg synth_224_large_stored.zip 16 891 1782"
  "jpeg synth_224_large_stored.zip 16 891 42768"
)

peak_kib() { awk '/Maximum resident/ {print $NF}' "$1"; }
evict() {
  python3 -c 'import os, sys
for p in sys.argv[1:]:
    fd = os.open(p, os.O_RDONLY); os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED); os.close(fd)' "$@"
}
load() {
  "$TGT/ebv-load" --shards "$1" --split train --batch 256 --workers 1 --no-aug \
    --shuffle "$2" --seed "$rep" --epochs "$3" --json
}

for rep in $(seq "$REPEATS"); do
  for v in "${VARIANTS[@]}"; do
    read -r enc zip mib rg shard <<<"$v"
    out="$WORK/s-$enc-$mib-$shard"
    rm -rf "$out"
    tag="\"enc\": \"$enc\", \"rg_mib\": $mib, \"rg_rows\": $rg, \"shard_rows\": $shard, \"rep\": $rep"
    line=$(/usr/bin/time -v -o "$WORK/time.txt" "$TGT/ebv-pack" "$ZIPS/$zip" --out "$out" \
      --encoding "$enc" --row-group-rows "$rg" --shard-rows "$shard" --quiet --json | tr -d '\n')
    rss=$(peak_kib "$WORK/time.txt")
    shards=$(ls "$out"/*.parquet | wc -l)
    # Footer length: the 4 bytes before the closing "PAR1", summed over shards.
    footer=$(for f in "$out"/*.parquet; do tail -c 8 "$f" | head -c 4 | od -An -tu4; done | awk '{s+=$1} END {print s}')
    echo "{\"what\": \"pack\", $tag, \"peak_rss_kib\": $rss, \"shard_files\": $shards, \"footer_bytes\": $footer, \"summary\": $line}" | tee -a "$RES"

    evict "$out"/*.parquet
    s0=$(date +%s.%N)
    "$TGT/ebv-stats" "$out" --json --quiet > /dev/null
    s1=$(date +%s.%N)
    echo "{\"what\": \"stats\", $tag, \"wall_s\": $(awk "BEGIN {print $s1 - $s0}")}" | tee -a "$RES"
    for shuffle in global buffer:4096; do
      evict "$out"/*.parquet
      line=$(load "$out" "$shuffle" 1)
      echo "{\"what\": \"load\", \"cache\": \"cold\", \"shuffle\": \"$shuffle\", $tag, \"summary\": $line}" | tee -a "$RES"
    done
    epochs=5; [ "$enc" = jpeg ] && epochs=1
    cat "$out"/*.parquet > /dev/null
    line=$(load "$out" global "$epochs")
    echo "{\"what\": \"load\", \"cache\": \"warm\", \"shuffle\": \"global\", $tag, \"summary\": $line}" | tee -a "$RES"
    rm -rf "$out"
  done
done

python3 - "$RES" <<'PY'
import json, sys, statistics as st
rows = [json.loads(l) for l in open(sys.argv[1])]
default_shard = {"jpeg": 10692, "raw": 1332}
keys = sorted({(r["enc"], r["rg_mib"], r["rg_rows"], r["shard_rows"]) for r in rows},
              key=lambda k: (k[0], k[3] != default_shard[k[0]], k[3], k[1]))
def med(xs): return st.median(xs) if xs else float("nan")
print(f"{'enc':5} {'rg MiB':>6} {'rg rows':>7} {'shard rows':>10} {'files':>5} {'footer KB':>9} "
      f"{'pack img/s':>10} {'pack RSS MB':>11} {'stats s':>7} "
      f"{'cold global':>11} {'cold buffer':>11} {'warm global':>11}")
for k in keys:
    sel = [r for r in rows if (r["enc"], r["rg_mib"], r["rg_rows"], r["shard_rows"]) == k]
    pk = [r for r in sel if r["what"] == "pack"]
    stt = [r["wall_s"] for r in sel if r["what"] == "stats"]
    def ld(cache, shuffle):
        return [r["summary"]["images_per_s"] for r in sel
                if r["what"] == "load" and r["cache"] == cache and r["shuffle"] == shuffle]
    print(f"{k[0]:5} {k[1]:>6} {k[2]:>7} {k[3]:>10} {pk[0]['shard_files']:>5} "
          f"{pk[0]['footer_bytes'] / 1e3:>9.1f} {med([p['summary']['images_per_s'] for p in pk]):>10.0f} "
          f"{med([p['peak_rss_kib'] for p in pk]) / 1024:>11.0f} {med(stt):>7.3f} "
          f"{med(ld('cold', 'global')):>11.0f} {med(ld('cold', 'buffer:4096')):>11.0f} "
          f"{med(ld('warm', 'global')):>11.0f}")
PY
