//! One batch ahead on the device: a helper thread takes the loader's next batch and makes its tensors (for a GPU,
//! the one host-to-device copy of the step) while the trainer runs the current step (or evaluation scores the
//! current batch).
//!
//! Why a thread: candle copies a host slice to the GPU with a driver call that stages pageable memory on the
//! calling thread (a 256 × 224² f32 batch is 154 MB). Made on the trainer's thread, that staging sits between two
//! steps with the GPU idle; made here, it overlaps the current step. The copy itself is queued on candle's stream
//! like every kernel, so it is ordered after the work already queued and before the next step's kernels, without
//! any synchronisation of ours. On the CPU the batch buffer becomes the tensor without a copy, so the thread only
//! moves it.
//!
//! Invariants:
//! - batches come out in the loader's order, each with its `state_after`;
//! - at most two batches are alive beyond the loader's own queue (one in the channel, one being made);
//! - dropping the [`Prefetch`] early stops the thread and, with it, the loader's epoch; [`Prefetch::finish`] joins
//!   it and returns the epoch iterator for its final state and summary.

use std::sync::mpsc::{sync_channel, Receiver};
use std::thread::JoinHandle;

use candle_core::{Device, Tensor};

use super::TrainError;
use crate::data::{Batch, EpochIter, SamplerState};

/// A batch with its tensors made.
pub(crate) struct Ready {
    pub len: usize,
    pub after: SamplerState,
    pub x: Tensor,
    pub labels: Tensor,
    pub mix_labels: Tensor,
    pub lambda: f64,
}

/// The tensors of `batch` on `device`: images, labels, mixing partners' labels, and λ.
pub(crate) fn make(batch: Batch, device: &Device) -> Result<Ready, TrainError> {
    let len = batch.len();
    let after = batch.state_after;
    let labels = batch.labels_tensor(device)?;
    let mix_labels = Tensor::from_slice(&batch.mix_labels, batch.mix_labels.len(), device)?;
    let lambda = f64::from(batch.mix.lambda());
    let x = if device.is_cpu() {
        batch.into_tensor()?
    } else {
        // The host buffer goes back to the loader's pool when `batch` drops.
        batch.to_tensor(device)?
    };
    Ok(Ready {
        len,
        after,
        x,
        labels,
        mix_labels,
        lambda,
    })
}

pub(crate) struct Prefetch {
    rx: Option<Receiver<Result<Ready, TrainError>>>,
    handle: Option<JoinHandle<EpochIter>>,
}

impl Prefetch {
    pub(crate) fn start(mut iter: EpochIter, device: &Device) -> Prefetch {
        let (tx, rx) = sync_channel(1);
        let device = device.clone();
        let handle = std::thread::Builder::new()
            .name("ebv-prefetch".into())
            .spawn(move || {
                for batch in &mut iter {
                    // Evaluation leaves unreadable images out: a batch of
                    // only those has nothing to score.
                    if batch.as_ref().is_ok_and(|b| b.is_empty()) {
                        continue;
                    }
                    let ready = batch
                        .map_err(TrainError::from)
                        .and_then(|b| make(b, &device));
                    let failed = ready.is_err();
                    if tx.send(ready).is_err() || failed {
                        break;
                    }
                }
                iter
            });
        match handle {
            Ok(h) => Prefetch {
                rx: Some(rx),
                handle: Some(h),
            },
            // No thread: report it on the first `next`.
            Err(e) => {
                let (tx, rx) = sync_channel(1);
                let _ = tx.send(Err(TrainError::Other(format!(
                    "cannot start the prefetch thread: {e}"
                ))));
                Prefetch {
                    rx: Some(rx),
                    handle: None,
                }
            }
        }
    }

    /// Stop (if still running) and hand back the epoch iterator.
    pub(crate) fn finish(mut self) -> Result<EpochIter, TrainError> {
        self.rx = None;
        match self.handle.take().map(JoinHandle::join) {
            Some(Ok(iter)) => Ok(iter),
            Some(Err(_)) => Err(TrainError::Other("the prefetch thread panicked".into())),
            None => Err(TrainError::Other(
                "the prefetch thread never started".into(),
            )),
        }
    }
}

impl Iterator for Prefetch {
    type Item = Result<Ready, TrainError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.rx.as_ref()?.recv().ok()
    }
}

impl Drop for Prefetch {
    fn drop(&mut self) {
        // Closing the channel makes the thread's next send fail; joining then returns at once.
        self.rx = None;
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}
