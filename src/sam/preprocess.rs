//! Slice preprocessing and mask postprocessing of the official LiteMedSAM
//! inference (bowang-lab/MedSAM `CVPR24_LiteMedSAM_infer.py`), preceded by the
//! CT window of MedSAM's CT preprocessing:
//!
//! 1. HU → clip to the window → 0..255 → `u8` (truncation, as MedSAM's npz data);
//! 2. resize so the longest side is 256 (other side `round(s·scale)`), with
//!    OpenCV's `INTER_AREA` on 8-bit data ([`resize_area_u8`]);
//! 3. min-max normalise to [0, 1]; zero-pad bottom/right to 256²; 3 channels.
//!
//! Boxes scale with `floor(coord · 256 / max(H, W))` (the official
//! `resize_box_to_256`); points scale without rounding (SAM's
//! `ResizeLongestSide`). Postprocess: crop the 256² logits to the resized
//! size, bilinear (half-pixel centres) to the slice size, sigmoid.
//!
//! Slice coordinates: x = column (canonical axis 0, i), y = row (axis 1, j),
//! pixel `(x, y)` at row-major index `y·W + x`.

use crate::{Error, Result};

/// MedSAM's CT soft-tissue window (level 40, width 400), the default.
pub const SOFT_TISSUE_WINDOW_HU: [f32; 2] = [-160.0, 240.0];

/// How a CT slice becomes the model input.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Preprocess {
    /// CT window `[low, high]` in HU mapped to 0..255.
    pub window_hu: [f32; 2],
    /// Side of the square model input (256 for LiteMedSAM).
    pub input_size: usize,
}

impl Default for Preprocess {
    fn default() -> Self {
        Self {
            window_hu: SOFT_TISSUE_WINDOW_HU,
            input_size: 256,
        }
    }
}

/// A slice ready for the encoder, with the geometry needed to map prompts in and masks out.
#[derive(Clone, Debug)]
pub struct PreparedSlice {
    /// `[S·S]` single-channel input, row-major, normalised to [0, 1], zero-padded.
    pub input: Vec<f32>,
    /// The resized 8-bit image before normalisation, `[resized_h · resized_w]`.
    pub resized_u8: Vec<u8>,
    /// Slice size `(height, width)` in pixels.
    pub slice_hw: [usize; 2],
    /// Size after the longest-side resize `(height, width)`, before padding.
    pub resized_hw: [usize; 2],
    /// Side of the model input.
    pub input_size: usize,
}

impl PreparedSlice {
    /// Scale factor slice pixels → model input pixels.
    pub fn scale(&self) -> f64 {
        self.input_size as f64 / self.slice_hw[0].max(self.slice_hw[1]) as f64
    }

    /// Box `[x0, y0, x1, y1]` in slice pixels → model input pixels, truncated as the official script.
    pub fn box_to_input(&self, bbox: [f32; 4]) -> [f32; 4] {
        let ratio = self.scale();
        bbox.map(|c| (c as f64 * ratio).floor() as f32)
    }

    /// Point `[x, y]` in slice pixels → model input pixels (no rounding).
    pub fn point_to_input(&self, xy: [f32; 2]) -> [f32; 2] {
        let ratio = self.scale() as f32;
        xy.map(|c| c * ratio)
    }
}

/// HU → 0..255 through the window, truncated to `u8`.
pub fn window_u8(slice_hu: &[f32], window_hu: [f32; 2]) -> Vec<u8> {
    let [lo, hi] = window_hu;
    slice_hu
        .iter()
        .map(|&v| {
            let v = if v.is_nan() { lo } else { v.clamp(lo, hi) };
            ((v - lo) / (hi - lo) * 255.0) as u8
        })
        .collect()
}

/// Preprocess one slice (row-major `[height][width]` HU) for the encoder.
pub fn prepare_slice(
    slice_hu: &[f32],
    width: usize,
    height: usize,
    p: &Preprocess,
) -> Result<PreparedSlice> {
    if width == 0 || height == 0 || slice_hu.len() != width * height {
        return Err(Error::InvalidArgument(format!(
            "slice of {} values does not match {width}×{height}",
            slice_hu.len()
        )));
    }
    let [lo, hi] = p.window_hu;
    if !lo.is_finite() || !hi.is_finite() || hi <= lo {
        return Err(Error::InvalidArgument(format!(
            "CT window {:?} is empty: the upper bound must exceed the lower",
            p.window_hu
        )));
    }
    let s = p.input_size;
    let scale = s as f64 / width.max(height) as f64;
    let new_h = ((height as f64 * scale + 0.5) as usize).clamp(1, s);
    let new_w = ((width as f64 * scale + 0.5) as usize).clamp(1, s);
    let u8img = window_u8(slice_hu, p.window_hu);
    let resized = resize_area_u8(&u8img, [height, width], [new_h, new_w]);
    let (mn, mx) = resized
        .iter()
        .fold((u8::MAX, u8::MIN), |(a, b), &v| (a.min(v), b.max(v)));
    let range = ((mx - mn) as f32).max(1e-8);
    let mut input = vec![0f32; s * s];
    for y in 0..new_h {
        for x in 0..new_w {
            input[y * s + x] = (resized[y * new_w + x] - mn) as f32 / range;
        }
    }
    Ok(PreparedSlice {
        input,
        resized_u8: resized,
        slice_hw: [height, width],
        resized_hw: [new_h, new_w],
        input_size: s,
    })
}

/// OpenCV's `resize(…, INTER_AREA)` of a single-channel 8-bit image `[h][w]`.
///
/// Downscaling: exact area averaging (integer factors: the fixed-point fast
/// path). Upscaling: OpenCV's area-mode bilinear weights in 11-bit fixed point
/// (pixel replication for integer factors).
pub fn resize_area_u8(src: &[u8], src_hw: [usize; 2], dst_hw: [usize; 2]) -> Vec<u8> {
    let [sh, sw] = src_hw;
    let [dh, dw] = dst_hw;
    assert_eq!(src.len(), sh * sw, "image size");
    if src_hw == dst_hw {
        return src.to_vec();
    }
    let (scale_y, scale_x) = (sh as f64 / dh as f64, sw as f64 / dw as f64);
    if scale_x >= 1.0 && scale_y >= 1.0 {
        let (ix, iy) = (scale_x.round(), scale_y.round());
        if (scale_x - ix).abs() < f64::EPSILON && (scale_y - iy).abs() < f64::EPSILON {
            area_fast(src, src_hw, dst_hw, [iy as usize, ix as usize])
        } else {
            area_generic(src, src_hw, dst_hw, [scale_y, scale_x])
        }
    } else {
        area_upscale(src, src_hw, dst_hw, [scale_y, scale_x])
    }
}

/// Integer-factor downscale: mean of each block, rounded half up (fixed point).
fn area_fast(
    src: &[u8],
    [_, sw]: [usize; 2],
    [dh, dw]: [usize; 2],
    [fy, fx]: [usize; 2],
) -> Vec<u8> {
    let area = (fy * fx) as u32;
    let mut out = Vec::with_capacity(dh * dw);
    for y in 0..dh {
        for x in 0..dw {
            let mut sum = 0u32;
            for yy in y * fy..(y + 1) * fy {
                for xx in x * fx..(x + 1) * fx {
                    sum += src[yy * sw + xx] as u32;
                }
            }
            out.push(((sum + area / 2) / area) as u8);
        }
    }
    out
}

/// Source ranges and weights of each destination pixel for area downscaling.
fn area_tab(src: usize, dst: usize, scale: f64) -> Vec<Vec<(usize, f32)>> {
    (0..dst)
        .map(|d| {
            let fs1 = d as f64 * scale;
            let fs2 = fs1 + scale;
            let cell = scale.min(src as f64 - fs1);
            let s2 = (fs2.floor() as usize).min(src - 1);
            let s1 = (fs1.ceil() as usize).min(s2);
            let mut tab = Vec::new();
            if s1 as f64 - fs1 > 1e-3 {
                tab.push((s1 - 1, ((s1 as f64 - fs1) / cell) as f32));
            }
            for s in s1..s2 {
                tab.push((s, (1.0 / cell) as f32));
            }
            if fs2 - s2 as f64 > 1e-3 {
                tab.push((s2, ((fs2 - s2 as f64).min(1.0).min(cell) / cell) as f32));
            }
            tab
        })
        .collect()
}

/// Non-integer downscale: area-weighted average in f32, rounded to nearest (ties even).
fn area_generic(
    src: &[u8],
    [sh, sw]: [usize; 2],
    [dh, dw]: [usize; 2],
    [sy, sx]: [f64; 2],
) -> Vec<u8> {
    let xtab = area_tab(sw, dw, sx);
    let ytab = area_tab(sh, dh, sy);
    let mut out = Vec::with_capacity(dh * dw);
    let mut row = vec![0f32; dw];
    let mut sum = vec![0f32; dw];
    for ys in &ytab {
        sum.iter_mut().for_each(|v| *v = 0.0);
        for &(y, beta) in ys {
            for (x, xs) in xtab.iter().enumerate() {
                row[x] = xs
                    .iter()
                    .fold(0f32, |a, &(s, alpha)| a + src[y * sw + s] as f32 * alpha);
            }
            for (a, r) in sum.iter_mut().zip(&row) {
                *a += r * beta;
            }
        }
        out.extend(
            sum.iter()
                .map(|&v| v.round_ties_even().clamp(0.0, 255.0) as u8),
        );
    }
    out
}

/// Upscaling with OpenCV's area-mode linear weights (11-bit fixed point).
fn area_upscale(
    src: &[u8],
    [sh, sw]: [usize; 2],
    [dh, dw]: [usize; 2],
    [sy, sx]: [f64; 2],
) -> Vec<u8> {
    const ONE: i32 = 1 << 11;
    // Per destination index: source index and fixed-point weights of it and the next.
    let coeffs = |src_n: usize, dst_n: usize, scale: f64| -> Vec<(usize, [i32; 2])> {
        let inv = 1.0 / scale;
        (0..dst_n)
            .map(|d| {
                let mut s = (d as f64 * scale).floor() as i64;
                let mut f = ((d + 1) as f64 - (s + 1) as f64 * inv) as f32;
                f = if f <= 0.0 { 0.0 } else { f - f.floor() };
                if s < 0 {
                    (s, f) = (0, 0.0);
                }
                if s as usize >= src_n - 1 {
                    (s, f) = (src_n as i64 - 1, 0.0);
                }
                let w0 = ((1.0 - f) * ONE as f32).round() as i32;
                let w1 = (f * ONE as f32).round() as i32;
                (s as usize, [w0, w1])
            })
            .collect()
    };
    let xc = coeffs(sw, dw, sx);
    let yc = coeffs(sh, dh, sy);
    let hrow = |y: usize| -> Vec<i32> {
        xc.iter()
            .map(|&(s, [a, b])| {
                let v0 = src[y * sw + s] as i32;
                let v1 = src[y * sw + (s + 1).min(sw - 1)] as i32;
                if b == 0 { v0 * ONE } else { v0 * a + v1 * b }
            })
            .collect()
    };
    let mut out = Vec::with_capacity(dh * dw);
    for &(y, [a, b]) in &yc {
        let r0 = hrow(y);
        let r1 = if b == 0 {
            r0.clone()
        } else {
            hrow((y + 1).min(sh - 1))
        };
        out.extend(r0.iter().zip(&r1).map(|(&p, &q)| {
            let v = (((p >> 4) * a) >> 16) + (((q >> 4) * b) >> 16);
            ((v + 2) >> 2).clamp(0, 255) as u8
        }));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integer_factors_replicate_or_average() {
        let a: Vec<u8> = (0..16).map(|v| v * 10).collect();
        let up = resize_area_u8(&a, [4, 4], [8, 8]);
        assert_eq!(&up[..8], &[0, 0, 10, 10, 20, 20, 30, 30]);
        assert_eq!(&up[8..16], &[0, 0, 10, 10, 20, 20, 30, 30]);
        let down = resize_area_u8(&a, [4, 4], [2, 2]);
        // (0+10+40+50+2)/4 = 25
        assert_eq!(down, vec![25, 45, 105, 125]);
    }

    #[test]
    fn non_integer_upscale_matches_opencv() {
        // cv2.resize(np.arange(25).reshape(5,5)*10, (12,12), INTER_AREA), first two rows and row 3.
        let a: Vec<u8> = (0..25).map(|v| v * 10).collect();
        let up = resize_area_u8(&a, [5, 5], [12, 12]);
        assert_eq!(&up[..12], &[0, 0, 6, 10, 12, 20, 20, 28, 30, 34, 40, 40]);
        assert_eq!(
            &up[36..48],
            &[50, 50, 56, 60, 62, 70, 70, 78, 80, 84, 90, 90]
        );
    }

    #[test]
    fn boxes_truncate_and_slices_are_checked() {
        let hu = vec![0f32; 100 * 50];
        let p = prepare_slice(&hu, 100, 50, &Preprocess::default()).unwrap();
        assert_eq!(p.resized_hw, [128, 256]);
        assert_eq!(
            p.box_to_input([10.0, 3.3, 99.0, 49.0]),
            [25.0, 8.0, 253.0, 125.0]
        );
        assert!(prepare_slice(&hu, 10, 10, &Preprocess::default()).is_err());
        let bad = Preprocess {
            window_hu: [100.0, 0.0],
            ..Default::default()
        };
        assert!(prepare_slice(&hu, 100, 50, &bad).is_err());
    }
}
