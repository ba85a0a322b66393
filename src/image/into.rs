//! Decoding a JPEG into a caller-owned, reused buffer (the loader's hot
//! path): no per-image output allocation, bytes read straight from the
//! caller's slice (a memory-mapped shard).
//!
//! Invariant: the output is the same RGB8 that [`super::decode_rgb8`] gives
//! for the same bytes (both share one JPEG decode path); non-JPEG bytes go
//! through `decode_rgb8` and are copied.

use ::image::metadata::Orientation;

use super::decode::{
    decode_jpeg_into, decode_rgb8, guarded, orient, DecodeLimits, ImageError, Rgb8Image,
};
use super::format::{sniff_format, ImageFormat};

/// Decode `bytes` into `out` (resized to width·height·3) and return
/// (width, height).
pub fn decode_rgb8_into(
    bytes: &[u8],
    limits: DecodeLimits,
    out: &mut Vec<u8>,
) -> Result<(u32, u32), ImageError> {
    if sniff_format(bytes) != Some(ImageFormat::Jpeg) {
        let img = decode_rgb8(bytes, limits)?;
        out.clear();
        out.extend_from_slice(&img.data);
        return Ok((img.width, img.height));
    }
    // Resizing a reused Vec keeps its allocation; only a larger image than
    // any before grows it.
    let (width, height, orientation) =
        guarded(ImageFormat::Jpeg, || decode_jpeg_into(bytes, limits, out))?;
    if orientation != Orientation::NoTransforms {
        // Rare (camera photos): rotate through a temporary image.
        let image = Rgb8Image {
            width,
            height,
            data: std::mem::take(out),
        };
        let image = orient(image, orientation);
        *out = image.data;
        return Ok((image.width, image.height));
    }
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
