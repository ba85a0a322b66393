"""Orientation read by ebv-pack against Pillow's `ImageOps.exif_transpose`.

Usage: python orientation_vs_pillow.py path/to/ebv-pack [workdir]
(needs numpy, pillow, pyarrow: the peer venv of benches/pack_vs_peer.sh).

Builds one small non-square file per case (JPEG, PNG, WebP) whose orientation
comes from XMP, from ImageMagick's `Raw profile type exif` PNG text, or from an
EXIF orientation entry of every TIFF type and count, with an XMP packet beside
it that Pillow reads only when it finds no EXIF tag. Pillow's exif_transpose
gives the expected pixels and size; ebv-pack packs the file raw at that size
(no resize when ebv turns it the same way) and the stored pixels are compared.
Prints one line per case; a mean absolute error above 2 is a disagreement
(JPEG rows differ by ~0.5 between zune-jpeg and libjpeg).
"""
import io, os, struct, subprocess, sys, zlib, shutil, json
import numpy as np
from PIL import Image, ImageOps, PngImagePlugin
import pyarrow.parquet as pq

EBV = sys.argv[1]
W, H = 40, 24
base = np.zeros((H, W, 3), np.uint8)
base[..., 0] = np.arange(W)[None, :] * 6
base[..., 1] = np.arange(H)[:, None] * 10
base[:8, :8, 2] = 255
img = Image.fromarray(base)

def xmp(value, form="attr"):
    if form == "attr":
        body = f'<rdf:Description rdf:about="" xmlns:tiff="http://ns.adobe.com/tiff/1.0/" tiff:Orientation="{value}"/>'
    elif form == "elem":
        body = f'<rdf:Description rdf:about=""><tiff:Orientation>{value}</tiff:Orientation></rdf:Description>'
    else:
        body = f"<rdf:Description rdf:about='' tiff:Orientation='{value}'/>"
    return ('<?xpacket begin="" id="W5M0MpCehiHzreSzNTczkc9d"?><x:xmpmeta xmlns:x="adobe:ns:meta/">'
            '<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">' + body +
            '</rdf:RDF></x:xmpmeta><?xpacket end="w"?>').encode()

def exif_bytes(orientation=None, make=True, kind=3):
    ifd = []
    if make:
        ifd.append((0x010F, 2, 4, b"ebv\0"))
    if orientation is not None:
        if kind == 3:
            ifd.append((0x0112, 3, 1, struct.pack("<HH", orientation, 0)))
        elif kind == 5:  # RATIONAL, out of line
            ifd.append((0x0112, 5, 1, None))
    out = bytearray(b"II*\0" + struct.pack("<I", 8) + struct.pack("<H", len(ifd)))
    extra_at = 8 + 2 + 12 * len(ifd) + 4
    extra = b""
    for tag, typ, count, val in ifd:
        if val is None:
            val = struct.pack("<I", extra_at + len(extra)); extra += struct.pack("<II", orientation, 1)
        out += struct.pack("<HHI", tag, typ, count) + val
    out += b"\0\0\0\0" + extra
    return bytes(out)

def jpeg_with(segments):
    buf = io.BytesIO(); img.save(buf, "JPEG", quality=95); j = buf.getvalue()
    ins = b"".join(b"\xff" + bytes([m]) + struct.pack(">H", len(p) + 2) + p for m, p in segments)
    return j[:2] + ins + j[2:]

NS = b"http://ns.adobe.com/xap/1.0/\0"

def png_with(before=(), after=(), exif=None):
    buf = io.BytesIO(); img.save(buf, "PNG"); p = buf.getvalue()
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr_end = 8 + 25
    idat_end = p.rindex(b"IEND") - 4
    pre = b"".join(chunk(k, d) for k, d in before)
    post = b"".join(chunk(k, d) for k, d in after)
    return p[:ihdr_end] + pre + p[ihdr_end:idat_end] + post + p[idat_end:]

def raw_profile(exif):
    h = ("457869660000" + exif.hex())
    lines = "\n".join(h[i:i + 72] for i in range(0, len(h), 72))
    return f"\nexif\n{len(exif) + 6:8d}\n{lines}\n".encode()

def webp_with(chunks):
    buf = io.BytesIO(); img.save(buf, "WEBP", lossless=True); w = buf.getvalue()
    # Make it VP8X so metadata chunks are legal.
    body = w[12:]
    flags = 0
    for k, _ in chunks:
        flags |= {b"EXIF": 0x08, b"XMP ": 0x04}[k]
    vp8x = b"VP8X" + struct.pack("<I", 10) + bytes([flags, 0, 0, 0]) + (W - 1).to_bytes(3, "little") + (H - 1).to_bytes(3, "little")
    extra = b""
    for k, d in chunks:
        extra += k + struct.pack("<I", len(d)) + d + (b"\0" if len(d) % 2 else b"")
    out = b"WEBP" + vp8x + body + extra
    return b"RIFF" + struct.pack("<I", len(out)) + out

cases = {
    "jpeg_xmp_attr_6": ("jpg", jpeg_with([(0xE1, NS + xmp(6))])),
    "jpeg_xmp_elem_3": ("jpg", jpeg_with([(0xE1, NS + xmp(3, "elem"))])),
    "jpeg_xmp_quote_6": ("jpg", jpeg_with([(0xE1, NS + xmp(6, "quote"))])),
    "jpeg_exif_notag_xmp_6": ("jpg", jpeg_with([(0xE1, b"Exif\0\0" + exif_bytes()), (0xE1, NS + xmp(6))])),
    "jpeg_exif_1_xmp_6": ("jpg", jpeg_with([(0xE1, b"Exif\0\0" + exif_bytes(1)), (0xE1, NS + xmp(6))])),
    "jpeg_exif_rational_xmp_6": ("jpg", jpeg_with([(0xE1, b"Exif\0\0" + exif_bytes(6, kind=5)), (0xE1, NS + xmp(6))])),
    "jpeg_xmp_6_then_8": ("jpg", jpeg_with([(0xE1, NS + xmp(6)), (0xE1, NS + xmp(8))])),
    "jpeg_xmp_5": ("jpg", jpeg_with([(0xE1, NS + xmp(5))])),
    "png_itxt_xmp_6": ("png", png_with(before=[(b"iTXt", b"XML:com.adobe.xmp\0\0\0\0\0" + xmp(6))])),
    "png_itxt_z_xmp_7": ("png", png_with(before=[(b"iTXt", b"XML:com.adobe.xmp\0\1\0\0\0" + zlib.compress(xmp(7)))])),
    "png_text_xmp_after_idat_8": ("png", png_with(after=[(b"tEXt", b"XML:com.adobe.xmp\0" + xmp(8))])),
    "png_raw_profile_6": ("png", png_with(before=[(b"zTXt", b"Raw profile type exif\0\0" + zlib.compress(raw_profile(exif_bytes(6))))])),
    "png_raw_profile_1_xmp_6": ("png", png_with(before=[(b"zTXt", b"Raw profile type exif\0\0" + zlib.compress(raw_profile(exif_bytes(1)))), (b"iTXt", b"XML:com.adobe.xmp\0\0\0\0\0" + xmp(6))])),
    "png_exif_notag_xmp_3": ("png", png_with(before=[(b"eXIf", exif_bytes()), (b"iTXt", b"XML:com.adobe.xmp\0\0\0\0\0" + xmp(3))])),
    "png_exif_6_raw_profile_3": ("png", png_with(before=[(b"eXIf", exif_bytes(6)), (b"zTXt", b"Raw profile type exif\0\0" + zlib.compress(raw_profile(exif_bytes(3))))])),
    "webp_xmp_6": ("webp", webp_with([(b"XMP ", xmp(6))])),
    "webp_exif_notag_xmp_3": ("webp", webp_with([(b"EXIF", exif_bytes()), (b"XMP ", xmp(3))])),
    "webp_exif_1_xmp_6": ("webp", webp_with([(b"EXIF", exif_bytes(1)), (b"XMP ", xmp(6))])),
}

def exif_entry(typ, count, payload):
    """IFD0 with Make and one orientation entry; payload inline (<=4) or after the IFD."""
    n = 2
    extra_at = 8 + 2 + 12 * n + 4
    out = bytearray(b"II*\0" + struct.pack("<I", 8) + struct.pack("<H", n))
    out += struct.pack("<HHI", 0x010F, 2, 4) + b"ebv\0"
    if len(payload) <= 4:
        out += struct.pack("<HHI", 0x0112, typ, count) + payload.ljust(4, b"\0")
        extra = b""
    else:
        out += struct.pack("<HHI", 0x0112, typ, count) + struct.pack("<I", extra_at)
        extra = payload
    out += b"\0\0\0\0" + extra
    return bytes(out)

variants = {
    "byte_6": (1, 1, bytes([6])), "sbyte_6": (6, 1, bytes([6])), "sshort_6": (8, 1, struct.pack("<h", 6)),
    "sshort_neg": (8, 1, struct.pack("<h", -6)), "long_6": (4, 1, struct.pack("<I", 6)),
    "slong_6": (9, 1, struct.pack("<i", 6)), "rational_12_2": (5, 1, struct.pack("<II", 12, 2)),
    "rational_13_2": (5, 1, struct.pack("<II", 13, 2)), "srational_m6_m1": (10, 1, struct.pack("<ii", -6, -1)),
    "float_6": (11, 1, struct.pack("<f", 6.0)), "double_6": (12, 1, struct.pack("<d", 6.0)),
    "ascii_6": (2, 2, b"6\0"), "undefined_6": (7, 1, bytes([6])), "short_count2": (3, 2, struct.pack("<HH", 6, 3)),
    "short_count3": (3, 3, struct.pack("<HHH", 6, 3, 1)), "short_count0": (3, 0, b""),
    "ifd_6": (13, 1, struct.pack("<I", 6)), "long8_6": (16, 1, struct.pack("<Q", 6)),
    "type14_6": (14, 1, struct.pack("<I", 6)), "long_count2_out": (4, 2, struct.pack("<II", 6, 3)), "short_out_of_block": (3, 3, b""),
}
for vname, (typ, count, payload) in variants.items():
    block = exif_entry(typ, count, payload)
    if vname == "short_out_of_block":
        # The value's offset points past the end of the block.
        block = block[:30] + struct.pack("<I", 1000) + block[34:]
    cases["jpeg_exif_" + vname + "_xmp_3"] = ("jpg", jpeg_with([(0xE1, b"Exif\0\0" + block), (0xE1, NS + xmp(3))]))

out = sys.argv[2] if len(sys.argv) > 2 else "/tmp/orientation-vs-pillow"
shutil.rmtree(out, ignore_errors=True)
rows = []
for name, (ext, data) in cases.items():
    d = f"{out}/{name}/src/train/a"; os.makedirs(d)
    path = f"{d}/x.{ext}"
    open(path, "wb").write(data)
    try:
        want = np.asarray(ImageOps.exif_transpose(Image.open(path)).convert("RGB"))
    except Exception as e:
        rows.append((name, f"pillow error {e!r}", "", "")); continue
    h, w = want.shape[:2]
    r = subprocess.run([EBV, f"{out}/{name}/src", "--out", f"{out}/{name}/shards", "--encoding", "raw",
                        "--size", f"{w}x{h}", "--quiet", "--json"], capture_output=True, text=True)
    if r.returncode != 0:
        rows.append((name, f"ebv rc {r.returncode}", r.stdout[-300:], r.stderr[-300:])); continue
    t = pq.read_table(f"{out}/{name}/shards/train-00000.parquet")
    got = np.frombuffer(t.column("image")[0].as_py(), np.uint8).reshape(h, w, 3)
    mae = np.abs(got.astype(int) - want.astype(int)).mean()
    turned = Image.open(path).getexif().get(0x0112)
    rows.append((name, f"{w}x{h}", f"pillow orientation {turned}", f"mae {mae:.2f}"))
bad = 0
for r in rows:
    mae = float(r[3].split()[1]) if r[3].startswith("mae") else float("inf")
    bad += mae > 2
    print(*r, sep="\t")
print(f"{len(rows) - bad} of {len(rows)} cases agree with Pillow {Image.__version__}")
sys.exit(1 if bad else 0)
