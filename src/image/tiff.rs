//! The TIFF codings the `image` crate refuses but Pillow reads, decoded
//! here with the `tiff` crate underneath it: palette images (8 bits or
//! fewer per index, colours from the ColorMap tag) and 8-bit gray with
//! alpha.
//!
//! Invariants: only the first image of the file is read, as Pillow opens
//! it; a ColorMap entry is 16 bits and its high byte is the colour, as
//! Pillow takes it; alpha is dropped (the gray under it kept), as
//! `convert("RGB")` does. The pixel count is checked against the limit
//! before the pixels are read. Anything else is `None`: the caller's
//! error stands.

use std::io::Cursor;

use ::tiff::decoder::{Decoder, DecodingResult};
use ::tiff::tags::Tag;
use ::tiff::ColorType;

use super::decode::{check_pixels, reason_text, DecodeLimits, ImageError, Rgb8Image, TRUNCATED};
use super::format::ImageFormat;
use super::ifd::Ifd0;

/// The first image of a palette or gray-with-alpha TIFF as RGB8 (not yet
/// oriented); `None` for any other TIFF.
pub(crate) fn decode_fallback(
    bytes: &[u8],
    limits: DecodeLimits,
) -> Option<Result<Rgb8Image, ImageError>> {
    let ifd = Ifd0::open(bytes)?;
    let entry = ifd
        .entries()
        .find(|e| e.tag == PHOTOMETRIC && e.kind == 3 && e.count == 1)?;
    let at = ifd.value_at(entry, 2)?;
    match ifd.u16_at(at)? {
        PALETTE => {
            // The `tiff` crate refuses palette images before reading a
            // sample; as gray ones (the tag rewritten to BlackIsZero) it
            // reads their indices, which the colour map then turns into RGB.
            let mut gray = bytes.to_vec();
            gray[at..at + 2].copy_from_slice(&ifd.short_bytes(BLACK_IS_ZERO));
            let mut decoder = Decoder::new(Cursor::new(&gray[..])).ok()?;
            match decoder.colortype().ok()? {
                ColorType::Gray(bits @ (1 | 2 | 4 | 8)) => {
                    Some(read(&mut decoder, Samples::Palette(bits), limits))
                }
                _ => None,
            }
        }
        BLACK_IS_ZERO => {
            let mut decoder = Decoder::new(Cursor::new(bytes)).ok()?;
            match decoder.colortype().ok()? {
                ColorType::Multiband {
                    bit_depth: 8,
                    num_samples: 2,
                } => Some(read(&mut decoder, Samples::GrayAlpha, limits)),
                _ => None,
            }
        }
        _ => None,
    }
}

/// Tag 262 and the values of it read here.
const PHOTOMETRIC: u16 = 262;
const BLACK_IS_ZERO: u16 = 1;
const PALETTE: u16 = 3;

/// What the samples of an image read here are.
#[derive(Clone, Copy)]
enum Samples {
    /// Indices of this many bits into the ColorMap.
    Palette(u8),
    /// 8-bit gray, 8-bit alpha.
    GrayAlpha,
}

/// The pixels of `decoder`'s image.
fn read(
    decoder: &mut Decoder<Cursor<&[u8]>>,
    samples_are: Samples,
    limits: DecodeLimits,
) -> Result<Rgb8Image, ImageError> {
    let fmt = ImageFormat::Tiff;
    let bad = |e: ::tiff::TiffError| ImageError::Corrupt {
        format: fmt,
        detail: reason_text(&e.to_string()),
    };
    let (width, height) = decoder.dimensions().map_err(bad)?;
    check_pixels(fmt, width, height, limits)?;
    let DecodingResult::U8(samples) = decoder.read_image().map_err(bad)? else {
        return Err(ImageError::Corrupt {
            format: fmt,
            detail: "samples wider than their bit depth".into(),
        });
    };
    let (w, h) = (width as usize, height as usize);
    let short = || ImageError::Corrupt {
        format: fmt,
        detail: TRUNCATED.into(),
    };
    let mut data = Vec::with_capacity(w * h * 3);
    match samples_are {
        Samples::Palette(bits) => {
            let map = decoder.get_tag_u16_vec(Tag::ColorMap).map_err(bad)?;
            let entries = 1usize << bits;
            if map.len() != 3 * entries {
                return Err(ImageError::Corrupt {
                    format: fmt,
                    detail: format!("colour map of {} values for {bits}-bit indices", map.len()),
                });
            }
            let bits = usize::from(bits);
            // Rows start on a byte boundary.
            let row_bytes = (w * bits).div_ceil(8);
            if samples.len() < row_bytes * h {
                return Err(short());
            }
            for row in samples.chunks_exact(row_bytes).take(h) {
                for x in 0..w {
                    let bit = x * bits;
                    let byte = row[bit / 8];
                    let index = usize::from(byte >> (8 - bits - bit % 8)) & (entries - 1);
                    data.extend((0..3).map(|c| (map[c * entries + index] >> 8) as u8));
                }
            }
        }
        Samples::GrayAlpha => {
            if samples.len() < w * h * 2 {
                return Err(short());
            }
            data.extend(
                samples
                    .chunks_exact(2)
                    .take(w * h)
                    .flat_map(|ga| [ga[0]; 3]),
            );
        }
    }
    Ok(Rgb8Image {
        width,
        height,
        data,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::decode_rgb8;

    fn fixtures() -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/tiff")
    }

    /// Every coding of `tests/data/tiff` (made by its `make.py`) decodes to
    /// Pillow's pixels, oriented as `exif_transpose` orients them: exactly,
    /// but for JPEG-compressed strips (two decoders' rounding).
    #[test]
    fn tiffs_decode_to_pillows_pixels() {
        let sizes = std::fs::read_to_string(fixtures().join("SIZES.txt")).unwrap();
        let mut seen = 0;
        for line in sizes.lines() {
            let (name, size) = line.split_once(' ').unwrap();
            let (w, h) = size.split_once('x').unwrap();
            let (w, h): (u32, u32) = (w.parse().unwrap(), h.parse().unwrap());
            let tif = std::fs::read(fixtures().join(format!("{name}.tif"))).unwrap();
            let want = std::fs::read(fixtures().join(format!("{name}.rgb"))).unwrap();
            let got = decode_rgb8(&tif, DecodeLimits::default()).unwrap();
            assert_eq!((got.width, got.height), (w, h), "{name}");
            let worst = got
                .data
                .iter()
                .zip(&want)
                .map(|(a, b)| a.abs_diff(*b))
                .max();
            let limit = if name == "rgb-jpeg" { 2 } else { 0 };
            assert!(worst <= Some(limit), "{name}: off by {worst:?}");
            seen += 1;
        }
        assert_eq!(seen, 12);
        for (name, why) in [
            ("bilevel-group3", "compression method Fax3 is unsupported"),
            (
                "float32",
                "32-bit pixels of a kind the decoder lacks: floating point or extra channels",
            ),
        ] {
            let tif = std::fs::read(fixtures().join(format!("{name}.tif"))).unwrap();
            let err = decode_rgb8(&tif, DecodeLimits::default()).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!("unsupported image format: tiff ({why})"),
                "{name}"
            );
        }
    }

    /// A single-image TIFF cut anywhere is rejected, never decoded short
    /// (a cut inside the pixel data says so); damaged bytes are a
    /// rejection, not a stop.
    #[test]
    fn cut_or_damaged_tiffs_are_rejected() {
        for name in [
            "rgb-lzw",
            "palette-raw",
            "gray-alpha-lzw",
            "bilevel-group4",
            "bigtiff",
        ] {
            let tif = std::fs::read(fixtures().join(format!("{name}.tif"))).unwrap();
            let mut truncated = 0;
            for cut in 0..tif.len() {
                let err = decode_rgb8(&tif[..cut], DecodeLimits::default());
                let Err(err) = err else {
                    panic!("{name} cut at {cut} of {} decoded", tif.len());
                };
                truncated += usize::from(err.to_string().contains("truncated"));
            }
            assert!(truncated > 0, "{name}: no cut reads as truncated");
            let mut x = 0x9E37_79B9_7F4A_7C15u64;
            for _ in 0..200 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let mut bad = tif.clone();
                let at = x as usize % bad.len();
                bad[at] ^= (x >> 32) as u8 | 1;
                let _ = decode_rgb8(&bad, DecodeLimits::default());
            }
        }
    }

    /// A big-endian TIFF of 4-bit palette indices, one strip, rows padded
    /// to a byte: built here, so the unpacking is checked against indices
    /// and colours chosen by hand.
    #[test]
    fn four_bit_palettes_unpack_row_by_row() {
        let (w, h) = (3u32, 2u32);
        // Indices 0 1 2 / 15 14 13, two per byte, each row padded.
        let strip = [0x01, 0x20, 0xFE, 0xD0];
        let mut map = vec![0u16; 48];
        for k in 0..16u16 {
            map[usize::from(k)] = k * 4096 + 0x00FF; // red: the high byte counts
            map[16 + usize::from(k)] = 0xFFFF - k * 4096;
            map[32 + usize::from(k)] = 0x8000;
        }
        let entries: [(u16, u16, u32, u32); 9] = [
            (256, 3, 1, w << 16),
            (257, 3, 1, h << 16),
            (258, 3, 1, 4 << 16),
            (259, 3, 1, 1 << 16),
            (262, 3, 1, 3 << 16),
            (273, 4, 1, 0), // strip offset, filled in below
            (277, 3, 1, 1 << 16),
            (279, 4, 1, strip.len() as u32),
            (320, 3, 48, 0), // colour map offset, filled in below
        ];
        let ifd_len = 2 + 12 * entries.len() + 4;
        let strip_at = 8 + ifd_len as u32;
        let map_at = strip_at + strip.len() as u32;
        let mut t = b"MM\0*".to_vec();
        t.extend(8u32.to_be_bytes());
        t.extend((entries.len() as u16).to_be_bytes());
        for (tag, kind, count, value) in entries {
            let value = match tag {
                273 => strip_at,
                320 => map_at,
                _ => value,
            };
            t.extend(tag.to_be_bytes());
            t.extend(kind.to_be_bytes());
            t.extend(count.to_be_bytes());
            t.extend(value.to_be_bytes());
        }
        t.extend(0u32.to_be_bytes());
        t.extend(strip);
        for v in &map {
            t.extend(v.to_be_bytes());
        }
        let got = decode_rgb8(&t, DecodeLimits::default()).unwrap();
        assert_eq!((got.width, got.height), (w, h));
        let want: Vec<u8> = [0u16, 1, 2, 15, 14, 13]
            .iter()
            .flat_map(|&k| [(k * 16) as u8, 0xFF - (k * 16) as u8, 0x80])
            .collect();
        assert_eq!(got.data, want);
        // A colour map of the wrong length is named, not read past.
        let mut short = t.clone();
        short[8 + 2 + 12 * 8 + 4..8 + 2 + 12 * 8 + 8].copy_from_slice(&47u32.to_be_bytes());
        let err = decode_rgb8(&short, DecodeLimits::default()).unwrap_err();
        assert!(err.to_string().starts_with("corrupt tiff"), "{err}");
    }
}
