//! IDX files (the MNIST family): big-endian magic, dimension sizes, then
//! unsigned bytes.

/// A decoded IDX image file: `count` images of `height`×`width`×`channels`.
#[derive(Debug, Clone)]
pub struct IdxImages {
    pub count: usize,
    pub height: u32,
    pub width: u32,
    /// 1 (grayscale, `[n, h, w]`) or 3 (RGB, `[n, h, w, 3]`).
    pub channels: u32,
    pub data: Vec<u8>,
}

impl IdxImages {
    /// The bytes of image `index`.
    pub fn image(&self, index: usize) -> Option<&[u8]> {
        let len = self.height as usize * self.width as usize * self.channels as usize;
        self.data
            .get(index.checked_mul(len)?..index.checked_add(1)?.checked_mul(len)?)
    }
}

fn header(bytes: &[u8]) -> Result<(u8, Vec<usize>, usize), String> {
    if bytes.len() < 4 || bytes[0] != 0 || bytes[1] != 0 {
        return Err("not an IDX file (bad magic)".into());
    }
    if bytes[2] != 0x08 {
        return Err(format!(
            "IDX element type 0x{:02x} is not unsigned byte",
            bytes[2]
        ));
    }
    let ndim = bytes[3] as usize;
    let start = 4 + 4 * ndim;
    if bytes.len() < start {
        return Err("truncated IDX header".into());
    }
    let dims = (0..ndim)
        .map(|d| {
            let b = &bytes[4 + 4 * d..8 + 4 * d];
            u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize
        })
        .collect::<Vec<_>>();
    let total = dims.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
    match total {
        Some(t) if bytes.len() >= start + t => Ok((bytes[3], dims, start)),
        _ => Err(format!(
            "truncated IDX data: header promises {:?}, file has {} bytes",
            dims,
            bytes.len()
        )),
    }
}

/// Parse an images file (`[n, h, w]` or `[n, h, w, 3]`).
pub fn parse_idx_images(bytes: Vec<u8>) -> Result<IdxImages, String> {
    let (ndim, dims, start) = header(&bytes)?;
    let channels = match (ndim, dims.get(3)) {
        (3, _) => 1,
        (4, Some(3)) => 3,
        _ => {
            return Err(format!(
                "IDX images must be [n, h, w] or [n, h, w, 3], found {dims:?}"
            ))
        }
    };
    if dims[1] == 0 || dims[2] == 0 {
        // Images of no pixels would come out as made-up black ones.
        return Err(format!(
            "IDX images of {}x{} pixels (header {dims:?}): a corrupt header",
            dims[2], dims[1]
        ));
    }
    let (Ok(height), Ok(width)) = (u32::try_from(dims[1]), u32::try_from(dims[2])) else {
        return Err(format!("IDX image size {dims:?} is out of range"));
    };
    let len = dims.iter().product::<usize>();
    let mut data = bytes;
    data.drain(..start);
    data.truncate(len);
    Ok(IdxImages {
        count: dims[0],
        height,
        width,
        channels,
        data,
    })
}

/// Parse a labels file (`[n]`).
pub fn parse_idx_labels(bytes: &[u8]) -> Result<Vec<u8>, String> {
    let (ndim, dims, start) = header(bytes)?;
    if ndim != 1 {
        return Err(format!(
            "IDX labels must be one-dimensional, found {dims:?}"
        ));
    }
    Ok(bytes[start..start + dims[0]].to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_images_and_labels() {
        let mut img = vec![0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 2, 0, 0, 0, 3];
        img.extend(0u8..12);
        let parsed = parse_idx_images(img).unwrap();
        assert_eq!(
            (parsed.count, parsed.height, parsed.width, parsed.channels),
            (2, 2, 3, 1)
        );
        assert_eq!(parsed.image(1).unwrap(), &[6, 7, 8, 9, 10, 11]);
        assert!(parsed.image(2).is_none());
        let labels = parse_idx_labels(&[0, 0, 8, 1, 0, 0, 0, 3, 5, 6, 7]).unwrap();
        assert_eq!(labels, vec![5, 6, 7]);
        assert!(parse_idx_labels(&[0, 0, 8, 1, 0, 0, 0, 4, 5, 6, 7]).is_err());
        assert!(parse_idx_images(vec![1, 2, 3, 4]).is_err());
        // 20 images of 0x28: a header that lost a dimension, not 20 images.
        let zero = vec![0, 0, 8, 3, 0, 0, 0, 20, 0, 0, 0, 0, 0, 0, 0, 28];
        let err = parse_idx_images(zero).unwrap_err();
        assert!(err.contains("28x0 pixels"), "{err}");
    }
}
