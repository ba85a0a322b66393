"""JPEG layouts zune-jpeg misreads, and Pillow's (libjpeg's) decode of each as the reference.

    python make.py     # needs numpy and Pillow; writes NAME.jpg and NAME.rgb (RGB8, row-major)

minijpeg.py / minijpeg2.py: a minimal baseline encoder (numpy) that writes any sampling factors
and any scan script, written for the session-21 audit of ebv-pack. The tests decode each .jpg
with ebv and compare with the .rgb.
"""
import io
import numpy as np
from PIL import Image
from minijpeg import encode
from minijpeg2 import encode2


def image(w, h):
    y, x = np.mgrid[0:h, 0:w]
    r = (x * 255 // max(w - 1, 1))
    g = (y * 255 // max(h - 1, 1))
    b = ((x // 4 + y // 4) % 2) * 160 + 40
    return np.stack([r, g, b], axis=-1).astype(np.uint8)


cases = {
    # 4:2:0, one scan per component (sequential, non-interleaved)
    "noninterleaved-420-37x23": encode2(image(37, 23), ((2, 2), (1, 1), (1, 1)), scans=((0,), (1,), (2,))),
    # 4:4:4, chroma scan first, then luma
    "noninterleaved-444-32x32": encode2(image(32, 32), ((1, 1), (1, 1), (1, 1)), scans=((1, 2), (0,))),
    # chroma sampled finer than luma (Y 1x1, Cb 2x2, Cr 2x2)
    "chroma-finer-37x23": encode(image(37, 23), ((1, 1), (2, 2), (2, 2))),
    # a sampling factor of 3 (Y 3x1)
    "factor3-37x23": encode(image(37, 23), ((3, 1), (1, 1), (1, 1))),
}
for name, data in cases.items():
    open(f"{name}.jpg", "wb").write(data)
    px = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    open(f"{name}.rgb", "wb").write(px.tobytes())
    print(name, px.shape, len(data), "bytes")
