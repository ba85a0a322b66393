//! Benchmarks of the shard reader and `ebv-stats` figures.
//!
//! Workloads: opening a folder and computing the default figures; the
//! `--deep` scan (all threads); two plain single-thread full-decode loops,
//! one through the parquet crate's Arrow reader and one through the
//! zero-copy reader (the yardsticks for `--deep`); random row access.
//!
//! Data: `EBV_STATS_BENCH_DIR` (an `ebv-pack` output folder), or else a
//! small generated JPEG set. With `EBV_STATS_BENCH_ONCE=1` each workload
//! runs once (the fast ones: best of 5) and prints one JSON line instead
//! of going through criterion — this is what `benches/stats_vs_peer.sh`
//! uses.
//!
//! `cargo bench --bench stats`

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Instant;

use arrow_array::{Array, BinaryArray, FixedSizeBinaryArray};
use criterion::{Criterion, Throughput};
use ebv::image::{decode_rgb8, encode_jpeg, DecodeLimits, Subsampling};
use ebv::shard::{
    write_classes_tsv, Encoding, Manifest, ShardMeta, ShardRecord, ShardSet, ShardWriter,
    SourceInfo, Split, SplitTotals,
};
use ebv::stats::{deep_scan, summarize};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ProjectionMask;

/// Write a 2-shard train set of `n` 224x224 JPEGs (smooth colour fields
/// with grain, ~photo-like sizes) into `dir`.
fn generate(dir: &Path, n: usize) {
    let (w, h) = (224u32, 224u32);
    let classes = 50u32;
    let meta = ShardMeta {
        format_version: 1,
        encoding: Encoding::Jpeg,
        height: h,
        width: w,
        split: Split::Train,
        num_classes: classes,
        plan: "bench".into(),
    };
    let mut records = Vec::new();
    let per_shard = n.div_ceil(2);
    let mut i = 0usize;
    for shard in 0..2 {
        let mut wr = ShardWriter::create(dir, shard, &meta, 128).expect("shard writer");
        for _ in 0..per_shard.min(n - i) {
            let mut px = Vec::with_capacity((w * h * 3) as usize);
            let mut noise = (i as u32).wrapping_mul(2_654_435_761) | 1;
            for y in 0..h {
                for x in 0..w {
                    noise ^= noise << 13;
                    noise ^= noise >> 17;
                    noise ^= noise << 5;
                    let g = noise % 24;
                    px.push(((x * 255 / w + i as u32 * 31 + g) % 256) as u8);
                    px.push(((y * 255 / h + i as u32 * 17 + g) % 256) as u8);
                    px.push((((x + y) * 127 / (w + h) + i as u32 * 7 + g) % 256) as u8);
                }
            }
            // 4:4:4, as jpeg-encoder chose by itself at q90 when the
            // figures in BENCHMARKS.md were measured.
            let jpeg = encode_jpeg(&px, w, h, 90, Subsampling::S444).expect("encode");
            wr.push(
                i as u32 % classes,
                jpeg,
                &format!("c{}/{i}.jpg", i as u32 % classes),
            )
            .expect("push");
            i += 1;
        }
        let s = wr.finish().expect("finish");
        records.push(ShardRecord {
            file: s.file,
            split: Split::Train,
            rows: s.rows,
            row_groups: s.row_groups,
            bytes: s.bytes,
            xxh3_128: s.xxh3_128,
        });
    }
    let names: Vec<String> = (0..classes).map(|c| format!("c{c}")).collect();
    write_classes_tsv(&dir.join("classes.tsv"), &names).expect("classes");
    let totals = [
        (
            Split::Train,
            SplitTotals {
                shards: 2,
                rows: n as u64,
                bytes: records.iter().map(|r| r.bytes).sum(),
                rejected: 0,
                passthrough: 0,
            },
        ),
        (Split::Val, SplitTotals::default()),
    ]
    .into();
    Manifest {
        format_version: 1,
        encoding: Encoding::Jpeg,
        height: h,
        width: w,
        num_classes: classes,
        options: serde_json::json!({}),
        source: SourceInfo {
            name: "bench".into(),
            size: 0,
            modified: 0,
        },
        plan: "bench".into(),
        shards: records,
        totals,
        rejected: Vec::new(),
    }
    .save(&dir.join("manifest.json"))
    .expect("manifest");
}

fn shard_paths(set: &ShardSet) -> Vec<PathBuf> {
    set.shards()
        .iter()
        .map(|s| s.path().to_path_buf())
        .collect()
}

/// Sum of decoded pixel bytes, so the decode cannot be optimised away.
fn consume(image: &[u8], raw: bool) -> u64 {
    if raw {
        image.iter().map(|&b| u64::from(b)).sum()
    } else {
        match decode_rgb8(image, DecodeLimits::default()) {
            Ok(img) => img.data.iter().map(|&b| u64::from(b)).sum(),
            Err(_) => 0,
        }
    }
}

/// The plain loop a user would write with the parquet crate: read the
/// image column batch by batch (copied into Arrow buffers), decode each.
fn decode_loop_parquet(paths: &[PathBuf], raw: bool) -> u64 {
    let mut total = 0;
    for p in paths {
        let file = File::open(p).expect("open");
        let builder = ParquetRecordBatchReaderBuilder::try_new(file).expect("reader");
        let mask = ProjectionMask::leaves(builder.parquet_schema(), [1]);
        for batch in builder.with_projection(mask).build().expect("build") {
            let batch = batch.expect("batch");
            let col = batch.column(0);
            if let Some(b) = col.as_any().downcast_ref::<BinaryArray>() {
                for i in 0..b.len() {
                    total += consume(b.value(i), raw);
                }
            } else if let Some(f) = col.as_any().downcast_ref::<FixedSizeBinaryArray>() {
                for i in 0..f.len() {
                    total += consume(f.value(i), raw);
                }
            }
        }
    }
    total
}

/// The same loop through the zero-copy reader, one thread.
fn decode_loop_reader(set: &ShardSet, raw: bool) -> u64 {
    let mut total = 0;
    for shard in set.shards() {
        for g in shard.row_groups() {
            for row in g.expect("row group").iter() {
                total += consume(row.image, raw);
            }
        }
    }
    total
}

fn random_access(set: &ShardSet, lookups: u64) -> usize {
    let n = set.num_rows(Split::Train);
    let mut bytes = 0;
    for i in 0..lookups {
        let r = set.row(Split::Train, (i * 7919) % n).expect("row");
        bytes += r.image.len() + r.key.len();
    }
    bytes
}

/// CPU seconds used by the whole process so far (all threads). Under a
/// shared, loaded machine this is steadier than wall time.
fn process_cpu_s() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer for the duration of the call.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

fn once(name: &str, items: u64, repeats: usize, mut f: impl FnMut()) {
    let (mut best, mut cpu) = (f64::INFINITY, 0.0);
    for _ in 0..repeats {
        let (t, c) = (Instant::now(), process_cpu_s());
        f();
        let wall = t.elapsed().as_secs_f64();
        if wall < best {
            (best, cpu) = (wall, process_cpu_s() - c);
        }
    }
    println!(
        "{{\"bench\": \"{name}\", \"items\": {items}, \"seconds\": {best:.4}, \"cpu_s\": {cpu:.4}, \"per_s\": {:.1}, \"per_cpu_s\": {:.1}, \"threads\": {}}}",
        items as f64 / best,
        items as f64 / cpu.max(1e-9),
        if name == "deep_scan" { rayon::current_num_threads() } else { 1 }
    );
}

fn main() {
    let _tmp;
    let dir = match std::env::var_os("EBV_STATS_BENCH_DIR") {
        Some(d) => PathBuf::from(d),
        None => {
            _tmp = tempfile::tempdir().expect("tempdir");
            generate(_tmp.path(), 512);
            _tmp.path().to_path_buf()
        }
    };
    let set = ShardSet::open(&dir).expect("open the bench folder");
    let raw = set.manifest().encoding == Encoding::Raw;
    let rows: u64 = set.shards().iter().map(|s| s.num_rows()).sum();
    let paths = shard_paths(&set);

    if std::env::var_os("EBV_STATS_BENCH_ONCE").is_some() {
        // Decode workloads run once (the script repeats the whole pass and
        // takes medians); the millisecond ones take the best of 5.
        once("open_and_summary", rows, 5, || {
            let s = ShardSet::open(&dir).expect("open");
            std::hint::black_box(summarize(&s, 10).expect("summary"));
        });
        once("deep_scan", rows, 1, || {
            let s = ShardSet::open(&dir).expect("open");
            std::hint::black_box(deep_scan(&s, false, &|_| {}).expect("deep"));
        });
        once("decode_loop_parquet", rows, 1, || {
            std::hint::black_box(decode_loop_parquet(&paths, raw));
        });
        once("decode_loop_reader", rows, 1, || {
            std::hint::black_box(decode_loop_reader(&set, raw));
        });
        once("random_access", 100_000, 5, || {
            std::hint::black_box(random_access(&set, 100_000));
        });
        return;
    }

    let mut c = Criterion::default().sample_size(10).configure_from_args();
    let mut g = c.benchmark_group("stats");
    g.throughput(Throughput::Elements(rows));
    g.bench_function("open_and_summary", |b| {
        b.iter(|| {
            let s = ShardSet::open(&dir).expect("open");
            summarize(&s, 10).expect("summary")
        })
    });
    g.bench_function("deep_scan", |b| {
        b.iter(|| {
            let s = ShardSet::open(&dir).expect("open");
            deep_scan(&s, false, &|_| {}).expect("deep")
        })
    });
    g.bench_function("decode_loop_parquet", |b| {
        b.iter(|| decode_loop_parquet(&paths, raw))
    });
    g.bench_function("decode_loop_reader", |b| {
        b.iter(|| decode_loop_reader(&set, raw))
    });
    g.throughput(Throughput::Elements(10_000));
    g.bench_function("random_access", |b| b.iter(|| random_access(&set, 10_000)));
    g.finish();
    c.final_summary();
}
