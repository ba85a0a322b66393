#!/usr/bin/env bash
# Re-encoding: what --subsampling costs and buys, in one run.
# 1. examples/encode_rate brings every JPEG of a zip to 224×224 as ebv-pack
#    does and encodes it with jpeg-encoder as 4:4:4, 4:2:0 keeping the
#    top-left chroma (jpeg-encoder's own choice below q90) and 4:2:0 by the
#    block mean (ebv-pack's default): encode µs, bytes, zune-jpeg decode µs,
#    PSNR. benches/peers/pillow_encode.py encodes the same pixels with Pillow
#    (libjpeg-turbo) as 4:4:4 and 4:2:0.
# 2. ebv-pack --encoding jpeg of the zip with --subsampling 420 and 444,
#    alternating: images/s and bytes written.
# Usage: bash benches/reencode.sh PYTHON ZIP [QUALITY] [REPEATS]
# PYTHON needs numpy and pillow; ZIP e.g. from
# ../shared/peers/pack-baseline/gen_synth_zip.py --sizes varied.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PY=${1:?python}
ZIP=$(realpath "${2:?zip}")
Q=${3:-95}
REPEATS=${4:-3}
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
(cd "$ROOT" && cargo build --release -q --bin ebv-pack --example encode_rate)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
echo "# $(date -Is) load: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
"$TARGET/release/examples/encode_rate" "$ZIP" "$Q" "$WORK/px.rgb"
$PY "$ROOT/benches/peers/pillow_encode.py" "$WORK/px.rgb" "$Q"
rm -f "$WORK/px.rgb"
for rep in $(seq "$REPEATS"); do
  for sub in 420 444; do
    rm -rf "$WORK/out"
    "$TARGET/release/ebv-pack" "$ZIP" --out "$WORK/out" --quality "$Q" --subsampling "$sub" --quiet --json |
      $PY -c 'import json,sys; d=json.load(sys.stdin); print(json.dumps({"pack": sys.argv[1], "rep": int(sys.argv[2]), "rows": sum(s["rows"] for s in d["splits"].values()), "converted": sum(s["converted"] for s in d["splits"].values()), "bytes_written": d["bytes_written"], "images_per_s": round(d["images_per_s"], 1)}))' "$sub" "$rep"
  done
done
