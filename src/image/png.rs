//! The chunk structure of PNG files: the chunks in file order (read by the
//! EXIF and text lookups); for files that end after their last whole chunk
//! without an IEND chunk, the IEND the `image` crate's decoder insists on;
//! and, for a file that decoder refuses, the pixel data salvaged when only
//! what frames it is damaged.
//!
//! Invariants: [`with_iend`] changes only a file whose chunks, walked from
//! the signature by their lengths, end exactly at the end of the bytes,
//! with at least one IDAT and no IEND, and only by appending IEND; Pillow
//! reads such files (it stops at the end of the data). [`salvaged`]
//! rebuilds a file only when its pixel data is provably whole: the IDAT
//! payloads, read by their lengths (the last one to the end of the file
//! when its length runs past it), hold a complete zlib stream whose Adler-32
//! checksum matches. That checksum vouches for the inflated pixel data
//! the IDAT CRCs protect in its compressed form, so a damaged IDAT CRC, a
//! damaged IDAT length, a file cut after the stream, or garbage after it
//! lose nothing. When the checksum itself is what is damaged, the IDAT
//! CRCs vouch instead: every IDAT before the last passes its own CRC, and
//! the last one, rebuilt with the checksum of the inflated data, has the
//! CRC the file holds (a byte of the checksum changed, dropped or
//! doubled), or the file ends inside the checksum and the bytes of it that
//! remain agree (a cut download keeps what it has unchanged). Chunks before
//! the pixels keep their CRC check: a critical one (IHDR, PLTE) that fails
//! it stops the salvage; an ancillary one is dropped, as libpng does. A
//! file cut inside the pixel data, or with damaged pixel data, stays an
//! error.

use std::borrow::Cow;

const SIGNATURE: usize = 8;
/// Length, type and CRC around a chunk's data.
const CHUNK_OVERHEAD: usize = 12;
const IEND: [u8; 12] = [0, 0, 0, 0, b'I', b'E', b'N', b'D', 0xAE, 0x42, 0x60, 0x82];
const SIGNATURE_BYTES: &[u8; 8] = b"\x89PNG\r\n\x1a\n";

/// The chunks of a PNG as (type, data), in file order, from the one after
/// the signature up to IEND or to the first chunk that runs past the end of
/// the bytes. CRCs are not checked (the pixel decoder does).
pub(crate) fn chunks(bytes: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    let mut pos = SIGNATURE;
    std::iter::from_fn(move || {
        let head = bytes.get(pos..pos + 8)?;
        let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
        let kind = &head[4..8];
        let data = bytes.get(pos + 8..(pos + 8).checked_add(len)?)?;
        if kind == b"IEND" {
            return None;
        }
        pos += CHUNK_OVERHEAD + len;
        Some((kind, data))
    })
}

/// `bytes`, with IEND appended when only IEND is missing.
pub(crate) fn with_iend(bytes: &[u8]) -> Cow<'_, [u8]> {
    let mut pos = SIGNATURE;
    let mut idat = false;
    while pos < bytes.len() {
        let Some(head) = bytes.get(pos..pos + 8) else {
            return Cow::Borrowed(bytes);
        };
        let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
        match &head[4..8] {
            b"IEND" => return Cow::Borrowed(bytes),
            b"IDAT" => idat = true,
            _ => {}
        }
        pos = match len
            .checked_add(CHUNK_OVERHEAD)
            .and_then(|n| pos.checked_add(n))
        {
            Some(end) if end <= bytes.len() => end,
            _ => return Cow::Borrowed(bytes),
        };
    }
    if pos != bytes.len() || !idat {
        return Cow::Borrowed(bytes);
    }
    let mut out = Vec::with_capacity(bytes.len() + IEND.len());
    out.extend_from_slice(bytes);
    out.extend_from_slice(&IEND);
    Cow::Owned(out)
}

/// A PNG holding the pre-pixel chunks that verify, one IDAT with the whole
/// zlib stream and IEND, when the file's pixel data is whole (see the
/// module's invariants); `None` otherwise.
pub(crate) fn salvaged(bytes: &[u8]) -> Option<Vec<u8>> {
    if bytes.get(..SIGNATURE)? != &SIGNATURE_BYTES[..] {
        return None;
    }
    let be32 = |at: usize| -> Option<usize> {
        let b = bytes.get(at..at.checked_add(4)?)?;
        usize::try_from(u32::from_be_bytes([b[0], b[1], b[2], b[3]])).ok()
    };
    let mut out = bytes[..SIGNATURE].to_vec();
    let mut pos = SIGNATURE;
    let mut ihdr = None;
    loop {
        let len = be32(pos)?;
        let kind = bytes.get(pos + 4..pos + 8)?;
        if kind == b"IDAT" {
            break;
        }
        if kind == b"IEND" {
            return None;
        }
        let end = pos.checked_add(CHUNK_OVERHEAD)?.checked_add(len)?;
        let chunk = bytes.get(pos..end)?;
        let crc = crc32fast::hash(&chunk[4..8 + len]);
        if Some(crc as usize) == be32(end - 4) {
            out.extend_from_slice(chunk);
            if kind == b"IHDR" {
                ihdr = Some(&chunk[8..8 + len]);
            }
        } else if kind[0] & 0x20 == 0 {
            return None;
        }
        pos = end;
    }
    let ihdr = ihdr.filter(|h| h.len() == 13)?;
    let mut data = Vec::new();
    let mut idats = Vec::new();
    while bytes.get(pos + 4..pos + 8) == Some(b"IDAT") {
        let start = pos + 8;
        let whole = match be32(pos)?.checked_add(start) {
            Some(end) if end + 4 <= bytes.len() => end,
            _ => bytes.len(),
        };
        idats.push(Idat {
            at: pos,
            data_at: data.len(),
        });
        data.extend_from_slice(&bytes[start..whole]);
        if whole == bytes.len() {
            break;
        }
        pos = whole + 4;
    }
    let stream = zlib_stream(&data, inflated_bound(ihdr))?;
    let adler = stream.adler.to_be_bytes();
    let checksum = stream.checksum_at..stream.checksum_at + 4;
    if data.get(checksum.clone()) != Some(&adler[..])
        && !checksum_alone_damaged(bytes, &idats, &data, checksum.start, adler)
    {
        return None;
    }
    out.extend_from_slice(&(checksum.end as u32).to_be_bytes());
    let idat_start = out.len();
    out.extend_from_slice(b"IDAT");
    out.extend_from_slice(&data[..checksum.start]);
    out.extend_from_slice(&adler);
    let crc = crc32fast::hash(&out[idat_start..]);
    out.extend_from_slice(&crc.to_be_bytes());
    out.extend_from_slice(&IEND);
    Some(out)
}

/// An IDAT chunk as [`salvaged`] read it: where it starts in the file, and
/// where its payload starts in the pixel data gathered from all of them.
struct Idat {
    at: usize,
    data_at: usize,
}

/// Whether the damage to a zlib stream whose checksum (at `checksum_at` in
/// `data`, gathered from `idats`) does not match the `adler` of what it
/// inflated to is confined to that checksum: proved by the IDAT CRCs (see
/// the module's invariants).
fn checksum_alone_damaged(
    bytes: &[u8],
    idats: &[Idat],
    data: &[u8],
    checksum_at: usize,
    adler: [u8; 4],
) -> bool {
    let Some((last, before)) = idats.split_last() else {
        return false;
    };
    // The stream's checksum ends the last IDAT, as encoders write it.
    if checksum_at < last.data_at {
        return false;
    }
    for (k, idat) in before.iter().enumerate() {
        let payload = &data[idat.data_at..idats[k + 1].data_at];
        let end = idat.at + 8 + payload.len();
        let crc = crc32fast::hash(&bytes[idat.at + 4..end]);
        if bytes.get(end..end + 4) != Some(&crc.to_be_bytes()[..]) {
            return false;
        }
    }
    let in_file = last.at + 8 + (checksum_at - last.data_at);
    // The last IDAT's length must be the one it had when the checksum
    // ended it.
    let length = u32::try_from(in_file + 4 - (last.at + 8)).map(u32::to_be_bytes);
    if length.ok().as_ref().map(|l| &l[..]) != bytes.get(last.at..last.at + 4) {
        return false;
    }
    let held = &bytes[in_file.min(bytes.len())..];
    if held.len() < 4 {
        return adler.starts_with(held);
    }
    let mut crc = crc32fast::Hasher::new();
    crc.update(&bytes[last.at + 4..in_file]);
    crc.update(&adler);
    let crc = crc.finalize().to_be_bytes();
    // The CRC after a checksum with a byte dropped, changed or doubled.
    (3..=5).any(|gap| bytes.get(in_file + gap..in_file + gap + 4) == Some(&crc[..]))
}

/// The most bytes the pixel data of `ihdr`'s image can inflate to: eight
/// bytes a pixel (16-bit RGBA) and a filter byte a row, for each of the
/// seven passes of an interlaced image at most; a stream that inflates to
/// more is not this image's.
fn inflated_bound(ihdr: &[u8]) -> u64 {
    let w = u64::from(u32::from_be_bytes([ihdr[0], ihdr[1], ihdr[2], ihdr[3]]));
    let h = u64::from(u32::from_be_bytes([ihdr[4], ihdr[5], ihdr[6], ihdr[7]]));
    w.saturating_mul(8)
        .saturating_add(7)
        .saturating_mul(h)
        .saturating_add(7 * h)
}

/// A complete zlib stream at the start of some pixel data: where its
/// Adler-32 checksum starts (after the deflate data) and the checksum of
/// what it inflated to.
#[derive(Debug, PartialEq, Eq)]
struct Stream {
    checksum_at: usize,
    adler: u32,
}

/// The complete zlib stream at the start of `data`, when its deflate data
/// ends and inflates to at most `bound` bytes; `None` otherwise. Its stored
/// checksum is not compared here.
fn zlib_stream(data: &[u8], bound: u64) -> Option<Stream> {
    use flate2::{Decompress, FlushDecompress, Status};
    let header = data.get(..2)?;
    // Deflate with a window of at most 32 KiB, a header check that holds,
    // no preset dictionary (PNG allows nothing else).
    if header[0] & 0x0F != 8
        || header[0] >> 4 > 7
        || u16::from_be_bytes([header[0], header[1]]) % 31 != 0
        || header[1] & 0x20 != 0
    {
        return None;
    }
    let deflate = &data[2..];
    let mut z = Decompress::new(false);
    let mut scratch = vec![0u8; 1 << 15];
    let mut adler = adler2::Adler32::new();
    loop {
        let (read, wrote) = (z.total_in(), z.total_out());
        let at = usize::try_from(read).ok()?;
        let status = z
            .decompress(&deflate[at..], &mut scratch, FlushDecompress::None)
            .ok()?;
        if z.total_out() > bound {
            return None;
        }
        let new = usize::try_from(z.total_out() - wrote).ok()?;
        adler.write_slice(&scratch[..new]);
        match status {
            Status::StreamEnd => {
                return Some(Stream {
                    checksum_at: 2 + usize::try_from(z.total_in()).ok()?,
                    adler: adler.checksum(),
                })
            }
            _ if z.total_in() == read && z.total_out() == wrote => return None,
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::{decode_rgb8, DecodeLimits};

    fn png(w: u32, h: u32) -> Vec<u8> {
        let px: Vec<u8> = (0..w * h * 3).map(|i| (i * 7 % 251) as u8).collect();
        let mut out = Vec::new();
        ::image::ImageEncoder::write_image(
            ::image::codecs::png::PngEncoder::new(&mut out),
            &px,
            w,
            h,
            ::image::ExtendedColorType::Rgb8,
        )
        .unwrap();
        out
    }

    #[test]
    fn only_a_missing_iend_is_supplied() {
        let whole = png(13, 7);
        assert_eq!(
            &whole[whole.len() - 12..],
            &IEND,
            "the encoder's IEND is ours"
        );
        let want = decode_rgb8(&whole, Default::default()).unwrap();
        assert!(matches!(with_iend(&whole), Cow::Borrowed(_)));

        let cut = &whole[..whole.len() - 12];
        assert!(matches!(with_iend(cut), Cow::Owned(ref v) if v[..] == whole[..]));
        assert_eq!(decode_rgb8(cut, Default::default()).unwrap(), want);

        // Cut inside a chunk: left to the decoder, which rejects a cut in
        // the pixel data (a cut in the last CRC is the salvage's).
        let idat = whole.windows(4).position(|w| w == b"IDAT").unwrap();
        for end in [idat + 6, whole.len() - 13] {
            assert!(
                matches!(with_iend(&whole[..end]), Cow::Borrowed(_)),
                "{end}"
            );
        }
        assert!(decode_rgb8(&whole[..idat + 6], Default::default()).is_err());
        assert!(matches!(
            with_iend(&whole[..whole.len() - 5]),
            Cow::Borrowed(_)
        ));
        // No pixel data at all: nothing to supply IEND for.
        assert!(matches!(with_iend(&whole[..idat - 4]), Cow::Borrowed(_)));
        // A length that runs past the end or overflows.
        let mut huge = cut.to_vec();
        huge.extend_from_slice(&[0xFF, 0xFF, 0xFF, 0xF8, b't', b'E', b'X', b't']);
        assert!(matches!(with_iend(&huge), Cow::Borrowed(_)));
    }

    /// `file`'s chunks as (type, data), re-written with fresh CRCs, the
    /// IDAT data split into `parts` chunks.
    fn rechunk(file: &[u8], parts: usize) -> Vec<u8> {
        let mut out = file[..SIGNATURE].to_vec();
        let mut put = |kind: &[u8], data: &[u8]| {
            out.extend_from_slice(&(data.len() as u32).to_be_bytes());
            let at = out.len();
            out.extend_from_slice(kind);
            out.extend_from_slice(data);
            let crc = crc32fast::hash(&out[at..]);
            out.extend_from_slice(&crc.to_be_bytes());
        };
        for (kind, data) in chunks(file) {
            if kind == b"IDAT" {
                for part in data.chunks(data.len().div_ceil(parts)) {
                    put(b"IDAT", part);
                }
            } else {
                put(kind, data);
            }
        }
        put(b"IEND", b"");
        out
    }

    /// Where the `n`th chunk of type `kind` starts.
    fn chunk_at(file: &[u8], kind: &[u8], n: usize) -> usize {
        file.windows(4)
            .enumerate()
            .filter(|(_, w)| *w == kind)
            .nth(n)
            .unwrap()
            .0
            - 4
    }

    #[test]
    fn pixel_data_whole_behind_a_damaged_frame_is_salvaged() {
        let whole = rechunk(&png(19, 11), 3);
        let want = decode_rgb8(&whole, Default::default()).unwrap();
        let decode = |b: &[u8]| decode_rgb8(b, Default::default());
        let second = chunk_at(&whole, b"IDAT", 1);
        let second_len = u32::from_be_bytes(whole[second..second + 4].try_into().unwrap()) as usize;
        let crc = second + 8 + second_len;
        let last = chunk_at(&whole, b"IDAT", 2);
        let iend = chunk_at(&whole, b"IEND", 0);
        let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();
        let mut bad_crc = whole.clone();
        bad_crc[crc + 1] ^= 0x40;
        cases.push(("a middle IDAT's CRC", bad_crc));
        let mut inserted = whole.clone();
        inserted.insert(iend - 2, 0x55);
        cases.push(("a byte inserted in the last IDAT's CRC", inserted));
        let mut long = whole.clone();
        long[last] = 0x7F;
        cases.push(("the last IDAT's length", long));
        cases.push(("a cut in the last CRC", whole[..iend - 2].to_vec()));
        cases.push(("a cut in IEND", whole[..iend + 6].to_vec()));
        let mut tail = whole[..iend].to_vec();
        tail.extend_from_slice(b"\0\0garbage");
        cases.push(("garbage for IEND", tail));
        for (what, file) in &cases {
            assert!(
                matches!(
                    decode_rgb8(file, DecodeLimits { max_pixels: 100 }),
                    Err(crate::image::ImageError::TooLarge { .. })
                ),
                "{what}: the pixel limit still applies"
            );
            assert_eq!(decode(file).as_ref().ok(), Some(&want), "{what}");
        }

        // Damage the checksum cannot vouch for stays an error.
        let mut data = whole.clone();
        data[second + 8 + second_len / 2] ^= 0x01;
        let mut both = data.clone();
        both[crc] ^= 0x01;
        for (what, file) in [
            ("a pixel data byte", data),
            ("a pixel data byte and its CRC", both),
            ("a cut in the pixel data", whole[..last + 10].to_vec()),
        ] {
            assert!(decode(&file).is_err(), "{what}");
            assert!(salvaged(&file).is_none(), "{what}");
        }
    }

    #[test]
    fn chunks_before_the_pixels_keep_their_crc_check() {
        let mut with_text = rechunk(&png(9, 5), 1);
        let idat = chunk_at(&with_text, b"IDAT", 0);
        let mut text = Vec::new();
        text.extend_from_slice(&7u32.to_be_bytes());
        text.extend_from_slice(b"tEXtkey\0abc");
        text.extend_from_slice(&crc32fast::hash(b"tEXtkey\0abc").to_be_bytes());
        with_text.splice(idat..idat, text);
        let want = decode_rgb8(&with_text, Default::default()).unwrap();
        // An ancillary chunk that fails its CRC is dropped, as libpng does.
        let mut bad_text = with_text.clone();
        bad_text[idat + 9] ^= 0x20;
        assert_eq!(decode_rgb8(&bad_text, Default::default()).unwrap(), want);
        let rebuilt = salvaged(&bad_text).unwrap();
        assert!(!rebuilt.windows(4).any(|w| w == b"tEXt"));
        // A critical one stops the salvage.
        let mut bad_ihdr = with_text.clone();
        bad_ihdr[SIGNATURE + 8 + 12] ^= 0x01;
        assert!(salvaged(&bad_ihdr).is_none());
        assert!(decode_rgb8(&bad_ihdr, Default::default()).is_err());
    }

    #[test]
    fn the_zlib_stream_must_end_within_its_bound() {
        let stream = {
            use std::io::Write;
            let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
            z.write_all(&[7u8; 5000]).unwrap();
            z.finish().unwrap()
        };
        // The checksum zlib itself wrote is the one computed here.
        let stored = u32::from_be_bytes(stream[stream.len() - 4..].try_into().unwrap());
        let mut padded = stream.clone();
        padded.extend_from_slice(b"after");
        let want = Stream {
            checksum_at: stream.len() - 4,
            adler: stored,
        };
        assert_eq!(zlib_stream(&padded, 5000), Some(want));
        assert_eq!(zlib_stream(&stream, 4999), None, "inflates past the bound");
        // A stream cut inside its checksum has ended: the caller decides.
        let cut = &stream[..stream.len() - 1];
        assert_eq!(zlib_stream(cut, 5000).map(|s| s.adler), Some(stored));
        assert_eq!(zlib_stream(&stream[..stream.len() - 6], 5000), None);
        let mut header = stream.clone();
        header[1] ^= 1;
        assert_eq!(zlib_stream(&header, 5000), None, "header check");
        assert_eq!(
            inflated_bound(&[0, 0, 0, 2, 0, 0, 0, 3, 8, 2, 0, 0, 0]),
            3 * (16 + 7) + 21
        );
    }

    #[test]
    fn a_damaged_checksum_is_cleared_by_the_idat_crcs() {
        let whole = rechunk(&png(19, 11), 3);
        let want = decode_rgb8(&whole, Default::default()).unwrap();
        let decode = |b: &[u8]| decode_rgb8(b, Default::default());
        let iend = chunk_at(&whole, b"IEND", 0);
        // The stream's Adler-32 checksum ends the last IDAT, before its CRC.
        let adler = iend - 8;
        let mut cases: Vec<(String, Vec<u8>)> = Vec::new();
        for k in 0..4 {
            let mut set = whole.clone();
            set[adler + k] ^= 0x10;
            cases.push((format!("checksum byte {k} changed"), set));
            let mut dropped = whole.clone();
            dropped.remove(adler + k);
            cases.push((format!("checksum byte {k} dropped"), dropped));
            let mut doubled = whole.clone();
            doubled.insert(adler + k, whole[adler + k]);
            cases.push((format!("checksum byte {k} doubled"), doubled));
            cases.push((
                format!("cut after {k} checksum bytes"),
                whole[..adler + k].to_vec(),
            ));
        }
        // However many of its bytes are damaged: the CRC proves the rest.
        let mut twice = whole.clone();
        twice[adler] ^= 0x01;
        twice.remove(adler + 2);
        cases.push(("two checksum bytes damaged".into(), twice));
        for (what, file) in &cases {
            assert_eq!(decode(file).as_ref().ok(), Some(&want), "{what}");
        }

        // Without the CRCs' word, or against it, the damage stays.
        let crc_at = |file: &[u8], n: usize| {
            let at = chunk_at(file, b"IDAT", n);
            at + 8 + u32::from_be_bytes(file[at..at + 4].try_into().unwrap()) as usize
        };
        let mut refused: Vec<(&str, Vec<u8>)> = Vec::new();
        let mut with_middle_crc = whole.clone();
        with_middle_crc[adler + 1] ^= 0x10;
        with_middle_crc[crc_at(&whole, 1)] ^= 0x01;
        refused.push(("checksum and a middle IDAT's CRC", with_middle_crc));
        let mut with_last_crc = whole.clone();
        with_last_crc[adler + 1] ^= 0x10;
        with_last_crc[crc_at(&whole, 2) + 2] ^= 0x01;
        refused.push(("checksum and the last IDAT's CRC", with_last_crc));
        let mut held_wrong = whole[..adler + 2].to_vec();
        held_wrong[adler] ^= 0x01;
        refused.push(("a cut after a changed checksum byte", held_wrong));
        let mut length = whole[..adler + 2].to_vec();
        let last = chunk_at(&whole, b"IDAT", 2);
        length[last + 3] = length[last + 3].wrapping_add(9);
        refused.push(("a cut in the checksum and a longer last IDAT", length));
        let mut pixel = whole.clone();
        pixel[last + 12] ^= 0x04;
        pixel[adler] ^= 0x01;
        refused.push(("last IDAT data and its checksum", pixel));
        for (what, file) in &refused {
            assert!(salvaged(file).is_none(), "{what}");
            assert!(decode(file).is_err(), "{what}");
        }
    }
}
