//! Inflate rate of zlib-rs (through flate2, what `ebv-pack` used up to
//! session 31) and libdeflate (what it uses since) on every deflated entry
//! of a zip, one thread, alternated round by round (BENCHMARKS.md).
//! The compressed streams are read into memory first, so only inflating
//! (into a fresh buffer of the declared size, as `ebv-pack` does) is timed.
//!
//! `cargo run --release --example inflate_rate -- data.zip [rounds]`

use std::io::Read;
use std::time::Instant;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let path = args
        .next()
        .ok_or_else(|| anyhow::anyhow!("usage: inflate_rate ZIP [ROUNDS]"))?;
    let rounds: usize = args.next().map_or(Ok(3), |t| t.parse())?;
    let mut zip = zip::ZipArchive::new(std::fs::File::open(&path)?)?;
    let mut streams = Vec::new();
    for i in 0..zip.len() {
        let mut f = zip.by_index_raw(i)?;
        if f.compression() == zip::CompressionMethod::Deflated {
            let size = usize::try_from(f.size())?;
            let mut v = Vec::new();
            f.read_to_end(&mut v)?;
            streams.push((v, size));
        }
    }
    anyhow::ensure!(!streams.is_empty(), "{path}: no deflated entries");
    let total: usize = streams.iter().map(|s| s.1).sum();
    let mut zlib = flate2::Decompress::new(false);
    let mut libdeflate = libdeflater::Decompressor::new();
    for round in 0..rounds {
        let t = Instant::now();
        for (data, size) in &streams {
            zlib.reset(false);
            let mut out = Vec::with_capacity(*size);
            zlib.decompress_vec(data, &mut out, flate2::FlushDecompress::Finish)?;
            anyhow::ensure!(out.len() == *size, "zlib-rs: short entry");
        }
        let zlib_s = t.elapsed().as_secs_f64();
        let t = Instant::now();
        for (data, size) in &streams {
            let mut out = vec![0u8; *size];
            let n = libdeflate
                .deflate_decompress(data, &mut out)
                .map_err(|e| anyhow::anyhow!("libdeflate: {e:?}"))?;
            anyhow::ensure!(n == *size, "libdeflate: short entry");
        }
        let libdeflate_s = t.elapsed().as_secs_f64();
        println!(
            "{{\"round\": {round}, \"entries\": {}, \"mb\": {:.1}, \"zlib_rs_mb_s\": {:.0}, \"libdeflate_mb_s\": {:.0}, \"ratio\": {:.2}}}",
            streams.len(),
            total as f64 / 1e6,
            total as f64 / zlib_s / 1e6,
            total as f64 / libdeflate_s / 1e6,
            zlib_s / libdeflate_s
        );
    }
    Ok(())
}
