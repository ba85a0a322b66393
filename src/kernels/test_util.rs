//! Test helpers shared by the kernel tests: deterministic random tensors, a scaled max difference, and a central
//! finite-difference check of autograd gradients (f64).

use candle_core::{DType, Device, Result, Tensor, Var};

pub(crate) use super::check::{max_rel_diff, to_vec, Rng};

pub(crate) fn rand_tensor(dims: &[usize], seed: u64, dtype: DType) -> Tensor {
    super::check::rand_tensor(dims, seed, dtype).expect("rand tensor")
}

/// A random permutation of evenly spaced values in [-1, 1]: all distinct, at least 2/len apart.
pub(crate) fn distinct_tensor(dims: &[usize], seed: u64, dtype: DType) -> Tensor {
    let mut rng = Rng::new(seed);
    let len = dims.iter().product::<usize>();
    let mut v = (0..len)
        .map(|i| 2.0 * i as f64 / len as f64 - 1.0)
        .collect::<Vec<_>>();
    for i in (1..len).rev() {
        v.swap(i, (rng.next_u64() % (i as u64 + 1)) as usize);
    }
    Tensor::from_vec(v, dims, &Device::Cpu)
        .and_then(|t| t.to_dtype(dtype))
        .expect("distinct tensor")
}

/// Compares the autograd gradient of the scalar `loss(inputs)` with central differences (step 1e-6) at `per_input`
/// entries of every input, spread over the tensor. Returns the worst |analytic − numeric| / max(1, |numeric|).
pub(crate) fn fd_check(
    loss: impl Fn(&[Tensor]) -> Result<Tensor>,
    inputs: &[Tensor],
    per_input: usize,
) -> Result<f64> {
    let vars = inputs
        .iter()
        .map(Var::from_tensor)
        .collect::<Result<Vec<_>>>()?;
    let tensors = vars
        .iter()
        .map(|v| v.as_tensor().clone())
        .collect::<Vec<_>>();
    let grads = loss(&tensors)?.backward()?;
    let eps = 1e-6;
    let mut worst = 0f64;
    for (i, input) in inputs.iter().enumerate() {
        let analytic = match grads.get(&tensors[i]) {
            Some(g) => to_vec(g),
            None => candle_core::bail!("no gradient for input {i}"),
        };
        let base = to_vec(input);
        let mut rng = Rng::new(1000 + i as u64);
        for _ in 0..per_input.min(base.len()) {
            let j = (rng.next_u64() % base.len() as u64) as usize;
            let eval = |delta: f64| -> Result<f64> {
                let mut v = base.clone();
                v[j] += delta;
                let mut args = inputs.to_vec();
                args[i] = Tensor::from_vec(v, input.dims(), &Device::Cpu)?;
                loss(&args)?.to_scalar::<f64>()
            };
            let numeric = (eval(eps)? - eval(-eps)?) / (2.0 * eps);
            worst = worst.max((analytic[j] - numeric).abs() / numeric.abs().max(1.0));
        }
    }
    Ok(worst)
}
