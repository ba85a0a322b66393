//! Turning one source image into the bytes a shard stores.
//!
//! Invariant: a JPEG that is already H×W, 3-component, 8-bit, upright,
//! complete and structurally clean is stored byte for byte (checked from
//! its markers, or by a full decode with `--verify decode`); everything
//! else is decoded, oriented, converted to RGB, resized and stored raw or
//! re-encoded. The scan order of a progressive JPEG is checked from its
//! headers whatever `--verify`; with `--verify decode` every JPEG's coded
//! data is also walked as libjpeg reads it, and damage libjpeg reports is
//! rejected.
//! `--max-pixels` rejects the same images whichever path they take.

use std::cell::RefCell;

use crate::image::{
    check_coded_data, check_scan_order, decode_rgb8, decode_rgb8_into, encode_jpeg, gray_to_rgb8,
    sniff_format, DecodeLimits, ImageError, ImageFormat, JpegHeader, ResizeMode, Resizer,
    Rgb8Image, Subsampling,
};
use crate::shard::Encoding;

/// How much a JPEG is checked: a passed-through one, and (`Decode`) the
/// coded data of every JPEG.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verify {
    /// Markers only: the frame, the tables each scan uses, the scan
    /// parameters, the order of a progressive frame's scans, and the end
    /// marker (a decoded JPEG is as checked as its decoder checks it, and
    /// its scan order from the headers).
    Header,
    /// A full decode of a passed-through JPEG, and the coded data of every
    /// JPEG walked to the bit as libjpeg reads it
    /// ([`crate::image::check_coded_data`]): damage libjpeg reports and
    /// decodes anyway is rejected.
    Decode,
}

impl std::str::FromStr for Verify {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "header" => Ok(Verify::Header),
            "decode" => Ok(Verify::Decode),
            other => Err(format!(
                "unknown verify mode '{other}' (expected header or decode)"
            )),
        }
    }
}

/// What becomes of a source JPEG that could be stored as it is but is
/// progressive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Progressive {
    /// Stored untouched, like every other passthrough JPEG.
    #[default]
    Keep,
    /// Decoded and re-encoded as a sequential JPEG: once at pack time
    /// instead of every epoch, since a progressive 224² image takes ~2.5×
    /// the decode of a sequential one (BENCHMARKS.md, ebv-stats).
    Sequential,
}

impl Progressive {
    /// The flag's value: `keep` or `sequential`.
    pub fn as_str(self) -> &'static str {
        match self {
            Progressive::Keep => "keep",
            Progressive::Sequential => "sequential",
        }
    }
}

impl std::str::FromStr for Progressive {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "keep" => Ok(Progressive::Keep),
            "sequential" => Ok(Progressive::Sequential),
            other => Err(format!(
                "unknown progressive mode '{other}' (expected keep or sequential)"
            )),
        }
    }
}

/// Everything that decides the stored bytes of an image.
#[derive(Debug, Clone, Copy)]
pub struct EncodeConfig {
    pub encoding: Encoding,
    pub height: u32,
    pub width: u32,
    pub resize: ResizeMode,
    pub quality: u8,
    pub subsampling: Subsampling,
    pub progressive: Progressive,
    pub verify: Verify,
    pub limits: DecodeLimits,
}

/// What became of one image.
pub enum Encoded {
    /// Source JPEG bytes stored as they are.
    Passthrough(Vec<u8>),
    /// Decoded and re-encoded (or raw pixels).
    Converted(Vec<u8>),
}

thread_local! {
    static RESIZER: RefCell<Resizer> = RefCell::new(Resizer::default());
    /// Each worker's decode buffer, kept across images: a source larger than
    /// H×W is decoded here and resized into the row's buffer, so that
    /// neither is allocated, zeroed or faulted in per image (an ImageNet-size
    /// JPEG decodes to ~0.6 MB).
    static DECODED: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// A decode buffer larger than this is freed after its image rather than
/// kept: one 100-megapixel photo must not hold 300 MB per worker for the
/// rest of the run. 48 MiB keeps a 16-megapixel camera image's.
const KEEP_DECODED: usize = 48 << 20;

fn keep_decoded(buf: Vec<u8>) {
    if buf.capacity() <= KEEP_DECODED {
        DECODED.set(buf);
    }
}

/// Encode an encoded source file; the error is the rejection reason.
/// `spare` is a buffer to write the result into (its allocation reused, its
/// contents ignored): the packer hands back the buffers of written row
/// groups, which spares the allocator zeroing and faulting in 150 KB per
/// raw 224² image.
pub fn encode_file(bytes: Vec<u8>, cfg: &EncodeConfig, spare: Vec<u8>) -> Result<Encoded, String> {
    if bytes.is_empty() {
        return Err("empty file".into());
    }
    let mut subsampling = cfg.subsampling;
    if cfg.encoding == Encoding::Jpeg && sniff_format(&bytes) == Some(ImageFormat::Jpeg) {
        let header = JpegHeader::parse(&bytes).map_err(|e| e.to_string())?;
        if stored_whole(&header, cfg.width, cfg.height, cfg.progressive) {
            // The limit a decode applies, from the same header numbers, so
            // that `--verify header` rejects what `decode` and `raw` do.
            within_pixel_limit(header.width, header.height, cfg)?;
            if header.progressive {
                check_scan_order(&bytes).map_err(|e| e.to_string())?;
            }
            if cfg.verify == Verify::Decode {
                decode_rgb8(&bytes, cfg.limits).map_err(|e| e.to_string())?;
                check_coded_data(&bytes).map_err(|e| e.to_string())?;
            }
            return Ok(Encoded::Passthrough(bytes));
        }
        // Of the right size but progressive under `--progressive
        // sequential`: only the coding order is asked to change, so full
        // chroma (every component sampled alike) stays full.
        if header.is_passthrough(cfg.width, cfg.height)
            && header.sampling.iter().all(|&s| s == header.sampling[0])
        {
            subsampling = Subsampling::S444;
        }
    }
    if sniff_format(&bytes) != Some(ImageFormat::Jpeg) {
        let image = decode_rgb8(&bytes, cfg.limits).map_err(|e| e.to_string())?;
        drop(bytes);
        return convert(image, cfg, subsampling, spare).map(Encoded::Converted);
    }
    // Before the decode, which would turn scans out of order into damaged
    // pixels without a word.
    check_scan_order(&bytes).map_err(|e| e.to_string())?;
    let mut data = DECODED.take();
    let decoded = decode_rgb8_into(&bytes, cfg.limits, &mut data).map_err(|e| e.to_string());
    let decoded = decoded.and_then(|size| match cfg.verify {
        Verify::Decode => check_coded_data(&bytes)
            .map(|()| size)
            .map_err(|e| e.to_string()),
        _ => Ok(size),
    });
    let (width, height) = match decoded {
        Ok(size) => size,
        Err(e) => {
            keep_decoded(data);
            return Err(e);
        }
    };
    drop(bytes);
    let image = Rgb8Image {
        width,
        height,
        data,
    };
    if (width, height) == (cfg.width, cfg.height) {
        // Already H×W: the decode buffer is the row's, and the spare
        // becomes the next decode buffer.
        keep_decoded(spare);
        return convert(image, cfg, subsampling, Vec::new()).map(Encoded::Converted);
    }
    let out = convert_from(&image, cfg, subsampling, spare);
    keep_decoded(image.data);
    out.map(Encoded::Converted)
}

/// Whether a JPEG of this header is stored as its own bytes in a JPEG pack
/// of `width`×`height` (else it is decoded and re-encoded).
pub(super) fn stored_whole(
    header: &JpegHeader,
    width: u32,
    height: u32,
    progressive: Progressive,
) -> bool {
    header.is_passthrough(width, height)
        && !(header.progressive && progressive == Progressive::Sequential)
}

/// `--max-pixels` for an image of `width`×`height`, known without decoding it.
fn within_pixel_limit(width: u32, height: u32, cfg: &EncodeConfig) -> Result<(), String> {
    let limit = cfg.limits.max_pixels;
    if u64::from(width) * u64::from(height) > limit {
        return Err(ImageError::TooLarge {
            width,
            height,
            limit,
        }
        .to_string());
    }
    Ok(())
}

/// Encode raw pixels (from IDX files): 1 or 3 channels.
pub fn encode_pixels(
    pixels: &[u8],
    width: u32,
    height: u32,
    channels: u32,
    cfg: &EncodeConfig,
) -> Result<Encoded, String> {
    // The limit every decoded image is held to, so that --max-pixels means
    // the same for every layout.
    within_pixel_limit(width, height, cfg)?;
    let image = if channels == 1 {
        gray_to_rgb8(width, height, pixels)
    } else {
        Rgb8Image::new(width, height, pixels.to_vec())
            .ok_or_else(|| "pixel buffer does not match its size".to_string())?
    };
    convert(image, cfg, cfg.subsampling, Vec::new()).map(Encoded::Converted)
}

/// The stored bytes of `image`: raw pixels (moved, not copied, when the
/// image is already H×W) or a JPEG. `spare` is a buffer to resize into.
fn convert(
    image: Rgb8Image,
    cfg: &EncodeConfig,
    subsampling: Subsampling,
    spare: Vec<u8>,
) -> Result<Vec<u8>, String> {
    if (image.width, image.height) != (cfg.width, cfg.height) {
        return convert_from(&image, cfg, subsampling, spare);
    }
    match cfg.encoding {
        Encoding::Raw => Ok(image.data),
        Encoding::Jpeg => jpeg(&image.data, cfg, subsampling),
    }
}

/// [`convert`] of an image of another size than H×W, resized into `spare`.
fn convert_from(
    image: &Rgb8Image,
    cfg: &EncodeConfig,
    subsampling: Subsampling,
    mut spare: Vec<u8>,
) -> Result<Vec<u8>, String> {
    RESIZER.with(|r| {
        r.borrow_mut()
            .resize_into(image, cfg.width, cfg.height, cfg.resize, &mut spare)
            .map_err(|e| format!("resize failed: {e}"))
    })?;
    match cfg.encoding {
        Encoding::Raw => Ok(spare),
        Encoding::Jpeg => jpeg(&spare, cfg, subsampling),
    }
}

fn jpeg(pixels: &[u8], cfg: &EncodeConfig, subsampling: Subsampling) -> Result<Vec<u8>, String> {
    encode_jpeg(pixels, cfg.width, cfg.height, cfg.quality, subsampling)
        .map_err(|e| format!("jpeg encode failed: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jpeg(w: u32, h: u32, seed: u32) -> Vec<u8> {
        let px: Vec<u8> = (0..w * h * 3)
            .map(|i| ((i * 7 + seed * 13) % 251) as u8)
            .collect();
        encode_jpeg(&px, w, h, 90, Subsampling::S444).unwrap()
    }

    fn cfg(encoding: Encoding) -> EncodeConfig {
        EncodeConfig {
            encoding,
            height: 24,
            width: 32,
            resize: ResizeMode::Stretch,
            quality: 95,
            subsampling: Subsampling::S420,
            progressive: Progressive::Keep,
            verify: Verify::Header,
            limits: DecodeLimits::default(),
        }
    }

    /// The worker's decode buffer and the row buffers are reused with
    /// whatever they held: larger, smaller and same-size sources in turn,
    /// each into a spare full of junk, give what a fresh decode and resize
    /// give.
    #[test]
    fn reused_buffers_give_what_fresh_ones_give() {
        let sizes = [(96, 64), (20, 10), (32, 24), (200, 150), (40, 30), (32, 24)];
        for encoding in [Encoding::Raw, Encoding::Jpeg] {
            let cfg = cfg(encoding);
            for (k, &(w, h)) in sizes.iter().enumerate() {
                let src = jpeg(w, h, k as u32);
                let got = match encode_file(src.clone(), &cfg, vec![0xAB; 7000]) {
                    Ok(Encoded::Converted(b)) => b,
                    // An H×W colour JPEG is stored as it is.
                    Ok(Encoded::Passthrough(b)) => {
                        assert!(encoding == Encoding::Jpeg && (w, h) == (32, 24) && b == src);
                        continue;
                    }
                    Err(e) => panic!("{w}x{h}: {e}"),
                };
                let fresh = decode_rgb8(&src, DecodeLimits::default()).unwrap();
                let px = Resizer::default()
                    .resize(&fresh, 32, 24, ResizeMode::Stretch)
                    .unwrap()
                    .data;
                let want = match encoding {
                    Encoding::Raw => px,
                    Encoding::Jpeg => encode_jpeg(&px, 32, 24, 95, Subsampling::S420).unwrap(),
                };
                assert!(got == want, "{encoding:?} {w}x{h}");
            }
        }
    }

    #[test]
    fn a_huge_decode_buffer_is_not_kept() {
        keep_decoded(Vec::with_capacity(1000));
        assert!(DECODED.take().capacity() >= 1000);
        keep_decoded(Vec::with_capacity(KEEP_DECODED + 1));
        assert_eq!(DECODED.take().capacity(), 0);
    }
}
