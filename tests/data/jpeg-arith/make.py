"""Arithmetic-coded JPEGs (SOF9, SOF10), each beside its Huffman-coded twin.

    python make.py     # needs numpy, Pillow >= 11 (libjpeg-turbo 3), libjpeg-turbo's
                       # cjpeg and jpegtran (Debian: libjpeg-turbo-progs), a C
                       # compiler and libjpeg's headers (libjpeg62-turbo-dev)

For each case, NAME.huff.jpg is a Huffman-coded JPEG (cjpeg, or Pillow for
CMYK) and NAME.arith.jpg is `jpegtran -arithmetic` of it: the same quantised
coefficients, the same quantisation tables, entropy-coded the other way
(jpegtran copies coefficients, it never decodes to pixels). The "-dac"
cases come from arith_dac.c, which does what jpegtran does with
conditioning values of its own (DAC segments other than the defaults
L=0, U=1, Kx=5, which no libjpeg tool writes). So any decoder
makes the same pixels of the two files, and the tests ask exactly that of
ebv: its decode of NAME.arith.jpg equals its decode of NAME.huff.jpg. The
printout is Pillow's (libjpeg-turbo 3's) view of the same pairs, for the
record: its decode of the arithmetic file equals its decode of the twin.
"""
import io
import subprocess
import numpy as np
from PIL import Image


def image(w, h):
    y, x = np.mgrid[0:h, 0:w]
    r = (x * 255 // max(w - 1, 1) + 40 * np.sin(y / 3.0)).clip(0, 255)
    g = y * 255 // max(h - 1, 1)
    b = ((x // 5 + y // 3) % 2) * 150 + 50
    rgb = np.stack([r, g, b], axis=-1).astype(np.uint8)
    # Noise in one corner: every coefficient class, long nonzero runs.
    rng = np.random.default_rng(11)
    rgb[h // 2:, w // 2:] = rng.integers(0, 256, (h - h // 2, w - w // 2, 3))
    return rgb


def run(args, data):
    return subprocess.run(args, input=data, capture_output=True, check=True).stdout


def ppm(rgb):
    h, w = rgb.shape[:2]
    if rgb.ndim == 2:
        return b"P5 %d %d 255\n" % (w, h) + rgb.tobytes()
    return b"P6 %d %d 255\n" % (w, h) + rgb.tobytes()


rgb = image(61, 45)
gray = rgb[..., 1].copy()
cmyk = io.BytesIO()
Image.fromarray(rgb).convert("CMYK").save(cmyk, "JPEG", quality=90)
subprocess.run(["cc", "-O2", "-o", "arith_dac", "arith_dac.c", "-ljpeg"], check=True)
# A multi-scan sequential script: one component per scan.
open("separate.scans", "w").write("0;\n1;\n2;\n")
cases = {
    # name: (Huffman source, jpegtran options)
    "seq-420": (run(["cjpeg", "-quality", "85"], ppm(rgb)), []),
    "seq-444-restart": (run(["cjpeg", "-quality", "92", "-sample", "1x1"], ppm(rgb)), ["-restart", "2B"]),
    "seq-422-separate": (run(["cjpeg", "-quality", "80", "-sample", "2x1"], ppm(rgb)), ["-scans", "separate.scans"]),
    "prog-420": (run(["cjpeg", "-quality", "85"], ppm(rgb)), ["-progressive"]),
    "prog-444-restart": (run(["cjpeg", "-quality", "95", "-sample", "1x1"], ppm(rgb)), ["-progressive", "-restart", "1B"]),
    "gray-seq": (run(["cjpeg", "-quality", "90"], ppm(gray)), []),
    "gray-prog-restart": (run(["cjpeg", "-quality", "90"], ppm(gray)), ["-progressive", "-restart", "3B"]),
    # Quality 3: quantisation steps above 255, 16-bit tables (SOF1 / SOF9).
    "seq-q3-16bit": (run(["cjpeg", "-quality", "3"], ppm(rgb)), []),
    "cmyk-seq": (cmyk.getvalue(), []),
    # DC L, U of tables 0 and 1, AC Kx of tables 0 and 1.
    "seq-420-dac": (run(["cjpeg", "-quality", "85"], ppm(rgb)), ["dac", "2", "5", "1", "3", "2", "20"]),
    "prog-444-dac": (run(["cjpeg", "-quality", "95", "-sample", "1x1"], ppm(rgb)),
                     ["dac", "0", "0", "3", "3", "63", "1", "prog"]),
}
for name, (huff, opts) in cases.items():
    if opts[:1] == ["dac"]:
        arith = run(["./arith_dac"] + opts[1:], huff)
    else:
        arith = run(["jpegtran", "-arithmetic", "-copy", "all"] + opts, huff)
    open(f"{name}.huff.jpg", "wb").write(huff)
    open(f"{name}.arith.jpg", "wb").write(arith)
    a = np.asarray(Image.open(io.BytesIO(arith)).convert("RGB")).astype(int)
    b = np.asarray(Image.open(io.BytesIO(huff)).convert("RGB")).astype(int)
    sof = [hex(m) for m in (0xC0, 0xC1, 0xC2, 0xC9, 0xCA) if bytes([0xFF, m]) in arith]
    print(f"{name}: {len(huff)} -> {len(arith)} bytes, {sof}; Pillow arith vs huff: "
          f"largest difference {np.abs(a - b).max()}")
subprocess.run(["rm", "-f", "arith_dac", "separate.scans"], check=True)
