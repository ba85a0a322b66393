//! The EBV head's loss and metrics computed over slices of the classes, so that memory stays bounded at C = 10⁶:
//! a batch never holds an N × C logit matrix (nor its softmax, nor its gradient), only N × `chunk` at a time.
//!
//! Training (one pass over the chunks): with unit features u (N × d), basis rows B_c and z_c = u·B_c / τ, the
//! running row max m, Σ exp(z − m) and Σ exp(z − m)·B_c are carried from chunk to chunk (rescaled when m grows),
//! which gives lse = m + log Σ and q = Σ_c p_c·B_c exactly. The loss of a (mixed, smoothed) batch,
//! `mean_i [lse_i − (1−ε)(λ z_{i,a} + (1−λ) z_{i,b}) − ε·mean_c z_{i,c}]`, is the one
//! `train::batch_loss` computes from full logits, and its gradient with respect to u is known in closed form:
//! `[q − (1−ε)(λ B_a + (1−λ) B_b) − ε·ΣB/C] / (τ N)` (mean_c z_c = u·ΣB / (τC), so the smoothing term needs no
//! pass). The returned loss carries exactly that gradient into the graph (`loss + u·G − (u·G).detach()`), so the
//! backbone and the projection train as with the full head; the fixed basis gets no gradient either way.
//!
//! Evaluation (two passes): the label's own score first, then its rank by the same rule as
//! `train::topk_correct` (greater scores and NaNs ahead, ties to the lower class index), so top-k and the loss
//! equal those of the full matrix.
//!
//! Invariants: chunk GEMMs run in the basis copy's dtype (bf16 under mixed precision), everything else in the
//! features' accumulation dtype (f32, or f64 in tests); class indices travel as f32, exact below 2²⁴ classes.

use candle_core::{bail, DType, Result, Tensor, D};

/// How label errors are introduced.
const WHAT: &str = "chunked head";

/// Largest class count whose indices are exact in f32.
const MAX_CLASSES: usize = 1 << 24;

/// The basis kept as rows for slicing, plus its column sum.
#[derive(Debug, Clone)]
pub(crate) struct ChunkedBasis {
    /// B [C, d], contiguous, in the parameters' dtype.
    rows: Tensor,
    /// B in the compute dtype when that differs (mixed precision).
    rows_c: Option<Tensor>,
    /// Σ_c B_c [1, d] of the rows the GEMMs use, in the accumulation dtype.
    sum: Tensor,
    chunk: usize,
}

impl ChunkedBasis {
    /// From the unit rows B [C, d] (shared, not copied, when contiguous), scoring `chunk` classes at a time (at
    /// most C) in `dtype` and summing in `acc`.
    pub(crate) fn new(
        rows: &Tensor,
        chunk: usize,
        dtype: DType,
        acc: DType,
    ) -> Result<ChunkedBasis> {
        let (classes, _) = rows.dims2()?;
        if classes > MAX_CLASSES {
            bail!("class-chunked head supports at most {MAX_CLASSES} classes, got {classes}");
        }
        let rows = rows.contiguous()?;
        let (rows_c, sum) = Self::in_dtype(&rows, dtype, acc)?;
        let mut basis = ChunkedBasis {
            rows,
            rows_c,
            sum,
            chunk: 1,
        };
        basis.set_chunk(chunk)?;
        Ok(basis)
    }

    /// Score `chunk` classes at a time from now on (at most C: one chunk).
    pub(crate) fn set_chunk(&mut self, chunk: usize) -> Result<()> {
        if chunk == 0 {
            bail!("class chunk must be at least 1");
        }
        self.chunk = chunk.min(self.classes()).max(1);
        Ok(())
    }

    pub(crate) fn set_compute_dtype(&mut self, dtype: DType, acc: DType) -> Result<()> {
        (self.rows_c, self.sum) = Self::in_dtype(&self.rows, dtype, acc)?;
        Ok(())
    }

    /// The copy of `rows` in `dtype` (None when they already are) and the column sum of the rows the GEMMs use.
    fn in_dtype(rows: &Tensor, dtype: DType, acc: DType) -> Result<(Option<Tensor>, Tensor)> {
        let rows_c = if dtype != rows.dtype() {
            Some(rows.to_dtype(dtype)?)
        } else {
            None
        };
        let sum = rows_c
            .as_ref()
            .unwrap_or(rows)
            .to_dtype(acc)?
            .sum_keepdim(0)?;
        Ok((rows_c, sum))
    }

    pub(crate) fn chunk(&self) -> usize {
        self.chunk
    }

    /// B [C, d] in the parameters' dtype.
    pub(crate) fn rows(&self) -> &Tensor {
        &self.rows
    }

    /// The dtype the chunk GEMMs run in.
    pub(crate) fn compute_dtype(&self) -> DType {
        self.gemm_rows().dtype()
    }

    fn gemm_rows(&self) -> &Tensor {
        self.rows_c.as_ref().unwrap_or(&self.rows)
    }

    fn classes(&self) -> usize {
        self.rows.dim(0).unwrap_or(0)
    }

    /// (first class, classes) of each chunk.
    fn spans(&self) -> impl Iterator<Item = (usize, usize)> {
        let (c, k) = (self.classes(), self.chunk);
        (0..c.div_ceil(k)).map(move |i| (i * k, k.min(c - i * k)))
    }

    /// u·B_cᵀ for one chunk, in `acc`: [N, len].
    fn scores(&self, u: &Tensor, start: usize, len: usize, acc: DType) -> Result<Tensor> {
        let b = self.gemm_rows().narrow(0, start, len)?;
        u.matmul(&b.t()?)?.to_dtype(acc)
    }

    /// Cosines [N, C] (all classes: for prediction on a few images).
    pub(crate) fn cosines(&self, unit: &Tensor) -> Result<Tensor> {
        let acc = unit.dtype();
        let u = unit.to_dtype(self.gemm_rows().dtype())?;
        let parts = self
            .spans()
            .map(|(s, l)| self.scores(&u, s, l, acc))
            .collect::<Result<Vec<_>>>()?;
        Tensor::cat(&parts, 1)
    }

    /// Training loss of a batch (mixing weight `lambda` of `labels` against `mix_labels`, label smoothing
    /// `smoothing`), differentiable with respect to `unit` [N, d], and how many rows' top-1 class is their label.
    pub(crate) fn train_loss(
        &self,
        unit: &Tensor,
        tau: f64,
        labels: &Tensor,
        mix_labels: &Tensor,
        lambda: f64,
        smoothing: f64,
    ) -> Result<(Tensor, u64)> {
        let (n, _) = unit.dims2()?;
        let classes = self.classes();
        check_labels(labels, n, classes, WHAT)?;
        check_labels(mix_labels, n, classes, WHAT)?;
        if !(0.0..=1.0).contains(&smoothing) || !(0.0..=1.0).contains(&lambda) {
            bail!("chunked loss: smoothing {smoothing} and lambda {lambda} must lie in [0, 1]");
        }
        let acc = unit.dtype();
        let rows = self.gemm_rows();
        let u = unit.detach().to_dtype(rows.dtype())?;
        // Running max, Σ exp(z − m), Σ exp(z − m)·B_c, best score and its class.
        let mut state: Option<(Tensor, Tensor, Tensor, Tensor, Tensor)> = None;
        for (start, len) in self.spans() {
            let z = (self.scores(&u, start, len, acc)? / tau)?;
            let cmax = z.max_keepdim(D::Minus1)?;
            let cidx = (z.argmax_keepdim(D::Minus1)?.to_dtype(DType::F32)? + start as f64)?;
            let b = rows.narrow(0, start, len)?;
            state = Some(match state {
                None => {
                    let e = z.broadcast_sub(&cmax)?.exp()?;
                    let s = e.sum_keepdim(D::Minus1)?;
                    let g = e.to_dtype(rows.dtype())?.matmul(&b)?.to_dtype(acc)?;
                    (cmax.clone(), s, g, cmax, cidx)
                }
                Some((m, s, g, best, best_idx)) => {
                    let m2 = m.maximum(&cmax)?;
                    let scale = (m - &m2)?.exp()?;
                    let e = z.broadcast_sub(&m2)?.exp()?;
                    let s = ((s * &scale)? + e.sum_keepdim(D::Minus1)?)?;
                    let g = (g.broadcast_mul(&scale)?
                        + e.to_dtype(rows.dtype())?.matmul(&b)?.to_dtype(acc)?)?;
                    // Strictly greater: an earlier (lower-index) class keeps a tie.
                    let better = cmax.gt(&best)?;
                    let best_idx = better.where_cond(&cidx, &best_idx)?;
                    let best = better.where_cond(&cmax, &best)?;
                    (m2, s, g, best, best_idx)
                }
            });
        }
        let Some((m, s, g, _, best_idx)) = state else {
            bail!("chunked loss: no classes");
        };
        let lse = (m + s.log()?)?; // [N, 1]
        let q = g.broadcast_div(&s)?; // Σ_c p_c·B_c, [N, d]
        let u_acc = u.to_dtype(acc)?;
        let ba = rows
            .index_select(&labels.to_dtype(DType::U32)?, 0)?
            .to_dtype(acc)?;
        let bb = rows
            .index_select(&mix_labels.to_dtype(DType::U32)?, 0)?
            .to_dtype(acc)?;
        let target = ((&ba * lambda)? + (&bb * (1.0 - lambda))?)?; // λ B_a + (1−λ) B_b
        let picked = ((&u_acc * &target)?.sum_keepdim(1)? / tau)?; // λ z_a + (1−λ) z_b
        let mean_z = (u_acc.broadcast_mul(&self.sum)?.sum_keepdim(1)? / (tau * classes as f64))?;
        let per_row = ((&lse - (picked * (1.0 - smoothing))?)? - (mean_z * smoothing)?)?;
        let loss = per_row.mean_all()?;
        let grad = ((q - (target * (1.0 - smoothing))?)?
            .broadcast_sub(&(&self.sum * (smoothing / classes as f64))?)?
            / (tau * n as f64))?;
        let surrogate = (unit * &grad)?.sum_all()?;
        let out = (&surrogate + (loss - surrogate.detach())?)?;
        let own = labels.to_dtype(DType::F32)?.unsqueeze(1)?;
        let correct = best_idx
            .eq(&own)?
            .to_dtype(DType::U32)?
            .sum_all()?
            .to_scalar::<u32>()?;
        Ok((out, u64::from(correct)))
    }

    /// Evaluation: mean cross-entropy (no smoothing) of logits = cos/τ and, for each k of `ks`, how many rows have
    /// their label among the k highest cosines (the rule of `train::topk_correct`).
    pub(crate) fn eval(
        &self,
        unit: &Tensor,
        tau: f64,
        labels: &Tensor,
        ks: &[usize],
    ) -> Result<(f64, Vec<u64>)> {
        let (n, _) = unit.dims2()?;
        let classes = self.classes();
        let host = check_labels(labels, n, classes, WHAT)?;
        let acc = unit.dtype();
        let dev = unit.device();
        let u = unit.to_dtype(self.gemm_rows().dtype())?;
        let label_f = Tensor::from_vec(
            host.iter().map(|&y| y as f32).collect::<Vec<_>>(),
            (n, 1),
            dev,
        )?;
        // Pass 1: the label's own cosine and the log-sum-exp of the logits. With one chunk (all classes at once)
        // its scores are kept for pass 2 instead of being computed twice.
        let single = self.chunk >= classes;
        let mut kept = None;
        let mut own = Tensor::zeros((n, 1), acc, dev)?;
        let mut lse_state: Option<(Tensor, Tensor)> = None;
        for (start, len) in self.spans() {
            let c = self.scores(&u, start, len, acc)?;
            if single {
                kept = Some(c.clone());
            }
            let inside: Vec<u8> = host
                .iter()
                .map(|&y| u8::from((start..start + len).contains(&(y as usize))))
                .collect();
            let local: Vec<u32> = host
                .iter()
                .map(|&y| (y as usize).saturating_sub(start).min(len - 1) as u32)
                .collect();
            let picked = c.gather(&Tensor::from_vec(local, (n, 1), dev)?, 1)?;
            own = Tensor::from_vec(inside, (n, 1), dev)?.where_cond(&picked, &own)?;
            let z = (&c / tau)?;
            let cmax = z.max_keepdim(D::Minus1)?;
            lse_state = Some(match lse_state {
                None => {
                    let s = z.broadcast_sub(&cmax)?.exp()?.sum_keepdim(D::Minus1)?;
                    (cmax, s)
                }
                Some((m, s)) => {
                    let m2 = m.maximum(&cmax)?;
                    let s = ((s * (m - &m2)?.exp()?)?
                        + z.broadcast_sub(&m2)?.exp()?.sum_keepdim(D::Minus1)?)?;
                    (m2, s)
                }
            });
        }
        let Some((m, s)) = lse_state else {
            bail!("chunked eval: no classes");
        };
        let lse = (m + s.log()?)?;
        let loss = (lse - (&own / tau)?)?
            .mean_all()?
            .to_dtype(DType::F64)?
            .to_scalar::<f64>()?;
        // Pass 2: rank = #{c : s_c > s_y or s_c is NaN} + #{c < y : s_c == s_y}.
        let mut rank = Tensor::zeros((n, 1), DType::U32, dev)?;
        for (start, len) in self.spans() {
            let c = match kept.take() {
                Some(c) => c,
                None => self.scores(&u, start, len, acc)?,
            };
            let ids = Tensor::arange(start as u32, (start + len) as u32, dev)?
                .to_dtype(DType::F32)?
                .unsqueeze(0)?;
            let above = c.broadcast_gt(&own)?;
            let nan = c.ne(&c)?;
            let tie_before = (c.broadcast_eq(&own)? * ids.broadcast_lt(&label_f)?)?;
            let ahead = ((above + nan)? + tie_before)?.to_dtype(DType::U32)?;
            rank = (rank + ahead.sum_keepdim(1)?)?;
        }
        let rank = rank.flatten_all()?.to_vec1::<u32>()?;
        let own = own.flatten_all()?.to_dtype(DType::F64)?.to_vec1::<f64>()?;
        let counts = ks
            .iter()
            .map(|&k| {
                rank.iter()
                    .zip(&own)
                    .filter(|&(&r, o)| !o.is_nan() && (r as usize) < k)
                    .count() as u64
            })
            .collect();
        Ok((loss, counts))
    }
}

/// Labels [N] of an integer dtype, each below `classes`; returned on the host. Errors start with `what`.
/// Shared with the cross-entropy of `train::loss`.
pub(crate) fn check_labels(
    labels: &Tensor,
    n: usize,
    classes: usize,
    what: &str,
) -> Result<Vec<i64>> {
    if labels.dims() != [n] {
        bail!("{what}: labels should be [{n}], got {:?}", labels.shape());
    }
    if !matches!(labels.dtype(), DType::U8 | DType::U32 | DType::I64) {
        bail!(
            "{what}: labels should be u8/u32/i64, got {:?}",
            labels.dtype()
        );
    }
    let host = labels.to_dtype(DType::I64)?.to_vec1::<i64>()?;
    if let Some((row, &bad)) = host
        .iter()
        .enumerate()
        .find(|&(_, &y)| y < 0 || y as u64 >= classes as u64)
    {
        bail!("{what}: label {bad} in row {row} is outside 0..{classes}");
    }
    Ok(host)
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Tensor, Var};

    use crate::model::head::Head;
    use crate::model::params::ParamStore;
    use crate::train::{hard_cross_entropy, topk_correct};

    const C: usize = 13;
    const D: usize = 5;
    const N: usize = 6;
    const F: usize = 7;

    /// A head over C unit rows (rows 3 and 9 identical, so their scores tie), features [N, F].
    fn setup(dtype: DType) -> (ParamStore, Head, Tensor) {
        let dev = Device::Cpu;
        let mut store = ParamStore::new(&dev, dtype, 11);
        let mut b: Vec<f64> = (0..C * D)
            .map(|i| ((i * 37 % 23) as f64 - 11.0) / 7.0 + 0.05)
            .collect();
        let (r3, r9) = (3 * D, 9 * D);
        for j in 0..D {
            b[r9 + j] = b[r3 + j];
        }
        let b = Tensor::from_vec(b, (C, D), &dev).unwrap();
        let b = b
            .broadcast_div(&b.sqr().unwrap().sum_keepdim(1).unwrap().sqrt().unwrap())
            .unwrap()
            .to_dtype(dtype)
            .unwrap();
        let head = Head::ebv(&mut store, F, &b, 0.07).unwrap();
        let f: Vec<f64> = (0..N * F)
            .map(|i| ((i * 5 % 11) as f64 - 5.0) / 3.0)
            .collect();
        let f = Tensor::from_vec(f, (N, F), &dev)
            .unwrap()
            .to_dtype(dtype)
            .unwrap();
        (store, head, f)
    }

    fn labels(v: &[u32]) -> Tensor {
        Tensor::new(v, &Device::Cpu).unwrap()
    }

    fn scalar(t: &Tensor) -> f64 {
        t.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap()
    }

    /// Loss value, top-1 hits and gradients (every parameter, then the features) of one path.
    fn train_pass(
        store: &ParamStore,
        head: &Head,
        f: &Tensor,
        y: &Tensor,
        y2: &Tensor,
        lambda: f64,
        eps: f64,
    ) -> (f64, u64, Vec<Vec<f64>>) {
        let fv = Var::from_tensor(f).unwrap();
        let (loss, hits) = if head.class_chunk().is_some() {
            head.chunked_loss(fv.as_tensor(), y, y2, lambda, eps)
                .unwrap()
        } else {
            let logits = head.logits(fv.as_tensor()).unwrap();
            let own = hard_cross_entropy(&logits, y, eps).unwrap();
            let other = hard_cross_entropy(&logits, y2, eps).unwrap();
            let loss = ((own * lambda).unwrap() + (other * (1.0 - lambda)).unwrap()).unwrap();
            let hits = topk_correct(&logits, y, &[1]).unwrap()[0];
            (loss, hits)
        };
        let grads = loss.backward().unwrap();
        let mut out = Vec::new();
        for e in store.trainable() {
            out.push(flat(grads.get(&e.var).unwrap()));
        }
        out.push(flat(grads.get(fv.as_tensor()).unwrap()));
        (scalar(&loss), hits, out)
    }

    fn flat(t: &Tensor) -> Vec<f64> {
        t.flatten_all()
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap()
            .to_vec1()
            .unwrap()
    }

    fn max_diff(a: &[Vec<f64>], b: &[Vec<f64>]) -> f64 {
        a.iter()
            .flatten()
            .zip(b.iter().flatten())
            .fold(0f64, |m, (x, y)| m.max((x - y).abs()))
    }

    #[test]
    fn chunked_training_loss_equals_the_full_head_f64() {
        let (store, mut head, f) = setup(DType::F64);
        let y = labels(&[0, 3, 12, 9, 5, 7]);
        let y2 = labels(&[7, 0, 3, 12, 9, 5]);
        for (lambda, eps) in [(1.0, 0.0), (1.0, 0.1), (0.3, 0.1), (0.65, 0.0)] {
            head.set_autograd_reference().unwrap();
            assert_eq!(head.class_chunk(), None);
            let want = train_pass(&store, &head, &f, &y, &y2, lambda, eps);
            for chunk in [1, 2, 4, 5, 12] {
                head.set_class_chunk(chunk).unwrap();
                assert_eq!(head.class_chunk(), Some(chunk));
                let got = train_pass(&store, &head, &f, &y, &y2, lambda, eps);
                assert!(
                    (got.0 - want.0).abs() < 1e-12,
                    "loss {} vs {} (chunk {chunk})",
                    got.0,
                    want.0
                );
                assert_eq!(got.1, want.1, "top-1 hits (chunk {chunk})");
                let d = max_diff(&got.2, &want.2);
                assert!(
                    d < 1e-12,
                    "gradients differ by {d} (chunk {chunk}, λ {lambda}, ε {eps})"
                );
            }
        }
        // 0, C or more: all classes in one chunk, still the closed form.
        for chunk in [0, C, C + 5] {
            head.set_class_chunk(chunk).unwrap();
            assert_eq!(head.class_chunk(), Some(C));
        }
    }

    /// The chunked loss's gradient with respect to the features against central differences.
    #[test]
    fn chunked_gradient_matches_finite_differences() {
        let (_store, mut head, f) = setup(DType::F64);
        head.set_class_chunk(4).unwrap();
        let y = labels(&[1, 3, 12, 9, 5, 7]);
        let y2 = labels(&[2, 2, 0, 11, 9, 4]);
        let loss = |x: &Tensor| scalar(&head.chunked_loss(x, &y, &y2, 0.7, 0.1).unwrap().0);
        let fv = Var::from_tensor(&f).unwrap();
        let (l, _) = head
            .chunked_loss(fv.as_tensor(), &y, &y2, 0.7, 0.1)
            .unwrap();
        let g = flat(l.backward().unwrap().get(fv.as_tensor()).unwrap());
        let base = flat(&f);
        let eps = 1e-6;
        for i in 0..base.len() {
            let at = |d: f64| {
                let mut v = base.clone();
                v[i] += d;
                loss(&Tensor::from_vec(v, (N, F), &Device::Cpu).unwrap())
            };
            let num = (at(eps) - at(-eps)) / (2.0 * eps);
            assert!(
                (num - g[i]).abs() <= 1e-6 * (1.0 + num.abs()),
                "[{i}] {} vs {num}",
                g[i]
            );
        }
    }

    #[test]
    fn chunked_eval_equals_the_full_head_including_ties() {
        let (_store, mut head, f) = setup(DType::F64);
        head.set_autograd_reference().unwrap();
        // Labels 3 and 9 tie (identical rows): 3 wins the tie, 9 ranks behind it.
        let y = labels(&[3, 9, 12, 0, 5, 9]);
        let scores = head.scores(&f).unwrap();
        let logits = head.logits(&f).unwrap();
        let want_loss = scalar(&hard_cross_entropy(&logits, &y, 0.0).unwrap());
        let want = topk_correct(&scores, &y, &[1, 2, 5]).unwrap();
        for chunk in [1, 3, 4, 9, 0] {
            head.set_class_chunk(chunk).unwrap();
            let (loss, got) = head.chunked_eval(&f, &y, &[1, 2, 5]).unwrap();
            assert!((loss - want_loss).abs() < 1e-12, "{loss} vs {want_loss}");
            assert_eq!(got, want, "chunk {chunk}");
            let full = head.scores(&f).unwrap();
            let d = max_diff(&[flat(&full)], &[flat(&scores)]);
            assert!(d < 1e-14, "cosines differ by {d}, chunk {chunk}");
        }
    }

    /// Mixed precision on the CPU (f16 GEMMs, f32 accumulation): chunked and full agree to 16-bit rounding.
    #[test]
    fn chunked_half_precision_agrees_with_the_full_head() {
        let (store, mut head, f) = setup(DType::F32);
        head.set_autograd_reference().unwrap();
        head.set_compute_dtype(DType::F16).unwrap();
        let f16 = f.to_dtype(DType::F16).unwrap();
        let y = labels(&[0, 3, 12, 9, 5, 7]);
        let y2 = labels(&[7, 0, 3, 12, 9, 5]);
        let want = train_pass(&store, &head, &f16, &y, &y2, 0.6, 0.1);
        head.set_class_chunk(5).unwrap();
        let got = train_pass(&store, &head, &f16, &y, &y2, 0.6, 0.1);
        assert!(
            (got.0 - want.0).abs() < 2e-2 * want.0.abs(),
            "{} vs {}",
            got.0,
            want.0
        );
        let scale = want.2.iter().flatten().fold(0f64, |m, v| m.max(v.abs()));
        let d = max_diff(&got.2, &want.2);
        assert!(d < 3e-2 * scale, "gradients differ by {d} (scale {scale})");
        // Switching back and forth keeps the compute dtype.
        head.set_autograd_reference().unwrap();
        let again = train_pass(&store, &head, &f16, &y, &y2, 0.6, 0.1);
        assert_eq!(again.0, want.0);
    }

    /// The head as built trains through the closed form: its backward pass gives the fixed basis no gradient
    /// (no [d, C] product), where candle's autograd on full logits computes one and drops it.
    #[test]
    fn the_default_head_computes_no_basis_gradient() {
        let (_store, mut head, f) = setup(DType::F64);
        assert_eq!(head.class_chunk(), Some(C));
        let y = labels(&[0, 3, 12, 9, 5, 7]);
        let fv = Var::from_tensor(&f).unwrap();
        let (loss, _) = head.chunked_loss(fv.as_tensor(), &y, &y, 1.0, 0.1).unwrap();
        let grads = loss.backward().unwrap();
        assert!(grads.get(fv.as_tensor()).is_some());
        let rows = head.basis_tensor().unwrap().clone();
        assert_eq!(rows.dims(), &[C, D]);
        assert!(grads.get(&rows).is_none(), "the basis got a gradient");
        head.set_autograd_reference().unwrap();
        let bt = head.basis_tensor().unwrap().clone();
        let logits = head.logits(fv.as_tensor()).unwrap();
        let grads = hard_cross_entropy(&logits, &y, 0.1)
            .unwrap()
            .backward()
            .unwrap();
        let g = grads
            .get(&bt)
            .expect("candle's matmul backward fills the basis gradient");
        assert_eq!(g.dims(), &[D, C]);
    }

    #[test]
    fn bad_labels_and_fc_heads_are_errors() {
        let (_store, mut head, f) = setup(DType::F64);
        head.set_class_chunk(4).unwrap();
        let bad = labels(&[0, 1, 2, 3, 4, 13]);
        let ok = labels(&[0, 1, 2, 3, 4, 5]);
        let e = head.chunked_loss(&f, &bad, &ok, 1.0, 0.0).unwrap_err();
        assert!(e.to_string().contains("label 13 in row 5"), "{e}");
        let e = head.chunked_eval(&f, &labels(&[0, 1]), &[1]).unwrap_err();
        assert!(e.to_string().contains("labels should be [6]"), "{e}");
        let mut store = ParamStore::new(&Device::Cpu, DType::F64, 1);
        let mut fc = Head::fc(&mut store, F, C).unwrap();
        assert!(fc.set_class_chunk(0).is_ok());
        assert!(fc
            .set_class_chunk(4)
            .unwrap_err()
            .to_string()
            .contains("ebv head"));
    }
}
