//! Recognising how a source lays out its images and labels.
//!
//! Three layouts, tried in this order unless `--layout` forces one:
//! IDX files (the MNIST family), list files (`train.csv` with
//! `image_id,label`, or `path label` text), class folders
//! (`train/<class>/<file>`, `val/<class>/<file>` under any common top folder).
//!
//! Invariants: classes are indexed from the sorted training class names
//! (numerically when every name is an unsigned integer, as list files and
//! IDX labels are); every entry of the source ends up either as an item or as a
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
//!   hold spaces, labels do not. CSV rows follow RFC 4180 quoting; with
//!   more than two fields a header naming a `label` (`class`, `category`,
//!   …) column, or `--label-column`, picks the label and image columns;
//!   without either the layout is an error (the label column would be a
//!   guess). A byte-order mark is dropped.
//! - A list row names its image as a path from the list's folder, from its
//!   `<split>/` subfolder or from the top, with or without the extension
//!   (the paper's ids), then the same for ever shorter tails of the path
//!   (lists written elsewhere, with absolute paths), and only then as a
//!   file name unique in the source;
//!   so `0001` is `train/0001.jpg` in `train.csv` and `val/0001.jpg` in
//!   `val.csv`. A name several files share is rejected as ambiguous, a row
//!   without a label as such, each with its list and line.
//! - Class folders with several validation folders side by side
//!   (`train/`, `val/`, `test/`) use the first of `val`, `validation`,
//!   `valid`, `test` (`val/` before `VAL/`: the exact spelling before a
//!   case variant); the others' files are rejected as not part of the
//!   layout, naming the folder used. Validation folders in different
//!   places, and training folders in more than one place (`train/` and
//!   `backup/train/`, `train/` and `training/`), are an error naming them:
//!   packing them all would double what they share.
//! - A class folder whose name starts with `.` (`.ipynb_checkpoints`) is no
//!   class: its files are rejected as a hidden folder.
//!
//! A rejected entry records the split it would have gone to (the list that
//! names it, the `train/`/`val/` folder it lies under, macOS metadata
//! included), so per-split counts add up; entries outside every split
//! record none.

use std::borrow::Cow;
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

const MACOS_METADATA: &str = "macOS metadata";

/// Why a file of a list-files source that no list names is rejected.
pub(crate) const NOT_LISTED: &str = "not listed in any list file";

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
    columns: &ListColumns,
) -> Result<Plan, PackError> {
    let mut rejected = Vec::new();
    let mut usable = Vec::new();
    // Entries the source could not read (encrypted, another compression, a
    // repeated name): the layout still says which split they belonged to.
    let mut problems = Vec::new();
    // macOS metadata: rejected once the layout says which split it lies in.
    let mut junk = Vec::new();
    for (i, e) in source.entries().iter().enumerate() {
        if e.unsafe_path {
            rejected.push(reject(&e.name, None, "unsafe path"));
        } else if e.problem.is_some() {
            problems.push(i);
        } else if is_macos_junk(&e.name) {
            junk.push(i);
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
            .chain(&problems)
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
            let mut plan = idx_plan(source, &usable, found, class_names)?;
            plan.rejected
                .extend(problems.iter().map(|&i| problem_reject(&entries[i], None)));
            plan
        }
        LayoutKind::ListFiles => {
            if !found_lists.contains_key(&Split::Train) {
                return Err(missing());
            }
            list_plan(source, &usable, &problems, &found_lists, columns)?
        }
        LayoutKind::ClassFolders => {
            let plan = folder_plan(source, &usable, &problems, &junk)?;
            if plan.items.is_empty() {
                return Err(missing());
            }
            plan
        }
    };
    if plan.layout != LayoutKind::ClassFolders {
        // Lists and IDX files name their splits themselves: a file they do
        // not name belongs to none.
        rejected.extend(
            junk.iter()
                .map(|&i| reject(&entries[i].name, None, MACOS_METADATA)),
        );
    }
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
            // Names are given in label order and rename classes by
            // position, so a file giving class i the name the source gives
            // class j is a list of the source's own names in another order:
            // it would label every image of j as i's.
            let own: HashMap<&str, usize> = plan
                .classes
                .iter()
                .enumerate()
                .map(|(i, n)| (n.as_str(), i))
                .collect();
            let moved = names
                .iter()
                .enumerate()
                .find_map(|(i, n)| own.get(n.as_str()).filter(|&&j| j != i).map(|&j| (i, j)));
            if let Some((i, j)) = moved {
                return Err(PackError::Usage(format!(
                    "--class-names: line {} names class {i} {:?}, which is the source's class {j}; \
                     class {i} of the source is {:?}. The file renames classes by position (label \
                     order: the sorted training class names): list the new names in that order, \
                     or leave --class-names out to keep the source's names",
                    i + 1,
                    names[i],
                    plan.classes[i]
                )));
            }
            plan.classes = names.to_vec();
        }
    }
    if let Some(bad) = plan.classes.iter().find(|n| !class_name_ok(n)) {
        return Err(PackError::Usage(format!(
            "--class-names: class name {bad:?} is empty or contains a tab or newline"
        )));
    }
    Ok(plan)
}

/// Whether `classes.tsv` can hold `name` on one line (`index<TAB>name`).
fn class_name_ok(name: &str) -> bool {
    !name.is_empty() && !name.contains(['\t', '\n', '\r'])
}

/// A rejection for an entry the source could not read (`Entry::problem`).
fn problem_reject(entry: &Entry, split: Option<Split>) -> RejectedEntry {
    reject(&entry.name, split, entry.problem.as_deref().unwrap_or(""))
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

/// The class folder a class-folder source's entry lies in.
pub(crate) fn class_of(name: &str) -> Option<&str> {
    class_folder(name).map(|(_, class)| class)
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

/// The split a path lies under, for rejected entries (an unreadable one, a
/// nested folder): its own `split/class/file` split when it has that shape,
/// else the innermost `train`/`val` folder above it; a validation folder
/// only when it is the one chosen (`chosen_val`, when several stand side by
/// side).
fn split_above(name: &str, chosen_val: Option<&str>) -> Option<Split> {
    // `split/class/file` itself first: a class may be named `val`.
    if let Some((split, _)) = class_folder(name) {
        let parts: Vec<&str> = name.split('/').collect();
        let dir = parts[..parts.len() - 2].join("/");
        return match (split, chosen_val) {
            (Split::Val, Some(chosen)) if chosen != dir => None,
            _ => Some(split),
        };
    }
    let parts: Vec<&str> = name.split('/').collect();
    let dirs = parts.len().saturating_sub(1);
    for k in (0..dirs).rev() {
        let dir = parts[k].to_ascii_lowercase();
        if TRAIN_DIRS.contains(&dir.as_str()) {
            return Some(Split::Train);
        }
        if VAL_DIRS.contains(&dir.as_str()) {
            let path = parts[..=k].join("/");
            return match chosen_val {
                Some(chosen) if chosen != path => None,
                _ => Some(Split::Val),
            };
        }
    }
    None
}

/// A class folder whose name starts with `.` (`.ipynb_checkpoints`, an
/// editor's or a sync tool's folder) holds no class: taking it for one
/// would give it a label and shift every real class's.
fn hidden_class(class: &str) -> bool {
    class.starts_with('.')
}

/// The split of macOS metadata in a class-folder source: the one of the
/// folder it lies in (`train/cat/.DS_Store` is a training entry), but none
/// for a zip's `__MACOSX/` shadow tree, which mirrors the folders without
/// being part of them.
fn junk_split(name: &str, chosen_val: Option<&str>) -> Option<Split> {
    if name.split('/').any(|c| c == "__MACOSX") {
        None
    } else {
        split_above(name, chosen_val)
    }
}

fn folder_plan(
    source: &Source,
    usable: &[usize],
    problems: &[usize],
    junk: &[usize],
) -> Result<Plan, PackError> {
    let entries = source.entries();
    let mut rejected = Vec::new();
    let mut found = Vec::new();
    // Rejected once the validation folder is known: (entry, reason).
    let mut outside = Vec::new();
    let mut split_dirs: BTreeMap<Split, BTreeSet<String>> = BTreeMap::new();
    let split_dir = |name: &str| {
        let parts: Vec<&str> = name.split('/').collect();
        parts[..parts.len().saturating_sub(2)].join("/")
    };
    for &i in usable {
        let name = &entries[i].name;
        match class_folder(name) {
            Some((_, class)) if hidden_class(class) => outside.push((
                i,
                format!("hidden folder ('{class}' starts with '.'; not a class)"),
            )),
            Some((split, class)) if class_name_ok(class) => {
                split_dirs.entry(split).or_default().insert(split_dir(name));
                found.push((i, split, class.to_string()));
            }
            Some((_, class)) => outside.push((
                i,
                format!(
                    "class folder name {class:?} contains a tab or newline (classes.tsv holds \
                     one name per line)"
                ),
            )),
            None => outside.push((
                i,
                "not part of the layout (expected train/<class>/<file> or val/<class>/<file>)"
                    .to_string(),
            )),
        }
    }
    // Classes of training images the source cannot read (encrypted, another
    // compression): still classes, so that their validation images pack and
    // the summary says the class lost its training images, as it does for
    // images rejected when decoded.
    let mut unreadable_classes = Vec::new();
    for &i in problems {
        match class_folder(&entries[i].name) {
            Some((split, class)) if !hidden_class(class) => {
                split_dirs
                    .entry(split)
                    .or_default()
                    .insert(split_dir(&entries[i].name));
                if split == Split::Train && class_name_ok(class) {
                    unreadable_classes.push(class.to_string());
                }
            }
            _ => {}
        }
    }
    // Training folders in several places (`train/` and `backup/train/`,
    // `a/train/` and `b/train/`, `train/` and `training/`) would all be
    // packed, doubling whatever they share; unlike validation folders side
    // by side, none of them is the obvious one to keep.
    let train_dirs = split_dirs.remove(&Split::Train).unwrap_or_default();
    if train_dirs.len() > 1 {
        return Err(PackError::Layout(format!(
            "{}: training folders in different places ({}); keep one, or use list files",
            source.info().name,
            train_dirs.into_iter().collect::<Vec<_>>().join(", ")
        )));
    }
    let val_dirs = split_dirs.remove(&Split::Val).unwrap_or_default();
    let mut notes = Vec::new();
    let chosen_val = if val_dirs.len() > 1 {
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
        // training run validates on; `test` is held out for the end. Of
        // `val/` and `VAL/`, the name as the README spells it wins.
        let rank = |d: &String| {
            let last = d.rsplit('/').next().unwrap_or(d);
            let lower = last.to_ascii_lowercase();
            let at = VAL_DIRS
                .iter()
                .position(|v| *v == lower)
                .unwrap_or(VAL_DIRS.len());
            (at, last != lower)
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
                let dir = split_dir(name);
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
        Some(chosen)
    } else {
        // The one validation folder: a `test/` beside it holding no image
        // (only metadata, a README) is not part of the val split either.
        val_dirs.into_iter().next()
    };
    for &i in junk {
        rejected.push(reject(
            &entries[i].name,
            junk_split(&entries[i].name, chosen_val.as_deref()),
            MACOS_METADATA,
        ));
    }
    for (i, reason) in outside {
        let name = &entries[i].name;
        rejected.push(reject(
            name,
            split_above(name, chosen_val.as_deref()),
            reason,
        ));
    }
    for &i in problems {
        let split = split_above(&entries[i].name, chosen_val.as_deref());
        rejected.push(problem_reject(&entries[i], split));
    }
    let classes = sorted_classes(
        found
            .iter()
            .filter(|(_, s, _)| *s == Split::Train)
            .map(|(_, _, c)| c.clone())
            .chain(unreadable_classes),
    );
    let index = class_index(&classes);
    let mut items = Vec::with_capacity(found.len());
    for (i, split, class) in found {
        let label = *index.get(class.as_str()).ok_or_else(|| {
            // A training folder of that name may hold files that are no
            // images (macOS metadata, a nested folder): name them.
            let held = rejected
                .iter()
                .find(|r| class_folder(&r.key) == Some((Split::Train, class.as_str())));
            let held = match held {
                Some(r) => format!(
                    " (its training folder holds no image: '{}' was rejected: {})",
                    r.key, r.reason
                ),
                None => String::new(),
            };
            PackError::Layout(format!(
                "validation class '{class}' (entry '{}') has no training images{held}{}",
                entries[i].name,
                normalization_hint(&class, &classes)
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

/// Groups of class indices whose names are one name in different Unicode
/// normalization forms (`café` composed, and `cafe` + a combining accent,
/// as macOS writes it): different bytes, so different classes, which the
/// user most likely meant as one.
pub(crate) fn same_but_normalization(classes: &[String]) -> Vec<Vec<usize>> {
    use unicode_normalization::{is_nfc_quick, IsNormalized, UnicodeNormalization};
    // Names are almost always NFC already: only the others are grouped.
    if classes
        .iter()
        .all(|c| is_nfc_quick(c.chars()) == IsNormalized::Yes)
    {
        return Vec::new();
    }
    let mut by_form: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (i, c) in classes.iter().enumerate() {
        by_form.entry(c.nfc().collect()).or_default().push(i);
    }
    by_form.into_values().filter(|g| g.len() > 1).collect()
}

/// For an error about `class`: the training class of the same name in
/// another Unicode normalization form, if there is one.
fn normalization_hint(class: &str, classes: &[String]) -> String {
    use unicode_normalization::UnicodeNormalization;
    let form: String = class.nfc().collect();
    match classes
        .iter()
        .find(|c| c.as_str() != class && c.nfc().eq(form.chars()))
    {
        // Debug formatting spells combining marks out (`\u{301}`).
        Some(c) => format!(
            "; the training class {c:?} is the same name in another Unicode normalization \
             form ({class:?} here): rename one folder so that both spell it alike"
        ),
        None => String::new(),
    }
}

/// Sort class names: numerically when all are integers, else as strings.
fn sorted_classes(names: impl Iterator<Item = String>) -> Vec<String> {
    let set: BTreeSet<String> = names.collect();
    let mut v: Vec<String> = set.into_iter().collect();
    let digits = |n: &str| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit());
    if !v.is_empty() && v.iter().all(|n| digits(n)) {
        // By value at any length (`99999999999999999999` included): fewer
        // significant digits first, then digit by digit; `01` after `1`.
        v.sort_by(|a, b| {
            let (ta, tb) = (a.trim_start_matches('0'), b.trim_start_matches('0'));
            (ta.len(), ta, a.len()).cmp(&(tb.len(), tb, b.len()))
        });
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

/// Whether `name` is a list file of `split` by its name (`val.txt`,
/// `val_list.csv`), wherever it lies.
pub(super) fn is_list_of(name: &str, split: Split) -> bool {
    list_split(basename(name)) == Some(split)
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

/// The columns of a CSV list the user named (`--image-column`,
/// `--label-column`): a header name (any case) or a 1-based number.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ListColumns {
    pub image: Option<String>,
    pub label: Option<String>,
}

impl ListColumns {
    fn is_empty(&self) -> bool {
        self.image.is_none() && self.label.is_none()
    }
}

/// Where the column `spec` (`--FLAG`) stands: a 1-based number, or its
/// name in the `first` row (then that row is a header).
fn column_of(
    spec: &str,
    flag: &str,
    first: &[String],
    file: &str,
) -> Result<(usize, bool), String> {
    if let Ok(n) = spec.parse::<usize>() {
        return match n {
            0 => Err(format!("--{flag} 0: columns are numbered from 1")),
            n => Ok((n - 1, false)),
        };
    }
    match first.iter().position(|c| c.eq_ignore_ascii_case(spec)) {
        Some(i) => Ok((i, true)),
        None => Err(format!(
            "{file}: --{flag} {spec:?}: no such column in its first row ({})",
            first.join(", ")
        )),
    }
}

/// A list file read into rows.
#[derive(Debug, Default, PartialEq)]
struct ListText {
    /// Rows with an image and a label, a header row included (see
    /// [`header_row`]) unless the header named its columns.
    rows: Vec<ListRow>,
    /// Rows that cannot be read: (line number, the line, why).
    bad: Vec<(usize, String, String)>,
    /// What was decided about the columns, for the layout notes.
    notes: Vec<String>,
    /// Comma-separated (else `path label`, whose label is the last field).
    csv: bool,
}

/// Header words that name the label column, and the image column.
const LABEL_COLUMNS: [&str; 7] = [
    "label", "labels", "class", "class_id", "label_id", "category", "target",
];
const IMAGE_COLUMNS: [&str; 9] = [
    "image_id",
    "image",
    "image_name",
    "img",
    "path",
    "file",
    "filename",
    "file_name",
    "id",
];

/// The fields of one CSV line: commas separate, double quotes protect
/// commas and a doubled quote is a literal one (RFC 4180).
fn csv_fields(line: &str) -> Vec<String> {
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                field.push('"');
                chars.next();
            }
            '"' => quoted = !quoted,
            ',' if !quoted => fields.push(std::mem::take(&mut field).trim().to_string()),
            c => field.push(c),
        }
    }
    fields.push(field.trim().to_string());
    fields
}

/// Rows of a list file. A UTF-8 byte-order mark is dropped (spreadsheets
/// write one); blank lines and `#` comments are skipped; a row with no
/// image or no label is returned in `bad`, never dropped.
fn parse_list(text: &str, file: &str, columns: &ListColumns) -> Result<ListText, String> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut out = ListText::default();
    let kept = |l: &str| !l.is_empty() && !l.starts_with('#');
    let csv = text
        .lines()
        .map(str::trim)
        .any(|l| kept(l) && l.contains(','));
    out.csv = csv;
    // Records with their first line's number. A CSV record whose quotes do
    // not close on its line goes on over the next ones (RFC 4180); its
    // fields then hold line breaks, which no label and no sane path has, so
    // the row is rejected later rather than cut into two wrong rows.
    let mut lines: Vec<(usize, Cow<str>)> = Vec::new();
    let mut open: Option<(usize, String)> = None;
    for (k, raw) in text.lines().enumerate() {
        if let Some((start, mut record)) = open.take() {
            record.push('\n');
            record.push_str(raw);
            if record.matches('"').count() % 2 == 0 {
                lines.push((start, Cow::Owned(record.trim().to_string())));
            } else {
                open = Some((start, record));
            }
            continue;
        }
        let line = raw.trim();
        if !kept(line) {
            continue;
        }
        if csv && line.matches('"').count() % 2 == 1 {
            open = Some((k + 1, line.to_string()));
        } else {
            lines.push((k + 1, Cow::Borrowed(line)));
        }
    }
    if let Some((n, record)) = open {
        let first = record.lines().next().unwrap_or("").to_string();
        out.bad.push((
            n,
            first,
            format!("unterminated quote ({file} line {n} to the end)"),
        ));
    }
    if !csv {
        // `path label`: the label is the last field, as paths may hold spaces.
        for (n, line) in &lines {
            let (n, line) = (*n, line.as_ref());
            match line.rsplit_once(|c: char| c.is_whitespace()) {
                Some((image, label)) => out.rows.push((
                    n,
                    image.trim_end().trim_matches('"').to_string(),
                    label.trim_matches('"').to_string(),
                )),
                None => out.bad.push((
                    n,
                    line.to_string(),
                    format!("no label ({file} line {n}: expected 'path label')"),
                )),
            }
        }
        return Ok(out);
    }
    // A header that names a label column picks the columns; otherwise the
    // first two fields are image and label (the paper's `image_id,label`).
    // One pass, one line's fields at a time: a list may hold millions of rows.
    let named = |f: &[String], names: &[&str]| {
        f.iter()
            .position(|c| names.iter().any(|n| c.eq_ignore_ascii_case(n)))
    };
    let (mut image_col, mut label_col, mut header_note) = (0, 1, None);
    // Whether a header or a flag chose the label column.
    let mut label_chosen = false;
    if let Some((n, line)) = lines.first() {
        let (n, first) = (*n, csv_fields(line));
        // With two fields, a first row `a.jpg,category` may be data: only the
        // words `label` and `class` are sure to be a header there, and
        // `header_row` judges the rest by content.
        let sure = |f: &String| f.eq_ignore_ascii_case("label") || f.eq_ignore_ascii_case("class");
        let flagged = |spec: &Option<String>, flag: &str| {
            spec.as_deref()
                .map(|s| column_of(s, flag, &first, file))
                .transpose()
        };
        let label_flag = flagged(&columns.label, "label-column")?;
        let image_flag = flagged(&columns.image, "image-column")?;
        let named_header = label_flag.is_some_and(|(_, h)| h) || image_flag.is_some_and(|(_, h)| h);
        let named_label = match label_flag {
            Some((l, _)) => Some(l),
            None => named(&first, &LABEL_COLUMNS)
                .filter(|&l| first.len() > 2 || sure(&first[l]) || named_header),
        };
        // A header naming the chosen column twice leaves it a guess (a
        // number says which).
        let by_name = |flag: Option<(usize, bool)>| flag.is_none_or(|(_, h)| h);
        let label_by_name = named_label.filter(|_| by_name(label_flag));
        let image_by_name = image_flag.filter(|&(_, h)| h).map(|(i, _)| i);
        for col in [label_by_name, image_by_name].into_iter().flatten() {
            let name = &first[col.min(first.len() - 1)];
            let same = first
                .iter()
                .filter(|c| c.eq_ignore_ascii_case(name))
                .count();
            if col < first.len() && same > 1 {
                return Err(format!(
                    "{file} line {n}: the header names {same} columns '{name}'; say which with \
                     --label-column N or --image-column N (1-based numbers)"
                ));
            }
        }
        if let Some(l) = named_label {
            label_chosen = true;
            let i = match image_flag {
                Some((i, _)) => i,
                None => named(&first, &IMAGE_COLUMNS)
                    .filter(|&i| i != l)
                    .unwrap_or(if l == 0 { 1 } else { 0 }),
            };
            if i == l {
                return Err(format!(
                    "{file}: the image and the label would both be column {}",
                    i + 1
                ));
            }
            (image_col, label_col) = (i, l);
            let header = label_flag.is_none_or(|(_, h)| h) && image_flag.is_none_or(|(_, h)| h)
                || named_header;
            header_note = Some(if header {
                format!(
                    "{file} line {n}: header names column {} '{}' as the image and column {} \
                     '{}' as the label",
                    i + 1,
                    first.get(i).map_or("", String::as_str),
                    l + 1,
                    first.get(l).map_or("", String::as_str)
                )
            } else {
                format!(
                    "{file}: column {} is read as the image and column {} as the label",
                    i + 1,
                    l + 1
                )
            });
            if !header {
                // Numbers name no header: the first row is data unless
                // `header_row` judges it a header by its content.
                out.notes.extend(header_note.take());
            }
        } else if let Some((i, _)) = image_flag {
            return Err(format!(
                "{file}: --image-column {} given without --label-column, and no header \
                 names the label column",
                i + 1
            ));
        }
    }
    let (mut width, mut most) = (0, 0);
    for (k, (n, line)) in lines.iter().enumerate() {
        let (n, line) = (*n, line.as_ref());
        let fields = csv_fields(line);
        // Trailing empty fields (`a.jpg,3,`, as spreadsheets save) are no column.
        width = width.max(
            fields
                .iter()
                .rposition(|f| !f.is_empty())
                .map_or(0, |i| i + 1),
        );
        most = most.max(fields.len());
        let image = fields.get(image_col).map_or("", String::as_str);
        let label = fields.get(label_col).map_or("", String::as_str);
        if k == 0 && header_note.is_some() {
            // Kept as the header row, for `header_row` to recognise and skip.
            out.rows.push((n, image.to_string(), label.to_string()));
        } else if image.is_empty() {
            out.bad
                .push((n, line.to_string(), format!("no image ({file} line {n})")));
        } else if label.is_empty() {
            out.bad
                .push((n, image.to_string(), format!("no label ({file} line {n})")));
        } else {
            out.rows.push((n, image.to_string(), label.to_string()));
        }
    }
    for (col, flag, given) in [
        (label_col, "label-column", &columns.label),
        (image_col, "image-column", &columns.image),
    ] {
        if let Some(spec) = given.as_deref().filter(|_| most > 0 && col >= most) {
            return Err(format!(
                "{file}: --{flag} {spec}: its rows have at most {most} fields"
            ));
        }
    }
    if !label_chosen && width > 2 {
        return Err(format!(
            "{file}: rows have up to {width} fields and no header row names the label column \
             ({}): say which with --label-column NAME (a header name) or --label-column N \
             (a 1-based number)",
            LABEL_COLUMNS.join(", ")
        ));
    }
    match header_note {
        Some(note) if width > 2 || (image_col, label_col) != (0, 1) => out.notes.push(note),
        _ => {}
    }
    Ok(out)
}

/// Whether the first row is a header: its label is used by no other row
/// and its image field names no file (`found`), or the label is literally
/// `label` or `class`.
fn header_row(rows: &[ListRow], found: impl Fn(&str) -> bool) -> bool {
    let Some((_, image, label)) = rows.first() else {
        return false;
    };
    if label.eq_ignore_ascii_case("label") || label.eq_ignore_ascii_case("class") {
        return true;
    }
    !rows[1..].iter().any(|(_, _, l)| l == label) && !found(image)
}

/// A name without its extension (`train/0001.jpg` → `train/0001`).
fn without_extension(name: &str) -> &str {
    let base = basename(name);
    match base.rfind('.') {
        Some(dot) if dot > 0 => &name[..name.len() - base.len() + dot],
        _ => name,
    }
}

/// How a list row's image reference resolves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Resolved {
    /// The entry, and whether only a shorter tail of the path named it.
    Entry(usize, bool),
    /// Several files match and no path decides between them.
    Ambiguous,
    Missing,
}

/// Entries by name, by name less extension, by file name and by file name
/// less extension; `None` marks a key shared by several entries.
struct ListIndex<'a> {
    entries: &'a [Entry],
    by_name: HashMap<&'a str, usize>,
    by_stem_path: HashMap<&'a str, Option<usize>>,
    by_base: HashMap<&'a str, Option<usize>>,
    by_stem: HashMap<&'a str, Option<usize>>,
}

impl<'a> ListIndex<'a> {
    fn new(entries: &'a [Entry], indices: impl Iterator<Item = usize>) -> Self {
        let mut index = ListIndex {
            entries,
            by_name: HashMap::new(),
            by_stem_path: HashMap::new(),
            by_base: HashMap::new(),
            by_stem: HashMap::new(),
        };
        let add = |map: &mut HashMap<&'a str, Option<usize>>, key: &'a str, i: usize| {
            map.entry(key).and_modify(|v| *v = None).or_insert(Some(i));
        };
        for i in indices {
            let name = entries[i].name.as_str();
            index.by_name.insert(name, i);
            let base = basename(name);
            add(&mut index.by_stem_path, without_extension(name), i);
            add(&mut index.by_base, base, i);
            add(&mut index.by_stem, without_extension(base), i);
        }
        index
    }

    /// Resolve `image` of a list in folder `dir` for `split`: as a path from
    /// the list's folder, from its `<split>/` subfolder, or from the top,
    /// each with or without the extension, then the same for ever shorter
    /// tails of the path down to a folder and the file
    /// (`/data/imagenet/train/n01/1.jpg`, written where the list was made,
    /// is `train/n01/1.jpg` here); a bare name, then, as a unique file name. The path is read with `\` as `/` and without `.` or empty
    /// components (`./train/n01/1.jpg`, as `find .` prints it), unless it
    /// names a file as it is.
    fn resolve(&self, dir: &str, split: Split, image: &str) -> Resolved {
        let join = |a: &str, b: &str| {
            if a.is_empty() {
                b.to_string()
            } else {
                format!("{a}/{b}")
            }
        };
        let split_dir = join(dir, split.as_str());
        let paths = |tail: &str| [join(dir, tail), join(&split_dir, tail), tail.to_string()];
        let exact = |tail: &str| {
            paths(tail)
                .iter()
                .find_map(|p| self.by_name.get(p.as_str()).copied())
        };
        if let Some(i) = exact(image) {
            return Resolved::Entry(i, false);
        }
        let parts: Vec<&str> = image
            .split(['/', '\\'])
            .filter(|c| !c.is_empty() && *c != ".")
            .collect();
        let mut ambiguous = false;
        // A path with folders names its file by them too: its tails keep
        // at least a folder and the file, and a file found by its name
        // alone must agree with the path on every folder both name (with
        // `train/cat/3.jpg` missing, `train/dog/3.jpg` is not it; a
        // source nested deeper than the list says, `ILSVRC/Data/train/…`,
        // still is). A bare name may be any file of that name, if unique.
        for k in 0..parts.len().saturating_sub(1).max(1) {
            let tail = parts[k..].join("/");
            // The whole path, less `.` and empty components, is no tail.
            let shorter = k > 0;
            // The whole path as given was looked up above.
            if tail != image {
                if let Some(i) = exact(&tail) {
                    return Resolved::Entry(i, shorter);
                }
            }
            for found in paths(&tail)
                .iter()
                .filter_map(|p| self.by_stem_path.get(p.as_str()))
            {
                match found {
                    Some(i) => return Resolved::Entry(*i, shorter),
                    None => ambiguous = true,
                }
            }
        }
        let base = parts.last().copied().unwrap_or(image);
        let folders_agree = |i: usize| {
            let name = self.entries[i].name.as_str();
            let theirs = name.split('/').rev().skip(1);
            let ours = parts.iter().rev().skip(1);
            theirs.zip(ours).all(|(a, b)| a == *b)
        };
        let by_name = [self.by_base.get(base), self.by_stem.get(base)];
        for found in by_name.into_iter().flatten() {
            match found {
                Some(i) if folders_agree(*i) => {
                    // A tail when the path named more folders than the file has.
                    let tail = parts.len() > self.entries[*i].name.split('/').count();
                    return Resolved::Entry(*i, tail);
                }
                Some(_) => {}
                None => ambiguous = true,
            }
        }
        if ambiguous {
            Resolved::Ambiguous
        } else {
            Resolved::Missing
        }
    }
}

fn list_plan(
    source: &Source,
    usable: &[usize],
    problems: &[usize],
    lists: &BTreeMap<Split, usize>,
    columns: &ListColumns,
) -> Result<Plan, PackError> {
    let entries = source.entries();
    let list_entries: BTreeSet<usize> = lists.values().copied().collect();
    let index = ListIndex::new(entries, usable.iter().chain(problems).copied());
    let mut notes = Vec::new();
    let mut rejected = Vec::new();
    let mut rows_by_split = Vec::new();
    // Rows without a label or image: (split, list folder, image text, why).
    let mut bad_rows = Vec::new();
    let mut any_csv = false;
    for (&split, &li) in lists {
        let list = &entries[li];
        let bytes = source
            .read(list)
            .map_err(|e| PackError::Layout(format!("{}: {e}", list.name)))?;
        let text = String::from_utf8(bytes)
            .map_err(|_| PackError::Layout(format!("{}: not UTF-8 text", list.name)))?;
        let dir = list.name.rsplit_once('/').map_or("", |(d, _)| d);
        let parsed = parse_list(&text, &list.name, columns).map_err(PackError::Layout)?;
        any_csv |= parsed.csv;
        let mut rows = parsed.rows;
        notes.extend(parsed.notes);
        bad_rows.extend(
            parsed
                .bad
                .into_iter()
                .map(|(_, key, why)| (split, dir, key, why)),
        );
        let exists = |image: &str| index.resolve(dir, split, image) != Resolved::Missing;
        if header_row(&rows, exists) {
            let (line, ..) = rows.remove(0);
            let raw = text
                .trim_start_matches('\u{feff}')
                .lines()
                .nth(line - 1)
                .unwrap_or("")
                .trim();
            notes.push(format!(
                "{} line {line}: {raw:?} read as a header row and skipped",
                list.name
            ));
        }
        rows_by_split.push((split, list.name.clone(), dir.to_string(), rows));
    }
    if !any_csv && !columns.is_empty() {
        return Err(PackError::Usage(
            "--image-column and --label-column choose columns of CSV lists; this source's \
             lists are `path label` text, whose label is the last field"
                .into(),
        ));
    }
    let train_labels = rows_by_split
        .iter()
        .filter(|(s, ..)| *s == Split::Train)
        .flat_map(|(.., rows)| rows.iter().map(|(_, _, l)| l.clone()))
        .filter(|l| class_name_ok(l));
    let classes = sorted_classes(train_labels);
    let class_of = class_index(&classes);
    let problem_set: BTreeSet<usize> = problems.iter().copied().collect();
    let mut items = Vec::new();
    // Entry → where it was first listed: (split, list file, line, label).
    let mut used: HashMap<usize, (Split, &str, usize, &str)> = HashMap::new();
    for (split, list_name, dir, rows) in &rows_by_split {
        // Rows only a shorter tail of their path named: how many, the first.
        let mut tails: Option<(usize, usize, &str, usize)> = None;
        for (line, image, label) in rows {
            let i = match index.resolve(dir, *split, image) {
                Resolved::Entry(i, tail) => {
                    if tail {
                        let t = tails.get_or_insert((0, *line, image.as_str(), i));
                        t.0 += 1;
                    }
                    i
                }
                Resolved::Missing => {
                    rejected.push(reject(
                        image,
                        Some(*split),
                        format!("listed in {list_name} line {line} but not found in the source"),
                    ));
                    continue;
                }
                Resolved::Ambiguous => {
                    rejected.push(reject(
                        image,
                        Some(*split),
                        format!(
                            "ambiguous ({list_name} line {line}: several files of the source \
                             match '{image}'; write its path relative to the list)"
                        ),
                    ));
                    continue;
                }
            };
            if let Some(&(first_split, first_list, first_line, first_label)) = used.get(&i) {
                // A second label is a conflict in the lists: the packed
                // label is the first one, and the reason says so.
                let labels = if first_label == label.as_str() {
                    String::new()
                } else {
                    format!(" with another label ({label:?}, first {first_label:?})")
                };
                let reason = if first_split == *split {
                    format!(
                        "listed twice{labels} (first at {first_list} line {first_line}, again at \
                         {list_name} line {line}); packed once, as at line {first_line}"
                    )
                } else {
                    format!(
                        "also listed in {first_split}{labels} ({first_list} line {first_line}); \
                         {list_name} line {line} skipped, the image is packed in {first_split} only"
                    )
                };
                rejected.push(reject(&entries[i].name, Some(*split), reason));
                continue;
            }
            used.insert(i, (*split, list_name.as_str(), *line, label.as_str()));
            if problem_set.contains(&i) {
                rejected.push(problem_reject(&entries[i], Some(*split)));
                continue;
            }
            if !class_name_ok(label) {
                rejected.push(reject(
                    &entries[i].name,
                    Some(*split),
                    format!(
                        "label {label:?} contains a tab or newline ({list_name} line {line}; \
                         classes.tsv holds one name per line)"
                    ),
                ));
                continue;
            }
            let label = *class_of.get(label.as_str()).ok_or_else(|| {
                PackError::Layout(format!(
                    "{list_name} line {line}: class '{label}' has no training images"
                ))
            })?;
            items.push(Item {
                split: *split,
                label,
                key: entries[i].name.clone(),
                payload: Payload::Entry(i),
            });
        }
        if let Some((n, line, image, i)) = tails {
            notes.push(format!(
                "{list_name}: {n} row{} named {} by a shorter tail of the path (line {line}: \
                 '{image}' is '{}')",
                if n == 1 { "" } else { "s" },
                if n == 1 { "its file" } else { "their files" },
                entries[i].name
            ));
        }
    }
    // A bad row still names its image when it can: one rejection for it,
    // under the image's own name, not a second one as unlisted.
    let mut claimed = BTreeSet::new();
    for (split, dir, key, why) in bad_rows {
        match index.resolve(dir, split, &key) {
            Resolved::Entry(i, _) if !used.contains_key(&i) && claimed.insert(i) => {
                rejected.push(reject(&entries[i].name, Some(split), why));
            }
            _ => rejected.push(reject(&key, Some(split), why)),
        }
    }
    for &i in usable {
        if !used.contains_key(&i) && !claimed.contains(&i) && !list_entries.contains(&i) {
            rejected.push(reject(&entries[i].name, None, NOT_LISTED));
        }
    }
    for &i in problems {
        if !used.contains_key(&i) && !claimed.contains(&i) {
            // An unreadable `val.txt` (a named pipe, say) where no readable
            // one stands is that split's list: its split says so, and the
            // summary can name it as the reason the split is empty.
            let split =
                list_split(basename(&entries[i].name)).filter(|split| !lists.contains_key(split));
            rejected.push(problem_reject(&entries[i], split));
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

    fn read_list(text: &str, file: &str) -> ListText {
        parse_list(text, file, &ListColumns::default()).unwrap()
    }

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
        let rows = read_list("image_id,label\na.jpg,3\nb.jpg, 1\n", "train.csv").rows;
        assert_eq!(
            rows,
            vec![
                (1, "image_id".into(), "label".into()),
                (2, "a.jpg".into(), "3".into()),
                (3, "b.jpg".into(), "1".into())
            ]
        );
        let rows = read_list("x/a.jpg 7\n\n# c\n", "train.txt").rows;
        assert_eq!(rows, vec![(1, "x/a.jpg".into(), "7".into())]);
        // A row without a label is rejected with its line, the others kept.
        let parsed = read_list("lonely\nb.jpg 2\n", "train.txt");
        assert_eq!(parsed.rows, vec![(2, "b.jpg".into(), "2".into())]);
        assert_eq!(parsed.bad.len(), 1);
        assert_eq!(parsed.bad[0].1, "lonely");
        assert!(parsed.bad[0].2.starts_with("no label (train.txt line 1"));
    }

    #[test]
    fn list_rows_bom_quotes_blanks_and_columns() {
        // A byte-order mark is not part of the first image's name.
        let parsed = read_list("\u{feff}img0,0\r\nimg1,1\r\n", "train.csv");
        assert_eq!(parsed.rows[0], (1, "img0".into(), "0".into()));
        // Quoted commas and doubled quotes (RFC 4180).
        let parsed = read_list("\"a,b.jpg\",3\n\"say \"\"hi\"\".jpg\",4\n", "train.csv");
        assert_eq!(
            parsed.rows,
            vec![
                (1, "a,b.jpg".into(), "3".into()),
                (2, "say \"hi\".jpg".into(), "4".into())
            ]
        );
        // A quoted field may run over lines: one record, not two wrong rows
        // (its label, holding a line break, is refused by the plan).
        let parsed = read_list("a,\"x\ny\"\nb,x\nc,y\n", "train.csv");
        assert_eq!(
            parsed.rows,
            vec![
                (1, "a".into(), "x\ny".into()),
                (3, "b".into(), "x".into()),
                (4, "c".into(), "y".into())
            ]
        );
        assert!(parsed.bad.is_empty());
        let parsed = read_list("a,1\n\"b,2\nc,3\n", "train.csv");
        assert_eq!(parsed.rows, vec![(1, "a".into(), "1".into())]);
        assert_eq!(parsed.bad.len(), 1);
        assert_eq!(
            parsed.bad[0].2,
            "unterminated quote (train.csv line 2 to the end)"
        );
        // Quotes in `path label` lists are not CSV quoting.
        let parsed = read_list("my \"best\" cat.jpg 1\nb.jpg 2\n", "train.txt");
        assert_eq!(
            parsed.rows[0],
            (1, "my \"best\" cat.jpg".into(), "1".into())
        );
        // An empty label or image is a bad row, not a class named "".
        let parsed = read_list("i0,0\ni1,\n,2\n", "train.csv");
        assert_eq!(parsed.rows, vec![(1, "i0".into(), "0".into())]);
        let reasons: Vec<&str> = parsed.bad.iter().map(|b| b.2.as_str()).collect();
        assert_eq!(
            reasons,
            ["no label (train.csv line 2)", "no image (train.csv line 3)"]
        );
        // Extra fields and no header naming the label: which column is the
        // label is a guess, so it is asked for (a trailing empty field, as
        // spreadsheets save, is no column).
        let err = parse_list(
            "a.jpg,1,extra\nb.jpg,2\n",
            "train.csv",
            &ListColumns::default(),
        )
        .unwrap_err();
        assert!(
            err.contains("train.csv: rows have up to 3 fields") && err.contains("--label-column")
        );
        let err = parse_list(
            "file,width,species\na.jpg,32,cat\nb.jpg,33,dog\n",
            "train.csv",
            &ListColumns::default(),
        )
        .unwrap_err();
        assert!(
            err.contains("no header row names the label column"),
            "{err}"
        );
        assert_eq!(read_list("a.jpg,1,\nb.jpg,2,\n", "train.csv").rows.len(), 2);
        // A header naming its columns chooses them, wherever they stand.
        let parsed = read_list(
            "width,height,category,file_name\n3,4,cat,a.jpg\n5,6,dog,b.jpg\n",
            "train.csv",
        );
        assert_eq!(
            parsed.rows,
            vec![
                (1, "file_name".into(), "category".into()),
                (2, "a.jpg".into(), "cat".into()),
                (3, "b.jpg".into(), "dog".into())
            ]
        );
        assert!(parsed.notes[0].contains("column 4 'file_name' as the image and column 3"));
        // Two fields named `a.jpg,category` may be data: no column choice.
        let parsed = read_list("a.jpg,category\nb.jpg,1\n", "train.csv");
        assert_eq!(parsed.rows[0], (1, "a.jpg".into(), "category".into()));
        assert!(parsed.notes.is_empty());
    }

    #[test]
    fn names_without_extensions() {
        assert_eq!(without_extension("train/0001.jpg"), "train/0001");
        assert_eq!(without_extension("a.b/c"), "a.b/c");
        assert_eq!(without_extension("x/.hidden"), "x/.hidden");
        assert_eq!(without_extension("t.tar.gz"), "t.tar");
    }

    #[test]
    fn path_label_rows_split_at_the_last_space() {
        let rows = read_list(
            "my photos/cat 1.jpg 3\nsummer trip/IMG 0001.JPG\t\t12\n",
            "train.txt",
        )
        .rows;
        assert_eq!(
            rows,
            vec![
                (1, "my photos/cat 1.jpg".into(), "3".into()),
                (2, "summer trip/IMG 0001.JPG".into(), "12".into())
            ]
        );
    }

    /// `--label-column` and `--image-column` name a header's columns or
    /// number them; a name the first row lacks is an error naming the
    /// columns it has.
    #[test]
    fn named_and_numbered_columns() {
        let text = "file,width,species\na.jpg,32,cat\nb.jpg,33,dog\n";
        let cols = |image: Option<&str>, label: Option<&str>| ListColumns {
            image: image.map(str::to_string),
            label: label.map(str::to_string),
        };
        let rows = |c: ListColumns| parse_list(text, "train.csv", &c).map(|p| p.rows);
        // A label column named twice: a guess, unless a number says which.
        let twice = "file,label,label\na.jpg,cat,x\n";
        let err = parse_list(twice, "train.csv", &ListColumns::default()).unwrap_err();
        assert!(err.contains("header names 2 columns 'label'"), "{err}");
        let by_number = parse_list(twice, "train.csv", &cols(None, Some("3"))).unwrap();
        assert_eq!(by_number.rows[1], (2, "a.jpg".into(), "x".into()));
        let want = vec![
            (1, "file".to_string(), "species".to_string()),
            (2, "a.jpg".into(), "cat".into()),
            (3, "b.jpg".into(), "dog".into()),
        ];
        assert_eq!(rows(cols(None, Some("Species"))).unwrap(), want);
        assert_eq!(rows(cols(Some("file"), Some("species"))).unwrap(), want);
        assert_eq!(rows(cols(None, Some("3"))).unwrap(), want);
        let by_number = parse_list(text, "train.csv", &cols(Some("1"), Some("2"))).unwrap();
        assert_eq!(by_number.rows[1], (2, "a.jpg".into(), "32".into()));
        assert_eq!(
            by_number.notes,
            ["train.csv: column 1 is read as the image and column 2 as the label"]
        );
        let err = rows(cols(None, Some("kind"))).unwrap_err();
        assert_eq!(
            err,
            "train.csv: --label-column \"kind\": no such column in its first row (file, width, species)"
        );
        assert!(rows(cols(None, Some("0")))
            .unwrap_err()
            .contains("numbered from 1"));
        assert_eq!(
            rows(cols(None, Some("4"))).unwrap_err(),
            "train.csv: --label-column 4: its rows have at most 3 fields"
        );
        assert!(rows(cols(Some("3"), Some("3")))
            .unwrap_err()
            .contains("both be column 3"));
        assert!(rows(cols(Some("1"), None))
            .unwrap_err()
            .contains("without --label-column"));
        // Text lists have the label last, whatever the flags (which a CSV
        // list of the same source may need).
        let txt = parse_list("a.jpg 1\n", "train.txt", &cols(None, Some("2"))).unwrap();
        assert!(!txt.csv && txt.rows == [(1, "a.jpg".into(), "1".into())]);
    }

    #[test]
    fn header_rows_are_recognised_by_content() {
        let rows = |text: &str| read_list(text, "train.csv").rows;
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
    fn splits_above_nested_and_unreadable_entries() {
        assert_eq!(split_above("train/c/sub/x.jpg", None), Some(Split::Train));
        assert_eq!(split_above("top/val/c/x.jpg", None), Some(Split::Val));
        assert_eq!(split_above("top/test/c/x.jpg", Some("top/val")), None);
        assert_eq!(
            split_above("top/val/c/x.jpg", Some("top/val")),
            Some(Split::Val)
        );
        assert_eq!(split_above("train/val/x.jpg", None), Some(Split::Train));
        assert_eq!(split_above("top/test/c/x.jpg", Some("top/val")), None);
        assert_eq!(split_above("README.txt", None), None);
        assert_eq!(split_above("train", None), None);
    }

    #[test]
    fn classes_sort_numerically_when_numeric() {
        let v = sorted_classes(["10", "2", "1"].into_iter().map(String::from));
        assert_eq!(v, ["1", "2", "10"]);
        let v = sorted_classes(
            ["99999999999999999999999", "10", "01", "2", "1"]
                .into_iter()
                .map(String::from),
        );
        assert_eq!(v, ["1", "01", "2", "10", "99999999999999999999999"]);
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
        // Metadata counts in the split of its folder; a zip's shadow tree
        // and an ignored validation folder are in none.
        assert_eq!(junk_split("train/a/.DS_Store", None), Some(Split::Train));
        assert_eq!(
            junk_split("top/val/a/._x.jpg", Some("top/val")),
            Some(Split::Val)
        );
        assert_eq!(junk_split("top/test/a/._x.jpg", Some("top/val")), None);
        assert_eq!(junk_split("__MACOSX/train/a/._x.jpg", None), None);
        assert_eq!(junk_split(".DS_Store", None), None);
    }
}
