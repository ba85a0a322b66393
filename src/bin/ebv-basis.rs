//! `ebv-basis`: generate, check and import Equiangular Basis Vectors.
//! Exit status: 0 ok, 1 α not reached / not met, 2 error (including usage errors).

use std::process::ExitCode;

use clap::Parser;
use ebv::basis::cli::{run, Cli};

fn main() -> ExitCode {
    ebv::progress::quiet_broken_pipe();
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("ebv-basis: error: {e:#}");
            ExitCode::from(2)
        }
    }
}
