//! An append-only file sink that writes around the page cache (`O_DIRECT`).
//!
//! Why: a raw 224² shard is 150 KB per image and a full pack writes
//! hundreds of GB, far more than the page cache holds. Through the page
//! cache the kernel copies every byte into freshly allocated cache pages and
//! later writes them back: measured here, the copy alone was 43 % of a raw
//! pack's CPU once the output outgrew memory, and `dd` spends 1.5 s of
//! system time per 2 GB buffered against 0.2 s with `O_DIRECT`. With
//! `O_DIRECT` the device reads our buffer by DMA and the CPU stays on
//! decoding.
//!
//! Invariants: bytes reach the file in the order written; every direct write
//! starts at a file offset and a memory address aligned to [`ALIGN`] and is a
//! whole number of [`ALIGN`]-byte blocks; the unaligned tail is written by
//! [`DirectFile::finish`] after `O_DIRECT` is switched off. Where the
//! filesystem refuses `O_DIRECT` (tmpfs, some network filesystems, other
//! operating systems) the sink falls back to plain buffered writes, so the
//! file's bytes never depend on which path was taken. `flush` does not write
//! a partial block: the file is complete only after `finish`, which is all
//! the shard writer needs (it renames the file only then).

use std::fs::File;
use std::io::Write;
use std::path::Path;

/// Block size for direct writes: a multiple of every common logical block
/// size (512 B, 4 KiB), so no device query is needed.
pub const ALIGN: usize = 4096;

/// Bytes collected before one direct write (a multiple of [`ALIGN`]).
/// Large enough that the per-call cost is negligible (`dd` reaches the
/// device's rate from 4 MiB), small enough to hold per open shard.
const CHUNK: usize = 8 << 20;

/// See the module header.
pub struct DirectFile {
    file: File,
    /// Backing storage, over-allocated so an aligned window fits.
    storage: Vec<u8>,
    /// Start of the aligned window inside `storage`.
    start: usize,
    /// Bytes of the window in use.
    len: usize,
    /// `O_DIRECT` is on for `file`.
    direct: bool,
}

impl DirectFile {
    /// Create (or truncate) `path` for writing, with `O_DIRECT` when the
    /// filesystem accepts it.
    pub fn create(path: &Path) -> std::io::Result<DirectFile> {
        let (file, direct) = open_direct(path)?;
        let storage = vec![0u8; CHUNK + ALIGN];
        let start = storage.as_ptr().align_offset(ALIGN);
        Ok(DirectFile {
            file,
            storage,
            start,
            len: 0,
            direct,
        })
    }

    /// Whether writes currently bypass the page cache.
    pub fn is_direct(&self) -> bool {
        self.direct
    }

    /// Write what is buffered, tail included, and hand back the file.
    pub fn finish(mut self) -> std::io::Result<File> {
        let whole = self.len / ALIGN * ALIGN;
        self.write_window(0, whole)?;
        if self.len > whole {
            // The tail is not a whole block: O_DIRECT would refuse it.
            self.leave_direct()?;
            self.write_window(whole, self.len)?;
        }
        self.len = 0;
        Ok(self.file)
    }

    fn write_window(&mut self, from: usize, to: usize) -> std::io::Result<()> {
        let mut pos = from;
        while pos < to {
            let window = &self.storage[self.start + pos..self.start + to];
            match self.file.write(window) {
                Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                // A short direct write leaves the rest unaligned in memory
                // or on disk: finish this window through the page cache.
                Ok(n) => {
                    pos += n;
                    if self.direct && pos < to && n % ALIGN != 0 {
                        self.leave_direct()?;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                // The filesystem took the open flag but refuses the write
                // (an alignment it needs beyond ALIGN, or no direct I/O at
                // all): nothing was written, so retry through the page cache.
                Err(e) if self.direct && e.raw_os_error() == Some(libc::EINVAL) => {
                    self.leave_direct()?;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn leave_direct(&mut self) -> std::io::Result<()> {
        if self.direct {
            clear_direct(&self.file)?;
            self.direct = false;
        }
        Ok(())
    }
}

impl Write for DirectFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = buf.len().min(CHUNK - self.len);
        let at = self.start + self.len;
        self.storage[at..at + n].copy_from_slice(&buf[..n]);
        self.len += n;
        if self.len == CHUNK {
            self.write_window(0, CHUNK)?;
            self.len = 0;
        }
        Ok(n)
    }

    /// Writes whole blocks only (see the module header); the rest waits
    /// for `finish`.
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(target_os = "linux")]
fn open_direct(path: &Path) -> std::io::Result<(File, bool)> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    match opts.clone().custom_flags(libc::O_DIRECT).open(path) {
        Ok(f) => Ok((f, true)),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok((opts.open(path)?, false)),
        Err(e) => Err(e),
    }
}

#[cfg(not(target_os = "linux"))]
fn open_direct(path: &Path) -> std::io::Result<(File, bool)> {
    Ok((File::create(path)?, false))
}

#[cfg(target_os = "linux")]
fn clear_direct(file: &File) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let fd = file.as_raw_fd();
    // SAFETY: fcntl on a descriptor we own; F_GETFL/F_SETFL touch only its
    // status flags.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_DIRECT) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(not(target_os = "linux"))]
fn clear_direct(_file: &File) -> std::io::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bytes with no period that could hide a misplaced block.
    fn pattern(n: usize) -> Vec<u8> {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    fn roundtrip(dir: &Path, sizes: &[usize]) {
        let path = dir.join("f.bin");
        let total: usize = sizes.iter().sum();
        let data = pattern(total);
        let mut f = DirectFile::create(&path).unwrap();
        let mut pos = 0;
        for &s in sizes {
            f.write_all(&data[pos..pos + s]).unwrap();
            f.flush().unwrap();
            pos += s;
        }
        let file = f.finish().unwrap();
        drop(file);
        let back = std::fs::read(&path).unwrap();
        assert_eq!(back.len(), total, "sizes {sizes:?}");
        assert!(back == data, "content differs for sizes {sizes:?}");
    }

    #[test]
    fn bytes_come_back_in_order_whatever_the_write_sizes() {
        let dir = tempfile::tempdir().unwrap();
        // Empty, sub-block, exactly one block, around a chunk boundary,
        // more than a chunk in one call, many small odd pieces.
        roundtrip(dir.path(), &[]);
        roundtrip(dir.path(), &[1]);
        roundtrip(dir.path(), &[ALIGN]);
        roundtrip(dir.path(), &[CHUNK - 3, 2, 1, 7]);
        roundtrip(dir.path(), &[3, CHUNK + ALIGN + 5, 150_528]);
        roundtrip(dir.path(), &vec![150_528; 120]);
        roundtrip(
            dir.path(),
            &(1..600).map(|k| k * 37 % 4099).collect::<Vec<_>>(),
        );
    }

    #[test]
    fn falls_back_where_direct_io_is_refused() {
        // /dev/shm is tmpfs on Linux, which refuses O_DIRECT at open.
        let shm = Path::new("/dev/shm");
        if !shm.is_dir() {
            return;
        }
        let dir = tempfile::tempdir_in(shm).unwrap();
        let f = DirectFile::create(&dir.path().join("probe")).unwrap();
        let refused = !f.is_direct();
        drop(f);
        roundtrip(dir.path(), &[5, CHUNK, 17]);
        // Whichever path tmpfs took, the bytes above came back whole; say
        // which one ran so a reader of the test log knows.
        eprintln!("tmpfs refused O_DIRECT: {refused}");
    }

    #[test]
    fn clearing_the_flag_mid_file_keeps_the_offset() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g.bin");
        let data = pattern(3 * ALIGN + 11);
        let mut f = DirectFile::create(&path).unwrap();
        f.write_all(&data[..2 * ALIGN]).unwrap();
        // Force the switch early: a block written direct, then the rest
        // buffered, as after a refused write.
        f.write_window(0, ALIGN).unwrap();
        f.storage
            .copy_within(f.start + ALIGN..f.start + 2 * ALIGN, f.start);
        f.len = ALIGN;
        f.leave_direct().unwrap();
        assert!(!f.is_direct());
        f.write_all(&data[2 * ALIGN..]).unwrap();
        f.finish().unwrap();
        assert!(std::fs::read(&path).unwrap() == data);
    }
}
