"""Minimal baseline JPEG encoder (numpy) with arbitrary sampling factors, for 4:4:0 / 4:1:1 fixtures."""
import struct, numpy as np

ZZ = np.array([0,1,8,16,9,2,3,10,17,24,32,25,18,11,4,5,12,19,26,33,40,48,41,34,27,20,13,6,7,14,21,28,
               35,42,49,56,57,50,43,36,29,22,15,23,30,37,44,51,58,59,52,45,38,31,39,46,53,60,61,54,47,55,62,63])
QL = np.array([16,11,10,16,24,40,51,61,12,12,14,19,26,58,60,55,14,13,16,24,40,57,69,56,14,17,22,29,51,87,80,62,
               18,22,37,56,68,109,103,77,24,35,55,64,81,104,113,92,49,64,78,87,103,121,120,101,72,92,95,98,112,100,103,99])
QC = np.array([17,18,24,47,99,99,99,99,18,21,26,66,99,99,99,99,24,26,56,99,99,99,99,99,47,66,99,99,99,99,99,99] + [99] * 32)
DC_L = ([0,1,5,1,1,1,1,1,1,0,0,0,0,0,0,0], list(range(12)))
DC_C = ([0,3,1,1,1,1,1,1,1,1,1,0,0,0,0,0], list(range(12)))
AC_L = ([0,2,1,3,3,2,4,3,5,5,4,4,0,0,1,0x7d], [0x01,0x02,0x03,0x00,0x04,0x11,0x05,0x12,0x21,0x31,0x41,0x06,0x13,0x51,0x61,0x07,0x22,0x71,0x14,0x32,0x81,0x91,0xa1,0x08,0x23,0x42,0xb1,0xc1,0x15,0x52,0xd1,0xf0,0x24,0x33,0x62,0x72,0x82,0x09,0x0a,0x16,0x17,0x18,0x19,0x1a,0x25,0x26,0x27,0x28,0x29,0x2a,0x34,0x35,0x36,0x37,0x38,0x39,0x3a,0x43,0x44,0x45,0x46,0x47,0x48,0x49,0x4a,0x53,0x54,0x55,0x56,0x57,0x58,0x59,0x5a,0x63,0x64,0x65,0x66,0x67,0x68,0x69,0x6a,0x73,0x74,0x75,0x76,0x77,0x78,0x79,0x7a,0x83,0x84,0x85,0x86,0x87,0x88,0x89,0x8a,0x92,0x93,0x94,0x95,0x96,0x97,0x98,0x99,0x9a,0xa2,0xa3,0xa4,0xa5,0xa6,0xa7,0xa8,0xa9,0xaa,0xb2,0xb3,0xb4,0xb5,0xb6,0xb7,0xb8,0xb9,0xba,0xc2,0xc3,0xc4,0xc5,0xc6,0xc7,0xc8,0xc9,0xca,0xd2,0xd3,0xd4,0xd5,0xd6,0xd7,0xd8,0xd9,0xda,0xe1,0xe2,0xe3,0xe4,0xe5,0xe6,0xe7,0xe8,0xe9,0xea,0xf1,0xf2,0xf3,0xf4,0xf5,0xf6,0xf7,0xf8,0xf9,0xfa])
AC_C = ([0,2,1,2,4,4,3,4,7,5,4,4,0,1,2,0x77], [0x00,0x01,0x02,0x03,0x11,0x04,0x05,0x21,0x31,0x06,0x12,0x41,0x51,0x07,0x61,0x71,0x13,0x22,0x32,0x81,0x08,0x14,0x42,0x91,0xa1,0xb1,0xc1,0x09,0x23,0x33,0x52,0xf0,0x15,0x62,0x72,0xd1,0x0a,0x16,0x24,0x34,0xe1,0x25,0xf1,0x17,0x18,0x19,0x1a,0x26,0x27,0x28,0x29,0x2a,0x35,0x36,0x37,0x38,0x39,0x3a,0x43,0x44,0x45,0x46,0x47,0x48,0x49,0x4a,0x53,0x54,0x55,0x56,0x57,0x58,0x59,0x5a,0x63,0x64,0x65,0x66,0x67,0x68,0x69,0x6a,0x73,0x74,0x75,0x76,0x77,0x78,0x79,0x7a,0x82,0x83,0x84,0x85,0x86,0x87,0x88,0x89,0x8a,0x92,0x93,0x94,0x95,0x96,0x97,0x98,0x99,0x9a,0xa2,0xa3,0xa4,0xa5,0xa6,0xa7,0xa8,0xa9,0xaa,0xb2,0xb3,0xb4,0xb5,0xb6,0xb7,0xb8,0xb9,0xba,0xc2,0xc3,0xc4,0xc5,0xc6,0xc7,0xc8,0xc9,0xca,0xd2,0xd3,0xd4,0xd5,0xd6,0xd7,0xd8,0xd9,0xda,0xe2,0xe3,0xe4,0xe5,0xe6,0xe7,0xe8,0xe9,0xea,0xf2,0xf3,0xf4,0xf5,0xf6,0xf7,0xf8,0xf9,0xfa])

def _codes(spec):
    bits, vals = spec; code = 0; k = 0; tab = {}
    for l in range(1, 17):
        for _ in range(bits[l - 1]):
            tab[vals[k]] = (code, l); code += 1; k += 1
        code <<= 1
    return tab

def _scale(q, quality):
    s = 5000 / quality if quality < 50 else 200 - 2 * quality
    return np.clip((q * s + 50) // 100, 1, 255).astype(int)

C8 = np.array([[np.cos((2 * x + 1) * u * np.pi / 16) * (np.sqrt(0.5) if u == 0 else 1) for x in range(8)] for u in range(8)]) / 2

class Bits:
    def __init__(s): s.out = bytearray(); s.acc = 0; s.n = 0
    def put(s, code, l):
        s.acc = (s.acc << l) | (code & ((1 << l) - 1)); s.n += l
        while s.n >= 8:
            b = (s.acc >> (s.n - 8)) & 0xFF; s.out.append(b)
            if b == 0xFF: s.out.append(0)
            s.n -= 8
    def flush(s):
        if s.n: s.put((1 << (8 - s.n)) - 1, 8 - s.n)

def _cat(v):
    v = int(v); a = abs(v); l = a.bit_length()
    return l, (v if v >= 0 else v + (1 << l) - 1)

def code_block(bw, q, pred, dct, act):
    """Huffman-code one zigzag-ordered block against the previous DC `pred`; returns its DC."""
    d = q[0] - pred; l, b = _cat(d); c, cl = dct[l]; bw.put(c, cl)
    if l: bw.put(b, l)
    run = 0
    for k in range(1, 64):
        if q[k] == 0: run += 1; continue
        while run > 15: c, cl = act[0xF0]; bw.put(c, cl); run -= 16
        l, b = _cat(q[k]); c, cl = act[(run << 4) | l]; bw.put(c, cl); bw.put(b, l); run = 0
    if run: c, cl = act[0x00]; bw.put(c, cl)
    return q[0]

def encode(rgb, sampling=((2, 2), (1, 1), (1, 1)), quality=90, gray=False):
    rgb = np.asarray(rgb, np.float64); H, W = rgb.shape[:2]
    if gray:
        planes = [0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]]; sampling = sampling[:1]
    else:
        R, G, B = rgb[..., 0], rgb[..., 1], rgb[..., 2]
        planes = [0.299 * R + 0.587 * G + 0.114 * B, -0.168736 * R - 0.331264 * G + 0.5 * B + 128, 0.5 * R - 0.418688 * G - 0.081312 * B + 128]
    Hm = max(h for h, v in sampling); Vm = max(v for h, v in sampling)
    mx = -(-W // (8 * Hm)); my = -(-H // (8 * Vm))
    qs = [_scale(QL, quality), _scale(QC, quality)]
    comps = []
    for ci, (p, (h, v)) in enumerate(zip(planes, sampling)):
        fx, fy = Hm // h, Vm // v
        # pad image-size plane to full MCU pixel size by edge replication, then box-downsample
        P = np.pad(p, ((0, my * 8 * Vm - H), (0, mx * 8 * Hm - W)), mode="edge")
        P = P.reshape(P.shape[0] // fy, fy, P.shape[1] // fx, fx).mean((1, 3))
        comps.append((P, h, v, 0 if ci == 0 else 1))
    tabs = [(_codes(DC_L), _codes(AC_L)), (_codes(DC_C), _codes(AC_C))]
    bw = Bits(); pred = [0] * len(comps)
    for my_ in range(my):
        for mx_ in range(mx):
            for ci, (P, h, v, t) in enumerate(comps):
                dct, act = tabs[t]
                for by in range(v):
                    for bx in range(h):
                        y0 = (my_ * v + by) * 8; x0 = (mx_ * h + bx) * 8
                        blk = P[y0:y0 + 8, x0:x0 + 8] - 128
                        co = (C8 @ blk @ C8.T).reshape(-1)
                        q = np.round(co / qs[t]).astype(int)[ZZ]
                        pred[ci] = code_block(bw, q, pred[ci], dct, act)
    bw.flush()
    out = b"\xff\xd8" + b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\0\x01\x01\0\0\x01\0\x01\0\0"
    for t, q in enumerate(qs[: 1 if gray else 2]):
        zq = np.zeros(64, int); zq[:] = q[ZZ]
        out += b"\xff\xdb" + struct.pack(">HB", 67, t) + bytes(zq.astype(np.uint8))
    out += b"\xff\xc0" + struct.pack(">HBHHB", 8 + 3 * len(comps), 8, H, W, len(comps))
    for ci, (P, h, v, t) in enumerate(comps): out += bytes([ci + 1, (h << 4) | v, t])
    for cls, idx, spec in ((0, 0, DC_L), (1, 0, AC_L), (0, 1, DC_C), (1, 1, AC_C))[: 2 if gray else 4]:
        bits, vals = spec
        out += b"\xff\xc4" + struct.pack(">HB", 3 + 16 + len(vals), (cls << 4) | idx) + bytes(bits) + bytes(vals)
    out += b"\xff\xda" + struct.pack(">HB", 6 + 2 * len(comps), len(comps))
    for ci, (P, h, v, t) in enumerate(comps): out += bytes([ci + 1, (t << 4) | t])
    out += b"\x00\x3f\x00" + bytes(bw.out) + b"\xff\xd9"
    return out
