//! Classification heads on pooled features.
//!
//! - `ebv`: a learned Linear(features → d) (`fc.weight`, `fc.bias`), the
//!   output L2-normalised, scored against the fixed EBV matrix B [C, d]:
//!   logits = f̂·Bᵀ / τ. B is a plain tensor held outside the parameter
//!   store: it has no gradient and no optimiser state, and it is never
//!   written to a model checkpoint;
//! - `fc`: the ordinary learned Linear(features → C), the paper's baseline.
//!
//! Prediction is the argmax of the cosine (EBV) or the logit (FC); both are
//! the argmax of the logits, since τ > 0.
//!
//! The EBV head's training loss takes its gradient with respect to the
//! features in closed form (`chunked.rs`), `model.class_chunk` classes at a
//! time or all at once: through candle's autograd, the logits' matmul would
//! also compute a [d, C] gradient for the fixed basis every step and drop it
//! (at C = 100,000, d = 5000: a third of the head's arithmetic and 2 GB
//! more memory per step; 2.6× slower on the CPU, BENCHMARKS.md). That
//! autograd path stays as the reference the closed form is tested against
//! ([`Head::set_autograd_reference`]). The head holds the caller's basis
//! tensor itself when dtype and device match: no copy.

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use super::chunked::ChunkedBasis;
use super::linear::Linear;
use super::params::ParamStore;
use super::precision::{cast, is_half};
use super::ModelError;

/// Which head.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HeadKind {
    Ebv,
    Fc,
}

impl std::str::FromStr for HeadKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "ebv" => Ok(HeadKind::Ebv),
            "fc" => Ok(HeadKind::Fc),
            _ => Err(format!("unknown head {s:?} (expected ebv or fc)")),
        }
    }
}

/// The dtype sums over `dtype` values are taken in.
fn accumulate(dtype: DType) -> DType {
    if is_half(dtype) {
        DType::F32
    } else {
        dtype
    }
}

/// F.normalize's epsilon: features shorter than this are not blown up.
const NORM_EPS: f64 = 1e-12;

#[derive(Debug, Clone)]
pub struct Head {
    kind: HeadKind,
    fc: Linear,
    /// Bᵀ [d, C] of the unit-row basis, for the autograd reference path
    /// only (then `chunked` is None); EBV only.
    basis_t: Option<Tensor>,
    /// Bᵀ in the compute dtype when that is not the parameters' (a bf16
    /// copy made once, not per step); reference path only.
    basis_c: Option<Tensor>,
    /// The basis as rows, scored a chunk of classes at a time with the
    /// closed-form gradient; EBV only.
    chunked: Option<ChunkedBasis>,
    tau: f64,
    classes: usize,
}

impl Head {
    /// The EBV head: `fc` projects `features` to d = basis columns.
    pub fn ebv(
        store: &mut ParamStore,
        features: usize,
        basis: &Tensor,
        tau: f64,
    ) -> Result<Head, ModelError> {
        if !(tau > 0.0 && tau.is_finite()) {
            return Err(ModelError::Build(format!(
                "temperature tau must be positive, got {tau}"
            )));
        }
        let (classes, d) = basis.dims2()?;
        let fc = Linear::new(store, "fc", features, d)?;
        let dtype = store.dtype();
        let rows = basis.to_device(store.device())?.to_dtype(dtype)?;
        Ok(Head {
            kind: HeadKind::Ebv,
            fc,
            basis_t: None,
            basis_c: None,
            chunked: Some(ChunkedBasis::new(&rows, classes, dtype, accumulate(dtype))?),
            tau,
            classes,
        })
    }

    /// The learned linear classifier over `classes`.
    pub fn fc(store: &mut ParamStore, features: usize, classes: usize) -> Result<Head, ModelError> {
        Ok(Head {
            kind: HeadKind::Fc,
            fc: Linear::new(store, "fc", features, classes)?,
            basis_t: None,
            basis_c: None,
            chunked: None,
            tau: 1.0,
            classes,
        })
    }

    pub fn kind(&self) -> HeadKind {
        self.kind
    }

    pub fn classes(&self) -> usize {
        self.classes
    }

    /// Score in `dtype` (bf16 for mixed precision): keeps a copy of the
    /// basis in that dtype for the C-wide GEMM.
    pub fn set_compute_dtype(&mut self, dtype: DType) -> candle_core::Result<()> {
        if let Some(cb) = &mut self.chunked {
            return cb.set_compute_dtype(dtype, accumulate(dtype));
        }
        self.basis_c = match &self.basis_t {
            Some(bt) if bt.dtype() != dtype => Some(bt.to_dtype(dtype)?),
            _ => None,
        };
        Ok(())
    }

    /// Score the EBV head `chunk` classes at a time (0, or at least C: all
    /// at once), so that training and evaluation never hold an N × C
    /// matrix (see `chunked.rs`). The FC head has no basis to chunk.
    pub fn set_class_chunk(&mut self, chunk: usize) -> candle_core::Result<()> {
        if self.kind != HeadKind::Ebv {
            if chunk == 0 {
                return Ok(());
            }
            candle_core::bail!("model.class_chunk applies to the ebv head only");
        }
        let chunk = if chunk == 0 { self.classes } else { chunk };
        if let Some(cb) = &mut self.chunked {
            return cb.set_chunk(chunk);
        }
        // Leaving the reference path: rows again, in its compute dtype.
        let Some(bt) = self.basis_t.take() else {
            candle_core::bail!("the ebv head has no basis");
        };
        let dtype = self.basis_c.take().map_or(bt.dtype(), |b| b.dtype());
        let rows = bt.t()?.contiguous()?;
        self.chunked = Some(ChunkedBasis::new(&rows, chunk, dtype, accumulate(dtype))?);
        Ok(())
    }

    /// Score the EBV head through candle's autograd on full N × C logits:
    /// the reference the closed-form loss is tested against. Each backward
    /// pass then also computes (and drops) a [d, C] gradient for the fixed
    /// basis; [`Head::set_class_chunk`] leaves this path again.
    pub fn set_autograd_reference(&mut self) -> candle_core::Result<()> {
        let Some(cb) = self.chunked.take() else {
            return Ok(());
        };
        let dtype = cb.compute_dtype();
        self.basis_t = Some(cb.rows().t()?.contiguous()?);
        self.set_compute_dtype(dtype)
    }

    /// The basis as the head scores it: rows B [C, d], or Bᵀ [d, C] on the
    /// reference path.
    #[cfg(test)]
    pub(crate) fn basis_tensor(&self) -> Option<&Tensor> {
        match &self.chunked {
            Some(cb) => Some(cb.rows()),
            None => self.basis_t.as_ref(),
        }
    }

    /// Classes per chunk (C: all at once); None on the FC head and the
    /// autograd reference path.
    pub fn class_chunk(&self) -> Option<usize> {
        self.chunked.as_ref().map(|c| c.chunk())
    }

    /// Logits [N, C] for the loss (f32 when the features are 16-bit).
    pub fn logits(&self, features: &Tensor) -> candle_core::Result<Tensor> {
        match self.kind {
            HeadKind::Ebv => self.cosines(features)? / self.tau,
            HeadKind::Fc => self.scores(features),
        }
    }

    /// The scores users see: cosines [N, C] for EBV, logits for FC.
    pub fn scores(&self, features: &Tensor) -> candle_core::Result<Tensor> {
        match self.kind {
            HeadKind::Ebv => self.cosines(features),
            HeadKind::Fc => cast(&self.fc.forward(features)?, accumulate(features.dtype())),
        }
    }

    /// The projected features, L2-normalised, in the accumulation dtype
    /// (f32 at least: a bf16 sum of d squares is coarse).
    fn unit(&self, features: &Tensor) -> candle_core::Result<Tensor> {
        let f = self.fc.forward(features)?;
        let f = cast(&f, accumulate(f.dtype()))?;
        let norm = f.sqr()?.sum_keepdim(1)?.sqrt()?.clamp(NORM_EPS, f64::MAX)?;
        f.broadcast_div(&norm)
    }

    fn cosines(&self, features: &Tensor) -> candle_core::Result<Tensor> {
        let unit = self.unit(features)?;
        if let Some(cb) = &self.chunked {
            return cb.cosines(&unit);
        }
        let Some(bt) = self.basis_c.as_ref().or(self.basis_t.as_ref()) else {
            candle_core::bail!("the fc head has no basis");
        };
        // Score in the basis copy's dtype, return in the accumulation dtype.
        cast(&cast(&unit, bt.dtype())?.matmul(bt)?, unit.dtype())
    }

    /// Class-chunked training loss of a (mixed, smoothed) batch and its
    /// top-1 hits against `labels`; the same value and gradients as
    /// cross-entropy on [`Head::logits`], without the N × C logits.
    pub fn chunked_loss(
        &self,
        features: &Tensor,
        labels: &Tensor,
        mix_labels: &Tensor,
        lambda: f64,
        smoothing: f64,
    ) -> candle_core::Result<(Tensor, u64)> {
        let Some(cb) = &self.chunked else {
            candle_core::bail!("chunked_loss: the head is not class-chunked");
        };
        let unit = self.unit(features)?;
        cb.train_loss(&unit, self.tau, labels, mix_labels, lambda, smoothing)
    }

    /// Class-chunked evaluation: mean cross-entropy and top-k hits for each
    /// k of `ks`.
    pub fn chunked_eval(
        &self,
        features: &Tensor,
        labels: &Tensor,
        ks: &[usize],
    ) -> candle_core::Result<(f64, Vec<u64>)> {
        let Some(cb) = &self.chunked else {
            candle_core::bail!("chunked_eval: the head is not class-chunked");
        };
        let unit = self.unit(features)?;
        cb.eval(&unit, self.tau, labels, ks)
    }
}

/// Load an EBV matrix written by `ebv-basis` (or imported from the paper)
/// as an f32 [C, d] tensor with unit rows. Rows are renormalised in f64 so
/// a file saved at lower precision still yields exact cosines.
pub fn load_basis(path: &std::path::Path, device: &Device) -> Result<Tensor, ModelError> {
    let basis = crate::basis::read_matrix(path).map_err(|e| ModelError::Basis {
        path: path.to_path_buf(),
        detail: e.to_string(),
    })?;
    let (n, d) = (basis.n, basis.d);
    if n == 0 || d == 0 {
        return Err(ModelError::Basis {
            path: path.to_path_buf(),
            detail: format!("empty matrix ({n} × {d})"),
        });
    }
    let mut data = basis.data;
    for (i, row) in data.chunks_mut(d).enumerate() {
        let norm = row
            .iter()
            .map(|&v| f64::from(v) * f64::from(v))
            .sum::<f64>()
            .sqrt();
        if !(norm > 0.0 && norm.is_finite()) {
            return Err(ModelError::Basis {
                path: path.to_path_buf(),
                detail: format!("row {i} (class {i}) has norm {norm}"),
            });
        }
        for v in row.iter_mut() {
            *v = (f64::from(*v) / norm) as f32;
        }
    }
    Ok(Tensor::from_vec(data, (n, d), device)?.to_dtype(DType::F32)?)
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Tensor};

    use super::*;
    use crate::train::hard_cross_entropy;

    fn setup() -> (ParamStore, Head, Tensor, Tensor) {
        let dev = Device::Cpu;
        let mut store = ParamStore::new(&dev, DType::F64, 3);
        let basis: Vec<f64> = (0..5 * 3)
            .map(|i| ((i * 13 % 7) as f64 - 3.0) / 4.0 + 0.1)
            .collect();
        let basis = Tensor::from_vec(basis, (5, 3), &dev).unwrap();
        let norm = basis.sqr().unwrap().sum_keepdim(1).unwrap().sqrt().unwrap();
        let basis = basis.broadcast_div(&norm).unwrap();
        let head = Head::ebv(&mut store, 6, &basis, 0.07).unwrap();
        let f: Vec<f64> = (0..4 * 6)
            .map(|i| ((i * 5 % 11) as f64 - 5.0) / 3.0)
            .collect();
        let f = Tensor::from_vec(f, (4, 6), &dev).unwrap();
        let labels = Tensor::new(&[0u32, 3, 4, 1], &dev).unwrap();
        (store, head, f, labels)
    }

    /// Gradients of cross-entropy (label smoothing 0.1) through the EBV
    /// head, w.r.t. the projection and the features, against central
    /// differences in f64.
    #[test]
    fn head_and_loss_gradients_match_finite_differences() {
        let (store, head, f, labels) = setup();
        let fv = candle_core::Var::from_tensor(&f).unwrap();
        let loss = |h: &Head, x: &Tensor| -> f64 {
            hard_cross_entropy(&h.logits(x).unwrap(), &labels, 0.1)
                .unwrap()
                .to_scalar()
                .unwrap()
        };
        let l = hard_cross_entropy(&head.logits(fv.as_tensor()).unwrap(), &labels, 0.1).unwrap();
        let grads = l.backward().unwrap();
        let eps = 1e-6;
        let mut checked = 0;
        for e in store.trainable() {
            let g: Vec<f64> = grads
                .get(&e.var)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let base: Vec<f64> = e.var.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
            for i in (0..base.len()).step_by(2) {
                let at = |d: f64| {
                    let mut v = base.clone();
                    v[i] += d;
                    e.var
                        .set(&Tensor::from_vec(v, e.var.dims(), &Device::Cpu).unwrap())
                        .unwrap();
                    let r = loss(&head, &f);
                    e.var
                        .set(&Tensor::from_vec(base.clone(), e.var.dims(), &Device::Cpu).unwrap())
                        .unwrap();
                    r
                };
                let num = (at(eps) - at(-eps)) / (2.0 * eps);
                assert!(
                    (num - g[i]).abs() <= 1e-6 * (1.0 + num.abs()),
                    "{}[{i}]: {} vs {num}",
                    e.name,
                    g[i]
                );
                checked += 1;
            }
        }
        let gf: Vec<f64> = grads
            .get(&fv)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let base: Vec<f64> = f.flatten_all().unwrap().to_vec1().unwrap();
        for i in 0..base.len() {
            let at = |d: f64| {
                let mut v = base.clone();
                v[i] += d;
                loss(&head, &Tensor::from_vec(v, (4, 6), &Device::Cpu).unwrap())
            };
            let num = (at(eps) - at(-eps)) / (2.0 * eps);
            assert!(
                (num - gf[i]).abs() <= 1e-6 * (1.0 + num.abs()),
                "feature {i}: {} vs {num}",
                gf[i]
            );
        }
        assert!(checked >= 11);
    }

    /// Logits are cosines against the basis over τ, the basis is outside
    /// the store (no gradient, never saved), and predictions are the
    /// argmax of the cosine.
    #[test]
    fn logits_are_cosines_over_tau_against_a_fixed_basis() {
        let (store, head, f, _) = setup();
        assert!(store.entries().iter().all(|e| e.name.starts_with("fc.")));
        assert_eq!(store.entries().len(), 2);
        let cos: Vec<Vec<f64>> = head.scores(&f).unwrap().to_vec2().unwrap();
        let logits: Vec<Vec<f64>> = head.logits(&f).unwrap().to_vec2().unwrap();
        let proj: Vec<Vec<f64>> = head.fc.forward(&f).unwrap().to_vec2().unwrap();
        let bt: Vec<Vec<f64>> = head.chunked.as_ref().unwrap().rows().to_vec2().unwrap();
        for (r, p) in proj.iter().enumerate() {
            let pn = p.iter().map(|v| v * v).sum::<f64>().sqrt();
            for (c, b) in bt.iter().enumerate() {
                let bn = b.iter().map(|v| v * v).sum::<f64>().sqrt();
                let want = p.iter().zip(b).map(|(x, y)| x * y).sum::<f64>() / (pn * bn);
                assert!((cos[r][c] - want).abs() < 1e-12);
                assert!((logits[r][c] - want / 0.07).abs() < 1e-10);
            }
        }
    }
}
