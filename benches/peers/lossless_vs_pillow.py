"""Lossless JPEGs (SOF3) decoded by ebv-pack against Pillow (libjpeg-turbo 3).

Usage: python lossless_vs_pillow.py path/to/ebv-pack [workdir] [per-size]
(needs numpy, pillow, pyarrow, imagecodecs; run from anywhere).

Random lossless JPEGs of several sizes: gray or RGB, predictor 1-7, point
transform 0-7, restart intervals of 1-4 rows or none, one interleaved scan or
one scan per component (tests/data/jpeg-lossless/minilossless.py), and
imagecodecs' own (libjpeg-turbo's encoder, predictors 1-7). Each size is
packed raw at its own size (no resize) and every row compared with Pillow's
decode of the same file. Prints the count that agree exactly, per size.
"""
import io, os, random, shutil, subprocess, sys
import numpy as np
from PIL import Image
import pyarrow.parquet as pq
import imagecodecs

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "tests", "data", "jpeg-lossless"))
from minilossless import encode  # noqa: E402

EBV = sys.argv[1]
WORK = sys.argv[2] if len(sys.argv) > 2 else "/tmp/lossless-vs-pillow"
PER = int(sys.argv[3]) if len(sys.argv) > 3 else 40
rng = random.Random(26)
nrng = np.random.default_rng(26)
shutil.rmtree(WORK, ignore_errors=True)
total = agree = 0
for (w, h) in [(1, 1), (37, 23), (64, 3), (3, 64), (101, 57)]:
    src = os.path.join(WORK, f"{w}x{h}", "src", "train", "a")
    os.makedirs(src)
    files = {}
    for i in range(PER):
        n = rng.choice([1, 3])
        y, x = np.mgrid[0:h, 0:w]
        smooth = (x * 7 + y * 5 + rng.randrange(256)) % 256
        px = np.stack([smooth] * n, -1).astype(np.uint8)
        mask = nrng.random((h, w)) < rng.random()
        px[mask] = nrng.integers(0, 256, (int(mask.sum()), n), dtype=np.uint8)
        if i % 4 == 3:
            data = imagecodecs.jpeg8_encode(px if n == 3 else px[..., 0], lossless=True,
                                            predictor=rng.randrange(1, 8))
        else:
            data = encode(px, predictor=rng.randrange(1, 8), point_transform=rng.randrange(8),
                          restart_rows=rng.choice([0, 0, 1, 2, 4]), separate=n == 3 and rng.random() < 0.3)
        name = f"{i:03d}.jpg"
        open(os.path.join(src, name), "wb").write(data)
        files[f"train/a/{name}"] = data
    out = os.path.join(WORK, f"{w}x{h}", "out")
    subprocess.run([EBV, os.path.dirname(os.path.dirname(src)), "--out", out, "--size", f"{w}x{h}",
                    "--encoding", "raw", "--quiet"], check=True)
    rows = {}
    for f in os.listdir(out):
        if f.endswith(".parquet"):
            t = pq.read_table(os.path.join(out, f), columns=["key", "image"]).to_pydict()
            rows.update(zip(t["key"], t["image"]))
    ok = 0
    for key, data in files.items():
        want = np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).tobytes()
        ok += rows.get(key) == want
    print(f"{w}x{h}: {ok}/{len(files)} exactly Pillow's pixels")
    total += len(files)
    agree += ok
print(f"all: {agree}/{total}")
