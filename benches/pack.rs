//! Pack throughput (images/s) on generated data: 224×224 JPEG passthrough,
//! raw decode of the same, and decode+resize+re-encode of larger images.
//! `cargo bench --bench pack`. The side-by-side comparison with the Python
//! peer is `benches/pack_vs_peer.sh` (see BENCHMARKS.md).

use std::io::Write;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ebv::pack::{pack, PackOptions};
use ebv::shard::Encoding;

const N: usize = 400;

fn smooth_jpeg(w: u32, h: u32, seed: u32) -> Vec<u8> {
    let mut px = Vec::with_capacity((w * h * 3) as usize);
    for y in 0..h {
        for x in 0..w {
            let v = (x * 7 + y * 3 + seed * 11) % 256;
            px.extend_from_slice(&[v as u8, ((x ^ y) % 256) as u8, ((y + seed) % 256) as u8]);
        }
    }
    let mut out = Vec::new();
    jpeg_encoder::Encoder::new(&mut out, 90)
        .encode(&px, w as u16, h as u16, jpeg_encoder::ColorType::Rgb)
        .expect("encode");
    out
}

fn make_zip(path: &std::path::Path, w: u32, h: u32) {
    let mut zip = zip::ZipWriter::new(std::fs::File::create(path).expect("create"));
    let opts = zip::write::SimpleFileOptions::default();
    for i in 0..N as u32 {
        zip.start_file(format!("train/c{}/{i}.jpg", i % 50), opts)
            .expect("entry");
        zip.write_all(&smooth_jpeg(w, h, i)).expect("write");
    }
    zip.finish().expect("finish");
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let small = dir.path().join("224.zip");
    let large = dir.path().join("500x375.zip");
    make_zip(&small, 224, 224);
    make_zip(&large, 500, 375);
    let mut g = c.benchmark_group("pack");
    g.sample_size(10);
    g.throughput(Throughput::Elements(N as u64));
    for (name, src, encoding) in [
        ("jpeg-passthrough-224", &small, Encoding::Jpeg),
        ("raw-224", &small, Encoding::Raw),
        ("jpeg-reencode-500x375", &large, Encoding::Jpeg),
        ("raw-500x375", &large, Encoding::Raw),
    ] {
        g.bench_function(name, |b| {
            b.iter(|| {
                let out = dir.path().join(format!("out-{name}"));
                let mut opts = PackOptions::new(src, &out);
                opts.encoding = encoding;
                opts.force = true;
                opts.quiet = true;
                pack(&opts).expect("pack")
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
