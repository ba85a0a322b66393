//! `ebv-stats --plot out.png`: the class-size histogram of each split and a
//! grid of sample training images captioned with their class names.
//!
//! Drawn pixel by pixel onto an `image::RgbImage` with the built-in 5×7
//! font (`super::font`), so the figure looks the same on every machine
//! and needs no font or plotting library.

use std::path::Path;

use image::{imageops, Rgb, RgbImage};

use super::font::{self, CELL_H};
use super::summary::{Bin, Summary};
use super::StatsError;
use crate::image::{decode_rgb8, DecodeLimits};
use crate::shard::{Encoding, ShardSet, Split};

const MARGIN: u32 = 16;
const COLS: u32 = 8;
const ROWS: u32 = 3;
const THUMB: u32 = 128;
const GAP: u32 = 16;
const HIST_H: u32 = 240;
const WIDTH: u32 = MARGIN + COLS * (THUMB + GAP);

const WHITE: Rgb<u8> = Rgb([255, 255, 255]);
const INK: Rgb<u8> = Rgb([20, 20, 20]);
const AXIS: Rgb<u8> = Rgb([110, 110, 110]);
const GRID: Rgb<u8> = Rgb([225, 225, 225]);
const TRAIN: Rgb<u8> = Rgb([52, 101, 164]);
const VAL: Rgb<u8> = Rgb([230, 126, 34]);
const BAD: Rgb<u8> = Rgb([200, 30, 30]);

fn fill(img: &mut RgbImage, x: u32, y: u32, w: u32, h: u32, c: Rgb<u8>) {
    for yy in y..(y + h).min(img.height()) {
        for xx in x..(x + w).min(img.width()) {
            img.put_pixel(xx, yy, c);
        }
    }
}

/// Draw `text` with its top-left corner at (x, y); clipped to the image.
pub fn draw_text(img: &mut RgbImage, x: u32, y: u32, text: &str, scale: u32, c: Rgb<u8>) {
    for (i, ch) in text.chars().enumerate() {
        let x0 = x + i as u32 * font::CELL_W * scale;
        for gx in 0..5 {
            for gy in 0..7 {
                if font::pixel(ch, gx, gy) {
                    fill(img, x0 + gx * scale, y + gy * scale, scale, scale, c);
                }
            }
        }
    }
}

/// Shorten `text` to `max` characters, marking the cut with '~'.
fn fit(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_string()
    } else {
        let mut s: String = text.chars().take(max.saturating_sub(1)).collect();
        s.push('~');
        s
    }
}

fn draw_histogram(
    img: &mut RgbImage,
    x: u32,
    y: u32,
    w: u32,
    split: Split,
    bins: &[Bin],
    classes: u64,
) {
    let colour = if split == Split::Train { TRAIN } else { VAL };
    let title = format!("{split}: {classes} classes by images per class");
    draw_text(
        img,
        x,
        y,
        &fit(&title, (w / (font::CELL_W * 2)) as usize),
        2,
        INK,
    );
    let top = y + 2 * CELL_H + 8;
    let left = x + 48; // room for the y labels
    let plot_w = w - 56;
    let plot_h = HIST_H - 2 * CELL_H - 8 - 2 * CELL_H - 8;
    let tallest = bins.iter().map(|b| b.classes).max().unwrap_or(0);
    // Grid lines at whole, round counts (1, 2, 5 × 10^k apart), the axis
    // ending at the first one at or above the tallest bar.
    let step = nice_step(tallest.div_ceil(4));
    let ticks = tallest.div_ceil(step).max(1);
    let max = step * ticks;
    for k in 0..=ticks {
        let gy = top + plot_h - (u64::from(plot_h) * k / ticks) as u32;
        fill(img, left, gy, plot_w, 1, GRID);
        let label = (step * k).to_string();
        draw_text(
            img,
            left.saturating_sub(font::text_width(&label, 1) + 4),
            gy.saturating_sub(3),
            &label,
            1,
            AXIS,
        );
    }
    if bins.is_empty() || tallest == 0 {
        draw_text(img, left + 8, top + plot_h / 2, "no images", 2, AXIS);
    } else {
        let n = bins.len() as u32;
        let slot = (plot_w / n).max(1);
        for (i, b) in bins.iter().enumerate() {
            let bh = ((plot_h as u64 * b.classes).div_ceil(max)) as u32;
            let bx = left + i as u32 * slot + slot / 8;
            fill(
                img,
                bx,
                top + plot_h - bh,
                (slot - slot / 4).max(1),
                bh,
                colour,
            );
        }
        // X labels: the first and last bin, and one in the middle.
        let ly = top + plot_h + 6;
        let label = |b: &Bin| {
            if b.from == b.to {
                b.from.to_string()
            } else {
                format!("{}-{}", b.from, b.to)
            }
        };
        let mut marks = vec![0usize, bins.len() - 1];
        if bins.len() > 2 {
            marks.insert(1, bins.len() / 2);
        }
        marks.dedup();
        for i in marks {
            let t = label(&bins[i]);
            let cx = left + i as u32 * slot + slot / 2;
            let tx = cx.saturating_sub(font::text_width(&t, 1) / 2).max(left);
            draw_text(img, tx, ly, &t, 1, AXIS);
        }
        draw_text(
            img,
            left + plot_w.saturating_sub(font::text_width("images per class", 1)),
            ly + CELL_H + 2,
            "images per class",
            1,
            AXIS,
        );
    }
    fill(img, left, top, 1, plot_h + 1, AXIS);
    fill(img, left, top + plot_h, plot_w, 1, AXIS);
}

/// Thumbnail of one stored image, fitted into THUMB×THUMB.
fn thumbnail(bytes: &[u8], encoding: Encoding, w: u32, h: u32) -> Option<RgbImage> {
    let img = match encoding {
        Encoding::Raw => RgbImage::from_raw(w, h, bytes.to_vec())?,
        Encoding::Jpeg => {
            let d = decode_rgb8(bytes, DecodeLimits::default()).ok()?;
            RgbImage::from_raw(d.width, d.height, d.data)?
        }
    };
    let scale = THUMB as f64 / img.width().max(img.height()) as f64;
    let tw = ((img.width() as f64 * scale).round() as u32).clamp(1, THUMB);
    let th = ((img.height() as f64 * scale).round() as u32).clamp(1, THUMB);
    Some(imageops::resize(
        &img,
        tw,
        th,
        imageops::FilterType::Triangle,
    ))
}

/// Render the figure (see the module header) as an image.
pub fn render(set: &ShardSet, summary: &Summary) -> Result<RgbImage, StatsError> {
    let sample_split = if set.num_rows(Split::Train) > 0 {
        Split::Train
    } else {
        Split::Val
    };
    let total = set.num_rows(sample_split);
    let n = total.min(u64::from(COLS * ROWS));
    let grid_rows = (n as u32).div_ceil(COLS);
    let caption_h = 2 * CELL_H + 4;
    let hist_top = MARGIN + 2 * CELL_H + 12;
    let grid_top = hist_top + HIST_H + 16;
    let height = grid_top + 2 * CELL_H + 8 + grid_rows * (THUMB + caption_h + GAP) + MARGIN;
    let mut img = RgbImage::from_pixel(WIDTH, height, WHITE);

    let m = set.manifest();
    let dir = set
        .dir()
        .file_name()
        .map(|d| d.to_string_lossy().into_owned())
        .unwrap_or_default();
    let title = format!(
        "{dir}: {} classes, {} {}x{}, {} train / {} val images",
        m.num_classes,
        m.encoding,
        m.width,
        m.height,
        set.num_rows(Split::Train),
        set.num_rows(Split::Val)
    );
    draw_text(
        &mut img,
        MARGIN,
        MARGIN,
        &fit(&title, ((WIDTH - 2 * MARGIN) / (font::CELL_W * 2)) as usize),
        2,
        INK,
    );

    let panel_w = (WIDTH - 3 * MARGIN) / 2;
    for (i, split) in Split::ALL.into_iter().enumerate() {
        let s = &summary.splits[&split];
        let x = MARGIN + i as u32 * (panel_w + MARGIN);
        draw_histogram(
            &mut img,
            x,
            hist_top,
            panel_w,
            split,
            &s.class_size_histogram,
            s.classes,
        );
    }

    let heading =
        format!("{n} {sample_split} samples, evenly spaced through the split (label: class)");
    draw_text(&mut img, MARGIN, grid_top, &heading, 2, INK);
    let cells_top = grid_top + 2 * CELL_H + 8;
    let chars = (THUMB / font::CELL_W) as usize;
    for k in 0..n {
        let index = k * total / n;
        let row = set.row(sample_split, index).map_err(StatsError::Read)?;
        let (cx, cy) = (
            MARGIN + (k as u32 % COLS) * (THUMB + GAP),
            cells_top + (k as u32 / COLS) * (THUMB + caption_h + GAP),
        );
        fill(&mut img, cx, cy, THUMB, THUMB, GRID);
        match thumbnail(row.image, m.encoding, m.width, m.height) {
            Some(t) => {
                let ox = cx + (THUMB - t.width()) / 2;
                let oy = cy + (THUMB - t.height()) / 2;
                imageops::replace(&mut img, &t, i64::from(ox), i64::from(oy));
            }
            None => draw_text(&mut img, cx + 4, cy + THUMB / 2, "decode failed", 1, BAD),
        }
        let name = set
            .classes()
            .get(row.label as usize)
            .map(String::as_str)
            .unwrap_or("?");
        draw_text(
            &mut img,
            cx,
            cy + THUMB + 3,
            &fit(&format!("{}: {name}", row.label), chars),
            1,
            INK,
        );
        let key = row.key.rsplit('/').next().unwrap_or(row.key);
        draw_text(
            &mut img,
            cx,
            cy + THUMB + 3 + CELL_H + 1,
            &fit(key, chars),
            1,
            AXIS,
        );
    }
    Ok(img)
}

/// Render and write the figure as PNG.
pub fn write_plot(set: &ShardSet, summary: &Summary, path: &Path) -> Result<(), StatsError> {
    let img = render(set, summary)?;
    img.save_with_format(path, image::ImageFormat::Png)
        .map_err(|e| StatsError::Plot {
            path: path.to_path_buf(),
            detail: e.to_string(),
        })
}

/// The smallest of 1, 2, 5, 10, 20, 50, … at or above `at_least` (and 1
/// for 0): a tick spacing a reader can count in.
fn nice_step(at_least: u64) -> u64 {
    let mut base = 1u64;
    loop {
        for m in [1, 2, 5] {
            let step = base.saturating_mul(m);
            if step >= at_least || step == u64::MAX {
                return step;
            }
        }
        base = base.saturating_mul(10);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_counts() {
        let steps: Vec<u64> = [0, 1, 2, 3, 4, 6, 11, 26, 120, 4000]
            .iter()
            .map(|&n| nice_step(n))
            .collect();
        assert_eq!(steps, [1, 1, 2, 5, 5, 10, 20, 50, 200, 5000]);
        // A tallest bar of 3: ticks 0, 1, 2, 3; of 1: 0, 1; of 7: 0, 2, …, 8.
        for (tallest, want) in [(3u64, (1, 3)), (1, (1, 1)), (7, (2, 4))] {
            let step = nice_step(tallest.div_ceil(4));
            assert_eq!((step, tallest.div_ceil(step)), want, "{tallest}");
        }
    }

    #[test]
    fn text_is_drawn_inside_the_image_and_clipped() {
        let mut img = RgbImage::from_pixel(40, 10, WHITE);
        draw_text(&mut img, 0, 0, "Hi", 1, INK);
        let inked = img.pixels().filter(|p| **p == INK).count();
        assert!(inked > 10, "{inked}");
        // Far past the right edge: nothing drawn, no panic.
        draw_text(&mut img, 38, 5, "clipped text", 3, BAD);
        assert_eq!(fit("abcdef", 4), "abc~");
        assert_eq!(fit("abc", 4), "abc");
    }
}
