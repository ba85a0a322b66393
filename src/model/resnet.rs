//! ResNet-18/34/50 in torchvision's topology and names, written for
//! training.
//!
//! Invariants:
//! - torchvision v1.5 layout: the bottleneck's stride sits on its 3×3
//!   conv; a block downsamples through `downsample.0` (1×1 conv, stride)
//!   and `downsample.1` (BatchNorm) when its stride or width changes;
//! - tensor names equal torchvision's `state_dict()` keys at width 64 with
//!   the standard stem (ResNet-50: 267 tensors with the 53
//!   `num_batches_tracked` counters, 25,557,032 parameters with the fc);
//! - `width` scales every stage (64 → 64, 128, 256, 512 × expansion);
//!   `small_stem` replaces the 7×7/s2 conv + 3×3/s2 max-pool with a 3×3/s1
//!   conv for small images (CIFAR-style), under the same `conv1`/`bn1`
//!   names;
//! - the backbone ends with global average pooling: its output is
//!   [N, features].

use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};

use super::batchnorm::BatchNorm2d;
use super::conv::Conv2d;
use super::params::ParamStore;
use super::precision::is_half;
use super::ModelError;
use crate::kernels::{add_relu, channels_last, max_pool2d, max_pool2d_nhwc, KernelImpl};

/// Which ResNet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    Resnet18,
    Resnet34,
    Resnet50,
}

impl Arch {
    fn blocks(self) -> [usize; 4] {
        match self {
            Arch::Resnet18 => [2, 2, 2, 2],
            Arch::Resnet34 | Arch::Resnet50 => [3, 4, 6, 3],
        }
    }

    fn bottleneck(self) -> bool {
        matches!(self, Arch::Resnet50)
    }

    /// Output channels per unit of stage width.
    pub fn expansion(self) -> usize {
        if self.bottleneck() {
            4
        } else {
            1
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Arch::Resnet18 => "resnet18",
            Arch::Resnet34 => "resnet34",
            Arch::Resnet50 => "resnet50",
        }
    }
}

impl std::str::FromStr for Arch {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "resnet18" => Ok(Arch::Resnet18),
            "resnet34" => Ok(Arch::Resnet34),
            "resnet50" => Ok(Arch::Resnet50),
            _ => Err(format!(
                "unknown arch {s:?} (expected resnet18, resnet34 or resnet50)"
            )),
        }
    }
}

/// The backbone's shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResNetConfig {
    pub arch: Arch,
    /// Width of the first stage (torchvision: 64).
    pub width: usize,
    /// 3×3/s1 stem without max-pool, for small images.
    pub small_stem: bool,
}

impl ResNetConfig {
    /// Length of the pooled feature vector.
    pub fn features(&self) -> usize {
        self.width * 8 * self.arch.expansion()
    }
}

#[derive(Debug, Clone)]
struct Downsample {
    conv: Conv2d,
    bn: BatchNorm2d,
}

#[derive(Debug, Clone)]
struct Block {
    convs: Vec<Conv2d>,
    bns: Vec<BatchNorm2d>,
    downsample: Option<Downsample>,
    imp: KernelImpl,
}

impl Block {
    #[allow(clippy::too_many_arguments)]
    fn new(
        store: &mut ParamStore,
        name: &str,
        c_in: usize,
        planes: usize,
        stride: usize,
        bottleneck: bool,
        imp: KernelImpl,
    ) -> Result<Block, ModelError> {
        let expansion = if bottleneck { 4 } else { 1 };
        let c_out = planes * expansion;
        let mut convs = Vec::new();
        let mut bns = Vec::new();
        let mut add = |store: &mut ParamStore,
                       k: usize,
                       ci: usize,
                       co: usize,
                       kernel: usize,
                       s: usize|
         -> Result<(), ModelError> {
            convs.push(Conv2d::new(
                store,
                &format!("{name}.conv{k}"),
                ci,
                co,
                kernel,
                s,
                kernel / 2,
                imp,
            )?);
            bns.push(BatchNorm2d::new(store, &format!("{name}.bn{k}"), co, imp)?);
            Ok(())
        };
        if bottleneck {
            add(store, 1, c_in, planes, 1, 1)?;
            add(store, 2, planes, planes, 3, stride)?;
            add(store, 3, planes, c_out, 1, 1)?;
        } else {
            add(store, 1, c_in, planes, 3, stride)?;
            add(store, 2, planes, planes, 3, 1)?;
        }
        let downsample = if stride != 1 || c_in != c_out {
            Some(Downsample {
                conv: Conv2d::new(
                    store,
                    &format!("{name}.downsample.0"),
                    c_in,
                    c_out,
                    1,
                    stride,
                    0,
                    imp,
                )?,
                bn: BatchNorm2d::new(store, &format!("{name}.downsample.1"), c_out, imp)?,
            })
        } else {
            None
        };
        Ok(Block {
            convs,
            bns,
            downsample,
            imp,
        })
    }

    /// `nhwc`: x and every activation are channels-last (see [`channels_last`]).
    fn forward_t(&self, x: &Tensor, train: bool, nhwc: bool) -> candle_core::Result<Tensor> {
        let last = self.convs.len() - 1;
        let mut h = x.clone();
        for (i, (conv, bn)) in self.convs.iter().zip(&self.bns).enumerate() {
            h = bn.forward_layout(&conv.forward_layout(&h, nhwc)?, train, i != last, nhwc)?;
        }
        let identity = match &self.downsample {
            Some(d) => {
                d.bn.forward_layout(&d.conv.forward_layout(x, nhwc)?, train, false, nhwc)?
            }
            None => x.clone(),
        };
        add_relu(&h, &identity, self.imp)
    }
}

/// The backbone: stem, four stages, global average pool.
#[derive(Debug, Clone)]
pub struct ResNet {
    cfg: ResNetConfig,
    conv1: Conv2d,
    bn1: BatchNorm2d,
    stages: Vec<Vec<Block>>,
    imp: KernelImpl,
}

impl ResNet {
    pub fn new(
        store: &mut ParamStore,
        cfg: ResNetConfig,
        imp: KernelImpl,
    ) -> Result<ResNet, ModelError> {
        if cfg.width == 0 {
            return Err(ModelError::Build("width must be at least 1".into()));
        }
        let conv1 = if cfg.small_stem {
            Conv2d::new(store, "conv1", 3, cfg.width, 3, 1, 1, imp)?
        } else {
            Conv2d::new(store, "conv1", 3, cfg.width, 7, 2, 3, imp)?
        };
        let bn1 = BatchNorm2d::new(store, "bn1", cfg.width, imp)?;
        let bottleneck = cfg.arch.bottleneck();
        let expansion = cfg.arch.expansion();
        let mut c_in = cfg.width;
        let mut stages = Vec::with_capacity(4);
        for (s, &n) in cfg.arch.blocks().iter().enumerate() {
            let planes = cfg.width << s;
            let mut blocks = Vec::with_capacity(n);
            for b in 0..n {
                let stride = if s > 0 && b == 0 { 2 } else { 1 };
                blocks.push(Block::new(
                    store,
                    &format!("layer{}.{b}", s + 1),
                    c_in,
                    planes,
                    stride,
                    bottleneck,
                    imp,
                )?);
                c_in = planes * expansion;
            }
            stages.push(blocks);
        }
        Ok(ResNet {
            cfg,
            conv1,
            bn1,
            stages,
            imp,
        })
    }

    pub fn config(&self) -> &ResNetConfig {
        &self.cfg
    }

    /// Pooled features [N, features] of images [N, 3, H, W].
    ///
    /// Where [`channels_last`] holds (CUDA), the images are transposed to [N, H, W, 3] once and every activation
    /// stays channels-last, the layout of cuDNN's tensor-core convolutions; the parameters keep PyTorch's layout
    /// either way, so checkpoints do not depend on it.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        let nhwc = channels_last(x.device(), x.dtype(), self.imp);
        let x = if nhwc {
            x.permute((0, 2, 3, 1))?.contiguous()?
        } else {
            x.clone()
        };
        let mut h =
            self.bn1
                .forward_layout(&self.conv1.forward_layout(&x, nhwc)?, train, true, nhwc)?;
        if !self.cfg.small_stem {
            h = if nhwc {
                max_pool2d_nhwc(&h, 3, 2, 1)?
            } else {
                max_pool2d(&h, 3, 2, 1, self.imp)?
            };
        }
        for stage in &self.stages {
            for block in stage {
                h = block.forward_t(&h, train, nhwc)?;
            }
        }
        let spatial = if nhwc { (1, 2) } else { (2, 3) };
        // A 16-bit mean over 49 (or 1024) values loses digits: pool in f32.
        if is_half(h.dtype()) {
            h.to_dtype(DType::F32)?.mean(spatial)?.to_dtype(h.dtype())
        } else {
            h.mean(spatial)
        }
    }
}
