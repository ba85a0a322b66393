//! Allocator tuning for the image pipelines and training.
//!
//! glibc serves every allocation above 128 KiB (one 224×224 RGB image is
//! 147 KiB) with a fresh `mmap` and returns it with `munmap` on free, so each
//! image buffer pays ~37 first-touch page faults (1.5–10 µs each on this
//! kind of VM: as much as the decode itself). Raising the thresholds keeps
//! such buffers in the heap, where freed ones are reused without faults.

/// Keep image-sized buffers in the heap. Call once, early in `main`.
/// A no-op on allocators other than glibc's.
pub fn keep_large_buffers_in_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only adjusts allocator parameters; called before any
    // worker thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 64 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 512 << 20);
    }
}
