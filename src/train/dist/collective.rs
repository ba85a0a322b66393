//! The one collective data-parallel training needs: an element-wise sum
//! over ranks. NCCL provides it on GPUs ([`super::NcclGroup`]); [`Solo`] is
//! the single-process case; [`ThreadGroup`] runs ranks as threads of one
//! process (tests, and CPU checks of the bucketing) and sums in rank order,
//! so every rank gets bit-identical results.

use std::sync::{Arc, Barrier, Mutex};

use candle_core::{DType, Result, Tensor};

/// A group of ranks that can sum tensors.
pub trait Collective {
    fn rank(&self) -> usize;
    fn size(&self) -> usize;
    /// Sum of `t` over all ranks (same shape and dtype on every rank),
    /// returned on every rank. Every rank must call it, in the same order.
    fn all_reduce_sum(&self, t: &Tensor) -> Result<Tensor>;

    /// Whether `flag` is set on any rank (e.g. a stop request), so that all
    /// ranks leave the loop at the same step and none waits forever.
    fn any(&self, flag: bool, device: &candle_core::Device) -> Result<bool> {
        if self.size() == 1 {
            return Ok(flag);
        }
        let t = Tensor::new(&[f32::from(u8::from(flag))], device)?;
        Ok(self.all_reduce_sum(&t)?.to_vec1::<f32>()?[0] > 0.0)
    }
}

/// One process, no peers.
#[derive(Debug, Clone, Copy, Default)]
pub struct Solo;

impl Collective for Solo {
    fn rank(&self) -> usize {
        0
    }
    fn size(&self) -> usize {
        1
    }
    fn all_reduce_sum(&self, t: &Tensor) -> Result<Tensor> {
        Ok(t.clone())
    }
}

struct Shared {
    slots: Mutex<Vec<Vec<f32>>>,
    barrier: Barrier,
}

/// One member of an in-process group; move each into its own thread.
pub struct ThreadGroup {
    rank: usize,
    size: usize,
    shared: Arc<Shared>,
}

impl ThreadGroup {
    /// `size` members, ranks 0..size.
    pub fn new(size: usize) -> Vec<ThreadGroup> {
        let size = size.max(1);
        let shared = Arc::new(Shared {
            slots: Mutex::new(vec![Vec::new(); size]),
            barrier: Barrier::new(size),
        });
        (0..size)
            .map(|rank| ThreadGroup {
                rank,
                size,
                shared: Arc::clone(&shared),
            })
            .collect()
    }
}

impl Collective for ThreadGroup {
    fn rank(&self) -> usize {
        self.rank
    }
    fn size(&self) -> usize {
        self.size
    }
    fn all_reduce_sum(&self, t: &Tensor) -> Result<Tensor> {
        let mine = t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
        let n = mine.len();
        {
            let mut slots = self.shared.slots.lock().map_err(poisoned)?;
            slots[self.rank] = mine;
        }
        self.shared.barrier.wait();
        let sum = {
            let slots = self.shared.slots.lock().map_err(poisoned)?;
            if let Some(bad) = slots.iter().position(|s| s.len() != n) {
                return Err(candle_core::Error::Msg(format!(
                    "all-reduce: rank {bad} sent {} values, rank {} sent {n}",
                    slots[bad].len(),
                    self.rank
                )));
            }
            let mut sum = vec![0f32; n];
            for s in slots.iter() {
                for (a, b) in sum.iter_mut().zip(s) {
                    *a += b;
                }
            }
            sum
        };
        // Nobody may overwrite a slot before everyone has read them all.
        self.shared.barrier.wait();
        Tensor::from_vec(sum, t.shape(), t.device())?.to_dtype(t.dtype())
    }
}

fn poisoned<T>(_: std::sync::PoisonError<T>) -> candle_core::Error {
    candle_core::Error::Msg("all-reduce: a rank panicked".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn thread_group_sums_in_rank_order_on_every_rank() {
        let results: Vec<Vec<f32>> = std::thread::scope(|s| {
            let handles: Vec<_> = ThreadGroup::new(3)
                .into_iter()
                .map(|g| {
                    s.spawn(move || {
                        let r = g.rank() as f32;
                        let t = Tensor::new(&[[r, 1.0], [10.0 * r, 0.5]], &Device::Cpu).unwrap();
                        let mut out = Vec::new();
                        // Two rounds: the second must not see the first's slots.
                        for k in 0..2 {
                            let y = g.all_reduce_sum(&(&t * (k + 1) as f64).unwrap()).unwrap();
                            assert_eq!(y.dims(), &[2, 2]);
                            out.extend(y.flatten_all().unwrap().to_vec1::<f32>().unwrap());
                        }
                        out.push(f32::from(u8::from(
                            g.any(g.rank() == 2, &Device::Cpu).unwrap(),
                        )));
                        out.push(f32::from(u8::from(g.any(false, &Device::Cpu).unwrap())));
                        out
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        // Ranks 0, 1, 2: sums 0+1+2 = 3, 3 × 1, 30, 3 × 0.5; doubled in round two.
        let want = vec![3.0, 3.0, 30.0, 1.5, 6.0, 6.0, 60.0, 3.0, 1.0, 0.0];
        for r in results {
            assert_eq!(r, want);
        }
    }

    #[test]
    fn solo_is_the_identity() {
        let t = Tensor::new(&[1f32, 2.0], &Device::Cpu).unwrap();
        assert_eq!(
            Solo.all_reduce_sum(&t).unwrap().to_vec1::<f32>().unwrap(),
            [1.0, 2.0]
        );
        assert!(Solo.any(true, &Device::Cpu).unwrap());
    }
}
