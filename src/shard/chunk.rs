//! The image column chunk of one row group, assembled from the rows' own
//! buffers.
//!
//! Why not through the parquet crate's column writer: for a raw 224² shard
//! it copied every image four times on the one writer thread (into the
//! row-group buffer, a fixed-length value per row, the PLAIN encoder, the
//! page buffer), ~20 % of a pack's CPU. The chunk here is one V1 data page,
//! PLAIN, uncompressed, for a required column, which is exactly a page
//! header followed by the values: the concatenated images
//! (`FIXED_LEN_BYTE_ARRAY`) or each image behind its 4-byte little-endian
//! length (`BYTE_ARRAY`). The parquet crate splices it into the row group
//! (`append_column`) and writes the footer, so the file stays an ordinary
//! Parquet file that any reader opens.
//!
//! Invariant: `len()` equals the bytes the reader yields from offset 0, and
//! the page header's sizes equal the body that follows it.

use std::io::Read;
use std::sync::Arc;

use bytes::Bytes;
use parquet::basic::{Compression, Encoding as PqEncoding, PageType};
use parquet::column::writer::ColumnCloseResult;
use parquet::errors::ParquetError;
use parquet::file::metadata::{ColumnChunkMetaData, OffsetIndexBuilder, PageEncodingStats};
use parquet::file::reader::{ChunkReader, Length};
use parquet::schema::types::ColumnDescPtr;

use super::page::data_page_v1_header;

struct Parts {
    header: Vec<u8>,
    /// Length prefixes (BYTE_ARRAY); empty for fixed-length values.
    prefixes: Vec<[u8; 4]>,
    images: Vec<Vec<u8>>,
    len: u64,
}

impl Parts {
    /// Piece `k` of the chunk in file order: the header, then per image its
    /// prefix (if any) and its bytes.
    fn piece(&self, k: usize) -> Option<&[u8]> {
        if k == 0 {
            return Some(&self.header);
        }
        let k = k - 1;
        if self.prefixes.is_empty() {
            return self.images.get(k).map(Vec::as_slice);
        }
        let image = self.images.get(k / 2)?;
        Some(if k.is_multiple_of(2) {
            &self.prefixes[k / 2]
        } else {
            image
        })
    }
}

/// One row group's image column chunk (see the module header).
pub struct ImageChunk {
    parts: Arc<Parts>,
    rows: usize,
}

impl ImageChunk {
    /// The chunk of `images`, each stored with a length prefix when
    /// `prefixed` (BYTE_ARRAY) or as is (FIXED_LEN_BYTE_ARRAY). `None` when
    /// the page would exceed Parquet's 2 GiB page limit.
    pub fn new(images: Vec<Vec<u8>>, prefixed: bool) -> Option<ImageChunk> {
        let rows = images.len();
        let mut body: u64 = images.iter().map(|i| i.len() as u64).sum();
        let prefixes: Vec<[u8; 4]> = if prefixed {
            body += 4 * rows as u64;
            images
                .iter()
                .map(|i| u32::try_from(i.len()).map(u32::to_le_bytes))
                .collect::<Result<_, _>>()
                .ok()?
        } else {
            Vec::new()
        };
        let header = data_page_v1_header(i32::try_from(rows).ok()?, i32::try_from(body).ok()?);
        let len = header.len() as u64 + body;
        Some(ImageChunk {
            parts: Arc::new(Parts {
                header,
                prefixes,
                images,
                len,
            }),
            rows,
        })
    }

    /// What the parquet crate needs to splice this chunk in as `column`,
    /// with the chunk starting at offset 0 of this reader.
    pub fn close_result(&self, column: ColumnDescPtr) -> Result<ColumnCloseResult, ParquetError> {
        let len = self.parts.len as i64;
        let metadata = ColumnChunkMetaData::builder(column)
            .set_encodings(vec![PqEncoding::PLAIN, PqEncoding::RLE])
            .set_page_encoding_stats(vec![PageEncodingStats {
                page_type: PageType::DATA_PAGE,
                encoding: PqEncoding::PLAIN,
                count: 1,
            }])
            .set_compression(Compression::UNCOMPRESSED)
            .set_num_values(self.rows as i64)
            .set_total_compressed_size(len)
            .set_total_uncompressed_size(len)
            .set_data_page_offset(0)
            .build()?;
        let mut index = OffsetIndexBuilder::new();
        index.append_offset_and_size(0, len as i32);
        index.append_row_count(self.rows as i64);
        Ok(ColumnCloseResult {
            bytes_written: len as u64,
            rows_written: self.rows as u64,
            metadata,
            bloom_filter: None,
            column_index: None,
            offset_index: Some(index.build()),
        })
    }

    /// The rows' buffers back, for reuse, once no reader holds the chunk.
    pub fn into_images(self) -> Option<Vec<Vec<u8>>> {
        Arc::try_unwrap(self.parts).ok().map(|p| p.images)
    }
}

impl Length for ImageChunk {
    fn len(&self) -> u64 {
        self.parts.len
    }
}

impl ChunkReader for ImageChunk {
    type T = ChunkRead;

    fn get_read(&self, start: u64) -> Result<ChunkRead, ParquetError> {
        let mut r = ChunkRead {
            parts: self.parts.clone(),
            piece: 0,
            offset: 0,
        };
        r.skip(start);
        Ok(r)
    }

    fn get_bytes(&self, start: u64, length: usize) -> Result<Bytes, ParquetError> {
        let mut out = vec![0u8; length];
        self.get_read(start)?.read_exact(&mut out)?;
        Ok(Bytes::from(out))
    }
}

/// A sequential reader over an [`ImageChunk`].
pub struct ChunkRead {
    parts: Arc<Parts>,
    piece: usize,
    offset: usize,
}

impl ChunkRead {
    fn skip(&mut self, mut n: u64) {
        while let Some(p) = self.parts.piece(self.piece) {
            let left = (p.len() - self.offset) as u64;
            if n < left {
                self.offset += n as usize;
                return;
            }
            n -= left;
            self.piece += 1;
            self.offset = 0;
        }
    }
}

impl Read for ChunkRead {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let mut filled = 0;
        while filled < buf.len() {
            let Some(p) = self.parts.piece(self.piece) else {
                break;
            };
            let n = (p.len() - self.offset).min(buf.len() - filled);
            buf[filled..filled + n].copy_from_slice(&p[self.offset..self.offset + n]);
            filled += n;
            self.offset += n;
            if self.offset == p.len() {
                self.piece += 1;
                self.offset = 0;
            }
        }
        Ok(filled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shard::page::{parse_page_header, ENCODING_PLAIN, PAGE_DATA};

    fn read_all(c: &ImageChunk, start: u64) -> Vec<u8> {
        let mut out = Vec::new();
        c.get_read(start).unwrap().read_to_end(&mut out).unwrap();
        out
    }

    #[test]
    fn fixed_length_chunk_is_header_then_concatenated_images() {
        let images = vec![vec![1u8; 5], vec![2u8; 5], vec![3u8; 5]];
        let c = ImageChunk::new(images.clone(), false).unwrap();
        let all = read_all(&c, 0);
        assert_eq!(all.len() as u64, c.len());
        let h = parse_page_header(&all).unwrap();
        assert_eq!(h.page_type, PAGE_DATA);
        assert_eq!(h.num_values, Some(3));
        assert_eq!(h.encoding, Some(ENCODING_PLAIN));
        assert_eq!(h.compressed_size, 15);
        assert_eq!(h.uncompressed_size, 15);
        assert_eq!(&all[h.header_len..], images.concat().as_slice());
        // Reads from any offset agree with the whole.
        for start in [
            0,
            1,
            h.header_len as u64,
            all.len() as u64 - 1,
            all.len() as u64,
        ] {
            assert_eq!(read_all(&c, start), all[start as usize..].to_vec());
        }
        assert_eq!(c.get_bytes(2, 7).unwrap().as_ref(), &all[2..9]);
        assert_eq!(c.into_images().unwrap(), images);
    }

    #[test]
    fn variable_length_chunk_prefixes_each_image_with_its_length() {
        let images = vec![vec![7u8; 3], Vec::new(), vec![9u8; 300]];
        let c = ImageChunk::new(images, true).unwrap();
        let all = read_all(&c, 0);
        let h = parse_page_header(&all).unwrap();
        assert_eq!(h.compressed_size as usize, 3 + 300 + 12);
        let body = &all[h.header_len..];
        let mut expect = Vec::new();
        expect.extend_from_slice(&3u32.to_le_bytes());
        expect.extend_from_slice(&[7; 3]);
        expect.extend_from_slice(&0u32.to_le_bytes());
        expect.extend_from_slice(&300u32.to_le_bytes());
        expect.extend_from_slice(&[9; 300]);
        assert_eq!(body, expect.as_slice());
    }

    #[test]
    fn small_reads_see_the_same_bytes() {
        let images: Vec<Vec<u8>> = (0..20u8).map(|k| vec![k; k as usize * 7]).collect();
        let c = ImageChunk::new(images, true).unwrap();
        let all = read_all(&c, 0);
        let mut r = c.get_read(0).unwrap();
        let mut pieces = Vec::new();
        let mut buf = [0u8; 3];
        loop {
            let n = r.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            pieces.extend_from_slice(&buf[..n]);
        }
        assert_eq!(pieces, all);
    }
}
