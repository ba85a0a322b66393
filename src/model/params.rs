//! The model's named tensors: trainable parameters and BatchNorm buffers,
//! in creation order, under torchvision's state-dict names.
//!
//! Invariants:
//! - names are unique and follow torchvision's `state_dict()` keys
//!   (`layer1.0.conv1.weight`, `bn1.running_mean`, `fc.bias`, …), so a
//!   saved file loads into torchvision as it is and back;
//! - a [`ParamKind::Buffer`] never receives a gradient and is never handed
//!   to an optimiser; it is changed only by train-mode forwards;
//! - loading checks every name and shape before changing anything, so a
//!   mismatched file leaves the model untouched.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal, Uniform};

use super::ModelError;
use crate::shard::ShardError;

/// What a named tensor is, for the optimiser.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamKind {
    /// Convolution and linear weights: trained, weight decay applies.
    Weight,
    /// BatchNorm affine parameters and biases: trained; weight decay applies
    /// unless the recipe excludes them.
    NoDecay,
    /// Running statistics and counters: not trained.
    Buffer,
}

/// One named tensor.
#[derive(Debug, Clone)]
pub struct Entry {
    pub name: String,
    pub var: Var,
    pub kind: ParamKind,
}

/// All named tensors of a model, plus the seeded generator used to
/// initialise them.
pub struct ParamStore {
    entries: Vec<Entry>,
    index: HashMap<String, usize>,
    device: Device,
    dtype: DType,
    rng: ChaCha8Rng,
}

impl ParamStore {
    /// An empty store whose initialisation draws from `seed`.
    pub fn new(device: &Device, dtype: DType, seed: u64) -> ParamStore {
        ParamStore {
            entries: Vec::new(),
            index: HashMap::new(),
            device: device.clone(),
            dtype,
            rng: ChaCha8Rng::seed_from_u64(seed),
        }
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    fn push(&mut self, name: &str, t: Tensor, kind: ParamKind) -> Result<Var, ModelError> {
        if self.index.contains_key(name) {
            return Err(ModelError::Build(format!("duplicate tensor name {name}")));
        }
        let var = Var::from_tensor(&t)?;
        self.index.insert(name.to_string(), self.entries.len());
        self.entries.push(Entry {
            name: name.to_string(),
            var: var.clone(),
            kind,
        });
        Ok(var)
    }

    fn tensor_of(&self, values: Vec<f32>, shape: &[usize]) -> Result<Tensor, ModelError> {
        Ok(Tensor::from_vec(values, shape, &self.device)?.to_dtype(self.dtype)?)
    }

    /// Normal(0, std²) values.
    pub fn normal(
        &mut self,
        name: &str,
        shape: &[usize],
        std: f64,
        kind: ParamKind,
    ) -> Result<Var, ModelError> {
        let n: usize = shape.iter().product();
        let dist = Normal::new(0.0f64, std)
            .map_err(|e| ModelError::Build(format!("{name}: bad init std {std}: {e}")))?;
        let v: Vec<f32> = (0..n).map(|_| dist.sample(&mut self.rng) as f32).collect();
        let t = self.tensor_of(v, shape)?;
        self.push(name, t, kind)
    }

    /// Uniform(−bound, bound) values.
    pub fn uniform(
        &mut self,
        name: &str,
        shape: &[usize],
        bound: f64,
        kind: ParamKind,
    ) -> Result<Var, ModelError> {
        let n: usize = shape.iter().product();
        let dist = Uniform::new_inclusive(-bound, bound)
            .map_err(|e| ModelError::Build(format!("{name}: bad init bound {bound}: {e}")))?;
        let v: Vec<f32> = (0..n).map(|_| dist.sample(&mut self.rng) as f32).collect();
        let t = self.tensor_of(v, shape)?;
        self.push(name, t, kind)
    }

    /// A constant tensor.
    pub fn constant(
        &mut self,
        name: &str,
        shape: &[usize],
        value: f64,
        kind: ParamKind,
    ) -> Result<Var, ModelError> {
        let t = Tensor::full(value, shape, &self.device)?.to_dtype(self.dtype)?;
        self.push(name, t, kind)
    }

    /// An i64 counter (torchvision's `num_batches_tracked`).
    pub fn counter(&mut self, name: &str) -> Result<Var, ModelError> {
        let t = Tensor::zeros((), DType::I64, &self.device)?;
        self.push(name, t, ParamKind::Buffer)
    }

    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    pub fn get(&self, name: &str) -> Option<&Entry> {
        self.index.get(name).map(|&i| &self.entries[i])
    }

    /// Trainable entries (everything but buffers).
    pub fn trainable(&self) -> impl Iterator<Item = &Entry> + '_ {
        self.entries.iter().filter(|e| e.kind != ParamKind::Buffer)
    }

    /// Number of trainable scalars.
    pub fn num_parameters(&self) -> usize {
        self.trainable().map(|e| e.var.elem_count()).sum()
    }

    /// The first floating-point tensor (parameter or buffer) holding a NaN
    /// or an infinity, by name. One reduction per tensor and a single
    /// read-back, so it is cheap enough to run before every checkpoint.
    pub fn first_non_finite(&self) -> Result<Option<String>, ModelError> {
        let floats: Vec<&Entry> = self
            .entries
            .iter()
            .filter(|e| e.var.dtype().is_float())
            .collect();
        if floats.is_empty() {
            return Ok(None);
        }
        // A sum is NaN or infinite whenever one element is; it can also
        // overflow on huge finite values, so a suspect tensor is looked at
        // element by element before it is named.
        let sums = floats
            .iter()
            .map(|e| {
                e.var
                    .as_tensor()
                    .detach()
                    .to_dtype(DType::F32)?
                    .sum_all()?
                    .reshape(1)
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        let sums = Tensor::cat(&sums, 0)?.to_vec1::<f32>()?;
        for (e, s) in floats.iter().zip(sums) {
            if s.is_finite() {
                continue;
            }
            let values = e
                .var
                .as_tensor()
                .detach()
                .to_dtype(DType::F32)?
                .flatten_all()?
                .to_vec1::<f32>()?;
            if values.iter().any(|v| !v.is_finite()) {
                return Ok(Some(e.name.clone()));
            }
        }
        Ok(None)
    }

    /// Name → tensor, for saving.
    pub fn tensors(&self) -> Vec<(String, Tensor)> {
        self.entries
            .iter()
            .map(|e| (e.name.clone(), e.var.as_tensor().detach()))
            .collect()
    }

    /// Replace every tensor with the one of the same name in `tensors`.
    /// Extra names are an error unless `allow_extra`; missing names are an
    /// error except torchvision's `num_batches_tracked` counters. Nothing
    /// changes unless every name and shape matches.
    pub fn load(
        &self,
        tensors: &HashMap<String, Tensor>,
        source: &Path,
        allow_extra: bool,
    ) -> Result<(), ModelError> {
        let mut plan = Vec::with_capacity(self.entries.len());
        let mut missing = Vec::new();
        for e in &self.entries {
            match tensors.get(&e.name) {
                Some(t) => {
                    if t.dims() != e.var.dims() {
                        return Err(ModelError::Checkpoint {
                            path: source.to_path_buf(),
                            detail: format!(
                                "tensor {} has shape {:?}, the model expects {:?}",
                                e.name,
                                t.dims(),
                                e.var.dims()
                            ),
                        });
                    }
                    plan.push((e, t));
                }
                None if e.name.ends_with("num_batches_tracked") => {}
                None => missing.push(e.name.clone()),
            }
        }
        if !missing.is_empty() {
            return Err(ModelError::Checkpoint {
                path: source.to_path_buf(),
                detail: format!(
                    "{} tensor(s) missing, first: {}",
                    missing.len(),
                    missing
                        .iter()
                        .take(5)
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            });
        }
        if !allow_extra {
            let mut extra: Vec<&String> = tensors
                .keys()
                .filter(|k| !self.index.contains_key(k.as_str()))
                .collect();
            extra.sort();
            if !extra.is_empty() {
                return Err(ModelError::Checkpoint {
                    path: source.to_path_buf(),
                    detail: format!(
                        "{} tensor(s) the model does not have, first: {}",
                        extra.len(),
                        extra
                            .iter()
                            .take(5)
                            .map(|s| s.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                });
            }
        }
        for (e, t) in plan {
            let t = t.to_dtype(e.var.dtype())?.to_device(e.var.device())?;
            e.var.set(&t)?;
        }
        Ok(())
    }

    /// Set every tensor whose name and shape match one in `tensors`; the
    /// others keep their values. Returns the names left unchanged.
    pub fn load_matching(&self, tensors: &TensorMap) -> Result<Vec<String>, ModelError> {
        let mut kept = Vec::new();
        for e in &self.entries {
            match tensors.get(&e.name) {
                Some(t) if t.dims() == e.var.dims() => {
                    e.var
                        .set(&t.to_dtype(e.var.dtype())?.to_device(e.var.device())?)?;
                }
                _ => kept.push(e.name.clone()),
            }
        }
        Ok(kept)
    }

    /// Write every tensor to a safetensors file (atomically) with
    /// `metadata`.
    pub fn save(&self, path: &Path, metadata: &BTreeMap<String, String>) -> Result<(), ModelError> {
        save_safetensors(path, &self.tensors(), metadata)
    }
}

/// Write named tensors and string metadata to `path` through a temp file
/// in the same folder and a rename.
pub fn save_safetensors(
    path: &Path,
    tensors: &[(String, Tensor)],
    metadata: &BTreeMap<String, String>,
) -> Result<(), ModelError> {
    use safetensors::tensor::{Dtype, TensorView};
    let mut bufs: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        let t = t.to_device(&Device::Cpu)?.contiguous()?;
        let (dtype, bytes): (Dtype, Vec<u8>) = match t.dtype() {
            DType::F32 => (Dtype::F32, le_bytes(&t, f32::to_le_bytes)?),
            DType::F64 => (Dtype::F64, le_bytes(&t, f64::to_le_bytes)?),
            DType::I64 => (Dtype::I64, le_bytes(&t, i64::to_le_bytes)?),
            DType::U32 => (Dtype::U32, le_bytes(&t, u32::to_le_bytes)?),
            _ => (
                Dtype::F32,
                le_bytes(&t.to_dtype(DType::F32)?, f32::to_le_bytes)?,
            ),
        };
        bufs.push((name.clone(), dtype, t.dims().to_vec(), bytes));
    }
    let mut views = Vec::with_capacity(bufs.len());
    for (name, dtype, shape, bytes) in &bufs {
        let view =
            TensorView::new(*dtype, shape.clone(), bytes).map_err(|e| ModelError::Checkpoint {
                path: path.to_path_buf(),
                detail: format!("tensor {name}: {e}"),
            })?;
        views.push((name.as_str(), view));
    }
    let meta: HashMap<String, String> = metadata.clone().into_iter().collect();
    let data = safetensors::serialize(views, Some(meta))
        .map_err(|e| e.to_string())
        .and_then(sorted_header)
        .map_err(|e| ModelError::Checkpoint {
            path: path.to_path_buf(),
            detail: e,
        })?;
    // The shard error names the file already: not again around it.
    crate::shard::write_replace(path, &data, true).map_err(|e| match e {
        ShardError::Io { path, cause } => ModelError::Io { path, cause },
        ShardError::Invalid { path, detail } => ModelError::Checkpoint { path, detail },
        ShardError::Parquet { path, cause } => ModelError::Checkpoint {
            path,
            detail: cause.to_string(),
        },
    })?;
    Ok(())
}

/// `data` (a serialised safetensors file) with its JSON header written
/// again with sorted keys. The safetensors crate writes `__metadata__` from
/// a HashMap, in an order that changes from process to process, so two
/// identical runs would write checkpoints that differ byte for byte.
/// (serde_json's map is a BTreeMap; the header stays padded with spaces to a
/// multiple of 8 bytes, and the tensors' offsets are relative to its end.)
fn sorted_header(data: Vec<u8>) -> Result<Vec<u8>, String> {
    let len = data
        .get(..8)
        .map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])) as usize)
        .ok_or("serialised safetensors shorter than its header length")?;
    let body = data
        .get(8..)
        .filter(|b| b.len() >= len)
        .ok_or("serialised safetensors shorter than its header")?;
    let header: serde_json::Value =
        serde_json::from_slice(&body[..len]).map_err(|e| e.to_string())?;
    let mut json = serde_json::to_vec(&header).map_err(|e| e.to_string())?;
    json.resize(json.len().next_multiple_of(8), b' ');
    let mut out = Vec::with_capacity(8 + json.len() + body.len() - len);
    out.extend_from_slice(&(json.len() as u64).to_le_bytes());
    out.extend_from_slice(&json);
    out.extend_from_slice(&body[len..]);
    Ok(out)
}

/// The elements of `t` as little-endian bytes (safetensors' layout).
fn le_bytes<T: candle_core::WithDType, const N: usize>(
    t: &Tensor,
    to_le: fn(T) -> [u8; N],
) -> candle_core::Result<Vec<u8>> {
    Ok(t.flatten_all()?
        .to_vec1::<T>()?
        .into_iter()
        .flat_map(to_le)
        .collect())
}

/// Named tensors as read from a file.
pub type TensorMap = HashMap<String, Tensor>;

/// Read every tensor of a safetensors file (CPU) and its metadata.
pub fn load_safetensors(path: &Path) -> Result<(TensorMap, BTreeMap<String, String>), ModelError> {
    let bytes = std::fs::read(path).map_err(|e| ModelError::Io {
        path: path.to_path_buf(),
        cause: e,
    })?;
    let bad = |detail: String| ModelError::Checkpoint {
        path: path.to_path_buf(),
        detail,
    };
    let (_, header) =
        safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| bad(e.to_string()))?;
    let metadata: BTreeMap<String, String> = header
        .metadata()
        .clone()
        .map(|m| m.into_iter().collect())
        .unwrap_or_default();
    let tensors = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu)
        .map_err(|e| bad(e.to_string()))?;
    Ok((tensors, metadata))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A write error names the file once (it used to say it twice).
    #[test]
    fn a_failed_save_names_the_file_once() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("absent").join("model.safetensors");
        let t = Tensor::zeros(2, DType::F32, &Device::Cpu).unwrap();
        let e = save_safetensors(&p, &[("w".into(), t)], &BTreeMap::new())
            .unwrap_err()
            .to_string();
        assert_eq!(e.matches("model.safetensors").count(), 1, "{e}");
        assert!(e.contains("No such file"), "{e}");
    }

    /// A NaN or an infinity anywhere (weight or running statistic) is found
    /// and named; huge finite values whose sum overflows are not.
    #[test]
    fn first_non_finite_names_the_tensor() {
        let mut s = ParamStore::new(&Device::Cpu, DType::F32, 0);
        s.normal("conv.weight", &[4, 3], 1.0, ParamKind::Weight)
            .unwrap();
        s.constant("bn.running_var", &[3], 1.0, ParamKind::Buffer)
            .unwrap();
        s.counter("bn.num_batches_tracked").unwrap();
        let big = s
            .constant("fc.weight", &[4], 3.0e38, ParamKind::Weight)
            .unwrap();
        assert_eq!(s.first_non_finite().unwrap(), None);
        big.set(&Tensor::new(&[1.0f32, f32::INFINITY, 0.0, 0.0], &Device::Cpu).unwrap())
            .unwrap();
        assert_eq!(s.first_non_finite().unwrap().as_deref(), Some("fc.weight"));
        let var = s.get("bn.running_var").unwrap().var.clone();
        var.set(&Tensor::new(&[1.0f32, f32::NAN, 1.0], &Device::Cpu).unwrap())
            .unwrap();
        assert_eq!(
            s.first_non_finite().unwrap().as_deref(),
            Some("bn.running_var")
        );
    }

    /// The same tensors and metadata give the same bytes every time (the
    /// metadata passes through a HashMap whose order changes per instance),
    /// and the file reads back to them.
    #[test]
    fn saved_files_are_byte_identical_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = ParamStore::new(&Device::Cpu, DType::F32, 7);
        s.normal("b.weight", &[3, 2], 1.0, ParamKind::Weight)
            .unwrap();
        s.normal("a.weight", &[5], 1.0, ParamKind::Weight).unwrap();
        s.counter("a.num_batches_tracked").unwrap();
        let meta: BTreeMap<String, String> = (0..12)
            .map(|i| (format!("key.{i}"), format!("value {i}")))
            .collect();
        let files: Vec<Vec<u8>> = (0..4)
            .map(|i| {
                let p = dir.path().join(format!("m{i}.safetensors"));
                s.save(&p, &meta).unwrap();
                std::fs::read(&p).unwrap()
            })
            .collect();
        assert!(files.iter().all(|f| *f == files[0]));
        let st = safetensors::SafeTensors::deserialize(&files[0]).unwrap();
        assert_eq!(st.len(), 3);
        let (_, m) = safetensors::SafeTensors::read_metadata(&files[0]).unwrap();
        let got: BTreeMap<String, String> = m.metadata().clone().unwrap().into_iter().collect();
        assert_eq!(got, meta);
        let w = st.tensor("b.weight").unwrap();
        let want: Vec<u8> = s
            .get("b.weight")
            .unwrap()
            .var
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        assert_eq!(w.data(), &want[..]);
    }
}
