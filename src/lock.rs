//! An exclusive advisory lock on an output folder (a pack's `--out`, a
//! training run) or on one output file (`ebv-basis generate --out`, through
//! a hidden `.NAME.lock` beside it), held by the process that writes it for
//! as long as it writes.
//!
//! Two processes with the same output folder would otherwise both pass
//! their "nothing here yet" or "resume" checks and interleave their files
//! (a second `ebv-pack` would even delete the first one's temporary
//! shards as stale). `flock(2)` on `DIR/.lock` is released by the kernel
//! when the process ends however it ends, so a crash never leaves a stale
//! lock behind; the file itself stays and means nothing on its own.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// The lock file's name inside the locked folder.
pub const LOCK_FILE: &str = ".lock";

/// Why a folder could not be locked.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process holds the lock.
    #[error(
        "{dir} is in use by another {tool}{holder}: its lock file {lock} is held; wait for that \
         process to end, or choose another --out",
        dir = .dir.display(),
        lock = .lock.display()
    )]
    InUse {
        dir: PathBuf,
        lock: PathBuf,
        tool: &'static str,
        /// " (pid N)" when the holder wrote its pid.
        holder: String,
    },
    #[error("{path}: {cause}")]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
}

fn io(path: &Path, cause: std::io::Error) -> LockError {
    LockError::Io {
        path: path.to_path_buf(),
        cause,
    }
}

/// Opens (creating it) the lock file at `path` and takes its exclusive
/// flock, or says that another process (`tool`, its pid if it wrote one)
/// holds `what`.
fn try_lock(path: &Path, what: &Path, tool: &'static str) -> Result<File, LockError> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|e| io(path, e))?;
    // SAFETY: flock on a descriptor this function owns; no memory is passed.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        return Ok(file);
    }
    let err = std::io::Error::last_os_error();
    if err.kind() != std::io::ErrorKind::WouldBlock {
        return Err(io(path, err));
    }
    let holder = std::fs::read_to_string(path).unwrap_or_default();
    let holder = holder.trim();
    Err(LockError::InUse {
        dir: what.to_path_buf(),
        lock: path.to_path_buf(),
        tool,
        holder: if holder.is_empty() {
            String::new()
        } else {
            format!(" (pid {holder})")
        },
    })
}

/// Held for the life of the value.
#[derive(Debug)]
pub struct DirLock {
    _file: File,
    path: PathBuf,
    /// The run folder, when this lock created it: removed again on drop if
    /// nothing but the lock file was written, so that a command refused
    /// before training leaves no empty run folder behind.
    created: Option<PathBuf>,
}

impl DirLock {
    /// Create `run` if needed and lock it, or fail at once naming the
    /// folder when another process (`tool`, for the message) holds it.
    /// `record_pid` writes this process's id into the lock file for the
    /// message a second process prints; a folder whose bytes must not
    /// depend on the run (a pack's output) leaves the file empty.
    pub fn acquire(run: &Path, tool: &'static str, record_pid: bool) -> Result<DirLock, LockError> {
        let created = (!run.exists()).then(|| run.to_path_buf());
        std::fs::create_dir_all(run).map_err(|e| io(run, e))?;
        let path = run.join(LOCK_FILE);
        let mut file = try_lock(&path, run, tool)?;
        // For a person looking at a stuck run; the lock is the flock alone.
        if record_pid {
            let pid = std::process::id().to_string();
            let _ = file
                .set_len(0)
                .and_then(|()| file.write_all(pid.as_bytes()));
        }
        Ok(DirLock {
            _file: file,
            path,
            created,
        })
    }
}

impl Drop for DirLock {
    fn drop(&mut self) {
        let Some(dir) = &self.created else {
            return;
        };
        let only_lock = std::fs::read_dir(dir)
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .all(|e| e.file_name() == LOCK_FILE)
            })
            .unwrap_or(false);
        if only_lock {
            // Still holding the lock, so no other run can be using it.
            let _ = std::fs::remove_file(&self.path);
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// An exclusive lock on one output file, held for the life of the value
/// through `.NAME.lock` in the file's folder, which is removed again when
/// the value is dropped (a killed holder leaves it, unlocked: the next
/// holder takes it over). A lock file is only unlinked by its holder, and a
/// holder checks after locking that the name still leads to the file it
/// locked (else a holder that just unlinked it raced it), so two processes
/// never both hold the name.
#[derive(Debug)]
pub struct FileLock {
    _file: File,
    path: PathBuf,
}

impl FileLock {
    /// Locks `target` (the output file, which need not exist), or fails at
    /// once naming it when another process (`tool`, for the message) holds it.
    pub fn acquire(target: &Path, tool: &'static str) -> Result<FileLock, LockError> {
        use std::os::unix::fs::MetadataExt;
        let dir = crate::file_kind::folder_of(target);
        let name = target.file_name().map(|n| n.to_string_lossy().into_owned());
        let path = dir.join(format!(".{}.lock", name.unwrap_or_default()));
        loop {
            let mut file = try_lock(&path, target, tool)?;
            let same = match (file.metadata(), std::fs::metadata(&path)) {
                (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
                _ => false,
            };
            if !same {
                // The holder before us unlinked it after we opened it.
                continue;
            }
            let pid = std::process::id().to_string();
            let _ = file
                .set_len(0)
                .and_then(|()| file.write_all(pid.as_bytes()));
            return Ok(FileLock { _file: file, path });
        }
    }
}

impl Drop for FileLock {
    fn drop(&mut self) {
        // Still holding the lock: nobody else can be using the name.
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A second lock on the same folder fails at once naming the folder,
    /// and succeeds once the first is dropped; a folder the lock created
    /// and nothing else used is removed again.
    #[test]
    fn second_holder_is_refused_until_the_first_ends() {
        let tmp = tempfile::tempdir().unwrap();
        let run = tmp.path().join("run");
        let first = DirLock::acquire(&run, "ebv-train", true).unwrap();
        let e = DirLock::acquire(&run, "ebv-train", true)
            .unwrap_err()
            .to_string();
        assert!(e.contains(&run.display().to_string()), "{e}");
        assert!(e.contains("in use"), "{e}");
        assert!(e.contains(&std::process::id().to_string()), "{e}");
        drop(first);
        assert!(!run.exists(), "an unused run folder is left behind");
        let again = DirLock::acquire(&run, "ebv-train", true).unwrap();
        std::fs::write(run.join("config.toml"), "x").unwrap();
        drop(again);
        assert!(run.join("config.toml").is_file());
        // An existing folder is never removed.
        drop(DirLock::acquire(&run, "ebv-train", true).unwrap());
        assert!(run.join("config.toml").is_file());
    }

    /// A file lock: a second holder is refused naming the file and the
    /// holder's pid; the lock file goes with its holder, and one a killed
    /// holder left (not locked) is taken over.
    #[test]
    fn a_file_lock_is_held_once_and_tidied() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("ebv.safetensors");
        let lock = tmp.path().join(".ebv.safetensors.lock");
        let first = FileLock::acquire(&out, "ebv-basis").unwrap();
        assert!(lock.is_file());
        let e = FileLock::acquire(&out, "ebv-basis")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("ebv.safetensors is in use by another ebv-basis"),
            "{e}"
        );
        assert!(e.contains(&format!("(pid {})", std::process::id())), "{e}");
        drop(first);
        assert!(!lock.exists(), "the lock file outlived its holder");
        std::fs::write(&lock, "999999").unwrap();
        let again = FileLock::acquire(&out, "ebv-basis").unwrap();
        drop(again);
        assert!(!lock.exists());
    }
}
