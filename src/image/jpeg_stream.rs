//! The marker-level structure of a JPEG stream, checked without decoding
//! a pixel, and the repairs that make a stream libjpeg would read
//! readable by zune-jpeg too.
//!
//! [`walk`] reads every marker segment and skips each scan's entropy-coded
//! data to the marker ending the image. It checks what a decoder needs
//! before it can start: one frame header, quantisation and Huffman tables
//! defined before the scans that use them, scan components the frame has,
//! sampling factors and scan parameters in range. So an image stored
//! untouched (`--verify header`) is one the loader's decoder can open; only
//! corrupt entropy-coded data is left to a full decode (`--verify decode`).
//!
//! Invariants: the verdicts follow libjpeg (what Pillow and most readers
//! use): what it refuses is corrupt; what it reads with a warning or a
//! default (bytes between segments, Huffman tables 0/1 never defined in a
//! sequential frame, as in Motion-JPEG, the scan parameters of a
//! sequential frame) is
//! read, after [`Walk::repaired`] rewrote the stream, and is never stored
//! byte for byte; what libjpeg reads but zune-jpeg would decode wrongly or
//! not at all (chroma sampled finer than luma, sampling factors that are
//! not powers of two, a sequential frame coded one component per scan) is
//! marked [`Walk::other_decoder`], decoded by the `jpeg-decoder` crate and
//! never stored byte for byte either. A lossless (SOF3) frame of 8-bit
//! samples, each component sampled 1x1, RGB or gray, is marked
//! [`Walk::lossless`] and decoded by ebv's own decoder
//! ([`super::jpeg_lossless`]); other lossless frames, and YCbCr-coded ones
//! (which libjpeg-turbo 3, Pillow's, refuses too) are unsupported. An
//! arithmetic-coded frame (SOF9, SOF10) is marked [`Walk::arithmetic`]
//! and re-coded with Huffman tables before any decoder sees it.

use std::borrow::Cow;

use ::image::metadata::Orientation;

/// Why a stream is not read: the kinds the packer's reasons tell apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Fault {
    /// The image never reaches its end-of-image marker.
    Truncated,
    /// Malformed: no reader decodes it.
    Corrupt(String),
    /// A valid stream this decoder does not read (12-bit samples,
    /// hierarchical coding, some lossless codings).
    Unsupported(String),
}

/// Scans a stream may have: zune-jpeg's own limit, so that a stream it
/// would refuse is never stored untouched for the loader, and the
/// arithmetic path holds to it too. Each scan of a progressive frame walks
/// every block of its components again, so repeating one scan makes a
/// file that keeps a decoder busy far beyond its size (Pillow: 24 s for an
/// 8192² gray JPEG of 1,005 scans). Encoders write a few dozen at most.
pub(crate) const MAX_SCANS: usize = 100;

/// The reason given for a JPEG whose image never reaches its end marker.
pub(crate) const TRUNCATED: &str = "truncated (no end-of-image marker)";

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fault::Truncated => f.write_str(TRUNCATED),
            Fault::Corrupt(s) | Fault::Unsupported(s) => f.write_str(s),
        }
    }
}

/// One frame component.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Component {
    pub id: u8,
    pub h: u8,
    pub v: u8,
    pub tq: u8,
}

/// A stream whose structure holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Walk {
    pub width: u32,
    pub height: u32,
    pub progressive: bool,
    /// A lossless (SOF3) frame: predictor scans, no quantisation; decoded
    /// by [`super::jpeg_lossless`], never stored untouched.
    pub lossless: bool,
    /// An arithmetic-coded DCT frame (SOF9, SOF10): read by transcoding it
    /// to Huffman coding ([`super::jpeg_arith`]), never stored untouched.
    pub arithmetic: bool,
    pub components: Vec<Component>,
    /// The orientation of the first EXIF segment or, when it has no tag,
    /// of the last XMP segment; `NoTransforms` when neither gives one.
    pub orientation: Orientation,
    /// Offset just past the end-of-image marker (bytes after it are not the
    /// image's: phones append depth and gain maps).
    pub end: usize,
    /// Byte ranges the repair drops, in order: bytes between segments that
    /// begin no marker (libjpeg skips them, warning "extraneous bytes
    /// before marker"), APPn and COM segments between scans (they describe
    /// nothing there; zune-jpeg misreads them), an Adobe APP14 segment too
    /// short to hold its fields (libjpeg ignores it; zune-jpeg refuses it),
    /// arithmetic conditioning (DAC) in a Huffman-coded frame and DNL
    /// segments (the same).
    pub junk: Vec<(usize, usize)>,
    /// Huffman tables (class 0 DC / 1 AC, slot 0/1) a scan uses before any
    /// segment defines them: libjpeg's standard tables stand in.
    pub default_tables: Vec<(u8, u8)>,
    /// Where the first scan's marker starts (where those tables go).
    pub first_scan: usize,
    /// Offsets of the Ss byte of sequential scans whose Ss, Se, Ah, Al are
    /// not 0, 63, 0, 0 (libjpeg ignores them with a warning).
    pub sequential_fixes: Vec<usize>,
    /// Offset of the sampling byte of a one-component frame whose factors
    /// are not powers of two: they mean nothing for one component
    /// (libjpeg ignores them), zune-jpeg refuses them; the repair sets 1x1.
    pub sampling_fix: Option<usize>,
    /// Offsets of the precision/slot byte of quantisation tables whose
    /// precision is 2 to 15: libjpeg reads any nonzero precision as 16-bit,
    /// zune-jpeg refuses it; the repair writes 1.
    pub precision_fixes: Vec<usize>,
    /// Offsets of DC Huffman symbols above 15 in tables no DCT scan uses
    /// (a used one is refused): libjpeg checks only the tables it decodes
    /// with, zune-jpeg every table; the repair writes 0.
    pub dc_symbol_fixes: Vec<usize>,
    /// Why zune-jpeg would decode this frame wrongly or refuse it (it
    /// would turn a component sampled finer than the first, or a
    /// sequential frame coded one component per scan, into garbage, and
    /// refuses factors of 3): such frames go to the `jpeg-decoder` crate.
    pub other_decoder: Option<String>,
}

impl Walk {
    /// Whether the stream is exactly what a strict reader expects: nothing
    /// for [`Walk::repaired`] to change.
    pub fn clean(&self) -> bool {
        self.junk.is_empty()
            && self.default_tables.is_empty()
            && self.sequential_fixes.is_empty()
            && self.sampling_fix.is_none()
            && self.precision_fixes.is_empty()
            && self.dc_symbol_fixes.is_empty()
            && self.other_decoder.is_none()
            && !self.arithmetic
            && !self.lossless
    }

    /// The image's bytes (up to its end marker) as a strict reader needs
    /// them: bytes between segments dropped, the standard Huffman tables
    /// defined before the first scan, sequential scan parameters set.
    pub fn repaired<'a>(&self, bytes: &'a [u8]) -> Cow<'a, [u8]> {
        let bytes = &bytes[..self.end];
        if self.clean() {
            return Cow::Borrowed(bytes);
        }
        let dht = if self.default_tables.is_empty() {
            Vec::new()
        } else {
            standard_dht(&self.default_tables)
        };
        let mut out = Vec::with_capacity(bytes.len() + dht.len());
        // `bytes[from..to]` less the junk in it (junk ranges end at a
        // marker, so none straddles the first scan's).
        let copy = |out: &mut Vec<u8>, from: usize, to: usize| {
            let mut pos = from;
            for &(a, b) in self.junk.iter().filter(|(a, _)| (from..to).contains(a)) {
                out.extend_from_slice(&bytes[pos..a]);
                pos = b;
            }
            out.extend_from_slice(&bytes[pos..to]);
        };
        copy(&mut out, 0, self.first_scan);
        out.extend_from_slice(&dht);
        copy(&mut out, self.first_scan, bytes.len());
        // Where an offset of the input lies in the output.
        let moved = |at: usize| {
            let dropped: usize = self
                .junk
                .iter()
                .filter(|(a, _)| *a < at)
                .map(|(a, b)| b - a)
                .sum();
            let inserted = if at > self.first_scan { dht.len() } else { 0 };
            at - dropped + inserted
        };
        for &at in &self.sequential_fixes {
            let at = moved(at);
            out[at..at + 3].copy_from_slice(&[0, 63, 0]);
        }
        if let Some(at) = self.sampling_fix {
            out[moved(at)] = 0x11;
        }
        for &at in &self.precision_fixes {
            let at = moved(at);
            out[at] = 0x10 | (out[at] & 15);
        }
        for &at in &self.dc_symbol_fixes {
            out[moved(at)] = 0;
        }
        Cow::Owned(out)
    }
}

/// Why a frame of start-of-frame marker `sof` and sample `precision` is not
/// decoded (the decoders read 8-bit DCT frames, Huffman- or
/// arithmetic-coded, and 8-bit lossless ones), or `None` when it is.
fn unsupported_coding(sof: u8, precision: u8) -> Option<String> {
    let coding = match sof {
        0xC0..=0xC3 | 0xC9 | 0xCA => None,
        0xC5..=0xC7 => Some("hierarchical"),
        0xCB => Some("lossless arithmetic-coded"),
        0xCD..=0xCF => Some("hierarchical arithmetic-coded"),
        _ => Some("unknown frame type"),
    };
    match coding {
        Some(coding) => Some(format!("{coding} jpeg (SOF{})", sof - 0xC0)),
        None if precision != 8 => {
            let kind = match sof {
                0xC3 => " lossless",
                0xC9 | 0xCA => " arithmetic-coded",
                _ => "",
            };
            Some(format!("{precision}-bit{kind} jpeg (SOF{})", sof - 0xC0))
        }
        None => None,
    }
}

fn corrupt(s: impl Into<String>) -> Fault {
    Fault::Corrupt(s.into())
}

/// What the walk knows of the tables so far.
#[derive(Default)]
struct Tables {
    quant: [bool; 4],
    /// [class][slot]: DC 0, AC 1.
    huffman: [[bool; 4]; 2],
    /// The largest symbol of each DC table: a bit count, at most 15 for DCT
    /// frames and 16 for lossless ones, checked when a scan uses the table
    /// (a table may come before the frame header says which).
    dc_max: [u8; 4],
}

/// Walks the whole stream: every marker segment, every scan, to the marker
/// ending the image.
pub(crate) fn walk(bytes: &[u8]) -> Result<Walk, Fault> {
    if !bytes.starts_with(&[0xFF, 0xD8]) {
        return Err(corrupt("missing start-of-image marker"));
    }
    let mut frame: Option<Walk> = None;
    // Pillow's reading: the first EXIF segment's tag, else the last XMP
    // segment's; both only before the first scan.
    let mut exif_tag = None;
    let mut exif_seen = false;
    let mut xmp: Option<&[u8]> = None;
    // libjpeg's colour rules for three components: a JFIF marker, or an
    // Adobe marker whose transform is not 0, means YCbCr.
    let mut jfif = false;
    let mut adobe_transform = None;
    let mut tables = Tables::default();
    let mut junk = Vec::new();
    let mut default_tables: Vec<(u8, u8)> = Vec::new();
    let mut sequential_fixes = Vec::new();
    let mut precision_fixes = Vec::new();
    let mut dc_symbol_fixes = Vec::new();
    let mut first_scan = None;
    // Conditioning segments: junk unless the frame is arithmetic-coded.
    let mut dac = Vec::new();
    let mut scans = 0usize;
    let mut pos = 2;
    loop {
        // libjpeg's next_marker: anything before a 0xFF is skipped (and
        // 0xFF 0x00, which is no marker, with it).
        let start = pos;
        loop {
            let ff = match bytes.get(pos..).and_then(|b| memchr::memchr(0xFF, b)) {
                Some(k) => pos + k,
                None => return Err(Fault::Truncated),
            };
            let mut code = ff;
            while bytes.get(code) == Some(&0xFF) {
                code += 1;
            }
            match bytes.get(code) {
                None => return Err(Fault::Truncated),
                Some(0x00) => pos = code + 1,
                Some(_) => {
                    if ff > start {
                        junk.push((start, ff));
                    }
                    pos = ff;
                    break;
                }
            }
        }
        let marker_at = pos;
        while bytes.get(pos) == Some(&0xFF) {
            pos += 1;
        }
        let marker = bytes[pos];
        pos += 1;
        match marker {
            0xD9 => break,
            0x01 | 0xD0..=0xD7 => continue,
            _ => {}
        }
        let Some(len_bytes) = bytes.get(pos..pos + 2) else {
            return Err(Fault::Truncated);
        };
        let len = usize::from(u16::from_be_bytes([len_bytes[0], len_bytes[1]]));
        if len < 2 {
            return Err(corrupt(format!(
                "marker segment of length {len} at byte {pos}"
            )));
        }
        let Some(segment) = bytes.get(pos + 2..pos + len) else {
            return Err(Fault::Truncated);
        };
        let body = pos + 2;
        pos += len;
        match marker {
            0xC0..=0xC3 | 0xC5..=0xC7 | 0xC9..=0xCB | 0xCD..=0xCF => {
                if frame.is_some() {
                    return Err(corrupt("a second frame header"));
                }
                if segment.len() < 6 {
                    return Err(corrupt("short frame header"));
                }
                let precision = segment[0];
                if let Some(what) = unsupported_coding(marker, precision) {
                    return Err(Fault::Unsupported(what));
                }
                let mut f = read_frame(marker, segment)?;
                f.sampling_fix = f.sampling_fix.map(|k| body + k);
                frame = Some(f);
            }
            0xC4 => read_dht(segment, body, &mut tables, &mut dc_symbol_fixes)?,
            0xDB => read_dqt(segment, body, &mut tables, &mut precision_fixes)?,
            0xCC => {
                read_dac(segment)?;
                dac.push((marker_at, pos));
            }
            0xE0..=0xEF | 0xFE if first_scan.is_some() => junk.push((marker_at, pos)),
            0xEE if segment.starts_with(b"Adobe") && segment.len() < 12 => {
                junk.push((marker_at, pos))
            }
            0xE1 if !exif_seen && segment.starts_with(b"Exif\0\0") => {
                exif_seen = true;
                exif_tag = super::exif::orientation_tag(segment);
            }
            0xE0 if segment.starts_with(b"JFIF\0") && segment.len() >= 14 => jfif = true,
            0xEE if segment.starts_with(b"Adobe") => adobe_transform = Some(segment[11]),
            0xE1 if segment.starts_with(super::orientation::JPEG_XMP_NAMESPACE) => {
                xmp = super::orientation::jpeg_xmp(segment);
            }
            0xDA => {
                let Some(f) = frame.as_ref() else {
                    return Err(corrupt("a scan before the frame header"));
                };
                first_scan.get_or_insert(marker_at);
                scans += 1;
                if scans > MAX_SCANS {
                    return Err(Fault::Unsupported(format!(
                        "jpeg of more than {MAX_SCANS} scans"
                    )));
                }
                let scan = read_scan(f, segment, &mut tables, &mut default_tables)?;
                if !f.progressive && !f.lossless && !f.arithmetic && scan != [0, 63, 0] {
                    // Ss is the byte after the component list.
                    sequential_fixes.push(body + segment.len() - 3);
                }
                // zune-jpeg decodes a sequential frame coded one component
                // per scan into garbage.
                // (An arithmetic frame is re-coded in one scan.)
                let separate =
                    !f.progressive && !f.arithmetic && usize::from(segment[0]) < f.components.len();
                if let Some(f) = frame.as_mut().filter(|_| separate) {
                    f.other_decoder.get_or_insert_with(|| {
                        "a sequential frame coded one component per scan".into()
                    });
                }
                let end = scan_end(bytes, pos)?;
                if end == pos {
                    return Err(corrupt(format!("a scan with no coded data at byte {pos}")));
                }
                pos = end;
            }
            // libjpeg refuses a DRI of any other length.
            0xDD if segment.len() != 2 => {
                return Err(corrupt(format!("DRI segment of {len} bytes")))
            }
            // DNL: libjpeg skips it; zune-jpeg refuses it.
            0xDC => junk.push((marker_at, pos)),
            // DRI; APPn and COM before the first scan.
            0xDD | 0xE0..=0xEF | 0xFE => {}
            0xF7 => return Err(Fault::Unsupported("jpeg-ls (SOF55)".into())),
            // What libjpeg refuses: a second SOI, JPG, DHP, EXP, JPGn and
            // the reserved codes.
            other => {
                return Err(corrupt(format!(
                    "unknown marker 0x{other:02X} at byte {marker_at}"
                )))
            }
        }
    }
    let Some(mut w) = frame else {
        return Err(corrupt("no frame header"));
    };
    let Some(first_scan) = first_scan else {
        return Err(corrupt("no scan"));
    };
    if w.lossless && w.components.len() == 3 && (jfif || adobe_transform.is_some_and(|t| t != 0)) {
        // libjpeg-turbo 3 refuses to convert YCbCr in lossless mode
        // ("Unsupported color conversion request"); the jpeg-decoder crate
        // would return the YCbCr samples as RGB.
        return Err(Fault::Unsupported(
            "YCbCr-coded lossless jpeg (SOF3)".into(),
        ));
    }
    w.orientation = super::orientation::resolve(exif_tag, xmp);
    w.end = pos;
    if !w.arithmetic && !dac.is_empty() {
        // libjpeg reads and ignores them; zune-jpeg refuses them.
        junk.extend(dac);
        junk.sort_unstable();
    }
    w.junk = junk;
    w.default_tables = default_tables;
    w.first_scan = first_scan;
    w.sequential_fixes = sequential_fixes;
    w.precision_fixes = precision_fixes;
    if !w.lossless {
        // (Lossless tables may hold 16; ebv's own decoder reads them.)
        w.dc_symbol_fixes = dc_symbol_fixes;
    }
    Ok(w)
}

fn read_frame(marker: u8, segment: &[u8]) -> Result<Walk, Fault> {
    let height = u32::from(u16::from_be_bytes([segment[1], segment[2]]));
    let width = u32::from(u16::from_be_bytes([segment[3], segment[4]]));
    let nf = usize::from(segment[5]);
    if nf == 0 || segment.len() != 6 + 3 * nf {
        return Err(corrupt(format!(
            "frame header of {} bytes for {nf} components",
            segment.len() + 2
        )));
    }
    let components: Vec<Component> = segment[6..]
        .chunks_exact(3)
        .map(|c| Component {
            id: c[0],
            h: c[1] >> 4,
            v: c[1] & 15,
            tq: c[2],
        })
        .collect();
    for c in &components {
        if !(1..=4).contains(&c.h) || !(1..=4).contains(&c.v) {
            return Err(corrupt(format!(
                "sampling factors {}x{} of component {} (1 to 4 each)",
                c.h, c.v, c.id
            )));
        }
        if c.tq > 3 {
            return Err(corrupt(format!(
                "quantisation table {} of component {} (0 to 3)",
                c.tq, c.id
            )));
        }
    }
    let mut sampling_fix = None;
    let mut other_decoder = None;
    if marker == 0xC3 {
        // What libjpeg-turbo and the jpeg-decoder crate both read.
        if components.iter().any(|c| (c.h, c.v) != (1, 1)) {
            return Err(Fault::Unsupported(
                "lossless jpeg with subsampled components (SOF3)".into(),
            ));
        }
        if !matches!(components.len(), 1 | 3) {
            return Err(Fault::Unsupported(format!(
                "{}-component lossless jpeg (SOF3)",
                components.len()
            )));
        }
    }
    if let [c] = components[..] {
        if !c.h.is_power_of_two() || !c.v.is_power_of_two() {
            // The byte after the component id (frame body offset 7).
            sampling_fix = Some(7);
        }
    }
    if components.len() > 1 {
        let luma = components[0];
        let factors = || {
            components
                .iter()
                .map(|c| format!("{}x{}", c.h, c.v))
                .collect::<Vec<_>>()
                .join(", ")
        };
        if components
            .iter()
            .any(|c| !c.h.is_power_of_two() || !c.v.is_power_of_two())
        {
            other_decoder = Some(format!("sampling factors {}", factors()));
        } else if components.iter().any(|c| c.h > luma.h || c.v > luma.v) {
            other_decoder = Some(format!(
                "a component sampled finer than the first (sampling factors {})",
                factors()
            ));
        }
    }
    Ok(Walk {
        width,
        height,
        progressive: matches!(marker, 0xC2 | 0xCA),
        lossless: marker == 0xC3,
        arithmetic: matches!(marker, 0xC9 | 0xCA),
        components,
        orientation: Orientation::NoTransforms,
        end: 0,
        junk: Vec::new(),
        default_tables: Vec::new(),
        first_scan: 0,
        sequential_fixes: Vec::new(),
        sampling_fix,
        precision_fixes: Vec::new(),
        dc_symbol_fixes: Vec::new(),
        other_decoder,
    })
}

/// Checks a DQT segment (`s`, its body at offset `body`); a precision
/// above 1 is read as 16-bit, as libjpeg reads it, and noted for repair.
fn read_dqt(
    mut s: &[u8],
    body: usize,
    tables: &mut Tables,
    precision_fixes: &mut Vec<usize>,
) -> Result<(), Fault> {
    let mut at = body;
    while let Some((&pq_tq, rest)) = s.split_first() {
        let (pq, tq) = (pq_tq >> 4, usize::from(pq_tq & 15));
        if tq > 3 {
            return Err(corrupt(format!("quantisation table {tq} (0 to 3)")));
        }
        if pq > 1 {
            precision_fixes.push(at);
        }
        let size = if pq == 0 { 64 } else { 128 };
        let Some(after) = rest.get(size..) else {
            return Err(corrupt("quantisation table segment cut short"));
        };
        tables.quant[tq] = true;
        at += 1 + size;
        s = after;
    }
    Ok(())
}

/// DAC: arithmetic conditioning, (class and slot, value) pairs. libjpeg
/// refuses a slot beyond its 16 and a DC entry whose lower bound L
/// exceeds its upper U; a frame not arithmetic-coded ignores them.
fn read_dac(s: &[u8]) -> Result<(), Fault> {
    if !s.len().is_multiple_of(2) {
        return Err(corrupt(format!("DAC segment of {} bytes", s.len() + 2)));
    }
    for pair in s.chunks_exact(2) {
        let (index, value) = (pair[0], pair[1]);
        if index >= 32 {
            return Err(corrupt(format!("DAC table index {index} (0 to 31)")));
        }
        if index < 16 && value & 15 > value >> 4 {
            return Err(corrupt(format!(
                "DAC DC conditioning L={} above U={}",
                value & 15,
                value >> 4
            )));
        }
    }
    Ok(())
}

/// Checks a DHT segment (`s`, its body at offset `body`), noting where DC
/// tables hold symbols above 15.
fn read_dht(
    mut s: &[u8],
    body: usize,
    tables: &mut Tables,
    dc_symbol_fixes: &mut Vec<usize>,
) -> Result<(), Fault> {
    let mut at = body;
    while let Some((&tc_th, rest)) = s.split_first() {
        let (tc, th) = (usize::from(tc_th >> 4), usize::from(tc_th & 15));
        if tc > 1 || th > 3 {
            return Err(corrupt(format!(
                "Huffman table class {tc} slot {th} (class 0 or 1, slot 0 to 3)"
            )));
        }
        let Some(counts) = rest.get(..16) else {
            return Err(corrupt("Huffman table segment cut short"));
        };
        let n: usize = counts.iter().map(|&c| usize::from(c)).sum();
        if n > 256 {
            return Err(corrupt(format!("Huffman table of {n} codes (at most 256)")));
        }
        let Some(after) = rest.get(16 + n..) else {
            return Err(corrupt("Huffman table segment cut short"));
        };
        // libjpeg's checks: the lengths make a prefix code in which no code
        // is all ones (a DC table's symbols are checked by the scans that
        // use it).
        let mut code = 0u32;
        for (len, &count) in counts.iter().enumerate() {
            code += u32::from(count);
            if code >= 1 << (len + 1) {
                return Err(corrupt(format!(
                    "Huffman table class {tc} slot {th}: more codes of {} bits than fit",
                    len + 1
                )));
            }
            code <<= 1;
        }
        if tc == 0 {
            let symbols = &rest[16..16 + n];
            tables.dc_max[th] = symbols.iter().copied().max().unwrap_or(0);
            let first = at + 1 + 16;
            dc_symbol_fixes.extend((0..n).filter(|&k| symbols[k] > 15).map(|k| first + k));
        }
        tables.huffman[tc][th] = true;
        at += 1 + 16 + n;
        s = after;
    }
    Ok(())
}

/// Checks a scan header against the frame and the tables defined so far;
/// returns its Ss, Se and Ah/Al byte.
fn read_scan(
    f: &Walk,
    s: &[u8],
    tables: &mut Tables,
    default_tables: &mut Vec<(u8, u8)>,
) -> Result<[u8; 3], Fault> {
    let ns = usize::from(*s.first().ok_or_else(|| corrupt("empty scan header"))?);
    if !(1..=4).contains(&ns) || s.len() != 1 + 2 * ns + 3 {
        return Err(corrupt(format!(
            "scan header of {} bytes for {ns} components",
            s.len() + 2
        )));
    }
    let (ss, se, ah, al) = (
        s[1 + 2 * ns],
        s[2 + 2 * ns],
        s[3 + 2 * ns] >> 4,
        s[3 + 2 * ns] & 15,
    );
    let mut blocks = 0u32;
    let mut seen = Vec::with_capacity(ns);
    let mut needs = Vec::new();
    for pair in s[1..1 + 2 * ns].chunks_exact(2) {
        let (cs, td, ta) = (pair[0], pair[1] >> 4, pair[1] & 15);
        let Some(c) = f.components.iter().find(|c| c.id == cs) else {
            return Err(corrupt(format!(
                "scan names component {cs}, which the frame does not have"
            )));
        };
        if seen.contains(&cs) {
            return Err(corrupt(format!("scan names component {cs} twice")));
        }
        seen.push(cs);
        blocks += u32::from(c.h) * u32::from(c.v);
        if !f.lossless && !tables.quant[usize::from(c.tq)] {
            return Err(corrupt(format!(
                "no quantisation table {} for component {cs}",
                c.tq
            )));
        }
        // Which Huffman tables the scan decodes with (libjpeg: a sequential
        // scan both; a progressive DC first scan the DC table, a DC
        // refinement none, an AC scan the AC table).
        // A lossless scan codes differences with the DC tables alone.
        let dc = if f.progressive {
            ss == 0 && ah == 0
        } else {
            true
        };
        let ac = if f.progressive { ss > 0 } else { !f.lossless };
        if f.arithmetic {
            // Conditioning tables, defaults when no DAC defines them;
            // libjpeg has 16 of each.
            if td > 15 || ta > 15 {
                return Err(corrupt(format!(
                    "arithmetic conditioning table {td}/{ta} of component {cs} (0 to 15)"
                )));
            }
            continue;
        }
        if dc {
            needs.push((0u8, td));
        }
        if ac {
            needs.push((1u8, ta));
        }
    }
    if ns > 1 && blocks > 10 {
        return Err(corrupt(format!(
            "{blocks} blocks per interleaved unit (at most 10)"
        )));
    }
    if f.lossless {
        // Ss is the predictor, Al the point transform (below the 8 bits).
        if !(1..=7).contains(&ss) || se != 0 || ah != 0 || al >= 8 {
            return Err(corrupt(format!(
                "lossless scan parameters Ss={ss} Se={se} Ah={ah} Al={al}"
            )));
        }
    }
    if f.progressive {
        let ok = se <= 63
            && ss <= se
            && (ss != 0 || se == 0)
            && (ss == 0 || ns == 1)
            && al <= 13
            && (ah == 0 || al + 1 == ah);
        if !ok {
            return Err(corrupt(format!(
                "progressive scan parameters Ss={ss} Se={se} Ah={ah} Al={al}"
            )));
        }
        if ah > 13 {
            // libjpeg reads it (Al 13 refined); zune-jpeg refuses Ah
            // above 13, and no 8-bit coefficient has a 14th bit.
            return Err(Fault::Unsupported(format!(
                "progressive refinement scan of Ah={ah}"
            )));
        }
    }
    for (class, slot) in needs {
        if slot > 3 {
            return Err(corrupt(format!("Huffman table slot {slot} (0 to 3)")));
        }
        let defined = &mut tables.huffman[usize::from(class)][usize::from(slot)];
        if !*defined {
            // libjpeg-turbo's standard tables stand in for sequential
            // frames only (Motion-JPEG); a progressive frame without its
            // tables is refused there (and by Pillow).
            if slot > 1 || f.progressive {
                let kind = if class == 0 { "DC" } else { "AC" };
                return Err(corrupt(format!("no {kind} Huffman table {slot}")));
            }
            default_tables.push((class, slot));
            *defined = true;
        }
        let limit = if f.lossless { 16 } else { 15 };
        let largest = tables.dc_max[usize::from(slot)];
        if class == 0 && largest > limit {
            return Err(corrupt(format!(
                "DC Huffman table {slot} holds symbol {largest} (at most {limit})"
            )));
        }
    }
    Ok([ss, se, s[3 + 2 * ns]])
}

/// Position of the 0xFF that starts the marker ending the entropy-coded
/// data that begins at `pos`: truncated when the data runs out first,
/// corrupt at a reserved code or a restart marker out of order.
fn scan_end(bytes: &[u8], mut pos: usize) -> Result<usize, Fault> {
    let mut next_restart = 0xD0;
    loop {
        // memchr: the entropy data is most of the file, and this runs on
        // every passthrough image.
        let Some(k) = bytes.get(pos..).and_then(|b| memchr::memchr(0xFF, b)) else {
            return Err(Fault::Truncated);
        };
        let ff = pos + k;
        let mut code = ff + 1;
        while bytes.get(code) == Some(&0xFF) {
            code += 1;
        }
        match bytes.get(code) {
            None => return Err(Fault::Truncated),
            Some(0x00) => pos = code + 1,
            // Restart markers come in the order 0..7, 0..7: one out of
            // order means lost or damaged data, which libjpeg papers over
            // with grey blocks.
            Some(&m @ 0xD0..=0xD7) if m == next_restart => {
                next_restart = if m == 0xD7 { 0xD0 } else { m + 1 };
                pos = code + 1;
            }
            Some(&m @ 0xD0..=0xD7) => {
                return Err(corrupt(format!(
                    "restart marker {} where {} was due, at byte {ff}",
                    m - 0xD0,
                    next_restart - 0xD0
                )))
            }
            // A reserved code inside the coded data: libjpeg stops the
            // scan there and then fails on the unknown marker.
            Some(&m @ 0x01..=0xBF) => {
                return Err(corrupt(format!(
                    "unknown marker 0x{m:02X} in the scan data at byte {ff}"
                )))
            }
            Some(_) => return Ok(code - 1),
        }
    }
}

/// One marker of an accepted stream, as the decoders that re-read it
/// (arithmetic, lossless) see it.
pub(super) struct Segment<'a> {
    pub marker: u8,
    /// The whole segment, its marker included.
    pub bytes: &'a [u8],
    /// Its body (empty for a marker that stands alone).
    pub body: &'a [u8],
    /// For a scan: its coded data, cut at its restart markers.
    pub intervals: Vec<&'a [u8]>,
}

/// The segments of an accepted stream in order, from after its SOI to its
/// EOI (not included), each scan with its coded data.
pub(super) fn segments(bytes: &[u8]) -> impl Iterator<Item = Segment<'_>> {
    let mut pos = 2;
    std::iter::from_fn(move || {
        let (marker, at, body) = next_segment(bytes, pos)?;
        if marker == 0xD9 {
            return None;
        }
        pos = body.as_ref().map_or(at + 2, |b| b.end);
        let body = body.map_or(&[][..], |b| &bytes[b]);
        let whole = &bytes[at..pos];
        let mut intervals = Vec::new();
        if marker == 0xDA {
            let end = data_end(bytes, pos);
            intervals = split_intervals(&bytes[pos..end]);
            pos = end;
        }
        Some(Segment {
            marker,
            bytes: whole,
            body,
            intervals,
        })
    })
}

/// The next marker at or after `pos` (bytes that begin none are skipped,
/// as libjpeg and the walk do): (code, offset of its 0xFF, its segment's
/// body when it has one).
fn next_segment(
    bytes: &[u8],
    mut pos: usize,
) -> Option<(u8, usize, Option<std::ops::Range<usize>>)> {
    loop {
        let ff = pos + memchr::memchr(0xFF, bytes.get(pos..)?)?;
        let mut code = ff + 1;
        while bytes.get(code) == Some(&0xFF) {
            code += 1;
        }
        let marker = *bytes.get(code)?;
        if marker == 0x00 {
            pos = code + 1;
            continue;
        }
        if matches!(marker, 0x01 | 0xD0..=0xD9) {
            return Some((marker, code - 1, None));
        }
        let len = usize::from(u16::from_be_bytes([
            *bytes.get(code + 1)?,
            *bytes.get(code + 2)?,
        ]));
        let body = code + 3..(code + 1 + len).max(code + 3);
        bytes.get(body.clone())?;
        return Some((marker, code - 1, Some(body)));
    }
}

/// Where a scan's coded data ends: the 0xFF of the first marker that is
/// not a restart (stuffed 0xFF 0x00 and restarts belong to the data).
fn data_end(bytes: &[u8], mut pos: usize) -> usize {
    loop {
        let Some(k) = bytes.get(pos..).and_then(|b| memchr::memchr(0xFF, b)) else {
            return bytes.len();
        };
        let ff = pos + k;
        let mut code = ff + 1;
        while bytes.get(code) == Some(&0xFF) {
            code += 1;
        }
        match bytes.get(code) {
            Some(0x00 | 0xD0..=0xD7) => pos = code + 1,
            _ => return ff,
        }
    }
}

/// A scan's coded data cut at its restart markers.
fn split_intervals(data: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let (mut start, mut pos) = (0, 0);
    while let Some(k) = memchr::memchr(0xFF, &data[pos..]) {
        let ff = pos + k;
        let mut code = ff + 1;
        while data.get(code) == Some(&0xFF) {
            code += 1;
        }
        match data.get(code) {
            Some(0xD0..=0xD7) => {
                out.push(&data[start..ff]);
                start = code + 1;
                pos = code + 1;
            }
            Some(_) => pos = code + 1,
            None => break,
        }
    }
    out.push(&data[start..]);
    out
}

/// The Huffman tables of ITU-T T.81 Annex K.3 (libjpeg's defaults):
/// (bit counts, values) for DC/AC, luminance (slot 0)/chrominance (slot 1).
const STD_DC: [([u8; 16], &[u8]); 2] = [
    (
        [0, 1, 5, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0],
        &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11],
    ),
    (
        [0, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0],
        &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11],
    ),
];

const STD_AC_LUMA: [u8; 162] = [
    0x01, 0x02, 0x03, 0x00, 0x04, 0x11, 0x05, 0x12, 0x21, 0x31, 0x41, 0x06, 0x13, 0x51, 0x61, 0x07,
    0x22, 0x71, 0x14, 0x32, 0x81, 0x91, 0xa1, 0x08, 0x23, 0x42, 0xb1, 0xc1, 0x15, 0x52, 0xd1, 0xf0,
    0x24, 0x33, 0x62, 0x72, 0x82, 0x09, 0x0a, 0x16, 0x17, 0x18, 0x19, 0x1a, 0x25, 0x26, 0x27, 0x28,
    0x29, 0x2a, 0x34, 0x35, 0x36, 0x37, 0x38, 0x39, 0x3a, 0x43, 0x44, 0x45, 0x46, 0x47, 0x48, 0x49,
    0x4a, 0x53, 0x54, 0x55, 0x56, 0x57, 0x58, 0x59, 0x5a, 0x63, 0x64, 0x65, 0x66, 0x67, 0x68, 0x69,
    0x6a, 0x73, 0x74, 0x75, 0x76, 0x77, 0x78, 0x79, 0x7a, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89,
    0x8a, 0x92, 0x93, 0x94, 0x95, 0x96, 0x97, 0x98, 0x99, 0x9a, 0xa2, 0xa3, 0xa4, 0xa5, 0xa6, 0xa7,
    0xa8, 0xa9, 0xaa, 0xb2, 0xb3, 0xb4, 0xb5, 0xb6, 0xb7, 0xb8, 0xb9, 0xba, 0xc2, 0xc3, 0xc4, 0xc5,
    0xc6, 0xc7, 0xc8, 0xc9, 0xca, 0xd2, 0xd3, 0xd4, 0xd5, 0xd6, 0xd7, 0xd8, 0xd9, 0xda, 0xe1, 0xe2,
    0xe3, 0xe4, 0xe5, 0xe6, 0xe7, 0xe8, 0xe9, 0xea, 0xf1, 0xf2, 0xf3, 0xf4, 0xf5, 0xf6, 0xf7, 0xf8,
    0xf9, 0xfa,
];

const STD_AC_CHROMA: [u8; 162] = [
    0x00, 0x01, 0x02, 0x03, 0x11, 0x04, 0x05, 0x21, 0x31, 0x06, 0x12, 0x41, 0x51, 0x07, 0x61, 0x71,
    0x13, 0x22, 0x32, 0x81, 0x08, 0x14, 0x42, 0x91, 0xa1, 0xb1, 0xc1, 0x09, 0x23, 0x33, 0x52, 0xf0,
    0x15, 0x62, 0x72, 0xd1, 0x0a, 0x16, 0x24, 0x34, 0xe1, 0x25, 0xf1, 0x17, 0x18, 0x19, 0x1a, 0x26,
    0x27, 0x28, 0x29, 0x2a, 0x35, 0x36, 0x37, 0x38, 0x39, 0x3a, 0x43, 0x44, 0x45, 0x46, 0x47, 0x48,
    0x49, 0x4a, 0x53, 0x54, 0x55, 0x56, 0x57, 0x58, 0x59, 0x5a, 0x63, 0x64, 0x65, 0x66, 0x67, 0x68,
    0x69, 0x6a, 0x73, 0x74, 0x75, 0x76, 0x77, 0x78, 0x79, 0x7a, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87,
    0x88, 0x89, 0x8a, 0x92, 0x93, 0x94, 0x95, 0x96, 0x97, 0x98, 0x99, 0x9a, 0xa2, 0xa3, 0xa4, 0xa5,
    0xa6, 0xa7, 0xa8, 0xa9, 0xaa, 0xb2, 0xb3, 0xb4, 0xb5, 0xb6, 0xb7, 0xb8, 0xb9, 0xba, 0xc2, 0xc3,
    0xc4, 0xc5, 0xc6, 0xc7, 0xc8, 0xc9, 0xca, 0xd2, 0xd3, 0xd4, 0xd5, 0xd6, 0xd7, 0xd8, 0xd9, 0xda,
    0xe2, 0xe3, 0xe4, 0xe5, 0xe6, 0xe7, 0xe8, 0xe9, 0xea, 0xf2, 0xf3, 0xf4, 0xf5, 0xf6, 0xf7, 0xf8,
    0xf9, 0xfa,
];

const STD_AC_BITS: [[u8; 16]; 2] = [
    [0, 2, 1, 3, 3, 2, 4, 3, 5, 5, 4, 4, 0, 0, 1, 0x7d],
    [0, 2, 1, 2, 4, 4, 3, 4, 7, 5, 4, 4, 0, 1, 2, 0x77],
];

/// The standard table of `class` (0 DC, 1 AC) for `slot` (0 luminance, 1
/// chrominance): bit counts per code length, and the symbols.
pub(super) fn standard_table(class: u8, slot: u8) -> (&'static [u8; 16], &'static [u8]) {
    let s = usize::from(slot.min(1));
    if class == 0 {
        (&STD_DC[s].0, STD_DC[s].1)
    } else if s == 0 {
        (&STD_AC_BITS[0], &STD_AC_LUMA)
    } else {
        (&STD_AC_BITS[1], &STD_AC_CHROMA)
    }
}

/// A DHT segment defining the standard tables `which` ((class, slot) pairs).
pub(super) fn standard_dht(which: &[(u8, u8)]) -> Vec<u8> {
    let mut body = Vec::new();
    for &(class, slot) in which {
        let (bits, values) = standard_table(class, slot);
        body.push(class << 4 | slot);
        body.extend_from_slice(bits);
        body.extend_from_slice(values);
    }
    let len = (body.len() + 2) as u16;
    let mut seg = vec![0xFF, 0xC4];
    seg.extend_from_slice(&len.to_be_bytes());
    seg.extend(body);
    seg
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::decode_rgb8;
    use crate::image::jpeg::gradient;

    fn encode(w: u16, h: u16, progressive: bool, restart: u16) -> Vec<u8> {
        let mut out = Vec::new();
        let mut enc = jpeg_encoder::Encoder::new(&mut out, 90);
        enc.set_progressive(progressive);
        if restart > 0 {
            enc.set_restart_interval(restart);
        }
        enc.encode(
            &gradient(w.into(), h.into()),
            w,
            h,
            jpeg_encoder::ColorType::Rgb,
        )
        .unwrap();
        out
    }

    /// (marker, offset of its 0xFF, whole length) of the segments before
    /// the first scan, and that scan's header.
    fn segments(b: &[u8]) -> Vec<(u8, usize, usize)> {
        let mut out = Vec::new();
        let mut pos = 2;
        loop {
            assert_eq!(b[pos], 0xFF);
            let marker = b[pos + 1];
            let len = usize::from(u16::from_be_bytes([b[pos + 2], b[pos + 3]]));
            out.push((marker, pos, len + 2));
            if marker == 0xDA {
                return out;
            }
            pos += len + 2;
        }
    }

    fn first(b: &[u8], marker: u8) -> (usize, usize) {
        let (_, at, len) = segments(b).into_iter().find(|s| s.0 == marker).unwrap();
        (at, len)
    }

    fn without(b: &[u8], marker: u8) -> Vec<u8> {
        let mut out = b.to_vec();
        for (_, at, len) in segments(b).into_iter().rev().filter(|s| s.0 == marker) {
            out.drain(at..at + len);
        }
        out
    }

    fn inserted(b: &[u8], at: usize, what: &[u8]) -> Vec<u8> {
        let mut out = b.to_vec();
        out.splice(at..at, what.iter().copied());
        out
    }

    fn pixels(b: &[u8]) -> Vec<u8> {
        decode_rgb8(b, Default::default()).unwrap().data
    }

    #[test]
    fn the_end_is_found_past_every_scan_and_trailing_data() {
        for (progressive, restart) in [(false, 0), (true, 0), (false, 2)] {
            let b = encode(48, 40, progressive, restart);
            let w = walk(&b).unwrap();
            assert_eq!(w.end, b.len());
            assert!(w.clean() && w.progressive == progressive);
            // What phones append: another JPEG (a depth map), text, noise.
            let mut trailing = b.clone();
            trailing.extend(encode(8, 8, false, 0));
            trailing.extend(b"\0\0HDRgainmap\xFF\xD8 trailing");
            assert_eq!(walk(&trailing).unwrap().end, b.len());
            // Cut among the scans, or just before the end marker.
            for cut in [b.len() * 2 / 3, b.len() - 2, b.len() - 1] {
                assert_eq!(walk(&b[..cut]), Err(Fault::Truncated), "cut at {cut}");
            }
        }
        let b = encode(48, 40, false, 2);
        assert!(b
            .windows(2)
            .any(|w| w[0] == 0xFF && (0xD0..=0xD7).contains(&w[1])));
        // Corrupt scan bytes (0xFF then a reserved code, which libjpeg
        // fails on, or a restart marker out of order, which it fills with
        // grey) are corrupt, and so is an unknown marker between segments;
        // fill bytes before the end marker are allowed.
        let scan = first(&b, 0xDA);
        let odd = inserted(&b, scan.0 + scan.1 + 3, &[0xFF, 0x05]);
        let why = format!("{:?}", walk(&odd).unwrap_err());
        assert!(
            why.contains("unknown marker 0x05 in the scan data"),
            "{why}"
        );
        assert!(decode_rgb8(&odd, Default::default()).is_err());
        let rst = b
            .windows(2)
            .position(|w| w[0] == 0xFF && w[1] == 0xD0)
            .unwrap();
        let skipped = {
            let mut c = b.clone();
            c[rst + 1] = 0xD1;
            c
        };
        let why = format!("{:?}", walk(&skipped).unwrap_err());
        assert!(why.contains("restart marker 1 where 0 was due"), "{why}");
        let (dqt, _) = first(&b, 0xDB);
        let unknown = inserted(&b, dqt, &[0xFF, 0xF0, 0, 4, 1, 2]);
        let why = format!("{:?}", walk(&unknown).unwrap_err());
        assert!(why.contains("unknown marker 0xF0 at byte"), "{why}");
        let comment = inserted(&b, dqt, &[0xFF, 0xFE, 0, 4, 1, 2]);
        assert_eq!(walk(&comment).unwrap().end, comment.len());
        let filled = inserted(&b, b.len() - 2, &[0xFF, 0xFF]);
        assert_eq!(walk(&filled).unwrap().end, filled.len());
    }

    /// What libjpeg refuses is corrupt, naming what is wrong; the decoder
    /// rejects the same, so `--verify header` stores nothing the loader
    /// cannot open.
    #[test]
    fn broken_structure_is_corrupt_and_named() {
        let b = encode(32, 24, false, 0);
        let p = encode(32, 24, true, 0);
        let (sof, _) = first(&b, 0xC0);
        let (sos, _) = first(&b, 0xDA);
        let (psos, psos_len) = first(&p, 0xDA);
        let (dht, _) = first(&b, 0xC4);
        let patched = |src: &[u8], at: usize, v: u8| {
            let mut c = src.to_vec();
            c[at] = v;
            c
        };
        let sof_segment = b[sof..sof + first(&b, 0xC0).1].to_vec();
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (without(&b, 0xDB), "no quantisation table 0 for component"),
            (
                patched(&b, sof + 12, 2),
                "no quantisation table 2 for component",
            ),
            (
                patched(&b, sof + 12, 7),
                "quantisation table 7 of component",
            ),
            (patched(&b, sos + 5, 9), "scan names component 9"),
            (patched(&b, sos + 6, 0x20), "no DC Huffman table 2"),
            (patched(&b, sos + 6, 0x03), "no AC Huffman table 3"),
            (patched(&b, sos + 6, 0x50), "Huffman table slot 5"),
            (patched(&b, dht + 4, 0x05), "Huffman table class 0 slot 5"),
            (
                patched(&b, sof + 11, 0x44),
                "18 blocks per interleaved unit",
            ),
            (
                patched(&b, sof + 11, 0x50),
                "sampling factors 5x0 of component",
            ),
            (
                patched(&b, sof + 9, 5),
                "frame header of 17 bytes for 5 components",
            ),
            (patched(&b, sof + 1, 0xE5), "a scan before the frame header"),
            (inserted(&b, sof, &sof_segment), "a second frame header"),
            (
                patched(&p, psos + psos_len - 2, 203),
                "progressive scan parameters",
            ),
            ([&b[..sos], &[0xFF, 0xD9][..]].concat(), "no scan"),
            (
                patched(&b, sos + 4, 9),
                "scan header of 12 bytes for 9 components",
            ),
        ];
        for (bytes, want) in cases {
            let fault = walk(&bytes).unwrap_err();
            assert!(
                matches!(&fault, Fault::Corrupt(s) if s.contains(want)),
                "{want}: {fault:?}"
            );
            let err = decode_rgb8(&bytes, Default::default()).unwrap_err();
            assert_eq!(err.to_string(), format!("corrupt jpeg: {fault}"));
            assert!(crate::image::JpegHeader::parse(&bytes).is_err());
        }
    }

    /// Sampling zune-jpeg would decode into garbage (a component finer than
    /// the first) or refuses (factors not powers of two) goes to the other
    /// decoder and is never stored untouched; the usual layouts, 4:4:4 to
    /// 4:1:1, stay with zune-jpeg.
    #[test]
    fn sampling_zune_misreads_goes_to_the_other_decoder() {
        let b = encode(32, 24, false, 0);
        let (sof, _) = first(&b, 0xC0);
        // Component factors at sof + 11, 14, 17.
        let with = |f: [u8; 3]| {
            let mut c = b.clone();
            for (k, v) in f.into_iter().enumerate() {
                c[sof + 11 + 3 * k] = v;
            }
            c
        };
        for (f, why) in [
            (
                [0x11, 0x22, 0x22],
                "a component sampled finer than the first (sampling factors 1x1, 2x2, 2x2)",
            ),
            (
                [0x11, 0x21, 0x11],
                "a component sampled finer than the first (sampling factors 1x1, 2x1, 1x1)",
            ),
            ([0x31, 0x11, 0x11], "sampling factors 3x1, 1x1, 1x1"),
            ([0x13, 0x11, 0x11], "sampling factors 1x3, 1x1, 1x1"),
        ] {
            let w = walk(&with(f)).unwrap();
            assert_eq!(w.other_decoder.as_deref(), Some(why), "{f:?}");
            assert!(!w.clean());
        }
        for f in [
            [0x11, 0x11, 0x11],
            [0x21, 0x11, 0x11],
            [0x22, 0x11, 0x11],
            [0x41, 0x11, 0x11],
        ] {
            let w = walk(&with(f)).unwrap();
            assert!(w.clean() && w.other_decoder.is_none(), "{f:?}");
        }
    }

    /// Frames zune-jpeg misreads, made by a minimal encoder, decode to
    /// libjpeg's pixels (Pillow's decode of each, in `.rgb`; both made by
    /// `tests/data/jpeg-layouts/make.py`).
    #[test]
    fn frames_zune_misreads_decode_as_libjpeg_decodes_them() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/jpeg-layouts");
        for name in [
            "noninterleaved-420-37x23",
            "noninterleaved-444-32x32",
            "chroma-finer-37x23",
            "factor3-37x23",
        ] {
            let jpeg = std::fs::read(dir.join(format!("{name}.jpg"))).unwrap();
            let want = std::fs::read(dir.join(format!("{name}.rgb"))).unwrap();
            let w = walk(&jpeg).unwrap();
            assert!(w.other_decoder.is_some() && !w.clean(), "{name}");
            let got = decode_rgb8(&jpeg, Default::default()).unwrap();
            assert_eq!(got.data.len(), want.len(), "{name}");
            let diffs: Vec<u32> = got
                .data
                .iter()
                .zip(&want)
                .map(|(a, b)| u32::from(a.abs_diff(*b)))
                .collect();
            let mean = diffs.iter().sum::<u32>() as f64 / diffs.len() as f64;
            let max = diffs.iter().copied().max().unwrap();
            // Two decoders' rounding (IDCT, upsampling): a level or two.
            assert!(mean < 1.0 && max <= 8, "{name}: mean {mean:.2}, max {max}");
        }
    }

    /// Lossless (SOF3) frames decode exactly to libjpeg-turbo 3's pixels
    /// (Pillow's decode of each, in `.rgb`; both made by
    /// `tests/data/jpeg-lossless/make.py`: every predictor, gray and RGB,
    /// component ids with and without an Adobe marker, restart intervals,
    /// a point transform, one scan per component), and are never stored
    /// untouched; YCbCr-coded ones, which libjpeg-turbo refuses, are
    /// unsupported here too.
    #[test]
    fn lossless_frames_decode_as_libjpeg_turbo_decodes_them() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/jpeg-lossless");
        let names = [
            "rgb-adobe-p1-37x23",
            "rgb-adobe-p7-37x23",
            "gray-p4-37x23",
            "rgb-ids123-p5-37x23",
            "rgb-idsRGB-p2-37x23",
            "rgb-ids123-p3-37x23",
            "gray-p6-37x23",
            // Until ebv had a lossless decoder of its own, these three were
            // refused (the jpeg-decoder crate decodes them wrongly or fails).
            "rgb-pt1-p1-37x23",
            "gray-restart-p1-37x23",
            "rgb-separate-p4-37x23",
        ];
        for name in names {
            let jpeg = std::fs::read(dir.join(format!("{name}.jpg"))).unwrap();
            let want = std::fs::read(dir.join(format!("{name}.rgb"))).unwrap();
            let w = walk(&jpeg).unwrap();
            assert!(w.lossless && !w.clean(), "{name}");
            let header = crate::image::JpegHeader::parse(&jpeg).unwrap();
            assert!(!header.is_passthrough(37, 23), "{name}");
            let got = decode_rgb8(&jpeg, Default::default()).unwrap();
            assert_eq!((got.width, got.height), (37, 23), "{name}");
            assert!(got.data == want, "{name}: not libjpeg-turbo's pixels");
        }
        for (name, what) in [
            ("ycc-jfif-p1-37x23", "YCbCr-coded lossless jpeg (SOF3)"),
            ("ycc-adobe-p1-37x23", "YCbCr-coded lossless jpeg (SOF3)"),
        ] {
            let jpeg = std::fs::read(dir.join(format!("{name}.jpg"))).unwrap();
            assert_eq!(
                walk(&jpeg).unwrap_err(),
                Fault::Unsupported(what.into()),
                "{name}"
            );
        }
    }

    /// What zune-jpeg refuses and libjpeg handles otherwise, never stored
    /// untouched (found by mutating the headers of encoder output and
    /// decoding what the walk let through): a DRI segment of another length
    /// (libjpeg refuses it too), a DNL segment (libjpeg skips it: dropped,
    /// then decoded), a refinement scan of Ah 14 (libjpeg reads it).
    #[test]
    fn headers_zune_jpeg_refuses_are_never_passed_through() {
        let b = encode(32, 16, true, 0);
        let (app0, len) = first(&b, 0xE0);
        let mut dri = b.clone();
        dri[app0 + 1] = 0xDD;
        assert_eq!(
            walk(&dri).unwrap_err(),
            corrupt(format!("DRI segment of {} bytes", len - 2))
        );
        let mut dnl = b.clone();
        dnl[app0 + 1] = 0xDC;
        let w = walk(&dnl).unwrap();
        assert!(!w.clean());
        assert_eq!(pixels(&dnl), pixels(&b));
        // The last scan (one component, an AC band) made a refinement of
        // Ah 14 over Al 13: legal to libjpeg's checks.
        let last = b.windows(2).rposition(|x| x == [0xFF, 0xDA]).unwrap();
        let ahal = last + 4 + 1 + 2 + 2;
        assert_eq!(b[last + 4], 1);
        let mut ah14 = b.clone();
        ah14[ahal] = 0xED;
        assert_eq!(
            walk(&ah14).unwrap_err(),
            Fault::Unsupported("progressive refinement scan of Ah=14".into())
        );
    }

    /// A quantisation table's precision above 1 is read as 16-bit, as
    /// libjpeg (and Pillow) read it; zune-jpeg is given 1.
    #[test]
    fn any_nonzero_quantisation_precision_is_16_bit() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/jpeg-arith");
        let b = std::fs::read(dir.join("seq-q3-16bit.huff.jpg")).unwrap();
        let (dqt, _) = first(&b, 0xDB);
        assert_eq!(b[dqt + 4] >> 4, 1, "a 16-bit table");
        let mut c = b.clone();
        c[dqt + 4] |= 0x30;
        let w = walk(&c).unwrap();
        assert_eq!(w.precision_fixes, [dqt + 4]);
        assert!(!w.clean());
        assert_eq!(w.repaired(&c).as_ref(), &b[..]);
        assert_eq!(pixels(&c), pixels(&b));
        let mut c = b.clone();
        c[dqt + 4] = 0x14;
        assert_eq!(
            walk(&c).unwrap_err(),
            corrupt("quantisation table 4 (0 to 3)")
        );
    }

    /// A DC table no scan uses may hold symbols above 15 (libjpeg checks
    /// only the tables it decodes with; zune-jpeg refuses them anywhere):
    /// read, not stored untouched. A used one is corrupt.
    #[test]
    fn unused_dc_tables_with_large_symbols_are_read() {
        let b = encode(32, 16, false, 0);
        let table = |slot: u8| {
            let mut seg = vec![0xFF, 0xC4, 0, 20, slot, 1];
            seg.extend_from_slice(&[0; 15]);
            seg.push(20);
            seg
        };
        // A DC table in slot 3 (no scan uses it) holding symbol 20, and
        // one in slot 0 that the encoder's own tables then replace.
        let (sof, len) = first(&b, 0xC0);
        let c = inserted(&b, sof + len, &[table(3), table(0)].concat());
        let w = walk(&c).unwrap();
        assert_eq!(w.dc_symbol_fixes, [sof + len + 21, sof + len + 43]);
        assert!(!w.clean());
        assert_eq!(pixels(&c), pixels(&b));
        // In slot 0 just before the scan, which decodes with it.
        let (sos, _) = first(&b, 0xDA);
        assert_eq!(
            walk(&inserted(&b, sos, &table(0))).unwrap_err(),
            corrupt("DC Huffman table 0 holds symbol 20 (at most 15)")
        );
    }

    /// Huffman tables never defined: libjpeg's standard ones stand in for a
    /// sequential frame (Motion-JPEG), not for a progressive one, which
    /// libjpeg-turbo and Pillow refuse (a DHT segment cut short by damage
    /// must not be read with tables the file never had).
    #[test]
    fn only_sequential_frames_default_their_huffman_tables() {
        let seq = encode(32, 16, false, 0);
        let bare = without(&seq, 0xC4);
        assert!(walk(&bare).is_ok());
        let prog = encode(32, 16, true, 0);
        assert_eq!(
            walk(&without(&prog, 0xC4)).unwrap_err(),
            corrupt("no DC Huffman table 0")
        );
    }

    /// A stream of more scans than any encoder writes is refused before a
    /// decoder spends minutes on it.
    #[test]
    fn a_hundred_scans_are_the_limit() {
        let b = encode(16, 16, true, 0);
        let (sos, _) = first(&b, 0xDA);
        let eoi = b.len() - 2;
        // The first scan (a DC scan) repeated: `scans` of them in all.
        let next = sos
            + 2
            + b[sos + 2..]
                .windows(2)
                .position(|w| w == [0xFF, 0xDA])
                .unwrap();
        let with = |scans: usize| {
            let mut c = b[..next].to_vec();
            for _ in 1..scans {
                c.extend_from_slice(&b[sos..next]);
            }
            c.extend_from_slice(&b[next..eoi + 2]);
            c
        };
        let total = |c: &[u8]| c.windows(2).filter(|w| *w == [0xFF, 0xDA]).count();
        let ok = with(MAX_SCANS - 20);
        let over = with(MAX_SCANS);
        assert!(total(&ok) <= MAX_SCANS && total(&over) > MAX_SCANS);
        assert!(walk(&ok).is_ok());
        assert_eq!(
            walk(&over).unwrap_err(),
            Fault::Unsupported(format!("jpeg of more than {MAX_SCANS} scans"))
        );
        // Never stored untouched either (the header parse is the walk).
        assert!(crate::image::JpegHeader::parse(&over).is_err());
        assert!(crate::image::JpegHeader::parse(&ok)
            .unwrap()
            .is_passthrough(16, 16));
    }

    /// What the lossless branch checks: the predictor, Se, Ah and the
    /// point transform; DC symbol 16 (allowed in lossless tables only);
    /// other precisions, subsampling and four components as unsupported.
    #[test]
    fn lossless_structure_is_checked() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/jpeg-lossless");
        let b = std::fs::read(dir.join("rgb-idsRGB-p2-37x23.jpg")).unwrap();
        let (sos, _) = first(&b, 0xDA);
        // Ss, Se, Ah/Al follow the three component pairs.
        let params = sos + 4 + 1 + 6;
        assert_eq!(b[params..params + 3], [2, 0, 0]);
        for (ss, se, ahal) in [(0, 0, 0), (8, 0, 0), (1, 63, 0), (1, 0, 0x10), (1, 0, 8)] {
            let mut c = b.clone();
            c[params..params + 3].copy_from_slice(&[ss, se, ahal]);
            let fault = walk(&c).unwrap_err();
            assert!(
                matches!(&fault, Fault::Corrupt(s) if s.starts_with("lossless scan parameters")),
                "{ss} {se} {ahal}: {fault:?}"
            );
        }
        let mut pt7 = b.clone();
        pt7[params + 2] = 7;
        assert!(walk(&pt7).is_ok(), "a point transform of 7 bits is read");
        // minilossless's DC table holds symbols 0..=16: legal here, not in
        // a DCT frame (the same table under SOF0 is refused at the scan).
        let (sof, _) = first(&b, 0xC3);
        let mut dct = b.clone();
        dct[sof + 1] = 0xC1;
        assert_eq!(
            walk(&dct).unwrap_err(),
            corrupt("no quantisation table 0 for component 82")
        );
        let (dht, _) = first(&b, 0xC4);
        let mut with_dqt = b[..dht].to_vec();
        with_dqt.extend_from_slice(&[0xFF, 0xDB, 0, 67, 0]);
        with_dqt.extend_from_slice(&[1; 64]);
        with_dqt.extend_from_slice(&b[dht..]);
        let (sof, _) = first(&with_dqt, 0xC3);
        with_dqt[sof + 1] = 0xC1;
        assert_eq!(
            walk(&with_dqt).unwrap_err(),
            corrupt("DC Huffman table 0 holds symbol 16 (at most 15)")
        );
        // Precision, sampling, component count.
        let (sof, _) = first(&b, 0xC3);
        let mut p12 = b.clone();
        p12[sof + 4] = 12;
        assert_eq!(
            walk(&p12).unwrap_err(),
            Fault::Unsupported("12-bit lossless jpeg (SOF3)".into())
        );
        let mut sub = b.clone();
        sub[sof + 11] = 0x21;
        assert_eq!(
            walk(&sub).unwrap_err(),
            Fault::Unsupported("lossless jpeg with subsampled components (SOF3)".into())
        );
    }

    /// Parses a DHT segment's tables: (class, slot) → bit counts + values.
    fn dht_tables(seg: &[u8]) -> Vec<((u8, u8), Vec<u8>)> {
        let mut s = &seg[4..];
        let mut out = Vec::new();
        while !s.is_empty() {
            let n: usize = s[1..17].iter().map(|&c| usize::from(c)).sum();
            out.push(((s[0] >> 4, s[0] & 15), s[1..17 + n].to_vec()));
            s = &s[17 + n..];
        }
        out
    }

    /// What libjpeg reads with a warning or its default tables is rewritten
    /// for zune-jpeg and decodes to the original's pixels, and is not
    /// stored byte for byte.
    #[test]
    fn what_libjpeg_reads_is_repaired_to_the_same_pixels() {
        let b = encode(40, 32, false, 0);
        let p = encode(40, 32, true, 0);
        let want = pixels(&b);
        let want_p = pixels(&p);

        // The encoder writes the standard tables of Annex K (an
        // independent copy of them): ours must equal them slot by slot.
        let mut theirs: Vec<_> = segments(&b)
            .into_iter()
            .filter(|s| s.0 == 0xC4)
            .flat_map(|(_, at, len)| dht_tables(&b[at..at + len]))
            .collect();
        theirs.sort();
        let mut ours = dht_tables(&standard_dht(&[(0, 0), (0, 1), (1, 0), (1, 1)]));
        ours.sort();
        assert_eq!(theirs, ours);

        let (dqt, _) = first(&b, 0xDB);
        let (sof, _) = first(&b, 0xC0);
        let (sos, sos_len) = first(&b, 0xDA);
        let junk = [0x12u8, 0x00, 0x34];
        let mut short_app1 = vec![0xFF, 0xE1, 0x00, 0x0E - 4];
        short_app1.extend(b"Exif\0\0\x11\x22\x33\x44\x55\x66");
        let mut se = b.clone();
        se[sos + sos_len - 2] = 203;
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (without(&b, 0xC4), "no Huffman tables (Motion-JPEG)"),
            (inserted(&b, dqt, &junk), "junk before DQT"),
            (inserted(&b, sof, &junk), "junk before SOF"),
            (inserted(&b, sos, &junk), "junk before SOS"),
            (
                inserted(&inserted(&b, sos, &junk), dqt, &junk),
                "junk twice",
            ),
            (inserted(&b, 2, &short_app1), "APP1 length 4 short"),
            (se, "sequential scan with Se=203"),
            (
                inserted(&without(&b, 0xC4), first(&without(&b, 0xC4), 0xDA).0, &junk),
                "junk and no tables",
            ),
        ];
        for (bytes, what) in cases {
            let w = walk(&bytes).unwrap_or_else(|e| panic!("{what}: {e:?}"));
            assert!(!w.clean(), "{what}");
            assert_eq!(pixels(&bytes), want, "{what}");
            let h = crate::image::JpegHeader::parse(&bytes).unwrap();
            assert!(!h.is_passthrough(40, 32), "{what}");
        }
        // Bytes after a scan's data are part of it to a marker walk (only
        // decoding tells them apart): the decoder skips them, as libjpeg does.
        let scans: Vec<usize> = p
            .windows(2)
            .enumerate()
            .filter(|(_, w)| w == &[0xFF, 0xDA])
            .map(|(i, _)| i)
            .collect();
        assert!(scans.len() > 2);
        let between = inserted(&p, scans[2], &junk);
        assert_eq!(walk(&between).unwrap().end, between.len());
        assert_eq!(pixels(&between), want_p);
    }

    /// Second audit: segments between progressive scans, a short Adobe
    /// segment and a one-component frame with factor 3 are read as libjpeg
    /// reads them; a sequential frame coded one component per scan
    /// (zune-jpeg would decode garbage) goes to the other decoder; an empty
    /// scan and Huffman tables libjpeg refuses are corrupt.
    #[test]
    fn segments_between_scans_and_bad_tables() {
        let p = encode(40, 32, true, 0);
        let want_p = pixels(&p);
        let scans: Vec<usize> = p
            .windows(2)
            .enumerate()
            .filter(|(_, w)| w == &[0xFF, 0xDA])
            .map(|(i, _)| i)
            .collect();
        let mut app = vec![0xFF, 0xE0, 0x00, 0x10];
        app.extend(b"JFIF\0\x01\x01\0\0\x01\0\x01\0\0");
        app.extend([
            0xFF, 0xE5, 0x00, 0x04, 0x12, 0x34, 0xFF, 0xFE, 0x00, 0x03, b'c',
        ]);
        let between = inserted(&p, scans[2], &app);
        let w = walk(&between).unwrap();
        assert!(!w.clean());
        assert_eq!(pixels(&between), want_p);

        let b = encode(40, 32, false, 0);
        let want = pixels(&b);
        let short_adobe = inserted(&b, 2, b"\xFF\xEE\x00\x08Adobe\0");
        assert!(!walk(&short_adobe).unwrap().clean());
        assert_eq!(pixels(&short_adobe), want);

        // A gray frame says 3x1: meaningless for one component.
        let mut gray = Vec::new();
        jpeg_encoder::Encoder::new(&mut gray, 90)
            .encode(&[90u8; 24 * 16], 24, 16, jpeg_encoder::ColorType::Luma)
            .unwrap();
        let want_gray = pixels(&gray);
        let (sof, _) = first(&gray, 0xC0);
        let mut g3 = gray.clone();
        g3[sof + 11] = 0x31;
        assert!(!walk(&g3).unwrap().clean());
        assert_eq!(pixels(&g3), want_gray);

        // One component per scan: the first scan names one of three.
        let (sos, sos_len) = first(&b, 0xDA);
        let mut one = b[..sos].to_vec();
        one.extend([0xFF, 0xDA, 0x00, 0x08, 0x01]);
        one.extend_from_slice(&b[sos + 5..sos + 7]);
        one.extend_from_slice(&b[sos + sos_len - 3..]);
        let w = walk(&one).unwrap();
        assert_eq!(
            w.other_decoder.as_deref(),
            Some("a sequential frame coded one component per scan")
        );

        // A scan header written twice: the first scan codes nothing.
        let twice = inserted(&b, sos, &b[sos..sos + sos_len]);
        assert!(matches!(walk(&twice), Err(Fault::Corrupt(s)) if s.contains("no coded data")));

        // A DC symbol above 15, and more 1-bit codes than fit.
        let (dht, _) = first(&b, 0xC4);
        let table = dht + 4;
        assert_eq!(b[table] >> 4, 0, "the first table is a DC table");
        let n: usize = b[table + 1..table + 17]
            .iter()
            .map(|&c| usize::from(c))
            .sum();
        let mut sym = b.clone();
        sym[table + 17 + n - 1] = 32;
        let fault = walk(&sym).unwrap_err();
        assert!(
            matches!(&fault, Fault::Corrupt(s) if s.contains("holds symbol 32")),
            "{fault:?}"
        );
        // Two 1-bit codes (taken from the 3-bit ones, so the segment's
        // length holds): no room is left for any other code.
        let mut full = b.clone();
        assert!(full[table + 3] >= 2);
        full[table + 1] += 2;
        full[table + 3] -= 2;
        let fault = walk(&full).unwrap_err();
        assert!(
            matches!(&fault, Fault::Corrupt(s) if s.contains("more codes of 1 bits")),
            "{fault:?}"
        );
    }
}
