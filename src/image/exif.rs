//! The EXIF orientation of JPEG, PNG and WebP files, read the way Pillow's
//! `exif_transpose` reads it, so that a dataset packed here is rotated as a
//! PyTorch pipeline would rotate it.
//!
//! Invariants: the orientation comes from the *first* EXIF block of a file
//! (JPEG: the first `Exif` APP1; PNG: the first `eXIf` chunk, wherever it
//! sits; WebP: the first `EXIF` chunk), from tag 0x0112 of IFD0 written as
//! any integer type (cameras use SHORT, some tools LONG); values outside
//! 1..=8 mean "no orientation". Nothing here panics on bad bytes: a block
//! that cannot be read is no orientation.

use ::image::metadata::Orientation;

/// The `Exif\0\0` prefix of a JPEG APP1 segment, which some PNG and WebP
/// writers copy into their own EXIF blocks.
const EXIF_PREFIX: &[u8] = b"Exif\0\0";

/// Orientation from a TIFF-structured EXIF block (with or without the
/// `Exif\0\0` prefix).
pub(crate) fn orientation(block: &[u8]) -> Option<Orientation> {
    let tiff = block.strip_prefix(EXIF_PREFIX).unwrap_or(block);
    let big = match tiff.get(..4)? {
        [b'I', b'I', 42, 0] => false,
        [b'M', b'M', 0, 42] => true,
        _ => return None,
    };
    let u16_at = |at: usize| -> Option<u16> {
        let b: [u8; 2] = tiff.get(at..at + 2)?.try_into().ok()?;
        Some(if big {
            u16::from_be_bytes(b)
        } else {
            u16::from_le_bytes(b)
        })
    };
    let u32_at = |at: usize| -> Option<u32> {
        let b: [u8; 4] = tiff.get(at..at + 4)?.try_into().ok()?;
        Some(if big {
            u32::from_be_bytes(b)
        } else {
            u32::from_le_bytes(b)
        })
    };
    let ifd = usize::try_from(u32_at(4)?).ok()?;
    let entries = usize::from(u16_at(ifd)?);
    for k in 0..entries {
        let entry = ifd.checked_add(2 + 12 * k)?;
        if u16_at(entry)? != 0x0112 || u32_at(entry + 4)? == 0 {
            continue;
        }
        // A single value sits in the entry's 4-byte value field.
        let value = match u16_at(entry + 2)? {
            1 | 6 => u32::from(*tiff.get(entry + 8)?), // BYTE, SBYTE
            3 | 8 => u32::from(u16_at(entry + 8)?),    // SHORT, SSHORT
            4 | 9 => u32_at(entry + 8)?,               // LONG, SLONG
            _ => return None,
        };
        return u8::try_from(value).ok().and_then(Orientation::from_exif);
    }
    None
}

/// The first `eXIf` chunk of a PNG. The chunk may follow the image data,
/// where a decoder that stops reading at the pixels never sees it.
pub(crate) fn png_block(bytes: &[u8]) -> Option<&[u8]> {
    let mut pos = 8;
    loop {
        let len = usize::try_from(u32::from_be_bytes(
            bytes.get(pos..pos + 4)?.try_into().ok()?,
        ))
        .ok()?;
        let kind = bytes.get(pos + 4..pos + 8)?;
        let data = bytes.get(pos + 8..(pos + 8).checked_add(len)?)?;
        match kind {
            b"eXIf" => return Some(data),
            b"IEND" => return None,
            _ => pos += 12 + len,
        }
    }
}

/// The first `EXIF` chunk of a WebP (RIFF) file.
pub(crate) fn webp_block(bytes: &[u8]) -> Option<&[u8]> {
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
        if kind == b"EXIF" {
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

    #[test]
    fn reads_every_integer_type_in_both_byte_orders() {
        for big in [false, true] {
            for kind in [1u16, 3, 4, 6, 8, 9] {
                let block = tiff(big, kind, 6);
                assert_eq!(
                    orientation(&block),
                    Some(Orientation::Rotate90),
                    "big {big} type {kind}"
                );
                let mut prefixed = EXIF_PREFIX.to_vec();
                prefixed.extend_from_slice(&block);
                assert_eq!(orientation(&prefixed), Some(Orientation::Rotate90));
            }
        }
        // Type RATIONAL (5) is no orientation.
        assert_eq!(orientation(&tiff(false, 5, 6)), None);
    }

    #[test]
    fn out_of_range_values_and_bad_blocks_are_no_orientation() {
        assert_eq!(orientation(&tiff(false, 3, 0)), None);
        assert_eq!(orientation(&tiff(false, 3, 9)), None);
        assert_eq!(orientation(&tiff(true, 4, 0x0100_0006)), None);
        let good = tiff(false, 3, 3);
        for cut in 0..good.len() - 4 {
            // Cut anywhere before the value: nothing, and no panic.
            let _ = orientation(&good[..cut]);
        }
        assert_eq!(orientation(b"XX*\0\0\0\0\0"), None);
        let mut far = good.clone();
        far[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(orientation(&far), None);
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
        assert_eq!(webp_block(&webp), Some(&block[..]));
        assert_eq!(webp_block(&webp[..webp.len() - 1]), None);
    }
}
