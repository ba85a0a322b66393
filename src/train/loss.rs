//! Classification losses with label smoothing, and top-k accuracy counts.
//!
//! Both losses equal `torch.nn.functional.cross_entropy(logits, target, label_smoothing=ε)` with
//! the default mean reduction, for probability targets and for class-index targets, and are
//! differentiable with candle's autograd (with respect to the logits; the max subtracted for
//! stability is detached, which leaves the gradient exactly `softmax − target'` per row / B).
//!
//! Invariants:
//! - every row is shifted by its (detached) max before `exp`, and the loss is formed from the
//!   shifted logits, so large logits neither overflow nor lose precision to cancellation;
//! - f16/bf16 logits are computed in f32 (the loss is then f32); other float dtypes keep theirs;
//! - the hard-label path never builds a one-hot: it gathers `z_y` and uses the row mean of `z`
//!   for the smoothing term, so it costs O(B·C) with no `[B, C]` target tensor;
//! - labels are checked to lie in `0..C` on the host (one small device-to-host copy, which syncs
//!   a GPU stream), because candle's gather silently reads `u32::MAX` as "fill with 0", and an
//!   out-of-range index should be an error here rather than whatever a device kernel does.

use candle_core::{bail, DType, Device, Result, Tensor, D};

use crate::model::check_labels;

/// Mean over the batch of the cross-entropy between `softmax(logits)` (`[B, C]`) and the soft
/// targets (`[B, C]`, rows summing to 1) after label smoothing `t' = (1−ε)·t + ε/C`.
///
/// `targets` are converted to the computation dtype. Rows that do not sum to 1 are not rejected
/// (PyTorch does not check either); the loss is then `Σ_c t'_c·(lse − z_c)` as written.
pub fn soft_cross_entropy(logits: &Tensor, targets: &Tensor, smoothing: f64) -> Result<Tensor> {
    let (_, classes) = check_logits(logits, smoothing)?;
    if targets.shape() != logits.shape() {
        bail!(
            "soft_cross_entropy: targets {:?} do not match logits {:?}",
            targets.shape(),
            logits.shape()
        )
    }
    let (shifted, lse) = shifted_lse(logits)?;
    let targets = targets.to_dtype(shifted.dtype())?;
    let targets = if smoothing != 0.0 {
        targets.affine(1.0 - smoothing, smoothing / classes as f64)?
    } else {
        targets
    };
    let log_probs = shifted.broadcast_sub(&lse)?;
    (targets * log_probs)?.sum(1)?.mean_all()?.neg()
}

/// Cross-entropy with class indices `labels` (`[B]`, u8/u32/i64) and label smoothing ε:
/// per row `(1−ε)·(lse − z_y) + ε·(lse − mean_c z_c)`, averaged over the batch.
pub fn hard_cross_entropy(logits: &Tensor, labels: &Tensor, smoothing: f64) -> Result<Tensor> {
    let (batch, classes) = check_logits(logits, smoothing)?;
    let index = label_index(
        labels,
        batch,
        classes,
        logits.device(),
        "hard_cross_entropy",
    )?;
    let (shifted, lse) = shifted_lse(logits)?;
    let picked = shifted.gather(&index, 1)?;
    let per_row = if smoothing != 0.0 {
        let mean = shifted.mean_keepdim(1)?;
        ((lse - picked.affine(1.0 - smoothing, 0.0)?)? - mean.affine(smoothing, 0.0)?)?
    } else {
        (lse - picked)?
    };
    per_row.mean_all()
}

/// For each `k` in `ks`, how many rows of `scores` (`[B, C]`) have their label (`[B]`) among the
/// k highest scores.
///
/// Rule, deterministic and independent of any sort: the label's rank is
/// `#{c : s_c > s_y or s_c is NaN} + #{c < y : s_c == s_y}`, and the row counts for k when
/// rank < k. So ties with the true class go to the lower class index (the order of a stable
/// descending sort), NaN scores rank above everything (as in `torch.topk`), and a row whose own
/// score is NaN is never correct. `k = 0` counts nothing; `k ≥ C` counts every row with a
/// non-NaN label score. (`torch.topk` leaves the order of ties unspecified, so under ties it may
/// disagree with this rule.)
///
/// Works on the scores' device with `[B, C]` byte masks; only B ranks come back to the host.
pub fn topk_correct(scores: &Tensor, labels: &Tensor, ks: &[usize]) -> Result<Vec<u64>> {
    let (batch, classes) = match scores.dims() {
        [b, c] => (*b, *c),
        dims => bail!("topk_correct: scores should be [B, C], got {dims:?}"),
    };
    if !scores.dtype().is_float() {
        bail!(
            "topk_correct: scores should be floats, got {:?}",
            scores.dtype()
        )
    }
    let index = label_index(labels, batch, classes, scores.device(), "topk_correct")?;
    if batch == 0 {
        return Ok(vec![0; ks.len()]);
    }
    let index = index.to_dtype(DType::U32)?;
    let own = scores.gather(&index, 1)?;
    let above = scores.broadcast_gt(&own)?;
    let nan = scores.ne(scores)?;
    let class_ids = Tensor::arange(0u32, classes as u32, scores.device())?.unsqueeze(0)?;
    let tie_before = (scores.broadcast_eq(&own)? * class_ids.broadcast_lt(&index)?)?;
    // The three masks are disjoint (comparisons with NaN are false), so the u8 sum is 0 or 1;
    // widen before summing over C.
    let ahead = ((above + nan)? + tie_before)?.to_dtype(DType::U32)?;
    let ranks = ahead.sum(1)?.to_vec1::<u32>()?;
    let own = own.flatten_all()?.to_dtype(DType::F64)?.to_vec1::<f64>()?;
    let counts = ks
        .iter()
        .map(|&k| {
            ranks
                .iter()
                .zip(&own)
                .filter(|&(&rank, s)| !s.is_nan() && (rank as usize) < k)
                .count() as u64
        })
        .collect();
    Ok(counts)
}

fn check_logits(logits: &Tensor, smoothing: f64) -> Result<(usize, usize)> {
    let (batch, classes) = match logits.dims() {
        [b, c] => (*b, *c),
        dims => bail!("cross_entropy: logits should be [B, C], got {dims:?}"),
    };
    if !logits.dtype().is_float() {
        bail!(
            "cross_entropy: logits should be floats, got {:?}",
            logits.dtype()
        )
    }
    if batch == 0 || classes == 0 {
        bail!("cross_entropy: empty logits {:?}", logits.shape())
    }
    if !(0.0..=1.0).contains(&smoothing) {
        bail!("cross_entropy: label smoothing {smoothing} is outside [0, 1]")
    }
    Ok((batch, classes))
}

/// Logits minus their detached row max, in the computation dtype, and log-sum-exp of those
/// shifted logits (`[B, 1]`). Every entry of the shifted logits is ≤ 0, so `exp` cannot overflow.
fn shifted_lse(logits: &Tensor) -> Result<(Tensor, Tensor)> {
    let z = match logits.dtype() {
        DType::F16 | DType::BF16 => logits.to_dtype(DType::F32)?,
        _ => logits.clone(),
    };
    let max = z.max_keepdim(D::Minus1)?.detach();
    let shifted = z.broadcast_sub(&max)?;
    let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    Ok((shifted, lse))
}

/// Checks `labels` (`[B]`, integer, values in `0..classes`) and returns them as a `[B, 1]`
/// gather index on `device`.
fn label_index(
    labels: &Tensor,
    batch: usize,
    classes: usize,
    device: &Device,
    what: &str,
) -> Result<Tensor> {
    check_labels(labels, batch, classes, what)?;
    labels.to_device(device)?.unsqueeze(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Var;

    // Reference from torch 2.15.0 (/tmp/torchenv/bin/python):
    //
    // import torch
    // torch.set_default_dtype(torch.float64)
    // Z = [[1.0, -0.5, 2.0, 0.0, 0.25], [-1.5, 3.0, 0.5, 0.5, -2.0], [1000.0, 1001.0, 998.0, 1000.5, 999.0]]
    // T = [[0.0, 0.0, 1.0, 0.0, 0.0], [0.1, 0.6, 0.0, 0.3, 0.0], [0.2, 0.2, 0.2, 0.2, 0.2]]
    // Y = [2, 1, 3]
    // for eps in (0.0, 0.1):
    //     for target in (torch.tensor(T), torch.tensor(Y)):
    //         z = torch.tensor(Z, requires_grad=True)
    //         loss = torch.nn.functional.cross_entropy(z, target, label_smoothing=eps)
    //         loss.backward()
    //         print(eps, target.dtype, loss.item(), z.grad.flatten().tolist())
    const Z: [[f64; 5]; 3] = [
        [1.0, -0.5, 2.0, 0.0, 0.25],
        [-1.5, 3.0, 0.5, 0.5, -2.0],
        [1000.0, 1001.0, 998.0, 1000.5, 999.0],
    ];
    const T: [[f64; 5]; 3] = [
        [0.0, 0.0, 1.0, 0.0, 0.0],
        [0.1, 0.6, 0.0, 0.3, 0.0],
        [0.2, 0.2, 0.2, 0.2, 0.2],
    ];
    const Y: [u32; 3] = [2, 1, 3];

    struct Reference {
        smoothing: f64,
        loss: f64,
        grad: [f64; 15],
    }

    const TORCH_SOFT: [Reference; 2] = [
        Reference {
            smoothing: 0.0,
            loss: 1.3339671123003474,
            grad: [
                0.06971082719673455,
                0.015554588036486898,
                -0.1438396585176012,
                0.02564518015273369,
                0.03292906313164607,
                -0.030200553490414037,
                0.0820038544556942,
                0.02314828600492981,
                -0.07685171399507018,
                0.0019001270248602802,
                -0.009882856703926225,
                0.08768773210572237,
                -0.0589818136621052,
                0.026954008650297345,
                -0.04577707038998833,
            ],
        },
        Reference {
            smoothing: 0.1,
            loss: 1.4389671123003476,
            grad: [
                0.06304416053006787,
                0.008887921369820228,
                -0.11717299185093455,
                0.01897851348606702,
                0.0262623964649794,
                -0.033533886823747375,
                0.09533718778902751,
                0.016481619338263143,
                -0.07351838066173687,
                -0.004766539641806386,
                -0.009882856703926225,
                0.08768773210572237,
                -0.0589818136621052,
                0.026954008650297345,
                -0.04577707038998833,
            ],
        },
    ];

    const TORCH_HARD: [Reference; 2] = [
        Reference {
            smoothing: 0.0,
            loss: 0.6673004456336806,
            grad: [
                0.06971082719673455,
                0.015554588036486898,
                -0.1438396585176012,
                0.02564518015273369,
                0.03292906313164607,
                0.0031327798429192947,
                -0.051329478877639126,
                0.02314828600492981,
                0.02314828600492981,
                0.0019001270248602802,
                0.05678380996274044,
                0.15435439877238905,
                0.0076848530045614686,
                -0.23971265801636932,
                0.020889596276678336,
            ],
        },
        Reference {
            smoothing: 0.1,
            loss: 0.8389671123003473,
            grad: [
                0.06304416053006787,
                0.008887921369820228,
                -0.11717299185093455,
                0.01897851348606702,
                0.0262623964649794,
                -0.003533886823747373,
                -0.024662812210972503,
                0.01648161933826314,
                0.01648161933826314,
                -0.004766539641806387,
                0.05011714329607377,
                0.14768773210572236,
                0.0010181863378948012,
                -0.21304599134970265,
                0.01422292961001167,
            ],
        },
    ];

    fn assert_close(got: &[f64], want: &[f64], tol: f64, what: &str) {
        assert_eq!(got.len(), want.len(), "{what}: length");
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!(
                (g - w).abs() <= tol * w.abs().max(1.0),
                "{what}[{i}]: got {g:e}, want {w:e}"
            );
        }
    }

    /// Loss value and d loss / d logits for `f` applied to the reference logits.
    fn loss_and_grad(f: impl Fn(&Tensor) -> Result<Tensor>) -> Result<(f64, Vec<f64>)> {
        let z = Var::from_tensor(&Tensor::new(&Z, &Device::Cpu)?)?;
        let loss = f(z.as_tensor())?;
        let grads = loss.backward()?;
        let Some(g) = grads.get(z.as_tensor()) else {
            bail!("no gradient for the logits")
        };
        Ok((loss.to_scalar::<f64>()?, g.flatten_all()?.to_vec1::<f64>()?))
    }

    // Measured against torch: ≤ 5e-16 (a few ulp; the order of the sums differs). 1e-14 leaves
    // room for other SIMD paths; a wrong smoothing or normalisation is off by ≥ 1e-3.
    const TOL: f64 = 1e-14;

    #[test]
    fn soft_cross_entropy_matches_torch() -> Result<()> {
        let targets = Tensor::new(&T, &Device::Cpu)?;
        for r in &TORCH_SOFT {
            let (loss, grad) = loss_and_grad(|z| soft_cross_entropy(z, &targets, r.smoothing))?;
            let what = format!("soft ε={}", r.smoothing);
            assert_close(&[loss], &[r.loss], TOL, &what);
            assert_close(&grad, &r.grad, TOL, &what);
        }
        Ok(())
    }

    #[test]
    fn hard_cross_entropy_matches_torch() -> Result<()> {
        for dtype in [DType::U32, DType::I64, DType::U8] {
            let labels = Tensor::new(&Y, &Device::Cpu)?.to_dtype(dtype)?;
            for r in &TORCH_HARD {
                let (loss, grad) = loss_and_grad(|z| hard_cross_entropy(z, &labels, r.smoothing))?;
                let what = format!("hard ε={} {dtype:?}", r.smoothing);
                assert_close(&[loss], &[r.loss], TOL, &what);
                assert_close(&grad, &r.grad, TOL, &what);
            }
        }
        Ok(())
    }

    #[test]
    fn hard_equals_soft_with_one_hot() -> Result<()> {
        let dev = Device::Cpu;
        let z = Tensor::new(&Z, &dev)?;
        let labels = Tensor::new(&Y, &dev)?;
        let mut one_hot = vec![0f64; 15];
        for (row, &y) in Y.iter().enumerate() {
            one_hot[row * 5 + y as usize] = 1.0;
        }
        let one_hot = Tensor::from_vec(one_hot, (3, 5), &dev)?;
        for eps in [0.0, 0.1, 0.5, 1.0] {
            let hard = hard_cross_entropy(&z, &labels, eps)?.to_scalar::<f64>()?;
            let soft = soft_cross_entropy(&z, &one_hot, eps)?.to_scalar::<f64>()?;
            assert_close(&[hard], &[soft], 1e-14, &format!("ε={eps}"));
        }
        Ok(())
    }

    #[test]
    fn large_logits_stay_finite_in_f32_and_half() -> Result<()> {
        let dev = Device::Cpu;
        // exp(1e4) overflows f32 and f16 without the max shift; the shifted form is exact here.
        let z = Tensor::new(&[[1e4f32, 1e4 - 2.0, 0.0], [-1e4, -1e4, -1e4]], &dev)?;
        let labels = Tensor::new(&[1u32, 2], &dev)?;
        // Row 1: lse − z_1 = 2 + ln(1 + e⁻²); row 2: ln 3.
        let want = ((2.0 + (1.0 + (-2.0f64).exp()).ln()) + 3f64.ln()) / 2.0;
        let loss = hard_cross_entropy(&z, &labels, 0.0)?;
        assert_eq!(loss.dtype(), DType::F32);
        assert_close(&[loss.to_scalar::<f32>()? as f64], &[want], 1e-6, "f32");
        let loss = hard_cross_entropy(&z.to_dtype(DType::BF16)?, &labels, 0.0)?;
        assert_eq!(loss.dtype(), DType::F32, "half logits are computed in f32");
        assert!(loss.to_scalar::<f32>()?.is_finite());
        let soft = Tensor::new(&[[0f32, 1.0, 0.0], [0.0, 0.0, 1.0]], &dev)?;
        let loss = soft_cross_entropy(&z.to_dtype(DType::F16)?, &soft, 0.0)?;
        assert!(loss.to_scalar::<f32>()?.is_finite());
        Ok(())
    }

    #[test]
    fn bad_inputs_are_errors() -> Result<()> {
        let dev = Device::Cpu;
        let z = Tensor::new(&Z, &dev)?;
        let err = |r: Result<Tensor>, needle: &str| match r {
            Ok(_) => panic!("expected an error with {needle}"),
            Err(e) => assert!(e.to_string().contains(needle), "{e} lacks {needle}"),
        };
        err(
            hard_cross_entropy(&z, &Tensor::new(&[0u32, 5, 1], &dev)?, 0.0),
            "label 5 in row 1 is outside 0..5",
        );
        err(
            hard_cross_entropy(&z, &Tensor::new(&[0i64, -1, 1], &dev)?, 0.0),
            "label -1",
        );
        err(
            hard_cross_entropy(&z, &Tensor::new(&[0u32, 1], &dev)?, 0.0),
            "labels should be [3]",
        );
        err(
            hard_cross_entropy(&z, &Tensor::new(&Y, &dev)?, 1.5),
            "outside [0, 1]",
        );
        err(
            soft_cross_entropy(&z, &Tensor::zeros((3, 4), DType::F64, &dev)?, 0.0),
            "do not match",
        );
        err(
            soft_cross_entropy(&z.flatten_all()?, &z.flatten_all()?, 0.0),
            "should be [B, C]",
        );
        Ok(())
    }

    #[test]
    fn topk_counts_with_ties() -> Result<()> {
        let dev = Device::Cpu;
        let nan = f32::NAN;
        let scores = Tensor::new(
            &[
                [0.1f32, 0.9, 0.3, 0.2], // label 1: rank 0
                [0.5, 0.1, 0.5, 0.4],    // label 2 ties class 0 (lower index first): rank 1
                [0.5, 0.1, 0.5, 0.4],    // label 0 wins the same tie: rank 0
                [0.7, 0.7, 0.7, 0.7],    // label 3, four-way tie: rank 3
                [0.2, nan, 0.1, 0.0],    // label 0, a NaN ranks above it: rank 1
                [0.2, nan, 0.1, 0.0],    // label 1, its own score is NaN: never correct
                [0.4, 0.3, 0.2, 0.1],    // label 3: rank 3
            ],
            &dev,
        )?;
        let labels = Tensor::new(&[1u32, 2, 0, 3, 0, 1, 3], &dev)?;
        // ranks 0, 1, 0, 3, 1, -, 3
        let counts = topk_correct(&scores, &labels, &[1, 2, 3, 4, 0, 100])?;
        assert_eq!(counts, [2, 4, 4, 6, 0, 6]);
        // Same answer in f64 and with i64 labels.
        let counts = topk_correct(
            &scores.to_dtype(DType::F64)?,
            &labels.to_dtype(DType::I64)?,
            &[1, 2, 3, 4],
        )?;
        assert_eq!(counts, [2, 4, 4, 6]);
        assert!(topk_correct(&scores, &Tensor::new(&[4u32; 7], &dev)?, &[1]).is_err());
        let empty = Tensor::zeros((0, 4), DType::F32, &dev)?;
        let none = Tensor::zeros(0, DType::U32, &dev)?;
        assert_eq!(topk_correct(&empty, &none, &[1, 5])?, [0, 0]);
        Ok(())
    }
}
