//! Container-format detection from magic bytes.
//!
//! File extensions lie (`.JPEG` files that are PNGs are common in scraped
//! datasets), so the packer trusts only the first bytes of the payload.

use std::fmt;

/// An image container recognised by its magic bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageFormat {
    Jpeg,
    Png,
    Webp,
    Bmp,
    Gif,
    /// Recognised but not supported (e.g. TIFF, HEIF, AVIF, JPEG 2000).
    Unsupported(&'static str),
}

impl fmt::Display for ImageFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageFormat::Jpeg => f.write_str("jpeg"),
            ImageFormat::Png => f.write_str("png"),
            ImageFormat::Webp => f.write_str("webp"),
            ImageFormat::Bmp => f.write_str("bmp"),
            ImageFormat::Gif => f.write_str("gif"),
            ImageFormat::Unsupported(name) => f.write_str(name),
        }
    }
}

/// Identify the format of `bytes`, or `None` when it is not an image at all.
pub fn sniff_format(bytes: &[u8]) -> Option<ImageFormat> {
    let starts = |magic: &[u8]| bytes.starts_with(magic);
    if starts(&[0xFF, 0xD8, 0xFF]) {
        Some(ImageFormat::Jpeg)
    } else if starts(b"\x89PNG\r\n\x1a\n") {
        Some(ImageFormat::Png)
    } else if bytes.len() >= 12 && starts(b"RIFF") && &bytes[8..12] == b"WEBP" {
        Some(ImageFormat::Webp)
    } else if starts(b"BM") && bytes.len() >= 26 {
        Some(ImageFormat::Bmp)
    } else if starts(b"GIF87a") || starts(b"GIF89a") {
        Some(ImageFormat::Gif)
    } else if starts(b"II*\0") || starts(b"MM\0*") {
        Some(ImageFormat::Unsupported("tiff"))
    } else if bytes.len() >= 12 && &bytes[4..8] == b"ftyp" {
        let brand = &bytes[8..12];
        if brand == b"avif" || brand == b"avis" {
            Some(ImageFormat::Unsupported("avif"))
        } else {
            Some(ImageFormat::Unsupported("heif"))
        }
    } else if starts(&[0x00, 0x00, 0x00, 0x0C, b'j', b'P']) || starts(&[0xFF, 0x4F, 0xFF, 0x51]) {
        Some(ImageFormat::Unsupported("jpeg2000"))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_magic_bytes() {
        assert_eq!(
            sniff_format(&[0xFF, 0xD8, 0xFF, 0xE0]),
            Some(ImageFormat::Jpeg)
        );
        assert_eq!(
            sniff_format(b"\x89PNG\r\n\x1a\nxxxx"),
            Some(ImageFormat::Png)
        );
        assert_eq!(
            sniff_format(b"RIFF\0\0\0\0WEBPVP8 "),
            Some(ImageFormat::Webp)
        );
        assert_eq!(sniff_format(b"GIF89a...."), Some(ImageFormat::Gif));
        assert_eq!(
            sniff_format(b"II*\0rest"),
            Some(ImageFormat::Unsupported("tiff"))
        );
        assert_eq!(sniff_format(b"hello world, not an image"), None);
        assert_eq!(sniff_format(b""), None);
    }
}
