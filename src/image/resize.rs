//! Bringing an RGB8 image to the shard size with fast_image_resize.
//!
//! Invariant: the filter is bilinear with antialiasing (the support widens
//! when downscaling), the same convolution Pillow's and torchvision's
//! `resize(..., BILINEAR)` use, so packed pixels match what the paper's
//! PyTorch pipeline would have fed the network.

use fast_image_resize as fir;

use super::decode::Rgb8Image;

/// How a source image of another aspect ratio reaches H×W.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResizeMode {
    /// Scale each axis independently to H×W (the paper's "resize to 224×224").
    Stretch,
    /// Scale the shorter side to fit, then cut the centre H×W.
    Crop,
}

impl std::str::FromStr for ResizeMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "stretch" => Ok(ResizeMode::Stretch),
            "crop" => Ok(ResizeMode::Crop),
            other => Err(format!(
                "unknown resize mode '{other}' (expected stretch or crop)"
            )),
        }
    }
}

/// A reusable resizer; keeps its internal buffers between calls, so one
/// per worker thread avoids allocating per image.
pub struct Resizer {
    inner: fir::Resizer,
}

impl Default for Resizer {
    fn default() -> Self {
        Resizer {
            inner: fir::Resizer::new(),
        }
    }
}

impl Resizer {
    /// Resize `src` to `width`×`height` into `dst` (resized to fit).
    /// An image already of the target size is copied as it is.
    pub fn resize_into(
        &mut self,
        src: &Rgb8Image,
        width: u32,
        height: u32,
        mode: ResizeMode,
        dst: &mut Vec<u8>,
    ) -> Result<(), String> {
        if src.width == width && src.height == height {
            dst.clear();
            dst.extend_from_slice(&src.data);
            return Ok(());
        }
        // Every byte is written below: a reused buffer is only cut or
        // grown to size, not zeroed again.
        let len = width as usize * height as usize * 3;
        dst.truncate(len);
        dst.resize(len, 0);
        let src_view =
            fir::images::ImageRef::new(src.width, src.height, &src.data, fir::PixelType::U8x3)
                .map_err(|e| e.to_string())?;
        let mut dst_view =
            fir::images::Image::from_slice_u8(width, height, dst, fir::PixelType::U8x3)
                .map_err(|e| e.to_string())?;
        let mut options = fir::ResizeOptions::new()
            .resize_alg(fir::ResizeAlg::Convolution(fir::FilterType::Bilinear));
        if mode == ResizeMode::Crop {
            let (left, top, w, h) = centre_crop_box(src.width, src.height, width, height);
            options = options.crop(left, top, w, h);
        }
        self.inner
            .resize(&src_view, &mut dst_view, &options)
            .map_err(|e| e.to_string())
    }

    /// Resize into a freshly allocated image.
    pub fn resize(
        &mut self,
        src: &Rgb8Image,
        width: u32,
        height: u32,
        mode: ResizeMode,
    ) -> Result<Rgb8Image, String> {
        let mut data = Vec::new();
        self.resize_into(src, width, height, mode, &mut data)?;
        Ok(Rgb8Image {
            width,
            height,
            data,
        })
    }
}

/// The largest centred box of the target aspect ratio inside the source,
/// as (left, top, width, height) in source pixels.
pub(crate) fn centre_crop_box(sw: u32, sh: u32, tw: u32, th: u32) -> (f64, f64, f64, f64) {
    let (sw, sh, tw, th) = (sw as f64, sh as f64, tw as f64, th as f64);
    let scale = (tw / sw).max(th / sh);
    let (w, h) = (tw / scale, th / scale);
    ((sw - w) / 2.0, (sh - h) / 2.0, w, h)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crop_box_keeps_the_centre() {
        assert_eq!(
            centre_crop_box(400, 200, 100, 100),
            (100.0, 0.0, 200.0, 200.0)
        );
        assert_eq!(
            centre_crop_box(200, 400, 100, 100),
            (0.0, 100.0, 200.0, 200.0)
        );
        assert_eq!(
            centre_crop_box(300, 300, 100, 100),
            (0.0, 0.0, 300.0, 300.0)
        );
    }

    #[test]
    fn constant_image_stays_constant() {
        let src = Rgb8Image::new(37, 19, [10u8, 200, 77].repeat(37 * 19)).unwrap();
        let mut r = Resizer::default();
        for mode in [ResizeMode::Stretch, ResizeMode::Crop] {
            let out = r.resize(&src, 16, 16, mode).unwrap();
            assert_eq!(out.data.len(), 16 * 16 * 3);
            assert!(out.data.chunks(3).all(|p| p == [10, 200, 77]));
        }
    }
}
