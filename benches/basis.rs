//! Criterion benchmarks of the `ebv-basis` kernels: one loss + gradient
//! evaluation (upper-triangle Gram + G = 2·M·B) on the dense and the sparse
//! path at two violation densities, one blockwise `check` pass, and the
//! construction of a Kerdock start (rows/s), and the write and read of a
//! resumable run's state (bytes/s; `EBV_BASIS_STATE_SHAPE=100000x5000` for
//! the paper's 100k-class shape, `EBV_BASIS_STATE_DIR` for where it goes).
//! Run: `cargo bench --bench basis`. The end-to-end comparison with the
//! PyTorch peer is `benches/basis_vs_torch.sh`.

use std::hint::black_box;
use std::path::Path;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::collections::BTreeMap;

use ebv::basis::{
    check, hinge_loss_and_grad, kerdock_basis, read_state, write_state, Basis, CheckOptions,
    GradPath, Scalars, StateView,
};

fn evaluation(c: &mut Criterion) {
    let (n, d) = (1000, 512);
    let b = Basis::random(n, d, 42);
    let mut g = c.benchmark_group("loss_and_grad_1000x512");
    g.sample_size(10).measurement_time(Duration::from_secs(5));
    // α 0.05 at the random start: ~26 % of pairs violate (dense regime);
    // α 0.15: ~0.07 % (the sparse regime of a run near its end).
    for (alpha, label) in [(0.05f32, "dense_regime"), (0.15, "sparse_regime")] {
        for (path, name) in [
            (GradPath::Dense, "dense_path"),
            (GradPath::Sparse, "sparse_path"),
            (GradPath::Auto, "auto"),
        ] {
            g.bench_function(format!("{label}/{name}"), |bench| {
                bench.iter(|| black_box(hinge_loss_and_grad(&b, alpha, false, 128, path)))
            });
        }
    }
    g.finish();
}

fn check_pass(c: &mut Criterion) {
    let b = Basis::random(2000, 256, 1);
    let mut g = c.benchmark_group("check_2000x256");
    g.sample_size(10).measurement_time(Duration::from_secs(5));
    for (f64_gemm, name) in [(false, "f32"), (true, "f64")] {
        let opts = CheckOptions {
            f64_gemm: Some(f64_gemm),
            ..CheckOptions::default()
        };
        g.bench_function(name, |bench| {
            bench.iter(|| black_box(check(&b, Path::new("bench"), &opts, &mut |_, _| {})))
        });
    }
    g.finish();
}

fn kerdock_start(c: &mut Criterion) {
    // 20,000 of the 100k-class case's rows in R^4096 (the full 100,000 × 4096
    // is 1.6 GB, too much to allocate per sample on a shared machine).
    let (n, d) = (20_000, 4096);
    let mut g = c.benchmark_group("kerdock_20000x4096");
    g.sample_size(10).throughput(Throughput::Elements(n as u64));
    g.bench_function("build", |bench| {
        bench.iter(|| black_box(kerdock_basis(n, d, 42)))
    });
    g.finish();
}

/// The state of a `pnorm` run (the largest: working rows, Adam's two
/// moments and the best rows, four N × d matrices), written atomically
/// (temp file, fsync, rename) and read back with its checks.
fn state_file(c: &mut Criterion) {
    let shape = std::env::var("EBV_BASIS_STATE_SHAPE").unwrap_or_else(|_| "2000x512".into());
    let Some((n, d)) = shape
        .split_once('x')
        .and_then(|(n, d)| Some((n.parse::<usize>().ok()?, d.parse::<usize>().ok()?)))
    else {
        panic!("EBV_BASIS_STATE_SHAPE: NxD expected, got {shape}");
    };
    let dir = match std::env::var_os("EBV_BASIS_STATE_DIR") {
        Some(d) => tempfile::tempdir_in(d),
        None => tempfile::tempdir(),
    }
    .expect("a temp dir for the state");
    let path = dir.path().join("ebv.safetensors.resume");
    let b = Basis::random(n, d, 7).data;
    let best = Basis::random(n, d, 8).data;
    let velocity: Vec<f32> = b.iter().map(|x| x * 1e-3).collect();
    let second: Vec<f32> = b.iter().map(|x| x * x * 1e-6).collect();
    let identity = BTreeMap::from([("classes".to_string(), n.to_string())]);
    let scalars = Scalars {
        step: 1,
        m_ref: 0.5,
        tau: 0.0,
        lr: 1e-3,
        prev_loss: None,
        best_max: 0.5,
        best_mean: 0.1,
        best_step: 0,
        last_gain: 0,
        own_best: 0.5,
        own_gain: 0,
        continuation: false,
        recoveries: 0,
        adam_steps: 1,
        above_best: 0,
        dense_hint: false,
        seconds: 0.0,
    };
    let view = StateView {
        identity: &identity,
        scalars,
        b: &b,
        velocity: &velocity,
        second: &second,
        best: Some(&best),
    };
    let bytes = 4 * 4 * (n * d) as u64;
    let mut g = c.benchmark_group(format!("state_{n}x{d}"));
    g.sample_size(10).throughput(Throughput::Bytes(bytes));
    g.bench_function("write", |bench| {
        bench.iter(|| write_state(&path, n, d, &view).expect("state written"))
    });
    g.bench_function("read", |bench| {
        bench.iter(|| black_box(read_state(&path, n, d).expect("state read")))
    });
    g.finish();
}

criterion_group!(benches, evaluation, check_pass, kerdock_start, state_file);
criterion_main!(benches);
