//! Reading and writing basis matrices: safetensors (one F32 tensor `ebv`,
//! shape [N, d], string metadata) and NumPy `.npy` (v1.0 header, `<f4`,
//! C order).
//!
//! Invariants: writes are atomic (a temp file in the destination's directory,
//! synced, then renamed over it), so a reader never sees half a matrix.
//! Reads memory-map the file and convert rows on demand
//! ([`MatrixFile::read_rows`]), so `check` on a 100,000 × 5000 matrix holds
//! only the blocks it is working on; values are little-endian on disk
//! whatever the host.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use super::error::BasisError;
use super::matrix::Basis;

/// Name of the tensor in the safetensors files we write.
pub const TENSOR_NAME: &str = "ebv";

/// Element type on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Elem {
    F32,
    F64,
}

impl Elem {
    fn size(self) -> usize {
        match self {
            Elem::F32 => 4,
            Elem::F64 => 8,
        }
    }
}

/// A memory-mapped N × d matrix in a safetensors or `.npy` file.
pub struct MatrixFile {
    path: PathBuf,
    map: Mmap,
    /// Rows.
    pub n: usize,
    /// Columns.
    pub d: usize,
    elem: Elem,
    offset: usize,
    fortran: bool,
    /// `"safetensors"` or `"npy"`.
    pub format: &'static str,
    /// safetensors `__metadata__` (empty for `.npy`).
    pub metadata: BTreeMap<String, String>,
}

impl MatrixFile {
    /// Opens `path`, recognising the format by its first bytes.
    pub fn open(path: &Path) -> Result<Self, BasisError> {
        let file = File::open(path).map_err(|e| BasisError::io(path, e))?;
        // SAFETY: the map is read-only; a file truncated under us by another
        // process is outside what this tool guards against (as for any reader).
        let map = unsafe { Mmap::map(&file) }.map_err(|e| BasisError::io(path, e))?;
        if map.starts_with(b"\x93NUMPY") {
            open_npy(path, map)
        } else {
            open_safetensors(path, map)
        }
    }

    /// Path it was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Copies rows `start..end` into `out` (row-major, `(end−start)·d` values) as f32.
    pub fn read_rows(&self, start: usize, end: usize, out: &mut [f32]) {
        assert!(start <= end && end <= self.n && out.len() >= (end - start) * self.d);
        let (d, sz) = (self.d, self.elem.size());
        let bytes = &self.map[self.offset..];
        let get = |idx: usize| -> f32 {
            let p = idx * sz;
            match self.elem {
                Elem::F32 => {
                    f32::from_le_bytes([bytes[p], bytes[p + 1], bytes[p + 2], bytes[p + 3]])
                }
                Elem::F64 => {
                    let mut a = [0u8; 8];
                    a.copy_from_slice(&bytes[p..p + 8]);
                    f64::from_le_bytes(a) as f32
                }
            }
        };
        for (r, i) in (start..end).enumerate() {
            let row = &mut out[r * d..(r + 1) * d];
            for (k, x) in row.iter_mut().enumerate() {
                *x = if self.fortran {
                    get(k * self.n + i)
                } else {
                    get(i * d + k)
                };
            }
        }
    }

    /// The whole matrix in memory.
    pub fn to_basis(&self) -> Basis {
        let mut data = vec![0.0f32; self.n * self.d];
        self.read_rows(0, self.n, &mut data);
        Basis {
            n: self.n,
            d: self.d,
            data,
        }
    }
}

fn open_safetensors(path: &Path, map: Mmap) -> Result<MatrixFile, BasisError> {
    let bad = |r: String| {
        BasisError::format(
            path,
            format!("not a readable safetensors or .npy matrix: {r}"),
        )
    };
    let st = SafeTensors::deserialize(&map).map_err(|e| bad(e.to_string()))?;
    let names = st.names();
    let name = if names.contains(&TENSOR_NAME) {
        TENSOR_NAME.to_string()
    } else if names.len() == 1 {
        names[0].to_string()
    } else {
        return Err(bad(format!(
            "no tensor named `{TENSOR_NAME}` among {} tensors",
            names.len()
        )));
    };
    let view = st.tensor(&name).map_err(|e| bad(e.to_string()))?;
    let elem = match view.dtype() {
        Dtype::F32 => Elem::F32,
        Dtype::F64 => Elem::F64,
        other => {
            return Err(bad(format!(
                "tensor `{name}` is {other:?}; F32 or F64 expected"
            )))
        }
    };
    let &[n, d] = view.shape() else {
        return Err(bad(format!(
            "tensor `{name}` has shape {:?}; a 2-D [N, d] matrix expected",
            view.shape()
        )));
    };
    let offset = view.data().as_ptr() as usize - map.as_ptr() as usize;
    let (_, meta) = SafeTensors::read_metadata(&map).map_err(|e| bad(e.to_string()))?;
    let metadata = meta
        .metadata()
        .as_ref()
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default();
    Ok(MatrixFile {
        path: path.to_path_buf(),
        map,
        n,
        d,
        elem,
        offset,
        fortran: false,
        format: "safetensors",
        metadata,
    })
}

fn open_npy(path: &Path, map: Mmap) -> Result<MatrixFile, BasisError> {
    let bad = |r: &str| BasisError::format(path, format!(".npy: {r}"));
    if map.len() < 10 {
        return Err(bad("truncated header"));
    }
    let major = map[6];
    let (hlen, start) = match major {
        1 => (u16::from_le_bytes([map[8], map[9]]) as usize, 10),
        2 | 3 => {
            if map.len() < 12 {
                return Err(bad("truncated header"));
            }
            (
                u32::from_le_bytes([map[8], map[9], map[10], map[11]]) as usize,
                12,
            )
        }
        v => return Err(bad(&format!("format version {v} not supported"))),
    };
    let header = map
        .get(start..start + hlen)
        .ok_or_else(|| bad("truncated header"))?;
    let header = std::str::from_utf8(header).map_err(|_| bad("header is not text"))?;
    let descr = dict_value(header, "descr").ok_or_else(|| bad("no 'descr'"))?;
    let descr = descr.trim_matches(|c| c == '\'' || c == '"');
    let elem = match descr {
        "<f4" => Elem::F32,
        "<f8" => Elem::F64,
        other => {
            return Err(bad(&format!(
                "dtype {other} not supported (<f4 or <f8 expected)"
            )))
        }
    };
    let fortran = match dict_value(header, "fortran_order") {
        Some("False") => false,
        Some("True") => true,
        _ => return Err(bad("no 'fortran_order'")),
    };
    let shape = dict_value(header, "shape").ok_or_else(|| bad("no 'shape'"))?;
    let dims: Vec<usize> = shape
        .trim_matches(|c| c == '(' || c == ')')
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<usize>())
        .collect::<Result<_, _>>()
        .map_err(|_| bad(&format!("bad shape {shape}")))?;
    let &[n, d] = dims.as_slice() else {
        return Err(bad(&format!("shape {shape} is not 2-D")));
    };
    let offset = start + hlen;
    let need = n
        .checked_mul(d)
        .and_then(|x| x.checked_mul(elem.size()))
        .ok_or_else(|| bad("shape overflows"))?;
    if map.len() < offset + need {
        return Err(bad(&format!(
            "data truncated: {} bytes for a {n}×{d} matrix that needs {need}",
            map.len() - offset
        )));
    }
    Ok(MatrixFile {
        path: path.to_path_buf(),
        map,
        n,
        d,
        elem,
        offset,
        fortran,
        format: "npy",
        metadata: BTreeMap::new(),
    })
}

/// The raw text of `key`'s value in a Python dict literal like numpy's header.
fn dict_value<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    let pos = header
        .find(&format!("'{key}'"))
        .or_else(|| header.find(&format!("\"{key}\"")))?;
    let rest = header[pos + key.len() + 2..]
        .trim_start()
        .strip_prefix(':')?
        .trim_start();
    let end = if rest.starts_with('(') {
        rest.find(')')? + 1
    } else {
        rest.find([',', '}'])?
    };
    Some(rest[..end].trim())
}

/// Reads a whole safetensors or `.npy` matrix.
pub fn read_matrix(path: &Path) -> Result<Basis, BasisError> {
    Ok(MatrixFile::open(path)?.to_basis())
}

/// Little-endian bytes of `data` (a view on little-endian hosts).
fn le_bytes(data: &[f32]) -> Cow<'_, [u8]> {
    if cfg!(target_endian = "little") {
        // SAFETY: f32 has no padding and u8 has alignment 1; the length is exact.
        Cow::Borrowed(unsafe {
            std::slice::from_raw_parts(data.as_ptr() as *const u8, std::mem::size_of_val(data))
        })
    } else {
        Cow::Owned(data.iter().flat_map(|x| x.to_le_bytes()).collect())
    }
}

/// Writes through a temp file in `path`'s directory, then renames it over `path`.
fn atomic_write(
    path: &Path,
    write: impl FnOnce(&Path, &mut File) -> Result<(), String>,
) -> Result<(), BasisError> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".ebv-basis-")
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(|e| BasisError::io(dir, e))?;
    let tmp_path = tmp.path().to_path_buf();
    write(&tmp_path, tmp.as_file_mut()).map_err(|r| BasisError::format(path, r))?;
    tmp.as_file()
        .sync_all()
        .map_err(|e| BasisError::io(&tmp_path, e))?;
    tmp.persist(path)
        .map_err(|e| BasisError::io(path, e.error))?;
    Ok(())
}

/// Writes `basis` as safetensors: tensor `ebv`, F32, [N, d], with `metadata`.
pub fn write_safetensors(
    path: &Path,
    basis: &Basis,
    metadata: &BTreeMap<String, String>,
) -> Result<(), BasisError> {
    let bytes = le_bytes(&basis.data);
    let view = TensorView::new(Dtype::F32, vec![basis.n, basis.d], &bytes)
        .map_err(|e| BasisError::format(path, e.to_string()))?;
    let meta: HashMap<String, String> = metadata.clone().into_iter().collect();
    atomic_write(path, |tmp, _| {
        safetensors::tensor::serialize_to_file([(TENSOR_NAME, view)], Some(meta), tmp)
            .map_err(|e| e.to_string())
    })
}

/// The `.npy` v1.0 header for a C-order `<f4` N × d array, padded so the data
/// starts on a 64-byte boundary.
pub fn npy_header(n: usize, d: usize) -> Vec<u8> {
    let dict = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({n}, {d}), }}");
    let unpadded = 10 + dict.len() + 1;
    let total = unpadded.next_multiple_of(64);
    let mut h = Vec::with_capacity(total);
    h.extend_from_slice(b"\x93NUMPY\x01\x00");
    h.extend_from_slice(&((total - 10) as u16).to_le_bytes());
    h.extend_from_slice(dict.as_bytes());
    h.resize(total - 1, b' ');
    h.push(b'\n');
    h
}

/// Writes `basis` as a NumPy `.npy` file (v1.0, `<f4`, C order).
pub fn write_npy(path: &Path, basis: &Basis) -> Result<(), BasisError> {
    atomic_write(path, |_, file| {
        let mut w = BufWriter::with_capacity(1 << 20, file);
        w.write_all(&npy_header(basis.n, basis.d))
            .and_then(|_| w.write_all(&le_bytes(&basis.data)))
            .and_then(|_| w.flush())
            .map_err(|e| e.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npy_header_is_aligned_v1() {
        for (n, d) in [(1usize, 1usize), (1000, 512), (100_000, 5000)] {
            let h = npy_header(n, d);
            assert_eq!(h.len() % 64, 0);
            assert_eq!(u16::from_le_bytes([h[8], h[9]]) as usize + 10, h.len());
            assert_eq!(*h.last().unwrap(), b'\n');
        }
    }

    #[test]
    fn round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let b = Basis::random(37, 11, 5);
        let mut meta = BTreeMap::new();
        meta.insert("alpha".to_string(), "0.5".to_string());
        let st = dir.path().join("a.safetensors");
        write_safetensors(&st, &b, &meta).unwrap();
        let f = MatrixFile::open(&st).unwrap();
        assert_eq!((f.n, f.d, f.format), (37, 11, "safetensors"));
        assert_eq!(f.metadata.get("alpha").map(String::as_str), Some("0.5"));
        assert_eq!(f.to_basis(), b);
        let np = dir.path().join("a.npy");
        write_npy(&np, &b).unwrap();
        assert_eq!(read_matrix(&np).unwrap(), b);
        // Only the two files: no temp file left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
    }

    #[test]
    fn dict_value_parses_numpy_headers() {
        let h = "{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }";
        assert_eq!(dict_value(h, "descr"), Some("'<f4'"));
        assert_eq!(dict_value(h, "fortran_order"), Some("False"));
        assert_eq!(dict_value(h, "shape"), Some("(3, 4)"));
    }
}
