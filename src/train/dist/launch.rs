//! `ebv-train --gpus N`: start one process per GPU on this host, each the
//! same command minus `--gpus`, with `RANK`, `WORLD_SIZE`, `LOCAL_RANK`
//! and the rendezvous file in its environment — the variables torchrun
//! and Slurm set, so multi-host jobs start the ranks their own way.
//!
//! Invariants: the launcher returns only when every rank has exited; the
//! first rank to fail stops the others, and its exit code is the
//! launcher's. A rank interrupted by Ctrl-C (130) counts as a stop, not a
//! failure, so the others can finish their checkpoint.

use std::ffi::OsString;
use std::path::Path;
use std::process::{Child, Command};
use std::time::Duration;

use super::{DistError, RENDEZVOUS_ENV};

/// A rank's arguments: the launcher's own minus `--gpus N` / `--gpus=N`.
pub fn rank_args(args: &[OsString]) -> Vec<OsString> {
    let mut out = Vec::with_capacity(args.len());
    let mut skip_value = false;
    for a in args {
        if skip_value {
            skip_value = false;
            continue;
        }
        let s = a.to_string_lossy();
        if s == "--gpus" {
            skip_value = true;
            continue;
        }
        if s.starts_with("--gpus=") {
            continue;
        }
        out.push(a.clone());
    }
    out
}

/// Environment of rank `rank` of `n` on this host.
pub fn rank_env(rank: usize, n: usize, rendezvous: &Path) -> Vec<(String, OsString)> {
    vec![
        ("RANK".into(), rank.to_string().into()),
        ("WORLD_SIZE".into(), n.to_string().into()),
        ("LOCAL_RANK".into(), rank.to_string().into()),
        (RENDEZVOUS_ENV.into(), rendezvous.as_os_str().to_owned()),
    ]
}

/// Run `exe args` as ranks 0..n and wait for all of them; returns the exit
/// code the launcher should exit with.
pub fn launch_local(
    exe: &Path,
    args: &[OsString],
    n: usize,
    rendezvous: &Path,
) -> Result<i32, DistError> {
    if n == 0 {
        return Err(DistError::Launch("--gpus must be at least 1".into()));
    }
    let _ = std::fs::remove_file(rendezvous);
    let mut children: Vec<Option<Child>> = Vec::with_capacity(n);
    for rank in 0..n {
        let child = Command::new(exe)
            .args(args)
            .envs(rank_env(rank, n, rendezvous))
            .spawn();
        match child {
            Ok(c) => children.push(Some(c)),
            Err(e) => {
                stop_all(&mut children);
                return Err(DistError::Launch(format!(
                    "cannot start rank {rank} ({}): {e}",
                    exe.display()
                )));
            }
        }
    }
    let mut code = 0;
    loop {
        let mut running = 0;
        let mut failed = None;
        for (rank, slot) in children.iter_mut().enumerate() {
            let Some(child) = slot else { continue };
            match child.try_wait() {
                Ok(Some(status)) => {
                    *slot = None;
                    let c = status.code().unwrap_or(2);
                    if c != 0 && code == 0 {
                        code = c;
                        if c != 130 {
                            failed = Some(rank);
                        }
                    }
                }
                Ok(None) => running += 1,
                Err(e) => {
                    *slot = None;
                    code = 2;
                    eprintln!("ebv-train: rank {rank}: {e}");
                    failed = Some(rank);
                }
            }
        }
        if let Some(rank) = failed {
            if running > 0 {
                eprintln!("ebv-train: rank {rank} failed (exit {code}); stopping the other ranks");
            }
            stop_all(&mut children);
        }
        if running == 0 || failed.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = std::fs::remove_file(rendezvous);
    Ok(code)
}

fn stop_all(children: &mut [Option<Child>]) {
    for child in children.iter_mut().flatten() {
        let _ = child.kill();
    }
    for slot in children.iter_mut() {
        if let Some(mut child) = slot.take() {
            let _ = child.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn gpus_is_dropped_in_both_spellings_and_nothing_else() {
        assert_eq!(
            rank_args(&os(&[
                "--shards", "s", "--gpus", "4", "--epochs", "2", "--gpus=8", "--json"
            ])),
            os(&["--shards", "s", "--epochs", "2", "--json"])
        );
        // A value that merely looks like the flag is kept.
        assert_eq!(
            rank_args(&os(&["--out", "--gpus-run"])),
            os(&["--out", "--gpus-run"])
        );
    }

    #[test]
    fn ranks_get_their_environment_and_a_failure_stops_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let rdv = dir.path().join("rdv");
        let out = dir.path().join("out");
        std::fs::create_dir(&out).unwrap();
        // Each rank records its variables; rank 1 fails with 3 while rank 0
        // would otherwise sleep for a minute.
        let script = format!(
            "echo \"$RANK $WORLD_SIZE $LOCAL_RANK $EBV_RENDEZVOUS\" > {}/$RANK; \
             if [ \"$RANK\" = 1 ]; then exit 3; fi; sleep 60",
            out.display()
        );
        let start = std::time::Instant::now();
        let code = launch_local(Path::new("/bin/sh"), &os(&["-c", &script]), 2, &rdv).unwrap();
        assert_eq!(code, 3);
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "rank 0 was not stopped"
        );
        let r1 = std::fs::read_to_string(out.join("1")).unwrap();
        assert_eq!(r1.trim(), format!("1 2 1 {}", rdv.display()));
    }

    #[test]
    fn all_ranks_succeeding_is_success() {
        let dir = tempfile::tempdir().unwrap();
        let code = launch_local(
            Path::new("/bin/sh"),
            &os(&["-c", "exit 0"]),
            3,
            &dir.path().join("r"),
        )
        .unwrap();
        assert_eq!(code, 0);
    }
}
