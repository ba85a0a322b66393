//! Backbone + head: the whole trainable model, with its parameter store.

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use super::head::{Head, HeadKind};
use super::params::ParamStore;
use super::precision::{cast, Precision};
use super::resnet::{ResNet, ResNetConfig};
use super::ModelError;
use crate::kernels::KernelImpl;

/// Everything that fixes the model's tensors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelSpec {
    pub backbone: ResNetConfig,
    pub head: HeadKind,
    pub classes: usize,
    /// EBV dimension d (the basis's columns); None for FC.
    pub dim: Option<usize>,
    /// EBV temperature.
    pub tau: f64,
}

pub struct Classifier {
    pub store: ParamStore,
    spec: ModelSpec,
    /// The activations' dtype (the parameters' unless mixed precision).
    compute: DType,
    backbone: ResNet,
    head: Head,
}

impl Classifier {
    /// Build with seeded initialisation. `basis` ([C, d]) is required for
    /// the EBV head and must agree with `spec`.
    pub fn new(
        spec: &ModelSpec,
        basis: Option<&Tensor>,
        device: &Device,
        seed: u64,
        imp: KernelImpl,
    ) -> Result<Classifier, ModelError> {
        Classifier::with_dtype(spec, basis, device, DType::F32, seed, imp)
    }

    /// [`Classifier::new`] with parameters of `dtype` (f64 for reference
    /// checks).
    pub fn with_dtype(
        spec: &ModelSpec,
        basis: Option<&Tensor>,
        device: &Device,
        dtype: DType,
        seed: u64,
        imp: KernelImpl,
    ) -> Result<Classifier, ModelError> {
        let mut store = ParamStore::new(device, dtype, seed);
        let backbone = ResNet::new(&mut store, spec.backbone, imp)?;
        let features = spec.backbone.features();
        let head = match spec.head {
            HeadKind::Ebv => {
                let basis = basis
                    .ok_or_else(|| ModelError::Build("the ebv head needs a basis matrix".into()))?;
                let (c, d) = basis.dims2()?;
                if c != spec.classes {
                    return Err(ModelError::Build(format!(
                        "the basis has {c} rows but the data has {} classes",
                        spec.classes
                    )));
                }
                if let Some(want) = spec.dim {
                    if want != d {
                        return Err(ModelError::Build(format!(
                            "the basis has d = {d} but the recipe asks for dim = {want}"
                        )));
                    }
                }
                Head::ebv(&mut store, features, basis, spec.tau)?
            }
            HeadKind::Fc => Head::fc(&mut store, features, spec.classes)?,
        };
        Ok(Classifier {
            store,
            spec: spec.clone(),
            compute: dtype,
            backbone,
            head,
        })
    }

    pub fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    /// Compute in `precision` from now on (parameters keep their dtype).
    /// bf16 needs a CUDA device: candle's CPU matmul has no bf16.
    pub fn set_precision(&mut self, precision: Precision) -> candle_core::Result<()> {
        precision
            .check_device(self.store.device())
            .map_err(candle_core::Error::Msg)?;
        let dtype = match precision {
            Precision::F32 => self.store.dtype(),
            p => p.compute_dtype(),
        };
        self.set_compute_dtype(dtype)
    }

    /// The activations' dtype; [`Classifier::set_precision`] is the public
    /// way to choose it. Tests use f16 here to run the mixed-precision
    /// path on the CPU.
    pub(crate) fn set_compute_dtype(&mut self, dtype: DType) -> candle_core::Result<()> {
        self.compute = dtype;
        self.head.set_compute_dtype(dtype)
    }

    fn compute_dtype(&self) -> DType {
        self.compute
    }

    pub fn head(&self) -> &Head {
        &self.head
    }

    /// Score the EBV head `chunk` classes at a time (0: all at once); see
    /// [`Head::set_class_chunk`].
    pub fn set_class_chunk(&mut self, chunk: usize) -> candle_core::Result<()> {
        self.head.set_class_chunk(chunk)
    }

    /// Pooled features, in the compute dtype.
    pub fn features_t(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        self.backbone
            .forward_t(&cast(x, self.compute_dtype())?, train)
    }

    /// Logits [N, C] for the loss (f32 under mixed precision).
    pub fn forward_t(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        self.head.logits(&self.features_t(x, train)?)
    }

    /// Eval-mode scores [N, C]: cosines (EBV) or logits (FC), plus the logits.
    pub fn scores_and_logits(&self, x: &Tensor) -> candle_core::Result<(Tensor, Tensor)> {
        let f = self.features_t(x, false)?;
        let scores = self.head.scores(&f)?;
        let logits = match self.head.kind() {
            HeadKind::Ebv => (&scores / self.spec.tau)?,
            HeadKind::Fc => scores.clone(),
        };
        Ok((scores, logits))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::model::{Arch, ParamKind};

    /// The closed-form weights of `tests/peers/torchvision_forward.py`.
    fn fill(name: &str, dims: &[usize]) -> Vec<f64> {
        let k = name.bytes().map(u64::from).sum::<u64>() % 997;
        let n: usize = dims.iter().product();
        (0..n)
            .map(|i| {
                let base = (0.37 * i as f64 + 1.3 * k as f64).sin();
                if name.ends_with("running_var") {
                    0.5 + 0.25 * (1.0 + base)
                } else if name.ends_with("running_mean") {
                    0.1 * base
                } else if dims.len() == 4 {
                    let fan_in = (dims[1] * dims[2] * dims[3]) as f64;
                    (2.0 / fan_in).sqrt() * 1.5 * base
                } else if name.ends_with("bn1.weight")
                    || name.contains(".bn")
                    || name.contains("downsample.1")
                {
                    if name.ends_with("weight") {
                        1.0 + 0.2 * base
                    } else {
                        0.1 * base
                    }
                } else {
                    0.05 * base
                }
            })
            .collect()
    }

    fn check(arch: Arch, train: &[f64], rm: &[f64], eval: &[f64]) {
        // f64: train-mode BatchNorm over 8 values per channel (layer4 at
        // batch 2) amplifies f32 rounding far beyond any useful tolerance.
        for imp in [KernelImpl::Ebv, KernelImpl::Candle] {
            check_with(arch, imp, train, rm, eval);
        }
    }

    /// torchvision's `resnetNN(num_classes=classes)`: full width, 7×7 stem, FC head.
    fn fc_spec(arch: Arch, classes: usize) -> ModelSpec {
        ModelSpec {
            backbone: ResNetConfig {
                arch,
                width: 64,
                small_stem: false,
            },
            head: HeadKind::Fc,
            classes,
            dim: None,
            tau: 0.07,
        }
    }

    fn check_with(arch: Arch, imp: KernelImpl, train: &[f64], rm: &[f64], eval: &[f64]) {
        let spec = fc_spec(arch, 10);
        let model = Classifier::with_dtype(&spec, None, &Device::Cpu, DType::F64, 0, imp).unwrap();
        let mut tensors = HashMap::new();
        for e in model.store.entries() {
            if e.name.ends_with("num_batches_tracked") {
                continue;
            }
            let v: Vec<f64> = fill(&e.name, e.var.dims());
            let t = Tensor::from_vec(v, e.var.dims(), &Device::Cpu).unwrap();
            tensors.insert(e.name.clone(), t);
        }
        model
            .store
            .load(&tensors, std::path::Path::new("formula"), false)
            .unwrap();
        let x: Vec<f64> = (0..2 * 3 * 64 * 64)
            .map(|i| (0.05 * i as f64).sin())
            .collect();
        let x = Tensor::from_vec(x, (2, 3, 64, 64), &Device::Cpu).unwrap();
        let close = |got: &[f64], want: &[f64], what: &str| {
            let scale = want.iter().fold(1.0f64, |m, v| m.max(v.abs()));
            for (i, (g, w)) in got.iter().zip(want).enumerate() {
                assert!(
                    (g - w).abs() <= 1e-7 * scale,
                    "{imp:?} {what}[{i}]: {g} vs torchvision {w}"
                );
            }
            assert_eq!(got.len(), want.len());
        };
        let y = model.forward_t(&x, true).unwrap();
        close(
            &y.flatten_all().unwrap().to_vec1().unwrap(),
            train,
            "train logits",
        );
        let e = model.store.get("layer4.1.bn1.running_mean").unwrap();
        let got: Vec<f64> = e
            .var
            .as_tensor()
            .narrow(0, 0, 4)
            .unwrap()
            .to_vec1()
            .unwrap();
        close(&got, rm, "running_mean");
        assert_eq!(e.kind, ParamKind::Buffer);
        let y = model.forward_t(&x, false).unwrap();
        close(
            &y.flatten_all().unwrap().to_vec1().unwrap(),
            eval,
            "eval logits",
        );
    }

    // Values from `python tests/peers/torchvision_forward.py resnet18`
    // (torch 2.15.0, torchvision 0.29.2, float64).
    #[test]
    fn resnet18_matches_torchvision() {
        check(
            Arch::Resnet18,
            &[
                1.5287709758,
                1.7749262864,
                0.5581176527,
                -1.1026905815,
                -1.8234995647,
                -1.0019702612,
                0.6832920874,
                1.8341812441,
                1.4906298775,
                -0.0738048584,
                0.94013572,
                3.0079424892,
                2.5923313139,
                0.0491891594,
                -2.507258564,
                -2.9554836236,
                -0.9232324675,
                1.9042179748,
                3.1792649395,
                1.835900749,
            ],
            &[0.0298864324, 0.040594788, 0.0764000488, 0.0947010864],
            &[
                23.5546955024,
                19.8130297195,
                -0.32007764,
                -20.1703832025,
                -23.3001156944,
                -7.1132918561,
                14.9950433059,
                24.7244863255,
                14.0152905768,
                -8.2802971878,
                23.456049889,
                19.7474736904,
                -0.2982893945,
                -20.0792828074,
                -23.21509856,
                -7.104718838,
                14.92007711,
                24.6280235345,
                13.9771645625,
                -8.2285330332,
            ],
        );
    }

    // Values from `python tests/peers/torchvision_forward.py resnet50`.
    #[test]
    fn resnet50_matches_torchvision() {
        check(
            Arch::Resnet50,
            &[
                -4.9575004425,
                4.2640152776,
                -1.8722496375,
                -1.1621989799,
                3.8794391711,
                -4.9123052311,
                4.1963251373,
                -1.6823806365,
                -1.3716655706,
                3.9531446213,
                -6.3106641888,
                6.713858353,
                -4.4602799533,
                0.5514612384,
                3.7106123049,
                -6.3543646073,
                6.6850703312,
                -4.2440992488,
                0.2607634794,
                3.8886869926,
            ],
            &[-0.1603693641, 0.0410082467, 0.2700259802, -0.2181537835],
            &[
                -445.015225924,
                1743.1735852884,
                -2359.2916935564,
                2052.4354359825,
                -942.4338687553,
                -536.1249239288,
                1805.0998880904,
                -2367.6799956037,
                2004.0321406887,
                -856.2499929923,
                -376.564084858,
                1486.5341407334,
                -2014.8731838413,
                1754.9903356807,
                -808.3364788545,
                -454.4094930666,
                1539.5424981026,
                -2022.1789981546,
                1713.7635296943,
                -734.780294406,
            ],
        );
    }

    /// Mean cross-entropy, written out so this module needs no `train`.
    fn cross_entropy(logits: &Tensor, y: &Tensor) -> Tensor {
        let m = logits.max_keepdim(1).unwrap();
        let lse = (logits
            .broadcast_sub(&m)
            .unwrap()
            .exp()
            .unwrap()
            .sum_keepdim(1)
            .unwrap()
            .log()
            .unwrap()
            + m)
            .unwrap();
        let picked = logits.gather(&y.unsqueeze(1).unwrap(), 1).unwrap();
        (lse - picked).unwrap().mean_all().unwrap()
    }

    /// One full ResNet-50 training step (torchvision's layout, train-mode
    /// BatchNorm, cross-entropy) through ebv's kernels and through candle's
    /// own ops, from the same weights and batch: in f64 the two agree to
    /// 1e-9 in the loss and in the gradient of every one of the 161
    /// parameter tensors; in f32 ebv's step is as close to the f64 step as
    /// candle's own f32 step is. (The forward values are checked against
    /// torchvision in f64 above; this covers the backward of the whole net.)
    ///
    /// The f32 tolerance is relative because f32 gradients of a freshly
    /// initialised ResNet-50 are only accurate to a few percent: train-mode
    /// BatchNorm's backward subtracts per-channel means, and 53 of them in
    /// a row amplify rounding (measured here: median error 2–3% against
    /// f64 for both candle and ebv, worst 4–5%, at batch 4 or 8 alike).
    #[test]
    fn resnet50_step_matches_candle_ops() {
        let dev = Device::Cpu;
        let spec = fc_spec(Arch::Resnet50, 10);
        // 64×64 keeps 2×2 maps in layer4.
        let x: Vec<f64> = (0..4 * 3 * 64 * 64)
            .map(|i| (0.37 * i as f64).sin() + 0.1 * (0.011 * i as f64).cos())
            .collect();
        let x = Tensor::from_vec(x, (4, 3, 64, 64), &dev).unwrap();
        let y = Tensor::new(&[0u32, 3, 9, 3], &dev).unwrap();
        let f32_model = Classifier::with_dtype(&spec, None, &dev, DType::F32, 5, KernelImpl::Ebv);
        let weights: HashMap<String, Tensor> = f32_model
            .unwrap()
            .store
            .entries()
            .iter()
            .filter(|e| !e.name.ends_with("num_batches_tracked"))
            .map(|e| (e.name.clone(), e.var.as_tensor().clone()))
            .collect();
        // (loss, [(name, gradient)]) of one step from `weights`, as f64.
        let step = |imp: KernelImpl, dtype: DType| {
            let m = Classifier::with_dtype(&spec, None, &dev, dtype, 0, imp).unwrap();
            let w: HashMap<String, Tensor> = weights
                .iter()
                .map(|(k, v)| (k.clone(), v.to_dtype(dtype).unwrap()))
                .collect();
            m.store
                .load(&w, std::path::Path::new("f32 weights"), false)
                .unwrap();
            let logits = m.forward_t(&x.to_dtype(dtype).unwrap(), true).unwrap();
            let loss = cross_entropy(&logits, &y);
            let grads = loss.backward().unwrap();
            let as_f64 = |t: &Tensor| {
                let t = t.flatten_all().unwrap().to_dtype(DType::F64).unwrap();
                t.to_vec1::<f64>().unwrap()
            };
            let gs: Vec<(String, Vec<f64>)> = m
                .store
                .trainable()
                .map(|e| {
                    let g = grads.get(e.var.as_tensor()).unwrap();
                    (e.name.clone(), as_f64(g))
                })
                .collect();
            (as_f64(&loss)[0], gs)
        };
        let norm = |v: &[f64]| v.iter().map(|a| a * a).sum::<f64>().sqrt();
        // Relative L2 error of each parameter's gradient, sorted.
        let errors = |run: &[(String, Vec<f64>)], reference: &[(String, Vec<f64>)]| {
            assert_eq!(run.len(), reference.len());
            let mut errs: Vec<f64> = run
                .iter()
                .zip(reference)
                .map(|((name, g), (name_r, r))| {
                    assert_eq!(name, name_r);
                    let d: Vec<f64> = g.iter().zip(r).map(|(a, b)| a - b).collect();
                    norm(&d) / norm(r).max(1e-300)
                })
                .collect();
            errs.sort_by(f64::total_cmp);
            errs
        };
        let (loss_ref, reference) = step(KernelImpl::Candle, DType::F64);
        assert!(
            reference.len() >= 161,
            "{} trainable tensors",
            reference.len()
        );
        let (loss64, ebv64) = step(KernelImpl::Ebv, DType::F64);
        let e64 = errors(&ebv64, &reference);
        assert!(
            (loss64 - loss_ref).abs() < 1e-9 * loss_ref,
            "f64 loss {loss64} vs {loss_ref}"
        );
        assert!(
            e64[e64.len() - 1] < 1e-9,
            "f64 gradients differ by {:e}",
            e64[e64.len() - 1]
        );

        let (loss_e, ebv) = step(KernelImpl::Ebv, DType::F32);
        let (loss_c, candle) = step(KernelImpl::Candle, DType::F32);
        let (ee, ec) = (errors(&ebv, &reference), errors(&candle, &reference));
        let (median, max) = (|e: &[f64]| e[e.len() / 2], |e: &[f64]| e[e.len() - 1]);
        assert!(
            (loss_e - loss_ref).abs() < 1e-4 * loss_ref,
            "f32 loss {loss_e} vs f64 {loss_ref} (candle's f32: {loss_c})"
        );
        assert!(
            median(&ee) < 2.0 * median(&ec) && max(&ee) < 2.0 * max(&ec) && max(&ee) < 0.1,
            "f32 gradient errors against f64: ebv median {:e} max {:e}, candle median {:e} max {:e}",
            median(&ee),
            max(&ee),
            median(&ec),
            max(&ec)
        );
    }

    /// Names, order and shapes equal torchvision's `state_dict()`
    /// (`tests/data/torchvision-*.tsv`, written by `tests/peers/`'s
    /// snippet: `for k, v in resnet50(num_classes=1000).state_dict().items()`).
    #[test]
    fn state_dict_layout_is_torchvisions() {
        for (arch, file) in [
            (Arch::Resnet18, "torchvision-resnet18.tsv"),
            (Arch::Resnet50, "torchvision-resnet50.tsv"),
        ] {
            let spec = fc_spec(arch, 1000);
            let model = Classifier::new(&spec, None, &Device::Cpu, 0, KernelImpl::Ebv).unwrap();
            let text = std::fs::read_to_string(
                std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("tests/data")
                    .join(file),
            )
            .unwrap();
            let want: Vec<(String, Vec<usize>)> = text
                .lines()
                .map(|l| {
                    let (n, s) = l.split_once('\t').unwrap();
                    let dims = s
                        .split(',')
                        .filter(|x| !x.is_empty())
                        .map(|x| x.parse().unwrap())
                        .collect();
                    (n.to_string(), dims)
                })
                .collect();
            let got: Vec<(String, Vec<usize>)> = model
                .store
                .entries()
                .iter()
                .map(|e| (e.name.clone(), e.var.dims().to_vec()))
                .collect();
            assert_eq!(got, want, "{file}");
        }
        // ResNet-50's parameter count (torchvision: 25,557,032).
        let spec = fc_spec(Arch::Resnet50, 1000);
        let m = Classifier::new(&spec, None, &Device::Cpu, 0, KernelImpl::Ebv).unwrap();
        assert_eq!(m.store.num_parameters(), 25_557_032);
    }

    /// 16-bit mixed precision against the f32 pass on the same weights and
    /// batch (the f32 pass is the reference checked against torchvision
    /// above): logits and every parameter's gradient agree to 16-bit
    /// precision, gradients and running statistics stay f32, and the
    /// master weights are untouched by the casts. Run in f16, the CPU's
    /// 16-bit matmul; bf16 takes the same casts on CUDA.
    #[test]
    fn half_mixed_precision_tracks_the_f32_pass() {
        let dev = Device::Cpu;
        let spec = ModelSpec {
            backbone: ResNetConfig {
                arch: Arch::Resnet18,
                width: 8,
                small_stem: true,
            },
            head: HeadKind::Ebv,
            classes: 6,
            dim: Some(16),
            tau: 0.07,
        };
        // Seeded uniform(-1, 1) values (xorshift), so the test is deterministic.
        let wave = |n: usize, seed: u32| -> Vec<f32> {
            let mut state = seed.wrapping_mul(2_654_435_761) | 1;
            (0..n)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 17;
                    state ^= state << 5;
                    state as f32 / u32::MAX as f32 * 2.0 - 1.0
                })
                .collect()
        };
        let basis = Tensor::from_vec(wave(96, 11), (6, 16), &dev).unwrap();
        let norm = basis.sqr().unwrap().sum_keepdim(1).unwrap().sqrt().unwrap();
        let basis = basis.broadcast_div(&norm).unwrap();
        let x = Tensor::from_vec(wave(4 * 3 * 32 * 32, 12), (4, 3, 32, 32), &dev).unwrap();
        let y = Tensor::new(&[0u32, 3, 5, 1], &dev).unwrap();
        let run = |compute: DType| {
            let mut m = Classifier::new(&spec, Some(&basis), &dev, 7, KernelImpl::Ebv).unwrap();
            m.set_compute_dtype(compute).unwrap();
            let logits = m.forward_t(&x, true).unwrap();
            assert_eq!(logits.dtype(), DType::F32, "{compute:?} logits");
            // f16 (unlike bf16) flushes small gradients to zero: scale the
            // loss as f16 training must (the same factor in both runs).
            let loss = (cross_entropy(&logits, &y) * 1024.0).unwrap();
            let grads = loss.backward().unwrap();
            let mut out = Vec::new();
            for e in m.store.trainable() {
                assert_eq!(e.var.dtype(), DType::F32, "{} master weight", e.name);
                let g = grads.get(e.var.as_tensor()).unwrap();
                assert_eq!(g.dtype(), DType::F32, "{} gradient", e.name);
                out.push((
                    e.name.clone(),
                    g.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                ));
            }
            let rm = m.store.get("layer4.1.bn2.running_var").unwrap();
            assert_eq!(rm.var.dtype(), DType::F32);
            let rm = rm.var.as_tensor().to_vec1::<f32>().unwrap();
            (
                logits.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                out,
                rm,
            )
        };
        let (l32, g32, rm32) = run(DType::F32);
        let (l16, g16, rm16) = run(DType::F16);
        let rel = |a: &[f32], b: &[f32]| {
            let num: f32 = a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum();
            let den: f32 = b.iter().map(|y| y * y).sum();
            (num / den.max(1e-30)).sqrt()
        };
        // f16 keeps 11 bits (~0.05% per value), bf16 8; through 18 layers
        // a few percent of drift is allowed, a wrong cast would be O(1).
        assert!(rel(&l16, &l32) < 0.05, "logits {}", rel(&l16, &l32));
        assert!(
            rel(&rm16, &rm32) < 0.05,
            "running var {}",
            rel(&rm16, &rm32)
        );
        // Gradients: candle's CPU f16 convolutions accumulate in 16 bits,
        // so deep sums drift by ~10-20% in norm (cuDNN and cuBLAS
        // accumulate bf16 in f32 on the GPU); the direction must hold. A
        // missing or wrong cast gives unrelated gradients (cosine ≈ 0) or
        // none at all.
        let cosine = |a: &[f32], b: &[f32]| {
            let dot: f64 = a
                .iter()
                .zip(b)
                .map(|(x, y)| f64::from(*x) * f64::from(*y))
                .sum();
            let na: f64 = a.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
            let nb: f64 = b.iter().map(|y| f64::from(*y).powi(2)).sum::<f64>().sqrt();
            dot / (na * nb).max(1e-30)
        };
        let mut worst = (1.0f64, String::new());
        for ((name, a), (_, b)) in g16.iter().zip(&g32) {
            let c = cosine(a, b);
            if c < worst.0 {
                worst = (c, name.clone());
            }
        }
        let all =
            |g: &[(String, Vec<f32>)]| g.iter().flat_map(|(_, v)| v.clone()).collect::<Vec<_>>();
        let total = cosine(&all(&g16), &all(&g32));
        assert!(worst.0 > 0.9, "gradient of {}: cosine {}", worst.1, worst.0);
        // Measured here: worst tensor 0.961 (bn1.bias), whole gradient 0.993.
        assert!(total > 0.98, "whole gradient: cosine {total}");
        // And it is really computed in 16 bits: not bit-equal to f32.
        assert_ne!(l16, l32);
        let mut m = Classifier::new(&spec, Some(&basis), &dev, 7, KernelImpl::Ebv).unwrap();
        let e = m.set_precision(Precision::Bf16).unwrap_err();
        assert!(e.to_string().contains("CUDA"), "{e}");
    }
}
