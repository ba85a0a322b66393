//! What a JPEG's markers say (without decoding) and JPEG encoding.
//!
//! The packer stores a source JPEG untouched when it is already the target
//! size, in colour, upright and structurally whole; [`JpegHeader`] answers
//! that from the markers alone ([`super::jpeg_stream::walk`]), which costs
//! microseconds instead of the ~0.2 ms a full decode of a 224×224 image
//! takes.

use ::image::metadata::Orientation;

use super::decode::ImageError;
use super::format::ImageFormat;
use super::jpeg_stream::{walk, Fault};

/// What the markers of a JPEG stream say, read without decoding the scans.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JpegHeader {
    pub width: u32,
    pub height: u32,
    /// Number of colour components: 1 (gray), 3 (YCbCr/RGB), 4 (CMYK/YCCK).
    pub components: u8,
    pub progressive: bool,
    /// Horizontal and vertical sampling factor of each component, in frame
    /// order.
    pub sampling: Vec<(u8, u8)>,
    /// EXIF orientation; `NoTransforms` when absent.
    pub orientation: Orientation,
    /// Whether a strict reader takes the bytes as they are: Huffman-coded
    /// DCT, no bytes between segments, every Huffman table defined,
    /// sequential scans with the standard parameters (libjpeg reads such
    /// files with a warning or its default tables; they are decoded and
    /// re-encoded).
    pub clean: bool,
}

impl JpegHeader {
    /// Walks the markers and scans of `bytes` to the end of the image; an
    /// error is the reason the image is rejected.
    pub fn parse(bytes: &[u8]) -> Result<JpegHeader, ImageError> {
        let w = walk(bytes).map_err(fault_error)?;
        Ok(JpegHeader {
            width: w.width,
            height: w.height,
            components: w.components.len() as u8,
            progressive: w.progressive,
            sampling: w.components.iter().map(|c| (c.h, c.v)).collect(),
            orientation: w.orientation,
            clean: w.clean(),
        })
    }

    /// The chroma sampling as it is usually written: `4:4:4`, `4:2:2`,
    /// `4:2:0`, `4:4:0`, `4:1:1` for three components whose two chroma
    /// planes are sampled 1×1, `gray` for one component, otherwise the
    /// factors (`2x2,1x1,1x1,2x2` for a subsampled YCCK frame).
    pub fn chroma(&self) -> String {
        let named = match self.sampling[..] {
            [_] => Some("gray"),
            [luma, (1, 1), (1, 1)] => match luma {
                (1, 1) => Some("4:4:4"),
                (2, 1) => Some("4:2:2"),
                (2, 2) => Some("4:2:0"),
                (1, 2) => Some("4:4:0"),
                (4, 1) => Some("4:1:1"),
                _ => None,
            },
            _ => None,
        };
        match named {
            Some(n) => n.to_string(),
            None => self
                .sampling
                .iter()
                .map(|(h, v)| format!("{h}x{v}"))
                .collect::<Vec<_>>()
                .join(","),
        }
    }

    /// Whether a decoder would show these bytes, as they are, as a
    /// `width`×`height` upright 8-bit colour image (only 8-bit frames with
    /// a whole structure parse at all; arithmetic-coded and lossless ones,
    /// which the loader's decoder does not read, are never clean).
    pub fn is_passthrough(&self, width: u32, height: u32) -> bool {
        self.width == width
            && self.height == height
            && self.components == 3
            && self.orientation == Orientation::NoTransforms
            && self.clean
    }
}

/// The rejection reason of a stream the walk refused.
pub(crate) fn fault_error(f: Fault) -> ImageError {
    match f {
        Fault::Unsupported(what) => ImageError::Unsupported(what),
        other => ImageError::Corrupt {
            format: ImageFormat::Jpeg,
            detail: other.to_string(),
        },
    }
}

/// How a re-encoded JPEG samples its two chroma planes.
///
/// `S420` halves them both ways, each chroma sample the mean of its 2×2
/// pixels (libjpeg's and Pillow's default at every quality, and what most
/// photo JPEGs carry); `S444` keeps them whole: ~20 % more bytes and a ~20 %
/// slower decode in the loader for ~4 dB PSNR on 224² photos (BENCHMARKS.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum Subsampling {
    #[default]
    #[serde(rename = "420")]
    S420,
    #[serde(rename = "444")]
    S444,
}

impl Subsampling {
    /// The flag's value: `420` or `444`.
    pub fn as_str(self) -> &'static str {
        match self {
            Subsampling::S420 => "420",
            Subsampling::S444 => "444",
        }
    }
}

impl std::str::FromStr for Subsampling {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "420" | "4:2:0" => Ok(Subsampling::S420),
            "444" | "4:4:4" => Ok(Subsampling::S444),
            other => Err(format!(
                "unknown chroma subsampling '{other}' (expected 420 or 444)"
            )),
        }
    }
}

/// Encode tightly packed RGB8 pixels as a baseline JPEG at `quality`
/// (1–100) with the given chroma sampling.
///
/// Both are set explicitly: left alone, jpeg-encoder switches to 4:4:4 at
/// quality ≥ 90 and below that keeps the top-left pixel of each 2×2 block as
/// its chroma (aliasing; 3 dB worse than the mean on 224² photos).
pub fn encode_jpeg(
    rgb: &[u8],
    width: u32,
    height: u32,
    quality: u8,
    subsampling: Subsampling,
) -> Result<Vec<u8>, String> {
    let (w, h) = match (u16::try_from(width), u16::try_from(height)) {
        (Ok(w), Ok(h)) => (w, h),
        _ => return Err(format!("{width}x{height} is too large for JPEG")),
    };
    let mut out = Vec::with_capacity(rgb.len() / 6);
    let mut encoder = jpeg_encoder::Encoder::new(&mut out, quality.clamp(1, 100));
    match subsampling {
        Subsampling::S420 => {
            encoder.set_sampling_factor(jpeg_encoder::SamplingFactor::F_2_2);
            encoder.set_chroma_subsampling_method(jpeg_encoder::ChromaSubsamplingMethod::Average);
        }
        Subsampling::S444 => encoder.set_sampling_factor(jpeg_encoder::SamplingFactor::F_1_1),
    }
    encoder
        .encode(rgb, w, h, jpeg_encoder::ColorType::Rgb)
        .map_err(|e| e.to_string())?;
    Ok(out)
}

/// A smooth RGB8 test image whose three channels differ.
#[cfg(test)]
pub(crate) fn gradient(width: u32, height: u32) -> Vec<u8> {
    let mut v = Vec::new();
    for y in 0..height {
        for x in 0..width {
            v.extend_from_slice(&[(x * 5) as u8, (y * 3) as u8, ((x + y) * 2) as u8]);
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_of_an_encoded_jpeg() {
        let bytes = encode_jpeg(&gradient(40, 24), 40, 24, 90, Subsampling::S420).unwrap();
        let h = JpegHeader::parse(&bytes).unwrap();
        assert_eq!((h.width, h.height, h.components), (40, 24, 3));
        assert!(h.clean && !h.progressive);
        assert!(h.is_passthrough(40, 24));
        assert!(!h.is_passthrough(24, 40));
    }

    #[test]
    fn truncation_is_an_error() {
        let bytes = encode_jpeg(&gradient(40, 24), 40, 24, 90, Subsampling::S420).unwrap();
        for cut in [bytes.len() - 100, bytes.len() - 1, 10, 3] {
            let err = JpegHeader::parse(&bytes[..cut]).unwrap_err();
            assert_eq!(
                err.to_string(),
                "corrupt jpeg: truncated (no end-of-image marker)",
                "cut at {cut}"
            );
        }
        assert!(JpegHeader::parse(b"not a jpeg").is_err());
    }

    /// A 224² colour JPEG whose frame header says hierarchical, lossless
    /// arithmetic or 12-bit coding: a reader could not decode it, so it is
    /// never stored untouched, and the decoder names what it is.
    #[test]
    fn frames_the_decoder_cannot_read_are_neither_passed_through_nor_decoded() {
        let bytes = encode_jpeg(&gradient(224, 224), 224, 224, 90, Subsampling::S420).unwrap();
        let sof = bytes.windows(2).position(|w| w == [0xFF, 0xC0]).unwrap();
        let cases: [(u8, u8, &str); 8] = [
            (0xC9, 12, "12-bit arithmetic-coded jpeg (SOF9)"),
            (0xCA, 12, "12-bit arithmetic-coded jpeg (SOF10)"),
            (0xCB, 8, "lossless arithmetic-coded jpeg (SOF11)"),
            (0xC3, 12, "12-bit lossless jpeg (SOF3)"),
            (0xC5, 8, "hierarchical jpeg (SOF5)"),
            (0xCD, 8, "hierarchical arithmetic-coded jpeg (SOF13)"),
            (0xC1, 12, "12-bit jpeg (SOF1)"),
            (0xC2, 12, "12-bit jpeg (SOF2)"),
        ];
        for (marker, precision, what) in cases {
            let mut b = bytes.clone();
            b[sof + 1] = marker;
            b[sof + 4] = precision;
            let want = format!("unsupported image format: {what}");
            assert_eq!(JpegHeader::parse(&b).unwrap_err().to_string(), want);
            let err = crate::image::decode_rgb8(&b, Default::default()).unwrap_err();
            assert_eq!(err.to_string(), want);
        }
        // An 8-bit arithmetic-coded frame is decoded (re-coded first), and
        // never kept: the loader's decoder reads Huffman coding only.
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/jpeg-arith");
        for name in ["seq-420", "prog-420"] {
            let b = std::fs::read(dir.join(format!("{name}.arith.jpg"))).unwrap();
            let header = JpegHeader::parse(&b).unwrap();
            assert_eq!((header.width, header.height), (61, 45));
            assert_eq!(header.progressive, name.starts_with("prog"));
            assert!(!header.is_passthrough(61, 45), "{name}");
            assert!(crate::image::decode_rgb8(&b, Default::default()).is_ok());
        }
        // Extended sequential (SOF1) 8-bit Huffman is ordinary baseline
        // data to every reader: kept.
        let mut b = bytes.clone();
        b[sof + 1] = 0xC1;
        assert!(JpegHeader::parse(&b).unwrap().is_passthrough(224, 224));
        assert!(crate::image::decode_rgb8(&b, Default::default()).is_ok());
    }

    /// Horizontal×vertical sampling factor of each component, from the SOF0.
    fn sampling_factors(jpeg: &[u8]) -> Vec<u8> {
        let sof = jpeg.windows(2).position(|w| w == [0xFF, 0xC0]).unwrap();
        let n = jpeg[sof + 9] as usize;
        (0..n).map(|k| jpeg[sof + 11 + 3 * k]).collect()
    }

    /// Left to itself jpeg-encoder picks 4:4:4 from quality 90 up and 4:2:0
    /// below: the flag must decide it at every quality.
    #[test]
    fn subsampling_is_what_was_asked_at_every_quality() {
        let rgb = gradient(32, 16);
        for q in [50, 89, 90, 95, 100] {
            let s420 = encode_jpeg(&rgb, 32, 16, q, Subsampling::S420).unwrap();
            assert_eq!(sampling_factors(&s420), [0x22, 0x11, 0x11], "q{q}");
            let s444 = encode_jpeg(&rgb, 32, 16, q, Subsampling::S444).unwrap();
            assert_eq!(sampling_factors(&s444), [0x11, 0x11, 0x11], "q{q}");
            assert_eq!(JpegHeader::parse(&s420).unwrap().chroma(), "4:2:0");
            assert_eq!(JpegHeader::parse(&s444).unwrap().chroma(), "4:4:4");
        }
        for (text, want) in [
            ("420", Subsampling::S420),
            ("4:2:0", Subsampling::S420),
            ("444", Subsampling::S444),
            ("4:4:4", Subsampling::S444),
        ] {
            assert_eq!(text.parse::<Subsampling>().unwrap(), want);
        }
        let err = "422".parse::<Subsampling>().unwrap_err();
        assert!(err.contains("'422'") && err.contains("420 or 444"), "{err}");
    }

    #[test]
    fn chroma_names() {
        let header = |sampling: &[(u8, u8)]| JpegHeader {
            width: 8,
            height: 8,
            components: sampling.len() as u8,
            progressive: false,
            sampling: sampling.to_vec(),
            orientation: Orientation::NoTransforms,
            clean: true,
        };
        for (sampling, want) in [
            (&[(1, 1)][..], "gray"),
            (&[(2, 2)][..], "gray"),
            (&[(1, 1), (1, 1), (1, 1)][..], "4:4:4"),
            (&[(2, 1), (1, 1), (1, 1)][..], "4:2:2"),
            (&[(2, 2), (1, 1), (1, 1)][..], "4:2:0"),
            (&[(1, 2), (1, 1), (1, 1)][..], "4:4:0"),
            (&[(4, 1), (1, 1), (1, 1)][..], "4:1:1"),
            (&[(2, 2), (2, 1), (1, 1)][..], "2x2,2x1,1x1"),
            (&[(1, 1), (2, 2), (2, 2)][..], "1x1,2x2,2x2"),
            (&[(2, 2), (1, 1), (1, 1), (2, 2)][..], "2x2,1x1,1x1,2x2"),
        ] {
            assert_eq!(header(sampling).chroma(), want, "{sampling:?}");
        }
    }

    /// Largest difference between two equally long pixel buffers.
    fn max_diff(a: &[u8], b: &[u8]) -> i32 {
        assert_eq!(a.len(), b.len());
        a.iter()
            .zip(b)
            .map(|(&x, &y)| (i32::from(x) - i32::from(y)).abs())
            .max()
            .unwrap_or(0)
    }

    /// Blocks cut by the image edge (odd sizes, one pixel) average the
    /// pixels they have: a flat colour comes back flat.
    #[test]
    fn odd_sizes_subsample_within_the_image() {
        for (w, h) in [(1, 1), (1, 7), (3, 5), (17, 2), (225, 223)] {
            let rgb: Vec<u8> = [200u8, 40, 90].repeat((w * h) as usize);
            let bytes = encode_jpeg(&rgb, w, h, 95, Subsampling::S420).unwrap();
            let img = crate::image::decode_rgb8(&bytes, Default::default()).unwrap();
            assert_eq!((img.width, img.height), (w, h));
            let worst = max_diff(&img.data, &rgb);
            assert!(worst <= 3, "{w}x{h}: off by {worst}");
        }
    }

    /// Columns alternate pure red and pure blue, so every 2×2 block holds
    /// two of each and all blocks share one chroma: whatever filter the
    /// decoder upsamples with, 4:2:0 by the block mean decodes each pixel as
    /// its own luma with the mean chroma (JFIF equations, computed here),
    /// whereas keeping the top-left pixel's chroma would paint the blue
    /// columns red.
    #[test]
    fn subsampled_chroma_is_the_mean_of_each_block() {
        let (w, h) = (32u32, 16u32);
        let (red, blue) = ([255u8, 0, 0], [0u8, 0, 255]);
        let mut rgb = Vec::new();
        for _ in 0..h {
            for x in 0..w {
                rgb.extend_from_slice(if x % 2 == 0 { &red } else { &blue });
            }
        }
        let ycc = |p: [u8; 3]| {
            let (r, g, b) = (p[0] as f64, p[1] as f64, p[2] as f64);
            (
                0.299 * r + 0.587 * g + 0.114 * b,
                128.0 - 0.168736 * r - 0.331264 * g + 0.5 * b,
                128.0 + 0.5 * r - 0.418688 * g - 0.081312 * b,
            )
        };
        let ((yr, cbr, crr), (yb, cbb, crb)) = (ycc(red), ycc(blue));
        let (cb, cr) = ((cbr + cbb) / 2.0, (crr + crb) / 2.0);
        let rgb_of = |y: f64| {
            [
                y + 1.402 * (cr - 128.0),
                y - 0.344136 * (cb - 128.0) - 0.714136 * (cr - 128.0),
                y + 1.772 * (cb - 128.0),
            ]
            .map(|v| v.round().clamp(0.0, 255.0) as i32)
        };
        let want = [rgb_of(yr), rgb_of(yb)];
        // The two columns really do differ from their source colours: the
        // test would catch chroma taken from one pixel of the block.
        assert!(want[1][0] > 80 && want[1][2] < 150, "{want:?}");

        let bytes = encode_jpeg(&rgb, w, h, 100, Subsampling::S420).unwrap();
        let img = crate::image::decode_rgb8(&bytes, Default::default()).unwrap();
        let worst = img
            .data
            .chunks_exact(3)
            .enumerate()
            .flat_map(|(i, px)| {
                let x = i % w as usize;
                px.iter()
                    .zip(want[x % 2])
                    .map(|(&a, b)| (a as i32 - b).abs())
            })
            .max()
            .unwrap();
        assert!(
            worst <= 6,
            "decoded pixels differ from the block-mean chroma by up to {worst}"
        );

        // 4:4:4 keeps every pixel's own colour.
        let bytes = encode_jpeg(&rgb, w, h, 100, Subsampling::S444).unwrap();
        let img = crate::image::decode_rgb8(&bytes, Default::default()).unwrap();
        let worst = max_diff(&img.data, &rgb);
        assert!(worst <= 6, "4:4:4 differs from the source by up to {worst}");
    }
}
