"""A minimal lossless (SOF3) JPEG encoder: 8-bit samples, every component
sampled 1x1, one interleaved scan, any predictor 1-7 and point transform,
optional restart interval, chosen component ids and APP segments.

Written for ebv's tests, to make what libjpeg-turbo's own tools do not
write: YCbCr-coded lossless files (with a JFIF marker or bare ids 1, 2, 3),
a point transform, restart markers.
"""
import struct
import numpy as np

# DC table for SSSS 0..16: fifteen 4-bit codes, one of 5 bits, one of 6.
COUNTS = [0, 0, 0, 15, 1, 1] + [0] * 10
SYMBOLS = list(range(17))


def _codes():
    codes, code, k = {}, 0, 0
    for length, n in enumerate(COUNTS, start=1):
        for _ in range(n):
            codes[SYMBOLS[k]] = (code, length)
            code += 1
            k += 1
        code <<= 1
    return codes


class _Bits:
    def __init__(self):
        self.out, self.acc, self.n = bytearray(), 0, 0

    def put(self, value, length):
        for i in range(length - 1, -1, -1):
            self.acc = (self.acc << 1) | ((value >> i) & 1)
            self.n += 1
            if self.n == 8:
                self.out.append(self.acc)
                if self.acc == 0xFF:
                    self.out.append(0)
                self.acc, self.n = 0, 0

    def flush(self):
        if self.n:
            self.put((1 << (8 - self.n)) - 1, 8 - self.n)


def _segment(marker, payload):
    return bytes([0xFF, marker]) + struct.pack(">H", len(payload) + 2) + payload


def _predict(s, y, x, pred, first_of_interval_row):
    """Prediction for sample (y, x) of plane s (ints), T.81 H.1.2.1."""
    if first_of_interval_row and x == 0:
        return None  # the initial value
    if first_of_interval_row:
        return s[y, x - 1]
    if x == 0:
        return s[y - 1, x]
    ra, rb, rc = s[y, x - 1], s[y - 1, x], s[y - 1, x - 1]
    return {1: ra, 2: rb, 3: rc, 4: ra + rb - rc, 5: ra + ((rb - rc) >> 1),
            6: rb + ((ra - rc) >> 1), 7: (ra + rb) >> 1}[pred]


def encode(planes, predictor=1, point_transform=0, ids=None, apps=(), restart_rows=0,
           separate=False):
    """planes: uint8 array (h, w, n). restart_rows: rows per restart interval (0: none).
    separate: one scan per component instead of one interleaved scan."""
    h, w, n = planes.shape
    ids = ids or list(range(1, n + 1))
    pt = point_transform
    s = planes.astype(np.int64) >> pt
    codes = _codes()
    out = bytearray(b"\xFF\xD8")
    for marker, payload in apps:
        out += _segment(marker, payload)
    sof = struct.pack(">BHHB", 8, h, w, n) + b"".join(bytes([i, 0x11, 0]) for i in ids)
    out += _segment(0xC3, sof)
    out += _segment(0xC4, bytes([0x00]) + bytes(COUNTS) + bytes(SYMBOLS))
    if restart_rows:
        out += _segment(0xDD, struct.pack(">H", restart_rows * w))
    groups = [[c] for c in range(n)] if separate else [list(range(n))]
    for group in groups:
        sos = bytes([len(group)]) + b"".join(bytes([ids[c], 0x00]) for c in group)
        out += _segment(0xDA, sos + bytes([predictor, 0, pt]))
        out += _scan(s, group, predictor, pt, restart_rows, codes)
    out += b"\xFF\xD9"
    return bytes(out)


def _scan(s, group, predictor, pt, restart_rows, codes):
    h, w, _ = s.shape
    out = bytearray()
    bits = _Bits()
    rst = 0
    for y in range(h):
        interval_start = (y == 0) or (restart_rows and y % restart_rows == 0)
        if restart_rows and y and y % restart_rows == 0:
            bits.flush()
            out += bits.out
            bits = _Bits()
            out += bytes([0xFF, 0xD0 + rst % 8])
            rst += 1
        for x in range(w):
            for c in group:
                p = _predict(s[..., c], y, x, predictor, interval_start)
                if p is None:
                    p = 1 << (8 - pt - 1)
                diff = (int(s[y, x, c]) - int(p)) % 65536
                if diff >= 32768:
                    diff -= 65536
                ssss = 16 if diff == -32768 else abs(diff).bit_length()
                code, length = codes[ssss]
                bits.put(code, length)
                if 0 < ssss < 16:
                    v = diff if diff > 0 else diff - 1
                    bits.put(v & ((1 << ssss) - 1), ssss)
    bits.flush()
    out += bits.out
    return bytes(out)
