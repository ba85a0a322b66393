#!/usr/bin/env bash
# What ebv-stats and ebv-load read from a cold page cache, for two builds side
# by side (e.g. before and after a change to the reader's access advice).
#
# Before each measurement the shards' pages are evicted (posix_fadvise
# DONTNEED); afterwards `fincore` says how many bytes of the shards the run
# brought into the cache, i.e. what it read from the disk.
# Runs, alternating the builds, REPEATS rounds:
#   ebv-stats SHARDS                                  (labels and footers only)
#   ebv-load --batches B  --shuffle global --no-aug   (B batches of 256)
#   ebv-load --epochs 1   --shuffle global --no-aug   (only with EPOCH=1)
# Usage: [REPEATS=3] [BATCHES=4] [EPOCH=0] bash benches/cold_reads.sh BIN_A BIN_B SHARDS...
# BIN_A, BIN_B: folders holding ebv-stats and ebv-load.
set -euo pipefail
A=$1
B=$2
shift 2
REPEATS=${REPEATS:-3}
BATCHES=${BATCHES:-4}
EPOCH=${EPOCH:-0}
evict() {
  python3 -c 'import os, sys
for p in sys.argv[1:]:
    fd = os.open(p, os.O_RDONLY); os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED); os.close(fd)' "$@"
}
cached_mb() { fincore -b "$1"/*.parquet | awk 'NR > 1 {s += $1} END {printf "%.1f", s / 1e6}'; }
summary() {
  python3 -c 'import json, sys
d = json.load(sys.stdin)
print("%d images %.2f s %.0f img/s" % (d["images"], d["wall_s"], d["images_per_s"]), end="")'
}
dev=$(df --output=source "$1" | tail -1 | sed 's|/dev/||; s|[0-9]*$||')
echo "# $(date -Is) load: $(cut -d' ' -f1-3 /proc/loadavg) readahead of $dev: $(cat /sys/block/$dev/queue/read_ahead_kb 2>/dev/null || echo '?') KiB"
for rep in $(seq "$REPEATS"); do
  for bin in "$A" "$B"; do
    for shards in "$@"; do
      evict "$shards"/*.parquet
      t0=$(date +%s.%N)
      "$bin/ebv-stats" "$shards" --json --quiet > /dev/null
      t1=$(date +%s.%N)
      echo "$bin $shards stats: $(awk "BEGIN {printf \"%.3f\", $t1 - $t0}") s, read $(cached_mb "$shards") MB"
      evict "$shards"/*.parquet
      r=$("$bin/ebv-load" --shards "$shards" --no-aug --workers 1 --batches "$BATCHES" --json | summary)
      echo "$bin $shards load $BATCHES batches: $r, read $(cached_mb "$shards") MB"
      if [ "$EPOCH" = 1 ]; then
        evict "$shards"/*.parquet
        r=$("$bin/ebv-load" --shards "$shards" --no-aug --workers 1 --epochs 1 --json | summary)
        echo "$bin $shards load 1 epoch: $r, read $(cached_mb "$shards") MB"
      fi
    done
  done
done
