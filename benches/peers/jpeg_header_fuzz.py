"""Differential check of JPEG header handling: ebv-pack against libjpeg-turbo's djpeg.

Usage: python jpeg_header_fuzz.py path/to/ebv-pack N SEED [--arith] [workdir]
(needs pyarrow-free Python 3, and djpeg + jpegtran: Debian's libjpeg-turbo-progs).

Takes the Huffman-coded fixtures of tests/data/jpeg-arith (baseline 4:2:0, 4:4:4
with restarts, one scan per component, gray, CMYK, 16-bit tables) and two
progressive versions made by jpegtran (or, with --arith, the arithmetic-coded
fixtures), and makes N mutants, each with one change in the bytes before the
first scan's data: a byte set, inserted or deleted, or two bytes set. ebv-pack
packs them all (raw, 61x45); djpeg decodes each. Prints the mutants that
  - djpeg decodes with no warning at all, while ebv rejects them (images lost);
  - djpeg refuses (exit 1), while ebv packs them (ebv reading what libjpeg
    calls broken),
grouped by reason, with one example file each. Damaged coded data itself is out
of scope: ebv refuses what libjpeg reads with a warning there, by design.
"""
import collections, json, os, random, re, shutil, subprocess, sys

EBV, N, SEED = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
ARITH = "--arith" in sys.argv
rest = [a for a in sys.argv[4:] if a != "--arith"]
WORK = rest[0] if rest else "/tmp/jpeg-header-fuzz"
DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tests", "data", "jpeg-arith")
rng = random.Random(SEED)

def fixture(name):
    return open(os.path.join(DATA, name), "rb").read()

if ARITH:
    sources = [fixture(f"{n}.arith.jpg") for n in [
        "seq-420", "seq-444-restart", "seq-422-separate", "gray-seq", "cmyk-seq", "seq-q3-16bit",
        "prog-420", "prog-444-restart", "prog-444-dac", "gray-prog-restart"]]
else:
    sources = [fixture(f"{n}.huff.jpg") for n in [
        "seq-420", "seq-444-restart", "seq-422-separate", "gray-seq", "cmyk-seq", "seq-q3-16bit"]]
    for n, extra in [("seq-420", []), ("prog-444-restart", ["-restart", "1"])]:
        sources.append(subprocess.run(["jpegtran", "-progressive", *extra], input=fixture(f"{n}.huff.jpg"),
                                      capture_output=True, check=True).stdout)
shutil.rmtree(WORK, ignore_errors=True)
src = os.path.join(WORK, "src", "train", "a")
os.makedirs(src)
files = {}
for i in range(N):
    b = bytearray(rng.choice(sources))
    first = b.index(b"\xff\xda")
    at = rng.randrange(2, first + 12)
    kind = rng.randrange(4)
    if kind == 0:
        b[at] = rng.randrange(256)
    elif kind == 1:
        b.insert(at, rng.randrange(256))
    elif kind == 2:
        del b[at]
    else:
        b[at] = rng.randrange(256)
        b[rng.randrange(2, first + 12)] = rng.randrange(256)
    name = f"{i:05d}.jpg"
    open(os.path.join(src, name), "wb").write(b)
    files[f"train/a/{name}"] = bytes(b)
out = os.path.join(WORK, "out")
subprocess.run([EBV, os.path.join(WORK, "src"), "--out", out, "--size", "61x45", "--encoding", "raw",
                "--quiet"], capture_output=True)
rejected = {r["key"]: r["reason"] for r in json.load(open(os.path.join(out, "manifest.json")))["rejected"]}
lost, lax, example = collections.Counter(), collections.Counter(), {}
for key, b in files.items():
    d = subprocess.run(["djpeg", "-ppm"], input=b, capture_output=True)
    if d.returncode == 0 and not d.stderr and key in rejected:
        r = re.sub(r"[0-9]+", "N", rejected[key])
        lost[r] += 1
        example.setdefault(r, key)
    if d.returncode == 1 and key not in rejected:
        r = re.sub(r"[0-9]+", "N", d.stderr.decode().strip())
        lax[r] += 1
        example.setdefault(r, key)
print(f"{N} mutants (seed {SEED}{', arithmetic' if ARITH else ''}): ebv rejected {len(rejected)}; "
      f"djpeg clean but ebv rejects: {sum(lost.values())}; djpeg refuses but ebv packs: {sum(lax.values())}")
for title, c in [("djpeg clean, ebv rejects", lost), ("djpeg refuses, ebv packs", lax)]:
    for r, n in c.most_common():
        print(f"  {title}: {n} x {r}  (e.g. {example[r]})")
