//! The RIFF container of a WebP file, checked the way libwebp checks it
//! before the `image` crate's decoder sees the bytes.
//!
//! Why: that decoder reads each chunk by its own size, without holding it
//! to the RIFF size or to the end of the file, and lossy (VP8) data has no
//! checksum: a file that lost one byte in the middle decodes to shifted,
//! wrong pixels, where libwebp (Pillow, the browsers) refuses it as
//! truncated. A wrong pixel stored is worse than an image rejected.
//!
//! Invariants: bytes pass only when the RIFF size covers "WEBP" and one
//! chunk header, the file holds every byte the RIFF size claims (bytes past
//! it are not the image's: they are cut off, as libwebp ignores them), and
//! the chunks, walked by their sizes from the first, stay inside the RIFF
//! (all of them in the extended format; the image chunk of a simple file).
//! A still, lossy extended file whose header flags alpha but holds no ALPH
//! chunk is decoded opaque, as libwebp does (the flag is cleared in a
//! copy); nothing else is changed.

use std::borrow::Cow;

/// "RIFF", its size, "WEBP".
const RIFF_HEADER: usize = 12;
/// A chunk's tag and size.
const CHUNK_HEADER: usize = 8;
/// The VP8X header flags: alpha and animation.
const ALPHA_FLAG: u8 = 0x10;
const ANIMATION_FLAG: u8 = 0x02;

/// Why a WebP container is refused: damage, or a file that ends early.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Fault {
    Corrupt(String),
    Truncated,
}

/// `bytes` cut at the RIFF's end (with a dangling alpha flag cleared), or
/// why the container is broken.
pub(crate) fn checked(bytes: &[u8]) -> Result<Cow<'_, [u8]>, Fault> {
    let Some(riff_size) = le32(bytes, 4) else {
        return Err(Fault::Truncated);
    };
    if riff_size < RIFF_HEADER - 8 + CHUNK_HEADER {
        return Err(Fault::Corrupt(format!(
            "RIFF size {riff_size} leaves no room for a chunk"
        )));
    }
    let end = riff_size.saturating_add(8);
    if end > bytes.len() {
        return Err(Fault::Truncated);
    }
    let bytes = &bytes[..end];
    let mut pos = RIFF_HEADER;
    let first = &bytes[pos..pos + 4];
    let extended = first == b"VP8X";
    let (mut alpha_chunk, mut lossy, mut flags_at) = (false, false, None);
    while pos < end {
        let (Some(tag), Some(len)) = (bytes.get(pos..pos + 4), le32(bytes, pos + 4)) else {
            return Err(Fault::Corrupt(format!(
                "{} bytes after the last chunk, too few for another",
                end - pos
            )));
        };
        let data_end = (pos + CHUNK_HEADER).saturating_add(len);
        if data_end > end {
            return Err(Fault::Corrupt(format!(
                "chunk {} of {len} bytes runs past the RIFF's end",
                String::from_utf8_lossy(tag)
            )));
        }
        match tag {
            b"VP8X" if pos == RIFF_HEADER && len >= 1 => flags_at = Some(pos + CHUNK_HEADER),
            b"ALPH" => alpha_chunk = true,
            b"VP8 " => lossy = true,
            _ => {}
        }
        if !extended {
            // libwebp reads a simple file's first chunk and nothing after.
            break;
        }
        // Chunks are padded to an even length; a missing last pad byte
        // loses nothing.
        pos = data_end + (len & 1);
    }
    if let Some(at) = flags_at {
        let flags = bytes[at];
        if flags & ALPHA_FLAG != 0 && flags & ANIMATION_FLAG == 0 && lossy && !alpha_chunk {
            let mut copy = bytes.to_vec();
            copy[at] &= !ALPHA_FLAG;
            return Ok(Cow::Owned(copy));
        }
    }
    Ok(Cow::Borrowed(bytes))
}

fn le32(bytes: &[u8], at: usize) -> Option<usize> {
    let b = bytes.get(at..at.checked_add(4)?)?;
    usize::try_from(u32::from_le_bytes([b[0], b[1], b[2], b[3]])).ok()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::image::{decode_rgb8, DecodeLimits, ImageError, ImageFormat};

    fn picture() -> Vec<u8> {
        (0..23 * 17 * 3).map(|i| (i * 29 % 251) as u8).collect()
    }

    fn lossless() -> Vec<u8> {
        let mut out = Vec::new();
        ::image::codecs::webp::WebPEncoder::new_lossless(&mut out)
            .encode(&picture(), 23, 17, ::image::ExtendedColorType::Rgb8)
            .unwrap();
        out
    }

    /// A WebP file of `chunks` (tag, payload), each padded to an even
    /// length, written by hand.
    pub(crate) fn riff(chunks: &[(&[u8; 4], &[u8])]) -> Vec<u8> {
        let mut body = b"WEBP".to_vec();
        for (tag, data) in chunks {
            body.extend_from_slice(*tag);
            body.extend_from_slice(&(data.len() as u32).to_le_bytes());
            body.extend_from_slice(data);
            if data.len() % 2 == 1 {
                body.push(0);
            }
        }
        let mut out = b"RIFF".to_vec();
        out.extend_from_slice(&(body.len() as u32).to_le_bytes());
        out.extend_from_slice(&body);
        out
    }

    #[test]
    fn a_whole_file_passes_untouched_and_trailing_bytes_are_cut() {
        let file = lossless();
        assert!(matches!(checked(&file), Ok(Cow::Borrowed(b)) if b == &file[..]));
        let mut longer = file.clone();
        longer.extend_from_slice(b"trailing junk");
        assert_eq!(checked(&longer).unwrap().as_ref(), &file[..]);
        let want = decode_rgb8(&file, DecodeLimits::default()).unwrap();
        assert_eq!(
            decode_rgb8(&longer, DecodeLimits::default()).unwrap().data,
            want.data
        );
    }

    #[test]
    fn a_byte_lost_anywhere_is_a_truncated_file() {
        let file = lossless();
        for at in [0, 5, 12, 20, file.len() / 2, file.len() - 1] {
            let mut short = file.clone();
            short.remove(at);
            if short.starts_with(b"RIFF") && &short[8..12] == b"WEBP" {
                assert_eq!(checked(&short), Err(Fault::Truncated), "byte {at} removed");
            }
        }
        // Through the decoder: a truncated WebP, named as such.
        let cut = &file[..file.len() - 3];
        match decode_rgb8(cut, DecodeLimits::default()) {
            Err(ImageError::Corrupt { format, detail }) => {
                assert_eq!(format, ImageFormat::Webp);
                assert!(detail.contains("truncated"), "{detail}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn chunk_sizes_must_stay_inside_the_riff() {
        let file = riff(&[(b"VP8 ", &[0u8; 11])]);
        assert!(checked(&file).is_ok());
        let mut long = file.clone();
        long[16] = 13; // the VP8 chunk claims 13 bytes; the RIFF holds 12
        assert!(matches!(checked(&long), Err(Fault::Corrupt(why)) if why.contains("VP8 ")));
        let mut small = file.clone();
        small[4..8].copy_from_slice(&4u32.to_le_bytes());
        assert!(matches!(checked(&small), Err(Fault::Corrupt(why)) if why.contains("RIFF size 4")));
        // Extended: every chunk is walked; a stray tail is damage.
        let mut vp8x = [0u8; 10];
        vp8x[0] = 0;
        let ext = riff(&[(b"VP8X", &vp8x), (b"VP8 ", &[0u8; 11])]);
        assert!(checked(&ext).is_ok());
        let mut tail = ext.clone();
        tail.extend_from_slice(&[1, 2, 3]);
        let riff_size = (tail.len() - 8) as u32;
        tail[4..8].copy_from_slice(&riff_size.to_le_bytes());
        assert!(matches!(checked(&tail), Err(Fault::Corrupt(why)) if why.contains("3 bytes")));
        // A missing pad byte after the last chunk loses nothing.
        let mut unpadded = ext.clone();
        unpadded.pop();
        let riff_size = (unpadded.len() - 8) as u32;
        unpadded[4..8].copy_from_slice(&riff_size.to_le_bytes());
        assert!(checked(&unpadded).is_ok());
    }

    #[test]
    fn an_alpha_flag_without_alpha_data_is_cleared_for_lossy_stills_only() {
        let flags = |f: u8| {
            let mut v = [0u8; 10];
            v[0] = f;
            v
        };
        let dangling = riff(&[(b"VP8X", &flags(ALPHA_FLAG)), (b"VP8 ", &[0u8; 11])]);
        let fixed = checked(&dangling).unwrap();
        assert_eq!(fixed[20], 0);
        assert_eq!(fixed[..20], dangling[..20]);
        assert_eq!(fixed[21..], dangling[21..]);
        for keep in [
            riff(&[
                (b"VP8X", &flags(ALPHA_FLAG)),
                (b"ALPH", &[0u8; 3]),
                (b"VP8 ", &[0u8; 11]),
            ]),
            riff(&[(b"VP8X", &flags(ALPHA_FLAG)), (b"VP8L", &[0u8; 11])]),
            riff(&[
                (b"VP8X", &flags(ALPHA_FLAG | ANIMATION_FLAG)),
                (b"ANIM", &[0u8; 6]),
            ]),
        ] {
            assert!(matches!(checked(&keep), Ok(Cow::Borrowed(_))));
        }
    }
}
