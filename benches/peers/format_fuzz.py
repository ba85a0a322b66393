"""Differential check of the non-JPEG decoders: ebv-pack against Pillow, by mutation.

Usage: python format_fuzz.py path/to/ebv-pack N SEED [workdir]
(needs Pillow, numpy and pyarrow: the peer venv of benches/pack_vs_peer.sh).

Makes small fixtures with Pillow (PNG: RGB, RGBA, palette with tRNS, gray,
gray+alpha, 16-bit gray; GIF: still and two-frame; BMP: 24-bit, 8-bit
palette, 1-bit, RLE8 and RLE4 written here; WebP: lossy, lossless, with
alpha; TIFF: raw, LZW, deflate, PackBits), all 61x45, and N mutants, each
with one change anywhere in the file: a byte set, inserted or deleted, two
bytes set, or the file cut short. ebv-pack packs them all (raw, 61x45: an
image of that size is stored as decoded, without resizing); Pillow opens,
loads and converts each to RGB (with warnings as errors). Prints
  - crashes: ebv-pack did not finish (a decoder panic that stops the run);
  - mutants Pillow decodes while ebv rejects them (images lost), by reason;
  - mutants Pillow refuses while ebv packs them, by Pillow's reason;
  - mutants both decode to 61x45 with different pixels, by format,
with one example file each.
"""
import collections, io, json, os, random, re, shutil, struct, subprocess, sys, warnings

import numpy as np
import pyarrow.parquet as pq
from PIL import Image, ImageOps

EBV, N, SEED = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
WORK = sys.argv[4] if len(sys.argv) > 4 else "/tmp/format-fuzz"
W, H = 61, 45
rng = random.Random(SEED)


def picture(mode):
    y, x = np.mgrid[0:H, 0:W]
    rgb = np.stack([(x * 4) % 256, (y * 5) % 256, ((x + y) * 3) % 256], -1).astype(np.uint8)
    im = Image.fromarray(rgb)
    if mode == "RGBA":
        a = Image.fromarray(((x * y) % 256).astype(np.uint8))
        im.putalpha(a)
        return im
    if mode == "P":
        return im.quantize(37)
    if mode == "1":
        return im.convert("L").point(lambda v: 255 if v > 100 else 0).convert("1")
    if mode == "LA":
        return im.convert("LA")
    if mode == "I;16":
        return Image.fromarray(((x * 1000 + y * 7) % 65536).astype(np.uint16))
    return im.convert(mode)


def save(im, fmt, **kw):
    b = io.BytesIO()
    im.save(b, fmt, **kw)
    return b.getvalue()


def bmp_rle(bits):
    """A BMP with RLE8 (bits 8) or RLE4 (bits 4) pixel data, encoded here:
    runs of equal indices, absolute runs for the rest, one end-of-line per
    row, end-of-bitmap at the end."""
    colours = 1 << bits
    idx = np.array(picture("RGB").quantize(colours))
    data = bytearray()
    for row in idx[::-1]:
        i = 0
        row = list(row)
        while i < W:
            j = i
            while j < W and row[j] == row[i] and j - i < 255:
                j += 1
            if j - i >= 3 or j == W:
                n = j - i
                data += bytes([n, row[i] if bits == 8 else (row[i] << 4) | row[i]])
                i = j
                continue
            k = min(i + 20, W)
            lit = row[i:k]
            if len(lit) < 3:
                data += bytes([len(lit), lit[0] if bits == 8 else (lit[0] << 4) | lit[0]])
                i += 1 if len(lit) else 0
                if len(lit) == 2:
                    data += bytes([1, lit[1] if bits == 8 else (lit[1] << 4) | lit[1]])
                    i += 1
                continue
            data += bytes([0, len(lit)])
            if bits == 8:
                body = bytes(lit)
            else:
                body = bytes((lit[t] << 4) | (lit[t + 1] if t + 1 < len(lit) else 0) for t in range(0, len(lit), 2))
            data += body + (b"\0" if len(body) % 2 else b"")
            i = k
        data += b"\0\0"
    data += b"\0\1"
    pal = picture("RGB").quantize(colours).getpalette()[: colours * 3]
    pal += [0] * (colours * 3 - len(pal))
    table = b"".join(bytes([pal[3 * c + 2], pal[3 * c + 1], pal[3 * c], 0]) for c in range(colours))
    offset = 14 + 40 + len(table)
    info = struct.pack("<IiiHHIIiiII", 40, W, H, 1, bits, 1 if bits == 8 else 2, len(data), 2835, 2835, colours, 0)
    return b"BM" + struct.pack("<IHHI", offset + len(data), 0, 0, offset) + info + table + bytes(data)


def gif_two_frames():
    a, b = picture("RGB"), picture("RGB").transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    out = io.BytesIO()
    a.save(out, "GIF", save_all=True, append_images=[b], duration=50, loop=0)
    return out.getvalue()


png_trns = picture("P")
png_trns.info["transparency"] = 3
FIXTURES = {
    "png-rgb": (save(picture("RGB"), "PNG"), ".png"),
    "png-rgba": (save(picture("RGBA"), "PNG"), ".png"),
    "png-p-trns": (save(png_trns, "PNG", transparency=3), ".png"),
    "png-l": (save(picture("L"), "PNG"), ".png"),
    "png-la": (save(picture("LA"), "PNG"), ".png"),
    "png-16": (save(picture("I;16"), "PNG"), ".png"),
    "gif": (save(picture("P"), "GIF"), ".gif"),
    "gif-anim": (gif_two_frames(), ".gif"),
    "bmp-24": (save(picture("RGB"), "BMP"), ".bmp"),
    "bmp-8": (save(picture("P"), "BMP"), ".bmp"),
    "bmp-1": (save(picture("1"), "BMP"), ".bmp"),
    "bmp-rle8": (bmp_rle(8), ".bmp"),
    "bmp-rle4": (bmp_rle(4), ".bmp"),
    "webp-lossy": (save(picture("RGB"), "WEBP", quality=80), ".webp"),
    "webp-lossless": (save(picture("RGB"), "WEBP", lossless=True), ".webp"),
    "webp-alpha": (save(picture("RGBA"), "WEBP", quality=80), ".webp"),
    "tiff-raw": (save(picture("RGB"), "TIFF"), ".tif"),
    "tiff-lzw": (save(picture("RGB"), "TIFF", compression="tiff_lzw"), ".tif"),
    "tiff-deflate": (save(picture("RGB"), "TIFF", compression="tiff_adobe_deflate"), ".tif"),
    "tiff-packbits": (save(picture("RGB"), "TIFF", compression="packbits"), ".tif"),
}


def pillow(b):
    """Pillow's RGB pixels, or the text of its refusal."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            im = Image.open(io.BytesIO(b))
            im.load()
            im = ImageOps.exif_transpose(im)
            if im.mode in ("I;16", "I;16B", "I"):
                # Pillow clips 16-bit gray at 255; ebv scales it to 8 bits
                # (README): compare against the scaled samples.
                v = np.round(np.asarray(im).astype(np.float64) / 257).clip(0, 255).astype(np.uint8)
                return np.repeat(v[..., None], 3, -1), None
            return np.asarray(im.convert("RGB")), None
    except Exception as e:  # noqa: BLE001 - every refusal is a data point
        return None, f"{type(e).__name__}: {e}"


def mutate(b):
    """The mutant and what was done to it."""
    b = bytearray(b)
    at = rng.randrange(len(b))
    kind = rng.randrange(5)
    if kind == 0:
        b[at] = rng.randrange(256)
        what = f"byte {at} set to {b[at]}"
    elif kind == 1:
        b.insert(at, rng.randrange(256))
        what = f"byte {b[at]} inserted at {at}"
    elif kind == 2:
        del b[at]
        what = f"byte {at} deleted"
    elif kind == 3:
        b[at] = rng.randrange(256)
        other = rng.randrange(len(b))
        b[other] = rng.randrange(256)
        what = f"bytes {at} and {other} set"
    else:
        at = max(at, 1)
        del b[at:]
        what = f"cut at {at}"
    return bytes(b), what


shutil.rmtree(WORK, ignore_errors=True)
src = os.path.join(WORK, "src", "train", "a")
os.makedirs(src)
files, kind_of, change = {}, {}, {}
names = sorted(FIXTURES)
for name in names:  # the unmutated fixtures too: they must agree exactly
    b, ext = FIXTURES[name]
    key = f"train/a/{name}-orig{ext}"
    open(os.path.join(WORK, "src", key), "wb").write(b)
    files[key], kind_of[key] = b, name
for i in range(N):
    name = rng.choice(names)
    b, ext = FIXTURES[name]
    key = f"train/a/{name}-{i:05d}{ext}"
    m, change[key] = mutate(b)
    open(os.path.join(WORK, "src", key), "wb").write(m)
    files[key], kind_of[key] = m, name

out = os.path.join(WORK, "out")
run = subprocess.run([EBV, os.path.join(WORK, "src"), "--out", out, "--size", f"{W}x{H}", "--encoding", "raw",
                      "--quiet"], capture_output=True)
if run.returncode not in (0, 1) or not os.path.exists(os.path.join(out, "manifest.json")):
    print(f"CRASH: ebv-pack exit {run.returncode}\n{run.stderr.decode()[-2000:]}")
    sys.exit(2)
rejected = {r["key"]: r["reason"] for r in json.load(open(os.path.join(out, "manifest.json")))["rejected"]}
packed = {}
for f in sorted(os.listdir(out)):
    if f.endswith(".parquet"):
        t = pq.read_table(os.path.join(out, f), columns=["key", "image"])
        for k, img in zip(t.column("key").to_pylist(), t.column("image").to_pylist()):
            packed[k] = np.frombuffer(img, np.uint8).reshape(H, W, 3)
missing = set(files) - set(rejected) - set(packed)

# Whether a decode is the fixture's own picture: an image ebv rejects while
# Pillow shows the fixture intact is lost; one Pillow shows damaged (or
# refuses) is a rejection of damage. The same for what ebv packs.
orig = {name: pillow(FIXTURES[name][0])[0] for name in names}


def intact(name, px):
    return px is not None and px.shape == orig[name].shape and np.array_equal(px, orig[name])


tally = collections.Counter()
example = {}
all_of = collections.defaultdict(list)


def note(cls, fmt, reason, key):
    tally[(cls, fmt, reason)] += 1
    all_of[(cls, fmt)].append(f"{key}: {change.get(key)}")
    example.setdefault((cls, fmt, reason), f"{key}: {change.get(key, 'unmutated')}")


both = 0
for key, b in files.items():
    fmt = kind_of[key]
    px, refusal = pillow(b)
    ours = packed.get(key)
    if key in rejected:
        r = re.sub(r"0x[0-9a-f]+|[0-9]+", "N", rejected[key])
        if px is not None:
            note("lost" if intact(fmt, px) else "rejected, Pillow shows damage", fmt, r, key)
    elif px is None:
        r = re.sub(r"0x[0-9a-f]+|[0-9]+", "N", refusal)[:100]
        note("recovered" if intact(fmt, ours) else "lax", fmt, r, key)
    elif px.shape == (H, W, 3):
        both += 1
        if not np.array_equal(px, ours):
            d = np.abs(px.astype(int) - ours.astype(int))
            who = "ebv intact" if intact(fmt, ours) else "Pillow intact" if intact(fmt, px) else "neither intact"
            note("differ", fmt, f"{who}", key)
            example[("differ", fmt, who)] += f" (max diff {d.max()}, {np.count_nonzero(d.max(-1))} px)"

per_class = collections.Counter()
for (cls, _, _), n in tally.items():
    per_class[cls] += n
print(f"{len(files)} files ({len(names)} fixtures + {N} mutants, seed {SEED}): ebv packed {len(packed)}, "
      f"rejected {len(rejected)}, missing {len(missing)}; both decoded at {W}x{H}: {both}")
print("  " + "; ".join(f"{c}: {per_class[c]}" for c in
                      ["lost", "rejected, Pillow shows damage", "lax", "recovered", "differ"]))
for (cls, fmt, r), n in sorted(tally.items(), key=lambda kv: (kv[0][0], -kv[1])):
    print(f"  {cls:30s} {n:4d}  {fmt}: {r}  (e.g. {example[(cls, fmt, r)]})")
for key in sorted(missing)[:10]:
    print(f"  MISSING {key}")
if os.environ.get("FUZZ_LIST"):
    for (cls, fmt), keys in sorted(all_of.items()):
        if re.fullmatch(os.environ["FUZZ_LIST"], f"{cls}/{fmt}"):
            print(f"{cls}/{fmt}:", *keys, sep="\n    ")
