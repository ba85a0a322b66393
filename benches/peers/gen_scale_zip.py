#!/usr/bin/env python3
"""The paper's 100k-class set at its full entry count, with small images.

`10w_classes.zip` holds 1.2M training and 600k validation images of 100,000
classes. What a packer's memory and its per-entry costs depend on is the number
of entries and classes, not the pixels, so this writes that shape with S x S
JPEGs (default 32 x 32, ~1 KB): `train/cNNNNNN/cNNNNNN_III.JPEG` (12 per class)
and `val/...` (6 per class), stored, zip64, the layout the peer packer
(`../shared/peers/pack-baseline/pack_parquet.py`) reads.

Every entry's bytes are distinct (a pool of procedural images, each entry with
its own JPEG comment segment), so neither packer can shrink repeats (pyarrow
dictionary-encodes equal values). Deterministic for a seed.

    python gen_scale_zip.py --out scale.zip [--classes 100000] [--train 12] [--val 6] [--size 32]
                            [--layout folders|lists]

`--layout lists` writes the paper's ImageNet form instead: `train/IMAGE_ID.JPEG`,
`val/IMAGE_ID.JPEG` and `train.csv` / `val.csv` with `image_id,label` rows (integer
labels, the image id without its extension). The peer reads class folders only.
"""
import argparse, io, struct, time, zipfile

import numpy as np
from PIL import Image, ImageFilter


def pool_image(rng, s):
    small = rng.integers(0, 256, size=(3, 3, 3), dtype=np.uint8)
    im = Image.fromarray(small, "RGB").resize((s, s), Image.BICUBIC)
    arr = np.asarray(im.filter(ImageFilter.GaussianBlur(1.0)), dtype=np.int16)
    arr = arr + rng.normal(0, 8, size=(s, s, 1))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")


def with_comment(jpeg, text):
    # A COM segment right after SOI: a valid JPEG whose pixels are the pool image's.
    payload = text.encode()
    return jpeg[:2] + b"\xff\xfe" + struct.pack(">H", len(payload) + 2) + payload + jpeg[2:]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--classes", type=int, default=100_000)
    ap.add_argument("--train", type=int, default=12, help="training images per class")
    ap.add_argument("--val", type=int, default=6, help="validation images per class")
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--pool", type=int, default=4096, help="distinct pictures")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--layout", choices=["folders", "lists"], default="folders")
    a = ap.parse_args()
    rng = np.random.default_rng(a.seed)
    pool = []
    for _ in range(a.pool):
        bio = io.BytesIO()
        pool_image(rng, a.size).save(bio, format="JPEG", quality=90)
        pool.append(bio.getvalue())
    t0, n, total = time.perf_counter(), 0, 0
    with zipfile.ZipFile(a.out, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for split, per in (("train", a.train), ("val", a.val)):
            rows = ["image_id,label"]
            for c in range(a.classes):
                for i in range(per):
                    data = with_comment(pool[(n * 7919) % a.pool], f"ebv {n}")
                    image_id = f"c{c:06d}_{split}_{i:03d}"
                    if a.layout == "folders":
                        zf.writestr(f"{split}/c{c:06d}/{image_id}.JPEG", data)
                    else:
                        zf.writestr(f"{split}/{image_id}.JPEG", data)
                        rows.append(f"{image_id},{c}")
                    n += 1
                    total += len(data)
            if a.layout == "lists":
                zf.writestr(f"{split}.csv", "\n".join(rows) + "\n")
    print(f"wrote {a.out}: {n} images, {a.classes} classes, {a.size}x{a.size}, "
          f"avg {total / n:.0f} B/img, {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
