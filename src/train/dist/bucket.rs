//! Gradient buckets: parameters grouped, in reverse order (the order
//! backward produces their gradients, as PyTorch's DDP does), into buckets
//! of about `cap` bytes, so that each all-reduce moves one large
//! contiguous buffer instead of ~160 small ones (ResNet-50).
//!
//! Invariants: every parameter is in exactly one bucket; a parameter larger
//! than the cap gets a bucket of its own; the plan depends only on the
//! parameter sizes, so it is the same on every rank. A parameter without a
//! gradient on this rank contributes zeros, so the buffers always match.

use candle_core::backprop::GradStore;
use candle_core::{DType, Result, Tensor, Var};

use super::Collective;

/// PyTorch DDP's default bucket size (`bucket_cap_mb = 25`).
pub const DEFAULT_BUCKET_BYTES: usize = 25 << 20;

/// A bucketing plan over a fixed list of parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GradBuckets {
    /// Indices into the parameter list, bucket by bucket.
    buckets: Vec<Vec<usize>>,
}

impl GradBuckets {
    /// Plan buckets for parameters of `numels` elements (f32 on the wire).
    pub fn plan(numels: &[usize], cap_bytes: usize) -> GradBuckets {
        let cap = (cap_bytes / 4).max(1);
        let mut buckets: Vec<Vec<usize>> = Vec::new();
        let mut current = Vec::new();
        let mut filled = 0usize;
        for i in (0..numels.len()).rev() {
            if !current.is_empty() && filled + numels[i] > cap {
                buckets.push(std::mem::take(&mut current));
                filled = 0;
            }
            current.push(i);
            filled += numels[i];
        }
        if !current.is_empty() {
            buckets.push(current);
        }
        GradBuckets { buckets }
    }

    /// Plan for these variables.
    pub fn for_vars(vars: &[Var], cap_bytes: usize) -> GradBuckets {
        let numels: Vec<usize> = vars.iter().map(|v| v.elem_count()).collect();
        GradBuckets::plan(&numels, cap_bytes)
    }

    pub fn buckets(&self) -> &[Vec<usize>] {
        &self.buckets
    }

    /// Replace each gradient in `grads` by its mean over the ranks of
    /// `comm`. With one rank this does nothing.
    pub fn all_reduce_mean(
        &self,
        vars: &[Var],
        grads: &mut GradStore,
        comm: &dyn Collective,
    ) -> Result<()> {
        let world = comm.size();
        if world == 1 {
            return Ok(());
        }
        for bucket in &self.buckets {
            let mut flat = Vec::with_capacity(bucket.len());
            for &i in bucket {
                let v = vars[i].as_tensor();
                let g = match grads.get(v) {
                    Some(g) => g.to_dtype(DType::F32)?.flatten_all()?,
                    None => Tensor::zeros(v.elem_count(), DType::F32, v.device())?,
                };
                flat.push(g);
            }
            let buffer = Tensor::cat(&flat, 0)?;
            drop(flat);
            let mean = comm
                .all_reduce_sum(&buffer)?
                .affine(1.0 / world as f64, 0.0)?;
            let mut offset = 0;
            for &i in bucket {
                let v = vars[i].as_tensor();
                let n = v.elem_count();
                let g = mean
                    .narrow(0, offset, n)?
                    .reshape(v.shape())?
                    .to_dtype(v.dtype())?;
                grads.insert(v, g);
                offset += n;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::dist::ThreadGroup;
    use candle_core::Device;

    #[test]
    fn plan_covers_every_parameter_once_in_reverse_order() {
        // Bytes: 4 per element; cap 40 bytes = 10 elements.
        let numels = [3, 4, 25, 2, 2, 6, 1];
        let plan = GradBuckets::plan(&numels, 40);
        // 25 elements exceed the cap: parameter 2 travels alone.
        assert_eq!(
            plan.buckets(),
            &[vec![6, 5, 4], vec![3], vec![2], vec![1, 0]]
        );
        let mut seen: Vec<usize> = plan.buckets().concat();
        seen.sort();
        assert_eq!(seen, (0..numels.len()).collect::<Vec<_>>());
        // One big bucket when the cap is large; one per parameter when tiny.
        assert_eq!(GradBuckets::plan(&numels, 1 << 20).buckets().len(), 1);
        assert_eq!(GradBuckets::plan(&numels, 1).buckets().len(), numels.len());
        assert!(GradBuckets::plan(&[], 40).buckets().is_empty());
    }

    /// Loss of a small linear classifier on rows `rows` of a fixed batch:
    /// mean cross-entropy, like the trainer's.
    fn grads_on(vars: &[Var], x: &Tensor, y: &Tensor, rows: std::ops::Range<usize>) -> GradStore {
        let x = x.narrow(0, rows.start, rows.len()).unwrap();
        let y = y.narrow(0, rows.start, rows.len()).unwrap();
        let logits = x
            .matmul(&vars[0].as_tensor().t().unwrap())
            .unwrap()
            .broadcast_add(vars[1].as_tensor())
            .unwrap();
        let loss = crate::train::hard_cross_entropy(&logits, &y, 0.0).unwrap();
        loss.backward().unwrap()
    }

    #[test]
    fn two_ranks_on_half_batches_get_the_full_batch_gradient() {
        let dev = Device::Cpu;
        let w = Var::from_tensor(&Tensor::randn(0f32, 1.0, (5, 7), &dev).unwrap()).unwrap();
        let b = Var::from_tensor(&Tensor::randn(0f32, 1.0, 5, &dev).unwrap()).unwrap();
        let vars = vec![w, b];
        let x = Tensor::randn(0f32, 1.0, (8, 7), &dev).unwrap();
        let y = Tensor::new(&[0u32, 1, 2, 3, 4, 0, 1, 2], &dev).unwrap();
        // Reference: one process on all 8 rows (mean over the batch), no buckets.
        let full = grads_on(&vars, &x, &y, 0..8);
        // Cap of 16 bytes: w (35 values) and b (5) in separate buckets.
        let plan = GradBuckets::for_vars(&vars, 16);
        assert_eq!(plan.buckets().len(), 2);
        let per_rank: Vec<Vec<Vec<f32>>> = std::thread::scope(|s| {
            let handles: Vec<_> = ThreadGroup::new(2)
                .into_iter()
                .map(|g| {
                    let (vars, x, y, plan) = (&vars, &x, &y, &plan);
                    s.spawn(move || {
                        let r = g.rank();
                        let mut grads = grads_on(vars, x, y, 4 * r..4 * r + 4);
                        plan.all_reduce_mean(vars, &mut grads, &g).unwrap();
                        vars.iter()
                            .map(|v| {
                                let t = grads.get(v.as_tensor()).unwrap();
                                assert_eq!(t.dims(), v.dims());
                                t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
                            })
                            .collect()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(per_rank[0], per_rank[1], "ranks must agree bit for bit");
        for (k, v) in vars.iter().enumerate() {
            let want = full
                .get(v.as_tensor())
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            for (a, b) in per_rank[0][k].iter().zip(&want) {
                assert!(
                    (a - b).abs() <= 1e-6 * (1.0 + b.abs()),
                    "param {k}: {a} vs {b}"
                );
            }
        }
    }
}
