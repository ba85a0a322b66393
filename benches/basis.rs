//! Criterion benchmarks of the `ebv-basis` kernels: one loss + gradient
//! evaluation (upper-triangle Gram + G = 2·M·B) on the dense and the sparse
//! path at two violation densities, one blockwise `check` pass, and the
//! construction of a Kerdock start (rows/s).
//! Run: `cargo bench --bench basis`. The end-to-end comparison with the
//! PyTorch peer is `benches/basis_vs_torch.sh`.

use std::hint::black_box;
use std::path::Path;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ebv::basis::{check, hinge_loss_and_grad, kerdock_basis, Basis, CheckOptions, GradPath};

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

criterion_group!(benches, evaluation, check_pass, kerdock_start);
criterion_main!(benches);
