//! Behaviour every binary shares: a closed stdout ends the process the way it
//! ends any Unix filter (SIGPIPE), not with a Rust panic.

use std::process::{Command, Stdio};

const BINS: [&str; 7] = [
    env!("CARGO_BIN_EXE_ebv-basis"),
    env!("CARGO_BIN_EXE_ebv-eval"),
    env!("CARGO_BIN_EXE_ebv-load"),
    env!("CARGO_BIN_EXE_ebv-pack"),
    env!("CARGO_BIN_EXE_ebv-predict"),
    env!("CARGO_BIN_EXE_ebv-stats"),
    env!("CARGO_BIN_EXE_ebv-train"),
];

#[cfg(unix)]
#[test]
fn a_closed_stdout_is_a_quiet_sigpipe_not_a_panic() {
    use std::os::unix::process::ExitStatusExt;
    for bin in BINS {
        // The reading end is closed before the child starts, so its first
        // write to stdout meets a broken pipe whatever the timing.
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = Command::new(bin)
            .arg("--help")
            .stdout(Stdio::from(writer))
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "{bin}: {stderr}");
        assert_eq!(
            out.status.signal(),
            Some(libc::SIGPIPE),
            "{bin}: {:?} {stderr}",
            out.status
        );
    }
    // A command that prints its result with `println!` (which panics on a
    // broken pipe when SIGPIPE is ignored, Rust's default).
    let dir = tempfile::tempdir().unwrap();
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = Command::new(BINS[0])
        .args([
            "generate",
            "--classes",
            "8",
            "--dim",
            "4",
            "--alpha",
            "auto",
            "--steps",
            "0",
            "--json",
            "-q",
        ])
        .arg("--out")
        .arg(dir.path().join("b.safetensors"))
        .stdout(Stdio::from(writer))
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGPIPE),
        "{:?} {stderr}",
        out.status
    );
    // The work was done before the output: the matrix is there.
    assert!(dir.path().join("b.safetensors").exists());
}
