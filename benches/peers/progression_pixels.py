"""Do zune-jpeg (through ebv-pack) and libjpeg (through Pillow) decode JPEGs
whose progressive scans are out of order alike?

    python progression_pixels.py path/to/ebv-pack WORKDIR   # peer venv: Pillow, numpy, pyarrow

Makes the three mutants of tests/data/jpeg-scan/progression.py (DC
refinement's Ah/Al 1/0 made 2/1; DC scan removed; Y 1-5 scan removed) plus
the intact file, packs them raw at their own size with `ebv-pack --encoding raw`, and
prints per file the largest and mean absolute difference between ebv's
pixels and Pillow's, and the mean difference of each from the intact file.
"""
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
from PIL import Image

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests/data/jpeg-scan"))
import progression  # noqa: E402  (the mutants, shared with make.py)


def main():
    pack, work = sys.argv[1], pathlib.Path(sys.argv[2])
    shutil.rmtree(work, ignore_errors=True)
    b = (ROOT / "tests/data/jpeg-scan/progressive-restart.jpg").read_bytes()
    files = {"intact": b, **{name: m for name, _, m in progression.mutants(b)}}
    for split in ("train", "val"):
        for name, data in files.items():
            p = work / "src" / split / "a" / f"{name}.jpg"
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(data)
    w, h = Image.open(work / "src/train/a/intact.jpg").size
    subprocess.run([pack, str(work / "src"), "--out", str(work / "out"), "--size", f"{w}x{h}",
                    "--encoding", "raw", "--quiet", "--json"], check=True, stdout=subprocess.DEVNULL)
    rows = [r for f in sorted((work / "out").glob("train-*.parquet")) for r in pq.read_table(f).to_pylist()]
    intact = np.asarray(Image.open(work / "src/train/a/intact.jpg").convert("RGB")).astype(int)
    print(f"{'file':<16} {'ebv-pillow max':>14} {'mean':>6} {'pillow-intact':>14} {'ebv-intact':>11}")
    for r in sorted(rows, key=lambda r: r["key"]):
        ebv = np.frombuffer(r["image"], np.uint8).reshape(h, w, 3).astype(int)
        pil = np.asarray(Image.open(work / "src" / r["key"]).convert("RGB")).astype(int)
        name = pathlib.Path(r["key"]).stem
        print(f"{name:<16} {np.abs(ebv - pil).max():>14} {np.abs(ebv - pil).mean():>6.2f} "
              f"{np.abs(pil - intact).mean():>14.2f} {np.abs(ebv - intact).mean():>11.2f}")


main()
