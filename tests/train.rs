//! End-to-end tests of `ebv-train`, `ebv-eval` and `ebv-predict`: a tiny
//! model learns a tiny generated dataset far above chance; a resumed run
//! equals an uninterrupted one bit for bit; Ctrl-C leaves a checkpoint;
//! checkpoints load as plain torchvision-style state dicts; bad inputs are
//! clear errors before any training starts. Everything runs the real
//! binaries in a temp dir.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

const PACK: &str = env!("CARGO_BIN_EXE_ebv-pack");
const BASIS: &str = env!("CARGO_BIN_EXE_ebv-basis");
const TRAIN: &str = env!("CARGO_BIN_EXE_ebv-train");
const EVAL: &str = env!("CARGO_BIN_EXE_ebv-eval");
const PREDICT: &str = env!("CARGO_BIN_EXE_ebv-predict");

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Class c of 4: a bright 6×6 square in quadrant c on a noisy seeded
/// background, 16×16 PNG (lossless, so the label is in the pixels).
fn image(class: u32, seed: u32) -> Vec<u8> {
    let mut img = image::RgbImage::new(16, 16);
    let mut state = seed
        .wrapping_mul(2_654_435_761)
        .wrapping_add(class * 97 + 1);
    for p in img.pixels_mut() {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        let v = (state % 96) as u8;
        *p = image::Rgb([v, v / 2 + 20, 60 - v / 2]);
    }
    let (qx, qy) = ((class % 2) * 8 + 1, (class / 2) * 8 + 1);
    for y in qy..qy + 6 {
        for x in qx..qx + 6 {
            img.put_pixel(x, y, image::Rgb([250, 240, 230]));
        }
    }
    png(image::DynamicImage::ImageRgb8(img))
}

struct Fixture {
    _dir: tempfile::TempDir,
    root: PathBuf,
    shards: PathBuf,
    basis: PathBuf,
    src: PathBuf,
}

/// 4 classes × (24 train + 6 val) images packed raw at 16×16, and a 4×8
/// EBV basis.
fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let mut entries = Vec::new();
    for c in 0..4u32 {
        for i in 0..24u32 {
            entries.push((format!("train/class{c}/{i}.png"), image(c, i)));
        }
        for i in 0..6u32 {
            entries.push((format!("val/class{c}/{i}.png"), image(c, 1000 + i)));
        }
    }
    let src = root.join("src");
    write_dir(&src, &entries);
    let shards = root.join("shards");
    let o = run(
        PACK,
        &[
            s(&src),
            "--out",
            s(&shards),
            "--encoding",
            "raw",
            "--size",
            "16",
            "--quiet",
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let basis = root.join("ebv.safetensors");
    let o = run(
        BASIS,
        &[
            "generate",
            "--classes",
            "4",
            "--dim",
            "8",
            "--alpha",
            "0.05",
            "--seed",
            "1",
            "--out",
            s(&basis),
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    Fixture {
        _dir: dir,
        root,
        shards,
        basis,
        src,
    }
}

/// A recipe for the fixture: ResNet-18 at width 4 with the small stem.
fn recipe(root: &Path) -> PathBuf {
    let p = root.join("tiny.toml");
    std::fs::write(
        &p,
        r#"
[model]
arch = "resnet18"
width = 4
small_stem = true
head = "ebv"
tau = 0.1
[data]
size = 16
batch = 16
eval_batch = 8
workers = 1
random_resized_crop = false
flip = 0.0
erasing = 0.0
mixup = 0.0
cutmix = 0.0
[optim]
lr = 0.05
lr_batch = 16
weight_decay = 1e-4
[schedule]
epochs = 6
warmup_epochs = 1
[loss]
label_smoothing = 0.1
[run]
log_every = 2
"#,
    )
    .unwrap();
    p
}

fn train(f: &Fixture, out: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["--quiet"];
    args.extend_from_slice(extra);
    train_chatty(f, out, &args)
}

/// [`train`] with its notes and progress lines on stderr.
fn train_chatty(f: &Fixture, out: &Path, extra: &[&str]) -> std::process::Output {
    let cfg = recipe(&f.root);
    let mut args = vec![
        "--config",
        s(&cfg),
        "--shards",
        s(&f.shards),
        "--ebv",
        s(&f.basis),
        "--out",
        s(out),
    ];
    args.extend_from_slice(extra);
    run(TRAIN, &args)
}

fn json(p: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
}

/// metrics.jsonl without its wall-clock field.
fn metrics(run: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            v.as_object_mut().unwrap().remove("images_per_s");
            v
        })
        .collect()
}

fn latest_model(run: &Path) -> PathBuf {
    let name = std::fs::read_to_string(run.join("checkpoints/latest")).unwrap();
    run.join("checkpoints")
        .join(name.trim())
        .join("model.safetensors")
}

#[test]
fn learns_a_tiny_dataset_then_evaluates_and_predicts() {
    let f = fixture();
    let out = f.root.join("run");
    let o = train(&f, &out, &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    // The run folder.
    for name in [
        "config.toml",
        "classes.tsv",
        "ebv.safetensors",
        "metrics.jsonl",
        "summary.json",
        "curves.png",
        "model-best.safetensors",
    ] {
        assert!(out.join(name).is_file(), "{name} missing");
    }
    assert!(image::open(out.join("curves.png")).is_ok());
    let summary = json(&out.join("summary.json"));
    let last = &summary["last_epoch"];
    let best = &summary["best_epoch"];
    assert_eq!(last["epoch"], 5);
    let top1 = last["val"]["top1"].as_f64().unwrap();
    // Chance is 0.25.
    assert!(top1 >= 0.75, "val top-1 {top1} after 6 epochs: {summary}");
    assert!(best["val"]["top1"].as_f64().unwrap() >= top1);
    assert_eq!(summary["steps"], 36);
    let m = metrics(&out);
    let kinds = |k: &str| m.iter().filter(|v| v["kind"] == k).count();
    assert_eq!(kinds("eval"), 6);
    assert_eq!(kinds("epoch"), 6);
    assert_eq!(kinds("train"), 18);
    let first = m.iter().find(|v| v["kind"] == "train").unwrap();
    let last_train = m.iter().rev().find(|v| v["kind"] == "train").unwrap();
    assert!(
        last_train["loss"].as_f64() < first["loss"].as_f64(),
        "loss fell"
    );
    // Only the newest checkpoints are kept (run.keep_checkpoints = 2).
    let kept = std::fs::read_dir(out.join("checkpoints"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("epoch-")
        })
        .count();
    assert_eq!(kept, 2);

    // ebv-eval on the run folder reproduces the last epoch's evaluation.
    let o = run(
        EVAL,
        &[
            "--checkpoint",
            s(&out),
            "--shards",
            s(&f.shards),
            "--json",
            "--quiet",
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let e: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(e["top1"], last["val"]["top1"]);
    assert_eq!(e["images"], 24);
    let loss = e["loss"].as_f64().unwrap();
    assert!((loss - last["val"]["loss"].as_f64().unwrap()).abs() < 1e-9);
    // A flag meant for weights without metadata, given anyway, is said.
    let o = run(
        EVAL,
        &[
            "--checkpoint",
            s(&out),
            "--shards",
            s(&f.shards),
            "--tau",
            "1",
            "--json",
            "--quiet",
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("note: --tau 1 (the model's metadata says 0.1) overrides"),
        "{err}"
    );

    // ebv-predict: class names from the run, cosines in [-1, 1]; a
    // missing file is reported and the rest still predicted.
    let img = f.src.join("val/class3/0.png");
    let missing = f.root.join("nope.png");
    let o = run(
        PREDICT,
        &[
            "--checkpoint",
            s(&out),
            s(&img),
            s(&missing),
            "--top-k",
            "3",
            "--json",
        ],
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("nope.png"));
    let p: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let top = p[0]["top"].as_array().unwrap();
    assert_eq!(top.len(), 3);
    assert_eq!(p[0]["score"], "cosine");
    for t in top {
        let cos = t[2].as_f64().unwrap();
        assert!((-1.0..=1.0).contains(&cos));
        assert!(t[1].as_str().unwrap().starts_with("class"));
    }
    assert!(top[0][2].as_f64() >= top[1][2].as_f64());
    assert!(p[1]["error"].is_string());

    // A FIFO is not read (it would block until a writer came): reported
    // like any unreadable image.
    let fifo = f.root.join("pipe.png");
    let c = std::ffi::CString::new(s(&fifo)).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    let o = run(PREDICT, &["--checkpoint", s(&out), s(&fifo), s(&img)]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("pipe.png: not a regular file"), "{err}");
}

#[test]
fn fc_head_and_plain_state_dicts() {
    let f = fixture();
    let out = f.root.join("fc");
    let o = train(&f, &out, &["--head", "fc", "--epochs", "4"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let summary = json(&out.join("summary.json"));
    let top1 = summary["last_epoch"]["val"]["top1"].as_f64().unwrap();
    assert!(top1 >= 0.6, "fc val top-1 {top1}");
    // A basis given to the fc head is said to be unused, not silently taken.
    let o = train_chatty(
        &f,
        &f.root.join("fc-note"),
        &["--head", "fc", "--max-steps", "1"],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("is not used: the fc head"), "{err}");

    // The checkpoint's model file is a plain state dict: re-saved without
    // ebv's metadata (as torchvision's `save_file(model.state_dict())`
    // would write it), it loads with the architecture given by flags and
    // gives the same evaluation.
    let bytes = std::fs::read(latest_model(&out)).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let names: Vec<String> = st.names().into_iter().map(str::to_string).collect();
    assert!(names.contains(&"layer4.1.bn2.running_var".to_string()));
    assert!(names.contains(&"fc.weight".to_string()));
    assert!(
        names.iter().all(|n| !n.starts_with("ebv")),
        "no extra tensors"
    );
    let views: Vec<(String, safetensors::tensor::TensorView)> = st.tensors();
    let plain = f.root.join("plain.safetensors");
    let mut meta = std::collections::HashMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    std::fs::write(&plain, safetensors::serialize(views, Some(meta)).unwrap()).unwrap();
    let o = run(
        EVAL,
        &[
            "--checkpoint",
            s(&plain),
            "--shards",
            s(&f.shards),
            "--arch",
            "resnet18",
            "--width",
            "4",
            "--small-stem",
            "--head",
            "fc",
            "--size",
            "16",
            "--eval-resize",
            "16",
            "--json",
            "--quiet",
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let e: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(e["top1"], summary["last_epoch"]["val"]["top1"]);

    // --init: the FC run's weights start an EBV run (its 4-class fc does
    // not fit the 8-dimensional projection and keeps its initialisation).
    // With a vanishing learning rate the backbone must still be the FC
    // run's after a step.
    let init = f.root.join("init");
    let o = train(
        &f,
        &init,
        &[
            "--init",
            s(&plain),
            "--max-steps",
            "1",
            "--lr",
            "1e-12",
            "--set",
            "optim.weight_decay=0",
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let after = std::fs::read(latest_model(&init)).unwrap();
    let after = safetensors::SafeTensors::deserialize(&after).unwrap();
    let floats = |v: safetensors::tensor::TensorView| -> Vec<f32> {
        v.data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect()
    };
    let want = floats(st.tensor("layer3.1.conv2.weight").unwrap());
    let got = floats(after.tensor("layer3.1.conv2.weight").unwrap());
    let diff = want
        .iter()
        .zip(&got)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(
        diff < 1e-6,
        "backbone not loaded by --init (max diff {diff})"
    );
    assert_eq!(after.tensor("fc.weight").unwrap().shape(), &[8, 32]);
    let o = train(
        &f,
        &f.root.join("init2"),
        &["--init", s(&f.root.join("none.safetensors"))],
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("none.safetensors"));
    // Only BatchNorm's step counters in common (another width, say): an
    // error, not a run from scratch; a NaN weight is named at load.
    let counters: Vec<(String, safetensors::tensor::TensorView)> = st
        .tensors()
        .into_iter()
        .filter(|(n, _)| n.ends_with("num_batches_tracked"))
        .collect();
    assert!(!counters.is_empty());
    let only = f.root.join("counters.safetensors");
    std::fs::write(&only, safetensors::serialize(counters, None).unwrap()).unwrap();
    let o = train(&f, &f.root.join("init3"), &["--init", s(&only)]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("no trained tensor matches"), "{err}");
    let bad = "layer1.0.conv1.weight";
    let nan: Vec<u8> = st
        .tensor(bad)
        .unwrap()
        .data()
        .chunks_exact(4)
        .flat_map(|_| f32::NAN.to_le_bytes())
        .collect();
    let shape = st.tensor(bad).unwrap().shape().to_vec();
    let mut views: Vec<(String, safetensors::tensor::TensorView)> =
        st.tensors().into_iter().filter(|(n, _)| n != bad).collect();
    views.push((
        bad.to_string(),
        safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape, &nan).unwrap(),
    ));
    let nanfile = f.root.join("nan.safetensors");
    std::fs::write(&nanfile, safetensors::serialize(views, None).unwrap()).unwrap();
    let o = train(&f, &f.root.join("init4"), &["--init", s(&nanfile)]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("nan.safetensors: tensor layer1.0.conv1.weight holds NaN"),
        "{err}"
    );

    // The wrong architecture is a clear error naming a tensor.
    let o = run(
        EVAL,
        &[
            "--checkpoint",
            s(&plain),
            "--shards",
            s(&f.shards),
            "--arch",
            "resnet50",
            "--width",
            "4",
            "--small-stem",
            "--head",
            "fc",
        ],
    );
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("tensor") && err.contains("plain.safetensors"),
        "{err}"
    );
}

#[test]
fn resume_equals_an_uninterrupted_run() {
    let f = fixture();
    let whole = f.root.join("whole");
    let o = train(&f, &whole, &["--epochs", "3"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    // Stop mid-epoch (step 7 of 18), then on an epoch's last step (12),
    // resuming each time, with other loader threads (which change how fast
    // batches come, not which).
    let parts = f.root.join("parts");
    let o = train(&f, &parts, &["--epochs", "3", "--max-steps", "7"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(parts.join("checkpoints/step-0000000007").is_dir());
    let o = train(
        &f,
        &parts,
        &[
            "--epochs",
            "3",
            "--resume",
            "--max-steps",
            "12",
            "--workers",
            "3",
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = train(&f, &parts, &["--epochs", "3", "--resume", "--workers", "1"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    assert_eq!(metrics(&parts), metrics(&whole));
    // Every tensor equal bit for bit (the header's metadata order may
    // differ between processes).
    let a = std::fs::read(latest_model(&parts)).unwrap();
    let b = std::fs::read(latest_model(&whole)).unwrap();
    let (sa, sb) = (
        safetensors::SafeTensors::deserialize(&a).unwrap(),
        safetensors::SafeTensors::deserialize(&b).unwrap(),
    );
    assert_eq!(sa.len(), sb.len());
    for (name, view) in sa.tensors() {
        assert_eq!(
            view.data(),
            sb.tensor(&name).unwrap().data(),
            "{name} differs"
        );
    }
    let a = json(&parts.join("summary.json"));
    let b = json(&whole.join("summary.json"));
    for key in ["steps", "epochs", "last_epoch", "best_epoch", "interrupted"] {
        assert_eq!(a[key], b[key], "{key}");
    }
    // The text too: a value read back one ULP off from a checkpoint's
    // state.json would print differently.
    let text = |run: &Path| -> Vec<String> {
        std::fs::read_to_string(run.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .filter(|l| !l.contains("\"kind\":\"train\""))
            .map(String::from)
            .collect()
    };
    assert_eq!(text(&parts), text(&whole));

    // A run folder with checkpoints is not overwritten by accident.
    let o = train(&f, &whole, &["--epochs", "3"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--resume"));
    // Resuming with a different recipe is refused, naming what differs.
    let o = train(&f, &parts, &["--epochs", "4", "--resume"]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("differs in schedule.epochs"), "{err}");
}

#[test]
fn ctrl_c_stops_at_a_step_with_a_checkpoint() {
    let f = fixture();
    let out = f.root.join("int");
    let cfg = recipe(&f.root);
    let child = Command::new(TRAIN)
        .args([
            "--config",
            s(&cfg),
            "--shards",
            s(&f.shards),
            "--ebv",
            s(&f.basis),
            "--out",
            s(&out),
            "--quiet",
            "--epochs",
            "200",
            "--set",
            "run.log_every=1",
        ])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for the first logged step, then interrupt.
    let log = out.join("metrics.jsonl");
    let t0 = std::time::Instant::now();
    while std::fs::read_to_string(&log).map_or(true, |t| t.lines().count() < 2) {
        assert!(t0.elapsed().as_secs() < 120, "no training progress");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // SAFETY: signalling our own child by its pid.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGINT);
    }
    let o = child.wait_with_output().unwrap();
    assert_eq!(
        o.status.code(),
        Some(130),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let latest = std::fs::read_to_string(out.join("checkpoints/latest")).unwrap();
    let state = json(
        &out.join("checkpoints")
            .join(latest.trim())
            .join("state.json"),
    );
    let step = state["step"].as_u64().unwrap();
    assert!(step >= 1);
    let summary = json(&out.join("summary.json"));
    assert_eq!(summary["interrupted"], true);
    // Metrics never run ahead of the checkpoint.
    let last = metrics(&out).last().unwrap()["step"].as_u64().unwrap();
    assert!(last <= step);
}

#[test]
fn bad_inputs_are_clear_errors_before_training() {
    let f = fixture();
    let cfg = recipe(&f.root);
    let check = |args: &[&str], want: &str| {
        let out = f.root.join(format!("bad-{}", want.len()));
        let mut a = vec![
            "--config",
            s(&cfg),
            "--shards",
            s(&f.shards),
            "--out",
            s(&out),
            "--quiet",
        ];
        a.extend_from_slice(args);
        let o = run(TRAIN, &a);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: expected {want:?} in {err}");
        assert!(
            !out.join("checkpoints").exists(),
            "{args:?} started training"
        );
    };
    // Missing EBV file: not given, or not there.
    check(&[], "--ebv");
    // bf16 is for GPUs.
    check(
        &["--ebv", s(&f.basis), "--precision", "bf16"],
        "needs a CUDA device",
    );
    check(
        &["--ebv", s(&f.root.join("missing.safetensors"))],
        "missing.safetensors",
    );
    // d mismatch between the EBV file (d = 8) and the recipe.
    check(
        &["--ebv", s(&f.basis), "--set", "model.dim=16"],
        "model.dim = 16",
    );
    // Class count mismatch between the shards (4) and the EBV file (5).
    let five = f.root.join("five.safetensors");
    let o = run(
        BASIS,
        &[
            "generate",
            "--classes",
            "5",
            "--dim",
            "8",
            "--alpha",
            "0.5",
            "--out",
            s(&five),
        ],
    );
    assert!(o.status.success());
    check(&["--ebv", s(&five)], "5 rows");
    // Unknown recipe keys, in a file or a flag.
    check(
        &["--ebv", s(&f.basis), "--set", "optim.learning_rate=0.1"],
        "learning_rate",
    );
    let typo = f.root.join("typo.toml");
    std::fs::write(&typo, "[model]\narch = \"resnet18\"\nwidht = 4\n").unwrap();
    let o = run(
        TRAIN,
        &[
            "--config",
            s(&typo),
            "--shards",
            s(&f.shards),
            "--ebv",
            s(&f.basis),
            "--out",
            s(&f.root.join("typo")),
            "--quiet",
        ],
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("widht"));
    // Shards that are not there.
    let o = run(
        TRAIN,
        &[
            "--config",
            s(&cfg),
            "--shards",
            s(&f.root.join("noshards")),
            "--ebv",
            s(&f.basis),
            "--out",
            s(&f.root.join("ns")),
            "--quiet",
        ],
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("noshards"));
}

/// Two data-parallel ranks as threads of this process (the in-process
/// group stands in for NCCL): both take the same steps on disjoint halves
/// of each global batch, the per-epoch replica check passes (it errors if
/// the weights drift apart), the logged loss is the group's, and only rank
/// 0 writes the run folder.
#[test]
fn two_ranks_in_lockstep_and_only_rank_0_writes() {
    use ebv::train::dist::{Collective, ThreadGroup};
    use ebv::train::{train_with, Recipe, TrainOptions};
    let f = fixture();
    let recipe = Recipe::load(Some(&recipe(&f.root)), &["schedule.epochs=2".into()]).unwrap();
    let out = f.root.join("ddp");
    let opts = TrainOptions {
        recipe: recipe.clone(),
        shards: f.shards.clone(),
        ebv: Some(f.basis.clone()),
        out: out.clone(),
        resume: false,
        device: candle_core::Device::Cpu,
        quiet: true,
        max_steps: None,
        init: None,
    };
    let outcomes: Vec<_> = std::thread::scope(|sc| {
        let handles: Vec<_> = ThreadGroup::new(2)
            .into_iter()
            .map(|g| {
                let opts = &opts;
                sc.spawn(move || (g.rank(), train_with(opts, &g)))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut summaries = Vec::new();
    for (rank, o) in outcomes {
        let o = o.unwrap_or_else(|e| panic!("rank {rank}: {e}"));
        summaries.push(o.summary);
    }
    let (s0, s1) = (&summaries[0], &summaries[1]);
    // 96 train rows, global batch 16: 6 steps per epoch on both ranks.
    assert_eq!((s0.steps, s1.steps), (12, 12));
    let (e0, e1) = (
        s0.last_epoch.as_ref().unwrap(),
        s1.last_epoch.as_ref().unwrap(),
    );
    assert_eq!(
        e0.train_loss, e1.train_loss,
        "the logged loss is the group's mean"
    );
    assert!(e0.train_loss.is_finite());
    assert!(e0.val.is_some() && e1.val.is_none(), "rank 0 evaluates");
    // One set of files: rank 0's.
    let lines = metrics(&out);
    let epochs = lines.iter().filter(|l| l["kind"] == "epoch").count();
    assert_eq!(epochs, 2);
    assert!(out
        .join("checkpoints/epoch-0002/model.safetensors")
        .is_file());
    assert!(out.join("summary.json").is_file());
    let stray: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp"))
        .collect();
    assert!(stray.is_empty(), "{stray:?}");
}

#[test]
fn gpus_flag_and_rank_variables_need_a_cuda_build() {
    if cfg!(feature = "cuda") {
        return;
    }
    let f = fixture();
    let out = f.root.join("gpus");
    let o = train(&f, &out, &["--gpus", "2"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("--gpus 2") && err.contains("--features cuda"),
        "{err}"
    );
    // Started as rank 1 of 2 by an outside launcher.
    let cfg = recipe(&f.root);
    let o = Command::new(TRAIN)
        .args([
            "--config",
            s(&cfg),
            "--shards",
            s(&f.shards),
            "--ebv",
            s(&f.basis),
        ])
        .args(["--out", s(&out), "--quiet", "--device", "cpu"])
        .env("RANK", "1")
        .env("WORLD_SIZE", "2")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("rank 1 of 2") && err.contains("--features cuda"),
        "{err}"
    );
    let o = Command::new(TRAIN)
        .args(["--shards", s(&f.shards), "--out", s(&out)])
        .env("RANK", "3")
        .env("WORLD_SIZE", "2")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("RANK") && err.contains("not below"), "{err}");
    // Without --device, the error still names the missing feature, not a
    // cuda:0 device the user never asked for.
    let o = Command::new(TRAIN)
        .args([
            "--config",
            s(&cfg),
            "--shards",
            s(&f.shards),
            "--ebv",
            s(&f.basis),
        ])
        .args(["--out", s(&out), "--quiet"])
        .env("RANK", "0")
        .env("WORLD_SIZE", "2")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("rank 0 of 2") && err.contains("--features cuda"),
        "{err}"
    );
    // Flags that contradict each other, or ask for nothing, are refused.
    for (extra, want) in [
        (&["--gpus", "0"][..], "--gpus"),
        (&["--bench-steps", "0", "--synthetic"][..], "--bench-steps"),
        (
            &["--gpus", "1", "--device", "cpu"][..],
            "use one of the two",
        ),
        (
            &["--init", s(&f.basis), "--resume"][..],
            "use one of the two",
        ),
    ] {
        let o = train(&f, &f.root.join("flags"), extra);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{extra:?}: {err}");
        assert!(err.contains(want), "{extra:?}: {err}");
    }
}

/// `--check-kernels` needs no shards: on the CPU it compares both kernel
/// implementations with the f64 reference and exits 0; bf16 on the CPU is a
/// recipe error naming run.precision.
#[test]
fn check_kernels_runs_without_shards() {
    let o = Command::new(TRAIN)
        .args(["--check-kernels", "--json"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{err}");
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(report["failures"], 0, "{report}");
    assert_eq!(report["dtype"], "f32");
    let rows = report["rows"].as_array().unwrap();
    assert_eq!(report["candle_off"], 0, "{report}");
    for op in ["conv2d", "max_pool2d", "batch_norm", "add_relu"] {
        for imp in ["ebv", "candle"] {
            assert!(
                rows.iter().any(|r| r["op"] == op && r["kernels"] == imp),
                "no {op}/{imp} row"
            );
        }
    }
    let o = Command::new(TRAIN)
        .args(["--check-kernels", "--precision", "bf16"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("run.precision"), "{err}");
}

/// `--bench-steps N --synthetic` times N steps of a tiny model and takes one
/// more apart: its phases and (unchunked head) each of ebv's ops, with call
/// counts that match the architecture.
#[test]
fn bench_steps_reports_phases_and_ops() {
    let o = Command::new(TRAIN)
        .args([
            "--bench-steps",
            "2",
            "--synthetic",
            "--arch",
            "resnet18",
            "--width",
            "4",
            "--set",
            "model.small_stem=true",
            "--batch",
            "4",
            "--size",
            "16",
            "--classes",
            "5",
            "--dim",
            "8",
            "--kernels",
            "candle",
            "--json",
            "--quiet",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{err}");
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["steps"], 2, "{r}");
    assert_eq!(r["step_seconds"].as_array().unwrap().len(), 2);
    let phases = r["phase_seconds"].as_object().unwrap();
    for k in [
        "features",
        "forward_loss",
        "backward",
        "optimizer",
        "profiled_forward_backward",
    ] {
        assert!(phases[k].as_f64().unwrap() > 0.0, "{k}: {r}");
    }
    // ResNet-18 ends 8 basic blocks with a residual add + ReLU; with candle's
    // ops on the CPU that is the op ebv times there.
    assert_eq!(phases["calls:add_relu_forward"], 8.0, "{r}");
    assert!(phases["op:add_relu_forward"].is_f64(), "{r}");
}

/// `model.class_chunk`: chunks of 3 classes train like all classes at once
/// (the default, one chunk; [`assert_trains_alike`]; the equality of both
/// with candle's autograd on full logits is tested in f64 in
/// `model::chunked`), the resolved recipe records it, and the FC head
/// refuses it by name.
#[test]
fn class_chunked_head_trains_like_the_full_head() {
    let f = fixture();
    let full = f.root.join("full");
    let chunked = f.root.join("chunked");
    let steps = ["--epochs", "2", "--json"];
    let o = train(&f, &full, &steps);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mut args = steps.to_vec();
    args.extend(["--set", "model.class_chunk=3"]);
    let o = train(&f, &chunked, &args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let cfg = std::fs::read_to_string(chunked.join("config.toml")).unwrap();
    assert!(cfg.contains("class_chunk = 3"), "{cfg}");
    assert_trains_alike(&full, &chunked, "full head", "chunked head");
    let o = train(
        &f,
        &f.root.join("fc-chunk"),
        &["--head", "fc", "--set", "model.class_chunk=2"],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("model.class_chunk"), "{err}");
}

/// Two runs of the same recipe whose arithmetic differs only by rounding
/// (another kernel, another summation order) log the same losses: the first
/// two to f32 rounding (the forward pass from the same initial weights, then
/// one backward pass and update), the rest within 5%. Later losses cannot be
/// held tighter on this tiny model: train-mode BatchNorm over channels that
/// are nearly constant at the start amplifies a 1e-7 difference by up to
/// 1/sqrt(eps), so runs that differ only in the thread count (or im2col
/// against candle's own convolutions) drift apart by 0.1-2% within a few
/// steps and usually rejoin later.
fn assert_trains_alike(a: &Path, b: &Path, what_a: &str, what_b: &str) {
    let (ma, mb) = (metrics(a), metrics(b));
    assert_eq!(ma.len(), mb.len(), "{what_a} vs {what_b}: different logs");
    let mut compared = 0;
    for (x, y) in ma.iter().zip(&mb) {
        assert_eq!(x["kind"], y["kind"]);
        for key in ["loss", "val_loss"] {
            if let (Some(p), Some(q)) = (x[key].as_f64(), y[key].as_f64()) {
                let tol = if key == "loss" && compared < 2 {
                    1e-5
                } else {
                    5e-2
                };
                assert!(
                    p.is_finite() && (p - q).abs() <= tol * p.abs(),
                    "{key} {compared}: {p} ({what_a}) vs {q} ({what_b})\n{x}\n{y}"
                );
                compared += 1;
            }
        }
    }
    assert!(compared >= 4, "too few losses compared: {ma:?}");
}

/// Winograd (the default for 3×3 stride-1 layers of 16+ channels: this
/// model's last two stages) and im2col compute the same convolution, and
/// the choice is recorded in the run's resolved config.
#[test]
fn winograd_and_im2col_train_alike() {
    let f = fixture();
    let auto = f.root.join("auto");
    let im2col = f.root.join("im2col");
    let steps = ["--epochs", "2", "--json"];
    let o = train(&f, &auto, &steps);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mut args = steps.to_vec();
    args.extend(["--set", "run.conv_algo=im2col"]);
    let o = train(&f, &im2col, &args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let cfg = std::fs::read_to_string(im2col.join("config.toml")).unwrap();
    assert!(cfg.contains("conv_algo = \"im2col\""), "{cfg}");
    assert_trains_alike(&auto, &im2col, "winograd", "im2col");
    let o = train(&f, &f.root.join("fft"), &["--set", "run.conv_algo=fft"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("run.conv_algo"), "{err}");
}

/// A learning rate far too high drives the weights to NaN while the EBV
/// head's normalisation keeps the training loss finite (uniform logits):
/// the run must stop with "diverged" and save nothing from those weights.
#[test]
fn divergence_to_non_finite_weights_is_an_error_and_saves_nothing() {
    let f = fixture();
    let out = f.root.join("lr");
    let o = train(&f, &out, &["--epochs", "2", "--lr", "1e6"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("diverged"), "{err}");
    assert!(!out.join("model-best.safetensors").exists());
    // Any checkpoint left (none is expected) holds finite weights only.
    if let Ok(name) = std::fs::read_to_string(out.join("checkpoints/latest")) {
        let path = out
            .join("checkpoints")
            .join(name.trim())
            .join("model.safetensors");
        let bytes = std::fs::read(&path).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        for (tname, view) in st.tensors() {
            if view.dtype() == safetensors::Dtype::F32 {
                assert!(
                    view.data()
                        .chunks_exact(4)
                        .all(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]).is_finite()),
                    "{tname} is not finite in {}",
                    path.display()
                );
            }
        }
    }
}

/// `--bench-steps` with a zero class count or EBV dimension is a clear
/// error (exit 2), not a panic.
#[test]
fn bench_steps_rejects_zero_classes_and_dimension() {
    for (flag, value) in [("--dim", "0"), ("--classes", "0")] {
        let mut args = vec![
            "--bench-steps",
            "1",
            "--synthetic",
            "--arch",
            "resnet18",
            "--width",
            "4",
            "--batch",
            "4",
            "--size",
            "32",
            "--classes",
            "10",
            "--dim",
            "8",
        ];
        let i = args.iter().position(|a| *a == flag).unwrap();
        args[i + 1] = value;
        let o = Command::new(TRAIN)
            .args(&args)
            .env("RUST_BACKTRACE", "0")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{flag} {value}: {err}");
        assert!(err.contains(&format!("{flag} 0")), "{err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    // A shipped recipe benchmarks at its own model.dim without --dim, and
    // a --dim that contradicts it is named.
    let recipe = concat!(env!("CARGO_MANIFEST_DIR"), "/pipelines/fashion-mnist.toml");
    let base = [
        "--config",
        recipe,
        "--bench-steps",
        "1",
        "--synthetic",
        "--width",
        "4",
        "--batch",
        "4",
        "--size",
        "16",
        "--classes",
        "10",
        "--json",
        "--quiet",
    ];
    let o = Command::new(TRAIN).args(base).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = Command::new(TRAIN)
        .args(base)
        .args(["--dim", "64"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("--dim 64 contradicts the recipe's model.dim = 32"),
        "{err}"
    );
}

/// Pack `f`'s images again with class 3 renamed (same count) or with one
/// fewer train image per class, into `root/name`.
fn other_shards(f: &Fixture, name: &str, rename: bool) -> PathBuf {
    let mut entries = Vec::new();
    for c in 0..4u32 {
        let dir = if rename && c == 3 {
            "zebra".to_string()
        } else {
            format!("class{c}")
        };
        let n = if rename { 24 } else { 23 };
        for i in 0..n {
            entries.push((format!("train/{dir}/{i}.png"), image(c, i)));
        }
        for i in 0..6u32 {
            entries.push((format!("val/{dir}/{i}.png"), image(c, 1000 + i)));
        }
    }
    let src = f.root.join(format!("src-{name}"));
    write_dir(&src, &entries);
    let shards = f.root.join(name);
    let o = run(
        PACK,
        &[
            s(&src),
            "--out",
            s(&shards),
            "--encoding",
            "raw",
            "--size",
            "16",
            "--quiet",
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    shards
}

/// `--resume` on shards other than the run's (other class names, other
/// split sizes) is refused naming both; the same shards resume. ebv-eval
/// refuses shards whose class names differ unless --ignore-class-names.
#[test]
fn resume_and_eval_refuse_other_data() {
    let f = fixture();
    let out = f.root.join("run");
    let o = train(&f, &out, &["--epochs", "2", "--max-steps", "3"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let renamed = other_shards(&f, "renamed", true);
    let fewer = other_shards(&f, "fewer", false);
    for other in [&renamed, &fewer] {
        let cfg = recipe(&f.root);
        let o = run(
            TRAIN,
            &[
                "--config",
                s(&cfg),
                "--shards",
                s(other),
                "--ebv",
                s(&f.basis),
                "--out",
                s(&out),
                "--quiet",
                "--epochs",
                "2",
                "--resume",
            ],
        );
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{err}");
        assert!(
            err.contains("was trained on") && err.contains(s(other)),
            "{err}"
        );
    }
    let state = json(&out.join("checkpoints/step-0000000003/state.json"));
    assert_eq!(state["step"], 3, "a refused resume trained");
    let o = train(&f, &out, &["--epochs", "2", "--resume", "--max-steps", "4"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    let eval = |extra: &[&str]| {
        let mut a = vec!["--checkpoint", s(&out), "--shards", s(&renamed), "--quiet"];
        a.extend_from_slice(extra);
        run(EVAL, &a)
    };
    let o = eval(&[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("zebra") && err.contains("--ignore-class-names"),
        "{err}"
    );
    let o = eval(&["--ignore-class-names"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert!(err.contains("warning"), "{err}");
}

/// A run folder in use by another process (its lock held) is refused at
/// once, naming the folder, and nothing is written into it.
#[test]
fn a_run_folder_in_use_is_refused() {
    use std::os::fd::AsRawFd;
    let f = fixture();
    let out = f.root.join("busy");
    std::fs::create_dir_all(&out).unwrap();
    let lock = std::fs::File::create(out.join(".lock")).unwrap();
    // SAFETY: flock on a descriptor this test owns.
    let rc = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    assert_eq!(rc, 0);
    let o = train(&f, &out, &["--epochs", "1"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("in use") && err.contains(s(&out)), "{err}");
    assert!(!out.join("config.toml").exists());
    assert!(!out.join("checkpoints").exists());
    drop(lock);
    let o = train(&f, &out, &["--epochs", "1", "--max-steps", "1"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// Sizes beyond ebv-pack's 8192 cap are clear errors (exit 2) in
/// ebv-train and ebv-eval instead of an allocation abort.
#[test]
fn huge_sizes_are_refused() {
    let f = fixture();
    let out = f.root.join("huge");
    let o = train(&f, &out, &["--size", "100000"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("data.size") && err.contains("8192"), "{err}");
    let o = train(&f, &out, &["--epochs", "1", "--max-steps", "1"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for flag in ["--size", "--eval-resize"] {
        let o = run(
            EVAL,
            &[
                "--checkpoint",
                s(&out),
                "--shards",
                s(&f.shards),
                flag,
                "100000",
                "--quiet",
            ],
        );
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{flag}: {err}");
        assert!(err.contains(flag) && err.contains("8192"), "{err}");
    }
    let img = f.src.join("val/class3/0.png");
    let o = run(PREDICT, &["--checkpoint", s(&out), s(&img), "--top-k", "0"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("--top-k"), "{err}");
}

/// Resuming a finished run trains nothing and leaves summary.json as it
/// was; a --max-steps at or below the checkpoint's step takes no step.
#[test]
fn resume_with_nothing_left_to_do_changes_nothing() {
    let f = fixture();
    let out = f.root.join("done");
    let o = train(&f, &out, &["--epochs", "1"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let summary = std::fs::read(out.join("summary.json")).unwrap();
    let lines = metrics(&out);
    let o = train(&f, &out, &["--epochs", "1", "--resume", "--json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(std::fs::read(out.join("summary.json")).unwrap(), summary);
    assert_eq!(metrics(&out), lines);
    let printed: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let saved: serde_json::Value = serde_json::from_slice(&summary).unwrap();
    assert_eq!(printed, saved);

    let part = f.root.join("part");
    let o = train(&f, &part, &["--epochs", "1", "--max-steps", "3"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = train(
        &f,
        &part,
        &["--epochs", "1", "--resume", "--max-steps", "2"],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let latest = std::fs::read_to_string(part.join("checkpoints/latest")).unwrap();
    assert_eq!(latest.trim(), "step-0000000003");
    let names: Vec<_> = std::fs::read_dir(part.join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("step-"))
        .collect();
    assert_eq!(names, ["step-0000000003"]);

    // Step checkpoints count towards run.keep_checkpoints (2 here).
    for m in ["4", "5"] {
        let o = train(&f, &part, &["--epochs", "1", "--resume", "--max-steps", m]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let mut names: Vec<_> = std::fs::read_dir(part.join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("step-"))
        .collect();
    names.sort();
    assert_eq!(names, ["step-0000000004", "step-0000000005"]);
}

/// What a kill at the end of a run leaves is repaired by `--resume`: a
/// summary.json of an earlier session (or none) is rebuilt from the final
/// checkpoint, a torn curves.png is drawn again, and half-deleted
/// checkpoint folders (a prune cut short), hidden trash and temporary
/// files are removed; `ebv-eval` refuses a half-deleted checkpoint.
#[test]
fn resume_repairs_what_a_kill_at_the_end_left() {
    let f = fixture();
    let out = f.root.join("killed");
    let o = train(&f, &out, &["--epochs", "2", "--max-steps", "3"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let early = std::fs::read(out.join("summary.json")).unwrap();
    assert_eq!(json(&out.join("summary.json"))["steps"], 3);
    let o = train(&f, &out, &["--epochs", "2", "--resume"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let done = json(&out.join("summary.json"));
    assert_eq!(
        (done["steps"].as_u64(), done["interrupted"].as_bool()),
        (Some(12), Some(false))
    );
    let curves = std::fs::read(out.join("curves.png")).unwrap();

    // Killed after the final checkpoint: the first session's summary and a
    // torn plot are left; a prune was cut short (old versions deleted in
    // place), another one renamed its folder away; temporaries of
    // killed writes lie about.
    std::fs::write(out.join("summary.json"), &early).unwrap();
    std::fs::write(out.join("curves.png"), &curves[..41]).unwrap();
    let cps = out.join("checkpoints");
    let half = cps.join("step-0000000003");
    std::fs::create_dir_all(&half).unwrap();
    std::fs::copy(latest_model(&out), half.join("model.safetensors")).unwrap();
    std::fs::create_dir_all(cps.join(".epoch-0000.del")).unwrap();
    std::fs::create_dir_all(cps.join(".step-0000000009.tmp")).unwrap();
    let temps = [
        out.join(".summary.json.999999.tmp"),
        out.join(".model-best.safetensors.999999.tmp"),
        cps.join(".latest.999999.tmp"),
    ];
    for t in &temps {
        std::fs::write(t, b"partial").unwrap();
    }
    let o = run(
        EVAL,
        &[
            "--checkpoint",
            s(&half),
            "--shards",
            s(&f.shards),
            "--quiet",
        ],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("optimizer.safetensors") && err.contains("incomplete"),
        "{err}"
    );

    let o = train(&f, &out, &["--epochs", "2", "--resume", "--json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let printed: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let saved = json(&out.join("summary.json"));
    assert_eq!(printed, saved);
    assert_eq!(saved["steps"], 12);
    assert_eq!(saved["epochs"], 2);
    assert_eq!(saved["interrupted"], false);
    assert_eq!(saved["last_epoch"], done["last_epoch"]);
    assert_eq!(saved["best_epoch"], done["best_epoch"]);
    // Nothing was timed in the session that rebuilt it.
    assert_eq!(saved["train_seconds"], 0.0);
    assert_eq!(std::fs::read(out.join("curves.png")).unwrap(), curves);
    let mut names: Vec<_> = std::fs::read_dir(&cps)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["epoch-0001", "epoch-0002", "latest"]);
    for t in &temps {
        assert!(!t.exists(), "{} left", t.display());
    }

    // A summary that matches the checkpoint is left as it was; a missing
    // one is rebuilt.
    let kept = std::fs::read(out.join("summary.json")).unwrap();
    let o = train(&f, &out, &["--epochs", "2", "--resume"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(std::fs::read(out.join("summary.json")).unwrap(), kept);
    std::fs::remove_file(out.join("summary.json")).unwrap();
    std::fs::remove_file(out.join("curves.png")).unwrap();
    let o = train(&f, &out, &["--epochs", "2", "--resume"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(json(&out.join("summary.json")), saved);
    assert_eq!(std::fs::read(out.join("curves.png")).unwrap(), curves);
}

/// A run given a NumPy basis keeps it as `ebv.npy`, byte for byte (not as
/// an `ebv.safetensors` that Python's safetensors could not open), and
/// resumes and evaluates from it without `--ebv`.
#[test]
fn a_numpy_basis_is_kept_under_its_own_format() {
    let f = fixture();
    let st = f.root.join("b.safetensors");
    let o = run(
        BASIS,
        &[
            "generate",
            "--classes",
            "4",
            "--dim",
            "8",
            "--alpha",
            "0.05",
            "--seed",
            "2",
            "--out",
            s(&st),
            "--npy",
            "--quiet",
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let npy = f.root.join("b.npy");
    let out = f.root.join("npyrun");
    let cfg = recipe(&f.root);
    let args = |extra: &[&'static str]| {
        let mut a = vec![
            "--config".to_string(),
            s(&cfg).to_string(),
            "--shards".into(),
            s(&f.shards).to_string(),
            "--out".into(),
            s(&out).to_string(),
            "--quiet".into(),
            "--epochs".into(),
            "1".into(),
        ];
        a.extend(extra.iter().map(|x| x.to_string()));
        a
    };
    let mut first = args(&["--max-steps", "2", "--ebv"]);
    first.push(s(&npy).to_string());
    let o = run(TRAIN, &first.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        std::fs::read(out.join("ebv.npy")).unwrap(),
        std::fs::read(&npy).unwrap()
    );
    assert!(!out.join("ebv.safetensors").exists());
    let o = run(
        TRAIN,
        &args(&["--resume"])
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = run(
        EVAL,
        &[
            "--checkpoint",
            s(&out),
            "--shards",
            s(&f.shards),
            "--json",
            "--quiet",
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let e: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(e["images"], 24);

    // A basis of another shape than the model's is refused, naming it.
    let b5 = f.root.join("b5.safetensors");
    let o = run(
        BASIS,
        &[
            "generate",
            "--classes",
            "5",
            "--dim",
            "8",
            "--alpha",
            "0.9",
            "--out",
            s(&b5),
            "--quiet",
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let img = f.src.join("val/class3/0.png");
    let o = run(
        PREDICT,
        &[
            "--checkpoint",
            s(&latest_model(&out)),
            "--ebv",
            s(&b5),
            s(&img),
        ],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&format!(
            "basis {} is 5 × 8, but the model was trained with 4 classes",
            s(&b5)
        )),
        "{err}"
    );
}

/// `--size` on a recipe that evaluates at a larger resize (ImageNet's 232
/// for 224) scales that resize along, so evaluation does not look at a
/// small centre of each image; an explicit `data.eval_resize` wins.
#[test]
fn size_flag_scales_the_recipes_eval_resize() {
    let f = fixture();
    let recipe = concat!(env!("CARGO_MANIFEST_DIR"), "/pipelines/imagenet-1k.toml");
    let go = |out: &Path, extra: &[&str]| {
        let mut args = vec![
            "--config",
            recipe,
            "--shards",
            s(&f.shards),
            "--out",
            s(out),
            "--head",
            "fc",
            "--arch",
            "resnet18",
            "--width",
            "4",
            "--batch",
            "16",
            "--size",
            "16",
            "--epochs",
            "1",
            "--max-steps",
            "1",
            "--workers",
            "1",
        ];
        args.extend_from_slice(extra);
        let o = run(TRAIN, &args);
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(o.status.success(), "{err}");
        let cfg = std::fs::read_to_string(out.join("config.toml")).unwrap();
        (cfg, err)
    };
    let (cfg, err) = go(&f.root.join("scaled"), &[]);
    assert!(cfg.contains("eval_resize = 17"), "{cfg}");
    assert!(err.contains("data.eval_resize 232 → 17"), "{err}");
    let (cfg, _) = go(&f.root.join("asked"), &["--set", "data.eval_resize=20"]);
    assert!(cfg.contains("eval_resize = 20"), "{cfg}");
}
