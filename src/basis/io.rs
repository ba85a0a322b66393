//! Reading and writing basis matrices: safetensors (one F32 tensor `ebv`,
//! shape [N, d], string metadata) and NumPy `.npy` (v1.0 header, `<f4`,
//! C order). Reading also takes F16/BF16/F64 safetensors and `.npy` files
//! of f2/f4/f8 in either byte order and either memory order, as numpy and
//! PyTorch write them; f64 files can be read without rounding to f32.
//!
//! Invariants: writes are atomic (a temp file in the destination's directory,
//! synced, then renamed over it), so a reader never sees half a matrix; the
//! temp file is named with its writer's pid, so that the next run can tell
//! one a killed run left from one being written ([`remove_stale_temps`]).
//! Reads memory-map the file and convert rows on demand
//! ([`MatrixFile::read_rows`]), so `check` on a 100,000 × 5000 matrix holds
//! only the blocks it is working on. Written files are byte-identical for the
//! same matrix and metadata (the header's keys are sorted).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::tensor::{Dtype, SafeTensors};

use super::error::BasisError;
use super::matrix::Basis;

/// Name of the tensor in the safetensors files we write.
pub const TENSOR_NAME: &str = "ebv";

/// Element type on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Elem {
    F16,
    BF16,
    F32,
    F64,
}

impl Elem {
    pub(super) fn size(self) -> usize {
        match self {
            Elem::F16 | Elem::BF16 => 2,
            Elem::F32 => 4,
            Elem::F64 => 8,
        }
    }

    /// torch's name of the type.
    pub(super) fn torch_name(self) -> &'static str {
        match self {
            Elem::F16 => "float16",
            Elem::BF16 => "bfloat16",
            Elem::F32 => "float32",
            Elem::F64 => "float64",
        }
    }

    /// The value of one element's bytes (`big`: big-endian on disk), exactly.
    pub(super) fn decode(self, b: &[u8], big: bool) -> f64 {
        let mut a = [0u8; 8];
        let k = self.size();
        a[..k].copy_from_slice(&b[..k]);
        if big {
            a[..k].reverse();
        }
        match self {
            Elem::F16 => f16_to_f64(u16::from_le_bytes([a[0], a[1]])),
            // bfloat16 is the top half of an f32.
            Elem::BF16 => f32::from_bits((u16::from_le_bytes([a[0], a[1]]) as u32) << 16) as f64,
            Elem::F32 => f32::from_le_bytes([a[0], a[1], a[2], a[3]]) as f64,
            Elem::F64 => f64::from_le_bytes(a),
        }
    }
}

/// IEEE binary16 to f64 (exact: every f16 is an f64).
fn f16_to_f64(h: u16) -> f64 {
    let sign = if h & 0x8000 != 0 { -1.0 } else { 1.0 };
    let exp = ((h >> 10) & 0x1f) as i32;
    let frac = (h & 0x3ff) as f64;
    sign * match exp {
        0 => frac * 2f64.powi(-24),
        31 if frac == 0.0 => f64::INFINITY,
        31 => f64::NAN,
        e => (1.0 + frac / 1024.0) * 2f64.powi(e - 15),
    }
}

/// Refuses a folder, named pipe, device or socket by name before it is
/// opened (a pipe would block; mapping a folder fails as "No such device");
/// `expected` says what the file should have been.
pub fn regular_file(path: &Path, expected: &str) -> Result<(), BasisError> {
    match crate::file_kind::not_regular(path) {
        Ok(None) => Ok(()),
        Ok(Some(kind)) => Err(BasisError::format(
            path,
            format!("is a {kind}, not {expected}"),
        )),
        Err(e) => Err(BasisError::io(path, e)),
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
    /// Big-endian elements (a `>` .npy descr).
    big: bool,
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
        regular_file(path, "a matrix file (safetensors or .npy)")?;
        let file = File::open(path).map_err(|e| BasisError::io(path, e))?;
        // SAFETY: the map is read-only; a file truncated under us by another
        // process is outside what this tool guards against (as for any reader).
        let map = unsafe { Mmap::map(&file) }.map_err(|e| BasisError::io(path, e))?;
        if map.starts_with(b"\x93NUMPY") {
            open_npy(path, map)
        } else if looks_like_safetensors(&map) {
            open_safetensors(path, map)
        } else if map.first() == Some(&0x80) || map.starts_with(b"PK\x03\x04") {
            // Pickles start with PROTO (0x80); torch.save's zip format with PK.
            Err(BasisError::format(
                path,
                "a pickle or torch.save file, not a safetensors or .npy matrix: convert the \
                 paper's .pkl files with `ebv-basis import FILE.pkl --out FILE.safetensors`",
            ))
        } else if path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("npy"))
        {
            // Named .npy but without the magic: say so, rather than report
            // it as a safetensors file with a bad header.
            Err(BasisError::format(
                path,
                ".npy: no NumPy magic (\\x93NUMPY) at the start: not an .npy file, or a damaged one",
            ))
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
        self.read_rows_with(start, end, out, |x| x as f32)
    }

    /// [`Self::read_rows`] in f64: f64 files exactly, the others widened.
    pub fn read_rows_f64(&self, start: usize, end: usize, out: &mut [f64]) {
        self.read_rows_with(start, end, out, |x| x)
    }

    /// True when the elements on disk are f64 (so f64 reads keep every bit).
    pub fn is_f64(&self) -> bool {
        self.elem == Elem::F64
    }

    fn read_rows_with<T>(&self, start: usize, end: usize, out: &mut [T], conv: impl Fn(f64) -> T) {
        assert!(start <= end && end <= self.n && out.len() >= (end - start) * self.d);
        let (d, sz) = (self.d, self.elem.size());
        let bytes = &self.map[self.offset..];
        let get = |idx: usize| conv(self.elem.decode(&bytes[idx * sz..], self.big));
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

/// A safetensors file: a u64 LE header length that fits the file, then the
/// JSON header's `{`. Checked before the pickle test, since a header of 384
/// (or any length ≡ 0x80 mod 256) starts the file with a pickle's 0x80.
pub(super) fn looks_like_safetensors(map: &[u8]) -> bool {
    match map.get(..9) {
        Some(head) => {
            let mut len = [0u8; 8];
            len.copy_from_slice(&head[..8]);
            head[8] == b'{' && u64::from_le_bytes(len) <= (map.len() - 8) as u64
        }
        None => false,
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
        Dtype::F16 => Elem::F16,
        Dtype::BF16 => Elem::BF16,
        Dtype::F32 => Elem::F32,
        Dtype::F64 => Elem::F64,
        other => {
            return Err(bad(format!(
                "tensor `{name}` is {other:?}; F16, BF16, F32 or F64 expected"
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
    let metadata = string_metadata(&map).map_err(bad)?;
    Ok(MatrixFile {
        path: path.to_path_buf(),
        map,
        n,
        d,
        elem,
        big: false,
        offset,
        fortran: false,
        format: "safetensors",
        metadata,
    })
}

/// The `__metadata__` of a safetensors file (empty when it has none).
fn string_metadata(map: &[u8]) -> Result<BTreeMap<String, String>, String> {
    let (_, meta) = SafeTensors::read_metadata(map).map_err(|e| e.to_string())?;
    Ok(meta
        .metadata()
        .as_ref()
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default())
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
    // '=' is native order and '|' "not applicable": numpy writes '<'/'>' for
    // floats, but both are legal; '=' means the writer's order, assumed little.
    // A descr without an order character ('f4', which numpy also accepts)
    // is native order too.
    let (order, code) = match descr.split_at(descr.len().min(1)) {
        (o @ (">" | "<" | "=" | "|"), code) => (o, code),
        _ => ("=", descr),
    };
    let big = order == ">";
    let elem = match code {
        "f2" => Elem::F16,
        "f4" => Elem::F32,
        "f8" => Elem::F64,
        _ => {
            return Err(bad(&format!(
                "dtype {descr} not supported (f2, f4 or f8 in either byte order expected)"
            )))
        }
    };
    // NumPy writes False/True; older writers (and hand-made headers) 0/1,
    // which NumPy's own reader takes as well.
    let fortran = match dict_value(header, "fortran_order") {
        Some("False" | "0") => false,
        Some("True" | "1") => true,
        Some(v) => {
            return Err(bad(&format!(
                "'fortran_order': {v} is neither False nor True"
            )))
        }
        None => return Err(bad("no 'fortran_order'")),
    };
    let shape = dict_value(header, "shape").ok_or_else(|| bad("no 'shape'"))?;
    let dims: Vec<usize> = shape
        .trim_matches(|c| c == '(' || c == ')')
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        // Python 2's NumPy wrote long integers as `50L`.
        .map(|s| s.strip_suffix('L').unwrap_or(s).parse::<usize>())
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
    if offset.checked_add(need).is_none_or(|end| map.len() < end) {
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
        big,
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

/// Prefix of the temporary files written in an output's folder:
/// `.ebv-basis-PID-XXXXXX.tmp`, the pid telling [`remove_stale_temps`]
/// whether their writer is still running.
const TEMP_PREFIX: &str = ".ebv-basis-";
const TEMP_SUFFIX: &str = ".tmp";

/// A temp file in `dir` named with this process's pid (see [`TEMP_PREFIX`]).
pub(super) fn temp_file_in(dir: &Path) -> std::io::Result<tempfile::NamedTempFile> {
    // A temp file is private (0600); the matrix is not, so it gets the
    // mode a plain create would give it (0666 less the umask).
    tempfile::Builder::new()
        .prefix(&format!("{TEMP_PREFIX}{}-", std::process::id()))
        .suffix(TEMP_SUFFIX)
        .permissions(std::fs::Permissions::from_mode(0o666))
        .tempfile_in(dir)
}

/// Remove from `dir` the temp files that killed `ebv-basis` runs left
/// (up to a whole matrix each): those whose writer's pid is no longer
/// running, and those named without a pid (older versions), in both cases
/// only when last written before `started` (this process's start), so that
/// a run writing in the same folder right now, in this pid namespace or
/// another, keeps its file. Returns the bytes freed.
pub fn remove_stale_temps(dir: &Path, started: std::time::SystemTime) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut freed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(middle) = name
            .to_str()
            .and_then(|n| n.strip_prefix(TEMP_PREFIX))
            .and_then(|n| n.strip_suffix(TEMP_SUFFIX))
        else {
            continue;
        };
        // `PID-XXXXXX` now; `XXXXXX` (alphanumeric, no dash) before.
        let writer_gone = match middle.split_once('-') {
            Some((pid, _)) => match pid.parse::<i32>() {
                Ok(pid) if pid > 0 => !process_alive(pid),
                _ => continue,
            },
            None => true,
        };
        let Ok(meta) = entry.metadata() else { continue };
        let before = meta.modified().is_ok_and(|m| m < started);
        if writer_gone && before && meta.is_file() && std::fs::remove_file(entry.path()).is_ok() {
            freed += meta.len();
        }
    }
    freed
}

/// The temp files [`atomic_write`] has open, so that an abort can remove
/// them ([`exit_removing_temps`]).
static LIVE_TEMPS: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());

/// Takes a temp file off [`LIVE_TEMPS`] when it is persisted or dropped.
struct LiveTemp(PathBuf);

impl Drop for LiveTemp {
    fn drop(&mut self) {
        if let Ok(mut live) = LIVE_TEMPS.lock() {
            live.retain(|p| p != &self.0);
        }
    }
}

/// Exits the process at once (a second Ctrl-C) without leaving the temp
/// file being written: its destructor will not run. The registry stays
/// locked until the process is gone, so no write can start a new one.
pub fn exit_removing_temps(code: i32) -> ! {
    let live = LIVE_TEMPS.lock().unwrap_or_else(|e| e.into_inner());
    for p in live.iter() {
        let _ = std::fs::remove_file(p);
    }
    std::process::exit(code)
}

/// Whether a process with this pid exists (here: signal 0 does not fail
/// with ESRCH; EPERM means it exists under another user).
fn process_alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process can be found.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

/// Writes through a temp file in `path`'s directory, then renames it over `path`.
fn atomic_write(
    path: &Path,
    write: impl FnOnce(&Path, &mut File) -> Result<(), String>,
) -> Result<(), BasisError> {
    let dir = crate::file_kind::folder_of(path);
    let (mut tmp, _live) = {
        // Created and registered under the registry's lock: an abort
        // either finds it registered or stops us before it exists.
        let mut live = LIVE_TEMPS.lock().unwrap_or_else(|e| e.into_inner());
        let tmp = temp_file_in(dir).map_err(|e| BasisError::io(dir, e))?;
        live.push(tmp.path().to_path_buf());
        let guard = LiveTemp(tmp.path().to_path_buf());
        (tmp, guard)
    };
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
    write_tensors(
        path,
        basis.n,
        basis.d,
        &[(TENSOR_NAME, &basis.data)],
        metadata,
    )
}

/// Writes several F32 [N, d] tensors into one safetensors file, in the
/// order given, atomically.
pub(super) fn write_tensors(
    path: &Path,
    n: usize,
    d: usize,
    tensors: &[(&str, &[f32])],
    metadata: &BTreeMap<String, String>,
) -> Result<(), BasisError> {
    // The safetensors crate writes its metadata from a HashMap, in a random
    // key order, so two identical runs would differ byte for byte. The
    // format is simple enough to write with sorted keys (serde_json's map is
    // a BTreeMap): u64 LE header length, the JSON header padded with spaces
    // to a multiple of 8 bytes, then the data.
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), serde_json::json!(metadata));
    let mut offset = 0usize;
    for (name, data) in tensors {
        if data.len() != n * d {
            return Err(BasisError::format(
                path,
                format!("tensor `{name}` is not N × d values"),
            ));
        }
        let end = offset + data.len() * 4;
        header.insert(
            name.to_string(),
            serde_json::json!({
                "dtype": "F32",
                "shape": [n, d],
                "data_offsets": [offset, end],
            }),
        );
        offset = end;
    }
    let mut json = serde_json::to_vec(&serde_json::Value::Object(header))
        .map_err(|e| BasisError::format(path, e.to_string()))?;
    json.resize(json.len().next_multiple_of(8), b' ');
    atomic_write(path, |_, file| {
        let mut w = BufWriter::with_capacity(1 << 20, file);
        w.write_all(&(json.len() as u64).to_le_bytes())
            .and_then(|_| w.write_all(&json))
            .and_then(|_| {
                tensors
                    .iter()
                    .try_for_each(|(_, data)| w.write_all(&le_bytes(data)))
            })
            .and_then(|_| w.flush())
            .map_err(|e| e.to_string())
    })
}

/// The tensors asked of [`read_tensors`] (`None`: not in the file) and the
/// file's metadata.
pub(super) type Tensors = (Vec<Option<Vec<f32>>>, BTreeMap<String, String>);

/// Reads the F32 tensors of a safetensors file written by [`write_tensors`]
/// (each must be [n, d]) and its metadata; a tensor not in the file is `None`.
pub(super) fn read_tensors(
    path: &Path,
    n: usize,
    d: usize,
    names: &[&str],
) -> Result<Tensors, BasisError> {
    regular_file(path, "a safetensors file")?;
    let file = File::open(path).map_err(|e| BasisError::io(path, e))?;
    // SAFETY: read-only map of a file this tool wrote by rename (never in place).
    let map = unsafe { Mmap::map(&file) }.map_err(|e| BasisError::io(path, e))?;
    let bad = |r: String| BasisError::format(path, format!("not a readable safetensors file: {r}"));
    let st = SafeTensors::deserialize(&map).map_err(|e| bad(e.to_string()))?;
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        let Ok(view) = st.tensor(name) else {
            out.push(None);
            continue;
        };
        if view.dtype() != Dtype::F32 || view.shape() != [n, d] {
            return Err(bad(format!(
                "tensor `{name}` is {:?} {:?}; F32 [{n}, {d}] expected",
                view.dtype(),
                view.shape()
            )));
        }
        let data = view
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        out.push(Some(data));
    }
    let metadata = string_metadata(&map).map_err(bad)?;
    Ok((out, metadata))
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
        // Readable by others as a plain create makes it, not a temp file's
        // 0600 (the umask may take group/other write away, never read).
        let umask = unsafe { libc::umask(0o022) };
        unsafe { libc::umask(umask) };
        for p in [&st, &np] {
            let mode = std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o666 & !umask, "{}: {mode:o}", p.display());
        }
    }

    #[test]
    fn safetensors_bytes_are_deterministic_and_readable_by_the_crate() {
        let dir = tempfile::tempdir().unwrap();
        let b = Basis::random(9, 5, 3);
        let meta: BTreeMap<String, String> = (0..20)
            .map(|i| (format!("key{i:02}"), format!("value {i}")))
            .collect();
        let (p, q) = (
            dir.path().join("p.safetensors"),
            dir.path().join("q.safetensors"),
        );
        write_safetensors(&p, &b, &meta).unwrap();
        write_safetensors(&q, &b, &meta).unwrap();
        let bytes = std::fs::read(&p).unwrap();
        assert_eq!(bytes, std::fs::read(&q).unwrap());
        // Header: length, JSON with sorted keys, padded to 8; then the data.
        let hlen = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        assert_eq!(hlen % 8, 0);
        let header = std::str::from_utf8(&bytes[8..8 + hlen]).unwrap();
        assert!(
            header.starts_with("{\"__metadata__\":{\"key00\""),
            "{header}"
        );
        assert!(header.find("key19").unwrap() < header.find("\"ebv\"").unwrap());
        assert_eq!(bytes.len(), 8 + hlen + 9 * 5 * 4);
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let view = st.tensor(TENSOR_NAME).unwrap();
        assert_eq!((view.dtype(), view.shape()), (Dtype::F32, &[9usize, 5][..]));
        assert_eq!(read_matrix(&p).unwrap(), b);
    }

    /// A v1.0 `.npy` file of `descr` with the given data bytes.
    fn npy(descr: &str, fortran: bool, shape: (usize, usize), data: &[u8]) -> Vec<u8> {
        let dict = format!(
            "{{'descr': '{descr}', 'fortran_order': {}, 'shape': ({}, {}), }}\n",
            if fortran { "True" } else { "False" },
            shape.0,
            shape.1
        );
        let mut v = b"\x93NUMPY\x01\x00".to_vec();
        v.extend((dict.len() as u16).to_le_bytes());
        v.extend(dict.as_bytes());
        v.extend(data);
        v
    }

    #[test]
    fn reads_half_big_endian_fortran_and_exact_f64() {
        let dir = tempfile::tempdir().unwrap();
        let open = |name: &str, bytes: Vec<u8>| {
            let p = dir.path().join(name);
            std::fs::write(&p, bytes).unwrap();
            MatrixFile::open(&p).unwrap()
        };
        // IEEE half bit patterns and their values: 0.5, -1.25, 3, 65504 (max),
        // 2^-24 (smallest subnormal), -0.
        let halves: [(u16, f32); 6] = [
            (0x3800, 0.5),
            (0xBD00, -1.25),
            (0x4200, 3.0),
            (0x7BFF, 65504.0),
            (0x0001, 5.960_464_5e-8),
            (0x8000, -0.0),
        ];
        let want: Vec<f32> = halves.iter().map(|h| h.1).collect();
        let le: Vec<u8> = halves.iter().flat_map(|h| h.0.to_le_bytes()).collect();
        let be: Vec<u8> = halves.iter().flat_map(|h| h.0.to_be_bytes()).collect();
        let mut got = vec![0.0f32; 6];
        for (name, descr, bytes) in [
            ("le.npy", "<f2", le.clone()),
            ("be.npy", ">f2", be),
            ("bare.npy", "f2", le),
        ] {
            open(name, npy(descr, false, (2, 3), &bytes)).read_rows(0, 2, &mut got);
            assert_eq!(got, want, "{descr}");
        }
        // Big-endian f4, Fortran order: the file holds the columns.
        let m = [[1.5f32, -2.0, 0.25], [4.0, 8.5, -16.0]];
        let cols: Vec<u8> = (0..3)
            .flat_map(|k| (0..2).map(move |i| (i, k)))
            .flat_map(|(i, k)| m[i][k].to_be_bytes())
            .collect();
        open("bef.npy", npy(">f4", true, (2, 3), &cols)).read_rows(0, 2, &mut got);
        assert_eq!(got, [1.5, -2.0, 0.25, 4.0, 8.5, -16.0]);
        // f8 read in f64 keeps what f32 cannot hold.
        let vals = [1.0 + 2f64.powi(-40), -1.0 / 3.0];
        let bytes: Vec<u8> = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
        let f = open("f8.npy", npy("<f8", false, (1, 2), &bytes));
        assert!(f.is_f64());
        let mut g64 = [0.0f64; 2];
        f.read_rows_f64(0, 1, &mut g64);
        assert_eq!(g64, vals);
        // Unsupported dtypes name themselves.
        let p = dir.path().join("i4.npy");
        std::fs::write(&p, npy("<i4", false, (1, 1), &[0; 4])).unwrap();
        let e = MatrixFile::open(&p).err().unwrap().to_string();
        assert!(e.contains("dtype <i4 not supported"), "{e}");
    }

    #[test]
    fn reads_f16_and_bf16_safetensors_and_points_pickles_to_import() {
        let dir = tempfile::tempdir().unwrap();
        // 1.0 and -2.5 in both 16-bit formats.
        for (dtype, bits) in [
            (Dtype::F16, [0x3C00u16, 0xC100]),
            (Dtype::BF16, [0x3F80, 0xC020]),
        ] {
            let bytes: Vec<u8> = bits.iter().flat_map(|b| b.to_le_bytes()).collect();
            let view = safetensors::tensor::TensorView::new(dtype, vec![1, 2], &bytes).unwrap();
            let p = dir.path().join(format!("{dtype:?}.safetensors"));
            safetensors::tensor::serialize_to_file([(TENSOR_NAME, view)], None, &p).unwrap();
            assert_eq!(read_matrix(&p).unwrap().data, [1.0, -2.5], "{dtype:?}");
        }
        let p = dir.path().join("eq.pkl");
        std::fs::write(&p, b"\x80\x02K\x01.").unwrap();
        let e = MatrixFile::open(&p).err().unwrap().to_string();
        assert!(e.contains("ebv-basis import"), "{e}");
    }

    /// A header whose length is ≡ 0x80 mod 256 starts the file with the byte
    /// a pickle starts with: still a safetensors matrix (the fashion-mnist
    /// demo's basis once had a 384-byte header and was refused as a pickle).
    #[test]
    fn safetensors_whose_first_byte_is_0x80_open() {
        let dir = tempfile::tempdir().unwrap();
        let b = Basis::random(4, 3, 1);
        for want in [0x80u64, 0x180, 0x280] {
            let p = dir.path().join(format!("h{want:x}.safetensors"));
            // Pad one metadata value until the header has the length wanted.
            let mut pad = String::new();
            loop {
                let meta = BTreeMap::from([("pad".to_string(), pad.clone())]);
                write_safetensors(&p, &b, &meta).unwrap();
                let bytes = std::fs::read(&p).unwrap();
                let len = u64::from_le_bytes(bytes[..8].try_into().unwrap());
                assert!(len <= want, "no padding gives a {want}-byte header");
                if len == want {
                    assert_eq!(bytes[0], 0x80);
                    break;
                }
                pad.push('x');
            }
            let f = MatrixFile::open(&p).unwrap();
            assert_eq!((f.n, f.d, f.format), (4, 3, "safetensors"));
            assert_eq!(f.to_basis(), b);
        }
    }

    #[test]
    fn old_npy_headers_and_a_npy_without_its_magic() {
        let dir = tempfile::tempdir().unwrap();
        // `fortran_order: 0` and Python 2 longs (`2L`): NumPy reads both.
        let header = "{'descr': '<f4', 'fortran_order': 0, 'shape': (2L, 3L), }";
        let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
        let pad = (64 - (10 + header.len() + 1) % 64) % 64;
        let hlen = (header.len() + pad + 1) as u16;
        bytes.extend(hlen.to_le_bytes());
        bytes.extend(header.as_bytes());
        bytes.extend(std::iter::repeat_n(b' ', pad));
        bytes.push(b'\n');
        let vals = [1.0f32, 0.0, 0.0, 0.0, 1.0, 0.0];
        bytes.extend(vals.iter().flat_map(|v| v.to_le_bytes()));
        let p = dir.path().join("old.npy");
        std::fs::write(&p, &bytes).unwrap();
        let f = MatrixFile::open(&p).unwrap();
        assert_eq!((f.n, f.d, f.format), (2, 3, "npy"));
        assert_eq!(f.to_basis().data, vals);
        // The magic damaged: named as an .npy problem, not a safetensors one.
        bytes[1] = b'X';
        std::fs::write(&p, &bytes).unwrap();
        let e = MatrixFile::open(&p).err().unwrap().to_string();
        assert!(e.contains(".npy: no NumPy magic"), "{e}");
    }

    #[test]
    fn dict_value_parses_numpy_headers() {
        let h = "{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }";
        assert_eq!(dict_value(h, "descr"), Some("'<f4'"));
        assert_eq!(dict_value(h, "fortran_order"), Some("False"));
        assert_eq!(dict_value(h, "shape"), Some("(3, 4)"));
    }
}
