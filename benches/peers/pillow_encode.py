"""Pillow (libjpeg-turbo) encode of the same 224x224 RGB8 images that
`examples/encode_rate.rs` dumps, at the same quality, with 4:4:4 and 4:2:0
chroma: encode time, bytes and PSNR after Pillow's own decode, one JSON line
per setting (BENCHMARKS.md, "re-encoding").

    python benches/peers/pillow_encode.py PIXELS.rgb QUALITY
"""
import io
import json
import sys
import time

import numpy as np
from PIL import Image

SIDE = 224


def main() -> None:
    path, quality = sys.argv[1], int(sys.argv[2])
    raw = np.fromfile(path, dtype=np.uint8).reshape(-1, SIDE, SIDE, 3)
    images = [Image.fromarray(a) for a in raw]
    # Pillow: subsampling 0 = 4:4:4, 2 = 4:2:0.
    for name, sub in (("444", 0), ("420", 2)):
        start = time.perf_counter()
        encoded = []
        for img in images:
            buf = io.BytesIO()
            img.save(buf, "JPEG", quality=quality, subsampling=sub)
            encoded.append(buf.getvalue())
        encode_s = time.perf_counter() - start
        se = 0.0
        for a, jpg in zip(raw, encoded):
            b = np.asarray(Image.open(io.BytesIO(jpg)).convert("RGB"))
            se += float(((a.astype(np.float64) - b) ** 2).sum())
        mse = se / raw.size
        k = len(images)
        print(json.dumps({
            "setting": f"pillow-{name}",
            "quality": quality,
            "images": k,
            "encode_us": round(encode_s * 1e6 / k, 1),
            "bytes_per_image": round(sum(map(len, encoded)) / k),
            "psnr_db": round(10 * np.log10(255.0 ** 2 / mse), 3),
        }))


if __name__ == "__main__":
    main()
