"""Damage to JPEG scan data: ebv-pack against libjpeg (djpeg's warnings) and Pillow.

Usage: python jpeg_data_fuzz.py path/to/ebv-pack N SEED [ebv-pack flags...]
(needs Pillow, numpy and pyarrow: the peer venv of benches/pack_vs_peer.sh;
and djpeg/cjpeg: Debian's libjpeg-turbo-progs). Work folder: $FUZZ_WORK,
default /tmp/jpeg-data-fuzz.

Makes four 64x64 JPEG fixtures (Pillow q90 4:2:0, 4:4:4, progressive; cjpeg
with a restart marker every MCU row) and N mutants, each with one change in
the coded data after the first scan header: a byte set (60 %) or deleted
(20 %), or the file cut (20 %). ebv-pack packs them raw at 64x64 with the
given flags (e.g. --verify decode); djpeg decodes each (clean, warn: a
"Corrupt JPEG data" warning, error) and Pillow loads each. Prints the count
of each (libjpeg, Pillow, ebv) outcome, then by reason with an example.
"libjpeg warn, Pillow ok, ebv packed" is damage libjpeg reports and ebv
packs without a word; "libjpeg clean, ebv rejected" is an image lost.
"""
import io, os, random, shutil, subprocess, sys, json, re, collections
import numpy as np, pyarrow.parquet as pq
from PIL import Image
EBV, N, SEED = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = random.Random(SEED)
W = H = 64
y, x = np.mgrid[0:H, 0:W]
rgb = np.stack([(x * 4) % 256, (y * 5) % 256, ((x + y) * 3) % 256], -1).astype(np.uint8)
fixtures = {}
for name, kw in [("q90-420", dict(quality=90)), ("q90-444", dict(quality=90, subsampling=0)),
                 ("prog", dict(quality=90, progressive=True)), ("rst", dict(quality=90))]:
    b = io.BytesIO(); Image.fromarray(rgb).save(b, "JPEG", **kw); fixtures[name] = b.getvalue()
# restart intervals via cjpeg
p = subprocess.run(["cjpeg", "-quality", "90", "-restart", "1"], input=subprocess.run(["djpeg", "-pnm"], input=fixtures["q90-420"], capture_output=True).stdout, capture_output=True)
fixtures["rst"] = p.stdout
def sos_end(b):
    i = b.index(b"\xff\xda"); n = int.from_bytes(b[i+2:i+4], "big"); return i + 2 + n
work = os.environ.get("FUZZ_WORK", "/tmp/jpeg-data-fuzz"); shutil.rmtree(work, ignore_errors=True); os.makedirs(work + "/src/train/a")
files, change = {}, {}
for k in range(N):
    name = rng.choice(list(fixtures)); b = bytearray(fixtures[name]); s = sos_end(b)
    op = rng.random()
    if op < 0.6:
        at = rng.randrange(s, len(b) - 2); v = rng.randrange(256); b[at] = v; what = f"byte {at} set to {v}"
    elif op < 0.8:
        at = rng.randrange(s, len(b) - 2); del b[at]; what = f"byte {at} deleted"
    else:
        at = rng.randrange(s, len(b)); b = b[:at]; what = f"cut at {at}"
    key = f"train/a/{name}-{k:05d}.jpg"; files[key] = bytes(b); change[key] = what
    open(f"{work}/src/{key}", "wb").write(b)
for name, b in fixtures.items():
    files[f"train/a/{name}-orig.jpg"] = b; open(f"{work}/src/train/a/{name}-orig.jpg", "wb").write(b)
r = subprocess.run([EBV, f"{work}/src", "--out", f"{work}/out", "--encoding", "raw", "--size", f"{W}", "--quiet", "--force"] + sys.argv[4:], capture_output=True)
man = json.load(open(f"{work}/out/manifest.json")); rejected = {e["key"]: e["reason"] for e in man["rejected"]}
packed = {}
for f in os.listdir(f"{work}/out"):
    if f.endswith(".parquet"):
        t = pq.read_table(f"{work}/out/{f}", columns=["key", "image"])
        for k, im in zip(t.column("key").to_pylist(), t.column("image").to_pylist()):
            packed[k] = np.frombuffer(im, np.uint8).reshape(H, W, 3)
tally = collections.Counter(); ex = {}
def pil(b):
    try:
        im = Image.open(io.BytesIO(b)); im.load(); return np.asarray(im.convert("RGB")), None
    except Exception as e: return None, type(e).__name__ + ": " + str(e)[:60]
for key, b in files.items():
    d = subprocess.run(["djpeg", "-pnm"], input=b, capture_output=True)
    warn = d.stderr.decode().strip().splitlines()
    lj = "error" if d.returncode != 0 and not d.stdout else ("warn" if warn else "clean")
    px, perr = pil(b)
    ebv = "rejected" if key in rejected else "packed"
    fname = key.split("/")[-1].rsplit("-", 1)[0]
    intact_ebv = key in packed and px is not None and np.abs(packed[key].astype(int) - px.astype(int)).max() <= 0
    cls = (lj, "pillow-ok" if px is not None else "pillow-err", ebv)
    tally[cls] += 1
    reason = re.sub(r"[0-9]+", "N", rejected.get(key, warn[0] if warn else ""))[:90]
    ex.setdefault((cls, reason), f"{key}: {change.get(key,'orig')}")
    tally[("reason",) + cls + (reason,)] += 1
for k, n in sorted(tally.items(), key=lambda kv: str(kv[0])):
    if k[0] != "reason": print(f"{n:6d}  libjpeg {k[0]:5s} {k[1]:10s} ebv {k[2]}")
print()
for k, n in sorted(tally.items(), key=lambda kv: -kv[1]):
    if k[0] == "reason": print(f"{n:6d}  {k[1]}/{k[2]}/{k[3]}  {k[4]}  e.g. {ex[(k[1:4], k[4])]}")
