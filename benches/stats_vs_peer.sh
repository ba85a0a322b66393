#!/usr/bin/env bash
# ebv-stats against the Python peer (../shared/peers/pack-baseline) and
# against plain full-decode loops, on the same shards, alternating runs, in
# one go. Prints one JSON line per run and a table of medians and ratios.
#
#   default figures:  ebv-stats SHARDS           vs  read_parquet.py stats SHARDS
#                     (neither decodes an image: manifest/footers + label column)
#   --deep:           ebv-stats SHARDS --deep    vs  a Python loop (pyarrow + Pillow +
#                     numpy mean/std, what a user would write for the normalisation
#                     values) and the Rust single-thread loops of benches/stats.rs
#                     (parquet crate reader + decode, zero-copy reader + decode)
#
# Usage: bash benches/stats_vs_peer.sh [PYTHON] [WORKDIR] [N_IMAGES] [REPEATS]
# PYTHON needs numpy, pillow and pyarrow (python3 -m venv V && V/bin/pip install numpy pillow pyarrow).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PEER=${EBV_PEER:-"$ROOT/../shared/peers/pack-baseline"}
PY=${1:-python3}
WORK=${2:-/tmp/ebv-stats-bench}
N=${3:-6000}
REPEATS=${4:-3}
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release
(cd "$ROOT" && cargo build --release -q --bin ebv-pack --bin ebv-stats)
# The Rust loops of benches/stats.rs, built once (so the runs below never rebuild).
BENCH_EXE=$(cd "$ROOT" && cargo bench -q --bench stats --no-run --message-format=json | $PY -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "stats" and m.get("executable"):
        print(m["executable"])' | tail -1)
[ -x "$BENCH_EXE" ] || { echo "could not build benches/stats.rs" >&2; exit 2; }
mkdir -p "$WORK/data" "$WORK/out"
cd "$WORK"
# 100 classes (not a multiple of 3, so every class has training images).
[ -f "data/synth_224_$N.zip" ] || $PY "$PEER/gen_synth_zip.py" --out "data/synth_224_$N.zip" --n "$N" --classes 100 --sizes 224 >&2
SH="$WORK/out/shards-$N"
[ -f "$SH/manifest.json" ] || "$BIN/ebv-pack" "data/synth_224_$N.zip" --out "$SH" --quiet >&2
ROWS=$(python3 -c "import json,sys; m=json.load(open(sys.argv[1])); print(sum(s['rows'] for s in m['shards']))" "$SH/manifest.json")

cat > "$WORK/decode_loop.py" <<'PY'
# Full-decode loop a Python user would write: every image of every shard,
# Pillow decode to RGB, exact per-channel sums with numpy integers. Also
# reports the Pillow decode alone (time spent in Image.open/convert/asarray).
import glob, io, json, os, sys, time
import numpy as np, pyarrow.parquet as pq
from PIL import Image
t0, n, dec = time.perf_counter(), 0, 0.0
s, q, px = np.zeros(3, np.uint64), np.zeros(3, np.uint64), 0
for f in sorted(glob.glob(os.path.join(sys.argv[1], "*.parquet"))):
    pf = pq.ParquetFile(f, memory_map=True)
    for rg in range(pf.num_row_groups):
        for b in pf.read_row_group(rg, columns=["image"]).column("image").to_pylist():
            t1 = time.perf_counter()
            a = np.asarray(Image.open(io.BytesIO(b)).convert("RGB")).reshape(-1, 3)
            dec += time.perf_counter() - t1
            w = a.astype(np.uint32)
            s += a.sum(0, dtype=np.uint64); q += (w * w).sum(0, dtype=np.uint64); px += len(a); n += 1
dt = time.perf_counter() - t0
mean = s / px / 255.0
std = np.sqrt(q / px / 65025.0 - mean * mean)
print(json.dumps({"images": n, "wall_s": round(dt, 3), "images_per_s": round(n / dt, 1),
                  "decode_only_per_s": round(n / dec, 1),
                  "mean": [round(v, 4) for v in mean], "std": [round(v, 4) for v in std]}))
PY

cat > "$WORK/measure.py" <<'PY'
# measure.py OUT CMD...: run CMD, save its stdout to OUT, print
# {"wall_s", "cpu_s"} (user+sys of the child). The machine is shared, so
# CPU seconds are the steadier figure.
import json, resource, subprocess, sys, time
t = time.perf_counter()
with open(sys.argv[1], "wb") as out:
    subprocess.run(sys.argv[2:], stdout=out, check=True)
wall = time.perf_counter() - t
ru = resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({"wall_s": round(wall, 4), "cpu_s": round(ru.ru_utime + ru.ru_stime, 4)}))
PY
m() { $PY "$WORK/measure.py" "$@" | tr -d '{}'; }
field() { $PY -c 'import json, sys
d = json.load(open(sys.argv[1]))
for k in sys.argv[2:]:
    d = d[k]
print(d)' "$@"; }

RES="$WORK/results-stats.jsonl"
: > "$RES"
echo "# $(date -Is) $N images, $(nproc) cores, load: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$RES" >&2
for rep in $(seq "$REPEATS"); do
  t=$(m "$WORK/o.json" "$BIN/ebv-stats" "$SH" --json --quiet)
  echo "{\"tool\": \"ebv-stats\", \"what\": \"default\", \"threads\": 2, \"rep\": $rep, $t}" | tee -a "$RES"
  t=$(m "$WORK/o.txt" $PY "$PEER/read_parquet.py" stats "$SH")
  echo "{\"tool\": \"peer\", \"what\": \"default\", \"threads\": 1, \"rep\": $rep, $t}" | tee -a "$RES"
  for thr in 2 1; do
    t=$(RAYON_NUM_THREADS=$thr m "$WORK/o.json" "$BIN/ebv-stats" "$SH" --deep --json --quiet)
    echo "{\"tool\": \"ebv-stats\", \"what\": \"deep\", \"threads\": $thr, \"rep\": $rep, $t, \"images_per_s\": $(field "$WORK/o.json" deep images_per_s)}" | tee -a "$RES"
  done
  t=$(m "$WORK/o.json" $PY "$WORK/decode_loop.py" "$SH")
  echo "{\"tool\": \"python-loop\", \"what\": \"deep\", \"threads\": 1, \"rep\": $rep, $t, $(tr -d '{}' < "$WORK/o.json")}" | tee -a "$RES"
  EBV_STATS_BENCH_DIR="$SH" EBV_STATS_BENCH_ONCE=1 "$BENCH_EXE" | grep '^{' |
    sed "s/^{/{\"tool\": \"rust-bench\", \"rep\": $rep, /" | tee -a "$RES"
done

$PY - "$RES" "$ROWS" <<'PY'
import json, sys, statistics as st
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
n = int(sys.argv[2])
def med(key, **kw):
    v = [r[key] for r in rows if all(r.get(k) == x for k, x in kw.items())]
    return st.median(v) if v else float("nan")
def line(what, wall, cpu=None):
    c = f"{cpu:>12.0f}" if cpu is not None else f"{'':>12}"
    print(f"{what:<56} {wall:>12.0f} {c}")
print(f"\n{n} images (224x224 JPEG, ~18.7 KB each), medians over the runs above")
print(f"{'':<56} {'img/s wall':>12} {'img/CPU-s':>12}")
e_def, p_def = med("wall_s", tool="ebv-stats", what="default"), med("wall_s", tool="peer")
e_cpu, p_cpu = med("cpu_s", tool="ebv-stats", what="default"), med("cpu_s", tool="peer")
line("default figures: ebv-stats (whole process)", n / e_def, n / e_cpu)
line("default figures: peer read_parquet.py stats (whole process)", n / p_def, n / p_cpu)
summ = med("per_s", tool="rust-bench", bench="open_and_summary")
line("  ebv in-process: ShardSet::open + summarize", summ)
d2, d1 = med("images_per_s", tool="ebv-stats", what="deep", threads=2), med("images_per_s", tool="ebv-stats", what="deep", threads=1)
d2w, d1w = med("wall_s", tool="ebv-stats", what="deep", threads=2), med("wall_s", tool="ebv-stats", what="deep", threads=1)
d2c, d1c = med("cpu_s", tool="ebv-stats", what="deep", threads=2), med("cpu_s", tool="ebv-stats", what="deep", threads=1)
line("ebv-stats --deep, 2 threads (whole process)", n / d2w, n / d2c)
line("ebv-stats --deep, 1 thread (whole process)", n / d1w, n / d1c)
line("  decode phase only (JSON deep.images_per_s), 2 threads", d2)
line("  decode phase only (JSON deep.images_per_s), 1 thread", d1)
py, pyc, pyd = med("images_per_s", tool="python-loop"), med("cpu_s", tool="python-loop"), med("decode_only_per_s", tool="python-loop")
line("Python loop: pyarrow + Pillow + numpy sums (whole process)", py, n / pyc)
line("  of which Pillow decode alone", pyd)
for b, label in [("decode_loop_parquet", "Rust loop: parquet crate reader + decode, 1 thread"),
                 ("decode_loop_reader", "Rust loop: zero-copy reader + decode, 1 thread"),
                 ("deep_scan", "Rust in-process deep_scan, 2 threads")]:
    line(label, med("per_s", tool="rust-bench", bench=b), med("per_cpu_s", tool="rust-bench", bench=b))
print(f"\nratios (wall; CPU-s in brackets)")
print(f"  default: peer / ebv-stats time        {p_def / e_def:7.1f}x  [{p_cpu / e_cpu:.1f}x]")
print(f"  --deep 2 thr / Python loop            {(n / d2w) / py:7.2f}x  [{(n / d2c) / (n / pyc):.2f}x]")
print(f"  --deep 1 thr / Python loop            {(n / d1w) / py:7.2f}x  [{(n / d1c) / (n / pyc):.2f}x]")
pq_, pqc = med("per_s", tool="rust-bench", bench="decode_loop_parquet"), med("per_cpu_s", tool="rust-bench", bench="decode_loop_parquet")
print(f"  --deep 1 thr / Rust parquet loop      {(n / d1w) / pq_:7.2f}x  [{(n / d1c) / pqc:.2f}x]")
print(f"  --deep 2 thr / Rust parquet loop      {(n / d2w) / pq_:7.2f}x  [{(n / d2c) / pqc:.2f}x]")
PY
