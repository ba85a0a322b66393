//! Decode-only rate of the JPEG decoder ebv uses, on every JPEG entry of a
//! zip, as the yardstick for `ebv-pack` throughput (BENCHMARKS.md).
//! Entries are read into memory first, so only decoding is timed.
//!
//! `cargo run --release --example decode_rate -- data.zip [threads] [decode|check]`
//!
//! `check` times `ebv::image::check_coded_data` (the walk of the coded data
//! that `ebv-pack --verify decode` and `ebv-stats --deep` add) instead.

use std::io::Read;
use std::time::Instant;

use rayon::prelude::*;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let path = args
        .next()
        .ok_or_else(|| anyhow::anyhow!("usage: decode_rate ZIP [THREADS]"))?;
    let threads: usize = args.next().map_or(Ok(1), |t| t.parse())?;
    let check = match args.next().as_deref() {
        None | Some("decode") => false,
        Some("check") => true,
        Some(other) => anyhow::bail!("unknown mode {other:?}: decode or check"),
    };
    let mut zip = zip::ZipArchive::new(std::fs::File::open(&path)?)?;
    let mut blobs = Vec::new();
    for i in 0..zip.len() {
        let mut f = zip.by_index(i)?;
        if f.name().is_ok_and(|n| {
            n.to_ascii_lowercase().ends_with(".jpeg") || n.to_ascii_lowercase().ends_with(".jpg")
        }) {
            let mut v = Vec::new();
            f.read_to_end(&mut v)?;
            blobs.push(v);
        }
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()?;
    let start = Instant::now();
    let pixels: u64 = pool.install(|| {
        blobs
            .par_iter()
            .map(|b| {
                if check {
                    // Bytes walked, for the same "did work" guard.
                    ebv::image::check_coded_data(b).map_or(0, |()| b.len() as u64)
                } else {
                    ebv::image::decode_rgb8(b, Default::default())
                        .map_or(0, |i| i.data.len() as u64)
                }
            })
            .sum()
    });
    let wall = start.elapsed().as_secs_f64();
    println!(
        "{{\"images\": {}, \"threads\": {threads}, \"wall_s\": {wall:.4}, \"images_per_s\": {:.1}, \"bytes_out\": {pixels}}}",
        blobs.len(),
        blobs.len() as f64 / wall
    );
    Ok(())
}
