//! The first image file directory (IFD0) of a TIFF structure: a TIFF file,
//! or the EXIF block of a JPEG, PNG or WebP (which is one). The few tags
//! read here (orientation, XMP, photometric interpretation) need no more.
//!
//! Invariants: classic TIFF only (`II*\0` / `MM\0*`; a BigTIFF has no
//! IFD0 here); every read is bounds-checked and a read outside the bytes is
//! `None`, never a panic; entries are listed in file order up to the first
//! one that lies outside the bytes.

/// IFD0 of `tiff`, read in the structure's byte order.
pub(crate) struct Ifd0<'a> {
    tiff: &'a [u8],
    big_endian: bool,
    at: usize,
    count: usize,
}

/// One 12-byte directory entry.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Entry {
    pub tag: u16,
    pub kind: u16,
    pub count: u32,
    /// Offset of the entry; its value (or the value's offset) is at +8.
    pub at: usize,
}

impl<'a> Ifd0<'a> {
    pub fn open(tiff: &'a [u8]) -> Option<Self> {
        let big_endian = match tiff.get(..4)? {
            [b'I', b'I', 42, 0] => false,
            [b'M', b'M', 0, 42] => true,
            _ => return None,
        };
        let mut ifd = Ifd0 {
            tiff,
            big_endian,
            at: 0,
            count: 0,
        };
        ifd.at = usize::try_from(ifd.u32_at(4)?).ok()?;
        ifd.count = usize::from(ifd.u16_at(ifd.at)?);
        Some(ifd)
    }

    pub fn bytes(&self) -> &'a [u8] {
        self.tiff
    }

    /// `v` as the structure writes a SHORT.
    pub fn short_bytes(&self, v: u16) -> [u8; 2] {
        if self.big_endian {
            v.to_be_bytes()
        } else {
            v.to_le_bytes()
        }
    }

    fn array<const N: usize>(&self, at: usize) -> Option<[u8; N]> {
        self.tiff.get(at..at.checked_add(N)?)?.try_into().ok()
    }

    pub fn u16_at(&self, at: usize) -> Option<u16> {
        let b = self.array(at)?;
        Some(if self.big_endian {
            u16::from_be_bytes(b)
        } else {
            u16::from_le_bytes(b)
        })
    }

    pub fn u32_at(&self, at: usize) -> Option<u32> {
        let b = self.array(at)?;
        Some(if self.big_endian {
            u32::from_be_bytes(b)
        } else {
            u32::from_le_bytes(b)
        })
    }

    pub fn u64_at(&self, at: usize) -> Option<u64> {
        let b = self.array(at)?;
        Some(if self.big_endian {
            u64::from_be_bytes(b)
        } else {
            u64::from_le_bytes(b)
        })
    }

    /// The entries in file order.
    pub fn entries(&self) -> impl Iterator<Item = Entry> + '_ {
        (0..self.count).map_while(move |k| {
            let at = self.at.checked_add(2 + 12 * k)?;
            Some(Entry {
                tag: self.u16_at(at)?,
                kind: self.u16_at(at + 2)?,
                count: self.u32_at(at + 4)?,
                at,
            })
        })
    }

    /// Where an entry's value of `size` bytes lies: in the entry when it
    /// fits in 4 bytes, else at the offset the entry holds; `None` when
    /// that is outside the bytes.
    pub fn value_at(&self, entry: Entry, size: u64) -> Option<usize> {
        let at = if size <= 4 {
            entry.at + 8
        } else {
            usize::try_from(self.u32_at(entry.at + 8)?).ok()?
        };
        let end = (at as u64).checked_add(size)?;
        (end <= self.tiff.len() as u64).then_some(at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_entries_in_either_byte_order_and_stops_outside_the_bytes() {
        for big in [false, true] {
            let u16b = |v: u16| {
                if big {
                    v.to_be_bytes()
                } else {
                    v.to_le_bytes()
                }
            };
            let u32b = |v: u32| {
                if big {
                    v.to_be_bytes()
                } else {
                    v.to_le_bytes()
                }
            };
            let mut t = if big {
                b"MM\0*".to_vec()
            } else {
                b"II*\0".to_vec()
            };
            t.extend(u32b(8));
            t.extend(u16b(3));
            // 262 SHORT inline; 700 BYTE x6 after the IFD; a third entry
            // cut off by the end of the bytes.
            t.extend(u16b(262));
            t.extend(u16b(3));
            t.extend(u32b(1));
            t.extend(u16b(2));
            t.extend([0, 0]);
            t.extend(u16b(700));
            t.extend(u16b(1));
            t.extend(u32b(6));
            t.extend(u32b(8 + 2 + 36 + 4));
            t.extend(u16b(999));
            t.extend(u16b(3));
            let ifd = Ifd0::open(&t).unwrap();
            let tags: Vec<u16> = ifd.entries().map(|e| e.tag).collect();
            assert_eq!(tags, [262, 700], "big {big}");
            let e = ifd.entries().next().unwrap();
            assert_eq!(ifd.u16_at(ifd.value_at(e, 2).unwrap()), Some(2));
            let xmp = ifd.entries().nth(1).unwrap();
            // The value's offset points past the end: nowhere.
            assert_eq!(ifd.value_at(xmp, 6), None);
            t.extend([0; 12]);
            t.extend(b"<xmp/>");
            let ifd = Ifd0::open(&t).unwrap();
            let at = ifd.value_at(xmp, 6).unwrap();
            assert_eq!(&ifd.bytes()[at..at + 6], b"<xmp/>");
        }
        assert!(Ifd0::open(b"II+\0\x08\0\0\0").is_none());
        assert!(Ifd0::open(b"II*\0\xFF\0\0\0").is_none());
    }
}
