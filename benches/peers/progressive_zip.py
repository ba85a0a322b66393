"""Two zips of the same images brought to 224x224 and saved by Pillow at
q95 4:2:0, one sequential and one progressive, so that
`examples/decode_rate` can time zune-jpeg on each (BENCHMARKS.md, ebv-stats).

    python benches/peers/progressive_zip.py SOURCE.zip N OUT_PREFIX
    # writes OUT_PREFIX-sequential.zip and OUT_PREFIX-progressive.zip
"""
import io
import sys
import zipfile

from PIL import Image


def main() -> None:
    source, n, prefix = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    src = zipfile.ZipFile(source)
    names = [x for x in src.namelist() if x.lower().endswith((".jpg", ".jpeg"))][:n]
    for kind, progressive in (("sequential", False), ("progressive", True)):
        with zipfile.ZipFile(f"{prefix}-{kind}.zip", "w", zipfile.ZIP_STORED) as z:
            for name in names:
                im = Image.open(io.BytesIO(src.read(name))).convert("RGB").resize((224, 224))
                buf = io.BytesIO()
                im.save(buf, "JPEG", quality=95, subsampling=2, progressive=progressive)
                z.writestr(name, buf.getvalue())
    print(f"{len(names)} images")


if __name__ == "__main__":
    main()
