//! PNG text chunks (`tEXt`, `zTXt`, `iTXt`) looked up by keyword, the way
//! Pillow fills a PNG's `info`: the orientation can hide in two of them,
//! an XMP packet (`XML:com.adobe.xmp`) and the EXIF block ImageMagick
//! writes as hexadecimal text (`Raw profile type exif`).
//!
//! Invariants: every chunk up to IEND (or the end of the bytes) is seen,
//! before or after the pixel data; the *last* chunk with the keyword wins,
//! as each one overwrites Pillow's `info[keyword]`; compressed text is
//! inflated up to [`MAX_TEXT`] bytes (Pillow's `MAX_TEXT_CHUNK`), and a
//! chunk that inflates to more, or not at all, is no text. Nothing here
//! panics on bad bytes; the chunks are [`super::png::chunks`]'s.

use std::io::Read;

/// The most bytes compressed text may inflate to.
pub(crate) const MAX_TEXT: u64 = 1 << 20;

/// The text of the last `tEXt`, `zTXt` or `iTXt` chunk keyed `keyword`.
pub(crate) fn last_text(bytes: &[u8], keyword: &[u8]) -> Option<Vec<u8>> {
    super::png::chunks(bytes)
        .filter_map(|(kind, data)| match kind {
            b"tEXt" => text(data, keyword),
            b"zTXt" => ztxt(data, keyword),
            b"iTXt" => itxt(data, keyword),
            _ => None,
        })
        .last()
}

/// `keyword\0text`.
fn text(data: &[u8], keyword: &[u8]) -> Option<Vec<u8>> {
    data.strip_prefix(keyword)?
        .strip_prefix(b"\0")
        .map(<[u8]>::to_vec)
}

/// `keyword\0`, method 0 (zlib), compressed text.
fn ztxt(data: &[u8], keyword: &[u8]) -> Option<Vec<u8>> {
    match data.strip_prefix(keyword)?.strip_prefix(b"\0")? {
        [0, z @ ..] => inflate(z),
        _ => None,
    }
}

/// `keyword\0`, compression flag, method, `language\0`, `translated
/// keyword\0`, text (zlib-compressed when the flag is set).
fn itxt(data: &[u8], keyword: &[u8]) -> Option<Vec<u8>> {
    let [flag, method, rest @ ..] = data.strip_prefix(keyword)?.strip_prefix(b"\0")? else {
        return None;
    };
    let mut fields = rest.splitn(3, |&b| b == 0);
    let (_language, _translated, value) = (fields.next()?, fields.next()?, fields.next()?);
    match (flag, method) {
        (0, _) => Some(value.to_vec()),
        (_, 0) => inflate(value),
        _ => None,
    }
}

fn inflate(z: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    flate2::read::ZlibDecoder::new(z)
        .take(MAX_TEXT + 1)
        .read_to_end(&mut out)
        .ok()?;
    (out.len() as u64 <= MAX_TEXT).then_some(out)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::Write;

    pub(crate) fn chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
        let mut c = (data.len() as u32).to_be_bytes().to_vec();
        c.extend_from_slice(kind);
        c.extend_from_slice(data);
        c.extend_from_slice(&[0; 4]); // the CRC is not read here
        c
    }

    pub(crate) fn zlib(data: &[u8]) -> Vec<u8> {
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        z.write_all(data).unwrap();
        z.finish().unwrap()
    }

    fn keyed(keyword: &[u8], tail: &[u8]) -> Vec<u8> {
        let mut d = keyword.to_vec();
        d.push(0);
        d.extend_from_slice(tail);
        d
    }

    fn png(chunks: &[Vec<u8>]) -> Vec<u8> {
        let mut p = b"\x89PNG\r\n\x1a\n".to_vec();
        for c in chunks {
            p.extend_from_slice(c);
        }
        p
    }

    #[test]
    fn reads_each_chunk_type_and_keeps_the_last() {
        let k = b"XML:com.adobe.xmp";
        let mut ztxt = vec![0];
        ztxt.extend(zlib(b"two"));
        let mut itxt_z = vec![1, 0];
        itxt_z.extend_from_slice(b"en\0\0");
        itxt_z.extend(zlib(b"four"));
        let cases: [(Vec<u8>, &[u8]); 4] = [
            (chunk(b"tEXt", &keyed(k, b"one")), b"one"),
            (chunk(b"zTXt", &keyed(k, &ztxt)), b"two"),
            (chunk(b"iTXt", &keyed(k, b"\0\0en\0Titel\0three")), b"three"),
            (chunk(b"iTXt", &keyed(k, &itxt_z)), b"four"),
        ];
        for (c, want) in &cases {
            let p = png(&[chunk(b"IHDR", &[0; 13]), c.clone(), chunk(b"IEND", &[])]);
            assert_eq!(last_text(&p, k).as_deref(), Some(*want));
        }
        // After the pixels too, and the last one counts.
        let all: Vec<Vec<u8>> = std::iter::once(chunk(b"IHDR", &[0; 13]))
            .chain(cases.iter().map(|(c, _)| c.clone()))
            .chain([chunk(b"IDAT", &[1, 2]), cases[0].0.clone()])
            .collect();
        assert_eq!(last_text(&png(&all), k).as_deref(), Some(&b"one"[..]));
    }

    #[test]
    fn other_keywords_bad_chunks_and_bombs_are_no_text() {
        let k = b"Raw profile type exif";
        let other = chunk(b"tEXt", &keyed(b"Raw profile type exi", b"x"));
        let longer = chunk(b"tEXt", &keyed(b"Raw profile type exif2", b"x"));
        let bad_z = chunk(b"zTXt", &keyed(k, &[0, 1, 2, 3]));
        let method_1 = chunk(b"zTXt", &keyed(k, &[1, 0x78, 0x9c]));
        let mut bomb = vec![0];
        bomb.extend(zlib(&vec![b'a'; MAX_TEXT as usize + 1]));
        let bomb = chunk(b"zTXt", &keyed(k, &bomb));
        let short_itxt = chunk(b"iTXt", &keyed(k, b"\0\0en"));
        for c in [other, longer, bad_z, method_1, bomb, short_itxt] {
            assert_eq!(last_text(&png(&[c]), k), None);
        }
        // A chunk running past the end ends the walk, without a panic.
        let good = chunk(b"tEXt", &keyed(k, b"v"));
        let mut cut = png(&[good.clone(), good]);
        cut.truncate(cut.len() - 3);
        assert_eq!(last_text(&cut, k).as_deref(), Some(&b"v"[..]));
        let mut huge = png(&[]);
        huge.extend_from_slice(&[0xFF, 0xFF, 0xFF, 0xFF, b't', b'E', b'X', b't']);
        assert_eq!(last_text(&huge, k), None);
        // Nothing after IEND is read.
        let after = png(&[chunk(b"IEND", &[]), chunk(b"tEXt", &keyed(k, b"v"))]);
        assert_eq!(last_text(&after, k), None);
    }
}
