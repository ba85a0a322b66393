//! Image decoding, resizing and JPEG handling shared by the packer, the
//! loader and the statistics tool.
//!
//! Invariants: every decoded image is tightly packed RGB8, row-major, with
//! the EXIF (or XMP) orientation already applied; nothing here panics on bad bytes —
//! every failure is an [`ImageError`] that says what was wrong.

mod bmp;
mod bmp_rle;
mod decode;
mod exif;
mod format;
mod gif;
mod ifd;
mod jpeg;
mod jpeg_arith;
mod jpeg_blocks;
mod jpeg_lossless;
mod jpeg_scan;
mod jpeg_stream;
mod orientation;
mod png;
mod png_text;
mod resize;
mod tiff;
mod webp;

pub use decode::{
    check_coded_data, check_scan_order, decode_rgb8, gray_to_rgb8, DecodeLimits, ImageError,
    Rgb8Image,
};
pub use format::{sniff_format, ImageFormat};
pub use jpeg::{encode_jpeg, JpegHeader, Subsampling};
pub use resize::{ResizeMode, Resizer};

mod into;
pub use into::decode_rgb8_into;
