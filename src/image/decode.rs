//! Decoding any supported image into tightly packed RGB8.
//!
//! JPEG goes to zune-jpeg (one header parse, output colour space forced to
//! RGB so grayscale, CMYK and YCCK all come out as RGB), after its marker
//! structure is checked; the rare frames zune-jpeg misreads go to the
//! `jpeg-decoder` crate. The other formats go through the `image` crate
//! (TIFF palette and gray-with-alpha images through the `tiff` crate under
//! it, see [`super::tiff`]),
//! after what it cannot read is rewritten into what it can (an OS/2 bitmap
//! header, a GIF without colour table) and with the GIF screen around the
//! first frame painted as the format says; the orientation is read by
//! [`super::exif`] and [`super::orientation`] (EXIF, else XMP), for every
//! format alike.
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

/// Decode `bytes` (JPEG, PNG, WebP, BMP, the first frame of a GIF or the
/// first image of a TIFF) into
/// RGB8 with the EXIF orientation applied. Alpha is dropped, as
/// `PIL.Image.convert("RGB")` does; palettes and grayscale are expanded.
pub fn decode_rgb8(bytes: &[u8], limits: DecodeLimits) -> Result<Rgb8Image, ImageError> {
    if bytes.is_empty() {
        return Err(ImageError::Empty);
    }
    match sniff_format(bytes) {
        None => Err(ImageError::NotAnImage),
        Some(ImageFormat::Unsupported(name)) => Err(ImageError::Unsupported(name.to_string())),
        Some(ImageFormat::Jpeg) => guarded(ImageFormat::Jpeg, || decode_jpeg(bytes, limits)),
        Some(format) => guarded(format, || decode_other(bytes, format, limits)),
    }
}

/// `decode`, with a panic in it (a decoder's bug met on hostile bytes)
/// turned into a rejection of the image, so that it never stops a pack,
/// a loader or a scan. The decoders keep no state across images, so
/// nothing is left half-changed.
pub(super) fn guarded<T>(
    format: ImageFormat,
    decode: impl FnOnce() -> Result<T, ImageError>,
) -> Result<T, ImageError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(decode))
        .unwrap_or_else(|_| Err(corrupt(format, "undecodable (the decoder failed)")))
}

fn corrupt(format: ImageFormat, detail: impl ToString) -> ImageError {
    ImageError::Corrupt {
        format,
        detail: detail.to_string(),
    }
}

pub(super) fn check_pixels(
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

/// Check a JPEG's coded data as libjpeg reads it, to the bit: damage it
/// reads with a "Corrupt JPEG data" warning (data that ends before the
/// last block of a scan, bytes left after it, codes no table holds),
/// which the decoder turns into pixels without a word, is an error (see
/// `jpeg_scan`). Other formats, and JPEGs coded arithmetically or
/// losslessly (their decoders check their data), pass unread.
pub fn check_coded_data(bytes: &[u8]) -> Result<(), ImageError> {
    if sniff_format(bytes) != Some(ImageFormat::Jpeg) {
        return Ok(());
    }
    let walk = super::jpeg_stream::walk(bytes).map_err(super::jpeg::fault_error)?;
    super::jpeg_scan::check(&walk.repaired(bytes), &walk).map_err(super::jpeg::fault_error)
}

/// Check the order of a progressive JPEG's scans as libjpeg does
/// ("Inconsistent progression sequence": a scan lost or its header
/// changed, which every decoder turns into damaged pixels without an
/// error) from the scan headers alone, cheap enough to run on every JPEG.
/// Other formats and frames pass; [`check_coded_data`] checks this too.
pub fn check_scan_order(bytes: &[u8]) -> Result<(), ImageError> {
    if sniff_format(bytes) != Some(ImageFormat::Jpeg) {
        return Ok(());
    }
    let walk = super::jpeg_stream::walk(bytes).map_err(super::jpeg::fault_error)?;
    super::jpeg_scan::check_scan_order(&walk.repaired(bytes), &walk)
        .map_err(super::jpeg::fault_error)
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
    if walk.arithmetic {
        // The same coefficients, Huffman-coded: the same pixels.
        check_pixels(fmt, walk.width, walk.height, limits)?;
        let huffman = super::jpeg_arith::transcode(&bytes[..walk.end], &walk)
            .map_err(super::jpeg::fault_error)?;
        let (width, height, _) = decode_jpeg_into(&huffman, limits, out)?;
        return Ok((width, height, walk.orientation));
    }
    if walk.lossless {
        check_pixels(fmt, walk.width, walk.height, limits)?;
        super::jpeg_lossless::decode(&bytes[..walk.end], &walk, out)
            .map_err(super::jpeg::fault_error)?;
        return Ok((walk.width, walk.height, walk.orientation));
    }
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
    out.resize(width as usize * height as usize * 3, 0);
    decoder.decode_into(out).map_err(|e| corrupt(fmt, e))?;
    // The walk's orientation, from the first EXIF segment as Pillow reads
    // it (zune-jpeg keeps the last), so that the raw and passthrough paths
    // agree on every file.
    Ok((width, height, walk.orientation))
}

/// The orientation of a PNG, WebP or TIFF, read here rather than by the `image`
/// crate: a PNG's `eXIf` chunk may follow the pixels, tools write the tag
/// as LONG as well as SHORT, and Pillow falls back to ImageMagick's raw
/// EXIF text and to XMP. GIF and BMP carry no orientation.
fn orientation(bytes: &[u8], format: ImageFormat) -> Orientation {
    use super::{exif, orientation, png_text};
    let exif_tag = match format {
        ImageFormat::Png => match exif::png_block(bytes) {
            Some(block) => exif::orientation_tag(block),
            None => exif::png_raw_profile(bytes).and_then(|b| exif::orientation_tag(&b)),
        },
        ImageFormat::Webp => exif::webp_chunk(bytes, b"EXIF").and_then(exif::orientation_tag),
        // A TIFF file is its own EXIF block: tag 274 of its first IFD.
        ImageFormat::Tiff => exif::orientation_tag(bytes),
        _ => None,
    };
    // XMP only counts when no EXIF tag does.
    let xmp: Option<std::borrow::Cow<[u8]>> = match format {
        _ if exif_tag.is_some() => None,
        ImageFormat::Png => png_text::last_text(bytes, b"XML:com.adobe.xmp").map(Into::into),
        ImageFormat::Webp => exif::webp_chunk(bytes, b"XMP ").map(Into::into),
        ImageFormat::Tiff => exif::tiff_xmp(bytes).map(Into::into),
        _ => None,
    };
    orientation::resolve(exif_tag, xmp.as_deref())
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
    if format == ImageFormat::Tiff {
        return match decode_with_image_crate(bytes, bytes, format, limits) {
            // Palette and gray-with-alpha: read underneath the crate.
            Err(ImageError::Unsupported(why)) => {
                match super::tiff::decode_fallback(bytes, limits) {
                    Some(image) => Ok(orient(image?, orientation(bytes, format))),
                    None => Err(ImageError::Unsupported(why)),
                }
            }
            other => other,
        };
    }
    if format == ImageFormat::Bmp {
        // OS/2 2.x headers rewritten once, for the run-length decoder and
        // the crate's alike.
        let windows = super::bmp::with_windows_header(bytes)?;
        if let Some(decoded) = super::bmp_rle::decode(&windows, limits) {
            return decoded;
        }
        return decode_with_image_crate(&windows, bytes, format, limits);
    }
    let decoded = decode_with_image_crate(bytes, bytes, format, limits);
    if format == ImageFormat::Png && matches!(decoded, Err(ImageError::Corrupt { .. })) {
        // Pixel data that is whole behind a damaged frame (an IDAT's CRC
        // or length, the file's tail): decoded from a rebuilt file.
        if let Some(rebuilt) = super::png::salvaged(bytes) {
            if let Ok(image) = decode_with_image_crate(&rebuilt, bytes, format, limits) {
                return Ok(image);
            }
        }
    }
    decoded
}

/// Decode `bytes` with the `image` crate; the orientation is read from
/// `source`, the file as it came (`bytes` may be a rebuilt copy).
fn decode_with_image_crate(
    bytes: &[u8],
    source: &[u8],
    format: ImageFormat,
    limits: DecodeLimits,
) -> Result<Rgb8Image, ImageError> {
    let repaired = match format {
        ImageFormat::Gif => super::gif::readable(bytes),
        // (Its OS/2 2.x header already rewritten by `decode_other`.)
        ImageFormat::Bmp => super::bmp::with_readable_fields(bytes),
        ImageFormat::Png => super::png::with_iend(bytes),
        ImageFormat::Webp => super::webp::checked(bytes).map_err(|fault| match fault {
            super::webp::Fault::Truncated => corrupt(format, TRUNCATED),
            super::webp::Fault::Corrupt(why) => corrupt(format, why),
        })?,
        _ => std::borrow::Cow::Borrowed(bytes),
    };
    let mut reader = ImageReader::new(Cursor::new(repaired.as_ref()));
    if format == ImageFormat::Tiff {
        // The `image` crate's guess knows classic TIFF only, not BigTIFF.
        reader.set_format(::image::ImageFormat::Tiff);
    } else {
        reader = reader
            .with_guessed_format()
            .map_err(|e| corrupt(format, e))?;
    }
    let failed = |e: ::image::ImageError| match e {
        // A TIFF coding the decoder lacks (YCbCr, old-style JPEG, CCITT
        // group 3) is named as such, not as damage.
        ::image::ImageError::Unsupported(u) if format == ImageFormat::Tiff => {
            ImageError::Unsupported(format!("tiff ({})", unsupported_tiff(&u)))
        }
        e => corrupt(format, reason(&e)),
    };
    let decoder = reader.into_decoder().map_err(failed)?;
    let (width, height) = decoder.dimensions();
    check_pixels(format, width, height, limits)?;
    let orientation = orientation(source, format);
    let mut image = DynamicImage::from_decoder(decoder).map_err(failed)?;
    image.apply_orientation(orientation);
    let rgb = image.into_rgb8();
    let (width, height) = rgb.dimensions();
    let mut data = rgb.into_raw();
    if format == ImageFormat::Gif {
        super::gif::paint_background(bytes, width, height, &mut data);
    }
    Ok(Rgb8Image {
        width,
        height,
        data,
    })
}

/// What a TIFF's unsupported coding is, without the `image` crate's
/// preamble ("The decoder for Tiff does not support the format features").
fn unsupported_tiff(u: &::image::error::UnsupportedError) -> String {
    use ::image::error::UnsupportedErrorKind;
    match u.kind() {
        UnsupportedErrorKind::GenericFeature(what) => what,
        UnsupportedErrorKind::Color(::image::ExtendedColorType::Unknown(bits)) => {
            format!(
                "{bits}-bit pixels of a kind the decoder lacks: floating point or extra channels"
            )
        }
        UnsupportedErrorKind::Color(colour) => format!("{colour:?} samples"),
        _ => u.to_string(),
    }
}

/// The `image` crate's error as a reason a user can act on: a file that
/// ends early says so (its decoders report the I/O error "failed to fill
/// whole buffer"), and a PNG chunk is named by its type, not printed as a
/// Rust structure.
fn reason(e: &::image::ImageError) -> String {
    reason_text(&e.to_string())
}

/// The reason for a file that ends before its pixels do.
pub(super) const TRUNCATED: &str = "truncated: the file ends before the image does";

/// [`reason`] for a decoder error already written out as text.
pub(super) fn reason_text(text: &str) -> String {
    if text.contains("failed to fill whole buffer") || text.contains("unexpected end of file") {
        return TRUNCATED.into();
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("ChunkType { type: ") {
        out.push_str(&rest[..at]);
        let after = &rest[at + "ChunkType { type: ".len()..];
        let name_end = after.find([',', ' ', '}']).unwrap_or(after.len());
        out.push_str(&after[..name_end]);
        rest = after.find('}').map_or("", |close| &after[close + 1..]);
    }
    out.push_str(rest);
    out
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
    use super::super::exif::tests::tiff;
    use super::*;

    fn jpeg(w: u16, h: u16) -> Vec<u8> {
        let px: Vec<u8> = (0..usize::from(w) * usize::from(h) * 3)
            .map(|i| (i * 13 % 256) as u8)
            .collect();
        let mut out = Vec::new();
        jpeg_encoder::Encoder::new(&mut out, 90)
            .encode(&px, w, h, jpeg_encoder::ColorType::Rgb)
            .unwrap();
        out
    }

    fn app1(block: &[u8]) -> Vec<u8> {
        let mut seg = vec![0xFF, 0xE1];
        seg.extend_from_slice(&((block.len() + 8) as u16).to_be_bytes());
        seg.extend_from_slice(b"Exif\0\0");
        seg.extend_from_slice(block);
        seg
    }

    /// Two EXIF segments: the first one counts, as for Pillow and exiftool,
    /// in decoding and in the passthrough check alike.
    #[test]
    fn the_first_exif_segment_orients_a_jpeg() {
        let base = jpeg(20, 12);
        for (first, second, rotated) in [(1, 6, false), (6, 1, true), (4, 6, false)] {
            let mut b = base[..2].to_vec();
            b.extend(app1(&tiff(false, 3, first)));
            b.extend(app1(&tiff(true, 3, second)));
            b.extend_from_slice(&base[2..]);
            let img = decode_rgb8(&b, DecodeLimits::default()).unwrap();
            let dims = if rotated { (12, 20) } else { (20, 12) };
            assert_eq!((img.width, img.height), dims, "{first} then {second}");
            let header = super::super::JpegHeader::parse(&b).unwrap();
            assert_eq!(header.orientation == Orientation::NoTransforms, first == 1);
        }
        // The tag written as LONG counts too.
        let mut b = base[..2].to_vec();
        b.extend(app1(&tiff(false, 4, 8)));
        b.extend_from_slice(&base[2..]);
        let img = decode_rgb8(&b, DecodeLimits::default()).unwrap();
        assert_eq!((img.width, img.height), (12, 20));
    }

    fn xmp_packet(orientation: u8) -> Vec<u8> {
        format!(
            "<x:xmpmeta xmlns:x=\"adobe:ns:meta/\"><rdf:Description \
             xmlns:tiff=\"http://ns.adobe.com/tiff/1.0/\" \
             tiff:Orientation=\"{orientation}\"/></x:xmpmeta>"
        )
        .into_bytes()
    }

    fn app1_xmp(orientation: u8) -> Vec<u8> {
        let mut body = super::super::orientation::JPEG_XMP_NAMESPACE.to_vec();
        body.extend(xmp_packet(orientation));
        let mut seg = vec![0xFF, 0xE1];
        seg.extend_from_slice(&((body.len() + 2) as u16).to_be_bytes());
        seg.extend(body);
        seg
    }

    /// XMP counts only where the EXIF block has no orientation tag, and
    /// the last XMP segment before the scans is the one (Pillow's
    /// reading; the same files were checked against Pillow 13).
    #[test]
    fn a_jpeg_without_an_exif_tag_is_oriented_by_its_xmp() {
        let base = jpeg(20, 12);
        let build = |segments: &[Vec<u8>]| {
            let mut b = base[..2].to_vec();
            for s in segments {
                b.extend_from_slice(s);
            }
            b.extend_from_slice(&base[2..]);
            b
        };
        let mut no_tag = tiff(false, 3, 6);
        no_tag[22..24].copy_from_slice(&0x0113u16.to_le_bytes());
        let cases = [
            (vec![app1_xmp(6)], Orientation::Rotate90),
            (vec![app1(&no_tag), app1_xmp(6)], Orientation::Rotate90),
            (
                vec![app1_xmp(6), app1(&tiff(false, 3, 1))],
                Orientation::NoTransforms,
            ),
            (
                vec![app1(&tiff(false, 3, 0)), app1_xmp(6)],
                Orientation::NoTransforms,
            ),
            (vec![app1_xmp(6), app1_xmp(8)], Orientation::Rotate270),
            (vec![app1_xmp(3)], Orientation::Rotate180),
        ];
        let plain = decode_rgb8(&base, DecodeLimits::default()).unwrap();
        for (k, (segments, want)) in cases.into_iter().enumerate() {
            let b = build(&segments);
            let header = super::super::JpegHeader::parse(&b).unwrap();
            assert_eq!(header.orientation, want, "case {k}");
            let img = decode_rgb8(&b, DecodeLimits::default()).unwrap();
            assert_eq!(img, orient(plain.clone(), want), "case {k}");
        }
        // An XMP segment after the scan is not the image's header.
        let mut late = base[..base.len() - 2].to_vec();
        late.extend(app1_xmp(6));
        late.extend_from_slice(&base[base.len() - 2..]);
        let header = super::super::JpegHeader::parse(&late).unwrap();
        assert_eq!(header.orientation, Orientation::NoTransforms);
    }

    fn png_rgb(px: &[u8], w: u32, h: u32) -> Vec<u8> {
        use ::image::ImageEncoder;
        let mut png = Vec::new();
        ::image::codecs::png::PngEncoder::new(&mut png)
            .write_image(px, w, h, ::image::ExtendedColorType::Rgb8)
            .unwrap();
        png
    }

    /// A PNG chunk with its CRC.
    fn png_chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
        let mut chunk = (data.len() as u32).to_be_bytes().to_vec();
        chunk.extend_from_slice(kind);
        chunk.extend_from_slice(data);
        let crc = crc32(&chunk[4..]);
        chunk.extend_from_slice(&crc.to_be_bytes());
        chunk
    }

    /// PNG: an iTXt XMP packet, before or after the pixels, and the EXIF
    /// block ImageMagick writes as hexadecimal text, which decides over XMP.
    #[test]
    fn a_png_is_oriented_by_xmp_text_and_imagemagick_raw_exif() {
        let (w, h) = (5u32, 3u32);
        let px: Vec<u8> = (0..w * h * 3).map(|i| (i * 17 % 256) as u8).collect();
        let png = png_rgb(&px, w, h);
        let plain = decode_rgb8(&png, DecodeLimits::default()).unwrap();
        let iend = png.len() - 12;
        let ihdr_end = 8 + 25;
        let mut itxt = b"XML:com.adobe.xmp\0\0\0\0\0".to_vec();
        itxt.extend(xmp_packet(8));
        let mut hex = String::from("\nexif\n      44\n457869660000");
        for b in tiff(false, 3, 3) {
            hex.push_str(&format!("{b:02x}"));
        }
        let mut raw = b"Raw profile type exif\0".to_vec();
        raw.extend_from_slice(hex.as_bytes());
        let with = |at: usize, chunks: &[Vec<u8>]| {
            let mut p = png.clone();
            p.splice(at..at, chunks.concat());
            p
        };
        let cases = [
            (
                with(ihdr_end, &[png_chunk(b"iTXt", &itxt)]),
                Orientation::Rotate270,
            ),
            (
                with(iend, &[png_chunk(b"iTXt", &itxt)]),
                Orientation::Rotate270,
            ),
            (
                with(ihdr_end, &[png_chunk(b"tEXt", &raw)]),
                Orientation::Rotate180,
            ),
            (
                with(
                    ihdr_end,
                    &[png_chunk(b"tEXt", &raw), png_chunk(b"iTXt", &itxt)],
                ),
                Orientation::Rotate180,
            ),
        ];
        for (k, (file, want)) in cases.into_iter().enumerate() {
            let img = decode_rgb8(&file, DecodeLimits::default()).unwrap();
            assert_eq!(img, orient(plain.clone(), want), "case {k}");
        }
    }

    #[test]
    fn a_decoder_panic_is_a_rejection() {
        let got: Result<(), _> = guarded(ImageFormat::Png, || panic!("a decoder bug"));
        match got {
            Err(ImageError::Corrupt { format, detail }) => {
                assert_eq!(format, ImageFormat::Png);
                assert!(detail.contains("decoder failed"), "{detail}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(guarded(ImageFormat::Gif, || Ok(7)).unwrap(), 7);
    }

    /// WebP: the `XMP ` chunk, unless the `EXIF` chunk has the tag.
    #[test]
    fn a_webp_is_oriented_by_its_xmp_chunk() {
        let (w, h) = (6u32, 4u32);
        let px: Vec<u8> = (0..w * h * 3).map(|i| (i * 29 % 256) as u8).collect();
        let mut lossless = Vec::new();
        use ::image::ImageEncoder;
        ::image::codecs::webp::WebPEncoder::new_lossless(&mut lossless)
            .write_image(&px, w, h, ::image::ExtendedColorType::Rgb8)
            .unwrap();
        let plain = decode_rgb8(&lossless, DecodeLimits::default()).unwrap();
        let vp8l_len = u32::from_le_bytes(lossless[16..20].try_into().unwrap()) as usize;
        let vp8l = &lossless[20..20 + vp8l_len];
        let riff = |extra: &[(&[u8; 4], Vec<u8>)]| {
            // VP8X flagging the EXIF and XMP chunks, the image, the chunks.
            let flags = extra.iter().fold(0u8, |f, (kind, _)| {
                f | if kind == &b"EXIF" { 0x08 } else { 0x04 }
            });
            let mut vp8x = vec![flags, 0, 0, 0];
            vp8x.extend_from_slice(&(w - 1).to_le_bytes()[..3]);
            vp8x.extend_from_slice(&(h - 1).to_le_bytes()[..3]);
            let mut chunks: Vec<(&[u8; 4], &[u8])> = vec![(b"VP8X", &vp8x), (b"VP8L", vp8l)];
            chunks.extend(extra.iter().map(|(kind, data)| (*kind, data.as_slice())));
            super::super::webp::tests::riff(&chunks)
        };
        let cases = [
            (riff(&[(b"XMP ", xmp_packet(6))]), Orientation::Rotate90),
            (
                riff(&[(b"EXIF", tiff(false, 3, 1)), (b"XMP ", xmp_packet(6))]),
                Orientation::NoTransforms,
            ),
        ];
        for (k, (file, want)) in cases.into_iter().enumerate() {
            let img = decode_rgb8(&file, DecodeLimits::default()).unwrap();
            assert_eq!(img, orient(plain.clone(), want), "case {k}");
        }
    }

    /// A PNG's eXIf chunk is read wherever it sits, after the pixels too;
    /// the rotation is checked against the same image rotated by hand.
    #[test]
    fn a_png_exif_chunk_after_the_pixels_orients_the_image() {
        let (w, h) = (5u32, 3u32);
        let px: Vec<u8> = (0..w * h * 3).map(|i| (i * 17 % 256) as u8).collect();
        let png = png_rgb(&px, w, h);
        let iend = png.len() - 12;
        let block = tiff(true, 3, 6);
        let mut rotated = png.clone();
        rotated.splice(iend..iend, png_chunk(b"eXIf", &block));
        let img = decode_rgb8(&rotated, DecodeLimits::default()).unwrap();
        assert_eq!((img.width, img.height), (h, w));
        // Orientation 6: rotate 90° clockwise, so the output's row y,
        // column x is the input's row h-1-x, column y.
        for y in 0..w {
            for x in 0..h {
                let o = ((y * h + x) * 3) as usize;
                let i = (((h - 1 - x) * w + y) * 3) as usize;
                assert_eq!(img.data[o..o + 3], px[i..i + 3], "at {x},{y}");
            }
        }
        let plain = decode_rgb8(&png, DecodeLimits::default()).unwrap();
        assert_eq!((plain.width, plain.height, plain.data), (w, h, px));
    }

    #[test]
    fn decoder_errors_read_as_reasons() {
        let (w, h) = (4u32, 4u32);
        let px = vec![7u8; (w * h * 3) as usize];
        let png = png_rgb(&px, w, h);
        // (An IDAT's CRC is not the test: pixel data that verifies behind
        // it is salvaged.)
        let mut bad_crc = png.clone();
        bad_crc[8 + 8 + 13] ^= 0xFF;
        let why = decode_rgb8(&bad_crc, DecodeLimits::default())
            .unwrap_err()
            .to_string();
        assert!(why.contains("IHDR") && !why.contains("ChunkType"), "{why}");
        let mut bmp = Vec::new();
        use ::image::ImageEncoder;
        ::image::codecs::bmp::BmpEncoder::new(&mut bmp)
            .write_image(&px, w, h, ::image::ExtendedColorType::Rgb8)
            .unwrap();
        let why = decode_rgb8(&bmp[..bmp.len() - 5], DecodeLimits::default())
            .unwrap_err()
            .to_string();
        assert_eq!(
            why,
            "corrupt bmp: truncated: the file ends before the image does"
        );
    }

    /// CRC-32 of PNG chunks (ISO 3309), bit by bit: an independent check
    /// of the chunk the test builds.
    fn crc32(data: &[u8]) -> u32 {
        let mut c = !0u32;
        for &b in data {
            c ^= u32::from(b);
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
            }
        }
        !c
    }

    /// A zero-sized image is reported as corrupt in its own format.
    #[test]
    fn zero_sized_images_name_their_own_format() {
        let err = check_pixels(ImageFormat::Gif, 0, 5, DecodeLimits::default()).unwrap_err();
        assert_eq!(err.to_string(), "corrupt gif: zero-sized image");
        assert!(check_pixels(ImageFormat::Png, 5, 5, DecodeLimits::default()).is_ok());
    }
}
