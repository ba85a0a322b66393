//! The v1 schema, file names and footer metadata of a shard.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use arrow_schema::{DataType, Field, Schema};

/// Version of the on-disk format described in `shards/README.md`.
pub const FORMAT_VERSION: u32 = 1;
pub const COL_LABEL: &str = "label";
pub const COL_IMAGE: &str = "image";
pub const COL_KEY: &str = "key";
pub const CLASSES_FILE: &str = "classes.tsv";
/// Footer key of a JPEG shard's image lengths (see [`encode_image_lengths`]).
pub const IMAGE_LENGTHS_KEY: &str = "ebv.image_lengths";

/// Which split a shard holds.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    Train,
    Val,
}

impl Split {
    pub const ALL: [Split; 2] = [Split::Train, Split::Val];

    pub fn as_str(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Val => "val",
        }
    }
}

impl fmt::Display for Split {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Split {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "train" => Ok(Split::Train),
            "val" => Ok(Split::Val),
            other => Err(format!("unknown split '{other}' (expected train or val)")),
        }
    }
}

/// How the `image` column stores pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    /// `fixed_size_binary(H*W*3)`: RGB8 row-major.
    Raw,
    /// `binary`: one JPEG per row.
    Jpeg,
}

impl Encoding {
    pub fn as_str(self) -> &'static str {
        match self {
            Encoding::Raw => "raw",
            Encoding::Jpeg => "jpeg",
        }
    }
}

impl fmt::Display for Encoding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Encoding {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "raw" => Ok(Encoding::Raw),
            "jpeg" => Ok(Encoding::Jpeg),
            other => Err(format!("unknown encoding '{other}' (expected raw or jpeg)")),
        }
    }
}

/// `train-00000.parquet` and so on.
pub fn shard_file_name(split: Split, index: usize) -> String {
    format!("{split}-{index:05}.parquet")
}

/// The Arrow schema of a shard. All columns are non-nullable, so data pages
/// carry no definition levels and the image values start right after the
/// page header.
pub fn arrow_schema(encoding: Encoding, height: u32, width: u32) -> Arc<Schema> {
    let image_type = match encoding {
        Encoding::Raw => DataType::FixedSizeBinary((height * width * 3) as i32),
        Encoding::Jpeg => DataType::Binary,
    };
    Arc::new(Schema::new(vec![
        Field::new(COL_LABEL, DataType::UInt32, false),
        Field::new(COL_IMAGE, image_type, false),
        Field::new(COL_KEY, DataType::Utf8, false),
    ]))
}

/// The footer key-value metadata every shard carries (keys `ebv.*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardMeta {
    pub format_version: u32,
    pub encoding: Encoding,
    pub height: u32,
    pub width: u32,
    pub split: Split,
    pub num_classes: u32,
    /// Identifies the pack plan (options, source, entry order) that produced
    /// the shard; a resumed run keeps a shard only when this matches.
    pub plan: String,
}

impl ShardMeta {
    pub fn to_key_values(&self) -> Vec<(String, String)> {
        vec![
            ("ebv.format_version".into(), self.format_version.to_string()),
            ("ebv.encoding".into(), self.encoding.to_string()),
            ("ebv.height".into(), self.height.to_string()),
            ("ebv.width".into(), self.width.to_string()),
            ("ebv.split".into(), self.split.to_string()),
            ("ebv.num_classes".into(), self.num_classes.to_string()),
            ("ebv.plan".into(), self.plan.clone()),
        ]
    }

    /// Read the metadata back; the error names the missing or bad key.
    pub fn from_key_values(kv: &HashMap<String, String>) -> Result<ShardMeta, String> {
        fn get<'a>(kv: &'a HashMap<String, String>, key: &str) -> Result<&'a str, String> {
            kv.get(key)
                .map(String::as_str)
                .ok_or_else(|| format!("footer metadata lacks '{key}'"))
        }
        fn num(kv: &HashMap<String, String>, key: &str) -> Result<u32, String> {
            let v = get(kv, key)?;
            v.parse()
                .map_err(|_| format!("footer metadata '{key}' = '{v}' is not a number"))
        }
        Ok(ShardMeta {
            format_version: num(kv, "ebv.format_version")?,
            encoding: get(kv, "ebv.encoding")?.parse()?,
            height: num(kv, "ebv.height")?,
            width: num(kv, "ebv.width")?,
            split: get(kv, "ebv.split")?.parse()?,
            num_classes: num(kv, "ebv.num_classes")?,
            plan: get(kv, "ebv.plan")?.to_string(),
        })
    }
}

/// The byte length of every image of a JPEG shard, in row order, as the
/// footer value of [`IMAGE_LENGTHS_KEY`]: decimal, comma-separated (about six
/// bytes a row). With it a reader finds any image without reading the image
/// column, whose BYTE_ARRAY values can otherwise only be found by walking
/// every length prefix before them.
pub fn encode_image_lengths(lengths: &[u32]) -> String {
    let mut out = String::with_capacity(lengths.len() * 6);
    for (i, len) in lengths.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&len.to_string());
    }
    out
}

/// Parse [`encode_image_lengths`]' output for a shard of `rows` rows; the
/// error says what is wrong.
pub fn decode_image_lengths(value: &str, rows: u64) -> Result<Vec<u32>, String> {
    let mut out = Vec::with_capacity(rows as usize);
    if !value.is_empty() {
        for (i, v) in value.split(',').enumerate() {
            let len = v
                .parse()
                .map_err(|_| format!("'{IMAGE_LENGTHS_KEY}': value {i} ('{v}') is not a length"))?;
            out.push(len);
        }
    }
    if out.len() as u64 != rows {
        return Err(format!(
            "'{IMAGE_LENGTHS_KEY}' holds {} lengths for {rows} rows",
            out.len()
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_lengths_round_trip_and_bad_values_are_named() {
        for lens in [vec![], vec![7], vec![18734, 0, 4_000_000_000]] {
            let s = encode_image_lengths(&lens);
            assert_eq!(decode_image_lengths(&s, lens.len() as u64).unwrap(), lens);
        }
        assert_eq!(encode_image_lengths(&[1, 22, 333]), "1,22,333");
        let e = decode_image_lengths("1,2", 3).unwrap_err();
        assert!(e.contains("2 lengths for 3 rows"), "{e}");
        let e = decode_image_lengths("1,x,3", 3).unwrap_err();
        assert!(e.contains("value 1 ('x')"), "{e}");
        assert!(decode_image_lengths("1,-2", 2).is_err());
        assert!(decode_image_lengths("", 1).is_err());
    }

    #[test]
    fn meta_round_trips_through_key_values() {
        let meta = ShardMeta {
            format_version: FORMAT_VERSION,
            encoding: Encoding::Raw,
            height: 32,
            width: 48,
            split: Split::Val,
            num_classes: 7,
            plan: "abc".into(),
        };
        let kv: HashMap<_, _> = meta.to_key_values().into_iter().collect();
        assert_eq!(ShardMeta::from_key_values(&kv).unwrap(), meta);
        let mut missing = kv.clone();
        missing.remove("ebv.height");
        assert!(ShardMeta::from_key_values(&missing)
            .unwrap_err()
            .contains("ebv.height"));
    }

    #[test]
    fn names_and_types() {
        assert_eq!(shard_file_name(Split::Train, 3), "train-00003.parquet");
        let s = arrow_schema(Encoding::Raw, 2, 3);
        assert_eq!(s.field(1).data_type(), &DataType::FixedSizeBinary(18));
        assert!(!s.field(1).is_nullable());
    }
}
