//! Keeping the replicas identical: rank 0's weights are copied to every
//! rank before the first step (as PyTorch's DDP does at construction, so
//! `--init`, `--resume` or a non-deterministic initialisation cannot leave
//! ranks apart), and a cheap fingerprint check after each epoch turns a
//! silent divergence into an error naming the first tensor that differs.

use candle_core::{DType, Result, Tensor, Var};

use super::Collective;

/// Copy rank 0's value of every floating-point variable to all ranks.
pub fn broadcast_from_rank0(vars: &[&Var], comm: &dyn Collective) -> Result<()> {
    if comm.size() == 1 {
        return Ok(());
    }
    for v in vars {
        if !v.dtype().is_float() {
            continue;
        }
        let mine = if comm.rank() == 0 {
            v.as_tensor().clone()
        } else {
            v.as_tensor().zeros_like()?
        };
        v.set(&comm.all_reduce_sum(&mine)?)?;
    }
    Ok(())
}

/// Per variable (sum, sum of squares), the fingerprint compared across ranks.
fn fingerprint(vars: &[&Var]) -> Result<Vec<f32>> {
    let mut out = Vec::with_capacity(2 * vars.len());
    for v in vars {
        let t = v.as_tensor().to_dtype(DType::F64)?;
        out.push(t.sum_all()?.to_scalar::<f64>()? as f32);
        out.push(t.sqr()?.sum_all()?.to_scalar::<f64>()? as f32);
    }
    Ok(out)
}

/// `None` when every rank holds the same values (up to the rounding of the
/// fingerprint's sum), else the index of the first variable that differs.
pub fn first_divergence(vars: &[&Var], comm: &dyn Collective) -> Result<Option<usize>> {
    if comm.size() == 1 || vars.is_empty() {
        return Ok(None);
    }
    let device = vars[0].device();
    let mine = fingerprint(vars)?;
    let n = mine.len();
    let sum = comm
        .all_reduce_sum(&Tensor::from_vec(mine.clone(), n, device)?)?
        .to_vec1::<f32>()?;
    let world = comm.size() as f32;
    // Every rank must agree on the verdict, so decide from values all
    // ranks see: a differing rank makes the mean differ from its own
    // value on at least that rank; share that as a flag.
    let local = mine
        .iter()
        .zip(&sum)
        .position(|(a, s)| (s / world - a).abs() > 1e-5 * (1.0 + a.abs()));
    let flags: Vec<f32> = (0..vars.len())
        .map(|i| f32::from(u8::from(local.is_some_and(|p| p / 2 == i))))
        .collect();
    let any = comm
        .all_reduce_sum(&Tensor::from_vec(flags, vars.len(), device)?)?
        .to_vec1::<f32>()?;
    Ok(any.iter().position(|&f| f > 0.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::dist::ThreadGroup;
    use candle_core::Device;

    fn run_ranks<T: Send>(n: usize, f: impl Fn(ThreadGroup) -> T + Sync) -> Vec<T> {
        std::thread::scope(|s| {
            let handles: Vec<_> = ThreadGroup::new(n)
                .into_iter()
                .map(|g| s.spawn(|| f(g)))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        })
    }

    #[test]
    fn broadcast_makes_ranks_equal_and_the_check_sees_divergence() {
        let out = run_ranks(3, |g| {
            let r = g.rank() as f32;
            let a = Var::new(&[r, 2.0 * r + 1.0], &Device::Cpu).unwrap();
            let b = Var::new(&[[r; 3]; 2], &Device::Cpu).unwrap();
            let count = Var::new(&[g.rank() as i64], &Device::Cpu).unwrap();
            let vars = [&a, &b, &count];
            // Different values: the first differing tensor is `a` (index 0).
            let before = first_divergence(&vars[..2], &g).unwrap();
            broadcast_from_rank0(&vars, &g).unwrap();
            let after = first_divergence(&vars[..2], &g).unwrap();
            // Only `b` made to differ on rank 2: every rank names index 1.
            if g.rank() == 2 {
                b.set(&Tensor::new(&[[0f32, 0.0, 1e-3], [0.0, 0.0, 0.0]], &Device::Cpu).unwrap())
                    .unwrap();
            }
            let only_b = first_divergence(&vars[..2], &g).unwrap();
            (
                before,
                after,
                only_b,
                a.as_tensor().to_vec1::<f32>().unwrap(),
                count.as_tensor().to_vec1::<i64>().unwrap()[0],
            )
        });
        for (rank, (before, after, only_b, a, count)) in out.into_iter().enumerate() {
            assert_eq!(before, Some(0));
            assert_eq!(after, None);
            assert_eq!(only_b, Some(1));
            assert_eq!(a, [0.0, 1.0], "rank {rank} got rank 0's values");
            assert_eq!(count, rank as i64, "integer counters are left alone");
        }
    }
}
