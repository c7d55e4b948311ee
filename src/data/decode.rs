//! Image decoding with limits, area-average resizing and quarter-turn rotations.

use std::io::{Cursor, Read};
use std::path::Path;

use image::{DynamicImage, ImageReader, Limits};

use super::DataError;

/// Images wider or taller than this are refused from their header, before any allocation.
pub const MAX_IMAGE_SIDE: u32 = 8192;
/// Decoder allocation limit.
pub const MAX_ALLOC_BYTES: u64 = 256 << 20;
/// Image files (or zip entries) larger than this are refused before being read.
pub const MAX_FILE_BYTES: u64 = 256 << 20;

fn limits() -> Limits {
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_IMAGE_SIDE);
    limits.max_image_height = Some(MAX_IMAGE_SIDE);
    limits.max_alloc = Some(MAX_ALLOC_BYTES);
    limits
}

/// Reads all of `reader` (an image file or zip entry that declares `declared` bytes),
/// refusing more than [`MAX_FILE_BYTES`] whether declared or actual; `name` is what errors
/// name.
pub(crate) fn read_limited(
    reader: impl Read,
    declared: u64,
    name: &str,
) -> Result<Vec<u8>, DataError> {
    let too_big = |n: u64| {
        DataError::layout(
            name,
            format!("{n} bytes or more, over the {MAX_FILE_BYTES}-byte limit for one image"),
        )
    };
    if declared > MAX_FILE_BYTES {
        return Err(too_big(declared));
    }
    // The declared size is only a hint (a zip entry can claim anything up to the limit):
    // reserve at most 1 MiB up front and let the buffer grow with what is actually read.
    let mut bytes = Vec::with_capacity(declared.min(1 << 20) as usize);
    reader
        .take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| DataError::io(name, e))?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(too_big(bytes.len() as u64));
    }
    Ok(bytes)
}

/// Reads a whole image file, refusing one larger than [`MAX_FILE_BYTES`].
pub fn read_file(path: &Path) -> Result<Vec<u8>, DataError> {
    let name = path.display().to_string();
    let file = std::fs::File::open(path).map_err(|e| DataError::io(&name, e))?;
    let len = file.metadata().map_err(|e| DataError::io(&name, e))?.len();
    read_limited(file, len, &name)
}

/// Decodes an encoded image (format guessed from its bytes) under the size limits; `name`
/// (a file path, or `archive.zip:entry`) is what an error names.
pub fn decode(bytes: &[u8], name: &str) -> Result<DynamicImage, DataError> {
    let bad = |reason: String| DataError::BadImage {
        path: name.to_string(),
        reason,
    };
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| bad(e.to_string()))?;
    if reader.format().is_none() {
        return Err(bad(
            "not a PNG or JPEG file (unrecognised header)".to_string()
        ));
    }
    reader.limits(limits());
    reader.decode().map_err(|e| bad(e.to_string()))
}

/// The image as `channels` planes (1 = luma, 3 = RGB; alpha dropped) of `width * height`
/// floats in `[0, 1]`, CHW.
pub fn planes(img: &DynamicImage, channels: usize) -> Vec<f32> {
    let (w, h) = (img.width() as usize, img.height() as usize);
    if channels == 1 {
        img.to_luma32f().into_raw()
    } else {
        let rgb = img.to_rgb32f();
        let raw = rgb.as_raw();
        let mut out = vec![0.0; 3 * w * h];
        for (i, px) in raw.chunks_exact(3).enumerate() {
            for c in 0..3 {
                out[c * w * h + i] = px[c];
            }
        }
        out
    }
}

/// For each output index, the source indices it covers and their weights (summing to 1):
/// output pixel `o` averages the source interval `[o, o + 1) * src / dst`.
fn area_weights(src: usize, dst: usize) -> Vec<Vec<(usize, f32)>> {
    let scale = src as f64 / dst as f64;
    (0..dst)
        .map(|o| {
            let (a, b) = (o as f64 * scale, (o + 1) as f64 * scale);
            let mut weights = Vec::new();
            let mut i = a.floor() as usize;
            while (i as f64) < b && i < src {
                let overlap = b.min((i + 1) as f64) - a.max(i as f64);
                if overlap > 1e-12 {
                    weights.push((i, (overlap / scale) as f32));
                }
                i += 1;
            }
            weights
        })
        .collect()
}

/// Resizes `channels` planes of `w x h` to `out_w x out_h` by area averaging (an exact box
/// filter: antialiased when shrinking, a sharp box when enlarging).
pub fn resize_area(
    src: &[f32],
    channels: usize,
    w: usize,
    h: usize,
    out_w: usize,
    out_h: usize,
) -> Vec<f32> {
    if (w, h) == (out_w, out_h) {
        return src.to_vec();
    }
    let wx = area_weights(w, out_w);
    let wy = area_weights(h, out_h);
    let mut out = vec![0.0f32; channels * out_w * out_h];
    let mut rows = vec![0.0f32; h * out_w];
    for c in 0..channels {
        let plane = &src[c * w * h..(c + 1) * w * h];
        for y in 0..h {
            let line = &plane[y * w..(y + 1) * w];
            for (x, weights) in wx.iter().enumerate() {
                rows[y * out_w + x] = weights.iter().map(|&(i, k)| line[i] * k).sum();
            }
        }
        let dst = &mut out[c * out_w * out_h..(c + 1) * out_w * out_h];
        for (y, weights) in wy.iter().enumerate() {
            for x in 0..out_w {
                let v: f32 = weights.iter().map(|&(i, k)| rows[i * out_w + x] * k).sum();
                dst[y * out_w + x] = v.clamp(0.0, 1.0);
            }
        }
    }
    out
}

/// Rotates a square single-channel `size x size` image counter-clockwise by
/// `quarter_turns * 90` degrees (as PIL's `Image.rotate(90 * quarter_turns)`).
pub fn rotate_ccw(src: &[f32], size: usize, quarter_turns: usize) -> Vec<f32> {
    let s = size;
    let mut out = vec![0.0; s * s];
    for y in 0..s {
        for x in 0..s {
            out[y * s + x] = match quarter_turns % 4 {
                0 => src[y * s + x],
                // Counter-clockwise 90: the top row of the output is the right column of the input.
                1 => src[x * s + (s - 1 - y)],
                2 => src[(s - 1 - y) * s + (s - 1 - x)],
                _ => src[(s - 1 - x) * s + y],
            };
        }
    }
    out
}
