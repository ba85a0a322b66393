//! What a JPEG's markers say (without decoding) and JPEG encoding.
//!
//! The packer stores a source JPEG untouched when it is already the target
//! size, in colour, upright and structurally whole; [`JpegHeader`] answers
//! that from the markers alone ([`super::jpeg_stream::walk`]), which costs
//! microseconds instead of the ~0.2 ms a full decode of a 224×224 image
//! takes.

use ::image::metadata::Orientation;

use super::decode::ImageError;
use super::format::ImageFormat;
use super::jpeg_stream::{walk, Fault};

/// What the markers of a JPEG stream say, read without decoding the scans.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JpegHeader {
    pub width: u32,
    pub height: u32,
    /// Number of colour components: 1 (gray), 3 (YCbCr/RGB), 4 (CMYK/YCCK).
    pub components: u8,
    pub progressive: bool,
    /// EXIF orientation; `NoTransforms` when absent.
    pub orientation: Orientation,
    /// Whether a strict reader takes the bytes as they are: no bytes
    /// between segments, every Huffman table defined, sequential scans
    /// with the standard parameters (libjpeg reads such files with a
    /// warning or its default tables; they are decoded and re-encoded).
    pub clean: bool,
}

impl JpegHeader {
    /// Walks the markers and scans of `bytes` to the end of the image; an
    /// error is the reason the image is rejected.
    pub fn parse(bytes: &[u8]) -> Result<JpegHeader, ImageError> {
        let w = walk(bytes).map_err(fault_error)?;
        Ok(JpegHeader {
            width: w.width,
            height: w.height,
            components: w.components.len() as u8,
            progressive: w.progressive,
            orientation: w.orientation,
            clean: w.clean(),
        })
    }

    /// Whether a decoder would show these bytes, as they are, as a
    /// `width`×`height` upright 8-bit colour image (only 8-bit
    /// Huffman-coded frames with a whole structure parse at all).
    pub fn is_passthrough(&self, width: u32, height: u32) -> bool {
        self.width == width
            && self.height == height
            && self.components == 3
            && self.orientation == Orientation::NoTransforms
            && self.clean
    }
}

/// The rejection reason of a stream the walk refused.
pub(crate) fn fault_error(f: Fault) -> ImageError {
    match f {
        Fault::Unsupported(what) => ImageError::Unsupported(what),
        other => ImageError::Corrupt {
            format: ImageFormat::Jpeg,
            detail: other.to_string(),
        },
    }
}

/// Encode tightly packed RGB8 pixels as a baseline JPEG (4:2:0, like
/// libjpeg's and Pillow's defaults) at `quality` (1–100).
pub fn encode_jpeg(rgb: &[u8], width: u32, height: u32, quality: u8) -> Result<Vec<u8>, String> {
    let (w, h) = match (u16::try_from(width), u16::try_from(height)) {
        (Ok(w), Ok(h)) => (w, h),
        _ => return Err(format!("{width}x{height} is too large for JPEG")),
    };
    let mut out = Vec::with_capacity(rgb.len() / 6);
    let encoder = jpeg_encoder::Encoder::new(&mut out, quality.clamp(1, 100));
    encoder
        .encode(rgb, w, h, jpeg_encoder::ColorType::Rgb)
        .map_err(|e| e.to_string())?;
    Ok(out)
}

/// A smooth RGB8 test image whose three channels differ.
#[cfg(test)]
pub(crate) fn gradient(width: u32, height: u32) -> Vec<u8> {
    let mut v = Vec::new();
    for y in 0..height {
        for x in 0..width {
            v.extend_from_slice(&[(x * 5) as u8, (y * 3) as u8, ((x + y) * 2) as u8]);
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_of_an_encoded_jpeg() {
        let bytes = encode_jpeg(&gradient(40, 24), 40, 24, 90).unwrap();
        let h = JpegHeader::parse(&bytes).unwrap();
        assert_eq!((h.width, h.height, h.components), (40, 24, 3));
        assert!(h.clean && !h.progressive);
        assert!(h.is_passthrough(40, 24));
        assert!(!h.is_passthrough(24, 40));
    }

    #[test]
    fn truncation_is_an_error() {
        let bytes = encode_jpeg(&gradient(40, 24), 40, 24, 90).unwrap();
        for cut in [bytes.len() - 100, bytes.len() - 1, 10, 3] {
            let err = JpegHeader::parse(&bytes[..cut]).unwrap_err();
            assert_eq!(
                err.to_string(),
                "corrupt jpeg: truncated (no end-of-image marker)",
                "cut at {cut}"
            );
        }
        assert!(JpegHeader::parse(b"not a jpeg").is_err());
    }

    /// A 224² 8-bit colour JPEG whose frame header says arithmetic,
    /// lossless or 12-bit coding: a reader could not decode it, so it is
    /// never stored untouched, and the decoder names what it is.
    #[test]
    fn frames_the_decoder_cannot_read_are_neither_passed_through_nor_decoded() {
        let bytes = encode_jpeg(&gradient(224, 224), 224, 224, 90).unwrap();
        let sof = bytes.windows(2).position(|w| w == [0xFF, 0xC0]).unwrap();
        let cases: [(u8, u8, &str); 6] = [
            (0xC9, 8, "arithmetic-coded jpeg (SOF9)"),
            (0xCA, 8, "arithmetic-coded jpeg (SOF10)"),
            (0xC3, 8, "lossless jpeg (SOF3)"),
            (0xC5, 8, "hierarchical jpeg (SOF5)"),
            (0xC1, 12, "12-bit jpeg (SOF1)"),
            (0xC2, 12, "12-bit jpeg (SOF2)"),
        ];
        for (marker, precision, what) in cases {
            let mut b = bytes.clone();
            b[sof + 1] = marker;
            b[sof + 4] = precision;
            let want = format!("unsupported image format: {what}");
            assert_eq!(JpegHeader::parse(&b).unwrap_err().to_string(), want);
            let err = crate::image::decode_rgb8(&b, Default::default()).unwrap_err();
            assert_eq!(err.to_string(), want);
        }
        // Extended sequential (SOF1) 8-bit Huffman is ordinary baseline
        // data to every reader: kept.
        let mut b = bytes.clone();
        b[sof + 1] = 0xC1;
        assert!(JpegHeader::parse(&b).unwrap().is_passthrough(224, 224));
        assert!(crate::image::decode_rgb8(&b, Default::default()).is_ok());
    }
}
