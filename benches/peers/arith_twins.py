"""Arithmetic-coded JPEGs against their Huffman-coded twins, in ebv-pack and
in Pillow, on a zip of JPEGs (the peer's `gen_synth_zip.py` output).

Usage: python arith_twins.py path/to/ebv-pack ZIP [workdir]
(needs numpy, pillow, pyarrow, and libjpeg-turbo's jpegtran: Debian's
libjpeg-turbo-progs).

Each JPEG of ZIP is re-coded by `jpegtran -arithmetic` (the same coefficients,
arithmetic coding), in turn sequential, progressive, and sequential with a
restart every MCU row: twins that every decoder should turn into the same
pixels. Both sets are packed by ebv-pack (raw, 224x224, 1 thread) into two
folders of shards, and the rows compared; Pillow decodes both sets too.
Prints the agreement and the time each side took, arithmetic against Huffman.
Pillow fails ("broken data stream") on some arithmetic files: libjpeg's
arithmetic decoder cannot suspend for more input, and Pillow feeds it in
blocks; djpeg (libjpeg-turbo with the whole file) reads those, and the script
checks them with it.
"""
import io, os, shutil, subprocess, sys, time, zipfile
import numpy as np
from PIL import Image
import pyarrow.parquet as pq

EBV, ZIP = sys.argv[1], sys.argv[2]
WORK = sys.argv[3] if len(sys.argv) > 3 else "/tmp/arith-twins"
shutil.rmtree(WORK, ignore_errors=True)
opts = [[], ["-progressive"], ["-restart", "1"]]
sets = {"huff": {}, "arith": {}}
with zipfile.ZipFile(ZIP) as z:
    names = sorted(n for n in z.namelist() if n.lower().endswith((".jpg", ".jpeg")))
    for i, n in enumerate(names):
        huff = z.read(n)
        arith = subprocess.run(["jpegtran", "-arithmetic", *opts[i % 3]], input=huff,
                               capture_output=True, check=True).stdout
        sets["huff"][n] = huff
        sets["arith"][n] = arith
for kind, files in sets.items():
    for n, b in files.items():
        p = os.path.join(WORK, kind, "src", n)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        open(p, "wb").write(b)

def pack(kind):
    out = os.path.join(WORK, kind, "out")
    shutil.rmtree(out, ignore_errors=True)
    t = time.perf_counter()
    subprocess.run([EBV, os.path.join(WORK, kind, "src"), "--out", out, "--encoding", "raw",
                    "--threads", "1", "--quiet", "--strict"], check=True)
    return time.perf_counter() - t

def rows(kind):
    out = os.path.join(WORK, kind, "out")
    got = {}
    for f in sorted(os.listdir(out)):
        if f.endswith(".parquet"):
            t = pq.read_table(os.path.join(out, f), columns=["key", "image"]).to_pydict()
            got.update(zip(t["key"], t["image"]))
    return got

def pillow(kind):
    """Pillow's pixels of each file (None where it fails), and the time."""
    t = time.perf_counter()
    px = {}
    for n, b in sets[kind].items():
        try:
            px[n] = np.asarray(Image.open(io.BytesIO(b)).convert("RGB"))
        except OSError:
            px[n] = None
    return px, time.perf_counter() - t

def djpeg(b):
    ppm = subprocess.run(["djpeg", "-ppm"], input=b, capture_output=True, check=True).stdout
    return np.asarray(Image.open(io.BytesIO(ppm)).convert("RGB"))

times = {k: [] for k in sets}
for _ in range(3):
    for kind in sets:
        times[kind].append(pack(kind))
a, h = rows("arith"), rows("huff")
same = sum(a[k] == h[k] for k in h)
pa, ta = pillow("arith")
ph, th = pillow("huff")
failed = [n for n in pa if pa[n] is None]
psame = sum(pa[n] is not None and np.array_equal(pa[n], ph[n]) for n in ph)
dsame = sum(np.array_equal(djpeg(sets["arith"][n]), ph[n]) for n in failed)
big = sum(len(sets["arith"][n]) > 65536 for n in failed)
mb = {k: sum(map(len, v.values())) / 1e6 for k, v in sets.items()}
print(f"{len(names)} JPEGs: {mb['huff']:.1f} MB Huffman, {mb['arith']:.1f} MB arithmetic")
print(f"ebv-pack raw rows identical, arithmetic vs Huffman: {same}/{len(h)}")
print(f"Pillow pixels identical, arithmetic vs Huffman: {psame}/{len(ph)}; "
      f"Pillow failed on {len(failed)} arithmetic files ({big} of them above 64 KiB), "
      f"djpeg decodes {dsame} of those to the Huffman twin's Pillow pixels")
for kind in sets:
    print(f"ebv-pack {kind:5s} 1 thread: " + " ".join(f"{len(names) / t:.0f}" for t in times[kind]) + " img/s")
print(f"Pillow decode: arith {len(names) / ta:.0f} img/s, huff {len(names) / th:.0f} img/s")
ratio_ebv = np.median(times["huff"]) / np.median(times["arith"])
print(f"arithmetic / Huffman speed: ebv-pack {ratio_ebv:.2f}, Pillow decode {th / ta:.2f}")
