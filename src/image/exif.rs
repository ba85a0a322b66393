//! EXIF blocks of JPEG, PNG and WebP files and the orientation tag in
//! them, read the way Pillow's `getexif` reads them, so that a dataset
//! packed here is rotated as a PyTorch pipeline would rotate it (the XMP
//! fallback for a block without the tag is [`super::orientation`]'s).
//!
//! Invariants: the orientation comes from the *first* EXIF block of a file
//! (JPEG: the first `Exif` APP1; PNG: the first `eXIf` chunk, wherever it
//! sits, else the last `Raw profile type exif` text chunk ImageMagick
//! writes; WebP: the first `EXIF` chunk), from the first tag 0x0112 of IFD0
//! whose type Pillow loads and whose value lies inside the block; its
//! (first) value counts when it is a number equal to an integer in 1..=8
//! (cameras write SHORT, some tools LONG, a few RATIONAL), and any other
//! value (a BYTE, which Pillow loads as bytes; text) means "present, no
//! orientation". Nothing here panics on bad bytes: a block that cannot be
//! read has no tag.

use ::image::metadata::Orientation;

use super::ifd::Ifd0;

/// The `Exif\0\0` prefix of a JPEG APP1 segment, which some PNG and WebP
/// writers copy into their own EXIF blocks.
const EXIF_PREFIX: &[u8] = b"Exif\0\0";

/// An EXIF orientation tag as found: `None` when there is none (or the
/// block cannot be read), `Some(None)` when the tag is there but its value
/// is not an orientation. The difference matters: only a file without the
/// tag is looked up in its XMP packet.
pub(crate) type OrientationTag = Option<Option<Orientation>>;

/// The orientation tag of an EXIF block.
pub(crate) fn orientation_tag(block: &[u8]) -> OrientationTag {
    let ifd = Ifd0::open(block.strip_prefix(EXIF_PREFIX).unwrap_or(block))?;
    let tiff = ifd.bytes();
    for entry in ifd.entries().filter(|e| e.tag == 0x0112) {
        // Pillow skips an entry of a type it does not load (and then reads
        // a later one); the first it loads is the tag.
        let unit: u64 = match entry.kind {
            1 | 2 | 6 | 7 => 1,
            3 | 8 => 2,
            4 | 9 | 11 | 13 => 4,
            5 | 10 | 12 | 16 => 8,
            _ => continue,
        };
        let size = u64::from(entry.count) * unit;
        // Pillow skips a tag whose value lies outside the block.
        let Some(at) = ifd.value_at(entry, size) else {
            continue;
        };
        // Pillow loads no value from an empty entry: no tag.
        if size == 0 {
            return None;
        }
        // Several values: Pillow takes the first. It compares it with the
        // integers 1..=8 as a Python number: a RATIONAL 12/2 or a FLOAT 6.0
        // is 6; text and bytes (BYTE, which Pillow loads as bytes, ASCII,
        // UNDEFINED) are nothing.
        let value: Option<i64> = match entry.kind {
            6 => Some(i64::from(tiff[at] as i8)),
            3 => ifd.u16_at(at).map(i64::from),
            8 => ifd.u16_at(at).map(|v| i64::from(v as i16)),
            4 | 13 => ifd.u32_at(at).map(i64::from),
            9 => ifd.u32_at(at).map(|v| i64::from(v as i32)),
            16 => ifd.u64_at(at).and_then(|v| i64::try_from(v).ok()),
            5 => ratio(i64::from(ifd.u32_at(at)?), i64::from(ifd.u32_at(at + 4)?)),
            10 => ratio(
                i64::from(ifd.u32_at(at)? as i32),
                i64::from(ifd.u32_at(at + 4)? as i32),
            ),
            11 => integral(f64::from(f32::from_bits(ifd.u32_at(at)?))),
            12 => integral(f64::from_bits(ifd.u64_at(at)?)),
            _ => None,
        };
        let orientation = value
            .and_then(|v| u8::try_from(v).ok())
            .and_then(Orientation::from_exif);
        return Some(orientation);
    }
    None
}

/// The XMP packet of a TIFF file: tag 700 of its first IFD (BYTE or
/// UNDEFINED values), which Pillow reads as the file's XMP.
pub(crate) fn tiff_xmp(tiff: &[u8]) -> Option<&[u8]> {
    let ifd = Ifd0::open(tiff)?;
    let entry = ifd
        .entries()
        .find(|e| e.tag == 700 && matches!(e.kind, 1 | 7))?;
    let at = ifd.value_at(entry, u64::from(entry.count))?;
    tiff.get(at..at + entry.count as usize)
}

/// `n / d` when it is a whole number.
fn ratio(n: i64, d: i64) -> Option<i64> {
    (d != 0 && n % d == 0).then(|| n / d)
}

/// `v` when it is a whole number (not NaN, not infinite).
fn integral(v: f64) -> Option<i64> {
    (v.fract() == 0.0 && v.abs() < 1e15).then_some(v as i64)
}

/// The first `eXIf` chunk of a PNG. The chunk may follow the image data,
/// where a decoder that stops reading at the pixels never sees it.
pub(crate) fn png_block(bytes: &[u8]) -> Option<&[u8]> {
    super::png::chunks(bytes).find_map(|(kind, data)| (kind == b"eXIf").then_some(data))
}

/// The EXIF block ImageMagick writes into a PNG as a `Raw profile type
/// exif` text chunk: a blank line, the name, the byte count, then the
/// bytes in hexadecimal over many lines. Read as Pillow reads it: every
/// line from the fourth on, joined, white space ignored.
pub(crate) fn png_raw_profile(bytes: &[u8]) -> Option<Vec<u8>> {
    let text = super::png_text::last_text(bytes, b"Raw profile type exif")?;
    let hex: Vec<u8> = text
        .split(|&b| b == b'\n')
        .skip(3)
        .flatten()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    hex.chunks_exact(2)
        .map(|pair| {
            let digit = |c: u8| char::from(c).to_digit(16);
            Some((digit(pair[0])? * 16 + digit(pair[1])?) as u8)
        })
        .collect()
}

/// The first chunk of type `fourcc` (`EXIF`, `XMP `) of a WebP (RIFF) file.
pub(crate) fn webp_chunk<'a>(bytes: &'a [u8], fourcc: &[u8; 4]) -> Option<&'a [u8]> {
    if bytes.get(..4)? != b"RIFF" || bytes.get(8..12)? != b"WEBP" {
        return None;
    }
    let mut pos = 12;
    loop {
        let kind = bytes.get(pos..pos + 4)?;
        let len = usize::try_from(u32::from_le_bytes(
            bytes.get(pos + 4..pos + 8)?.try_into().ok()?,
        ))
        .ok()?;
        let data = bytes.get(pos + 8..(pos + 8).checked_add(len)?)?;
        if kind == fourcc {
            return Some(data);
        }
        // Chunks are padded to an even length.
        pos += 8 + len + (len & 1);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A TIFF block holding one IFD0 entry: tag 0x0112 of type `kind` with
    /// `value`, in either byte order.
    pub(crate) fn tiff(big: bool, kind: u16, value: u32) -> Vec<u8> {
        let mut t = Vec::new();
        let u16b = |v: u16| {
            if big {
                v.to_be_bytes()
            } else {
                v.to_le_bytes()
            }
        };
        let u32b = |v: u32| {
            if big {
                v.to_be_bytes()
            } else {
                v.to_le_bytes()
            }
        };
        t.extend_from_slice(if big { b"MM" } else { b"II" });
        t.extend_from_slice(&u16b(42));
        t.extend_from_slice(&u32b(8));
        t.extend_from_slice(&u16b(2));
        // An unrelated entry first (ImageWidth), then the orientation.
        t.extend_from_slice(&u16b(0x0100));
        t.extend_from_slice(&u16b(3));
        t.extend_from_slice(&u32b(1));
        t.extend_from_slice(&u32b(0));
        t.extend_from_slice(&u16b(0x0112));
        t.extend_from_slice(&u16b(kind));
        t.extend_from_slice(&u32b(1));
        match kind {
            3 | 8 => {
                t.extend_from_slice(&u16b(value as u16));
                t.extend_from_slice(&[0, 0]);
            }
            1 | 6 => t.extend_from_slice(&[value as u8, 0, 0, 0]),
            _ => t.extend_from_slice(&u32b(value)),
        }
        t.extend_from_slice(&u32b(0));
        t
    }

    /// IFD0 holding ImageWidth and an orientation entry of `kind` and
    /// `count` whose value bytes (in the block's byte order) are `value`:
    /// inline when they fit in 4 bytes, else after the IFD.
    fn entry(big: bool, kind: u16, count: u32, value: &[u8]) -> Vec<u8> {
        let mut t = tiff(big, 3, 1);
        let at = t.len();
        // The orientation entry: tag 22..24, type, count, value 30..34.
        t[24..26].copy_from_slice(&if big {
            kind.to_be_bytes()
        } else {
            kind.to_le_bytes()
        });
        t[26..30].copy_from_slice(&if big {
            count.to_be_bytes()
        } else {
            count.to_le_bytes()
        });
        if value.len() <= 4 {
            t[30..34].fill(0);
            t[30..30 + value.len()].copy_from_slice(value);
        } else {
            let at = at as u32;
            t[30..34].copy_from_slice(&if big {
                at.to_be_bytes()
            } else {
                at.to_le_bytes()
            });
            t.extend_from_slice(value);
        }
        t
    }

    #[test]
    fn reads_every_integer_type_in_both_byte_orders() {
        for big in [false, true] {
            for kind in [3u16, 4, 6, 8, 9] {
                let block = tiff(big, kind, 6);
                assert_eq!(
                    orientation_tag(&block),
                    Some(Some(Orientation::Rotate90)),
                    "big {big} type {kind}"
                );
                let mut prefixed = EXIF_PREFIX.to_vec();
                prefixed.extend_from_slice(&block);
                assert_eq!(
                    orientation_tag(&prefixed),
                    Some(Some(Orientation::Rotate90))
                );
            }
        }
    }

    /// The values below were checked against Pillow 13's `getexif` and
    /// `exif_transpose` on JPEGs carrying each entry (and an XMP packet
    /// saying 3, read only where Pillow finds no tag).
    #[test]
    fn numbers_equal_to_an_orientation_count_and_other_values_do_not() {
        let le = |v: &[&[u8]]| v.concat();
        let rot90 = Some(Some(Orientation::Rotate90));
        let present_none = Some(None);
        let cases: Vec<(u16, u32, Vec<u8>, OrientationTag)> = vec![
            // BYTE is loaded by Pillow as bytes: a tag, but no number.
            (1, 1, vec![6], present_none),
            (6, 1, vec![6], rot90),
            (8, 1, (-6i16).to_le_bytes().to_vec(), present_none),
            (
                5,
                1,
                le(&[&12u32.to_le_bytes(), &2u32.to_le_bytes()]),
                rot90,
            ),
            (
                5,
                1,
                le(&[&13u32.to_le_bytes(), &2u32.to_le_bytes()]),
                present_none,
            ),
            (
                5,
                1,
                le(&[&6u32.to_le_bytes(), &0u32.to_le_bytes()]),
                present_none,
            ),
            (
                10,
                1,
                le(&[&(-6i32).to_le_bytes(), &(-1i32).to_le_bytes()]),
                rot90,
            ),
            (11, 1, 6f32.to_le_bytes().to_vec(), rot90),
            (11, 1, 6.5f32.to_le_bytes().to_vec(), present_none),
            (12, 1, 6f64.to_le_bytes().to_vec(), rot90),
            (13, 1, 6u32.to_le_bytes().to_vec(), rot90),
            (16, 1, 6u64.to_le_bytes().to_vec(), rot90),
            (2, 2, b"6\0".to_vec(), present_none),
            (7, 1, vec![6], present_none),
            // Several values: the first, inline or after the IFD.
            (3, 2, le(&[&6u16.to_le_bytes(), &3u16.to_le_bytes()]), rot90),
            (
                3,
                3,
                le(&[
                    &6u16.to_le_bytes(),
                    &3u16.to_le_bytes(),
                    &1u16.to_le_bytes(),
                ]),
                rot90,
            ),
            // No value, or a type Pillow does not load: no tag.
            (3, 0, vec![], None),
            (14, 1, 6u32.to_le_bytes().to_vec(), None),
        ];
        for (kind, count, value, want) in cases {
            assert_eq!(
                orientation_tag(&entry(false, kind, count, &value)),
                want,
                "type {kind} count {count} {value:?}"
            );
        }
        // Big-endian rational.
        let be = [12u32.to_be_bytes(), 2u32.to_be_bytes()].concat();
        assert_eq!(orientation_tag(&entry(true, 5, 1, &be)), rot90);
        // A value whose offset points outside the block: no tag.
        let mut out = entry(false, 3, 3, &[6, 0, 3, 0, 1, 0]);
        out[30..34].copy_from_slice(&1000u32.to_le_bytes());
        assert_eq!(orientation_tag(&out), None);
    }

    #[test]
    fn out_of_range_values_and_bad_blocks_are_no_orientation() {
        assert_eq!(orientation_tag(&tiff(false, 3, 0)), Some(None));
        assert_eq!(orientation_tag(&tiff(false, 3, 9)), Some(None));
        assert_eq!(orientation_tag(&tiff(true, 4, 0x0100_0006)), Some(None));
        let good = tiff(false, 3, 3);
        for cut in 0..good.len() {
            // Cut anywhere before the SHORT value (bytes 30..32) ends:
            // nothing, and no panic.
            let want = (cut >= 32).then_some(Some(Orientation::Rotate180));
            assert_eq!(orientation_tag(&good[..cut]), want, "cut {cut}");
        }
        assert_eq!(orientation_tag(b"XX*\0\0\0\0\0"), None);
        let mut far = good.clone();
        far[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(orientation_tag(&far), None);
        // No orientation entry at all.
        let mut other = good.clone();
        other[22..24].copy_from_slice(&0x0113u16.to_le_bytes());
        assert_eq!(orientation_tag(&other), None);
    }

    #[test]
    fn imagemagick_raw_profiles_are_read_as_hexadecimal_lines() {
        use super::super::png_text::tests::{chunk, zlib};
        let block = tiff(false, 3, 6);
        let mut hex: String = "457869660000".into();
        for b in &block {
            hex.push_str(&format!("{b:02x}"));
        }
        let lines: Vec<&str> = hex
            .as_bytes()
            .chunks(20)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect();
        let text = format!("\nexif\n{:8}\n{}\n", block.len() + 6, lines.join("\n"));
        let mut data = b"Raw profile type exif\0\0".to_vec();
        data.extend(zlib(text.as_bytes()));
        let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
        png.extend(chunk(b"zTXt", &data));
        let read = png_raw_profile(&png).unwrap();
        assert_eq!(read[6..], block[..]);
        assert_eq!(orientation_tag(&read), Some(Some(Orientation::Rotate90)));
        // Not hexadecimal, or an odd number of digits: nothing.
        for bad in ["\nexif\n 4\n4578zz\n", "\nexif\n 4\n457\n"] {
            let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
            let mut data = b"Raw profile type exif\0".to_vec();
            data.extend_from_slice(bad.as_bytes());
            png.extend(chunk(b"tEXt", &data));
            assert_eq!(png_raw_profile(&png), None, "{bad:?}");
        }
    }

    fn png_chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
        let mut c = (data.len() as u32).to_be_bytes().to_vec();
        c.extend_from_slice(kind);
        c.extend_from_slice(data);
        c.extend_from_slice(&[0; 4]); // the CRC is not read here
        c
    }

    #[test]
    fn finds_the_first_png_exif_chunk_before_or_after_the_pixels() {
        let block = tiff(false, 3, 8);
        let other = tiff(false, 3, 3);
        let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
        png.extend(png_chunk(b"IHDR", &[0; 13]));
        png.extend(png_chunk(b"IDAT", &[1, 2, 3]));
        png.extend(png_chunk(b"eXIf", &block));
        png.extend(png_chunk(b"eXIf", &other));
        png.extend(png_chunk(b"IEND", &[]));
        assert_eq!(png_block(&png), Some(&block[..]));
        // Truncated inside the chunk: nothing.
        assert_eq!(png_block(&png[..8 + 25 + 15 + 20]), None);
    }

    #[test]
    fn finds_the_webp_exif_chunk_past_odd_sized_chunks() {
        let block = tiff(true, 3, 6);
        let mut body = b"WEBP".to_vec();
        body.extend_from_slice(b"VP8X");
        body.extend_from_slice(&10u32.to_le_bytes());
        body.extend_from_slice(&[0; 10]);
        body.extend_from_slice(b"ICCP");
        body.extend_from_slice(&3u32.to_le_bytes());
        body.extend_from_slice(&[1, 2, 3, 0]); // odd size, one pad byte
        body.extend_from_slice(b"EXIF");
        body.extend_from_slice(&(block.len() as u32).to_le_bytes());
        body.extend_from_slice(&block);
        let mut webp = b"RIFF".to_vec();
        webp.extend_from_slice(&(body.len() as u32).to_le_bytes());
        webp.extend_from_slice(&body);
        assert_eq!(webp_chunk(&webp, b"EXIF"), Some(&block[..]));
        assert_eq!(webp_chunk(&webp, b"XMP "), None);
        assert_eq!(webp_chunk(&webp[..webp.len() - 1], b"EXIF"), None);
    }
}
