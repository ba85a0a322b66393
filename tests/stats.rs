//! End-to-end tests of the zero-copy shard reader and `ebv-stats`. Fixtures
//! are packed by the built `ebv-pack` (or, where a defect must be planted,
//! written with the library's `ShardWriter`); every figure is checked
//! against values computed here from the parquet crate's own reader.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Output;

use common::*;
use ebv::shard::{
    read_classes_tsv, write_classes_tsv, Encoding, Manifest, ReadError, ShardMeta, ShardRecord,
    ShardSet, ShardWriter, SourceInfo, Split, SplitTotals,
};
use parquet::file::reader::{FileReader, SerializedFileReader};
use serde_json::Value;

const PACK: &str = env!("CARGO_BIN_EXE_ebv-pack");
const STATS: &str = env!("CARGO_BIN_EXE_ebv-stats");

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn json(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}\n{}", stdout(o), stderr(o)))
}

/// Class-folder source: five classes of uneven size, one class only in
/// train, byte-identical images within train, within val and across the
/// splits, a PNG that is converted, and two entries that are rejected.
fn source_entries() -> Vec<(String, Vec<u8>)> {
    let mut e = Vec::new();
    let sizes = [
        ("ant", 6u32),
        ("bee", 4),
        ("cat", 3),
        ("dog", 2),
        ("emu", 1),
    ];
    for (c, (class, n)) in sizes.iter().enumerate() {
        for i in 0..*n {
            e.push((
                format!("set/train/{class}/{i}.jpg"),
                jpeg_rgb(32, 32, c as u32 * 20 + i),
            ));
        }
    }
    // Duplicates: bee/0 again in train; ant/0 in val; one val image twice.
    e.push(("set/train/bee/copy-of-0.jpg".into(), jpeg_rgb(32, 32, 20)));
    e.push(("set/val/ant/leak.jpg".into(), jpeg_rgb(32, 32, 0)));
    e.push(("set/val/ant/v1.jpg".into(), jpeg_rgb(32, 32, 101)));
    e.push(("set/val/bee/v0.jpg".into(), jpeg_rgb(32, 32, 120)));
    e.push(("set/val/cat/v0.jpg".into(), jpeg_rgb(32, 32, 140)));
    e.push(("set/val/cat/v0-again.jpg".into(), jpeg_rgb(32, 32, 140)));
    e.push(("set/val/dog/v0.jpg".into(), jpeg_rgb(32, 32, 160)));
    // Converted (not 32x32, not JPEG).
    e.push(("set/train/cat/wide.png".into(), png_rgb(40, 30, 77)));
    // Rejected.
    e.push(("set/train/cat/empty.jpg".into(), Vec::new()));
    e.push(("set/train/dog/notes.txt".into(), b"not an image".to_vec()));
    e
}

/// Pack the source into `out` with `args` (size, encoding, sharding).
fn pack(dir: &Path, name: &str, args: &[&str]) -> PathBuf {
    let src = dir.join(format!("{name}-src"));
    if !src.exists() {
        write_dir(&src, &source_entries());
    }
    let out = dir.join(name);
    let mut a = vec![s(&src), "--out", s(&out), "--quiet", "--threads", "2"];
    a.extend_from_slice(args);
    let o = run(PACK, &a);
    assert!(o.status.success(), "ebv-pack: {}", stderr(&o));
    out
}

fn jpeg_pack(dir: &Path) -> PathBuf {
    pack(
        dir,
        "jpeg",
        &["--size", "32", "--shard-rows", "7", "--row-group-rows", "3"],
    )
}

fn raw_pack(dir: &Path) -> PathBuf {
    pack(
        dir,
        "raw",
        &[
            "--encoding",
            "raw",
            "--size",
            "8x6",
            "--shard-rows",
            "5",
            "--row-group-rows",
            "2",
        ],
    )
}

/// Shard files of `split` in name order.
fn shard_files(out: &Path, split: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy();
            n.starts_with(&format!("{split}-")) && n.ends_with(".parquet")
        })
        .collect();
    v.sort();
    v
}

fn within(ptr: &[u8], map: &[u8]) -> bool {
    let (lo, hi) = (map.as_ptr() as usize, map.as_ptr() as usize + map.len());
    let (a, b) = (ptr.as_ptr() as usize, ptr.as_ptr() as usize + ptr.len());
    lo <= a && b <= hi
}

// ---------------------------------------------------------------- reader

#[test]
fn reader_returns_every_row_as_the_parquet_crate_does_without_copying() {
    let dir = tempfile::tempdir().unwrap();
    for out in [jpeg_pack(dir.path()), raw_pack(dir.path())] {
        let set = ShardSet::open(&out).unwrap();
        let mut checked = 0;
        for shard in set.shards() {
            let want = read_shard(shard.path());
            assert_eq!(shard.num_rows(), want.len() as u64);
            let map = shard.mapped();
            // Random access by (shard, row), in reverse to defeat any
            // sequential assumption.
            for (i, w) in want.iter().enumerate().rev() {
                let r = shard.row(i as u64).unwrap();
                assert_eq!(
                    (r.label, r.key, r.image),
                    (w.label, w.key.as_str(), &w.image[..])
                );
                assert!(
                    within(r.image, map),
                    "image of row {i} is not a slice of the mapping"
                );
                assert!(
                    within(r.key.as_bytes(), map),
                    "key of row {i} is not a slice of the mapping"
                );
                checked += 1;
            }
            // Sequential iteration by row group gives the same rows in order.
            let mut seq = Vec::new();
            for g in shard.row_groups() {
                let g = g.unwrap();
                assert_eq!(g.first_row(), seq.len() as u64);
                assert_eq!(g.labels().len(), g.len());
                seq.extend(
                    g.iter()
                        .map(|r| (r.label, r.key.to_string(), r.image.to_vec())),
                );
            }
            let want_seq: Vec<_> = want
                .iter()
                .map(|w| (w.label, w.key.clone(), w.image.clone()))
                .collect();
            assert_eq!(seq, want_seq);
            assert_eq!(
                shard.labels().unwrap(),
                want.iter().map(|w| w.label).collect::<Vec<_>>()
            );
        }
        // Global row index per split = the split's shards in name order.
        for (split, name) in [(Split::Train, "train"), (Split::Val, "val")] {
            let want = read_split(&out, name);
            assert_eq!(set.num_rows(split), want.len() as u64);
            for (i, w) in want.iter().enumerate() {
                let r = set.row(split, i as u64).unwrap();
                assert_eq!(
                    (r.label, r.key, r.image),
                    (w.label, w.key.as_str(), &w.image[..])
                );
            }
        }
        assert!(checked > 20);
        if set.manifest().encoding == Encoding::Raw {
            let r = set.row(Split::Train, 0).unwrap();
            assert_eq!(r.image.len(), 8 * 6 * 3);
        }
    }
}

#[test]
#[should_panic(expected = "out of range")]
fn a_global_row_out_of_range_panics() {
    let dir = tempfile::tempdir().unwrap();
    let set = ShardSet::open(raw_pack(dir.path())).unwrap();
    let n = set.num_rows(Split::Val);
    let _ = set.row(Split::Val, n);
}

#[test]
fn reader_names_the_file_of_every_defect() {
    let dir = tempfile::tempdir().unwrap();
    let clean = jpeg_pack(dir.path());
    let copy = |name: &str| -> PathBuf {
        let out = dir.path().join(name);
        std::fs::create_dir_all(&out).unwrap();
        for e in std::fs::read_dir(&clean).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), out.join(e.file_name())).unwrap();
        }
        out
    };
    // Missing shard.
    let out = copy("missing");
    std::fs::remove_file(out.join("train-00001.parquet")).unwrap();
    let e = ShardSet::open(&out).unwrap_err();
    assert!(matches!(e, ReadError::Missing { .. }), "{e}");
    assert!(e.to_string().contains("train-00001.parquet"), "{e}");
    // Truncated shard.
    let out = copy("truncated");
    let p = out.join("train-00002.parquet");
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
    let e = ShardSet::open(&out).unwrap_err();
    assert!(matches!(e, ReadError::Truncated { .. }), "{e}");
    assert!(
        e.to_string().contains("train-00002.parquet") && e.to_string().contains("truncated"),
        "{e}"
    );
    // Standalone open of the truncated file: no footer magic.
    let e = ebv::shard::Shard::open(&p).unwrap_err();
    assert!(matches!(e, ReadError::NotParquet { .. }), "{e}");
    // A shard of another pack (different plan and size) swapped in.
    let out = copy("swapped");
    let other = raw_pack(dir.path());
    std::fs::copy(
        other.join("val-00000.parquet"),
        out.join("val-00000.parquet"),
    )
    .unwrap();
    let rec = Manifest::load(&out.join("manifest.json")).unwrap();
    let mut m = rec.clone();
    for r in &mut m.shards {
        if r.file == "val-00000.parquet" {
            r.bytes = std::fs::metadata(out.join(&r.file)).unwrap().len();
        }
    }
    m.save(&out.join("manifest.json")).unwrap();
    let e = ShardSet::open(&out).unwrap_err().to_string();
    assert!(
        e.contains("val-00000.parquet") && e.contains("manifest"),
        "{e}"
    );
    // Wrong schema (label stored as int64) and an unknown format version,
    // each with otherwise valid ebv.* footer metadata.
    let good = ebv::shard::Shard::open(&clean.join("val-00000.parquet")).unwrap();
    let kv = good.meta().to_key_values();
    let path = dir.path().join("int64-labels.parquet");
    write_parquet(&path, &kv, true);
    let e = ebv::shard::Shard::open(&path).unwrap_err();
    assert!(matches!(e, ReadError::Schema { .. }), "{e}");
    assert!(
        e.to_string().contains("int64-labels.parquet") && e.to_string().contains("'label'"),
        "{e}"
    );
    let mut v2 = kv.clone();
    v2[0].1 = "2".into();
    let path = dir.path().join("v2.parquet");
    write_parquet(&path, &v2, false);
    let e = ebv::shard::Shard::open(&path).unwrap_err().to_string();
    assert!(
        e.contains("v2.parquet") && e.contains("format version 2"),
        "{e}"
    );
    // A manifest listing a shard twice (read and counted twice), or a path
    // out of the folder: refused when it is read, naming the entry.
    let out = copy("listed-twice");
    let mut m = Manifest::load(&out.join("manifest.json")).unwrap();
    m.shards.push(m.shards[0].clone());
    m.save(&out.join("manifest.json")).unwrap();
    let e = ShardSet::open(&out).unwrap_err().to_string();
    assert!(e.contains("\"train-00000.parquet\" is listed twice"), "{e}");
    let o = run(STATS, &[s(&out), "--verify"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let out = copy("outside");
    let mut m = Manifest::load(&out.join("manifest.json")).unwrap();
    m.shards[0].file = format!(
        "x/../../{}/train-00000.parquet",
        clean.file_name().unwrap().to_str().unwrap()
    );
    m.save(&out.join("manifest.json")).unwrap();
    let e = ShardSet::open(&out).unwrap_err().to_string();
    assert!(
        e.contains("is not the name of a .parquet file in this folder"),
        "{e}"
    );
    // classes.tsv that disagrees with the manifest.
    let out = copy("classes");
    write_classes_tsv(&out.join("classes.tsv"), &["only".to_string()]).unwrap();
    let e = ShardSet::open(&out).unwrap_err().to_string();
    assert!(e.contains("classes.tsv"), "{e}");
}

/// A one-row Parquet file with the v1 columns (or `label` as int64), the
/// given footer metadata, and otherwise the writer's defaults.
fn write_parquet(path: &Path, kv: &[(String, String)], int64_labels: bool) {
    use arrow_array::{ArrayRef, BinaryArray, Int64Array, RecordBatch, StringArray, UInt32Array};
    use std::sync::Arc;
    let label: ArrayRef = if int64_labels {
        Arc::new(Int64Array::from(vec![0i64]))
    } else {
        Arc::new(UInt32Array::from(vec![0u32]))
    };
    let batch = RecordBatch::try_from_iter_with_nullable(vec![
        ("label", label, false),
        (
            "image",
            Arc::new(BinaryArray::from(vec![&b"jpeg"[..]])) as ArrayRef,
            false,
        ),
        (
            "key",
            Arc::new(StringArray::from(vec!["k"])) as ArrayRef,
            false,
        ),
    ])
    .unwrap();
    let kv = kv
        .iter()
        .map(|(k, v)| parquet::file::metadata::KeyValue::new(k.clone(), v.clone()))
        .collect();
    let props = parquet::file::properties::WriterProperties::builder()
        .set_key_value_metadata(Some(kv))
        .build();
    let mut w = parquet::arrow::ArrowWriter::try_new(
        std::fs::File::create(path).unwrap(),
        batch.schema(),
        Some(props),
    )
    .unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
}

/// Flip bytes all over a small shard: every access returns Ok or a
/// `ReadError` naming the file; nothing panics or reads out of bounds.
#[test]
fn flipped_bytes_anywhere_never_panic_the_reader() {
    let dir = tempfile::tempdir().unwrap();
    let out = raw_pack(dir.path());
    let path = out.join("val-00000.parquet");
    let clean = std::fs::read(&path).unwrap();
    let target = dir.path().join("flipped.parquet");
    let mut errors = 0;
    let step = (clean.len() / 400).max(1);
    for i in (0..clean.len()).step_by(step) {
        for mask in [0x01u8, 0x80, 0xff] {
            let mut b = clean.clone();
            b[i] ^= mask;
            std::fs::write(&target, &b).unwrap();
            let result = (|| -> Result<(), ReadError> {
                let shard = ebv::shard::Shard::open(&target)?;
                shard.labels()?;
                for g in shard.row_groups() {
                    for r in g?.iter() {
                        std::hint::black_box(r);
                    }
                }
                Ok(())
            })();
            if let Err(e) = result {
                errors += 1;
                assert!(e.to_string().contains("flipped.parquet"), "{e}");
            }
        }
    }
    assert!(errors > 10, "only {errors} corruptions detected");
}

// ---------------------------------------------------------------- default figures

/// Independent per-class counts of a split, from the parquet crate.
fn counts(out: &Path, split: &str) -> BTreeMap<u32, u64> {
    let mut c = BTreeMap::new();
    for r in read_split(out, split) {
        *c.entry(r.label).or_insert(0) += 1;
    }
    c
}

fn close(a: &Value, b: f64) -> bool {
    (a.as_f64().unwrap() - b).abs() < 1e-9
}

#[test]
fn default_figures_match_an_independent_count() {
    let dir = tempfile::tempdir().unwrap();
    for out in [jpeg_pack(dir.path()), raw_pack(dir.path())] {
        let o = run(STATS, &[s(&out), "--json", "--quiet", "--min-images", "3"]);
        assert!(o.status.success(), "{}", stderr(&o));
        assert!(
            o.stderr.is_empty(),
            "--quiet --json writes nothing on stderr: {}",
            stderr(&o)
        );
        let j = json(&o);
        let sm = &j["summary"];
        let m = manifest(&out);
        let classes = read_classes_tsv(&out.join("classes.tsv")).unwrap();
        assert_eq!(classes, ["ant", "bee", "cat", "dog", "emu"]);
        assert_eq!(sm["format_version"], 1);
        assert_eq!(sm["encoding"], m["encoding"]);
        assert_eq!(sm["height"], m["height"]);
        assert_eq!(sm["width"], m["width"]);
        assert_eq!(sm["num_classes"], 5);
        assert_eq!(sm["source"]["name"], m["source"]["name"]);
        assert_eq!(sm["min_images"], 3);
        assert!(j["deep"].is_null() && j["verify"].is_null() && j["plot"].is_null());

        let train = counts(&out, "train");
        let val = counts(&out, "val");
        // The fixture's own numbers (5 classes; copy-of-0 adds one bee;
        // wide.png one cat; empty.jpg and notes.txt are rejected).
        let expect_train: BTreeMap<u32, u64> = [(0, 6), (1, 5), (2, 4), (3, 2), (4, 1)].into();
        let expect_val: BTreeMap<u32, u64> = [(0, 2), (1, 1), (2, 2), (3, 1)].into();
        assert_eq!(train, expect_train);
        assert_eq!(val, expect_val);

        for (split, c) in [("train", &train), ("val", &val)] {
            let t = &sm["splits"][split];
            let files = shard_files(&out, split);
            let mut rg_rows = Vec::new();
            let mut image_bytes = 0u64;
            for f in &files {
                let r = SerializedFileReader::new(std::fs::File::open(f).unwrap()).unwrap();
                for rg in r.metadata().row_groups() {
                    rg_rows.push(rg.num_rows() as u64);
                    image_bytes += rg.column(1).compressed_size() as u64;
                }
            }
            let rows: u64 = c.values().sum();
            let bytes: u64 = files
                .iter()
                .map(|f| std::fs::metadata(f).unwrap().len())
                .sum();
            assert_eq!(t["shards"], files.len(), "{split}");
            assert_eq!(t["rows"], rows, "{split}");
            assert_eq!(t["row_groups"], rg_rows.len(), "{split}");
            assert_eq!(
                t["rows_per_row_group"]["min"],
                *rg_rows.iter().min().unwrap()
            );
            assert_eq!(
                t["rows_per_row_group"]["max"],
                *rg_rows.iter().max().unwrap()
            );
            assert_eq!(t["bytes"], bytes, "{split}");
            assert_eq!(t["image_bytes"], image_bytes, "{split}");
            assert!(close(
                &t["image_bytes_per_row"],
                image_bytes as f64 / rows as f64
            ));
            assert_eq!(t["classes"], c.len());
            assert_eq!(t["classes_missing"], 5 - c.len());
            let mut sizes: Vec<u64> = c.values().copied().collect();
            sizes.sort();
            let n = sizes.len();
            let median = if n % 2 == 1 {
                sizes[n / 2] as f64
            } else {
                (sizes[n / 2 - 1] + sizes[n / 2]) as f64 / 2.0
            };
            let pc = &t["images_per_class"];
            assert_eq!(pc["min"], sizes[0]);
            assert_eq!(pc["max"], sizes[n - 1]);
            assert!(
                close(&pc["median"], median),
                "{split} median {}",
                pc["median"]
            );
            assert!(close(&pc["mean"], rows as f64 / n as f64));
            let below: Vec<&str> = c
                .iter()
                .filter(|(_, &n)| n < 3)
                .map(|(&l, _)| classes[l as usize].as_str())
                .collect();
            assert_eq!(t["below_min_images"]["count"], below.len());
            assert_eq!(t["below_min_images"]["names"], serde_json::json!(below));
            assert_eq!(t["below_min_images"]["truncated"], false);
            // Class-size histogram: the size range is small here, so one
            // bin per size from the smallest to the largest class.
            let hist: Vec<(u64, u64, u64)> = (sizes[0]..=sizes[n - 1])
                .map(|k| (k, k, sizes.iter().filter(|&&v| v == k).count() as u64))
                .collect();
            let got: Vec<(u64, u64, u64)> = t["class_size_histogram"]
                .as_array()
                .unwrap()
                .iter()
                .map(|b| {
                    (
                        b["from"].as_u64().unwrap(),
                        b["to"].as_u64().unwrap(),
                        b["classes"].as_u64().unwrap(),
                    )
                })
                .collect();
            assert_eq!(got, hist, "{split}");
        }
        assert_eq!(sm["splits"]["train"]["rejected"], 2);
        assert_eq!(sm["splits"]["val"]["rejected"], 0);
        assert_eq!(
            sm["classes"]["only_in_train"]["names"],
            serde_json::json!(["emu"])
        );
        assert_eq!(sm["classes"]["only_in_train"]["count"], 1);
        assert_eq!(sm["classes"]["only_in_val"]["count"], 0);
        assert_eq!(sm["rejected"]["total"], 2);
        assert_eq!(sm["rejected"]["train"], 2);
        assert_eq!(sm["rejected"]["no_split"], 0);
        assert_eq!(
            sm["rejected"]["by_reason"],
            serde_json::json!({"empty file": 1, "not an image": 1})
        );

        // Per shard: rows, groups, bytes and label range from the crate.
        let listed: Vec<&Value> = sm["shards"].as_array().unwrap().iter().collect();
        let mut files: Vec<PathBuf> = shard_files(&out, "train");
        files.extend(shard_files(&out, "val"));
        assert_eq!(listed.len(), files.len());
        for (entry, f) in listed.iter().zip(&files) {
            let rows = read_shard(f);
            let labels: BTreeSet<u32> = rows.iter().map(|r| r.label).collect();
            let reader = SerializedFileReader::new(std::fs::File::open(f).unwrap()).unwrap();
            assert_eq!(entry["file"], f.file_name().unwrap().to_str().unwrap());
            assert_eq!(entry["rows"], rows.len());
            assert_eq!(entry["row_groups"], reader.metadata().num_row_groups());
            assert_eq!(entry["bytes"], std::fs::metadata(f).unwrap().len());
            assert_eq!(entry["label_min"], *labels.first().unwrap());
            assert_eq!(entry["label_max"], *labels.last().unwrap());
            assert_eq!(entry["distinct_labels"], labels.len());
        }
    }
}

#[test]
fn text_output_is_a_readable_table() {
    let dir = tempfile::tempdir().unwrap();
    let out = jpeg_pack(dir.path());
    let o = run(STATS, &[s(&out), "--min-images", "3", "--quiet"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    for want in [
        "format v1, jpeg 32x32",
        "per class min / median / mean / max",
        "1 / 4 / 3.6 / 6",
        "classes only in train: 1 (emu)",
        "train classes with 1..2 images: 2 (dog, emu)",
        "rejected source entries: 2 (train 2, val 0, no split 0)",
        "train-00000.parquet",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
    let header = text.lines().find(|l| l.starts_with("split")).unwrap();
    let train = text.lines().find(|l| l.starts_with("train ")).unwrap();
    assert_eq!(
        header.len(),
        train.len(),
        "columns are aligned:\n{header}\n{train}"
    );
}

// ---------------------------------------------------------------- --deep

/// Mean and std per channel (0–1 scale) by a plain two-pass f64 loop.
fn mean_std(images: &[Vec<u8>]) -> ([f64; 3], [f64; 3], u64) {
    let mut sum = [0f64; 3];
    let mut n = 0u64;
    for img in images {
        for p in img.chunks(3) {
            for c in 0..3 {
                sum[c] += p[c] as f64 / 255.0;
            }
            n += 1;
        }
    }
    let mean = sum.map(|v| v / n as f64);
    let mut var = [0f64; 3];
    for img in images {
        for p in img.chunks(3) {
            for c in 0..3 {
                let d = p[c] as f64 / 255.0 - mean[c];
                var[c] += d * d;
            }
        }
    }
    (mean, var.map(|v| (v / n as f64).sqrt()), n)
}

#[test]
fn deep_figures_match_an_independent_decode() {
    let dir = tempfile::tempdir().unwrap();
    for out in [jpeg_pack(dir.path()), raw_pack(dir.path())] {
        let m = manifest(&out);
        let raw = m["encoding"] == "raw";
        let o = run(STATS, &[s(&out), "--deep", "--json", "--quiet"]);
        assert!(o.status.success(), "{}", stderr(&o));
        let d = &json(&o)["deep"];
        let mut content: HashMap<Vec<u8>, Vec<(String, String)>> = HashMap::new();
        for split in ["train", "val"] {
            let rows = read_split(&out, split);
            let pixels: Vec<Vec<u8>> = rows
                .iter()
                .map(|r| {
                    if raw {
                        r.image.clone()
                    } else {
                        ebv::image::decode_rgb8(&r.image, Default::default())
                            .unwrap()
                            .data
                    }
                })
                .collect();
            let (mean, std, n) = mean_std(&pixels);
            let t = &d["splits"][split];
            assert_eq!(t["images"], rows.len());
            assert_eq!(t["decoded"], rows.len());
            assert_eq!(t["failures"], 0);
            assert_eq!(
                t["other_size"], 0,
                "every image was brought to the pack size"
            );
            assert_eq!(t["pixels"], n);
            // The codings, read here from each frame header's bytes: the
            // 32×32 sources are stored as they are (4:4:4), the PNG is
            // re-encoded as 4:2:0.
            if raw {
                assert!(t["jpeg"].is_null());
            } else {
                let mut chroma: BTreeMap<String, u64> = BTreeMap::new();
                for r in &rows {
                    let (sof, factors) = jpeg_frame(&r.image);
                    assert_eq!(sof, 0xC0, "{}: sequential", r.key);
                    let name = match factors[..] {
                        [0x11, 0x11, 0x11] => "4:4:4",
                        [0x22, 0x11, 0x11] => "4:2:0",
                        _ => panic!("{}: {factors:?}", r.key),
                    };
                    *chroma.entry(name.into()).or_default() += 1;
                }
                if split == "train" {
                    assert_eq!(chroma.len(), 2, "both samplings occur: {chroma:?}");
                }
                assert_eq!(t["jpeg"]["sequential"], rows.len());
                assert_eq!(t["jpeg"]["progressive"], 0);
                assert_eq!(t["jpeg"]["chroma"], serde_json::json!(chroma));
                let text = stdout(&run(STATS, &[s(&out), "--deep", "--quiet"]));
                let listed: Vec<String> = chroma.iter().map(|(k, n)| format!("{k} {n}")).collect();
                let want = format!(
                    "jpeg ({split}): {} sequential, 0 progressive; chroma {}",
                    rows.len(),
                    listed.join(", ")
                );
                assert!(text.contains(&want), "missing {want:?} in:\n{text}");
            }
            for c in 0..3 {
                assert!(
                    close(&t["mean"][c], mean[c]),
                    "{split} mean[{c}] {} vs {}",
                    t["mean"][c],
                    mean[c]
                );
                assert!(
                    close(&t["std"][c], std[c]),
                    "{split} std[{c}] {} vs {}",
                    t["std"][c],
                    std[c]
                );
            }
            for r in rows {
                content
                    .entry(r.image)
                    .or_default()
                    .push((split.to_string(), r.key));
            }
        }
        // Duplicates by content, counted here from the stored bytes.
        let mut within = BTreeMap::from([("train", (0u64, 0u64)), ("val", (0, 0))]);
        let mut across = (0u64, 0u64, 0u64);
        let mut groups: BTreeSet<BTreeSet<String>> = BTreeSet::new();
        for members in content.values().filter(|m| m.len() > 1) {
            groups.insert(members.iter().map(|(_, k)| k.clone()).collect());
            let t = members.iter().filter(|(s, _)| s == "train").count() as u64;
            let v = members.len() as u64 - t;
            for (split, n) in [("train", t), ("val", v)] {
                if n > 1 {
                    let e = within.get_mut(split).unwrap();
                    e.0 += 1;
                    e.1 += n - 1;
                }
            }
            if t > 0 && v > 0 {
                across = (across.0 + 1, across.1 + t, across.2 + v);
            }
        }
        for (split, (g, r)) in &within {
            assert_eq!(d["splits"][split]["duplicate_groups"], *g, "{split}");
            assert_eq!(d["splits"][split]["duplicate_rows"], *r, "{split}");
        }
        let a = &d["duplicates"]["across_splits"];
        assert_eq!(
            (
                a["groups"].as_u64().unwrap(),
                a["train_rows"].as_u64().unwrap(),
                a["val_rows"].as_u64().unwrap()
            ),
            across
        );
        let listed: BTreeSet<BTreeSet<String>> = d["duplicates"]["examples"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| {
                g["rows"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|r| r["key"].as_str().unwrap().to_string())
                    .collect()
            })
            .collect();
        assert_eq!(listed, groups);
        // The fixture planted exactly these (raw resizing keeps them identical).
        let planted: BTreeSet<BTreeSet<String>> = [
            ["set/train/bee/0.jpg", "set/train/bee/copy-of-0.jpg"],
            ["set/train/ant/0.jpg", "set/val/ant/leak.jpg"],
            ["set/val/cat/v0.jpg", "set/val/cat/v0-again.jpg"],
        ]
        .iter()
        .map(|g| g.iter().map(|k| k.to_string()).collect())
        .collect();
        assert_eq!(groups, planted);
        assert_eq!(d["images"], 24);
        assert!(d["failures"].as_array().unwrap().is_empty());
    }
}

/// A 16×16 JPEG with 12 zero bytes inserted before its end marker: it
/// decodes (zune-jpeg reads its blocks and stops), libjpeg reads it with
/// "Corrupt JPEG data: 12 extraneous bytes before marker 0xd9" (djpeg
/// 2.1.5 prints 11: its bit buffer read one ahead; see
/// tests/data/jpeg-scan/make.py).
fn damaged_jpeg() -> Vec<u8> {
    let mut b = jpeg_rgb(16, 16, 5);
    let eoi = b.len() - 2;
    assert_eq!(&b[eoi..], [0xFF, 0xD9]);
    b.splice(eoi..eoi, [0u8; 12]);
    b
}

/// A jpeg set written with the library, so that defects the packer would
/// never let through can be planted: an undecodable row, an image of the
/// wrong size, a class that only val has, damaged coded data.
fn handmade(dir: &Path) -> PathBuf {
    let out = dir.join("handmade");
    std::fs::create_dir_all(&out).unwrap();
    let meta = |split| ShardMeta {
        format_version: 1,
        encoding: Encoding::Jpeg,
        height: 16,
        width: 16,
        split,
        num_classes: 3,
        plan: "handmade".into(),
    };
    type Rows = Vec<(u32, Vec<u8>, &'static str)>;
    let rows: [(Split, Rows); 2] = [
        (
            Split::Train,
            vec![
                (0, jpeg_rgb(16, 16, 1), "a/good.jpg"),
                (0, b"this is not an image".to_vec(), "a/broken.jpg"),
                (1, jpeg_rgb(20, 20, 2), "b/too-big.jpg"),
            ],
        ),
        (
            Split::Val,
            vec![
                (2, jpeg_rgb(16, 16, 3), "c/only-val.jpg"),
                (0, jpeg_rgb(16, 16, 4), "a/v.jpg"),
                (0, damaged_jpeg(), "a/damaged.jpg"),
            ],
        ),
    ];
    let mut records = Vec::new();
    let mut totals = BTreeMap::new();
    for (split, rows) in rows {
        let mut w = ShardWriter::create(&out, 0, &meta(split), 2).unwrap();
        for (label, image, key) in &rows {
            w.push(*label, image.as_slice(), key).unwrap();
        }
        let ws = w.finish().unwrap();
        totals.insert(
            split,
            SplitTotals {
                shards: 1,
                rows: ws.rows,
                bytes: ws.bytes,
                rejected: 0,
                passthrough: 0,
            },
        );
        records.push(ShardRecord {
            file: ws.file,
            split,
            rows: ws.rows,
            row_groups: ws.row_groups,
            bytes: ws.bytes,
            xxh3_128: ws.xxh3_128,
        });
    }
    write_classes_tsv(
        &out.join("classes.tsv"),
        &["a".into(), "b".into(), "c".into()],
    )
    .unwrap();
    Manifest {
        format_version: 1,
        encoding: Encoding::Jpeg,
        height: 16,
        width: 16,
        num_classes: 3,
        options: serde_json::json!({}),
        source: SourceInfo {
            name: "handmade".into(),
            size: 0,
            modified: 0,
        },
        plan: "handmade".into(),
        shards: records,
        totals,
        rejected: Vec::new(),
    }
    .save(&out.join("manifest.json"))
    .unwrap();
    out
}

#[test]
fn decode_failures_other_sizes_and_val_only_classes_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let out = handmade(dir.path());
    let o = run(STATS, &[s(&out), "--deep", "--json", "--quiet"]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "a decode failure alone is a finding, not a failed check: {}",
        stderr(&o)
    );
    let j = json(&o);
    let t = &j["deep"]["splits"]["train"];
    assert_eq!(
        (
            t["images"].as_u64(),
            t["decoded"].as_u64(),
            t["failures"].as_u64()
        ),
        (Some(3), Some(2), Some(1))
    );
    assert_eq!(t["other_size"], 1);
    assert_eq!(t["pixels"], 16 * 16 + 20 * 20);
    let f = &j["deep"]["failures"][0];
    assert_eq!(f["key"], "a/broken.jpg");
    assert_eq!(f["file"], "train-00000.parquet");
    assert_eq!(f["row"], 1);
    assert!(f["error"].as_str().unwrap().contains("not an image"), "{f}");
    assert_eq!(
        j["summary"]["classes"]["only_in_val"]["names"],
        serde_json::json!(["c"])
    );
    assert_eq!(
        j["summary"]["classes"]["only_in_train"]["names"],
        serde_json::json!(["b"])
    );
    assert_eq!(j["summary"]["splits"]["val"]["classes_missing"], 1);
    // Damaged coded data decodes: without --verify nothing walks it.
    let v = &j["deep"]["splits"]["val"];
    assert_eq!(
        (v["images"].as_u64(), v["decoded"].as_u64()),
        (Some(3), Some(3))
    );
    assert!(v["damaged"].is_null(), "{v}");
    assert_eq!(j["deep"]["coded_data_checked"], false);
    assert_eq!(j["deep"]["damaged"], serde_json::json!([]));
    // Under --verify a decode failure is a failed check (exit 1), and the
    // coded data is walked.
    let o = run(STATS, &[s(&out), "--deep", "--verify", "--quiet"]);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    let text = stdout(&o);
    assert!(text.contains("a/broken.jpg"), "{text}");
    assert!(
        text.contains("damaged coded data")
            && text.contains("val-00000.parquet row 2 (a/damaged.jpg)"),
        "{text}"
    );
    // The closing line counts what failed, damaged coded data included.
    assert!(
        stderr(&o).contains("image(s) that do not decode, 1 with damaged coded data"),
        "{}",
        stderr(&o)
    );
    let o = run(STATS, &[s(&out), "--deep", "--verify", "--json", "--quiet"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let j = json(&o);
    assert_eq!(j["deep"]["coded_data_checked"], true);
    assert_eq!(j["deep"]["splits"]["val"]["damaged"], 1);
    assert_eq!(j["deep"]["splits"]["train"]["damaged"], 0);
    // Still decoded, and in the mean: the loader reads it so.
    assert_eq!(j["deep"]["splits"]["val"]["decoded"], 3);
    let d = &j["deep"]["damaged"][0];
    assert_eq!(
        (d["key"].as_str(), d["row"].as_u64()),
        (Some("a/damaged.jpg"), Some(2))
    );
    assert!(
        d["error"]
            .as_str()
            .unwrap()
            .ends_with("12 bytes after the last block of its coded data"),
        "{d}"
    );
    assert_eq!(j["deep"]["damaged"].as_array().unwrap().len(), 1);
}

// ---------------------------------------------------------------- --verify and corruption

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

/// Offset of the first image value of row group 0 (the page body of the
/// image column), found through the parquet crate's footer.
fn image_chunk_offset(path: &Path) -> usize {
    let r = SerializedFileReader::new(std::fs::File::open(path).unwrap()).unwrap();
    r.metadata().row_group(0).column(1).data_page_offset() as usize
}

#[test]
fn verify_passes_a_clean_pack_and_lists_every_problem() {
    let dir = tempfile::tempdir().unwrap();
    let clean = jpeg_pack(dir.path());
    let o = run(STATS, &[s(&clean), "--verify", "--json", "--quiet"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v = &json(&o)["verify"];
    assert_eq!(v["ok"], true);
    assert_eq!(v["shards_checked"], 4);
    let total: u64 = manifest(&clean)["shards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["bytes"].as_u64().unwrap())
        .sum();
    assert_eq!(v["bytes_hashed"], total);
    assert!(v["problems"].as_array().unwrap().is_empty());

    let out = dir.path().join("damaged");
    copy_dir(&clean, &out);
    std::fs::remove_file(out.join("train-00001.parquet")).unwrap();
    // One flipped byte inside an image: only the checksum can tell.
    let p = out.join("train-00002.parquet");
    let mut b = std::fs::read(&p).unwrap();
    let at = image_chunk_offset(&p) + 200;
    b[at] ^= 0x20;
    std::fs::write(&p, &b).unwrap();
    std::fs::copy(out.join("val-00000.parquet"), out.join("val-00007.parquet")).unwrap();

    let o = run(STATS, &[s(&out), "--verify", "--json", "--quiet"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let j = json(&o);
    let problems: Vec<(String, String)> = j["verify"]["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["file"].as_str().unwrap().to_string(),
                p["problem"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let has = |file: &str, what: &str| problems.iter().any(|(f, p)| f == file && p.contains(what));
    assert!(has("train-00001.parquet", "missing"), "{problems:?}");
    assert!(has("train-00002.parquet", "xxh3_128"), "{problems:?}");
    assert!(has("val-00007.parquet", "not listed"), "{problems:?}");
    assert_eq!(problems.len(), 3, "{problems:?}");
    assert!(
        j["summary"].is_null(),
        "a missing shard leaves nothing to summarise"
    );
    // Text mode says the same on stdout, and exits 1.
    let o = run(STATS, &[s(&out), "--verify", "--quiet"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stdout(&o).contains("verify: FAILED, 3 problem(s)"),
        "{}",
        stdout(&o)
    );
    // Without --verify the missing shard is an error (exit 2) naming it.
    let o = run(STATS, &[s(&out), "--quiet"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("train-00001.parquet") && stderr(&o).contains("missing"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn truncated_and_flipped_shards_are_reported_not_panicked_on() {
    let dir = tempfile::tempdir().unwrap();
    let clean = jpeg_pack(dir.path());

    // Truncated: exit 2 naming the file by default, exit 1 under --verify.
    let out = dir.path().join("truncated");
    copy_dir(&clean, &out);
    let p = out.join("train-00000.parquet");
    let b = std::fs::read(&p).unwrap();
    std::fs::write(&p, &b[..b.len() - 100]).unwrap();
    let o = run(STATS, &[s(&out), "--quiet"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("train-00000.parquet: truncated"),
        "{}",
        stderr(&o)
    );
    let o = run(STATS, &[s(&out), "--verify", "--json", "--quiet"]);
    assert_eq!(o.status.code(), Some(1));
    let v = &json(&o)["verify"];
    assert!(
        v["problems"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["file"] == "train-00000.parquet"
                && p["problem"].as_str().unwrap().contains("truncated")),
        "{v}"
    );

    // A flipped byte in an image page header: the default figures (labels
    // only) still work; --deep reads that page and stops with exit 2
    // naming file, row group and column; --verify reports it (exit 1).
    let out = dir.path().join("header");
    copy_dir(&clean, &out);
    let p = out.join("train-00001.parquet");
    let mut b = std::fs::read(&p).unwrap();
    let at = image_chunk_offset(&p);
    b[at + 1] ^= 0xff; // inside the page type / size fields
    std::fs::write(&p, &b).unwrap();
    let m = Manifest::load(&out.join("manifest.json")).unwrap();
    let o = run(STATS, &[s(&out), "--quiet", "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(
        json(&o)["summary"]["splits"]["train"]["rows"],
        m.totals[&Split::Train].rows
    );
    let o = run(STATS, &[s(&out), "--deep", "--quiet"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(
        e.contains("train-00001.parquet") && e.contains("row group 0") && e.contains("'image'"),
        "{e}"
    );
    let o = run(STATS, &[s(&out), "--verify", "--json", "--quiet"]);
    assert_eq!(o.status.code(), Some(1));
    let problems = json(&o)["verify"]["problems"].clone();
    let files: BTreeSet<&str> = problems
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["file"].as_str().unwrap())
        .collect();
    assert_eq!(files, BTreeSet::from(["train-00001.parquet"]), "{problems}");
    assert!(
        problems
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["problem"].as_str().unwrap().contains("row group 0")),
        "{problems}"
    );

    // A flipped byte in the footer: exit 2 naming the file, no panic.
    let out = dir.path().join("footer");
    copy_dir(&clean, &out);
    let p = out.join("val-00000.parquet");
    let mut b = std::fs::read(&p).unwrap();
    let n = b.len();
    let footer_len = u32::from_le_bytes(b[n - 8..n - 4].try_into().unwrap()) as usize;
    for k in [0usize, 1, footer_len / 2] {
        let mut c = b.clone();
        c[n - 8 - footer_len + k] ^= 0xff;
        std::fs::write(&p, &c).unwrap();
        let o = run(STATS, &[s(&out), "--quiet"]);
        assert!(
            matches!(o.status.code(), Some(0) | Some(2)),
            "offset {k}: {:?} {}",
            o.status,
            stderr(&o)
        );
        if o.status.code() == Some(2) {
            assert!(stderr(&o).contains("val-00000.parquet"), "{}", stderr(&o));
        }
        let o = run(STATS, &[s(&out), "--verify", "--quiet"]);
        assert_eq!(o.status.code(), Some(1), "offset {k}: {}", stderr(&o));
        assert!(stdout(&o).contains("val-00000.parquet"));
    }
    b[n - 2] = b'X'; // end magic
    std::fs::write(&p, &b).unwrap();
    let o = run(STATS, &[s(&out), "--quiet"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("val-00000.parquet: not a complete Parquet file"),
        "{}",
        stderr(&o)
    );

    // Not a shard folder at all.
    let o = run(STATS, &[s(&dir.path().join("nowhere")), "--quiet"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("manifest.json"), "{}", stderr(&o));
}

// ---------------------------------------------------------------- JSON schema and plot

/// Every key path of a JSON document with the type at that path. Arrays
/// contribute `[]`; maps whose keys are data (`by_reason`, `chroma`)
/// contribute `{}`.
fn shape(v: &Value, path: &str, out: &mut BTreeSet<String>) {
    match v {
        Value::Object(m) => {
            if path.ends_with("by_reason") || path.ends_with("jpeg.chroma") {
                out.insert(format!("{path}: map"));
                for x in m.values() {
                    shape(x, &format!("{path}.{{}}"), out);
                }
                return;
            }
            out.insert(format!("{path}: object"));
            for (k, x) in m {
                shape(
                    x,
                    &if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    },
                    out,
                );
            }
        }
        Value::Array(a) => {
            out.insert(format!("{path}: array"));
            for x in a {
                shape(x, &format!("{path}[]"), out);
            }
        }
        Value::String(_) => {
            out.insert(format!("{path}: string"));
        }
        Value::Number(_) => {
            out.insert(format!("{path}: number"));
        }
        Value::Bool(_) => {
            out.insert(format!("{path}: bool"));
        }
        Value::Null => {
            out.insert(format!("{path}: null"));
        }
    }
}

/// The JSON layout of `ebv-stats --json --deep --verify --plot` (version
/// 3). A change here is a change of the documented output: bump
/// `ebv::stats::JSON_VERSION` and say so in the README.
const EXPECTED_SHAPE: &str = "
: object
deep: object
deep.coded_data_checked: bool
deep.damaged: array
deep.damaged_truncated: bool
deep.duplicates: object
deep.duplicates.across_splits: object
deep.duplicates.across_splits.groups: number
deep.duplicates.across_splits.train_rows: number
deep.duplicates.across_splits.val_rows: number
deep.duplicates.examples: array
deep.duplicates.examples[]: object
deep.duplicates.examples[].content_hash: string
deep.duplicates.examples[].count: number
deep.duplicates.examples[].rows: array
deep.duplicates.examples[].rows[]: object
deep.duplicates.examples[].rows[].file: string
deep.duplicates.examples[].rows[].key: string
deep.duplicates.examples[].rows[].row: number
deep.duplicates.examples[].rows[].split: string
deep.duplicates.examples_truncated: bool
deep.failures: array
deep.failures_truncated: bool
deep.images: number
deep.images_per_s: number
deep.splits: object
deep.splits.train: object
deep.splits.train.damaged: number
deep.splits.train.decoded: number
deep.splits.train.duplicate_groups: number
deep.splits.train.duplicate_rows: number
deep.splits.train.failures: number
deep.splits.train.images: number
deep.splits.train.jpeg: object
deep.splits.train.jpeg.chroma: map
deep.splits.train.jpeg.chroma.{}: number
deep.splits.train.jpeg.progressive: number
deep.splits.train.jpeg.sequential: number
deep.splits.train.mean: array
deep.splits.train.mean[]: number
deep.splits.train.other_size: number
deep.splits.train.pixels: number
deep.splits.train.std: array
deep.splits.train.std[]: number
deep.splits.val: object
deep.splits.val.damaged: number
deep.splits.val.decoded: number
deep.splits.val.duplicate_groups: number
deep.splits.val.duplicate_rows: number
deep.splits.val.failures: number
deep.splits.val.images: number
deep.splits.val.jpeg: object
deep.splits.val.jpeg.chroma: map
deep.splits.val.jpeg.chroma.{}: number
deep.splits.val.jpeg.progressive: number
deep.splits.val.jpeg.sequential: number
deep.splits.val.mean: array
deep.splits.val.mean[]: number
deep.splits.val.other_size: number
deep.splits.val.pixels: number
deep.splits.val.std: array
deep.splits.val.std[]: number
deep.threads: number
deep.wall_s: number
dir: string
ebv_stats: number
plot: string
summary: object
summary.classes: object
summary.classes.only_in_train: object
summary.classes.only_in_train.count: number
summary.classes.only_in_train.names: array
summary.classes.only_in_train.names[]: string
summary.classes.only_in_train.truncated: bool
summary.classes.only_in_val: object
summary.classes.only_in_val.count: number
summary.classes.only_in_val.names: array
summary.classes.only_in_val.truncated: bool
summary.encoding: string
summary.format_version: number
summary.height: number
summary.layout_notes: array
summary.min_images: number
summary.num_classes: number
summary.rejected: object
summary.rejected.by_reason: map
summary.rejected.by_reason.{}: number
summary.rejected.no_split: number
summary.rejected.total: number
summary.rejected.train: number
summary.rejected.val: number
summary.shards: array
summary.shards[]: object
summary.shards[].bytes: number
summary.shards[].distinct_labels: number
summary.shards[].file: string
summary.shards[].image_bytes: number
summary.shards[].label_max: number
summary.shards[].label_min: number
summary.shards[].row_groups: number
summary.shards[].rows: number
summary.shards[].split: string
summary.source: object
summary.source.modified: number
summary.source.name: string
summary.source.size: number
summary.splits: object
summary.splits.train: object
summary.splits.train.below_min_images: object
summary.splits.train.below_min_images.count: number
summary.splits.train.below_min_images.names: array
summary.splits.train.below_min_images.names[]: string
summary.splits.train.below_min_images.truncated: bool
summary.splits.train.bytes: number
summary.splits.train.class_size_histogram: array
summary.splits.train.class_size_histogram[]: object
summary.splits.train.class_size_histogram[].classes: number
summary.splits.train.class_size_histogram[].from: number
summary.splits.train.class_size_histogram[].to: number
summary.splits.train.classes: number
summary.splits.train.classes_missing: number
summary.splits.train.image_bytes: number
summary.splits.train.image_bytes_per_row: number
summary.splits.train.images_per_class: object
summary.splits.train.images_per_class.max: number
summary.splits.train.images_per_class.mean: number
summary.splits.train.images_per_class.median: number
summary.splits.train.images_per_class.min: number
summary.splits.train.rejected: number
summary.splits.train.row_groups: number
summary.splits.train.rows: number
summary.splits.train.rows_per_row_group: object
summary.splits.train.rows_per_row_group.max: number
summary.splits.train.rows_per_row_group.min: number
summary.splits.train.shards: number
summary.splits.val: object
summary.splits.val.below_min_images: object
summary.splits.val.below_min_images.count: number
summary.splits.val.below_min_images.names: array
summary.splits.val.below_min_images.names[]: string
summary.splits.val.below_min_images.truncated: bool
summary.splits.val.bytes: number
summary.splits.val.class_size_histogram: array
summary.splits.val.class_size_histogram[]: object
summary.splits.val.class_size_histogram[].classes: number
summary.splits.val.class_size_histogram[].from: number
summary.splits.val.class_size_histogram[].to: number
summary.splits.val.classes: number
summary.splits.val.classes_missing: number
summary.splits.val.image_bytes: number
summary.splits.val.image_bytes_per_row: number
summary.splits.val.images_per_class: object
summary.splits.val.images_per_class.max: number
summary.splits.val.images_per_class.mean: number
summary.splits.val.images_per_class.median: number
summary.splits.val.images_per_class.min: number
summary.splits.val.rejected: number
summary.splits.val.row_groups: number
summary.splits.val.rows: number
summary.splits.val.rows_per_row_group: object
summary.splits.val.rows_per_row_group.max: number
summary.splits.val.rows_per_row_group.min: number
summary.splits.val.shards: number
summary.width: number
verify: object
verify.bytes_hashed: number
verify.ok: bool
verify.problems: array
verify.shards_checked: number
wall_s: number
";

#[test]
fn json_schema_is_stable() {
    let dir = tempfile::tempdir().unwrap();
    let out = jpeg_pack(dir.path());
    let png = dir.path().join("plot.png");
    let o = run(
        STATS,
        &[
            s(&out),
            "--json",
            "--deep",
            "--verify",
            "--plot",
            s(&png),
            "--quiet",
            "--min-images",
            "3",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let j = json(&o);
    assert_eq!(j["ebv_stats"], ebv::stats::JSON_VERSION);
    let mut got = BTreeSet::new();
    shape(&j, "", &mut got);
    let want: BTreeSet<String> = EXPECTED_SHAPE
        .lines()
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();
    let missing: Vec<_> = want.difference(&got).collect();
    let extra: Vec<_> = got.difference(&want).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "JSON layout changed\nmissing: {missing:#?}\nnew: {extra:#?}"
    );
    // Without the optional parts the keys stay, as null.
    let o = run(STATS, &[s(&out), "--json", "--quiet"]);
    let j = json(&o);
    for k in ["deep", "verify", "plot"] {
        assert!(j.get(k).is_some_and(Value::is_null), "{k}");
    }
}

#[test]
fn plot_draws_histograms_and_captioned_samples() {
    let dir = tempfile::tempdir().unwrap();
    let out = jpeg_pack(dir.path());
    let png = dir.path().join("figure.png");
    let o = run(STATS, &[s(&out), "--plot", s(&png), "--quiet"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("plot written to"));
    let img = image::open(&png).unwrap().to_rgb8();
    assert_eq!(img.width(), 16 + 8 * (128 + 16));
    let count = |c: [u8; 3]| img.pixels().filter(|p| p.0 == c).count();
    assert!(count([52, 101, 164]) > 500, "train histogram bars");
    assert!(count([230, 126, 34]) > 500, "val histogram bars");
    assert!(count([20, 20, 20]) > 1000, "text");
    // The sample grid shows 18 training images (all of train here): the
    // area under the histograms holds many colours, not just the palette.
    let below: BTreeSet<[u8; 3]> = img
        .enumerate_pixels()
        .filter(|(_, y, _)| *y > 320)
        .map(|(_, _, p)| p.0)
        .collect();
    assert!(
        below.len() > 500,
        "{} colours in the sample grid",
        below.len()
    );
    // An unwritable destination is an error naming it.
    let bad = dir.path().join("no-such-dir").join("f.png");
    let o = run(STATS, &[s(&out), "--plot", s(&bad), "--quiet"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("f.png"), "{}", stderr(&o));
    // A plot over the folder's own manifest or a shard (by name, or through
    // a link) is refused before anything is written: the folder stays whole.
    let manifest = std::fs::read(out.join("manifest.json")).unwrap();
    let shard = std::fs::read(out.join("val-00000.parquet")).unwrap();
    let link = dir.path().join("link.png");
    std::os::unix::fs::symlink(out.join("val-00000.parquet"), &link).unwrap();
    for target in [
        out.join("manifest.json"),
        out.join("val-00000.parquet"),
        link,
    ] {
        let o = run(STATS, &[s(&out), "--plot", s(&target), "--quiet"]);
        assert_eq!(o.status.code(), Some(2), "{}", target.display());
        assert!(
            stderr(&o).contains("which the plot would replace"),
            "{}",
            stderr(&o)
        );
    }
    assert_eq!(std::fs::read(out.join("manifest.json")).unwrap(), manifest);
    assert_eq!(std::fs::read(out.join("val-00000.parquet")).unwrap(), shard);
}

/// A split with no images has no mean or std (JSON null, text "-"), not 0;
/// the normalisation line comes from the split that has pixels.
#[test]
fn deep_figures_of_an_empty_split_are_absent_not_zero() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    let entries: Vec<(String, Vec<u8>)> = (0..6u32)
        .map(|i| (format!("train/c{}/{i}.jpg", i % 2), jpeg_rgb(16, 16, i)))
        .collect();
    write_dir(&src, &entries);
    let out = dir.path().join("out");
    let o = run(
        PACK,
        &[s(&src), "--out", s(&out), "--size", "16", "--quiet"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let j = json(&run(STATS, &[s(&out), "--deep", "--json", "--quiet"]));
    let splits = &j["deep"]["splits"];
    assert!(splits["val"]["mean"].is_null(), "{splits}");
    assert!(splits["val"]["std"].is_null(), "{splits}");
    assert_eq!(splits["train"]["mean"].as_array().unwrap().len(), 3);
    let text = stdout(&run(STATS, &[s(&out), "--deep", "--quiet"]));
    assert!(text.contains("normalisation (train): mean=["), "{text}");
    assert!(!text.contains("0.0000 0.0000 0.0000"), "{text}");
}

/// A footer whose `ebv.image_lengths` were edited so that they still fill
/// the page (one image a byte longer, the next a byte shorter) slices both
/// images at the wrong place. `--deep` names the footer and stops (exit 2)
/// instead of blaming the images and passing.
#[test]
fn deep_names_a_footer_whose_lengths_disagree_with_the_page() {
    let dir = tempfile::tempdir().unwrap();
    let clean = jpeg_pack(dir.path());
    let out = dir.path().join("lengths");
    copy_dir(&clean, &out);
    let p = out.join("train-00000.parquet");
    let mut b = std::fs::read(&p).unwrap();
    let key = b"ebv.image_lengths";
    let at = b.windows(key.len()).rposition(|w| w == key).unwrap() + key.len();
    // The value follows its thrift length prefix: the first digit from here.
    let start = at + b[at..].iter().position(u8::is_ascii_digit).unwrap();
    let end = start
        + b[start..]
            .iter()
            .position(|c| !c.is_ascii_digit() && *c != b',')
            .unwrap();
    let value = std::str::from_utf8(&b[start..end]).unwrap().to_string();
    let mut lens: Vec<u32> = value.split(',').map(|v| v.parse().unwrap()).collect();
    lens[0] += 1;
    lens[1] -= 1;
    let edited = lens
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(",");
    assert_eq!(edited.len(), value.len(), "{value} -> {edited}");
    b[start..end].copy_from_slice(edited.as_bytes());
    std::fs::write(&p, &b).unwrap();

    let o = run(STATS, &[s(&out), "--deep", "--quiet", "--json"]);
    assert_eq!(o.status.code(), Some(2), "{}", stdout(&o));
    let e = stderr(&o);
    assert!(
        e.contains("train-00000.parquet") && e.contains("disagrees with 'ebv.image_lengths'"),
        "{e}"
    );
    // The clean pack still passes.
    let o = run(STATS, &[s(&clean), "--deep", "--quiet", "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
}
