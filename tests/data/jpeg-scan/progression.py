"""Progressive scans out of order, made from progressive-restart.jpg: what
make.py asks djpeg about, what benches/peers/progression_pixels.py decodes,
and what the Rust test in src/image/jpeg_scan.rs rebuilds and refuses.

progressive-restart.jpg has Pillow's ten scans (DC Al 1; Y 1-5 Al 2; Cr, Cb
1-63 Al 1; Y 6-63 Al 2; Y 1-63 2->1; DC 1->0; Cr, Cb, Y 1-63 1->0). libjpeg
reads each mutant with the warning "Inconsistent progression sequence"
(Pillow shows them silently).
"""


def scans(b):
    """(start, end) of each scan: its SOS marker to the marker after its data."""
    out, i = [], 2
    while i < len(b) - 1:
        m = b[i + 1]
        if m == 0xD9:
            break
        length = int.from_bytes(b[i + 2:i + 4], "big")
        i += 2 + length
        if m == 0xDA:
            start = i - 2 - length
            while not (b[i] == 0xFF and b[i + 1] not in (0x00, *range(0xD0, 0xD8))):
                i += 1
            out.append((start, i))
    return out


def mutants(b):
    """(name, what was done, bytes) for each mutant of progressive-restart.jpg's bytes `b`."""
    s = scans(b)
    assert len(s) == 10
    dc_refine = s[6][0]
    ahal = dc_refine + 4 + 1 + 2 * b[dc_refine + 4] + 2
    assert b[ahal] == 0x10
    return [
        ("dc-refine-ah2", "DC refinement scan's Ah/Al 1/0 made 2/1", b[:ahal] + b"\x21" + b[ahal + 1:]),
        ("dc-removed", "first scan (DC) removed", b[:s[0][0]] + b[s[0][1]:]),
        ("y1-5-removed", "second scan (Y 1-5) removed", b[:s[1][0]] + b[s[1][1]:]),
    ]
