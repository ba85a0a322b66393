//! The `ebv-basis` command line: clap definitions and [`run`], which the
//! binary calls. Human text goes to stderr (hidden by `--quiet`), `--json`
//! prints one JSON document on stdout, progress bars go to stderr only on a
//! terminal. [`run`] returns the exit status for a completed command: 0 ok,
//! 1 when α was not reached (`generate`) or not met (`check --alpha`);
//! errors come back as `Err` and the binary exits 2.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use serde_json::json;

use super::check::{check, CheckOptions, CheckReport};
use super::device::Backend;
use super::error::BasisError;
use super::generate::{
    generate_resumable, nearby_starts, plan, AlphaSpec, GenerateConfig, Init, Method, Resumption,
    Summary, DEFAULT_JITTER,
};
use super::gram::GradPath;
use super::import::import_pickle;
use super::io::{
    exit_removing_temps, read_matrix, remove_stale_temps, write_npy, write_safetensors, MatrixFile,
};
use super::matrix::Basis;
use super::resume::{differences, identity, read_identity, read_state, state_path, write_state};
use crate::progress;

/// Generate, check and import Equiangular Basis Vectors (EBV, CVPR 2023).
#[derive(Debug, Parser)]
#[command(name = "ebv-basis", version)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Generate an N × d basis whose max off-diagonal |cos| is at most α.
    Generate(GenerateArgs),
    /// Report the coherence statistics of a safetensors or .npy matrix.
    Check(CheckArgs),
    /// Convert one of the paper's .pkl matrices (torch or numpy pickle) to safetensors.
    Import(ImportArgs),
}

/// `ebv-basis generate`.
#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// Number of classes N (rows); with --start, the matrix's rows by default.
    #[arg(long, required_unless_present = "start")]
    pub classes: Option<usize>,
    /// Dimension d (columns); with --start, the matrix's columns by default.
    #[arg(long, required_unless_present = "start")]
    pub dim: Option<usize>,
    /// Start from this matrix (safetensors or .npy: an earlier run's output to continue,
    /// or an imported paper matrix to refine) instead of --init; rows are renormalised and
    /// not jittered.
    #[arg(long, conflicts_with = "init")]
    pub start: Option<PathBuf>,
    /// Target max |cos| (a number), or `auto` for as low as the step budget allows.
    #[arg(long, default_value = "0.002", value_parser = parse_alpha)]
    pub alpha: AlphaSpec,
    /// Seed of the random start.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Output safetensors file (tensor `ebv`, F32 [N, d]).
    #[arg(long, default_value = "ebv.safetensors")]
    pub out: PathBuf,
    /// Also write a NumPy .npy next to it (same name, .npy).
    #[arg(long)]
    pub npy: bool,
    /// Starting matrix: random unit vectors (the paper's); real mutually unbiased bases
    /// from a Kerdock set (max |cos| = 1/√D at once, D = the largest power of 4 ≤ --dim,
    /// up to D·(D/2+1) classes; best when --dim is a power of 4 and N ≥ 5·d); a Steiner
    /// equiangular tight frame (on the Welch bound at a few shapes, e.g. up to 4000 classes
    /// in --dim 775 at 1/31), the frame of a net of AG(2, q) (1/r in q·r columns for up to
    /// q²·(r+1) classes, e.g. 10000 classes in --dim 512 at 1/20) or of a design less one
    /// point (e.g. 1000 classes in --dim 300 at 1/19); or auto: the lowest of these for (N, d).
    #[arg(long, value_enum, default_value_t = Init::Random)]
    pub init: Init,
    /// Noise (norm per row) added to a kerdock/steiner start before the first step, so that
    /// the optimiser can leave the construction's subspace; 0 for none.
    #[arg(long, default_value_t = DEFAULT_JITTER)]
    pub jitter: f64,
    /// Optimiser: the paper's plain SGD; adaptive (squared hinge, momentum); or pnorm (Adam on a
    /// p-norm of the |cos|, p 8 → 128: best from a kerdock start embedded in fewer columns).
    #[arg(long, value_enum, default_value_t = Method::Sgd)]
    pub method: Method,
    /// Learning rate (sgd default 1e-3; adaptive: initial step, default 0.1; pnorm: Adam's,
    /// default 0.02/√d, 0.005/√d from a kerdock/steiner start).
    #[arg(long)]
    pub lr: Option<f64>,
    /// Maximum number of steps.
    #[arg(long, default_value_t = 100_000)]
    pub steps: u64,
    /// Stop after this many seconds (the best matrix so far is written).
    #[arg(long)]
    pub max_seconds: Option<f64>,
    /// Stop when max |cos| ≤ α + tol.
    #[arg(long, default_value_t = 1e-4)]
    pub tol: f64,
    /// Rows per Gram slice (default: from --mem).
    #[arg(long)]
    pub slice: Option<usize>,
    /// Memory budget for Gram blocks and violation lists (e.g. 512MiB, 4G).
    #[arg(long, default_value = "2GiB", value_parser = parse_mem)]
    pub mem: u64,
    /// cpu, or cuda:K (needs a build with the cuda feature).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Turn off divergence recovery (sgd: reproduces the paper's collapse;
    /// adaptive: keeps τ = α however the run stalls; pnorm has none).
    #[arg(long)]
    pub no_guard: bool,
    /// sgd: steps that max |cos| may stay 25% above its best before recovery
    /// acts; adaptive: a fifth of it without a new low of its own iterates.
    #[arg(long, default_value_t = 500)]
    pub patience: u64,
    /// Write one CSV line per step (step, max |cos|, best, violations, loss, lr, τ).
    #[arg(long)]
    pub trace: Option<PathBuf>,
    /// Save the best matrix so far to --out every this many seconds while it improves
    /// (atomically; metadata `checkpoint` = the step it was written at, `best_step` = the
    /// matrix's own), and the run's whole state to
    /// OUT.resume, so that a killed run loses at most that interval: the same command
    /// resumes it exactly; 0 turns both off. Ctrl-C stops the run at the end of its step,
    /// writes the best matrix as usual and keeps the state to resume.
    #[arg(long, default_value_t = 300.0)]
    pub checkpoint_every: f64,
    /// Discard the state an unfinished run left in OUT.resume and start over
    /// (without it, the same command resumes that run, and other options are refused).
    #[arg(long)]
    pub fresh: bool,
    /// Print the summary as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// No progress bar or human text.
    #[arg(long, short)]
    pub quiet: bool,
}

/// `ebv-basis check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// A safetensors (tensor `ebv` or the only tensor) or .npy file.
    pub file: PathBuf,
    /// Exit 1 when max |cos| > alpha + tol.
    #[arg(long)]
    pub alpha: Option<f64>,
    /// Tolerance for --alpha.
    #[arg(long, default_value_t = 1e-4)]
    pub tol: f64,
    /// Memory budget for the blocks.
    #[arg(long, default_value = "1GiB", value_parser = parse_mem)]
    pub mem: u64,
    /// Histogram bins over [0, max |cos|], each at least 1e-4 wide (so fewer
    /// than asked when max |cos| / 1e-4 is smaller).
    #[arg(long, default_value_t = 20)]
    pub bins: usize,
    /// GEMM precision: auto (f64 for small matrices), f32 or f64.
    #[arg(long, default_value = "auto", value_parser = ["auto", "f32", "f64"])]
    pub precision: String,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// No progress bar or human text.
    #[arg(long, short)]
    pub quiet: bool,
}

/// `ebv-basis import`.
#[derive(Debug, Args)]
pub struct ImportArgs {
    /// The .pkl or .pt file: the paper's pickles (torch tensor or numpy array),
    /// or a 2-D tensor saved by torch.save (float32/64, float16, bfloat16).
    pub file: PathBuf,
    /// Output safetensors file.
    #[arg(long)]
    pub out: PathBuf,
    /// Also write a NumPy .npy next to it.
    #[arg(long)]
    pub npy: bool,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// No human text.
    #[arg(long, short)]
    pub quiet: bool,
}

fn parse_alpha(s: &str) -> Result<AlphaSpec, String> {
    if s.eq_ignore_ascii_case("auto") {
        return Ok(AlphaSpec::Auto);
    }
    s.parse::<f64>()
        .map(AlphaSpec::Value)
        .map_err(|_| format!("`{s}` is neither a number nor `auto`"))
}

/// Parses sizes like `2GiB`, `512M`, `1g`, `1000000` (binary multiples).
pub fn parse_mem(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let v: f64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a size like 2GiB"))?;
    let mul = match unit
        .trim()
        .to_ascii_lowercase()
        .trim_end_matches('b')
        .trim_end_matches('i')
    {
        "" => 1u64,
        "k" => 1 << 10,
        "m" => 1 << 20,
        "g" => 1 << 30,
        "t" => 1 << 40,
        _ => return Err(format!("`{s}`: unknown unit (use K, M, G or T)")),
    };
    let bytes = v * mul as f64;
    if bytes < 1.0 {
        return Err(format!("`{s}` is too small"));
    }
    Ok(bytes as u64)
}

/// Runs a parsed command line; `Ok(code)` is the exit status.
pub fn run(cli: Cli) -> anyhow::Result<u8> {
    match cli.command {
        Command::Generate(a) => run_generate(&a),
        Command::Check(a) => run_check(&a),
        Command::Import(a) => run_import(&a),
    }
}

/// `cpu` → ebv's own kernel; `cuda` / `cuda:K` → the device kernel on GPU K
/// (a build with the cuda feature; otherwise an error saying how to get one).
fn backend(device: &str) -> Result<Backend, BasisError> {
    if device == "cpu" {
        return Ok(Backend::Native);
    }
    let ordinal = match device.strip_prefix("cuda:") {
        Some(k) => k.parse::<usize>().ok(),
        None => (device == "cuda").then_some(0),
    };
    let Some(k) = ordinal else {
        return Err(BasisError::arg(
            "--device",
            format!("`{device}` is not a device (cpu or cuda:K)"),
        ));
    };
    if !candle_core::utils::cuda_is_available() {
        return Err(BasisError::NoCuda {
            device: device.to_string(),
        });
    }
    candle_core::Device::new_cuda(k)
        .map(Backend::Candle)
        .map_err(|e| BasisError::Device {
            device: device.to_string(),
            reason: e.to_string(),
        })
}

fn gib(bytes: u64) -> String {
    format!("{:.2} GiB", bytes as f64 / (1u64 << 30) as f64)
}

/// Refuses an output that cannot be written before any work is done (a
/// long run must not fail at its first checkpoint), and an `--out` the
/// `--npy` copy would overwrite; removes the temp files that runs killed
/// before `started` left in its folder.
fn check_out(out: &Path, npy: bool, started: SystemTime) -> anyhow::Result<()> {
    if npy && out.with_extension("npy") == out {
        anyhow::bail!(
            "--out {}: --npy writes NAME.npy beside the safetensors file, which would be this \
             same path; give --out a .safetensors name",
            out.display()
        );
    }
    if out.is_dir() {
        anyhow::bail!("--out {}: is a directory; give a file name", out.display());
    }
    let dir = crate::file_kind::folder_of(out);
    // Before the probe, which is one of them too: what killed runs left.
    remove_stale_temps(dir, started);
    super::io::temp_file_in(dir)
        .with_context(|| format!("--out {}: cannot write in {}", out.display(), dir.display()))?;
    Ok(())
}

/// Where a run writes its matrix: `--out`, and with `--npy` NAME.npy
/// beside it. The .npy carries no metadata, so nothing could tell a stale
/// one from the current one: it is removed before `--out` is first
/// replaced and written again only with the final matrix. A kill at any
/// point leaves the pair matching, or the safetensors alone.
struct Outputs {
    out: PathBuf,
    npy: Option<PathBuf>,
}

impl Outputs {
    fn new(out: &Path, npy: bool) -> Outputs {
        Outputs {
            out: out.to_path_buf(),
            npy: npy.then(|| out.with_extension("npy")),
        }
    }

    /// Replace `--out` alone (a checkpoint): the .npy goes first.
    fn write_checkpoint(
        &self,
        m: &Basis,
        meta: &BTreeMap<String, String>,
    ) -> Result<(), BasisError> {
        if let Some(np) = &self.npy {
            match std::fs::remove_file(np) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(BasisError::io(np, e)),
            }
        }
        write_safetensors(&self.out, m, meta)
    }

    /// The final matrix: `--out`, then the .npy.
    fn write_final(&self, m: &Basis, meta: &BTreeMap<String, String>) -> Result<(), BasisError> {
        self.write_checkpoint(m, meta)?;
        match &self.npy {
            Some(np) => write_npy(np, m),
            None => Ok(()),
        }
    }
}

fn run_generate(a: &GenerateArgs) -> anyhow::Result<u8> {
    let started = SystemTime::now();
    let backend = backend(&a.device)?;
    check_out(&a.out, a.npy, started)?;
    // Two runs writing one --out would both take its state (one resuming
    // the other's, one discarding it with --fresh) and interleave their files.
    let _lock = crate::lock::FileLock::acquire(&a.out, "ebv-basis")?;
    let outputs = Outputs::new(&a.out, a.npy);
    if let (Some(start), Some(npy)) = (&a.start, &outputs.npy) {
        // The .npy beside --out is removed before --out is first replaced
        // (so that no stale pair is left): as the start, a killed run could
        // not resume, and the user's matrix would be gone.
        if crate::file_kind::same_file(start, npy) {
            anyhow::bail!(
                "--npy writes {}, which is the --start file: it would be replaced, and removed \
                 while the run is under way; give --out another name",
                npy.display()
            );
        }
    }
    if let Some(t) = &a.trace {
        // The trace is written from the first step: on one of these files it
        // would be lost under the output, or destroy the start before use.
        let same = |p: &Path| crate::file_kind::same_file(p, t);
        let state = state_path(&a.out);
        for (flag, p) in [
            ("--out", Some(&a.out)),
            ("--npy", outputs.npy.as_ref()),
            ("--start", a.start.as_ref()),
            ("the run's state (OUT.resume)", Some(&state)),
        ] {
            if p.is_some_and(|p| same(p)) {
                anyhow::bail!(
                    "--trace {}: is the same file as {flag}; give the trace its own name",
                    t.display()
                );
            }
        }
    }
    if !(a.checkpoint_every.is_finite() && a.checkpoint_every >= 0.0) {
        anyhow::bail!("--checkpoint-every: must be a non-negative number of seconds");
    }
    // Ctrl-C: stop at the end of the step and write the best matrix; twice: exit now.
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let _ = ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::SeqCst) {
            // Exiting mid-write: the temp file being written would stay.
            exit_removing_temps(130);
        }
        eprintln!("\ninterrupt: stopping after this step and writing the best matrix (Ctrl-C again to abort)");
    });
    let start = match &a.start {
        Some(path) => {
            Some(read_matrix(path).with_context(|| format!("--start {}", path.display()))?)
        }
        None => None,
    };
    let (n, d) = match (&start, a.classes, a.dim) {
        (Some(m), c, k) => (c.unwrap_or(m.n), k.unwrap_or(m.d)),
        (None, Some(c), Some(k)) => (c, k),
        _ => anyhow::bail!("--classes and --dim are needed unless --start gives them"),
    };
    let cfg = GenerateConfig {
        n,
        d,
        alpha: a.alpha,
        seed: a.seed,
        init: a.init,
        method: a.method,
        lr: a.lr,
        max_steps: a.steps,
        max_seconds: a.max_seconds,
        tol: a.tol,
        slice: a.slice,
        mem_bytes: a.mem,
        guard: !a.no_guard,
        patience: a.patience,
        grad_path: GradPath::Auto,
        jitter: a.jitter,
        backend,
        start,
        stop: Some(stop.clone()),
    };
    let chatty = progress::chatty(a.quiet);
    let p = plan(&cfg)?;
    // An unfinished run of the same options left its state: go on from it.
    let state_file = state_path(&a.out);
    let ident = identity(&cfg, &p);
    // Only a file can be a state (or be discarded by --fresh).
    if let Ok(Some(kind)) = crate::file_kind::not_regular(&state_file) {
        anyhow::bail!(
            "{}: is a {kind}, where this run keeps its state; move it away",
            state_file.display()
        );
    }
    let resumed = if a.fresh {
        match std::fs::remove_file(&state_file) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(anyhow::Error::from(e)
                    .context(format!("--fresh: removing {}", state_file.display())))
            }
        }
        None
    } else if std::fs::symlink_metadata(&state_file).is_ok() {
        let unreadable = || {
            format!(
                "{}: the state an unfinished run left could not be read; --fresh discards it",
                state_file.display()
            )
        };
        let saved = read_identity(&state_file).with_context(unreadable)?;
        let diff = differences(&saved, &ident);
        if !diff.is_empty() {
            // The step budget is part of the path (the p-norm's schedule
            // follows it), so a longer run is a run of its own.
            let only_steps = saved
                .keys()
                .chain(ident.keys())
                .all(|k| k == "steps" || saved.get(k) == ident.get(k));
            anyhow::bail!(
                "{}: an unfinished run left its state there, with other options than these:\n  \
                 {}\nrun its command again to resume it, or add --fresh to discard it and start \
                 over{}",
                state_file.display(),
                diff.join("\n  "),
                if only_steps {
                    format!(
                        "; for more steps than it was given, resume it to its end and go on with \
                         --start {} (a new optimisation from its best matrix)",
                        a.out.display()
                    )
                } else {
                    String::new()
                }
            );
        }
        Some(read_state(&state_file, p.n, p.d).with_context(unreadable)?)
    } else {
        None
    };
    let resumed_at = resumed.as_ref().map(|r| r.scalars.step);
    if chatty {
        let r = p.random_max_cos;
        eprintln!(
            "ebv-basis: N={} d={} init={} method={} lr={} seed={} device={} slice={}",
            p.n,
            p.d,
            p.init.name(),
            a.method.name(),
            p.lr,
            a.seed,
            p.device,
            p.slice
        );
        eprintln!(
            "  Welch bound (no matrix does better): {:.6}{}",
            p.welch,
            if p.welch == 0.0 { " (N ≤ d)" } else { "" }
        );
        eprintln!(
            "  random unit vectors: max |cos| ≈ {:.6} (90% in {:.6}–{:.6})",
            r.median, r.q05, r.q95
        );
        let init = p.init;
        if let Some(path) = &a.start {
            eprintln!(
                "  start: {} ({} × {}), rows renormalised, no jitter; its max |cos| is step 0's",
                path.display(),
                p.n,
                p.d
            );
        } else if a.init == Init::Auto {
            eprintln!("  --init auto chose: {}", init.name());
        }
        if let Some(c) = &p.start {
            eprintln!(
                "  {} start: {}: max |cos| = {:.6}{}{}",
                c.init.name(),
                c.rows_of(p.n),
                c.coherence,
                if p.welch > 0.0 {
                    format!(" ({:.3} × Welch)", c.coherence / p.welch)
                } else {
                    String::new()
                },
                if c.topped_up > 0 {
                    format!(
                        "; topped up with {} random rows for the optimiser to fit in",
                        c.topped_up
                    )
                } else {
                    String::new()
                }
            );
        }
        let ratio = p.start.as_ref().map(|c| c.coherence / p.welch);
        if p.start.is_none() && p.n <= p.d && a.start.is_none() {
            eprintln!(
                "  hint: N ≤ d, so orthonormal rows exist: --init orthogonal (or auto) gives \
                 max |cos| 0 at step 0"
            );
        } else if ratio.is_none_or(|x| x > 1.1) {
            for s in nearby_starts(p.n, p.d).iter().take(2) {
                let dim = if s.dim == p.d {
                    String::new()
                } else {
                    format!("--dim {} ", s.dim)
                };
                eprintln!(
                    "  hint: {dim}--init {} gives max |cos| {:.6} ({:.3} × Welch there; {})",
                    s.start.init.name(),
                    s.start.coherence,
                    s.ratio_to_welch,
                    s.start.description
                );
            }
        }
        // A topped-up start is as coherent as its random rows at step 0.
        let start = p
            .start
            .as_ref()
            .filter(|c| c.topped_up == 0)
            .map_or(r.q95, |c| c.coherence);
        match a.alpha {
            AlphaSpec::Value(al) => {
                eprintln!(
                    "  target α = {al} (stop at max |cos| ≤ {})",
                    decimal(al + a.tol)
                );
                if a.start.is_some() {
                    // Its coherence is known only after step 0.
                } else if al + a.tol >= start {
                    eprintln!(
                        "  α is above what the {} start reaches: expect to finish at step 0",
                        init.name()
                    );
                } else if let Some(c) = p.start.as_ref().filter(|c| c.topped_up > 0) {
                    eprintln!(
                        "  the optimiser fits the {} random rows in around the {} frame, \
                         jittered; in our measurements --method adaptive did that best",
                        c.topped_up,
                        c.init.name()
                    );
                } else if let Some(c) = &p.start {
                    eprintln!(
                        "  α is below the {} start's {:.6}: the optimiser runs from it, jittered; \
                         in our measurements the optimisers improved on such a start only when it \
                         left columns free (--dim above its {}), --method pnorm wherever we \
                         measured{}; the best matrix is written either way",
                        c.init.name(),
                        c.coherence,
                        c.dim,
                        if a.method == Method::Pnorm {
                            ""
                        } else {
                            ", the others at some shapes"
                        }
                    );
                } else if p.welch > 0.0 && al < 1.1 * p.welch {
                    let other = if a.method == Method::Adaptive {
                        ""
                    } else {
                        "--method adaptive or "
                    };
                    eprintln!(
                        "  α is within 10% of the Welch bound: it may not be reachable; consider \
                         {other}--alpha auto"
                    );
                }
            }
            AlphaSpec::Auto => eprintln!("  target: auto (as low as {} steps allow)", a.steps),
        }
        eprintln!(
            "  Gram slice {} rows; memory ≈ {}",
            p.slice,
            gib(p.mem_estimate)
        );
        let row = super::gram::slice_row_bytes(p.n);
        if a.slice.is_none() && a.mem < row {
            eprintln!(
                "  note: --mem {} B is less than one slice row needs ({row} B for N = {}): \
                 slices of one row, which is slow",
                a.mem, p.n
            );
        }
    }
    if let (true, Some(k)) = (chatty, resumed_at) {
        eprintln!(
            "  resuming the unfinished run at step {k} from {} (--fresh starts over)",
            state_file.display()
        );
    }
    let pb = progress::bar(a.steps, "step", a.quiet);
    // Shared by the step callback and the state's: the trace is flushed
    // before each state is written, so that a killed run's trace reaches
    // at least the step its state resumes at.
    let trace = std::cell::RefCell::new(match &a.trace {
        Some(p) => {
            let (w, gap) = open_trace(p, resumed_at)?;
            if let Some(gap) = gap {
                eprintln!("warning: --trace {}: {gap}", p.display());
            }
            Some(w)
        }
        None => None,
    });
    let trace_err = std::cell::RefCell::new(None);
    let mut last_flush = Instant::now();
    let mut save = |m: &Basis, s: &Summary| -> Result<(), BasisError> {
        let mut meta = summary_metadata(s);
        meta.insert("checkpoint".into(), s.steps.to_string());
        outputs.write_checkpoint(m, &meta)
    };
    let checkpoint = (a.checkpoint_every > 0.0).then_some((a.checkpoint_every, &mut save as _));
    // The state is a convenience next to the result: a disk too full for
    // it (it holds up to four N × d matrices) costs the resume, not the run.
    let (n, d) = (p.n, p.d);
    let mut state_failed = false;
    let mut save_state = |view: &super::resume::StateView| -> Result<(), BasisError> {
        if state_failed {
            return Ok(());
        }
        if let Some(Err(e)) = trace.borrow_mut().as_mut().map(|w| w.flush()) {
            trace_err.borrow_mut().get_or_insert(e);
        }
        if let Err(e) = write_state(&state_file, n, d, view) {
            state_failed = true;
            let _ = std::fs::remove_file(&state_file);
            eprintln!(
                "\nwarning: could not save the run's state ({e}); the run goes on, but a kill \
                 would not resume it (the best matrix is still checkpointed to --out)"
            );
        }
        Ok(())
    };
    let g = generate_resumable(
        &cfg,
        &mut |s| {
            if let Some(w) = trace.borrow_mut().as_mut() {
                if let Err(e) = writeln!(
                    w,
                    "{},{},{},{},{},{},{}",
                    s.step, s.max_abs_cos, s.best_max_abs_cos, s.violations, s.loss, s.lr, s.tau
                ) {
                    trace_err.borrow_mut().get_or_insert(e);
                }
                // Readable while the run goes on (`tail -f`), and mostly kept if it is killed.
                if last_flush.elapsed().as_secs() >= 2 {
                    if let Err(e) = w.flush() {
                        trace_err.borrow_mut().get_or_insert(e);
                    }
                    last_flush = Instant::now();
                }
            }
            pb.set_position(s.step);
            pb.set_message(format!(
                "max|cos| {:.5} (best {:.5}, τ {:.5}) viol {}",
                s.max_abs_cos, s.best_max_abs_cos, s.tau, s.violations
            ));
        },
        checkpoint,
        Resumption {
            from: resumed,
            save: Some(&mut save_state),
        },
    )?;
    pb.finish_and_clear();
    if let Some(mut w) = trace.into_inner() {
        w.flush().context("writing the trace")?;
    }
    if let Some(e) = trace_err.into_inner() {
        return Err(anyhow::Error::from(e).context("writing the trace"));
    }
    let s = &g.summary;
    // The errors name the file.
    outputs.write_final(&g.basis, &summary_metadata(s))?;
    let npy = outputs.npy.clone();
    let interrupted = stop.load(Ordering::SeqCst);
    // A finished run has nothing to resume; an interrupted one keeps the
    // state it wrote on stopping.
    let state_kept = interrupted && !state_failed && state_file.exists();
    if !interrupted {
        match std::fs::remove_file(&state_file) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => eprintln!(
                "warning: could not remove {} ({e}); the run is complete, remove it by hand",
                state_file.display()
            ),
        }
    }
    if a.json {
        let mut v = serde_json::to_value(s)?;
        v["out"] = json!(a.out);
        v["npy"] = json!(npy);
        v["interrupted"] = json!(interrupted);
        v["resumed_at_step"] = json!(resumed_at);
        v["state"] = json!(state_kept.then_some(&state_file));
        progress::out_line(&v).context("writing to stdout")?;
    }
    if chatty {
        let verdict = match (s.alpha, s.reached, s.instant) {
            (Some(_), true, true) => format!(
                "reached at once: the {} start already meets α",
                s.init.name()
            ),
            (Some(al), true, false) => format!("reached α = {al} in {} steps", s.steps),
            (Some(al), false, _) => format!(
                "NOT reached: α = {al} after {} steps; wrote the best matrix (step {})",
                s.steps, s.best_step
            ),
            (None, _, _) => format!("auto: best after {} steps (step {})", s.steps, s.best_step),
        };
        eprintln!("{verdict}");
        if interrupted && state_kept {
            eprintln!(
                "  interrupted at step {}: the same command resumes the run exactly (its state \
                 is in {}); --start {} begins a new optimisation from the best matrix",
                s.steps,
                state_file.display(),
                a.out.display()
            );
        } else if interrupted {
            eprintln!(
                "  interrupted at step {}: continue with --start {}",
                s.steps,
                a.out.display()
            );
        }
        eprintln!(
            "  max |cos| {:.6}  mean |cos| {:.6}  Welch {:.6}{}  ({:.1} s, {} recoveries)",
            s.max_abs_cos,
            s.mean_abs_cos,
            s.welch,
            s.ratio_to_welch
                .map(|r| format!("  max/Welch {r:.3}"))
                .unwrap_or_default(),
            s.seconds,
            s.recoveries
        );
        eprintln!("  wrote {}", a.out.display());
        if let Some(np) = &npy {
            eprintln!("  wrote {}", np.display());
        }
    }
    // A run cut short did not finish what was asked, even when the α it
    // met (or `auto`) counts as reached: a script must be able to tell.
    Ok(if s.reached && !interrupted { 0 } else { 1 })
}

/// Opens the `--trace` CSV: a new file with its header, or for a resumed run
/// the killed run's file cut to the steps before `resumed_at` (the steps it
/// logged after its last state are taken again) and appended to. The
/// second value says which steps are missing when the old file does not
/// reach the resumed step (it was cut or removed in between).
fn open_trace(
    path: &Path,
    resumed_at: Option<u64>,
) -> anyhow::Result<(std::io::BufWriter<std::fs::File>, Option<String>)> {
    const HEADER: &str = "step,max_abs_cos,best_max_abs_cos,violations,loss,lr,tau";
    let mut kept = String::new();
    let mut gap = None;
    if let Some(k) = resumed_at {
        let old = std::fs::read_to_string(path).unwrap_or_default();
        let mut next = 0u64;
        if old.starts_with(HEADER) {
            for line in old.lines().skip(1) {
                match line.split(',').next().and_then(|v| v.parse::<u64>().ok()) {
                    Some(step) if step == next && step < k => {
                        kept.push_str(line);
                        kept.push('\n');
                        next += 1;
                    }
                    _ => break,
                }
            }
        }
        if next < k {
            gap = Some(format!(
                "the run resumes at step {k}, but the file's consecutive steps end {}; steps \
                 {next}..{} are missing from it",
                match next {
                    0 => "before step 0".to_string(),
                    n => format!("at step {}", n - 1),
                },
                k - 1
            ));
        }
    }
    let f = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut w = std::io::BufWriter::new(f);
    writeln!(w, "{HEADER}")?;
    w.write_all(kept.as_bytes())?;
    Ok((w, gap))
}

/// safetensors metadata for a generated matrix.
pub fn summary_metadata(s: &Summary) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    let mut put = |k: &str, v: String| {
        m.insert(k.to_string(), v);
    };
    put("format", "ebv-basis".into());
    put("version", s.version.into());
    put("n", s.n.to_string());
    put("d", s.d.to_string());
    put(
        "alpha",
        s.alpha
            .map(|a| a.to_string())
            .unwrap_or_else(|| "auto".into()),
    );
    put("tol", s.tol.to_string());
    put("reached", s.reached.to_string());
    put("max_abs_cos", s.max_abs_cos.to_string());
    put("mean_abs_cos", s.mean_abs_cos.to_string());
    put("welch", s.welch.to_string());
    put("random_max_cos", s.random_max_cos.to_string());
    put("steps", s.steps.to_string());
    put("best_step", s.best_step.to_string());
    put("seed", s.seed.to_string());
    put("init", s.init.name().into());
    if let Some(start) = &s.start {
        put("start", start.clone());
    }
    put("method", s.method.name().into());
    put("lr", s.lr_start.to_string());
    m
}

fn check_options(mem: u64, bins: usize, precision: &str) -> CheckOptions {
    CheckOptions {
        mem_bytes: mem,
        bins,
        f64_gemm: match precision {
            "f32" => Some(false),
            "f64" => Some(true),
            _ => None,
        },
    }
}

fn run_check(a: &CheckArgs) -> anyhow::Result<u8> {
    // Checked before a long pass over the matrix, not after it.
    if let Some(al) = a.alpha {
        if !(0.0..=1.0).contains(&al) {
            return Err(BasisError::arg("--alpha", format!("{al} is not in [0, 1]")).into());
        }
    }
    if !(a.tol.is_finite() && a.tol >= 0.0) {
        return Err(BasisError::arg("--tol", "must be a non-negative number").into());
    }
    let f = MatrixFile::open(&a.file)?;
    if a.mem < super::check::one_row_bytes(f.d) && progress::chatty(a.quiet) {
        eprintln!(
            "note: --mem {} B is less than blocks of one row need ({} B for d = {}): using \
             blocks of one row, which is slow",
            a.mem,
            super::check::one_row_bytes(f.d),
            f.d
        );
    }
    let pb = progress::bar(0, "blocks", a.quiet);
    let report = check(
        &f,
        &a.file,
        &check_options(a.mem, a.bins, &a.precision),
        &mut |done, total| {
            pb.set_length(total);
            pb.set_position(done);
        },
    )?;
    pb.finish_and_clear();
    let failed = a.alpha.is_some_and(|al| report.max_abs_cos > al + a.tol);
    if a.json {
        let mut v = serde_json::to_value(&report)?;
        v["file"] = json!(a.file);
        v["format"] = json!(f.format);
        v["metadata"] = json!(f.metadata);
        if let Some(al) = a.alpha {
            v["alpha"] = json!(al);
            v["alpha_met"] = json!(!failed);
        }
        progress::out_line(&v).context("writing to stdout")?;
    }
    if progress::chatty(a.quiet) {
        print_report(&a.file, f.format, &report);
        if let Some(al) = a.alpha {
            eprintln!("α = {al}: {}", if failed { "NOT met" } else { "met" });
        }
    }
    Ok(if failed { 1 } else { 0 })
}

fn print_report(file: &Path, format: &str, r: &CheckReport) {
    eprintln!(
        "{}: {} × {} ({format}), row norms {:.6}–{:.6}",
        file.display(),
        r.n,
        r.d,
        r.norm_min,
        r.norm_max
    );
    eprintln!(
        "  |cos| over {} pair{}: max {:.6} (rows {} and {}), mean {:.6}, min {:.6}",
        r.pairs,
        if r.pairs == 1 { "" } else { "s" },
        r.max_abs_cos,
        r.argmax[0],
        r.argmax[1],
        r.mean_abs_cos,
        r.min_abs_cos
    );
    eprintln!(
        "  angles {:.2}°–{:.2}° (cos {:.6} to {:.6}); GEMM in {}",
        r.angle_min_deg, r.angle_max_deg, r.max_cos, r.min_cos, r.precision
    );
    match r.ratio_to_welch {
        Some(q) => eprintln!("  Welch bound {:.6}: max/Welch = {q:.3}", r.welch),
        None => eprintln!("  Welch bound 0 (N ≤ d: orthogonal rows are possible)"),
    }
    eprintln!(
        "  random unit vectors would give max |cos| ≈ {:.6} (90% in {:.6}–{:.6})",
        r.random_max_cos.median, r.random_max_cos.q05, r.random_max_cos.q95
    );
    let top = r
        .histogram
        .iter()
        .map(|h| h.count)
        .max()
        .unwrap_or(1)
        .max(1);
    eprintln!("  histogram of |cos|:");
    for h in &r.histogram {
        let w = (h.count as f64 / top as f64 * 40.0).round() as usize;
        eprintln!(
            "    [{:.4}, {:.4})  {:>12}  {}",
            h.lo,
            h.hi,
            h.count,
            "#".repeat(w)
        );
    }
}

fn run_import(a: &ImportArgs) -> anyhow::Result<u8> {
    check_out(&a.out, a.npy, SystemTime::now())?;
    let imp = import_pickle(&a.file)?;
    let report = check(
        &imp.basis,
        &a.file,
        &CheckOptions::default(),
        &mut |_, _| {},
    )?;
    let mut meta = BTreeMap::new();
    let mut put = |k: &str, v: String| {
        meta.insert(k.to_string(), v);
    };
    put("format", "ebv-basis".into());
    put("version", env!("CARGO_PKG_VERSION").into());
    put("n", report.n.to_string());
    put("d", report.d.to_string());
    put("max_abs_cos", report.max_abs_cos.to_string());
    put("mean_abs_cos", report.mean_abs_cos.to_string());
    put("welch", report.welch.to_string());
    put("random_max_cos", report.random_max_cos.median.to_string());
    put("method", "import".into());
    put(
        "source",
        a.file
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default(),
    );
    put("source_form", serde_json::to_string(&imp.form)?);
    let outputs = Outputs::new(&a.out, a.npy);
    outputs.write_final(&imp.basis, &meta)?;
    let npy = outputs.npy;
    if a.json {
        let mut v = serde_json::to_value(&report)?;
        v["file"] = json!(a.file);
        v["source"] = json!(imp.form);
        v["out"] = json!(a.out);
        v["npy"] = json!(npy);
        progress::out_line(&v).context("writing to stdout")?;
    }
    if progress::chatty(a.quiet) {
        eprintln!(
            "imported {} ({}) → {}",
            a.file.display(),
            imp.form,
            a.out.display()
        );
        if imp.form.rounded() {
            eprintln!(
                "note: the source holds float64 values; they were rounded to float32, the \
                 type of every ebv basis (the report below is of the rounded matrix)"
            );
        }
        print_report(&a.file, "pickle", &report);
    }
    Ok(0)
}

/// `x` in decimal without the binary rounding noise of a sum (0.05 + 1e-4
/// prints 0.0501, not 0.050100000000000006).
fn decimal(x: f64) -> String {
    let s = format!("{x:.12}");
    let s = s.trim_end_matches('0');
    s.strip_suffix('.').unwrap_or(s).to_string()
}

#[cfg(test)]
mod tests {

    #[test]
    fn decimal_drops_the_rounding_noise_of_a_sum() {
        assert_eq!(decimal(0.05 + 1e-4), "0.0501");
        assert_eq!(decimal(2.0), "2");
        assert_eq!(decimal(0.002 + 1e-4), "0.0021");
    }
    use super::*;

    #[test]
    fn parses_sizes_and_alpha() {
        assert_eq!(parse_mem("2GiB"), Ok(2 << 30));
        assert_eq!(parse_mem("512M"), Ok(512 << 20));
        assert_eq!(parse_mem("1000"), Ok(1000));
        assert!(parse_mem("2 parsecs").is_err());
        assert_eq!(parse_alpha("auto"), Ok(AlphaSpec::Auto));
        assert_eq!(parse_alpha("0.05"), Ok(AlphaSpec::Value(0.05)));
        assert!(parse_alpha("x").is_err());
    }

    #[test]
    fn cuda_is_a_clear_error() {
        if !cfg!(feature = "cuda") {
            let e = backend("cuda:0").unwrap_err().to_string();
            assert!(e.contains("built without the cuda feature"), "{e}");
        }
        assert!(matches!(backend("cpu"), Ok(Backend::Native)));
        let e = backend("tpu").unwrap_err().to_string();
        assert!(e.contains("--device") && e.contains("cpu or cuda:K"), "{e}");
        assert!(backend("cuda:x").is_err());
    }
}
