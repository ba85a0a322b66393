//! End-to-end tests of `ebv-pack`: each builds its own small source (zip or
//! folder), runs the built binary in a temp dir and reads the shards back
//! through the parquet crate.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::*;
use parquet::file::reader::{FileReader, SerializedFileReader};

const BIN: &str = env!("CARGO_BIN_EXE_ebv-pack");

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The mixed fixture: 3 classes under a nested top folder, every image kind
/// the packer must accept and every kind of bad entry it must reject.
/// Entries of a source: (name, bytes).
type Entries = Vec<(String, Vec<u8>)>;

fn mixed_entries() -> (Entries, BTreeMap<String, &'static str>) {
    let mut e = Vec::new();
    let mut bad = BTreeMap::new();
    let classes = ["cat", "dog", "fox"];
    for (c, class) in classes.iter().enumerate() {
        let c = c as u32;
        for i in 0..3 {
            e.push((
                format!("data/train/{class}/p{i}.jpg"),
                jpeg_rgb(32, 32, c * 10 + i),
            ));
        }
        e.push((
            format!("data/train/{class}/big.jpg"),
            jpeg_rgb(48, 40, c + 100),
        ));
        e.push((
            format!("data/train/{class}/rgb.png"),
            png_rgb(40, 30, c + 200),
        ));
        e.push((
            format!("data/train/{class}/gray.png"),
            png_gray(20, 20, c + 300),
        ));
        e.push((
            format!("data/train/{class}/alpha.png"),
            png_rgba(24, 24, c + 400),
        ));
        e.push((
            format!("data/train/{class}/gray.jpg"),
            jpeg_gray(32, 32, c + 500),
        ));
        e.push((
            format!("data/train/{class}/cmyk.jpg"),
            jpeg_cmyk(32, 32, c + 600),
        ));
        for i in 0..2 {
            e.push((
                format!("data/val/{class}/v{i}.jpg"),
                jpeg_rgb(32, 32, c * 10 + 50 + i),
            ));
        }
    }
    let mut truncated = jpeg_rgb(32, 32, 999);
    truncated.truncate(truncated.len() / 2);
    let mut garbage = vec![0xFF, 0xD8, 0xFF, 0xE0, 0x00, 0x10];
    garbage.extend((0..500u32).map(|i| (i * 7919 % 251) as u8));
    garbage.extend([0xFF, 0xD9]);
    let cases: Vec<(&str, Vec<u8>, &'static str)> = vec![
        ("data/train/cat/truncated.jpg", truncated, "corrupt jpeg"),
        ("data/train/cat/garbage.jpg", garbage, "corrupt jpeg"),
        ("data/train/dog/empty.jpg", Vec::new(), "empty file"),
        (
            "data/train/fox/notes.txt",
            b"hello, not an image".to_vec(),
            "not an image",
        ),
        (
            "data/train/fox/layers.psd",
            b"8BPS\0\x01rest-of-psd".to_vec(),
            "unsupported image format",
        ),
        (
            "data/train/fox/scan.tif",
            b"II*\0\x08\0\0\0rest-of-tiff".to_vec(),
            "corrupt tiff",
        ),
        (
            "data/train/dog/huge.png",
            png_rgb(100, 100, 7),
            "image exceeds the pixel limit (100x100",
        ),
        (
            "__MACOSX/data/train/cat/._p0.jpg",
            b"\0\x05\x16\x07".to_vec(),
            "macOS metadata",
        ),
        ("data/train/.DS_Store", b"Bud1".to_vec(), "macOS metadata"),
        ("../evil.jpg", jpeg_rgb(32, 32, 1), "unsafe path"),
        (
            "data/README.txt",
            b"readme".to_vec(),
            "not part of the layout",
        ),
    ];
    for (name, bytes, reason) in cases {
        e.push((name.to_string(), bytes));
        bad.insert(name.to_string(), reason);
    }
    (e, bad)
}

fn class_of(key: &str) -> &str {
    key.split('/').rev().nth(1).unwrap()
}

#[test]
fn class_folder_zip_with_every_kind_of_entry() {
    let dir = tempfile::tempdir().unwrap();
    let (entries, bad) = mixed_entries();
    let zip = dir.path().join("set.zip");
    write_zip(&zip, &entries);
    let out = dir.path().join("shards");
    let o = run(
        BIN,
        &[
            s(&zip),
            "--out",
            s(&out),
            "--size",
            "32",
            "--shard-rows",
            "7",
            "--row-group-rows",
            "3",
            "--max-pixels",
            "5000",
            "--threads",
            "2",
            "--json",
            "--quiet",
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();

    // Classes from the sorted training folder names.
    let classes = std::fs::read_to_string(out.join("classes.tsv")).unwrap();
    assert_eq!(classes, "0\tcat\n1\tdog\n2\tfox\n");
    let label_of = |class: &str| {
        ["cat", "dog", "fox"]
            .iter()
            .position(|c| *c == class)
            .unwrap() as u32
    };

    let source: BTreeMap<&str, &Vec<u8>> = entries.iter().map(|(n, b)| (n.as_str(), b)).collect();
    let train = read_split(&out, "train");
    let val = read_split(&out, "val");
    assert_eq!(train.len(), 3 * 9, "9 good training images per class");
    assert_eq!(val.len(), 3 * 2);
    assert_eq!(summary["splits"]["train"]["rows"], 27);
    assert_eq!(summary["splits"]["val"]["rows"], 6);
    for row in train.iter().chain(&val) {
        assert_eq!(row.label, label_of(class_of(&row.key)), "{}", row.key);
        let src = source[row.key.as_str()];
        let name = row.key.rsplit('/').next().unwrap();
        let is_passthrough =
            (name.starts_with('p') || name.starts_with('v')) && name.ends_with(".jpg");
        if is_passthrough {
            assert_eq!(&row.image, src, "{} must be stored byte for byte", row.key);
        } else {
            assert_ne!(&row.image, src, "{} must be converted", row.key);
            let img = ebv::image::decode_rgb8(&row.image, Default::default()).unwrap();
            assert_eq!((img.width, img.height), (32, 32), "{}", row.key);
        }
    }
    assert_eq!(summary["splits"]["train"]["passthrough"], 9);
    assert_eq!(summary["splits"]["val"]["passthrough"], 6);

    // Shards hold exactly --shard-rows rows except the last of a split.
    let m = manifest(&out);
    let shards = m["shards"].as_array().unwrap();
    let rows: Vec<(String, u64)> = shards
        .iter()
        .map(|r| {
            (
                r["file"].as_str().unwrap().to_string(),
                r["rows"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        rows,
        vec![
            ("train-00000.parquet".into(), 7),
            ("train-00001.parquet".into(), 7),
            ("train-00002.parquet".into(), 7),
            ("train-00003.parquet".into(), 6),
            ("val-00000.parquet".into(), 6),
        ]
    );
    // The seeded permutation mixes classes: no shard is a single class.
    for chunk in train.chunks(7) {
        let labels: std::collections::BTreeSet<u32> = chunk.iter().map(|r| r.label).collect();
        assert!(labels.len() > 1, "class-sorted shard: {labels:?}");
    }
    // Every bad entry is listed with its reason; nothing else is.
    let rejected: BTreeMap<String, String> = m["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["key"].as_str().unwrap().to_string(),
                r["reason"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        rejected.keys().collect::<Vec<_>>(),
        bad.keys().collect::<Vec<_>>()
    );
    for (key, want) in &bad {
        assert!(
            rejected[key].starts_with(want),
            "{key}: '{}' should start with '{want}'",
            rejected[key]
        );
    }
    assert_eq!(summary["rejected"], bad.len());
    assert_eq!(m["totals"]["train"]["rows"], 27);
    assert_eq!(m["source"]["name"], "set.zip");
    for r in shards {
        let path = out.join(r["file"].as_str().unwrap());
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes.len() as u64, r["bytes"].as_u64().unwrap());
        assert_eq!(
            ebv::shard::Checksum::of(&bytes),
            r["xxh3_128"].as_str().unwrap()
        );
    }

    // --strict turns rejections into exit code 1; a rerun is a no-op.
    let again = run(
        BIN,
        &[
            s(&zip),
            "--out",
            s(&out),
            "--size",
            "32",
            "--shard-rows",
            "7",
            "--row-group-rows",
            "3",
            "--max-pixels",
            "5000",
            "--quiet",
            "--json",
        ],
    );
    assert!(again.status.success());
    let again: serde_json::Value = serde_json::from_slice(&again.stdout).unwrap();
    assert_eq!(again["already_complete"], true);
    let strict = run(
        BIN,
        &[
            s(&zip),
            "--out",
            s(&out),
            "--size",
            "32",
            "--shard-rows",
            "7",
            "--row-group-rows",
            "3",
            "--max-pixels",
            "5000",
            "--quiet",
            "--strict",
        ],
    );
    assert_eq!(strict.status.code(), Some(1));
}

#[test]
fn footer_schema_and_encodings() {
    let dir = tempfile::tempdir().unwrap();
    let mut entries = Vec::new();
    for i in 0..10 {
        entries.push((format!("train/c{}/{i}.png", i % 2), png_rgb(16, 12, i)));
        entries.push((format!("val/c{}/{i}.png", i % 2), png_rgb(16, 12, i + 50)));
    }
    write_dir(&dir.path().join("src"), &entries);
    let out = dir.path().join("out");
    for encoding in ["raw", "jpeg"] {
        let o = run(
            BIN,
            &[
                s(&dir.path().join("src")),
                "--out",
                s(&out),
                "--encoding",
                encoding,
                "--size",
                "8x6",
                "--row-group-rows",
                "4",
                "--force",
                "--quiet",
            ],
        );
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let reader = SerializedFileReader::new(
            std::fs::File::open(out.join("train-00000.parquet")).unwrap(),
        )
        .unwrap();
        let meta = reader.metadata();
        let kv: BTreeMap<String, String> = meta
            .file_metadata()
            .key_value_metadata()
            .unwrap()
            .iter()
            .map(|k| (k.key.clone(), k.value.clone().unwrap_or_default()))
            .collect();
        assert_eq!(kv["ebv.format_version"], "1");
        assert_eq!(kv["ebv.encoding"], encoding);
        assert_eq!(
            (kv["ebv.width"].as_str(), kv["ebv.height"].as_str()),
            ("8", "6")
        );
        assert_eq!(kv["ebv.split"], "train");
        assert_eq!(kv["ebv.num_classes"], "2");
        assert_eq!(meta.num_row_groups(), 3, "10 rows in groups of 4");
        let schema = meta.file_metadata().schema_descr();
        let names: Vec<&str> = schema.columns().iter().map(|c| c.name()).collect();
        assert_eq!(names, ["label", "image", "key"]);
        for rg in meta.row_groups() {
            let image = rg.column(1);
            assert_eq!(
                image.compression(),
                parquet::basic::Compression::UNCOMPRESSED
            );
            let encodings: Vec<_> = image.encodings().collect();
            assert!(
                encodings.contains(&parquet::basic::Encoding::PLAIN),
                "{encodings:?}"
            );
            assert!(!encodings.contains(&parquet::basic::Encoding::RLE_DICTIONARY));
            assert!(!encodings.contains(&parquet::basic::Encoding::PLAIN_DICTIONARY));
            assert!(image.dictionary_page_offset().is_none());
            assert!(
                image.statistics().is_none(),
                "no statistics on the image column"
            );
        }
        let rows = read_shard(&out.join("train-00000.parquet"));
        assert_eq!(rows.len(), 10);
        if encoding == "raw" {
            assert!(rows.iter().all(|r| r.image.len() == 8 * 6 * 3));
        }
        // JPEG shards list every image's length, in row order, as the
        // parquet crate's own reader sees the images; raw shards do not.
        match kv.get("ebv.image_lengths") {
            Some(v) => {
                assert_eq!(encoding, "jpeg");
                let listed: Vec<usize> = v.split(',').map(|x| x.parse().unwrap()).collect();
                let actual: Vec<usize> = rows.iter().map(|r| r.image.len()).collect();
                assert_eq!(listed, actual);
            }
            None => assert_eq!(encoding, "raw"),
        }
    }
}

#[test]
fn raw_pixels_match_an_independent_resize() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    let mut entries = Vec::new();
    let mut expected = BTreeMap::new();
    for i in 0..6u32 {
        let (w, h) = [(40, 30), (17, 23), (64, 48)][i as usize % 3];
        let key = format!("train/k{}/img{i}.png", i % 2);
        entries.push((key.clone(), png_rgb(w, h, i)));
        expected.insert(
            key,
            reference_resize(&pattern(w, h, i), w as usize, h as usize, 32, 24),
        );
    }
    // An image already of the target size is stored exactly.
    entries.push(("train/k0/exact.png".into(), png_rgb(32, 24, 77)));
    expected.insert("train/k0/exact.png".into(), pattern(32, 24, 77));
    write_dir(&src, &entries);
    let out = dir.path().join("out");
    let o = run(
        BIN,
        &[
            s(&src),
            "--out",
            s(&out),
            "--encoding",
            "raw",
            "--size",
            "32x24",
            "--quiet",
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let rows = read_split(&out, "train");
    assert_eq!(rows.len(), 7);
    for row in rows {
        let want = &expected[&row.key];
        assert_eq!(row.image.len(), want.len());
        let max = row
            .image
            .iter()
            .zip(want)
            .map(|(a, b)| (*a as i32 - *b as i32).abs())
            .max()
            .unwrap();
        let mean = row
            .image
            .iter()
            .zip(want)
            .map(|(a, b)| (*a as f64 - *b as f64).abs())
            .sum::<f64>()
            / want.len() as f64;
        assert!(
            max <= 2 && mean < 0.6,
            "{}: max diff {max}, mean {mean}",
            row.key
        );
        if row.key.ends_with("exact.png") {
            assert_eq!(&row.image, want);
        }
    }
}

#[test]
fn output_is_identical_whatever_the_thread_count() {
    let dir = tempfile::tempdir().unwrap();
    let (entries, _) = mixed_entries();
    let zip = dir.path().join("set.zip");
    write_zip(&zip, &entries);
    let mut outputs = Vec::new();
    for threads in ["1", "2", "3"] {
        let out = dir.path().join(format!("out{threads}"));
        let o = run(
            BIN,
            &[
                s(&zip),
                "--out",
                s(&out),
                "--size",
                "24",
                "--shard-rows",
                "5",
                "--threads",
                threads,
                "--quiet",
                "--seed",
                "9",
            ],
        );
        assert!(o.status.success());
        let mut files = BTreeMap::new();
        for e in std::fs::read_dir(&out).unwrap() {
            let e = e.unwrap();
            files.insert(e.file_name(), std::fs::read(e.path()).unwrap());
        }
        outputs.push(files);
    }
    assert!(outputs[0].len() > 4);
    assert_eq!(outputs[0], outputs[1]);
    assert_eq!(outputs[0], outputs[2]);
    // Another seed gives another order.
    let out = dir.path().join("other-seed");
    run(
        BIN,
        &[
            s(&zip),
            "--out",
            s(&out),
            "--size",
            "24",
            "--shard-rows",
            "5",
            "--quiet",
            "--seed",
            "10",
        ],
    );
    let a: Vec<String> = read_split(&dir.path().join("out1"), "train")
        .into_iter()
        .map(|r| r.key)
        .collect();
    let b: Vec<String> = read_split(&out, "train")
        .into_iter()
        .map(|r| r.key)
        .collect();
    assert_ne!(a, b);
    let (mut a2, mut b2) = (a.clone(), b.clone());
    a2.sort();
    b2.sort();
    assert_eq!(a2, b2);
}

/// Packs a train + val folder, SIGKILLs the run once `stop(names in the
/// resume-state folder)` holds, reruns it and compares with an uninterrupted
/// run byte for byte.
fn kill_then_resume(stop: impl Fn(&[String]) -> bool) {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    let entries: Entries = (0..1800u32)
        .map(|i| {
            let split = if i < 1500 { "train" } else { "val" };
            (format!("{split}/c{}/{i}.jpg", i % 10), jpeg_rgb(64, 48, i))
        })
        .collect();
    write_dir(&src, &entries);
    let common = [
        "--encoding",
        "raw",
        "--size",
        "40",
        "--shard-rows",
        "50",
        "--threads",
        "1",
        "--quiet",
    ];
    let reference = dir.path().join("reference");
    let mut args = vec![s(&src), "--out", s(&reference)];
    args.extend(common);
    assert!(run(BIN, &args).status.success());

    let out = dir.path().join("out");
    let mut args = vec![s(&src), "--out", s(&out)];
    args.extend(common);
    let mut child = std::process::Command::new(BIN).args(&args).spawn().unwrap();
    let state = out.join(".ebv-pack");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while std::time::Instant::now() < deadline {
        let names: Vec<String> = std::fs::read_dir(&state)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        if stop(&names) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let interrupted = !out.join("manifest.json").exists();
    // Every file under a final shard name is a complete, readable shard.
    for e in std::fs::read_dir(&out).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        if name.ends_with(".parquet") && !name.starts_with('.') {
            let rows = read_shard(&out.join(&name));
            assert_eq!(rows.len(), 50, "{name}");
        }
    }
    let mut args = vec![s(&src), "--out", s(&out), "--json"];
    args.extend(common);
    let o = run(BIN, &args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    if interrupted {
        assert!(summary["shards_reused"].as_u64().unwrap() >= 1, "{summary}");
        assert!(
            summary["shards_written"].as_u64().unwrap() >= 1,
            "{summary}"
        );
    } else {
        eprintln!("note: the run finished before it could be killed");
    }
    for e in std::fs::read_dir(&reference).unwrap() {
        let e = e.unwrap();
        let other = std::fs::read(out.join(e.file_name())).unwrap();
        assert!(
            std::fs::read(e.path()).unwrap() == other,
            "{:?} differs",
            e.file_name()
        );
    }
    assert!(
        !state.exists(),
        "resume state is removed once the manifest is written"
    );
}

#[test]
fn killed_run_resumes_to_the_same_output() {
    // Killed inside the train split.
    kill_then_resume(|names| names.len() >= 2);
}

#[test]
fn run_killed_in_val_resumes_to_the_same_output() {
    // Killed after the train split, inside val: both go through one pipeline.
    kill_then_resume(|names| names.iter().any(|n| n.starts_with("val-")));
}

#[test]
fn list_file_layout() {
    let dir = tempfile::tempdir().unwrap();
    let mut entries = vec![];
    let mut csv = String::from("image_id,label\n");
    for i in 0..9u32 {
        entries.push((format!("set/images/im{i}.jpg"), jpeg_rgb(16, 16, i)));
        csv.push_str(&format!("im{i}.jpg,{}\n", [0, 2, 10][i as usize % 3]));
    }
    csv.push_str("missing.jpg,2\n");
    entries.push(("set/images/stray.jpg".into(), jpeg_rgb(16, 16, 99)));
    entries.push(("set/train.csv".into(), csv.into_bytes()));
    entries.push(("set/images/v0.jpg".into(), jpeg_rgb(16, 16, 50)));
    entries.push(("set/images/v4.jpg".into(), jpeg_rgb(16, 16, 54)));
    entries.push((
        "set/val.txt".into(),
        b"images/v0.jpg 10\nimages/v4.jpg 2\n".to_vec(),
    ));
    let zip = dir.path().join("lists.zip");
    write_zip(&zip, &entries);
    let out = dir.path().join("out");
    let o = run(
        BIN,
        &[
            s(&zip),
            "--out",
            s(&out),
            "--size",
            "16",
            "--quiet",
            "--json",
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(summary["layout"], "list-files");
    // Numeric labels sort numerically: 0, 2, 10 → 0, 1, 2.
    assert_eq!(
        std::fs::read_to_string(out.join("classes.tsv")).unwrap(),
        "0\t0\n1\t2\n2\t10\n"
    );
    let train = read_split(&out, "train");
    assert_eq!(train.len(), 9);
    for r in &train {
        let i: u32 = r
            .key
            .trim_start_matches("set/images/im")
            .trim_end_matches(".jpg")
            .parse()
            .unwrap();
        assert_eq!(r.label, i % 3, "{}", r.key);
    }
    let val = read_split(&out, "val");
    let mut val: Vec<(String, u32)> = val.into_iter().map(|r| (r.key, r.label)).collect();
    val.sort();
    assert_eq!(
        val,
        vec![
            ("set/images/v0.jpg".into(), 2),
            ("set/images/v4.jpg".into(), 1)
        ]
    );
    let m = manifest(&out);
    let reasons: Vec<(String, String)> = m["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["key"].as_str().unwrap().into(),
                r["reason"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    assert!(reasons
        .iter()
        .any(|(k, r)| k == "missing.jpg" && r.contains("train.csv line 11")));
    assert!(reasons
        .iter()
        .any(|(k, r)| k == "set/images/stray.jpg" && r.contains("not listed")));
}

fn idx_bytes(magic: u8, dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut v = vec![0, 0, 8, magic];
    for d in dims {
        v.extend(d.to_be_bytes());
    }
    v.extend(data);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &v).unwrap();
    gz.finish().unwrap()
}

#[test]
fn idx_layout_with_class_names() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("fmnist");
    let (n_train, n_val) = (12u32, 6u32);
    let gray = |n: u32, off: u32| -> Vec<u8> {
        (0..n * 16).map(|i| ((i * 13 + off) % 256) as u8).collect()
    };
    let train_px = gray(n_train, 0);
    let val_px = gray(n_val, 5);
    write_dir(
        &src,
        &[
            (
                "train-images-idx3-ubyte.gz".into(),
                idx_bytes(3, &[n_train, 4, 4], &train_px),
            ),
            (
                "train-labels-idx1-ubyte.gz".into(),
                idx_bytes(
                    1,
                    &[n_train],
                    &(0..n_train).map(|i| (i % 3) as u8).collect::<Vec<_>>(),
                ),
            ),
            (
                "t10k-images-idx3-ubyte.gz".into(),
                idx_bytes(3, &[n_val, 4, 4], &val_px),
            ),
            (
                "t10k-labels-idx1-ubyte.gz".into(),
                idx_bytes(
                    1,
                    &[n_val],
                    &(0..n_val).map(|i| (i % 3) as u8).collect::<Vec<_>>(),
                ),
            ),
        ],
    );
    let names = dir.path().join("names.txt");
    std::fs::write(&names, "T-shirt\nTrouser\nPullover\n").unwrap();
    let out = dir.path().join("out");
    let o = run(
        BIN,
        &[
            s(&src),
            "--out",
            s(&out),
            "--encoding",
            "raw",
            "--size",
            "8",
            "--class-names",
            s(&names),
            "--quiet",
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        std::fs::read_to_string(out.join("classes.tsv")).unwrap(),
        "0\tT-shirt\n1\tTrouser\n2\tPullover\n"
    );
    let train = read_split(&out, "train");
    assert_eq!(train.len(), 12);
    for r in &train {
        let idx: usize = r.key.rsplit('#').next().unwrap().parse().unwrap();
        assert_eq!(r.label, (idx % 3) as u32);
        let rgb: Vec<u8> = train_px[idx * 16..(idx + 1) * 16]
            .iter()
            .flat_map(|&g| [g, g, g])
            .collect();
        let want = reference_resize(&rgb, 4, 4, 8, 8);
        let max = r
            .image
            .iter()
            .zip(&want)
            .map(|(a, b)| (*a as i32 - *b as i32).abs())
            .max()
            .unwrap();
        assert!(max <= 2, "{}: max diff {max}", r.key);
    }
    assert_eq!(read_split(&out, "val").len(), 6);
}

#[test]
fn clear_errors_with_exit_code_2() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let stderr = |o: &std::process::Output| String::from_utf8_lossy(&o.stderr).into_owned();

    // Nothing recognisable.
    let src = dir.path().join("flat");
    write_dir(
        &src,
        &[
            ("a.jpg".into(), jpeg_rgb(8, 8, 1)),
            ("b.jpg".into(), jpeg_rgb(8, 8, 2)),
        ],
    );
    let o = run(BIN, &[s(&src), "--out", s(&out), "--quiet"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("Tried") && stderr(&o).contains("class folders"),
        "{}",
        stderr(&o)
    );

    // A validation class that training lacks.
    let src = dir.path().join("unknown-val");
    write_dir(
        &src,
        &[
            ("train/a/1.jpg".into(), jpeg_rgb(8, 8, 1)),
            ("val/zebra/2.jpg".into(), jpeg_rgb(8, 8, 2)),
        ],
    );
    let o = run(BIN, &[s(&src), "--out", s(&out), "--quiet"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("'zebra'"), "{}", stderr(&o));

    // A truncated archive.
    let zip = dir.path().join("cut.zip");
    write_zip(&zip, &[("train/a/1.jpg".into(), jpeg_rgb(8, 8, 1))]);
    let bytes = std::fs::read(&zip).unwrap();
    std::fs::write(&zip, &bytes[..bytes.len() - 30]).unwrap();
    let o = run(BIN, &[s(&zip), "--out", s(&out), "--quiet"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("cut.zip") && stderr(&o).contains("unreadable archive"),
        "{}",
        stderr(&o)
    );

    // Output that cannot fit: raw 8192x8192 for 5000 tiny IDX images (~1 TB).
    let src = dir.path().join("bigidx");
    write_dir(
        &src,
        &[
            (
                "train-images-idx3-ubyte.gz".into(),
                idx_bytes(3, &[5000, 1, 1], &vec![7u8; 5000]),
            ),
            (
                "train-labels-idx1-ubyte.gz".into(),
                idx_bytes(1, &[5000], &vec![0u8; 5000]),
            ),
        ],
    );
    let o = run(
        BIN,
        &[
            s(&src),
            "--out",
            s(&out),
            "--encoding",
            "raw",
            "--size",
            "8192",
            "--quiet",
        ],
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("--encoding jpeg") && stderr(&o).contains("free"),
        "{}",
        stderr(&o)
    );

    // A different pack already in --out.
    let src = dir.path().join("ok");
    write_dir(
        &src,
        &[
            ("train/a/1.jpg".into(), jpeg_rgb(8, 8, 1)),
            ("train/b/2.jpg".into(), jpeg_rgb(8, 8, 2)),
        ],
    );
    assert!(
        run(BIN, &[s(&src), "--out", s(&out), "--size", "8", "--quiet"])
            .status
            .success()
    );
    let o = run(BIN, &[s(&src), "--out", s(&out), "--size", "16", "--quiet"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--force"), "{}", stderr(&o));
    assert!(run(
        BIN,
        &[
            s(&src),
            "--out",
            s(&out),
            "--size",
            "16",
            "--quiet",
            "--force"
        ]
    )
    .status
    .success());

    // A bad flag value names the flag.
    let o = run(BIN, &[s(&src), "--out", s(&out), "--encoding", "png"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--encoding"), "{}", stderr(&o));
}

fn stderr_of(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn json_of(o: &std::process::Output) -> serde_json::Value {
    assert!(o.status.success(), "{}", stderr_of(o));
    serde_json::from_slice(&o.stdout).unwrap()
}

/// (key, reason) of every rejected entry in an output's manifest.
fn rejections(out: &Path) -> Vec<(String, String)> {
    manifest(out)["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["key"].as_str().unwrap().to_string(),
                r["reason"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn csv_header_of_any_wording_is_detected_and_noted() {
    let dir = tempfile::tempdir().unwrap();
    let mut entries = Vec::new();
    let mut csv = String::from("filename,category\n");
    for (i, label) in [1, 10, 2, 1, 10, 2].iter().enumerate() {
        entries.push((format!("images/f{i}.jpg"), jpeg_rgb(16, 16, i as u32)));
        csv.push_str(&format!("f{i}.jpg,{label}\n"));
    }
    entries.push(("train.csv".into(), csv.into_bytes()));
    let zip = dir.path().join("h.zip");
    write_zip(&zip, &entries);
    let out = dir.path().join("out");
    let summary = json_of(&run(
        BIN,
        &[
            s(&zip),
            "--out",
            s(&out),
            "--size",
            "16",
            "--json",
            "--quiet",
        ],
    ));
    assert_eq!(
        std::fs::read_to_string(out.join("classes.tsv")).unwrap(),
        "0\t1\n1\t2\n2\t10\n"
    );
    assert_eq!(summary["splits"]["train"]["rows"], 6);
    assert_eq!(summary["rejected"], 0);
    let note = summary["notes"][0].as_str().unwrap();
    assert!(
        note.contains("train.csv line 1") && note.contains("filename,category"),
        "{note}"
    );
    assert_eq!(manifest(&out)["options"]["layout_notes"][0], note);
    // `ebv-stats` shows it too, in text and JSON.
    let stats = env!("CARGO_BIN_EXE_ebv-stats");
    let o = run(stats, &[s(&out)]);
    assert!(
        String::from_utf8_lossy(&o.stdout).contains(&format!("note (ebv-pack): {note}")),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    assert_eq!(
        json_of(&run(stats, &[s(&out), "--json"]))["summary"]["layout_notes"][0],
        note
    );
    for r in read_split(&out, "train") {
        let i: usize = r.key["images/f".len()..r.key.len() - 4].parse().unwrap();
        assert_eq!(r.label, [0, 2, 1][i % 3], "{}", r.key);
    }
    // The human summary says it too.
    let o = run(BIN, &[s(&zip), "--out", s(&out), "--size", "16"]);
    assert!(
        stderr_of(&o).contains("note: train.csv line 1"),
        "{}",
        stderr_of(&o)
    );
}

/// The paper's lists name images by id, without extension, and the two
/// splits reuse ids: `0001` in `train.csv` is `train/0001.jpg`, in `val.csv`
/// `val/0001.jpg`. Spreadsheet exports start with a byte-order mark; rows
/// without a label are rejected with their line, and counted in their split.
#[test]
fn list_ids_resolve_per_split_and_bad_rows_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    let mut entries: Entries = Vec::new();
    for i in 0..6u32 {
        entries.push((format!("train/{i:04}.jpg"), jpeg_rgb(16, 16, i)));
    }
    for i in 0..2u32 {
        entries.push((format!("val/{i:04}.jpg"), jpeg_rgb(16, 16, 100 + i)));
    }
    // One id held by two other folders: ambiguous, whatever the split.
    entries.push(("extra/a/0777.jpg".into(), jpeg_rgb(16, 16, 7)));
    entries.push(("extra/b/0777.jpg".into(), jpeg_rgb(16, 16, 8)));
    entries.push((
        "train.csv".into(),
        b"\xef\xbb\xbf0000,0\r\n0001,1\r\n0002,0\r\n0003,1\r\n0004,\r\n0005,1\r\n0777,0\r\n"
            .to_vec(),
    ));
    entries.push(("val.csv".into(), b"0000,0\n0001,1\n".to_vec()));
    write_dir(&src, &entries);
    let out = dir.path().join("out");
    let summary = json_of(&run(
        BIN,
        &[
            s(&src),
            "--out",
            s(&out),
            "--size",
            "16",
            "--json",
            "--quiet",
        ],
    ));
    assert_eq!(
        std::fs::read_to_string(out.join("classes.tsv")).unwrap(),
        "0\t0\n1\t1\n"
    );
    assert_eq!(summary["splits"]["train"]["rows"], 5);
    assert_eq!(summary["splits"]["val"]["rows"], 2);
    let mut val: Vec<(String, u32)> = read_split(&out, "val")
        .into_iter()
        .map(|r| (r.key, r.label))
        .collect();
    val.sort();
    assert_eq!(
        val,
        vec![("val/0000.jpg".into(), 0), ("val/0001.jpg".into(), 1)]
    );
    for r in read_split(&out, "train") {
        let i: u32 = r.key["train/".len()..r.key.len() - 4].parse().unwrap();
        assert_eq!(r.label, i % 2, "{}", r.key);
    }
    let mut rej = rejections(&out);
    rej.sort();
    let want = [
        ("0777", "ambiguous (train.csv line 7"),
        ("extra/a/0777.jpg", "not listed in any list file"),
        ("extra/b/0777.jpg", "not listed in any list file"),
        ("train/0004.jpg", "no label (train.csv line 5)"),
    ];
    assert_eq!(rej.len(), want.len(), "{rej:?}");
    for ((key, reason), (wkey, wreason)) in rej.iter().zip(want) {
        assert_eq!(key, wkey);
        assert!(reason.starts_with(wreason), "{key}: {reason}");
    }
    // The summary counts a split's rejections as the manifest does.
    let m = manifest(&out);
    assert_eq!(m["totals"]["train"]["rejected"], 2);
    assert_eq!(summary["splits"]["train"]["rejected"], 2);
    assert_eq!(summary["splits"]["val"]["rejected"], 0);
    assert_eq!(summary["rejected_by_reason"]["no label"], 1);
    assert_eq!(summary["rejected_by_reason"]["ambiguous"], 1);

    // `--class-names` may not name two classes alike, and its BOM is no name.
    let names = dir.path().join("names.txt");
    std::fs::write(&names, "\u{feff}zero\nzero\n").unwrap();
    let o = run(
        BIN,
        &[
            s(&src),
            "--out",
            s(&dir.path().join("o2")),
            "--class-names",
            s(&names),
            "--quiet",
        ],
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr_of(&o).contains("\"zero\" is given twice"),
        "{}",
        stderr_of(&o)
    );
    std::fs::write(&names, "\u{feff}zero\none\n").unwrap();
    let o = run(
        BIN,
        &[
            s(&src),
            "--out",
            s(&dir.path().join("o3")),
            "--size",
            "16",
            "--class-names",
            s(&names),
            "--quiet",
        ],
    );
    assert!(o.status.success(), "{}", stderr_of(&o));
    assert_eq!(
        std::fs::read_to_string(dir.path().join("o3/classes.tsv")).unwrap(),
        "0\tzero\n1\tone\n"
    );
}

/// Class folders: an entry the source cannot read, or one nested below its
/// class folder, is counted in the split it lies under; a class folder
/// whose name `classes.tsv` cannot hold loses its files, not the run.
#[test]
fn folder_rejections_keep_their_split() {
    let dir = tempfile::tempdir().unwrap();
    let mut entries: Entries = (0..4u32)
        .map(|i| {
            (
                format!("data/train/c{}/i{i}.jpg", i % 2),
                jpeg_rgb(16, 16, i),
            )
        })
        .collect();
    entries.push(("data/val/c0/v0.jpg".into(), jpeg_rgb(16, 16, 9)));
    entries.push(("data/train/c1/deeper/n.jpg".into(), jpeg_rgb(16, 16, 10)));
    entries.push(("data/train/t\tab/x.jpg".into(), jpeg_rgb(16, 16, 11)));
    entries.push(("data/README.txt".into(), b"hello".to_vec()));
    let zip = dir.path().join("f.zip");
    zip_with_duplicate(&zip, &entries, "data/val/c0/v0.jpg", jpeg_rgb(16, 16, 12));
    let out = dir.path().join("out");
    let summary = json_of(&run(
        BIN,
        &[
            s(&zip),
            "--out",
            s(&out),
            "--size",
            "16",
            "--json",
            "--quiet",
        ],
    ));
    assert_eq!(summary["num_classes"], 2);
    assert_eq!(summary["splits"]["train"]["rows"], 4);
    let m = manifest(&out);
    let split_of = |key: &str| {
        m["rejected"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["key"] == key)
            .map(|r| r["split"].clone())
            .unwrap_or_else(|| panic!("{key} not rejected: {}", m["rejected"]))
    };
    assert_eq!(split_of("data/train/c1/deeper/n.jpg"), "train");
    assert_eq!(split_of("data/train/t\tab/x.jpg"), "train");
    assert_eq!(split_of("data/val/c0/v0.jpg"), "val");
    assert!(split_of("data/README.txt").is_null());
    assert_eq!(m["totals"]["train"]["rejected"], 2);
    assert_eq!(summary["splits"]["train"]["rejected"], 2);
    assert_eq!(summary["splits"]["val"]["rejected"], 1);
}

/// A rerun over a complete pack names what is wrong with it: other options
/// (a different pack), or a shard missing or cut short since (damaged).
#[test]
fn rerun_over_a_damaged_pack_names_the_shard() {
    let dir = tempfile::tempdir().unwrap();
    let entries: Entries = (0..12u32)
        .map(|i| (format!("train/c{}/i{i}.jpg", i % 3), jpeg_rgb(16, 16, i)))
        .collect();
    let zip = dir.path().join("d.zip");
    write_zip(&zip, &entries);
    let out = dir.path().join("out");
    let args = [
        s(&zip),
        "--out",
        s(&out),
        "--size",
        "16",
        "--shard-rows",
        "4",
    ];
    let o = run(BIN, &args);
    assert!(o.status.success(), "{}", stderr_of(&o));
    let o = run(BIN, &[&args[..], &["--quality", "80"]].concat());
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr_of(&o).contains("already holds a different pack"),
        "{}",
        stderr_of(&o)
    );
    let shard = out.join("train-00001.parquet");
    let len = std::fs::metadata(&shard).unwrap().len();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&shard)
        .unwrap();
    f.set_len(len - 10).unwrap();
    std::fs::remove_file(out.join("train-00002.parquet")).unwrap();
    let o = run(BIN, &args);
    assert_eq!(o.status.code(), Some(2));
    let err = stderr_of(&o);
    assert!(err.contains("2 of its 3 shards are damaged"), "{err}");
    assert!(
        err.contains(&format!(
            "train-00001.parquet has {} bytes, not {len}",
            len - 10
        )),
        "{err}"
    );
    assert!(err.contains("train-00002.parquet: "), "{err}");
    let o = run(BIN, &[&args[..], &["--force"]].concat());
    assert!(o.status.success(), "{}", stderr_of(&o));
    assert_eq!(std::fs::metadata(&shard).unwrap().len(), len);
}

/// An output folder another ebv-pack is writing (its lock held) is refused
/// at once, naming the folder; the other's files are left alone.
#[test]
fn an_output_folder_in_use_is_refused() {
    use std::os::fd::AsRawFd;
    let dir = tempfile::tempdir().unwrap();
    let entries: Entries = (0..6u32)
        .map(|i| (format!("train/c{}/i{i}.jpg", i % 2), jpeg_rgb(16, 16, i)))
        .collect();
    let zip = dir.path().join("l.zip");
    write_zip(&zip, &entries);
    let out = dir.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    // What a running pack has there: a temporary shard.
    let theirs = out.join(".train-00000.parquet.99999.tmp");
    std::fs::write(&theirs, b"half a shard").unwrap();
    let lock = std::fs::File::create(out.join(".lock")).unwrap();
    // SAFETY: flock on a descriptor this test owns.
    let rc = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    assert_eq!(rc, 0);
    let o = run(BIN, &[s(&zip), "--out", s(&out), "--size", "16"]);
    let err = stderr_of(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("in use by another ebv-pack") && err.contains(s(&out)),
        "{err}"
    );
    assert!(theirs.exists());
    drop(lock);
    let o = run(BIN, &[s(&zip), "--out", s(&out), "--size", "16"]);
    assert!(o.status.success(), "{}", stderr_of(&o));
    assert!(!theirs.exists(), "a stale temporary shard is removed");
}

#[test]
fn path_label_lists_with_spaces_in_paths() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    let mut entries = vec![
        ("my photos/cat 1.jpg".to_string(), jpeg_rgb(16, 16, 1)),
        ("my photos/dog  2.jpg".to_string(), jpeg_rgb(16, 16, 2)),
        ("plain.jpg".to_string(), jpeg_rgb(16, 16, 3)),
    ];
    entries.push((
        "train.txt".into(),
        b"my photos/cat 1.jpg 0\nmy photos/dog  2.jpg\t\t1\nplain.jpg 1\n".to_vec(),
    ));
    write_dir(&src, &entries);
    let out = dir.path().join("out");
    let summary = json_of(&run(
        BIN,
        &[
            s(&src),
            "--out",
            s(&out),
            "--size",
            "16",
            "--json",
            "--quiet",
        ],
    ));
    assert_eq!(summary["rejected"], 0, "{:?}", rejections(&out));
    let mut got: Vec<(String, u32)> = read_split(&out, "train")
        .into_iter()
        .map(|r| (r.key, r.label))
        .collect();
    got.sort();
    assert_eq!(
        got,
        vec![
            ("my photos/cat 1.jpg".into(), 0),
            ("my photos/dog  2.jpg".into(), 1),
            ("plain.jpg".into(), 1)
        ]
    );
}

/// A zip entry name written twice: the zip writer refuses a repeated name,
/// so the second is written under a same-length stand-in and patched.
fn zip_with_duplicate(path: &Path, entries: &[(String, Vec<u8>)], dup: &str, data: Vec<u8>) {
    let stand_in = dup.to_uppercase();
    assert_eq!(stand_in.len(), dup.len());
    let mut all = entries.to_vec();
    all.push((stand_in.clone(), data));
    write_zip(path, &all);
    let mut raw = std::fs::read(path).unwrap();
    let n = stand_in.len();
    let mut k = 0;
    while let Some(p) = raw[k..].windows(n).position(|w| w == stand_in.as_bytes()) {
        raw[k + p..k + p + n].copy_from_slice(dup.as_bytes());
        k += p + n;
    }
    std::fs::write(path, raw).unwrap();
}

#[test]
fn duplicates_are_rejected_with_their_reason() {
    let dir = tempfile::tempdir().unwrap();
    // A zip holding two entries of one name.
    let entries: Entries = (0..4u32)
        .map(|i| (format!("train/c{}/i{i}.jpg", i % 2), jpeg_rgb(16, 16, i)))
        .collect();
    let zip = dir.path().join("dup.zip");
    zip_with_duplicate(&zip, &entries, "train/c0/i0.jpg", jpeg_rgb(16, 16, 50));
    let out = dir.path().join("out");
    let summary = json_of(&run(
        BIN,
        &[
            s(&zip),
            "--out",
            s(&out),
            "--size",
            "16",
            "--json",
            "--quiet",
        ],
    ));
    assert_eq!(summary["splits"]["train"]["rows"], 4);
    let rej = rejections(&out);
    assert_eq!(rej.len(), 1, "{rej:?}");
    assert_eq!(rej[0].0, "train/c0/i0.jpg");
    assert!(rej[0].1.starts_with("duplicate entry name"), "{}", rej[0].1);
    let o = run(
        BIN,
        &[
            s(&zip),
            "--out",
            s(&out),
            "--size",
            "16",
            "--quiet",
            "--strict",
        ],
    );
    assert_eq!(o.status.code(), Some(1));

    // Lists naming an image twice, and one image in both splits.
    let src = dir.path().join("lists");
    let mut entries: Entries = (0..4u32)
        .map(|i| (format!("img/{i}.jpg"), jpeg_rgb(16, 16, i)))
        .collect();
    entries.push((
        "train.csv".into(),
        b"image_id,label\n0.jpg,a\n1.jpg,b\n0.jpg,a\n2.jpg,a\n1.jpg,a\n".to_vec(),
    ));
    entries.push((
        "val.csv".into(),
        b"image_id,label\n2.jpg,a\n3.jpg,b\n".to_vec(),
    ));
    write_dir(&src, &entries);
    let out = dir.path().join("out2");
    let summary = json_of(&run(
        BIN,
        &[
            s(&src),
            "--out",
            s(&out),
            "--size",
            "16",
            "--json",
            "--quiet",
        ],
    ));
    assert_eq!(summary["splits"]["train"]["rows"], 3);
    assert_eq!(summary["splits"]["val"]["rows"], 1);
    let keys: Vec<String> = read_split(&out, "train")
        .into_iter()
        .chain(read_split(&out, "val"))
        .map(|r| r.key)
        .collect();
    let unique: std::collections::BTreeSet<&String> = keys.iter().collect();
    assert_eq!(unique.len(), keys.len(), "an image packed twice: {keys:?}");
    let rej = rejections(&out);
    assert_eq!(rej.len(), 3, "{rej:?}");
    assert!(rej.iter().any(|(k, r)| k == "img/0.jpg"
        && r.starts_with("listed twice (")
        && r.contains("train.csv line 2")
        && r.contains("line 4")));
    // Listed again under another label: the reason names both, and the
    // first one is what was packed.
    assert!(rej.iter().any(|(k, r)| k == "img/1.jpg"
        && r.starts_with("listed twice with another label (\"a\", first \"b\")")
        && r.contains("line 6")
        && r.contains("packed once, as at line 3")));
    let labels: std::collections::BTreeMap<String, u32> = read_split(&out, "train")
        .into_iter()
        .map(|r| (r.key, r.label))
        .collect();
    assert_eq!(labels["img/1.jpg"], 1, "{labels:?}");
    assert!(rej.iter().any(|(k, r)| k == "img/2.jpg"
        && r.starts_with("also listed in train")
        && r.contains("val.csv line 2")));
    let by_reason = &summary["rejected_by_reason"];
    assert_eq!(by_reason["listed twice"], 1, "{by_reason}");
    assert_eq!(
        by_reason["listed twice with another label"], 1,
        "{by_reason}"
    );
    assert_eq!(by_reason["also listed in train"], 1, "{by_reason}");
}

/// Runs the packer with a deadline: a hang is a failure, not a stuck test.
fn run_within(args: &[&str], secs: u64) -> std::process::Output {
    let mut child = std::process::Command::new(BIN)
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("ebv-pack {args:?} still running after {secs} s");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

#[test]
fn folder_source_with_pipes_links_and_cycles() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    let other = dir.path().join("other-disk");
    write_dir(
        &src,
        &[
            ("train/a/1.jpg".into(), jpeg_rgb(16, 16, 1)),
            ("train/a/2.jpg".into(), jpeg_rgb(16, 16, 2)),
        ],
    );
    write_dir(&other, &[("b/3.jpg".into(), jpeg_rgb(16, 16, 3))]);
    std::os::unix::fs::symlink(other.join("b"), src.join("train/b")).unwrap();
    std::os::unix::fs::symlink(&src, src.join("train/a/up")).unwrap();
    let fifo = std::ffi::CString::new(s(&src.join("train/a/pipe.jpg"))).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
    let out = dir.path().join("out");
    let o = run_within(
        &[
            s(&src),
            "--out",
            s(&out),
            "--size",
            "16",
            "--json",
            "--quiet",
        ],
        60,
    );
    let summary = json_of(&o);
    assert_eq!(summary["splits"]["train"]["rows"], 3);
    assert_eq!(
        std::fs::read_to_string(out.join("classes.tsv")).unwrap(),
        "0\ta\n1\tb\n"
    );
    let rej: BTreeMap<String, String> = rejections(&out).into_iter().collect();
    assert_eq!(rej.len(), 2, "{rej:?}");
    assert_eq!(rej["train/a/pipe.jpg"], "not a regular file (named pipe)");
    assert!(rej["train/a/up/"].contains("cycle"), "{rej:?}");
}

#[test]
fn unreadable_subfolder_is_a_rejection_not_a_stop() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    write_dir(
        &src,
        &[
            ("train/a/1.jpg".into(), jpeg_rgb(16, 16, 1)),
            ("train/b/2.jpg".into(), jpeg_rgb(16, 16, 2)),
            ("train/locked/3.jpg".into(), jpeg_rgb(16, 16, 3)),
        ],
    );
    use std::os::unix::fs::PermissionsExt;
    let locked = src.join("train/locked");
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o000)).unwrap();
    if std::fs::read_dir(&locked).is_ok() {
        // Running as root: permissions do not lock anything. The walk's
        // handling of an unlistable folder is unit-tested in source.rs.
        eprintln!("note: skipped, permissions do not apply to this user");
        return;
    }
    let out = dir.path().join("out");
    let o = run(
        BIN,
        &[
            s(&src),
            "--out",
            s(&out),
            "--size",
            "16",
            "--json",
            "--quiet",
        ],
    );
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o755)).unwrap();
    let summary = json_of(&o);
    assert_eq!(summary["splits"]["train"]["rows"], 2);
    let rej = rejections(&out);
    assert_eq!(rej.len(), 1);
    assert_eq!(rej[0].0, "train/locked/");
    assert!(rej[0].1.starts_with("unreadable folder"), "{}", rej[0].1);
}

#[test]
fn output_inside_the_source_and_files_replaced_deep_inside() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    let entries: Entries = (0..6u32)
        .map(|i| (format!("train/c{}/{i}.png", i % 2), png_rgb(20, 20, i)))
        .collect();
    write_dir(&src, &entries);
    let out = src.join("shards");
    let args = [
        s(&src),
        "--out",
        s(&out),
        "--size",
        "16",
        "--json",
        "--quiet",
    ];
    let first = json_of(&run(BIN, &args));
    assert_eq!(first["splits"]["train"]["rows"], 6);
    let again = json_of(&run(BIN, &args));
    assert_eq!(again["already_complete"], true, "{again}");
    assert_eq!(rejections(&out).len(), 0);

    // A file replaced in a subfolder by one of the same size: the top
    // folder's time and the total size stay the same, the pack must not.
    let file = src.join("train/c1/3.png");
    let meta = std::fs::metadata(&file).unwrap();
    let top = std::fs::metadata(&src).unwrap().modified().unwrap();
    std::fs::write(&file, png_rgb(20, 20, 3)).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&file)
        .unwrap()
        .set_modified(meta.modified().unwrap() + std::time::Duration::from_secs(5))
        .unwrap();
    assert_eq!(std::fs::metadata(&file).unwrap().len(), meta.len());
    assert_eq!(std::fs::metadata(&src).unwrap().modified().unwrap(), top);
    let o = run(BIN, &args);
    assert_eq!(o.status.code(), Some(2), "{}", stderr_of(&o));
    assert!(stderr_of(&o).contains("--force"), "{}", stderr_of(&o));

    // An --out inside the source that holds files the pack did not write
    // (here a class folder) would leave them out without a word: refused
    // before anything is written there, naming one of them.
    let class_out = src.join("train/c0");
    let o = run(
        BIN,
        &[s(&src), "--out", s(&class_out), "--size", "16", "--quiet"],
    );
    assert_eq!(o.status.code(), Some(2), "{}", stderr_of(&o));
    assert!(
        stderr_of(&o).contains("holds files ebv-pack did not write, e.g. 'train/c0/0.png'"),
        "{}",
        stderr_of(&o)
    );
    assert!(!class_out.join("manifest.json").exists());
    assert!(!class_out.join(".lock").exists());
}

#[test]
fn rerun_of_a_complete_pack_reports_the_manifest_counts() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    write_dir(
        &src,
        &[
            ("train/a/1.jpg".into(), jpeg_rgb(16, 16, 1)),
            ("train/a/2.png".into(), png_rgb(20, 20, 2)),
            ("train/b/3.jpg".into(), jpeg_rgb(16, 16, 3)),
            ("val/a/4.jpg".into(), jpeg_rgb(16, 16, 4)),
            ("val/b/5.png".into(), png_rgb(16, 16, 5)),
        ],
    );
    let out = dir.path().join("out");
    let args = [
        s(&src),
        "--out",
        s(&out),
        "--size",
        "16",
        "--json",
        "--quiet",
    ];
    let first = json_of(&run(BIN, &args));
    let again = json_of(&run(BIN, &args));
    assert_eq!(again["already_complete"], true);
    for split in ["train", "val"] {
        for field in ["rows", "passthrough", "converted", "shards", "bytes"] {
            assert_eq!(
                again["splits"][split][field], first["splits"][split][field],
                "{split}.{field}"
            );
        }
    }
    assert_eq!(again["splits"]["train"]["passthrough"], 2);
    assert_eq!(again["splits"]["train"]["converted"], 1);
    assert_eq!(manifest(&out)["totals"]["val"]["passthrough"], 1);
    let o = run(BIN, &[s(&src), "--out", s(&out), "--size", "16"]);
    assert!(
        stderr_of(&o).contains("already complete"),
        "{}",
        stderr_of(&o)
    );
}

#[test]
fn nothing_packed_is_an_error_and_empty_classes_are_warned() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    write_dir(
        &src,
        &[
            ("train/a/1.jpg".into(), b"not a jpeg at all".to_vec()),
            ("train/b/2.jpg".into(), Vec::new()),
        ],
    );
    let out = dir.path().join("out");
    let o = run(BIN, &[s(&src), "--out", s(&out), "--size", "16", "--quiet"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr_of(&o));
    let err = stderr_of(&o);
    assert!(
        err.contains("nothing was packed") && err.contains("manifest.json"),
        "{err}"
    );
    assert_eq!(rejections(&out).len(), 2);
    // A rerun says the same.
    let o = run(BIN, &[s(&src), "--out", s(&out), "--size", "16", "--quiet"]);
    assert_eq!(o.status.code(), Some(2));

    // One class loses every image; there is no val split.
    let src = dir.path().join("src2");
    write_dir(
        &src,
        &[
            ("train/a/1.jpg".into(), jpeg_rgb(16, 16, 1)),
            ("train/b/2.jpg".into(), b"garbage".to_vec()),
        ],
    );
    let out = dir.path().join("out2");
    let summary = json_of(&run(
        BIN,
        &[
            s(&src),
            "--out",
            s(&out),
            "--size",
            "16",
            "--json",
            "--quiet",
        ],
    ));
    let warnings: Vec<String> = summary["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w.as_str().unwrap().to_string())
        .collect();
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("no training rows") && w.contains("'b'")),
        "{warnings:?}"
    );
    assert!(
        warnings.iter().any(|w| w.starts_with("val: no rows")),
        "{warnings:?}"
    );
    let o = run(BIN, &[s(&src), "--out", s(&out), "--size", "16"]);
    assert!(stderr_of(&o).contains("warning: "), "{}", stderr_of(&o));
}

#[test]
fn idx_files_named_with_dots() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("kaggle");
    let labels: Vec<u8> = (0..6).map(|i| i % 2).collect();
    write_dir(
        &src,
        &[
            (
                "train-images.idx3-ubyte".into(),
                idx_bytes(3, &[6, 4, 4], &[9u8; 96]),
            ),
            (
                "train-labels.idx1-ubyte".into(),
                idx_bytes(1, &[6], &labels),
            ),
            (
                "t10k-images.idx3-ubyte".into(),
                idx_bytes(3, &[2, 4, 4], &[3u8; 32]),
            ),
            ("t10k-labels.idx1-ubyte".into(), idx_bytes(1, &[2], &[0, 1])),
        ],
    );
    let out = dir.path().join("out");
    let summary = json_of(&run(
        BIN,
        &[
            s(&src),
            "--out",
            s(&out),
            "--size",
            "4",
            "--json",
            "--quiet",
        ],
    ));
    assert_eq!(summary["layout"], "idx");
    assert_eq!(summary["splits"]["train"]["rows"], 6);
    assert_eq!(summary["splits"]["val"]["rows"], 2);
}

#[test]
fn train_val_and_test_folders_use_val() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    let mut entries = Vec::new();
    for split in ["train", "val", "test"] {
        for c in ["a", "b"] {
            entries.push((format!("set/{split}/{c}/1.jpg"), jpeg_rgb(16, 16, 1)));
        }
    }
    write_dir(&src, &entries);
    let out = dir.path().join("out");
    let summary = json_of(&run(
        BIN,
        &[
            s(&src),
            "--out",
            s(&out),
            "--size",
            "16",
            "--json",
            "--quiet",
        ],
    ));
    assert_eq!(summary["splits"]["val"]["rows"], 2);
    assert!(read_split(&out, "val")
        .iter()
        .all(|r| r.key.starts_with("set/val/")));
    let note = summary["notes"][0].as_str().unwrap();
    assert!(
        note.contains("'set/val/'") && note.contains("'set/test/'"),
        "{note}"
    );
    assert_eq!(manifest(&out)["options"]["layout_notes"][0], note);
    let rej = rejections(&out);
    assert_eq!(rej.len(), 2);
    assert!(rej
        .iter()
        .all(|(k, r)| k.starts_with("set/test/") && r.contains("'set/test' ignored")));
}

#[test]
fn large_size_raw_pack_works() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    write_dir(
        &src,
        &[
            ("train/a/1.png".into(), png_rgb(8, 8, 1)),
            ("train/b/2.png".into(), png_rgb(8, 8, 2)),
            ("val/a/3.png".into(), png_rgb(8, 8, 3)),
        ],
    );
    let out = dir.path().join("out");
    let summary = json_of(&run(
        BIN,
        &[
            s(&src),
            "--out",
            s(&out),
            "--encoding",
            "raw",
            "--size",
            "1024",
            "--json",
            "--quiet",
        ],
    ));
    assert_eq!(summary["splits"]["train"]["rows"], 2);
    let rows = read_split(&out, "train");
    assert!(rows.iter().all(|r| r.image.len() == 1024 * 1024 * 3));
}

#[test]
fn error_messages_name_the_cause_once_and_use_cli_spellings() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let missing = dir.path().join("nonexist");
    let o = run(BIN, &[s(&missing), "--out", s(&out)]);
    assert_eq!(o.status.code(), Some(2));
    let err = stderr_of(&o);
    assert_eq!(err.matches("No such file or directory").count(), 1, "{err}");

    let folders = dir.path().join("folders");
    write_dir(
        &folders,
        &[
            ("train/a/1.jpg".into(), jpeg_rgb(8, 8, 1)),
            ("train/b/2.jpg".into(), jpeg_rgb(8, 8, 2)),
        ],
    );
    let o = run(BIN, &[s(&folders), "--out", s(&out), "--layout", "idx"]);
    assert_eq!(o.status.code(), Some(2));
    let err = stderr_of(&o);
    assert!(
        err.contains("--layout idx needs") && err.contains("train-images-idx3-ubyte"),
        "{err}"
    );
    assert!(!err.contains("Use --layout to force"), "{err}");

    let lists = dir.path().join("lists");
    write_dir(
        &lists,
        &[
            ("img/1.jpg".into(), jpeg_rgb(8, 8, 1)),
            ("train.csv".into(), b"image_id,label\n1.jpg,a\n".to_vec()),
        ],
    );
    let o = run(
        BIN,
        &[s(&lists), "--out", s(&out), "--layout", "class-folders"],
    );
    assert_eq!(o.status.code(), Some(2));
    let err = stderr_of(&o);
    assert!(err.contains("--layout class-folders needs"), "{err}");
    assert!(
        !err.contains("ClassFolders") && !err.contains("matched"),
        "{err}"
    );

    let o = run(BIN, &[s(&folders), "--out", s(&out), "--size", "8"]);
    assert!(o.status.success());
    assert!(
        stderr_of(&o).contains("layout class-folders,"),
        "{}",
        stderr_of(&o)
    );
}

#[test]
fn unsafe_zip_paths_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let mut entries: Entries = vec![
        ("train/a/ok.jpg".into(), jpeg_rgb(8, 8, 1)),
        ("train/b/ok.jpg".into(), jpeg_rgb(8, 8, 2)),
    ];
    let bad = [
        "/abs.jpg",
        "C:/win.jpg",
        "a/../../x.jpg",
        "train/a/../../../up.jpg",
    ];
    for name in bad {
        entries.push((name.into(), jpeg_rgb(8, 8, 3)));
    }
    let zip = dir.path().join("u.zip");
    write_zip(&zip, &entries);
    let out = dir.path().join("out");
    let summary = json_of(&run(
        BIN,
        &[
            s(&zip),
            "--out",
            s(&out),
            "--size",
            "8",
            "--json",
            "--quiet",
        ],
    ));
    assert_eq!(summary["splits"]["train"]["rows"], 2);
    let rej: BTreeMap<String, String> = rejections(&out).into_iter().collect();
    assert_eq!(rej.len(), bad.len(), "{rej:?}");
    for name in bad {
        assert_eq!(
            rej.get(name).map(String::as_str),
            Some("unsafe path"),
            "{name}: {rej:?}"
        );
    }
}

/// A JPEG with data after its end marker (as phones write), a progressive
/// JPEG and a truncated progressive one.
#[test]
fn jpeg_end_is_found_past_trailing_data_and_through_progressive_scans() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    let plain = jpeg_rgb(32, 32, 1);
    let mut trailing = plain.clone();
    trailing.extend(jpeg_rgb(8, 8, 2)); // a second JPEG (depth map)
    trailing.extend(b"\0\0gainmap\xFF\xD8 more");
    let mut progressive = Vec::new();
    let mut enc = jpeg_encoder::Encoder::new(&mut progressive, 90);
    enc.set_progressive(true);
    enc.encode(&pattern(32, 32, 3), 32, 32, jpeg_encoder::ColorType::Rgb)
        .unwrap();
    assert!(
        progressive
            .windows(2)
            .filter(|w| w == &[0xFF, 0xDA])
            .count()
            > 1
    );
    // Cut among the later scans: the image never reaches its end marker.
    let cut = progressive[..progressive.len() * 2 / 3].to_vec();
    write_dir(
        &src,
        &[
            ("train/a/trailing.jpg".into(), trailing.clone()),
            ("train/a/progressive.jpg".into(), progressive.clone()),
            ("train/b/cut.jpg".into(), cut),
            ("train/b/plain.jpg".into(), plain.clone()),
        ],
    );
    let decode = |b: &[u8]| ebv::image::decode_rgb8(b, Default::default()).unwrap().data;
    for encoding in ["jpeg", "raw"] {
        let out = dir.path().join(encoding);
        let summary = json_of(&run(
            BIN,
            &[
                s(&src),
                "--out",
                s(&out),
                "--encoding",
                encoding,
                "--size",
                "32",
                "--json",
                "--quiet",
            ],
        ));
        let rej = rejections(&out);
        assert_eq!(rej.len(), 1, "{rej:?}");
        assert_eq!(rej[0].0, "train/b/cut.jpg");
        assert!(rej[0].1.contains("truncated"), "{}", rej[0].1);
        let rows: BTreeMap<String, Vec<u8>> = read_split(&out, "train")
            .into_iter()
            .map(|r| (r.key, r.image))
            .collect();
        assert_eq!(rows.len(), 3);
        if encoding == "jpeg" {
            // Passthrough keeps the source bytes, trailing data included.
            assert_eq!(summary["splits"]["train"]["passthrough"], 3);
            assert!(rows["train/a/trailing.jpg"] == trailing);
            assert!(rows["train/a/progressive.jpg"] == progressive);
        } else {
            assert!(rows["train/a/trailing.jpg"] == decode(&plain));
            assert!(rows["train/a/progressive.jpg"] == decode(&progressive));
        }
    }
    // The decoder itself (loader, ebv-stats --deep) takes trailing data too.
    assert!(decode(&trailing) == decode(&plain));
}

/// An 8-bit palette PNG written by hand (IHDR colour type 3, PLTE, IDAT).
fn png_palette(w: u32, h: u32, palette: &[[u8; 3]], index: impl Fn(u32, u32) -> u8) -> Vec<u8> {
    fn chunk(out: &mut Vec<u8>, kind: &[u8], data: &[u8]) {
        out.extend((data.len() as u32).to_be_bytes());
        let mut crc = crc32fast::Hasher::new();
        crc.update(kind);
        crc.update(data);
        out.extend(kind);
        out.extend(data);
        out.extend(crc.finalize().to_be_bytes());
    }
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend(w.to_be_bytes());
    ihdr.extend(h.to_be_bytes());
    ihdr.extend([8, 3, 0, 0, 0]);
    chunk(&mut out, b"IHDR", &ihdr);
    chunk(&mut out, b"PLTE", &palette.concat());
    let mut raw = Vec::new();
    for y in 0..h {
        raw.push(0); // filter: none
        raw.extend((0..w).map(|x| index(x, y)));
    }
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut z, &raw).unwrap();
    chunk(&mut out, b"IDAT", &z.finish().unwrap());
    chunk(&mut out, b"IEND", &[]);
    out
}

#[test]
fn webp_bmp_gif_palette_png_and_exif_orientation_decode_as_expected() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    let (w, h) = (16u32, 16u32);
    let rgb = |seed| image::RgbImage::from_raw(w, h, pattern(w, h, seed)).unwrap();
    let encode = |img: image::DynamicImage, format| {
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, format).unwrap();
        out.into_inner()
    };
    let webp = encode(
        image::DynamicImage::ImageRgb8(rgb(1)),
        image::ImageFormat::WebP,
    );
    let bmp = encode(
        image::DynamicImage::ImageRgb8(rgb(2)),
        image::ImageFormat::Bmp,
    );
    // Two frames of at most 256 colours each (so the palette is exact);
    // only the first is the image.
    let mut gif = Vec::new();
    {
        let frame =
            |seed| image::Frame::new(image::DynamicImage::ImageRgb8(rgb(seed)).into_rgba8());
        let mut enc = image::codecs::gif::GifEncoder::new(&mut gif);
        enc.encode_frames(vec![frame(3), frame(4)]).unwrap();
    }
    let palette: Vec<[u8; 3]> = (0..4).map(|i| [i * 60, 255 - i * 60, 17 * i]).collect();
    let index = |x: u32, y: u32| ((x / 4 + y / 4) % 4) as u8;
    let indexed = png_palette(w, h, &palette, index);
    // Orientation 6: the stored 24x16 image is shown turned 90° clockwise.
    let (sw, sh) = (24u32, 16u32);
    let rotated = jpeg_with_orientation(sw, sh, 5, Some(6));
    let upright = jpeg_with_orientation(sw, sh, 5, None);
    write_dir(
        &src,
        &[
            ("train/a/1.webp".into(), webp),
            ("train/a/2.bmp".into(), bmp),
            ("train/b/3.gif".into(), gif),
            ("train/b/4.png".into(), indexed),
        ],
    );
    let rot_src = dir.path().join("rot");
    write_dir(
        &rot_src,
        &[
            ("train/a/exif6.jpg".into(), rotated),
            ("train/b/other.png".into(), png_rgb(sh, sw, 9)),
        ],
    );
    let out = dir.path().join("out");
    let summary = json_of(&run(
        BIN,
        &[
            s(&src),
            "--out",
            s(&out),
            "--encoding",
            "raw",
            "--size",
            "16",
            "--json",
            "--quiet",
        ],
    ));
    assert_eq!(summary["rejected"], 0, "{:?}", rejections(&out));
    let rows: BTreeMap<String, Vec<u8>> = read_split(&out, "train")
        .into_iter()
        .map(|r| (r.key, r.image))
        .collect();
    assert!(rows["train/a/1.webp"] == pattern(w, h, 1), "lossless WebP");
    assert!(rows["train/a/2.bmp"] == pattern(w, h, 2), "BMP");
    assert!(rows["train/b/3.gif"] == pattern(w, h, 3), "GIF first frame");
    let want: Vec<u8> = (0..h)
        .flat_map(|y| (0..w).map(move |x| (x, y)))
        .flat_map(|(x, y)| palette[index(x, y) as usize])
        .collect();
    assert!(rows["train/b/4.png"] == want, "palette PNG");

    // Orientation: the upright decode of the same scan, turned by hand.
    let out = dir.path().join("out-rot");
    let o = run(
        BIN,
        &[
            s(&rot_src),
            "--out",
            s(&out),
            "--encoding",
            "raw",
            "--size",
            &format!("{sh}x{sw}"),
            "--quiet",
        ],
    );
    assert!(o.status.success(), "{}", stderr_of(&o));
    let stored = ebv::image::decode_rgb8(&upright, Default::default()).unwrap();
    assert_eq!((stored.width, stored.height), (sw, sh));
    let mut want = Vec::new();
    for y in 0..sw {
        for x in 0..sh {
            // Shown (x, y) is stored (column y, row sh-1-x).
            let p = (((sh - 1 - x) * sw + y) * 3) as usize;
            want.extend_from_slice(&stored.data[p..p + 3]);
        }
    }
    let row = read_split(&out, "train")
        .into_iter()
        .find(|r| r.key == "train/a/exif6.jpg")
        .unwrap();
    assert!(row.image == want, "EXIF orientation 6");
}

/// Where chunk tag `tag` first occurs in `file` (its 4-byte length field
/// is just before).
fn tag_at(file: &[u8], tag: &[u8]) -> usize {
    file.windows(tag.len()).position(|w| w == tag).unwrap()
}

#[test]
fn damaged_frames_stray_bytes_short_webps_and_run_length_bmps_read_as_pillow_or_libwebp() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    let (w, h) = (16u32, 16u32);
    // A PNG whose IDAT CRC is wrong: the zlib stream's checksum vouches
    // for the pixels. One cut inside its pixel data: rejected.
    let png = png_rgb(w, h, 1);
    let idat = tag_at(&png, b"IDAT");
    let len = u32::from_be_bytes(png[idat - 4..idat].try_into().unwrap()) as usize;
    let mut bad_crc = png.clone();
    bad_crc[idat + 4 + len] ^= 0xFF;
    let cut_png = png[..idat + 4 + len / 2].to_vec();
    // One whose zlib checksum (the IDAT's last 4 bytes) lost a byte: the
    // IDAT CRC, with the checksum recomputed, vouches for the pixels.
    let mut bad_adler = png.clone();
    bad_adler.remove(idat + 4 + len - 3);
    // A GIF with a stray byte where its first block should start (after
    // the header and global colour table): skipped, as Pillow skips it.
    let mut gif = Vec::new();
    image::codecs::gif::GifEncoder::new(&mut gif)
        .encode_frames(vec![image::Frame::new(
            image::DynamicImage::ImageRgb8(
                image::RgbImage::from_raw(w, h, pattern(w, h, 3)).unwrap(),
            )
            .into_rgba8(),
        )])
        .unwrap();
    let flags = gif[10];
    let blocks = 13
        + if flags & 0x80 != 0 {
            3 << ((flags & 7) + 1)
        } else {
            0
        };
    let mut stray_gif = gif.clone();
    stray_gif.insert(blocks, 0x00);
    // A lossless WebP with bytes after its RIFF (ignored), and one that
    // lost a byte in the middle (shorter than its RIFF size says).
    let mut webp = std::io::Cursor::new(Vec::new());
    image::DynamicImage::ImageRgb8(image::RgbImage::from_raw(w, h, pattern(w, h, 2)).unwrap())
        .write_to(&mut webp, image::ImageFormat::WebP)
        .unwrap();
    let webp = webp.into_inner();
    let mut trailing = webp.clone();
    trailing.extend_from_slice(b"junk");
    let mut short_webp = webp.clone();
    short_webp.remove(webp.len() / 2);
    // An RLE8 BMP, 16x16, bottom row first: eight rows of a run of 20
    // clipped to the row and an end of line, eight of a run of 16, end of
    // bitmap (Pillow: the bottom half index 1, the top half index 2).
    let palette = [[9u8, 8, 7], [200, 100, 50], [10, 20, 250]];
    let mut bmp = b"BM".to_vec();
    let mut data = [[20u8, 1, 0, 0]; 8].concat();
    data.extend([[16u8, 2, 0, 0]; 8].concat());
    data.extend([0, 1]);
    let offset = 14 + 40 + 4 * palette.len() as u32;
    bmp.extend((offset + data.len() as u32).to_le_bytes());
    bmp.extend([0; 4]);
    bmp.extend(offset.to_le_bytes());
    for v in [40u32, w, h] {
        bmp.extend(v.to_le_bytes());
    }
    bmp.extend(1u16.to_le_bytes());
    bmp.extend(8u16.to_le_bytes());
    for v in [1u32, data.len() as u32, 0, 0, palette.len() as u32, 0] {
        bmp.extend(v.to_le_bytes());
    }
    for [r, g, b] in palette {
        bmp.extend([b, g, r, 0]);
    }
    bmp.extend(&data);
    write_dir(
        &src,
        &[
            ("train/a/bad-crc.png".into(), bad_crc),
            ("train/a/cut.png".into(), cut_png),
            ("train/a/bad-adler.png".into(), bad_adler),
            ("train/b/stray.gif".into(), stray_gif),
            ("train/a/trailing.webp".into(), trailing),
            ("train/a/short.webp".into(), short_webp),
            ("train/b/rle.bmp".into(), bmp),
        ],
    );
    let out = dir.path().join("out");
    let o = run(
        BIN,
        &[
            s(&src),
            "--out",
            s(&out),
            "--encoding",
            "raw",
            "--size",
            "16",
            "--quiet",
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr_of(&o));
    let rejected: BTreeMap<String, String> = rejections(&out).into_iter().collect();
    assert_eq!(rejected.len(), 2, "{rejected:?}");
    assert!(
        rejected["train/a/cut.png"].contains("truncated"),
        "{rejected:?}"
    );
    assert!(
        rejected["train/a/short.webp"].contains("truncated"),
        "{rejected:?}"
    );
    let rows: BTreeMap<String, Vec<u8>> = read_split(&out, "train")
        .into_iter()
        .map(|r| (r.key, r.image))
        .collect();
    assert!(
        rows["train/a/bad-crc.png"] == pattern(w, h, 1),
        "salvaged PNG"
    );
    assert!(
        rows["train/a/bad-adler.png"] == pattern(w, h, 1),
        "PNG with a damaged checksum"
    );
    assert!(
        rows["train/b/stray.gif"] == pattern(w, h, 3),
        "GIF stray byte"
    );
    assert!(
        rows["train/a/trailing.webp"] == pattern(w, h, 2),
        "WebP with a tail"
    );
    let rle = &rows["train/b/rle.bmp"];
    for (y, row) in rle.chunks(16 * 3).enumerate() {
        let want = if y < 8 { palette[2] } else { palette[1] };
        assert!(row.chunks(3).all(|p| p == want), "row {y}: {row:?}");
    }
}

#[test]
fn resize_crop_keeps_the_centre() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    // 40x30 landscape and 30x40 portrait to 30x30: scale 1, so the crop is
    // an exact copy of the centre columns or rows.
    write_dir(
        &src,
        &[
            ("train/a/wide.png".into(), png_rgb(40, 30, 1)),
            ("train/b/tall.png".into(), png_rgb(30, 40, 2)),
        ],
    );
    let out = dir.path().join("out");
    let o = run(
        BIN,
        &[
            s(&src),
            "--out",
            s(&out),
            "--encoding",
            "raw",
            "--size",
            "30",
            "--resize",
            "crop",
            "--quiet",
        ],
    );
    assert!(o.status.success(), "{}", stderr_of(&o));
    let rows: BTreeMap<String, Vec<u8>> = read_split(&out, "train")
        .into_iter()
        .map(|r| (r.key, r.image))
        .collect();
    let wide = pattern(40, 30, 1);
    let want: Vec<u8> = (0..30)
        .flat_map(|y| wide[(y * 40 + 5) * 3..(y * 40 + 35) * 3].to_vec())
        .collect();
    assert!(rows["train/a/wide.png"] == want, "landscape centre");
    let tall = pattern(30, 40, 2);
    assert!(
        rows["train/b/tall.png"] == tall[5 * 30 * 3..35 * 30 * 3],
        "portrait centre"
    );
}

/// `bytes` with its first frame header's marker and sample precision set.
fn with_frame(mut bytes: Vec<u8>, marker: u8, precision: u8) -> Vec<u8> {
    let sof = bytes.windows(2).position(|w| w == [0xFF, 0xC0]).unwrap();
    bytes[sof + 1] = marker;
    bytes[sof + 4] = precision;
    bytes
}

/// A flat CMYK JPEG as jpeg-encoder writes it (Adobe, inverted samples),
/// stored as CMYK or as YCCK.
fn jpeg_flat_cmyk(w: u32, h: u32, cmyk: [u8; 4], ycck: bool) -> Vec<u8> {
    let color = if ycck {
        jpeg_encoder::ColorType::CmykAsYcck
    } else {
        jpeg_encoder::ColorType::Cmyk
    };
    let mut out = Vec::new();
    jpeg_encoder::Encoder::new(&mut out, 95)
        .encode(&cmyk.repeat((w * h) as usize), w as u16, h as u16, color)
        .unwrap();
    out
}

/// A JPEG of `pattern(w, h, seed)` whose only orientation is
/// `tiff:Orientation` in an XMP APP1 segment.
fn jpeg_with_xmp(w: u32, h: u32, seed: u32, orientation: u8) -> Vec<u8> {
    let mut out = Vec::new();
    let mut enc = jpeg_encoder::Encoder::new(&mut out, 90);
    let mut xmp = b"http://ns.adobe.com/xap/1.0/\0".to_vec();
    xmp.extend(format!("<rdf:Description tiff:Orientation=\"{orientation}\"/>").bytes());
    enc.add_app_segment(1, xmp).unwrap();
    let (w16, h16) = (w as u16, h as u16);
    enc.encode(&pattern(w, h, seed), w16, h16, jpeg_encoder::ColorType::Rgb)
        .unwrap();
    out
}

/// Right-size JPEGs a reader would misread as stored — turned by EXIF or XMP,
/// not RGB, or coded in a way JPEG readers do not decode — are converted
/// or rejected, never passed through.
#[test]
fn right_size_jpegs_a_reader_would_misread_are_converted_or_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let n = 32u32;
    let plain = jpeg_rgb(n, n, 1);
    // C=20 M=100 Y=200 K=30 → (255-C)(255-K)/255 …: what Pillow's
    // convert("RGB") gives too.
    let cmyk = [20u8, 100, 200, 30];
    let want_cmyk = [207i32, 137, 49];
    let entries: Entries = vec![
        ("train/a/plain.jpg".into(), plain.clone()),
        (
            "train/a/exif3.jpg".into(),
            jpeg_with_orientation(n, n, 2, Some(3)),
        ),
        (
            "train/a/exif6.jpg".into(),
            jpeg_with_orientation(n, n, 3, Some(6)),
        ),
        // 24 wide, 32 tall once turned: the target size only after rotation.
        (
            "train/a/exif6-wide.jpg".into(),
            jpeg_with_orientation(n, 24, 4, Some(6)),
        ),
        // The same, turned by an XMP packet alone (no EXIF).
        ("train/a/xmp6-wide.jpg".into(), jpeg_with_xmp(n, 24, 4, 6)),
        ("train/a/gray.jpg".into(), jpeg_gray(n, n, 5)),
        ("train/b/cmyk.jpg".into(), jpeg_flat_cmyk(n, n, cmyk, false)),
        ("train/b/ycck.jpg".into(), jpeg_flat_cmyk(n, n, cmyk, true)),
        (
            "train/b/sof1.jpg".into(),
            with_frame(plain.clone(), 0xC1, 8),
        ),
        (
            "train/b/sof9.jpg".into(),
            with_frame(plain.clone(), 0xC9, 12),
        ),
        (
            "train/b/sof3.jpg".into(),
            with_frame(plain.clone(), 0xC3, 12),
        ),
        (
            "train/b/sof1-12bit.jpg".into(),
            with_frame(plain.clone(), 0xC1, 12),
        ),
    ];
    let sources: BTreeMap<String, Vec<u8>> = entries.iter().cloned().collect();
    let zip = dir.path().join("src.zip");
    write_zip(&zip, &entries);
    for (size, wide) in [("32", false), ("24x32", true)] {
        let out = dir.path().join(format!("out{size}"));
        let o = run(BIN, &[s(&zip), "--out", s(&out), "--size", size, "--quiet"]);
        assert!(o.status.success(), "{}", stderr_of(&o));
        let mut rej = rejections(&out);
        rej.sort();
        let rejected: Vec<&str> = rej.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            rejected,
            [
                "train/b/sof1-12bit.jpg",
                "train/b/sof3.jpg",
                "train/b/sof9.jpg"
            ]
        );
        let reasons: Vec<&str> = rej.iter().map(|(_, r)| r.as_str()).collect();
        assert_eq!(
            reasons,
            [
                "unsupported image format: 12-bit jpeg (SOF1)",
                "unsupported image format: 12-bit lossless jpeg (SOF3)",
                "unsupported image format: 12-bit arithmetic-coded jpeg (SOF9)",
            ]
        );
        let (tw, th) = if wide { (24, 32) } else { (n, n) };
        let rows = read_split(&out, "train");
        let stored = |key: &str| &rows.iter().find(|r| r.key == key).unwrap().image;
        // Same scan, turned alike: the same stored bytes.
        assert!(
            stored("train/a/xmp6-wide.jpg") == stored("train/a/exif6-wide.jpg"),
            "XMP orientation, size {size}"
        );
        for row in rows.iter() {
            let passed = row.image == sources[&row.key];
            let keep = !wide && (row.key == "train/a/plain.jpg" || row.key == "train/b/sof1.jpg");
            assert_eq!(passed, keep, "{} passed through: {passed}", row.key);
            // What a reader ignoring EXIF sees: the target size, in colour.
            let h = ebv::image::JpegHeader::parse(&row.image).unwrap();
            assert_eq!(
                (h.width, h.height, h.components),
                (tw, th, 3),
                "{}",
                row.key
            );
            assert!(h.orientation == image::metadata::Orientation::NoTransforms);
            let px = ebv::image::decode_rgb8(&row.image, Default::default()).unwrap();
            if row.key.ends_with("cmyk.jpg") || row.key.ends_with("ycck.jpg") {
                for p in px.data.chunks(3) {
                    for c in 0..3 {
                        let d = (i32::from(p[c]) - want_cmyk[c]).abs();
                        assert!(d <= 3, "{}: {p:?} vs {want_cmyk:?}", row.key);
                    }
                }
            }
        }
    }
}

/// Alpha is dropped (the colour under it is kept, as Pillow's
/// `convert("RGB")` does), the same in every format that carries it.
#[test]
fn alpha_is_dropped_the_same_way_in_every_format() {
    let dir = tempfile::tempdir().unwrap();
    let (w, h) = (16u32, 12u32);
    let rgb = pattern(w, h, 7);
    let alpha = |i: usize| [0u8, 128, 255][i % 3];
    let rgba8: Vec<u8> = rgb
        .chunks(3)
        .enumerate()
        .flat_map(|(i, p)| [p[0], p[1], p[2], alpha(i)])
        .collect();
    let rgba16: Vec<u16> = rgba8.iter().map(|&v| u16::from(v) * 257).collect();
    let la8: Vec<u8> = rgb
        .chunks(3)
        .enumerate()
        .flat_map(|(i, p)| [p[0], alpha(i)])
        .collect();
    let rgba_img = image::RgbaImage::from_raw(w, h, rgba8).unwrap();
    let encode = |img: image::DynamicImage, format| {
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, format).unwrap();
        out.into_inner()
    };
    let dynamic = image::DynamicImage::ImageRgba8(rgba_img);
    let entries: Entries = vec![
        (
            "train/a/rgba8.png".into(),
            encode(dynamic.clone(), image::ImageFormat::Png),
        ),
        (
            "train/a/rgba16.png".into(),
            encode(
                image::DynamicImage::ImageRgba16(
                    image::ImageBuffer::from_raw(w, h, rgba16).unwrap(),
                ),
                image::ImageFormat::Png,
            ),
        ),
        (
            "train/a/lossless.webp".into(),
            encode(dynamic.clone(), image::ImageFormat::WebP),
        ),
        (
            "train/a/argb.bmp".into(),
            encode(dynamic, image::ImageFormat::Bmp),
        ),
        (
            "train/b/la.png".into(),
            encode(
                image::DynamicImage::ImageLumaA8(image::ImageBuffer::from_raw(w, h, la8).unwrap()),
                image::ImageFormat::Png,
            ),
        ),
    ];
    let src = dir.path().join("src");
    write_dir(&src, &entries);
    let out = dir.path().join("out");
    let size = format!("{w}x{h}");
    let o = run(
        BIN,
        &[
            s(&src),
            "--out",
            s(&out),
            "--encoding",
            "raw",
            "--size",
            &size,
            "--quiet",
        ],
    );
    assert!(o.status.success(), "{}", stderr_of(&o));
    assert_eq!(rejections(&out), []);
    let gray: Vec<u8> = rgb.chunks(3).flat_map(|p| [p[0]; 3]).collect();
    let rows = read_split(&out, "train");
    assert_eq!(rows.len(), entries.len());
    for row in rows {
        let want = if row.key.ends_with("la.png") {
            &gray
        } else {
            &rgb
        };
        assert!(&row.image == want, "{}", row.key);
    }
}

/// Names that are not UTF-8, or that differ only by case, give distinct,
/// readable keys and classes; entries whose names decode to the same text
/// never share a key.
#[test]
fn odd_entry_names_give_distinct_keys_and_clashes_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let img = |seed| jpeg_rgb(16, 16, seed);
    // The zip crate flags a non-ASCII name as UTF-8; "cafQ" is then patched
    // to "caf\x82", unflagged, which CP437 reads as "café" too.
    let entries: Entries = vec![
        ("train/A/x.jpg".into(), img(1)),
        ("train/a/x.jpg".into(), img(2)),
        ("train/a/X.jpg".into(), img(3)),
        ("train/c/café.jpg".into(), img(4)),
        ("train/c/cafQ.jpg".into(), img(5)),
        ("train/c/QQ.jpg".into(), img(6)),
        // Two names that differ only in bytes that are not UTF-8 (distinct
        // entries), and two that become one name for real (a duplicate).
        ("train/c/cafR.jpg".into(), img(7)),
        ("train/c/cafS.jpg".into(), img(8)),
        ("train/c/dupA.jpg".into(), img(9)),
        ("train/c/dupB.jpg".into(), img(10)),
    ];
    let zip = dir.path().join("names.zip");
    write_zip(&zip, &entries);
    let mut raw = std::fs::read(&zip).unwrap();
    for (from, to) in [
        (&b"cafQ"[..], &b"caf\x82"[..]),
        (b"/QQ.", b"/\x8e\xe4."),
        (b"cafR", b"caf\xe9"),
        (b"cafS", b"caf\xff"),
        (b"dupA", b"dupZ"),
        (b"dupB", b"dupZ"),
    ] {
        let mut k = 0;
        while let Some(p) = raw[k..].windows(from.len()).position(|w| w == from) {
            raw[k + p..k + p + from.len()].copy_from_slice(to);
            k += p + from.len();
        }
    }
    std::fs::write(&zip, raw).unwrap();
    let out = dir.path().join("out");
    let o = run(BIN, &[s(&zip), "--out", s(&out), "--size", "16", "--quiet"]);
    assert!(o.status.success(), "{}", stderr_of(&o));
    let classes = std::fs::read_to_string(out.join("classes.tsv")).unwrap();
    assert_eq!(classes, "0\tA\n1\ta\n2\tc\n");
    let keys: std::collections::BTreeSet<String> = read_split(&out, "train")
        .into_iter()
        .map(|r| r.key)
        .collect();
    let want = [
        "train/A/x.jpg",
        "train/a/X.jpg",
        "train/a/x.jpg",
        "train/c/caf\u{a0}.jpg",
        "train/c/café.jpg",
        "train/c/cafΘ.jpg",
        "train/c/dupZ.jpg",
        "train/c/ÄΣ.jpg",
    ];
    assert_eq!(keys.iter().map(String::as_str).collect::<Vec<_>>(), want);
    // One rejection per extra copy, named as its packed copy's key: no
    // phantom duplicate for the two names that differ in non-UTF-8 bytes.
    let mut rej = rejections(&out);
    rej.sort();
    assert_eq!(rej.len(), 2, "{rej:?}");
    assert_eq!(rej[0].0, "train/c/café.jpg");
    assert_eq!(rej[1].0, "train/c/dupZ.jpg");
    assert!(
        rej.iter().all(|r| r.1.starts_with("duplicate entry name")),
        "{rej:?}"
    );

    // A folder: stray bytes are spelt \xNN (and the file is still read);
    // a name spelling that out for real clashes with it.
    use std::os::unix::ffi::OsStrExt;
    let src = dir.path().join("src");
    std::fs::create_dir_all(src.join("train/a")).unwrap();
    std::fs::create_dir_all(src.join("train/b")).unwrap();
    let raw_name = |b: &[u8]| src.join("train/a").join(std::ffi::OsStr::from_bytes(b));
    std::fs::write(raw_name(b"\xff1.jpg"), img(1)).unwrap();
    std::fs::write(raw_name(b"\xfe1.jpg"), img(2)).unwrap();
    std::fs::write(raw_name(b"\\xfe1.jpg"), img(3)).unwrap();
    std::fs::write(src.join("train/b/ok.jpg"), img(4)).unwrap();
    let out = dir.path().join("out-dir");
    let o = run(BIN, &[s(&src), "--out", s(&out), "--size", "16", "--quiet"]);
    assert!(o.status.success(), "{}", stderr_of(&o));
    let rows: BTreeMap<String, Vec<u8>> = read_split(&out, "train")
        .into_iter()
        .map(|r| (r.key, r.image))
        .collect();
    let keys: Vec<&str> = rows.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        [r"train/a/\xfe1.jpg", r"train/a/\xff1.jpg", "train/b/ok.jpg"]
    );
    assert!(rows[r"train/a/\xff1.jpg"] == img(1));
    let rej = rejections(&out);
    assert_eq!(rej.len(), 1, "{rej:?}");
    assert_eq!(rej[0].0, r"train/a/\xfe1.jpg");
    assert!(rej[0].1.starts_with("duplicate entry name"), "{}", rej[0].1);
}

/// 1×1, 1×1000 and 1000×1 images pack in both resize modes; files whose
/// headers claim 65535×65535 are refused by the pixel limit unread.
#[test]
fn one_pixel_images_and_lying_headers() {
    let dir = tempfile::tempdir().unwrap();
    let encode = |w: u32, h: u32, format| {
        let img = image::RgbImage::from_raw(w, h, pattern(w, h, 3)).unwrap();
        let mut out = std::io::Cursor::new(Vec::new());
        image::DynamicImage::ImageRgb8(img)
            .write_to(&mut out, format)
            .unwrap();
        out.into_inner()
    };
    let mut png_bomb = png_rgb(8, 8, 1);
    png_bomb[16..24].copy_from_slice(&[0, 0, 0xFF, 0xFF, 0, 0, 0xFF, 0xFF]);
    let crc = crc32fast::hash(&png_bomb[12..29]);
    png_bomb[29..33].copy_from_slice(&crc.to_be_bytes());
    let mut jpeg_bomb = jpeg_rgb(8, 8, 1);
    let sof = jpeg_bomb
        .windows(2)
        .position(|w| w == [0xFF, 0xC0])
        .unwrap();
    jpeg_bomb[sof + 5..sof + 9].copy_from_slice(&[0xFF; 4]);
    let mut gif_bomb = encode(8, 8, image::ImageFormat::Gif);
    gif_bomb[6..10].copy_from_slice(&[0xFF; 4]);
    let mut bmp_bomb = encode(8, 8, image::ImageFormat::Bmp);
    bmp_bomb[18..26].copy_from_slice(&[0xFF, 0xFF, 0, 0, 0xFF, 0xFF, 0, 0]);
    let entries: Entries = vec![
        ("train/a/1x1.png".into(), png_rgb(1, 1, 2)),
        ("train/a/1x1.jpg".into(), jpeg_rgb(1, 1, 2)),
        ("train/a/1x1000.png".into(), png_rgb(1, 1000, 2)),
        ("train/b/1000x1.png".into(), png_rgb(1000, 1, 2)),
        ("train/b/1000x1.jpg".into(), jpeg_rgb(1000, 1, 2)),
        ("train/c/bomb.png".into(), png_bomb),
        ("train/c/bomb.jpg".into(), jpeg_bomb),
        ("train/c/bomb.gif".into(), gif_bomb),
        ("train/c/bomb.bmp".into(), bmp_bomb),
        ("train/c/ok.png".into(), png_rgb(8, 8, 4)),
    ];
    let zip = dir.path().join("src.zip");
    write_zip(&zip, &entries);
    let one = pattern(1, 1, 2);
    for mode in ["stretch", "crop"] {
        let out = dir.path().join(mode);
        let args = [
            s(&zip),
            "--out",
            s(&out),
            "--encoding",
            "raw",
            "--size",
            "8",
        ];
        let o = run_within(&[&args[..], &["--resize", mode, "--quiet"]].concat(), 60);
        assert!(o.status.success(), "{}", stderr_of(&o));
        let mut rej = rejections(&out);
        rej.sort();
        let keys: Vec<&str> = rej.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "train/c/bomb.bmp",
                "train/c/bomb.gif",
                "train/c/bomb.jpg",
                "train/c/bomb.png"
            ]
        );
        for (key, reason) in &rej {
            assert!(
                reason.starts_with("image exceeds the pixel limit (65535x65535 "),
                "{key}: {reason}"
            );
        }
        let rows: BTreeMap<String, Vec<u8>> = read_split(&out, "train")
            .into_iter()
            .map(|r| (r.key, r.image))
            .collect();
        assert_eq!(rows.len(), 6);
        assert!(rows["train/a/1x1.png"] == one.repeat(64), "{mode}");
        for row in rows.values() {
            assert_eq!(row.len(), 8 * 8 * 3);
        }
        // One source row or column: every output row (or column) alike.
        let tall = &rows["train/a/1x1000.png"];
        assert!(
            tall.chunks(24).all(|r| r.chunks(3).all(|p| p == &r[..3])),
            "{mode}"
        );
        let wide = &rows["train/b/1000x1.png"];
        assert!(wide.chunks(24).all(|r| r == &wide[..24]), "{mode}");
    }
}

/// A small class-folder source under `top` (`train/{cat,dog}` ×2 and
/// `val/{cat,dog}` ×1), as (name, bytes).
fn small_folders(top: &str) -> Entries {
    let mut e = Vec::new();
    for (c, class) in ["cat", "dog"].iter().enumerate() {
        for i in 0..2u32 {
            e.push((
                format!("{top}train/{class}/{i}.jpg"),
                jpeg_rgb(16, 16, c as u32 * 10 + i),
            ));
        }
        e.push((
            format!("{top}val/{class}/v.jpg"),
            jpeg_rgb(16, 16, c as u32 + 50),
        ));
    }
    e
}

/// Packs `src` at 16×16 and returns the process output.
fn pack16(src: &Path, out: &Path) -> std::process::Output {
    run_within(
        &[s(src), "--out", s(out), "--size", "16", "--json", "--quiet"],
        60,
    )
}

#[test]
fn training_folders_in_several_places_are_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let extra = jpeg_rgb(16, 16, 99);
    for (case, extra_name, named) in [
        (
            "backup",
            "backup/train/cat/x.jpg",
            ["backup/train", "train"],
        ),
        ("training", "training/dog/x.jpg", ["train", "training"]),
        ("upper", "TRAIN/cat/x.jpg", ["TRAIN", "train"]),
    ] {
        let src = dir.path().join(case);
        let mut entries = small_folders("");
        entries.push((extra_name.into(), extra.clone()));
        write_dir(&src, &entries);
        let o = pack16(&src, &dir.path().join(format!("out-{case}")));
        assert_eq!(o.status.code(), Some(2), "{case}: {}", stderr_of(&o));
        let want = format!(
            "training folders in different places ({}, {}); keep one",
            named[0], named[1]
        );
        assert!(stderr_of(&o).contains(&want), "{case}: {}", stderr_of(&o));
    }
    // Two copies of the layout side by side, one with a class of its own.
    let src = dir.path().join("two");
    let mut entries = small_folders("a/");
    entries.push(("b/train/bird/b.jpg".into(), extra.clone()));
    write_dir(&src, &entries);
    let o = pack16(&src, &dir.path().join("out-two"));
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr_of(&o).contains("training folders in different places (a/train, b/train)"),
        "{}",
        stderr_of(&o)
    );
    // One train/ and one val/ at any depth of one top folder still pack.
    let src = dir.path().join("deep");
    write_dir(&src, &small_folders("x/y/z/"));
    let summary = json_of(&pack16(&src, &dir.path().join("out-deep")));
    assert_eq!(summary["splits"]["train"]["rows"], 4);
    assert_eq!(summary["splits"]["val"]["rows"], 2);
    assert_eq!(summary["notes"], serde_json::json!([]));
}

#[test]
fn hidden_class_folders_are_rejected_not_classes() {
    let dir = tempfile::tempdir().unwrap();
    for split in ["train", "val"] {
        // Under train/ the folder would take label 0; under val/ alone it
        // would stop the pack as a validation class without training images.
        let src = dir.path().join(split);
        let mut entries = small_folders("");
        let hidden = format!("{split}/.ipynb_checkpoints/0-checkpoint.jpg");
        entries.push((hidden.clone(), jpeg_rgb(16, 16, 77)));
        write_dir(&src, &entries);
        let out = dir.path().join(format!("out-{split}"));
        let summary = json_of(&pack16(&src, &out));
        assert_eq!(
            std::fs::read_to_string(out.join("classes.tsv")).unwrap(),
            "0\tcat\n1\tdog\n",
            "{split}"
        );
        assert_eq!(summary["rejected_by_reason"]["hidden folder"], 1);
        let m = manifest(&out);
        let rejected = m["rejected"].as_array().unwrap();
        assert_eq!(rejected.len(), 1, "{split}: {rejected:?}");
        assert_eq!(rejected[0]["key"], hidden.as_str());
        assert_eq!(rejected[0]["split"], split);
        assert!(rejected[0]["reason"]
            .as_str()
            .unwrap()
            .starts_with("hidden folder ('.ipynb_checkpoints'"));
        assert_eq!(m["totals"][split]["rejected"], 1);
    }
}

#[test]
fn the_exact_val_spelling_wins_over_a_case_variant() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    let mut entries = small_folders("");
    // `VAL` sorts before `val` byte by byte; it must not win for that.
    entries.push(("VAL/cat/x.jpg".into(), jpeg_rgb(16, 16, 60)));
    write_dir(&src, &entries);
    let out = dir.path().join("out");
    let summary = json_of(&pack16(&src, &out));
    assert_eq!(summary["splits"]["val"]["rows"], 2);
    assert!(read_split(&out, "val")
        .iter()
        .all(|r| r.key.starts_with("val/")));
    assert_eq!(
        summary["notes"][0],
        "validation split from 'val/'; ignored 'VAL/' (their files are listed as rejected)"
    );
    let rej = rejections(&out);
    assert_eq!(rej.len(), 1);
    assert_eq!(rej[0].0, "VAL/cat/x.jpg");
}

#[test]
fn class_folders_whose_names_clash_once_escaped_are_not_merged() {
    use std::os::unix::ffi::OsStrExt;
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    write_dir(&src, &small_folders(""));
    // `a<0xFF>b` and a folder literally named `a\xffb`: one key spelling.
    let raw = src
        .join("train")
        .join(std::ffi::OsStr::from_bytes(b"a\xffb"));
    let literal = src.join("train").join("a\\xffb");
    for (folder, seed) in [(&raw, 1), (&literal, 2)] {
        std::fs::create_dir_all(folder).unwrap();
        std::fs::write(folder.join(format!("{seed}.jpg")), jpeg_rgb(16, 16, seed)).unwrap();
    }
    let out = dir.path().join("out");
    let summary = json_of(&pack16(&src, &out));
    assert_eq!(summary["splits"]["train"]["rows"], 5);
    assert_eq!(
        std::fs::read_to_string(out.join("classes.tsv")).unwrap(),
        "0\ta\\xffb\n1\tcat\n2\tdog\n"
    );
    // As for files of clashing names, the last stored name (the byte) is
    // packed and the other is rejected, saying why.
    let rej = rejections(&out);
    assert_eq!(rej.len(), 1, "{rej:?}");
    assert_eq!(rej[0].0, "train/a\\xffb/2.jpg");
    assert!(
        rej[0]
            .1
            .starts_with("duplicate folder name: 2 folders have the name 'train/a\\xffb/'"),
        "{}",
        rej[0].1
    );
    assert!(read_split(&out, "train")
        .iter()
        .any(|r| r.key == "train/a\\xffb/1.jpg" && r.label == 0));
}

#[test]
fn source_name_is_the_folder_name_however_it_is_typed() {
    use std::os::unix::ffi::OsStrExt;
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("set");
    write_dir(&src, &small_folders(""));
    let name_of = |cwd: &Path, source: &str, out: &str| {
        let o = std::process::Command::new(BIN)
            .current_dir(cwd)
            .args([source, "--out", out, "--size", "16", "--quiet"])
            .output()
            .unwrap();
        assert!(o.status.success(), "{source}: {}", stderr_of(&o));
        manifest(&cwd.join(out))["source"]["name"].clone()
    };
    assert_eq!(name_of(&src, ".", "../o1"), "set");
    assert_eq!(name_of(&src, "./", "../o2"), "set");
    assert_eq!(name_of(&src.join("train"), "..", "../../o3"), "set");
    assert_eq!(name_of(dir.path(), "./set/.", "o4"), "set");
    // A name that is not UTF-8 is spelt as keys spell it.
    let odd = dir.path().join(std::ffi::OsStr::from_bytes(b"set\xff"));
    std::fs::rename(&src, &odd).unwrap();
    assert_eq!(name_of(&odd, ".", "../o5"), "set\\xff");
}

#[test]
fn an_out_that_is_a_file_or_a_dangling_link_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    write_dir(&src, &small_folders(""));
    let file = dir.path().join("notadir");
    std::fs::write(&file, b"hello").unwrap();
    let o = pack16(&src, &file);
    assert_eq!(o.status.code(), Some(2));
    let want = format!("--out {} is a file, not a folder", file.display());
    assert!(stderr_of(&o).contains(&want), "{}", stderr_of(&o));
    assert_eq!(std::fs::read(&file).unwrap(), b"hello");
    let link = dir.path().join("dangling");
    std::os::unix::fs::symlink(dir.path().join("gone/dir"), &link).unwrap();
    let o = pack16(&src, &link);
    assert_eq!(o.status.code(), Some(2));
    let want = format!(
        "--out {} is a symbolic link to a missing folder",
        link.display()
    );
    assert!(stderr_of(&o).contains(&want), "{}", stderr_of(&o));
}

fn mkfifo(path: &Path) {
    let c = std::ffi::CString::new(s(path)).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
}

#[test]
fn a_named_pipe_source_is_refused_without_opening_it() {
    let dir = tempfile::tempdir().unwrap();
    let pipe = dir.path().join("srcpipe");
    mkfifo(&pipe);
    // Opening the pipe would block until a writer came: the deadline
    // turns that into a failure.
    let o = run_within(
        &[s(&pipe), "--out", s(&dir.path().join("out")), "--quiet"],
        30,
    );
    assert_eq!(o.status.code(), Some(2));
    let want = format!(
        "SOURCE must be a zip file or a folder: {} is a named pipe",
        pipe.display()
    );
    assert!(stderr_of(&o).contains(&want), "{}", stderr_of(&o));
}

#[test]
fn a_folder_too_deep_to_name_is_an_unreadable_folder() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    write_dir(&src, &small_folders(""));
    // Folders made one below the other through descriptors, until the
    // path is longer than PATH_MAX (4096): no path names the deepest.
    let top = std::ffi::CString::new(s(&src.join("train/cat"))).unwrap();
    let long = std::ffi::CString::new("d".repeat(250)).unwrap();
    // SAFETY: valid NUL-terminated paths and descriptors this test owns.
    unsafe {
        let mut fd = libc::open(top.as_ptr(), libc::O_DIRECTORY | libc::O_RDONLY);
        assert!(fd >= 0);
        for _ in 0..18 {
            assert_eq!(libc::mkdirat(fd, long.as_ptr(), 0o755), 0);
            let next = libc::openat(fd, long.as_ptr(), libc::O_DIRECTORY | libc::O_RDONLY);
            assert!(next >= 0);
            libc::close(fd);
            fd = next;
        }
        libc::close(fd);
    }
    let out = dir.path().join("out");
    let summary = json_of(&pack16(&src, &out));
    assert_eq!(summary["splits"]["train"]["rows"], 4);
    let m = manifest(&out);
    let rejected = m["rejected"].as_array().unwrap();
    assert_eq!(rejected.len(), 1, "{rejected:?}");
    let key = rejected[0]["key"].as_str().unwrap();
    assert!(
        key.starts_with("train/cat/ddd") && key.ends_with("d/"),
        "{key}"
    );
    assert!(
        rejected[0]["reason"]
            .as_str()
            .unwrap()
            .starts_with("unreadable folder: "),
        "{}",
        rejected[0]["reason"]
    );
    assert_eq!(rejected[0]["split"], "train");
}

#[test]
fn macos_metadata_in_a_class_folder_counts_in_its_split() {
    let dir = tempfile::tempdir().unwrap();
    let mut entries = small_folders("data/");
    entries.push(("data/train/cat/.DS_Store".into(), b"Bud1".to_vec()));
    entries.push(("data/val/dog/._v.jpg".into(), b"\0\x05\x16\x07".to_vec()));
    entries.push(("data/test/dog/._w.jpg".into(), b"\0\x05\x16\x07".to_vec()));
    entries.push((
        "__MACOSX/data/train/cat/._0.jpg".into(),
        b"\0\x05\x16\x07".to_vec(),
    ));
    let zip = dir.path().join("src.zip");
    write_zip(&zip, &entries);
    let out = dir.path().join("out");
    let summary = json_of(&pack16(&zip, &out));
    let m = manifest(&out);
    let split_of: BTreeMap<String, serde_json::Value> = m["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .inspect(|r| assert_eq!(r["reason"], "macOS metadata"))
        .map(|r| (r["key"].as_str().unwrap().to_string(), r["split"].clone()))
        .collect();
    assert_eq!(split_of.len(), 4);
    assert_eq!(split_of["data/train/cat/.DS_Store"], "train");
    assert_eq!(split_of["data/val/dog/._v.jpg"], "val");
    // A test/ folder beside the chosen val/ is part of no split; nor is a
    // zip's __MACOSX/ shadow tree.
    assert!(split_of["data/test/dog/._w.jpg"].is_null());
    assert!(split_of["__MACOSX/data/train/cat/._0.jpg"].is_null());
    assert_eq!(m["totals"]["train"]["rejected"], 1);
    assert_eq!(m["totals"]["val"]["rejected"], 1);
    assert_eq!(summary["splits"]["train"]["rejected"], 1);
}

/// A training class whose entries the source cannot read is still a
/// class: its validation images pack, and the summary says it lost its
/// training images, as for images rejected when decoded. A training folder
/// holding no image at all is not one, and the error says what it holds.
#[test]
fn a_training_class_of_unreadable_entries_is_still_a_class() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    write_dir(
        &src,
        &[
            ("train/a/0.jpg".into(), jpeg_rgb(16, 16, 0)),
            ("val/a/1.jpg".into(), jpeg_rgb(16, 16, 1)),
            ("val/b/2.jpg".into(), jpeg_rgb(16, 16, 2)),
        ],
    );
    std::fs::create_dir_all(src.join("train/b")).unwrap();
    mkfifo(&src.join("train/b/3.jpg"));
    let out = dir.path().join("out");
    let summary = json_of(&pack16(&src, &out));
    assert_eq!(summary["num_classes"], 2, "{summary}");
    assert_eq!(summary["splits"]["val"]["rows"], 2, "{summary}");
    let labels: std::collections::BTreeMap<String, u32> = read_split(&out, "val")
        .into_iter()
        .map(|r| (r.key, r.label))
        .collect();
    assert_eq!(labels["val/b/2.jpg"], 1, "{labels:?}");
    let warnings = warnings_of(&summary);
    assert!(
        warnings.contains(
            &"1 of 2 classes have no training rows: 'b' (label 1, all 1 training entries \
              unreadable)"
                .to_string()
        ),
        "{warnings:?}"
    );
    assert!(rejections(&out)
        .iter()
        .any(|(k, r)| k == "train/b/3.jpg" && r.starts_with("not a regular file")));

    // Only macOS metadata in train/b: no class b, and the error says why.
    std::fs::remove_file(src.join("train/b/3.jpg")).unwrap();
    std::fs::write(src.join("train/b/.DS_Store"), b"junk").unwrap();
    let o = pack16(&src, &dir.path().join("out2"));
    assert_eq!(o.status.code(), Some(2), "{}", stderr_of(&o));
    assert!(
        stderr_of(&o).contains(
            "validation class 'b' (entry 'val/b/2.jpg') has no training images (its training \
             folder holds no image: 'train/b/.DS_Store' was rejected: macOS metadata)"
        ),
        "{}",
        stderr_of(&o)
    );
}

/// Class names that differ only in Unicode normalization (macOS writes
/// file names decomposed): told apart in the error and the warning.
#[test]
fn class_names_in_other_unicode_normalization_forms_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let (nfc, nfd) = ("caf\u{e9}", "cafe\u{301}");
    let src = dir.path().join("src");
    write_dir(
        &src,
        &[
            (format!("train/{nfc}/0.jpg"), jpeg_rgb(16, 16, 0)),
            (format!("val/{nfd}/1.jpg"), jpeg_rgb(16, 16, 1)),
        ],
    );
    let o = pack16(&src, &dir.path().join("out"));
    assert_eq!(o.status.code(), Some(2), "{}", stderr_of(&o));
    assert!(
        stderr_of(&o).contains(
            "the training class \"caf\u{e9}\" is the same name in another Unicode normalization \
             form (\"cafe\\u{301}\" here)"
        ),
        "{}",
        stderr_of(&o)
    );
    // Both spellings among the training classes: two classes, and a warning.
    let src = dir.path().join("src2");
    write_dir(
        &src,
        &[
            (format!("train/{nfc}/0.jpg"), jpeg_rgb(16, 16, 0)),
            (format!("train/{nfd}/1.jpg"), jpeg_rgb(16, 16, 1)),
        ],
    );
    let summary = json_of(&pack16(&src, &dir.path().join("out2")));
    assert_eq!(summary["num_classes"], 2, "{summary}");
    let warnings = warnings_of(&summary);
    assert!(
        warnings.iter().any(|w| w.starts_with(
            "classes \"cafe\\u{301}\" (label 0), \"caf\u{e9}\" (label 1) are one name in \
             different Unicode normalization forms"
        )),
        "{warnings:?}"
    );
}

/// A summary that cannot be written (stdout on a full disk) is an error
/// with exit code 2, not a panic.
#[test]
fn a_summary_stdout_cannot_take_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    write_dir(&src, &[("train/a/0.jpg".into(), jpeg_rgb(16, 16, 0))]);
    let full = std::fs::File::options()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let o = std::process::Command::new(BIN)
        .args([
            s(&src),
            "--out",
            s(&dir.path().join("out")),
            "--size",
            "16",
            "--json",
            "--quiet",
        ])
        .stdout(full)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", stderr_of(&o));
    let e = stderr_of(&o);
    assert!(
        e.contains("writing the summary to stdout") && !e.contains("panicked"),
        "{e}"
    );
}

/// IDX images are held to --max-pixels like every decoded image.
#[test]
fn idx_images_are_held_to_max_pixels() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("idx");
    let px: Vec<u8> = (0..3 * 16).map(|i| i as u8).collect();
    write_dir(
        &src,
        &[
            (
                "train-images-idx3-ubyte.gz".into(),
                idx_bytes(3, &[3, 4, 4], &px),
            ),
            (
                "train-labels-idx1-ubyte.gz".into(),
                idx_bytes(1, &[3], &[0, 1, 0]),
            ),
        ],
    );
    let args = |out: &Path, limit: &'static str| {
        [
            s(&src).to_string(),
            "--out".into(),
            s(out).to_string(),
            "--size".into(),
            "4".into(),
            "--max-pixels".into(),
            limit.into(),
            "--json".into(),
            "--quiet".into(),
        ]
    };
    let out = dir.path().join("out16");
    let a = args(&out, "16");
    let summary = json_of(&run_within(
        &a.iter().map(String::as_str).collect::<Vec<_>>(),
        60,
    ));
    assert_eq!(summary["splits"]["train"]["rows"], 3, "{summary}");
    // One pixel fewer: every image is refused, so nothing is packed.
    let out = dir.path().join("out15");
    let a = args(&out, "15");
    let o = run_within(&a.iter().map(String::as_str).collect::<Vec<_>>(), 60);
    assert_eq!(o.status.code(), Some(2), "{}", stderr_of(&o));
    let rej = rejections(&out);
    assert_eq!(rej.len(), 3, "{rej:?}");
    assert!(
        rej.iter()
            .all(|(_, r)| r == "image exceeds the pixel limit (4x4 > 15 pixels)"),
        "{rej:?}"
    );
}

fn warnings_of(summary: &serde_json::Value) -> Vec<String> {
    summary["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn an_empty_split_names_its_rejected_folder_or_list() {
    let dir = tempfile::tempdir().unwrap();
    // val/ is a link back up (a cycle): rejected whole.
    let src = dir.path().join("folders");
    write_dir(&src, &small_folders(""));
    std::fs::remove_dir_all(src.join("val")).unwrap();
    std::os::unix::fs::symlink(".", src.join("val")).unwrap();
    let summary = json_of(&pack16(&src, &dir.path().join("out1")));
    let warnings = warnings_of(&summary);
    assert!(
        warnings.contains(
            &"val: no rows (its folder 'val/' was rejected: symbolic link cycle: links to a \
              folder that contains it)"
                .to_string()
        ),
        "{warnings:?}"
    );
    // val.txt is a named pipe: rejected unread.
    let src = dir.path().join("lists");
    write_dir(
        &src,
        &[
            ("train/0.jpg".into(), jpeg_rgb(16, 16, 1)),
            ("train/1.jpg".into(), jpeg_rgb(16, 16, 2)),
            ("val/2.jpg".into(), jpeg_rgb(16, 16, 3)),
            (
                "train.txt".into(),
                b"train/0.jpg 0\ntrain/1.jpg 1\n".to_vec(),
            ),
        ],
    );
    mkfifo(&src.join("val.txt"));
    let out = dir.path().join("out2");
    let summary = json_of(&pack16(&src, &out));
    let warnings = warnings_of(&summary);
    assert!(
        warnings.contains(
            &"val: no rows (its list file 'val.txt' was rejected: not a regular file (named \
              pipe))"
                .to_string()
        ),
        "{warnings:?}"
    );
    let m = manifest(&out);
    assert!(m["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["key"] == "val.txt" && r["split"] == "val"));
    // A source without val images still says so.
    let src = dir.path().join("trainonly");
    write_dir(
        &src,
        &small_folders("")
            .into_iter()
            .filter(|(n, _)| n.starts_with("train/"))
            .collect::<Vec<_>>(),
    );
    let summary = json_of(&pack16(&src, &dir.path().join("out3")));
    assert!(
        warnings_of(&summary).contains(&"val: no rows (the source has no val images)".to_string()),
        "{summary}"
    );
    // Lists without a val list, beside a val folder no list names: the
    // warning says there is no list, and which files went unlisted.
    let src = dir.path().join("nolist");
    write_dir(
        &src,
        &[
            ("train/0.jpg".into(), jpeg_rgb(16, 16, 1)),
            ("train/1.jpg".into(), jpeg_rgb(16, 16, 2)),
            ("val/a/2.jpg".into(), jpeg_rgb(16, 16, 3)),
            (
                "train.txt".into(),
                b"train/0.jpg 0\ntrain/1.jpg 1\n".to_vec(),
            ),
        ],
    );
    let summary = json_of(&pack16(&src, &dir.path().join("out4")));
    let warnings = warnings_of(&summary);
    assert!(
        warnings.contains(
            &"val: no rows (the source has no val list file, e.g. val.csv or val.txt; 1 file no \
              list names was rejected: 'val/a/2.jpg')"
                .to_string()
        ),
        "{warnings:?}"
    );
}

#[test]
fn max_pixels_rejects_the_same_images_in_every_mode() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    // 16×16 JPEGs pass through at --size 16 (256 pixels); 8×8 PNGs (64)
    // are converted. A limit of 100 pixels refuses the JPEGs in any mode.
    write_dir(
        &src,
        &[
            ("train/a/1.jpg".into(), jpeg_rgb(16, 16, 1)),
            ("train/a/2.png".into(), png_rgb(8, 8, 2)),
            ("train/b/3.jpg".into(), jpeg_rgb(16, 16, 3)),
            ("train/b/4.png".into(), png_rgb(8, 8, 4)),
        ],
    );
    let modes: [&[&str]; 3] = [&[], &["--verify", "decode"], &["--encoding", "raw"]];
    for (k, mode) in modes.iter().enumerate() {
        let out = dir.path().join(format!("out{k}"));
        let args = [
            &[
                s(&src),
                "--out",
                s(&out),
                "--size",
                "16",
                "--max-pixels",
                "100",
                "--json",
                "--quiet",
            ][..],
            mode,
        ]
        .concat();
        let summary = json_of(&run_within(&args, 60));
        assert_eq!(summary["splits"]["train"]["rows"], 2, "{mode:?}");
        let mut rej = rejections(&out);
        rej.sort();
        let want = "image exceeds the pixel limit (16x16 > 100 pixels)".to_string();
        assert_eq!(
            rej,
            [
                ("train/a/1.jpg".to_string(), want.clone()),
                ("train/b/3.jpg".to_string(), want)
            ],
            "{mode:?}"
        );
    }
}

/// Damaged coded data libjpeg reports ("Corrupt JPEG data") and decodes
/// anyway, as Pillow does without a word: packed by default, rejected
/// with `--verify decode` on both paths (stored untouched and decoded).
#[test]
fn verify_decode_rejects_coded_data_libjpeg_reports() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    let whole = jpeg_rgb(16, 16, 5);
    let eoi = whole.len() - 2;
    // Twelve bytes after the scan's last block (libjpeg: "extraneous bytes
    // before marker 0xd9"), and the scan's last byte gone ("premature end
    // of data segment"); see tests/data/jpeg-scan/make.py.
    let extra = [&whole[..eoi], &[0u8; 12][..], &whole[eoi..]].concat();
    let short = [&whole[..eoi - 1], &whole[eoi..]].concat();
    write_dir(
        &src,
        &[
            ("train/a/whole.jpg".into(), whole.clone()),
            ("train/a/extra.jpg".into(), extra),
            ("train/b/short.jpg".into(), short),
        ],
    );
    for (k, mode) in [
        &[][..],
        &["--verify", "decode"],
        &["--verify", "decode", "--encoding", "raw"],
    ]
    .iter()
    .enumerate()
    {
        let out = dir.path().join(format!("out{k}"));
        let args = [
            &[
                s(&src),
                "--out",
                s(&out),
                "--size",
                "16",
                "--json",
                "--quiet",
            ][..],
            mode,
        ]
        .concat();
        let summary = json_of(&run_within(&args, 60));
        let mut rej = rejections(&out);
        rej.sort();
        if mode.is_empty() {
            assert!(rej.is_empty(), "{rej:?}");
            assert_eq!(summary["splits"]["train"]["rows"], 3);
            continue;
        }
        assert_eq!(summary["splits"]["train"]["rows"], 1, "{mode:?}");
        assert_eq!(rej.len(), 2, "{mode:?}: {rej:?}");
        assert_eq!(rej[0].0, "train/a/extra.jpg");
        assert!(
            rej[0]
                .1
                .ends_with("12 bytes after the last block of its coded data"),
            "{mode:?}: {rej:?}"
        );
        assert_eq!(rej[1].0, "train/b/short.jpg");
        assert!(
            rej[1].1.contains("ends before its last block"),
            "{mode:?}: {rej:?}"
        );
    }
}

/// Progressive scans out of order ("Inconsistent progression sequence":
/// a scan lost, or its header changed) decode without an error to damaged
/// pixels in every decoder; their order is checked from the scan headers,
/// so they are rejected under the default `--verify header` too, stored
/// untouched or decoded.
#[test]
fn progressive_scans_out_of_order_are_rejected_by_default() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    // 64×48, 4:2:0, ten scans (tests/data/jpeg-scan/make.py).
    let whole = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/jpeg-scan/progressive-restart.jpg"),
    )
    .unwrap();
    // The first scan (the DC of all components) cut out, as
    // tests/data/jpeg-scan/progression.py does.
    let sos = segment_at(&whole, 0xDA);
    let mut end = sos + 2 + usize::from(u16::from_be_bytes([whole[sos + 2], whole[sos + 3]]));
    while whole[end] != 0xFF || matches!(whole[end + 1], 0x00 | 0xD0..=0xD7) {
        end += 1;
    }
    let no_dc = [&whole[..sos], &whole[end..]].concat();
    write_dir(
        &src,
        &[
            ("train/a/whole.jpg".into(), whole.clone()),
            ("train/b/no_dc.jpg".into(), no_dc),
        ],
    );
    // Stored untouched, decoded to raw pixels, decoded and re-encoded.
    for (k, mode) in [
        &["--size", "64x48"][..],
        &["--size", "64x48", "--encoding", "raw"],
        &["--size", "32"],
    ]
    .iter()
    .enumerate()
    {
        let out = dir.path().join(format!("out{k}"));
        let args = [&[s(&src), "--out", s(&out), "--json", "--quiet"][..], mode].concat();
        let summary = json_of(&run_within(&args, 60));
        assert_eq!(summary["splits"]["train"]["rows"], 1, "{mode:?}");
        let rej = rejections(&out);
        assert_eq!(rej.len(), 1, "{mode:?}: {rej:?}");
        assert_eq!(rej[0].0, "train/b/no_dc.jpg");
        assert!(
            rej[0].1.contains(
                "scan 1: inconsistent progression sequence for component 0 coefficient 0: \
                 an AC scan before any DC scan of the component"
            ),
            "{mode:?}: {rej:?}"
        );
    }
    // The intact file was stored byte for byte in the first pack.
    let stored = dir.path().join("out0");
    let files: Vec<_> = std::fs::read_dir(&stored)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
        .collect();
    assert_eq!(files.len(), 1);
    let blob = std::fs::read(&files[0]).unwrap();
    assert!(blob.windows(whole.len()).any(|w| w == whole.as_slice()));
}

/// `bytes` without its marker segments `marker` before the first scan.
fn without_segments(bytes: &[u8], marker: u8) -> Vec<u8> {
    let mut out = bytes[..2].to_vec();
    let mut pos = 2;
    loop {
        let m = bytes[pos + 1];
        let len = usize::from(u16::from_be_bytes([bytes[pos + 2], bytes[pos + 3]])) + 2;
        if m == 0xDA {
            out.extend_from_slice(&bytes[pos..]);
            return out;
        }
        if m != marker {
            out.extend_from_slice(&bytes[pos..pos + len]);
        }
        pos += len;
    }
}

/// Offset of the first segment `marker` of a JPEG.
fn segment_at(bytes: &[u8], marker: u8) -> usize {
    bytes.windows(2).position(|w| w == [0xFF, marker]).unwrap()
}

/// Under the default `--verify header` a JPEG is stored untouched only when
/// its structure holds for the loader's decoder: what no reader decodes is
/// rejected naming what is wrong, what libjpeg reads with a warning or its
/// default tables (Motion-JPEG frames, bytes between segments) is decoded
/// to the original's pixels and re-encoded, and sampling the decoder would
/// turn into garbage is rejected as unsupported.
#[test]
fn jpeg_structure_is_checked_before_a_jpeg_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let n = 32u32;
    let plain = jpeg_rgb(n, n, 7);
    let want = ebv::image::decode_rgb8(&plain, Default::default())
        .unwrap()
        .data;
    let sos = segment_at(&plain, 0xDA);
    // Bytes at offsets set to values.
    let patched = |at: &[(usize, u8)]| {
        let mut b = plain.clone();
        for &(i, v) in at {
            b[i] = v;
        }
        b
    };
    let mut junk = plain.clone();
    junk.splice(sos..sos, [0x13, 0x37, 0x00]);
    // A real frame whose chroma is sampled finer than its luma (made by
    // tests/data/jpeg-layouts/make.py, with Pillow's decode beside it).
    let layouts = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/jpeg-layouts");
    let finer = std::fs::read(layouts.join("chroma-finer-37x23.jpg")).unwrap();
    let entries: Entries = vec![
        ("train/a/plain.jpg".into(), plain.clone()),
        ("train/a/mjpeg.jpg".into(), without_segments(&plain, 0xC4)),
        ("train/a/junk.jpg".into(), junk),
        ("train/b/no-dqt.jpg".into(), without_segments(&plain, 0xDB)),
        ("train/a/chroma-finer.jpg".into(), finer),
        ("train/b/scan-id.jpg".into(), patched(&[(sos + 5, 9)])),
        (
            "train/b/icon.ico".into(),
            b"\0\0\x01\0\x01\0\x10\x10\0\0".to_vec(),
        ),
    ];
    let sources: BTreeMap<String, Vec<u8>> = entries.iter().cloned().collect();
    let src = dir.path().join("src");
    write_dir(&src, &entries);
    for encoding in ["jpeg", "raw"] {
        let out = dir.path().join(encoding);
        let o = run(
            BIN,
            &[
                s(&src),
                "--out",
                s(&out),
                "--size",
                "32",
                "--encoding",
                encoding,
                // Full chroma, so that a re-encode stays within a few levels
                // of the decode at every pixel of this sharp pattern.
                "--subsampling",
                "444",
                "--quiet",
            ],
        );
        assert!(o.status.success(), "{}", stderr_of(&o));
        let mut rej = rejections(&out);
        rej.sort();
        assert_eq!(
            rej,
            [
                (
                    "train/b/icon.ico".to_string(),
                    "unsupported image format: ico".into()
                ),
                (
                    "train/b/no-dqt.jpg".into(),
                    "corrupt jpeg: no quantisation table 0 for component 0".into()
                ),
                (
                    "train/b/scan-id.jpg".into(),
                    "corrupt jpeg: scan names component 9, which the frame does not have".into()
                ),
            ]
        );
        let rows = read_split(&out, "train");
        assert_eq!(rows.len(), 4);
        for row in rows {
            if row.key == "train/a/chroma-finer.jpg" {
                // Decoded by the other decoder, resized, never stored as is.
                assert_ne!(row.image, sources[&row.key]);
                continue;
            }
            let passed = row.image == sources[&row.key];
            assert_eq!(passed, encoding == "jpeg" && row.key == "train/a/plain.jpg");
            let px = if encoding == "raw" {
                row.image.clone()
            } else {
                ebv::image::decode_rgb8(&row.image, Default::default())
                    .unwrap()
                    .data
            };
            // Raw rows hold the decode itself; re-encoded ones are within
            // a q95 round trip of it.
            let worst = px
                .iter()
                .zip(&want)
                .map(|(a, b)| (i32::from(*a) - i32::from(*b)).abs())
                .max()
                .unwrap();
            let limit = if encoding == "raw" || passed { 0 } else { 12 };
            assert!(worst <= limit, "{} ({encoding}): off by {worst}", row.key);
        }
    }
}

/// Lossless JPEGs (`tests/data/jpeg-lossless`, made by its `make.py` with
/// Pillow's decode of each beside it) are packed with exactly Pillow's
/// pixels and never stored untouched; those Pillow cannot read are
/// rejected with their reason.
#[test]
fn lossless_jpegs_pack_with_pillows_pixels() {
    let dir = tempfile::tempdir().unwrap();
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/jpeg-lossless");
    let read = |name: &str, ext: &str| std::fs::read(data.join(format!("{name}.{ext}"))).unwrap();
    let decoded = [
        "rgb-adobe-p1-37x23",
        "gray-p4-37x23",
        "rgb-ids123-p5-37x23",
        "rgb-pt1-p1-37x23",
        "gray-restart-p1-37x23",
        "rgb-separate-p4-37x23",
    ];
    let refused = [
        ("ycc-jfif-p1-37x23", "YCbCr-coded lossless jpeg (SOF3)"),
        ("ycc-adobe-p1-37x23", "YCbCr-coded lossless jpeg (SOF3)"),
    ];
    let entries: Entries = decoded
        .iter()
        .chain(refused.iter().map(|(n, _)| n))
        .map(|n| (format!("train/a/{n}.jpg"), read(n, "jpg")))
        .collect();
    let src = dir.path().join("src");
    write_dir(&src, &entries);
    for encoding in ["raw", "jpeg"] {
        let out = dir.path().join(encoding);
        let args = [
            s(&src),
            "--out",
            s(&out),
            "--size",
            "37x23",
            "--encoding",
            encoding,
        ];
        let o = run(BIN, &[&args[..], &["--quiet"]].concat());
        assert!(o.status.success(), "{}", stderr_of(&o));
        let mut rej = rejections(&out);
        rej.sort();
        let want: Vec<(String, String)> = refused
            .iter()
            .map(|(n, why)| {
                (
                    format!("train/a/{n}.jpg"),
                    format!("unsupported image format: {why}"),
                )
            })
            .collect();
        let mut want = want;
        want.sort();
        assert_eq!(rej, want);
        let rows = read_split(&out, "train");
        assert_eq!(rows.len(), decoded.len());
        for row in rows {
            let name = row
                .key
                .trim_start_matches("train/a/")
                .trim_end_matches(".jpg");
            let pillow = read(name, "rgb");
            assert!(row.image != read(name, "jpg"), "{name} stored untouched");
            if encoding == "raw" {
                assert!(row.image == pillow, "{name}: not Pillow's pixels");
            } else {
                // Re-encoded from exactly those pixels (defaults q95, 4:2:0).
                let want = ebv::image::encode_jpeg(&pillow, 37, 23, 95, Default::default());
                assert!(
                    row.image == want.unwrap(),
                    "{name}: not Pillow's pixels re-encoded"
                );
            }
        }
    }
}

/// TIFF sources (`tests/data/tiff`, Pillow's decode of each beside it) are
/// packed with Pillow's pixels; a coding the decoder lacks is rejected as
/// unsupported, naming it.
#[test]
fn tiffs_pack_with_pillows_pixels() {
    let dir = tempfile::tempdir().unwrap();
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/tiff");
    let read = |name: &str, ext: &str| std::fs::read(data.join(format!("{name}.{ext}"))).unwrap();
    let names = [
        "rgb-lzw",
        "cmyk-packbits",
        "palette-raw",
        "bigtiff",
        "bilevel-group3",
    ];
    let entries: Entries = names
        .iter()
        .map(|n| (format!("train/a/{n}.tif"), read(n, "tif")))
        .collect();
    let src = dir.path().join("src");
    write_dir(&src, &entries);
    let out = dir.path().join("out");
    let o = run(
        BIN,
        &[
            s(&src),
            "--out",
            s(&out),
            "--size",
            "40x24",
            "--encoding",
            "raw",
            "--quiet",
        ],
    );
    assert!(o.status.success(), "{}", stderr_of(&o));
    assert_eq!(
        rejections(&out),
        [(
            "train/a/bilevel-group3.tif".to_string(),
            "unsupported image format: tiff (compression method Fax3 is unsupported)".to_string()
        )]
    );
    let rows = read_split(&out, "train");
    assert_eq!(rows.len(), 4);
    for row in rows {
        let name = row
            .key
            .trim_start_matches("train/a/")
            .trim_end_matches(".tif");
        assert!(
            row.image == read(name, "rgb"),
            "{name}: not Pillow's pixels"
        );
    }
}

/// (key, label) of a split's rows, sorted.
fn key_labels(out: &Path, split: &str) -> Vec<(String, u32)> {
    let mut rows: Vec<(String, u32)> = read_split(out, split)
        .into_iter()
        .map(|r| (r.key, r.label))
        .collect();
    rows.sort();
    rows
}

/// Paths as other tools write them: a zip made on Windows (`\` separators),
/// doubled and `./` components, list rows in `find .` form or absolute
/// paths from the machine the list was made on, a CSV whose label column
/// must be named, and a `--class-names` that would reorder the classes.
#[test]
fn paths_written_elsewhere_resolve_and_column_choices_are_explicit() {
    let dir = tempfile::tempdir().unwrap();
    let img = |seed| jpeg_rgb(16, 16, seed);
    let zip = dir.path().join("win.zip");
    write_zip(
        &zip,
        &[
            ("train\\a\\1.jpg".into(), img(1)),
            ("train\\b\\1.jpg".into(), img(2)),
            ("train//a/2.jpg".into(), img(3)),
            ("./val/a/3.jpg".into(), img(4)),
            ("val/b/4.jpg".into(), img(5)),
        ],
    );
    let out = dir.path().join("zout");
    let o = run(BIN, &[s(&zip), "--out", s(&out), "--size", "16", "--quiet"]);
    assert!(o.status.success(), "{}", stderr_of(&o));
    assert!(rejections(&out).is_empty(), "{:?}", rejections(&out));
    let keys = |split| key_labels(&out, split);
    assert_eq!(
        keys("train"),
        [
            ("train/a/1.jpg".to_string(), 0),
            ("train/a/2.jpg".into(), 0),
            ("train/b/1.jpg".into(), 1)
        ]
    );
    assert_eq!(
        keys("val"),
        [("val/a/3.jpg".to_string(), 0), ("val/b/4.jpg".into(), 1)]
    );
    // Two entries that read as one name: the one not packed is named as
    // stored.
    let clash = dir.path().join("clash.zip");
    write_zip(
        &clash,
        &[
            ("train\\a\\1.jpg".into(), img(1)),
            ("train/a/1.jpg".into(), img(2)),
            ("train/b/1.jpg".into(), img(3)),
        ],
    );
    let cout = dir.path().join("cout");
    let o = run(
        BIN,
        &[s(&clash), "--out", s(&cout), "--size", "16", "--quiet"],
    );
    assert!(o.status.success(), "{}", stderr_of(&o));
    let rej = rejections(&cout);
    assert_eq!(rej.len(), 1, "{rej:?}");
    assert_eq!(rej[0].0, "train/a/1.jpg");
    assert!(
        rej[0].1.contains("this one is stored as 'train\\a\\1.jpg'"),
        "{rej:?}"
    );

    // Lists: the same file name in two class folders, so only the path
    // tells them apart.
    let src = dir.path().join("lists");
    write_dir(
        &src,
        &[
            ("train/cat/1.jpg".into(), img(6)),
            ("train/dog/1.jpg".into(), img(7)),
            ("val/cat/2.jpg".into(), img(8)),
            ("val/dog/2.jpg".into(), img(9)),
            (
                "train.txt".into(),
                b"./train/cat/1.jpg cat\n.//train/dog/1.jpg dog\n".to_vec(),
            ),
            (
                "val.csv".into(),
                b"path,width,species\n/home/me/data/val/cat/2.jpg,16,cat\n\
                  /home/me/data/val/dog/2.jpg,16,dog\n"
                    .to_vec(),
            ),
        ],
    );
    let lout = dir.path().join("lout");
    let names = dir.path().join("names.txt");
    let args = |extra: &[&'static str], class_names: bool| {
        let mut a = vec![
            s(&src),
            "--out",
            s(&lout),
            "--size",
            "16",
            "--quiet",
            "--force",
        ];
        a.extend_from_slice(extra);
        if class_names {
            a.extend_from_slice(&["--class-names", s(&names)]);
        }
        a
    };
    // Three columns and no header word for the label: asked, not guessed.
    let o = run(BIN, &args(&[], false));
    assert_eq!(o.status.code(), Some(2));
    let err = stderr_of(&o);
    assert!(
        err.contains("val.csv: rows have up to 3 fields") && err.contains("--label-column"),
        "{err}"
    );
    let o = run(BIN, &args(&["--label-column", "Species"], false));
    assert!(o.status.success(), "{}", stderr_of(&o));
    assert!(rejections(&lout).is_empty(), "{:?}", rejections(&lout));
    // How the absolute paths were read is said, with an example.
    let notes = manifest(&lout)["options"]["layout_notes"].clone();
    assert!(
        notes.as_array().unwrap().iter().any(|n| n
            == "val.csv: 2 rows named their files by a shorter tail of the path (line 2: \
                '/home/me/data/val/cat/2.jpg' is 'val/cat/2.jpg')"),
        "{notes}"
    );
    for split in ["train", "val"] {
        let rows = key_labels(&lout, split);
        let k = if split == "train" { "1" } else { "2" };
        assert_eq!(
            rows,
            [
                (format!("{split}/cat/{k}.jpg"), 0),
                (format!("{split}/dog/{k}.jpg"), 1)
            ]
        );
    }

    // --class-names renames by position: the source's own names in
    // another order would swap the labels' meaning, so they are refused.
    std::fs::write(&names, "dog\ncat\n").unwrap();
    let o = run(BIN, &args(&["--label-column", "species"], true));
    assert_eq!(o.status.code(), Some(2));
    let err = stderr_of(&o);
    assert!(
        err.contains("line 1 names class 0 \"dog\", which is the source's class 1"),
        "{err}"
    );
    std::fs::write(&names, "kitty\npuppy\n").unwrap();
    let o = run(BIN, &args(&["--label-column", "species"], true));
    assert!(o.status.success(), "{}", stderr_of(&o));
    assert_eq!(
        std::fs::read_to_string(lout.join("classes.tsv")).unwrap(),
        "0\tkitty\n1\tpuppy\n"
    );

    // A listed file that is missing is not stood in for by another file of
    // the same name in another folder; a source nested deeper than the
    // list says still resolves.
    let src = dir.path().join("nested");
    write_dir(
        &src,
        &[
            ("deep/set/train/cat/5.jpg".into(), img(10)),
            ("deep/set/train/dog/3.jpg".into(), img(11)),
            ("deep/set/train/dog/6.jpg".into(), img(12)),
            (
                "train.txt".into(),
                b"train/cat/5.jpg cat\ntrain/cat/3.jpg cat\ntrain/dog/6.jpg dog\n".to_vec(),
            ),
        ],
    );
    let nout = dir.path().join("nout");
    let o = run(
        BIN,
        &[s(&src), "--out", s(&nout), "--size", "16", "--quiet"],
    );
    assert!(o.status.success(), "{}", stderr_of(&o));
    let rows = key_labels(&nout, "train");
    assert_eq!(
        rows,
        [
            ("deep/set/train/cat/5.jpg".to_string(), 0),
            ("deep/set/train/dog/6.jpg".into(), 1)
        ]
    );
    let mut rej = rejections(&nout);
    rej.sort();
    assert_eq!(rej.len(), 2, "{rej:?}");
    assert_eq!(rej[0].0, "deep/set/train/dog/3.jpg");
    assert!(rej[0].1.contains("not listed"), "{rej:?}");
    assert_eq!(rej[1].0, "train/cat/3.jpg");
    assert!(rej[1].1.contains("not found"), "{rej:?}");

    // Columns the other way round: no row names a file, and the error
    // says so (not that the layout is wrong).
    let src = dir.path().join("swapped");
    write_dir(
        &src,
        &[
            ("img/1.jpg".into(), img(13)),
            ("img/2.jpg".into(), img(14)),
            (
                "train.csv".into(),
                b"cat,img/1.jpg\ndog,img/2.jpg\n".to_vec(),
            ),
        ],
    );
    let sout = dir.path().join("sout");
    let o = run(
        BIN,
        &[s(&src), "--out", s(&sout), "--size", "16", "--quiet"],
    );
    assert_eq!(o.status.code(), Some(2));
    let err = stderr_of(&o);
    assert!(
        err.contains("no row of its list files names an image of the source (first: 'dog'")
            && err.contains("--image-column and --label-column"),
        "{err}"
    );
}

#[test]
fn subsampling_flag_decides_the_chroma_of_reencoded_images_only() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    let passthrough = jpeg_rgb(16, 16, 9);
    let mut entries = vec![("train/a/p.jpg".to_string(), passthrough.clone())];
    for i in 0..4 {
        entries.push((
            format!("train/{}/{i}.png", ["a", "b"][i % 2]),
            png_rgb(24, 20, i as u32),
        ));
    }
    write_dir(&src, &entries);
    let out = dir.path().join("out");
    let pack = |extra: &[&str]| {
        let args = [s(&src), "--out", s(&out), "--size", "16x16", "--quiet"];
        run(BIN, &[&args[..], extra].concat())
    };
    let stored = |out: &Path| -> BTreeMap<String, Vec<u8>> {
        read_shard(&out.join("train-00000.parquet"))
            .into_iter()
            .map(|r| (r.key, r.image))
            .collect()
    };

    for (flag, factors) in [
        (None, [0x22, 0x11, 0x11]),
        (Some("444"), [0x11, 0x11, 0x11]),
        (Some("4:2:0"), [0x22, 0x11, 0x11]),
    ] {
        let mut extra = vec!["--force"];
        if let Some(f) = flag {
            extra.extend(["--subsampling", f]);
        }
        let o = pack(&extra);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let want = if factors[0] == 0x22 { "420" } else { "444" };
        assert_eq!(manifest(&out)["options"]["subsampling"], want, "{flag:?}");
        let images = stored(&out);
        assert_eq!(images.len(), 5);
        for (key, bytes) in &images {
            if key.ends_with("p.jpg") {
                assert_eq!(
                    bytes, &passthrough,
                    "a 16×16 source JPEG is stored untouched"
                );
            } else {
                assert_eq!(jpeg_frame(bytes).1, factors, "{key} with {flag:?}");
            }
        }
    }

    // Another subsampling is another pack: a rerun over it is refused.
    let o = pack(&["--subsampling", "444"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr_of(&o).contains("already holds a different pack"),
        "{}",
        stderr_of(&o)
    );

    // Raw packs store pixels: the option is not theirs.
    let o = pack(&["--force", "--encoding", "raw"]);
    assert!(o.status.success(), "{}", stderr_of(&o));
    assert!(manifest(&out)["options"].get("subsampling").is_none());

    let o = pack(&["--force", "--subsampling", "422"]);
    assert_eq!(o.status.code(), Some(2));
    let err = stderr_of(&o);
    assert!(
        err.contains("--subsampling") && err.contains("'422'"),
        "{err}"
    );
}

#[test]
fn progressive_sources_are_kept_or_made_sequential() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    let sequential = jpeg_rgb(32, 32, 4);
    let mut progressive = Vec::new();
    let mut enc = jpeg_encoder::Encoder::new(&mut progressive, 95);
    enc.set_progressive(true);
    enc.encode(&pattern(32, 32, 5), 32, 32, jpeg_encoder::ColorType::Rgb)
        .unwrap();
    assert!(progressive.windows(2).any(|w| w == [0xFF, 0xC2]));
    write_dir(
        &src,
        &[
            ("train/a/seq.jpg".into(), sequential.clone()),
            ("train/b/prog.jpg".into(), progressive.clone()),
        ],
    );
    let out = dir.path().join("out");
    let pack = |extra: &[&str]| {
        let args = [
            s(&src),
            "--out",
            s(&out),
            "--size",
            "32",
            "--quiet",
            "--json",
        ];
        run(BIN, &[&args[..], extra].concat())
    };

    // Default: both stored untouched; the option is not recorded, so packs
    // made before the flag keep their fingerprint.
    let o = pack(&[]);
    assert!(o.status.success(), "{}", stderr_of(&o));
    assert_eq!(json_of(&o)["splits"]["train"]["passthrough"], 2);
    assert!(manifest(&out)["options"].get("progressive").is_none());
    let rows: BTreeMap<String, Vec<u8>> = read_split(&out, "train")
        .into_iter()
        .map(|r| (r.key, r.image))
        .collect();
    assert_eq!(rows["train/a/seq.jpg"], sequential);
    assert_eq!(rows["train/b/prog.jpg"], progressive);

    let o = pack(&["--force", "--progressive", "sequential"]);
    assert!(o.status.success(), "{}", stderr_of(&o));
    let summary = json_of(&o);
    assert_eq!(summary["splits"]["train"]["passthrough"], 1);
    assert_eq!(summary["splits"]["train"]["converted"], 1);
    assert_eq!(manifest(&out)["options"]["progressive"], "sequential");
    let rows: BTreeMap<String, Vec<u8>> = read_split(&out, "train")
        .into_iter()
        .map(|r| (r.key, r.image))
        .collect();
    assert_eq!(
        rows["train/a/seq.jpg"], sequential,
        "sequential sources stay"
    );
    let made = &rows["train/b/prog.jpg"];
    assert!(
        made.windows(2).any(|w| w == [0xFF, 0xC0]),
        "a sequential frame"
    );
    assert!(
        !made.windows(2).any(|w| w == [0xFF, 0xC2]),
        "no progressive frame"
    );
    assert_eq!(
        jpeg_frame(made).1,
        [0x11, 0x11, 0x11],
        "a 4:4:4 source stays 4:4:4"
    );
    // The same picture, within a q95 re-encode of the progressive decode.
    let a = ebv::image::decode_rgb8(&progressive, Default::default()).unwrap();
    let b = ebv::image::decode_rgb8(made, Default::default()).unwrap();
    assert_eq!((b.width, b.height), (32, 32));
    let mse = a
        .data
        .iter()
        .zip(&b.data)
        .map(|(&x, &y)| (f64::from(x) - f64::from(y)).powi(2))
        .sum::<f64>()
        / a.data.len() as f64;
    let psnr = 10.0 * (255.0f64.powi(2) / mse).log10();
    assert!(psnr > 35.0, "PSNR {psnr:.1} dB");

    // Another choice is another pack; a bad value names the flag.
    let o = pack(&["--progressive", "keep"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr_of(&o).contains("already holds a different pack"));
    let o = pack(&["--force", "--progressive", "baseline"]);
    assert_eq!(o.status.code(), Some(2));
    let err = stderr_of(&o);
    assert!(
        err.contains("--progressive") && err.contains("'baseline'"),
        "{err}"
    );
}

/// Arithmetic-coded JPEGs (`tests/data/jpeg-arith`, each `jpegtran
/// -arithmetic` of a Huffman-coded twin: the same coefficients) pack to
/// exactly their twins' pixels, raw and resized, and are never stored
/// untouched: the loader's decoder reads Huffman coding only.
#[test]
fn arithmetic_jpegs_pack_as_their_huffman_twins() {
    let dir = tempfile::tempdir().unwrap();
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/jpeg-arith");
    let mut names: Vec<String> = std::fs::read_dir(&data)
        .unwrap()
        .filter_map(|e| {
            let n = e.unwrap().file_name().into_string().unwrap();
            n.strip_suffix(".arith.jpg").map(str::to_string)
        })
        .collect();
    names.sort();
    assert_eq!(names.len(), 11);
    let read =
        |name: &str, kind: &str| std::fs::read(data.join(format!("{name}.{kind}.jpg"))).unwrap();
    let entries: Entries = names
        .iter()
        .flat_map(|n| {
            ["arith", "huff"].map(|kind| (format!("train/a/{n}-{kind}.jpg"), read(n, kind)))
        })
        .collect();
    let src = dir.path().join("src");
    write_dir(&src, &entries);
    for (encoding, size) in [("raw", "61x45"), ("raw", "40x30"), ("jpeg", "61x45")] {
        let out = dir.path().join(format!("{encoding}-{size}"));
        let args = [
            s(&src),
            "--out",
            s(&out),
            "--size",
            size,
            "--encoding",
            encoding,
        ];
        let o = run(BIN, &[&args[..], &["--quiet", "--strict"]].concat());
        assert!(o.status.success(), "{}", stderr_of(&o));
        let rows: std::collections::HashMap<String, Vec<u8>> = read_split(&out, "train")
            .into_iter()
            .map(|r| (r.key, r.image))
            .collect();
        assert_eq!(rows.len(), 2 * names.len());
        for n in &names {
            let arith = &rows[&format!("train/a/{n}-arith.jpg")];
            let huff = &rows[&format!("train/a/{n}-huff.jpg")];
            assert!(*arith != read(n, "arith"), "{n}: stored untouched");
            if encoding == "raw" {
                assert!(
                    arith == huff,
                    "{n} at {size}: pixels differ from the twin's"
                );
                continue;
            }
            // Re-encoded (q95, 4:2:0) from the twin's pixels; the twin
            // itself is stored untouched where it can be (3 components).
            let px = ebv::image::decode_rgb8(&read(n, "huff"), Default::default()).unwrap();
            let want = ebv::image::encode_jpeg(&px.data, 61, 45, 95, Default::default()).unwrap();
            assert!(*arith == want, "{n}: not the twin's pixels re-encoded");
            let color = !n.starts_with("gray") && !n.starts_with("cmyk");
            assert_eq!(
                *huff == read(n, "huff"),
                color,
                "{n}: passthrough of the twin"
            );
        }
    }
}

/// The paper's archive holds 1.8M entries, so it is a Zip64 archive: more
/// than 65,535 entries need the Zip64 end of central directory, and writers
/// give an entry Zip64 extra fields in its local and central headers when
/// asked (or when it is large, or lies past 4 GiB). Both forms pack every
/// entry, byte for byte, under its class.
#[test]
fn zip64_archives_pack_every_entry() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let zip_path = dir.path().join("many.zip");
    let images: Vec<Vec<u8>> = (0..16).map(|k| jpeg_rgb(8, 8, k)).collect();
    let n = 65_600usize;
    let name = |i: usize| {
        let split = if i.is_multiple_of(10) { "val" } else { "train" };
        format!("top/{split}/c{}/{i:06}.jpg", i % 7)
    };
    {
        let mut zip = zip::ZipWriter::new(std::fs::File::create(&zip_path).unwrap());
        let stored = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored);
        for i in 0..n {
            // The first hundred carry Zip64 extra fields of their own.
            zip.start_file(name(i), stored.large_file(i < 100)).unwrap();
            zip.write_all(&images[i % 16]).unwrap();
        }
        zip.finish().unwrap();
    }
    let bytes = std::fs::read(&zip_path).unwrap();
    let zip64_end = [b'P', b'K', 6, 6];
    assert!(
        bytes.windows(4).rev().take(200).any(|w| w == zip64_end),
        "the fixture must end in a Zip64 end of central directory"
    );
    drop(bytes);

    let out = dir.path().join("out");
    let o = run(
        BIN,
        &[
            s(&zip_path),
            "--out",
            s(&out),
            "--size",
            "8",
            "--quiet",
            "--json",
        ],
    );
    assert!(o.status.success(), "{}", stderr_of(&o));
    let j = json_of(&o);
    assert_eq!(j["rejected"], 0);
    let mut seen = 0;
    for split in ["train", "val"] {
        for row in read_split(&out, split) {
            let i: usize = row.key[row.key.len() - 10..row.key.len() - 4]
                .parse()
                .unwrap();
            assert_eq!(row.key, name(i));
            assert_eq!(row.label as usize, i % 7, "{}", row.key);
            assert!(
                row.image == images[i % 16],
                "{}: not the source bytes",
                row.key
            );
            seen += 1;
        }
    }
    assert_eq!(seen, n);
    assert_eq!(j["splits"]["val"]["rows"], n.div_ceil(10));
}
