//! Arithmetic-coded JPEG (SOF9 sequential, SOF10 progressive), read by
//! transcoding to Huffman coding.
//!
//! The QM-coder of ITU-T T.81 Annex D, with the statistical models of
//! Annex F.1.4 (sequential) and G.1.3 (progressive), decodes every block's
//! quantised coefficients; [`transcode`] writes them out again as one
//! baseline Huffman-coded scan with the standard tables of Annex K, which
//! the ordinary decoder reads. The coefficients, the quantisation tables,
//! the sampling factors and the colour markers (JFIF, Adobe) are carried
//! over unchanged, so the pixels are those any decoder makes of the
//! original: a decoder's dequantisation, IDCT, upsampling and colour
//! conversion do not depend on how the coefficients were entropy-coded
//! (what `jpegtran -arithmetic` relies on too).
//!
//! Invariants: the stream was first accepted by
//! [`super::jpeg_stream::walk`] (markers, tables, scan parameters and the
//! restart markers' order are checked there); this module never panics on
//! its bytes. Where libjpeg reads damaged coded data with a warning (a
//! coefficient past the end of the band, a magnitude of 16 bits or more),
//! the image is refused as corrupt, as the Huffman path refuses its damaged
//! data. Coded data may end before its last decisions: the encoder drops
//! trailing zero bytes, and the decoder reads zeros past the end (Annex D).
//! Coefficients that baseline coding cannot hold (outside ±1023, DC steps
//! beyond ±2047: never made by an 8-bit encoder) are refused as corrupt.

use super::jpeg_blocks::{intervals_due, layout, read_scan_header, Grid, Layout, ScanHeader};
use super::jpeg_stream::{segments, standard_dht, standard_table, Fault, Walk};

/// Table D.2 of T.81: for each probability state, its Qe, the next state
/// after an LPS and after an MPS, and whether an LPS switches which
/// symbol is the more probable.
#[rustfmt::skip]
const QE: [(u16, u8, u8, bool); 113] = [
    (0x5a1d, 1, 1, true), (0x2586, 14, 2, false), (0x1114, 16, 3, false), (0x080b, 18, 4, false),
    (0x03d8, 20, 5, false), (0x01da, 23, 6, false), (0x00e5, 25, 7, false), (0x006f, 28, 8, false),
    (0x0036, 30, 9, false), (0x001a, 33, 10, false), (0x000d, 35, 11, false), (0x0006, 9, 12, false),
    (0x0003, 10, 13, false), (0x0001, 12, 13, false), (0x5a7f, 15, 15, true), (0x3f25, 36, 16, false),
    (0x2cf2, 38, 17, false), (0x207c, 39, 18, false), (0x17b9, 40, 19, false), (0x1182, 42, 20, false),
    (0x0cef, 43, 21, false), (0x09a1, 45, 22, false), (0x072f, 46, 23, false), (0x055c, 48, 24, false),
    (0x0406, 49, 25, false), (0x0303, 51, 26, false), (0x0240, 52, 27, false), (0x01b1, 54, 28, false),
    (0x0144, 56, 29, false), (0x00f5, 57, 30, false), (0x00b7, 59, 31, false), (0x008a, 60, 32, false),
    (0x0068, 62, 33, false), (0x004e, 63, 34, false), (0x003b, 32, 35, false), (0x002c, 33, 9, false),
    (0x5ae1, 37, 37, true), (0x484c, 64, 38, false), (0x3a0d, 65, 39, false), (0x2ef1, 67, 40, false),
    (0x261f, 68, 41, false), (0x1f33, 69, 42, false), (0x19a8, 70, 43, false), (0x1518, 72, 44, false),
    (0x1177, 73, 45, false), (0x0e74, 74, 46, false), (0x0bfb, 75, 47, false), (0x09f8, 77, 48, false),
    (0x0861, 78, 49, false), (0x0706, 79, 50, false), (0x05cd, 48, 51, false), (0x04de, 50, 52, false),
    (0x040f, 50, 53, false), (0x0363, 51, 54, false), (0x02d4, 52, 55, false), (0x025c, 53, 56, false),
    (0x01f8, 54, 57, false), (0x01a4, 55, 58, false), (0x0160, 56, 59, false), (0x0125, 57, 60, false),
    (0x00f6, 58, 61, false), (0x00cb, 59, 62, false), (0x00ab, 61, 63, false), (0x008f, 61, 32, false),
    (0x5b12, 65, 65, true), (0x4d04, 80, 66, false), (0x412c, 81, 67, false), (0x37d8, 82, 68, false),
    (0x2fe8, 83, 69, false), (0x293c, 84, 70, false), (0x2379, 86, 71, false), (0x1edf, 87, 72, false),
    (0x1aa9, 87, 73, false), (0x174e, 72, 74, false), (0x1424, 72, 75, false), (0x119c, 74, 76, false),
    (0x0f6b, 74, 77, false), (0x0d51, 75, 78, false), (0x0bb6, 77, 79, false), (0x0a40, 77, 48, false),
    (0x5832, 80, 81, true), (0x4d1c, 88, 82, false), (0x438e, 89, 83, false), (0x3bdd, 90, 84, false),
    (0x34ee, 91, 85, false), (0x2eae, 92, 86, false), (0x299a, 93, 87, false), (0x2516, 86, 71, false),
    (0x5570, 88, 89, true), (0x4ca9, 95, 90, false), (0x44d9, 96, 91, false), (0x3e22, 97, 92, false),
    (0x3824, 99, 93, false), (0x32b4, 99, 94, false), (0x2e17, 93, 86, false), (0x56a8, 95, 96, true),
    (0x4f46, 101, 97, false), (0x47e5, 102, 98, false), (0x41cf, 103, 99, false), (0x3c3d, 104, 100, false),
    (0x375e, 99, 93, false), (0x5231, 105, 102, false), (0x4c0f, 106, 103, false), (0x4639, 107, 104, false),
    (0x415e, 103, 99, false), (0x5627, 105, 106, true), (0x50e7, 108, 107, false), (0x4b85, 109, 103, false),
    (0x5597, 110, 109, false), (0x504f, 111, 107, false), (0x5a10, 110, 111, true), (0x5522, 112, 109, false),
    (0x59eb, 112, 111, true),
];

/// One adaptive probability estimate (a "bin" of a statistics area): its
/// state in [`QE`] and the sense of its more probable symbol. All start at
/// state 0, MPS 0, at every scan and restart.
#[derive(Debug, Clone, Copy, Default)]
struct Bin {
    state: u8,
    mps: u8,
}

/// The QM-coder's decoder (Annex D.2) over one restart interval's coded
/// bytes, stuffed zeros still in.
struct Decoder<'a> {
    data: &'a [u8],
    pos: usize,
    /// The code register: its upper 16 bits are Cx, compared with A.
    c: u32,
    /// The interval: 0x10000 at the start, 0x8000..0xFFFF between decisions.
    a: u32,
    /// Bits of C's low byte left before the next byte is read.
    ct: u32,
}

impl<'a> Decoder<'a> {
    /// INITDEC: the first two bytes fill Cx.
    fn new(data: &'a [u8]) -> Self {
        let mut d = Decoder {
            data,
            pos: 0,
            c: 0,
            a: 0x10000,
            ct: 0,
        };
        d.byte_in();
        d.c <<= 8;
        d.byte_in();
        d.c <<= 8;
        d
    }

    /// BYTEIN: the next byte into bits 8–15 of C. 0xFF 0x00 is a 0xFF (fill
    /// bytes 0xFF before it are swallowed, as libjpeg does); past the end
    /// the coder reads zeros.
    #[inline]
    fn byte_in(&mut self) {
        let Some(&b) = self.data.get(self.pos) else {
            return;
        };
        if b != 0xFF {
            self.pos += 1;
            self.c += u32::from(b) << 8;
            return;
        }
        let mut k = self.pos + 1;
        while self.data.get(k) == Some(&0xFF) {
            k += 1;
        }
        if self.data.get(k) == Some(&0x00) {
            self.pos = k + 1;
            self.c += 0xFF << 8;
        } else {
            self.pos = self.data.len();
        }
    }

    #[inline(always)]
    fn renormalise(&mut self) {
        // Shift A left until its top bit (0x8000) is set, reading a byte
        // into C whenever its low byte is used up: the bit-by-bit loop of
        // RENORM_D, in runs. A is never 0 here.
        let mut shift = self.a.leading_zeros() - 16;
        while shift > 0 {
            if self.ct == 0 {
                self.byte_in();
                self.ct = 8;
            }
            let run = shift.min(self.ct);
            self.a <<= run;
            self.c <<= run;
            self.ct -= run;
            shift -= run;
        }
    }

    /// DECODE (D.2.4): one binary decision with the estimate `bin`, which
    /// adapts (D.2.5) whenever the interval is renormalised.
    #[inline(always)]
    fn decode(&mut self, bin: &mut Bin) -> u8 {
        let (qe, next_lps, next_mps, switch) = QE[usize::from(bin.state)];
        let qe = u32::from(qe);
        self.a -= qe;
        // Which symbol, and whether it was the less probable one.
        let lps = if (self.c >> 16) < self.a {
            if self.a >= 0x8000 {
                return bin.mps;
            }
            // The MPS's sub-interval came out smaller than the LPS's: the
            // two exchange.
            self.a < qe
        } else {
            self.c -= self.a << 16;
            let lps = self.a >= qe;
            self.a = qe;
            lps
        };
        let d = if lps {
            let d = 1 - bin.mps;
            if switch {
                bin.mps = d;
            }
            bin.state = next_lps;
            d
        } else {
            bin.state = next_mps;
            bin.mps
        };
        self.renormalise();
        d
    }

    /// A decision at the fixed estimate Qe = 0x5A1D, MPS 0 (signs of AC
    /// coefficients, refinement bits): state 0 of a bin thrown away.
    fn decode_fixed(&mut self) -> u8 {
        self.decode(&mut Bin::default())
    }
}

/// Conditioning of one DC statistics area (DAC, F.1.4.4.1.2): differences
/// up to 2^(L−1) in size count as zero, above 2^U as large.
#[derive(Debug, Clone, Copy)]
struct DcConditioning {
    l: u8,
    u: u8,
}

/// Statistics areas and conditioning, per table slot (libjpeg allows 16).
struct Model {
    dc: [[Bin; 64]; 16],
    ac: [[Bin; 256]; 16],
    dc_cond: [DcConditioning; 16],
    /// Kx of each AC area: bands up to it and beyond it have their own
    /// magnitude bins.
    ac_kx: [u8; 16],
}

impl Model {
    fn new() -> Box<Self> {
        Box::new(Model {
            dc: [[Bin::default(); 64]; 16],
            ac: [[Bin::default(); 256]; 16],
            dc_cond: [DcConditioning { l: 0, u: 1 }; 16],
            ac_kx: [5; 16],
        })
    }
}

/// A DC difference (F.1.4.1, Figures F.19–F.24) with the statistics `st`
/// in the context `ctx` of the component's previous difference, which it
/// updates.
fn decode_dc_diff(
    d: &mut Decoder,
    st: &mut [Bin; 64],
    ctx: &mut usize,
    cond: DcConditioning,
) -> Result<i32, Fault> {
    let s0 = *ctx;
    if d.decode(&mut st[s0]) == 0 {
        *ctx = 0;
        return Ok(0);
    }
    let sign = usize::from(d.decode(&mut st[s0 + 1]));
    let magnitude = if d.decode(&mut st[s0 + 2 + sign]) == 0 {
        1
    } else {
        magnitude_tail(d, st, 20, 1, "a DC difference")?
    };
    // The context of the next difference: its size against 2^(L-1) and
    // 2^U (zero, small or large; positive or negative).
    *ctx = if 2 * magnitude <= 1 << cond.l {
        0
    } else if magnitude <= 1 << cond.u {
        4 + 4 * sign
    } else {
        12 + 4 * sign
    };
    Ok(if sign == 1 { -magnitude } else { magnitude })
}

/// The size of a nonzero AC coefficient at band index `k` (F.1.4.2,
/// Figures F.21–F.24 with the AC bins of Table F.5), its sign already
/// decoded; `at` is the coefficient's S0 + 1 bin.
fn decode_ac_magnitude(
    d: &mut Decoder,
    st: &mut [Bin; 256],
    at: usize,
    k: usize,
    kx: u8,
) -> Result<i32, Fault> {
    if d.decode(&mut st[at]) == 0 {
        return Ok(1);
    }
    if d.decode(&mut st[at]) == 0 {
        return Ok(2);
    }
    let x = if k <= usize::from(kx) { 189 } else { 217 };
    magnitude_tail(d, st, x, 2, "an AC coefficient")
}

/// The rest of a magnitude of at least `m` + 1 (`m` a power of two):
/// `m` doubles while the bins from `x` on say so (the size categories of
/// F.1.4.3.1), then the bits below it come from the bin 14 above the last
/// one read (Figures F.23, F.24).
fn magnitude_tail(
    d: &mut Decoder,
    st: &mut [Bin],
    mut x: usize,
    mut m: i32,
    what: &str,
) -> Result<i32, Fault> {
    while d.decode(&mut st[x]) == 1 {
        m <<= 1;
        if m == 0x8000 {
            return Err(corrupt(&format!("{what} of 16 bits or more")));
        }
        x += 1;
    }
    let mut v = m;
    let mut bit = m;
    while bit > 1 {
        bit >>= 1;
        if d.decode(&mut st[x + 14]) == 1 {
            v |= bit;
        }
    }
    Ok(v + 1)
}

/// The first (or only) coding of the band `ss..=se` of one block, values
/// scaled by 2^al: sequential AC (ss 1, se 63) and progressive AC first
/// scans (F.1.4.2, G.1.3.2).
fn decode_ac_first(
    d: &mut Decoder,
    st: &mut [Bin; 256],
    kx: u8,
    block: &mut [i16; 64],
    (ss, se, al): (usize, usize, u8),
) -> Result<(), Fault> {
    let mut k = ss;
    while k <= se {
        let mut at = 3 * (k - 1);
        if d.decode(&mut st[at]) == 1 {
            break; // end of block
        }
        while d.decode(&mut st[at + 1]) == 0 {
            at += 3;
            k += 1;
            if k > se {
                return Err(corrupt("a coefficient past the end of its band"));
            }
        }
        let negative = d.decode_fixed() == 1;
        let v = decode_ac_magnitude(d, st, at + 2, k, kx)?;
        let v = if negative { -v } else { v };
        // libjpeg keeps 16-bit coefficients; values that wrap are refused
        // when re-coded.
        block[k] = (v << al) as i16;
        k += 1;
    }
    Ok(())
}

/// A progressive AC refinement scan over one block (G.1.3.3): one more
/// bit of each coefficient already nonzero, and coefficients newly ±2^al.
fn decode_ac_refine(
    d: &mut Decoder,
    st: &mut [Bin; 256],
    block: &mut [i16; 64],
    (ss, se, al): (usize, usize, u8),
) -> Result<(), Fault> {
    let p1 = 1i16.wrapping_shl(u32::from(al));
    // The band's last coefficient nonzero before this scan: no end of block
    // is coded up to it.
    let mut kex = se;
    while kex > 0 && block[kex] == 0 {
        kex -= 1;
    }
    let mut k = ss;
    while k <= se {
        let mut at = 3 * (k - 1);
        if k > kex && d.decode(&mut st[at]) == 1 {
            break;
        }
        loop {
            if block[k] != 0 {
                if d.decode(&mut st[at + 2]) == 1 {
                    block[k] = if block[k] < 0 {
                        block[k].wrapping_sub(p1)
                    } else {
                        block[k].wrapping_add(p1)
                    };
                }
                break;
            }
            if d.decode(&mut st[at + 1]) == 1 {
                block[k] = if d.decode_fixed() == 1 {
                    p1.wrapping_neg()
                } else {
                    p1
                };
                break;
            }
            at += 3;
            k += 1;
            if k > se {
                return Err(corrupt("a coefficient past the end of its band"));
            }
        }
        k += 1;
    }
    Ok(())
}

fn corrupt(what: &str) -> Fault {
    Fault::Corrupt(format!("arithmetic-coded data: {what}"))
}

/// A frame component and its coefficients, block by block in zigzag order,
/// over the whole MCU-padded grid.
struct Plane {
    layout: Layout,
    blocks: Vec<[i16; 64]>,
    /// The quantisation table in force at the component's first scan
    /// (libjpeg latches it there): precision byte 0 or 1, zigzag values.
    quant: Option<(u8, [u16; 64])>,
}

/// The bytes of an arithmetic-coded JPEG (`walk` its accepted structure)
/// as a baseline Huffman-coded JPEG of the same coefficients.
pub(crate) fn transcode(bytes: &[u8], walk: &Walk) -> Result<Vec<u8>, Fault> {
    let (grid, layouts) = layout(walk);
    let mut planes: Vec<Plane> = layouts
        .into_iter()
        .map(|layout| Plane {
            blocks: vec![[0; 64]; layout.padded],
            layout,
            quant: None,
        })
        .collect();
    let mut model = Model::new();
    let mut quant: [Option<(u8, [u16; 64])>; 4] = [None; 4];
    let mut restart_interval = 0usize;
    let mut markers: Vec<&[u8]> = Vec::new();
    let mut scanned = false;
    for seg in segments(bytes) {
        let body = seg.body;
        match seg.marker {
            0xDB => read_dqt(body, &mut quant)?,
            0xCC => read_dac(body, &mut model),
            0xDD if body.len() >= 2 => {
                restart_interval = usize::from(u16::from_be_bytes([body[0], body[1]]))
            }
            0xE0..=0xEF | 0xFE if !scanned => markers.push(seg.bytes),
            0xDA => {
                scanned = true;
                let scan = read_scan_header(
                    body,
                    |id| planes.iter().position(|p| p.layout.id == id),
                    walk.progressive,
                )?;
                for &(p, _, _) in &scan.comps {
                    let tq = usize::from(walk.components[p].tq);
                    if planes[p].quant.is_none() {
                        planes[p].quant = quant[tq];
                    }
                }
                decode_scan(
                    &scan,
                    &seg.intervals,
                    restart_interval,
                    &grid,
                    &mut planes,
                    &mut model,
                )?;
            }
            _ => {}
        }
    }
    encode_baseline(walk, &grid, &planes, &markers)
}

fn read_dqt(mut s: &[u8], quant: &mut [Option<(u8, [u16; 64])>; 4]) -> Result<(), Fault> {
    while let Some((&pq_tq, rest)) = s.split_first() {
        let (pq, tq) = (pq_tq >> 4, usize::from(pq_tq & 15));
        let size = if pq == 0 { 64 } else { 128 };
        let (Some(values), Some(slot)) = (rest.get(..size), quant.get_mut(tq)) else {
            return Err(Fault::Corrupt(
                "quantisation table segment cut short".into(),
            ));
        };
        let mut table = [0u16; 64];
        for (k, q) in table.iter_mut().enumerate() {
            *q = if pq == 0 {
                u16::from(values[k])
            } else {
                u16::from_be_bytes([values[2 * k], values[2 * k + 1]])
            };
        }
        *slot = Some((pq.min(1), table));
        s = &rest[size..];
    }
    Ok(())
}

/// DAC (B.2.4.3): the conditioning of DC (class 0) and AC (class 1)
/// statistics areas. The walk has checked L ≤ U.
fn read_dac(s: &[u8], model: &mut Model) {
    for pair in s.chunks_exact(2) {
        let (class, slot, value) = (pair[0] >> 4, usize::from(pair[0] & 15), pair[1]);
        if class == 0 {
            model.dc_cond[slot] = DcConditioning {
                l: value & 15,
                u: value >> 4,
            };
        } else {
            model.ac_kx[slot] = value;
        }
    }
}

/// Decodes one scan into the planes' coefficients. Statistics and DC
/// predictions start afresh at the scan and at every restart.
fn decode_scan(
    scan: &ScanHeader,
    intervals: &[&[u8]],
    restart_interval: usize,
    grid: &Grid,
    planes: &mut [Plane],
    model: &mut Model,
) -> Result<(), Fault> {
    let single = match scan.comps[..] {
        [(p, _, _)] => Some(&planes[p].layout),
        _ => None,
    };
    let units = grid.units(single);
    let single = single.is_some();
    intervals_due(units, restart_interval, intervals).map_err(|why| corrupt(&why))?;
    let mut last_dc = [0i32; 4];
    let mut ctx = [0usize; 4];
    let mut decoder = Decoder::new(intervals[0]);
    for unit in 0..units {
        if restart_interval > 0 && unit > 0 && unit % restart_interval == 0 {
            decoder = Decoder::new(intervals[unit / restart_interval]);
            last_dc = [0; 4];
            ctx = [0; 4];
            reset_statistics(scan, model);
        } else if unit == 0 {
            reset_statistics(scan, model);
        }
        for (i, &(p, td, ta)) in scan.comps.iter().enumerate() {
            let plane = &mut planes[p];
            for at in grid.unit_blocks(&plane.layout, single, unit) {
                let Some(block) = plane.blocks.get_mut(at) else {
                    return Err(Fault::Corrupt("block outside the frame".into()));
                };
                decode_block(
                    &mut decoder,
                    scan,
                    model,
                    (td, ta),
                    (&mut last_dc[i], &mut ctx[i]),
                    block,
                )?;
            }
        }
    }
    Ok(())
}

fn reset_statistics(scan: &ScanHeader, model: &mut Model) {
    for &(_, td, ta) in &scan.comps {
        model.dc[td] = [Bin::default(); 64];
        model.ac[ta] = [Bin::default(); 256];
    }
}

fn decode_block(
    d: &mut Decoder,
    scan: &ScanHeader,
    model: &mut Model,
    (td, ta): (usize, usize),
    (last_dc, ctx): (&mut i32, &mut usize),
    block: &mut [i16; 64],
) -> Result<(), Fault> {
    let (td, ta) = (td.min(15), ta.min(15));
    if scan.ss == 0 {
        if scan.ah == 0 {
            let diff = decode_dc_diff(d, &mut model.dc[td], ctx, model.dc_cond[td])?;
            // Kept to 16 bits, as libjpeg keeps it.
            *last_dc = i32::from((*last_dc + diff) as i16);
            block[0] = (*last_dc << scan.al) as i16;
        } else if d.decode_fixed() == 1 {
            block[0] |= 1i16.wrapping_shl(u32::from(scan.al));
        }
    }
    let band = (scan.ss.max(1), scan.se, scan.al);
    if scan.se == 0 || band.0 > band.1 {
        return Ok(());
    }
    if scan.ah == 0 {
        decode_ac_first(d, &mut model.ac[ta], model.ac_kx[ta], block, band)
    } else {
        decode_ac_refine(d, &mut model.ac[ta], block, band)
    }
}

/// Huffman code words of one table: (code, length) by symbol.
struct Codes([(u16, u8); 256]);

impl Codes {
    /// The canonical codes of a table given as counts per length and
    /// symbols (Annex C).
    fn new(bits: &[u8; 16], values: &[u8]) -> Codes {
        let mut codes = [(0u16, 0u8); 256];
        let mut code = 0u16;
        let mut symbols = values.iter();
        for (len, &count) in bits.iter().enumerate() {
            for _ in 0..count {
                if let Some(&s) = symbols.next() {
                    codes[usize::from(s)] = (code, len as u8 + 1);
                }
                code = code.wrapping_add(1);
            }
            code = code.wrapping_shl(1);
        }
        Codes(codes)
    }
}

/// Entropy-coded bytes, 0xFF stuffed with 0x00.
#[derive(Default)]
struct BitWriter {
    out: Vec<u8>,
    acc: u64,
    n: u32,
}

impl BitWriter {
    /// Appends the low `len` bits of `bits` (at most 32).
    #[inline(always)]
    fn put(&mut self, bits: u32, len: u32) {
        self.acc = (self.acc << len) | (u64::from(bits) & ((1u64 << len) - 1));
        self.n += len;
        if self.n >= 32 {
            self.n -= 32;
            let word = ((self.acc >> self.n) as u32).to_be_bytes();
            if word.contains(&0xFF) {
                word.into_iter().for_each(|b| self.push(b));
            } else {
                self.out.extend_from_slice(&word);
            }
            self.acc &= (1u64 << self.n) - 1;
        }
    }

    /// Pads the last byte with ones (F.1.2.3).
    fn finish(mut self) -> Vec<u8> {
        let pad = (8 - self.n % 8) % 8;
        self.put((1 << pad) - 1, pad);
        for k in (0..self.n / 8).rev() {
            self.push((self.acc >> (8 * k)) as u8);
        }
        self.out
    }

    /// One byte of coded data; 0xFF is followed by a stuffed 0x00.
    fn push(&mut self, b: u8) {
        self.out.push(b);
        if b == 0xFF {
            self.out.push(0);
        }
    }
}

/// The size category of a value and its low bits as coded (F.1.2.1).
fn category(v: i32) -> (u32, u32) {
    let size = 32 - v.unsigned_abs().leading_zeros();
    let bits = if v < 0 { v - 1 } else { v } as u32;
    (size, bits)
}

fn encode_block(
    w: &mut BitWriter,
    block: &[i16; 64],
    pred: &mut i32,
    (dc, ac): (&Codes, &Codes),
) -> Result<(), Fault> {
    // An 8-bit encoder's coefficients fit baseline coding by design (AC
    // within ±1023, DC steps within ±2047): beyond, the data is damaged.
    let range = |what: &str| corrupt(&format!("{what} beyond the 8-bit range"));
    let diff = i32::from(block[0]) - *pred;
    *pred = i32::from(block[0]);
    let (size, bits) = category(diff);
    if size > 11 {
        return Err(range("a DC step"));
    }
    let (code, len) = dc.0[size as usize];
    w.put(
        u32::from(code) << size | (bits & ((1 << size) - 1)),
        u32::from(len) + size,
    );
    // The nonzero AC coefficients as bits (a branch-free pass), then only
    // those visited: most of a block is zero.
    let nonzero = block[1..]
        .iter()
        .enumerate()
        .fold(0u64, |m, (k, &v)| m | (u64::from(v != 0) << k));
    let mut rest = nonzero;
    let mut next = 0u32;
    while rest != 0 {
        let k = rest.trailing_zeros();
        rest &= rest - 1;
        let v = block[k as usize + 1];
        let mut run = k - next;
        next = k + 1;
        while run > 15 {
            let (code, len) = ac.0[0xF0];
            w.put(u32::from(code), u32::from(len));
            run -= 16;
        }
        let (size, bits) = category(i32::from(v));
        if size > 10 {
            return Err(range("an AC coefficient"));
        }
        let (code, len) = ac.0[(run << 4 | size) as usize];
        w.put(
            u32::from(code) << size | (bits & ((1 << size) - 1)),
            u32::from(len) + size,
        );
    }
    if next < 63 {
        let (code, len) = ac.0[0x00];
        w.put(u32::from(code), u32::from(len));
    }
    Ok(())
}

fn segment(out: &mut Vec<u8>, marker: u8, body: &[u8]) {
    out.extend_from_slice(&[0xFF, marker]);
    out.extend_from_slice(&((body.len() + 2) as u16).to_be_bytes());
    out.extend_from_slice(body);
}

/// The baseline stream: the source's APPn and COM segments (colour
/// markers, EXIF), each component's latched quantisation table in its own
/// slot, one interleaved scan (one component: its own blocks).
fn encode_baseline(
    walk: &Walk,
    grid: &Grid,
    planes: &[Plane],
    markers: &[&[u8]],
) -> Result<Vec<u8>, Fault> {
    let mut out = vec![0xFF, 0xD8];
    for m in markers {
        out.extend_from_slice(m);
    }
    let mut dqt = Vec::new();
    let mut wide = false;
    for (i, p) in planes.iter().enumerate() {
        // A component no scan coded reads as zeros; its table is unused.
        let (pq, table) = p.quant.unwrap_or((0, [1; 64]));
        wide |= pq == 1;
        dqt.push(pq << 4 | i as u8);
        for q in table {
            if pq == 0 {
                dqt.push(q as u8);
            } else {
                dqt.extend_from_slice(&q.to_be_bytes());
            }
        }
    }
    segment(&mut out, 0xDB, &dqt);
    let mut sof = vec![8];
    sof.extend_from_slice(&(walk.height as u16).to_be_bytes());
    sof.extend_from_slice(&(walk.width as u16).to_be_bytes());
    sof.push(planes.len() as u8);
    let single = planes.len() == 1;
    for (i, p) in planes.iter().enumerate() {
        // One component's sampling factors mean nothing (libjpeg ignores
        // them); 1x1 is what every decoder reads.
        let hv = if single {
            0x11
        } else {
            (p.layout.h << 4 | p.layout.v) as u8
        };
        sof.extend_from_slice(&[p.layout.id, hv, i as u8]);
    }
    // Extended sequential when a table has 16-bit steps (baseline allows
    // only 8).
    segment(&mut out, if wide { 0xC1 } else { 0xC0 }, &sof);
    out.extend_from_slice(&standard_dht(&[(0, 0), (1, 0), (0, 1), (1, 1)]));
    let mut sos = vec![planes.len() as u8];
    for (i, p) in planes.iter().enumerate() {
        sos.extend_from_slice(&[p.layout.id, if i == 0 { 0x00 } else { 0x11 }]);
    }
    sos.extend_from_slice(&[0, 63, 0]);
    segment(&mut out, 0xDA, &sos);
    let tables = [0u8, 1].map(|slot| {
        let (bits, values) = standard_table(0, slot);
        let dc = Codes::new(bits, values);
        let (bits, values) = standard_table(1, slot);
        (dc, Codes::new(bits, values))
    });
    let mut w = BitWriter {
        // Huffman coding of the same coefficients: about as long.
        out: Vec::with_capacity(2 * walk.end),
        ..BitWriter::default()
    };
    let mut preds = vec![0i32; planes.len()];
    let units = grid.units(if single {
        Some(&planes[0].layout)
    } else {
        None
    });
    for unit in 0..units {
        for (i, p) in planes.iter().enumerate() {
            let t = &tables[usize::from(i > 0)];
            for at in grid.unit_blocks(&p.layout, single, unit) {
                encode_block(&mut w, &p.blocks[at], &mut preds[i], (&t.0, &t.1))?;
            }
        }
    }
    out.extend(w.finish());
    out.extend_from_slice(&[0xFF, 0xD9]);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::decode_rgb8;

    fn fixtures() -> Vec<(String, Vec<u8>, Vec<u8>)> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/jpeg-arith");
        let mut out = Vec::new();
        for e in std::fs::read_dir(&dir).unwrap() {
            let name = e.unwrap().file_name().into_string().unwrap();
            if let Some(stem) = name.strip_suffix(".arith.jpg") {
                let arith = std::fs::read(dir.join(&name)).unwrap();
                let huff = std::fs::read(dir.join(format!("{stem}.huff.jpg"))).unwrap();
                out.push((stem.to_string(), arith, huff));
            }
        }
        out.sort();
        out
    }

    /// `tests/data/jpeg-arith/make.py`: each arithmetic file is `jpegtran
    /// -arithmetic` of its Huffman twin (the same coefficients), so both
    /// decode to the same pixels, exactly; sequential and progressive
    /// (successive approximation included), restarts, one component per
    /// scan, gray, CMYK, 16-bit quantisation tables, a size not a multiple
    /// of the MCU.
    #[test]
    fn an_arithmetic_jpeg_decodes_as_its_huffman_twin() {
        let cases = fixtures();
        assert_eq!(cases.len(), 11);
        for (name, arith, huff) in cases {
            let a =
                decode_rgb8(&arith, Default::default()).unwrap_or_else(|e| panic!("{name}: {e}"));
            let h = decode_rgb8(&huff, Default::default()).unwrap();
            assert_eq!((a.width, a.height), (61, 45), "{name}");
            assert!(a.data == h.data, "{name}: pixels differ");
        }
    }

    fn fixture(name: &str) -> Vec<u8> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/jpeg-arith");
        std::fs::read(dir.join(name)).unwrap()
    }

    /// Offset of the first segment of `marker`.
    fn find(b: &[u8], marker: u8) -> usize {
        b.windows(2).position(|w| w == [0xFF, marker]).unwrap()
    }

    fn error(b: &[u8]) -> String {
        decode_rgb8(b, Default::default()).unwrap_err().to_string()
    }

    /// Every cut is refused (the walk finds no end marker); byte flips
    /// anywhere decode or are refused, never panic.
    #[test]
    fn damaged_arithmetic_jpegs_are_refused_or_decoded_never_panic() {
        for (name, arith, _) in fixtures() {
            for cut in (4..arith.len()).step_by(7) {
                let e = error(&arith[..cut]);
                assert!(e.starts_with("corrupt jpeg"), "{name} cut at {cut}: {e}");
            }
            let mut state = 0x9E37_79B9u32;
            for _ in 0..150 {
                state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                let at = state as usize % arith.len();
                let mut b = arith.clone();
                b[at] ^= 1 << (state >> 29);
                let _ = decode_rgb8(&b, Default::default());
            }
        }
    }

    /// DAC values libjpeg refuses are refused; in a Huffman-coded file a
    /// DAC segment means nothing and is skipped, as libjpeg skips it.
    #[test]
    fn conditioning_segments_are_checked_and_ignored_where_unused() {
        let arith = fixture("seq-420.arith.jpg");
        let dac = find(&arith, 0xCC);
        // The first pair: DC table 0, U<<4 | L.
        let mut b = arith.clone();
        b[dac + 5] = 0x01;
        assert_eq!(error(&b), "corrupt jpeg: DAC DC conditioning L=1 above U=0");
        let mut b = arith.clone();
        b[dac + 4] = 0x20;
        assert_eq!(error(&b), "corrupt jpeg: DAC table index 32 (0 to 31)");
        let huff = fixture("seq-420.huff.jpg");
        let sos = find(&huff, 0xDA);
        let mut with_dac = huff[..sos].to_vec();
        with_dac.extend_from_slice(&[0xFF, 0xCC, 0, 6, 0x00, 0x52, 0x10, 0x02]);
        with_dac.extend_from_slice(&huff[sos..]);
        let plain = decode_rgb8(&huff, Default::default()).unwrap();
        assert_eq!(decode_rgb8(&with_dac, Default::default()).unwrap(), plain);
    }

    /// Restart intervals: one missing is damage, named; one too many at
    /// the end (empty) is read past, as libjpeg reads past it.
    #[test]
    fn restart_intervals_are_counted() {
        let arith = fixture("seq-444-restart.arith.jpg");
        let eoi = arith.len() - 2;
        let last = arith[..eoi]
            .windows(2)
            .rposition(|w| w[0] == 0xFF && (0xD0..=0xD7).contains(&w[1]))
            .unwrap();
        let mut b = arith.clone();
        b.drain(last..last + 2);
        assert_eq!(
            error(&b),
            "corrupt jpeg: arithmetic-coded data: 23 restart intervals where 24 were due"
        );
        let next = 0xD0 + (arith[last + 1] - 0xD0 + 1) % 8;
        let mut b = arith.clone();
        b.splice(eoi..eoi, [0xFF, next]);
        let want = decode_rgb8(&arith, Default::default()).unwrap();
        assert_eq!(decode_rgb8(&b, Default::default()).unwrap(), want);
    }

    /// Coefficients no 8-bit encoder makes (damaged data, decoded from
    /// mutated headers) are refused as corrupt; the largest legal ones are
    /// coded.
    #[test]
    fn coefficients_beyond_the_8_bit_range_are_damage() {
        let table = |class| {
            let (bits, values) = standard_table(class, 0);
            Codes::new(bits, values)
        };
        let (dc, ac) = (table(0), table(1));
        let code = |block: [i16; 64], pred: i32| {
            let mut w = BitWriter::default();
            let mut p = pred;
            encode_block(&mut w, &block, &mut p, (&dc, &ac)).map_err(|e| e.to_string())
        };
        let mut block = [0i16; 64];
        block[0] = -1024;
        block[63] = 1023;
        assert!(code(block, 1023).is_ok());
        block[63] = -1024;
        assert_eq!(
            code(block, 0).unwrap_err(),
            "arithmetic-coded data: an AC coefficient beyond the 8-bit range"
        );
        block[63] = 0;
        assert_eq!(
            code(block, 1024).unwrap_err(),
            "arithmetic-coded data: a DC step beyond the 8-bit range"
        );
    }

    /// The pixel limit holds before any coefficient is stored.
    #[test]
    fn the_pixel_limit_applies_before_decoding() {
        let arith = fixture("prog-420.arith.jpg");
        let limits = crate::image::DecodeLimits { max_pixels: 1000 };
        let e = decode_rgb8(&arith, limits).unwrap_err();
        assert!(
            matches!(e, crate::image::ImageError::TooLarge { .. }),
            "{e}"
        );
    }

    /// The decoder's byte input (the decisions themselves are checked
    /// through whole files above): a marker ends the data, and from there
    /// on it reads zeros; fill bytes before a stuffed zero are one 0xFF.
    #[test]
    fn the_decoder_reads_zeros_past_the_end_and_at_a_marker() {
        let mut d = Decoder::new(&[0x12, 0xFF, 0xD0, 0x77]);
        assert_eq!(d.c, 0x1200_0000);
        for _ in 0..40 {
            d.byte_in();
        }
        assert_eq!(d.c, 0x1200_0000, "a marker ends the data");
        let d = Decoder::new(&[0xFF, 0xFF, 0x00, 0x34]);
        assert_eq!(d.c, 0xFF34_0000, "0xFF (fill) 0xFF 0x00 is one 0xFF");
    }
}
