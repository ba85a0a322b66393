#!/usr/bin/env bash
# The paper's 100k-class shape at full entry count: 1.8M small JPEGs in
# 100,000 class folders (benches/peers/gen_scale_zip.py), packed by ebv-pack
# (JPEG passthrough at --size 32) and by the Python peer (`--mode bytes`),
# alternated, with the archive's pages warm (just read) and cold (evicted with
# posix_fadvise before the run). Prints wall time, images/s and the peak
# anonymous and file-backed resident memory of each run (sampled every 50 ms).
#
#   bash benches/pack_scale.sh PYTHON WORKDIR [ROUNDS] [EBV_PACK...]
#
# PYTHON needs numpy, Pillow and pyarrow (the peer's venv). EBV_PACK defaults to
# target/release/ebv-pack; give several binaries to compare builds.
set -euo pipefail
py=${1:?python with numpy, pillow, pyarrow}
work=${2:?work dir}
rounds=${3:-2}
shift $(($# < 3 ? $# : 3))
bins=("$@")
[ ${#bins[@]} -gt 0 ] || bins=(target/release/ebv-pack)
here=$(cd "$(dirname "$0")" && pwd)
peer=${PEER:-$here/../../shared/peers/pack-baseline/pack_parquet.py}
mkdir -p "$work"
zip=$work/scale.zip
[ -f "$zip" ] || "$py" "$here/peers/gen_scale_zip.py" --out "$zip"

evict() {
  "$py" -c 'import os, sys
fd = os.open(sys.argv[1], os.O_RDONLY); os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED); os.close(fd)' "$1"
}

# measure LABEL CACHE CMD...: one run; prints a table row.
measure() {
  local label=$1 cache=$2; shift 2
  rm -rf "$work/out"
  if [ "$cache" = cold ]; then evict "$zip"; else cat "$zip" >/dev/null; fi
  local t0 t1 pa=0 pf=0 a f
  t0=$(date +%s.%N)
  "$@" >"$work/run.out" 2>"$work/run.err" &
  local pid=$!
  while kill -0 $pid 2>/dev/null; do
    read -r a f < <(awk '/^RssAnon/{a=$2}/^RssFile/{f=$2}END{print a+0, f+0}' /proc/$pid/status 2>/dev/null || echo "0 0")
    [ "$a" -gt "$pa" ] && pa=$a
    [ "$f" -gt "$pf" ] && pf=$f
    sleep 0.05
  done
  wait $pid || { echo "$label failed:"; cat "$work/run.err"; exit 2; }
  t1=$(date +%s.%N)
  local n
  n=$(find "$work/out" -name '*.parquet' | wc -l)
  awk -v l="$label" -v c="$cache" -v t0="$t0" -v t1="$t1" -v pa="$pa" -v pf="$pf" -v n="$n" \
    'BEGIN { w = t1 - t0; printf "%-28s %-5s %8.2f %10.0f %9.0f %9.0f %7d\n", l, c, w, 1800000 / w, pa / 1024, pf / 1024, n }'
}

echo "# $(date -u +%FT%TZ) $(uptime)"
printf "%-28s %-5s %8s %10s %9s %9s %7s\n" tool cache wall_s img/s anon_MB file_MB shards
for r in $(seq "$rounds"); do
  for cache in warm cold; do
    for b in "${bins[@]}"; do
      for t in 1 2; do
        measure "$(basename "$b") t$t" $cache "$b" "$zip" --out "$work/out" --size 32 --threads $t --quiet --json
      done
    done
    for w in 1 2; do
      measure "peer bytes w$w" $cache "$py" "$peer" "$zip" "$work/out" --mode bytes --workers $w
    done
  done
done
rm -rf "$work/out"
