# Reference values for src/image/bmp_rle.rs tests: the pixels Pillow 13.0.0
# gives for hand-written run-length BMPs (the same bytes the tests build).
#   python tests/peers/bmp_rle_pillow.py
import io, struct
import numpy as np
from PIL import Image

def bmp(bits, w, h, palette, data, colours=None):
    table = b"".join(bytes([b, g, r, 0]) for r, g, b in palette)
    off = 14 + 40 + len(table)
    info = struct.pack("<IiiHHIIiiII", 40, w, h, 1, bits, 1 if bits == 8 else 2, len(data), 0, 0,
                       len(palette) if colours is None else colours, 0)
    return b"BM" + struct.pack("<IHHI", off + len(data), 0, 0, off) + info + table + bytes(data)

pal = [(10, 20, 30), (40, 50, 60), (70, 80, 90), (100, 110, 120)]
cases = {
    # 5x3, bottom-up: a run crossing the row end (clipped), end of line,
    # an odd absolute run (padded to a word), a delta, end of bitmap.
    "rle8": bmp(8, 5, 3, pal, [7, 1, 0, 0, 0, 3, 2, 3, 1, 0, 0, 2, 1, 0, 1, 3, 0, 0, 5, 2, 0, 1]),
    # an absolute run that flows into the next row, then an encoded run
    # dropped until the end of line
    "rle8_flow": bmp(8, 3, 2, pal, [0, 4, 1, 2, 3, 1, 2, 2, 0, 0, 2, 3, 0, 1]),
    # 6x2 RLE4: alternating nibbles, an odd absolute run of 3
    "rle4": bmp(4, 6, 2, pal, [5, 0x12, 0, 0, 0, 3, 0x31, 0x20, 3, 0x03, 0, 1]),
    # indices past a 4-entry palette (black), top-down
    "past": bmp(8, 3, -1, pal, [0, 3, 3, 9, 250, 0, 0, 1]),
    # a grey ramp of 3 colours: index k is grey k, even past the ramp
    "ramp": bmp(8, 3, 1, [(0, 0, 0), (1, 1, 1), (2, 2, 2)], [0, 3, 1, 2, 7, 0, 0, 1]),
    # two colours, black and white: any index but 0 is white
    "bilevel": bmp(8, 3, 1, [(0, 0, 0), (255, 255, 255)], [0, 3, 0, 1, 5, 0, 0, 1]),
}
for name, b in cases.items():
    px = np.asarray(Image.open(io.BytesIO(b)).convert("RGB"))
    print(name, px.reshape(-1, 3).tolist())
for name, b in {"early_end": bmp(8, 2, 2, pal, [2, 1, 0, 1]), "cut": bmp(8, 2, 2, pal, [2, 1, 0, 0, 1])}.items():
    try:
        Image.open(io.BytesIO(b)).load(); print(name, "decoded")
    except Exception as e:
        print(name, type(e).__name__, e)
