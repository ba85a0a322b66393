//! Where a file's orientation comes from: its EXIF block, and when that
//! has no orientation tag, its XMP packet, in the order Pillow's
//! `getexif` (and so `ImageOps.exif_transpose`) reads them, so that a
//! dataset packed here is turned as a PyTorch pipeline turns it.
//!
//! Invariants: an orientation tag present in the EXIF block decides, even
//! when its value means nothing (then the image is not turned and the XMP
//! packet is not read); only a file with no EXIF block or no tag falls back
//! to XMP, where the first `tiff:Orientation="D"` or
//! `tiff:Orientation>D` (D one digit) counts, as Pillow's regular
//! expression reads it (`tiff:Orientation='6'` is not read, by Pillow
//! either). Which XMP packet counts follows Pillow too: JPEG the last
//! `http://ns.adobe.com/xap/1.0/` APP1 segment before the first scan, PNG
//! the last text chunk keyed `XML:com.adobe.xmp`, WebP the first `XMP `
//! chunk, TIFF tag 700 of the first directory. GIF and BMP carry neither.
//! Nothing here panics on bad bytes.

use ::image::metadata::Orientation;

use super::exif::OrientationTag;

/// The namespace line opening a JPEG APP1 segment that holds XMP.
pub(crate) const JPEG_XMP_NAMESPACE: &[u8] = b"http://ns.adobe.com/xap/1.0/\0";

/// The orientation given by an EXIF tag or, failing a tag (not a tag whose
/// value means nothing), by an XMP packet.
pub(crate) fn resolve(exif_tag: OrientationTag, xmp: Option<&[u8]>) -> Orientation {
    let found = match exif_tag {
        Some(tag) => tag,
        None => xmp.and_then(xmp_orientation),
    };
    found.unwrap_or(Orientation::NoTransforms)
}

/// `tiff:Orientation` in an XMP packet, as an attribute (`="6"`) or an
/// element (`>6<`): the first place where the name is followed by `="` or
/// `>` and a digit. A digit outside 1..=8 is no orientation.
pub(crate) fn xmp_orientation(packet: &[u8]) -> Option<Orientation> {
    const NAME: &[u8] = b"tiff:Orientation";
    let mut from = 0;
    while let Some(k) = memchr::memmem::find(&packet[from..], NAME) {
        let after = from + k + NAME.len();
        let digit = match packet.get(after..) {
            Some([b'=', b'"', d, ..]) | Some([b'>', d, ..]) if d.is_ascii_digit() => Some(*d),
            _ => None,
        };
        if let Some(d) = digit {
            return Orientation::from_exif(d - b'0');
        }
        from = after;
    }
    None
}

/// The XMP packet of a JPEG APP1 segment (the bytes after its namespace
/// line), when the segment holds XMP.
pub(crate) fn jpeg_xmp(segment: &[u8]) -> Option<&[u8]> {
    segment.strip_prefix(JPEG_XMP_NAMESPACE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_attribute_and_the_element_forms() {
        let attr = br#"<rdf:Description tiff:Orientation="6" tiff:Make="x"/>"#;
        assert_eq!(xmp_orientation(attr), Some(Orientation::Rotate90));
        let elem = b"<tiff:Orientation>3</tiff:Orientation>";
        assert_eq!(xmp_orientation(elem), Some(Orientation::Rotate180));
        let eight = br#"tiff:Orientation="8""#;
        assert_eq!(xmp_orientation(eight), Some(Orientation::Rotate270));
    }

    #[test]
    fn the_first_readable_occurrence_counts() {
        // Single quotes, spaces and a namespace declaration are not the
        // forms Pillow's expression matches; the next occurrence is read.
        let packet = br#"xmlns:tiff="x" tiff:Orientation='6' tiff:Orientation = "5" <tiff:Orientation>8</tiff:Orientation> tiff:Orientation="3""#;
        assert_eq!(xmp_orientation(packet), Some(Orientation::Rotate270));
        assert_eq!(xmp_orientation(br#"tiff:Orientation='6'"#), None);
    }

    #[test]
    fn digits_outside_one_to_eight_and_cut_packets_are_no_orientation() {
        assert_eq!(xmp_orientation(br#"tiff:Orientation="0""#), None);
        assert_eq!(xmp_orientation(br#"tiff:Orientation="9""#), None);
        // Only the first digit is read, as Pillow's ([0-9]) reads it.
        assert_eq!(
            xmp_orientation(br#"tiff:Orientation="61""#),
            Some(Orientation::Rotate90)
        );
        let whole = br#"tiff:Orientation="6""#;
        for cut in 0..whole.len() - 1 {
            assert_eq!(xmp_orientation(&whole[..cut]), None, "cut {cut}");
        }
        assert_eq!(xmp_orientation(b""), None);
    }

    #[test]
    fn an_exif_tag_decides_even_when_its_value_is_meaningless() {
        let xmp: &[u8] = br#"tiff:Orientation="6""#;
        assert_eq!(resolve(None, Some(xmp)), Orientation::Rotate90);
        assert_eq!(resolve(Some(None), Some(xmp)), Orientation::NoTransforms);
        assert_eq!(
            resolve(Some(Some(Orientation::Rotate180)), Some(xmp)),
            Orientation::Rotate180
        );
        assert_eq!(resolve(None, None), Orientation::NoTransforms);
    }

    #[test]
    fn jpeg_segments_hold_xmp_only_after_the_namespace_line() {
        let mut seg = JPEG_XMP_NAMESPACE.to_vec();
        seg.extend_from_slice(b"<x/>");
        assert_eq!(jpeg_xmp(&seg), Some(&b"<x/>"[..]));
        assert_eq!(jpeg_xmp(b"http://ns.adobe.com/xap/1.0/<x/>"), None);
        assert_eq!(jpeg_xmp(b"Exif\0\0"), None);
    }
}
