//! BMP pixel data coded in runs (RLE8, RLE4), expanded as Pillow's
//! `BmpRleDecoder` expands it, so that such a file gives the pixels a
//! PyTorch pipeline sees.
//!
//! Why not the `image` crate's decoder: it rejects a run that crosses the
//! end of a row (Pillow clips it), paints the pixels an end of line or a
//! delta skips black (Pillow gives them palette index 0), and reads a
//! bitmap whose data ends early, which Pillow refuses.
//!
//! Invariants (Pillow 13's rules, kept exactly):
//! - indices are produced in file order, bottom row first unless the
//!   height is negative; the file's run codes are read from the pixel
//!   offset (moved past the palette when it points at it);
//! - an encoded run is clipped at the end of its row; an absolute run is
//!   not (it flows into the next row) and counts its full length in the
//!   column, so encoded runs after it are dropped until the end of line;
//! - an end of line pads its row with index 0; a delta skips right + up ×
//!   width pixels as index 0; an end of bitmap stops; absolute runs are
//!   padded to a 16-bit word of the file;
//! - the indices must fill the image: data that ends, or a file that ends,
//!   before the last pixel is corrupt;
//! - a palette that is exactly the grey ramp (entry k = grey k; black and
//!   white for two colours) is no palette: index k is grey k (white for
//!   any index but 0 with two colours); any other palette gives its entry,
//!   black past its end.

use super::bmp::{le_u16, le_u32};
use super::decode::{check_pixels, DecodeLimits, ImageError, Rgb8Image, TRUNCATED};
use super::format::ImageFormat;

const FILE_HEADER: usize = 14;
const RLE8: u32 = 1;
const RLE4: u32 = 2;

/// The pixels of a run-length BMP (`bytes` with a Windows info header, or
/// OS/2 2.x's), or `None` for any other BMP.
pub(crate) fn decode(bytes: &[u8], limits: DecodeLimits) -> Option<Result<Rgb8Image, ImageError>> {
    let header = le_u32(bytes, FILE_HEADER)? as usize;
    // The Windows headers (40, 52, 56, 108, 124 bytes) and OS/2 2.x's (64)
    // that `bmp` did not rewrite; Pillow refuses any other length.
    if !matches!(header, 40 | 52 | 56 | 64 | 108 | 124) {
        return None;
    }
    let rle4 = match (le_u32(bytes, 30)?, le_u16(bytes, 28)?) {
        (RLE8, 8) => false,
        (RLE4, 4) => true,
        _ => return None,
    };
    Some(expand(bytes, header, rle4, limits))
}

fn corrupt(detail: impl ToString) -> ImageError {
    ImageError::Corrupt {
        format: ImageFormat::Bmp,
        detail: detail.to_string(),
    }
}

fn expand(
    bytes: &[u8],
    header: usize,
    rle4: bool,
    limits: DecodeLimits,
) -> Result<Rgb8Image, ImageError> {
    // `decode` read up to byte 34; the rest of the header is needed now.
    if bytes.len() < FILE_HEADER + header {
        return Err(corrupt(TRUNCATED));
    }
    let u32_at = |at: usize| le_u32(bytes, at).unwrap_or(0);
    let width = u32_at(18) as i32;
    let height = u32_at(22) as i32;
    if width <= 0 || height == 0 {
        return Err(corrupt(format!("{width}×{height} pixels")));
    }
    let (w, h) = (width.unsigned_abs(), height.unsigned_abs());
    check_pixels(ImageFormat::Bmp, w, h, limits)?;
    let colours = match u32_at(46) {
        0 => 1usize << if rle4 { 4 } else { 8 },
        n => n as usize,
    };
    // Pillow fails on these too (a palette image holds 256 entries).
    if colours > 256 {
        return Err(corrupt(format!("a palette of {colours} colours")));
    }
    let palette_at = FILE_HEADER + header;
    let palette = bytes
        .get(palette_at..)
        .map_or(&[][..], |p| &p[..p.len().min(4 * colours)]);
    let mut start = u32_at(10) as usize;
    if start == palette_at {
        start += 4 * colours;
    } else if start == 0 {
        start = palette_at + palette.len();
    }
    let indices = runs(bytes, start, w as usize, h as usize, rle4)?;
    let colour = Colours::of(palette, colours);
    let row = w as usize;
    let mut data = Vec::with_capacity(indices.len() * 3);
    // Bottom row first unless the height is negative.
    let rows: Box<dyn Iterator<Item = &[u8]>> = if height > 0 {
        Box::new(indices.chunks_exact(row).rev())
    } else {
        Box::new(indices.chunks_exact(row))
    };
    for r in rows {
        data.extend(r.iter().flat_map(|&k| colour.rgb(k)));
    }
    Ok(Rgb8Image {
        width: w,
        height: h,
        data,
    })
}

/// The palette indices of a `w`×`h` bitmap from the run codes at `start`
/// in `bytes` (see the module's invariants), in file order.
fn runs(bytes: &[u8], start: usize, w: usize, h: usize, rle4: bool) -> Result<Vec<u8>, ImageError> {
    let dest = w * h;
    // Runs expand at most 255 pixels per two bytes.
    let mut data = Vec::with_capacity(dest.min(bytes.len().saturating_mul(128)));
    let mut pos = start;
    let mut x = 0usize;
    let mut ended = false;
    while data.len() < dest {
        let (Some(&n), Some(&b)) = (bytes.get(pos), bytes.get(pos + 1)) else {
            break;
        };
        pos += 2;
        if n != 0 {
            let n = if x + usize::from(n) > w {
                w.saturating_sub(x)
            } else {
                usize::from(n)
            };
            if rle4 {
                data.extend((0..n).map(|i| if i % 2 == 0 { b >> 4 } else { b & 0x0F }));
            } else {
                data.extend(std::iter::repeat_n(b, n));
            }
            x += n;
            continue;
        }
        match b {
            0 => {
                let pad = (w - data.len() % w) % w;
                data.resize(data.len() + pad, 0);
                x = 0;
            }
            1 => {
                ended = true;
                break;
            }
            2 => {
                let Some(d) = bytes.get(pos..pos + 2) else {
                    break;
                };
                pos += 2;
                let skip = (usize::from(d[0]) + usize::from(d[1]) * w).min(dest - data.len());
                data.resize(data.len() + skip, 0);
                x = data.len() % w;
            }
            count => {
                let pixels = usize::from(count).min(dest - data.len());
                let wanted = if rle4 { pixels.div_ceil(2) } else { pixels };
                let got = bytes
                    .get(pos..)
                    .map_or(&[][..], |r| &r[..r.len().min(wanted)]);
                if rle4 {
                    for (i, &v) in got.iter().enumerate() {
                        data.push(v >> 4);
                        if i * 2 + 1 < pixels {
                            data.push(v & 0x0F);
                        }
                    }
                } else {
                    data.extend_from_slice(got);
                }
                pos += got.len();
                if got.len() < wanted || data.len() == dest {
                    break;
                }
                x += usize::from(count);
                // Absolute runs end on a 16-bit word of the file.
                pos += pos % 2;
            }
        }
    }
    if data.len() < dest {
        return Err(corrupt(if ended {
            format!(
                "run-length data ends (end of bitmap) after {} of {dest} pixels",
                data.len()
            )
        } else {
            TRUNCATED.to_string()
        }));
    }
    data.truncate(dest);
    Ok(data)
}

/// How Pillow turns a run-length BMP's indices into colours.
enum Colours<'a> {
    /// Black and white (or black alone): any index but 0 is white.
    Bilevel,
    /// The grey ramp: index k is grey k.
    Grey,
    /// BGRX entries; black past the end.
    Palette(&'a [u8]),
}

impl<'a> Colours<'a> {
    fn of(palette: &'a [u8], colours: usize) -> Self {
        let entry = |k: usize| palette.get(4 * k..4 * k + 3);
        if colours == 2 && entry(0) == Some(&[0; 3]) && entry(1) == Some(&[255; 3]) {
            return Colours::Bilevel;
        }
        if colours == 1 && entry(0) == Some(&[0; 3]) {
            return Colours::Bilevel;
        }
        if (0..colours).all(|k| entry(k) == Some(&[k as u8; 3])) {
            return Colours::Grey;
        }
        Colours::Palette(palette)
    }

    fn rgb(&self, k: u8) -> [u8; 3] {
        match self {
            Colours::Bilevel => [if k == 0 { 0 } else { 255 }; 3],
            Colours::Grey => [k; 3],
            Colours::Palette(p) => match p.get(4 * usize::from(k)..4 * usize::from(k) + 3) {
                Some(bgr) => [bgr[2], bgr[1], bgr[0]],
                None => [0; 3],
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::decode_rgb8;

    /// The BMP `tests/peers/bmp_rle_pillow.py` writes: a 40-byte header,
    /// the palette (its length the colours used), the run codes.
    fn bmp(bits: u16, w: i32, h: i32, palette: &[[u8; 3]], data: &[u8]) -> Vec<u8> {
        let table: Vec<u8> = palette.iter().flat_map(|&[r, g, b]| [b, g, r, 0]).collect();
        let offset = (14 + 40 + table.len()) as u32;
        let mut out = b"BM".to_vec();
        out.extend((offset + data.len() as u32).to_le_bytes());
        out.extend([0; 4]);
        out.extend(offset.to_le_bytes());
        out.extend(40u32.to_le_bytes());
        out.extend(w.to_le_bytes());
        out.extend(h.to_le_bytes());
        out.extend(1u16.to_le_bytes());
        out.extend(bits.to_le_bytes());
        out.extend((if bits == 8 { RLE8 } else { RLE4 }).to_le_bytes());
        out.extend((data.len() as u32).to_le_bytes());
        out.extend([0; 8]);
        out.extend((palette.len() as u32).to_le_bytes());
        out.extend([0; 4]);
        out.extend(table);
        out.extend(data);
        out
    }

    const PAL: [[u8; 3]; 4] = [[10, 20, 30], [40, 50, 60], [70, 80, 90], [100, 110, 120]];

    fn pixels(file: &[u8]) -> Vec<[u8; 3]> {
        let img = decode_rgb8(file, DecodeLimits::default()).unwrap();
        img.data.chunks(3).map(|p| [p[0], p[1], p[2]]).collect()
    }

    #[test]
    fn runs_expand_to_pillows_pixels() {
        let [a, b, c, d] = PAL;
        // Pillow's output (tests/peers/bmp_rle_pillow.py), top row first.
        let cases = [
            (
                "clipped run, end of line, odd absolute run, delta",
                bmp(
                    8,
                    5,
                    3,
                    &PAL,
                    &[
                        7, 1, 0, 0, 0, 3, 2, 3, 1, 0, 0, 2, 1, 0, 1, 3, 0, 0, 5, 2, 0, 1,
                    ],
                ),
                vec![c, c, c, c, c, c, d, b, a, d, b, b, b, b, b],
            ),
            (
                "an absolute run flowing into the next row",
                bmp(8, 3, 2, &PAL, &[0, 4, 1, 2, 3, 1, 2, 2, 0, 0, 2, 3, 0, 1]),
                vec![b, a, a, b, c, d],
            ),
            (
                "RLE4",
                bmp(
                    4,
                    6,
                    2,
                    &PAL,
                    &[5, 0x12, 0, 0, 0, 3, 0x31, 0x20, 3, 0x03, 0, 1],
                ),
                vec![d, b, c, a, d, a, b, c, b, c, b, a],
            ),
            (
                "past the palette, top-down",
                bmp(8, 3, -1, &PAL, &[0, 3, 3, 9, 250, 0, 0, 1]),
                vec![d, [0; 3], [0; 3]],
            ),
            (
                "a grey ramp",
                bmp(
                    8,
                    3,
                    1,
                    &[[0; 3], [1; 3], [2; 3]],
                    &[0, 3, 1, 2, 7, 0, 0, 1],
                ),
                vec![[1; 3], [2; 3], [7; 3]],
            ),
            (
                "black and white",
                bmp(8, 3, 1, &[[0; 3], [255; 3]], &[0, 3, 0, 1, 5, 0, 0, 1]),
                vec![[0; 3], [255; 3], [255; 3]],
            ),
        ];
        for (what, file, want) in cases {
            assert_eq!(pixels(&file), want, "{what}");
        }
    }

    #[test]
    fn data_that_ends_before_the_last_pixel_is_corrupt() {
        let early = bmp(8, 2, 2, &PAL, &[2, 1, 0, 1]);
        match decode_rgb8(&early, DecodeLimits::default()) {
            Err(ImageError::Corrupt { detail, .. }) => {
                assert!(detail.contains("end of bitmap) after 2 of 4"), "{detail}")
            }
            other => panic!("{other:?}"),
        }
        let cut = bmp(8, 2, 2, &PAL, &[2, 1, 0, 0, 1]);
        match decode_rgb8(&cut, DecodeLimits::default()) {
            Err(ImageError::Corrupt { detail, .. }) => assert_eq!(detail, TRUNCATED),
            other => panic!("{other:?}"),
        }
        // Not a run-length BMP: left to the image crate.
        let mut raw = bmp(8, 1, 1, &PAL, &[0, 0, 0, 0]);
        raw[30] = 0;
        assert!(decode(&raw, DecodeLimits::default()).is_none());
        let mut long_header = early.clone();
        long_header[15] = 1; // 296 bytes: not a BMP header Pillow knows
        assert!(decode(&long_header, DecodeLimits::default()).is_none());
        let mut past_end = early.clone();
        past_end[14] = 124;
        assert!(matches!(
            decode_rgb8(&past_end, DecodeLimits::default()),
            Err(ImageError::Corrupt { detail, .. }) if detail == TRUNCATED
        ));
        let mut colours = early.clone();
        colours[46..50].copy_from_slice(&257u32.to_le_bytes());
        assert!(decode_rgb8(&colours, DecodeLimits::default()).is_err());
        let mut big = early.clone();
        big[18..22].copy_from_slice(&100_000i32.to_le_bytes());
        assert!(matches!(
            decode_rgb8(&big, DecodeLimits { max_pixels: 1000 }),
            Err(ImageError::TooLarge { .. })
        ));
    }
}
