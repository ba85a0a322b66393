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
    Tiff,
    /// Recognised but not supported (e.g. HEIF, AVIF, JPEG 2000).
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
            ImageFormat::Tiff => f.write_str("tiff"),
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
    } else if starts(b"II*\0") || starts(b"MM\0*") || starts(b"II+\0") || starts(b"MM\0+") {
        // Classic and BigTIFF.
        Some(ImageFormat::Tiff)
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
        other_image(bytes).map(ImageFormat::Unsupported)
    }
}

/// Image formats the packer does not decode, by their magic bytes (TGA by
/// its version-2 footer; older TGA files carry no signature), so that their
/// rejection says "unsupported image format", not "not an image".
fn other_image(bytes: &[u8]) -> Option<&'static str> {
    let starts = |magic: &[u8]| bytes.starts_with(magic);
    // `P1`–`P7`, whitespace, then a width or a comment (PAM: a header word).
    let netpbm = bytes.len() > 3
        && bytes[0] == b'P'
        && (b'1'..=b'7').contains(&bytes[1])
        && bytes[2].is_ascii_whitespace()
        && bytes[3..]
            .iter()
            .find(|b| !b.is_ascii_whitespace())
            .is_some_and(|&b| {
                b.is_ascii_digit() || b == b'#' || (bytes[1] == b'7' && b.is_ascii_uppercase())
            });
    let text = || {
        let head = &bytes[..bytes.len().min(1024)];
        let head = String::from_utf8_lossy(head).to_ascii_lowercase();
        head.trim_start_matches('\u{feff}')
            .trim_start()
            .starts_with('<')
            && head.contains("<svg")
    };
    // ICO/CUR: reserved 0, type 1/2, then an image count of at least one
    // (a true-colour TGA without an id also starts 00 00 02 00, then zeros).
    let images = bytes.len() >= 6 && u16::from_le_bytes([bytes[4], bytes[5]]) > 0;
    if starts(&[0, 0, 1, 0]) && images {
        Some("ico")
    } else if starts(&[0, 0, 2, 0]) && images {
        Some("cur")
    } else if netpbm {
        Some("netpbm (pbm/pgm/ppm/pam)")
    } else if starts(b"8BPS") {
        Some("psd")
    } else if starts(b"qoif") {
        Some("qoi")
    } else if starts(&[0xFF, 0x0A]) || starts(b"\0\0\0\x0CJXL \r\n\x87\n") {
        Some("jpeg xl")
    } else if starts(&[0x76, 0x2F, 0x31, 0x01]) {
        Some("openexr")
    } else if starts(b"#?RADIANCE") || starts(b"#?RGBE") {
        Some("radiance hdr")
    } else if starts(b"DDS ") {
        Some("dds")
    } else if bytes.ends_with(b"TRUEVISION-XFILE.\0") {
        Some("tga")
    } else if text() {
        Some("svg")
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
        for tiff in [&b"II*\0rest"[..], b"MM\0*rest", b"II+\0\x08\0\0\0"] {
            assert_eq!(sniff_format(tiff), Some(ImageFormat::Tiff));
        }
        for (bytes, name) in [
            (&b"\0\0\x01\0\x01\0\x10\x10"[..], "ico"),
            (b"P6\n32 32\n255\n", "netpbm (pbm/pgm/ppm/pam)"),
            (b"8BPS\0\x01", "psd"),
            (b"qoif\0\0", "qoi"),
            (b"\xFF\x0A\xFA", "jpeg xl"),
            (b"\0\0\0\x0CJXL \r\n\x87\nrest", "jpeg xl"),
            (b"#?RADIANCE\n", "radiance hdr"),
            (b"\x02\0\x02\0 data TRUEVISION-XFILE.\0", "tga"),
            (b"<?xml version=\"1.0\"?>\n<svg xmlns=\"\">", "svg"),
        ] {
            assert_eq!(
                sniff_format(bytes),
                Some(ImageFormat::Unsupported(name)),
                "{name}"
            );
        }
        assert_eq!(sniff_format(b"P6 is a paper size"), None);
        // A true-colour TGA header (no id, no colour map) is no cursor.
        let tga = b"\0\0\x02\0\0\0\0\0\0\0\0\0\x10\0\x10\0\x18\0";
        assert_eq!(sniff_format(tga), None);
        assert_eq!(sniff_format(b"<html><body>not svg</body></html>"), None);
        assert_eq!(sniff_format(b"hello world, not an image"), None);
        assert_eq!(sniff_format(b""), None);
    }
}
