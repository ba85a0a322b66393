//! A training batch: f32 NCHW images in one preallocated buffer, labels,
//! and the batch's mixing (soft targets without a dense B×C matrix).
//!
//! Invariants:
//! - `images` holds exactly `len · 3 · size · size` values, image i at
//!   `[i·3·size², (i+1)·3·size²)`, channel planes R, G, B;
//! - the soft target of sample i is `λ·onehot(labels[i]) +
//!   (1−λ)·onehot(mix_labels[i])` with λ = `mix.lambda()`; unmixed
//!   batches have λ = 1 and `mix_labels == labels`. At 100k classes a
//!   dense target is 100 MB per 256 samples, so it is built only on request
//!   ([`Batch::soft_targets`]);
//! - [`Batch::into_tensor`] hands the buffer to candle with
//!   `Tensor::from_vec` (no copy); a batch dropped without that returns its
//!   buffer to the loader's pool, so steady-state batches reuse memory
//!   whose pages are already faulted in.

use std::sync::{Arc, Mutex};

use candle_core::{Device, Tensor};

use super::augment::BatchMix;
use super::loader::SampleError;
use super::sampler::SamplerState;

/// Reused batch buffers. Bounded so an early-stopping consumer cannot make
/// it grow without limit.
#[derive(Debug, Default)]
pub(crate) struct BufferPool {
    free: Mutex<Vec<Vec<f32>>>,
    cap: usize,
}

impl BufferPool {
    pub(crate) fn new(cap: usize) -> BufferPool {
        BufferPool {
            free: Mutex::new(Vec::new()),
            cap,
        }
    }

    /// A buffer of exactly `len` values (contents unspecified: every slot
    /// is overwritten by the worker).
    pub(crate) fn take(&self, len: usize) -> Vec<f32> {
        let reused = self.free.lock().ok().and_then(|mut f| f.pop());
        match reused {
            Some(mut v) => {
                v.resize(len, 0.0);
                v
            }
            None => vec![0.0; len],
        }
    }

    pub(crate) fn give(&self, v: Vec<f32>) {
        if v.capacity() == 0 {
            return;
        }
        if let Ok(mut f) = self.free.lock() {
            if f.len() < self.cap {
                f.push(v);
            }
        }
    }
}

/// One batch of one rank.
#[derive(Debug)]
pub struct Batch {
    /// Epoch and index of this batch within the rank's epoch.
    pub epoch: u64,
    pub index: u64,
    /// Output side.
    pub size: u32,
    pub labels: Vec<u32>,
    /// Each sample's mixing partner's label (sample i−1, 0 ↔ last).
    pub mix_labels: Vec<u32>,
    pub mix: BatchMix,
    /// Global rows (split index) that filled each slot, after replacement.
    pub rows: Vec<u64>,
    /// Every row that failed to load, in slot order (a sample whose
    /// replacements failed too appears once per row tried).
    pub replaced: Vec<SampleError>,
    /// Samples that took another row's place.
    pub substituted: u64,
    /// Samples left out (`OnError::Skip`): the batch is that much shorter.
    pub skipped: u64,
    /// The sampler state after this batch: resuming from it yields the
    /// batches that follow.
    pub state_after: SamplerState,
    pub(crate) images: Vec<f32>,
    pub(crate) pool: Option<Arc<BufferPool>>,
}

impl Batch {
    /// Samples in the batch.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// (N, C, H, W).
    pub fn shape(&self) -> (usize, usize, usize, usize) {
        (self.len(), 3, self.size as usize, self.size as usize)
    }

    /// The images, f32 NCHW.
    pub fn images(&self) -> &[f32] {
        &self.images
    }

    /// Image `i` (3·size² values, CHW).
    pub fn image(&self, i: usize) -> &[f32] {
        let len = 3 * self.size as usize * self.size as usize;
        &self.images[i * len..(i + 1) * len]
    }

    /// The images as a CPU tensor (N, 3, size, size), without copying.
    pub fn into_tensor(mut self) -> candle_core::Result<Tensor> {
        let shape = self.shape();
        let images = std::mem::take(&mut self.images);
        Tensor::from_vec(images, shape, &Device::Cpu)
    }

    /// The images copied onto `device` (one host-to-device copy for a
    /// GPU); the host buffer goes back to the pool when the batch drops.
    pub fn to_tensor(&self, device: &Device) -> candle_core::Result<Tensor> {
        Tensor::from_slice(&self.images, self.shape(), device)
    }

    /// Labels as a u32 tensor (N).
    pub fn labels_tensor(&self, device: &Device) -> candle_core::Result<Tensor> {
        Tensor::from_slice(&self.labels, self.labels.len(), device)
    }

    /// (own label, its weight, partner label, its weight) per sample; the
    /// weights sum to 1.
    pub fn targets(&self) -> impl Iterator<Item = (u32, f32, u32, f32)> + '_ {
        let lam = self.mix.lambda();
        self.labels
            .iter()
            .zip(&self.mix_labels)
            .map(move |(&a, &b)| (a, lam, b, 1.0 - lam))
    }

    /// Dense soft targets (N, num_classes), f32. Large at many classes;
    /// prefer [`Batch::targets`].
    pub fn soft_targets(&self, num_classes: usize, device: &Device) -> candle_core::Result<Tensor> {
        let mut t = vec![0f32; self.len() * num_classes];
        for (i, (a, wa, b, wb)) in self.targets().enumerate() {
            let row = &mut t[i * num_classes..(i + 1) * num_classes];
            if let Some(x) = row.get_mut(a as usize) {
                *x += wa;
            }
            if let Some(x) = row.get_mut(b as usize) {
                *x += wb;
            }
        }
        Tensor::from_vec(t, (self.len(), num_classes), device)
    }
}

impl Drop for Batch {
    fn drop(&mut self) {
        if let Some(pool) = self.pool.take() {
            pool.give(std::mem::take(&mut self.images));
        }
    }
}
