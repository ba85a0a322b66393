//! The paper's transforms: RandomResizedCrop, horizontal flip, normalise,
//! RandomErasing per sample; mixup or cutmix per batch; resize + centre
//! crop for evaluation.
//!
//! Invariants:
//! - the parameter functions follow torchvision's algorithms (cited per
//!   function) and draw every random number from the [`SampleRng`] they
//!   are given, in a fixed order (crop, flip, erase), so a sample's
//!   transform depends only on its (seed, epoch, index);
//! - [`Renderer::render`] writes each output pixel exactly once, into the
//!   caller's f32 CHW slot: crop + resize go to a small per-worker u8
//!   scratch (L2-sized), then one pass converts, flips and normalises into
//!   the slot. The order resize-in-u8 → to-f32 → normalise is torchvision's
//!   (PIL resize, `ToTensor`, `Normalize`). An uncropped image of the output
//!   size skips the resize and is converted straight from its source slice
//!   (for raw shards, the memory map).

use fast_image_resize as fir;
use serde::{Deserialize, Serialize};

use super::chw::write_chw;
use super::rng::SampleRng;

/// ImageNet mean and standard deviation (torchvision's usual constants).
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// Largest output side the loader renders: `ebv-pack`'s cap, so every
/// tool refuses the same sizes instead of aborting on a batch buffer of
/// hundreds of GB.
pub const MAX_SIDE: u32 = 8192;

/// Which transforms run, with their parameters. Each switch maps to one
/// entry of the recipe file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Augment {
    /// Output side: batches are `size`×`size`.
    pub size: u32,
    /// RandomResizedCrop (train). When off, the eval path (resize + centre
    /// crop) is used.
    pub random_resized_crop: bool,
    /// Area fraction range of the crop (torchvision: 0.08–1).
    pub scale: (f64, f64),
    /// Aspect ratio range of the crop (torchvision: 3/4–4/3).
    pub ratio: (f64, f64),
    /// Probability of a horizontal flip.
    pub flip_p: f64,
    /// Eval: the shorter side is resized to this, then the centre
    /// `size`×`size` is cut. 0 means `size` (for `size`×`size` shards the
    /// identity).
    pub eval_resize: u32,
    pub mean: [f32; 3],
    pub std: [f32; 3],
    /// RandomErasing probability (0 = off); scale 0.02–0.33, ratio
    /// 0.3–3.3, value 0, torchvision's defaults.
    pub erasing_p: f64,
    /// Mixup Beta(α, α); None = off.
    pub mixup_alpha: Option<f64>,
    /// CutMix Beta(α, α); None = off. With both on, one of the two is
    /// picked per batch with probability 1/2 (torchvision's `RandomChoice`).
    pub cutmix_alpha: Option<f64>,
}

impl Default for Augment {
    fn default() -> Self {
        Augment::train(224)
    }
}

impl Augment {
    /// The paper's training recipe at output side `size`.
    pub fn train(size: u32) -> Augment {
        Augment {
            size,
            random_resized_crop: true,
            scale: (0.08, 1.0),
            ratio: (3.0 / 4.0, 4.0 / 3.0),
            flip_p: 0.5,
            eval_resize: 0,
            mean: IMAGENET_MEAN,
            std: IMAGENET_STD,
            erasing_p: 0.1,
            mixup_alpha: Some(0.2),
            cutmix_alpha: Some(1.0),
        }
    }

    /// Evaluation: resize the shorter side to `resize` (0 = `size`), centre
    /// crop `size`, normalise. Nothing random.
    pub fn eval(size: u32, resize: u32) -> Augment {
        Augment {
            random_resized_crop: false,
            flip_p: 0.0,
            eval_resize: resize,
            erasing_p: 0.0,
            mixup_alpha: None,
            cutmix_alpha: None,
            ..Augment::train(size)
        }
    }

    /// Reject settings that would divide by zero, allocate absurdly or
    /// silently do something else than asked; `Err((field, why))` names the
    /// recipe key under `data.` the field comes from.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        if self.size == 0 || self.size > MAX_SIDE {
            return Err((
                "size",
                format!("{} is out of range: must be 1..={MAX_SIDE}", self.size),
            ));
        }
        if self.eval_resize > MAX_SIDE {
            return Err((
                "eval_resize",
                format!(
                    "{} is out of range: must be 0..={MAX_SIDE}",
                    self.eval_resize
                ),
            ));
        }
        let prob = |name: &'static str, p: f64| {
            if (0.0..=1.0).contains(&p) {
                Ok(())
            } else {
                Err((name, format!("{p} is not a probability in [0, 1]")))
            }
        };
        prob("flip", self.flip_p)?;
        prob("erasing", self.erasing_p)?;
        for (name, alpha) in [("mixup", self.mixup_alpha), ("cutmix", self.cutmix_alpha)] {
            if let Some(a) = alpha {
                if !(a.is_finite() && a >= 0.0) {
                    return Err((name, format!("Beta(α, α) needs α ≥ 0 (0 = off), got {a}")));
                }
            }
        }
        if self.random_resized_crop {
            for (name, (lo, hi)) in [("scale", self.scale), ("ratio", self.ratio)] {
                if !(lo.is_finite() && hi.is_finite() && lo > 0.0 && lo <= hi) {
                    return Err((name, format!("[{lo}, {hi}] must be positive and ordered")));
                }
            }
        }
        if self.mean.iter().any(|m| !m.is_finite()) {
            return Err(("mean", format!("{:?} must be finite", self.mean)));
        }
        if self.std.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
            return Err((
                "std",
                format!(
                    "{:?}: every value must be positive and finite (images are divided by it)",
                    self.std
                ),
            ));
        }
        Ok(())
    }

    /// Draw the per-sample plan for a `width`×`height` source, in the fixed
    /// order crop → flip → erase.
    pub fn plan(&self, rng: &mut SampleRng, width: u32, height: u32) -> SamplePlan {
        let crop = if self.random_resized_crop {
            Crop::Box(random_resized_crop_box(
                rng, width, height, self.scale, self.ratio,
            ))
        } else {
            let resize = if self.eval_resize == 0 {
                self.size
            } else {
                self.eval_resize
            };
            eval_crop(width, height, resize, self.size)
        };
        let flip = self.flip_p > 0.0 && rng.bernoulli(self.flip_p);
        let erase = if self.erasing_p > 0.0 && rng.bernoulli(self.erasing_p) {
            random_erasing_box(rng, self.size, self.size, (0.02, 0.33), (0.3, 3.3))
        } else {
            None
        };
        SamplePlan { crop, flip, erase }
    }

    /// Per-channel `scale` and `bias` so that `v * scale + bias` equals
    /// `(v / 255 - mean) / std`.
    pub fn affine(&self) -> ([f32; 3], [f32; 3]) {
        let mut s = [0.0; 3];
        let mut b = [0.0; 3];
        for c in 0..3 {
            s[c] = 1.0 / (255.0 * self.std[c]);
            b[c] = -self.mean[c] / self.std[c];
        }
        (s, b)
    }
}

/// An integer box in source pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CropBox {
    pub left: u32,
    pub top: u32,
    pub width: u32,
    pub height: u32,
}

/// The source region that becomes the output.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Crop {
    /// An integer box, cropped then resized (torchvision `resized_crop`).
    Box(CropBox),
    /// A fractional box (eval's centre crop of a resized image, done as one
    /// resize of the corresponding source region): left, top, width, height.
    Frac(f64, f64, f64, f64),
}

/// Everything random about one sample.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplePlan {
    pub crop: Crop,
    pub flip: bool,
    /// Region of the output set to 0 (after normalisation).
    pub erase: Option<CropBox>,
}

/// torchvision `RandomResizedCrop.get_params`: ten tries at a box of area
/// `scale`×area and log-uniform aspect `ratio`, then the centre fallback
/// (whole image clamped to the ratio range).
pub fn random_resized_crop_box(
    rng: &mut SampleRng,
    width: u32,
    height: u32,
    scale: (f64, f64),
    ratio: (f64, f64),
) -> CropBox {
    let (w, h) = (width as f64, height as f64);
    let area = w * h;
    let (lr0, lr1) = (ratio.0.ln(), ratio.1.ln());
    for _ in 0..10 {
        let target = area * rng.uniform_range(scale.0, scale.1);
        let aspect = rng.uniform_range(lr0, lr1).exp();
        let cw = (target * aspect).sqrt().round();
        let ch = (target / aspect).sqrt().round();
        if cw > 0.0 && ch > 0.0 && cw <= w && ch <= h {
            let (cw, ch) = (cw as u32, ch as u32);
            // torch.randint(0, h - ch + 1): inclusive of the last position.
            let top = rng.below(u64::from(height - ch) + 1) as u32;
            let left = rng.below(u64::from(width - cw) + 1) as u32;
            return CropBox {
                left,
                top,
                width: cw,
                height: ch,
            };
        }
    }
    centre_fallback(width, height, ratio)
}

/// The fallback of `RandomResizedCrop.get_params`.
pub fn centre_fallback(width: u32, height: u32, ratio: (f64, f64)) -> CropBox {
    let in_ratio = width as f64 / height as f64;
    let (cw, ch) = if in_ratio < ratio.0.min(ratio.1) {
        (
            width,
            ((width as f64 / ratio.0.min(ratio.1)).round() as u32).min(height),
        )
    } else if in_ratio > ratio.0.max(ratio.1) {
        (
            ((height as f64 * ratio.0.max(ratio.1)).round() as u32).min(width),
            height,
        )
    } else {
        (width, height)
    };
    CropBox {
        left: (width - cw) / 2,
        top: (height - ch) / 2,
        width: cw.max(1),
        height: ch.max(1),
    }
}

/// Eval: the source region that, after resizing the shorter side to
/// `resize`, is the centred `size`×`size` window.
pub fn eval_crop(width: u32, height: u32, resize: u32, size: u32) -> Crop {
    if width == size && height == size && resize == size {
        return Crop::Box(CropBox {
            left: 0,
            top: 0,
            width,
            height,
        });
    }
    let scale = resize as f64 / width.min(height) as f64;
    let side_w = (size as f64 / scale).min(width as f64);
    let side_h = (size as f64 / scale).min(height as f64);
    Crop::Frac(
        (width as f64 - side_w) / 2.0,
        (height as f64 - side_h) / 2.0,
        side_w,
        side_h,
    )
}

/// torchvision `RandomErasing.get_params` with value 0: ten tries at a box
/// of `scale`×area and log-uniform aspect, strictly inside the image;
/// `None` when no try fits (the image is left as it is).
pub fn random_erasing_box(
    rng: &mut SampleRng,
    width: u32,
    height: u32,
    scale: (f64, f64),
    ratio: (f64, f64),
) -> Option<CropBox> {
    let area = width as f64 * height as f64;
    let (lr0, lr1) = (ratio.0.ln(), ratio.1.ln());
    for _ in 0..10 {
        let erase_area = area * rng.uniform_range(scale.0, scale.1);
        let aspect = rng.uniform_range(lr0, lr1).exp();
        let h = (erase_area * aspect).sqrt().round();
        let w = (erase_area / aspect).sqrt().round();
        if !(h < height as f64 && w < width as f64) || h < 1.0 || w < 1.0 {
            continue;
        }
        let (h, w) = (h as u32, w as u32);
        let top = rng.below(u64::from(height - h) + 1) as u32;
        let left = rng.below(u64::from(width - w) + 1) as u32;
        return Some(CropBox {
            left,
            top,
            width: w,
            height: h,
        });
    }
    None
}

/// Set `region` of every channel of a CHW slot to `value`.
pub fn erase(dst: &mut [f32], w: usize, h: usize, region: CropBox, value: f32) {
    let plane = w * h;
    for c in 0..3 {
        for y in region.top as usize..(region.top + region.height) as usize {
            let start = c * plane + y * w + region.left as usize;
            dst[start..start + region.width as usize].fill(value);
        }
    }
}

/// Renders planned samples into slots; holds the per-worker scratch.
pub struct Renderer {
    resizer: fir::Resizer,
    resized: Vec<u8>,
    scale: [f32; 3],
    bias: [f32; 3],
    size: u32,
}

impl Renderer {
    pub fn new(aug: &Augment) -> Renderer {
        let (scale, bias) = aug.affine();
        Renderer {
            resizer: fir::Resizer::new(),
            resized: vec![0; aug.size as usize * aug.size as usize * 3],
            scale,
            bias,
            size: aug.size,
        }
    }

    /// Render `src` (RGB8 HWC, `width`×`height`) through `plan` into `slot`
    /// (3·size² f32, CHW).
    pub fn render(
        &mut self,
        src: &[u8],
        width: u32,
        height: u32,
        plan: &SamplePlan,
        slot: &mut [f32],
    ) -> Result<(), String> {
        let s = self.size;
        let need = width as usize * height as usize * 3;
        if src.len() != need {
            return Err(format!(
                "{} bytes for a {width}x{height} RGB image ({need} expected)",
                src.len()
            ));
        }
        let whole = CropBox {
            left: 0,
            top: 0,
            width,
            height,
        };
        let identity = width == s && height == s && plan.crop == Crop::Box(whole);
        if identity {
            write_chw(
                src, s as usize, s as usize, plan.flip, self.scale, self.bias, slot,
            );
        } else {
            let src_view = fir::images::ImageRef::new(width, height, src, fir::PixelType::U8x3)
                .map_err(|e| e.to_string())?;
            let mut dst_view =
                fir::images::Image::from_slice_u8(s, s, &mut self.resized, fir::PixelType::U8x3)
                    .map_err(|e| e.to_string())?;
            let options = fir::ResizeOptions::new()
                .resize_alg(fir::ResizeAlg::Convolution(fir::FilterType::Bilinear));
            match plan.crop {
                Crop::Box(b) => {
                    // Crop first (the crop's border is the image border, as
                    // torchvision's crop-then-resize), then resize.
                    let cropped =
                        fir::images::CroppedImage::new(&src_view, b.left, b.top, b.width, b.height)
                            .map_err(|e| e.to_string())?;
                    self.resizer
                        .resize(&cropped, &mut dst_view, &options)
                        .map_err(|e| e.to_string())?;
                }
                Crop::Frac(l, t, w, h) => {
                    self.resizer
                        .resize(&src_view, &mut dst_view, &options.crop(l, t, w, h))
                        .map_err(|e| e.to_string())?;
                }
            }
            write_chw(
                &self.resized,
                s as usize,
                s as usize,
                plan.flip,
                self.scale,
                self.bias,
                slot,
            );
        }
        if let Some(region) = plan.erase {
            erase(slot, s as usize, s as usize, region, 0.0);
        }
        Ok(())
    }
}

/// The batch-level mixing chosen for one batch.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum BatchMix {
    None,
    /// `x = λ·x + (1-λ)·x[i-1]`.
    Mixup {
        lambda: f32,
    },
    /// The box of `x[i-1]` pasted into `x`; λ = 1 − box area / image area.
    Cutmix {
        lambda: f32,
        region: CropBox,
    },
}

impl BatchMix {
    /// The weight of a sample's own label (1 when unmixed).
    pub fn lambda(&self) -> f32 {
        match *self {
            BatchMix::None => 1.0,
            BatchMix::Mixup { lambda } | BatchMix::Cutmix { lambda, .. } => lambda,
        }
    }
}

/// torchvision v2 `RandomChoice([MixUp(α_m), CutMix(α_c)])` for an
/// `h`×`w` batch. CutMix's box: a uniform centre, half-sides
/// `⌊½√(1−λ)·W⌋`, `⌊½√(1−λ)·H⌋`, clipped to the image; λ is then
/// recomputed from the clipped area, so it is exactly the kept fraction.
pub fn batch_mix(
    rng: &mut SampleRng,
    mixup_alpha: Option<f64>,
    cutmix_alpha: Option<f64>,
    w: u32,
    h: u32,
) -> BatchMix {
    let use_cutmix = match (mixup_alpha, cutmix_alpha) {
        (None, None) => return BatchMix::None,
        (Some(_), None) => false,
        (None, Some(_)) => true,
        (Some(_), Some(_)) => rng.bernoulli(0.5),
    };
    if !use_cutmix {
        let a = mixup_alpha.unwrap_or(1.0);
        return BatchMix::Mixup {
            lambda: rng.beta_sym(a) as f32,
        };
    }
    let a = cutmix_alpha.unwrap_or(1.0);
    let lam = rng.beta_sym(a);
    let rx = rng.below(u64::from(w)) as i64;
    let ry = rng.below(u64::from(h)) as i64;
    let r = 0.5 * (1.0 - lam).sqrt();
    let rw = (r * w as f64) as i64;
    let rh = (r * h as f64) as i64;
    let x1 = (rx - rw).max(0);
    let y1 = (ry - rh).max(0);
    let x2 = (rx + rw).min(i64::from(w));
    let y2 = (ry + rh).min(i64::from(h));
    let region = CropBox {
        left: x1 as u32,
        top: y1 as u32,
        width: (x2 - x1) as u32,
        height: (y2 - y1) as u32,
    };
    let area = region.width as f64 * region.height as f64;
    BatchMix::Cutmix {
        lambda: (1.0 - area / (w as f64 * h as f64)) as f32,
        region,
    }
}

/// Apply `mix` in place to `n` CHW images of side `w`×`h` in `images`,
/// pairing image i with image i−1 (image 0 with the last: torch's
/// `roll(1, 0)`). `scratch` keeps a copy of the last image, the only one
/// overwritten before it is read.
pub fn apply_mix(
    images: &mut [f32],
    n: usize,
    w: usize,
    h: usize,
    mix: &BatchMix,
    scratch: &mut Vec<f32>,
) {
    let len = 3 * w * h;
    if n < 2 || matches!(mix, BatchMix::None) {
        return;
    }
    scratch.clear();
    scratch.extend_from_slice(&images[(n - 1) * len..n * len]);
    // Walk from the last image down so image i-1 is still original when i
    // reads it; image 0 reads the saved copy of the last.
    for i in (0..n).rev() {
        let (head, tail) = images.split_at_mut(i * len);
        let dst = &mut tail[..len];
        let partner: &[f32] = if i == 0 {
            scratch
        } else {
            &head[(i - 1) * len..]
        };
        match *mix {
            BatchMix::None => {}
            BatchMix::Mixup { lambda } => {
                let m = 1.0 - lambda;
                for (d, p) in dst.iter_mut().zip(partner) {
                    *d = lambda * *d + m * *p;
                }
            }
            BatchMix::Cutmix { region, .. } => {
                for c in 0..3 {
                    for y in region.top as usize..(region.top + region.height) as usize {
                        let s = c * w * h + y * w + region.left as usize;
                        let e = s + region.width as usize;
                        dst[s..e].copy_from_slice(&partner[s..e]);
                    }
                }
            }
        }
    }
}
