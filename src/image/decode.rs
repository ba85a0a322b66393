//! Decoding any supported image into tightly packed RGB8.
//!
//! JPEG goes to zune-jpeg (one header parse, output colour space forced to
//! RGB so grayscale, CMYK and YCCK all come out as RGB), after its marker
//! structure is checked; the rare frames zune-jpeg misreads go to the
//! `jpeg-decoder` crate. The other formats go through the `image` crate.
//! Every path checks the pixel count from the header *before* allocating,
//! which is what stops decompression bombs, and applies the EXIF
//! orientation.

use std::io::Cursor;

use ::image::metadata::Orientation;
use ::image::{DynamicImage, ImageDecoder, ImageReader, RgbImage};
use zune_core::bytestream::ZCursor;
use zune_core::colorspace::ColorSpace;
use zune_core::options::DecoderOptions;

use super::format::{sniff_format, ImageFormat};

/// Why an image could not be decoded. Each variant is a reason the packer
/// records for a rejected entry.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("empty file")]
    Empty,
    #[error("not an image (unrecognised content)")]
    NotAnImage,
    #[error("unsupported image format: {0}")]
    Unsupported(String),
    #[error("image exceeds the pixel limit ({width}x{height} > {limit} pixels)")]
    TooLarge { width: u32, height: u32, limit: u64 },
    #[error("corrupt {format}: {detail}")]
    Corrupt { format: ImageFormat, detail: String },
}

/// Limits applied while decoding untrusted files.
#[derive(Debug, Clone, Copy)]
pub struct DecodeLimits {
    /// Largest width × height accepted; larger images are refused unread.
    pub max_pixels: u64,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        // Pillow's decompression-bomb error threshold (2 × MAX_IMAGE_PIXELS).
        DecodeLimits {
            max_pixels: 178_956_970,
        }
    }
}

/// An RGB8 image, rows top to bottom, 3 bytes per pixel, no padding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rgb8Image {
    pub width: u32,
    pub height: u32,
    pub data: Vec<u8>,
}

impl Rgb8Image {
    /// Wrap `data`, which must hold exactly `width * height * 3` bytes.
    pub fn new(width: u32, height: u32, data: Vec<u8>) -> Option<Self> {
        (data.len() == width as usize * height as usize * 3).then_some(Rgb8Image {
            width,
            height,
            data,
        })
    }
}

/// Replicate an 8-bit grayscale image into RGB8.
pub fn gray_to_rgb8(width: u32, height: u32, gray: &[u8]) -> Rgb8Image {
    let mut data = Vec::with_capacity(gray.len() * 3);
    for &g in gray {
        data.extend_from_slice(&[g, g, g]);
    }
    Rgb8Image {
        width,
        height,
        data,
    }
}

/// Decode `bytes` (JPEG, PNG, WebP, BMP or the first frame of a GIF) into
/// RGB8 with the EXIF orientation applied. Alpha is dropped, as
/// `PIL.Image.convert("RGB")` does; palettes and grayscale are expanded.
pub fn decode_rgb8(bytes: &[u8], limits: DecodeLimits) -> Result<Rgb8Image, ImageError> {
    if bytes.is_empty() {
        return Err(ImageError::Empty);
    }
    match sniff_format(bytes) {
        None => Err(ImageError::NotAnImage),
        Some(ImageFormat::Unsupported(name)) => Err(ImageError::Unsupported(name.to_string())),
        Some(ImageFormat::Jpeg) => decode_jpeg(bytes, limits),
        Some(format) => decode_other(bytes, format, limits),
    }
}

fn corrupt(format: ImageFormat, detail: impl ToString) -> ImageError {
    ImageError::Corrupt {
        format,
        detail: detail.to_string(),
    }
}

fn check_pixels(
    format: ImageFormat,
    width: u32,
    height: u32,
    limits: DecodeLimits,
) -> Result<(), ImageError> {
    if width == 0 || height == 0 {
        return Err(corrupt(format, "zero-sized image"));
    }
    if u64::from(width) * u64::from(height) > limits.max_pixels {
        return Err(ImageError::TooLarge {
            width,
            height,
            limit: limits.max_pixels,
        });
    }
    Ok(())
}

fn decode_jpeg(bytes: &[u8], limits: DecodeLimits) -> Result<Rgb8Image, ImageError> {
    let mut data = Vec::new();
    let (width, height, orientation) = decode_jpeg_into(bytes, limits, &mut data)?;
    let image = Rgb8Image {
        width,
        height,
        data,
    };
    Ok(orient(image, orientation))
}

/// Decode a JPEG into `out` (resized to width·height·3, keeping its
/// allocation) without applying the EXIF orientation, which is returned.
/// The one place JPEG decoding is set up, for one-off and reused buffers.
pub(super) fn decode_jpeg_into(
    bytes: &[u8],
    limits: DecodeLimits,
    out: &mut Vec<u8>,
) -> Result<(u32, u32, Orientation), ImageError> {
    let fmt = ImageFormat::Jpeg;
    // The structure first: a JPEG cut short (zune-jpeg would pad the
    // missing scan with grey rather than fail), a frame zune-jpeg does not
    // read or would decode wrongly, tables missing. What libjpeg reads
    // with a warning or a default is rewritten for zune-jpeg; bytes after
    // the end marker are not the image's.
    let walk = super::jpeg_stream::walk(bytes).map_err(super::jpeg::fault_error)?;
    let bytes = walk.repaired(bytes);
    let bytes = bytes.as_ref();
    if let Some(why) = &walk.other_decoder {
        check_pixels(fmt, walk.width, walk.height, limits)?;
        let (width, height) = decode_with_jpeg_decoder(bytes, why, out)?;
        return Ok((width, height, walk.orientation));
    }
    let options = DecoderOptions::default()
        .set_strict_mode(true)
        .set_max_width(usize::MAX)
        .set_max_height(usize::MAX)
        .jpeg_set_out_colorspace(ColorSpace::RGB);
    let mut decoder = zune_jpeg::JpegDecoder::new_with_options(ZCursor::new(bytes), options);
    decoder.decode_headers().map_err(|e| corrupt(fmt, e))?;
    let (w, h) = decoder
        .dimensions()
        .ok_or_else(|| corrupt(fmt, "no frame header"))?;
    let (width, height) = (w as u32, h as u32);
    check_pixels(fmt, width, height, limits)?;
    let orientation = decoder
        .exif()
        .and_then(|exif| Orientation::from_exif_chunk(exif))
        .unwrap_or(Orientation::NoTransforms);
    out.resize(width as usize * height as usize * 3, 0);
    decoder.decode_into(out).map_err(|e| corrupt(fmt, e))?;
    Ok((width, height, orientation))
}

/// Decodes a frame zune-jpeg would misread (`why`) with the `jpeg-decoder`
/// crate into `out` as RGB8 (its gray and RGB output; its CMYK is not
/// converted, so such a frame is unsupported).
fn decode_with_jpeg_decoder(
    bytes: &[u8],
    why: &str,
    out: &mut Vec<u8>,
) -> Result<(u32, u32), ImageError> {
    use jpeg_decoder::PixelFormat;
    let fmt = ImageFormat::Jpeg;
    // A decoder panic on hostile bytes is a rejection, not a stop.
    let decoded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut d = jpeg_decoder::Decoder::new(bytes);
        let px = d.decode()?;
        Ok::<_, jpeg_decoder::Error>((px, d.info()))
    }));
    let (px, info) = match decoded {
        Ok(Ok((px, Some(info)))) => (px, info),
        Ok(Ok((_, None))) => return Err(corrupt(fmt, "no frame header")),
        Ok(Err(e)) => return Err(corrupt(fmt, format!("{e} (a frame with {why})"))),
        Err(_) => return Err(corrupt(fmt, format!("undecodable (a frame with {why})"))),
    };
    let (width, height) = (u32::from(info.width), u32::from(info.height));
    out.clear();
    match info.pixel_format {
        PixelFormat::RGB24 => out.extend_from_slice(&px),
        PixelFormat::L8 => out.extend(px.iter().flat_map(|&g| [g, g, g])),
        other => {
            return Err(ImageError::Unsupported(format!(
                "jpeg with {why} in {other:?} samples"
            )))
        }
    }
    if out.len() != width as usize * height as usize * 3 {
        return Err(corrupt(
            fmt,
            format!("decoded size differs (a frame with {why})"),
        ));
    }
    Ok((width, height))
}

fn decode_other(
    bytes: &[u8],
    format: ImageFormat,
    limits: DecodeLimits,
) -> Result<Rgb8Image, ImageError> {
    let reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| corrupt(format, e))?;
    let mut decoder = reader.into_decoder().map_err(|e| corrupt(format, e))?;
    let (width, height) = decoder.dimensions();
    check_pixels(format, width, height, limits)?;
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    let mut image = DynamicImage::from_decoder(decoder).map_err(|e| corrupt(format, e))?;
    image.apply_orientation(orientation);
    let rgb = image.into_rgb8();
    let (width, height) = rgb.dimensions();
    Ok(Rgb8Image {
        width,
        height,
        data: rgb.into_raw(),
    })
}

pub(super) fn orient(image: Rgb8Image, orientation: Orientation) -> Rgb8Image {
    if orientation == Orientation::NoTransforms {
        return image;
    }
    let Some(buffer) = RgbImage::from_raw(image.width, image.height, image.data) else {
        unreachable!("Rgb8Image always holds width*height*3 bytes");
    };
    let mut dynamic = DynamicImage::ImageRgb8(buffer);
    dynamic.apply_orientation(orientation);
    let rgb = dynamic.into_rgb8();
    let (width, height) = rgb.dimensions();
    Rgb8Image {
        width,
        height,
        data: rgb.into_raw(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A zero-sized image is reported as corrupt in its own format.
    #[test]
    fn zero_sized_images_name_their_own_format() {
        let err = check_pixels(ImageFormat::Gif, 0, 5, DecodeLimits::default()).unwrap_err();
        assert_eq!(err.to_string(), "corrupt gif: zero-sized image");
        assert!(check_pixels(ImageFormat::Png, 5, 5, DecodeLimits::default()).is_ok());
    }
}
