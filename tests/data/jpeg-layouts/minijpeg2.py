"""Baseline encoder with a free scan script: interleaved or one scan per component, and arbitrary
segments between scans (for COM/APP/DQT/DHT/DRI between scans)."""
import struct, numpy as np
from minijpeg import ZZ, QL, QC, DC_L, DC_C, AC_L, AC_C, _codes, _scale, C8, Bits, code_block

def blocks(rgb, sampling, quality, qtabs=None):
    rgb = np.asarray(rgb, np.float64); H, W = rgb.shape[:2]
    R, G, B = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    planes = [0.299 * R + 0.587 * G + 0.114 * B, -0.168736 * R - 0.331264 * G + 0.5 * B + 128, 0.5 * R - 0.418688 * G - 0.081312 * B + 128]
    Hm = max(h for h, v in sampling); Vm = max(v for h, v in sampling)
    mx = -(-W // (8 * Hm)); my = -(-H // (8 * Vm))
    qs = qtabs or [_scale(QL, quality), _scale(QC, quality), _scale(QC, quality)]
    comps = []
    for ci, (p, (h, v)) in enumerate(zip(planes, sampling)):
        fx, fy = Hm // h, Vm // v
        P = np.pad(p, ((0, my * 8 * Vm - H), (0, mx * 8 * Hm - W)), mode="edge")
        P = P.reshape(P.shape[0] // fy, fy, P.shape[1] // fx, fx).mean((1, 3))
        nby, nbx = P.shape[0] // 8, P.shape[1] // 8
        Q = np.zeros((nby, nbx, 64), int)
        for by in range(nby):
            for bx in range(nbx):
                co = (C8 @ (P[by*8:by*8+8, bx*8:bx*8+8] - 128) @ C8.T).reshape(-1)
                Q[by, bx] = np.round(co / qs[ci]).astype(int)[ZZ]
        cw = -(-W * h // Hm); ch = -(-H * v // Vm)
        comps.append(dict(Q=Q, h=h, v=v, nbx_ni=-(-cw // 8), nby_ni=-(-ch // 8)))
    return comps, qs, (W, H, mx, my)

def dqt(t, q):
    return b"\xff\xdb" + struct.pack(">HB", 67, t) + bytes(np.asarray(q)[ZZ].astype(np.uint8))

def dht(cls, idx, spec):
    bits, vals = spec
    return b"\xff\xc4" + struct.pack(">HB", 3 + 16 + len(vals), (cls << 4) | idx) + bytes(bits) + bytes(vals)

def encode2(rgb, sampling=((2, 2), (1, 1), (1, 1)), quality=90, scans=((0, 1, 2),), between=None, qsel=(0, 1, 1),
            tsel=(0, 1, 1), header_tables=True, qtabs=None, q_header=None, extra_header=b"", codeset=None, hdr_dht=None):
    """scans: tuple of component-index tuples. between: dict scan_index -> bytes inserted before that scan's SOS.
    q_header: dict slot -> table written in the header (default: slot 0 luma, slot 1 chroma)."""
    comps, qs, (W, H, mx, my) = blocks(rgb, sampling, quality, qtabs)
    tabs = {0: (_codes(DC_L), _codes(AC_L)), 1: (_codes(DC_C), _codes(AC_C))}
    out = b"\xff\xd8" + b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\0\x01\x01\0\0\x01\0\x01\0\0" + extra_header
    qh = q_header if q_header is not None else {0: qs[0], 1: qs[1]}
    for t, q in qh.items(): out += dqt(t, q)
    out += b"\xff\xc0" + struct.pack(">HBHHB", 8 + 3 * len(comps), 8, H, W, len(comps))
    for ci, c in enumerate(comps): out += bytes([ci + 1, (c["h"] << 4) | c["v"], qsel[ci]])
    if header_tables:
        for cls, idx, spec in (hdr_dht or ((0, 0, DC_L), (1, 0, AC_L), (0, 1, DC_C), (1, 1, AC_C))): out += dht(cls, idx, spec)
    cs = codeset or tsel
    for si, sc in enumerate(scans):
        if between and si in between: out += between[si]
        out += b"\xff\xda" + struct.pack(">HB", 6 + 2 * len(sc), len(sc))
        for ci in sc: out += bytes([ci + 1, (tsel[ci] << 4) | tsel[ci]])
        out += b"\x00\x3f\x00"
        bw = Bits(); pred = {ci: 0 for ci in sc}
        if len(sc) == 1:
            ci = sc[0]; c = comps[ci]; dct, act = tabs[cs[ci]]
            for by in range(c["nby_ni"]):
                for bx in range(c["nbx_ni"]):
                    pred[ci] = code_block(bw, c["Q"][by, bx], pred[ci], dct, act)
        else:
            for my_ in range(my):
                for mx_ in range(mx):
                    for ci in sc:
                        c = comps[ci]; dct, act = tabs[cs[ci]]
                        for by in range(c["v"]):
                            for bx in range(c["h"]):
                                pred[ci] = code_block(bw, c["Q"][my_ * c["v"] + by, mx_ * c["h"] + bx], pred[ci], dct, act)
        bw.flush(); out += bytes(bw.out)
    return out + b"\xff\xd9"
