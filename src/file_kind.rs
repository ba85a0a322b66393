//! What a path is, in words, for the refusals of tools that read files, and
//! whether two paths name one file.
//!
//! Invariant: nothing here opens the path. Opening a named pipe blocks until
//! a writer appears, a character device may never end, and a folder cannot
//! be read or memory-mapped as a file (it fails with errors such as "No
//! such device"), so readers ask `metadata` (which never blocks) first.

use std::fs::FileType;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

/// Whether `a` and `b` name one file: the same inode where both exist (so
/// through links and `..`), else the same name in the same folder.
pub fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    if let (Ok(x), Ok(y)) = (std::fs::metadata(a), std::fs::metadata(b)) {
        return x.dev() == y.dev() && x.ino() == y.ino();
    }
    let resolved = |p: &Path| -> Option<PathBuf> {
        let abs = std::path::absolute(p).ok()?;
        let folder = abs.parent()?;
        let folder = std::fs::canonicalize(folder).unwrap_or_else(|_| folder.to_path_buf());
        Some(folder.join(abs.file_name()?))
    };
    resolved(a).is_some_and(|x| Some(x) == resolved(b))
}

/// The folder `path` is in: its parent, or `.` for a bare file name (whose
/// parent is the empty path, which no file call accepts).
pub fn folder_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// The kind of file `ft` describes: "regular file", "folder", "named pipe",
/// "socket", "device", "symbolic link" or "special file".
pub fn describe(ft: &FileType) -> &'static str {
    if ft.is_file() {
        "regular file"
    } else if ft.is_dir() {
        "folder"
    } else if ft.is_fifo() {
        "named pipe"
    } else if ft.is_socket() {
        "socket"
    } else if ft.is_block_device() || ft.is_char_device() {
        "device"
    } else if ft.is_symlink() {
        "symbolic link"
    } else {
        "special file"
    }
}

/// `Ok(None)` when `path` (symbolic links followed) is a regular file,
/// `Ok(Some(kind))` when it is something else, `Err` when it cannot be
/// looked up (missing, no permission).
pub fn not_regular(path: &Path) -> std::io::Result<Option<&'static str>> {
    let ft = std::fs::metadata(path)?.file_type();
    Ok((!ft.is_file()).then(|| describe(&ft)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_what_is_not_a_regular_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, b"x").unwrap();
        assert_eq!(not_regular(&file).unwrap(), None);
        assert_eq!(not_regular(dir.path()).unwrap(), Some("folder"));
        assert_eq!(not_regular(Path::new("/dev/null")).unwrap(), Some("device"));
        let fifo = dir.path().join("p");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        if made.is_ok_and(|s| s.success()) {
            assert_eq!(not_regular(&fifo).unwrap(), Some("named pipe"));
        }
        // A link is followed to what it names.
        std::os::unix::fs::symlink(&file, dir.path().join("l")).unwrap();
        assert_eq!(not_regular(&dir.path().join("l")).unwrap(), None);
        assert!(not_regular(&dir.path().join("missing")).is_err());
    }
}
