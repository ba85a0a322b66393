//! Forward + backward time of the 3×3 stride-1 convolutions of the benchmarked ResNets, Winograd (`auto`) against
//! im2col, alternated in one process, best of `REPS` (default 5) each; the numbers behind the Winograd thresholds.
//!
//! `cargo run --release --example conv_algos` (`RAYON_NUM_THREADS` for the threads).

use std::time::Instant;

use candle_core::{Device, Tensor, Var};
use ebv::kernels::{conv2d, set_conv_algo, ConvAlgo, KernelImpl};

fn time(x: &Var, w: &Var, r: &Tensor) -> f64 {
    let t = Instant::now();
    let y = conv2d(x.as_tensor(), w.as_tensor(), 1, 1, KernelImpl::Ebv).expect("conv");
    let grads = (y * r)
        .and_then(|p| p.sum_all())
        .and_then(|l| l.backward())
        .expect("backward");
    assert!(grads.get(x.as_tensor()).is_some() && grads.get(w.as_tensor()).is_some());
    t.elapsed().as_secs_f64()
}

fn main() {
    let reps: usize = std::env::var("REPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let dev = Device::Cpu;
    // (label, batch, channels, side)
    let layers = [
        ("rn18w32 b64 s1", 64, 32, 32),
        ("rn18w32 b64 s2", 64, 64, 16),
        ("rn18w32 b64 s3", 64, 128, 8),
        ("rn18w32 b64 s4", 64, 256, 4),
        ("rn50 b8 s1", 8, 64, 56),
        ("rn50 b8 s2", 8, 128, 28),
        ("rn50 b8 s3", 8, 256, 14),
        ("rn50 b8 s4", 8, 512, 7),
    ];
    println!("threads {}", rayon::current_num_threads());
    println!(
        "{:<16} {:>10} {:>10} {:>6}",
        "layer", "im2col ms", "auto ms", "ratio"
    );
    for (label, n, c, s) in layers {
        let x = Var::from_tensor(&Tensor::randn(0f32, 1., (n, c, s, s), &dev).expect("x"))
            .expect("var");
        let w = Var::from_tensor(&Tensor::randn(0f32, 0.1, (c, c, 3, 3), &dev).expect("w"))
            .expect("var");
        let r = Tensor::randn(0f32, 1., (n, c, s, s), &dev).expect("r");
        let (mut best_i, mut best_a) = (f64::MAX, f64::MAX);
        for _ in 0..reps {
            set_conv_algo(ConvAlgo::Im2col);
            best_i = best_i.min(time(&x, &w, &r));
            set_conv_algo(ConvAlgo::Auto);
            best_a = best_a.min(time(&x, &w, &r));
        }
        println!(
            "{label:<16} {:>10.2} {:>10.2} {:>6.2}",
            best_i * 1e3,
            best_a * 1e3,
            best_a / best_i
        );
    }
}
