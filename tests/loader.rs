//! Tests of the streaming loader (`ebv::data`): sampler permutations and
//! rank partition, each transform against an independent reference,
//! determinism across worker counts, exact resume, corrupt-image
//! replacement and early shutdown. Shards are built by the real `ebv-pack`
//! binary from tiny images in a temp dir.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use ebv::data::*;
use ebv::image::{ResizeMode, Resizer, Rgb8Image};
use ebv::shard::{ShardSet, Split};

const PACK: &str = env!("CARGO_BIN_EXE_ebv-pack");

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Pack `entries` (a class-folder tree) into `dir/out-{encoding}` at
/// `size`, small shards and row groups so that several of each exist.
fn pack(dir: &Path, entries: &[(String, Vec<u8>)], encoding: &str, size: u32) -> PathBuf {
    let src = dir.join(format!("src-{encoding}"));
    write_dir(&src, entries);
    let out = dir.join(format!("out-{encoding}"));
    let size = size.to_string();
    let o = run(
        PACK,
        &[
            s(&src),
            "--out",
            s(&out),
            "--encoding",
            encoding,
            "--size",
            &size,
            "--shard-rows",
            "9",
            "--row-group-rows",
            "4",
            "--quiet",
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    out
}

/// 3 classes × 9 train images and 2 val images each, JPEG at `size`.
fn entries(size: u32) -> Vec<(String, Vec<u8>)> {
    let mut e = Vec::new();
    for c in 0..3u32 {
        for i in 0..9u32 {
            e.push((
                format!("train/c{c}/{i}.jpg"),
                jpeg_rgb(size, size, c * 20 + i),
            ));
        }
        for i in 0..2u32 {
            e.push((
                format!("val/c{c}/{i}.jpg"),
                jpeg_rgb(size, size, 100 + c * 20 + i),
            ));
        }
    }
    e
}

fn collect(loader: &Loader, state: SamplerState) -> Vec<Batch> {
    loader.epoch(state).unwrap().map(|b| b.unwrap()).collect()
}

fn train_cfg(size: u32, batch: usize, workers: usize) -> LoaderConfig {
    let mut cfg = LoaderConfig::train(size, batch);
    cfg.workers = workers;
    cfg.prefetch = 2;
    // Erasing on every sample so the test exercises it.
    cfg.augment.erasing_p = 1.0;
    cfg
}

#[test]
fn each_epoch_is_a_permutation_and_ranks_partition_it() {
    let layout = Layout {
        shards: vec![vec![4, 4, 3], vec![5], vec![2, 2, 3]],
    };
    let n = layout.num_rows();
    assert_eq!(n, 23);
    for shuffle in [Shuffle::Global, Shuffle::Buffer(5), Shuffle::None] {
        for world in [1u32, 2, 3, 4, 5] {
            let mut positions = Vec::new();
            let mut rows = Vec::new();
            let per = n.div_ceil(u64::from(world));
            for rank in 0..world {
                let s = Sampler::new(layout.clone(), shuffle, 11, rank, world).unwrap();
                let o = s.rank_order(3);
                assert_eq!(o.len() as u64, per, "equal length per rank");
                // Every row at most once within a rank (per ≤ n).
                let mut mine: Vec<u64> = o.iter().map(|&(_, r)| r).collect();
                mine.sort();
                mine.dedup();
                assert_eq!(mine.len() as u64, per, "{shuffle} w{world} r{rank}");
                positions.extend(o.iter().map(|&(p, _)| p));
                rows.extend(o.iter().map(|&(_, r)| r));
            }
            // Ranks take disjoint positions covering the padded order.
            positions.sort();
            assert_eq!(positions, (0..per * u64::from(world)).collect::<Vec<_>>());
            // Union of rows = all rows; padding repeats exactly pad rows once.
            let pad = per * u64::from(world) - n;
            rows.sort();
            let mut uniq = rows.clone();
            uniq.dedup();
            assert_eq!(uniq, (0..n).collect::<Vec<_>>(), "{shuffle} w{world}");
            assert_eq!(rows.len() as u64 - uniq.len() as u64, pad);
        }
    }
    // Global orders differ between epochs and seeds, and agree for equal keys.
    let a = Sampler::new(layout.clone(), Shuffle::Global, 1, 0, 1).unwrap();
    let b = Sampler::new(layout.clone(), Shuffle::Global, 2, 0, 1).unwrap();
    assert_ne!(a.epoch_order(0), a.epoch_order(1));
    assert_ne!(a.epoch_order(0), b.epoch_order(0));
    assert_eq!(a.epoch_order(5), a.clone().epoch_order(5));
    assert!(Sampler::new(layout, Shuffle::Global, 1, 2, 2).is_err());
}

#[test]
fn buffer_shuffle_reads_row_groups_whole_with_buffer_one() {
    // With a buffer of 1 the output is the reading order itself: every row
    // group appears as a contiguous ascending run, groups of a shard
    // together.
    let layout = Layout {
        shards: vec![vec![4, 4, 3], vec![5], vec![2, 2, 3]],
    };
    let s = Sampler::new(layout, Shuffle::Buffer(1), 4, 0, 1).unwrap();
    let o = s.epoch_order(0);
    let groups: [(u64, u64); 7] = [
        (0, 4),
        (4, 8),
        (8, 11),
        (11, 16),
        (16, 18),
        (18, 20),
        (20, 23),
    ];
    let mut i = 0;
    let mut seen = Vec::new();
    while i < o.len() {
        let g = groups
            .iter()
            .position(|&(a, b)| o[i] >= a && o[i] < b)
            .unwrap();
        let (a, b) = groups[g];
        assert_eq!(o[i], a, "a group starts at its first row");
        for r in a..b {
            assert_eq!(o[i], r);
            i += 1;
        }
        seen.push(g);
    }
    // Shards' groups contiguous: shard of each group in sequence changes at most 2 times.
    let shard_of = |g: usize| {
        if g < 3 {
            0
        } else if g < 4 {
            1
        } else {
            2
        }
    };
    let changes = seen
        .windows(2)
        .filter(|w| shard_of(w[0]) != shard_of(w[1]))
        .count();
    assert_eq!(changes, 2, "{seen:?}");
}

#[test]
fn random_resized_crop_box_follows_torchvision() {
    // Replay the draws with an independent copy of the generator and the
    // formula written out directly.
    let (w, h) = (40u32, 30u32);
    for idx in 0..500u64 {
        let mut rng = SampleRng::new(9, 1, idx, Stream::Augment);
        let mut replay = rng.clone();
        let got = random_resized_crop_box(&mut rng, w, h, (0.08, 1.0), (0.75, 4.0 / 3.0));
        let area = f64::from(w * h);
        let mut want = None;
        for _ in 0..10 {
            let t = area * (0.08 + (1.0 - 0.08) * replay.uniform());
            let lr = (0.75f64).ln() + ((4.0f64 / 3.0).ln() - (0.75f64).ln()) * replay.uniform();
            let ar = lr.exp();
            let cw = (t * ar).sqrt().round() as i64;
            let ch = (t / ar).sqrt().round() as i64;
            if cw > 0 && ch > 0 && cw <= i64::from(w) && ch <= i64::from(h) {
                let top = replay.below((i64::from(h) - ch + 1) as u64) as u32;
                let left = replay.below((i64::from(w) - cw + 1) as u64) as u32;
                want = Some(CropBox {
                    left,
                    top,
                    width: cw as u32,
                    height: ch as u32,
                });
                break;
            }
        }
        let want = want.unwrap_or(CropBox {
            left: 0,
            top: 0,
            width: w,
            height: h,
        });
        assert_eq!(got, want, "sample {idx}");
        assert!(got.left + got.width <= w && got.top + got.height <= h);
        let frac = f64::from(got.width * got.height) / area;
        assert!((0.06..=1.0).contains(&frac), "{frac}");
    }
    // Fallback: ratios outside [3/4, 4/3] get the centred box of the
    // limiting ratio; scale (2, 3) can never fit, so every call falls back.
    let mut rng = SampleRng::new(0, 0, 0, Stream::Augment);
    let wide = random_resized_crop_box(&mut rng, 100, 10, (2.0, 3.0), (0.75, 4.0 / 3.0));
    assert_eq!(
        wide,
        CropBox {
            left: 43,
            top: 0,
            width: 13,
            height: 10
        }
    );
    let tall = random_resized_crop_box(&mut rng, 10, 100, (2.0, 3.0), (0.75, 4.0 / 3.0));
    // round(10 / (3/4)) = 13 rows, centred: (100 - 13) / 2 = 43.
    assert_eq!(
        tall,
        CropBox {
            left: 0,
            top: 43,
            width: 10,
            height: 13
        }
    );
}

#[test]
fn normalisation_and_flip_by_hand() {
    // 2×1 image: pixel 0 = (0, 128, 255), pixel 1 = (255, 0, 64).
    let src = [0u8, 128, 255, 255, 0, 64];
    let aug = Augment::eval(2, 0);
    let (scale, bias) = aug.affine();
    let mut out = [0f32; 6];
    write_chw(&src, 2, 1, false, scale, bias, &mut out);
    let n = |v: f32, c: usize| (v / 255.0 - IMAGENET_MEAN[c]) / IMAGENET_STD[c];
    let want = [
        n(0.0, 0),
        n(255.0, 0),
        n(128.0, 1),
        n(0.0, 1),
        n(255.0, 2),
        n(64.0, 2),
    ];
    for (g, w) in out.iter().zip(want) {
        assert!((g - w).abs() < 1e-5, "{out:?} vs {want:?}");
    }
    // Values computed by hand: (0 - 0.485) / 0.229 and (1 - 0.406) / 0.225.
    assert!((out[0] - (-2.117_904)).abs() < 1e-5);
    assert!((out[4] - 2.64).abs() < 1e-5);
    let mut flipped = [0f32; 6];
    write_chw(&src, 2, 1, true, scale, bias, &mut flipped);
    assert_eq!(flipped, [out[1], out[0], out[3], out[2], out[5], out[4]]);
}

#[test]
fn fused_render_equals_crop_then_resize_then_normalise() {
    let (w, h) = (37u32, 29u32);
    let src = pattern(w, h, 5);
    let size = 16u32;
    let aug = Augment::train(size);
    let _ = aug.affine();
    let mut r = Renderer::new(&aug);
    let mut resizer = Resizer::default();
    let mut slot = vec![0f32; 3 * 16 * 16];
    for idx in 0..40u64 {
        let mut rng = SampleRng::new(3, 0, idx, Stream::Augment);
        let plan = aug.plan(&mut rng, w, h);
        r.render(&src, w, h, &plan, &mut slot).unwrap();
        let Crop::Box(b) = plan.crop else {
            panic!("train crops are boxes")
        };
        // Reference: copy the box out, resize with the packer's resizer,
        // then normalise and flip pixel by pixel.
        let mut crop = Vec::new();
        for y in b.top..b.top + b.height {
            let a = ((y * w + b.left) * 3) as usize;
            crop.extend_from_slice(&src[a..a + (b.width * 3) as usize]);
        }
        let img = Rgb8Image::new(b.width, b.height, crop).unwrap();
        let small = resizer
            .resize(&img, size, size, ResizeMode::Stretch)
            .unwrap();
        for y in 0..size as usize {
            for x in 0..size as usize {
                let sx = if plan.flip { size as usize - 1 - x } else { x };
                for c in 0..3 {
                    let v = f32::from(small.data[(y * size as usize + sx) * 3 + c]);
                    let mut want = (v / 255.0 - IMAGENET_MEAN[c]) / IMAGENET_STD[c];
                    if let Some(e) = plan.erase {
                        let (ex, ey) = (x as u32, y as u32);
                        if ex >= e.left
                            && ex < e.left + e.width
                            && ey >= e.top
                            && ey < e.top + e.height
                        {
                            want = 0.0;
                        }
                    }
                    let got = slot[c * 256 + y * 16 + x];
                    assert!(
                        (got - want).abs() < 1e-5,
                        "idx {idx} ({x},{y},{c}): {got} vs {want}"
                    );
                }
            }
        }
    }
}

#[test]
fn random_erasing_boxes_fit_and_follow_the_area_range() {
    for idx in 0..300u64 {
        let mut rng = SampleRng::new(1, 0, idx, Stream::Augment);
        if let Some(b) = random_erasing_box(&mut rng, 32, 24, (0.02, 0.33), (0.3, 3.3)) {
            assert!(b.width < 32 && b.height < 24 && b.width >= 1 && b.height >= 1);
            assert!(b.left + b.width <= 32 && b.top + b.height <= 24);
            let frac = f64::from(b.width * b.height) / (32.0 * 24.0);
            assert!((0.005..=0.40).contains(&frac), "{frac}");
        }
    }
}

#[test]
fn mixup_and_cutmix_weights() {
    let (n, w, h) = (4usize, 8usize, 6usize);
    let len = 3 * w * h;
    let constant = || -> Vec<f32> { (0..n).flat_map(|i| vec![i as f32 * 10.0; len]).collect() };
    let mut seen = (false, false);
    for idx in 0..200u64 {
        let mut rng = SampleRng::new(2, 0, idx, Stream::Batch);
        let mix = batch_mix(&mut rng, Some(0.2), Some(1.0), w as u32, h as u32);
        let lam = mix.lambda();
        assert!((0.0..=1.0).contains(&lam));
        let mut imgs = constant();
        apply_mix(&mut imgs, n, w, h, &mix, &mut Vec::new());
        for i in 0..n {
            let own = i as f32 * 10.0;
            let partner = ((i + n - 1) % n) as f32 * 10.0;
            let img = &imgs[i * len..(i + 1) * len];
            match mix {
                BatchMix::Mixup { lambda } => {
                    seen.0 = true;
                    let want = lambda * own + (1.0 - lambda) * partner;
                    assert!(img.iter().all(|v| (v - want).abs() < 1e-4));
                }
                BatchMix::Cutmix { lambda, region } => {
                    seen.1 = true;
                    // λ is exactly the fraction of pixels that kept their own value.
                    let kept = img.iter().filter(|&&v| v == own).count() as f32 / len as f32;
                    assert!(
                        (kept - lambda).abs() < 1e-6,
                        "kept {kept} λ {lambda} {region:?}"
                    );
                    let pasted = img.iter().filter(|&&v| v == partner).count() as f32 / len as f32;
                    assert!((kept + pasted - 1.0).abs() < 1e-6);
                }
                BatchMix::None => panic!("both enabled: one of the two every batch"),
            }
        }
    }
    assert!(seen.0 && seen.1, "both kinds drawn in 200 batches");
    assert_eq!(
        batch_mix(
            &mut SampleRng::new(0, 0, 0, Stream::Batch),
            None,
            None,
            4,
            4
        ),
        BatchMix::None
    );
}

#[test]
fn raw_eval_batches_equal_the_stored_pixels() {
    let dir = tempfile::tempdir().unwrap();
    let out = pack(dir.path(), &entries(16), "raw", 16);
    let set = Arc::new(ShardSet::open(&out).unwrap());
    let mut cfg = LoaderConfig::eval(16, 0, 4);
    cfg.workers = 2;
    let loader = Loader::new(Arc::clone(&set), cfg, 0).unwrap();
    let batches = collect(&loader, SamplerState::new(0));
    assert_eq!(batches.iter().map(Batch::len).collect::<Vec<_>>(), [4, 2]);
    let want = read_split(&out, "val");
    let mut k = 0;
    for b in &batches {
        assert_eq!(b.mix, BatchMix::None);
        for i in 0..b.len() {
            let row = &want[k];
            assert_eq!(b.rows[i], k as u64);
            assert_eq!(b.labels[i], row.label);
            let img = b.image(i);
            for (p, px) in row.image.chunks(3).enumerate() {
                for c in 0..3 {
                    let v = (f32::from(px[c]) / 255.0 - IMAGENET_MEAN[c]) / IMAGENET_STD[c];
                    assert!((img[c * 256 + p] - v).abs() < 1e-5);
                }
            }
            k += 1;
        }
    }
    assert_eq!(k, 6);
    // The tensor takes the buffer without a copy.
    let b = batches.into_iter().next().unwrap();
    let ptr = b.images().as_ptr();
    let t = b.into_tensor().unwrap();
    assert_eq!(t.dims(), &[4, 3, 16, 16]);
    let (storage, _) = t.storage_and_layout();
    match &*storage {
        candle_core::Storage::Cpu(candle_core::CpuStorage::F32(v)) => assert_eq!(v.as_ptr(), ptr),
        _ => panic!("cpu f32 storage expected"),
    }
}

#[test]
fn batches_are_identical_for_1_2_and_3_workers_and_resume_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let out = pack(dir.path(), &entries(20), "jpeg", 20);
    let set = Arc::new(ShardSet::open(&out).unwrap());
    let mut runs = Vec::new();
    for workers in [1, 2, 3] {
        let mut cfg = train_cfg(12, 5, workers);
        cfg.shuffle = Shuffle::Buffer(7);
        let loader = Loader::new(Arc::clone(&set), cfg, 42).unwrap();
        runs.push(collect(
            &loader,
            SamplerState {
                seed: 42,
                epoch: 1,
                position: 0,
            },
        ));
    }
    assert_eq!(runs[0].len(), 5, "27 rows, batch 5, drop_last");
    for other in &runs[1..] {
        for (a, b) in runs[0].iter().zip(other) {
            assert_eq!(a.rows, b.rows);
            assert_eq!(a.labels, b.labels);
            assert_eq!(a.mix_labels, b.mix_labels);
            assert_eq!(a.mix, b.mix);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(a.images()), bits(b.images()), "batch {}", a.index);
        }
    }
    // Labels follow the rows: row k of the split has the label the shard stores.
    let all = read_split(&out, "train");
    for b in &runs[0] {
        for (r, l) in b.rows.iter().zip(&b.labels) {
            assert_eq!(all[*r as usize].label, *l);
        }
        assert_eq!(b.replaced.len(), 0);
    }
    // Resume after batch 2 from its state: the rest is identical.
    let loader = Loader::new(
        Arc::clone(&set),
        {
            let mut c = train_cfg(12, 5, 2);
            c.shuffle = Shuffle::Buffer(7);
            c
        },
        42,
    )
    .unwrap();
    let state = runs[0][1].state_after;
    assert_eq!(
        state,
        SamplerState {
            seed: 42,
            epoch: 1,
            position: 10
        }
    );
    let rest = collect(&loader, state);
    assert_eq!(rest.len(), 3);
    for (a, b) in runs[0][2..].iter().zip(&rest) {
        assert_eq!(a.index, b.index);
        assert_eq!(a.rows, b.rows);
        assert_eq!(a.images(), b.images());
    }
    // The last batch's state is the start of the next epoch; a misaligned
    // position or foreign seed is refused.
    assert_eq!(
        runs[0][4].state_after,
        SamplerState {
            seed: 42,
            epoch: 2,
            position: 0
        }
    );
    assert!(loader
        .epoch(SamplerState {
            seed: 42,
            epoch: 1,
            position: 3
        })
        .is_err());
    assert!(loader
        .epoch(SamplerState {
            seed: 1,
            epoch: 1,
            position: 0
        })
        .is_err());
    // A different epoch is a different batch sequence.
    let next = collect(
        &loader,
        SamplerState {
            seed: 42,
            epoch: 2,
            position: 0,
        },
    );
    assert_ne!(next[0].rows, runs[0][0].rows);
}

#[test]
fn ranks_see_disjoint_equal_parts_through_the_loader() {
    let dir = tempfile::tempdir().unwrap();
    let out = pack(dir.path(), &entries(16), "raw", 16);
    let set = Arc::new(ShardSet::open(&out).unwrap());
    let mut all = Vec::new();
    let mut lens = Vec::new();
    for rank in 0..2 {
        let mut cfg = train_cfg(8, 4, 2);
        cfg.rank = rank;
        cfg.world = 2;
        cfg.drop_last = false;
        let loader = Loader::new(Arc::clone(&set), cfg, 7).unwrap();
        let rows: Vec<u64> = collect(&loader, SamplerState::new(7))
            .iter()
            .flat_map(|b| b.rows.clone())
            .collect();
        lens.push(rows.len());
        all.extend(rows);
    }
    // 27 rows, world 2: 14 each, one row repeated as padding.
    assert_eq!(lens, [14, 14]);
    all.sort();
    let before = all.len();
    all.dedup();
    assert_eq!(all, (0..27).collect::<Vec<u64>>());
    assert_eq!(before - all.len(), 1);
}

/// A JPEG whose markers are intact but whose entropy-coded data is garbage
/// that the decoder rejects.
fn corrupt_jpeg(size: u32) -> Vec<u8> {
    let mut j = jpeg_rgb(size, size, 77);
    // The scan starts after the SOS segment (FF DA, length).
    let sos = j.windows(2).position(|w| w == [0xFF, 0xDA]).unwrap();
    let len = usize::from(u16::from_be_bytes([j[sos + 2], j[sos + 3]]));
    let start = sos + 2 + len;
    let end = j.len() - 2;
    // All one bits (0xFF stuffed with 0x00, so no marker): no Huffman
    // table has an all-ones code, so the first code is invalid. Nothing in
    // the marker structure is wrong, which only decoding finds.
    for i in (start..end - 1).step_by(2) {
        j[i] = 0xFF;
        j[i + 1] = 0x00;
    }
    j
}

#[test]
fn corrupt_image_is_replaced_deterministically_and_counted() {
    let bad = corrupt_jpeg(20);
    assert!(
        ebv::image::decode_rgb8(&bad, Default::default()).is_err(),
        "fixture must fail to decode"
    );
    assert!(
        ebv::image::JpegHeader::parse(&bad).is_ok(),
        "fixture must pass the header check"
    );
    let dir = tempfile::tempdir().unwrap();
    let mut e = entries(20);
    e.push(("train/c1/zz-bad.jpg".into(), bad));
    let out = pack(dir.path(), &e, "jpeg", 20);
    let set = Arc::new(ShardSet::open(&out).unwrap());
    assert_eq!(
        set.num_rows(Split::Train),
        28,
        "the packer kept the corrupt entry"
    );
    let mut runs = Vec::new();
    for workers in [1, 3] {
        let mut cfg = train_cfg(12, 4, workers);
        cfg.drop_last = false;
        let loader = Loader::new(Arc::clone(&set), cfg, 5).unwrap();
        let mut it = loader.epoch(SamplerState::new(5)).unwrap();
        let batches: Vec<Batch> = it.by_ref().map(|b| b.unwrap()).collect();
        let summary = it.summary().clone();
        assert_eq!(summary.replaced, 1);
        assert_eq!(summary.samples, 28);
        let err = &summary.errors[0];
        assert_eq!(err.key.as_deref(), Some("train/c1/zz-bad.jpg"));
        assert!(
            err.shard.starts_with("train-") && err.shard.ends_with(".parquet"),
            "{err}"
        );
        let bad_row = err.split_row;
        let with = batches.iter().find(|b| !b.replaced.is_empty()).unwrap();
        assert!(!with.rows.contains(&bad_row));
        assert!(with.rows.contains(&err.replaced_by.unwrap()));
        assert!(err.to_string().contains("zz-bad.jpg"));
        runs.push(batches);
    }
    for (a, b) in runs[0].iter().zip(&runs[1]) {
        assert_eq!(a.rows, b.rows);
        assert_eq!(a.images(), b.images());
    }
}

/// Evaluation leaves unreadable images out (a metric over stand-ins, some
/// counted twice, is not the model's on the split): every readable val row
/// comes once, in file order, none of the bad ones; training replaces, and
/// counts each replaced sample once however many rows were tried for it.
#[test]
fn evaluation_leaves_unreadable_images_out_and_training_counts_samples() {
    let dir = tempfile::tempdir().unwrap();
    let mut e = entries(20);
    for c in 0..3 {
        e.push((format!("val/c{c}/zz-bad.jpg"), corrupt_jpeg(20)));
    }
    // Half of the training rows are bad: replacements often land on bad rows too.
    for i in 0..27 {
        e.push((format!("train/c{}/zz-bad{i}.jpg", i % 3), corrupt_jpeg(20)));
    }
    let out = pack(dir.path(), &e, "jpeg", 20);
    let set = Arc::new(ShardSet::open(&out).unwrap());
    assert_eq!(set.num_rows(Split::Val), 9);
    for workers in [1, 2] {
        let mut cfg = LoaderConfig::eval(12, 12, 4);
        cfg.workers = workers;
        let loader = Loader::new(Arc::clone(&set), cfg, 0).unwrap();
        let mut it = loader.epoch(SamplerState::new(0)).unwrap();
        let batches: Vec<Batch> = it.by_ref().map(|b| b.unwrap()).collect();
        let summary = it.summary().clone();
        assert_eq!((summary.skipped, summary.replaced), (3, 0));
        assert_eq!(summary.samples, 6);
        let bad: Vec<u64> = summary.errors.iter().map(|e| e.split_row).collect();
        assert_eq!(bad.len(), 3);
        assert!(summary.errors.iter().all(|e| e.replaced_by.is_none()
            && e.key.as_deref().is_some_and(|k| k.ends_with("zz-bad.jpg"))));
        let rows: Vec<u64> = batches.iter().flat_map(|b| b.rows.clone()).collect();
        let want: Vec<u64> = (0..9).filter(|r| !bad.contains(r)).collect();
        assert_eq!(rows, want, "every readable row once, in file order");
        for b in &batches {
            assert_eq!(b.images().len(), b.len() * 3 * 12 * 12);
            assert_eq!(b.labels.len(), b.rows.len());
        }
    }
    let mut cfg = train_cfg(12, 6, 2);
    cfg.drop_last = false;
    let loader = Loader::new(Arc::clone(&set), cfg, 3).unwrap();
    let mut it = loader.epoch(SamplerState::new(3)).unwrap();
    let samples: usize = it.by_ref().map(|b| b.unwrap().len()).sum();
    let summary = it.summary().clone();
    assert_eq!(samples, 54);
    assert_eq!(summary.replaced, 27, "each bad position counted once");
    assert!(summary.errors.len() > 27, "some replacements failed too");
}

#[test]
fn dropping_the_iterator_early_stops_the_workers() {
    let dir = tempfile::tempdir().unwrap();
    let out = pack(dir.path(), &entries(20), "jpeg", 20);
    let set = Arc::new(ShardSet::open(&out).unwrap());
    let mut cfg = train_cfg(12, 2, 3);
    cfg.prefetch = 1;
    let loader = Loader::new(Arc::clone(&set), cfg, 1).unwrap();
    let t = Instant::now();
    for _ in 0..20 {
        let mut it = loader.epoch(SamplerState::new(1)).unwrap();
        let first = it.next().unwrap().unwrap();
        assert_eq!(first.index, 0);
        assert_eq!(
            it.state(),
            SamplerState {
                seed: 1,
                epoch: 0,
                position: 2
            }
        );
        drop(it); // workers blocked on full queues must exit and be joined
    }
    assert!(t.elapsed() < Duration::from_secs(20));
    // A full epoch ends with the next epoch's state.
    let mut it = loader.epoch(SamplerState::new(1)).unwrap();
    assert_eq!(it.by_ref().count(), 13);
    assert_eq!(
        it.state(),
        SamplerState {
            seed: 1,
            epoch: 1,
            position: 0
        }
    );
    assert!(it.next().is_none());
}

/// `ebv-load` end to end: several epochs in one process count every train
/// row once per epoch; a corrupt image is reported and replaced, not fatal;
/// bad flags exit 2 naming the flag or the folder.
#[test]
fn ebv_load_binary_streams_epochs_and_reports() {
    const LOAD: &str = env!("CARGO_BIN_EXE_ebv-load");
    let dir = tempfile::tempdir().unwrap();
    let mut e = entries(20);
    e.push(("train/c1/bad.jpg".into(), corrupt_jpeg(20)));
    let out = pack(dir.path(), &e, "jpeg", 20);
    let train_rows = manifest(&out)["totals"]["train"]["rows"].as_u64().unwrap();
    let o = run(
        LOAD,
        &[
            "--shards",
            s(&out),
            "--batch",
            "4",
            "--workers",
            "2",
            "--size",
            "12",
            "--aug",
            "--epochs",
            "3",
            "--keep-last",
            "--json",
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(report["images"].as_u64().unwrap(), 3 * train_rows);
    assert_eq!(
        report["batches"].as_u64().unwrap(),
        3 * train_rows.div_ceil(4)
    );
    assert_eq!(report["epochs"], 3);
    assert_eq!(report["encoding"], "jpeg");
    // The corrupt entry (kept by the packer: its header is fine) is
    // replaced once per epoch, and named.
    assert_eq!(report["replaced"], 3, "{report}");
    assert!(report["errors"].to_string().contains("bad.jpg"), "{report}");
    assert!(String::from_utf8_lossy(&o.stderr).contains("bad.jpg"));
    // --batches caps the total across epochs.
    let o = run(
        LOAD,
        &[
            "--shards",
            s(&out),
            "--batch",
            "4",
            "--epochs",
            "3",
            "--batches",
            "5",
            "--json",
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(report["batches"], 5);
    assert_eq!(report["images"], 20);
    let o = run(LOAD, &["--shards", s(&out), "--epochs", "0"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--epochs"));
    // Fewer rows than one batch: an error, not 0 batches and exit 0.
    let o = run(LOAD, &["--shards", s(&out), "--batch", "1000"]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(&format!(
            "the train split has {train_rows} rows, fewer than one --batch of 1000"
        )) && err.contains("--keep-last"),
        "{err}"
    );
    let o = run(
        LOAD,
        &[
            "--shards",
            s(&out),
            "--batch",
            "1000",
            "--keep-last",
            "--json",
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = run(
        LOAD,
        &[
            "--shards",
            s(&out),
            "--batch",
            "4",
            "--epoch",
            "18446744073709551615",
        ],
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("past the last epoch"));
    let missing = dir.path().join("nowhere");
    let o = run(LOAD, &["--shards", s(&missing)]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("nowhere"));
    // The val split is read as evaluation reads it: every row once, in file
    // order, the short last batch kept.
    let o = run(
        LOAD,
        &[
            "--shards",
            s(&out),
            "--split",
            "val",
            "--batch",
            "4",
            "--json",
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(report["images"], 6, "{report}");
    assert_eq!(report["batches"], 2, "{report}");
    assert_eq!(
        (&report["shuffle"], &report["drop_last"]),
        (&serde_json::json!("none"), &serde_json::json!(false))
    );
    // A split without rows is named, with its folder.
    let dir2 = tempfile::tempdir().unwrap();
    let train_only: Vec<_> = entries(20)
        .into_iter()
        .filter(|(k, _)| k.starts_with("train/"))
        .collect();
    let only = pack(dir2.path(), &train_only, "jpeg", 20);
    let o = run(LOAD, &["--shards", s(&only), "--split", "val"]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("the val split of") && err.contains("has no rows"),
        "{err}"
    );
}

/// Every train row as (label, key, image bytes), read through `set`.
fn all_train_rows(set: &ShardSet) -> Vec<(u32, String, Vec<u8>)> {
    let mut rows = Vec::new();
    for shard in set.split_shards(Split::Train) {
        for g in shard.row_groups() {
            for r in g.unwrap().iter() {
                rows.push((r.label, r.key.to_string(), r.image.to_vec()));
            }
        }
    }
    rows
}

#[test]
fn read_advice_follows_order_and_encoding_and_never_changes_what_is_read() {
    use ebv::shard::Access;
    let dir = tempfile::tempdir().unwrap();
    for enc in ["raw", "jpeg"] {
        let out = pack(dir.path(), &entries(16), enc, 16);
        let reference = all_train_rows(&ShardSet::open(&out).unwrap());
        assert_eq!(reference.len(), 27);
        for (shuffle, want) in [
            // JPEG too: ebv-pack lists the image lengths in the footer (the
            // walk for shards without them is tested in the reader).
            (Shuffle::Global, Access::Random),
            (Shuffle::Buffer(8), Access::Normal),
            (Shuffle::None, Access::Normal),
        ] {
            // A fresh set per order: its row-group indexes get built under
            // the advice (under Random, with the chunk prefetches).
            let set = Arc::new(ShardSet::open(&out).unwrap());
            let mut cfg = train_cfg(16, 4, 2);
            cfg.shuffle = shuffle;
            let loader = Loader::new(Arc::clone(&set), cfg, 3).unwrap();
            for shard in set.split_shards(Split::Train) {
                assert_eq!(shard.access(), want, "{enc} {shuffle}");
            }
            // The other split is not the loader's business.
            set.advise(Split::Val, Access::Sequential);
            let _ = Loader::new(Arc::clone(&set), loader.config().clone(), 3).unwrap();
            for shard in set.split_shards(Split::Val) {
                assert_eq!(shard.access(), Access::Sequential, "{enc} {shuffle}");
            }
            // Batches (with the per-image prefetches under Random) come out,
            // and every row reads back byte for byte.
            let n: usize = collect(&loader, SamplerState::new(3))
                .iter()
                .map(Batch::len)
                .sum();
            assert_eq!(
                n, 24,
                "{enc} {shuffle}: 27 rows, batches of 4, last dropped"
            );
            assert_eq!(all_train_rows(&set), reference, "{enc} {shuffle}");
        }
        // Every advice by hand, with the indexes built under it.
        for access in [Access::Random, Access::Sequential, Access::Normal] {
            let set = ShardSet::open(&out).unwrap();
            set.advise(Split::Train, access);
            for shard in set.split_shards(Split::Train) {
                for g in shard.row_groups() {
                    let g = g.unwrap();
                    for i in 0..g.len() {
                        g.prefetch_image(i);
                    }
                }
            }
            assert_eq!(all_train_rows(&set), reference, "{enc} {access:?}");
        }
    }
}

/// A label at or above the manifest's class count (shards that contradict
/// their manifest) stops the epoch with an error naming the shard file and
/// row, in the library and in `ebv-load`, instead of being read.
#[test]
fn out_of_range_labels_are_errors_naming_shard_and_row() {
    const LOAD: &str = env!("CARGO_BIN_EXE_ebv-load");
    let dir = tempfile::tempdir().unwrap();
    let out = pack(dir.path(), &entries(20), "jpeg", 20);
    // Rewrite the first train shard with row 5's label set to 7 (3 classes).
    let (file, written) = {
        let set = ShardSet::open(&out).unwrap();
        let shard = set.split_shards(Split::Train).next().unwrap();
        let tmp = dir.path().join("rewrite");
        std::fs::create_dir_all(&tmp).unwrap();
        let mut w = ebv::shard::ShardWriter::create(&tmp, 0, shard.meta(), 4).unwrap();
        let mut row = 0;
        for rg in 0..shard.num_row_groups() {
            let g = shard.row_group(rg).unwrap();
            for i in 0..g.len() {
                let label = if row == 5 { 7 } else { g.label(i) };
                w.push(label, g.image(i).to_vec(), g.key(i)).unwrap();
                row += 1;
            }
        }
        (shard.file_name(), w.finish().unwrap())
    };
    assert_eq!(written.file, file);
    std::fs::copy(&written.path, out.join(&file)).unwrap();
    let mut m = manifest(&out);
    for r in m["shards"].as_array_mut().unwrap() {
        if r["file"] == file.as_str() {
            r["bytes"] = written.bytes.into();
            r["xxh3_128"] = written.xxh3_128.clone().into();
        }
    }
    std::fs::write(out.join("manifest.json"), m.to_string()).unwrap();

    let set = Arc::new(ShardSet::open(&out).unwrap());
    let mut cfg = train_cfg(12, 4, 2);
    cfg.shuffle = Shuffle::None;
    let loader = Loader::new(set, cfg, 0).unwrap();
    let err = loader
        .epoch(SamplerState::new(0))
        .unwrap()
        .find_map(Result::err)
        .expect("the bad label was read without error");
    assert!(
        matches!(
            err,
            DataError::LabelOutOfRange {
                row: 5,
                label: 7,
                classes: 3,
                ..
            }
        ),
        "{err}"
    );
    let text = err.to_string();
    assert!(text.contains(&file) && text.contains("row 5"), "{text}");
    // A saved position past this split's rows (a state from other shards).
    let e = loader
        .epoch(SamplerState {
            seed: 0,
            epoch: 0,
            position: 28,
        })
        .err()
        .expect("position 28 of 27 rows accepted");
    assert!(e.to_string().contains("beyond"), "{e}");

    let o = run(LOAD, &["--shards", s(&out), "--size", "12", "--batch", "4"]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&file) && stderr.contains("label 7"),
        "{stderr}"
    );
}

/// Output sides beyond ebv-pack's 8192 cap are refused by the loader and by
/// `ebv-load` (exit 2, naming the flag) instead of aborting on allocation.
#[test]
fn huge_output_sizes_are_refused() {
    const LOAD: &str = env!("CARGO_BIN_EXE_ebv-load");
    let dir = tempfile::tempdir().unwrap();
    let out = pack(dir.path(), &entries(20), "jpeg", 20);
    let set = Arc::new(ShardSet::open(&out).unwrap());
    let e = Loader::new(set, train_cfg(100_000, 2, 1), 0)
        .err()
        .expect("size 100000 accepted");
    assert!(e.to_string().contains("8192"), "{e}");
    for flag in ["--size", "--eval-resize"] {
        let o = run(LOAD, &["--shards", s(&out), flag, "100000", "--batch", "2"]);
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains(flag) && stderr.contains("8192"), "{stderr}");
    }
}

/// `ebv-train` says on stderr, not only in `metrics.jsonl`, that samples of
/// the shards could not be read, naming the first.
#[test]
fn ebv_train_warns_of_replaced_samples() {
    const TRAIN: &str = env!("CARGO_BIN_EXE_ebv-train");
    let dir = tempfile::tempdir().unwrap();
    let mut e = entries(20);
    e.push(("train/c1/bad.jpg".into(), corrupt_jpeg(20)));
    e.push(("val/c2/bad.jpg".into(), corrupt_jpeg(20)));
    let out = pack(dir.path(), &e, "jpeg", 20);
    let run_dir = dir.path().join("run");
    let o = run(
        TRAIN,
        &[
            "--shards",
            s(&out),
            "--out",
            s(&run_dir),
            "--head",
            "fc",
            "--arch",
            "resnet18",
            "--width",
            "4",
            "--size",
            "16",
            "--batch",
            "4",
            "--epochs",
            "1",
            "--workers",
            "1",
        ],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("warning: 1 training samples could not be read and were replaced"),
        "{err}"
    );
    assert!(err.contains("train/c1/bad.jpg"), "{err}");
    assert!(
        err.contains("1 of the 7 validation images could not be read and were left out")
            && err.contains("val/c2/bad.jpg"),
        "{err}"
    );
    // ebv-eval scores the readable images only, and says so.
    const EVAL: &str = env!("CARGO_BIN_EXE_ebv-eval");
    let o = run(
        EVAL,
        &["--checkpoint", s(&run_dir), "--shards", s(&out), "--quiet"],
    );
    let (out_s, err) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    assert!(o.status.success(), "{err}");
    assert!(
        out_s.contains("(6 images, 1 unreadable left out)"),
        "{out_s}"
    );
    assert!(
        err.contains("1 of the 7 val images could not be read"),
        "{err}"
    );
    let o = run(
        EVAL,
        &["--checkpoint", s(&run_dir), "--shards", s(&out), "--json"],
    );
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        (&j["images"], &j["skipped"]),
        (&serde_json::json!(6), &serde_json::json!(1))
    );
}
