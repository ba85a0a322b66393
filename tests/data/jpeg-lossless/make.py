"""Lossless (SOF3) JPEGs, and Pillow's (libjpeg-turbo 3's) decode of each as the reference.

    python make.py     # needs numpy, Pillow >= 11 (libjpeg-turbo 3) and imagecodecs

Writes NAME.jpg and, where Pillow decodes it, NAME.rgb (RGB8, row-major). The
tests decode each .jpg with ebv and compare with the .rgb, or expect it refused
as unsupported where Pillow fails too. imagecodecs (libjpeg-turbo 3.1) writes
the files a real tool writes (RGB-coded, an Adobe marker); minilossless.py
writes the rest: bare component ids, other predictors, one scan per
component, YCbCr-coded files (a
JFIF marker, an Adobe marker with transform 1), which libjpeg-turbo 3 refuses
to convert in lossless mode ("Unsupported color conversion request"; Pillow:
"broken data stream"), and a point transform, restart intervals and one scan
per component, which Pillow reads and the jpeg-decoder crate decodes wrongly or
fails on (ebv refuses them).
"""
import io
import struct
import imagecodecs
import numpy as np
from PIL import Image
from minilossless import encode


def image(w, h):
    y, x = np.mgrid[0:h, 0:w]
    r = x * 255 // max(w - 1, 1)
    g = y * 255 // max(h - 1, 1)
    b = ((x // 4 + y // 4) % 2) * 160 + 40
    rgb = np.stack([r, g, b], axis=-1).astype(np.uint8)
    # Noise in one corner: large differences, every SSSS class.
    rng = np.random.default_rng(7)
    rgb[h // 2:, w // 2:] = rng.integers(0, 256, (h - h // 2, w - w // 2, 3))
    return rgb


def ycc(rgb):
    """JFIF's RGB -> YCbCr, rounded (what a YCbCr-coded file holds)."""
    r, g, b = (rgb[..., k].astype(np.float64) for k in range(3))
    y = 0.299 * r + 0.587 * g + 0.114 * b
    cb = -0.168736 * r - 0.331264 * g + 0.5 * b + 128
    cr = 0.5 * r - 0.418688 * g - 0.081312 * b + 128
    return np.clip(np.round(np.stack([y, cb, cr], -1)), 0, 255).astype(np.uint8)


JFIF = (0xE0, b"JFIF\0\x01\x01\0\0\x01\0\x01\0\0")
ADOBE_YCC = (0xEE, b"Adobe\0\x64\0\0\0\0\x01")
rgb = image(37, 23)
gray = rgb[..., 1].copy()
cases = {
    "rgb-adobe-p1-37x23": imagecodecs.jpeg8_encode(rgb, lossless=True, predictor=1),
    "rgb-adobe-p7-37x23": imagecodecs.jpeg8_encode(rgb, lossless=True, predictor=7),
    "gray-p4-37x23": imagecodecs.jpeg8_encode(gray, lossless=True, predictor=4),
    "rgb-ids123-p5-37x23": encode(rgb, 5),
    "rgb-idsRGB-p2-37x23": encode(rgb, 2, ids=[82, 71, 66]),
    "rgb-ids123-p3-37x23": encode(rgb, 3),
    "gray-p6-37x23": encode(gray[..., None], 6),
    "rgb-separate-p4-37x23": encode(rgb, 4, separate=True),
    "rgb-pt1-p1-37x23": encode(rgb, 1, point_transform=1),
    "gray-restart-p1-37x23": encode(gray[..., None], 1, restart_rows=5),
    "ycc-jfif-p1-37x23": encode(ycc(rgb), 1, apps=[JFIF]),
    "ycc-adobe-p1-37x23": encode(ycc(rgb), 1, apps=[ADOBE_YCC]),
}
for name, data in cases.items():
    open(f"{name}.jpg", "wb").write(data)
    try:
        px = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    except OSError as e:
        print(name, len(data), "bytes; Pillow:", e)
        continue
    open(f"{name}.rgb", "wb").write(px.tobytes())
    src = rgb if not name.startswith("gray") else np.repeat(gray[..., None], 3, 2)
    err = np.abs(px.astype(int) - src).max()
    print(name, px.shape, len(data), "bytes; largest difference from the source", err)
