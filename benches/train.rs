//! Training-step throughput (images/s) of the CPU path: a ResNet-18 at
//! width 8 with the small stem on 28×28 inputs, batch 32 (the demo's model
//! at a smaller batch), with this crate's kernels and with candle's own
//! ops; plus ResNet-50 at 224×224, batch 2, with ours (the full-size path).
//!
//! `cargo bench --bench train`; `benches/train_vs_torch.sh` compares the
//! step against PyTorch.

use std::time::Duration;

use candle_core::Device;
use criterion::{Criterion, Throughput};
use ebv::train::{bench_steps, configure_runtime, Recipe};

fn recipe(sets: &[&str]) -> Recipe {
    let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
    Recipe::load(None, &sets).expect("bench recipe")
}

/// Time of `iters` steps, excluding model construction and the warm-up
/// step (which `bench_steps` does not count).
fn step_time(r: &Recipe, classes: usize, dim: usize, iters: u64) -> Duration {
    let rep = bench_steps(r, classes, dim, iters.max(1) as usize, &Device::Cpu).expect("step");
    Duration::from_secs_f64(rep.step_seconds.iter().sum())
}

fn main() {
    configure_runtime();
    let mut c = Criterion::default().configure_from_args().sample_size(10);
    let small = [
        "model.arch=resnet18",
        "model.width=8",
        "model.small_stem=true",
        "model.head=ebv",
        "data.batch=32",
        "data.size=28",
    ];
    let mut g = c.benchmark_group("train_step");
    g.throughput(Throughput::Elements(32));
    for kernels in ["ebv", "candle"] {
        let mut sets = small.to_vec();
        let k = format!("run.kernels={kernels}");
        sets.push(&k);
        let r = recipe(&sets);
        g.bench_function(format!("resnet18w8_28px_b32_{kernels}"), |b| {
            b.iter_custom(|iters| step_time(&r, 10, 32, iters))
        });
    }
    g.throughput(Throughput::Elements(2));
    let r = recipe(&["model.head=fc", "data.batch=2"]);
    g.bench_function("resnet50_224px_b2_ebv", |b| {
        b.iter_custom(|iters| step_time(&r, 1000, 0, iters))
    });
    g.finish();
    c.final_summary();
}
