//! `curves.png`: training loss and accuracy against the step, drawn with
//! no plotting dependency (lines on an `image::RgbImage`, labels in the
//! built-in bitmap font of `ebv-stats --plot`).
//!
//! Two panels share the x axis (optimiser step): left, train loss per log
//! interval and val loss per epoch; right, train top-1 per log interval
//! and val top-1/top-5 per epoch.
//!
//! Invariant: the file is replaced atomically (temporary name, rename), so
//! it is the previous plot, the new one, or absent — never a torn PNG.

use std::path::Path;

use image::{Rgb, RgbImage};

use crate::stats::plot::draw_text;

use super::TrainError;

const PANEL_W: u32 = 480;
const PANEL_H: u32 = 300;
const MARGIN: u32 = 40;
const WHITE: Rgb<u8> = Rgb([255, 255, 255]);
const GREY: Rgb<u8> = Rgb([200, 200, 200]);
const BLACK: Rgb<u8> = Rgb([0, 0, 0]);
const BLUE: Rgb<u8> = Rgb([31, 119, 180]);
const ORANGE: Rgb<u8> = Rgb([255, 127, 14]);
const GREEN: Rgb<u8> = Rgb([44, 160, 44]);

/// A named series of (step, value) points.
pub struct Series<'a> {
    pub name: &'a str,
    pub points: Vec<(f64, f64)>,
    pub color: Rgb<u8>,
}

/// Draw the two panels from the lines of `metrics.jsonl` and save a PNG.
pub fn write_curves(lines: &[serde_json::Value], path: &Path) -> Result<(), TrainError> {
    let pick = |kind: &str, key: &str| -> Vec<(f64, f64)> {
        lines
            .iter()
            .filter(|v| v.get("kind").and_then(|k| k.as_str()) == Some(kind))
            .filter_map(|v| Some((v.get("step")?.as_f64()?, v.get(key)?.as_f64()?)))
            .filter(|(_, y)| y.is_finite())
            .collect()
    };
    let loss = [
        Series {
            name: "train loss",
            points: pick("train", "loss"),
            color: BLUE,
        },
        Series {
            name: "val loss",
            points: pick("eval", "val_loss"),
            color: ORANGE,
        },
    ];
    let acc = [
        Series {
            name: "train top-1",
            points: pick("train", "top1"),
            color: BLUE,
        },
        Series {
            name: "val top-1",
            points: pick("eval", "val_top1"),
            color: ORANGE,
        },
        Series {
            name: "val top-5",
            points: pick("eval", "val_top5"),
            color: GREEN,
        },
    ];
    let mut img =
        RgbImage::from_pixel(2 * (PANEL_W + MARGIN) + MARGIN, PANEL_H + 2 * MARGIN, WHITE);
    panel(&mut img, MARGIN, MARGIN, "loss", &loss);
    panel(&mut img, 2 * MARGIN + PANEL_W, MARGIN, "accuracy", &acc);
    // Encoded in memory, then written under a temporary name and renamed:
    // `RgbImage::save` truncates the file in place and drops the error of
    // its last buffered write (a full disk left a PNG without its end).
    let mut png = std::io::Cursor::new(Vec::new());
    img.write_to(&mut png, image::ImageFormat::Png)
        .map_err(|e| TrainError::Other(format!("{}: {e}", path.display())))?;
    crate::shard::write_replace(path, png.get_ref(), false)
        .map_err(|e| TrainError::Other(e.to_string()))
}

fn panel(img: &mut RgbImage, x0: u32, y0: u32, title: &str, series: &[Series]) {
    let pts = series.iter().flat_map(|s| s.points.iter());
    let (mut xmin, mut xmax, mut ymin, mut ymax) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in pts {
        xmin = xmin.min(x);
        xmax = xmax.max(x);
        ymin = ymin.min(y);
        ymax = ymax.max(y);
    }
    // Frame and title first, so an empty panel still says what it is for.
    rect(img, x0, y0, PANEL_W, PANEL_H, GREY);
    draw_text(img, x0, y0.saturating_sub(14), title, 2, BLACK);
    if xmin > xmax {
        return;
    }
    if xmax - xmin < 1e-12 {
        xmax = xmin + 1.0;
    }
    if ymax - ymin < 1e-12 {
        ymax = ymin + 1.0;
    }
    let pad = 0.05 * (ymax - ymin);
    let (ymin, ymax) = (ymin - pad, ymax + pad);
    let map = |x: f64, y: f64| -> (f64, f64) {
        (
            f64::from(x0) + (x - xmin) / (xmax - xmin) * f64::from(PANEL_W - 1),
            f64::from(y0) + (ymax - y) / (ymax - ymin) * f64::from(PANEL_H - 1),
        )
    };
    draw_text(img, x0 + 2, y0 + 2, &format!("{ymax:.3}"), 1, BLACK);
    draw_text(
        img,
        x0 + 2,
        y0 + PANEL_H - 10,
        &format!("{ymin:.3}"),
        1,
        BLACK,
    );
    draw_text(
        img,
        x0,
        y0 + PANEL_H + 4,
        &format!("step {xmin:.0}"),
        1,
        BLACK,
    );
    let last = format!("{xmax:.0}");
    draw_text(
        img,
        x0 + PANEL_W - 6 * last.len() as u32,
        y0 + PANEL_H + 4,
        &last,
        1,
        BLACK,
    );
    for (k, s) in series.iter().enumerate() {
        for w in s.points.windows(2) {
            let (a, b) = (map(w[0].0, w[0].1), map(w[1].0, w[1].1));
            line(img, a, b, s.color);
        }
        for &(x, y) in &s.points {
            let (px, py) = map(x, y);
            dot(img, px, py, s.color);
        }
        let ly = y0 + PANEL_H + 16;
        let lx = x0 + 10 + 150 * k as u32;
        rect_fill(img, lx, ly + 1, 10, 5, s.color);
        draw_text(img, lx + 14, ly, s.name, 1, BLACK);
    }
}

fn put(img: &mut RgbImage, x: f64, y: f64, c: Rgb<u8>) {
    if x >= 0.0 && y >= 0.0 && (x as u32) < img.width() && (y as u32) < img.height() {
        img.put_pixel(x as u32, y as u32, c);
    }
}

fn line(img: &mut RgbImage, a: (f64, f64), b: (f64, f64), c: Rgb<u8>) {
    let n = ((b.0 - a.0).abs().max((b.1 - a.1).abs()).ceil() as usize).max(1);
    for i in 0..=n {
        let t = i as f64 / n as f64;
        put(img, a.0 + t * (b.0 - a.0), a.1 + t * (b.1 - a.1), c);
    }
}

fn dot(img: &mut RgbImage, x: f64, y: f64, c: Rgb<u8>) {
    for dy in -1..=1 {
        for dx in -1..=1 {
            put(img, x + f64::from(dx), y + f64::from(dy), c);
        }
    }
}

fn rect(img: &mut RgbImage, x: u32, y: u32, w: u32, h: u32, c: Rgb<u8>) {
    let (x, y, w, h) = (f64::from(x), f64::from(y), f64::from(w), f64::from(h));
    line(img, (x, y), (x + w, y), c);
    line(img, (x, y + h), (x + w, y + h), c);
    line(img, (x, y), (x, y + h), c);
    line(img, (x + w, y), (x + w, y + h), c);
}

fn rect_fill(img: &mut RgbImage, x: u32, y: u32, w: u32, h: u32, c: Rgb<u8>) {
    for yy in y..y + h {
        for xx in x..x + w {
            put(img, f64::from(xx), f64::from(yy), c);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_a_png_with_the_series_colours() {
        let dir = tempfile::tempdir().unwrap();
        let lines: Vec<serde_json::Value> = (1..=10)
            .map(|s| serde_json::json!({"kind": "train", "step": s, "loss": 3.0 / s as f64, "top1": 0.1 * s as f64}))
            .chain([serde_json::json!({"kind": "eval", "step": 10, "val_loss": 0.5, "val_top1": 0.8, "val_top5": 0.99})])
            .collect();
        let p = dir.path().join("c.png");
        write_curves(&lines, &p).unwrap();
        let img = image::open(&p).unwrap().to_rgb8();
        let count = |c: Rgb<u8>| img.pixels().filter(|&&p| p == c).count();
        assert!(count(BLUE) > 100, "train lines drawn");
        assert!(count(ORANGE) > 9, "val points drawn");
        // Replaced whole, with no temporary left beside it.
        write_curves(&lines[..3], &p).unwrap();
        image::open(&p).unwrap();
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1);
    }

    /// A write that fails is an error naming the file once.
    #[test]
    fn a_failed_write_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("absent").join("c.png");
        let e = write_curves(&[], &p).unwrap_err().to_string();
        assert_eq!(e.matches("c.png").count(), 1, "{e}");
        assert!(!p.exists());
    }
}
