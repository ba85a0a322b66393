//! Recognising how a source lays out its images and labels.
//!
//! Three layouts, tried in this order unless `--layout` forces one:
//! IDX files (the MNIST family), list files (`train.csv` with
//! `image_id,label`, or `path label` text), class folders
//! (`train/<class>/<file>`, `val/<class>/<file>` under any common top folder).
//!
//! Invariants: classes are indexed from the sorted training class names
//! (numerically when every name is an integer, as list files and IDX labels
//! are); every entry of the source ends up either as an item or as a
//! rejected entry with its reason — nothing is dropped silently; each image
//! is packed at most once (a repeated list row or an image listed for both
//! splits is rejected, naming where it was first listed).
//!
//! Choices a layout makes on its own are returned as notes, which the
//! manifest (`options.layout_notes`) and the summary show:
//!
//! - A list file's first row is a header, and skipped, when its label is
//!   used by no other row and its image field names no file of the source
//!   (or the label is literally `label` or `class`). So `image_id,label`,
//!   `filename,category` or `path,target` are headers, while a first row
//!   naming a real image, or whose label other rows share, is data.
//! - A `path label` row splits at its last run of spaces or tabs: paths may
//!   hold spaces, labels do not.
//! - Class folders with several validation folders side by side
//!   (`train/`, `val/`, `test/`) use the first of `val`, `validation`,
//!   `valid`, `test`; the others' files are rejected as not part of the
//!   layout, naming the folder used.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Read;

use super::idx::{parse_idx_images, parse_idx_labels, IdxImages};
use super::source::{Entry, Source};
use super::PackError;
use crate::shard::{RejectedEntry, Split};

/// A source layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LayoutKind {
    ClassFolders,
    ListFiles,
    Idx,
}

impl LayoutKind {
    /// The spelling of `--layout`.
    pub fn as_str(self) -> &'static str {
        match self {
            LayoutKind::ClassFolders => "class-folders",
            LayoutKind::ListFiles => "list-files",
            LayoutKind::Idx => "idx",
        }
    }
}

impl std::fmt::Display for LayoutKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for LayoutKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "class-folders" | "folders" => Ok(LayoutKind::ClassFolders),
            "list-files" | "lists" => Ok(LayoutKind::ListFiles),
            "idx" => Ok(LayoutKind::Idx),
            other => Err(format!(
                "unknown layout '{other}' (expected class-folders, list-files or idx)"
            )),
        }
    }
}

/// Where an item's pixels come from.
#[derive(Debug, Clone)]
pub enum Payload {
    /// An encoded image file: index into `Source::entries()`.
    Entry(usize),
    /// Image `index` of IDX image set `set`.
    Idx { set: usize, index: usize },
}

#[derive(Debug, Clone)]
pub struct Item {
    pub split: Split,
    pub label: u32,
    pub key: String,
    pub payload: Payload,
}

/// The result of reading a source's layout.
pub struct Plan {
    pub layout: LayoutKind,
    pub classes: Vec<String>,
    pub items: Vec<Item>,
    pub rejected: Vec<RejectedEntry>,
    pub idx_sets: Vec<IdxImages>,
    /// What the layout decided on its own (a header row skipped, a
    /// validation folder chosen), for the manifest and the summary.
    pub notes: Vec<String>,
}

const TRAIN_DIRS: [&str; 2] = ["train", "training"];
const VAL_DIRS: [&str; 4] = ["val", "validation", "valid", "test"];

fn basename(name: &str) -> &str {
    name.rsplit('/').next().unwrap_or(name)
}

fn is_macos_junk(name: &str) -> bool {
    name.split('/').any(|c| c == "__MACOSX") || {
        let b = basename(name);
        b == ".DS_Store" || b.starts_with("._")
    }
}

fn reject(key: &str, split: Option<Split>, reason: impl Into<String>) -> RejectedEntry {
    RejectedEntry {
        key: key.to_string(),
        split,
        reason: reason.into(),
    }
}

/// Read the layout of `source` (detected, or the forced one).
pub fn plan(
    source: &Source,
    forced: Option<LayoutKind>,
    class_names: Option<&[String]>,
) -> Result<Plan, PackError> {
    let mut rejected = Vec::new();
    let mut usable = Vec::new();
    for (i, e) in source.entries().iter().enumerate() {
        if e.unsafe_path {
            rejected.push(reject(&e.name, None, "unsafe path"));
        } else if let Some(problem) = &e.problem {
            rejected.push(reject(&e.name, None, problem.clone()));
        } else if is_macos_junk(&e.name) {
            rejected.push(reject(&e.name, None, "macOS metadata"));
        } else {
            usable.push(i);
        }
    }
    let entries = source.entries();
    let found_idx = find_idx(entries, &usable);
    let found_lists = find_lists(entries, &usable);
    let kind = match forced {
        Some(k) => k,
        None if found_idx.is_some() => LayoutKind::Idx,
        None if found_lists.contains_key(&Split::Train) => LayoutKind::ListFiles,
        None if usable
            .iter()
            .any(|&i| class_folder(&entries[i].name).is_some()) =>
        {
            LayoutKind::ClassFolders
        }
        None => return Err(no_layout(source, &usable)),
    };
    let missing = || match forced {
        Some(kind) => forced_missing(source, &usable, kind),
        None => no_layout(source, &usable),
    };
    let mut plan = match kind {
        LayoutKind::Idx => {
            let found = found_idx.ok_or_else(missing)?;
            idx_plan(source, &usable, found, class_names)?
        }
        LayoutKind::ListFiles => {
            if !found_lists.contains_key(&Split::Train) {
                return Err(missing());
            }
            list_plan(source, &usable, &found_lists)?
        }
        LayoutKind::ClassFolders => {
            let plan = folder_plan(source, &usable)?;
            if plan.items.is_empty() {
                return Err(missing());
            }
            plan
        }
    };
    rejected.append(&mut plan.rejected);
    plan.rejected = rejected;
    if let Some(names) = class_names {
        if plan.layout != LayoutKind::Idx {
            if names.len() != plan.classes.len() {
                return Err(PackError::Usage(format!(
                    "--class-names gives {} names but the source has {} classes",
                    names.len(),
                    plan.classes.len()
                )));
            }
            plan.classes = names.to_vec();
        }
    }
    if let Some(bad) = plan.classes.iter().find(|n| n.contains(['\t', '\n', '\r'])) {
        return Err(PackError::Layout(format!(
            "class name {bad:?} contains a tab or newline"
        )));
    }
    Ok(plan)
}

fn no_layout(source: &Source, usable: &[usize]) -> PackError {
    PackError::Layout(format!(
        "{}: no known layout among {} entries (top-level names: {}). Tried: IDX files \
         (train-images-idx3-ubyte[.gz] + train-labels-idx1-ubyte[.gz]), list files \
         (train.csv 'image_id,label' or train.txt 'path label'), class folders \
         (train/<class>/<file> and val/<class>/<file>). Use --layout to force one.",
        source.info().name,
        usable.len(),
        top_names(source, usable)
    ))
}

/// The error for a `--layout` whose files are not in the source.
fn forced_missing(source: &Source, usable: &[usize], kind: LayoutKind) -> PackError {
    let needed = match kind {
        LayoutKind::Idx => {
            "a training IDX pair (train-images-idx3-ubyte[.gz] or train-images.idx3-ubyte, \
             with train-labels-idx1-ubyte[.gz])"
        }
        LayoutKind::ListFiles => {
            "a training list file (train.csv 'image_id,label', train.txt 'path label', \
             or train_list / train_labels with .csv, .txt or .tsv)"
        }
        LayoutKind::ClassFolders => "images under train/<class>/<file> (or val/<class>/<file>)",
    };
    PackError::Layout(format!(
        "{}: --layout {kind} needs {needed}, and none of the {} entries is one (top-level \
         names: {}). Leave out --layout to detect the layout.",
        source.info().name,
        usable.len(),
        top_names(source, usable)
    ))
}

fn top_names(source: &Source, usable: &[usize]) -> String {
    let tops: BTreeSet<&str> = usable
        .iter()
        .map(|&i| source.entries()[i].name.split('/').next().unwrap_or(""))
        .take(10_000)
        .collect();
    let shown: Vec<&str> = tops.into_iter().take(8).collect();
    if shown.is_empty() {
        "none".to_string()
    } else {
        shown.join(", ")
    }
}

/// `.../train/<class>/<file>` → (split, class).
fn class_folder(name: &str) -> Option<(Split, &str)> {
    let parts: Vec<&str> = name.split('/').collect();
    if parts.len() < 3 {
        return None;
    }
    let dir = parts[parts.len() - 3].to_ascii_lowercase();
    let class = parts[parts.len() - 2];
    let split = if TRAIN_DIRS.contains(&dir.as_str()) {
        Split::Train
    } else if VAL_DIRS.contains(&dir.as_str()) {
        Split::Val
    } else {
        return None;
    };
    (!class.is_empty()).then_some((split, class))
}

fn folder_plan(source: &Source, usable: &[usize]) -> Result<Plan, PackError> {
    let entries = source.entries();
    let mut rejected = Vec::new();
    let mut found = Vec::new();
    let mut val_dirs = BTreeSet::new();
    for &i in usable {
        let name = &entries[i].name;
        match class_folder(name) {
            Some((split, class)) => {
                if split == Split::Val {
                    let parts: Vec<&str> = name.split('/').collect();
                    val_dirs.insert(parts[..parts.len() - 2].join("/"));
                }
                found.push((i, split, class.to_string()));
            }
            None => rejected.push(reject(
                name,
                None,
                "not part of the layout (expected train/<class>/<file> or val/<class>/<file>)",
            )),
        }
    }
    let mut notes = Vec::new();
    if val_dirs.len() > 1 {
        let parent = |d: &str| d.rsplit_once('/').map_or("", |(p, _)| p).to_string();
        let parents: BTreeSet<String> = val_dirs.iter().map(|d| parent(d)).collect();
        if parents.len() > 1 {
            return Err(PackError::Layout(format!(
                "{}: validation folders in different places ({}); keep one, or use list files",
                source.info().name,
                val_dirs.into_iter().collect::<Vec<_>>().join(", ")
            )));
        }
        // Side by side (`train/`, `val/`, `test/`): `val` is the split a
        // training run validates on; `test` is held out for the end.
        let rank = |d: &String| {
            let last = d.rsplit('/').next().unwrap_or(d).to_ascii_lowercase();
            VAL_DIRS
                .iter()
                .position(|v| *v == last)
                .unwrap_or(VAL_DIRS.len())
        };
        let chosen = val_dirs
            .iter()
            .min_by_key(|d| (rank(d), d.as_str()))
            .cloned()
            .unwrap_or_default();
        let mut ignored = Vec::new();
        found.retain(|(i, split, _)| {
            let name = &entries[*i].name;
            let in_chosen = name.starts_with(&format!("{chosen}/"));
            if *split == Split::Val && !in_chosen {
                let parts: Vec<&str> = name.split('/').collect();
                let dir = parts[..parts.len() - 2].join("/");
                rejected.push(reject(
                    name,
                    None,
                    format!(
                        "not part of the layout (validation folder '{dir}' ignored: \
                         '{chosen}' is the validation split)"
                    ),
                ));
                ignored.push(dir);
                return false;
            }
            true
        });
        let ignored: BTreeSet<String> = ignored.into_iter().collect();
        notes.push(format!(
            "validation split from '{chosen}/'; ignored {} (their files are listed as rejected)",
            ignored
                .iter()
                .map(|d| format!("'{d}/'"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    let classes = sorted_classes(
        found
            .iter()
            .filter(|(_, s, _)| *s == Split::Train)
            .map(|(_, _, c)| c.clone()),
    );
    let index = class_index(&classes);
    let mut items = Vec::with_capacity(found.len());
    for (i, split, class) in found {
        let label = *index.get(class.as_str()).ok_or_else(|| {
            PackError::Layout(format!(
                "validation class '{class}' (entry '{}') has no training images",
                entries[i].name
            ))
        })?;
        items.push(Item {
            split,
            label,
            key: entries[i].name.clone(),
            payload: Payload::Entry(i),
        });
    }
    Ok(Plan {
        layout: LayoutKind::ClassFolders,
        classes,
        items,
        rejected,
        idx_sets: Vec::new(),
        notes,
    })
}

/// Sort class names: numerically when all are integers, else as strings.
fn sorted_classes(names: impl Iterator<Item = String>) -> Vec<String> {
    let set: BTreeSet<String> = names.collect();
    let mut v: Vec<String> = set.into_iter().collect();
    if !v.is_empty() && v.iter().all(|n| n.parse::<u64>().is_ok()) {
        v.sort_by_key(|n| n.parse::<u64>().unwrap_or(u64::MAX));
    }
    v
}

fn class_index(classes: &[String]) -> HashMap<&str, u32> {
    classes
        .iter()
        .enumerate()
        .map(|(i, c)| (c.as_str(), i as u32))
        .collect()
}

fn list_split(base: &str) -> Option<Split> {
    let lower = base.to_ascii_lowercase();
    let stem = lower
        .strip_suffix(".csv")
        .or_else(|| lower.strip_suffix(".txt"))
        .or_else(|| lower.strip_suffix(".tsv"))?;
    let stem = stem
        .strip_suffix("_list")
        .or_else(|| stem.strip_suffix("_labels"))
        .or_else(|| stem.strip_suffix("_label"))
        .unwrap_or(stem);
    if TRAIN_DIRS.contains(&stem) {
        Some(Split::Train)
    } else if VAL_DIRS.contains(&stem) {
        Some(Split::Val)
    } else {
        None
    }
}

fn find_lists(entries: &[Entry], usable: &[usize]) -> BTreeMap<Split, usize> {
    let mut found = BTreeMap::new();
    for &i in usable {
        if let Some(split) = list_split(basename(&entries[i].name)) {
            // The shallowest list file wins (a nested copy is data, not the index).
            let depth = |j: usize| entries[j].name.matches('/').count();
            let keep = found.get(&split).is_some_and(|&j| depth(j) <= depth(i));
            if !keep {
                found.insert(split, i);
            }
        }
    }
    found
}

/// One row of a list file: (line number, image reference, label text).
type ListRow = (usize, String, String);

/// Rows of a list file, a header row included (see [`header_row`]).
fn parse_list(text: &str, file: &str) -> Result<Vec<ListRow>, PackError> {
    let mut rows = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let pair = if line.contains(',') {
            let mut fields = line.split(',').map(str::trim);
            fields.next().zip(fields.next())
        } else {
            // The label is the last field: paths may hold spaces.
            line.rsplit_once(|c: char| c.is_whitespace())
                .map(|(image, label)| (image.trim_end(), label))
        };
        let Some((image, label)) = pair else {
            return Err(PackError::Layout(format!(
                "{file} line {}: expected 'image,label' or 'path label', found {line:?}",
                n + 1
            )));
        };
        rows.push((
            n + 1,
            image.trim_matches('"').to_string(),
            label.trim_matches('"').to_string(),
        ));
    }
    Ok(rows)
}

/// Whether the first row is a header: its label is used by no other row
/// and its image field names no file (`found`), or the label is literally
/// `label` or `class` (module header).
fn header_row(rows: &[ListRow], found: impl Fn(&str) -> bool) -> bool {
    let Some((_, image, label)) = rows.first() else {
        return false;
    };
    if label.eq_ignore_ascii_case("label") || label.eq_ignore_ascii_case("class") {
        return true;
    }
    !rows[1..].iter().any(|(_, _, l)| l == label) && !found(image)
}

fn list_plan(
    source: &Source,
    usable: &[usize],
    lists: &BTreeMap<Split, usize>,
) -> Result<Plan, PackError> {
    let entries = source.entries();
    let list_entries: BTreeSet<usize> = lists.values().copied().collect();
    let by_name: HashMap<&str, usize> = usable
        .iter()
        .map(|&i| (entries[i].name.as_str(), i))
        .collect();
    let mut by_base: HashMap<&str, Option<usize>> = HashMap::new();
    let mut by_stem: HashMap<&str, Option<usize>> = HashMap::new();
    for &i in usable {
        let base = basename(&entries[i].name);
        let stem = base.rsplit_once('.').map_or(base, |(s, _)| s);
        // `None` marks an ambiguous name, resolvable only by its full path.
        by_base
            .entry(base)
            .and_modify(|v| *v = None)
            .or_insert(Some(i));
        by_stem
            .entry(stem)
            .and_modify(|v| *v = None)
            .or_insert(Some(i));
    }
    let join = |a: &str, b: &str| {
        if a.is_empty() {
            b.to_string()
        } else {
            format!("{a}/{b}")
        }
    };
    let resolve = |dir: &str, split: Split, image: &str| {
        [
            join(dir, image),
            join(&join(dir, split.as_str()), image),
            image.to_string(),
        ]
        .iter()
        .find_map(|c| by_name.get(c.as_str()).copied())
        .or_else(|| by_base.get(basename(image)).copied().flatten())
        .or_else(|| by_stem.get(basename(image)).copied().flatten())
    };
    let mut notes = Vec::new();
    let mut rows_by_split = Vec::new();
    for (&split, &li) in lists {
        let list = &entries[li];
        let bytes = source
            .read(list)
            .map_err(|e| PackError::Layout(format!("{}: {e}", list.name)))?;
        let text = String::from_utf8(bytes)
            .map_err(|_| PackError::Layout(format!("{}: not UTF-8 text", list.name)))?;
        let dir = list.name.rsplit_once('/').map_or("", |(d, _)| d);
        let mut rows = parse_list(&text, &list.name)?;
        if header_row(&rows, |image| resolve(dir, split, image).is_some()) {
            let (line, ..) = rows.remove(0);
            let raw = text.lines().nth(line - 1).unwrap_or("").trim();
            notes.push(format!(
                "{} line {line}: {raw:?} read as a header row and skipped",
                list.name
            ));
        }
        rows_by_split.push((split, list.name.clone(), dir.to_string(), rows));
    }
    let train_labels = rows_by_split
        .iter()
        .filter(|(s, ..)| *s == Split::Train)
        .flat_map(|(.., rows)| rows.iter().map(|(_, _, l)| l.clone()));
    let classes = sorted_classes(train_labels);
    let index = class_index(&classes);
    let mut items = Vec::new();
    let mut rejected = Vec::new();
    // Entry → where it was first listed: (split, list file, line).
    let mut used: HashMap<usize, (Split, &str, usize)> = HashMap::new();
    for (split, list_name, dir, rows) in &rows_by_split {
        for (line, image, label) in rows {
            let Some(i) = resolve(dir, *split, image) else {
                rejected.push(reject(
                    image,
                    Some(*split),
                    format!("listed in {list_name} line {line} but not found in the source"),
                ));
                continue;
            };
            if let Some(&(first_split, first_list, first_line)) = used.get(&i) {
                let reason = if first_split == *split {
                    format!(
                        "listed twice (first at {first_list} line {first_line}, again at \
                         {list_name} line {line}); packed once"
                    )
                } else {
                    format!(
                        "also listed in {first_split} ({first_list} line {first_line}); \
                         {list_name} line {line} skipped, the image is packed in {first_split} only"
                    )
                };
                rejected.push(reject(&entries[i].name, Some(*split), reason));
                continue;
            }
            let label = *index.get(label.as_str()).ok_or_else(|| {
                PackError::Layout(format!(
                    "{list_name} line {line}: class '{label}' has no training images"
                ))
            })?;
            used.insert(i, (*split, list_name.as_str(), *line));
            items.push(Item {
                split: *split,
                label,
                key: entries[i].name.clone(),
                payload: Payload::Entry(i),
            });
        }
    }
    for &i in usable {
        if !used.contains_key(&i) && !list_entries.contains(&i) {
            rejected.push(reject(
                &entries[i].name,
                None,
                "not listed in any list file",
            ));
        }
    }
    Ok(Plan {
        layout: LayoutKind::ListFiles,
        classes,
        items,
        rejected,
        idx_sets: Vec::new(),
        notes,
    })
}

struct IdxFiles {
    sets: Vec<(Split, usize, usize)>, // (split, images entry, labels entry)
}

fn idx_role(base: &str) -> Option<(Split, bool)> {
    let b = base.strip_suffix(".gz").unwrap_or(base);
    let (split, rest) = if let Some(r) = b.strip_prefix("train-") {
        (Split::Train, r)
    } else if let Some(r) = b
        .strip_prefix("t10k-")
        .or_else(|| b.strip_prefix("test-"))
        .or_else(|| b.strip_prefix("val-"))
    {
        (Split::Val, r)
    } else {
        return None;
    };
    // `train-images-idx3-ubyte` as distributed; `train-images.idx3-ubyte`
    // as Kaggle's copies name them.
    if rest.starts_with("images-idx") || rest.starts_with("images.idx") {
        Some((split, true))
    } else if rest.starts_with("labels-idx1") || rest.starts_with("labels.idx1") {
        Some((split, false))
    } else {
        None
    }
}

fn find_idx(entries: &[Entry], usable: &[usize]) -> Option<IdxFiles> {
    let mut images = BTreeMap::new();
    let mut labels = BTreeMap::new();
    for &i in usable {
        if let Some((split, is_images)) = idx_role(basename(&entries[i].name)) {
            if is_images {
                images.insert(split, i);
            } else {
                labels.insert(split, i);
            }
        }
    }
    let sets: Vec<_> = images
        .iter()
        .filter_map(|(s, &im)| labels.get(s).map(|&lb| (*s, im, lb)))
        .collect();
    sets.iter()
        .any(|(s, ..)| *s == Split::Train)
        .then_some(IdxFiles { sets })
}

fn read_maybe_gz(source: &Source, entry: &Entry) -> Result<Vec<u8>, PackError> {
    let raw = source
        .read(entry)
        .map_err(|e| PackError::Layout(format!("{}: {e}", entry.name)))?;
    if entry.name.ends_with(".gz") || raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::MultiGzDecoder::new(raw.as_slice())
            .read_to_end(&mut out)
            .map_err(|e| PackError::Layout(format!("{}: corrupt gzip: {e}", entry.name)))?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

fn idx_plan(
    source: &Source,
    usable: &[usize],
    found: IdxFiles,
    class_names: Option<&[String]>,
) -> Result<Plan, PackError> {
    let entries = source.entries();
    let mut idx_sets = Vec::new();
    let mut items = Vec::new();
    let mut used = BTreeSet::new();
    let mut max_label = 0u32;
    let mut train_labels = BTreeSet::new();
    for (split, im, lb) in found.sets {
        used.insert(im);
        used.insert(lb);
        let images = parse_idx_images(read_maybe_gz(source, &entries[im])?)
            .map_err(|e| PackError::Layout(format!("{}: {e}", entries[im].name)))?;
        let labels = parse_idx_labels(&read_maybe_gz(source, &entries[lb])?)
            .map_err(|e| PackError::Layout(format!("{}: {e}", entries[lb].name)))?;
        if labels.len() != images.count {
            return Err(PackError::Layout(format!(
                "{} holds {} images but {} holds {} labels",
                entries[im].name,
                images.count,
                entries[lb].name,
                labels.len()
            )));
        }
        let set = idx_sets.len();
        for (index, &label) in labels.iter().enumerate() {
            let label = u32::from(label);
            max_label = max_label.max(label);
            if split == Split::Train {
                train_labels.insert(label);
            }
            items.push(Item {
                split,
                label,
                key: format!("{}#{index}", entries[im].name),
                payload: Payload::Idx { set, index },
            });
        }
        idx_sets.push(images);
    }
    // IDX labels are already class indices; a val label beyond the training
    // range is the same error as an unknown val class in the other layouts.
    let num_classes = train_labels.iter().max().map_or(0, |m| m + 1);
    if let Some(item) = items.iter().find(|it| it.label >= num_classes) {
        return Err(PackError::Layout(format!(
            "{}: label {} has no training images",
            item.key, item.label
        )));
    }
    let classes = match class_names {
        Some(names) => {
            if names.len() != num_classes as usize {
                return Err(PackError::Usage(format!(
                    "--class-names gives {} names but the IDX labels span {} classes",
                    names.len(),
                    num_classes
                )));
            }
            names.to_vec()
        }
        None => (0..num_classes).map(|c| c.to_string()).collect(),
    };
    let rejected = usable
        .iter()
        .filter(|i| !used.contains(i))
        .map(|&i| {
            reject(
                &entries[i].name,
                None,
                "not part of the layout (IDX source)",
            )
        })
        .collect();
    Ok(Plan {
        layout: LayoutKind::Idx,
        classes,
        items,
        rejected,
        idx_sets,
        notes: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn class_folder_paths() {
        assert_eq!(class_folder("train/cat/1.jpg"), Some((Split::Train, "cat")));
        assert_eq!(
            class_folder("top/deeper/val/dog/2.png"),
            Some((Split::Val, "dog"))
        );
        assert_eq!(class_folder("README.txt"), None);
        assert_eq!(class_folder("train/1.jpg"), None);
        assert_eq!(class_folder("other/cat/1.jpg"), None);
    }

    #[test]
    fn list_file_names_and_rows() {
        assert_eq!(list_split("train.csv"), Some(Split::Train));
        assert_eq!(list_split("val_list.txt"), Some(Split::Val));
        assert_eq!(list_split("notes.txt"), None);
        let rows = parse_list("image_id,label\na.jpg,3\nb.jpg, 1\n", "train.csv").unwrap();
        assert_eq!(
            rows,
            vec![
                (1, "image_id".into(), "label".into()),
                (2, "a.jpg".into(), "3".into()),
                (3, "b.jpg".into(), " 1".trim().into())
            ]
        );
        let rows = parse_list("x/a.jpg 7\n\n# c\n", "train.txt").unwrap();
        assert_eq!(rows, vec![(1, "x/a.jpg".into(), "7".into())]);
        assert!(parse_list("lonely\n", "train.txt").is_err());
    }

    #[test]
    fn path_label_rows_split_at_the_last_space() {
        let rows = parse_list(
            "my photos/cat 1.jpg 3\nsummer trip/IMG 0001.JPG\t\t12\n",
            "train.txt",
        )
        .unwrap();
        assert_eq!(
            rows,
            vec![
                (1, "my photos/cat 1.jpg".into(), "3".into()),
                (2, "summer trip/IMG 0001.JPG".into(), "12".into())
            ]
        );
    }

    #[test]
    fn header_rows_are_recognised_by_content() {
        let rows = |text: &str| parse_list(text, "train.csv").unwrap();
        let exists = |name: &str| name.ends_with(".jpg");
        // Any header wording, numeric or named labels.
        for text in [
            "filename,category\na.jpg,1\nb.jpg,10\nc.jpg,2\n",
            "path,target\na.jpg,cat\nb.jpg,dog\n",
            "image_id,label\na.jpg,3\n",
            "id,class\nlabel.jpg,class\n",
        ] {
            assert!(header_row(&rows(text), exists), "{text:?}");
        }
        // Data rows: the image exists, or the label is shared.
        for text in [
            "a.jpg,cat\nb.jpg,dog\n",
            "missing.jpg,1\nb.jpg,1\n",
            "a.jpg,category\nb.jpg,1\n",
        ] {
            assert!(!header_row(&rows(text), exists), "{text:?}");
        }
        assert!(!header_row(&[], exists));
    }
    #[test]
    fn classes_sort_numerically_when_numeric() {
        let v = sorted_classes(["10", "2", "1"].into_iter().map(String::from));
        assert_eq!(v, ["1", "2", "10"]);
        let v = sorted_classes(["b", "a10", "a2"].into_iter().map(String::from));
        assert_eq!(v, ["a10", "a2", "b"]);
    }

    #[test]
    fn idx_names_with_dots_or_dashes() {
        for (name, want) in [
            ("train-images-idx3-ubyte.gz", Some((Split::Train, true))),
            ("train-images.idx3-ubyte", Some((Split::Train, true))),
            ("train-labels.idx1-ubyte", Some((Split::Train, false))),
            ("t10k-images.idx3-ubyte", Some((Split::Val, true))),
            ("t10k-labels.idx1-ubyte.gz", Some((Split::Val, false))),
            ("train-notes.txt", None),
        ] {
            assert_eq!(idx_role(name), want, "{name}");
        }
        assert_eq!(LayoutKind::ClassFolders.to_string(), "class-folders");
        for k in [
            LayoutKind::ClassFolders,
            LayoutKind::ListFiles,
            LayoutKind::Idx,
        ] {
            assert_eq!(k.as_str().parse::<LayoutKind>(), Ok(k));
        }
    }

    #[test]
    fn junk_detection() {
        assert!(is_macos_junk("__MACOSX/train/a/._x.jpg"));
        assert!(is_macos_junk("train/a/.DS_Store"));
        assert!(!is_macos_junk("train/a/x.jpg"));
    }
}
