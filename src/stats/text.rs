//! The human-readable rendering of a [`Report`]: aligned tables, sizes in
//! SI units, long lists cut short (the JSON document has every figure).

use std::fmt::Write;

use super::summary::Names;
use super::Report;
use crate::progress::human_bytes;
use crate::shard::Split;

/// Per-shard rows are printed only up to this many shards.
const SHARD_TABLE_LIMIT: usize = 20;
/// Class names printed inline after a count.
const INLINE_NAMES: usize = 8;

/// Columns aligned to their widest cell; the first column is left-aligned,
/// the others right-aligned (they hold numbers).
fn table(out: &mut String, header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| -> String {
        let mut s = String::new();
        for (i, (c, w)) in cells.iter().zip(&widths).enumerate() {
            if i == 0 {
                let _ = write!(s, "{c:<w$}");
            } else {
                let _ = write!(s, "  {c:>w$}");
            }
        }
        s.trim_end().to_string()
    };
    out.push_str(&line(header.to_vec()));
    out.push('\n');
    for r in rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
        out.push('\n');
    }
}

fn names_inline(n: &Names) -> String {
    if n.count == 0 {
        return "0".into();
    }
    // A name that holds the separator (or starts or ends with a space) is
    // quoted, so that `big, dog` and `dog` read as two names, not three.
    let shown: Vec<String> = n
        .names
        .iter()
        .take(INLINE_NAMES)
        .map(|name| {
            if name.contains(',') || name.trim() != name || name.is_empty() {
                format!("{name:?}")
            } else {
                name.clone()
            }
        })
        .collect();
    let more = if n.count as usize > shown.len() {
        ", …"
    } else {
        ""
    };
    format!("{} ({}{more})", n.count, shown.join(", "))
}

fn rgb(v: &Option<[f64; 3]>) -> String {
    match v {
        Some(v) => format!("{:.4} {:.4} {:.4}", v[0], v[1], v[2]),
        None => "-".to_string(),
    }
}

/// Render the report as text tables.
pub fn render_text(r: &Report) -> String {
    let mut out = String::new();
    if let Some(s) = &r.summary {
        let _ = writeln!(
            out,
            "{}: format v{}, {} {}x{} (WxH), {} classes, source {} ({})\n",
            r.dir,
            s.format_version,
            s.encoding,
            s.width,
            s.height,
            s.num_classes,
            s.source.name,
            human_bytes(s.source.size)
        );
        for note in &s.layout_notes {
            let _ = writeln!(out, "note (ebv-pack): {note}");
        }
        if !s.layout_notes.is_empty() {
            out.push('\n');
        }
        let rows: Vec<Vec<String>> = s
            .splits
            .iter()
            .map(|(split, t)| {
                vec![
                    split.to_string(),
                    t.shards.to_string(),
                    t.rows.to_string(),
                    t.row_groups.to_string(),
                    format!("{}..{}", t.rows_per_row_group.min, t.rows_per_row_group.max),
                    human_bytes(t.bytes),
                    human_bytes(t.image_bytes_per_row.round() as u64),
                    t.classes.to_string(),
                    t.classes_missing.to_string(),
                    format!(
                        "{} / {} / {:.1} / {}",
                        t.images_per_class.min,
                        t.images_per_class.median,
                        t.images_per_class.mean,
                        t.images_per_class.max
                    ),
                    t.below_min_images.count.to_string(),
                    t.rejected.to_string(),
                ]
            })
            .collect();
        let below = format!("<{} imgs", s.min_images);
        table(
            &mut out,
            &[
                "split",
                "shards",
                "rows",
                "row groups",
                "rows/group",
                "on disk",
                "image/row",
                "classes",
                "missing",
                "per class min / median / mean / max",
                &below,
                "rejected",
            ],
            &rows,
        );
        out.push('\n');
        let _ = writeln!(
            out,
            "classes only in train: {}",
            names_inline(&s.classes.only_in_train)
        );
        let _ = writeln!(
            out,
            "classes only in val:   {}",
            names_inline(&s.classes.only_in_val)
        );
        for (split, t) in &s.splits {
            if t.below_min_images.count > 0 {
                let _ = writeln!(
                    out,
                    "{split} classes with 1..{} images: {}",
                    s.min_images.saturating_sub(1),
                    names_inline(&t.below_min_images)
                );
            }
        }
        let rj = &s.rejected;
        let _ = writeln!(
            out,
            "rejected source entries: {} (train {}, val {}, no split {})",
            rj.total, rj.train, rj.val, rj.no_split
        );
        for (reason, n) in &rj.by_reason {
            let _ = writeln!(out, "  {n:>8}  {reason}");
        }
        out.push('\n');
        if s.shards.len() <= SHARD_TABLE_LIMIT {
            let rows: Vec<Vec<String>> = s
                .shards
                .iter()
                .map(|sh| {
                    vec![
                        sh.file.clone(),
                        sh.rows.to_string(),
                        sh.row_groups.to_string(),
                        human_bytes(sh.bytes),
                        format!("{}..{}", sh.label_min, sh.label_max),
                        sh.distinct_labels.to_string(),
                    ]
                })
                .collect();
            table(
                &mut out,
                &[
                    "shard",
                    "rows",
                    "row groups",
                    "on disk",
                    "labels",
                    "distinct",
                ],
                &rows,
            );
        } else {
            let _ = writeln!(
                out,
                "{} shards (per-shard figures with --json)",
                s.shards.len()
            );
        }
    }

    if let Some(d) = &r.deep {
        let _ = writeln!(
            out,
            "\ndeep: decoded {} images{} in {:.2} s ({:.0} images/s, {} threads)",
            d.images,
            if d.coded_data_checked {
                " and walked their coded data"
            } else {
                ""
            },
            d.wall_s,
            d.images_per_s,
            d.threads
        );
        // The damaged column only when the coded data was walked: a 0 there
        // would otherwise claim a check that did not run.
        let rows: Vec<Vec<String>> = d
            .splits
            .iter()
            .map(|(split, t)| {
                let mut row = vec![
                    split.to_string(),
                    t.images.to_string(),
                    t.failures.to_string(),
                ];
                if d.coded_data_checked {
                    row.push(t.damaged.unwrap_or(0).to_string());
                }
                row.extend([
                    t.other_size.to_string(),
                    rgb(&t.mean),
                    rgb(&t.std),
                    t.duplicate_groups.to_string(),
                    t.duplicate_rows.to_string(),
                ]);
                row
            })
            .collect();
        let mut head = vec!["split", "images", "failures"];
        if d.coded_data_checked {
            head.push("damaged");
        }
        head.extend([
            "other size",
            "mean R G B (0-1)",
            "std R G B (0-1)",
            "dup groups",
            "dup rows",
        ]);
        table(&mut out, &head, &rows);
        let norm = [Split::Train, Split::Val]
            .into_iter()
            .find_map(|s| d.splits.get(&s).and_then(|t| Some((s, t.mean?, t.std?))));
        if let Some((main, m, sd)) = norm {
            let _ = writeln!(
                out,
                "normalisation ({main}): mean=[{:.4}, {:.4}, {:.4}], std=[{:.4}, {:.4}, {:.4}]",
                m[0], m[1], m[2], sd[0], sd[1], sd[2]
            );
        }
        for (split, t) in &d.splits {
            let Some(j) = t.jpeg.as_ref().filter(|_| t.images > 0) else {
                continue;
            };
            let chroma: Vec<String> = j.chroma.iter().map(|(k, n)| format!("{k} {n}")).collect();
            let _ = writeln!(
                out,
                "jpeg ({split}): {} sequential, {} progressive; chroma {}",
                j.sequential,
                j.progressive,
                if chroma.is_empty() {
                    "-".to_string()
                } else {
                    chroma.join(", ")
                }
            );
        }
        let a = &d.duplicates.across_splits;
        let _ = writeln!(
            out,
            "images in both splits: {} ({} train rows, {} val rows)",
            a.groups, a.train_rows, a.val_rows
        );
        if !d.duplicates.examples.is_empty() {
            let _ = writeln!(out, "duplicate groups (within or across splits):");
        }
        for g in &d.duplicates.examples {
            let rows: Vec<String> = g
                .rows
                .iter()
                .map(|r| format!("{} {}#{} ({})", r.split, r.file, r.row, r.key))
                .collect();
            let _ = writeln!(
                out,
                "  {}x {}: {}",
                g.count,
                &g.content_hash[..12],
                rows.join(", ")
            );
        }
        if d.duplicates.examples_truncated {
            let _ = writeln!(out, "  … more duplicate groups (see --json)");
        }
        if !d.failures.is_empty() {
            let _ = writeln!(out, "decode failures:");
            for f in &d.failures {
                let _ = writeln!(out, "  {} row {} ({}): {}", f.file, f.row, f.key, f.error);
            }
            if d.failures_truncated {
                let _ = writeln!(out, "  … more (counts above are complete)");
            }
        }
        if !d.damaged.is_empty() {
            let _ = writeln!(
                out,
                "damaged coded data (decoded anyway; libjpeg warns \"Corrupt JPEG data\" or \"Inconsistent progression sequence\"):"
            );
            for f in &d.damaged {
                let _ = writeln!(out, "  {} row {} ({}): {}", f.file, f.row, f.key, f.error);
            }
            if d.damaged_truncated {
                let _ = writeln!(out, "  … more (counts above are complete)");
            }
        }
    }

    if let Some(v) = &r.verify {
        if v.ok {
            let _ = writeln!(
                out,
                "\nverify: OK ({} shards, {} hashed; checksums, page structure, rows and labels match manifest.json)",
                v.shards_checked,
                human_bytes(v.bytes_hashed)
            );
        } else {
            let _ = writeln!(out, "\nverify: FAILED, {} problem(s):", v.problems.len());
            for p in &v.problems {
                let _ = writeln!(out, "  {}: {}", p.file, p.problem);
            }
        }
    }
    if let Some(p) = &r.plot {
        let _ = writeln!(out, "\nplot written to {p}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inline_names_quote_the_ambiguous() {
        let n = Names {
            count: 2,
            names: vec!["big, dog".into(), "dog".into()],
            truncated: false,
        };
        assert_eq!(names_inline(&n), "2 (\"big, dog\", dog)");
    }

    #[test]
    fn sizes_and_tables() {
        assert_eq!(human_bytes(999), "999 B");
        assert_eq!(human_bytes(1_234_567), "1.2 MB");
        let mut s = String::new();
        table(&mut s, &["a", "bb"], &[vec!["xyz".into(), "1".into()]]);
        assert_eq!(s, "a    bb\nxyz   1\n");
    }
}
