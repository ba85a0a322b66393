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

/// Run `bin` with `args`, its stdout a pipe whose reading end is closed
/// before the child starts (so its first write meets a broken pipe whatever
/// the timing); the exit status and stderr.
#[cfg(unix)]
fn run_into_closed_pipe(
    bin: &str,
    args: &[&std::ffi::OsStr],
) -> (std::process::ExitStatus, String) {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = Command::new(bin)
        .args(args)
        .stdout(Stdio::from(writer))
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    (
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[cfg(unix)]
#[test]
fn a_closed_stdout_is_a_quiet_sigpipe_not_a_panic() {
    use std::ffi::OsStr;
    use std::os::unix::process::ExitStatusExt;
    for bin in BINS {
        let (status, stderr) = run_into_closed_pipe(bin, &[OsStr::new("--help")]);
        assert!(!stderr.contains("panicked"), "{bin}: {stderr}");
        assert_eq!(
            status.signal(),
            Some(libc::SIGPIPE),
            "{bin}: {status:?} {stderr}"
        );
    }
    // A command that prints its result with `println!` (which panics on a
    // broken pipe when SIGPIPE is ignored, Rust's default).
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("b.safetensors");
    let mut args: Vec<&OsStr> = [
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
        "--out",
    ]
    .into_iter()
    .map(OsStr::new)
    .collect();
    args.push(out.as_os_str());
    let (status, stderr) = run_into_closed_pipe(BINS[0], &args);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(status.signal(), Some(libc::SIGPIPE), "{status:?} {stderr}");
    // The work was done before the output: the matrix is there.
    assert!(out.exists());
}
