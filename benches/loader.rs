//! Criterion benchmarks of the loader's per-image work on 224×224 RGB
//! (`cargo bench --bench loader`): the identity path (raw shard, no
//! augmentation: u8 HWC → normalised f32 CHW straight from the source
//! slice), RandomResizedCrop + flip + normalise from raw pixels, the same
//! after a JPEG decode into a reused buffer, and a plain copy of one
//! output slot's bytes as the memory-speed reference. The end-to-end
//! comparison with the Python peer is `benches/loader_vs_peer.sh`.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ebv::data::{Augment, Renderer, SampleRng, Stream};
use ebv::image::{decode_rgb8_into, encode_jpeg, DecodeLimits, Subsampling};

const S: u32 = 224;

fn pattern() -> Vec<u8> {
    let mut v = Vec::with_capacity((S * S * 3) as usize);
    for y in 0..S {
        for x in 0..S {
            v.extend_from_slice(&[
                (x * 255 / S) as u8,
                (y * 255 / S) as u8,
                ((x ^ y) & 255) as u8,
            ]);
        }
    }
    v
}

fn bench(c: &mut Criterion) {
    let raw = pattern();
    // 4:4:4, as jpeg-encoder chose by itself at q90 when the figures in
    // BENCHMARKS.md were measured.
    let jpeg = encode_jpeg(&raw, S, S, 90, Subsampling::S444).unwrap();
    let slot_len = 3 * (S * S) as usize;
    let mut slot = vec![0f32; slot_len];
    let mut g = c.benchmark_group("loader_per_image");
    g.throughput(Throughput::Elements(1));

    let eval = Augment::eval(S, 0);
    let mut r_eval = Renderer::new(&eval);
    g.bench_function("raw_identity_to_f32", |b| {
        let mut rng = SampleRng::new(0, 0, 0, Stream::Augment);
        b.iter(|| {
            let plan = eval.plan(&mut rng, S, S);
            r_eval.render(&raw, S, S, &plan, &mut slot).unwrap();
        })
    });

    let mut copy_dst = vec![0u8; slot_len * 4];
    let copy_src = vec![1u8; slot_len * 4];
    g.bench_function("memcpy_one_slot_602KB", |b| {
        b.iter(|| copy_dst.copy_from_slice(std::hint::black_box(&copy_src)))
    });

    let mut train = Augment::train(S);
    train.erasing_p = 0.1;
    let mut r_train = Renderer::new(&train);
    let mut idx = 0u64;
    g.bench_function("raw_rrc_flip_normalise", |b| {
        b.iter(|| {
            idx += 1;
            let mut rng = SampleRng::new(0, 0, idx, Stream::Augment);
            let plan = train.plan(&mut rng, S, S);
            r_train.render(&raw, S, S, &plan, &mut slot).unwrap();
        })
    });

    let mut decoded = Vec::new();
    g.bench_function("jpeg_decode_only", |b| {
        b.iter(|| decode_rgb8_into(&jpeg, DecodeLimits::default(), &mut decoded).unwrap())
    });
    g.bench_function("jpeg_decode_rrc_flip_normalise", |b| {
        b.iter(|| {
            idx += 1;
            let (w, h) = decode_rgb8_into(&jpeg, DecodeLimits::default(), &mut decoded).unwrap();
            let mut rng = SampleRng::new(0, 0, idx, Stream::Augment);
            let plan = train.plan(&mut rng, w, h);
            r_train.render(&decoded, w, h, &plan, &mut slot).unwrap();
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
