//! Reads the paper's released matrices (`eq_{d}_{N}.pkl`) without Python.
//!
//! Two forms exist, both plain pickles read through the restricted
//! [`super::pickle`] reader:
//! 1. a torch tensor: `torch._utils._rebuild_tensor_v2(storage, offset,
//!    size, stride, …)` with `storage = torch.storage._load_from_bytes(b)`,
//!    where `b` (bytes, or `_codecs.encode(str, 'latin1')` at protocol 2)
//!    is the legacy `torch.save` layout: five pickles (magic
//!    number, protocol 1001, sys info, the storage as persistent id
//!    `('storage', torch.FloatStorage, key, location, numel, None)`, the list
//!    of keys), then per key an i64 LE element count and the LE values;
//! 2. a NumPy array: `numpy.core.multiarray._reconstruct(ndarray, (0,), b'b')`
//!    then BUILD with `(1, shape, dtype, fortran, data)` (data as bytes, or as
//!    `_codecs.encode(str, 'latin1')` in protocol 2), or protocol 5's
//!    `numpy.core.numeric._frombuffer(data, dtype, shape, order)`.
//!
//! `torch.save` files of a tensor (zip or legacy format) are read too, and a
//! tensor may be wrapped in `torch.nn.Parameter` (`_rebuild_parameter`).
//! Storages of float32, float64, float16 and bfloat16 are read; the output
//! is float32, so float16/bfloat16 widen exactly and float64 is rounded to
//! nearest (the one lossy case, reported by [`PickleForm::rounded`]).
//!
//! Only the globals below are accepted; values are copied as stored (no
//! renormalisation), so an import of float32 data is bit-faithful. The
//! `torch.*Storage` type names are accepted as names only, so that a storage
//! of integers is refused for its element type rather than as an unknown
//! global; nothing a pickle names is ever called.

use std::borrow::Cow;
use std::path::Path;

use super::error::BasisError;
use super::io::Elem;
use super::matrix::Basis;
use super::pickle::{self, PickleError, Value};

const TORCH_MAGIC: u128 = 0x1950a86a20f9469cfc6c;

fn allowed_outer(module: &str, name: &str) -> bool {
    matches!(
        (module, name),
        ("torch._utils", "_rebuild_tensor_v2")
            | ("torch.storage", "_load_from_bytes")
            | ("collections", "OrderedDict")
            | ("numpy.core.multiarray", "_reconstruct")
            | ("numpy._core.multiarray", "_reconstruct")
            | ("numpy.core.numeric", "_frombuffer")
            | ("numpy._core.numeric", "_frombuffer")
            | ("numpy", "ndarray")
            | ("numpy", "dtype")
            | ("_codecs", "encode")
    )
}

fn allowed_inner(module: &str, name: &str) -> bool {
    storage_type_name(module, name)
}

/// `torch.FloatStorage`, `torch.LongStorage`, …: type markers in a
/// persistent id, read as names (see [`storage_elem`]).
fn storage_type_name(module: &str, name: &str) -> bool {
    module == "torch" && name.ends_with("Storage") && name.len() > "Storage".len()
}

/// The object pickle of a whole-file legacy `torch.save` of a tensor:
/// the tensor rebuilt around a storage named by persistent id.
fn allowed_legacy_object(module: &str, name: &str) -> bool {
    matches!(
        (module, name),
        ("torch._utils", "_rebuild_tensor_v2")
            | ("torch._utils", "_rebuild_parameter")
            | ("torch._utils", "_rebuild_parameter_with_state")
            | ("collections", "OrderedDict")
    ) || storage_type_name(module, name)
}

/// The element type of a torch storage class named in a persistent id;
/// other element types are an error naming the class.
fn storage_elem(ty: &Value, path: &Path) -> Result<Elem, BasisError> {
    match ty.callee() {
        Some(("torch", "FloatStorage")) => Ok(Elem::F32),
        Some(("torch", "DoubleStorage")) => Ok(Elem::F64),
        Some(("torch", "HalfStorage")) => Ok(Elem::F16),
        Some(("torch", "BFloat16Storage")) => Ok(Elem::BF16),
        Some((m, n)) => Err(perr(
            path,
            format!(
                "the tensor's storage is {m}.{n}; a basis must be floating point \
                 (float32, float64, float16 or bfloat16)"
            ),
        )),
        None => Err(perr(path, "storage type is not a torch storage class")),
    }
}

/// Little-endian elements as f32: exact except float64, rounded to nearest.
fn decode_le(ty: Elem, b: &[u8]) -> Vec<f32> {
    b.chunks_exact(ty.size())
        .map(|c| ty.decode(c, false) as f32)
        .collect()
}

/// The tensor inside `torch.nn.Parameter`'s rebuild, or `v` itself.
fn unwrap_parameter<'v, 'a>(v: &'v Value<'a>) -> &'v Value<'a> {
    match v.callee() {
        Some(("torch._utils", "_rebuild_parameter" | "_rebuild_parameter_with_state")) => {
            match call_parts(v) {
                Some(([data, ..], _)) => data,
                _ => v,
            }
        }
        _ => v,
    }
}

/// Which of the two released forms a file was.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(tag = "form", rename_all = "lowercase")]
pub enum PickleForm {
    /// A torch tensor; `location` as recorded (e.g. `cuda:0`), `dtype` its
    /// storage's element type (`float32`, `float64`, `float16`, `bfloat16`).
    Torch { location: String, dtype: String },
    /// A NumPy ndarray.
    Numpy { dtype: String },
}

impl std::fmt::Display for PickleForm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PickleForm::Torch { location, dtype } => {
                write!(f, "a torch {dtype} tensor saved on {location}")
            }
            PickleForm::Numpy { dtype } => write!(f, "a NumPy {dtype} array"),
        }
    }
}

impl PickleForm {
    /// Whether the values were rounded on their way to float32 (float64 sources).
    pub fn rounded(&self) -> bool {
        match self {
            PickleForm::Torch { dtype, .. } => dtype == "float64",
            PickleForm::Numpy { dtype } => dtype.ends_with("f8"),
        }
    }
}

/// A matrix read from a pickle.
#[derive(Debug, Clone)]
pub struct Imported {
    pub basis: Basis,
    pub form: PickleForm,
}

/// Reads `path` (a `.pkl` of either form) into memory.
pub fn import_pickle(path: &Path) -> Result<Imported, BasisError> {
    super::io::regular_file(path, "a pickle or torch.save file")?;
    let data = std::fs::read(path).map_err(|e| BasisError::io(path, e))?;
    import_bytes(&data, path)
}

/// As [`import_pickle`], on bytes already in memory (`path` names them in errors).
pub fn import_bytes(data: &[u8], path: &Path) -> Result<Imported, BasisError> {
    // What ebv reads without Python, in any of its tools: a .npy file.
    const EXPORT: &str = "save the matrix with NumPy instead (np.save('ebv.npy', \
                          t.detach().cpu().float().numpy())): ebv-basis check, --start and \
                          ebv-train --ebv read .npy files as they are";
    // The formats ebv reads directly: a likely mix-up, named as such.
    let direct = if data.starts_with(b"\x93NUMPY") {
        Some(".npy")
    } else if super::io::looks_like_safetensors(data) {
        Some("safetensors")
    } else {
        None
    };
    if let Some(kind) = direct {
        return Err(BasisError::format(
            path,
            format!(
                "a {kind} matrix, not a pickle: nothing to import; ebv-basis check, --start and \
                 ebv-train --ebv read it as it is"
            ),
        ));
    }
    if data.starts_with(b"PK\x03\x04") {
        return zip_file(data, path).map_err(|e| match e {
            BasisError::Pickle { reason, .. } => perr(path, format!("{reason}; {EXPORT}")),
            other => other,
        });
    }
    let mut pos = 0;
    let top = pickle::load(data, &mut pos, &allowed_outer).map_err(|e| map_err(path, e))?;
    let top = unwrap_parameter(&top);
    let legacy = TORCH_MAGIC.to_le_bytes()[..10].to_vec();
    match top.callee() {
        Some(("torch._utils", "_rebuild_tensor_v2")) => torch_tensor(top, path),
        Some((_, "_reconstruct")) | Some((_, "_frombuffer")) => numpy_array(top, path),
        _ if *top == Value::BigInt(legacy) => legacy_file(data, path),
        _ => Err(perr(
            path,
            "the pickle holds neither a torch tensor nor a numpy array at its top level",
        )),
    }
}

fn map_err(path: &Path, e: PickleError) -> BasisError {
    match e {
        PickleError::Forbidden { module, name } => BasisError::ForbiddenGlobal {
            path: path.to_path_buf(),
            module,
            name,
        },
        PickleError::Malformed(r) => perr(path, r),
    }
}

fn perr(path: &Path, reason: impl Into<String>) -> BasisError {
    BasisError::Pickle {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

fn call_parts<'v, 'a>(v: &'v Value<'a>) -> Option<(&'v [Value<'a>], Option<&'v Value<'a>>)> {
    match v {
        Value::Call { args, state, .. } => Some((args.as_seq()?, state.as_deref())),
        _ => None,
    }
}

fn dims2(v: &Value, what: &str, path: &Path) -> Result<[i64; 2], BasisError> {
    match v.as_seq() {
        Some([a, b]) => match (a.as_int(), b.as_int()) {
            (Some(a), Some(b)) => Ok([a, b]),
            _ => Err(perr(path, format!("{what} is not two integers"))),
        },
        Some(dims) => Err(perr(
            path,
            format!(
                "{what} has {} dimensions; a basis is 2-D (classes × dim)",
                dims.len()
            ),
        )),
        None => Err(perr(path, format!("{what} is not a tuple of two integers"))),
    }
}

fn torch_tensor(top: &Value, path: &Path) -> Result<Imported, BasisError> {
    let (args, _) = call_parts(top).ok_or_else(|| perr(path, "malformed tensor"))?;
    let [storage, ..] = args else {
        return Err(perr(path, "_rebuild_tensor_v2 with too few arguments"));
    };
    if storage.callee() != Some(("torch.storage", "_load_from_bytes")) {
        return Err(perr(
            path,
            "tensor storage is not torch.storage._load_from_bytes",
        ));
    }
    let inner = match call_parts(storage) {
        Some(([arg], _)) => pickled_bytes(arg, path)?,
        _ => return Err(perr(path, "_load_from_bytes without a bytes argument")),
    };
    let (values, location, ty) = legacy_storage(&inner, path)?;
    rebuild(args, &values, location, ty, path)
}

/// A whole-file legacy `torch.save` of a tensor (`_use_new_zipfile_
/// serialization=False`): the header pickles, the tensor whose storage is a
/// persistent id, the key list, then the storages' raw values.
fn legacy_file(b: &[u8], path: &Path) -> Result<Imported, BasisError> {
    let mut pos = 0;
    legacy_header(b, &mut pos, path)?;
    let top = pickle::load(b, &mut pos, &allowed_legacy_object).map_err(|e| map_err(path, e))?;
    let (args, (key, location, numel, ty)) = saved_tensor(&top, "legacy torch.save", path)?;
    let values = legacy_records(b, &mut pos, &key, numel, ty, path)?;
    rebuild(args, &values, location, ty, path)
}

/// A zip-format `torch.save` of a tensor (torch ≥ 1.6's default):
/// `NAME/data.pkl` rebuilds the tensor around storages named by persistent
/// id, whose raw little-endian values are the entries `NAME/data/KEY`.
fn zip_file(data: &[u8], path: &Path) -> Result<Imported, BasisError> {
    use std::io::Read;
    let bad = |r: String| perr(path, r);
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(data))
        .map_err(|e| bad(format!("unreadable zip-format torch.save: {e}")))?;
    let pkl_name = zip
        .file_names()
        .filter_map(Result::ok)
        .find(|n| n == "data.pkl" || n.ends_with("/data.pkl"))
        .map(|n| n.into_owned())
        .ok_or_else(|| bad("a zip, but not a torch.save archive (no data.pkl)".into()))?;
    let prefix = &pkl_name[..pkl_name.len() - "data.pkl".len()];
    let mut read = |name: &str| -> Result<Option<Vec<u8>>, BasisError> {
        let mut f = match zip.by_name(name) {
            Ok(f) => f,
            Err(zip::result::ZipError::FileNotFound) => return Ok(None),
            Err(e) => return Err(bad(format!("{name}: {e}"))),
        };
        // The entry's declared size bounds the read: the archive is in memory already.
        let mut buf = Vec::with_capacity(f.size().min(data.len() as u64) as usize);
        f.by_ref()
            .take(data.len() as u64)
            .read_to_end(&mut buf)
            .map_err(|e| bad(format!("{name}: {e}")))?;
        Ok(Some(buf))
    };
    if let Some(order) = read(&format!("{prefix}byteorder"))? {
        if order.trim_ascii() != b"little" {
            return Err(bad("big-endian torch storage is not supported".into()));
        }
    }
    let pkl = read(&pkl_name)?.unwrap_or_default();
    let top = pickle::load(&pkl, &mut 0, &allowed_legacy_object).map_err(|e| map_err(path, e))?;
    let (args, (key, location, numel, ty)) = saved_tensor(&top, "torch.save archive", path)?;
    let raw = read(&format!("{prefix}data/{key}"))?.ok_or_else(|| {
        bad(format!(
            "storage `{key}` not present (no {prefix}data/{key})"
        ))
    })?;
    let bytes = numel
        .checked_mul(ty.size())
        .and_then(|len| raw.get(..len))
        .ok_or_else(|| {
            bad(format!(
                "storage `{key}` holds {} bytes, {numel} {} values announced",
                raw.len(),
                ty.torch_name()
            ))
        })?;
    rebuild(args, &decode_le(ty, bytes), location, ty, path)
}

/// The `_rebuild_tensor_v2` call at the top of a `torch.save` object pickle
/// (`what`: which form, for errors), inside an `nn.Parameter` or not: its
/// arguments, and its storage's persistent id read by [`storage_id`].
fn saved_tensor<'v, 'a>(
    top: &'v Value<'a>,
    what: &str,
    path: &Path,
) -> Result<(&'v [Value<'a>], StorageId), BasisError> {
    let top = unwrap_parameter(top);
    if top.callee() != Some(("torch._utils", "_rebuild_tensor_v2")) {
        return Err(perr(
            path,
            format!("the {what} holds no tensor at its top level"),
        ));
    }
    let (args, _) = call_parts(top).ok_or_else(|| perr(path, "malformed tensor"))?;
    let Some(Value::Persistent(pid)) = args.first() else {
        return Err(perr(path, "tensor storage is not a persistent id"));
    };
    Ok((args, storage_id(pid, path)?))
}

/// `_rebuild_tensor_v2(storage, offset, size, stride, …)` over `values`.
fn rebuild(
    args: &[Value],
    values: &[f32],
    location: String,
    ty: Elem,
    path: &Path,
) -> Result<Imported, BasisError> {
    let [_, offset, size, stride, ..] = args else {
        return Err(perr(path, "_rebuild_tensor_v2 with too few arguments"));
    };
    let offset = offset
        .as_int()
        .ok_or_else(|| perr(path, "storage offset is not an integer"))?;
    let [n, d] = dims2(size, "tensor size", path)?;
    let [s0, s1] = dims2(stride, "tensor stride", path)?;
    let data = gather_strided(values, offset, [n, d], [s0, s1]).map_err(|r| perr(path, r))?;
    let (n, d) = (n as usize, d as usize);
    Ok(Imported {
        basis: Basis { n, d, data },
        form: PickleForm::Torch {
            location,
            dtype: ty.torch_name().into(),
        },
    })
}

/// The n×d elements `values[offset + i·s0 + k·s1]`, row-major, after
/// checking every size, stride and offset against the storage with exact
/// (u128) arithmetic, so a hostile header is an error, never a wrapped index
/// or an allocation larger than the storage.
fn gather_strided(
    values: &[f32],
    offset: i64,
    [n, d]: [i64; 2],
    [s0, s1]: [i64; 2],
) -> Result<Vec<f32>, String> {
    if n < 0 || d < 0 || s0 < 0 || s1 < 0 || offset < 0 {
        return Err("negative size, stride or offset".into());
    }
    if (s0 == 0 && n > 1) || (s1 == 0 && d > 1) {
        // Rows or columns that alias one another: not a matrix of distinct vectors.
        return Err(format!(
            "tensor {n}×{d} has a zero stride ({s0}, {s1}): its rows or columns alias"
        ));
    }
    // Each factor is < 2^63 and the sum < 2^128: nothing below wraps.
    let (nu, du) = (n as u128, d as u128);
    if nu * du > values.len() as u128 {
        // More elements than the storage holds: strides that overlap.
        return Err(format!(
            "tensor {n}×{d} has more elements than its storage of {}",
            values.len()
        ));
    }
    let last = if n == 0 || d == 0 {
        0
    } else {
        offset as u128 + (nu - 1) * s0 as u128 + (du - 1) * s1 as u128 + 1
    };
    if last > values.len() as u128 {
        return Err(format!(
            "tensor {n}×{d} with stride ({s0}, {s1}) and offset {offset} reaches element {last} \
             of a storage of {}",
            values.len()
        ));
    }
    // Every element lies inside the storage, so these fit in usize.
    let (n, d, s0, s1, offset) = (
        n as usize,
        d as usize,
        s0 as usize,
        s1 as usize,
        offset as usize,
    );
    let mut data = Vec::with_capacity(n * d);
    for i in 0..n {
        for k in 0..d {
            data.push(values[offset + i * s0 + k * s1]);
        }
    }
    Ok(data)
}

/// Decodes the legacy `torch.save` bytes of one storage: (values, location, type).
fn legacy_storage(b: &[u8], path: &Path) -> Result<(Vec<f32>, String, Elem), BasisError> {
    let mut pos = 0;
    legacy_header(b, &mut pos, path)?;
    let obj = pickle::load(b, &mut pos, &allowed_inner).map_err(|e| map_err(path, e))?;
    let Value::Persistent(pid) = obj else {
        return Err(perr(
            path,
            "expected the storage itself (a persistent id) as the saved object",
        ));
    };
    let (key, location, numel, ty) = storage_id(&pid, path)?;
    let values = legacy_records(b, &mut pos, &key, numel, ty, path)?;
    Ok((values, location, ty))
}

/// The three header pickles of the legacy format: torch's magic number,
/// protocol 1001, and the system info (little-endian required).
fn legacy_header(b: &[u8], pos: &mut usize, path: &Path) -> Result<(), BasisError> {
    let mut next = || pickle::load(b, pos, &allowed_inner).map_err(|e| map_err(path, e));
    let magic = next()?;
    let want = TORCH_MAGIC.to_le_bytes()[..10].to_vec();
    if magic != Value::BigInt(want) {
        return Err(perr(path, "storage bytes lack the torch.save magic number"));
    }
    if next()?.as_int() != Some(1001) {
        return Err(perr(path, "storage bytes are not torch.save protocol 1001"));
    }
    if let Value::Dict(info) = next()? {
        let le = info
            .iter()
            .find(|(k, _)| *k == Value::Str("little_endian".into()))
            .map(|(_, v)| v.clone());
        if le == Some(Value::Bool(false)) {
            return Err(perr(path, "big-endian torch storage is not supported"));
        }
        Ok(())
    } else {
        Err(perr(path, "torch.save sys info is not a dict"))
    }
}

/// A storage's key, location, element count and element type.
type StorageId = (String, String, usize, Elem);

/// `('storage', torch.FloatStorage, key, location, numel, …)` → (key,
/// location, numel, element type).
fn storage_id(pid: &Value, path: &Path) -> Result<StorageId, BasisError> {
    match pid.as_seq() {
        Some([Value::Str(tag), ty, Value::Str(key), Value::Str(loc), numel, ..])
            if tag == "storage" =>
        {
            let ty = storage_elem(ty, path)?;
            let numel = numel
                .as_int()
                .filter(|&x| x >= 0)
                .ok_or_else(|| perr(path, "storage size is not a count"))?;
            Ok((key.clone(), loc.clone(), numel as usize, ty))
        }
        _ => Err(perr(path, format!("unexpected persistent id {pid:?}"))),
    }
}

/// The key list pickle, then each storage as an int64 count and its
/// values; returns storage `key`'s `numel` values (of type `ty`) as f32.
/// The other storages' element sizes are not known here; the file holds one.
fn legacy_records(
    b: &[u8],
    pos: &mut usize,
    key: &str,
    numel: usize,
    ty: Elem,
    path: &Path,
) -> Result<Vec<f32>, BasisError> {
    let keys = pickle::load(b, pos, &allowed_inner).map_err(|e| map_err(path, e))?;
    let keys: Vec<&str> = keys
        .as_seq()
        .ok_or_else(|| perr(path, "storage key list is not a list"))?
        .iter()
        .map(|k| match k {
            Value::Str(s) => Ok(s.as_str()),
            _ => Err(perr(path, "storage key is not a string")),
        })
        .collect::<Result<_, _>>()?;
    let mut found = None;
    for k in keys {
        let count = b
            .get(*pos..*pos + 8)
            .map(|s| i64::from_le_bytes(s.try_into().unwrap_or([0; 8])))
            .ok_or_else(|| perr(path, "storage data truncated"))?;
        let count = usize::try_from(count).map_err(|_| perr(path, "negative storage size"))?;
        *pos += 8;
        let end = count
            .checked_mul(ty.size())
            .and_then(|len| pos.checked_add(len))
            .filter(|&end| end <= b.len())
            .ok_or_else(|| {
                perr(
                    path,
                    format!(
                        "storage `{k}` truncated: {count} {} values announced",
                        ty.torch_name()
                    ),
                )
            })?;
        let bytes = &b[*pos..end];
        *pos = end;
        if k == key {
            if count != numel {
                return Err(perr(
                    path,
                    format!("storage `{k}` has {count} values, {numel} announced"),
                ));
            }
            found = Some(decode_le(ty, bytes));
        }
    }
    found.ok_or_else(|| perr(path, format!("storage `{key}` not present")))
}

/// (type code like "f4", byte order char) of a `numpy.dtype(...)` value.
fn numpy_dtype(v: &Value, path: &Path) -> Result<(String, char), BasisError> {
    if v.callee() != Some(("numpy", "dtype")) {
        return Err(perr(path, "array dtype is not a numpy.dtype"));
    }
    let (args, state) = call_parts(v).ok_or_else(|| perr(path, "malformed dtype"))?;
    let Some(Value::Str(code)) = args.first() else {
        return Err(perr(path, "dtype without a type code"));
    };
    let order = match state.and_then(|s| s.as_seq()).and_then(|s| s.get(1)) {
        Some(Value::Str(o)) => o.chars().next().unwrap_or('|'),
        _ => '=',
    };
    Ok((code.clone(), order))
}

/// A bytes value as a pickle holds it: `bytes` (protocol 3 and later), or,
/// at protocols 0–2, which have no bytes type, the call
/// `_codecs.encode(str, 'latin1')` whose characters are the bytes.
fn pickled_bytes<'v>(v: &'v Value<'_>, path: &Path) -> Result<Cow<'v, [u8]>, BasisError> {
    match v {
        Value::Bytes(b) => Ok(Cow::Borrowed(b)),
        Value::Call { .. } if v.callee() == Some(("_codecs", "encode")) => match call_parts(v) {
            Some(([Value::Str(s), Value::Str(enc)], _)) if enc == "latin1" || enc == "latin-1" => s
                .chars()
                .map(|c| u8::try_from(c as u32))
                .collect::<Result<_, _>>()
                .map(Cow::Owned)
                .map_err(|_| perr(path, "latin1 data holds a character above U+00FF")),
            _ => Err(perr(path, "unexpected _codecs.encode arguments")),
        },
        _ => Err(perr(path, "data is not bytes")),
    }
}

fn numpy_array(top: &Value, path: &Path) -> Result<Imported, BasisError> {
    let (args, state) = call_parts(top).ok_or_else(|| perr(path, "malformed array"))?;
    let (shape, dtype, fortran, raw) = if top.callee().map(|c| c.1) == Some("_frombuffer") {
        let [buf, dtype, shape, order] = args else {
            return Err(perr(
                path,
                "_frombuffer needs (buffer, dtype, shape, order)",
            ));
        };
        let fortran = matches!(order, Value::Str(o) if o == "F");
        (shape, dtype, fortran, buf)
    } else {
        if args.first().and_then(|a| a.callee()) != Some(("numpy", "ndarray")) {
            return Err(perr(
                path,
                "_reconstruct of something other than numpy.ndarray",
            ));
        }
        let st = state
            .and_then(|s| s.as_seq())
            .ok_or_else(|| perr(path, "ndarray without its state (BUILD)"))?;
        let [_, shape, dtype, fortran, raw] = st else {
            return Err(perr(
                path,
                "ndarray state is not (version, shape, dtype, fortran, data)",
            ));
        };
        let fortran = matches!(fortran, Value::Bool(true) | Value::Int(1));
        (shape, dtype, fortran, raw)
    };
    let [n, d] = dims2(shape, "array shape", path)?;
    if n < 0 || d < 0 {
        return Err(perr(path, "negative array shape"));
    }
    let (n, d) = (n as usize, d as usize);
    let (code, order) = numpy_dtype(dtype, path)?;
    let big = order == '>';
    let elem = match code.as_str() {
        "f2" => Elem::F16,
        "f4" => Elem::F32,
        "f8" => Elem::F64,
        other => {
            return Err(perr(
                path,
                format!("array dtype {other} not supported (f2, f4 or f8)"),
            ))
        }
    };
    let size = elem.size();
    let bytes = pickled_bytes(raw, path)?;
    let need = (n as u128) * (d as u128) * size as u128;
    if bytes.len() as u128 != need {
        return Err(perr(
            path,
            format!(
                "array {n}×{d} of {code} needs {need} bytes, found {}",
                bytes.len()
            ),
        ));
    }
    let vals: Vec<f32> = bytes
        .chunks_exact(size)
        .map(|c| elem.decode(c, big) as f32)
        .collect();
    let data = if fortran {
        let mut t = vec![0.0f32; n * d];
        for i in 0..n {
            for k in 0..d {
                t[i * d + k] = vals[k * n + i];
            }
        }
        t
    } else {
        vals
    };
    Ok(Imported {
        basis: Basis { n, d, data },
        form: PickleForm::Numpy {
            dtype: format!("{order}{code}"),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A zip-format torch.save is named, with the way to a file ebv does
    /// read (not advice to re-save in another form); a legacy file cut
    /// after its magic number is an error, not a panic.
    #[test]
    fn reads_numpy_pickles_of_protocols_0_and_1() {
        // Made with NumPy 2.4 (whose module is `numpy._core`):
        //   a = np.arange(6, dtype='<f4').reshape(2, 3) / 7
        //   pickle.dumps(a, protocol=0), pickle.dumps(a, protocol=1)
        // Protocol 0 writes its strings as raw-unicode-escape text (`\\u0000`
        // for a zero byte), its integers and memo keys as decimal lines;
        // protocol 1 its booleans as `I01`.
        let p0: &[u8] = b"cnumpy._core.multiarray\n_reconstruct\np0\n(cnumpy\nndarray\np1\n(I0\ntp2\nc_codecs\nencode\np3\n(Vb\np4\nVlatin1\np5\ntp6\nRp7\ntp8\nRp9\n(I1\n(I2\nI3\ntp10\ncnumpy\ndtype\np11\n(Vf4\np12\nI00\nI01\ntp13\nRp14\n(I3\nV<\np15\nNNNI-1\nI-1\nI0\ntp16\nbI00\ng3\n(V\\u0000\\u0000\\u0000\\u0000%I\x12>%I\x92>\xb7m\xdb>%I\x12?n\xdb6?\np17\ng5\ntp18\nRp19\ntp20\nb.";
        let p1: &[u8] = b"cnumpy._core.multiarray\n_reconstruct\nq\x00(cnumpy\nndarray\nq\x01(K\x00tq\x02c_codecs\nencode\nq\x03(X\x01\x00\x00\x00bq\x04X\x06\x00\x00\x00latin1q\x05tq\x06Rq\x07tq\x08Rq\x09(K\x01(K\x02K\x03tq\ncnumpy\ndtype\nq\x0b(X\x02\x00\x00\x00f4q\x0cI00\nI01\ntq\x0dRq\x0e(K\x03X\x01\x00\x00\x00<q\x0fNNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tq\x10bI00\nh\x03(X\x1c\x00\x00\x00\x00\x00\x00\x00%I\x12>%I\xc2\x92>\xc2\xb7m\xc3\x9b>%I\x12?n\xc3\x9b6?q\x11h\x05tq\x12Rq\x13tq\x14b.";
        let want: Vec<f32> = (0..6).map(|i| i as f32 / 7.0).collect();
        for (k, bytes) in [p0, p1].into_iter().enumerate() {
            let m = import_bytes(bytes, Path::new("a.pkl")).unwrap();
            assert_eq!((m.basis.n, m.basis.d), (2, 3), "protocol {k}");
            assert_eq!(m.basis.data, want, "protocol {k}");
            assert_eq!(m.form.to_string(), "a NumPy <f4 array", "protocol {k}");
        }
    }

    #[test]
    fn zip_torch_saves_say_how_to_export() {
        let p = Path::new("t.pkl");
        let e = import_bytes(b"PK\x03\x04rest", p)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            e.contains("zip-format torch.save") && e.contains("np.save("),
            "{e}"
        );
        assert!(!e.contains("_use_new_zipfile_serialization"), "{e}");
        let mut cut = b"\x80\x02\x8a\x0a".to_vec();
        cut.extend_from_slice(&TORCH_MAGIC.to_le_bytes()[..10]);
        cut.push(b'.');
        assert!(import_bytes(&cut, p).is_err());
    }

    /// Element decoding against values known bit for bit: IEEE binary16
    /// 0x3C00 = 1, 0xC000 = −2, 0x7BFF = 65504 (largest), 0x0001 = 2⁻²⁴
    /// (smallest subnormal), 0x0400 = 2⁻¹⁴ (smallest normal), 0x7C00 = ∞;
    /// bfloat16 is the top half of an f32; float64 rounds to nearest.
    #[test]
    fn decodes_each_storage_type() {
        let le = |v: &[u16]| -> Vec<u8> { v.iter().flat_map(|x| x.to_le_bytes()).collect() };
        let got = decode_le(
            Elem::F16,
            &le(&[0x3C00, 0xC000, 0x7BFF, 0x0001, 0x0400, 0x7C00, 0x8000]),
        );
        assert_eq!(
            got,
            [
                1.0,
                -2.0,
                65504.0,
                2f32.powi(-24),
                2f32.powi(-14),
                f32::INFINITY,
                -0.0
            ]
        );
        assert!(got[6].is_sign_negative());
        assert!(decode_le(Elem::F16, &le(&[0x7E00]))[0].is_nan());
        assert_eq!(
            decode_le(Elem::BF16, &le(&[0x3F80, 0xC0A0, 0x3E20])),
            [1.0, -5.0, 0.15625]
        );
        let d: Vec<u8> = [0.1f64, 1.0 + 2f64.powi(-30), -3.5]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        assert_eq!(decode_le(Elem::F64, &d), [0.1f32, 1.0, -3.5]);
        assert_eq!(decode_le(Elem::F32, &0.3f32.to_le_bytes()), [0.3f32]);
    }

    #[test]
    fn gathers_strided_views_and_refuses_hostile_headers() {
        let v: Vec<f32> = (0..12).map(|i| i as f32).collect();
        // Row-major 3×4, its transpose as a view (4×3, stride (1, 4)), and an offset 2×2.
        assert_eq!(gather_strided(&v, 0, [3, 4], [4, 1]).unwrap(), v);
        let t = gather_strided(&v, 0, [4, 3], [1, 4]).unwrap();
        assert_eq!(&t[..4], &[0.0, 4.0, 8.0, 1.0]);
        assert_eq!(
            gather_strided(&v, 5, [2, 2], [4, 1]).unwrap(),
            [5.0, 6.0, 9.0, 10.0]
        );
        assert!(gather_strided(&v, 0, [0, 7], [7, 1]).unwrap().is_empty());
        let err = |off, size, stride| gather_strided(&v, off, size, stride).unwrap_err();
        // Sizes whose product wraps in 64 bits; one that wraps to 0.
        assert!(err(0, [1 << 31, 1 << 31], [0, 0]).contains("zero stride"));
        assert!(err(0, [1 << 31, 1 << 31], [1 << 31, 1]).contains("more elements"));
        assert!(err(0, [1 << 40, 1 << 24], [1 << 24, 1]).contains("more elements"));
        // A stride whose reach would wrap, and a plain overrun by one.
        let e = err(0, [2, 2], [1 << 62, 1]);
        assert!(e.contains("reaches element 4611686018427387906"), "{e}");
        assert!(err(1, [3, 4], [4, 1]).contains("reaches element 13"));
        assert!(err(0, [3, 4], [4, 0]).contains("zero stride"));
        assert!(err(-1, [1, 1], [1, 1]).contains("negative"));
        assert!(err(i64::MAX, [1, 1], [1, 1]).contains("reaches element"));
    }
}
