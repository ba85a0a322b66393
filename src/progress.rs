//! Terminal behaviour shared by every command: progress reporting, and what
//! happens when stdout's reader goes away.
//!
//! Invariants: progress goes to stderr only, and is hidden when stderr is not a
//! terminal or when the user asked for `--quiet`, so that `--json` output on
//! stdout stays machine-readable and CI logs stay clean. A closed stdout
//! (`ebv-stats --json | head`) ends the process quietly, as it ends any Unix
//! filter, never with a panic.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// `1234567` → `1.2 MB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1000.0 && u + 1 < UNITS.len() {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// A progress bar of `len` steps, drawn on stderr at most ~8 times a second.
///
/// `unit` names what is counted ("img", "step"); the template shows the rate
/// per second and the time left.
pub fn bar(len: u64, unit: &str, quiet: bool) -> ProgressBar {
    let pb = ProgressBar::with_draw_target(Some(len), target(quiet));
    let template = format!(
        "{{spinner}} {{msg}} [{{bar:30}}] {{pos}}/{{len}} {unit} ({{per_sec}}, {{eta}} left)"
    );
    if let Ok(style) = ProgressStyle::with_template(&template) {
        pb.set_style(style.progress_chars("=> "));
    }
    pb.enable_steady_tick(Duration::from_millis(250));
    pb
}

/// A spinner for work of unknown length.
pub fn spinner(quiet: bool) -> ProgressBar {
    let pb = ProgressBar::with_draw_target(None, target(quiet));
    if let Ok(style) = ProgressStyle::with_template("{spinner} {msg} ({elapsed})") {
        pb.set_style(style);
    }
    pb.enable_steady_tick(Duration::from_millis(250));
    pb
}

fn target(quiet: bool) -> ProgressDrawTarget {
    if quiet || !std::io::stderr().is_terminal() {
        ProgressDrawTarget::hidden()
    } else {
        ProgressDrawTarget::stderr_with_hz(8)
    }
}

/// Whether human-readable chatter (not progress bars) should go to stderr.
pub fn chatty(quiet: bool) -> bool {
    !quiet
}

/// Writes `text` and a newline to stdout, flushed. A reader that went away
/// ends the process quietly (see [`quiet_broken_pipe`]); any other failure
/// (`> /dev/full`, a full disk behind a redirection) comes back as an error
/// for the command to report with exit code 2, where `println!` panics.
pub fn out_line(text: impl std::fmt::Display) -> std::io::Result<()> {
    out_text(format_args!("{text}\n"))
}

/// [`out_line`] without the newline.
pub fn out_text(text: impl std::fmt::Display) -> std::io::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    write!(out, "{text}")?;
    out.flush()
}

/// Restore the default action of SIGPIPE (terminate quietly), which the Rust
/// runtime sets to "ignore": otherwise a write to a closed pipe returns an
/// error and `println!` panics. Call first thing in `main`.
pub fn quiet_broken_pipe() {
    #[cfg(unix)]
    // SAFETY: called at the start of `main`, before any thread exists;
    // SIG_DFL is a valid disposition for SIGPIPE.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}
