"""Huffman-coded JPEGs with restart markers, and libjpeg's verdict on the
damage `src/image/jpeg_scan.rs`'s tests make to them.

    python make.py     # needs numpy, Pillow >= 11 (libjpeg-turbo 3) and
                       # libjpeg-turbo's djpeg (Debian: libjpeg-turbo-progs)

Writes restart-420.jpg (sequential 4:2:0, a restart every MCU row) and
progressive-restart.jpg (progressive 4:4:4, a restart every 3 blocks), both
read by djpeg without a warning. Then, for these and for the Huffman twins
of ../jpeg-arith, prints what djpeg (libjpeg-turbo, 64-bit) says of each
mutant the Rust test makes: 12 zero bytes or 1 zero byte inserted before
the end-of-image marker, the byte before it removed, and where the file has
restart markers, the same before the first of them. The test asks ebv for
the same verdicts, except that ebv reports left-over bytes only beyond the
8 that libjpeg's bit buffer may have read ahead: libjpeg reports them only
when it has not read them ahead (so 1 byte before a restart marker is
reported in one file and not in the other).
"""
import io
import pathlib
import subprocess
import numpy as np
from PIL import Image

import progression

HERE = pathlib.Path(__file__).parent


def image(w, h):
    y, x = np.mgrid[0:h, 0:w]
    r = (x * 255 // max(w - 1, 1) + 40 * np.sin(y / 3.0)).clip(0, 255)
    g = y * 255 // max(h - 1, 1)
    b = ((x // 5 + y // 3) % 2) * 150 + 50
    return Image.fromarray(np.stack([r, g, b], axis=-1).astype(np.uint8))


def save(name, **kw):
    b = io.BytesIO()
    image(64, 48).save(b, "JPEG", quality=90, **kw)
    (HERE / name).write_bytes(b.getvalue())


save("restart-420.jpg", restart_marker_rows=1)
save("progressive-restart.jpg", progressive=True, subsampling=0, restart_marker_blocks=3)


def mutants(b):
    eoi = len(b) - 2
    assert b[eoi:] == b"\xff\xd9"
    yield "12 zeros before EOI", b[:eoi] + bytes(12) + b[eoi:]
    yield "1 zero before EOI", b[:eoi] + bytes(1) + b[eoi:]
    yield "last byte before EOI removed", b[:eoi - 1] + b[eoi:]
    rst = next((i for i in range(len(b) - 1) if b[i] == 0xFF and 0xD0 <= b[i + 1] <= 0xD7), None)
    if rst is not None:
        yield "12 zeros before the first RST", b[:rst] + bytes(12) + b[rst:]
        yield "1 zero before the first RST", b[:rst] + bytes(1) + b[rst:]
        yield "byte before the first RST removed", b[:rst - 1] + b[rst:]


files = sorted(HERE.glob("*.jpg")) + sorted((HERE / "../jpeg-arith").glob("*.huff.jpg"))
for f in files:
    b = f.read_bytes()
    clean = subprocess.run(["djpeg", "-pnm"], input=b, capture_output=True).stderr.decode().strip()
    print(f"{f.name}: {clean or 'no warning'}")
    for what, m in mutants(b):
        warn = subprocess.run(["djpeg", "-pnm"], input=m, capture_output=True).stderr.decode().strip()
        print(f"    {what}: {warn or 'no warning'}")



# Progressive scans out of order (progression.py), which the Rust test refuses.
print("progressive-restart.jpg, scans out of order:")
for _, what, m in progression.mutants((HERE / "progressive-restart.jpg").read_bytes()):
    warn = subprocess.run(["djpeg", "-pnm"], input=m, capture_output=True).stderr.decode().strip()
    print(f"    {what}: {warn or 'no warning'}")
