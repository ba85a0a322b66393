//! What the GIF decoder of the `image` crate leaves to us: the logical
//! screen around the first frame, files with no colour table, and stray
//! bytes between the blocks before the first image.
//!
//! Invariants: only the first frame is ever decoded (the packer's rule for
//! animations), so only the header up to the first image descriptor is
//! read here; a header this cannot read is left to the decoder, which
//! rejects it with its own reason. A byte that starts no block (neither an
//! extension, `!`, an image, `,`, nor the trailer, `;`) is skipped one at a
//! time, as Pillow's reader and the GIF87a specification do, and never
//! otherwise interpreted.

use std::borrow::Cow;

/// The parts of a GIF header that decide the pixels around and inside the
/// first frame.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Layout {
    screen: (u32, u32),
    /// Global colour table, 3 bytes per entry.
    global: Option<(usize, usize)>,
    background: u8,
    /// The first frame's left, top, width, height.
    frame: (u32, u32, u32, u32),
    frame_has_table: bool,
    /// Where the first image descriptor starts.
    first_image: usize,
    /// How many bytes before it start no block.
    strays: usize,
}

/// The end of the signature (6 bytes) and logical screen descriptor (7):
/// where a global colour table starts.
const SCREEN_END: usize = 13;

impl Layout {
    /// The colour the GIF89a specification gives the screen's pixels no
    /// frame covers: the global table's background entry.
    fn background<'a>(&self, bytes: &'a [u8]) -> Option<&'a [u8]> {
        let (at, entries) = self.global?;
        let k = usize::from(self.background);
        (k < entries).then(|| &bytes[at + 3 * k..at + 3 * k + 3])
    }
}

/// What starts at a position between the blocks of a GIF.
enum Block {
    /// An extension, ending (after its empty sub-block) where given.
    Extension(usize),
    Image,
    /// The trailer, or the end of the file.
    End,
    Stray,
}

/// The block at `pos`; `None` when an extension runs past the file's end.
fn block_at(bytes: &[u8], pos: usize) -> Option<Block> {
    Some(match bytes.get(pos) {
        // Extension: label, then data sub-blocks up to an empty one.
        Some(0x21) => {
            let mut end = pos + 2;
            loop {
                let n = usize::from(*bytes.get(end)?);
                end += 1 + n;
                if n == 0 {
                    break Block::Extension(end);
                }
            }
        }
        Some(0x2C) => Block::Image,
        Some(0x3B) | None => Block::End,
        Some(_) => Block::Stray,
    })
}

/// Where the blocks start after the header: past the global colour table.
fn blocks_start(bytes: &[u8]) -> usize {
    let flags = bytes.get(10).copied().unwrap_or(0);
    if flags & 0x80 != 0 {
        SCREEN_END + (3usize << ((flags & 7) + 1))
    } else {
        SCREEN_END
    }
}

/// Reads the header of `bytes` (a GIF) to the first image descriptor.
pub(crate) fn layout(bytes: &[u8]) -> Option<Layout> {
    if !(bytes.starts_with(b"GIF87a") || bytes.starts_with(b"GIF89a")) {
        return None;
    }
    let u16_at = |at: usize| -> Option<u32> {
        Some(u32::from(u16::from_le_bytes(
            bytes.get(at..at + 2)?.try_into().ok()?,
        )))
    };
    let screen = (u16_at(6)?, u16_at(8)?);
    let flags = *bytes.get(10)?;
    let background = *bytes.get(11)?;
    let mut pos = blocks_start(bytes);
    bytes.get(..pos)?;
    let global = (flags & 0x80 != 0).then(|| (SCREEN_END, (pos - SCREEN_END) / 3));
    let mut strays = 0;
    loop {
        match block_at(bytes, pos)? {
            Block::Extension(end) => pos = end,
            Block::Stray => {
                strays += 1;
                pos += 1;
            }
            Block::End => return None,
            Block::Image => {
                let frame = (
                    u16_at(pos + 1)?,
                    u16_at(pos + 3)?,
                    u16_at(pos + 5)?,
                    u16_at(pos + 7)?,
                );
                let frame_has_table = *bytes.get(pos + 9)? & 0x80 != 0;
                return Some(Layout {
                    screen,
                    global,
                    background,
                    frame,
                    frame_has_table,
                    first_image: pos,
                    strays,
                });
            }
        }
    }
}

/// `bytes` without the stray bytes `layout` counted before the first image.
fn without_strays(bytes: &[u8], layout: &Layout) -> Vec<u8> {
    let start = blocks_start(bytes);
    let mut out = Vec::with_capacity(bytes.len() - layout.strays);
    out.extend_from_slice(&bytes[..start]);
    let mut pos = start;
    while pos < layout.first_image {
        match block_at(bytes, pos) {
            Some(Block::Extension(end)) => {
                out.extend_from_slice(&bytes[pos..end]);
                pos = end;
            }
            // `layout` walked this far: only strays remain to skip.
            _ => pos += 1,
        }
    }
    out.extend_from_slice(&bytes[layout.first_image..]);
    out
}

/// `bytes` as the `image` crate's decoder can read them as Pillow does: the
/// stray bytes before the first image dropped (the decoder stops at them:
/// "unknown block type"), and a GIF whose first frame has no colour table,
/// global or local, given a global one of 256 greys (index k is grey k),
/// which is what Pillow reads such a file as and what GIF89a lets a
/// decoder supply. Other files are returned as they are.
pub(crate) fn readable(bytes: &[u8]) -> Cow<'_, [u8]> {
    let Some(l) = layout(bytes) else {
        return Cow::Borrowed(bytes);
    };
    let mut out = if l.strays > 0 {
        Cow::Owned(without_strays(bytes, &l))
    } else {
        Cow::Borrowed(bytes)
    };
    if l.global.is_none() && !l.frame_has_table {
        let mut grey = Vec::with_capacity(out.len() + 768);
        grey.extend_from_slice(&out[..SCREEN_END]);
        grey[10] |= 0x80 | 7;
        grey.extend((0..=255u8).flat_map(|g| [g, g, g]));
        grey.extend_from_slice(&out[SCREEN_END..]);
        out = Cow::Owned(grey);
    }
    out
}

/// Paints the pixels of `rgb` (the decoded screen, `width` × `height`)
/// that the first frame does not cover with the background colour, where
/// the decoder left them black.
pub(crate) fn paint_background(bytes: &[u8], width: u32, height: u32, rgb: &mut [u8]) {
    let Some(l) = layout(bytes) else { return };
    let Some(colour) = l.background(bytes) else {
        return;
    };
    if l.screen != (width, height) {
        return;
    }
    let (left, top, w, h) = l.frame;
    let (x0, x1) = (left.min(width), left.saturating_add(w).min(width));
    let (y0, y1) = (top.min(height), top.saturating_add(h).min(height));
    for (y, row) in rgb.chunks_exact_mut(width as usize * 3).enumerate() {
        let y = y as u32;
        for (x, px) in row.chunks_exact_mut(3).enumerate() {
            let x = x as u32;
            if !(x0..x1).contains(&x) || !(y0..y1).contains(&y) {
                px.copy_from_slice(colour);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::{decode_rgb8, DecodeLimits};

    /// A GIF89a of one frame, written by hand: a `screen` with an optional
    /// global table and background index, a frame at `rect` with optional
    /// local table, LZW-coded with a clear code before every pixel (so the
    /// code width stays at min + 1 bits), then the trailer.
    fn gif(
        screen: (u16, u16),
        global: Option<&[[u8; 3]; 4]>,
        background: u8,
        rect: (u16, u16, u16, u16),
        local: Option<&[[u8; 3]; 4]>,
        index: impl Fn(u16, u16) -> u8,
    ) -> Vec<u8> {
        let mut g = b"GIF89a".to_vec();
        g.extend_from_slice(&screen.0.to_le_bytes());
        g.extend_from_slice(&screen.1.to_le_bytes());
        g.push(if global.is_some() { 0x80 | 1 } else { 0 });
        g.push(background);
        g.push(0);
        if let Some(t) = global {
            g.extend(t.iter().flatten());
        }
        g.push(0x2C);
        for v in [rect.0, rect.1, rect.2, rect.3] {
            g.extend_from_slice(&v.to_le_bytes());
        }
        g.push(if local.is_some() { 0x80 | 1 } else { 0 });
        if let Some(t) = local {
            g.extend(t.iter().flatten());
        }
        // LZW, minimum code size 2: clear = 4, end = 5, 3-bit codes.
        g.push(2);
        let mut codes = Vec::new();
        for y in 0..rect.3 {
            for x in 0..rect.2 {
                codes.push(4u32);
                codes.push(u32::from(index(x, y)));
            }
        }
        codes.push(5);
        let (mut data, mut acc, mut bits) = (Vec::new(), 0u32, 0);
        for c in codes {
            acc |= c << bits;
            bits += 3;
            while bits >= 8 {
                data.push(acc as u8);
                acc >>= 8;
                bits -= 8;
            }
        }
        if bits > 0 {
            data.push(acc as u8);
        }
        for block in data.chunks(255) {
            g.push(block.len() as u8);
            g.extend_from_slice(block);
        }
        g.push(0);
        g.push(0x3B);
        g
    }

    const TABLE: [[u8; 3]; 4] = [[200, 10, 10], [10, 200, 10], [10, 10, 200], [90, 80, 70]];

    #[test]
    fn the_screen_around_the_first_frame_is_the_background_colour() {
        let idx = |x: u16, y: u16| ((x + y) % 3) as u8;
        let b = gif((6, 5), Some(&TABLE), 3, (2, 1, 3, 2), None, idx);
        let img = decode_rgb8(&b, DecodeLimits::default()).unwrap();
        assert_eq!((img.width, img.height), (6, 5));
        for y in 0..5u16 {
            for x in 0..6u16 {
                let o = (usize::from(y) * 6 + usize::from(x)) * 3;
                let inside = (2..5).contains(&x) && (1..3).contains(&y);
                let want = if inside {
                    TABLE[usize::from(idx(x - 2, y - 1))]
                } else {
                    TABLE[3]
                };
                assert_eq!(img.data[o..o + 3], want, "at {x},{y}");
            }
        }
        // A frame hanging past the screen is clipped; the rest is painted.
        let b = gif((4, 4), Some(&TABLE), 3, (2, 2, 3, 3), None, idx);
        let img = decode_rgb8(&b, DecodeLimits::default()).unwrap();
        assert_eq!(img.data[..3], TABLE[3]);
        assert_eq!(img.data[(2 * 4 + 2) * 3..(2 * 4 + 2) * 3 + 3], TABLE[0]);
    }

    #[test]
    fn a_gif_without_colour_tables_reads_as_grey() {
        let idx = |x: u16, y: u16| ((x * 2 + y) % 4) as u8;
        let b = gif((3, 2), None, 0, (0, 0, 3, 2), None, idx);
        assert!(matches!(readable(&b), Cow::Owned(_)));
        let img = decode_rgb8(&b, DecodeLimits::default()).unwrap();
        for y in 0..2u16 {
            for x in 0..3u16 {
                let o = (usize::from(y) * 3 + usize::from(x)) * 3;
                let g = idx(x, y);
                assert_eq!(img.data[o..o + 3], [g, g, g], "at {x},{y}");
            }
        }
        // A local table is used as it is.
        let b = gif((3, 2), None, 0, (0, 0, 3, 2), Some(&TABLE), idx);
        assert!(matches!(readable(&b), Cow::Borrowed(_)));
        let img = decode_rgb8(&b, DecodeLimits::default()).unwrap();
        assert_eq!(img.data[3..6], TABLE[usize::from(idx(1, 0))]);
    }

    /// `g` with `extra` inserted at `at`.
    fn inserted(g: &[u8], at: usize, extra: &[u8]) -> Vec<u8> {
        [&g[..at], extra, &g[at..]].concat()
    }

    #[test]
    fn stray_bytes_before_the_first_image_are_skipped_as_pillow_skips_them() {
        let idx = |x: u16, y: u16| ((x * 3 + y) % 4) as u8;
        let clean = gif((4, 3), Some(&TABLE), 0, (0, 0, 4, 3), None, idx);
        let want = decode_rgb8(&clean, DecodeLimits::default()).unwrap();
        // After the global table (13 + 12 bytes) the blocks start; a
        // comment extension there, then stray bytes on either side of it.
        let after_table = 25;
        let comment = [0x21, 0xFE, 2, b'h', b'i', 0];
        let with_comment = inserted(&clean, after_table, &comment);
        for (at, extra) in [
            (after_table, &[0u8][..]),
            (after_table, &[0x00, 0x7F, 0xFF][..]),
            (after_table + comment.len(), &[0x42][..]),
        ] {
            let b = inserted(&with_comment, at, extra);
            assert_eq!(layout(&b).unwrap().strays, extra.len());
            assert!(matches!(readable(&b), Cow::Owned(_)));
            assert_eq!(readable(&b).as_ref(), &with_comment[..]);
            let img = decode_rgb8(&b, DecodeLimits::default()).unwrap();
            assert_eq!(img.data, want.data, "{extra:?} at {at}");
        }
        // Without a colour table too: the strays go, the greys come.
        let grey = gif((4, 3), None, 0, (0, 0, 4, 3), None, idx);
        let b = inserted(&grey, SCREEN_END, &[9, 9]);
        assert_eq!(
            decode_rgb8(&b, DecodeLimits::default()).unwrap().data,
            decode_rgb8(&grey, DecodeLimits::default()).unwrap().data
        );
        // A trailer before any image ends the file: nothing to show.
        let b = inserted(&clean, after_table, &[0x3B]);
        assert!(layout(&b).is_none());
        assert!(decode_rgb8(&b, DecodeLimits::default()).is_err());
        // A clean file is not copied.
        assert!(matches!(readable(&clean), Cow::Borrowed(_)));
    }

    #[test]
    fn headers_cut_short_are_left_to_the_decoder() {
        let b = gif((3, 2), Some(&TABLE), 0, (0, 0, 3, 2), None, |_, _| 1);
        for cut in 0..30 {
            assert!(layout(&b[..cut]).is_none(), "cut {cut}");
            assert!(matches!(readable(&b[..cut]), Cow::Borrowed(_)));
        }
        assert!(layout(&b).is_some());
    }
}
