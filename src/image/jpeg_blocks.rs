//! Where a DCT frame's 8×8 blocks lie, which of them each unit of a scan
//! codes (ITU-T T.81 A.2), and what a scan header names: shared by the readers of coded data in this
//! crate (the arithmetic transcoder, the Huffman data check).
//!
//! Invariants: the frame was accepted by [`super::jpeg_stream::walk`];
//! block indices run over each component's MCU-padded grid, row by row,
//! `stride` blocks a row.

use super::jpeg_stream::{Fault, Walk};

/// One frame component's blocks.
pub(super) struct Layout {
    pub id: u8,
    pub h: usize,
    pub v: usize,
    /// Blocks that hold the image (what a one-component scan codes).
    pub blocks_w: usize,
    pub blocks_h: usize,
    /// Blocks per row of the padded grid.
    pub stride: usize,
    /// Blocks in the padded grid.
    pub padded: usize,
}

/// The frame's grid of MCUs.
pub(super) struct Grid {
    pub mcus_w: usize,
    pub mcus_h: usize,
}

/// The MCU grid of `walk`'s frame and each component's blocks.
pub(super) fn layout(walk: &Walk) -> (Grid, Vec<Layout>) {
    let (width, height) = (walk.width as usize, walk.height as usize);
    let (h_max, v_max) = walk.components.iter().fold((1, 1), |(h, v), c| {
        (h.max(usize::from(c.h)), v.max(usize::from(c.v)))
    });
    let grid = Grid {
        mcus_w: width.div_ceil(8 * h_max),
        mcus_h: height.div_ceil(8 * v_max),
    };
    let layouts = walk
        .components
        .iter()
        .map(|c| {
            let (h, v) = (usize::from(c.h), usize::from(c.v));
            let stride = grid.mcus_w * h;
            Layout {
                id: c.id,
                h,
                v,
                blocks_w: (width * h).div_ceil(h_max).div_ceil(8),
                blocks_h: (height * v).div_ceil(v_max).div_ceil(8),
                stride,
                padded: stride * grid.mcus_h * v,
            }
        })
        .collect();
    (grid, layouts)
}

impl Grid {
    /// The units a scan codes: its one component's own blocks in raster
    /// order (`single`, the padded grid left out), else MCUs.
    pub fn units(&self, single: Option<&Layout>) -> usize {
        match single {
            Some(l) => l.blocks_w * l.blocks_h,
            None => self.mcus_w * self.mcus_h,
        }
    }

    /// The blocks of component `l` in `unit`, in coding order.
    pub fn unit_blocks(
        &self,
        l: &Layout,
        single: bool,
        unit: usize,
    ) -> impl Iterator<Item = usize> + use<> {
        let (bw, bh, x0, y0) = if single {
            let w = l.blocks_w.max(1);
            (1, 1, unit % w, unit / w)
        } else {
            let w = self.mcus_w.max(1);
            (l.h, l.v, (unit % w) * l.h, (unit / w) * l.v)
        };
        let stride = l.stride;
        (0..bh).flat_map(move |by| (0..bw).map(move |bx| (y0 + by) * stride + x0 + bx))
    }
}

/// How many restart intervals of a scan of `units` to read, given the
/// `found` ones: one more, empty, is allowed (an encoder may end the data
/// with one restart too many; libjpeg reads past it); otherwise the count
/// must be what `restart_interval` makes due.
pub(super) fn intervals_due(
    units: usize,
    restart_interval: usize,
    found: &[&[u8]],
) -> Result<usize, String> {
    let due = if restart_interval == 0 {
        1
    } else {
        units.div_ceil(restart_interval)
    };
    let extra_empty = found.len() == due + 1 && found[due].is_empty();
    if found.len() != due && !extra_empty {
        return Err(format!(
            "{} restart intervals where {due} were due",
            found.len()
        ));
    }
    Ok(due)
}

/// One scan header: (component index, DC table, AC table) per component, and
/// Ss, Se, Ah, Al.
pub(super) struct ScanHeader {
    pub comps: Vec<(usize, usize, usize)>,
    pub ss: usize,
    pub se: usize,
    pub ah: u8,
    pub al: u8,
}

/// Reads the body of a scan header (SOS); `index` finds a frame component
/// by its id.
pub(super) fn read_scan_header(
    s: &[u8],
    index: impl Fn(u8) -> Option<usize>,
    progressive: bool,
) -> Result<ScanHeader, Fault> {
    let ns = usize::from(s.first().copied().unwrap_or(0));
    let Some(params) = s.get(1 + 2 * ns..1 + 2 * ns + 3) else {
        return Err(Fault::Corrupt("scan header cut short".into()));
    };
    let mut comps = Vec::with_capacity(ns);
    for pair in s[1..1 + 2 * ns].chunks_exact(2) {
        let Some(p) = index(pair[0]) else {
            return Err(Fault::Corrupt(format!("scan names component {}", pair[0])));
        };
        comps.push((p, usize::from(pair[1] >> 4), usize::from(pair[1] & 15)));
    }
    // A sequential scan codes the whole block whatever it says (libjpeg
    // warns and reads 0..63).
    let (ss, se, ah, al) = if progressive {
        (params[0], params[1], params[2] >> 4, params[2] & 15)
    } else {
        (0, 63, 0, 0)
    };
    Ok(ScanHeader {
        comps,
        ss: usize::from(ss),
        se: usize::from(se).min(63),
        ah,
        al,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_and_their_blocks_follow_t81() {
        // 4:2:0, 40x20 pixels: 3x2 MCUs of 16x16; luma 6x4 padded blocks
        // (5x3 hold the image), chroma 3x2.
        let grid = Grid {
            mcus_w: 3,
            mcus_h: 2,
        };
        let luma = Layout {
            id: 1,
            h: 2,
            v: 2,
            blocks_w: 5,
            blocks_h: 3,
            stride: 6,
            padded: 24,
        };
        assert_eq!(grid.units(None), 6);
        assert_eq!(grid.units(Some(&luma)), 15);
        // MCU 4 (second row, second column): luma blocks (2..4, 2..4).
        let got: Vec<usize> = grid.unit_blocks(&luma, false, 4).collect();
        assert_eq!(got, [2 * 6 + 2, 2 * 6 + 3, 3 * 6 + 2, 3 * 6 + 3]);
        // Alone, unit 7 is the image's block (2, 1): the padding is skipped.
        let got: Vec<usize> = grid.unit_blocks(&luma, true, 7).collect();
        assert_eq!(got, [6 + 2]);
        assert_eq!(intervals_due(15, 0, &[b"x"]), Ok(1));
        assert_eq!(intervals_due(15, 4, &[b"a", b"b", b"c", b"d"]), Ok(4));
        assert_eq!(intervals_due(15, 4, &[b"a", b"b", b"c", b"d", b""]), Ok(4));
        assert!(intervals_due(15, 4, &[b"a", b"b", b"c"]).is_err());
    }
}
