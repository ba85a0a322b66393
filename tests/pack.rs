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
            "data/train/fox/scan.tif",
            b"II*\0\x08\0\0\0rest-of-tiff".to_vec(),
            "unsupported image format",
        ),
        (
            "data/train/dog/huge.png",
            png_rgb(100, 100, 7),
            "image of 100x100 exceeds the pixel limit",
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
    entries.push((
        "set/val.txt".into(),
        b"images/im0.jpg 10\nimages/im4.jpg 2\n".to_vec(),
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
            ("set/images/im0.jpg".into(), 2),
            ("set/images/im4.jpg".into(), 1)
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
