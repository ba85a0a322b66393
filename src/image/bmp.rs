//! BMP headers the `image` crate's decoder refuses but Pillow reads,
//! rewritten into the form that decoder reads: OS/2 2.x bitmaps, a planes
//! field other than 1, a palette longer than the bit depth can index.
//!
//! Invariants: an OS/2 2.x info header (64 bytes) starts with the same 40
//! bytes as Windows' BITMAPINFOHEADER and its palette entries are 4 bytes
//! as in Windows, so dropping the 24 OS/2-only bytes (units, halftoning,
//! colour encoding: none change the pixels) and moving the pixel offset
//! gives the same image. Only compression differs: OS/2's 3 and 4 are
//! Huffman 1D and RLE24, not Windows' bitfields and JPEG, and are refused.
//! Pillow never reads the planes field, and of a palette of up to 256
//! entries it uses only those the pixels can index, reading the pixels
//! from the file's pixel offset as the crate does: setting planes to 1 and
//! the colours used to what the bit depth indexes changes no pixel.
//! Every other file is returned untouched.

use std::borrow::Cow;

use super::decode::ImageError;

const FILE_HEADER: usize = 14;
const OS2_V2: usize = 64;
const WINDOWS_INFO: usize = 40;

/// The little-endian u32 at `at`, if the bytes reach that far.
pub(super) fn le_u32(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        bytes.get(at..at.checked_add(4)?)?.try_into().ok()?,
    ))
}

/// The little-endian u16 at `at`, if the bytes reach that far.
pub(super) fn le_u16(bytes: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(
        bytes.get(at..at.checked_add(2)?)?.try_into().ok()?,
    ))
}

/// `bytes` with an OS/2 2.x header replaced by a Windows one.
pub(crate) fn with_windows_header(bytes: &[u8]) -> Result<Cow<'_, [u8]>, ImageError> {
    let u32_at = |at: usize| le_u32(bytes, at);
    if u32_at(FILE_HEADER) != Some(OS2_V2 as u32) || bytes.len() < FILE_HEADER + OS2_V2 {
        return Ok(Cow::Borrowed(bytes));
    }
    let shrink = (OS2_V2 - WINDOWS_INFO) as u32;
    match u32_at(FILE_HEADER + 16) {
        Some(3) => return Err(unsupported("Huffman 1D")),
        Some(4) => return Err(unsupported("RLE24")),
        _ => {}
    }
    // A pixel offset inside the header is the decoder's to reject.
    let offset = match u32_at(10).and_then(|o| o.checked_sub(shrink)) {
        Some(o) if o as usize >= FILE_HEADER + WINDOWS_INFO => o,
        _ => return Ok(Cow::Borrowed(bytes)),
    };
    let mut out = Vec::with_capacity(bytes.len() - OS2_V2 + WINDOWS_INFO);
    out.extend_from_slice(&bytes[..FILE_HEADER + WINDOWS_INFO]);
    out.extend_from_slice(&bytes[FILE_HEADER + OS2_V2..]);
    let size = u32_at(2).unwrap_or(0).saturating_sub(shrink);
    out[2..6].copy_from_slice(&size.to_le_bytes());
    out[10..14].copy_from_slice(&offset.to_le_bytes());
    out[FILE_HEADER..FILE_HEADER + 4].copy_from_slice(&(WINDOWS_INFO as u32).to_le_bytes());
    Ok(Cow::Owned(out))
}

/// `bytes` with a planes field other than 1 set to 1, and a count of
/// colours used above what the bit depth indexes (at most 256, which
/// Pillow reads) cut to that.
pub(crate) fn with_readable_fields(bytes: &[u8]) -> Cow<'_, [u8]> {
    let Some(header) = le_u32(bytes, FILE_HEADER) else {
        return Cow::Borrowed(bytes);
    };
    // The core header (12 bytes) has 16-bit sizes, so its fields sit
    // earlier; it has no count of colours.
    let (planes_at, bits_at) = if header == 12 { (22, 24) } else { (26, 28) };
    let colours_at = (header as usize >= WINDOWS_INFO).then_some(46);
    let planes = le_u16(bytes, planes_at);
    let bits = le_u16(bytes, bits_at).unwrap_or(0);
    let colours = colours_at.and_then(|at| le_u32(bytes, at));
    let indexable = (bits <= 8).then(|| 1u32 << bits);
    let cut_colours = matches!((colours, indexable), (Some(c), Some(n)) if c > n && c <= 256);
    if planes.is_none_or(|p| p == 1) && !cut_colours {
        return Cow::Borrowed(bytes);
    }
    let mut out = bytes.to_vec();
    out[planes_at..planes_at + 2].copy_from_slice(&1u16.to_le_bytes());
    if let (true, Some(at), Some(n)) = (cut_colours, colours_at, indexable) {
        out[at..at + 4].copy_from_slice(&n.to_le_bytes());
    }
    Cow::Owned(out)
}

fn unsupported(compression: &str) -> ImageError {
    ImageError::Unsupported(format!("OS/2 bmp with {compression} compression"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::{decode_rgb8, DecodeLimits};

    /// A bottom-up OS/2 2.x bitmap, `bits` 24 (BGR) or 8 (4-entry palette,
    /// BGR0), rows padded to 4 bytes, written by hand from `px` (RGB, top
    /// row first).
    fn os2(w: u32, h: u32, bits: u16, px: &[[u8; 3]], palette: &[[u8; 3]]) -> Vec<u8> {
        let mut info = Vec::new();
        info.extend_from_slice(&(OS2_V2 as u32).to_le_bytes());
        info.extend_from_slice(&w.to_le_bytes());
        info.extend_from_slice(&h.to_le_bytes());
        info.extend_from_slice(&1u16.to_le_bytes());
        info.extend_from_slice(&bits.to_le_bytes());
        info.extend_from_slice(&0u32.to_le_bytes()); // compression
        info.resize(OS2_V2, 0);
        if bits == 8 {
            info[32..36].copy_from_slice(&(palette.len() as u32).to_le_bytes());
            // colours used
        }
        // The OS/2-only tail: units, reserved, recording, rendering,
        // size1, size2, colour encoding, identifier.
        info[40..42].copy_from_slice(&0u16.to_le_bytes());
        info[60..64].copy_from_slice(&0xDEAD_BEEFu32.to_le_bytes());
        let mut pal = Vec::new();
        if bits == 8 {
            for c in palette {
                pal.extend_from_slice(&[c[2], c[1], c[0], 0]);
            }
        }
        let mut data = Vec::new();
        for y in (0..h).rev() {
            let start = data.len();
            for x in 0..w {
                let c = px[(y * w + x) as usize];
                if bits == 24 {
                    data.extend_from_slice(&[c[2], c[1], c[0]]);
                } else {
                    data.push(palette.iter().position(|p| *p == c).unwrap() as u8);
                }
            }
            while (data.len() - start) % 4 != 0 {
                data.push(0);
            }
        }
        let offset = (FILE_HEADER + OS2_V2 + pal.len()) as u32;
        let mut b = b"BM".to_vec();
        b.extend_from_slice(&(offset + data.len() as u32).to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes());
        b.extend_from_slice(&offset.to_le_bytes());
        b.extend(info);
        b.extend(pal);
        b.extend(data);
        b
    }

    const PALETTE: [[u8; 3]; 4] = [[250, 0, 0], [0, 250, 0], [0, 0, 250], [70, 80, 90]];

    #[test]
    fn os2_bitmaps_decode_to_their_pixels() {
        let (w, h) = (5u32, 3u32);
        let px: Vec<[u8; 3]> = (0..w * h).map(|i| PALETTE[(i * 7 % 4) as usize]).collect();
        for bits in [24u16, 8] {
            let b = os2(w, h, bits, &px, &PALETTE);
            let img = decode_rgb8(&b, DecodeLimits::default()).unwrap();
            assert_eq!((img.width, img.height), (w, h), "{bits} bits");
            assert_eq!(img.data, px.concat(), "{bits} bits");
        }
    }

    #[test]
    fn os2_only_compressions_are_unsupported_and_other_files_untouched() {
        let px = [[1u8, 2, 3]; 4];
        let mut b = os2(2, 2, 24, &px, &PALETTE);
        b[FILE_HEADER + 16] = 3;
        let err = decode_rgb8(&b, DecodeLimits::default()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "unsupported image format: OS/2 bmp with Huffman 1D compression"
        );
        b[FILE_HEADER + 16] = 4;
        assert!(with_windows_header(&b).is_err());
        let mut windows = os2(2, 2, 24, &px, &PALETTE);
        windows[FILE_HEADER] = 124;
        assert!(matches!(
            with_windows_header(&windows),
            Ok(Cow::Borrowed(_))
        ));
        // Cut inside the header: left to the decoder, which rejects it.
        let b = os2(2, 2, 24, &px, &PALETTE);
        assert!(matches!(
            with_windows_header(&b[..40]),
            Ok(Cow::Borrowed(_))
        ));
        assert!(decode_rgb8(&b[..40], DecodeLimits::default()).is_err());
    }

    #[test]
    fn planes_and_long_palettes_read_as_pillow_reads_them() {
        let px: Vec<[u8; 3]> = (0..6).map(|i| PALETTE[i % 4]).collect();
        let os2_file = os2(3, 2, 8, &px, &PALETTE);
        let windows = with_windows_header(&os2_file).unwrap().into_owned();
        let want = decode_rgb8(&windows, DecodeLimits::default()).unwrap();
        assert!(matches!(with_readable_fields(&windows), Cow::Borrowed(_)));
        let mut zero_planes = windows.clone();
        zero_planes[26] = 0;
        let mut two_planes = windows.clone();
        two_planes[26] = 2;
        for file in [zero_planes, two_planes] {
            assert_eq!(decode_rgb8(&file, DecodeLimits::default()).unwrap(), want);
        }
        // A 2-bit-deep picture is not at hand: an 8-bit one claiming 257
        // colours is left to the decoder (Pillow refuses it too), one whose
        // 4 entries are followed by the pixels decodes when cut to 256.
        let mut too_many = windows.clone();
        too_many[46..50].copy_from_slice(&257u32.to_le_bytes());
        assert!(matches!(with_readable_fields(&too_many), Cow::Borrowed(_)));
        let mut one_bit = windows.clone();
        one_bit[28] = 1;
        one_bit[46..50].copy_from_slice(&4u32.to_le_bytes());
        let fixed = with_readable_fields(&one_bit);
        assert_eq!(&fixed[46..50], &2u32.to_le_bytes());
        assert!(decode_rgb8(&one_bit, DecodeLimits::default()).is_ok());
    }
}
