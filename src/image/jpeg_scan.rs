//! The Huffman-coded data of a JPEG's scans, walked to the bit as libjpeg
//! reads it, to find the damage libjpeg reports ("Corrupt JPEG data") and
//! decodes anyway, which zune-jpeg decodes without a word: coded data that
//! ends before the last block of its scan or restart interval ("premature
//! end of data segment": the missing blocks come out grey or black), whole
//! bytes left after the last block ("extraneous bytes before marker": the
//! Huffman decoding lost step with the data somewhere before; only more
//! than libjpeg's bit buffer may read ahead, which it drops unseen), a code
//! no table holds, a refinement coefficient of a size other than 1; and
//! progressive scans out of order ("Inconsistent progression sequence":
//! a refinement of coefficients no scan coded, an AC scan before the DC
//! scan of its component).
//!
//! Invariants: the stream was first accepted by
//! [`super::jpeg_stream::walk`] and repaired as the decoder sees it
//! (tables, scan parameters and restart markers checked there); this module
//! never panics on its bytes. Only how many bits each block takes matters,
//! so no coefficient value is kept: for a progressive frame, which
//! coefficients are nonzero (a refinement scan reads a correction bit for
//! each of those), one bit each. Fill bits after a block (the partial last
//! byte) are not checked, as libjpeg does not check them.

use super::jpeg_blocks::{intervals_due, layout, read_scan_header, Grid, Layout, ScanHeader};
use super::jpeg_stream::{segments, Fault, Walk};

fn corrupt(what: String) -> Fault {
    Fault::Corrupt(what)
}

/// A canonical Huffman table for decoding (T.81 Annex C and F.2.2.3).
struct Table {
    /// By the next [`FAST_BITS`] bits: the symbol and its code length
    /// (`len << 8 | symbol`); 0 where the code is longer.
    fast: Vec<u16>,
    /// The same, with the bits that follow the code (see [`extra_bits`])
    /// counted in the length; 0 where the two together are longer.
    with_extra: Vec<u16>,
    /// 0 for a DC table, 1 for an AC table.
    class: u8,
    /// By code length: the largest code of that length (-1 for none), and
    /// what turns a code of that length into an index into `values`.
    maxcode: [i32; 17],
    offset: [i32; 17],
    values: Vec<u8>,
}

/// Codes of up to this many bits are decoded by one lookup.
const FAST_BITS: u32 = 10;

/// The bits that follow a code in a Huffman scan: a DC symbol's size
/// (libjpeg reads at most 16), an AC symbol's low nibble (its size; 0 for
/// an end of band or a run of 16 zeros, whose run length bits a
/// progressive scan reads apart).
#[inline(always)]
fn extra_bits(class: u8, symbol: u8) -> u32 {
    if class == 0 {
        u32::from(symbol.min(16))
    } else {
        u32::from(symbol & 15)
    }
}

impl Table {
    fn new(class: u8, bits: &[u8], values: &[u8]) -> Table {
        let mut t = Table {
            fast: vec![0; 1 << FAST_BITS],
            with_extra: vec![0; 1 << FAST_BITS],
            class,
            maxcode: [-1; 17],
            offset: [0; 17],
            values: values.to_vec(),
        };
        let (mut code, mut k) = (0i32, 0usize);
        for len in 1..=16u32 {
            let n = usize::from(bits[len as usize - 1]);
            t.offset[len as usize] = k as i32 - code;
            for _ in 0..n {
                if len <= FAST_BITS && k < values.len() {
                    let first = (code as usize) << (FAST_BITS - len);
                    let count = 1usize << (FAST_BITS - len);
                    if let Some(slots) = t.fast.get_mut(first..first + count) {
                        slots.fill((len as u16) << 8 | u16::from(values[k]));
                    }
                    // Each value of the extra bits is a slot of its own.
                    let extra = extra_bits(class, values[k]);
                    if len + extra <= FAST_BITS {
                        if let Some(slots) = t.with_extra.get_mut(first..first + count) {
                            slots.fill(((len + extra) as u16) << 8 | u16::from(values[k]));
                        }
                    }
                }
                code += 1;
                k += 1;
            }
            if n > 0 {
                t.maxcode[len as usize] = code - 1;
            }
            code <<= 1;
        }
        t
    }

    /// The next symbol, or `None` for a code the table does not hold.
    #[inline(always)]
    fn decode(&self, bits: &mut Bits) -> Option<u8> {
        let peek = bits.peek16();
        let fast = self.fast[(peek >> (16 - FAST_BITS)) as usize];
        let (len, symbol) = if fast != 0 {
            (u32::from(fast >> 8), fast as u8)
        } else {
            self.decode_long(peek)?
        };
        bits.skip(len);
        Some(symbol)
    }

    /// The next symbol with the bits that follow its code (see
    /// [`extra_bits`]) taken too, or `None` for a code the table does not
    /// hold. One lookup for most codes: what a walk that keeps no
    /// coefficient value spends its time on.
    #[inline(always)]
    fn decode_with_extra(&self, bits: &mut Bits) -> Option<u8> {
        let peek = bits.peek16();
        let both = self.with_extra[(peek >> (16 - FAST_BITS)) as usize];
        if both != 0 {
            bits.skip(u32::from(both >> 8));
            return Some(both as u8);
        }
        let symbol = self.decode(bits)?;
        bits.skip(extra_bits(self.class, symbol));
        Some(symbol)
    }

    /// Codes longer than [`FAST_BITS`] (rare), and codes the table lacks:
    /// the code's length and its symbol. Kept out of line, and away from
    /// the reader's state, so that the state stays in registers.
    #[cold]
    #[inline(never)]
    fn decode_long(&self, peek: u32) -> Option<(u32, u8)> {
        for len in FAST_BITS + 1..=16 {
            let code = (peek >> (16 - len)) as i32;
            if code <= self.maxcode[len as usize] {
                let at = code + self.offset[len as usize];
                return usize::try_from(at)
                    .ok()
                    .and_then(|at| self.values.get(at))
                    .map(|&v| (len, v));
            }
        }
        None
    }
}

/// The bits of one restart interval's coded data, stuffing removed; reads
/// past the end give zeros (and are counted: see [`Bits::overrun`]).
struct Bits {
    data: Vec<u8>,
    /// Bytes loaded into `acc` so far, zeros past the end of `data`
    /// included; `8 * next - have` bits have been taken.
    next: usize,
    /// Loaded bits, the next one at bit 63. Below the `have` loaded bits it
    /// may hold the start of the bytes that follow (never anything else),
    /// which a later load ORs in again unchanged.
    acc: u64,
    /// How many bits `acc` holds (at most 64).
    have: u32,
}

impl Bits {
    /// `coded` is an interval's bytes as they stand in the file: 0xFF 0x00
    /// is a 0xFF byte (fill bytes 0xFF before it are swallowed, as libjpeg
    /// does).
    fn new(coded: &[u8]) -> Bits {
        let mut data = Vec::with_capacity(coded.len());
        let mut rest = coded;
        while let Some(i) = memchr::memchr(0xFF, rest) {
            data.extend_from_slice(&rest[..i]);
            let mut k = i + 1;
            while rest.get(k) == Some(&0xFF) {
                k += 1;
            }
            if rest.get(k) != Some(&0x00) {
                // The walk cut the data at its markers: nothing follows.
                rest = &[];
                break;
            }
            data.push(0xFF);
            rest = &rest[k + 1..];
        }
        data.extend_from_slice(rest);
        Bits {
            data,
            next: 0,
            acc: 0,
            have: 0,
        }
    }

    /// Loads whole bytes while they fit: eight at a time away from the end.
    #[inline(always)]
    fn fill(&mut self) {
        if let Some(word) = self
            .data
            .get(self.next..)
            .and_then(|rest| rest.first_chunk::<8>())
        {
            // `have` < 64 here: `fill` runs only when fewer than 16 bits
            // are loaded.
            self.acc |= u64::from_be_bytes(*word) >> self.have;
            let whole = (63 - self.have) / 8;
            self.next += whole as usize;
            self.have += 8 * whole;
        } else {
            (self.next, self.acc, self.have) =
                fill_tail(&self.data, self.next, self.acc, self.have);
        }
    }

    #[inline(always)]
    fn peek16(&mut self) -> u32 {
        if self.have < 16 {
            self.fill();
        }
        (self.acc >> 48) as u32
    }

    /// Takes `n` (at most 16) bits unread.
    #[inline(always)]
    fn skip(&mut self, n: u32) {
        if self.have < n {
            self.fill();
        }
        self.acc <<= n;
        self.have -= n;
    }

    /// The next `n` (at most 16) bits.
    #[inline]
    fn take(&mut self, n: u32) -> u32 {
        if n == 0 {
            return 0;
        }
        let v = self.peek16() >> (16 - n);
        self.skip(n);
        v
    }

    /// Bits taken so far.
    fn pos(&self) -> usize {
        8 * self.next - self.have as usize
    }

    /// Whether more bits were taken than the data holds.
    fn overrun(&self) -> bool {
        self.pos() > 8 * self.data.len()
    }

    /// Whole bytes after the last bit taken.
    fn left_over(&self) -> usize {
        self.data.len().saturating_sub(self.pos().div_ceil(8))
    }
}

/// [`Bits::fill`] near the end of the data, a byte at a time, zeros past
/// it; out of line and by value, so that the reader's state stays in
/// registers.
#[cold]
#[inline(never)]
fn fill_tail(data: &[u8], mut next: usize, mut acc: u64, mut have: u32) -> (usize, u64, u32) {
    while have <= 56 {
        let byte = data.get(next).copied().unwrap_or(0);
        next += 1;
        acc |= u64::from(byte) << (56 - have);
        have += 8;
    }
    (next, acc, have)
}

/// Whole bytes libjpeg's bit buffer may have read ahead, unused, when a
/// restart interval or a scan ends (64 bits on a 64-bit build): libjpeg
/// reports left-over bytes only when it has not read them ahead, so only
/// more than these are surely what it reports.
const READ_AHEAD: usize = 8;

/// A frame component as the scans see it.
struct Plane {
    layout: Layout,
    /// Progressive frames: by block, the zigzag positions whose coefficient
    /// is nonzero.
    nonzero: Vec<u64>,
    /// Progressive frames: by zigzag position, the point transform (Al)
    /// of the last scan that coded it; -1 before any (libjpeg's
    /// `coef_bits`).
    coef_bits: [i8; 64],
}

/// Walks the coded data of every scan of `bytes` (a Huffman-coded DCT
/// stream `walk` accepted, as repaired for the decoder) and refuses what
/// libjpeg reads with a "Corrupt JPEG data" warning.
pub(crate) fn check(bytes: &[u8], walk: &Walk) -> Result<(), Fault> {
    if walk.arithmetic || walk.lossless {
        // Their own decoders check their data.
        return Ok(());
    }
    let (grid, layouts) = layout(walk);
    let mut planes = planes(layouts, walk.progressive);
    let mut tables: [[Option<Table>; 4]; 2] = Default::default();
    let mut restart_interval = 0usize;
    let mut scan_no = 0;
    for seg in segments(bytes) {
        match seg.marker {
            0xC4 => read_dht(seg.body, &mut tables)?,
            0xDD if seg.body.len() >= 2 => {
                restart_interval = usize::from(u16::from_be_bytes([seg.body[0], seg.body[1]]));
            }
            0xDA => {
                scan_no += 1;
                let scan = next_scan(seg.body, scan_no, &mut planes, walk.progressive)?;
                walk_scan(
                    &scan,
                    &seg.intervals,
                    restart_interval,
                    &grid,
                    &mut planes,
                    &tables,
                )
                .map_err(|why| corrupt(format!("scan {scan_no}: {why}")))?;
            }
            _ => {}
        }
    }
    Ok(())
}

/// Checks only the order of a progressive frame's scans (see
/// [`progression`]), from their headers: no coded data is decoded, so it
/// costs what finding the scans does, cheap enough for every JPEG the
/// packer takes whatever its `--verify`. Other frames pass unread, as in
/// [`check`].
pub(crate) fn check_scan_order(bytes: &[u8], walk: &Walk) -> Result<(), Fault> {
    if !walk.progressive || walk.arithmetic || walk.lossless {
        return Ok(());
    }
    // Only the headers are read: no block records which coefficients are
    // nonzero.
    let mut planes = planes(layout(walk).1, false);
    for (n, seg) in segments(bytes).filter(|s| s.marker == 0xDA).enumerate() {
        next_scan(seg.body, n + 1, &mut planes, true)?;
    }
    Ok(())
}

/// The frame's components as the scans see them; `nonzero` keeps, by
/// block, which coefficients are nonzero (what walking a progressive
/// frame's refinement scans needs).
fn planes(layouts: Vec<Layout>, nonzero: bool) -> Vec<Plane> {
    layouts
        .into_iter()
        .map(|layout| Plane {
            nonzero: if nonzero {
                vec![0; layout.padded]
            } else {
                Vec::new()
            },
            coef_bits: [-1; 64],
            layout,
        })
        .collect()
}

/// The header of scan `scan_no` (from 1), its parameters checked and, in a
/// progressive frame, its place in the progression (recorded in `planes`).
fn next_scan(
    body: &[u8],
    scan_no: usize,
    planes: &mut [Plane],
    progressive: bool,
) -> Result<ScanHeader, Fault> {
    let scan = read_scan_header(
        body,
        |id| planes.iter().position(|p| p.layout.id == id),
        progressive,
    )?;
    if scan.comps.is_empty() || (scan.ss > 0 && scan.comps.len() != 1) {
        return Err(corrupt("scan parameters".into()));
    }
    if progressive {
        progression(&scan, planes).map_err(|why| corrupt(format!("scan {scan_no}: {why}")))?;
    }
    Ok(scan)
}

fn read_dht(mut s: &[u8], tables: &mut [[Option<Table>; 4]; 2]) -> Result<(), Fault> {
    while let Some((&tc_th, rest)) = s.split_first() {
        let Some(bits) = rest.get(..16) else {
            return Err(corrupt("Huffman table segment cut short".into()));
        };
        let n: usize = bits.iter().map(|&b| usize::from(b)).sum();
        let Some(values) = rest.get(16..16 + n) else {
            return Err(corrupt("Huffman table segment cut short".into()));
        };
        let (class, slot) = (usize::from(tc_th >> 4), usize::from(tc_th & 15));
        if let Some(place) = tables.get_mut(class).and_then(|c| c.get_mut(slot)) {
            *place = Some(Table::new(class as u8, bits, values));
        }
        s = &rest[16 + n..];
    }
    Ok(())
}

/// Checks that a progressive scan follows on from the scans before it as
/// libjpeg checks it (`start_pass_phuff_decoder`, "Inconsistent
/// progression sequence", a warning: it decodes the file anyway): an AC
/// scan of a component comes after a DC scan of it, and a scan's Ah is
/// the Al the last scan of each of its coefficients left (0 for a first
/// scan). Anything else is a damaged or badly made file: a scan lost or
/// its header changed, so that coefficients miss their DC or first pass or
/// take refinement bits meant for another bit plane. zune-jpeg decodes such
/// files as libjpeg does, to the same wrong pixels. Records the scan's Al
/// for the next.
fn progression(scan: &ScanHeader, planes: &mut [Plane]) -> Result<(), String> {
    let band = scan.ss..=scan.se.min(63);
    // libjpeg names the first inconsistency it meets, component by
    // component in scan order, and goes on updating: so does this, so the
    // error names the same coefficient as its warning.
    let mut first: Option<String> = None;
    for &(p, _, _) in &scan.comps {
        let bits = &mut planes[p].coef_bits;
        if scan.ss > 0 && bits[0] < 0 && first.is_none() {
            first = Some(format!(
                "component {p} coefficient 0: an AC scan before any DC scan of the component"
            ));
        }
        for k in band.clone() {
            if i16::from(scan.ah) != i16::from(bits[k].max(0)) && first.is_none() {
                let before = match bits[k] {
                    -1 => "no scan before coded it".to_string(),
                    al => format!("the scan before left Al {al}"),
                };
                first = Some(format!(
                    "component {p} coefficient {k}: Ah {} where {before}",
                    scan.ah
                ));
            }
            bits[k] = scan.al as i8;
        }
    }
    match first {
        None => Ok(()),
        Some(what) => Err(format!("inconsistent progression sequence for {what}")),
    }
}

/// The bits of one scan, interval by interval; the reason for the first
/// damage found.
fn walk_scan(
    scan: &ScanHeader,
    intervals: &[&[u8]],
    restart_interval: usize,
    grid: &Grid,
    planes: &mut [Plane],
    tables: &[[Option<Table>; 4]; 2],
) -> Result<(), String> {
    let single = match scan.comps[..] {
        [(p, _, _)] => Some(&planes[p].layout),
        _ => None,
    };
    let units = grid.units(single);
    let single = single.is_some();
    let due = intervals_due(units, restart_interval, intervals)?;
    let per_interval = if restart_interval == 0 {
        units.max(1)
    } else {
        restart_interval
    };
    if units == 0 {
        return Ok(());
    }
    // The tables each component's blocks read, looked up once.
    let table = |class: usize, slot: usize| -> Result<Option<&Table>, String> {
        tables[class][slot.min(3)]
            .as_ref()
            .map(Some)
            .ok_or_else(|| format!("no Huffman table {slot} of class {class}"))
    };
    let (reads_dc, reads_ac) = if scan.ss == 0 {
        (scan.ah == 0, scan.ah == 0 && scan.se > 0)
    } else {
        (false, true)
    };
    let mut comps = Vec::with_capacity(scan.comps.len());
    for &(p, td, ta) in &scan.comps {
        let dc = if reads_dc { table(0, td)? } else { None };
        let ac = if reads_ac { table(1, ta)? } else { None };
        comps.push((p, dc, ac));
    }
    // A sequential scan keeps nothing between blocks: only their number
    // per unit matters.
    let sequential = planes.iter().all(|p| p.nonzero.is_empty());
    for (n, coded) in intervals.iter().take(due).enumerate() {
        let whose = || {
            if due > 1 {
                format!("restart interval {}", n + 1)
            } else {
                "its coded data".into()
            }
        };
        let mut bits = Bits::new(coded);
        let mut eobrun = 0u32;
        let mut damage = None;
        'units: for unit in n * per_interval..units.min((n + 1) * per_interval) {
            for &(p, dc, ac) in &comps {
                let plane = &mut planes[p];
                if sequential {
                    let blocks = if single {
                        1
                    } else {
                        plane.layout.h * plane.layout.v
                    };
                    for _ in 0..blocks {
                        if let Some(why) = walk_dc_block(&mut bits, dc, ac) {
                            damage = Some((why, unit));
                            break 'units;
                        }
                    }
                    continue;
                }
                for at in grid.unit_blocks(&plane.layout, single, unit) {
                    let nonzero = plane
                        .nonzero
                        .get_mut(at)
                        .ok_or("a block outside the frame")?;
                    let bad = match (scan.ss, ac) {
                        (0, _) => walk_dc_block(&mut bits, dc, ac),
                        (_, Some(ac)) if scan.ah == 0 => {
                            walk_ac_first(&mut bits, scan, ac, &mut eobrun, nonzero)
                        }
                        (_, Some(ac)) => walk_ac_refine(&mut bits, scan, ac, &mut eobrun, nonzero),
                        (_, None) => Some("an AC scan without its table"),
                    };
                    if let Some(why) = bad {
                        damage = Some((why, unit));
                        break 'units;
                    }
                }
            }
        }
        if bits.overrun() {
            return Err(format!("{} ends before its last block", whose()));
        }
        if let Some((why, unit)) = damage {
            return Err(format!("{why} in block {unit}"));
        }
        let left = bits.left_over();
        if left > READ_AHEAD {
            return Err(format!(
                "{left} byte{} after the last block of {}",
                if left == 1 { "" } else { "s" },
                whose()
            ));
        }
    }
    Ok(())
}

/// A block of a sequential scan (DC and AC), or of a progressive DC scan;
/// what is wrong with its codes, if anything. `dc` and `ac` are the tables
/// the scan reads (see `walk_scan`).
#[inline(always)]
fn walk_dc_block(bits: &mut Bits, dc: Option<&Table>, ac: Option<&Table>) -> Option<&'static str> {
    let Some(dc) = dc else {
        // A refinement: one bit.
        bits.skip(1);
        return None;
    };
    if dc.decode_with_extra(bits).is_none() {
        return Some("a DC code no table holds");
    }
    // No AC table: a DC-only scan.
    if let Some(ac) = ac {
        let mut k = 1;
        while k < 64 {
            let Some(rs) = ac.decode_with_extra(bits) else {
                return Some("an AC code no table holds");
            };
            let (r, s) = (usize::from(rs >> 4), rs & 15);
            if s != 0 {
                k += r;
            } else if r != 15 {
                break;
            } else {
                k += 15;
            }
            k += 1;
        }
    }
    None
}

/// A block of a progressive scan's first pass over an AC band.
fn walk_ac_first(
    bits: &mut Bits,
    scan: &ScanHeader,
    ac: &Table,
    eobrun: &mut u32,
    nonzero: &mut u64,
) -> Option<&'static str> {
    if *eobrun > 0 {
        *eobrun -= 1;
        return None;
    }
    let mut k = scan.ss;
    while k <= scan.se {
        let Some(rs) = ac.decode_with_extra(bits) else {
            return Some("an AC code no table holds");
        };
        let (r, s) = (usize::from(rs >> 4), rs & 15);
        if s != 0 {
            k += r;
            // libjpeg's zigzag table maps positions past 63 to 63.
            *nonzero |= 1 << k.min(63);
        } else if r == 15 {
            k += 15;
        } else {
            *eobrun = (1u32 << r) + bits.take(r as u32) - 1;
            break;
        }
        k += 1;
    }
    None
}

/// A block of a progressive scan refining an AC band (libjpeg's
/// `decode_mcu_AC_refine`, less the values).
fn walk_ac_refine(
    bits: &mut Bits,
    scan: &ScanHeader,
    ac: &Table,
    eobrun: &mut u32,
    nonzero: &mut u64,
) -> Option<&'static str> {
    let mut k = scan.ss;
    let is_nonzero = |nz: u64, k: usize| nz & (1 << k) != 0;
    if *eobrun == 0 {
        while k <= scan.se {
            let Some(rs) = ac.decode(bits) else {
                return Some("an AC code no table holds");
            };
            let (mut r, s) = (i32::from(rs >> 4), rs & 15);
            if s != 0 {
                if s != 1 {
                    return Some("a refined coefficient of a size other than 1");
                }
                bits.skip(1);
            } else if r != 15 {
                *eobrun = (1u32 << r) + bits.take(r as u32);
                break;
            }
            // Past the nonzero coefficients (a correction bit each) and r
            // zero ones, to the one this code makes nonzero.
            loop {
                if is_nonzero(*nonzero, k) {
                    bits.skip(1);
                } else {
                    r -= 1;
                    if r < 0 {
                        break;
                    }
                }
                k += 1;
                if k > scan.se {
                    break;
                }
            }
            if s != 0 {
                *nonzero |= 1 << k.min(63);
            }
            k += 1;
        }
    }
    if *eobrun > 0 {
        while k <= scan.se {
            if is_nonzero(*nonzero, k) {
                bits.skip(1);
            }
            k += 1;
        }
        *eobrun -= 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::jpeg_stream::walk;

    fn check_bytes(b: &[u8]) -> Result<(), String> {
        let w = walk(b).map_err(|e| format!("{e:?}"))?;
        check(&w.repaired(b), &w).map_err(|e| match e {
            Fault::Corrupt(why) => why,
            other => format!("{other:?}"),
        })
    }

    fn fixtures() -> Vec<(String, Vec<u8>)> {
        let data = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
        let mut out = Vec::new();
        for (dir, suffix) in [("jpeg-scan", ".jpg"), ("jpeg-arith", ".huff.jpg")] {
            for e in std::fs::read_dir(data.join(dir)).unwrap() {
                let name = e.unwrap().file_name().into_string().unwrap();
                if name.ends_with(suffix) {
                    out.push((
                        name.clone(),
                        std::fs::read(data.join(dir).join(&name)).unwrap(),
                    ));
                }
            }
        }
        assert_eq!(out.len(), 13);
        out
    }

    /// `b` with `extra` zero bytes inserted at `at` (negative: the byte
    /// before `at` removed).
    fn mutant(b: &[u8], at: usize, extra: isize) -> Vec<u8> {
        if extra < 0 {
            [&b[..at - 1], &b[at..]].concat()
        } else {
            [&b[..at], &vec![0; extra as usize][..], &b[at..]].concat()
        }
    }

    /// The mutants of `tests/data/jpeg-scan/make.py`, whose printout is
    /// djpeg's (libjpeg-turbo 2.1.5, 64-bit) verdict on each: for every
    /// file, "12 zeros before EOI: Corrupt JPEG data: N extraneous bytes
    /// before marker 0xd9" (N 5 to 11, what its bit buffer had not read
    /// ahead), "1 zero before EOI: no warning", "last byte before EOI
    /// removed: Corrupt JPEG data: premature end of data segment"; for the
    /// two with restart markers, "12 zeros before the first RST: ... 12
    /// extraneous bytes before marker 0xd0", "byte before the first RST
    /// removed: ... premature end of data segment", and "1 zero before the
    /// first RST": reported in progressive-restart.jpg, not in
    /// restart-420.jpg (read ahead there), which ebv lets pass in both.
    #[test]
    fn damage_libjpeg_reports_is_refused_and_whole_data_passes() {
        for (name, b) in fixtures() {
            assert_eq!(check_bytes(&b), Ok(()), "{name}");
            let eoi = b.len() - 2;
            let err = check_bytes(&mutant(&b, eoi, 12)).unwrap_err();
            assert!(
                err.contains("12 bytes after the last block of"),
                "{name}: {err}"
            );
            assert_eq!(check_bytes(&mutant(&b, eoi, 1)), Ok(()), "{name}");
            let err = check_bytes(&mutant(&b, eoi, -1)).unwrap_err();
            assert!(err.ends_with("ends before its last block"), "{name}: {err}");
            let rst = (0..b.len() - 1).find(|&i| b[i] == 0xFF && (0xD0..=0xD7).contains(&b[i + 1]));
            assert_eq!(
                rst.is_some(),
                name.starts_with("restart") || name.starts_with("progressive")
            );
            if let Some(rst) = rst {
                let err = check_bytes(&mutant(&b, rst, 12)).unwrap_err();
                assert!(
                    err.ends_with("12 bytes after the last block of restart interval 1"),
                    "{name}: {err}"
                );
                assert_eq!(check_bytes(&mutant(&b, rst, 1)), Ok(()), "{name}");
                let err = check_bytes(&mutant(&b, rst, -1)).unwrap_err();
                assert!(
                    err.ends_with("restart interval 1 ends before its last block"),
                    "{name}: {err}"
                );
            }
        }
    }

    /// (start, end) of each scan of `b`: its SOS marker to the marker
    /// after its coded data.
    fn scan_spans(b: &[u8]) -> Vec<(usize, usize)> {
        let (mut out, mut i) = (Vec::new(), 2);
        while i + 1 < b.len() && b[i + 1] != 0xD9 {
            let start = i;
            i += 2 + usize::from(u16::from_be_bytes([b[i + 2], b[i + 3]]));
            if b[start + 1] == 0xDA {
                while b[i] != 0xFF || matches!(b[i + 1], 0x00 | 0xD0..=0xD7) {
                    i += 1;
                }
                out.push((start, i));
            }
        }
        out
    }

    /// The mutants of `tests/data/jpeg-scan/progression.py`, rebuilt: djpeg
    /// (libjpeg-turbo 2.1.5) reads each with the warning "Inconsistent
    /// progression sequence for component 0 coefficient 0" (the first two)
    /// or "... coefficient 1" (the third), and decodes them.
    #[test]
    fn scans_out_of_progression_order_are_refused_as_libjpeg_warns() {
        let b = std::fs::read(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/data/jpeg-scan/progressive-restart.jpg"),
        )
        .unwrap();
        let s = scan_spans(&b);
        assert_eq!(s.len(), 10);
        // Scan 7 refines the DC of all three components from Al 1 to 0.
        let dc_refine = s[6].0;
        let ahal = dc_refine + 4 + 1 + 2 * usize::from(b[dc_refine + 4]) + 2;
        assert_eq!(b[ahal], 0x10);
        let mut ah2 = b.clone();
        ah2[ahal] = 0x21;
        let cut = |k: usize| [&b[..s[k].0], &b[s[k].1..]].concat();
        for (m, scan, coef, why) in [
            (ah2, 7, 0, "Ah 2 where the scan before left Al 1"),
            (
                cut(0),
                1,
                0,
                "an AC scan before any DC scan of the component",
            ),
            (cut(1), 5, 1, "Ah 2 where no scan before coded it"),
        ] {
            // The headers alone tell: the same error without the data walk.
            let w = walk(&m).unwrap();
            assert_eq!(
                check_scan_order(&w.repaired(&m), &w),
                check(&w.repaired(&m), &w)
            );
            assert_eq!(
                check_bytes(&m).unwrap_err(),
                format!(
                    "scan {scan}: inconsistent progression sequence for component 0 \
                     coefficient {coef}: {why}"
                )
            );
        }
        // The same scans in their order pass.
        assert_eq!(check_bytes(&b), Ok(()));
        let w = walk(&b).unwrap();
        assert_eq!(check_scan_order(&b, &w), Ok(()));
    }

    #[test]
    fn table_decodes_the_canonical_codes() {
        // Lengths 2, 3, 3, 10: codes 00, 010, 011, 1000000000.
        let mut bits = [0u8; 16];
        bits[1] = 1;
        bits[2] = 2;
        bits[9] = 1;
        let t = Table::new(1, &bits, &[7, 8, 9, 200]);
        // 00 010 011 1000000000, then zeros.
        let mut b = Bits::new(&[0b0001_0011, 0b1000_0000, 0b0000_0000]);
        assert_eq!(t.decode(&mut b), Some(7));
        assert_eq!(t.decode(&mut b), Some(8));
        assert_eq!(t.decode(&mut b), Some(9));
        assert_eq!(t.decode(&mut b), Some(200));
        assert_eq!(b.pos(), 18);
        assert_eq!(b.left_over(), 0);
        // 11... is no code.
        let mut b = Bits::new(&[0xFF, 0x00, 0xFF, 0x00]);
        assert_eq!(t.decode(&mut b), None);
    }

    #[test]
    fn stuffing_is_removed_and_overrun_counted() {
        let b = Bits::new(&[0x12, 0xFF, 0x00, 0x34, 0xFF, 0xFF, 0x00, 0x56]);
        assert_eq!(b.data, [0x12, 0xFF, 0x34, 0xFF, 0x56]);
        let mut b = Bits::new(&[0xAB]);
        assert_eq!(b.take(4), 0xA);
        assert!(!b.overrun());
        assert_eq!(b.left_over(), 0);
        b.skip(5);
        assert!(b.overrun());
    }

    /// A few thousand pseudo-random bytes.
    fn noise(n: usize, mut x: u64) -> Vec<u8> {
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 32) as u8
            })
            .collect()
    }

    /// Bit `i` of `data` (most significant first), 0 past the end.
    fn bit(data: &[u8], i: usize) -> u32 {
        data.get(i / 8)
            .map_or(0, |b| u32::from(b >> (7 - i % 8) & 1))
    }

    #[test]
    fn bits_read_as_a_bit_at_a_time_across_word_loads_and_the_end() {
        // Eight-byte loads in the middle, byte loads near the end, zeros
        // past it: every read must equal the bits counted one by one.
        for len in [0, 1, 7, 8, 9, 15, 16, 17, 100, 1001] {
            let data = noise(len, 0x9E37_79B9_7F4A_7C15 ^ len as u64);
            let mut b = Bits {
                data: data.clone(),
                next: 0,
                acc: 0,
                have: 0,
            };
            let mut at = 0usize;
            let mut step = 0u32;
            while at < 8 * len + 40 {
                step = (step * 7 + 3) % 17; // 0..=16, all of them
                let want = (0..step).fold(0, |v, k| v << 1 | bit(&data, at + k as usize));
                if step.is_multiple_of(2) {
                    assert_eq!(b.take(step), want, "len {len}, bit {at}, {step} bits");
                } else {
                    assert_eq!(b.peek16() >> (16 - step), want);
                    b.skip(step);
                }
                at += step as usize;
                assert_eq!(b.pos(), at);
                assert_eq!(b.overrun(), at > 8 * len);
                assert_eq!(b.left_over(), len.saturating_sub(at.div_ceil(8)));
            }
        }
    }

    #[test]
    fn a_symbol_with_its_extra_bits_is_the_symbol_then_its_extra_bits() {
        // An AC table of symbols whose sizes (low nibble) run 0..15, with
        // codes of 2 to 16 bits, so that code + size fits the one lookup
        // for some and not for others; and a DC table of sizes 0..11.
        // Lengths 2..15 (Kraft sum 0.73: some bit strings are no code).
        let ac_bits = [0, 1, 1, 2, 3, 4, 5, 5, 4, 4, 3, 2, 2, 1, 1, 0];
        let ac_values: Vec<u8> = (0..=255u8).filter(|v| v % 7 == 1 || *v == 0).collect();
        assert_eq!(ac_values.len(), 38);
        let dc_bits = [0, 1, 5, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0];
        let dc_values: Vec<u8> = (0..12).collect();
        for (class, bits, values) in [(1u8, ac_bits, &ac_values), (0, dc_bits, &dc_values)] {
            let t = Table::new(class, &bits, values);
            for seed in 1..20u64 {
                let data = noise(600, seed);
                let mut one = Bits::new(&data);
                let mut two = Bits::new(&data);
                let mut longs = 0;
                for _ in 0..300 {
                    let got = t.decode_with_extra(&mut one);
                    let peek = two.peek16();
                    let want = t.decode(&mut two);
                    assert_eq!(got, want, "class {class}, seed {seed}");
                    let Some(symbol) = want else {
                        // No code: on past it, a bit at a time.
                        one.skip(1);
                        two.skip(1);
                        continue;
                    };
                    if t.with_extra[(peek >> (16 - FAST_BITS)) as usize] == 0 {
                        longs += 1;
                    }
                    two.skip(extra_bits(class, symbol));
                    assert_eq!(one.pos(), two.pos());
                }
                assert!(class == 0 || longs > 0, "the slow path was not taken");
            }
        }
    }
}
