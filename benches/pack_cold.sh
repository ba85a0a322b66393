#!/usr/bin/env bash
# ebv-pack binaries on a zip that is not in the page cache, with the page
# cache held below the zip's size (a 100 GB archive on a 24 GiB machine,
# scaled down) and, optionally, reads throttled to a cloud disk's rate.
# Needs root and cgroup v1 (memory and blkio controllers), as on this VM.
# Prints one line per run: binary, condition, img/s, wall s, major faults.
# Usage: bash benches/pack_cold.sh ZIP OUTDIR REPEATS BIN...
# Env: MEM_MB (cache+memory limit, default 160), IOPS and BPS (read limits
# on the zip's disk for the "throttled" condition, default 3000 and 125 MB/s),
# LIMIT_S (a run's time limit, default 300), ARGS (extra ebv-pack flags),
# CONDS (default "limited throttled").
set -euo pipefail
ZIP=$(realpath "${1:?zip}")
OUT=${2:?outdir}
REPEATS=${3:?repeats}
shift 3
MEM_MB=${MEM_MB:-160}
IOPS=${IOPS:-3000}
BPS=${BPS:-131072000}
LIMIT_S=${LIMIT_S:-300}
ARGS=${ARGS:-"--threads 2"}
CONDS=${CONDS:-"limited throttled"}
MEM=/sys/fs/cgroup/memory/ebv-pack-cold
BLK=/sys/fs/cgroup/blkio/ebv-pack-cold
mkdir -p "$MEM" "$BLK"
echo $((MEM_MB << 20)) > "$MEM/memory.limit_in_bytes"
DEV=$(lsblk -no MAJ:MIN "$(df --output=source "$ZIP" | tail -1)" | head -1 | tr -d ' ')
evict() { python3 -c 'import os,sys; fd=os.open(sys.argv[1],os.O_RDONLY); os.posix_fadvise(fd,0,0,os.POSIX_FADV_DONTNEED)' "$ZIP"; }
echo "# $(date -Is) load: $(cut -d' ' -f1-3 /proc/loadavg); zip $(du -m "$ZIP" | cut -f1) MB; limit ${MEM_MB} MB; disk $DEV"
for rep in $(seq "$REPEATS"); do
  for cond in $CONDS; do
    if [ "$cond" = throttled ]; then
      echo "$DEV $IOPS" > "$BLK/blkio.throttle.read_iops_device"
      echo "$DEV $BPS" > "$BLK/blkio.throttle.read_bps_device"
    else
      echo "$DEV 0" > "$BLK/blkio.throttle.read_iops_device"
      echo "$DEV 0" > "$BLK/blkio.throttle.read_bps_device"
    fi
    for bin in "$@"; do
      rm -rf "$OUT"
      evict
      res=$(sh -c "echo \$\$ > $MEM/cgroup.procs; echo \$\$ > $BLK/cgroup.procs; \
        exec /usr/bin/time -f '%e %F' timeout $LIMIT_S $bin $ZIP --out $OUT $ARGS --quiet --json" 2>&1) || true
      rate=$(echo "$res" | tr -d '\n ' | grep -o '"images_per_s":[0-9.]*' | cut -d: -f2) || true
      echo "$bin $cond ${rate:-"timed out (${LIMIT_S}s)"} $(echo "$res" | tail -1)"
    done
  done
done
echo "$DEV 0" > "$BLK/blkio.throttle.read_iops_device"
echo "$DEV 0" > "$BLK/blkio.throttle.read_bps_device"
rm -rf "$OUT"
