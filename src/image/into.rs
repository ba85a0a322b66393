//! Decoding a JPEG into a caller-owned, reused buffer (the loader's hot
//! path): no per-image output allocation, bytes read straight from the
//! caller's slice (a memory-mapped shard).
//!
//! Invariant: the output is the same RGB8 that [`super::decode_rgb8`] gives
//! for the same bytes; images it cannot handle directly (non-JPEG bytes, a
//! non-trivial EXIF orientation) go through `decode_rgb8` and are copied.

use zune_core::bytestream::ZCursor;
use zune_core::colorspace::ColorSpace;
use zune_core::options::DecoderOptions;

use super::decode::{decode_rgb8, DecodeLimits, ImageError};
use super::format::ImageFormat;

/// Decode `bytes` into `out` (resized to width·height·3) and return
/// (width, height).
pub fn decode_rgb8_into(
    bytes: &[u8],
    limits: DecodeLimits,
    out: &mut Vec<u8>,
) -> Result<(u32, u32), ImageError> {
    let corrupt = |detail: String| ImageError::Corrupt {
        format: ImageFormat::Jpeg,
        detail,
    };
    let fallback = |out: &mut Vec<u8>| -> Result<(u32, u32), ImageError> {
        let img = decode_rgb8(bytes, limits)?;
        out.clear();
        out.extend_from_slice(&img.data);
        Ok((img.width, img.height))
    };
    if !bytes.starts_with(&[0xFF, 0xD8]) {
        return fallback(out);
    }
    // zune-jpeg pads a cut-short scan with grey instead of failing.
    if !super::jpeg::ends_with_eoi(bytes) {
        return Err(corrupt("truncated (no end-of-image marker)".into()));
    }
    let options = DecoderOptions::default()
        .set_strict_mode(true)
        .set_max_width(usize::MAX)
        .set_max_height(usize::MAX)
        .jpeg_set_out_colorspace(ColorSpace::RGB);
    let mut decoder = zune_jpeg::JpegDecoder::new_with_options(ZCursor::new(bytes), options);
    decoder
        .decode_headers()
        .map_err(|e| corrupt(e.to_string()))?;
    let (w, h) = decoder
        .dimensions()
        .ok_or_else(|| corrupt("no frame header".into()))?;
    let (width, height) = (w as u32, h as u32);
    if width == 0 || height == 0 {
        return Err(corrupt("zero-sized image".into()));
    }
    if u64::from(width) * u64::from(height) > limits.max_pixels {
        return Err(ImageError::TooLarge {
            width,
            height,
            limit: limits.max_pixels,
        });
    }
    let oriented = decoder
        .exif()
        .and_then(|exif| ::image::metadata::Orientation::from_exif_chunk(exif))
        .is_some_and(|o| o != ::image::metadata::Orientation::NoTransforms);
    if oriented {
        return fallback(out);
    }
    // Resizing a reused Vec keeps its allocation; only a larger image than
    // any before grows it.
    out.resize(width as usize * height as usize * 3, 0);
    decoder
        .decode_into(out)
        .map_err(|e| corrupt(e.to_string()))?;
    Ok((width, height))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_pixels_as_decode_rgb8() {
        let w = 20u32;
        let h = 12u32;
        let px: Vec<u8> = (0..w * h * 3).map(|i| (i * 7 % 251) as u8).collect();
        let mut jpg = Vec::new();
        jpeg_encoder::Encoder::new(&mut jpg, 90)
            .encode(&px, w as u16, h as u16, jpeg_encoder::ColorType::Rgb)
            .unwrap();
        let want = decode_rgb8(&jpg, DecodeLimits::default()).unwrap();
        let mut out = vec![9u8; 5];
        let (gw, gh) = decode_rgb8_into(&jpg, DecodeLimits::default(), &mut out).unwrap();
        assert_eq!((gw, gh), (w, h));
        assert_eq!(out, want.data);
        let cut = &jpg[..jpg.len() - 10];
        assert!(decode_rgb8_into(cut, DecodeLimits::default(), &mut out).is_err());
    }
}
