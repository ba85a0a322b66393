//! Top-k classes of single image files with a trained model.
//!
//! Each image is decoded (any format `ebv-pack` reads), transformed as in
//! evaluation (shorter side resized, centre crop, normalised with the
//! run's mean and std) and scored; EBV scores are cosines in [−1, 1], FC
//! scores logits.

use std::path::Path;

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::data::{Augment, Renderer, SampleRng, Stream};
use crate::image::{decode_rgb8, DecodeLimits};
use crate::model::HeadKind;

use super::eval::LoadedModel;
use super::TrainError;

/// One image's top-k.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Prediction {
    pub image: String,
    /// (class index, class name, score), best first.
    pub top: Vec<(u32, String, f64)>,
    /// "cosine" (EBV) or "logit" (FC).
    pub score: String,
}

/// Predict the top `k` classes of `image` at side `size`.
pub fn predict(
    loaded: &LoadedModel,
    image: &Path,
    size: u32,
    eval_resize: u32,
    mean_std: ([f32; 3], [f32; 3]),
    k: usize,
    device: &Device,
) -> Result<Prediction, TrainError> {
    // Opening a FIFO or a device would block or never end: only files.
    if let Some(kind) =
        crate::file_kind::not_regular(image).map_err(|e| TrainError::io(image, e))?
    {
        return Err(TrainError::Other(format!(
            "{}: not a regular file (a {kind})",
            image.display()
        )));
    }
    let bytes = std::fs::read(image).map_err(|e| TrainError::io(image, e))?;
    let img = decode_rgb8(&bytes, DecodeLimits::default())
        .map_err(|e| TrainError::Other(format!("{}: {e}", image.display())))?;
    let mut aug = Augment::eval(size, eval_resize);
    aug.mean = mean_std.0;
    aug.std = mean_std.1;
    // Eval plans draw nothing at random; the generator is only a formality.
    let mut rng = SampleRng::new(0, 0, 0, Stream::Augment);
    let plan = aug.plan(&mut rng, img.width, img.height);
    let mut slot = vec![0f32; 3 * size as usize * size as usize];
    Renderer::new(&aug)
        .render(&img.data, img.width, img.height, &plan, &mut slot)
        .map_err(|e| TrainError::Other(format!("{}: {e}", image.display())))?;
    let x = Tensor::from_vec(slot, (1, 3, size as usize, size as usize), device)?;
    let (scores, _) = loaded.model.scores_and_logits(&x)?;
    let scores: Vec<f32> = scores.flatten_all()?.to_vec1()?;
    let mut order: Vec<usize> = (0..scores.len()).collect();
    // Highest first; ties by the lower class index.
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    let top = order
        .into_iter()
        .take(k)
        .map(|c| {
            let name = loaded
                .classes
                .as_ref()
                .and_then(|n| n.get(c).cloned())
                .unwrap_or_else(|| c.to_string());
            (c as u32, name, f64::from(scores[c]))
        })
        .collect();
    Ok(Prediction {
        image: image.display().to_string(),
        top,
        score: match loaded.model.head().kind() {
            HeadKind::Ebv => "cosine".into(),
            HeadKind::Fc => "logit".into(),
        },
    })
}
