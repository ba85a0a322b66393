//! Lossless JPEG (SOF3, Huffman-coded), decoded here: the predictors of
//! ITU-T T.81 Annex H over 8-bit samples, with any point transform,
//! restart intervals, and one scan for all components or one per
//! component.
//!
//! Invariants: the stream was first accepted by
//! [`super::jpeg_stream::walk`] (8-bit samples; one or three components,
//! each sampled 1x1; not YCbCr-coded; predictor, Se, Ah and the point
//! transform in range; every Huffman table a prefix code, defined or one
//! of libjpeg's defaults). Samples are predicted from the samples decoded
//! before the point transform scales them, as libjpeg-turbo (Pillow's
//! decoder) does, and come out as its pixels exactly. Damaged coded data
//! (a code no table holds, data ending before the last sample) is refused
//! as corrupt, never read as zeros.

use super::jpeg_stream::{segments, standard_table, Fault, Walk};

/// A Huffman table as Annex F.2.2.3 decodes with it: per code length, the
/// largest code, and where its symbols start.
struct Table {
    /// Largest code of each length 1..=16; -1 where there is none.
    max_code: [i32; 17],
    /// First code of each length, and the index of its symbol.
    min_code: [i32; 17],
    first: [usize; 17],
    symbols: Vec<u8>,
}

impl Table {
    fn new(counts: &[u8; 16], symbols: &[u8]) -> Table {
        let mut t = Table {
            max_code: [-1; 17],
            min_code: [0; 17],
            first: [0; 17],
            symbols: symbols.to_vec(),
        };
        let (mut code, mut k) = (0i32, 0usize);
        for len in 1..=16 {
            let n = usize::from(counts[len - 1]);
            if n > 0 {
                t.first[len] = k;
                t.min_code[len] = code;
                code += n as i32;
                k += n;
                t.max_code[len] = code - 1;
            }
            code <<= 1;
        }
        t
    }
}

/// The bits of one restart interval's coded data, stuffed zeros removed.
struct Bits<'a> {
    data: &'a [u8],
    pos: usize,
    acc: u32,
    n: u32,
}

impl Bits<'_> {
    fn bit(&mut self) -> Result<u32, Fault> {
        if self.n == 0 {
            let Some(&b) = self.data.get(self.pos) else {
                return Err(corrupt("coded data ends before the last sample"));
            };
            // 0xFF is followed by its stuffed 0x00 (and fill bytes 0xFF):
            // the walk cut the data at the marker that ends it.
            self.pos += 1;
            if b == 0xFF {
                while self.data.get(self.pos) == Some(&0xFF) {
                    self.pos += 1;
                }
                self.pos += 1;
            }
            self.acc = u32::from(b);
            self.n = 8;
        }
        self.n -= 1;
        Ok((self.acc >> self.n) & 1)
    }

    fn bits(&mut self, count: u32) -> Result<u32, Fault> {
        let mut v = 0;
        for _ in 0..count {
            v = v << 1 | self.bit()?;
        }
        Ok(v)
    }

    /// One difference (H.1.2.2): its size by the table, then its bits;
    /// size 16 is 32768 with no bits.
    fn difference(&mut self, t: &Table) -> Result<i32, Fault> {
        let mut code = 0i32;
        let mut size = None;
        for len in 1..=16 {
            code = code << 1 | self.bit()? as i32;
            if code <= t.max_code[len] {
                let k = t.first[len] + (code - t.min_code[len]) as usize;
                size = t.symbols.get(k).copied();
                break;
            }
        }
        let size = size.ok_or_else(|| corrupt("a code no Huffman table holds"))?;
        Ok(match size {
            0 => 0,
            16 => 32768,
            s => {
                let s = u32::from(s);
                let v = self.bits(s)? as i32;
                if v < 1 << (s - 1) {
                    v - (1 << s) + 1
                } else {
                    v
                }
            }
        })
    }
}

fn corrupt(what: &str) -> Fault {
    Fault::Corrupt(format!("lossless jpeg data: {what}"))
}

/// Decodes the lossless JPEG `bytes` (accepted by `walk`) into `out` as
/// RGB8 (gray repeated), `walk.width` × `walk.height`.
pub(crate) fn decode(bytes: &[u8], walk: &Walk, out: &mut Vec<u8>) -> Result<(), Fault> {
    let (width, height) = (walk.width as usize, walk.height as usize);
    if width == 0 || height == 0 {
        return Err(Fault::Corrupt("a frame of no pixels".into()));
    }
    let mut planes = vec![vec![0u16; width * height]; walk.components.len()];
    // The point transform each component was coded with (its last scan's).
    let mut shifts = vec![0u32; walk.components.len()];
    let mut tables: [Option<Table>; 4] = [None, None, None, None];
    let mut restart_interval = 0usize;
    for segment in segments(bytes) {
        let seg = segment.body;
        match segment.marker {
            0xC4 => read_dht(seg, &mut tables),
            0xDD if seg.len() >= 2 => {
                restart_interval = usize::from(u16::from_be_bytes([seg[0], seg[1]]))
            }
            0xDA => {
                let ns = usize::from(seg.first().copied().unwrap_or(0));
                let Some(&[predictor, _, ah_al]) = seg.get(1 + 2 * ns..4 + 2 * ns) else {
                    return Err(Fault::Corrupt("scan header cut short".into()));
                };
                let mut comps = Vec::with_capacity(ns);
                for pair in seg[1..1 + 2 * ns].chunks_exact(2) {
                    let Some(p) = walk.components.iter().position(|c| c.id == pair[0]) else {
                        return Err(Fault::Corrupt(format!("scan names component {}", pair[0])));
                    };
                    let slot = usize::from(pair[1] >> 4) & 3;
                    if tables[slot].is_none() {
                        // libjpeg's default, as the walk allowed.
                        let (counts, symbols) = standard_table(0, slot as u8);
                        tables[slot] = Some(Table::new(counts, symbols));
                    }
                    comps.push((p, slot));
                }
                let shift = u32::from(ah_al & 15);
                for &(p, _) in &comps {
                    shifts[p] = shift;
                }
                let scan = Scan {
                    comps: &comps,
                    predictor,
                    shift,
                    restart_interval,
                };
                decode_scan(&scan, &segment.intervals, &tables, &mut planes, width)?;
            }
            _ => {}
        }
    }
    out.clear();
    out.reserve(width * height * 3);
    let sample = |p: usize, k: usize| (planes[p][k] << shifts[p]) as u8;
    if planes.len() == 1 {
        out.extend((0..width * height).flat_map(|k| [sample(0, k); 3]));
    } else {
        out.extend((0..width * height).flat_map(|k| [sample(0, k), sample(1, k), sample(2, k)]));
    }
    Ok(())
}

fn read_dht(mut s: &[u8], tables: &mut [Option<Table>; 4]) {
    // The walk checked the segment's lengths.
    while s.len() >= 17 {
        let (class, slot) = (s[0] >> 4, usize::from(s[0] & 15));
        let counts: [u8; 16] = s[1..17].try_into().unwrap_or([0; 16]);
        let n: usize = counts.iter().map(|&c| usize::from(c)).sum();
        let Some(symbols) = s.get(17..17 + n) else {
            return;
        };
        if class == 0 && slot < 4 {
            tables[slot] = Some(Table::new(&counts, symbols));
        }
        s = &s[17 + n..];
    }
}

struct Scan<'a> {
    /// (plane, DC table slot) per component, in scan order.
    comps: &'a [(usize, usize)],
    /// Ss: which of the seven predictors.
    predictor: u8,
    /// Al: the point transform.
    shift: u32,
    restart_interval: usize,
}

/// Decodes one scan into its planes. A restart interval is a whole number
/// of rows (libjpeg-turbo counts them so); each starts like the scan: its
/// first sample predicted from mid-grey, its first row from the left.
fn decode_scan(
    scan: &Scan,
    intervals: &[&[u8]],
    tables: &[Option<Table>; 4],
    planes: &mut [Vec<u16>],
    width: usize,
) -> Result<(), Fault> {
    let height = planes[0].len() / width;
    let rows_per_interval = match scan.restart_interval {
        0 => height,
        ri if ri % width == 0 => ri / width,
        ri => {
            return Err(Fault::Unsupported(format!(
                "lossless jpeg with a restart interval of {ri} samples, not whole rows of {width} (SOF3)"
            )))
        }
    };
    let due = height.div_ceil(rows_per_interval);
    let extra_empty = intervals.len() == due + 1 && intervals[due].is_empty();
    if intervals.len() != due && !extra_empty {
        return Err(corrupt(&format!(
            "{} restart intervals where {due} were due",
            intervals.len()
        )));
    }
    let first_value = 1i32 << (7 - scan.shift.min(7));
    for (i, data) in intervals.iter().take(due).enumerate() {
        let mut bits = Bits {
            data,
            pos: 0,
            acc: 0,
            n: 0,
        };
        let top = i * rows_per_interval;
        for y in top..(top + rows_per_interval).min(height) {
            for x in 0..width {
                for &(p, slot) in scan.comps {
                    let Some(table) = tables[slot].as_ref() else {
                        return Err(Fault::Corrupt(format!("no DC Huffman table {slot}")));
                    };
                    let diff = bits.difference(table)?;
                    let s = &mut planes[p];
                    let k = y * width + x;
                    let pred = if y == top {
                        if x == 0 {
                            first_value
                        } else {
                            i32::from(s[k - 1])
                        }
                    } else if x == 0 {
                        i32::from(s[k - width])
                    } else {
                        let (ra, rb, rc) = (
                            i32::from(s[k - 1]),
                            i32::from(s[k - width]),
                            i32::from(s[k - width - 1]),
                        );
                        match scan.predictor {
                            1 => ra,
                            2 => rb,
                            3 => rc,
                            4 => ra + rb - rc,
                            5 => ra + ((rb - rc) >> 1),
                            6 => rb + ((ra - rc) >> 1),
                            _ => (ra + rb) >> 1,
                        }
                    };
                    s[k] = ((pred + diff) & 0xFFFF) as u16;
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::image::decode_rgb8;

    fn fixture(name: &str) -> Vec<u8> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/jpeg-lossless");
        std::fs::read(dir.join(name)).unwrap()
    }

    fn error(b: &[u8]) -> String {
        decode_rgb8(b, Default::default()).unwrap_err().to_string()
    }

    /// Damaged files are refused or decoded, never a panic; every cut is
    /// refused.
    #[test]
    fn damaged_lossless_jpegs_are_refused_or_decoded_never_panic() {
        for name in [
            "rgb-pt1-p1-37x23.jpg",
            "gray-restart-p1-37x23.jpg",
            "rgb-separate-p4-37x23.jpg",
        ] {
            let b = fixture(name);
            for cut in (4..b.len()).step_by(5) {
                assert!(
                    error(&b[..cut]).starts_with("corrupt jpeg"),
                    "{name} cut at {cut}"
                );
            }
            let mut state = 0x1234_5678u32;
            for _ in 0..300 {
                state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                let mut c = b.clone();
                let at = state as usize % c.len();
                c[at] ^= 1 << (state >> 29);
                let _ = decode_rgb8(&c, Default::default());
            }
        }
    }

    /// Restart intervals: whole rows only (libjpeg-turbo counts them in
    /// rows), and as many as the rows need.
    #[test]
    fn restart_intervals_are_whole_rows_and_counted() {
        let b = fixture("gray-restart-p1-37x23.jpg");
        let dri = b.windows(2).position(|w| w == [0xFF, 0xDD]).unwrap();
        assert_eq!(b[dri + 4..dri + 6], (5u16 * 37).to_be_bytes());
        let mut c = b.clone();
        c[dri + 4..dri + 6].copy_from_slice(&(5u16 * 37 + 1).to_be_bytes());
        assert_eq!(
            error(&c),
            "unsupported image format: lossless jpeg with a restart interval of 186 samples, \
             not whole rows of 37 (SOF3)"
        );
        let mut c = b.clone();
        c[dri + 4..dri + 6].copy_from_slice(&(4u16 * 37).to_be_bytes());
        assert_eq!(
            error(&c),
            "corrupt jpeg: lossless jpeg data: 5 restart intervals where 6 were due"
        );
    }
}
