//! The machine's memory-copy rate, for `benches/loader_vs_peer.sh`: copy a
//! 256 MiB buffer into another (both already faulted in) with N threads,
//! each copying its own half, best of 5, and print `{"gb_per_s": ...}`.
//! Usage: memcpy_rate [THREADS]

use std::time::Instant;

fn main() {
    let threads: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(1)
        .max(1);
    let n = 256usize << 20;
    let src = vec![1u8; n];
    let mut dst = vec![0u8; n];
    let chunk = n.div_ceil(threads);
    let mut best = f64::INFINITY;
    for _ in 0..5 {
        let t = Instant::now();
        std::thread::scope(|s| {
            for (d, sc) in dst.chunks_mut(chunk).zip(src.chunks(chunk)) {
                s.spawn(move || d.copy_from_slice(sc));
            }
        });
        best = best.min(t.elapsed().as_secs_f64());
    }
    std::hint::black_box(&dst);
    println!(
        "{{\"bytes\": {n}, \"gb_per_s\": {:.3}}}",
        n as f64 / best / 1e9
    );
}
