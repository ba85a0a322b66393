//! Fixtures shared by the end-to-end tests: tiny images in every format the
//! packer must handle, zips and folders of them, and an independent reader
//! of shards through the parquet crate.
#![allow(dead_code)]

use std::fs::File;
use std::io::{Cursor, Write};
use std::path::Path;
use std::process::{Command, Output};

use arrow_array::{Array, BinaryArray, FixedSizeBinaryArray, StringArray, UInt32Array};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

/// A smooth, seed-dependent RGB pattern (JPEG-friendly, resize-friendly).
pub fn pattern(w: u32, h: u32, seed: u32) -> Vec<u8> {
    let mut v = Vec::with_capacity((w * h * 3) as usize);
    for y in 0..h {
        for x in 0..w {
            let r = ((x * 255) / w.max(1) + seed * 37) % 256;
            let g = ((y * 255) / h.max(1) + seed * 91) % 256;
            let b = ((x + y) * 128 / (w + h).max(1) + seed * 13) % 256;
            v.extend_from_slice(&[r as u8, g as u8, b as u8]);
        }
    }
    v
}

pub fn jpeg_rgb(w: u32, h: u32, seed: u32) -> Vec<u8> {
    jpeg_with_orientation(w, h, seed, None)
}

/// A JPEG of `pattern(w, h, seed)` with an EXIF APP1 segment holding
/// `orientation` (big-endian TIFF, one IFD entry), or none.
pub fn jpeg_with_orientation(w: u32, h: u32, seed: u32, orientation: Option<u16>) -> Vec<u8> {
    let mut out = Vec::new();
    let mut enc = jpeg_encoder::Encoder::new(&mut out, 90);
    if let Some(o) = orientation {
        let mut exif = b"Exif\0\0MM\0\x2a\0\0\0\x08".to_vec();
        exif.extend(1u16.to_be_bytes()); // one entry
        exif.extend(0x0112u16.to_be_bytes()); // Orientation
        exif.extend(3u16.to_be_bytes()); // SHORT
        exif.extend(1u32.to_be_bytes());
        exif.extend(o.to_be_bytes());
        exif.extend([0, 0]);
        exif.extend(0u32.to_be_bytes()); // no next IFD
        enc.add_app_segment(1, exif).unwrap();
    }
    enc.encode(
        &pattern(w, h, seed),
        w as u16,
        h as u16,
        jpeg_encoder::ColorType::Rgb,
    )
    .unwrap();
    out
}

pub fn jpeg_gray(w: u32, h: u32, seed: u32) -> Vec<u8> {
    let gray: Vec<u8> = pattern(w, h, seed).chunks(3).map(|p| p[0]).collect();
    let mut out = Vec::new();
    jpeg_encoder::Encoder::new(&mut out, 90)
        .encode(&gray, w as u16, h as u16, jpeg_encoder::ColorType::Luma)
        .unwrap();
    out
}

pub fn jpeg_cmyk(w: u32, h: u32, seed: u32) -> Vec<u8> {
    let cmyk: Vec<u8> = pattern(w, h, seed)
        .chunks(3)
        .flat_map(|p| [255 - p[0], 255 - p[1], 255 - p[2], 0])
        .collect();
    let mut out = Vec::new();
    jpeg_encoder::Encoder::new(&mut out, 90)
        .encode(&cmyk, w as u16, h as u16, jpeg_encoder::ColorType::Cmyk)
        .unwrap();
    out
}

pub fn png(img: image::DynamicImage) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

pub fn png_rgb(w: u32, h: u32, seed: u32) -> Vec<u8> {
    png(image::DynamicImage::ImageRgb8(
        image::RgbImage::from_raw(w, h, pattern(w, h, seed)).unwrap(),
    ))
}

pub fn png_gray(w: u32, h: u32, seed: u32) -> Vec<u8> {
    let gray: Vec<u8> = pattern(w, h, seed).chunks(3).map(|p| p[1]).collect();
    png(image::DynamicImage::ImageLuma8(
        image::GrayImage::from_raw(w, h, gray).unwrap(),
    ))
}

pub fn png_rgba(w: u32, h: u32, seed: u32) -> Vec<u8> {
    let rgba: Vec<u8> = pattern(w, h, seed)
        .chunks(3)
        .flat_map(|p| [p[0], p[1], p[2], 128])
        .collect();
    png(image::DynamicImage::ImageRgba8(
        image::RgbaImage::from_raw(w, h, rgba).unwrap(),
    ))
}

/// Write a zip holding `entries` (deflated, like `zip -r`).
pub fn write_zip(path: &Path, entries: &[(String, Vec<u8>)]) {
    let mut zip = zip::ZipWriter::new(File::create(path).unwrap());
    let opts = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    for (name, bytes) in entries {
        zip.start_file(name.as_str(), opts).unwrap();
        zip.write_all(bytes).unwrap();
    }
    zip.finish().unwrap();
}

/// Write `entries` as files under `root`.
pub fn write_dir(root: &Path, entries: &[(String, Vec<u8>)]) {
    for (name, bytes) in entries {
        let p = root.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, bytes).unwrap();
    }
}

/// One row of a shard as the parquet crate reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub label: u32,
    pub image: Vec<u8>,
    pub key: String,
}

/// Read every row of a shard with the parquet crate's own reader.
pub fn read_shard(path: &Path) -> Vec<Row> {
    let file = File::open(path).unwrap();
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .unwrap()
        .build()
        .unwrap();
    let mut rows = Vec::new();
    for batch in reader {
        let batch = batch.unwrap();
        let labels = batch
            .column(0)
            .as_any()
            .downcast_ref::<UInt32Array>()
            .unwrap();
        let keys = batch
            .column(2)
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap();
        let images = batch.column(1);
        for i in 0..batch.num_rows() {
            let image = if let Some(b) = images.as_any().downcast_ref::<BinaryArray>() {
                b.value(i).to_vec()
            } else {
                let f = images
                    .as_any()
                    .downcast_ref::<FixedSizeBinaryArray>()
                    .unwrap();
                f.value(i).to_vec()
            };
            rows.push(Row {
                label: labels.value(i),
                image,
                key: keys.value(i).to_string(),
            });
        }
    }
    rows
}

/// All rows of a split, shard by shard, from an output folder.
pub fn read_split(out: &Path, split: &str) -> Vec<Row> {
    let mut names: Vec<_> = std::fs::read_dir(out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&format!("{split}-")) && n.ends_with(".parquet"))
        .collect();
    names.sort();
    names
        .iter()
        .flat_map(|n| read_shard(&out.join(n)))
        .collect()
}

pub fn run(bin: &str, args: &[&str]) -> Output {
    Command::new(bin).args(args).output().unwrap()
}

pub fn manifest(out: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap()
}

/// Antialiased bilinear resampling as Pillow defines it (triangle filter
/// whose support widens by the scale when shrinking), in f64 with one
/// final rounding — an independent reference for the packer's resize.
pub fn reference_resize(src: &[u8], sw: usize, sh: usize, dw: usize, dh: usize) -> Vec<u8> {
    fn weights(in_size: usize, out_size: usize) -> Vec<(usize, Vec<f64>)> {
        let scale = in_size as f64 / out_size as f64;
        let ss = scale.max(1.0);
        let support = ss; // triangle support 1.0, widened
        (0..out_size)
            .map(|i| {
                let center = (i as f64 + 0.5) * scale;
                let lo = ((center - support + 0.5).floor().max(0.0)) as usize;
                let hi = ((center + support + 0.5).floor() as usize).min(in_size);
                let mut w: Vec<f64> = (lo..hi)
                    .map(|x| {
                        let t = ((x as f64 - center + 0.5) / ss).abs();
                        (1.0 - t).max(0.0)
                    })
                    .collect();
                let sum: f64 = w.iter().sum();
                w.iter_mut().for_each(|v| *v /= sum);
                (lo, w)
            })
            .collect()
    }
    let wx = weights(sw, dw);
    let wy = weights(sh, dh);
    let mut tmp = vec![0f64; dw * sh * 3];
    for y in 0..sh {
        for (x, (lo, w)) in wx.iter().enumerate() {
            for c in 0..3 {
                tmp[(y * dw + x) * 3 + c] = w
                    .iter()
                    .enumerate()
                    .map(|(k, wk)| wk * src[(y * sw + lo + k) * 3 + c] as f64)
                    .sum();
            }
        }
    }
    let mut out = vec![0u8; dw * dh * 3];
    for (y, (lo, w)) in wy.iter().enumerate() {
        for x in 0..dw {
            for c in 0..3 {
                let v: f64 = w
                    .iter()
                    .enumerate()
                    .map(|(k, wk)| wk * tmp[((lo + k) * dw + x) * 3 + c])
                    .sum();
                out[(y * dw + x) * 3 + c] = v.round().clamp(0.0, 255.0) as u8;
            }
        }
    }
    out
}

/// The start-of-frame marker of a JPEG (0xC0 sequential, 0xC1 extended,
/// 0xC2 progressive) and each component's horizontal×vertical sampling
/// byte, read straight from the bytes. For JPEGs without EXIF or other
/// segments that could hold 0xFF 0xC0..0xC2 before the frame.
pub fn jpeg_frame(jpeg: &[u8]) -> (u8, Vec<u8>) {
    let at = jpeg
        .windows(2)
        .position(|w| w[0] == 0xFF && (0xC0..=0xC2).contains(&w[1]))
        .unwrap();
    let n = jpeg[at + 9] as usize;
    (
        jpeg[at + 1],
        (0..n).map(|k| jpeg[at + 11 + 3 * k]).collect(),
    )
}
