//! The chunk structure of PNG files: the chunks in file order (read by the
//! EXIF and text lookups), and, for files that end after their last whole
//! chunk without an IEND chunk, the IEND the `image` crate's decoder
//! insists on.
//!
//! Invariants: only a file whose chunks, walked from the signature by their
//! lengths, end exactly at the end of the bytes, with at least one IDAT and
//! no IEND, is changed, and only by appending IEND; Pillow reads such files
//! (it stops at the end of the data). A file cut inside a chunk is left as
//! it is, for the decoder to reject as truncated: as Pillow does when the
//! cut is in the pixel data (Pillow also reads a file cut inside only the
//! last IDAT's CRC; here that stays an error). Every other file is
//! returned untouched.

use std::borrow::Cow;

const SIGNATURE: usize = 8;
/// Length, type and CRC around a chunk's data.
const CHUNK_OVERHEAD: usize = 12;
const IEND: [u8; 12] = [0, 0, 0, 0, b'I', b'E', b'N', b'D', 0xAE, 0x42, 0x60, 0x82];

/// The chunks of a PNG as (type, data), in file order, from the one after
/// the signature up to IEND or to the first chunk that runs past the end of
/// the bytes. CRCs are not checked (the pixel decoder does).
pub(crate) fn chunks(bytes: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    let mut pos = SIGNATURE;
    std::iter::from_fn(move || {
        let head = bytes.get(pos..pos + 8)?;
        let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
        let kind = &head[4..8];
        let data = bytes.get(pos + 8..(pos + 8).checked_add(len)?)?;
        if kind == b"IEND" {
            return None;
        }
        pos += CHUNK_OVERHEAD + len;
        Some((kind, data))
    })
}

/// `bytes`, with IEND appended when only IEND is missing.
pub(crate) fn with_iend(bytes: &[u8]) -> Cow<'_, [u8]> {
    let mut pos = SIGNATURE;
    let mut idat = false;
    while pos < bytes.len() {
        let Some(head) = bytes.get(pos..pos + 8) else {
            return Cow::Borrowed(bytes);
        };
        let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
        match &head[4..8] {
            b"IEND" => return Cow::Borrowed(bytes),
            b"IDAT" => idat = true,
            _ => {}
        }
        pos = match len
            .checked_add(CHUNK_OVERHEAD)
            .and_then(|n| pos.checked_add(n))
        {
            Some(end) if end <= bytes.len() => end,
            _ => return Cow::Borrowed(bytes),
        };
    }
    if pos != bytes.len() || !idat {
        return Cow::Borrowed(bytes);
    }
    let mut out = Vec::with_capacity(bytes.len() + IEND.len());
    out.extend_from_slice(bytes);
    out.extend_from_slice(&IEND);
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::decode_rgb8;

    fn png(w: u32, h: u32) -> Vec<u8> {
        let px: Vec<u8> = (0..w * h * 3).map(|i| (i * 7 % 251) as u8).collect();
        let mut out = Vec::new();
        ::image::ImageEncoder::write_image(
            ::image::codecs::png::PngEncoder::new(&mut out),
            &px,
            w,
            h,
            ::image::ExtendedColorType::Rgb8,
        )
        .unwrap();
        out
    }

    #[test]
    fn only_a_missing_iend_is_supplied() {
        let whole = png(13, 7);
        assert_eq!(
            &whole[whole.len() - 12..],
            &IEND,
            "the encoder's IEND is ours"
        );
        let want = decode_rgb8(&whole, Default::default()).unwrap();
        assert!(matches!(with_iend(&whole), Cow::Borrowed(_)));

        let cut = &whole[..whole.len() - 12];
        assert!(matches!(with_iend(cut), Cow::Owned(ref v) if v[..] == whole[..]));
        assert_eq!(decode_rgb8(cut, Default::default()).unwrap(), want);

        // Cut inside a chunk: left to the decoder, which rejects a cut in
        // the pixel data.
        let idat = whole.windows(4).position(|w| w == b"IDAT").unwrap();
        for end in [idat + 6, whole.len() - 13] {
            assert!(
                matches!(with_iend(&whole[..end]), Cow::Borrowed(_)),
                "{end}"
            );
            assert!(
                decode_rgb8(&whole[..end], Default::default()).is_err(),
                "{end}"
            );
        }
        assert!(matches!(
            with_iend(&whole[..whole.len() - 5]),
            Cow::Borrowed(_)
        ));
        // No pixel data at all: nothing to supply IEND for.
        assert!(matches!(with_iend(&whole[..idat - 4]), Cow::Borrowed(_)));
        // A length that runs past the end or overflows.
        let mut huge = cut.to_vec();
        huge.extend_from_slice(&[0xFF, 0xFF, 0xFF, 0xF8, b't', b'E', b'X', b't']);
        assert!(matches!(with_iend(&huge), Cow::Borrowed(_)));
    }
}
