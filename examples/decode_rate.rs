//! Decode-only rate of the JPEG decoder ebv uses, on every JPEG entry of a
//! zip, as the yardstick for `ebv-pack` throughput (BENCHMARKS.md).
//! Entries are read into memory first, so only decoding is timed.
//!
//! `cargo run --release --example decode_rate -- data.zip [threads] [decode|check]`
//!
//! `check` times `ebv::image::check_coded_data` (the walk of the coded data
//! that `ebv-pack --verify decode` and `ebv-stats --deep` add) instead;
//! `order` times `ebv::image::check_scan_order` (the scan-order check
//! `ebv-pack` runs on every JPEG it decodes).

use std::io::Read;
use std::time::Instant;

use rayon::prelude::*;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let path = args
        .next()
        .ok_or_else(|| anyhow::anyhow!("usage: decode_rate ZIP [THREADS] [decode|check|order]"))?;
    let threads: usize = args.next().map_or(Ok(1), |t| t.parse())?;
    let mode = args.next().unwrap_or_else(|| "decode".into());
    if !["decode", "check", "order"].contains(&mode.as_str()) {
        anyhow::bail!("unknown mode {mode:?}: decode, check or order");
    }
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
            .map(|b| match mode.as_str() {
                // Bytes walked, for the same "did work" guard.
                "check" => ebv::image::check_coded_data(b).map_or(0, |()| b.len() as u64),
                "order" => ebv::image::check_scan_order(b).map_or(0, |()| b.len() as u64),
                _ => ebv::image::decode_rgb8(b, Default::default())
                    .map_or(0, |i| i.data.len() as u64),
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
