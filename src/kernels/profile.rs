//! Per-op device time, for taking one training step apart on a GPU (`ebv-train --bench-steps` reports it as
//! `op:*` phases). Off by default; while on, each wrapped op synchronises the device before and after itself, so
//! the times are exact but the step runs slower: it is switched on for one extra step only.
//!
//! What is wrapped: this crate's ops, forward and backward (cuDNN convolutions, BatchNorm, max-pool) and the
//! residual add + ReLU forward. The rest of a step (candle's own ops and their backward, the head, the optimiser)
//! is the step time less their sum.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use candle_core::Result;

static ON: AtomicBool = AtomicBool::new(false);
static TIMES: Mutex<BTreeMap<&'static str, (f64, usize)>> = Mutex::new(BTreeMap::new());

/// Switches the profile on (clearing it) or off.
pub fn set_op_profile(on: bool) {
    if on {
        if let Ok(mut t) = TIMES.lock() {
            t.clear();
        }
    }
    ON.store(on, Ordering::SeqCst);
}

/// Seconds and calls per op name since the profile was switched on.
pub fn op_profile() -> BTreeMap<String, (f64, usize)> {
    match TIMES.lock() {
        Ok(t) => t.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
        Err(_) => BTreeMap::new(),
    }
}

/// Runs `f`, timed between two calls of `sync` when the profile is on.
pub(crate) fn profiled<R>(
    name: &'static str,
    sync: impl Fn() -> Result<()>,
    f: impl FnOnce() -> Result<R>,
) -> Result<R> {
    if !ON.load(Ordering::Relaxed) {
        return f();
    }
    sync()?;
    let t = Instant::now();
    let r = f()?;
    sync()?;
    let s = t.elapsed().as_secs_f64();
    if let Ok(mut times) = TIMES.lock() {
        let e = times.entry(name).or_insert((0.0, 0));
        e.0 += s;
        e.1 += 1;
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};

    use super::*;
    use crate::kernels::{add_relu, KernelImpl};

    #[test]
    fn ops_are_timed_only_while_the_profile_is_on() {
        let a = Tensor::new(&[1.0f32, -2.0, 3.0], &Device::Cpu).unwrap();
        let b = Tensor::new(&[0.5f32, 1.0, -4.0], &Device::Cpu).unwrap();
        // Other tests may run ops at the same time: count this test's calls from its own baseline.
        let calls = || {
            op_profile()
                .get("add_relu_forward")
                .map_or(0, |&(_, calls)| calls)
        };
        set_op_profile(true);
        let before = calls();
        let y = add_relu(&a, &b, KernelImpl::Candle).unwrap();
        assert_eq!(y.to_vec1::<f32>().unwrap(), [1.5, 0.0, 0.0]);
        assert!(calls() > before);
        set_op_profile(false);
        let after = calls();
        add_relu(&a, &b, KernelImpl::Candle).unwrap();
        assert_eq!(calls(), after, "recorded while off");
    }

    #[test]
    fn a_failing_op_is_passed_through() {
        let r: Result<()> = profiled("t", || Ok(()), || candle_core::bail!("boom"));
        assert!(r.unwrap_err().to_string().contains("boom"));
    }
}
