//! `classes.tsv`: one line per class, `index<TAB>name`, in label order.

use std::path::Path;

use super::writer::{write_atomic, ShardError};

/// Write the class list atomically. Names must not contain tabs or newlines
/// (the packer rejects such names before getting here).
pub fn write_classes_tsv(path: &Path, names: &[String]) -> Result<(), ShardError> {
    let mut text = String::new();
    for (i, name) in names.iter().enumerate() {
        if name.contains(['\t', '\n', '\r']) {
            return Err(ShardError::Invalid {
                path: path.to_path_buf(),
                detail: format!("class name {name:?} contains a tab or newline"),
            });
        }
        text.push_str(&format!("{i}\t{name}\n"));
    }
    write_atomic(path, text.as_bytes())
}

/// Read the class list; indices must be 0, 1, 2, … in order.
pub fn read_classes_tsv(path: &Path) -> Result<Vec<String>, ShardError> {
    let text = std::fs::read_to_string(path).map_err(|e| ShardError::io(path, e))?;
    let mut names = Vec::new();
    // Name → its line: a name twice would make two labels one class.
    let mut seen = std::collections::HashMap::new();
    for (line_no, line) in text.lines().enumerate() {
        let bad = |detail: String| ShardError::Invalid {
            path: path.to_path_buf(),
            detail: format!("line {}: {detail}", line_no + 1),
        };
        let (index, name) = line
            .split_once('\t')
            .ok_or_else(|| bad("expected 'index<TAB>name'".into()))?;
        // Written as `write_classes_tsv` writes it, digit for digit.
        if index != names.len().to_string() {
            return Err(bad(format!("index '{index}', expected {}", names.len())));
        }
        if name.is_empty() || name.contains('\t') {
            return Err(bad(format!(
                "class name {name:?} is empty or holds a tab (expected 'index<TAB>name')"
            )));
        }
        if let Some(first) = seen.insert(name, line_no + 1) {
            return Err(bad(format!(
                "class name {name:?} is already on line {first}"
            )));
        }
        names.push(name.to_string());
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("classes.tsv");
        let names = vec!["cat".to_string(), "dog house".to_string()];
        write_classes_tsv(&path, &names).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "0\tcat\n1\tdog house\n"
        );
        assert_eq!(read_classes_tsv(&path).unwrap(), names);
        assert!(write_classes_tsv(&path, &["a\tb".to_string()]).is_err());
        std::fs::write(&path, "0\ta\n2\tb\n").unwrap();
        let err = read_classes_tsv(&path).unwrap_err().to_string();
        assert!(err.contains("line 2"), "{err}");
        // What a hand edit leaves: an index not as written, an empty name,
        // a tab inside one, a name twice.
        for (text, says) in [
            ("00\ta\n", "line 1: index '00', expected 0"),
            ("0\ta\n+1\tb\n", "line 2: index '+1', expected 1"),
            ("0\t\n", "line 1: class name \"\" is empty"),
            (
                "0\ta\tb\n",
                "line 1: class name \"a\\tb\" is empty or holds a tab",
            ),
            (
                "0\tcat\n1\tcat\n",
                "line 2: class name \"cat\" is already on line 1",
            ),
        ] {
            std::fs::write(&path, text).unwrap();
            let err = read_classes_tsv(&path).unwrap_err().to_string();
            assert!(err.contains(says), "{text:?}: {err}");
        }
    }
}
