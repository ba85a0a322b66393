//! An append-only file sink that writes around the page cache (`O_DIRECT`).
//!
//! Why: a raw 224² shard is 150 KB per image and a full pack writes
//! hundreds of GB, far more than the page cache holds. Through the page
//! cache the kernel copies every byte into freshly allocated cache pages and
//! later writes them back: measured here, the copy alone was 43 % of a raw
//! pack's CPU once the output outgrew memory, and `dd` spends 1.5 s of
//! system time per 2 GB buffered against 0.2 s with `O_DIRECT`. With
//! `O_DIRECT` the device reads our buffer by DMA and the CPU stays on
//! decoding. Direct writes are synchronous, so full blocks go to a thread
//! of the file's own (one block in flight) and the caller fills the next.
//! Since the CPU never reads a block back, it is filled with non-temporal
//! stores and kept on huge pages where the kernel grants them (fewer pages
//! to pin per write): 3–5 % more raw images/s, measured in BENCHMARKS.md.
//!
//! Invariants: bytes reach the file in the order written (one I/O thread,
//! blocks in sequence); an error on the I/O thread is returned by a later
//! `write` or by `finish`, never dropped; every direct write
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

/// One aligned block buffer.
struct Block {
    /// Backing storage, over-allocated so an aligned window fits.
    storage: Vec<u8>,
    /// Start of the aligned window inside `storage`.
    start: usize,
}

/// Alignment of the block's window: a transparent huge page (x86-64), so
/// that the window is four whole huge pages where the kernel grants them.
const HUGE: usize = 2 << 20;

impl Block {
    fn new() -> Block {
        let storage = vec![0u8; CHUNK + HUGE];
        let start = storage.as_ptr().align_offset(HUGE);
        let block = Block { storage, start };
        advise_huge(block.window());
        block
    }
    fn window(&self) -> &[u8] {
        &self.storage[self.start..self.start + CHUNK]
    }
    fn window_mut(&mut self) -> &mut [u8] {
        &mut self.storage[self.start..self.start + CHUNK]
    }
}

/// The file end of the sink: runs on the I/O thread.
struct Writer {
    file: File,
    /// `O_DIRECT` is on for `file`.
    direct: bool,
}

impl Writer {
    /// Write `bytes` (from an aligned block, a whole number of blocks
    /// while `direct`) at the current offset.
    fn write_window(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        let mut pos = 0;
        while pos < bytes.len() {
            match self.file.write(&bytes[pos..]) {
                Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                // A short direct write leaves the rest unaligned in memory
                // or on disk: finish this window through the page cache.
                Ok(n) => {
                    pos += n;
                    if self.direct && pos < bytes.len() && n % ALIGN != 0 {
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

    /// The last, partly filled block: whole blocks direct, the tail (which
    /// O_DIRECT would refuse) through the page cache.
    fn write_last(&mut self, block: &Block, len: usize) -> std::io::Result<()> {
        let whole = len / ALIGN * ALIGN;
        self.write_window(&block.window()[..whole])?;
        if len > whole {
            self.leave_direct()?;
            self.write_window(&block.window()[whole..len])?;
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

/// What a finished [`DirectFile`] hands back.
pub struct Finished {
    pub file: File,
    /// Every whole block went around the page cache (only the tail, if
    /// any, sits there as dirty pages).
    pub direct: bool,
}

/// See the module header. Full blocks are written by a thread of the
/// file's own while the caller fills the next one, so the device's time
/// (~6 ms per 8 MiB here) overlaps the caller's work instead of adding to
/// it; at most one block is in flight, so a file holds two blocks.
pub struct DirectFile {
    block: Block,
    /// Bytes of `block` in use.
    len: usize,
    /// The second block when it is free to fill; `None` while the I/O
    /// thread is writing it.
    spare: Option<Block>,
    jobs: Option<crossbeam_channel::Sender<Block>>,
    done: crossbeam_channel::Receiver<std::io::Result<Block>>,
    thread: Option<std::thread::JoinHandle<Writer>>,
}

impl DirectFile {
    /// Create (or truncate) `path` for writing, with `O_DIRECT` when the
    /// filesystem accepts it.
    pub fn create(path: &Path) -> std::io::Result<DirectFile> {
        let (file, direct) = open_direct(path)?;
        let (jobs, rx) = crossbeam_channel::bounded::<Block>(1);
        let (tx, done) = crossbeam_channel::bounded(1);
        let mut writer = Writer { file, direct };
        let thread = std::thread::Builder::new()
            .name("ebv-shard-io".into())
            .spawn(move || {
                for block in rx {
                    let result = writer.write_window(block.window()).map(|_| block);
                    let failed = result.is_err();
                    if tx.send(result).is_err() || failed {
                        break;
                    }
                }
                writer
            })?;
        Ok(DirectFile {
            block: Block::new(),
            len: 0,
            spare: Some(Block::new()),
            jobs: Some(jobs),
            done,
            thread: Some(thread),
        })
    }

    /// Wait for the block in flight, if any; its buffer becomes the spare.
    fn settle(&mut self) -> std::io::Result<()> {
        if self.spare.is_none() {
            let block = self
                .done
                .recv()
                .map_err(|_| std::io::Error::other("shard I/O thread stopped"))??;
            self.spare = Some(block);
        }
        Ok(())
    }

    /// Hand the full block to the I/O thread and continue in the spare.
    fn ship(&mut self) -> std::io::Result<()> {
        self.settle()?;
        let next = self
            .spare
            .take()
            .ok_or_else(|| std::io::Error::other("no free shard block"))?;
        let full = std::mem::replace(&mut self.block, next);
        self.len = 0;
        let jobs = self
            .jobs
            .as_ref()
            .ok_or_else(|| std::io::Error::other("shard file already finished"))?;
        if jobs.send(full).is_err() {
            return Err(std::io::Error::other("shard I/O thread stopped"));
        }
        Ok(())
    }

    /// Write what is buffered, tail included, and hand back the file.
    pub fn finish(mut self) -> std::io::Result<Finished> {
        self.settle()?;
        self.jobs = None;
        let mut writer = self
            .thread
            .take()
            .ok_or_else(|| std::io::Error::other("shard file already finished"))?
            .join()
            .map_err(|_| std::io::Error::other("shard I/O thread panicked"))?;
        let direct = writer.direct;
        writer.write_last(&self.block, self.len)?;
        self.len = 0;
        Ok(Finished {
            file: writer.file,
            direct,
        })
    }
}

impl Write for DirectFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = buf.len().min(CHUNK - self.len);
        let at = self.len;
        copy_streaming(&mut self.block.window_mut()[at..at + n], &buf[..n]);
        self.len += n;
        if self.len == CHUNK {
            self.ship()?;
        }
        Ok(n)
    }

    /// Writes whole blocks only (see the module header); the rest waits
    /// for `finish`.
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for DirectFile {
    /// Unfinished (the shard writer failed or was dropped): let the I/O
    /// thread end before the caller removes the file.
    fn drop(&mut self) {
        self.jobs = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// `dst.copy_from_slice(src)` with non-temporal stores where the CPU has
/// them (SSE2, every x86-64): the block is read next by the device (DMA),
/// never by this CPU, so its lines need not be fetched into the cache
/// before being overwritten, nor evict the decoders' working sets.
fn copy_streaming(dst: &mut [u8], src: &[u8]) {
    assert_eq!(dst.len(), src.len());
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{__m128i, _mm_loadu_si128, _mm_sfence, _mm_stream_si128};
        // Plain copies up to a 16-byte aligned destination, and for the tail.
        let head = dst.as_ptr().align_offset(16).min(dst.len());
        dst[..head].copy_from_slice(&src[..head]);
        let body = (dst.len() - head) / 16 * 16;
        let (d, s) = (&mut dst[head..head + body], &src[head..head + body]);
        for (dc, sc) in d.chunks_exact_mut(16).zip(s.chunks_exact(16)) {
            // SAFETY: SSE2 is part of x86-64; `sc` and `dc` are 16 bytes,
            // `dc` 16-byte aligned (after `head`); the load is unaligned.
            unsafe {
                let v = _mm_loadu_si128(sc.as_ptr() as *const __m128i);
                _mm_stream_si128(dc.as_mut_ptr() as *mut __m128i, v);
            }
        }
        // SAFETY: SSE2. Orders the streaming stores before whatever hands
        // the block to the I/O thread.
        unsafe { _mm_sfence() };
        dst[head + body..].copy_from_slice(&src[head + body..]);
    }
    #[cfg(not(target_arch = "x86_64"))]
    dst.copy_from_slice(src);
}

/// Asks for transparent huge pages under `window` (not yet touched: the
/// zeroed allocation is faulted in on first write). Why: every direct write
/// pins the block's pages for the device, page by page (`gup`, 1–2 % of a
/// raw pack's CPU with 4 KiB pages). Advice only: refused or unsupported,
/// the block works the same on small pages.
#[cfg(target_os = "linux")]
fn advise_huge(window: &[u8]) {
    // SAFETY: madvise reads no memory; the range lies inside `window`.
    unsafe {
        libc::madvise(
            window.as_ptr() as *mut libc::c_void,
            window.len(),
            libc::MADV_HUGEPAGE,
        );
    }
}

#[cfg(not(target_os = "linux"))]
fn advise_huge(_window: &[u8]) {}

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

    #[test]
    fn streaming_copy_equals_a_plain_copy() {
        // Every destination alignment against a 16-byte boundary, lengths
        // around it (head only, head + body, + tail), against what a plain
        // copy leaves; bytes outside the range stay untouched.
        let src = pattern(300);
        for at in 0..20 {
            for len in [0, 1, 15, 16, 17, 31, 32, 33, 100, 255] {
                let mut got = vec![0xAAu8; 320];
                let mut want = got.clone();
                copy_streaming(&mut got[at..at + len], &src[3..3 + len]);
                want[at..at + len].copy_from_slice(&src[3..3 + len]);
                assert_eq!(got, want, "at {at}, len {len}");
            }
        }
    }

    #[test]
    fn block_window_is_aligned_for_direct_io_and_huge_pages() {
        let b = Block::new();
        assert_eq!(b.window().len(), CHUNK);
        assert_eq!(b.window().as_ptr() as usize % HUGE, 0);
        assert_eq!(HUGE % ALIGN, 0);
    }

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
        let refused = !f.finish().unwrap().direct;
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
        let (file, direct) = open_direct(&path).unwrap();
        let mut w = Writer { file, direct };
        let mut block = Block::new();
        block.window_mut()[..data.len()].copy_from_slice(&data);
        // One block the way it came (direct where the filesystem allows),
        // then the rest through the page cache, as after a refused write.
        w.write_window(&block.window()[..ALIGN]).unwrap();
        w.leave_direct().unwrap();
        assert!(!w.direct);
        w.write_window(&block.window()[ALIGN..data.len()]).unwrap();
        drop(w);
        assert!(std::fs::read(&path).unwrap() == data);
    }

    #[test]
    fn a_failing_device_is_an_error_not_a_short_file() {
        // /dev/full refuses every write with ENOSPC; the error raised on
        // the I/O thread must reach the caller.
        let full = Path::new("/dev/full");
        if !full.exists() {
            return;
        }
        let mut f = match DirectFile::create(full) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => return,
            Err(e) => panic!("opening /dev/full: {e}"),
        };
        let data = pattern(3 * CHUNK + 5);
        let written = f.write_all(&data);
        // The first full block fails on the I/O thread; the caller hears
        // of it at a later block, or at the latest when finishing.
        let err = match written {
            Err(e) => e,
            Ok(()) => f
                .finish()
                .err()
                .expect("writes to /dev/full reported success"),
        };
        assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");
    }
}
