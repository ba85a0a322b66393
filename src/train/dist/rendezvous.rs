//! Handing NCCL's unique id from rank 0 to the other ranks through a file
//! (on a shared file system across hosts): the whole rendezvous, with no
//! socket of our own.
//!
//! Invariants: the file appears complete or not at all (temp + rename);
//! rank 0 refuses a file left by an earlier job, so a rank can never join
//! a stale id; waiting ranks give up after a timeout with a clear error.

use std::path::Path;
use std::time::{Duration, Instant};

use super::DistError;

/// Path of the rendezvous file (set by `ebv-train --gpus N`, or by the
/// user for a multi-host job: one path per job on a shared file system).
pub const RENDEZVOUS_ENV: &str = "EBV_RENDEZVOUS";
/// Seconds the other ranks wait for rank 0's id (default 600).
pub const RENDEZVOUS_TIMEOUT_ENV: &str = "EBV_RENDEZVOUS_TIMEOUT";

fn err(path: &Path, detail: impl Into<String>) -> DistError {
    DistError::Rendezvous {
        path: path.to_path_buf(),
        detail: detail.into(),
    }
}

/// Rank 0: write `bytes` to `path`, atomically. Fails if `path` exists.
pub fn publish(path: &Path, bytes: &[u8]) -> Result<(), DistError> {
    if path.exists() {
        return Err(err(
            path,
            "already exists (left by an earlier job?): remove it or use a new path per job",
        ));
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".{}.tmp", std::process::id()));
    let tmp = std::path::PathBuf::from(tmp);
    std::fs::write(&tmp, bytes)
        .and_then(|_| std::fs::rename(&tmp, path))
        .map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            err(path, e.to_string())
        })
}

/// Other ranks: wait until `path` holds exactly `len` bytes, then return
/// them.
pub fn wait_for(path: &Path, len: usize, timeout: Duration) -> Result<Vec<u8>, DistError> {
    let start = Instant::now();
    loop {
        match std::fs::read(path) {
            Ok(bytes) if bytes.len() == len => return Ok(bytes),
            Ok(bytes) => {
                return Err(err(
                    path,
                    format!("holds {} bytes, expected {len}", bytes.len()),
                ))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(err(path, e.to_string())),
        }
        if start.elapsed() >= timeout {
            return Err(err(
                path,
                format!(
                    "rank 0 did not publish the NCCL id within {} s (is rank 0 running, and is the path on a file system all ranks share?)",
                    timeout.as_secs()
                ),
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waiting_ranks_get_what_rank_zero_publishes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("id");
        let id: Vec<u8> = (0..128u8).collect();
        let got = std::thread::scope(|s| {
            let waiter = s.spawn(|| wait_for(&path, 128, Duration::from_secs(20)));
            std::thread::sleep(Duration::from_millis(50));
            publish(&path, &id).unwrap();
            waiter.join().unwrap()
        })
        .unwrap();
        assert_eq!(got, id);
        // A second job must not reuse the file.
        let e = publish(&path, &id).unwrap_err();
        assert!(e.to_string().contains("already exists"), "{e}");
    }

    #[test]
    fn timeouts_and_wrong_sizes_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("id");
        let e = wait_for(&path, 128, Duration::from_millis(60)).unwrap_err();
        assert!(e.to_string().contains("did not publish"), "{e}");
        std::fs::write(&path, b"short").unwrap();
        let e = wait_for(&path, 128, Duration::from_secs(1)).unwrap_err();
        assert!(e.to_string().contains("5 bytes"), "{e}");
    }
}
