"""TIFF files of the codings Pillow reads, and Pillow's decode of each as the reference.

    python make.py     # needs numpy and Pillow (13 was used)

Writes NAME.tif and, where ebv should match it, NAME.rgb: Pillow's
ImageOps.exif_transpose(im).convert("RGB"), RGB8 row-major, with its width x
height listed in SIZES.txt. The tests pack each .tif raw at that
size with ebv and compare with the .rgb; ebv rejects the files Pillow reads
and it does not (CCITT group 3; 32-bit float samples) as unsupported, and
scales 16-bit gray where Pillow clips it at 255 (not a fixture here).
"""
import io
import numpy as np
from PIL import Image, ImageOps, TiffImagePlugin

W, H = 40, 24
y, x = np.mgrid[0:H, 0:W]
rgb = np.stack([x * 6, y * 10, ((x // 4 + y // 4) % 2) * 160 + 40], -1).astype(np.uint8)
rng = np.random.default_rng(3)
rgb[12:, 20:] = rng.integers(0, 256, (12, 20, 3))
base = Image.fromarray(rgb)


def save(im, **kw):
    buf = io.BytesIO()
    im.save(buf, "TIFF", **kw)
    return buf.getvalue()


def tags(**values):
    ifd = TiffImagePlugin.ImageFileDirectory_v2()
    for tag, (value, kind) in values.items():
        ifd[int(tag[1:])] = value
        ifd.tagtype[int(tag[1:])] = kind
    return ifd


XMP6 = b'<x:xmpmeta><rdf:Description tiff:Orientation="6"/></x:xmpmeta>'
cases = {
    "rgb-lzw": save(base, compression="tiff_lzw"),
    "rgb-jpeg": save(base, compression="jpeg"),
    "rgba-deflate": save(base.convert("RGBA"), compression="tiff_adobe_deflate"),
    "cmyk-packbits": save(base.convert("CMYK"), compression="packbits"),
    "gray-alpha-lzw": save(base.convert("LA"), compression="tiff_lzw"),
    "palette-raw": save(base.convert("P", palette=Image.ADAPTIVE, colors=16)),
    "palette-lzw-orient6": save(base.convert("P", palette=Image.ADAPTIVE, colors=200),
                                compression="tiff_lzw", tiffinfo=tags(t274=(6, 3))),
    "bilevel-group4": save(base.convert("1"), compression="group4"),
    "rgb-orient8": save(base, tiffinfo=tags(t274=(8, 3))),
    "rgb-xmp6": save(base, tiffinfo=tags(t700=(XMP6, 1))),
    "bigtiff": save(base, big_tiff=True),
    "multipage": save(base, save_all=True, append_images=[base.convert("L")]),
    "bilevel-group3": save(base.convert("1"), compression="group3"),
    "float32": save(Image.fromarray(rgb[..., 0].astype(np.float32))),
}
sizes = []
for name, data in cases.items():
    open(f"{name}.tif", "wb").write(data)
    try:
        px = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB"))
    except OSError as e:
        print(name, "Pillow:", e)
        continue
    if name in ("bilevel-group3", "float32"):
        print(name, "Pillow reads it; ebv does not")
        continue
    open(f"{name}.rgb", "wb").write(px.tobytes())
    sizes.append(f"{name} {px.shape[1]}x{px.shape[0]}")
    print(name, px.shape, len(data), "bytes")
open("SIZES.txt", "w").write("\n".join(sizes) + "\n")
