//! Re-encoding cost and result of the JPEG settings `ebv-pack --encoding jpeg`
//! can use, on every JPEG entry of a zip brought to 224×224 as the packer
//! does: encode time, bytes, the loader's decode time and PSNR against the
//! 224×224 pixels, one JSON line per setting (BENCHMARKS.md).
//! With a third argument the 224×224 pixels are also written there (raw
//! RGB8, image after image) so that a peer encoder can take the same input.
//!
//! `cargo run --release --example encode_rate -- data.zip QUALITY [pixels.rgb]`

use std::io::{Read, Write};
use std::time::Instant;

use ebv::image::{decode_rgb8, ResizeMode, Resizer};
use jpeg_encoder::{ChromaSubsamplingMethod, ColorType, Encoder, SamplingFactor};

const SIDE: u32 = 224;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let usage = || anyhow::anyhow!("usage: encode_rate ZIP QUALITY [PIXELS_OUT]");
    let path = args.next().ok_or_else(usage)?;
    let quality: u8 = args.next().ok_or_else(usage)?.parse()?;
    let dump = args.next();
    let mut zip = zip::ZipArchive::new(std::fs::File::open(&path)?)?;
    let mut resizer = Resizer::default();
    let mut images = Vec::new();
    for i in 0..zip.len() {
        let mut f = zip.by_index(i)?;
        let name = f.name()?.to_ascii_lowercase();
        if !(name.ends_with(".jpg") || name.ends_with(".jpeg")) {
            continue;
        }
        let mut v = Vec::new();
        f.read_to_end(&mut v)?;
        let img = decode_rgb8(&v, Default::default())?;
        let img = if (img.width, img.height) == (SIDE, SIDE) {
            img
        } else {
            resizer
                .resize(&img, SIDE, SIDE, ResizeMode::Stretch)
                .map_err(anyhow::Error::msg)?
        };
        images.push(img.data);
    }
    if let Some(out) = dump {
        let mut f = std::io::BufWriter::new(std::fs::File::create(out)?);
        for px in &images {
            f.write_all(px)?;
        }
        f.flush()?;
    }
    let settings: [(&str, SamplingFactor, ChromaSubsamplingMethod); 3] = [
        (
            "444",
            SamplingFactor::F_1_1,
            ChromaSubsamplingMethod::Nearest,
        ),
        (
            "420-nearest",
            SamplingFactor::F_2_2,
            ChromaSubsamplingMethod::Nearest,
        ),
        (
            "420-average",
            SamplingFactor::F_2_2,
            ChromaSubsamplingMethod::Average,
        ),
    ];
    for (name, sampling, method) in settings {
        let start = Instant::now();
        let mut encoded = Vec::with_capacity(images.len());
        for px in &images {
            let mut out = Vec::with_capacity(px.len() / 6);
            let mut enc = Encoder::new(&mut out, quality);
            enc.set_sampling_factor(sampling);
            enc.set_chroma_subsampling_method(method);
            enc.encode(px, SIDE as u16, SIDE as u16, ColorType::Rgb)?;
            encoded.push(out);
        }
        let encode_s = start.elapsed().as_secs_f64();
        let start = Instant::now();
        let mut decoded = Vec::with_capacity(images.len());
        for jpg in &encoded {
            decoded.push(decode_rgb8(jpg, Default::default())?.data);
        }
        let decode_s = start.elapsed().as_secs_f64();
        let (mut se, mut n) = (0f64, 0f64);
        for (a, b) in images.iter().zip(&decoded) {
            for (x, y) in a.iter().zip(b) {
                let d = f64::from(*x) - f64::from(*y);
                se += d * d;
            }
            n += a.len() as f64;
        }
        let bytes: usize = encoded.iter().map(Vec::len).sum();
        let k = images.len() as f64;
        println!(
            "{{\"setting\": \"{name}\", \"quality\": {quality}, \"images\": {}, \"encode_us\": {:.1}, \"decode_us\": {:.1}, \"bytes_per_image\": {:.0}, \"psnr_db\": {:.3}}}",
            images.len(),
            encode_s * 1e6 / k,
            decode_s * 1e6 / k,
            bytes as f64 / k,
            10.0 * (255.0f64 * 255.0 / (se / n)).log10()
        );
    }
    Ok(())
}
