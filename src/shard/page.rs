//! Parquet page headers, read straight from the mapped bytes.
//!
//! A page header is a Thrift struct in the compact protocol. The reader
//! needs four facts from it (page type, sizes, value count, encoding) to
//! find where the PLAIN values of a page start, so it decodes those fields
//! and skips everything else generically. Parsing it here rather than
//! through the parquet crate keeps the reader independent of that crate's
//! internal (and changing) page API, and lets every byte be bounds-checked:
//! a corrupt header is an error, never a panic or an out-of-range read.

use std::fmt;

/// Page types of `parquet.thrift`.
pub const PAGE_DATA: i32 = 0;
pub const PAGE_INDEX: i32 = 1;
pub const PAGE_DICTIONARY: i32 = 2;
pub const PAGE_DATA_V2: i32 = 3;

/// `Encoding.PLAIN` of `parquet.thrift`.
pub const ENCODING_PLAIN: i32 = 0;

/// Thrift nesting deeper than this is refused: real page headers nest two
/// levels (header → data page header → statistics), and a bound keeps a
/// corrupt header from recursing without end.
const MAX_DEPTH: u32 = 16;

/// What went wrong while decoding a header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageHeaderError(pub String);

impl fmt::Display for PageHeaderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The fields of a page header the reader uses.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PageHeader {
    /// Bytes of the header itself; the page body follows it.
    pub header_len: usize,
    pub page_type: i32,
    pub uncompressed_size: i32,
    pub compressed_size: i32,
    /// Values in a data page (V1 or V2); `None` for other page types.
    pub num_values: Option<i32>,
    /// Encoding of a data page's values.
    pub encoding: Option<i32>,
    /// V2 only: bytes of repetition and definition levels before the values.
    pub levels_len: i64,
    /// V2 only: whether the values are compressed (defaults to true).
    pub v2_compressed: bool,
}

/// Thrift compact types.
const T_BOOL_TRUE: u8 = 1;
const T_BOOL_FALSE: u8 = 2;
const T_BYTE: u8 = 3;
const T_I16: u8 = 4;
const T_I32: u8 = 5;
const T_I64: u8 = 6;
const T_DOUBLE: u8 = 7;
const T_BINARY: u8 = 8;
const T_LIST: u8 = 9;
const T_SET: u8 = 10;
const T_MAP: u8 = 11;
const T_STRUCT: u8 = 12;

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

fn err<T>(msg: impl Into<String>) -> Result<T, PageHeaderError> {
    Err(PageHeaderError(msg.into()))
}

impl<'a> Cursor<'a> {
    fn byte(&mut self) -> Result<u8, PageHeaderError> {
        match self.buf.get(self.pos) {
            Some(&b) => {
                self.pos += 1;
                Ok(b)
            }
            None => err("page header runs past the end of the column chunk"),
        }
    }

    fn skip(&mut self, n: usize) -> Result<(), PageHeaderError> {
        match self.pos.checked_add(n) {
            Some(end) if end <= self.buf.len() => {
                self.pos = end;
                Ok(())
            }
            _ => err("page header runs past the end of the column chunk"),
        }
    }

    fn varint(&mut self) -> Result<u64, PageHeaderError> {
        let mut v = 0u64;
        for shift in (0..70).step_by(7) {
            let b = self.byte()?;
            if shift == 63 && b > 1 {
                return err("varint overflows 64 bits");
            }
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        err("varint longer than 10 bytes")
    }

    fn zigzag(&mut self) -> Result<i64, PageHeaderError> {
        let v = self.varint()?;
        Ok((v >> 1) as i64 ^ -((v & 1) as i64))
    }

    fn i32(&mut self) -> Result<i32, PageHeaderError> {
        let v = self.zigzag()?;
        i32::try_from(v).map_err(|_| PageHeaderError(format!("i32 field holds {v}")))
    }

    /// Read a field header; `None` at the struct's STOP byte. Returns the
    /// field id and the compact type.
    fn field(&mut self, last_id: &mut i16) -> Result<Option<(i16, u8)>, PageHeaderError> {
        let b = self.byte()?;
        if b == 0 {
            return Ok(None);
        }
        let ty = b & 0x0f;
        let delta = (b >> 4) as i16;
        let id = if delta == 0 {
            let v = self.zigzag()?;
            i16::try_from(v).map_err(|_| PageHeaderError(format!("field id {v}")))?
        } else {
            last_id.wrapping_add(delta)
        };
        *last_id = id;
        Ok(Some((id, ty)))
    }

    /// Skip one value of compact type `ty`.
    fn skip_value(&mut self, ty: u8, depth: u32) -> Result<(), PageHeaderError> {
        if depth > MAX_DEPTH {
            return err("page header nests too deeply");
        }
        match ty {
            T_BOOL_TRUE | T_BOOL_FALSE => Ok(()),
            T_BYTE => self.skip(1),
            T_I16 | T_I32 | T_I64 => self.varint().map(|_| ()),
            T_DOUBLE => self.skip(8),
            T_BINARY => {
                let n = self.varint()?;
                self.skip(usize::try_from(n).unwrap_or(usize::MAX))
            }
            T_LIST | T_SET => {
                let h = self.byte()?;
                let elem = h & 0x0f;
                let n = match h >> 4 {
                    15 => self.varint()?,
                    n => u64::from(n),
                };
                for _ in 0..n {
                    self.skip_element(elem, depth + 1)?;
                }
                Ok(())
            }
            T_MAP => {
                let n = self.varint()?;
                if n == 0 {
                    return Ok(());
                }
                let kv = self.byte()?;
                for _ in 0..n {
                    self.skip_element(kv >> 4, depth + 1)?;
                    self.skip_element(kv & 0x0f, depth + 1)?;
                }
                Ok(())
            }
            T_STRUCT => {
                let mut last = 0i16;
                while let Some((_, t)) = self.field(&mut last)? {
                    self.skip_value(t, depth + 1)?;
                }
                Ok(())
            }
            other => err(format!("unknown thrift type {other}")),
        }
    }

    /// Skip one element of a list, set or map. Booleans there take one byte
    /// each (in a struct they live in the field header), so every element
    /// consumes at least one byte and a corrupt element count cannot loop
    /// without reaching the end of the buffer.
    fn skip_element(&mut self, ty: u8, depth: u32) -> Result<(), PageHeaderError> {
        if ty == T_BOOL_TRUE || ty == T_BOOL_FALSE {
            self.skip(1)
        } else {
            self.skip_value(ty, depth)
        }
    }
}

fn expect_i32(ty: u8, name: &str) -> Result<(), PageHeaderError> {
    if ty == T_I32 {
        Ok(())
    } else {
        err(format!("field {name} has thrift type {ty}, expected i32"))
    }
}

/// Decode the page header at the start of `buf` (which may extend past it).
pub fn parse_page_header(buf: &[u8]) -> Result<PageHeader, PageHeaderError> {
    let mut c = Cursor { buf, pos: 0 };
    let mut h = PageHeader {
        page_type: -1,
        uncompressed_size: -1,
        compressed_size: -1,
        v2_compressed: true,
        ..PageHeader::default()
    };
    let mut last = 0i16;
    while let Some((id, ty)) = c.field(&mut last)? {
        match (id, ty) {
            (1, _) => {
                expect_i32(ty, "type")?;
                h.page_type = c.i32()?;
            }
            (2, _) => {
                expect_i32(ty, "uncompressed_page_size")?;
                h.uncompressed_size = c.i32()?;
            }
            (3, _) => {
                expect_i32(ty, "compressed_page_size")?;
                h.compressed_size = c.i32()?;
            }
            (5, T_STRUCT) => parse_data_page_v1(&mut c, &mut h)?,
            (8, T_STRUCT) => parse_data_page_v2(&mut c, &mut h)?,
            (_, t) => c.skip_value(t, 1)?,
        }
    }
    if h.page_type < 0 || h.compressed_size < 0 || h.uncompressed_size < 0 {
        return err(format!(
            "page header lacks type or sizes (type {}, sizes {}/{})",
            h.page_type, h.compressed_size, h.uncompressed_size
        ));
    }
    if (h.page_type == PAGE_DATA || h.page_type == PAGE_DATA_V2) && h.num_values.is_none() {
        return err("data page header lacks its data_page_header");
    }
    h.header_len = c.pos;
    Ok(h)
}

fn parse_data_page_v1(c: &mut Cursor<'_>, h: &mut PageHeader) -> Result<(), PageHeaderError> {
    let mut last = 0i16;
    while let Some((id, ty)) = c.field(&mut last)? {
        match id {
            1 => {
                expect_i32(ty, "num_values")?;
                h.num_values = Some(c.i32()?);
            }
            2 => {
                expect_i32(ty, "encoding")?;
                h.encoding = Some(c.i32()?);
            }
            _ => c.skip_value(ty, 2)?,
        }
    }
    Ok(())
}

fn parse_data_page_v2(c: &mut Cursor<'_>, h: &mut PageHeader) -> Result<(), PageHeaderError> {
    let mut last = 0i16;
    while let Some((id, ty)) = c.field(&mut last)? {
        match id {
            1 => {
                expect_i32(ty, "num_values")?;
                h.num_values = Some(c.i32()?);
            }
            4 => {
                expect_i32(ty, "encoding")?;
                h.encoding = Some(c.i32()?);
            }
            5 | 6 => {
                expect_i32(ty, "levels_byte_length")?;
                let n = c.i32()?;
                if n < 0 {
                    return err(format!("negative level length {n}"));
                }
                h.levels_len += i64::from(n);
            }
            7 => match ty {
                T_BOOL_TRUE => h.v2_compressed = true,
                T_BOOL_FALSE => h.v2_compressed = false,
                _ => return err(format!("is_compressed has thrift type {ty}")),
            },
            _ => c.skip_value(ty, 2)?,
        }
    }
    Ok(())
}

/// The header of a V1 data page of `num_values` PLAIN values in `size`
/// uncompressed bytes, for a required column (no levels, so the levels'
/// RLE encodings are nominal). Compact protocol, as `parquet.thrift` lays
/// out `PageHeader` and `DataPageHeader`; the writer's counterpart of
/// [`parse_page_header`].
pub fn data_page_v1_header(num_values: i32, size: i32) -> Vec<u8> {
    const RLE: i32 = 3;
    fn i32_field(out: &mut Vec<u8>, delta: u8, v: i32) {
        out.push((delta << 4) | T_I32);
        let mut z = ((v << 1) ^ (v >> 31)) as u32;
        loop {
            let b = (z & 0x7f) as u8;
            z >>= 7;
            if z == 0 {
                out.push(b);
                return;
            }
            out.push(b | 0x80);
        }
    }
    let mut out = Vec::with_capacity(24);
    i32_field(&mut out, 1, PAGE_DATA); // 1: type
    i32_field(&mut out, 1, size); // 2: uncompressed_page_size
    i32_field(&mut out, 1, size); // 3: compressed_page_size
    out.push((2 << 4) | T_STRUCT); // 5: data_page_header
    i32_field(&mut out, 1, num_values); // 1: num_values
    i32_field(&mut out, 1, ENCODING_PLAIN); // 2: encoding
    i32_field(&mut out, 1, RLE); // 3: definition_level_encoding
    i32_field(&mut out, 1, RLE); // 4: repetition_level_encoding
    out.push(0); // end of data_page_header
    out.push(0); // end of PageHeader
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal compact-protocol writer, enough to build headers by hand.
    pub struct W(pub Vec<u8>, Vec<i16>);

    impl W {
        pub fn new() -> W {
            W(Vec::new(), vec![0])
        }
        fn varint(&mut self, mut v: u64) {
            loop {
                let b = (v & 0x7f) as u8;
                v >>= 7;
                if v == 0 {
                    self.0.push(b);
                    return;
                }
                self.0.push(b | 0x80);
            }
        }
        pub fn field(&mut self, id: i16, ty: u8) {
            let last = *self.1.last().unwrap();
            let delta = id - last;
            if (1..=15).contains(&delta) {
                self.0.push(((delta as u8) << 4) | ty);
            } else {
                self.0.push(ty);
                self.varint(((id << 1) ^ (id >> 15)) as u16 as u64);
            }
            *self.1.last_mut().unwrap() = id;
        }
        pub fn i32(&mut self, id: i16, v: i32) {
            self.field(id, T_I32);
            self.varint(((v << 1) ^ (v >> 31)) as u32 as u64);
        }
        pub fn begin(&mut self, id: i16) {
            self.field(id, T_STRUCT);
            self.1.push(0);
        }
        pub fn end(&mut self) {
            self.0.push(0);
            self.1.pop();
        }
        pub fn binary(&mut self, id: i16, b: &[u8]) {
            self.field(id, T_BINARY);
            self.varint(b.len() as u64);
            self.0.extend_from_slice(b);
        }
    }

    /// A V1 data page header as parquet-rs writes it, plus a statistics
    /// struct and an unknown field the parser must skip.
    pub fn v1_header(num_values: i32, size: i32, encoding: i32) -> Vec<u8> {
        let mut w = W::new();
        w.i32(1, PAGE_DATA);
        w.i32(2, size);
        w.i32(3, size);
        w.begin(5);
        w.i32(1, num_values);
        w.i32(2, encoding);
        w.i32(3, 3);
        w.i32(4, 3);
        w.begin(5);
        w.binary(5, b"max");
        w.binary(6, b"min");
        w.end();
        w.end();
        w.binary(40, b"from a future format version");
        w.end();
        w.0
    }

    #[test]
    fn written_data_page_header_parses_back() {
        for (n, size) in [
            (0, 0),
            (1, 150_528),
            (111, 16_708_608),
            (i32::MAX, i32::MAX),
        ] {
            let b = data_page_v1_header(n, size);
            // The same struct through the test writer, field by field.
            let mut w = W::new();
            w.i32(1, PAGE_DATA);
            w.i32(2, size);
            w.i32(3, size);
            w.begin(5);
            w.i32(1, n);
            w.i32(2, ENCODING_PLAIN);
            w.i32(3, 3);
            w.i32(4, 3);
            w.end();
            w.end();
            assert_eq!(b, w.0);
            let h = parse_page_header(&b).unwrap();
            assert_eq!(h.header_len, b.len());
            assert_eq!(
                (h.page_type, h.num_values, h.encoding),
                (PAGE_DATA, Some(n), Some(0))
            );
            assert_eq!((h.compressed_size, h.uncompressed_size), (size, size));
        }
    }

    #[test]
    fn parses_v1_data_page_and_skips_the_rest() {
        let mut bytes = v1_header(7, 1234, ENCODING_PLAIN);
        let len = bytes.len();
        bytes.extend_from_slice(&[0xAA; 16]); // the page body follows
        let h = parse_page_header(&bytes).unwrap();
        assert_eq!(h.header_len, len);
        assert_eq!(h.page_type, PAGE_DATA);
        assert_eq!((h.compressed_size, h.uncompressed_size), (1234, 1234));
        assert_eq!(h.num_values, Some(7));
        assert_eq!(h.encoding, Some(ENCODING_PLAIN));
        assert_eq!(h.levels_len, 0);
    }

    #[test]
    fn parses_v2_data_page() {
        let mut w = W::new();
        w.i32(1, PAGE_DATA_V2);
        w.i32(2, 100);
        w.i32(3, 100);
        w.begin(8);
        w.i32(1, 5);
        w.i32(2, 0);
        w.i32(3, 5);
        w.i32(4, ENCODING_PLAIN);
        w.i32(5, 2);
        w.i32(6, 1);
        w.field(7, T_BOOL_FALSE);
        w.end();
        w.end();
        let h = parse_page_header(&w.0).unwrap();
        assert_eq!(h.page_type, PAGE_DATA_V2);
        assert_eq!(h.num_values, Some(5));
        assert_eq!(h.levels_len, 3);
        assert!(!h.v2_compressed);
    }

    #[test]
    fn every_truncation_and_garbage_is_an_error_not_a_panic() {
        let bytes = v1_header(7, 1234, ENCODING_PLAIN);
        for cut in 0..bytes.len() {
            assert!(parse_page_header(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        // Flip every bit of every byte: must return (Ok or Err), never panic.
        for i in 0..bytes.len() {
            for bit in 0..8 {
                let mut b = bytes.clone();
                b[i] ^= 1 << bit;
                let _ = parse_page_header(&b);
            }
        }
        // Unbounded nesting is refused.
        let deep = vec![0x1C; 4096];
        assert!(parse_page_header(&deep).is_err());
        assert!(parse_page_header(&[0xff; 64]).is_err());
    }

    #[test]
    fn missing_sizes_are_reported() {
        let mut w = W::new();
        w.i32(1, PAGE_DATA);
        w.end();
        let e = parse_page_header(&w.0).unwrap_err();
        assert!(e.0.contains("sizes"), "{e}");
    }
}
